/*
 * test_image_gray16.c - the 16-bit to 8-bit scaling of 16-bit gray images
 * (image_gray16_to_gray8, image.c) against libvips' vips_linear1(gain,
 * 0.5, uchar), whose pixels it must give to the bit so that vectors of
 * 16-bit images stay what they were: every sample value 0..max for maxima
 * around the powers of two and the 12-bit detector range, lengths that
 * leave a partial group of 8, and gain 0 (an all-black image).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <vips/vips.h>

#include "image/image.h"
#include "image/internal.h"
#include "image_test_util.h"

/* libvips' result for the same samples (n x 1 image). */
static uint8_t *vips_scaled(const uint16_t *in, size_t n, double gain)
{
    VipsImage *im = vips_image_new_from_memory(in, n * sizeof *in, (int)n, 1, 1, VIPS_FORMAT_USHORT), *out = NULL;
    assert_non_null(im);
    assert_int_equal(vips_linear1(im, &out, gain, gain > 0 ? 0.5 : 0.0, "uchar", TRUE, NULL), 0);
    size_t len = 0;
    uint8_t *px = vips_image_write_to_memory(out, &len);
    assert_int_equal(len, n);
    g_object_unref(out);
    g_object_unref(im);
    return px;
}

static void expect_same_as_vips(const uint16_t *in, size_t n, unsigned max)
{
    double gain = max > 0 ? 255.0 / max : 0.0; /* as image.c computes it */
    uint8_t *want = vips_scaled(in, n, gain), *got = malloc(n);
    assert_non_null(got);
    image_gray16_to_gray8(in, n, (float)gain, got);
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i])
            fail_msg("max %u, sample %u: %u, libvips %u", max, in[i], got[i], want[i]);
    free(got);
    g_free(want);
}

static void test_every_value_as_libvips(void **state)
{
    (void)state;
    static const unsigned maxima[] = {1, 2, 3, 7, 255, 256, 257, 1000, 1023, 4095, 4096, 16383, 32768, 65534, 65535};
    for (size_t m = 0; m < sizeof maxima / sizeof *maxima; m++) {
        unsigned max = maxima[m];
        size_t n = (size_t)max + 1;
        uint16_t *in = malloc(n * sizeof *in);
        assert_non_null(in);
        for (size_t i = 0; i < n; i++)
            in[i] = (uint16_t)i;
        expect_same_as_vips(in, n, max);
        free(in);
    }
}

static void test_lengths_and_black(void **state)
{
    (void)state;
    uint16_t in[37];
    uint64_t r = 7;
    for (size_t n = 1; n <= 37; n++) {
        unsigned max = 0;
        for (size_t i = 0; i < n; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            in[i] = (uint16_t)(r >> 48);
            max = in[i] > max ? in[i] : max;
        }
        expect_same_as_vips(in, n, max);
    }
    memset(in, 0, sizeof in);
    expect_same_as_vips(in, 37, 0);
    uint8_t out[37];
    memset(out, 9, sizeof out);
    image_gray16_to_gray8(in, 37, 0.0f, out);
    for (size_t i = 0; i < 37; i++)
        assert_int_equal(out[i], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_value_as_libvips),
        cmocka_unit_test(test_lengths_and_black),
    };
    RUN_IMAGE_TESTS(tests);
}
