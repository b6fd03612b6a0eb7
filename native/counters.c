/*
 * counters.c — names, help texts and kinds of the counters in counters.def,
 * and the readers that sum the workers' counters, and the learner's node
 * counters (see counters.h for why every counter is per worker).
 */
#include "counters.h"

#include <errno.h>

static const struct { const char *name; const char *help; int kind; } counters[] = {
#define OVL_COUNTER(id, name, kind, help) { name, help, kind },
#define OVL_OBJ_COUNTER(id, name, help)
#include "counters.def"
#undef OVL_COUNTER
#undef OVL_OBJ_COUNTER
};

static const struct { const char *name; } obj_counters[] = {
#define OVL_COUNTER(id, name, kind, help)
#define OVL_OBJ_COUNTER(id, name, help) { name },
#include "counters.def"
#undef OVL_COUNTER
#undef OVL_OBJ_COUNTER
};

size_t ovl_counter_count(void) { return OVL_C__COUNT; }
const char *ovl_counter_name(size_t id) { return id < OVL_C__COUNT ? counters[id].name : NULL; }
const char *ovl_counter_help(size_t id) { return id < OVL_C__COUNT ? counters[id].help : NULL; }
int ovl_counter_is_drop(size_t id) { return id < OVL_C__COUNT && counters[id].kind == OVL_DROP; }
size_t ovl_obj_counter_count(void) { return OVL_O__COUNT; }
const char *ovl_obj_counter_name(size_t id) { return id < OVL_O__COUNT ? obj_counters[id].name : NULL; }

/* ---- readers ---- */

/* out[j] = the sum over workers of row[j], row = the worker's counters at off. */
static int sum_rows(ovl_engine_t *e, size_t off, int node, uint64_t *out, size_t n)
{
    size_t count = node ? OVL_C__COUNT : OVL_O__COUNT;
    size_t m = n < count ? n : count;
    memset(out, 0, m * sizeof *out);
    for (uint32_t i = 0; i <= e->n_workers; i++) {
        const uint64_t *row;
        if (i == e->n_workers) /* the learner: node counters only */
            row = node ? e->learner.c : NULL;
        else
            row = node ? e->workers[i]->c : e->workers[i]->obj_c + off;
        for (size_t j = 0; row && j < m; j++)
            out[j] += __atomic_load_n(&row[j], __ATOMIC_RELAXED);
    }
    return (int)m;
}

int ovl_counters_engine(ovl_engine_t *e, uint64_t *out, size_t n)
{
    return sum_rows(e, 0, 1, out, n);
}

int ovl_counters_worker(ovl_engine_t *e, uint32_t worker, uint64_t *out, size_t n)
{
    if (worker >= e->n_workers)
        return -ENOENT;
    size_t m = n < OVL_C__COUNT ? n : OVL_C__COUNT;
    for (size_t j = 0; j < m; j++)
        out[j] = __atomic_load_n(&e->workers[worker]->c[j], __ATOMIC_RELAXED);
    return (int)m;
}

int ovl_counters_network(ovl_engine_t *e, uint32_t vni, uint64_t *out, size_t n)
{
    OVL_RDLOCK(e);
    ovl_network_t *net = ovl_network_lookup(e, vni);
    int rc = net ? sum_rows(e, (size_t)net->idx * OVL_O__COUNT, 0, out, n) : -ENOENT;
    OVL_UNLOCK(e);
    return rc;
}

int ovl_counters_port(ovl_engine_t *e, int port_id, uint64_t *out, size_t n)
{
    OVL_RDLOCK(e);
    ovl_port_t *p = ovl_port_get(e, port_id);
    size_t row = (size_t)e->cfg.max_networks + (size_t)port_id;
    int rc = p ? sum_rows(e, row * OVL_O__COUNT, 0, out, n) : -ENOENT;
    OVL_UNLOCK(e);
    return rc;
}

/* ---- resets (writer lock held: no worker is inside a burst) ---- */

static void reset_row(ovl_engine_t *e, size_t row)
{
    for (uint32_t i = 0; i < e->n_workers; i++) {
        uint64_t *c = e->workers[i]->obj_c + row * OVL_O__COUNT;
        for (size_t j = 0; j < OVL_O__COUNT; j++)
            __atomic_store_n(&c[j], 0, __ATOMIC_RELAXED);
    }
}

void ovl_counters_reset_network(ovl_engine_t *e, uint32_t net_idx)
{
    reset_row(e, net_idx);
}

void ovl_counters_reset_port(ovl_engine_t *e, uint32_t port_id)
{
    reset_row(e, (size_t)e->cfg.max_networks + port_id);
}
