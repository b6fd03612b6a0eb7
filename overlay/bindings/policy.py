"""Network policy (``overlay.h``, "network policy"; ``policy.c``, ``acl.c``, ``conntrack.c``).

A port has one compiled rule table per direction. :class:`PolicyRule` is one
rule as the engine takes it: an id the hit counters and verdict events report,
a tier (``admin``, ``netpol``, ``baseline``), an action (``allow``, ``deny``,
``pass``), peers (CIDR blocks, each less its excepts; none: any address) and
ports (a protocol and a range; none: any protocol and port). Rules are given
in precedence order; :meth:`PolicyArea.port_policy_set` checks every field,
naming the rule and field at fault, turns them into ``ovl_policy_line_t``
lines and swaps the port's table at once. The compiler that produces the
rules from Kubernetes objects lives in ``overlay.policy``; this module only
carries them across.

:meth:`PolicyArea.port_policy_probe` is the dry run of one connection's first
packet against a port's table in force (``ovl_port_policy_probe``): the
verdict and rule the stage would give, with nothing counted, tracked or
reported, so what the data plane holds can be checked against what the
policies say without a packet sent.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from overlay.bindings._ffi import Handle, check, ffi, lib
from overlay.errors import ConfigError

__all__ = [
    "DIRECTIONS",
    "PROBE_PROTOCOLS",
    "PROBE_VERDICTS",
    "EncodedRules",
    "RULE_DEFAULT",
    "RULE_ISOLATION",
    "RULE_PENDING",
    "PeerBlock",
    "PolicyArea",
    "PolicyRule",
    "PortRange",
    "encode_rules",
    "probe_protocol",
]

DIRECTIONS: dict[str, int] = {"ingress": lib.OVL_POLICY_INGRESS, "egress": lib.OVL_POLICY_EGRESS}
TIERS: dict[str, int] = {
    "admin": lib.OVL_TIER_ADMIN,
    "netpol": lib.OVL_TIER_NETPOL,
    "baseline": lib.OVL_TIER_BASELINE,
}
ACTIONS: dict[str, int] = {
    "allow": lib.OVL_ACT_ALLOW,
    "deny": lib.OVL_ACT_DENY,
    "pass": lib.OVL_ACT_PASS,
}
PROTOCOLS: dict[str, int] = {"any": 0, "tcp": 6, "udp": 17, "sctp": 132}

#: The ids of the implicit verdicts in hit counters and events.
RULE_ISOLATION: int = lib.OVL_RULE_ISOLATION
RULE_DEFAULT: int = lib.OVL_RULE_DEFAULT
RULE_PENDING: int = lib.OVL_RULE_PENDING
RULE_ID_MAX = RULE_PENDING - 1

#: ``ovl_port_policy_probe``'s verdicts by name: "none" is no table in that
#: direction (no policy: the packet passes); "audit" a deny that audit forwards.
PROBE_VERDICTS: dict[int, str] = {
    lib.OVL_PROBE_NONE: "none",
    lib.OVL_PROBE_ALLOW: "allow",
    lib.OVL_PROBE_DENY: "deny",
    lib.OVL_PROBE_AUDIT: "audit",
}
#: What a probe takes as protocol (any case) and its IP protocol; ICMP and
#: ICMPv6 (None) both stand for the peer's family's ICMP (1 or 58), no port.
PROBE_PROTOCOLS: dict[str, int | None] = {
    "tcp": 6,
    "udp": 17,
    "sctp": 132,
    "icmp": None,
    "icmpv6": None,
}


def probe_protocol(protocol: object, port: object, family: int) -> tuple[int, int]:
    """The IP protocol and destination port a probe of ``protocol``/``port``
    classifies for a peer of ``family`` (4 or 6): ICMP is the family's, with
    port 0 whatever ``port`` says. ConfigError names ``protocol`` or ``port``."""
    if not isinstance(protocol, str) or protocol.lower() not in PROBE_PROTOCOLS:
        raise ConfigError("protocol", protocol, "TCP, UDP, SCTP or ICMP (any case)")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError("port", port, "an integer 0-65535 (0 for ICMP)")
    proto = PROBE_PROTOCOLS[protocol.lower()]
    if proto is None:
        return (1 if family == 4 else 58), 0
    return proto, port


@dataclass(frozen=True)
class PeerBlock:
    """A CIDR block less the prefixes in ``except_`` (each inside the block)."""

    cidr: str
    except_: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortRange:
    """``protocol`` (tcp, udp, sctp; any: every protocol and port) and ports lo..hi."""

    protocol: str = "tcp"
    lo: int = 0
    hi: int = 65535


@dataclass(frozen=True)
class PolicyRule:
    """One rule of a port's table, for one direction (see the module docstring)."""

    id: int
    action: str = "allow"
    tier: str = "netpol"
    peers: tuple[PeerBlock | str, ...] = ()
    ports: tuple[PortRange, ...] = ()
    audit: bool = False


