/*
 * udp.h — the underlay: receive sockets and the source-port pool.
 *
 * Design notes. A UDP socket's source port is the port it is bound to, so the
 * per-flow source port of RFC 7348 section 5 is had from a pool of sockets,
 * each bound to one port spread over the source range (ovl_source_port picks
 * the slot). Using kernel UDP sockets (not raw ones) keeps UDP GSO/GRO and
 * checksum offload within reach. Receive sockets are bound to the tunnel port,
 * one per worker with SO_REUSEPORT.
 */
#ifndef OVL_UDP_H
#define OVL_UDP_H

#include "fdb.h"

#include <netinet/in.h>
#include <sys/socket.h>

/* Fill sa from (family, addr, port); returns the socklen. */
socklen_t ovl_sockaddr_make(ovl_sockaddr_t *sa, int family, const uint8_t *addr, uint16_t port);
/* Fill a (family, addr, port) with its socket address. */
void ovl_addr_make(ovl_addr_t *a, int family, const uint8_t *addr, uint16_t port);
/* Read (family, addr) back from a received source address; 0 or -1. */
int ovl_sockaddr_parse(const ovl_sockaddr_t *sa, int *family, uint8_t *addr);

/* A receive socket bound to (addr, port); reuseport for several workers. */
int ovl_udp_rx_open(int family, const uint8_t *addr, uint16_t port, int reuseport);
/* A send socket bound to (addr, port), or the first free port in
 * [port, port_max]. csum = 0 turns the outer UDP checksum off. Returns the
 * fd or -errno. */
int ovl_udp_tx_open(int family, const uint8_t *addr, uint16_t port, uint16_t port_max,
                    int csum);

#endif
