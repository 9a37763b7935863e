/*
 * test_engine_suite.h - the engine's tests, shared by test_engine.c (SQLite)
 * and test_engine_pg.c (a real PostgreSQL server). The including file
 * defines suite_new_db(), which returns a fresh, empty collection URI for
 * each test, and then calls run_engine_suite().
 *
 * They use the real ImageNet MobileNetV2 and real X-rays from
 * $MEDSEARCH_SHARED; without them the program skips (exit 77).
 */
#ifndef TEST_ENGINE_SUITE_H
#define TEST_ENGINE_SUITE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vips/vips.h>

#include "cli/labels.h"
#include "engine.h"
#include "engine/internal.h"
#include "model_test_util.h"

/* Provided by the including file: a fresh empty collection (malloc'd). */
static char *suite_new_db(void);

#define N_IMAGES 24

typedef struct sample {
    char path[1024];
    uint8_t *bytes;
    size_t len;
    store_meta meta;  /* shallow copy of the labels row */
} sample;

static struct {
    char model[1024], model_ft[1024];
    labels *lab;
    sample s[N_IMAGES];
    char tmp[256];
} G;

/* Loads N_IMAGES Kermany images, both labels, several images per patient
 * where the set has them. Returns 0, or 77 with a message when absent. */
static int suite_load_data(void)
{
    const char *shared = getenv("MEDSEARCH_SHARED");
    if (!shared) {
        printf("skip: MEDSEARCH_SHARED is not set (tests/run.sh sets it to ../shared)\n");
        return 77;
    }
    snprintf(G.model, sizeof G.model, "%s/models/mobilenet_v2_1.0_224_imagenet.onnx", shared);
    snprintf(G.model_ft, sizeof G.model_ft, "%s/models/mobilenet_v2_cxr_finetuned.onnx", shared);
    char csv[1024];
    snprintf(csv, sizeof csv, "%s/data/kermany_pneumonia_224/labels.csv", shared);
    if (access(G.model, R_OK) || access(G.model_ft, R_OK) || access(csv, R_OK)) {
        printf("skip: %s (the models and kermany_pneumonia_224) not found\n", shared);
        return 77;
    }
    ms_err err = {0};
    if (labels_load(csv, &G.lab, &err) != 0) {
        printf("cannot read %s: %s\n", csv, err.msg);
        return 1;
    }
    /* Files named in labels.csv: take every 150th row (both classes). */
    FILE *f = fopen(csv, "r");
    char line[512];
    int row = 0, n = 0;
    while (f && fgets(line, sizeof line, f) && n < N_IMAGES) {
        if (row++ == 0 || (row % 150) != 2)
            continue;
        char *comma = strchr(line, ',');
        if (!comma)
            continue;
        *comma = '\0';
        sample *s = &G.s[n];
        if (snprintf(s->path, sizeof s->path, "%.400s/data/kermany_pneumonia_224/%.500s", shared, line) < 0)
            continue;
        const store_meta *m = labels_find(G.lab, s->path);
        if (!m || !(s->bytes = mt_read_file(s->path, &s->len)))
            continue;
        s->meta = *m;
        s->meta.original_name = strrchr(s->path, '/') + 1;
        n++;
    }
    if (f)
        fclose(f);
    if (n < N_IMAGES) {
        printf("only %d usable images in %s\n", n, csv);
        return 1;
    }
    return 0;
}

static void suite_free_data(void)
{
    for (int i = 0; i < N_IMAGES; i++)
        free(G.s[i].bytes);
    labels_free(G.lab);
}

static int has_label(const store_meta *m, const char *l)
{
    for (int i = 0; i < m->n_labels; i++)
        if (!strcmp(m->labels[i], l))
            return 1;
    return 0;
}

typedef struct fixture {
    char *db;
    engine *e;
    int64_t ids[N_IMAGES];
} fixture;

static engine *open_engine(const char *db, const char *model_path, int reembed, engine_open_report *rep)
{
    engine_options o;
    engine_options_init(&o);
    o.db = db;
    o.model_path = model_path;
    o.max_batch = 4; /* several batches even for a few images */
    o.reembed = reembed;
    engine *e = NULL;
    ms_err err = {0};
    int rc = engine_open(&o, &e, rep, &err);
    if (rc)
        print_message("engine_open(%s): %s\n", db, err.msg);
    assert_int_equal(rc, 0);
    return e;
}

static void ingest_all(fixture *fx)
{
    engine_item items[N_IMAGES];
    engine_item_result res[N_IMAGES];
    for (int i = 0; i < N_IMAGES; i++)
        items[i] = (engine_item){G.s[i].bytes, G.s[i].len, &G.s[i].meta, 0};
    ms_err err = {0};
    assert_int_equal(engine_ingest_batch(fx->e, items, N_IMAGES, res, &err), 0);
    for (int i = 0; i < N_IMAGES; i++) {
        if (res[i].err.code)
            print_message("item %d: %s\n", i, res[i].err.msg);
        assert_int_equal(res[i].err.code, 0);
        assert_true(res[i].id > 0);
        assert_int_equal(res[i].was_new, 1);
        fx->ids[i] = res[i].id;
    }
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    fx->db = suite_new_db();
    if (!fx->db)
        return -1;
    fx->e = open_engine(fx->db, G.model, 0, NULL);
    ingest_all(fx);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    engine_close(fx->e);
    free(fx->db);
    free(fx);
    return 0;
}

static int search_bytes(engine *e, const sample *s, int k, const store_filter *f, engine_result **res)
{
    engine_query q = {.bytes = s->bytes, .len = s->len, .k = k, .filter = f};
    int n = 0;
    ms_err err = {0};
    int rc = engine_search(e, &q, res, &n, NULL, &err);
    if (rc)
        print_message("search: %s\n", err.msg);
    assert_int_equal(rc, 0);
    return n;
}

/* ---- tests ---- */

static void test_search_finds_itself(void **state)
{
    fixture *fx = *state;
    for (int i = 0; i < N_IMAGES; i += 5) {
        engine_result *res;
        int n = search_bytes(fx->e, &G.s[i], 5, NULL, &res);
        assert_int_equal(n, 5);
        assert_int_equal(res[0].id, fx->ids[i]);
        assert_true(res[0].score >= 0.9999f && res[0].score <= 1.0001f);
        for (int j = 1; j < n; j++)
            assert_true(res[j].score <= res[j - 1].score);
        /* its metadata came back with it */
        assert_string_equal(res[0].meta.patient_id, G.s[i].meta.patient_id);
        assert_string_equal(res[0].meta.original_name, G.s[i].meta.original_name);
        assert_int_equal(res[0].meta.n_labels, G.s[i].meta.n_labels);
        for (int l = 0; l < G.s[i].meta.n_labels; l++)
            assert_true(has_label(&res[0].meta, G.s[i].meta.labels[l]));
        engine_results_free(res, n);
    }
}

static void test_filter_and_grouping(void **state)
{
    fixture *fx = *state;
    int pneumonia = 0;
    for (int i = 0; i < N_IMAGES; i++)
        pneumonia += has_label(&G.s[i].meta, "PNEUMONIA");
    assert_true(pneumonia > 0 && pneumonia < N_IMAGES);
    store_filter f;
    ms_err err = {0};
    assert_int_equal(store_filter_parse("labels:PNEUMONIA", &f, &err), 0);
    engine_result *res;
    int n = search_bytes(fx->e, &G.s[0], N_IMAGES, &f, &res);
    assert_int_equal(n, pneumonia);
    for (int j = 0; j < n; j++)
        assert_true(has_label(&res[j].meta, "PNEUMONIA"));
    engine_results_free(res, n);
    store_filter_free(&f);

    /* one per patient: no patient twice, and as many as there are patients */
    int patients = 0;
    for (int i = 0; i < N_IMAGES; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++)
            seen = !strcmp(G.s[i].meta.patient_id, G.s[j].meta.patient_id);
        patients += !seen;
    }
    engine_query q = {.bytes = G.s[3].bytes, .len = G.s[3].len, .k = N_IMAGES, .one_per_patient = 1};
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), 0);
    assert_int_equal(n, patients);
    for (int a = 0; a < n; a++)
        for (int b = a + 1; b < n; b++)
            assert_string_not_equal(res[a].meta.patient_id, res[b].meta.patient_id);
    engine_results_free(res, n);

    /* excluding a patient */
    store_filter_init(&f);
    f.exclude_patient = strdup(G.s[3].meta.patient_id);
    n = search_bytes(fx->e, &G.s[3], 5, &f, &res);
    for (int j = 0; j < n; j++)
        assert_string_not_equal(res[j].meta.patient_id, G.s[3].meta.patient_id);
    engine_results_free(res, n);
    store_filter_free(&f);
}

