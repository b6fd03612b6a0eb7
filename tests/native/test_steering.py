"""Flow steering: both directions of a flow are handled by the worker that owns it.

native/engine.h ("Per-flow state: the decision") gives every flow one owner,
``ovl_wire_steer_hash(inner frame) % workers``, and has the kernel hand each
direction to it: the tunnel port's SO_REUSEPORT group by a classic BPF
program, a multi-queue TAP by the same program in eBPF. A frame handled by
another worker is counted (``steer_misses``). These tests send many flows
(TCP and UDP, IPv4 and IPv6) both ways and check, per worker, that each
direction of every flow reached the owner the hash names:

- in process, on the fake transport (native/fake.c), whose injected datagrams
  reach the inbox the underlay program picks (run by steer.c's interpreter):
  no root needed;
- in process with a real multi-queue TAP in a namespace, whose queue the
  kernel picks by the eBPF program, and replies injected on the fake
  transport: both directions of one flow, flow group by flow group (root);
- between two real nodes in namespaces (UDP transport, multi-queue TAPs,
  pods' own IP stacks): many UDP flows echoed both ways and TCP streams, with
  no steer miss on either node (root);
- where the engine cannot steer (an adopted fd port has one queue, served by
  one worker), traffic still flows and every frame off its owner is counted.

The flows are grouped by their owner as ``overlay.bindings.wire.steer_hash``
(the C hash) computes it, and each group is sent alone: the worker counters
must move on the owner only. The Python reference (``overlay.wire.steer_hash``)
must agree with it on every frame sent.

The in-process tests run again against the AddressSanitizer/UBSan build of the
module (tests/native/test_native_sanitize.py).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from overlay import Encap, GeneveOption, wire
from overlay.bindings import ENCAP_GENEVE, ENCAP_VXLAN, mac_bytes
from overlay.bindings.tools import FakeTransportEngine, SentDatagram, worker_counters
from overlay.bindings.wire import steer_hash
from overlay.testing.cluster import Cluster
from overlay.testing.fakes import FAKE_LOCAL, FakePort, fake_transport_engine
from overlay.testing.netns import Netns, Topology
from overlay.testing.traffic import iperf3, ping, tcp_transfer, wait_for

MAC_A, MAC_B = "02:00:00:00:01:02", "02:00:00:00:02:02"
IP_A, IP_B = "10.244.1.2", "10.244.1.3"
A6, B6 = "2001:2:0:1::2", "2001:2:0:1::3"
PEER = ipaddress.ip_address("198.18.0.2")  # the member VTEP behind which B lives
VNI = 100
# A Geneve option the engine does not know, not critical: accepted and
# skipped, so the inner frame sits behind 8 + 8 bytes of options.
OPTION = wire.GeneveOption(0x0102, 0x05, b"\x00\x01\x00\x02")
ENCAPS = [ENCAP_VXLAN, ENCAP_GENEVE]
ENCAP_IDS = ["vxlan", "geneve"]


@dataclass(frozen=True)
class Flow:
    """One flow between local pod A and remote pod B: A's frame and B's reply."""

    out: bytes  # A -> B: read from A's port
    back: bytes  # B -> A: arrives from the underlay

    def owner(self, workers: int) -> int:
        return steer_hash(self.out) % workers


def flows(count: int = 96) -> list[Flow]:
    """``count`` flows: TCP and UDP over IPv4 and IPv6, ports varied."""
    out: list[Flow] = []
    for k in range(count):
        proto = TCP if k % 2 else UDP
        v6 = k % 4 >= 2
        a, b = (A6, B6) if v6 else (IP_A, IP_B)
        l3 = IPv6 if v6 else IP
        sport, dport = 20000 + 7 * k, 80 + k % 5
        payload = Raw(struct.pack("!I", k) + b"s" * 20)
        there = Ether(src=MAC_A, dst=MAC_B) / l3(src=a, dst=b) / proto(sport=sport, dport=dport)
        back = Ether(src=MAC_B, dst=MAC_A) / l3(src=b, dst=a) / proto(sport=dport, dport=sport)
        out.append(Flow(bytes(there / payload), bytes(back / payload)))
    return out


def by_owner(fs: list[Flow], workers: int) -> dict[int, list[Flow]]:
    groups: dict[int, list[Flow]] = {w: [] for w in range(workers)}
    for f in fs:
        # the two directions of a flow have one owner, and C and Python agree on it
        assert steer_hash(f.out) == steer_hash(f.back) == wire.steer_hash(f.out)
        groups[f.owner(workers)].append(f)
    assert all(groups.values()), f"some worker owns none of {len(fs)} flows: {groups}"
    return groups


def tunnelled(encap: int, inner: bytes, *, option: bool = False) -> bytes:
    """``inner`` behind a tunnel header for VNI; a Geneve one with OPTION if asked."""
    options = [OPTION] if option and encap == ENCAP_GENEVE else []
    return wire.encode(encap, wire.Tunnel(VNI, options=options)) + inner


def per_worker(eng: FakeTransportEngine, counter: str) -> list[int]:
    return [worker_counters(eng, w)[counter] for w in range(eng.workers)]


def moved(before: list[int], after: list[int]) -> dict[int, int]:
    """The workers whose counter moved, and by how much."""
    return {w: a - b for w, (b, a) in enumerate(zip(before, after, strict=True)) if a != b}


def network_with_peer(eng: FakeTransportEngine) -> None:
    """Network VNI with PEER as its member VTEP and pod B behind it."""
    eng.network_add(VNI)
    eng.vtep_add(VNI, PEER)
    eng.fdb_add(VNI, mac_bytes(MAC_B), PEER)


def reaches(count: Callable[[], int], want: int) -> bool:
    """Wait until ``count()`` is at least ``want``."""
    return wait_for(lambda: count() >= want)


def inject_group(eng: FakeTransportEngine, group: list[Flow], received: Callable[[], int]) -> None:
    """Inject the replies of ``group`` from PEER; wait until the pod's count of
    frames received so far, ``received()``, has grown by all of them."""
    want = received() + len(group)
    for f in group:
        eng.inject(tunnelled(eng.encap, f.back, option=True), PEER, eng.udp_port)
    assert reaches(received, want), f"{received()} of {want} delivered"


def drained(port: FakePort) -> Callable[[], int]:
    """A count of the frames delivered to ``port`` so far (read as it goes)."""
    got: list[bytes] = []

    def count() -> int:
        got.extend(port.drain(0.01))
        return len(got)

    return count


# ---- in process, no root: the underlay's program in the fake transport ----


@pytest.mark.parametrize("workers", [2, 3, 4])
@pytest.mark.parametrize("encap", ENCAPS, ids=ENCAP_IDS)
def test_datagrams_reach_the_worker_that_owns_their_inner_flow(encap: int, workers: int) -> None:
    fs = flows()
    with fake_transport_engine(encap, workers=workers) as eng:
        assert eng.steering["underlay"]
        network_with_peer(eng)
        pa = FakePort(eng, VNI, MAC_A, (IP_A, A6))
        received = drained(pa)
        for owner, group in by_owner(fs, workers).items():
            before = per_worker(eng, "udp_rx_packets")
            inject_group(eng, group, received)
            assert moved(before, per_worker(eng, "udp_rx_packets")) == {owner: len(group)}
        c = eng.counters()
        assert c["steer_misses"] == 0 and c["udp_rx_packets"] == len(fs)
        # a write is counted once it returned, a moment after the pod read the frame
        assert wait_for(lambda: eng.port_counters(pa.id)["tx_packets"] == len(fs))


def test_a_short_datagram_belongs_to_worker_zero() -> None:
    # The program cannot read an inner frame that is not there: worker 0 takes
    # it (as ovl_wire_steer_hash gives 0), and the drop is counted there.
    with fake_transport_engine(ENCAP_GENEVE, workers=4) as eng:
        eng.network_add(VNI)
        eng.inject(b"\x3f", PEER)  # Opt Len 63: options past the end
        assert wait_for(lambda: eng.counters()["geneve_truncated"] == 1)
        assert worker_counters(eng, 0)["geneve_truncated"] == 1
        assert eng.counters()["steer_misses"] == 0


# ---- where the engine cannot steer: an adopted fd port has one queue ----


@pytest.mark.parametrize("workers", [2, 3])
def test_an_adopted_fd_port_is_served_by_one_worker_and_its_misses_are_counted(
    workers: int,
) -> None:
    fs = flows(48)
    with fake_transport_engine(ENCAP_VXLAN, workers=workers) as eng:
        network_with_peer(eng)
        pa = FakePort(eng, VNI, MAC_A, (IP_A, A6))
        served = pa.id % workers  # the worker of a single-queue port (port.h)
        for f in fs:
            pa.send(f.out)
        got: list[SentDatagram] = []

        def taken() -> int:
            got.extend(eng.sent())
            return len(got)

        assert reaches(taken, len(fs))
        # everything was forwarded, each flow from one source port
        assert sorted(d.data for d in got) == sorted(tunnelled(ENCAP_VXLAN, f.out) for f in fs)
        assert moved([0] * workers, per_worker(eng, "tap_rx_frames")) == {served: len(fs)}
        off_owner = sum(1 for f in fs if f.owner(workers) != served)
        assert 0 < off_owner < len(fs)
        assert eng.counters()["steer_misses"] == off_owner
        # the replies come back steered, each to its owner: no further miss
        inject_group(eng, fs, drained(pa))
        assert eng.counters()["steer_misses"] == off_owner


# ---- in process with a real multi-queue TAP: the kernel runs the eBPF program ----


@pytest.fixture
def pod_ns(overlay_topology: Topology) -> Netns:
    return overlay_topology.add_netns("pod")


class PodSide:
    """Pod A's end of a TAP in ``ns``: raw frames out, and the frames that came in."""

    def __init__(self, ns: Netns, ifname: str) -> None:
        self.tx = ns.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.tx.bind((ifname, 0))
        eth_p_all = 0x0003
        self.rx = ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_all))
        self.rx.bind((ifname, eth_p_all))
        self.rx.settimeout(0.01)
        self.seen: list[bytes] = []

    def received(self) -> int:
        """How many frames the engine has written to the TAP so far."""
        while True:
            try:
                data, addr = self.rx.recvfrom(70000)
            except TimeoutError:
                return len(self.seen)
            if addr[2] != socket.PACKET_OUTGOING:
                self.seen.append(data)

    def close(self) -> None:
        self.tx.close()
        self.rx.close()


