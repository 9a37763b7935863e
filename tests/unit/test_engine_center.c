/*
 * test_engine_center.c - collection-mean centering in the engine (engine.h,
 * "Centering"), on SQLite collections with the real ImageNet MobileNetV2.
 *
 * To reach ENGINE_CENTER_MIN vectors (and the hundreds of the growth and
 * policy tests) without running the model that often under ASan, most
 * images are written straight into the store: real Kermany files (so that
 * a re-embed can decode them) with synthetic vectors that share a large
 * positive component, as ReLU features do. A few images
 * go through engine_ingest, so that searching with the same bytes must find
 * them at cosine 1. Every ranking is compared with a brute-force one
 * computed here, in double, from the store's raw vectors.
 *
 * Needs $MEDSEARCH_SHARED (models and kermany_pneumonia_224); skips (77)
 * without it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "engine.h"
#include "model_test_util.h"
#include "util/sha256.h"

#define DIM 1280
#define N_FILES 620   /* Kermany files read: the largest collection here has 600 */
#define N_REAL 6      /* images that go through engine_ingest */
_Static_assert(ENGINE_CENTER_MIN > N_REAL + 1, "t_center_lifecycle needs synthetic vectors between the real ones");

static struct {
    char tmp[256];
    char model[1024], model_ft[1024];
    char *files[N_FILES];
    int n_files;
    int next_file;    /* the next file to use in the current collection */
    int db_counter;
} G;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int load_files(const char *shared)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/data/kermany_pneumonia_224/images", shared);
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    char **all = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (len < 5 || (strcmp(de->d_name + len - 5, ".jpeg") && strcmp(de->d_name + len - 4, ".png") &&
                        strcmp(de->d_name + len - 4, ".jpg")))
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            all = realloc(all, cap * sizeof *all);
            assert_non_null(all);
        }
        assert_true(asprintf(&all[n++], "%s/%s", dir, de->d_name) > 0);
    }
    closedir(d);
    qsort(all, n, sizeof *all, cmp_str); /* the same files on every run */
    for (size_t i = 0; i < n; i++) {
        if (G.n_files < N_FILES)
            G.files[G.n_files++] = all[i];
        else
            free(all[i]);
    }
    free(all);
    return G.n_files == N_FILES ? 0 : -1;
}

/* A fresh collection path; its images start again at the first file. */
static char *new_db(void)
{
    G.next_file = 0;
    char *db = NULL;
    assert_true(asprintf(&db, "%s/c%d.db", G.tmp, G.db_counter++) > 0);
    return db;
}

static engine *open_engine(const char *db, const char *model_path, engine_center_mode center, int no_model,
                           int reembed, engine_open_report *rep)
{
    engine_options o;
    engine_options_init(&o);
    o.db = db;
    o.model_path = model_path;
    o.center = center;
    o.no_model = no_model;
    o.reembed = reembed;
    o.max_batch = 8;
    engine *e = NULL;
    ms_err err = {0};
    if (engine_open(&o, &e, rep, &err) != 0)
        fail_msg("engine_open(%s): %s", db, err.msg);
    return e;
}

static uint8_t *next_file(size_t *len)
{
    assert_true(G.next_file < G.n_files);
    uint8_t *b = mt_read_file(G.files[G.next_file++], len);
    assert_non_null(b);
    return b;
}

/* Ingests n real images through the engine; ids[] gets theirs, bytes[]
 * (may be NULL) keeps their bytes for searching. */
static void ingest_real(engine *e, int n, int64_t *ids, uint8_t **bytes, size_t *lens)
{
    for (int i = 0; i < n; i++) {
        size_t len;
        uint8_t *b = next_file(&len);
        int was_new = 0;
        ms_err err = {0};
        if (engine_ingest(e, b, len, NULL, &ids[i], &was_new, &err) != 0)
            fail_msg("engine_ingest: %s", err.msg);
        assert_true(was_new);
        if (bytes) {
            bytes[i] = b;
            lens[i] = len;
        } else {
            free(b);
        }
    }
}