static void test_by_id_and_qe(void **state)
{
    fixture *fx = *state;
    engine_query q = {.by_id = fx->ids[7], .k = 3, .exclude_self = 1};
    engine_result *res;
    int n;
    ms_err err = {0};
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), 0);
    assert_int_equal(n, 3);
    for (int j = 0; j < n; j++)
        assert_true(res[j].id != fx->ids[7]);
    engine_results_free(res, n);

    /* without exclusion it is its own best match */
    q.exclude_self = 0;
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), 0);
    assert_int_equal(res[0].id, fx->ids[7]);
    engine_results_free(res, n);

    /* A region of the stored image: its bytes embedded again. All of it is
     * the stored vector (to the model's rounding); part of it is the same
     * region of the file, and the region used comes back in pixels. */
    image_region all, part;
    assert_int_equal(image_region_parse("0%,0%,100%,100%", &all, &err), 0);
    assert_int_equal(image_region_parse("10%,0,50%,60%", &part, &err), 0);
    image_rect used = {0};
    engine_query whole = {.by_id = fx->ids[7], .k = 3, .region = &all, .region_used = &used};
    engine_result *rw;
    int nw;
    assert_int_equal(engine_search(fx->e, &whole, &rw, &nw, NULL, &err), 0);
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), 0);
    assert_int_equal(nw, 3);
    for (int j = 0; j < nw; j++) {
        assert_true(rw[j].id == res[j].id);
        assert_true(fabsf(rw[j].score - res[j].score) < 1e-4f);
    }
    image_info shown;
    assert_int_equal(image_probe(G.s[7].bytes, G.s[7].len, NULL, &shown, &err), 0);
    assert_true(used.x == 0 && used.y == 0 && used.width == shown.width && used.height == shown.height);
    engine_results_free(rw, nw);
    engine_results_free(res, n);
    engine_query by_id_part = {.by_id = fx->ids[7], .k = 5, .region = &part, .region_used = &used};
    engine_query file_part = {.bytes = G.s[7].bytes, .len = G.s[7].len, .k = 6, .region = &part};
    assert_int_equal(engine_search(fx->e, &by_id_part, &rw, &nw, NULL, &err), 0);
    assert_int_equal(engine_search(fx->e, &file_part, &res, &n, NULL, &err), 0);
    assert_int_equal(used.x, (int)floor(shown.width * 0.1 + 0.5));
    assert_int_equal(used.width, (int)floor(shown.width * 0.6 + 0.5) - used.x);
    assert_int_equal(used.y, 0);
    assert_int_equal(used.height, (int)floor(shown.height * 0.6 + 0.5));
    for (int j = 0, i = 0; j < nw; j++, i++) {
        if (res[i].id == fx->ids[7])
            i++; /* the file's own image, which by_id leaves out */
        assert_true(rw[j].id == res[i].id && rw[j].score == res[i].score);
    }
    assert_true(rw[0].score < 0.99f); /* a part is not the whole */
    engine_results_free(rw, nw);
    engine_results_free(res, n);
    image_region outside;
    assert_int_equal(image_region_parse("0,0,100000,1", &outside, &err), 0);
    by_id_part.region = &outside;
    assert_int_equal(engine_search(fx->e, &by_id_part, &rw, &nw, NULL, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "does not lie inside"));
    by_id_part = (engine_query){.by_id = 987654321, .k = 1, .region = &part};
    assert_int_equal(engine_search(fx->e, &by_id_part, &rw, &nw, NULL, &err), MS_ENOTFOUND);

    /* QE by hand: the same as searching with the averaged vector */
    float v[2048], w[2048];
    int dim = model_dim(engine_model(fx->e));
    assert_int_equal(engine_embed(fx->e, G.s[7].bytes, G.s[7].len, v, &err), 0);
    engine_query plain = {.k = 2};
    assert_int_equal(engine_search_vector(fx->e, v, &plain, &res, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(res[0].id, fx->ids[7]);
    memcpy(w, v, (size_t)dim * sizeof *w);
    float nb[2048];
    for (int j = 0; j < 2; j++) {
        assert_int_equal(index_get(engine_index(fx->e), res[j].id, nb), 0);
        for (int d = 0; d < dim; d++)
            w[d] += nb[d];
    }
    engine_results_free(res, n);
    model_l2_normalise(w, 1, dim);
    engine_result *r1, *r2;
    int n1, n2;
    engine_query by_hand = {.k = 5};
    engine_query qe = {.k = 5, .qe = 2};
    assert_int_equal(engine_search_vector(fx->e, w, &by_hand, &r1, &n1, &err), 0);
    assert_int_equal(engine_search_vector(fx->e, v, &qe, &r2, &n2, &err), 0);
    assert_int_equal(n1, n2);
    for (int j = 0; j < n1; j++) {
        assert_int_equal(r1[j].id, r2[j].id);
        assert_float_equal(r1[j].score, r2[j].score, 1e-5);
    }
    engine_results_free(r1, n1);
    engine_results_free(r2, n2);
}

/* Searches v with query expansion qe and asserts the same ids and scores
 * as a search with expect_qe. */
static void assert_same_search(engine *e, const float *v, int qe, int expect_qe)
{
    engine_query a = {.k = 8, .qe = qe}, b = {.k = 8, .qe = expect_qe};
    engine_result *ra, *rb;
    int na, nb;
    ms_err err = {0};
    assert_int_equal(engine_search_vector(e, v, &a, &ra, &na, &err), 0);
    assert_int_equal(engine_search_vector(e, v, &b, &rb, &nb, &err), 0);
    assert_int_equal(na, nb);
    for (int j = 0; j < na; j++) {
        assert_int_equal(ra[j].id, rb[j].id);
        assert_true(ra[j].score == rb[j].score);
    }
    engine_results_free(ra, na);
    engine_results_free(rb, nb);
}

/* The collection's query-expansion default: STORE_NEW_COLLECTION_QE for a
 * new collection, changed by engine_set_search_qe (at once) or in the store
 * (read at open), applied to ENGINE_QE_COLLECTION queries only (an explicit
 * 0 still means off), reported by engine_get_stats and engine_resolve_qe. */
static void test_collection_qe(void **state)
{
    fixture *fx = *state;
    float v[2048];
    ms_err err = {0};
    assert_int_equal(engine_embed(fx->e, G.s[3].bytes, G.s[3].len, v, &err), 0);
    engine_stats st;
    engine_get_stats(fx->e, &st);
    assert_int_equal(st.search_qe, STORE_NEW_COLLECTION_QE);
    assert_int_equal(engine_resolve_qe(fx->e, ENGINE_QE_COLLECTION), STORE_NEW_COLLECTION_QE);
    assert_same_search(fx->e, v, ENGINE_QE_COLLECTION, STORE_NEW_COLLECTION_QE);

    assert_int_equal(engine_set_search_qe(fx->e, 0, &err), 0);
    assert_int_equal(engine_set_search_qe(fx->e, STORE_SEARCH_QE_MAX + 1, &err), MS_EINVAL);
    assert_int_equal(engine_set_search_qe(fx->e, -1, &err), MS_EINVAL);
    engine_get_stats(fx->e, &st);
    assert_int_equal(st.search_qe, 0);
    assert_int_equal(engine_resolve_qe(fx->e, ENGINE_QE_COLLECTION), 0);
    assert_same_search(fx->e, v, ENGINE_QE_COLLECTION, 0);

    /* Expanding must change this query's results, or the checks below could
     * not tell the default from off. */
    engine_query plain = {.k = 8}, expanded = {.k = 8, .qe = 3};
    engine_result *rp, *rx;
    int np, nx;
    assert_int_equal(engine_search_vector(fx->e, v, &plain, &rp, &np, &err), 0);
    assert_int_equal(engine_search_vector(fx->e, v, &expanded, &rx, &nx, &err), 0);
    assert_true(np == nx && rp[0].score != rx[0].score);
    engine_results_free(rp, np);
    engine_results_free(rx, nx);

    engine_close(fx->e);
    store *s;
    assert_int_equal(store_open(fx->db, &s, &err), 0);
    assert_int_equal(store_set_search_qe(s, 3, &err), 0);
    store_close(s);
    fx->e = open_engine(fx->db, G.model, 0, NULL);
    engine_get_stats(fx->e, &st);
    assert_int_equal(st.search_qe, 3);
    assert_int_equal(engine_resolve_qe(fx->e, ENGINE_QE_COLLECTION), 3);
    assert_int_equal(engine_resolve_qe(fx->e, 0), 0);
    assert_int_equal(engine_resolve_qe(fx->e, 5), 5);
    assert_same_search(fx->e, v, ENGINE_QE_COLLECTION, 3);
    engine_query off = {.k = 8, .qe = 0};
    assert_int_equal(engine_search_vector(fx->e, v, &off, &rx, &nx, &err), 0);
    assert_true(rx[0].score > 0.9999f); /* the image itself, unexpanded */
    engine_results_free(rx, nx);
    /* By bytes too (the CLI's and the API's path). */
    engine_query by_bytes = {.bytes = G.s[3].bytes, .len = G.s[3].len, .k = 8, .qe = ENGINE_QE_COLLECTION};
    engine_query by_vec = {.k = 8, .qe = 3};
    int brc = engine_search(fx->e, &by_bytes, &rp, &np, NULL, &err);
    if (brc)
        print_message("search by bytes: %s\n", err.msg);
    assert_int_equal(brc, 0);
    assert_int_equal(engine_search_vector(fx->e, v, &by_vec, &rx, &nx, &err), 0);
    assert_int_equal(np, nx);
    for (int j = 0; j < np; j++)
        assert_int_equal(rp[j].id, rx[j].id);
    engine_results_free(rp, np);
    engine_results_free(rx, nx);
}

static void test_reingest_is_skipped(void **state)
{
    fixture *fx = *state;
    engine_item items[3];
    engine_item_result res[3];
    for (int i = 0; i < 3; i++)
        items[i] = (engine_item){G.s[i].bytes, G.s[i].len, NULL, 0};
    ms_err err = {0};
    assert_int_equal(engine_ingest_batch(fx->e, items, 3, res, &err), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(res[i].err.code, 0);
        assert_int_equal(res[i].id, fx->ids[i]);
        assert_int_equal(res[i].was_new, 0);
    }
    engine_stats st;
    engine_get_stats(fx->e, &st);
    assert_int_equal(st.images, N_IMAGES);
}

/* update_meta: an image stored already takes the metadata given now, in
 * place of what it had, without being decoded or re-embedded; without the
 * flag, or without metadata, it keeps its own. */
static void test_reingest_updates_metadata(void **state)
{
    fixture *fx = *state;
    char *new_labels[] = {"Effusion", "Mass"};
    store_kv kv[] = {{"site", "ward 9"}};
    store_meta m;
    store_meta_init(&m);
    m.original_name = "renamed.jpeg";
    m.patient_id = "P-NEW";
    m.age = 33;
    m.labels = new_labels, m.n_labels = 2;
    m.kv = kv, m.n_kv = 1;
    engine_item items[3] = {{G.s[0].bytes, G.s[0].len, &m, 1},   /* updated */
                            {G.s[1].bytes, G.s[1].len, &m, 0},   /* kept: no flag */
                            {G.s[2].bytes, G.s[2].len, NULL, 1}}; /* kept: nothing to update with */
    engine_item_result res[3];
    ms_err err = {0};
    uint64_t gen0 = 0, gen1 = 0;
    assert_int_equal(store_generation(engine_store(fx->e), &gen0, &err), 0);
    assert_int_equal(engine_ingest_batch(fx->e, items, 3, res, &err), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(res[i].err.code, 0);
        assert_int_equal(res[i].id, fx->ids[i]);
        assert_int_equal(res[i].was_new, 0);
        assert_int_equal(res[i].meta_updated, i == 0);
    }
    assert_int_equal(store_generation(engine_store(fx->e), &gen1, &err), 0);
    assert_true(gen1 == gen0);  /* no vector changed: the index stays current */
    store_meta got;
    assert_int_equal(store_get_meta(engine_store(fx->e), fx->ids[0], &got, &err), 0);
    assert_string_equal(got.patient_id, "P-NEW");
    assert_string_equal(got.original_name, G.s[0].meta.original_name);  /* the first name stays */
    assert_int_equal(got.age, 33);
    assert_int_equal(got.n_labels, 2);
    assert_string_equal(got.labels[1], "Mass");
    assert_int_equal(got.n_kv, 1);
    store_meta_free(&got);
    assert_int_equal(store_get_meta(engine_store(fx->e), fx->ids[1], &got, &err), 0);
    assert_string_equal(got.patient_id, G.s[1].meta.patient_id);
    store_meta_free(&got);
    /* the same again: nothing left to change */
    assert_int_equal(engine_ingest_batch(fx->e, items, 1, res, &err), 0);
    assert_int_equal(res[0].meta_updated, 0);
    /* metadata the store refuses fails that item alone, and changes nothing */
    m.patient_id = "\xff\xfe";
    assert_int_equal(engine_ingest_batch(fx->e, items, 2, res, &err), 0);
    assert_int_equal(res[0].err.code, MS_EINVAL);
    assert_int_equal(res[1].err.code, 0);
    assert_int_equal(store_get_meta(engine_store(fx->e), fx->ids[0], &got, &err), 0);
    assert_string_equal(got.patient_id, "P-NEW");
    store_meta_free(&got);
}

static void test_bad_item_fails_alone(void **state)
{
    fixture *fx = *state;
    /* a truncated JPEG, random bytes, an empty item and a new good image */
    uint8_t junk[300];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 37 + 11);
    const sample *good = &G.s[0];
    uint8_t *other = calloc(1, good->len + 16);
    memcpy(other, good->bytes, good->len); /* bytes after the JPEG's end: new bytes, same picture */
    engine_item items[4] = {
        {good->bytes, good->len / 3, NULL, 0}, {junk, sizeof junk, NULL, 0}, {junk, 0, NULL, 0},
        {other, good->len + 16, NULL, 0}};
    engine_item_result res[4];
    ms_err err = {0};
    assert_int_equal(engine_ingest_batch(fx->e, items, 4, res, &err), 0);
    for (int i = 0; i < 3; i++) {
        assert_true(res[i].err.code != 0);
        assert_true(res[i].err.msg[0] != '\0');
        assert_int_equal(res[i].id, 0);
    }
    assert_int_equal(res[3].err.code, 0);
    assert_int_equal(res[3].was_new, 1);
    engine_stats st;
    engine_get_stats(fx->e, &st);
    assert_int_equal(st.images, N_IMAGES + 1);
    assert_int_equal(engine_check(fx->e, &err), 0);

    /* metadata the store refuses (not UTF-8) fails its image only */
    other[good->len + 1] = 1;
    uint8_t *third = calloc(1, good->len + 16);
    memcpy(third, good->bytes, good->len);
    third[good->len + 2] = 2;
    store_meta bad;
    store_meta_init(&bad);
    bad.patient_id = "\xff\xfe";
    engine_item two[2] = {{other, good->len + 16, &bad, 0}, {third, good->len + 16, NULL, 0}};
    assert_int_equal(engine_ingest_batch(fx->e, two, 2, res, &err), 0);
    assert_int_equal(res[0].err.code, MS_EINVAL);
    assert_int_equal(res[1].err.code, 0);
    assert_int_equal(res[1].was_new, 1);
    engine_get_stats(fx->e, &st);
    assert_int_equal(st.images, N_IMAGES + 2);
    assert_int_equal(engine_check(fx->e, &err), 0);
    free(third);
    free(other);
}

