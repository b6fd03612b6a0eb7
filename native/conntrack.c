/* conntrack.c — sessions and their state machines (see conntrack.h). */
#include "conntrack.h"

#include <errno.h>
#include <stdlib.h>

#define S_NS 1000000000ull

/* Linux's defaults (nf_conntrack_tcp_timeout_*, udp, icmp). */
static const uint64_t timeout_ns[] = {
    [OVL_CT_S_FREE] = 0,
    [OVL_CT_S_SYN_SENT] = 120 * S_NS,
    [OVL_CT_S_SYN_RECV] = 60 * S_NS,
    [OVL_CT_S_ESTABLISHED] = 432000 * S_NS,
    [OVL_CT_S_FIN_WAIT] = 120 * S_NS,
    [OVL_CT_S_TIME_WAIT] = 120 * S_NS,
    [OVL_CT_S_CLOSE] = 10 * S_NS,
    [OVL_CT_S_OPEN] = 30 * S_NS,   /* unanswered; answered: REPLIED_NS */
};
#define REPLIED_NS (180 * S_NS)

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_PSH 0x08
#define TH_ACK 0x10
#define TH_URG 0x20

/* ---- the packet ---- */

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static int is_error(int v6, uint8_t type)
{
    return v6 ? type >= 1 && type <= 4 : type == 3 || type == 4 || type == 11 || type == 12;
}

static int is_echo(int v6, uint8_t type)
{
    return v6 ? type == 128 || type == 129 : type == 8 || type == 0;
}

/* The quoted packet of an ICMP error at q[0..n): 1 when its tuple was read. */
static int quote(const uint8_t *q, size_t n, int v6, ovl_ct_pkt_t *p)
{
    size_t l4;
    memset(p->in_src, 0, 16);
    memset(p->in_dst, 0, 16);
    if (!v6) {
        if (n < 20 || (q[0] >> 4) != 4)
            return 0;
        l4 = (size_t)(q[0] & 15) * 4;
        if (l4 < 20 || (rd16(q + 6) & 0x1fff))
            return 0; /* a quoted non-first fragment carries no ports */
        p->in_proto = q[9];
        memcpy(p->in_src, q + 12, 4);
        memcpy(p->in_dst, q + 16, 4);
    } else {
        if (n < 40 || (q[0] >> 4) != 6)
            return 0;
        l4 = 40;
        p->in_proto = q[6];
        memcpy(p->in_src, q + 8, 16);
        memcpy(p->in_dst, q + 24, 16);
    }
    p->in_sport = p->in_dport = 0;
    uint8_t pr = p->in_proto;
    if (pr == 6 || pr == 17 || pr == 132) {
        if (n < l4 + 4)
            return 0;
        p->in_sport = rd16(q + l4);
        p->in_dport = rd16(q + l4 + 2);
    } else if (pr == (v6 ? 58 : 1)) {
        if (n < l4 + 6 || !is_echo(v6, q[l4]))
            return 0;
        p->in_sport = p->in_dport = rd16(q + l4 + 4);
    }
    return 1;
}

int ovl_ct_pkt_from(const uint8_t *frame, size_t len, const ovl_frame_t *f, ovl_ct_pkt_t *p)
{
    if (f->l3 != OVL_L3_IPV4 && f->l3 != OVL_L3_IPV6)
        return 0;
    int v6 = f->l3 == OVL_L3_IPV6;
    memset(p, 0, sizeof *p);
    p->family = v6 ? 6 : 4;
    p->proto = f->ip_proto;
    p->fragment = f->is_fragment;
    memcpy(p->src, f->ip_src, 16);
    memcpy(p->dst, f->ip_dst, 16);
    if (f->is_fragment || !f->l4_off)
        return 1;
    p->tcp_flags = f->tcp_flags;
    p->sport = f->sport;
    p->dport = f->dport;
    if (f->ip_proto == (v6 ? 58 : 1)) {
        size_t l4 = f->l4_off;
        if (is_echo(v6, f->icmp_type) && len >= l4 + 6) {
            p->icmp_kind = OVL_CT_ICMP_ECHO;
            p->sport = p->dport = rd16(frame + l4 + 4);
        } else if (is_error(v6, f->icmp_type) && len > l4 + 8 &&
                   quote(frame + l4 + 8, len - l4 - 8, v6, p)) {
            p->icmp_kind = OVL_CT_ICMP_ERROR;
        } else {
            p->icmp_kind = OVL_CT_ICMP_OTHER;
        }
    }
    return 1;
}

