/*
 * engine.c — the engine's life cycle, its control API (networks, VTEPs,
 * ports, FDB, neighbours), counters and events. The two packet directions
 * live in encap.c (TAP -> underlay) and decap.c (underlay -> TAP); see
 * engine.h for the design notes.
 */
#include "engine.h"
#include "internal.h"
#include "port.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <netinet/udp.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* ---- small helpers ---- */

uint64_t ovl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int addr_len(int family)
{
    return family == 4 ? 4 : family == 6 ? 16 : -1;
}

#define WRLOCK(e) pthread_rwlock_wrlock(&(e)->lock)
#define UNLOCK(e) pthread_rwlock_unlock(&(e)->lock)

/* Enter the network namespace behind netns_fd (-1: stay) for this thread;
 * *saved restores it (netns_leave). */
static int netns_enter(int netns_fd, int *saved)
{
    *saved = -1;
    if (netns_fd < 0)
        return 0;
    int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (setns(netns_fd, CLONE_NEWNET) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    *saved = fd;
    return 0;
}

static void netns_leave(int saved)
{
    if (saved >= 0) {
        (void)setns(saved, CLONE_NEWNET);
        close(saved);
    }
}

/* ---- events ---- */

void ovl_event_push(ovl_worker_t *w, const ovl_event_t *ev)
{
    ovl_engine_t *e = w->e;
    /* Never block a worker on the control plane: a busy ring loses the event. */
    if (pthread_mutex_trylock(&e->ev_lock) != 0) {
        ovl_count(w, OVL_C_EVENTS_LOST, 1);
        return;
    }
    if (e->ev_head - e->ev_tail >= e->ev_cap) {
        pthread_mutex_unlock(&e->ev_lock);
        ovl_count(w, OVL_C_EVENTS_LOST, 1);
        return;
    }
    int was_empty = e->ev_head == e->ev_tail;
    e->ev[e->ev_head & (e->ev_cap - 1)] = *ev;
    e->ev_head++;
    pthread_mutex_unlock(&e->ev_lock);
    ovl_count(w, OVL_C_EVENTS, 1);
    if (was_empty) {
        uint64_t one = 1;
        ssize_t r = write(e->ev_fd, &one, sizeof one);
        (void)r;
    }
}

int ovl_engine_event_fd(ovl_engine_t *e)
{
    return e->ev_fd;
}

int ovl_engine_events(ovl_engine_t *e, ovl_event_t *out, size_t n)
{
    uint64_t v;
    ssize_t r = read(e->ev_fd, &v, sizeof v); /* reset readiness; more may follow */
    (void)r;
    pthread_mutex_lock(&e->ev_lock);
    size_t k = 0;
    while (k < n && e->ev_tail != e->ev_head) {
        out[k++] = e->ev[e->ev_tail & (e->ev_cap - 1)];
        e->ev_tail++;
    }
    int more = e->ev_tail != e->ev_head;
    pthread_mutex_unlock(&e->ev_lock);
    if (more) {
        uint64_t one = 1;
        r = write(e->ev_fd, &one, sizeof one);
        (void)r;
    }
    return (int)k;
}

/* ---- life cycle ---- */

void ovl_engine_config_default(ovl_engine_config_t *c)
{
    memset(c, 0, sizeof *c);
    c->encap = OVL_ENCAP_VXLAN;
    c->family = 4;
    c->udp_port = 0;
    c->sport_lo = 49152;
    c->sport_hi = 65535;
    c->sport_slots = 16;
    c->udp_csum = 1;
    c->frame_max = 1518;
    c->batch = 64;
    c->workers = 1;
    c->max_ports = 1024;
    c->max_networks = 1024;
    c->fdb_size = 65536;
    c->event_ring = 4096;
    c->netns_fd = -1;
    c->offloads = OVL_OFF_ALL;
}

static int check_config(const ovl_engine_config_t *c)
{
    if (c->encap != OVL_ENCAP_VXLAN && c->encap != OVL_ENCAP_GENEVE)
        return -EINVAL;
    if (c->family != 4 && c->family != 6)
        return -EAFNOSUPPORT;
    if (c->sport_lo == 0 || c->sport_hi < c->sport_lo || c->sport_slots == 0 ||
        c->sport_slots > 1024 || c->sport_slots > (uint32_t)(c->sport_hi - c->sport_lo) + 1)
        return -ERANGE;
    if (c->frame_max < 60 || c->frame_max > 65535 || c->batch == 0 || c->batch > 1024)
        return -ERANGE;
    if (c->workers == 0 || c->workers > OVL_MAX_WORKERS)
        return -ERANGE;
    if (c->offloads & ~(uint32_t)OVL_OFF_ALL)
        return -EINVAL;
    if (c->busy_poll_us > 1000000)
        return -ERANGE;
    if (c->underlay_mtu && (c->underlay_mtu < 576 || c->underlay_mtu > 65535))
        return -ERANGE;
    if (c->max_ports == 0 || c->max_ports > (1u << 20) || c->max_networks == 0 ||
        c->max_networks > (1u << 20) || c->fdb_size == 0 || c->event_ring == 0 ||
        c->event_ring > (1u << 20))
        return -ERANGE;
    return 0;
}

static void worker_free(ovl_worker_t *w)
{
    if (!w)
        return;
    if (w->epfd >= 0)
        close(w->epfd);
    if (w->rx_fd >= 0)
        close(w->rx_fd);
    free(w->tap_bufs);
    free(w->rx_bufs);
    free(w->rx_ctrl);
    free(w->rx_msgs);
    free(w->rx_iov);
    free(w->rx_names);
    free(w->txq);
    free(w->tx_iov);
    free(w->tx_iov2);
    free(w->tx_mmsg);
    free(w->tx_ctrl);
    free(w->tx_order);
    free(w->seg_hdrs);
    free(w);
}

static int epoll_add(int epfd, int fd, uint64_t data)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = data };
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static int worker_make(ovl_engine_t *e, uint32_t idx, ovl_worker_t **out)
{
    const ovl_engine_config_t *c = &e->cfg;
    ovl_worker_t *w = aligned_alloc(64, (sizeof(ovl_worker_t) + 63) & ~(size_t)63);
    if (!w)
        return -ENOMEM;
    memset(w, 0, sizeof *w);
    w->e = e;
    w->idx = idx;
    w->epfd = -1;
    w->rx_fd = -1;
    w->gro.port_id = -1;
    /* With TAP offloads a read may be a 64 KB super-frame; with UDP GRO a
     * receive may be up to 64 KB of coalesced datagrams. */
    size_t tap_max = (c->offloads & OVL_OFF_TAP_TSO) ? OVL_SUPER_MAX + OVL_VNET_HLEN : c->frame_max;
    size_t rx_max = (e->offloads & OVL_OFF_UDP_GRO) ? OVL_SUPER_MAX
                                                     : OVL_GENEVE_HLEN + OVL_GENEVE_OPTS_MAX + c->frame_max;
    w->tap_buf_size = (uint32_t)((OVL_HEADROOM + tap_max + 64 + 63) & ~(size_t)63);
    w->rx_buf_size = (uint32_t)((rx_max + 64 + 63) & ~(size_t)63);
    w->rx_batch = c->batch;
    size_t b = c->batch;
    w->tap_bufs = malloc(b * w->tap_buf_size);
    w->rx_bufs = malloc(b * w->rx_buf_size);
    w->rx_ctrl = calloc(b, OVL_RX_CTRL);
    w->rx_msgs = calloc(b, sizeof *w->rx_msgs);
    w->rx_iov = calloc(b, sizeof *w->rx_iov);
    w->rx_names = calloc(b, sizeof *w->rx_names);
    w->txq = calloc(OVL_TX_MSGS, sizeof *w->txq);
    w->tx_iov = calloc(OVL_TX_IOVS, sizeof *w->tx_iov);
    w->tx_iov2 = calloc(OVL_TX_IOVS, sizeof *w->tx_iov2);
    w->tx_mmsg = calloc(OVL_TX_MSGS, sizeof *w->tx_mmsg);
    w->tx_ctrl = aligned_alloc(64, OVL_TX_MSGS * OVL_TX_CTRL);
    w->tx_order = calloc(OVL_TX_MSGS, sizeof *w->tx_order);
    w->seg_hdrs = malloc((size_t)OVL_SEG_SLOTS * OVL_SEG_HDR_MAX);
    if (!w->tap_bufs || !w->rx_bufs || !w->rx_ctrl || !w->rx_msgs || !w->rx_iov ||
        !w->rx_names || !w->txq || !w->tx_iov || !w->tx_iov2 || !w->tx_mmsg || !w->tx_ctrl ||
        !w->tx_order || !w->seg_hdrs) {
        worker_free(w);
        return -ENOMEM;
    }
    for (size_t i = 0; i < b; i++) {
        w->rx_iov[i].iov_base = w->rx_bufs + i * w->rx_buf_size;
        w->rx_iov[i].iov_len = w->rx_buf_size;
        w->rx_msgs[i].msg_hdr.msg_iov = &w->rx_iov[i];
        w->rx_msgs[i].msg_hdr.msg_iovlen = 1;
        w->rx_msgs[i].msg_hdr.msg_name = &w->rx_names[i];
        w->rx_msgs[i].msg_hdr.msg_control = w->rx_ctrl + i * OVL_RX_CTRL;
    }
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (w->epfd < 0) {
        int err = -errno;
        worker_free(w);
        return err;
    }
    int fd = ovl_udp_rx_open(c->family, c->local_addr, e->udp_port, c->workers > 1);
    if (fd < 0) {
        worker_free(w);
        return fd;
    }
    w->rx_fd = fd;
    if (e->offloads & OVL_OFF_UDP_GRO) {
        int one = 1;
        if (setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) < 0)
            e->offloads &= ~(uint32_t)OVL_OFF_UDP_GRO; /* the first worker finds out */
    }
    int rc = epoll_add(w->epfd, fd, OVL_EP_UDP);
    if (rc == 0)
        rc = epoll_add(w->epfd, e->stop_fd, OVL_EP_STOP);
    if (rc < 0) {
        worker_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

void ovl_engine_destroy(ovl_engine_t *e)
{
    if (!e)
        return;
    ovl_engine_stop(e);
    for (uint32_t i = 0; e->ports && i < e->cfg.max_ports; i++)
        if (e->ports[i].used)
            for (uint32_t q = 0; q < e->ports[i].n_fds; q++)
                close(e->ports[i].fds[q]); /* persistent TAPs outlive us on purpose */
    for (uint32_t i = 0; e->nets && i < e->cfg.max_networks; i++) {
        free(e->nets[i].vteps);
        free(e->nets[i].ports);
    }
    for (uint32_t i = 0; i < e->n_workers; i++)
        worker_free(e->workers[i]);
    for (uint16_t i = 0; e->tx_fds && i < e->n_slots; i++)
        if (e->tx_fds[i] >= 0)
            close(e->tx_fds[i]);
    free(e->tx_fds);
    free(e->nets);
    free(e->ports);
    free(e->ev);
    ovl_map_free(&e->net_by_vni);
    ovl_map_free(&e->fdb);
    ovl_map_free(&e->neigh);
    ovl_map_free(&e->members);
    if (e->stop_fd >= 0)
        close(e->stop_fd);
    if (e->ev_fd >= 0)
        close(e->ev_fd);
    if (e->netns_fd >= 0)
        close(e->netns_fd);
    pthread_rwlock_destroy(&e->lock);
    pthread_mutex_destroy(&e->ev_lock);
    free(e);
}

int ovl_engine_create(const ovl_engine_config_t *cfg, ovl_engine_t **out)
{
    int rc = check_config(cfg);
    if (rc < 0)
        return rc;
    ovl_engine_t *e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    e->cfg = *cfg;
    e->netns_fd = e->stop_fd = e->ev_fd = -1;
    pthread_rwlock_init(&e->lock, NULL);
    pthread_mutex_init(&e->ev_lock, NULL);
    const ovl_engine_config_t *c = &e->cfg;
    e->udp_port = c->udp_port ? c->udp_port
                              : (c->encap == OVL_ENCAP_VXLAN ? OVL_VXLAN_PORT : OVL_GENEVE_PORT);
    e->ev_cap = 1;
    while (e->ev_cap < c->event_ring)
        e->ev_cap <<= 1;
    e->ev = calloc(e->ev_cap, sizeof *e->ev);
    e->nets = calloc(c->max_networks, sizeof *e->nets);
    e->ports = calloc(c->max_ports, sizeof *e->ports);
    e->n_slots = c->sport_slots;
    e->tx_fds = malloc(e->n_slots * sizeof *e->tx_fds);
    if (!e->ev || !e->nets || !e->ports || !e->tx_fds) {
        rc = -ENOMEM;
        goto fail;
    }
    for (uint16_t i = 0; i < e->n_slots; i++)
        e->tx_fds[i] = -1;
    if ((rc = ovl_map_init(&e->net_by_vni, c->max_networks, sizeof(uint32_t), sizeof(uint32_t))) ||
        (rc = ovl_map_init(&e->fdb, c->fdb_size, sizeof(ovl_fdb_key_t), sizeof(ovl_fdb_val_t))) ||
        (rc = ovl_map_init(&e->neigh, c->fdb_size, sizeof(ovl_neigh_key_t), sizeof(ovl_neigh_val_t))) ||
        (rc = ovl_map_init(&e->members, c->fdb_size, sizeof(ovl_member_key_t), 0)))
        goto fail;
    e->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->ev_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->stop_fd < 0 || e->ev_fd < 0) {
        rc = -errno;
        goto fail;
    }
    if (c->netns_fd >= 0) {
        e->netns_fd = fcntl(c->netns_fd, F_DUPFD_CLOEXEC, 0);
        if (e->netns_fd < 0) {
            rc = -errno;
            goto fail;
        }
    }
    int saved;
    if ((rc = netns_enter(e->netns_fd, &saved)) < 0)
        goto fail;
    /* The source-port pool: slot i is bound to the first free port from the
     * one ovl_source_port gives for slot i. */
    uint32_t span = (uint32_t)(c->sport_hi - c->sport_lo) + 1;
    for (uint16_t i = 0; i < e->n_slots && rc == 0; i++) {
        uint16_t first = (uint16_t)(c->sport_lo + (uint64_t)i * span / e->n_slots);
        uint16_t last = (uint16_t)(c->sport_lo + (uint64_t)(i + 1) * span / e->n_slots - 1);
        int fd = ovl_udp_tx_open(c->family, c->local_addr, first, last, c->udp_csum);
        if (fd < 0)
            rc = fd;
        else
            e->tx_fds[i] = fd;
    }
    /* Probe the underlay offloads. UDP GSO needs the outer checksum. */
    e->offloads = c->offloads;
    if (rc == 0 && (e->offloads & OVL_OFF_UDP_GSO)) {
        int v = 1400, z = 0;
        if (!c->udp_csum || setsockopt(e->tx_fds[0], SOL_UDP, UDP_SEGMENT, &v, sizeof v) < 0)
            e->offloads &= ~(uint32_t)OVL_OFF_UDP_GSO;
        else
            (void)setsockopt(e->tx_fds[0], SOL_UDP, UDP_SEGMENT, &z, sizeof z);
    }
    if (rc == 0 && (e->offloads & OVL_OFF_UDP_GRO)) {
        /* Probe on a scratch socket so that every worker is sized alike. */
        int s = socket(c->family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0), one = 1;
        if (s < 0 || setsockopt(s, SOL_UDP, UDP_GRO, &one, sizeof one) < 0)
            e->offloads &= ~(uint32_t)OVL_OFF_UDP_GRO;
        if (s >= 0)
            close(s);
    }
    e->n_workers = 0;
    for (uint32_t i = 0; i < c->workers && rc == 0; i++) {
        rc = worker_make(e, i, &e->workers[i]);
        if (rc == 0)
            e->n_workers++;
    }
    netns_leave(saved);
    if (rc < 0)
        goto fail;
    *out = e;
    return 0;
fail:
    ovl_engine_destroy(e);
    return rc;
}