static void test_persist_reload_stale_damaged(void **state)
{
    fixture *fx = *state;
    char *db = strdup(fx->db);
    ms_err err = {0};
    /* As `medsearch ingest` does at the end of a run: the collection is
     * past ENGINE_CENTER_MIN, so the center is due, and an open that found
     * it due would compute it and rebuild the index instead of loading it. */
    assert_int_equal(engine_update_center(fx->e, 0, NULL, &err), 0);
    engine_close(fx->e);
    engine_open_report rep;
    fx->e = open_engine(db, G.model, 0, &rep);
    engine_info in;
    assert_int_equal(engine_describe(fx->e, &in, &err), 0);
    if (!in.index_path[0]) {
        /* PostgreSQL without a cache file: always built from the store */
        assert_int_equal(rep.index_loaded, 0);
        assert_non_null(strstr(rep.index_note, "built from the store"));
        free(db);
        return;
    }
    assert_int_equal(rep.index_loaded, 1);
    char saved[600];
    snprintf(saved, sizeof saved, "%s.old", in.index_path);
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", in.index_path, saved);
    assert_int_equal(system(cmd), 0);

    /* stale: the store moves on, the old file comes back */
    assert_int_equal(engine_delete(fx->e, fx->ids[5], &err), 0);
    engine_close(fx->e);
    assert_int_equal(rename(saved, in.index_path), 0);
    fx->e = open_engine(db, G.model, 0, &rep);
    assert_int_equal(rep.index_loaded, 0);
    assert_non_null(strstr(rep.index_note, "stale"));
    engine_stats st;
    engine_get_stats(fx->e, &st);
    assert_int_equal(st.images, N_IMAGES - 1);
    assert_int_equal(engine_check(fx->e, &err), 0);
    engine_close(fx->e);

    /* the rebuilt index was saved: it loads now */
    fx->e = open_engine(db, G.model, 0, &rep);
    assert_int_equal(rep.index_loaded, 1);
    engine_close(fx->e);

    /* damaged: cut in half */
    struct stat sb;
    assert_int_equal(stat(in.index_path, &sb), 0);
    assert_int_equal(truncate(in.index_path, sb.st_size / 2), 0);
    fx->e = open_engine(db, G.model, 0, &rep);
    assert_int_equal(rep.index_loaded, 0);
    assert_non_null(strstr(rep.index_note, "unusable"));
    engine_result *res;
    int n = search_bytes(fx->e, &G.s[9], 1, NULL, &res);
    assert_int_equal(n, 1);
    assert_int_equal(res[0].id, fx->ids[9]);
    engine_results_free(res, n);
    engine_close(fx->e);

    /* missing */
    assert_int_equal(unlink(in.index_path), 0);
    fx->e = open_engine(db, G.model, 0, &rep);
    assert_int_equal(rep.index_loaded, 0);
    assert_non_null(strstr(rep.index_note, "no index file"));
    free(db);
}

