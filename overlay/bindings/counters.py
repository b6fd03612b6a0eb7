"""Counters (``overlay.h``, "counters" and "counter readers"; ``counters.c``).

Names, help texts and kinds come from ``native/counters.def`` through ``lib``
at import, so Python never holds a list of its own. The readers return dicts
keyed by name; every value is summed over the workers by the C side.
"""

from __future__ import annotations

from typing import Any

from overlay.bindings._ffi import Handle, check, cstr, ffi, lib

__all__ = [
    "COUNTER_HELP",
    "COUNTER_NAMES",
    "DROP_REASONS",
    "OBJ_COUNTER_NAMES",
    "CountersArea",
    "counter_name",
]

COUNTER_NAMES: tuple[str, ...] = tuple(
    str(cstr(lib.ovl_counter_name(i))) for i in range(lib.ovl_counter_count())
)
DROP_REASONS: tuple[str, ...] = tuple(
    n for i, n in enumerate(COUNTER_NAMES) if lib.ovl_counter_is_drop(i)
)
COUNTER_HELP: dict[str, str] = {
    COUNTER_NAMES[i]: str(cstr(lib.ovl_counter_help(i))) for i in range(lib.ovl_counter_count())
}
OBJ_COUNTER_NAMES: tuple[str, ...] = tuple(
    str(cstr(lib.ovl_obj_counter_name(i))) for i in range(lib.ovl_obj_counter_count())
)


def counter_name(counter_id: int) -> str | None:
    """The name of counter ``counter_id`` (``ovl_counter_name``), None past the list."""
    if counter_id < 0:
        raise ValueError(f"counter id {counter_id}: must be >= 0")
    return cstr(lib.ovl_counter_name(counter_id))


def node_values(buf: Any) -> dict[str, int]:
    """A filled ``uint64_t[len(COUNTER_NAMES)]`` as a dict by name."""
    return {name: int(buf[i]) for i, name in enumerate(COUNTER_NAMES)}


class CountersArea(Handle):
    """The engine's counter readers (mixed into ``Engine``)."""

    def counters(self) -> dict[str, int]:
        """The node counters, summed over the workers (and the learner)."""
        n = len(COUNTER_NAMES)
        buf = ffi.new("uint64_t[]", n)
        lib.ovl_counters_engine(self._h(), buf, n)
        return node_values(buf)

    def _obj(self, rc: int, buf: Any) -> dict[str, int]:
        return {name: int(buf[i]) for i, name in enumerate(OBJ_COUNTER_NAMES[:rc])}

    def network_counters(self, vni: int) -> dict[str, int]:
        buf = ffi.new("uint64_t[]", len(OBJ_COUNTER_NAMES))
        rc = check(
            lib.ovl_counters_network(self._h(), vni, buf, len(OBJ_COUNTER_NAMES)),
            f"counters of vni={vni}",
        )
        return self._obj(rc, buf)

    def port_counters(self, port_id: int) -> dict[str, int]:
        buf = ffi.new("uint64_t[]", len(OBJ_COUNTER_NAMES))
        rc = check(
            lib.ovl_counters_port(self._h(), port_id, buf, len(OBJ_COUNTER_NAMES)),
            f"counters of port {port_id}",
        )
        return self._obj(rc, buf)
