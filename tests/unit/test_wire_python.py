"""overlay.wire, the pure-Python reference codec, against scapy (and tshark).

scapy builds the packets and dissects ours; the expected values come from
what each generator chose, not from overlay.wire, so the two cannot agree by
sharing a mistake.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
    in6_chksum,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw
from scapy.utils import checksum as scapy_checksum
from scapy.utils import wrpcap

from overlay import wire
from overlay.wire import Drop, GeneveOption, Tunnel

COUNTERS_DEF = Path(__file__).resolve().parents[2] / "native" / "counters.def"

settings.register_profile(
    "wire", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
WIRE = settings.get_profile("wire")

macs = st.binary(min_size=6, max_size=6)
ip4s = st.binary(min_size=4, max_size=4)
ip6s = st.binary(min_size=16, max_size=16)
ports = st.integers(0, 0xFFFF)
vnis = st.integers(0, wire.VNI_MAX)


def ip4(b: bytes) -> str:
    return ".".join(str(x) for x in b)


def ip6(b: bytes) -> str:
    return str(ipaddress.IPv6Address(b))


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def mac(b: bytes) -> str:
    return wire.mac_to_str(b)


def drop_reason(fn: Any, *args: Any) -> str:
    with pytest.raises(Drop) as exc:
        fn(*args)
    return exc.value.reason


# ---- constants and reasons ----


def test_every_drop_reason_is_a_counters_def_name() -> None:
    names = set(re.findall(r'OVL_COUNTER\(\w+,\s*"(\w+)",\s*OVL_DROP', COUNTERS_DEF.read_text()))
    assert set(wire.DROP_REASONS) <= names


def test_constants_match_overlay_h() -> None:
    header = (COUNTERS_DEF.parent / "overlay.h").read_text()
    defines = {m[0]: int(m[1]) for m in re.findall(r"#define (OVL_\w+) (\d+)", header)}
    assert defines["OVL_ENCAP_VXLAN"] == wire.VXLAN
    assert defines["OVL_ENCAP_GENEVE"] == wire.GENEVE
    assert defines["OVL_VXLAN_PORT"] == wire.VXLAN_PORT == 4789
    assert defines["OVL_GENEVE_PORT"] == wire.GENEVE_PORT == 6081
    assert defines["OVL_GENEVE_OPTS_MAX"] == wire.GENEVE_OPTS_MAX
    assert defines["OVL_VNI_MAX"] == wire.VNI_MAX
    assert defines["OVL_ETH_P_TEB"] == wire.ETH_P_TEB
    assert defines["OVL_GENEVE_F_OAM"] == wire.GENEVE_F_OAM
    assert defines["OVL_GENEVE_F_CRITICAL"] == wire.GENEVE_F_CRITICAL
    assert defines["OVL_GENEVE_TYPE_CRITICAL"] == wire.GENEVE_TYPE_CRITICAL
    for name in ("NONE", "ARP", "IPV4", "IPV6"):
        assert defines[f"OVL_L3_{name}"] == getattr(wire, f"L3_{name}")


def test_drop_carries_its_reason() -> None:
    d = Drop("geneve_oam")
    assert d.reason == "geneve_oam" and str(d) == "geneve_oam"


# ---- MAC helpers ----


@given(macs)
def test_mac_round_trip(b: bytes) -> None:
    s = wire.mac_to_str(b)
    assert s == ":".join(f"{x:02x}" for x in b)
    assert wire.mac_to_bytes(s) == b
    assert wire.mac_to_bytes(s.upper().replace(":", "-")) == b


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "02:00:00:00:00",
        "02:00:00:00:00:01:02",
        "0g:00:00:00:00:01",
        "02:00-00:00:00:01",
        "0200.0000.0001",
        "2:0:0:0:0:1",
        " 02:00:00:00:00:01",
    ],
)
def test_mac_to_bytes_names_the_bad_value(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        wire.mac_to_bytes(bad)


@pytest.mark.parametrize("bad", [b"", b"\x02\0\0\0\0", b"\x02\0\0\0\0\0\0"])
def test_mac_to_str_names_the_bad_value(bad: bytes) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        wire.mac_to_str(bad)


# ---- VXLAN ----


@given(vni=vnis, flags=st.integers(0, 255))
def test_vxlan_encode_matches_scapy(vni: int, flags: int) -> None:
    # Tunnel.flags is ignored: we always send I alone, as the Linux device does.
    assert wire.encode(wire.VXLAN, Tunnel(vni, flags=flags)) == bytes(VXLAN(flags=0x08, vni=vni))


# scapy lays out the GBP (0x80) and GPE (0x04) extensions in the reserved bytes; with both
# flags its conditional fields overlap and the header is no longer 8 bytes.
vxlan_flags = st.integers(0, 255).filter(lambda f: f & 0x84 != 0x84)


@given(vni=vnis, flags=vxlan_flags, r2=st.integers(0, 255), inner=st.binary(max_size=64))
def test_vxlan_decode_matches_scapy(vni: int, flags: int, r2: int, inner: bytes) -> None:
    raw = bytes(VXLAN(flags=flags, vni=vni, reserved2=r2) / Raw(inner))
    assert len(raw) == 8 + len(inner)
    if not flags & 0x08:
        assert drop_reason(wire.decode, wire.VXLAN, raw) == "vxlan_bad_flags"
        return
    t, off = wire.decode(wire.VXLAN, raw)
    assert (t.vni, t.flags, t.protocol, t.options, off) == (vni, flags, 0x6558, [], 8)
    assert raw[off:] == inner


@given(st.binary(max_size=7))
def test_vxlan_shorter_than_8_bytes_is_truncated(data: bytes) -> None:
    assert drop_reason(wire.decode, wire.VXLAN, data) == "vxlan_truncated"


def test_vxlan_reserved_bits_are_ignored() -> None:
    t, off = wire.decode(wire.VXLAN, bytes.fromhex("ffffffff123456ff"))
    assert (t.vni, t.flags, off) == (0x123456, 0xFF, 8)


# ---- Geneve ----

geneve_options = st.builds(
    GeneveOption,
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFF),
    st.integers(0, 31).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
)


@st.composite
def option_lists(draw: st.DrawFn) -> list[GeneveOption]:
    opts = draw(st.lists(geneve_options, max_size=8))
    while sum(4 + len(o.data) for o in opts) > wire.GENEVE_OPTS_MAX:
        opts.pop()
    return opts


def scapy_options(opts: list[GeneveOption]) -> list[GeneveOptions]:
    return [GeneveOptions(classid=o.cls, type=o.type, data=o.data) for o in opts]


@given(vni=vnis, oam=st.booleans(), opts=option_lists(), proto=st.sampled_from([0x6558, 0x0800]))
def test_geneve_encode_matches_scapy(
    vni: int, oam: bool, opts: list[GeneveOption], proto: int
) -> None:
    critical = any(o.type & 0x80 for o in opts)
    # The C flag comes from the options, whatever Tunnel.flags says.
    flags = (0x80 if oam else 0) | 0x40 * (not critical)
    ours = wire.encode(wire.GENEVE, Tunnel(vni, proto, flags, opts))
    theirs = bytes(
        GENEVE(
            proto=proto, vni=vni, oam=int(oam), critical=int(critical), options=scapy_options(opts)
        )
    )
    assert ours == theirs


@given(
    vni=vnis,
    opts=option_lists(),
    rsvd=st.integers(0, 63),
    rsvd2=st.integers(0, 255),
    critical_flag=st.booleans(),
    inner=st.binary(max_size=64),
)
def test_geneve_decode_matches_scapy(
    vni: int, opts: list[GeneveOption], rsvd: int, rsvd2: int, critical_flag: bool, inner: bytes
) -> None:
    raw = bytes(
        GENEVE(
            proto=0x6558,
            vni=vni,
            critical=int(critical_flag),
            reserved=rsvd,
            reserved2=rsvd2,
            options=scapy_options(opts),
        )
        / Raw(inner)
    )
    t, off = wire.decode(wire.GENEVE, raw)
    # Reserved bits are ignored; the C bit is reported as received, not trusted.
    assert (t.vni, t.protocol, t.flags) == (vni, 0x6558, 0x40 * critical_flag)
    assert t.options == opts
    assert off == 8 + sum(4 + len(o.data) for o in opts) and raw[off:] == inner
    dissected = GENEVE(raw)
    assert [(o.classid, o.type, o.data) for o in dissected.options] == [
        (o.cls, o.type, o.data) for o in t.options
    ]


@given(opts=option_lists(), rbits=st.lists(st.integers(0, 7), min_size=8, max_size=8))
def test_option_reserved_bits_are_ignored_and_sent_as_zero(
    opts: list[GeneveOption], rbits: list[int]
) -> None:
    area = bytearray(wire.encode_options(opts))
    off = 0
    for i, o in enumerate(opts):
        area[off + 3] |= rbits[i] << 5
        off += 4 + len(o.data)
    assert wire.decode_options(bytes(area)) == opts
    assert wire.encode_options(wire.decode_options(bytes(area))) == wire.encode_options(opts)


def test_geneve_option_helpers() -> None:
    o = GeneveOption(0x0102, 0x85, b"abcd")
    assert o.critical and not GeneveOption(0x0102, 0x05).critical
    assert o.key == wire.option_key(0x0102, 0x05) == 0x010205
    assert o.to_bytes() == bytes.fromhex("01028501") + b"abcd"
    assert wire.decode_options(o.to_bytes() + GeneveOption(7, 1).to_bytes()) == [
        o,
        GeneveOption(7, 1),
    ]


@pytest.mark.parametrize(
    "kwargs, field_name",
    [
        ({"cls": 0x10000, "type": 0}, "cls"),
        ({"cls": -1, "type": 0}, "cls"),
        ({"cls": 0, "type": 256}, "type"),
        ({"cls": 0, "type": 0, "data": b"abc"}, "data"),
        ({"cls": 0, "type": 0, "data": bytes(128)}, "data"),
    ],
)
def test_geneve_option_rejects_bad_fields(kwargs: dict[str, Any], field_name: str) -> None:
    with pytest.raises(ValueError, match=f"GeneveOption.{field_name}"):
        GeneveOption(**kwargs)


def test_encode_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Tunnel.vni"):
        wire.encode(wire.VXLAN, Tunnel(wire.VNI_MAX + 1))
    with pytest.raises(ValueError, match="Tunnel.vni"):
        wire.encode(wire.GENEVE, Tunnel(-1))
    big = [GeneveOption(1, 1, bytes(120))] * 3  # 372 bytes of options
    with pytest.raises(ValueError, match="Tunnel.options"):
        wire.encode(wire.GENEVE, Tunnel(1, options=big))
    with pytest.raises(ValueError, match="encap 3"):
        wire.encode(3, Tunnel(1))
    with pytest.raises(ValueError, match="encap 0"):
        wire.decode(0, bytes(8))


def test_geneve_largest_option_area_round_trips() -> None:
    opts = [GeneveOption(1, 1, bytes(124)), GeneveOption(2, 2, bytes(116))]  # 128 + 120 = 248
    opts.append(GeneveOption(3, 3))  # + 4 = 252
    raw = wire.encode(wire.GENEVE, Tunnel(5, options=opts))
    assert raw[0] == 63 and len(raw) == 260
    assert wire.decode(wire.GENEVE, raw) == (Tunnel(5, 0x6558, 0, opts), 260)


def geneve_hdr(first: int = 0, flags: int = 0, proto: int = 0x6558, opts: bytes = b"") -> bytes:
    return bytes([first, flags]) + proto.to_bytes(2, "big") + b"\x00\x00\x07\x00" + opts


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "geneve_truncated"),
        (geneve_hdr()[:7], "geneve_truncated"),
        (geneve_hdr(first=0x40), "geneve_bad_version"),
        (geneve_hdr(first=0xC0), "geneve_bad_version"),
        # the version is read before anything it guards, even a too-short option area
        (geneve_hdr(first=0x81), "geneve_bad_version"),
        (geneve_hdr(first=1), "geneve_options_truncated"),
        (geneve_hdr(first=2, opts=bytes(4)), "geneve_options_truncated"),
        (geneve_hdr(first=1, opts=bytes.fromhex("00010101")), "geneve_option_overrun"),
        (geneve_hdr(first=2, opts=bytes.fromhex("0001011f") + bytes(4)), "geneve_option_overrun"),
        (geneve_hdr(first=1, proto=0x0800), "geneve_options_truncated"),
        (geneve_hdr(proto=0x0800), "geneve_bad_protocol"),
        (geneve_hdr(proto=0x86DD), "geneve_bad_protocol"),
        (geneve_hdr(flags=0x80), "geneve_oam"),
        # OAM is judged after structure...
        (geneve_hdr(first=1, flags=0x80, opts=bytes.fromhex("00010102")), "geneve_option_overrun"),
        # ...and before the protocol: a control packet is counted as such
        (geneve_hdr(flags=0x80, proto=0x0800), "geneve_oam"),
    ],
)
def test_geneve_malformed_is_dropped_with_its_reason(raw: bytes, reason: str) -> None:
    assert drop_reason(wire.decode, wire.GENEVE, raw) == reason


@given(vni=vnis, opts=option_lists().filter(bool), data=st.data())
def test_geneve_truncated_anywhere_is_dropped(
    vni: int, opts: list[GeneveOption], data: st.DataObject
) -> None:
    raw = wire.encode(wire.GENEVE, Tunnel(vni, options=opts))
    n = data.draw(st.integers(0, len(raw) - 1))
    expected = "geneve_truncated" if n < 8 else "geneve_options_truncated"
    assert drop_reason(wire.decode, wire.GENEVE, raw[:n]) == expected


CRIT = GeneveOption(0x0101, 0x81, b"abcd")  # critical, key 0x010101
PLAIN = GeneveOption(0x0101, 0x02, b"")


def test_unknown_critical_option_needs_known_options() -> None:
    raw = wire.encode(wire.GENEVE, Tunnel(9, options=[PLAIN, CRIT]))
    assert raw[1] == 0x40  # C set
    # decode alone only bounds-checks, as ovl_wire_decode does
    assert wire.decode(wire.GENEVE, raw)[0].options == [PLAIN, CRIT]
    assert drop_reason(wire.decode, wire.GENEVE, raw, ()) == "geneve_unknown_critical_option"
    assert drop_reason(wire.decode, wire.GENEVE, raw, {0x010181}) == (
        "geneve_unknown_critical_option"
    )  # keys have the critical bit cleared
    assert wire.decode(wire.GENEVE, raw, {0x010101})[0].vni == 9
    # a non-critical option need not be known
    plain_only = wire.encode(wire.GENEVE, Tunnel(9, options=[PLAIN]))
    assert plain_only[1] == 0 and wire.decode(wire.GENEVE, plain_only, ())[1] == 12


def test_check_options_order_structure_before_critical() -> None:
    area = CRIT.to_bytes() + bytes.fromhex("00020001")  # unknown critical, then an overrun
    assert drop_reason(wire.check_options, area, ()) == "geneve_option_overrun"
    assert drop_reason(wire.check_options, CRIT.to_bytes(), ()) == "geneve_unknown_critical_option"
    wire.check_options(CRIT.to_bytes(), [CRIT.key])
    wire.check_options(b"", ())
    assert drop_reason(wire.check_options, b"\x00\x01\x02", ()) == "geneve_option_overrun"


def test_oam_is_judged_before_the_critical_rule() -> None:
    raw = bytearray(wire.encode(wire.GENEVE, Tunnel(9, flags=0x80, options=[CRIT])))
    assert raw[1] == 0xC0
    assert drop_reason(wire.decode, wire.GENEVE, bytes(raw), ()) == "geneve_oam"


@given(opts=option_lists(), known=st.sets(st.integers(0, 0xFFFFFF), max_size=4), pick=st.data())
def test_check_options_drops_exactly_unknown_critical(
    opts: list[GeneveOption], known: set[int], pick: st.DataObject
) -> None:
    crit = [o.key for o in opts if o.critical]
    know_all: bool = pick.draw(st.booleans())
    if crit and know_all:
        known |= set(crit)
    area = wire.encode_options(opts)
    if all(k in known for k in crit):
        wire.check_options(area, known)
    else:
        assert drop_reason(wire.check_options, area, known) == "geneve_unknown_critical_option"


def test_tshark_dissects_our_tunnel_headers(tmp_path: Path) -> None:
    """Wireshark's dissectors as a second, independent reader of our headers."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    inner = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP() / UDP()
    vx = wire.encode(wire.VXLAN, Tunnel(0xABCDEF))
    gn = wire.encode(
        wire.GENEVE, Tunnel(0x123456, flags=0x80, options=[GeneveOption(0x0102, 0x83, b"wxyz")])
    )
    outer = Ether() / IP(src="10.0.0.1", dst="10.0.0.2")
    pkts = [
        outer / UDP(sport=50000, dport=4789) / Raw(vx + bytes(inner)),
        outer / UDP(sport=50000, dport=6081) / Raw(gn + bytes(inner)),
    ]
    pcap = tmp_path / "tunnels.pcap"
    wrpcap(str(pcap), pkts)
    fields = [
        "vxlan.flag_i",
        "vxlan.vni",
        "geneve.version",
        "geneve.flags.oam",
        "geneve.flags.critical",
        "geneve.proto_type",
        "geneve.vni",
        "geneve.option.class",
        "geneve.option.type.critical",
        "geneve.option.length",
        "eth.src",
    ]
    cmd = ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=|", "-E", "occurrence=l"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.strip().splitlines()]
    assert rows[0]["vxlan.flag_i"] in ("True", "1") and int(rows[0]["vxlan.vni"], 0) == 0xABCDEF
    g = rows[1]
    assert int(g["geneve.version"], 0) == 0 and int(g["geneve.vni"], 0) == 0x123456
    assert g["geneve.flags.oam"] in ("True", "1") and g["geneve.flags.critical"] in ("True", "1")
    assert int(g["geneve.proto_type"], 0) == 0x6558
    assert int(g["geneve.option.class"], 0) == 0x0102
    assert g["geneve.option.type.critical"] in ("True", "1")
    assert g["eth.src"] == "02:00:00:00:00:01"  # the inner frame starts where we said


