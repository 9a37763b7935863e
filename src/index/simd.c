/*
 * simd.c - dot-product kernels for AVX-512 (+VNNI), AVX2 (+FMA, F16C) and
 * portable C, and the run-time choice between them.
 *
 * The scans are memory-bound: a query stays in L1 while vectors stream from
 * RAM, so the kernels score four vectors at once (four independent FMA
 * chains hide the FMA latency) and leave prefetching to the hardware, which
 * follows sequential streams well. The batched kernel is the exception: it
 * is compute-bound by design (a 4 x 4 tile of queries x vectors reuses every
 * load four times), which is why a batch costs far less than its queries one
 * by one.
 */
#include "index/simd.h"

#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <string.h>

#include "index/index.h"

/* ------------------------------------------------------------------ */
/* binary16 conversions (portable, used by the C kernels and tests)    */
/* ------------------------------------------------------------------ */

float ix_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        /* subnormal: value = man * 2^-24; normalise into a float */
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400u));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FFu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t ix_float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t exp = (x >> 23) & 0xFFu;
    uint32_t man = x & 0x7FFFFFu;
    if (exp == 0xFF) /* inf or NaN (keep NaN quiet and non-zero) */
        return (uint16_t)(sign | 0x7C00u | (man ? 0x200u | (man >> 13) : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7C00u);
    if (e <= 0) {
        if (e < -10)
            return sign; /* below half the smallest subnormal */
        /* subnormal: shift the full significand, round to nearest even */
        uint32_t full = man | 0x800000u;
        unsigned shift = (unsigned)(14 - e);
        uint32_t half = full >> shift;
        uint32_t rest = full & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rest = man & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1)))
        half++; /* may carry into the exponent, up to infinity: correct */
    return (uint16_t)(sign | half);
}

/* ------------------------------------------------------------------ */
/* portable C: 8 lanes, same structure as the vector kernels            */
/* ------------------------------------------------------------------ */

#define C_LANES 8

static float c_dot1(const float *q, const float *v, int dim)
{
    float acc[C_LANES] = {0};
    for (int j = 0; j < dim; j++)
        acc[j % C_LANES] += q[j] * v[j];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static void c_dot_ptrs(const float *q, const float *const *v, size_t n, int dim, float *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = c_dot1(q, v[i], dim);
}

static void c_dot_rows(const float *q, const float *rows, size_t n, int dim, float *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = c_dot1(q, rows + i * (size_t)dim, dim);
}

static void c_dot_block(const float *qs, int nq, const float *rows, size_t n, int dim, float *out,
                        size_t ldo)
{
    for (int j = 0; j < nq; j++)
        c_dot_rows(qs + (size_t)j * dim, rows, n, dim, out + (size_t)j * ldo);
}

static void c_idot_rows(const int8_t *q, const uint8_t *codes, size_t n, int dim, int32_t *out)
{
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * (size_t)dim;
        int32_t acc = 0;
        for (int j = 0; j < dim; j++)
            acc += (int32_t)c[j] * q[j];
        out[i] = acc;
    }
}

static void c_idot_ptrs(const int8_t *q, const uint8_t *const *codes, size_t n, int dim, int32_t *out)
{
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes[i];
        int32_t acc = 0;
        for (int j = 0; j < dim; j++)
            acc += (int32_t)c[j] * q[j];
        out[i] = acc;
    }
}

static void c_i4dot_ptrs(const int8_t *q, const uint8_t *const *codes, size_t n, int dim, int32_t *out)
{
    int h = (dim + 1) / 2;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes[i];
        int32_t acc = 0;
        for (int j = 0; j < h; j++)
            acc += (int32_t)(c[j] & 15) * q[j] + (int32_t)(c[j] >> 4) * q[h + j];
        out[i] = acc;
    }
}

