/*
 * png_unfilter.c - undoing PNG's row filters (PNG specification, section 9)
 * for the direct decoder; see internal.h for the contract.
 *
 * Why there is more here than the five filters: X-ray PNGs are 8-bit gray,
 * and the encoders that write them choose Paeth for most rows (libpng's
 * adaptive choice picks it for nearly every row of a smooth radiograph; the
 * NIH ChestX-ray14 export alternates Up and Paeth). With one byte per pixel
 * every Paeth byte depends on the byte just decoded to its left, a chain of
 * a dozen dependent instructions per byte: about 3 ns a byte, 3 ms of a
 * 1024x1024 image's 4 ms decode. The chain runs along a row, but nothing
 * forces rows to be done one after another:
 *
 *     byte (y, x) needs (y, x-1), (y-1, x) and (y-1, x-1),
 *
 * so all the bytes on one anti-diagonal of a block of rows are independent.
 * The AVX2 path takes 16 rows at a time, one per 16-bit lane, row j of the
 * block running j bytes behind row 0 ("skewed"): at step t lane j decodes
 * x = t - j. What lane j needs is then already in registers:
 *
 *     a = (j, x-1)    lane j of the previous step's result;
 *     b = (j-1, x)    lane j-1 of the previous step's result;
 *     c = (j-1, x-1)  lane j-1 two steps back, i.e. the previous step's b;
 *
 * lane 0 takes b and c from the row above the block. Each lane applies its
 * own row's filter (all five are a predictor of a, b, c), so the rows of a
 * block may use any mix of filters. Bytes come in and go out in 16x16
 * tiles, transposed so that one step reads one column of the skewed tile.
 * Lanes left of their row's start see zeros and produce zeros, exactly the
 * filters' convention for the bytes before a row; lanes past their row's
 * end compute garbage that no lane inside its row ever reads (lane j+1 at x
 * reads lane j at x and x-1) and that is never stored.
 *
 * With 2-byte pixels (16-bit gray, 8-bit gray+alpha) a and c are the
 * bytes two back, (j, x-2) and (j-1, x-2): the same wavefront, keeping the
 * results and b's of the last two steps instead of one.
 *
 * One step is itself a chain of about a dozen instructions, so 32 rows go
 * in two registers whose chains overlap, the second 16 rows below the
 * first (its lane 0 takes b from the first register's lane 15). Measured
 * on Zen 5: 0.5 ns a byte for any mix of filters, against 2.8 for Paeth
 * one row at a time. The pixels are the scalar code's
 * (tests/unit/test_image_png.c holds both to libpng's).
 */
#include "image/internal.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* The Paeth predictor with the three distances written so that the
 * compiler can keep them branch-free: |p - a| = |b - c|, |p - b| = |a - c|,
 * |p - c| = |a + b - 2c| for p = a + b - c. "pa <= pb && pa <= pc ? a :
 * pb <= pc ? b : c" is written as two selects and a minimum: the && made
 * gcc branch, and on an X-ray's noise that branch is mispredicted about as
 * often as not. */
static inline unsigned paeth(int a, int b, int c)
{
    int pa = abs(b - c), pb = abs(a - c), pc = abs(a + b - 2 * c);
    int b_or_c = pb <= pc ? b : c, nearest = pb <= pc ? pb : pc;
    return (unsigned)(pa <= nearest ? a : b_or_c);
}

/* One-byte pixels, one row: "a" carried in a register instead of read back
 * from the row, which keeps the chain out of store-to-load forwarding. */
