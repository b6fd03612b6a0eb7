/*
 * counters.h — counting on the packet path: node counters and per-network,
 * per-port counters, all per worker.
 *
 * Design notes. Every counter a worker bumps is its own: w->c for the node,
 * w->obj_c for networks (row = network index) and ports (row = max_networks
 * + port id). One writer each, so a bump is a relaxed load and store, no
 * atomic read-modify-write and no cache line shared between workers; readers
 * (counters.c) sum the workers' rows with relaxed loads. A network or port
 * index that is reused starts from zero: its rows are reset when it is
 * created, under the writer lock, while no worker is inside a burst
 * (engine.h); a lock model without that quiescent point must reset them
 * another way (a per-worker generation, say).
 */
#ifndef OVL_COUNTERS_H
#define OVL_COUNTERS_H

#include "engine.h"
#include "network.h"
#include "port.h"

/* Bump a worker's own counter: one writer, relaxed readers. */
static inline void ovl_bump(uint64_t *c, uint64_t n)
{
    __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

/* A node counter (OVL_C_*). */
static inline void ovl_count(ovl_worker_t *w, int id, uint64_t n)
{
    ovl_bump(&w->c[id], n);
}

/* The row of network index idx in a worker's object counters. */
static inline uint64_t *ovl_net_row(ovl_worker_t *w, uint32_t net_idx)
{
    return w->obj_c + (size_t)net_idx * OVL_O__COUNT;
}

/* The row of port id in a worker's object counters. */
static inline uint64_t *ovl_port_row(ovl_worker_t *w, uint32_t port_id)
{
    return w->port_c + (size_t)port_id * OVL_O__COUNT;
}

/* A network's counter (OVL_O_*). */
static inline void ovl_net_count(ovl_worker_t *w, const ovl_network_t *n, int id, uint64_t v)
{
    ovl_bump(&ovl_net_row(w, n->idx)[id], v);
}

/* A port's counter, and the same against its network. */
static inline void ovl_port_count(ovl_worker_t *w, const ovl_port_t *p, const ovl_network_t *n,
                                  int id, uint64_t v)
{
    ovl_bump(&ovl_port_row(w, p->id)[id], v);
    ovl_net_count(w, n, id, v);
}

/* Count n frames dropped for reason against the node, and against the port
 * and the network when known. The one way the packet path drops. */
static inline void ovl_drop_n(ovl_worker_t *w, const ovl_port_t *p, const ovl_network_t *n,
                              int reason, uint64_t count)
{
    ovl_count(w, reason, count);
    if (p)
        ovl_bump(&ovl_port_row(w, p->id)[OVL_O_DROPS], count);
    if (n)
        ovl_net_count(w, n, OVL_O_DROPS, count);
}

static inline void ovl_drop(ovl_worker_t *w, const ovl_port_t *p, const ovl_network_t *n,
                            int reason)
{
    ovl_drop_n(w, p, n, reason, 1);
}

/* Zero a network's (a port's) rows in every worker: when its index is
 * (re)used. Caller holds the writer lock. */
void ovl_counters_reset_network(ovl_engine_t *e, uint32_t net_idx);
void ovl_counters_reset_port(ovl_engine_t *e, uint32_t port_id);

#endif
