/*
 * decap.c — underlay -> pod: take a burst of receives from the tunnel
 * transport and each datagram through the stages of the decap path:
 *
 *   tunnel header -> owner -> VNI hosted -> source a member -> inner checks
 *                 -> learn -> deliver (every local port, or the one it names)
 *
 * Each stage returns a verdict (ovl.h); decap_one runs them in order and is
 * the one place a datagram is dropped and counted. A bad datagram is a drop
 * with its reason and the loop goes on. Delivery goes through deliver.c, the
 * one way into a pod (unicasts may join a coalesced train there).
 *
 * Design notes.
 * - Isolation: a datagram is accepted only when its VNI is hosted here
 *   under the encapsulation it arrived with, and its outer source is a member
 *   VTEP of that VNI (network.h); Geneve options with the critical bit must
 *   be known to this node.
 * - A member VTEP is trusted to carry its network, not to speak for this
 *   node's pods. Its inner frame is parsed once (deliver.c reuses the parse
 *   for coalescing) and refused when it claims what this node knows to be
 *   otherwise:
 *     decap_spoofed_mac  the source MAC lives behind a local port (a port's
 *                        own, or one learned behind a port without security);
 *     decap_spoofed_arp  the ARP sender (sha, spa) claims a local MAC, an
 *                        address of a local port, or an address the
 *                        neighbour table gives another MAC;
 *     decap_spoofed_nd   the same for ND: an NA's target with its target
 *                        link-layer option (or, without one, the source MAC);
 *                        an NS, RS or RA's source with its source link-layer
 *                        option; a redirect's target with its target option.
 *   A local port owns its addresses (in the neighbour table with its MAC)
 *   and its EUI-64 link-local address. A claim from :: or 0.0.0.0 (DAD, ARP
 *   probe) claims nothing. A frame the parser refuses is refused here too,
 *   whatever port sent it on the far side: the check above is only as good
 *   as the parse (a nine-header NA would otherwise walk past it).
 * - Learning networks (flood and learn, no store) have no remote neighbour
 *   entries: the local checks apply, and any remote claim about a remote
 *   address is taken as the kernel's VXLAN device takes it. A MAC learned
 *   behind one VTEP that shows up behind another moves there, as the kernel's
 *   vxlan_snoop moves a dynamic entry. A MAC the control plane placed (a
 *   remote FDB entry) does not move: a frame from it through another VTEP is
 *   decap_spoofed_mac, as the kernel drops a frame from a static entry's MAC
 *   arriving from elsewhere. A MAC behind a local port never moves to a VTEP
 *   by learning (fdb.c, learn_one), so its frames from a VTEP are
 *   refused in every network. The checks run before learning: a refused
 *   frame teaches nothing.
 * - Every datagram received ends as exactly one of: delivered to one port
 *   (unicast), delivered to each local port of its network (flood: one
 *   delivery per port, or no_flood_targets when there is none), or a drop
 *   with its reason. tests/native/test_hostile_dataplane.py holds the engine
 *   to that identity under mutated traffic.
 */
#include "counters.h"
#include "deliver.h"
#include "network.h"
#include "port.h"

/* A datagram on its way through the stages. */
typedef struct pkt {
    uint8_t *buf;
    size_t len;
    const ovl_rx_t *rx;          /* the receive it came in: its sender */
    ovl_tunnel_t t;
    ovl_network_t *n;            /* known from the VNI stage on */
    uint8_t *frame;              /* the inner frame */
    size_t flen;
    ovl_frame_t f;
} pkt_t;

#define ND_RS 133
#define ND_RA 134
#define ND_NS 135
#define ND_NA 136
#define ND_REDIRECT 137

/* ---- tunnel header ---- */

static int tunnel_header(ovl_worker_t *w, pkt_t *x)
{
    (void)w;
    /* Each tunnel port speaks one encapsulation (network.h): the receive
     * says which port it came to. */
    int hl = ovl_wire_decode(x->rx->encap, x->buf, x->len, &x->t);
    if (hl < 0)
        return -hl;
    x->frame = x->buf + hl;
    x->flen = x->len - (size_t)hl;
    return OVL_PASS;
}

/* ---- owner: the worker that owns the inner frame's flow (engine.h) ---- */

/* Never drops. A datagram whose inner flow another worker owns came through
 * a receive socket the reuseport program did not choose (a coalesced receive
 * whose first datagram is of another flow, or no program): counted. The slot
 * where connection tracking will hand it to its owner. */
static int owner(ovl_worker_t *w, pkt_t *x)
{
    if (OVL_UNLIKELY(ovl_flow_owner(w->e, x->frame, x->flen) != w->idx))
        ovl_count(w, OVL_C_STEER_MISSES, 1);
    return OVL_PASS;
}

/* ---- VNI hosted, under this encapsulation ---- */

