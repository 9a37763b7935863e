/*
 * test_image.c - decoding, conversion, resize, normalisation and thumbnails
 * of the image module, on images generated here with libvips (so every
 * expected value is computed by hand), and on the real X-rays of
 * $MEDSEARCH_SHARED/data when it is present.
 * Hostile inputs are in test_image_hostile.c.
 */
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <vips/vips.h>

#include "image/image.h"
#include "image_test_util.h"
#include "util/timing.h"

/* ---- helpers: make images, encode them, prepare them ---- */

/* An image from raw samples (8-bit when bytes_per_sample is 1, else 16). */
static VipsImage *raw_image(const void *px, int w, int h, int bands, int bytes_per_sample)
{
    VipsBandFormat fmt = bytes_per_sample == 2 ? VIPS_FORMAT_USHORT : VIPS_FORMAT_UCHAR;
    VipsImage *im = vips_image_new_from_memory_copy(px, (size_t)w * h * bands * bytes_per_sample, w, h, bands, fmt);
    assert_non_null(im);
    /* Tag 16-bit data as such, or the savers write it as 8-bit. */
    if (bytes_per_sample == 2) {
        VipsImage *tagged = NULL;
        VipsInterpretation kind = bands >= 3 ? VIPS_INTERPRETATION_RGB16 : VIPS_INTERPRETATION_GREY16;
        assert_int_equal(vips_copy(im, &tagged, "interpretation", kind, NULL), 0);
        g_object_unref(im);
        im = tagged;
    }
    return im;
}

static VipsImage *constant_image(int w, int h, int bands, int value)
{
    size_t n = (size_t)w * h * bands;
    uint8_t *px = malloc(n);
    assert_non_null(px);
    memset(px, value, n);
    VipsImage *im = raw_image(px, w, h, bands, 1);
    free(px);
    return im;
}

static const image_prep IDENTITY_224 = {224, {0, 0, 0}, {1, 1, 1}};

static image_prep identity(int size)
{
    return (image_prep){size, {0, 0, 0}, {1, 1, 1}};
}

/* Prepares b and returns a malloc'd 3*size*size tensor, failing the test on
 * error. */
static float *prepare_ok(const blob *b, const image_prep *prep, image_info *info)
{
    float *out = malloc(sizeof(float) * 3 * (size_t)prep->size * prep->size);
    assert_non_null(out);
    ms_err err = {0};
    int rc = image_prepare(b->data, b->len, NULL, prep, out, info, &err);
    if (rc)
        fail_msg("image_prepare failed (%d): %s", rc, err.msg);
    return out;
}

static void assert_all_equal(const float *v, size_t n, float want, float tol)
{
    for (size_t i = 0; i < n; i++)
        if (fabsf(v[i] - want) > tol)
            fail_msg("element %zu is %g, want %g (+-%g)", i, v[i], want, tol);
}

/* Rounds like the module: half up. */
static float round_half_up(double v)
{
    return (float)floor(v + 0.5);
}

static int setup(void **state)
{
    (void)state;
    ms_err err = {0};
    return image_init(0, &err);
}

/* ---- tests ---- */

static void test_sniff_and_names(void **state)
{
    (void)state;
    assert_int_equal(image_sniff("\x89PNG\r\n\x1a\n", 8), IMAGE_PNG);
    assert_int_equal(image_sniff("\xff\xd8\xff\xe0", 4), IMAGE_JPEG);
    assert_int_equal(image_sniff("II*\0", 4), IMAGE_TIFF);
    assert_int_equal(image_sniff("MM\0*", 4), IMAGE_TIFF);
    assert_int_equal(image_sniff("\x89PNG\r\n\x1a", 7), IMAGE_UNKNOWN);
    assert_int_equal(image_sniff("GIF89a", 6), IMAGE_GIF);
    assert_int_equal(image_sniff("GIF87a", 6), IMAGE_GIF);
    assert_int_equal(image_sniff("GIF88a", 6), IMAGE_UNKNOWN);
    assert_int_equal(image_sniff("RIFF\x10\0\0\0WEBP", 12), IMAGE_WEBP);
    assert_int_equal(image_sniff("RIFF\x10\0\0\0WAVE", 12), IMAGE_UNKNOWN);
    assert_int_equal(image_sniff("\0\0\0\x0cjP  \r\n\x87\n", 12), IMAGE_JP2);
    assert_int_equal(image_sniff("\xff\x4f\xff\x51", 4), IMAGE_J2K);
    assert_int_equal(image_sniff("\xff\x4f\xff\x52", 4), IMAGE_UNKNOWN);
    assert_int_equal(image_sniff("\0\0\0\x18" "ftypheic\0\0\0\0mif1heic", 24), IMAGE_HEIC);
    assert_int_equal(image_sniff("\0\0\0\x18" "ftypmif1\0\0\0\0mif1miaf", 24), IMAGE_HEIC);
    assert_int_equal(image_sniff("\0\0\0\x1c" "ftypavif\0\0\0\0avifmif1miaf", 28), IMAGE_AVIF);
    assert_int_equal(image_sniff("\0\0\0\x18" "ftypmif1\0\0\0\0mif1avif", 24), IMAGE_AVIF);
    assert_int_equal(image_sniff("\0\0\0\x18" "ftypisom\0\0\0\0isomavc1", 24), IMAGE_UNKNOWN);
    /* a brand beyond the box's own length does not count */
    assert_int_equal(image_sniff("\0\0\0\x10" "ftypisom\0\0\0\0heic", 20), IMAGE_UNKNOWN);
    assert_int_equal(image_sniff(NULL, 0), IMAGE_UNKNOWN);
    assert_string_equal(image_format_name(IMAGE_PNG), "png");
    assert_string_equal(image_format_name(IMAGE_JPEG), "jpeg");
    assert_string_equal(image_format_name(IMAGE_TIFF), "tiff");
    assert_string_equal(image_format_mime(IMAGE_JPEG), "image/jpeg");
    assert_string_equal(image_format_mime(IMAGE_TIFF), "image/tiff");
    assert_string_equal(image_format_name(IMAGE_WEBP), "webp");
    assert_string_equal(image_format_mime(IMAGE_WEBP), "image/webp");
    assert_string_equal(image_format_name(IMAGE_JP2), "jp2");
    assert_string_equal(image_format_mime(IMAGE_JP2), "image/jp2");
    assert_string_equal(image_format_name(IMAGE_J2K), "j2k");
    assert_string_equal(image_format_mime(IMAGE_J2K), "image/j2c");
    assert_string_equal(image_format_name(IMAGE_HEIC), "heic");
    assert_string_equal(image_format_mime(IMAGE_HEIC), "image/heic");
    assert_string_equal(image_format_name(IMAGE_AVIF), "avif");
    assert_string_equal(image_format_mime(IMAGE_AVIF), "image/avif");
    assert_string_equal(image_format_name(IMAGE_GIF), "gif");
    assert_string_equal(image_format_mime(IMAGE_GIF), "image/gif");
    image_limits lim = image_default_limits();
    assert_int_equal(lim.max_bytes, 64u << 20);
    assert_int_equal(lim.max_pixels, 50000000u);
}

typedef struct probe_case {
    const char *what;
    int bands_in, bytes, bands_out, bits;
    const char *suffix;
    image_format format;
} probe_case;

