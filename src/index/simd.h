/*
 * simd.h - the index's arithmetic kernels, one table per instruction set,
 * chosen once at run time (AVX-512 with VNNI, AVX2 with FMA and F16C, or
 * portable C). One binary runs everywhere; index_simd_select() forces a
 * table for tests and benchmarks.
 *
 * Every float kernel computes a dot product the same way: one accumulator per
 * (query, vector) pair, lanes of the table's width in order of the
 * components, a zero-masked tail, and one fixed horizontal reduction. So a
 * score does not depend on which kernel produced it (single query, pointer
 * list, contiguous rows or the batched block): identical vectors score
 * identically and ties fall to the smaller id everywhere.
 */
#ifndef MS_INDEX_SIMD_H
#define MS_INDEX_SIMD_H

#include <stddef.h>
#include <stdint.h>

typedef struct ix_kernels {
    const char *name;
    /* out[i] = <q, v[i]> for n vectors given by pointer */
    void (*dot_ptrs)(const float *q, const float *const *v, size_t n, int dim, float *out);
    /* out[i] = <q, rows + i*dim> */
    void (*dot_rows)(const float *q, const float *rows, size_t n, int dim, float *out);
    /* out[j*ldo + i] = <qs + j*dim, rows + i*dim> for nq queries, n rows */
    void (*dot_block)(const float *qs, int nq, const float *rows, size_t n, int dim, float *out,
                      size_t ldo);
    /* out[i] = sum_j codes[i*dim + j] * q[j]  (u8 x s8, exact in int32 for dim <= 65536) */
    void (*idot_rows)(const int8_t *q, const uint8_t *codes, size_t n, int dim, int32_t *out);
    /* out[i] = sum_j codes[i][j] * q[j] for n code vectors given by pointer (the graph
     * walk over int8 codes); exact integers, so every table gives the same sums. While
     * one group of vectors is scored, the next group's lines are prefetched. */
    void (*idot_ptrs)(const int8_t *q, const uint8_t *const *codes, size_t n, int dim, int32_t *out);
    /* 4-bit codes: byte i of a vector holds component i in its low nibble and component
     * i + h in its high nibble, h = (dim + 1) / 2 (an odd dim leaves the last high nibble
     * 0). out[i] = sum_j c_j * q[j] over the dim components; q must hold 2h entries (the
     * last 0 for an odd dim). Exact integers: every table gives the same sums. */
    void (*i4dot_ptrs)(const int8_t *q, const uint8_t *const *codes, size_t n, int dim, int32_t *out);
    /* out[j] = clamp(round_even(a + b * codes[j]), -127, 127) (a multiply then an add, each
     * rounded to float, so every table gives the same bytes); returns sum_j codes[j]. The
     * int8 query made from a stored vector's codes (graph construction). */
    int32_t (*requant)(const uint8_t *codes, int dim, float a, float b, int8_t *out);
    /* out[i] = <q, halves[i*dim ..]> with IEEE binary16 components */
    void (*hdot_rows)(const float *q, const uint16_t *halves, size_t n, int dim, float *out);
    /* float -> binary16, round to nearest even */
    void (*to_half)(const float *in, uint16_t *out, int dim);
} ix_kernels;

/* The table in use (chosen on first call). */
const ix_kernels *ix_kern(void);

/* binary16 -> float, portable (exact). */
float ix_half_to_float(uint16_t h);
uint16_t ix_float_to_half(float f);

#endif
