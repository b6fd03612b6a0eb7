/*
 * check_map.c — the hash map (map.c) under AddressSanitizer and UBSan, with
 * the FDB's keys and values.
 *
 * Random puts, gets, deletes and sweeps (fixed seed) against a plain
 * reference array: after every operation the map must agree with the
 * reference, and after a full check every key must still be reachable
 * (backward-shift deletion keeps probe runs intact, also when a sweep
 * deletes while it walks). Also fills a map to its capacity and checks that
 * one more key is refused, not silently dropped.
 */
#include "../fdb.h"

#include <stdio.h>
#include <stdlib.h>

#define KEYS 4096
#define OPS 400000

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* A sweep's predicate: the key's index (mac[2..3], see main) is mod 7. */
typedef struct sweep_ctx {
    unsigned mod;
    unsigned visits;
} sweep_ctx_t;

static int doomed(const void *key, const void *val, void *ctx)
{
    (void)val;
    sweep_ctx_t *c = ctx;
    c->visits++;
    const ovl_fdb_key_t *k = key;
    unsigned idx = (unsigned)k->mac[2] << 8 | k->mac[3];
    return idx % 7 == c->mod;
}

static int everything(const void *key, const void *val, void *ctx)
{
    (void)key, (void)val, (void)ctx;
    return 1;
}

static int fail(const char *what, unsigned i)
{
    fprintf(stderr, "check_map: %s (key %u)\n", what, i);
    return 1;
}

int main(void)
{
    static ovl_fdb_key_t keys[KEYS];
    static int present[KEYS];
    static uint64_t value[KEYS];
    for (unsigned i = 0; i < KEYS; i++) {
        uint8_t mac[6] = { 2, 0, (uint8_t)(i >> 8), (uint8_t)i, (uint8_t)(i * 7), 1 };
        ovl_fdb_key_make(&keys[i], (uint32_t)(i % 5) * 100, mac);
    }
    ovl_map_t m;
    /* Small capacity relative to the key space: long probe runs, many collisions. */
    if (ovl_map_init(&m, 2048, sizeof(ovl_fdb_key_t), sizeof(ovl_fdb_val_t)) != 0)
        return fail("init", 0);
    unsigned count = 0;
    for (unsigned op = 0; op < OPS; op++) {
        unsigned i = (unsigned)(next() % KEYS);
        if (next() % 4096 == 0) {
            /* Sweep: remove every key whose index is r mod 7, checking that
             * each present key is visited exactly once. */
            sweep_ctx_t ctx = { .mod = (unsigned)(next() % 7) };
            uint32_t gone = ovl_map_sweep(&m, doomed, &ctx);
            unsigned expect = 0;
            for (unsigned k = 0; k < KEYS; k++) {
                if (present[k] && k % 7 == ctx.mod) {
                    present[k] = 0;
                    expect++;
                }
            }
            if (gone != expect || ctx.visits != count)
                return fail("sweep removed or visited the wrong keys", gone);
            count -= expect;
            continue;
        }
        switch (next() % 3) {
        case 0: {
            int created = -1;
            ovl_fdb_val_t *v = ovl_map_put(&m, &keys[i], &created);
            if (!v) {
                if (present[i] || count < 2048)
                    return fail("put refused below capacity", i);
                break;
            }
            if (created != !present[i])
                return fail("created flag wrong", i);
            if (created)
                count++;
            present[i] = 1;
            value[i] = next();
            v->updated_ns = value[i];
            break;
        }
        case 1: {
            int rc = ovl_map_del(&m, &keys[i]);
            if ((rc == 0) != present[i])
                return fail("delete disagrees", i);
            if (rc == 0)
                count--;
            present[i] = 0;
            break;
        }
        default: {
            ovl_fdb_val_t *v = ovl_map_get(&m, &keys[i]);
            if ((v != NULL) != present[i])
                return fail("get disagrees", i);
            if (v && v->updated_ns != value[i])
                return fail("value changed", i);
        }
        }
        if (m.count != count)
            return fail("count drifted", i);
        if (op % 50000 == 0) {
            for (unsigned k = 0; k < KEYS; k++) {
                ovl_fdb_val_t *v = ovl_map_get(&m, &keys[k]);
                if ((v != NULL) != present[k] || (v && v->updated_ns != value[k]))
                    return fail("sweep disagrees", k);
            }
        }
    }
    ovl_map_free(&m);

    ovl_map_t small;
    if (ovl_map_init(&small, 3, sizeof(uint32_t), sizeof(uint32_t)) != 0)
        return fail("init small", 0);
    for (uint32_t k = 0; k < 3; k++)
        if (!ovl_map_put(&small, &k, NULL))
            return fail("put within capacity", k);
    uint32_t extra = 3;
    if (ovl_map_put(&small, &extra, NULL) != NULL)
        return fail("put past capacity accepted", 3);
    if (ovl_map_sweep(&small, everything, NULL) != 3 || small.count != 0 ||
        ovl_map_get(&small, &extra))
        return fail("sweep of everything", 0);
    ovl_map_free(&small);
    puts("check_map: ok");
    return 0;
}
