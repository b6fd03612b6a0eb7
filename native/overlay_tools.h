/*
 * overlay_tools.h — the ABI of the data plane's test and benchmark tools.
 *
 * Not part of the product: nothing in overlay/ outside the bindings and the
 * testing toolkit calls these. They are compiled into the same module (so a
 * test measures the real code) and fed to cffi after overlay.h, whose types
 * they use; the same rules hold (no #include, no include guard).
 */

/* ---- batch codecs (wirebatch.c): the per-packet work of the engine on a
 * batch in memory, without I/O; what bench/ measures against pure Python. */

/* Prepend t's header (built once) in front of each frames[i], which must have
 * OVL_HEADROOM bytes before it, and compute each frame's flow hash into
 * hashes[i]. Returns the header length, or -1 when t cannot be encoded. */
int ovl_wire_encap_batch(int encap, const ovl_tunnel_t *t, uint8_t **frames,
                         const uint32_t *lens, size_t n, uint32_t *hashes);

/* Decode n datagrams and parse each inner frame; out[i] is the inner offset,
 * or -(drop reason id). Returns how many were accepted. */
int ovl_wire_decap_batch(int encap, uint8_t **bufs, const uint32_t *lens, size_t n,
                         const uint32_t *known, size_t n_known, int32_t *out);

/* ---- traffic generator (gen.c): small datagrams at line rate for tests and
 * benchmarks, where a per-packet Python loop would measure only itself. */

/* Send up to count datagrams of payload[0..len) on the connected socket fd in
 * sendmmsg batches of batch, for at most duration_ns. Returns the number
 * sent, or -errno if nothing could be sent. */
int64_t ovl_gen_send(int fd, const uint8_t *payload, size_t len, uint64_t count,
                     uint32_t batch, uint64_t duration_ns);

/* Receive datagrams on fd for at most duration_ns, stopping early after
 * idle_ns without any; writes the counts. Returns 0 or -errno. */
int ovl_gen_recv(int fd, uint64_t duration_ns, uint64_t idle_ns,
                 uint64_t *packets, uint64_t *bytes);

/* ---- the fake transport (fake.c): an engine whose underlay is memory ----
 *
 * As wireguard-go's bindtest: the engine runs unchanged (workers, stages,
 * tables, counters), but what it would send on the underlay is kept for the
 * test to read, and what the test injects arrives as if a peer had sent it
 * to the tunnel port. No socket is opened, so no root and no free port are
 * needed, and the source port of every datagram is visible. */

/* Create an engine on the fake transport (config as ovl_engine_create; the
 * local address and ports are only recorded; UDP offloads are off). */
int ovl_fake_engine_create(const ovl_engine_config_t *c, ovl_engine_t **out);

/* Hand the engine buf[0..len) as a datagram from (family, addr, port) to
 * its tunnel port; with several workers it reaches the worker the UDP
 * transport's steering program would choose. Returns 0, -EINVAL (not a fake
 * engine, bad family), -ENOBUFS (OVL_FAKE_INBOX datagrams wait already) or
 * -ENOMEM. */
#define OVL_FAKE_INBOX 4096
int ovl_fake_inject(ovl_engine_t *e, int family, const uint8_t *addr, uint16_t port,
                    const uint8_t *buf, size_t len);
/* As ovl_fake_inject, to the tunnel port of encapsulation encap
 * (OVL_ENCAP_*; 0: the engine's): the datagram is decoded as encap, as a
 * receive on that port would be. -EINVAL for another encap. */
int ovl_fake_inject_to(ovl_engine_t *e, int encap, int family, const uint8_t *addr,
                       uint16_t port, const uint8_t *buf, size_t len);

/* A datagram the engine sent: to (family, addr, port), from the outer
 * source port sport (ovl_wire_source_port of its flow, the port the UDP
 * transport's socket for that flow is bound to first), len bytes of UDP
 * payload (tunnel header and inner frame). */
typedef struct ovl_fake_sent {
    uint8_t family;
    uint8_t addr[16];
    uint16_t port;
    uint16_t sport;
    uint32_t len;
} ovl_fake_sent_t;

/* Take the oldest datagram sent: its description into *meta, its first cap
 * bytes into buf. Returns its length, -EAGAIN when none is waiting, -EINVAL
 * when e is not a fake engine. At most OVL_FAKE_OUTBOX wait; the engine
 * counts any more as udp_send_failed. */
#define OVL_FAKE_OUTBOX 65536
int ovl_fake_take(ovl_engine_t *e, ovl_fake_sent_t *meta, uint8_t *buf, size_t cap);

/* ---- per-worker counters (counters.c): which worker handled what ----
 *
 * The node counters (ovl_counter_count() values) of worker `worker` alone,
 * not summed: tests see which worker a flow's frames reached (flow steering,
 * engine.h). Returns how many values were written, or -ENOENT when the
 * engine has no such worker. What the learner counts (macs_learned, its
 * events) is in the engine's sums only. */
int ovl_counters_worker(ovl_engine_t *e, uint32_t worker, uint64_t *out, size_t n);