static int32_t c_requant(const uint8_t *codes, int dim, float a, float b, int8_t *out)
{
    int32_t sum = 0;
    for (int j = 0; j < dim; j++) {
        float x = (float)codes[j] * b;
        x = x + a;
        /* round to nearest even: adding 1.5 * 2^23 leaves no fraction bits */
        float big = x + 12582912.0f;
        int r = (int)(big - 12582912.0f);
        out[j] = (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
        sum += codes[j];
    }
    return sum;
}

static float c_hdot1(const float *q, const uint16_t *h, int dim)
{
    float acc[C_LANES] = {0};
    for (int j = 0; j < dim; j++)
        acc[j % C_LANES] += q[j] * ix_half_to_float(h[j]);
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static void c_hdot_rows(const float *q, const uint16_t *halves, size_t n, int dim, float *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = c_hdot1(q, halves + i * (size_t)dim, dim);
}

static void c_to_half(const float *in, uint16_t *out, int dim)
{
    for (int j = 0; j < dim; j++)
        out[j] = ix_float_to_half(in[j]);
}

static const ix_kernels k_portable = {
    "portable", c_dot_ptrs, c_dot_rows, c_dot_block, c_idot_rows, c_idot_ptrs, c_i4dot_ptrs, c_requant,
    c_hdot_rows,
    c_to_half,
};

/* ------------------------------------------------------------------ */
/* AVX2 + FMA + F16C                                                   */
/* ------------------------------------------------------------------ */

#define T256 __attribute__((target("avx2,fma,f16c")))

T256 static inline float hsum256(__m256 a)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

T256 static inline __m256i tail_mask256(int rem)
{
    static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(m + 8 - rem));
}

/* Four dot products sharing the query's loads; each has its own chain. */
T256 static void avx2_dot4(const float *q, const float *v0, const float *v1, const float *v2,
                           const float *v3, int dim, float *out)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int j = 0;
    for (; j + 8 <= dim; j += 8) {
        __m256 x = _mm256_loadu_ps(q + j);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v0 + j), x, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v1 + j), x, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(v2 + j), x, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(v3 + j), x, a3);
    }
    if (j < dim) {
        __m256i m = tail_mask256(dim - j);
        __m256 x = _mm256_maskload_ps(q + j, m);
        a0 = _mm256_fmadd_ps(_mm256_maskload_ps(v0 + j, m), x, a0);
        a1 = _mm256_fmadd_ps(_mm256_maskload_ps(v1 + j, m), x, a1);
        a2 = _mm256_fmadd_ps(_mm256_maskload_ps(v2 + j, m), x, a2);
        a3 = _mm256_fmadd_ps(_mm256_maskload_ps(v3 + j, m), x, a3);
    }
    out[0] = hsum256(a0);
    out[1] = hsum256(a1);
    out[2] = hsum256(a2);
    out[3] = hsum256(a3);
}

T256 static float avx2_dot1(const float *q, const float *v, int dim)
{
    __m256 a = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= dim; j += 8)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(v + j), _mm256_loadu_ps(q + j), a);
    if (j < dim) {
        __m256i m = tail_mask256(dim - j);
        a = _mm256_fmadd_ps(_mm256_maskload_ps(v + j, m), _mm256_maskload_ps(q + j, m), a);
    }
    return hsum256(a);
}

T256 static void avx2_dot_ptrs(const float *q, const float *const *v, size_t n, int dim, float *out)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        avx2_dot4(q, v[i], v[i + 1], v[i + 2], v[i + 3], dim, out + i);
    for (; i < n; i++)
        out[i] = avx2_dot1(q, v[i], dim);
}

T256 static void avx2_dot_rows(const float *q, const float *rows, size_t n, int dim, float *out)
{
    size_t d = (size_t)dim, i = 0;
    for (; i + 4 <= n; i += 4) {
        const float *r = rows + i * d;
        avx2_dot4(q, r, r + d, r + 2 * d, r + 3 * d, dim, out + i);
    }
    for (; i < n; i++)
        out[i] = avx2_dot1(q, rows + i * d, dim);
}

