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
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from overlay.bindings._ffi import Handle, check, ffi, lib
from overlay.errors import ConfigError

__all__ = [
    "DIRECTIONS",
    "RULE_DEFAULT",
    "RULE_ISOLATION",
    "RULE_PENDING",
    "PeerBlock",
    "PolicyArea",
    "PolicyRule",
    "PortRange",
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


def _net(value: str, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError(where, value, "a CIDR block like 10.244.0.0/16 or 2001:2::/48") from None


def _lines(rules: Sequence[PolicyRule]) -> list[dict[str, object]]:
    """The ovl_policy_line_t fields of rules, each field checked."""
    out: list[dict[str, object]] = []
    last_tier = -1
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
        if r.tier == "netpol" and r.action != "allow":
            raise ConfigError(f"{where}.action", r.action, "NetworkPolicy rules only allow")
        if r.action == "pass" and r.tier != "admin":
            raise ConfigError(f"{where}.action", r.action, "pass is for admin rules only")
        base = {
            "rule": rank,
            "id": r.id,
            "tier": tier,
            "action": action,
            "flags": lib.OVL_RULE_AUDIT if r.audit else 0,
        }
        mine: list[dict[str, object]] = []
        for i, peer in enumerate(r.peers):
            block = peer if isinstance(peer, PeerBlock) else PeerBlock(peer)
            net = _net(block.cidr, f"{where}.peers[{i}]")
            mine.append({**base, "kind": lib.OVL_LINE_PEER, **_prefix(net)})
            for j, ex in enumerate(block.except_):
                exn = _net(ex, f"{where}.peers[{i}].except[{j}]")
                if exn.version != net.version or not exn.subnet_of(net):  # type: ignore[arg-type]
                    raise ConfigError(
                        f"{where}.peers[{i}].except[{j}]", ex, f"a prefix inside {block.cidr}"
                    )
                mine.append({**base, "kind": lib.OVL_LINE_EXCEPT, **_prefix(exn)})
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
            mine.append({**base, "kind": lib.OVL_LINE_PORT, "proto": proto,
                         "port_lo": pr.lo, "port_hi": pr.hi})  # fmt: skip
        if not mine:  # any peer, any port
            mine.append({**base, "kind": lib.OVL_LINE_PORT, "proto": 0, "port_hi": 65535})
        out.extend(mine)
    return out


def _prefix(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> dict[str, object]:
    return {
        "family": net.version,
        "prefix_len": net.prefixlen,
        "addr": net.network_address.packed.ljust(16, b"\0"),
    }


class PolicyArea(Handle):
    """The engine's policy tables and connection tracking (mixed into ``Engine``)."""

    def port_policy_set(
        self,
        port_id: int,
        direction: str,
        rules: Sequence[PolicyRule] = (),
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
        if any(r.tier == "netpol" for r in rules) and not isolated:
            raise ConfigError(
                "isolated", isolated, "True when the table holds NetworkPolicy (netpol) rules"
            )
        lines = _lines(rules)
        n = len(lines)
        if n > lib.OVL_POLICY_LINES_MAX:
            raise ConfigError("rules", f"{n} lines", f"at most {lib.OVL_POLICY_LINES_MAX} lines")
        if len(rules) > lib.OVL_POLICY_RULES_MAX:
            raise ConfigError(
                "rules", f"{len(rules)} rules", f"at most {lib.OVL_POLICY_RULES_MAX} rules"
            )
        buf = ffi.new("ovl_policy_line_t[]", max(n, 1))
        for i, ln in enumerate(lines):
            c = buf[i]
            for k, v in ln.items():
                if k == "addr":
                    ffi.memmove(c.addr, v, 16)
                else:
                    setattr(c, k, v)
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

    def conntrack_sessions(self) -> int:
        """Sessions held by the workers' connection tracking tables."""
        return int(lib.ovl_conntrack_sessions(self._h()))
