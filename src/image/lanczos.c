/*
 * lanczos.c - the model input's Lanczos3 reduction of an 8-bit gray image
 * (see internal.h), computed here instead of by libvips.
 *
 * Why our own: building a libvips resize compiles its vector code afresh
 * for every image (about 0.6 ms) and the whole resize of a 1024x1024
 * X-ray to 224x224 cost about 1.9 ms, a quarter of ingest's CPU outside
 * the model. Why exactly libvips' arithmetic: every vector already stored
 * was made from libvips' pixels, and an image searched again must give the
 * same vector (score 1.0). So this reproduces, bit for bit, what libvips
 * 8.14's vips_resize(kernel lanczos3, gap 0) gives for a reduction, and
 * the tests hold it to that against libvips itself; it also frees the
 * product's vectors from whatever a later libvips changes.
 *
 * The arithmetic, one axis at a time, vertical first (as vips_resize):
 *
 *   shrink  the factor in / out (vips_resize passes 1 / (out / in)); the
 *           output length is round(in / shrink);
 *   mask    n = 2 * rint(3 * shrink) + 1 taps of the Lanczos3 kernel
 *           stretched by shrink, normalised to sum 1, tabulated at 65
 *           sub-pixel phases t / 64;
 *   origin  output o starts at P = (o + 0.5) * shrink - 0.5 - offset in
 *           the input padded by ceil(n / 2) - 1 copies of the edge pixel,
 *           offset = (1 + round-off) / 2 - 1 where round-off = out *
 *           shrink - in; the taps are rows/columns (int)P .. (int)P + n - 1
 *           and the phase is ((int)(P * 128) & 127) + 1 >> 1;
 *   vertical   (libvips' vector path) weights in 2.6 fixed point summing
 *           to exactly 64 (vips_vector_to_fixed_point's search, below),
 *           sum = 32 + sum of weight * pixel in 16 bits, result
 *           clamp(sum >> 6, 0, 255);
 *   horizontal (libvips' C path) weights truncated to 12-bit fixed point,
 *           result clamp((sum + 2048) >> 12, 0, 255).
 *
 * Reductions by more than 8 on an axis go in steps of at most 8 (as the
 * libvips path in image.c does, where the vector path stops); enlarging an
 * axis is not done here (MS_EUNSUPPORTED: the caller uses libvips).
 *
 * The inner loops (lanczos_rows.h) use GCC/Clang vector extensions, built
 * twice: 16-byte registers (SSE2 on x86-64, plain C where there is no
 * SIMD) and, on x86-64, 32-byte AVX2 ones chosen when the CPU has them.
 * The vertical pass sums 16-bit lanes; the horizontal pass reads each
 * output's taps from a padded float copy of the row.
 */
#include "image/internal.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"

#define PHASES 64          /* sub-pixel phases of the mask tables (libvips' VIPS_TRANSFORM_SCALE) */
#define MAX_STEP 8.0       /* largest reduction done in one pass */
#define V_FRAC_BITS 6      /* vertical weights: 2.6 fixed point */
#define H_FRAC_BITS 12     /* horizontal weights: 12 fractional bits */

/* One axis' reduction: its sizes, placement and weight tables. */
typedef struct axis_plan {
    int n_in, n_out;
    double shrink, offset;
    int taps, pad;
    int *weight; /* (PHASES + 1) x taps */
} axis_plan;

/* Lanczos3 weights of the taps around phase x (0 <= x <= 1), summing to 1. */
static void lanczos3_mask(double *c, int taps, double shrink, double x)
{
    const double a = 3.0, half = x + taps / 2.0 - 1;
    double sum = 0;
    for (int i = 0; i < taps; i++) {
        double xp = (i - half) / shrink, l;
        if (xp == 0.0)
            l = 1.0;
        else if (xp < -a || xp > a)
            l = 0.0;
        else
            l = a * sin(M_PI * xp) * sin(M_PI * xp / a) / (M_PI * M_PI * xp * xp);
        c[i] = l;
        sum += l;
    }
    for (int i = 0; i < taps; i++)
        c[i] /= sum;
}

/* Integer weights for `scale` whose sum is exactly rint(sum(in) * scale):
 * rounding each weight can leave the sum off by up to taps / 2, so the
 * multiplier is searched by bisection, and what error remains is spread one
 * unit at a time over the first weights. */
