"""Ports (``overlay.h``, "ports"; ``port.c``): TAPs made, re-attached or
adopted, their addresses, and their removal. The errno values ``port.c``
documents become errors that name the interface and the fix."""

from __future__ import annotations

import errno

from overlay.bindings._ffi import Handle, IPAddress, addr_bytes, check, ffi, lib
from overlay.errors import ConfigError, ConflictError, NotFoundError

__all__ = ["PortArea"]


def _port_flags(security: bool, router: bool, gateway: bool) -> int:
    """OVL_PORT_* for port security off, the router mark (RA guard) and the
    gateway mark (the node's IP stack: a router that may also forward from
    addresses outside the network)."""
    return (
        (0 if security else lib.OVL_PORT_NO_SECURITY)
        | (lib.OVL_PORT_ROUTER if router else 0)
        | (lib.OVL_PORT_GATEWAY if gateway else 0)
    )


class PortArea(Handle):
    """The engine's ports (mixed into ``Engine``)."""

    workers: int  # the engine's (engine.py)

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
        gateway: bool = False,
        netns: str | None = None,
        policy_pending: bool = False,
    ) -> tuple[int, str]:
        """Create a TAP port in the namespace behind ``netns_fd`` (-1: the engine's);
        ``netns`` names it in error messages. Returns (port id, interface name).
        ``router``: the port may send router advertisements and redirects (RA
        guard refuses them from every other port). ``gateway``: the port is the
        node's IP stack, which forwards for the outside world: it may send from
        any address that no endpoint of the network holds."""
        if len(ifname.encode()) > 15:
            raise ConfigError("ifname", ifname, "at most 15 bytes")
        flags = _port_flags(security, router, gateway) | (lib.OVL_PORT_PERSIST if persist else 0)
        if policy_pending:  # isolated until port_policy_set gives each direction a table
            flags |= lib.OVL_PORT_POLICY_PENDING
        out = ffi.new("char[16]")
        rc = lib.ovl_port_add(self._h(), vni, ifname.encode(), netns_fd, mac, flags, out)
        if rc == -errno.EBUSY:
            where = f" in {netns}" if netns else ""
            raise ConflictError(
                f"interface {ifname!r} exists already{where}: choose another ifname"
            )
        if rc == -errno.EINVAL and netns_fd >= 0:  # setns refused the file
            raise ConfigError("netns", netns, "a network namespace, like /var/run/netns/NAME")
        pid = check(rc, f"adding a port to vni={vni}")
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
        gateway: bool = False,
        netns: str | None = None,
        policy_pending: bool = False,
    ) -> int:
        """Re-attach the existing (persistent) TAP ``ifname`` of the namespace behind
        ``netns_fd`` (-1: the engine's) as a port; returns the port id.

        ``netns`` names that namespace in error messages. The port is persistent:
        ``port_del`` removes the device, ``close`` leaves it. Nothing is created
        when the interface is missing. ``policy_pending``: isolated (no IP
        traffic) until ``port_policy_set`` gives each direction a table.
        """
        if not ifname or len(ifname.encode()) > 15:
            raise ConfigError("ifname", ifname, "the interface's name, 1-15 bytes")
        where = f"network namespace {netns}" if netns else "the node's network namespace"
        flags = _port_flags(security, router, gateway)
        if policy_pending:
            flags |= lib.OVL_PORT_POLICY_PENDING
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
        return check(rc, f"re-attaching {ifname!r} in {where} to vni={vni}")

    def port_add_fd(
        self,
        vni: int,
        fd: int,
        mac: bytes,
        *,
        security: bool = True,
        router: bool = False,
        uplink: bool = False,
        policy_pending: bool = False,
    ) -> int:
        """Adopt the packet fd ``fd`` (a TAP opened elsewhere, a SOCK_SEQPACKET
        socket in tests) as a port; returns the port id. The engine owns the fd
        from then on. One queue: with several workers, one worker serves it.
        ``uplink``: ``fd`` is a packet socket with PACKET_VNET_HDR on the node's
        physical interface (``overlay.uplink``): no port security, and unicast
        frames for no other port are another station's, ignored. ``policy_pending``:
        every IP packet is refused in a direction until ``port_policy_set`` has
        set it, so no packet passes before the port's policy."""
        flags = _port_flags(security, router, False) | (lib.OVL_PORT_UPLINK if uplink else 0)
        if policy_pending:  # isolated until port_policy_set gives each direction a table
            flags |= lib.OVL_PORT_POLICY_PENDING
        rc = lib.ovl_port_add_fd(self._h(), vni, fd, mac, flags)
        if uplink and rc == -errno.EOPNOTSUPP:
            raise ConfigError(
                "offloads",
                "without tap_tso",
                "tap_tso on: an uplink hands the segment's super-frames to pods as such",
            )
        return check(rc, f"adding fd port to vni={vni}")

    def port_add_ip(self, port_id: int, addr: IPAddress) -> None:
        family, raw = addr_bytes(addr)
        check(
            lib.ovl_port_add_ip(self._h(), port_id, family, raw), f"adding {addr} to port {port_id}"
        )

    def port_del(self, port_id: int) -> None:
        """Remove a port and close its TAP; a persistent TAP is deleted too."""
        check(lib.ovl_port_del(self._h(), port_id), f"removing port {port_id}")

    def port_detach(self, port_id: int) -> None:
        """Remove a port but leave a persistent TAP in place (as ``close`` does)."""
        check(lib.ovl_port_detach(self._h(), port_id), f"detaching port {port_id}")
