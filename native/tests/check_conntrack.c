/*
 * check_conntrack.c — connection tracking (conntrack.c) under AddressSanitizer
 * and UBSan, with an injected clock.
 *
 * The TCP handshake, data and close; replies pass and unsolicited packets
 * from the far end do not; invalid flags and out-of-handshake packets are
 * refused; UDP and ICMP echo replies; ICMP errors quoting a tracked flow are
 * related (read from real frames through the parser); sessions are per port
 * (and port generation); every timeout expires; a full table refuses an
 * answered connection, evicts an unanswered one (and says so: the caller's
 * conntrack_evicted; a due slot or a reopened session is no eviction), and
 * recovers as sessions expire; closed sessions (RST, FIN both ways) are evicted before anything
 * else, so a burst of short connections never fills a bucket.
 */
#include "../conntrack.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

static int failures;
#define CHECK(cond, ...)                                                                         \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                 \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fprintf(stderr, "\n");                                                               \
            failures++;                                                                          \
        }                                                                                        \
    } while (0)

#define S 1000000000ull
#define IN OVL_POLICY_INGRESS
#define OUT OVL_POLICY_EGRESS
#define SYN 0x02
#define ACK 0x10
#define FIN 0x01
#define RST 0x04

static const uint8_t A[16] = {10, 244, 1, 2}, B[16] = {10, 244, 2, 2}, R[16] = {10, 244, 0, 1};

static ovl_ct_pkt_t pkt(uint8_t proto, const uint8_t *src, uint16_t sport, const uint8_t *dst,
                        uint16_t dport, uint8_t flags)
{
    ovl_ct_pkt_t p;
    memset(&p, 0, sizeof p);
    p.family = 4;
    p.proto = proto;
    memcpy(p.src, src, 16);
    memcpy(p.dst, dst, 16);
    p.sport = sport;
    p.dport = dport;
    p.tcp_flags = flags;
    return p;
}

static int track(ovl_ct_t *ct, ovl_ct_pkt_t p, uint32_t port, int stage, uint64_t now)
{
    ovl_ct_sess_t *s;
    return ovl_ct_track(ct, &p, port, 1, stage, now, &s);
}

static int commit(ovl_ct_t *ct, ovl_ct_pkt_t p, uint32_t port, int stage, uint64_t now)
{
    ovl_ct_sess_t *s;
    return ovl_ct_commit(ct, &p, port, 1, stage, now, 1, 0, 0, &s);
}

