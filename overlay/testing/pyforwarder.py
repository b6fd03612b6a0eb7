"""A pure-Python VXLAN forwarder: the baseline a user would otherwise write.

Why this module exists
----------------------
"Why not just write it in Python with asyncio?" deserves a measured answer.
This module is that program, written the way a competent user would write
it, so ``bench/test_pyforwarder.py`` can put a number on what the C data
plane buys. It is deliberately *not* a straw man:

* it runs on uvloop when uvloop is installed (the stdlib loop otherwise);
* it reads the TAP with ``loop.add_reader`` and drains up to ``batch`` frames
  per wake-up rather than one;
* the VXLAN header is built once with :func:`overlay.wire.encode` (as the C
  engine prebuilds its outer headers) and prepended per frame;
* received datagrams are checked with :func:`overlay.wire.decode` (VNI and
  flags) and only accepted from configured peers, like the engine does;
* the UDP side is an asyncio datagram endpoint, whose unbounded send buffer
  is capped: a frame that would grow it past ``max_buffered_bytes`` is dropped
  and counted, so a burst can never exhaust memory.

It is a test-bed tool, not a product: one VNI, one TAP, a static FDB (MAC ->
peer VTEP; unknown and broadcast destinations go to every peer), no
port security, VXLAN only, IPv4 or IPv6 underlay.

Life cycle: ``__init__`` opens the TAP and the UDP socket inside the node's
namespace (``overlay.nsenter.call_in``: the TAP is born there, the socket
binds there); :meth:`PyForwarder.move_to_netns` moves the TAP into a pod's
namespace and configures it over rtnetlink (pyroute2), as
``overlay.node.Port.move_to_netns`` does for the engine's TAPs;
:meth:`PyForwarder.start` runs the event loop in a background thread and
:meth:`PyForwarder.stop` ends it within a bounded time and closes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from overlay import wire
from overlay.nsenter import call_in, move_link, netns_path

__all__ = ["PyForwarder", "open_tap"]

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
_IFREQ = "16sH22x"  # struct ifreq: name, flags, the rest of the union

_FRAME_MAX = 65535
_START_TIMEOUT_S = 5.0
_STOP_TIMEOUT_S = 5.0


def open_tap(ifname: str = "") -> tuple[int, str]:
    """Create a TAP (``IFF_TAP | IFF_NO_PI``) in the caller's namespace; return (fd, name).

    ``ifname`` empty lets the kernel pick ``tapN``. The fd is non-blocking and
    close-on-exec; closing it deletes the (non-persistent) device.
    """
    if len(ifname.encode()) > 15:
        raise ValueError(f"ifname {ifname!r}: at most 15 bytes")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        req = struct.pack(_IFREQ, ifname.encode(), IFF_TAP | IFF_NO_PI)
        res = fcntl.ioctl(fd, TUNSETIFF, req)
        os.set_blocking(fd, False)
    except BaseException:
        os.close(fd)
        raise
    name = struct.unpack(_IFREQ, res)[0].rstrip(b"\0").decode()
    return fd, name


class _Underlay(asyncio.DatagramProtocol):
    """The UDP side: decapsulate what arrives from a peer and write it to the TAP."""

    def __init__(self, fwd: PyForwarder) -> None:
        self.fwd = fwd

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        fwd = self.fwd
        if addr[0] not in fwd._peer_set:
            fwd.counters["rx_drop_not_peer"] += 1
            return
        try:
            tunnel, off = wire.decode(wire.VXLAN, data)
        except wire.Drop:
            fwd.counters["rx_drop_bad_header"] += 1
            return
        if tunnel.vni != fwd.vni or len(data) - off < 14:
            fwd.counters["rx_drop_bad_header"] += 1
            return
        try:
            os.write(fwd._tap_fd, memoryview(data)[off:])
        except OSError:  # EIO while the link is down, ENOBUFS...: a drop, never fatal
            fwd.counters["rx_drop_tap"] += 1
            return
        fwd.counters["rx_frames"] += 1

    def error_received(self, exc: Exception) -> None:
        self.fwd.counters["udp_errors"] += 1


class PyForwarder:
    """One VXLAN node in pure Python: a TAP in a pod, a UDP socket on the underlay.

    Requires: ``netns`` exists and ``underlay`` is configured in it; the
    process has CAP_NET_ADMIN. Guarantees: frames from the TAP go to
    ``fdb[dst_mac]`` (or every peer for unknown, broadcast and multicast
    destinations) with a VXLAN header for ``vni``; VXLAN datagrams from a
    peer with this VNI are written to the TAP; everything else is counted in
    :attr:`counters` and dropped.
    """

    def __init__(
        self,
        *,
        netns: str,
        underlay: str,
        vni: int,
        peers: Iterable[str],
        fdb: Mapping[str, str] | None = None,
        port: int = wire.VXLAN_PORT,
        batch: int = 64,
        max_buffered_bytes: int = 4 << 20,
        use_uvloop: bool | None = None,
    ) -> None:
        if not 0 <= vni <= wire.VNI_MAX:
            raise ValueError(f"vni {vni}: must be 0..{wire.VNI_MAX}")
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port}: must be 1..65535")
        if not 1 <= batch <= 4096:
            raise ValueError(f"batch {batch}: must be 1..4096")
        local = ipaddress.ip_address(underlay)
        self.netns = netns_path(netns)
        self.underlay = str(local)
        self.vni = vni
        self.port = port
        self.batch = batch
        self.max_buffered_bytes = max_buffered_bytes
        self.peers = [str(ipaddress.ip_address(p)) for p in peers]
        if not self.peers:
            raise ValueError("peers: give at least one peer VTEP address")
        self._peer_set = frozenset(self.peers)
        self.fdb: dict[bytes, list[tuple[str, int]]] = {}
        for mac, vtep in (fdb or {}).items():
            addr = str(ipaddress.ip_address(vtep))
            if addr not in self._peer_set:
                raise ValueError(f"fdb[{mac!r}] = {vtep!r}: not one of the peers {self.peers}")
            self.fdb[wire.mac_to_bytes(mac)] = [(addr, port)]
        self._flood = [(p, port) for p in self.peers]
        self._header = wire.encode(wire.VXLAN, wire.Tunnel(vni))
        self._use_uvloop = use_uvloop
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "tx_frames",
                "tx_drop_buffer_full",
                "rx_frames",
                "rx_drop_not_peer",
                "rx_drop_bad_header",
                "rx_drop_tap",
                "udp_errors",
            ),
            0,
        )
        self.pod_netns: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._buffered: Callable[[], int] = lambda: 0
        self._closed = False

        family = socket.AF_INET6 if local.version == 6 else socket.AF_INET
        self._tap_fd, self.ifname = call_in(self.netns, open_tap)
        try:
            self._sock: socket.socket = call_in(
                self.netns, socket.socket, family, socket.SOCK_DGRAM
            )
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self._sock.bind((self.underlay, port))
            self._sock.setblocking(False)
        except BaseException:
            os.close(self._tap_fd)
            raise

    def __repr__(self) -> str:
        return f"PyForwarder({self.underlay!r}, vni={self.vni}, tap={self.ifname!r})"

    # -- configuration --------------------------------------------------------

    def move_to_netns(
        self,
        netns: str,
        ifname: str = "eth0",
        *,
        mac: str,
        ips: Iterable[str] = (),
        mtu: int = 1450,
    ) -> None:
        """Move the TAP into a pod's namespace as ``ifname``: MAC, addresses, MTU, up."""
        path = netns_path(netns)
        src = self.pod_netns or self.netns
        move_link(
            self.ifname,
            src,
            path,
            new_name=ifname,
            mac=mac,
            mtu=mtu,
            addresses=[ipaddress.ip_interface(c) for c in ips],
        )
        self.ifname = ifname
        self.pod_netns = path

    # -- the loop -------------------------------------------------------------

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        if self._use_uvloop is not False:
            try:
                import uvloop
            except ImportError:
                if self._use_uvloop:
                    raise
            else:
                loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
                return loop
        return asyncio.new_event_loop()

    def _tap_readable(self) -> None:
        """Drain up to ``batch`` frames from the TAP and send each to its VTEP(s)."""
        transport = self._transport
        if transport is None:
            return
        fd, header, fdb, flood = self._tap_fd, self._header, self.fdb, self._flood
        limit, buffered = self.max_buffered_bytes, self._buffered
        counters = self.counters
        for _ in range(self.batch):
            try:
                frame = os.read(fd, _FRAME_MAX)
            except BlockingIOError:
                return
            except OSError:
                counters["udp_errors"] += 1
                return
            if len(frame) < 14:
                continue
            if buffered() > limit:
                counters["tx_drop_buffer_full"] += 1
                continue
            datagram = header + frame
            for dest in fdb.get(frame[:6], flood):
                transport.sendto(datagram, dest)
            counters["tx_frames"] += 1

    async def _main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Underlay(self), sock=self._sock
            )
            self._transport = transport
            # Both asyncio's and uvloop's UDP transports have it; the ABC does not declare it.
            self._buffered = getattr(transport, "get_write_buffer_size", lambda: 0)
            loop.add_reader(self._tap_fd, self._tap_readable)
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            raise
        ready.set()
        try:
            await self._stop.wait()
        finally:
            loop.remove_reader(self._tap_fd)
            transport.close()
            await asyncio.sleep(0)  # let the transport finish closing

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            loop.run_until_complete(self._main(ready, failure))
        except BaseException as exc:
            if not failure:
                failure.append(exc)
        finally:
            ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self) -> None:
        """Run the forwarding loop in a background thread; return once it is forwarding."""
        if self._closed:
            raise RuntimeError("this PyForwarder is closed; make a new one")
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = self._new_loop()
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name=f"pyforwarder-{self.underlay}"
        )
        self._thread.daemon = True
        self._thread.start()
        if not ready.wait(_START_TIMEOUT_S):
            self.stop()
            raise TimeoutError(f"{self!r} did not start within {_START_TIMEOUT_S} s")
        if failure:
            self.stop()
            raise RuntimeError(f"{self!r} failed to start: {failure[0]!r}") from failure[0]

    def stop(self) -> None:
        """End the loop (bounded wait), close the socket and the TAP; safe to call again."""
        if self._closed:
            return
        self._closed = True
        thread, loop, stop = self._thread, self._loop, self._stop
        try:
            if thread is not None and loop is not None:
                if stop is not None:
                    with contextlib.suppress(RuntimeError):  # loop already closed
                        loop.call_soon_threadsafe(stop.set)
                thread.join(_STOP_TIMEOUT_S)
                if thread.is_alive():
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(loop.stop)
                    thread.join(_STOP_TIMEOUT_S)
                if thread.is_alive():
                    raise RuntimeError(f"{self!r}: loop thread did not end within the timeout")
            elif loop is not None:
                loop.close()
        finally:
            self._sock.close()
            with contextlib.suppress(OSError):
                os.close(self._tap_fd)

    close = stop

    def __enter__(self) -> PyForwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
