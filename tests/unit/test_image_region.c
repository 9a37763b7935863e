/*
 * test_image_region.c - searching with part of an image: the region's text
 * form (image_region_parse), its pixels in an image of a given size
 * (image_region_resolve, worked out by hand), and image_prepare_region
 * against image_prepare of the same rectangle cut out beforehand: exact for
 * a PNG, within JPEG's loss for a large JPEG that is decoded reduced, and in
 * the coordinates of the image as shown for a JPEG stored sideways.
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

static image_rect resolve_ok(const char *text, int w, int h)
{
    image_region r;
    image_rect rect = {-1, -1, -1, -1};
    ms_err err = {0};
    if (image_region_parse(text, &r, &err))
        fail_msg("'%s' refused: %s", text, err.msg);
    if (image_region_resolve(&r, w, h, &rect, &err))
        fail_msg("'%s' in %dx%d refused: %s", text, w, h, err.msg);
    return rect;
}

static void assert_rect(image_rect got, int x, int y, int w, int h)
{
    if (got.x != x || got.y != y || got.width != w || got.height != h)
        fail_msg("got %d,%d,%d,%d, want %d,%d,%d,%d", got.x, got.y, got.width, got.height, x, y, w, h);
}

static void test_parse_and_resolve(void **state)
{
    (void)state;
    assert_rect(resolve_ok("100,200,600,500", 1024, 1024), 100, 200, 600, 500);
    assert_rect(resolve_ok(" 1 , 2 ,3,  4 ", 10, 10), 1, 2, 3, 4);
    assert_rect(resolve_ok("0,0,1024,768", 1024, 768), 0, 0, 1024, 768);
    /* 25% of 1024 = 256; 20% = 204.8 -> 205; the far edge 70% = 716.8 -> 717 */
    assert_rect(resolve_ok("25%,20%,50%,50%", 1024, 1024), 256, 205, 512, 512);
    assert_rect(resolve_ok("25.00%,20.00%,50.00%,50.00%", 1024, 1024), 256, 205, 512, 512);
    assert_rect(resolve_ok("0%,0%,100%,100%", 333, 77), 0, 0, 333, 77);
    /* mixed: a pixel start with a percentage length, and the reverse */
    assert_rect(resolve_ok("10,10%,50%,20", 200, 100), 10, 10, 100, 20);
    /* a percentage that rounds to nothing keeps one pixel */
    assert_rect(resolve_ok("50%,50%,0.01%,0.01%", 10, 10), 5, 5, 1, 1);
    /* a start under 100% that rounds to the far edge is the last pixel */
    assert_rect(resolve_ok("99.99%,0,0.01%,100%", 10, 10), 9, 0, 1, 10);
    /* two percentages whose sum is 100 in decimal but not quite in binary */
    assert_rect(resolve_ok("33.33%,0,66.67%,100%", 3001, 5), 1000, 0, 2001, 5);
}

