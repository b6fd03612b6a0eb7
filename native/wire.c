/*
 * wire.c — the data plane's wire formats: VXLAN and Geneve headers, Geneve
 * TLV options, the inner Ethernet frame (802.1Q/802.1ad, ARP, IPv4, IPv6 and
 * neighbour discovery, the TCP flags and ICMP type and code that policy and
 * connection tracking will need), the flow hash behind the outer UDP source
 * port, and the ARP replies and neighbour advertisements the engine sends
 * when it answers for a pod. The checksum is csum.c's, the one there is.
 *
 * Every function here runs per packet: no allocation, no globals, no logging.
 * Malformed input is never an error path, only a drop reason: decoders return
 * -OVL_C_<ID> (counters.def) and the engine counts it. Every read is bounded
 * by the length the caller gave; nothing trusts a length field it has not
 * checked against that bound.
 *
 * overlay/wire.py is the readable reference for all of this; tests/native/
 * test_wire_c.py holds the two to the same bytes and the same drop reasons,
 * so a change here is a change there.
 *
 * Design notes
 * ------------
 * Order of the Geneve decode checks (wire.py uses the same order):
 *   1. len < 8                          geneve_truncated
 *   2. version != 0                     geneve_bad_version
 *   3. 8 + 4 * optlen > len             geneve_options_truncated
 *   4. a TLV option runs past the area  geneve_option_overrun
 *   5. O bit set                        geneve_oam
 *   6. protocol != 0x6558               geneve_bad_protocol
 * Structure first: a header of another version may lay out everything after
 * its first two bits differently, so nothing else is read before the version;
 * the option area must fit in the datagram before it is walked. Then meaning:
 * a control (OAM) packet is counted as geneve_oam whatever its protocol type,
 * since control messages are not bound to carry Ethernet. The unknown-critical
 * rule is not part of decode: the engine applies ovl_wire_check_options to
 * t->opts afterwards with the node's known options, so it comes last (7).
 * ovl_wire_check_options itself checks the structure of the whole area
 * before the critical rule, so it reports geneve_option_overrun exactly when
 * decode would.
 *
 * The Geneve C (critical options present) bit is not trusted on receive: we
 * parse every option, which RFC 8926 section 3.4 allows to make the C bit
 * moot. On transmit it is computed from the options.
 *
 * Frame parsing ignores the IPv4 total length and the IPv6 payload length:
 * frames arrive from TAP devices and decapsulated datagrams exactly sized, a
 * short frame may carry Ethernet padding, and a GSO frame from a TAP may hold
 * any length. Every field is read within the frame's own length.
 *
 * A TCP, UDP or SCTP header shorter than its 4 bytes of ports is not a drop:
 * ports are reported as 0 and l4_off still points at the header. The counters
 * have no reason for it, the overlay is a switch (as a Linux bridge, it does
 * not judge L4), and the receiving stack drops such a packet itself. Code
 * that filters on ports must not read a 0 port as "any": it checks
 * l4_off + 4 <= len itself when it cares. The same holds for the TCP flags
 * (read when the header reaches its flags byte, 14 bytes in) and the ICMP
 * type and code (read when the 4-byte ICMP header is there; for ICMPv6 a
 * shorter header is icmpv6_truncated, below): 0 otherwise. The type and code
 * of an ICMP error are its own; the header of the packet it quotes is not
 * parsed (a later field, for connection tracking to relate errors to flows).
 *
 * IPv6 fails closed. Port security and the decapsulation checks judge what a
 * packet claims (an ND target, a link-layer address, an RA); a receiver that
 * walks further than we do would act on a claim we never saw. So an IPv6
 * packet the parser cannot classify down to its upper-layer header is a drop
 * with a reason of its own, never "l3 IPv6, nothing to check":
 *   - ipv6_header_chain: more than IPV6_EXT_MAX extension headers; a kind
 *     IANA lists as an extension header that we do not walk (Mobility 135,
 *     HIP 139, Shim6 140, experimental 253/254); or a first (or atomic)
 *     fragment without the whole upper-layer header (RFC 7112: TCP 20 bytes,
 *     UDP 8, SCTP 12, ICMPv6 4). Hop-by-hop, routing, destination options,
 *     fragment and AH (length in 4-byte words + 2, RFC 4302) are walked; ESP
 *     and No Next Header end the chain as opaque upper layers.
 *   - icmpv6_truncated: ICMPv6 shorter than its 4-byte header: the type that
 *     says whether it is ND cannot be read.
 *   - nd_fragmented: ND behind any fragment header, atomic ones included
 *     (RFC 6980; Linux drops those itself, other stacks may not).
 * A non-first fragment is not a drop: it carries no upper-layer header to
 * judge, and it cannot be reassembled into anything without its first
 * fragment, which went through the rules above. icmp_type reports the type
 * of every readable ICMPv6 message (port security needs MLD's too).
 * The engine forwards a frame the parser refuses only from a port without
 * port security ("any valid Ethernet frame"); decapsulation refuses it too.
 */