static void test_model_change_and_reembed(void **state)
{
    fixture *fx = *state;
    engine_close(fx->e);
    fx->e = NULL;
    engine_options o;
    engine_options_init(&o);
    o.db = fx->db;
    o.model_path = G.model_ft;
    engine *e = NULL;
    ms_err err = {0};
    assert_int_equal(engine_open(&o, &e, NULL, &err), MS_ECONFLICT);
    assert_null(e);
    assert_non_null(strstr(err.msg, "mobilenet_v2_1.0_224_imagenet.onnx"));
    assert_non_null(strstr(err.msg, "mobilenet_v2_cxr_finetuned.onnx"));
    assert_non_null(strstr(err.msg, "medsearch reembed"));

    fx->e = open_engine(fx->db, G.model_ft, 1, NULL);
    assert_int_equal(engine_reembed(fx->e, NULL, NULL, &err), 0);
    assert_int_equal(engine_check(fx->e, &err), 0);
    engine_result *res;
    int n = search_bytes(fx->e, &G.s[11], 2, NULL, &res);
    assert_int_equal(res[0].id, fx->ids[11]);
    assert_true(res[0].score >= 0.9999f);
    engine_results_free(res, n);
    engine_close(fx->e);

    /* the collection is the new model's now */
    fx->e = open_engine(fx->db, G.model_ft, 0, NULL);
    assert_int_equal(engine_check(fx->e, &err), 0);
    engine_close(fx->e);
    o.model_path = G.model;
    assert_int_equal(engine_open(&o, &e, NULL, &err), MS_ECONFLICT);
    fx->e = open_engine(fx->db, G.model_ft, 0, NULL);
}

/* Opens db with the model at input size `size` (0: the model's own), GeM
 * pooling or not, mean or not, adopting from the collection what the flags
 * adopt/prep say; returns engine_open's code and the identity in force. */
static int open_prep(const char *db, int size, int gem, const char *mean, int adopt_pool, int adopt_prep,
                     engine **e, char *identity, ms_err *err)
{
    engine_options o;
    engine_options_init(&o);
    o.db = db;
    o.model_path = G.model;
    o.model.input_size = size;
    o.model.pool = gem ? MODEL_POOL_GEM : MODEL_POOL_OUTPUT;
    o.model.mean = mean;
    o.pooling_from_collection = adopt_pool;
    o.prep_from_collection = adopt_prep;
    *e = NULL;
    int rc = engine_open(&o, e, NULL, err);
    if (!rc) {
        engine_stats st;
        engine_get_stats(*e, &st);
        snprintf(identity, 256, "%s", st.model_identity);
    }
    return rc;
}

/* A collection made at --input-size 160 records it ("-in160") and is used
 * at 160 by whoever does not ask for a size, pooling flags or not; asking
 * for the model's own size, or for another mean ("-norm..."), is refused
 * with both identities named. */
static void test_collection_keeps_input_size(void **state)
{
    (void)state;
    char *db = suite_new_db();
    assert_non_null(db);
    char id[256];
    engine *e;
    ms_err err = {0};
    assert_int_equal(open_prep(db, 160, 1, NULL, 0, 0, &e, id, &err), 0);
    assert_non_null(strstr(id, ":gem3-in160"));
    engine_item items[4];
    engine_item_result res[4];
    for (int i = 0; i < 4; i++)
        items[i] = (engine_item){G.s[i].bytes, G.s[i].len, &G.s[i].meta, 0};
    assert_int_equal(engine_ingest_batch(e, items, 4, res, &err), 0);
    engine_close(e);

    /* nothing asked: both adopted; a pooling asked: the size still adopted */
    const int gem[] = {0, 1}, adopt_pool[] = {1, 0};
    for (int k = 0; k < 2; k++) {
        char now[256];
        int rc = open_prep(db, 0, gem[k], NULL, adopt_pool[k], 1, &e, now, &err);
        if (rc)
            print_message("open: %s\n", err.msg);
        assert_int_equal(rc, 0);
        assert_string_equal(now, id);
        engine_result *r;
        int n = search_bytes(e, &G.s[2], 1, NULL, &r);
        assert_int_equal(n, 1);
        assert_int_equal(r[0].id, res[2].id);
        assert_true(r[0].score >= 0.9999f);
        engine_results_free(r, n);
        engine_close(e);
    }

    /* a size asked for (the model's own 224), or another mean: refused */
    assert_int_equal(open_prep(db, 224, 0, NULL, 1, 0, &e, id, &err), MS_ECONFLICT);
    assert_null(e);
    assert_non_null(strstr(err.msg, ":gem3-in160, not of "));
    assert_non_null(strstr(err.msg, ":gem3:"));
    assert_int_equal(open_prep(db, 0, 0, "100", 1, 1, &e, id, &err), MS_ECONFLICT);
    assert_non_null(strstr(err.msg, ":gem3-in160-norm"));
    free(db);
}