static void test_parse_refuses(void **state)
{
    (void)state;
    static const struct {
        const char *text, *says;
    } bad[] = {
        {"", "x must be"},
        {"1,2,3", "four values"},
        {"1,2,3,4,5", "more after the height"},
        {"1;2;3;4", "four values"},
        {"-1,0,1,1", "x must be"},
        {"+1,0,1,1", "x must be"},
        {"1.5,0,1,1", "whole; add %"},
        {"1e3,0,1,1", "four values"},
        {"nan,0,1,1", "x must be"},
        {"inf%,0,1,1", "x must be"},
        {"0,0,0,1", "width must be above zero"},
        {"0,0,1,0%", "height must be above zero"},
        {"0,0,1,0.0%", "height must be above zero"},
        {"101%,0,1,1", "x is over 100%"},
        {"50%,0,60%,1", "x + width is over 100%"},
        {"0,50.5%,1,49.6%", "y + height is over 100%"},
        {"1000000001,0,1,1", "over 1,000,000,000"},
        {"1234567890123,0,1,1", "x must be"},
        {"1,2,3,4%%", "more after the height"},
        {"1,2,3,4 x", "more after the height"},
        {"1,,3,4", "y must be"},
        {".%,0,1,1", "x must be"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        image_region r = {{7, 7, 7, 7}, {0}};
        ms_err err = {0};
        if (image_region_parse(bad[i].text, &r, &err) != MS_EINVAL)
            fail_msg("'%s' was accepted", bad[i].text);
        if (!strstr(err.msg, bad[i].says))
            fail_msg("'%s': \"%s\" does not say \"%s\"", bad[i].text, err.msg, bad[i].says);
        assert_true(r.value[0] == 7 && r.value[3] == 7); /* untouched */
    }
    char long_text[IMAGE_REGION_TEXT_MAX + 2];
    memset(long_text, '0', sizeof long_text - 1);
    long_text[sizeof long_text - 1] = '\0';
    image_region r;
    ms_err err = {0};
    assert_int_equal(image_region_parse(long_text, &r, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "longer than"));
    assert_int_equal(image_region_parse(NULL, &r, &err), MS_EINVAL);
}

static void test_resolve_refuses_outside(void **state)
{
    (void)state;
    static const char *outside[] = {"0,0,1025,5", "1024,0,1,1", "0,0,1,769", "1000,0,25,1", "0,768,1,1",
                                    "10%,0,1024,1"};
    for (size_t i = 0; i < sizeof outside / sizeof *outside; i++) {
        image_region r;
        image_rect rect = {-1, -1, -1, -1};
        ms_err err = {0};
        assert_int_equal(image_region_parse(outside[i], &r, &err), 0);
        assert_int_equal(image_region_resolve(&r, 1024, 768, &rect, &err), MS_EINVAL);
        if (!strstr(err.msg, "does not lie inside the 1024x768 image"))
            fail_msg("'%s': \"%s\"", outside[i], err.msg);
        assert_int_equal(rect.x, -1);
    }
}

/* ---- image_prepare_region against a cut made beforehand ---- */

/* A w x h 8-bit image with detail at every scale: a gradient, a sine of
 * period 16 pixels, and noise. */
static uint8_t *textured(int w, int h, uint64_t seed)
{
    uint8_t *px = malloc((size_t)w * h);
    assert_non_null(px);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double v = 40 + 120.0 * x / w + 50.0 * y / h + 30 * sin(x * 2 * M_PI / 16) * cos(y * 2 * M_PI / 24);
            v += (double)(xorshift64(&seed) % 9) - 4;
            px[(size_t)y * w + x] = (uint8_t)fmin(255, fmax(0, v));
        }
    return px;
}

static VipsImage *gray_image(const uint8_t *px, int w, int h)
{
    VipsImage *im = vips_image_new_from_memory_copy(px, (size_t)w * h, w, h, 1, VIPS_FORMAT_UCHAR);
    assert_non_null(im);
    return im;
}

/* px's rectangle as a new w x h image. */
static VipsImage *cut(const uint8_t *px, int w, image_rect r)
{
    uint8_t *part = malloc((size_t)r.width * r.height);
    assert_non_null(part);
    for (int y = 0; y < r.height; y++)
        memcpy(part + (size_t)y * r.width, px + (size_t)(r.y + y) * w + r.x, (size_t)r.width);
    VipsImage *im = gray_image(part, r.width, r.height);
    free(part);
    return im;
}

static float *prepared(const blob *b, const image_region *region, int size, image_rect *used)
{
    image_prep prep = {size, {0, 0, 0}, {1, 1, 1}};
    float *out = malloc(sizeof(float) * 3 * (size_t)size * size);
    assert_non_null(out);
    ms_err err = {0};
    int rc = region ? image_prepare_region(b->data, b->len, NULL, &prep, region, out, NULL, used, &err)
                    : image_prepare(b->data, b->len, NULL, &prep, out, NULL, &err);
    if (rc)
        fail_msg("prepare failed (%d): %s", rc, err.msg);
    return out;
}

static double worst_difference(const float *a, const float *b, int size)
{
    double worst = 0;
    for (size_t i = 0; i < (size_t)3 * size * size; i++)
        worst = fmax(worst, fabs(a[i] - b[i]));
    return worst;
}

static image_region parsed(const char *text)
{
    image_region r;
    ms_err err = {0};
    if (image_region_parse(text, &r, &err))
        fail_msg("'%s': %s", text, err.msg);
    return r;
}

