"""Events for the control plane (``overlay.h``, "events"; ``events.c``).

The engine queues misses, MACs seen on ports, learned MACs and policy
verdicts (denies and audited denies, rate-limited) in a ring and
signals an eventfd; :meth:`EventsArea.events` drains the ring into
:class:`Event` values.
"""

from __future__ import annotations

from dataclasses import dataclass

from overlay.bindings._ffi import Handle, addr_from, ffi, lib, mac_str

__all__ = [
    "EVENT_LEARNED",
    "EVENT_MAC_SEEN",
    "EVENT_MISS",
    "EVENT_POLICY",
    "Event",
    "EventsArea",
    "PolicyVerdict",
]

EVENT_MISS: int = lib.OVL_EVENT_MISS
EVENT_MAC_SEEN: int = lib.OVL_EVENT_MAC_SEEN
EVENT_LEARNED: int = lib.OVL_EVENT_LEARNED
EVENT_POLICY: int = lib.OVL_EVENT_POLICY
_EVENT_NAMES = {
    EVENT_MISS: "miss",
    EVENT_MAC_SEEN: "mac_seen",
    EVENT_LEARNED: "learned",
    EVENT_POLICY: "policy",
}
_VERDICTS = {lib.OVL_VERDICT_DENY: "deny", lib.OVL_VERDICT_AUDIT: "audit"}


@dataclass(frozen=True)
class PolicyVerdict:
    """A policy event's verdict: the rule that gave it and the packet's 5-tuple."""

    verdict: str  # "deny" or "audit" (a deny only counted)
    direction: str  # "ingress" or "egress"
    rule_id: int  # the rule's id, or RULE_ISOLATION / RULE_PENDING (overlay.bindings.policy)
    proto: int
    src: str
    dst: str
    sport: int
    dport: int


@dataclass(frozen=True)
class Event:
    """Something the data plane wants the control plane to know."""

    kind: str  # "miss", "mac_seen", "learned" or "policy"
    vni: int
    mac: str
    port_id: int | None = None  # the port that sent the frame
    vtep: str | None = None  # learned: where the MAC lives
    policy: PolicyVerdict | None = None  # policy: what was decided


class EventsArea(Handle):
    """The engine's event ring (mixed into ``Engine``)."""

    @property
    def event_fd(self) -> int:
        """Readable while events wait (an eventfd)."""
        return int(lib.ovl_events_fd(self._h()))

    def events(self, limit: int = 1024) -> list[Event]:
        """Take up to ``limit`` queued events, oldest first."""
        if limit < 1:
            raise ValueError(f"limit {limit}: must be >= 1")
        buf = ffi.new("ovl_event_t[]", limit)
        n = lib.ovl_events_take(self._h(), buf, limit)
        out = []
        for i in range(n):
            ev = buf[i]
            vtep = str(addr_from(ev.family, ev.addr)) if ev.type == EVENT_LEARNED else None
            verdict = None
            if ev.type == EVENT_POLICY:
                fam = ev.ip_family
                verdict = PolicyVerdict(
                    verdict=_VERDICTS.get(ev.verdict, str(ev.verdict)),
                    direction="egress" if ev.direction == lib.OVL_POLICY_EGRESS else "ingress",
                    rule_id=int(ev.rule_id),
                    proto=int(ev.proto),
                    src=str(addr_from(fam, ev.src)) if fam else "",
                    dst=str(addr_from(fam, ev.dst)) if fam else "",
                    sport=int(ev.sport),
                    dport=int(ev.dport),
                )
            out.append(
                Event(
                    kind=_EVENT_NAMES.get(ev.type, str(ev.type)),
                    vni=ev.vni,
                    mac=mac_str(bytes(ev.mac)),
                    port_id=ev.port_id if ev.port_id >= 0 else None,
                    vtep=vtep,
                    policy=verdict,
                )
            )
        return out
