"""The FDB and neighbours (``overlay.h``, "the FDB and neighbours"; ``fdb.c``).

Remote MACs behind VTEPs, neighbour entries for ARP/ND suppression, and the
dump of the whole FDB (remote, local and learned entries, with who wrote each
and where frames to it go).
"""

from __future__ import annotations

from dataclasses import dataclass

from overlay.bindings._ffi import (
    Handle,
    IPAddress,
    addr_bytes,
    addr_from,
    check,
    ffi,
    lib,
    mac_str,
)

__all__ = ["FdbArea", "FdbEntry"]

_FDB_KINDS = {
    lib.OVL_FDB_REMOTE: "remote",
    lib.OVL_FDB_LOCAL: "local",
    lib.OVL_FDB_LEARNED: "learned",
}
_NEXTHOP_KINDS = {lib.OVL_NH_PORT: "port", lib.OVL_NH_TUNNEL: "tunnel"}


@dataclass(frozen=True)
class FdbEntry:
    vni: int
    mac: str
    kind: str  # who wrote it: "remote" (control plane), "local" (a port) or "learned"
    vtep: str | None
    vtep_port: int | None
    port_id: int | None
    updated_ns: int
    used_ns: int
    nexthop: str = ""  # where frames to the MAC go: "port" or "tunnel"


class FdbArea(Handle):
    """The engine's FDB and neighbour table (mixed into ``Engine``)."""

    def fdb_add(self, vni: int, mac: bytes, vtep: IPAddress, port: int = 0) -> None:
        family, raw = addr_bytes(vtep)
        check(
            lib.ovl_fdb_add(self._h(), vni, mac, family, raw, port),
            f"adding FDB entry {mac_str(mac)} -> {vtep} in vni={vni}",
        )

    def fdb_del(self, vni: int, mac: bytes) -> None:
        check(
            lib.ovl_fdb_del(self._h(), vni, mac), f"removing FDB entry {mac_str(mac)} in vni={vni}"
        )

    def neigh_add(self, vni: int, ip: IPAddress, mac: bytes) -> None:
        family, raw = addr_bytes(ip)
        check(
            lib.ovl_fdb_neigh_add(self._h(), vni, family, raw, mac),
            f"adding neighbour {ip} in vni={vni}",
        )

    def neigh_del(self, vni: int, ip: IPAddress) -> None:
        family, raw = addr_bytes(ip)
        check(
            lib.ovl_fdb_neigh_del(self._h(), vni, family, raw),
            f"removing neighbour {ip} in vni={vni}",
        )

    def fdb_dump(self) -> list[FdbEntry]:
        n = 256
        while True:
            buf = ffi.new("ovl_fdb_entry_t[]", n)
            total = check(lib.ovl_fdb_dump(self._h(), buf, n), "dumping the FDB")
            if total <= n:
                break
            n = total + 64
        out = []
        for i in range(total):
            e = buf[i]
            remote = e.kind != lib.OVL_FDB_LOCAL
            out.append(
                FdbEntry(
                    vni=e.vni,
                    mac=mac_str(bytes(e.mac)),
                    kind=_FDB_KINDS.get(e.kind, str(e.kind)),
                    vtep=str(addr_from(e.family, e.vtep)) if remote else None,
                    vtep_port=e.vtep_port if remote else None,
                    port_id=e.port_id if not remote else None,
                    updated_ns=e.updated_ns,
                    used_ns=e.used_ns,
                    nexthop=_NEXTHOP_KINDS.get(e.nexthop, str(e.nexthop)),
                )
            )
        return out
