/*
 * encap.c — pod -> underlay: read a burst of frames from one port's TAP
 * queue and take each through the stages of the encap path:
 *
 *   admit -> owner -> parse -> port security -> egress policy -> learn
 *         -> finish checksum -> ARP/ND suppression -> forward
 *
 * Each stage returns a verdict (ovl.h): OVL_PASS to go on, a drop reason, or
 * OVL_DONE when the frame is consumed. encap_one runs them in order and is
 * the one place a frame from a pod is dropped and counted. The forward
 * decision reads the destination's next hop (fdb.h): a local port (deliver.c,
 * the one way into a pod), a remote VTEP (the network's prebuilt tunnel
 * header in the frame's headroom, queued on the tunnel transport), or, for
 * broadcast, multicast and unknown unicast, every member (flood). The
 * transport is flushed once at the end of the burst: runs of equal-sized
 * datagrams to one VTEP leave as single UDP GSO sends (udp.c).
 *
 * Design notes.
 * - A frame is held to its network's frame_limit at the TAP, before it is
 *   queued: the pod MTU plus the Ethernet header, which is what a datagram on
 *   the underlay MTU carries after the outer headers and the network's tunnel
 *   header (network.c, frame_limit). A larger frame never fits the underlay;
 *   let into the queue it made a GSO run with the frames after it fail as a
 *   whole. It is frame_oversize, counted against the port, as the kernel's
 *   VXLAN device counts a frame above its MTU. (No ICMP "packet too big" is
 *   sent back: the overlay is a switch with no address of its own in the
 *   pod's network, and a pod that sends above its MTU is misconfigured or
 *   hostile.)
 * - A TSO super-frame from a pod is cut into segments (offload.c) once,
 *   before its first remote copy: segment headers go to the worker's
 *   seg_hdrs slots, payloads stay where the TAP read put them, and each
 *   segment is queued as two iovecs. The slots are reused once the transport
 *   has nothing queued, or after an explicit flush when they run out.
 * - Egress policy has its stage between port security and learning
 *   (policy.h): a frame the policy refuses teaches nothing, as a frame decap
 *   refuses teaches nothing.
 */
#include "counters.h"
#include "deliver.h"
#include "csum.h"
#include "network.h"
#include "policy.h"
#include "port.h"

#include <unistd.h>

/* A frame from a pod on its way through the stages. */
typedef struct pkt {
    ovl_port_t *p;
    ovl_network_t *n;
    uint8_t *frame;              /* OVL_HEADROOM writable bytes in front */
    size_t len;
    ovl_vnet_hdr_t *vh;          /* NULL, or the frame's virtio-net header */
    int gso;                     /* a super-frame (vh asks for segmentation) */
    int parsed;                  /* f is a full parse; 0: only the MACs (see parse) */
    int nseg;                    /* 0: not cut (yet); else segments in w->segs */
    ovl_frame_t f;
} pkt_t;

/* ---- admit: count what the pod sent, hold it to the network's size ---- */

static int admit(ovl_worker_t *w, pkt_t *x)
{
    ovl_count(w, OVL_C_TAP_RX_FRAMES, 1);
    ovl_count(w, OVL_C_TAP_RX_BYTES, x->len);
    ovl_port_count(w, x->p, x->n, OVL_O_RX_PACKETS, 1);
    ovl_port_count(w, x->p, x->n, OVL_O_RX_BYTES, x->len);
    if (x->gso) {
        ovl_count(w, OVL_C_GSO_FRAMES, 1);
        /* A first bound before parsing; each segment is held to the network's
         * frame_limit in parse, with its real header length. Not hdr_len: the
         * kernel fills it with the linear length, which holds payload in a
         * super-frame it forwards (a gateway's GRO train). */
        if ((size_t)x->vh->gso_size > w->e->cfg.frame_max || x->len > OVL_SUPER_MAX)
            return OVL_C_FRAME_OVERSIZE;
        return OVL_PASS;
    }
    return x->len > x->n->frame_limit ? OVL_C_FRAME_OVERSIZE : OVL_PASS;
}

