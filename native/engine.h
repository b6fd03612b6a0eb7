/*
 * engine.h — the engine's state: networks, ports, tables, workers, events.
 *
 * Design notes.
 * - One reader-writer lock guards every table. Workers take it as readers
 *   once per batch (not per packet); the control plane takes it as writer
 *   for each change. Changes are rare and short, so a worker waits at most
 *   for one table update; nothing on the hot path allocates or logs.
 * - Learning (MACs seen behind a port without port security, or behind a
 *   VTEP in a learning network) needs a write: a worker queues what it
 *   learned during the batch and applies it after the batch, as a writer.
 * - Each worker owns an epoll set, a receive socket (SO_REUSEPORT when there
 *   are several), its buffers and its counters; ports are spread over the
 *   workers by id. The source-port sockets are shared (sendmmsg is
 *   thread-safe).
 * - Every frame buffer has OVL_HEADROOM bytes in front, so the tunnel header,
 *   prebuilt per network, is copied in place and the datagram goes out as
 *   one iovec.
 */
#ifndef OVL_ENGINE_H
#define OVL_ENGINE_H

#include "fdb.h"
#include "offload.h"
#include "policy.h"
#include "udp.h"

#include <pthread.h>
#include <sys/socket.h>

#define OVL_MAX_WORKERS 16
#define OVL_TX_MSGS 512          /* datagrams queued before a sendmmsg flush */
#define OVL_TX_IOVS (2 * OVL_TX_MSGS)
#define OVL_SEG_SLOTS OVL_TX_MSGS /* segment header slots (OVL_SEG_HDR_MAX bytes each) */
#define OVL_GSO_BYTES_MAX 65000  /* a larger UDP GSO send fails with EMSGSIZE */
#define OVL_SUPER_MAX 65536      /* the largest super-frame or coalesced receive */
#define OVL_LEARN_MAX 64         /* learned entries queued per batch */
#define OVL_MISS_CACHE 256       /* recent misses remembered, to rate-limit events */
#define OVL_MISS_INTERVAL_NS 1000000000ull
#define OVL_KNOWN_OPTS_MAX 64
#define OVL_RX_ROUNDS 4          /* recvmmsg calls per wake-up before yielding to TAPs */

typedef struct ovl_network {
    int used;
    uint32_t vni;
    uint32_t flags;              /* OVL_NET_* */
    uint16_t hdr_len;            /* prebuilt tunnel header */
    uint32_t frame_limit;        /* largest frame a pod may send (engine.c, frame_limit) */
    uint8_t hdr[OVL_GENEVE_HLEN + OVL_GENEVE_OPTS_MAX];
    ovl_addr_t *vteps;           /* flood list (head-end replication) */
    uint32_t n_vteps, cap_vteps;
    int32_t *ports;              /* local ports */
    uint32_t n_ports, cap_ports;
    uint64_t c[OVL_O__COUNT];    /* atomic adds */
} ovl_network_t;

typedef struct ovl_port {
    int used;
    uint32_t gen;                /* bumped on reuse: stale epoll events are ignored */
    int fd;                      /* queue 0 */
    int fds[OVL_MAX_WORKERS];    /* one queue per worker (multi-queue TAP), or just fd */
    uint32_t n_fds;
    uint32_t flags;              /* OVL_PORT_* */
    uint32_t vni;
    uint32_t net_idx;
    uint32_t worker;
    uint32_t offloads;           /* OVL_OFF_TAP_* in use on this TAP */
    int vnet;                    /* frames carry a virtio-net header */
    int seen;                    /* the port's own MAC was reported (MAC_SEEN) */
    ovl_port_sec_t sec;
    uint64_t c[OVL_O__COUNT];
} ovl_port_t;

typedef struct ovl_learn {
    uint8_t kind;                /* OVL_FDB_LOCAL (port) or OVL_FDB_LEARNED (vtep) */
    uint32_t vni;
    int32_t port_id;
    uint8_t mac[6];
    ovl_addr_t vtep;
} ovl_learn_t;

/* A datagram queued for the underlay: iov_n iovecs from tx_iov[iov_off]. */
typedef struct ovl_txe {
    uint32_t iov_off;
    uint16_t iov_n;
    uint16_t slot;
    uint32_t len;
    const ovl_addr_t *dst;
} ovl_txe_t;

typedef struct ovl_worker {
    struct ovl_engine *e;
    uint32_t idx;
    pthread_t thread;
    int started;
    int epfd;
    int rx_fd;
    uint64_t now_ns;
    uint32_t tap_buf_size;       /* headroom + largest frame read from a TAP */
    uint32_t rx_buf_size;        /* largest (coalesced) receive */
    uint32_t rx_batch;
    uint8_t *tap_bufs;           /* batch x tap_buf_size */
    uint8_t *rx_bufs;            /* rx_batch x rx_buf_size */
    uint8_t *rx_ctrl;            /* rx_batch x OVL_RX_CTRL */
    struct mmsghdr *rx_msgs;
    struct iovec *rx_iov;
    ovl_sockaddr_t *rx_names;
    ovl_txe_t *txq;              /* datagrams queued for the underlay */
    uint32_t n_tx;
    struct iovec *tx_iov;        /* their iovecs, in queue order */
    uint32_t n_iov;
    struct iovec *tx_iov2;       /* at flush: iovecs of each send, contiguous */
    struct mmsghdr *tx_mmsg;
    uint8_t *tx_ctrl;            /* OVL_TX_MSGS x OVL_TX_CTRL: UDP_SEGMENT cmsgs */
    uint32_t *tx_order;
    uint8_t *seg_hdrs;           /* OVL_SEG_SLOTS x OVL_SEG_HDR_MAX */
    uint32_t n_seg_hdrs;
    ovl_seg_t segs[OVL_GSO_MAX_SEGS];
    ovl_gro_t gro;
    uint32_t n_learn;
    ovl_learn_t learn[OVL_LEARN_MAX];
    struct { uint64_t key, when_ns; } miss[OVL_MISS_CACHE];
    uint8_t scratch[256];        /* ARP/ND replies */
    uint64_t c[OVL_C__COUNT] __attribute__((aligned(64)));
} ovl_worker_t;

struct ovl_engine {
    ovl_engine_config_t cfg;
    pthread_rwlock_t lock;
    int netns_fd;                /* our own dup, or -1 */
    int stop_fd;                 /* eventfd: wakes the workers to stop */
    int running;
    uint16_t udp_port;
    uint32_t offloads;           /* OVL_OFF_* in use */
    uint32_t tap_probed;         /* a TAP has been opened: the TAP bits are known */
    uint32_t n_workers;
    ovl_worker_t *workers[OVL_MAX_WORKERS];
    uint16_t n_slots;
    int *tx_fds;                 /* source-port pool */
    ovl_network_t *nets;
    ovl_map_t net_by_vni;        /* vni -> uint32 index into nets */
    ovl_port_t *ports;
    ovl_map_t fdb;               /* ovl_fdb_key_t -> ovl_fdb_val_t */
    ovl_map_t neigh;             /* ovl_neigh_key_t -> ovl_neigh_val_t */
    ovl_map_t members;           /* ovl_member_key_t -> (nothing) */
    uint32_t known[OVL_KNOWN_OPTS_MAX];
    uint32_t n_known;
    pthread_mutex_t ev_lock;
    ovl_event_t *ev;
    uint32_t ev_cap;             /* power of two */
    uint32_t ev_head, ev_tail;   /* free-running; head - tail = queued */
    int ev_fd;                   /* eventfd */
};

#endif
