/*
 * udp.c — the tunnel transport: VXLAN and Geneve datagrams over kernel UDP
 * sockets (transport.h is the interface it implements).
 *
 * Design notes.
 * - Source ports. A UDP socket's source port is the port it is bound to, so
 *   the per-flow source port of RFC 7348 section 5 is had from a pool of
 *   sockets, one per slot: slot i is bound to the first free port from the
 *   one ovl_wire_source_port gives for slot i, and a datagram leaves on the
 *   socket of its flow's slot (ovl_wire_source_slot of the flow hash, the
 *   same arithmetic). Kernel UDP sockets (not raw ones) keep UDP GSO/GRO and
 *   checksum offload within reach. The pool is shared by the workers
 *   (sendmmsg is thread-safe); each worker has its own receive socket, bound
 *   to the tunnel port with SO_REUSEPORT when there are several, in worker
 *   order, and the group gets the classic steering program (steer.c,
 *   SO_ATTACH_REUSEPORT_CBPF): it returns the owner of the inner flow, which
 *   is the index of that worker's socket in the group.
 * - Sending. Datagrams are queued as iovecs (the tunnel header sits in the
 *   frame's headroom; a segment is its headers plus a payload slice) and sent
 *   at flush: sorted by slot (stably: a flow keeps its order), one sendmmsg
 *   per slot, where runs of equal-sized datagrams of one flow to one VTEP
 *   (the last may be shorter) leave as single UDP GSO sends. One flow: a
 *   receiver with UDP GRO takes a GSO send as one receive and steers it by
 *   its first datagram (engine.h, "Per-flow state"), so a run that mixed
 *   flows would put all but the first on a worker that does not own them.
 * - A failed send costs exactly the datagram that failed. sendmmsg stops at
 *   the first message that fails; that message is counted (udp_send_failed)
 *   and the rest are sent again from the one after it. A GSO send fails as a
 *   whole (one segment the route cannot carry, say), so its datagrams go
 *   again one by one, without GSO, and only those that fail alone are lost.
 * - Receiving. recvmmsg fills a burst; with UDP_GRO one receive may hold
 *   many datagrams of one size from one sender, reported as one ovl_rx_t
 *   with its segment size (decap.c cuts it). A receive larger than the
 *   buffer is reported truncated (decap.c counts it frame_oversize).
 */
#include "counters.h"
#include "steer.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/udp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef UDP_NO_CHECK6_TX
#define UDP_NO_CHECK6_TX 101
#endif
#ifndef SO_NO_CHECK
#define SO_NO_CHECK 11
#endif

#define SOCKBUF_BYTES (4 * 1024 * 1024)
#define TX_MSGS 512              /* datagrams queued before a flush */
#define TX_IOVS (2 * TX_MSGS)
#define TX_CTRL 32               /* control bytes per send: CMSG_SPACE(sizeof(uint16_t)) */
#define RX_CTRL 64               /* control bytes per receive: one UDP_GRO cmsg */
#define GSO_BYTES_MAX 65000      /* a larger UDP GSO send fails with EMSGSIZE */
#define SLOTS_MAX 1024           /* the config's bound on sport_slots */

/* ---- addresses ---- */

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

/* ---- sockets ---- */

