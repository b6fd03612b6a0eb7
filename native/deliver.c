/*
 * deliver.c — every frame for a local port (see deliver.h).
 *
 * Design notes.
 * - Stages, as in encap.c and decap.c: ingress policy (a verdict,
 *   policy.h), then the write: joined to the pending coalesced train, started
 *   as a new train, or written alone. A drop is counted here, against the
 *   receiving port and its network: the sender's side already counted what
 *   it sent.
 * - Coalescing (GRO): consecutive TCP segments of one flow to one port with
 *   a virtio-net header (and UDP datagrams where the TAP takes USO) become
 *   one super-frame, written once with writev; offload.c checks each
 *   segment (checksum, lengths) before it may join. The train points into
 *   the receive buffers, so it is written before they are reused
 *   (ovl_deliver_flush, at the end of each receive burst).
 * - A super-frame (vh with GSO) cannot go to a port without a virtio-net
 *   header: gso_to_plain_port. A write to a TAP whose link is down fails with
 *   EIO: tap_link_down; any other short write is tap_write_failed.
 */
#include "deliver.h"
#include "counters.h"
#include "policy.h"

#include <errno.h>
#include <sys/uio.h>
#include <unistd.h>

/* The ingress-policy stage: may this frame enter port q? OVL_PASS, or a drop
 * reason. The port's ingress table and the worker's sessions answer
 * (policy.h); f is the frame's parse when the caller has it. A port without
 * policy costs one test. */
static inline int ingress_policy(ovl_worker_t *w, ovl_port_t *q, const uint8_t *frame,
                                 size_t len, const ovl_frame_t *f)
{
    if (OVL_LIKELY(!ovl_policy_on(q)))
        return OVL_PASS;
    return ovl_policy_check(w, q, OVL_POLICY_INGRESS, frame, len, f);
}

static void count_tx(ovl_worker_t *w, const ovl_port_t *q, const ovl_network_t *n,
                     uint64_t frames, uint64_t segs, size_t bytes)
{
    ovl_count(w, OVL_C_TAP_TX_FRAMES, frames);
    ovl_count(w, OVL_C_TAP_TX_BYTES, bytes);
    ovl_port_count(w, q, n, OVL_O_TX_PACKETS, segs);
    ovl_port_count(w, q, n, OVL_O_TX_BYTES, bytes);
}

static int write_failed(ssize_t r)
{
    return r < 0 && errno == EIO ? OVL_C_TAP_LINK_DOWN : OVL_C_TAP_WRITE_FAILED;
}

void ovl_deliver_flush(ovl_worker_t *w)
{
    ovl_gro_t *g = &w->gro;
    if (g->port_id < 0)
        return;
    ovl_engine_t *e = w->e;
    ovl_port_t *q = &e->ports[g->port_id];
    ovl_network_t *n = &e->nets[q->net_idx];
    uint32_t segs = g->n_seg;
    size_t bytes;
    int k = ovl_gro_finish(g, &bytes);
    ssize_t r = writev(ovl_port_wfd(w, q), g->iov, k);
    if (OVL_UNLIKELY(r != (ssize_t)bytes)) {
        ovl_drop_n(w, q, n, write_failed(r), segs);
        return;
    }
    if (segs > 1) {
        ovl_count(w, OVL_C_GRO_FRAMES, 1);
        ovl_count(w, OVL_C_GRO_SEGMENTS, segs);
    }
    count_tx(w, q, n, 1, segs, bytes - OVL_VNET_HLEN);
}

/* Join the pending train or start one; 1 when the frame is taken. */
static int coalesce(ovl_worker_t *w, ovl_port_t *q, const uint8_t *frame, size_t len,
                    const ovl_frame_t *f)
{
    if (!q->vnet)
        return 0;
    int uso = (q->offloads & OVL_OFF_TAP_USO) != 0;
    if (f->ip_proto != 6 && !(uso && f->ip_proto == 17))
        return 0;
    int32_t qid = (int32_t)q->id;
    if (w->gro.port_id >= 0 && ovl_gro_append(&w->gro, qid, frame, len, f))
        return 1;
    ovl_deliver_flush(w);
    if (!ovl_gro_eligible(frame, len, f, uso))
        return 0;
    ovl_gro_start(&w->gro, qid, frame, len, f);
    return 1;
}

void ovl_deliver(ovl_worker_t *w, ovl_port_t *q, ovl_network_t *n, const uint8_t *frame,
                 size_t len, const ovl_vnet_hdr_t *vh, const ovl_frame_t *f)
{
    int v = ingress_policy(w, q, frame, len, f);
    if (v != OVL_PASS) {
        ovl_drop(w, q, n, v);
        return;
    }
    if (f && coalesce(w, q, frame, len, f))
        return;
    ovl_deliver_flush(w);
    ssize_t r;
    if (q->vnet) {
        static const ovl_vnet_hdr_t blank;
        struct iovec iov[2] = {
            { .iov_base = (void *)(vh ? vh : &blank), .iov_len = OVL_VNET_HLEN },
            { .iov_base = (void *)frame, .iov_len = len },
        };
        r = writev(ovl_port_wfd(w, q), iov, 2);
        if (r > 0)
            r -= OVL_VNET_HLEN;
    } else {
        if (vh && vh->gso_type != OVL_VNET_GSO_NONE) {
            ovl_drop(w, q, n, OVL_C_GSO_TO_PLAIN_PORT);
            return;
        }
        r = write(ovl_port_wfd(w, q), frame, len);
    }
    if (OVL_LIKELY(r == (ssize_t)len)) {
        count_tx(w, q, n, 1, 1, len);
        return;
    }
    ovl_drop(w, q, n, write_failed(r));
}
