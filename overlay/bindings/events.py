"""Events for the control plane (``overlay.h``, "events"; ``events.c``).

The engine queues misses, MACs seen on ports and learned MACs in a ring and
signals an eventfd; :meth:`EventsArea.events` drains the ring into
:class:`Event` values.
"""

from __future__ import annotations

from dataclasses import dataclass

from overlay.bindings._ffi import Handle, addr_from, ffi, lib, mac_str

__all__ = ["EVENT_LEARNED", "EVENT_MAC_SEEN", "EVENT_MISS", "Event", "EventsArea"]

EVENT_MISS: int = lib.OVL_EVENT_MISS
EVENT_MAC_SEEN: int = lib.OVL_EVENT_MAC_SEEN
EVENT_LEARNED: int = lib.OVL_EVENT_LEARNED
_EVENT_NAMES = {EVENT_MISS: "miss", EVENT_MAC_SEEN: "mac_seen", EVENT_LEARNED: "learned"}


@dataclass(frozen=True)
class Event:
    """Something the data plane wants the control plane to know."""

    kind: str  # "miss", "mac_seen" or "learned"
    vni: int
    mac: str
    port_id: int | None = None  # the port that sent the frame
    vtep: str | None = None  # learned: where the MAC lives


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
            out.append(
                Event(
                    kind=_EVENT_NAMES.get(ev.type, str(ev.type)),
                    vni=ev.vni,
                    mac=mac_str(bytes(ev.mac)),
                    port_id=ev.port_id if ev.port_id >= 0 else None,
                    vtep=vtep,
                )
            )
        return out
