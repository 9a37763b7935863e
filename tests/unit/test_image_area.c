/*
 * test_image_area.c - the area-average reduction used for thumbnails
 * (src/image/area.c) against hand-computed means and a brute-force
 * reference that integrates each output pixel's footprint in exact
 * rational steps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "image/internal.h"

static void test_hand_computed(void **state)
{
    (void)state;
    /* 4x2 -> 2x1: the mean of each 2x2 block */
    const uint8_t a[8] = {0, 10, 100, 200, 20, 30, 0, 100};
    uint8_t out[8];
    assert_int_equal(area_reduce_gray8(a, 4, 2, out, 2, 1), 0);
    assert_int_equal(out[0], 15);  /* (0 + 10 + 20 + 30) / 4 */
    assert_int_equal(out[1], 100); /* (100 + 200 + 0 + 100) / 4 */
    /* 3 -> 2: the middle pixel is split, half to each side */
    const uint8_t b[3] = {0, 30, 60};
    assert_int_equal(area_reduce_gray8(b, 3, 1, out, 2, 1), 0);
    assert_int_equal(out[0], 10); /* (0 + 0.5 * 30) / 1.5 */
    assert_int_equal(out[1], 50); /* (0.5 * 30 + 60) / 1.5 */
    /* to 1x1: the mean of everything, rounded to nearest */
    const uint8_t c[6] = {1, 2, 3, 4, 5, 6};
    assert_int_equal(area_reduce_gray8(c, 3, 2, out, 1, 1), 0);
    assert_int_equal(out[0], 4); /* 3.5 rounds to even: 4 */
    /* same size: a copy */
    assert_int_equal(area_reduce_gray8(c, 3, 2, out, 3, 2), 0);
    assert_memory_equal(out, c, 6);
}

static void test_rejects_bad_sizes(void **state)
{
    (void)state;
    const uint8_t a[4] = {0};
    uint8_t out[16];
    assert_int_equal(area_reduce_gray8(a, 2, 2, out, 3, 2), MS_EINVAL); /* enlarging */
    assert_int_equal(area_reduce_gray8(a, 2, 2, out, 2, 3), MS_EINVAL);
    assert_int_equal(area_reduce_gray8(a, 2, 2, out, 0, 1), MS_EINVAL);
    assert_int_equal(area_reduce_gray8(a, 2, 2, out, 1, 0), MS_EINVAL);
}

/* The mean over [x0, x1) x [y0, y1) in source pixels, by integrating the
 * piecewise-constant image exactly (in doubles). */
static double footprint_mean(const uint8_t *in, int w, double x0, double x1, double y0, double y1)
{
    double sum = 0;
    for (int y = (int)y0; y < y1; y++)
        for (int x = (int)x0; x < x1; x++) {
            double cx = (x + 1 < x1 ? x + 1 : x1) - (x > x0 ? x : x0);
            double cy = (y + 1 < y1 ? y + 1 : y1) - (y > y0 ? y : y0);
            if (cx > 0 && cy > 0)
                sum += cx * cy * in[(size_t)y * w + x];
        }
    return sum / ((x1 - x0) * (y1 - y0));
}

static void test_against_brute_force(void **state)
{
    (void)state;
    static const int sizes[][4] = {{1024, 1024, 256, 256}, {1000, 700, 256, 179}, {17, 5, 3, 2},
                                   {100, 1, 7, 1},        {1, 100, 1, 9},        {5, 5, 4, 4}};
    uint64_t seed = 7;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        int W = sizes[i][0], H = sizes[i][1], w = sizes[i][2], h = sizes[i][3];
        uint8_t *in = malloc((size_t)W * H), *out = malloc((size_t)w * h);
        for (size_t j = 0; j < (size_t)W * H; j++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            in[j] = (uint8_t)(seed >> 56);
        }
        assert_int_equal(area_reduce_gray8(in, W, H, out, w, h), 0);
        double sx = (double)W / w, sy = (double)H / h;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                double want = footprint_mean(in, W, x * sx, (x + 1) * sx, y * sy, (y + 1) * sy);
                double got = out[(size_t)y * w + x];
                if (got < want - 0.51 || got > want + 0.51)
                    fail_msg("%dx%d -> %dx%d at (%d, %d): %g, want %g", W, H, w, h, x, y, got, want);
            }
        free(in);
        free(out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hand_computed),
        cmocka_unit_test(test_rejects_bad_sizes),
        cmocka_unit_test(test_against_brute_force),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