static void test_check_detects_mismatch(void **state)
{
    fixture *fx = *state;
    ms_err err = {0};
    assert_int_equal(engine_check(fx->e, &err), 0);
    assert_int_equal(index_remove(engine_index(fx->e), fx->ids[2]), 0);
    assert_int_equal(engine_check(fx->e, &err), MS_EFORMAT);
    assert_true(strstr(err.msg, "index") != NULL);
}

static void test_delete(void **state)
{
    fixture *fx = *state;
    ms_err err = {0};
    assert_int_equal(engine_delete(fx->e, fx->ids[4], &err), 0);
    assert_int_equal(engine_delete(fx->e, fx->ids[4], &err), MS_ENOTFOUND);
    engine_result *res;
    int n = search_bytes(fx->e, &G.s[4], N_IMAGES, NULL, &res);
    assert_int_equal(n, N_IMAGES - 1);
    for (int j = 0; j < n; j++)
        assert_true(res[j].id != fx->ids[4]);
    engine_results_free(res, n);
    engine_query q = {.by_id = fx->ids[4], .k = 3};
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), MS_ENOTFOUND);
    assert_int_equal(engine_check(fx->e, &err), 0);
}

static void test_bad_queries(void **state)
{
    fixture *fx = *state;
    engine_result *res;
    int n;
    ms_err err = {0};
    engine_query q = {.bytes = G.s[0].bytes, .len = G.s[0].len, .k = 0};
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), MS_EINVAL);
    q.k = 1001;
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), MS_EINVAL);
    q.k = 5;
    q.qe = -2; /* -1 is ENGINE_QE_COLLECTION */
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), MS_EINVAL);
    q.qe = STORE_SEARCH_QE_MAX + 1;
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), MS_EINVAL);
    q.qe = 0;
    uint8_t junk[64] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    q.bytes = junk;
    q.len = sizeof junk;
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), MS_EFORMAT);
    assert_true(err.msg[0] != '\0');
    q.bytes = NULL;
    q.by_id = 999999;
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), MS_ENOTFOUND);
}

static void test_no_model_open(void **state)
{
    fixture *fx = *state;
    engine_close(fx->e);
    engine_options o;
    engine_options_init(&o);
    o.db = fx->db;
    o.no_model = 1;
    ms_err err = {0};
    assert_int_equal(engine_open(&o, &fx->e, NULL, &err), 0);
    engine_stats st;
    engine_get_stats(fx->e, &st);
    assert_int_equal(st.images, N_IMAGES);
    assert_int_equal(st.dim, 1280);
    assert_int_equal(engine_check(fx->e, &err), 0);
    /* a stored image can be searched with, a file cannot */
    engine_query q = {.by_id = fx->ids[1], .k = 1};
    engine_result *res;
    int n;
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), 0);
    assert_int_equal(res[0].id, fx->ids[1]);
    engine_results_free(res, n);
    q = (engine_query){.bytes = G.s[1].bytes, .len = G.s[1].len, .k = 1};
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), MS_EINVAL);
    /* copies need no model either */
    engine_copy *copies = NULL;
    int n_copies = -1;
    assert_int_equal(engine_find_copies(fx->e, fx->ids[1], 5, 0.99, &copies, &n_copies, &err), 0);
    assert_true(n_copies >= 0);
    engine_copies_free(copies, n_copies);
    /* nor a region of a stored image: that is embedded again */
    image_region half;
    assert_int_equal(image_region_parse("0,0,50%,50%", &half, &err), 0);
    q = (engine_query){.by_id = fx->ids[1], .k = 1, .region = &half};
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "without a model"));
    engine_item it = {G.s[1].bytes, G.s[1].len, NULL, 0};
    engine_item_result r;
    assert_int_equal(engine_ingest_batch(fx->e, &it, 1, &r, &err), MS_EINVAL);
}

/* Queries queued while the model is busy run together as one batch, and
 * give the same features as run alone; one query too many is refused. */
