"""Offloads end to end: big transfers stay byte-exact and checksum-clean.

With TAP offloads a pod hands the node 64 KB TCP super-frames (TSO) with
checksums left open; the node cuts them into segments (UDP GSO sends) and
the receiving node coalesces them back (UDP GRO receive, one virtio-net GSO
write into the pod's TAP). These tests move hundreds of MB through that path
and check the bytes (sha256) and the receivers' TcpInCsumErrors.
"""

from __future__ import annotations

import socket
import struct

import pytest

from overlay.node import Encap
from overlay.testing.cluster import Cluster
from overlay.testing.netns import Netns, Topology
from overlay.testing.traffic import ping, tcp_transfer, wait_for

pytestmark = pytest.mark.root

UDP_SEGMENT = 103


def snmp(ns: Netns, proto: str, field: str) -> int:
    """A counter from the namespace's /proc/net/snmp (or snmp6 for Ip6/Udp6 names)."""

    def read() -> str:
        with open("/proc/thread-self/net/snmp") as f:
            return f.read()

    lines = [ln.split() for ln in ns.call(read).splitlines() if ln.startswith(proto + ":")]
    names, values = lines[0], lines[1]
    return int(values[names.index(field)])


@pytest.mark.parametrize(
    "encap,cidrs,nbytes",
    [
        pytest.param(Encap.VXLAN, ("10.244.1.2/24", "10.244.1.3/24"), 300_000_000, id="vxlan-v4"),
        pytest.param(Encap.GENEVE, ("10.244.1.2/24", "10.244.1.3/24"), 200_000_000, id="geneve-v4"),
        pytest.param(Encap.VXLAN, ("2001:2::2/64", "2001:2::3/64"), 200_000_000, id="vxlan-v6"),
    ],
)
def test_large_transfer_through_offloads_is_exact_and_checksum_clean(
    overlay_topology: Topology, encap: Encap, cidrs: tuple[str, str], nbytes: int
) -> None:
    with Cluster(overlay_topology, encap) as c:
        c.add_network(100, "blue")
        a = c.add_pod(0, 100, cidrs[0])
        b = c.add_pod(1, 100, cidrs[1])
        c.start()
        # A warm-up, not the check: a first probe may go while neighbour discovery
        # settles (IPv6 on a loaded machine); the transfers below are the check.
        assert wait_for(lambda: ping(a.netns, b.ip, count=1, timeout=2).ok, 15)
        before = [snmp(p.netns, "Tcp", "InCsumErrors") for p in (a, b)]
        for src, dst in ((a, b), (b, a)):
            t = tcp_transfer(src.netns, dst.netns, dst.ip, nbytes, timeout=120)
            assert t.ok and t.nbytes == nbytes, t
        after = [snmp(p.netns, "Tcp", "InCsumErrors") for p in (a, b)]
        assert after == before, "a pod saw TCP segments with bad checksums"
        for node in c.nodes:
            cnt = node.counters()
            assert cnt["offloads"]["tap_tso"] and cnt["offloads"]["udp_gso"]
            assert cnt["node"]["gso_frames"] > 0 and cnt["node"]["gso_segments"] > 0
            assert cnt["node"]["gro_frames"] > 0 and cnt["node"]["udp_gso_sends"] > 0
            assert not any(cnt["drops"].values()), cnt["drops"]


def test_offloads_can_be_turned_off_and_traffic_still_flows(overlay_topology: Topology) -> None:
    with Cluster(overlay_topology, Encap.VXLAN, node_options={"offloads": False}) as c:
        c.add_network(100, "blue")
        a = c.add_pod(0, 100, "10.244.1.2/24")
        b = c.add_pod(1, 100, "10.244.1.3/24")
        c.start()
        t = tcp_transfer(a.netns, b.netns, b.ip, 20_000_000, timeout=60)
        assert t.ok, t
        cnt = c.nodes[0].counters()
        assert not any(cnt["offloads"].values())
        assert cnt["node"]["gso_frames"] == 0 and cnt["node"]["udp_gso_sends"] == 0


def test_some_offloads_only(overlay_topology: Topology) -> None:
    with Cluster(
        overlay_topology, Encap.VXLAN, node_options={"offloads": ["udp_gso", "udp_gro"]}
    ) as c:
        c.add_network(100, "blue")
        a = c.add_pod(0, 100, "10.244.1.2/24")
        b = c.add_pod(1, 100, "10.244.1.3/24")
        c.start()
        assert tcp_transfer(a.netns, b.netns, b.ip, 10_000_000, timeout=60).ok
        off = c.nodes[0].counters()["offloads"]
        assert off == {"tap_tso": False, "tap_uso": False, "udp_gso": True, "udp_gro": True}


def test_udp_segmentation_from_a_pod_arrives_as_separate_datagrams(
    overlay_topology: Topology,
) -> None:
    """A pod sending with UDP_SEGMENT hands the node one USO super-frame; the peer pod
    must receive each datagram on its own, intact."""
    with Cluster(overlay_topology, Encap.VXLAN) as c:
        c.add_network(100, "blue")
        a = c.add_pod(0, 100, "10.244.1.2/24")
        b = c.add_pod(1, 100, "10.244.1.3/24")
        c.start()
        if not c.nodes[0].counters()["offloads"]["tap_uso"]:
            pytest.skip("this kernel's TAP has no USO")
        assert ping(a.netns, b.ip, count=1).ok
        rx = b.netns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx = a.netns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((b.ip, 0))
        rx.settimeout(2)
        seg, count = 1000, 20
        payload = b"".join(struct.pack("!I", i) + bytes([i]) * (seg - 4) for i in range(count))
        tx.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, seg)
        tx.sendto(payload, (b.ip, rx.getsockname()[1]))
        got = [rx.recv(4096) for _ in range(count)]
        assert sorted(got) == [payload[i * seg : (i + 1) * seg] for i in range(count)]
        assert c.nodes[0].counters()["node"]["gso_frames"] >= 1
        rx.close()
        tx.close()


def test_several_workers_keep_every_flow_in_order(overlay_topology: Topology) -> None:
    """Multi-queue TAPs and one receive socket per worker: a flow stays on one
    queue and one worker, so numbered datagrams of each flow arrive in order."""
    with Cluster(overlay_topology, Encap.VXLAN, node_options={"workers": 2}) as c:
        c.add_network(100, "blue")
        a = c.add_pod(0, 100, "10.244.1.2/24")
        b = c.add_pod(1, 100, "10.244.1.3/24")
        c.start()
        assert ping(a.netns, b.ip, count=1).ok
        rx = b.netns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        rx.bind((b.ip, 0))
        rx.settimeout(1)
        flows = [a.netns.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
        per_flow = 300
        for i in range(per_flow):
            for f, s in enumerate(flows):
                s.sendto(struct.pack("!HI", f, i), (b.ip, rx.getsockname()[1]))
        seen: dict[int, list[int]] = {}
        try:
            while sum(len(v) for v in seen.values()) < per_flow * len(flows):
                f, i = struct.unpack("!HI", rx.recv(64))
                seen.setdefault(f, []).append(i)
        except TimeoutError:
            pass
        for s in flows:
            s.close()
        rx.close()
        assert len(seen) == len(flows)
        for f, got in seen.items():
            assert got == sorted(got), f"flow {f} reordered"
            assert len(got) >= per_flow * 0.9, f"flow {f}: {len(got)} of {per_flow}"
        t = tcp_transfer(a.netns, b.netns, b.ip, 50_000_000, timeout=60)
        assert t.ok, t
