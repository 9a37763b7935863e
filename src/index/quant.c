/*
 * quant.c - the compressed copy scanned before the exact re-rank.
 *
 * int8: each vector gets its own affine code, v[j] ~ offset + step * c[j]
 * with c[j] in 0..255, offset = min(v) and step = (max(v) - min(v)) / 255.
 * Per-vector ranges need no training, so vectors can be added one at a time
 * and never need re-encoding. The query side is quantised symmetrically to
 * int8 at search time (q[j] ~ qs * qq[j]), so that
 *     <q, v> ~ offset * sum(q) + step * qs * sum(c[j] * qq[j])
 * where the last sum is one unsigned x signed VNNI dot product (vpdpbusd).
 *
 * float16: the halves themselves, converted back to float in registers.
 */
#include <math.h>
#include <string.h>

#include "index/internal.h"
#include "index/simd.h"

void ix_quant_encode(const vindex *ix, const float *v, uint8_t *codes, float *qparams)
{
    int dim = ix->dim;
    if (ix->q.kind == INDEX_QUANT_F16) {
        uint16_t halves[64];
        /* to_half writes 2-byte units; codes may be unaligned for uint16_t. */
        for (int j = 0; j < dim; j += 64) {
            int n = dim - j < 64 ? dim - j : 64;
            ix_kern()->to_half(v + j, halves, n);
            memcpy(codes + 2 * (size_t)j, halves, 2 * (size_t)n);
        }
        return;
    }
    float lo = v[0], hi = v[0];
    for (int j = 1; j < dim; j++) {
        lo = v[j] < lo ? v[j] : lo;
        hi = v[j] > hi ? v[j] : hi;
    }
    float step = (hi - lo) / 255.0f;
    qparams[0] = lo;
    qparams[1] = step;
    if (!(step > 0)) {
        memset(codes, 0, (size_t)dim);
        return;
    }
    float inv = 1.0f / step;
    for (int j = 0; j < dim; j++) {
        float c = nearbyintf((v[j] - lo) * inv);
        codes[j] = (uint8_t)(c < 0 ? 0 : c > 255 ? 255 : c);
    }
}
