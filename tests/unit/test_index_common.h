/*
 * test_index_common.h - helpers shared by the index's unit tests: a naive
 * double-precision reference search and recall measurement.
 */
#ifndef TEST_INDEX_COMMON_H
#define TEST_INDEX_COMMON_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "index/index.h"
#include "index/synth.h"

typedef struct ref_hit {
    double score;
    int64_t id;
} ref_hit;

static inline int ref_cmp(const void *a, const void *b)
{
    const ref_hit *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static inline double ref_dot(const float *a, const float *b, int dim)
{
    double s = 0;
    for (int j = 0; j < dim; j++)
        s += (double)a[j] * (double)b[j];
    return s;
}

/* All n vectors (skipping ids with keep[i] == false when keep != NULL),
 * sorted best first; returns the count. out holds n. */
static inline size_t ref_rank(const float *data, const int64_t *ids, const bool *keep, size_t n, int dim,
                       const float *q, ref_hit *out)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (!keep || keep[i])
            out[m++] = (ref_hit){ref_dot(data + i * (size_t)dim, q, dim), ids[i]};
    qsort(out, m, sizeof *out, ref_cmp);
    return m;
}

/* |found ∩ truth[0..k)| / min(k, n_truth) */
static inline double recall_at(const index_hit *found, int n_found, const ref_hit *truth, size_t n_truth, int k)
{
    size_t want = n_truth < (size_t)k ? n_truth : (size_t)k;
    if (want == 0)
        return 1.0;
    size_t hit = 0;
    for (int i = 0; i < n_found; i++)
        for (size_t j = 0; j < want; j++)
            if (found[i].id == truth[j].id) {
                hit++;
                break;
            }
    return (double)hit / (double)want;
}

static inline double recall_hits(const index_hit *found, int n_found, const index_hit *truth, int n_truth, int k)
{
    int want = n_truth < k ? n_truth : k;
    if (want == 0)
        return 1.0;
    int hit = 0;
    for (int i = 0; i < n_found; i++)
        for (int j = 0; j < want; j++)
            if (found[i].id == truth[j].id) {
                hit++;
                break;
            }
    return (double)hit / want;
}

/* Clustered points: n data then nq queries. Caller frees. */
static inline void make_clustered(int dim, size_t n, size_t nq, int centres, uint64_t seed, float **data, float **queries)
{
    ix_synth *s;
    ms_err err;
    if (ix_synth_open(dim, centres, 0, seed, &s, &err)) {
        fprintf(stderr, "synth: %s\n", err.msg);
        abort();
    }
    *data = malloc(n * (size_t)dim * sizeof(float));
    *queries = malloc((nq ? nq : 1) * (size_t)dim * sizeof(float));
    ix_synth_points(s, 0, n, *data);
    ix_synth_points(s, 1, nq, *queries);
    ix_synth_close(s);
}

#endif
