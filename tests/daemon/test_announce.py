"""A newly attached pod announces itself: a gratuitous ARP per IPv4 address and an
unsolicited neighbour advertisement per IPv6 address (``overlay.daemon.pods``).

The frames are checked against scapy's dissection and the reference codec;
then two real overlayd nodes attach pods through the real ``overlay-cni``, and a
pod on the other node receives the announcement of a pod that was just added,
through the data plane and the underlay.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from overlay import wire
from overlay.daemon.pods import announcements
from overlay.testing.daemon import DaemonCluster, cni

MAC = "02:00:00:00:aa:07"
ETH_P_ARP = 0x0806


def test_the_frames_are_an_rfc_5227_announcement_and_an_unsolicited_advertisement() -> None:
    arp_frame, na_frame = announcements(MAC, ["10.244.3.7/16", "fe80::1/64", "fd00::7/64"])
    assert (len(arp_frame), len(na_frame)) == (60, 86)  # ARP padded to the Ethernet minimum
    arp = Ether(arp_frame)
    assert arp.dst == "ff:ff:ff:ff:ff:ff" and arp.src == MAC
    assert arp[ARP].op == 1 and arp[ARP].hwsrc == MAC
    assert arp[ARP].psrc == arp[ARP].pdst == "10.244.3.7" and arp[ARP].hwdst == "00:00:00:00:00:00"
    na = Ether(na_frame)
    assert na.dst == "33:33:00:00:00:01" and na.src == MAC
    assert na[IPv6].src == "fd00::7" and na[IPv6].dst == "ff02::1" and na[IPv6].hlim == 255
    adv = na[ICMPv6ND_NA]
    assert (adv.R, adv.S, adv.O, adv.tgt) == (0, 0, 1, "fd00::7")
    assert na[ICMPv6NDOptDstLLAddr].lladdr == MAC
    rebuilt = Ether(na_frame)
    del rebuilt[ICMPv6ND_NA].cksum
    assert Ether(bytes(rebuilt))[ICMPv6ND_NA].cksum == adv.cksum  # the checksum is right
    # The data plane's reference parser reads them as the pod's own ARP and ND.
    assert wire.parse_frame(arp_frame).arp_spa == bytes([10, 244, 3, 7])
    assert wire.parse_frame(na_frame).icmp_type == 136


def _arp_listener(ns: Any) -> socket.socket:
    sock: socket.socket = ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sock.bind(("eth0", ETH_P_ARP))
    sock.settimeout(0.2)
    return sock


def _received(sock: socket.socket, match: Callable[[Any], bool], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            frame = Ether(sock.recv(2048))
        except TimeoutError:
            continue
        if ARP in frame and match(frame[ARP]):
            return frame
    return None


@pytest.mark.root
def test_a_pod_added_on_one_node_is_announced_to_a_pod_on_another(
    overlay_daemons: Callable[..., DaemonCluster],
) -> None:
    cluster = overlay_daemons(n_nodes=2)
    cluster.start()
    conf = {"cniVersion": "1.0.0", "name": "blue", "type": "overlay-cni", "vni": 100}
    listener = cluster.topo.add_netns("listener")
    cni(
        "ADD", {**conf, "socket": cluster.daemons[0].socket}, cid="l", netns=listener.path
    ).success()
    sock = _arp_listener(listener)
    try:
        new = cluster.topo.add_netns("new")
        out = cni("ADD", {**conf, "socket": cluster.daemons[1].socket}, cid="n", netns=new.path)
        result = out.success()
        ip = result["ips"][0]["address"].split("/")[0]
        mac = result["interfaces"][0]["mac"]
        frame = _received(sock, lambda a: a.psrc == a.pdst == ip)
        assert frame is not None, f"no announcement of {ip} reached the other node's pod"
        assert frame[ARP].hwsrc == mac and frame[ARP].op == 1
    finally:
        sock.close()
