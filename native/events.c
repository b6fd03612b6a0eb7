/* events.c — the event ring (see events.h). */
#include "events.h"
#include "counters.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

int ovl_events_init(ovl_events_t *q, uint32_t n)
{
    memset(q, 0, sizeof *q);
    q->fd = -1;
    pthread_mutex_init(&q->lock, NULL);
    q->cap = 1;
    while (q->cap < n)
        q->cap <<= 1;
    q->ring = calloc(q->cap, sizeof *q->ring);
    if (!q->ring)
        return -ENOMEM;
    q->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return q->fd < 0 ? -errno : 0;
}

void ovl_events_free(ovl_events_t *q)
{
    free(q->ring);
    q->ring = NULL;
    if (q->fd >= 0)
        close(q->fd);
    q->fd = -1;
    pthread_mutex_destroy(&q->lock);
}

static void wake(const ovl_events_t *q)
{
    uint64_t one = 1;
    ssize_t r = write(q->fd, &one, sizeof one);
    (void)r;
}

void ovl_events_push(ovl_events_t *q, uint64_t *c, const ovl_event_t *ev, int wait)
{
    /* Never block a worker on the control plane: a busy ring loses the event. */
    if (wait ? pthread_mutex_lock(&q->lock) != 0 : pthread_mutex_trylock(&q->lock) != 0) {
        ovl_bump(&c[OVL_C_EVENTS_LOST], 1);
        return;
    }
    if (q->head - q->tail >= q->cap) {
        pthread_mutex_unlock(&q->lock);
        ovl_bump(&c[OVL_C_EVENTS_LOST], 1);
        return;
    }
    int was_empty = q->head == q->tail;
    q->ring[q->head & (q->cap - 1)] = *ev;
    q->head++;
    pthread_mutex_unlock(&q->lock);
    ovl_bump(&c[OVL_C_EVENTS], 1);
    if (was_empty)
        wake(q);
}

int ovl_events_fd(ovl_engine_t *e)
{
    return e->events.fd;
}

int ovl_events_take(ovl_engine_t *e, ovl_event_t *out, size_t n)
{
    ovl_events_t *q = &e->events;
    uint64_t v;
    ssize_t r = read(q->fd, &v, sizeof v); /* reset readiness; more may follow */
    (void)r;
    pthread_mutex_lock(&q->lock);
    size_t k = 0;
    while (k < n && q->tail != q->head) {
        out[k++] = q->ring[q->tail & (q->cap - 1)];
        q->tail++;
    }
    int more = q->tail != q->head;
    pthread_mutex_unlock(&q->lock);
    if (more)
        wake(q);
    return (int)k;
}
