/*
 * encap.c — TAP -> underlay: read a burst of frames from one port, apply
 * port security, answer ARP/ND from the neighbour table, switch locally or
 * encapsulate toward the VTEP the FDB names (flooding to the network's
 * members when the destination is broadcast, multicast or unknown).
 *
 * Datagrams are queued as iovecs (the tunnel header sits in the frame's
 * headroom; a TSO super-frame becomes segments whose payload stays where the
 * TAP read put it) and sent at the end of the burst: one sendmmsg per
 * source-port socket, where runs of equal-sized datagrams to one VTEP leave
 * as single UDP GSO sends.
 *
 * Design notes.
 * - A frame is held to its network's frame_limit at the TAP, before it is
 *   queued: the pod MTU plus the Ethernet header, which is what a datagram on
 *   the underlay MTU carries after the outer headers and the network's tunnel
 *   header (engine.c, frame_limit). A larger frame never fits the underlay;
 *   let into the queue it made a GSO run with the frames after it fail as a
 *   whole. It is frame_oversize, counted against the port, as the kernel's
 *   VXLAN device counts a frame above its MTU. (No ICMP "packet too big" is
 *   sent back: the overlay is a switch with no address of its own in the
 *   pod's network, and a pod that sends above its MTU is misconfigured or
 *   hostile.)
 * - A failed send costs exactly the datagram that failed. sendmmsg stops at
 *   the first message that fails; that message is counted (udp_send_failed)
 *   and the rest are sent again from the one after it. A GSO send fails as a
 *   whole (one segment the route cannot carry, say), so its datagrams go
 *   again one by one, without GSO, and only those that fail alone are lost.
 */
#include "internal.h"

#include <errno.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* ---- the send queue ---- */

/* The send of the run tx_order[first .. first + run) failed on socket fd. One
 * datagram: it is lost, counted. A GSO run: each datagram goes again alone. */
static void send_failed(ovl_worker_t *w, int fd, uint32_t first, uint32_t run)
{
    if (run == 1) {
        ovl_count(w, OVL_C_UDP_SEND_FAILED, 1);
        return;
    }
    for (uint32_t k = 0; k < run; k++) {
        const ovl_txe_t *t = &w->txq[w->tx_order[first + k]];
        struct msghdr h;
        memset(&h, 0, sizeof h);
        h.msg_name = (void *)&t->dst->sa;
        h.msg_namelen = t->dst->salen;
        h.msg_iov = &w->tx_iov[t->iov_off];
        h.msg_iovlen = t->iov_n;
        ssize_t r;
        do
            r = sendmsg(fd, &h, MSG_DONTWAIT);
        while (r < 0 && errno == EINTR);
        if (r < 0) {
            ovl_count(w, OVL_C_UDP_SEND_FAILED, 1);
            continue;
        }
        ovl_count(w, OVL_C_UDP_TX_PACKETS, 1);
        ovl_count(w, OVL_C_UDP_TX_BYTES, (uint64_t)r);
    }
}