/* A PNG is decoded whole, so a region is exactly the cut image prepared. */
static void test_png_region_equals_cut(void **state)
{
    (void)state;
    const int w = 700, h = 520;
    uint8_t *px = textured(w, h, 11);
    blob png = encode_with(gray_image(px, w, h), ".png");
    static const struct {
        const char *text;
        image_rect rect;
    } cases[] = {
        {"100,50,300,400", {100, 50, 300, 400}},  /* reduced */
        {"0,0,700,520", {0, 0, 700, 520}},        /* the whole image */
        {"650,500,50,20", {650, 500, 50, 20}},    /* enlarged, at the corner */
        {"20%,25%,50%,50%", {140, 130, 350, 260}},
        {"3,4,1,1", {3, 4, 1, 1}},                /* one pixel */
        {"0,100,700,8", {0, 100, 700, 8}},        /* a strip: reduced one way, enlarged the other */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        image_region region = parsed(cases[i].text);
        image_rect used;
        float *got = prepared(&png, &region, 64, &used);
        assert_memory_equal(&used, &cases[i].rect, sizeof used);
        blob part = encode_with(cut(px, w, cases[i].rect), ".png");
        float *want = prepared(&part, NULL, 64, NULL);
        if (worst_difference(got, want, 64) != 0)
            fail_msg("%s: differs from the cut image by %g", cases[i].text, worst_difference(got, want, 64));
        free(got);
        free(want);
        blob_free(&part);
    }
    /* the whole image as a region is image_prepare */
    image_region all = parsed("0%,0%,100%,100%");
    float *a = prepared(&png, &all, 64, NULL), *b = prepared(&png, NULL, 64, NULL);
    assert_true(worst_difference(a, b, 64) == 0);
    free(a);
    free(b);
    blob_free(&png);
    free(px);
}

/* A 4000x3000 JPEG is decoded at 1/8 for a 224 input; a region of a
 * quarter of its width must not be: it would leave 125 pixels for 224. The
 * region prepared matches the same region cut from the pixels within JPEG's
 * loss, which a decode at 1/8 (the 16-pixel sine blurred away) misses. */
static void test_large_jpeg_region_keeps_detail(void **state)
{
    (void)state;
    const int w = 4000, h = 3000;
    uint8_t *px = textured(w, h, 5);
    blob jpeg = encode_with(gray_image(px, w, h), ".jpg[Q=98]");
    image_rect rect = {1200, 900, 1000, 800};
    image_region region = parsed("1200,900,1000,800");
    image_rect used;
    float *got = prepared(&jpeg, &region, 224, &used);
    assert_memory_equal(&used, &rect, sizeof used);
    blob part = encode_with(cut(px, w, rect), ".png");
    float *want = prepared(&part, NULL, 224, NULL);
    double worst = worst_difference(got, want, 224);
    if (worst > 6)
        fail_msg("the region differs from the cut pixels by %g", worst);
    /* the same cut taken from a decode at 1/8 and enlarged: far off */
    VipsImage *small = NULL, *part8 = NULL;
    assert_int_equal(vips_jpegload_buffer(jpeg.data, jpeg.len, &small, "shrink", 8, NULL), 0);
    assert_int_equal(vips_extract_area(small, &part8, 150, 112, 125, 100, NULL), 0);
    g_object_unref(small);
    blob coarse = encode_with(part8, ".png");
    float *blurred = prepared(&coarse, NULL, 224, NULL);
    if (worst_difference(blurred, want, 224) < 3 * worst + 6)
        fail_msg("a decode at 1/8 is not told apart: %g against %g", worst_difference(blurred, want, 224), worst);
    free(blurred);
    blob_free(&coarse);
    free(got);
    free(want);
    blob_free(&part);
    blob_free(&jpeg);
    free(px);
}

/* A JPEG stored sideways (EXIF Orientation 6: shown turned a quarter
 * clockwise) takes its region in the coordinates of the image as shown. */