/* ---- owner: the worker that owns the frame's flow (engine.h) ---- */

/* Never drops. A frame whose flow another worker owns came through a TAP
 * queue the steering program did not choose (a single-queue port, or no
 * program): counted. The slot where connection tracking will hand such a
 * frame to its owner. */
static int owner(ovl_worker_t *w, pkt_t *x)
{
    if (OVL_UNLIKELY(ovl_flow_owner(w->e, x->frame, x->len) != w->idx))
        ovl_count(w, OVL_C_STEER_MISSES, 1);
    return OVL_PASS;
}

/* ---- parse ---- */

/* The length of each segment super-frame f (parsed) will be cut into: its
 * real L2-L4 headers plus gso_size. Not vh->hdr_len: the kernel fills that
 * with the linear length, a hint that may hold payload too. 0 when the
 * headers cannot be read (ovl_gso_segment refuses the frame then). */
static size_t gso_seg_len(const uint8_t *frame, size_t len, const ovl_frame_t *f,
                          const ovl_vnet_hdr_t *vh)
{
    size_t l4 = f->l4_off, hl = 8; /* UDP */
    if (!l4)
        return 0;
    if (f->ip_proto == 6) {
        if (l4 + 13 > len)
            return 0;
        hl = (size_t)(frame[l4 + 12] >> 4) * 4;
    }
    return l4 + hl + vh->gso_size;
}

/* A secure port's frame must parse; so must a super-frame and anything
 * shorter than an Ethernet header. A port without security may send any
 * valid Ethernet frame: what the parser refuses goes on with its MACs only
 * (parsed 0), switched but never answered or hashed by its flow. */
static int parse(ovl_worker_t *w, pkt_t *x)
{
    (void)w;
    int rc = ovl_wire_parse_frame(x->frame, x->len, &x->f);
    int secure = !(x->p->flags & OVL_PORT_NO_SECURITY);
    if (rc < 0 && (secure || x->gso || rc == -OVL_C_FRAME_TOO_SHORT))
        return -rc;
    if (x->gso && gso_seg_len(x->frame, x->len, &x->f, x->vh) > x->n->frame_limit)
        return OVL_C_FRAME_OVERSIZE;
    x->parsed = rc == 0;
    if (!x->parsed) {
        memset(&x->f, 0, sizeof x->f);
        memcpy(x->f.dst, x->frame, 6);
        memcpy(x->f.src, x->frame + 6, 6);
    }
    return OVL_PASS;
}

/* ---- port security (portsec.c) ---- */

/* A gateway port (the node's IP stack) forwards packets of the outside world
 * (egress replies, Services' answers) into the network, so their source is
 * not its own. It may send from any unicast address that no endpoint of the
 * network holds (the neighbour table: local ports and remote pods alike);
 * an address of the network's own endpoints from it is still a spoof. */
static int gateway_forwards(ovl_worker_t *w, const pkt_t *x)
{
    const ovl_frame_t *f = &x->f;
    int family;
    if (f->l3 == OVL_L3_IPV4) {
        if (f->ip_src[0] >= 224 || f->ip_src[0] == 0)
            return 0;
        family = 4;
    } else if (f->l3 == OVL_L3_IPV6) {
        if (f->ip_src[0] == 0xff || (f->ip_src[0] == 0xfe && (f->ip_src[1] & 0xc0) == 0x80))
            return 0;
        family = 6;
    } else {
        return 0;
    }
    return ovl_fdb_neigh_lookup(&w->e->neigh, x->p->vni, family, f->ip_src) == NULL;
}

/* A gateway port answers ARP for the addresses it forwards to (proxy ARP:
 * the node's kernel, with proxy_arp on the gateway TAP, replies for an
 * address it routes out of another interface, such as the pods of a direct
 * peer of an auto network). The rule of gateway_forwards, for ARP: a reply
 * with the gateway's own MAC, for a unicast address that no endpoint of the
 * network holds; never for an endpoint's address, never a request (the
 * gateway asks from its own address). */