_CIDR_EXPECTED = "a CIDR block like 10.244.0.0/16 or 2001:2::/48"


def _net(value: str, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=False)
    except (ValueError, TypeError):
        raise ConfigError(where, value, _CIDR_EXPECTED) from None


# ovl_policy_line_t, packed as the compiler lays it out (checked below): the
# head (rule, id, tier, action, kind, flags) and the tail (family,
# prefix_len, proto, pad, port_lo, port_hi, addr).
_HEAD = struct.Struct("=IIBBBB")
_TAIL = struct.Struct("=BBBxHH16s")
_LAYOUT = (
    ffi.sizeof("ovl_policy_line_t"),
    ffi.offsetof("ovl_policy_line_t", "family"),
    ffi.offsetof("ovl_policy_line_t", "addr"),
)
if (_HEAD.size + _TAIL.size, _HEAD.size, _HEAD.size + 8) != _LAYOUT:
    raise ImportError(f"ovl_policy_line_t is laid out as {_LAYOUT}, not as packed here")
_ANY_PORT = _TAIL.pack(0, 0, 0, 0, 65535, bytes(16))


@functools.lru_cache(maxsize=1 << 16)
def _prefix_tail(cidr: str) -> bytes:
    """The tail of a PEER or EXCEPT line for ``cidr`` (ValueError if it is not
    one). Tables repeat the same prefixes across ports: parsed once."""
    net = ipaddress.ip_network(cidr, strict=False)
    return _TAIL.pack(
        net.version, net.prefixlen, 0, 0, 0, net.network_address.packed.ljust(16, b"\0")
    )


@dataclass(frozen=True)
class EncodedRules:
    """Rules checked and laid out as ``ovl_policy_line_t`` lines
    (:func:`encode_rules`): what ``port_policy_set`` hands to C. One encoding
    can be set on many ports (tables that are the same are encoded once)."""

    data: bytes
    lines: int
    rules: int
    netpol: bool


