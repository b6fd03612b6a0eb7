/*
 * fake.c — the in-memory transport: an engine whose underlay is memory, for
 * tests (overlay_tools.h is its ABI, transport.h the interface it
 * implements). wireguard-go's bindtest is the model.
 *
 * Design notes.
 * - Everything above the transport runs unchanged: workers, epoll, stages,
 *   tables, counters, events. Only the datagrams differ: what the engine
 *   sends is kept in an outbox for the test to take (ovl_fake_take), what
 *   the test injects (ovl_fake_inject) waits in an inbox and arrives as if a
 *   peer had sent it to the tunnel port (ovl_fake_inject_to: to the tunnel
 *   port of either encapsulation, so one engine takes VXLAN and Geneve).
 * - One inbox per worker, as the UDP transport has one receive socket per
 *   worker, under the transport's mutex, each with an eventfd its worker's
 *   epoll watches: readable exactly while the inbox holds a datagram
 *   (written when it goes from empty to non-empty, drained when it goes
 *   back, both under the mutex). An injected datagram goes to the inbox the
 *   steering program chooses: the classic program the UDP transport gives
 *   its SO_REUSEPORT group, run by steer.c's interpreter, so tests without
 *   root see the worker the kernel would choose.
 * - Each worker queues into its own pending list (no lock, as the UDP
 *   transport's queue) and moves it to the shared outbox at flush. Each
 *   datagram is recorded with the source port the UDP transport would give
 *   its flow (ovl_wire_source_port), so source-port entropy is testable
 *   without sockets.
 * - A test tool, not a product path: datagrams are copied into memory
 *   allocated per datagram. The inbox and outbox are bounded
 *   (OVL_FAKE_INBOX: the injector gets -ENOBUFS; OVL_FAKE_OUTBOX: the engine
 *   counts udp_send_failed), so a test that forgets to read cannot grow
 *   without limit.
 * - Receive buffers are sized as the UDP transport's without GRO; a larger
 *   injected datagram is reported truncated, as MSG_TRUNC would be.
 */
#include "counters.h"
#include "steer.h"
#include "wire.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef struct dgram {
    struct dgram *next;
    uint8_t family;
    uint8_t encap;               /* injected: the tunnel port it goes to */
    uint8_t addr[16];
    uint16_t port;
    uint16_t sport;
    uint32_t len;
    uint8_t data[];
} dgram_t;

typedef struct list {
    dgram_t *head, *tail;
    uint32_t n;
} list_t;

static void list_push(list_t *l, dgram_t *d)
{
    d->next = NULL;
    if (l->tail)
        l->tail->next = d;
    else
        l->head = d;
    l->tail = d;
    l->n++;
}

static dgram_t *list_pop(list_t *l)
{
    dgram_t *d = l->head;
    if (!d)
        return NULL;
    l->head = d->next;
    if (!l->head)
        l->tail = NULL;
    l->n--;
    return d;
}

static void list_free(list_t *l)
{
    dgram_t *d;
    while ((d = list_pop(l)))
        free(d);
}

/* ---- engine-wide: inbox and outbox ---- */

typedef struct inbox {
    list_t l;
    int fd;                      /* eventfd: readable while l is not empty */
} inbox_t;

typedef struct fake {
    pthread_mutex_t lock;
    uint32_t n_in;               /* datagrams in all inboxes */
    uint32_t n_inboxes;          /* one per worker */
    inbox_t in[OVL_MAX_WORKERS];
    list_t out;
    ovl_steer_prog_t prog[3];    /* by OVL_ENCAP_*: each tunnel port's receive steering */
} fake_t;

static void fake_close(ovl_engine_t *e)
{
    fake_t *f = e->tp_state;
    if (!f)
        return;
    for (uint32_t i = 0; i < f->n_inboxes; i++) {
        list_free(&f->in[i].l);
        if (f->in[i].fd >= 0)
            close(f->in[i].fd);
    }
    list_free(&f->out);
    pthread_mutex_destroy(&f->lock);
    free(f);
    e->tp_state = NULL;
}