static uint64_t rng(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Writes n images straight into the store (the engine closed): real file
 * bytes, synthetic unit vectors around a shared positive direction. */
static void add_synthetic(const char *db, int n, uint64_t seed)
{
    store *s;
    ms_err err = {0};
    if (store_open(db, &s, &err) != 0)
        fail_msg("store_open: %s", err.msg);
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 7;
    float *vec = malloc(DIM * sizeof *vec);
    assert_non_null(vec);
    for (int k = 0; k < n; k++) {
        double norm = 0;
        for (int i = 0; i < DIM; i++) {
            double base = fabs(sin(0.37 * i)) + 0.2;
            double noise = (double)(rng(&x) >> 11) / 9007199254740992.0 - 0.5;
            vec[i] = (float)(base + 0.9 * noise);
            norm += (double)vec[i] * vec[i];
        }
        for (int i = 0; i < DIM; i++)
            vec[i] = (float)(vec[i] / sqrt(norm));
        size_t len;
        uint8_t *b = next_file(&len);
        char sha[65];
        ms_sha256_hex(b, len, sha);
        store_item it = {.bytes = b, .len = len, .sha256 = sha, .mime = "image/jpeg", .width = 224,
                         .height = 224, .vec = vec};
        int64_t id;
        int was_new;
        if (store_ingest(s, &it, 1, &id, &was_new, &err) != 0)
            fail_msg("store_ingest: %s", err.msg);
        assert_true(was_new);
        free(b);
    }
    free(vec);
    store_close(s);
}

/* ---- brute force from the store's raw vectors ---- */

typedef struct raw_set {
    int64_t *ids;
    double *v;        /* n x DIM */
    size_t n, cap;
} raw_set;

static int raw_add(void *ctx, int64_t id, const float *vec, int dim)
{
    raw_set *r = ctx;
    assert_int_equal(dim, DIM);
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 512;
        r->ids = realloc(r->ids, r->cap * sizeof *r->ids);
        r->v = realloc(r->v, r->cap * DIM * sizeof *r->v);
        assert_true(r->ids && r->v);
    }
    r->ids[r->n] = id;
    for (int i = 0; i < DIM; i++)
        r->v[r->n * DIM + i] = vec[i];
    r->n++;
    return 0;
}

static void raw_load(const char *db, raw_set *r)
{
    memset(r, 0, sizeof *r);
    store *s;
    ms_err err = {0};
    assert_int_equal(store_open(db, &s, &err), 0);
    assert_int_equal(store_each_vector(s, raw_add, r, &err), 0);
    store_close(s);
}

static void raw_free(raw_set *r)
{
    free(r->ids);
    free(r->v);
}

static void raw_mean(const raw_set *r, double *c)
{
    memset(c, 0, DIM * sizeof *c);
    for (size_t k = 0; k < r->n; k++)
        for (int i = 0; i < DIM; i++)
            c[i] += r->v[k * DIM + i];
    for (int i = 0; i < DIM; i++)
        c[i] /= (double)r->n;
}

/* x -> l2(x - c) in double (c NULL: x as it is). */
static void centre(const double *x, const double *c, double *out)
{
    double ss = 0;
    for (int i = 0; i < DIM; i++) {
        out[i] = c ? x[i] - c[i] : x[i];
        ss += out[i] * out[i];
    }
    for (int i = 0; i < DIM; i++)
        out[i] /= sqrt(ss);
}

/* The brute-force score of every stored vector against the stored vector
 * of query id qid, in centred space when c is given. */
static double *brute_scores(const raw_set *r, const double *c, int64_t qid)
{
    double *q = malloc(DIM * sizeof *q), *v = malloc(DIM * sizeof *v);
    double *scores = malloc(r->n * sizeof *scores);
    assert_true(q && v && scores);
    size_t qi = 0;
    while (qi < r->n && r->ids[qi] != qid)
        qi++;
    assert_true(qi < r->n);
    centre(&r->v[qi * DIM], c, q);
    for (size_t k = 0; k < r->n; k++) {
        centre(&r->v[k * DIM], c, v);
        double d = 0;
        for (int i = 0; i < DIM; i++)
            d += q[i] * v[i];
        scores[k] = d;
    }
    free(q);
    free(v);
    return scores;
}

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* The engine's top k equals the brute-force top k: each rank's score is
 * the brute-force k-th best score, and each returned id scores that much
 * by brute force (so the order can differ only between ties). */
static void assert_brute_ranking(const raw_set *r, const double *c, int64_t qid, const engine_result *res, int n,
                                 int k)
{
    double *scores = brute_scores(r, c, qid);
    double *sorted = malloc(r->n * sizeof *sorted);
    assert_non_null(sorted);
    memcpy(sorted, scores, r->n * sizeof *sorted);
    qsort(sorted, r->n, sizeof *sorted, cmp_desc);
    assert_int_equal(n, k);
    for (int j = 0; j < n; j++) {
        size_t at = 0;
        while (at < r->n && r->ids[at] != res[j].id)
            at++;
        assert_true(at < r->n);
        if (fabs(sorted[j] - res[j].score) > 2e-5 || fabs(scores[at] - res[j].score) > 2e-5)
            fail_msg("rank %d: engine id %lld score %.7f, brute force %.7f for it, rank's best %.7f", j,
                     (long long)res[j].id, (double)res[j].score, scores[at], sorted[j]);
    }
    free(scores);
    free(sorted);
}

