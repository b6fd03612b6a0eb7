/*
 * internal.h — what engine.c, encap.c and decap.c share: epoll tags, counting,
 * delivery and event helpers. Not part of the ABI.
 */
#ifndef OVL_INTERNAL_H
#define OVL_INTERNAL_H

#include "engine.h"

#include <string.h>

/* epoll data: kind in bits 24..31, port id in 0..23, generation in 32..55,
 * TAP queue in 56..63. */
#define OVL_EP_UDP ((uint64_t)1 << 24)
#define OVL_EP_STOP ((uint64_t)2 << 24)
#define OVL_EP_PORTK ((uint64_t)3 << 24)
#define OVL_EP_PORT(id, gen, q) (OVL_EP_PORTK | (uint64_t)(id) | ((uint64_t)(gen) << 32) | ((uint64_t)(q) << 56))
#define OVL_EP_QUEUE(d) ((uint32_t)((d) >> 56))
#define OVL_EP_KIND(d) ((d) & ((uint64_t)0xff << 24))
#define OVL_EP_ID(d) ((uint32_t)((d) & 0xffffff))
#define OVL_EP_GEN(d) ((uint32_t)(((d) >> 32) & 0xffffff))

#define OVL_RX_CTRL 64           /* control bytes per receive: one UDP_GRO cmsg */
#define OVL_TX_CTRL 32           /* control bytes per send: CMSG_SPACE(sizeof(uint16_t)) */

/* A worker's own counter: one writer, relaxed readers. */
static inline void ovl_count(ovl_worker_t *w, int id, uint64_t n)
{
    __atomic_store_n(&w->c[id], w->c[id] + n, __ATOMIC_RELAXED);
}

/* Network and port counters are shared between workers. */
static inline void ovl_obj_add(uint64_t *c, int id, uint64_t n)
{
    __atomic_fetch_add(&c[id], n, __ATOMIC_RELAXED);
}

uint64_t ovl_now_ns(void);
ovl_network_t *ovl_net_lookup(ovl_engine_t *e, uint32_t vni);
void ovl_event_push(ovl_worker_t *w, const ovl_event_t *ev);
void ovl_learn_apply(ovl_worker_t *w);
void *ovl_worker_main(void *arg);
void ovl_encap_batch(ovl_worker_t *w, uint32_t port_id, uint32_t gen, uint32_t queue);

/* The fd a worker writes port q's frames to: its own queue where there is one. */
static inline int ovl_port_wfd(const ovl_worker_t *w, const ovl_port_t *q)
{
    return q->fds[w->idx % q->n_fds];
}
void ovl_decap_batch(ovl_worker_t *w);

/* Count a drop against the engine, and the port and network when known. */
static inline void ovl_drop(ovl_worker_t *w, ovl_port_t *p, ovl_network_t *n, int reason)
{
    ovl_count(w, reason, 1);
    if (p)
        ovl_obj_add(p->c, OVL_O_DROPS, 1);
    if (n)
        ovl_obj_add(n->c, OVL_O_DROPS, 1);
}

/* Write one frame to port q's TAP (with vh, or a blank virtio-net header, on
 * a vnet TAP); counts success or the drop. A super-frame (vh GSO) cannot go
 * to a port without offloads: counted drop. */
void ovl_deliver(ovl_worker_t *w, ovl_port_t *q, ovl_network_t *n, const uint8_t *frame, size_t len,
                 const ovl_vnet_hdr_t *vh);

/* Does a learned entry say the same as l: same kind, and same port or VTEP? */
static inline int ovl_learn_same(const ovl_learn_t *l, uint8_t kind, int32_t port_id,
                                 const ovl_addr_t *vtep)
{
    if (l->kind != kind)
        return 0;
    if (kind == OVL_FDB_LOCAL)
        return l->port_id == port_id;
    return l->vtep.family == vtep->family && l->vtep.port == vtep->port &&
           memcmp(l->vtep.addr, vtep->addr, 16) == 0;
}

/* Queue a learned FDB entry, applied after the batch. When the latest entry
 * queued in this batch for the same MAC says the same, it is not queued
 * again: a burst from one new MAC takes one slot, not the whole queue (and a
 * MAC that moves and comes back within the batch still ends where it came
 * last). */
static inline void ovl_learn_queue(ovl_worker_t *w, const ovl_learn_t *l)
{
    for (uint32_t i = w->n_learn; i-- > 0;) {
        const ovl_learn_t *q = &w->learn[i];
        if (q->vni == l->vni && memcmp(q->mac, l->mac, 6) == 0) {
            if (ovl_learn_same(q, l->kind, l->port_id, &l->vtep))
                return;
            break;
        }
    }
    if (w->n_learn < OVL_LEARN_MAX)
        w->learn[w->n_learn++] = *l;
}

#endif