static int gateway_proxies_arp(ovl_worker_t *w, const pkt_t *x)
{
    const ovl_frame_t *f = &x->f;
    if (f->l3 != OVL_L3_ARP || f->arp_op != 2 || memcmp(f->arp_sha, x->p->sec.mac, 6) != 0)
        return 0;
    if (f->arp_spa[0] >= 224 || f->arp_spa[0] == 0 || f->arp_spa[0] == 127)
        return 0;
    uint8_t ip[16] = { 0 };
    memcpy(ip, f->arp_spa, 4);
    return ovl_fdb_neigh_lookup(&w->e->neigh, x->p->vni, 4, ip) == NULL;
}

static int port_security(ovl_worker_t *w, pkt_t *x)
{
    if (x->p->flags & OVL_PORT_NO_SECURITY)
        return OVL_PASS;
    int rc = ovl_portsec_check(&x->p->sec, &x->f);
    if (rc == -OVL_C_SPOOFED_IP && (x->p->flags & OVL_PORT_GATEWAY) && gateway_forwards(w, x))
        return OVL_PASS;
    if (rc == -OVL_C_SPOOFED_ARP && (x->p->flags & OVL_PORT_GATEWAY) && gateway_proxies_arp(w, x))
        return OVL_PASS;
    return rc < 0 ? -rc : OVL_PASS;
}

/* ---- egress policy ---- */

/* May the pod send this frame? The port's egress table and the worker's
 * sessions answer (policy.h); a port without policy costs one test. A frame
 * the parser could not read is refused where policy is on: fails closed. */
static inline int egress_policy(ovl_worker_t *w, pkt_t *x)
{
    if (OVL_LIKELY(!ovl_policy_on(x->p)))
        return OVL_PASS;
    if (!x->parsed)
        return OVL_C_POLICY_DENIED_EGRESS;
    return ovl_policy_check(w, x->p, OVL_POLICY_EGRESS, x->frame, x->len, &x->f);
}

/* ---- learn: what the frame teaches (never drops) ---- */

static int learn(ovl_worker_t *w, pkt_t *x)
{
    ovl_port_t *p = x->p;
    const ovl_frame_t *f = &x->f;
    /* A port without security may send from MACs behind it: learn them. */
    if ((p->flags & OVL_PORT_NO_SECURITY) && !(f->src[0] & 1) &&
        memcmp(f->src, p->sec.mac, 6) != 0) {
        ovl_fdb_val_t *v = ovl_fdb_lookup(&w->e->fdb, p->vni, f->src);
        if (!v || (v->kind != OVL_FDB_REMOTE && v->nh.port_id != (int32_t)p->id)) {
            ovl_learn_t l = { .kind = OVL_FDB_LOCAL, .vni = p->vni, .port_id = (int32_t)p->id,
                              .port_gen = p->gen, .when_ns = w->now_ns };
            memcpy(l.mac, f->src, 6);
            ovl_fdb_learn_queue(w, &l);
        }
    }
    /* The first frame from the port's own MAC tells the control plane the pod is up. */
    if (OVL_UNLIKELY(!__atomic_load_n(&p->seen, __ATOMIC_RELAXED)) &&
        memcmp(f->src, p->sec.mac, 6) == 0) {
        __atomic_store_n(&p->seen, 1, __ATOMIC_RELAXED);
        ovl_event_t ev = { .type = OVL_EVENT_MAC_SEEN, .vni = p->vni, .port_id = (int32_t)p->id };
        memcpy(ev.mac, f->src, 6);
        ovl_events_push(&w->e->events, w->c, &ev, 0);
    }
    return OVL_PASS;
}

/* ---- finish the checksum a pod left to us (NEEDS_CSUM) ---- */

