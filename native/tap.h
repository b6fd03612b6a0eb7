/*
 * tap.h — TAP devices: open, name, MAC, persistence, offloads.
 *
 * The TAP fd is opened here, in C, in the namespace of the calling thread
 * (the engine enters its own, or a pod's, first); moving the device into a
 * pod's namespace is netlink work done by the control plane (pyroute2). The
 * fd keeps working across the move. This room owns the device only: frames
 * are read from a TAP queue by encap.c (a burst per wake-up) and written to
 * it by deliver.c (the one way into a pod); port.c makes a device a port.
 */
#ifndef OVL_TAP_H
#define OVL_TAP_H

#include "ovl.h"

/* Create a TAP (IFF_TAP | IFF_NO_PI), non-blocking, named ifname ("" for
 * "ovl%d") in the calling thread's namespace; the chosen name is written to
 * name_out (16 bytes). Never opens an existing device: -EBUSY when ifname
 * exists. Sets the device's MAC when mac is not NULL. With OVL_OFF_TAP_TSO
 * in *offloads, frames carry a virtio-net header and the TAP takes checksum
 * and segmentation offloads (USO too with OVL_OFF_TAP_USO, where the kernel
 * has it); *offloads is reduced to what the kernel accepted. Returns the fd
 * (queue 0) or -errno; on failure no device is left behind. */
int ovl_tap_open(const char *ifname, const uint8_t *mac, int persist, uint32_t *offloads,
                 int multi_queue, char *name_out);

/* Open the existing TAP ifname of the calling thread's namespace (a
 * persistent one that no process holds), with offloads as ovl_tap_open.
 * Never creates a device and never changes its persistence. The device's MAC
 * is set to mac only where it differs. multi_queue must match how the device
 * was created. Returns the fd (queue 0) or -errno:
 *   -ENODEV       there is no interface ifname
 *   -EMEDIUMTYPE  ifname is not a TAP device (another kind, or a TUN)
 *   -ECHRNG       ifname is multi-queue and multi_queue is 0, or the reverse
 *   -EBUSY        another file holds a queue of ifname
 * The MAC is the last thing set: on failure the device is left as found. */
int ovl_tap_attach(const char *ifname, const uint8_t *mac, uint32_t *offloads, int multi_queue);

/* Open one more queue of the multi-queue TAP name (opened by ovl_tap_open
 * or ovl_tap_attach with multi_queue), with the same offloads. Returns the
 * fd or -errno. */
int ovl_tap_open_queue(const char *name, uint32_t offloads);

/* Have the TAP behind queue fd choose the queue of each frame a pod sends
 * by the eBPF program prog_fd (TUNSETSTEERINGEBPF: the program's value,
 * modulo the queues); the device keeps it until another replaces it. 0 or
 * -errno. */
int ovl_tap_steer(int fd, int prog_fd);

/* Clear persistence so the device goes away when fd closes. */
void ovl_tap_unpersist(int fd);

#endif