static void big_buffers(int fd)
{
    int v = SOCKBUF_BYTES;
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

/* A send socket bound to the first free port in [port, port_max]; csum 0
 * turns the outer UDP checksum off. The fd or -errno. */
static int tx_open(int family, const uint8_t *addr, uint16_t port, uint16_t port_max, int csum)
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

/* ---- engine-wide state: the source-port pool ---- */

typedef struct udp {
    uint16_t n_slots;
    int *tx_fds;                 /* slot -> socket */
} udp_t;

static void udp_close(ovl_engine_t *e)
{
    udp_t *u = e->tp_state;
    if (!u)
        return;
    for (uint16_t i = 0; u->tx_fds && i < u->n_slots; i++)
        if (u->tx_fds[i] >= 0)
            close(u->tx_fds[i]);
    free(u->tx_fds);
    free(u);
    e->tp_state = NULL;
}

static int udp_open(ovl_engine_t *e)
{
    const ovl_engine_config_t *c = &e->cfg;
    udp_t *u = calloc(1, sizeof *u);
    if (!u)
        return -ENOMEM;
    e->tp_state = u;
    u->n_slots = c->sport_slots;
    u->tx_fds = malloc(u->n_slots * sizeof *u->tx_fds);
    if (!u->tx_fds)
        return -ENOMEM;
    for (uint16_t i = 0; i < u->n_slots; i++)
        u->tx_fds[i] = -1;
    /* Slot i: the first free port from ovl_wire_source_port's port for slot i
     * up to the port before the next slot's. */
    for (uint16_t i = 0; i < u->n_slots; i++) {
        uint16_t first = ovl_wire_source_port(i, c->sport_lo, c->sport_hi, u->n_slots);
        uint16_t last = i + 1 < u->n_slots
                            ? (uint16_t)(ovl_wire_source_port(i + 1u, c->sport_lo, c->sport_hi,
                                                              u->n_slots) - 1)
                            : c->sport_hi;
        int fd = tx_open(c->family, c->local_addr, first, last, c->udp_csum);
        if (fd < 0)
            return fd;
        u->tx_fds[i] = fd;
    }
    /* Probe the offloads. UDP GSO needs the outer checksum. */
    if (e->offloads & OVL_OFF_UDP_GSO) {
        int v = 1400, z = 0;
        if (!c->udp_csum || setsockopt(u->tx_fds[0], SOL_UDP, UDP_SEGMENT, &v, sizeof v) < 0)
            e->offloads &= ~(uint32_t)OVL_OFF_UDP_GSO;
        else
            (void)setsockopt(u->tx_fds[0], SOL_UDP, UDP_SEGMENT, &z, sizeof z);
    }
    if (e->offloads & OVL_OFF_UDP_GRO) {
        /* Probe on a scratch socket so that every worker is sized alike. */
        int s = socket(c->family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0), one = 1;
        if (s < 0 || setsockopt(s, SOL_UDP, UDP_GRO, &one, sizeof one) < 0)
            e->offloads &= ~(uint32_t)OVL_OFF_UDP_GRO;
        if (s >= 0)
            close(s);
    }
    return 0;
}

/* ---- per-worker state: a receive socket and a send queue ---- */

/* A datagram queued: iov_n iovecs from tx_iov[iov_off]. */
typedef struct txe {
    uint32_t iov_off;
    uint16_t iov_n;
    uint16_t slot;
    uint32_t len;
    uint32_t hash;               /* the flow's: a GSO run holds one flow */
    const ovl_addr_t *dst;
} txe_t;

typedef struct udp_worker {
    int rx_fd[3];                /* by OVL_ENCAP_*: its tunnel port's socket, or -1 */
    uint8_t rx_next;             /* the encapsulation recv() reads first */
    uint32_t batch;
    uint32_t rx_buf_size;        /* largest (coalesced) receive */
    uint8_t *rx_bufs;            /* batch x rx_buf_size */
    uint8_t *rx_ctrl;            /* batch x RX_CTRL */
    struct mmsghdr *rx_msgs;
    struct iovec *rx_iov;
    ovl_sockaddr_t *rx_names;
    txe_t *txq;                  /* datagrams queued */
    uint32_t n_tx;
    struct iovec *tx_iov;        /* their iovecs, in queue order */
    uint32_t n_iov;
    struct iovec *tx_iov2;       /* at flush: iovecs of each send, contiguous */
    struct mmsghdr *tx_mmsg;
    uint8_t *tx_ctrl;            /* TX_MSGS x TX_CTRL: UDP_SEGMENT cmsgs */
    uint32_t *tx_order;
    uint32_t last_hash;          /* the flow hash last queued, and its slot */
    uint16_t last_slot;
} udp_worker_t;

static void udp_worker_close(ovl_worker_t *w)
{
    udp_worker_t *uw = w->tp;
    if (!uw)
        return;
    for (int k = 0; k < 3; k++)
        if (uw->rx_fd[k] >= 0)
            close(uw->rx_fd[k]);
    free(uw->rx_bufs);
    free(uw->rx_ctrl);
    free(uw->rx_msgs);
    free(uw->rx_iov);
    free(uw->rx_names);
    free(uw->txq);
    free(uw->tx_iov);
    free(uw->tx_iov2);
    free(uw->tx_mmsg);
    free(uw->tx_ctrl);
    free(uw->tx_order);
    free(uw);
    w->tp = NULL;
}

/* Worker w's receive socket on the tunnel port of encap: bound with
 * SO_REUSEPORT when there are several workers, the group's steering program
 * set through worker 0's socket (the others join behind it in worker order,
 * so socket i of the group is worker i's), UDP GRO when in use. With several
 * tunnel ports, OVL_STEER_UNDERLAY holds only while every group steers. The
 * fd or -errno. */
static int rx_open(ovl_worker_t *w, int encap)
{
    ovl_engine_t *e = w->e;
    const ovl_engine_config_t *c = &e->cfg;
    int fd = open_bound(c->family, c->local_addr, e->udp_ports[encap], c->workers > 1);
    if (fd < 0)
        return fd;
    big_buffers(fd);
    if (c->workers > 1 && w->idx == 0) {
        ovl_steer_prog_t prog;
        struct sock_fprog fp;
        int ok = 0;
        if (ovl_steer_build(&prog, encap, c->workers) == 0) {
            fp.len = prog.len;
            fp.filter = prog.ins;
            ok = setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &fp, sizeof fp) == 0;
        }
        if (ok && encap == c->encap)
            e->steering |= OVL_STEER_UNDERLAY;
        else if (!ok)
            e->steering &= ~(uint32_t)OVL_STEER_UNDERLAY;
    }
    if (e->offloads & OVL_OFF_UDP_GRO) {
        int one = 1;
        if (setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) < 0) {
            if (encap != c->encap) { /* sized for GRO already: keep every port alike */
                close(fd);
                return -errno;
            }
            e->offloads &= ~(uint32_t)OVL_OFF_UDP_GRO; /* the first worker finds out */
        }
    }
    return fd;
}