# ---- frames ----


@dataclass
class Built:
    """A generated frame and what parse_frame must find in it."""

    pkt: Packet
    expect: dict[str, Any] = field(default_factory=dict)
    #: (lo, hi, reason): a cut to n bytes with lo <= n < hi is dropped with reason
    cuts: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def raw(self) -> bytes:
        return bytes(self.pkt)

    def reason_for_cut(self, n: int) -> str | None:
        for lo, hi, reason in self.cuts:
            if lo <= n < hi:
                return reason
        return None


@st.composite
def l2(draw: st.DrawFn) -> tuple[Packet, dict[str, Any], list[tuple[int, int, str]], int]:
    dst, src = draw(macs), draw(macs)
    pkt: Packet = Ether(dst=mac(dst), src=mac(src))
    expect: dict[str, Any] = {"dst": dst, "src": src}
    cuts = [(0, 14, "frame_too_short")]
    off = 14
    for i in range(draw(st.integers(0, 2))):
        tpid = draw(st.sampled_from([0x8100, 0x88A8]))
        prio, dei = draw(st.integers(0, 7)), draw(st.integers(0, 1))
        vid = draw(st.integers(0, 4095))
        layer = Dot1Q if tpid == 0x8100 else Dot1AD
        if i == 0:
            pkt = Ether(dst=mac(dst), src=mac(src), type=tpid)
            expect.update(has_vlan=True, vlan_tpid=tpid, vlan_tci=prio << 13 | dei << 12 | vid)
        else:
            pkt.lastlayer().type = tpid
        pkt = pkt / layer(prio=prio, dei=dei, vlan=vid)
        cuts.append((off, off + 4, "vlan_truncated"))
        off += 4
    expect["l3_off"] = off
    return pkt, expect, cuts, off


