/*
 * test_image_lanczos.c - the model input's Lanczos3 reduction
 * (src/image/lanczos.c) must give exactly libvips' pixels: every vector
 * already stored was made from them. Compared byte for byte with libvips
 * itself (the same calls image.c made before: vips_reduce in steps of at
 * most 8, then vips_resize with gap 0) on a grid of sizes and contents
 * that reach the clamping, the multi-step path and the odd rounding of
 * sizes; and with a plain scalar reference written from the arithmetic
 * the module's comment states, on random sizes. Both builds of the inner
 * loops (portable and AVX2) are held to it.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <vips/vips.h>
#include <vips/vector.h>

#include "image/image.h"
#include "image/internal.h"
#include "image_test_util.h"

/* ---- test images ---- */

enum pattern { NOISE, CHECKER, STRIPES, GRADIENT, EDGE, FLAT_WHITE, N_PATTERNS };

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static uint8_t *make_image(int w, int h, enum pattern p)
{
    uint8_t *px = malloc((size_t)w * (size_t)h);
    assert_non_null(px);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t v = 0;
            switch (p) {
            case NOISE: v = (uint8_t)rng(); break;
            case CHECKER: v = ((x ^ y) & 1) ? 255 : 0; break;    /* the most ringing: sums leave 0..255 */
            case STRIPES: v = ((x / 3 + y / 5) & 1) ? 255 : 0; break;
            case GRADIENT: v = (uint8_t)((x * 255 / (w > 1 ? w - 1 : 1) + y * 7) & 255); break;
            case EDGE: v = x < w / 2 ? 0 : 255; break;            /* one hard step: overshoot either side */
            case FLAT_WHITE: v = 255; break;
            default: break;
            }
            px[(size_t)y * w + x] = v;
        }
    return px;
}

static void assert_same_pixels(const uint8_t *got, const uint8_t *want, int w, int h, int ow, int oh, enum pattern p,
                               const char *whose)
{
    for (size_t i = 0; i < (size_t)ow * oh; i++)
        if (got[i] != want[i])
            fail_msg("%dx%d -> %dx%d, pattern %d: pixel (%zu, %zu) is %d, %s %d", w, h, ow, oh, (int)p,
                     i % (size_t)ow, i / (size_t)ow, got[i], whose, want[i]);
}

/* A reduction to compare with: the result of in (w x h) at ow x oh, malloc'd. */
typedef uint8_t *(*reducer)(const uint8_t *in, int w, int h, int ow, int oh);

static void compare_with(reducer reference, const char *whose, int w, int h, int ow, int oh, enum pattern p)
{
    uint8_t *in = make_image(w, h, p);
    uint8_t *want = reference(in, w, h, ow, oh);
    uint8_t *got = malloc((size_t)ow * oh);
    assert_non_null(got);
    assert_int_equal(lanczos3_reduce_gray8(in, w, h, got, ow, oh), 0);
    assert_same_pixels(got, want, w, h, ow, oh, p, whose);
    free(in);
    free(want);
    free(got);
}

/* ---- libvips, as image.c calls it ---- */

/* The result of libvips' reduction of in (w x h) to ow x oh (malloc'd). */
static uint8_t *libvips_reduce(const uint8_t *in, int w, int h, int ow, int oh)
{
    VipsImage *cur = vips_image_new_from_memory(in, (size_t)w * h, w, h, 1, VIPS_FORMAT_UCHAR);
    assert_non_null(cur);
    while (cur->Xsize > 8.0 * ow || cur->Ysize > 8.0 * oh) {
        double fx = fmin(8.0, fmax(1.0, (double)cur->Xsize / ow));
        double fy = fmin(8.0, fmax(1.0, (double)cur->Ysize / oh));
        VipsImage *next = NULL;
        assert_int_equal(vips_reduce(cur, &next, fx, fy, "kernel", VIPS_KERNEL_LANCZOS3, NULL), 0);
        g_object_unref(cur);
        cur = next;
    }
    VipsImage *resized = NULL;
    assert_int_equal(vips_resize(cur, &resized, (double)ow / cur->Xsize, "vscale", (double)oh / cur->Ysize, "kernel",
                                 VIPS_KERNEL_LANCZOS3, "gap", 0.0, NULL),
                     0);
    g_object_unref(cur);
    size_t len = 0;
    void *pixels = vips_image_write_to_memory(resized, &len);
    assert_non_null(pixels);
    assert_int_equal(resized->Xsize, ow);
    assert_int_equal(resized->Ysize, oh);
    assert_int_equal(len, (size_t)ow * oh);
    g_object_unref(resized);
    uint8_t *out = malloc(len);
    assert_non_null(out);
    memcpy(out, pixels, len);
    g_free(pixels);
    return out;
}

