/* acl.c — compiled per-port rule tables: build and classify (see acl.h). */
#include "acl.h"

#include <errno.h>
#include <stdlib.h>

#define LEAF 0x80000000u          /* a trie entry: a bitmap id, not a child */
#define N_CLASSES 3               /* TCP, UDP, SCTP; every other protocol: other_id */

typedef struct trie {
    uint32_t (*e)[16];            /* nodes: 16 entries each; node 0 is the root */
    uint32_t n;
} trie_t;

struct ovl_acl {
    uint32_t flags;
    uint32_t nbits, nwords;
    uint32_t np_start;            /* the first bit after the admin tier */
    uint32_t n_user;              /* rules given (the rest are implicit) */
    uint32_t workers;
    ovl_acl_rule_t *rules;        /* nbits */
    /* interned bitmaps, sparse: bitmap i is words bm_off[i] .. bm_off[i + 1] */
    uint32_t n_bm;
    uint32_t *bm_off;
    uint32_t *bm_idx;
    uint64_t *bm_word;
    trie_t trie[2];               /* IPv4, IPv6 */
    uint32_t n_iv[N_CLASSES];     /* port intervals per class */
    uint16_t *iv_start[N_CLASSES];
    uint32_t *iv_id[N_CLASSES];
    uint32_t other_id;            /* other protocols, fragments: rules without ports */
    uint64_t *hits;               /* workers rows of hits_stride */
    uint32_t hits_stride;
    uint64_t *by_id;              /* (id << 32 | bit), sorted: carrying hits over */
};

/* ---- the builder's pool of interned dense bitmaps ---- */

typedef struct pool {
    uint32_t nwords;
    uint64_t *dense;              /* n x nwords */
    uint32_t n, cap;
    uint32_t *ht;                 /* id + 1, 0: empty */
    uint32_t ht_mask;
    size_t total_words;           /* nonzero words over all bitmaps */
} pool_t;

static uint64_t bm_hash(const uint64_t *bm, uint32_t nwords)
{
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (uint32_t i = 0; i < nwords; i++) {
        h ^= bm[i] + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
        h *= 0xff51afd7ed558ccdull;
    }
    return h ^ (h >> 33);
}

static int pool_grow(pool_t *p)
{
    uint32_t cap = p->cap ? p->cap * 2 : 64;
    uint64_t *d = realloc(p->dense, (size_t)cap * p->nwords * sizeof *d);
    if (!d)
        return -ENOMEM;
    p->dense = d;
    p->cap = cap;
    uint32_t slots = cap * 2;
    uint32_t *ht = calloc(slots, sizeof *ht);
    if (!ht)
        return -ENOMEM;
    free(p->ht);
    p->ht = ht;
    p->ht_mask = slots - 1;
    for (uint32_t id = 0; id < p->n; id++) {
        uint32_t h = (uint32_t)bm_hash(p->dense + (size_t)id * p->nwords, p->nwords) & p->ht_mask;
        while (p->ht[h])
            h = (h + 1) & p->ht_mask;
        p->ht[h] = id + 1;
    }
    return 0;
}

/* The id of bitmap bm, interned on first sight; -ENOMEM. */
static int64_t intern(pool_t *p, const uint64_t *bm)
{
    if (p->n == p->cap && pool_grow(p) < 0)
        return -ENOMEM;
    size_t bytes = (size_t)p->nwords * sizeof *bm;
    uint32_t h = (uint32_t)bm_hash(bm, p->nwords) & p->ht_mask;
    for (; p->ht[h]; h = (h + 1) & p->ht_mask) {
        uint32_t id = p->ht[h] - 1;
        if (memcmp(p->dense + (size_t)id * p->nwords, bm, bytes) == 0)
            return id;
    }
    uint32_t id = p->n++;
    memcpy(p->dense + (size_t)id * p->nwords, bm, bytes);
    for (uint32_t i = 0; i < p->nwords; i++)
        p->total_words += bm[i] != 0;
    p->ht[h] = id + 1;
    return id;
}

static void set_bit(uint64_t *bm, uint32_t b)
{
    bm[b >> 6] |= 1ull << (b & 63);
}

/* ---- tries: insert marks, then push them to the leaves ---- */

typedef struct mark {
    uint32_t bit, next;           /* next: index + 1, 0: end */
} mark_t;

