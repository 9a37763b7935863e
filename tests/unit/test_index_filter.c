/*
 * test_index_filter.c - search restricted to a set of ids at pass rates of
 * 0.1%, 1%, 10% and 50%: never an id outside the set, never fewer than
 * min(k, passing) results, exactly the exact-filtered answer when the set is
 * scanned, recall >= 0.95 when the graph is walked (forced at every rate).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "index/internal.h"
#include "test_index_common.h"

#define DIM 48
#define N 20000
#define NQ 40
#define K 10

static float *data, *queries;
static vindex *graph_ix, *flat_ix, *int8_ix, *int4_ix; /* HNSW walking int8 / int4 codes */

static int setup(void **state)
{
    make_clustered(DIM, N, NQ, 200, 31337, &data, &queries);
    int64_t *ids = malloc(N * sizeof *ids);
    for (size_t i = 0; i < N; i++)
        ids[i] = (int64_t)i * 10; /* ids are not slots */
    index_params p;
    index_params_init(&p);
    p.kind = INDEX_HNSW;
    p.threads = 2;
    ms_err err;
    if (index_create(DIM, &p, &graph_ix, &err) || index_add(graph_ix, ids, data, N, &err))
        return -1;
    p.quant = INDEX_QUANT_INT8;
    if (index_create(DIM, &p, &int8_ix, &err) || index_add(int8_ix, ids, data, N, &err))
        return -1;
    p.quant = INDEX_QUANT_INT4;
    if (index_create(DIM, &p, &int4_ix, &err) || index_add(int4_ix, ids, data, N, &err))
        return -1;
    p.quant = INDEX_QUANT_NONE;
    p.kind = INDEX_FLAT;
    if (index_create(DIM, &p, &flat_ix, &err) || index_add(flat_ix, ids, data, N, &err))
        return -1;
    free(ids);
    return 0;
}

static int teardown(void **state)
{
    index_free(graph_ix);
    index_free(flat_ix);
    index_free(int8_ix);
    index_free(int4_ix);
    free(data);
    free(queries);
    return 0;
}

/* A random subset of the ids at the given rate, plus ids the index does
 * not hold and duplicates (both must be harmless). */
static int64_t *make_filter(double rate, uint64_t seed, size_t *n_out, bool *pass)
{
    ix_rng r;
    ix_rng_seed(&r, seed);
    int64_t *allowed = malloc((N + 20) * sizeof *allowed);
    size_t n = 0;
    memset(pass, 0, N * sizeof *pass);
    for (size_t i = 0; i < N; i++)
        if (ix_rng_uniform(&r) < rate) {
            allowed[n++] = (int64_t)i * 10;
            pass[i] = true;
        }
    for (int j = 0; j < 10; j++)
        allowed[n++] = -7 - j; /* absent */
    for (int j = 0; j < 10 && n > 10; j++)
        allowed[n++] = allowed[j]; /* duplicate */
    *n_out = n;
    return allowed;
}

