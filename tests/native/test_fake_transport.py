"""The engine on the in-memory transport: no socket, datagrams injected and read back.

The real data plane runs (workers, stages, tables, counters, events); only the
underlay is memory (native/fake.c, wireguard-go's bindtest). These tests port
some of test_engine.py's loopback-UDP ones, which stay as they are, and add
what only the fake can show: the exact datagram and its outer source port
without a socket, a peer that is not where its address says, counters with
several workers, and a port id that is reused.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from overlay import wire
from overlay.bindings import ENCAP_GENEVE, ENCAP_VXLAN, mac_bytes
from overlay.bindings.tools import FakeTransportEngine, SentDatagram
from overlay.errors import ConfigError, ConflictError
from overlay.testing.fakes import FakePort, fake_transport_engine
from overlay.testing.traffic import wait_for

MAC_A, MAC_B, MAC_C = "02:00:00:00:01:02", "02:00:00:00:02:02", "02:00:00:00:01:03"
IP_A, IP_B = "10.244.1.2", "10.244.1.3"
PEER = ipaddress.ip_address("198.18.0.2")  # the member VTEP in these tests
STRANGER = ipaddress.ip_address("198.18.0.9")  # an address that is no member
VNI = 100


def udp_frame(src_mac: str, dst_mac: str, src: str, dst: str, sport: int = 4000) -> bytes:
    return bytes(
        Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) / UDP(sport=sport, dport=5000)
        / Raw(b"x" * 32)
    )  # fmt: skip


def tunnelled(encap: int, vni: int, inner: bytes, opts: bytes = b"") -> bytes:
    options = wire.decode_options(opts) if opts else []
    return wire.encode(encap, wire.Tunnel(vni, options=options)) + inner


def sent(eng: FakeTransportEngine, n: int) -> list[SentDatagram]:
    """The next n datagrams the engine sends (waiting for its worker)."""
    got: list[SentDatagram] = []
    wait_for(lambda: len(got.extend(eng.sent()) or got) >= n)  # type: ignore[func-returns-value]
    assert len(got) == n, got
    return got


@pytest.fixture(params=[ENCAP_VXLAN, ENCAP_GENEVE], ids=["vxlan", "geneve"])
def node(request: pytest.FixtureRequest) -> Iterator[FakeTransportEngine]:
    """An engine with network VNI, PEER as its member and MAC_B behind PEER."""
    with fake_transport_engine(request.param) as eng:
        eng.network_add(VNI)
        eng.vtep_add(VNI, PEER)
        eng.fdb_add(VNI, mac_bytes(MAC_B), PEER)
        eng.neigh_add(VNI, ipaddress.ip_address(IP_B), mac_bytes(MAC_B))
        yield eng


def test_unicast_is_encapsulated_to_the_vtep_the_fdb_names(node: FakeTransportEngine) -> None:
    pa = FakePort(node, VNI, MAC_A, (IP_A,))
    f = udp_frame(MAC_A, MAC_B, IP_A, IP_B)
    pa.send(f)
    (d,) = sent(node, 1)
    assert (d.dst, d.port) == (PEER, node.udp_port)
    assert d.data == tunnelled(node.encap, VNI, f)
    assert node.network_counters(VNI)["encap_packets"] == 1
    assert node.port_counters(pa.id)["encap_bytes"] == len(f)
    # counted when the worker moved the datagram out, a moment after it was seen
    assert wait_for(lambda: node.counters()["udp_tx_packets"] == 1)


def test_outer_source_port_follows_the_inner_flow_hash(node: FakeTransportEngine) -> None:
    pa = FakePort(node, VNI, MAC_A, (IP_A,))
    ports = set()
    for sport in range(2000, 2040):
        f = udp_frame(MAC_A, MAC_B, IP_A, IP_B, sport=sport)
        pa.send(f)
        pa.send(f)
        first, second = sent(node, 2)
        want = wire.source_port(wire.flow_hash(wire.parse_frame(f)), 49152, 65535, 16)
        assert first.sport == second.sport == want
        ports.add(want)
    assert len(ports) >= 8


def test_decapsulated_unicast_reaches_its_port(node: FakeTransportEngine) -> None:
    pa = FakePort(node, VNI, MAC_A, (IP_A,))
    f = udp_frame(MAC_B, MAC_A, IP_B, IP_A)
    node.inject(tunnelled(node.encap, VNI, f), PEER, node.udp_port)
    assert pa.recv() == f
    # counted once the write returned, a moment after the pod could read the frame
    assert wait_for(lambda: node.port_counters(pa.id)["tx_packets"] == 1)
    assert node.network_counters(VNI)["decap_packets"] == 1
    assert node.counters()["udp_rx_packets"] == 1


def test_a_datagram_from_a_non_member_is_dropped(node: FakeTransportEngine) -> None:
    pa = FakePort(node, VNI, MAC_A, (IP_A,))
    f = udp_frame(MAC_B, MAC_A, IP_B, IP_A)
    node.inject(tunnelled(node.encap, VNI, f), STRANGER)
    assert wait_for(lambda: node.counters()["vtep_not_member"] == 1)
    assert pa.drain(0.1) == []
    assert wait_for(lambda: node.network_counters(VNI)["drops"] == 1)


def test_a_datagram_for_a_vni_not_hosted_is_dropped(node: FakeTransportEngine) -> None:
    FakePort(node, VNI, MAC_A, (IP_A,))
    node.inject(tunnelled(node.encap, 999, udp_frame(MAC_B, MAC_A, IP_B, IP_A)), PEER)
    assert wait_for(lambda: node.counters()["unknown_vni"] == 1)


def test_broadcast_is_flooded_to_every_member_and_local_port(node: FakeTransportEngine) -> None:
    other = ipaddress.ip_address("198.18.0.3")
    node.vtep_add(VNI, other, 4790)
    pa = FakePort(node, VNI, MAC_A, (IP_A,))
    pc = FakePort(node, VNI, MAC_C, ("10.244.1.4",))
    req = bytes(
        Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, hwsrc=MAC_A, psrc=IP_A, pdst="10.244.1.99")
    )
    pa.send(req)
    copies = sent(node, 2)
    assert {(d.dst, d.port) for d in copies} == {(PEER, node.udp_port), (other, 4790)}
    assert all(d.data == tunnelled(node.encap, VNI, req) for d in copies)
    assert pc.recv() == req
    assert wait_for(lambda: (node.counters()["flooded"], node.counters()["flood_copies"]) == (1, 3))


def test_arp_for_a_known_address_is_answered_without_the_underlay(
    node: FakeTransportEngine,
) -> None:
    pa = FakePort(node, VNI, MAC_A, (IP_A,))
    req = Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_A, psrc=IP_A, pdst=IP_B)
    pa.send(bytes(req))
    rep = Ether(pa.recv())
    assert rep[ARP].op == 2 and rep[ARP].hwsrc == MAC_B and rep[ARP].psrc == IP_B
    assert wait_for(lambda: node.counters()["arp_suppressed"] == 1)
    assert node.sent() == []


def test_geneve_options_of_a_network_are_sent_with_every_packet() -> None:
    opts = struct.pack("!HBB", 0x0102, 0x80, 1) + b"\x00\x01\x00\x02"
    with fake_transport_engine(ENCAP_GENEVE) as eng:
        eng.network_add(VNI)
        eng.network_set_options(VNI, opts)
        eng.fdb_add(VNI, mac_bytes(MAC_B), PEER)
        pa = FakePort(eng, VNI, MAC_A, (IP_A,))
        f = udp_frame(MAC_A, MAC_B, IP_A, IP_B)
        pa.send(f)
        (d,) = sent(eng, 1)
        assert d.data == tunnelled(ENCAP_GENEVE, VNI, f, opts)
        assert d.data[1] & wire.GENEVE_F_CRITICAL  # the option is critical


def test_fdb_entries_name_their_next_hop(node: FakeTransportEngine) -> None:
    pa = FakePort(node, VNI, MAC_A, (IP_A,))
    hops = {(e.mac, e.kind, e.nexthop, e.port_id, e.vtep) for e in node.fdb_dump()}
    assert hops == {
        (MAC_A, "local", "port", pa.id, None),
        (MAC_B, "remote", "tunnel", None, str(PEER)),
    }


def test_a_network_takes_its_own_encapsulation_beside_the_engines() -> None:
    """A VXLAN engine hosts a Geneve network too: each network's frames leave
    with its own header to its encapsulation's port, and each tunnel port
    accepts only its own encapsulation's networks."""
    with fake_transport_engine(ENCAP_VXLAN) as eng:
        eng.network_add(VNI)  # the engine's: VXLAN
        with pytest.raises(ConfigError, match="encap"):
            eng.network_add(VNI + 1, encap=7)
        eng.network_add(VNI + 1, encap=ENCAP_GENEVE)
        assert eng.tunnel_port(ENCAP_VXLAN) == eng.udp_port == wire.VXLAN_PORT
        assert eng.tunnel_port(ENCAP_GENEVE) == wire.GENEVE_PORT
        for vni in (VNI, VNI + 1):
            eng.vtep_add(vni, PEER)  # no port: its network's encapsulation's
            eng.fdb_add(vni, mac_bytes(MAC_B), PEER)
        pv = FakePort(eng, VNI, MAC_A, (IP_A,))
        pg = FakePort(eng, VNI + 1, MAC_A, (IP_A,))
        for port, vni, encap, dport in (
            (pv, VNI, ENCAP_VXLAN, wire.VXLAN_PORT),
            (pg, VNI + 1, ENCAP_GENEVE, wire.GENEVE_PORT),
        ):
            out = udp_frame(MAC_A, MAC_B, IP_A, IP_B)
            port.send(out)
            (d,) = sent(eng, 1)
            assert (d.dst, d.port) == (PEER, dport)
            assert d.data == tunnelled(encap, vni, out)
            back = udp_frame(MAC_B, MAC_A, IP_B, IP_A)
            eng.inject(tunnelled(encap, vni, back), PEER, encap=encap)
            assert port.recv() == back
            assert eng.network_counters(vni)["decap_packets"] == 1
        # Each port decodes its own encapsulation: the other's header is refused.
        eng.inject(tunnelled(ENCAP_GENEVE, VNI + 1, back), PEER, encap=ENCAP_VXLAN)
        eng.inject(tunnelled(ENCAP_VXLAN, VNI, back), PEER, encap=ENCAP_GENEVE)
        assert wait_for(lambda: eng.counters()["vxlan_bad_flags"] == 1)
        # VXLAN's flag byte 0x08 read as Geneve: 32 bytes of options that are not there
        assert wait_for(lambda: eng.counters()["geneve_option_overrun"] == 1)
        assert eng.network_counters(VNI)["decap_packets"] == 1
        assert eng.network_counters(VNI + 1)["decap_packets"] == 1