int ovl_engine_udp_port(ovl_engine_t *e)
{
    return e->udp_port;
}

uint32_t ovl_engine_offloads(ovl_engine_t *e)
{
    uint32_t tap = OVL_OFF_TAP_TSO | OVL_OFF_TAP_USO;
    return e->tap_probed ? e->offloads : e->offloads & ~tap;
}

int ovl_engine_start(ovl_engine_t *e)
{
    if (e->running)
        return 0;
    for (uint32_t i = 0; i < e->n_workers; i++) {
        int rc = pthread_create(&e->workers[i]->thread, NULL, ovl_worker_main, e->workers[i]);
        if (rc != 0) {
            ovl_engine_stop(e);
            return -rc;
        }
        e->workers[i]->started = 1;
        e->running = 1;
    }
    return 0;
}

int ovl_engine_stop(ovl_engine_t *e)
{
    if (!e->running)
        return 0;
    uint64_t one = 1;
    ssize_t r = write(e->stop_fd, &one, sizeof one);
    (void)r;
    for (uint32_t i = 0; i < e->n_workers; i++) {
        if (e->workers[i]->started) {
            pthread_join(e->workers[i]->thread, NULL);
            e->workers[i]->started = 0;
        }
    }
    uint64_t v;
    r = read(e->stop_fd, &v, sizeof v);
    (void)r;
    e->running = 0;
    return 0;
}

