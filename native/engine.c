/*
 * engine.c — the engine's life cycle, its workers and the worker loop (see
 * engine.h for the design notes and the rooms of the other jobs).
 *
 * Contracts.
 * - ovl_engine_create checks the whole config before it allocates anything,
 *   opens the transport and every worker's receive endpoint in the engine's
 *   network namespace, and on any failure frees all it made: nothing is left
 *   behind (destroy copes with a half-built engine).
 * - Workers start and stop as a group, with the learner; stopping keeps
 *   tables and ports, so an engine can be stopped, changed and started
 *   again. The learner stops after the workers and applies what they handed
 *   it last, so nothing learned before a stop is lost.
 * - Steering (engine.h, "Per-flow state"): with several workers the engine
 *   loads the TAP steering program once, here, and port.c attaches it to
 *   each multi-queue TAP; the transport attaches its own program to its
 *   receive sockets. What cannot be loaded or attached is left out of
 *   e->steering, never fatal.
 * - The worker loop is one epoll set per worker: its transport fd (a burst
 *   of receives, decap.c), its ports' TAP queues (a burst of frames,
 *   encap.c) and the stop eventfd. A stale event (a port removed or reused
 *   since) is recognised by the generation in its tag and ignored.
 */
#include "counters.h"
#include "network.h"
#include "policy.h"
#include "port.h"
#include "steer.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/epoll.h>
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

int ovl_addr_len(int family)
{
    return family == 4 ? 4 : family == 6 ? 16 : -1;
}

int ovl_netns_enter(int netns_fd, int *saved)
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

void ovl_netns_leave(int saved)
{
    if (saved >= 0) {
        (void)setns(saved, CLONE_NEWNET);
        close(saved);
    }
}

int ovl_worker_watch(ovl_worker_t *w, int fd, uint64_t tag)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = tag };
    return epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

void ovl_worker_unwatch(ovl_worker_t *w, int fd)
{
    epoll_ctl(w->epfd, EPOLL_CTL_DEL, fd, NULL);
}

/* ---- configuration ---- */

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
    c->conntrack_sessions = OVL_CONNTRACK_SESSIONS_DEFAULT;
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
    if (c->conntrack_sessions < OVL_CONNTRACK_SESSIONS_MIN ||
        c->conntrack_sessions > OVL_CONNTRACK_SESSIONS_MAX)
        return -ERANGE;
    if (c->max_ports == 0 || c->max_ports > (1u << 20) || c->max_networks == 0 ||
        c->max_networks > (1u << 20) || c->fdb_size == 0 || c->event_ring == 0 ||
        c->event_ring > (1u << 20))
        return -ERANGE;
    return 0;
}

/* ---- workers ---- */