@pytest.mark.root
@pytest.mark.parametrize("workers", [2, 3, 4])
@pytest.mark.parametrize("encap", ENCAPS, ids=ENCAP_IDS)
def test_both_directions_of_each_flow_meet_on_its_owner(
    pod_ns: Netns, encap: int, workers: int
) -> None:
    fs = flows()
    fd = os.open(pod_ns.path, os.O_RDONLY | os.O_CLOEXEC)
    eng = FakeTransportEngine(encap=encap, local=FAKE_LOCAL, workers=workers)
    pod: PodSide | None = None
    try:
        network_with_peer(eng)
        port, ifname = eng.port_add(VNI, mac_bytes(MAC_A), "eth0", fd)
        eng.port_add_ip(port, ipaddress.ip_address(IP_A))
        eng.port_add_ip(port, ipaddress.ip_address(A6))
        assert eng.steering == {"underlay": True, "tap": True}
        pod_ns.link_set(ifname, state="up")
        eng.start()
        pod = PodSide(pod_ns, ifname)
        sent: list[bytes] = []

        def encapsulated() -> int:
            sent.extend(d.data for d in eng.sent())
            return len(sent)

        for owner, group in by_owner(fs, workers).items():
            # out: the kernel picks the TAP queue by the eBPF program
            before, want = per_worker(eng, "tap_rx_frames"), len(sent) + len(group)
            for f in group:
                pod.tx.send(f.out)
            assert reaches(encapsulated, want), f"{len(sent)} of {want} sent"
            assert moved(before, per_worker(eng, "tap_rx_frames")) == {owner: len(group)}
            # back: the replies, steered on the underlay, meet the same worker
            before = per_worker(eng, "udp_rx_packets")
            inject_group(eng, group, pod.received)
            assert moved(before, per_worker(eng, "udp_rx_packets")) == {owner: len(group)}
        assert sorted(sent) == sorted(tunnelled(encap, f.out) for f in fs)
        assert sorted(pod.seen) == sorted(f.back for f in fs)
        assert eng.counters()["steer_misses"] == 0
    finally:
        if pod is not None:
            pod.close()
        eng.close()
        os.close(fd)


