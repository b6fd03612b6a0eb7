"""Pure-Python wire formats: the readable reference for ``native/wire.c``.

Why this exists
---------------
The data plane parses and builds headers in C, where a slip is a memory bug
or a silent interop failure. This module says the same thing in plain Python,
one function per C function, with the same checks in the same order and the
same drop reasons (the names in ``native/counters.def``). It is

* the reference the C is tested against: ``tests/native/test_wire_c.py``
  feeds both the same generated and random input and requires the same bytes
  and the same reasons, and ``tests/unit/test_wire_python.py`` holds this
  module to scapy;
* a codec for tools (pcap inspection, traffic generators, the test harness),
  which can import it without the compiled ``overlay._native``.

It never imports cffi or ``overlay._native``. Speed is not a goal; being
obviously right is.

Contracts (the same as the C)
-----------------------------
Drops are reported by raising :class:`Drop`, whose ``reason`` is the counter
name. Bad arguments (an unknown encapsulation, a VNI above 24 bits, too many
option bytes) are caller errors and raise ``ValueError``.

Geneve decode checks, in order: ``geneve_truncated`` (under 8 bytes),
``geneve_bad_version``, ``geneve_options_truncated`` (Opt Len past the end),
``geneve_option_overrun`` (a TLV past the option area), ``geneve_oam`` (the O
bit: control packets are never delivered, whatever their protocol type),
``geneve_bad_protocol`` (not 0x6558), and only then, when known options are
given, ``geneve_unknown_critical_option``. The first four are structure, read
before anything they guard; the rest are meaning. VXLAN: ``vxlan_truncated``
then ``vxlan_bad_flags`` (I bit clear; reserved bits are ignored).

Frame parsing reads only within the frame: the IPv4 total length and the IPv6
payload length are not used (Ethernet padding, GSO frames). A TCP, UDP or
SCTP header too short to hold both ports is not a drop: the ports are 0. So
with the TCP flags (read when the header reaches byte 13) and the ICMP type
and code (read when the 4-byte ICMP header is there): 0 when it does not.

IPv6 fails closed: a packet that cannot be classified down to its upper-layer
header is a drop of its own, so that nothing a receiver would act on hides
behind a header the parser did not read. ``ipv6_header_chain``: more than
``IPV6_EXT_MAX`` extension headers, a kind not walked (``EXT_NOT_WALKED``), or
a first (or atomic) fragment without the whole upper-layer header (RFC 7112,
``UPPER_HLEN``); ``icmpv6_truncated``: ICMPv6 shorter than its 4-byte header;
``nd_fragmented``: neighbour discovery behind any fragment header (RFC 6980).
Hop-by-hop, routing, destination options, fragment and AH headers are walked.
A non-first fragment is not a drop (no upper-layer header to judge).
``icmp_type`` is the type of every readable ICMPv6 message (in an IPv6 frame)
and of every readable ICMP message (in an IPv4 frame); ``icmp_code`` its code.
The header an ICMP error quotes is not parsed.

The flow hash
-------------
The outer UDP source port carries entropy from the inner flow (RFC 7348
section 5), so that underlay ECMP spreads flows while keeping each flow on
one path. The hash is FNV-1a 32 (offset basis 0x811c9dc5, prime 0x01000193)
over exactly these bytes (:func:`flow_hash_input`)::

    IPv4   ip_proto (1) | src (4)  | dst (4)  | sport (2, BE) | dport (2, BE)
    IPv6   ip_proto (1) | src (16) | dst (16) | sport (2, BE) | dport (2, BE)
    other  src mac (6)  | dst mac (6) | ethertype (2, BE, after VLAN tags)

followed by murmur3's 32-bit finaliser (fmix32). Ports are those of
:class:`Frame`: 0 for non-TCP/UDP/SCTP protocols and for non-first fragments.
:func:`source_port` then maps the hash onto ``slots`` evenly spaced ports of
``lo..hi``.

The steering hash
-----------------
Which worker of an engine owns a flow: ``steer_hash(frame) % workers``
(native/engine.h, "Per-flow state"). Unlike the flow hash it is symmetric
(a flow's reply hashes alike, so both directions have one owner) and it is
read from the raw frame at fixed offsets only, because the kernel computes
it too, with the BPF programs of native/steer.c; a field past the end of the
frame gives 0, as a BPF load past the end does::

    ethertype (12)  0x0800                 0x86dd                    other
    fold            W(26) ^ W(30)          W(22) ^ ... ^ W(50)       W(0) ^ W(6) ^ H(4) ^ H(10)
    ports           TCP/UDP/SCTP (23), not TCP/UDP/SCTP (20):        none
                    a fragment (H(20) &    W(54)
                    0x3fff == 0): W(14 +
                    4 * (B(14) & 15))
    k2              proto << 16 | (sport ^ dport) with ports, else 0
    hash            fmix32(fold ^ k2 * 0x9e3779b1)

(W, H, B: a big-endian 32-, 16-, 8-bit read at that offset; the ports word
is sport << 16 | dport.) ICMP, fragments and IPv6 with extension headers
are steered by their address pair alone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from overlay.model import VNI_MAX  # defined once (pinned to OVL_VNI_MAX by tests/native)

# ---- constants (the same values as native/overlay.h) ----
VXLAN = 1
GENEVE = 2
VXLAN_PORT = 4789
GENEVE_PORT = 6081
VXLAN_HLEN = 8
GENEVE_HLEN = 8
GENEVE_OPTS_MAX = 252
GENEVE_OPT_DATA_MAX = 124  # 5-bit length in 4-byte words
ETH_P_TEB = 0x6558
GENEVE_F_OAM = 0x80
GENEVE_F_CRITICAL = 0x40
GENEVE_TYPE_CRITICAL = 0x80
VXLAN_F_I = 0x08

L3_NONE = 0
L3_ARP = 1
L3_IPV4 = 2
L3_IPV6 = 3

ETH_HLEN = 14
ETH_P_IPV4 = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
VLAN_TPIDS = (ETH_P_8021Q, ETH_P_8021AD)

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132
IPV6_EXT_MAX = 8
ICMPV6_HLEN = 4
#: Extension headers IANA lists that the parser does not walk: Mobility, HIP,
#: Shim6 and the two experimental values. A packet with one fails closed.
EXT_NOT_WALKED = (135, 139, 140, 253, 254)
#: Bytes of the upper-layer header a first fragment must carry (RFC 7112).
UPPER_HLEN = {IPPROTO_TCP: 20, IPPROTO_UDP: 8, IPPROTO_SCTP: 12, IPPROTO_ICMPV6: ICMPV6_HLEN}

ND_RS, ND_RA, ND_NS, ND_NA, ND_REDIRECT = 133, 134, 135, 136, 137
ND_OPT_SLLA = 1
ND_OPT_TLLA = 2

SPORT_LO = 49152
SPORT_HI = 65535

FNV_BASIS = 0x811C9DC5
FNV_PRIME = 0x01000193

#: Every reason this module can raise, as named in native/counters.def.
DROP_REASONS = (
    "vxlan_truncated",
    "vxlan_bad_flags",
    "geneve_truncated",
    "geneve_bad_version",
    "geneve_options_truncated",
    "geneve_option_overrun",
    "geneve_bad_protocol",
    "geneve_unknown_critical_option",
    "geneve_oam",
    "frame_too_short",
    "vlan_truncated",
    "arp_truncated",
    "ipv4_truncated",
    "ipv6_truncated",
    "nd_truncated",
    "ipv6_header_chain",
    "icmpv6_truncated",
    "nd_fragmented",
)


class Drop(Exception):
    """A packet the data plane would drop; ``reason`` is its counters.def name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _u16(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 2], "big")