typedef struct tbuild {
    uint32_t (*child)[16];        /* 0: none (the root is never a child) */
    uint32_t (*head)[16];         /* marks ending at this entry: index + 1 */
    uint32_t n, cap;
    mark_t *marks;
    uint32_t n_marks, cap_marks;
} tbuild_t;

static int tb_node(tbuild_t *t)
{
    if (t->n == t->cap) {
        uint32_t cap = t->cap ? t->cap * 2 : 16;
        void *c = realloc(t->child, (size_t)cap * sizeof *t->child);
        if (!c)
            return -ENOMEM;
        t->child = c;
        void *h = realloc(t->head, (size_t)cap * sizeof *t->head);
        if (!h)
            return -ENOMEM;
        t->head = h;
        t->cap = cap;
    }
    memset(t->child[t->n], 0, sizeof t->child[0]);
    memset(t->head[t->n], 0, sizeof t->head[0]);
    return (int)t->n++;
}

static int tb_mark(tbuild_t *t, uint32_t node, uint32_t entry, uint32_t bit)
{
    if (t->n_marks == t->cap_marks) {
        uint32_t cap = t->cap_marks ? t->cap_marks * 2 : 64;
        mark_t *m = realloc(t->marks, (size_t)cap * sizeof *m);
        if (!m)
            return -ENOMEM;
        t->marks = m;
        t->cap_marks = cap;
    }
    t->marks[t->n_marks] = (mark_t){ bit, t->head[node][entry] };
    t->head[node][entry] = ++t->n_marks;
    return 0;
}

static unsigned nibble(const uint8_t *a, uint32_t d)
{
    return (d & 1) ? a[d >> 1] & 15 : a[d >> 1] >> 4;
}

static int tb_insert(tbuild_t *t, const uint8_t *addr, uint32_t len, uint32_t bit)
{
    uint32_t node = 0;
    for (uint32_t d = 0;; d++) {
        uint32_t s = d * 4;
        unsigned nib = nibble(addr, d);
        if (len <= s + 4) {
            unsigned span = 1u << (s + 4 - len), first = nib & ~(span - 1);
            for (unsigned i = first; i < first + span; i++)
                if (tb_mark(t, node, i, bit) < 0)
                    return -ENOMEM;
            return 0;
        }
        if (!t->child[node][nib]) {
            int c = tb_node(t);
            if (c < 0)
                return c;
            t->child[node][nib] = (uint32_t)c;
        }
        node = t->child[node][nib];
    }
}

/* Does prefix (a, alen) hold address b's first alen bits? */
static int prefix_holds(const uint8_t *a, uint32_t alen, const uint8_t *b)
{
    uint32_t full = alen / 8, rest = alen % 8;
    if (memcmp(a, b, full) != 0)
        return 0;
    if (!rest)
        return 1;
    uint8_t m = (uint8_t)(0xff << (8 - rest));
    return (a[full] & m) == (b[full] & m);
}

static void mask_prefix(uint8_t *a, uint32_t len, uint32_t alen)
{
    for (uint32_t i = 0; i < alen; i++) {
        uint32_t lo = i * 8;
        if (lo >= len)
            a[i] = 0;
        else if (len < lo + 8)
            a[i] &= (uint8_t)(0xff << (lo + 8 - len));
    }
}

typedef struct pfx {
    uint8_t addr[16];
    uint32_t len;
} pfx_t;

/* Insert block (addr, len) less the excepts ex[0..nex) as disjoint prefixes. */
static int insert_diff(tbuild_t *t, const uint8_t *addr, uint32_t len, uint32_t maxlen,
                       const pfx_t *ex, size_t nex, uint32_t bit)
{
    int overlap = 0;
    for (size_t i = 0; i < nex; i++) {
        if (ex[i].len <= len && prefix_holds(ex[i].addr, ex[i].len, addr))
            return 0; /* all of it is excepted */
        if (ex[i].len > len && prefix_holds(addr, len, ex[i].addr))
            overlap = 1;
    }
    if (!overlap || len >= maxlen)
        return tb_insert(t, addr, len, bit);
    uint8_t half[16];
    memcpy(half, addr, 16);
    half[len / 8] &= (uint8_t)~(0x80 >> (len % 8));
    int rc = insert_diff(t, half, len + 1, maxlen, ex, nex, bit);
    if (rc < 0)
        return rc;
    half[len / 8] |= (uint8_t)(0x80 >> (len % 8));
    return insert_diff(t, half, len + 1, maxlen, ex, nex, bit);
}

