"""Underlay networks through the embedding API (``Network.add_uplink``): pods on
the physical L2 segment of the node's interface, every frame through the engine.

The bed: one segment (a bridge, ``Topology.lan``) joining node n0 (198.18.0.1),
node n1 (198.18.0.2) and a plain host h (198.18.0.100) that runs no overlay at
all. Network 300 (tenant phys) is an underlay network on each node (made
without a tunnel: its pods get the segment's full MTU), uplinked to its
``ul0``; pod p0 on n0 holds 198.18.0.10, pod p1 on n1 198.18.0.11, both in the
segment's own range.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from overlay import Encap, Node
from overlay.control.ipam import mac_of
from overlay.errors import ConfigError, ConflictError, NotFoundError
from overlay.node import Network, Port
from overlay.testing.capture import Capture, tshark_fields
from overlay.testing.netns import Netns, Topology
from overlay.testing.traffic import ping, send_frames, tcp_transfer, wait_for

pytestmark = pytest.mark.root

HOST, POD0, POD1 = "198.18.0.100", "198.18.0.10", "198.18.0.11"
VNI = 300


@dataclass
class Bed:
    n0: Netns
    n1: Netns
    h: Netns
    p0: Netns
    p1: Netns
    node0: Node
    node1: Node
    net0: Network
    up0: Port
    pod0: Port
    pod1: Port


@pytest.fixture
def bed(overlay_topology: Topology) -> Iterator[Bed]:
    t = overlay_topology
    n0, n1, h = t.add_netns("n0"), t.add_netns("n1"), t.add_netns("h")
    p0, p1 = t.add_netns("p0"), t.add_netns("p1")
    t.lan([n0, n1, h], ["198.18.0.1/24", "198.18.0.2/24", f"{HOST}/24"])
    with (
        Node("198.18.0.1", Encap.VXLAN, netns=n0.path) as node0,
        Node("198.18.0.2", Encap.VXLAN, netns=n1.path) as node1,
    ):
        net0 = node0.add_network(VNI, "phys", tunnel=False)
        net1 = node1.add_network(VNI, "phys", tunnel=False)
        up0 = net0.add_uplink("ul0")
        net1.add_uplink("ul0")
        pod0 = net0.add_port(mac_of(POD0), [f"{POD0}/24"])
        pod0.move_to_netns(p0.path)
        pod1 = net1.add_port(mac_of(POD1), [f"{POD1}/24"])
        pod1.move_to_netns(p1.path)
        node0.start()
        node1.start()
        yield Bed(n0, n1, h, p0, p1, node0, node1, net0, up0, pod0, pod1)


def _neigh_mac(ns: Netns, ip: str) -> str | None:
    out = ns.run(["ip", "neigh", "show", ip]).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else None


def test_a_plain_host_and_a_pod_reach_each_other_both_ways(bed: Bed) -> None:
    assert ping(bed.p0, HOST).ok
    assert ping(bed.h, POD0).ok
    assert tcp_transfer(bed.p0, bed.h, HOST, 8 << 20).ok
    assert tcp_transfer(bed.h, bed.p0, POD0, 8 << 20).ok
    # Every frame crossed the engine: counted on the uplink and on the pod.
    up, pod = bed.up0.counters(), bed.pod0.counters()
    assert up["rx_packets"] > 0 and up["tx_packets"] > 0
    assert pod["rx_packets"] > 0 and pod["tx_packets"] > 0
    assert not any(bed.node0.counters()["drops"].values())
    # The node's own stack keeps working on the same wire.
    assert ping(bed.n0, HOST).ok


def _link_mtu(ns: Netns, ifname: str) -> int:
    out = ns.run(["ip", "-o", "link", "show", ifname]).stdout.split()
    return int(out[out.index("mtu") + 1])


def _syn_mss(pcap: Path) -> set[str]:
    rows = tshark_fields(pcap, ["tcp.options.mss_val"], display_filter="tcp.flags.syn == 1")
    return {r["tcp.options.mss_val"] for r in rows}


def test_pods_have_the_segments_full_mtu(bed: Bed, tmp_path: Path) -> None:
    """No tunnel, no overhead: 1500-byte packets with DF both ways, TCP at MSS 1460."""
    assert bed.node0.pod_mtu(bed.net0) == 1500 == _link_mtu(bed.p0, "eth0")
    assert ping(bed.p0, HOST, size=1472, dont_fragment=True).ok
    assert ping(bed.h, POD0, size=1472, dont_fragment=True).ok
    assert ping(bed.p0, POD1, size=1472, dont_fragment=True).ok
    pcap = tmp_path / "h.pcap"
    with Capture(bed.h, "ul0", path=pcap):
        assert tcp_transfer(bed.p0, bed.h, HOST, 4 << 20).ok
        assert tcp_transfer(bed.h, bed.p0, POD0, 4 << 20).ok
    assert _syn_mss(pcap) == {"1460"}
    # One byte more than the MTU never passes the pod's own stack with DF.
    assert not ping(bed.p0, HOST, count=1, size=1473, dont_fragment=True, timeout=1).ok
    assert bed.node0.counters()["drops"]["frame_oversize"] == 0
    # A tunnel network of the same node keeps the tunnel's overhead.
    assert bed.node0.pod_mtu(bed.node0.add_network(302, "blue")) == 1450


def test_the_plain_hosts_arp_for_a_pod_gets_the_pods_mac(bed: Bed) -> None:
    assert ping(bed.h, POD0).ok
    assert _neigh_mac(bed.h, POD0) == bed.pod0.mac
    # The node's address still resolves to the node's own interface.
    assert ping(bed.h, "198.18.0.1").ok
    assert _neigh_mac(bed.h, "198.18.0.1") == bed.up0.mac != bed.pod0.mac


def test_pods_on_two_nodes_of_one_segment_reach_each_other_directly(bed: Bed) -> None:
    assert ping(bed.p0, POD1).ok
    assert tcp_transfer(bed.p0, bed.p1, POD1, 8 << 20).ok
    assert tcp_transfer(bed.p1, bed.p0, POD0, 8 << 20).ok
    # No tunnel: nothing was encapsulated.
    c = bed.node0.counters()
    assert c["node"]["udp_tx_packets"] == 0 and c["node"]["udp_rx_packets"] == 0


def _listen(ns: Netns, ifname: str) -> socket.socket:
    s = ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((ifname, 0x0003))
    s.settimeout(10)
    return s


def _frames_until(s: socket.socket, marker: bytes) -> list[bytes]:
    """Every frame read on s up to and including the first that carries marker."""
    seen = []
    while True:
        frame = s.recv(65536)
        seen.append(frame)
        if marker in frame:
            return seen


def test_spoofing_from_a_pod_never_reaches_the_segment_and_is_counted(bed: Bed) -> None:
    assert ping(bed.h, POD0).ok  # the host knows the pod, the node learnt the host
    host_mac = _neigh_mac(bed.p0, HOST)
    assert host_mac is not None
    node_mac_before = _neigh_mac(bed.h, "198.18.0.1")
    mine = bed.pod0.mac
    spoofs = {
        # Another MAC as the source.
        "spoofed_source_mac": Ether(src="02:de:ad:00:00:01", dst=host_mac)
        / IP(src=POD0, dst=HOST)
        / UDP(sport=4000, dport=9)
        / Raw(b"SPOOF-mac"),
        # The plain host's address as the source.
        "spoofed_source_ip": Ether(src=mine, dst=host_mac)
        / IP(src=HOST, dst=HOST)
        / UDP(sport=4000, dport=9)
        / Raw(b"SPOOF-ip"),
        # ARP claiming the node's address (it would take the node's place).
        "spoofed_arp": Ether(src=mine, dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=2, hwsrc=mine, psrc="198.18.0.1", hwdst=host_mac, pdst=HOST),
    }
    before = bed.pod0.counters()["drops"]
    marker = b"UNDERLAY-MARKER"
    legit = Ether(src=mine, dst=host_mac) / IP(src=POD0, dst=HOST) / UDP(dport=9) / Raw(marker)
    with _listen(bed.h, "ul0") as s:
        send_frames(bed.p0, *(bytes(f) for f in spoofs.values()), bytes(legit))
        # One port, one worker, one socket: order is kept, so everything the
        # pod sent before the marker that reached the host is in front of it.
        seen = _frames_until(s, marker)
    assert not any(b"SPOOF" in f for f in seen)
    assert not any(
        ARP in Ether(f) and Ether(f)[ARP].psrc == "198.18.0.1" and Ether(f)[ARP].hwsrc == mine
        for f in seen
    )
    drops = bed.node0.counters()["drops"]
    for reason in spoofs:
        assert drops[reason] >= 1, (reason, drops)
    assert bed.pod0.counters()["drops"] >= before + len(spoofs)
    assert _neigh_mac(bed.h, "198.18.0.1") == node_mac_before


def test_unicast_for_other_stations_of_the_segment_is_not_flooded_to_pods(bed: Bed) -> None:
    assert ping(bed.h, POD0).ok
    host_mac = _neigh_mac(bed.p0, HOST)
    marker = b"UNDERLAY-MARKER"
    stranger = Ether(src=host_mac, dst="02:aa:bb:cc:dd:ee") / IP(src=HOST, dst="198.18.0.99")
    legit = Ether(src=host_mac, dst=bed.pod0.mac) / IP(src=HOST, dst=POD0) / UDP(dport=9)
    before = bed.node0.counters()["node"]["uplink_foreign"]
    with _listen(bed.p0, "eth0") as s:
        send_frames(
            bed.h, bytes(stranger / Raw(b"STRANGER")), bytes(legit / Raw(marker)), ifname="ul0"
        )
        seen = _frames_until(s, marker)
    assert not any(b"STRANGER" in f for f in seen)
    assert bed.node0.counters()["node"]["uplink_foreign"] >= before + 1


def test_an_underlay_network_takes_no_vteps_and_one_uplink_per_interface(bed: Bed) -> None:
    with pytest.raises(ConflictError, match="underlay"):
        bed.net0.add_vtep("198.18.0.2")
    with pytest.raises(ConflictError, match="underlay"):
        bed.net0.add_remote("02:00:00:00:00:09", "198.18.0.2", "198.18.0.9")
    with pytest.raises(ConflictError, match="uplink already"):
        bed.net0.add_uplink("ul0")
    other = bed.node0.add_network(301, "phys")
    with pytest.raises(ConflictError, match="one segment, one network"):
        other.add_uplink("ul0")
    with pytest.raises(NotFoundError, match="nope0"):
        other.add_uplink("nope0")
    tunnel = bed.node0.add_network(302, "blue")
    tunnel.add_vtep("198.18.0.2")
    with pytest.raises(ConflictError, match="VTEPs"):
        tunnel.add_uplink("lo")


def test_a_network_without_a_tunnel_takes_no_vteps_remotes_or_options(bed: Bed) -> None:
    plain = bed.node0.add_network(303, "blue", tunnel=False)
    with pytest.raises(ConflictError, match="no tunnel"):
        plain.add_vtep("198.18.0.2")
    with pytest.raises(ConflictError, match="no tunnel"):
        plain.add_remote("02:00:00:00:00:09", "198.18.0.2", "10.244.9.9")
    # The data plane refuses it too (OVL_NET_NO_TUNNEL), naming the field.
    with pytest.raises(ConfigError, match="vtep=.*no tunnel"):
        bed.node0.engine.vtep_add(303, ipaddress.ip_address("198.18.0.2"))
    with pytest.raises(ConfigError, match="tunnel"):
        bed.node0.add_network(304, "blue", tunnel="no")  # type: ignore[arg-type]
    assert plain.vteps == set() and bed.node0.pod_mtu(plain) == 1500


def test_removing_the_uplink_cuts_the_pod_off_the_segment(bed: Bed) -> None:
    assert ping(bed.p0, HOST).ok
    bed.net0.remove_port(bed.up0)
    assert bed.net0.uplink is None
    before = bed.node0.counters()["drops"]["no_flood_targets"]
    assert not ping(bed.p0, HOST, count=1, timeout=1).ok
    # Alone in its network, the pod's frames have nowhere to go.
    assert bed.node0.counters()["drops"]["no_flood_targets"] > before
    # The interface itself is the node's and stays.
    assert ping(bed.n0, HOST).ok
    bed.net0.add_uplink("ul0")
    assert wait_for(lambda: ping(bed.p0, HOST, count=1).ok)
