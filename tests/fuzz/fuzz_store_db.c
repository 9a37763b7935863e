/*
 * fuzz_store_db.c - libFuzzer target for a tampered collection file: the
 * store must read whatever a SQLite file holds and answer with data or
 * an error, never crash.
 *
 * Random bytes are almost never a SQLite file, so the input is a list of
 * edits applied to a valid collection made once (a model, a center, three
 * images with metadata, labels, key/values, thumbnails and vectors). Each
 * edit is 4 bytes and an optional value:
 *   byte 0  which column of which table (over every column of the schema)
 *   byte 1  which row: rowid (byte % 5) or, at 255, every row
 *   byte 2  what: 0-3 set the column to an integer, text, blob (the value
 *           bytes) or NULL; 4 delete the row; 5 drop the table
 *   byte 3  the value's length in bytes, which follow
 * Edits the schema refuses (STRICT types, CHECKs) simply fail. The store
 * is then opened and every read of its interface is made.
 * With FUZZ_WRITE_SEEDS=DIR set, the target writes seed inputs (one
 * edit each, aimed by column name) into DIR and exits; tests/fuzz/run.sh
 * does that before fuzzing.
 */
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_file.h"
#include "store/store.h"
#include "util/sha256.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { DIM = 4, N_IMAGES = 3, MAX_COLUMNS = 128 };

static char template_path[4096 + 16], work_path[4096 + 16];
static uint8_t *template_bytes;
static size_t template_len;
static struct {
    char table[64], column[64];
} columns[MAX_COLUMNS];
static int n_columns;

static _Noreturn void die(const char *what, const char *msg)
{
    fprintf(stderr, "fuzz_store_db: %s: %s\n", what, msg);
    abort();
}

static void make_template(void)
{
    store *s;
    ms_err err;
    if (store_open(template_path, &s, &err) || store_use_model(s, "fuzz", DIM, 0, &err))
        die("template", err.msg);
    char *labels[] = {"Effusion", "No Finding"};
    store_kv kv[] = {{"site", "A"}};
    for (int i = 0; i < N_IMAGES; i++) {
        uint8_t bytes[8] = {(uint8_t)i, 1, 2, 3, 4, 5, 6, 7}, thumb[4] = {9, 8, 7, (uint8_t)i};
        char sha[65], patient[8];
        ms_sha256_hex(bytes, sizeof bytes, sha);
        snprintf(patient, sizeof patient, "p%d", i % 2);
        float vec[DIM] = {0.5f, 0.5f, 0.5f, i ? 0.5f : -0.5f};
        store_meta m;
        store_meta_init(&m);
        m.original_name = "x.png";
        m.patient_id = patient;
        m.age = 40 + i;
        m.sex = i ? 'F' : 'M';
        m.view = "PA";
        m.labels = labels;
        m.n_labels = 1 + i % 2;
        m.kv = kv;
        m.n_kv = 1;
        store_item it = {.bytes = bytes, .len = sizeof bytes, .sha256 = sha, .mime = "image/png", .width = 8,
                         .height = 8, .thumb = thumb, .thumb_len = sizeof thumb, .thumb_mime = "image/jpeg",
                         .meta = &m, .vec = vec};
        int64_t id;
        int was_new;
        if (store_ingest(s, &it, 1, &id, &was_new, &err))
            die("template ingest", err.msg);
    }
    float center[DIM] = {0.1f, 0.2f, 0.3f, 0.4f};
    if (store_set_center(s, center, DIM, N_IMAGES, &err) || store_set_search_qe(s, 3, &err))
        die("template settings", err.msg);
    store_close(s);
}