static void test_probe_every_format(void **state)
{
    (void)state;
    const probe_case cases[] = {
        {"png gray 8", 1, 1, 1, 8, ".png", IMAGE_PNG},
        {"png gray 16", 1, 2, 1, 16, ".png", IMAGE_PNG},
        {"png gray 1-bit", 1, 1, 1, 8, ".png[bitdepth=1]", IMAGE_PNG},
        {"png gray+alpha", 2, 1, 2, 8, ".png", IMAGE_PNG},
        {"png rgb", 3, 1, 3, 8, ".png", IMAGE_PNG},
        {"png rgb 16", 3, 2, 3, 16, ".png", IMAGE_PNG},
        {"png rgba", 4, 1, 4, 8, ".png", IMAGE_PNG},
        {"png palette", 3, 1, 3, 8, ".png[palette]", IMAGE_PNG},
        {"png interlaced", 1, 1, 1, 8, ".png[interlace]", IMAGE_PNG},
        {"jpeg gray", 1, 1, 1, 8, ".jpg", IMAGE_JPEG},
        {"jpeg rgb", 3, 1, 3, 8, ".jpg", IMAGE_JPEG},
        {"jpeg progressive", 3, 1, 3, 8, ".jpg[interlace]", IMAGE_JPEG},
        {"tiff gray 8", 1, 1, 1, 8, ".tif", IMAGE_TIFF},
        {"tiff gray 16", 1, 2, 1, 16, ".tif", IMAGE_TIFF},
        {"tiff gray 8 lzw", 1, 1, 1, 8, ".tif[compression=lzw]", IMAGE_TIFF},
        {"tiff gray 16 deflate", 1, 2, 1, 16, ".tif[compression=deflate]", IMAGE_TIFF},
        {"tiff gray+alpha", 2, 1, 2, 8, ".tif", IMAGE_TIFF},
        /* WebP holds RGB: a gray image is stored as three equal channels */
        {"webp lossy gray", 1, 1, 3, 8, ".webp", IMAGE_WEBP},
        {"webp lossy rgb", 3, 1, 3, 8, ".webp[Q=90]", IMAGE_WEBP},
        {"webp lossless rgb", 3, 1, 3, 8, ".webp[lossless]", IMAGE_WEBP},
        {"webp lossless rgba", 4, 1, 4, 8, ".webp[lossless]", IMAGE_WEBP},
        {"webp lossy rgba (VP8X)", 4, 1, 4, 8, ".webp", IMAGE_WEBP},
        {"jp2 gray 8 lossless", 1, 1, 1, 8, ".jp2[lossless]", IMAGE_JP2},
        {"jp2 gray 8 lossy", 1, 1, 1, 8, ".jp2[Q=40]", IMAGE_JP2},
        {"jp2 gray 16", 1, 2, 1, 16, ".jp2[lossless]", IMAGE_JP2},
        {"jp2 gray+alpha", 2, 1, 2, 8, ".jp2[lossless]", IMAGE_JP2},
        {"jp2 rgb", 3, 1, 3, 8, ".jp2[lossless]", IMAGE_JP2},
        {"jp2 rgba 16", 4, 2, 4, 16, ".jp2[lossless]", IMAGE_JP2},
        /* HEIF is measured as 3 bands: libheif gives RGB, or RGBA with alpha */
        {"heic gray", 1, 1, 3, 8, ".heic", IMAGE_HEIC},
        {"heic rgb lossless", 3, 1, 3, 8, ".heic[lossless]", IMAGE_HEIC},
        {"heic rgba", 4, 1, 3, 8, ".heic", IMAGE_HEIC},
        {"avif rgb", 3, 1, 3, 8, ".avif", IMAGE_AVIF},
        {"avif 12-bit gray", 1, 2, 3, 16, ".avif", IMAGE_AVIF},
        {"gif gray", 1, 1, 3, 8, ".gif", IMAGE_GIF},
        {"gif rgb", 3, 1, 3, 8, ".gif", IMAGE_GIF},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const probe_case *c = &cases[i];
        int w = 37, h = 23;
        size_t n = (size_t)w * h * c->bands_in;
        uint16_t *px = malloc(n * 2);
        assert_non_null(px);
        for (size_t k = 0; k < n; k++) {
            if (c->bytes == 2)
                px[k] = (uint16_t)(k * 97 % 4096);
            else
                ((uint8_t *)px)[k] = (uint8_t)(k * 7);
        }
        blob b = encode_with(raw_image(px, w, h, c->bands_in, c->bytes), c->suffix);
        free(px);
        image_info info;
        ms_err err = {0};
        int rc = image_probe(b.data, b.len, NULL, &info, &err);
        if (rc)
            fail_msg("%s: probe failed: %s", c->what, err.msg);
        assert_int_equal(info.format, c->format);
        assert_int_equal(info.width, w);
        assert_int_equal(info.height, h);
        if (info.bands != c->bands_out || info.bits != c->bits)
            fail_msg("%s: bands %d bits %d, want %d %d", c->what, info.bands, info.bits, c->bands_out, c->bits);
        /* and it decodes and prepares */
        image_prep prep = identity(16);
        float out[3 * 16 * 16];
        image_info info2;
        rc = image_prepare(b.data, b.len, NULL, &prep, out, &info2, &err);
        if (rc)
            fail_msg("%s: prepare failed: %s", c->what, err.msg);
        assert_memory_equal(&info, &info2, sizeof info);
        blob_free(&b);
    }
}

/* A constant image gives the same value everywhere, with the channel's
 * normalisation applied exactly: x = (v - mean[c]) * scale[c]. */
static void test_constant_image_exact_normalisation(void **state)
{
    (void)state;
    const char *suffixes[] = {".png", ".jpg[Q=100]", ".tif", ".png[palette]"};
    image_prep prep = {224, {100.0f, 50.0f, 0.0f}, {1.0f, 2.0f, 0.5f}};
    for (size_t s = 0; s < sizeof suffixes / sizeof suffixes[0]; s++) {
        blob b = encode_with(constant_image(300, 200, 1, 100), suffixes[s]);
        float *out = prepare_ok(&b, &prep, NULL);
        size_t plane = 224 * 224;
        assert_all_equal(out, plane, 0.0f, 0.0f);
        assert_all_equal(out + plane, plane, 100.0f, 0.0f);
        assert_all_equal(out + 2 * plane, plane, 50.0f, 0.0f);
        free(out);
        blob_free(&b);
    }
    /* ImageNet-style values, checked against the hand computation. */
    image_prep imagenet = {8, {123.675f, 116.28f, 103.53f}, {1 / 58.395f, 1 / 57.12f, 1 / 57.375f}};
    blob b = encode_with(constant_image(8, 8, 1, 200), ".png");
    float *out = prepare_ok(&b, &imagenet, NULL);
    for (int c = 0; c < 3; c++)
        assert_all_equal(out + c * 64, 64, (200.0f - imagenet.mean[c]) * imagenet.scale[c], 0.0f);
    free(out);
    blob_free(&b);
}

/* 16-bit: v * 255 / max of the image (not / 65535), rounded. */
static void test_16bit_scaled_by_actual_max(void **state)
{
    (void)state;
    const uint16_t px[4] = {0, 1000, 2000, 4000};
    const float want[4] = {0, 64, 128, 255}; /* 63.75 -> 64, 127.5 -> 128 */
    const char *suffixes[] = {".png", ".tif"};
    for (size_t s = 0; s < 2; s++) {
        blob b = encode_with(raw_image(px, 2, 2, 1, 2), suffixes[s]);
        image_prep prep = identity(2);
        image_info info;
        float *out = prepare_ok(&b, &prep, &info);
        assert_int_equal(info.bits, 16);
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < 4; i++)
                if (out[c * 4 + i] != want[i])
                    fail_msg("%s: channel %d pixel %d is %g, want %g", suffixes[s], c, i, out[c * 4 + i], want[i]);
        free(out);
        blob_free(&b);
    }
    /* An all-zero 16-bit image stays zero (no division by zero). */
    const uint16_t zero[4] = {0};
    blob b = encode_with(raw_image(zero, 2, 2, 1, 2), ".png");
    image_prep prep = identity(2);
    float *out = prepare_ok(&b, &prep, NULL);
    assert_all_equal(out, 12, 0.0f, 0.0f);
    free(out);
    blob_free(&b);
}

