/*
 * test_image_png.c - the direct PNG decoder (src/image/png_direct.c)
 * against libpng, through libvips' own PNG loader, on files built here
 * byte by byte: every filter type on every row pattern, every colour type
 * and depth it takes, widths that leave a partial last pixel group, IDAT
 * split at odd places, ancillary chunks around the data; the 16- and 32-row
 * blocks of 1- and 2-byte pixel rows that png_unfilter.c unfilters together, with
 * any mix of filters, at every width around the 16-byte tiles, with its
 * AVX2 path and without; png_unfilter itself against the filters'
 * definition for every pixel size. Then every layout
 * it must hand back to libvips untouched, and the decompression bomb it
 * must refuse itself.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libdeflate.h>
#include <vips/vips.h>

#include "image/image.h"
#include "image/internal.h"
#include "image_test_util.h"

/* ---- building PNGs ---- */

typedef struct bytes {
    uint8_t *p;
    size_t len, cap;
} bytes;

static void put(bytes *b, const void *src, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void put_be32(bytes *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    put(b, x, 4);
}

/* One chunk; crc_delta != 0 spoils its CRC. */
static void put_chunk(bytes *b, const char *type, const void *data, uint32_t n, uint32_t crc_delta)
{
    put_be32(b, n);
    size_t at = b->len;
    put(b, type, 4);
    if (n)
        put(b, data, n);
    put_be32(b, libdeflate_crc32(0, b->p + at, 4 + (size_t)n) + crc_delta);
}

static uint64_t rng_state;
static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* Forward filter of one row (the inverse of what the decoder undoes). */
static uint8_t paeth_ref(int a, int b, int c)
{
    int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    return (uint8_t)(pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
}

static void filter_row(uint8_t *dst, const uint8_t *row, const uint8_t *prev, size_t n, size_t bpp, int type)
{
    for (size_t i = 0; i < n; i++) {
        int a = i >= bpp ? row[i - bpp] : 0, b = prev[i], c = i >= bpp ? prev[i - bpp] : 0;
        int pred = type == 0 ? 0 : type == 1 ? a : type == 2 ? b : type == 3 ? (a + b) / 2 : paeth_ref(a, b, c);
        dst[i] = (uint8_t)(row[i] - pred);
    }
}

typedef struct png_spec {
    int colour, depth, w, h;
    int filter;           /* 0-4 for all rows, -1 = row y uses y % 5, -2 = each row a random one */
    int interlace;
    int idat_split;       /* IDAT chunk size, 0 = one chunk */
    int text_before, text_after, trns, plte, unknown_critical;
    int idat_crc_bad, text_crc_bad, idat_gap, no_iend;
    int stray_after_stream, rows_short, extra_raw, bad_filter;
    int smooth;           /* pixel values mostly from neighbours, to walk every Paeth branch */
} png_spec;

static int channels_of(int colour)
{
    return colour == 0 ? 1 : colour == 2 ? 3 : colour == 4 ? 2 : colour == 6 ? 4 : 1;
}

/* The raw (unfiltered) pixel bytes, as PNG orders them. */
static uint8_t *make_pixels(const png_spec *s, size_t *row_bytes)
{
    *row_bytes = ((size_t)s->w * channels_of(s->colour) * s->depth + 7) / 8;
    uint8_t *px = malloc(*row_bytes * s->h + 1);
    assert_non_null(px);
    for (size_t i = 0; i < *row_bytes * s->h; i++) {
        if (s->smooth && i > *row_bytes && rnd() % 4)
            px[i] = (uint8_t)(px[i - *row_bytes] + rnd() % 5 - 2);
        else
            px[i] = (uint8_t)rnd();
    }
    return px;
}

static bytes make_png(const png_spec *s)
{
    size_t rb;
    uint8_t *px = make_pixels(s, &rb);
    size_t bpp = ((size_t)channels_of(s->colour) * s->depth + 7) / 8;
    int rows = s->h - (s->rows_short ? 1 : 0);
    size_t raw_len = (1 + rb) * rows + (s->extra_raw ? 10 : 0);
    uint8_t *raw = calloc(1, raw_len), *zero = calloc(1, rb + 1);
    assert_non_null(raw);
    for (int y = 0; y < rows; y++) {
        int type = s->filter >= 0 ? s->filter : s->filter == -1 ? y % 5 : (int)(rnd() % 5);
        raw[y * (1 + rb)] = (uint8_t)(s->bad_filter && y == rows / 2 ? 5 : type);
        filter_row(raw + y * (1 + rb) + 1, px + y * rb, y ? px + (y - 1) * rb : zero, rb, bpp, type);
    }
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(6);
    size_t zcap = libdeflate_zlib_compress_bound(c, raw_len) + 16;
    uint8_t *z = malloc(zcap);
    size_t zlen = libdeflate_zlib_compress(c, raw, raw_len, z, zcap);
    assert_true(zlen > 0);
    libdeflate_free_compressor(c);
    if (s->stray_after_stream) {
        memcpy(z + zlen, "junk", 4);
        zlen += 4;
    }

    bytes b = {0};
    put(&b, "\x89PNG\r\n\x1a\n", 8);
    uint8_t ihdr[13];
    uint32_t w = (uint32_t)s->w, h = (uint32_t)s->h;
    uint8_t dims[8] = {(uint8_t)(w >> 24), (uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w,
                       (uint8_t)(h >> 24), (uint8_t)(h >> 16), (uint8_t)(h >> 8), (uint8_t)h};
    memcpy(ihdr, dims, 8);
    ihdr[8] = (uint8_t)s->depth;
    ihdr[9] = (uint8_t)s->colour;
    ihdr[10] = ihdr[11] = 0;
    ihdr[12] = (uint8_t)s->interlace;
    put_chunk(&b, "IHDR", ihdr, 13, 0);
    if (s->text_before)
        put_chunk(&b, "tEXt", "Comment\0before", 14, s->text_crc_bad);
    if (s->plte || s->colour == 3)
        put_chunk(&b, "PLTE", "\0\0\0\xff\xff\xff", 6, 0);
    if (s->trns)
        put_chunk(&b, "tRNS", "\0\0", 2, 0);
    if (s->unknown_critical)
        put_chunk(&b, "ABCD", "x", 1, 0);
    size_t step = s->idat_split ? (size_t)s->idat_split : zlen;
    for (size_t off = 0; off < zlen; off += step) {
        size_t n = zlen - off < step ? zlen - off : step;
        put_chunk(&b, "IDAT", z + off, (uint32_t)n, s->idat_crc_bad && off == 0);
        if (s->idat_gap && off == 0 && n < zlen)
            put_chunk(&b, "tEXt", "Gap\0x", 5, 0);
    }
    if (s->text_after)
        put_chunk(&b, "tEXt", "Comment\0after", 13, 0);
    if (!s->no_iend)
        put_chunk(&b, "IEND", NULL, 0, 0);
    free(px);
    free(raw);
    free(zero);
    free(z);
    return b;
}

/* ---- comparing with libpng ---- */

/* The decoded pixels as libvips' PNG loader (libpng) gives them, in
 * machine order; NULL when it refuses the file. */
static uint8_t *libpng_pixels(const bytes *b, size_t *len, VipsImage **meta)
{
    VipsImage *im = NULL;
    if (vips_pngload_buffer(b->p, b->len, &im, "fail_on", VIPS_FAIL_ON_ERROR, NULL))
        return NULL;
    void *mem = vips_image_write_to_memory(im, len);
    *meta = im;
    return mem;
}

static void expect_same_as_libpng(const png_spec *s)
{
    bytes b = make_png(s);
    ms_err err = {0};
    VipsImage *direct = NULL;
    int rc = png_decode_direct(b.p, b.len, &direct, &err);
    assert_int_equal(rc, 0);
    assert_non_null(direct);
    size_t ref_len = 0;
    VipsImage *ref = NULL;
    uint8_t *ref_px = libpng_pixels(&b, &ref_len, &ref);
    assert_non_null(ref_px);
    assert_int_equal(direct->Xsize, ref->Xsize);
    assert_int_equal(direct->Ysize, ref->Ysize);
    assert_int_equal(direct->Bands, ref->Bands);
    assert_int_equal(direct->BandFmt, ref->BandFmt);
    assert_int_equal(direct->Type, ref->Type);
    size_t len = 0;
    uint8_t *px = vips_image_write_to_memory(direct, &len);
    assert_int_equal(len, ref_len);
    if (memcmp(px, ref_px, len) != 0)
        fail_msg("colour %d depth %d %dx%d filter %d: pixels differ from libpng's", s->colour, s->depth, s->w,
                 s->h, s->filter);
    g_free(px);
    g_free(ref_px);
    g_object_unref(ref);
    g_object_unref(direct);
    free(b.p);
}

static void test_same_pixels_as_libpng(void **state)
{
    (void)state;
    static const int colours[] = {0, 2, 4, 6}, depths[] = {8, 16};
    static const int widths[] = {1, 2, 3, 5, 17, 64}, heights[] = {1, 4, 9};
    rng_state = 1;
    int cases = 0;
    for (size_t ci = 0; ci < 4; ci++)
        for (size_t di = 0; di < 2; di++)
            for (size_t wi = 0; wi < 6; wi++)
                for (size_t hi = 0; hi < 3; hi++)
                    for (int filter = -1; filter <= 4; filter++)
                        for (int smooth = 0; smooth <= 1; smooth++) {
                            png_spec s = {.colour = colours[ci], .depth = depths[di], .w = widths[wi],
                                          .h = heights[hi], .filter = filter, .smooth = smooth};
                            expect_same_as_libpng(&s);
                            cases++;
                        }
    assert_int_equal(cases, 4 * 2 * 6 * 3 * 6 * 2);
}

static void test_split_idat_and_ancillary_chunks(void **state)
{
    (void)state;
    rng_state = 2;
    for (int split = 1; split <= 7; split += 3) {
        png_spec s = {.colour = 2, .depth = 8, .w = 33, .h = 20, .filter = -1, .idat_split = split,
                      .text_before = 1, .text_after = 1, .smooth = 1};
        expect_same_as_libpng(&s);
    }
    png_spec big = {.colour = 0, .depth = 8, .w = 1024, .h = 300, .filter = -1, .idat_split = 8192, .smooth = 1};
    expect_same_as_libpng(&big);
}

/* Rows of 1- and 2-byte pixels (8-bit gray; 16-bit gray and 8-bit
 * gray+alpha) go through png_unfilter.c's wavefront blocks of 16 and 32
 * rows: every width around its 16-byte tiles (edges where some lanes are
 * outside their row), heights that leave 1-31 rows to the one-row code,
 * blocks of None and Up only (done row by row) next to chained ones, random
 * filters per row; with the AVX2 path and without. */
static void test_row_blocks_same_as_libpng(void **state)
{
    (void)state;
    static const int widths[] = {1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 48, 63, 100};
    static const int heights[] = {15, 16, 17, 31, 32, 33, 48, 49, 64, 95};
    static const int filters[] = {-2, -1, 0, 1, 2, 3, 4};
    static const int layouts[][2] = {{0, 8}, {0, 16}, {4, 8}}; /* colour type, depth */
    rng_state = 5;
    for (int simd = 1; simd >= 0; simd--) {
        png_unfilter_allow_simd(simd);
        for (size_t li = 0; li < 3; li++)
            for (size_t wi = 0; wi < sizeof widths / sizeof *widths; wi++)
                for (size_t hi = 0; hi < sizeof heights / sizeof *heights; hi++)
                    for (size_t fi = 0; fi < sizeof filters / sizeof *filters; fi++) {
                        /* 8-bit gray: both contents; the 2-byte layouts: one each */
                        for (int smooth = li ? (int)(fi % 2) : 0; smooth <= (li ? (int)(fi % 2) : 1); smooth++) {
                            png_spec s = {.colour = layouts[li][0], .depth = layouts[li][1], .w = widths[wi],
                                          .h = heights[hi], .filter = filters[fi], .smooth = smooth};
                            expect_same_as_libpng(&s);
                        }
                    }
        png_spec big = {.colour = 0, .depth = 8, .w = 1024, .h = 200, .filter = -2, .smooth = 1};
        expect_same_as_libpng(&big);
        png_spec big16 = {.colour = 0, .depth = 16, .w = 512, .h = 100, .filter = -2, .smooth = 1};
        expect_same_as_libpng(&big16);
    }
    png_unfilter_allow_simd(1);
}

/* png_unfilter against the filters' definition (filter_row's inverse,
 * byte by byte), every pixel size 1-8, and a filter type above 4 refused
 * with nothing changed. */
static void test_unfilter_matches_definition(void **state)
{
    (void)state;
    rng_state = 6;
    for (int simd = 1; simd >= 0; simd--) {
        png_unfilter_allow_simd(simd);
        for (size_t bpp = 1; bpp <= 8; bpp++)
            for (size_t n = bpp; n <= 70; n += bpp * 3 + 1) {
                size_t h = 1 + rnd() % 70, stride = 1 + n;
                uint8_t *px = malloc(n * h), *raw = malloc(stride * h), *zero = calloc(1, n);
                assert_non_null(px);
                assert_non_null(raw);
                assert_non_null(zero);
                for (size_t i = 0; i < n * h; i++)
                    px[i] = (uint8_t)(i >= n && rnd() % 3 ? px[i - n] + rnd() % 7 - 3 : rnd());
                for (size_t y = 0; y < h; y++) {
                    raw[y * stride] = (uint8_t)(rnd() % 5);
                    filter_row(raw + y * stride + 1, px + y * n, y ? px + (y - 1) * n : zero, n, bpp,
                               raw[y * stride]);
                }
                assert_int_equal(png_unfilter(raw, n, h, bpp), 0);
                for (size_t y = 0; y < h; y++)
                    if (memcmp(raw + y * stride + 1, px + y * n, n) != 0)
                        fail_msg("bpp %zu, %zu x %zu, simd %d: row %zu differs", bpp, n, h, simd, y);
                free(px);
                free(raw);
                free(zero);
            }
    }
    png_unfilter_allow_simd(1);
    uint8_t raw[3 * 33];
    for (size_t i = 0; i < sizeof raw; i++)
        raw[i] = (uint8_t)(i % 33 ? i : 1);
    raw[2 * 33] = 5;
    uint8_t before[sizeof raw];
    memcpy(before, raw, sizeof raw);
    assert_int_equal(png_unfilter(raw, 32, 3, 1), PNG_DIRECT_DECLINED);
    assert_memory_equal(raw, before, sizeof raw);
}

/* ---- what goes back to libvips ---- */

static void expect_declined(const png_spec *s, const char *what)
{
    bytes b = make_png(s);
    ms_err err = {0};
    VipsImage *direct = NULL;
    int rc = png_decode_direct(b.p, b.len, &direct, &err);
    if (rc != PNG_DIRECT_DECLINED)
        fail_msg("%s: expected the libvips path, got %d (%s)", what, rc, err.msg);
    assert_null(direct);
    assert_int_equal(err.code, 0);
    /* and the full path still gives a verdict without a crash */
    image_prep prep = {.size = 8, .mean = {0, 0, 0}, .scale = {1, 1, 1}};
    float out[3 * 8 * 8];
    rc = image_prepare(b.p, b.len, NULL, &prep, out, NULL, &err);
    if (rc != 0 && rc != MS_EFORMAT)
        fail_msg("%s: image_prepare gave %d (%s)", what, rc, err.msg);
    free(b.p);
}

static void test_declines_what_it_does_not_take(void **state)
{
    (void)state;
    rng_state = 3;
    png_spec base = {.colour = 0, .depth = 8, .w = 16, .h = 8, .filter = -1};
    png_spec s;
    s = base; s.colour = 3; expect_declined(&s, "palette");
    s = base; s.depth = 4; expect_declined(&s, "4-bit gray");
    s = base; s.depth = 1; expect_declined(&s, "1-bit gray");
    s = base; s.interlace = 1; expect_declined(&s, "Adam7");
    s = base; s.trns = 1; expect_declined(&s, "tRNS");
    s = base; s.colour = 2; s.plte = 1; expect_declined(&s, "suggested palette");
    s = base; s.unknown_critical = 1; expect_declined(&s, "unknown critical chunk");
    s = base; s.idat_crc_bad = 1; expect_declined(&s, "IDAT CRC");
    s = base; s.text_before = 1; s.text_crc_bad = 1; expect_declined(&s, "tEXt CRC");
    s = base; s.idat_split = 5; s.idat_gap = 1; expect_declined(&s, "IDATs not consecutive");
    s = base; s.no_iend = 1; expect_declined(&s, "no IEND");
    s = base; s.stray_after_stream = 1; expect_declined(&s, "bytes after the zlib stream");
    s = base; s.rows_short = 1; expect_declined(&s, "a row short");
    s = base; s.extra_raw = 1; expect_declined(&s, "extra data within libpng's tolerance");
    s = base; s.bad_filter = 1; expect_declined(&s, "filter type 5");
}

static void test_corrupt_stream_and_truncation_declined(void **state)
{
    (void)state;
    rng_state = 4;
    png_spec s = {.colour = 0, .depth = 8, .w = 40, .h = 30, .filter = -1, .smooth = 1};
    bytes good = make_png(&s);
    ms_err err = {0};
    VipsImage *im = NULL;
    /* every cut inside the file, and a flipped byte in every position */
    for (size_t cut = 8; cut < good.len; cut++) {
        assert_int_equal(png_decode_direct(good.p, cut, &im, &err), PNG_DIRECT_DECLINED);
        assert_null(im);
    }
    for (size_t at = 8; at < good.len; at++) {
        good.p[at] ^= 0x5a;
        int rc = png_decode_direct(good.p, good.len, &im, &err);
        good.p[at] ^= 0x5a;
        if (rc != PNG_DIRECT_DECLINED) /* a length field or a CRC says so */
            fail_msg("a flipped byte at %zu of %zu gave %d, not the libvips path", at, good.len, rc);
        assert_null(im);
    }
    free(good.p);
}

static void test_too_large_raw_declined(void **state)
{
    (void)state;
    /* 8192 x 8192 gray is 64 MiB + 8 KiB of raw rows: beyond the direct
     * path's bound, whatever the data */
    bytes b = {0};
    put(&b, "\x89PNG\r\n\x1a\n", 8);
    uint8_t ihdr[13] = {0, 0, 0x20, 0, 0, 0, 0x20, 0, 8, 0, 0, 0, 0};
    put_chunk(&b, "IHDR", ihdr, 13, 0);
    put_chunk(&b, "IDAT", "\x78\x9c\x03\x00\x00\x00\x00\x01", 8, 0);
    put_chunk(&b, "IEND", NULL, 0, 0);
    ms_err err = {0};
    VipsImage *im = NULL;
    assert_int_equal(png_decode_direct(b.p, b.len, &im, &err), PNG_DIRECT_DECLINED);
    free(b.p);
}

/* A 16x16 header over a stream of 4 MiB of zeros: refused here, having
 * inflated no more than the declared rows and libpng's slack. */
static void test_bomb_refused(void **state)
{
    (void)state;
    size_t n = (size_t)4 << 20;
    uint8_t *zeros = calloc(1, n);
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(9);
    size_t zcap = libdeflate_zlib_compress_bound(c, n);
    uint8_t *z = malloc(zcap);
    size_t zlen = libdeflate_zlib_compress(c, zeros, n, z, zcap);
    libdeflate_free_compressor(c);
    bytes b = {0};
    put(&b, "\x89PNG\r\n\x1a\n", 8);
    uint8_t ihdr[13] = {0, 0, 0, 16, 0, 0, 0, 16, 8, 0, 0, 0, 0};
    put_chunk(&b, "IHDR", ihdr, 13, 0);
    put_chunk(&b, "IDAT", z, (uint32_t)zlen, 0);
    put_chunk(&b, "IEND", NULL, 0, 0);
    ms_err err = {0};
    VipsImage *im = NULL;
    assert_int_equal(png_decode_direct(b.p, b.len, &im, &err), MS_EFORMAT);
    assert_null(im);
    assert_non_null(strstr(err.msg, "decompression bomb"));
    /* the same verdict through the public call */
    image_prep prep = {.size = 8, .mean = {0, 0, 0}, .scale = {1, 1, 1}};
    float out[3 * 8 * 8];
    assert_int_equal(image_prepare(b.p, b.len, NULL, &prep, out, NULL, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "decompression bomb"));
    free(zeros);
    free(z);
    free(b.p);
}

/* image_prepare through the direct path equals image_prepare of the same
 * pixels in a file the direct path declines (here: with a tRNS chunk,
 * whose alpha the preparation drops). */
static void test_prepare_same_on_both_paths(void **state)
{
    (void)state;
    static const int colours[] = {0, 2, 4, 6}, depths[] = {8, 16};
    for (size_t ci = 0; ci < 4; ci++)
        for (size_t di = 0; di < 2; di++) {
            png_spec s = {.colour = colours[ci], .depth = depths[di], .w = 97, .h = 61, .filter = -1, .smooth = 1};
            rng_state = 5 + ci * 2 + di;
            bytes plain = make_png(&s);
            s.text_before = 1; /* an ancillary chunk: still direct */
            s.plte = s.colour == 2 || s.colour == 6;  /* a suggested palette: libvips path */
            s.unknown_critical = !s.plte;             /* (or an unknown chunk libpng refuses) */
            rng_state = 5 + ci * 2 + di;
            bytes declined = make_png(&s);
            image_prep prep = {.size = 32, .mean = {10, 20, 30}, .scale = {0.5f, 1, 2}};
            float a[3 * 32 * 32], b[3 * 32 * 32];
            ms_err err = {0};
            assert_int_equal(image_prepare(plain.p, plain.len, NULL, &prep, a, NULL, &err), 0);
            int rc = image_prepare(declined.p, declined.len, NULL, &prep, b, NULL, &err);
            if (s.plte) {
                assert_int_equal(rc, 0);
                assert_memory_equal(a, b, sizeof a);
            } else {
                assert_int_equal(rc, MS_EFORMAT); /* libpng: unknown critical chunk */
            }
            free(plain.p);
            free(declined.p);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_pixels_as_libpng),
        cmocka_unit_test(test_split_idat_and_ancillary_chunks),
        cmocka_unit_test(test_row_blocks_same_as_libpng),
        cmocka_unit_test(test_unfilter_matches_definition),
        cmocka_unit_test(test_declines_what_it_does_not_take),
        cmocka_unit_test(test_corrupt_stream_and_truncation_declined),
        cmocka_unit_test(test_too_large_raw_declined),
        cmocka_unit_test(test_bomb_refused),
        cmocka_unit_test(test_prepare_same_on_both_paths),
    };
    RUN_IMAGE_TESTS(tests);
}