static void list_columns(void)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    if (sqlite3_open_v2(template_path, &db, SQLITE_OPEN_READONLY, NULL) ||
        sqlite3_prepare_v2(db,
                           "SELECT m.name, p.name FROM sqlite_schema m, pragma_table_info(m.name) p "
                           "WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' ORDER BY 1, p.cid",
                           -1, &st, NULL))
        die("schema", sqlite3_errmsg(db));
    while (sqlite3_step(st) == SQLITE_ROW && n_columns < MAX_COLUMNS) {
        snprintf(columns[n_columns].table, 64, "%s", (const char *)sqlite3_column_text(st, 0));
        snprintf(columns[n_columns].column, 64, "%s", (const char *)sqlite3_column_text(st, 1));
        n_columns++;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static int column_index(const char *table, const char *column)
{
    for (int i = 0; i < n_columns; i++)
        if (!strcmp(columns[i].table, table) && !strcmp(columns[i].column, column))
            return i;
    die("seed names an unknown column", column);
}

/* Seeds: one edit each, aimed by name at what the store parses. */
static void write_seeds(const char *seed_dir)
{
    static const struct {
        const char *table, *column;
        uint8_t row, what, len;
        const char *value;
    } seeds[] = {
        {"vectors", "vector", 1, 2, 3, "abc"},       /* a vector blob of the wrong length */
        {"collection", "center", 1, 2, 6, "abcdef"}, /* a center of the wrong length */
        {"collection", "center_n", 1, 0, 1, "\xff"}, /* a negative count */
        {"models", "dim", 255, 0, 4, "\0\0\1\0"},   /* another dimension */
        {"models", "identity", 255, 1, 2, "\xff\xfe"}, /* not UTF-8 */
        {"metadata", "age", 2, 0, 1, "\x80"},
        {"labels", "label", 255, 1, 0, ""},
        {"kv", "key", 255, 1, 3, "a\0b"},
        {"thumbnails", "data", 255, 2, 0, ""},
        {"images", "mime", 1, 1, 40, "image/png-but-much-longer-than-32-bytes!"},
        {"schema_version", "version", 255, 0, 1, "\x63"}, /* a future version */
        {"vectors", "vector", 255, 4, 0, ""},        /* no vectors at all */
        {"images", "id", 255, 5, 0, ""},             /* no images table */
    };
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        uint8_t edit[4 + 255] = {(uint8_t)column_index(seeds[i].table, seeds[i].column), seeds[i].row,
                                 seeds[i].what, seeds[i].len};
        memcpy(edit + 4, seeds[i].value, seeds[i].len);
        char path[600];
        snprintf(path, sizeof path, "%s/edit%zu", seed_dir, i);
        FILE *f = fopen(path, "wb");
        if (f) {
            fwrite(edit, 1, 4 + (size_t)seeds[i].len, f);
            fclose(f);
        }
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = fuzz_scratch_dir("fuzz_store_db");
    if (!dir)
        abort();
    snprintf(template_path, sizeof template_path, "%s/t.db", dir);
    snprintf(work_path, sizeof work_path, "%s/w.db", dir);
    make_template();
    list_columns();
    fuzz_write_seeds_if_asked(write_seeds);
    FILE *f = fopen(template_path, "rb");
    if (!f || fseek(f, 0, SEEK_END) || (template_len = (size_t)ftell(f)) == 0 || fseek(f, 0, SEEK_SET))
        die("template", "cannot read it back");
    template_bytes = malloc(template_len);
    if (!template_bytes || fread(template_bytes, 1, template_len, f) != template_len)
        die("template", "cannot read it back");
    fclose(f);
    return 0;
}

/* One edit; returns the bytes it used, 0 at the end of the input. */
static size_t apply_edit(sqlite3 *db, const uint8_t *p, size_t n)
{
    if (n < 4 || (size_t)4 + p[3] > n)
        return 0;
    const char *table = columns[p[0] % n_columns].table, *column = columns[p[0] % n_columns].column;
    const uint8_t *value = p + 4;
    int len = p[3], what = p[2] % 6;
    char sql[256], where[32] = "";
    if (p[1] != 255)
        snprintf(where, sizeof where, " WHERE rowid = %d", p[1] % 5);
    if (what == 4)
        snprintf(sql, sizeof sql, "DELETE FROM \"%s\"%s", table, where);
    else if (what == 5)
        snprintf(sql, sizeof sql, "DROP TABLE \"%s\"", table);
    else
        snprintf(sql, sizeof sql, "UPDATE \"%s\" SET \"%s\" = ?%s", table, column, where);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        int64_t v = 0;
        memcpy(&v, value, len < 8 ? (size_t)len : 8);
        if (what == 0)
            sqlite3_bind_int64(st, 1, len == 1 ? (int8_t)value[0] : v);
        else if (what == 1)
            sqlite3_bind_text(st, 1, (const char *)value, len, SQLITE_TRANSIENT);
        else if (what == 2)
            sqlite3_bind_blob(st, 1, value, len, SQLITE_TRANSIENT);
        sqlite3_step(st);
        sqlite3_finalize(st);
    }
    return 4 + (size_t)len;
}

