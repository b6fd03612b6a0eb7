/*
 * steer.c — the steering program: built once as classic BPF, run by the
 * kernel on the underlay (SO_ATTACH_REUSEPORT_CBPF), translated to eBPF for
 * TAP queues (TUNSETSTEERINGEBPF), interpreted here for the fake transport
 * (see steer.h for the design notes, wire.c for the hash it computes).
 *
 * The program, with the inner frame at X (kept in M[0]); M[1] is the fold,
 * M[2] k2, M[3] the protocol, M[4] and M[5] the ports:
 *
 *   X = base; M[0] = X; M[2] = 0
 *   A = H[12]                      ethertype
 *     0x0800: M[1] = W[26] ^ W[30]; M[3] = B[23]
 *             TCP/UDP/SCTP and !(H[20] & 0x3fff): A = W[14 + 4 * (B[14] & 15)]: ports
 *     0x86dd: M[1] = W[22] ^ ... ^ W[50]; M[3] = B[20]
 *             TCP/UDP/SCTP: A = W[54]: ports
 *     other:  M[1] = W[0] ^ W[6] ^ H[4] ^ H[10]
 *   ports:    M[2] = M[3] << 16 | (A >> 16 ^ A & 0xffff)
 *   A = fmix32(M[1] ^ M[2] * 0x9e3779b1) % workers
 *
 * Every load is relative to X (BPF_IND), so one text serves a TAP (X = 0),
 * VXLAN (X = 8) and Geneve (X = 8 + 4 * (B[0] & 0x3f): its option length).
 */
#include "steer.h"

#include <errno.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- the builder: classic BPF with forward labels ---- */

enum { L_V4, L_V4_PORTS, L_V6, L_V6_PORTS, L_PORTS, L_MIX, L__COUNT };

typedef struct as {
    ovl_steer_prog_t *p;
    int err;
    int at[L__COUNT];                        /* where each label is, -1 until placed */
    struct { uint16_t ins; uint8_t label; } fix[32];
    uint32_t n_fix;
} as_t;

static void op(as_t *a, uint16_t code, uint32_t k)
{
    if (a->p->len >= OVL_STEER_PROG_MAX) {
        a->err = 1;
        return;
    }
    a->p->ins[a->p->len++] = (struct sock_filter){ code, 0, 0, k };
}

/* A jump to label when the test holds (jt), on otherwise (jf = 0); BPF_JA
 * for an unconditional one (k is the offset). */
static void jump(as_t *a, uint16_t code, uint32_t k, int label)
{
    if (a->n_fix == sizeof a->fix / sizeof a->fix[0]) {
        a->err = 1;
        return;
    }
    a->fix[a->n_fix].ins = a->p->len;
    a->fix[a->n_fix++].label = (uint8_t)label;
    op(a, code, k);
}

static void here(as_t *a, int label)
{
    a->at[label] = a->p->len;
}

static int resolve(as_t *a)
{
    for (uint32_t i = 0; i < a->n_fix && !a->err; i++) {
        struct sock_filter *in = &a->p->ins[a->fix[i].ins];
        int to = a->at[a->fix[i].label], off = to - (a->fix[i].ins + 1);
        if (to < 0 || off < 0 || off > 255)
            return -EINVAL;
        if (BPF_OP(in->code) == BPF_JA)
            in->k = (uint32_t)off;
        else
            in->jt = (uint8_t)off;
    }
    return a->err ? -EINVAL : 0;
}

/* M[1] ^= the word (BPF_W) or half word (BPF_H) at X + off; X stays the base. */
static void fold(as_t *a, uint16_t size, uint32_t off)
{
    op(a, BPF_LD | size | BPF_IND, off);
    op(a, BPF_LDX | BPF_MEM, 1);
    op(a, BPF_ALU | BPF_XOR | BPF_X, 0);
    op(a, BPF_ST, 1);
    op(a, BPF_LDX | BPF_MEM, 0);
}

/* Go to label when A is TCP, UDP or SCTP. */
static void if_ports(as_t *a, int label)
{
    jump(a, BPF_JMP | BPF_JEQ | BPF_K, 6, label);
    jump(a, BPF_JMP | BPF_JEQ | BPF_K, 17, label);
    jump(a, BPF_JMP | BPF_JEQ | BPF_K, 132, label);
}