static void test_region_of_image_as_shown(void **state)
{
    (void)state;
    const int w = 300, h = 200; /* stored; shown 200 x 300 */
    uint8_t *px = textured(w, h, 3);
    VipsImage *stored = gray_image(px, w, h), *tagged = NULL, *shown = NULL;
    assert_int_equal(vips_copy(stored, &tagged, NULL), 0);
    vips_image_set_int(tagged, "orientation", 6);
    assert_int_equal(vips_rot(stored, &shown, VIPS_ANGLE_D90, NULL), 0);
    g_object_unref(stored);
    blob sideways = encode_with(tagged, ".jpg[Q=100]");
    blob upright = encode_with(shown, ".jpg[Q=100]");
    image_region region = parsed("20,150,120,100"); /* inside 200 x 300, outside nothing */
    image_rect used;
    float *got = prepared(&sideways, &region, 48, &used);
    float *want = prepared(&upright, &region, 48, NULL);
    image_rect rect = {20, 150, 120, 100};
    assert_memory_equal(&used, &rect, sizeof used);
    double worst = worst_difference(got, want, 48);
    if (worst > 8)
        fail_msg("the region of the sideways JPEG differs from the upright one's by %g", worst);
    /* as stored (300 x 200) the same numbers would not fit: it is the shown size that counts */
    image_region tall = parsed("0,0,200,300");
    free(got);
    got = prepared(&sideways, &tall, 48, &used);
    free(got);
    free(want);
    blob_free(&sideways);
    blob_free(&upright);
    free(px);
}

static void test_region_outside_leaves_output(void **state)
{
    (void)state;
    uint8_t *px = textured(40, 30, 1);
    blob png = encode_with(gray_image(px, 40, 30), ".png");
    image_prep prep = {8, {0, 0, 0}, {1, 1, 1}};
    float out[3 * 8 * 8];
    for (size_t i = 0; i < sizeof out / sizeof *out; i++)
        out[i] = -7;
    image_region region = parsed("30,0,11,5");
    image_rect used = {-1, -1, -1, -1};
    ms_err err = {0};
    assert_int_equal(image_prepare_region(png.data, png.len, NULL, &prep, &region, out, NULL, &used, &err),
                     MS_EINVAL);
    assert_non_null(strstr(err.msg, "does not lie inside the 40x30 image"));
    assert_int_equal(used.x, -1);
    for (size_t i = 0; i < sizeof out / sizeof *out; i++)
        assert_true(out[i] == -7);
    /* a corrupt file is still a format error, whatever the region */
    png.data[png.len / 2] ^= 0xff;
    png.data[png.len / 2 + 1] ^= 0xff;
    image_region small = parsed("0,0,4,4");
    int rc = image_prepare_region(png.data, png.len, NULL, &prep, &small, out, NULL, NULL, &err);
    assert_true(rc == MS_EFORMAT);
    blob_free(&png);
    free(px);
}

/* The extremes: one pixel of a 3,000,000 x 1 PNG prepared at 1024 (a decode
 * size past int, were it not capped at the image's), and one pixel of a
 * 60000 x 2 JPEG, which must then be decoded whole: both are that pixel's
 * gray level throughout. */
static void test_one_pixel_of_a_wide_image(void **state)
{
    (void)state;
    const int w = 3000000, size = 1024;
    uint8_t *px = malloc(w);
    assert_non_null(px);
    for (int x = 0; x < w; x++)
        px[x] = (uint8_t)(x % 251);
    blob png = encode_with(gray_image(px, w, 1), ".png");
    image_region last = parsed("2999999,0,1,1");
    image_rect used;
    float *out = prepared(&png, &last, size, &used);
    assert_true(used.x == w - 1 && used.width == 1 && used.height == 1);
    float want = (float)((w - 1) % 251);
    for (size_t i = 0; i < (size_t)3 * size * size; i++)
        if (out[i] != want)
            fail_msg("element %zu is %g, want %g", i, out[i], want);
    free(out);
    blob_free(&png);
    free(px);

    const int jw = 60000;
    uint8_t *flat = malloc((size_t)jw * 2);
    assert_non_null(flat);
    memset(flat, 90, (size_t)jw * 2);
    blob jpeg = encode_with(gray_image(flat, jw, 2), ".jpg[Q=100]");
    image_region one = parsed("30000,1,1,1");
    out = prepared(&jpeg, &one, 16, &used);
    for (int i = 0; i < 3 * 16 * 16; i++)
        assert_true(fabsf(out[i] - 90) <= 1);
    free(out);
    blob_free(&jpeg);
    free(flat);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_and_resolve),
        cmocka_unit_test(test_parse_refuses),
        cmocka_unit_test(test_resolve_refuses_outside),
        cmocka_unit_test(test_png_region_equals_cut),
        cmocka_unit_test(test_large_jpeg_region_keeps_detail),
        cmocka_unit_test(test_region_of_image_as_shown),
        cmocka_unit_test(test_region_outside_leaves_output),
        cmocka_unit_test(test_one_pixel_of_a_wide_image),
    };
    RUN_IMAGE_TESTS(tests);
}
