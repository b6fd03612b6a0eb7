/* policy.c — the policy stages and the tables of ports (see policy.h). */
#include "policy.h"
#include "acl.h"
#include "conntrack.h"
#include "counters.h"

#include <errno.h>
#include <stdlib.h>

#define EV_CACHE 64
#define EV_INTERVAL_NS 1000000000ull

/* A worker's policy state. */
struct ovl_policy_worker {
    ovl_ct_t *ct;
    struct { uint64_t key, when_ns; } ev[EV_CACHE];
};

static int denied(int direction)
{
    return direction == OVL_POLICY_EGRESS ? OVL_C_POLICY_DENIED_EGRESS
                                          : OVL_C_POLICY_DENIED_INGRESS;
}

/* ARP, neighbour discovery, MLD and non-IP frames are not policy's. */
static int judged(const ovl_frame_t *f)
{
    if (f->l3 == OVL_L3_IPV4)
        return 1;
    if (f->l3 != OVL_L3_IPV6)
        return 0;
    if (f->ip_proto != 58 || f->is_fragment)
        return 1;
    uint8_t t = f->icmp_type;
    return !((t >= 133 && t <= 137) || (t >= 130 && t <= 132) || t == 143);
}

/* Tell the control plane about a verdict, at most once a second per (port,
 * direction, rule, verdict) and worker. */
static void report(ovl_worker_t *w, const ovl_port_t *p, int direction, uint32_t rule_id,
                   int verdict, const ovl_ct_pkt_t *k)
{
    struct ovl_policy_worker *pw = w->policy;
    uint64_t key = ((uint64_t)p->id << 40) ^ ((uint64_t)p->gen << 20) ^
                   ((uint64_t)rule_id << 3) ^ (uint64_t)(direction << 2 | verdict);
    key = key * 0x9e3779b97f4a7c15ull + 1;
    uint32_t h = (uint32_t)(key >> 40) & (EV_CACHE - 1);
    if (pw && pw->ev[h].key == key && w->now_ns - pw->ev[h].when_ns < EV_INTERVAL_NS)
        return;
    if (pw) {
        pw->ev[h].key = key;
        pw->ev[h].when_ns = w->now_ns;
    }
    ovl_event_t ev = { .type = OVL_EVENT_POLICY, .vni = p->vni, .port_id = (int32_t)p->id,
                       .verdict = (uint8_t)verdict, .direction = (uint8_t)direction,
                       .rule_id = rule_id };
    memcpy(ev.mac, p->sec.mac, 6);
    if (k) {
        ev.proto = k->proto;
        ev.ip_family = k->family;
        ev.sport = k->sport;
        ev.dport = k->dport;
        memcpy(ev.src, k->src, 16);
        memcpy(ev.dst, k->dst, 16);
    }
    ovl_events_push(&w->e->events, w->c, &ev, 0);
}

/* Is p refusing every IP packet in direction, its policy not set yet? */
static inline int pending(const ovl_port_t *p, int direction)
{
    return !p->acl[direction] && (p->flags & OVL_PORT_POLICY_PENDING) &&
           !(p->policy_set & (1u << direction));
}

/* What rule r of a table does to a connection's first packet: OVL_PROBE_ALLOW,
 * DENY, or AUDIT (a deny the rule or its table only counts). The stages and
 * ovl_port_policy_probe decide by this one function. */
static inline int verdict_of(const ovl_acl_rule_t *r)
{
    if (r->action != OVL_ACT_DENY)
        return OVL_PROBE_ALLOW;
    return r->audit ? OVL_PROBE_AUDIT : OVL_PROBE_DENY;
}

/* Classify (family, peer, proto, dport) by p's table for direction: the
 * deciding rule bit; *pass: forwarded (allowed, or an audited deny). */
static uint32_t classify(ovl_worker_t *w, ovl_port_t *p, int direction, ovl_acl_t *t,
                         const ovl_ct_pkt_t *k, const uint8_t *peer, uint16_t dport, int *pass,
                         int *audit)
{
    uint32_t bit = ovl_acl_classify(t, k->family, peer, k->proto, dport, k->fragment);
    const ovl_acl_rule_t *r = ovl_acl_rule(t, bit);
    ovl_acl_hit(t, w->idx, bit);
    int v = verdict_of(r);
    *audit = 0;
    *pass = v != OVL_PROBE_DENY;
    if (v == OVL_PROBE_AUDIT) {
        ovl_count(w, OVL_C_POLICY_AUDIT, 1);
        report(w, p, direction, r->id, OVL_VERDICT_AUDIT, k);
        *pass = *audit = 1;
    } else if (!*pass) {
        report(w, p, direction, r->id, OVL_VERDICT_DENY, k);
    }
    return bit;
}