static void flush_tx(ovl_worker_t *w)
{
    ovl_engine_t *e = w->e;
    uint32_t n = w->n_tx;
    if (!n)
        return;
    /* Counting sort by source-port slot (stable: a flow keeps its order). */
    uint32_t count[1025] = {0}, start[1025];
    uint16_t slots = e->n_slots;
    for (uint32_t i = 0; i < n; i++)
        count[w->txq[i].slot + 1]++;
    for (uint32_t s = 0; s < slots; s++)
        count[s + 1] += count[s];
    memcpy(start, count, (slots + 1u) * sizeof *start);
    for (uint32_t i = 0; i < n; i++)
        w->tx_order[start[w->txq[i].slot]++] = i;

    int gso = (e->offloads & OVL_OFF_UDP_GSO) != 0;
    uint32_t niov = 0;
    for (uint32_t s = 0; s < slots; s++) {
        uint32_t i = count[s], end = count[s + 1], nm = 0;
        /* Build this slot's sends: a run of equal-sized datagrams to one VTEP
         * (the last may be shorter) becomes one GSO send. */
        static const uint32_t max_run = OVL_GSO_MAX_SEGS;
        uint32_t runs[OVL_TX_MSGS], firsts[OVL_TX_MSGS];
        while (i < end) {
            const ovl_txe_t *first = &w->txq[w->tx_order[i]];
            uint32_t run = 1, total = first->len;
            while (gso && i + run < end && run < max_run) {
                const ovl_txe_t *t = &w->txq[w->tx_order[i + run]];
                if (t->dst != first->dst || t->len > first->len || total + t->len > OVL_GSO_BYTES_MAX)
                    break;
                total += t->len;
                run++;
                if (t->len < first->len)
                    break;
            }
            struct mmsghdr *m = &w->tx_mmsg[nm];
            memset(&m->msg_hdr, 0, sizeof m->msg_hdr);
            m->msg_hdr.msg_name = (void *)&first->dst->sa;
            m->msg_hdr.msg_namelen = first->dst->salen;
            m->msg_hdr.msg_iov = &w->tx_iov2[niov];
            for (uint32_t k = 0; k < run; k++) {
                const ovl_txe_t *t = &w->txq[w->tx_order[i + k]];
                memcpy(&w->tx_iov2[niov], &w->tx_iov[t->iov_off], t->iov_n * sizeof(struct iovec));
                niov += t->iov_n;
                m->msg_hdr.msg_iovlen += t->iov_n;
            }
            if (run > 1) {
                uint8_t *ctl = w->tx_ctrl + (size_t)nm * OVL_TX_CTRL;
                memset(ctl, 0, OVL_TX_CTRL);
                m->msg_hdr.msg_control = ctl;
                m->msg_hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t));
                struct cmsghdr *cm = CMSG_FIRSTHDR(&m->msg_hdr);
                cm->cmsg_level = SOL_UDP;
                cm->cmsg_type = UDP_SEGMENT;
                cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t seg = (uint16_t)first->len;
                memcpy(CMSG_DATA(cm), &seg, sizeof seg);
            }
            firsts[nm] = i;
            runs[nm++] = run;
            i += run;
        }
        uint32_t off = 0;
        while (off < nm) {
            int r = sendmmsg(e->tx_fds[s], w->tx_mmsg + off, nm - off, MSG_DONTWAIT);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                /* Message off failed: it alone is lost (see the design notes). */
                send_failed(w, e->tx_fds[s], firsts[off], runs[off]);
                off++;
                continue;
            }
            for (int k = 0; k < r; k++) {
                ovl_count(w, OVL_C_UDP_TX_PACKETS, runs[off + (uint32_t)k]);
                ovl_count(w, OVL_C_UDP_TX_BYTES, w->tx_mmsg[off + (uint32_t)k].msg_len);
                if (runs[off + (uint32_t)k] > 1)
                    ovl_count(w, OVL_C_UDP_GSO_SENDS, 1);
            }
            off += (uint32_t)r;
        }
    }
    w->n_tx = 0;
    w->n_iov = 0;
}

/* Queue one datagram made of k iovecs. */
static void queue_dgram(ovl_worker_t *w, const ovl_addr_t *dst, const struct iovec *iov,
                        uint32_t k, uint16_t slot)
{
    if (w->n_tx == OVL_TX_MSGS || w->n_iov + k > OVL_TX_IOVS)
        flush_tx(w);
    ovl_txe_t *t = &w->txq[w->n_tx++];
    t->iov_off = w->n_iov;
    t->iov_n = (uint16_t)k;
    t->slot = slot;
    t->dst = dst;
    t->len = 0;
    for (uint32_t i = 0; i < k; i++) {
        w->tx_iov[w->n_iov++] = iov[i];
        t->len += (uint32_t)iov[i].iov_len;
    }
}

/* What goes out for one frame: either the frame itself (headroom in front)
 * or the segments of a super-frame (headers in seg_hdrs slots). */
typedef struct out {
    uint8_t *frame;
    size_t len;
    const ovl_vnet_hdr_t *vh;   /* NULL, or the frame's virtio header */
    int nseg;                   /* 0: the frame as is; else segments in w->segs */
    uint16_t slot;
} out_t;

static void count_encap(ovl_port_t *p, ovl_network_t *n, size_t bytes, uint64_t packets)
{
    ovl_obj_add(p->c, OVL_O_ENCAP_PACKETS, packets);
    ovl_obj_add(p->c, OVL_O_ENCAP_BYTES, bytes);
    ovl_obj_add(n->c, OVL_O_ENCAP_PACKETS, packets);
    ovl_obj_add(n->c, OVL_O_ENCAP_BYTES, bytes);
}

