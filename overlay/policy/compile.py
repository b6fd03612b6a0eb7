"""The compiler: policies + world -> one plain rule table per port and direction.

A table is what a classifier in C is built from: per rule a set of disjoint
peer prefixes (pods resolved to /32 or /128, ipBlocks with their excepts
subtracted), a protocol (None: any), an inclusive port range and an action,
tagged with the (policy, rule) it came from. Tiers keep their order:

    node      peer prefixes always allowed (the pod's node)
    admin     first match wins: allow / deny / pass (pass jumps to networkpolicy)
    isolated  whether any NetworkPolicy isolates the port in this direction
    networkpolicy   allow rules (a union; the first match is the one reported)
    baseline  first match wins: allow / deny; consulted only when not isolated
    (nothing matched: allowed)

Design notes. Everything that depends on the world is resolved here, once,
so the data plane never looks at labels: selectors become address sets and
named ports become numbers. Named ports are resolved on the destination pod
(Kubernetes: "a named port ... on the destination pod"), so for egress one
named-port rule becomes one entry per destination pod that has a port of
that name and protocol; an unresolved name matches nothing (fails closed).
Expanded entries of one rule stay adjacent and share its action, so first
match semantics survive the expansion. ``PortTable.decide`` is the reference
classifier over a table (a linear scan; the C engine hashes /32s and uses a
prefix trie); tests check it answers as ``evaluate`` does.

Cost. A network recompiles every port whenever a pod or a policy changes,
so ``compile_ports`` resolves the world once for all of them: endpoints are
indexed by namespace and label (a selector is a few set operations), each
rule's peers are resolved once (not once per port), addresses are integers
merged and cut into prefixes by arithmetic, and ports the same policies
select share one tuple of rules (1,000 policies over 1,000 pods: ~0.2 s).
"""

from __future__ import annotations

import bisect
import dataclasses
import ipaddress
from collections.abc import Iterable

from overlay.errors import ConfigError
from overlay.policy.evaluate import Decision, Verdict, check_inputs, combine
from overlay.policy.model import (
    AdminNetworkPolicy,
    AdminRule,
    BaselineAdminNetworkPolicy,
    Direction,
    Endpoint,
    IPAddress,
    IPNetwork,
    LabelSelector,
    NetworkPolicy,
    Rule,
    Subject,
    World,
)
from overlay.policy.model import Peer as NPPeer

PORT_ANY = (0, 65535)


@dataclasses.dataclass(frozen=True)
class CompiledRule:
    """One classifier entry. ``cidrs`` are disjoint, collapsed prefixes;
    ``protocol`` None matches every protocol (a rule without ports)."""

    cidrs: tuple[str, ...]
    protocol: str | None
    port_min: int
    port_max: int
    action: str  # "allow", "deny", "pass"
    policy: str
    rule: int

    def matches(self, peer: IPAddress, protocol: str, port: int) -> bool:
        if self.protocol is not None and (
            self.protocol != protocol or not self.port_min <= port <= self.port_max
        ):
            return False
        return any(peer in ipaddress.ip_network(c) for c in self.cidrs)


@dataclasses.dataclass(frozen=True)
class PortTable:
    """The compiled policy of one port (``ip``) in one ``direction``.

    For ingress the peer is the packet's source, for egress its destination;
    the port is always the destination port."""

    ip: str
    direction: Direction
    node: tuple[str, ...]
    admin: tuple[CompiledRule, ...]
    isolated: bool
    isolated_by: str | None
    networkpolicy: tuple[CompiledRule, ...]
    baseline: tuple[CompiledRule, ...]

    def decide(self, peer: str | IPAddress, protocol: str, port: int) -> Decision:
        """Classify one first packet the way the data plane does."""
        addr = ipaddress.ip_address(peer) if isinstance(peer, str) else peer
        d = self.direction
        if any(addr in ipaddress.ip_network(c) for c in self.node):
            return Decision(True, "node", None, None, d)
        for r in self.admin:
            if r.matches(addr, protocol, port):
                if r.action == "pass":
                    break
                return Decision(r.action == "allow", "admin", r.policy, r.rule, d)
        if self.isolated:
            for r in self.networkpolicy:
                if r.matches(addr, protocol, port):
                    return Decision(True, "networkpolicy", r.policy, r.rule, d)
            return Decision(False, "networkpolicy", self.isolated_by, None, d)
        for r in self.baseline:
            if r.matches(addr, protocol, port):
                return Decision(r.action == "allow", "baseline", r.policy, r.rule, d)
        return Decision(True, "default", None, None, d)

    def to_dict(self) -> dict[str, object]:
        """Plain data (JSON-ready)."""
        return dataclasses.asdict(self)


