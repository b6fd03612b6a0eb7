"""The reference evaluator: one connection in, one verdict out, by the book.

This is the readable statement of the semantics the data plane must enforce,
written to follow the API documents line by line, not to be fast. The
compiler (overlay.policy.compile) is checked against it.

A connection from ``src`` to ``dst`` needs two answers: egress at the source
pod (when ``src`` is a pod) and ingress at the destination pod (when ``dst``
is one). Each direction is decided by the tiers in turn:

1. node: traffic between a pod and its node is always allowed
   ("traffic to and from the node where a Pod is running is always allowed");
2. admin: AdminNetworkPolicies whose subject selects the pod, by priority
   (lower first; equal priorities by name), rules in the order written; the
   first matching rule decides: Allow, Deny, or Pass (skip every remaining
   admin rule and go to 3);
3. networkpolicy: if any NetworkPolicy selecting the pod has this direction
   in its policyTypes, the pod is isolated and the connection is allowed iff
   some rule of some such policy matches (union, no order, no deny);
4. baseline: only when no NetworkPolicy isolates the pod in this direction,
   the BaselineAdminNetworkPolicy's rules in order, Allow or Deny;
5. default: allowed.

The verdict is for the initiating direction; replies of an allowed
connection are allowed ("reply traffic for those connections will also be
implicitly allowed"), which is the connection tracker's job.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Sequence

from overlay.errors import ConfigError
from overlay.policy.model import (
    AdminNetworkPolicy,
    AdminPeer,
    AdminRule,
    BaselineAdminNetworkPolicy,
    Direction,
    Endpoint,
    IPAddress,
    NetworkPolicy,
    Rule,
    World,
)

PACKET_PROTOCOLS = ("TCP", "UDP", "SCTP", "ICMP", "ICMPv6")


@dataclasses.dataclass(frozen=True)
class Decision:
    """The answer of one direction at one pod.

    ``tier`` is "node", "admin", "networkpolicy", "baseline" or "default";
    ``policy`` the deciding policy ("namespace/name" for a NetworkPolicy, the
    name for ANP/BANP; for an isolation deny, the first isolating policy);
    ``rule`` the index of the deciding rule in that policy's list for the
    direction (None for node, default and isolation denies).
    """

    allowed: bool
    tier: str
    policy: str | None
    rule: int | None
    direction: Direction


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The answer for one connection: egress at the source AND ingress at the
    destination. ``tier``/``policy``/``rule``/``direction`` come from the
    decision that counts: the first denying one (egress first, as the packet
    meets it first), else the ingress decision unless it was the default,
    else the egress decision. ``egress``/``ingress`` are None where that end
    is not a pod."""

    allowed: bool
    tier: str
    policy: str | None
    rule: int | None
    direction: Direction | None
    egress: Decision | None = None
    ingress: Decision | None = None


def combine(egress: Decision | None, ingress: Decision | None) -> Verdict:
    """The connection's verdict from the two directions' decisions."""
    decided: Decision | None
    if egress is not None and not egress.allowed:
        decided = egress
    elif ingress is not None and (not ingress.allowed or ingress.tier != "default"):
        decided = ingress
    elif egress is not None and egress.tier != "default":
        decided = egress
    else:
        decided = ingress or egress
    if decided is None:
        return Verdict(True, "default", None, None, None, None, None)
    return Verdict(
        decided.allowed,
        decided.tier,
        decided.policy,
        decided.rule,
        decided.direction,
        egress,
        ingress,
    )


def sort_admin(admin: Iterable[AdminNetworkPolicy]) -> list[AdminNetworkPolicy]:
    """ANPs in evaluation order: priority (lower first), then name."""
    return sorted(admin, key=lambda a: (a.priority, a.name))


def check_inputs(
    networkpolicies: Iterable[object], admin: Iterable[object], baseline: object
) -> tuple[list[NetworkPolicy], list[AdminNetworkPolicy], BaselineAdminNetworkPolicy | None]:
    nps: list[NetworkPolicy] = []
    for i, p in enumerate(networkpolicies):
        if not isinstance(p, NetworkPolicy):
            raise ConfigError(f"networkpolicies[{i}]", p, "a policy.NetworkPolicy")
        nps.append(p)
    anps: list[AdminNetworkPolicy] = []
    for i, a in enumerate(admin):
        if not isinstance(a, AdminNetworkPolicy):
            raise ConfigError(f"admin[{i}]", a, "a policy.AdminNetworkPolicy")
        anps.append(a)
    if baseline is not None and not isinstance(baseline, BaselineAdminNetworkPolicy):
        raise ConfigError("baseline", baseline, "a policy.BaselineAdminNetworkPolicy or None")
    return nps, sort_admin(anps), baseline


def _np_port_matches(
    world: World, rule: Rule, dst_ep: Endpoint | None, port: int, protocol: str
) -> bool:
    if not rule.ports:  # "If this field is empty or missing, this rule matches all ports"
        return True
    for p in rule.ports:
        if p.protocol != protocol:  # SCTP rules never match TCP, UDP never TCP
            continue
        if p.port is None:  # a protocol alone: every port of it
            return True
        if isinstance(p.port, str):
            # A named port is looked up on the destination pod, by name and protocol.
            if dst_ep is not None and world.named_port(dst_ep, p.port, protocol) == port:
                return True
            continue
        if p.port <= port <= (p.end_port if p.end_port is not None else p.port):
            return True
    return False


