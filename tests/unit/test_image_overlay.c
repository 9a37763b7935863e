/*
 * test_image_overlay.c - what `medsearch explain --overlay` draws with:
 * image_gray8 (the image, or a rectangle of it, as 8-bit gray pixels,
 * against the pixels of the whole and against its reduction), image_heat_blend
 * (a map's cells as heat over a gray image, worked out by hand),
 * image_gray8_repeat and image_encode_rgb_png (read back).
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

/* A w x h gray PNG whose pixel (x, y) is (7x + 13y) mod 251. */
static blob pattern_png(int w, int h)
{
    uint8_t *px = malloc((size_t)w * (size_t)h);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            px[(size_t)y * (size_t)w + (size_t)x] = (uint8_t)((7 * x + 13 * y) % 251);
    VipsImage *im = vips_image_new_from_memory_copy(px, (size_t)w * (size_t)h, w, h, 1, VIPS_FORMAT_UCHAR);
    free(px);
    im->Type = VIPS_INTERPRETATION_B_W;
    return encode_with(im, ".png");
}

static void test_gray8(void **state)
{
    (void)state;
    blob png = pattern_png(300, 200);
    uint8_t *all, *part;
    int w, h, pw, ph;
    ms_err err = {0};
    /* all of it, not reduced: the pixels themselves */
    assert_int_equal(image_gray8(png.data, png.len, NULL, NULL, 4096, &all, &w, &h, &err), 0);
    assert_true(w == 300 && h == 200);
    for (int y = 0; y < h; y += 17)
        for (int x = 0; x < w; x += 13)
            assert_int_equal(all[y * w + x], (7 * x + 13 * y) % 251);
    /* a rectangle, not reduced: exactly its pixels */
    image_rect r = {50, 40, 100, 60};
    assert_int_equal(image_gray8(png.data, png.len, NULL, &r, 100, &part, &pw, &ph, &err), 0);
    assert_true(pw == 100 && ph == 60);
    for (int y = 0; y < ph; y++)
        assert_memory_equal(part + y * pw, all + (40 + y) * w + 50, (size_t)pw);
    free(part);
    /* reduced: the longest side of the rectangle (here all of it) becomes 100 */
    assert_int_equal(image_gray8(png.data, png.len, NULL, NULL, 100, &part, &pw, &ph, &err), 0);
    assert_true(pw == 100 && ph == 67);
    /* the mean of each reduced pixel's 3x3 source block (area averaging), to rounding */
    assert_true(abs((int)part[10 * pw + 10] - (int)lround((all[30 * w + 30] + all[32 * w + 32]) / 2.0)) <= 2);
    free(part);
    /* the reduction is of the rectangle: half of it fits in 50 */
    image_rect half = {0, 0, 150, 200};
    assert_int_equal(image_gray8(png.data, png.len, NULL, &half, 50, &part, &pw, &ph, &err), 0);
    assert_true(pw == 38 && ph == 50);
    free(part);
    free(all);
    /* refusals */
    const image_rect outside[] = {{-1, 0, 10, 10}, {0, 0, 301, 10}, {299, 0, 2, 1}, {0, 199, 1, 2}, {0, 0, 0, 5}};
    for (size_t i = 0; i < sizeof outside / sizeof *outside; i++) {
        part = (uint8_t *)1;
        assert_int_equal(image_gray8(png.data, png.len, NULL, &outside[i], 100, &part, &pw, &ph, &err), MS_EINVAL);
        assert_null(part);
        assert_non_null(strstr(err.msg, "does not lie inside the 300x200 image"));
    }
    assert_int_equal(image_gray8(png.data, png.len, NULL, NULL, 0, &part, &pw, &ph, &err), MS_EINVAL);
    assert_int_equal(image_gray8("garbage!", 8, NULL, NULL, 100, &part, &pw, &ph, &err), MS_EFORMAT);
    assert_null(part);
    blob_free(&png);
}