# -- addresses as integers ----------------------------------------------------
#
# A set of addresses is a list of inclusive ranges (family, first, last) of
# integers: pods are (f, a, a), a prefix its first and last address. Merging
# them and cutting the union into prefixes is integer arithmetic, so no
# ipaddress object is made per pod or per rule.

Range = tuple[int, int, int]
_BITS = {4: 32, 6: 128}
_ALL_RANGES: tuple[Range, ...] = ((4, 0, (1 << 32) - 1), (6, 0, (1 << 128) - 1))
_ABOVE = 1 << 129  # above every address: bisect's upper bound


def _net_range(net: IPNetwork) -> Range:
    first = int(net.network_address)
    return (net.version, first, first | int(net.hostmask))


def _subtract(r: Range, excepts: Iterable[IPNetwork]) -> list[Range]:
    """``r`` less every prefix of ``excepts`` (an ipBlock's cidr and except)."""
    parts = [r]
    for e in excepts:
        fam, lo, hi = _net_range(e)
        nxt: list[Range] = []
        for p in parts:
            if p[0] != fam or p[2] < lo or p[1] > hi:
                nxt.append(p)
                continue
            if p[1] < lo:
                nxt.append((fam, p[1], lo - 1))
            if p[2] > hi:
                nxt.append((fam, hi + 1, p[2]))
        parts = nxt
    return parts


def _merge(ranges: Iterable[Range]) -> tuple[Range, ...]:
    """Sorted ranges, neither overlapping nor adjacent, covering ``ranges``."""
    out: list[list[int]] = []
    for fam, lo, hi in sorted(ranges):
        last = out[-1] if out else None
        if last is not None and last[0] == fam and lo <= last[2] + 1:
            if hi > last[2]:
                last[2] = hi
        else:
            out.append([fam, lo, hi])
    return tuple((f, lo, hi) for f, lo, hi in out)


def _text(fam: int, addr: int, prefix_len: int) -> str:
    if fam == 4:
        return f"{addr >> 24}.{addr >> 16 & 255}.{addr >> 8 & 255}.{addr & 255}/{prefix_len}"
    return f"{ipaddress.IPv6Address(addr)}/{prefix_len}"


def _prefixes(merged: Iterable[Range]) -> tuple[str, ...]:
    """The fewest prefixes covering merged ranges, in address order (IPv4
    first): what ``ipaddress.collapse_addresses`` gives, by arithmetic."""
    out: list[str] = []
    for fam, lo, hi in merged:
        bits = _BITS[fam]
        while lo <= hi:
            align = (lo & -lo).bit_length() - 1 if lo else bits
            k = min(align, (hi - lo + 1).bit_length() - 1)
            out.append(_text(fam, lo, bits - k))
            lo += 1 << k
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class _Peers:
    """A rule's resolved peers: the collapsed prefixes and the merged ranges
    behind them (for membership)."""

    cidrs: tuple[str, ...]
    ranges: tuple[Range, ...]

    def contains(self, fam: int, addr: int) -> bool:
        i = bisect.bisect_right(self.ranges, (fam, addr, _ABOVE))
        if not i:
            return False
        f, lo, hi = self.ranges[i - 1]
        return f == fam and lo <= addr <= hi


_EMPTY: frozenset[int] = frozenset()