static int udp_worker_open(ovl_worker_t *w)
{
    ovl_engine_t *e = w->e;
    const ovl_engine_config_t *c = &e->cfg;
    udp_worker_t *uw = calloc(1, sizeof *uw);
    if (!uw)
        return -ENOMEM;
    w->tp = uw;
    uw->rx_fd[0] = uw->rx_fd[1] = uw->rx_fd[2] = -1;
    /* With UDP GRO a receive may be up to 64 KB of coalesced datagrams. */
    size_t rx_max = (e->offloads & OVL_OFF_UDP_GRO) ? OVL_SUPER_MAX
                                                     : OVL_GENEVE_HLEN + OVL_GENEVE_OPTS_MAX + c->frame_max;
    uw->rx_buf_size = (uint32_t)((rx_max + 64 + 63) & ~(size_t)63);
    size_t b = uw->batch = c->batch;
    uw->rx_bufs = malloc(b * uw->rx_buf_size);
    uw->rx_ctrl = calloc(b, RX_CTRL);
    uw->rx_msgs = calloc(b, sizeof *uw->rx_msgs);
    uw->rx_iov = calloc(b, sizeof *uw->rx_iov);
    uw->rx_names = calloc(b, sizeof *uw->rx_names);
    uw->txq = calloc(TX_MSGS, sizeof *uw->txq);
    uw->tx_iov = calloc(TX_IOVS, sizeof *uw->tx_iov);
    uw->tx_iov2 = calloc(TX_IOVS, sizeof *uw->tx_iov2);
    uw->tx_mmsg = calloc(TX_MSGS, sizeof *uw->tx_mmsg);
    uw->tx_ctrl = aligned_alloc(64, TX_MSGS * TX_CTRL);
    uw->tx_order = calloc(TX_MSGS, sizeof *uw->tx_order);
    if (!uw->rx_bufs || !uw->rx_ctrl || !uw->rx_msgs || !uw->rx_iov || !uw->rx_names ||
        !uw->txq || !uw->tx_iov || !uw->tx_iov2 || !uw->tx_mmsg || !uw->tx_ctrl || !uw->tx_order)
        return -ENOMEM;
    for (size_t i = 0; i < b; i++) {
        uw->rx_iov[i].iov_base = uw->rx_bufs + i * uw->rx_buf_size;
        uw->rx_iov[i].iov_len = uw->rx_buf_size;
        uw->rx_msgs[i].msg_hdr.msg_iov = &uw->rx_iov[i];
        uw->rx_msgs[i].msg_hdr.msg_iovlen = 1;
        uw->rx_msgs[i].msg_hdr.msg_name = &uw->rx_names[i];
        uw->rx_msgs[i].msg_hdr.msg_control = uw->rx_ctrl + i * RX_CTRL;
    }
    int fd = rx_open(w, c->encap);
    if (fd < 0)
        return fd;
    uw->rx_fd[c->encap] = fd;
    return 0;
}

