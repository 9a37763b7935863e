/*
 * test_image_dicom.c - DICOM files built byte by byte: each transfer
 * syntax, pixel layout and display-pipeline branch against values worked
 * out here by hand, the metadata, the refusals, and hostile files
 * (truncated at every length, lying lengths, nesting bombs, random
 * mutations) that must end in a clear error, never a crash or a hang;
 * and MedSearch's own JPEG decoders (lossless, 12-bit sequential DCT)
 * against encoders written here, in DICOM frames and standalone files.
 * tests/e2e/dicom.sh checks the same against pydicom's decoding.
 */
#include <math.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <charls/charls.h>
#include <cmocka.h>
#include <libdeflate.h>
#include <openjpeg.h>
#include <vips/vips.h>

#include "image/image.h"
#include "image/dicom.h"
#include "image/internal.h"
#include "image_test_util.h"

static uint64_t rng_state = 0x2545f4914f6cdd1du;
static uint64_t rng(void)
{
    return xorshift64(&rng_state);
}

/* ---- a DICOM writer ---- */

typedef struct dcm {
    uint8_t *b;
    size_t n, cap;
    int explicit_vr, be;
} dcm;

static void put(dcm *d, const void *p, size_t n)
{
    if (d->n + n > d->cap) {
        d->cap = (d->n + n) * 2 + 256;
        d->b = realloc(d->b, d->cap);
        assert_non_null(d->b);
    }
    memcpy(d->b + d->n, p, n);
    d->n += n;
}

static void put16(dcm *d, unsigned v, int be)
{
    uint8_t b[2] = {(uint8_t)(be ? v >> 8 : v), (uint8_t)(be ? v : v >> 8)};
    put(d, b, 2);
}

static void put32(dcm *d, uint32_t v, int be)
{
    put16(d, be ? v >> 16 : v & 0xffff, be);
    put16(d, be ? v & 0xffff : v >> 16, be);
}

static int is_long_vr(const char *vr)
{
    return strstr("OB OD OF OL OV OW SQ SV UC UN UR UT UV", vr) != NULL;
}

/* An element header in the writer's syntax; vr NULL for items. */
static void header(dcm *d, unsigned g, unsigned e, const char *vr, uint32_t len)
{
    int be = d->be && g != 0x0002, explicit_vr = d->explicit_vr || g == 0x0002;
    put16(d, g, be);
    put16(d, e, be);
    if (!vr || !explicit_vr) {
        put32(d, len, be);
    } else if (is_long_vr(vr)) {
        put(d, vr, 2);
        put16(d, 0, be);
        put32(d, len, be);
    } else {
        put(d, vr, 2);
        put16(d, len, be);
    }
}

static void el(dcm *d, unsigned g, unsigned e, const char *vr, const void *val, uint32_t len)
{
    header(d, g, e, vr, len);
    put(d, val, len);
}

/* A text value, padded to an even length with a space (UI with a NUL). */
static void el_text(dcm *d, unsigned g, unsigned e, const char *vr, const char *s)
{
    size_t n = strlen(s);
    char buf[256];
    memcpy(buf, s, n);
    if (n % 2)
        buf[n++] = strcmp(vr, "UI") ? ' ' : '\0';
    el(d, g, e, vr, buf, (uint32_t)n);
}

static void el_us(dcm *d, unsigned g, unsigned e, unsigned v)
{
    header(d, g, e, "US", 2);
    put16(d, v, d->be);
}

/* Preamble, "DICM" and the file meta group with the transfer syntax. */
static dcm dcm_begin(const char *ts, int explicit_vr, int be)
{
    dcm d = {0};
    uint8_t pre[128] = {0};
    put(&d, pre, sizeof pre);
    put(&d, "DICM", 4);
    el_text(&d, 0x0002, 0x0010, "UI", ts);
    d.explicit_vr = explicit_vr;
    d.be = be;
    return d;
}

#define TS_IMPLICIT "1.2.840.10008.1.2"
#define TS_EXPLICIT "1.2.840.10008.1.2.1"
#define TS_BIG "1.2.840.10008.1.2.2"
#define TS_RLE "1.2.840.10008.1.2.5"
#define TS_DEFLATED "1.2.840.10008.1.2.1.99"

/* The image attributes of a w x h monochrome image. */
static void image_attrs(dcm *d, int w, int h, int alloc, int stored, int high, int is_signed, const char *photo)
{
    el_us(d, 0x0028, 0x0002, 1);
    el_text(d, 0x0028, 0x0004, "CS", photo);
    el_us(d, 0x0028, 0x0010, (unsigned)h);
    el_us(d, 0x0028, 0x0011, (unsigned)w);
    el_us(d, 0x0028, 0x0100, (unsigned)alloc);
    el_us(d, 0x0028, 0x0101, (unsigned)stored);
    el_us(d, 0x0028, 0x0102, (unsigned)high);
    el_us(d, 0x0028, 0x0103, (unsigned)is_signed);
}

/* The image attributes of a w x h 8-bit colour image. */
static void colour_attrs(dcm *d, int w, int h, const char *photo, int planar)
{
    el_us(d, 0x0028, 0x0002, 3);
    el_text(d, 0x0028, 0x0004, "CS", photo);
    el_us(d, 0x0028, 0x0006, (unsigned)planar);
    el_us(d, 0x0028, 0x0010, (unsigned)h);
    el_us(d, 0x0028, 0x0011, (unsigned)w);
    el_us(d, 0x0028, 0x0100, 8);
}

/* Native pixel data of 16-bit words. */
static void pixels16(dcm *d, const uint16_t *v, size_t n)
{
    header(d, 0x7fe0, 0x0010, "OW", (uint32_t)(2 * n));
    for (size_t i = 0; i < n; i++)
        put16(d, v[i], d->be);
}

static void pixels8(dcm *d, const uint8_t *v, size_t n)
{
    header(d, 0x7fe0, 0x0010, "OB", (uint32_t)(n + n % 2));
    put(d, v, n);
    if (n % 2)
        put(d, "", 1);
}

/* Decodes d at its own size (w x w) and returns the gray levels. */
static void gray_of(const dcm *d, int w, uint8_t *out)
{
    float *t = malloc(sizeof(float) * 3 * (size_t)w * (size_t)w);
    assert_non_null(t);
    ms_err err = {0};
    image_prep prep = {w, {0, 0, 0}, {1, 1, 1}};
    if (image_prepare(d->b, d->n, NULL, &prep, t, NULL, &err))
        fail_msg("prepare failed: %s", err.msg);
    for (int i = 0; i < w * w; i++)
        out[i] = (uint8_t)t[i];
    free(t);
}

static int prepare_code(const uint8_t *b, size_t n, ms_err *err)
{
    float t[3 * 4 * 4];
    image_prep prep = {4, {0, 0, 0}, {1, 1, 1}};
    return image_prepare(b, n, NULL, &prep, t, NULL, err);
}

static void expect_refused(const dcm *d, int code, const char *words)
{
    ms_err err = {0};
    int rc = prepare_code(d->b, d->n, &err);
    if (rc != code || !strstr(err.msg, words))
        fail_msg("expected %d \"%s\", got %d \"%s\"", code, words, rc, err.msg);
}

/* ---- pixel layouts and syntaxes ---- */

/* 12 bits stored in 16, no window: the frame's range becomes 0..255. */
static const uint16_t RAMP12[4] = {100, 1100, 2100, 4095};
static const uint8_t RAMP12_GRAY[4] = {0, 64, 128, 255}; /* (v - 100) * 255 / 3995, rounded */

static dcm ramp12(const char *ts, int explicit_vr, int be)
{
    dcm d = dcm_begin(ts, explicit_vr, be);
    el_text(&d, 0x0008, 0x0060, "CS", "DX");
    image_attrs(&d, 2, 2, 16, 12, 11, 0, "MONOCHROME2");
    pixels16(&d, RAMP12, 4);
    return d;
}

static void test_syntaxes_give_the_same_pixels(void **state)
{
    (void)state;
    struct {
        const char *ts;
        int explicit_vr, be;
    } cases[] = {{TS_IMPLICIT, 0, 0}, {TS_EXPLICIT, 1, 0}, {TS_BIG, 1, 1}};
    for (size_t i = 0; i < 3; i++) {
        dcm d = ramp12(cases[i].ts, cases[i].explicit_vr, cases[i].be);
        uint8_t g[4];
        gray_of(&d, 2, g);
        assert_memory_equal(g, RAMP12_GRAY, 4);
        image_info info;
        ms_err err = {0};
        assert_int_equal(image_probe(d.b, d.n, NULL, &info, &err), 0);
        assert_int_equal(info.format, IMAGE_DICOM);
        assert_int_equal(info.width, 2);
        assert_int_equal(info.bits, 16);
        assert_string_equal(image_format_mime(info.format), "application/dicom");
        free(d.b);
    }
}

static void test_high_bit_and_sign(void **state)
{
    (void)state;
    /* 12 bits stored in the top of 16 (high bit 15): the low 4 bits are
     * not part of the value and are set to noise here. */
    dcm d = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&d, 2, 2, 16, 12, 15, 0, "MONOCHROME2");
    uint16_t shifted[4];
    for (int i = 0; i < 4; i++)
        shifted[i] = (uint16_t)(RAMP12[i] << 4 | (i * 5 & 15));
    pixels16(&d, shifted, 4);
    uint8_t g[4];
    gray_of(&d, 2, g);
    assert_memory_equal(g, RAMP12_GRAY, 4);
    free(d.b);

    /* 12-bit two's complement in 16 bits, with junk in the unused top bits:
     * -2048 (0x800), -1 (0xfff), 0, 2047; the range maps to 0..255. */
    d = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&d, 2, 2, 16, 12, 11, 1, "MONOCHROME2");
    uint16_t sv[4] = {0xf800, 0x0fff, 0xa000, 0x07ff};
    pixels16(&d, sv, 4);
    gray_of(&d, 2, g);
    /* (v + 2048) * 255 / 4095: 0, 127.47, 127.53, 255 */
    const uint8_t want[4] = {0, 127, 128, 255};
    assert_memory_equal(g, want, 4);
    free(d.b);
}

static void test_eight_bit_as_stored_and_monochrome1(void **state)
{
    (void)state;
    const uint8_t v[4] = {3, 70, 130, 250};
    dcm d = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&d, 2, 2, 8, 8, 7, 0, "MONOCHROME2");
    pixels8(&d, v, 4);
    uint8_t g[4];
    gray_of(&d, 2, g);
    assert_memory_equal(g, v, 4); /* 8-bit without a rescale or window: as stored */
    free(d.b);

    d = dcm_begin(TS_IMPLICIT, 0, 0);
    image_attrs(&d, 2, 2, 8, 8, 7, 0, "MONOCHROME1");
    pixels8(&d, v, 4);
    gray_of(&d, 2, g);
    for (int i = 0; i < 4; i++)
        assert_int_equal(g[i], 255 - v[i]);
    free(d.b);
}