/* 4 queries x 4 rows tile: 16 chains, 8 loads per 16 FMAs. */
T256 static void avx2_tile44(const float *qs, const float *rows, int dim, float *out, size_t ldo)
{
    size_t d = (size_t)dim;
    const float *q0 = qs, *q1 = qs + d, *q2 = qs + 2 * d, *q3 = qs + 3 * d;
    const float *r0 = rows, *r1 = rows + d, *r2 = rows + 2 * d, *r3 = rows + 3 * d;
    __m256 a[16];
    for (int t = 0; t < 16; t++)
        a[t] = _mm256_setzero_ps();
    int j = 0;
#define AVX2_TILE_STEP(LOAD)                                                             \
    do {                                                                                 \
        __m256 x0 = LOAD(q0 + j), x1 = LOAD(q1 + j), x2 = LOAD(q2 + j), x3 = LOAD(q3 + j); \
        __m256 y;                                                                        \
        y = LOAD(r0 + j);                                                                \
        a[0] = _mm256_fmadd_ps(y, x0, a[0]);                                             \
        a[4] = _mm256_fmadd_ps(y, x1, a[4]);                                             \
        a[8] = _mm256_fmadd_ps(y, x2, a[8]);                                             \
        a[12] = _mm256_fmadd_ps(y, x3, a[12]);                                           \
        y = LOAD(r1 + j);                                                                \
        a[1] = _mm256_fmadd_ps(y, x0, a[1]);                                             \
        a[5] = _mm256_fmadd_ps(y, x1, a[5]);                                             \
        a[9] = _mm256_fmadd_ps(y, x2, a[9]);                                             \
        a[13] = _mm256_fmadd_ps(y, x3, a[13]);                                           \
        y = LOAD(r2 + j);                                                                \
        a[2] = _mm256_fmadd_ps(y, x0, a[2]);                                             \
        a[6] = _mm256_fmadd_ps(y, x1, a[6]);                                             \
        a[10] = _mm256_fmadd_ps(y, x2, a[10]);                                           \
        a[14] = _mm256_fmadd_ps(y, x3, a[14]);                                           \
        y = LOAD(r3 + j);                                                                \
        a[3] = _mm256_fmadd_ps(y, x0, a[3]);                                             \
        a[7] = _mm256_fmadd_ps(y, x1, a[7]);                                             \
        a[11] = _mm256_fmadd_ps(y, x2, a[11]);                                           \
        a[15] = _mm256_fmadd_ps(y, x3, a[15]);                                           \
    } while (0)
    for (; j + 8 <= dim; j += 8)
        AVX2_TILE_STEP(_mm256_loadu_ps);
    if (j < dim) {
        __m256i m = tail_mask256(dim - j);
#define AVX2_MLOAD(p) _mm256_maskload_ps((p), m)
        AVX2_TILE_STEP(AVX2_MLOAD);
#undef AVX2_MLOAD
    }
#undef AVX2_TILE_STEP
    for (int qi = 0; qi < 4; qi++)
        for (int ri = 0; ri < 4; ri++)
            out[(size_t)qi * ldo + ri] = hsum256(a[qi * 4 + ri]);
}

T256 static void avx2_dot_block(const float *qs, int nq, const float *rows, size_t n, int dim,
                                float *out, size_t ldo)
{
    size_t d = (size_t)dim;
    int j = 0;
    for (; j + 4 <= nq; j += 4) {
        size_t i = 0;
        for (; i + 4 <= n; i += 4)
            avx2_tile44(qs + (size_t)j * d, rows + i * d, dim, out + (size_t)j * ldo + i, ldo);
        for (; i < n; i++)
            for (int t = 0; t < 4; t++)
                out[(size_t)(j + t) * ldo + i] = avx2_dot1(qs + (size_t)(j + t) * d, rows + i * d, dim);
    }
    for (; j < nq; j++)
        avx2_dot_rows(qs + (size_t)j * d, rows, n, dim, out + (size_t)j * ldo);
}

/* u8 x s8 without VNNI: widen both to 16 bits, vpmaddwd sums pairs into
 * 32 bits exactly (no saturation, unlike vpmaddubsw). */
T256 static int32_t avx2_idot1(const int8_t *q, const uint8_t *c, int dim)
{
    __m256i a = _mm256_setzero_si256();
    int j = 0;
    for (; j + 16 <= dim; j += 16) {
        __m256i cw = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(c + j)));
        __m256i qw = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + j)));
        a = _mm256_add_epi32(a, _mm256_madd_epi16(cw, qw));
    }
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    int32_t acc = _mm_cvtsi128_si32(s);
    for (; j < dim; j++)
        acc += (int32_t)c[j] * q[j];
    return acc;
}

