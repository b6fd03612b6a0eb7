/*
 * events.h — the event ring: what the data plane tells the control plane
 * (misses, MACs seen, MACs learned).
 *
 * Design notes. A bounded ring under a mutex, with an eventfd the asyncio
 * loop watches. A worker never waits for the control plane: when the ring is
 * busy (the lock is held) or full, the event is lost and counted
 * (events_lost). The eventfd is written only when the ring goes from empty
 * to non-empty, and rearmed by the reader when it leaves events behind, so
 * a burst of events costs one wake-up.
 */
#ifndef OVL_EVENTS_H
#define OVL_EVENTS_H

#include "ovl.h"

#include <pthread.h>

typedef struct ovl_events {
    pthread_mutex_t lock;
    ovl_event_t *ring;
    uint32_t cap;                /* power of two */
    uint32_t head, tail;         /* free-running; head - tail = queued */
    int fd;                      /* eventfd */
} ovl_events_t;

/* Room for at least n events (rounded up to a power of two); 0 or -errno. */
int ovl_events_init(ovl_events_t *q, uint32_t n);
void ovl_events_free(ovl_events_t *q);
/* Queue ev, counting events or events_lost in the counters c of the thread
 * that pushes (a worker's w->c, the learner's). A worker passes wait 0 and
 * never blocks: a busy ring loses the event. The learner passes 1. */
void ovl_events_push(ovl_events_t *q, uint64_t *c, const ovl_event_t *ev, int wait);

#endif
