/* offload.c — segmentation and coalescing (see offload.h). */
#include "csum.h"
#include "offload.h"

#include <arpa/inet.h>

/* ---- segmentation ---- */

static void ipv4_fix(uint8_t *ip, uint16_t tot_len, uint16_t id_add)
{
    size_t ihl = (size_t)(ip[0] & 0x0f) * 4;
    uint16_t v;
    v = htons(tot_len);
    memcpy(ip + 2, &v, 2);
    memcpy(&v, ip + 4, 2);
    v = htons((uint16_t)(ntohs(v) + id_add));
    memcpy(ip + 4, &v, 2);
    ip[10] = ip[11] = 0;
    v = (uint16_t)~ovl_csum_fold(ovl_csum_add(ip, ihl, 0));
    memcpy(ip + 10, &v, 2);
}

int ovl_gso_segment(const uint8_t *frame, size_t len, const ovl_vnet_hdr_t *vh,
                    const ovl_frame_t *f, uint8_t *hdr_area, ovl_seg_t *segs, size_t max)
{
    uint8_t type = vh->gso_type & (uint8_t)~OVL_VNET_GSO_ECN;
    int tcp = type == OVL_VNET_GSO_TCPV4 || type == OVL_VNET_GSO_TCPV6;
    uint8_t proto = tcp ? 6 : 17;
    if (!tcp && type != OVL_VNET_GSO_UDP_L4)
        return -OVL_C_GSO_MALFORMED;
    if ((type == OVL_VNET_GSO_TCPV4 && f->l3 != OVL_L3_IPV4) ||
        (type == OVL_VNET_GSO_TCPV6 && f->l3 != OVL_L3_IPV6) ||
        (f->l3 != OVL_L3_IPV4 && f->l3 != OVL_L3_IPV6) || f->ip_proto != proto ||
        f->is_fragment || !f->l4_off || vh->gso_size == 0)
        return -OVL_C_GSO_MALFORMED;
    size_t l4 = f->l4_off;
    size_t l4_hlen = tcp ? (l4 + 13 <= len ? (size_t)(frame[l4 + 12] >> 4) * 4 : 0) : 8;
    size_t pay_off = l4 + l4_hlen;
    if ((tcp && l4_hlen < 20) || pay_off > len || pay_off + OVL_SEG_TUN_ROOM > OVL_SEG_HDR_MAX)
        return -OVL_C_GSO_MALFORMED;
    size_t total = len - pay_off, mss = vh->gso_size;
    size_t n = total ? (total + mss - 1) / mss : 1;
    if (n > max)
        return -OVL_C_GSO_MALFORMED;
    uint32_t seq0 = 0;
    if (tcp) {
        memcpy(&seq0, frame + l4 + 4, 4);
        seq0 = ntohl(seq0);
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t *h = hdr_area + i * OVL_SEG_HDR_MAX + OVL_SEG_TUN_ROOM;
        size_t plen = i + 1 < n ? mss : total - i * mss;
        memcpy(h, frame, pay_off);
        uint16_t v;
        if (f->l3 == OVL_L3_IPV4) {
            ipv4_fix(h + f->l3_off, (uint16_t)(pay_off - f->l3_off + plen), (uint16_t)i);
        } else {
            v = htons((uint16_t)(pay_off - f->l3_off - 40 + plen));
            memcpy(h + f->l3_off + 4, &v, 2);
        }
        uint8_t *t = h + l4;
        if (tcp) {
            uint32_t seq = htonl(seq0 + (uint32_t)(i * mss));
            memcpy(t + 4, &seq, 4);
            if (i + 1 < n)
                t[13] &= (uint8_t)~0x09; /* FIN, PSH only on the last */
            if (i > 0)
                t[13] &= (uint8_t)~0x80; /* CWR only on the first */
            t[16] = t[17] = 0;
        } else {
            v = htons((uint16_t)(8 + plen));
            memcpy(t + 4, &v, 2);
            t[6] = t[7] = 0;
        }
        uint64_t s = ovl_csum_pseudo(f, proto, (uint32_t)(l4_hlen + plen));
        s = ovl_csum_add(t, l4_hlen, s);
        s = ovl_csum_add(frame + pay_off + i * mss, plen, s);
        uint16_t c = (uint16_t)~ovl_csum_fold(s);
        if (!tcp && c == 0)
            c = 0xffff;
        memcpy(t + (tcp ? 16 : 6), &c, 2);
        segs[i].hdr = h;
        segs[i].hdr_len = (uint16_t)pay_off;
        segs[i].pay = frame + pay_off + i * mss;
        segs[i].pay_len = (uint32_t)plen;
    }
    return (int)n;
}