/* ---- networks ---- */

ovl_network_t *ovl_net_lookup(ovl_engine_t *e, uint32_t vni)
{
    uint32_t *idx = ovl_map_get(&e->net_by_vni, &vni);
    return idx ? &e->nets[*idx] : NULL;
}

/* The largest frame a pod of a network may send: what frame_max allows and
 * what one datagram with the network's tunnel header (hdr_len bytes) carries,
 * on the underlay MTU when one is configured: VXLAN takes 50 bytes over IPv4
 * and 70 over IPv6 (outer IP, UDP, 8 bytes of VXLAN, counting the inner
 * Ethernet header the pod's MTU leaves out), Geneve as much plus its option
 * bytes. Without an underlay MTU, a UDP datagram's own limit still holds. */
static uint32_t frame_limit(const ovl_engine_config_t *c, size_t hdr_len)
{
    size_t ip = c->family == 4 ? 20 : 40;
    size_t limit = c->frame_max;
    size_t udp_max = 65535 - (c->family == 4 ? ip : 0) - 8 - hdr_len;
    if (udp_max < limit)
        limit = udp_max;
    if (c->underlay_mtu) {
        size_t room = c->underlay_mtu > ip + 8 + hdr_len ? c->underlay_mtu - ip - 8 - hdr_len : 0;
        if (room < limit)
            limit = room;
    }
    return (uint32_t)limit;
}