/* Push marks down from node with the inherited bitmap inh; scratch holds a
 * bitmap per level below. Entries become children or LEAF | bitmap id. */
static int tb_finish(tbuild_t *t, pool_t *p, uint32_t node, const uint64_t *inh,
                     uint64_t *scratch)
{
    int64_t inh_id = -1;
    uint64_t *cur = scratch;
    for (unsigned i = 0; i < 16; i++) {
        const uint64_t *bm = inh;
        if (t->head[node][i]) {
            memcpy(cur, inh, (size_t)p->nwords * sizeof *cur);
            for (uint32_t m = t->head[node][i]; m; m = t->marks[m - 1].next)
                set_bit(cur, t->marks[m - 1].bit);
            bm = cur;
        }
        uint32_t c = t->child[node][i];
        if (c) {
            int rc = tb_finish(t, p, c, bm, scratch + p->nwords);
            if (rc < 0)
                return rc;
            continue;
        }
        int64_t id;
        if (bm == inh) {
            if (inh_id < 0)
                inh_id = intern(p, inh);
            id = inh_id;
        } else {
            id = intern(p, bm);
        }
        if (id < 0)
            return -ENOMEM;
        t->child[node][i] = LEAF | (uint32_t)id;
    }
    return 0;
}

static void tb_free(tbuild_t *t)
{
    free(t->child);
    free(t->head);
    free(t->marks);
}

/* ---- ports: elementary intervals per protocol ---- */

typedef struct pev {
    uint32_t point;               /* 0..65536 */
    uint32_t bit;
    int32_t delta;
} pev_t;

static int pev_cmp(const void *a, const void *b)
{
    const pev_t *x = a, *y = b;
    return x->point < y->point ? -1 : x->point > y->point;
}

static int class_of(uint8_t proto)
{
    switch (proto) {
    case 6:
        return 0;
    case 17:
        return 1;
    case 132:
        return 2;
    default:
        return -1;
    }
}

/* The intervals of class c from the events ev[0..n) over base. */
static int build_ports(ovl_acl_t *t, pool_t *p, int c, pev_t *ev, size_t n, const uint64_t *base,
                       uint32_t *cnt, uint64_t *cur)
{
    if (n)
        qsort(ev, n, sizeof *ev, pev_cmp);
    memcpy(cur, base, (size_t)p->nwords * sizeof *cur);
    memset(cnt, 0, (size_t)t->nbits * sizeof *cnt);
    size_t cap = 2 * n + 1, k = 0;
    t->iv_start[c] = malloc(cap * sizeof *t->iv_start[c]);
    t->iv_id[c] = malloc(cap * sizeof *t->iv_id[c]);
    if (!t->iv_start[c] || !t->iv_id[c])
        return -ENOMEM;
    size_t i = 0;
    uint32_t point = 0;
    for (;;) {
        while (i < n && ev[i].point == point) {
            uint32_t b = ev[i].bit;
            if (ev[i].delta > 0 && cnt[b]++ == 0)
                set_bit(cur, b);
            else if (ev[i].delta < 0 && --cnt[b] == 0)
                cur[b >> 6] &= ~(1ull << (b & 63)) | base[b >> 6]; /* any port stays */
            i++;
        }
        if (point > 65535)
            break;
        int64_t id = intern(p, cur);
        if (id < 0)
            return -ENOMEM;
        if (k == 0 || t->iv_id[c][k - 1] != (uint32_t)id) {
            t->iv_start[c][k] = (uint16_t)point;
            t->iv_id[c][k++] = (uint32_t)id;
        }
        if (i == n)
            break;
        point = ev[i].point;
    }
    t->n_iv[c] = (uint32_t)k;
    return 0;
}

/* ---- checking the lines ---- */

