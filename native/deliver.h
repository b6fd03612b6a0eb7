/*
 * deliver.h — the one way into a pod: every frame for a local port.
 *
 * Flooded copies and locally switched frames (encap.c), ARP and ND answers
 * (encap.c), decapsulated broadcasts and unicasts and the trains coalesced
 * from them (decap.c) all pass through ovl_deliver. It owns what happens at
 * a port's door: the ingress-policy stage (connection tracking and the
 * port's compiled rule table, policy.h), the TAP write, coalescing, and the port's tx counters and delivery drops.
 */
#ifndef OVL_DELIVER_H
#define OVL_DELIVER_H

#include "engine.h"

/* Deliver frame[0..len) to port q of network n. vh: the frame's
 * virtio-net header (a super-frame from a pod), or NULL. coalesce: the
 * parsed frame when it may join a coalesced train to q (a decapsulated
 * unicast), else NULL. Counts the delivery (q's tx_packets/bytes, the
 * node's tap_tx_*) or the drop against q. Any delivery that does not join
 * the pending train writes the train first, so a port sees frames in the
 * order they came. */
void ovl_deliver(ovl_worker_t *w, ovl_port_t *q, ovl_network_t *n, const uint8_t *frame,
                 size_t len, const ovl_vnet_hdr_t *vh, const ovl_frame_t *coalesce);

/* Write the pending coalesced train, if any. The decap path calls it before
 * the receive buffers the train points into are reused. */
void ovl_deliver_flush(ovl_worker_t *w);

#endif