/* 8-bit RGB -> Rec.601 luma in PIL's fixed point, as documented. */
static float luma8(unsigned r, unsigned g, unsigned b)
{
    return (float)((19595u * r + 38470u * g + 7471u * b + 32768u) >> 16);
}

/* RGB -> Rec.601 luminance 0.299 R + 0.587 G + 0.114 B, rounded; alpha is
 * ignored (not blended). */
static void test_rgb_luminance_and_alpha(void **state)
{
    (void)state;
    const uint8_t rgb[4][3] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {10, 200, 30}};
    float want[4];
    for (int i = 0; i < 4; i++)
        want[i] = round_half_up(0.299 * rgb[i][0] + 0.587 * rgb[i][1] + 0.114 * rgb[i][2]);
    assert_true(want[0] == 76 && want[1] == 150 && want[2] == 29 && want[3] == 124);

    /* 4096 random colours: exactly the fixed-point formula, which is within
     * half a level of the real-valued luma */
    uint8_t many[64 * 64][3];
    uint32_t seed = 12345;
    for (int i = 0; i < 64 * 64; i++)
        for (int c = 0; c < 3; c++) {
            seed = seed * 1664525u + 1013904223u;
            many[i][c] = (uint8_t)(seed >> 24);
        }
    for (int alpha = 0; alpha < 2; alpha++) {
        uint8_t px[64 * 64 * 4];
        for (int i = 0; i < 64 * 64; i++) {
            memcpy(px + i * (3 + alpha), many[i], 3);
            if (alpha)
                px[i * 4 + 3] = (uint8_t)i;
        }
        blob b = encode_with(raw_image(px, 64, 64, 3 + alpha, 1), ".png");
        image_prep prep = identity(64);
        float *out = prepare_ok(&b, &prep, NULL);
        for (int i = 0; i < 64 * 64; i++) {
            float exact = 0.299f * many[i][0] + 0.587f * many[i][1] + 0.114f * many[i][2];
            if (out[i] != luma8(many[i][0], many[i][1], many[i][2]) || fabsf(out[i] - exact) > 0.5001f)
                fail_msg("colour %d,%d,%d gave %g (luma %g)", many[i][0], many[i][1], many[i][2], out[i], exact);
        }
        free(out);
        blob_free(&b);
    }

    uint8_t rgba[4][4];
    for (int i = 0; i < 4; i++) {
        memcpy(rgba[i], rgb[i], 3);
        rgba[i][3] = (uint8_t)(i * 80); /* fully transparent to nearly opaque */
    }
    struct {
        const void *px;
        int bands;
        const char *suffix;
    } cases[] = {{rgb, 3, ".png"}, {rgba, 4, ".png"}, {rgb, 3, ".tif"}, {rgba, 4, ".tif[compression=lzw]"}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        blob b = encode_with(raw_image(cases[k].px, 2, 2, cases[k].bands, 1), cases[k].suffix);
        image_prep prep = identity(2);
        ms_err err = {0};
        float out[12];
        if (image_prepare(b.data, b.len, NULL, &prep, out, NULL, &err))
            fail_msg("%zu: %s", k, err.msg);
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < 4; i++)
                assert_true(out[c * 4 + i] == want[i]);
        blob_free(&b);
    }
    /* JPEG-compressed RGB TIFF (libvips keeps photometric RGB): lossy, so
     * within a few levels of the same image as a lossless RGB TIFF. */
    uint8_t smooth[16 * 16 * 3];
    for (int i = 0; i < 16 * 16; i++) {
        smooth[3 * i] = (uint8_t)(100 + i % 16 * 4);
        smooth[3 * i + 1] = (uint8_t)(90 + i / 16 * 5);
        smooth[3 * i + 2] = 120;
    }
    blob lossless = encode_with(raw_image(smooth, 16, 16, 3, 1), ".tif");
    blob jpeg_tif = encode_with(raw_image(smooth, 16, 16, 3, 1), ".tif[compression=jpeg,Q=95]");
    image_prep prep16 = identity(16);
    float *plain = prepare_ok(&lossless, &prep16, NULL), *jpeg = prepare_ok(&jpeg_tif, &prep16, NULL);
    for (int i = 0; i < 16 * 16; i++)
        if (fabsf(plain[i] - jpeg[i]) > 4)
            fail_msg("JPEG-compressed TIFF pixel %d: %g against %g", i, jpeg[i], plain[i]);
    free(plain);
    free(jpeg);
    blob_free(&lossless);
    blob_free(&jpeg_tif);

    /* gray+alpha: the gray values pass through unchanged */
    const uint8_t ga[4][2] = {{0, 0}, {60, 255}, {120, 10}, {250, 128}};
    blob b = encode_with(raw_image(ga, 2, 2, 2, 1), ".png");
    image_prep prep = identity(2);
    float *out = prepare_ok(&b, &prep, NULL);
    for (int i = 0; i < 4; i++)
        assert_true(out[i] == ga[i][0] && out[8 + i] == ga[i][0]);
    free(out);
    blob_free(&b);

    /* 16-bit RGB: luminance first, then scaled by the luminance's max */
    const uint16_t rgb16[4][3] = {{65535, 0, 0}, {0, 65535, 0}, {0, 0, 65535}, {1000, 2000, 3000}};
    double y[4], ymax = 0;
    for (int i = 0; i < 4; i++) {
        y[i] = 0.299 * rgb16[i][0] + 0.587 * rgb16[i][1] + 0.114 * rgb16[i][2];
        ymax = fmax(ymax, y[i]);
    }
    const char *suffixes16[] = {".png", ".tif"};
    for (int k = 0; k < 2; k++) {
        b = encode_with(raw_image(rgb16, 2, 2, 3, 2), suffixes16[k]);
        out = prepare_ok(&b, &prep, NULL);
        for (int i = 0; i < 4; i++)
            assert_true(out[i] == round_half_up(y[i] * 255.0 / ymax));
        free(out);
        blob_free(&b);
    }
}

/* PNGs big enough to get the inflate-size check (over 254 KiB of pixel
 * data: noise does not compress) decode, whatever their layout: the check
 * computes the inflated size of each right, interlaced or not. */
static void test_large_pngs_pass_stream_check(void **state)
{
    (void)state;
    const struct {
        int w, h, bands, bytes;
        const char *suffix;
    } cases[] = {
        {1500, 1000, 1, 1, ".png"},
        {800, 400, 1, 2, ".png"},
        {700, 400, 2, 1, ".png[interlace]"},
        {600, 300, 3, 1, ".png[interlace]"},
        {400, 200, 4, 2, ".png"},
        {401, 203, 3, 2, ".png[interlace]"},
        {2400, 1000, 1, 1, ".png[bitdepth=1]"},
        {1200, 900, 3, 1, ".png[palette,bitdepth=4,effort=1]"},
    };
    uint32_t seed = 7;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = (size_t)cases[i].w * cases[i].h * cases[i].bands * cases[i].bytes;
        uint8_t *px = malloc(n);
        assert_non_null(px);
        int one_bit = strstr(cases[i].suffix, "bitdepth=1") != NULL;
        for (size_t k = 0; k < n; k++) {
            seed = seed * 1664525u + 1013904223u;
            px[k] = one_bit ? (seed >> 31 ? 255 : 0) : (uint8_t)(seed >> 24);
        }
        blob b = encode_with(raw_image(px, cases[i].w, cases[i].h, cases[i].bands, cases[i].bytes), cases[i].suffix);
        free(px);
        if (b.len < 300000)
            fail_msg("case %zu: only %zu bytes, under the check's threshold", i, b.len);
        image_prep prep = identity(32);
        float *out = prepare_ok(&b, &prep, NULL);
        free(out);
        blob_free(&b);
    }
}