T256 static void avx2_idot_rows(const int8_t *q, const uint8_t *codes, size_t n, int dim, int32_t *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = avx2_idot1(q, codes + i * (size_t)dim, dim);
}

/* One vector at a time; the next vector's lines are requested first. */
T256 static void avx2_idot_ptrs(const int8_t *q, const uint8_t *const *codes, size_t n, int dim, int32_t *out)
{
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n)
            for (int j = 0; j < dim; j += 64)
                _mm_prefetch((const char *)codes[i + 1] + j, _MM_HINT_T0);
        out[i] = avx2_idot1(q, codes[i], dim);
    }
}

/* 4-bit codes: 16 bytes hold 16 low and 16 high components; both widened
 * to 16 bits and multiplied with the matching query halves. */
T256 static int32_t avx2_i4dot1(const int8_t *q, const uint8_t *c, int dim)
{
    int h = (dim + 1) / 2, j = 0;
    __m256i a = _mm256_setzero_si256(), nib = _mm256_set1_epi16(15);
    for (; j + 16 <= h; j += 16) {
        __m256i cw = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(c + j)));
        __m256i lo = _mm256_and_si256(cw, nib), hi = _mm256_srli_epi16(cw, 4);
        a = _mm256_add_epi32(a, _mm256_madd_epi16(lo, _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + j)))));
        a = _mm256_add_epi32(a, _mm256_madd_epi16(hi, _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + h + j)))));
    }
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    int32_t acc = _mm_cvtsi128_si32(s);
    for (; j < h; j++)
        acc += (int32_t)(c[j] & 15) * q[j] + (int32_t)(c[j] >> 4) * q[h + j];
    return acc;
}

T256 static void avx2_i4dot_ptrs(const int8_t *q, const uint8_t *const *codes, size_t n, int dim, int32_t *out)
{
    int h = (dim + 1) / 2;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n)
            for (int j = 0; j < h; j += 64)
                _mm_prefetch((const char *)codes[i + 1] + j, _MM_HINT_T0);
        out[i] = avx2_i4dot1(q, codes[i], dim);
    }
}

T256 static int32_t avx2_requant(const uint8_t *codes, int dim, float a, float b, int8_t *out)
{
    __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    __m256i sums = _mm256_setzero_si256();
    int j = 0;
    for (; j + 8 <= dim; j += 8) {
        __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + j)));
        sums = _mm256_add_epi32(sums, c);
        __m256 x = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(c), vb), va);
        __m256i r = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(x), lo), hi);
        __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
        _mm_storel_epi64((__m128i *)(out + j), _mm_packs_epi16(w, w));
    }
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    int32_t sum = _mm_cvtsi128_si32(s);
    if (j < dim)
        sum += c_requant(codes + j, dim - j, a, b, out + j);
    return sum;
}

T256 static inline __m256 avx2_load_half8(const uint16_t *h, int rem)
{
    if (rem >= 8)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
    uint16_t tmp[8] = {0};
    memcpy(tmp, h, (size_t)rem * sizeof *h);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)tmp));
}

T256 static void avx2_hdot_rows(const float *q, const uint16_t *halves, size_t n, int dim, float *out)
{
    for (size_t i = 0; i < n; i++) {
        const uint16_t *h = halves + i * (size_t)dim;
        __m256 a = _mm256_setzero_ps();
        int j = 0;
        for (; j + 8 <= dim; j += 8)
            a = _mm256_fmadd_ps(avx2_load_half8(h + j, 8), _mm256_loadu_ps(q + j), a);
        if (j < dim)
            a = _mm256_fmadd_ps(avx2_load_half8(h + j, dim - j),
                                _mm256_maskload_ps(q + j, tail_mask256(dim - j)), a);
        out[i] = hsum256(a);
    }
}

T256 static void avx2_to_half(const float *in, uint16_t *out, int dim)
{
    int j = 0;
    for (; j + 8 <= dim; j += 8)
        _mm_storeu_si128((__m128i *)(out + j),
                         _mm256_cvtps_ph(_mm256_loadu_ps(in + j), _MM_FROUND_TO_NEAREST_INT));
    for (; j < dim; j++)
        out[j] = ix_float_to_half(in[j]);
}