def _set_type(pkt: Packet, etype: int) -> None:
    pkt.lastlayer().type = etype


@st.composite
def arp_frames(draw: st.DrawFn) -> Built:
    pkt, expect, cuts, off = draw(l2())
    op, sha, spa, tha, tpa = (
        draw(st.integers(0, 0xFFFF)),
        draw(macs),
        draw(ip4s),
        draw(macs),
        draw(ip4s),
    )
    _set_type(pkt, 0x0806)
    pkt = pkt / ARP(op=op, hwsrc=mac(sha), psrc=ip4(spa), hwdst=mac(tha), pdst=ip4(tpa))
    expect.update(
        l3=wire.L3_ARP,
        ethertype=0x0806,
        arp_op=op,
        arp_sha=sha,
        arp_spa=spa,
        arp_tha=tha,
        arp_tpa=tpa,
    )
    cuts.append((off, off + 28, "arp_truncated"))
    return Built(pkt, expect, cuts)


def l4(draw: st.DrawFn, proto: int) -> Packet:
    sport, dport = draw(ports), draw(ports)
    if proto == 6:
        return TCP(sport=sport, dport=dport, flags=draw(st.integers(0, 255)))
    if proto == 17:
        return UDP(sport=sport, dport=dport)
    if proto == 132:
        return SCTP(sport=sport, dport=dport)
    if proto == 1:
        return ICMP(type=draw(st.integers(0, 255)), code=draw(st.integers(0, 255)))
    return Raw(draw(st.binary(max_size=12)))


def l4_expect(l3: int, proto: int, upper: Packet) -> dict[str, Any]:
    """What ``parse_frame`` reads from a whole L4 header built by ``l4``."""
    if proto in (17, 132):
        return {"sport": upper.sport, "dport": upper.dport}
    if proto == 6:
        return {"sport": upper.sport, "dport": upper.dport, "tcp_flags": int(upper.flags)}
    if proto == 1 and l3 == wire.L3_IPV4:
        return {"icmp_type": upper.type, "icmp_code": upper.code}
    return {}


@st.composite
def ipv4_frames(draw: st.DrawFn) -> Built:
    pkt, expect, cuts, off = draw(l2())
    src, dst = draw(ip4s), draw(ip4s)
    proto = draw(st.sampled_from([6, 17, 132, 1, 47, 58]))
    frag = draw(st.sampled_from([0, 0, 0, 1, 185, 0x1FFF]))
    flags = draw(st.sampled_from([0, 1, 2]))
    opt_words = draw(st.integers(0, 10))
    ip = IP(src=ip4(src), dst=ip4(dst), proto=proto, frag=frag, flags=flags)
    if opt_words:
        ip.options = IPOption(b"\x01" * (4 * opt_words))  # NOPs
    _set_type(pkt, 0x0800)
    upper = l4(draw, proto)
    pkt = pkt / ip / upper
    ihl = 20 + 4 * opt_words
    expect.update(
        l3=wire.L3_IPV4,
        ethertype=0x0800,
        ip_proto=proto,
        ip_src=src + bytes(12),
        ip_dst=dst + bytes(12),
    )
    cuts.append((off, off + ihl, "ipv4_truncated"))
    if frag:
        expect.update(is_fragment=True)
    else:
        expect.update(l4_off=off + ihl, **l4_expect(wire.L3_IPV4, proto, upper))
    return Built(pkt, expect, cuts)


