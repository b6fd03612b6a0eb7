"""Policy in the data plane: a network's policies compiled into its ports' tables.

``overlay.policy`` states the semantics (``evaluate``) and compiles one
port's table (``compile_port`` -> ``PortTable``); the engine enforces tables
of ``PolicyRule`` lines (``overlay.bindings.policy``). This module is the
seam between them, used by ``overlay.node.Network``:

- ``parse_policies`` turns what an embedder hands over (Kubernetes objects as
  dicts, or ``overlay.policy`` objects) into one checked ``PolicySet``, or
  raises ``ConfigError`` naming the object and the field;
- ``to_rules`` maps a ``PortTable`` onto the engine's rule lines, and
  ``RuleIds`` gives every (tier, policy, rule) a stable id, so hit counters
  carry over a recompilation and a verdict event names the rule that gave it;
- ``NetworkPolicies`` holds a network's namespaces, policy set and compiled
  tables, and compiles every local port of the network at once.

Design notes. The mapping keeps the tiers' order and meaning exactly:

    PortTable.node            -> one admin-tier ALLOW rule, first (the pod's node
                                 is always reachable, before any admin rule)
    PortTable.admin           -> admin-tier rules, ALLOW / DENY / PASS, in order
    PortTable.isolated        -> the table's ISOLATED flag (what no netpol rule
                                 allows is denied by the implicit ISOLATION rule)
    PortTable.networkpolicy   -> netpol-tier ALLOW rules (only with ISOLATED)
    PortTable.baseline        -> baseline-tier rules, ALLOW / DENY, in order

The classifier's "first matching bit" then decides as ``PortTable.decide``
does, and the expanded entries of one Kubernetes rule (one per protocol and
port range, or per destination pod of a named port) share one id, so the
hit counters and events speak of the rule as written. A table with no admin
rule, no baseline rule and no isolation allows everything: it is set as "no
policy", so such a port tracks no connections. Everything is compiled before
anything is swapped: a policy the compiler refuses changes no port.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from overlay.bindings.policy import (
    RULE_DEFAULT,
    RULE_ISOLATION,
    RULE_PENDING,
    EncodedRules,
    PolicyRule,
    PortRange,
    encode_rules,
)
from overlay.errors import ConfigError
from overlay.policy.compile import (
    CompiledRule,
    PortTable,
    compile_port,
    compile_ports,
    evaluate_tables,
)
from overlay.policy.evaluate import Verdict, check_packet
from overlay.policy.load import PolicyObject, _one
from overlay.policy.model import (
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    Direction,
    Endpoint,
    IPAddress,
    NetworkPolicy,
    World,
    _int,
    _port_name,
    _protocol,
    check_labels,
    check_namespace_name,
)

DIRECTIONS: tuple[Direction, ...] = ("ingress", "egress")
DEFAULT_NAMESPACE = "default"
NODE_RULE_ID = 0  # the implicit "traffic with the pod's node" rule


@dataclasses.dataclass(frozen=True)
class RuleRef:
    """What a rule id stands for. ``tier``: "node", "admin", "networkpolicy",
    "baseline", or the implicit verdicts "isolation" (isolated and no
    NetworkPolicy rule allowed it), "default" (nothing matched: allowed) and
    "pending" (the port's policy was not set yet). ``policy``: "namespace/name"
    for a NetworkPolicy, the name of an ANP or BANP; ``rule``: the rule's
    index in that policy's list for the direction."""

    tier: str
    policy: str | None = None
    rule: int | None = None


_IMPLICIT = {
    RULE_ISOLATION: RuleRef("isolation"),
    RULE_DEFAULT: RuleRef("default"),
    RULE_PENDING: RuleRef("pending"),
    NODE_RULE_ID: RuleRef("node"),
}


class RuleIds:
    """Stable ids for (tier, policy, rule): an id once given is kept for the
    network's life, so a recompiled table's hit counters carry over."""

    def __init__(self) -> None:
        self._ids: dict[RuleRef, int] = {RuleRef("node"): NODE_RULE_ID}
        self._refs: dict[int, RuleRef] = {NODE_RULE_ID: RuleRef("node")}

    def id(self, ref: RuleRef) -> int:
        got = self._ids.get(ref)
        if got is None:
            got = len(self._refs)
            self._ids[ref] = got
            self._refs[got] = ref
        return got

    def ref(self, rule_id: int) -> RuleRef:
        """What ``rule_id`` (from hit counters or a verdict event) stands for."""
        got = self._refs.get(rule_id) or _IMPLICIT.get(rule_id)
        return got if got is not None else RuleRef("unknown", None, rule_id)


def _ports(r: CompiledRule) -> tuple[PortRange, ...]:
    if r.protocol is None:
        return ()
    return (PortRange(r.protocol.lower(), r.port_min, r.port_max),)


def to_rules(table: PortTable, ids: RuleIds, *, audit: bool = False) -> list[PolicyRule]:
    """The engine's rules for ``table``, in precedence order (see the module
    docstring). Set them with ``isolated=table.isolated``. Empty when the
    table allows everything."""
    if not table.admin and not table.baseline and not table.isolated:
        return []
    out: list[PolicyRule] = []
    if table.node:
        out.append(PolicyRule(NODE_RULE_ID, "allow", "admin", table.node, audit=audit))
    tiers = (
        ("admin", "admin", table.admin),
        ("netpol", "networkpolicy", table.networkpolicy),
        ("baseline", "baseline", table.baseline),
    )
    for tier, name, rules in tiers:
        for r in rules:
            rid = ids.id(RuleRef(name, r.policy, r.rule))
            out.append(PolicyRule(rid, r.action, tier, r.cidrs, _ports(r), audit=audit))
    return out


# -- what embedders hand over ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PolicySet:
    """A network's whole set of policies, checked."""

    networkpolicies: tuple[NetworkPolicy, ...] = ()
    admin: tuple[AdminNetworkPolicy, ...] = ()
    baseline: BaselineAdminNetworkPolicy | None = None

    @property
    def empty(self) -> bool:
        return not self.networkpolicies and not self.admin and self.baseline is None


def _parse(obj: object, where: str, kinds: tuple[type, ...]) -> PolicyObject:
    if isinstance(obj, kinds):
        return obj  # type: ignore[return-value]
    if isinstance(obj, Mapping):
        got = _one(obj, where, DEFAULT_NAMESPACE)
        if isinstance(got, kinds):
            return got
        raise ConfigError(f"{where} kind", obj.get("kind"), " or ".join(k.__name__ for k in kinds))
    names = " or ".join(k.__name__ for k in kinds)
    raise ConfigError(where, obj, f"a {names} (a Kubernetes object as a dict, or overlay.policy's)")


def parse_policies(
    policies: Iterable[object] = (),
    admin: Iterable[object] = (),
    baseline: object = None,
) -> PolicySet:
    """One checked ``PolicySet`` out of Kubernetes objects (dicts) or
    ``overlay.policy`` objects. ``policies`` may hold every kind (as
    ``policy.load`` returns them); ``admin`` only AdminNetworkPolicies;
    ``baseline`` one BaselineAdminNetworkPolicy or None. Raises
    ``ConfigError`` naming the object (``policies[2] (NetworkPolicy x/web)``)
    and the field; two objects of one kind and name are refused."""
    if isinstance(policies, (str, bytes, Mapping)):
        raise ConfigError("policies", policies, "a list of policy objects (policy.load reads text)")
    nps: list[NetworkPolicy] = []
    anps: list[AdminNetworkPolicy] = []
    banps: list[tuple[str, BaselineAdminNetworkPolicy]] = []
    all_kinds = (NetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy)
    for i, obj in enumerate(policies):
        got = _parse(obj, f"policies[{i}]", all_kinds)
        if isinstance(got, NetworkPolicy):
            nps.append(got)
        elif isinstance(got, AdminNetworkPolicy):
            anps.append(got)
        else:
            banps.append((f"policies[{i}]", got))
    if isinstance(admin, (str, bytes, Mapping)):
        raise ConfigError("admin", admin, "a list of AdminNetworkPolicy objects")
    for i, obj in enumerate(admin):
        anps.append(_parse(obj, f"admin[{i}]", (AdminNetworkPolicy,)))  # type: ignore[arg-type]
    if baseline is not None:
        b = _parse(baseline, "baseline", (BaselineAdminNetworkPolicy,))
        banps.append(("baseline", b))  # type: ignore[arg-type]
    if len(banps) > 1:
        raise ConfigError(
            banps[1][0], "BaselineAdminNetworkPolicy default", "one baseline (it is a singleton)"
        )
    seen: set[tuple[str, str]] = set()
    for what, key in [("NetworkPolicy", p.key) for p in nps] + [
        ("AdminNetworkPolicy", a.name) for a in anps
    ]:
        if (what, key) in seen:
            raise ConfigError(
                "policies", f"{what} {key}", "each policy once (two of one name: keep one)"
            )
        seen.add((what, key))
    return PolicySet(tuple(nps), tuple(anps), banps[0][1] if banps else None)


@dataclasses.dataclass(frozen=True)
class Identity:
    """A pod's identity for policy: namespace, labels, named container ports."""

    namespace: str = DEFAULT_NAMESPACE
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    named_ports: Mapping[str, tuple[int, str]] = dataclasses.field(default_factory=dict)


def check_identity(
    namespace: str | None,
    labels: Mapping[str, str] | None,
    named_ports: Mapping[str, Any] | None,
) -> Identity:
    """A checked ``Identity``; ``ConfigError`` names the field at fault."""
    ns = DEFAULT_NAMESPACE if namespace is None else namespace
    check_namespace_name("namespace", ns)
    lab = check_labels("labels", labels or {})
    ports: dict[str, tuple[int, str]] = {}
    if named_ports is not None and not isinstance(named_ports, Mapping):
        raise ConfigError(
            "named_ports", named_ports, "a mapping like {'serve-80-tcp': (80, 'TCP')}"
        )
    for name, value in (named_ports or {}).items():
        where = f"named_ports[{name!r}]"
        if not isinstance(name, str):
            raise ConfigError(where, name, "a port name (a string)")
        _port_name(where, name)
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ConfigError(where, value, "a (number, protocol) pair like (80, 'TCP')")
        ports[name] = (_int(f"{where}[0]", value[0], 1, 65535), _protocol(f"{where}[1]", value[1]))
    return Identity(ns, lab, ports)


def check_namespace(name: object, labels: Mapping[str, str] | None) -> dict[str, str]:
    check_namespace_name("namespace", name)
    return check_labels("labels", labels or {})


# -- a network's policy state -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Member:
    """An endpoint of the network as the compiler sees it: ``key`` names its
    owner (a local port's id, a remote's MAC), ``ips`` its addresses."""

    key: int | str
    ips: tuple[str, ...]
    identity: Identity
    local: bool


@dataclasses.dataclass(frozen=True)
class Peer:
    """A pod of another node as policy sees it (``Network.update_policy``):
    its addresses and identity; ``gateway``: another node's gateway, whose
    addresses are node addresses (always allowed), not a pod."""

    ips: tuple[str, ...]
    identity: Identity = Identity()
    gateway: bool = False


Compiled = dict[int, dict[Direction, tuple[PortTable, EncodedRules]]]


class NetworkPolicies:
    """One network's namespaces, policies and compiled tables.

    ``policies`` is None until the first ``apply``: until then nothing is
    compiled and ports carry no policy at all."""

    def __init__(self) -> None:
        self.namespaces: dict[str, dict[str, str]] = {}
        self.policies: PolicySet | None = None
        self.audit = False
        self.ids = RuleIds()
        self.tables: dict[int, dict[Direction, PortTable]] = {}

    @property
    def active(self) -> bool:
        return self.policies is not None

    def world(self, members: Iterable[Member], node_addresses: Iterable[str]) -> World:
        """The World the compiler and the evaluator judge in."""
        nss = dict(self.namespaces)
        endpoints: list[Endpoint] = []
        for m in members:
            nss.setdefault(m.identity.namespace, {})
            for ip in m.ips:
                endpoints.append(
                    Endpoint(
                        ip,
                        m.identity.namespace,
                        dict(m.identity.labels),
                        dict(m.identity.named_ports),
                        name=str(m.key),
                    )
                )
        return World(nss, endpoints, frozenset(node_addresses))

    def compile(
        self,
        world: World,
        local: Iterable[Member],
        policies: PolicySet,
        audit: bool,
    ) -> Compiled:
        """Every local member's tables, both directions, with the engine's
        lines for each; nothing is set. The world and the policies are
        resolved once for all members (``compile_ports``), and tables whose
        tiers are the same (the same policies select the pods) are turned
        into lines once and shared."""
        ports = [(m.key, m.ips[0]) for m in local if m.ips]  # no address: nothing passes anyway
        tables = compile_ports(
            world,
            policies.networkpolicies,
            policies.admin,
            policies.baseline,
            port_ips=[ip for _, ip in ports],
        )
        encoded: dict[tuple[object, ...], EncodedRules] = {}
        out: Compiled = {}
        for key, ip in ports:
            assert isinstance(key, int)
            out[key] = {}
            for d in DIRECTIONS:
                t = tables[(ip, d)]
                # The compiler shares one tuple between the ports with the same
                # rules: their identity names the table (held alive in tables).
                same = (id(t.admin), id(t.networkpolicy), id(t.baseline), t.isolated, t.node)
                enc = encoded.get(same)
                if enc is None:
                    enc = encoded[same] = encode_rules(to_rules(t, self.ids, audit=audit))
                out[key][d] = (t, enc)
        return out

    def explain(
        self,
        world: World,
        *,
        src: str,
        dst: str,
        port: int,
        protocol: str,
        local: Mapping[str, int],
    ) -> Verdict:
        """The verdict of a connection from the tables in force (``local``:
        address -> port id of the local pods); an end that is a remote pod is
        judged by its table compiled here from the same world and policies."""
        s, d = check_packet(src, dst, port, protocol)
        pol = self.policies or PolicySet()
        tables: dict[tuple[str, Direction], PortTable] = {}
        ends: tuple[tuple[IPAddress, Direction], ...] = ((s, "egress"), (d, "ingress"))
        for addr, direction in ends:
            ep = world.endpoint(addr)
            if ep is None:
                continue
            pid = local.get(str(addr))
            t = self.tables.get(pid, {}).get(direction) if pid is not None else None
            if t is None:
                t = compile_port(
                    world,
                    pol.networkpolicies,
                    pol.admin,
                    pol.baseline,
                    port_ip=ep.ip,
                    direction=direction,
                )
            tables[(str(addr), direction)] = t
        return evaluate_tables(world, tables, src=str(s), dst=str(d), port=port, protocol=protocol)