static void check_rate(double rate, double min_graph_recall)
{
    ms_err err;
    bool *pass = malloc(N * sizeof *pass);
    int64_t *ids = malloc(N * sizeof *ids);
    for (size_t i = 0; i < N; i++)
        ids[i] = (int64_t)i * 10;
    ref_hit *ref = malloc(N * sizeof *ref);
    double graph_recall = 0, code_recall[2] = {0, 0};
    size_t passing = 0;
    for (int q = 0; q < NQ; q++) {
        size_t n_allowed;
        int64_t *allowed = make_filter(rate, 1000 + (uint64_t)q, &n_allowed, pass);
        passing = 0;
        for (size_t i = 0; i < N; i++)
            passing += pass[i];
        const float *qv = queries + (size_t)q * DIM;
        size_t m = ref_rank(data, ids, pass, N, DIM, qv, ref);
        int want = (int)(m < K ? m : K);
        index_hit h[K];
        int nh;
        /* automatic choice, on the flat and on the graph index */
        vindex *both[3] = {flat_ix, graph_ix, int8_ix};
        for (int w = 0; w < 3; w++) {
            assert_int_equal(index_search_filtered(both[w], qv, K, 0, allowed, n_allowed, h, &nh, &err), 0);
            assert_int_equal(nh, want);
            for (int i = 0; i < nh; i++) {
                assert_true(h[i].id % 10 == 0 && h[i].id >= 0 && pass[h[i].id / 10]);
                if (rate <= 0.01) /* small sets are scanned: exact */
                    assert_true(h[i].id == ref[i].id || fabs(h[i].score - ref[i].score) < 1e-5);
            }
        }
        /* forced scan: exact at every rate */
        assert_int_equal(ix_search_filtered_mode(graph_ix, qv, K, 0, allowed, n_allowed, 2, h, &nh, &err), 0);
        assert_int_equal(nh, want);
        for (int i = 0; i < nh; i++)
            assert_true(h[i].id == ref[i].id || fabs(h[i].score - ref[i].score) < 1e-5);
        /* forced graph walk: inside the set, full, and good recall */
        assert_int_equal(ix_search_filtered_mode(graph_ix, qv, K, 0, allowed, n_allowed, 1, h, &nh, &err), 0);
        assert_int_equal(nh, want);
        for (int i = 0; i < nh; i++)
            assert_true(pass[h[i].id / 10]);
        graph_recall += recall_at(h, nh, ref, m, K) / NQ;
        /* the same on the int8 and int4 walks (exact re-rank: exact scores) */
        vindex *coded[2] = {int8_ix, int4_ix};
        for (int w = 0; w < 2; w++) {
            assert_int_equal(ix_search_filtered_mode(coded[w], qv, K, 0, allowed, n_allowed, 1, h, &nh, &err), 0);
            assert_int_equal(nh, want);
            for (int i = 0; i < nh; i++) {
                assert_true(pass[h[i].id / 10]);
                float v[DIM];
                assert_int_equal(index_get(coded[w], h[i].id, v), 0);
                assert_true(fabs(h[i].score - ref_dot(v, qv, DIM)) < 1e-5);
            }
            code_recall[w] += recall_at(h, nh, ref, m, K) / NQ;
        }
        free(allowed);
    }
    printf("pass rate %5.1f%% (%zu ids): forced graph recall@%d %.4f, int8 walk %.4f, int4 walk %.4f\n", rate * 100,
           passing, K, graph_recall, code_recall[0], code_recall[1]);
    assert_true(graph_recall >= min_graph_recall);
    assert_true(code_recall[0] >= min_graph_recall);
    assert_true(code_recall[1] >= min_graph_recall);
    free(pass);
    free(ids);
    free(ref);
}

static void test_rate_0_1_percent(void **state)
{
    check_rate(0.001, 0.95);
}

static void test_rate_1_percent(void **state)
{
    check_rate(0.01, 0.95);
}

static void test_rate_10_percent(void **state)
{
    check_rate(0.10, 0.95);
}

static void test_rate_50_percent(void **state)
{
    check_rate(0.50, 0.95);
}

/* Fewer passing ids than k: all of them, best first. Removed ids never. */
static void test_fewer_than_k_and_removed(void **state)
{
    ms_err err;
    int64_t allowed[4] = {10, 20, 30, 40};
    index_hit h[K];
    int nh;
    assert_int_equal(index_remove(graph_ix, 30), 0);
    for (int mode = 0; mode < 3; mode++) {
        assert_int_equal(ix_search_filtered_mode(graph_ix, queries, K, 0, allowed, 4, mode, h, &nh, &err), 0);
        assert_int_equal(nh, 3);
        for (int i = 0; i < nh; i++)
            assert_true(h[i].id == 10 || h[i].id == 20 || h[i].id == 40);
        assert_true(h[0].score >= h[1].score && h[1].score >= h[2].score);
    }
    int64_t none[1] = {123456789};
    assert_int_equal(index_search_filtered(graph_ix, queries, K, 0, none, 1, h, &nh, &err), 0);
    assert_int_equal(nh, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_0_1_percent),
        cmocka_unit_test(test_rate_1_percent),
        cmocka_unit_test(test_rate_10_percent),
        cmocka_unit_test(test_rate_50_percent),
        cmocka_unit_test(test_fewer_than_k_and_removed),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
