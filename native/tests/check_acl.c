/*
 * check_acl.c — the compiled rule tables (acl.c) against a brute-force
 * reference, under AddressSanitizer and UBSan.
 *
 * Random tables (0 to 2,000 rules over the three tiers, IPv4 and IPv6
 * blocks with excepts, port ranges of TCP, UDP and SCTP, any-protocol and
 * any-peer rules, isolated or not, PASS rules) and random packets drawn from
 * the same small address and port universe, so that rules overlap and
 * match: the classifier's rule must be the one the reference finds by
 * walking the rules as the tiers say. Also: lines out of order or out of
 * range are refused with the line named, hit counters sum over workers and
 * carry over to a new table by rule id, and a 10,000-rule table builds.
 */
#include "../acl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t rng = 0x853c49e6748fea9bull;
static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static int failures;
#define CHECK(cond, ...)                                                                         \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                 \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fprintf(stderr, "\n");                                                               \
            if (++failures > 20)                                                                 \
                exit(1);                                                                         \
        }                                                                                        \
    } while (0)

/* ---- a small universe: 10.0.x.y (x, y < 8 mostly) and 2001:2::x:y ---- */

static void rand_addr(int family, uint8_t *a)
{
    memset(a, 0, 16);
    if (family == 4) {
        a[0] = 10;
        a[1] = next() % 16 ? 0 : (uint8_t)next();
        a[2] = (uint8_t)(next() % 8);
        a[3] = (uint8_t)(next() % 4 ? next() % 8 : next());
    } else {
        a[0] = 0x20, a[1] = 0x01, a[3] = 0x02;
        a[13] = (uint8_t)(next() % 8);
        a[15] = (uint8_t)(next() % 4 ? next() % 8 : next());
        if (next() % 16 == 0)
            a[7] = (uint8_t)next();
    }
}

static uint8_t rand_len(int family)
{
    static const uint8_t l4[] = {0, 8, 16, 22, 24, 28, 29, 30, 31, 32, 32};
    static const uint8_t l6[] = {0, 48, 64, 112, 120, 124, 125, 126, 127, 128, 128};
    return family == 4 ? l4[next() % sizeof l4] : l6[next() % sizeof l6];
}

static uint8_t rand_proto(void)
{
    static const uint8_t p[] = {6, 6, 17, 17, 132, 1, 58, 47};
    return p[next() % sizeof p];
}

static uint16_t rand_port(void)
{
    switch (next() % 8) {
    case 0:
        return 0;
    case 1:
        return 65535;
    case 2:
        return (uint16_t)next();
    default:
        return (uint16_t)(75 + next() % 60);
    }
}

/* ---- random tables ---- */

