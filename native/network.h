/*
 * network.h — networks (one VNI each), their member VTEPs and tunnel headers.
 *
 * Design notes.
 * - A network carries its own encapsulation (encap) and its tunnel header,
 *   prebuilt from it (VPP's per-tunnel rewrite): encapsulating is one copy
 *   into the frame's headroom. VXLAN and Geneve networks live side by side:
 *   each encapsulation has its own tunnel port (e->udp_ports), the
 *   engine's open from the start, the other's opened by the transport
 *   when its first tunnel network is added (transport.h, listen), so a
 *   node that uses one encapsulation holds one port, as before. A receive
 *   is decoded with the encapsulation of the port it came to and accepted
 *   only for a network of that encapsulation (decap.c); a VTEP given
 *   without a port gets the port of its network's encapsulation. Why ports
 *   and not one port for both: the two headers cannot be told apart by
 *   their bytes (a VXLAN header and an option-less Geneve header are both
 *   8 bytes with the VNI at the same place), and peers send each to its
 *   IANA port.
 * - The member VTEPs are kept twice: as a list for head-end replication
 *   (flooding), and in e->members, keyed (VNI, address), for the decap check
 *   "is the outer source a member of this VNI" at one lookup per datagram.
 * - frame_limit is the largest frame a pod of the network may send: what
 *   one datagram with this network's header carries (network.c). A network
 *   without a tunnel (OVL_NET_NO_TUNNEL: routed and underlay networks, whose
 *   frames leave through the gateway or an uplink, never encapsulated) has
 *   the underlay MTU plus the Ethernet header instead, and no member VTEPs:
 *   its pods get the full underlay MTU. Without members, decap accepts
 *   nothing for its VNI.
 * - A network's local ports are listed here (flooding); port.c keeps the
 *   list through ovl_network_port_link/unlink.
 */
#ifndef OVL_NETWORK_H
#define OVL_NETWORK_H

#include "engine.h"

struct ovl_network {
    int used;
    uint32_t idx;                /* index in e->nets: its counter row */
    uint32_t vni;
    int encap;                   /* OVL_ENCAP_* */
    uint32_t flags;              /* OVL_NET_* */
    uint16_t hdr_len;            /* prebuilt tunnel header */
    uint32_t frame_limit;        /* largest frame a pod may send */
    uint8_t hdr[OVL_GENEVE_HLEN + OVL_GENEVE_OPTS_MAX];
    ovl_addr_t *vteps;           /* flood list (head-end replication) */
    uint32_t n_vteps, cap_vteps;
    int32_t *ports;              /* local ports */
    uint32_t n_ports, cap_ports;
};

/* (VNI, VTEP address) -> member: the decap source check. */
typedef struct ovl_member_key {
    uint32_t vni;
    uint8_t family;
    uint8_t pad[3];
    uint8_t addr[16];
} ovl_member_key_t;

static inline void ovl_member_key_make(ovl_member_key_t *k, uint32_t vni, int family, const uint8_t *addr)
{
    memset(k, 0, sizeof *k);
    k->vni = vni;
    k->family = (uint8_t)family;
    memcpy(k->addr, addr, family == 4 ? 4 : 16);
}

/* The network of vni, or NULL (caller holds the lock). */
static inline ovl_network_t *ovl_network_lookup(ovl_engine_t *e, uint32_t vni)
{
    uint32_t *idx = ovl_map_get(&e->net_by_vni, &vni);
    return idx ? &e->nets[*idx] : NULL;
}

/* Is (family, addr) a member VTEP of vni? (caller holds the lock) */
static inline int ovl_network_is_member(ovl_engine_t *e, uint32_t vni, int family,
                                        const uint8_t *addr)
{
    ovl_member_key_t k;
    ovl_member_key_make(&k, vni, family, addr);
    return ovl_map_get(&e->members, &k) != NULL;
}

/* Make room for one more local port in n's list: 0 or -ENOMEM. Then link
 * can no longer fail. Caller holds the writer lock. */
int ovl_network_port_reserve(ovl_network_t *n);
void ovl_network_port_link(ovl_network_t *n, int32_t port_id);
void ovl_network_port_unlink(ovl_network_t *n, int32_t port_id);

#endif