static const ix_kernels k_avx2 = {
    "avx2", avx2_dot_ptrs, avx2_dot_rows, avx2_dot_block, avx2_idot_rows, avx2_idot_ptrs, avx2_i4dot_ptrs,
    avx2_requant,
    avx2_hdot_rows, avx2_to_half,
};

/* ------------------------------------------------------------------ */
/* AVX-512 (F, BW, VL, VNNI)                                            */
/* ------------------------------------------------------------------ */

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))

T512 static inline __mmask16 mask16(int rem)
{
    return (__mmask16)((1u << rem) - 1u);
}

/* next[0..n_next) are vectors scored after these four: one of their lines
 * is prefetched per step (a step reads one line of each of the four), so a
 * pointer list streams its random vectors ahead of the arithmetic. */
T512 static void avx512_dot4(const float *q, const float *v0, const float *v1, const float *v2,
                             const float *v3, int dim, const float *const *next, int n_next, float *out)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int j = 0;
    for (; j + 16 <= dim; j += 16) {
        for (int t = 0; t < n_next; t++)
            _mm_prefetch((const char *)(next[t] + j), _MM_HINT_T0);
        __m512 x = _mm512_loadu_ps(q + j);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(v0 + j), x, a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(v1 + j), x, a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(v2 + j), x, a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(v3 + j), x, a3);
    }
    if (j < dim) {
        __mmask16 m = mask16(dim - j);
        __m512 x = _mm512_maskz_loadu_ps(m, q + j);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, v0 + j), x, a0);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, v1 + j), x, a1);
        a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, v2 + j), x, a2);
        a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, v3 + j), x, a3);
    }
    out[0] = _mm512_reduce_add_ps(a0);
    out[1] = _mm512_reduce_add_ps(a1);
    out[2] = _mm512_reduce_add_ps(a2);
    out[3] = _mm512_reduce_add_ps(a3);
}

T512 static float avx512_dot1(const float *q, const float *v, int dim)
{
    __m512 a = _mm512_setzero_ps();
    int j = 0;
    for (; j + 16 <= dim; j += 16)
        a = _mm512_fmadd_ps(_mm512_loadu_ps(v + j), _mm512_loadu_ps(q + j), a);
    if (j < dim) {
        __mmask16 m = mask16(dim - j);
        a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, v + j), _mm512_maskz_loadu_ps(m, q + j), a);
    }
    return _mm512_reduce_add_ps(a);
}

T512 static void avx512_dot_ptrs(const float *q, const float *const *v, size_t n, int dim, float *out)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        size_t left = n - i - 4;
        avx512_dot4(q, v[i], v[i + 1], v[i + 2], v[i + 3], dim, v + i + 4, left < 4 ? (int)left : 4, out + i);
    }
    for (; i < n; i++)
        out[i] = avx512_dot1(q, v[i], dim);
}

T512 static void avx512_dot_rows(const float *q, const float *rows, size_t n, int dim, float *out)
{
    size_t d = (size_t)dim, i = 0;
    for (; i + 4 <= n; i += 4) {
        const float *r = rows + i * d;
        avx512_dot4(q, r, r + d, r + 2 * d, r + 3 * d, dim, NULL, 0, out + i);
    }
    for (; i < n; i++)
        out[i] = avx512_dot1(q, rows + i * d, dim);
}

