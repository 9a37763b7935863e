/*
 * test_image_fingerprint.c - the 32 x 32 fingerprints `medsearch
 * duplicates` compares (image.h): the rank correlation against a plain
 * reference written here (ranks sorted by hand, ties at their mean), its
 * blindness to increasing changes of the gray levels, flat fingerprints,
 * and fingerprints of one picture stored two ways against another picture.
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

#include "image/image.h"
#include "image_test_util.h"

enum { N = IMAGE_FINGERPRINT_SIZE };

/* Spearman's correlation the slow way: each value's rank by counting the
 * smaller and equal values, then Pearson's formula in doubles. */
static double reference_spearman(const uint8_t *a, const uint8_t *b)
{
    static double ra[N], rb[N];
    for (int i = 0; i < N; i++) {
        int less_a = 0, eq_a = 0, less_b = 0, eq_b = 0;
        for (int j = 0; j < N; j++) {
            less_a += a[j] < a[i];
            eq_a += a[j] == a[i];
            less_b += b[j] < b[i];
            eq_b += b[j] == b[i];
        }
        ra[i] = less_a + (eq_a - 1) / 2.0;
        rb[i] = less_b + (eq_b - 1) / 2.0;
    }
    double ma = 0, mb = 0;
    for (int i = 0; i < N; i++) {
        ma += ra[i] / N;
        mb += rb[i] / N;
    }
    double sab = 0, saa = 0, sbb = 0;
    for (int i = 0; i < N; i++) {
        sab += (ra[i] - ma) * (rb[i] - mb);
        saa += (ra[i] - ma) * (ra[i] - ma);
        sbb += (rb[i] - mb) * (rb[i] - mb);
    }
    return saa > 0 && sbb > 0 ? sab / sqrt(saa * sbb) : 0;
}

static void random_print(uint8_t *v, uint64_t *seed, int levels)
{
    for (int i = 0; i < N; i++)
        v[i] = (uint8_t)(xorshift64(seed) % (uint64_t)levels);
}

static void test_rank_correlation(void **state)
{
    (void)state;
    static uint8_t a[N], b[N], c[N];
    uint64_t seed = 42;
    for (int levels = 2; levels <= 256; levels *= 4) { /* many ties, then few */
        for (int round = 0; round < 5; round++) {
            random_print(a, &seed, levels);
            random_print(b, &seed, levels);
            for (int i = 0; i < N; i++) /* b partly follows a */
                c[i] = (uint8_t)((a[i] + (round % 2 ? b[i] : 0)) / 2);
            double got = image_fingerprint_correlation(a, c), want = reference_spearman(a, c);
            if (fabs(got - want) > 1e-12)
                fail_msg("levels %d round %d: %.15f, reference %.15f", levels, round, got, want);
            assert_true(fabs(image_fingerprint_correlation(a, b) - reference_spearman(a, b)) < 1e-12);
        }
    }
    random_print(a, &seed, 256);
    assert_true(fabs(image_fingerprint_correlation(a, a) - 1) < 1e-12);
    for (int i = 0; i < N; i++) /* reversed: -1 */
        b[i] = (uint8_t)(255 - a[i]);
    assert_true(fabs(image_fingerprint_correlation(a, b) + 1) < 1e-12);
    for (int i = 0; i < N; i++) /* any increasing change of the levels: 1 */
        b[i] = (uint8_t)lround(255 * pow(a[i] / 255.0, 0.5));
    double gamma = image_fingerprint_correlation(a, b);
    assert_true(gamma > 0.9999); /* below 1 only where the change merged two levels */
    memset(b, 77, sizeof b); /* flat: 0, both ways */
    assert_true(image_fingerprint_correlation(a, b) == 0 && image_fingerprint_correlation(b, a) == 0);
    assert_true(image_fingerprint_correlation(b, b) == 0);
}

static VipsImage *picture(int w, int h, int variant)
{
    uint8_t *px = malloc((size_t)w * h);
    assert_non_null(px);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double u = (double)x / w, v = (double)y / h;
            double val = 120 + 80 * sin(6 * u + variant) * cos(4 * v) + 40 * (u - v);
            px[(size_t)y * w + x] = (uint8_t)fmax(0, fmin(255, val));
        }
    VipsImage *im = vips_image_new_from_memory_copy(px, (size_t)w * h, w, h, 1, VIPS_FORMAT_UCHAR);
    free(px);
    assert_non_null(im);
    return im;
}

static void print_of(const blob *b, uint8_t *out)
{
    ms_err err = {0};
    if (image_fingerprint(b->data, b->len, NULL, out, &err))
        fail_msg("image_fingerprint: %s", err.msg);
}

static void test_copies_and_others(void **state)
{
    (void)state;
    static uint8_t orig[N], small[N], jpeg[N], other[N], tiny[N];
    VipsImage *big = picture(800, 700, 0), *half = NULL;
    assert_int_equal(vips_resize(big, &half, 0.5, NULL), 0);
    blob b_orig = encode_with(picture(800, 700, 0), ".png");
    blob b_half = encode_with(half, ".png");
    blob b_jpeg = encode_with(big, ".jpg[Q=60]");
    blob b_other = encode_with(picture(800, 700, 1), ".png");
    blob b_tiny = encode_with(picture(20, 12, 0), ".png"); /* smaller than the fingerprint: enlarged */
    print_of(&b_orig, orig);
    print_of(&b_half, small);
    print_of(&b_jpeg, jpeg);
    print_of(&b_other, other);
    print_of(&b_tiny, tiny);
    double c_half = image_fingerprint_correlation(orig, small), c_jpeg = image_fingerprint_correlation(orig, jpeg);
    double c_other = image_fingerprint_correlation(orig, other), c_tiny = image_fingerprint_correlation(orig, tiny);
    if (c_half < 0.99 || c_jpeg < 0.99)
        fail_msg("copies: %.4f (half size), %.4f (JPEG)", c_half, c_jpeg);
    if (c_other > 0.95)
        fail_msg("another picture: %.4f", c_other);
    if (c_tiny < 0.9)
        fail_msg("a 20x12 copy: %.4f", c_tiny);
    /* garbage is an error, not a fingerprint */
    ms_err err = {0};
    static const uint8_t junk[] = "not an image at all";
    assert_int_equal(image_fingerprint(junk, sizeof junk, NULL, orig, &err), MS_EFORMAT);
    assert_int_equal(image_fingerprint(b_orig.data, b_orig.len, NULL, NULL, &err), MS_EINVAL);
    blob_free(&b_orig);
    blob_free(&b_half);
    blob_free(&b_jpeg);
    blob_free(&b_other);
    blob_free(&b_tiny);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rank_correlation),
        cmocka_unit_test(test_copies_and_others),
    };
    RUN_IMAGE_TESTS(tests);
}