static int net_build_header(ovl_engine_t *e, ovl_network_t *n, const uint8_t *tlv, size_t len)
{
    ovl_tunnel_t t;
    memset(&t, 0, sizeof t);
    t.vni = n->vni;
    t.protocol = OVL_ETH_P_TEB;
    t.flags = e->cfg.encap == OVL_ENCAP_VXLAN ? 0x08 : 0;
    if (len > OVL_GENEVE_OPTS_MAX)
        return -EINVAL;
    if (len) {
        if (e->cfg.encap != OVL_ENCAP_GENEVE)
            return -EPROTONOSUPPORT;
        memcpy(t.opts, tlv, len);
        t.opts_len = (uint8_t)len;
    }
    uint8_t hdr[sizeof n->hdr];
    int hl = ovl_wire_encode(e->cfg.encap, &t, hdr, sizeof hdr);
    if (hl < 0)
        return -EINVAL;
    memcpy(n->hdr, hdr, (size_t)hl);
    n->hdr_len = (uint16_t)hl;
    n->frame_limit = frame_limit(&e->cfg, (size_t)hl);
    return 0;
}

int ovl_network_add(ovl_engine_t *e, uint32_t vni, uint32_t flags)
{
    if (vni > OVL_VNI_MAX)
        return -ERANGE;
    if (flags & ~(uint32_t)OVL_NET_LEARNING)
        return -EINVAL;
    WRLOCK(e);
    int rc = 0;
    if (ovl_net_lookup(e, vni)) {
        rc = -EEXIST;
        goto out;
    }
    uint32_t idx = 0;
    while (idx < e->cfg.max_networks && e->nets[idx].used)
        idx++;
    if (idx == e->cfg.max_networks) {
        rc = -ENOSPC;
        goto out;
    }
    ovl_network_t *n = &e->nets[idx];
    free(n->vteps);
    free(n->ports);
    memset(n, 0, sizeof *n);
    n->vni = vni;
    n->flags = flags;
    if ((rc = net_build_header(e, n, NULL, 0)) < 0)
        goto out;
    uint32_t *slot = ovl_map_put(&e->net_by_vni, &vni, NULL);
    if (!slot) {
        rc = -ENOSPC;
        goto out;
    }
    *slot = idx;
    n->used = 1;
out:
    UNLOCK(e);
    return rc;
}