static void tcp(void)
{
    ovl_ct_t *ct = ovl_ct_create(1024);
    uint64_t t = 1000 * S;
    ovl_ct_pkt_t syn = pkt(6, A, 40000, B, 80, SYN);
    CHECK(track(ct, syn, 1, OUT, t) == OVL_CT_NEW, "first SYN is new");
    CHECK(commit(ct, syn, 1, OUT, t) == 0, "commit");
    CHECK(track(ct, syn, 1, OUT, t) == OVL_CT_ONGOING, "SYN retransmitted");
    CHECK(track(ct, pkt(6, B, 80, A, 40000, ACK), 1, IN, t) == OVL_CT_INVALID,
          "a reply before the SYN-ACK");
    CHECK(track(ct, pkt(6, B, 80, A, 40000, SYN | ACK), 1, IN, t) == OVL_CT_REPLY, "SYN-ACK");
    CHECK(track(ct, pkt(6, A, 40000, B, 80, ACK), 1, OUT, t) == OVL_CT_ONGOING, "ACK");
    CHECK(track(ct, pkt(6, B, 80, A, 40000, ACK), 1, IN, t) == OVL_CT_REPLY, "data back");
    CHECK(track(ct, pkt(6, A, 40000, B, 80, SYN), 1, OUT, t) == OVL_CT_INVALID,
          "a SYN in an established session");
    /* unsolicited: the far end opening to another port of A, or the same tuple
     * arriving at the wrong stage */
    CHECK(track(ct, pkt(6, B, 5555, A, 22, SYN), 1, IN, t) == OVL_CT_NEW, "unsolicited is new");
    CHECK(track(ct, pkt(6, A, 40000, B, 80, ACK), 1, IN, t) == OVL_CT_INVALID, "wrong stage");
    CHECK(track(ct, pkt(6, B, 80, A, 40000, ACK), 2, IN, t) == OVL_CT_NEW, "another port");
    {
        ovl_ct_sess_t *s;
        ovl_ct_pkt_t p = pkt(6, B, 80, A, 40000, ACK);
        CHECK(ovl_ct_track(ct, &p, 1, 2, IN, t, &s) == OVL_CT_NEW, "another port generation");
    }
    /* an established session lives 5 days */
    t += 400000 * S;
    CHECK(track(ct, pkt(6, B, 80, A, 40000, ACK), 1, IN, t) == OVL_CT_REPLY, "idle for days");
    /* close */
    CHECK(track(ct, pkt(6, A, 40000, B, 80, FIN | ACK), 1, OUT, t) == OVL_CT_ONGOING, "FIN");
    CHECK(track(ct, pkt(6, B, 80, A, 40000, FIN | ACK), 1, IN, t) == OVL_CT_REPLY, "FIN back");
    CHECK(track(ct, pkt(6, A, 40000, B, 80, ACK), 1, OUT, t) == OVL_CT_ONGOING, "last ACK");
    CHECK(ovl_ct_live(ct, t) == 1, "one session");
    /* a new SYN on the closed tuple opens again */
    ovl_ct_sess_t *s;
    CHECK(ovl_ct_track(ct, &syn, 1, 1, OUT, t, &s) == OVL_CT_NEW && s, "reopen");
    CHECK(commit(ct, syn, 1, OUT, t) == 0 && ovl_ct_live(ct, t) == 1, "reopen reuses");
    CHECK(track(ct, syn, 1, OUT, t + 119 * S) == OVL_CT_ONGOING, "SYN_SENT within 120 s");
    CHECK(track(ct, syn, 1, OUT, t + 119 * S + 121 * S) == OVL_CT_NEW, "SYN_SENT expires");
    CHECK(ovl_ct_live(ct, t + 1000 * S) == 0, "nothing left");
    /* RST ends a session; it lingers 10 s */
    t += 2000 * S;
    commit(ct, syn, 1, OUT, t);
    track(ct, pkt(6, B, 80, A, 40000, SYN | ACK), 1, IN, t);
    CHECK(track(ct, pkt(6, B, 80, A, 40000, RST), 1, IN, t) == OVL_CT_REPLY, "RST");
    CHECK(track(ct, pkt(6, B, 80, A, 40000, ACK), 1, IN, t + 9 * S) == OVL_CT_REPLY, "after RST");
    CHECK(track(ct, pkt(6, B, 80, A, 40000, ACK), 1, IN, t + 11 * S) == OVL_CT_NEW, "RST: gone");
    /* flags no stack sends */
    static const uint8_t bad[] = {0, SYN | FIN, SYN | RST, FIN, FIN | SYN | ACK};
    for (size_t i = 0; i < sizeof bad; i++)
        CHECK(track(ct, pkt(6, A, 1, B, 2, bad[i]), 1, OUT, t) == OVL_CT_INVALID,
              "flags %#x", bad[i]);
    /* pick-up: an ACK without a session, committed, is established */
    ovl_ct_pkt_t mid = pkt(6, A, 50000, B, 443, ACK);
    CHECK(track(ct, mid, 1, OUT, t) == OVL_CT_NEW, "mid-stream ACK is new");
    CHECK(commit(ct, mid, 1, OUT, t) == 0, "picked up");
    CHECK(track(ct, pkt(6, B, 443, A, 50000, ACK), 1, IN, t) == OVL_CT_REPLY, "its reply");
    /* RST opens nothing */
    CHECK(commit(ct, pkt(6, A, 1, B, 2, RST), 1, OUT, t) == 0 &&
              track(ct, pkt(6, B, 2, A, 1, ACK), 1, IN, t) == OVL_CT_NEW,
          "RST opens nothing");
    ovl_ct_free(ct);
}