static int vni_hosted(ovl_worker_t *w, pkt_t *x)
{
    ovl_engine_t *e = w->e;
    x->n = ovl_network_lookup(e, x->t.vni);
    if (!x->n || x->n->encap != x->rx->encap) {
        x->n = NULL;
        return OVL_C_UNKNOWN_VNI;
    }
    return OVL_PASS;
}

/* ---- the outer source is a member VTEP; its options are understood ---- */

static int member_source(ovl_worker_t *w, pkt_t *x)
{
    ovl_engine_t *e = w->e;
    if (!x->rx->family || !ovl_network_is_member(e, x->t.vni, x->rx->family, x->rx->addr))
        return OVL_C_VTEP_NOT_MEMBER;
    if (x->t.opts_len) {
        int rc = ovl_wire_check_options(x->t.opts, x->t.opts_len, e->known, e->n_known);
        if (rc < 0)
            return -rc;
    }
    return OVL_PASS;
}

/* ---- inner checks: size, parse, claims against what this node knows ---- */

/* The FDB entry of mac in vni when it is a local one (a port's MAC, or one
 * learned behind a port), else NULL. */
static const ovl_fdb_val_t *local_mac(ovl_engine_t *e, uint32_t vni, const uint8_t *mac)
{
    const ovl_fdb_val_t *v = ovl_fdb_lookup(&e->fdb, vni, mac);
    return v && v->kind == OVL_FDB_LOCAL ? v : NULL;
}

/* Does a decapsulated frame's claim "ip is at mac" contradict what this node
 * knows (see the design notes)? family 4: ip is 4 bytes. */
static int claim_refused(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *ip,
                         const uint8_t *mac)
{
    static const uint8_t zero[16];
    size_t alen = family == 4 ? 4 : 16;
    if (memcmp(ip, zero, alen) == 0)
        return 0;                       /* a probe or DAD: no claim */
    if (local_mac(e, vni, mac))
        return 1;
    const ovl_neigh_val_t *v = ovl_fdb_neigh_lookup(&e->neigh, vni, family, ip);
    if (v)
        return memcmp(v->mac, mac, 6) != 0;
    /* fe80::/64 with an EUI-64 interface id: a local port's link-local address? */
    static const uint8_t ll[8] = {0xfe, 0x80};
    if (family == 6 && memcmp(ip, ll, 8) == 0 && ip[11] == 0xff && ip[12] == 0xfe) {
        const uint8_t owner[6] = {(uint8_t)(ip[8] ^ 0x02), ip[9], ip[10], ip[13], ip[14], ip[15]};
        return local_mac(e, vni, owner) != NULL;
    }
    return 0;
}

/* The claims of the parsed inner frame f from the VTEP (family, addr): 0, or
 * the drop reason. */
static int claims(ovl_engine_t *e, const ovl_network_t *n, const ovl_frame_t *f, int family,
                  const uint8_t *addr)
{
    const ovl_fdb_val_t *v = ovl_fdb_lookup(&e->fdb, n->vni, f->src);
    if (v && v->kind == OVL_FDB_LOCAL)
        return OVL_C_DECAP_SPOOFED_MAC;
    if (v && v->kind == OVL_FDB_REMOTE && (n->flags & OVL_NET_LEARNING) &&
        (v->nh.addr.family != family || memcmp(v->nh.addr.addr, addr, 16) != 0))
        return OVL_C_DECAP_SPOOFED_MAC;
    if (f->l3 == OVL_L3_ARP)
        return claim_refused(e, n->vni, 4, f->arp_spa, f->arp_sha) ? OVL_C_DECAP_SPOOFED_ARP : 0;
    if (f->l3 != OVL_L3_IPV6 || f->ip_proto != 58)
        return 0;
    const uint8_t *ip = NULL, *mac = f->nd_has_lladdr ? f->nd_lladdr : NULL;
    switch (f->icmp_type) {
    case ND_RS:
    case ND_RA:
    case ND_NS:
        ip = f->ip_src;
        break;
    case ND_NA:
        ip = f->nd_target;
        if (!mac)
            mac = f->src;
        break;
    case ND_REDIRECT:
        ip = f->nd_target;
        break;
    default:
        return 0;
    }
    return mac && claim_refused(e, n->vni, 6, ip, mac) ? OVL_C_DECAP_SPOOFED_ND : 0;
}

static int inner_checks(ovl_worker_t *w, pkt_t *x)
{
    ovl_engine_t *e = w->e;
    if (x->flen < 14)
        return OVL_C_FRAME_TOO_SHORT;
    if (x->flen > e->cfg.frame_max)
        return OVL_C_FRAME_OVERSIZE;
    int rc = ovl_wire_parse_frame(x->frame, x->flen, &x->f);
    if (rc < 0)
        return -rc;
    rc = claims(e, x->n, &x->f, x->rx->family, x->rx->addr);
    if (rc)
        return rc;
    ovl_net_count(w, x->n, OVL_O_DECAP_PACKETS, 1);
    ovl_net_count(w, x->n, OVL_O_DECAP_BYTES, x->flen);
    return OVL_PASS;
}

