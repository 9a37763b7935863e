/*
 * fuzz_store_filter.c - libFuzzer target for metadata filters: any bytes
 * go through store_filter_parse (the `--filter` option and the API's
 * `filter` parameter take the same text), and a filter that parses is run
 * by store_filter_ids against a small SQLite collection made once, so the
 * SQL built from hostile values runs too. The ids returned must be
 * exactly those a plain C reading of the filter's meaning (store.h)
 * picks from the collection's metadata, in ascending order. Built and run
 * by tests/fuzz/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_file.h"
#include "store/store.h"
#include "store/store_impl.h"
#include "util/sha256.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { N_IMAGES = 6, DIM = 4 };

static store *collection;
static int64_t stored[N_IMAGES];

/* The collection, as stored; the reference below reads it from here. */
static const struct image {
    const char *patient;
    int age;
    char sex;
    const char *view;
    const char *labels[3];
    int n_labels;
    store_kv kv[2];
    int n_kv;
} images[N_IMAGES] = {
    {"p1", 45, 'F', "PA", {"No Finding"}, 1, {{"site", "A"}, {"study", "x y"}}, 2},
    {"p1", 46, 'F', "AP", {"Effusion", "Mass"}, 2, {{0}}, 0},
    {"p2", -1, 0, NULL, {"a\"b", "x|y+z:w", "%_"}, 3, {{"site", "B'; DROP TABLE images; --"}}, 1},
    {"p 3", 200, 'M', "LL", {"effusion"}, 1, {{0}}, 0},
    {NULL, 0, 'M', "PA", {0}, 0, {{"site", "A"}}, 1},
    {"p\"5", 60, 'F', "pa", {"Effusion"}, 1, {{0}}, 0},
};

static void add_image(int i)
{
    const struct image *im = &images[i];
    uint8_t bytes[16];
    for (int j = 0; j < 16; j++)
        bytes[j] = (uint8_t)(i * 31 + j);
    char sha[65];
    ms_sha256_hex(bytes, sizeof bytes, sha);
    float vec[DIM] = {0.5f, 0.5f, 0.5f, 0.5f};
    store_meta m;
    store_meta_init(&m);
    m.patient_id = (char *)im->patient;
    m.age = im->age;
    m.sex = im->sex;
    m.view = (char *)im->view;
    m.labels = (char **)im->labels;
    m.n_labels = im->n_labels;
    m.kv = (store_kv *)im->kv;
    m.n_kv = im->n_kv;
    store_item it = {.bytes = bytes, .len = sizeof bytes, .sha256 = sha, .mime = "image/png", .width = 8,
                     .height = 8, .meta = &m, .vec = vec};
    int was_new;
    ms_err err;
    if (store_ingest(collection, &it, 1, &stored[i], &was_new, &err)) {
        fprintf(stderr, "fuzz_store_filter: cannot make the collection: %s\n", err.msg);
        abort();
    }
}

static int same_folded(const char *a, const char *b, int is_label)
{
    char fa[STORE_MAX_TEXT + 1], fb[STORE_MAX_TEXT + 1];
    if (is_label) {
        store_fold_label(a, fa, sizeof fa);
        store_fold_label(b, fb, sizeof fb);
    } else {
        store_fold_view(a, fa, sizeof fa);
        store_fold_view(b, fb, sizeof fb);
    }
    return !strcmp(fa, fb);
}

static int has_label(const struct image *im, const char *label)
{
    for (int i = 0; i < im->n_labels; i++)
        if (same_folded(im->labels[i], label, 1))
            return 1;
    return 0;
}

/* Does image i pass f, by store.h's words: every set part holds; an age
 * term never matches an unknown age; an image of unknown patient is not
 * the excluded patient's. */
static int reference_match(const store_filter *f, int i)
{
    const struct image *im = &images[i];
    if (f->sex && im->sex != f->sex)
        return 0;
    if ((f->age_min >= 0 || f->age_max >= 0) &&
        (im->age < 0 || (f->age_min >= 0 && im->age < f->age_min) || (f->age_max >= 0 && im->age > f->age_max)))
        return 0;
    if (f->n_views > 0) {
        int any = 0;
        for (int v = 0; v < f->n_views && im->view; v++)
            any |= same_folded(im->view, f->views[v], 0);
        if (!any)
            return 0;
    }
    if (f->patient_id && (!im->patient || strcmp(im->patient, f->patient_id)))
        return 0;
    if (f->exclude_patient && im->patient && !strcmp(im->patient, f->exclude_patient))
        return 0;
    if (f->n_labels_any > 0) {
        int any = 0;
        for (int l = 0; l < f->n_labels_any; l++)
            any |= has_label(im, f->labels_any[l]);
        if (!any)
            return 0;
    }
    for (int l = 0; l < f->n_labels_all; l++)
        if (!has_label(im, f->labels_all[l]))
            return 0;
    for (int k = 0; k < f->n_kv; k++) {
        int hit = 0;
        for (int j = 0; j < im->n_kv; j++)
            hit |= !strcmp(im->kv[j].key, f->kv[k].key) && !strcmp(im->kv[j].value, f->kv[k].value);
        if (!hit)
            return 0;
    }
    return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char path[4096 + 16];
    ms_err err;
    const char *dir = fuzz_scratch_dir("fuzz_store_filter");
    if (!dir)
        abort();
    snprintf(path, sizeof path, "%s/f.db", dir);
    if (store_open(path, &collection, &err) || store_use_model(collection, "fuzz", DIM, 0, &err)) {
        fprintf(stderr, "fuzz_store_filter: %s\n", err.msg);
        abort();
    }
    for (int i = 0; i < N_IMAGES; i++)
        add_image(i);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *expr = malloc(size + 1);
    if (!expr)
        return 0;
    memcpy(expr, data, size);
    expr[size] = '\0';
    store_filter f;
    ms_err err;
    if (store_filter_parse(expr, &f, &err) == 0) {
        int64_t *ids = NULL;
        size_t n = 0;
        if (store_filter_ids(collection, &f, &ids, &n, &err) == 0) {
            /* stored[] ascends with i: the reference's list is in id order */
            size_t at = 0;
            for (int i = 0; i < N_IMAGES; i++) {
                if (!reference_match(&f, i))
                    continue;
                if (at >= n || ids[at] != stored[i]) {
                    fprintf(stderr, "fuzz_store_filter: '%s' should give image %d (id %lld) as result %zu\n",
                            expr, i, (long long)stored[i], at);
                    abort();
                }
                at++;
            }
            if (at != n) {
                fprintf(stderr, "fuzz_store_filter: '%s' gave %zu ids, the reference %zu\n", expr, n, at);
                abort();
            }
            free(ids);
        } else {
            fprintf(stderr, "fuzz_store_filter: '%s' parsed but does not run: %s\n", expr, err.msg);
            abort();
        }
    }
    store_filter_free(&f);
    free(expr);
    return 0;
}