static void udp_icmp(void)
{
    ovl_ct_t *ct = ovl_ct_create(1024);
    uint64_t t = 5 * S;
    ovl_ct_pkt_t q = pkt(17, A, 5353, B, 53, 0);
    commit(ct, q, 1, OUT, t);
    CHECK(track(ct, q, 1, OUT, t + 29 * S) == OVL_CT_ONGOING, "UDP within 30 s");
    CHECK(track(ct, q, 1, OUT, t + 29 * S + 31 * S) == OVL_CT_NEW, "unanswered UDP expires");
    commit(ct, q, 1, OUT, t);
    CHECK(track(ct, pkt(17, B, 53, A, 5353, 0), 1, IN, t) == OVL_CT_REPLY, "UDP reply");
    CHECK(track(ct, pkt(17, B, 53, A, 5353, 0), 1, IN, t + 170 * S) == OVL_CT_REPLY,
          "answered UDP lives 180 s");
    CHECK(track(ct, pkt(17, B, 53, A, 5353, 0), 1, IN, t + 170 * S + 181 * S) == OVL_CT_NEW,
          "and then expires");
    CHECK(track(ct, pkt(17, B, 53, A, 5354, 0), 1, IN, t) == OVL_CT_NEW, "another port");
    /* ICMP echo by identifier */
    ovl_ct_pkt_t echo = pkt(1, A, 77, B, 77, 0);
    echo.icmp_kind = OVL_CT_ICMP_ECHO;
    commit(ct, echo, 1, OUT, t);
    ovl_ct_pkt_t rep = pkt(1, B, 77, A, 77, 0);
    rep.icmp_kind = OVL_CT_ICMP_ECHO;
    CHECK(track(ct, rep, 1, IN, t) == OVL_CT_REPLY, "echo reply");
    rep.sport = rep.dport = 78;
    CHECK(track(ct, rep, 1, IN, t) == OVL_CT_NEW, "another identifier");
    ovl_ct_free(ct);
}

/* ---- ICMP errors, read from frames ---- */

static size_t ipv4(uint8_t *f, uint8_t proto, const uint8_t *src, const uint8_t *dst,
                   size_t payload)
{
    memset(f, 0, 20);
    f[0] = 0x45;
    f[2] = (uint8_t)((20 + payload) >> 8), f[3] = (uint8_t)(20 + payload);
    f[8] = 64;
    f[9] = proto;
    memcpy(f + 12, src, 4);
    memcpy(f + 16, dst, 4);
    return 20;
}

static void icmp_errors(void)
{
    ovl_ct_t *ct = ovl_ct_create(1024);
    uint64_t t = 5 * S;
    commit(ct, pkt(17, A, 5353, B, 53, 0), 1, OUT, t);
    /* R -> A: port unreachable, quoting A -> B */
    uint8_t fr[200];
    memset(fr, 0, sizeof fr);
    memset(fr, 0x02, 12);
    fr[12] = 0x08;
    uint8_t *ip = fr + 14;
    size_t quoted = 20 + 8;
    ipv4(ip, 1, R, A, 8 + quoted);
    uint8_t *icmp = ip + 20;
    icmp[0] = 3, icmp[1] = 3;
    uint8_t *q = icmp + 8;
    ipv4(q, 17, A, B, 8);
    q[20] = 5353 >> 8, q[21] = 5353 & 255, q[22] = 0, q[23] = 53;
    size_t len = 14 + 20 + 8 + quoted;
    ovl_frame_t f;
    CHECK(ovl_wire_parse_frame(fr, len, &f) == 0, "the error parses");
    ovl_ct_pkt_t p;
    CHECK(ovl_ct_pkt_from(fr, len, &f, &p) == 1 && p.icmp_kind == OVL_CT_ICMP_ERROR,
          "an ICMP error");
    CHECK(track(ct, p, 1, IN, t) == OVL_CT_RELATED, "related to the UDP session");
    q[23] = 54; /* quoting a flow never seen */
    ovl_wire_parse_frame(fr, len, &f);
    ovl_ct_pkt_from(fr, len, &f, &p);
    CHECK(track(ct, p, 1, IN, t) == OVL_CT_NEW, "an error about nothing tracked");
    CHECK(commit(ct, p, 1, IN, t) == 0 && ovl_ct_live(ct, t) == 1, "an error opens nothing");
    /* echo read from a frame */
    ipv4(ip, 1, A, B, 8);
    icmp[0] = 8, icmp[1] = 0, icmp[4] = 0x12, icmp[5] = 0x34;
    ovl_wire_parse_frame(fr, 14 + 28, &f);
    CHECK(ovl_ct_pkt_from(fr, 14 + 28, &f, &p) == 1 && p.icmp_kind == OVL_CT_ICMP_ECHO &&
              p.sport == 0x1234 && p.dport == 0x1234,
          "echo identifier");
    ovl_ct_free(ct);
}