/* Remove every entry of vni from a map whose keys start with the VNI. */
static void purge_vni(ovl_map_t *m, uint32_t vni)
{
    for (uint32_t s = 0; s <= m->mask;) {
        uint32_t *k = ovl_map_key(m, s);
        if (k && *k == vni) {
            uint8_t key[64];
            memcpy(key, k, m->key_size);
            ovl_map_del(m, key); /* backward shift may refill slot s: look again */
            continue;
        }
        s++;
    }
}

int ovl_network_del(ovl_engine_t *e, uint32_t vni)
{
    WRLOCK(e);
    int rc = 0;
    ovl_network_t *n = ovl_net_lookup(e, vni);
    if (!n)
        rc = -ENOENT;
    else if (n->n_ports)
        rc = -EBUSY;
    else {
        purge_vni(&e->fdb, vni);
        purge_vni(&e->neigh, vni);
        purge_vni(&e->members, vni);
        ovl_map_del(&e->net_by_vni, &vni);
        n->used = 0;
        n->n_vteps = 0;
    }
    UNLOCK(e);
    return rc;
}

int ovl_network_set_options(ovl_engine_t *e, uint32_t vni, const uint8_t *tlv, size_t len)
{
    WRLOCK(e);
    ovl_network_t *n = ovl_net_lookup(e, vni);
    int rc = n ? net_build_header(e, n, tlv, len) : -ENOENT;
    UNLOCK(e);
    return rc;
}

int ovl_engine_known_option_add(ovl_engine_t *e, uint16_t cls, uint8_t type)
{
    uint32_t key = ((uint32_t)cls << 8) | (type & (uint8_t)~OVL_GENEVE_TYPE_CRITICAL);
    WRLOCK(e);
    int rc = 0;
    for (uint32_t i = 0; i < e->n_known; i++)
        if (e->known[i] == key)
            goto out;
    if (e->n_known >= OVL_KNOWN_OPTS_MAX)
        rc = -ENOSPC;
    else
        e->known[e->n_known++] = key;
out:
    UNLOCK(e);
    return rc;
}

/* ---- VTEPs ---- */

static int grow(void **arr, uint32_t *cap, uint32_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    uint32_t ncap = *cap ? *cap * 2 : 8;
    while (ncap < need)
        ncap *= 2;
    void *p = realloc(*arr, (size_t)ncap * elem);
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = ncap;
    return 0;
}

int ovl_vtep_add(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *addr, uint16_t port)
{
    if (addr_len(family) < 0 || family != e->cfg.family)
        return -EAFNOSUPPORT;
    WRLOCK(e);
    int rc = 0;
    ovl_network_t *n = ovl_net_lookup(e, vni);
    if (!n) {
        rc = -ENOENT;
        goto out;
    }
    ovl_addr_t a;
    ovl_addr_make(&a, family, addr, port ? port : e->udp_port);
    for (uint32_t i = 0; i < n->n_vteps; i++) {
        if (n->vteps[i].family == family && memcmp(n->vteps[i].addr, a.addr, 16) == 0) {
            n->vteps[i] = a; /* same member, maybe a new port */
            goto out;
        }
    }
    ovl_member_key_t k;
    ovl_member_key_make(&k, vni, family, addr);
    if (!ovl_map_put(&e->members, &k, NULL)) {
        rc = -ENOSPC;
        goto out;
    }
    if ((rc = grow((void **)&n->vteps, &n->cap_vteps, n->n_vteps + 1, sizeof *n->vteps)) < 0) {
        ovl_map_del(&e->members, &k);
        goto out;
    }
    n->vteps[n->n_vteps++] = a;
out:
    UNLOCK(e);
    return rc;
}

int ovl_vtep_del(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *addr)
{
    if (addr_len(family) < 0)
        return -EAFNOSUPPORT;
    WRLOCK(e);
    int rc = -ENOENT;
    ovl_network_t *n = ovl_net_lookup(e, vni);
    if (n) {
        ovl_member_key_t k;
        ovl_member_key_make(&k, vni, family, addr);
        ovl_map_del(&e->members, &k);
        for (uint32_t i = 0; i < n->n_vteps; i++) {
            if (n->vteps[i].family == family && memcmp(n->vteps[i].addr, k.addr, 16) == 0) {
                n->vteps[i] = n->vteps[--n->n_vteps];
                rc = 0;
                break;
            }
        }
    }
    UNLOCK(e);
    return rc;
}

/* ---- ports ---- */