/* CT-like: signed values, Rescale Intercept -1024, a soft-tissue window. */
static void test_rescale_and_windows(void **state)
{
    (void)state;
    /* stored 0, 1064, 1103, 3000 -> HU -1024, 40, 79, 1976 */
    const uint16_t v[4] = {0, 1064, 1103, 3000};
    struct {
        const char *function;
        uint8_t want[4];
    } cases[] = {
        /* LINEAR c 40 w 400: HU <= -160.5 -> 0; > 239.5 -> 255;
         * 40: ((40 - 39.5) / 399 + 0.5) * 255 = 127.82 -> 128; 79: 152.74 -> 153
         * (without the 0.5 shift it would be 152.42 -> 152) */
        {"LINEAR", {0, 128, 153, 255}},
        /* LINEAR_EXACT: (m - 40) / 400 * 255 + 127.5: 40 -> 127.5 -> 128; 79 -> 152.36 -> 152 */
        {"LINEAR_EXACT", {0, 128, 152, 255}},
        /* SIGMOID: 255 / (1 + exp(-4 (m - 40) / 400)): -1024 -> 0.0000; 40 -> 127.5 -> 128;
         * 79 -> 255 / (1 + exp(-0.39)) = 152.05 -> 152; 1976 -> 255 */
        {"SIGMOID", {0, 128, 152, 255}},
    };
    for (size_t i = 0; i < 3; i++) {
        dcm d = dcm_begin(TS_EXPLICIT, 1, 0);
        image_attrs(&d, 2, 2, 16, 16, 15, 0, "MONOCHROME2");
        el_text(&d, 0x0028, 0x1050, "DS", "40\\300");
        el_text(&d, 0x0028, 0x1051, "DS", "400\\1500");
        el_text(&d, 0x0028, 0x1052, "DS", "-1024");
        el_text(&d, 0x0028, 0x1053, "DS", "1");
        el_text(&d, 0x0028, 0x1056, "CS", cases[i].function);
        pixels16(&d, v, 4);
        uint8_t g[4];
        gray_of(&d, 2, g);
        if (memcmp(g, cases[i].want, 4))
            fail_msg("%s: %u %u %u %u", cases[i].function, g[0], g[1], g[2], g[3]);
        free(d.b);
    }
    /* A window of width 0 is ignored: the range is used. Rescale slope 2
     * only stretches the range, which maps to 0..255 again. */
    dcm d = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&d, 2, 2, 16, 12, 11, 0, "MONOCHROME2");
    el_text(&d, 0x0028, 0x1050, "DS", "40");
    el_text(&d, 0x0028, 0x1051, "DS", "0");
    el_text(&d, 0x0028, 0x1053, "DS", "2.0");
    pixels16(&d, RAMP12, 4);
    uint8_t g[4];
    gray_of(&d, 2, g);
    assert_memory_equal(g, RAMP12_GRAY, 4);
    free(d.b);
}

/* Pixel Padding Value: padding pixels are black, after MONOCHROME1's
 * inversion too, and the frame's range leaves them out; with a Range
 * Limit every stored value between the two is padding. */
static void test_pixel_padding(void **state)
{
    (void)state;
    static const uint16_t v[4] = {100, 1100, 4095, 2100};
    static const uint8_t mono2[4] = {0, 128, 0, 255}; /* range 100..2100: (1100 - 100) * 255 / 2000 = 127.5 */
    static const uint8_t mono1[4] = {255, 127, 0, 0};
    const char *photos[2] = {"MONOCHROME2", "MONOCHROME1"};
    const uint8_t *want[2] = {mono2, mono1};
    uint8_t got[4];
    for (int p = 0; p < 2; p++) {
        dcm d = dcm_begin(TS_EXPLICIT, 1, 0);
        image_attrs(&d, 2, 2, 16, 12, 11, 0, photos[p]);
        el_us(&d, 0x0028, 0x0120, 4095);
        pixels16(&d, v, 4);
        gray_of(&d, 2, got);
        assert_memory_equal(got, want[p], 4);
        free(d.b);
    }
    /* Signed, a range given by its two ends in either order, under a window:
     * -2000 and -1950 are padding (-2048..-1900), -1800 is not. */
    static const int16_t s[4] = {-2000, -1950, -1800, 500};
    dcm d = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&d, 2, 2, 16, 16, 15, 1, "MONOCHROME1");
    int16_t pad = -1900, limit = -2048;
    el(&d, 0x0028, 0x0120, "SS", &pad, 2);
    el(&d, 0x0028, 0x0121, "SS", &limit, 2);
    el_text(&d, 0x0028, 0x1050, "DS", "0");
    el_text(&d, 0x0028, 0x1051, "DS", "2000");
    pixels16(&d, (const uint16_t *)s, 4);
    gray_of(&d, 2, got);
    static const uint8_t windowed[4] = {0, 0, 255, 64}; /* -1800 below the window: 0, inverted 255 */
    assert_memory_equal(got, windowed, 4);
    free(d.b);
}

static void test_voi_lut_sequence(void **state)
{
    (void)state;
    /* A LUT of 4 entries from stored value 10, 10 bits: 0, 341, 682, 1023.
     * Values below and above the table take its first and last entry. */
    dcm d = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&d, 2, 2, 16, 16, 15, 0, "MONOCHROME2");
    header(&d, 0x0028, 0x3010, "SQ", 0xffffffffu);
    header(&d, 0xfffe, 0xe000, NULL, 0xffffffffu);
    header(&d, 0x0028, 0x3002, "US", 6);
    put16(&d, 4, 0);
    put16(&d, 10, 0);
    put16(&d, 10, 0);
    header(&d, 0x0028, 0x3006, "OW", 8);
    const uint16_t lut[4] = {0, 341, 682, 1023};
    for (int i = 0; i < 4; i++)
        put16(&d, lut[i], 0);
    header(&d, 0xfffe, 0xe00d, NULL, 0);
    header(&d, 0xfffe, 0xe000, NULL, 4); /* a second item, skipped */
    put32(&d, 0, 0);
    header(&d, 0xfffe, 0xe0dd, NULL, 0);
    const uint16_t v[4] = {2, 11, 12, 900};
    pixels16(&d, v, 4);
    uint8_t g[4];
    gray_of(&d, 2, g);
    /* 0 -> 0; 341 * 255 / 1023 = 85; 682 -> 170; 1023 -> 255 */
    const uint8_t want[4] = {0, 85, 170, 255};
    assert_memory_equal(g, want, 4);
    free(d.b);
}

static void test_colour(void **state)
{
    (void)state;
    const uint8_t rgb[4][3] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {10, 200, 90}};
    uint8_t want[4];
    for (int i = 0; i < 4; i++)
        want[i] = (uint8_t)((19595u * rgb[i][0] + 38470u * rgb[i][1] + 7471u * rgb[i][2] + 32768u) >> 16);
    for (int planar = 0; planar < 2; planar++) {
        dcm d = dcm_begin(TS_EXPLICIT, 1, 0);
        colour_attrs(&d, 2, 2, "RGB", planar);
        uint8_t px[12];
        for (int i = 0; i < 4; i++)
            for (int c = 0; c < 3; c++)
                px[planar ? c * 4 + i : i * 3 + c] = rgb[i][c];
        pixels8(&d, px, 12);
        uint8_t g[4];
        gray_of(&d, 2, g);
        assert_memory_equal(g, want, 4);
        free(d.b);
    }
}

/* ---- RLE ---- */

/* PackBits of n bytes taken every stride-th from p: a replicate run for
 * repeats, literals otherwise. */
static void packbits(dcm *d, const uint8_t *p, size_t n, size_t stride)
{
    size_t i = 0;
    while (i < n) {
        size_t run = 1;
        while (i + run < n && run < 128 && p[(i + run) * stride] == p[i * stride])
            run++;
        if (run > 1) {
            uint8_t h[2] = {(uint8_t)(int8_t)(1 - (int)run), p[i * stride]};
            put(d, h, 2);
            i += run;
        } else {
            uint8_t h = 0;
            put(d, &h, 1);
            put(d, &p[i * stride], 1);
            i++;
        }
    }
}

/* An RLE frame of samples x bytes segments over interleaved little-endian
 * values v (n pixels). */
static dcm rle_frame(const uint8_t *v, size_t n, int samples, int bytes)
{
    dcm f = {0};
    int segs = samples * bytes;
    uint8_t head[64] = {0};
    put(&f, head, 64);
    for (int s = 0; s < segs; s++) {
        uint32_t at = (uint32_t)f.n;
        memcpy(f.b + 4 + 4 * s, &at, 4); /* little endian host */
        int sample = s / bytes, byte = bytes - 1 - s % bytes;
        packbits(&f, v + sample * bytes + byte, n, (size_t)(samples * bytes));
        if (f.n % 2)
            put(&f, "", 1);
    }
    uint32_t nseg = (uint32_t)segs;
    memcpy(f.b, &nseg, 4);
    return f;
}

static void encapsulate(dcm *d, const dcm *frame)
{
    header(d, 0x7fe0, 0x0010, "OB", 0xffffffffu);
    header(d, 0xfffe, 0xe000, NULL, 0);
    header(d, 0xfffe, 0xe000, NULL, (uint32_t)frame->n);
    put(d, frame->b, frame->n);
    header(d, 0xfffe, 0xe0dd, NULL, 0);
}

static void test_rle(void **state)
{
    (void)state;
    /* 16-bit: the ramp, repeated over 4 x 4 with runs */
    uint16_t v16[16];
    for (int i = 0; i < 16; i++)
        v16[i] = i < 6 ? RAMP12[0] : RAMP12[i % 4];
    uint8_t le[32];
    for (int i = 0; i < 16; i++)
        le[2 * i] = (uint8_t)v16[i], le[2 * i + 1] = (uint8_t)(v16[i] >> 8);
    dcm native = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&native, 4, 4, 16, 12, 11, 0, "MONOCHROME2");
    pixels16(&native, v16, 16);
    dcm rle = dcm_begin(TS_RLE, 1, 0);
    image_attrs(&rle, 4, 4, 16, 12, 11, 0, "MONOCHROME2");
    dcm frame = rle_frame(le, 16, 1, 2);
    encapsulate(&rle, &frame);
    uint8_t a[16], b[16];
    gray_of(&native, 4, a);
    gray_of(&rle, 4, b);
    assert_memory_equal(a, b, 16);

    /* The segment table must match the samples, and segments their rows. */
    dcm bad = dcm_begin(TS_RLE, 1, 0);
    image_attrs(&bad, 4, 4, 8, 8, 7, 0, "MONOCHROME2");
    encapsulate(&bad, &frame); /* 2 segments for 8-bit */
    expect_refused(&bad, MS_EFORMAT, "2 segments where 1 samples of 8 bits need 1");
    free(bad.b);
    bad = dcm_begin(TS_RLE, 1, 0);
    image_attrs(&bad, 4, 5, 16, 12, 11, 0, "MONOCHROME2"); /* 20 pixels, the segments hold 16 */
    encapsulate(&bad, &frame);
    expect_refused(&bad, MS_EFORMAT, "segment 1 ends before its 20 values");
    free(bad.b);
    free(frame.b);
    free(native.b);
    free(rle.b);

    /* 8-bit RGB: three segments */
    uint8_t rgb[16 * 3];
    for (int i = 0; i < 48; i++)
        rgb[i] = (uint8_t)(i < 12 ? 200 : i * 5);
    dcm n8 = dcm_begin(TS_EXPLICIT, 1, 0), r8 = dcm_begin(TS_RLE, 1, 0);
    colour_attrs(&n8, 4, 4, "RGB", 0);
    colour_attrs(&r8, 4, 4, "RGB", 0);
    pixels8(&n8, rgb, 48);
    frame = rle_frame(rgb, 16, 3, 1);
    encapsulate(&r8, &frame);
    gray_of(&n8, 4, a);
    gray_of(&r8, 4, b);
    assert_memory_equal(a, b, 16);
    free(frame.b);
    free(n8.b);
    free(r8.b);
}

static void test_first_frame_of_several(void **state)
{
    (void)state;
    dcm d = dcm_begin(TS_EXPLICIT, 1, 0);
    el_text(&d, 0x0028, 0x0008, "IS", "3");
    image_attrs(&d, 2, 2, 8, 8, 7, 0, "MONOCHROME2");
    uint8_t v[12] = {1, 2, 3, 4, 9, 9, 9, 9, 8, 8, 8, 8};
    pixels8(&d, v, 12);
    uint8_t g[4];
    gray_of(&d, 2, g);
    assert_memory_equal(g, v, 4);
    free(d.b);
    /* three frames announced, two present */
    d = dcm_begin(TS_EXPLICIT, 1, 0);
    el_text(&d, 0x0028, 0x0008, "IS", "3");
    image_attrs(&d, 2, 2, 8, 8, 7, 0, "MONOCHROME2");
    pixels8(&d, v, 8);
    expect_refused(&d, MS_EFORMAT, "3 frame(s) of 2 x 2 need 12");
    free(d.b);
}

