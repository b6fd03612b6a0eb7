/*
 * offload.h — segmentation and coalescing: the offloads that make a
 * userspace VTEP move batches instead of packets.
 *
 * Design notes. With IFF_VNET_HDR and TUNSETOFFLOAD, a pod's TCP stack hands
 * the TAP 64 KB super-frames (TSO; USO for UDP) prefixed by a virtio-net
 * header, and accepts them back the same way. On the way out we cut a
 * super-frame into MSS-sized segments, each with its own patched headers and
 * checksum, but without copying the payload: a segment is two iovecs (tunnel
 * + inner headers from a scratch area, then a slice of the original frame),
 * and runs of equal-sized segments to one VTEP leave in one UDP GSO send.
 * On the way in, UDP GRO hands us many datagrams per receive; consecutive
 * in-order TCP segments of one flow to one port are coalesced back into a
 * single super-frame (writev of header + payload slices) with a virtio-net
 * GSO header, so the pod's stack sees one packet where the wire saw forty;
 * runs of equal-sized UDP datagrams of one flow become one USO super-frame
 * where the TAP takes USO (one write instead of one per datagram).
 * Each coalesced segment's TCP checksum is verified first: a corrupt segment
 * is never laundered into a trusted super-frame. Checksums come from csum.h,
 * the one implementation.
 */
#ifndef OVL_OFFLOAD_H
#define OVL_OFFLOAD_H

#include "ovl.h"

#include <sys/uio.h>

#define OVL_VNET_HLEN 10
#define OVL_GSO_MAX_SEGS 64
#define OVL_SEG_HDR_MAX 192       /* tunnel header room + inner L2-L4 headers */
#define OVL_SEG_TUN_ROOM 64       /* room for the tunnel header before inner headers */

/* virtio-net header as a TAP reads and writes it (host byte order). */
typedef struct ovl_vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
} ovl_vnet_hdr_t;

#define OVL_VNET_F_NEEDS_CSUM 1
#define OVL_VNET_F_DATA_VALID 2
#define OVL_VNET_GSO_NONE 0
#define OVL_VNET_GSO_TCPV4 1
#define OVL_VNET_GSO_TCPV6 4
#define OVL_VNET_GSO_UDP_L4 5
#define OVL_VNET_GSO_ECN 0x80

/* One output segment: inner headers (with OVL_SEG_TUN_ROOM writable bytes
 * before them for the tunnel header) and a payload slice. */
typedef struct ovl_seg {
    uint8_t *hdr;
    uint16_t hdr_len;
    const uint8_t *pay;
    uint32_t pay_len;
} ovl_seg_t;

/* Cut the GSO super-frame (parsed as f, virtio header vh) into segments.
 * Segment i's headers go to hdr_area + i * OVL_SEG_HDR_MAX + OVL_SEG_TUN_ROOM.
 * Returns the number of segments (<= max), or -(drop reason id). */
int ovl_gso_segment(const uint8_t *frame, size_t len, const ovl_vnet_hdr_t *vh,
                    const ovl_frame_t *f, uint8_t *hdr_area, ovl_seg_t *segs, size_t max);

/* ---- receive coalescing ---- */
typedef struct ovl_gro {
    int32_t port_id;              /* -1: nothing pending */
    uint8_t ipv6;
    uint8_t udp;                  /* a UDP train (USO), else TCP */
    uint8_t closed;               /* a short or PSH segment ended the train */
    uint16_t l3_off, l4_off, hdr_len, mss;
    uint32_t next_seq;
    uint32_t pay_total;
    uint32_t n_seg;
    uint8_t hdr[OVL_VNET_HLEN + 128];   /* virtio header + the first segment's headers */
    uint8_t key[128];                   /* first headers with mutable fields zeroed */
    struct iovec iov[OVL_GSO_MAX_SEGS + 1];
} ovl_gro_t;

/* Can frame (parsed f) start a coalesced train? TCP always; UDP only with
 * allow_udp (the TAP takes USO). Requires a verified L4 checksum. */
int ovl_gro_eligible(const uint8_t *frame, size_t len, const ovl_frame_t *f, int allow_udp);
/* Start a train for port_id with frame (eligible). */
void ovl_gro_start(ovl_gro_t *g, int32_t port_id, const uint8_t *frame, size_t len,
                   const ovl_frame_t *f);
/* Append frame to the train if it continues it; 1 appended, 0 not. */
int ovl_gro_append(ovl_gro_t *g, int32_t port_id, const uint8_t *frame, size_t len,
                   const ovl_frame_t *f);
/* Finish the train: fill the virtio header and patch the first headers.
 * Returns the iovec count for writev (g->iov), total bytes in *bytes. */
int ovl_gro_finish(ovl_gro_t *g, size_t *bytes);

#endif
