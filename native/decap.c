/*
 * decap.c — underlay -> TAP: receive a batch of datagrams with recvmmsg,
 * check each against the isolation contract (known VNI, member source VTEP,
 * Geneve options understood), check the inner frame against what this node
 * knows, and write it to the local port(s). A bad datagram is a counted drop
 * with its reason and the loop goes on.
 *
 * Design notes.
 * - A member VTEP is trusted to carry its network, not to speak for this
 *   node's pods. Its inner frame is parsed once (deliver_rx reuses the parse
 *   for coalescing) and refused when it claims what this node knows to be
 *   otherwise:
 *     decap_spoofed_mac  the source MAC lives behind a local port (a port's
 *                        own, or one learned behind a port without security);
 *     decap_spoofed_arp  the ARP sender (sha, spa) claims a local MAC, an
 *                        address of a local port, or an address the
 *                        neighbour table gives another MAC;
 *     decap_spoofed_nd   the same for ND: an NA's target with its target
 *                        link-layer option (or, without one, the source MAC);
 *                        an NS, RS or RA's source with its source link-layer
 *                        option; a redirect's target with its target option.
 *   A local port owns its addresses (in the neighbour table with its MAC)
 *   and its EUI-64 link-local address. A claim from :: or 0.0.0.0 (DAD, ARP
 *   probe) claims nothing. A frame the parser refuses is refused here too,
 *   whatever port sent it on the far side: the check above is only as good
 *   as the parse (a nine-header NA would otherwise walk past it).
 * - Learning networks (flood and learn, no store) have no remote neighbour
 *   entries: the local checks apply, and any remote claim about a remote
 *   address is taken as the kernel's VXLAN device takes it. A MAC learned
 *   behind one VTEP that shows up behind another moves there, as the kernel's
 *   vxlan_snoop moves a dynamic entry. A MAC the control plane placed (a
 *   remote FDB entry) does not move: a frame from it through another VTEP is
 *   decap_spoofed_mac, as the kernel drops a frame from a static entry's MAC
 *   arriving from elsewhere. A MAC behind a local port never moves to a VTEP
 *   by learning (engine.c, ovl_learn_apply), so its frames from a VTEP are
 *   refused in every network. The checks run before learning: a refused
 *   frame teaches nothing.
 * - Every datagram received ends as exactly one of: delivered to one port
 *   (unicast), delivered to each local port of its network (flood: one
 *   delivery per port, or no_flood_targets when there is none), or a drop
 *   with its reason. tests/test_hostile_dataplane.py holds the engine to
 *   that identity under mutated traffic.
 */
#include "internal.h"

#include <errno.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

void ovl_deliver(ovl_worker_t *w, ovl_port_t *q, ovl_network_t *n, const uint8_t *frame, size_t len,
                 const ovl_vnet_hdr_t *vh)
{
    ssize_t r;
    if (q->vnet) {
        static const ovl_vnet_hdr_t blank;
        struct iovec iov[2] = {
            { .iov_base = (void *)(vh ? vh : &blank), .iov_len = OVL_VNET_HLEN },
            { .iov_base = (void *)frame, .iov_len = len },
        };
        r = writev(ovl_port_wfd(w, q), iov, 2);
        if (r > 0)
            r -= OVL_VNET_HLEN;
    } else {
        if (vh && vh->gso_type != OVL_VNET_GSO_NONE) {
            ovl_drop(w, q, n, OVL_C_GSO_TO_PLAIN_PORT);
            return;
        }
        r = write(ovl_port_wfd(w, q), frame, len);
    }
    if (OVL_LIKELY(r == (ssize_t)len)) {
        ovl_count(w, OVL_C_TAP_TX_FRAMES, 1);
        ovl_count(w, OVL_C_TAP_TX_BYTES, len);
        ovl_obj_add(q->c, OVL_O_TX_PACKETS, 1);
        ovl_obj_add(q->c, OVL_O_TX_BYTES, len);
        ovl_obj_add(n->c, OVL_O_TX_PACKETS, 1);
        ovl_obj_add(n->c, OVL_O_TX_BYTES, len);
        return;
    }
    ovl_drop(w, q, n, r < 0 && errno == EIO ? OVL_C_TAP_LINK_DOWN : OVL_C_TAP_WRITE_FAILED);
}

