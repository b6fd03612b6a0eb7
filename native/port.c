/*
 * port.c — ports: add (a new TAP, or an adopted fd), re-attach (an existing
 * persistent TAP), addresses, remove (see port.h for the design notes).
 *
 * Contracts.
 * - A port is one MAC in one network: its MAC goes into the FDB as a local
 *   entry (next hop: the port) and each address into the neighbour table
 *   (ARP/ND suppression, decap claims), and port security holds the port to
 *   them (portsec.c).
 * - Devices are opened outside the engine's lock (a TAP open may enter a
 *   pod's namespace and talk rtnetlink); the tables change under the writer
 *   lock, and what could refuse the port is checked before any device is
 *   touched. On failure a device this call created is removed and an
 *   attached one is left as found.
 * - A port's queues are watched by their workers' epoll sets from the moment
 *   it is in the tables; its counters start from zero.
 */
#include "counters.h"
#include "network.h"
#include "policy.h"
#include "port.h"
#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

static int check_mac(const uint8_t *mac)
{
    static const uint8_t zero[6];
    /* A port's MAC must be unicast and not all zeros. */
    return (mac[0] & 1) || memcmp(mac, zero, 6) == 0 ? -EINVAL : 0;
}

/* Close the queues fds[0..n) of a TAP; with unpersist, the device goes too. */
static void tap_close(const int *fds, uint32_t n, int unpersist)
{
    if (n && unpersist)
        ovl_tap_unpersist(fds[0]);
    for (uint32_t q = 0; q < n; q++)
        close(fds[q]);
}

/* Stop watching queues 0..n of p. */
static void unwatch(ovl_engine_t *e, ovl_port_t *p, uint32_t n)
{
    for (uint32_t q = 0; q < n; q++)
        ovl_worker_unwatch(ovl_port_queue_worker(e, p, q), p->fds[q]);
}

/* Make the open queues fds[0..n_fds) a port of vni. Caller holds the writer
 * lock. Returns the port id or -errno; on failure the tables are unchanged
 * (the fds stay the caller's). */
static int port_insert(ovl_engine_t *e, uint32_t vni, const int *fds, uint32_t n_fds,
                       const uint8_t *mac, uint32_t flags, uint32_t offloads)
{
    ovl_network_t *n = ovl_network_lookup(e, vni);
    if (!n)
        return -ENOENT;
    if (ovl_fdb_lookup(&e->fdb, vni, mac))
        return -EADDRINUSE;
    uint32_t id = 0;
    while (id < e->cfg.max_ports && e->ports[id].used)
        id++;
    if (id == e->cfg.max_ports)
        return -ENOSPC;
    int rc = ovl_network_port_reserve(n);
    if (rc < 0)
        return rc;
    ovl_port_t *p = &e->ports[id];
    uint32_t gen = p->gen + 1;
    memset(p, 0, sizeof *p);
    p->id = id;
    p->gen = gen & 0xffffff;
    p->n_fds = n_fds;
    memcpy(p->fds, fds, n_fds * sizeof *fds);
    p->flags = flags;
    p->vni = vni;
    p->net_idx = n->idx;
    p->worker = id % e->n_workers;
    p->offloads = offloads;
    p->vnet = (offloads & OVL_OFF_TAP_TSO) != 0;
    ovl_portsec_init(&p->sec, mac, (flags & (OVL_PORT_ROUTER | OVL_PORT_GATEWAY)) != 0);
    if (!ovl_fdb_put_port(e, vni, mac, (int32_t)id))
        return -ENOSPC;
    for (uint32_t q = 0; q < n_fds; q++) {
        rc = ovl_worker_watch(ovl_port_queue_worker(e, p, q), fds[q], OVL_EP_PORT(id, p->gen, q));
        if (rc < 0) {
            unwatch(e, p, q);
            ovl_fdb_forget_port(e, (int32_t)id);
            return rc;
        }
    }
    ovl_counters_reset_port(e, id);
    ovl_network_port_link(n, (int32_t)id);
    p->used = 1;
    return (int)id;
}