static void send_to(ovl_worker_t *w, ovl_port_t *p, ovl_network_t *n, const ovl_addr_t *vtep,
                    const out_t *o)
{
    size_t hl = n->hdr_len;
    if (!o->nseg) {
        uint8_t *hdr = o->frame - hl;
        memcpy(hdr, n->hdr, hl);
        struct iovec iov = { .iov_base = hdr, .iov_len = hl + o->len };
        queue_dgram(w, vtep, &iov, 1, o->slot);
        count_encap(p, n, o->len, 1);
        return;
    }
    for (int i = 0; i < o->nseg; i++) {
        ovl_seg_t *sg = &w->segs[i];
        uint8_t *hdr = sg->hdr - hl;
        memcpy(hdr, n->hdr, hl);
        struct iovec iov[2] = {
            { .iov_base = hdr, .iov_len = hl + sg->hdr_len },
            { .iov_base = (void *)sg->pay, .iov_len = sg->pay_len },
        };
        queue_dgram(w, vtep, iov, sg->pay_len ? 2 : 1, o->slot);
        count_encap(p, n, sg->hdr_len + sg->pay_len, 1);
    }
}

/* Cut a super-frame into w->segs, once, before its first remote copy. */
static int segment(ovl_worker_t *w, ovl_port_t *p, ovl_network_t *n, out_t *o, const ovl_frame_t *f)
{
    if (o->nseg || !o->vh || o->vh->gso_type == OVL_VNET_GSO_NONE)
        return 0;
    size_t need = (o->len + o->vh->gso_size - 1) / (o->vh->gso_size ? o->vh->gso_size : 1) + 1;
    if (w->n_tx == 0)
        w->n_seg_hdrs = 0; /* nothing queued refers to the slots */
    if (w->n_seg_hdrs + need > OVL_SEG_SLOTS) {
        flush_tx(w);
        w->n_seg_hdrs = 0;
    }
    int k = ovl_gso_segment(o->frame, o->len, o->vh, f,
                            w->seg_hdrs + (size_t)w->n_seg_hdrs * OVL_SEG_HDR_MAX, w->segs,
                            OVL_GSO_MAX_SEGS);
    if (k < 0) {
        ovl_drop(w, p, n, -k);
        return -1;
    }
    w->n_seg_hdrs += (uint32_t)k;
    o->nseg = k;
    ovl_count(w, OVL_C_GSO_SEGMENTS, (uint64_t)k);
    return 0;
}

static void flood(ovl_worker_t *w, ovl_port_t *p, ovl_network_t *n, out_t *o, const ovl_frame_t *f)
{
    ovl_engine_t *e = w->e;
    uint32_t copies = 0;
    for (uint32_t i = 0; i < n->n_ports; i++) {
        ovl_port_t *q = &e->ports[n->ports[i]];
        if (q == p)
            continue;
        ovl_deliver(w, q, n, o->frame, o->len, o->vh);
        copies++;
    }
    if (n->n_vteps && segment(w, p, n, o, f) < 0)
        return;
    for (uint32_t i = 0; i < n->n_vteps; i++) {
        send_to(w, p, n, &n->vteps[i], o);
        copies++;
    }
    if (!copies) {
        ovl_drop(w, p, n, OVL_C_NO_FLOOD_TARGETS);
        return;
    }
    ovl_count(w, OVL_C_FLOODED, 1);
    ovl_count(w, OVL_C_FLOOD_COPIES, copies);
}

static void report_miss(ovl_worker_t *w, ovl_port_t *p, uint32_t port_id, const uint8_t *dst)
{
    uint64_t key = ((uint64_t)p->vni << 48) ^ ovl_hash_bytes(dst, 6);
    uint32_t h = (uint32_t)(key ^ (key >> 29)) & (OVL_MISS_CACHE - 1);
    if (w->miss[h].key == key && w->now_ns - w->miss[h].when_ns < OVL_MISS_INTERVAL_NS)
        return; /* reported within the last second */
    w->miss[h].key = key;
    w->miss[h].when_ns = w->now_ns;
    ovl_event_t ev = { .type = OVL_EVENT_MISS, .vni = p->vni, .port_id = (int32_t)port_id };
    memcpy(ev.mac, dst, 6);
    ovl_event_push(w, &ev);
}

/* Answer an ARP request or neighbour solicitation from the neighbour table.
 * Returns 1 when answered (the frame is consumed). */