static void full_table(void)
{
    ovl_ct_t *ct = ovl_ct_create(OVL_CT_WAYS); /* one bucket */
    uint64_t t = 10 * S;
    for (uint16_t i = 0; i < OVL_CT_WAYS; i++) {
        CHECK(commit(ct, pkt(17, A, (uint16_t)(1000 + i), B, 53, 0), 1, OUT, t) == 0, "fill");
        track(ct, pkt(17, B, 53, A, (uint16_t)(1000 + i), 0), 1, IN, t); /* answered */
    }
    CHECK(commit(ct, pkt(17, A, 2000, B, 53, 0), 1, OUT, t) == -ENOSPC,
          "a full table of answered sessions refuses");
    CHECK(track(ct, pkt(17, B, 53, A, 1000, 0), 1, IN, t) == OVL_CT_REPLY, "nothing evicted");
    CHECK(commit(ct, pkt(17, A, 2000, B, 53, 0), 1, OUT, t + 181 * S) == 0,
          "recovers when sessions expire");
    /* unanswered sessions are evicted, oldest first */
    ovl_ct_t *c2 = ovl_ct_create(OVL_CT_WAYS);
    for (uint16_t i = 0; i < OVL_CT_WAYS; i++)
        commit(c2, pkt(17, A, (uint16_t)(1000 + i), B, 53, 0), 1, OUT, t + i);
    CHECK(commit(c2, pkt(17, A, 3000, B, 53, 0), 1, OUT, t + 100) == 1, "evicts, and says so");
    CHECK(track(c2, pkt(17, A, 1000, B, 53, 0), 1, OUT, t + 100) == OVL_CT_NEW, "the oldest");
    CHECK(track(c2, pkt(17, A, 1001, B, 53, 0), 1, OUT, t + 100) == OVL_CT_ONGOING, "not others");
    CHECK(c2->count == OVL_CT_WAYS, "count stays bounded");
    ovl_ct_free(ct);
    ovl_ct_free(c2);
}

/* One TCP connection from A:sport to B:80, through its handshake; then closed
 * by close: RST from B, FIN from both ends, or FIN from A alone (half-closed). */
enum { CLOSE_RST, CLOSE_FIN, CLOSE_HALF, CLOSE_NONE };
static void tcp_conn(ovl_ct_t *ct, uint16_t sport, int close, uint64_t t)
{
    CHECK(commit(ct, pkt(6, A, sport, B, 80, SYN), 1, OUT, t) >= 0, "SYN %u", sport);
    CHECK(track(ct, pkt(6, B, 80, A, sport, SYN | ACK), 1, IN, t) == OVL_CT_REPLY, "SYN-ACK");
    CHECK(track(ct, pkt(6, A, sport, B, 80, ACK), 1, OUT, t) == OVL_CT_ONGOING, "ACK");
    if (close == CLOSE_RST)
        CHECK(track(ct, pkt(6, B, 80, A, sport, RST), 1, IN, t) == OVL_CT_REPLY, "RST");
    if (close == CLOSE_FIN || close == CLOSE_HALF)
        CHECK(track(ct, pkt(6, A, sport, B, 80, FIN | ACK), 1, OUT, t) == OVL_CT_ONGOING, "FIN");
    if (close == CLOSE_FIN)
        CHECK(track(ct, pkt(6, B, 80, A, sport, FIN | ACK), 1, IN, t) == OVL_CT_REPLY, "FIN");
}

