/*
 * check_engine.c — the whole engine under ThreadSanitizer: workers, the
 * learner and the control plane at once.
 *
 * An engine on the fake transport (fake.c) with four workers and a learning
 * network forwards both ways between a local pod (a SOCK_SEQPACKET pair, as
 * an adopted fd port) and a remote one: two threads inject datagrams (the
 * remote pod's replies, and frames from new source MACs behind two VTEPs, so
 * the learner writes the FDB), one thread is the pod (sends frames, reads
 * what is delivered), one takes what the engine sends. Meanwhile the control
 * thread changes every table: FDB entries and neighbours, ports added and
 * removed (with frames in flight), networks with VTEPs added and removed,
 * counters, events and the FDB read, and the workers stopped and started.
 *
 * Built with -fsanitize=thread and run by tests/native/test_native_sanitize.py;
 * any report fails the run (halt_on_error). At the end: every datagram
 * injected was received and counted once (udp_rx_packets), the stable pod's
 * frames all reached the underlay, and the stable FDB entries are intact.
 */
#include "../ovl.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 4
#define VNI 100
#define STABLE 3000          /* datagrams each way between the stable pods */
#define CHURN_ROUNDS 600
#define LEARN_MAX 20000      /* datagrams from new source MACs, at most */

static const uint8_t MAC_A[6] = {2, 0, 0, 0, 1, 2}, MAC_B[6] = {2, 0, 0, 0, 2, 2};
static const uint8_t IP_A[4] = {10, 244, 1, 2}, IP_B[4] = {10, 244, 1, 3};
static const uint8_t PEER[16] = {198, 18, 0, 2}, OTHER[16] = {198, 18, 0, 3};

static ovl_engine_t *eng;
static int pod_fd;           /* the stable pod's end of its port */
static int stop_traffic;     /* set by main when the churn is over */
static uint64_t injected;    /* datagrams injected (all threads) */
static uint64_t pod_sent, pod_received;

static int fails;
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "check_engine: " __VA_ARGS__);                                         \
            fputc('\n', stderr);                                                                   \
            fails++;                                                                               \
        }                                                                                          \
    } while (0)

/* An Ethernet/IPv4/UDP frame into f; returns its length. */
static size_t udp_frame(uint8_t *f, const uint8_t *dst_mac, const uint8_t *src_mac,
                        const uint8_t *src, const uint8_t *dst, uint16_t sport, uint32_t seq)
{
    memset(f, 0, 64);
    memcpy(f, dst_mac, 6);
    memcpy(f + 6, src_mac, 6);
    f[12] = 0x08;
    uint8_t *ip = f + 14;
    ip[0] = 0x45;
    ip[3] = 20 + 8 + 8;      /* total length */
    ip[8] = 64;
    ip[9] = 17;
    memcpy(ip + 12, src, 4);
    memcpy(ip + 16, dst, 4);
    uint32_t sum = 0;
    for (int i = 0; i < 20; i += 2)
        sum += (uint32_t)(ip[i] << 8 | ip[i + 1]);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    ip[10] = (uint8_t)(~sum >> 8), ip[11] = (uint8_t)~sum;
    uint8_t *udp = ip + 20;
    udp[0] = (uint8_t)(sport >> 8), udp[1] = (uint8_t)sport;
    udp[2] = 0x07, udp[3] = 0xd0; /* 2000 */
    udp[5] = 16;             /* length; checksum 0: none */
    memcpy(udp + 8, &seq, 4);
    return 14 + 20 + 8 + 8;
}

/* VXLAN header for vni in front of the frame at d + 8. */
static void vxlan(uint8_t *d, uint32_t vni)
{
    memset(d, 0, 8);
    d[0] = 0x08;
    d[4] = (uint8_t)(vni >> 16), d[5] = (uint8_t)(vni >> 8), d[6] = (uint8_t)vni;
}

static void inject(const uint8_t *from, const uint8_t *d, size_t len)
{
    int rc;
    while ((rc = ovl_fake_inject(eng, 4, from, 0, d, len)) == -ENOBUFS)
        sched_yield(); /* the inbox is full: let the workers catch up */
    CHECK(rc == 0, "inject: %d", rc);
    __atomic_add_fetch(&injected, 1, __ATOMIC_RELAXED);
}