/* Sequences of undefined length, nested, and a UN one holding implicit VR
 * data, before the image: stepped over. */
static void test_sequences_are_skipped(void **state)
{
    (void)state;
    dcm d = dcm_begin(TS_EXPLICIT, 1, 0);
    header(&d, 0x0008, 0x1140, "SQ", 0xffffffffu);
    header(&d, 0xfffe, 0xe000, NULL, 0xffffffffu);
    header(&d, 0x0040, 0x0260, "SQ", 0xffffffffu);
    header(&d, 0xfffe, 0xe000, NULL, 0xffffffffu);
    el_text(&d, 0x0008, 0x0100, "SH", "X");
    el_us(&d, 0x0028, 0x0010, 999); /* Rows inside a sequence: not the image's */
    header(&d, 0xfffe, 0xe00d, NULL, 0);
    header(&d, 0xfffe, 0xe0dd, NULL, 0);
    header(&d, 0xfffe, 0xe00d, NULL, 0);
    header(&d, 0xfffe, 0xe0dd, NULL, 0);
    /* a private UN sequence: its content is implicit VR little endian */
    header(&d, 0x0009, 0x1010, "UN", 0xffffffffu);
    d.explicit_vr = 0;
    header(&d, 0xfffe, 0xe000, NULL, 0xffffffffu);
    el_text(&d, 0x0009, 0x1011, "LO", "private");
    header(&d, 0xfffe, 0xe00d, NULL, 0);
    header(&d, 0xfffe, 0xe0dd, NULL, 0);
    d.explicit_vr = 1;
    /* a sequence of defined length */
    header(&d, 0x0040, 0x0275, "SQ", 18);
    header(&d, 0xfffe, 0xe000, NULL, 10);
    el_text(&d, 0x0040, 0x0007, "LO", "ab");
    image_attrs(&d, 2, 2, 16, 12, 11, 0, "MONOCHROME2");
    pixels16(&d, RAMP12, 4);
    uint8_t g[4];
    gray_of(&d, 2, g);
    assert_memory_equal(g, RAMP12_GRAY, 4);
    free(d.b);
}

/* ---- JPEG Lossless ---- */

/* The gray levels of an uncompressed n x n DICOM of 16-bit values v: what
 * every lossless codec must give back. */
static void native16_gray(const uint16_t *v, int n, uint8_t *gray)
{
    dcm native = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&native, n, n, 16, 16, 15, 0, "MONOCHROME2");
    pixels16(&native, v, (size_t)n * (size_t)n);
    gray_of(&native, n, gray);
    free(native.b);
}

/* A bit writer with JPEG's byte stuffing (0xFF is followed by 0x00). */
typedef struct bits {
    dcm *d;
    uint32_t acc;
    int n;
} bits;

static void put_bits(bits *b, uint32_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        b->acc = b->acc << 1 | ((v >> i) & 1);
        if (++b->n == 8) {
            uint8_t byte = (uint8_t)b->acc;
            put(b->d, &byte, 1);
            if (byte == 0xff)
                put(b->d, "", 1);
            b->acc = 0;
            b->n = 0;
        }
    }
}

static void flush_bits(bits *b)
{
    while (b->n)
        put_bits(b, 1, 1); /* pad with ones */
}

/* T.81's category of a difference or coefficient: the bits its magnitude
 * needs. */
static int category_of(int32_t value)
{
    int s = 0;
    for (uint32_t m = (uint32_t)(value < 0 ? -value : value); m; m >>= 1)
        s++;
    return s;
}

/* The s raw bits that follow category s (a negative value as value + 2^s - 1). */
static void put_extra(bits *b, int32_t value, int s)
{
    if (s)
        put_bits(b, (uint32_t)(value < 0 ? value + (1 << s) - 1 : value), s);
}

static void marker(dcm *d, int m, const uint8_t *seg, size_t n)
{
    uint8_t h[4] = {0xff, (uint8_t)m, (uint8_t)((n + 2) >> 8), (uint8_t)(n + 2)};
    put(d, h, m == 0xd8 || m == 0xd9 ? 2 : 4);
    if (seg)
        put(d, seg, n);
}

/* A lossless JPEG of w x h one-component samples of precision p, with
 * predictor sv, point transform pt and a restart every `restart_rows`
 * rows (0: none). Its Huffman table gives category k (0..16) the 5-bit
 * code k: simple, and every category is used. This is an independent
 * encoder written from T.81 H.1 for the decoder's edge cases; dicom.sh
 * checks the decoder against dcmtk's encoder too. */
static dcm lossless_jpeg(const uint16_t *v, int w, int h, int p, int sv, int pt, int restart_rows)
{
    dcm d = {0};
    marker(&d, 0xd8, NULL, 0);
    uint8_t sof[9] = {(uint8_t)p, (uint8_t)(h >> 8), (uint8_t)h, (uint8_t)(w >> 8), (uint8_t)w, 1, 1, 0x11, 0};
    marker(&d, 0xc3, sof, sizeof sof);
    uint8_t dht[17 + 17] = {0x00};
    dht[5] = 17; /* 17 codes of length 5 */
    for (int k = 0; k <= 16; k++)
        dht[17 + k] = (uint8_t)k;
    marker(&d, 0xc4, dht, sizeof dht);
    if (restart_rows) {
        uint8_t dri[2] = {(uint8_t)((restart_rows * w) >> 8), (uint8_t)(restart_rows * w)};
        marker(&d, 0xdd, dri, 2);
    }
    uint8_t sos[6] = {1, 1, 0x00, (uint8_t)sv, 0, (uint8_t)pt};
    marker(&d, 0xda, sos, sizeof sos);
    bits b = {&d, 0, 0};
    int rst = 0;
    for (int y = 0; y < h; y++) {
        bool first_row = y == 0 || (restart_rows && y % restart_rows == 0);
        if (y > 0 && first_row) {
            flush_bits(&b);
            uint8_t m[2] = {0xff, (uint8_t)(0xd0 | (rst++ & 7))};
            put(&d, m, 2);
        }
        for (int x = 0; x < w; x++) {
            int32_t a = x ? v[y * w + x - 1] >> pt : 0, up = y ? v[(y - 1) * w + x] >> pt : 0;
            int32_t c = x && y ? v[(y - 1) * w + x - 1] >> pt : 0, pred;
            if (first_row)
                pred = x ? a : 1 << (p - pt - 1);
            else if (x == 0)
                pred = up;
            else
                pred = sv == 1 ? a : sv == 2 ? up : sv == 3 ? c : sv == 4 ? a + up - c
                     : sv == 5 ? a + ((up - c) >> 1) : sv == 6 ? up + ((a - c) >> 1) : (a + up) >> 1;
            int32_t diff = (int32_t)(((v[y * w + x] >> pt) - pred) & 0xffff);
            if (diff >= 32768)
                diff -= 65536; /* the smaller of the two differences modulo 2^16 */
            int cat = category_of(diff);
            put_bits(&b, (uint32_t)cat, 5);
            if (cat < 16) /* 16 stands for 32768 alone */
                put_extra(&b, diff, cat);
        }
    }
    flush_bits(&b);
    marker(&d, 0xd9, NULL, 0);
    return d;
}

/* A DICOM of JPEG Lossless frame j over w x h 16-bit samples. */
static dcm lossless_dicom(const dcm *j, int w, int h, int stored)
{
    dcm d = dcm_begin("1.2.840.10008.1.2.4.70", 1, 0);
    image_attrs(&d, w, h, 16, stored, stored - 1, 0, "MONOCHROME2");
    encapsulate(&d, j);
    return d;
}

static void test_jpeg_lossless(void **state)
{
    (void)state;
    enum { N = 12 };
    uint16_t v[N * N];
    for (int i = 0; i < N * N; i++) /* smooth, with jumps to both ends of 16 bits */
        v[i] = (uint16_t)(i % 17 == 0 ? 65535 : i % 23 == 0 ? 0 : 30000 + 97 * (i % N) - 211 * (i / N));
    uint8_t want[N * N], got[N * N];
    native16_gray(v, N, want);
    for (int sv = 1; sv <= 7; sv++)
        for (int restart = 0; restart <= 5; restart += 5) { /* every 5 rows: RST0, RST1 */
            dcm j = lossless_jpeg(v, N, N, 16, sv, 0, restart);
            dcm d = lossless_dicom(&j, N, N, 16);
            gray_of(&d, N, got);
            if (memcmp(got, want, sizeof want))
                fail_msg("predictor %d, restart every %d rows: pixels differ", sv, restart);
            free(j.b);
            free(d.b);
        }

    /* A point transform of 3: the decoded samples are the low bits cleared. */
    uint16_t shifted[N * N];
    for (int i = 0; i < N * N; i++)
        shifted[i] = (uint16_t)(v[i] & ~7u);
    native16_gray(shifted, N, want);
    dcm j = lossless_jpeg(v, N, N, 16, 6, 3, 0);
    dcm d = lossless_dicom(&j, N, N, 16);
    gray_of(&d, N, got);
    assert_memory_equal(got, want, sizeof want);

    /* An AC table defined beside the DC one (unused by lossless coding) is skipped. */
    dcm with_ac = {0};
    put(&with_ac, j.b, 2);
    static const uint8_t ac_table[] = {0xff, 0xc4, 0x00, 0x14, 0x10, 1, 0, 0, 0, 0, 0, 0, 0,
                                       0,    0,    0,    0,    0,    0, 0, 0, 0x01};
    put(&with_ac, ac_table, sizeof ac_table);
    put(&with_ac, j.b + 2, j.n - 2);
    dcm d_ac = lossless_dicom(&with_ac, N, N, 16);
    gray_of(&d_ac, N, got);
    assert_memory_equal(got, want, sizeof want);
    free(d_ac.b);
    free(with_ac.b);

    /* Cut at every length, and random changes: an error or an image, never more. */
    for (size_t n = 0; n < d.n; n++) {
        ms_err err = {0};
        if (prepare_code(d.b, n, &err) == 0)
            fail_msg("a JPEG Lossless DICOM cut to %zu of %zu bytes decoded", n, d.n);
    }
    uint8_t *copy = malloc(d.n);
    assert_non_null(copy);
    for (int round = 0; round < 3000; round++) {
        memcpy(copy, d.b, d.n);
        for (int k = 0; k < 1 + (int)(rng() % 3); k++)
            copy[d.n - j.n - 8 + rng() % j.n] = (uint8_t)rng(); /* inside the JPEG stream */
        ms_err err = {0};
        int rc = prepare_code(copy, d.n, &err);
        if (rc != 0 && !err.msg[0])
            fail_msg("error %d without a message", rc);
    }
    free(copy);
    free(d.b);

    /* A missing restart marker; 16-bit samples declared as 8 bits allocated;
     * a frame of another size than the header's. */
    dcm bad = lossless_jpeg(v, N, N, 16, 1, 0, 5);
    for (size_t i = 0; i + 1 < bad.n; i++)
        if (bad.b[i] == 0xff && bad.b[i + 1] == 0xd0)
            bad.b[i + 1] = 0xd3;
    d = lossless_dicom(&bad, N, N, 16);
    expect_refused(&d, MS_EFORMAT, "a restart marker is missing");
    free(d.b);
    d = dcm_begin("1.2.840.10008.1.2.4.70", 1, 0);
    image_attrs(&d, N, N, 8, 8, 7, 0, "MONOCHROME2");
    encapsulate(&d, &j);
    expect_refused(&d, MS_EFORMAT, "16-bit JPEG Lossless samples in 8 bits allocated");
    free(d.b);
    d = lossless_dicom(&j, N + 1, N, 16);
    expect_refused(&d, MS_EFORMAT, "its JPEG Lossless frame is 12x12");
    free(d.b);
    free(bad.b);
    free(j.b);
}