static void fixed_point_exact_sum(const double *in, int *out, int n, int scale)
{
    double fsum = 0;
    for (int i = 0; i < n; i++)
        fsum += in[i];
    int target = (int)rint(fsum * scale), sum = 0;
    double high = scale + (n + 1) / 2, low = scale - (n + 1) / 2;
    do {
        double guess = (high + low) / 2.0;
        sum = 0;
        for (int i = 0; i < n; i++)
            sum += out[i] = (int)rint(in[i] * guess);
        if (sum == target)
            break;
        if (sum < target)
            low = guess;
        else
            high = guess;
    } while (high - low > 0.01);
    if (sum != target) {
        int each = (target - sum) / n, extra = (target - sum) % n;
        for (int i = 0; i < n; i++)
            out[i] += each + (i < abs(extra) ? (extra > 0 ? 1 : -1) : 0);
    }
}

static void plan_free(axis_plan *a)
{
    free(a->weight);
    a->weight = NULL;
}

/* Plans reducing n_in by `shrink` (> 1). vertical picks the 2.6 weights.
 * Returns 0, MS_EUNSUPPORTED (the 16-bit sum could overflow) or MS_ENOMEM. */
static int plan_axis(axis_plan *a, int n_in, double shrink, int vertical)
{
    memset(a, 0, sizeof *a);
    a->n_in = n_in;
    a->shrink = shrink;
    a->n_out = (int)((double)n_in / shrink + 0.5);
    a->offset = (1 + (a->n_out * shrink - n_in)) / 2.0 - 1;
    a->taps = 2 * (int)rint(3 * shrink) + 1;
    a->pad = (int)ceil(a->taps / 2.0) - 1;
    double *mask = malloc(sizeof *mask * (size_t)a->taps);
    a->weight = malloc(sizeof *a->weight * (size_t)a->taps * (PHASES + 1));
    if (!mask || !a->weight) {
        free(mask);
        plan_free(a);
        return MS_ENOMEM;
    }
    int rc = 0;
    for (int t = 0; t <= PHASES && !rc; t++) {
        int *w = a->weight + (size_t)t * (size_t)a->taps;
        lanczos3_mask(mask, a->taps, shrink, (float)t / PHASES);
        if (vertical) {
            fixed_point_exact_sum(mask, w, a->taps, 1 << V_FRAC_BITS);
            /* libvips sums in saturating 16 bits; we in plain 16-bit lanes,
             * the same only while no partial sum can leave int16. */
            int pos = 0, neg = 0;
            for (int i = 0; i < a->taps; i++) {
                if (w[i] > 0)
                    pos += w[i];
                else
                    neg -= w[i];
            }
            if (32 + 255 * pos > INT16_MAX || 255 * neg > -(INT16_MIN + 32))
                rc = MS_EUNSUPPORTED;
        } else {
            /* float sums in reduce_horizontal are exact below 2^24 */
            int mass = 0;
            for (int i = 0; i < a->taps; i++) {
                w[i] = (int)(mask[i] * (1 << H_FRAC_BITS));
                mass += abs(w[i]);
            }
            if (255 * mass >= 1 << 24)
                rc = MS_EUNSUPPORTED;
        }
    }
    free(mask);
    if (rc)
        plan_free(a);
    return rc;
}

/* Where output o's taps start in the padded input, and their phase. */
static inline int tap_start(double p, int *phase)
{
    int sub = (int)(p * PHASES * 2);
    *phase = ((sub & (PHASES * 2 - 1)) + 1) >> 1;
    return (int)p;
}

static inline int clamp_index(int i, int n)
{
    return i < 0 ? 0 : i >= n ? n - 1 : i;
}

static _Atomic int avx2_allowed = 1;

void lanczos3_allow_avx2(int allow)
{
    avx2_allowed = allow;
}

#define ROW_SUFFIX base
#define ROW_TARGET
#define ROW_BYTES 16
#include "image/lanczos_rows.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ROW_SUFFIX avx2
#define ROW_TARGET __attribute__((target("avx2")))
#define ROW_BYTES 32
#include "image/lanczos_rows.h"
static int have_avx2(void)
{
    return avx2_allowed && __builtin_cpu_supports("avx2");
}
#else
#define vertical_row_avx2 vertical_row_base
#define horizontal_row_avx2 horizontal_row_base
static int have_avx2(void)
{
    (void)avx2_allowed;
    return 0;
}
#endif