/* ---- learn: in a learning network, where the source MAC lives ---- */

static int learn(ovl_worker_t *w, pkt_t *x)
{
    ovl_engine_t *e = w->e;
    const uint8_t *src = x->frame + 6;
    if (!(x->n->flags & OVL_NET_LEARNING) || (src[0] & 1))
        return OVL_PASS;
    int family = x->rx->family;
    const uint8_t *addr = x->rx->addr;
    ovl_fdb_val_t *v = ovl_fdb_lookup(&e->fdb, x->t.vni, src);
    if (!v || (v->kind == OVL_FDB_LEARNED &&
               (v->nh.addr.family != family || memcmp(v->nh.addr.addr, addr, 16) != 0))) {
        ovl_learn_t l = { .kind = OVL_FDB_LEARNED, .vni = x->t.vni, .port_id = -1,
                          .when_ns = w->now_ns };
        memcpy(l.mac, src, 6);
        ovl_addr_make(&l.vtep, family, addr, e->udp_ports[x->n->encap]);
        ovl_fdb_learn_queue(w, &l);
    } else if (v->kind == OVL_FDB_LEARNED) {
        __atomic_store_n(&v->updated_ns, w->now_ns, __ATOMIC_RELAXED);
    }
    return OVL_PASS;
}

/* ---- deliver: every local port of the VNI, or the one the FDB names ---- */

static int deliver(ovl_worker_t *w, pkt_t *x)
{
    ovl_engine_t *e = w->e;
    ovl_network_t *n = x->n;
    if (x->frame[0] & 1) { /* broadcast or multicast */
        ovl_deliver_flush(w);
        if (!n->n_ports)
            return OVL_C_NO_FLOOD_TARGETS;
        for (uint32_t i = 0; i < n->n_ports; i++)
            ovl_deliver(w, &e->ports[n->ports[i]], n, x->frame, x->flen, NULL, NULL);
        return OVL_DONE;
    }
    ovl_fdb_val_t *v = ovl_fdb_lookup(&e->fdb, x->t.vni, x->frame);
    if (!v || v->nh.kind != OVL_NH_PORT)
        return OVL_C_UNKNOWN_DESTINATION;
    __atomic_store_n(&v->used_ns, w->now_ns, __ATOMIC_RELAXED);
    ovl_deliver(w, &e->ports[v->nh.port_id], n, x->frame, x->flen, NULL, &x->f);
    return OVL_DONE;
}

/* ---- the path ---- */

static void decap_one(ovl_worker_t *w, uint8_t *buf, size_t len, const ovl_rx_t *rx)
{
    ovl_count(w, OVL_C_UDP_RX_PACKETS, 1);
    ovl_count(w, OVL_C_UDP_RX_BYTES, len);
    pkt_t x = { .buf = buf, .len = len, .rx = rx };
    int v = tunnel_header(w, &x);
    if (v == OVL_PASS)
        v = owner(w, &x);
    if (v == OVL_PASS)
        v = vni_hosted(w, &x);
    if (v == OVL_PASS)
        v = member_source(w, &x);
    if (v == OVL_PASS)
        v = inner_checks(w, &x);
    if (v == OVL_PASS)
        v = learn(w, &x);
    if (v == OVL_PASS)
        v = deliver(w, &x);
    if (v > 0)
        ovl_drop(w, NULL, x.n, v);
}

void ovl_decap_burst(ovl_worker_t *w)
{
    ovl_engine_t *e = w->e;
    const ovl_transport_ops_t *tp = e->tp;
    uint32_t b = e->cfg.batch;
    OVL_RDLOCK(e);
    w->now_ns = ovl_now_ns();
    for (int round = 0; round < OVL_RX_ROUNDS; round++) {
        int n = tp->recv(w, w->rx, b);
        if (n <= 0)
            break;
        for (int i = 0; i < n; i++) {
            const ovl_rx_t *rx = &w->rx[i];
            if (OVL_UNLIKELY(rx->truncated)) {
                ovl_count(w, OVL_C_UDP_RX_PACKETS, 1);
                ovl_drop(w, NULL, NULL, OVL_C_FRAME_OVERSIZE);
                continue;
            }
            if (!rx->seg) {
                decap_one(w, rx->buf, rx->len, rx);
                continue;
            }
            for (size_t off = 0; off < rx->len; off += rx->seg)
                decap_one(w, rx->buf + off, rx->len - off < rx->seg ? rx->len - off : rx->seg, rx);
        }
        ovl_deliver_flush(w); /* the train points into buffers the next receive reuses */
        if ((uint32_t)n < b)
            break;
    }
    OVL_UNLOCK(e);
    ovl_fdb_learn_commit(w);
}
