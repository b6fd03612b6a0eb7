/*
 * decap.c — underlay -> TAP: receive a batch of datagrams with recvmmsg,
 * check each against the isolation contract (known VNI, member source VTEP,
 * Geneve options understood), and write the inner frame to the local port(s).
 * A bad datagram is a counted drop with its reason and the loop goes on.
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

/* Unicast delivery on the receive path: TCP trains (and UDP runs, where the
 * TAP takes USO) to a vnet TAP are coalesced; anything else flushes the train
 * first, so order is kept. */
static void deliver_rx(ovl_worker_t *w, int32_t qid, ovl_network_t *n, const uint8_t *frame,
                       size_t len)
{
    ovl_port_t *q = &w->e->ports[qid];
    if (q->vnet) {
        ovl_frame_t f;
        int uso = (q->offloads & OVL_OFF_TAP_USO) != 0;
        if (ovl_frame_parse(frame, len, &f) == 0 && (f.ip_proto == 6 || (uso && f.ip_proto == 17))) {
            if (w->gro.port_id >= 0 && ovl_gro_append(&w->gro, qid, frame, len, &f))
                return;
            gro_flush(w);
            if (ovl_gro_eligible(frame, len, &f, uso)) {
                ovl_gro_start(&w->gro, qid, frame, len, &f);
                return;
            }
        }
    }
    gro_flush(w);
    ovl_deliver(w, q, n, frame, len, NULL);
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
    deliver_rx(w, v->port_id, n, frame, flen);
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