static size_t rand_table(ovl_policy_line_t *lines, size_t cap, uint32_t n_rules, int isolated)
{
    size_t n = 0;
    uint8_t tier = 0;
    for (uint32_t r = 0; r < n_rules && n + 40 < cap; r++) {
        if (next() % (n_rules / 3 + 2) == 0 && tier < OVL_TIER_BASELINE)
            tier++;
        if (tier == OVL_TIER_NETPOL && !isolated)
            tier++; /* NetworkPolicy rules come with isolation */
        uint8_t action;
        if (tier == OVL_TIER_NETPOL)
            action = OVL_ACT_ALLOW;
        else if (tier == OVL_TIER_ADMIN)
            action = (uint8_t)(1 + next() % 3);
        else
            action = (uint8_t)(1 + next() % 2);
        ovl_policy_line_t base = { .rule = r, .id = r * 7 + 3, .tier = tier, .action = action };
        if (next() % 8 == 0)
            base.flags = OVL_RULE_AUDIT;
        size_t first = n;
        unsigned peers = next() % 5 == 0 ? 0 : 1 + next() % 3;
        for (unsigned i = 0; i < peers; i++) {
            ovl_policy_line_t l = base;
            l.kind = OVL_LINE_PEER;
            l.family = next() % 3 ? 4 : 6;
            rand_addr(l.family, l.addr);
            l.prefix_len = rand_len(l.family);
            lines[n++] = l;
            unsigned ex = next() % 3 == 0 ? 1 + next() % 3 : 0;
            uint32_t max = l.family == 4 ? 32 : 128;
            for (unsigned k = 0; k < ex && l.prefix_len < max; k++) {
                ovl_policy_line_t x = l;
                x.kind = OVL_LINE_EXCEPT;
                x.prefix_len = (uint8_t)(l.prefix_len + 1 + next() % (max - l.prefix_len));
                /* inside the block, mostly: keep the block's bits, vary the rest */
                uint8_t r2[16];
                rand_addr(l.family, r2);
                for (uint32_t bit = l.prefix_len; bit < max; bit++) {
                    uint8_t m = (uint8_t)(0x80 >> (bit % 8));
                    x.addr[bit / 8] = (uint8_t)((x.addr[bit / 8] & ~m) | (r2[bit / 8] & m));
                }
                if (next() % 10 == 0)
                    rand_addr(l.family, x.addr); /* anywhere: may lie outside */
                lines[n++] = x;
            }
        }
        unsigned ports = next() % 3 == 0 ? 0 : 1 + next() % 3;
        for (unsigned i = 0; i < ports; i++) {
            ovl_policy_line_t l = base;
            l.kind = OVL_LINE_PORT;
            static const uint8_t pp[] = {6, 6, 17, 132, 0};
            l.proto = pp[next() % sizeof pp];
            l.port_lo = (uint16_t)(80 + next() % 50);
            l.port_hi = next() % 2 ? l.port_lo : (uint16_t)(l.port_lo + next() % 20);
            if (next() % 20 == 0)
                l.port_lo = 0, l.port_hi = 65535;
            lines[n++] = l;
        }
        if (n == first) { /* a rule without lines cannot be said: any peer, any port */
            ovl_policy_line_t l = base;
            l.kind = OVL_LINE_PORT;
            l.proto = 0;
            l.port_hi = 65535;
            lines[n++] = l;
        }
    }
    return n;
}

/* ---- the reference: walk the rules ---- */

static int holds(const uint8_t *p, uint32_t len, const uint8_t *a)
{
    for (uint32_t bit = 0; bit < len; bit++) {
        uint8_t m = (uint8_t)(0x80 >> (bit % 8));
        if ((p[bit / 8] & m) != (a[bit / 8] & m))
            return 0;
    }
    return 1;
}

static int rule_matches(const ovl_policy_line_t *l, size_t s, size_t e, int family,
                        const uint8_t *peer, uint8_t proto, uint16_t dport, int frag)
{
    int has_peer = 0, peer_ok = 0, has_port = 0, port_ok = 0;
    for (size_t i = s; i < e; i++) {
        if (l[i].kind == OVL_LINE_PEER) {
            has_peer = 1;
            if (l[i].family != family || !holds(l[i].addr, l[i].prefix_len, peer))
                continue;
            int excepted = 0;
            for (size_t j = i + 1; j < e && l[j].kind == OVL_LINE_EXCEPT; j++)
                if (holds(l[j].addr, l[j].prefix_len, peer))
                    excepted = 1;
            if (!excepted)
                peer_ok = 1;
        } else if (l[i].kind == OVL_LINE_PORT) {
            has_port = 1;
            if (l[i].proto == 0 ||
                (!frag && l[i].proto == proto && l[i].port_lo <= dport && dport <= l[i].port_hi))
                port_ok = 1;
        }
    }
    return (!has_peer || peer_ok) && (!has_port || port_ok);
}

