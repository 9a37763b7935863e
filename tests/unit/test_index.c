/*
 * test_index.c - exact search against a naive double-precision reference,
 * on every SIMD level this CPU has; batches; the compressed pre-scan;
 * adds, removes, replacements, errors, AUTO switching and rebuilds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "index/internal.h"
#include "index/simd.h"
#include "test_index_common.h"

static const char *levels[] = {"avx512", "avx2", "portable"};

/* Ids unrelated to insertion order, so "ties by smaller id" is tested. */
static int64_t id_of(size_t i)
{
    return (int64_t)((i * 7919u) % 100003u) * 3 - 50000;
}

/* Checks one answer against the reference: same length, scores equal to
 * the reference's rank by rank, ids equal except among near-ties, ties in
 * our own scores ordered by id, and no id twice. */
static void check_exact(const index_hit *hits, int n_hits, const ref_hit *ref, size_t n_ref, int k, const float *data,
                        const int64_t *ids, size_t n, int dim, const float *q)
{
    size_t want = n_ref < (size_t)k ? n_ref : (size_t)k;
    assert_int_equal(n_hits, (int)want);
    const double eps = 2e-6 * sqrt((double)dim) + 1e-6;
    for (int i = 0; i < n_hits; i++) {
        assert_true(fabs(hits[i].score - ref[i].score) <= eps);
        if (hits[i].id != ref[i].id) {
            /* allowed only if the two really tie (float rounding) */
            double mine = NAN;
            for (size_t j = 0; j < n; j++)
                if (ids[j] == hits[i].id)
                    mine = ref_dot(data + j * (size_t)dim, q, dim);
            assert_true(fabs(mine - ref[i].score) <= eps);
        }
        if (i > 0) {
            assert_true(hits[i - 1].score >= hits[i].score);
            if (hits[i - 1].score == hits[i].score)
                assert_true(hits[i - 1].id < hits[i].id);
        }
    }
}

static void exact_case(const char *level, int dim, size_t n, bool clustered, bool dups)
{
    ms_err err;
    if (index_simd_select(level, &err) != 0)
        return; /* this CPU lacks it */
    float *data, *queries;
    size_t nq = 4;
    if (clustered) {
        make_clustered(dim, n, nq, 20, 42 + (uint64_t)dim, &data, &queries);
    } else {
        ix_rng r;
        ix_rng_seed(&r, 7 + (uint64_t)dim);
        data = malloc(n * (size_t)dim * sizeof(float));
        queries = malloc(nq * (size_t)dim * sizeof(float));
        ix_synth_random(&r, dim, n, data);
        ix_synth_random(&r, dim, nq, queries);
    }
    if (dups) /* exact duplicates: every 5th vector repeats an earlier one */
        for (size_t i = 5; i < n; i += 5)
            memcpy(data + i * (size_t)dim, data + (i / 5 - 1) * (size_t)dim, (size_t)dim * sizeof(float));
    if (dups && nq > 1) /* and one query equal to a stored vector */
        memcpy(queries, data + 5 * (size_t)dim, (size_t)dim * sizeof(float));
    int64_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = id_of(i);
    index_params p;
    index_params_init(&p);
    p.kind = INDEX_FLAT;
    vindex *ix;
    /* small chunks so scans cross chunk boundaries */
    assert_int_equal(ix_create(dim, &p, 6, &ix, &err), 0);
    /* add in uneven batches */
    for (size_t at = 0; at < n;) {
        size_t m = (at * 13 + 17) % 97 + 1;
        if (m > n - at)
            m = n - at;
        assert_int_equal(index_add(ix, ids + at, data + at * (size_t)dim, m, &err), 0);
        at += m;
    }
    assert_int_equal((int)index_count(ix), (int)n);
    ref_hit *ref = malloc(n * sizeof *ref);
    int ks[] = {1, 2, 3, 10, 57, 100, 1000, (int)n, (int)n + 5};
    index_hit *hits = malloc((n + 5) * sizeof *hits);
    for (size_t qi = 0; qi < nq; qi++) {
        const float *q = queries + qi * (size_t)dim;
        size_t m = ref_rank(data, ids, NULL, n, dim, q, ref);
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
            int k = ks[ki], nh = -1;
            assert_int_equal(index_search_exact(ix, q, k, hits, &nh, &err), 0);
            check_exact(hits, nh, ref, m, k, data, ids, n, dim, q);
            assert_int_equal(index_search(ix, q, k, 0, hits, &nh, &err), 0);
            check_exact(hits, nh, ref, m, k, data, ids, n, dim, q);
        }
    }
    /* batches return exactly what single queries return */
    int k = 10;
    index_hit *bh = malloc(nq * (size_t)k * sizeof *bh);
    int *bn = malloc(nq * sizeof *bn);
    assert_int_equal(index_search_batch(ix, queries, (int)nq, k, 0, bh, bn, &err), 0);
    for (size_t qi = 0; qi < nq; qi++) {
        int nh;
        assert_int_equal(index_search_exact(ix, queries + qi * (size_t)dim, k, hits, &nh, &err), 0);
        assert_int_equal(bn[qi], nh);
        for (int i = 0; i < nh; i++) {
            assert_true(bh[qi * (size_t)k + i].id == hits[i].id);
            assert_true(bh[qi * (size_t)k + i].score == hits[i].score);
        }
    }
    free(bh);
    free(bn);
    free(hits);
    free(ref);
    free(ids);
    free(data);
    free(queries);
    index_free(ix);
    assert_int_equal(index_simd_select("auto", &err), 0);
}