/* Write the pending coalesced train, if any, to its port. */
static void gro_flush(ovl_worker_t *w)
{
    ovl_gro_t *g = &w->gro;
    if (g->port_id < 0)
        return;
    ovl_engine_t *e = w->e;
    ovl_port_t *q = &e->ports[g->port_id];
    ovl_network_t *n = &e->nets[q->net_idx];
    uint32_t segs = g->n_seg;
    size_t bytes;
    int k = ovl_gro_finish(g, &bytes);
    ssize_t r = writev(ovl_port_wfd(w, q), g->iov, k);
    if (OVL_UNLIKELY(r != (ssize_t)bytes)) {
        ovl_count(w, r < 0 && errno == EIO ? OVL_C_TAP_LINK_DOWN : OVL_C_TAP_WRITE_FAILED, segs);
        ovl_obj_add(q->c, OVL_O_DROPS, segs);
        ovl_obj_add(n->c, OVL_O_DROPS, segs);
        return;
    }
    bytes -= OVL_VNET_HLEN;
    if (segs > 1) {
        ovl_count(w, OVL_C_GRO_FRAMES, 1);
        ovl_count(w, OVL_C_GRO_SEGMENTS, segs);
    }
    ovl_count(w, OVL_C_TAP_TX_FRAMES, 1);
    ovl_count(w, OVL_C_TAP_TX_BYTES, bytes);
    ovl_obj_add(q->c, OVL_O_TX_PACKETS, segs);
    ovl_obj_add(q->c, OVL_O_TX_BYTES, bytes);
    ovl_obj_add(n->c, OVL_O_TX_PACKETS, segs);
    ovl_obj_add(n->c, OVL_O_TX_BYTES, bytes);
}

/* Unicast delivery on the receive path (f: the frame, parsed): TCP trains
 * (and UDP runs, where the TAP takes USO) to a vnet TAP are coalesced;
 * anything else flushes the train first, so order is kept. */
static void deliver_rx(ovl_worker_t *w, int32_t qid, ovl_network_t *n, const uint8_t *frame,
                       size_t len, const ovl_frame_t *f)
{
    ovl_port_t *q = &w->e->ports[qid];
    if (q->vnet) {
        int uso = (q->offloads & OVL_OFF_TAP_USO) != 0;
        if (f->ip_proto == 6 || (uso && f->ip_proto == 17)) {
            if (w->gro.port_id >= 0 && ovl_gro_append(&w->gro, qid, frame, len, f))
                return;
            gro_flush(w);
            if (ovl_gro_eligible(frame, len, f, uso)) {
                ovl_gro_start(&w->gro, qid, frame, len, f);
                return;
            }
        }
    }
    gro_flush(w);
    ovl_deliver(w, q, n, frame, len, NULL);
}

#define ND_RS 133
#define ND_RA 134
#define ND_NS 135
#define ND_NA 136
#define ND_REDIRECT 137

/* The FDB entry of mac in vni when it is a local one (a port's MAC, or one
 * learned behind a port), else NULL. */
static const ovl_fdb_val_t *local_mac(ovl_engine_t *e, uint32_t vni, const uint8_t *mac)
{
    ovl_fdb_key_t k;
    ovl_fdb_key_make(&k, vni, mac);
    const ovl_fdb_val_t *v = ovl_map_get(&e->fdb, &k);
    return v && v->kind == OVL_FDB_LOCAL ? v : NULL;
}

/* Does a decapsulated frame's claim "ip is at mac" contradict what this node
 * knows (see the design notes)? family 4: ip is 4 bytes. */
static int claim_refused(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *ip,
                         const uint8_t *mac)
{
    static const uint8_t zero[16];
    size_t alen = family == 4 ? 4 : 16;
    if (memcmp(ip, zero, alen) == 0)
        return 0;                       /* a probe or DAD: no claim */
    if (local_mac(e, vni, mac))
        return 1;
    ovl_neigh_key_t k;
    ovl_neigh_key_make(&k, vni, family, ip);
    const ovl_neigh_val_t *v = ovl_map_get(&e->neigh, &k);
    if (v)
        return memcmp(v->mac, mac, 6) != 0;
    /* fe80::/64 with an EUI-64 interface id: a local port's link-local address? */
    static const uint8_t ll[8] = {0xfe, 0x80};
    if (family == 6 && memcmp(ip, ll, 8) == 0 && ip[11] == 0xff && ip[12] == 0xfe) {
        const uint8_t owner[6] = {(uint8_t)(ip[8] ^ 0x02), ip[9], ip[10], ip[13], ip[14], ip[15]};
        return local_mac(e, vni, owner) != NULL;
    }
    return 0;
}