static int finish_checksum(ovl_worker_t *w, pkt_t *x)
{
    if (x->gso || !x->vh || !(x->vh->flags & OVL_VNET_F_NEEDS_CSUM))
        return OVL_PASS;
    /* Before anyone sees the frame: a peer or a local pod gets it complete. */
    if (ovl_csum_complete(x->frame, x->len, x->vh->csum_start, x->vh->csum_offset) < 0)
        return OVL_C_GSO_MALFORMED;
    x->vh->flags = 0;
    ovl_count(w, OVL_C_CSUM_COMPLETED, 1);
    return OVL_PASS;
}

/* ---- ARP/ND suppression: answer from the neighbour table ---- */

static int suppress(ovl_worker_t *w, pkt_t *x)
{
    const ovl_frame_t *f = &x->f;
    if (!x->parsed || x->gso)
        return OVL_PASS;
    ovl_engine_t *e = w->e;
    const ovl_neigh_val_t *v;
    int len;
    if (f->l3 == OVL_L3_ARP && f->arp_op == 1 && memcmp(f->arp_spa, f->arp_tpa, 4) != 0) {
        v = ovl_fdb_neigh_lookup(&e->neigh, x->p->vni, 4, f->arp_tpa);
        if (!v || (len = ovl_wire_arp_reply(f, v->mac, w->scratch, sizeof w->scratch)) < 0)
            return OVL_PASS;
        ovl_count(w, OVL_C_ARP_SUPPRESSED, 1);
    } else if (f->l3 == OVL_L3_IPV6 && f->ip_proto == 58 && f->icmp_type == 135) {
        v = ovl_fdb_neigh_lookup(&e->neigh, x->p->vni, 6, f->nd_target);
        if (!v || (len = ovl_wire_nd_advert(f, v->mac, w->scratch, sizeof w->scratch)) < 0)
            return OVL_PASS; /* unknown target, or DAD (never answered) */
        ovl_count(w, OVL_C_ND_SUPPRESSED, 1);
    } else {
        return OVL_PASS;
    }
    ovl_deliver(w, x->p, x->n, w->scratch, (size_t)len, NULL, NULL);
    return OVL_DONE;
}

/* ---- forward: to a port, to a VTEP, or to every member ---- */

/* Cut a super-frame into w->segs, once, before its first remote copy. */
static int segment(ovl_worker_t *w, pkt_t *x)
{
    if (x->nseg || !x->gso)
        return OVL_PASS;
    const ovl_transport_ops_t *tp = w->e->tp;
    size_t need = (x->len + x->vh->gso_size - 1) / (x->vh->gso_size ? x->vh->gso_size : 1) + 1;
    if (tp->queued(w) == 0)
        w->n_seg_hdrs = 0; /* nothing queued refers to the slots */
    if (w->n_seg_hdrs + need > OVL_SEG_SLOTS) {
        tp->flush(w);
        w->n_seg_hdrs = 0;
    }
    int k = ovl_gso_segment(x->frame, x->len, x->vh, &x->f,
                            w->seg_hdrs + (size_t)w->n_seg_hdrs * OVL_SEG_HDR_MAX, w->segs,
                            OVL_GSO_MAX_SEGS);
    if (k < 0)
        return -k;
    w->n_seg_hdrs += (uint32_t)k;
    x->nseg = k;
    ovl_count(w, OVL_C_GSO_SEGMENTS, (uint64_t)k);
    return OVL_PASS;
}

/* Queue the frame (or its segments) behind the network's tunnel header for
 * the VTEP `to` on the tunnel transport. */
