/*
 * fdb.c — the FDB, the neighbour table and learning (see fdb.h for the
 * design notes).
 *
 * Contracts. The public functions take the engine's lock themselves (writer
 * for changes, reader for the dump); the helpers for other rooms assume the
 * caller holds the writer lock. Learning is applied by the learner thread,
 * as a writer, and never overrides an entry the control plane or a port owns.
 */
#include "counters.h"
#include "network.h"
#include "port.h"

#include <errno.h>
#include <unistd.h>

static void nexthop_port(ovl_nexthop_t *nh, int32_t port_id)
{
    memset(nh, 0, sizeof *nh);
    nh->kind = OVL_NH_PORT;
    nh->port_id = port_id;
}

static void nexthop_tunnel(ovl_nexthop_t *nh, const ovl_addr_t *vtep)
{
    memset(nh, 0, sizeof *nh);
    nh->kind = OVL_NH_TUNNEL;
    nh->port_id = -1;
    nh->addr = *vtep;
}

/* ---- the control plane's FDB ---- */

int ovl_fdb_add(ovl_engine_t *e, uint32_t vni, const uint8_t *mac, int family,
                const uint8_t *vtep, uint16_t port)
{
    if (family != e->cfg.family)
        return -EAFNOSUPPORT;
    if (mac[0] & 1)
        return -EINVAL;
    OVL_WRLOCK(e);
    int rc = 0;
    const ovl_network_t *n = ovl_network_lookup(e, vni);
    if (!n) {
        rc = -ENOENT;
        goto out;
    }
    ovl_fdb_key_t k;
    ovl_fdb_key_make(&k, vni, mac);
    ovl_fdb_val_t *v = ovl_map_get(&e->fdb, &k);
    if (v && v->kind == OVL_FDB_LOCAL) {
        rc = -EADDRINUSE; /* a local port has this MAC */
        goto out;
    }
    if (!v && !(v = ovl_map_put(&e->fdb, &k, NULL))) {
        rc = -ENOSPC;
        goto out;
    }
    ovl_addr_t a;
    /* Port 0: the tunnel port of the network's encapsulation (network.h). */
    ovl_addr_make(&a, family, vtep, port ? port : e->udp_ports[n->encap]);
    v->kind = OVL_FDB_REMOTE;
    nexthop_tunnel(&v->nh, &a);
    v->updated_ns = ovl_now_ns();
out:
    OVL_UNLOCK(e);
    return rc;
}

int ovl_fdb_del(ovl_engine_t *e, uint32_t vni, const uint8_t *mac)
{
    OVL_WRLOCK(e);
    ovl_fdb_key_t k;
    ovl_fdb_key_make(&k, vni, mac);
    ovl_fdb_val_t *v = ovl_map_get(&e->fdb, &k);
    int rc;
    if (!v)
        rc = -ENOENT;
    else if (v->kind == OVL_FDB_LOCAL)
        rc = -EPERM; /* removed with its port */
    else
        rc = ovl_map_del(&e->fdb, &k);
    OVL_UNLOCK(e);
    return rc;
}

int ovl_fdb_dump(ovl_engine_t *e, ovl_fdb_entry_t *out, size_t n)
{
    OVL_RDLOCK(e);
    size_t k = 0;
    for (uint32_t s = 0; s <= e->fdb.mask; s++) {
        ovl_fdb_key_t *key = ovl_map_key(&e->fdb, s);
        if (!key)
            continue;
        if (k < n) {
            ovl_fdb_val_t *v = ovl_map_val(&e->fdb, s);
            ovl_fdb_entry_t *o = &out[k];
            memset(o, 0, sizeof *o);
            o->vni = key->vni;
            memcpy(o->mac, key->mac, 6);
            o->kind = v->kind;
            o->nexthop = v->nh.kind;
            o->port_id = v->nh.kind == OVL_NH_PORT ? v->nh.port_id : -1;
            if (v->nh.kind == OVL_NH_TUNNEL) {
                o->family = v->nh.addr.family;
                memcpy(o->vtep, v->nh.addr.addr, 16);
                o->vtep_port = v->nh.addr.port;
            }
            o->updated_ns = __atomic_load_n(&v->updated_ns, __ATOMIC_RELAXED);
            o->used_ns = __atomic_load_n(&v->used_ns, __ATOMIC_RELAXED);
        }
        k++;
    }
    OVL_UNLOCK(e);
    return (int)k;
}

