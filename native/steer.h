/*
 * steer.h — flow steering: which worker owns a flow, and the programs that
 * make the kernel hand each direction of it to that worker.
 *
 * Design notes (engine.h, "Per-flow state", holds the decision).
 * - The owner of a frame's flow is ovl_wire_steer_hash(frame) % workers: a
 *   symmetric hash of the inner flow, read at fixed offsets (wire.c).
 * - The kernel picks the worker twice, and both picks must agree with the
 *   owner: the underlay's SO_REUSEPORT group picks a worker's receive socket
 *   (udp.c attaches a classic BPF program with SO_ATTACH_REUSEPORT_CBPF; it
 *   sees the UDP payload, so it reads the inner frame behind the tunnel
 *   header: at 8 for VXLAN, at 8 + 4 * Opt Len for Geneve, an indirect load),
 *   and a multi-queue TAP picks the queue a pod's frame is read from (port.c
 *   attaches an eBPF socket-filter program with TUNSETSTEERINGEBPF; the
 *   kernel takes its return value, truncated to 16 bits, modulo the queues,
 *   so the program returns the owner itself).
 * - One program text for all three: classic BPF, built here with the frame
 *   at a base offset held in X, and translated instruction by instruction to
 *   eBPF for the TAP (as the kernel's own bpf_convert_filter does: A in R0,
 *   X in R7, the context in R6, the scratch words on the stack). The fake
 *   transport runs the same classic program in the interpreter below, so a
 *   test without root exercises exactly what the kernel runs.
 * - A program that cannot be loaded (no CAP_BPF, a kernel without the bpf
 *   syscall) or attached leaves the engine working: the kernel then spreads
 *   flows by its own hash, and a frame that reaches a worker other than its
 *   owner is counted (steer_misses).
 */
#ifndef OVL_STEER_H
#define OVL_STEER_H

#include "ovl.h"

#include <linux/filter.h>

#define OVL_STEER_PROG_MAX 128   /* classic instructions of a steering program */

/* Where the inner frame starts in what the program sees. */
#define OVL_STEER_AT_TAP 0       /* a TAP's frame: at 0 */
/* OVL_ENCAP_VXLAN (1), OVL_ENCAP_GENEVE (2): a tunnel port's UDP payload */

typedef struct ovl_steer_prog {
    struct sock_filter ins[OVL_STEER_PROG_MAX];
    uint16_t len;
} ovl_steer_prog_t;

/* Build the program that returns ovl_wire_steer_hash(inner frame) % workers
 * for frames at `where` (OVL_STEER_AT_TAP or an OVL_ENCAP_*). 0 or -EINVAL. */
int ovl_steer_build(ovl_steer_prog_t *p, int where, uint32_t workers);

/* Run a classic program over pkt[0..len) as the kernel does (a load past the
 * end returns 0). Supports the instructions ovl_steer_build emits and the
 * usual rest of classic BPF. */
uint32_t ovl_steer_run(const ovl_steer_prog_t *p, const uint8_t *pkt, size_t len);

/* Translate p to eBPF and load it as a socket-filter program; the program's
 * fd, or -errno (-EPERM without CAP_BPF). log (may be NULL) receives the
 * verifier's complaint. */
int ovl_steer_load(const ovl_steer_prog_t *p, char *log, size_t log_len);

#endif