static int check_line(const ovl_policy_line_t *l, const ovl_policy_line_t *prev,
                      const ovl_policy_line_t *first)
{
    if (prev && !(l->rule == prev->rule || l->rule == prev->rule + 1))
        return -EINVAL;
    if (!prev && l->rule != 0)
        return -EINVAL;
    if (l->tier > OVL_TIER_BASELINE || l->action < OVL_ACT_ALLOW || l->action > OVL_ACT_PASS)
        return -EINVAL;
    if (l->action == OVL_ACT_PASS && l->tier != OVL_TIER_ADMIN)
        return -EINVAL;
    if (l->tier == OVL_TIER_NETPOL && l->action != OVL_ACT_ALLOW)
        return -EINVAL;
    if (l->flags & ~(uint8_t)OVL_RULE_AUDIT)
        return -EINVAL;
    if (prev && l->rule == prev->rule) {
        if (l->id != first->id || l->tier != first->tier || l->action != first->action)
            return -EINVAL;
    } else if (prev && l->tier < prev->tier) {
        return -EINVAL;
    }
    switch (l->kind) {
    case OVL_LINE_EXCEPT:
        /* after the rule's PEER line or another EXCEPT of it, same family */
        if (!prev || prev->rule != l->rule ||
            (prev->kind != OVL_LINE_PEER && prev->kind != OVL_LINE_EXCEPT) ||
            prev->family != l->family)
            return -EINVAL;
        /* fall through */
    case OVL_LINE_PEER:
        if (l->family == 4 ? l->prefix_len > 32 : l->family == 6 ? l->prefix_len > 128 : 1)
            return -EINVAL;
        return 0;
    case OVL_LINE_PORT:
        if (l->proto != 0 && class_of(l->proto) < 0)
            return -EPROTONOSUPPORT;
        return l->port_lo <= l->port_hi ? 0 : -EINVAL;
    default:
        return -EINVAL;
    }
}

/* ---- the build ---- */

void ovl_acl_free(ovl_acl_t *t)
{
    if (!t)
        return;
    free(t->rules);
    free(t->bm_off);
    free(t->bm_idx);
    free(t->bm_word);
    for (int f = 0; f < 2; f++)
        free(t->trie[f].e);
    for (int c = 0; c < N_CLASSES; c++) {
        free(t->iv_start[c]);
        free(t->iv_id[c]);
    }
    free(t->hits);
    free(t->by_id);
    free(t);
}

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

typedef struct build {
    tbuild_t tb[2];
    pool_t pool;
    pev_t *ev[N_CLASSES];
    size_t n_ev[N_CLASSES], cap_ev[N_CLASSES];
    uint32_t *cnt;
    uint64_t *base_peer, *base_port, *scratch;
    pfx_t *ex;
} build_t;

static int add_ev(build_t *b, int c, uint32_t point, uint32_t bit, int32_t delta)
{
    if (b->n_ev[c] == b->cap_ev[c]) {
        size_t cap = b->cap_ev[c] ? b->cap_ev[c] * 2 : 64;
        pev_t *e = realloc(b->ev[c], cap * sizeof *e);
        if (!e)
            return -ENOMEM;
        b->ev[c] = e;
        b->cap_ev[c] = cap;
    }
    b->ev[c][b->n_ev[c]++] = (pev_t){ point, bit, delta };
    return 0;
}

/* Rule lines[s..e) with bit `bit`: its peers into the tries, its ports into events. */
static int add_rule(build_t *b, const ovl_policy_line_t *lines, size_t s, size_t e, uint32_t bit)
{
    int any_peer = 1, any_port = 0, ports = 0, rc;
    for (size_t i = s; i < e; i++) {
        const ovl_policy_line_t *l = &lines[i];
        if (l->kind == OVL_LINE_PORT) {
            ports = 1;
            int c = class_of(l->proto);
            if (c < 0) {
                any_port = 1;
                continue;
            }
            if ((rc = add_ev(b, c, l->port_lo, bit, 1)) < 0 ||
                (rc = add_ev(b, c, (uint32_t)l->port_hi + 1, bit, -1)) < 0)
                return rc;
            continue;
        }
        if (l->kind != OVL_LINE_PEER)
            continue;
        any_peer = 0;
        size_t nex = 0;
        for (size_t j = i + 1; j < e && lines[j].kind == OVL_LINE_EXCEPT; j++) {
            memcpy(b->ex[nex].addr, lines[j].addr, 16);
            b->ex[nex].len = lines[j].prefix_len;
            mask_prefix(b->ex[nex].addr, lines[j].prefix_len, 16);
            nex++;
        }
        uint8_t a[16];
        memcpy(a, l->addr, 16);
        uint32_t maxlen = l->family == 4 ? 32 : 128;
        mask_prefix(a, l->prefix_len, 16);
        if ((rc = insert_diff(&b->tb[l->family == 6], a, l->prefix_len, maxlen, b->ex, nex, bit)) <
            0)
            return rc;
    }
    if (any_peer)
        set_bit(b->base_peer, bit);
    if (!ports || any_port)
        set_bit(b->base_port, bit);
    return 0;
}