EXT = {0: IPv6ExtHdrHopByHop, 43: IPv6ExtHdrRouting, 60: IPv6ExtHdrDestOpt}


@st.composite
def ipv6_frames(draw: st.DrawFn) -> Built:
    pkt, expect, cuts, off = draw(l2())
    src, dst = draw(ip6s), draw(ip6s)
    _set_type(pkt, 0x86DD)
    pkt = pkt / IPv6(src=ip6(src), dst=ip6(dst))
    expect.update(l3=wire.L3_IPV6, ethertype=0x86DD, ip_src=src, ip_dst=dst)
    cuts.append((off, off + 40, "ipv6_truncated"))
    off += 40
    proto = draw(st.sampled_from([6, 17, 132, 58, 59]))
    chain = draw(st.lists(st.sampled_from([0, 43, 60, 44, 51]), max_size=4))
    offsets = [draw(st.sampled_from([0, 0, 1, 8191])) if nh == 44 else 0 for nh in chain]
    if any(offsets):  # nothing after a non-first fragment's header is walked
        chain = chain[: [i for i, o in enumerate(offsets) if o][0] + 1]
    nhs = chain + [proto]
    fragmented = False  # a non-first fragment
    first_fragment = False  # a fragment header with offset 0 (first or atomic)
    for i, nh in enumerate(chain):
        if nh == 44:
            pkt = pkt / IPv6ExtHdrFragment(offset=offsets[i], m=draw(st.integers(0, 1)))
            cuts.append((off, off + 8, "ipv6_truncated"))
            off += 8
            if offsets[i]:
                fragmented = True
                break
            first_fragment = True
        else:
            ext: Packet
            if nh == 43:
                n_addr = draw(st.integers(0, 2))
                ext = IPv6ExtHdrRouting(addresses=["2001:db8::1"] * n_addr)
            elif nh == 51:  # AH: length in 4-byte words, minus 2 (RFC 4302)
                icv = bytes(4 * draw(st.integers(0, 4)))
                ext = AH(nh=nhs[i + 1], payloadlen=(12 + len(icv)) // 4 - 2, spi=1, icv=icv)
            else:
                ext = EXT[nh](options=[PadN(optdata=bytes(draw(st.integers(0, 20))))])
            pkt = pkt / ext
            hlen = len(ext)
            assert hlen % 4 == 0
            cuts.append((off, off + hlen, "ipv6_truncated"))
            off += hlen
    if proto == 58:
        upper: Packet = ICMPv6EchoRequest()
    elif proto == 59:
        upper = Raw(b"")
        pkt.lastlayer().nh = 59
    else:
        upper = l4(draw, proto)
    if fragmented:
        pkt.lastlayer().nh = proto
        pkt = pkt / Raw(draw(st.binary(max_size=16)))
        expect.update(ip_proto=proto, is_fragment=True)
        return Built(pkt, expect, cuts)
    pkt = pkt / upper
    expect.update(ip_proto=proto, l4_off=off)
    if first_fragment and proto in wire.UPPER_HLEN:  # RFC 7112: the whole chain, or nothing
        cuts.append((off, off + wire.UPPER_HLEN[proto], "ipv6_header_chain"))
    if proto == 58:
        cuts.append((off, off + 4, "icmpv6_truncated"))
        expect.update(icmp_type=128)
    expect.update(l4_expect(wire.L3_IPV6, proto, upper))
    return Built(pkt, expect, cuts)


@st.composite
def nd_frames(draw: st.DrawFn) -> Built:
    pkt, expect, cuts, off = draw(l2())
    src, dst, target = draw(ip6s), draw(ip6s), draw(ip6s)
    kind = draw(st.sampled_from([133, 134, 135, 136, 137]))
    _set_type(pkt, 0x86DD)
    pkt = pkt / IPv6(src=ip6(src), dst=ip6(dst), hlim=255)
    nd_off = off + 40
    fixed = {133: 8, 134: 16, 135: 24, 136: 24, 137: 40}[kind]
    msg: Packet = {
        133: lambda: ICMPv6ND_RS(),
        134: lambda: ICMPv6ND_RA(),
        135: lambda: ICMPv6ND_NS(tgt=ip6(target)),
        136: lambda: ICMPv6ND_NA(tgt=ip6(target), R=1, S=1, O=0),
        137: lambda: ICMPv6ND_Redirect(tgt=ip6(target), dst=ip6(dst)),
    }[kind]()
    pkt = pkt / msg
    expect.update(
        l3=wire.L3_IPV6,
        ethertype=0x86DD,
        ip_src=src,
        ip_dst=dst,
        ip_proto=58,
        l4_off=nd_off,
        icmp_type=kind,
    )
    if kind in (135, 136, 137):
        expect["nd_target"] = target
    cuts += [
        (off, off + 40, "ipv6_truncated"),
        (nd_off, nd_off + 4, "icmpv6_truncated"),
        (nd_off + 4, nd_off + fixed, "nd_truncated"),
    ]
    want = {133: 1, 134: 1, 135: 1, 136: 2, 137: 2}[kind]
    opt_off = nd_off + fixed
    for opt_kind in draw(st.lists(st.sampled_from(["sll", "tll", "mtu", "prefix"]), max_size=4)):
        ll = draw(macs)
        opt: Packet
        if opt_kind == "sll":
            opt = ICMPv6NDOptSrcLLAddr(lladdr=mac(ll))
        elif opt_kind == "tll":
            opt = ICMPv6NDOptDstLLAddr(lladdr=mac(ll))
        elif opt_kind == "mtu":
            opt = ICMPv6NDOptMTU(mtu=1450)
        else:
            opt = ICMPv6NDOptPrefixInfo(prefix="2001:db8::")
        pkt = pkt / opt
        if {"sll": 1, "tll": 2}.get(opt_kind) == want and "nd_lladdr" not in expect:
            expect.update(nd_has_lladdr=True, nd_lladdr=ll)
        cuts.append((opt_off + 1, opt_off + len(opt), "nd_truncated"))
        opt_off += len(opt)
    return Built(pkt, expect, cuts)


@st.composite
def other_frames(draw: st.DrawFn) -> Built:
    pkt, expect, _cuts, _off = draw(l2())
    etype = draw(st.sampled_from([0x88CC, 0x8863, 0x0842, 0x0100, 0x88E5]))
    _set_type(pkt, etype)
    pkt = pkt / Raw(draw(st.binary(max_size=40)))
    expect.update(ethertype=etype)
    return Built(pkt, expect, _cuts)


frames = st.one_of(arp_frames(), ipv4_frames(), ipv6_frames(), nd_frames(), other_frames())


def assert_frame(f: wire.Frame, expect: dict[str, Any]) -> None:
    want = wire.Frame(**expect)  # every field not named keeps its zero
    assert f == want


@settings(WIRE)
@given(frames)
def test_parse_frame_finds_what_was_built(b: Built) -> None:
    assert_frame(wire.parse_frame(b.raw), b.expect)


@settings(WIRE)
@given(frames, st.data())
def test_frame_cut_short_is_dropped_exactly_where_a_header_is_cut(
    b: Built, data: st.DataObject
) -> None:
    raw = b.raw
    n = data.draw(st.integers(0, len(raw)))
    reason = b.reason_for_cut(n)
    if reason is None:
        f = wire.parse_frame(raw[:n])
        assert f.l3_off == b.expect["l3_off"] and f.l4_off <= n
        if n < len(raw) and f.l4_off and n - f.l4_off < 4:
            assert (f.sport, f.dport) == (0, 0)  # a cut L4 header is not a drop: no ports
    else:
        assert drop_reason(wire.parse_frame, raw[:n]) == reason


def eth(etype: int, tags: bytes = b"") -> bytes:
    return bytes.fromhex("020000000002020000000001") + tags + etype.to_bytes(2, "big")


def dest_opts(pkt: Packet, n: int) -> Packet:
    """pkt followed by n empty destination-options headers."""
    for _ in range(n):
        pkt = pkt / IPv6ExtHdrDestOpt()
    return pkt


ARP_REQ = (
    bytes.fromhex("0001080006040001")
    + bytes.fromhex("020000000001")
    + bytes([10, 0, 0, 1])
    + bytes(6)
    + bytes([10, 0, 0, 2])
)
IP4 = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2))
NS = bytes(IPv6(src="fe80::1", dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt="fe80::2"))


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "frame_too_short"),
        (eth(0x0800)[:13], "frame_too_short"),
        (eth(0x8100), "vlan_truncated"),
        (eth(0x8100) + b"\x00\x05\x08", "vlan_truncated"),
        (eth(0x88A8, b"") + b"\x00\x05\x81\x00", "vlan_truncated"),
        (eth(0x88A8) + b"\x00\x05\x81\x00\x00\x07", "vlan_truncated"),
        (eth(0x0806) + ARP_REQ[:27], "arp_truncated"),
        (eth(0x0806) + b"\x00\x06" + ARP_REQ[2:], "arp_truncated"),  # IEEE 802 htype
        (eth(0x0806) + ARP_REQ[:2] + b"\x86\xdd" + ARP_REQ[4:], "arp_truncated"),
        (eth(0x0806) + ARP_REQ[:4] + b"\x08" + ARP_REQ[5:], "arp_truncated"),
        (eth(0x0806) + ARP_REQ[:5] + b"\x10" + ARP_REQ[6:], "arp_truncated"),
        (eth(0x0800), "ipv4_truncated"),
        (eth(0x0800) + IP4[:19], "ipv4_truncated"),
        (eth(0x0800) + b"\x65" + IP4[1:], "ipv4_truncated"),  # version 6
        (eth(0x0800) + b"\x44" + IP4[1:], "ipv4_truncated"),  # IHL 4
        (eth(0x0800) + b"\x48" + IP4[1:], "ipv4_truncated"),  # IHL 8 = 32 bytes, 28 there
        (eth(0x86DD) + NS[:39], "ipv6_truncated"),
        (eth(0x86DD) + b"\x40" + NS[1:], "ipv6_truncated"),  # version 4
        (eth(0x86DD) + bytes(IPv6(nh=0))[:40] + b"\x3b", "ipv6_truncated"),
        (eth(0x86DD) + bytes(IPv6(nh=0))[:40] + b"\x3b\x01" + bytes(12), "ipv6_truncated"),
        (eth(0x86DD) + bytes(IPv6(nh=44))[:40] + bytes(7), "ipv6_truncated"),
        (eth(0x86DD) + NS[: 40 + 23], "nd_truncated"),
        (eth(0x86DD) + NS[:40] + b"\x88", "icmpv6_truncated"),  # NA, 1 byte: no type
        (eth(0x86DD) + NS[:40] + b"\x88\x00\x00\x00", "nd_truncated"),  # NA, 4 bytes
        (eth(0x86DD) + bytes(IPv6(nh=58))[:40], "icmpv6_truncated"),  # no ICMPv6 at all
        (eth(0x86DD) + bytes(IPv6() / ICMPv6EchoRequest())[:43], "icmpv6_truncated"),
        # nine destination-options headers: one more than is walked, fails closed
        (eth(0x86DD) + bytes(dest_opts(IPv6(), 9) / ICMPv6ND_NA()), "ipv6_header_chain"),
        # kinds IANA lists as extension headers that are not walked: Mobility, HIP, Shim6, 253, 254
        *[
            (eth(0x86DD) + bytes(IPv6(nh=nh) / Raw(bytes(16))), "ipv6_header_chain")
            for nh in (135, 139, 140, 253, 254)
        ],
        # a first fragment that leaves part of its UDP or ICMPv6 header to the next one
        (
            eth(0x86DD) + bytes(IPv6() / IPv6ExtHdrFragment(m=1) / UDP())[: 40 + 8 + 7],
            "ipv6_header_chain",
        ),
        (
            eth(0x86DD)
            + bytes(IPv6() / IPv6ExtHdrFragment(m=1) / ICMPv6EchoRequest())[: 40 + 8 + 3],
            "ipv6_header_chain",
        ),
        # neighbour discovery behind a fragment header, first or atomic (RFC 6980)
        (eth(0x86DD) + bytes(IPv6() / IPv6ExtHdrFragment(m=1, nh=58) / NS[40:]), "nd_fragmented"),
        (eth(0x86DD) + bytes(IPv6() / IPv6ExtHdrFragment(m=0) / ICMPv6ND_RA()), "nd_fragmented"),
        (eth(0x86DD) + NS + b"\x01", "nd_truncated"),  # an option without its length
        (eth(0x86DD) + NS + b"\x01\x00" + bytes(6), "nd_truncated"),  # option length 0
        (eth(0x86DD) + NS + b"\x01\x02" + bytes(6), "nd_truncated"),  # 16 bytes, 8 there
        (eth(0x86DD) + bytes(IPv6() / ICMPv6ND_RA())[: 40 + 15], "nd_truncated"),
        (eth(0x86DD) + bytes(IPv6() / ICMPv6ND_RS())[: 40 + 7], "nd_truncated"),
        (eth(0x86DD) + bytes(IPv6() / ICMPv6ND_Redirect())[: 40 + 39], "nd_truncated"),
    ],
)
def test_malformed_frame_is_dropped_with_its_reason(raw: bytes, reason: str) -> None:
    assert drop_reason(wire.parse_frame, raw) == reason