class _Index:
    """The world, indexed once: endpoints by namespace, by label (key, value)
    and by label key, so that a selector is a few set operations instead of a
    scan. Endpoint ``k`` is the k-th in address order (sorting a set of them
    sorts their addresses); ``world_order`` lists them as the world does."""

    def __init__(self, world: World) -> None:
        self.world = world
        keyed = []
        for e in world.endpoints:
            a = e.address
            keyed.append(((a.version, int(a)), e))
        keyed.sort(key=lambda x: x[0])
        self.eps: list[Endpoint] = [e for _, e in keyed]
        self.addr: list[tuple[int, int]] = [fa for fa, _ in keyed]
        pos = {id(e): k for k, e in enumerate(self.eps)}
        self.world_order: list[int] = [pos[id(e)] for e in world.endpoints]
        self.all: frozenset[int] = frozenset(range(len(self.eps)))
        by_ns: dict[str, set[int]] = {}
        by_label: dict[tuple[str, str], set[int]] = {}
        by_key: dict[str, set[int]] = {}
        by_port: dict[str, list[int]] = {}
        for k, e in enumerate(self.eps):
            by_ns.setdefault(e.namespace, set()).add(k)
            for item in e.labels.items():
                by_label.setdefault(item, set()).add(k)
                by_key.setdefault(item[0], set()).add(k)
        for k in self.world_order:
            for name in self.eps[k].named_ports:
                by_port.setdefault(name, []).append(k)
        self.by_ns = {ns: frozenset(s) for ns, s in by_ns.items()}
        self.by_label = {kv: frozenset(s) for kv, s in by_label.items()}
        self.by_key = {key: frozenset(s) for key, s in by_key.items()}
        self.by_port = by_port  # name -> endpoints with a port of that name, world order
        self._pods: dict[LabelSelector, frozenset[int]] = {}
        self._nss: dict[LabelSelector, frozenset[int]] = {}

    def pods(self, sel: LabelSelector) -> frozenset[int]:
        """Endpoints whose labels ``sel`` matches (``LabelSelector.matches``)."""
        got = self._pods.get(sel)
        if got is not None:
            return got
        s: frozenset[int] | None = None
        for item in sel.match_labels:
            m = self.by_label.get(item, _EMPTY)
            s = m if s is None else s & m
        for r in sel.match_expressions:
            if r.operator in ("In", "NotIn"):
                m = _EMPTY.union(*(self.by_label.get((r.key, v), _EMPTY) for v in r.values))
                if r.operator == "NotIn":  # an absent key is "not in"
                    m = self.all - m
            else:
                m = self.by_key.get(r.key, _EMPTY)
                if r.operator == "DoesNotExist":
                    m = self.all - m
            s = m if s is None else s & m
        got = self.all if s is None else s
        self._pods[sel] = got
        return got

    def in_namespaces(self, sel: LabelSelector) -> frozenset[int]:
        """Endpoints of the namespaces whose labels ``sel`` matches."""
        got = self._nss.get(sel)
        if got is None:
            w = self.world
            got = _EMPTY.union(
                *(
                    self.by_ns.get(ns, _EMPTY)
                    for ns in w.namespaces
                    if sel.matches(w.namespaces[ns])
                )
            )
            self._nss[sel] = got
        return got

    def namespaced(self, ns_sel: LabelSelector, pod_sel: LabelSelector | None) -> frozenset[int]:
        """An ANP subject or peer: namespaceSelector AND podSelector."""
        got = self.in_namespaces(ns_sel)
        return got if pod_sel is None else got & self.pods(pod_sel)

    def np_peer(self, peer: NPPeer, policy_ns: str) -> frozenset[int]:
        """A selector peer (``World.np_peer_matches``)."""
        if peer.namespace_selector is None:
            got = self.by_ns.get(policy_ns, _EMPTY)
        else:
            got = self.in_namespaces(peer.namespace_selector)
        return got if peer.pod_selector is None else got & self.pods(peer.pod_selector)

    def np_selected(self, p: NetworkPolicy) -> frozenset[int]:
        """The pods ``p`` selects (``World.np_selects``)."""
        return self.by_ns.get(p.namespace, _EMPTY) & self.pods(p.pod_selector)


