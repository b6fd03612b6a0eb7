/*
 * check_wire.c — feed wire.c random, mutated and truncated packets under
 * AddressSanitizer and UndefinedBehaviorSanitizer
 * (tests/native/test_native_sanitize.py builds and runs it).
 *
 *   gcc -std=gnu11 -Wall -Wextra -Werror -fsanitize=address,undefined \
 *       -fno-sanitize-recover=all -g -Inative \
 *       native/tests/check_wire.c native/wire.c native/csum.c native/counters.c \
 *       native/map.c && ./a.out
 *
 * Every input is copied into a heap block of exactly its length, so a read one
 * byte past the end is an ASan report, not a quiet read of the next byte.
 * Beyond memory safety, each result is checked against the contracts in
 * overlay.h (a header length within the datagram, a drop reason that is a
 * drop, offsets inside the frame, answers that parse back as answers) and
 * every answer is checked by re-parsing it. Exits 0, or 1 with a message and
 * the offending bytes in hex. Deterministic: a fixed-seed xorshift64* PRNG.
 * Optional argument: the number of random iterations (default 200000).
 */
#include "ovl.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct rng { uint64_t s; } rng_t;

static uint64_t rnd(rng_t *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545f4914f6cdd1dULL;
}

static size_t rnd_below(rng_t *r, size_t n)
{
    return n ? (size_t)(rnd(r) % n) : 0;
}

static void dump(const char *what, const uint8_t *buf, size_t len)
{
    fprintf(stderr, "check_wire: %s\n  input (%zu bytes): ", what, len);
    for (size_t i = 0; i < len; i++)
        fprintf(stderr, "%02x", buf[i]);
    fprintf(stderr, "\n");
}