static void worker_free(ovl_engine_t *e, ovl_worker_t *w)
{
    if (!w)
        return;
    e->tp->worker_close(w);
    if (w->epfd >= 0)
        close(w->epfd);
    free(w->tap_bufs);
    free(w->seg_hdrs);
    free(w->rx);
    free(w->obj_c);
    free(w->learned);
    ovl_policy_worker_free(w);
    free(w);
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
    w->gro.port_id = -1;
    /* With TAP offloads a read may be a 64 KB super-frame. */
    size_t tap_max = (c->offloads & OVL_OFF_TAP_TSO) ? OVL_SUPER_MAX + OVL_VNET_HLEN : c->frame_max;
    w->tap_buf_size = (uint32_t)((OVL_HEADROOM + tap_max + 64 + 63) & ~(size_t)63);
    w->tap_bufs = malloc((size_t)c->batch * w->tap_buf_size);
    w->seg_hdrs = malloc((size_t)OVL_SEG_SLOTS * OVL_SEG_HDR_MAX);
    w->rx = calloc(c->batch, sizeof *w->rx);
    w->obj_c = calloc(((size_t)c->max_networks + c->max_ports) * OVL_O__COUNT, sizeof *w->obj_c);
    w->learned = aligned_alloc(64, sizeof *w->learned);
    if (w->learned)
        memset(w->learned, 0, sizeof *w->learned);
    int rc = 0;
    if (!w->tap_bufs || !w->seg_hdrs || !w->rx || !w->obj_c || !w->learned)
        rc = -ENOMEM;
    else
        w->port_c = w->obj_c + (size_t)c->max_networks * OVL_O__COUNT;
    if (rc == 0 && (w->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        rc = -errno;
    if (rc == 0)
        rc = e->tp->worker_open(w);
    if (rc == 0)
        rc = ovl_worker_watch(w, e->tp->fd(w), OVL_EP_TRANSPORT);
    if (rc == 0)
        rc = ovl_worker_watch(w, e->stop_fd, OVL_EP_STOP);
    if (rc < 0) {
        worker_free(e, w);
        return rc;
    }
    *out = w;
    return 0;
}

/* ---- life cycle ---- */

void ovl_engine_destroy(ovl_engine_t *e)
{
    if (!e)
        return;
    ovl_engine_stop(e);
    for (uint32_t i = 0; e->ports && i < e->cfg.max_ports; i++)
        if (e->ports[i].used)
            for (uint32_t q = 0; q < e->ports[i].n_fds; q++)
                close(e->ports[i].fds[q]); /* persistent TAPs outlive us on purpose */
    for (uint32_t i = 0; e->ports && i < e->cfg.max_ports; i++)
        ovl_policy_port_clear(&e->ports[i]);
    for (uint32_t i = 0; e->nets && i < e->cfg.max_networks; i++) {
        free(e->nets[i].vteps);
        free(e->nets[i].ports);
    }
    for (uint32_t i = 0; i < e->n_workers; i++)
        worker_free(e, e->workers[i]);
    e->tp->close(e);
    if (e->steer_fd >= 0)
        close(e->steer_fd);
    if (e->learner.fd >= 0)
        close(e->learner.fd);
    free(e->learner.events);
    free(e->nets);
    free(e->ports);
    ovl_events_free(&e->events);
    ovl_map_free(&e->net_by_vni);
    ovl_map_free(&e->fdb);
    ovl_map_free(&e->neigh);
    ovl_map_free(&e->members);
    if (e->stop_fd >= 0)
        close(e->stop_fd);
    if (e->netns_fd >= 0)
        close(e->netns_fd);
    pthread_rwlock_destroy(&e->lock);
    free(e);
}

int ovl_engine_create_on(const ovl_engine_config_t *cfg, const ovl_transport_ops_t *tp,
                         ovl_engine_t **out)
{
    int rc = check_config(cfg);
    if (rc < 0)
        return rc;
    ovl_engine_t *e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    e->cfg = *cfg;
    e->tp = tp;
    e->netns_fd = e->stop_fd = e->steer_fd = e->learner.fd = -1;
    pthread_rwlock_init(&e->lock, NULL);
    const ovl_engine_config_t *c = &e->cfg;
    if ((rc = ovl_events_init(&e->events, c->event_ring)) < 0)
        goto fail;
    e->learner.events = calloc((size_t)c->workers * OVL_LEARN_RING, sizeof *e->learner.events);
    if (!e->learner.events) {
        rc = -ENOMEM;
        goto fail;
    }
    e->learner.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->learner.fd < 0) {
        rc = -errno;
        goto fail;
    }
    /* Each encapsulation's tunnel port: the engine's from udp_port, the
     * other's from alt_port, each defaulting to its IANA port. The other's
     * opens with its first network (transport.h, listen). */
    int alt = c->encap == OVL_ENCAP_VXLAN ? OVL_ENCAP_GENEVE : OVL_ENCAP_VXLAN;
    e->udp_ports[OVL_ENCAP_VXLAN] = OVL_VXLAN_PORT;
    e->udp_ports[OVL_ENCAP_GENEVE] = OVL_GENEVE_PORT;
    if (c->udp_port)
        e->udp_ports[c->encap] = c->udp_port;
    if (c->alt_port)
        e->udp_ports[alt] = c->alt_port;
    e->udp_port = e->udp_ports[c->encap];
    e->listening = 1u << c->encap;
    e->nets = calloc(c->max_networks, sizeof *e->nets);
    e->ports = calloc(c->max_ports, sizeof *e->ports);
    if (!e->nets || !e->ports) {
        rc = -ENOMEM;
        goto fail;
    }
    if ((rc = ovl_map_init(&e->net_by_vni, c->max_networks, sizeof(uint32_t), sizeof(uint32_t))) ||
        (rc = ovl_map_init(&e->fdb, c->fdb_size, sizeof(ovl_fdb_key_t), sizeof(ovl_fdb_val_t))) ||
        (rc = ovl_map_init(&e->neigh, c->fdb_size, sizeof(ovl_neigh_key_t), sizeof(ovl_neigh_val_t))) ||
        (rc = ovl_map_init(&e->members, c->fdb_size, sizeof(ovl_member_key_t), 0)))
        goto fail;
    e->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->stop_fd < 0) {
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
    if ((rc = ovl_netns_enter(e->netns_fd, &saved)) < 0)
        goto fail;
    e->offloads = c->offloads; /* the transport takes away what it cannot do */
    /* With one worker every flow is its own. Else the transport sets
     * OVL_STEER_UNDERLAY when its receive sockets steer, and the TAP bit
     * holds when the TAP program loads. */
    e->steering = c->workers > 1 ? 0 : OVL_STEER_UNDERLAY | OVL_STEER_TAP;
    if (c->workers > 1) {
        ovl_steer_prog_t prog;
        if (ovl_steer_build(&prog, OVL_STEER_AT_TAP, c->workers) == 0 &&
            (e->steer_fd = ovl_steer_load(&prog, NULL, 0)) >= 0)
            e->steering |= OVL_STEER_TAP;
        else
            e->steer_fd = -1;
    }
    rc = tp->open(e);
    e->n_workers = 0;
    for (uint32_t i = 0; i < c->workers && rc == 0; i++) {
        rc = worker_make(e, i, &e->workers[i]);
        if (rc == 0)
            e->n_workers++;
    }
    ovl_netns_leave(saved);
    if (rc < 0)
        goto fail;
    *out = e;
    return 0;
fail:
    ovl_engine_destroy(e);
    return rc;
}

int ovl_engine_create(const ovl_engine_config_t *c, ovl_engine_t **out)
{
    return ovl_engine_create_on(c, &ovl_udp_transport, out);
}

int ovl_engine_udp_port(ovl_engine_t *e)
{
    return e->udp_port;
}

int ovl_engine_tunnel_port(ovl_engine_t *e, int encap)
{
    if (encap != OVL_ENCAP_VXLAN && encap != OVL_ENCAP_GENEVE)
        return -EINVAL;
    return e->udp_ports[encap];
}

uint32_t ovl_engine_offloads(ovl_engine_t *e)
{
    uint32_t tap = OVL_OFF_TAP_TSO | OVL_OFF_TAP_USO;
    return e->tap_probed ? e->offloads : e->offloads & ~tap;
}

uint32_t ovl_engine_steering(ovl_engine_t *e)
{
    OVL_RDLOCK(e);
    uint32_t s = e->steering;
    OVL_UNLOCK(e);
    return s;
}

static void *worker_main(void *arg);
static void *learner_main(void *arg);

int ovl_engine_start(ovl_engine_t *e)
{
    if (e->running)
        return 0;
    e->running = 1; /* ovl_engine_stop undoes a partial start */
    e->learner.stop = 0;
    int rc = pthread_create(&e->learner.thread, NULL, learner_main, e);
    if (rc != 0) {
        e->running = 0;
        return -rc;
    }
    e->learner.started = 1;
    for (uint32_t i = 0; i < e->n_workers; i++) {
        rc = pthread_create(&e->workers[i]->thread, NULL, worker_main, e->workers[i]);
        if (rc != 0) {
            ovl_engine_stop(e);
            return -rc;
        }
        e->workers[i]->started = 1;
    }
    return 0;
}

int ovl_engine_stop(ovl_engine_t *e)
{
    if (!e->running)
        return 0;
    uint64_t one = 1, v;
    ssize_t r = write(e->stop_fd, &one, sizeof one);
    (void)r;
    for (uint32_t i = 0; i < e->n_workers; i++) {
        if (e->workers[i]->started) {
            pthread_join(e->workers[i]->thread, NULL);
            e->workers[i]->started = 0;
        }
    }
    r = read(e->stop_fd, &v, sizeof v);
    /* The workers are gone: the learner applies what they left, and ends. */
    if (e->learner.started) {
        __atomic_store_n(&e->learner.stop, 1, __ATOMIC_RELEASE);
        r = write(e->learner.fd, &one, sizeof one);
        pthread_join(e->learner.thread, NULL);
        e->learner.started = 0;
    }
    (void)r;
    e->running = 0;
    return 0;
}

/* ---- the worker loop ---- */

static void *worker_main(void *arg)
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
            case OVL_EP_TRANSPORT:
                ovl_decap_burst(w);
                break;
            default:
                ovl_encap_burst(w, OVL_EP_ID(d), OVL_EP_GEN(d), OVL_EP_QUEUE(d));
                break;
            }
        }
    }
    return NULL;
}

/* ---- the learner ---- */

static void *learner_main(void *arg)
{
    ovl_engine_t *e = arg;
    struct pollfd pfd = { .fd = e->learner.fd, .events = POLLIN };
    for (;;) {
        if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
            break;
        uint64_t v;
        ssize_t r = read(e->learner.fd, &v, sizeof v);
        (void)r;
        int stop = __atomic_load_n(&e->learner.stop, __ATOMIC_ACQUIRE);
        ovl_fdb_learn_drain(e);
        if (stop)
            break;
    }
    return NULL;
}