def test_tcp_flags_and_icmp_type_and_code_come_from_whole_headers_only() -> None:
    syn_ack = bytes(IP(src="10.244.1.2", dst="10.244.1.3") / TCP(flags="SA"))
    f = wire.parse_frame(eth(0x0800) + syn_ack)
    assert (f.tcp_flags, f.icmp_type, f.icmp_code) == (0x12, 0, 0)
    # a TCP header that stops before its flags byte: ports, no flags, no drop
    f = wire.parse_frame(eth(0x0800) + syn_ack[: 20 + 13])
    assert (f.sport, f.tcp_flags) == (20, 0)
    unreachable = bytes(IP() / ICMP(type=3, code=4) / IP() / UDP())
    f = wire.parse_frame(eth(0x0800) + unreachable)
    assert (f.icmp_type, f.icmp_code, f.sport, f.tcp_flags) == (3, 4, 0, 0)
    # an ICMP header cut short of its 4 bytes: no type, no code, no drop
    f = wire.parse_frame(eth(0x0800) + unreachable[:23])
    assert (f.ip_proto, f.icmp_type, f.icmp_code) == (1, 0, 0)
    # ICMPv6 errors carry their code; ICMP (protocol 1) inside IPv6 is not read
    f = wire.parse_frame(eth(0x86DD) + bytes(IPv6() / ICMPv6DestUnreach(code=4)))
    assert (f.icmp_type, f.icmp_code) == (1, 4)
    f = wire.parse_frame(eth(0x86DD) + bytes(IPv6(nh=1) / ICMP(type=8, code=1)))
    assert (f.ip_proto, f.icmp_type, f.icmp_code) == (1, 0, 0)
    # a later fragment has no L4 header to read
    f = wire.parse_frame(eth(0x0800) + bytes(IP(frag=3, proto=6) / Raw(syn_ack[20:])))
    assert (f.is_fragment, f.tcp_flags) == (True, 0)


