/*
 * tap.c — TAP devices (see tap.h).
 *
 * Offloads: IFF_VNET_HDR puts a virtio-net header before every frame, and
 * TUNSETOFFLOAD tells the kernel which it may leave to us (checksums, TSO,
 * USO): the pod's stack then hands us super-frames. With several workers a
 * TAP is multi-queue (IFF_MULTI_QUEUE), one queue per worker, and the
 * engine's steering program (TUNSETSTEERINGEBPF, steer.c) picks the queue of
 * each frame a pod sends: the worker that owns its flow (engine.h). Without
 * the program the kernel picks by its own flow hash. Either way a flow stays
 * on one queue and one worker and is never reordered.
 *
 * Re-attaching: a persistent TAP outlives the process that made it, keeping
 * its name, ifindex, addresses and routes in the pod's namespace. A new
 * process opens it again with TUNSETIFF from inside that namespace (the name
 * is looked up in the namespace of the opener). TUNSETIFF alone is not a safe
 * "open existing": it creates a device that is missing, and joins a
 * multi-queue device that another process still serves. ovl_tap_attach
 * therefore asks rtnetlink first (does the name exist, is it a TAP, of which
 * queue mode, with how many queues held) and checks afterwards that the
 * device opened is the one it asked about.
 */
#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_arp.h>
#include <linux/if_link.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
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

/* The ifindex of name in the calling thread's namespace, or -errno. */
static int ifindex(const char *name)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    int rc = ioctl(s, SIOCGIFINDEX, &ifr) < 0 ? -errno : ifr.ifr_ifindex;
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

/* Open /dev/net/tun and bind it to the TAP name with TUNSETIFF (extra_flags:
 * IFF_TUN_EXCL to create only), then ask for *offloads. Where name does not
 * exist TUNSETIFF creates it, not persistent: closing the fd removes it. The
 * name bound goes to name_out when not NULL. Returns the fd or -errno. */
static int tap_bind(const char *name, int multi_queue, int extra_flags, uint32_t *offloads,
                    char *name_out)
{
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = (short)(IFF_TAP | IFF_NO_PI | extra_flags |
                            ((*offloads & OVL_OFF_TAP_TSO) ? IFF_VNET_HDR : 0) |
                            (multi_queue ? IFF_MULTI_QUEUE : 0));
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    int rc = ioctl(fd, TUNSETIFF, &ifr) < 0 ? -errno : tap_offloads(fd, offloads);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    if (name_out)
        snprintf(name_out, IFNAMSIZ, "%s", ifr.ifr_name);
    return fd;
}

int ovl_tap_open_queue(const char *name, uint32_t offloads)
{
    return tap_bind(name, 1, 0, &offloads, NULL);
}

