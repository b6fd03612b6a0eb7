/*
 * check_steer.c — the steering program (steer.c) against the steering hash
 * (wire.c), under AddressSanitizer and UBSan.
 *
 * For random and mutated frames (IPv4 and IPv6 with TCP, UDP, SCTP, ICMP,
 * fragments, options and truncations; ARP; VLAN tags; noise), with 1 to 16
 * workers: the classic program run by the interpreter returns
 * ovl_wire_steer_hash(inner) % workers for a TAP's frame, behind a VXLAN
 * header and behind a Geneve header with options; and the hash is symmetric
 * (the frame with its MACs, addresses and ports swapped hashes alike).
 *
 * Where the process may load BPF (root, CAP_BPF), the same program
 * translated to eBPF is loaded and run by the kernel (BPF_PROG_TEST_RUN) on
 * the same frames: the kernel's answer must be the interpreter's. Without
 * that right the kernel part is skipped, and said so.
 */
#include "../steer.h"

#include <errno.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FRAMES 20000
#define MAXLEN 200

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static void be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* A random frame into f; returns its length. */
static size_t make_frame(uint8_t *f)
{
    for (size_t i = 0; i < MAXLEN; i++)
        f[i] = (uint8_t)next();
    static const uint8_t protos[] = {6, 17, 132, 1, 58, 0, 44, 47};
    uint8_t proto = protos[next() % sizeof protos];
    size_t len;
    switch (next() % 6) {
    case 0: case 1: { /* IPv4 */
        be16(f + 12, 0x0800);
        unsigned ihl = next() % 4 ? 5 : 5 + next() % 11;
        if (next() % 16 == 0)
            ihl = next() % 16; /* nonsense, as a hostile pod may send */
        f[14] = (uint8_t)(0x40 | ihl);
        f[23] = proto;
        uint16_t frag = next() % 4 ? 0x4000 : (uint16_t)next(); /* DF, or anything */
        be16(f + 20, frag);
        len = 14 + ihl * 4 + 8 + next() % 40;
        break;
    }
    case 2: case 3: /* IPv6 */
        be16(f + 12, 0x86dd);
        f[14] = 0x60;
        f[20] = proto;
        len = 54 + 8 + next() % 40;
        break;
    case 4: /* ARP, or a VLAN tag */
        be16(f + 12, next() % 2 ? 0x0806 : 0x8100);
        len = 42 + next() % 30;
        break;
    default: /* noise */
        len = next() % MAXLEN;
        break;
    }
    if (next() % 8 == 0)
        len = next() % (len + 1); /* truncated anywhere */
    return len > MAXLEN ? MAXLEN : len;
}

/* The frame with source and destination swapped (MACs, addresses, ports),
 * as the reply of its flow; 0 when it is no flow: an IPv4 header shorter
 * than 20 bytes (IHL < 5) puts the "ports" inside the addresses, and the
 * parser drops it anyway. */
static int swap(uint8_t *f, size_t len)
{
    uint8_t t[16];
    if (len < 14)
        return 0;
    memcpy(t, f, 6), memcpy(f, f + 6, 6), memcpy(f + 6, t, 6);
    uint16_t type = (uint16_t)(f[12] << 8 | f[13]);
    size_t a = 0, alen = 0, l4 = 0;
    if (type == 0x0800 && len >= 34) {
        if ((f[14] & 15) < 5)
            return 0;
        a = 26, alen = 4;
        l4 = 14 + (size_t)(f[14] & 15) * 4;
    } else if (type == 0x86dd && len >= 54) {
        a = 22, alen = 16, l4 = 54;
    }
    if (alen) {
        memcpy(t, f + a, alen), memcpy(f + a, f + a + alen, alen), memcpy(f + a + alen, t, alen);
        if (l4 + 4 <= len) {
            memcpy(t, f + l4, 2), memcpy(f + l4, f + l4 + 2, 2), memcpy(f + l4 + 2, t, 2);
        }
    }
    return 1;
}

static int fails;
static void check(int ok, const char *what, size_t i)
{
    if (!ok && fails++ < 20)
        fprintf(stderr, "check_steer: %s (frame %zu)\n", what, i);
}

/* BPF_PROG_TEST_RUN of the socket filter prog_fd on frame f: the kernel
 * pulls a 14-byte Ethernet header first, so the frame goes behind one. */
