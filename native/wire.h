/*
 * wire.h — what wire.c offers the engine beyond the ABI in overlay.h.
 */
#ifndef OVL_WIRE_H
#define OVL_WIRE_H

#include "ovl.h"

/* The source-port slot of a flow hash: the slot part of ovl_wire_source_port,
 * so that the transport picks the socket bound to exactly the port that
 * function names (slots >= 1). */
static inline uint32_t ovl_wire_source_slot(uint32_t hash, uint32_t slots)
{
    return hash % slots;
}

#endif
