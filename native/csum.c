/* csum.c — the Internet checksum (see csum.h for the why). */
#include "csum.h"

#include <arpa/inet.h>

uint64_t ovl_csum_add(const uint8_t *p, size_t n, uint64_t s)
{
    /* Native-order words with end-around carry; folding later gives the one's
     * complement sum of the 16-bit words in native order (RFC 1071). The bulk
     * goes through four 64-bit lanes of 32-bit words: no carries to chase, so
     * the compiler keeps it in registers (about twice the speed of a carry
     * chain here). A lane cannot overflow within 2^30 bytes. */
    while (n >= 64) {
        size_t chunk = n < ((size_t)1 << 30) ? n & ~(size_t)15 : (size_t)1 << 30;
        uint64_t a = 0, b = 0, c = 0, d = 0;
        for (size_t i = 0; i < chunk; i += 16) {
            uint32_t x[4];
            memcpy(x, p + i, 16);
            a += x[0];
            b += x[1];
            c += x[2];
            d += x[3];
        }
        uint64_t t = a + b; /* each < 2^62: no overflow */
        uint64_t u = c + d;
        t = (t & 0xffffffffu) + (t >> 32) + (u & 0xffffffffu) + (u >> 32);
        s += t;
        s += (s < t);
        p += chunk;
        n -= chunk;
    }
    while (n >= 8) {
        uint64_t a;
        memcpy(&a, p, 8);
        s += a;
        s += (s < a);
        p += 8;
        n -= 8;
    }
    if (n >= 4) {
        uint32_t a;
        memcpy(&a, p, 4);
        s += a;
        s += (s < a);
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t a;
        memcpy(&a, p, 2);
        s += a;
        s += (s < a);
        p += 2;
        n -= 2;
    }
    if (n) {
        uint16_t a = 0;
        memcpy(&a, p, 1); /* the odd byte is the high-order byte of a padded word */
        s += a;
        s += (s < a);
    }
    return s;
}

uint16_t ovl_csum_fold(uint64_t s)
{
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    return (uint16_t)s;
}

uint64_t ovl_csum_pseudo(const ovl_frame_t *f, uint8_t proto, uint32_t l4_len)
{
    uint64_t s = 0;
    if (f->l3 == OVL_L3_IPV4) {
        s = ovl_csum_add(f->ip_src, 4, s);
        s = ovl_csum_add(f->ip_dst, 4, s);
        s += htons((uint16_t)proto);
        s += htons((uint16_t)l4_len);
    } else {
        s = ovl_csum_add(f->ip_src, 16, s);
        s = ovl_csum_add(f->ip_dst, 16, s);
        s += htonl(l4_len);
        s += htonl((uint32_t)proto);
    }
    return s;
}

int ovl_csum_complete(uint8_t *frame, size_t len, uint16_t start, uint16_t off)
{
    if ((size_t)start + off + 2 > len)
        return -1;
    /* The field holds the pseudo-header sum; summing from start folds it in. */
    uint16_t c = (uint16_t)~ovl_csum_fold(ovl_csum_add(frame + start, len - start, 0));
    if (c == 0 && off == 6)
        c = 0xffff; /* UDP: a computed zero is sent as all ones */
    memcpy(frame + start + off, &c, 2);
    return 0;
}

uint16_t ovl_csum(const uint8_t *buf, size_t len, uint32_t sum)
{
    /* The native-order sum read in host order, plus the caller's host-order sum. */
    uint64_t s = (uint64_t)ntohs(ovl_csum_fold(ovl_csum_add(buf, len, 0))) + sum;
    return (uint16_t)~ovl_csum_fold(s);
}
