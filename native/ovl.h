/*
 * ovl.h — what every C file of the data plane includes: the standard headers,
 * the product ABI (overlay.h), the tools ABI (overlay_tools.h) and the counter
 * ids from counters.def.
 */
#ifndef OVL_H
#define OVL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "overlay.h"
#include "overlay_tools.h"

#define OVL_STAT 0
#define OVL_DROP 1

/* Counter ids: OVL_C_<ID>, in counters.def order. */
enum ovl_counter_id {
#define OVL_COUNTER(id, name, kind, help) OVL_C_##id,
#define OVL_OBJ_COUNTER(id, name, help)
#include "counters.def"
#undef OVL_COUNTER
#undef OVL_OBJ_COUNTER
    OVL_C__COUNT
};

/* Per-network and per-port counter ids: OVL_O_<ID>. */
enum ovl_obj_counter_id {
#define OVL_COUNTER(id, name, kind, help)
#define OVL_OBJ_COUNTER(id, name, help) OVL_O_##id,
#include "counters.def"
#undef OVL_COUNTER
#undef OVL_OBJ_COUNTER
    OVL_O__COUNT
};

/* Stage verdicts (encap.c, decap.c, deliver.c): every stage of the packet
 * path returns OVL_PASS (go on), a drop reason (an OVL_C_* id of kind
 * OVL_DROP, always > 0: id 0 is tap_rx_frames, a statistic) or OVL_DONE (the
 * frame was consumed: answered, delivered or queued, nothing more to do). */
#define OVL_PASS 0
#define OVL_DONE (-1)

#define OVL_LIKELY(x) __builtin_expect(!!(x), 1)
#define OVL_UNLIKELY(x) __builtin_expect(!!(x), 0)

#endif /* OVL_H */
