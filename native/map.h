/*
 * map.h — the generic table of the data plane: a fixed-capacity
 * open-addressing hash map with fixed-size keys and values.
 *
 * Design notes. Every table is allocated once, at engine creation, with a
 * capacity from the config: the hot path never allocates, and a full table
 * is a clear -ENOSPC to the control plane rather than a slow rehash under a
 * writer lock. Linear probing with backward-shift deletion keeps lookups to a
 * few cache lines and leaves no tombstones behind. The map is not locked: its
 * owner guards it (engine.h says how). What the map stores means nothing to
 * it: the FDB, neighbour and membership keys live in fdb.h and network.h.
 */
#ifndef OVL_MAP_H
#define OVL_MAP_H

#include "ovl.h"

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

/* Allocate room for capacity keys (load factor <= 1/2). 0, -EINVAL or -ENOMEM. */
int ovl_map_init(ovl_map_t *m, uint32_t capacity, size_t key_size, size_t val_size);
void ovl_map_free(ovl_map_t *m);
/* The value stored under key, or NULL. */
void *ovl_map_get(const ovl_map_t *m, const void *key);
/* The value slot for key, inserted zeroed when absent (*created = 1).
 * NULL when the key is absent and the map holds its capacity already. */
void *ovl_map_put(ovl_map_t *m, const void *key, int *created);
/* Remove key; 0, or -ENOENT. */
int ovl_map_del(ovl_map_t *m, const void *key);
/* Iterate: slots 0..mask; a slot is in use when ovl_map_key() is not NULL.
 * Read-only: a deletion moves later keys backwards (use ovl_map_sweep). */
void *ovl_map_key(const ovl_map_t *m, uint32_t slot);
void *ovl_map_val(const ovl_map_t *m, uint32_t slot);

/* Remove every entry for which doomed(key, val, ctx) is true, visiting each
 * entry once; returns how many went. The walk behind purging a network,
 * forgetting a port's MACs and (later) expiring learned entries. */
typedef int (*ovl_map_doomed_fn)(const void *key, const void *val, void *ctx);
uint32_t ovl_map_sweep(ovl_map_t *m, ovl_map_doomed_fn doomed, void *ctx);

uint64_t ovl_hash_bytes(const void *p, size_t n);

#endif /* OVL_MAP_H */
