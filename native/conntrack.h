/*
 * conntrack.h — connection tracking: the sessions of allowed connections,
 * one table per worker.
 *
 * A session is keyed by the port it was seen at and the connection's
 * 5-tuple in canonical order (the lower end first), so both directions find
 * it. It records which end opened the connection and at which of the port's
 * stages (ingress or egress) it was allowed: a packet at the same stage
 * from the same end is the connection going on; a packet at the other stage
 * from the other end is a reply. Replies and later packets pass without
 * classification (policy.c), as long as the session's table generation is
 * the port's: after a policy change the next packet is classified again and
 * a deny ends the session.
 *
 * Design notes.
 * - Per worker (engine.h, "Per-flow state"): no lock, no atomic, nothing
 *   shared per packet. Flow steering brings both directions to one worker.
 * - Bounded, set-associative: a bucket of OVL_CT_WAYS sessions, found by
 *   the key's hash; a session that is due is free to take. When a bucket is
 *   full, a closed TCP session (RST, or FIN from both ends: CLOSE,
 *   TIME_WAIT) is evicted first, the one due first; then the oldest session
 *   that never saw a reply (a half-open TCP connection, an unanswered UDP or
 *   ICMP flow), counted as conntrack_evicted by the caller (ovl_ct_commit
 *   says so); when every one is answered and open, the new connection is
 *   refused (conntrack_full) and the table recovers as sessions expire. A
 *   burst of short connections thus reuses the slots of those that closed,
 *   and a flood of unanswered connections never evicts an established one.
 *   No allocation after creation.
 * - TCP follows the handshake (SYN, SYN-ACK, ACK), FIN from each side and
 *   RST, with Linux's timeouts; flag combinations no stack sends (SYN+FIN,
 *   SYN+RST, no flags, FIN without ACK) and packets out of the handshake
 *   (a reply before the SYN-ACK, a second SYN in an established session)
 *   are invalid (conntrack_invalid). A TCP packet other than a SYN without a
 *   session is picked up, as Linux's nf_conntrack_tcp_loose does: classified,
 *   and tracked as established when allowed (a restarted engine keeps its
 *   pods' connections). UDP, SCTP and other protocols are tracked by their
 *   tuple (SCTP without its state machine), ICMP echo by its identifier,
 *   and an ICMP error (destination unreachable, time exceeded, parameter
 *   problem, packet too big) is related to the session of the packet it
 *   quotes and passes with it.
 * - The clock is the caller's (now_ns): the worker's burst clock, or a
 *   test's.
 */
#ifndef OVL_CONNTRACK_H
#define OVL_CONNTRACK_H

#include "ovl.h"

#define OVL_CT_WAYS 8  /* sessions per bucket; the size: config conntrack_sessions */

/* A packet as connection tracking sees it. */
typedef struct ovl_ct_pkt {
    uint8_t family;              /* 4 or 6 */
    uint8_t proto;
    uint8_t tcp_flags;
    uint8_t fragment;            /* a non-first fragment: no ports */
    uint16_t sport, dport;       /* ICMP echo: the identifier in both */
    uint8_t src[16], dst[16];
    uint8_t icmp_kind;           /* OVL_CT_ICMP_* */
    /* an ICMP error: the quoted packet's tuple (as it was sent) */
    uint8_t in_proto;
    uint16_t in_sport, in_dport;
    uint8_t in_src[16], in_dst[16];
} ovl_ct_pkt_t;

#define OVL_CT_ICMP_NONE 0
#define OVL_CT_ICMP_ECHO 1       /* a request or reply: tracked by identifier */
#define OVL_CT_ICMP_ERROR 2      /* quotes a packet: related to its session */
#define OVL_CT_ICMP_OTHER 3      /* any other ICMP message: by its addresses */

/* Fill *p from parsed frame f (frame[0..len) for an ICMP error's quote).
 * Returns 1 when the packet is tracked (IPv4 or IPv6), 0 otherwise. */
int ovl_ct_pkt_from(const uint8_t *frame, size_t len, const ovl_frame_t *f, ovl_ct_pkt_t *p);

