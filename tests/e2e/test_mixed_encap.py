"""VXLAN and Geneve networks side by side on the same two nodes.

Each network chooses its encapsulation (``Node.add_network(encap=...)``): the
nodes' default is VXLAN, one network takes Geneve, and both carry traffic at
once, each with its own header to its own tunnel port (VXLAN 4789, Geneve
6081), as tshark sees on the wire.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from overlay.node import Encap
from overlay.testing.capture import Capture, tshark_fields
from overlay.testing.cluster import Cluster
from overlay.testing.netns import Topology
from overlay.testing.traffic import ping, tcp_transfer

pytestmark = pytest.mark.root

VX, GN = 100, 200


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_a_vxlan_and_a_geneve_network_carry_traffic_at_once(
    overlay_topology: Topology, tmp_path: Path, workers: int
) -> None:
    """With two workers each tunnel port is a SO_REUSEPORT group of its own,
    steered by the program of its encapsulation."""
    with Cluster(overlay_topology, Encap.VXLAN, node_options={"workers": workers}) as c:
        c.add_network(VX, "blue")
        c.add_network(GN, "red", encap=Encap.GENEVE)
        for node in c.nodes:
            assert node.network(VX).encap is Encap.VXLAN
            assert node.network(GN).encap is Encap.GENEVE
            assert (node.tunnel_port(), node.tunnel_port(Encap.GENEVE)) == (4789, 6081)
        # the same addresses in both: the networks stay apart
        pods = {
            vni: (c.add_pod(0, vni, "10.244.1.2/24"), c.add_pod(1, vni, "10.244.1.3/24"))
            for vni in (VX, GN)
        }
        # a Geneve pod gets the MTU Geneve leaves (the same as VXLAN's without options)
        assert c.nodes[0].pod_mtu(c.nodes[0].network(GN)) == 1500 - 50
        c.start()
        bpf = "udp port 4789 or udp port 6081"
        with Capture(c.node_ns[1], "ul0", bpf=bpf, path=tmp_path / "mixed.pcap") as cap:
            for a, b in pods.values():
                assert ping(a.netns, b.ip, count=3, interval=0.1).ok
                assert ping(b.netns, a.ip, count=3, interval=0.1).ok
                t = tcp_transfer(a.netns, b.netns, b.ip, 1_000_000, timeout=30)
                assert t.ok, t
                t = tcp_transfer(b.netns, a.netns, a.ip, 1_000_000, timeout=30)
                assert t.ok, t
        rows = tshark_fields(cap.path, ["udp.srcport", "udp.dstport", "vxlan.vni", "geneve.vni"])
    vxlan = [r for r in rows if r["vxlan.vni"]]
    geneve = [r for r in rows if r["geneve.vni"]]
    assert len(vxlan) >= 12 and len(geneve) >= 12
    assert len(vxlan) + len(geneve) == len(rows)  # nothing else on the two ports
    # VXLAN to port 4789 with VNI 100 only, Geneve to 6081 with VNI 200 only,
    # both ways (each node's tunnel port is the destination)
    assert {int(r["vxlan.vni"]) for r in vxlan} == {VX}
    assert {int(r["geneve.vni"], 0) for r in geneve} == {GN}
    assert {int(r["udp.dstport"]) for r in vxlan} == {4789}
    assert {int(r["udp.dstport"]) for r in geneve} == {6081}
    assert all(49152 <= int(r["udp.srcport"]) <= 65535 for r in rows)