/* The contract is with the libvips 8.14 vector path (Orc) the stored
 * vectors came from; another version or a libvips without it may round
 * differently, and then only the scalar reference below applies. */
static int libvips_is_the_reference(void)
{
    return vips_version(0) == 8 && vips_version(1) == 14 && vips_vector_isenabled();
}

static void test_same_pixels_as_libvips(void **state)
{
    (void)state;
    if (!libvips_is_the_reference()) {
        printf("SKIP: libvips %s%s: the bit-for-bit contract is with libvips 8.14's vector path\n",
               vips_version_string(), vips_vector_isenabled() ? "" : " without its vector path");
        skip();
    }
    /* in -> out: the X-ray's usual 1024 -> 224 (factor 32/7, an exact
     * sample on a pixel centre every 7 rows), barely reduced, integer
     * factors, the largest single step (8), two and three steps, one axis
     * kept, very thin outputs, non-square and odd sizes. */
    static const int sizes[][4] = {
        {1024, 1024, 224, 224}, {225, 224, 224, 224}, {448, 448, 224, 224}, {672, 896, 224, 224},
        {1792, 1792, 224, 224}, {1800, 1000, 224, 224}, {2500, 2048, 224, 224}, {3000, 300, 7, 37},
        {224, 1024, 224, 224}, {1024, 224, 224, 224}, {301, 257, 1, 1}, {97, 61, 13, 60},
        {640, 480, 299, 299}, {1023, 1025, 320, 288}, {500, 40, 33, 3}, {4099, 17, 64, 2},
    };
    for (int simd = 0; simd < 2; simd++) { /* the portable inner loops, then AVX2 where the CPU has it */
        lanczos3_allow_avx2(simd);
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
            for (int p = 0; p < N_PATTERNS; p++)
                compare_with(libvips_reduce, "libvips", sizes[s][0], sizes[s][1], sizes[s][2], sizes[s][3],
                             (enum pattern)p);
    }
}

/* ---- the arithmetic written out, one pixel at a time ---- */

static double lanczos3(double x)
{
    if (x == 0.0)
        return 1.0;
    if (x < -3.0 || x > 3.0)
        return 0.0;
    return 3.0 * sin(M_PI * x) * sin(M_PI * x / 3.0) / (M_PI * M_PI * x * x);
}

/* Weights of one phase: the module's mask and its fixed-point forms. */
static void reference_weights(int taps, double shrink, int phase, int vertical, int *w)
{
    double c[64], sum = 0;
    assert_true(taps <= 64);
    double half = (float)phase / 64 + taps / 2.0 - 1;
    for (int i = 0; i < taps; i++)
        sum += c[i] = lanczos3((i - half) / shrink);
    for (int i = 0; i < taps; i++)
        c[i] /= sum;
    if (!vertical) {
        for (int i = 0; i < taps; i++)
            w[i] = (int)(c[i] * 4096);
        return;
    }
    /* the multiplier whose rounded weights sum to rint(64 * sum), by bisection */
    double fsum = 0;
    for (int i = 0; i < taps; i++)
        fsum += c[i];
    int target = (int)rint(fsum * 64), got = 0;
    double hi = 64 + (taps + 1) / 2, lo = 64 - (taps + 1) / 2;
    do {
        double guess = (hi + lo) / 2;
        got = 0;
        for (int i = 0; i < taps; i++)
            got += w[i] = (int)rint(c[i] * guess);
        if (got == target)
            break;
        if (got < target)
            lo = guess;
        else
            hi = guess;
    } while (hi - lo > 0.01);
    int error = target - got;
    for (int i = 0; i < taps; i++)
        w[i] += error / taps + (i < abs(error % taps) ? (error > 0 ? 1 : -1) : 0);
}

static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

static long clamped; /* results the reference had to clamp to 0 or 255 */

static int finish(int sum, int bits)
{
    int v = bits == 6 ? (sum < 0 ? -1 : sum >> 6) : (int)floor((sum + 2048) / 4096.0);
    clamped += v < 0 || v > 255;
    return clampi(v, 0, 255);
}

