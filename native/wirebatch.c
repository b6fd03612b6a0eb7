/*
 * wirebatch.c — batch codecs: exactly the per-packet header work of the
 * engine (encap: header copy in the headroom and the flow hash; decap:
 * header decode, option check, inner parse) over frames in memory, so the
 * cost of the codec can be measured apart from system calls.
 */
#include "ovl.h"

int ovl_wire_encap_batch(int encap, const ovl_tunnel_t *t, uint8_t **frames,
                         const uint32_t *lens, size_t n, uint32_t *hashes)
{
    uint8_t hdr[OVL_GENEVE_HLEN + OVL_GENEVE_OPTS_MAX];
    int hl = ovl_wire_encode(encap, t, hdr, sizeof hdr);
    if (hl < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        ovl_frame_t f;
        memcpy(frames[i] - hl, hdr, (size_t)hl);
        uint32_t h = 0;
        if (ovl_wire_parse_frame(frames[i], lens[i], &f) == 0)
            h = ovl_wire_flow_hash(&f);
        if (hashes)
            hashes[i] = h;
    }
    return hl;
}

int ovl_wire_decap_batch(int encap, uint8_t **bufs, const uint32_t *lens, size_t n,
                         const uint32_t *known, size_t n_known, int32_t *out)
{
    int ok = 0;
    for (size_t i = 0; i < n; i++) {
        ovl_tunnel_t t;
        ovl_frame_t f;
        int hl = ovl_wire_decode(encap, bufs[i], lens[i], &t);
        if (hl >= 0 && t.opts_len) {
            int rc = ovl_wire_check_options(t.opts, t.opts_len, known, n_known);
            if (rc < 0)
                hl = rc;
        }
        if (hl >= 0) {
            int rc = ovl_wire_parse_frame(bufs[i] + hl, lens[i] - (uint32_t)hl, &f);
            if (rc < 0)
                hl = rc;
        }
        out[i] = hl;
        ok += hl >= 0;
    }
    return ok;
}
