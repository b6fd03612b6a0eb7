/*
 * map.c — fixed-capacity open-addressing hash map (see map.h for the why).
 *
 * Slot layout: [uint32 hash][uint32 used][key][value], 8-byte aligned. The
 * stored hash gives each key's home slot during backward-shift deletion
 * without hashing again.
 */
#include "map.h"

#include <errno.h>
#include <stdlib.h>

#define SLOT_HDR 8u

uint64_t ovl_hash_bytes(const void *p, size_t n)
{
    /* FNV-1a 64 then a murmur3 64-bit finaliser: keys are short (<= 24 bytes). */
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static inline uint8_t *slot_at(const ovl_map_t *m, uint32_t i)
{
    return m->slots + (size_t)i * m->slot_size;
}

static inline uint32_t *slot_hash(uint8_t *s) { return (uint32_t *)s; }
static inline uint32_t *slot_used(uint8_t *s) { return (uint32_t *)(s + 4); }

int ovl_map_init(ovl_map_t *m, uint32_t capacity, size_t key_size, size_t val_size)
{
    memset(m, 0, sizeof *m);
    if (capacity == 0 || capacity > (1u << 28) || key_size == 0 || key_size > 64 || val_size > 256)
        return -EINVAL;
    uint32_t slots = 16;
    while (slots < capacity * 2u)
        slots <<= 1;
    m->mask = slots - 1;
    m->limit = capacity;
    m->key_size = (uint16_t)key_size;
    m->val_size = (uint16_t)val_size;
    m->val_off = (uint32_t)(SLOT_HDR + ((key_size + 7u) & ~7u));
    m->slot_size = (uint32_t)(m->val_off + ((val_size + 7u) & ~7u));
    m->slots = calloc(slots, m->slot_size);
    return m->slots ? 0 : -ENOMEM;
}

void ovl_map_free(ovl_map_t *m)
{
    free(m->slots);
    memset(m, 0, sizeof *m);
}

static int find(const ovl_map_t *m, const void *key, uint32_t h, uint32_t *where)
{
    uint32_t i = h & m->mask;
    for (;;) {
        uint8_t *s = slot_at(m, i);
        if (!*slot_used(s)) {
            *where = i;
            return 0;
        }
        if (*slot_hash(s) == h && memcmp(s + SLOT_HDR, key, m->key_size) == 0) {
            *where = i;
            return 1;
        }
        i = (i + 1) & m->mask;
    }
}

void *ovl_map_get(const ovl_map_t *m, const void *key)
{
    uint32_t h = (uint32_t)ovl_hash_bytes(key, m->key_size), i;
    if (!find(m, key, h, &i))
        return NULL;
    return slot_at(m, i) + m->val_off;
}

void *ovl_map_put(ovl_map_t *m, const void *key, int *created)
{
    uint32_t h = (uint32_t)ovl_hash_bytes(key, m->key_size), i;
    if (find(m, key, h, &i)) {
        if (created)
            *created = 0;
        return slot_at(m, i) + m->val_off;
    }
    if (m->count >= m->limit)
        return NULL;
    uint8_t *s = slot_at(m, i);
    *slot_hash(s) = h;
    *slot_used(s) = 1;
    memcpy(s + SLOT_HDR, key, m->key_size);
    memset(s + m->val_off, 0, m->slot_size - m->val_off);
    m->count++;
    if (created)
        *created = 1;
    return s + m->val_off;
}

/* Empty slot i and pull later members of its probe run into the hole, so
 * that every key stays reachable from its home slot. Returns the slot left
 * empty at the end (i itself when nothing moved). */
static uint32_t remove_at(ovl_map_t *m, uint32_t i)
{
    uint32_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        uint8_t *sj = slot_at(m, j);
        if (!*slot_used(sj))
            break;
        uint32_t home = *slot_hash(sj) & m->mask;
        /* Move j into the hole at i unless j's home lies cyclically in (i, j]. */
        int home_between = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!home_between) {
            memcpy(slot_at(m, i), sj, m->slot_size);
            i = j;
        }
    }
    memset(slot_at(m, i), 0, m->slot_size);
    m->count--;
    return i;
}

int ovl_map_del(ovl_map_t *m, const void *key)
{
    uint32_t h = (uint32_t)ovl_hash_bytes(key, m->key_size), i;
    if (!find(m, key, h, &i))
        return -ENOENT;
    remove_at(m, i);
    return 0;
}

void *ovl_map_key(const ovl_map_t *m, uint32_t slot)
{
    if (slot > m->mask)
        return NULL;
    uint8_t *s = slot_at(m, slot);
    return *slot_used(s) ? s + SLOT_HDR : NULL;
}

void *ovl_map_val(const ovl_map_t *m, uint32_t slot)
{
    return slot_at(m, slot) + m->val_off;
}

uint32_t ovl_map_sweep(ovl_map_t *m, ovl_map_doomed_fn doomed, void *ctx)
{
    /* Deleting at s may pull a later key into s (look at s again), and a key
     * from past the end of the table, behind its wrap, into a slot already
     * passed. Starting the walk at an empty slot makes the second impossible:
     * no probe run crosses an empty slot, so none wraps past the start. */
    uint32_t start = 0, removed = 0;
    while (start <= m->mask && *slot_used(slot_at(m, start)))
        start++;
    if (start > m->mask)
        start = 0; /* full table: cannot happen (load factor <= 1/2) */
    for (uint32_t n = 0, s = start; n <= m->mask;) {
        uint8_t *p = slot_at(m, s);
        if (*slot_used(p) && doomed(p + SLOT_HDR, p + m->val_off, ctx)) {
            remove_at(m, s);
            removed++;
            continue; /* slot s may hold a key pulled back from later in its run */
        }
        s = (s + 1) & m->mask;
        n++;
    }
    return removed;
}