static int port_attach(ovl_engine_t *e, uint32_t vni, const int *fds, uint32_t n_fds,
                       const uint8_t *mac, uint32_t flags, uint32_t offloads)
{
    ovl_network_t *n = ovl_net_lookup(e, vni);
    if (!n)
        return -ENOENT;
    ovl_fdb_key_t k;
    ovl_fdb_key_make(&k, vni, mac);
    if (ovl_map_get(&e->fdb, &k))
        return -EADDRINUSE;
    uint32_t id = 0;
    while (id < e->cfg.max_ports && e->ports[id].used)
        id++;
    if (id == e->cfg.max_ports)
        return -ENOSPC;
    int rc = grow((void **)&n->ports, &n->cap_ports, n->n_ports + 1, sizeof *n->ports);
    if (rc < 0)
        return rc;
    ovl_fdb_val_t *v = ovl_map_put(&e->fdb, &k, NULL);
    if (!v)
        return -ENOSPC;
    ovl_port_t *p = &e->ports[id];
    uint32_t gen = p->gen + 1;
    memset(p, 0, sizeof *p);
    p->gen = gen & 0xffffff;
    p->fd = fds[0];
    p->n_fds = n_fds;
    memcpy(p->fds, fds, n_fds * sizeof *fds);
    p->flags = flags;
    p->vni = vni;
    p->net_idx = (uint32_t)(n - e->nets);
    p->worker = id % e->n_workers;
    p->offloads = offloads;
    p->vnet = (offloads & OVL_OFF_TAP_TSO) != 0;
    ovl_port_sec_init(&p->sec, mac, (flags & OVL_PORT_ROUTER) != 0);
    for (uint32_t q = 0; q < n_fds; q++) {
        /* One queue per worker; a single-queue port goes to worker id % n. */
        uint32_t wi = n_fds > 1 ? q % e->n_workers : p->worker;
        rc = epoll_add(e->workers[wi]->epfd, fds[q], OVL_EP_PORT(id, p->gen, q));
        if (rc < 0) {
            for (uint32_t j = 0; j < q; j++)
                epoll_ctl(e->workers[n_fds > 1 ? j % e->n_workers : p->worker]->epfd,
                          EPOLL_CTL_DEL, fds[j], NULL);
            ovl_map_del(&e->fdb, &k);
            return rc;
        }
    }
    v->kind = OVL_FDB_LOCAL;
    v->port_id = (int32_t)id;
    v->updated_ns = ovl_now_ns();
    n->ports[n->n_ports++] = (int32_t)id;
    p->used = 1;
    return (int)id;
}

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

/* The one body of ovl_port_add (attach 0: create the TAP) and ovl_port_attach
 * (attach 1: open the existing one): inside namespace netns_fd (-1: the
 * caller's), open queue 0 and, with several workers, one more queue per
 * worker; then make it a port. On failure a device we created is removed and
 * an attached one is left as found (still persistent). */
static int port_add_tap(ovl_engine_t *e, uint32_t vni, const char *ifname, int netns_fd,
                        int attach, const uint8_t *mac, uint32_t flags, char *ifname_out)
{
    if (check_mac(mac) < 0 ||
        (flags & ~(uint32_t)(OVL_PORT_NO_SECURITY | OVL_PORT_PERSIST | OVL_PORT_ROUTER)))
        return -EINVAL;
    /* Refuse what port_attach would refuse before touching any device. */
    pthread_rwlock_rdlock(&e->lock);
    ovl_fdb_key_t k;
    ovl_fdb_key_make(&k, vni, mac);
    int rc = !ovl_net_lookup(e, vni) ? -ENOENT : ovl_map_get(&e->fdb, &k) ? -EADDRINUSE : 0;
    UNLOCK(e);
    if (rc < 0)
        return rc;
    int saved;
    if ((rc = netns_enter(netns_fd, &saved)) < 0)
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
    netns_leave(saved);
    if (fd < 0)
        return fd;
    WRLOCK(e);
    rc = port_attach(e, vni, fds, nq, mac, flags, off);
    if (rc >= 0) {
        uint32_t tap = OVL_OFF_TAP_TSO | OVL_OFF_TAP_USO;
        uint32_t have = e->tap_probed ? (e->offloads & tap & off) : off;
        e->offloads = (e->offloads & ~tap) | have;
        e->tap_probed = 1;
    }
    UNLOCK(e);
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
    if (fd < 0 || check_mac(mac) < 0 || (flags & ~(uint32_t)(OVL_PORT_NO_SECURITY | OVL_PORT_ROUTER)))
        return -EINVAL;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    WRLOCK(e);
    int rc = port_attach(e, vni, &fd, 1, mac, flags, 0);
    UNLOCK(e);
    return rc;
}

static ovl_port_t *port_get(ovl_engine_t *e, int id)
{
    if (id < 0 || (uint32_t)id >= e->cfg.max_ports || !e->ports[id].used)
        return NULL;
    return &e->ports[id];
}

int ovl_port_add_ip(ovl_engine_t *e, int port_id, int family, const uint8_t *addr)
{
    if (addr_len(family) < 0)
        return -EAFNOSUPPORT;
    WRLOCK(e);
    int rc;
    ovl_port_t *p = port_get(e, port_id);
    if (!p) {
        rc = -ENOENT;
        goto out;
    }
    ovl_neigh_key_t k;
    ovl_neigh_key_make(&k, p->vni, family, addr);
    ovl_neigh_val_t *v = ovl_map_get(&e->neigh, &k);
    if (v && memcmp(v->mac, p->sec.mac, 6) != 0) {
        rc = -EADDRINUSE;
        goto out;
    }
    if ((rc = ovl_port_sec_add_ip(&p->sec, family, addr)) < 0)
        goto out;
    int created;
    v = ovl_map_put(&e->neigh, &k, &created);
    if (!v) {
        rc = -ENOSPC; /* the address stays in the port's allow-list: harmless */
        goto out;
    }
    memcpy(v->mac, p->sec.mac, 6);
out:
    UNLOCK(e);
    return rc;
}

