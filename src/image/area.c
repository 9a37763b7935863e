/*
 * area.c - area-average reduction of an 8-bit gray image, for thumbnails
 * (see internal.h).
 *
 * Each output pixel is the mean of the source area it covers: output
 * column x covers source columns [x * W / w, (x + 1) * W / w), the pixels
 * cut by either edge counting for the fraction they lie inside; rows the
 * same. This is a box filter of exactly the reduction's width, which is
 * all a thumbnail needs (it only gets smaller, and nobody measures it). It
 * replaced libvips' Lanczos3 for thumbnails because building a libvips
 * resize (its vectorised kernels are compiled afresh per operation) and
 * evaluating it cost about 2 ms for a 1024x1024 image, more than the
 * decode; this costs about 0.3 ms.
 *
 * Two separable passes per output row: vertical into a float row as wide
 * as the source, then horizontal into the output, rounding to nearest.
 * The weights of each axis are computed once per call.
 */
#include "image/internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The source span of one output pixel along an axis: first index, count,
 * and the weight of each (they sum to 1). */
typedef struct span {
    int first, count;
    float *weight;
} span;

/* Spans of n_out output pixels over n_in source pixels (n_out <= n_in),
 * their weights in one allocation (*pool, freed by the caller). */
static span *make_spans(int n_in, int n_out, float **pool)
{
    double step = (double)n_in / n_out;
    /* a span touches at most ceil(step) + 1 source pixels */
    int most = (int)ceil(step) + 1;
    span *s = malloc(sizeof *s * (size_t)n_out);
    *pool = malloc(sizeof **pool * (size_t)n_out * (size_t)most);
    if (!s || !*pool) {
        free(s);
        free(*pool);
        *pool = NULL;
        return NULL;
    }
    for (int o = 0; o < n_out; o++) {
        double lo = o * step, hi = (o + 1) * step;
        int first = (int)floor(lo), last = (int)ceil(hi) - 1;
        if (last > n_in - 1)
            last = n_in - 1;
        s[o].first = first;
        s[o].count = last - first + 1;
        s[o].weight = *pool + (size_t)o * (size_t)most;
        for (int i = first; i <= last; i++) {
            double cover = fmin(hi, i + 1.0) - fmax(lo, (double)i);
            s[o].weight[i - first] = (float)(cover / step);
        }
    }
    return s;
}

typedef uint8_t bytes8 __attribute__((vector_size(8)));
typedef int16_t shorts8 __attribute__((vector_size(16)));
typedef int16_t shorts4 __attribute__((vector_size(8)));
typedef int32_t ints4 __attribute__((vector_size(16)));
typedef float floats4 __attribute__((vector_size(16)));

/* Eight bytes to two vectors of four floats, through 16- and 32-bit
 * integers: SSE2 widens and converts integers a register at a time, but
 * has no direct byte-to-float. */
static inline void bytes_to_floats(const uint8_t *p, floats4 *lo, floats4 *hi)
{
    bytes8 b;
    memcpy(&b, p, sizeof b);
    shorts8 s = __builtin_convertvector(b, shorts8);
    shorts4 s_lo, s_hi;
    memcpy(&s_lo, &s, sizeof s_lo);
    memcpy(&s_hi, (const char *)&s + sizeof s_lo, sizeof s_hi);
    *lo = __builtin_convertvector(__builtin_convertvector(s_lo, ints4), floats4);
    *hi = __builtin_convertvector(__builtin_convertvector(s_hi, ints4), floats4);
}

/* lrintf() (nearest, ties to even) without the libm call: adding and
 * removing 1.5 * 2^23 leaves the float rounded to an integer, exact for
 * |v| < 2^22, which covers every mean of bytes. */
static inline int round_to_int(float v)
{
    const float magic = 12582912.0f;
    float rounded = v + magic; /* the assignment drops any excess precision */
    return (int)(rounded - magic);
}

/* acc[x] = sum over the span's rows k of weight[k] * in[first + k][x]. */
static void vertical_span(const uint8_t *in, int in_w, const span *sp, float *acc)
{
    int x = 0;
    for (; x + 8 <= in_w; x += 8) {
        floats4 lo = {0}, hi = {0};
        for (int k = 0; k < sp->count; k++) {
            floats4 a, b;
            bytes_to_floats(in + (size_t)(sp->first + k) * (size_t)in_w + x, &a, &b);
            lo += sp->weight[k] * a;
            hi += sp->weight[k] * b;
        }
        memcpy(acc + x, &lo, sizeof lo);
        memcpy(acc + x + 4, &hi, sizeof hi);
    }
    for (; x < in_w; x++) {
        float sum = 0;
        for (int k = 0; k < sp->count; k++)
            sum += sp->weight[k] * in[(size_t)(sp->first + k) * (size_t)in_w + x];
        acc[x] = sum;
    }
}

int area_reduce_gray8(const uint8_t *in, int in_w, int in_h, uint8_t *out, int out_w, int out_h)
{
    if (out_w < 1 || out_h < 1 || out_w > in_w || out_h > in_h)
        return MS_EINVAL;
    float *xpool = NULL, *ypool = NULL;
    span *xs = make_spans(in_w, out_w, &xpool), *ys = make_spans(in_h, out_h, &ypool);
    float *row = malloc(sizeof *row * (size_t)in_w);
    int rc = 0;
    if (!xs || !ys || !row) {
        rc = MS_ENOMEM;
        goto done;
    }
    /* One output row at a time: its vertical sums (8 columns at a time,
     * the same operations in the same order as one column at a time) into
     * one source-wide row of floats that stays in cache, then the
     * horizontal spans over it, which do not vectorise. */
    for (int y = 0; y < out_h; y++) {
        vertical_span(in, in_w, &ys[y], row);
        uint8_t *dst = out + (size_t)y * (size_t)out_w;
        for (int x = 0; x < out_w; x++) {
            const float *p = row + xs[x].first;
            float sum = 0;
            for (int k = 0; k < xs[x].count; k++)
                sum += xs[x].weight[k] * p[k];
            int v = round_to_int(sum);
            dst[x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
done:
    free(xs);
    free(ys);
    free(xpool);
    free(ypool);
    free(row);
    return rc;
}