#include "csum.h"
#include "wire.h"

/* ---- byte helpers: every multi-byte field on the wire is big-endian ---- */

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static inline uint32_t rd24(const uint8_t *p)
{
    return (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
}

static inline void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void wr24(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 16);
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)v;
}

#define ETH_HLEN 14
#define ETH_P_IPV4 0x0800
#define ETH_P_ARP 0x0806
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88a8
#define ETH_P_IPV6 0x86dd
#define VLAN_HLEN 4
#define ARP_LEN 28
#define IPV4_HLEN_MIN 20
#define IPV6_HLEN 40
#define IPV6_EXT_MAX 8

#define IPPROTO_HOPOPTS_ 0
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ROUTING_ 43
#define IPPROTO_FRAGMENT_ 44
#define IPPROTO_AH_ 51
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_DSTOPTS_ 60
#define IPPROTO_SCTP_ 132

#define ND_RS 133
#define ND_RA 134
#define ND_NS 135
#define ND_NA 136
#define ND_REDIRECT 137
#define ND_OPT_SLLA 1
#define ND_OPT_TLLA 2
#define ICMPV6_HLEN 4

/* ---- VXLAN (RFC 7348 section 5) ----
 *
 *     0                   1                   2                   3
 *     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |R|R|R|R|I|R|R|R|            Reserved                           |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                VXLAN Network Identifier (VNI) |   Reserved    |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 * I (0x08) must be set; the R bits are zero on transmit and ignored on
 * receipt (the Linux vxlan device without GBP/GPE does the same).
 */
#define VXLAN_F_I 0x08

static int vxlan_encode(const ovl_tunnel_t *t, uint8_t *out, size_t cap)
{
    if (cap < OVL_VXLAN_HLEN)
        return -1;
    out[0] = VXLAN_F_I;
    out[1] = out[2] = out[3] = 0;
    wr24(out + 4, t->vni);
    out[7] = 0;
    return OVL_VXLAN_HLEN;
}

static int vxlan_decode(const uint8_t *buf, size_t len, ovl_tunnel_t *t)
{
    if (len < OVL_VXLAN_HLEN)
        return -OVL_C_VXLAN_TRUNCATED;
    if (!(buf[0] & VXLAN_F_I))
        return -OVL_C_VXLAN_BAD_FLAGS;
    t->vni = rd24(buf + 4);
    t->protocol = OVL_ETH_P_TEB;
    t->flags = buf[0];
    t->opts_len = 0;
    return OVL_VXLAN_HLEN;
}

/* ---- Geneve (RFC 8926 section 3.4) ----
 *
 *     0                   1                   2                   3
 *     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |        Virtual Network Identifier (VNI)       |    Reserved   |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                                                               |
 *    ~                    Variable-Length Options                    ~
 *    |                                                               |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 * Opt Len counts 4-byte words of options. Each option (section 3.5):
 *
 *     0                   1                   2                   3
 *     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |          Option Class         |      Type     |R|R|R| Length  |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                                                               |
 *    ~                  Variable-Length Option Data                  ~
 *    |                                                               |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 * The high bit of Type (0x80) marks the option critical; Length counts
 * 4-byte words of data after this 4-byte option header. The R bits are zero
 * on transmit and ignored on receipt.
 */
#define GENEVE_OPT_HLEN 4
#define GENEVE_OPT_LEN_MASK 0x1f
#define GENEVE_FLAGS_MASK (OVL_GENEVE_F_OAM | OVL_GENEVE_F_CRITICAL)

/* Walk the TLVs of opts[0..len). Returns 0 if they tile the area exactly,
 * else -OVL_C_GENEVE_OPTION_OVERRUN. Sets *critical when one has the
 * critical bit. */
static int geneve_walk(const uint8_t *opts, size_t len, int *critical)
{
    size_t off = 0;
    *critical = 0;
    while (off < len) {
        if (len - off < GENEVE_OPT_HLEN)
            return -OVL_C_GENEVE_OPTION_OVERRUN;
        size_t olen = GENEVE_OPT_HLEN + (size_t)(opts[off + 3] & GENEVE_OPT_LEN_MASK) * 4;
        if (olen > len - off)
            return -OVL_C_GENEVE_OPTION_OVERRUN;
        if (opts[off + 2] & OVL_GENEVE_TYPE_CRITICAL)
            *critical = 1;
        off += olen;
    }
    return 0;
}