static int udp_fd(const ovl_worker_t *w)
{
    return ((const udp_worker_t *)w->tp)->rx_fd[w->e->cfg.encap];
}

/* Open encap's tunnel port in every worker (transport.h, listen): one
 * SO_REUSEPORT group per port, each with the steering program of its
 * encapsulation (the inner frame sits behind a different header), joined
 * in worker order as the first group. In the engine's namespace: the caller
 * is the control plane, wherever it runs. Under the writer lock, so no
 * worker is in recv() while rx_fd changes. */
static int udp_listen(ovl_engine_t *e, int encap)
{
    int fds[OVL_MAX_WORKERS], saved, rc = 0;
    uint32_t n = 0;
    if ((rc = ovl_netns_enter(e->netns_fd, &saved)) < 0)
        return rc;
    uint32_t steering = e->steering;
    for (; n < e->n_workers; n++) {
        if ((fds[n] = rx_open(e->workers[n], encap)) < 0) {
            rc = fds[n];
            break;
        }
    }
    ovl_netns_leave(saved);
    for (uint32_t i = 0; rc == 0 && i < n; i++)
        rc = ovl_worker_watch(e->workers[i], fds[i], OVL_EP_TRANSPORT);
    if (rc < 0) {
        for (uint32_t i = 0; i < n; i++) {
            ovl_worker_unwatch(e->workers[i], fds[i]);
            close(fds[i]);
        }
        e->steering = steering;
        return rc;
    }
    for (uint32_t i = 0; i < n; i++)
        ((udp_worker_t *)e->workers[i]->tp)->rx_fd[encap] = fds[i];
    return 0;
}

/* ---- sending ---- */

/* The send of the run tx_order[first .. first + run) failed on socket fd. One
 * datagram: it is lost, counted. A GSO run: each datagram goes again alone. */
static void send_failed(ovl_worker_t *w, int fd, uint32_t first, uint32_t run)
{
    udp_worker_t *uw = w->tp;
    if (run == 1) {
        ovl_count(w, OVL_C_UDP_SEND_FAILED, 1);
        return;
    }
    for (uint32_t k = 0; k < run; k++) {
        const txe_t *t = &uw->txq[uw->tx_order[first + k]];
        struct msghdr h;
        memset(&h, 0, sizeof h);
        h.msg_name = (void *)&t->dst->sa;
        h.msg_namelen = t->dst->salen;
        h.msg_iov = &uw->tx_iov[t->iov_off];
        h.msg_iovlen = t->iov_n;
        ssize_t r;
        do
            r = sendmsg(fd, &h, MSG_DONTWAIT);
        while (r < 0 && errno == EINTR);
        if (r < 0) {
            ovl_count(w, OVL_C_UDP_SEND_FAILED, 1);
            continue;
        }
        ovl_count(w, OVL_C_UDP_TX_PACKETS, 1);
        ovl_count(w, OVL_C_UDP_TX_BYTES, (uint64_t)r);
    }
}

