"""Two policy sets compared by what they let through, not by their text.

``diff(world, a, b)`` asks, for every probe (source, destination, port,
protocol), whether the connection is allowed under ``a`` and under ``b``, and
returns a ``Difference`` for each probe where the answers differ, with both
verdicts, so a report says which policy and rule decided on each side::

    from overlay import policy

    world = policy.world_from("cluster/")            # Namespace and Pod manifests
    a = policy.split(policy.load("policies-old/"))
    b = policy.split(policy.load("policies-new/"))
    print(policy.format_report(policy.diff(world, a, b)))
    # x/a -> y/web 80/TCP: allowed (a: networkpolicy y/web rule 0)
    #     -> denied (b: networkpolicy y/web isolation)      (one line)

Two sets that differ only in order, names or the shape of their rules, but
allow the same connections, report nothing.

The default probes: every ordered pair of distinct endpoints of the world,
times these ports: every port number, range start, range end and the port
after a range that a rule of either set names, each destination's named
ports that a rule of either set uses (and the port after each), and one port
no rule covers; times TCP, plus UDP and SCTP where a rule or a named port
uses them. Every port between two of those behaves as the one before it, and
a protocol no rule names behaves as the uncovered port does, so for the pairs
probed the comparison covers every port and protocol.

Verdicts come from the compiled tables (``compile_ports``) of each set, one
compilation per set; each table's rules are filtered once per peer address,
so a probe is a few integer comparisons. The answers are ``evaluate``'s (the
tests check it).

``world_from`` builds the world from Kubernetes ``Namespace`` and ``Pod``
objects (YAML or JSON, a file, a directory or text, as ``load`` reads
policies), so two directories of policies can be compared against a
directory describing the cluster.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from overlay.errors import ConfigError
from overlay.policy.compile import CompiledRule, PortTable, compile_ports
from overlay.policy.evaluate import Decision, Verdict, check_inputs, check_packet, combine
from overlay.policy.load import _documents, _texts, split
from overlay.policy.model import (
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    Direction,
    Endpoint,
    IPAddress,
    NetworkPolicy,
    World,
    check_labels,
    check_namespace_name,
    parse_ip,
)

PolicySet = tuple[
    Sequence[NetworkPolicy], Sequence[AdminNetworkPolicy], BaselineAdminNetworkPolicy | None
]
PORT_MIN, PORT_MAX = 1, 65535
DIRECTIONS: tuple[Direction, ...] = ("ingress", "egress")
_LABELS = "a mapping of label keys to string values"
_PROTOCOL_ORDER = {"TCP": 0, "UDP": 1, "SCTP": 2, "ICMP": 3, "ICMPv6": 4}


@dataclasses.dataclass(frozen=True)
class Probe:
    """One connection to ask about: ``src`` opens ``dst``:``port``/``protocol``."""

    src: str
    dst: str
    port: int
    protocol: str = "TCP"


@dataclasses.dataclass(frozen=True)
class Difference:
    """A probe allowed under one set and denied under the other.

    ``source``/``destination`` name the ends ("namespace/pod" for an
    endpoint, else the address); ``a``/``b`` are the full verdicts."""

    probe: Probe
    source: str
    destination: str
    a: Verdict
    b: Verdict

    def line(self) -> str:
        """``x/a -> y/b 80/TCP: allowed (a: ...) -> denied (b: ...)``."""
        p = self.probe
        return (
            f"{self.source} -> {self.destination} {p.port}/{p.protocol}: "
            f"{_allowed(self.a)} (a: {describe(self.a)}) -> {_allowed(self.b)} "
            f"(b: {describe(self.b)})"
        )


def _allowed(v: Verdict) -> str:
    return "allowed" if v.allowed else "denied"


def describe(v: Verdict) -> str:
    """Who decided: ``networkpolicy y/web rule 0``, ``networkpolicy y/web
    isolation`` (isolated, no rule matched), ``admin <name> rule 2``,
    ``baseline default rule 0``, ``node`` or ``default``."""
    if v.policy is None:
        return v.tier
    if v.rule is None:
        return f"{v.tier} {v.policy} isolation"
    return f"{v.tier} {v.policy} rule {v.rule}"


def _as_set(value: object, field: str) -> PolicySet:
    """``(networkpolicies, admin, baseline)`` or ``load``'s list of objects."""
    kinds = (NetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy)
    if isinstance(value, (list, tuple)) and all(isinstance(o, kinds) for o in value):
        banps = [o for o in value if isinstance(o, BaselineAdminNetworkPolicy)]
        if len(banps) > 1:
            raise ConfigError(field, value, "at most one BaselineAdminNetworkPolicy")
        nps, anps, banp = split(list(value))
    elif isinstance(value, tuple) and len(value) == 3:
        nps, anps, banp = value
    else:
        raise ConfigError(
            field,
            value,
            "a policy set: (networkpolicies, admin, baseline) as policy.split returns,"
            " or policy.load's list of policy objects",
        )
    try:
        return check_inputs(nps, anps, banp)
    except ConfigError as e:
        raise ConfigError(f"{field}.{e.field}", e.value, e.expected) from None


