/*
 * port.c — TAP devices (see port.h).
 *
 * Room is left for the offloads of a later step (IFF_VNET_HDR, TUNSETOFFLOAD,
 * IFF_MULTI_QUEUE): they are flags on the same TUNSETIFF call.
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

int ovl_tap_open(const char *ifname, const uint8_t *mac, int persist, char *name_out)
{
    if (ifname && strlen(ifname) >= IFNAMSIZ)
        return -ENAMETOOLONG;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", (ifname && *ifname) ? ifname : "ovl%d");
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int err = -errno;
        close(fd);
        return err;
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
