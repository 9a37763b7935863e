/*
 * fuzz_store_filter.c - libFuzzer target for metadata filters: any bytes
 * go through store_filter_parse (the `--filter` option and the API's
 * `filter` parameter take the same text), and a filter that parses is run
 * by store_filter_ids against a small SQLite collection made once, so the
 * SQL built from hostile values runs too. The ids returned must be
 * ascending and among those stored. Built and run by tests/fuzz/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "util/sha256.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { N_IMAGES = 6, DIM = 4 };

static store *collection;
static int64_t stored[N_IMAGES];
static char db_dir[] = "/tmp/fuzz_store_filter_XXXXXX";

static void add_image(int i, const char *patient, int age, char sex, const char *view, char **labels, int n_labels,
                      store_kv *kv, int n_kv)
{
    uint8_t bytes[16];
    for (int j = 0; j < 16; j++)
        bytes[j] = (uint8_t)(i * 31 + j);
    char sha[65];
    ms_sha256_hex(bytes, sizeof bytes, sha);
    float vec[DIM] = {0.5f, 0.5f, 0.5f, 0.5f};
    store_meta m;
    store_meta_init(&m);
    m.patient_id = (char *)patient;
    m.age = age;
    m.sex = sex;
    m.view = (char *)view;
    m.labels = labels;
    m.n_labels = n_labels;
    m.kv = kv;
    m.n_kv = n_kv;
    store_item it = {.bytes = bytes, .len = sizeof bytes, .sha256 = sha, .mime = "image/png", .width = 8,
                     .height = 8, .meta = &m, .vec = vec};
    int was_new;
    ms_err err;
    if (store_ingest(collection, &it, 1, &stored[i], &was_new, &err)) {
        fprintf(stderr, "fuzz_store_filter: cannot make the collection: %s\n", err.msg);
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char path[sizeof db_dir + 16];
    ms_err err;
    if (!mkdtemp(db_dir))
        abort();
    snprintf(path, sizeof path, "%s/f.db", db_dir);
    if (store_open(path, &collection, &err) || store_use_model(collection, "fuzz", DIM, 0, &err)) {
        fprintf(stderr, "fuzz_store_filter: %s\n", err.msg);
        abort();
    }
    char *none[] = {"No Finding"}, *two[] = {"Effusion", "Mass"}, *odd[] = {"a\"b", "x|y+z:w", "%_"};
    char *one[] = {"effusion"};
    store_kv kv[] = {{"site", "A"}, {"study", "x y"}}, kv2[] = {{"site", "B'; DROP TABLE images; --"}};
    add_image(0, "p1", 45, 'F', "PA", none, 1, kv, 2);
    add_image(1, "p1", 46, 'F', "AP", two, 2, NULL, 0);
    add_image(2, "p2", -1, 0, NULL, odd, 3, kv2, 1);
    add_image(3, "p 3", 200, 'M', "LL", one, 1, NULL, 0);
    add_image(4, NULL, 0, 'M', "PA", NULL, 0, kv, 1);
    add_image(5, "p\"5", 60, 'F', "pa", two, 1, NULL, 0);
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
            for (size_t i = 0; i < n; i++) {
                int known = 0;
                for (int j = 0; j < N_IMAGES; j++)
                    known |= ids[i] == stored[j];
                if (!known || (i && ids[i] <= ids[i - 1])) {
                    fprintf(stderr, "fuzz_store_filter: '%s' gave id %lld, unknown or out of order\n", expr,
                            (long long)ids[i]);
                    abort();
                }
            }
            free(ids);
        }
    }
    store_filter_free(&f);
    free(expr);
    return 0;
}
