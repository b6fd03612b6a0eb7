"""The data plane under attack, as an adversary would try it.

From a member VTEP on the underlay: thousands of seeded-random mutations of
VXLAN and Geneve datagrams (bit flips, cuts, lengths, options, inner frames)
against a real engine; afterwards every datagram is accounted for exactly
(received = delivered + drops by reason) and a good frame still gets through.
From inside a pod, and from a member VTEP speaking for this node's pods:
neighbour advertisements behind nine extension headers, router advertisements
and redirects, UDP from ::, ARP and ND claims about local and remote pods, a
local pod's MAC; the victims' captures, neighbour tables and routes show that
nothing arrived, and the drop counters name each reason. Frames above the pod
MTU and a datagram the underlay refuses cost exactly themselves.

tests/native/test_native_sanitize.py runs this file again against an
AddressSanitizer/UBSan build of the C module.
"""

from __future__ import annotations

import ipaddress
import random
import select
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from overlay.bindings import DROP_REASONS, ENCAP_GENEVE, ENCAP_VXLAN, mac_bytes
from overlay.node import Encap
from overlay.testing.cluster import Cluster
from overlay.testing.fakes import LOOPBACK, FakePort, free_udp_port, loopback_engine
from overlay.testing.netns import Netns, Topology, underlay_ip
from overlay.testing.traffic import send_frames, wait_for

MAC_A, MAC_B, MAC_R = "02:00:00:00:01:02", "02:00:00:00:02:02", "02:00:00:00:03:02"
EVIL = "02:de:ad:be:ef:01"
IP_A, IP_B = "10.244.1.2", "10.244.1.3"
A6, B6 = "fd00::2", "fd00::3"
KNOWN_OPT = (0x0102, 0x01)