static void test_exact_random(void **state)
{
    int dims[] = {1, 3, 15, 16, 17, 64, 100, 1280, 4096};
    for (size_t l = 0; l < 3; l++)
        for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
            exact_case(levels[l], dims[d], dims[d] >= 1280 ? 1100 : 1500, false, false);
}

static void test_exact_clustered_with_duplicates(void **state)
{
    int dims[] = {2, 33, 128, 2048};
    for (size_t l = 0; l < 3; l++)
        for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
            exact_case(levels[l], dims[d], 1200, true, true);
}

/* Large batches go through the blocked kernel with 2 threads. */
static void test_batch_matches_single(void **state)
{
    ms_err err;
    int dim = 96;
    size_t n = 5000;
    int nq = 37, k = 15;
    float *data, *queries;
    make_clustered(dim, n, (size_t)nq, 30, 5, &data, &queries);
    int64_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = id_of(i);
    index_params p;
    index_params_init(&p);
    p.kind = INDEX_FLAT;
    p.threads = 2;
    vindex *ix;
    assert_int_equal(index_create(dim, &p, &ix, &err), 0);
    assert_int_equal(index_add(ix, ids, data, n, &err), 0);
    for (int i = 0; i < 100; i++) /* tombstones are skipped by the batch too */
        assert_int_equal(index_remove(ix, ids[i * 7]), 0);
    index_hit *bh = malloc((size_t)nq * k * sizeof *bh), hits[15];
    int *bn = malloc((size_t)nq * sizeof *bn);
    assert_int_equal(index_search_batch(ix, queries, nq, k, 0, bh, bn, &err), 0);
    for (int qi = 0; qi < nq; qi++) {
        int nh;
        assert_int_equal(index_search_exact(ix, queries + (size_t)qi * dim, k, hits, &nh, &err), 0);
        assert_int_equal(bn[qi], nh);
        for (int i = 0; i < nh; i++) {
            assert_true(bh[(size_t)qi * k + i].id == hits[i].id);
            assert_true(bh[(size_t)qi * k + i].score == hits[i].score);
        }
    }
    free(bh);
    free(bn);
    free(ids);
    free(data);
    free(queries);
    index_free(ix);
}

