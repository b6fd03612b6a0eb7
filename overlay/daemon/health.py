"""Node-to-node health probes that travel through the overlay itself.

Design notes
------------
- **Probe the data plane, not the underlay.** A ping between underlay
  addresses says nothing about whether the overlay forwards: a peer whose
  engine is stopped, whose VTEP membership is missing or whose UDP port is
  wrong still answers ICMP. So each node hosts a small *health network*
  (default VNI ``VNI_MAX``, tenant ``overlay-health``) with one port of its own,
  and probe frames take the same path as a pod's: port checks, FDB, encap,
  UDP, the peer's decap and isolation checks, its FDB, its port.
- **No addresses anywhere.** The health port is not a TAP but one end of an
  ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair handed to the engine with
  ``port_add_fd`` (one send is one frame, as with a TAP fd). The prober reads
  and writes the other end from the asyncio loop. Nothing is configured in
  any namespace, and probe frames are plain Ethernet with a local
  experimental EtherType (0x88B5, IEEE 802 "local experimental 1"), which
  port security lets through as long as the source MAC is the port's own
  (``native/policy.c``: non-IP frames are checked on their source MAC only).
- **MACs without an exchange.** A node's health MAC is derived from its
  underlay address (and its UDP port when that is not the encapsulation's
  standard one), so a static peer list is all a node needs: see
  :func:`health_mac`.
- **Requests and replies.** Every ``interval`` seconds the prober sends a
  request to each peer's health MAC; the peer's prober answers with a reply
  (MACs swapped) that echoes the sequence number and the requester's
  monotonic send time, so the requester measures the round trip on its own
  clock. A peer is reachable while its last reply is younger than
  ``timeout`` (default three intervals).
- **Bad input is counted.** Anything arriving on the health port that is not
  a well-formed probe is counted in ``bad_frames`` and ignored; loop callbacks
  never raise.

Frame layout (after the 14-byte Ethernet header, EtherType 0x88B5)::

    0      4   5   6       8               16              24
    +------+---+---+-------+---------------+---------------+--------...
    |"OVHP"|ver|knd|namlen |  sequence     |  send time ns |  name (UTF-8)
    +------+---+---+-------+---------------+---------------+--------...
    ver = 1, kind 1 = request, 2 = reply; integers big-endian; frames are
    padded with zeros to the 60-byte Ethernet minimum (ignored on receipt).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

from overlay.bindings import mac_bytes, mac_str
from overlay.errors import ConfigError, OverlayError
from overlay.model import VNI_MAX

log = logging.getLogger("overlay.health")

HEALTH_VNI = VNI_MAX
HEALTH_TENANT = "overlay-health"
ETHERTYPE = 0x88B5
MAGIC = b"OVHP"
VERSION = 1
KIND_REQUEST = 1
KIND_REPLY = 2
NAME_MAX_BYTES = 255

_ETH = struct.Struct("!6s6sH")
_PROBE = struct.Struct("!4sBBHQQ")
_MIN_FRAME = 60
_RECV_BURST = 64  # frames read per readiness callback, so a flood cannot starve the loop
_RTT_WINDOW = 16  # replies the average round trip is taken over
_RECV_BYTES = 2048
_SEND_SLICE = 32  # requests sent back to back before yielding to the loop
_SLICE_PAUSE = 0.001  # seconds between slices

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def health_mac(underlay: str, port: int = 0) -> str:
    """The health port's MAC of the node at ``underlay``.

    ``port`` is the node's UDP port when it is not its encapsulation's
    standard one (4789 VXLAN, 6081 Geneve), else 0. The MAC is locally
    administered unicast: ``02:0b`` and the IPv4 address itself for IPv4 on
    the standard port, ``02:0c`` and 4 bytes of a SHA-256 of the address and
    port otherwise (IPv6, or several nodes sharing one address).
    """
    try:
        addr = ipaddress.ip_address(underlay)
    except ValueError:
        raise ConfigError("underlay", underlay, "an IPv4 or IPv6 address") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError("port", port, "a UDP port 1-65535, or 0 for the standard one")
    if addr.version == 4 and port == 0:
        return mac_str(b"\x02\x0b" + addr.packed)
    digest = hashlib.sha256(addr.packed + port.to_bytes(2, "big")).digest()
    return mac_str(b"\x02\x0c" + digest[:4])


@dataclasses.dataclass(frozen=True)
class Probe:
    """A decoded probe frame."""

    dst: bytes
    src: bytes
    kind: int
    seq: int
    time_ns: int
    name: str


def encode_probe(dst: bytes, src: bytes, kind: int, seq: int, time_ns: int, name: str) -> bytes:
    """One probe frame, padded to the Ethernet minimum."""
    raw_name = name.encode()
    frame = (
        _ETH.pack(dst, src, ETHERTYPE)
        + _PROBE.pack(MAGIC, VERSION, kind, len(raw_name), seq, time_ns)
        + raw_name
    )
    return frame.ljust(_MIN_FRAME, b"\0")


def decode_probe(frame: bytes) -> Probe | None:
    """The probe in ``frame``, or None when it is not a well-formed one."""
    head = _ETH.size + _PROBE.size
    if len(frame) < head:
        return None
    dst, src, ethertype = _ETH.unpack_from(frame)
    magic, version, kind, name_len, seq, time_ns = _PROBE.unpack_from(frame, _ETH.size)
    if (
        ethertype != ETHERTYPE
        or magic != MAGIC
        or version != VERSION
        or kind not in (KIND_REQUEST, KIND_REPLY)
        or name_len > NAME_MAX_BYTES
        or len(frame) < head + name_len
    ):
        return None
    try:
        name = frame[head : head + name_len].decode()
    except UnicodeDecodeError:
        return None
    return Probe(dst, src, kind, seq, time_ns, name)


@dataclasses.dataclass
class _Peer:
    name: str
    underlay: IPAddress
    port: int  # the effective UDP port (never 0)
    mac: str
    mac_raw: bytes
    seq: int = 0
    sent: int = 0
    received: int = 0
    last_rtt_ns: int | None = None
    last_reply: float | None = None  # time.monotonic() of the last reply
    rtts_ns: collections.deque[int] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=_RTT_WINDOW)
    )


class HealthProber:
    """Probes a node's peers through its overlay and reports reachability and RTT.

    Requires an ``overlay.Node`` (a real engine); the node's workers must be
    running for probes to flow (``node.start()``, the daemon's job). All
    methods are called from the loop's thread. ``set_peers`` may be called
    before ``start``; the peers are programmed when the prober starts.
    """

    def __init__(
        self,
        node: Any,
        name: str,
        *,
        vni: int = HEALTH_VNI,
        interval: float = 1.0,
        timeout: float | None = None,
    ) -> None:
        if not isinstance(name, str) or not 1 <= len(name.encode()) <= NAME_MAX_BYTES:
            raise ConfigError("node.name", name, f"a name of 1-{NAME_MAX_BYTES} UTF-8 bytes")
        if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= VNI_MAX:
            raise ConfigError("health.vni", vni, f"an integer 0-{VNI_MAX} no network uses")
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ConfigError("health.interval", interval, "seconds between probes, > 0")
        if timeout is None:
            timeout = 3 * interval
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError("health.timeout", timeout, "seconds without a reply, > 0")
        self.node = node
        self.name = name
        self.vni = vni
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.mac = health_mac(str(node.underlay), self._mac_port(node.port))
        self._mac_raw = mac_bytes(self.mac)
        self._peers: dict[str, _Peer] = {}
        self._by_mac: dict[bytes, _Peer] = {}
        self._vtep_ports: dict[IPAddress, int] = {}  # what this prober programmed
        self._network: Any = None
        self._port_id: int | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading = False
        # Frame statistics (see stats()).
        self.bad_frames = 0
        self.stray_frames = 0
        self.requests_answered = 0
        self.send_errors = 0

    def __repr__(self) -> str:
        return f"HealthProber({self.name!r}, vni={self.vni}, mac={self.mac})"

    # -- addresses -------------------------------------------------------------

    def _mac_port(self, port: int) -> int:
        """The port as health_mac wants it: 0 for the encapsulation's standard one."""
        return 0 if port == self.node.encap.default_port else port

    def _is_self(self, addr: IPAddress, port: int) -> bool:
        return addr == self.node.underlay and port == self.node.port

    # -- life cycle ------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._port_id is not None

    async def start(self) -> None:
        """Create the health network and port, program the peers, start probing.

        Raises ConflictError when the VNI is taken on the node (choose another
        ``health.vni``); nothing is left behind then.
        """
        if self.running:
            return
        loop = asyncio.get_running_loop()
        network = self.node.add_network(self.vni, HEALTH_TENANT)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setblocking(False)
            port_id = self.node.engine.port_add_fd(
                self.vni, theirs.fileno(), self._mac_raw, security=True
            )
        except BaseException:
            ours.close()
            theirs.close()
            self.node.remove_network(self.vni)
            raise
        theirs.detach()  # the engine owns that end now, and closes it on port_del
        self._network = network
        self._port_id = port_id
        self._sock = ours
        self._loop = loop
        try:
            self._program()
        except BaseException:
            await self.stop()
            raise
        loop.add_reader(ours.fileno(), self._on_readable)
        self._reading = True
        self._task = loop.create_task(self._probe_loop())

    async def stop(self) -> None:
        """Stop probing, remove the port and the health network. Idempotent.

        Safe after the node was closed: what is already gone is skipped.
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._stop_reading()
        if self._port_id is not None:
            try:
                self.node.engine.port_del(self._port_id)
            except OverlayError as exc:
                log.debug("health: removing port %d: %s", self._port_id, exc)
            self._port_id = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._vtep_ports.clear()
        if self._network is not None:
            self._network = None
            try:
                self.node.remove_network(self.vni)
            except OverlayError as exc:
                log.debug("health: removing vni %d: %s", self.vni, exc)
        self._loop = None

    def _stop_reading(self) -> None:
        if self._reading and self._loop is not None and self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._reading = False

    # -- peers -----------------------------------------------------------------

    def set_peers(self, peers: Mapping[str, tuple[str, int]]) -> None:
        """Probe exactly these peers: name -> (underlay address, UDP port; 0 = this node's).

        Idempotent: peers already probed keep their statistics; the health
        network's VTEPs and remote MACs are changed only where they differ.
        An entry naming this node itself (its underlay and port) is skipped,
        so a full node list may be passed. Raises ConfigError naming the entry
        and changes nothing when an entry is bad.
        """
        want: dict[str, _Peer] = {}
        macs: dict[str, str] = {}
        for name, spec in peers.items():
            field = f"peers[{name!r}]"
            if not isinstance(name, str) or not name:
                raise ConfigError("peers", name, "peer names are non-empty strings")
            try:
                underlay, port = spec
            except (TypeError, ValueError):
                raise ConfigError(field, spec, "a pair (underlay address, UDP port)") from None
            try:
                addr = ipaddress.ip_address(str(underlay))
            except ValueError:
                raise ConfigError(f"{field}.underlay", underlay, "an IP address") from None
            if addr.version != self.node.underlay.version:
                raise ConfigError(
                    f"{field}.underlay",
                    underlay,
                    f"an IPv{self.node.underlay.version} address like this node's underlay",
                )
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise ConfigError(f"{field}.port", port, "a UDP port 1-65535, or 0 for this node's")
            eff = port or self.node.port
            if self._is_self(addr, eff):
                continue
            mac = health_mac(str(addr), self._mac_port(eff))
            if mac in macs:
                raise ConfigError(
                    f"{field}.underlay",
                    underlay,
                    f"a node of its own: peer {macs[mac]!r} has the same address and port",
                )
            macs[mac] = name
            old = self._peers.get(name)
            if old is not None and old.underlay == addr and old.port == eff:
                want[name] = old
            else:
                want[name] = _Peer(name, addr, eff, mac, mac_bytes(mac))
        self._peers = want
        self._by_mac = {p.mac_raw: p for p in want.values()}
        if self.running:
            self._program()

    def _program(self) -> None:
        """Make the health network's VTEPs and remote MACs those of the peers.

        Level-triggered: compared with what the network has, so a call that
        failed half-way (a full table) is completed by the next one. Several
        peers may share one underlay address (nodes on different ports): the
        engine keys VTEP membership on the address alone, so an address stays
        a member while any peer is left there.
        """
        net = self._network
        want_vteps: dict[IPAddress, int] = {}
        for p in sorted(self._peers.values(), key=lambda q: q.name):
            want_vteps.setdefault(p.underlay, p.port)
        for mac in set(net.remotes) - {p.mac for p in self._peers.values()}:
            net.remove_remote(mac)
        for addr in set(net.vteps) - set(want_vteps):
            net.remove_vtep(str(addr))
            self._vtep_ports.pop(addr, None)
        for addr, port in want_vteps.items():
            if addr not in net.vteps or self._vtep_ports.get(addr) != port:
                net.add_vtep(str(addr), port)
                self._vtep_ports[addr] = port
        for p in self._peers.values():
            have = net.remotes.get(p.mac)
            if have is None or have[0] != p.underlay:
                net.add_remote(mac=p.mac, vtep=str(p.underlay), port=p.port)

    # -- results ---------------------------------------------------------------

    def results(self) -> list[dict[str, Any]]:
        """One dict per peer, sorted by name (see the module's notes for the meaning)."""
        now = time.monotonic()
        out = []
        for p in sorted(self._peers.values(), key=lambda q: q.name):
            age = None if p.last_reply is None else now - p.last_reply
            out.append(
                {
                    "name": p.name,
                    "underlay": str(p.underlay),
                    "port": p.port,
                    "reachable": self.running and age is not None and age <= self.timeout,
                    "rtt_ms": None if p.last_rtt_ns is None else p.last_rtt_ns / 1e6,
                    "rtt_avg_ms": (sum(p.rtts_ns) / len(p.rtts_ns) / 1e6 if p.rtts_ns else None),
                    "sent": p.sent,
                    "received": p.received,
                    "last_reply_age_s": age,
                }
            )
        return out

    def stats(self) -> dict[str, int]:
        """Frames the prober could not use or send, and requests it answered."""
        return {
            "bad_frames": self.bad_frames,
            "stray_frames": self.stray_frames,
            "requests_answered": self.requests_answered,
            "send_errors": self.send_errors,
        }

    # -- the loop's side -------------------------------------------------------

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self._probe_round()
            except Exception:  # never let one bad round end the probing
                log.exception("health: probe round failed")
            next_at += self.interval
            delay = next_at - loop.time()
            if delay < 0:  # fell behind (a blocked loop): skip, never burst to catch up
                next_at, delay = loop.time(), 0.0
            await asyncio.sleep(delay)

    async def _probe_round(self) -> None:
        """Send one request to every peer, in slices so the port's socket buffer never fills."""
        for i, p in enumerate(list(self._peers.values())):
            if i and i % _SEND_SLICE == 0:
                await asyncio.sleep(_SLICE_PAUSE)  # the engine's worker drains the port meanwhile
            if self._peers.get(p.name) is not p:
                continue  # removed meanwhile
            p.seq += 1
            frame = encode_probe(
                p.mac_raw, self._mac_raw, KIND_REQUEST, p.seq, time.monotonic_ns(), self.name
            )
            if self._send(frame):
                p.sent += 1

    def _send(self, frame: bytes) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.send(frame)
            return True
        except OSError:  # full (the engine is not reading) or gone: counted, never raised
            self.send_errors += 1
            return False

    def _on_readable(self) -> None:
        try:
            for _ in range(_RECV_BURST):
                if self._sock is None:
                    return
                try:
                    frame = self._sock.recv(_RECV_BYTES)
                except BlockingIOError:
                    return
                except OSError as exc:
                    log.warning("health: reading the health port failed: %s", exc)
                    self._stop_reading()
                    return
                if not frame:  # the engine closed its end (port removed, node closed)
                    log.warning("health: the engine closed the health port")
                    self._stop_reading()
                    return
                self._handle(frame)
        except Exception:  # a loop callback never raises
            log.exception("health: handling a frame failed")

    def _handle(self, frame: bytes) -> None:
        probe = decode_probe(frame)
        if probe is None:
            self.bad_frames += 1
            return
        if probe.dst != self._mac_raw:
            self.stray_frames += 1
            return
        peer = self._by_mac.get(probe.src)
        if peer is None:
            self.stray_frames += 1
            return
        if probe.kind == KIND_REQUEST:
            reply = encode_probe(
                probe.src, self._mac_raw, KIND_REPLY, probe.seq, probe.time_ns, self.name
            )
            if self._send(reply):
                self.requests_answered += 1
            return
        now_ns = time.monotonic_ns()
        if not 1 <= probe.seq <= peer.seq or probe.time_ns > now_ns:
            self.bad_frames += 1  # a reply to nothing this prober sent
            return
        rtt_ns = now_ns - probe.time_ns
        peer.received += 1
        peer.last_rtt_ns = rtt_ns
        peer.rtts_ns.append(rtt_ns)
        peer.last_reply = time.monotonic()