/* The one body of ovl_port_add (attach 0: create the TAP) and ovl_port_attach
 * (attach 1: open the existing one): inside namespace netns_fd (-1: the
 * caller's), open queue 0 and, with several workers, one more queue per
 * worker; then make it a port. */
static int port_add_tap(ovl_engine_t *e, uint32_t vni, const char *ifname, int netns_fd,
                        int attach, const uint8_t *mac, uint32_t flags, char *ifname_out)
{
    if (check_mac(mac) < 0 ||
        (flags & ~(uint32_t)(OVL_PORT_NO_SECURITY | OVL_PORT_PERSIST | OVL_PORT_ROUTER |
                             OVL_PORT_GATEWAY | OVL_PORT_POLICY_PENDING)))
        return -EINVAL;
    /* Refuse what port_insert would refuse before touching any device. */
    OVL_RDLOCK(e);
    int rc = !ovl_network_lookup(e, vni)               ? -ENOENT
             : ovl_fdb_lookup(&e->fdb, vni, mac) ? -EADDRINUSE
                                                       : 0;
    OVL_UNLOCK(e);
    if (rc < 0)
        return rc;
    int saved;
    if ((rc = ovl_netns_enter(netns_fd, &saved)) < 0)
        return rc;
    char name[16];
    uint32_t off = e->cfg.offloads & (OVL_OFF_TAP_TSO | OVL_OFF_TAP_USO);
    int mq = e->n_workers > 1;
    int unpersist = !attach && (flags & OVL_PORT_PERSIST);
    int fds[OVL_MAX_WORKERS];
    uint32_t nq = 0;
    int fd;
    if (attach) {
        fd = ovl_tap_attach(ifname, mac, &off, mq);
        snprintf(name, sizeof name, "%s", ifname);
    } else {
        fd = ovl_tap_open(ifname, mac, (flags & OVL_PORT_PERSIST) != 0, &off, mq, name);
    }
    if (fd >= 0)
        fds[nq++] = fd;
    while (fd >= 0 && mq && nq < e->n_workers) {
        int qfd = ovl_tap_open_queue(name, off);
        if (qfd < 0) {
            tap_close(fds, nq, unpersist);
            fd = qfd;
            break;
        }
        fds[nq++] = qfd;
    }
    ovl_netns_leave(saved);
    if (fd < 0)
        return fd;
    /* The queue a pod's frame takes is its flow's owner (engine.h); set on
     * every (re)attach: a persistent TAP may keep an older engine's. */
    int steered = !mq || (e->steer_fd >= 0 && ovl_tap_steer(fds[0], e->steer_fd) == 0);
    OVL_WRLOCK(e);
    rc = port_insert(e, vni, fds, nq, mac, flags, off);
    if (rc >= 0) {
        uint32_t tap = OVL_OFF_TAP_TSO | OVL_OFF_TAP_USO;
        uint32_t have = e->tap_probed ? (e->offloads & tap & off) : off;
        e->offloads = (e->offloads & ~tap) | have;
        e->tap_probed = 1;
        if (!steered)
            e->steering &= ~(uint32_t)OVL_STEER_TAP;
    }
    OVL_UNLOCK(e);
    if (rc < 0) {
        tap_close(fds, nq, unpersist);
        return rc;
    }
    if (ifname_out)
        snprintf(ifname_out, 16, "%s", name);
    return rc;
}

int ovl_port_add(ovl_engine_t *e, uint32_t vni, const char *ifname, int netns_fd,
                 const uint8_t *mac, uint32_t flags, char *ifname_out)
{
    return port_add_tap(e, vni, ifname, netns_fd >= 0 ? netns_fd : e->netns_fd, 0, mac, flags,
                        ifname_out);
}