def encode_rules(rules: Sequence[PolicyRule]) -> EncodedRules:
    """The ovl_policy_line_t lines of ``rules``, each field checked
    (``ConfigError`` names the rule and field at fault)."""
    parts: list[bytes] = []
    last_tier = -1
    netpol = False
    for rank, r in enumerate(rules):
        where = f"rules[{rank}]"
        if not isinstance(r.id, int) or not 0 <= r.id <= RULE_ID_MAX:
            raise ConfigError(f"{where}.id", r.id, f"an integer 0-{RULE_ID_MAX}")
        if r.tier not in TIERS:
            raise ConfigError(f"{where}.tier", r.tier, f"one of {sorted(TIERS)}")
        if r.action not in ACTIONS:
            raise ConfigError(f"{where}.action", r.action, f"one of {sorted(ACTIONS)}")
        tier, action = TIERS[r.tier], ACTIONS[r.action]
        if tier < last_tier:
            raise ConfigError(
                f"{where}.tier", r.tier, "rules in precedence order: admin, netpol, baseline"
            )
        last_tier = tier
        if r.tier == "netpol":
            netpol = True
            if r.action != "allow":
                raise ConfigError(f"{where}.action", r.action, "NetworkPolicy rules only allow")
        if r.action == "pass" and r.tier != "admin":
            raise ConfigError(f"{where}.action", r.action, "pass is for admin rules only")
        flags = lib.OVL_RULE_AUDIT if r.audit else 0
        head_peer = _HEAD.pack(rank, r.id, tier, action, lib.OVL_LINE_PEER, flags)
        start = len(parts)
        for i, peer in enumerate(r.peers):
            cidr = peer.cidr if isinstance(peer, PeerBlock) else peer
            try:
                parts.append(head_peer + _prefix_tail(cidr))
            except (ValueError, TypeError):
                raise ConfigError(f"{where}.peers[{i}]", cidr, _CIDR_EXPECTED) from None
            if isinstance(peer, PeerBlock) and peer.except_:
                parts += _excepts(peer, f"{where}.peers[{i}]", rank, r.id, tier, action, flags)
        if r.ports:
            head_port = _HEAD.pack(rank, r.id, tier, action, lib.OVL_LINE_PORT, flags)
            for i, pr in enumerate(r.ports):
                proto = PROTOCOLS.get(pr.protocol.lower()) if isinstance(pr.protocol, str) else None
                if proto is None:
                    raise ConfigError(
                        f"{where}.ports[{i}].protocol", pr.protocol, f"one of {sorted(PROTOCOLS)}"
                    )
                if not (0 <= pr.lo <= pr.hi <= 65535):
                    raise ConfigError(
                        f"{where}.ports[{i}]",
                        (pr.lo, pr.hi),
                        "a range lo..hi with 0 <= lo <= hi <= 65535",
                    )
                parts.append(head_port + _TAIL.pack(0, 0, proto, pr.lo, pr.hi, bytes(16)))
        if len(parts) == start:  # any peer, any port
            parts.append(_HEAD.pack(rank, r.id, tier, action, lib.OVL_LINE_PORT, flags) + _ANY_PORT)
    return EncodedRules(b"".join(parts), len(parts), len(rules), netpol)


def _excepts(
    block: PeerBlock, where: str, rank: int, rid: int, tier: int, action: int, flags: int
) -> list[bytes]:
    net = _net(block.cidr, where)
    head = _HEAD.pack(rank, rid, tier, action, lib.OVL_LINE_EXCEPT, flags)
    out = []
    for j, ex in enumerate(block.except_):
        exn = _net(ex, f"{where}.except[{j}]")
        if exn.version != net.version or not exn.subnet_of(net):  # type: ignore[arg-type]
            raise ConfigError(f"{where}.except[{j}]", ex, f"a prefix inside {block.cidr}")
        out.append(head + _prefix_tail(str(exn)))
    return out