/* Mislabelled frames: the frame's SOF marker picks the decoder. An 8-bit
 * lossless stream under the JPEG Baseline syntax, and a baseline JPEG under
 * JPEG Lossless, decode as what they are. */
static void test_jpeg_process_from_the_frame(void **state)
{
    (void)state;
    enum { N = 12 };
    uint8_t v8[N * N];
    uint16_t v[N * N];
    for (int i = 0; i < N * N; i++)
        v[i] = v8[i] = (uint8_t)(i * 5 + (i % 3) * 20);
    dcm native = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&native, N, N, 8, 8, 7, 0, "MONOCHROME2");
    pixels8(&native, v8, N * N);
    uint8_t want[N * N], got[N * N];
    gray_of(&native, N, want);
    free(native.b);

    dcm lossless = lossless_jpeg(v, N, N, 8, 1, 0, 0);
    dcm d = dcm_begin("1.2.840.10008.1.2.4.50", 1, 0);
    image_attrs(&d, N, N, 8, 8, 7, 0, "MONOCHROME2");
    encapsulate(&d, &lossless);
    gray_of(&d, N, got);
    assert_memory_equal(got, want, sizeof want);
    free(d.b);
    free(lossless.b);

    blob jpg = encode_with(vips_image_new_from_memory_copy(v8, sizeof v8, N, N, 1, VIPS_FORMAT_UCHAR), ".jpg[Q=90]");
    dcm frame = {.b = jpg.data, .n = jpg.len};
    uint8_t as_baseline[N * N];
    d = dcm_begin("1.2.840.10008.1.2.4.50", 1, 0);
    image_attrs(&d, N, N, 8, 8, 7, 0, "MONOCHROME2");
    encapsulate(&d, &frame);
    gray_of(&d, N, as_baseline);
    free(d.b);
    d = dcm_begin("1.2.840.10008.1.2.4.70", 1, 0);
    image_attrs(&d, N, N, 8, 8, 7, 0, "MONOCHROME2");
    encapsulate(&d, &frame);
    gray_of(&d, N, got);
    assert_memory_equal(got, as_baseline, sizeof got);
    free(d.b);
    blob_free(&jpg);
}

/* ---- 12-bit JPEG (sequential DCT, jpeg_dct.c) ---- */

/* T.81 figure A.6's zigzag order, written out from the figure (jpeg_dct.c
 * computes it instead). */
static const uint8_t ZIGZAG[64] = {0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,
                                   12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6,  7,  14, 21, 28,
                                   35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
                                   58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63};

static double dct_basis(int x, int u)
{
    return (u ? 0.5 : 0.5 / sqrt(2.0)) * cos((2 * x + 1) * u * M_PI / 16.0);
}

/* The index of AC symbol rs in dct_encode's table: EOB, ZRL, then (run,
 * size) for run 0..15 and size 1..14. */
static uint32_t ac_code(int rs)
{
    return rs == 0x00 ? 0 : rs == 0xf0 ? 1 : 2 + (uint32_t)(rs >> 4) * 14 + (uint32_t)(rs & 15) - 1;
}

typedef struct dct_jpeg {
    dcm stream;
    uint16_t *exact; /* an exact decoder's samples: the quantised coefficients back through the inverse DCT in double */
} dct_jpeg;

/* One 8x8 block of v (edges replicated) forward-transformed, quantised by q
 * (zigzag order) into c (zigzag order), and its exact reconstruction
 * written into exact. */
static void dct_block(const uint16_t *v, int w, int h, int bx, int by, int p, const uint16_t q[64], int32_t c[64],
                      uint16_t *exact)
{
    double s[8][8], shift = 1 << (p - 1);
    for (int y = 0; y < 8; y++)
        for (int x = 0; x < 8; x++) {
            int sx = 8 * bx + x < w ? 8 * bx + x : w - 1, sy = 8 * by + y < h ? 8 * by + y : h - 1;
            s[y][x] = v[sy * w + sx] - shift;
        }
    double r[64] = {0}; /* dequantised, natural order */
    for (int k = 0; k < 64; k++) {
        int n = ZIGZAG[k], vv = n / 8, u = n % 8;
        double f = 0;
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++)
                f += dct_basis(x, u) * dct_basis(y, vv) * s[y][x];
        c[k] = (int32_t)lround(f / q[k]);
        r[n] = (double)c[k] * q[k];
    }
    for (int y = 0; y < 8 && 8 * by + y < h; y++)
        for (int x = 0; x < 8 && 8 * bx + x < w; x++) {
            double f = shift;
            for (int n = 0; n < 64; n++)
                f += dct_basis(x, n % 8) * dct_basis(y, n / 8) * r[n];
            double m = (1 << p) - 1;
            exact[(8 * by + y) * w + 8 * bx + x] = (uint16_t)(f < 0 ? 0 : f > m ? m : floor(f + 0.5));
        }
}

/* A sequential DCT JPEG (SOF1) of w x h one-component samples v of
 * precision p (8 or 12), quantised by q (zigzag order), with a restart
 * every `restart` blocks (0: none). Its Huffman tables give DC category k
 * the 5-bit code k and the AC symbols of ac_code 8-bit codes: simple, and
 * every symbol is defined. An independent encoder written from T.81 annex
 * A and F.1; dicom.sh checks the decoder against dcmtk's encoder too. */
static dct_jpeg dct_encode(const uint16_t *v, int w, int h, int p, const uint16_t q[64], int restart)
{
    dct_jpeg j = {{0}, malloc(sizeof(uint16_t) * (size_t)w * (size_t)h)};
    assert_non_null(j.exact);
    dcm *d = &j.stream;
    marker(d, 0xd8, NULL, 0);
    uint8_t dqt[1 + 128] = {(uint8_t)(p > 8 ? 0x10 : 0x00)};
    for (int k = 0; k < 64; k++) {
        if (p > 8) {
            dqt[1 + 2 * k] = (uint8_t)(q[k] >> 8);
            dqt[2 + 2 * k] = (uint8_t)q[k];
        } else {
            dqt[1 + k] = (uint8_t)q[k];
        }
    }
    marker(d, 0xdb, dqt, p > 8 ? 129 : 65);
    uint8_t sof[9] = {(uint8_t)p, (uint8_t)(h >> 8), (uint8_t)h, (uint8_t)(w >> 8), (uint8_t)w, 1, 1, 0x11, 0};
    marker(d, 0xc1, sof, sizeof sof);
    uint8_t dht_dc[17 + 16] = {0x00};
    dht_dc[5] = 16; /* 16 codes of length 5 */
    for (int k = 0; k < 16; k++)
        dht_dc[17 + k] = (uint8_t)k;
    marker(d, 0xc4, dht_dc, sizeof dht_dc);
    uint8_t dht_ac[17 + 226] = {0x10};
    dht_ac[8] = 226; /* 226 codes of length 8 */
    dht_ac[17] = 0x00;
    dht_ac[18] = 0xf0;
    for (int r = 0; r < 16; r++)
        for (int s = 1; s <= 14; s++)
            dht_ac[17 + ac_code(r << 4 | s)] = (uint8_t)(r << 4 | s);
    marker(d, 0xc4, dht_ac, sizeof dht_ac);
    if (restart) {
        uint8_t dri[2] = {(uint8_t)(restart >> 8), (uint8_t)restart};
        marker(d, 0xdd, dri, 2);
    }
    uint8_t sos[6] = {1, 1, 0x00, 0, 63, 0};
    marker(d, 0xda, sos, sizeof sos);
    bits b = {d, 0, 0};
    int bw = (w + 7) / 8, bh = (h + 7) / 8, count = 0, rst = 0;
    int32_t pred = 0;
    for (int by = 0; by < bh; by++)
        for (int bx = 0; bx < bw; bx++) {
            if (restart && count && count % restart == 0) {
                flush_bits(&b);
                uint8_t m[2] = {0xff, (uint8_t)(0xd0 | (rst++ & 7))};
                put(d, m, 2);
                pred = 0;
            }
            count++;
            int32_t c[64];
            dct_block(v, w, h, bx, by, p, q, c, j.exact);
            int s = category_of(c[0] - pred);
            put_bits(&b, (uint32_t)s, 5);
            put_extra(&b, c[0] - pred, s);
            pred = c[0];
            int run = 0;
            for (int k = 1; k < 64; k++) {
                if (!c[k]) {
                    run++;
                    continue;
                }
                for (; run > 15; run -= 16)
                    put_bits(&b, ac_code(0xf0), 8);
                s = category_of(c[k]);
                assert_true(s <= 14);
                put_bits(&b, ac_code(run << 4 | s), 8);
                put_extra(&b, c[k], s);
                run = 0;
            }
            if (run)
                put_bits(&b, ac_code(0x00), 8);
        }
    flush_bits(&b);
    marker(d, 0xd9, NULL, 0);
    return j;
}

/* Offset of the first marker m (its 0xFF) in the stream. */
static size_t find_marker(const dcm *s, int m)
{
    for (size_t i = 0; i + 1 < s->n; i++)
        if (s->b[i] == 0xff && s->b[i + 1] == m)
            return i;
    fail_msg("marker %02x not found", m);
    return 0;
}

/* Largest difference of n little-endian 16-bit samples from want, and how
 * many differ. */
static int sample_diff(const uint8_t *got, const uint16_t *want, size_t n, size_t *differ)
{
    int worst = 0;
    *differ = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)(got[2 * i] | got[2 * i + 1] << 8) - (int)want[i]);
        worst = d > worst ? d : worst;
        *differ += d > 0;
    }
    return worst;
}

enum { DCT_W = 37, DCT_H = 29 }; /* neither a multiple of 8: partial edge blocks */

/* A 12-bit picture: a smooth ramp, noise, and a sharp edge. */
static void dct_picture(uint16_t *v, int w, int h, int max)
{
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int base = (x * 3 + y * 5) * max / (3 * w + 5 * h) + (int)(rng() % 41) - 20;
            base += x > w / 2 && y > h / 3 ? max / 4 : 0;
            v[y * w + x] = (uint16_t)(base < 0 ? 0 : base > max ? max : base);
        }
}

static void dct_quant(uint16_t q[64], int scale)
{
    for (int k = 0; k < 64; k++)
        q[k] = (uint16_t)(scale * (1 + (k * 7) % 23));
}

/* The decoder gives an exact decoder's samples within 1 (its float inverse
 * DCT rounds a few halves the other way), at 12 and 8 bits, with and
 * without restart markers; and what it gives is close to the picture. */
static void test_jpeg_12bit_samples(void **state)
{
    (void)state;
    uint16_t v[DCT_W * DCT_H], q[64];
    uint8_t out[2 * DCT_W * DCT_H];
    const size_t n = DCT_W * DCT_H;
    for (int p = 8; p <= 12; p += 4) {
        dct_picture(v, DCT_W, DCT_H, (1 << p) - 1);
        dct_quant(q, p == 12 ? 4 : 1);
        for (int restart = 0; restart <= 5; restart += 5) {
            dct_jpeg j = dct_encode(v, DCT_W, DCT_H, p, q, restart);
            ms_err err = {0};
            if (jpeg_dct_decode(j.stream.b, j.stream.n, DCT_W, DCT_H, 1, 2, out, &err))
                fail_msg("%d-bit, restart %d: %s", p, restart, err.msg);
            size_t differ;
            int worst = sample_diff(out, j.exact, n, &differ);
            if (worst > 1 || differ > n / 50)
                fail_msg("%d-bit, restart %d: %zu samples differ from the exact decode, by up to %d", p, restart,
                         differ, worst);
            double err_sum = 0;
            for (size_t i = 0; i < n; i++)
                err_sum += abs((int)j.exact[i] - (int)v[i]);
            if (err_sum / (double)n > (p == 12 ? 40.0 : 4.0))
                fail_msg("%d-bit: the test's encoder strays from the picture (mean %.1f)", p, err_sum / (double)n);
            free(j.stream.b);
            free(j.exact);
        }
    }
}