/* A tracked connection whose table changed: classify its opening packet
 * again by the table of the stage that allowed it. */
static int reclassify(ovl_worker_t *w, ovl_port_t *p, ovl_ct_sess_t *s, const ovl_ct_pkt_t *k)
{
    struct ovl_policy_worker *pw = w->policy;
    int stage = s->stage;
    ovl_acl_t *t = p->acl[stage];
    if (!t) {
        if (pending(p, stage)) {
            ovl_ct_end(pw->ct, s);
            return denied(stage);
        }
        s->table_gen = p->policy_gen[stage]; /* no policy: everything passes */
        return OVL_PASS;
    }
    ovl_ct_pkt_t o = *k;
    ovl_ct_orig(s, o.src, o.dst, &o.sport, &o.dport);
    o.proto = s->k.proto;
    o.fragment = 0;
    int pass, audit;
    uint32_t bit = classify(w, p, stage, t, &o, stage == OVL_POLICY_EGRESS ? o.dst : o.src,
                            o.dport, &pass, &audit);
    if (!pass) {
        ovl_ct_end(pw->ct, s);
        return denied(stage);
    }
    s->table_gen = p->policy_gen[stage];
    s->bit = bit;
    return OVL_PASS;
}

int ovl_policy_check(ovl_worker_t *w, ovl_port_t *p, int direction, const uint8_t *frame,
                     size_t len, const ovl_frame_t *f)
{
    ovl_frame_t parsed;
    if (!f) {
        if (ovl_wire_parse_frame(frame, len, &parsed) < 0)
            return denied(direction); /* what cannot be read cannot be allowed */
        f = &parsed;
    }
    if (!judged(f))
        return OVL_PASS;
    ovl_ct_pkt_t k;
    ovl_ct_pkt_from(frame, len, f, &k);
    ovl_acl_t *t = p->acl[direction];
    if (pending(p, direction)) {
        report(w, p, direction, OVL_RULE_PENDING, OVL_VERDICT_DENY, &k);
        return denied(direction);
    }
    struct ovl_policy_worker *pw = w->policy;
    if (!pw)
        return OVL_PASS; /* no table anywhere yet: nothing to track */
    ovl_ct_sess_t *s;
    int v = ovl_ct_track(pw->ct, &k, p->id, p->gen, direction, w->now_ns, &s);
    switch (v) {
    case OVL_CT_INVALID:
        return OVL_C_CONNTRACK_INVALID;
    case OVL_CT_ONGOING:
    case OVL_CT_REPLY:
    case OVL_CT_RELATED:
        if (OVL_LIKELY(s->table_gen == p->policy_gen[s->stage]))
            return OVL_PASS;
        return reclassify(w, p, s, &k);
    default:
        break;
    }
    int pass = 1, audit = 0;
    uint32_t bit = 0; /* no table this way: allowed, tracked for the replies' sake */
    if (t)
        bit = classify(w, p, direction, t, &k, direction == OVL_POLICY_EGRESS ? k.dst : k.src,
                       k.dport, &pass, &audit);
    if (!pass)
        return denied(direction);
    int rc = ovl_ct_commit(pw->ct, &k, p->id, p->gen, direction, w->now_ns,
                           p->policy_gen[direction], bit, audit, &s);
    if (OVL_UNLIKELY(rc != 0)) {
        if (rc < 0)
            return OVL_C_CONNTRACK_FULL;
        ovl_count(w, OVL_C_CONNTRACK_EVICTED, 1); /* a live session gave its slot */
    }
    return OVL_PASS;
}

/* ---- tables ---- */

void ovl_policy_port_clear(ovl_port_t *p)
{
    for (int d = 0; d < 2; d++) {
        ovl_acl_free(p->acl[d]);
        p->acl[d] = NULL;
    }
}

void ovl_policy_worker_free(ovl_worker_t *w)
{
    if (!w->policy)
        return;
    ovl_ct_free(w->policy->ct);
    free(w->policy);
    w->policy = NULL;
}

static struct ovl_policy_worker *worker_state(const ovl_engine_t *e)
{
    struct ovl_policy_worker *pw = calloc(1, sizeof *pw);
    if (pw && !(pw->ct = ovl_ct_create(e->cfg.conntrack_sessions))) {
        free(pw);
        pw = NULL;
    }
    return pw;
}