#define CHECK(cond, buf, len)                                                   \
    do {                                                                        \
        if (!(cond)) {                                                          \
            dump("failed: " #cond, (buf), (len));                               \
            fprintf(stderr, "  at %s:%d\n", __FILE__, __LINE__);                \
            exit(1);                                                            \
        }                                                                       \
    } while (0)

/* ---- reference implementations, deliberately naive ---- */

static uint16_t ref_csum(const uint8_t *p, size_t n, uint32_t initial)
{
    uint64_t s = initial;
    for (size_t i = 0; i + 1 < n; i += 2)
        s += (uint32_t)p[i] << 8 | p[i + 1];
    if (n % 2)
        s += (uint32_t)p[n - 1] << 8;
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

static int is_drop_in(int rc, const int *ids, size_t n)
{
    if (rc >= 0 || -rc >= OVL_C__COUNT || !ovl_counter_is_drop((size_t)-rc))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (-rc == ids[i])
            return 1;
    return 0;
}

static const int vxlan_drops[] = {OVL_C_VXLAN_TRUNCATED, OVL_C_VXLAN_BAD_FLAGS};
static const int geneve_drops[] = {
    OVL_C_GENEVE_TRUNCATED, OVL_C_GENEVE_BAD_VERSION, OVL_C_GENEVE_OPTIONS_TRUNCATED,
    OVL_C_GENEVE_OPTION_OVERRUN, OVL_C_GENEVE_BAD_PROTOCOL, OVL_C_GENEVE_OAM,
};
static const int option_drops[] = {OVL_C_GENEVE_OPTION_OVERRUN, OVL_C_GENEVE_UNKNOWN_CRITICAL};
static const int frame_drops[] = {
    OVL_C_FRAME_TOO_SHORT, OVL_C_VLAN_TRUNCATED, OVL_C_ARP_TRUNCATED,
    OVL_C_IPV4_TRUNCATED, OVL_C_IPV6_TRUNCATED, OVL_C_ND_TRUNCATED,
    OVL_C_IPV6_HEADER_CHAIN, OVL_C_ICMPV6_TRUNCATED, OVL_C_ND_FRAGMENTED,
};
#define N(a) (sizeof(a) / sizeof((a)[0]))

/* ---- checks on one input ---- */

static void check_tunnel(int encap, const uint8_t *buf, size_t len)
{
    ovl_tunnel_t t, t2;
    uint8_t out[OVL_GENEVE_HLEN + OVL_GENEVE_OPTS_MAX];

    int rc = ovl_wire_decode(encap, buf, len, &t);
    if (rc < 0) {
        CHECK(encap == OVL_ENCAP_VXLAN ? is_drop_in(rc, vxlan_drops, N(vxlan_drops))
                                       : is_drop_in(rc, geneve_drops, N(geneve_drops)),
              buf, len);
        return;
    }
    CHECK((size_t)rc <= len && rc >= 8, buf, len);
    CHECK(t.vni <= OVL_VNI_MAX && t.protocol == OVL_ETH_P_TEB, buf, len);
    if (encap == OVL_ENCAP_VXLAN) {
        CHECK(rc == 8 && t.opts_len == 0 && (t.flags & 0x08) && t.flags == buf[0], buf, len);
    } else {
        CHECK((size_t)rc == 8u + t.opts_len && t.opts_len % 4 == 0, buf, len);
        CHECK(memcmp(t.opts, buf + 8, t.opts_len) == 0, buf, len);
        CHECK(!(t.flags & ~(OVL_GENEVE_F_OAM | OVL_GENEVE_F_CRITICAL)), buf, len);
        CHECK(ovl_wire_check_options(t.opts, t.opts_len, NULL, 0) != -OVL_C_GENEVE_OPTION_OVERRUN,
              buf, len);
    }
    /* What decodes re-encodes to the same header (reserved bits aside) and
     * decodes again to the same tunnel. */
    int n = ovl_wire_encode(encap, &t, out, sizeof out);
    CHECK(n == rc, buf, len);
    CHECK(ovl_wire_encode(encap, &t, out, (size_t)n - 1) == -1, buf, len);
    CHECK(ovl_wire_decode(encap, out, (size_t)n, &t2) == n, buf, len);
    CHECK(t2.vni == t.vni && t2.opts_len == t.opts_len, buf, len);
    CHECK(memcmp(out + 4, buf + 4, 3) == 0 && out[7] == 0, buf, len);
    if (encap == OVL_ENCAP_GENEVE) {
        CHECK(out[0] == buf[0] && memcmp(out + 2, buf + 2, 2) == 0, buf, len);
        for (size_t off = 0; off < t.opts_len;) {
            CHECK(memcmp(out + 8 + off, buf + 8 + off, 3) == 0, buf, len);
            CHECK(out[8 + off + 3] == (buf[8 + off + 3] & 0x1f), buf, len);
            off += 4 + (size_t)(buf[8 + off + 3] & 0x1f) * 4;
        }
    }
}

static void check_answer(const ovl_frame_t *q, const uint8_t *buf, size_t len, rng_t *r, int arp)
{
    static const uint8_t mac[6] = {0x02, 0, 0, 0, 0xaa, 0xbb};
    size_t cap = rnd_below(r, 4) ? 96 : rnd_below(r, 96);
    uint8_t *out = malloc(cap ? cap : 1);
    int n = arp ? ovl_wire_arp_reply(q, mac, out, cap) : ovl_wire_nd_advert(q, mac, out, cap);
    if (n < 0) {
        CHECK(n == -1, buf, len);
        free(out);
        return;
    }
    CHECK((size_t)n <= cap, buf, len);
    ovl_frame_t a;
    CHECK(ovl_wire_parse_frame(out, (size_t)n, &a) == 0, out, (size_t)n);
    CHECK(memcmp(a.src, mac, 6) == 0 && memcmp(a.dst, q->src, 6) == 0, out, (size_t)n);
    CHECK(a.has_vlan == q->has_vlan && a.vlan_tci == q->vlan_tci, out, (size_t)n);
    if (arp) {
        CHECK(q->l3 == OVL_L3_ARP && q->arp_op == 1, buf, len);
        CHECK(n == (q->has_vlan ? 46 : 42) && a.l3 == OVL_L3_ARP && a.arp_op == 2, out, (size_t)n);
        CHECK(memcmp(a.arp_spa, q->arp_tpa, 4) == 0 && memcmp(a.arp_tpa, q->arp_spa, 4) == 0,
              out, (size_t)n);
        CHECK(memcmp(a.arp_sha, mac, 6) == 0 && memcmp(a.arp_tha, q->arp_sha, 6) == 0,
              out, (size_t)n);
    } else {
        CHECK(q->l3 == OVL_L3_IPV6 && q->icmp_type == 135 && !q->is_fragment, buf, len);
        CHECK(a.icmp_type == 136 && a.nd_has_lladdr && memcmp(a.nd_lladdr, mac, 6) == 0,
              out, (size_t)n);
        CHECK(memcmp(a.nd_target, q->nd_target, 16) == 0 && memcmp(a.ip_dst, q->ip_src, 16) == 0,
              out, (size_t)n);
        /* The checksum verifies: the pseudo-header plus the message sum to all ones. */
        const uint8_t *ip = out + a.l3_off;
        uint32_t pseudo = 0;
        for (int i = 8; i < 40; i += 2)
            pseudo += (uint32_t)ip[i] << 8 | ip[i + 1];
        CHECK(ovl_csum(ip + 40, 32, pseudo + 32 + 58) == 0, out, (size_t)n);
    }
    free(out);
}

static void check_frame(const uint8_t *buf, size_t len, rng_t *r)
{
    ovl_frame_t f, f2;
    int rc = ovl_wire_parse_frame(buf, len, &f);
    CHECK(ovl_wire_parse_frame(buf, len, &f2) == rc, buf, len);
    if (rc != 0) {
        CHECK(is_drop_in(rc, frame_drops, N(frame_drops)), buf, len);
        return;
    }
    CHECK(memcmp(&f, &f2, sizeof f) == 0, buf, len);
    CHECK(len >= 14 && f.l3_off <= len, buf, len);
    CHECK(f.l3_off == 14 || f.l3_off == 18 || f.l3_off == 22, buf, len);
    CHECK(f.has_vlan == (f.l3_off > 14) && (f.has_vlan || (!f.vlan_tci && !f.vlan_tpid)), buf, len);
    CHECK(f.l3 <= OVL_L3_IPV6 && f.is_fragment <= 1 && f.nd_has_lladdr <= 1, buf, len);
    CHECK(f.l4_off == 0 || (f.l4_off >= f.l3_off + 20 && f.l4_off <= len), buf, len);
    CHECK(!(f.sport || f.dport) ||
          ((f.ip_proto == 6 || f.ip_proto == 17 || f.ip_proto == 132) && f.l4_off + 4u <= len),
          buf, len);
    CHECK(!f.is_fragment || (f.l4_off == 0 && !f.sport && !f.dport), buf, len);
    /* Any ICMP or ICMPv6 type and code, but only where that header was read. */
    int icmp_read = !f.is_fragment && f.l4_off + 4u <= len &&
                    ((f.l3 == OVL_L3_IPV6 && f.ip_proto == 58) || (f.l3 == OVL_L3_IPV4 && f.ip_proto == 1));
    CHECK((f.icmp_type == 0 && f.icmp_code == 0) || icmp_read, buf, len);
    CHECK(!icmp_read || (f.icmp_type == buf[f.l4_off] && f.icmp_code == buf[f.l4_off + 1]), buf, len);
    /* TCP flags only from a TCP header that reaches them, and exactly them. */
    int flags_read = f.ip_proto == 6 && f.l4_off && f.l4_off + 14u <= len;
    CHECK(flags_read ? f.tcp_flags == buf[f.l4_off + 13] : f.tcp_flags == 0, buf, len);
    CHECK(f.nd_has_lladdr <= (f.l3 == OVL_L3_IPV6 && f.icmp_type >= 133 && f.icmp_type <= 137),
          buf, len);
    /* Fail closed: an IPv6 packet that parses names an upper layer, not an
     * extension header it stopped at. */
    CHECK(f.l3 != OVL_L3_IPV6 || f.is_fragment ||
          !(f.ip_proto == 0 || f.ip_proto == 43 || f.ip_proto == 44 || f.ip_proto == 51 ||
            f.ip_proto == 60 || f.ip_proto == 135 || f.ip_proto == 139 || f.ip_proto == 140 ||
            f.ip_proto == 253 || f.ip_proto == 254),
          buf, len);
    switch (f.l3) {
    case OVL_L3_ARP: CHECK(f.l3_off + 28u <= len && f.ethertype == 0x0806, buf, len); break;
    case OVL_L3_IPV4: CHECK(f.l3_off + 20u <= len && f.ethertype == 0x0800, buf, len); break;
    case OVL_L3_IPV6: CHECK(f.l3_off + 40u <= len && f.ethertype == 0x86dd, buf, len); break;
    default: CHECK(f.ip_proto == 0 && f.l4_off == 0 && !f.arp_op, buf, len); break;
    }

    uint32_t h = ovl_wire_flow_hash(&f);
    CHECK(h == ovl_wire_flow_hash(&f2), buf, len);
    uint16_t lo = (uint16_t)rnd(r), hi = (uint16_t)rnd(r), slots = (uint16_t)rnd_below(r, 40);
    if (lo > hi) {
        uint16_t x = lo;
        lo = hi;
        hi = x;
    }
    uint16_t port = ovl_wire_source_port(h, lo, hi, slots);
    CHECK(port >= lo && port <= hi, buf, len);
    CHECK(ovl_wire_source_port(h, 49152, 65535, 16) % 1024 == 0, buf, len);

    check_answer(&f, buf, len, r, 1);
    check_answer(&f, buf, len, r, 0);
}

static void check_options(const uint8_t *buf, size_t len, rng_t *r)
{
    uint32_t known[4];
    size_t n = rnd_below(r, 5);
    for (size_t i = 0; i < n; i++)
        known[i] = len >= 3 && rnd_below(r, 2)
                       ? (uint32_t)buf[0] << 16 | (uint32_t)buf[1] << 8 | (buf[2] & 0x7f)
                       : (uint32_t)rnd(r) & 0xffffff;
    int rc = ovl_wire_check_options(buf, len, known, n);
    CHECK(rc == 0 || is_drop_in(rc, option_drops, N(option_drops)), buf, len);
    if (rc == -OVL_C_GENEVE_UNKNOWN_CRITICAL)
        CHECK(ovl_wire_check_options(buf, len, NULL, 0) == rc, buf, len);
}

static void check_csum(const uint8_t *buf, size_t len, rng_t *r)
{
    uint32_t initial = rnd_below(r, 2) ? 0 : (uint32_t)rnd(r);
    for (size_t k = 0; k < 4 && k <= len; k++)
        CHECK(ovl_csum(buf + k, len - k, initial) == ref_csum(buf + k, len - k, initial), buf, len);
}

/* Run every check on data[0..len), copied into a heap block of exactly len. */
static void check_all(const uint8_t *data, size_t len, rng_t *r)
{
    uint8_t *buf = malloc(len ? len : 1);
    memcpy(buf, data, len);
    check_tunnel(OVL_ENCAP_VXLAN, buf, len);
    check_tunnel(OVL_ENCAP_GENEVE, buf, len);
    check_frame(buf, len, r);
    check_options(buf, len, r);
    check_csum(buf, len, r);
    /* the engine's receive path: decode, then parse what follows */
    ovl_tunnel_t t;
    int off = ovl_wire_decode(OVL_ENCAP_GENEVE, buf, len, &t);
    if (off >= 0)
        check_frame(buf + off, len - (size_t)off, r);
    free(buf);
}

/* ---- the corpus: valid packets of every kind the parser knows ---- */

#define MAC_D 0x33, 0x33, 0xff, 0x00, 0x00, 0x02
#define MAC_S 0x02, 0x00, 0x00, 0x00, 0x00, 0x01
#define LL1 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01
#define LL2 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02
#define IP6_HDR(plen, nh) 0x60, 0, 0, 0, 0, (plen), (nh), 255

static const uint8_t arp_req[] = {
    MAC_D, MAC_S, 0x08, 0x06,
    0, 1, 0x08, 0x00, 6, 4, 0, 1, MAC_S, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2,
};
static const uint8_t arp_vlan[] = {
    MAC_D, MAC_S, 0x81, 0x00, 0x20, 0x05, 0x08, 0x06,
    0, 1, 0x08, 0x00, 6, 4, 0, 1, MAC_S, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2,
};
static const uint8_t ipv4_tcp_qinq[] = {
    MAC_D, MAC_S, 0x88, 0xa8, 0x00, 0x64, 0x81, 0x00, 0x00, 0x07, 0x08, 0x00,
    0x46, 0, 0, 44, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 1, 1, 1, 0,
    0x30, 0x39, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
};
static const uint8_t ipv4_udp_frag[] = {
    MAC_D, MAC_S, 0x08, 0x00,
    0x45, 0, 0, 28, 0, 1, 0x20, 0x00, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    0x00, 0x44, 0x00, 0x43, 0, 8, 0, 0,
};
static const uint8_t ipv4_later_frag[] = {
    MAC_D, MAC_S, 0x08, 0x00,
    0x45, 0, 0, 28, 0, 1, 0x20, 0x10, 64, 132, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    1, 2, 3, 4, 5, 6, 7, 8,
};
static const uint8_t ipv6_ext_udp[] = {
    MAC_D, MAC_S, 0x86, 0xdd, IP6_HDR(40, 0), LL1, LL2,
    60, 0, 1, 4, 0, 0, 0, 0,                       /* hop-by-hop, PadN */
    44, 1, 1, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* dest opts, 16 bytes */
    17, 0, 0x00, 0x01, 0, 0, 0, 9,                 /* fragment, offset 0, M */
    0x12, 0x34, 0x00, 0x35, 0, 8, 0, 0,            /* UDP */
};
static const uint8_t ipv6_later_frag[] = {
    MAC_D, MAC_S, 0x86, 0xdd, IP6_HDR(16, 44), LL1, LL2,
    6, 0, 0x00, 0x08, 0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8,
};
static const uint8_t nd_ns[] = {
    MAC_D, MAC_S, 0x86, 0xdd, IP6_HDR(32, 58), LL1,
    0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2,
    135, 0, 0, 0, 0, 0, 0, 0, LL2, 1, 1, MAC_S,
};
static const uint8_t nd_na[] = {
    MAC_D, MAC_S, 0x86, 0xdd, IP6_HDR(32, 58), LL2, LL1,
    136, 0, 0, 0, 0x60, 0, 0, 0, LL2, 2, 1, MAC_S,
};
static const uint8_t nd_ra[] = {
    MAC_D, MAC_S, 0x86, 0xdd, IP6_HDR(56, 58), LL1, LL2,
    134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0,
    5, 1, 0, 0, 0, 0, 0x05, 0xdc,                  /* MTU */
    1, 1, MAC_S,                                   /* source link-layer */
    3, 2, 64, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* prefix, cut to 16 for size */
};
static const uint8_t nd_rs[] = {
    MAC_D, MAC_S, 0x86, 0xdd, IP6_HDR(16, 58), LL1, LL2,
    133, 0, 0, 0, 0, 0, 0, 0, 1, 1, MAC_S,
};
static const uint8_t nd_redirect[] = {
    MAC_D, MAC_S, 0x86, 0xdd, IP6_HDR(48, 58), LL1, LL2,
    137, 0, 0, 0, 0, 0, 0, 0, LL2, LL1, 2, 1, MAC_S,
};
/* Nine destination-options headers before an NA: one more than is walked. */
#define DST8(nh) (nh), 0, 1, 4, 0, 0, 0, 0
static const uint8_t nd_na_nine_ext[] = {
    MAC_D, MAC_S, 0x86, 0xdd, IP6_HDR(104, 60), LL2, LL1,
    DST8(60), DST8(60), DST8(60), DST8(60), DST8(60), DST8(60), DST8(60), DST8(60), DST8(58),
    136, 0, 0, 0, 0x20, 0, 0, 0, LL2, 2, 1, MAC_S,
};
/* AH (walked: 4-byte words + 2) before an ICMPv6 echo request. */
static const uint8_t ipv6_ah_echo[] = {
    MAC_D, MAC_S, 0x86, 0xdd, IP6_HDR(32, 51), LL1, LL2,
    58, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    128, 0, 0, 0, 0, 1, 0, 1,
};
/* An MLDv2 report from :: behind a hop-by-hop router alert. */
static const uint8_t mld_report[] = {
    0x33, 0x33, 0, 0, 0, 0x16, MAC_S, 0x86, 0xdd, IP6_HDR(36, 0),
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16,
    58, 0, 5, 2, 0, 0, 1, 0,                       /* router alert, PadN */
    143, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1,
};
/* A neighbour solicitation behind an atomic fragment header (RFC 6980). */
static const uint8_t nd_ns_atomic_frag[] = {
    MAC_D, MAC_S, 0x86, 0xdd, IP6_HDR(40, 44), LL1,
    0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2,
    58, 0, 0, 0, 0, 0, 0, 7,
    135, 0, 0, 0, 0, 0, 0, 0, LL2, 1, 1, MAC_S,
};
static const uint8_t vxlan_pkt[] = {
    0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0,
    MAC_D, MAC_S, 0x08, 0x06,
    0, 1, 0x08, 0x00, 6, 4, 0, 1, MAC_S, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2,
};
static const uint8_t geneve_pkt[] = {
    0x05, 0x40, 0x65, 0x58, 0x12, 0x34, 0x56, 0,
    0x01, 0x02, 0x80, 0x01, 1, 2, 3, 4,            /* critical, 4 bytes */
    0xff, 0xff, 0x05, 0x02, 1, 2, 3, 4, 5, 6, 7, 8, /* 8 bytes */
    MAC_D, MAC_S, 0x86, 0xdd, IP6_HDR(32, 58), LL1,
    0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2,
    135, 0, 0, 0, 0, 0, 0, 0, LL2, 1, 1, MAC_S,
};

static const struct { const uint8_t *p; size_t n; } corpus[] = {
#define C(a) {a, sizeof a}
    C(arp_req), C(arp_vlan), C(ipv4_tcp_qinq), C(ipv4_udp_frag), C(ipv4_later_frag),
    C(ipv6_ext_udp), C(ipv6_later_frag), C(nd_ns), C(nd_na), C(nd_ra), C(nd_rs),
    C(nd_redirect), C(ipv6_ah_echo), C(mld_report), C(nd_na_nine_ext), C(nd_ns_atomic_frag),
    C(vxlan_pkt), C(geneve_pkt),
#undef C
};

/* The corpus must be what it claims, or the fuzzing below starts nowhere. */
static void check_corpus(void)
{
    ovl_frame_t f;
    ovl_tunnel_t t;
    for (size_t i = 0; i < N(corpus) - 4; i++)
        CHECK(ovl_wire_parse_frame(corpus[i].p, corpus[i].n, &f) == 0, corpus[i].p, corpus[i].n);
    CHECK(ovl_wire_parse_frame(nd_na_nine_ext, sizeof nd_na_nine_ext, &f) == -OVL_C_IPV6_HEADER_CHAIN,
          nd_na_nine_ext, sizeof nd_na_nine_ext);
    CHECK(ovl_wire_parse_frame(nd_ns_atomic_frag, sizeof nd_ns_atomic_frag, &f) == -OVL_C_ND_FRAGMENTED,
          nd_ns_atomic_frag, sizeof nd_ns_atomic_frag);
    CHECK(ovl_wire_parse_frame(ipv6_ah_echo, sizeof ipv6_ah_echo, &f) == 0 && f.ip_proto == 58 &&
              f.icmp_type == 128, ipv6_ah_echo, sizeof ipv6_ah_echo);
    CHECK(ovl_wire_parse_frame(mld_report, sizeof mld_report, &f) == 0 && f.icmp_type == 143,
          mld_report, sizeof mld_report);
    CHECK(ovl_wire_decode(OVL_ENCAP_VXLAN, vxlan_pkt, sizeof vxlan_pkt, &t) == 8,
          vxlan_pkt, sizeof vxlan_pkt);
    CHECK(ovl_wire_decode(OVL_ENCAP_GENEVE, geneve_pkt, sizeof geneve_pkt, &t) == 28,
          geneve_pkt, sizeof geneve_pkt);
    CHECK(ovl_wire_parse_frame(nd_ns, sizeof nd_ns, &f) == 0 && f.icmp_type == 135 && f.nd_has_lladdr,
          nd_ns, sizeof nd_ns);
    CHECK(ovl_wire_parse_frame(nd_ra, sizeof nd_ra, &f) == 0 && f.icmp_type == 134 && f.nd_has_lladdr,
          nd_ra, sizeof nd_ra);
    CHECK(ovl_wire_parse_frame(ipv6_ext_udp, sizeof ipv6_ext_udp, &f) == 0 && f.ip_proto == 17 &&
              f.dport == 53 && !f.is_fragment, ipv6_ext_udp, sizeof ipv6_ext_udp);
    CHECK(ovl_wire_parse_frame(ipv4_tcp_qinq, sizeof ipv4_tcp_qinq, &f) == 0 && f.dport == 80 &&
              f.vlan_tpid == 0x88a8 && f.vlan_tci == 100, ipv4_tcp_qinq, sizeof ipv4_tcp_qinq);
}

int main(int argc, char **argv)
{
    rng_t r = {0x853c49e6748fea9bULL};
    long iterations = argc > 1 ? atol(argv[1]) : 200000;
    uint8_t work[512];
    long inputs = 0;

    check_corpus();

    /* Every truncation and every single-byte change of every corpus packet. */
    for (size_t i = 0; i < N(corpus); i++) {
        const uint8_t *p = corpus[i].p;
        size_t n = corpus[i].n;
        for (size_t cut = 0; cut <= n; cut++, inputs++)
            check_all(p, cut, &r);
        for (size_t at = 0; at < n; at++) {
            const uint8_t values[] = {0x00, 0xff, (uint8_t)(p[at] ^ 0x01), (uint8_t)(p[at] ^ 0x80),
                                      (uint8_t)rnd(&r)};
            for (size_t v = 0; v < N(values); v++, inputs++) {
                memcpy(work, p, n);
                work[at] = values[v];
                check_all(work, n, &r);
            }
        }
    }

    /* Random: mutate a corpus packet (bytes, cut, extension), or pure noise. */
    for (long it = 0; it < iterations; it++, inputs++) {
        size_t n;
        if (rnd_below(&r, 8) == 0) {
            n = rnd_below(&r, 300);
            for (size_t k = 0; k < n; k++)
                work[k] = (uint8_t)rnd(&r);
        } else {
            size_t i = rnd_below(&r, N(corpus));
            n = corpus[i].n;
            memcpy(work, corpus[i].p, n);
            for (size_t k = 1 + rnd_below(&r, 6); k > 0; k--) {
                size_t at = rnd_below(&r, n);
                work[at] = rnd_below(&r, 2) ? (uint8_t)rnd(&r) : (uint8_t)(work[at] ^ (1u << rnd_below(&r, 8)));
            }
            if (rnd_below(&r, 4) == 0)
                n = rnd_below(&r, n + 1);
            else if (rnd_below(&r, 4) == 0)
                for (size_t extra = rnd_below(&r, 64); extra > 0 && n < sizeof work; extra--)
                    work[n++] = (uint8_t)rnd(&r);
        }
        check_all(work, n, &r);
    }
    printf("check_wire: %ld inputs, all checks passed\n", inputs);
    return 0;
}