static void tunnel(ovl_worker_t *w, pkt_t *x, const ovl_addr_t *to, uint32_t hash)
{
    const ovl_transport_ops_t *tp = w->e->tp;
    ovl_network_t *n = x->n;
    size_t hl = n->hdr_len;
    if (!x->nseg) {
        uint8_t *hdr = x->frame - hl;
        memcpy(hdr, n->hdr, hl);
        struct iovec iov = { .iov_base = hdr, .iov_len = hl + x->len };
        tp->queue(w, to, &iov, 1, hash);
        ovl_port_count(w, x->p, n, OVL_O_ENCAP_PACKETS, 1);
        ovl_port_count(w, x->p, n, OVL_O_ENCAP_BYTES, x->len);
        return;
    }
    uint64_t bytes = 0;
    for (int i = 0; i < x->nseg; i++) {
        ovl_seg_t *sg = &w->segs[i];
        uint8_t *hdr = sg->hdr - hl;
        memcpy(hdr, n->hdr, hl);
        struct iovec iov[2] = {
            { .iov_base = hdr, .iov_len = hl + sg->hdr_len },
            { .iov_base = (void *)sg->pay, .iov_len = sg->pay_len },
        };
        tp->queue(w, to, iov, sg->pay_len ? 2 : 1, hash);
        bytes += sg->hdr_len + sg->pay_len;
    }
    ovl_port_count(w, x->p, n, OVL_O_ENCAP_PACKETS, (uint64_t)x->nseg);
    ovl_port_count(w, x->p, n, OVL_O_ENCAP_BYTES, bytes);
}

/* The flow hash the transport spreads source ports by (0: not parsed). */
static uint32_t flow_hash(const pkt_t *x)
{
    return x->parsed ? ovl_wire_flow_hash(&x->f) : 0;
}

/* Head-end replication: a copy to every other local port and every member VTEP. */
static int flood(ovl_worker_t *w, pkt_t *x)
{
    ovl_engine_t *e = w->e;
    ovl_network_t *n = x->n;
    uint32_t copies = 0;
    for (uint32_t i = 0; i < n->n_ports; i++) {
        ovl_port_t *q = &e->ports[n->ports[i]];
        if (q == x->p)
            continue;
        ovl_deliver(w, q, n, x->frame, x->len, x->vh, NULL);
        copies++;
    }
    if (n->n_vteps) {
        int v = segment(w, x);
        if (v != OVL_PASS)
            return v;
        uint32_t hash = flow_hash(x);
        for (uint32_t i = 0; i < n->n_vteps; i++) {
            tunnel(w, x, &n->vteps[i], hash);
            copies++;
        }
    }
    if (!copies)
        return OVL_C_NO_FLOOD_TARGETS;
    ovl_count(w, OVL_C_FLOODED, 1);
    ovl_count(w, OVL_C_FLOOD_COPIES, copies);
    return OVL_DONE;
}

/* Report an unknown destination to the control plane, at most once a second
 * per (VNI, MAC) and worker. */
static void report_miss(ovl_worker_t *w, const ovl_port_t *p, const uint8_t *dst)
{
    uint64_t key = ((uint64_t)p->vni << 48) ^ ovl_hash_bytes(dst, 6);
    uint32_t h = (uint32_t)(key ^ (key >> 29)) & (OVL_MISS_CACHE - 1);
    if (w->miss[h].key == key && w->now_ns - w->miss[h].when_ns < OVL_MISS_INTERVAL_NS)
        return; /* reported within the last second */
    w->miss[h].key = key;
    w->miss[h].when_ns = w->now_ns;
    ovl_event_t ev = { .type = OVL_EVENT_MISS, .vni = p->vni, .port_id = (int32_t)p->id };
    memcpy(ev.mac, dst, 6);
    ovl_events_push(&w->e->events, w->c, &ev, 0);
}

/* An uplink sees every frame of its physical segment: a unicast frame for a
 * MAC that is no other port's here (unknown, or a station behind the uplink
 * itself) belongs to another station. It is ignored and counted, never
 * flooded to the pods nor reported as a miss. */
static int uplink_foreign(ovl_worker_t *w, const ovl_fdb_val_t *v, const pkt_t *x)
{
    if (v && !(v->nh.kind == OVL_NH_PORT && v->nh.port_id == (int32_t)x->p->id))
        return 0;
    ovl_count(w, OVL_C_UPLINK_FOREIGN, 1);
    return 1;
}

