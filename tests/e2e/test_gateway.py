"""Gateways through the embedding API: a node's way in and out (``Network.add_gateway``
and ``overlay.gateway.NodeRules``), with the real kernel on both sides.

The bed: nodes n0 and n1 (underlay 198.18.0.1/.2), network 100 (tenant blue,
10.244.0.0/16) with a pod on each node and a gateway on each node (10.244.1.1,
10.244.2.1); network 200 (tenant red, 10.245.0.0/16) with a pod and a gateway on
n0; an "outside" namespace (198.19.0.2) behind n0, which has no route to any
pod range, so only masquerading lets it answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from overlay import Encap, Node
from overlay.control.ipam import mac_of
from overlay.errors import ConfigError, ConflictError
from overlay.gateway import GatewayRule, NodeRules, check, render
from overlay.nft import Nft
from overlay.node import Network, Port
from overlay.testing.netns import Netns, Topology
from overlay.testing.traffic import ping, send_frames, tcp_peer, tcp_transfer, wait_for

pytestmark = pytest.mark.root

BLUE, RED = "10.244.0.0/16", "10.245.0.0/16"
OUTSIDE = "198.19.0.2"


@dataclass
class Bed:
    topo: Topology
    n0: Netns
    n1: Netns
    out: Netns
    node0: Node
    node1: Node
    p0: Netns  # blue pod on n0, 10.244.1.2
    p1: Netns  # blue pod on n1, 10.244.2.2
    r0: Netns  # red pod on n0, 10.245.1.2
    gw0: Port
    gw1: Port
    red_gw: Port
    rules0: NodeRules


def _pod(net: Network, ns: Netns, ip: str, gateway: str) -> Port:
    port = net.add_port(mac_of(ip), [ip])
    port.move_to_netns(ns.path, gateway=gateway)
    return port


@pytest.fixture
def bed(overlay_topology: Topology) -> Iterator[Bed]:
    t = overlay_topology
    n0, n1, out = t.add_netns("n0"), t.add_netns("n1"), t.add_netns("out")
    p0, p1, r0 = t.add_netns("p0"), t.add_netns("p1"), t.add_netns("r0")
    t.underlay([n0, n1])
    t.veth(n0, out, "198.19.0.1/24", f"{OUTSIDE}/24", name_a="wan0", name_b="wan0")
    with (
        Node("198.18.0.1", Encap.VXLAN, netns=n0.path) as node0,
        Node("198.18.0.2", Encap.VXLAN, netns=n1.path) as node1,
    ):
        b0, b1 = node0.add_network(100, "blue"), node1.add_network(100, "blue")
        red = node0.add_network(200, "red")
        gw0 = b0.add_gateway(mac_of("10.244.1.1"), ["10.244.1.1/16"])
        gw1 = b1.add_gateway(mac_of("10.244.2.1"), ["10.244.2.1/16"])
        red_gw = red.add_gateway(mac_of("10.245.1.1"), ["10.245.1.1/16"])
        _pod(b0, p0, "10.244.1.2/16", "10.244.1.1")
        _pod(b1, p1, "10.244.2.2/16", "10.244.2.1")
        _pod(red, r0, "10.245.1.2/16", "10.245.1.1")
        # What the control plane would program: each node knows the other's
        # pod and gateway (announced like any endpoint).
        b0.add_vtep("198.18.0.2")
        b1.add_vtep("198.18.0.1")
        for ip in ("10.244.2.2", "10.244.2.1"):
            b0.add_remote(mac_of(ip), "198.18.0.2", ip)
        for ip in ("10.244.1.2", "10.244.1.1"):
            b1.add_remote(mac_of(ip), "198.18.0.1", ip)
        rules0, rules1 = NodeRules(n0.path), NodeRules(n1.path)
        rules0.apply([GatewayRule(gw0.ifname, (BLUE,)), GatewayRule(red_gw.ifname, (RED,))])
        rules1.apply([GatewayRule(gw1.ifname, (BLUE,))])
        node0.start()
        node1.start()
        yield Bed(t, n0, n1, out, node0, node1, p0, p1, r0, gw0, gw1, red_gw, rules0)


def test_the_node_reaches_its_own_and_remote_pods_without_nat(bed: Bed) -> None:
    assert ping(bed.n0, "10.244.1.2").ok
    assert ping(bed.n0, "10.244.2.2").ok  # over the overlay, and back the same way
    assert tcp_transfer(bed.n0, bed.p0, "10.244.1.2", 1 << 20).ok
    assert tcp_transfer(bed.n0, bed.p1, "10.244.2.2", 1 << 20).ok
    # The pod sees the node's gateway address: no translation.
    assert tcp_peer(bed.n0, bed.p1, ("10.244.2.2", 8080)) == "10.244.1.1"
    assert tcp_peer(bed.p1, bed.n0, ("10.244.1.1", 8081)) == "10.244.2.2"
    # And the gateway is a port like any other: counted.
    assert bed.gw0.counters()["rx_packets"] > 0 and bed.gw0.counters()["tx_packets"] > 0


def test_egress_to_the_outside_is_masqueraded_and_answered(bed: Bed) -> None:
    assert tcp_peer(bed.p0, bed.out, (OUTSIDE, 8080)) == "198.19.0.1"
    assert tcp_transfer(bed.p0, bed.out, OUTSIDE, 4 << 20).ok
    assert ping(bed.p0, OUTSIDE).ok
    # Each network's traffic by its own rule.
    assert tcp_peer(bed.r0, bed.out, (OUTSIDE, 8081)) == "198.19.0.1"
    counts = bed.rules0.counters()
    assert counts[f"egress {bed.gw0.ifname} {BLUE}"] > 0
    assert counts[f"egress {bed.red_gw.ifname} {RED}"] > 0


def test_without_masquerade_the_outside_sees_the_pod(bed: Bed) -> None:
    bed.rules0.apply([GatewayRule(bed.gw0.ifname, (BLUE,), masquerade=False)])
    bed.out.route_add("10.244.0.0/16", gateway="198.19.0.1")
    assert tcp_peer(bed.p0, bed.out, (OUTSIDE, 8080)) == "10.244.1.2"


def test_a_cluster_ip_is_dnated_to_a_pod_on_another_node_and_answered(bed: Bed) -> None:
    # What kube-proxy in nftables mode writes: a table of its own in the node.
    Nft(bed.n0.path).replace_table(
        "ip",
        "kube-proxy-test",
        [
            {"add": {"chain": {"family": "ip", "table": "kube-proxy-test", "name": "pre",
                               "type": "nat", "hook": "prerouting", "prio": -100,
                               "policy": "accept"}}},
            {"add": {"rule": {"family": "ip", "table": "kube-proxy-test", "chain": "pre",
                              "expr": [
                                  {"match": {"op": "==", "left": {"payload": {
                                      "protocol": "ip", "field": "daddr"}},
                                      "right": "10.96.0.10"}},
                                  {"match": {"op": "==", "left": {"payload": {
                                      "protocol": "tcp", "field": "dport"}}, "right": 80}},
                                  {"dnat": {"addr": "10.244.2.2", "port": 8080}},
                              ]}}},
        ],
    )  # fmt: skip
    # The backend sees the gateway it came through; the client sees the ClusterIP answer.
    seen = tcp_peer(bed.p0, bed.p1, ("10.244.2.2", 8080), connect=("10.96.0.10", 80))
    assert seen == "10.244.1.1"
    counts = bed.rules0.counters()
    assert counts[f"service hairpin {bed.gw0.ifname}"] > 0


def test_the_node_never_forwards_between_two_networks(bed: Bed) -> None:
    # blue's pod tries red's pod and red's gateway-side address through its gateway.
    assert tcp_peer(bed.p0, bed.r0, ("10.245.1.2", 8080), timeout=1.0) is None
    assert not ping(bed.p0, "10.245.1.2", count=2, timeout=1).ok
    assert tcp_peer(bed.r0, bed.p0, ("10.244.1.2", 8080), timeout=1.0) is None
    assert not ping(bed.r0, "10.244.2.2", count=2, timeout=1).ok
    counts = bed.rules0.counters()
    assert counts[f"isolate {bed.gw0.ifname}"] > 0 and counts[f"isolate {bed.red_gw.ifname}"] > 0
    # Each still reaches the outside.
    assert ping(bed.p0, OUTSIDE).ok and ping(bed.r0, OUTSIDE).ok


def test_the_gateway_may_not_speak_for_a_pod_of_its_network(bed: Bed) -> None:
    """It forwards for the outside, not for the network's own endpoints."""
    before = bed.node0.counters()["drops"].get("spoofed_source_ip", 0)
    frame = bytes(
        Ether(src=bed.gw0.mac, dst=mac_of("10.244.1.2"))
        / IP(src="10.244.2.2", dst="10.244.1.2")
        / ICMP()
    )
    send_frames(bed.n0, frame, ifname=bed.gw0.ifname)
    assert wait_for(lambda: bed.node0.counters()["drops"].get("spoofed_source_ip", 0) == before + 1)
    # From an outside address it passes (and reaches the pod).
    outside = bytes(
        Ether(src=bed.gw0.mac, dst=mac_of("10.244.1.2"))
        / IP(src=OUTSIDE, dst="10.244.1.2")
        / ICMP()
    )
    send_frames(bed.n0, outside, ifname=bed.gw0.ifname)
    assert not wait_for(
        lambda: bed.node0.counters()["drops"].get("spoofed_source_ip", 0) > before + 1, 0.5
    )