static void search_bytes(engine *e, const uint8_t *b, size_t len, int k, engine_result **res, int *n)
{
    engine_query q = {.bytes = b, .len = len, .k = k};
    ms_err err = {0};
    if (engine_search(e, &q, res, n, NULL, &err) != 0)
        fail_msg("engine_search: %s", err.msg);
}

static void stats(engine *e, engine_stats *st)
{
    assert_int_equal(engine_get_stats(e, st), 0);
}

static size_t stored_center(const char *db, float *c)
{
    store *s;
    ms_err err = {0};
    assert_int_equal(store_open(db, &s, &err), 0);
    size_t n = 0;
    int rc = store_get_center(s, c, DIM, &n, &err);
    store_close(s);
    assert_true(rc == 0 || rc == MS_ENOTFOUND);
    return rc == 0 ? n : 0;
}

static char *file_digest(const char *path)
{
    size_t len = 0;
    void *b = mt_read_file(path, &len);
    if (!b)
        return NULL;
    char *hex = malloc(65);
    assert_non_null(hex);
    ms_sha256_hex(b, len, hex);
    free(b);
    return hex;
}

/* ---- tests ---- */

/* Below ENGINE_CENTER_MIN vectors: no center; at it, after
 * engine_update_center, the ranking is the brute-force centred one, an
 * identical image scores 1, the index file is reused on reopen,
 * engine_check passes and catches an index that disagrees with the centred
 * store. */
static void t_center_lifecycle(void **state)
{
    (void)state;
    char *db = new_db();
    engine_open_report rep;
    engine *e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    int64_t real[N_REAL];
    uint8_t *bytes[N_REAL];
    size_t lens[N_REAL];
    ingest_real(e, N_REAL - 1, real, bytes, lens);
    int changed = -1;
    ms_err err = {0};
    assert_int_equal(engine_update_center(e, 0, &changed, &err), 0);
    assert_int_equal(changed, 0);
    engine_close(e);

    add_synthetic(db, ENGINE_CENTER_MIN - N_REAL, 1); /* one short of the minimum */
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    engine_stats st;
    stats(e, &st);
    assert_int_equal(st.images, ENGINE_CENTER_MIN - 1);
    assert_int_equal(st.center_from, 0);
    assert_string_equal(st.center_tag, "none");
    assert_int_equal(engine_update_center(e, 0, &changed, &err), 0);
    assert_int_equal(changed, 0);
    float c[DIM];
    assert_int_equal(engine_get_center(e, c, NULL), MS_ENOTFOUND);
    raw_set r;
    raw_load(db, &r);
    engine_result *res;
    int n;
    search_bytes(e, bytes[0], lens[0], 10, &res, &n);
    assert_brute_ranking(&r, NULL, real[0], res, n, 10); /* plain cosine */
    assert_int_equal(res[0].id, real[0]);
    engine_results_free(res, n);
    raw_free(&r);

    /* The last vector needed: due now, and computed by engine_update_center. */
    ingest_real(e, 1, &real[N_REAL - 1], &bytes[N_REAL - 1], &lens[N_REAL - 1]);
    stats(e, &st);
    assert_int_equal(st.center_from, 0);
    assert_int_equal(engine_update_center(e, 0, &changed, &err), 0);
    assert_int_equal(changed, 1);
    stats(e, &st);
    assert_int_equal(st.center_from, ENGINE_CENTER_MIN);
    assert_int_equal(strlen(st.center_tag), 16);
    size_t from = 0;
    assert_int_equal(engine_get_center(e, c, &from), 0);
    assert_int_equal(from, ENGINE_CENTER_MIN);
    float kept[DIM];
    assert_int_equal(stored_center(db, kept), ENGINE_CENTER_MIN);
    assert_memory_equal(kept, c, sizeof c);

    raw_load(db, &r);
    assert_int_equal(r.n, ENGINE_CENTER_MIN);
    double mean[DIM];
    raw_mean(&r, mean);
    for (int i = 0; i < DIM; i++)
        assert_true(fabs(mean[i] - c[i]) < 1e-6);
    for (int i = 0; i < N_REAL; i++) {
        search_bytes(e, bytes[i], lens[i], 10, &res, &n);
        assert_int_equal(res[0].id, real[i]);
        if (fabs(res[0].score - 1.0) > 1e-6)
            fail_msg("identical image %d scores %.8f", i, (double)res[0].score);
        assert_brute_ranking(&r, mean, real[i], res, n, 10);
        engine_results_free(res, n);
    }
    /* A synthetic one by id, and by its raw stored vector: the same. */
    int64_t sid = r.ids[N_REAL]; /* real ones are the first N_REAL - 1 and the last */
    engine_query q = {.by_id = sid, .k = 12};
    assert_int_equal(engine_search(e, &q, &res, &n, NULL, &err), 0);
    assert_brute_ranking(&r, mean, sid, res, n, 12);
    assert_int_equal(res[0].id, sid);
    float raw[DIM];
    for (int i = 0; i < DIM; i++)
        raw[i] = (float)r.v[N_REAL * DIM + i];
    engine_result *res2;
    int n2;
    engine_query qv = {.k = 12};
    assert_int_equal(engine_search_vector(e, raw, &qv, &res2, &n2, &err), 0);
    assert_int_equal(n2, n);
    for (int j = 0; j < n; j++) {
        assert_int_equal(res2[j].id, res[j].id);
        assert_true(fabs(res2[j].score - res[j].score) < 1e-6);
    }
    engine_results_free(res, n);
    engine_results_free(res2, n2);
    /* Scores are cosines in centred space: far lower than raw ones (the
     * synthetic raw vectors have cosines near 0.9 with each other). */
    q = (engine_query){.by_id = sid, .k = ENGINE_CENTER_MIN, .exclude_self = 1};
    assert_int_equal(engine_search(e, &q, &res, &n, NULL, &err), 0);
    assert_true(res[n - 1].score < 0.0f);
    engine_results_free(res, n);
    assert_int_equal(engine_check(e, &err), 0);
    engine_close(e);

    /* Reopen: the center comes from the store, the index from its file. */
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_int_equal(rep.index_loaded, 1);
    assert_string_equal(rep.center_note, "");
    float again[DIM];
    assert_int_equal(engine_get_center(e, again, NULL), 0);
    assert_memory_equal(again, c, sizeof c);
    search_bytes(e, bytes[2], lens[2], 10, &res, &n);
    assert_brute_ranking(&r, mean, real[2], res, n, 10);
    assert_true(fabs(res[0].score - 1.0) <= 1e-6);
    engine_results_free(res, n);
    assert_int_equal(engine_check(e, &err), 0);
    /* Not due (fewer than twice the vectors it came from): nothing changes
     * unless forced. */
    assert_int_equal(engine_update_center(e, 0, &changed, &err), 0);
    assert_int_equal(changed, 0);
    /* An index holding a raw vector (as if built without the center) is
     * caught by engine_check. */
    for (int i = 0; i < DIM; i++)
        raw[i] = (float)r.v[7 * DIM + i];
    assert_int_equal(index_add(engine_index(e), &r.ids[7], raw, 1, &err), 0);
    assert_int_equal(engine_check(e, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "different vector"));
    /* Forced: recomputed (the same mean), the index rebuilt and sound. */
    assert_int_equal(engine_update_center(e, 1, &changed, &err), 0);
    assert_int_equal(changed, 1);
    assert_int_equal(engine_check(e, &err), 0);
    engine_close(e);
    raw_free(&r);
    for (int i = 0; i < N_REAL; i++)
        free(bytes[i]);
    free(db);
}