int ovl_port_policy_set(ovl_engine_t *e, int port_id, int direction,
                        const ovl_policy_line_t *lines, size_t n, uint32_t flags)
{
    if (direction != OVL_POLICY_INGRESS && direction != OVL_POLICY_EGRESS)
        return -EINVAL;
    ovl_acl_t *t = NULL;
    int rc = 0;
    if (n || flags) {
        rc = ovl_acl_build(lines, n, flags, e->n_workers, &t, NULL);
        if (rc < 0)
            return rc;
    }
    /* the workers' sessions, made outside the lock the first time */
    struct ovl_policy_worker *fresh[OVL_MAX_WORKERS] = {0};
    OVL_RDLOCK(e);
    int need = t && !e->workers[0]->policy;
    OVL_UNLOCK(e);
    for (uint32_t i = 0; need && i < e->n_workers; i++)
        if (!(fresh[i] = worker_state(e)))
            rc = -ENOMEM;
    ovl_acl_t *old = NULL;
    if (rc == 0) {
        OVL_WRLOCK(e);
        ovl_port_t *p = ovl_port_get(e, port_id);
        if (!p) {
            rc = -ENOENT;
            old = t;
        } else if (t && !e->workers[0]->policy && !fresh[0]) {
            rc = -EAGAIN; /* another call took the first table's turn: cannot happen twice */
            old = t;
        } else {
            for (uint32_t i = 0; fresh[0] && i < e->n_workers; i++)
                if (!e->workers[i]->policy) {
                    e->workers[i]->policy = fresh[i];
                    fresh[i] = NULL;
                }
            old = p->acl[direction];
            if (t && old)
                ovl_acl_carry_hits(t, old);
            p->acl[direction] = t;
            p->policy_gen[direction]++;
            p->policy_set |= (uint8_t)(1u << direction);
        }
        OVL_UNLOCK(e);
    } else {
        old = t;
    }
    ovl_acl_free(old);
    for (uint32_t i = 0; i < OVL_MAX_WORKERS; i++)
        if (fresh[i]) {
            ovl_ct_free(fresh[i]->ct);
            free(fresh[i]);
        }
    return rc;
}

int ovl_port_policy_hits(ovl_engine_t *e, int port_id, int direction, uint32_t *ids,
                         uint64_t *hits, size_t n)
{
    if (direction != OVL_POLICY_INGRESS && direction != OVL_POLICY_EGRESS)
        return -EINVAL;
    OVL_RDLOCK(e);
    ovl_port_t *p = ovl_port_get(e, port_id);
    if (!p) {
        OVL_UNLOCK(e);
        return -ENOENT;
    }
    const ovl_acl_t *t = p->acl[direction];
    uint32_t bits = t ? ovl_acl_bits(t) : 0;
    for (uint32_t i = 0; i < bits && i < n; i++) {
        ids[i] = ovl_acl_rule(t, i)->id;
        hits[i] = ovl_acl_hits(t, i);
    }
    OVL_UNLOCK(e);
    return (int)bits;
}

int ovl_port_policy_probe(ovl_engine_t *e, int port_id, int direction, int family,
                          const uint8_t *peer, uint8_t proto, uint16_t dport,
                          uint32_t *rule_id)
{
    if (direction != OVL_POLICY_INGRESS && direction != OVL_POLICY_EGRESS)
        return -EINVAL;
    if ((family != 4 && family != 6) || !peer || !rule_id)
        return -EINVAL;
    int v;
    OVL_RDLOCK(e);
    const ovl_port_t *p = ovl_port_get(e, port_id);
    if (!p) {
        v = -ENOENT;
    } else if (pending(p, direction)) {
        *rule_id = OVL_RULE_PENDING; /* as ovl_policy_check refuses it */
        v = OVL_PROBE_DENY;
    } else if (!p->acl[direction]) {
        *rule_id = OVL_RULE_DEFAULT; /* no table: passes, tracked for the replies */
        v = OVL_PROBE_NONE;
    } else {
        const ovl_acl_t *t = p->acl[direction];
        const ovl_acl_rule_t *r = ovl_acl_rule(t, ovl_acl_classify(t, family, peer, proto,
                                                                   dport, 0));
        *rule_id = r->id;
        v = verdict_of(r);
    }
    OVL_UNLOCK(e);
    return v;
}

uint64_t ovl_conntrack_sessions(ovl_engine_t *e)
{
    uint64_t n = 0;
    OVL_RDLOCK(e);
    for (uint32_t i = 0; i < e->n_workers; i++)
        if (e->workers[i]->policy)
            n += __atomic_load_n(&e->workers[i]->policy->ct->count, __ATOMIC_RELAXED);
    OVL_UNLOCK(e);
    return n;
}