def test_frame_edge_cases_that_are_not_drops() -> None:
    # an ICMPv6 type that is not ND: its type, no ND fields
    f = wire.parse_frame(eth(0x86DD) + bytes(IPv6() / ICMPv6EchoRequest()))
    assert (f.ip_proto, f.l4_off, f.icmp_type, f.nd_has_lladdr) == (58, 54, 128, False)
    # the later fragments of ICMPv6 (any ICMPv6, ND included) are not judged: no type,
    # and without the first fragment nothing can be reassembled from them
    later = bytes(IPv6() / IPv6ExtHdrFragment(offset=2, nh=58) / Raw(b"\x88" + bytes(31)))
    f = wire.parse_frame(eth(0x86DD) + later)
    assert (f.is_fragment, f.ip_proto, f.l4_off, f.icmp_type) == (True, 58, 0, 0)
    # AH is walked to what it protects
    ah = AH(nh=17, payloadlen=4, spi=1, icv=bytes(12))
    f = wire.parse_frame(eth(0x86DD) + bytes(IPv6() / ah / UDP(sport=7, dport=9)))
    assert (f.ip_proto, f.l4_off, f.sport, f.dport) == (17, 54 + 24, 7, 9)
    # ESP and No Next Header end the chain as opaque upper layers
    for nh in (50, 59):
        f = wire.parse_frame(eth(0x86DD) + bytes(IPv6(nh=nh) / Raw(bytes(8))))
        assert (f.ip_proto, f.l4_off) == (nh, 54)
    # a UDP header cut to 3 bytes: no ports, no drop
    f = wire.parse_frame(eth(0x0800) + IP4[:23])
    assert (f.l4_off, f.sport, f.dport) == (34, 0, 0)
    assert wire.parse_frame(eth(0x0800) + IP4[:24]).sport == 1
    # a third VLAN tag is not followed
    f = wire.parse_frame(eth(0x8100) + b"\x00\x05\x81\x00\x00\x06\x81\x00\x00\x07\x08\x00" + IP4)
    assert (f.ethertype, f.l3, f.l3_off, f.vlan_tci) == (0x8100, wire.L3_NONE, 22, 5)
    # Ethernet padding after a short IPv4 packet does not change anything
    padded = eth(0x0800) + bytes(IP(src="1.2.3.4", dst="5.6.7.8", proto=6)) + bytes(26)
    f = wire.parse_frame(padded)
    assert (f.ip_proto, f.l4_off, f.sport, f.dport) == (6, 34, 0, 0)
    # an ICMPv4 packet and an 802.3 length field
    f = wire.parse_frame(eth(0x0800) + bytes(IP() / ICMP()))
    assert (f.ip_proto, f.sport, f.dport) == (1, 0, 0)
    assert wire.parse_frame(eth(0x0040) + bytes(64)).l3 == wire.L3_NONE
    # the first fragment carries ports, later ones do not
    first = wire.parse_frame(eth(0x0800) + bytes(IP(flags=1, frag=0) / TCP(sport=7, dport=9)))
    later = wire.parse_frame(eth(0x0800) + bytes(IP(flags=1, frag=3) / TCP(sport=7, dport=9)))
    assert (first.is_fragment, first.sport, later.is_fragment, later.sport) == (False, 7, True, 0)
    assert later.l4_off == 0
    # the same for IPv6: M=1 with offset 0 is the first fragment, with its ports
    v6 = eth(0x86DD) + bytes(IPv6() / IPv6ExtHdrFragment(offset=0, m=1) / UDP(sport=7, dport=9))
    f = wire.parse_frame(v6)
    assert (f.is_fragment, f.ip_proto, f.l4_off, f.sport, f.dport) == (False, 17, 62, 7, 9)
    v6 = eth(0x86DD) + bytes(IPv6() / IPv6ExtHdrFragment(offset=1, m=0, nh=17) / Raw(bytes(8)))
    f = wire.parse_frame(v6)
    assert (f.is_fragment, f.ip_proto, f.l4_off, f.sport, f.dport) == (True, 17, 0, 0, 0)


def test_ipv6_extension_headers_are_followed_eight_deep_and_a_ninth_fails_closed() -> None:
    def chain(n: int) -> bytes:
        exts = b"".join(bytes([60 if i < n - 1 else 17, 0]) + bytes(6) for i in range(n))
        return (
            eth(0x86DD)
            + bytes(IPv6(nh=60 if n else 17, plen=len(exts) + 8))[:40]
            + exts
            + bytes(UDP(sport=5, dport=6))
        )

    f8 = wire.parse_frame(chain(8))
    assert (f8.ip_proto, f8.l4_off, f8.sport, f8.dport) == (17, 54 + 64, 5, 6)
    # a ninth is not walked, and what it hides cannot be judged: a drop of its own
    assert drop_reason(wire.parse_frame, chain(9)) == "ipv6_header_chain"


def test_nd_keeps_the_first_link_layer_option_and_only_the_right_kind() -> None:
    ns = (
        IPv6(src="fe80::1")
        / ICMPv6ND_NS(tgt="fe80::2")
        / ICMPv6NDOptDstLLAddr(lladdr="02:00:00:00:00:09")
        / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:01")
        / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:02")
    )
    f = wire.parse_frame(eth(0x86DD) + bytes(ns))
    assert f.nd_has_lladdr and f.nd_lladdr == bytes.fromhex("020000000001")
    na = IPv6() / ICMPv6ND_NA(tgt="fe80::2") / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:01")
    f = wire.parse_frame(eth(0x86DD) + bytes(na))
    assert not f.nd_has_lladdr and f.nd_lladdr == bytes(6)


@pytest.mark.parametrize("msg", [ICMPv6ND_Redirect(tgt="fe80::2"), ICMPv6ND_RS(), ICMPv6ND_NA()])
def test_nd_option_of_type_zero_is_never_a_link_layer_address(msg: Packet) -> None:
    # found by native/tests/check_wire.c: a redirect wants no option, which is not "type 0"
    raw = eth(0x86DD) + bytes(IPv6() / msg) + b"\x00\x01" + bytes.fromhex("020000000001")
    f = wire.parse_frame(raw)
    assert f.icmp_type == msg.type and not f.nd_has_lladdr and f.nd_lladdr == bytes(6)


def test_frame_address_properties() -> None:
    f = wire.parse_frame(eth(0x0800) + IP4)
    assert str(f.ip_src_address) == "10.0.0.1" and str(f.ip_dst_address) == "10.0.0.2"
    f = wire.parse_frame(eth(0x86DD) + NS)
    assert str(f.ip_src_address) == "fe80::1"
    assert wire.Frame().ip_src_address is None


# ---- flow hash and source port ----


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) % 2**32
    return h


def fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) % 2**32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) % 2**32
    return h ^ (h >> 16)


def test_hash_building_blocks_match_published_vectors() -> None:
    # FNV-1a 32 test vectors (draft-eastlake-fnv) and MurmurHash3_x86_32 of "" with
    # seeds 1 and 0xffffffff (SMHasher), which is fmix32(seed)
    assert [fnv1a32(s) for s in (b"", b"a", b"foobar")] == [0x811C9DC5, 0xE40C292C, 0xBF9CF968]
    assert fmix32(1) == 0x514E28B7 and fmix32(0xFFFFFFFF) == 0x81F16F39 and fmix32(0) == 0


