/*
 * portsec.h — what a port may send: port security (anti-spoofing).
 *
 * A port with security on sends only from its own MAC; its IPv4 packets only
 * from its addresses; its IPv6 packets only from its addresses or the EUI-64
 * link-local address of its MAC; its ARP only with its MAC and one of its
 * addresses (or 0.0.0.0, a probe); its neighbour discovery only with its MAC
 * in link-layer options and its own addresses as advertised targets. DHCPv4
 * (UDP 68 -> 67 from 0.0.0.0) is let through so a port may learn an address.
 * Tagged frames are refused. This room is anti-spoofing only: the per-port
 * rule tables of the policy engine and connection tracking get rooms of
 * their own (acl.c, conntrack.c), called from encap.c's egress-policy stage
 * and deliver.c's ingress-policy stage.
 *
 * Design notes.
 * - From :: comes exactly what duplicate address detection and MLD need, and
 *   nothing else (spoofed_source_ip): a DAD solicitation (RFC 4862 section
 *   5.4.2: no source link-layer option, to the solicited-node group of its
 *   target) for one of the port's own addresses or its link-local address
 *   (a port probing someone else's address is not doing DAD, it is provoking
 *   a defence); and MLD reports (RFC 3590, RFC 3810 section 5.2.13), MLDv2
 *   (143) to ff02::16 as RFC 3810 section 5.2.14 sends them, MLDv1 (131) to
 *   the multicast group it reports (RFC 2710 section 3).
 * - RA guard (RFC 6105): router advertisements and redirects are refused
 *   (ra_guard) unless the port is marked a router (OVL_PORT_ROUTER). A
 *   redirect's target link-layer option names the better first hop, so it is
 *   not held to the port's MAC; the other link-layer options are.
 * - What the parser cannot classify never reaches this check: ovl_wire_parse_frame
 *   fails closed (wire.c), and the engine drops it for a secure port.
 */
#ifndef OVL_PORTSEC_H
#define OVL_PORTSEC_H

#include "ovl.h"

#define OVL_PORT_IPS_MAX 16

typedef struct ovl_portsec {
    uint8_t mac[6];
    uint8_t n_ip4;
    uint8_t n_ip6;
    uint8_t ip4[OVL_PORT_IPS_MAX][4];
    uint8_t ip6[OVL_PORT_IPS_MAX][16];
    uint8_t lla[16];       /* fe80::/64 + EUI-64 of mac */
    uint8_t router;        /* OVL_PORT_ROUTER: may send RAs and redirects */
} ovl_portsec_t;

/* A port's security state for mac; router: OVL_PORT_ROUTER was given. */
void ovl_portsec_init(ovl_portsec_t *s, const uint8_t *mac, int router);
/* Add an address; 0, -EEXIST or -ENOSPC. */
int ovl_portsec_add_ip(ovl_portsec_t *s, int family, const uint8_t *addr);
/* Is the parsed frame f one the port may send? 0, or -(drop reason id). */
int ovl_portsec_check(const ovl_portsec_t *s, const ovl_frame_t *f);

#endif