/* int8 and float16 pre-scans with exact re-rank find exactly the exact top 10. */
static void test_quantised_prescan_recall(void **state)
{
    ms_err err;
    int dim = 256;
    size_t n = 8000, nq = 50;
    float *data, *queries;
    make_clustered(dim, n, nq, 100, 11, &data, &queries);
    int64_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int64_t)i;
    index_quant qs[] = {INDEX_QUANT_INT8, INDEX_QUANT_F16, INDEX_QUANT_INT4};
    for (int l = 0; l < 3; l++) {
        if (index_simd_select(levels[l], &err))
            continue;
        for (int t = 0; t < 3; t++) {
            index_params p;
            index_params_init(&p);
            p.kind = INDEX_FLAT;
            p.quant = qs[t];
            vindex *ix;
            assert_int_equal(index_create(dim, &p, &ix, &err), 0);
            assert_int_equal(index_add(ix, ids, data, n, &err), 0);
            double recall = 0;
            for (size_t qi = 0; qi < nq; qi++) {
                index_hit a[10], b[10];
                int na, nb;
                const float *q = queries + qi * (size_t)dim;
                assert_int_equal(index_search(ix, q, 10, 0, a, &na, &err), 0);
                assert_int_equal(index_search_exact(ix, q, 10, b, &nb, &err), 0);
                assert_int_equal(na, nb);
                recall += recall_hits(a, na, b, nb, 10) / (double)nq;
                for (int i = 0; i < na && qs[t] != INDEX_QUANT_INT4; i++) { /* re-ranked: exact scores, order */
                    assert_true(a[i].id == b[i].id);
                    assert_true(a[i].score == b[i].score);
                }
                for (int i = 0; i < na; i++) /* int4 may miss one, its scores are still exact */
                    for (int j = 0; j < nb; j++)
                        if (a[i].id == b[j].id)
                            assert_true(a[i].score == b[j].score);
            }
            if (qs[t] == INDEX_QUANT_INT4) {
                printf("%s: int4 pre-scan + re-rank of %d: recall@10 %.4f\n", levels[l], ix_rerank_count(10), recall);
                assert_true(recall >= 0.95);
            }
            index_free(ix);
        }
    }
    assert_int_equal(index_simd_select("auto", &err), 0);
    free(ids);
    free(data);
    free(queries);
}

static void test_kernels_agree(void **state)
{
    /* half conversion: portable == F16C for many values, and round trips */
    ix_rng r;
    ix_rng_seed(&r, 3);
    for (uint32_t h = 0; h < 65536; h++) {
        float f = ix_half_to_float((uint16_t)h);
        if (f == f) /* not NaN */
            assert_int_equal(ix_float_to_half(f), h);
    }
    ms_err err;
    if (index_simd_select("avx2", &err) == 0) {
        float in[4096];
        uint16_t hw[4096];
        for (int i = 0; i < 4096; i++)
            in[i] = (float)(ix_rng_gauss(&r) * pow(2.0, (double)(i % 40) - 30));
        ix_kern()->to_half(in, hw, 4096);
        for (int i = 0; i < 4096; i++)
            assert_int_equal(hw[i], ix_float_to_half(in[i]));
    }
    /* int8 dot products are exact integers: all levels agree */
    uint8_t codes[3 * 203];
    int8_t q[203];
    for (int i = 0; i < 3 * 203; i++)
        codes[i] = (uint8_t)(ix_rng_next(&r) & 0xFF);
    for (int i = 0; i < 203; i++)
        q[i] = (int8_t)((int)(ix_rng_next(&r) % 255) - 127);
    int32_t want[3];
    for (int v = 0; v < 3; v++) {
        want[v] = 0;
        for (int j = 0; j < 203; j++)
            want[v] += codes[v * 203 + j] * q[j];
    }
    for (int l = 0; l < 3; l++) {
        if (index_simd_select(levels[l], &err))
            continue;
        int32_t got[3];
        ix_kern()->idot_rows(q, codes, 3, 203, got);
        for (int v = 0; v < 3; v++)
            assert_int_equal(got[v], want[v]);
    }
    assert_int_equal(index_simd_select("auto", &err), 0);
    assert_int_equal(index_simd_select("sse9", &err), MS_EINVAL);
    /* CRC32C check value */
    assert_int_equal(ix_crc32c(0, "123456789", 9), 0xE3069283u);
}

/* The pointer-list int8 kernel of the graph walk: every level gives the
 * portable reference's sums exactly (integer arithmetic), for dimensions
 * around the vector widths and lists of every length around the groups of
 * four (whose next group is prefetched), from scattered rows. */