@settings(WIRE)
@given(frames)
def test_flow_hash_covers_exactly_the_documented_bytes(b: Built) -> None:
    f = wire.parse_frame(b.raw)
    e = b.expect
    l4 = e.get("sport", 0).to_bytes(2, "big") + e.get("dport", 0).to_bytes(2, "big")
    if f.l3 == wire.L3_IPV4:
        want = bytes([e["ip_proto"]]) + e["ip_src"][:4] + e["ip_dst"][:4] + l4
    elif f.l3 == wire.L3_IPV6:
        want = bytes([e["ip_proto"]]) + e["ip_src"] + e["ip_dst"] + l4
    else:
        want = e["src"] + e["dst"] + e["ethertype"].to_bytes(2, "big")
    assert wire.flow_hash_input(f) == want
    assert wire.flow_hash(f) == fmix32(fnv1a32(want))


def test_flow_hash_separates_flows_and_ignores_payload() -> None:
    def h(pkt: Any) -> int:
        return wire.flow_hash(
            wire.parse_frame(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / pkt))
        )

    base = h(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=80) / Raw(b"a"))
    assert base == h(
        IP(src="10.0.0.1", dst="10.0.0.2", ttl=3) / TCP(sport=1000, dport=80) / Raw(b"bb")
    )
    others = {
        h(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1001, dport=80)),
        h(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=81)),
        h(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=80)),
        h(IP(src="10.0.0.3", dst="10.0.0.2") / TCP(sport=1000, dport=80)),
        h(IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=80, dport=1000)),
    }
    assert base not in others and len(others) == 5


@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
)
@example(2**32 - 1, 0, 0xFFFF, 0)
@example(2**32 - 1, 0, 0xFFFF, 0xFFFF)
def test_source_port_formula_and_range(h: int, a: int, b: int, slots: int) -> None:
    lo, hi = min(a, b), max(a, b)
    p = wire.source_port(h, lo, hi, slots)
    span = hi - lo + 1
    n = slots or span
    assert lo <= p <= hi
    assert p == lo + (h % n) * span // n


def test_source_port_slots_are_evenly_spaced() -> None:
    got = {wire.source_port(h, 49152, 65535, 16) for h in range(1000)}
    assert got == {49152 + 1024 * k for k in range(16)}
    assert wire.source_port(17) == 49152 + 17  # defaults: one slot per port
    assert wire.source_port(0xFFFFFFFF, 0, 0xFFFF, 0) == 0xFFFF
    assert {wire.source_port(h, 100, 100, 7) for h in range(50)} == {100}


@pytest.mark.parametrize(
    "args", [(1, 10, 9), (1, -1, 9), (1, 0, 70000), (2**32, 0, 9), (1, 0, 9, 70000)]
)
def test_source_port_rejects_bad_arguments(args: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        wire.source_port(*args)


# ---- the steering hash ----

HOSTS4 = st.sampled_from(["10.244.1.2", "10.244.1.3", "10.244.2.7", "10.245.0.1"])
HOSTS6 = st.sampled_from(["2001:2::2", "2001:2::3", "fe80::1", "2001:2:0:1::9"])
MACS = st.sampled_from(["02:00:00:00:01:02", "02:00:00:00:02:02", "02:00:00:00:03:09"])
PORTS = st.integers(0, 0xFFFF)


@st.composite
def flows(draw: st.DrawFn) -> tuple[Any, Any]:
    """One packet of a flow and its reply: MACs, addresses and ports swapped."""
    ma, mb = draw(MACS), draw(MACS)
    sp, dp = draw(PORTS), draw(PORTS)
    v6 = draw(st.booleans())
    a, b = (draw(HOSTS6), draw(HOSTS6)) if v6 else (draw(HOSTS4), draw(HOSTS4))
    kind = draw(st.sampled_from(["tcp", "udp", "sctp", "icmp", "frag", "ext", "arp"]))

    def one(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int) -> Any:
        eth = Ether(src=src_mac, dst=dst_mac)
        if kind == "arp":
            return eth / ARP(op=1, hwsrc=src_mac, psrc="10.244.1.2", pdst="10.244.1.3")
        ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst, flags="DF")
        l4: Any = {
            "tcp": TCP(sport=sport, dport=dport, flags="S"),
            "udp": UDP(sport=sport, dport=dport),
            "sctp": SCTP(sport=sport, dport=dport),
        }.get(kind)
        if kind == "icmp":
            l4 = ICMPv6EchoRequest() if v6 else ICMP()
        elif kind == "frag":
            return (
                eth
                / (
                    IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(m=1)
                    if v6
                    else IP(src=src, dst=dst, flags="MF")
                )
                / UDP(sport=sport, dport=dport)
            )
        elif kind == "ext":
            return eth / (IPv6(src=src, dst=dst) / IPv6ExtHdrDestOpt() if v6
                          else IP(src=src, dst=dst, options=IPOption(b"\x01" * 4))) / UDP(
                sport=sport, dport=dport)  # fmt: skip
        return eth / ip / l4

    return one(ma, mb, a, b, sp, dp), one(mb, ma, b, a, dp, sp)


@settings(WIRE)
@given(flows())
def test_steer_hash_is_the_same_for_both_directions_of_a_flow(flow: tuple[Any, Any]) -> None:
    there, back = (bytes(p) for p in flow)
    assert wire.steer_hash(there) == wire.steer_hash(back)


def test_steer_hash_reads_the_documented_fields() -> None:
    def h(pkt: Any) -> int:
        return wire.steer_hash(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / pkt))

    def k2(proto: int, sport: int, dport: int) -> int:
        return (proto << 16 | (sport ^ dport)) * 0x9E3779B1 % 2**32

    a, b = 0x0A000001, 0x0A000002  # 10.0.0.1, 10.0.0.2
    tcp = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=80) / Raw(b"a")
    assert h(tcp) == fmix32(a ^ b ^ k2(6, 1000, 80))
    # payload, TTL, flags and the IP options before the ports do not count
    assert h(IP(src="10.0.0.1", dst="10.0.0.2", ttl=3, options=IPOption(b"\x01" * 4))
             / TCP(sport=1000, dport=80, flags="A") / Raw(b"bbb")) == h(tcp)  # fmt: skip
    # without ports at a fixed offset, only the addresses
    assert h(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()) == fmix32(a ^ b)
    assert h(IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / TCP()) == fmix32(a ^ b)
    assert h(IP(src="10.0.0.1", dst="10.0.0.2", frag=3) / Raw(bytes(8))) == fmix32(a ^ b)
    six = IPv6(src="2001:2::1", dst="2001:2::2")
    fold6 = 0x20010002 ^ 0x20010002 ^ 1 ^ 2
    assert h(six / UDP(sport=5, dport=7)) == fmix32(fold6 ^ k2(17, 5, 7))
    assert h(six / IPv6ExtHdrHopByHop() / UDP(sport=5, dport=7)) == fmix32(fold6)
    # other ethertypes: the two MACs
    mac_fold = 0x02000000 ^ 0x02000000 ^ 0x0001 ^ 0x0002
    assert h(ARP()) == fmix32(mac_fold)
    # a field past the end of the frame: 0, as a BPF load past the end
    assert wire.steer_hash(bytes(Ether() / IP())[:33]) == 0
    assert wire.steer_hash(bytes(Ether() / IP() / TCP())[:37]) == 0
    assert wire.steer_hash(bytes(13)) == 0


