/*
 * test_index_concurrency.c - 4 readers and 1 writer on one index, for
 * AddressSanitizer (tests/run.sh unit) and ThreadSanitizer (`make
 * tsan-index`). The writer adds in small batches (its graph inserts use 2
 * threads), replaces and removes ids, and crosses the AUTO threshold so the
 * graph is built while readers scan. Readers search, search filtered, search
 * in batches and read vectors back, and check every answer they get: ids
 * the writer has ever added, scores in order, vectors equal to one the id
 * has held.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "index/internal.h"
#include "test_index_common.h"

#define DIM 24
#define N 4000
#define NQ 32
#define READERS 4

static float *data, *queries;
static vindex *ix;
static _Atomic int writer_done;

typedef struct reader_state {
    int which;
    long searches, bad;
    char why[160];
} reader_state;

/* Every id the writer uses is in 0..N-1 and its vector is data[id] (or,
 * after a replacement, data[N - 1 - id]). */
static bool valid_vector(int64_t id, const float *v)
{
    return !memcmp(v, data + (size_t)id * DIM, DIM * sizeof *v) ||
           !memcmp(v, data + (size_t)(N - 1 - id) * DIM, DIM * sizeof *v);
}

static void check_hits(reader_state *st, const index_hit *h, int nh, int k, const char *what)
{
    if (nh < 0 || nh > k) {
        st->bad++;
        snprintf(st->why, sizeof st->why, "%s: %d hits for k %d", what, nh, k);
    }
    for (int i = 0; i < nh; i++) {
        if (h[i].id < 0 || h[i].id >= N || (i && h[i - 1].score < h[i].score)) {
            st->bad++;
            snprintf(st->why, sizeof st->why, "%s: bad hit %d (id %lld)", what, i, (long long)h[i].id);
        }
    }
}

static void *reader(void *arg)
{
    reader_state *st = arg;
    ms_err err;
    index_hit h[NQ * 10];
    int nh[NQ];
    int64_t allowed[64];
    float v[DIM];
    for (int it = 0; !atomic_load(&writer_done) || it < 50; it++) {
        const float *q = queries + (size_t)(it % NQ) * DIM;
        switch ((it + st->which) % 4) {
        case 0:
            if (index_search(ix, q, 10, 0, h, &nh[0], &err))
                st->bad++;
            check_hits(st, h, nh[0], 10, "search");
            break;
        case 1:
            for (int i = 0; i < 64; i++)
                allowed[i] = (int64_t)((it * 61 + i * 37) % N);
            if (index_search_filtered(ix, q, 10, 0, allowed, 64, h, &nh[0], &err))
                st->bad++;
            check_hits(st, h, nh[0], 10, "filtered");
            for (int i = 0; i < nh[0]; i++) {
                bool in = false;
                for (int j = 0; j < 64; j++)
                    in |= allowed[j] == h[i].id;
                if (!in) {
                    st->bad++;
                    snprintf(st->why, sizeof st->why, "filtered: id %lld outside the set", (long long)h[i].id);
                }
            }
            break;
        case 2:
            if (index_search_batch(ix, queries, 8, 10, 0, h, nh, &err))
                st->bad++;
            for (int j = 0; j < 8; j++)
                check_hits(st, h + j * 10, nh[j], 10, "batch");
            break;
        default:
            if (index_search_exact(ix, q, 5, h, &nh[0], &err))
                st->bad++;
            check_hits(st, h, nh[0], 5, "exact");
            for (int i = 0; i < nh[0]; i++)
                if (index_get(ix, h[i].id, v) == 0 && !valid_vector(h[i].id, v)) {
                    st->bad++;
                    snprintf(st->why, sizeof st->why, "get: id %lld has a vector it never had",
                             (long long)h[i].id);
                }
            break;
        }
        st->searches++;
    }
    return NULL;
}

static void four_readers_one_writer(index_quant quant)
{
    make_clustered(DIM, N, NQ, 40, 8080, &data, &queries);
    index_params p;
    index_params_init(&p);
    p.quant = quant; /* INT8: readers and build threads walk the codes */
    p.auto_threshold = N / 4; /* the graph gets built while readers run */
    p.threads = 2;
    p.ef_construction = 64;
    ms_err err;
    assert_int_equal(ix_create(DIM, &p, 6, &ix, &err), 0);
    int64_t *ids = malloc(N * sizeof *ids);
    for (int i = 0; i < N; i++)
        ids[i] = i;
    assert_int_equal(index_add(ix, ids, data, 200, &err), 0);
    atomic_store(&writer_done, 0);
    pthread_t th[READERS];
    reader_state st[READERS];
    for (int t = 0; t < READERS; t++) {
        st[t] = (reader_state){.which = t};
        assert_int_equal(pthread_create(&th[t], NULL, reader, &st[t]), 0);
    }
    /* the writer */
    for (int at = 200; at < N; at += 100) {
        int m = N - at < 100 ? N - at : 100;
        assert_int_equal(index_add(ix, ids + at, data + (size_t)at * DIM, (size_t)m, &err), 0);
        int64_t victim = at / 3;
        index_remove(ix, victim); /* may already be gone */
        int64_t back = at / 7; /* re-add with the mirrored vector */
        assert_int_equal(index_add(ix, &back, data + (size_t)(N - 1 - back) * DIM, 1, &err), 0);
    }
    assert_int_equal(index_current_kind(ix), INDEX_HNSW);
    atomic_store(&writer_done, 1);
    long total = 0;
    for (int t = 0; t < READERS; t++) {
        pthread_join(th[t], NULL);
        if (st[t].bad)
            fail_msg("reader %d: %ld bad answers, last: %s", t, st[t].bad, st[t].why);
        total += st[t].searches;
    }
    printf("readers made %ld searches beside the writer\n", total);
    /* afterwards the graph still finds what the exact scan finds */
    double recall = 0;
    for (int q = 0; q < NQ; q++) {
        index_hit a[10], b[10];
        int na, nb;
        assert_int_equal(index_search(ix, queries + (size_t)q * DIM, 10, 0, a, &na, &err), 0);
        assert_int_equal(index_search_exact(ix, queries + (size_t)q * DIM, 10, b, &nb, &err), 0);
        recall += recall_hits(a, na, b, nb, 10) / NQ;
    }
    printf("recall@10 after the run (%s): %.4f\n", quant == INDEX_QUANT_INT8   ? "int8 walk"
                                               : quant == INDEX_QUANT_INT4 ? "int4 walk"
                                                                           : "float32 walk", recall);
    assert_true(recall >= 0.95);
    free(ids);
    index_free(ix);
    free(data);
    free(queries);
}

static void test_four_readers_one_writer(void **state)
{
    four_readers_one_writer(INDEX_QUANT_NONE);
}

static void test_four_readers_one_writer_int8(void **state)
{
    four_readers_one_writer(INDEX_QUANT_INT8);
}

static void test_four_readers_one_writer_int4(void **state)
{
    four_readers_one_writer(INDEX_QUANT_INT4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_four_readers_one_writer),
        cmocka_unit_test(test_four_readers_one_writer_int8),
        cmocka_unit_test(test_four_readers_one_writer_int4),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