/* ---- the table ---- */

ovl_ct_t *ovl_ct_create(uint32_t sessions)
{
    ovl_ct_t *ct = calloc(1, sizeof *ct);
    if (!ct)
        return NULL;
    uint32_t buckets = 1;
    while ((uint64_t)buckets * OVL_CT_WAYS < sessions)
        buckets <<= 1;
    ct->mask = buckets - 1;
    ct->s = calloc((size_t)buckets * OVL_CT_WAYS, sizeof *ct->s);
    if (!ct->s) {
        free(ct);
        return NULL;
    }
    return ct;
}

void ovl_ct_free(ovl_ct_t *ct)
{
    if (!ct)
        return;
    free(ct->s);
    free(ct);
}

/* The key of the connection (src, sport) <-> (dst, dport); *from_a: src is end a. */
static void make_key(ovl_ct_key_t *k, uint32_t port, uint32_t gen, uint8_t family,
                     uint8_t proto, const uint8_t *src, uint16_t sport, const uint8_t *dst,
                     uint16_t dport, int *from_a)
{
    memset(k, 0, sizeof *k);
    k->port = port;
    k->port_gen = gen;
    k->family = family;
    k->proto = proto;
    int c = memcmp(src, dst, 16);
    int a = c < 0 || (c == 0 && sport <= dport);
    memcpy(k->a, a ? src : dst, 16);
    memcpy(k->b, a ? dst : src, 16);
    k->pa = a ? sport : dport;
    k->pb = a ? dport : sport;
    *from_a = a;
}

static uint32_t key_hash(const ovl_ct_key_t *k)
{
    uint64_t w[sizeof *k / 8];
    memcpy(w, k, sizeof w);
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < sizeof w / sizeof *w; i++) {
        h ^= w[i];
        h *= 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    return (uint32_t)(h ^ (h >> 29));
}

/* One writer (the worker); readers load it relaxed (ovl_conntrack_sessions). */
static void count_add(ovl_ct_t *ct, int d)
{
    __atomic_store_n(&ct->count, __atomic_load_n(&ct->count, __ATOMIC_RELAXED) + (uint32_t)d,
                     __ATOMIC_RELAXED);
}

static int live(const ovl_ct_sess_t *s, uint64_t now_ns)
{
    return s->state != OVL_CT_S_FREE && s->expires_ns > now_ns;
}

static ovl_ct_sess_t *bucket(const ovl_ct_t *ct, const ovl_ct_key_t *k)
{
    return &ct->s[(size_t)(key_hash(k) & ct->mask) * OVL_CT_WAYS];
}

/* The live session of k, or NULL; a due one found on the way is freed. */
static ovl_ct_sess_t *find(ovl_ct_t *ct, const ovl_ct_key_t *k, uint64_t now_ns)
{
    ovl_ct_sess_t *b = bucket(ct, k);
    for (int i = 0; i < OVL_CT_WAYS; i++) {
        if (b[i].state == OVL_CT_S_FREE || memcmp(&b[i].k, k, sizeof *k) != 0)
            continue;
        if (live(&b[i], now_ns))
            return &b[i];
        b[i].state = OVL_CT_S_FREE;
        count_add(ct, -1);
        return NULL;
    }
    return NULL;
}

void ovl_ct_end(ovl_ct_t *ct, ovl_ct_sess_t *s)
{
    if (s->state != OVL_CT_S_FREE) {
        s->state = OVL_CT_S_FREE;
        count_add(ct, -1);
    }
}

static void refresh(ovl_ct_sess_t *s, uint64_t now_ns)
{
    uint64_t t = timeout_ns[s->state];
    if (s->state == OVL_CT_S_OPEN && (s->flags & OVL_CT_F_REPLIED))
        t = REPLIED_NS;
    s->expires_ns = now_ns + t;
}