static void test_dynamic_batching(void **state)
{
    fixture *fx = *state;
    engine_close(fx->e);
    engine_options o;
    engine_options_init(&o);
    o.db = fx->db;
    o.model_path = G.model;
    o.max_batch = 8;
    o.queue_depth = 3;
    ms_err err = {0};
    assert_int_equal(engine_open(&o, &fx->e, NULL, &err), 0);
    engine *e = fx->e;
    int dim = e->dim;
    size_t per = e->infer.per_image;
    float *in = malloc(8 * per * sizeof(float)), *alone = malloc(4 * (size_t)dim * sizeof(float));
    float *out = malloc(4 * (size_t)dim * sizeof(float)), *bulk_out = malloc(8 * (size_t)dim * sizeof(float));
    for (int i = 0; i < 4; i++) {
        float *x;
        assert_int_equal(engine_prepare(e, G.s[i].bytes, G.s[i].len, NULL, NULL, &x, NULL, &err), 0);
        memcpy(in + (size_t)i * per, x, per * sizeof(float));
        memcpy(in + (size_t)(i + 4) * per, x, per * sizeof(float));
        free(x);
        infer_job j = {.input = in + (size_t)i * per, .n = 1, .out = alone + (size_t)i * dim};
        assert_int_equal(infer_submit(&e->infer, &j, &err), 0);
        assert_int_equal(infer_wait(&e->infer, &j, &err), 0);
    }
    uint64_t forwards_before = e->infer.forwards;
    /* keep the model busy with a bulk batch, taken off the queue first */
    infer_job bulk = {.input = in, .n = 8, .out = bulk_out, .bulk = 1};
    assert_int_equal(infer_submit(&e->infer, &bulk, &err), 0);
    for (;;) {
        pthread_mutex_lock(&e->infer.mu);
        int taken = e->infer.bh == NULL;
        pthread_mutex_unlock(&e->infer.mu);
        if (taken)
            break;
        usleep(100);
    }
    infer_job q[4];
    for (int i = 0; i < 3; i++) {
        q[i] = (infer_job){.input = in + (size_t)i * per, .n = 1, .out = out + (size_t)i * dim};
        assert_int_equal(infer_submit(&e->infer, &q[i], &err), 0);
    }
    q[3] = (infer_job){.input = in + 3 * per, .n = 1, .out = out + 3 * (size_t)dim};
    assert_int_equal(infer_submit(&e->infer, &q[3], &err), MS_EBUSY);
    assert_int_equal(infer_wait(&e->infer, &bulk, &err), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(infer_wait(&e->infer, &q[i], &err), 0);
    /* the bulk batch and the three queries: two forwards */
    assert_int_equal(e->infer.forwards - forwards_before, 2);
    for (int i = 0; i < 3; i++)
        for (int d = 0; d < dim; d++) {
            float a = alone[(size_t)i * dim + d];
            assert_float_equal(out[(size_t)i * dim + d], a, 1e-4 + 1e-4 * (a < 0 ? -a : a));
            assert_float_equal(bulk_out[(size_t)(i + 4) * dim + d], a, 1e-4 + 1e-4 * (a < 0 ? -a : a));
        }
    free(in);
    free(alone);
    free(out);
    free(bulk_out);
}

typedef struct search_thread {
    engine *e;
    const int64_t *ids;
    int start, ok;
} search_thread;

static void *search_worker(void *arg)
{
    search_thread *t = arg;
    t->ok = 1;
    for (int r = 0; r < 4; r++) {
        int i = (t->start + r * 5) % N_IMAGES;
        engine_query q = {.bytes = G.s[i].bytes, .len = G.s[i].len, .k = 3};
        engine_result *res = NULL;
        int n = 0;
        ms_err err = {0};
        int rc = engine_search(t->e, &q, &res, &n, NULL, &err);
        if (rc == MS_EBUSY) {
            r--;
            usleep(1000);
            continue;
        }
        if (rc || n < 1 || res[0].id != t->ids[i])
            t->ok = 0;
        engine_results_free(res, n);
    }
    return NULL;
}

static void test_concurrent_searches(void **state)
{
    fixture *fx = *state;
    search_thread t[6];
    pthread_t th[6];
    for (int i = 0; i < 6; i++) {
        t[i] = (search_thread){fx->e, fx->ids, i, 0};
        assert_int_equal(pthread_create(&th[i], NULL, search_worker, &t[i]), 0);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(th[i], NULL);
        assert_true(t[i].ok);
    }
    engine_stats st;
    engine_get_stats(fx->e, &st);
    assert_int_equal(st.searches, 24);
}

/* Copies (engine_find_copies): image 5 stored again as what MedSearch sees
 * of it (a lossless PNG, other bytes) and at half size under another
 * patient; each names the other two, strongest first, with their metadata;
 * an image without copies names none; bad arguments and a missing image
 * are refused. */
static void test_find_copies(void **state)
{
    fixture *fx = *state;
    ms_err err = {0};
    image_info info;
    assert_int_equal(image_probe(G.s[5].bytes, G.s[5].len, NULL, &info, &err), 0);
    int side = info.width > info.height ? info.width : info.height;
    uint8_t *same = NULL, *half = NULL;
    size_t same_len = 0, half_len = 0;
    assert_int_equal(engine_preview(fx->e, G.s[5].bytes, G.s[5].len, side, &same, &same_len, &err), 0);
    assert_int_equal(engine_preview(fx->e, G.s[5].bytes, G.s[5].len, side / 2, &half, &half_len, &err), 0);
    store_meta other = {0};
    other.age = -1;
    other.patient_id = "P-copy";
    int64_t c1, c2;
    int was_new;
    assert_int_equal(engine_ingest(fx->e, same, same_len, &G.s[5].meta, &c1, &was_new, &err), 0);
    assert_int_equal(engine_ingest(fx->e, half, half_len, &other, &c2, &was_new, &err), 0);
    free(same);
    free(half);
    const int64_t group[3] = {fx->ids[5], c1, c2};
    for (int g = 0; g < 3; g++) {
        engine_copy *copies;
        int n;
        assert_int_equal(engine_find_copies(fx->e, group[g], ENGINE_COPIES_CANDIDATES, ENGINE_COPIES_MIN_CORRELATION,
                                            &copies, &n, &err), 0);
        if (n != 2)
            fail_msg("image %lld: %d copies, want 2", (long long)group[g], n);
        for (int i = 0; i < n; i++) {
            assert_true(copies[i].id != group[g]);
            assert_true(copies[i].id == group[0] || copies[i].id == group[1] || copies[i].id == group[2]);
            assert_true(copies[i].correlation >= 0.99 && copies[i].correlation <= 1.0 + 1e-12);
            if (copies[i].id == c2)
                assert_string_equal(copies[i].meta.patient_id, "P-copy");
        }
        assert_true(copies[0].correlation >= copies[1].correlation);
        engine_copies_free(copies, n);
    }
    engine_copy *copies = NULL;
    int n = -1;
    assert_int_equal(engine_find_copies(fx->e, fx->ids[0], 5, 0.99, &copies, &n, &err), 0);
    assert_int_equal(n, 0);
    engine_copies_free(copies, n);
    assert_int_equal(engine_find_copies(fx->e, fx->ids[0], 0, 0.99, &copies, &n, &err), MS_EINVAL);
    assert_int_equal(engine_find_copies(fx->e, fx->ids[0], 101, 0.99, &copies, &n, &err), MS_EINVAL);
    assert_int_equal(engine_find_copies(fx->e, fx->ids[0], 5, 1.5, &copies, &n, &err), MS_EINVAL);
    assert_int_equal(engine_find_copies(fx->e, fx->ids[0], 5, -1, &copies, &n, &err), MS_EINVAL);
    assert_int_equal(engine_find_copies(fx->e, 987654321, 5, 0.99, &copies, &n, &err), MS_ENOTFOUND);
    assert_null(copies);
}

/* Image a's half (left: across = 1; top: across = 0) beside the other half
 * of image b, scaled to a's size, as a PNG (malloc'd). */
static uint8_t *half_and_half(const sample *a, const sample *b, int across, size_t *len)
{
    VipsImage *ia = vips_image_new_from_buffer(a->bytes, a->len, "", NULL);
    VipsImage *ib = vips_image_new_from_buffer(b->bytes, b->len, "", NULL);
    assert_non_null(ia);
    assert_non_null(ib);
    int w = vips_image_get_width(ia), h = vips_image_get_height(ia);
    VipsImage *ga, *gb, *sb, *pa, *pb, *joined;
    assert_int_equal(vips_colourspace(ia, &ga, VIPS_INTERPRETATION_B_W, NULL), 0);
    assert_int_equal(vips_colourspace(ib, &gb, VIPS_INTERPRETATION_B_W, NULL), 0);
    assert_int_equal(vips_resize(gb, &sb, (double)w / vips_image_get_width(gb), "vscale",
                                 (double)h / vips_image_get_height(gb), NULL), 0);
    if (across) {
        assert_int_equal(vips_extract_area(ga, &pa, 0, 0, w / 2, h, NULL), 0);
        assert_int_equal(vips_extract_area(sb, &pb, w / 2, 0, w - w / 2, h, NULL), 0);
    } else {
        assert_int_equal(vips_extract_area(ga, &pa, 0, 0, w, h / 2, NULL), 0);
        assert_int_equal(vips_extract_area(sb, &pb, 0, h / 2, w, h - h / 2, NULL), 0);
    }
    assert_int_equal(vips_join(pa, pb, &joined, across ? VIPS_DIRECTION_HORIZONTAL : VIPS_DIRECTION_VERTICAL, NULL),
                     0);
    void *buf = NULL;
    assert_int_equal(vips_pngsave_buffer(joined, &buf, len, NULL), 0);
    uint8_t *out = malloc(*len);
    memcpy(out, buf, *len);
    g_free(buf);
    VipsImage *all[] = {ia, ib, ga, gb, sb, pa, pb, joined};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        g_object_unref(all[i]);
    return out;
}

/* Sum of the cells of a grid in columns (across) or rows [from, to). */
static double cells_sum(const engine_similarity_map *m, const float *cells, int across, int from, int to)
{
    double sum = 0;
    for (int y = 0; y < m->grid_h; y++)
        for (int x = 0; x < m->grid_w; x++) {
            int at = across ? x : y;
            if (at >= from && at < to)
                sum += cells[y * m->grid_w + x];
        }
    return sum;
}

/* engine_map_similarity: each side's cells sum to the similarity, which is
 * the score search gives without query expansion (for a region too);
 * the roles swapped, the cells swap; and the cells are where the images
 * match: an image made of half of one X-ray and half of another has its
 * similarity to the first in that half, on both sides, across and down. */
/* For every 4th result of a search with image 3: the map's similarity is
 * the score, each side sums to it, and swapping the roles swaps the cells. */
static void check_map_sums(fixture *fx, int centred)
{
    ms_err err = {0};
    engine_query q = {.bytes = G.s[3].bytes, .len = G.s[3].len, .k = N_IMAGES, .qe = 0};
    engine_result *res;
    int n;
    assert_int_equal(engine_search(fx->e, &q, &res, &n, NULL, &err), 0);
    for (int j = 0; j < n; j += 4) {
        engine_similarity_map m;
        assert_int_equal(engine_map_similarity(fx->e, &q, res[j].id, &m, &err), 0);
        assert_true(m.grid_w == 7 && m.grid_h == 7 && m.centred == centred && !m.region_used);
        assert_true(fabs(m.similarity - res[j].score) < 1e-4);
        assert_true(fabs(cells_sum(&m, m.query_cells, 1, 0, 7) - m.similarity) < 1e-4);
        assert_true(fabs(cells_sum(&m, m.result_cells, 1, 0, 7) - m.similarity) < 1e-4);
        /* the stored image as the query, the file's image as the result */
        engine_query back = {.by_id = res[j].id};
        engine_similarity_map r;
        assert_int_equal(engine_map_similarity(fx->e, &back, fx->ids[3], &r, &err), 0);
        assert_true(fabs(r.similarity - m.similarity) < 1e-5);
        for (int i = 0; i < 49; i++)
            assert_true(fabsf(r.query_cells[i] - m.result_cells[i]) < 1e-5f &&
                        fabsf(r.result_cells[i] - m.query_cells[i]) < 1e-5f);
        engine_similarity_map_free(&m);
        engine_similarity_map_free(&r);
    }
    engine_results_free(res, n);
}

/* engine_map_similarity: each side's cells sum to the similarity, which is
 * the score search gives without query expansion (plain and centred, for a
 * region too); the roles swapped, the cells swap; and the cells are where
 * the images match: an image made of half of one X-ray and half of another
 * has its similarity to the first in that half, on both sides, across and
 * down. */
static void test_similarity_map(void **state)
{
    fixture *fx = *state;
    ms_err err = {0};
    engine_result *res;
    int n;
    check_map_sums(fx, 0);
    assert_int_equal(engine_update_center(fx->e, 0, NULL, &err), 0);
    check_map_sums(fx, 1);
    /* a region: the region's search score, the region in pixels */
    image_region part;
    image_rect used = {0};
    assert_int_equal(image_region_parse("0,10%,60%,70%", &part, &err), 0);
    engine_query rq = {.bytes = G.s[3].bytes, .len = G.s[3].len, .k = 3, .qe = 0, .region = &part};
    assert_int_equal(engine_search(fx->e, &rq, &res, &n, NULL, &err), 0);
    rq.region_used = &used;
    engine_similarity_map m;
    assert_int_equal(engine_map_similarity(fx->e, &rq, res[1].id, &m, &err), 0);
    assert_true(m.region_used && used.width == m.region.width && used.height > 0 && used.x == 0);
    assert_true(fabs(m.similarity - res[1].score) < 1e-4);
    assert_true(fabs(cells_sum(&m, m.query_cells, 1, 0, 7) - m.similarity) < 1e-4);
    /* drawn: the region of the query and the whole result, at most 100 px, enlarged by whole factors */
    uint8_t *qpng, *rpng;
    size_t qlen, rlen;
    assert_int_equal(engine_similarity_overlays(fx->e, &rq, res[1].id, &m, 100, &qpng, &qlen, &rpng, &rlen, &err), 0);
    VipsImage *qi = vips_image_new_from_buffer(qpng, qlen, "", NULL), *ri = vips_image_new_from_buffer(rpng, rlen, "", NULL);
    assert_true(qi && ri && qi->Bands == 3 && ri->Bands == 3);
    int big = used.width > used.height ? used.width : used.height;
    int k = big > 100 ? 1 : 100 / big;
    assert_true(vips_image_get_height(qi) == (big > 100 ? 100 : big * k) || vips_image_get_width(qi) == (big > 100 ? 100 : big * k));
    assert_true(vips_image_get_width(ri) <= 100 && vips_image_get_height(ri) <= 100 && vips_image_get_width(ri) > 50);
    g_object_unref(qi);
    g_object_unref(ri);
    free(qpng);
    free(rpng);
    assert_int_equal(engine_similarity_overlays(fx->e, &rq, 987654321, &m, 100, &qpng, &qlen, &rpng, &rlen, &err),
                     MS_ENOTFOUND);
    assert_true(!qpng && !rpng && !qlen && !rlen);
    assert_int_equal(engine_similarity_overlays(fx->e, &rq, res[1].id, &m, 0, &qpng, &qlen, &rpng, &rlen, &err), MS_EINVAL);
    engine_similarity_map_free(&m);
    engine_results_free(res, n);
    /* where they match */
    for (int across = 0; across <= 1; across++)
        for (int a = 0; a < 4; a++) {
            size_t len;
            uint8_t *mixed = half_and_half(&G.s[a], &G.s[a + 12], across, &len);
            engine_query mq = {.bytes = mixed, .len = len};
            assert_int_equal(engine_map_similarity(fx->e, &mq, fx->ids[a], &m, &err), 0);
            double qa = cells_sum(&m, m.query_cells, across, 0, 3), qb = cells_sum(&m, m.query_cells, across, 4, 7);
            double ra = cells_sum(&m, m.result_cells, across, 0, 3), rb = cells_sum(&m, m.result_cells, across, 4, 7);
            print_message("  %s half of image %d: similarity %.3f; query %.3f | %.3f, result %.3f | %.3f\n",
                          across ? "left" : "top", a, m.similarity, qa, qb, ra, rb);
            assert_true(qa > qb + 0.05 && ra > rb + 0.05);
            engine_similarity_map_free(&m);
            free(mixed);
        }
    /* refusals: nothing changed in *out */
    engine_query none = {0};
    assert_int_equal(engine_map_similarity(fx->e, &none, fx->ids[0], &m, &err), MS_EINVAL);
    assert_null(m.query_cells);
    engine_query by_id = {.by_id = 987654321};
    assert_int_equal(engine_map_similarity(fx->e, &by_id, fx->ids[0], &m, &err), MS_ENOTFOUND);
    by_id.by_id = fx->ids[0];
    assert_int_equal(engine_map_similarity(fx->e, &by_id, 987654321, &m, &err), MS_ENOTFOUND);
    image_region outside;
    assert_int_equal(image_region_parse("0,0,100000,1", &outside, &err), 0);
    by_id.region = &outside;
    assert_int_equal(engine_map_similarity(fx->e, &by_id, fx->ids[1], &m, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "does not lie inside"));
    engine_query garbage = {.bytes = (const uint8_t *)"not an image at all", .len = 19};
    assert_true(engine_map_similarity(fx->e, &garbage, fx->ids[1], &m, &err) != 0);
    assert_null(m.query_cells);
}

/* The query moved by relevance feedback, in index space, by hand:
 * l2(q + LIKE * mean(like) - UNLIKE * mean(unlike)), repeats once. */
static void feedback_by_hand(engine *e, const float *q, const int64_t *like, int nl, const int64_t *unlike, int nu,
                             double *out)
{
    int dim = model_dim(engine_model(e));
    float v[2048];
    for (int d = 0; d < dim; d++)
        out[d] = q[d];
    const int64_t *lists[2] = {like, unlike};
    int counts[2] = {nl, nu};
    double weights[2] = {ENGINE_FEEDBACK_LIKE, -ENGINE_FEEDBACK_UNLIKE};
    for (int l = 0; l < 2; l++) {
        int distinct = 0;
        for (int i = 0; i < counts[l]; i++) {
            int repeat = 0;
            for (int j = 0; j < i; j++)
                repeat |= lists[l][j] == lists[l][i];
            distinct += !repeat;
        }
        for (int i = 0; i < counts[l]; i++) {
            int repeat = 0;
            for (int j = 0; j < i; j++)
                repeat |= lists[l][j] == lists[l][i];
            if (repeat)
                continue;
            assert_int_equal(index_get(engine_index(e), lists[l][i], v), 0);
            for (int d = 0; d < dim; d++)
                out[d] += weights[l] / distinct * v[d];
        }
    }
    double norm = 0;
    for (int d = 0; d < dim; d++)
        norm += out[d] * out[d];
    for (int d = 0; d < dim; d++)
        out[d] /= sqrt(norm);
}

/* Every result's score is its index vector's dot product with moved, and
 * the scores do not rise. */
static void assert_scores_against(engine *e, const engine_result *res, int n, const double *moved)
{
    int dim = model_dim(engine_model(e));
    float v[2048];
    for (int j = 0; j < n; j++) {
        assert_int_equal(index_get(engine_index(e), res[j].id, v), 0);
        double dot = 0;
        for (int d = 0; d < dim; d++)
            dot += moved[d] * v[d];
        assert_float_equal(res[j].score, dot, 1e-5);
        if (j)
            assert_true(res[j].score <= res[j - 1].score);
    }
}

static int is_marked(int64_t id, const int64_t *a, int na, const int64_t *b, int nb)
{
    for (int i = 0; i < na; i++)
        if (a[i] == id)
            return 1;
    for (int i = 0; i < nb; i++)
        if (b[i] == id)
            return 1;
    return 0;
}

/* Relevance feedback: every score is the result's similarity to the query
 * moved as engine.h says (repeats once), the marked images and the query
 * are left out (also of the expansion, and when they fail the filter), a
 * file query is moved like its stored twin, and bad lists are refused. */
static void test_feedback(void **state)
{
    fixture *fx = *state;
    ms_err err = {0};
    engine *e = fx->e;
    int64_t like[3] = {fx->ids[3], fx->ids[5], fx->ids[3]}, unlike[1] = {fx->ids[9]};
    engine_query q = {.by_id = fx->ids[7], .k = N_IMAGES, .exclude_self = 1, .like = like, .n_like = 3,
                      .unlike = unlike, .n_unlike = 1};
    engine_result *res;
    int n;
    assert_int_equal(engine_search(e, &q, &res, &n, NULL, &err), 0);
    assert_int_equal(n, N_IMAGES - 4);
    float qv[2048];
    double moved[2048];
    assert_int_equal(index_get(engine_index(e), fx->ids[7], qv), 0);
    feedback_by_hand(e, qv, like, 3, unlike, 1, moved);
    for (int j = 0; j < n; j++)
        assert_false(res[j].id == fx->ids[7] || is_marked(res[j].id, like, 3, unlike, 1));
    assert_scores_against(e, res, n, moved);
    engine_results_free(res, n);

    /* With expansion and a filter: still none of them, and only NORMAL. */
    store_filter f;
    store_filter_init(&f);
    assert_int_equal(store_filter_parse("labels:NORMAL", &f, &err), 0);
    engine_query fq = q;
    fq.qe = 3;
    fq.filter = &f;
    assert_int_equal(engine_search(e, &fq, &res, &n, NULL, &err), 0);
    assert_true(n > 0);
    for (int j = 0; j < n; j++) {
        assert_false(res[j].id == fx->ids[7] || is_marked(res[j].id, like, 3, unlike, 1));
        assert_true(has_label(&res[j].meta, "NORMAL"));
    }
    engine_results_free(res, n);
    store_filter_free(&f);

    /* The file of image 7 searches like its stored vector (to the model's
     * rounding), and it is not left out: only by_id leaves itself out. */
    engine_query fileq = {.bytes = G.s[7].bytes, .len = G.s[7].len, .k = 5, .like = like, .n_like = 3,
                          .unlike = unlike, .n_unlike = 1};
    engine_query stored = q;
    stored.k = 5;
    stored.exclude_self = 0;
    engine_result *rs;
    int ns;
    assert_int_equal(engine_search(e, &fileq, &res, &n, NULL, &err), 0);
    assert_int_equal(engine_search(e, &stored, &rs, &ns, NULL, &err), 0);
    assert_int_equal(n, ns);
    for (int j = 0; j < n; j++) {
        assert_int_equal(res[j].id, rs[j].id);
        assert_float_equal(res[j].score, rs[j].score, 1e-4);
    }
    engine_results_free(res, n);
    engine_results_free(rs, ns);

    /* The marked images alone, without an image or an id: a zero query
     * moved by them; unlike marks alone, or a region, need a query. */
    int64_t two[2] = {fx->ids[3], fx->ids[5]};
    engine_query marks = {.k = N_IMAGES, .like = two, .n_like = 2, .unlike = unlike, .n_unlike = 1};
    assert_int_equal(engine_search(e, &marks, &res, &n, NULL, &err), 0);
    assert_int_equal(n, N_IMAGES - 3);
    float origin[2048] = {0};
    feedback_by_hand(e, origin, two, 2, unlike, 1, moved);
    for (int j = 0; j < n; j++)
        assert_false(is_marked(res[j].id, two, 2, unlike, 1));
    assert_scores_against(e, res, n, moved);
    engine_results_free(res, n);
    engine_query unliked = {.k = 3, .unlike = unlike, .n_unlike = 1};
    assert_int_equal(engine_search(e, &unliked, &res, &n, NULL, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "marked like"));
    image_region corner;
    assert_int_equal(image_region_parse("0,0,5,5", &corner, &err), 0);
    marks.region = &corner;
    assert_int_equal(engine_search(e, &marks, &res, &n, NULL, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "a region, an image"));

    /* Refusals. */
    engine_query bad = q;
    int64_t both[1] = {fx->ids[9]};
    bad.like = both, bad.n_like = 1;
    assert_int_equal(engine_search(e, &bad, &res, &n, NULL, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "both like and unlike"));
    int64_t absent[1] = {987654321};
    bad = q, bad.unlike = absent;
    assert_int_equal(engine_search(e, &bad, &res, &n, NULL, &err), MS_ENOTFOUND);
    assert_non_null(strstr(err.msg, "987654321 (marked unlike)"));
    int64_t zero[1] = {0};
    bad = q, bad.like = zero, bad.n_like = 1;
    assert_int_equal(engine_search(e, &bad, &res, &n, NULL, &err), MS_EINVAL);
    bad = q, bad.n_like = ENGINE_FEEDBACK_MAX + 1;
    assert_int_equal(engine_search(e, &bad, &res, &n, NULL, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "at most"));
    bad = q, bad.n_unlike = -1;
    assert_int_equal(engine_search(e, &bad, &res, &n, NULL, &err), MS_EINVAL);
    bad = q, bad.like = NULL;
    assert_int_equal(engine_search(e, &bad, &res, &n, NULL, &err), MS_EINVAL);
    /* A query its own vector cancels: nothing left to search with. */
    int64_t self[1] = {fx->ids[7]};
    bad = (engine_query){.by_id = fx->ids[7], .k = 3, .exclude_self = 1, .unlike = self, .n_unlike = 1};
    assert_int_equal(engine_search(e, &bad, &res, &n, NULL, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "cancel"));
    assert_null(res);
}

static int run_engine_suite(const char *group)
{
    int rc = suite_load_data();
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_search_finds_itself, setup, teardown),
        cmocka_unit_test_setup_teardown(test_filter_and_grouping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_by_id_and_qe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_collection_qe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reingest_is_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reingest_updates_metadata, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_item_fails_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_persist_reload_stale_damaged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_model_change_and_reembed, setup, teardown),
        cmocka_unit_test(test_collection_keeps_input_size),
        cmocka_unit_test_setup_teardown(test_check_detects_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_queries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_model_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dynamic_batching, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_searches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find_copies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_similarity_map, setup, teardown),
        cmocka_unit_test_setup_teardown(test_feedback, setup, teardown),
    };
    rc = _cmocka_run_group_tests(group, tests, sizeof tests / sizeof tests[0], NULL, NULL);
    suite_free_data();
    return rc;
}

#endif
