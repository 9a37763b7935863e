/*
 * test_index_hnsw.c - HNSW recall against exact search on clustered data
 * (asserted minimums, the pgvector habit): after a build at the default
 * efSearch, after inserts made while other threads search, after deletes,
 * and after a rebuild; plus tiny graphs and odd dimensions.
 *
 * Each recall test runs on the three ways the graph can score vectors:
 * float32 throughout (graph_f32 = 1, the reference), the default (bulk
 * builds from temporary int8 codes, float32 walk), an int8 copy (quant
 * INT8: build and walk on the codes, exact re-rank of the final ef) and an
 * int4 copy (walk on it, exact re-rank; built as the default).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "index/internal.h"
#include "test_index_common.h"

typedef struct mode {
    const char *name;
    index_quant quant;
    int graph_f32;
} mode;

static const mode modes[] = {
    {"float32 graph", INDEX_QUANT_NONE, 1},
    {"default (int8 bulk build)", INDEX_QUANT_NONE, 0},
    {"int8 walk + exact re-rank", INDEX_QUANT_INT8, 0},
    {"int4 walk + exact re-rank", INDEX_QUANT_INT4, 0},
};
#define N_MODES 4

static mode cur_mode = {"float32 graph", INDEX_QUANT_NONE, 1};

static vindex *make_hnsw(int dim, int threads)
{
    index_params p;
    index_params_init(&p);
    p.kind = INDEX_HNSW;
    p.threads = threads;
    p.quant = cur_mode.quant;
    p.graph_f32 = cur_mode.graph_f32;
    vindex *ix;
    ms_err err;
    assert_int_equal(index_create(dim, &p, &ix, &err), 0);
    return ix;
}

/* Mean recall@k of index_search against index_search_exact; also checks
 * that every answer is full, sorted and free of removed ids. */
static double measure_recall(vindex *ix, const float *qs, int nq, int dim, int k, int ef, const bool *removed,
                             int64_t n_ids)
{
    ms_err err;
    index_hit *a = malloc((size_t)k * sizeof *a), *b = malloc((size_t)k * sizeof *b);
    double sum = 0;
    for (int q = 0; q < nq; q++) {
        int na, nb;
        assert_int_equal(index_search(ix, qs + (size_t)q * dim, k, ef, a, &na, &err), 0);
        assert_int_equal(index_search_exact(ix, qs + (size_t)q * dim, k, b, &nb, &err), 0);
        assert_int_equal(na, nb);
        for (int i = 0; i < na; i++) {
            assert_true(a[i].id >= 0 && a[i].id < n_ids);
            if (removed)
                assert_false(removed[a[i].id]);
            if (i)
                assert_true(a[i - 1].score >= a[i].score);
            /* scores are exact whatever the walk scored: the same float as
             * the exact scan gives the same id */
            for (int j = 0; j < nb; j++)
                if (b[j].id == a[i].id)
                    assert_true(a[i].score == b[j].score);
        }
        sum += recall_hits(a, na, b, nb, k);
    }
    free(a);
    free(b);
    return sum / nq;
}

/* The acceptance size scaled for ASan: 20,000 x 128, default
 * parameters, recall@10 >= 0.95 at the default efSearch. */
static void recall_after_build(void)
{
    int dim = 128, nq = 200;
    size_t n = 20000;
    float *data, *qs;
    make_clustered(dim, n, (size_t)nq, 300, 2024, &data, &qs);
    int64_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int64_t)i;
    vindex *ix = make_hnsw(dim, 2);
    ms_err err;
    assert_int_equal(index_add(ix, ids, data, n, &err), 0);
    assert_int_equal(index_current_kind(ix), INDEX_HNSW);
    double r = measure_recall(ix, qs, nq, dim, 10, 0, NULL, (int64_t)n);
    printf("%s: recall@10 after build (20000 x 128, default efSearch): %.4f\n", cur_mode.name, r);
    assert_true(r >= 0.95);
    double r1 = measure_recall(ix, qs, 50, dim, 1, 0, NULL, (int64_t)n);
    printf("%s: recall@1: %.4f\n", cur_mode.name, r1);
    assert_true(r1 >= 0.95);
    /* a low efSearch still keeps most of it (the walk itself is sound) */
    double r16 = measure_recall(ix, qs, nq, dim, 10, 16, NULL, (int64_t)n);
    printf("%s: recall@10 at efSearch 16: %.4f\n", cur_mode.name, r16);
    assert_true(r16 >= 0.85);
    free(ids);
    free(data);
    free(qs);
    index_free(ix);
}