/* The collection's stored center is the mean, in double, of its `from`
 * stored vectors, and a search by the id at position `at` ranks as brute
 * force does around that mean; the index agrees with the store. */
static void assert_center_is_mean(engine *e, const char *db, size_t from, size_t at)
{
    float c[DIM];
    assert_int_equal(stored_center(db, c), from);
    raw_set r;
    raw_load(db, &r);
    assert_int_equal(r.n, from);
    double mean[DIM];
    raw_mean(&r, mean);
    for (int i = 0; i < DIM; i++)
        assert_true(fabs(mean[i] - c[i]) < 1e-6);
    engine_result *res;
    int n;
    ms_err err = {0};
    engine_query q = {.by_id = r.ids[at], .k = 10};
    assert_int_equal(engine_search(e, &q, &res, &n, NULL, &err), 0);
    assert_brute_ranking(&r, mean, r.ids[at], res, n, 10);
    engine_results_free(res, n);
    assert_int_equal(engine_check(e, &err), 0);
    raw_free(&r);
}

/* A new collection db of n synthetic vectors (seed), opened with the model:
 * the open computes its center from all n. */
static engine *open_centred_synthetic(const char *db, int n, uint64_t seed, engine_open_report *rep)
{
    engine *e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, rep); /* registers the model */
    engine_close(e);
    add_synthetic(db, n, seed);
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, rep); /* open computes it */
    char want[64];
    snprintf(want, sizeof want, "computed from %d vectors", n);
    if (!strstr(rep->center_note, want))
        fail_msg("center note: %s", rep->center_note);
    return e;
}