int ovl_tap_open(const char *ifname, const uint8_t *mac, int persist, uint32_t *offloads,
                 int multi_queue, char *name_out)
{
    if (ifname && strlen(ifname) >= IFNAMSIZ)
        return -ENAMETOOLONG;
    char name[IFNAMSIZ];
    /* IFF_TUN_EXCL: an existing device of that name is -EBUSY, never adopted
     * (that is ovl_tap_attach's job, with its own checks). */
    int fd = tap_bind((ifname && *ifname) ? ifname : "ovl%d", multi_queue, IFF_TUN_EXCL,
                      offloads, name);
    if (fd < 0)
        return fd;
    if (persist && ioctl(fd, TUNSETPERSIST, 1) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    if (mac) {
        int rc = set_mac(name, mac);
        if (rc < 0) {
            if (persist)
                ioctl(fd, TUNSETPERSIST, 0);
            close(fd);
            return rc;
        }
    }
    if (name_out)
        snprintf(name_out, IFNAMSIZ, "%s", name);
    return fd;
}

/* What rtnetlink reports about one link. */
typedef struct tap_info {
    int ifindex;
    int is_tun;          /* a device of the tun driver (IFLA_INFO_KIND "tun") */
    int has_data;        /* IFLA_INFO_DATA present (kernel >= 4.15): the fields below */
    int is_tap;          /* IFLA_TUN_TYPE is IFF_TAP */
    int multi_queue;
    uint32_t queues;     /* attached queues, enabled or disabled */
    int has_mac;
    uint8_t mac[6];
} tap_info_t;

static void tap_info_tun(const struct rtattr *data, int len, tap_info_t *ti)
{
    for (const struct rtattr *a = data; RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        unsigned type = a->rta_type & NLA_TYPE_MASK;
        const uint8_t *v = RTA_DATA(a);
        size_t vlen = RTA_PAYLOAD(a);
        uint32_t u32 = 0;
        if (vlen >= 4)
            memcpy(&u32, v, 4);
        if (type == IFLA_TUN_TYPE && vlen >= 1)
            ti->is_tap = v[0] == IFF_TAP;
        else if (type == IFLA_TUN_MULTI_QUEUE && vlen >= 1)
            ti->multi_queue = v[0] != 0;
        else if (type == IFLA_TUN_NUM_QUEUES || type == IFLA_TUN_NUM_DISABLED_QUEUES)
            ti->queues += u32;
    }
}

/* Look link name up in the calling thread's namespace with RTM_GETLINK.
 * Returns 0, -ENODEV when there is no such link, or -errno. A query, not
 * configuration: it guards the open of the TAP fd and so lives beside it. */
static int tap_query(const char *name, tap_info_t *ti)
{
    memset(ti, 0, sizeof *ti);
    size_t nlen = strlen(name) + 1;
    if (nlen > IFNAMSIZ)
        return -ENAMETOOLONG;
    struct {
        struct nlmsghdr nh;
        struct ifinfomsg ifi;
        char attrs[RTA_SPACE(IFNAMSIZ)];
    } req;
    memset(&req, 0, sizeof req);
    req.nh.nlmsg_len = NLMSG_LENGTH(sizeof req.ifi) + RTA_SPACE(nlen);
    req.nh.nlmsg_type = RTM_GETLINK;
    req.nh.nlmsg_flags = NLM_F_REQUEST;
    req.nh.nlmsg_seq = 1;
    req.ifi.ifi_family = AF_UNSPEC;
    struct rtattr *rta = (struct rtattr *)req.attrs;
    rta->rta_type = IFLA_IFNAME;
    rta->rta_len = RTA_LENGTH(nlen);
    memcpy(RTA_DATA(rta), name, nlen);

    int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (s < 0)
        return -errno;
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    int rc = 0;
    if (sendto(s, &req, req.nh.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
        rc = -errno;
        close(s);
        return rc;
    }
    /* One link's message is a few KB; the buffer is aligned for nlmsghdr. */
    union {
        struct nlmsghdr nh;
        char buf[32768];
    } resp;
    ssize_t n;
    do
        n = recv(s, &resp, sizeof resp, MSG_TRUNC);
    while (n < 0 && errno == EINTR);
    rc = n < 0 ? -errno : 0;
    close(s);
    if (rc < 0)
        return rc;
    if ((size_t)n > sizeof resp)
        return -EMSGSIZE;
    const struct nlmsghdr *h = &resp.nh;
    if ((size_t)n < sizeof *h || h->nlmsg_len < sizeof *h || h->nlmsg_len > (size_t)n)
        return -EIO;
    if (h->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr *err = NLMSG_DATA(h);
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof *err))
            return -EIO;
        return err->error < 0 ? err->error : -EIO;
    }
    if (h->nlmsg_type != RTM_NEWLINK || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifinfomsg)))
        return -EIO;
    const struct ifinfomsg *ifi = NLMSG_DATA(h);
    ti->ifindex = ifi->ifi_index;
    int len = (int)IFLA_PAYLOAD(h);
    for (const struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        unsigned type = a->rta_type & NLA_TYPE_MASK;
        if (type == IFLA_ADDRESS && RTA_PAYLOAD(a) == 6) {
            memcpy(ti->mac, RTA_DATA(a), 6);
            ti->has_mac = 1;
        }
        if (type != IFLA_LINKINFO)
            continue;
        int l2 = (int)RTA_PAYLOAD(a);
        for (const struct rtattr *b = RTA_DATA(a); RTA_OK(b, l2); b = RTA_NEXT(b, l2)) {
            unsigned bt = b->rta_type & NLA_TYPE_MASK;
            if (bt == IFLA_INFO_KIND)
                ti->is_tun = RTA_PAYLOAD(b) >= 4 && memcmp(RTA_DATA(b), "tun", 4) == 0;
            else if (bt == IFLA_INFO_DATA) {
                ti->has_data = 1;
                tap_info_tun(RTA_DATA(b), (int)RTA_PAYLOAD(b), ti);
            }
        }
    }
    return 0;
}

int ovl_tap_attach(const char *ifname, const uint8_t *mac, uint32_t *offloads, int multi_queue)
{
    if (!ifname || !*ifname)
        return -EINVAL;
    tap_info_t ti;
    int rc = tap_query(ifname, &ti);
    if (rc < 0)
        return rc;
    if (!ti.is_tun || (ti.has_data && !ti.is_tap))
        return -EMEDIUMTYPE;
    if (ti.has_data && ti.multi_queue != (multi_queue != 0))
        return -ECHRNG;
    /* TUNSETIFF would attach one more queue to a multi-queue device that
     * another process serves; only a single-queue one refuses (EBUSY). */
    if (ti.has_data && ti.queues > 0)
        return -EBUSY;
    char name[IFNAMSIZ];
    int fd = tap_bind(ifname, multi_queue, 0, offloads, name);
    if (fd == -EINVAL && !ti.has_data)
        return -ECHRNG; /* an older kernel: the queue mode is what TUNSETIFF refused */
    if (fd < 0)
        return fd;
    /* The device went away after the query and TUNSETIFF made a new one: it is
     * not persistent, so closing the fd removes it again. */
    if (ifindex(name) != ti.ifindex) {
        close(fd);
        return -ENODEV;
    }
    if (mac && (!ti.has_mac || memcmp(ti.mac, mac, 6) != 0)) {
        rc = set_mac(name, mac);
        if (rc < 0) {
            close(fd);
            return rc;
        }
    }
    return fd;
}

int ovl_tap_steer(int fd, int prog_fd)
{
    return ioctl(fd, TUNSETSTEERINGEBPF, &prog_fd) < 0 ? -errno : 0;
}

void ovl_tap_unpersist(int fd)
{
    (void)ioctl(fd, TUNSETPERSIST, 0);
}