static void test_idot_ptrs_exact(void **state)
{
    static const int dims[] = {1, 15, 17, 63, 64, 65, 127, 128, 129, 203, 512, 2048};
    ix_rng r;
    ix_rng_seed(&r, 11);
    ms_err err;
    enum { ROWS = 13 };
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        int dim = dims[di];
        uint8_t *codes = malloc((size_t)ROWS * dim);
        int8_t *q = malloc((size_t)dim);
        for (size_t i = 0; i < (size_t)ROWS * dim; i++)
            codes[i] = (uint8_t)(ix_rng_next(&r) & 0xFF);
        for (int j = 0; j < dim; j++) /* the extremes included */
            q[j] = (int8_t)(j % 7 == 0 ? -128 : j % 7 == 1 ? 127 : (int)(ix_rng_next(&r) % 256) - 128);
        if (dim > 2)
            memset(codes, 255, (size_t)dim); /* row 0 at the largest products */
        const uint8_t *ptrs[ROWS];
        for (int i = 0; i < ROWS; i++)
            ptrs[i] = codes + (size_t)((i * 5) % ROWS) * dim; /* not in memory order */
        int32_t want[ROWS];
        for (int i = 0; i < ROWS; i++) {
            want[i] = 0;
            for (int j = 0; j < dim; j++)
                want[i] += (int32_t)ptrs[i][j] * q[j];
        }
        for (int l = 0; l < 3; l++) {
            if (index_simd_select(levels[l], &err))
                continue;
            for (int n = 0; n <= ROWS; n++) {
                int32_t got[ROWS + 1];
                got[n] = 12345; /* must stay untouched */
                ix_kern()->idot_ptrs(q, ptrs, (size_t)n, dim, got);
                for (int i = 0; i < n; i++)
                    assert_int_equal(got[i], want[i]);
                assert_int_equal(got[n], 12345);
            }
            /* 4-bit codes: the same bytes read as nibble pairs, the query
             * padded to 2 * ceil(dim / 2) with a zero */
            int h = (dim + 1) / 2;
            int8_t *q4 = calloc((size_t)2 * h, 1);
            memcpy(q4, q, (size_t)dim);
            int32_t want4[ROWS], got4[ROWS + 1];
            for (int i = 0; i < ROWS; i++) {
                want4[i] = 0;
                for (int j = 0; j < h; j++) {
                    int hi = ptrs[i][j] >> 4;
                    want4[i] += (ptrs[i][j] & 15) * q4[j] + (h + j < dim ? hi : 0) * q4[h + j];
                }
            }
            for (int n = 0; n <= ROWS; n++) {
                got4[n] = 54321;
                ix_kern()->i4dot_ptrs(q4, ptrs, (size_t)n, dim, got4);
                for (int i = 0; i < n; i++)
                    assert_int_equal(got4[i], want4[i]);
                assert_int_equal(got4[n], 54321);
            }
            free(q4);
            /* and the same sums as the contiguous-rows kernel */
            int32_t rows[ROWS];
            ix_kern()->idot_rows(q, codes, ROWS, dim, rows);
            for (int i = 0; i < ROWS; i++) {
                int32_t ref = 0;
                for (int j = 0; j < dim; j++)
                    ref += (int32_t)codes[(size_t)i * dim + j] * q[j];
                assert_int_equal(rows[i], ref);
            }
        }
        free(codes);
        free(q);
    }
    assert_int_equal(index_simd_select("auto", &err), 0);
}

/* Requantisation of codes (a stored vector as an int8 query): every level
 * gives the portable reference's bytes and code sum, ties included. */
static void test_requant_exact(void **state)
{
    static const int dims[] = {1, 7, 8, 15, 16, 17, 64, 100, 512, 2049};
    ix_rng r;
    ix_rng_seed(&r, 13);
    ms_err err;
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        int dim = dims[di];
        uint8_t *codes = malloc((size_t)dim);
        int8_t *want = malloc((size_t)dim), *got = malloc((size_t)dim);
        for (int j = 0; j < dim; j++)
            codes[j] = (uint8_t)(j < 256 ? (uint64_t)j : ix_rng_next(&r) & 0xFF);
        /* a, b: typical, exact halves (ties to even), and out of range (clamped) */
        float ab[][2] = {{-60.3f, 0.71f}, {-64.0f, 0.5f}, {0.5f, 1.0f}, {-300.0f, 3.0f}, {0, 0}};
        for (size_t t = 0; t < 5; t++) {
            assert_int_equal(index_simd_select("portable", &err), 0);
            int32_t ws = ix_kern()->requant(codes, dim, ab[t][0], ab[t][1], want);
            int32_t s = 0;
            for (int j = 0; j < dim; j++) {
                s += codes[j];
                assert_true(want[j] >= -127 && want[j] <= 127);
            }
            assert_int_equal(ws, s);
            if (t == 1 && dim >= 4) /* -64 + c/2: c = 1 -> -63.5 -> -64 (even), c = 3 -> -62.5 -> -62 */
                assert_true(want[1] == -64 && want[3] == -62);
            for (int l = 0; l < 2; l++) {
                if (index_simd_select(levels[l], &err))
                    continue;
                memset(got, 99, (size_t)dim);
                assert_int_equal(ix_kern()->requant(codes, dim, ab[t][0], ab[t][1], got), ws);
                assert_memory_equal(got, want, (size_t)dim);
            }
        }
        free(codes);
        free(want);
        free(got);
    }
    assert_int_equal(index_simd_select("auto", &err), 0);
}