/* ---- coalescing ---- */

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20

static size_t tcp_hlen(const uint8_t *frame, const ovl_frame_t *f)
{
    return (size_t)(frame[f->l4_off + 12] >> 4) * 4;
}

int ovl_gro_eligible(const uint8_t *frame, size_t len, const ovl_frame_t *f, int allow_udp)
{
    int udp = f->ip_proto == 17;
    if ((f->ip_proto != 6 && !(udp && allow_udp)) || f->is_fragment || !f->l4_off || f->has_vlan)
        return 0;
    if (f->l3 == OVL_L3_IPV4) {
        if ((frame[f->l3_off] & 0x0f) != 5 || f->l4_off != f->l3_off + 20)
            return 0;
        uint16_t tot;
        memcpy(&tot, frame + f->l3_off + 2, 2);
        if (f->l3_off + (size_t)ntohs(tot) != len) /* no Ethernet padding */
            return 0;
    } else if (f->l3 == OVL_L3_IPV6) {
        if (f->l4_off != f->l3_off + 40)
            return 0;
        uint16_t pl;
        memcpy(&pl, frame + f->l3_off + 4, 2);
        if (f->l3_off + 40 + (size_t)ntohs(pl) != len)
            return 0;
    } else {
        return 0;
    }
    if (udp) {
        uint16_t ul, cs;
        if ((size_t)f->l4_off + 8 >= len)
            return 0;
        memcpy(&ul, frame + f->l4_off + 4, 2);
        memcpy(&cs, frame + f->l4_off + 6, 2);
        if (f->l4_off + (size_t)ntohs(ul) != len)
            return 0;
        if (cs == 0)
            return f->l3 == OVL_L3_IPV4; /* IPv4 may send no checksum; IPv6 may not */
    } else {
        if ((size_t)f->l4_off + 20 > len)
            return 0;
        size_t th = tcp_hlen(frame, f);
        if (th < 20 || f->l4_off + th >= len || f->l4_off + th > 128)
            return 0; /* no payload, or headers too long to keep */
        uint8_t flags = frame[f->l4_off + 13];
        if ((flags & ~(TCP_ACK | TCP_PSH)) || !(flags & TCP_ACK))
            return 0;
    }
    uint64_t s = ovl_csum_pseudo(f, f->ip_proto, (uint32_t)(len - f->l4_off));
    s = ovl_csum_add(frame + f->l4_off, len - f->l4_off, s);
    return ovl_csum_fold(s) == 0xffff;
}

static size_t l4_hlen(const uint8_t *frame, const ovl_frame_t *f)
{
    return f->ip_proto == 17 ? 8 : tcp_hlen(frame, f);
}

static void gro_key(uint8_t *key, const uint8_t *frame, size_t hlen, const ovl_frame_t *f)
{
    memcpy(key, frame, hlen);
    if (f->l3 == OVL_L3_IPV4) {
        memset(key + f->l3_off + 2, 0, 4);  /* total length, id */
        memset(key + f->l3_off + 10, 0, 2); /* header checksum */
    } else {
        memset(key + f->l3_off + 4, 0, 2);  /* payload length */
    }
    if (f->ip_proto == 17) {
        memset(key + f->l4_off + 4, 0, 4);  /* length, checksum */
        return;
    }
    memset(key + f->l4_off + 4, 0, 4);      /* sequence */
    key[f->l4_off + 13] &= (uint8_t)~TCP_PSH;
    memset(key + f->l4_off + 16, 0, 2);     /* checksum */
}

void ovl_gro_start(ovl_gro_t *g, int32_t port_id, const uint8_t *frame, size_t len,
                   const ovl_frame_t *f)
{
    size_t hlen = f->l4_off + l4_hlen(frame, f);
    g->port_id = port_id;
    g->ipv6 = f->l3 == OVL_L3_IPV6;
    g->udp = f->ip_proto == 17;
    g->l3_off = f->l3_off;
    g->l4_off = f->l4_off;
    g->hdr_len = (uint16_t)hlen;
    g->mss = (uint16_t)(len - hlen);
    g->pay_total = g->mss;
    g->n_seg = 1;
    if (g->udp) {
        g->next_seq = 0;
        g->closed = 0;
    } else {
        uint32_t seq;
        memcpy(&seq, frame + f->l4_off + 4, 4);
        g->next_seq = ntohl(seq) + g->mss;
        g->closed = (frame[f->l4_off + 13] & TCP_PSH) != 0;
    }
    memcpy(g->hdr + OVL_VNET_HLEN, frame, hlen);
    gro_key(g->key, frame, hlen, f);
    g->iov[0].iov_base = g->hdr;
    g->iov[0].iov_len = OVL_VNET_HLEN + hlen;
    g->iov[1].iov_base = (void *)(frame + hlen);
    g->iov[1].iov_len = g->mss;
}