/* The body of ovl_port_del (unpersist 1) and ovl_port_detach (unpersist 0). */
static int port_remove(ovl_engine_t *e, int port_id, int unpersist)
{
    WRLOCK(e);
    ovl_port_t *p = port_get(e, port_id);
    if (!p) {
        UNLOCK(e);
        return -ENOENT;
    }
    ovl_network_t *n = &e->nets[p->net_idx];
    for (uint32_t i = 0; i < n->n_ports; i++) {
        if (n->ports[i] == port_id) {
            n->ports[i] = n->ports[--n->n_ports];
            break;
        }
    }
    /* Local FDB entries of the port (its MAC and any learned behind it). */
    for (uint32_t s = 0; s <= e->fdb.mask;) {
        ovl_fdb_key_t *k = ovl_map_key(&e->fdb, s);
        ovl_fdb_val_t *v = ovl_map_val(&e->fdb, s);
        if (k && v->kind == OVL_FDB_LOCAL && v->port_id == port_id) {
            ovl_fdb_key_t kk = *k;
            ovl_map_del(&e->fdb, &kk);
            continue;
        }
        s++;
    }
    for (unsigned i = 0; i < p->sec.n_ip4; i++) {
        ovl_neigh_key_t k;
        ovl_neigh_key_make(&k, p->vni, 4, p->sec.ip4[i]);
        ovl_map_del(&e->neigh, &k);
    }
    for (unsigned i = 0; i < p->sec.n_ip6; i++) {
        ovl_neigh_key_t k;
        ovl_neigh_key_make(&k, p->vni, 6, p->sec.ip6[i]);
        ovl_map_del(&e->neigh, &k);
    }
    for (uint32_t q = 0; q < p->n_fds; q++)
        epoll_ctl(e->workers[p->n_fds > 1 ? q % e->n_workers : p->worker]->epfd, EPOLL_CTL_DEL,
                  p->fds[q], NULL);
    tap_close(p->fds, p->n_fds, unpersist && (p->flags & OVL_PORT_PERSIST));
    p->used = 0;
    UNLOCK(e);
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

/* ---- FDB and neighbours ---- */

int ovl_fdb_add(ovl_engine_t *e, uint32_t vni, const uint8_t *mac, int family,
                const uint8_t *vtep, uint16_t port)
{
    if (family != e->cfg.family)
        return -EAFNOSUPPORT;
    if (mac[0] & 1)
        return -EINVAL;
    WRLOCK(e);
    int rc = 0;
    if (!ovl_net_lookup(e, vni)) {
        rc = -ENOENT;
        goto out;
    }
    ovl_fdb_key_t k;
    ovl_fdb_key_make(&k, vni, mac);
    ovl_fdb_val_t *v = ovl_map_get(&e->fdb, &k);
    if (v && v->kind == OVL_FDB_LOCAL) {
        rc = -EADDRINUSE; /* a local port has this MAC */
        goto out;
    }
    if (!v && !(v = ovl_map_put(&e->fdb, &k, NULL))) {
        rc = -ENOSPC;
        goto out;
    }
    v->kind = OVL_FDB_REMOTE;
    v->port_id = -1;
    ovl_addr_make(&v->vtep, family, vtep, port ? port : e->udp_port);
    v->updated_ns = ovl_now_ns();
out:
    UNLOCK(e);
    return rc;
}

int ovl_fdb_del(ovl_engine_t *e, uint32_t vni, const uint8_t *mac)
{
    WRLOCK(e);
    ovl_fdb_key_t k;
    ovl_fdb_key_make(&k, vni, mac);
    ovl_fdb_val_t *v = ovl_map_get(&e->fdb, &k);
    int rc;
    if (!v)
        rc = -ENOENT;
    else if (v->kind == OVL_FDB_LOCAL)
        rc = -EPERM; /* removed with its port */
    else
        rc = ovl_map_del(&e->fdb, &k);
    UNLOCK(e);
    return rc;
}

int ovl_neigh_add(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *ip, const uint8_t *mac)
{
    if (addr_len(family) < 0)
        return -EAFNOSUPPORT;
    WRLOCK(e);
    int rc = 0;
    if (!ovl_net_lookup(e, vni)) {
        rc = -ENOENT;
        goto out;
    }
    ovl_neigh_key_t k;
    ovl_neigh_key_make(&k, vni, family, ip);
    ovl_neigh_val_t *v = ovl_map_put(&e->neigh, &k, NULL);
    if (!v)
        rc = -ENOSPC;
    else
        memcpy(v->mac, mac, 6);
out:
    UNLOCK(e);
    return rc;
}

int ovl_neigh_del(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *ip)
{
    if (addr_len(family) < 0)
        return -EAFNOSUPPORT;
    WRLOCK(e);
    ovl_neigh_key_t k;
    ovl_neigh_key_make(&k, vni, family, ip);
    int rc = ovl_map_del(&e->neigh, &k);
    UNLOCK(e);
    return rc;
}

int ovl_fdb_dump(ovl_engine_t *e, ovl_fdb_entry_t *out, size_t n)
{
    pthread_rwlock_rdlock(&e->lock);
    size_t k = 0;
    for (uint32_t s = 0; s <= e->fdb.mask; s++) {
        ovl_fdb_key_t *key = ovl_map_key(&e->fdb, s);
        if (!key)
            continue;
        if (k < n) {
            ovl_fdb_val_t *v = ovl_map_val(&e->fdb, s);
            ovl_fdb_entry_t *o = &out[k];
            memset(o, 0, sizeof *o);
            o->vni = key->vni;
            memcpy(o->mac, key->mac, 6);
            o->kind = v->kind;
            o->port_id = v->kind == OVL_FDB_LOCAL ? v->port_id : -1;
            if (v->kind != OVL_FDB_LOCAL) {
                o->family = v->vtep.family;
                memcpy(o->vtep, v->vtep.addr, 16);
                o->vtep_port = v->vtep.port;
            }
            o->updated_ns = v->updated_ns;
            o->used_ns = __atomic_load_n(&v->used_ns, __ATOMIC_RELAXED);
        }
        k++;
    }
    UNLOCK(e);
    return (int)k;
}

/* ---- learning (applied by a worker after its batch, as a writer) ---- */

void ovl_learn_apply(ovl_worker_t *w)
{
    if (!w->n_learn)
        return;
    ovl_engine_t *e = w->e;
    WRLOCK(e);
    for (uint32_t i = 0; i < w->n_learn; i++) {
        ovl_learn_t *l = &w->learn[i];
        if (!ovl_net_lookup(e, l->vni))
            continue;
        ovl_fdb_key_t k;
        ovl_fdb_key_make(&k, l->vni, l->mac);
        int created = 0;
        ovl_fdb_val_t *v = ovl_map_get(&e->fdb, &k);
        /* Learning never overrides what the control plane or a port owns. */
        if (v && (v->kind == OVL_FDB_REMOTE ||
                  (v->kind == OVL_FDB_LOCAL && l->kind != OVL_FDB_LOCAL)))
            continue;
        if (v && v->kind == OVL_FDB_LOCAL && port_get(e, v->port_id) &&
            memcmp(e->ports[v->port_id].sec.mac, l->mac, 6) == 0)
            continue; /* a port's own MAC */
        if (v && ovl_learn_same(l, v->kind, v->port_id, &v->vtep)) {
            v->updated_ns = w->now_ns; /* known already (another worker learned it) */
            continue;
        }
        if (!v && !(v = ovl_map_put(&e->fdb, &k, &created)))
            continue;
        v->kind = l->kind;
        v->port_id = l->kind == OVL_FDB_LOCAL ? l->port_id : -1;
        if (l->kind == OVL_FDB_LEARNED)
            v->vtep = l->vtep;
        v->updated_ns = w->now_ns;
        ovl_count(w, OVL_C_MACS_LEARNED, 1);
        if (created && l->kind == OVL_FDB_LEARNED) {
            ovl_event_t ev = { .type = OVL_EVENT_LEARNED, .vni = l->vni, .port_id = -1,
                               .family = l->vtep.family };
            memcpy(ev.mac, l->mac, 6);
            memcpy(ev.addr, l->vtep.addr, 16);
            UNLOCK(e);
            ovl_event_push(w, &ev);
            WRLOCK(e);
        }
    }
    w->n_learn = 0;
    UNLOCK(e);
}

/* ---- counters ---- */

int ovl_engine_counters(ovl_engine_t *e, uint64_t *out, size_t n)
{
    size_t m = n < OVL_C__COUNT ? n : OVL_C__COUNT;
    memset(out, 0, m * sizeof *out);
    for (uint32_t i = 0; i < e->n_workers; i++)
        for (size_t j = 0; j < m; j++)
            out[j] += __atomic_load_n(&e->workers[i]->c[j], __ATOMIC_RELAXED);
    return (int)m;
}

static int obj_counters(const uint64_t *c, uint64_t *out, size_t n)
{
    size_t m = n < OVL_O__COUNT ? n : OVL_O__COUNT;
    for (size_t j = 0; j < m; j++)
        out[j] = __atomic_load_n(&c[j], __ATOMIC_RELAXED);
    return (int)m;
}

int ovl_network_counters(ovl_engine_t *e, uint32_t vni, uint64_t *out, size_t n)
{
    pthread_rwlock_rdlock(&e->lock);
    ovl_network_t *net = ovl_net_lookup(e, vni);
    int rc = net ? obj_counters(net->c, out, n) : -ENOENT;
    UNLOCK(e);
    return rc;
}

int ovl_port_counters(ovl_engine_t *e, int port_id, uint64_t *out, size_t n)
{
    pthread_rwlock_rdlock(&e->lock);
    ovl_port_t *p = port_get(e, port_id);
    int rc = p ? obj_counters(p->c, out, n) : -ENOENT;
    UNLOCK(e);
    return rc;
}

/* ---- the worker loop ---- */

void *ovl_worker_main(void *arg)
{
    ovl_worker_t *w = arg;
    struct epoll_event evs[64];
    uint64_t busy_ns = (uint64_t)w->e->cfg.busy_poll_us * 1000u, last = 0;
    for (;;) {
        /* Busy polling: after activity, poll without sleeping for busy_ns, so
         * the next packet does not pay for a wake-up. */
        int timeout = busy_ns && ovl_now_ns() - last < busy_ns ? 0 : -1;
        int n = epoll_wait(w->epfd, evs, 64, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (n == 0)
            continue;
        if (busy_ns)
            last = ovl_now_ns();
        ovl_count(w, OVL_C_WAKEUPS, 1);
        for (int i = 0; i < n; i++) {
            uint64_t d = evs[i].data.u64;
            switch (OVL_EP_KIND(d)) {
            case OVL_EP_STOP:
                return NULL;
            case OVL_EP_UDP:
                ovl_decap_batch(w);
                break;
            default:
                ovl_encap_batch(w, OVL_EP_ID(d), OVL_EP_GEN(d), OVL_EP_QUEUE(d));
                break;
            }
        }
    }
    return NULL;
}