/* 8-bit baseline JPEG from libjpeg, through this decoder and through
 * libjpeg: the same samples within 1 (libjpeg's integer inverse DCT). */
static void test_jpeg_dct_against_libjpeg(void **state)
{
    (void)state;
    enum { W = 40, H = 33 };
    uint16_t v16[W * H];
    uint8_t v[W * H], ours[W * H];
    dct_picture(v16, W, H, 255);
    for (int i = 0; i < W * H; i++)
        v[i] = (uint8_t)v16[i];
    const int qualities[] = {20, 75, 95, 100};
    for (size_t t = 0; t < sizeof qualities / sizeof *qualities; t++) {
        uint8_t *jpg = NULL;
        size_t len = 0;
        ms_err err = {0};
        if (jpeg_encode_gray8(v, W, H, qualities[t], &jpg, &len, &err))
            fail_msg("jpeg_encode_gray8: %s", err.msg);
        if (jpeg_dct_decode(jpg, len, W, H, 1, 1, ours, &err))
            fail_msg("quality %d: %s", qualities[t], err.msg);
        VipsImage *im = vips_image_new_from_buffer(jpg, len, "", NULL);
        assert_non_null(im);
        size_t size = 0;
        uint8_t *theirs = vips_image_write_to_memory(im, &size);
        assert_int_equal(size, W * H);
        int worst = 0, differ = 0;
        for (int i = 0; i < W * H; i++) {
            int d = abs(ours[i] - theirs[i]);
            worst = d > worst ? d : worst;
            differ += d > 0;
        }
        if (worst > 1 || differ > W * H / 20)
            fail_msg("quality %d: %d samples differ from libjpeg's, by up to %d", qualities[t], differ, worst);
        g_free(theirs);
        g_object_unref(im);
        free(jpg);
    }
}

static dcm jpeg12_dicom(const char *ts, const dcm *frame, int w, int alloc)
{
    dcm d = dcm_begin(ts, 1, 0);
    int stored = alloc < 12 ? alloc : 12;
    image_attrs(&d, w, w, alloc, stored, stored - 1, 0, "MONOCHROME2");
    encapsulate(&d, frame);
    return d;
}

/* In a DICOM: JPEG Extended and a 12-bit frame mislabelled JPEG Lossless
 * give the gray levels of the uncompressed file of the decoded samples;
 * the refusals of what this decoder does not take name the reason; cut and
 * mutated streams end in an error or the same image. */
static void test_jpeg_12bit_dicom(void **state)
{
    (void)state;
    enum { N = 29 };
    uint16_t v[N * N], q[64], decoded[N * N];
    uint8_t out[2 * N * N], want[N * N], got[N * N];
    dct_picture(v, N, N, 4095);
    dct_quant(q, 3);
    dct_jpeg j = dct_encode(v, N, N, 12, q, 4);
    ms_err err = {0};
    assert_int_equal(jpeg_dct_decode(j.stream.b, j.stream.n, N, N, 1, 2, out, &err), 0);
    for (int i = 0; i < N * N; i++)
        decoded[i] = (uint16_t)(out[2 * i] | out[2 * i + 1] << 8);
    dcm native = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&native, N, N, 16, 12, 11, 0, "MONOCHROME2");
    pixels16(&native, decoded, N * N);
    gray_of(&native, N, want);
    free(native.b);
    const char *syntaxes[] = {"1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.70"};
    for (int s = 0; s < 2; s++) {
        dcm d = jpeg12_dicom(syntaxes[s], &j.stream, N, 16);
        gray_of(&d, N, got);
        if (memcmp(got, want, sizeof want))
            fail_msg("%s: the gray levels differ from the decoded samples'", syntaxes[s]);
        if (s == 0)
            for (size_t n = 0; n < d.n; n++) {
                ms_err e = {0};
                if (prepare_code(d.b, n, &e) == 0)
                    fail_msg("a 12-bit JPEG DICOM cut to %zu of %zu bytes decoded", n, d.n);
            }
        free(d.b);
    }
    dcm d = jpeg12_dicom("1.2.840.10008.1.2.4.51", &j.stream, N, 8);
    expect_refused(&d, MS_EFORMAT, "12-bit JPEG samples in 8 bits allocated");
    free(d.b);
    d = jpeg12_dicom("1.2.840.10008.1.2.4.51", &j.stream, N + 1, 16);
    expect_refused(&d, MS_EFORMAT, "its JPEG frame is 29x29");
    free(d.b);

    /* An 8-bit frame under a header of 12 bits stored is refused, not
     * windowed with 12-bit values. */
    uint8_t *jpg = NULL;
    size_t len = 0;
    uint8_t v8[N * N] = {0};
    assert_int_equal(jpeg_encode_gray8(v8, N, N, 90, &jpg, &len, &err), 0);
    dcm frame8 = {.b = jpg, .n = len};
    d = jpeg12_dicom("1.2.840.10008.1.2.4.51", &frame8, N, 16);
    expect_refused(&d, MS_EFORMAT, "12 bits stored, its JPEG frame has 8-bit samples");
    free(d.b);
    free(jpg);

    /* What the decoder refuses, by changing one byte of the stream. */
    const struct {
        int marker, offset, value, code;
        const char *words;
    } changes[] = {
        {0xc1, 1, 0xc2, MS_EUNSUPPORTED, "progressive JPEG of 12-bit samples"},
        {0xc1, 1, 0xc3, MS_EUNSUPPORTED, "process SOF3"},
        {0xc1, 1, 0xc9, MS_EUNSUPPORTED, "process SOF9"},
        {0xc1, 4, 16, MS_EUNSUPPORTED, "16-bit sequential DCT JPEG is not supported"},
        {0xc1, 12, 1, MS_EFORMAT, "quantisation table that is not defined"},
        {0xda, 8, 62, MS_EFORMAT, "does not code all 64 coefficients"},
        {0xda, 6, 0x11, MS_EFORMAT, "Huffman table that is not defined"},
        {0xda, 5, 7, MS_EFORMAT, "component its frame does not have"},
        {0xd0, 1, 0xd3, MS_EFORMAT, "a restart marker is missing"},
        {0xc4, 4, 0x20, MS_EFORMAT, "not a DC or AC table"},
        {0xdb, 4, 0x24, MS_EFORMAT, "not one of 8 or 16 bits"},
    };
    for (size_t c = 0; c < sizeof changes / sizeof *changes; c++) {
        dcm bad = {0};
        put(&bad, j.stream.b, j.stream.n);
        bad.b[find_marker(&bad, changes[c].marker) + (size_t)changes[c].offset] = (uint8_t)changes[c].value;
        ms_err e = {0};
        int rc = jpeg_dct_decode(bad.b, bad.n, N, N, 1, 2, out, &e);
        if (rc != changes[c].code || !strstr(e.msg, changes[c].words))
            fail_msg("change %zu: expected %d \"%s\", got %d \"%s\"", c, changes[c].code, changes[c].words, rc, e.msg);
        free(bad.b);
    }
    /* A Huffman table whose code lengths overflow (3 codes of length 1, 13
     * of length 5) is refused before its lookup table is filled, in both
     * decoders. */
    dcm bad = {0};
    put(&bad, j.stream.b, j.stream.n);
    size_t dht = find_marker(&bad, 0xc4);
    bad.b[dht + 5] = 3;
    bad.b[dht + 9] = 13;
    err = (ms_err){0};
    assert_int_equal(jpeg_dct_decode(bad.b, bad.n, N, N, 1, 2, out, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "code lengths overflow"));
    free(bad.b);
    dcm ll = lossless_jpeg(v, N, N, 12, 1, 0, 0);
    dht = find_marker(&ll, 0xc4);
    ll.b[dht + 5] = 3; /* 3 codes of length 1, 14 of length 5 */
    ll.b[dht + 9] = 14;
    err = (ms_err){0};
    assert_int_equal(jpeg_lossless_decode(ll.b, ll.n, N, N, 1, 2, out, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "code lengths overflow"));
    free(ll.b);
    err = (ms_err){0};
    assert_int_equal(jpeg_dct_decode(j.stream.b, j.stream.n, N, N, 3, 2, out, &err), MS_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "12-bit JPEG with 1 components is not supported"));

    /* Cut anywhere: an error, or (cut in the padding or EOI) the same image. */
    uint8_t *cut = malloc(j.stream.n);
    assert_non_null(cut);
    for (size_t n = 0; n < j.stream.n; n++) {
        memcpy(cut, j.stream.b, n);
        ms_err e = {0};
        uint8_t again[2 * N * N];
        int rc = jpeg_dct_decode(cut, n, N, N, 1, 2, again, &e);
        if (rc == 0 ? memcmp(again, out, sizeof again) != 0 : !e.msg[0])
            fail_msg("cut to %zu of %zu bytes: %d \"%s\"", n, j.stream.n, rc, e.msg);
    }
    /* Random changes: an image or an error with its message. */
    for (int round = 0; round < 3000; round++) {
        memcpy(cut, j.stream.b, j.stream.n);
        for (int k = 0; k < 1 + (int)(rng() % 3); k++)
            cut[rng() % j.stream.n] = (uint8_t)rng();
        ms_err e = {0};
        int rc = jpeg_dct_decode(cut, j.stream.n, N, N, 1, 2, out, &e);
        if (rc != 0 && !e.msg[0])
            fail_msg("error %d without a message", rc);
    }
    free(cut);
    free(j.stream.b);
    free(j.exact);
}

/* Standalone JPEG files of the kinds libjpeg cannot read here go to the
 * same decoders: lossless (8-bit gray and colour, 16-bit) and 12-bit
 * sequential. Samples of more or fewer than 8 bits are scaled by the
 * image's maximum, as a 16-bit PNG's are. */
static void scaled_by_max(const uint16_t *v, size_t n, uint8_t *out)
{
    uint16_t max = 0;
    for (size_t i = 0; i < n; i++)
        max = v[i] > max ? v[i] : max;
    float gain = max ? (float)(255.0 / max) : 0.0f;
    for (size_t i = 0; i < n; i++) {
        float t = gain * (float)v[i] + (max ? 0.5f : 0.0f);
        out[i] = t >= 255.0f ? 255 : (uint8_t)t;
    }
}