/* Growth: at twice the count the center came from, opening recomputes it
 * and the index file built with the old one is reported and rebuilt; an
 * open without a model never writes a center. */
static void t_center_growth(void **state)
{
    (void)state;
    char *db = new_db();
    engine_open_report rep;
    engine *e = open_centred_synthetic(db, 300, 2, &rep);
    engine_stats st;
    stats(e, &st);
    assert_int_equal(st.center_from, 300);
    char tag300[20];
    snprintf(tag300, sizeof tag300, "%s", st.center_tag);
    engine_close(e);

    add_synthetic(db, 299, 3); /* 599 < 600: not due */
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    stats(e, &st);
    assert_int_equal(st.center_from, 300);
    assert_int_equal(rep.index_loaded, 0); /* stale by generation, same center */
    assert_null(strstr(rep.index_note, "center"));
    engine_close(e);
    /* Rebuilt and saved at close: now it loads. */
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_int_equal(rep.index_loaded, 1);
    engine_close(e);

    add_synthetic(db, 1, 4); /* 600 = 2 x 300 */
    e = open_engine(db, NULL, ENGINE_CENTER_AUTO, 1, 0, &rep); /* no model: reads only */
    stats(e, &st);
    assert_int_equal(st.center_from, 300);
    int changed = 0;
    ms_err err = {0};
    assert_int_equal(engine_update_center(e, 0, &changed, &err), MS_EINVAL);
    engine_close(e);
    float c[DIM];
    assert_int_equal(stored_center(db, c), 300);

    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_non_null(strstr(rep.center_note, "recomputed from 600 vectors (was from 300)"));
    assert_int_equal(rep.index_loaded, 0);
    if (!strstr(rep.index_note, "another center"))
        fail_msg("index note: %s", rep.index_note);
    stats(e, &st);
    assert_int_equal(st.center_from, 600);
    assert_string_not_equal(st.center_tag, tag300);
    assert_center_is_mean(e, db, 600, 450);
    engine_close(e);
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_int_equal(rep.index_loaded, 1);
    engine_close(e);
    free(db);
}

/* Shrinking: once deletes leave half the vectors the center came from or
 * fewer, the next open with a model recomputes it from what is left; under
 * ENGINE_CENTER_MIN it is removed and the ranking is plain cosine. */
static void t_center_shrink(void **state)
{
    (void)state;
    char *db = new_db();
    engine_open_report rep;
    engine *e = open_centred_synthetic(db, 200, 5, &rep);
    engine_close(e);
    raw_set r;
    raw_load(db, &r);
    ms_err err = {0};
    /* 101 left: more than half, not due. */
    e = open_engine(db, NULL, ENGINE_CENTER_AUTO, 1, 0, &rep);
    for (size_t i = 0; i < 99; i++)
        assert_int_equal(engine_delete(e, r.ids[i], &err), 0);
    engine_close(e);
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_string_equal(rep.center_note, "");
    engine_stats st;
    stats(e, &st);
    assert_int_equal(st.center_from, 200);
    /* 100 left: half, due. */
    assert_int_equal(engine_delete(e, r.ids[99], &err), 0);
    engine_close(e);
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_non_null(strstr(rep.center_note, "recomputed from 100 vectors (was from 200)"));
    stats(e, &st);
    assert_int_equal(st.center_from, 100);
    assert_center_is_mean(e, db, 100, 10);
    /* Under the minimum: the center goes, the ranking is plain cosine. */
    for (size_t i = 100; i < 200 - (ENGINE_CENTER_MIN - 1); i++)
        assert_int_equal(engine_delete(e, r.ids[i], &err), 0);
    engine_close(e);
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_non_null(strstr(rep.center_note, "center removed"));
    stats(e, &st);
    assert_int_equal(st.center_from, 0);
    float c[DIM];
    assert_int_equal(stored_center(db, c), 0);
    raw_set few;
    raw_load(db, &few);
    assert_int_equal(few.n, ENGINE_CENTER_MIN - 1);
    engine_result *res;
    int n;
    engine_query q = {.by_id = few.ids[3], .k = 10};
    assert_int_equal(engine_search(e, &q, &res, &n, NULL, &err), 0);
    assert_brute_ranking(&few, NULL, few.ids[3], res, n, 10);
    engine_results_free(res, n);
    assert_int_equal(engine_check(e, &err), 0);
    engine_close(e);
    raw_free(&r);
    raw_free(&few);
    free(db);
}

/* ENGINE_CENTER_OFF ranks by raw cosine and leaves the collection alone:
 * no center computed or changed, the index file untouched. */
