/*
 * csum.h — the one Internet checksum (RFC 1071) of the data plane.
 *
 * Design notes. Sums are kept in native byte order: the one's complement sum
 * does not depend on byte order (RFC 1071 section 2(B)), so words are added
 * as the machine loads them and the folded result is stored back the same
 * way, which puts it in network order on the wire. Callers that want the
 * value in host order (ovl_csum, for the ABI) swap once at the end. wire.c
 * (ARP/ND answers), offload.c (segmentation, coalescing) and the engine
 * (completing a pod's checksum) all use these functions; there is no second
 * implementation to drift.
 */
#ifndef OVL_CSUM_H
#define OVL_CSUM_H

#include "ovl.h"

/* Add buf[0..len) to a running native-order sum (start at 0); len may be odd
 * only for the last piece. */
uint64_t ovl_csum_add(const uint8_t *buf, size_t len, uint64_t sum);
/* Fold a running sum to 16 bits, not complemented, in native order. */
uint16_t ovl_csum_fold(uint64_t sum);
/* The IPv4/IPv6 pseudo-header sum (native order) of f's addresses for an L4
 * segment of l4_len bytes of protocol proto. */
uint64_t ovl_csum_pseudo(const ovl_frame_t *f, uint8_t proto, uint32_t l4_len);
/* Complete the checksum a NEEDS_CSUM frame left open: the field at
 * csum_start + csum_offset holds the pseudo-header sum; the result replaces
 * it (a UDP zero is sent as all ones). 0 or -1 (out of range). */
int ovl_csum_complete(uint8_t *frame, size_t len, uint16_t csum_start, uint16_t csum_offset);

#endif