/* ---- the neighbour table ---- */

int ovl_fdb_neigh_add(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *ip,
                      const uint8_t *mac)
{
    if (ovl_addr_len(family) < 0)
        return -EAFNOSUPPORT;
    OVL_WRLOCK(e);
    int rc = ovl_network_lookup(e, vni) ? ovl_fdb_neigh_set(e, vni, family, ip, mac) : -ENOENT;
    OVL_UNLOCK(e);
    return rc;
}

int ovl_fdb_neigh_del(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *ip)
{
    if (ovl_addr_len(family) < 0)
        return -EAFNOSUPPORT;
    OVL_WRLOCK(e);
    ovl_neigh_key_t k;
    ovl_neigh_key_make(&k, vni, family, ip);
    int rc = ovl_map_del(&e->neigh, &k);
    OVL_UNLOCK(e);
    return rc;
}

/* ---- helpers for the other rooms (writer lock held) ---- */

ovl_fdb_val_t *ovl_fdb_put_port(ovl_engine_t *e, uint32_t vni, const uint8_t *mac, int32_t port_id)
{
    ovl_fdb_key_t k;
    ovl_fdb_key_make(&k, vni, mac);
    ovl_fdb_val_t *v = ovl_map_put(&e->fdb, &k, NULL);
    if (!v)
        return NULL;
    v->kind = OVL_FDB_LOCAL;
    nexthop_port(&v->nh, port_id);
    v->updated_ns = ovl_now_ns();
    return v;
}

static int behind_port(const void *key, const void *val, void *ctx)
{
    (void)key;
    const ovl_fdb_val_t *v = val;
    return v->kind == OVL_FDB_LOCAL && v->nh.port_id == *(const int32_t *)ctx;
}

void ovl_fdb_forget_port(ovl_engine_t *e, int32_t port_id)
{
    ovl_map_sweep(&e->fdb, behind_port, &port_id);
}

int ovl_fdb_neigh_set(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *ip,
                      const uint8_t *mac)
{
    ovl_neigh_key_t k;
    ovl_neigh_key_make(&k, vni, family, ip);
    ovl_neigh_val_t *v = ovl_map_put(&e->neigh, &k, NULL);
    if (!v)
        return -ENOSPC;
    memcpy(v->mac, mac, 6);
    return 0;
}

void ovl_fdb_neigh_remove(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *ip)
{
    ovl_neigh_key_t k;
    ovl_neigh_key_make(&k, vni, family, ip);
    ovl_map_del(&e->neigh, &k);
}

/* Both key types start with the VNI. */
static int in_vni(const void *key, const void *val, void *ctx)
{
    (void)val;
    return *(const uint32_t *)key == *(const uint32_t *)ctx;
}

void ovl_fdb_purge_vni(ovl_engine_t *e, uint32_t vni)
{
    ovl_map_sweep(&e->fdb, in_vni, &vni);
    ovl_map_sweep(&e->neigh, in_vni, &vni);
}

/* ---- learning ---- */

void ovl_fdb_learn_queue(ovl_worker_t *w, const ovl_learn_t *l)
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