/* Flags no stack sends: 0 when the combination is valid. */
static int tcp_flags_valid(uint8_t fl)
{
    fl &= (uint8_t)~(TH_PSH | TH_URG);
    fl &= TH_FIN | TH_SYN | TH_RST | TH_ACK;
    switch (fl) {
    case TH_SYN:
    case TH_SYN | TH_ACK:
    case TH_RST:
    case TH_RST | TH_ACK:
    case TH_FIN | TH_ACK:
    case TH_ACK:
        return 1;
    default:
        return 0;
    }
}

/* Advance TCP session s by a packet with flags fl from the opening end
 * (orig) or the other. OVL_CT_ONGOING/REPLY (the caller's), NEW (a SYN
 * reopens a closed session) or INVALID. */
static int tcp_step(ovl_ct_sess_t *s, int orig, uint8_t fl, int ok, uint64_t now_ns)
{
    fl &= TH_FIN | TH_SYN | TH_RST | TH_ACK;
    int syn = fl == TH_SYN, synack = fl == (TH_SYN | TH_ACK);
    if (fl & TH_RST) {
        s->state = OVL_CT_S_CLOSE;
        refresh(s, now_ns);
        return ok;
    }
    switch (s->state) {
    case OVL_CT_S_SYN_SENT:
        if (orig && syn)
            break;                       /* a retransmission */
        if (!orig && synack) {
            s->state = OVL_CT_S_SYN_RECV;
            s->flags |= OVL_CT_F_REPLIED;
            break;
        }
        return OVL_CT_INVALID;
    case OVL_CT_S_SYN_RECV:
        if (!orig && synack)
            break;
        if (fl & TH_SYN)
            return OVL_CT_INVALID;
        if (orig)
            s->state = OVL_CT_S_ESTABLISHED;
        __attribute__((fallthrough)); /* the same ACK may carry a FIN */
    case OVL_CT_S_ESTABLISHED:
    case OVL_CT_S_FIN_WAIT:
        if (fl & TH_SYN)
            return OVL_CT_INVALID;
        if (fl & TH_FIN) {
            s->flags |= orig ? OVL_CT_F_FIN_ORIG : OVL_CT_F_FIN_REPLY;
            s->state = (s->flags & OVL_CT_F_FIN_ORIG) && (s->flags & OVL_CT_F_FIN_REPLY)
                           ? OVL_CT_S_TIME_WAIT
                           : OVL_CT_S_FIN_WAIT;
        }
        break;
    case OVL_CT_S_TIME_WAIT:
    case OVL_CT_S_CLOSE:
        if (orig && syn)
            return OVL_CT_NEW;           /* the same tuple opens a new connection */
        if (fl & TH_SYN)
            return OVL_CT_INVALID;
        return ok;                       /* stray ACKs of the close: no refresh */
    default:
        return OVL_CT_INVALID;
    }
    refresh(s, now_ns);
    return ok;
}

int ovl_ct_track(ovl_ct_t *ct, const ovl_ct_pkt_t *p, uint32_t port, uint32_t port_gen,
                 int stage, uint64_t now_ns, ovl_ct_sess_t **out)
{
    ovl_ct_key_t k;
    int from_a;
    *out = NULL;
    if (p->icmp_kind == OVL_CT_ICMP_ERROR) {
        make_key(&k, port, port_gen, p->family, p->in_proto, p->in_src, p->in_sport, p->in_dst,
                 p->in_dport, &from_a);
        ovl_ct_sess_t *s = find(ct, &k, now_ns);
        if (!s)
            return OVL_CT_NEW;           /* classified as any ICMP message */
        *out = s;
        return OVL_CT_RELATED;
    }
    if (p->proto == 6 && !p->fragment && !tcp_flags_valid(p->tcp_flags))
        return OVL_CT_INVALID;
    make_key(&k, port, port_gen, p->family, p->proto, p->src, p->sport, p->dst, p->dport,
             &from_a);
    ovl_ct_sess_t *s = find(ct, &k, now_ns);
    if (!s)
        return OVL_CT_NEW;
    int orig = from_a == s->orig_a;
    int v;
    if (orig && stage == s->stage)
        v = OVL_CT_ONGOING;
    else if (!orig && stage != s->stage)
        v = OVL_CT_REPLY;
    else
        return OVL_CT_INVALID;           /* an end at the wrong side of the port */
    if (p->proto == 6 && !p->fragment) {
        v = tcp_step(s, orig, p->tcp_flags, v, now_ns);
        if (v == OVL_CT_NEW)
            *out = s;                    /* reopened: commit reuses the slot */
        else if (v != OVL_CT_INVALID)
            *out = s;
        return v;
    }
    if (!orig)
        s->flags |= OVL_CT_F_REPLIED;
    refresh(s, now_ns);
    *out = s;
    return v;
}