static void udp_flush(ovl_worker_t *w)
{
    ovl_engine_t *e = w->e;
    udp_t *u = e->tp_state;
    udp_worker_t *uw = w->tp;
    uint32_t n = uw->n_tx;
    if (!n)
        return;
    /* Counting sort by source-port slot (stable: a flow keeps its order). */
    uint32_t count[SLOTS_MAX + 1] = {0}, start[SLOTS_MAX + 1];
    uint16_t slots = u->n_slots;
    for (uint32_t i = 0; i < n; i++)
        count[uw->txq[i].slot + 1]++;
    for (uint32_t s = 0; s < slots; s++)
        count[s + 1] += count[s];
    memcpy(start, count, (slots + 1u) * sizeof *start);
    for (uint32_t i = 0; i < n; i++)
        uw->tx_order[start[uw->txq[i].slot]++] = i;

    int gso = (e->offloads & OVL_OFF_UDP_GSO) != 0;
    uint32_t niov = 0;
    for (uint32_t s = 0; s < slots; s++) {
        uint32_t i = count[s], end = count[s + 1], nm = 0;
        /* Build this slot's sends: a run of equal-sized datagrams to one VTEP
         * (the last may be shorter) becomes one GSO send. */
        static const uint32_t max_run = OVL_GSO_MAX_SEGS;
        uint32_t runs[TX_MSGS], firsts[TX_MSGS];
        while (i < end) {
            const txe_t *first = &uw->txq[uw->tx_order[i]];
            uint32_t run = 1, total = first->len;
            while (gso && i + run < end && run < max_run) {
                const txe_t *t = &uw->txq[uw->tx_order[i + run]];
                if (t->dst != first->dst || t->hash != first->hash || t->len > first->len ||
                    total + t->len > GSO_BYTES_MAX)
                    break;
                total += t->len;
                run++;
                if (t->len < first->len)
                    break;
            }
            struct mmsghdr *m = &uw->tx_mmsg[nm];
            memset(&m->msg_hdr, 0, sizeof m->msg_hdr);
            m->msg_hdr.msg_name = (void *)&first->dst->sa;
            m->msg_hdr.msg_namelen = first->dst->salen;
            m->msg_hdr.msg_iov = &uw->tx_iov2[niov];
            for (uint32_t k = 0; k < run; k++) {
                const txe_t *t = &uw->txq[uw->tx_order[i + k]];
                memcpy(&uw->tx_iov2[niov], &uw->tx_iov[t->iov_off], t->iov_n * sizeof(struct iovec));
                niov += t->iov_n;
                m->msg_hdr.msg_iovlen += t->iov_n;
            }
            if (run > 1) {
                uint8_t *ctl = uw->tx_ctrl + (size_t)nm * TX_CTRL;
                memset(ctl, 0, TX_CTRL);
                m->msg_hdr.msg_control = ctl;
                m->msg_hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t));
                struct cmsghdr *cm = CMSG_FIRSTHDR(&m->msg_hdr);
                cm->cmsg_level = SOL_UDP;
                cm->cmsg_type = UDP_SEGMENT;
                cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t seg = (uint16_t)first->len;
                memcpy(CMSG_DATA(cm), &seg, sizeof seg);
            }
            firsts[nm] = i;
            runs[nm++] = run;
            i += run;
        }
        uint32_t off = 0;
        while (off < nm) {
            int r = sendmmsg(u->tx_fds[s], uw->tx_mmsg + off, nm - off, MSG_DONTWAIT);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                /* Message off failed: it alone is lost (see the design notes). */
                send_failed(w, u->tx_fds[s], firsts[off], runs[off]);
                off++;
                continue;
            }
            for (int k = 0; k < r; k++) {
                ovl_count(w, OVL_C_UDP_TX_PACKETS, runs[off + (uint32_t)k]);
                ovl_count(w, OVL_C_UDP_TX_BYTES, uw->tx_mmsg[off + (uint32_t)k].msg_len);
                if (runs[off + (uint32_t)k] > 1)
                    ovl_count(w, OVL_C_UDP_GSO_SENDS, 1);
            }
            off += (uint32_t)r;
        }
    }
    uw->n_tx = 0;
    uw->n_iov = 0;
}

static void udp_queue(ovl_worker_t *w, const ovl_addr_t *to, const struct iovec *iov,
                      uint32_t k, uint32_t hash)
{
    udp_worker_t *uw = w->tp;
    if (uw->n_tx == TX_MSGS || uw->n_iov + k > TX_IOVS)
        udp_flush(w);
    if (hash != uw->last_hash) { /* the segments of a super-frame share one */
        uw->last_hash = hash;
        uw->last_slot = (uint16_t)ovl_wire_source_slot(hash, ((udp_t *)w->e->tp_state)->n_slots);
    }
    txe_t *t = &uw->txq[uw->n_tx++];
    t->iov_off = uw->n_iov;
    t->iov_n = (uint16_t)k;
    t->slot = uw->last_slot;
    t->hash = hash;
    t->dst = to;
    t->len = 0;
    for (uint32_t i = 0; i < k; i++) {
        uw->tx_iov[uw->n_iov++] = iov[i];
        t->len += (uint32_t)iov[i].iov_len;
    }
}