/* A palette PNG decodes to its colours' luminance. */
static void test_palette_png(void **state)
{
    (void)state;
    /* four flat quadrants of distinct grays: libimagequant keeps them exact */
    uint8_t px[64 * 64];
    for (int yy = 0; yy < 64; yy++)
        for (int xx = 0; xx < 64; xx++)
            px[yy * 64 + xx] = (uint8_t)((yy < 32 ? 0 : 2) + (xx < 32 ? 0 : 1)) * 80;
    blob b = encode_with(raw_image(px, 64, 64, 1, 1), ".png[palette]");
    assert_int_equal(b.data[25], 3); /* IHDR colour type: palette */
    image_prep prep = identity(64);
    float *out = prepare_ok(&b, &prep, NULL);
    for (int i = 0; i < 64 * 64; i++)
        if (fabsf(out[i] - px[i]) > 1.0f)
            fail_msg("pixel %d is %g, want %d", i, out[i], px[i]);
    free(out);
    blob_free(&b);
}

/* Uniform images stay uniform through down- and up-sampling. */
static void test_resize_uniform_stays_uniform(void **state)
{
    (void)state;
    const int sizes[][2] = {{1000, 700}, {1, 1}, {3, 5}, {224, 224}, {225, 223}, {4000, 3}, {2, 1500}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        blob b = encode_with(constant_image(sizes[i][0], sizes[i][1], 1, 77), ".png");
        float *out = prepare_ok(&b, &IDENTITY_224, NULL);
        assert_all_equal(out, 3 * 224 * 224, 77.0f, 0.0f);
        free(out);
        blob_free(&b);
    }
    /* JPEG decoded at a reduced scale (a 2000 px JPEG shrinks on load) */
    blob b = encode_with(constant_image(2000, 1800, 1, 140), ".jpg[Q=100]");
    float *out = prepare_ok(&b, &IDENTITY_224, NULL);
    assert_all_equal(out, 3 * 224 * 224, 140.0f, 1.0f);
    free(out);
    blob_free(&b);
}

/* Output is exactly size x size for awkward input sizes (rounding in the
 * two-step shrink + reduce must not leave it one pixel off). */
static void test_resize_exact_for_odd_sizes(void **state)
{
    (void)state;
    const int sizes[][2] = {{1001, 999}, {1023, 1025}, {447, 449}, {1345, 2011}, {333, 3333},
                            {2999, 7},   {97, 101},    {3001, 2999}, {2048, 1536}};
    const int targets[] = {224, 299, 7, 1};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        blob b = encode_with(constant_image(sizes[i][0], sizes[i][1], 1, 9), ".png");
        for (size_t t = 0; t < sizeof targets / sizeof targets[0]; t++) {
            image_prep prep = identity(targets[t]);
            float *out = prepare_ok(&b, &prep, NULL);
            assert_all_equal(out, 3 * (size_t)targets[t] * targets[t], 9.0f, 0.0f);
            free(out);
        }
        blob_free(&b);
    }
}

/* A 1-pixel checkerboard averages to mid-gray when downsampled with a real
 * antialiasing filter; point sampling would give 0s and 255s. */
static void test_resize_is_antialiased(void **state)
{
    (void)state;
    const int n = 1024;
    uint8_t *px = malloc((size_t)n * n);
    assert_non_null(px);
    for (int yy = 0; yy < n; yy++)
        for (int xx = 0; xx < n; xx++)
            px[yy * n + xx] = ((xx + yy) & 1) ? 255 : 0;
    blob b = encode_with(raw_image(px, n, n, 1, 1), ".png");
    free(px);
    float *out = prepare_ok(&b, &IDENTITY_224, NULL);
    for (int i = 0; i < 224 * 224; i++)
        if (fabsf(out[i] - 127.5f) > 8.0f)
            fail_msg("pixel %d is %g: the checkerboard was not averaged", i, out[i]);
    free(out);
    blob_free(&b);
}

/* The whole image is kept, not cropped, and not transposed: a 400x300
 * image white on its right half and bottom quarter keeps that layout. */
static void test_resize_keeps_geometry(void **state)
{
    (void)state;
    const int w = 400, h = 300;
    uint8_t *px = malloc((size_t)w * h);
    assert_non_null(px);
    for (int yy = 0; yy < h; yy++)
        for (int xx = 0; xx < w; xx++)
            px[yy * w + xx] = (xx >= w / 2 || yy >= h * 3 / 4) ? 255 : 0;
    blob b = encode_with(raw_image(px, w, h, 1, 1), ".png");
    free(px);
    float *out = prepare_ok(&b, &IDENTITY_224, NULL);
    float top_left = out[10 * 224 + 10], top_right = out[10 * 224 + 214];
    float bottom_left = out[220 * 224 + 10], mid_left = out[150 * 224 + 60];
    assert_true(top_left < 2.0f && mid_left < 2.0f);
    assert_true(top_right > 253.0f && bottom_left > 253.0f);
    /* the edge is at the resized position of x = 200 -> 112 */
    assert_true(out[100 * 224 + 108] < 10.0f && out[100 * 224 + 116] > 245.0f);
    free(out);
    blob_free(&b);
}

/* A gradient through the JPEG path (including shrink-on-load) matches the
 * same gradient through PNG to within JPEG's loss. */
static void test_jpeg_matches_png(void **state)
{
    (void)state;
    const int w = 1800, h = 1600;
    uint8_t *px = malloc((size_t)w * h);
    assert_non_null(px);
    for (int yy = 0; yy < h; yy++)
        for (int xx = 0; xx < w; xx++)
            px[yy * w + xx] = (uint8_t)((xx * 255 / (w - 1) + yy * 255 / (h - 1)) / 2);
    const char *jpegs[] = {".jpg[Q=95]", ".jpg[Q=95,interlace]"};
    blob png = encode_with(raw_image(px, w, h, 1, 1), ".png");
    float *ref = prepare_ok(&png, &IDENTITY_224, NULL);
    for (size_t k = 0; k < 2; k++) {
        blob b = encode_with(raw_image(px, w, h, 1, 1), jpegs[k]);
        float *out = prepare_ok(&b, &IDENTITY_224, NULL);
        double worst = 0;
        for (int i = 0; i < 224 * 224; i++)
            worst = fmax(worst, fabs(out[i] - ref[i]));
        if (worst > 3.0)
            fail_msg("%s differs from PNG by %g", jpegs[k], worst);
        free(out);
        blob_free(&b);
    }
    free(ref);
    blob_free(&png);
    free(px);
}