# -- the probes ---------------------------------------------------------------


def _rule_ports(sets: Iterable[PolicySet]) -> tuple[set[tuple[int, int, str]], set[str]]:
    """Every numeric (first, last, protocol) range and every port name the sets' rules use."""
    ranges: set[tuple[int, int, str]] = set()
    names: set[str] = set()
    for nps, anps, banp in sets:
        for p in nps:
            for d in DIRECTIONS:
                for r in p.rules(d):
                    for pp in r.ports:
                        if isinstance(pp.port, str):
                            names.add(pp.port)
                        elif pp.port is None:
                            ranges.add((PORT_MIN, PORT_MAX, pp.protocol))
                        else:
                            hi = pp.end_port if pp.end_port is not None else pp.port
                            ranges.add((pp.port, hi, pp.protocol))
        admins: list[AdminNetworkPolicy | BaselineAdminNetworkPolicy] = [*anps]
        if banp is not None:
            admins.append(banp)
        for a in admins:
            for d in DIRECTIONS:
                for ar in a.rules(d):
                    for ap in ar.ports or ():
                        if ap.name is not None:
                            names.add(ap.name)
                        else:
                            ranges.add((ap.start, ap.end, ap.protocol))
    return ranges, names


def default_ports(world: World, a: PolicySet, b: PolicySet) -> tuple[list[int], list[str]]:
    """The ports and protocols probed by default (see the module's docstring)."""
    ranges, names = _rule_ports((a, b))
    ports: set[int] = set()
    protocols = {"TCP"}
    covered: list[tuple[int, int]] = []
    for lo, hi, proto in ranges:
        protocols.add(proto)
        ports.update((lo, hi))
        if hi < PORT_MAX:
            ports.add(hi + 1)
        covered.append((lo, hi))
    for ep in world.endpoints:
        for name, (number, proto) in ep.named_ports.items():
            if name in names:
                protocols.add(proto)
                ports.add(number)
                if number < PORT_MAX:
                    ports.add(number + 1)
                covered.append((number, number))
    # One port no rule covers: the highest, as the lowest is often named.
    free = PORT_MAX
    for lo, hi in sorted(covered, key=lambda r: -r[1]):
        if hi < free:
            break
        if lo <= free:
            free = lo - 1
    if free >= PORT_MIN:
        ports.add(free)
    else:  # every port is covered by some rule: another protocol may differ
        protocols.update(("UDP", "SCTP"))
    return sorted(ports), sorted(protocols, key=_PROTOCOL_ORDER.__getitem__)


def default_probes(world: World, a: PolicySet, b: PolicySet) -> list[Probe]:
    """Every ordered pair of distinct endpoints x ``default_ports``."""
    ports, protocols = default_ports(world, a, b)
    return [
        Probe(s.ip, d.ip, port, proto)
        for s in world.endpoints
        for d in world.endpoints
        if s is not d
        for port in ports
        for proto in protocols
    ]