static void test_heat_blend(void **state)
{
    (void)state;
    enum { W = 63, H = 63 }; /* 9 pixels a cell: cell 3's centre is pixel 31 */
    uint8_t gray[W * H], rgb[W * H * 3];
    memset(gray, 100, sizeof gray);
    float cells[49];
    for (int i = 0; i < 49; i++)
        cells[i] = -0.01f;
    cells[3 * 7 + 3] = 0.5f; /* the middle cell */
    image_heat_blend(gray, W, H, cells, 7, 7, rgb);
    /* the middle cell's centre (heat 1): a = 0.82, R = 100 + 155a, G = 100 + 130a, B = 100(1 - a) */
    const uint8_t *c = rgb + 3 * (31 * W + 31);
    assert_int_equal(c[0], lround(100 + 155 * 0.82));
    assert_int_equal(c[1], lround(100 + 130 * 0.82));
    assert_int_equal(c[2], lround(100 * (1 - 0.82)));
    /* 3 pixels right of it: a third of the way to the next centre */
    c = rgb + 3 * (31 * W + 34);
    double heat = (0.5 * 2 / 3 + -0.01 / 3) / 0.5, alpha = 0.82 * pow(heat, 1.5);
    assert_int_equal(c[0], lround(100 + 155 * alpha));
    assert_int_equal(c[1], lround(100 + (60 + 170 * heat - 100) * alpha));
    assert_int_equal(c[2], lround(100 * (1 - alpha)));
    /* from the neighbours' centres on, only negative cells: gray */
    for (int i = 0; i < W * H; i++) {
        int x = i % W, y = i / W;
        if (abs(x - 31) >= 9 || abs(y - 31) >= 9)
            assert_true(rgb[3 * i] == 100 && rgb[3 * i + 1] == 100 && rgb[3 * i + 2] == 100);
        else if (abs(x - 31) <= 4 && abs(y - 31) <= 4) /* the hot cell's own pixels */
            assert_true(rgb[3 * i] > 100 && rgb[3 * i + 1] > 100 && rgb[3 * i + 2] < 100);
    }
    /* no positive cell: the image unchanged, as gray in each channel */
    for (int i = 0; i < 49; i++)
        cells[i] = -(float)i;
    image_heat_blend(gray, W, H, cells, 7, 7, rgb);
    for (int i = 0; i < W * H * 3; i++)
        assert_int_equal(rgb[i], 100);
    /* a grid of one cell, and an image smaller than the grid */
    float one = 2;
    image_heat_blend(gray, 3, 2, &one, 1, 1, rgb);
    assert_int_equal(rgb[0], lround(100 + 155 * 0.82));
    image_heat_blend(gray, 2, 2, cells, 7, 7, rgb); /* all negative */
    assert_int_equal(rgb[5], 100);
}

static void test_repeat_and_png(void **state)
{
    (void)state;
    const uint8_t gray[6] = {1, 2, 3, 4, 5, 6}; /* 3 x 2 */
    uint8_t *big = image_gray8_repeat(gray, 3, 2, 3);
    assert_non_null(big);
    for (int y = 0; y < 6; y++)
        for (int x = 0; x < 9; x++)
            assert_int_equal(big[y * 9 + x], gray[(y / 3) * 3 + x / 3]);
    free(big);
    assert_null(image_gray8_repeat(gray, 3, 2, 0));
    uint8_t rgb[5 * 4 * 3];
    for (size_t i = 0; i < sizeof rgb; i++)
        rgb[i] = (uint8_t)(i * 37);
    uint8_t *png;
    size_t len;
    ms_err err = {0};
    assert_int_equal(image_encode_rgb_png(rgb, 5, 4, &png, &len, &err), 0);
    VipsImage *back = vips_image_new_from_buffer(png, len, "", NULL);
    assert_non_null(back);
    assert_true(vips_image_get_width(back) == 5 && vips_image_get_height(back) == 4 && back->Bands == 3);
    size_t n;
    void *px = vips_image_write_to_memory(back, &n);
    assert_int_equal(n, sizeof rgb);
    assert_memory_equal(px, rgb, sizeof rgb);
    g_free(px);
    g_object_unref(back);
    free(png);
    assert_int_equal(image_encode_rgb_png(rgb, 0, 4, &png, &len, &err), MS_EINVAL);
    assert_null(png);
    assert_int_equal(image_encode_rgb_png(NULL, 5, 4, &png, &len, &err), MS_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gray8),
        cmocka_unit_test(test_heat_blend),
        cmocka_unit_test(test_repeat_and_png),
    };
    RUN_IMAGE_TESTS(tests);
}
