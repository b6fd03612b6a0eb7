/*
 * policy.h — network policy at a port's door: the egress-policy stage of
 * encap.c and the ingress-policy stage of deliver.c, over the port's
 * compiled tables (acl.c) and the worker's sessions (conntrack.c).
 *
 * Design notes.
 * - What policy judges: IPv4 and IPv6 packets. ARP, neighbour discovery
 *   and MLD (the link's own housekeeping) and non-IP frames pass, as
 *   Kubernetes NetworkPolicy leaves them alone.
 * - The order at a stage: a tracked connection (its later packets, its
 *   replies, ICMP errors about it) passes when the session's table is still
 *   the port's; otherwise the packet is classified by the port's table for
 *   the stage (the session's stage for a reply) and, when allowed, its
 *   session starts or goes on; a deny ends it. A session thus never outlives
 *   the rule that allowed it by more than one packet.
 * - Tables change by pointer swap under the writer lock: built outside any
 *   lock, swapped while no worker is inside a burst (engine.h), so the old
 *   table is freed right after the swap, and its hit counters are carried
 *   over by rule id in the same quiescent moment. Each port direction has a
 *   generation, bumped by every swap; a session records the generation it
 *   was allowed under.
 * - A port created with OVL_PORT_POLICY_PENDING refuses every IP packet in
 *   a direction until that direction has been set once (even to "no
 *   policy"): the pod's first packet never races its policy.
 * - Sessions and the verdict events' rate limit are per worker, allocated
 *   when the engine's first table is set (an engine without policy carries
 *   none). Verdict events (OVL_EVENT_POLICY) go out for denies and audited
 *   denies, at most once a second per (port, direction, rule, verdict) and
 *   worker.
 * - ovl_port_policy_probe is a first packet's classification without its
 *   effects: the same pending test, classifier and audit rule as the stage
 *   (one function each, shared), under the reader lock, and no session, hit,
 *   counter or event. A verifier compares it with what the policies say.
 * - A new session that takes the slot of a live one (conntrack.h: closed or
 *   unanswered sessions give way in a full bucket) counts conntrack_evicted;
 *   ovl_ct_commit says so in its return value, so the stage pays nothing
 *   more when no session is evicted.
 * - Known limits: a non-first fragment has no ports, so it is classified
 *   by address alone (only rules without ports match it) and not tracked;
 *   a frame handled by a worker other than its flow's owner (steer_misses)
 *   is judged against that worker's sessions, so a reply may be classified
 *   as new.
 */
#ifndef OVL_POLICY_H
#define OVL_POLICY_H

#include "port.h"

/* Does port p have policy (a table in either direction, or pending)? The
 * stages' fast check: a port without policy costs this test alone. A port
 * with a table in one direction tracks its connections in both, so that the
 * replies of what one direction let through pass the other. */
static inline int ovl_policy_on(const ovl_port_t *p)
{
    return p->acl[0] || p->acl[1] || (p->flags & OVL_PORT_POLICY_PENDING);
}

/* The stages: OVL_PASS or a drop reason. f: frame's parse, or NULL (the
 * ingress stage parses when it must). Call only when ovl_policy_on. */
int ovl_policy_check(ovl_worker_t *w, ovl_port_t *p, int direction, const uint8_t *frame,
                     size_t len, const ovl_frame_t *f);

/* Free a port's tables (port removal, engine destroy; writer lock held). */
void ovl_policy_port_clear(ovl_port_t *p);
/* Free a worker's sessions. */
void ovl_policy_worker_free(ovl_worker_t *w);

#endif