static void test_standalone_jpeg_files(void **state)
{
    (void)state;
    enum { N = 29 };
    uint16_t v[N * N], v8[N * N], q[64], decoded[N * N];
    uint8_t want[N * N], got[N * N], raw[2 * N * N];
    dct_picture(v, N, N, 4095);
    for (int i = 0; i < N * N; i++)
        v8[i] = (uint16_t)(v[i] >> 4);

    /* lossless, 16-bit (the 12-bit picture shifted up) and 8-bit */
    uint16_t v16[N * N];
    for (int i = 0; i < N * N; i++)
        v16[i] = (uint16_t)(v[i] << 4 | 15);
    dcm ll16 = lossless_jpeg(v16, N, N, 16, 4, 0, 0);
    scaled_by_max(v16, N * N, want);
    gray_of(&ll16, N, got);
    assert_memory_equal(got, want, sizeof want);
    image_info info;
    ms_err err = {0};
    assert_int_equal(image_probe(ll16.b, ll16.n, NULL, &info, &err), 0);
    assert_int_equal(info.format, IMAGE_JPEG);
    assert_int_equal(info.bits, 16);
    dcm ll8 = lossless_jpeg(v8, N, N, 8, 7, 0, 0);
    for (int i = 0; i < N * N; i++)
        want[i] = (uint8_t)v8[i];
    gray_of(&ll8, N, got);
    assert_memory_equal(got, want, sizeof want);

    /* 12-bit sequential: the decoder's own samples, scaled by their maximum */
    dct_quant(q, 2);
    dct_jpeg j = dct_encode(v, N, N, 12, q, 0);
    assert_int_equal(jpeg_dct_decode(j.stream.b, j.stream.n, N, N, 1, 2, raw, &err), 0);
    for (int i = 0; i < N * N; i++)
        decoded[i] = (uint16_t)(raw[2 * i] | raw[2 * i + 1] << 8);
    scaled_by_max(decoded, N * N, want);
    gray_of(&j.stream, N, got);
    assert_memory_equal(got, want, sizeof want);

    /* Cut anywhere: an error with its message, or the whole image. */
    dcm *files[] = {&ll16, &j.stream};
    for (int f = 0; f < 2; f++)
        for (size_t n = 0; n < files[f]->n; n++) {
            ms_err e = {0};
            float t[3 * 4 * 4];
            image_prep prep = {4, {0, 0, 0}, {1, 1, 1}};
            int rc = image_prepare(files[f]->b, n, NULL, &prep, t, NULL, &e);
            if (rc != 0 && !e.msg[0])
                fail_msg("file %d cut to %zu bytes: error %d without a message", f, n, rc);
            if (rc == 0 && n + 2 < files[f]->n)
                fail_msg("file %d cut to %zu of %zu bytes decoded", f, n, files[f]->n);
        }
    free(ll16.b);
    free(ll8.b);
    free(j.stream.b);
    free(j.exact);
}

/* ---- JPEG 2000 and JPEG-LS (libraries) ---- */

static OPJ_SIZE_T opj_write_to(void *buf, OPJ_SIZE_T n, void *user)
{
    put(user, buf, n);
    return n;
}

static OPJ_OFF_T opj_skip_none(OPJ_OFF_T n, void *user)
{
    (void)user;
    return n == 0 ? 0 : -1;
}

static OPJ_BOOL opj_seek_none(OPJ_OFF_T n, void *user)
{
    (void)n, (void)user;
    return OPJ_FALSE;
}

/* A lossless JPEG 2000 codestream of w x h 16-bit samples (OpenJPEG's encoder). */
static dcm j2k_stream(const uint16_t *v, int w, int h)
{
    opj_image_cmptparm_t cp = {.dx = 1, .dy = 1, .w = (OPJ_UINT32)w, .h = (OPJ_UINT32)h, .prec = 16, .sgnd = 0};
    opj_image_t *im = opj_image_create(1, &cp, OPJ_CLRSPC_GRAY);
    assert_non_null(im);
    im->x1 = (OPJ_UINT32)w;
    im->y1 = (OPJ_UINT32)h;
    for (int i = 0; i < w * h; i++)
        im->comps[0].data[i] = v[i];
    opj_cparameters_t par;
    opj_set_default_encoder_parameters(&par);
    par.numresolution = 3;
    opj_codec_t *codec = opj_create_compress(OPJ_CODEC_J2K);
    assert_true(opj_setup_encoder(codec, &par, im));
    dcm out = {0};
    opj_stream_t *st = opj_stream_create(1 << 16, OPJ_FALSE);
    opj_stream_set_user_data(st, &out, NULL);
    opj_stream_set_write_function(st, opj_write_to);
    opj_stream_set_skip_function(st, opj_skip_none);
    opj_stream_set_seek_function(st, opj_seek_none);
    assert_true(opj_start_compress(codec, im, st) && opj_encode(codec, st) && opj_end_compress(codec, st));
    opj_stream_destroy(st);
    opj_destroy_codec(codec);
    opj_image_destroy(im);
    return out;
}

/* A JPEG-LS stream of w x h 16-bit samples (CharLS), near 0 or lossy. */
static dcm jpegls_stream(const uint16_t *v, int w, int h, int near)
{
    charls_jpegls_encoder *enc = charls_jpegls_encoder_create();
    charls_frame_info fi = {(uint32_t)w, (uint32_t)h, 16, 1};
    size_t cap = 0, n = 0;
    assert_int_equal(charls_jpegls_encoder_set_frame_info(enc, &fi), 0);
    assert_int_equal(charls_jpegls_encoder_set_near_lossless(enc, near), 0);
    assert_int_equal(charls_jpegls_encoder_get_estimated_destination_size(enc, &cap), 0);
    dcm out = {.b = malloc(cap), .cap = cap};
    assert_non_null(out.b);
    assert_int_equal(charls_jpegls_encoder_set_destination_buffer(enc, out.b, cap), 0);
    assert_int_equal(charls_jpegls_encoder_encode_from_buffer(enc, v, (size_t)w * h * 2, 0), 0);
    assert_int_equal(charls_jpegls_encoder_get_bytes_written(enc, &n), 0);
    out.n = n;
    charls_jpegls_encoder_destroy(enc);
    return out;
}

/* Each library codec: exact on a lossless frame, and every truncation and
 * 2000 random changes of the frame end in an error or an image, never
 * made-up pixels for a cut stream or a crash. */
static void test_library_codecs(void **state)
{
    (void)state;
    enum { N = 16 };
    uint16_t v[N * N];
    for (int i = 0; i < N * N; i++)
        v[i] = (uint16_t)(i % 13 == 0 ? 65535 : 1000 + 37 * (i % N) + 501 * (i / N));
    uint8_t want[N * N], got[N * N];
    native16_gray(v, N, want);
    struct {
        const char *ts, *name;
        dcm frame;
    } codecs[] = {
        {"1.2.840.10008.1.2.4.90", "JPEG 2000", j2k_stream(v, N, N)},
        {"1.2.840.10008.1.2.4.80", "JPEG-LS", jpegls_stream(v, N, N, 0)},
    };
    for (size_t c = 0; c < 2; c++) {
        dcm d = dcm_begin(codecs[c].ts, 1, 0);
        image_attrs(&d, N, N, 16, 16, 15, 0, "MONOCHROME2");
        size_t frame_at = d.n + 12 + 8 + 8;
        encapsulate(&d, &codecs[c].frame);
        gray_of(&d, N, got);
        if (memcmp(got, want, sizeof want))
            fail_msg("%s: pixels differ from the uncompressed frame", codecs[c].name);
        size_t flen = codecs[c].frame.n;
        for (size_t cut = 0; cut < flen; cut++) {
            dcm t = dcm_begin(codecs[c].ts, 1, 0);
            image_attrs(&t, N, N, 16, 16, 15, 0, "MONOCHROME2");
            dcm part = {.b = codecs[c].frame.b, .n = cut};
            encapsulate(&t, &part);
            ms_err err = {0};
            if (prepare_code(t.b, t.n, &err) == 0)
                fail_msg("%s cut to %zu of %zu bytes decoded", codecs[c].name, cut, flen);
            free(t.b);
        }
        uint8_t *copy = malloc(d.n);
        assert_non_null(copy);
        for (int round = 0; round < 2000; round++) {
            memcpy(copy, d.b, d.n);
            for (int k = 0; k < 1 + (int)(rng() % 3); k++)
                copy[frame_at + rng() % flen] = (uint8_t)rng();
            ms_err err = {0};
            int rc = prepare_code(copy, d.n, &err);
            if (rc != 0 && !err.msg[0])
                fail_msg("%s: error %d without a message", codecs[c].name, rc);
        }
        free(copy);
        /* a frame of another size than the header's */
        dcm wrong = dcm_begin(codecs[c].ts, 1, 0);
        image_attrs(&wrong, N, N + 1, 16, 16, 15, 0, "MONOCHROME2");
        encapsulate(&wrong, &codecs[c].frame);
        expect_refused(&wrong, MS_EFORMAT, "frame is 16x16");
        free(wrong.b);
        /* 16-bit samples where the header allocates 8 */
        wrong = dcm_begin(codecs[c].ts, 1, 0);
        image_attrs(&wrong, N, N, 8, 8, 7, 0, "MONOCHROME2");
        encapsulate(&wrong, &codecs[c].frame);
        expect_refused(&wrong, MS_EFORMAT, "in 8 bits allocated");
        free(wrong.b);
        free(d.b);
        free(codecs[c].frame.b);
    }
}

/* A JPEG 2000 frame four times the wanted size is decoded a level down:
 * the thumbnail still has its exact size, and the model input stays close
 * to the full decode's. */
static void test_j2k_reduced_decode(void **state)
{
    (void)state;
    enum { N = 64, S = 16 };
    uint16_t v[N * N];
    for (int i = 0; i < N * N; i++)
        v[i] = (uint16_t)(20000 + 150 * (i % N) + 90 * (i / N) + (i % 7) * 40);
    dcm native = dcm_begin(TS_EXPLICIT, 1, 0), j2k = dcm_begin("1.2.840.10008.1.2.4.90", 1, 0);
    image_attrs(&native, N, N, 16, 16, 15, 0, "MONOCHROME2");
    pixels16(&native, v, N * N);
    image_attrs(&j2k, N, N, 16, 16, 15, 0, "MONOCHROME2");
    dcm frame = j2k_stream(v, N, N);
    encapsulate(&j2k, &frame);
    float a[3 * S * S], b[3 * S * S];
    image_prep prep = {S, {0, 0, 0}, {1, 1, 1}};
    ms_err err = {0};
    assert_int_equal(image_prepare(native.b, native.n, NULL, &prep, a, NULL, &err), 0);
    assert_int_equal(image_prepare(j2k.b, j2k.n, NULL, &prep, b, NULL, &err), 0);
    double diff = 0;
    for (int i = 0; i < S * S; i++)
        diff += fabs(a[i] - b[i]);
    if (diff / (S * S) > 2.0)
        fail_msg("reduced JPEG 2000 decode differs by %.2f gray levels on average", diff / (S * S));
    uint8_t *t = NULL;
    size_t tlen = 0;
    assert_int_equal(image_thumbnail(j2k.b, j2k.n, NULL, S, THUMB_PNG, &t, &tlen, &err), 0);
    VipsImage *im = vips_image_new_from_buffer(t, tlen, "", NULL);
    assert_non_null(im);
    assert_int_equal(im->Xsize, S);
    assert_int_equal(im->Ysize, S);
    g_object_unref(im);
    free(t);
    free(frame.b);
    free(native.b);
    free(j2k.b);
}

/* ---- metadata ---- */

static void meta_of(const char *age, const char *sex, const char *date, const char *pid, image_dicom_meta *m)
{
    dcm d = dcm_begin(TS_EXPLICIT, 1, 0);
    el_text(&d, 0x0008, 0x0020, "DA", date);
    el_text(&d, 0x0008, 0x0060, "CS", "DX");
    el_text(&d, 0x0010, 0x0020, "LO", pid);
    el_text(&d, 0x0010, 0x0040, "CS", sex);
    el_text(&d, 0x0010, 0x1010, "AS", age);
    el_text(&d, 0x0018, 0x0015, "CS", "CHEST");
    el_text(&d, 0x0018, 0x5101, "CS", "AP");
    image_attrs(&d, 2, 2, 8, 8, 7, 0, "MONOCHROME2");
    const uint8_t v[4] = {0};
    pixels8(&d, v, 4);
    ms_err err = {0};
    if (image_dicom_metadata(d.b, d.n, m, &err))
        fail_msg("metadata: %s", err.msg);
    free(d.b);
}