T512 static void avx512_tile44(const float *qs, const float *rows, int dim, float *out, size_t ldo)
{
    size_t d = (size_t)dim;
    const float *q0 = qs, *q1 = qs + d, *q2 = qs + 2 * d, *q3 = qs + 3 * d;
    const float *r0 = rows, *r1 = rows + d, *r2 = rows + 2 * d, *r3 = rows + 3 * d;
    __m512 a[16];
    for (int t = 0; t < 16; t++)
        a[t] = _mm512_setzero_ps();
    int j = 0;
#define AVX512_TILE_STEP(LOAD)                                                           \
    do {                                                                                 \
        __m512 x0 = LOAD(q0 + j), x1 = LOAD(q1 + j), x2 = LOAD(q2 + j), x3 = LOAD(q3 + j); \
        __m512 y;                                                                        \
        y = LOAD(r0 + j);                                                                \
        a[0] = _mm512_fmadd_ps(y, x0, a[0]);                                             \
        a[4] = _mm512_fmadd_ps(y, x1, a[4]);                                             \
        a[8] = _mm512_fmadd_ps(y, x2, a[8]);                                             \
        a[12] = _mm512_fmadd_ps(y, x3, a[12]);                                           \
        y = LOAD(r1 + j);                                                                \
        a[1] = _mm512_fmadd_ps(y, x0, a[1]);                                             \
        a[5] = _mm512_fmadd_ps(y, x1, a[5]);                                             \
        a[9] = _mm512_fmadd_ps(y, x2, a[9]);                                             \
        a[13] = _mm512_fmadd_ps(y, x3, a[13]);                                           \
        y = LOAD(r2 + j);                                                                \
        a[2] = _mm512_fmadd_ps(y, x0, a[2]);                                             \
        a[6] = _mm512_fmadd_ps(y, x1, a[6]);                                             \
        a[10] = _mm512_fmadd_ps(y, x2, a[10]);                                           \
        a[14] = _mm512_fmadd_ps(y, x3, a[14]);                                           \
        y = LOAD(r3 + j);                                                                \
        a[3] = _mm512_fmadd_ps(y, x0, a[3]);                                             \
        a[7] = _mm512_fmadd_ps(y, x1, a[7]);                                             \
        a[11] = _mm512_fmadd_ps(y, x2, a[11]);                                           \
        a[15] = _mm512_fmadd_ps(y, x3, a[15]);                                           \
    } while (0)
    for (; j + 16 <= dim; j += 16)
        AVX512_TILE_STEP(_mm512_loadu_ps);
    if (j < dim) {
        __mmask16 m = mask16(dim - j);
#define AVX512_MLOAD(p) _mm512_maskz_loadu_ps(m, (p))
        AVX512_TILE_STEP(AVX512_MLOAD);
#undef AVX512_MLOAD
    }
#undef AVX512_TILE_STEP
    for (int qi = 0; qi < 4; qi++)
        for (int ri = 0; ri < 4; ri++)
            out[(size_t)qi * ldo + ri] = _mm512_reduce_add_ps(a[qi * 4 + ri]);
}

T512 static void avx512_dot_block(const float *qs, int nq, const float *rows, size_t n, int dim,
                                  float *out, size_t ldo)
{
    size_t d = (size_t)dim;
    int j = 0;
    for (; j + 4 <= nq; j += 4) {
        size_t i = 0;
        for (; i + 4 <= n; i += 4)
            avx512_tile44(qs + (size_t)j * d, rows + i * d, dim, out + (size_t)j * ldo + i, ldo);
        for (; i < n; i++)
            for (int t = 0; t < 4; t++)
                out[(size_t)(j + t) * ldo + i] =
                    avx512_dot1(qs + (size_t)(j + t) * d, rows + i * d, dim);
    }
    for (; j < nq; j++)
        avx512_dot_rows(qs + (size_t)j * d, rows, n, dim, out + (size_t)j * ldo);
}

T512 static inline __mmask64 mask64(int rem)
{
    return rem >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << rem) - 1);
}

/* u8 codes x s8 query with vpdpbusd: 64 products per instruction. One row
 * at a time with two accumulators: a single sequential stream is what the
 * hardware prefetcher serves best (interleaving four 2 KiB rows measured
 * slower here), and integer sums do not depend on the order. */
T512 static void avx512_idot_rows(const int8_t *q, const uint8_t *codes, size_t n, int dim, int32_t *out)
{
    size_t d = (size_t)dim;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * d;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0;
        int j = 0;
        for (; j + 128 <= dim; j += 128) {
            a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(c + j), _mm512_loadu_si512(q + j));
            a1 = _mm512_dpbusd_epi32(a1, _mm512_loadu_si512(c + j + 64), _mm512_loadu_si512(q + j + 64));
        }
        for (; j < dim; j += 64) {
            __mmask64 m = mask64(dim - j);
            a0 = _mm512_dpbusd_epi32(a0, _mm512_maskz_loadu_epi8(m, c + j), _mm512_maskz_loadu_epi8(m, q + j));
        }
        out[i] = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
    }
}

