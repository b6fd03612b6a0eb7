/*
 * port.h — a pod's attachment to a network: a TAP (tap.c) or an adopted
 * packet fd, its MAC and addresses (port security, portsec.c), its queues
 * and the worker each queue belongs to.
 *
 * Design notes.
 * - A port id indexes e->ports and the workers' counter rows. Reusing an id
 *   bumps gen, which is part of every epoll tag, so an event of the port's
 *   previous life is recognised and ignored.
 * - A multi-queue TAP has one queue per worker (fds[q] is served by worker
 *   q % n_workers), opened in order, so the kernel's queue q is fds[q] and
 *   the steering program's choice is the owner's queue (engine.h); a
 *   single-queue port (an adopted fd) belongs to worker id % n_workers. A
 *   frame for the port is written by the delivering worker to its own queue
 *   where there is one (ovl_port_wfd).
 */
#ifndef OVL_PORT_H
#define OVL_PORT_H

#include "engine.h"
#include "portsec.h"

struct ovl_port {
    int used;
    uint32_t id;
    uint32_t gen;                /* bumped on reuse: stale epoll events are ignored */
    int fds[OVL_MAX_WORKERS];    /* one queue per worker (multi-queue TAP), or one */
    uint32_t n_fds;
    uint32_t flags;              /* OVL_PORT_* */
    uint32_t vni;
    uint32_t net_idx;
    uint32_t worker;             /* the worker of a single-queue port */
    uint32_t offloads;           /* OVL_OFF_TAP_* in use on this TAP */
    int vnet;                    /* frames carry a virtio-net header */
    int seen;                    /* the port's own MAC was reported (MAC_SEEN) */
    ovl_portsec_t sec;
    struct ovl_acl *acl[2];      /* compiled rule tables by OVL_POLICY_* direction, or NULL */
    uint32_t policy_gen[2];      /* bumped by each table swap (policy.h) */
    uint8_t policy_set;          /* bit per direction: set once (OVL_PORT_POLICY_PENDING) */
};

/* The port of id, or NULL (caller holds the lock). */
static inline ovl_port_t *ovl_port_get(ovl_engine_t *e, int id)
{
    if (id < 0 || (uint32_t)id >= e->cfg.max_ports || !e->ports[id].used)
        return NULL;
    return &e->ports[id];
}

/* The worker that serves queue q of port p. */
static inline ovl_worker_t *ovl_port_queue_worker(const ovl_engine_t *e, const ovl_port_t *p,
                                                  uint32_t q)
{
    return e->workers[p->n_fds > 1 ? q % e->n_workers : p->worker];
}

/* The fd a worker writes port q's frames to: its own queue where there is one. */
static inline int ovl_port_wfd(const ovl_worker_t *w, const ovl_port_t *q)
{
    return q->fds[w->idx % q->n_fds];
}

#endif