static int forward(ovl_worker_t *w, pkt_t *x)
{
    ovl_engine_t *e = w->e;
    if (x->f.dst[0] & 1)
        return flood(w, x);
    ovl_fdb_val_t *v = ovl_fdb_lookup(&e->fdb, x->p->vni, x->f.dst);
    if ((x->p->flags & OVL_PORT_UPLINK) && uplink_foreign(w, v, x))
        return OVL_DONE;
    if (!v) {
        ovl_count(w, OVL_C_FDB_MISSES, 1);
        report_miss(w, x->p, x->f.dst);
        return flood(w, x);
    }
    __atomic_store_n(&v->used_ns, w->now_ns, __ATOMIC_RELAXED);
    switch (v->nh.kind) {
    case OVL_NH_PORT:
        if (v->nh.port_id == (int32_t)x->p->id)
            return OVL_C_HAIRPIN;
        ovl_count(w, OVL_C_LOCAL_SWITCHED, 1);
        ovl_deliver(w, &e->ports[v->nh.port_id], x->n, x->frame, x->len, x->vh, NULL);
        return OVL_DONE;
    case OVL_NH_TUNNEL: {
        int rc = segment(w, x);
        if (rc != OVL_PASS)
            return rc;
        tunnel(w, x, &v->nh.addr, flow_hash(x));
        return OVL_DONE;
    }
    default:
        return OVL_C_UNKNOWN_DESTINATION; /* a next hop this engine cannot reach */
    }
}

/* ---- the path ---- */

static void encap_one(ovl_worker_t *w, ovl_port_t *p, uint8_t *frame, size_t len,
                      ovl_vnet_hdr_t *vh)
{
    pkt_t x = { .p = p, .n = &w->e->nets[p->net_idx], .frame = frame, .len = len, .vh = vh,
                .gso = vh && vh->gso_type != OVL_VNET_GSO_NONE };
    int v = admit(w, &x);
    if (v == OVL_PASS)
        v = owner(w, &x);
    if (v == OVL_PASS)
        v = parse(w, &x);
    if (v == OVL_PASS)
        v = port_security(w, &x);
    if (v == OVL_PASS)
        v = egress_policy(w, &x);
    if (v == OVL_PASS)
        v = learn(w, &x);
    if (v == OVL_PASS)
        v = finish_checksum(w, &x);
    if (v == OVL_PASS)
        v = suppress(w, &x);
    if (v == OVL_PASS)
        v = forward(w, &x);
    if (v > 0)
        ovl_drop(w, p, x.n, v);
}

void ovl_encap_burst(ovl_worker_t *w, uint32_t port_id, uint32_t gen, uint32_t queue)
{
    ovl_engine_t *e = w->e;
    OVL_RDLOCK(e);
    ovl_port_t *p = ovl_port_get(e, (int)port_id);
    if (!p || p->gen != gen || queue >= p->n_fds) {
        OVL_UNLOCK(e);
        return; /* the port went away after epoll reported it */
    }
    w->now_ns = ovl_now_ns();
    size_t vl = p->vnet ? OVL_VNET_HLEN : 0;
    /* One byte more than the largest frame shows an oversize one. */
    size_t want = vl + (p->vnet ? OVL_SUPER_MAX : e->cfg.frame_max) + 1;
    if (want > w->tap_buf_size - OVL_HEADROOM + vl)
        want = w->tap_buf_size - OVL_HEADROOM + vl;
    for (uint32_t i = 0; i < e->cfg.batch; i++) {
        uint8_t *frame = w->tap_bufs + (size_t)i * w->tap_buf_size + OVL_HEADROOM;
        ssize_t r = read(p->fds[queue], frame - vl, want);
        if (r <= 0)
            break;
        if ((size_t)r < vl) {
            ovl_drop(w, p, &e->nets[p->net_idx], OVL_C_FRAME_TOO_SHORT);
            continue;
        }
        ovl_vnet_hdr_t vh;
        if (vl)
            memcpy(&vh, frame - vl, sizeof vh);
        encap_one(w, p, frame, (size_t)r - vl, vl ? &vh : NULL);
    }
    e->tp->flush(w);
    OVL_UNLOCK(e);
    ovl_fdb_learn_commit(w);
}