/* Vertical pass: in (width x a->n_in) to out (width x a->n_out). */
static int reduce_vertical(const axis_plan *a, const uint8_t *in, int width, uint8_t *out)
{
    const uint8_t **rows = malloc(sizeof *rows * (size_t)a->taps);
    if (!rows)
        return MS_ENOMEM;
    void (*row)(const uint8_t *const *, const int *, int, int, uint8_t *) =
        have_avx2() ? vertical_row_avx2 : vertical_row_base;
    for (int o = 0; o < a->n_out; o++) {
        int phase, first = tap_start((o + 0.5) * a->shrink - 0.5 - a->offset, &phase) - a->pad;
        for (int i = 0; i < a->taps; i++)
            rows[i] = in + (size_t)clamp_index(first + i, a->n_in) * (size_t)width;
        row(rows, a->weight + (size_t)phase * (size_t)a->taps, a->taps, width, out + (size_t)o * (size_t)width);
    }
    free(rows);
    return 0;
}

/* Horizontal pass: in (a->n_in x height) to out (a->n_out x height).
 * The sums are done in float: every weight is an integer below 2^13 and
 * every partial sum below 2^24 (plan_axis checks), so each step is exact
 * and the result is the integer sum libvips computes; float vectorises
 * where SSE2 has no 32-bit integer multiply. */
static int reduce_horizontal(const axis_plan *a, const uint8_t *in, int height, uint8_t *out)
{
    int taps_padded = (a->taps + 7) & ~7; /* whole registers of up to 8 floats; zero weights beyond */
    /* each row padded by copies of its edge pixels, so taps never clamp */
    size_t padded_len = (size_t)a->n_in + 2 * (size_t)taps_padded;
    float *padded = malloc(sizeof *padded * padded_len);
    float *weight = malloc(sizeof *weight * (size_t)taps_padded * (PHASES + 1));
    int *start = malloc(sizeof *start * (size_t)a->n_out), *phase = malloc(sizeof *phase * (size_t)a->n_out);
    int rc = padded && weight && start && phase ? 0 : MS_ENOMEM;
    for (int t = 0; !rc && t <= PHASES; t++)
        for (int i = 0; i < taps_padded; i++)
            weight[t * taps_padded + i] = i < a->taps ? (float)a->weight[t * a->taps + i] : 0.0f;
    /* libvips steps the position by adding shrink along a row */
    double p = 0.5 * a->shrink - 0.5 - a->offset;
    for (int o = 0; !rc && o < a->n_out; o++, p += a->shrink)
        start[o] = tap_start(p, &phase[o]) - a->pad + taps_padded; /* index into padded */
    void (*row)(const float *, const float *, int, const int *, const int *, int, uint8_t *) =
        have_avx2() ? horizontal_row_avx2 : horizontal_row_base;
    for (int y = 0; !rc && y < height; y++) {
        const uint8_t *src = in + (size_t)y * (size_t)a->n_in;
        for (int i = 0; i < taps_padded; i++) {
            padded[i] = src[0];
            padded[taps_padded + a->n_in + i] = src[a->n_in - 1];
        }
        for (int i = 0; i < a->n_in; i++)
            padded[taps_padded + i] = src[i];
        row(padded, weight, taps_padded, start, phase, a->n_out, out + (size_t)y * (size_t)a->n_out);
    }
    free(padded);
    free(weight);
    free(start);
    free(phase);
    return rc;
}

/* The image between passes: owned pixels, or the caller's input. */
typedef struct gray {
    const uint8_t *px;
    uint8_t *owned;
    int w, h;
} gray;

static void gray_replace(gray *g, uint8_t *px, int w, int h)
{
    free(g->owned);
    g->px = g->owned = px;
    g->w = w;
    g->h = h;
}

/* Plans depend only on the input length, the factor and the axis, so the
 * images of a collection (mostly of one size) share a handful, and each
 * costs about 4,000 sin() calls to build. The first PLAN_CACHE built are
 * kept for the life of the process, read-only, shared by every thread. */
#define PLAN_CACHE 8