static int geneve_encode(const ovl_tunnel_t *t, uint8_t *out, size_t cap)
{
    size_t olen = t->opts_len;
    int critical;

    if (olen % 4 != 0 || olen > OVL_GENEVE_OPTS_MAX)
        return -1;
    if (geneve_walk(t->opts, olen, &critical) != 0)
        return -1;
    if (cap < OVL_GENEVE_HLEN + olen)
        return -1;
    out[0] = (uint8_t)(olen / 4);                 /* version 0 */
    out[1] = (uint8_t)((t->flags & OVL_GENEVE_F_OAM) |
                       (critical ? OVL_GENEVE_F_CRITICAL : 0));
    wr16(out + 2, t->protocol);
    wr24(out + 4, t->vni);
    out[7] = 0;
    memcpy(out + OVL_GENEVE_HLEN, t->opts, olen);
    /* Zero each option's R bits (the walk above proved the layout). */
    for (size_t off = 0; off < olen;) {
        uint8_t *o = out + OVL_GENEVE_HLEN + off;
        o[3] &= GENEVE_OPT_LEN_MASK;
        off += GENEVE_OPT_HLEN + (size_t)o[3] * 4;
    }
    return (int)(OVL_GENEVE_HLEN + olen);
}

static int geneve_decode(const uint8_t *buf, size_t len, ovl_tunnel_t *t)
{
    int critical;

    if (len < OVL_GENEVE_HLEN)
        return -OVL_C_GENEVE_TRUNCATED;
    if (buf[0] >> 6 != 0)
        return -OVL_C_GENEVE_BAD_VERSION;
    size_t olen = (size_t)(buf[0] & 0x3f) * 4;
    if (OVL_GENEVE_HLEN + olen > len)
        return -OVL_C_GENEVE_OPTIONS_TRUNCATED;
    int rc = geneve_walk(buf + OVL_GENEVE_HLEN, olen, &critical);
    if (rc != 0)
        return rc;
    if (buf[1] & OVL_GENEVE_F_OAM)
        return -OVL_C_GENEVE_OAM;
    uint16_t proto = rd16(buf + 2);
    if (proto != OVL_ETH_P_TEB)
        return -OVL_C_GENEVE_BAD_PROTOCOL;
    t->vni = rd24(buf + 4);
    t->protocol = proto;
    t->flags = buf[1] & GENEVE_FLAGS_MASK;
    t->opts_len = (uint8_t)olen;
    memcpy(t->opts, buf + OVL_GENEVE_HLEN, olen);
    return (int)(OVL_GENEVE_HLEN + olen);
}

/* Encode: VXLAN writes flags 0x08 whatever t->flags holds (the Linux vxlan
 * device sends exactly that) and ignores protocol and options. Geneve writes
 * t->protocol as given (the caller sets OVL_ETH_P_TEB), O from t->flags, and
 * C computed from the options. Both refuse a VNI above 24 bits rather than
 * truncate it into another tenant's network. */
int ovl_wire_encode(int encap, const ovl_tunnel_t *t, uint8_t *out, size_t cap)
{
    if (t->vni > OVL_VNI_MAX)
        return -1;
    if (encap == OVL_ENCAP_VXLAN)
        return vxlan_encode(t, out, cap);
    if (encap == OVL_ENCAP_GENEVE)
        return geneve_encode(t, out, cap);
    return -1;
}

/* Decode: on a drop *t is unspecified. encap is configuration, checked when
 * the engine is created; any value but VXLAN or GENEVE is a caller bug and
 * returns -OVL_C__COUNT, which is not a counter id (ovl_counter_name gives
 * NULL for it). */
int ovl_wire_decode(int encap, const uint8_t *buf, size_t len, ovl_tunnel_t *t)
{
    if (encap == OVL_ENCAP_VXLAN)
        return vxlan_decode(buf, len, t);
    if (encap == OVL_ENCAP_GENEVE)
        return geneve_decode(buf, len, t);
    return -OVL_C__COUNT;
}