static int suppress(ovl_worker_t *w, ovl_port_t *p, ovl_network_t *n, const ovl_frame_t *f)
{
    ovl_engine_t *e = w->e;
    ovl_neigh_key_t k;
    int len;
    if (f->l3 == OVL_L3_ARP && f->arp_op == 1 && memcmp(f->arp_spa, f->arp_tpa, 4) != 0) {
        ovl_neigh_key_make(&k, p->vni, 4, f->arp_tpa);
        ovl_neigh_val_t *v = ovl_map_get(&e->neigh, &k);
        if (!v || (len = ovl_wire_arp_reply(f, v->mac, w->scratch, sizeof w->scratch)) < 0)
            return 0;
        ovl_count(w, OVL_C_ARP_SUPPRESSED, 1);
    } else if (f->l3 == OVL_L3_IPV6 && f->icmp6_type == 135) {
        ovl_neigh_key_make(&k, p->vni, 6, f->nd_target);
        ovl_neigh_val_t *v = ovl_map_get(&e->neigh, &k);
        if (!v || (len = ovl_wire_nd_advert(f, v->mac, w->scratch, sizeof w->scratch)) < 0)
            return 0; /* unknown target, or DAD (never answered) */
        ovl_count(w, OVL_C_ND_SUPPRESSED, 1);
    } else {
        return 0;
    }
    ovl_deliver(w, p, n, w->scratch, (size_t)len, NULL);
    return 1;
}

/* The length of each segment super-frame f (parsed) will be cut into: its
 * real L2-L4 headers plus gso_size. Not vh->hdr_len: the kernel fills that
 * with the linear length, a hint that may hold payload too. 0 when the
 * headers cannot be read (ovl_gso_segment refuses the frame then). */
static size_t gso_seg_len(const uint8_t *frame, size_t len, const ovl_frame_t *f,
                          const ovl_vnet_hdr_t *vh)
{
    size_t l4 = f->l4_off, hl = 8; /* UDP */
    if (!l4)
        return 0;
    if (f->ip_proto == 6) {
        if (l4 + 13 > len)
            return 0;
        hl = (size_t)(frame[l4 + 12] >> 4) * 4;
    }
    return l4 + hl + vh->gso_size;
}

static void encap_one(ovl_worker_t *w, ovl_port_t *p, uint32_t port_id, uint8_t *frame, size_t len,
                      ovl_vnet_hdr_t *vh)
{
    ovl_engine_t *e = w->e;
    ovl_network_t *n = &e->nets[p->net_idx];
    ovl_count(w, OVL_C_TAP_RX_FRAMES, 1);
    ovl_count(w, OVL_C_TAP_RX_BYTES, len);
    ovl_obj_add(p->c, OVL_O_RX_PACKETS, 1);
    ovl_obj_add(p->c, OVL_O_RX_BYTES, len);
    ovl_obj_add(n->c, OVL_O_RX_PACKETS, 1);
    ovl_obj_add(n->c, OVL_O_RX_BYTES, len);
    int gso = vh && vh->gso_type != OVL_VNET_GSO_NONE;
    if (gso) {
        ovl_count(w, OVL_C_GSO_FRAMES, 1);
        /* A first bound before parsing; each segment is held to the network's
         * frame_limit below, with its real header length. */
        if ((size_t)vh->hdr_len + vh->gso_size > e->cfg.frame_max || len > OVL_SUPER_MAX) {
            ovl_drop(w, p, n, OVL_C_FRAME_OVERSIZE);
            return;
        }
    } else if (len > n->frame_limit) {
        ovl_drop(w, p, n, OVL_C_FRAME_OVERSIZE);
        return;
    }
    ovl_frame_t f;
    int rc = ovl_frame_parse(frame, len, &f);
    int secure = !(p->flags & OVL_PORT_NO_SECURITY);
    if (rc < 0 && (secure || gso || rc == -OVL_C_FRAME_TOO_SHORT)) {
        ovl_drop(w, p, n, -rc);
        return;
    }
    if (gso && gso_seg_len(frame, len, &f, vh) > n->frame_limit) {
        ovl_drop(w, p, n, OVL_C_FRAME_OVERSIZE);
        return;
    }
    if (rc < 0) { /* no port security: forward what is a valid Ethernet frame */
        memset(&f, 0, sizeof f);
        memcpy(f.dst, frame, 6);
        memcpy(f.src, frame + 6, 6);
    }
    if (secure) {
        rc = ovl_port_sec_check(&p->sec, &f);
        if (rc < 0) {
            ovl_drop(w, p, n, -rc);
            return;
        }
    } else if (!(f.src[0] & 1) && memcmp(f.src, p->sec.mac, 6) != 0) {
        ovl_fdb_key_t k;
        ovl_fdb_key_make(&k, p->vni, f.src);
        ovl_fdb_val_t *v = ovl_map_get(&e->fdb, &k);
        if (!v || (v->kind != OVL_FDB_REMOTE && v->port_id != (int32_t)port_id)) {
            ovl_learn_t l = { .kind = OVL_FDB_LOCAL, .vni = p->vni, .port_id = (int32_t)port_id };
            memcpy(l.mac, f.src, 6);
            ovl_learn_queue(w, &l);
        }
    }
    if (OVL_UNLIKELY(!__atomic_load_n(&p->seen, __ATOMIC_RELAXED)) &&
        memcmp(f.src, p->sec.mac, 6) == 0) {
        __atomic_store_n(&p->seen, 1, __ATOMIC_RELAXED);
        ovl_event_t ev = { .type = OVL_EVENT_MAC_SEEN, .vni = p->vni, .port_id = (int32_t)port_id };
        memcpy(ev.mac, f.src, 6);
        ovl_event_push(w, &ev);
    }
    if (!gso && vh && (vh->flags & OVL_VNET_F_NEEDS_CSUM)) {
        /* The pod left the checksum to us: finish it before anyone sees it. */
        if (ovl_csum_complete(frame, len, vh->csum_start, vh->csum_offset) < 0) {
            ovl_drop(w, p, n, OVL_C_GSO_MALFORMED);
            return;
        }
        vh->flags = 0;
        ovl_count(w, OVL_C_CSUM_COMPLETED, 1);
    }
    if (rc == 0 && !gso && suppress(w, p, n, &f))
        return;

    out_t o = { .frame = frame, .len = len, .vh = vh, .nseg = 0,
                .slot = (uint16_t)(rc == 0 ? ovl_flow_hash(&f) % e->n_slots : 0) };
    if (f.dst[0] & 1) {
        flood(w, p, n, &o, &f);
        return;
    }
    ovl_fdb_key_t k;
    ovl_fdb_key_make(&k, p->vni, f.dst);
    ovl_fdb_val_t *v = ovl_map_get(&e->fdb, &k);
    if (!v) {
        ovl_count(w, OVL_C_FDB_MISSES, 1);
        report_miss(w, p, port_id, f.dst);
        flood(w, p, n, &o, &f);
        return;
    }
    __atomic_store_n(&v->used_ns, w->now_ns, __ATOMIC_RELAXED);
    if (v->kind == OVL_FDB_LOCAL) {
        if (v->port_id == (int32_t)port_id) {
            ovl_drop(w, p, n, OVL_C_HAIRPIN);
            return;
        }
        ovl_count(w, OVL_C_LOCAL_SWITCHED, 1);
        ovl_deliver(w, &e->ports[v->port_id], n, frame, len, vh);
        return;
    }
    if (segment(w, p, n, &o, &f) < 0)
        return;
    send_to(w, p, n, &v->vtep, &o);
}