def test_steer_hash_spreads_flows_over_workers() -> None:
    def h(sport: int) -> int:
        return wire.steer_hash(
            bytes(Ether() / IP(src="10.244.1.2", dst="10.244.1.3") / TCP(sport=sport, dport=5201))
        )

    for workers in (2, 3, 4, 16):
        owners = [h(p) % workers for p in range(40000, 40000 + 64 * workers)]
        # 64 flows per worker on average; none gets less than a quarter of that
        assert min(owners.count(w) for w in range(workers)) >= 16, (workers, owners)


# ---- checksum ----


@given(st.binary(max_size=300))
def test_checksum_matches_scapy(data: bytes) -> None:
    assert wire.checksum(data) == scapy_checksum(data)


@given(st.binary(min_size=2, max_size=40).filter(lambda b: len(b) % 2 == 0), st.binary(max_size=99))
def test_checksum_initial_is_a_prefix_sum(prefix: bytes, data: bytes) -> None:
    partial = sum(int.from_bytes(prefix[i : i + 2], "big") for i in range(0, len(prefix), 2))
    assert wire.checksum(data, partial) == scapy_checksum(prefix + data)


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4), st.integers(0, 255))
def test_checksum_of_an_ipv4_header_is_scapys(src: bytes, dst: bytes, ttl: int) -> None:
    hdr = bytes(IP(src=ip4(src), dst=ip4(dst), ttl=ttl))
    zeroed = hdr[:10] + b"\0\0" + hdr[12:]
    assert wire.checksum(zeroed) == int.from_bytes(hdr[10:12], "big")
    assert wire.checksum(hdr) == 0  # a correct header sums to 0xffff


def test_checksum_known_values() -> None:
    # RFC 1071 section 3's example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2
    assert wire.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2
    assert wire.checksum(b"") == 0xFFFF and wire.checksum(b"\xff") == 0x00FF


# ---- answers ----


@settings(WIRE)
@given(arp_frames(), macs)
def test_arp_reply_is_right_for_scapy(b: Built, answer_mac: bytes) -> None:
    req = wire.parse_frame(b.raw)
    double_tagged = req.l3_off == 22
    if req.arp_op != 1 or double_tagged:
        with pytest.raises(ValueError):
            wire.arp_reply(b.raw, answer_mac)
        return
    reply = wire.arp_reply(b.raw, mac(answer_mac))
    assert reply == wire.arp_reply(req, answer_mac)
    assert len(reply) == (46 if req.has_vlan else 42)
    p = Ether(reply)
    assert (p.dst, p.src) == (mac(b.expect["src"]), mac(answer_mac))
    if req.has_vlan:
        assert p.type == req.vlan_tpid
        tag = p[Dot1Q] if Dot1Q in p else p[Dot1AD]
        assert (tag.prio << 13 | tag.dei << 12 | tag.vlan) == req.vlan_tci
    else:
        assert p.type == 0x0806
    a = p[ARP]
    assert (a.hwtype, a.ptype, a.hwlen, a.plen, a.op) == (1, 0x0800, 6, 4, 2)
    assert a.hwsrc == mac(answer_mac) and a.psrc == ip4(req.arp_tpa)
    assert a.hwdst == mac(req.arp_sha) and a.pdst == ip4(req.arp_spa)
    assert bytes(a.payload) == b""


def test_arp_reply_refuses_what_it_must_not_answer() -> None:
    reply = eth(0x0806) + ARP_REQ[:7] + b"\x02" + ARP_REQ[8:]
    with pytest.raises(ValueError, match="not an ARP request"):
        wire.arp_reply(reply, "02:00:00:00:00:09")
    with pytest.raises(ValueError, match="not an ARP request"):
        wire.arp_reply(eth(0x0800) + IP4, "02:00:00:00:00:09")
    with pytest.raises(ValueError, match="QinQ"):
        wire.arp_reply(eth(0x88A8) + b"\x00\x05\x81\x00\x00\x07\x08\x06" + ARP_REQ, bytes(6))
    with pytest.raises(ValueError, match="bad MAC"):
        wire.arp_reply(eth(0x0806) + ARP_REQ, "02:00:00:00:00")
    with pytest.raises(Drop):
        wire.arp_reply(eth(0x0806) + ARP_REQ[:20], bytes(6))


@st.composite
def solicitations(draw: st.DrawFn) -> tuple[bytes, bytes, bytes, bytes, int]:
    src_mac, src, target = draw(macs), draw(ip6s), draw(ip6s)
    tag = draw(st.sampled_from([None, 0x8100, 0x88A8]))
    vid = draw(st.integers(0, 4095))
    pkt: Packet = Ether(src=mac(src_mac), dst="33:33:ff:00:00:01")
    if tag:
        pkt = Ether(src=mac(src_mac), dst="33:33:ff:00:00:01", type=tag) / (
            Dot1Q if tag == 0x8100 else Dot1AD
        )(vlan=vid)
    pkt = pkt / IPv6(src=ip6(src), dst="ff02::1:ff00:1") / ICMPv6ND_NS(tgt=ip6(target))
    if draw(st.booleans()):
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=mac(src_mac))
    return bytes(pkt), src_mac, src, target, vid


@settings(WIRE)
@given(solicitations(), macs)
def test_nd_advert_is_right_for_scapy(
    ns: tuple[bytes, bytes, bytes, bytes, int], answer_mac: bytes
) -> None:
    raw, src_mac, src, target, vid = ns
    if src == bytes(16):
        with pytest.raises(ValueError, match="DAD"):
            wire.nd_advert(raw, answer_mac)
        return
    adv = wire.nd_advert(raw, answer_mac)
    assert adv == wire.nd_advert(wire.parse_frame(raw), mac(answer_mac))
    p = Ether(adv)
    assert (p.dst, p.src) == (mac(src_mac), mac(answer_mac))
    if p.type != 0x86DD:
        assert p.type == raw[12] << 8 | raw[13] and p.payload.vlan == vid
    assert len(adv) == len(p[IPv6]) + (18 if p.type != 0x86DD else 14)
    ip = p[IPv6]
    assert (ip.version, ip.tc, ip.fl, ip.plen, ip.nh, ip.hlim) == (6, 0, 0, 32, 58, 255)
    assert (packed(ip.src), packed(ip.dst)) == (target, src)
    na = p[ICMPv6ND_NA]
    assert (na.type, na.code, na.R, na.S, na.O, na.res) == (136, 0, 0, 1, 1, 0)
    assert packed(na.tgt) == target
    opt = p[ICMPv6NDOptDstLLAddr]
    assert (opt.type, opt.len, opt.lladdr) == (2, 1, mac(answer_mac))
    # scapy recomputes the checksum from scratch: it must equal the one we wrote
    written = na.cksum
    na.cksum = None
    assert Ether(bytes(p))[ICMPv6ND_NA].cksum == written
    assert in6_chksum(58, ip, bytes(ip.payload)[:2] + b"\0\0" + bytes(ip.payload)[4:]) == written
    # and the message sums to zero with the pseudo-header, as a receiver checks
    assert in6_chksum(58, ip, bytes(ip.payload)) == 0


def test_nd_advert_refuses_what_it_must_not_answer() -> None:
    dad = eth(0x86DD) + bytes(IPv6(src="::", dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt="fe80::2"))
    with pytest.raises(ValueError, match="DAD"):
        wire.nd_advert(dad, "02:00:00:00:00:09")
    na = eth(0x86DD) + bytes(IPv6(src="fe80::1") / ICMPv6ND_NA(tgt="fe80::2"))
    with pytest.raises(ValueError, match="not a neighbour solicitation"):
        wire.nd_advert(na, "02:00:00:00:00:09")
    with pytest.raises(ValueError, match="not a neighbour solicitation"):
        wire.nd_advert(eth(0x0806) + ARP_REQ, "02:00:00:00:00:09")
