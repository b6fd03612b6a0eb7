/*
 * encap.c — TAP -> underlay: read a burst of frames from one port, apply
 * port security, answer ARP/ND from the neighbour table, switch locally or
 * encapsulate toward the VTEP the FDB names (flooding to the network's
 * members when the destination is broadcast, multicast or unknown), and send
 * the datagrams in sendmmsg batches, one per source-port socket.
 */
#include "internal.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

static void flush_tx(ovl_worker_t *w)
{
    ovl_engine_t *e = w->e;
    uint32_t n = w->n_tx;
    if (!n)
        return;
    /* Counting sort by source-port slot: one sendmmsg per socket. */
    uint32_t count[1025] = {0};
    uint16_t slots = e->n_slots;
    for (uint32_t i = 0; i < n; i++)
        count[w->tx_slot[i] + 1]++;
    for (uint32_t s = 0; s < slots; s++)
        count[s + 1] += count[s];
    uint32_t start[1025];
    memcpy(start, count, (slots + 1u) * sizeof *start);
    for (uint32_t i = 0; i < n; i++)
        w->tx_sorted[start[w->tx_slot[i]]++] = w->tx_msgs[i];
    for (uint32_t s = 0; s < slots; s++) {
        uint32_t off = count[s], todo = count[s + 1] - count[s];
        while (todo) {
            int r = sendmmsg(e->tx_fds[s], w->tx_sorted + off, todo, MSG_DONTWAIT);
            if (r <= 0) {
                if (r < 0 && errno == EINTR)
                    continue;
                /* The rest of this slot is lost: counted, never retried. */
                for (uint32_t i = 0; i < todo; i++)
                    ovl_count(w, OVL_C_UDP_SEND_FAILED, 1);
                break;
            }
            for (int i = 0; i < r; i++) {
                ovl_count(w, OVL_C_UDP_TX_PACKETS, 1);
                ovl_count(w, OVL_C_UDP_TX_BYTES, w->tx_sorted[off + (uint32_t)i].msg_len);
            }
            off += (uint32_t)r;
            todo -= (uint32_t)r;
        }
    }
    w->n_tx = 0;
}

/* Queue frame (which has OVL_HEADROOM bytes before it) for vtep. */
static void queue_tx(ovl_worker_t *w, ovl_port_t *p, ovl_network_t *n, const ovl_addr_t *vtep,
                     uint8_t *frame, size_t len, uint16_t slot)
{
    if (w->n_tx == OVL_TX_MSGS)
        flush_tx(w);
    uint8_t *hdr = frame - n->hdr_len;
    memcpy(hdr, n->hdr, n->hdr_len);
    uint32_t i = w->n_tx++;
    w->tx_iov[i].iov_base = hdr;
    w->tx_iov[i].iov_len = n->hdr_len + len;
    struct msghdr *h = &w->tx_msgs[i].msg_hdr;
    memset(h, 0, sizeof *h);
    h->msg_name = (void *)&vtep->sa;
    h->msg_namelen = vtep->salen;
    h->msg_iov = &w->tx_iov[i];
    h->msg_iovlen = 1;
    w->tx_slot[i] = slot;
    ovl_obj_add(p->c, OVL_O_ENCAP_PACKETS, 1);
    ovl_obj_add(p->c, OVL_O_ENCAP_BYTES, len);
    ovl_obj_add(n->c, OVL_O_ENCAP_PACKETS, 1);
    ovl_obj_add(n->c, OVL_O_ENCAP_BYTES, len);
}

