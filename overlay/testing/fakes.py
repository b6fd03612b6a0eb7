"""In-process fakes for testing the engine without a kernel network.

As wireguard-go's ``tuntest``/``bindtest``: a ``FakePort`` is a
SOCK_SEQPACKET socket pair standing in for a TAP (each send is one frame, as
with a TAP fd). The underlay comes two ways: engines bound to 127.0.0.1 on
per-test ports stand in for nodes (``loopback_engine``: real UDP sockets), or
an engine runs on the in-memory fake transport (``fake_transport_engine``:
datagrams are injected and read back, no socket at all, and the outer source
port of every datagram is visible). Either way forwarding, isolation, port
security, counters and events are tested in one process, without root,
against the real C data plane.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from overlay.bindings import Engine, mac_bytes
from overlay.bindings.tools import FakeTransportEngine
from overlay.errors import ConflictError

LOOPBACK = ipaddress.ip_address("127.0.0.1")


#: Engines bind their outer source ports from 49152 up (probing upward past
#: busy ones), so a listening port handed to a test must lie below that pool:
#: otherwise one engine's source socket can take the port another was given.
SOURCE_POOL_START = 49152


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port below the engines' source-port pool that was free a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(10_000):
        port = random.randrange(20000, SOURCE_POOL_START)
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free UDP port on {host} below {SOURCE_POOL_START}")


class FakePort:
    """The pod's end of a fake TAP: send() frames into the engine, recv() what it delivers."""

    def __init__(
        self,
        engine: Engine,
        vni: int,
        mac: str,
        ips: tuple[str, ...] = (),
        *,
        security: bool = True,
        router: bool = False,
    ) -> None:
        self.pod, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.mac = mac
        self.id = engine.port_add_fd(
            vni, theirs.detach(), mac_bytes(mac), security=security, router=router
        )
        for ip in ips:
            engine.port_add_ip(self.id, ipaddress.ip_address(ip))

    def send(self, frame: bytes) -> None:
        self.pod.send(frame)

    def recv(self, timeout: float = 2.0) -> bytes:
        """The next frame delivered to this port; TimeoutError when none comes."""
        self.pod.settimeout(timeout)
        try:
            return self.pod.recv(70000)
        except TimeoutError:
            raise TimeoutError("no frame delivered to the port") from None

    def drain(self, wait: float = 0.3) -> list[bytes]:
        """Every frame that arrives within ``wait`` seconds."""
        out = []
        while True:
            try:
                out.append(self.recv(wait))
            except TimeoutError:
                return out

    def close(self) -> None:
        self.pod.close()


@contextmanager
def loopback_engine(encap: int, **kw: object) -> Iterator[Engine]:
    """An engine on 127.0.0.1 with a fresh port, closed afterwards."""
    eng = Engine(encap=encap, local=LOOPBACK, udp_port=free_udp_port(), **kw)  # type: ignore[arg-type]
    try:
        yield eng
    finally:
        eng.close()


#: The underlay address a fake-transport engine records as its own (nothing is
#: bound to it): the test bed's underlay range (tests/README.md).
FAKE_LOCAL = ipaddress.ip_address("198.18.0.1")


@contextmanager
def fake_transport_engine(encap: int, **kw: object) -> Iterator[FakeTransportEngine]:
    """An engine on the in-memory transport, started, and closed afterwards."""
    kw.setdefault("local", FAKE_LOCAL)
    eng = FakeTransportEngine(encap=encap, **kw)  # type: ignore[arg-type]
    try:
        eng.start()
        yield eng
    finally:
        eng.close()


class RecordingNetwork:
    """The network half of ``Node``'s API as plain Python: what an agent programs."""

    def __init__(self, vni: int, tenant: str, tunnel: bool = True) -> None:
        self.vni = vni
        self.tenant = tenant
        self.tunnel = tunnel  # False: the node refuses VTEPs and remotes (as Node does)
        self.encap: str | None = None  # as add_network was told (None: the node's)
        self.ports: list[Any] = []
        self.vteps: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        self.remotes: dict[str, tuple[Any, list[Any]]] = {}
        self.changes = 0  # every add or remove, to see flapping

    def add_vtep(self, address: str, port: int | None = None) -> None:
        self._tunnel_only("VTEPs")
        self.vteps.add(ipaddress.ip_address(address))
        self.changes += 1

    def remove_vtep(self, address: str) -> None:
        self.vteps.discard(ipaddress.ip_address(address))
        self.changes += 1

    def add_remote(self, mac: str, vtep: str, ip: Any = None, port: int | None = None) -> None:
        self._tunnel_only("remotes")
        ips = [] if ip is None else [ip] if isinstance(ip, str) else list(ip)
        self.remotes[mac.lower()] = (
            ipaddress.ip_address(vtep),
            [ipaddress.ip_address(a) for a in ips],
        )
        self.changes += 1

    def remove_remote(self, mac: str) -> None:
        del self.remotes[mac.lower()]
        self.changes += 1

    def _tunnel_only(self, what: str) -> None:
        if not self.tunnel:
            raise ConflictError(f"vni={self.vni} has no tunnel: it has no {what}")


class RecordingNode:
    """A node without a data plane, for control-plane tests and scale runs with
    hundreds of agents in one process (``overlay.Node`` has the same API)."""

    def __init__(self, underlay: str, port: int = 0) -> None:
        self.underlay = ipaddress.ip_address(underlay)
        self.port = port
        self.networks: dict[int, RecordingNetwork] = {}

    def add_network(
        self,
        vni: int,
        tenant: str,
        *,
        learning: bool = False,
        tunnel: bool = True,
        encap: str | None = None,
    ) -> RecordingNetwork:
        net = RecordingNetwork(vni, tenant, tunnel)
        net.encap = encap
        self.networks[vni] = net
        return net

    def network(self, vni: int) -> RecordingNetwork:
        return self.networks[vni]