/* How readily a live session gives its slot to a new connection when its
 * bucket is full: 2 closed (RST, or FIN from both ends: nothing but stray
 * segments of the close will come), 1 never answered, 0 never (answered and
 * open, half-closed included: the other end may still send). Within a rank
 * the session due first goes. */
static int evict_rank(const ovl_ct_sess_t *s)
{
    if (s->state == OVL_CT_S_CLOSE || s->state == OVL_CT_S_TIME_WAIT)
        return 2;
    return (s->flags & OVL_CT_F_REPLIED) ? 0 : 1;
}

int ovl_ct_commit(ovl_ct_t *ct, const ovl_ct_pkt_t *p, uint32_t port, uint32_t port_gen,
                  int stage, uint64_t now_ns, uint32_t gen, uint32_t bit, int audit,
                  ovl_ct_sess_t **out)
{
    *out = NULL;
    int tcp = p->proto == 6 && !p->fragment;
    if (p->icmp_kind == OVL_CT_ICMP_ERROR || (tcp && (p->tcp_flags & TH_RST)))
        return 0;                        /* opens nothing */
    ovl_ct_key_t k;
    int from_a;
    make_key(&k, port, port_gen, p->family, p->proto, p->src, p->sport, p->dst, p->dport,
             &from_a);
    ovl_ct_sess_t *b = bucket(ct, &k), *slot = NULL, *victim = NULL;
    for (int i = 0; i < OVL_CT_WAYS && !slot; i++)
        if (b[i].state != OVL_CT_S_FREE && memcmp(&b[i].k, &k, sizeof k) == 0)
            slot = &b[i];                /* reopened, or due */
    for (int i = 0; i < OVL_CT_WAYS && !slot; i++)
        if (!live(&b[i], now_ns))
            slot = &b[i];
    if (!slot) {
        int victim_rank = 0;
        for (int i = 0; i < OVL_CT_WAYS; i++) {
            int r = evict_rank(&b[i]);
            if (r && (r > victim_rank ||
                      (r == victim_rank && b[i].expires_ns < victim->expires_ns))) {
                victim = &b[i];
                victim_rank = r;
            }
        }
        if (!victim)
            return -ENOSPC;
        slot = victim;
    }
    if (slot->state == OVL_CT_S_FREE)
        count_add(ct, 1);
    int evicted = slot == victim; /* a live session of another connection gave way */
    memset(slot, 0, sizeof *slot);
    slot->k = k;
    slot->orig_a = (uint8_t)from_a;
    slot->stage = (uint8_t)stage;
    slot->table_gen = gen;
    slot->bit = bit;
    slot->flags = audit ? OVL_CT_F_AUDIT : 0;
    if (!tcp) {
        slot->state = OVL_CT_S_OPEN;
    } else if ((p->tcp_flags & (TH_SYN | TH_ACK)) == TH_SYN) {
        slot->state = OVL_CT_S_SYN_SENT;
    } else {
        /* picked up mid-stream: taken as established and answered */
        slot->state = OVL_CT_S_ESTABLISHED;
        slot->flags |= OVL_CT_F_REPLIED;
    }
    refresh(slot, now_ns);
    *out = slot;
    return evicted;
}

void ovl_ct_orig(const ovl_ct_sess_t *s, uint8_t *src, uint8_t *dst, uint16_t *sport,
                 uint16_t *dport)
{
    const ovl_ct_key_t *k = &s->k;
    memcpy(src, s->orig_a ? k->a : k->b, 16);
    memcpy(dst, s->orig_a ? k->b : k->a, 16);
    *sport = s->orig_a ? k->pa : k->pb;
    *dport = s->orig_a ? k->pb : k->pa;
}

uint32_t ovl_ct_live(const ovl_ct_t *ct, uint64_t now_ns)
{
    uint32_t n = 0;
    for (size_t i = 0; i < ((size_t)ct->mask + 1) * OVL_CT_WAYS; i++)
        n += live(&ct->s[i], now_ns) != 0;
    return n;
}
