"""A gateway may answer ARP for the addresses it forwards to (proxy ARP), and
for nothing else: the engine's rule for a gateway port's ARP, exercised with
frames written on the gateway TAP in the node, as the node's kernel would.

The bed: node n0 (underlay 198.18.0.1 on its loopback), network 100 (tenant
blue, 10.244.0.0/16) with its gateway ``ovg100`` (10.244.0.1), a pod p0
(10.244.0.2) and a remote pod 10.244.1.5 behind a VTEP 198.18.0.2. An
address no endpoint holds (10.244.2.5, a direct peer's pod in an auto
network) may be claimed by the gateway; the pods' addresses, local or
remote, may not.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from overlay import Encap, Node
from overlay.control.ipam import mac_of
from overlay.node import Port
from overlay.testing.netns import Netns, Topology
from overlay.testing.traffic import send_frames

pytestmark = pytest.mark.root

POD, REMOTE, ELSEWHERE = "10.244.0.2", "10.244.1.5", "10.244.2.5"


@dataclass
class Bed:
    n0: Netns
    p0: Netns
    node: Node
    gw: Port
    pod: Port


@pytest.fixture
def bed(overlay_topology: Topology) -> Iterator[Bed]:
    t = overlay_topology
    n0, p0 = t.add_netns("n0"), t.add_netns("p0")
    n0.addr_add("lo", "198.18.0.1/32")
    with Node("198.18.0.1", Encap.VXLAN, netns=n0.path) as node:
        net = node.add_network(100, "blue")
        gw = net.add_gateway(mac_of("10.244.0.1"), ["10.244.0.1/16"])
        pod = net.add_port(mac_of(POD), [f"{POD}/16"])
        pod.move_to_netns(p0.path)
        net.add_vtep("198.18.0.2")
        net.add_remote(mac_of(REMOTE), "198.18.0.2", REMOTE)
        node.start()
        yield Bed(n0, p0, node, gw, pod)


def _reply(gw: Port, pod: Port, claim: str, op: int = 2) -> bytes:
    dst = pod.mac if op == 2 else "ff:ff:ff:ff:ff:ff"
    arp = ARP(op=op, hwsrc=gw.mac, psrc=claim, hwdst=pod.mac if op == 2 else "00:00:00:00:00:00",
              pdst=POD)  # fmt: skip
    return bytes(Ether(src=gw.mac, dst=dst) / arp)


def test_a_gateway_answers_arp_only_for_addresses_no_endpoint_holds(bed: Bed) -> None:
    frames = {
        "proxy": _reply(bed.gw, bed.pod, ELSEWHERE),
        "remote pod's address": _reply(bed.gw, bed.pod, REMOTE),
        "local pod's address": _reply(bed.gw, bed.pod, POD),
        "a request from another's address": _reply(bed.gw, bed.pod, ELSEWHERE, op=1),
        "a broadcast address": _reply(bed.gw, bed.pod, "255.255.255.255"),
    }
    marker = b"PROXY-ARP-MARKER"
    legit = Ether(src=bed.gw.mac, dst=bed.pod.mac) / IP(src="10.244.0.1", dst=POD)
    before = bed.node.counters()["drops"]["spoofed_arp"]
    s = bed.p0.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    try:
        s.bind(("eth0", 0x0003))
        s.settimeout(10)
        send_frames(
            bed.n0, *frames.values(), bytes(legit / UDP(dport=9) / Raw(marker)), ifname="ovg100"
        )
        seen = []
        while not seen or marker not in seen[-1]:
            seen.append(s.recv(65536))
    finally:
        s.close()
    claims = [
        (Ether(f)[ARP].op, Ether(f)[ARP].psrc)
        for f in seen
        if ARP in Ether(f)
        and Ether(f)[ARP].hwsrc == bed.gw.mac
        and Ether(f)[ARP].psrc != "10.244.0.1"  # the node's own ARP, if any
    ]
    # One port, one worker: everything sent before the marker that passed is here.
    assert claims == [(2, ELSEWHERE)], claims
    assert bed.node.counters()["drops"]["spoofed_arp"] == before + len(frames) - 1
