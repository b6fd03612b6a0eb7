/* counters.c — names, help texts and kinds of the counters in counters.def. */
#include "ovl.h"

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
