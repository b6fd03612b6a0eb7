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
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable

from overlay.errors import ConfigError
from overlay.policy.evaluate import Decision, Verdict, check_inputs, combine
from overlay.policy.model import (
    AdminNetworkPolicy,
    AdminPeer,
    AdminRule,
    BaselineAdminNetworkPolicy,
    Direction,
    Endpoint,
    IPAddress,
    IPNetwork,
    NetworkPolicy,
    Rule,
    World,
)
from overlay.policy.model import Peer as NPPeer

ALL = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
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


def _collapse(nets: Iterable[IPNetwork]) -> tuple[str, ...]:
    nets = list(nets)
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    out = [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]
    return tuple(str(n) for n in out)


def _subtract(net: IPNetwork, excepts: Iterable[IPNetwork]) -> list[IPNetwork]:
    parts = [net]
    for e in excepts:
        nxt: list[IPNetwork] = []
        for p in parts:
            if e.version != p.version or not e.overlaps(p):
                nxt.append(p)
            elif p.subnet_of(e):  # type: ignore[arg-type]
                continue
            else:
                nxt.extend(p.address_exclude(e))  # type: ignore[arg-type]
        parts = nxt
    return parts


def _host(ep: Endpoint) -> IPNetwork:
    return ipaddress.ip_network(ep.ip)


class _Compiler:
    def __init__(
        self,
        world: World,
        nps: list[NetworkPolicy],
        anps: list[AdminNetworkPolicy],
        banp: BaselineAdminNetworkPolicy | None,
        ep: Endpoint,
        direction: Direction,
    ) -> None:
        self.world, self.nps, self.anps, self.banp = world, nps, anps, banp
        self.ep, self.direction = ep, direction

    # -- peers -> prefixes

    def _np_peers(self, rule: Rule, ns: str) -> list[IPNetwork]:
        if not rule.peers:
            return list(ALL)
        out: list[IPNetwork] = []
        for peer in rule.peers:
            out.extend(self._np_peer(peer, ns))
        return out

    def _np_peer(self, peer: NPPeer, ns: str) -> list[IPNetwork]:
        if peer.ip_block is not None:
            return _subtract(peer.ip_block.cidr, peer.ip_block.except_)
        w = self.world
        return [_host(e) for e in w.endpoints if w.np_peer_matches(peer, ns, e)]

    def _admin_peers(self, rule: AdminRule) -> list[IPNetwork]:
        out: list[IPNetwork] = []
        for peer in rule.peers:
            out.extend(self._admin_peer(peer))
        return out

    def _admin_peer(self, peer: AdminPeer) -> list[IPNetwork]:
        if peer.networks:
            return list(peer.networks)
        w = self.world
        sel = peer.namespace_selector
        assert sel is not None  # a non-network admin peer always has one (model)
        return [
            _host(e)
            for e in w.endpoints
            if sel.matches(w.namespace_labels(e.namespace))
            and (peer.pod_selector is None or peer.pod_selector.matches(e.labels))
        ]

    # -- named ports: (peer prefixes, protocol, number) entries

    def _named(
        self, peers: list[IPNetwork], name: str, protocol: str | None
    ) -> list[tuple[list[IPNetwork], str, int]]:
        """Where ``name`` resolves: on this pod for ingress (any peer), on each
        destination pod inside ``peers`` for egress. ``protocol`` None: any
        (ANP namedPort), else the port must have that protocol too."""
        out: list[tuple[list[IPNetwork], str, int]] = []
        if self.direction == "ingress":
            got = self.ep.named_ports.get(name)
            if got is not None and protocol in (None, got[1]):
                out.append((peers, got[1], got[0]))
            return out
        for e in self.world.endpoints:
            got = e.named_ports.get(name)
            if got is None or protocol not in (None, got[1]):
                continue
            addr = e.address
            if any(addr in p for p in peers):
                out.append(([_host(e)], got[1], got[0]))
        return out

    @staticmethod
    def _entry(
        nets: list[IPNetwork], proto: str | None, lo: int, hi: int, action: str, pol: str, i: int
    ) -> list[CompiledRule]:
        cidrs = _collapse(nets)
        return [CompiledRule(cidrs, proto, lo, hi, action, pol, i)] if cidrs else []

    def np_rule(self, policy: NetworkPolicy, i: int, rule: Rule) -> list[CompiledRule]:
        peers = self._np_peers(rule, policy.namespace)
        if not peers:
            return []
        if not rule.ports:
            return self._entry(peers, None, *PORT_ANY, "allow", policy.key, i)
        out: list[CompiledRule] = []
        for p in rule.ports:
            if p.port is None:
                out += self._entry(peers, p.protocol, *PORT_ANY, "allow", policy.key, i)
            elif isinstance(p.port, str):
                for nets, proto, n in self._named(peers, p.port, p.protocol):
                    out += self._entry(nets, proto, n, n, "allow", policy.key, i)
            else:
                hi = p.end_port if p.end_port is not None else p.port
                out += self._entry(peers, p.protocol, p.port, hi, "allow", policy.key, i)
        return out

    def admin_rule(self, name: str, i: int, rule: AdminRule) -> list[CompiledRule]:
        peers = self._admin_peers(rule)
        if not peers:
            return []
        action = rule.action.lower()
        if rule.ports is None:
            return self._entry(peers, None, *PORT_ANY, action, name, i)
        out: list[CompiledRule] = []
        for p in rule.ports:
            if p.name is not None:
                for nets, proto, n in self._named(peers, p.name, None):
                    out += self._entry(nets, proto, n, n, action, name, i)
            else:
                out += self._entry(peers, p.protocol, p.start, p.end, action, name, i)
        return out

    def table(self) -> PortTable:
        w, ep, d = self.world, self.ep, self.direction
        admin: list[CompiledRule] = []
        for anp in self.anps:
            if w.subject_selects(anp.subject, ep):
                for i, r in enumerate(anp.rules(d)):
                    admin += self.admin_rule(anp.name, i, r)
        isolating = [p for p in self.nps if p.isolates(d) and w.np_selects(p, ep)]
        nprules: list[CompiledRule] = []
        for p in isolating:
            for i, nr in enumerate(p.rules(d)):
                nprules += self.np_rule(p, i, nr)
        baseline: list[CompiledRule] = []
        if self.banp is not None and w.subject_selects(self.banp.subject, ep):
            for i, r in enumerate(self.banp.rules(d)):
                baseline += self.admin_rule(self.banp.name, i, r)
        node = _collapse(ipaddress.ip_network(a) for a in w.node_addresses)
        return PortTable(
            str(ep.address),
            d,
            node,
            tuple(admin),
            bool(isolating),
            isolating[0].key if isolating else None,
            tuple(nprules),
            tuple(baseline),
        )


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
    if direction not in ("ingress", "egress"):
        raise ConfigError("direction", direction, "'ingress' or 'egress'")
    try:
        ep = world.endpoint(port_ip)
    except ValueError:
        raise ConfigError("port_ip", port_ip, "an IPv4 or IPv6 address") from None
    if ep is None:
        raise ConfigError("port_ip", port_ip, "the address of an endpoint of the world")
    return _Compiler(world, nps, anps, banp, ep, direction).table()


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