/* The remote pod's replies to the stable pod. */
static void *replies(void *arg)
{
    (void)arg;
    uint8_t d[8 + 128];
    for (uint32_t k = 0; k < STABLE; k++) {
        vxlan(d, VNI);
        size_t len = udp_frame(d + 8, MAC_A, MAC_B, IP_B, IP_A, (uint16_t)(1000 + k % 500), k);
        inject(PEER, d, 8 + len);
    }
    return NULL;
}

/* New source MACs behind two VTEPs, to a MAC nobody has: learned (and moved
 * between the VTEPs), then a counted drop. */
static void *learning(void *arg)
{
    (void)arg;
    uint8_t d[8 + 128];
    for (uint32_t k = 0; k < LEARN_MAX && !__atomic_load_n(&stop_traffic, __ATOMIC_RELAXED); k++) {
        uint8_t src[6] = {2, 0, 0, 8, (uint8_t)((k >> 8) & 3), (uint8_t)k};
        static const uint8_t nobody[6] = {2, 0, 0, 0, 9, 9};
        vxlan(d, VNI);
        size_t len = udp_frame(d + 8, nobody, src, IP_B, IP_A, (uint16_t)k, k);
        inject(k % 3 ? PEER : OTHER, d, 8 + len);
        if (k % 32 == 31)
            usleep(1000); /* a steady trickle beside the stable traffic */
    }
    return NULL;
}

/* The stable pod: sends its frames, reads what is delivered to it. */
static void *pod(void *arg)
{
    (void)arg;
    uint8_t f[2048];
    uint32_t k = 0;
    while (!__atomic_load_n(&stop_traffic, __ATOMIC_RELAXED) ||
           __atomic_load_n(&pod_received, __ATOMIC_RELAXED) < STABLE) {
        if (k < STABLE) {
            size_t len = udp_frame(f, MAC_B, MAC_A, IP_A, IP_B, (uint16_t)(3000 + k % 500), k);
            if (send(pod_fd, f, len, MSG_DONTWAIT) == (ssize_t)len) {
                k++;
                __atomic_add_fetch(&pod_sent, 1, __ATOMIC_RELAXED);
            }
        }
        ssize_t r;
        while ((r = recv(pod_fd, f, sizeof f, MSG_DONTWAIT)) > 0)
            if (memcmp(f + 6, MAC_B, 6) == 0)
                __atomic_add_fetch(&pod_received, 1, __ATOMIC_RELAXED);
        if (k >= STABLE)
            usleep(200);
    }
    return NULL;
}

/* What the engine sends: taken and dropped. */
static uint64_t taken;
static void *underlay(void *arg)
{
    (void)arg;
    uint8_t buf[2048];
    ovl_fake_sent_t meta;
    int idle = 0;
    while (!__atomic_load_n(&stop_traffic, __ATOMIC_RELAXED) || idle < 1000) {
        if (ovl_fake_take(eng, &meta, buf, sizeof buf) > 0) {
            __atomic_add_fetch(&taken, 1, __ATOMIC_RELAXED);
            idle = 0;
        } else {
            idle++;
            usleep(100);
        }
    }
    return NULL;
}