class PolicyArea(Handle):
    """The engine's policy tables and connection tracking (mixed into ``Engine``)."""

    def port_policy_set(
        self,
        port_id: int,
        direction: str,
        rules: Sequence[PolicyRule] | EncodedRules = (),
        *,
        isolated: bool = False,
        audit: bool = False,
    ) -> None:
        """Put ``rules`` in force for ``direction`` (``ingress`` or ``egress``) of
        the port, at once, established connections included. ``isolated``: the
        port is selected by a NetworkPolicy in that direction (what no netpol
        rule allows is denied). ``audit``: every deny of the table is only
        counted (``policy_audit``) and forwarded. No rules, not isolated: no
        policy (everything passes, nothing is tracked)."""
        if direction not in DIRECTIONS:
            raise ConfigError("direction", direction, "ingress or egress")
        netpol = (
            rules.netpol
            if isinstance(rules, EncodedRules)
            else any(r.tier == "netpol" for r in rules)
        )
        if netpol and not isolated:
            raise ConfigError(
                "isolated", isolated, "True when the table holds NetworkPolicy (netpol) rules"
            )
        enc = rules if isinstance(rules, EncodedRules) else encode_rules(rules)
        n = enc.lines
        if n > lib.OVL_POLICY_LINES_MAX:
            raise ConfigError("rules", f"{n} lines", f"at most {lib.OVL_POLICY_LINES_MAX} lines")
        if enc.rules > lib.OVL_POLICY_RULES_MAX:
            raise ConfigError(
                "rules", f"{enc.rules} rules", f"at most {lib.OVL_POLICY_RULES_MAX} rules"
            )
        buf = ffi.new("ovl_policy_line_t[]", max(n, 1))
        ffi.memmove(buf, enc.data, len(enc.data))
        flags = (lib.OVL_POLICY_ISOLATED if isolated else 0) | (
            lib.OVL_POLICY_AUDIT if audit else 0
        )
        rc = lib.ovl_port_policy_set(self._h(), port_id, DIRECTIONS[direction], buf, n, flags)
        if rc == -errno.EINVAL:  # every field was checked above: the order, then
            raise ConfigError("rules", "...", "rules in precedence order, each well formed")
        check(rc, f"setting the {direction} policy of port {port_id}")

    def port_policy_hits(self, port_id: int, direction: str) -> dict[int, int]:
        """Connections decided per rule id (and RULE_ISOLATION, RULE_DEFAULT),
        summed over the workers; empty without a table."""
        if direction not in DIRECTIONS:
            raise ConfigError("direction", direction, "ingress or egress")
        d = DIRECTIONS[direction]
        n = check(
            lib.ovl_port_policy_hits(self._h(), port_id, d, ffi.NULL, ffi.NULL, 0),
            f"hit counters of port {port_id}",
        )
        ids = ffi.new("uint32_t[]", max(n, 1))
        hits = ffi.new("uint64_t[]", max(n, 1))
        n = min(n, check(lib.ovl_port_policy_hits(self._h(), port_id, d, ids, hits, n), "hits"))
        out: dict[int, int] = {}
        for i in range(n):
            out[int(ids[i])] = out.get(int(ids[i]), 0) + int(hits[i])
        return out

    def port_policy_probe(
        self, port_id: int, direction: str, peer: str, protocol: str, port: int
    ) -> tuple[str, int]:
        """What the port's table in force for ``direction`` decides for the
        first packet of a connection with ``peer`` (the remote end: the source
        of an ingress connection, the destination of an egress one) over
        ``protocol`` (TCP, UDP, SCTP, ICMP; any case) to ``port``: the verdict
        ("allow", "deny", "audit": a deny audit forwards, "none": no table in
        that direction) and the deciding rule id (RULE_DEFAULT for no table,
        RULE_PENDING for a port whose policy was never set). A dry run: no
        session, hit counter, counter or event changes. NotFoundError when the
        port is gone; ConfigError names ``direction``, ``peer``, ``protocol``
        or ``port``."""
        if direction not in DIRECTIONS:
            raise ConfigError("direction", direction, "ingress or egress")
        try:
            if not isinstance(peer, str):
                raise ValueError(peer)
            addr = ipaddress.ip_address(peer)
        except ValueError:
            raise ConfigError("peer", peer, "an IPv4 or IPv6 address") from None
        proto, dport = probe_protocol(protocol, port, addr.version)
        rule_id = ffi.new("uint32_t *")
        v = check(
            lib.ovl_port_policy_probe(
                self._h(),
                port_id,
                DIRECTIONS[direction],
                addr.version,
                addr.packed.ljust(16, b"\0"),
                proto,
                dport,
                rule_id,
            ),
            f"probing the {direction} policy of port {port_id}",
        )
        return PROBE_VERDICTS[v], int(rule_id[0])

    def conntrack_sessions(self) -> int:
        """Sessions held by the workers' connection tracking tables."""
        return int(lib.ovl_conntrack_sessions(self._h()))