static int kernel_run(int prog_fd, const uint8_t *f, size_t len, uint32_t *ret)
{
    uint8_t in[14 + MAXLEN + 64];
    memset(in, 0, 14);
    in[12] = 0x88, in[13] = 0xb5; /* a local experimental type: no L3 checks on it */
    memcpy(in + 14, f, len);
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.test.prog_fd = (uint32_t)prog_fd;
    attr.test.data_in = (uint64_t)(uintptr_t)in;
    attr.test.data_size_in = (uint32_t)(14 + len);
    attr.test.repeat = 1;
    if (syscall(__NR_bpf, BPF_PROG_TEST_RUN, &attr, sizeof attr) < 0)
        return -errno;
    *ret = attr.test.retval;
    return 0;
}

int main(void)
{
    static uint8_t frames[FRAMES][MAXLEN];
    static size_t lens[FRAMES];
    for (size_t i = 0; i < FRAMES; i++)
        lens[i] = make_frame(frames[i]);

    /* Symmetry. */
    for (size_t i = 0; i < FRAMES; i++) {
        uint8_t r[MAXLEN];
        memcpy(r, frames[i], lens[i]);
        if (swap(r, lens[i]))
            check(ovl_wire_steer_hash(r, lens[i]) == ovl_wire_steer_hash(frames[i], lens[i]),
                  "the reply of a flow hashes differently", i);
    }

    static const uint32_t workers[] = {1, 2, 3, 4, 7, 16};
    uint8_t dgram[8 + 252 + MAXLEN];
    for (size_t w = 0; w < sizeof workers / sizeof workers[0]; w++) {
        uint32_t n = workers[w];
        ovl_steer_prog_t tap, vxlan, geneve;
        check(ovl_steer_build(&tap, OVL_STEER_AT_TAP, n) == 0, "build (TAP)", n);
        check(ovl_steer_build(&vxlan, OVL_ENCAP_VXLAN, n) == 0, "build (VXLAN)", n);
        check(ovl_steer_build(&geneve, OVL_ENCAP_GENEVE, n) == 0, "build (Geneve)", n);
        for (size_t i = 0; i < FRAMES; i++) {
            const uint8_t *f = frames[i];
            size_t len = lens[i];
            uint32_t want = ovl_wire_steer_hash(f, len) % n;
            check(ovl_steer_run(&tap, f, len) == want, "TAP program", i);
            memset(dgram, 0, 8);
            dgram[0] = 0x08;
            memcpy(dgram + 8, f, len);
            check(ovl_steer_run(&vxlan, dgram, 8 + len) == want, "VXLAN program", i);
            size_t opts = 4 * (next() % 64);
            dgram[0] = (uint8_t)(opts / 4);  /* version 0, Opt Len */
            for (size_t k = 0; k < opts; k++)
                dgram[8 + k] = (uint8_t)next();
            memcpy(dgram + 8 + opts, f, len);
            check(ovl_steer_run(&geneve, dgram, 8 + opts + len) == want, "Geneve program", i);
        }
        /* A datagram too short for its tunnel header: worker 0. */
        check(ovl_steer_run(&geneve, (const uint8_t *)"\x3f", 1) == 0, "short Geneve", 0);

        char log[4096];
        int fd = ovl_steer_load(&tap, log, sizeof log);
        if (fd == -EPERM || fd == -ENOSYS) {
            if (w == 0)
                printf("check_steer: no right to load BPF here: the kernel part is skipped\n");
            continue;
        }
        if (fd < 0) {
            fprintf(stderr, "check_steer: the eBPF program does not load (%s):\n%s\n",
                    strerror(-fd), log);
            return 1;
        }
        for (size_t i = 0; i < FRAMES; i++) {
            uint32_t got;
            int rc = kernel_run(fd, frames[i], lens[i], &got);
            if (rc < 0) {
                fprintf(stderr, "check_steer: BPF_PROG_TEST_RUN: %s (frame %zu, %zu bytes)\n", strerror(-rc), i, lens[i]);
                return 1;
            }
            check(got == ovl_wire_steer_hash(frames[i], lens[i]) % n,
                  "the kernel's eBPF disagrees", i);
        }
        close(fd);
    }
    if (fails) {
        fprintf(stderr, "check_steer: %d failures\n", fails);
        return 1;
    }
    printf("check_steer: ok\n");
    return 0;
}