static void test_metadata(void **state)
{
    (void)state;
    image_dicom_meta m;
    meta_of("045Y", "F", "20170131", "P-0042", &m);
    assert_int_equal(m.age, 45);
    assert_int_equal(m.sex, 'F');
    assert_string_equal(m.study_date, "2017-01-31");
    assert_string_equal(m.patient_id, "P-0042");
    assert_string_equal(m.view, "AP");
    assert_string_equal(m.modality, "DX");
    assert_string_equal(m.body_part, "CHEST");
    const struct {
        const char *as;
        int years;
    } ages[] = {{"062", 62}, {"018M", 1}, {"011M", 0}, {"104W", 2}, {"400D", 1}, {"250Y", -1},
                {"12X", -1}, {"", -1},   {"1234Y", -1}, {"-5Y", -1}};
    for (size_t i = 0; i < sizeof ages / sizeof *ages; i++) {
        meta_of(ages[i].as, "O", "2017", "\xe9t\xe9", &m);
        if (m.age != ages[i].years)
            fail_msg("age \"%s\": %d, not %d", ages[i].as, m.age, ages[i].years);
        assert_int_equal(m.sex, 0);            /* O: not M or F */
        assert_string_equal(m.study_date, ""); /* not YYYYMMDD */
        assert_string_equal(m.patient_id, ""); /* not ASCII */
    }
    ms_err err = {0};
    assert_int_equal(image_dicom_metadata("hello", 5, &m, &err), MS_EFORMAT);
}

/* ---- deflated data sets ---- */

/* The explicit VR little endian file d (written by dcm_begin(TS_EXPLICIT))
 * as Deflated Explicit VR Little Endian: the meta group names the deflated
 * syntax and the data set after it is one raw deflate stream, then `tail`
 * bytes of padding. */
static dcm deflated_copy(const dcm *d, size_t tail)
{
    size_t meta_end = 132 + 8 + 20; /* preamble, DICM, the transfer syntax element */
    dcm z = dcm_begin(TS_DEFLATED, 1, 0);
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(6);
    assert_non_null(c);
    size_t in = d->n - meta_end, cap = libdeflate_deflate_compress_bound(c, in) + tail;
    uint8_t *out = malloc(cap);
    assert_non_null(out);
    size_t got = libdeflate_deflate_compress(c, d->b + meta_end, in, out, cap);
    assert_true(got > 0);
    libdeflate_free_compressor(c);
    memset(out + got, 0, tail);
    put(&z, out, got + tail);
    free(out);
    return z;
}

static void test_deflated_data_set(void **state)
{
    (void)state;
    /* The same image and attributes as an explicit VR file: the same gray
     * levels, size and metadata, with or without padding after the stream. */
    dcm plain = dcm_begin(TS_EXPLICIT, 1, 0);
    el_text(&plain, 0x0008, 0x0060, "CS", "DX");
    el_text(&plain, 0x0010, 0x0020, "LO", "P-DEFL");
    el_text(&plain, 0x0010, 0x0040, "CS", "F");
    image_attrs(&plain, 2, 2, 16, 12, 11, 0, "MONOCHROME2");
    pixels16(&plain, RAMP12, 4);
    for (size_t tail = 0; tail < 3; tail += 2) {
        dcm z = deflated_copy(&plain, tail);
        uint8_t g[4];
        gray_of(&z, 2, g);
        assert_memory_equal(g, RAMP12_GRAY, 4);
        image_info info;
        ms_err err = {0};
        assert_int_equal(image_probe(z.b, z.n, NULL, &info, &err), 0);
        assert_int_equal(info.format, IMAGE_DICOM);
        assert_int_equal(info.width, 2);
        assert_int_equal(info.bits, 16);
        image_dicom_meta m;
        assert_int_equal(image_dicom_metadata(z.b, z.n, &m, &err), 0);
        assert_string_equal(m.patient_id, "P-DEFL");
        assert_int_equal(m.sex, 'F');
        assert_string_equal(m.modality, "DX");
        free(z.b);
    }
    /* Cut anywhere in the stream: an error naming the deflated data set,
     * or (cut in the pixels' last bytes) the truncated Pixel Data. */
    dcm z = deflated_copy(&plain, 0);
    for (size_t n = 132 + 8 + 22; n < z.n; n++) { /* from the deflated file's data set on */
        ms_err err = {0};
        int rc = prepare_code(z.b, n, &err);
        if (rc != MS_EFORMAT || !strstr(err.msg, "DICOM"))
            fail_msg("cut at %zu of %zu: %d \"%s\"", n, z.n, rc, err.msg);
    }
    free(z.b);
    /* A data set that says deflated but is not. */
    dcm fake = dcm_begin(TS_DEFLATED, 1, 0);
    image_attrs(&fake, 2, 2, 16, 12, 11, 0, "MONOCHROME2");
    pixels16(&fake, RAMP12, 4);
    expect_refused(&fake, MS_EFORMAT, "its deflated data set does not inflate");
    free(fake.b);
    free(plain.b);
}

/* A small file whose data set would inflate past the file size limit (64
 * MiB by default, or a caller's own) or DICOM_MAX_INFLATED: refused as too
 * big, having used at most that much memory. */
static void test_deflate_bomb(void **state)
{
    (void)state;
    size_t n = DICOM_MAX_INFLATED + (1u << 20);
    uint8_t *zeros = calloc(n, 1);
    assert_non_null(zeros);
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(1);
    size_t cap = libdeflate_deflate_compress_bound(c, n);
    uint8_t *bomb = malloc(cap);
    assert_non_null(bomb);
    size_t got = libdeflate_deflate_compress(c, zeros, n, bomb, cap);
    libdeflate_free_compressor(c);
    free(zeros);
    assert_true(got > 0 && got < (4u << 20));
    dcm z = dcm_begin(TS_DEFLATED, 1, 0);
    put(&z, bomb, got);
    free(bomb);
    print_message("a %zu-byte DICOM file whose data set inflates to %zu MiB\n", z.n, n >> 20);
    expect_refused(&z, MS_ETOOBIG, "inflates to over 67108864 bytes (64.0 MiB)");
    image_limits big = {.max_bytes = (size_t)1 << 30, .max_pixels = 50000000};
    ms_err err = {0};
    assert_int_equal(image_probe(z.b, z.n, &big, NULL, &err), MS_ETOOBIG);
    assert_non_null(strstr(err.msg, "inflates to over 268435456 bytes (256.0 MiB)"));
    image_limits small = {.max_bytes = 1 << 20, .max_pixels = 50000000};
    assert_int_equal(image_probe(z.b, z.n, &small, NULL, &err), MS_ETOOBIG);
    free(z.b);
}

/* ---- data sets without the Part 10 wrapper ---- */

/* ramp12's image as older modalities and archives write it: the data set
 * alone, without preamble and "DICM", with the meta group at byte 0 or no
 * meta group at all. */
static dcm bare_ramp12(int explicit_vr, int meta)
{
    dcm d = {0};
    if (meta) {
        el_text(&d, 0x0002, 0x0002, "UI", "1.2.840.10008.5.1.4.1.1.1.1");
        el_text(&d, 0x0002, 0x0003, "UI", "1.2.3.4");
        el_text(&d, 0x0002, 0x0010, "UI", explicit_vr ? TS_EXPLICIT : TS_IMPLICIT);
    }
    d.explicit_vr = explicit_vr;
    el_text(&d, 0x0008, 0x0005, "CS", "ISO_IR 100");
    el_text(&d, 0x0008, 0x0016, "UI", "1.2.840.10008.5.1.4.1.1.1.1");
    el_text(&d, 0x0008, 0x0060, "CS", "DX");
    el_text(&d, 0x0010, 0x0020, "LO", "P-7");
    image_attrs(&d, 2, 2, 16, 12, 11, 0, "MONOCHROME2");
    pixels16(&d, RAMP12, 4);
    return d;
}

static void expect_not_dicom(const dcm *d, const char *why)
{
    if (image_sniff(d->b, d->n) != IMAGE_UNKNOWN)
        fail_msg("taken for an image: %s", why);
}

static void test_bare_data_sets(void **state)
{
    (void)state;
    for (int explicit_vr = 0; explicit_vr < 2; explicit_vr++)
        for (int meta = 0; meta < 2; meta++) {
            dcm d = bare_ramp12(explicit_vr, meta);
            /* told from its head alone, as ingest sniffs a file */
            assert_int_equal(image_sniff(d.b, d.n < 132 ? d.n : 132), IMAGE_DICOM);
            uint8_t g[4];
            gray_of(&d, 2, g);
            assert_memory_equal(g, RAMP12_GRAY, 4);
            image_dicom_meta m;
            ms_err err = {0};
            assert_int_equal(image_dicom_metadata(d.b, d.n, &m, &err), 0);
            assert_string_equal(m.patient_id, "P-7");
            for (size_t n = 0; n < d.n; n++)
                if (prepare_code(d.b, n, &err) == 0)
                    fail_msg("a bare data set cut to %zu of %zu bytes decoded", n, d.n);
            uint8_t *copy = malloc(d.n);
            assert_non_null(copy);
            for (int round = 0; round < 1000; round++) {
                memcpy(copy, d.b, d.n);
                for (int k = 1 + (int)(rng() % 4); k > 0; k--)
                    copy[rng() % d.n] = (uint8_t)rng();
                err.msg[0] = '\0';
                int rc = prepare_code(copy, d.n, &err);
                if (rc != 0 && !err.msg[0])
                    fail_msg("error %d without a message", rc);
            }
            free(copy);
            free(d.b);
        }

    /* ACR-NEMA 2.0: a group length first, and no Photometric
     * Interpretation, read as MONOCHROME2 (a Part 10 file without one is
     * refused: test_refusals_name_the_reason) */
    dcm d = {0};
    el(&d, 0x0008, 0x0000, "UL", "\x1a\0\0\0", 4);
    el_text(&d, 0x0008, 0x0010, "SH", "ACR-NEMA 2.0");
    el_us(&d, 0x0028, 0x0010, 2);
    el_us(&d, 0x0028, 0x0011, 2);
    el_us(&d, 0x0028, 0x0100, 16);
    el_us(&d, 0x0028, 0x0101, 12);
    el_us(&d, 0x0028, 0x0102, 11);
    pixels16(&d, RAMP12, 4);
    uint8_t g[4];
    gray_of(&d, 2, g);
    assert_memory_equal(g, RAMP12_GRAY, 4);
    free(d.b);

    /* a bare structured report: its data set's SOP Class names it */
    d = (dcm){0};
    el_text(&d, 0x0008, 0x0005, "CS", "ISO_IR 100");
    el_text(&d, 0x0008, 0x0016, "UI", "1.2.840.10008.5.1.4.1.1.88.22");
    el_text(&d, 0x0010, 0x0020, "LO", "P-7");
    expect_refused(&d, MS_ENOTIMAGE, "is a structured report");
    free(d.b);

    /* near misses: binary that starts like a data set but is not one */
    d = (dcm){0};
    el_text(&d, 0x0008, 0x0016, "UI", "1.2");
    el_text(&d, 0x0008, 0x0005, "CS", "ISO_IR 100"); /* tags going down */
    expect_not_dicom(&d, "descending tags");
    free(d.b);
    d = (dcm){0};
    el_text(&d, 0x0008, 0x0005, "CS", "ISO_IR 100"); /* one element only */
    expect_not_dicom(&d, "a single element");
    free(d.b);
    d = (dcm){0};
    el_text(&d, 0x0010, 0x0010, "PN", "Doe^J");      /* not group 0002 or 0008 first */
    el_text(&d, 0x0010, 0x0020, "LO", "P-7");
    expect_not_dicom(&d, "group 0010 first");
    free(d.b);
    d = (dcm){0};
    header(&d, 0x0008, 0x0005, "CS", 300);           /* a first value too long for its kind */
    for (int i = 0; i < 300; i++)
        put(&d, "x", 1);
    el_text(&d, 0x0008, 0x0016, "UI", "1.2");
    expect_not_dicom(&d, "a 300-byte first value");
    free(d.b);
    d = (dcm){0};
    d.explicit_vr = 1;
    el_text(&d, 0x0008, 0x0005, "CS", "ISO_IR 100");
    el_text(&d, 0x0008, 0x0016, "Q!", "1.2");        /* explicit, then no VR */
    expect_not_dicom(&d, "a bad VR");
    free(d.b);
}