Entry = tuple[tuple[str, ...], str | None, int, int]  # cidrs, protocol, first, last port
Sig = tuple[tuple[int, str] | None, ...]


class _Compiler:
    """Every port's tables from one world and one policy set. What does not
    depend on the port is resolved once and shared: each rule's peers, each
    policy's selected pods, each rule's entries (those of an ingress rule with
    named ports once per distinct (name -> port) of the pods), and identical
    tiers are one tuple of the same ``CompiledRule`` objects."""

    def __init__(
        self,
        world: World,
        nps: list[NetworkPolicy],
        anps: list[AdminNetworkPolicy],
        banp: BaselineAdminNetworkPolicy | None,
    ) -> None:
        self.ix = _Index(world)
        self.nps, self.anps, self.banp = nps, anps, banp
        self.node = _prefixes(
            _merge(_net_range(ipaddress.ip_network(a)) for a in world.node_addresses)
        )
        self._all = _Peers(_prefixes(_ALL_RANGES), _ALL_RANGES)
        self._peers: dict[tuple[frozenset[int], tuple[Range, ...]], _Peers] = {}
        self._named_cache: dict[tuple[int, str, str | None], list[Entry]] = {}
        self._rules: dict[tuple[object, ...], list[CompiledRule]] = {}
        self._isolating: dict[Direction, list[list[int]]] = {}
        self._subjects: dict[int, frozenset[int]] = {}
        self._tuples: dict[tuple[int, ...], tuple[CompiledRule, ...]] = {}
        self._names_cache: dict[tuple[int, Direction], tuple[str, ...]] = {}

    # -- peers -> prefixes

    def _resolve(self, hosts: frozenset[int], ranges: list[Range]) -> _Peers | None:
        if not hosts and not ranges:
            return None
        key = (hosts, tuple(ranges))
        got = self._peers.get(key)
        if got is None:
            addr = self.ix.addr
            merged = _merge([*ranges, *((addr[k][0], addr[k][1], addr[k][1]) for k in hosts)])
            got = _Peers(_prefixes(merged), merged)
            self._peers[key] = got
        return got

    def _np_peers(self, rule: Rule, ns: str) -> _Peers | None:
        if not rule.peers:
            return self._all
        hosts: frozenset[int] = _EMPTY
        ranges: list[Range] = []
        for peer in rule.peers:
            if peer.ip_block is not None:
                ranges += _subtract(_net_range(peer.ip_block.cidr), peer.ip_block.except_)
            else:
                hosts = hosts | self.ix.np_peer(peer, ns)
        return self._resolve(hosts, ranges)

    def _admin_peers(self, rule: AdminRule) -> _Peers | None:
        hosts: frozenset[int] = _EMPTY
        ranges: list[Range] = []
        for peer in rule.peers:
            if peer.networks:
                ranges += [_net_range(n) for n in peer.networks]
            else:
                sel = peer.namespace_selector
                assert sel is not None  # a non-network admin peer always has one (model)
                hosts = hosts | self.ix.namespaced(sel, peer.pod_selector)
        return self._resolve(hosts, ranges)

    # -- named ports: (peer prefixes, protocol, number) entries

    def _named(
        self, peers: _Peers, name: str, protocol: str | None, d: Direction, ep: Endpoint | None
    ) -> list[Entry]:
        """Where ``name`` resolves: on this pod (``ep``) for ingress (any
        peer), on each destination pod inside ``peers`` for egress.
        ``protocol`` None: any (ANP namedPort), else the port must have that
        protocol too."""
        if d == "ingress":
            assert ep is not None
            got = ep.named_ports.get(name)
            if got is not None and protocol in (None, got[1]):
                return [(peers.cidrs, got[1], got[0], got[0])]
            return []
        key = (id(peers), name, protocol)
        out = self._named_cache.get(key)
        if out is None:
            out = []
            ix = self.ix
            for k in ix.by_port.get(name, ()):
                got = ix.eps[k].named_ports[name]
                fam, a = ix.addr[k]
                if protocol in (None, got[1]) and peers.contains(fam, a):
                    out.append(((_text(fam, a, _BITS[fam]),), got[1], got[0], got[0]))
            self._named_cache[key] = out
        return out

    def _np_entries(
        self, policy: NetworkPolicy, rule: Rule, d: Direction, ep: Endpoint | None
    ) -> list[Entry]:
        peers = self._np_peers(rule, policy.namespace)
        if peers is None:
            return []
        if not rule.ports:
            return [(peers.cidrs, None, *PORT_ANY)]
        out: list[Entry] = []
        for p in rule.ports:
            if p.port is None:
                out.append((peers.cidrs, p.protocol, *PORT_ANY))
            elif isinstance(p.port, str):
                out += self._named(peers, p.port, p.protocol, d, ep)
            else:
                hi = p.end_port if p.end_port is not None else p.port
                out.append((peers.cidrs, p.protocol, p.port, hi))
        return out

    def _admin_entries(self, rule: AdminRule, d: Direction, ep: Endpoint | None) -> list[Entry]:
        peers = self._admin_peers(rule)
        if peers is None:
            return []
        if rule.ports is None:
            return [(peers.cidrs, None, *PORT_ANY)]
        out: list[Entry] = []
        for p in rule.ports:
            if p.name is not None:
                out += self._named(peers, p.name, None, d, ep)
            else:
                out.append((peers.cidrs, p.protocol, p.start, p.end))
        return out

    def _policy_rules(
        self, policy: NetworkPolicy | AdminNetworkPolicy | BaselineAdminNetworkPolicy,
        d: Direction, ep: Endpoint,
    ) -> list[CompiledRule]:  # fmt: skip
        """A policy's entries for ``d`` as ``ep`` sees them, cached per policy,
        direction and (ingress only) the pod's ports of the names the
        policy's rules use."""
        names = self._names(policy, d)
        sig: Sig = tuple(ep.named_ports.get(n) for n in names)
        key = (id(policy), d, sig)
        got = self._rules.get(key)
        if got is not None:
            return got
        got = []
        if isinstance(policy, NetworkPolicy):
            for i, r in enumerate(policy.rules(d)):
                for cidrs, proto, lo, hi in self._np_entries(policy, r, d, ep):
                    if cidrs:
                        got.append(CompiledRule(cidrs, proto, lo, hi, "allow", policy.key, i))
        else:
            for i, ar in enumerate(policy.rules(d)):
                action = ar.action.lower()
                for cidrs, proto, lo, hi in self._admin_entries(ar, d, ep):
                    if cidrs:
                        got.append(CompiledRule(cidrs, proto, lo, hi, action, policy.name, i))
        self._rules[key] = got
        return got

    def _names(
        self, policy: NetworkPolicy | AdminNetworkPolicy | BaselineAdminNetworkPolicy, d: Direction
    ) -> tuple[str, ...]:
        """The port names an ingress table of ``policy`` resolves on its pod."""
        if d != "ingress":
            return ()
        key = (id(policy), d)
        got = self._names_cache.get(key)
        if got is None:
            names: set[str] = set()
            if isinstance(policy, NetworkPolicy):
                for r in policy.rules(d):
                    names.update(p.port for p in r.ports if isinstance(p.port, str))
            else:
                for ar in policy.rules(d):
                    names.update(p.name for p in ar.ports or () if p.name is not None)
            got = self._names_cache[key] = tuple(sorted(names))
        return got

    def _selects(self, subject: Subject) -> frozenset[int]:
        got = self._subjects.get(id(subject))
        if got is None:
            got = self.ix.namespaced(subject.namespace_selector, subject.pod_selector)
            self._subjects[id(subject)] = got
        return got

    def _isolating_of(self, d: Direction) -> list[list[int]]:
        """Per endpoint, the NetworkPolicies (indexes, in order) that isolate it in ``d``."""
        got = self._isolating.get(d)
        if got is None:
            got = [[] for _ in self.ix.eps]
            for i, p in enumerate(self.nps):
                if p.isolates(d):
                    for k in self.ix.np_selected(p):
                        got[k].append(i)
            self._isolating[d] = got
        return got

    def _intern(self, rules: list[CompiledRule]) -> tuple[CompiledRule, ...]:
        key = tuple(map(id, rules))
        got = self._tuples.get(key)
        if got is None:
            got = self._tuples[key] = tuple(rules)
        return got

    def table(self, k: int, d: Direction) -> PortTable:
        ep = self.ix.eps[k]
        admin: list[CompiledRule] = []
        for anp in self.anps:
            if k in self._selects(anp.subject):
                admin += self._policy_rules(anp, d, ep)
        isolating = self._isolating_of(d)[k]
        nprules: list[CompiledRule] = []
        for i in isolating:
            nprules += self._policy_rules(self.nps[i], d, ep)
        baseline: list[CompiledRule] = []
        if self.banp is not None and k in self._selects(self.banp.subject):
            baseline += self._policy_rules(self.banp, d, ep)
        return PortTable(
            str(ep.address),
            d,
            self.node,
            self._intern(admin),
            bool(isolating),
            self.nps[isolating[0]].key if isolating else None,
            self._intern(nprules),
            self._intern(baseline),
        )

    def endpoint_index(self, port_ip: str) -> int:
        try:
            ep = self.ix.world.endpoint(port_ip)
        except ValueError:
            raise ConfigError("port_ip", port_ip, "an IPv4 or IPv6 address") from None
        if ep is None:
            raise ConfigError("port_ip", port_ip, "the address of an endpoint of the world")
        a = ep.address
        return bisect.bisect_left(self.ix.addr, (a.version, int(a)))