static void unfilter_row_bpp1(uint8_t *row, const uint8_t *prev, size_t n, unsigned filter)
{
    unsigned a = 0, c = 0;
    switch (filter) {
    case 1:
        for (size_t i = 0; i < n; i++)
            row[i] = (uint8_t)(a = (row[i] + a) & 0xff);
        return;
    case 3:
        for (size_t i = 0; i < n; i++)
            row[i] = (uint8_t)(a = (row[i] + ((a + prev[i]) >> 1)) & 0xff);
        return;
    case 4:
        for (size_t i = 0; i < n; i++) {
            unsigned b = prev[i];
            a = (row[i] + paeth((int)a, (int)b, (int)c)) & 0xff;
            row[i] = (uint8_t)a;
            c = b;
        }
        return;
    }
}

/* 16 bytes that add lane by lane, modulo 256 (GCC and Clang vectors). */
typedef uint8_t bytes16 __attribute__((vector_size(16)));

/* Undoes one row's filter (0-4) in place. row holds n bytes; prev is the
 * row above, already unfiltered; bpp is the bytes of one pixel (the
 * filters' "a" is bpp bytes back). */
static void unfilter_row(uint8_t *row, const uint8_t *prev, size_t n, size_t bpp, unsigned filter)
{
    size_t i;
    if (bpp == 1 && filter != 0 && filter != 2) {
        unfilter_row_bpp1(row, prev, n, filter);
        return;
    }
    switch (filter) {
    case 1:
        for (i = bpp; i < n; i++)
            row[i] = (uint8_t)(row[i] + row[i - bpp]);
        return;
    case 2:
        /* 16 bytes at a time by hand: gcc's -O2 does not vectorise a loop
         * that needs a check that row and prev do not overlap */
        for (i = 0; i + 16 <= n; i += 16) {
            bytes16 r, p;
            memcpy(&r, row + i, 16);
            memcpy(&p, prev + i, 16);
            r += p;
            memcpy(row + i, &r, 16);
        }
        for (; i < n; i++)
            row[i] = (uint8_t)(row[i] + prev[i]);
        return;
    case 3:
        for (i = 0; i < bpp && i < n; i++)
            row[i] = (uint8_t)(row[i] + (prev[i] >> 1));
        for (; i < n; i++)
            row[i] = (uint8_t)(row[i] + ((row[i - bpp] + prev[i]) >> 1));
        return;
    case 4:
        for (i = 0; i < bpp && i < n; i++)
            row[i] = (uint8_t)(row[i] + prev[i]); /* a = c = 0: Paeth picks b */
        for (; i < n; i++)
            row[i] = (uint8_t)(row[i] + paeth(row[i - bpp], prev[i], prev[i - bpp]));
        return;
    }
}

static _Atomic int simd_allowed = 1;

