/*
 * network.c — networks, their member VTEPs, tunnel headers and the Geneve
 * options this node understands (see network.h for the design notes).
 *
 * Contracts. Every function here is control plane: it takes the engine's
 * writer lock for its change (engine.h) and leaves the tables as they were
 * when it fails. A network is removed only when it has no port left; its
 * FDB, neighbour and member entries go with it.
 */
#include "counters.h"
#include "network.h"

#include <errno.h>
#include <stdlib.h>

/* The largest frame a pod of a network may send: what frame_max allows and
 * what one datagram with the network's tunnel header (hdr_len bytes) carries,
 * on the underlay MTU when one is configured: VXLAN takes 50 bytes over IPv4
 * and 70 over IPv6 (outer IP, UDP, 8 bytes of VXLAN, counting the inner
 * Ethernet header the pod's MTU leaves out), Geneve as much plus its option
 * bytes. Without an underlay MTU, a UDP datagram's own limit still holds. */
static uint32_t frame_limit(const ovl_engine_config_t *c, size_t hdr_len)
{
    size_t ip = c->family == 4 ? 20 : 40;
    size_t limit = c->frame_max;
    size_t udp_max = 65535 - (c->family == 4 ? ip : 0) - 8 - hdr_len;
    if (udp_max < limit)
        limit = udp_max;
    if (c->underlay_mtu) {
        size_t room = c->underlay_mtu > ip + 8 + hdr_len ? c->underlay_mtu - ip - 8 - hdr_len : 0;
        if (room < limit)
            limit = room;
    }
    return (uint32_t)limit;
}

/* The largest frame a pod of a network without a tunnel (OVL_NET_NO_TUNNEL)
 * may send: its frames leave unencapsulated (through the gateway to the
 * node's routes, or through an uplink onto the segment), so the underlay MTU
 * plus the Ethernet header, within frame_max. */
static uint32_t plain_frame_limit(const ovl_engine_config_t *c)
{
    size_t limit = c->frame_max;
    if (c->underlay_mtu && (size_t)c->underlay_mtu + 14 < limit)
        limit = (size_t)c->underlay_mtu + 14;
    return (uint32_t)limit;
}

/* Build n's tunnel header (its encapsulation, VNI and Geneve options tlv). */
static int build_header(ovl_engine_t *e, ovl_network_t *n, const uint8_t *tlv, size_t len)
{
    ovl_tunnel_t t;
    memset(&t, 0, sizeof t);
    t.vni = n->vni;
    t.protocol = OVL_ETH_P_TEB;
    t.flags = n->encap == OVL_ENCAP_VXLAN ? 0x08 : 0;
    if (len > OVL_GENEVE_OPTS_MAX)
        return -EINVAL;
    if (len) {
        if (n->encap != OVL_ENCAP_GENEVE)
            return -EPROTONOSUPPORT;
        memcpy(t.opts, tlv, len);
        t.opts_len = (uint8_t)len;
    }
    uint8_t hdr[sizeof n->hdr];
    int hl = ovl_wire_encode(n->encap, &t, hdr, sizeof hdr);
    if (hl < 0)
        return -EINVAL;
    memcpy(n->hdr, hdr, (size_t)hl);
    n->hdr_len = (uint16_t)hl;
    n->frame_limit = (n->flags & OVL_NET_NO_TUNNEL) ? plain_frame_limit(&e->cfg)
                                                    : frame_limit(&e->cfg, (size_t)hl);
    return 0;
}

int ovl_network_add(ovl_engine_t *e, uint32_t vni, int encap, uint32_t flags)
{
    if (vni > OVL_VNI_MAX)
        return -ERANGE;
    if (flags & ~(uint32_t)(OVL_NET_LEARNING | OVL_NET_NO_TUNNEL))
        return -EINVAL;
    if (encap == 0)
        encap = e->cfg.encap;
    if (encap != OVL_ENCAP_VXLAN && encap != OVL_ENCAP_GENEVE)
        return -EINVAL;
    OVL_WRLOCK(e);
    int rc = 0;
    if (ovl_network_lookup(e, vni)) {
        rc = -EEXIST;
        goto out;
    }
    uint32_t idx = 0;
    while (idx < e->cfg.max_networks && e->nets[idx].used)
        idx++;
    if (idx == e->cfg.max_networks) {
        rc = -ENOSPC;
        goto out;
    }
    /* The first tunnel network of an encapsulation opens its tunnel port
     * (network.h). Its port stays open when the network goes: reopening
     * would cost sockets per add and could lose the port to another
     * program in between. */
    if (!(flags & OVL_NET_NO_TUNNEL) && !(e->listening & (1u << encap))) {
        int alt = encap == OVL_ENCAP_VXLAN ? OVL_ENCAP_GENEVE : OVL_ENCAP_VXLAN;
        if (e->udp_ports[encap] == e->udp_ports[alt])
            rc = -EADDRINUSE; /* one port cannot tell the two apart */
        else
            rc = e->tp->listen(e, encap);
        if (rc < 0)
            goto out;
        e->listening |= 1u << encap;
    }
    ovl_network_t *n = &e->nets[idx];
    free(n->vteps);
    free(n->ports);
    memset(n, 0, sizeof *n);
    n->idx = idx;
    n->vni = vni;
    n->encap = encap;
    n->flags = flags;
    if ((rc = build_header(e, n, NULL, 0)) < 0)
        goto out;
    uint32_t *slot = ovl_map_put(&e->net_by_vni, &vni, NULL);
    if (!slot) {
        rc = -ENOSPC;
        goto out;
    }
    *slot = idx;
    ovl_counters_reset_network(e, idx);
    n->used = 1;
out:
    OVL_UNLOCK(e);
    return rc;
}

