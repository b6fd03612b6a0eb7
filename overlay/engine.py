"""The one module that touches cffi: a thin mirror of ``native/overlay.h``.

Layering as in PyNaCl/cryptography: this module checks arguments before each
call, turns negative errno results into typed exceptions through one helper
(``_check``), and reads constants and counter names from ``lib`` so they
cannot drift from the C. Classes above it (``overlay.node``) never see ``ffi``.

Addresses cross the boundary as 16-byte buffers plus a family (4 or 6); MACs
as 6 bytes. Those conversions live here too.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from overlay._native import ffi, lib
from overlay.errors import CapacityError, ConfigError, ConflictError, EngineError, NotFoundError

ENCAP_VXLAN: int = lib.OVL_ENCAP_VXLAN
ENCAP_GENEVE: int = lib.OVL_ENCAP_GENEVE
VNI_MAX: int = lib.OVL_VNI_MAX
_ENCAP_NAMES = {ENCAP_VXLAN: "VXLAN", ENCAP_GENEVE: "Geneve"}

COUNTER_NAMES: tuple[str, ...] = tuple(
    ffi.string(lib.ovl_counter_name(i)).decode() for i in range(lib.ovl_counter_count())
)
DROP_REASONS: tuple[str, ...] = tuple(
    n for i, n in enumerate(COUNTER_NAMES) if lib.ovl_counter_is_drop(i)
)
COUNTER_HELP: dict[str, str] = {
    COUNTER_NAMES[i]: ffi.string(lib.ovl_counter_help(i)).decode()
    for i in range(lib.ovl_counter_count())
}
OBJ_COUNTER_NAMES: tuple[str, ...] = tuple(
    ffi.string(lib.ovl_obj_counter_name(i)).decode() for i in range(lib.ovl_obj_counter_count())
)

OFFLOADS: dict[str, int] = {
    "tap_tso": lib.OVL_OFF_TAP_TSO,
    "tap_uso": lib.OVL_OFF_TAP_USO,
    "udp_gso": lib.OVL_OFF_UDP_GSO,
    "udp_gro": lib.OVL_OFF_UDP_GRO,
}
"""Offload switches by name: what ``Engine(offloads=...)`` takes and ``Engine.offloads`` reports."""

EVENT_MISS: int = lib.OVL_EVENT_MISS
EVENT_MAC_SEEN: int = lib.OVL_EVENT_MAC_SEEN
EVENT_LEARNED: int = lib.OVL_EVENT_LEARNED
_EVENT_NAMES = {EVENT_MISS: "miss", EVENT_MAC_SEEN: "mac_seen", EVENT_LEARNED: "learned"}
_FDB_KINDS = {
    lib.OVL_FDB_REMOTE: "remote",
    lib.OVL_FDB_LOCAL: "local",
    lib.OVL_FDB_LEARNED: "learned",
}
_NEXTHOP_KINDS = {lib.OVL_NH_PORT: "port", lib.OVL_NH_TUNNEL: "tunnel"}


def _check(rc: int, what: str) -> int:
    """Return rc when it is not negative, else raise the exception for -rc."""
    if rc >= 0:
        return rc
    err = -rc
    text = f"{what}: {os.strerror(err)}"
    if err in (errno.EEXIST, errno.EADDRINUSE):
        raise ConflictError(text)
    if err == errno.ENOENT:
        raise NotFoundError(text)
    if err == errno.ENOSPC:
        raise CapacityError(text + " (raise the table size in the node's configuration)")
    raise EngineError(err, text)


def _port_flags(security: bool, router: bool) -> int:
    """OVL_PORT_* for port security off and the router mark (RA guard)."""
    return (0 if security else lib.OVL_PORT_NO_SECURITY) | (lib.OVL_PORT_ROUTER if router else 0)


def mac_bytes(mac: str | bytes, field: str = "mac") -> bytes:
    """'02:00:00:00:01:02' (or 6 bytes) -> 6 bytes; ConfigError naming field otherwise."""
    if isinstance(mac, bytes | bytearray):
        if len(mac) == 6:
            return bytes(mac)
        raise ConfigError(field, mac, "a MAC address is 6 bytes")
    parts = mac.replace("-", ":").split(":") if isinstance(mac, str) else []
    try:
        if len(parts) != 6 or any(len(p) not in (1, 2) for p in parts):
            raise ValueError
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ConfigError(field, mac, "expected a MAC like 02:00:00:00:01:02") from None


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def addr_bytes(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, bytes]:
    """An address as (family, 16 bytes) the way overlay.h wants it."""
    return addr.version, addr.packed.ljust(16, b"\0")


def addr_from(family: int, raw: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    data = bytes(ffi.buffer(raw, 16))
    if family == 4:
        return ipaddress.IPv4Address(data[:4])
    return ipaddress.IPv6Address(data)


@dataclass(frozen=True)
class Event:
    """Something the data plane wants the control plane to know."""

    kind: str  # "miss", "mac_seen" or "learned"
    vni: int
    mac: str
    port_id: int | None = None  # the port that sent the frame
    vtep: str | None = None  # learned: where the MAC lives


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


class Engine:
    """One data-plane instance: sockets, worker threads, tables.

    Requires root (or CAP_NET_ADMIN) for TAP devices and namespaces. Every
    method raises ConfigError for bad arguments before calling C, and the
    typed errors of ``_check`` for what C refuses; nothing changes then.
    """

    _CREATE = "ovl_engine_create"  # the C constructor: the UDP transport

    def __init__(
        self,
        *,
        encap: int,
        local: ipaddress.IPv4Address | ipaddress.IPv6Address,
        udp_port: int = 0,
        source_ports: tuple[int, int] = (49152, 65535),
        source_port_slots: int = 16,
        udp_checksum: bool = True,
        frame_max: int = 1518,
        batch: int = 64,
        workers: int = 1,
        max_ports: int = 1024,
        max_networks: int = 1024,
        fdb_size: int = 65536,
        event_ring: int = 4096,
        netns_fd: int = -1,
        offloads: int = lib.OVL_OFF_ALL,
        busy_poll_us: int = 0,
        underlay_mtu: int = 0,
    ) -> None:
        """``underlay_mtu`` (576-65535, 0: not given) bounds what a pod may send to
        what one datagram carries on the underlay: the MTU less the outer IP and
        UDP headers and the network's tunnel header (VXLAN: a pod MTU 50 bytes
        below it over IPv4, 70 over IPv6; Geneve: its option bytes less again).
        A larger frame is a ``frame_oversize`` drop at the TAP."""
        cfg = ffi.new("ovl_engine_config_t *")
        lib.ovl_engine_config_default(cfg)
        cfg.encap = encap
        family, raw = addr_bytes(local)
        cfg.family = family
        ffi.memmove(cfg.local_addr, raw, 16)
        if not 0 <= udp_port <= 65535:
            raise ConfigError("port", udp_port, "a UDP port 1-65535 (0 for the default)")
        cfg.udp_port = udp_port
        lo, hi = source_ports
        if not (1 <= lo <= hi <= 65535):
            raise ConfigError(
                "source_ports", source_ports, "a range (lo, hi) with 1 <= lo <= hi <= 65535"
            )
        if not 1 <= source_port_slots <= min(1024, hi - lo + 1):
            raise ConfigError(
                "source_port_slots",
                source_port_slots,
                "1-1024 and no more than the ports in source_ports",
            )
        cfg.sport_lo, cfg.sport_hi, cfg.sport_slots = lo, hi, source_port_slots
        cfg.udp_csum = 1 if udp_checksum else 0
        if not 60 <= frame_max <= 65535:
            raise ConfigError("frame_max", frame_max, "60-65535 bytes")
        cfg.frame_max = frame_max
        for name, value, top in (("batch", batch, 1024), ("workers", workers, 16)):
            if not 1 <= value <= top:
                raise ConfigError(name, value, f"1-{top}")
        cfg.batch, cfg.workers = batch, workers
        cfg.max_ports, cfg.max_networks = max_ports, max_networks
        cfg.fdb_size, cfg.event_ring = fdb_size, event_ring
        cfg.netns_fd = netns_fd
        if offloads & ~lib.OVL_OFF_ALL:
            raise ConfigError("offloads", offloads, f"a subset of {sorted(OFFLOADS)}")
        cfg.offloads = offloads
        if not 0 <= busy_poll_us <= 1_000_000:
            raise ConfigError("busy_poll_us", busy_poll_us, "0 (off) to 1000000 microseconds")
        cfg.busy_poll_us = busy_poll_us
        if underlay_mtu and not 576 <= underlay_mtu <= 65535:
            raise ConfigError("underlay_mtu", underlay_mtu, "576-65535 bytes, or 0 (not given)")
        cfg.underlay_mtu = underlay_mtu
        out = ffi.new("ovl_engine_t **")
        rc = getattr(lib, self._CREATE)(cfg, out)
        if rc == -errno.EADDRINUSE:
            raise ConflictError(
                f"underlay {local} port {udp_port or 'default'} is in use: "
                "choose another port or stop the other VTEP in this namespace"
            )
        if rc == -errno.EADDRNOTAVAIL:
            raise ConfigError(
                "underlay",
                str(local),
                "an address configured on an interface of the node's namespace",
            )
        _check(rc, "creating the engine")
        self._e = out[0]
        self.family = family
        self.encap = encap
        self.workers = workers

    # -- life cycle --
    def close(self) -> None:
        if self._e is not None:
            lib.ovl_engine_destroy(self._e)
            self._e = None

    def _h(self) -> Any:
        if self._e is None:
            raise EngineError(errno.EBADF, "the engine is closed")
        return self._e

    def start(self) -> None:
        _check(lib.ovl_engine_start(self._h()), "starting workers")

    def stop(self) -> None:
        _check(lib.ovl_engine_stop(self._h()), "stopping workers")

    @property
    def udp_port(self) -> int:
        return int(lib.ovl_engine_udp_port(self._h()))

    @property
    def offloads(self) -> dict[str, bool]:
        """The offloads in use: asked for and found in this kernel (TAP ones once a TAP exists)."""
        active = int(lib.ovl_engine_offloads(self._h()))
        return {name: bool(active & bit) for name, bit in OFFLOADS.items()}

    # -- networks --
    def network_add(self, vni: int, learning: bool = False, encap: int | None = None) -> None:
        """Add network ``vni``; ``encap`` (ENCAP_*) defaults to the engine's. The
        engine has one tunnel port today: another encapsulation is refused."""
        flags = lib.OVL_NET_LEARNING if learning else 0
        if encap is not None and encap not in (ENCAP_VXLAN, ENCAP_GENEVE):
            raise ConfigError("encap", encap, "ENCAP_VXLAN or ENCAP_GENEVE")
        rc = lib.ovl_network_add(self._h(), vni, encap or 0, flags)
        if rc == -errno.EPROTONOSUPPORT:
            raise ConfigError(
                "encap",
                encap,
                f"the engine's encapsulation ({_ENCAP_NAMES[self.encap]}): one per node today",
            )
        _check(rc, f"adding network vni={vni}")

    def network_del(self, vni: int) -> None:
        _check(lib.ovl_network_del(self._h(), vni), f"removing network vni={vni}")

    def network_set_options(self, vni: int, tlv: bytes) -> None:
        _check(
            lib.ovl_network_set_options(self._h(), vni, tlv, len(tlv)),
            f"setting Geneve options of vni={vni}",
        )

    def known_option_add(self, cls: int, type_: int) -> None:
        _check(
            lib.ovl_network_known_option_add(self._h(), cls, type_ & 0x7F),
            f"declaring Geneve option class={cls:#x} type={type_:#x}",
        )

    def vtep_add(
        self, vni: int, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int = 0
    ) -> None:
        family, raw = addr_bytes(addr)
        _check(
            lib.ovl_network_vtep_add(self._h(), vni, family, raw, port),
            f"adding VTEP {addr} to vni={vni}",
        )

    def vtep_del(self, vni: int, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        family, raw = addr_bytes(addr)
        _check(
            lib.ovl_network_vtep_del(self._h(), vni, family, raw),
            f"removing VTEP {addr} from vni={vni}",
        )

    # -- ports --
    def port_add(
        self,
        vni: int,
        mac: bytes,
        ifname: str = "",
        netns_fd: int = -1,
        *,
        security: bool = True,
        persist: bool = False,
        router: bool = False,
        netns: str | None = None,
    ) -> tuple[int, str]:
        """Create a TAP port in the namespace behind ``netns_fd`` (-1: the engine's);
        ``netns`` names it in error messages. Returns (port id, interface name).
        ``router``: the port may send router advertisements and redirects (RA
        guard refuses them from every other port)."""
        if len(ifname.encode()) > 15:
            raise ConfigError("ifname", ifname, "at most 15 bytes")
        flags = _port_flags(security, router) | (lib.OVL_PORT_PERSIST if persist else 0)
        out = ffi.new("char[16]")
        rc = lib.ovl_port_add(self._h(), vni, ifname.encode(), netns_fd, mac, flags, out)
        if rc == -errno.EBUSY:
            where = f" in {netns}" if netns else ""
            raise ConflictError(
                f"interface {ifname!r} exists already{where}: choose another ifname"
            )
        if rc == -errno.EINVAL and netns_fd >= 0:  # setns refused the file
            raise ConfigError("netns", netns, "a network namespace, like /var/run/netns/NAME")
        pid = _check(rc, f"adding a port to vni={vni}")
        return pid, ffi.string(out).decode()

    def port_attach(
        self,
        vni: int,
        mac: bytes,
        ifname: str,
        netns_fd: int = -1,
        *,
        security: bool = True,
        router: bool = False,
        netns: str | None = None,
    ) -> int:
        """Re-attach the existing (persistent) TAP ``ifname`` of the namespace behind
        ``netns_fd`` (-1: the engine's) as a port; returns the port id.

        ``netns`` names that namespace in error messages. The port is persistent:
        ``port_del`` removes the device, ``close`` leaves it. Nothing is created
        when the interface is missing.
        """
        if not ifname or len(ifname.encode()) > 15:
            raise ConfigError("ifname", ifname, "the interface's name, 1-15 bytes")
        where = f"network namespace {netns}" if netns else "the node's network namespace"
        flags = _port_flags(security, router)
        rc = lib.ovl_port_attach(self._h(), vni, ifname.encode(), netns_fd, mac, flags)
        if rc == -errno.ENODEV:
            raise NotFoundError(
                f"interface {ifname!r} does not exist in {where}: nothing to re-attach "
                "(create the port with add_port instead)"
            )
        if rc == -errno.EBUSY:
            raise ConflictError(
                f"interface {ifname!r} in {where}: the TAP is held by another process "
                "(is another overlayd running?)"
            )
        if rc == -errno.EINVAL and netns_fd >= 0:  # setns refused the file
            raise ConfigError("netns", netns, "a network namespace, like /var/run/netns/NAME")
        if rc == -errno.EMEDIUMTYPE:
            raise ConfigError("ifname", ifname, f"a TAP device in {where}, not another kind")
        if rc == -errno.ECHRNG:
            raise ConfigError(
                "workers",
                self.workers,
                f"the TAP {ifname!r} in {where} was created "
                f"{'single' if self.workers > 1 else 'multi'}-queue: re-attach with "
                f"{'workers=1' if self.workers > 1 else 'workers > 1'}, as when it was created",
            )
        return _check(rc, f"re-attaching {ifname!r} in {where} to vni={vni}")

    def port_add_fd(
        self, vni: int, fd: int, mac: bytes, *, security: bool = True, router: bool = False
    ) -> int:
        flags = _port_flags(security, router)
        return _check(
            lib.ovl_port_add_fd(self._h(), vni, fd, mac, flags), f"adding fd port to vni={vni}"
        )

    def port_add_ip(
        self, port_id: int, addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> None:
        family, raw = addr_bytes(addr)
        _check(
            lib.ovl_port_add_ip(self._h(), port_id, family, raw), f"adding {addr} to port {port_id}"
        )

    def port_del(self, port_id: int) -> None:
        """Remove a port and close its TAP; a persistent TAP is deleted too."""
        _check(lib.ovl_port_del(self._h(), port_id), f"removing port {port_id}")

    def port_detach(self, port_id: int) -> None:
        """Remove a port but leave a persistent TAP in place (as ``close`` does)."""
        _check(lib.ovl_port_detach(self._h(), port_id), f"detaching port {port_id}")

    # -- FDB and neighbours --
    def fdb_add(
        self,
        vni: int,
        mac: bytes,
        vtep: ipaddress.IPv4Address | ipaddress.IPv6Address,
        port: int = 0,
    ) -> None:
        family, raw = addr_bytes(vtep)
        _check(
            lib.ovl_fdb_add(self._h(), vni, mac, family, raw, port),
            f"adding FDB entry {mac_str(mac)} -> {vtep} in vni={vni}",
        )

    def fdb_del(self, vni: int, mac: bytes) -> None:
        _check(
            lib.ovl_fdb_del(self._h(), vni, mac), f"removing FDB entry {mac_str(mac)} in vni={vni}"
        )

    def neigh_add(
        self, vni: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, mac: bytes
    ) -> None:
        family, raw = addr_bytes(ip)
        _check(
            lib.ovl_fdb_neigh_add(self._h(), vni, family, raw, mac),
            f"adding neighbour {ip} in vni={vni}",
        )

    def neigh_del(self, vni: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        family, raw = addr_bytes(ip)
        _check(
            lib.ovl_fdb_neigh_del(self._h(), vni, family, raw),
            f"removing neighbour {ip} in vni={vni}",
        )

    def fdb_dump(self) -> list[FdbEntry]:
        n = 256
        while True:
            buf = ffi.new("ovl_fdb_entry_t[]", n)
            total = _check(lib.ovl_fdb_dump(self._h(), buf, n), "dumping the FDB")
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

    # -- counters and events --
    def counters(self) -> dict[str, int]:
        n = len(COUNTER_NAMES)
        buf = ffi.new("uint64_t[]", n)
        lib.ovl_counters_engine(self._h(), buf, n)
        return {name: int(buf[i]) for i, name in enumerate(COUNTER_NAMES)}

    def _obj(self, rc: int, buf: Any) -> dict[str, int]:
        return {name: int(buf[i]) for i, name in enumerate(OBJ_COUNTER_NAMES[:rc])}

    def network_counters(self, vni: int) -> dict[str, int]:
        buf = ffi.new("uint64_t[]", len(OBJ_COUNTER_NAMES))
        rc = _check(
            lib.ovl_counters_network(self._h(), vni, buf, len(OBJ_COUNTER_NAMES)),
            f"counters of vni={vni}",
        )
        return self._obj(rc, buf)

    def port_counters(self, port_id: int) -> dict[str, int]:
        buf = ffi.new("uint64_t[]", len(OBJ_COUNTER_NAMES))
        rc = _check(
            lib.ovl_counters_port(self._h(), port_id, buf, len(OBJ_COUNTER_NAMES)),
            f"counters of port {port_id}",
        )
        return self._obj(rc, buf)

    @property
    def event_fd(self) -> int:
        return int(lib.ovl_events_fd(self._h()))

    def events(self, limit: int = 1024) -> list[Event]:
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


# -- the traffic generator (native/gen.c): tests and benchmarks --


def gen_send(fd: int, payload: bytes, count: int, *, batch: int = 64, seconds: float = 1.0) -> int:
    """Send up to ``count`` copies of ``payload`` on the connected UDP socket ``fd``
    in sendmmsg batches, for at most ``seconds``; returns how many were sent."""
    if not 1 <= batch <= 1024:
        raise ConfigError("batch", batch, "1-1024")
    return _check(
        int(lib.ovl_gen_send(fd, payload, len(payload), count, batch, int(seconds * 1e9))),
        "sending generated datagrams",
    )


def gen_recv(fd: int, seconds: float, idle_seconds: float) -> tuple[int, int]:
    """Receive on ``fd`` for at most ``seconds`` (less after ``idle_seconds`` of
    silence); returns (datagrams, bytes)."""
    p, b = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    _check(
        lib.ovl_gen_recv(fd, int(seconds * 1e9), int(idle_seconds * 1e9), p, b),
        "receiving generated datagrams",
    )
    return int(p[0]), int(b[0])


# -- the fake transport (native/fake.c): engines without sockets, for tests --


@dataclass(frozen=True)
class SentDatagram:
    """A datagram an engine on the fake transport sent to the underlay."""

    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int  # the destination (tunnel) port
    sport: int  # the outer source port its flow got
    data: bytes  # tunnel header and inner frame


class FakeTransportEngine(Engine):
    """An ``Engine`` whose underlay is memory (wireguard-go's bindtest).

    Everything above the transport is the real data plane: workers, stages,
    tables, counters, events. :meth:`inject` hands it a datagram as if a peer
    had sent it to the tunnel port; :meth:`sent` returns what it sent. No
    socket is opened, so ``local`` and the ports are only recorded.
    """

    _CREATE = "ovl_fake_engine_create"

    def inject(
        self,
        datagram: bytes,
        src: ipaddress.IPv4Address | ipaddress.IPv6Address,
        port: int = 0,
    ) -> None:
        """Deliver ``datagram`` to the engine from ``src`` (port ``port``)."""
        family, raw = addr_bytes(src)
        rc = lib.ovl_fake_inject(self._h(), family, raw, port, datagram, len(datagram))
        if rc == -errno.ENOBUFS:
            raise CapacityError(
                f"the fake transport's inbox holds {lib.OVL_FAKE_INBOX} datagrams: "
                "let the engine run (start it) before injecting more"
            )
        _check(rc, "injecting a datagram")

    def sent(self) -> list[SentDatagram]:
        """Every datagram the engine has sent since the last call, oldest first."""
        meta = ffi.new("ovl_fake_sent_t *")
        cap = 65536
        buf = ffi.new("uint8_t[]", cap)
        out: list[SentDatagram] = []
        while True:
            n = lib.ovl_fake_take(self._h(), meta, buf, cap)
            if n == -errno.EAGAIN:
                return out
            _check(n, "reading sent datagrams")
            out.append(
                SentDatagram(
                    dst=addr_from(meta.family, meta.addr),
                    port=meta.port,
                    sport=meta.sport,
                    data=bytes(ffi.buffer(buf, min(n, cap))),
                )
            )