/* A stored vector used as the query of the int8 walk (requantised from its
 * codes) scores other codes close to the float inner product. */
static void test_quant_query_from_codes(void **state)
{
    int dim = 256;
    ix_rng r;
    ix_rng_seed(&r, 12);
    float *v = malloc(2 * (size_t)dim * sizeof *v);
    ix_synth_random(&r, dim, 2, v);
    uint8_t ca[256], cb[256];
    float qa[2], qb[2];
    ix_quant_encode_int8(dim, v, ca, qa);
    ix_quant_encode_int8(dim, v + dim, cb, qb);
    int8_t qq[256];
    ix_qquery qz = {qq, 0, 0};
    ix_quant_query_codes(ca, qa, dim, &qz);
    const uint8_t *p = cb;
    int32_t idot;
    ix_kern()->idot_ptrs(qz.qq, &p, 1, dim, &idot);
    double exact = ref_dot(v, v + dim, dim);
    float approx = ix_qscore(&qz, qb, idot);
    printf("codes x codes: %.5f, float: %.5f\n", approx, exact);
    assert_true(fabs(approx - exact) < 0.02);
    /* itself: close to its squared norm (1) */
    p = ca;
    ix_kern()->idot_ptrs(qz.qq, &p, 1, dim, &idot);
    assert_true(fabs(ix_qscore(&qz, qa, idot) - 1.0) < 0.02);
    /* a constant vector: step 0, exact */
    float c[256];
    for (int j = 0; j < dim; j++)
        c[j] = 0.0625f;
    ix_quant_encode_int8(dim, c, ca, qa);
    ix_quant_query_codes(ca, qa, dim, &qz);
    assert_true(qa[1] == 0 && fabs(qz.sum - 16.0f) < 1e-5);
    free(v);
}

static void test_add_remove_replace_get(void **state)
{
    ms_err err;
    vindex *ix;
    int dim = 8;
    assert_int_equal(index_create(dim, NULL, &ix, &err), 0);
    float v[3][8] = {{1, 0, 0, 0, 0, 0, 0, 0}, {0, 1, 0, 0, 0, 0, 0, 0}, {0.6f, 0.8f, 0, 0, 0, 0, 0, 0}};
    int64_t ids[3] = {10, 20, 30};
    assert_int_equal(index_add(ix, ids, &v[0][0], 3, &err), 0);
    assert_int_equal((int)index_count(ix), 3);
    index_hit h[5];
    int nh;
    assert_int_equal(index_search(ix, v[0], 5, 0, h, &nh, &err), 0);
    assert_int_equal(nh, 3);
    assert_true(h[0].id == 10 && h[1].id == 30 && h[2].id == 20);
    assert_true(h[0].score == 1.0f);
    /* replace id 10 by e2: it now ties with 20 on query e2, smaller id first */
    float e2[8] = {0, 1, 0, 0, 0, 0, 0, 0};
    int64_t ten = 10;
    assert_int_equal(index_add(ix, &ten, e2, 1, &err), 0);
    assert_int_equal((int)index_count(ix), 3);
    assert_int_equal(index_search(ix, e2, 5, 0, h, &nh, &err), 0);
    assert_int_equal(nh, 3);
    assert_true(h[0].id == 10 && h[1].id == 20 && h[2].id == 30);
    float got[8];
    assert_int_equal(index_get(ix, 10, got), 0);
    assert_memory_equal(got, e2, sizeof got);
    /* remove */
    assert_int_equal(index_remove(ix, 20), 0);
    assert_int_equal(index_remove(ix, 20), MS_ENOTFOUND);
    assert_int_equal(index_get(ix, 20, got), MS_ENOTFOUND);
    assert_int_equal((int)index_count(ix), 2);
    assert_int_equal(index_search(ix, e2, 5, 0, h, &nh, &err), 0);
    assert_int_equal(nh, 2);
    assert_true(h[0].id == 10 && h[1].id == 30);
    /* an id can come back after removal */
    int64_t twenty = 20;
    assert_int_equal(index_add(ix, &twenty, v[1], 1, &err), 0);
    assert_int_equal((int)index_count(ix), 3);
    /* rebuild compacts the two dead slots away, answers unchanged */
    size_t before = ix_published(ix);
    assert_int_equal(index_rebuild(ix, &err), 0);
    assert_true(ix_published(ix) == 3 && before == 5);
    assert_int_equal(index_search(ix, e2, 5, 0, h, &nh, &err), 0);
    assert_int_equal(nh, 3);
    assert_true(h[0].id == 10 && h[1].id == 20 && h[2].id == 30);
    index_free(ix);
}

