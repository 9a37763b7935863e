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
 *
 * The same int8 codes serve the HNSW walk (hnsw.c): a float query is
 * quantised as above, and a stored vector can itself be the query (the
 * neighbour-selection heuristic compares stored vectors with each other):
 * its dequantised values offset + step * c are requantised symmetrically
 * in one SIMD pass over the codes (simd.c's requant).
 */
#include <math.h>
#include <string.h>

#include "index/internal.h"
#include "index/simd.h"

/* nearbyintf for |x| < 2^22 in the default rounding mode (to nearest, ties
 * to even) without a libm call: adding 1.5 * 2^23 leaves no fraction bits. */
static inline float round_even(float x)
{
    float big = x + 12582912.0f;
    return big - 12582912.0f;
}

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
    if (ix->q.kind == INDEX_QUANT_INT4)
        ix_quant_encode_int4(dim, v, codes, qparams);
    else
        ix_quant_encode_int8(dim, v, codes, qparams);
}

/* The smallest and largest component of v. */
static void value_range(int dim, const float *v, float *lo, float *hi)
{
    *lo = *hi = v[0];
    for (int j = 1; j < dim; j++) {
        *lo = v[j] < *lo ? v[j] : *lo;
        *hi = v[j] > *hi ? v[j] : *hi;
    }
}

/* int4: offset = min, step = (max - min) / 15; component j < h in the low
 * nibble of byte j, component h + j in its high nibble (h = ceil(dim/2)),
 * so a kernel multiplies each nibble plane with a contiguous query half. */
void ix_quant_encode_int4(int dim, const float *v, uint8_t *codes, float *qparams)
{
    float lo, hi;
    value_range(dim, v, &lo, &hi);
    float step = (hi - lo) / 15.0f;
    qparams[0] = lo;
    qparams[1] = step;
    int h = (dim + 1) / 2;
    memset(codes, 0, (size_t)h);
    if (!(step > 0))
        return;
    float inv = 1.0f / step;
    for (int j = 0; j < dim; j++) {
        float c = round_even((v[j] - lo) * inv);
        uint8_t n = (uint8_t)(c < 0 ? 0 : c > 15 ? 15 : c);
        codes[j % h] |= (uint8_t)(j < h ? n : n << 4);
    }
}

void ix_quant_encode_int8(int dim, const float *v, uint8_t *codes, float *qparams)
{
    float lo, hi;
    value_range(dim, v, &lo, &hi);
    float step = (hi - lo) / 255.0f;
    qparams[0] = lo;
    qparams[1] = step;
    if (!(step > 0)) {
        memset(codes, 0, (size_t)dim);
        return;
    }
    float inv = 1.0f / step;
    for (int j = 0; j < dim; j++) {
        float c = round_even((v[j] - lo) * inv);
        codes[j] = (uint8_t)(c < 0 ? 0 : c > 255 ? 255 : c);
    }
}

void ix_quant_query(const float *q, int dim, ix_qquery *out)
{
    float amax = 0, sum = 0;
    for (int j = 0; j < dim; j++) {
        amax = fabsf(q[j]) > amax ? fabsf(q[j]) : amax;
        sum += q[j];
    }
    out->scale = amax > 0 ? amax / 127.0f : 1.0f;
    out->sum = sum;
    float inv = 1.0f / out->scale;
    for (int j = 0; j < dim; j++)
        out->qq[j] = (int8_t)round_even(q[j] * inv);
    if (dim & 1)
        out->qq[dim] = 0; /* the int4 kernel's pad */
}

void ix_quant_query_codes(const uint8_t *codes, const float *qparams, int dim, ix_qquery *out)
{
    float lo = qparams[0], step = qparams[1], hi = lo + 255.0f * step;
    float amax = fabsf(lo) > fabsf(hi) ? fabsf(lo) : fabsf(hi);
    out->scale = amax > 0 ? amax / 127.0f : 1.0f;
    float inv = 1.0f / out->scale;
    /* (lo + step * c) / scale, as one multiply-add per component */
    int32_t csum = ix_kern()->requant(codes, dim, lo * inv, step * inv, out->qq);
    out->sum = (float)dim * lo + step * (float)csum;
}