int ovl_gro_append(ovl_gro_t *g, int32_t port_id, const uint8_t *frame, size_t len,
                   const ovl_frame_t *f)
{
    if (g->port_id != port_id || g->closed || g->n_seg >= OVL_GSO_MAX_SEGS)
        return 0;
    if (f->l3_off != g->l3_off || f->l4_off != g->l4_off || (f->ip_proto == 17) != g->udp)
        return 0;
    /* Each segment passes what the first did (lengths without padding, flags, its
     * own checksum): the super-frame goes up as verified, so none may join unchecked. */
    if (!ovl_gro_eligible(frame, len, f, g->udp))
        return 0;
    size_t hlen = f->l4_off + l4_hlen(frame, f);
    size_t plen = len - hlen;
    if (hlen != g->hdr_len || plen > g->mss || plen == 0 || g->pay_total + plen + hlen > 65535 - 64)
        return 0;
    if (!g->udp) {
        uint32_t seq;
        memcpy(&seq, frame + f->l4_off + 4, 4);
        if (ntohl(seq) != g->next_seq)
            return 0;
    }
    uint8_t key[128];
    gro_key(key, frame, hlen, f);
    if (memcmp(key, g->key, hlen) != 0)
        return 0;
    g->iov[g->n_seg + 1].iov_base = (void *)(frame + hlen);
    g->iov[g->n_seg + 1].iov_len = plen;
    g->n_seg++;
    g->pay_total += (uint32_t)plen;
    g->next_seq += (uint32_t)plen;
    if (g->udp) {
        g->closed = plen < g->mss;
        return 1;
    }
    if (plen < g->mss || (frame[f->l4_off + 13] & TCP_PSH)) {
        g->closed = 1;
        g->hdr[OVL_VNET_HLEN + f->l4_off + 13] |= frame[f->l4_off + 13] & TCP_PSH;
    }
    return 1;
}

int ovl_gro_finish(ovl_gro_t *g, size_t *bytes)
{
    uint8_t *fr = g->hdr + OVL_VNET_HLEN;
    ovl_vnet_hdr_t vh;
    memset(&vh, 0, sizeof vh);
    size_t l4_len = g->hdr_len - g->l4_off + g->pay_total;
    if (g->n_seg == 1) {
        vh.flags = OVL_VNET_F_DATA_VALID; /* verified in ovl_gro_eligible */
    } else {
        uint16_t v;
        ovl_frame_t pf;
        memset(&pf, 0, sizeof pf);
        if (g->ipv6) {
            v = htons((uint16_t)l4_len);
            memcpy(fr + g->l3_off + 4, &v, 2);
            pf.l3 = OVL_L3_IPV6;
            memcpy(pf.ip_src, fr + g->l3_off + 8, 16);
            memcpy(pf.ip_dst, fr + g->l3_off + 24, 16);
        } else {
            ipv4_fix(fr + g->l3_off, (uint16_t)(g->l4_off - g->l3_off + l4_len), 0);
            pf.l3 = OVL_L3_IPV4;
            memcpy(pf.ip_src, fr + g->l3_off + 12, 4);
            memcpy(pf.ip_dst, fr + g->l3_off + 16, 4);
        }
        /* CHECKSUM_PARTIAL: the field holds the pseudo-header sum. */
        uint8_t proto = g->udp ? 17 : 6;
        uint16_t csum_off = g->udp ? 6 : 16;
        if (g->udp) {
            v = htons((uint16_t)l4_len);
            memcpy(fr + g->l4_off + 4, &v, 2);
        }
        v = ovl_csum_fold(ovl_csum_pseudo(&pf, proto, (uint32_t)l4_len));
        memcpy(fr + g->l4_off + csum_off, &v, 2);
        vh.flags = OVL_VNET_F_NEEDS_CSUM;
        vh.gso_type = g->udp ? OVL_VNET_GSO_UDP_L4
                             : (g->ipv6 ? OVL_VNET_GSO_TCPV6 : OVL_VNET_GSO_TCPV4);
        vh.hdr_len = g->hdr_len;
        vh.gso_size = g->mss;
        vh.csum_start = g->l4_off;
        vh.csum_offset = csum_off;
    }
    memcpy(g->hdr, &vh, OVL_VNET_HLEN);
    *bytes = OVL_VNET_HLEN + g->hdr_len + g->pay_total;
    int n = (int)g->n_seg + 1;
    g->port_id = -1;
    return n;
}