int ovl_port_attach(ovl_engine_t *e, uint32_t vni, const char *ifname, int netns_fd,
                    const uint8_t *mac, uint32_t flags)
{
    if (!ifname || !*ifname || strlen(ifname) >= 16)
        return -EINVAL;
    /* The device is persistent (no process held it), and so is the port:
     * ovl_port_del removes the device, ovl_engine_destroy leaves it. */
    return port_add_tap(e, vni, ifname, netns_fd >= 0 ? netns_fd : e->netns_fd, 1, mac,
                        flags | OVL_PORT_PERSIST, NULL);
}

int ovl_port_add_fd(ovl_engine_t *e, uint32_t vni, int fd, const uint8_t *mac, uint32_t flags)
{
    if (fd < 0 || check_mac(mac) < 0 ||
        (flags & ~(uint32_t)(OVL_PORT_NO_SECURITY | OVL_PORT_ROUTER | OVL_PORT_GATEWAY |
                             OVL_PORT_UPLINK | OVL_PORT_POLICY_PENDING)))
        return -EINVAL;
    /* An uplink's packet socket speaks virtio-net headers (PACKET_VNET_HDR):
     * super-frames and open checksums both ways, as a TAP with TSO. */
    uint32_t off = 0;
    if (flags & OVL_PORT_UPLINK) {
        if (!(e->cfg.offloads & OVL_OFF_TAP_TSO))
            return -EOPNOTSUPP; /* pods without the header could not take its super-frames */
        flags |= OVL_PORT_NO_SECURITY;
        off = OVL_OFF_TAP_TSO;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    OVL_WRLOCK(e);
    int rc = port_insert(e, vni, &fd, 1, mac, flags, off);
    OVL_UNLOCK(e);
    return rc;
}

int ovl_port_add_ip(ovl_engine_t *e, int port_id, int family, const uint8_t *addr)
{
    if (ovl_addr_len(family) < 0)
        return -EAFNOSUPPORT;
    OVL_WRLOCK(e);
    int rc;
    ovl_port_t *p = ovl_port_get(e, port_id);
    if (!p) {
        rc = -ENOENT;
        goto out;
    }
    const ovl_neigh_val_t *v = ovl_fdb_neigh_lookup(&e->neigh, p->vni, family, addr);
    if (v && memcmp(v->mac, p->sec.mac, 6) != 0) {
        rc = -EADDRINUSE;
        goto out;
    }
    if ((rc = ovl_portsec_add_ip(&p->sec, family, addr)) < 0)
        goto out;
    /* -ENOSPC leaves the address in the port's allow-list: harmless. */
    rc = ovl_fdb_neigh_set(e, p->vni, family, addr, p->sec.mac);
out:
    OVL_UNLOCK(e);
    return rc;
}

/* The body of ovl_port_del (unpersist 1) and ovl_port_detach (unpersist 0). */
static int port_remove(ovl_engine_t *e, int port_id, int unpersist)
{
    OVL_WRLOCK(e);
    ovl_port_t *p = ovl_port_get(e, port_id);
    if (!p) {
        OVL_UNLOCK(e);
        return -ENOENT;
    }
    ovl_network_port_unlink(&e->nets[p->net_idx], port_id);
    ovl_fdb_forget_port(e, port_id);
    for (unsigned i = 0; i < p->sec.n_ip4; i++)
        ovl_fdb_neigh_remove(e, p->vni, 4, p->sec.ip4[i]);
    for (unsigned i = 0; i < p->sec.n_ip6; i++)
        ovl_fdb_neigh_remove(e, p->vni, 6, p->sec.ip6[i]);
    unwatch(e, p, p->n_fds);
    tap_close(p->fds, p->n_fds, unpersist && (p->flags & OVL_PORT_PERSIST));
    ovl_policy_port_clear(p);
    p->used = 0;
    OVL_UNLOCK(e);
    return 0;
}

int ovl_port_del(ovl_engine_t *e, int port_id)
{
    return port_remove(e, port_id, 1);
}

int ovl_port_detach(ovl_engine_t *e, int port_id)
{
    return port_remove(e, port_id, 0);
}