static void test_cmyk_jpeg_rejected(void **state)
{
    (void)state;
    VipsImage *cmyk = NULL;
    VipsImage *im = constant_image(16, 16, 4, 50);
    assert_int_equal(vips_copy(im, &cmyk, "interpretation", VIPS_INTERPRETATION_CMYK, NULL), 0);
    g_object_unref(im);
    blob b = encode_with(cmyk, ".jpg");
    ms_err err = {0};
    float out[3 * 4 * 4];
    image_prep prep = identity(4);
    assert_int_equal(image_prepare(b.data, b.len, NULL, &prep, out, NULL, &err), MS_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "CMYK"));
    uint8_t *thumb = NULL;
    size_t tlen = 0;
    assert_int_equal(image_thumbnail(b.data, b.len, NULL, 64, THUMB_JPEG, &thumb, &tlen, &err), MS_EUNSUPPORTED);
    assert_null(thumb);
    blob_free(&b);
}

/* TIFF MinIsWhite (photometric 0) is inverted on load, like any viewer. */
static void test_tiff_miniswhite(void **state)
{
    (void)state;
    const uint8_t px[4] = {0, 50, 200, 255};
    blob b = encode_with(raw_image(px, 2, 2, 1, 1), ".tif[miniswhite]");
    image_prep prep = identity(2);
    float *out = prepare_ok(&b, &prep, NULL);
    for (int i = 0; i < 4; i++)
        assert_true(out[i] == px[i]);
    free(out);
    blob_free(&b);
}

static void decode_blob_dims(const blob *b, int *w, int *h, int *bands)
{
    VipsImage *im = vips_image_new_from_buffer(b->data, b->len, "", NULL);
    if (!im)
        fail_msg("thumbnail does not decode: %s", vips_error_buffer());
    *w = im->Xsize;
    *h = im->Ysize;
    *bands = im->Bands;
    double avg;
    assert_int_equal(vips_avg(im, &avg, NULL), 0);
    g_object_unref(im);
}

static void test_thumbnails(void **state)
{
    (void)state;
    struct {
        int w, h, longest, want_w, want_h;
    } cases[] = {
        {1000, 500, 256, 256, 128}, {500, 1000, 256, 128, 256}, {100, 50, 256, 100, 50},
        {3000, 2, 256, 256, 1},     {1, 1, 64, 1, 1},           {640, 480, 640, 640, 480},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        blob src = encode_with(constant_image(cases[i].w, cases[i].h, 3, 90), ".png");
        for (int fmt = THUMB_JPEG; fmt <= THUMB_PNG; fmt++) {
            uint8_t *t = NULL;
            size_t tlen = 0;
            ms_err err = {0};
            int rc = image_thumbnail(src.data, src.len, NULL, cases[i].longest, fmt, &t, &tlen, &err);
            if (fmt == THUMB_WEBP && rc == MS_EUNSUPPORTED)
                continue; /* libvips without WebP: said so, nothing returned */
            if (rc)
                fail_msg("thumbnail %zu: %s", i, err.msg);
            if (fmt == THUMB_JPEG)
                assert_true(tlen > 3 && t[0] == 0xff && t[1] == 0xd8);
            else if (fmt == THUMB_PNG)
                assert_true(tlen > 8 && !memcmp(t, "\x89PNG", 4));
            else
                assert_true(tlen > 12 && !memcmp(t, "RIFF", 4) && !memcmp(t + 8, "WEBP", 4));
            blob tb = {t, tlen};
            int w, h, bands;
            decode_blob_dims(&tb, &w, &h, &bands);
            if (w != cases[i].want_w || h != cases[i].want_h)
                fail_msg("thumbnail of %dx%d at %d is %dx%d, want %dx%d", cases[i].w, cases[i].h, cases[i].longest,
                         w, h, cases[i].want_w, cases[i].want_h);
            if (fmt != THUMB_WEBP)
                assert_int_equal(bands, 1); /* 8-bit grayscale */
            free(t);
        }
        blob_free(&src);
    }
    /* bad arguments */
    blob src = encode_with(constant_image(10, 10, 1, 1), ".png");
    uint8_t *t = (uint8_t *)"x";
    size_t tlen = 1;
    ms_err err = {0};
    assert_int_equal(image_thumbnail(src.data, src.len, NULL, 0, THUMB_JPEG, &t, &tlen, &err), MS_EINVAL);
    assert_null(t);
    assert_int_equal(image_thumbnail(src.data, src.len, NULL, 100000, THUMB_JPEG, &t, &tlen, &err), MS_EINVAL);
    assert_int_equal(image_thumbnail(src.data, src.len, NULL, 64, (thumb_format)7, &t, &tlen, &err), MS_EINVAL);
    blob_free(&src);
}

/* The PNG preview is lossless: at full size it holds exactly the gray
 * image the model's preparation starts from. */
static void test_png_preview_is_lossless(void **state)
{
    (void)state;
    uint8_t px[37 * 23 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)(i * 7 + i / 111);
    blob src = encode_with(raw_image(px, 37, 23, 3, 1), ".png");
    uint8_t *t = NULL;
    size_t tlen = 0;
    ms_err err = {0};
    assert_int_equal(image_thumbnail(src.data, src.len, NULL, 37, THUMB_PNG, &t, &tlen, &err), 0);
    VipsImage *back = vips_image_new_from_buffer(t, tlen, "", NULL);
    assert_non_null(back);
    assert_int_equal(back->Bands, 1);
    size_t n = 0;
    uint8_t *gray = vips_image_write_to_memory(back, &n);
    assert_int_equal(n, 37 * 23);
    for (size_t i = 0; i < 37 * 23; i++) {
        const uint8_t *p = px + 3 * i;
        uint8_t want = (uint8_t)((19595u * p[0] + 38470u * p[1] + 7471u * p[2] + 32768u) >> 16);
        if (gray[i] != want)
            fail_msg("pixel %zu: %u, want %u", i, gray[i], want);
    }
    g_free(gray);
    g_object_unref(back);
    free(t);
    blob_free(&src);
}

/* A noisy gradient, so that resizing and JPEG coding have real detail. */
static VipsImage *textured_image(int w, int h, int bands, int bytes_per_sample)
{
    size_t n = (size_t)w * h * bands;
    uint16_t *px16 = malloc(n * sizeof *px16);
    uint8_t *px8 = malloc(n);
    assert_non_null(px16);
    assert_non_null(px8);
    uint32_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        unsigned v = (unsigned)((i / bands) % (size_t)w * 200 / (size_t)w) + (x >> 27);
        px8[i] = (uint8_t)v;
        px16[i] = (uint16_t)(v * 250);
    }
    VipsImage *im = bytes_per_sample == 2 ? raw_image(px16, w, h, bands, 2) : raw_image(px8, w, h, bands, 1);
    free(px16);
    free(px8);
    return im;
}

/* The ingest call gives exactly what image_prepare and image_thumbnail give
 * separately: PNG (gray, 16-bit, RGBA), TIFF, and JPEGs whose DCT
 * scale-down is the same for both sizes and differs between them. */
