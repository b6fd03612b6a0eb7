"""The engine's life cycle (``overlay.h``, "the engine's life cycle"; ``engine.c``).

:class:`Engine` is one data-plane instance: its configuration is checked here,
field by field, before ``ovl_engine_create`` sees it; the other areas of the
ABI are its methods, each from its own module (``network.py``, ``port.py``,
``fdb.py``, ``counters.py``, ``events.py``, ``policy.py``), so that a module mirrors one
section of ``overlay.h``.
"""

from __future__ import annotations

import errno
from typing import Any

from overlay import model
from overlay.bindings._ffi import IPAddress, addr_bytes, check, ffi, lib
from overlay.bindings.counters import CountersArea
from overlay.bindings.events import EventsArea
from overlay.bindings.fdb import FdbArea
from overlay.bindings.network import NetworkArea
from overlay.bindings.policy import PolicyArea
from overlay.bindings.port import PortArea
from overlay.errors import ConfigError, ConflictError

__all__ = ["MAX_WORKERS", "OFFLOADS", "STEERING", "VNI_MAX", "Engine"]

VNI_MAX: int = lib.OVL_VNI_MAX
MAX_WORKERS: int = lib.OVL_MAX_WORKERS

OFFLOADS: dict[str, int] = {
    "tap_tso": lib.OVL_OFF_TAP_TSO,
    "tap_uso": lib.OVL_OFF_TAP_USO,
    "udp_gso": lib.OVL_OFF_UDP_GSO,
    "udp_gro": lib.OVL_OFF_UDP_GRO,
}
"""Offload switches by name: what ``Engine(offloads=...)`` takes and ``Engine.offloads`` reports."""

STEERING: dict[str, int] = {
    "underlay": lib.OVL_STEER_UNDERLAY,
    "tap": lib.OVL_STEER_TAP,
}
"""Flow steering by name: what ``Engine.steering`` reports (native/engine.h, "Per-flow state")."""


class Engine(NetworkArea, PortArea, FdbArea, CountersArea, EventsArea, PolicyArea):
    """One data-plane instance: sockets, worker threads, tables.

    Requires root (or CAP_NET_ADMIN) for TAP devices and namespaces. Every
    method raises ConfigError for bad arguments before calling C, and the
    typed errors of ``_ffi.check`` for what C refuses; nothing changes then.
    """

    _CREATE = "ovl_engine_create"  # the C constructor: the UDP transport

    def __init__(
        self,
        *,
        encap: int,
        local: IPAddress,
        udp_port: int = 0,
        alt_port: int = 0,
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
        conntrack_sessions: int = lib.OVL_CONNTRACK_SESSIONS_DEFAULT,
    ) -> None:
        """``underlay_mtu`` (576-65535, 0: not given) bounds what a pod may send to
        what one datagram carries on the underlay: the MTU less the outer IP and
        UDP headers and the network's tunnel header (VXLAN: a pod MTU 50 bytes
        below it over IPv4, 70 over IPv6; Geneve: its option bytes less again).
        A larger frame is a ``frame_oversize`` drop at the TAP.
        ``conntrack_sessions``: the connections each worker's connection
        tracking holds (rounded up to a power of two times 8)."""
        cfg = ffi.new("ovl_engine_config_t *")
        lib.ovl_engine_config_default(cfg)
        cfg.encap = encap
        family, raw = addr_bytes(local)
        cfg.family = family
        ffi.memmove(cfg.local_addr, raw, 16)
        if not 0 <= udp_port <= 65535:
            raise ConfigError("port", udp_port, "a UDP port 1-65535 (0 for the default)")
        cfg.udp_port = udp_port
        if not 0 <= alt_port <= 65535:
            raise ConfigError("alt_port", alt_port, "a UDP port 1-65535 (0 for the default)")
        cfg.alt_port = alt_port
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
        if not 1 <= batch <= 1024:
            raise ConfigError("batch", batch, "1-1024")
        if not 1 <= workers <= model.WORKERS_MAX:
            raise ConfigError("workers", workers, model.WORKERS_EXPECTED)
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
        lo_ct, hi_ct = lib.OVL_CONNTRACK_SESSIONS_MIN, lib.OVL_CONNTRACK_SESSIONS_MAX
        if (
            not isinstance(conntrack_sessions, int)
            or isinstance(conntrack_sessions, bool)
            or not lo_ct <= conntrack_sessions <= hi_ct
        ):
            raise ConfigError(
                "conntrack_sessions",
                conntrack_sessions,
                f"an integer {lo_ct}-{hi_ct} (sessions per worker; default "
                f"{lib.OVL_CONNTRACK_SESSIONS_DEFAULT})",
            )
        cfg.conntrack_sessions = conntrack_sessions
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
        check(rc, "creating the engine")
        self._e: Any = out[0]
        self.family = family
        self.encap = encap
        self.workers = workers

    def close(self) -> None:
        """Stop the workers and free everything; non-persistent TAPs disappear."""
        if self._e is not None:
            lib.ovl_engine_destroy(self._e)
            self._e = None

    def start(self) -> None:
        check(lib.ovl_engine_start(self._h()), "starting workers")

    def stop(self) -> None:
        check(lib.ovl_engine_stop(self._h()), "stopping workers")

    @property
    def udp_port(self) -> int:
        return int(lib.ovl_engine_udp_port(self._h()))

    def tunnel_port(self, encap: int) -> int:
        """The tunnel port of encapsulation ``encap`` (ENCAP_*): listened on once a
        network of it exists, the port of its networks' VTEPs given without one."""
        return int(check(lib.ovl_engine_tunnel_port(self._h(), encap), "encap"))

    @property
    def offloads(self) -> dict[str, bool]:
        """The offloads in use: asked for and found in this kernel (TAP ones once a TAP exists)."""
        active = int(lib.ovl_engine_offloads(self._h()))
        return {name: bool(active & bit) for name, bit in OFFLOADS.items()}

    @property
    def steering(self) -> dict[str, bool]:
        """Where the kernel hands each direction of a flow to the worker that owns
        it: ``underlay`` (the tunnel port's receive sockets) and ``tap`` (every
        multi-queue TAP so far). With one worker both hold."""
        active = int(lib.ovl_engine_steering(self._h()))
        return {name: bool(active & bit) for name, bit in STEERING.items()}