void png_unfilter_allow_simd(int allow)
{
    simd_allowed = allow;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2")))

/* Transposes a 16x16 byte tile: col[i] byte j = row[j] byte i. Four
 * rounds of interleaving, each doubling the width of what stays together:
 * bytes of 2 rows, 16-bit pairs of 4, 32-bit quads of 8, 64-bit halves. */
AVX2 static void transpose16(const __m128i row[16], __m128i col[16])
{
    __m128i a[16], b[16], c[16];
    /* a[2p + h] word i: rows 2p, 2p+1 at column 8h + i */
    for (int p = 0; p < 8; p++) {
        a[2 * p] = _mm_unpacklo_epi8(row[2 * p], row[2 * p + 1]);
        a[2 * p + 1] = _mm_unpackhi_epi8(row[2 * p], row[2 * p + 1]);
    }
    /* b[4q + g] dword i: rows 4q..4q+3 at column 4g + i */
    for (int q = 0; q < 4; q++)
        for (int h = 0; h < 2; h++) {
            b[4 * q + 2 * h] = _mm_unpacklo_epi16(a[4 * q + h], a[4 * q + 2 + h]);
            b[4 * q + 2 * h + 1] = _mm_unpackhi_epi16(a[4 * q + h], a[4 * q + 2 + h]);
        }
    /* c[8h + m] qword i: rows 8h..8h+7 at column 2m + i */
    for (int h = 0; h < 2; h++)
        for (int g = 0; g < 4; g++) {
            c[8 * h + 2 * g] = _mm_unpacklo_epi32(b[8 * h + g], b[8 * h + 4 + g]);
            c[8 * h + 2 * g + 1] = _mm_unpackhi_epi32(b[8 * h + g], b[8 * h + 4 + g]);
        }
    for (int m = 0; m < 8; m++) {
        col[2 * m] = _mm_unpacklo_epi64(c[m], c[8 + m]);
        col[2 * m + 1] = _mm_unpackhi_epi64(c[m], c[8 + m]);
    }
}

/* Lanes whose row (first + j * stride, j < 16) uses filter f: all ones,
 * the others zero. */
AVX2 static __m256i lanes_with_filter(const uint8_t *first, size_t stride, unsigned f)
{
    int16_t m[16];
    for (int j = 0; j < 16; j++)
        m[j] = first[(size_t)j * stride] == f ? -1 : 0;
    return _mm256_loadu_si256((const __m256i *)m);
}

/* Which predictor each lane of one register applies. */
typedef struct lane_filters {
    __m256i sub, up, avg, paeth;
} lane_filters;

AVX2 static lane_filters filters_of(const uint8_t *first, size_t stride)
{
    return (lane_filters){lanes_with_filter(first, stride, 1), lanes_with_filter(first, stride, 2),
                          lanes_with_filter(first, stride, 3), lanes_with_filter(first, stride, 4)};
}

/* One step of the wavefront for one register of 16 lanes: the filtered
 * bytes plus each lane's predictor of its a, b and c, modulo 256. */
AVX2 static inline __m256i step(const lane_filters *f, __m256i in, __m256i a, __m256i b, __m256i c)
{
    __m256i e = _mm256_sub_epi16(b, c), d = _mm256_sub_epi16(a, c);
    __m256i pa = _mm256_abs_epi16(e), pb = _mm256_abs_epi16(d), pc = _mm256_abs_epi16(_mm256_add_epi16(d, e));
    __m256i b_or_c = _mm256_blendv_epi8(b, c, _mm256_cmpgt_epi16(pb, pc));
    __m256i paeth_p = _mm256_blendv_epi8(a, b_or_c, _mm256_cmpgt_epi16(pa, _mm256_min_epi16(pb, pc)));
    __m256i avg = _mm256_srli_epi16(_mm256_add_epi16(a, b), 1);
    __m256i pred = _mm256_or_si256(_mm256_or_si256(_mm256_and_si256(f->sub, a), _mm256_and_si256(f->up, b)),
                                   _mm256_or_si256(_mm256_and_si256(f->avg, avg), _mm256_and_si256(f->paeth, paeth_p)));
    return _mm256_and_si256(_mm256_add_epi16(in, pred), _mm256_set1_epi16(0xff));
}

/* Loads (or, at the edges, assembles with zeros) the 16 bytes lane j reads
 * in the tile starting at step base: its row's x = base - j .. base - j + 15. */
AVX2 static inline __m128i load_lane(const uint8_t *data, size_t base, size_t j, size_t n)
{
    if (base >= j && base - j + 16 <= n)
        return _mm_loadu_si128((const __m128i *)(data + base - j));
    uint8_t tmp[16];
    for (size_t i = 0; i < 16; i++)
        tmp[i] = base + i >= j && base + i - j < n ? data[base + i - j] : 0;
    return _mm_loadu_si128((const __m128i *)tmp);
}

AVX2 static inline void store_lane(uint8_t *data, size_t base, size_t j, size_t n, __m128i bytes)
{
    if (base >= j && base - j + 16 <= n) {
        _mm_storeu_si128((__m128i *)(data + base - j), bytes);
        return;
    }
    uint8_t tmp[16];
    _mm_storeu_si128((__m128i *)tmp, bytes);
    for (size_t i = 0; i < 16; i++)
        if (base + i >= j && base + i - j < n)
            data[base + i - j] = tmp[i];
}

/* Unfilters 16 * halves rows of n bytes in place, pixels of bpp bytes (1
 * or 2: 8-bit gray, 16-bit gray or 8-bit gray+alpha). halves is 1 or 2:
 * two registers make two dependency chains that overlap, the second
 * running 16 rows below the first. first points at the first row's filter
 * byte (each 0-4), rows are stride bytes apart; prev is the unfiltered row
 * above the first (n bytes). With bpp 2 a lane's a and c are two steps
 * back instead of one, so the last two results and b's are kept. */
AVX2 static inline __attribute__((always_inline)) void unfilter_block(uint8_t *first, size_t stride,
                                                                    const uint8_t *prev, size_t n, int halves,
                                                                    int bpp)
{
    size_t rows = 16 * (size_t)halves;
    lane_filters f[2];
    __m256i v[2][2], b_hist[2][2]; /* [register][step % bpp]: results and b's of the last bpp steps */
    for (int h = 0; h < halves; h++) {
        f[h] = filters_of(first + 16 * (size_t)h * stride, stride);
        v[h][0] = v[h][1] = b_hist[h][0] = b_hist[h][1] = _mm256_setzero_si256();
    }
    size_t tiles = (n + rows - 1 + 15) / 16; /* steps 0 .. n + rows - 2 */
    for (size_t k = 0; k < tiles; k++) {
        size_t base = k * 16;
        __m128i in[2][16], out[2][16], tile[16];
        for (int h = 0; h < halves; h++) {
            for (size_t j = 0; j < 16; j++) {
                size_t lane = 16 * (size_t)h + j;
                tile[j] = load_lane(first + lane * stride + 1, base, lane, n);
            }
            transpose16(tile, in[h]);
        }
        for (int i = 0; i < 16; i++) {
            size_t t = base + (size_t)i;
            /* base is a multiple of 16, so t % bpp = i % bpp */
            int now = bpp == 1 ? 0 : i & 1, before = bpp == 1 ? 0 : (i + 1) & 1;
            __m256i above = _mm256_set1_epi16(t < n ? prev[t] : 0);
            /* b: every lane's upper neighbour, one lane up, from the previous
             * step; lane 0 of the first register takes the row above the
             * block, lane 0 of the second the first register's lane 15. a
             * (the lane's own result) and c (its b) are bpp steps back. */
            __m256i last0 = v[0][before];
            __m256i b0 = _mm256_alignr_epi8(last0, _mm256_permute2x128_si256(above, last0, 0x20), 14);
            if (halves == 2) {
                __m256i last1 = v[1][before];
                __m256i b1 = _mm256_alignr_epi8(last1, _mm256_permute2x128_si256(last0, last1, 0x21), 14);
                v[1][now] = step(&f[1], _mm256_cvtepu8_epi16(in[1][i]), v[1][now], b1, b_hist[1][now]);
                b_hist[1][now] = b1;
                out[1][i] = _mm_packus_epi16(_mm256_castsi256_si128(v[1][now]), _mm256_extracti128_si256(v[1][now], 1));
            }
            v[0][now] = step(&f[0], _mm256_cvtepu8_epi16(in[0][i]), v[0][now], b0, b_hist[0][now]);
            b_hist[0][now] = b0;
            out[0][i] = _mm_packus_epi16(_mm256_castsi256_si128(v[0][now]), _mm256_extracti128_si256(v[0][now], 1));
        }
        for (int h = 0; h < halves; h++) {
            transpose16(out[h], tile);
            for (size_t j = 0; j < 16; j++) {
                size_t lane = 16 * (size_t)h + j;
                store_lane(first + lane * stride + 1, base, lane, n, tile[j]);
            }
        }
    }
}

/* The four shapes, each compiled with its constants. */
AVX2 static void unfilter_16_rows_bpp1(uint8_t *first, size_t stride, const uint8_t *prev, size_t n)
{
    unfilter_block(first, stride, prev, n, 1, 1);
}

AVX2 static void unfilter_32_rows_bpp1(uint8_t *first, size_t stride, const uint8_t *prev, size_t n)
{
    unfilter_block(first, stride, prev, n, 2, 1);
}

AVX2 static void unfilter_16_rows_bpp2(uint8_t *first, size_t stride, const uint8_t *prev, size_t n)
{
    unfilter_block(first, stride, prev, n, 1, 2);
}

AVX2 static void unfilter_32_rows_bpp2(uint8_t *first, size_t stride, const uint8_t *prev, size_t n)
{
    unfilter_block(first, stride, prev, n, 2, 2);
}

static void unfilter_rows(uint8_t *first, size_t stride, const uint8_t *prev, size_t n, size_t rows, size_t bpp)
{
    if (rows == 32)
        (bpp == 1 ? unfilter_32_rows_bpp1 : unfilter_32_rows_bpp2)(first, stride, prev, n);
    else
        (bpp == 1 ? unfilter_16_rows_bpp1 : unfilter_16_rows_bpp2)(first, stride, prev, n);
}

static bool use_avx2(void)
{
    return simd_allowed && __builtin_cpu_supports("avx2");
}
#else
static void unfilter_rows(uint8_t *first, size_t stride, const uint8_t *prev, size_t n, size_t rows, size_t bpp)
{
    (void)first, (void)stride, (void)prev, (void)n, (void)rows, (void)bpp;
}
static bool use_avx2(void)
{
    (void)simd_allowed;
    return false;
}
#endif

/* Whether a block of rows (from first, stride apart) is faster through the
 * wavefront than one row at a time. The wavefront costs about the same for
 * every filter (0.5 ns a byte here, Zen 5); one row at a time, None and Up
 * cost next to nothing (vector adds), Sub 0.5, Average 0.9 and Paeth 2.8
 * ns a byte with 1-byte pixels, 0.8, 1.0 and 2.0 with 2-byte ones (two
 * chains run side by side). So a block of Up rows with a Paeth row or two goes row by
 * row, and a block of mostly Paeth rows through the wavefront. */
static bool wavefront_pays(const uint8_t *first, size_t stride, size_t rows, size_t bpp)
{
    /* tenths of ns a byte, by filter type, for 1- and 2-byte pixels */
    static const unsigned row_cost[2][5] = {{0, 5, 0, 9, 28}, {0, 8, 0, 10, 20}}, wavefront_cost = 5;
    unsigned sum = 0;
    for (size_t j = 0; j < rows; j++)
        sum += row_cost[bpp - 1][first[j * stride]];
    return sum > wavefront_cost * rows;
}

int png_unfilter(uint8_t *raw, size_t row_bytes, size_t height, size_t bpp)
{
    size_t stride = 1 + row_bytes;
    for (size_t y = 0; y < height; y++)
        if (raw[y * stride] > 4)
            return PNG_DIRECT_DECLINED;
    uint8_t *zero = calloc(1, row_bytes ? row_bytes : 1);
    if (!zero)
        return MS_ENOMEM;
    bool blocks = bpp <= 2 && use_avx2();
    const uint8_t *prev = zero;
    for (size_t y = 0; y < height;) {
        uint8_t *line = raw + y * stride;
        size_t rows = !blocks                                                    ? 1
                      : height - y >= 32 && wavefront_pays(line, stride, 32, bpp) ? 32
                      : height - y >= 16 && wavefront_pays(line, stride, 16, bpp) ? 16
                                                                                   : 1;
        if (rows > 1) {
            unfilter_rows(line, stride, prev, row_bytes, rows, bpp);
            y += rows;
        } else {
            unfilter_row(line + 1, prev, row_bytes, bpp, line[0]);
            y++;
        }
        prev = raw + (y - 1) * stride + 1;
    }
    free(zero);
    return 0;
}
