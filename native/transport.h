/*
 * transport.h — the seam between the engine and whatever carries its
 * datagrams: underlay addresses (next hops) and the transport interface.
 *
 * Design notes.
 * - wireguard-go's conn.Bind is the model: a transport is a small table of
 *   functions (ovl_transport_ops_t), batch-shaped from the start, with an
 *   in-memory fake beside the real one (bindtest). The engine never names a
 *   socket: encap.c queues datagrams to a next hop and flushes once per
 *   burst, decap.c asks for a burst of receives, engine.c hands each worker's
 *   receive fd to epoll.
 * - Encapsulations. A network chooses VXLAN or Geneve (network.h); the
 *   transport listens on one tunnel port per encapsulation in use and marks
 *   each receive with the encapsulation of the port it came to (ovl_rx_t
 *   encap): decap.c decodes by it, never by guessing from the bytes (a VXLAN
 *   header and a Geneve header without options are alike). Sending needs
 *   nothing per encapsulation: the header is the network's, the destination
 *   port the VTEP's. udp.c is the tunnel transport (VXLAN/Geneve over
 *   kernel UDP sockets, with GSO and GRO); fake.c keeps datagrams in memory
 *   for tests. The routed transport of the next issues (no encapsulation,
 *   direct.c) joins behind the same table.
 * - A transport owns engine-wide state (e->tp_state: the UDP source-port
 *   pool) and per-worker state (w->tp: receive sockets, send queues), so two
 *   workers never share a queue and queueing takes no lock.
 * - Memory. queue() keeps pointers: the iovecs' bytes and the next hop must
 *   stay valid until the next flush(). The engine guarantees it by flushing
 *   before the end of every burst, while it still holds the table lock that
 *   keeps FDB values and VTEP lists in place (engine.h). recv() fills the
 *   entries with pointers into the worker's own receive buffers, valid until
 *   the worker's next recv().
 * - Counting. A transport counts what only it sees: sends (udp_tx_*,
 *   udp_gso_sends, udp_send_failed) and coalesced receives
 *   (udp_gro_receives). decap.c counts each datagram received (udp_rx_*),
 *   so that a coalesced receive counts as the datagrams it holds.
 */
#ifndef OVL_TRANSPORT_H
#define OVL_TRANSPORT_H

#include "ovl.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

typedef struct ovl_engine ovl_engine_t;
typedef struct ovl_worker ovl_worker_t;

typedef union ovl_sockaddr {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
} ovl_sockaddr_t;

/* An underlay address (a VTEP, a next hop), with its socket address
 * prebuilt for sendmmsg. */
typedef struct ovl_addr {
    uint8_t family;        /* 4 or 6 */
    uint8_t pad;
    uint16_t port;         /* host order */
    uint8_t addr[16];
    socklen_t salen;
    ovl_sockaddr_t sa;
} ovl_addr_t;

/* Fill sa from (family, addr, port); returns the socklen. */
socklen_t ovl_sockaddr_make(ovl_sockaddr_t *sa, int family, const uint8_t *addr, uint16_t port);
/* Fill a (family, addr, port) with its socket address. */
void ovl_addr_make(ovl_addr_t *a, int family, const uint8_t *addr, uint16_t port);
/* Read (family, addr) back from a received source address; 0 or -1. */
int ovl_sockaddr_parse(const ovl_sockaddr_t *sa, int *family, uint8_t *addr);

/* One receive: a datagram, or (seg > 0) a run of datagrams that the
 * transport received coalesced, each seg bytes but the last, which may be
 * shorter, all from the same sender. */
typedef struct ovl_rx {
    uint8_t *buf;
    uint32_t len;
    uint32_t seg;          /* 0: one datagram */
    uint8_t truncated;     /* larger than the receive buffer: buf holds a part */
    uint8_t family;        /* the sender: 4 or 6, 0 when unknown */
    uint8_t encap;         /* OVL_ENCAP_* of the tunnel port it arrived on */
    uint8_t addr[16];
} ovl_rx_t;

typedef struct ovl_transport_ops {
    const char *name;
    /* Engine-wide setup, called once in the engine's network namespace
     * before any worker exists: sets e->tp_state and may clear in
     * e->offloads the OVL_OFF_UDP_* bits it cannot give. 0 or -errno; on
     * failure close() is still called. */
    int (*open)(ovl_engine_t *e);
    void (*close)(ovl_engine_t *e);
    /* Per-worker setup (w->tp), in the engine's namespace; 0 or -errno; on
     * failure worker_close() is still called. */
    int (*worker_open)(ovl_worker_t *w);
    void (*worker_close)(ovl_worker_t *w);
    /* The fd that becomes readable when a receive for worker w waits on
     * the tunnel port of the engine's encapsulation. */
    int (*fd)(const ovl_worker_t *w);
    /* Receive encapsulation encap too, on its tunnel port
     * (e->udp_ports[encap]), in every worker: called by the control plane
     * under the writer lock when the first network of an encapsulation
     * other than the engine's is added (the engine's listens from the
     * start). The transport has each worker's epoll watch what it opens
     * (OVL_EP_TRANSPORT), and recv() then takes from every tunnel port.
     * 0 or -errno; on failure nothing is left open. */
    int (*listen)(ovl_engine_t *e, int encap);
    /* Queue one datagram made of n_iov iovecs for next hop `to`; hash is the
     * inner flow's hash (the UDP transport picks the source port from it).
     * May flush what is queued first to make room. Requires: the memory
     * behind iov and `to` stays valid until the next flush. */
    void (*queue)(ovl_worker_t *w, const ovl_addr_t *to, const struct iovec *iov,
                  uint32_t n_iov, uint32_t hash);
    /* Datagrams queued and not yet flushed. */
    uint32_t (*queued)(const ovl_worker_t *w);
    /* Send everything queued; afterwards nothing refers to queued memory.
     * A datagram that cannot be sent is counted (udp_send_failed), never
     * retried later. */
    void (*flush)(ovl_worker_t *w);
    /* Receive a burst of at most max receives into out, without blocking,
     * from every tunnel port listened on, each receive marked with the
     * encapsulation of its port; returns how many (0: none waiting). */
    int (*recv)(ovl_worker_t *w, ovl_rx_t *out, uint32_t max);
} ovl_transport_ops_t;

extern const ovl_transport_ops_t ovl_udp_transport;   /* udp.c */
extern const ovl_transport_ops_t ovl_fake_transport;  /* fake.c */

#endif