static void test_prepare_with_thumbnail_matches_separate_calls(void **state)
{
    (void)state;
    struct {
        int w, h, bands, bytes;
        const char *suffix;
    } cases[] = {
        {1024, 1024, 1, 1, ".png"}, {700, 500, 1, 2, ".png"}, {300, 400, 4, 1, ".png"},
        {640, 480, 1, 1, ".tif"},   {600, 600, 3, 1, ".jpg[Q=90]"}, {2000, 1800, 1, 1, ".jpg[Q=90]"},
        {120, 90, 1, 1, ".png"},
    };
    image_prep prep = {224, {127.5f, 127.5f, 127.5f}, {1 / 127.5f, 1 / 127.5f, 1 / 127.5f}};
    size_t n = 3 * 224 * 224;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    assert_non_null(a);
    assert_non_null(b);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        blob src = encode_with(textured_image(cases[i].w, cases[i].h, cases[i].bands, cases[i].bytes),
                               cases[i].suffix);
        ms_err err = {0};
        image_info ia, ib;
        uint8_t *ta = NULL, *tb = NULL;
        size_t la = 0, lb = 0;
        if (image_prepare(src.data, src.len, NULL, &prep, a, &ia, &err) ||
            image_thumbnail(src.data, src.len, NULL, 256, THUMB_JPEG, &ta, &la, &err))
            fail_msg("case %zu, separate calls: %s", i, err.msg);
        if (image_prepare_with_thumbnail(src.data, src.len, NULL, &prep, b, &ib, 256, THUMB_JPEG, &tb, &lb, &err))
            fail_msg("case %zu, one call: %s", i, err.msg);
        assert_memory_equal(a, b, n * sizeof *a);
        assert_int_equal(ia.width, ib.width);
        assert_int_equal(ia.format, ib.format);
        assert_int_equal(la, lb);
        assert_memory_equal(ta, tb, la);
        free(ta);
        free(tb);
        blob_free(&src);
    }
    /* errors: nothing handed back */
    blob src = encode_with(constant_image(64, 64, 1, 7), ".png");
    ms_err err = {0};
    uint8_t *t = (uint8_t *)"x";
    size_t tlen = 1;
    assert_int_equal(image_prepare_with_thumbnail(src.data, src.len / 2, NULL, &prep, b, NULL, 256, THUMB_JPEG, &t,
                                                  &tlen, &err),
                     MS_EFORMAT);
    assert_null(t);
    assert_int_equal(tlen, 0);
    assert_int_equal(image_prepare_with_thumbnail(src.data, src.len, NULL, &prep, b, NULL, 0, THUMB_JPEG, &t, &tlen,
                                                  &err),
                     MS_EINVAL);
    assert_int_equal(image_prepare_with_thumbnail(src.data, src.len, NULL, &prep, b, NULL, 64, THUMB_JPEG, NULL,
                                                  &tlen, &err),
                     MS_EINVAL);
    blob_free(&src);
    free(a);
    free(b);
}

static void test_bad_prep_arguments(void **state)
{
    (void)state;
    blob b = encode_with(constant_image(10, 10, 1, 1), ".png");
    float out[3];
    ms_err err = {0};
    image_prep zero = identity(0);
    assert_int_equal(image_prepare(b.data, b.len, NULL, &zero, out, NULL, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "size"));
    image_prep one = identity(1);
    one.scale[1] = NAN;
    assert_int_equal(image_prepare(b.data, b.len, NULL, &one, out, NULL, &err), MS_EINVAL);
    assert_int_equal(image_prepare(b.data, b.len, NULL, NULL, out, NULL, &err), MS_EINVAL);
    assert_int_equal(image_prepare(b.data, b.len, NULL, &one, NULL, NULL, &err), MS_EINVAL);
    blob_free(&b);
}

/* image_prepare_timed: same output as image_prepare, and stage times that
 * are real (non-zero decode and resize, all inside the call's wall time). */
static void test_timed_stages(void **state)
{
    (void)state;
    const int n = 1024;
    uint8_t *px = malloc((size_t)n * n);
    assert_non_null(px);
    for (int i = 0; i < n * n; i++)
        px[i] = (uint8_t)((i * 2654435761u) >> 24); /* noise: not trivially compressible */
    blob b = encode_with(raw_image(px, n, n, 1, 1), ".png");
    free(px);
    float *want = prepare_ok(&b, &IDENTITY_224, NULL);
    float *got = malloc(sizeof(float) * 3 * 224 * 224);
    assert_non_null(got);
    image_timing t;
    ms_err err = {0};
    uint64_t t0 = ms_now_ns();
    assert_int_equal(image_prepare_timed(b.data, b.len, NULL, &IDENTITY_224, got, NULL, &t, &err), 0);
    uint64_t wall = ms_now_ns() - t0;
    assert_memory_equal(want, got, sizeof(float) * 3 * 224 * 224);
    assert_true(t.decode_ns > 0 && t.resize_ns > 0 && t.normalise_ns > 0);
    /* No ordering between the stages is asserted: which one is slower depends on the build
     * (sanitisers, coverage) and on what else the machine runs; `medsearch bench decode` reports
     * them. */
    assert_true(t.decode_ns + t.resize_ns + t.normalise_ns <= wall);
    free(want);
    free(got);
    blob_free(&b);
}

/* Concurrent calls give the same bytes as sequential ones. */
typedef struct thread_job {
    const blob *images;
    int n_images;
    float *const *want;
    int failures;
} thread_job;

static void *thread_main(void *arg)
{
    thread_job *job = arg;
    float *out = malloc(sizeof(float) * 3 * 64 * 64);
    image_prep prep = identity(64);
    /* Every call makes and frees its own resize operations (and their Orc
     * programs), as concurrent ingest and search workers do. */
    for (int round = 0; round < 25 && out; round++)
        for (int i = 0; i < job->n_images; i++) {
            ms_err err;
            uint8_t *thumb = NULL;
            size_t thumb_len = 0;
            if (image_prepare(job->images[i].data, job->images[i].len, NULL, &prep, out, NULL, &err) ||
                memcmp(out, job->want[i], sizeof(float) * 3 * 64 * 64))
                job->failures++;
            if (image_prepare_with_thumbnail(job->images[i].data, job->images[i].len, NULL, &prep, out, NULL,
                                             40 + round, THUMB_JPEG, &thumb, &thumb_len, &err) ||
                memcmp(out, job->want[i], sizeof(float) * 3 * 64 * 64))
                job->failures++;
            free(thumb);
        }
    if (!out)
        job->failures++;
    free(out);
    return NULL;
}

static void test_thread_safety(void **state)
{
    (void)state;
    enum { N_IMAGES = 4, N_THREADS = 4 };
    blob images[N_IMAGES];
    float *want[N_IMAGES];
    const char *suffixes[N_IMAGES] = {".png", ".jpg", ".tif", ".png[palette]"};
    image_prep prep = identity(64);
    for (int i = 0; i < N_IMAGES; i++) {
        uint8_t *px = malloc(300 * 260);
        assert_non_null(px);
        for (int k = 0; k < 300 * 260; k++)
            px[k] = (uint8_t)(k % 300 + i * 17);
        images[i] = encode_with(raw_image(px, 300, 260, 1, 1), suffixes[i]);
        free(px);
        want[i] = prepare_ok(&images[i], &prep, NULL);
    }
    pthread_t th[N_THREADS];
    thread_job jobs[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
        jobs[t] = (thread_job){images, N_IMAGES, want, 0};
        assert_int_equal(pthread_create(&th[t], NULL, thread_main, &jobs[t]), 0);
    }
    for (int t = 0; t < N_THREADS; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(jobs[t].failures, 0);
    }
    for (int i = 0; i < N_IMAGES; i++) {
        free(want[i]);
        blob_free(&images[i]);
    }
}

/* The caller may free or overwrite its buffer after a call: nothing of it
 * is kept (libvips' operation cache must not serve a stale decode). */