/* The id of the deciding rule. */
static uint32_t reference(const ovl_policy_line_t *l, size_t n, int isolated, int family,
                          const uint8_t *peer, uint8_t proto, uint16_t dport, int frag)
{
    size_t s = 0;
    int passed = 0;
    /* admin */
    for (; s < n && l[s].tier == OVL_TIER_ADMIN;) {
        size_t e = s + 1;
        while (e < n && l[e].rule == l[s].rule)
            e++;
        if (!passed && rule_matches(l, s, e, family, peer, proto, dport, frag)) {
            if (l[s].action != OVL_ACT_PASS)
                return l[s].id;
            passed = 1;
        }
        s = e;
    }
    /* NetworkPolicy */
    for (; s < n && l[s].tier == OVL_TIER_NETPOL;) {
        size_t e = s + 1;
        while (e < n && l[e].rule == l[s].rule)
            e++;
        if (isolated && rule_matches(l, s, e, family, peer, proto, dport, frag))
            return l[s].id;
        s = e;
    }
    if (isolated)
        return OVL_RULE_ISOLATION;
    for (; s < n;) {
        size_t e = s + 1;
        while (e < n && l[e].rule == l[s].rule)
            e++;
        if (rule_matches(l, s, e, family, peer, proto, dport, frag))
            return l[s].id;
        s = e;
    }
    return OVL_RULE_DEFAULT;
}

/* ---- the checks ---- */

#define CAP 100000

static void random_tables(void)
{
    static ovl_policy_line_t lines[CAP];
    static const uint32_t sizes[] = {0, 1, 2, 5, 10, 30, 100, 300, 2000};
    for (int round = 0; round < 300; round++) {
        uint32_t nr = sizes[round % (sizeof sizes / sizeof *sizes)];
        uint32_t flags = next() % 2 ? OVL_POLICY_ISOLATED : 0;
        size_t n = rand_table(lines, CAP, nr, (int)flags);
        ovl_acl_t *t = NULL;
        size_t bad = 0;
        int rc = ovl_acl_build(lines, n, flags, 2, &t, &bad);
        CHECK(rc == 0, "round %d: build of %u rules: %d (line %zu)", round, nr, rc, bad);
        if (rc)
            continue;
        CHECK(ovl_acl_allows_all(t) == (n == 0 && !flags), "allows_all");
        for (int k = 0; k < 2000; k++) {
            int family = next() % 3 ? 4 : 6;
            uint8_t peer[16];
            rand_addr(family, peer);
            uint8_t proto = rand_proto();
            uint16_t dport = rand_port();
            int frag = next() % 16 == 0;
            uint32_t b = ovl_acl_classify(t, family, peer, proto, dport, frag);
            uint32_t want = reference(lines, n, (int)(flags & 1), family, peer, proto, dport, frag);
            CHECK(b < ovl_acl_bits(t), "bit in range");
            uint32_t got = ovl_acl_rule(t, b)->id;
            CHECK(got == want,
                  "round %d (%u rules, flags %u): family %d peer %u.%u.%u.%u proto %u port %u "
                  "frag %d: got rule %u, want %u",
                  round, nr, flags, family, peer[0], peer[1], peer[2], peer[3], proto, dport, frag,
                  got, want);
        }
        ovl_acl_free(t);
    }
}

