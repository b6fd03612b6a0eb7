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
 *   portsec.c   anti-spoofing                      steer.c  flow steering (owner worker)
 *   wire.c offload.c csum.c   formats; segmentation/coalescing; the checksum
 *   policy.c    the policy stages; acl.c  rule tables; conntrack.c  sessions
 *
 * Design notes.
 * - Locking. One reader-writer lock (e->lock) guards the configuration
 *   tables: networks, ports, FDB, neighbours, members, known options. A
 *   worker takes it as reader once per burst, not per packet, and holds it
 *   through the burst's system calls (TAP reads and writes, the transport's
 *   flush); the control plane and the learner (below) take it as writer for
 *   each change. Changes are rare and short, so a worker waits at most for
 *   one table update. Everything a burst points at (FDB values, VTEP lists,
 *   ports) therefore stays in place until the burst's flush (transport.h,
 *   "Memory"). A worker never takes the writer lock.
 * - Learning is off the workers' path. A worker queues what a burst taught
 *   (ovl_fdb_learn_queue) and, after the burst, hands the queue to the
 *   learner through its own single-producer ring (ovl_fdb_learn_commit: no
 *   lock, one eventfd write when it handed anything). The learner, one thread
 *   per engine beside the workers, applies the rings as a writer and pushes
 *   the LEARNED events (fdb.c). It has counters of its own (e->learner.c),
 *   summed with the workers' when read.
 * - Per-worker state. Each worker owns its epoll set, its transport state
 *   (receive socket, send queues: w->tp), its buffers, its learn queue and
 *   ring, its miss cache and all its counters: node counters (w->c) and
 *   per-network and per-port counters (w->obj_c), each written by that
 *   worker alone and summed when read (counters.c). Nothing is written per
 *   frame to memory another worker writes.
 * - Per-flow state: the decision. State written per packet (the sessions of
 *   connection tracking) lives in per-worker tables, hanging off
 *   ovl_worker_t beside obj_c, read and written by their worker alone: no
 *   lock and no shared cache line per packet. That holds only if both
 *   directions of a flow reach the same worker, so every flow has one owner,
 *   ovl_wire_steer_hash(inner frame) % workers (wire.c: symmetric, and read
 *   at fixed offsets), and the kernel is told to deliver both directions
 *   there (steer.c): the underlay's SO_REUSEPORT group picks the owner's
 *   receive socket by a classic BPF program that reads the inner frame
 *   behind the tunnel header (udp.c), and a multi-queue TAP picks the
 *   owner's queue by the same program in eBPF (TUNSETSTEERINGEBPF, port.c);
 *   the fake transport runs the program too (fake.c). The UDP transport
 *   keeps a GSO send to one flow, so that a coalesced receive on the far
 *   side, which the kernel steers by its first datagram, holds one flow.
 *   Why not a sharded table with per-shard locks: a lock (or an atomic) per
 *   packet on a line other workers write is the cost this engine avoids
 *   everywhere else (counters are per worker for the same reason); steering
 *   costs one BPF run in the kernel and nothing here. Why not hand-offs
 *   alone: copying every frame of half the flows to another worker's ring
 *   doubles the memory traffic that steering avoids. What steering cannot
 *   reach is known and counted, never silent: a frame handled by a worker
 *   other than its owner is steer_misses (an adopted fd port has one queue
 *   and one worker; a coalesced receive from a peer that mixes flows in one
 *   GSO send; no CAP_BPF for the TAP program: ovl_engine_steering says what
 *   is in force). Connection tracking (conntrack.c, its sessions hanging off
 *   w->policy) judges such a frame against its own worker's sessions today
 *   (policy.h, known limits); handing it to its owner through a per-worker
 *   ring is the way to close that. With one worker every flow is its own.
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
    ovl_learn_ring_t *learned;   /* to the learner (fdb.h) */
    struct { uint64_t key, when_ns; } miss[OVL_MISS_CACHE];
    uint8_t scratch[256];        /* ARP/ND replies */
    uint64_t *obj_c;             /* (max_networks + max_ports) x OVL_O__COUNT (counters.h) */
    uint64_t *port_c;            /* obj_c's rows of ports: obj_c + max_networks rows */
    struct ovl_policy_worker *policy; /* sessions, verdict-event limits (policy.c), or NULL */
    uint64_t c[OVL_C__COUNT] __attribute__((aligned(64)));
};

/* The learner: applies what the workers learned (fdb.c), off their path. */
typedef struct ovl_learner {
    pthread_t thread;
    int started;
    int fd;                      /* eventfd: a worker handed it something, or stop */
    int stop;                    /* set before fd is written to end the thread */
    ovl_event_t *events;         /* LEARNED events of one round */
    uint64_t c[OVL_C__COUNT] __attribute__((aligned(64)));
} ovl_learner_t;

struct ovl_engine {
    ovl_engine_config_t cfg;
    pthread_rwlock_t lock;
    int netns_fd;                /* our own dup, or -1 */
    int stop_fd;                 /* eventfd: wakes the workers to stop */
    int running;
    uint16_t udp_port;           /* the tunnel port of cfg.encap: udp_ports[cfg.encap] */
    uint16_t udp_ports[3];       /* by OVL_ENCAP_*: each encapsulation's tunnel port, the
                                  * port of a VTEP of its networks given as 0 */
    uint32_t listening;          /* bit OVL_ENCAP_*: the transport receives it (listen) */
    uint32_t offloads;           /* OVL_OFF_* in use */
    uint32_t tap_probed;         /* a TAP has been opened: the TAP bits are known */
    uint32_t n_workers;
    ovl_worker_t *workers[OVL_MAX_WORKERS];
    ovl_learner_t learner;
    uint32_t steering;           /* OVL_STEER_* in force (steer.h) */
    int steer_fd;                /* the TAP steering program (eBPF), or -1 */
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

/* The worker that owns the flow of frame[0..len) (see "Per-flow state"). */
static inline uint32_t ovl_flow_owner(const ovl_engine_t *e, const uint8_t *frame, size_t len)
{
    return e->n_workers > 1 ? ovl_wire_steer_hash(frame, len) % e->n_workers : 0;
}

/* The two directions, one burst each: the worker loop calls them when a
 * port's TAP queue (encap.c) or the transport (decap.c) is readable. */
void ovl_encap_burst(ovl_worker_t *w, uint32_t port_id, uint32_t gen, uint32_t queue);
void ovl_decap_burst(ovl_worker_t *w);

#endif