def test_removing_the_rules_removes_the_table(bed: Bed) -> None:
    nft = Nft(bed.n0.path)
    assert nft.table("inet", "overlay") is not None
    bed.rules0.apply([GatewayRule(bed.gw0.ifname, (BLUE,))])
    assert all("ovg200" not in str(o) for o in nft.table("inet", "overlay") or [])
    bed.rules0.apply([])
    assert nft.table("inet", "overlay") is None
    assert tcp_peer(bed.p0, bed.out, (OUTSIDE, 8080), timeout=1.0) is None  # no way back


def test_a_second_gateway_and_bad_arguments_are_refused(bed: Bed) -> None:
    net = bed.node0.network(100)
    with pytest.raises(ConflictError, match="gateway already"):
        net.add_gateway(mac_of("10.244.1.9"), ["10.244.1.9/16"])
    red = bed.node0.network(200)
    red.remove_port(bed.red_gw)
    with pytest.raises(ConfigError, match="ips"):
        red.add_gateway(mac_of("10.245.1.1"), [])
    assert red.gateway is None


def test_rules_for_overlapping_ranges_are_refused_by_name() -> None:
    with pytest.raises(ConfigError) as info:
        check([GatewayRule("ovg100", (BLUE,)), GatewayRule("ovg300", ("10.244.128.0/17",))])
    assert info.value.field == "gateway" and "gateway = false" in str(info.value)
    with pytest.raises(ConfigError, match="cidrs"):
        GatewayRule("ovg1", ("10.244.0.0/33",))
    with pytest.raises(ConfigError, match="ifname"):
        GatewayRule("ovg 1", (BLUE,))
    # One isolation rule per gateway; one masquerade rule per range masqueraded.
    body = render([GatewayRule("ovg1", (BLUE, "2001:2::/64")), GatewayRule("ovg2", (RED,), False)])
    comments = [o["add"]["rule"]["comment"] for o in body if "rule" in o["add"]]
    assert comments == [
        "isolate ovg1",
        "isolate ovg2",
        "service hairpin ovg1",
        f"egress ovg1 {BLUE}",
        "egress ovg1 2001:2::/64",
        "service hairpin ovg2",
    ]


def test_isolated_gateways_get_their_own_transit_and_router_namespace() -> None:
    from overlay.daemon import config as cfgmod
    from overlay.gateway import TRANSIT_SLOTS, router_netns, transit

    node, router = transit(300)
    assert node.network == router.network and node.network.prefixlen == 30
    assert node.ip in ipaddress.ip_network("169.254.0.0/17") and node.ip != router.ip
    assert transit(300) != transit(301)
    assert router_netns("/var/run/netns/ovt1-n0", 300) == "/var/run/netns/ovt1-n0-r300"
    assert router_netns(None, 7).endswith("/overlay-r7")
    text = (
        '[node]\nname = "a"\nunderlay = "198.18.0.1"\n'
        '[[networks]]\nvni = 100\ntenant = "a"\ngateway = "isolated"\n'
        f'[[networks]]\nvni = {100 + TRANSIT_SLOTS}\ntenant = "b"\ncidr = "10.245.0.0/16"\n'
        'gateway = "isolated"\n'
    )
    with pytest.raises(ConfigError) as info:
        cfgmod.parse(text)
    assert info.value.field == "networks[1].vni" and "modulo" in str(info.value)