/* The control plane: one round of changes to every table. */
static void churn(uint32_t i)
{
    uint8_t mac[6] = {2, 0, 0, 9, (uint8_t)(i >> 8), (uint8_t)i};
    uint8_t vtep[16] = {198, 18, 1, (uint8_t)(i % 200 + 1)};
    uint8_t ip[4] = {10, 244, (uint8_t)(100 + i % 50), (uint8_t)(i % 250 + 1)};
    CHECK(ovl_fdb_add(eng, VNI, mac, 4, vtep, 0) == 0, "fdb_add %u", i);
    CHECK(ovl_fdb_neigh_add(eng, VNI, 4, ip, mac) == 0, "neigh_add %u", i);
    if (i % 2) {
        CHECK(ovl_fdb_del(eng, VNI, mac) == 0, "fdb_del %u", i);
        CHECK(ovl_fdb_neigh_del(eng, VNI, 4, ip) == 0, "neigh_del %u", i);
    }

    /* A port that sends a frame and goes while the frame may be in flight. */
    int sp[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) == 0, "socketpair");
    uint8_t pmac[6] = {2, 0, 0, 7, (uint8_t)(i >> 8), (uint8_t)i};
    int id = ovl_port_add_fd(eng, VNI, sp[1], pmac, 0);
    CHECK(id >= 0, "port_add_fd %u: %d", i, id);
    uint8_t f[128];
    size_t len = udp_frame(f, MAC_B, pmac, IP_A, IP_B, 9, i); /* not its IP: a counted drop */
    ssize_t w = send(sp[0], f, len, MSG_DONTWAIT);
    (void)w;
    if (id >= 0)
        CHECK(ovl_port_del(eng, id) == 0, "port_del %u", i);
    else
        close(sp[1]);
    close(sp[0]);

    /* A network with a VTEP, a port and traffic, and its removal. */
    uint32_t vni = 200 + i % 8;
    CHECK(ovl_network_add(eng, vni, 0, i % 2 ? OVL_NET_LEARNING : 0) == 0, "network_add %u", vni);
    CHECK(ovl_network_vtep_add(eng, vni, 4, PEER, 0) == 0, "vtep_add %u", vni);
    CHECK(ovl_fdb_add(eng, vni, MAC_B, 4, PEER, 0) == 0, "fdb_add vni %u", vni);
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) == 0, "socketpair");
    id = ovl_port_add_fd(eng, vni, sp[1], MAC_A, 0);
    CHECK(id >= 0, "port_add_fd vni %u: %d", vni, id);
    uint8_t d[8 + 128];
    vxlan(d, vni);
    len = udp_frame(d + 8, MAC_A, MAC_B, IP_B, IP_A, 7, i);
    inject(PEER, d, 8 + len);
    if (id >= 0)
        CHECK(ovl_port_del(eng, id) == 0, "port_del vni %u", vni);
    else
        close(sp[1]);
    close(sp[0]);
    CHECK(ovl_network_vtep_del(eng, vni, 4, PEER) == 0, "vtep_del %u", vni);
    CHECK(ovl_network_del(eng, vni) == 0, "network_del %u", vni);

    /* Readers. */
    uint64_t c[OVL_C__COUNT];
    CHECK(ovl_counters_engine(eng, c, OVL_C__COUNT) > 0, "counters");
    CHECK(ovl_counters_network(eng, VNI, c, OVL_C__COUNT) > 0, "network counters");
    for (uint32_t wk = 0; wk < WORKERS; wk++)
        CHECK(ovl_counters_worker(eng, wk, c, OVL_C__COUNT) > 0, "worker counters");
    ovl_event_t ev[64];
    ovl_events_take(eng, ev, 64);
    if (i % 16 == 0) {
        static ovl_fdb_entry_t entries[4096];
        CHECK(ovl_fdb_dump(eng, entries, 4096) >= 2, "fdb_dump");
        (void)ovl_engine_steering(eng);
    }
    /* The workers stop and start again under traffic: nothing is lost. */
    if (i % 200 == 100) {
        CHECK(ovl_engine_stop(eng) == 0, "stop");
        CHECK(ovl_engine_start(eng) == 0, "start");
    }
}