def _direction(direction: object) -> Direction:
    if direction not in ("ingress", "egress"):
        raise ConfigError("direction", direction, "'ingress' or 'egress'")
    return direction


def compile_port(
    world: World,
    networkpolicies: Iterable[NetworkPolicy] = (),
    admin: Iterable[AdminNetworkPolicy] = (),
    baseline: BaselineAdminNetworkPolicy | None = None,
    *,
    port_ip: str,
    direction: Direction,
) -> PortTable:
    """The rule table of the pod at ``port_ip`` for ``direction``."""
    nps, anps, banp = check_inputs(networkpolicies, admin, baseline)
    d = _direction(direction)
    c = _Compiler(world, nps, anps, banp)
    return c.table(c.endpoint_index(port_ip), d)


def compile_ports(
    world: World,
    networkpolicies: Iterable[NetworkPolicy] = (),
    admin: Iterable[AdminNetworkPolicy] = (),
    baseline: BaselineAdminNetworkPolicy | None = None,
    *,
    port_ips: Iterable[str] | None = None,
    directions: Iterable[Direction] = ("ingress", "egress"),
) -> dict[tuple[str, Direction], PortTable]:
    """The tables of many pods at once, keyed by (address as given, direction):
    what ``compile_port`` gives for each, with everything that does not depend
    on the pod resolved once. ``port_ips`` None: every endpoint of the world."""
    nps, anps, banp = check_inputs(networkpolicies, admin, baseline)
    ds = [_direction(d) for d in directions]
    c = _Compiler(world, nps, anps, banp)
    ips = [e.ip for e in world.endpoints] if port_ips is None else list(port_ips)
    out: dict[tuple[str, Direction], PortTable] = {}
    for ip in ips:
        k = c.endpoint_index(ip)
        for d in ds:
            out[(ip, d)] = c.table(k, d)
    return out


def evaluate_tables(
    world: World,
    tables: dict[tuple[str, Direction], PortTable],
    *,
    src: str,
    dst: str,
    port: int,
    protocol: str = "TCP",
) -> Verdict:
    """The verdict of a connection from compiled tables alone, keyed by
    (endpoint address, direction): what the data plane decides."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    eg = tables.get((str(s), "egress")) if world.endpoint(s) else None
    ig = tables.get((str(d), "ingress")) if world.endpoint(d) else None
    return combine(
        eg.decide(d, protocol, port) if eg else None,
        ig.decide(s, protocol, port) if ig else None,
    )
