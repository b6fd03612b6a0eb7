/*
 * gen.c — a small-datagram traffic generator and sink (see overlay_tools.h).
 * Not on the data path: used by tests and bench/ to offer load that Python
 * (or iperf3, for small packets) cannot produce.
 */
#include "ovl.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#define GEN_BATCH_MAX 1024

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int64_t ovl_gen_send(int fd, const uint8_t *payload, size_t len, uint64_t count,
                     uint32_t batch, uint64_t duration_ns)
{
    if (batch == 0 || batch > GEN_BATCH_MAX)
        return -EINVAL;
    struct mmsghdr *msgs = calloc(batch, sizeof *msgs);
    struct iovec iov = { .iov_base = (void *)payload, .iov_len = len };
    if (!msgs)
        return -ENOMEM;
    for (uint32_t i = 0; i < batch; i++) {
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    uint64_t end = mono_ns() + duration_ns, sent = 0;
    int err = 0;
    while (sent < count) {
        uint64_t want = count - sent < batch ? count - sent : batch;
        int r = sendmmsg(fd, msgs, (unsigned)want, 0);
        if (r < 0) {
            if (errno == EINTR || errno == ENOBUFS || errno == ECONNREFUSED)
                continue; /* queue full or a refused earlier datagram: go on */
            err = -errno;
            break;
        }
        sent += (uint64_t)r;
        if ((sent & 0x3ff) < (uint64_t)r && mono_ns() >= end)
            break;
    }
    free(msgs);
    return sent ? (int64_t)sent : (int64_t)err;
}

int ovl_gen_recv(int fd, uint64_t duration_ns, uint64_t idle_ns, uint64_t *packets,
                 uint64_t *bytes)
{
    enum { B = 256, SZ = 2048 };
    struct mmsghdr *msgs = calloc(B, sizeof *msgs);
    struct iovec *iov = calloc(B, sizeof *iov);
    uint8_t *buf = malloc((size_t)B * SZ);
    if (!msgs || !iov || !buf) {
        free(msgs);
        free(iov);
        free(buf);
        return -ENOMEM;
    }
    for (int i = 0; i < B; i++) {
        iov[i].iov_base = buf + (size_t)i * SZ;
        iov[i].iov_len = SZ;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    uint64_t start = mono_ns(), last = start, p = 0, b = 0;
    int rc = 0;
    for (;;) {
        uint64_t now = mono_ns();
        if (now - start >= duration_ns || (p && now - last >= idle_ns) || (!p && now - start >= idle_ns * 20))
            break;
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int pr = poll(&pfd, 1, 10);
        if (pr <= 0)
            continue;
        int n = recvmmsg(fd, msgs, B, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        for (int i = 0; i < n; i++)
            b += msgs[i].msg_len;
        p += (uint64_t)n;
        last = mono_ns();
    }
    *packets = p;
    *bytes = b;
    free(msgs);
    free(iov);
    free(buf);
    return rc;
}
