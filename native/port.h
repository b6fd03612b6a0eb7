/*
 * port.h — TAP devices: open, name, MAC, persistence.
 *
 * The TAP fd is opened here, in C, in the engine's namespace; moving the
 * device into a pod's namespace is netlink work done by the control plane
 * (pyroute2). The fd keeps working across the move.
 */
#ifndef OVL_PORT_H
#define OVL_PORT_H

#include "ovl.h"

/* Open /dev/net/tun as a TAP (IFF_TAP | IFF_NO_PI), non-blocking, named
 * ifname ("" for "ovl%d"); the chosen name is written to name_out (16
 * bytes). Sets the device's MAC when mac is not NULL. With OVL_OFF_TAP_TSO
 * in *offloads, frames carry a virtio-net header and the TAP takes checksum
 * and segmentation offloads (USO too with OVL_OFF_TAP_USO, where the kernel
 * has it); *offloads is reduced to what the kernel accepted. Returns the fd
 * or -errno. */
int ovl_tap_open(const char *ifname, const uint8_t *mac, int persist, uint32_t *offloads,
                 int multi_queue, char *name_out);

/* Open one more queue of the multi-queue TAP name (opened by ovl_tap_open
 * with multi_queue), with the same offloads. Returns the fd or -errno. */
int ovl_tap_open_queue(const char *name, uint32_t offloads);

/* Clear persistence so the device goes away when fd closes. */
void ovl_tap_unpersist(int fd);

#endif