int ovl_wire_check_options(const uint8_t *opts, size_t len,
                           const uint32_t *known, size_t n_known)
{
    int critical;
    int rc = geneve_walk(opts, len, &critical);
    if (rc != 0)
        return rc;
    if (!critical)
        return 0;
    for (size_t off = 0; off < len;) {
        const uint8_t *o = opts + off;
        if (o[2] & OVL_GENEVE_TYPE_CRITICAL) {
            uint32_t key = (uint32_t)rd16(o) << 8 | (o[2] & (uint8_t)~OVL_GENEVE_TYPE_CRITICAL);
            size_t i = 0;
            while (i < n_known && known[i] != key)
                i++;
            if (i == n_known)
                return -OVL_C_GENEVE_UNKNOWN_CRITICAL;
        }
        off += GENEVE_OPT_HLEN + (size_t)(o[3] & GENEVE_OPT_LEN_MASK) * 4;
    }
    return 0;
}

/* ---- the inner frame ----
 *
 * Ethernet II (IEEE 802.3 clause 3), optionally with one or two tags:
 *
 *    | dst mac (6) | src mac (6) | [TPID 0x8100/0x88a8 (2) | TCI (2)] x0..2 | type (2) |
 *
 * A third tag is not followed: the frame is reported with ethertype 0x8100
 * (or 0x88a8) and l3 NONE. The first tag's TPID and TCI are recorded (the
 * outer one, the S-tag of a QinQ frame).
 */

/* ARP for Ethernet/IPv4 (RFC 826), 28 bytes:
 *
 *    | htype 1 (2) | ptype 0x0800 (2) | hlen 6 (1) | plen 4 (1) | op (2) |
 *    | sha (6) | spa (4) | tha (6) | tpa (4) |
 */
static int parse_arp(const uint8_t *p, size_t avail, ovl_frame_t *f)
{
    if (avail < ARP_LEN || rd16(p) != 1 || rd16(p + 2) != ETH_P_IPV4 || p[4] != 6 || p[5] != 4)
        return -OVL_C_ARP_TRUNCATED;
    f->l3 = OVL_L3_ARP;
    f->arp_op = rd16(p + 6);
    memcpy(f->arp_sha, p + 8, 6);
    memcpy(f->arp_spa, p + 14, 4);
    memcpy(f->arp_tha, p + 18, 6);
    memcpy(f->arp_tpa, p + 24, 4);
    return 0;
}

static inline int has_ports(uint8_t proto)
{
    return proto == IPPROTO_TCP_ || proto == IPPROTO_UDP_ || proto == IPPROTO_SCTP_;
}

/* What the L4 header at l4_off tells (see the design notes for short ones).
 * Ports of TCP (RFC 9293), UDP (RFC 768) and SCTP (RFC 9260) all sit in the
 * first 4 bytes: source port, destination port. TCP's flags are byte 13:
 *
 *    | source port (2) | destination port (2) | sequence (4) | ack (4) |
 *    | data offset (4) | reserved (4) | CWR ECE URG ACK PSH RST SYN FIN | ...
 *
 * ICMP (RFC 792) and ICMPv6 (RFC 4443) start with type (1), code (1) and a
 * checksum (2); ICMPv4 is read here, ICMPv6 in parse_ipv6 (its truncation
 * is a drop). */
static void parse_l4(const uint8_t *frame, size_t len, ovl_frame_t *f)
{
    size_t avail = len - f->l4_off;
    const uint8_t *p = frame + f->l4_off;
    if (has_ports(f->ip_proto) && avail >= 4) {
        f->sport = rd16(p);
        f->dport = rd16(p + 2);
    }
    if (f->ip_proto == IPPROTO_TCP_ && avail >= 14)
        f->tcp_flags = p[13];
    if (f->ip_proto == IPPROTO_ICMP_ && f->l3 == OVL_L3_IPV4 && avail >= 4) {
        f->icmp_type = p[0];
        f->icmp_code = p[1];
    }
}

/* IPv4 (RFC 791 section 3.1):
 *
 *     0                   1                   2                   3
 *     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |Version|  IHL  |Type of Service|          Total Length         |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |         Identification        |Flags|      Fragment Offset    |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |  Time to Live |    Protocol   |         Header Checksum       |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                       Source Address                          |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                    Destination Address                        |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                    Options                    |    Padding    |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 */