T512 static int32_t avx512_idot1(const int8_t *q, const uint8_t *c, int dim)
{
    __m512i a = _mm512_setzero_si512();
    for (int j = 0; j < dim; j += 64) {
        __mmask64 m = mask64(dim - j);
        a = _mm512_dpbusd_epi32(a, _mm512_maskz_loadu_epi8(m, c + j), _mm512_maskz_loadu_epi8(m, q + j));
    }
    return _mm512_reduce_add_epi32(a);
}

/* Four code vectors given by pointer share each query load; while they are
 * scored, the lines of the next (up to four) vectors are prefetched, one
 * line per vector per step, so the walk's random reads overlap the work. */
T512 static void avx512_idot4(const int8_t *q, const uint8_t *const *c, int dim, const uint8_t *const *next,
                              int n_next, int32_t *out)
{
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int j = 0; j < dim; j += 64) {
        for (int t = 0; t < n_next; t++)
            _mm_prefetch((const char *)next[t] + j, _MM_HINT_T0);
        __mmask64 m = mask64(dim - j);
        __m512i x = _mm512_maskz_loadu_epi8(m, q + j);
        a0 = _mm512_dpbusd_epi32(a0, _mm512_maskz_loadu_epi8(m, c[0] + j), x);
        a1 = _mm512_dpbusd_epi32(a1, _mm512_maskz_loadu_epi8(m, c[1] + j), x);
        a2 = _mm512_dpbusd_epi32(a2, _mm512_maskz_loadu_epi8(m, c[2] + j), x);
        a3 = _mm512_dpbusd_epi32(a3, _mm512_maskz_loadu_epi8(m, c[3] + j), x);
    }
    out[0] = _mm512_reduce_add_epi32(a0);
    out[1] = _mm512_reduce_add_epi32(a1);
    out[2] = _mm512_reduce_add_epi32(a2);
    out[3] = _mm512_reduce_add_epi32(a3);
}

T512 static void avx512_idot_ptrs(const int8_t *q, const uint8_t *const *codes, size_t n, int dim, int32_t *out)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        size_t left = n - i - 4;
        avx512_idot4(q, codes + i, dim, codes + i + 4, left < 4 ? (int)left : 4, out + i);
    }
    for (; i < n; i++)
        out[i] = avx512_idot1(q, codes[i], dim);
}

/* 4-bit codes with vpdpbusd: 64 bytes give 64 low and 64 high components,
 * each nibble plane multiplied with its half of the query. Four vectors
 * share the query loads; the next ones are prefetched as in idot4. */
T512 static void avx512_i4dot4(const int8_t *q, const uint8_t *const *c, int dim, const uint8_t *const *next,
                               int n_next, int32_t *out)
{
    int h = (dim + 1) / 2;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    __m512i nib = _mm512_set1_epi8(15);
    for (int j = 0; j < h; j += 64) {
        for (int t = 0; t < n_next; t++)
            _mm_prefetch((const char *)next[t] + j, _MM_HINT_T0);
        __mmask64 m = mask64(h - j);
        __m512i ql = _mm512_maskz_loadu_epi8(m, q + j), qh = _mm512_maskz_loadu_epi8(m, q + h + j);
#define I4_STEP(A, C)                                                                           \
        do {                                                                                    \
            __m512i x = _mm512_maskz_loadu_epi8(m, (C) + j);                                    \
            A = _mm512_dpbusd_epi32(A, _mm512_and_si512(x, nib), ql);                           \
            A = _mm512_dpbusd_epi32(A, _mm512_and_si512(_mm512_srli_epi16(x, 4), nib), qh);     \
        } while (0)
        I4_STEP(a0, c[0]);
        I4_STEP(a1, c[1]);
        I4_STEP(a2, c[2]);
        I4_STEP(a3, c[3]);
#undef I4_STEP
    }
    out[0] = _mm512_reduce_add_epi32(a0);
    out[1] = _mm512_reduce_add_epi32(a1);
    out[2] = _mm512_reduce_add_epi32(a2);
    out[3] = _mm512_reduce_add_epi32(a3);
}

