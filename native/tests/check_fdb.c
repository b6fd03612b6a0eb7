/*
 * check_fdb.c — the FDB map under AddressSanitizer and UBSan.
 *
 * Random puts, gets and deletes (fixed seed) against a plain reference array:
 * after every operation the map must agree with the reference, and after a
 * full sweep every key must still be reachable (backward-shift deletion keeps
 * probe runs intact). Also fills a map to its capacity and checks that one
 * more key is refused, not silently dropped.
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

static int fail(const char *what, unsigned i)
{
    fprintf(stderr, "check_fdb: %s (key %u)\n", what, i);
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
    ovl_map_clear(&small);
    if (small.count != 0 || ovl_map_get(&small, &extra))
        return fail("clear", 0);
    ovl_map_free(&small);
    puts("check_fdb: ok");
    return 0;
}
