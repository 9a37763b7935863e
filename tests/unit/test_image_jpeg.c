/*
 * test_image_jpeg.c - the thumbnail JPEG encoder (src/image/jpeg_encode.c):
 * what it writes decodes (with libvips' own loader) to the same size and
 * close to the input at quality 85, carries no marker beyond the image's
 * own (no JFIF, Exif, comment), follows the quality, and refuses bad
 * arguments with an error instead of libjpeg's exit().
 */
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
#include "image/internal.h"
#include "image_test_util.h"

/* A smooth X-ray-like picture with some edges and noise. */
static uint8_t *make_picture(int w, int h)
{
    uint8_t *px = malloc((size_t)w * h);
    assert_non_null(px);
    uint32_t seed = 12345;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            seed = seed * 1103515245u + 12345u;
            int v = 40 + (x * 120) / w + (y * 60) / h + (int)((seed >> 16) % 9) - 4;
            if ((x - w / 3) * (x - w / 3) + (y - h / 2) * (y - h / 2) < w * h / 30)
                v += 50;
            px[(size_t)y * w + x] = (uint8_t)(v > 255 ? 255 : v);
        }
    return px;
}

/* The markers between SOI and SOS, as their second bytes. */
static int markers(const uint8_t *j, size_t len, uint8_t *found, int most)
{
    int n = 0;
    assert_true(len > 4 && j[0] == 0xFF && j[1] == 0xD8);
    for (size_t i = 2; i + 4 <= len && n < most;) {
        assert_int_equal(j[i], 0xFF);
        uint8_t m = j[i + 1];
        found[n++] = m;
        if (m == 0xDA) /* start of scan: the entropy-coded data follows */
            break;
        i += 2 + ((size_t)j[i + 2] << 8 | j[i + 3]);
    }
    return n;
}

static void test_round_trip(void **state)
{
    (void)state;
    static const int sizes[][2] = {{256, 256}, {256, 197}, {1, 1}, {17, 300}, {255, 3}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int w = sizes[s][0], h = sizes[s][1];
        uint8_t *px = make_picture(w, h), *jpg = NULL;
        size_t len = 0;
        ms_err err = {0};
        assert_int_equal(jpeg_encode_gray8(px, w, h, 85, &jpg, &len, &err), 0);
        VipsImage *im = vips_image_new_from_buffer(jpg, len, "", NULL);
        assert_non_null(im);
        assert_int_equal(im->Xsize, w);
        assert_int_equal(im->Ysize, h);
        assert_int_equal(im->Bands, 1);
        size_t dlen = 0;
        uint8_t *dec = vips_image_write_to_memory(im, &dlen);
        assert_int_equal(dlen, (size_t)w * h);
        double diff = 0;
        for (size_t i = 0; i < dlen; i++)
            diff += abs(dec[i] - px[i]);
        assert_true(diff / (double)dlen < 4.0); /* quality 85 of a smooth picture */
        uint8_t m[32];
        int n = markers(jpg, len, m, 32);
        for (int i = 0; i < n; i++) /* tables, frame, scan only */
            if (m[i] != 0xDB && m[i] != 0xC4 && m[i] != 0xC0 && m[i] != 0xDA && m[i] != 0xDD)
                fail_msg("%dx%d: marker 0xFF%02X in a stripped thumbnail", w, h, m[i]);
        g_free(dec);
        g_object_unref(im);
        free(jpg);
        free(px);
    }
}

static void test_quality_is_followed(void **state)
{
    (void)state;
    uint8_t *px = make_picture(256, 256), *lo = NULL, *hi = NULL;
    size_t lo_len = 0, hi_len = 0;
    assert_int_equal(jpeg_encode_gray8(px, 256, 256, 20, &lo, &lo_len, NULL), 0);
    assert_int_equal(jpeg_encode_gray8(px, 256, 256, 95, &hi, &hi_len, NULL), 0);
    assert_true(lo_len * 2 < hi_len);
    free(lo);
    free(hi);
    free(px);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    uint8_t px[16] = {0}, *out = NULL;
    size_t len = 0;
    ms_err err = {0};
    assert_int_equal(jpeg_encode_gray8(px, 0, 4, 85, &out, &len, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "0x4"));
    assert_int_equal(jpeg_encode_gray8(px, 4, 4, 0, &out, &len, &err), MS_EINVAL);
    assert_int_equal(jpeg_encode_gray8(px, 4, 4, 101, &out, &len, &err), MS_EINVAL);
    assert_int_equal(jpeg_encode_gray8(px, 70000, 1, 85, &out, &len, &err), MS_EINVAL);
    assert_int_equal(jpeg_encode_gray8(NULL, 4, 4, 85, &out, &len, &err), MS_EINVAL);
    assert_null(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_quality_is_followed),
        cmocka_unit_test(test_bad_arguments),
    };
    RUN_IMAGE_TESTS(tests);
}
