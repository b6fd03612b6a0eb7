/* portsec.c — port security (see portsec.h). */
#include "portsec.h"

#include <errno.h>

#define ND_RS 133
#define ND_RA 134
#define ND_NS 135
#define ND_NA 136
#define ND_REDIRECT 137
#define MLD_V1_REPORT 131
#define MLD_V2_REPORT 143

static const uint8_t zero16[16];
static const uint8_t all_mldv2_routers[16] = {0xff, 0x02, [15] = 0x16};

void ovl_portsec_init(ovl_portsec_t *s, const uint8_t *mac, int router)
{
    memset(s, 0, sizeof *s);
    memcpy(s->mac, mac, 6);
    s->router = router != 0;
    /* Modified EUI-64 (RFC 4291 appendix A): flip the U/L bit, insert ff:fe. */
    s->lla[0] = 0xfe;
    s->lla[1] = 0x80;
    s->lla[8] = mac[0] ^ 0x02;
    s->lla[9] = mac[1];
    s->lla[10] = mac[2];
    s->lla[11] = 0xff;
    s->lla[12] = 0xfe;
    s->lla[13] = mac[3];
    s->lla[14] = mac[4];
    s->lla[15] = mac[5];
}

static int has_ip4(const ovl_portsec_t *s, const uint8_t *a)
{
    for (unsigned i = 0; i < s->n_ip4; i++)
        if (memcmp(s->ip4[i], a, 4) == 0)
            return 1;
    return 0;
}

static int has_ip6(const ovl_portsec_t *s, const uint8_t *a)
{
    if (memcmp(s->lla, a, 16) == 0)
        return 1;
    for (unsigned i = 0; i < s->n_ip6; i++)
        if (memcmp(s->ip6[i], a, 16) == 0)
            return 1;
    return 0;
}

int ovl_portsec_add_ip(ovl_portsec_t *s, int family, const uint8_t *addr)
{
    if (family == 4) {
        if (has_ip4(s, addr))
            return -EEXIST;
        if (s->n_ip4 >= OVL_PORT_IPS_MAX)
            return -ENOSPC;
        memcpy(s->ip4[s->n_ip4++], addr, 4);
        return 0;
    }
    if (family == 6) {
        if (has_ip6(s, addr) && memcmp(s->lla, addr, 16) != 0)
            return -EEXIST;
        if (s->n_ip6 >= OVL_PORT_IPS_MAX)
            return -ENOSPC;
        memcpy(s->ip6[s->n_ip6++], addr, 16);
        return 0;
    }
    return -EAFNOSUPPORT;
}

static int is_dhcp4_from_unspecified(const ovl_frame_t *f)
{
    return f->ip_proto == 17 && f->sport == 68 && f->dport == 67 &&
           memcmp(f->ip_src, zero16, 4) == 0;
}

/* ff02::1:ffXX:XXXX, the solicited-node group of target (RFC 4291 section 2.7.1). */
static int is_solicited_node(const uint8_t *group, const uint8_t *target)
{
    static const uint8_t prefix[13] = {0xff, 0x02, [11] = 0x01, [12] = 0xff};
    return memcmp(group, prefix, 13) == 0 && memcmp(group + 13, target + 13, 3) == 0;
}

/* May this packet come from ::? See the design notes in portsec.h. */
static int from_unspecified_ok(const ovl_portsec_t *s, const ovl_frame_t *f)
{
    if (f->ip_proto != 58)
        return 0;
    switch (f->icmp_type) {
    case ND_NS:
        return !f->nd_has_lladdr && has_ip6(s, f->nd_target) &&
               is_solicited_node(f->ip_dst, f->nd_target);
    case MLD_V2_REPORT:
        return memcmp(f->ip_dst, all_mldv2_routers, 16) == 0;
    case MLD_V1_REPORT:
        return f->ip_dst[0] == 0xff;
    default:
        return 0;
    }
}

int ovl_portsec_check(const ovl_portsec_t *s, const ovl_frame_t *f)
{
    if (memcmp(f->src, s->mac, 6) != 0)
        return -OVL_C_SPOOFED_MAC;
    if (f->has_vlan)
        return -OVL_C_VLAN_FROM_PORT;
    switch (f->l3) {
    case OVL_L3_ARP:
        if (memcmp(f->arp_sha, s->mac, 6) != 0)
            return -OVL_C_SPOOFED_ARP;
        if (!has_ip4(s, f->arp_spa) && memcmp(f->arp_spa, zero16, 4) != 0)
            return -OVL_C_SPOOFED_ARP;
        return 0;
    case OVL_L3_IPV4:
        if (has_ip4(s, f->ip_src) || is_dhcp4_from_unspecified(f))
            return 0;
        return -OVL_C_SPOOFED_IP;
    case OVL_L3_IPV6:
        if (memcmp(f->ip_src, zero16, 16) == 0)
            return from_unspecified_ok(s, f) ? 0 : -OVL_C_SPOOFED_IP;
        if (!has_ip6(s, f->ip_src))
            return -OVL_C_SPOOFED_IP;
        if (f->ip_proto == 58 && f->icmp_type >= ND_RS && f->icmp_type <= ND_REDIRECT) {
            if ((f->icmp_type == ND_RA || f->icmp_type == ND_REDIRECT) && !s->router)
                return -OVL_C_RA_GUARD;
            if (f->icmp_type != ND_REDIRECT && f->nd_has_lladdr &&
                memcmp(f->nd_lladdr, s->mac, 6) != 0)
                return -OVL_C_SPOOFED_ND;
            if (f->icmp_type == ND_NA && !has_ip6(s, f->nd_target))
                return -OVL_C_SPOOFED_ND;
        }
        return 0;
    default:
        return 0;
    }
}