/* A = A ^ (A >> shift), through X. */
static void xorshift(as_t *a, uint32_t shift)
{
    op(a, BPF_MISC | BPF_TAX, 0);
    op(a, BPF_ALU | BPF_RSH | BPF_K, shift);
    op(a, BPF_ALU | BPF_XOR | BPF_X, 0);
}

int ovl_steer_build(ovl_steer_prog_t *p, int where, uint32_t workers)
{
    if (workers == 0 || (where != OVL_STEER_AT_TAP && where != OVL_ENCAP_VXLAN &&
                         where != OVL_ENCAP_GENEVE))
        return -EINVAL;
    as_t a = { .p = p };
    p->len = 0;
    for (int i = 0; i < L__COUNT; i++)
        a.at[i] = -1;

    /* X = where the inner frame starts. */
    if (where == OVL_ENCAP_GENEVE) {
        op(&a, BPF_LD | BPF_B | BPF_ABS, 0);            /* Ver (2) | Opt Len (6) */
        op(&a, BPF_ALU | BPF_AND | BPF_K, 0x3f);
        op(&a, BPF_ALU | BPF_LSH | BPF_K, 2);
        op(&a, BPF_ALU | BPF_ADD | BPF_K, OVL_GENEVE_HLEN);
        op(&a, BPF_MISC | BPF_TAX, 0);
    } else {
        op(&a, BPF_LDX | BPF_IMM, where == OVL_ENCAP_VXLAN ? OVL_VXLAN_HLEN : 0);
    }
    op(&a, BPF_STX, 0);
    op(&a, BPF_LD | BPF_IMM, 0);
    op(&a, BPF_ST, 2);
    op(&a, BPF_LD | BPF_H | BPF_IND, 12);
    jump(&a, BPF_JMP | BPF_JEQ | BPF_K, 0x0800, L_V4);
    jump(&a, BPF_JMP | BPF_JEQ | BPF_K, 0x86dd, L_V6);
    /* other: the two MACs */
    op(&a, BPF_LD | BPF_W | BPF_IND, 0);
    op(&a, BPF_ST, 1);
    fold(&a, BPF_W, 6);
    fold(&a, BPF_H, 4);
    fold(&a, BPF_H, 10);
    jump(&a, BPF_JMP | BPF_JA, 0, L_MIX);

    here(&a, L_V4);
    op(&a, BPF_LD | BPF_W | BPF_IND, 26);
    op(&a, BPF_ST, 1);
    fold(&a, BPF_W, 30);
    op(&a, BPF_LD | BPF_B | BPF_IND, 23);
    op(&a, BPF_ST, 3);
    if_ports(&a, L_V4_PORTS);
    jump(&a, BPF_JMP | BPF_JA, 0, L_MIX);
    here(&a, L_V4_PORTS);
    op(&a, BPF_LD | BPF_H | BPF_IND, 20);               /* flags and fragment offset */
    jump(&a, BPF_JMP | BPF_JSET | BPF_K, 0x3fff, L_MIX);
    op(&a, BPF_LD | BPF_B | BPF_IND, 14);               /* version and IHL */
    op(&a, BPF_ALU | BPF_AND | BPF_K, 0x0f);
    op(&a, BPF_ALU | BPF_LSH | BPF_K, 2);
    op(&a, BPF_ALU | BPF_ADD | BPF_K, 14);
    op(&a, BPF_ALU | BPF_ADD | BPF_X, 0);
    op(&a, BPF_MISC | BPF_TAX, 0);
    op(&a, BPF_LD | BPF_W | BPF_IND, 0);
    jump(&a, BPF_JMP | BPF_JA, 0, L_PORTS);

    here(&a, L_V6);
    op(&a, BPF_LD | BPF_W | BPF_IND, 22);
    op(&a, BPF_ST, 1);
    for (uint32_t off = 26; off < 54; off += 4)
        fold(&a, BPF_W, off);
    op(&a, BPF_LD | BPF_B | BPF_IND, 20);               /* next header */
    op(&a, BPF_ST, 3);
    if_ports(&a, L_V6_PORTS);
    jump(&a, BPF_JMP | BPF_JA, 0, L_MIX);
    here(&a, L_V6_PORTS);
    op(&a, BPF_LD | BPF_W | BPF_IND, 54);

    here(&a, L_PORTS);                                  /* A: sport << 16 | dport */
    op(&a, BPF_ST, 4);
    op(&a, BPF_ALU | BPF_RSH | BPF_K, 16);
    op(&a, BPF_ST, 5);
    op(&a, BPF_LD | BPF_MEM, 4);
    op(&a, BPF_ALU | BPF_AND | BPF_K, 0xffff);
    op(&a, BPF_LDX | BPF_MEM, 5);
    op(&a, BPF_ALU | BPF_XOR | BPF_X, 0);
    op(&a, BPF_ST, 4);
    op(&a, BPF_LD | BPF_MEM, 3);
    op(&a, BPF_ALU | BPF_LSH | BPF_K, 16);
    op(&a, BPF_LDX | BPF_MEM, 4);
    op(&a, BPF_ALU | BPF_OR | BPF_X, 0);
    op(&a, BPF_ST, 2);

    here(&a, L_MIX);
    op(&a, BPF_LD | BPF_MEM, 2);
    op(&a, BPF_ALU | BPF_MUL | BPF_K, 0x9e3779b1u);
    op(&a, BPF_LDX | BPF_MEM, 1);
    op(&a, BPF_ALU | BPF_XOR | BPF_X, 0);
    xorshift(&a, 16);                                   /* murmur3's fmix32 */
    op(&a, BPF_ALU | BPF_MUL | BPF_K, 0x85ebca6bu);
    xorshift(&a, 13);
    op(&a, BPF_ALU | BPF_MUL | BPF_K, 0xc2b2ae35u);
    xorshift(&a, 16);
    op(&a, BPF_ALU | BPF_MOD | BPF_K, workers);
    op(&a, BPF_RET | BPF_A, 0);
    return resolve(&a);
}