static int fake_open(ovl_engine_t *e)
{
    fake_t *f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    pthread_mutex_init(&f->lock, NULL);
    e->tp_state = f;
    e->offloads &= ~(uint32_t)(OVL_OFF_UDP_GSO | OVL_OFF_UDP_GRO);
    f->n_inboxes = e->cfg.workers;
    for (uint32_t i = 0; i < f->n_inboxes; i++)
        f->in[i].fd = -1;
    for (uint32_t i = 0; i < f->n_inboxes; i++)
        if ((f->in[i].fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
            return -errno;
    if (f->n_inboxes > 1) {
        int rc;
        if ((rc = ovl_steer_build(&f->prog[OVL_ENCAP_VXLAN], OVL_ENCAP_VXLAN, f->n_inboxes)) < 0 ||
            (rc = ovl_steer_build(&f->prog[OVL_ENCAP_GENEVE], OVL_ENCAP_GENEVE, f->n_inboxes)) < 0)
            return rc;
        e->steering |= OVL_STEER_UNDERLAY;
    }
    return 0;
}

/* ---- per worker: receive buffers, pending sends ---- */

typedef struct fake_worker {
    uint32_t buf_size;
    uint8_t *bufs;               /* batch x buf_size */
    list_t pending;
} fake_worker_t;

static void fake_worker_close(ovl_worker_t *w)
{
    fake_worker_t *fw = w->tp;
    if (!fw)
        return;
    list_free(&fw->pending);
    free(fw->bufs);
    free(fw);
    w->tp = NULL;
}

static int fake_worker_open(ovl_worker_t *w)
{
    fake_worker_t *fw = calloc(1, sizeof *fw);
    if (!fw)
        return -ENOMEM;
    w->tp = fw;
    fw->buf_size = OVL_GENEVE_HLEN + OVL_GENEVE_OPTS_MAX + w->e->cfg.frame_max + 64;
    fw->bufs = malloc((size_t)w->e->cfg.batch * fw->buf_size);
    return fw->bufs ? 0 : -ENOMEM;
}

static int fake_fd(const ovl_worker_t *w)
{
    return ((const fake_t *)w->e->tp_state)->in[w->idx].fd;
}

/* Every tunnel port is one inbox per worker here: listening costs nothing,
 * and an injected datagram carries the encapsulation of the port it is sent
 * to (ovl_fake_inject_to). */
static int fake_listen(ovl_engine_t *e, int encap)
{
    (void)e;
    (void)encap;
    return 0;
}

static void fake_queue(ovl_worker_t *w, const ovl_addr_t *to, const struct iovec *iov,
                       uint32_t n_iov, uint32_t hash)
{
    const ovl_engine_config_t *c = &w->e->cfg;
    fake_worker_t *fw = w->tp;
    size_t len = 0;
    for (uint32_t i = 0; i < n_iov; i++)
        len += iov[i].iov_len;
    dgram_t *d = malloc(sizeof *d + len);
    if (!d) {
        ovl_count(w, OVL_C_UDP_SEND_FAILED, 1);
        return;
    }
    d->family = to->family;
    memcpy(d->addr, to->addr, 16);
    d->port = to->port;
    d->sport = ovl_wire_source_port(hash, c->sport_lo, c->sport_hi, c->sport_slots);
    d->len = (uint32_t)len;
    for (uint32_t i = 0, off = 0; i < n_iov; off += (uint32_t)iov[i].iov_len, i++)
        memcpy(d->data + off, iov[i].iov_base, iov[i].iov_len);
    list_push(&fw->pending, d);
}

static uint32_t fake_queued(const ovl_worker_t *w)
{
    return ((const fake_worker_t *)w->tp)->pending.n;
}

static void fake_flush(ovl_worker_t *w)
{
    fake_t *f = w->e->tp_state;
    fake_worker_t *fw = w->tp;
    if (!fw->pending.n)
        return;
    uint64_t sent = 0, bytes = 0, failed = 0;
    pthread_mutex_lock(&f->lock);
    dgram_t *d;
    while ((d = list_pop(&fw->pending))) {
        if (f->out.n >= OVL_FAKE_OUTBOX) {
            free(d);
            failed++;
            continue;
        }
        sent++;
        bytes += d->len;
        list_push(&f->out, d);
    }
    pthread_mutex_unlock(&f->lock);
    ovl_count(w, OVL_C_UDP_TX_PACKETS, sent);
    ovl_count(w, OVL_C_UDP_TX_BYTES, bytes);
    ovl_count(w, OVL_C_UDP_SEND_FAILED, failed);
}

static int fake_recv(ovl_worker_t *w, ovl_rx_t *out, uint32_t max)
{
    fake_t *f = w->e->tp_state;
    fake_worker_t *fw = w->tp;
    uint32_t b = max < w->e->cfg.batch ? max : w->e->cfg.batch;
    dgram_t *got[1024];
    uint32_t n = 0;
    inbox_t *in = &f->in[w->idx];
    pthread_mutex_lock(&f->lock);
    while (n < b && in->l.head)
        got[n++] = list_pop(&in->l);
    f->n_in -= n;
    if (n && !in->l.head) {
        uint64_t v;
        ssize_t r = read(in->fd, &v, sizeof v); /* empty again: not readable */
        (void)r;
    }
    pthread_mutex_unlock(&f->lock);
    for (uint32_t i = 0; i < n; i++) {
        dgram_t *d = got[i];
        ovl_rx_t *rx = &out[i];
        rx->buf = fw->bufs + (size_t)i * fw->buf_size;
        rx->truncated = d->len > fw->buf_size;
        rx->len = rx->truncated ? fw->buf_size : d->len;
        memcpy(rx->buf, d->data, rx->len);
        rx->seg = 0;
        rx->family = d->family;
        rx->encap = d->encap;
        memcpy(rx->addr, d->addr, 16);
        free(d);
    }
    return (int)n;
}

const ovl_transport_ops_t ovl_fake_transport = {
    .name = "fake",
    .open = fake_open,
    .close = fake_close,
    .worker_open = fake_worker_open,
    .worker_close = fake_worker_close,
    .fd = fake_fd,
    .listen = fake_listen,
    .queue = fake_queue,
    .queued = fake_queued,
    .flush = fake_flush,
    .recv = fake_recv,
};

/* ---- the tools ABI ---- */

int ovl_fake_engine_create(const ovl_engine_config_t *c, ovl_engine_t **out)
{
    return ovl_engine_create_on(c, &ovl_fake_transport, out);
}

int ovl_fake_inject(ovl_engine_t *e, int family, const uint8_t *addr, uint16_t port,
                    const uint8_t *buf, size_t len)
{
    return ovl_fake_inject_to(e, 0, family, addr, port, buf, len);
}

int ovl_fake_inject_to(ovl_engine_t *e, int encap, int family, const uint8_t *addr,
                       uint16_t port, const uint8_t *buf, size_t len)
{
    if (e->tp != &ovl_fake_transport || ovl_addr_len(family) < 0 || len > OVL_SUPER_MAX)
        return -EINVAL;
    if (encap == 0)
        encap = e->cfg.encap;
    if (encap != OVL_ENCAP_VXLAN && encap != OVL_ENCAP_GENEVE)
        return -EINVAL;
    fake_t *f = e->tp_state;
    dgram_t *d = malloc(sizeof *d + len);
    if (!d)
        return -ENOMEM;
    memset(d, 0, sizeof *d);
    d->family = (uint8_t)family;
    d->encap = (uint8_t)encap;
    memcpy(d->addr, addr, (size_t)ovl_addr_len(family));
    d->port = port;
    d->len = (uint32_t)len;
    memcpy(d->data, buf, len);
    /* The worker whose receive socket the kernel would choose. */
    uint32_t i = f->n_inboxes > 1 ? ovl_steer_run(&f->prog[encap], buf, len) : 0;
    inbox_t *in = &f->in[i < f->n_inboxes ? i : 0];
    pthread_mutex_lock(&f->lock);
    if (f->n_in >= OVL_FAKE_INBOX) {
        pthread_mutex_unlock(&f->lock);
        free(d);
        return -ENOBUFS;
    }
    int was_empty = !in->l.head;
    list_push(&in->l, d);
    f->n_in++;
    if (was_empty) {
        uint64_t one = 1;
        ssize_t r = write(in->fd, &one, sizeof one);
        (void)r;
    }
    pthread_mutex_unlock(&f->lock);
    return 0;
}

int ovl_fake_take(ovl_engine_t *e, ovl_fake_sent_t *meta, uint8_t *buf, size_t cap)
{
    if (e->tp != &ovl_fake_transport)
        return -EINVAL;
    fake_t *f = e->tp_state;
    pthread_mutex_lock(&f->lock);
    dgram_t *d = list_pop(&f->out);
    pthread_mutex_unlock(&f->lock);
    if (!d)
        return -EAGAIN;
    memset(meta, 0, sizeof *meta);
    meta->family = d->family;
    memcpy(meta->addr, d->addr, 16);
    meta->port = d->port;
    meta->sport = d->sport;
    meta->len = d->len;
    memcpy(buf, d->data, d->len < cap ? d->len : cap);
    int len = (int)d->len;
    free(d);
    return len;
}
