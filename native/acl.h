/*
 * acl.h — compiled per-port rule tables: the classifier of network policy.
 *
 * A table is built once from the lines the control plane compiled
 * (ovl_policy_line_t, overlay.h) and never changes: a policy change builds
 * a new table and swaps the port's pointer (policy.c). Classifying a packet
 * costs the same with 10 rules or 65,536: two lookups and one AND.
 *
 * Design notes.
 * - One bit per rule, in precedence order (admin rules, NetworkPolicy
 *   rules, baseline rules), plus implicit rules that match every packet:
 *   ISOLATION (deny) after the NetworkPolicy rules when the table is
 *   isolated, and DEFAULT (allow) last. The verdict is the rule of the first
 *   bit set in (peer bitmap AND port bitmap): because the implicit rules
 *   sit in every bitmap, the AND is never empty, and the tiers need no code
 *   of their own: an admin rule before every NetworkPolicy bit decides
 *   first; a NetworkPolicy rule (always ALLOW) before ISOLATION allows; an
 *   isolated port's unmatched packet meets ISOLATION before any baseline
 *   rule, as the tiers want (a port selected by a NetworkPolicy is never
 *   judged by baseline); an unisolated one goes on to baseline, then
 *   DEFAULT. The one exception is PASS (an admin rule that hands over to
 *   NetworkPolicy): the search runs once more from the first NetworkPolicy
 *   bit. Why not a walk over rules: its cost grows with the table, and one
 *   tenant's 10,000 rules would slow every port of the node.
 * - Peers: a multibit trie per family, 4 bits per level (8 levels for IPv4,
 *   32 for IPv6), leaf-pushed: every entry is a child or the id of the
 *   bitmap of the rules whose peer set holds every address under it.
 *   A PEER line less its EXCEPT lines becomes the disjoint prefixes of the
 *   difference (a /8 less a /16 is 8 prefixes), so the union of a rule's
 *   blocks is exact even when one block's except lies in another block.
 *   A rule without PEER lines is the prefix /0 of both families.
 * - Ports: per protocol (TCP, UDP, SCTP, and one class for every other
 *   protocol and for non-first fragments, matched only by rules without a
 *   port), the elementary intervals between the rules' range bounds, each
 *   with its bitmap; a binary search finds the interval.
 * - Bitmaps are interned: equal bitmaps share one id, and a table holds
 *   each once, sparse (the nonzero 64-bit words and their index), so the
 *   AND walks the shorter list and searches the longer: a handful of words
 *   however many rules there are.
 * - Hit counters live in the table, one row per worker (written by that
 *   worker alone, summed when read); a new table takes the old one's counts
 *   by rule id while the writer lock is held (policy.c).
 */
#ifndef OVL_ACL_H
#define OVL_ACL_H

#include "ovl.h"

/* What one rule bit means. */
typedef struct ovl_acl_rule {
    uint32_t id;             /* ovl_policy_line_t.id, or OVL_RULE_ISOLATION/DEFAULT */
    uint8_t action;          /* OVL_ACT_ALLOW, DENY or PASS */
    uint8_t tier;
    uint8_t audit;           /* a deny is only counted */
    uint8_t pad;
} ovl_acl_rule_t;

typedef struct ovl_acl ovl_acl_t;

/* Build the table of lines[0..n) with flags (OVL_POLICY_*), hit counters for
 * workers rows. 0 and *out, or -EINVAL (lines out of order, a field out of
 * range; *bad_line says which when not NULL), -EPROTONOSUPPORT, -E2BIG or
 * -ENOMEM. */
int ovl_acl_build(const ovl_policy_line_t *lines, size_t n, uint32_t flags, uint32_t workers,
                  ovl_acl_t **out, size_t *bad_line);
void ovl_acl_free(ovl_acl_t *t);

/* The rule bit that decides a packet to or from peer (family 4 or 6, 4 or
 * 16 bytes) with IP protocol proto and destination port dport (ignored for
 * protocols other than TCP, UDP and SCTP; fragment 1: a non-first fragment,
 * no port known). */
uint32_t ovl_acl_classify(const ovl_acl_t *t, int family, const uint8_t *peer, uint8_t proto,
                          uint16_t dport, int fragment);

/* The meaning of bit b (b < ovl_acl_bits(t)). */
const ovl_acl_rule_t *ovl_acl_rule(const ovl_acl_t *t, uint32_t b);
uint32_t ovl_acl_bits(const ovl_acl_t *t);

/* The table allows every packet (no rule, not isolated): nothing to track. */
int ovl_acl_allows_all(const ovl_acl_t *t);
/* Flags it was built with; a generation number set by its owner. */
uint32_t ovl_acl_flags(const ovl_acl_t *t);

/* Hit counters: bump bit b's count in worker row w; read the sum over rows. */
void ovl_acl_hit(ovl_acl_t *t, uint32_t w, uint32_t b);
uint64_t ovl_acl_hits(const ovl_acl_t *t, uint32_t b);
/* Take over from's counts for the rules (ids) both tables have. */
void ovl_acl_carry_hits(ovl_acl_t *to, const ovl_acl_t *from);

#endif