/* ---- the interpreter ---- */

static int load(const uint8_t *pkt, size_t len, uint32_t off, uint16_t size, uint32_t *v)
{
    size_t n = size == BPF_W ? 4 : size == BPF_H ? 2 : 1;
    if ((size_t)off + n > len || off > len)
        return -1;
    uint32_t x = 0;
    for (size_t i = 0; i < n; i++)
        x = x << 8 | pkt[off + i];
    *v = x;
    return 0;
}

static uint32_t alu(uint16_t o, uint32_t a, uint32_t b, int *bad)
{
    switch (o) {
    case BPF_ADD: return a + b;
    case BPF_SUB: return a - b;
    case BPF_MUL: return a * b;
    case BPF_DIV: if (!b) *bad = 1; return b ? a / b : 0;
    case BPF_MOD: if (!b) *bad = 1; return b ? a % b : 0;
    case BPF_OR:  return a | b;
    case BPF_AND: return a & b;
    case BPF_XOR: return a ^ b;
    case BPF_LSH: return b < 32 ? a << b : 0;
    case BPF_RSH: return b < 32 ? a >> b : 0;
    case BPF_NEG: return -a;
    default: *bad = 1; return 0;
    }
}

uint32_t ovl_steer_run(const ovl_steer_prog_t *p, const uint8_t *pkt, size_t len)
{
    uint32_t A = 0, X = 0, M[BPF_MEMWORDS] = {0};
    for (uint32_t pc = 0; pc < p->len; pc++) {
        const struct sock_filter *in = &p->ins[pc];
        uint16_t c = in->code;
        uint32_t v, k = in->k;
        int bad = 0;
        switch (BPF_CLASS(c)) {
        case BPF_LD:
        case BPF_LDX: {
            uint32_t *dst = BPF_CLASS(c) == BPF_LD ? &A : &X;
            switch (BPF_MODE(c)) {
            case BPF_IMM: *dst = k; break;
            case BPF_MEM: if (k >= BPF_MEMWORDS) return 0; *dst = M[k]; break;
            case BPF_LEN: *dst = (uint32_t)len; break;
            case BPF_ABS:
            case BPF_IND:
                if (BPF_CLASS(c) != BPF_LD ||
                    load(pkt, len, BPF_MODE(c) == BPF_IND ? X + k : k, BPF_SIZE(c), &v) < 0)
                    return 0;
                A = v;
                break;
            case BPF_MSH:
                if (load(pkt, len, k, BPF_B, &v) < 0)
                    return 0;
                X = (v & 0xf) << 2;
                break;
            default: return 0;
            }
            break;
        }
        case BPF_ST:
        case BPF_STX:
            if (k >= BPF_MEMWORDS)
                return 0;
            M[k] = BPF_CLASS(c) == BPF_ST ? A : X;
            break;
        case BPF_ALU:
            A = alu(BPF_OP(c), A, BPF_SRC(c) == BPF_X ? X : k, &bad);
            if (bad)
                return 0;
            break;
        case BPF_JMP: {
            uint32_t b = BPF_SRC(c) == BPF_X ? X : k;
            int t;
            switch (BPF_OP(c)) {
            case BPF_JA: pc += k; continue;
            case BPF_JEQ: t = A == b; break;
            case BPF_JGT: t = A > b; break;
            case BPF_JGE: t = A >= b; break;
            case BPF_JSET: t = (A & b) != 0; break;
            default: return 0;
            }
            pc += t ? in->jt : in->jf;
            break;
        }
        case BPF_RET:
            return BPF_RVAL(c) == BPF_A ? A : k;
        case BPF_MISC:
            if (BPF_MISCOP(c) == BPF_TAX)
                X = A;
            else
                A = X;
            break;
        default:
            return 0;
        }
    }
    return 0;
}