/* One axis: n_in samples at stride `step` to n_out of them (shrink > 1). */
static void reference_axis(const uint8_t *in, int n_in, double shrink, int vertical, int n_lines, int in_line,
                           int in_step, uint8_t *out, int out_line, int out_step, int *n_out)
{
    int n = (int)((double)n_in / shrink + 0.5);
    double offset = (1 + (n * shrink - n_in)) / 2.0 - 1;
    int taps = 2 * (int)rint(3 * shrink) + 1, pad = (int)ceil(taps / 2.0) - 1;
    int w[64];
    double p = 0.5 * shrink - 0.5 - offset;
    for (int o = 0; o < n; o++) {
        if (vertical)
            p = (o + 0.5) * shrink - 0.5 - offset; /* per row; the horizontal pass steps */
        int phase = (((int)(p * 128) & 127) + 1) >> 1, first = (int)p - pad;
        reference_weights(taps, shrink, phase, vertical, w);
        for (int l = 0; l < n_lines; l++) {
            int sum = vertical ? 32 : 0;
            for (int i = 0; i < taps; i++)
                sum += w[i] * in[(size_t)l * in_line + (size_t)clampi(first + i, 0, n_in - 1) * in_step];
            out[(size_t)l * out_line + (size_t)o * out_step] = (uint8_t)finish(sum, vertical ? 6 : 12);
        }
        if (!vertical)
            p += shrink;
    }
    *n_out = n;
}

/* The whole reduction, as the module's comment describes it. */
static uint8_t *reference_reduce(const uint8_t *in, int w, int h, int ow, int oh)
{
    uint8_t *cur = malloc((size_t)w * h);
    assert_non_null(cur);
    memcpy(cur, in, (size_t)w * h);
    for (int last = 0; !last;) {
        double fx, fy;
        if (w > 8.0 * ow || h > 8.0 * oh) {
            fx = fmin(8.0, fmax(1.0, (double)w / ow));
            fy = fmin(8.0, fmax(1.0, (double)h / oh));
        } else {
            fx = 1.0 / fmax((double)ow / w, 1.0 / w);
            fy = 1.0 / fmax((double)oh / h, 1.0 / h);
            last = 1;
        }
        if (fy != 1.0) {
            uint8_t *next = malloc((size_t)w * h);
            int nh;
            reference_axis(cur, h, fy, 1, w, 1, w, next, 1, w, &nh);
            free(cur);
            cur = next;
            h = nh;
        }
        if (fx != 1.0) {
            int nw = (int)((double)w / fx + 0.5);
            uint8_t *next = malloc((size_t)nw * h);
            reference_axis(cur, w, fx, 0, h, w, 1, next, nw, 1, &nw);
            free(cur);
            cur = next;
            w = nw;
        }
    }
    assert_int_equal(w, ow);
    assert_int_equal(h, oh);
    return cur;
}

static void test_same_pixels_as_the_written_arithmetic(void **state)
{
    (void)state;
    clamped = 0;
    for (int round = 0; round < 60; round++) {
        lanczos3_allow_avx2(round % 2);
        int w = 1 + (int)(rng() % 1500), h = 1 + (int)(rng() % 1500);
        int ow = 1 + (int)(rng() % (unsigned)w), oh = 1 + (int)(rng() % (unsigned)h);
        if (round % 3 == 0) { /* the usual case: a modest reduction */
            ow = w / 2 + 1;
            oh = h / 3 + 1;
        }
        compare_with(reference_reduce, "the reference", w, h, ow, oh, (enum pattern)(round % N_PATTERNS));
    }
    /* the patterns reached the clamping, so it is compared too */
    assert_true(clamped > 0);
}

static void test_declines_what_it_does_not_do(void **state)
{
    (void)state;
    uint8_t in[64] = {0}, out[256];
    assert_int_equal(lanczos3_reduce_gray8(in, 8, 8, out, 9, 8), MS_EUNSUPPORTED); /* enlarging */
    assert_int_equal(lanczos3_reduce_gray8(in, 8, 8, out, 8, 16), MS_EUNSUPPORTED);
    assert_int_equal(lanczos3_reduce_gray8(in, 8, 8, out, 0, 4), MS_EINVAL);
    assert_int_equal(lanczos3_reduce_gray8(in, 0, 8, out, 1, 1), MS_EINVAL);
    /* the same size is a copy */
    for (int i = 0; i < 64; i++)
        in[i] = (uint8_t)(i * 3);
    assert_int_equal(lanczos3_reduce_gray8(in, 8, 8, out, 8, 8), 0);
    assert_memory_equal(out, in, 64);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_pixels_as_libvips),
        cmocka_unit_test(test_same_pixels_as_the_written_arithmetic),
        cmocka_unit_test(test_declines_what_it_does_not_do),
    };
    RUN_IMAGE_TESTS(tests);
}