int main(void)
{
    ovl_engine_config_t cfg;
    ovl_engine_config_default(&cfg);
    cfg.workers = WORKERS;
    cfg.batch = 32;
    cfg.fdb_size = 8192;
    memcpy(cfg.local_addr, (const uint8_t[]){198, 18, 0, 1}, 4);
    int rc = ovl_fake_engine_create(&cfg, &eng);
    if (rc < 0) {
        fprintf(stderr, "check_engine: engine: %s\n", strerror(-rc));
        return 1;
    }
    CHECK(ovl_network_add(eng, VNI, 0, OVL_NET_LEARNING) == 0, "network_add");
    CHECK(ovl_network_vtep_add(eng, VNI, 4, PEER, 0) == 0, "vtep_add");
    CHECK(ovl_network_vtep_add(eng, VNI, 4, OTHER, 0) == 0, "vtep_add");
    CHECK(ovl_fdb_add(eng, VNI, MAC_B, 4, PEER, 0) == 0, "fdb_add");
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
        return 1;
    int opt = 4 << 20;
    setsockopt(sp[0], SOL_SOCKET, SO_RCVBUF, &opt, sizeof opt);
    setsockopt(sp[1], SOL_SOCKET, SO_SNDBUF, &opt, sizeof opt);
    pod_fd = sp[0];
    int port = ovl_port_add_fd(eng, VNI, sp[1], MAC_A, 0);
    CHECK(port >= 0, "port_add_fd: %d", port);
    CHECK(ovl_port_add_ip(eng, port, 4, IP_A) == 0, "port_add_ip");
    CHECK(ovl_engine_start(eng) == 0, "start");

    pthread_t t[4];
    void *(*fn[4])(void *) = {replies, learning, pod, underlay};
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, fn[i], NULL);
    for (uint32_t i = 0; i < CHURN_ROUNDS; i++)
        churn(i);
    pthread_join(t[0], NULL); /* every reply injected */
    __atomic_store_n(&stop_traffic, 1, __ATOMIC_RELAXED);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 1; i < 4; i++)
        pthread_join(t[i], NULL);

    /* Let the workers finish what is queued, then count. */
    uint64_t c[OVL_C__COUNT], pc[16];
    for (int tries = 0; tries < 1000; tries++) {
        ovl_counters_engine(eng, c, OVL_C__COUNT);
        if (c[OVL_C_UDP_RX_PACKETS] >= __atomic_load_n(&injected, __ATOMIC_RELAXED))
            break;
        usleep(10000);
    }
    CHECK(ovl_engine_stop(eng) == 0, "stop");
    ovl_counters_engine(eng, c, OVL_C__COUNT);
    CHECK(c[OVL_C_UDP_RX_PACKETS] == injected, "udp_rx_packets %llu, injected %llu",
          (unsigned long long)c[OVL_C_UDP_RX_PACKETS], (unsigned long long)injected);
    CHECK(pod_received == STABLE, "the stable pod received %llu of %d",
          (unsigned long long)pod_received, STABLE);
    CHECK(c[OVL_C_MACS_LEARNED] > 0, "nothing was learned");
    int n = ovl_counters_port(eng, port, pc, 16);
    CHECK(n > OVL_O_ENCAP_PACKETS && pc[OVL_O_ENCAP_PACKETS] == pod_sent && pod_sent == STABLE,
          "the stable pod sent %llu, encapsulated %llu", (unsigned long long)pod_sent,
          (unsigned long long)pc[OVL_O_ENCAP_PACKETS]);
    CHECK(pc[OVL_O_DROPS] == 0, "the stable pod's port dropped %llu",
          (unsigned long long)pc[OVL_O_DROPS]);
    static ovl_fdb_entry_t entries[4096];
    int m = ovl_fdb_dump(eng, entries, 4096);
    int stable = 0;
    for (int i = 0; i < m && i < 4096; i++) {
        if (entries[i].vni == VNI && memcmp(entries[i].mac, MAC_A, 6) == 0)
            stable += entries[i].kind == OVL_FDB_LOCAL && entries[i].port_id == port;
        if (entries[i].vni == VNI && memcmp(entries[i].mac, MAC_B, 6) == 0)
            stable += memcmp(entries[i].vtep, PEER, 4) == 0;
        CHECK(entries[i].vni == VNI, "an entry of removed network %u is left", entries[i].vni);
    }
    CHECK(stable == 2, "the stable FDB entries are not intact");
    ovl_engine_destroy(eng);
    close(pod_fd);
    if (fails) {
        fprintf(stderr, "check_engine: %d failures\n", fails);
        return 1;
    }
    printf("check_engine: ok (%llu datagrams in, %llu out)\n", (unsigned long long)injected,
           (unsigned long long)taken);
    return 0;
}