def tunnel(encap: int, vni: int, inner: bytes, opts: bytes = b"", critical: bool = False) -> bytes:
    if encap == ENCAP_VXLAN:
        return bytes(VXLAN(vni=vni, flags=0x08) / Raw(inner))
    head = GENEVE(vni=vni, proto=0x6558, optionlen=len(opts) // 4, critical=int(critical))
    return bytes(head / Raw(opts + inner))


def geneve_opt(cls: int, type_: int, data: bytes) -> bytes:
    return cls.to_bytes(2, "big") + bytes([type_, len(data) // 4]) + data


def with_dest_opts(pkt: Packet, n: int) -> Packet:
    for _ in range(n):
        pkt = pkt / IPv6ExtHdrDestOpt()
    return pkt


def nine_header_na(src_mac: str, dst_mac: str, src: str, dst: str, target: str) -> bytes:
    """An unsolicited override NA for target, at src_mac, behind nine destination options."""
    ip6 = with_dest_opts(IPv6(src=src, dst=dst, hlim=255), 9)
    na = ICMPv6ND_NA(tgt=target, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=src_mac)
    return bytes(Ether(src=src_mac, dst=dst_mac) / ip6 / na)


# ---- the underlay, mutated ----


def inner_bases() -> list[bytes]:
    """Inner frames of every kind the engine judges (scapy-built)."""
    bcast = "ff:ff:ff:ff:ff:ff"
    frames: list[Packet | bytes] = [
        Ether(src=MAC_B, dst=MAC_A) / IP(src=IP_B, dst=IP_A) / UDP(sport=5, dport=7) / Raw(b"u"),
        Ether(src=MAC_B, dst=MAC_A) / IP(src=IP_B, dst=IP_A) / TCP(sport=5, dport=80, flags="S"),
        Ether(src=MAC_B, dst=bcast) / ARP(op=1, hwsrc=MAC_B, psrc=IP_B, pdst=IP_A),
        Ether(src=EVIL, dst=MAC_A) / ARP(op=2, hwsrc=EVIL, psrc=IP_A, pdst=IP_A),
        Ether(src=MAC_A, dst=MAC_A) / IP(src=IP_A, dst=IP_A) / UDP(),
        Ether(src=MAC_B, dst="33:33:ff:00:00:02")
        / IPv6(src=B6, dst="ff02::1:ff00:2", hlim=255)
        / ICMPv6ND_NS(tgt=A6)
        / ICMPv6NDOptSrcLLAddr(lladdr=MAC_B),
        Ether(src=MAC_B, dst=MAC_A)
        / IPv6(src=B6, dst=A6, hlim=255)
        / ICMPv6ND_NA(tgt=B6, S=1)
        / ICMPv6NDOptDstLLAddr(lladdr=MAC_B),
        nine_header_na(EVIL, "33:33:00:00:00:01", B6, "ff02::1", A6),
        Ether(src=MAC_B, dst="33:33:00:00:00:01")
        / IPv6(src="fe80::2", dst="ff02::1", hlim=255)
        / ICMPv6ND_RA()
        / ICMPv6NDOptMTU()
        / ICMPv6NDOptSrcLLAddr(lladdr=MAC_B),
        Ether(src=MAC_B, dst=MAC_A)
        / IPv6(src=B6, dst=A6, hlim=255)
        / ICMPv6ND_Redirect(tgt=B6, dst="fd00::9"),
        Ether(src=MAC_B, dst=MAC_A)
        / IPv6(src=B6, dst=A6)
        / AH(nh=58, payloadlen=4, spi=1, icv=bytes(12))
        / ICMPv6EchoRequest(),
        Ether(src=MAC_B, dst=MAC_A)
        / IPv6(src=B6, dst=A6)
        / IPv6ExtHdrFragment(m=1, nh=58)
        / ICMPv6ND_NS(tgt=A6),
        Ether(src=MAC_B, dst=MAC_A) / IPv6(src=B6, dst=A6) / IPv6ExtHdrFragment(offset=9, nh=17),
        Ether(src=MAC_B, dst=MAC_A) / Dot1Q(vlan=5) / IP(src=IP_B, dst=IP_A) / UDP(),
        Ether(src=MAC_B, dst="02:00:00:00:09:09") / IP(src=IP_B, dst="10.244.1.9") / UDP(),
        Ether(src=MAC_B, dst=MAC_R) / IP(src=IP_B, dst=IP_A) / UDP() / Raw(b"red"),
    ]
    return [bytes(f) for f in frames]


def datagram_bases(encap: int) -> list[bytes]:
    out = []
    known = geneve_opt(*KNOWN_OPT, b"\x00\x01\x02\x03")
    unknown_crit = geneve_opt(0x0A0B, 0x85, b"\xde\xad\xbe\xef")
    for inner in inner_bases():
        vni = 200 if inner[:6] == mac_bytes(MAC_R) else 100
        out.append(tunnel(encap, vni, inner))
        if encap == ENCAP_GENEVE:
            out.append(tunnel(encap, vni, inner, known + geneve_opt(0xFFFF, 0x7F, bytes(8))))
            out.append(tunnel(encap, vni, inner, unknown_crit, critical=True))
    return out


def mutate(rng: random.Random, base: bytes, others: list[bytes]) -> bytes:
    """One seeded mutation: bits, bytes, cuts, lengths, options, VNIs or spliced inner frames."""
    b = bytearray(base)
    how = rng.randrange(10)
    if how == 0:  # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif how == 1:  # random bytes
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif how == 2:  # cut
        del b[rng.randrange(len(b) + 1) :]
    elif how == 3:  # grow
        b += rng.randbytes(rng.randint(1, 64))
    elif how == 4:  # the tunnel header's first word: flags, version, option length
        b[0] = rng.randrange(256)
        b[1] = rng.choice([0, 0x40, 0x80, 0xC0, rng.randrange(256)])
    elif how == 5 and len(b) > 12:  # a Geneve option's length or type bits
        b[8 + 3] = rng.randrange(256)
        b[8 + 2] ^= 0x80
    elif how == 6:  # the VNI: hosted, the other tenant's, or nobody's
        b[4:7] = rng.choice([100, 200, 999, rng.randrange(1 << 24)]).to_bytes(3, "big")
    elif how == 7 and len(b) > 30:  # an inner header field: ethertype, next header, lengths
        i = rng.choice([8 + 12, 8 + 13, 8 + 14, 8 + 20, 8 + 54, 8 + 55, rng.randrange(8, len(b))])
        if i < len(b):
            # next headers (hop-by-hop, dest. options, fragment, AH, ICMPv6), ND types,
            # ethertype halves, or anything
            b[i] = rng.choice(
                [0, 0x3C, 0x2C, 0x33, 0x3A, 0x87, 0x88, 0x86, 0xDD, rng.randrange(256)]
            )
    elif how == 8:  # splice: this header, another datagram's inner frame
        other = rng.choice(others)
        cut = rng.randrange(8, max(9, len(b)))
        b = b[:cut] + other[rng.randrange(8, max(9, len(other))) :]
    else:  # an oversized datagram
        b += bytes(rng.choice([1600, 9000, 66000 - len(b)]) if len(b) < 66000 else 0)
        b = b[:65507]
    return bytes(b)


@pytest.mark.parametrize("encap", [ENCAP_VXLAN, ENCAP_GENEVE], ids=["vxlan", "geneve"])
def test_mutated_datagrams_from_a_member_are_all_accounted_for(encap: int) -> None:
    count, chunk = 3000, 250
    rng = random.Random(0x0E1A7 + encap)
    src_port = free_udp_port()
    with loopback_engine(encap) as eng:
        for vni in (100, 200):
            eng.network_add(vni)
            eng.vtep_add(vni, LOOPBACK, src_port)
        if encap == ENCAP_GENEVE:
            eng.known_option_add(*KNOWN_OPT)
        pa = FakePort(eng, 100, MAC_A, (IP_A, A6))
        pr = FakePort(eng, 200, MAC_R, (IP_A,))  # another tenant, the same address
        eng.fdb_add(100, mac_bytes(MAC_B), LOOPBACK, src_port)
        eng.neigh_add(100, ipaddress.ip_address(IP_B), mac_bytes(MAC_B))
        eng.neigh_add(100, ipaddress.ip_address(B6), mac_bytes(MAC_B))
        eng.start()
        bases = datagram_bases(encap)
        received = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", src_port))
            for sent in range(chunk, count + 1, chunk):
                for _ in range(chunk):
                    s.sendto(mutate(rng, rng.choice(bases), bases), ("127.0.0.1", eng.udp_port))
                # each chunk is read before the next is sent: no socket buffer overflows
                assert wait_for(lambda n=sent: eng.counters()["udp_rx_packets"] == n), (
                    eng.counters()["udp_rx_packets"],
                    sent,
                )
                received += len(pa.drain(0.05)) + len(pr.drain(0.01))

        def accounts() -> tuple[int, int, dict[str, int]]:
            c = eng.counters()
            delivered = sum(eng.port_counters(p.id)["tx_packets"] for p in (pa, pr))
            return c["udp_rx_packets"], delivered, {r: c[r] for r in DROP_REASONS if c[r]}

        # received = delivered + drops by reason, exactly, once the last one is through
        assert wait_for(lambda: accounts()[0] == accounts()[1] + sum(accounts()[2].values()))
        rx, delivered, drops = accounts()
        assert rx == count == delivered + sum(drops.values()), drops
        received += len(pa.drain(0.05)) + len(pr.drain(0.01))
        assert received == delivered
        # the mutations reached every layer: tunnel, membership, frame and claim checks
        for reason in ("unknown_vni", "frame_too_short", "decap_spoofed_arp", "ipv6_header_chain"):
            assert drops.get(reason), (reason, drops)
        assert delivered > count // 10
        # and the engine still forwards a good frame
        good = bytes(
            Ether(src=MAC_B, dst=MAC_A) / IP(src=IP_B, dst=IP_A) / UDP() / Raw(b"still here")
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", src_port))
            s.sendto(tunnel(encap, 100, good), ("127.0.0.1", eng.udp_port))
        assert pa.recv() == good


# ---- from inside a pod, and from a member VTEP, in namespaces ----

ENCAPS = [pytest.param(Encap.VXLAN, id="vxlan"), pytest.param(Encap.GENEVE, id="geneve")]


@dataclass
class DualPod:
    name: str
    netns: Netns
    node: int
    mac: str
    ip4: str
    ip6: str

    @property
    def lla(self) -> str:
        b = bytearray(mac_bytes(self.mac))
        b[0] ^= 0x02
        raw = b"\xfe\x80" + bytes(6) + bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
        return str(ipaddress.IPv6Address(raw))


def dual_pod(c: Cluster, node: int, vni: int, index: int, name: str) -> DualPod:
    """A pod with an IPv4 and an IPv6 address, announced to the other node."""
    mac = f"02:00:00:{vni & 0xFF:02x}:{node:02x}:{index:02x}"
    ip4, ip6 = f"10.244.1.{index}", f"2001:2::{index}"
    ns = c.topo.add_netns(name, ipv6=True)
    port = c.nodes[node].network(vni).add_port(mac, [f"{ip4}/24", f"{ip6}/64"], ifname=f"t{name}")
    port.move_to_netns(ns.path, "eth0")
    ns.wait_ipv6_ready("eth0")
    for j, other in enumerate(c.nodes):
        if j != node:
            other.network(vni).add_remote(mac, underlay_ip(node), [ip4, ip6])
    return DualPod(name, ns, node, mac, ip4, ip6)


class Sniffer:
    """Every frame a pod's eth0 sees, from an AF_PACKET socket inside the pod."""

    def __init__(self, ns: Netns, ifname: str = "eth0") -> None:
        self.sock = ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.bind((ifname, 0))
        self.sock.setblocking(False)
        self.frames: list[bytes] = []

    def _read(self, timeout: float) -> bool:
        if not select.select([self.sock], [], [], timeout)[0]:
            return False
        while True:
            try:
                self.frames.append(self.sock.recv(70000))
            except BlockingIOError:
                return True

    def until(self, marker: bytes, timeout: float = 10.0) -> list[bytes]:
        """Read until a frame holding marker arrived; every frame seen so far (as the
        pod's stack got them: consecutive UDP datagrams may come as one, coalesced)."""
        end = time.monotonic() + timeout
        while not any(marker in f for f in self.frames):
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"marker {marker!r} never reached the pod")
            self._read(min(left, 0.2))
        return self.frames


def arrived(frame: bytes, seen: list[bytes]) -> bool:
    """Is frame among what a pod saw: as sent, or, for UDP (which may come
    coalesced with the datagrams after it), its payload?"""
    pkt = Ether(frame)
    if UDP in pkt and Raw in pkt:
        return any(bytes(pkt[Raw].load) in f for f in seen)
    return frame in seen


def neighbours(ns: Netns) -> dict[str, str]:
    with ns.ipr() as ipr:
        return {
            str(n.get("NDA_DST")): str(n.get("NDA_LLADDR"))
            for n in ipr.get_neighbours()
            if n.get("NDA_LLADDR")
        }


def default_routes(ns: Netns) -> list[str]:
    out = ns.run(["ip", "-6", "route", "show", "default"]).stdout
    return [line for line in out.splitlines() if line.strip()]


def udp_marker(src: DualPod, dst: DualPod, text: bytes) -> bytes:
    return bytes(
        Ether(src=src.mac, dst=dst.mac)
        / IP(src=src.ip4, dst=dst.ip4)
        / UDP(sport=9, dport=9)
        / Raw(text)
    )


@pytest.fixture
def hostile(
    request: pytest.FixtureRequest, overlay_topology: Topology
) -> Iterator[tuple[Cluster, dict]]:  # type: ignore[type-arg]
    """Node 0: the attacker pod and a local victim; node 1: a remote victim.
    The victims know each other and the attacker (ARP and ND entries), will
    take an override at once (locktime 0) and accept router advertisements."""
    with Cluster(overlay_topology, request.param) as c:
        c.add_network(100, "blue")
        pods = {
            "atk": dual_pod(c, 0, 100, 2, "atk"),
            "rem": dual_pod(c, 1, 100, 3, "rem"),
            "loc": dual_pod(c, 0, 100, 4, "loc"),
        }
        c.start()
        for name in ("rem", "loc"):
            ns = pods[name].netns
            ns.sysctl("net.ipv4.neigh.eth0.locktime", 0)
            ns.sysctl("net.ipv6.conf.eth0.accept_ra", 1)
            for other in pods.values():
                if other.name != name:
                    for addr in (other.ip4, other.ip6):
                        ns.run(["ping", "-c", "1", "-W", "5", addr])
        yield c, pods


def drop_deltas(
    c: Cluster, node: int, before: dict[str, int], reasons: Iterable[str]
) -> dict[str, int]:
    """How much each of reasons grew on node since before (the pods' own
    background traffic may add to other reasons)."""
    now = c.nodes[node].counters()["drops"]
    return {r: now[r] - before.get(r, 0) for r in reasons}


@pytest.mark.root
@pytest.mark.parametrize("hostile", ENCAPS, indirect=True)
def test_hostile_frames_from_a_pod_reach_no_victim(hostile) -> None:  # type: ignore[no-untyped-def]
    c, p = hostile
    atk, rem, loc = p["atk"], p["rem"], p["loc"]
    sniff = {v.name: Sniffer(v.netns) for v in (rem, loc)}
    before = c.nodes[0].counters()["drops"]
    frames = {
        # the other pods' entry for loc's address, rewritten behind nine headers
        "ipv6_header_chain": [
            nine_header_na(atk.mac, "33:33:00:00:00:01", atk.ip6, "ff02::1", loc.ip6),
            nine_header_na(atk.mac, rem.mac, atk.ip6, rem.ip6, loc.ip6),
        ],
        # a default route through the attacker, and a redirect to it
        "ra_guard": [
            bytes(
                Ether(src=atk.mac, dst="33:33:00:00:00:01")
                / IPv6(src=atk.lla, dst="ff02::1", hlim=255)
                / ICMPv6ND_RA(routerlifetime=1800)
                / ICMPv6NDOptSrcLLAddr(lladdr=atk.mac)
            ),
            bytes(
                Ether(src=atk.mac, dst=rem.mac)
                / IPv6(src=atk.lla, dst=rem.ip6, hlim=255)
                / ICMPv6ND_Redirect(tgt=atk.lla, dst=loc.ip6)
                / ICMPv6NDOptDstLLAddr(lladdr=atk.mac)
            ),
        ],
        # UDP from ::, which is for DAD and MLD only
        "spoofed_source_ip": [
            bytes(
                Ether(src=atk.mac, dst=rem.mac)
                / IPv6(src="::", dst=rem.ip6)
                / UDP(sport=9, dport=9)
                / Raw(b"from nowhere")
            ),
        ],
    }
    for batch in frames.values():
        for f in batch:
            send_frames(atk.netns, f)
    want = {reason: len(batch) for reason, batch in frames.items()}
    assert wait_for(lambda: drop_deltas(c, 0, before, want) == want), drop_deltas(
        c, 0, before, want
    )
    # what arrived before a marker sent afterwards: none of it
    hostile_frames = [f for batch in frames.values() for f in batch]
    for v in (rem, loc):
        send_frames(atk.netns, udp_marker(atk, v, b"marker-" + v.name.encode()))
        seen = sniff[v.name].until(b"marker-" + v.name.encode())
        assert not [f for f in hostile_frames if arrived(f, seen)], v.name
        assert default_routes(v.netns) == [], v.name
    assert neighbours(rem.netns)[loc.ip6] == loc.mac
    assert neighbours(loc.netns)[rem.ip6] == rem.mac


@pytest.mark.root
@pytest.mark.parametrize("hostile", ENCAPS, indirect=True)
def test_a_member_vtep_cannot_speak_for_this_nodes_pods(hostile) -> None:  # type: ignore[no-untyped-def]
    c, p = hostile
    atk, rem, loc = p["atk"], p["rem"], p["loc"]
    encap = ENCAP_VXLAN if c.encap is Encap.VXLAN else ENCAP_GENEVE
    sniff = Sniffer(loc.netns)
    before = c.nodes[0].counters()["drops"]
    to_loc = {"dst": loc.mac}
    frames = {
        # ARP replies: a local pod's address, and a remote pod's, at the evil MAC
        "decap_spoofed_arp": [
            bytes(
                Ether(src=EVIL, **to_loc)
                / ARP(op=2, hwsrc=EVIL, psrc=ip, hwdst=loc.mac, pdst=loc.ip4)
            )
            for ip in (atk.ip4, rem.ip4)
        ],
        # an NA for the local attacker's address, at the evil MAC
        "decap_spoofed_nd": [
            bytes(
                Ether(src=EVIL, **to_loc)
                / IPv6(src=atk.ip6, dst=loc.ip6, hlim=255)
                / ICMPv6ND_NA(tgt=atk.ip6, R=0, S=0, O=1)
                / ICMPv6NDOptDstLLAddr(lladdr=EVIL)
            )
        ],
        # the same behind nine headers
        "ipv6_header_chain": [nine_header_na(EVIL, loc.mac, rem.ip6, loc.ip6, atk.ip6)],
        # a frame from a local pod's MAC, arriving from the underlay
        "decap_spoofed_mac": [
            bytes(
                Ether(src=atk.mac, **to_loc)
                / IP(src=atk.ip4, dst=loc.ip4)
                / UDP(sport=9, dport=9)
                / Raw(b"not from atk")
            )
        ],
    }
    member = c.node_ns[1].socket(socket.AF_INET, socket.SOCK_DGRAM)
    member.bind((underlay_ip(1), 0))  # node 1's address: a member VTEP of VNI 100
    dst = (underlay_ip(0), c.encap.default_port)
    for batch in frames.values():
        for f in batch:
            member.sendto(tunnel(encap, 100, f), dst)
    want = {reason: len(batch) for reason, batch in frames.items()}
    assert wait_for(lambda: drop_deltas(c, 0, before, want) == want), drop_deltas(
        c, 0, before, want
    )
    member.sendto(tunnel(encap, 100, udp_marker(rem, loc, b"marker-vtep")), dst)
    seen = sniff.until(b"marker-vtep")
    assert not [f for batch in frames.values() for f in batch if arrived(f, seen)]
    n = neighbours(loc.netns)
    assert (n[atk.ip4], n[rem.ip4], n[atk.ip6]) == (atk.mac, rem.mac, atk.mac)
    member.close()


# ---- frames above the pod MTU; a datagram the underlay refuses ----


@contextmanager
def stopped(c: Cluster, node: int) -> Iterator[None]:
    """Frames sent while a node's workers are stopped wait in its TAPs and are
    then read in one burst: one send queue, one flush."""
    c.nodes[node].stop()
    try:
        yield
    finally:
        c.nodes[node].start()


@pytest.mark.root
@pytest.mark.parametrize("encap", ENCAPS)
def test_a_frame_above_the_pod_mtu_is_oversize_and_takes_no_frame_with_it(
    overlay_topology: Topology, encap: Encap
) -> None:
    with Cluster(overlay_topology, encap) as c:
        c.add_network(100, "blue")
        a = c.add_pod(0, 100, "10.244.1.2/24")
        b = c.add_pod(1, 100, "10.244.1.3/24")
        c.start()
        a.netns.link_set("eth0", mtu=1500)  # the pod lies about its MTU
        sniff = Sniffer(b.netns)

        def frame(payload: bytes) -> bytes:
            return bytes(
                Ether(src=a.mac, dst=b.mac)
                / IP(src=a.ip, dst=b.ip)
                / UDP(sport=7, dport=7)
                / Raw(payload)
            )

        big = frame(b"B" * (1480 - 42))  # above the pod MTU (1450), below the underlay's
        assert c.nodes[0].pod_mtu() + 14 < len(big) <= 1500
        before = c.nodes[0].counters()["drops"]
        with stopped(c, 0):
            for f in (big, frame(b"small-1"), frame(b"small-2")):
                send_frames(a.netns, f)
        seen = b"".join(sniff.until(b"small-2"))  # small-1 and -2 may come coalesced (GRO)
        assert b"small-1" in seen and b"B" * 64 not in seen
        want = {"frame_oversize": 1, "udp_send_failed": 0}
        assert wait_for(lambda: drop_deltas(c, 0, before, want) == want)


@pytest.mark.root
def test_a_datagram_the_underlay_refuses_costs_only_itself(overlay_topology: Topology) -> None:
    with Cluster(overlay_topology, Encap.VXLAN) as c:
        c.add_network(100, "blue")
        a = c.add_pod(0, 100, "10.244.1.2/24")
        b = c.add_pod(1, 100, "10.244.1.3/24")
        phantom = "02:00:00:00:09:09"
        c.nodes[0].network(100).add_remote(phantom, "198.18.0.9")
        # node 0's firewall refuses what goes to 198.18.0.9: sendmmsg fails there (EPERM)
        c.node_ns[0].run(
            ["nft", "-f", "-"],
            input="table inet t {\n chain o {\n type filter hook output priority 0;\n"
            " ip daddr 198.18.0.9 drop\n }\n}\n",
        )
        c.start()
        sniff = Sniffer(b.netns)

        def frame(dst: str, payload: bytes) -> bytes:
            return bytes(
                Ether(src=a.mac, dst=dst)
                / IP(src=a.ip, dst=b.ip)
                / UDP(sport=7, dport=7)
                / Raw(payload)
            )

        before = c.nodes[0].counters()["drops"]
        with stopped(c, 0):
            for f in (frame(phantom, b"lost"), frame(b.mac, b"kept-1"), frame(b.mac, b"kept-2")):
                send_frames(a.netns, f)
        seen = b"".join(sniff.until(b"kept-2"))  # may come coalesced (GRO)
        assert b"kept-1" in seen and b"lost" not in seen
        want = {"udp_send_failed": 1, "frame_oversize": 0}
        assert wait_for(lambda: drop_deltas(c, 0, before, want) == want)


@pytest.mark.root
def test_a_super_frame_cut_above_the_pod_mtu_is_oversize(overlay_topology: Topology) -> None:
    """A pod that raises its MTU hands the node a USO super-frame whose segments
    fit the underlay's MTU but not the pod MTU: one frame_oversize, nothing sent."""
    with Cluster(overlay_topology, Encap.VXLAN) as c:
        c.add_network(100, "blue")
        a = c.add_pod(0, 100, "10.244.1.2/24")
        b = c.add_pod(1, 100, "10.244.1.3/24")
        c.start()
        if not c.nodes[0].counters()["offloads"]["tap_uso"]:
            pytest.skip("this kernel's TAP has no USO")
        a.netns.link_set("eth0", mtu=1500)
        sniff = Sniffer(b.netns)
        tx = a.netns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        before = c.nodes[0].counters()["drops"]
        seg = 1450  # 14 + 20 + 8 + 1450 = 1492 bytes a segment: 28 above the pod MTU's 1464
        tx.setsockopt(socket.IPPROTO_UDP, 103, seg)  # UDP_SEGMENT
        tx.sendto(b"S" * (3 * seg), (b.ip, 9))
        want = {"frame_oversize": 1, "udp_send_failed": 0}
        assert wait_for(lambda: drop_deltas(c, 0, before, want) == want), drop_deltas(
            c, 0, before, want
        )
        tx.setsockopt(socket.IPPROTO_UDP, 103, 0)
        tx.sendto(b"marker-after", (b.ip, 9))
        seen = b"".join(sniff.until(b"marker-after"))
        assert b"S" * 64 not in seen
        tx.close()