static void t_center_off(void **state)
{
    (void)state;
    char *db = new_db();
    engine_open_report rep;
    engine *e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    engine_close(e);
    add_synthetic(db, 270, 5);
    e = open_engine(db, G.model, ENGINE_CENTER_OFF, 0, 0, &rep);
    assert_non_null(strstr(rep.index_note, "in memory"));
    engine_stats st;
    stats(e, &st);
    assert_int_equal(st.center_off, 1);
    assert_int_equal(st.center_from, 0);
    int changed = 1;
    ms_err err = {0};
    assert_int_equal(engine_update_center(e, 1, &changed, &err), 0);
    assert_int_equal(changed, 0);
    raw_set r;
    raw_load(db, &r);
    engine_result *res;
    int n;
    engine_query q = {.by_id = r.ids[33], .k = 10};
    assert_int_equal(engine_search(e, &q, &res, &n, NULL, &err), 0);
    assert_brute_ranking(&r, NULL, r.ids[33], res, n, 10);
    engine_results_free(res, n);
    assert_int_equal(engine_check(e, &err), 0);
    engine_close(e);
    float c[DIM];
    assert_int_equal(stored_center(db, c), 0); /* OFF computed nothing */
    char idx[1100];
    snprintf(idx, sizeof idx, "%s.index", db);
    assert_false(mt_exists(idx));

    /* Centred by a normal open; then OFF again: the file stays as it was. */
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    engine_close(e);
    assert_int_equal(stored_center(db, c), 270);
    char *before = file_digest(idx);
    assert_non_null(before);
    e = open_engine(db, G.model, ENGINE_CENTER_OFF, 0, 0, &rep);
    q = (engine_query){.by_id = r.ids[34], .k = 10};
    assert_int_equal(engine_search(e, &q, &res, &n, NULL, &err), 0);
    assert_brute_ranking(&r, NULL, r.ids[34], res, n, 10);
    engine_results_free(res, n);
    assert_int_equal(engine_flush(e, &err), 0);
    engine_close(e);
    char *after = file_digest(idx);
    assert_string_equal(before, after);
    float c2[DIM];
    assert_int_equal(stored_center(db, c2), 270);
    assert_memory_equal(c, c2, sizeof c);
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_int_equal(rep.index_loaded, 1);
    engine_close(e);
    free(before);
    free(after);
    raw_free(&r);
    free(db);
}

/* A re-embed clears the center (its vectors are replaced) and
 * engine_update_center computes it again from the new ones; the damaged
 * center of a hand-edited file is not trusted. */