typedef struct ovl_ct_key {
    uint32_t port;               /* port id */
    uint32_t port_gen;           /* its generation: a reused id starts empty */
    uint8_t family, proto;
    uint16_t pa, pb;             /* the ends' ports, canonical order */
    uint16_t zero;
    uint8_t a[16], b[16];
} ovl_ct_key_t;

typedef struct ovl_ct_sess {
    ovl_ct_key_t k;
    uint64_t expires_ns;
    uint32_t table_gen;          /* the generation of the table that allowed it */
    uint32_t bit;                /* the rule that allowed it */
    uint8_t state;               /* OVL_CT_S_*; 0: free */
    uint8_t orig_a;              /* the opening end is a */
    uint8_t stage;               /* OVL_POLICY_INGRESS or EGRESS: where it was allowed */
    uint8_t flags;               /* OVL_CT_F_* */
} ovl_ct_sess_t;

#define OVL_CT_F_REPLIED 1       /* a reply was seen */
#define OVL_CT_F_AUDIT 2         /* allowed by an audited deny */
#define OVL_CT_F_FIN_ORIG 4
#define OVL_CT_F_FIN_REPLY 8

enum {
    OVL_CT_S_FREE = 0,
    OVL_CT_S_SYN_SENT,
    OVL_CT_S_SYN_RECV,
    OVL_CT_S_ESTABLISHED,
    OVL_CT_S_FIN_WAIT,           /* one side sent FIN */
    OVL_CT_S_TIME_WAIT,          /* both did */
    OVL_CT_S_CLOSE,              /* RST */
    OVL_CT_S_OPEN,               /* UDP, ICMP echo, others: seen one way */
};

/* What a packet is to the table. */
enum {
    OVL_CT_NEW = 0,              /* no session: classify; ovl_ct_commit when allowed */
    OVL_CT_ONGOING,              /* from the opening end at the opening stage */
    OVL_CT_REPLY,                /* from the other end at the other stage */
    OVL_CT_RELATED,              /* an ICMP error about a session */
    OVL_CT_INVALID,              /* refused: conntrack_invalid */
};

typedef struct ovl_ct {
    uint32_t mask;               /* buckets - 1 */
    uint32_t count;              /* sessions live (or due, not yet reused) */
    ovl_ct_sess_t *s;            /* (mask + 1) x OVL_CT_WAYS */
} ovl_ct_t;

/* A table for at least sessions sessions; NULL without memory. */
ovl_ct_t *ovl_ct_create(uint32_t sessions);
void ovl_ct_free(ovl_ct_t *ct);

/* Look p up at port (id, gen), stage, at now_ns. ONGOING, REPLY, RELATED:
 * *s is the session, its state and expiry already advanced by p. NEW: *s
 * NULL, or a closed session the connection reopens (ovl_ct_commit reuses
 * it). INVALID: refused. */
int ovl_ct_track(ovl_ct_t *ct, const ovl_ct_pkt_t *p, uint32_t port, uint32_t port_gen,
                 int stage, uint64_t now_ns, ovl_ct_sess_t **s);

/* Start the session of p (allowed at stage by bit of table generation gen).
 * 0 (and *out) when a free or due slot took it, 1 (and *out) when a live
 * session was evicted for it (the caller counts conntrack_evicted), or
 * -ENOSPC: the bucket is full of answered, open sessions. Packets that open
 * nothing (a TCP RST, an ICMP error) return 0 and *out NULL. */
int ovl_ct_commit(ovl_ct_t *ct, const ovl_ct_pkt_t *p, uint32_t port, uint32_t port_gen,
                  int stage, uint64_t now_ns, uint32_t gen, uint32_t bit, int audit,
                  ovl_ct_sess_t **out);

/* End session s (a policy change denied it). */
void ovl_ct_end(ovl_ct_t *ct, ovl_ct_sess_t *s);

/* The tuple s was opened with: its opening end's address and port as src. */
void ovl_ct_orig(const ovl_ct_sess_t *s, uint8_t *src, uint8_t *dst, uint16_t *sport,
                 uint16_t *dport);

/* Sessions not yet due at now_ns (walks the table: tests, counters). */
uint32_t ovl_ct_live(const ovl_ct_t *ct, uint64_t now_ns);

#endif
