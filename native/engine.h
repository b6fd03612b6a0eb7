/*
 * engine.h — the engine object and its workers: what every room of the
 * packet path shares.
 *
 * Rooms (native/, one job per file, named after its symbols):
 *   engine.c    life cycle, workers, the worker loop
 *   network.c   networks, VTEPs, tunnel headers, known Geneve options
 *   port.c      ports: add, attach, addresses, remove
 *   tap.c       TAP devices (open, attach, queues, offloads)
 *   fdb.c       FDB, neighbours, learning          map.c  the hash map
 *   events.c    the event ring                     counters.c  counter readers
 *   encap.c     pod -> underlay, as stages         decap.c  underlay -> pod, as stages
 *   deliver.c   every frame for a local port
 *   udp.c       the tunnel transport               fake.c  the in-memory transport
 *   portsec.c   anti-spoofing
 *   wire.c offload.c csum.c   formats; segmentation/coalescing; the checksum
 *
 * Design notes.
 * - Locking, as it is today. One reader-writer lock (e->lock) guards every
 *   table: networks, ports, FDB, neighbours, members, known options. A
 *   worker takes it as reader once per burst, not per packet, and holds it
 *   through the burst's system calls (TAP reads and writes, the transport's
 *   flush); the control plane takes it as writer for each change. Changes
 *   are rare and short, so a worker waits at most for one table update.
 *   Everything a burst points at (FDB values, VTEP lists, ports) therefore
 *   stays in place until the burst's flush (transport.h, "Memory").
 * - Learning needs a write: a worker queues what it learned during the
 *   burst and applies it after the burst as a writer (fdb.c). This is the
 *   one place a worker writes a table; the next step takes it off the writer
 *   lock (see below).
 * - Per-worker state. Each worker owns its epoll set, its transport state
 *   (receive socket, send queues: w->tp), its buffers, its learn queue, its
 *   miss cache and all its counters: node counters (w->c) and per-network
 *   and per-port counters (w->obj_c), each written by that worker alone and
 *   summed when read (counters.c). Nothing is written per frame to memory
 *   another worker writes. Ports are spread over workers by id; a
 *   multi-queue TAP gives each worker its own queue.
 * - What comes next. Per-flow state (sessions of connection tracking) will be
 *   written per packet, which the one-lock model cannot carry. The worker
 *   structure is ready for per-worker tables: a worker's own tables would
 *   hang off ovl_worker_t beside obj_c and need no lock at all, provided both
 *   directions of a flow reach the same worker. Today they need not: a pod's
 *   flow is steered to a worker by the TAP's queue selection (the kernel's
 *   flow hash), the reply from the underlay by SO_REUSEPORT's choice of
 *   receive socket, and the two are independent. That decision, its reasons
 *   and the steering that would make it true are written here by the change
 *   that adds per-flow state, before the code that relies on it.
 * - Every frame buffer has OVL_HEADROOM bytes in front, so the tunnel header,
 *   prebuilt per network, is copied in place and the datagram goes out as
 *   one iovec.
 */
#ifndef OVL_ENGINE_H
#define OVL_ENGINE_H

#include "events.h"
#include "fdb.h"
#include "map.h"
#include "offload.h"
#include "transport.h"

#include <pthread.h>

#define OVL_MAX_WORKERS 16
#define OVL_SEG_SLOTS 512        /* segment header slots (OVL_SEG_HDR_MAX bytes each) */
#define OVL_SUPER_MAX 65536      /* the largest super-frame or coalesced receive */
#define OVL_LEARN_MAX 64         /* learned entries queued per burst */
#define OVL_MISS_CACHE 256       /* recent misses remembered, to rate-limit events */
#define OVL_MISS_INTERVAL_NS 1000000000ull
#define OVL_KNOWN_OPTS_MAX 64
#define OVL_RX_ROUNDS 4          /* receive bursts per wake-up before yielding to TAPs */

typedef struct ovl_network ovl_network_t;  /* network.h */
typedef struct ovl_port ovl_port_t;        /* port.h */

/* epoll data: kind in bits 24..31, port id in 0..23, generation in 32..55,
 * TAP queue in 56..63. */