/* ---- the translation to eBPF, and the load ---- */

#define R_A BPF_REG_0
#define R_X BPF_REG_7
#define R_CTX BPF_REG_6
#define EINS_MAX (3 + 2 * OVL_STEER_PROG_MAX)

/* The stack slot of scratch word k. */
static inline int16_t mem_off(uint32_t k)
{
    return (int16_t)(-4 * (int)(BPF_MEMWORDS - k));
}

static struct bpf_insn ins(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm)
{
    return (struct bpf_insn){ .code = code, .dst_reg = dst, .src_reg = src, .off = off, .imm = imm };
}

/* p in eBPF into out (room for EINS_MAX); the count, or -EINVAL for an
 * instruction the translation does not take (MSH, LEN, X-relative jumps). */
static int translate(const ovl_steer_prog_t *p, struct bpf_insn *out)
{
    int pos[OVL_STEER_PROG_MAX + 1], n = 3;
    /* Where each classic instruction starts: a conditional jump with a
     * false branch and a RET K take two. */
    for (uint32_t i = 0; i < p->len; i++) {
        pos[i] = n;
        uint16_t c = p->ins[i].code;
        n += (BPF_CLASS(c) == BPF_RET && BPF_RVAL(c) == BPF_K) ||
                     (BPF_CLASS(c) == BPF_JMP && BPF_OP(c) != BPF_JA && p->ins[i].jf)
                 ? 2
                 : 1;
    }
    pos[p->len] = n;
    int k = 0;
    out[k++] = ins(BPF_ALU64 | BPF_MOV | BPF_X, R_CTX, BPF_REG_1, 0, 0);
    out[k++] = ins(BPF_ALU | BPF_MOV | BPF_K, R_A, 0, 0, 0);
    out[k++] = ins(BPF_ALU | BPF_MOV | BPF_K, R_X, 0, 0, 0);
    for (uint32_t i = 0; i < p->len; i++) {
        const struct sock_filter *in = &p->ins[i];
        uint16_t c = in->code;
        int32_t imm = (int32_t)in->k;
        switch (BPF_CLASS(c)) {
        case BPF_LD:
            if (BPF_MODE(c) == BPF_ABS)
                out[k++] = ins(BPF_LD | BPF_ABS | BPF_SIZE(c), 0, 0, 0, imm);
            else if (BPF_MODE(c) == BPF_IND)
                out[k++] = ins(BPF_LD | BPF_IND | BPF_SIZE(c), 0, R_X, 0, imm);
            else if (BPF_MODE(c) == BPF_IMM)
                out[k++] = ins(BPF_ALU | BPF_MOV | BPF_K, R_A, 0, 0, imm);
            else if (BPF_MODE(c) == BPF_MEM && in->k < BPF_MEMWORDS)
                out[k++] = ins(BPF_LDX | BPF_MEM | BPF_W, R_A, BPF_REG_10, mem_off(in->k), 0);
            else
                return -EINVAL;
            break;
        case BPF_LDX:
            if (BPF_MODE(c) == BPF_IMM)
                out[k++] = ins(BPF_ALU | BPF_MOV | BPF_K, R_X, 0, 0, imm);
            else if (BPF_MODE(c) == BPF_MEM && in->k < BPF_MEMWORDS)
                out[k++] = ins(BPF_LDX | BPF_MEM | BPF_W, R_X, BPF_REG_10, mem_off(in->k), 0);
            else
                return -EINVAL;
            break;
        case BPF_ST:
        case BPF_STX:
            if (in->k >= BPF_MEMWORDS)
                return -EINVAL;
            out[k++] = ins(BPF_STX | BPF_MEM | BPF_W, BPF_REG_10,
                           BPF_CLASS(c) == BPF_ST ? R_A : R_X, mem_off(in->k), 0);
            break;
        case BPF_ALU:
            if (BPF_OP(c) == BPF_NEG)
                out[k++] = ins(BPF_ALU | BPF_NEG, R_A, 0, 0, 0);
            else if (BPF_SRC(c) == BPF_X)
                out[k++] = ins(BPF_ALU | BPF_OP(c) | BPF_X, R_A, R_X, 0, 0);
            else if ((BPF_OP(c) == BPF_DIV || BPF_OP(c) == BPF_MOD) && in->k == 0)
                return -EINVAL;
            else
                out[k++] = ins(BPF_ALU | BPF_OP(c) | BPF_K, R_A, 0, 0, imm);
            break;
        case BPF_JMP: {
            if (BPF_SRC(c) == BPF_X)
                return -EINVAL;
            uint32_t next = i + 1;
            if (BPF_OP(c) == BPF_JA) {
                if (next + in->k > p->len)
                    return -EINVAL;
                out[k] = ins(BPF_JMP | BPF_JA, 0, 0, (int16_t)(pos[next + in->k] - (k + 1)), 0);
                k++;
                break;
            }
            if (next + in->jt > p->len || next + in->jf > p->len)
                return -EINVAL;
            /* 32-bit compares: A is a 32-bit register in classic BPF. */
            out[k] = ins(BPF_JMP32 | BPF_OP(c) | BPF_K, R_A, 0,
                         (int16_t)(pos[next + in->jt] - (k + 1)), imm);
            k++;
            if (in->jf) {
                out[k] = ins(BPF_JMP | BPF_JA, 0, 0, (int16_t)(pos[next + in->jf] - (k + 1)), 0);
                k++;
            }
            break;
        }
        case BPF_RET:
            if (BPF_RVAL(c) == BPF_K)
                out[k++] = ins(BPF_ALU | BPF_MOV | BPF_K, R_A, 0, 0, imm);
            else if (BPF_RVAL(c) == BPF_X)
                return -EINVAL;
            out[k++] = ins(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
            break;
        case BPF_MISC:
            if (BPF_MISCOP(c) == BPF_TAX)
                out[k++] = ins(BPF_ALU | BPF_MOV | BPF_X, R_X, R_A, 0, 0);
            else
                out[k++] = ins(BPF_ALU | BPF_MOV | BPF_X, R_A, R_X, 0, 0);
            break;
        default:
            return -EINVAL;
        }
    }
    return k;
}

int ovl_steer_load(const ovl_steer_prog_t *p, char *log, size_t log_len)
{
    struct bpf_insn prog[EINS_MAX];
    int n = translate(p, prog);
    if (n < 0)
        return n;
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    attr.insn_cnt = (uint32_t)n;
    attr.insns = (uint64_t)(uintptr_t)prog;
    attr.license = (uint64_t)(uintptr_t)"Apache-2.0";
    snprintf(attr.prog_name, sizeof attr.prog_name, "ovl_steer");
    int fd = (int)syscall(__NR_bpf, BPF_PROG_LOAD, &attr, sizeof attr);
    if (fd >= 0)
        return fd;
    int err = -errno;
    if (log && log_len && err != -EPERM) {
        /* Again with the verifier's log (a verbose log that overflows the
         * buffer fails the load by itself, so only when it failed). */
        log[0] = 0;
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = (uint32_t)log_len;
        attr.log_level = 1;
        fd = (int)syscall(__NR_bpf, BPF_PROG_LOAD, &attr, sizeof attr);
        if (fd >= 0)
            return fd;
    }
    return err;
}