void ovl_fdb_learn_commit(ovl_worker_t *w)
{
    if (!w->n_learn)
        return;
    ovl_learn_ring_t *r = w->learned;
    uint32_t head = r->head, tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < w->n_learn && head - tail < OVL_LEARN_RING; i++)
        r->slot[head++ & (OVL_LEARN_RING - 1)] = w->learn[i];
    __atomic_store_n(&r->head, head, __ATOMIC_RELEASE);
    w->n_learn = 0;
    uint64_t one = 1;
    ssize_t n = write(w->e->learner.fd, &one, sizeof one);
    (void)n;
}

/* Apply one learned entry (writer lock held); 1 when it made a new remote
 * entry (a LEARNED event). */
static int learn_one(ovl_engine_t *e, const ovl_learn_t *l)
{
    if (!ovl_network_lookup(e, l->vni))
        return 0;
    if (l->kind == OVL_FDB_LOCAL) {
        const ovl_port_t *p = ovl_port_get(e, l->port_id);
        if (!p || p->gen != l->port_gen || p->vni != l->vni)
            return 0; /* the port went away after the frame */
    }
    ovl_fdb_key_t k;
    ovl_fdb_key_make(&k, l->vni, l->mac);
    int created = 0;
    ovl_fdb_val_t *v = ovl_map_get(&e->fdb, &k);
    /* Learning never overrides what the control plane or a port owns. */
    if (v && (v->kind == OVL_FDB_REMOTE ||
              (v->kind == OVL_FDB_LOCAL && l->kind != OVL_FDB_LOCAL)))
        return 0;
    if (v && v->kind == OVL_FDB_LOCAL && ovl_port_get(e, v->nh.port_id) &&
        memcmp(e->ports[v->nh.port_id].sec.mac, l->mac, 6) == 0)
        return 0; /* a port's own MAC */
    if (v && ovl_learn_same(l, v->kind, v->nh.port_id, &v->nh.addr)) {
        if (l->when_ns > __atomic_load_n(&v->updated_ns, __ATOMIC_RELAXED))
            __atomic_store_n(&v->updated_ns, l->when_ns, __ATOMIC_RELAXED);
        return 0; /* known already (learned from an earlier burst) */
    }
    if (!v && !(v = ovl_map_put(&e->fdb, &k, &created)))
        return 0;
    v->kind = l->kind;
    if (l->kind == OVL_FDB_LOCAL)
        nexthop_port(&v->nh, l->port_id);
    else
        nexthop_tunnel(&v->nh, &l->vtep);
    __atomic_store_n(&v->updated_ns, l->when_ns, __ATOMIC_RELAXED);
    ovl_bump(&e->learner.c[OVL_C_MACS_LEARNED], 1);
    return created && l->kind == OVL_FDB_LEARNED;
}

void ovl_fdb_learn_drain(ovl_engine_t *e)
{
    ovl_learner_t *ln = &e->learner;
    uint32_t n_ev = 0;
    OVL_WRLOCK(e);
    for (uint32_t i = 0; i < e->n_workers; i++) {
        ovl_learn_ring_t *r = e->workers[i]->learned;
        uint32_t tail = r->tail, head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
        for (; tail != head; tail++) {
            const ovl_learn_t *l = &r->slot[tail & (OVL_LEARN_RING - 1)];
            if (!learn_one(e, l))
                continue;
            ovl_event_t *ev = &ln->events[n_ev++];
            memset(ev, 0, sizeof *ev);
            ev->type = OVL_EVENT_LEARNED;
            ev->vni = l->vni;
            ev->port_id = -1;
            ev->family = l->vtep.family;
            memcpy(ev->mac, l->mac, 6);
            memcpy(ev->addr, l->vtep.addr, 16);
        }
        __atomic_store_n(&r->tail, tail, __ATOMIC_RELEASE);
    }
    /* Reported before the entries are visible: whoever sees a learned entry
     * finds its event queued. The learner may wait for the ring's lock (it is
     * not a worker); a full ring still loses the event, counted. */
    for (uint32_t i = 0; i < n_ev; i++)
        ovl_events_push(&e->events, ln->c, &ln->events[i], 1);
    OVL_UNLOCK(e);
}