T512 static void avx512_i4dot_ptrs(const int8_t *q, const uint8_t *const *codes, size_t n, int dim, int32_t *out)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        size_t left = n - i - 4;
        avx512_i4dot4(q, codes + i, dim, codes + i + 4, left < 4 ? (int)left : 4, out + i);
    }
    for (; i < n; i++) {
        const uint8_t *four[4] = {codes[i], codes[i], codes[i], codes[i]};
        int32_t o[4];
        avx512_i4dot4(q, four, dim, NULL, 0, o);
        out[i] = o[0];
    }
}

T512 static int32_t avx512_requant(const uint8_t *codes, int dim, float a, float b, int8_t *out)
{
    __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
    __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    __m512i sums = _mm512_setzero_si512();
    for (int j = 0; j < dim; j += 16) {
        __mmask16 m = mask16(dim - j < 16 ? dim - j : 16);
        __m512i c = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, codes + j));
        sums = _mm512_add_epi32(sums, c);
        __m512 x = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(c), vb), va);
        __m512i r = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(x), lo), hi);
        _mm_mask_storeu_epi8(out + j, m, _mm512_cvtepi32_epi8(r));
    }
    return _mm512_reduce_add_epi32(sums);
}

/* Halves converted in registers; one row at a time with two accumulators
 * (four interleaved rows measured slower here, as for int8). */
T512 static void avx512_hdot_rows(const float *q, const uint16_t *halves, size_t n, int dim, float *out)
{
    for (size_t i = 0; i < n; i++) {
        const uint16_t *h = halves + i * (size_t)dim;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;
        int j = 0;
        for (; j + 32 <= dim; j += 32) {
            a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + j))),
                                 _mm512_loadu_ps(q + j), a0);
            a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + j + 16))),
                                 _mm512_loadu_ps(q + j + 16), a1);
        }
        for (; j < dim; j += 16) {
            __mmask16 m = mask16(dim - j < 16 ? dim - j : 16);
            a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, h + j)),
                                 _mm512_maskz_loadu_ps(m, q + j), a0);
        }
        out[i] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
}

static const ix_kernels k_avx512 = {
    "avx512", avx512_dot_ptrs, avx512_dot_rows, avx512_dot_block, avx512_idot_rows, avx512_idot_ptrs,
    avx512_i4dot_ptrs, avx512_requant, avx512_hdot_rows,
    avx2_to_half,
};

/* ------------------------------------------------------------------ */
/* choice                                                              */
/* ------------------------------------------------------------------ */

static _Atomic(const ix_kernels *) g_kern;

/* F16C is CPUID.1:ECX bit 29 (clang's __builtin_cpu_supports lacks it). */
static bool cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}

static bool cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma") &&
           cpu_has_f16c();
}

static bool cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           cpu_has_f16c();
}

const ix_kernels *ix_kern(void)
{
    const ix_kernels *k = atomic_load_explicit(&g_kern, memory_order_acquire);
    if (k)
        return k;
    k = cpu_has_avx512() ? &k_avx512 : cpu_has_avx2() ? &k_avx2 : &k_portable;
    const ix_kernels *expected = NULL;
    atomic_compare_exchange_strong(&g_kern, &expected, k);
    return atomic_load_explicit(&g_kern, memory_order_acquire);
}

const char *index_simd_name(void)
{
    return ix_kern()->name;
}

int index_simd_select(const char *name, ms_err *err)
{
    const ix_kernels *k;
    if (!name || !strcmp(name, "auto"))
        k = cpu_has_avx512() ? &k_avx512 : cpu_has_avx2() ? &k_avx2 : &k_portable;
    else if (!strcmp(name, "avx512"))
        k = cpu_has_avx512() ? &k_avx512 : NULL;
    else if (!strcmp(name, "avx2"))
        k = cpu_has_avx2() ? &k_avx2 : NULL;
    else if (!strcmp(name, "portable"))
        k = &k_portable;
    else
        return ms_err_set(err, MS_EINVAL, "unknown SIMD level '%s' (auto, avx512, avx2, portable)", name);
    if (!k)
        return ms_err_set(err, MS_EUNSUPPORTED, "this CPU lacks the instructions of SIMD level '%s'", name);
    atomic_store_explicit(&g_kern, k, memory_order_release);
    return 0;
}
