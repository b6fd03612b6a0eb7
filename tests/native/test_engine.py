"""The C engine in process: two engines on 127.0.0.1 with fake ports.

These check forwarding, isolation, port security, suppression, learning,
counters and events against the real data plane, without root. The same
behaviours are proven again with real TAPs and namespaces in test_e2e_netns.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (
    ICMPv6MLDMultAddrRec,
    ICMPv6MLReport,
    ICMPv6MLReport2,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    RouterAlert,
)
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from overlay.bindings import (
    COUNTER_HELP,
    COUNTER_NAMES,
    DROP_REASONS,
    ENCAP_GENEVE,
    ENCAP_VXLAN,
    Engine,
    mac_bytes,
)
from overlay.errors import ConfigError, ConflictError, NotFoundError
from overlay.testing.fakes import LOOPBACK, FakePort, free_udp_port, loopback_engine
from overlay.testing.traffic import wait_for

MAC_A = "02:00:00:00:01:02"
MAC_B = "02:00:00:00:02:02"
MAC_C = "02:00:00:00:02:03"
IP_A, IP_B = "10.244.1.2", "10.244.1.3"


def ip(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(s)


@dataclass
class Pair:
    a: Engine
    b: Engine

    def link(self, vni: int) -> None:
        """Make each engine a member VTEP of vni on the other."""
        for me, other in ((self.a, self.b), (self.b, self.a)):
            me.vtep_add(vni, LOOPBACK, other.udp_port)


@pytest.fixture(params=[ENCAP_VXLAN, ENCAP_GENEVE], ids=["vxlan", "geneve"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    with loopback_engine(request.param) as a, loopback_engine(request.param) as b:
        a.start()
        b.start()
        yield Pair(a, b)


def two_pods(
    p: Pair,
    vni: int = 100,
    mac_a: str = MAC_A,
    mac_b: str = MAC_B,
    ip_a: str = IP_A,
    ip_b: str = IP_B,
) -> tuple[FakePort, FakePort]:
    for eng in (p.a, p.b):
        eng.network_add(vni)
    p.link(vni)
    pa = FakePort(p.a, vni, mac_a, (ip_a,))
    pb = FakePort(p.b, vni, mac_b, (ip_b,))
    p.a.fdb_add(vni, mac_bytes(mac_b), LOOPBACK, p.b.udp_port)
    p.b.fdb_add(vni, mac_bytes(mac_a), LOOPBACK, p.a.udp_port)
    p.a.neigh_add(vni, ip(ip_b), mac_bytes(mac_b))
    p.b.neigh_add(vni, ip(ip_a), mac_bytes(mac_a))
    return pa, pb


def udp_frame(src_mac: str, dst_mac: str, src: str, dst: str, payload: bytes = b"x" * 32) -> bytes:
    return bytes(
        Ether(src=src_mac, dst=dst_mac)
        / IP(src=src, dst=dst)
        / UDP(sport=4000, dport=5000)
        / Raw(payload)
    )


def send_underlay(eng: Engine, datagram: bytes, src: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        s.sendto(datagram, ("127.0.0.1", eng.udp_port))


def tunnel(encap: int, vni: int, inner: bytes) -> bytes:
    if encap == ENCAP_VXLAN:
        return bytes(VXLAN(vni=vni, flags=0x08) / Raw(inner))
    return bytes(GENEVE(vni=vni, proto=0x6558) / Raw(inner))


def counters(eng: Engine) -> dict[str, int]:
    return eng.counters()


# ---- forwarding ----


def test_unicast_crosses_the_underlay_byte_for_byte_both_ways(pair: Pair) -> None:
    pa, pb = two_pods(pair)
    f = udp_frame(MAC_A, MAC_B, IP_A, IP_B, b"hello overlay")
    pa.send(f)
    assert pb.recv() == f
    back = udp_frame(MAC_B, MAC_A, IP_B, IP_A, b"and back")
    pb.send(back)
    assert pa.recv() == back
    ca, cb = counters(pair.a), counters(pair.b)
    assert ca["udp_tx_packets"] >= 1 and cb["udp_rx_packets"] >= 1
    net = pair.a.network_counters(100)
    assert net["encap_packets"] == 1 and net["decap_packets"] == 1
    port = pair.b.port_counters(pb.id)
    assert port["tx_packets"] == 1 and port["tx_bytes"] == len(f)


def test_frames_between_two_local_ports_are_switched_locally(pair: Pair) -> None:
    pair.a.network_add(100)
    p1 = FakePort(pair.a, 100, MAC_A, (IP_A,))
    p2 = FakePort(pair.a, 100, MAC_B, (IP_B,))
    f = udp_frame(MAC_A, MAC_B, IP_A, IP_B)
    p1.send(f)
    assert p2.recv() == f
    c = counters(pair.a)
    assert c["local_switched"] == 1 and c["udp_tx_packets"] == 0


def test_arp_for_a_known_address_is_answered_locally(pair: Pair) -> None:
    pa, pb = two_pods(pair)
    req = Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_A, psrc=IP_A, pdst=IP_B)
    pa.send(bytes(req))
    rep = Ether(pa.recv())
    assert rep[ARP].op == 2 and rep[ARP].hwsrc == MAC_B and rep[ARP].psrc == IP_B
    assert rep[ARP].pdst == IP_A and rep.dst == MAC_A
    assert counters(pair.a)["arp_suppressed"] == 1
    assert pb.drain(0.2) == []  # nothing crossed the underlay


def test_neighbour_solicitation_for_a_known_address_is_answered_locally(pair: Pair) -> None:
    a6, b6 = "fd00::2", "fd00::3"
    pa, _ = two_pods(pair, ip_a=a6, ip_b=b6)
    solicited = "ff02::1:ff00:3"
    ns = (
        Ether(src=MAC_A, dst="33:33:ff:00:00:03")
        / IPv6(src=a6, dst=solicited, hlim=255)
        / ICMPv6ND_NS(tgt=b6)
        / ICMPv6NDOptSrcLLAddr(lladdr=MAC_A)
    )
    pa.send(bytes(ns))
    na = Ether(pa.recv())
    assert na[ICMPv6ND_NA].tgt == b6 and na[IPv6].dst == a6 and na.src == MAC_B
    chk = na[ICMPv6ND_NA].cksum
    del na[ICMPv6ND_NA].cksum
    assert Ether(bytes(na))[ICMPv6ND_NA].cksum == chk
    assert counters(pair.a)["nd_suppressed"] == 1


def test_broadcast_is_replicated_to_every_member_and_local_port(pair: Pair) -> None:
    pa, pb = two_pods(pair)
    pa2 = FakePort(pair.a, 100, "02:00:00:00:01:03", ("10.244.1.4",))
    req = bytes(
        Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, hwsrc=MAC_A, psrc=IP_A, pdst="10.244.1.99")
    )
    pa.send(req)
    assert pb.recv() == req
    assert pa2.recv() == req
    c = counters(pair.a)
    assert c["flooded"] == 1 and c["flood_copies"] == 2


def test_unknown_unicast_is_flooded_and_reported_as_a_miss(pair: Pair) -> None:
    pa, pb = two_pods(pair)
    f = udp_frame(MAC_A, "02:00:00:00:09:09", IP_A, IP_B)
    pa.send(f)
    pa.send(f)
    # The remote node has no port with that MAC: it drops, counted.
    assert wait_for(lambda: counters(pair.b)["unknown_destination"] == 2)
    assert counters(pair.a)["fdb_misses"] == 2
    misses = [e for e in pair.a.events() if e.kind == "miss"]
    assert len(misses) == 1  # rate-limited: one report per MAC per second
    assert misses[0].mac == "02:00:00:00:09:09" and misses[0].vni == 100
    assert misses[0].port_id == pa.id


def test_first_frame_from_a_port_reports_its_mac(pair: Pair) -> None:
    pa, pb = two_pods(pair)
    pa.send(udp_frame(MAC_A, MAC_B, IP_A, IP_B))
    pb.recv()
    seen = [e for e in pair.a.events() if e.kind == "mac_seen"]
    assert [(e.mac, e.port_id) for e in seen] == [(MAC_A, pa.id)]


def test_event_fd_becomes_readable_when_events_are_queued(pair: Pair) -> None:
    import select

    pa, _ = two_pods(pair)
    assert select.select([pair.a.event_fd], [], [], 0)[0] == []
    pa.send(udp_frame(MAC_A, "02:00:00:00:09:09", IP_A, IP_B))
    assert select.select([pair.a.event_fd], [], [], 2)[0] == [pair.a.event_fd]
    assert pair.a.events()


# ---- isolation ----


def test_tenants_with_overlapping_addresses_never_see_each_other(pair: Pair) -> None:
    blue_a, blue_b = two_pods(pair, vni=100)
    red_a, red_b = two_pods(pair, vni=200, mac_a="02:00:00:00:11:02", mac_b="02:00:00:00:12:02")
    f_blue = udp_frame(MAC_A, MAC_B, IP_A, IP_B, b"blue")
    f_red = udp_frame("02:00:00:00:11:02", "02:00:00:00:12:02", IP_A, IP_B, b"red")
    blue_a.send(f_blue)
    red_a.send(f_red)
    assert blue_b.recv() == f_blue and red_b.recv() == f_red
    # Blue addressing red's MAC: unknown in blue, flooded in blue only, dropped there.
    blue_a.send(udp_frame(MAC_A, "02:00:00:00:12:02", IP_A, IP_B, b"leak?"))
    bcast = bytes(
        Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, hwsrc=MAC_A, psrc=IP_A, pdst="10.244.1.77")
    )
    blue_a.send(bcast)
    assert blue_b.recv() == bcast
    assert red_b.drain(0.3) == [] and red_a.drain(0.1) == []


def test_packet_for_an_unknown_vni_is_dropped(pair: Pair) -> None:
    _, pb = two_pods(pair)
    send_underlay(pair.b, tunnel(pair.b.encap, 999, udp_frame(MAC_A, MAC_B, IP_A, IP_B)))
    assert wait_for(lambda: counters(pair.b)["unknown_vni"] == 1)
    assert pb.drain(0.1) == []


def test_packet_from_a_non_member_vtep_is_dropped(pair: Pair) -> None:
    _, pb = two_pods(pair)
    inner = udp_frame(MAC_A, MAC_B, IP_A, IP_B)
    send_underlay(pair.b, tunnel(pair.b.encap, 100, inner), src="127.0.0.2")
    assert wait_for(lambda: counters(pair.b)["vtep_not_member"] == 1)
    assert pb.drain(0.1) == []
    send_underlay(pair.b, tunnel(pair.b.encap, 100, inner), src="127.0.0.1")
    assert pb.recv() == inner


def test_vtep_removed_from_a_network_is_no_longer_accepted(pair: Pair) -> None:
    _, pb = two_pods(pair)
    pair.b.vtep_del(100, LOOPBACK)
    send_underlay(pair.b, tunnel(pair.b.encap, 100, udp_frame(MAC_A, MAC_B, IP_A, IP_B)))
    assert wait_for(lambda: counters(pair.b)["vtep_not_member"] == 1)


@pytest.mark.parametrize(
    "datagram,reason",
    [
        (b"\x08\x00\x00", "vxlan_truncated"),
        (b"\x00\x00\x00\x00\x00\x00\x64\x00" + bytes(60), "vxlan_bad_flags"),
        (b"\x08\x00\x00\x00\x00\x00\x64\x00" + bytes(5), "frame_too_short"),
    ],
)
def test_malformed_vxlan_is_counted_by_reason(datagram: bytes, reason: str) -> None:
    with loopback_engine(ENCAP_VXLAN) as b:
        b.network_add(100)
        b.vtep_add(100, LOOPBACK)
        b.start()
        send_underlay(b, datagram)
        assert wait_for(lambda: counters(b)[reason] == 1), counters(b)


# ---- Geneve options ----


def geneve_opt(cls: int, type_: int, data: bytes) -> bytes:
    return struct.pack("!HBB", cls, type_, len(data) // 4) + data


def test_geneve_options_of_a_network_are_sent_with_every_packet() -> None:
    with loopback_engine(ENCAP_GENEVE) as a:
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(2)
        a.network_add(100)
        opts = geneve_opt(0x0102, 0x80, b"\x00\x01\x00\x02")
        a.network_set_options(100, opts)
        pa = FakePort(a, 100, MAC_A, (IP_A,))
        a.fdb_add(100, mac_bytes(MAC_B), LOOPBACK, sink.getsockname()[1])
        a.start()
        f = udp_frame(MAC_A, MAC_B, IP_A, IP_B)
        pa.send(f)
        data, (_, sport) = sink.recvfrom(4096)
        g = GENEVE(data)
        assert g.vni == 100 and g.proto == 0x6558 and g.critical == 1 and g.optionlen == 2
        assert data[8:16] == opts and data[16:] == f
        assert 49152 <= sport <= 65535
        sink.close()


def test_geneve_unknown_critical_option_is_dropped_and_known_one_accepted() -> None:
    with loopback_engine(ENCAP_GENEVE) as b:
        b.network_add(100)
        b.vtep_add(100, LOOPBACK)
        pb = FakePort(b, 100, MAC_B, (IP_B,))
        b.start()
        inner = udp_frame(MAC_A, MAC_B, IP_A, IP_B)
        crit = geneve_opt(0x0102, 0x81, b"\xaa\xbb\xcc\xdd")
        pkt = bytes(GENEVE(vni=100, proto=0x6558, critical=1, optionlen=2) / Raw(crit + inner))
        send_underlay(b, pkt)
        assert wait_for(lambda: counters(b)["geneve_unknown_critical_option"] == 1)
        assert pb.drain(0.1) == []
        non_crit = geneve_opt(0x0102, 0x01, b"\xaa\xbb\xcc\xdd")
        send_underlay(b, bytes(GENEVE(vni=100, proto=0x6558, optionlen=2) / Raw(non_crit + inner)))
        assert pb.recv() == inner
        b.known_option_add(0x0102, 0x81)
        send_underlay(b, pkt)
        assert pb.recv() == inner


def test_geneve_options_on_a_vxlan_engine_are_refused() -> None:
    with loopback_engine(ENCAP_VXLAN) as a:
        a.network_add(100)
        with pytest.raises(OSError):
            a.network_set_options(100, geneve_opt(1, 1, b"abcd"))


# ---- port security ----


@pytest.mark.parametrize(
    "frame,reason",
    [
        (udp_frame("02:00:00:00:01:99", MAC_B, IP_A, IP_B), "spoofed_source_mac"),
        (udp_frame(MAC_A, MAC_B, "10.244.1.99", IP_B), "spoofed_source_ip"),
        (
            bytes(
                Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff")
                / ARP(op=1, hwsrc=MAC_A, psrc="10.244.1.99", pdst=IP_B)
            ),
            "spoofed_arp",
        ),
        (
            bytes(
                Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff")
                / ARP(op=2, hwsrc="02:00:00:00:01:99", psrc=IP_A, pdst=IP_B)
            ),
            "spoofed_arp",
        ),
        (
            bytes(
                Ether(src=MAC_A, dst=MAC_B)
                / IPv6(src="fd00::99", dst="fd00::3")
                / UDP(sport=1, dport=2)
            ),
            "spoofed_source_ip",
        ),
        (
            bytes(
                Ether(src=MAC_A, dst="33:33:00:00:00:01")
                / IPv6(src="fd00::2", dst="ff02::1")
                / ICMPv6ND_NA(tgt="fd00::3", R=0, S=0, O=1)
            ),
            "spoofed_nd",
        ),
        (bytes.fromhex("0200000002020200000001"), "frame_too_short"),
    ],
)
def test_port_security_drops_spoofed_frames_by_reason(
    pair: Pair, frame: bytes, reason: str
) -> None:
    pair.a.network_add(100)
    pair.b.network_add(100)
    pair.link(100)
    pa = FakePort(pair.a, 100, MAC_A, (IP_A, "fd00::2"))
    pb = FakePort(pair.b, 100, MAC_B, (IP_B, "fd00::3"))
    pair.a.fdb_add(100, mac_bytes(MAC_B), LOOPBACK, pair.b.udp_port)
    pa.send(frame)
    assert wait_for(lambda: counters(pair.a)[reason] == 1), counters(pair.a)
    assert pair.a.port_counters(pa.id)["drops"] == 1
    assert pb.drain(0.2) == []


def test_port_without_security_may_send_other_macs_and_they_are_learned(pair: Pair) -> None:
    pair.a.network_add(100)
    pair.b.network_add(100)
    pair.link(100)
    pa = FakePort(pair.a, 100, MAC_A, (), security=False)
    pb = FakePort(pair.b, 100, MAC_B, (IP_B,))
    pair.a.fdb_add(100, mac_bytes(MAC_B), LOOPBACK, pair.b.udp_port)
    f = udp_frame("02:00:00:00:01:99", MAC_B, "10.244.1.99", IP_B)
    pa.send(f)
    assert pb.recv() == f
    assert wait_for(
        lambda: any(e.mac == "02:00:00:00:01:99" and e.kind == "local" for e in pair.a.fdb_dump())
    )


def test_learning_network_learns_remote_macs_from_decapsulated_frames(pair: Pair) -> None:
    pair.b.network_add(100, learning=True)
    pair.a.network_add(100)
    pair.link(100)
    pa = FakePort(pair.a, 100, MAC_A, (IP_A,))
    FakePort(pair.b, 100, MAC_B, (IP_B,))
    bcast = bytes(
        Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, hwsrc=MAC_A, psrc=IP_A, pdst="10.244.1.50")
    )
    pa.send(bcast)
    assert wait_for(lambda: any(e.mac == MAC_A and e.kind == "learned" for e in pair.b.fdb_dump()))
    learned = [e for e in pair.b.events() if e.kind == "learned"]
    assert learned and learned[0].mac == MAC_A and learned[0].vtep == "127.0.0.1"
    assert counters(pair.b)["macs_learned"] == 1


def test_a_burst_from_one_new_mac_is_learned_once_and_leaves_room_for_others() -> None:
    # The frames wait in the fake TAP until the worker starts, so it reads all
    # of them in one batch: 64 from one new MAC, then one from another.
    with loopback_engine(ENCAP_VXLAN, batch=128) as eng:
        eng.network_add(100)
        pa = FakePort(eng, 100, MAC_A, (), security=False)
        burst, other = "02:00:00:00:01:98", "02:00:00:00:01:99"
        for _ in range(64):
            pa.send(udp_frame(burst, "ff:ff:ff:ff:ff:ff", "10.244.1.98", "10.244.1.255"))
        pa.send(udp_frame(other, "ff:ff:ff:ff:ff:ff", "10.244.1.99", "10.244.1.255"))
        eng.start()
        assert wait_for(lambda: eng.port_counters(pa.id)["rx_packets"] == 65)

        def local() -> set[str]:
            return {e.mac for e in eng.fdb_dump() if e.kind == "local"}

        assert wait_for(lambda: {burst, other} <= local()), local()
        assert counters(eng)["macs_learned"] == 2


def test_a_burst_from_one_new_remote_mac_is_learned_once_and_leaves_room_for_others() -> None:
    # As above, from the underlay: the datagrams wait in the receive socket.
    with loopback_engine(ENCAP_VXLAN, batch=128) as eng:
        eng.network_add(100, learning=True)
        eng.vtep_add(100, LOOPBACK, free_udp_port())
        burst, other = "02:00:00:00:01:98", "02:00:00:00:01:99"
        for mac in [burst] * 64 + [other]:
            frame = udp_frame(mac, "ff:ff:ff:ff:ff:ff", "10.244.1.98", "10.244.1.255")
            send_underlay(eng, tunnel(ENCAP_VXLAN, 100, frame))
        eng.start()

        def learned() -> set[str]:
            return {e.mac for e in eng.fdb_dump() if e.kind == "learned"}

        assert wait_for(lambda: {burst, other} <= learned()), learned()
        assert counters(eng)["macs_learned"] == 2
        assert [e.mac for e in eng.events() if e.kind == "learned"] == [burst, other]


def test_frame_to_its_own_port_is_a_hairpin_drop(pair: Pair) -> None:
    pair.a.network_add(100)
    pa = FakePort(pair.a, 100, MAC_A, (IP_A,))
    pa.send(udp_frame(MAC_A, MAC_A, IP_A, IP_A))
    assert wait_for(lambda: counters(pair.a)["hairpin"] == 1)


def test_oversize_frame_from_a_port_is_dropped() -> None:
    with loopback_engine(ENCAP_VXLAN, frame_max=200) as a:
        a.network_add(100)
        pa = FakePort(a, 100, MAC_A, (IP_A,))
        a.start()
        pa.send(udp_frame(MAC_A, MAC_B, IP_A, IP_B, b"y" * 400))
        assert wait_for(lambda: counters(a)["frame_oversize"] == 1)


def test_flood_in_a_network_with_no_other_member_is_counted(pair: Pair) -> None:
    pair.a.network_add(100)
    pa = FakePort(pair.a, 100, MAC_A, (IP_A,))
    pa.send(
        bytes(
            Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=MAC_A, psrc=IP_A, pdst="10.244.1.50")
        )
    )
    assert wait_for(lambda: counters(pair.a)["no_flood_targets"] == 1)


# ---- the control API ----


def test_bad_control_calls_raise_and_change_nothing() -> None:
    with loopback_engine(ENCAP_VXLAN) as a:
        a.network_add(100)
        with pytest.raises(ConflictError):
            a.network_add(100)
        with pytest.raises(OSError):
            a.network_add(1 << 24)
        with pytest.raises(NotFoundError):
            a.vtep_add(7, LOOPBACK)
        with pytest.raises(NotFoundError):
            a.network_del(7)
        p = FakePort(a, 100, MAC_A, (IP_A,))
        with pytest.raises(ConflictError):
            FakePort(a, 100, MAC_A)  # MAC in use in the network
        with pytest.raises(ConflictError):
            a.fdb_add(100, mac_bytes(MAC_A), LOOPBACK)  # a local port owns it
        q = FakePort(a, 100, MAC_B)
        with pytest.raises(ConflictError):
            a.port_add_ip(q.id, ip(IP_A))  # address of another port
        with pytest.raises(OSError):
            a.network_del(100)  # ports still attached
        with pytest.raises(OSError):
            a.port_add_fd(100, p.pod.fileno(), mac_bytes("01:00:5e:00:00:01"))
        with pytest.raises(OSError):
            a.vtep_add(100, ip("fd00::1"))  # IPv6 VTEP on an IPv4 underlay
        assert sorted(e.mac for e in a.fdb_dump()) == [MAC_A, MAC_B]


def test_engine_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="source_ports"):
        Engine(encap=ENCAP_VXLAN, local=LOOPBACK, source_ports=(60000, 50000))
    with pytest.raises(ConfigError, match="frame_max"):
        Engine(encap=ENCAP_VXLAN, local=LOOPBACK, frame_max=10)
    with pytest.raises(ConfigError, match="workers"):
        Engine(encap=ENCAP_VXLAN, local=LOOPBACK, workers=0)


def test_a_port_in_use_is_a_clear_conflict() -> None:
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        with pytest.raises(ConflictError, match="in use"):
            Engine(encap=ENCAP_VXLAN, local=LOOPBACK, udp_port=port)


def test_network_delete_purges_its_tables() -> None:
    with loopback_engine(ENCAP_VXLAN) as a:
        a.network_add(100)
        a.network_add(200)
        a.fdb_add(100, mac_bytes(MAC_B), LOOPBACK)
        a.fdb_add(200, mac_bytes(MAC_C), LOOPBACK)
        a.network_del(100)
        assert [(e.vni, e.mac) for e in a.fdb_dump()] == [(200, MAC_C)]
        a.network_add(100)  # the VNI can be reused
        assert [(e.vni, e.mac) for e in a.fdb_dump()] == [(200, MAC_C)]


def test_every_counter_has_a_name_and_help_and_the_contract_reasons_exist() -> None:
    assert len(set(COUNTER_NAMES)) == len(COUNTER_NAMES)
    assert all(COUNTER_HELP[n] for n in COUNTER_NAMES)
    for reason in (
        "unknown_vni",
        "vtep_not_member",
        "spoofed_source_mac",
        "spoofed_source_ip",
        "spoofed_arp",
        "spoofed_nd",
        "geneve_unknown_critical_option",
        "vxlan_bad_flags",
        "geneve_bad_version",
        "frame_too_short",
    ):
        assert reason in DROP_REASONS


def test_tables_change_safely_while_workers_forward(pair: Pair) -> None:
    """Python rewrites FDB and neighbours while traffic flows: no crash, no loss to a stable MAC."""
    pa, pb = two_pods(pair)
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set() and i < 20000:
            mac = bytes([2, 0, 0, 1, (i >> 8) & 0xFF, i & 0xFF])
            pair.a.fdb_add(100, mac, LOOPBACK, pair.b.udp_port)
            pair.a.neigh_add(100, ip(f"10.244.{100 + (i % 50)}.{i % 250 + 1}"), mac)
            if i % 2:
                pair.a.fdb_del(100, mac)
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    got = 0
    try:
        for k in range(300):
            pa.send(udp_frame(MAC_A, MAC_B, IP_A, IP_B, k.to_bytes(4, "big")))
            if k % 50 == 49:
                got += len(pb.drain(0.05))
        got += len(pb.drain(0.5))
    finally:
        stop.set()
        t.join()
    assert got == 300


def test_outer_source_port_follows_the_inner_flow_hash() -> None:
    """RFC 7348 section 5: same flow, same port; ports spread over 49152-65535 as wire.py says."""
    from overlay import wire

    with loopback_engine(ENCAP_VXLAN) as a:
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(2)
        a.network_add(100)
        pa = FakePort(a, 100, MAC_A, (IP_A,))
        a.fdb_add(100, mac_bytes(MAC_B), LOOPBACK, sink.getsockname()[1])
        a.start()
        seen: dict[int, set[int]] = {}
        for sport in range(2000, 2040):
            f = bytes(
                Ether(src=MAC_A, dst=MAC_B)
                / IP(src=IP_A, dst=IP_B)
                / UDP(sport=sport, dport=53)
                / Raw(b"q")
            )
            for _ in range(2):
                pa.send(f)
                _, (_, port) = sink.recvfrom(2048)
                seen.setdefault(sport, set()).add(port)
            want = wire.source_port(wire.flow_hash(wire.parse_frame(f)), 49152, 65535, 16)
            assert seen[sport] == {want}
        ports = set().union(*seen.values())
        assert len(ports) >= 8 and all(49152 <= p <= 65535 for p in ports)
        sink.close()


def test_ipv6_underlay_forwards_between_engines() -> None:
    lo6 = ip("::1")
    a = Engine(encap=ENCAP_GENEVE, local=lo6, udp_port=free_udp_port("::1"))
    b = Engine(encap=ENCAP_GENEVE, local=lo6, udp_port=free_udp_port("::1"))
    try:
        for me, other in ((a, b), (b, a)):
            me.network_add(100)
            me.vtep_add(100, lo6, other.udp_port)
        pa = FakePort(a, 100, MAC_A, (IP_A,))
        pb = FakePort(b, 100, MAC_B, (IP_B,))
        a.fdb_add(100, mac_bytes(MAC_B), lo6, b.udp_port)
        a.start()
        b.start()
        f = udp_frame(MAC_A, MAC_B, IP_A, IP_B, b"over ipv6")
        pa.send(f)
        assert pb.recv() == f
    finally:
        a.close()
        b.close()


def test_test_ports_lie_below_the_source_port_pool_and_are_free() -> None:
    # An engine's source sockets start at 49152 and probe upward, so a port
    # handed to another test engine from that range could be taken first.
    for host in ("127.0.0.1", "::1") * 10:
        port = free_udp_port(host)
        assert 20000 <= port < 49152
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                           socket.SOCK_DGRAM) as s:  # fmt: skip
            s.bind((host, port))


# ---- hardening: RA guard, what may come from ::, fail-closed parsing ----

A6, B6 = "fd00::2", "fd00::3"


def lla(mac: str) -> str:
    """The EUI-64 link-local address of mac (RFC 4291 appendix A)."""
    b = bytearray(mac_bytes(mac))
    b[0] ^= 0x02
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + b[:3] + b"\xff\xfe" + b[3:]))


def solicited(addr: str) -> str:
    return str(ipaddress.IPv6Address(b"\xff\x02" + bytes(9) + b"\x01\xff" + ip(addr).packed[13:]))


@pytest.fixture
def lan() -> Iterator[tuple[Engine, FakePort, FakePort]]:
    """One engine, two local ports in VNI 100 with IPv4 and IPv6 addresses."""
    with loopback_engine(ENCAP_VXLAN) as eng:
        eng.network_add(100)
        pa = FakePort(eng, 100, MAC_A, (IP_A, A6))
        pb = FakePort(eng, 100, MAC_B, (IP_B, B6))
        eng.start()
        yield eng, pa, pb


def ra(src_mac: str, src: str) -> bytes:
    return bytes(
        Ether(src=src_mac, dst="33:33:00:00:00:01")
        / IPv6(src=src, dst="ff02::1", hlim=255)
        / ICMPv6ND_RA(routerlifetime=1800)
        / ICMPv6NDOptSrcLLAddr(lladdr=src_mac)
    )


def test_router_advertisement_and_redirect_from_a_pod_are_dropped_by_ra_guard(lan) -> None:  # type: ignore[no-untyped-def]
    eng, pa, pb = lan
    redirect = bytes(
        Ether(src=MAC_A, dst=MAC_B)
        / IPv6(src=lla(MAC_A), dst=B6, hlim=255)
        / ICMPv6ND_Redirect(tgt=lla(MAC_A), dst="fd00::99")
        / ICMPv6NDOptDstLLAddr(lladdr=MAC_A)
    )
    pa.send(ra(MAC_A, lla(MAC_A)))
    pa.send(redirect)
    assert wait_for(lambda: counters(eng)["ra_guard"] == 2), counters(eng)
    assert eng.port_counters(pa.id)["drops"] == 2
    assert pb.drain(0.2) == []


def test_a_port_marked_router_may_advertise_and_redirect() -> None:
    with loopback_engine(ENCAP_VXLAN) as eng:
        eng.network_add(100)
        gw = FakePort(eng, 100, MAC_A, (IP_A, A6), router=True)
        pb = FakePort(eng, 100, MAC_B, (IP_B, B6))
        eng.start()
        adv = ra(MAC_A, lla(MAC_A))
        gw.send(adv)
        assert pb.recv() == adv
        # a redirect names the better first hop: its target option is not the router's MAC
        redirect = bytes(
            Ether(src=MAC_A, dst=MAC_B)
            / IPv6(src=lla(MAC_A), dst=B6, hlim=255)
            / ICMPv6ND_Redirect(tgt=lla(MAC_C), dst="fd00::99")
            / ICMPv6NDOptDstLLAddr(lladdr=MAC_C)
        )
        gw.send(redirect)
        assert pb.recv() == redirect
        # still held to its own MAC and addresses like any port
        gw.send(ra(MAC_A, "fd00::77"))
        assert wait_for(lambda: counters(eng)["spoofed_source_ip"] == 1)
        assert counters(eng)["ra_guard"] == 0


def dad_ns(src_mac: str, target: str, *, dst: str | None = None, slla: bool = False) -> bytes:
    pkt = (
        Ether(src=src_mac, dst="33:33:ff:00:00:02")
        / IPv6(src="::", dst=dst or solicited(target), hlim=255)
        / ICMPv6ND_NS(tgt=target)
    )
    if slla:
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=src_mac)
    return bytes(pkt)


def mld_report(src_mac: str, version: int, dst: str) -> bytes:
    ip6 = IPv6(src="::", dst=dst, hlim=1) / IPv6ExtHdrHopByHop(options=[RouterAlert()])
    if version == 2:
        body = ICMPv6MLReport2(records=[ICMPv6MLDMultAddrRec(dst=solicited(A6))])
    else:
        body = ICMPv6MLReport(mladdr=dst)
    return bytes(Ether(src=src_mac, dst="33:33:00:00:00:16") / ip6 / body)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(dad_ns(MAC_A, A6), id="dad-for-its-address"),
        pytest.param(dad_ns(MAC_A, lla(MAC_A)), id="dad-for-its-link-local"),
        pytest.param(mld_report(MAC_A, 2, "ff02::16"), id="mldv2-report"),
        pytest.param(mld_report(MAC_A, 1, solicited(A6)), id="mldv1-report"),
    ],
)
def test_what_dad_and_mld_need_may_come_from_the_unspecified_address(lan, frame: bytes) -> None:  # type: ignore[no-untyped-def]
    eng, pa, pb = lan
    pa.send(frame)
    assert pb.recv() == frame
    assert not any(counters(eng)[r] for r in DROP_REASONS)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(
            bytes(
                Ether(src=MAC_A, dst=MAC_B)
                / IPv6(src="::", dst=B6)
                / UDP(sport=1, dport=9)
                / Raw(b"from nowhere")
            ),
            id="udp",
        ),
        pytest.param(dad_ns(MAC_A, B6), id="dad-for-another-ports-address"),
        pytest.param(dad_ns(MAC_A, A6, slla=True), id="dad-with-a-link-layer-option"),
        pytest.param(dad_ns(MAC_A, A6, dst="ff02::1"), id="dad-not-to-the-solicited-node-group"),
        pytest.param(mld_report(MAC_A, 2, "ff02::1"), id="mldv2-report-to-all-nodes"),
        pytest.param(mld_report(MAC_A, 1, B6), id="mldv1-report-to-a-unicast-address"),
        pytest.param(
            bytes(
                Ether(src=MAC_A, dst="33:33:00:00:00:01")
                / IPv6(src="::", dst="ff02::1", hlim=255)
                / ICMPv6ND_NA(tgt=A6, R=0, S=0, O=1)
            ),
            id="na",
        ),
        pytest.param(ra(MAC_A, "::"), id="ra"),
    ],
)
def test_anything_else_from_the_unspecified_address_is_spoofed(lan, frame: bytes) -> None:  # type: ignore[no-untyped-def]
    eng, pa, pb = lan
    pa.send(frame)
    assert wait_for(lambda: counters(eng)["spoofed_source_ip"] == 1), counters(eng)
    assert pb.drain(0.2) == []


def nine_header_na(src_mac: str, src: str, target: str, lladdr: str, dst_mac: str) -> bytes:
    """An unsolicited override NA behind nine destination-options headers."""
    pkt: Packet = Ether(src=src_mac, dst=dst_mac) / IPv6(src=src, dst="ff02::1", hlim=255)
    for _ in range(9):
        pkt = pkt / IPv6ExtHdrDestOpt()
    return bytes(pkt / ICMPv6ND_NA(tgt=target, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=lladdr))


def test_what_the_parser_cannot_classify_fails_closed_at_a_secure_port(lan) -> None:  # type: ignore[no-untyped-def]
    eng, pa, pb = lan
    pa.send(nine_header_na(MAC_A, A6, B6, MAC_A, "33:33:00:00:00:01"))
    frag_ns = bytes(
        Ether(src=MAC_A, dst=MAC_B)
        / IPv6(src=A6, dst=B6, hlim=255)
        / IPv6ExtHdrFragment(m=1, nh=58)
        / ICMPv6ND_NS(tgt=B6)
    )
    pa.send(frag_ns)
    cut = bytes(Ether(src=MAC_A, dst=MAC_B) / IPv6(src=A6, dst=B6, nh=58) / Raw(b"\x88\x00"))
    pa.send(cut)
    want = {"ipv6_header_chain": 1, "nd_fragmented": 1, "icmpv6_truncated": 1}
    assert wait_for(lambda: all(counters(eng)[k] == v for k, v in want.items())), counters(eng)
    assert pb.drain(0.2) == []


def test_a_port_without_security_still_forwards_what_the_parser_refuses() -> None:
    with loopback_engine(ENCAP_VXLAN) as eng:
        eng.network_add(100)
        pa = FakePort(eng, 100, MAC_A, (), security=False)
        pb = FakePort(eng, 100, MAC_B, (IP_B, B6))
        eng.start()
        f = nine_header_na(MAC_A, A6, B6, MAC_A, MAC_B)
        pa.send(f)
        assert pb.recv() == f


# ---- hardening: what a member VTEP may claim about this node ----


@pytest.fixture
def victim() -> Iterator[tuple[Engine, FakePort, FakePort]]:
    """An engine with two local pods in VNI 100 (A, and C at 10.244.1.4) and a
    remote pod B behind a member VTEP (127.0.0.1, this test) in its tables."""
    with loopback_engine(ENCAP_VXLAN) as eng:
        eng.network_add(100)
        eng.vtep_add(100, LOOPBACK, free_udp_port())
        pa = FakePort(eng, 100, MAC_A, (IP_A, A6))
        pc = FakePort(eng, 100, MAC_C, ("10.244.1.4", "fd00::4"))
        eng.fdb_add(100, mac_bytes(MAC_B), LOOPBACK)
        eng.neigh_add(100, ip(IP_B), mac_bytes(MAC_B))
        eng.neigh_add(100, ip(B6), mac_bytes(MAC_B))
        eng.start()
        yield eng, pa, pc


EVIL = "02:de:ad:00:00:01"


def arp_reply(sha: str, spa: str, to_mac: str = MAC_A, to_ip: str = IP_A, src: str = "") -> bytes:
    return bytes(
        Ether(src=src or sha, dst=to_mac) / ARP(op=2, hwsrc=sha, psrc=spa, hwdst=to_mac, pdst=to_ip)
    )


def na(target: str, tlla: str | None, src_mac: str = EVIL, dst_mac: str = MAC_A) -> bytes:
    pkt = (
        Ether(src=src_mac, dst=dst_mac)
        / IPv6(src=target, dst=A6, hlim=255)
        / ICMPv6ND_NA(tgt=target, R=0, S=0, O=1)
    )
    if tlla:
        pkt = pkt / ICMPv6NDOptDstLLAddr(lladdr=tlla)
    return bytes(pkt)


@pytest.mark.parametrize(
    "inner,reason",
    [
        pytest.param(
            udp_frame(MAC_C, MAC_A, "10.244.1.4", IP_A), "decap_spoofed_mac", id="local-mac"
        ),
        pytest.param(arp_reply(EVIL, "10.244.1.4"), "decap_spoofed_arp", id="arp-local-address"),
        pytest.param(arp_reply(EVIL, IP_B), "decap_spoofed_arp", id="arp-remote-other-mac"),
        pytest.param(
            arp_reply(MAC_C, "10.244.1.77", src=EVIL), "decap_spoofed_arp", id="arp-local-mac"
        ),
        pytest.param(na("fd00::4", EVIL), "decap_spoofed_nd", id="na-local-address"),
        pytest.param(na(B6, EVIL), "decap_spoofed_nd", id="na-remote-other-mac"),
        pytest.param(na(B6, None), "decap_spoofed_nd", id="na-without-option-source-mac"),
        pytest.param(na(lla(MAC_C), EVIL), "decap_spoofed_nd", id="na-local-link-local"),
        pytest.param(
            bytes(
                Ether(src=EVIL, dst=MAC_A)
                / IPv6(src="fd00::4", dst=A6, hlim=255)
                / ICMPv6ND_NS(tgt=A6)
                / ICMPv6NDOptSrcLLAddr(lladdr=EVIL)
            ),
            "decap_spoofed_nd",
            id="ns-source-option-for-a-local-address",
        ),
        pytest.param(
            nine_header_na(EVIL, B6, "fd00::4", EVIL, MAC_A), "ipv6_header_chain", id="nine-headers"
        ),
    ],
)
def test_decapsulated_claims_against_what_the_node_knows_are_dropped(
    victim,  # type: ignore[no-untyped-def]
    inner: bytes,
    reason: str,
) -> None:
    eng, pa, pc = victim
    send_underlay(eng, tunnel(ENCAP_VXLAN, 100, inner))
    assert wait_for(lambda: counters(eng)[reason] == 1), counters(eng)
    assert eng.network_counters(100)["drops"] == 1
    assert pa.drain(0.2) == [] and pc.drain(0.05) == []
    assert not any(e.kind == "learned" for e in eng.fdb_dump())


@pytest.mark.parametrize(
    "inner",
    [
        pytest.param(arp_reply(MAC_B, IP_B), id="arp-as-the-table-says"),
        pytest.param(arp_reply("02:00:00:00:02:09", "10.244.1.99"), id="arp-unknown-address"),
        pytest.param(arp_reply(MAC_B, "0.0.0.0"), id="arp-probe"),
        pytest.param(na(B6, MAC_B, src_mac=MAC_B), id="na-as-the-table-says"),
        pytest.param(na(lla(MAC_B), MAC_B, src_mac=MAC_B), id="na-remote-link-local"),
        pytest.param(dad_ns(MAC_B, "fd00::4"), id="dad-probe-for-a-local-address"),
    ],
)
def test_decapsulated_claims_that_agree_with_the_node_are_delivered(victim, inner: bytes) -> None:  # type: ignore[no-untyped-def]
    eng, pa, pc = victim
    send_underlay(eng, tunnel(ENCAP_VXLAN, 100, inner))
    if inner[0] & 1:
        assert pa.recv() == inner and pc.recv() == inner
    else:
        assert pa.recv() == inner
    assert not any(counters(eng)[r] for r in DROP_REASONS)


def test_a_decapsulated_broadcast_with_no_local_port_is_counted() -> None:
    with loopback_engine(ENCAP_VXLAN) as eng:
        eng.network_add(100)
        eng.vtep_add(100, LOOPBACK)
        eng.start()
        send_underlay(eng, tunnel(ENCAP_VXLAN, 100, arp_reply(MAC_B, IP_B, "ff:ff:ff:ff:ff:ff")))
        assert wait_for(lambda: counters(eng)["no_flood_targets"] == 1)
        assert counters(eng)["udp_rx_packets"] == 1


def learned(eng: Engine, mac: str) -> str | None:
    return next((f"{e.vtep}" for e in eng.fdb_dump() if e.mac == mac and e.kind == "learned"), None)


def test_learning_network_a_learned_mac_moves_vtep_a_placed_one_does_not() -> None:
    """As the kernel's vxlan_snoop: a dynamic entry follows its MAC, a static one drops it."""
    with loopback_engine(ENCAP_VXLAN) as eng:
        eng.network_add(100, learning=True)
        for vtep in ("127.0.0.1", "127.0.0.2"):
            eng.vtep_add(100, ip(vtep))
        pa = FakePort(eng, 100, MAC_A, (IP_A,))
        eng.fdb_add(100, mac_bytes(MAC_C), LOOPBACK)  # placed by the control plane
        eng.start()
        mover = udp_frame(MAC_B, MAC_A, IP_B, IP_A)
        send_underlay(eng, tunnel(ENCAP_VXLAN, 100, mover), src="127.0.0.1")
        assert pa.recv() == mover
        assert wait_for(lambda: learned(eng, MAC_B) == "127.0.0.1")
        send_underlay(eng, tunnel(ENCAP_VXLAN, 100, mover), src="127.0.0.2")
        assert pa.recv() == mover
        assert wait_for(lambda: learned(eng, MAC_B) == "127.0.0.2")
        # the placed MAC is accepted from its VTEP, refused from another
        placed = udp_frame(MAC_C, MAC_A, "10.244.1.4", IP_A)
        send_underlay(eng, tunnel(ENCAP_VXLAN, 100, placed), src="127.0.0.1")
        assert pa.recv() == placed
        send_underlay(eng, tunnel(ENCAP_VXLAN, 100, placed), src="127.0.0.2")
        assert wait_for(lambda: counters(eng)["decap_spoofed_mac"] == 1)
        assert pa.drain(0.2) == []
        # no remote neighbours in a learning network: the local checks still hold
        send_underlay(eng, tunnel(ENCAP_VXLAN, 100, arp_reply(EVIL, IP_A, to_ip=IP_A)))
        assert wait_for(lambda: counters(eng)["decap_spoofed_arp"] == 1)
        assert learned(eng, EVIL) is None