void ovl_encap_batch(ovl_worker_t *w, uint32_t port_id, uint32_t gen, uint32_t queue)
{
    ovl_engine_t *e = w->e;
    pthread_rwlock_rdlock(&e->lock);
    if (port_id >= e->cfg.max_ports || !e->ports[port_id].used || e->ports[port_id].gen != gen ||
        queue >= e->ports[port_id].n_fds) {
        pthread_rwlock_unlock(&e->lock);
        return; /* the port went away after epoll reported it */
    }
    ovl_port_t *p = &e->ports[port_id];
    w->now_ns = ovl_now_ns();
    size_t vl = p->vnet ? OVL_VNET_HLEN : 0;
    /* One byte more than the largest frame shows an oversize one. */
    size_t want = vl + (p->vnet ? OVL_SUPER_MAX : e->cfg.frame_max) + 1;
    if (want > w->tap_buf_size - OVL_HEADROOM + vl)
        want = w->tap_buf_size - OVL_HEADROOM + vl;
    for (uint32_t i = 0; i < e->cfg.batch; i++) {
        uint8_t *frame = w->tap_bufs + (size_t)i * w->tap_buf_size + OVL_HEADROOM;
        ssize_t r = read(p->fds[queue], frame - vl, want);
        if (r <= 0)
            break;
        if ((size_t)r < vl) {
            ovl_drop(w, p, &e->nets[p->net_idx], OVL_C_FRAME_TOO_SHORT);
            continue;
        }
        ovl_vnet_hdr_t vh;
        if (vl)
            memcpy(&vh, frame - vl, sizeof vh);
        encap_one(w, p, port_id, frame, (size_t)r - vl, vl ? &vh : NULL);
    }
    flush_tx(w);
    pthread_rwlock_unlock(&e->lock);
    ovl_learn_apply(w);
}