/* The decapsulation checks on the parsed inner frame f from the VTEP
 * (family, addr): 0, or the drop reason. */
static int decap_check(ovl_engine_t *e, const ovl_network_t *n, const ovl_frame_t *f, int family,
                       const uint8_t *addr)
{
    ovl_fdb_key_t k;
    ovl_fdb_key_make(&k, n->vni, f->src);
    const ovl_fdb_val_t *v = ovl_map_get(&e->fdb, &k);
    if (v && v->kind == OVL_FDB_LOCAL)
        return OVL_C_DECAP_SPOOFED_MAC;
    if (v && v->kind == OVL_FDB_REMOTE && (n->flags & OVL_NET_LEARNING) &&
        (v->vtep.family != family || memcmp(v->vtep.addr, addr, 16) != 0))
        return OVL_C_DECAP_SPOOFED_MAC;
    if (f->l3 == OVL_L3_ARP)
        return claim_refused(e, n->vni, 4, f->arp_spa, f->arp_sha) ? OVL_C_DECAP_SPOOFED_ARP : 0;
    if (f->l3 != OVL_L3_IPV6)
        return 0;
    const uint8_t *ip = NULL, *mac = f->nd_has_lladdr ? f->nd_lladdr : NULL;
    switch (f->icmp6_type) {
    case ND_RS:
    case ND_RA:
    case ND_NS:
        ip = f->ip_src;
        break;
    case ND_NA:
        ip = f->nd_target;
        if (!mac)
            mac = f->src;
        break;
    case ND_REDIRECT:
        ip = f->nd_target;
        break;
    default:
        return 0;
    }
    return mac && claim_refused(e, n->vni, 6, ip, mac) ? OVL_C_DECAP_SPOOFED_ND : 0;
}

static void decap_one(ovl_worker_t *w, uint8_t *buf, size_t len, const ovl_sockaddr_t *from)
{
    ovl_engine_t *e = w->e;
    ovl_tunnel_t t;
    ovl_count(w, OVL_C_UDP_RX_PACKETS, 1);
    ovl_count(w, OVL_C_UDP_RX_BYTES, len);

    int hl = ovl_wire_decode(e->cfg.encap, buf, len, &t);
    if (hl < 0) {
        ovl_drop(w, NULL, NULL, -hl);
        return;
    }
    ovl_network_t *n = ovl_net_lookup(e, t.vni);
    if (!n) {
        ovl_drop(w, NULL, NULL, OVL_C_UNKNOWN_VNI);
        return;
    }
    ovl_member_key_t mk;
    int family;
    uint8_t addr[16] = {0};
    if (ovl_sockaddr_parse(from, &family, addr) < 0) {
        ovl_drop(w, NULL, n, OVL_C_VTEP_NOT_MEMBER);
        return;
    }
    ovl_member_key_make(&mk, t.vni, family, addr);
    if (!ovl_map_get(&e->members, &mk)) {
        ovl_drop(w, NULL, n, OVL_C_VTEP_NOT_MEMBER);
        return;
    }
    if (t.opts_len) {
        int rc = ovl_geneve_check_options(t.opts, t.opts_len, e->known, e->n_known);
        if (rc < 0) {
            ovl_drop(w, NULL, n, -rc);
            return;
        }
    }
    uint8_t *frame = buf + hl;
    size_t flen = len - (size_t)hl;
    if (flen < 14) {
        ovl_drop(w, NULL, n, OVL_C_FRAME_TOO_SHORT);
        return;
    }
    if (flen > e->cfg.frame_max) {
        ovl_drop(w, NULL, n, OVL_C_FRAME_OVERSIZE);
        return;
    }
    ovl_frame_t f;
    int rc = ovl_frame_parse(frame, flen, &f);
    if (rc == 0)
        rc = -decap_check(e, n, &f, family, addr);
    if (rc < 0) {
        ovl_drop(w, NULL, n, -rc);
        return;
    }
    ovl_obj_add(n->c, OVL_O_DECAP_PACKETS, 1);
    ovl_obj_add(n->c, OVL_O_DECAP_BYTES, flen);

    const uint8_t *dst = frame, *src = frame + 6;
    if ((n->flags & OVL_NET_LEARNING) && !(src[0] & 1)) {
        ovl_fdb_key_t k;
        ovl_fdb_key_make(&k, t.vni, src);
        ovl_fdb_val_t *v = ovl_map_get(&e->fdb, &k);
        if (!v || (v->kind == OVL_FDB_LEARNED &&
                   (v->vtep.family != family || memcmp(v->vtep.addr, addr, 16) != 0))) {
            ovl_learn_t l = { .kind = OVL_FDB_LEARNED, .vni = t.vni, .port_id = -1 };
            memcpy(l.mac, src, 6);
            ovl_addr_make(&l.vtep, family, addr, e->udp_port);
            ovl_learn_queue(w, &l);
        } else if (v->kind == OVL_FDB_LEARNED) {
            __atomic_store_n(&v->updated_ns, w->now_ns, __ATOMIC_RELAXED);
        }
    }

    if (dst[0] & 1) { /* broadcast or multicast: every local port of the VNI */
        gro_flush(w);
        if (!n->n_ports) {
            ovl_drop(w, NULL, n, OVL_C_NO_FLOOD_TARGETS);
            return;
        }
        for (uint32_t i = 0; i < n->n_ports; i++)
            ovl_deliver(w, &e->ports[n->ports[i]], n, frame, flen, NULL);
        return;
    }
    ovl_fdb_key_t k;
    ovl_fdb_key_make(&k, t.vni, dst);
    ovl_fdb_val_t *v = ovl_map_get(&e->fdb, &k);
    if (!v || v->kind != OVL_FDB_LOCAL) {
        ovl_drop(w, NULL, n, OVL_C_UNKNOWN_DESTINATION);
        return;
    }
    __atomic_store_n(&v->used_ns, w->now_ns, __ATOMIC_RELAXED);
    deliver_rx(w, v->port_id, n, frame, flen, &f);
}

