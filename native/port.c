/*
 * port.c — TAP devices (see port.h).
 *
 * Offloads: IFF_VNET_HDR puts a virtio-net header before every frame, and
 * TUNSETOFFLOAD tells the kernel which it may leave to us (checksums, TSO,
 * USO): the pod's stack then hands us super-frames. With several workers a
 * TAP is multi-queue (IFF_MULTI_QUEUE), one queue per worker: the kernel
 * picks a pod's transmit queue by flow hash, so a flow stays on one queue
 * and one worker and is never reordered.
 */
#include "port.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_arp.h>
#include <linux/if_tun.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int set_mac(const char *name, const uint8_t *mac)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
    memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
    int rc = ioctl(s, SIOCSIFHWADDR, &ifr) < 0 ? -errno : 0;
    close(s);
    return rc;
}

#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#define TUN_F_USO6 0x40
#endif

/* Ask for the TAP offloads in *offloads, falling back to fewer; 0 or -errno. */
static int tap_offloads(int fd, uint32_t *offloads)
{
    if (!(*offloads & OVL_OFF_TAP_TSO)) {
        *offloads &= ~(uint32_t)OVL_OFF_TAP_USO;
        return 0;
    }
    int hdr = 10;
    if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0)
        return -errno;
    unsigned base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
    if ((*offloads & OVL_OFF_TAP_USO) && ioctl(fd, TUNSETOFFLOAD, base | TUN_F_USO4 | TUN_F_USO6) == 0)
        return 0;
    *offloads &= ~(uint32_t)OVL_OFF_TAP_USO;
    if (ioctl(fd, TUNSETOFFLOAD, base) == 0)
        return 0;
    return -errno;
}

int ovl_tap_open_queue(const char *name, uint32_t offloads)
{
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE | ((offloads & OVL_OFF_TAP_TSO) ? IFF_VNET_HDR : 0);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    uint32_t off = offloads;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0 || tap_offloads(fd, &off) < 0) {
        int err = -errno;
        close(fd);
        return err ? err : -EIO;
    }
    return fd;
}

int ovl_tap_open(const char *ifname, const uint8_t *mac, int persist, uint32_t *offloads,
                 int multi_queue, char *name_out)
{
    if (ifname && strlen(ifname) >= IFNAMSIZ)
        return -ENAMETOOLONG;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | ((*offloads & OVL_OFF_TAP_TSO) ? IFF_VNET_HDR : 0) |
                    (multi_queue ? IFF_MULTI_QUEUE : 0);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", (ifname && *ifname) ? ifname : "ovl%d");
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    int orc = tap_offloads(fd, offloads);
    if (orc < 0) {
        close(fd);
        return orc;
    }
    if (persist && ioctl(fd, TUNSETPERSIST, 1) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    if (mac) {
        int rc = set_mac(ifr.ifr_name, mac);
        if (rc < 0) {
            if (persist)
                ioctl(fd, TUNSETPERSIST, 0);
            close(fd);
            return rc;
        }
    }
    if (name_out)
        snprintf(name_out, IFNAMSIZ, "%s", ifr.ifr_name);
    return fd;
}

void ovl_tap_unpersist(int fd)
{
    (void)ioctl(fd, TUNSETPERSIST, 0);
}