def _check_probes(probes: Iterable[object]) -> list[Probe]:
    out = []
    for i, p in enumerate(probes):
        if isinstance(p, tuple) and len(p) == 4:
            p = Probe(*p)
        if not isinstance(p, Probe):
            raise ConfigError(f"probes[{i}]", p, "a policy.Probe or a (src, dst, port, protocol)")
        try:
            check_packet(p.src, p.dst, p.port, p.protocol)
        except ConfigError as e:
            raise ConfigError(f"probes[{i}].{e.field}", e.value, e.expected) from None
        out.append(p)
    return out


# -- deciding from the compiled tables ----------------------------------------


class _Tables:
    """One set's compiled tables, with each table's rules filtered by peer
    address once (a pair of endpoints is probed on many ports)."""

    def __init__(self, world: World, s: PolicySet) -> None:
        self.world = world
        self.tables = compile_ports(world, *s)
        self._nets: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
        self._filtered: dict[tuple[int, IPAddress], Callable[[str, int], Decision]] = {}

    def _hit(self, cidrs: tuple[str, ...], peer: IPAddress) -> bool:
        nets = self._nets
        for c in cidrs:
            n = nets.get(c)
            if n is None:
                n = nets[c] = ipaddress.ip_network(c)
            if peer in n:
                return True
        return False

    def decider(self, t: PortTable, peer: IPAddress) -> Callable[[str, int], Decision]:
        """``t.decide(peer, ...)`` as a function of (protocol, port)."""
        key = (id(t), peer)
        got = self._filtered.get(key)
        if got is not None:
            return got
        d = t.direction
        if self._hit(t.node, peer):
            node = Decision(True, "node", None, None, d)
            got = self._filtered[key] = lambda proto, port: node
            return got

        def keep(rules: tuple[CompiledRule, ...]) -> list[CompiledRule]:
            return [r for r in rules if self._hit(r.cidrs, peer)]

        admin, nprules, baseline = keep(t.admin), keep(t.networkpolicy), keep(t.baseline)
        isolated, isolated_by = t.isolated, t.isolated_by

        def hit(r: CompiledRule, proto: str, port: int) -> bool:
            return r.protocol is None or (r.protocol == proto and r.port_min <= port <= r.port_max)

        def decide(proto: str, port: int) -> Decision:
            for r in admin:
                if hit(r, proto, port):
                    if r.action == "pass":
                        break
                    return Decision(r.action == "allow", "admin", r.policy, r.rule, d)
            if isolated:
                for r in nprules:
                    if hit(r, proto, port):
                        return Decision(True, "networkpolicy", r.policy, r.rule, d)
                return Decision(False, "networkpolicy", isolated_by, None, d)
            for r in baseline:
                if hit(r, proto, port):
                    return Decision(r.action == "allow", "baseline", r.policy, r.rule, d)
            return Decision(True, "default", None, None, d)

        got = self._filtered[key] = decide
        return got

    def verdict(self, p: Probe) -> Verdict:
        """What ``evaluate`` answers for ``p`` (as ``evaluate_tables``)."""
        s, d = ipaddress.ip_address(p.src), ipaddress.ip_address(p.dst)
        se, de = self.world.endpoint(s), self.world.endpoint(d)
        eg = self.decider(self.tables[(se.ip, "egress")], d) if se is not None else None
        ig = self.decider(self.tables[(de.ip, "ingress")], s) if de is not None else None
        return combine(
            eg(p.protocol, p.port) if eg is not None else None,
            ig(p.protocol, p.port) if ig is not None else None,
        )


def _name(world: World, ip: str) -> str:
    ep = world.endpoint(ip)
    if ep is None:
        return ip
    return f"{ep.namespace}/{ep.name or ep.ip}"