static void flood(ovl_worker_t *w, ovl_port_t *p, ovl_network_t *n, uint8_t *frame, size_t len,
                  uint16_t slot)
{
    ovl_engine_t *e = w->e;
    uint32_t copies = 0;
    for (uint32_t i = 0; i < n->n_ports; i++) {
        ovl_port_t *q = &e->ports[n->ports[i]];
        if (q == p)
            continue;
        ovl_deliver(w, q, n, frame, len);
        copies++;
    }
    for (uint32_t i = 0; i < n->n_vteps; i++) {
        queue_tx(w, p, n, &n->vteps[i], frame, len, slot);
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
    ovl_deliver(w, p, n, w->scratch, (size_t)len);
    return 1;
}

static void encap_one(ovl_worker_t *w, ovl_port_t *p, uint32_t port_id, uint8_t *frame, size_t len)
{
    ovl_engine_t *e = w->e;
    ovl_network_t *n = &e->nets[p->net_idx];
    ovl_count(w, OVL_C_TAP_RX_FRAMES, 1);
    ovl_count(w, OVL_C_TAP_RX_BYTES, len);
    ovl_obj_add(p->c, OVL_O_RX_PACKETS, 1);
    ovl_obj_add(p->c, OVL_O_RX_BYTES, len);
    ovl_obj_add(n->c, OVL_O_RX_PACKETS, 1);
    ovl_obj_add(n->c, OVL_O_RX_BYTES, len);
    if (len > e->cfg.frame_max) {
        ovl_drop(w, p, n, OVL_C_FRAME_OVERSIZE);
        return;
    }
    ovl_frame_t f;
    int rc = ovl_frame_parse(frame, len, &f);
    int secure = !(p->flags & OVL_PORT_NO_SECURITY);
    if (rc < 0 && (secure || rc == -OVL_C_FRAME_TOO_SHORT)) {
        ovl_drop(w, p, n, -rc);
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
    if (rc == 0 && suppress(w, p, n, &f))
        return;

    uint16_t slot = (uint16_t)(rc == 0 ? ovl_flow_hash(&f) % e->n_slots : 0);
    if (f.dst[0] & 1) {
        flood(w, p, n, frame, len, slot);
        return;
    }
    ovl_fdb_key_t k;
    ovl_fdb_key_make(&k, p->vni, f.dst);
    ovl_fdb_val_t *v = ovl_map_get(&e->fdb, &k);
    if (!v) {
        ovl_count(w, OVL_C_FDB_MISSES, 1);
        report_miss(w, p, port_id, f.dst);
        flood(w, p, n, frame, len, slot);
        return;
    }
    __atomic_store_n(&v->used_ns, w->now_ns, __ATOMIC_RELAXED);
    if (v->kind == OVL_FDB_LOCAL) {
        if (v->port_id == (int32_t)port_id) {
            ovl_drop(w, p, n, OVL_C_HAIRPIN);
            return;
        }
        ovl_count(w, OVL_C_LOCAL_SWITCHED, 1);
        ovl_deliver(w, &e->ports[v->port_id], n, frame, len);
        return;
    }
    queue_tx(w, p, n, &v->vtep, frame, len, slot);
}

void ovl_encap_batch(ovl_worker_t *w, uint32_t port_id, uint32_t gen)
{
    ovl_engine_t *e = w->e;
    pthread_rwlock_rdlock(&e->lock);
    if (port_id >= e->cfg.max_ports || !e->ports[port_id].used || e->ports[port_id].gen != gen) {
        pthread_rwlock_unlock(&e->lock);
        return; /* the port went away after epoll reported it */
    }
    ovl_port_t *p = &e->ports[port_id];
    w->now_ns = ovl_now_ns();
    uint32_t want = e->cfg.frame_max + 1; /* one byte more shows an oversize frame */
    for (uint32_t i = 0; i < e->cfg.batch; i++) {
        uint8_t *frame = w->tap_bufs + (size_t)i * w->buf_size + OVL_HEADROOM;
        ssize_t r = read(p->fd, frame, want);
        if (r <= 0)
            break;
        encap_one(w, p, port_id, frame, (size_t)r);
    }
    flush_tx(w);
    pthread_rwlock_unlock(&e->lock);
    ovl_learn_apply(w);
}