static uint32_t udp_queued(const ovl_worker_t *w)
{
    return ((const udp_worker_t *)w->tp)->n_tx;
}

/* ---- receiving ---- */

/* The segment size of a coalesced receive (UDP_GRO cmsg), or 0. */
static size_t gro_size(struct msghdr *h)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
            int v;
            memcpy(&v, CMSG_DATA(c), sizeof v);
            return v > 0 ? (size_t)v : 0;
        }
    }
    return 0;
}

/* One recvmmsg on fd into the buffers from index first on, at most b; the
 * receives are marked encap. Returns how many. */
static uint32_t recv_port(ovl_worker_t *w, int fd, int encap, ovl_rx_t *out, uint32_t first,
                          uint32_t b)
{
    udp_worker_t *uw = w->tp;
    for (uint32_t i = first; i < b; i++) {
        uw->rx_msgs[i].msg_hdr.msg_namelen = sizeof(ovl_sockaddr_t);
        uw->rx_msgs[i].msg_hdr.msg_controllen = RX_CTRL;
        uw->rx_msgs[i].msg_hdr.msg_flags = 0;
    }
    int got = recvmmsg(fd, uw->rx_msgs + first, b - first, MSG_DONTWAIT, NULL);
    if (got <= 0)
        return 0;
    uint32_t n = first + (uint32_t)got;
    for (uint32_t i = first; i < n; i++) {
        struct msghdr *h = &uw->rx_msgs[i].msg_hdr;
        ovl_rx_t *rx = &out[i];
        rx->buf = uw->rx_bufs + (size_t)i * uw->rx_buf_size;
        rx->len = uw->rx_msgs[i].msg_len;
        rx->truncated = (h->msg_flags & MSG_TRUNC) != 0;
        int family = 0;
        memset(rx->addr, 0, sizeof rx->addr);
        if (ovl_sockaddr_parse(&uw->rx_names[i], &family, rx->addr) < 0)
            family = 0;
        rx->family = (uint8_t)family;
        rx->encap = (uint8_t)encap;
        size_t seg = rx->truncated ? 0 : gro_size(h);
        if (seg && seg < rx->len) {
            rx->seg = (uint32_t)seg;
            ovl_count(w, OVL_C_UDP_GRO_RECEIVES, 1);
        } else {
            rx->seg = 0;
        }
    }
    return (uint32_t)got;
}

/* Every tunnel port in turn, into one burst. With two ports the first read
 * alternates, so that a port kept busy cannot starve the other (epoll is
 * level-triggered: what is left wakes the worker again). */
static int udp_recv(ovl_worker_t *w, ovl_rx_t *out, uint32_t max)
{
    udp_worker_t *uw = w->tp;
    uint32_t b = max < uw->batch ? max : uw->batch, n = 0;
    int first = uw->rx_next ? uw->rx_next : w->e->cfg.encap;
    int second = first == OVL_ENCAP_VXLAN ? OVL_ENCAP_GENEVE : OVL_ENCAP_VXLAN;
    if (uw->rx_fd[second] >= 0)
        uw->rx_next = (uint8_t)second;
    if (uw->rx_fd[first] >= 0)
        n += recv_port(w, uw->rx_fd[first], first, out, n, b);
    if (n < b && uw->rx_fd[second] >= 0)
        n += recv_port(w, uw->rx_fd[second], second, out, n, b);
    return (int)n;
}

const ovl_transport_ops_t ovl_udp_transport = {
    .name = "udp",
    .open = udp_open,
    .close = udp_close,
    .worker_open = udp_worker_open,
    .worker_close = udp_worker_close,
    .fd = udp_fd,
    .listen = udp_listen,
    .queue = udp_queue,
    .queued = udp_queued,
    .flush = udp_flush,
    .recv = udp_recv,
};