# ---- hardening: frames above the pod MTU ----


@pytest.mark.parametrize(
    "encap,family,opts,limit",
    [
        (ENCAP_VXLAN, 4, b"", 1500 - 50 + 14),
        (ENCAP_VXLAN, 6, b"", 1500 - 70 + 14),
        (ENCAP_GENEVE, 4, b"", 1500 - 50 + 14),
        (ENCAP_GENEVE, 4, geneve_opt(0x0102, 0x01, bytes(8)), 1500 - 50 - 12 + 14),
    ],
)
def test_a_frame_above_the_pod_mtu_is_oversize_at_the_port(
    encap: int, family: int, opts: bytes, limit: int
) -> None:
    local = ip("127.0.0.1" if family == 4 else "::1")
    with socket.socket(
        socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM
    ) as sink:
        sink.bind((str(local), 0))
        sink.settimeout(2)
        eng = Engine(
            encap=encap, local=local, udp_port=free_udp_port(str(local)), underlay_mtu=1500
        )
        try:
            eng.network_add(100)
            if opts:
                eng.network_set_options(100, opts)
            pa = FakePort(eng, 100, MAC_A, (IP_A,))
            eng.fdb_add(100, mac_bytes(MAC_B), local, sink.getsockname()[1])
            eng.start()
            head = len(udp_frame(MAC_A, MAC_B, IP_A, IP_B, b""))
            fits = udp_frame(MAC_A, MAC_B, IP_A, IP_B, b"f" * (limit - head))
            too_big = udp_frame(MAC_A, MAC_B, IP_A, IP_B, b"b" * (limit + 1 - head))
            pa.send(too_big)
            pa.send(fits)
            data = sink.recv(4096)
            assert data.endswith(fits) and len(data) == len(fits) + 8 + len(opts)
            assert counters(eng)["frame_oversize"] == 1
            assert eng.port_counters(pa.id)["drops"] == 1
        finally:
            eng.close()


def test_underlay_mtu_out_of_range_names_the_field() -> None:
    with pytest.raises(ConfigError, match="underlay_mtu"):
        Engine(encap=ENCAP_VXLAN, local=LOOPBACK, underlay_mtu=100)