typedef struct reader_arg {
    vindex *ix;
    const float *qs;
    int nq, dim;
    _Atomic int *stop;
    long searches;
    int bad;
} reader_arg;

static void *reader(void *p)
{
    reader_arg *a = p;
    index_hit h[10];
    ms_err err;
    for (int i = 0; !atomic_load(a->stop); i = (i + 1) % a->nq) {
        int nh;
        if (index_search(a->ix, a->qs + (size_t)i * a->dim, 10, 0, h, &nh, &err))
            a->bad++;
        for (int j = 1; j < nh; j++)
            if (h[j - 1].score < h[j].score)
                a->bad++;
        a->searches++;
    }
    return NULL;
}

/* Half the vectors first, then the other half in batches while two
 * readers search; recall over everything afterwards. */
static void recall_after_inserts_during_search(void)
{
    int dim = 64, nq = 100;
    size_t n = 12000;
    float *data, *qs;
    make_clustered(dim, n, (size_t)nq, 200, 77, &data, &qs);
    int64_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int64_t)i;
    vindex *ix = make_hnsw(dim, 2);
    ms_err err;
    assert_int_equal(index_add(ix, ids, data, n / 2, &err), 0);
    _Atomic int stop = 0;
    reader_arg ra[2];
    pthread_t th[2];
    for (int t = 0; t < 2; t++) {
        ra[t] = (reader_arg){ix, qs, nq, dim, &stop, 0, 0};
        assert_int_equal(pthread_create(&th[t], NULL, reader, &ra[t]), 0);
    }
    for (size_t at = n / 2; at < n; at += 500)
        assert_int_equal(index_add(ix, ids + at, data + at * (size_t)dim, 500, &err), 0);
    atomic_store(&stop, 1);
    for (int t = 0; t < 2; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(ra[t].bad, 0);
        assert_true(ra[t].searches > 0);
    }
    assert_int_equal((int)index_count(ix), (int)n);
    double r = measure_recall(ix, qs, nq, dim, 10, 0, NULL, (int64_t)n);
    printf("%s: recall@10 after inserts during search: %.4f (readers did %ld + %ld searches)\n", cur_mode.name, r,
           ra[0].searches, ra[1].searches);
    assert_true(r >= 0.95);
    free(ids);
    free(data);
    free(qs);
    index_free(ix);
}

/* 30% deleted: never returned, recall holds, rebuild compacts. */
static void recall_after_deletes_and_rebuild(void)
{
    int dim = 48, nq = 100;
    size_t n = 10000;
    float *data, *qs;
    make_clustered(dim, n, (size_t)nq, 150, 5150, &data, &qs);
    int64_t *ids = malloc(n * sizeof *ids);
    bool *removed = calloc(n, sizeof *removed);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int64_t)i;
    vindex *ix = make_hnsw(dim, 2);
    ms_err err;
    assert_int_equal(index_add(ix, ids, data, n, &err), 0);
    ix_rng r;
    ix_rng_seed(&r, 99);
    size_t gone = 0;
    while (gone < n * 3 / 10) {
        size_t i = ix_rng_next(&r) % n;
        if (removed[i])
            continue;
        assert_int_equal(index_remove(ix, ids[i]), 0);
        removed[i] = true;
        gone++;
    }
    /* also delete the exact nearest neighbours of some queries */
    for (int q = 0; q < 10; q++) {
        index_hit h[3];
        int nh;
        assert_int_equal(index_search_exact(ix, qs + (size_t)q * dim, 3, h, &nh, &err), 0);
        for (int i = 0; i < nh; i++) {
            assert_int_equal(index_remove(ix, h[i].id), 0);
            removed[h[i].id] = true;
            gone++;
        }
    }
    assert_int_equal((int)index_count(ix), (int)(n - gone));
    double rec = measure_recall(ix, qs, nq, dim, 10, 0, removed, (int64_t)n);
    printf("%s: recall@10 after deleting %zu of %zu: %.4f\n", cur_mode.name, gone, n, rec);
    assert_true(rec >= 0.95);
    size_t mem_before = index_memory_bytes(ix);
    assert_int_equal(index_rebuild(ix, &err), 0);
    assert_int_equal((int)ix_published(ix), (int)(n - gone));
    assert_int_equal(index_current_kind(ix), INDEX_HNSW);
    rec = measure_recall(ix, qs, nq, dim, 10, 0, removed, (int64_t)n);
    printf("%s: recall@10 after rebuild: %.4f (memory %zu -> %zu bytes)\n", cur_mode.name, rec, mem_before,
           index_memory_bytes(ix));
    assert_true(rec >= 0.95);
    /* deleting everything leaves an empty answer, not an error */
    for (size_t i = 0; i < n; i++)
        if (!removed[i])
            assert_int_equal(index_remove(ix, ids[i]), 0);
    index_hit h[10];
    int nh = -1;
    assert_int_equal(index_search(ix, qs, 10, 0, h, &nh, &err), 0);
    assert_int_equal(nh, 0);
    free(removed);
    free(ids);
    free(data);
    free(qs);
    index_free(ix);
}