static int sparse(ovl_acl_t *t, const pool_t *p)
{
    t->n_bm = p->n;
    t->bm_off = malloc(((size_t)p->n + 1) * sizeof *t->bm_off);
    t->bm_idx = malloc((p->total_words + 1) * sizeof *t->bm_idx);
    t->bm_word = malloc((p->total_words + 1) * sizeof *t->bm_word);
    if (!t->bm_off || !t->bm_idx || !t->bm_word)
        return -ENOMEM;
    uint32_t k = 0;
    for (uint32_t id = 0; id < p->n; id++) {
        t->bm_off[id] = k;
        const uint64_t *bm = p->dense + (size_t)id * p->nwords;
        for (uint32_t i = 0; i < p->nwords; i++)
            if (bm[i]) {
                t->bm_idx[k] = i;
                t->bm_word[k++] = bm[i];
            }
    }
    t->bm_off[p->n] = k;
    return 0;
}

static int build(build_t *b, ovl_acl_t *t, const ovl_policy_line_t *lines, size_t n,
                 size_t *bad_line)
{
    int rc;
    /* rules: count them, check every line, find the longest except list */
    uint32_t n_user = 0;
    size_t max_ex = 0, run = 0;
    const ovl_policy_line_t *first = NULL;
    for (size_t i = 0; i < n; i++) {
        const ovl_policy_line_t *prev = i ? &lines[i - 1] : NULL;
        if (!prev || lines[i].rule != prev->rule)
            first = &lines[i];
        rc = check_line(&lines[i], prev, first);
        if (rc == 0 && lines[i].tier == OVL_TIER_NETPOL && !(t->flags & OVL_POLICY_ISOLATED))
            rc = -EINVAL; /* NetworkPolicy rules come with isolation */
        if (rc < 0) {
            if (bad_line)
                *bad_line = i;
            return rc;
        }
        if (first == &lines[i])
            n_user++;
        run = lines[i].kind == OVL_LINE_EXCEPT ? run + 1 : 0;
        if (run > max_ex)
            max_ex = run;
    }
    if (n_user > OVL_POLICY_RULES_MAX)
        return -E2BIG;
    int isolated = (t->flags & OVL_POLICY_ISOLATED) != 0;
    t->n_user = n_user;
    t->nbits = n_user + (uint32_t)isolated + 1;
    t->nwords = (t->nbits + 63) / 64;
    t->rules = calloc(t->nbits, sizeof *t->rules);
    b->ex = malloc((max_ex + 1) * sizeof *b->ex);
    uint32_t nw = t->nwords;
    b->pool.nwords = nw;
    b->base_peer = calloc(nw, sizeof(uint64_t));
    b->base_port = calloc(nw, sizeof(uint64_t));
    b->scratch = calloc((size_t)nw * 40, sizeof(uint64_t)); /* a level each: 32 + 1 */
    b->cnt = calloc(t->nbits, sizeof *b->cnt);
    if (!t->rules || !b->ex || !b->base_peer || !b->base_port || !b->scratch || !b->cnt)
        return -ENOMEM;
    for (int f = 0; f < 2; f++)
        if (tb_node(&b->tb[f]) < 0)
            return -ENOMEM;
    /* bits in precedence order, ISOLATION before the first baseline rule */
    uint32_t bit = 0;
    int iso_done = !isolated, np_done = 0;
    size_t s = 0;
    while (s <= n) {
        int at_end = s == n;
        uint8_t tier = at_end ? OVL_TIER_BASELINE + 1 : lines[s].tier;
        if (!np_done && tier >= OVL_TIER_NETPOL) {
            t->np_start = bit;
            np_done = 1;
        }
        if (!iso_done && tier >= OVL_TIER_BASELINE) {
            t->rules[bit] = (ovl_acl_rule_t){ .id = OVL_RULE_ISOLATION, .action = OVL_ACT_DENY,
                                              .tier = OVL_TIER_NETPOL };
            set_bit(b->base_peer, bit);
            set_bit(b->base_port, bit);
            bit++;
            iso_done = 1;
        }
        if (at_end)
            break;
        size_t e = s + 1;
        uint8_t fl = lines[s].flags;
        while (e < n && lines[e].rule == lines[s].rule)
            fl |= lines[e++].flags;
        t->rules[bit] = (ovl_acl_rule_t){ .id = lines[s].id, .action = lines[s].action,
                                          .tier = lines[s].tier,
                                          .audit = (fl & OVL_RULE_AUDIT) != 0 };
        if ((rc = add_rule(b, lines, s, e, bit)) < 0)
            return rc;
        bit++;
        s = e;
    }
    t->rules[bit] = (ovl_acl_rule_t){ .id = OVL_RULE_DEFAULT, .action = OVL_ACT_ALLOW,
                                      .tier = OVL_TIER_BASELINE + 1 };
    set_bit(b->base_peer, bit);
    set_bit(b->base_port, bit);
    if (t->flags & OVL_POLICY_AUDIT)
        for (uint32_t i = 0; i < t->nbits; i++)
            t->rules[i].audit = 1;
    /* tries, pushed to their leaves */
    for (int f = 0; f < 2; f++) {
        if ((rc = tb_finish(&b->tb[f], &b->pool, 0, b->base_peer, b->scratch)) < 0)
            return rc;
        t->trie[f].n = b->tb[f].n;
        t->trie[f].e = malloc((size_t)b->tb[f].n * sizeof *t->trie[f].e);
        if (!t->trie[f].e)
            return -ENOMEM;
        memcpy(t->trie[f].e, b->tb[f].child, (size_t)b->tb[f].n * sizeof *t->trie[f].e);
    }
    /* ports */
    for (int c = 0; c < N_CLASSES; c++)
        if ((rc = build_ports(t, &b->pool, c, b->ev[c], b->n_ev[c], b->base_port, b->cnt,
                              b->scratch)) < 0)
            return rc;
    int64_t other = intern(&b->pool, b->base_port);
    if (other < 0)
        return -ENOMEM;
    t->other_id = (uint32_t)other;
    if ((rc = sparse(t, &b->pool)) < 0)
        return rc;
    /* hit counters: a row of whole cache lines per worker */
    t->hits_stride = (t->nbits + 7) & ~7u;
    t->hits = aligned_alloc(64, (size_t)t->workers * t->hits_stride * sizeof *t->hits);
    t->by_id = malloc((size_t)t->nbits * sizeof *t->by_id);
    if (!t->hits || !t->by_id)
        return -ENOMEM;
    memset(t->hits, 0, (size_t)t->workers * t->hits_stride * sizeof *t->hits);
    for (uint32_t i = 0; i < t->nbits; i++)
        t->by_id[i] = (uint64_t)t->rules[i].id << 32 | i;
    qsort(t->by_id, t->nbits, sizeof *t->by_id, u64_cmp);
    return 0;
}

