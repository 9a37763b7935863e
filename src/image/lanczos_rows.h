/*
 * lanczos_rows.h - the inner loops of lanczos.c, included there once per
 * vector width: 16-byte registers everywhere (SSE2 on x86-64, plain C where
 * the compiler has no SIMD), 32-byte ones in functions built for AVX2 and
 * chosen at run time. Not a header to include anywhere else.
 *
 * Parameters, undefined again at the end:
 *   ROW_SUFFIX  appended to the function names (vertical_row_<suffix>, ...)
 *   ROW_TARGET  attributes of the functions (a target, or nothing)
 *   ROW_BYTES   bytes per vector register
 */
#define ROW_CAT2(a, b) a##b
#define ROW_CAT(a, b) ROW_CAT2(a, b)

/* One output row of the vertical pass: for every column, the 2.6
 * fixed-point sum of the taps' pixels, shifted and clamped to a byte. Two
 * registers of 16-bit sums stay live across all taps. */
ROW_TARGET static void ROW_CAT(vertical_row_, ROW_SUFFIX)(const uint8_t *const *rows, const int *w, int taps,
                                                           int width, uint8_t *dst)
{
    typedef uint8_t bytes __attribute__((vector_size(ROW_BYTES / 2)));
    typedef int16_t shorts __attribute__((vector_size(ROW_BYTES)));
    const int n = ROW_BYTES / 2; /* columns per register */
    const shorts zero = {0}, top = zero + 255;
    int x = 0;
    for (; x + 2 * n <= width; x += 2 * n) {
        shorts lo = zero + (1 << (V_FRAC_BITS - 1)), hi = lo;
        for (int i = 0; i < taps; i++) {
            bytes a, b;
            memcpy(&a, rows[i] + x, sizeof a);
            memcpy(&b, rows[i] + x + n, sizeof b);
            int16_t c = (int16_t)w[i];
            lo += __builtin_convertvector(a, shorts) * c;
            hi += __builtin_convertvector(b, shorts) * c;
        }
        lo >>= V_FRAC_BITS;
        hi >>= V_FRAC_BITS;
        /* clamp to 0..255: a comparison gives all-ones lanes where true */
        lo &= lo > zero;
        hi &= hi > zero;
        lo = (lo & ~(lo > top)) | (top & (lo > top));
        hi = (hi & ~(hi > top)) | (top & (hi > top));
        bytes a = __builtin_convertvector(lo, bytes), b = __builtin_convertvector(hi, bytes);
        memcpy(dst + x, &a, sizeof a);
        memcpy(dst + x + n, &b, sizeof b);
    }
    for (; x < width; x++) {
        int sum = 1 << (V_FRAC_BITS - 1);
        for (int i = 0; i < taps; i++)
            sum += w[i] * rows[i][x];
        int v = sum < 0 ? 0 : sum >> V_FRAC_BITS;
        dst[x] = (uint8_t)(v > 255 ? 255 : v);
    }
}

/* One output row of the horizontal pass from the row's padded float copy:
 * output o is the dot product of the weights of its phase with the pixels
 * from start[o], rounded from 12 fractional bits and clamped. taps_padded
 * is a multiple of the floats per register (zero weights at the end). */
ROW_TARGET static void ROW_CAT(horizontal_row_, ROW_SUFFIX)(const float *padded, const float *weight,
                                                             int taps_padded, const int *start, const int *phase,
                                                             int n_out, uint8_t *dst)
{
    typedef float floats __attribute__((vector_size(ROW_BYTES)));
    const int n = ROW_BYTES / 4; /* floats per register */
    for (int o = 0; o < n_out; o++) {
        const float *px = padded + start[o], *w = weight + (size_t)phase[o] * (size_t)taps_padded;
        floats sum = {0};
        for (int i = 0; i < taps_padded; i += n) {
            floats a, b;
            memcpy(&a, w + i, sizeof a);
            memcpy(&b, px + i, sizeof b);
            sum += a * b;
        }
        float total = 0; /* exact in any order: see reduce_horizontal */
        for (int k = 0; k < n; k++)
            total += sum[k];
        int v = ((int)total + (1 << (H_FRAC_BITS - 1))) >> H_FRAC_BITS;
        dst[o] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
}

#undef ROW_CAT
#undef ROW_CAT2
#undef ROW_SUFFIX
#undef ROW_TARGET
#undef ROW_BYTES
