/*
 * check_offload.c — segmentation and coalescing under AddressSanitizer/UBSan.
 *
 * For random TCP super-frames (IPv4 and IPv6, random MSS, payload and TCP
 * options) and UDP ones: cut them with ovl_gso_segment, check every segment
 * independently (lengths, sequence numbers, flags, IP and L4 checksums with
 * a naive reference checksum here, not csum.c's), then coalesce the TCP segments with
 * ovl_gro_* (UDP ones too, as USO) and check that the result is the original payload with headers
 * a receiver accepts. Also: a corrupted segment is not eligible, a gap in
 * sequence numbers is not appended, and a super-frame whose virtio header
 * does not match its contents is refused.
 */
#include "../csum.h"
#include "../offload.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "check_offload: " __VA_ARGS__);                                            \
        fputc('\n', stderr);                                                                       \
        return 1;                                                                                  \
    } while (0)

/* The Internet checksum, deliberately naive (RFC 1071 word by word) and
 * independent of csum.c, which the code under test uses. Host order. */
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

/* Build Ethernet + IP + TCP/UDP + payload; returns the frame length. */
static size_t build(uint8_t *f, int v6, int tcp, size_t opt_len, size_t pay, uint32_t seq,
                    uint8_t flags)
{
    static const uint8_t dst[6] = {2, 0, 0, 0, 2, 2}, src[6] = {2, 0, 0, 0, 1, 2};
    memcpy(f, dst, 6);
    memcpy(f + 6, src, 6);
    size_t l3 = 14, l4, lh = tcp ? 20 + opt_len : 8;
    if (!v6) {
        f[12] = 0x08, f[13] = 0x00;
        uint8_t *ip = f + l3;
        memset(ip, 0, 20);
        ip[0] = 0x45;
        uint16_t tot = htons((uint16_t)(20 + lh + pay));
        memcpy(ip + 2, &tot, 2);
        ip[4] = 0x12, ip[5] = 0x34, ip[8] = 64, ip[9] = tcp ? 6 : 17;
        ip[12] = 10, ip[13] = 244, ip[14] = 1, ip[15] = 2;
        ip[16] = 10, ip[17] = 244, ip[18] = 1, ip[19] = 3;
        uint16_t c = htons(ref_csum(ip, 20, 0));
        memcpy(ip + 10, &c, 2);
        l4 = l3 + 20;
    } else {
        f[12] = 0x86, f[13] = 0xdd;
        uint8_t *ip = f + l3;
        memset(ip, 0, 40);
        ip[0] = 0x60;
        uint16_t pl = htons((uint16_t)(lh + pay));
        memcpy(ip + 4, &pl, 2);
        ip[6] = tcp ? 6 : 17, ip[7] = 64;
        ip[8] = 0x20, ip[9] = 0x01, ip[10] = 0x00, ip[11] = 0x02, ip[23] = 2;
        ip[24] = 0x20, ip[25] = 0x01, ip[26] = 0x00, ip[27] = 0x02, ip[39] = 3;
        l4 = l3 + 40;
    }
    uint8_t *t = f + l4;
    memset(t, 0, lh);
    t[0] = 0x9c, t[1] = 0x40, t[2] = 0x14, t[3] = 0x51;
    if (tcp) {
        uint32_t s = htonl(seq);
        memcpy(t + 4, &s, 4);
        t[8] = 0, t[9] = 0, t[10] = 0x10, t[11] = 0x01;
        t[12] = (uint8_t)((lh / 4) << 4);
        t[13] = flags;
        t[14] = 0x01, t[15] = 0xf5;
        for (size_t i = 20; i < lh; i++)
            t[i] = i == 20 ? 1 : (uint8_t)i; /* NOP then filler */
    } else {
        uint16_t ul = htons((uint16_t)(8 + pay));
        memcpy(t + 4, &ul, 2);
    }
    for (size_t i = 0; i < pay; i++)
        t[lh + i] = (uint8_t)rnd(256);
    return l4 + lh + pay;
}