def diff(
    world: World, a: object, b: object, *, probes: Iterable[object] | None = None
) -> list[Difference]:
    """The probes allowed under one of ``a``, ``b`` and denied under the other.

    ``a``/``b``: ``(networkpolicies, admin, baseline)`` (``policy.split``) or
    ``policy.load``'s list. ``probes``: ``Probe`` objects or (src, dst, port,
    protocol) tuples; None: ``default_probes``. Sorted by source, destination,
    port and protocol names."""
    if not isinstance(world, World):
        raise ConfigError("world", world, "a policy.World (see policy.world_from)")
    sa, sb = _as_set(a, "a"), _as_set(b, "b")
    ps = default_probes(world, sa, sb) if probes is None else _check_probes(probes)
    ta, tb = _Tables(world, sa), _Tables(world, sb)
    out = []
    for p in ps:
        va, vb = ta.verdict(p), tb.verdict(p)
        if va.allowed != vb.allowed:
            out.append(Difference(p, _name(world, p.src), _name(world, p.dst), va, vb))
    out.sort(
        key=lambda x: (
            x.source,
            x.destination,
            x.probe.port,
            _PROTOCOL_ORDER.get(x.probe.protocol, 9),
        )
    )
    return out


def format_report(diffs: Iterable[Difference]) -> str:
    """One line per difference, in ``diff``'s order; "" when there are none."""
    return "".join(d.line() + "\n" for d in diffs)


# -- the world from Namespace and Pod manifests -------------------------------


def _get(obj: Mapping[str, Any], where: str, path: str, kind: type, what: str) -> Any:
    """``obj`` at dotted ``path``, None when absent; a wrong type names the field."""
    cur: Any = obj
    parts = path.split(".")
    for i, part in enumerate(parts):
        if cur is None:
            return None
        if not isinstance(cur, Mapping):
            raise ConfigError(f"{where} {'.'.join(parts[:i])}", cur, "a mapping (object)")
        cur = cur.get(part)
    if cur is not None and not isinstance(cur, kind):
        raise ConfigError(f"{where} {path}", cur, what)
    return cur


def _pod_ports(obj: Mapping[str, Any], where: str) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    containers = _get(obj, where, "spec.containers", list, "a list") or []
    for i, c in enumerate(containers):
        cw = f"spec.containers[{i}]"
        if not isinstance(c, Mapping):
            raise ConfigError(f"{where} {cw}", c, "a mapping (object)")
        ports = c.get("ports") or []
        if not isinstance(ports, list):
            raise ConfigError(f"{where} {cw}.ports", ports, "a list")
        for j, p in enumerate(ports):
            pw = f"{where} {cw}.ports[{j}]"
            if not isinstance(p, Mapping):
                raise ConfigError(pw, p, "a mapping with containerPort (and name, protocol)")
            name = p.get("name")
            if name is None:
                continue  # only named ports matter to policy
            number = p.get("containerPort")
            if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
                raise ConfigError(f"{pw}.containerPort", number, "an integer 1-65535")
            proto = p.get("protocol", "TCP")
            if proto not in ("TCP", "UDP", "SCTP"):
                raise ConfigError(f"{pw}.protocol", proto, "TCP, UDP or SCTP (upper case)")
            if not isinstance(name, str) or name in out:
                raise ConfigError(f"{pw}.name", name, "a port name no other port of the pod has")
            out[name] = (number, proto)
    return out


