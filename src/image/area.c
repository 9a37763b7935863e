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
 * Two separable passes: vertical into a float buffer of h x W, then
 * horizontal into the output, rounding to nearest. The weights of one axis
 * are computed once per call.
 */
#include "image/internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

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

int area_reduce_gray8(const uint8_t *in, int in_w, int in_h, uint8_t *out, int out_w, int out_h)
{
    if (out_w < 1 || out_h < 1 || out_w > in_w || out_h > in_h)
        return MS_EINVAL;
    float *xpool = NULL, *ypool = NULL;
    span *xs = make_spans(in_w, out_w, &xpool), *ys = make_spans(in_h, out_h, &ypool);
    float *rows = malloc(sizeof *rows * (size_t)out_h * (size_t)in_w);
    int rc = 0;
    if (!xs || !ys || !rows) {
        rc = MS_ENOMEM;
        goto done;
    }
    /* Vertical first: whole source rows at a time, so the inner loop runs
     * along memory and vectorises; the horizontal pass, whose spans do
     * not, then has out_h rows instead of in_h. */
    for (int y = 0; y < out_h; y++) {
        float *restrict acc = rows + (size_t)y * (size_t)in_w;
        for (int x = 0; x < in_w; x++)
            acc[x] = 0;
        for (int k = 0; k < ys[y].count; k++) {
            const uint8_t *restrict src = in + (size_t)(ys[y].first + k) * (size_t)in_w;
            float w = ys[y].weight[k];
            for (int x = 0; x < in_w; x++)
                acc[x] += w * src[x];
        }
    }
    for (int y = 0; y < out_h; y++) {
        const float *src = rows + (size_t)y * (size_t)in_w;
        uint8_t *dst = out + (size_t)y * (size_t)out_w;
        for (int x = 0; x < out_w; x++) {
            const float *p = src + xs[x].first;
            float sum = 0;
            for (int k = 0; k < xs[x].count; k++)
                sum += xs[x].weight[k] * p[k];
            long v = lrintf(sum);
            dst[x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
done:
    free(xs);
    free(ys);
    free(xpool);
    free(ypool);
    free(rows);
    return rc;
}
