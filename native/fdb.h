/*
 * fdb.h — where a MAC lives (the FDB), which MAC an address has (the
 * neighbour table, for ARP/ND suppression), and learning.
 *
 * Design notes.
 * - An FDB value says who wrote it (kind: the control plane, a port, or
 *   learning, as the kernel's struct vxlan_fdb keeps its flags) apart from
 *   where frames to the MAC go (its next hop: a local port, or a remote VTEP
 *   through the tunnel transport). The forward decision reads only the next
 *   hop, so a routed peer (a next hop through the direct transport) or the
 *   node's gateway port joins as one more next-hop kind, without touching
 *   what decides who may overwrite an entry.
 * - Both tables are ovl_map_t (map.h) owned by the engine and guarded by its
 *   lock (engine.h): the lookups below assume the caller holds it.
 * - Learning needs a write, which a worker never makes (engine.h): it queues
 *   what a burst taught (ovl_fdb_learn_queue; a burst from one new MAC takes
 *   one queue slot, not the whole queue), hands the queue to the learner
 *   after the burst through its ring (ovl_fdb_learn_commit), and the learner
 *   thread applies the rings as a writer (ovl_fdb_learn_drain). Until then
 *   later bursts may queue the same MAC again; the learner finds it known
 *   and only refreshes it, so it is learned (counted, reported) once. An
 *   entry whose port or network went away meanwhile is dropped.
 * - Learning never overrides what the control plane or a port owns: a
 *   remote entry does not move, a local entry does not move to a VTEP, and a
 *   port's own MAC is never learned elsewhere (decap.c's design notes hold
 *   the security side of this).
 */
#ifndef OVL_FDB_H
#define OVL_FDB_H

#include "map.h"
#include "transport.h"

/* Where frames to a MAC go. */
typedef struct ovl_nexthop {
    uint8_t kind;          /* OVL_NH_PORT or OVL_NH_TUNNEL */
    uint8_t pad[3];
    int32_t port_id;       /* OVL_NH_PORT: the port, else -1 */
    ovl_addr_t addr;       /* OVL_NH_TUNNEL: the VTEP */
} ovl_nexthop_t;

/* (VNI, MAC) -> where the MAC lives. */
typedef struct ovl_fdb_key {
    uint32_t vni;
    uint8_t mac[6];
    uint8_t pad[2];
} ovl_fdb_key_t;

typedef struct ovl_fdb_val {
    uint8_t kind;          /* OVL_FDB_REMOTE / LOCAL / LEARNED: who wrote it */
    uint8_t pad[7];
    ovl_nexthop_t nh;      /* LOCAL: a port; REMOTE, LEARNED: a VTEP */
    uint64_t updated_ns;   /* when the control plane (or learning) last wrote it */
    uint64_t used_ns;      /* when a frame last went to it (written by workers, relaxed) */
} ovl_fdb_val_t;

/* (VNI, IP) -> MAC, for ARP/ND suppression. */
typedef struct ovl_neigh_key {
    uint32_t vni;
    uint8_t family;
    uint8_t pad[3];
    uint8_t ip[16];
} ovl_neigh_key_t;

typedef struct ovl_neigh_val {
    uint8_t mac[6];
    uint8_t pad[2];
} ovl_neigh_val_t;

static inline void ovl_fdb_key_make(ovl_fdb_key_t *k, uint32_t vni, const uint8_t *mac)
{
    memset(k, 0, sizeof *k);
    k->vni = vni;
    memcpy(k->mac, mac, 6);
}

static inline void ovl_neigh_key_make(ovl_neigh_key_t *k, uint32_t vni, int family, const uint8_t *ip)
{
    memset(k, 0, sizeof *k);
    k->vni = vni;
    k->family = (uint8_t)family;
    memcpy(k->ip, ip, family == 4 ? 4 : 16);
}

/* The FDB entry of mac in vni, or NULL (fdb: e->fdb, under the lock). */
static inline ovl_fdb_val_t *ovl_fdb_lookup(const ovl_map_t *fdb, uint32_t vni, const uint8_t *mac)
{
    ovl_fdb_key_t k;
    ovl_fdb_key_make(&k, vni, mac);
    return ovl_map_get(fdb, &k);
}

/* The neighbour entry of (family, ip) in vni, or NULL (neigh: e->neigh). */
static inline ovl_neigh_val_t *ovl_fdb_neigh_lookup(const ovl_map_t *neigh, uint32_t vni,
                                                    int family, const uint8_t *ip)
{
    ovl_neigh_key_t k;
    ovl_neigh_key_make(&k, vni, family, ip);
    return ovl_map_get(neigh, &k);
}

/* ---- changes made by other rooms (caller holds the writer lock) ---- */

/* Put port_id's own MAC in vni as a local entry. NULL when the table is full. */
ovl_fdb_val_t *ovl_fdb_put_port(ovl_engine_t *e, uint32_t vni, const uint8_t *mac, int32_t port_id);
/* Remove every local entry of port_id (its MAC and those learned behind it). */
void ovl_fdb_forget_port(ovl_engine_t *e, int32_t port_id);
/* Set the neighbour (family, ip) in vni to mac; 0 or -ENOSPC. */
int ovl_fdb_neigh_set(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *ip,
                      const uint8_t *mac);
void ovl_fdb_neigh_remove(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *ip);
/* Remove every FDB and neighbour entry of vni. */
void ovl_fdb_purge_vni(ovl_engine_t *e, uint32_t vni);

/* ---- learning ---- */

typedef struct ovl_learn {
    uint8_t kind;          /* OVL_FDB_LOCAL (behind a port) or OVL_FDB_LEARNED (behind a VTEP) */
    uint32_t vni;
    int32_t port_id;
    uint32_t port_gen;     /* LOCAL: the port's generation (a reused id is another port) */
    uint8_t mac[6];
    ovl_addr_t vtep;
    uint64_t when_ns;      /* when the frame came (the burst's clock) */
} ovl_learn_t;

/* A worker's learned entries on their way to the learner: one producer (the
 * worker), one consumer (the learner), no lock. head and tail run freely;
 * head - tail entries wait. */
#define OVL_LEARN_RING 256       /* a power of two */
typedef struct ovl_learn_ring {
    uint32_t head __attribute__((aligned(64)));   /* written by the worker */
    uint32_t tail __attribute__((aligned(64)));   /* written by the learner */
    ovl_learn_t slot[OVL_LEARN_RING];
} ovl_learn_ring_t;

/* Does a learned entry say the same as (kind, port_id, vtep)? */
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

/* Queue a learned entry in the burst's queue. When the latest entry queued
 * in this burst for the same MAC says the same, it is not queued again (and
 * a MAC that moves and comes back within the burst still ends where it came
 * last). A full queue loses the entry: the next burst from the MAC queues it
 * again. */
void ovl_fdb_learn_queue(ovl_worker_t *w, const ovl_learn_t *l);
/* After the burst: hand the burst's queue to the learner and wake it, without
 * a lock. What does not fit in the ring is lost as above. */
void ovl_fdb_learn_commit(ovl_worker_t *w);
/* The learner's round: apply every worker's ring as a writer, count what was
 * learned and report new remote MACs (LEARNED events). */
void ovl_fdb_learn_drain(ovl_engine_t *e);

#endif /* OVL_FDB_H */