/* The segment size of a coalesced receive (UDP_GRO cmsg), or 0. */
static size_t gro_size(struct msghdr *h)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
            int v;
            memcpy(&v, CMSG_DATA(c), sizeof v);
            return v > 0 ? (size_t)v : 0;
        }
    }
    return 0;
}

void ovl_decap_batch(ovl_worker_t *w)
{
    ovl_engine_t *e = w->e;
    uint32_t b = w->rx_batch;
    pthread_rwlock_rdlock(&e->lock);
    w->now_ns = ovl_now_ns();
    for (int round = 0; round < OVL_RX_ROUNDS; round++) {
        for (uint32_t i = 0; i < b; i++) {
            w->rx_msgs[i].msg_hdr.msg_namelen = sizeof(ovl_sockaddr_t);
            w->rx_msgs[i].msg_hdr.msg_controllen = OVL_RX_CTRL;
            w->rx_msgs[i].msg_hdr.msg_flags = 0;
        }
        int n = recvmmsg(w->rx_fd, w->rx_msgs, b, MSG_DONTWAIT, NULL);
        if (n <= 0)
            break;
        for (int i = 0; i < n; i++) {
            struct msghdr *h = &w->rx_msgs[i].msg_hdr;
            uint8_t *buf = w->rx_bufs + (size_t)i * w->rx_buf_size;
            size_t len = w->rx_msgs[i].msg_len;
            if (OVL_UNLIKELY(h->msg_flags & MSG_TRUNC)) {
                ovl_count(w, OVL_C_UDP_RX_PACKETS, 1);
                ovl_drop(w, NULL, NULL, OVL_C_FRAME_OVERSIZE);
                continue;
            }
            size_t seg = gro_size(h);
            if (!seg || seg >= len) {
                decap_one(w, buf, len, &w->rx_names[i]);
                continue;
            }
            ovl_count(w, OVL_C_UDP_GRO_RECEIVES, 1);
            for (size_t off = 0; off < len; off += seg)
                decap_one(w, buf + off, len - off < seg ? len - off : seg, &w->rx_names[i]);
        }
        gro_flush(w); /* the train points into buffers the next receive reuses */
        if ((uint32_t)n < b)
            break;
    }
    pthread_rwlock_unlock(&e->lock);
    ovl_learn_apply(w);
}