/* ---- refusals ---- */

static void test_refusals_name_the_reason(void **state)
{
    (void)state;
    const struct {
        const char *ts, *words;
    } syntaxes[] = {
        {"1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000 Lossless transfer syntax"},
        {"1.2.840.10008.1.2.4.100", "transfer syntax 1.2.840.10008.1.2.4.100 is not supported"},
        {"1.2.3.4", "transfer syntax 1.2.3.4 is not supported"},
    };
    for (size_t i = 0; i < sizeof syntaxes / sizeof *syntaxes; i++) {
        dcm d = dcm_begin(syntaxes[i].ts, 1, 0);
        image_attrs(&d, 2, 2, 8, 8, 7, 0, "MONOCHROME2");
        expect_refused(&d, MS_EUNSUPPORTED, syntaxes[i].words);
        free(d.b);
    }
    struct {
        int alloc, stored, high;
        const char *photo;
        int code;
        const char *words;
    } layouts[] = {
        {32, 32, 31, "MONOCHROME2", MS_EUNSUPPORTED, "32 bits allocated"},
        {1, 1, 0, "MONOCHROME2", MS_EUNSUPPORTED, "1 bits allocated"},
        {16, 17, 16, "MONOCHROME2", MS_EFORMAT, "17 bits stored with high bit 16"},
        {16, 12, 10, "MONOCHROME2", MS_EFORMAT, "12 bits stored with high bit 10"},
        {8, 8, 7, "PALETTE COLOR", MS_EUNSUPPORTED, "PALETTE COLOR"},
        {8, 8, 7, "RGB", MS_EFORMAT, "RGB with 1 samples per pixel"},
        {8, 8, 7, "", MS_EFORMAT, "no Photometric Interpretation"},
    };
    for (size_t i = 0; i < sizeof layouts / sizeof *layouts; i++) {
        dcm d = dcm_begin(TS_EXPLICIT, 1, 0);
        image_attrs(&d, 2, 2, layouts[i].alloc, layouts[i].stored, layouts[i].high, 0, layouts[i].photo);
        const uint8_t v[32] = {0};
        pixels8(&d, v, 32);
        expect_refused(&d, layouts[i].code, layouts[i].words);
        free(d.b);
    }
    dcm d = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&d, 2, 2, 8, 8, 7, 0, "MONOCHROME2");
    expect_refused(&d, MS_EFORMAT, "no Pixel Data: it is truncated, or holds no image");
    free(d.b);
    /* Objects without Pixel Data, named by their Media Storage SOP Class;
     * an image class or an unknown one is a file cut before its pixels. */
    const struct {
        const char *sop_class;
        int code;
        const char *words;
    } objects[] = {
        {"1.2.840.10008.1.3.10", MS_ENOTIMAGE,
         "is a DICOMDIR (the index of a DICOM folder) (SOP class 1.2.840.10008.1.3.10), not an image"},
        {"1.2.840.10008.5.1.4.1.1.88.67", MS_ENOTIMAGE, "is a structured report"},
        {"1.2.840.10008.5.1.4.1.1.11.1", MS_ENOTIMAGE, "is a presentation state"},
        {"1.2.840.10008.5.1.4.1.1.104.1", MS_ENOTIMAGE, "is an encapsulated document"},
        {"1.2.840.10008.5.1.4.1.1.1", MS_EFORMAT, "(SOP class 1.2.840.10008.5.1.4.1.1.1): it is truncated"},
        {"1.2.3.4", MS_EFORMAT, "(SOP class 1.2.3.4): it is truncated, or holds no image"},
    };
    for (size_t i = 0; i < sizeof objects / sizeof *objects; i++) {
        d = (dcm){0};
        uint8_t pre[128] = {0};
        put(&d, pre, sizeof pre);
        put(&d, "DICM", 4);
        el_text(&d, 0x0002, 0x0002, "UI", objects[i].sop_class);
        el_text(&d, 0x0002, 0x0010, "UI", TS_EXPLICIT);
        d.explicit_vr = 1;
        el_text(&d, 0x0008, 0x0060, "CS", "SR");
        expect_refused(&d, objects[i].code, objects[i].words);
        free(d.b);
    }
    d = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&d, 2, 2, 8, 8, 7, 0, "MONOCHROME2");
    const uint8_t v[2] = {0};
    pixels8(&d, v, 2); /* 2 x 2 needs 4 */
    expect_refused(&d, MS_EFORMAT, "Pixel Data holds 2 bytes");
    free(d.b);
    d = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&d, 2, 2, 16, 16, 15, 0, "MONOCHROME2");
    header(&d, 0x7fe0, 0x0010, "OW", 8);
    put32(&d, 0, 0); /* cut short: 4 of 8 bytes */
    expect_refused(&d, MS_EFORMAT, "its Pixel Data holds 8 bytes, 4 are left");
    free(d.b);
    /* uncompressed pixel data of undefined length; RLE that is not encapsulated */
    d = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&d, 2, 2, 8, 8, 7, 0, "MONOCHROME2");
    header(&d, 0x7fe0, 0x0010, "OB", 0xffffffffu);
    expect_refused(&d, MS_EFORMAT, "uncompressed Pixel Data of undefined length");
    free(d.b);
    d = dcm_begin(TS_RLE, 1, 0);
    image_attrs(&d, 2, 2, 8, 8, 7, 0, "MONOCHROME2");
    pixels8(&d, v, 2);
    expect_refused(&d, MS_EFORMAT, "Pixel Data is not encapsulated");
    free(d.b);
    /* floating-point pixels */
    d = dcm_begin(TS_EXPLICIT, 1, 0);
    image_attrs(&d, 1, 1, 16, 16, 15, 0, "MONOCHROME2");
    header(&d, 0x7fe0, 0x0008, "OF", 4);
    put32(&d, 0, 0);
    expect_refused(&d, MS_EUNSUPPORTED, "floating-point");
    free(d.b);
}

/* A header claiming a huge image is refused before any pixel. */
static void test_pixel_limit(void **state)
{
    (void)state;
    dcm d = dcm_begin(TS_RLE, 1, 0);
    image_attrs(&d, 65535, 65535, 16, 16, 15, 0, "MONOCHROME2");
    dcm frame = {0};
    uint8_t head[64] = {2};
    put(&frame, head, 64);
    encapsulate(&d, &frame);
    ms_err err = {0};
    image_info info;
    assert_int_equal(image_probe(d.b, d.n, NULL, &info, &err), MS_ETOOBIG);
    assert_non_null(strstr(err.msg, "65535x65535"));
    free(frame.b);
    free(d.b);
}

/* ---- hostile ---- */

static void test_truncated_at_every_length(void **state)
{
    (void)state;
    dcm d = ramp12(TS_EXPLICIT, 1, 0);
    for (size_t n = 0; n < d.n; n++) {
        ms_err err = {0};
        int rc = prepare_code(d.b, n, &err);
        if (rc == 0 || !err.msg[0])
            fail_msg("a file cut to %zu of %zu bytes gave %d \"%s\"", n, d.n, rc, err.msg);
    }
    free(d.b);
    /* the same for an RLE file */
    uint8_t px[16];
    for (int i = 0; i < 16; i++)
        px[i] = (uint8_t)(i * 16);
    dcm r = dcm_begin(TS_RLE, 1, 0);
    image_attrs(&r, 4, 4, 8, 8, 7, 0, "MONOCHROME2");
    dcm frame = rle_frame(px, 16, 1, 1);
    encapsulate(&r, &frame);
    uint8_t g[16];
    gray_of(&r, 4, g);
    assert_memory_equal(g, px, 16);
    for (size_t n = 0; n < r.n; n++) {
        ms_err err = {0};
        if (prepare_code(r.b, n, &err) == 0)
            fail_msg("an RLE file cut to %zu of %zu bytes decoded", n, r.n);
    }
    free(frame.b);
    free(r.b);
}

static void test_nesting_bomb(void **state)
{
    (void)state;
    dcm d = dcm_begin(TS_EXPLICIT, 1, 0);
    for (int i = 0; i < 10000; i++) {
        header(&d, 0x0008, 0x1140, "SQ", 0xffffffffu);
        header(&d, 0xfffe, 0xe000, NULL, 0xffffffffu);
    }
    expect_refused(&d, MS_EFORMAT, "nested more than 16 deep");
    free(d.b);
    /* lengths that point past the end, and a length of 0xfffffffe */
    d = dcm_begin(TS_EXPLICIT, 1, 0);
    header(&d, 0x0008, 0x0016, "UT", 0xfffffffeu);
    expect_refused(&d, MS_EFORMAT, "runs past the end");
    free(d.b);
    /* an item outside any sequence, a bad VR */
    d = dcm_begin(TS_EXPLICIT, 1, 0);
    header(&d, 0xfffe, 0xe000, NULL, 0);
    expect_refused(&d, MS_EFORMAT, "outside any sequence");
    free(d.b);
    d = dcm_begin(TS_EXPLICIT, 1, 0);
    header(&d, 0x0008, 0x0016, "u$", 0);
    expect_refused(&d, MS_EFORMAT, "no valid value representation");
    free(d.b);
}

/* Random byte changes of valid files: an image or an error, nothing else
 * (ASan and UBSan watch the rest). */
static void test_mutations(void **state)
{
    (void)state;
    dcm files[3] = {ramp12(TS_EXPLICIT, 1, 0), ramp12(TS_IMPLICIT, 0, 0), ramp12(TS_BIG, 1, 1)};
    for (int f = 0; f < 3; f++) {
        uint8_t *copy = malloc(files[f].n);
        assert_non_null(copy);
        for (int round = 0; round < 3000; round++) {
            memcpy(copy, files[f].b, files[f].n);
            int changes = 1 + (int)(rng() % 4);
            for (int k = 0; k < changes; k++)
                copy[128 + rng() % (files[f].n - 128)] = (uint8_t)rng();
            ms_err err = {0};
            int rc = prepare_code(copy, files[f].n, &err);
            if (rc != 0 && !err.msg[0])
                fail_msg("error %d without a message", rc);
            image_dicom_meta m;
            image_dicom_metadata(copy, files[f].n, &m, &err);
        }
        free(copy);
        free(files[f].b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_syntaxes_give_the_same_pixels),
        cmocka_unit_test(test_high_bit_and_sign),
        cmocka_unit_test(test_eight_bit_as_stored_and_monochrome1),
        cmocka_unit_test(test_rescale_and_windows),
        cmocka_unit_test(test_voi_lut_sequence),
        cmocka_unit_test(test_pixel_padding),
        cmocka_unit_test(test_colour),
        cmocka_unit_test(test_rle),
        cmocka_unit_test(test_jpeg_lossless),
        cmocka_unit_test(test_jpeg_process_from_the_frame),
        cmocka_unit_test(test_jpeg_12bit_samples),
        cmocka_unit_test(test_jpeg_dct_against_libjpeg),
        cmocka_unit_test(test_jpeg_12bit_dicom),
        cmocka_unit_test(test_standalone_jpeg_files),
        cmocka_unit_test(test_library_codecs),
        cmocka_unit_test(test_j2k_reduced_decode),
        cmocka_unit_test(test_first_frame_of_several),
        cmocka_unit_test(test_sequences_are_skipped),
        cmocka_unit_test(test_metadata),
        cmocka_unit_test(test_deflated_data_set),
        cmocka_unit_test(test_deflate_bomb),
        cmocka_unit_test(test_bare_data_sets),
        cmocka_unit_test(test_refusals_name_the_reason),
        cmocka_unit_test(test_pixel_limit),
        cmocka_unit_test(test_truncated_at_every_length),
        cmocka_unit_test(test_nesting_bomb),
        cmocka_unit_test(test_mutations),
    };
    RUN_IMAGE_TESTS(tests);
}