static void refuses_bad_lines(void)
{
    ovl_policy_line_t l[3] = {
        { .rule = 0, .id = 1, .tier = OVL_TIER_ADMIN, .action = OVL_ACT_DENY,
          .kind = OVL_LINE_PEER, .family = 4, .prefix_len = 8, .addr = {10} },
        { .rule = 1, .id = 2, .tier = OVL_TIER_NETPOL, .action = OVL_ACT_ALLOW,
          .kind = OVL_LINE_PORT, .proto = 6, .port_lo = 80, .port_hi = 80 },
        { .rule = 2, .id = 3, .tier = OVL_TIER_BASELINE, .action = OVL_ACT_DENY,
          .kind = OVL_LINE_PEER, .family = 6, .prefix_len = 48 },
    };
    ovl_acl_t *t = NULL;
    size_t bad = 99;
    CHECK(ovl_acl_build(l, 3, OVL_POLICY_ISOLATED, 1, &t, &bad) == 0, "a good table builds");
    ovl_acl_free(t);
    struct {
        int line;
        ovl_policy_line_t v;
        int rc;
    } cases[] = {
        { 1, { .rule = 1, .id = 2, .tier = OVL_TIER_NETPOL, .action = OVL_ACT_DENY,
               .kind = OVL_LINE_PORT, .proto = 6 }, -EINVAL },               /* NP deny */
        { 2, { .rule = 2, .id = 3, .tier = OVL_TIER_ADMIN, .action = OVL_ACT_DENY,
               .kind = OVL_LINE_PORT }, -EINVAL },                           /* tier goes back */
        { 2, { .rule = 3, .id = 3, .tier = OVL_TIER_BASELINE, .action = OVL_ACT_DENY,
               .kind = OVL_LINE_PORT }, -EINVAL },                           /* rank skips */
        { 2, { .rule = 2, .id = 3, .tier = OVL_TIER_BASELINE, .action = OVL_ACT_PASS,
               .kind = OVL_LINE_PORT }, -EINVAL },                           /* PASS in baseline */
        { 0, { .rule = 0, .id = 1, .kind = OVL_LINE_PEER, .action = OVL_ACT_DENY,
               .family = 4, .prefix_len = 33 }, -EINVAL },                   /* prefix length */
        { 0, { .rule = 0, .id = 1, .kind = OVL_LINE_EXCEPT, .action = OVL_ACT_DENY,
               .family = 4, .prefix_len = 24 }, -EINVAL },                   /* except first */
        { 1, { .rule = 1, .id = 2, .tier = OVL_TIER_NETPOL, .action = OVL_ACT_ALLOW,
               .kind = OVL_LINE_PORT, .proto = 1 }, -EPROTONOSUPPORT },      /* ICMP ports */
        { 1, { .rule = 1, .id = 2, .tier = OVL_TIER_NETPOL, .action = OVL_ACT_ALLOW,
               .kind = OVL_LINE_PORT, .proto = 6, .port_lo = 9, .port_hi = 8 }, -EINVAL },
        { 1, { .rule = 0, .id = 7, .tier = OVL_TIER_ADMIN, .action = OVL_ACT_DENY,
               .kind = OVL_LINE_PORT }, -EINVAL },                           /* id differs */
    };
    CHECK(ovl_acl_build(l, 3, 0, 1, &t, &bad) == -EINVAL && bad == 1,
          "NetworkPolicy rules without isolation");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ovl_policy_line_t m[3];
        memcpy(m, l, sizeof m);
        m[cases[i].line] = cases[i].v;
        bad = 99;
        t = NULL;
        int rc = ovl_acl_build(m, 3, OVL_POLICY_ISOLATED, 1, &t, &bad);
        CHECK(rc == cases[i].rc && bad == (size_t)cases[i].line && !t,
              "case %zu: rc %d bad %zu, want %d at %d", i, rc, bad, cases[i].rc, cases[i].line);
    }
    CHECK(ovl_acl_build(l, 3, 4, 1, &t, NULL) == -EINVAL, "unknown table flag");
}

