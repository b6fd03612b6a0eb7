/*
 * decap.c — underlay -> TAP: receive a batch of datagrams with recvmmsg,
 * check each against the isolation contract (known VNI, member source VTEP,
 * Geneve options understood), and write the inner frame to the local port(s).
 * A bad datagram is a counted drop with its reason and the loop goes on.
 */
#include "internal.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

void ovl_deliver(ovl_worker_t *w, ovl_port_t *q, ovl_network_t *n, const uint8_t *frame, size_t len)
{
    ssize_t r = write(q->fd, frame, len);
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
        for (uint32_t i = 0; i < n->n_ports; i++)
            ovl_deliver(w, &e->ports[n->ports[i]], n, frame, flen);
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
    ovl_deliver(w, &e->ports[v->port_id], n, frame, flen);
}

void ovl_decap_batch(ovl_worker_t *w)
{
    ovl_engine_t *e = w->e;
    uint32_t b = e->cfg.batch;
    pthread_rwlock_rdlock(&e->lock);
    w->now_ns = ovl_now_ns();
    for (int round = 0; round < OVL_RX_ROUNDS; round++) {
        for (uint32_t i = 0; i < b; i++) {
            w->rx_msgs[i].msg_hdr.msg_namelen = sizeof(ovl_sockaddr_t);
            w->rx_msgs[i].msg_hdr.msg_flags = 0;
        }
        int n = recvmmsg(w->rx_fd, w->rx_msgs, b, MSG_DONTWAIT, NULL);
        if (n <= 0)
            break;
        for (int i = 0; i < n; i++) {
            struct msghdr *h = &w->rx_msgs[i].msg_hdr;
            if (OVL_UNLIKELY(h->msg_flags & MSG_TRUNC)) {
                ovl_count(w, OVL_C_UDP_RX_PACKETS, 1);
                ovl_drop(w, NULL, NULL, OVL_C_FRAME_OVERSIZE);
                continue;
            }
            decap_one(w, w->rx_bufs + (size_t)i * w->buf_size, w->rx_msgs[i].msg_len,
                      &w->rx_names[i]);
        }
        if ((uint32_t)n < b)
            break;
    }
    pthread_rwlock_unlock(&e->lock);
    ovl_learn_apply(w);
}