#define OVL_EP_TRANSPORT ((uint64_t)1 << 24)
#define OVL_EP_STOP ((uint64_t)2 << 24)
#define OVL_EP_PORTK ((uint64_t)3 << 24)
#define OVL_EP_PORT(id, gen, q) (OVL_EP_PORTK | (uint64_t)(id) | ((uint64_t)(gen) << 32) | ((uint64_t)(q) << 56))
#define OVL_EP_QUEUE(d) ((uint32_t)((d) >> 56))
#define OVL_EP_KIND(d) ((d) & ((uint64_t)0xff << 24))
#define OVL_EP_ID(d) ((uint32_t)((d) & 0xffffff))
#define OVL_EP_GEN(d) ((uint32_t)(((d) >> 32) & 0xffffff))

struct ovl_worker {
    ovl_engine_t *e;
    uint32_t idx;
    pthread_t thread;
    int started;
    int epfd;
    uint64_t now_ns;             /* the current burst's clock */
    void *tp;                    /* the transport's per-worker state */
    ovl_rx_t *rx;                /* cfg.batch receives (transport.h) */
    uint32_t tap_buf_size;       /* headroom + largest frame read from a TAP */
    uint8_t *tap_bufs;           /* batch x tap_buf_size */
    uint8_t *seg_hdrs;           /* OVL_SEG_SLOTS x OVL_SEG_HDR_MAX: headers of segments */
    uint32_t n_seg_hdrs;
    ovl_seg_t segs[OVL_GSO_MAX_SEGS];
    ovl_gro_t gro;               /* the coalesced train being built (deliver.c) */
    uint32_t n_learn;
    ovl_learn_t learn[OVL_LEARN_MAX];
    struct { uint64_t key, when_ns; } miss[OVL_MISS_CACHE];
    uint8_t scratch[256];        /* ARP/ND replies */
    uint64_t *obj_c;             /* (max_networks + max_ports) x OVL_O__COUNT (counters.h) */
    uint64_t *port_c;            /* obj_c's rows of ports: obj_c + max_networks rows */
    uint64_t c[OVL_C__COUNT] __attribute__((aligned(64)));
};

struct ovl_engine {
    ovl_engine_config_t cfg;
    pthread_rwlock_t lock;
    int netns_fd;                /* our own dup, or -1 */
    int stop_fd;                 /* eventfd: wakes the workers to stop */
    int running;
    uint16_t udp_port;           /* the tunnel port: listened on, the default VTEP port */
    uint32_t offloads;           /* OVL_OFF_* in use */
    uint32_t tap_probed;         /* a TAP has been opened: the TAP bits are known */
    uint32_t n_workers;
    ovl_worker_t *workers[OVL_MAX_WORKERS];
    const ovl_transport_ops_t *tp;  /* the tunnel transport */
    void *tp_state;              /* its engine-wide state */
    ovl_network_t *nets;         /* max_networks */
    ovl_map_t net_by_vni;        /* vni -> uint32 index into nets */
    ovl_map_t members;           /* ovl_member_key_t -> (nothing): network.h */
    uint32_t known[OVL_KNOWN_OPTS_MAX];
    uint32_t n_known;
    ovl_port_t *ports;           /* max_ports */
    ovl_map_t fdb;               /* ovl_fdb_key_t -> ovl_fdb_val_t */
    ovl_map_t neigh;             /* ovl_neigh_key_t -> ovl_neigh_val_t */
    ovl_events_t events;
};

#define OVL_RDLOCK(e) pthread_rwlock_rdlock(&(e)->lock)
#define OVL_WRLOCK(e) pthread_rwlock_wrlock(&(e)->lock)
#define OVL_UNLOCK(e) pthread_rwlock_unlock(&(e)->lock)

/* Create an engine on transport tp (ovl_udp_transport, ovl_fake_transport). */
int ovl_engine_create_on(const ovl_engine_config_t *c, const ovl_transport_ops_t *tp,
                         ovl_engine_t **out);

uint64_t ovl_now_ns(void);
/* 4 or 16 for a family, -1 otherwise. */
int ovl_addr_len(int family);

/* Enter the network namespace behind netns_fd (-1: stay) for this thread;
 * *saved restores it (ovl_netns_leave). */
int ovl_netns_enter(int netns_fd, int *saved);
void ovl_netns_leave(int saved);

/* Have worker w's epoll watch fd for input with tag (OVL_EP_*); 0 or -errno. */
int ovl_worker_watch(ovl_worker_t *w, int fd, uint64_t tag);
void ovl_worker_unwatch(ovl_worker_t *w, int fd);

/* The two directions, one burst each: the worker loop calls them when a
 * port's TAP queue (encap.c) or the transport (decap.c) is readable. */
void ovl_encap_burst(ovl_worker_t *w, uint32_t port_id, uint32_t gen, uint32_t queue);
void ovl_decap_burst(ovl_worker_t *w);

#endif