static void hits_carry_over(void)
{
    ovl_policy_line_t l[2] = {
        { .rule = 0, .id = 10, .tier = OVL_TIER_NETPOL, .action = OVL_ACT_ALLOW,
          .kind = OVL_LINE_PORT, .proto = 6, .port_lo = 80, .port_hi = 80 },
        { .rule = 1, .id = 11, .tier = OVL_TIER_NETPOL, .action = OVL_ACT_ALLOW,
          .kind = OVL_LINE_PORT, .proto = 17, .port_lo = 53, .port_hi = 53 },
    };
    ovl_acl_t *a, *b;
    CHECK(ovl_acl_build(l, 2, OVL_POLICY_ISOLATED, 3, &a, NULL) == 0, "build a");
    uint8_t peer[16] = {10, 0, 0, 1};
    for (uint32_t w = 0; w < 3; w++)
        for (int k = 0; k < 5; k++) {
            ovl_acl_hit(a, w, ovl_acl_classify(a, 4, peer, 6, 80, 0));
            ovl_acl_hit(a, w, ovl_acl_classify(a, 4, peer, 6, 81, 0));
        }
    uint32_t b80 = ovl_acl_classify(a, 4, peer, 6, 80, 0);
    uint32_t iso = ovl_acl_classify(a, 4, peer, 6, 81, 0);
    CHECK(ovl_acl_rule(a, iso)->id == OVL_RULE_ISOLATION, "isolation decides");
    CHECK(ovl_acl_hits(a, b80) == 15 && ovl_acl_hits(a, iso) == 15, "hits summed over workers");
    /* the new table drops rule 10's position: 11 first, then 10 */
    ovl_policy_line_t m[2] = {l[1], l[0]};
    m[0].rule = 0, m[1].rule = 1;
    CHECK(ovl_acl_build(m, 2, OVL_POLICY_ISOLATED, 3, &b, NULL) == 0, "build b");
    ovl_acl_carry_hits(b, a);
    CHECK(ovl_acl_hits(b, ovl_acl_classify(b, 4, peer, 6, 80, 0)) == 15, "carried by id");
    CHECK(ovl_acl_hits(b, ovl_acl_classify(b, 4, peer, 17, 53, 0)) == 0, "rule 11: none");
    CHECK(ovl_acl_hits(b, ovl_acl_classify(b, 4, peer, 6, 81, 0)) == 15, "isolation carried");
    ovl_acl_free(a);
    ovl_acl_free(b);
}

static void big_table(void)
{
    /* 10,000 rules: each a /32 peer and a TCP port, as pod selectors compile */
    size_t n = 20000;
    ovl_policy_line_t *l = calloc(n, sizeof *l);
    for (uint32_t r = 0; r < 10000; r++) {
        ovl_policy_line_t b = { .rule = r, .id = r, .tier = OVL_TIER_NETPOL,
                                .action = OVL_ACT_ALLOW };
        l[2 * r] = b;
        l[2 * r].kind = OVL_LINE_PEER;
        l[2 * r].family = 4;
        l[2 * r].prefix_len = 32;
        l[2 * r].addr[0] = 10, l[2 * r].addr[1] = 244;
        l[2 * r].addr[2] = (uint8_t)(r >> 8), l[2 * r].addr[3] = (uint8_t)r;
        l[2 * r + 1] = b;
        l[2 * r + 1].kind = OVL_LINE_PORT;
        l[2 * r + 1].proto = 6;
        l[2 * r + 1].port_lo = l[2 * r + 1].port_hi = (uint16_t)(1000 + r % 3000);
    }
    ovl_acl_t *t;
    CHECK(ovl_acl_build(l, n, OVL_POLICY_ISOLATED, 2, &t, NULL) == 0, "10,000 rules build");
    for (uint32_t r = 0; r < 10000; r += 97) {
        uint8_t peer[16] = {10, 244, (uint8_t)(r >> 8), (uint8_t)r};
        CHECK(ovl_acl_rule(t, ovl_acl_classify(t, 4, peer, 6, (uint16_t)(1000 + r % 3000), 0))->id == r,
              "rule %u allows its peer and port", r);
        CHECK(ovl_acl_rule(t, ovl_acl_classify(t, 4, peer, 6, 999, 0))->id == OVL_RULE_ISOLATION,
              "another port is refused");
    }
    ovl_acl_free(t);
    free(l);
}

int main(void)
{
    refuses_bad_lines();
    hits_carry_over();
    random_tables();
    big_table();
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("check_acl: ok\n");
    return 0;
}