def world_from(
    source: str | bytes | os.PathLike[str] | Iterable[Mapping[str, Any]],
    *,
    node_addresses: Iterable[str] = (),
) -> World:
    """A ``World`` from Kubernetes ``Namespace`` and ``Pod`` objects (v1).

    ``source``: a path, a directory, manifest text (as ``load``), or already
    parsed objects. Read: a Namespace's metadata.name and metadata.labels; a
    Pod's metadata.name, metadata.namespace (default ``default``),
    metadata.labels, status.podIP and spec.containers[].ports[] (name,
    containerPort, protocol). Other fields are ignored, so ``kubectl get
    ns,pods -o yaml`` output loads. A Pod without status.podIP (not running)
    is skipped; a hostNetwork Pod's address is a node address. Every Pod's
    namespace must be declared by a Namespace object. Errors name the
    document and the field."""
    docs: list[tuple[str, Any]] = []
    if isinstance(source, (str, bytes, os.PathLike)):
        for label, text in _texts(source):
            for n, doc in enumerate(_documents(label, text), start=1):
                if doc is not None:
                    docs.append((f"{label} document {n}", doc))
    else:
        docs = [(f"objects[{i}]", o) for i, o in enumerate(source)]
    items: list[tuple[str, Any]] = []
    for where, doc in docs:
        if isinstance(doc, Mapping) and str(doc.get("kind", "")).endswith("List"):
            raw = doc.get("items")
            if not isinstance(raw, list):
                raise ConfigError(f"{where} items", raw, "a list of objects")
            items += [(f"{where} items[{i}]", o) for i, o in enumerate(raw)]
        else:
            items.append((where, doc))
    namespaces: dict[str, dict[str, str]] = {}
    pods: list[tuple[str, Mapping[str, Any]]] = []
    nodes = set(node_addresses)
    for where, obj in items:
        if not isinstance(obj, Mapping):
            raise ConfigError(
                where, obj, "a Kubernetes object (a mapping with apiVersion and kind)"
            )
        kind = obj.get("kind")
        if kind not in ("Namespace", "Pod"):
            raise ConfigError(f"{where} kind", kind, "Namespace or Pod (or a List of them)")
        if obj.get("apiVersion") != "v1":
            raise ConfigError(f"{where} apiVersion", obj.get("apiVersion"), f"v1 for {kind}")
        name = _get(obj, where, "metadata.name", str, "a string")
        if kind == "Namespace":
            check_namespace_name(f"{where} metadata.name", name)
            if name in namespaces:
                raise ConfigError(f"{where} metadata.name", name, "a namespace not already listed")
            labels = _get(obj, where, "metadata.labels", Mapping, _LABELS) or {}
            namespaces[name] = check_labels(f"{where} metadata.labels", labels)
        else:
            if _get(obj, where, "spec.hostNetwork", bool, "true or false"):
                ip = _get(obj, where, "status.podIP", str, "an address (a string)")
                if ip is not None:  # the node's own address
                    nodes.add(str(parse_ip(f"{where} status.podIP", ip)))
                continue
            pods.append((where, obj))
    endpoints = []
    seen: dict[IPAddress, str] = {}
    for where, obj in pods:
        name = _get(obj, where, "metadata.name", str, "a string")
        if not name:
            raise ConfigError(f"{where} metadata.name", name, "a pod name (required)")
        ns = _get(obj, where, "metadata.namespace", str, "a string") or "default"
        if ns not in namespaces:
            raise ConfigError(
                f"{where} metadata.namespace",
                ns,
                "a namespace declared by a Namespace object; add one (kind: Namespace)",
            )
        ip = _get(obj, where, "status.podIP", str, "an address (a string)")
        if ip is None:
            continue  # not running: nothing to connect to
        addr = parse_ip(f"{where} status.podIP", ip)
        if addr in seen:
            raise ConfigError(
                f"{where} status.podIP", ip, f"an address no other pod has ({seen[addr]})"
            )
        seen[addr] = where
        labels = check_labels(
            f"{where} metadata.labels", _get(obj, where, "metadata.labels", Mapping, _LABELS) or {}
        )
        endpoints.append(Endpoint(str(addr), ns, labels, _pod_ports(obj, where), name=name))
    for a in sorted(nodes):
        addr = parse_ip("node_addresses", a)
        if addr in seen:
            raise ConfigError(f"{seen[addr]} status.podIP", a, "an address that is not a node's")
    return World(namespaces=namespaces, endpoints=endpoints, node_addresses=nodes)