static void test_buffer_reuse(void **state)
{
    (void)state;
    blob a = encode_with(constant_image(40, 40, 1, 10), ".png");
    blob c = encode_with(constant_image(40, 40, 1, 200), ".png");
    assert_int_equal(a.len, c.len);
    uint8_t *buf = malloc(a.len);
    assert_non_null(buf);
    image_prep prep = identity(8);
    float out[3 * 64];
    ms_err err;
    for (int round = 0; round < 3; round++) {
        memcpy(buf, a.data, a.len);
        assert_int_equal(image_prepare(buf, a.len, NULL, &prep, out, NULL, &err), 0);
        assert_all_equal(out, 192, 10.0f, 0.0f);
        memcpy(buf, c.data, c.len);
        assert_int_equal(image_prepare(buf, c.len, NULL, &prep, out, NULL, &err), 0);
        assert_all_equal(out, 192, 200.0f, 0.0f);
    }
    free(buf);
    /* and a freed buffer is never read again (ASan would say so) */
    for (int round = 0; round < 3; round++) {
        uint8_t *tmp = malloc(a.len);
        assert_non_null(tmp);
        memcpy(tmp, round % 2 ? c.data : a.data, a.len);
        assert_int_equal(image_prepare(tmp, a.len, NULL, &prep, out, NULL, &err), 0);
        free(tmp);
    }
    blob_free(&a);
    blob_free(&c);
}

/* ---- the real X-rays of $MEDSEARCH_SHARED/data ---- */

static const char *shared_data(void)
{
    static char path[4096];
    const char *root = getenv("MEDSEARCH_SHARED");
    if (!root || !*root)
        return NULL;
    snprintf(path, sizeof path, "%s/data", root);
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode) ? path : NULL;
}

static int read_file(const char *path, blob *b)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    b->data = g_malloc(n > 0 ? (size_t)n : 1);
    b->len = fread(b->data, 1, n > 0 ? (size_t)n : 0, f) ;
    fclose(f);
    return (long)b->len == n ? 0 : -1;
}

/* Prepares every `every`-th file of data/<folder>/images; returns how many. */
static int prepare_folder(const char *data, const char *folder, int every)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/%s/images", data, folder);
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    if (n < 0)
        fail_msg("cannot list %s", dir);
    int done = 0;
    float *out = malloc(sizeof(float) * 3 * 224 * 224);
    assert_non_null(out);
    image_prep prep = {224, {123.675f, 116.28f, 103.53f}, {1 / 58.395f, 1 / 57.12f, 1 / 57.375f}};
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        if (name[0] != '.' && i % every == 0) {
            char path[8400];
            snprintf(path, sizeof path, "%s/%s", dir, name);
            blob b;
            if (read_file(path, &b))
                fail_msg("cannot read %s", path);
            ms_err err = {0};
            image_info info;
            if (image_prepare(b.data, b.len, NULL, &prep, out, &info, &err))
                fail_msg("%s: %s", path, err.msg);
            /* a real X-ray is not flat, and every value is in range */
            float lo = INFINITY, hi = -INFINITY;
            for (int k = 0; k < 224 * 224; k++) {
                lo = fminf(lo, out[k]);
                hi = fmaxf(hi, out[k]);
            }
            if (!(hi - lo > 0.5f) || lo < (0 - 123.675f) / 58.395f - 1e-4f || hi > (255 - 123.675f) / 58.395f + 1e-4f)
                fail_msg("%s: implausible range %g..%g", path, lo, hi);
            uint8_t *t = NULL;
            size_t tlen = 0;
            if (image_thumbnail(b.data, b.len, NULL, 256, THUMB_JPEG, &t, &tlen, &err))
                fail_msg("%s: thumbnail: %s", path, err.msg);
            free(t);
            blob_free(&b);
            done++;
        }
        free(names[i]);
    }
    free(names);
    free(out);
    return done;
}

static void test_real_xrays(void **state)
{
    (void)state;
    const char *data = shared_data();
    if (!data) {
        print_message("skip: MEDSEARCH_SHARED not set or has no data/ folder; real X-ray test not run\n");
        skip();
    }
    assert_int_equal(prepare_folder(data, "nih_cxr14_fullres", 1), 4);
    assert_true(prepare_folder(data, "covid_chestxray_2020", 1) >= 90);
    assert_true(prepare_folder(data, "nih_cxr14_64px", 25) >= 25);
    assert_true(prepare_folder(data, "kermany_pneumonia_224", 150) >= 25);
}

/* The shared DICOM samples: the same radiograph as JPEG Baseline and
 * decompressed gives the same pixels; the MONOCHROME1 copy (same pixel
 * data, one header byte changed) is its negative; the big-endian CT reads;
 * the patient and study attributes come out. */
static float *prepare_dicom_native(const char *data, const char *name, int size, image_info *info)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/dicom/%s", data, name);
    blob b;
    if (read_file(path, &b))
        fail_msg("cannot read %s", path);
    float *out = malloc(sizeof(float) * 3 * (size_t)size * (size_t)size);
    assert_non_null(out);
    ms_err err = {0};
    image_prep prep = identity(size);
    if (image_prepare(b.data, b.len, NULL, &prep, out, info, &err))
        fail_msg("%s: %s", name, err.msg);
    uint8_t *t = NULL;
    size_t tlen = 0;
    assert_int_equal(image_thumbnail(b.data, b.len, NULL, 64, THUMB_JPEG, &t, &tlen, &err), 0);
    assert_true(tlen > 100);
    free(t);
    blob_free(&b);
    return out;
}

static void test_dicom_shared_files(void **state)
{
    (void)state;
    const char *data = shared_data();
    if (!data) {
        print_message("skip: MEDSEARCH_SHARED not set; DICOM test not run\n");
        skip();
    }
    image_info info;
    const size_t n = 1024 * 1024;
    float *jpeg = prepare_dicom_native(data, "siim_cxr_pa_jpegbaseline.dcm", 1024, &info);
    assert_int_equal(info.format, IMAGE_DICOM);
    assert_int_equal(info.width, 1024);
    assert_int_equal(info.bits, 8);
    float *plain = prepare_dicom_native(data, "siim_cxr_pa_uncompressed_evrle.dcm", 1024, &info);
    float *mono1 = prepare_dicom_native(data, "siim_cxr_pa_jpegbaseline_monochrome1.dcm", 1024, &info);
    float lo = 255, hi = 0;
    for (size_t i = 0; i < n; i++) {
        if (jpeg[i] != plain[i] || mono1[i] != 255 - jpeg[i])
            fail_msg("pixel %zu: JPEG %g, uncompressed %g, MONOCHROME1 %g", i, jpeg[i], plain[i], mono1[i]);
        lo = jpeg[i] < lo ? jpeg[i] : lo;
        hi = jpeg[i] > hi ? jpeg[i] : hi;
    }
    assert_true(hi - lo > 200); /* a radiograph, not a flat frame */
    free(jpeg);
    free(plain);
    free(mono1);
    float *ct = prepare_dicom_native(data, "ct_abdomen_bigendian_not_cxr.dcm", 512, &info);
    assert_int_equal(info.height, 512);
    assert_int_equal(info.bits, 16);
    free(ct);

    char path[4400];
    snprintf(path, sizeof path, "%s/dicom/siim_cxr_pa_jpegbaseline.dcm", data);
    blob b;
    assert_int_equal(read_file(path, &b), 0);
    image_dicom_meta m;
    ms_err err = {0};
    assert_int_equal(image_dicom_metadata(b.data, b.len, &m, &err), 0);
    assert_string_equal(m.patient_id, "16d7f894-55d7-4d95-8957-d18987f0e981");
    assert_int_equal(m.sex, 'M');
    assert_int_equal(m.age, 62);
    assert_string_equal(m.view, "PA");
    assert_string_equal(m.study_date, "1901-01-01");
    assert_string_equal(m.modality, "CR");
    assert_string_equal(m.body_part, "CHEST");
    blob_free(&b);
}