/* The L4 checksum of a contiguous segment, verified with ref_csum. */
static int l4_ok(const uint8_t *seg, size_t len, const ovl_frame_t *f)
{
    uint8_t ph[40];
    size_t n;
    uint32_t l4len = (uint32_t)(len - f->l4_off);
    if (f->l3 == OVL_L3_IPV4) {
        memcpy(ph, f->ip_src, 4);
        memcpy(ph + 4, f->ip_dst, 4);
        ph[8] = 0, ph[9] = f->ip_proto;
        ph[10] = (uint8_t)(l4len >> 8), ph[11] = (uint8_t)l4len;
        n = 12;
    } else {
        memcpy(ph, f->ip_src, 16);
        memcpy(ph + 16, f->ip_dst, 16);
        ph[32] = (uint8_t)(l4len >> 24), ph[33] = (uint8_t)(l4len >> 16);
        ph[34] = (uint8_t)(l4len >> 8), ph[35] = (uint8_t)l4len;
        ph[36] = ph[37] = ph[38] = 0, ph[39] = f->ip_proto;
        n = 40;
    }
    uint8_t *buf = malloc(n + l4len);
    memcpy(buf, ph, n);
    memcpy(buf + n, seg + f->l4_off, l4len);
    uint16_t c = ref_csum(buf, n + l4len, 0);
    free(buf);
    return c == 0;
}