static void t_center_reembed(void **state)
{
    (void)state;
    char *db = new_db();
    engine_open_report rep;
    engine *e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    engine_close(e);
    add_synthetic(db, 260, 6);
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    engine_close(e);
    float before[DIM];
    assert_int_equal(stored_center(db, before), 260);

    e = open_engine(db, G.model_ft, ENGINE_CENTER_AUTO, 0, 1, &rep); /* another model */
    engine_stats st;
    stats(e, &st);
    assert_int_equal(st.center_from, 0); /* the old model's center is not used */
    ms_err err = {0};
    if (engine_reembed(e, NULL, NULL, &err) != 0)
        fail_msg("engine_reembed: %s", err.msg);
    float c[DIM];
    assert_int_equal(stored_center(db, c), 0); /* cleared with the model change */
    int changed = 0;
    assert_int_equal(engine_update_center(e, 0, &changed, &err), 0);
    assert_int_equal(changed, 1);
    assert_int_equal(stored_center(db, c), 260);
    raw_set r;
    raw_load(db, &r);
    double mean[DIM];
    raw_mean(&r, mean);
    double moved = 0;
    for (int i = 0; i < DIM; i++) {
        assert_true(fabs(mean[i] - c[i]) < 1e-6);
        moved += fabs((double)c[i] - before[i]);
    }
    assert_true(moved > 1e-3); /* a center of the new vectors, not the old one */
    engine_result *res;
    int n;
    engine_query q = {.by_id = r.ids[9], .k = 10};
    assert_int_equal(engine_search(e, &q, &res, &n, NULL, &err), 0);
    assert_brute_ranking(&r, mean, r.ids[9], res, n, 10);
    engine_results_free(res, n);
    assert_int_equal(engine_check(e, &err), 0);
    engine_close(e);

    /* The same model re-embedded: cleared, and recomputed after. */
    e = open_engine(db, G.model_ft, ENGINE_CENTER_AUTO, 0, 1, &rep);
    stats(e, &st);
    assert_int_equal(st.center_from, 260);
    assert_int_equal(engine_reembed(e, NULL, NULL, &err), 0);
    assert_int_equal(stored_center(db, c), 0);
    assert_int_equal(engine_update_center(e, 0, &changed, &err), 0);
    assert_int_equal(changed, 1);
    assert_int_equal(stored_center(db, c), 260);
    assert_int_equal(engine_check(e, &err), 0);
    engine_close(e);

    /* A center of the wrong size in the file: reported, and replaced by an
     * open with a model (an open without one ignores it). */
    sqlite3 *raw_db;
    assert_int_equal(sqlite3_open(db, &raw_db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(raw_db, "UPDATE collection SET center = x'00112233'", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(raw_db);
    e = open_engine(db, NULL, ENGINE_CENTER_AUTO, 1, 0, &rep);
    assert_non_null(strstr(rep.center_note, "ignored"));
    stats(e, &st);
    assert_int_equal(st.center_from, 0);
    engine_close(e);
    e = open_engine(db, G.model_ft, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_non_null(strstr(rep.center_note, "unusable"));
    assert_non_null(strstr(rep.center_note, "computed from 260 vectors"));
    assert_int_equal(engine_check(e, &err), 0);
    engine_close(e);
    assert_int_equal(stored_center(db, c), 260);
    raw_free(&r);
    free(db);
}

static int stored_policy_off(const char *db)
{
    store *s;
    ms_err err = {0};
    assert_int_equal(store_open(db, &s, &err), 0);
    int off = -1;
    if (store_get_center_policy(s, &off, &err) != 0)
        fail_msg("store_get_center_policy: %s", err.msg);
    store_close(s);
    return off;
}

/* Ranks by id against the brute-force ranking (centred around c, or plain
 * cosine when c is NULL). */
static void assert_ranks_by_id(engine *e, const raw_set *r, const double *c, size_t at)
{
    engine_result *res;
    int n;
    ms_err err = {0};
    engine_query q = {.by_id = r->ids[at], .k = 10};
    if (engine_search(e, &q, &res, &n, NULL, &err) != 0)
        fail_msg("engine_search: %s", err.msg);
    assert_brute_ranking(r, c, r->ids[at], res, n, 10);
    engine_results_free(res, n);
}

/* The stored policy: off keeps a large collection uncentred (plain cosine)
 * with its index file persisted and reused; the ON override ranks it
 * centred and writes nothing; off -> auto computes the center and rebuilds
 * (also from an open without a model), auto -> off rebuilds without it. */
static void t_center_policy(void **state)
{
    (void)state;
    char *db = new_db();
    char idx[1100];
    snprintf(idx, sizeof idx, "%s.index", db);
    engine_open_report rep;
    ms_err err = {0};
    engine *e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_int_equal(stored_policy_off(db), 0); /* the default */
    assert_int_equal(engine_set_center_policy(e, 2, &err), MS_EINVAL);
    assert_int_equal(engine_set_center_policy(e, 1, &err), 0);
    engine_close(e);
    assert_int_equal(stored_policy_off(db), 1);
    add_synthetic(db, 300, 9);
    raw_set r;
    raw_load(db, &r);
    double mean[DIM];
    raw_mean(&r, mean);

    /* Off with 300 vectors: no center, plain cosine, the file persisted. */
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    engine_stats st;
    stats(e, &st);
    assert_int_equal(st.center_policy_off, 1);
    assert_int_equal(st.center_off, 1);
    assert_int_equal(st.center_from, 0);
    int changed = 1;
    assert_int_equal(engine_update_center(e, 0, &changed, &err), 0);
    assert_int_equal(changed, 0);
    assert_ranks_by_id(e, &r, NULL, 7);
    assert_int_equal(engine_check(e, &err), 0);
    engine_close(e);
    float c[DIM];
    assert_int_equal(stored_center(db, c), 0);
    assert_true(mt_exists(idx));
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_int_equal(rep.index_loaded, 1);
    assert_ranks_by_id(e, &r, NULL, 8);
    engine_close(e);

    /* The ON override: centred ranking, nothing written. */
    char *before = file_digest(idx);
    assert_non_null(before);
    e = open_engine(db, G.model, ENGINE_CENTER_ON, 0, 0, &rep);
    assert_non_null(strstr(rep.index_note, "in memory"));
    stats(e, &st);
    assert_int_equal(st.center_policy_off, 1);
    assert_int_equal(st.center_off, 0);
    assert_int_equal(st.center_from, 300);
    assert_ranks_by_id(e, &r, mean, 9);
    assert_int_equal(engine_update_center(e, 1, &changed, &err), 0); /* in memory too */
    assert_int_equal(engine_check(e, &err), 0);
    assert_int_equal(engine_flush(e, &err), 0);
    engine_close(e);
    char *after = file_digest(idx);
    assert_string_equal(before, after);
    free(after);
    assert_int_equal(stored_center(db, c), 0);
    assert_int_equal(stored_policy_off(db), 1);
    /* ON without a model computes in memory as well. */
    e = open_engine(db, NULL, ENGINE_CENTER_ON, 1, 0, &rep);
    stats(e, &st);
    assert_int_equal(st.center_from, 300);
    engine_close(e);
    assert_int_equal(stored_center(db, c), 0);

    /* off -> auto: computed, stored, the index rebuilt with it and saved. */
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_int_equal(rep.index_loaded, 1);
    assert_int_equal(engine_set_center_policy(e, 0, &err), 0);
    stats(e, &st);
    assert_int_equal(st.center_policy_off, 0);
    assert_int_equal(st.center_from, 300);
    assert_ranks_by_id(e, &r, mean, 10);
    assert_int_equal(engine_check(e, &err), 0);
    engine_close(e);
    assert_int_equal(stored_center(db, c), 300);
    for (int i = 0; i < DIM; i++)
        assert_true(fabs(mean[i] - c[i]) < 1e-6);
    after = file_digest(idx);
    assert_string_not_equal(before, after);
    free(after);
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_int_equal(rep.index_loaded, 1);
    assert_ranks_by_id(e, &r, mean, 11);

    /* auto -> off: cleared, rebuilt without, saved with "center=off". */
    assert_int_equal(engine_set_center_policy(e, 1, &err), 0);
    stats(e, &st);
    assert_int_equal(st.center_from, 0);
    assert_int_equal(st.center_off, 1);
    assert_ranks_by_id(e, &r, NULL, 12);
    assert_int_equal(engine_check(e, &err), 0);
    engine_close(e);
    assert_int_equal(stored_center(db, c), 0);
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_int_equal(rep.index_loaded, 1);
    assert_ranks_by_id(e, &r, NULL, 13);
    engine_close(e);

    /* Without a model (`medsearch center auto`): the stored vectors suffice. */
    e = open_engine(db, NULL, ENGINE_CENTER_AUTO, 1, 0, &rep);
    assert_int_equal(rep.index_loaded, 1);
    assert_int_equal(engine_set_center_policy(e, 0, &err), 0);
    stats(e, &st);
    assert_int_equal(st.center_from, 300);
    engine_close(e);
    assert_int_equal(stored_center(db, c), 300);
    e = open_engine(db, G.model, ENGINE_CENTER_AUTO, 0, 0, &rep);
    assert_int_equal(rep.index_loaded, 1);
    assert_ranks_by_id(e, &r, mean, 14);
    engine_close(e);

    /* A hand-edited policy: the open fails, saying how to repair it. */
    sqlite3 *raw;
    assert_int_equal(sqlite3_open(db, &raw), SQLITE_OK);
    assert_int_equal(sqlite3_exec(raw, "PRAGMA ignore_check_constraints = ON;"
                                       "UPDATE collection SET center_policy = 'sideways'", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(raw);
    engine_options o;
    engine_options_init(&o);
    o.db = db;
    o.model_path = G.model;
    e = NULL;
    assert_int_equal(engine_open(&o, &e, &rep, &err), MS_EFORMAT);
    assert_null(e);
    assert_non_null(strstr(err.msg, "sideways"));
    assert_non_null(strstr(err.msg, "medsearch center"));
    free(before);
    raw_free(&r);
    free(db);
}

int main(void)
{
    const char *shared = getenv("MEDSEARCH_SHARED");
    if (!shared || !*shared) {
        printf("skip: MEDSEARCH_SHARED is not set (tests/run.sh sets it to ../shared)\n");
        return SKIP_EXIT;
    }
    snprintf(G.model, sizeof G.model, "%s/models/mobilenet_v2_1.0_224_imagenet.onnx", shared);
    snprintf(G.model_ft, sizeof G.model_ft, "%s/models/mobilenet_v2_cxr_finetuned.onnx", shared);
    if (!mt_exists(G.model) || !mt_exists(G.model_ft) || load_files(shared) != 0) {
        printf("skip: the MobileNetV2 models or %d Kermany images not found under %s\n", N_FILES, shared);
        return SKIP_EXIT;
    }
    snprintf(G.tmp, sizeof G.tmp, "%s/medsearch-center-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(G.tmp)) {
        perror("mkdtemp");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_center_lifecycle),
        cmocka_unit_test(t_center_growth),
        cmocka_unit_test(t_center_shrink),
        cmocka_unit_test(t_center_off),
        cmocka_unit_test(t_center_reembed),
        cmocka_unit_test(t_center_policy),
    };
    int rc = cmocka_run_group_tests_name("engine centering (SQLite)", tests, NULL, NULL);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", G.tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", G.tmp);
    for (int i = 0; i < G.n_files; i++)
        free(G.files[i]);
    return rc;
}