# ---- MAC addresses ----

_MAC_RE = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}")


def mac_to_bytes(mac: str) -> bytes:
    """``"02:00:00:00:00:01"`` (or with ``-``) to 6 bytes; ValueError names a bad value."""
    if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac):
        raise ValueError(f"bad MAC address {mac!r}: expected six hex bytes like 02:00:00:00:00:01")
    return bytes.fromhex(mac.replace(mac[2], ""))


def mac_to_str(mac: bytes) -> str:
    """6 bytes to ``"02:00:00:00:00:01"``; ValueError names a bad value."""
    if not isinstance(mac, (bytes, bytearray)) or len(mac) != 6:
        raise ValueError(f"bad MAC address {mac!r}: expected 6 bytes")
    return ":".join(f"{b:02x}" for b in mac)


def _mac(mac: bytes | str) -> bytes:
    if isinstance(mac, str):
        return mac_to_bytes(mac)
    mac_to_str(mac)  # validates
    return bytes(mac)


# ---- Geneve options ----


def option_key(cls: int, type: int) -> int:
    """The key of a known option, as ``ovl_geneve_check_options`` takes it."""
    return cls << 8 | (type & ~GENEVE_TYPE_CRITICAL & 0xFF)


@dataclass(frozen=True)
class GeneveOption:
    """One Geneve TLV option (RFC 8926 section 3.5). ``type`` includes the critical bit."""

    cls: int
    type: int
    data: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.cls <= 0xFFFF:
            raise ValueError(f"GeneveOption.cls {self.cls!r}: must be 0..65535")
        if not 0 <= self.type <= 0xFF:
            raise ValueError(f"GeneveOption.type {self.type!r}: must be 0..255")
        if len(self.data) % 4 or len(self.data) > GENEVE_OPT_DATA_MAX:
            raise ValueError(
                f"GeneveOption.data is {len(self.data)} bytes: "
                f"must be a multiple of 4, at most {GENEVE_OPT_DATA_MAX}"
            )

    @property
    def critical(self) -> bool:
        return bool(self.type & GENEVE_TYPE_CRITICAL)

    @property
    def key(self) -> int:
        return option_key(self.cls, self.type)

    def to_bytes(self) -> bytes:
        """The TLV as on the wire (reserved bits zero)."""
        head = self.cls.to_bytes(2, "big") + bytes([self.type, len(self.data) // 4])
        return head + bytes(self.data)


def encode_options(options: Iterable[GeneveOption]) -> bytes:
    """The option area for ``options``, in order."""
    return b"".join(o.to_bytes() for o in options)


def _walk_options(opts: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each TLV; Drop geneve_option_overrun unless they tile opts."""
    out = []
    off = 0
    while off < len(opts):
        if len(opts) - off < 4:
            raise Drop("geneve_option_overrun")
        olen = 4 + (opts[off + 3] & 0x1F) * 4
        if olen > len(opts) - off:
            raise Drop("geneve_option_overrun")
        out.append((off, olen))
        off += olen
    return out


def decode_options(opts: bytes) -> list[GeneveOption]:
    """Split an option area into options (reserved bits ignored); Drop on overrun."""
    return [
        GeneveOption(_u16(opts, off), opts[off + 2], bytes(opts[off + 4 : off + olen]))
        for off, olen in _walk_options(bytes(opts))
    ]


def check_options(opts: bytes, known: Collection[int]) -> None:
    """Mirror of ``ovl_geneve_check_options``: structure of the whole area first
    (``geneve_option_overrun``), then every critical option must have its
    :func:`option_key` in ``known`` (``geneve_unknown_critical_option``)."""
    tlvs = _walk_options(bytes(opts))
    for off, _ in tlvs:
        t = opts[off + 2]
        if t & GENEVE_TYPE_CRITICAL and option_key(_u16(opts, off), t) not in known:
            raise Drop("geneve_unknown_critical_option")


# ---- tunnel headers ----


@dataclass
class Tunnel:
    """A VXLAN or Geneve header. ``flags``: VXLAN's flags byte, or Geneve's O and C bits."""

    vni: int
    protocol: int = ETH_P_TEB
    flags: int = 0
    options: list[GeneveOption] = field(default_factory=list)

    @property
    def critical(self) -> bool:
        return any(o.critical for o in self.options)


def encode(encap: int, tunnel: Tunnel) -> bytes:
    """The header for ``tunnel`` (``ovl_wire_encode``).

    VXLAN (RFC 7348): flags 0x08, reserved zero; protocol, flags and options
    are ignored. Geneve (RFC 8926): version 0, O from ``tunnel.flags``, C set
    exactly when an option is critical, ``tunnel.protocol`` as given.
    """
    if not 0 <= tunnel.vni <= VNI_MAX:
        raise ValueError(f"Tunnel.vni {tunnel.vni!r}: must be 0..{VNI_MAX}")
    vni = tunnel.vni.to_bytes(3, "big")
    if encap == VXLAN:
        return bytes([VXLAN_F_I, 0, 0, 0]) + vni + b"\0"
    if encap == GENEVE:
        opts = encode_options(tunnel.options)
        if len(opts) > GENEVE_OPTS_MAX:
            raise ValueError(
                f"Tunnel.options take {len(opts)} bytes: Geneve allows {GENEVE_OPTS_MAX}"
            )
        if not 0 <= tunnel.protocol <= 0xFFFF:
            raise ValueError(f"Tunnel.protocol {tunnel.protocol!r}: must be 0..65535")
        flags = (tunnel.flags & GENEVE_F_OAM) | (GENEVE_F_CRITICAL if tunnel.critical else 0)
        head = bytes([len(opts) // 4, flags]) + tunnel.protocol.to_bytes(2, "big")
        return head + vni + b"\0" + opts
    raise ValueError(f"encap {encap!r}: must be VXLAN ({VXLAN}) or GENEVE ({GENEVE})")


def decode(
    encap: int, data: bytes, known_options: Collection[int] | None = None
) -> tuple[Tunnel, int]:
    """Decode the header at the start of ``data`` (``ovl_wire_decode``).

    Returns the tunnel and the offset of the inner frame, or raises
    :class:`Drop`. With ``known_options`` (keys from :func:`option_key`), the
    unknown-critical rule is applied last, as the engine does with
    ``ovl_geneve_check_options``; without, options are only bounds-checked.
    """
    data = bytes(data)
    if encap == VXLAN:
        if len(data) < VXLAN_HLEN:
            raise Drop("vxlan_truncated")
        if not data[0] & VXLAN_F_I:
            raise Drop("vxlan_bad_flags")
        vni = int.from_bytes(data[4:7], "big")
        return Tunnel(vni, ETH_P_TEB, data[0]), VXLAN_HLEN
    if encap == GENEVE:
        if len(data) < GENEVE_HLEN:
            raise Drop("geneve_truncated")
        if data[0] >> 6 != 0:
            raise Drop("geneve_bad_version")
        hlen = GENEVE_HLEN + (data[0] & 0x3F) * 4
        if hlen > len(data):
            raise Drop("geneve_options_truncated")
        opts = data[GENEVE_HLEN:hlen]
        options = decode_options(opts)
        if data[1] & GENEVE_F_OAM:
            raise Drop("geneve_oam")
        protocol = _u16(data, 2)
        if protocol != ETH_P_TEB:
            raise Drop("geneve_bad_protocol")
        if known_options is not None:
            check_options(opts, known_options)
        vni = int.from_bytes(data[4:7], "big")
        flags = data[1] & (GENEVE_F_OAM | GENEVE_F_CRITICAL)
        return Tunnel(vni, protocol, flags, options), hlen
    raise ValueError(f"encap {encap!r}: must be VXLAN ({VXLAN}) or GENEVE ({GENEVE})")


# ---- the inner frame ----


@dataclass
class Frame:
    """An Ethernet frame parsed as ``ovl_frame_t``: the same fields, the same meaning.

    Addresses are raw bytes as in C (IPv4 in the first 4 of 16 bytes); the
    ``*_address`` properties give ``ipaddress`` objects.
    """

    dst: bytes = bytes(6)
    src: bytes = bytes(6)
    has_vlan: bool = False
    l3: int = L3_NONE
    vlan_tci: int = 0
    vlan_tpid: int = 0
    ethertype: int = 0
    l3_off: int = 0
    l4_off: int = 0
    ip_proto: int = 0
    is_fragment: bool = False
    ip_src: bytes = bytes(16)
    ip_dst: bytes = bytes(16)
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    icmp_type: int = 0
    icmp_code: int = 0
    nd_has_lladdr: bool = False
    arp_op: int = 0
    arp_sha: bytes = bytes(6)
    arp_spa: bytes = bytes(4)
    arp_tha: bytes = bytes(6)
    arp_tpa: bytes = bytes(4)
    nd_lladdr: bytes = bytes(6)
    nd_target: bytes = bytes(16)

    def _address(self, raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        if self.l3 == L3_IPV4:
            return ipaddress.IPv4Address(raw[:4])
        if self.l3 == L3_IPV6:
            return ipaddress.IPv6Address(raw)
        return None

    @property
    def ip_src_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return self._address(self.ip_src)

    @property
    def ip_dst_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return self._address(self.ip_dst)


def parse_frame(data: bytes) -> Frame:
    """Parse an Ethernet frame (``ovl_frame_parse``); raises :class:`Drop`.

    Follows up to two 802.1Q/802.1ad tags (the first tag's TPID and TCI are
    kept), then ARP (Ethernet/IPv4 only), IPv4 or IPv6 with up to
    ``IPV6_EXT_MAX`` hop-by-hop, routing, destination-options, fragment and AH
    headers (failing closed past that, see the module docstring), TCP/UDP/SCTP
    ports, TCP flags, the ICMP or ICMPv6 type and code, and neighbour
    discovery. ``l4_off`` points at the header ``ip_proto`` names, or is 0 in
    a non-first fragment.
    """
    b = bytes(data)
    f = Frame()
    if len(b) < ETH_HLEN:
        raise Drop("frame_too_short")
    f.dst, f.src = b[0:6], b[6:12]
    off = 12
    etype = _u16(b, off)
    tags = 0
    while tags < 2 and etype in VLAN_TPIDS:
        if len(b) - off < 6:
            raise Drop("vlan_truncated")
        if tags == 0:
            f.has_vlan, f.vlan_tpid, f.vlan_tci = True, etype, _u16(b, off + 2)
        off += 4
        etype = _u16(b, off)
        tags += 1
    off += 2
    f.ethertype = etype
    f.l3_off = off
    if etype == ETH_P_ARP:
        _parse_arp(b[off:], f)
    elif etype == ETH_P_IPV4:
        _parse_ipv4(b, f)
    elif etype == ETH_P_IPV6:
        _parse_ipv6(b, f)
    return f


def _parse_arp(p: bytes, f: Frame) -> None:
    if len(p) < 28 or _u16(p, 0) != 1 or _u16(p, 2) != ETH_P_IPV4 or p[4] != 6 or p[5] != 4:
        raise Drop("arp_truncated")
    f.l3 = L3_ARP
    f.arp_op = _u16(p, 6)
    f.arp_sha, f.arp_spa, f.arp_tha, f.arp_tpa = p[8:14], p[14:18], p[18:24], p[24:28]


def _parse_l4(b: bytes, f: Frame) -> None:
    avail = len(b) - f.l4_off
    if f.ip_proto == IPPROTO_TCP and avail >= 14:
        f.tcp_flags = b[f.l4_off + 13]
    if f.ip_proto == IPPROTO_ICMP and f.l3 == L3_IPV4 and avail >= 4:
        f.icmp_type, f.icmp_code = b[f.l4_off], b[f.l4_off + 1]
    if f.ip_proto in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP) and avail >= 4:
        f.sport, f.dport = _u16(b, f.l4_off), _u16(b, f.l4_off + 2)


def _parse_ipv4(b: bytes, f: Frame) -> None:
    p = b[f.l3_off :]
    if len(p) < 20 or p[0] >> 4 != 4:
        raise Drop("ipv4_truncated")
    ihl = (p[0] & 0x0F) * 4
    if ihl < 20 or ihl > len(p):
        raise Drop("ipv4_truncated")
    f.l3 = L3_IPV4
    f.ip_proto = p[9]
    f.ip_src = p[12:16] + bytes(12)
    f.ip_dst = p[16:20] + bytes(12)
    if _u16(p, 6) & 0x1FFF:
        f.is_fragment = True
        return
    f.l4_off = f.l3_off + ihl
    _parse_l4(b, f)


def _parse_ipv6(b: bytes, f: Frame) -> None:
    p = b[f.l3_off :]
    if len(p) < 40 or p[0] >> 4 != 6:
        raise Drop("ipv6_truncated")
    f.l3 = L3_IPV6
    f.ip_src, f.ip_dst = p[8:24], p[24:40]
    nh = p[6]
    off = 40
    fragment = False  # a first (or atomic) fragment
    n = 0
    while True:
        if nh in (0, 43, 60, IPPROTO_AH, 44):  # hop-by-hop, routing, dest. options, AH, fragment
            if n == IPV6_EXT_MAX:
                raise Drop("ipv6_header_chain")
        elif nh in EXT_NOT_WALKED:
            raise Drop("ipv6_header_chain")
        else:
            break
        if nh == 44:
            hlen = 8
        else:
            if len(p) - off < 2:
                raise Drop("ipv6_truncated")
            hlen = (p[off + 1] + 2) * 4 if nh == IPPROTO_AH else (p[off + 1] + 1) * 8
        if len(p) - off < hlen:
            raise Drop("ipv6_truncated")
        if nh == 44:
            if _u16(p, off + 2) & 0xFFF8:
                f.ip_proto = p[off]
                f.is_fragment = True
                return
            fragment = True
        nh = p[off]
        off += hlen
        n += 1
    f.ip_proto = nh
    f.l4_off = f.l3_off + off
    if fragment and len(p) - off < UPPER_HLEN.get(nh, 0):
        raise Drop("ipv6_header_chain")
    _parse_l4(b, f)
    if nh != IPPROTO_ICMPV6:
        return
    if len(p) - off < ICMPV6_HLEN:
        raise Drop("icmpv6_truncated")
    f.icmp_type, f.icmp_code = p[off], p[off + 1]
    if not ND_RS <= p[off] <= ND_REDIRECT:
        return
    if fragment:
        raise Drop("nd_fragmented")
    _parse_nd(p[off:], f)


_ND_FIXED = {ND_RS: 8, ND_RA: 16, ND_NS: 24, ND_NA: 24, ND_REDIRECT: 40}
#: The link-layer option kept: the sender's (RS, RA, NS) or the target's (NA,
#: redirect: there, the better first hop's).
_ND_LLADDR_OPT = {
    ND_RS: ND_OPT_SLLA,
    ND_RA: ND_OPT_SLLA,
    ND_NS: ND_OPT_SLLA,
    ND_NA: ND_OPT_TLLA,
    ND_REDIRECT: ND_OPT_TLLA,
}


def _parse_nd(p: bytes, f: Frame) -> None:
    fixed = _ND_FIXED[p[0]]
    want = _ND_LLADDR_OPT[p[0]]
    if len(p) < fixed:
        raise Drop("nd_truncated")
    if p[0] in (ND_NS, ND_NA, ND_REDIRECT):
        f.nd_target = p[8:24]
    off = fixed
    while off < len(p):
        if len(p) - off < 2 or p[off + 1] == 0 or p[off + 1] * 8 > len(p) - off:
            raise Drop("nd_truncated")
        if p[off] == want and not f.nd_has_lladdr:
            f.nd_has_lladdr, f.nd_lladdr = True, p[off + 2 : off + 8]
        off += p[off + 1] * 8


# ---- flow hash, source port, checksum ----


def flow_hash_input(frame: Frame) -> bytes:
    """The exact bytes ``flow_hash`` runs FNV-1a over (see the module docstring)."""
    ports = frame.sport.to_bytes(2, "big") + frame.dport.to_bytes(2, "big")
    if frame.l3 == L3_IPV4:
        return bytes([frame.ip_proto]) + frame.ip_src[:4] + frame.ip_dst[:4] + ports
    if frame.l3 == L3_IPV6:
        return bytes([frame.ip_proto]) + frame.ip_src + frame.ip_dst + ports
    return frame.src + frame.dst + frame.ethertype.to_bytes(2, "big")


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def flow_hash(frame: Frame) -> int:
    """The inner flow hash (``ovl_flow_hash``): FNV-1a 32 then fmix32."""
    h = FNV_BASIS
    for byte in flow_hash_input(frame):
        h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return _fmix32(h)


_STEER_PORTS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP)


def steer_hash(data: bytes) -> int:
    """The steering hash of frame bytes ``data`` (``ovl_wire_steer_hash``; see the
    module docstring): the same for both directions of a flow."""

    def w(off: int) -> int:
        return int.from_bytes(data[off : off + 4], "big")

    def h(off: int) -> int:
        return int.from_bytes(data[off : off + 2], "big")

    if len(data) < ETH_HLEN:
        return 0
    ports: int | None = None
    proto = 0
    if h(12) == ETH_P_IPV4:
        if len(data) < 34:
            return 0
        fold = w(26) ^ w(30)
        proto = data[23]
        if proto in _STEER_PORTS and h(20) & 0x3FFF == 0:
            l4 = ETH_HLEN + (data[14] & 0x0F) * 4
            if len(data) < l4 + 4:
                return 0
            ports = w(l4)
    elif h(12) == ETH_P_IPV6:
        if len(data) < 54:
            return 0
        fold = 0
        for off in range(22, 54, 4):
            fold ^= w(off)
        proto = data[20]
        if proto in _STEER_PORTS:
            if len(data) < 58:
                return 0
            ports = w(54)
    else:
        fold = w(0) ^ w(6) ^ h(4) ^ h(10)
    k2 = 0 if ports is None else proto << 16 | ((ports >> 16) ^ (ports & 0xFFFF))
    return _fmix32(fold ^ ((k2 * 0x9E3779B1) & 0xFFFFFFFF))


def source_port(hash: int, lo: int = SPORT_LO, hi: int = SPORT_HI, slots: int = 0) -> int:
    """The outer UDP source port (``ovl_source_port``): slot = hash % slots,
    port = lo + slot * (hi - lo + 1) // slots; ``slots=0`` means one per port."""
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"source port range {lo}..{hi}: need 0 <= lo <= hi <= 65535")
    if not 0 <= slots <= 0xFFFF:
        raise ValueError(f"slots {slots!r}: must be 0..65535")
    if not 0 <= hash <= 0xFFFFFFFF:
        raise ValueError(f"hash {hash!r}: must be a 32-bit unsigned value")
    span = hi - lo + 1
    n = slots or span
    return lo + (hash % n) * span // n


def checksum(data: bytes, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of ``data`` with ``initial`` (an unfolded
    big-endian partial sum, e.g. a pseudo-header's) added; the value to store
    big-endian in the header."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    s = initial + sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# ---- answers ----


def _frame(req: bytes | Frame) -> Frame:
    return req if isinstance(req, Frame) else parse_frame(req)


def _answer_eth(q: Frame, mac: bytes, etype: int) -> bytes:
    """Ethernet header of an answer to q, with q's tag; double-tagged q is refused."""
    head = q.src + mac
    if q.has_vlan:
        if q.l3_off != ETH_HLEN + 4:
            raise ValueError("a double-tagged (QinQ) frame is not answered locally")
        head += q.vlan_tpid.to_bytes(2, "big") + q.vlan_tci.to_bytes(2, "big")
    return head + etype.to_bytes(2, "big")


def arp_reply(req: bytes | Frame, mac: bytes | str) -> bytes:
    """The ARP reply (``ovl_wire_arp_reply``) saying that ``req``'s target
    address is at ``mac``: 42 bytes (46 with the request's VLAN tag), no
    padding. ValueError unless ``req`` is an ARP request; a malformed frame
    given as bytes raises :class:`Drop` from :func:`parse_frame`."""
    q = _frame(req)
    if q.l3 != L3_ARP or q.arp_op != 1:
        raise ValueError("arp_reply: the frame is not an ARP request")
    m = _mac(mac)
    arp = bytes.fromhex("0001080006040002") + m + q.arp_tpa + q.arp_sha + q.arp_spa
    return _answer_eth(q, m, ETH_P_ARP) + arp


def _ipv6_pseudo_sum(src: bytes, dst: bytes, length: int, nh: int) -> int:
    """The unfolded sum of the IPv6 pseudo-header (RFC 8200 section 8.1)."""
    pseudo = src + dst + length.to_bytes(4, "big") + bytes([0, 0, 0, nh])
    return sum(int.from_bytes(pseudo[i : i + 2], "big") for i in range(0, len(pseudo), 2))


def nd_advert(ns: bytes | Frame, mac: bytes | str) -> bytes:
    """The solicited neighbour advertisement (``ovl_wire_nd_advert``) answering
    ``ns`` with its target at ``mac``: R=0 S=1 O=1, hop limit 255, a target
    link-layer option, to the solicitation's source. ValueError unless ``ns``
    is a neighbour solicitation, or when it comes from :: (duplicate address
    detection is never answered)."""
    q = _frame(ns)
    if q.l3 != L3_IPV6 or q.ip_proto != IPPROTO_ICMPV6 or q.icmp_type != ND_NS or q.is_fragment:
        raise ValueError("nd_advert: the frame is not a neighbour solicitation")
    if q.ip_src == bytes(16):
        raise ValueError("nd_advert: a solicitation from :: (DAD) is never answered")
    m = _mac(mac)
    src, dst = q.nd_target, q.ip_src
    body = bytes([ND_NA, 0, 0, 0, 0x60, 0, 0, 0]) + q.nd_target + bytes([ND_OPT_TLLA, 1]) + m
    csum = checksum(body, _ipv6_pseudo_sum(src, dst, len(body), IPPROTO_ICMPV6))
    body = body[:2] + csum.to_bytes(2, "big") + body[4:]
    ip = bytes([0x60, 0, 0, 0]) + len(body).to_bytes(2, "big") + bytes([IPPROTO_ICMPV6, 255])
    return _answer_eth(q, m, ETH_P_IPV6) + ip + src + dst + body