static int one_case(int v6, int tcp)
{
    static uint8_t frame[65536];
    size_t opt = tcp ? 4 * rnd(6) : 0;
    size_t hdr = 14 + (v6 ? 40 : 20) + (tcp ? 20 + opt : 8);
    size_t mss = 64 + rnd(1400);
    size_t pay = 1 + rnd((uint32_t)(60000 - hdr));
    if ((pay + mss - 1) / mss > OVL_GSO_MAX_SEGS)
        pay = mss * OVL_GSO_MAX_SEGS - rnd((uint32_t)mss);
    uint32_t seq0 = (uint32_t)rng;
    uint8_t flags = 0x10 | (rnd(2) ? 0x08 : 0);
    size_t len = build(frame, v6, tcp, opt, pay, seq0, flags);
    uint8_t *sized = malloc(len); /* exact-size copy: ASan sees any over-read */
    memcpy(sized, frame, len);
    ovl_frame_t f;
    if (ovl_wire_parse_frame(sized, len, &f) != 0)
        FAIL("built frame does not parse");
    ovl_vnet_hdr_t vh = { .flags = OVL_VNET_F_NEEDS_CSUM,
                          .gso_type = tcp ? (v6 ? OVL_VNET_GSO_TCPV6 : OVL_VNET_GSO_TCPV4)
                                          : OVL_VNET_GSO_UDP_L4,
                          .hdr_len = (uint16_t)hdr, .gso_size = (uint16_t)mss,
                          .csum_start = f.l4_off, .csum_offset = tcp ? 16 : 6 };
    static uint8_t area[OVL_GSO_MAX_SEGS * OVL_SEG_HDR_MAX];
    ovl_seg_t segs[OVL_GSO_MAX_SEGS];
    int n = ovl_gso_segment(sized, len, &vh, &f, area, segs, OVL_GSO_MAX_SEGS);
    if (n != (int)((pay + mss - 1) / mss))
        FAIL("segments: %d for %zu bytes at mss %zu", n, pay, mss);
    static uint8_t segbuf[OVL_GSO_MAX_SEGS][1600 + 128];
    size_t seglen[OVL_GSO_MAX_SEGS];
    size_t got = 0;
    for (int i = 0; i < n; i++) {
        if (segs[i].hdr_len != hdr || segs[i].pay != sized + hdr + (size_t)i * mss)
            FAIL("segment %d header/payload layout", i);
        memcpy(segbuf[i], segs[i].hdr, hdr);
        memcpy(segbuf[i] + hdr, segs[i].pay, segs[i].pay_len);
        seglen[i] = hdr + segs[i].pay_len;
        got += segs[i].pay_len;
        ovl_frame_t sf;
        if (ovl_wire_parse_frame(segbuf[i], seglen[i], &sf) != 0)
            FAIL("segment %d does not parse", i);
        if (!v6 && ref_csum(segbuf[i] + 14, 20, 0) != 0)
            FAIL("segment %d IPv4 header checksum", i);
        if (!l4_ok(segbuf[i], seglen[i], &sf))
            FAIL("segment %d L4 checksum (v6=%d tcp=%d)", i, v6, tcp);
        if (tcp) {
            uint32_t s;
            memcpy(&s, segbuf[i] + sf.l4_off + 4, 4);
            if (ntohl(s) != seq0 + (uint32_t)(i * mss))
                FAIL("segment %d sequence", i);
            uint8_t fl = segbuf[i][sf.l4_off + 13];
            if (i + 1 < n && (fl & 0x08))
                FAIL("PSH before the last segment");
            if (i + 1 == n && (fl & 0x08) != (flags & 0x08))
                FAIL("PSH lost on the last segment");
        }
    }
    if (got != pay)
        FAIL("payload %zu of %zu", got, pay);
    {
        ovl_gro_t g;
        g.port_id = -1;
        for (int i = 0; i < n; i++) {
            ovl_frame_t sf;
            ovl_wire_parse_frame(segbuf[i], seglen[i], &sf);
            if (g.port_id >= 0 && ovl_gro_append(&g, 7, segbuf[i], seglen[i], &sf))
                continue;
            if (g.port_id >= 0)
                FAIL("segment %d of an in-order train was not appended", i);
            if (!ovl_gro_eligible(segbuf[i], seglen[i], &sf, !tcp))
                FAIL("segment %d not eligible", i);
            ovl_gro_start(&g, 7, segbuf[i], seglen[i], &sf);
        }
        size_t bytes;
        int k = ovl_gro_finish(&g, &bytes);
        if (k != n + 1 || bytes != OVL_VNET_HLEN + len)
            FAIL("coalesced %d iovecs, %zu bytes; want %d, %zu", k, bytes, n + 1, OVL_VNET_HLEN + len);
        uint8_t *out = malloc(bytes), *p = out;
        for (int i = 0; i < k; i++) {
            memcpy(p, g.iov[i].iov_base, g.iov[i].iov_len);
            p += g.iov[i].iov_len;
        }
        ovl_vnet_hdr_t ovh;
        memcpy(&ovh, out, sizeof ovh);
        uint8_t *of = out + OVL_VNET_HLEN;
        if (memcmp(of + hdr, sized + hdr, pay) != 0)
            FAIL("coalesced payload differs");
        if (n > 1) {
            if (ovh.gso_size != mss || ovh.hdr_len != hdr || !(ovh.flags & OVL_VNET_F_NEEDS_CSUM))
                FAIL("coalesced virtio header");
            /* NEEDS_CSUM: completing the checksum must give what the sender had. */
            if (ovl_csum_complete(of, len, ovh.csum_start, ovh.csum_offset) != 0)
                FAIL("csum_complete range");
        }
        ovl_frame_t of_f;
        if (ovl_wire_parse_frame(of, len, &of_f) != 0 || !l4_ok(of, len, &of_f))
            FAIL("coalesced frame checksum");
        if (!v6 && (ref_csum(of + 14, 20, 0) != 0 || memcmp(of + 16, sized + 16, 2) != 0))
            FAIL("coalesced IPv4 header");
        free(out);

        /* A corrupt segment is never eligible; a gap is never appended. */
        if (tcp && n >= 3) {
            ovl_frame_t s0, s2;
            ovl_wire_parse_frame(segbuf[0], seglen[0], &s0);
            ovl_wire_parse_frame(segbuf[2], seglen[2], &s2);
            segbuf[0][seglen[0] - 1] ^= 0x5a;
            if (ovl_gro_eligible(segbuf[0], seglen[0], &s0, 0))
                FAIL("corrupt segment eligible");
            segbuf[0][seglen[0] - 1] ^= 0x5a;
            ovl_gro_start(&g, 7, segbuf[0], seglen[0], &s0);
            if (ovl_gro_append(&g, 7, segbuf[2], seglen[2], &s2))
                FAIL("segment after a gap appended");
            if (ovl_gro_append(&g, 8, segbuf[1], seglen[1], &s0))
                FAIL("segment for another port appended");
            ovl_frame_t s1;
            ovl_wire_parse_frame(segbuf[1], seglen[1], &s1);
            segbuf[1][seglen[1] - 1] ^= 0x5a;
            if (ovl_gro_append(&g, 7, segbuf[1], seglen[1], &s1))
                FAIL("corrupt segment appended");
            segbuf[1][seglen[1] - 1] ^= 0x5a;
            if (!ovl_gro_append(&g, 7, segbuf[1], seglen[1], &s1))
                FAIL("intact segment not appended after a refused corrupt one");
        }
    }
    /* A virtio header that lies about the contents is refused. */
    ovl_vnet_hdr_t bad = vh;
    bad.gso_type = tcp ? OVL_VNET_GSO_UDP_L4 : OVL_VNET_GSO_TCPV4;
    if (ovl_gso_segment(sized, len, &bad, &f, area, segs, OVL_GSO_MAX_SEGS) >= 0)
        FAIL("mismatched gso_type accepted");
    bad = vh;
    bad.gso_size = 0;
    if (ovl_gso_segment(sized, len, &bad, &f, area, segs, OVL_GSO_MAX_SEGS) >= 0)
        FAIL("gso_size 0 accepted");
    free(sized);
    return 0;
}

int main(void)
{
    for (int i = 0; i < 3000; i++) {
        if (one_case(i & 1, (i >> 1) % 3 != 0))
            return 1;
    }
    puts("check_offload: ok");
    return 0;
}