/* A palette TIFF (libvips does not write one; PIL does) gives exactly the
 * gray of the same palette image as PNG. */
static void test_palette_tiff(void **state)
{
    (void)state;
    if (system("/usr/bin/python3 -c 'import PIL.Image' >/dev/null 2>&1") != 0) {
        print_message("skip: /usr/bin/python3 has no PIL; no palette TIFF to read\n");
        skip();
    }
    char dir[] = "/tmp/medsearch-tiff-XXXXXX", cmd[1024];
    assert_non_null(mkdtemp(dir));
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c 'import sys; from PIL import Image\n"
             "im = Image.new(\"RGB\", (32, 32))\n"
             "im.putdata([(100 + 3 * (i %% 32), 90 + 4 * (i // 32), 120 + i %% 7) for i in range(1024)])\n"
             "d = sys.argv[1]; p = im.convert(\"P\"); p.save(d + \"/pal.tif\"); p.save(d + \"/pal.png\")\n"
             "assert Image.open(d + \"/pal.tif\").tag_v2[262] == 3' %s",
             dir);
    assert_int_equal(system(cmd), 0);
    const char *names[2] = {"pal.png", "pal.tif"};
    float *out[2];
    image_prep prep = identity(32);
    for (int k = 0; k < 2; k++) {
        char path[256];
        snprintf(path, sizeof path, "%s/%s", dir, names[k]);
        blob b;
        assert_int_equal(read_file(path, &b), 0);
        out[k] = prepare_ok(&b, &prep, NULL);
        blob_free(&b);
        unlink(path);
    }
    rmdir(dir);
    for (int i = 0; i < 32 * 32; i++)
        if (out[0][i] != out[1][i])
            fail_msg("palette TIFF pixel %d: %g against the palette PNG's %g", i, out[1][i], out[0][i]);
    free(out[0]);
    free(out[1]);
}

/* Our 224 px preparation against PIL's LANCZOS resize of the same file (an
 * independent implementation of the same filter): close, pixel for pixel. */
static void test_matches_pil_lanczos(void **state)
{
    (void)state;
    const char *data = shared_data();
    if (!data) {
        print_message("skip: MEDSEARCH_SHARED not set; PIL comparison not run\n");
        skip();
    }
    if (system("/usr/bin/python3 -c 'import PIL.Image' >/dev/null 2>&1") != 0) {
        print_message("skip: /usr/bin/python3 has no PIL; PIL comparison not run\n");
        skip();
    }
    const char *files[] = {"nih_cxr14_fullres/images/00000001_000.png", "nih_cxr14_fullres/images/00027426_000.png",
                           "covid_chestxray_2020/images/01E392EE-69F9-4E33-BFCE-E5C968654078.jpeg"};
    for (size_t f = 0; f < 3; f++) {
        char path[4400], cmd[9000];
        snprintf(path, sizeof path, "%s/%s", data, files[f]);
        blob b;
        if (read_file(path, &b)) {
            print_message("skip: %s is missing\n", path);
            continue;
        }
        snprintf(cmd, sizeof cmd,
                 "/usr/bin/python3 -c 'import sys; from PIL import Image; "
                 "im = Image.open(sys.argv[1]).convert(\"L\").resize((224, 224), Image.LANCZOS); "
                 "sys.stdout.buffer.write(im.tobytes())' '%s'",
                 path);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        uint8_t pil[224 * 224];
        size_t got = fread(pil, 1, sizeof pil, p);
        assert_int_equal(pclose(p), 0);
        assert_int_equal(got, sizeof pil);
        float *out = prepare_ok(&b, &IDENTITY_224, NULL);
        double sum = 0, worst = 0;
        for (int i = 0; i < 224 * 224; i++) {
            double d = fabs(out[i] - pil[i]);
            sum += d;
            worst = fmax(worst, d);
        }
        print_message("%s: mean |ours - PIL| = %.3f, max = %.0f\n", files[f], sum / (224 * 224), worst);
        assert_true(sum / (224 * 224) < 1.5);
        assert_true(worst <= 40);
        free(out);
        blob_free(&b);
    }
}

static void test_version_and_threads(void **state)
{
    (void)state;
    const char *v = image_library_version();
    assert_non_null(v);
    assert_true(!strncmp(v, "libvips 8.", 10));
    /* more libvips workers: the same pixels, and errors still come back */
    blob b = encode_with(constant_image(900, 700, 3, 123), ".jpg[Q=100]");
    float *one = prepare_ok(&b, &IDENTITY_224, NULL);
    image_set_threads(4);
    float *four = prepare_ok(&b, &IDENTITY_224, NULL);
    assert_memory_equal(one, four, sizeof(float) * 3 * 224 * 224);
    ms_err err = {0};
    for (size_t cut = b.len / 2; cut < b.len - 2; cut += 97)
        assert_int_equal(image_prepare(b.data, cut, NULL, &IDENTITY_224, four, NULL, &err), MS_EFORMAT);
    uint8_t *t = NULL;
    size_t tlen;
    assert_int_equal(image_thumbnail(b.data, b.len, NULL, 128, THUMB_JPEG, &t, &tlen, &err), 0);
    free(t);
    image_set_threads(1);
    free(one);
    free(four);
    blob_free(&b);
}

static void test_needs_init(void **state)
{
    (void)state;
    /* Runs first, before the group's image_init. */
    ms_err err = {0};
    float out[3];
    image_prep prep = identity(1);
    const uint8_t png[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    assert_int_equal(image_prepare(png, sizeof png, NULL, &prep, out, NULL, &err), MS_EINTERNAL);
    assert_non_null(strstr(err.msg, "image_init"));
    assert_int_equal(image_init(1, &err), 0);
    assert_int_equal(image_init(0, &err), 0); /* idempotent */
}

int main(void)
{
    const struct CMUnitTest before_init[] = {cmocka_unit_test(test_needs_init)};
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sniff_and_names),
        cmocka_unit_test(test_probe_every_format),
        cmocka_unit_test(test_constant_image_exact_normalisation),
        cmocka_unit_test(test_16bit_scaled_by_actual_max),
        cmocka_unit_test(test_rgb_luminance_and_alpha),
        cmocka_unit_test(test_palette_png),
        cmocka_unit_test(test_large_pngs_pass_stream_check),
        cmocka_unit_test(test_resize_uniform_stays_uniform),
        cmocka_unit_test(test_resize_exact_for_odd_sizes),
        cmocka_unit_test(test_resize_is_antialiased),
        cmocka_unit_test(test_resize_keeps_geometry),
        cmocka_unit_test(test_jpeg_matches_png),
        cmocka_unit_test(test_cmyk_jpeg_rejected),
        cmocka_unit_test(test_tiff_miniswhite),
        cmocka_unit_test(test_thumbnails),
        cmocka_unit_test(test_png_preview_is_lossless),
        cmocka_unit_test(test_prepare_with_thumbnail_matches_separate_calls),
        cmocka_unit_test(test_bad_prep_arguments),
        cmocka_unit_test(test_timed_stages),
        cmocka_unit_test(test_thread_safety),
        cmocka_unit_test(test_buffer_reuse),
        cmocka_unit_test(test_version_and_threads),
        cmocka_unit_test(test_real_xrays),
        cmocka_unit_test(test_dicom_shared_files),
        cmocka_unit_test(test_palette_tiff),
        cmocka_unit_test(test_matches_pil_lanczos),
    };
    int failed = cmocka_run_group_tests_name("image before init", before_init, NULL, NULL);
    failed += cmocka_run_group_tests_name("image", tests, setup, NULL);
    return failed ? 1 : 0;
}
