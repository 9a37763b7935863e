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
#include <float.h>
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

/* The smallest and largest component of v. The encoders below take the
 * range in double: a finite vector's max - min can overflow a float, and a
 * range of a few denormals has a reciprocal that does, either of which
 * would turn a code into NaN and its conversion to an integer into
 * undefined behaviour. */
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
    double range = (double)hi - lo;
    qparams[0] = lo;
    qparams[1] = (float)(range / 15.0);
    int h = (dim + 1) / 2;
    memset(codes, 0, (size_t)h);
    if (!(range > 0))
        return;
    double inv = 15.0 / range;
    for (int j = 0; j < dim; j++) {
        float c = round_even((float)(((double)v[j] - lo) * inv));
        uint8_t n = (uint8_t)(c < 0 ? 0 : c > 15 ? 15 : c);
        codes[j % h] |= (uint8_t)(j < h ? n : n << 4);
    }
}

void ix_quant_encode_int8(int dim, const float *v, uint8_t *codes, float *qparams)
{
    float lo, hi;
    value_range(dim, v, &lo, &hi);
    double range = (double)hi - lo;
    qparams[0] = lo;
    qparams[1] = (float)(range / 255.0);
    if (!(range > 0)) {
        memset(codes, 0, (size_t)dim);
        return;
    }
    double inv = 255.0 / range;
    for (int j = 0; j < dim; j++) {
        float c = round_even((float)(((double)v[j] - lo) * inv));
        codes[j] = (uint8_t)(c < 0 ? 0 : c > 255 ? 255 : c);
    }
}

/* Below this largest magnitude a vector quantises to zeros: near zero,
 * 127 / amax overflows. Its int8 scores are then all equal and the exact
 * re-rank orders. A unit vector's largest component is at least
 * 1 / sqrt(dim), far above. */
#define QUANT_TINY 1e-30f

static void quantise_to_zeros(ix_qquery *out, int dim, float sum)
{
    out->scale = 1.0f;
    out->sum = sum;
    memset(out->qq, 0, (size_t)dim + (dim & 1)); /* with the int4 kernel's pad */
}

void ix_quant_query(const float *q, int dim, ix_qquery *out)
{
    float amax = 0, sum = 0;
    for (int j = 0; j < dim; j++) {
        amax = fabsf(q[j]) > amax ? fabsf(q[j]) : amax;
        sum += q[j];
    }
    if (!(amax >= QUANT_TINY)) {
        quantise_to_zeros(out, dim, sum);
        return;
    }
    out->sum = sum;
    out->scale = amax / 127.0f;
    float inv = 127.0f / amax;
    for (int j = 0; j < dim; j++) {
        float c = round_even(q[j] * inv);
        out->qq[j] = (int8_t)(c < -127 ? -127 : c > 127 ? 127 : c);
    }
    if (dim & 1)
        out->qq[dim] = 0; /* the int4 kernel's pad */
}

void ix_quant_query_codes(const uint8_t *codes, const float *qparams, int dim, ix_qquery *out)
{
    float lo = qparams[0], step = qparams[1], hi = lo + 255.0f * step;
    float amax = fabsf(lo) > fabsf(hi) ? fabsf(lo) : fabsf(hi);
    if (!(amax >= QUANT_TINY) || !(amax <= FLT_MAX)) {
        quantise_to_zeros(out, dim, 0);
        return;
    }
    out->scale = amax / 127.0f;
    float inv = 127.0f / amax;
    /* (lo + step * c) / scale, as one multiply-add per component */
    int32_t csum = ix_kern()->requant(codes, dim, lo * inv, step * inv, out->qq);
    out->sum = (float)dim * lo + step * (float)csum;
}