# ---- two real nodes: the UDP transport's reuseport program, pods' own stacks ----


def echo_flows(client: Netns, server: Netns, server_ip: str, n_flows: int, rounds: int) -> int:
    """``n_flows`` UDP flows (one client socket each) from ``client`` to an echo
    server in ``server``, ``rounds`` datagrams each way per flow; returns how
    many echoes came back."""
    family = socket.AF_INET6 if ":" in server_ip else socket.AF_INET
    srv = server.socket(family, socket.SOCK_DGRAM)
    srv.bind((server_ip, 0))
    srv.settimeout(0.5)
    addr = srv.getsockname()[:2]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = srv.recvfrom(2048)
            except TimeoutError:
                continue
            srv.sendto(data, peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    clients = [client.socket(family, socket.SOCK_DGRAM) for _ in range(n_flows)]
    back = 0
    try:
        for r in range(rounds):
            for i, c in enumerate(clients):
                c.sendto(struct.pack("!HH", i, r), addr)
            for c in clients:
                c.settimeout(2.0)
                try:
                    c.recv(64)
                    back += 1
                except TimeoutError:
                    pass
    finally:
        stop.set()
        t.join(2.0)
        for c in clients:
            c.close()
        srv.close()
    return back


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize(
    "encap,family",
    [(Encap.VXLAN, 4), (Encap.GENEVE, 6)],
    ids=["vxlan-ipv4", "geneve-ipv6"],
)
def test_two_nodes_with_several_workers_never_miss_a_flows_owner(
    overlay_topology: Topology, encap: Encap, family: int
) -> None:
    """Both nodes steer on both sides (CAP_BPF: we are root): UDP flows echoed
    both ways, TCP transfers and parallel iperf3 streams in both directions
    reach every flow's owner on each node, and every worker takes part.

    A miss would also come from a receive coalescing datagrams of different
    flows; the engine sends one flow per GSO send and veth does not GRO them
    together (no NAPI without XDP), so none is expected here."""
    with Cluster(overlay_topology, encap, node_options={"workers": 2}) as c:
        opts = (GeneveOption(0x0102, 0x05, b"\x00\x01\x00\x02"),) if encap is Encap.GENEVE else ()
        c.add_network(VNI, "blue", geneve_options=opts)
        cidrs = ("10.244.1.2/24", "10.244.1.3/24") if family == 4 else (f"{A6}/64", f"{B6}/64")
        a = c.add_pod(0, VNI, cidrs[0])
        b = c.add_pod(1, VNI, cidrs[1])
        c.start()
        for n in c.nodes:
            assert n.engine.steering == {"underlay": True, "tap": True}
        assert ping(a.netns, b.ip, count=2, interval=0.1).ok
        flows_, rounds = 64, 5
        assert echo_flows(a.netns, b.netns, b.ip, flows_, rounds) == flows_ * rounds
        assert echo_flows(b.netns, a.netns, a.ip, flows_, rounds) == flows_ * rounds
        t = tcp_transfer(a.netns, b.netns, b.ip, 20_000_000, timeout=60)
        assert t.ok, t
        t = tcp_transfer(b.netns, a.netns, a.ip, 20_000_000, timeout=60)
        assert t.ok, t
        for reverse in (False, True):
            r = iperf3(a.netns, b.netns, b.ip, seconds=1, parallel=4, reverse=reverse)
            assert r.bits_per_second > 0, r.raw
        for i, n in enumerate(c.nodes):
            counters = n.counters()["node"]
            assert counters["steer_misses"] == 0, (i, counters)
            for w in range(2):
                wc = worker_counters(n.engine, w)
                assert wc["tap_rx_frames"] > 0 and wc["udp_rx_packets"] > 0, (i, w, wc)