def test_two_encapsulations_on_one_port_are_refused_with_the_fix() -> None:
    with fake_transport_engine(ENCAP_VXLAN, udp_port=wire.GENEVE_PORT) as eng:
        eng.network_add(VNI)
        with pytest.raises(ConflictError, match="Geneve tunnel port 6081.*alt_port"):
            eng.network_add(VNI + 1, encap=ENCAP_GENEVE)
        eng.network_add(VNI + 1, encap=ENCAP_GENEVE, tunnel=False)  # no tunnel: no port
    with fake_transport_engine(ENCAP_VXLAN, udp_port=wire.GENEVE_PORT, alt_port=7000) as eng:
        eng.network_add(VNI, encap=ENCAP_GENEVE)
        eng.vtep_add(VNI, PEER)
        pa = FakePort(eng, VNI, MAC_A, (IP_A,))
        pa.send(udp_frame(MAC_A, "ff:ff:ff:ff:ff:ff", IP_A, IP_B))
        (d,) = sent(eng, 1)
        assert (d.port, eng.tunnel_port(ENCAP_GENEVE)) == (7000, 7000)


def test_counters_of_several_workers_are_summed() -> None:
    frames = 200
    with fake_transport_engine(ENCAP_VXLAN, workers=4) as eng:
        eng.network_add(VNI)
        eng.vtep_add(VNI, PEER)
        pa = FakePort(eng, VNI, MAC_A, (IP_A,))
        for k in range(frames):
            inner = udp_frame(MAC_B, MAC_A, IP_B, IP_A, sport=1000 + k)
            eng.inject(tunnelled(ENCAP_VXLAN, VNI, inner), PEER)
        got: list[bytes] = []
        while len(got) < frames:
            got.append(pa.recv())
        assert wait_for(lambda: eng.port_counters(pa.id)["tx_packets"] == frames)
        assert wait_for(lambda: eng.network_counters(VNI)["tx_packets"] == frames)
        assert eng.network_counters(VNI)["decap_packets"] == frames
        assert eng.counters()["udp_rx_packets"] == frames


def test_a_reused_port_id_starts_from_zero(node: FakeTransportEngine) -> None:
    pa = FakePort(node, VNI, MAC_A, (IP_A,))
    pa.send(udp_frame(MAC_A, MAC_B, IP_A, IP_B))
    sent(node, 1)
    assert node.port_counters(pa.id)["rx_packets"] == 1
    node.port_del(pa.id)
    pc = FakePort(node, VNI, MAC_C, ("10.244.1.4",))
    assert pc.id == pa.id
    assert set(node.port_counters(pc.id).values()) == {0}
    # the network's counters go on: the frame was the network's
    assert node.network_counters(VNI)["rx_packets"] == 1


def test_a_malformed_injected_datagram_is_a_counted_drop() -> None:
    with fake_transport_engine(ENCAP_VXLAN) as eng:
        eng.network_add(VNI)
        eng.inject(b"\x00", PEER)  # accepted; the engine drops it, counted
        assert wait_for(lambda: eng.counters()["vxlan_truncated"] == 1)
        assert eng.sent() == []