static int parse_ipv4(const uint8_t *frame, size_t len, ovl_frame_t *f)
{
    const uint8_t *p = frame + f->l3_off;
    size_t avail = len - f->l3_off;

    if (avail < IPV4_HLEN_MIN || p[0] >> 4 != 4)
        return -OVL_C_IPV4_TRUNCATED;
    size_t ihl = (size_t)(p[0] & 0x0f) * 4;
    if (ihl < IPV4_HLEN_MIN || ihl > avail)
        return -OVL_C_IPV4_TRUNCATED;
    f->l3 = OVL_L3_IPV4;
    f->ip_proto = p[9];
    memcpy(f->ip_src, p + 12, 4);
    memcpy(f->ip_dst, p + 16, 4);
    if (rd16(p + 6) & 0x1fff) {
        f->is_fragment = 1;     /* no L4 header in this fragment */
        return 0;
    }
    f->l4_off = (uint16_t)(f->l3_off + ihl);
    parse_l4(frame, len, f);
    return 0;
}

/* ICMPv6 neighbour discovery (RFC 4861 section 4). Fixed parts before the
 * options: RS 8 bytes, RA 16, NS and NA 24 (type, code, checksum, 4 bytes of
 * reserved or flags, target), redirect 40 (target, destination). Options:
 *
 *    | type (1) | length in 8-byte units (1) | data ... |
 *
 * A length of 0 or an option past the end is malformed (section 4.6). The
 * first source (RS, RA, NS) or target (NA, redirect) link-layer option is
 * kept; Linux ignores later duplicates the same way. A redirect's target
 * link-layer option is the better first hop's, not the sender's. */
static int parse_nd(const uint8_t *p, size_t avail, ovl_frame_t *f)
{
    size_t fixed;
    uint8_t want;

    switch (p[0]) {
    case ND_RS: fixed = 8; want = ND_OPT_SLLA; break;
    case ND_RA: fixed = 16; want = ND_OPT_SLLA; break;
    case ND_NS: fixed = 24; want = ND_OPT_SLLA; break;
    case ND_NA: fixed = 24; want = ND_OPT_TLLA; break;
    default: fixed = 40; want = ND_OPT_TLLA; break; /* ND_REDIRECT */
    }
    if (avail < fixed)
        return -OVL_C_ND_TRUNCATED;
    if (p[0] == ND_NS || p[0] == ND_NA || p[0] == ND_REDIRECT)
        memcpy(f->nd_target, p + 8, 16);
    for (size_t off = fixed; off < avail;) {
        if (avail - off < 2 || p[off + 1] == 0 || (size_t)p[off + 1] * 8 > avail - off)
            return -OVL_C_ND_TRUNCATED;
        if (p[off] == want && !f->nd_has_lladdr) {
            f->nd_has_lladdr = 1;
            memcpy(f->nd_lladdr, p + off + 2, 6);
        }
        off += (size_t)p[off + 1] * 8;
    }
    return 0;
}

/* IPv6 (RFC 8200 section 3) and its extension headers (section 4):
 *
 *    | ver 6 (4) | traffic class (8) | flow label (20) |
 *    | payload length (16) | next header (8) | hop limit (8) |
 *    | source address (128) | destination address (128) |
 *
 * Hop-by-hop (0), routing (43) and destination options (60) start with
 * next header (8) and length (8, in 8-byte units not counting the first 8);
 * AH (51, RFC 4302) with next header and length (in 4-byte units, minus 2);
 * the fragment header (44) is 8 bytes: next header, reserved, offset (13) |
 * res (2) | M (1), identification (32). At most IPV6_EXT_MAX of them are
 * followed; one more, or a kind not walked, is ipv6_header_chain (see the
 * design notes for this and the other fail-closed rules). l4_off points at
 * the header ip_proto names, except in a non-first fragment, where it is 0. */
static inline int ext_not_walked(uint8_t nh)
{
    return nh == 135 || nh == 139 || nh == 140 || nh == 253 || nh == 254;
}

/* Bytes of the upper-layer header a first fragment must hold (RFC 7112). */
static inline size_t upper_hlen(uint8_t proto)
{
    switch (proto) {
    case IPPROTO_TCP_: return 20;
    case IPPROTO_UDP_: return 8;
    case IPPROTO_SCTP_: return 12;
    case IPPROTO_ICMPV6_: return ICMPV6_HLEN;
    default: return 0;
    }
}