static void test_errors(void **state)
{
    ms_err err;
    vindex *ix;
    assert_int_equal(index_create(0, NULL, &ix, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "dimension"));
    assert_int_equal(index_create(65537, NULL, &ix, &err), MS_EINVAL);
    index_params p;
    index_params_init(&p);
    p.M = 1;
    assert_int_equal(index_create(4, &p, &ix, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "M"));
    assert_int_equal(index_create(4, NULL, &ix, &err), 0);
    float v[4] = {1, 0, 0, 0}, bad[4] = {NAN, 0, 0, 0};
    int64_t id = 1, reserved = INT64_MIN;
    assert_int_equal(index_add(ix, &id, bad, 1, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "NaN"));
    assert_int_equal(index_add(ix, &reserved, v, 1, &err), MS_EINVAL);
    index_hit h[2];
    int nh = 5;
    assert_int_equal(index_search(ix, v, 2, 0, h, &nh, &err), 0);
    assert_int_equal(nh, 0); /* empty index: no hits, no error */
    assert_int_equal(index_add(ix, &id, v, 1, &err), 0);
    assert_int_equal(index_search(ix, v, 0, 0, h, &nh, &err), MS_EINVAL);
    assert_int_equal(index_search(ix, bad, 1, 0, h, &nh, &err), MS_EINVAL);
    assert_int_equal(index_search_filtered(ix, v, 2, 0, NULL, 0, h, &nh, &err), 0);
    assert_int_equal(nh, 0);
    assert_string_equal(index_kind_name(index_current_kind(ix)), "flat");
    assert_true(index_memory_bytes(ix) > 0);
    index_free(ix);
    index_free(NULL);
}

/* AUTO: flat below the threshold, graph from it on, answers stay right. */
static void test_auto_switch(void **state)
{
    ms_err err;
    int dim = 32;
    size_t n = 3000;
    float *data, *queries;
    make_clustered(dim, n, 20, 40, 9, &data, &queries);
    int64_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int64_t)i;
    index_params p;
    index_params_init(&p);
    p.auto_threshold = 1000;
    vindex *ix;
    assert_int_equal(index_create(dim, &p, &ix, &err), 0);
    assert_int_equal(index_add(ix, ids, data, 999, &err), 0);
    assert_int_equal(index_current_kind(ix), INDEX_FLAT);
    assert_int_equal(index_add(ix, ids + 999, data + 999 * (size_t)dim, n - 999, &err), 0);
    assert_int_equal(index_current_kind(ix), INDEX_HNSW);
    double recall = 0;
    for (int qi = 0; qi < 20; qi++) {
        index_hit a[10], b[10];
        int na, nb;
        assert_int_equal(index_search(ix, queries + (size_t)qi * dim, 10, 0, a, &na, &err), 0);
        assert_int_equal(index_search_exact(ix, queries + (size_t)qi * dim, 10, b, &nb, &err), 0);
        assert_int_equal(na, 10);
        recall += recall_hits(a, na, b, nb, 10) / 20;
    }
    printf("auto-switched graph recall@10 = %.3f\n", recall);
    assert_true(recall >= 0.95);
    /* removing most vectors and rebuilding goes back to flat */
    for (size_t i = 0; i < n - 500; i++)
        assert_int_equal(index_remove(ix, ids[i]), 0);
    assert_int_equal(index_rebuild(ix, &err), 0);
    assert_int_equal(index_current_kind(ix), INDEX_FLAT);
    assert_int_equal((int)index_count(ix), 500);
    free(ids);
    free(data);
    free(queries);
    index_free(ix);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernels_agree),
        cmocka_unit_test(test_idot_ptrs_exact),
        cmocka_unit_test(test_requant_exact),
        cmocka_unit_test(test_quant_query_from_codes),
        cmocka_unit_test(test_exact_random),
        cmocka_unit_test(test_exact_clustered_with_duplicates),
        cmocka_unit_test(test_batch_matches_single),
        cmocka_unit_test(test_quantised_prescan_recall),
        cmocka_unit_test(test_add_remove_replace_get),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_auto_switch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