def _np_peer_matches(
    world: World, rule: Rule, policy_ns: str, peer_ip: IPAddress, peer_ep: Endpoint | None
) -> bool:
    if not rule.peers:  # "empty or missing ... matches all sources/destinations"
        return True
    for peer in rule.peers:
        if peer.ip_block is not None:
            # ipBlock is address-based, so it matches pods' addresses too (upstream
            # e2e "should allow egress access to server in CIDR block").
            if peer.ip_block.contains(peer_ip):
                return True
        elif peer_ep is not None and world.np_peer_matches(peer, policy_ns, peer_ep):
            return True
    return False


def _admin_peer_matches(
    world: World, peer: AdminPeer, peer_ip: IPAddress, peer_ep: Endpoint | None
) -> bool:
    if peer.networks:
        return any(peer_ip in n for n in peer.networks)
    if peer_ep is None or peer.namespace_selector is None:
        return False
    return peer.namespace_selector.matches(world.namespace_labels(peer_ep.namespace)) and (
        peer.pod_selector is None or peer.pod_selector.matches(peer_ep.labels)
    )


def _admin_rule_matches(
    world: World,
    rule: AdminRule,
    peer_ip: IPAddress,
    peer_ep: Endpoint | None,
    dst_ep: Endpoint | None,
    port: int,
    protocol: str,
) -> bool:
    if not any(_admin_peer_matches(world, p, peer_ip, peer_ep) for p in rule.peers):
        return False
    if rule.ports is None:  # "If Ports is not set then the rule does not filter traffic via port"
        return True
    for p in rule.ports:
        if p.name is not None:
            got = dst_ep.named_ports.get(p.name) if dst_ep is not None else None
            if got is not None and got == (port, protocol):
                return True
        elif p.protocol == protocol and p.start <= port <= p.end:
            return True
    return False


def decide(
    world: World,
    networkpolicies: Sequence[NetworkPolicy],
    admin_sorted: Sequence[AdminNetworkPolicy],
    baseline: BaselineAdminNetworkPolicy | None,
    ep: Endpoint,
    direction: Direction,
    peer_ip: IPAddress,
    port: int,
    protocol: str,
) -> Decision:
    """One direction at pod ``ep``: ``peer_ip`` is the other end (the source
    for ingress, the destination for egress); ``port`` is the destination
    port. ``admin_sorted`` must be in evaluation order (``sort_admin``)."""
    if world.is_node(peer_ip):
        return Decision(True, "node", None, None, direction)
    peer_ep = world.endpoint(peer_ip)
    dst_ep = ep if direction == "ingress" else peer_ep
    for anp in admin_sorted:
        if not world.subject_selects(anp.subject, ep):
            continue
        passed = False
        for i, rule in enumerate(anp.rules(direction)):
            if _admin_rule_matches(world, rule, peer_ip, peer_ep, dst_ep, port, protocol):
                if rule.action == "Pass":
                    passed = True
                    break
                return Decision(rule.action == "Allow", "admin", anp.name, i, direction)
        if passed:  # "skip any remaining ANP rules"
            break
    isolating = [p for p in networkpolicies if p.isolates(direction) and world.np_selects(p, ep)]
    if isolating:
        for p in isolating:
            for i, nr in enumerate(p.rules(direction)):
                if _np_peer_matches(world, nr, p.namespace, peer_ip, peer_ep) and (
                    _np_port_matches(world, nr, dst_ep, port, protocol)
                ):
                    return Decision(True, "networkpolicy", p.key, i, direction)
        return Decision(False, "networkpolicy", isolating[0].key, None, direction)
    if baseline is not None and world.subject_selects(baseline.subject, ep):
        for i, rule in enumerate(baseline.rules(direction)):
            if _admin_rule_matches(world, rule, peer_ip, peer_ep, dst_ep, port, protocol):
                return Decision(rule.action == "Allow", "baseline", baseline.name, i, direction)
    return Decision(True, "default", None, None, direction)


def check_packet(src: str, dst: str, port: int, protocol: str) -> tuple[IPAddress, IPAddress]:
    addrs = []
    for field, value in (("src", src), ("dst", dst)):
        try:
            addrs.append(ipaddress.ip_address(value))
        except ValueError:
            raise ConfigError(field, value, "an IPv4 or IPv6 address") from None
    if protocol not in PACKET_PROTOCOLS:
        raise ConfigError("protocol", protocol, f"one of {', '.join(PACKET_PROTOCOLS)}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError("port", port, "an integer 0-65535 (0 for ICMP)")
    return addrs[0], addrs[1]


def evaluate(
    world: World,
    networkpolicies: Iterable[NetworkPolicy] = (),
    admin: Iterable[AdminNetworkPolicy] = (),
    baseline: BaselineAdminNetworkPolicy | None = None,
    *,
    src: str,
    dst: str,
    port: int,
    protocol: str = "TCP",
) -> Verdict:
    """May ``src`` open a connection to ``dst``:``port``/``protocol``?"""
    nps, anps, banp = check_inputs(networkpolicies, admin, baseline)
    s, d = check_packet(src, dst, port, protocol)
    src_ep, dst_ep = world.endpoint(s), world.endpoint(d)
    egress = decide(world, nps, anps, banp, src_ep, "egress", d, port, protocol) if src_ep else None
    ingress = (
        decide(world, nps, anps, banp, dst_ep, "ingress", s, port, protocol) if dst_ep else None
    )
    return combine(egress, ingress)