int ovl_acl_build(const ovl_policy_line_t *lines, size_t n, uint32_t flags, uint32_t workers,
                  ovl_acl_t **out, size_t *bad_line)
{
    if ((n && !lines) || n > OVL_POLICY_LINES_MAX || !workers ||
        (flags & ~(uint32_t)(OVL_POLICY_ISOLATED | OVL_POLICY_AUDIT)))
        return -EINVAL;
    ovl_acl_t *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->flags = flags;
    t->workers = workers;
    build_t b;
    memset(&b, 0, sizeof b);
    int rc = build(&b, t, lines, n, bad_line);
    for (int f = 0; f < 2; f++)
        tb_free(&b.tb[f]);
    free(b.pool.dense);
    free(b.pool.ht);
    for (int c = 0; c < N_CLASSES; c++)
        free(b.ev[c]);
    free(b.cnt);
    free(b.base_peer);
    free(b.base_port);
    free(b.scratch);
    free(b.ex);
    if (rc < 0) {
        ovl_acl_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

/* ---- classify ---- */

static uint32_t trie_lookup(const trie_t *tr, const uint8_t *a)
{
    uint32_t node = 0;
    for (uint32_t d = 0;; d++) {
        uint32_t v = tr->e[node][nibble(a, d)];
        if (v & LEAF)
            return v & ~LEAF;
        node = v;
    }
}

static uint32_t port_lookup(const ovl_acl_t *t, int c, uint16_t port)
{
    const uint16_t *s = t->iv_start[c];
    uint32_t lo = 0, hi = t->n_iv[c]; /* s[0] == 0: the answer is in [lo, hi) */
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (s[mid] <= port)
            lo = mid;
        else
            hi = mid;
    }
    return t->iv_id[c][lo];
}

/* The first bit >= from set in both bitmaps a and b: walk the shorter,
 * search the longer (both sorted by word index). */
static uint32_t first_common(const ovl_acl_t *t, uint32_t a, uint32_t b, uint32_t from)
{
    uint32_t as = t->bm_off[a], ae = t->bm_off[a + 1];
    uint32_t bs = t->bm_off[b], be = t->bm_off[b + 1];
    if (ae - as > be - bs) {
        uint32_t x = as, y = ae;
        as = bs, ae = be, bs = x, be = y;
    }
    uint32_t fw = from >> 6;
    for (uint32_t i = as; i < ae; i++) {
        uint32_t w = t->bm_idx[i];
        if (w < fw)
            continue;
        /* lower bound of w in the longer list, from where the last search ended */
        uint32_t lo = bs, hi = be;
        while (lo < hi) {
            uint32_t mid = (lo + hi) / 2;
            if (t->bm_idx[mid] < w)
                lo = mid + 1;
            else
                hi = mid;
        }
        bs = lo;
        if (lo == be)
            break;
        if (t->bm_idx[lo] != w)
            continue;
        uint64_t x = t->bm_word[i] & t->bm_word[lo];
        if (w == fw)
            x &= ~0ull << (from & 63);
        if (x)
            return w * 64 + (uint32_t)__builtin_ctzll(x);
    }
    return t->nbits - 1; /* DEFAULT is in every bitmap: not reached */
}

uint32_t ovl_acl_classify(const ovl_acl_t *t, int family, const uint8_t *peer, uint8_t proto,
                          uint16_t dport, int fragment)
{
    uint32_t pa = trie_lookup(&t->trie[family == 6], peer);
    int c = fragment ? -1 : class_of(proto);
    uint32_t pb = c < 0 ? t->other_id : port_lookup(t, c, dport);
    uint32_t bit = first_common(t, pa, pb, 0);
    if (OVL_UNLIKELY(t->rules[bit].action == OVL_ACT_PASS))
        bit = first_common(t, pa, pb, t->np_start);
    return bit;
}

const ovl_acl_rule_t *ovl_acl_rule(const ovl_acl_t *t, uint32_t b)
{
    return &t->rules[b];
}

uint32_t ovl_acl_bits(const ovl_acl_t *t)
{
    return t->nbits;
}

int ovl_acl_allows_all(const ovl_acl_t *t)
{
    return t->n_user == 0 && !(t->flags & OVL_POLICY_ISOLATED);
}

uint32_t ovl_acl_flags(const ovl_acl_t *t)
{
    return t->flags;
}

/* ---- hit counters ---- */

void ovl_acl_hit(ovl_acl_t *t, uint32_t w, uint32_t b)
{
    uint64_t *c = &t->hits[(size_t)w * t->hits_stride + b];
    __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
}

uint64_t ovl_acl_hits(const ovl_acl_t *t, uint32_t b)
{
    uint64_t sum = 0;
    for (uint32_t w = 0; w < t->workers; w++)
        sum += __atomic_load_n(&t->hits[(size_t)w * t->hits_stride + b], __ATOMIC_RELAXED);
    return sum;
}

void ovl_acl_carry_hits(ovl_acl_t *to, const ovl_acl_t *from)
{
    uint32_t rows = to->workers < from->workers ? to->workers : from->workers;
    for (uint32_t i = 0; i < to->nbits; i++) {
        uint64_t key = (uint64_t)to->rules[i].id << 32;
        uint32_t lo = 0, hi = from->nbits;
        while (lo < hi) {
            uint32_t mid = (lo + hi) / 2;
            if (from->by_id[mid] < key)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo == from->nbits || (from->by_id[lo] >> 32) != to->rules[i].id)
            continue;
        uint32_t ob = (uint32_t)from->by_id[lo];
        for (uint32_t w = 0; w < rows; w++)
            to->hits[(size_t)w * to->hits_stride + i] =
                from->hits[(size_t)w * from->hits_stride + ob];
    }
}