/* A burst of short connections: closed sessions (CLOSE, TIME_WAIT) give their
 * slots to new ones before anything else; then unanswered ones; answered
 * open and half-closed sessions never. */
static void closed_sessions_evicted(void)
{
    uint64_t t = 10 * S;
    ovl_ct_t *ct = ovl_ct_create(OVL_CT_WAYS); /* one bucket */
    for (uint16_t i = 0; i < 200; i++) /* 25 times the bucket, each closed at once */
        tcp_conn(ct, (uint16_t)(40000 + i), i % 2 ? CLOSE_RST : CLOSE_FIN, t + i);
    CHECK(ct->count == OVL_CT_WAYS, "bounded: %u", ct->count);
    CHECK(track(ct, pkt(6, A, 40199, B, 80, ACK), 1, OUT, t + 200) == OVL_CT_ONGOING,
          "the last connection is held");
    ovl_ct_free(ct);

    /* established, half-closed, unanswered and closed sessions in one bucket */
    ct = ovl_ct_create(OVL_CT_WAYS);
    tcp_conn(ct, 1, CLOSE_NONE, t);     /* established */
    tcp_conn(ct, 2, CLOSE_HALF, t);     /* FIN from A only */
    tcp_conn(ct, 3, CLOSE_FIN, t + 2);  /* TIME_WAIT, newer */
    tcp_conn(ct, 4, CLOSE_RST, t + 1);  /* CLOSE, older */
    CHECK(commit(ct, pkt(6, A, 5, B, 80, SYN), 1, OUT, t) == 0, "unanswered SYN");
    for (uint16_t i = 6; i < 6 + OVL_CT_WAYS - 5; i++)
        tcp_conn(ct, i, CLOSE_NONE, t);
    CHECK(ct->count == OVL_CT_WAYS, "full");
    uint64_t now = t + 5;
    CHECK(commit(ct, pkt(6, A, 100, B, 80, SYN), 1, OUT, now) == 1, "a new SYN takes a slot");
    CHECK(track(ct, pkt(6, B, 80, A, 4, ACK), 1, IN, now) == OVL_CT_NEW, "the RST one went");
    CHECK(commit(ct, pkt(6, A, 101, B, 80, SYN), 1, OUT, now + 1) == 1, "a second");
    CHECK(track(ct, pkt(6, B, 80, A, 3, ACK), 1, IN, now + 1) == OVL_CT_NEW, "then TIME_WAIT");
    CHECK(commit(ct, pkt(6, A, 102, B, 80, SYN), 1, OUT, now + 2) == 1, "a third");
    CHECK(track(ct, pkt(6, A, 5, B, 80, SYN), 1, OUT, now + 2) == OVL_CT_NEW,
          "then the oldest unanswered");
    CHECK(commit(ct, pkt(6, A, 103, B, 80, SYN), 1, OUT, now + 3) == 1, "a fourth");
    CHECK(track(ct, pkt(6, A, 100, B, 80, SYN), 1, OUT, now + 3) == OVL_CT_NEW,
          "then the next oldest unanswered");
    CHECK(track(ct, pkt(6, A, 101, B, 80, SYN), 1, OUT, now + 3) == OVL_CT_ONGOING,
          "not a newer one");
    CHECK(track(ct, pkt(6, B, 80, A, 1, ACK), 1, IN, now + 3) == OVL_CT_REPLY, "established kept");
    CHECK(track(ct, pkt(6, B, 80, A, 2, ACK), 1, IN, now + 3) == OVL_CT_REPLY,
          "half-closed kept: the other end may still send");
    ovl_ct_free(ct);
}

int main(void)
{
    tcp();
    udp_icmp();
    icmp_errors();
    full_table();
    closed_sessions_evicted();
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("check_conntrack: ok\n");
    return 0;
}