static int count_vector(void *ctx, int64_t id, const float *vec, int dim)
{
    (void)id;
    (void)vec;
    *(size_t *)ctx += (size_t)dim;
    return 0;
}

/* Every read the faces make; each returns data or an error. */
static void read_everything(store *s)
{
    ms_err err;
    char *identity = NULL;
    int dim = 0, qe, off;
    store_get_model(s, &identity, &dim, &err);
    free(identity);
    float center[DIM];
    size_t from_n, n = 0, seen = 0;
    store_get_center(s, center, DIM, &from_n, &err);
    store_get_center_policy(s, &off, &err);
    store_get_search_qe(s, &qe, &err);
    store_check(s, &err);
    uint64_t gen;
    store_generation(s, &gen, &err);
    store_count(s, &n, &err);
    store_each_vector(s, count_vector, &seen, &err);
    int64_t *ids = NULL;
    if (store_list_ids(s, &ids, &n, &err) == 0) {
        for (size_t i = 0; i < n && i < 16; i++) {
            store_image_info info;
            store_get_info(s, ids[i], &info, &err);
            uint8_t *bytes = NULL;
            size_t len;
            char mime[32];
            if (store_get_image(s, ids[i], &bytes, &len, mime, &err) == 0)
                free(bytes);
            bytes = NULL;
            if (store_get_thumbnail(s, ids[i], &bytes, &len, mime, &err) == 0)
                free(bytes);
            store_meta m;
            store_meta_init(&m);
            if (store_get_meta(s, ids[i], &m, &err) == 0)
                store_meta_free(&m);
            float vec[DIM];
            store_get_vector(s, ids[i], vec, DIM, &err);
        }
        free(ids);
    }
    store_filter f;
    if (store_filter_parse("labels:effusion sex:F age:30-50 view:PA site=A", &f, &err) == 0) {
        ids = NULL;
        if (store_filter_ids(s, &f, &ids, &n, &err) == 0)
            free(ids);
        store_filter_free(&f);
    }
    int64_t id;
    store_find_sha256(s, "0000000000000000000000000000000000000000000000000000000000000000", &id, &err);
    store_has_name(s, "x.png", &err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char side[sizeof work_path + 8];
    snprintf(side, sizeof side, "%s-wal", work_path); /* none must carry over from the last input */
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", work_path);
    unlink(side);
    FILE *f = fopen(work_path, "wb");
    if (!f)
        return 0;
    size_t wrote = fwrite(template_bytes, 1, template_len, f);
    fclose(f);
    if (wrote != template_len)
        return 0;
    sqlite3 *db;
    if (sqlite3_open(work_path, &db) == SQLITE_OK) {
        for (size_t at = 0, used; at < size && (used = apply_edit(db, data + at, size - at)) > 0;)
            at += used;
    }
    sqlite3_close(db);
    store *s;
    ms_err err;
    if (store_open(work_path, &s, &err) == 0) {
        read_everything(s);
        store_close(s);
    }
    return 0;
}