static int parse_ipv6(const uint8_t *frame, size_t len, ovl_frame_t *f)
{
    const uint8_t *p = frame + f->l3_off;
    size_t avail = len - f->l3_off;

    if (avail < IPV6_HLEN || p[0] >> 4 != 6)
        return -OVL_C_IPV6_TRUNCATED;
    f->l3 = OVL_L3_IPV6;
    memcpy(f->ip_src, p + 8, 16);
    memcpy(f->ip_dst, p + 24, 16);

    uint8_t nh = p[6];
    size_t off = IPV6_HLEN;                 /* from the start of the IPv6 header */
    int fragment = 0;                       /* a first (or atomic) fragment */
    for (int n = 0;; n++) {
        size_t hlen;
        if (nh == IPPROTO_HOPOPTS_ || nh == IPPROTO_ROUTING_ || nh == IPPROTO_DSTOPTS_ ||
            nh == IPPROTO_AH_ || nh == IPPROTO_FRAGMENT_) {
            if (n == IPV6_EXT_MAX)
                return -OVL_C_IPV6_HEADER_CHAIN;
        } else if (ext_not_walked(nh)) {
            return -OVL_C_IPV6_HEADER_CHAIN;
        } else {
            break;
        }
        if (nh == IPPROTO_FRAGMENT_) {
            hlen = 8;
        } else {
            if (avail - off < 2)
                return -OVL_C_IPV6_TRUNCATED;
            hlen = nh == IPPROTO_AH_ ? ((size_t)p[off + 1] + 2) * 4 : ((size_t)p[off + 1] + 1) * 8;
        }
        if (avail - off < hlen)
            return -OVL_C_IPV6_TRUNCATED;
        uint8_t next = p[off];
        if (nh == IPPROTO_FRAGMENT_) {
            if (rd16(p + off + 2) & 0xfff8) {
                f->ip_proto = next;
                f->is_fragment = 1;         /* no L4 header in this fragment */
                return 0;
            }
            fragment = 1;
        }
        nh = next;
        off += hlen;
    }
    f->ip_proto = nh;
    f->l4_off = (uint16_t)(f->l3_off + off);
    if (fragment && avail - off < upper_hlen(nh))
        return -OVL_C_IPV6_HEADER_CHAIN;
    parse_l4(frame, len, f);
    if (nh != IPPROTO_ICMPV6_)
        return 0;
    if (avail - off < ICMPV6_HLEN)
        return -OVL_C_ICMPV6_TRUNCATED;
    f->icmp_type = p[off];
    f->icmp_code = p[off + 1];
    if (p[off] < ND_RS || p[off] > ND_REDIRECT)
        return 0;
    if (fragment)
        return -OVL_C_ND_FRAGMENTED;
    return parse_nd(p + off, avail - off, f);
}

int ovl_wire_parse_frame(const uint8_t *frame, size_t len, ovl_frame_t *f)
{
    memset(f, 0, sizeof *f);
    if (len < ETH_HLEN)
        return -OVL_C_FRAME_TOO_SHORT;
    memcpy(f->dst, frame, 6);
    memcpy(f->src, frame + 6, 6);

    size_t off = 12;                        /* the type or TPID field */
    uint16_t type = rd16(frame + off);
    for (int tags = 0; tags < 2 && (type == ETH_P_8021Q || type == ETH_P_8021AD); tags++) {
        if (len - off < 2 + VLAN_HLEN)
            return -OVL_C_VLAN_TRUNCATED;
        if (tags == 0) {
            f->has_vlan = 1;
            f->vlan_tpid = type;
            f->vlan_tci = rd16(frame + off + 2);
        }
        off += VLAN_HLEN;
        type = rd16(frame + off);
    }
    off += 2;
    f->ethertype = type;
    f->l3_off = (uint16_t)off;

    switch (type) {
    case ETH_P_ARP:
        return parse_arp(frame + off, len - off, f);
    case ETH_P_IPV4:
        return parse_ipv4(frame, len, f);
    case ETH_P_IPV6:
        return parse_ipv6(frame, len, f);
    default:
        return 0;                           /* OVL_L3_NONE */
    }
}

/* ---- flow hash and source port ----
 *
 * FNV-1a 32 (offset basis 0x811c9dc5, prime 0x01000193) over
 *   IPv4:  ip_proto, src (4), dst (4), sport (2, BE), dport (2, BE)   13 bytes
 *   IPv6:  ip_proto, src (16), dst (16), sport (2, BE), dport (2, BE) 37 bytes
 *   other: src mac (6), dst mac (6), ethertype (2, BE)                14 bytes
 * then murmur3's fmix32, so that every input bit reaches the low bits the
 * modulo in ovl_wire_source_port keeps. */
#define FNV_BASIS 0x811c9dc5u
#define FNV_PRIME 0x01000193u

static inline uint32_t fnv1a(uint32_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return h;
}

