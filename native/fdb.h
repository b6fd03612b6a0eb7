/*
 * fdb.h — the forwarding tables: a fixed-capacity open-addressing hash map,
 * and the keys and values the engine keeps in it.
 *
 * Design notes. Every table is allocated once, at engine creation, with a
 * capacity from the config: the hot path never allocates, and a full table
 * is a clear -ENOSPC to the control plane rather than a slow rehash under a
 * writer lock. Linear probing with backward-shift deletion keeps lookups to a
 * few cache lines and leaves no tombstones behind. The map is not locked: the
 * engine guards all tables with one reader-writer lock (readers: workers,
 * once per batch; writers: the control plane).
 */
#ifndef OVL_FDB_H
#define OVL_FDB_H

#include "ovl.h"

#include <netinet/in.h>
#include <sys/socket.h>

typedef struct ovl_map {
    uint32_t mask;        /* slots - 1; slots is a power of two */
    uint32_t count;       /* keys present */
    uint32_t limit;       /* keys allowed (the capacity asked for) */
    uint16_t key_size;
    uint16_t val_size;
    uint32_t slot_size;   /* 8-byte header (hash, used) + key + value, 8-aligned */
    uint32_t val_off;
    uint8_t *slots;
} ovl_map_t;

/* Allocate room for capacity keys (load factor <= 1/2). 0 or -ENOMEM. */
int ovl_map_init(ovl_map_t *m, uint32_t capacity, size_t key_size, size_t val_size);
void ovl_map_free(ovl_map_t *m);
/* The value stored under key, or NULL. */
void *ovl_map_get(const ovl_map_t *m, const void *key);
/* The value slot for key, inserted zeroed when absent (*created = 1).
 * NULL when the key is absent and the map holds its capacity already. */
void *ovl_map_put(ovl_map_t *m, const void *key, int *created);
/* Remove key; 0, or -ENOENT. */
int ovl_map_del(ovl_map_t *m, const void *key);
/* Iterate: slots 0..mask; a slot is in use when ovl_map_key() is not NULL. */
void *ovl_map_key(const ovl_map_t *m, uint32_t slot);
void *ovl_map_val(const ovl_map_t *m, uint32_t slot);
void ovl_map_clear(ovl_map_t *m);

uint64_t ovl_hash_bytes(const void *p, size_t n);

typedef union ovl_sockaddr {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
} ovl_sockaddr_t;

/* An underlay address, with its socket address prebuilt for sendmmsg. */
typedef struct ovl_addr {
    uint8_t family;        /* 4 or 6 */
    uint8_t pad;
    uint16_t port;         /* host order */
    uint8_t addr[16];
    socklen_t salen;
    ovl_sockaddr_t sa;
} ovl_addr_t;

/* (VNI, MAC) -> where the MAC lives. */
typedef struct ovl_fdb_key {
    uint32_t vni;
    uint8_t mac[6];
    uint8_t pad[2];
} ovl_fdb_key_t;

typedef struct ovl_fdb_val {
    uint8_t kind;          /* OVL_FDB_REMOTE / LOCAL / LEARNED */
    uint8_t pad[3];
    int32_t port_id;       /* LOCAL: the port */
    ovl_addr_t vtep;       /* REMOTE, LEARNED: the VTEP */
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

/* (VNI, VTEP address) -> member: the decap source check. */
typedef struct ovl_member_key {
    uint32_t vni;
    uint8_t family;
    uint8_t pad[3];
    uint8_t addr[16];
} ovl_member_key_t;

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

static inline void ovl_member_key_make(ovl_member_key_t *k, uint32_t vni, int family, const uint8_t *addr)
{
    memset(k, 0, sizeof *k);
    k->vni = vni;
    k->family = (uint8_t)family;
    memcpy(k->addr, addr, family == 4 ? 4 : 16);
}

#endif /* OVL_FDB_H */
