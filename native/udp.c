/* udp.c — underlay sockets (see udp.h). */
#include "udp.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/udp.h>
#include <unistd.h>

#ifndef UDP_NO_CHECK6_TX
#define UDP_NO_CHECK6_TX 101
#endif
#ifndef SO_NO_CHECK
#define SO_NO_CHECK 11
#endif

#define OVL_SOCKBUF_BYTES (4 * 1024 * 1024)

socklen_t ovl_sockaddr_make(ovl_sockaddr_t *sa, int family, const uint8_t *addr, uint16_t port)
{
    memset(sa, 0, sizeof *sa);
    if (family == 4) {
        sa->in4.sin_family = AF_INET;
        sa->in4.sin_port = htons(port);
        memcpy(&sa->in4.sin_addr, addr, 4);
        return sizeof sa->in4;
    }
    sa->in6.sin6_family = AF_INET6;
    sa->in6.sin6_port = htons(port);
    memcpy(&sa->in6.sin6_addr, addr, 16);
    return sizeof sa->in6;
}

void ovl_addr_make(ovl_addr_t *a, int family, const uint8_t *addr, uint16_t port)
{
    memset(a, 0, sizeof *a);
    a->family = (uint8_t)family;
    a->port = port;
    memcpy(a->addr, addr, family == 4 ? 4 : 16);
    a->salen = ovl_sockaddr_make(&a->sa, family, addr, port);
}

int ovl_sockaddr_parse(const ovl_sockaddr_t *sa, int *family, uint8_t *addr)
{
    if (sa->sa.sa_family == AF_INET) {
        *family = 4;
        memcpy(addr, &sa->in4.sin_addr, 4);
        return 0;
    }
    if (sa->sa.sa_family == AF_INET6) {
        *family = 6;
        memcpy(addr, &sa->in6.sin6_addr, 16);
        return 0;
    }
    return -1;
}

static void big_buffers(int fd)
{
    int v = OVL_SOCKBUF_BYTES;
    /* SO_*BUFFORCE lifts the sysctl cap when we are privileged; else best effort. */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof v) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof v) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
}

static int open_bound(int family, const uint8_t *addr, uint16_t port, int reuseport)
{
    int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (family == 6)
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    ovl_sockaddr_t sa;
    socklen_t len = ovl_sockaddr_make(&sa, family, addr, port);
    if (bind(fd, &sa.sa, len) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

int ovl_udp_rx_open(int family, const uint8_t *addr, uint16_t port, int reuseport)
{
    int fd = open_bound(family, addr, port, reuseport);
    if (fd >= 0)
        big_buffers(fd);
    return fd;
}

int ovl_udp_tx_open(int family, const uint8_t *addr, uint16_t port, uint16_t port_max,
                    int csum)
{
    int fd = -EADDRINUSE;
    for (uint32_t p = port; p <= port_max; p++) {
        fd = open_bound(family, addr, (uint16_t)p, 0);
        if (fd != -EADDRINUSE)
            break;
    }
    if (fd < 0)
        return fd;
    big_buffers(fd);
    if (!csum) {
        int one = 1;
        int rc = family == 4 ? setsockopt(fd, SOL_SOCKET, SO_NO_CHECK, &one, sizeof one)
                             : setsockopt(fd, IPPROTO_UDP, UDP_NO_CHECK6_TX, &one, sizeof one);
        if (rc < 0) {
            int err = -errno;
            close(fd);
            return err;
        }
    }
    return fd;
}