/* Graphs of 1..40 nodes, k above the count, the given dimensions (each
 * seeded with dim + seed): with ef >= k >= the node count the walk (and,
 * with codes, the exact re-rank) sees every node, so the answer is exactly
 * the exact scan's, ids and scores. */
static void small_graphs(const int *dims, size_t n_dims, uint64_t seed)
{
    for (size_t di = 0; di < n_dims; di++) {
        int dim = dims[di];
        ix_rng r;
        ix_rng_seed(&r, (uint64_t)dim + seed);
        float *v = malloc(40 * (size_t)dim * sizeof *v), *q = malloc((size_t)dim * sizeof *q);
        assert_non_null(v);
        assert_non_null(q);
        ix_synth_random(&r, dim, 40, v);
        ix_synth_random(&r, dim, 1, q);
        vindex *ix = make_hnsw(dim, 1);
        ms_err err;
        for (int i = 0; i < 40; i++) {
            int64_t id = 1000 - i;
            assert_int_equal(index_add(ix, &id, v + (size_t)i * dim, 1, &err), 0);
            index_hit h[50], e[50];
            int nh, ne;
            assert_int_equal(index_search(ix, q, 50, 0, h, &nh, &err), 0);
            assert_int_equal(index_search_exact(ix, q, 50, e, &ne, &err), 0);
            assert_int_equal(nh, i + 1);
            assert_int_equal(ne, i + 1);
            for (int j = 0; j < nh; j++)
                assert_true(h[j].id == e[j].id && h[j].score == e[j].score);
        }
        index_free(ix);
        free(v);
        free(q);
    }
}

static void test_small_graphs(void **state)
{
    static const int dims[] = {1, 3, 31};
    small_graphs(dims, 3, 0);
}

static void test_recall_after_build(void **state)
{
    for (int m = 0; m < N_MODES; m++) {
        cur_mode = modes[m];
        recall_after_build();
    }
}

static void test_recall_after_inserts_during_search(void **state)
{
    for (int m = 0; m < N_MODES; m++) {
        cur_mode = modes[m];
        recall_after_inserts_during_search();
    }
}

static void test_recall_after_deletes_and_rebuild(void **state)
{
    for (int m = 0; m < N_MODES; m++) {
        cur_mode = modes[m];
        recall_after_deletes_and_rebuild();
    }
}

static void test_small_graphs_int8(void **state)
{
    /* the int8 and int4 walks, on odd dimensions and one of a full lane */
    static const int dims[] = {1, 3, 31, 64};
    cur_mode = modes[2];
    small_graphs(dims, 4, 7);
    cur_mode = modes[3];
    small_graphs(dims, 4, 7);
    cur_mode = modes[0];
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_graphs),
        cmocka_unit_test(test_small_graphs_int8),
        cmocka_unit_test(test_recall_after_build),
        cmocka_unit_test(test_recall_after_inserts_during_search),
        cmocka_unit_test(test_recall_after_deletes_and_rebuild),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