static int member_of(const void *key, const void *val, void *ctx)
{
    (void)val;
    return ((const ovl_member_key_t *)key)->vni == *(const uint32_t *)ctx;
}

int ovl_network_del(ovl_engine_t *e, uint32_t vni)
{
    OVL_WRLOCK(e);
    int rc = 0;
    ovl_network_t *n = ovl_network_lookup(e, vni);
    if (!n)
        rc = -ENOENT;
    else if (n->n_ports)
        rc = -EBUSY;
    else {
        ovl_fdb_purge_vni(e, vni);
        ovl_map_sweep(&e->members, member_of, &vni);
        ovl_map_del(&e->net_by_vni, &vni);
        n->used = 0;
        n->n_vteps = 0;
    }
    OVL_UNLOCK(e);
    return rc;
}

int ovl_network_set_options(ovl_engine_t *e, uint32_t vni, const uint8_t *tlv, size_t len)
{
    OVL_WRLOCK(e);
    ovl_network_t *n = ovl_network_lookup(e, vni);
    int rc = !n ? -ENOENT
             : (n->flags & OVL_NET_NO_TUNNEL) && len ? -EOPNOTSUPP /* no header to carry them */
                                                    : build_header(e, n, tlv, len);
    OVL_UNLOCK(e);
    return rc;
}

int ovl_network_known_option_add(ovl_engine_t *e, uint16_t cls, uint8_t type)
{
    uint32_t key = ((uint32_t)cls << 8) | (type & (uint8_t)~OVL_GENEVE_TYPE_CRITICAL);
    OVL_WRLOCK(e);
    int rc = 0;
    for (uint32_t i = 0; i < e->n_known; i++)
        if (e->known[i] == key)
            goto out;
    if (e->n_known >= OVL_KNOWN_OPTS_MAX)
        rc = -ENOSPC;
    else
        e->known[e->n_known++] = key;
out:
    OVL_UNLOCK(e);
    return rc;
}

/* ---- the lists of a network ---- */

/* Room for need elements of elem bytes in *arr; 0 or -ENOMEM. */
static int grow(void **arr, uint32_t *cap, uint32_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    uint32_t ncap = *cap ? *cap * 2 : 8;
    while (ncap < need)
        ncap *= 2;
    void *p = realloc(*arr, (size_t)ncap * elem);
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = ncap;
    return 0;
}

int ovl_network_port_reserve(ovl_network_t *n)
{
    return grow((void **)&n->ports, &n->cap_ports, n->n_ports + 1, sizeof *n->ports);
}

void ovl_network_port_link(ovl_network_t *n, int32_t port_id)
{
    n->ports[n->n_ports++] = port_id;
}

void ovl_network_port_unlink(ovl_network_t *n, int32_t port_id)
{
    for (uint32_t i = 0; i < n->n_ports; i++) {
        if (n->ports[i] == port_id) {
            n->ports[i] = n->ports[--n->n_ports];
            return;
        }
    }
}

/* ---- member VTEPs ---- */

int ovl_network_vtep_add(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *addr,
                         uint16_t port)
{
    if (ovl_addr_len(family) < 0 || family != e->cfg.family)
        return -EAFNOSUPPORT;
    OVL_WRLOCK(e);
    int rc = 0;
    ovl_network_t *n = ovl_network_lookup(e, vni);
    if (!n) {
        rc = -ENOENT;
        goto out;
    }
    if (n->flags & OVL_NET_NO_TUNNEL) {
        rc = -EOPNOTSUPP; /* nothing is encapsulated to or accepted from a VTEP */
        goto out;
    }
    ovl_addr_t a;
    ovl_addr_make(&a, family, addr, port ? port : e->udp_ports[n->encap]);
    for (uint32_t i = 0; i < n->n_vteps; i++) {
        if (n->vteps[i].family == family && memcmp(n->vteps[i].addr, a.addr, 16) == 0) {
            n->vteps[i] = a; /* same member, maybe a new port */
            goto out;
        }
    }
    ovl_member_key_t k;
    ovl_member_key_make(&k, vni, family, addr);
    if (!ovl_map_put(&e->members, &k, NULL)) {
        rc = -ENOSPC;
        goto out;
    }
    if ((rc = grow((void **)&n->vteps, &n->cap_vteps, n->n_vteps + 1, sizeof *n->vteps)) < 0) {
        ovl_map_del(&e->members, &k);
        goto out;
    }
    n->vteps[n->n_vteps++] = a;
out:
    OVL_UNLOCK(e);
    return rc;
}

int ovl_network_vtep_del(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *addr)
{
    if (ovl_addr_len(family) < 0)
        return -EAFNOSUPPORT;
    OVL_WRLOCK(e);
    int rc = -ENOENT;
    ovl_network_t *n = ovl_network_lookup(e, vni);
    if (n) {
        ovl_member_key_t k;
        ovl_member_key_make(&k, vni, family, addr);
        ovl_map_del(&e->members, &k);
        for (uint32_t i = 0; i < n->n_vteps; i++) {
            if (n->vteps[i].family == family && memcmp(n->vteps[i].addr, k.addr, 16) == 0) {
                n->vteps[i] = n->vteps[--n->n_vteps];
                rc = 0;
                break;
            }
        }
    }
    OVL_UNLOCK(e);
    return rc;
}