static inline uint32_t fmix32(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

uint32_t ovl_wire_flow_hash(const ovl_frame_t *f)
{
    uint8_t b[37];
    size_t n;

    if (f->l3 == OVL_L3_IPV4 || f->l3 == OVL_L3_IPV6) {
        size_t alen = f->l3 == OVL_L3_IPV4 ? 4 : 16;
        b[0] = f->ip_proto;
        memcpy(b + 1, f->ip_src, alen);
        memcpy(b + 1 + alen, f->ip_dst, alen);
        wr16(b + 1 + 2 * alen, f->sport);
        wr16(b + 3 + 2 * alen, f->dport);
        n = 5 + 2 * alen;
    } else {
        memcpy(b, f->src, 6);
        memcpy(b + 6, f->dst, 6);
        wr16(b + 12, f->ethertype);
        n = 14;
    }
    return fmix32(fnv1a(FNV_BASIS, b, n));
}

/* ---- the steering hash ----
 *
 * Which worker owns a flow (engine.h, "Per-flow state"): steer % workers.
 * Symmetric, so that both directions of a flow have one owner; read only at
 * fixed offsets from the frame's first byte, because the kernel computes the
 * same value with the BPF programs of steer.c (for the underlay after the
 * tunnel header, for a TAP from byte 0), and a BPF load past the end stops
 * the program with 0: so does this function (owner: worker 0).
 *
 *   ethertype (12, 2)  0x0800 IPv4          0x86dd IPv6             other
 *   fold               src ^ dst (26, 30)   the 8 address words     dst mac ^ src mac:
 *                                           of src and dst (22..54) W(0)^W(6)^H(4)^H(10)
 *   ports              TCP/UDP/SCTP, not    next header (20) is     none
 *                      a fragment (flags    TCP/UDP/SCTP: at 54
 *                      and offset at 20 &
 *                      0x3fff == 0): at
 *                      14 + 4 * IHL (14)
 *   k2                 proto << 16 | (sport ^ dport) with ports, else 0
 *   hash               fmix32(fold ^ k2 * 0x9e3779b1)
 *
 * What has no ports at a fixed offset (ICMP, fragments, IPv6 with extension
 * headers) is steered by its address pair alone, as the kernel's flow
 * dissector leaves out the ports of fragments. XOR makes the fold and the
 * ports symmetric; the multiply spreads the ports over the word before the
 * finaliser. overlay/wire.py (steer_hash) is the reference. */
static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

uint32_t ovl_wire_steer_hash(const uint8_t *frame, size_t len)
{
    if (len < 14)
        return 0;
    uint16_t type = rd16(frame + 12);
    uint32_t fold = 0, k2 = 0, ports = 0;
    uint8_t proto = 0;
    int with_ports = 0;
    if (type == 0x0800) {
        if (len < 34)
            return 0;
        fold = rd32(frame + 26) ^ rd32(frame + 30);
        proto = frame[23];
        if (has_ports(proto) && (rd16(frame + 20) & 0x3fff) == 0) {
            size_t l4 = 14 + (size_t)(frame[14] & 0x0f) * 4;
            if (len < l4 + 4)
                return 0;
            ports = rd32(frame + l4);
            with_ports = 1;
        }
    } else if (type == 0x86dd) {
        if (len < 54)
            return 0;
        for (size_t off = 22; off < 54; off += 4)
            fold ^= rd32(frame + off);
        proto = frame[20];
        if (has_ports(proto)) {
            if (len < 58)
                return 0;
            ports = rd32(frame + 54);
            with_ports = 1;
        }
    } else {
        fold = rd32(frame) ^ rd32(frame + 6) ^ rd16(frame + 4) ^ rd16(frame + 10);
    }
    if (with_ports)
        k2 = (uint32_t)proto << 16 | ((ports >> 16) ^ (ports & 0xffff));
    return fmix32(fold ^ k2 * 0x9e3779b1u);
}

/* hi < lo is a caller bug; it gets lo. */
uint16_t ovl_wire_source_port(uint32_t hash, uint16_t lo, uint16_t hi, uint16_t slots)
{
    if (hi < lo)
        return lo;
    uint32_t range = (uint32_t)hi - lo + 1;        /* 1..65536 */
    uint32_t n = slots ? slots : range;
    uint64_t slot = ovl_wire_source_slot(hash, n);
    return (uint16_t)(lo + slot * range / n);
}

/* ---- answers: ARP reply and neighbour advertisement ---- */

/* Write the Ethernet header of an answer to q: back to q's source, from mac,
 * with q's VLAN tag if it had one. Returns its length, or 0 when q had two
 * tags (we know only the outer one, and do not answer). */
static size_t answer_eth(const ovl_frame_t *q, const uint8_t *mac, uint16_t type, uint8_t *out)
{
    size_t off = 12;
    memcpy(out, q->src, 6);
    memcpy(out + 6, mac, 6);
    if (q->has_vlan) {
        if (q->l3_off != ETH_HLEN + VLAN_HLEN)
            return 0;
        wr16(out + off, q->vlan_tpid);
        wr16(out + off + 2, q->vlan_tci);
        off += VLAN_HLEN;
    }
    wr16(out + off, type);
    return off + 2;
}

int ovl_wire_arp_reply(const ovl_frame_t *req, const uint8_t *mac,
                       uint8_t *out, size_t cap)
{
    if (req->l3 != OVL_L3_ARP || req->arp_op != 1)
        return -1;
    size_t hlen = req->has_vlan ? ETH_HLEN + VLAN_HLEN : ETH_HLEN;
    if (cap < hlen + ARP_LEN || answer_eth(req, mac, ETH_P_ARP, out) != hlen)
        return -1;
    uint8_t *a = out + hlen;
    wr16(a, 1);                     /* htype: Ethernet */
    wr16(a + 2, ETH_P_IPV4);        /* ptype */
    a[4] = 6;
    a[5] = 4;
    wr16(a + 6, 2);                 /* op: reply */
    memcpy(a + 8, mac, 6);          /* sha */
    memcpy(a + 14, req->arp_tpa, 4);/* spa: the address asked for */
    memcpy(a + 18, req->arp_sha, 6);/* tha */
    memcpy(a + 24, req->arp_spa, 4);/* tpa */
    return (int)(hlen + ARP_LEN);
}

/* The advertisement (RFC 4861 sections 4.4 and 7.2.4), 32 bytes of ICMPv6
 * after a 40-byte IPv6 header with hop limit 255:
 *
 *    | type 136 | code 0 | checksum (2) |
 *    |R|S|O| reserved (29)              |   R=0 S=1 O=1
 *    | target address (16)              |
 *    | opt type 2 | opt len 1 | mac (6) |   target link-layer address
 *
 * The checksum covers the pseudo-header (RFC 8200 section 8.1): source,
 * destination, upper-layer length (32), three zero bytes, next header 58. */
#define NA_LEN 32

int ovl_wire_nd_advert(const ovl_frame_t *ns, const uint8_t *mac,
                       uint8_t *out, size_t cap)
{
    if (ns->l3 != OVL_L3_IPV6 || ns->ip_proto != IPPROTO_ICMPV6_ || ns->icmp_type != ND_NS ||
        ns->is_fragment)
        return -1;
    uint8_t any = 0;
    for (int i = 0; i < 16; i++)
        any |= ns->ip_src[i];
    if (!any)
        return -1;                  /* duplicate address detection: never answered */
    size_t hlen = ns->has_vlan ? ETH_HLEN + VLAN_HLEN : ETH_HLEN;
    if (cap < hlen + IPV6_HLEN + NA_LEN || answer_eth(ns, mac, ETH_P_IPV6, out) != hlen)
        return -1;

    uint8_t *ip = out + hlen;
    ip[0] = 0x60;                   /* version 6, traffic class 0, flow label 0 */
    ip[1] = ip[2] = ip[3] = 0;
    wr16(ip + 4, NA_LEN);
    ip[6] = IPPROTO_ICMPV6_;
    ip[7] = 255;
    memcpy(ip + 8, ns->nd_target, 16);
    memcpy(ip + 24, ns->ip_src, 16);

    uint8_t *na = ip + IPV6_HLEN;
    na[0] = ND_NA;
    na[1] = 0;
    na[2] = na[3] = 0;              /* checksum, below */
    na[4] = 0x60;                   /* S | O */
    na[5] = na[6] = na[7] = 0;
    memcpy(na + 8, ns->nd_target, 16);
    na[24] = ND_OPT_TLLA;
    na[25] = 1;
    memcpy(na + 26, mac, 6);

    uint64_t sum = ovl_csum_add(ip + 8, 32, 0);  /* source and destination */
    uint8_t tail[8] = {0, 0, 0, NA_LEN, 0, 0, 0, IPPROTO_ICMPV6_};
    sum = ovl_csum_add(tail, sizeof tail, sum);   /* upper-layer length, next header */
    uint16_t c = (uint16_t)~ovl_csum_fold(ovl_csum_add(na, NA_LEN, sum));
    memcpy(na + 2, &c, 2);                        /* native-order sum: network order */
    return (int)(hlen + IPV6_HLEN + NA_LEN);
}