static struct cached_plan {
    axis_plan plan;
    int vertical;
} plan_cache[PLAN_CACHE];
static int plan_cache_n;
static pthread_mutex_t plan_cache_lock = PTHREAD_MUTEX_INITIALIZER;

/* *plan is a cached plan, or own (built here; the caller plan_free()s it,
 * which does nothing when it went into the cache). */
static int plan_get(const axis_plan **plan, axis_plan *own, int n_in, double shrink, int vertical)
{
    memset(own, 0, sizeof *own);
    pthread_mutex_lock(&plan_cache_lock);
    for (int i = 0; i < plan_cache_n; i++) {
        const struct cached_plan *c = &plan_cache[i];
        if (c->plan.n_in == n_in && c->plan.shrink == shrink && c->vertical == vertical) {
            *plan = &c->plan;
            pthread_mutex_unlock(&plan_cache_lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&plan_cache_lock);
    int rc = plan_axis(own, n_in, shrink, vertical);
    if (rc)
        return rc;
    *plan = own;
    pthread_mutex_lock(&plan_cache_lock);
    if (plan_cache_n < PLAN_CACHE) {
        plan_cache[plan_cache_n] = (struct cached_plan){.plan = *own, .vertical = vertical};
        *plan = &plan_cache[plan_cache_n++].plan;
        own->weight = NULL; /* the cache owns it now */
    }
    pthread_mutex_unlock(&plan_cache_lock);
    return 0;
}

/* Reduces one axis of g by shrink (> 1). */
static int reduce_axis(gray *g, double shrink, int vertical)
{
    const axis_plan *a;
    axis_plan own;
    int rc = plan_get(&a, &own, vertical ? g->h : g->w, shrink, vertical);
    if (rc)
        return rc;
    int w = vertical ? g->w : a->n_out, h = vertical ? a->n_out : g->h;
    uint8_t *out = a->n_out > 0 ? malloc((size_t)w * (size_t)h) : NULL;
    if (!out)
        rc = a->n_out > 0 ? MS_ENOMEM : MS_EUNSUPPORTED; /* shrunk to nothing: libvips says so */
    else if (vertical)
        rc = reduce_vertical(a, g->px, g->w, out);
    else
        rc = reduce_horizontal(a, g->px, g->h, out);
    if (rc)
        free(out);
    else
        gray_replace(g, out, w, h);
    plan_free(&own);
    return rc;
}

/* One reducev (shrink_v) then reduceh (shrink_h); a factor of 1 skips its
 * axis. */
static int reduce_step(gray *g, double shrink_h, double shrink_v)
{
    int rc = shrink_v != 1.0 ? reduce_axis(g, shrink_v, 1) : 0;
    if (!rc && shrink_h != 1.0)
        rc = reduce_axis(g, shrink_h, 0);
    return rc;
}

int lanczos3_reduce_gray8(const uint8_t *in, int in_w, int in_h, uint8_t *out, int out_w, int out_h)
{
    if (in_w < 1 || in_h < 1 || out_w < 1 || out_h < 1)
        return MS_EINVAL;
    if (out_w > in_w || out_h > in_h)
        return MS_EUNSUPPORTED;
    gray g = {.px = in, .w = in_w, .h = in_h};
    int rc = 0;
    while (!rc && (g.w > MAX_STEP * out_w || g.h > MAX_STEP * out_h)) {
        double fx = fmin(MAX_STEP, fmax(1.0, (double)g.w / out_w));
        double fy = fmin(MAX_STEP, fmax(1.0, (double)g.h / out_h));
        rc = reduce_step(&g, fx, fy);
    }
    if (!rc) {
        /* as vips_resize: the factor is 1 / scale, each axis at least 1 px */
        double hscale = fmax((double)out_w / g.w, 1.0 / g.w), vscale = fmax((double)out_h / g.h, 1.0 / g.h);
        if (hscale > 1.0 || vscale > 1.0)
            rc = MS_EUNSUPPORTED;
        else
            rc = reduce_step(&g, hscale < 1.0 ? 1.0 / hscale : 1.0, vscale < 1.0 ? 1.0 / vscale : 1.0);
    }
    if (!rc && (g.w != out_w || g.h != out_h))
        rc = MS_EUNSUPPORTED;
    if (!rc)
        memcpy(out, g.px, (size_t)out_w * (size_t)out_h);
    free(g.owned);
    return rc;
}
