/*
 * policy.h — what a port may send: port security (anti-spoofing).
 *
 * A port with security on sends only from its own MAC; its IPv4 packets only
 * from its addresses; its IPv6 packets only from its addresses, the EUI-64
 * link-local address of its MAC, or :: (duplicate address detection); its
 * ARP only with its MAC and one of its addresses (or 0.0.0.0, a probe); its
 * neighbour discovery only with its MAC in link-layer options and its own
 * addresses as advertised targets. DHCPv4 (UDP 68 -> 67 from 0.0.0.0) is let
 * through so a port may learn an address. Tagged frames are refused.
 * Per-port rules and connection tracking join this room later.
 */
#ifndef OVL_POLICY_H
#define OVL_POLICY_H

#include "ovl.h"

#define OVL_PORT_IPS_MAX 16

typedef struct ovl_port_sec {
    uint8_t mac[6];
    uint8_t n_ip4;
    uint8_t n_ip6;
    uint8_t ip4[OVL_PORT_IPS_MAX][4];
    uint8_t ip6[OVL_PORT_IPS_MAX][16];
    uint8_t lla[16];       /* fe80::/64 + EUI-64 of mac */
} ovl_port_sec_t;

void ovl_port_sec_init(ovl_port_sec_t *s, const uint8_t *mac);
/* Add an address; 0, -EEXIST or -ENOSPC. */
int ovl_port_sec_add_ip(ovl_port_sec_t *s, int family, const uint8_t *addr);
/* Is the parsed frame f one the port may send? 0, or -(drop reason id). */
int ovl_port_sec_check(const ovl_port_sec_t *s, const ovl_frame_t *f);

#endif
