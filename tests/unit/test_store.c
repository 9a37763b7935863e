/*
 * test_store.c - one test suite, run against both store backends: SQLite (a
 * file in a temporary directory) and PostgreSQL (a real server: the one in
 * $MEDSEARCH_TEST_PG, or a throwaway one started with tests/tools/pg_start.sh
 * and stopped at the end). The PostgreSQL cases skip, saying so, only when
 * the PostgreSQL binaries are absent.
 *
 * Each test gets an empty collection. Cases that only make sense for one
 * backend (a read-only file or session, a full disk, an unreachable or
 * restarted server) are in the "errors" groups. A short ingest/scan
 * measurement runs last on both backends and prints images/s, CPU per image
 * and the PostgreSQL/SQLite ratio; MEDSEARCH_STORE_BENCH_N (images, default
 * 400), MEDSEARCH_STORE_BENCH_DIM (default 2048) and
 * MEDSEARCH_STORE_BENCH_ROUNDS (default 3) scale it, and
 * MEDSEARCH_STORE_BENCH_ONLY=1 runs nothing else (docs/store.md, "Speed").
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <sqlite3.h>

#include "store/store.h"
#include "util/sha256.h"
#include "util/timing.h"

/* ---- backends and fixtures ---- */

typedef enum { SQLITE, POSTGRES } backend_kind;

static struct {
    char pg_uri[512];     /* "" when PostgreSQL is unavailable */
    char pg_dir[512];     /* our throwaway server's directory, or "" */
    char pg_skip[300];    /* why PostgreSQL cases skip */
    backend_kind current; /* the group being run */
} G;

typedef struct fixture {
    backend_kind kind;
    char dir[256];        /* SQLite: the temporary directory */
    char uri[512];        /* what store_open gets */
    store *s;
} fixture;

static const int DIM = 8;

static void rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", dir);
}

/* Runs fixed SQL on the test's database through a connection of its own. */
static void raw_exec(const fixture *f, const char *sql)
{
    if (f->kind == SQLITE) {
        sqlite3 *db;
        assert_int_equal(sqlite3_open(f->uri, &db), SQLITE_OK);
        char *msg = NULL;
        int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
        if (rc != SQLITE_OK)
            fail_msg("raw sqlite: %s: %s", sql, msg);
        sqlite3_close(db);
    } else {
        PGconn *c = PQconnectdb(f->uri);
        assert_int_equal(PQstatus(c), CONNECTION_OK);
        PGresult *r = PQexec(c, sql);
        ExecStatusType st = PQresultStatus(r);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
            fail_msg("raw postgres: %s: %s", sql, PQerrorMessage(c));
        PQclear(r);
        PQfinish(c);
    }
}

/* The first column of the first row of fixed SQL, as an integer. */
static long long raw_int(const fixture *f, const char *sql)
{
    long long v = -1;
    if (f->kind == SQLITE) {
        sqlite3 *db;
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_open(f->uri, &db), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        sqlite3_close(db);
    } else {
        PGconn *c = PQconnectdb(f->uri);
        assert_int_equal(PQstatus(c), CONNECTION_OK);
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1)
            fail_msg("raw postgres: %s: %s", sql, PQerrorMessage(c));
        v = atoll(PQgetvalue(r, 0, 0));
        PQclear(r);
        PQfinish(c);
    }
    return v;
}

/* An empty database for one test: a fresh file, or a fresh public schema. */
static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->kind = G.current;
    *state = f;
    if (f->kind == SQLITE) {
        snprintf(f->dir, sizeof f->dir, "%s/ms-store-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->uri, sizeof f->uri, "%s/collection.db", f->dir);
    } else {
        if (!G.pg_uri[0])
            return 0;  /* the test skips */
        snprintf(f->uri, sizeof f->uri, "%s", G.pg_uri);
        raw_exec(f, "SET client_min_messages = warning; DROP SCHEMA IF EXISTS public CASCADE; "
                    "CREATE SCHEMA public");
    }
    ms_err err = {0};
    if (store_open(f->uri, &f->s, &err) != 0)
        fail_msg("store_open(%s): %s", f->uri, err.msg);
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    store_close(f->s);
    if (f->dir[0])
        rm_rf(f->dir);
    free(f);
    return 0;
}

/* Each test starts with this: the fixture, or a skip when its backend is
 * unavailable. */
static fixture *fx(void **state)
{
    fixture *f = *state;
    if (f->kind == POSTGRES && !G.pg_uri[0]) {
        printf("skip: %s\n", G.pg_skip);
        skip();
    }
    return f;
}

static void reopen(fixture *f)
{
    ms_err err = {0};
    store_close(f->s);
    f->s = NULL;
    if (store_open(f->uri, &f->s, &err) != 0)
        fail_msg("reopening %s: %s", f->uri, err.msg);
}

/* ---- items ---- */

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* An item with its own memory: pseudo-random bytes from seed. */
typedef struct titem {
    store_item it;
    uint8_t *bytes, *thumb;
    char sha[65];
    float *vec;
} titem;

static void titem_make(titem *t, uint64_t seed, size_t len, int dim, const store_meta *meta, int thumb)
{
    memset(t, 0, sizeof *t);
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    t->bytes = malloc(len);
    assert_non_null(t->bytes);
    for (size_t i = 0; i < len; i++)
        t->bytes[i] = (uint8_t)(rng_next(&x) >> 24);
    ms_sha256_hex(t->bytes, len, t->sha);
    t->vec = malloc((size_t)dim * sizeof *t->vec);
    assert_non_null(t->vec);
    for (int i = 0; i < dim; i++)
        t->vec[i] = (float)((double)(rng_next(&x) >> 11) / 9007199254740992.0 - 0.5);
    if (thumb) {
        t->thumb = malloc(300);
        assert_non_null(t->thumb);
        for (int i = 0; i < 300; i++)
            t->thumb[i] = (uint8_t)(rng_next(&x) >> 30);
    }
    t->it = (store_item){.bytes = t->bytes, .len = len, .sha256 = t->sha, .mime = "image/png",
                         .width = 64 + (int)(seed % 7), .height = 48, .thumb = t->thumb,
                         .thumb_len = thumb ? 300 : 0, .thumb_mime = "image/jpeg", .meta = meta,
                         .vec = t->vec};
}

static void titem_free(titem *t)
{
    free(t->bytes);
    free(t->thumb);
    free(t->vec);
}

/* Metadata from a compact description; strings are not copied. */
static store_meta meta_of(const char *name, const char *patient, int age, char sex, const char *view,
                          char **labels, int n_labels, store_kv *kv, int n_kv)
{
    store_meta m;
    store_meta_init(&m);
    m.original_name = (char *)name;
    m.patient_id = (char *)patient;
    m.age = age;
    m.sex = sex;
    m.view = (char *)view;
    m.labels = labels;
    m.n_labels = n_labels;
    m.kv = kv;
    m.n_kv = n_kv;
    return m;
}

static void use_model(fixture *f, int dim)
{
    ms_err err = {0};
    if (store_use_model(f->s, "test-model sha256:00ff", dim, 0, &err) != 0)
        fail_msg("store_use_model: %s", err.msg);
}

static void ingest_ok(fixture *f, titem *t, size_t n, int64_t *ids, int *was_new)
{
    store_item *items = calloc(n, sizeof *items);
    assert_non_null(items);
    for (size_t i = 0; i < n; i++)
        items[i] = t[i].it;
    ms_err err = {0};
    if (store_ingest(f->s, items, n, ids, was_new, &err) != 0)
        fail_msg("store_ingest: %s", err.msg);
    free(items);
}

static size_t count(fixture *f)
{
    size_t n = 0;
    ms_err err = {0};
    assert_int_equal(store_count(f->s, &n, &err), 0);
    return n;
}

static uint64_t generation(fixture *f)
{
    uint64_t g = 0;
    ms_err err = {0};
    assert_int_equal(store_generation(f->s, &g, &err), 0);
    return g;
}

static void check_sound(fixture *f)
{
    ms_err err = {0};
    if (store_check(f->s, &err) != 0)
        fail_msg("store_check: %s", err.msg);
}

/* ---- tests ---- */

static void t_open_schema(void **state)
{
    fixture *f = fx(state);
    assert_string_equal(store_backend(f->s), f->kind == SQLITE ? "sqlite" : "postgresql");
    assert_int_equal(count(f), 0);
    assert_int_equal(generation(f), 0);
    char *identity = (char *)"x";
    int dim = -5;
    ms_err err = {0};
    assert_int_equal(store_get_model(f->s, &identity, &dim, &err), 0);
    assert_null(identity);
    assert_int_equal(dim, 0);
    assert_int_equal(raw_int(f, "SELECT version FROM schema_version"), 5);
    reopen(f);  /* an existing, current schema opens without migrating */
    assert_int_equal(raw_int(f, "SELECT count(*) FROM schema_version"), 1);
    if (f->kind == SQLITE) {
        assert_int_equal(raw_int(f, "PRAGMA application_id"), 0x4D534442);
        /* WAL is a property of the file; the rest hold for our connection. */
        sqlite3 *db;
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_open(f->uri, &db), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
        sqlite3_finalize(st);
        sqlite3_close(db);
    }
    check_sound(f);
}

/* A collection of schema version 1 (labels without their position) is
 * migrated on open: its labels stay readable, in their old (alphabetical)
 * order, and new metadata keeps the given order. */
static void t_migrate_from_version_1(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    char *l1[] = {"Pneumonia", "Bacteria"};
    store_meta m1 = meta_of("old.png", "P1", 5, 'F', NULL, l1, 2, NULL, 0);
    titem t;
    titem_make(&t, 40, 300, DIM, &m1, 0);
    int64_t id;
    int was_new;
    ingest_ok(f, &t, 1, &id, &was_new);
    store_close(f->s);
    f->s = NULL;
    raw_exec(f, "ALTER TABLE labels DROP COLUMN position");
    raw_exec(f, "ALTER TABLE collection DROP COLUMN center");
    raw_exec(f, "ALTER TABLE collection DROP COLUMN center_n");
    raw_exec(f, "ALTER TABLE collection DROP COLUMN center_policy");
    raw_exec(f, "ALTER TABLE collection DROP COLUMN search_qe");
    raw_exec(f, "UPDATE schema_version SET version = 1");
    reopen(f);
    assert_int_equal(raw_int(f, "SELECT version FROM schema_version"), 5);
    ms_err err = {0};
    store_meta got;
    assert_int_equal(store_get_meta(f->s, id, &got, &err), 0);
    assert_int_equal(got.n_labels, 2);
    assert_string_equal(got.labels[0], "Bacteria");
    assert_string_equal(got.labels[1], "Pneumonia");
    store_meta_free(&got);
    ingest_ok(f, &t, 1, &id, &was_new);  /* new metadata: the given order */
    assert_int_equal(was_new, 0);
    assert_int_equal(store_get_meta(f->s, id, &got, &err), 0);
    assert_string_equal(got.labels[0], "Pneumonia");
    assert_string_equal(got.labels[1], "Bacteria");
    store_meta_free(&got);
    check_sound(f);
    titem_free(&t);
}

/* The center tests use arrays of the collection's dim. */
#define CDIM 8

/* A collection of schema version 2 (no center) is migrated on open: its
 * images and vectors stay, it has no center, and one can be recorded. */
static void t_migrate_from_version_2(void **state)
{
    fixture *f = fx(state);
    use_model(f, CDIM);
    titem t[3];
    int64_t ids[3];
    int was_new[3];
    for (int i = 0; i < 3; i++)
        titem_make(&t[i], 60 + (uint64_t)i, 200, CDIM, NULL, 0);
    ingest_ok(f, t, 3, ids, was_new);
    uint64_t g = generation(f);
    store_close(f->s);
    f->s = NULL;
    raw_exec(f, "ALTER TABLE collection DROP COLUMN center");
    raw_exec(f, "ALTER TABLE collection DROP COLUMN center_n");
    raw_exec(f, "ALTER TABLE collection DROP COLUMN center_policy");
    raw_exec(f, "ALTER TABLE collection DROP COLUMN search_qe");
    raw_exec(f, "UPDATE schema_version SET version = 2");
    reopen(f);
    assert_int_equal(raw_int(f, "SELECT version FROM schema_version"), 5);
    assert_int_equal(count(f), 3);
    assert_int_equal(generation(f), g);
    float c[CDIM], got[CDIM];
    size_t from_n = 99;
    ms_err err = {0};
    assert_int_equal(store_get_center(f->s, c, CDIM, &from_n, &err), MS_ENOTFOUND);
    assert_int_equal(from_n, 0);
    float v[CDIM];
    assert_int_equal(store_get_vector(f->s, ids[1], v, CDIM, &err), 0);
    assert_memory_equal(v, t[1].vec, sizeof v);
    for (int i = 0; i < CDIM; i++)
        c[i] = (float)i / 7.0f;
    assert_int_equal(store_set_center(f->s, c, CDIM, 3, &err), 0);
    assert_int_equal(store_get_center(f->s, got, CDIM, &from_n, &err), 0);
    assert_memory_equal(got, c, sizeof c);
    assert_int_equal(from_n, 3);
    check_sound(f);
    for (int i = 0; i < 3; i++)
        titem_free(&t[i]);
}

/* A collection of schema version 3 (a center, no policy) is migrated on
 * open: it keeps its center and generation, and its policy is auto. */
static void t_migrate_from_version_3(void **state)
{
    fixture *f = fx(state);
    use_model(f, CDIM);
    titem t;
    titem_make(&t, 70, 200, CDIM, NULL, 0);
    int64_t id;
    int was_new;
    ingest_ok(f, &t, 1, &id, &was_new);
    float c[CDIM], got[CDIM];
    for (int i = 0; i < CDIM; i++)
        c[i] = 0.125f * (float)(i + 1);
    ms_err err = {0};
    assert_int_equal(store_set_center(f->s, c, CDIM, 1, &err), 0);
    uint64_t g = generation(f);
    store_close(f->s);
    f->s = NULL;
    raw_exec(f, "ALTER TABLE collection DROP COLUMN center_policy");
    raw_exec(f, "ALTER TABLE collection DROP COLUMN search_qe");
    raw_exec(f, "UPDATE schema_version SET version = 3");
    reopen(f);
    assert_int_equal(raw_int(f, "SELECT version FROM schema_version"), 5);
    assert_int_equal(generation(f), g);
    int off = -1;
    assert_int_equal(store_get_center_policy(f->s, &off, &err), 0);
    assert_int_equal(off, 0);
    size_t from_n = 0;
    assert_int_equal(store_get_center(f->s, got, CDIM, &from_n, &err), 0);
    assert_memory_equal(got, c, sizeof c);
    assert_int_equal(raw_int(f, "SELECT count(*) FROM collection WHERE center_policy = 'auto'"), 1);
    check_sound(f);
    titem_free(&t);
}

/* A collection of schema version 4 (a centering policy, no query-expansion
 * default) is migrated on open: it keeps its policy, center and generation,
 * and its query-expansion default is 0 (off, what search did). */
static void t_migrate_from_version_4(void **state)
{
    fixture *f = fx(state);
    use_model(f, CDIM);
    titem t;
    titem_make(&t, 75, 200, CDIM, NULL, 0);
    int64_t id;
    int was_new;
    ingest_ok(f, &t, 1, &id, &was_new);
    ms_err err = {0};
    assert_int_equal(store_set_center_policy(f->s, 1, &err), 0);
    uint64_t g = generation(f);
    store_close(f->s);
    f->s = NULL;
    raw_exec(f, "ALTER TABLE collection DROP COLUMN search_qe");
    raw_exec(f, "UPDATE schema_version SET version = 4");
    reopen(f);
    assert_int_equal(raw_int(f, "SELECT version FROM schema_version"), 5);
    assert_int_equal(generation(f), g);
    assert_int_equal(count(f), 1);
    int off = -1, qe = -1;
    assert_int_equal(store_get_center_policy(f->s, &off, &err), 0);
    assert_int_equal(off, 1);
    assert_int_equal(store_get_search_qe(f->s, &qe, &err), 0);
    assert_int_equal(qe, 0);
    check_sound(f);
    titem_free(&t);
}

/* The query-expansion default: STORE_NEW_COLLECTION_QE for a new
 * collection (kept when it is opened again), any value of 0..100 recorded
 * and read back, kept across reopening, re-embeds and model changes,
 * without touching the generation or the centering policy; out-of-range
 * values refused with nothing changed. */
static void t_search_qe(void **state)
{
    fixture *f = fx(state);
    ms_err err = {0};
    int qe = -1;
    assert_int_equal(store_get_search_qe(f->s, &qe, &err), 0);
    assert_int_equal(qe, STORE_NEW_COLLECTION_QE);
    assert_int_equal(store_set_search_qe(f->s, 0, &err), 0);
    reopen(f);  /* no longer new: opening it again does not reset the default */
    assert_int_equal(store_get_search_qe(f->s, &qe, &err), 0);
    assert_int_equal(qe, 0);
    assert_int_equal(store_get_search_qe(f->s, NULL, &err), MS_EINVAL);
    assert_int_equal(store_set_search_qe(f->s, 2, &err), 0);  /* no model yet: fine */
    const int bad[] = {-1, STORE_SEARCH_QE_MAX + 1, -2147483647 - 1, 2147483647};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&err, 0, sizeof err);
        assert_int_equal(store_set_search_qe(f->s, bad[i], &err), MS_EINVAL);
        assert_non_null(strstr(err.msg, "query expansion"));
        assert_int_equal(store_get_search_qe(f->s, &qe, &err), 0);
        assert_int_equal(qe, 2);
    }
    use_model(f, CDIM);
    uint64_t g = generation(f);
    for (int v = 0; v <= STORE_SEARCH_QE_MAX; v += 7) {
        assert_int_equal(store_set_search_qe(f->s, v, &err), 0);
        assert_int_equal(store_get_search_qe(f->s, &qe, &err), 0);
        assert_int_equal(qe, v);
    }
    assert_int_equal(store_set_search_qe(f->s, STORE_SEARCH_QE_MAX, &err), 0);
    assert_int_equal(store_get_search_qe(f->s, &qe, &err), 0);
    assert_int_equal(qe, STORE_SEARCH_QE_MAX);
    assert_int_equal(store_set_search_qe(f->s, 3, &err), 0);
    assert_int_equal(generation(f), g);
    reopen(f);
    qe = -1;
    assert_int_equal(store_get_search_qe(f->s, &qe, &err), 0);
    assert_int_equal(qe, 3);
    assert_int_equal(raw_int(f, "SELECT search_qe FROM collection"), 3);
    /* The operator's choice outlives a re-embed and a model change, and is
     * independent of the centering policy. */
    assert_int_equal(store_use_model(f->s, "test-model sha256:00ff", CDIM, 1, &err), 0);
    assert_int_equal(store_use_model(f->s, "other-model sha256:11ee", 2 * CDIM, 1, &err), 0);
    assert_int_equal(store_set_center_policy(f->s, 1, &err), 0);
    assert_int_equal(store_get_search_qe(f->s, &qe, &err), 0);
    assert_int_equal(qe, 3);
    int off = -1;
    assert_int_equal(store_get_center_policy(f->s, &off, &err), 0);
    assert_int_equal(off, 1);
    check_sound(f);
}

/* A hand-edited default (the CHECK constraint bypassed; SQLite's STRICT
 * typing still keeps it an integer) is refused with a message naming it,
 * by store_get_search_qe and store_check alike; setting it again repairs
 * it. */
static void t_search_qe_hostile(void **state)
{
    fixture *f = fx(state);
    use_model(f, CDIM);
    int pg = f->kind == POSTGRES;
    if (pg)
        raw_exec(f, "ALTER TABLE collection DROP CONSTRAINT collection_search_qe_check");
    const char *values[] = {"101", "-1", "2147483647", "-2147483648"};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        char sql[200];
        snprintf(sql, sizeof sql, "%sUPDATE collection SET search_qe = %s",
                 pg ? "" : "PRAGMA ignore_check_constraints = ON; ", values[i]);
        raw_exec(f, sql);
        ms_err err = {0};
        int qe = -1;
        assert_int_equal(store_get_search_qe(f->s, &qe, &err), MS_EFORMAT);
        if (!strstr(err.msg, "query-expansion default"))
            fail_msg("value %s: '%s' does not name the default", values[i], err.msg);
        assert_int_equal(qe, 0);
        memset(&err, 0, sizeof err);
        assert_int_equal(store_check(f->s, &err), MS_EFORMAT);
        if (!strstr(err.msg, "query-expansion default") && !(!pg && strstr(err.msg, "CHECK constraint")))
            fail_msg("value %s: store_check says '%s'", values[i], err.msg);
    }
    ms_err err = {0};
    assert_int_equal(store_set_search_qe(f->s, 2, &err), 0);
    int qe = -1;
    assert_int_equal(store_get_search_qe(f->s, &qe, &err), 0);
    assert_int_equal(qe, 2);
    check_sound(f);
}

/* The centering policy: auto by default, off and back, kept across
 * reopening and model changes; off clears the center; neither changes the
 * generation; bad input refused. */
static void t_center_policy(void **state)
{
    fixture *f = fx(state);
    ms_err err = {0};
    int off = -1;
    assert_int_equal(store_get_center_policy(f->s, &off, &err), 0);
    assert_int_equal(off, 0);
    assert_int_equal(store_get_center_policy(f->s, NULL, &err), MS_EINVAL);
    assert_int_equal(store_set_center_policy(f->s, 2, &err), MS_EINVAL);
    assert_int_equal(store_set_center_policy(f->s, -1, &err), MS_EINVAL);
    assert_int_equal(store_set_center_policy(f->s, 1, &err), 0);  /* no model yet: fine */
    assert_int_equal(store_get_center_policy(f->s, &off, &err), 0);
    assert_int_equal(off, 1);
    use_model(f, CDIM);
    assert_int_equal(store_get_center_policy(f->s, &off, &err), 0);
    assert_int_equal(off, 1);
    assert_int_equal(store_set_center_policy(f->s, 0, &err), 0);
    assert_int_equal(store_get_center_policy(f->s, &off, &err), 0);
    assert_int_equal(off, 0);

    float c[CDIM], got[CDIM];
    for (int i = 0; i < CDIM; i++)
        c[i] = 0.5f - (float)i / 16.0f;
    size_t from_n = 0;
    assert_int_equal(store_set_center(f->s, c, CDIM, 400, &err), 0);
    uint64_t g = generation(f);
    assert_int_equal(store_set_center_policy(f->s, 0, &err), 0);  /* auto again: the center stays */
    assert_int_equal(store_get_center(f->s, got, CDIM, &from_n, &err), 0);
    assert_int_equal(from_n, 400);
    assert_int_equal(store_set_center_policy(f->s, 1, &err), 0);  /* off: the center goes */
    assert_int_equal(store_get_center(f->s, got, CDIM, &from_n, &err), MS_ENOTFOUND);
    assert_int_equal(generation(f), g);
    reopen(f);
    off = -1;
    assert_int_equal(store_get_center_policy(f->s, &off, &err), 0);
    assert_int_equal(off, 1);
    assert_int_equal(raw_int(f, "SELECT count(*) FROM collection WHERE center_policy = 'off'"), 1);
    /* The operator's choice outlives a re-embed and a model change. */
    assert_int_equal(store_use_model(f->s, "test-model sha256:00ff", CDIM, 1, &err), 0);
    assert_int_equal(store_use_model(f->s, "other-model sha256:11ee", 2 * CDIM, 1, &err), 0);
    assert_int_equal(store_get_center_policy(f->s, &off, &err), 0);
    assert_int_equal(off, 1);
    check_sound(f);
    assert_int_equal(store_set_center_policy(f->s, 0, &err), 0);
    assert_int_equal(store_get_center_policy(f->s, &off, &err), 0);
    assert_int_equal(off, 0);
    check_sound(f);
}

/* A hand-edited policy (the CHECK constraint bypassed) is refused with a
 * message naming it, by store_get_center_policy and store_check alike;
 * setting the policy again repairs it. */
static void t_center_policy_hostile(void **state)
{
    fixture *f = fx(state);
    use_model(f, CDIM);
    int pg = f->kind == POSTGRES;
    if (pg)
        raw_exec(f, "ALTER TABLE collection DROP CONSTRAINT collection_center_policy_check");
    const char *values[] = {"'sideways'", "'AUTO'", "''", "'off '", "7"};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        char sql[200];
        snprintf(sql, sizeof sql, "%sUPDATE collection SET center_policy = %s",
                 pg ? "" : "PRAGMA ignore_check_constraints = ON; ", values[i]);
        raw_exec(f, sql);
        ms_err err = {0};
        int off = -1;
        assert_int_equal(store_get_center_policy(f->s, &off, &err), MS_EFORMAT);
        if (!strstr(err.msg, "centering policy"))
            fail_msg("value %s: '%s' does not name the policy", values[i], err.msg);
        assert_int_equal(off, 0);
        memset(&err, 0, sizeof err);
        assert_int_equal(store_check(f->s, &err), MS_EFORMAT);
        /* SQLite's quick_check sees the broken CHECK constraint first. */
        if (!strstr(err.msg, "centering policy") && !(!pg && strstr(err.msg, "CHECK constraint")))
            fail_msg("value %s: store_check says '%s'", values[i], err.msg);
    }
    ms_err err = {0};
    assert_int_equal(store_set_center_policy(f->s, 1, &err), 0);
    int off = -1;
    assert_int_equal(store_get_center_policy(f->s, &off, &err), 0);
    assert_int_equal(off, 1);
    check_sound(f);
}

/* The center: absent, recorded bit-exact with its count, kept across
 * reopening and an unforced use_model of the same model, cleared by a
 * forced one (a re-embed) and by a model change; bad input refused. */
static void t_center(void **state)
{
    fixture *f = fx(state);
    float c[CDIM], got[CDIM];
    size_t from_n = 0;
    ms_err err = {0};
    for (int i = 0; i < CDIM; i++)
        c[i] = (i % 2 ? -1.0f : 1.0f) * (0.1f + (float)i / 3.0f);
    assert_int_equal(store_set_center(f->s, c, CDIM, 5, &err), MS_EINVAL);  /* no model yet */
    assert_non_null(strstr(err.msg, "model"));
    assert_int_equal(store_get_center(f->s, got, CDIM, &from_n, &err), MS_ENOTFOUND);
    use_model(f, CDIM);
    assert_int_equal(store_get_center(f->s, got, CDIM, &from_n, &err), MS_ENOTFOUND);
    assert_int_equal(store_clear_center(f->s, &err), 0);  /* clearing nothing is fine */
    uint64_t g = generation(f);

    assert_int_equal(store_set_center(f->s, c, CDIM - 1, 5, &err), MS_EINVAL);  /* not the model's dim */
    assert_non_null(strstr(err.msg, "dim"));
    assert_int_equal(store_set_center(f->s, c, CDIM, 0, &err), MS_EINVAL);      /* from no vector */
    float bad[CDIM];
    memcpy(bad, c, sizeof bad);
    bad[3] = NAN;
    assert_int_equal(store_set_center(f->s, bad, CDIM, 5, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "not finite"));
    bad[3] = INFINITY;
    assert_int_equal(store_set_center(f->s, bad, CDIM, 5, &err), MS_EINVAL);
    assert_int_equal(store_set_center(f->s, NULL, CDIM, 5, &err), MS_EINVAL);
    assert_int_equal(store_get_center(f->s, got, CDIM, &from_n, &err), MS_ENOTFOUND);

    assert_int_equal(store_set_center(f->s, c, CDIM, 300, &err), 0);
    assert_int_equal(store_get_center(f->s, got, CDIM, &from_n, &err), 0);
    assert_memory_equal(got, c, sizeof c);
    assert_int_equal(from_n, 300);
    assert_int_equal(generation(f), g);  /* a center is not a change of the vectors */
    /* Asked with another dim than the stored one: refused, not misread. */
    assert_int_equal(store_get_center(f->s, got, CDIM + 1, &from_n, &err), MS_EFORMAT);
    c[0] = 0.5f;
    assert_int_equal(store_set_center(f->s, c, CDIM, 600, &err), 0);  /* replaced */
    reopen(f);
    assert_int_equal(store_get_center(f->s, got, CDIM, &from_n, &err), 0);
    assert_memory_equal(got, c, sizeof c);
    assert_int_equal(from_n, 600);
    check_sound(f);

    use_model(f, CDIM);  /* the same model, unforced: nothing changes */
    assert_int_equal(store_get_center(f->s, got, CDIM, &from_n, &err), 0);
    assert_int_equal(store_use_model(f->s, "test-model sha256:00ff", CDIM, 1, &err), 0);  /* re-embed */
    assert_int_equal(store_get_center(f->s, got, CDIM, &from_n, &err), MS_ENOTFOUND);

    assert_int_equal(store_set_center(f->s, c, CDIM, 600, &err), 0);
    assert_int_equal(store_clear_center(f->s, &err), 0);
    assert_int_equal(store_get_center(f->s, got, CDIM, &from_n, &err), MS_ENOTFOUND);

    assert_int_equal(store_set_center(f->s, c, CDIM, 600, &err), 0);
    assert_int_equal(store_use_model(f->s, "other-model sha256:11ee", 2 * CDIM, 1, &err), 0);
    float c2[2 * CDIM];
    assert_int_equal(store_get_center(f->s, c2, 2 * CDIM, &from_n, &err), MS_ENOTFOUND);
    assert_int_equal(store_set_center(f->s, c, CDIM, 600, &err), MS_EINVAL);  /* the old dim */
    check_sound(f);
}

/* A stored center is read like any byte from a file: a wrong size, a
 * non-finite value, a missing or impossible count, another type are
 * refused with a message saying what is wrong, and store_check says so. */
static void t_center_hostile(void **state)
{
    fixture *f = fx(state);
    use_model(f, CDIM);
    float got[CDIM];
    size_t from_n = 0;
    ms_err err = {0};
    int pg = f->kind == POSTGRES;
    /* 8 floats of 0.25 (0x3e800000, little-endian) and the same with a NaN
     * (0x7fc00000) at index 5. */
    char good[8 * CDIM + 1] = "", nan5[8 * CDIM + 1] = "";
    for (int i = 0; i < CDIM; i++) {
        memcpy(good + 8 * i, "0000803e", 9);
        memcpy(nan5 + 8 * i, i == 5 ? "0000c07f" : "0000803e", 9);
    }
    struct {
        const char *value, *count;
        const char *expect;
    } cases[] = {
        {"", "10", "bytes, not 8 floats"},       /* too short: 7 floats */
        {"", "10", "bytes, not 8 floats"},       /* too long: 9 floats */
        {nan5, "10", "value 5 of the stored center is not finite"},
        {good, "0", "from 0 vectors"},
        {good, "NULL", "from 0 vectors"},
        {good, "-4", "from -4 vectors"},
    };
    char short7[8 * CDIM + 1], long9[8 * CDIM + 9];
    snprintf(short7, sizeof short7, "%.*s", 7 * 8, good);
    memcpy(long9, good, 8 * CDIM);
    memcpy(long9 + 8 * CDIM, "0000803e", 9);
    cases[0].value = short7;
    cases[1].value = long9;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char sql[300];
        snprintf(sql, sizeof sql, pg ? "UPDATE collection SET center = '\\x%s'::bytea, center_n = %s"
                                     : "UPDATE collection SET center = x'%s', center_n = %s",
                 cases[i].value, cases[i].count);
        raw_exec(f, sql);
        memset(&err, 0, sizeof err);
        assert_int_equal(store_get_center(f->s, got, CDIM, &from_n, &err), MS_EFORMAT);
        if (!strstr(err.msg, cases[i].expect))
            fail_msg("case %zu: '%s' does not say '%s'", i, err.msg, cases[i].expect);
        assert_int_equal(from_n, 0);
        assert_int_equal(store_check(f->s, &err), MS_EFORMAT);
        assert_non_null(strstr(err.msg, "center"));
    }
    char sql[300];
    snprintf(sql, sizeof sql, pg ? "UPDATE collection SET center = '\\x%s'::bytea, center_n = 10"
                                 : "UPDATE collection SET center = x'%s', center_n = 10", good);
    raw_exec(f, sql);
    assert_int_equal(store_get_center(f->s, got, CDIM, &from_n, &err), 0);
    assert_int_equal(from_n, 10);
    for (int i = 0; i < CDIM; i++)
        assert_true(got[i] == 0.25f);
    check_sound(f);
}

static void t_model(void **state)
{
    fixture *f = fx(state);
    ms_err err = {0};
    char *identity = NULL;
    int dim = 0;
    assert_int_equal(store_use_model(f->s, "resnet50 sha256:aaaa", 2048, 0, &err), 0);
    uint64_t g = generation(f);
    assert_int_equal(store_use_model(f->s, "resnet50 sha256:aaaa", 2048, 0, &err), 0);
    assert_int_equal(generation(f), g);  /* the same model changes nothing */
    assert_int_equal(store_get_model(f->s, &identity, &dim, &err), 0);
    assert_string_equal(identity, "resnet50 sha256:aaaa");
    assert_int_equal(dim, 2048);
    free(identity);

    assert_int_equal(store_use_model(f->s, "mobilenetv2 sha256:bbbb", 1280, 0, &err), MS_ECONFLICT);
    assert_non_null(strstr(err.msg, "resnet50 sha256:aaaa"));
    assert_non_null(strstr(err.msg, "mobilenetv2 sha256:bbbb"));
    assert_int_equal(store_use_model(f->s, "resnet50 sha256:aaaa", 1000, 0, &err), MS_ECONFLICT);
    assert_int_equal(store_use_model(f->s, "", 10, 0, &err), MS_EINVAL);
    assert_int_equal(store_use_model(f->s, "m", 0, 0, &err), MS_EINVAL);

    assert_int_equal(store_use_model(f->s, "mobilenetv2 sha256:bbbb", 1280, 1, &err), 0);
    assert_true(generation(f) > g);
    assert_int_equal(store_get_model(f->s, &identity, &dim, &err), 0);
    assert_string_equal(identity, "mobilenetv2 sha256:bbbb");
    assert_int_equal(dim, 1280);
    free(identity);
    reopen(f);
    assert_int_equal(store_get_model(f->s, &identity, &dim, &err), 0);
    assert_string_equal(identity, "mobilenetv2 sha256:bbbb");
    free(identity);
}

static void t_ingest_needs_model(void **state)
{
    fixture *f = fx(state);
    titem t;
    titem_make(&t, 1, 100, DIM, NULL, 0);
    int64_t id = 0;
    int was_new = 0;
    ms_err err = {0};
    assert_int_equal(store_ingest(f->s, &t.it, 1, &id, &was_new, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "model"));
    assert_int_equal(count(f), 0);
    titem_free(&t);
}

/* An item may bring its own id and creation time (medsearch copy keeps a
 * collection's ids): they are taken, later ids stay above them, an id that
 * is taken already fails the whole batch, and the same bytes again keep
 * their first id. */
static void t_ingest_own_ids(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    titem t[5];
    for (int i = 0; i < 5; i++)
        titem_make(&t[i], 70 + (uint64_t)i, 100, DIM, NULL, 0);
    t[1].it.id = 1000;
    t[1].it.created = 1234567890;
    int64_t ids[2];
    int was_new[2];
    ingest_ok(f, t, 2, ids, was_new);
    assert_true(ids[0] > 0 && ids[0] < 1000);
    assert_int_equal(ids[1], 1000);
    ms_err err = {0};
    store_image_info info;
    assert_int_equal(store_get_info(f->s, 1000, &info, &err), 0);
    assert_int_equal(info.created, 1234567890);
    assert_string_equal(info.sha256, t[1].sha);
    assert_int_equal(store_get_info(f->s, ids[0], &info, &err), 0);
    assert_true(llabs((long long)info.created - (long long)time(NULL)) < 60);
    /* the next id the store gives is above the one taken */
    ingest_ok(f, &t[2], 1, ids, was_new);
    assert_true(ids[0] > 1000);
    /* an id in use: the batch fails whole */
    uint64_t gen = generation(f);
    t[3].it.id = 1000;
    store_item items[2] = {t[4].it, t[3].it};
    assert_true(store_ingest(f->s, items, 2, ids, was_new, &err) < 0);
    assert_int_equal(count(f), 3);
    assert_int_equal(generation(f), gen);
    int64_t found;
    assert_int_equal(store_find_sha256(f->s, t[4].sha, &found, &err), MS_ENOTFOUND);
    /* the same bytes with another id: the image keeps its first one */
    t[1].it.id = 2000;
    ingest_ok(f, &t[1], 1, ids, was_new);
    assert_int_equal(ids[0], 1000);
    assert_int_equal(was_new[0], 0);
    check_sound(f);
    for (int i = 0; i < 5; i++)
        titem_free(&t[i]);
}

static void t_ingest_and_dedup(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    char *labels[] = {"Effusion"};
    store_meta m0 = meta_of("a.png", "P1", 50, 'F', "PA", labels, 1, NULL, 0);
    titem t[3];
    titem_make(&t[0], 10, 1000, DIM, &m0, 1);
    titem_make(&t[1], 11, 70000, DIM, NULL, 1);
    titem_make(&t[2], 12, 1, DIM, NULL, 0);
    int64_t ids[3];
    int was_new[3];
    uint64_t g0 = generation(f);
    ingest_ok(f, t, 3, ids, was_new);
    assert_true(ids[0] > 0 && ids[0] < ids[1] && ids[1] < ids[2]);
    assert_true(was_new[0] && was_new[1] && was_new[2]);
    assert_int_equal(count(f), 3);
    assert_int_equal(generation(f), g0 + 1);

    ms_err err = {0};
    store_image_info info;
    assert_int_equal(store_get_info(f->s, ids[1], &info, &err), 0);
    assert_int_equal(info.id, ids[1]);
    assert_string_equal(info.sha256, t[1].sha);
    assert_string_equal(info.mime, "image/png");
    assert_int_equal(info.width, t[1].it.width);
    assert_int_equal(info.height, 48);
    assert_int_equal(info.bytes, 70000);
    assert_true(llabs((long long)info.created - (long long)time(NULL)) < 60);

    uint8_t *bytes;
    size_t len;
    char mime[32];
    assert_int_equal(store_get_image(f->s, ids[1], &bytes, &len, mime, &err), 0);
    assert_int_equal(len, 70000);
    assert_memory_equal(bytes, t[1].bytes, 70000);
    assert_string_equal(mime, "image/png");
    free(bytes);
    assert_int_equal(store_get_thumbnail(f->s, ids[0], &bytes, &len, mime, &err), 0);
    assert_int_equal(len, 300);
    assert_memory_equal(bytes, t[0].thumb, 300);
    assert_string_equal(mime, "image/jpeg");
    free(bytes);
    assert_int_equal(store_get_thumbnail(f->s, ids[2], &bytes, &len, mime, &err), MS_ENOTFOUND);
    assert_int_equal(store_get_image(f->s, ids[2] + 100, &bytes, &len, mime, &err), MS_ENOTFOUND);
    assert_int_equal(store_get_info(f->s, ids[2] + 100, &info, &err), MS_ENOTFOUND);

    /* The same bytes again, without metadata: same id, nothing changed. */
    int64_t again;
    int again_new = 1;
    ingest_ok(f, &t[0], 1, &again, &again_new);
    assert_int_equal(again, ids[0]);
    assert_int_equal(again_new, 0);
    assert_int_equal(count(f), 3);
    store_meta got;
    assert_int_equal(store_get_meta(f->s, ids[0], &got, &err), 0);
    assert_string_equal(got.patient_id, "P1");
    assert_int_equal(got.n_labels, 1);
    store_meta_free(&got);

    int64_t found = 0;
    assert_int_equal(store_find_sha256(f->s, t[2].sha, &found, &err), 0);
    assert_int_equal(found, ids[2]);
    char absent[65];
    memset(absent, 'e', 64);
    absent[64] = '\0';
    assert_int_equal(store_find_sha256(f->s, absent, &found, &err), MS_ENOTFOUND);
    assert_int_equal(store_find_sha256(f->s, "ABC", &found, &err), MS_EINVAL);
    assert_int_equal(store_has_name(f->s, "a.png", &err), 1);
    assert_int_equal(store_has_name(f->s, "b.png", &err), 0);
    check_sound(f);
    for (int i = 0; i < 3; i++)
        titem_free(&t[i]);
}

static void t_metadata_update(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    /* Labels come back in the order given: the first is the primary finding. */
    char *l1[] = {"Mass", "Effusion"}, *l2[] = {"Pneumonia"};
    store_kv kv1[] = {{"site", "A"}, {"followup", "1"}}, kv2[] = {{"scanner", "X1"}};
    store_meta m1 = meta_of("first.png", "P1", 50, 'F', "pa", l1, 2, kv1, 2);
    store_meta m2 = meta_of("second.png", "P9", -1, 'M', NULL, l2, 1, kv2, 1);
    titem t;
    titem_make(&t, 20, 500, DIM, &m1, 0);
    int64_t id, id2;
    int was_new;
    ingest_ok(f, &t, 1, &id, &was_new);
    ms_err err = {0};
    store_meta got;
    assert_int_equal(store_get_meta(f->s, id, &got, &err), 0);
    assert_string_equal(got.original_name, "first.png");
    assert_string_equal(got.view, "PA");  /* stored upper-cased */
    assert_int_equal(got.age, 50);
    assert_int_equal(got.sex, 'F');
    assert_int_equal(got.n_labels, 2);
    assert_string_equal(got.labels[0], "Mass");
    assert_string_equal(got.labels[1], "Effusion");
    assert_int_equal(got.n_kv, 2);
    assert_string_equal(got.kv[0].key, "followup");  /* sorted by key */
    assert_string_equal(got.kv[1].value, "A");
    store_meta_free(&got);

    t.it.meta = &m2;
    ingest_ok(f, &t, 1, &id2, &was_new);
    assert_int_equal(id2, id);
    assert_int_equal(was_new, 0);
    assert_int_equal(store_get_meta(f->s, id, &got, &err), 0);
    assert_string_equal(got.original_name, "first.png");  /* the first name stays */
    assert_string_equal(got.patient_id, "P9");
    assert_null(got.view);
    assert_null(got.study_date);
    assert_int_equal(got.age, -1);
    assert_int_equal(got.sex, 'M');
    assert_int_equal(got.n_labels, 1);
    assert_string_equal(got.labels[0], "Pneumonia");
    assert_int_equal(got.n_kv, 1);
    assert_string_equal(got.kv[0].key, "scanner");
    store_meta_free(&got);
    assert_int_equal(store_has_name(f->s, "first.png", &err), 1);
    assert_int_equal(store_has_name(f->s, "second.png", &err), 1);
    assert_int_equal(raw_int((fixture *)f, "SELECT count(*) FROM labels"), 1);
    assert_int_equal(raw_int((fixture *)f, "SELECT count(*) FROM kv"), 1);
    check_sound(f);
    titem_free(&t);
}

/* ---- editing metadata ---- */

static store_meta stored_meta(fixture *f, int64_t id)
{
    store_meta m;
    ms_err err = {0};
    if (store_get_meta(f->s, id, &m, &err) != 0)
        fail_msg("store_get_meta(%lld): %s", (long long)id, err.msg);
    return m;
}

static void t_edit_meta_patch(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    char *l1[] = {"Mass", "Effusion"};
    store_kv kv1[] = {{"site", "A"}, {"followup", "1"}};
    store_meta m1 = meta_of("first.png", "P1", 50, 'F', "pa", l1, 2, kv1, 2);
    titem t;
    titem_make(&t, 21, 400, DIM, &m1, 0);
    int64_t id;
    int was_new;
    ingest_ok(f, &t, 1, &id, &was_new);
    uint64_t gen = generation(f);

    store_meta_patch p;
    store_meta_patch_init(&p);
    const char *add[] = {"effusion", "Nodule"}, *del[] = {"MASS"};
    store_kv set[] = {{"site", "B"}, {"followup", NULL}, {"new", ""}};
    p.replace = STORE_PATCH_AGE;
    p.to.age = 51;
    p.add_labels = add, p.n_add_labels = 2;
    p.remove_labels = del, p.n_remove_labels = 1;
    p.set_kv = set, p.n_set_kv = 3;
    ms_err err = {0};
    assert_int_equal(store_patch_meta(f->s, id, &p, &err), 0);
    store_meta got = stored_meta(f, id);
    assert_string_equal(got.original_name, "first.png");
    assert_string_equal(got.patient_id, "P1");
    assert_string_equal(got.view, "PA");
    assert_int_equal(got.age, 51);
    assert_int_equal(got.sex, 'F');
    assert_int_equal(got.n_labels, 2);  /* Mass out; "effusion" is Effusion, kept as spelt */
    assert_string_equal(got.labels[0], "Effusion");
    assert_string_equal(got.labels[1], "Nodule");
    assert_int_equal(got.n_kv, 2);  /* followup removed, an empty value kept */
    assert_string_equal(got.kv[0].key, "new");
    assert_string_equal(got.kv[0].value, "");
    assert_string_equal(got.kv[1].key, "site");
    assert_string_equal(got.kv[1].value, "B");
    store_meta_free(&got);
    assert_int_equal(generation(f), gen);  /* the index holds no metadata */

    /* the same patch again changes nothing, and says so */
    assert_int_equal(store_patch_meta(f->s, id, &p, &err), 1);

    /* a label's spelling is a change; the view's case is not */
    store_meta_patch_init(&p);
    char *l2[] = {"effusion", "NODULE", "nodule"};
    p.replace = STORE_PATCH_LABELS | STORE_PATCH_VIEW;
    p.to.labels = l2, p.to.n_labels = 3;
    p.to.view = "pa";
    assert_int_equal(store_patch_meta(f->s, id, &p, &err), 0);
    got = stored_meta(f, id);
    assert_int_equal(got.n_labels, 2);
    assert_string_equal(got.labels[0], "effusion");
    assert_string_equal(got.labels[1], "NODULE");
    store_meta_free(&got);
    char *l3[] = {"effusion", "NODULE"};
    p.to.labels = l3, p.to.n_labels = 2, p.to.view = "PA";
    assert_int_equal(store_patch_meta(f->s, id, &p, &err), 1);

    /* replacing everything with nothing: all unknown but the file name */
    store_meta_patch_init(&p);
    p.replace = STORE_PATCH_ALL;
    p.to.patient_id = "";
    assert_int_equal(store_patch_meta(f->s, id, &p, &err), 0);
    got = stored_meta(f, id);
    assert_string_equal(got.original_name, "first.png");
    assert_null(got.patient_id);
    assert_null(got.view);
    assert_int_equal(got.age, -1);
    assert_int_equal(got.sex, 0);
    assert_int_equal(got.n_labels, 0);
    assert_int_equal(got.n_kv, 0);
    store_meta_free(&got);
    assert_int_equal(raw_int(f, "SELECT count(*) FROM labels"), 0);
    assert_int_equal(raw_int(f, "SELECT count(*) FROM kv"), 0);
    assert_int_equal(raw_int(f, "SELECT count(*) FROM metadata"), 1);

    assert_int_equal(store_patch_meta(f->s, id + 99, &p, &err), MS_ENOTFOUND);
    check_sound(f);
    titem_free(&t);
}

typedef struct edit_probe {
    int calls;
    int fail;              /* return MS_EINVAL from the edit */
    int age;               /* set this age */
    const char *rename;    /* set original_name to this */
    const char *label;     /* append this label */
} edit_probe;

static int probe_edit(void *ctx, store_meta *m, ms_err *err)
{
    edit_probe *e = ctx;
    e->calls++;
    if (e->fail)
        return ms_err_set(err, MS_EINVAL, "the editor said no");
    m->age = e->age;
    if (e->rename) {
        free(m->original_name);
        m->original_name = strdup(e->rename);
    }
    if (e->label) {
        char **grown = realloc(m->labels, (size_t)(m->n_labels + 1) * sizeof *grown);
        assert_non_null(grown);
        m->labels = grown;
        m->labels[m->n_labels++] = strdup(e->label);
    }
    return 0;
}

/* What an edit leaves is checked like an ingest's metadata, and a refused
 * edit leaves the image as it was. */
static void t_edit_meta_refused(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    char *l1[] = {"Mass"};
    store_meta m1 = meta_of("keep.png", "P1", 50, 'F', "PA", l1, 1, NULL, 0);
    titem t;
    titem_make(&t, 22, 300, DIM, &m1, 0);
    int64_t id;
    int was_new;
    ingest_ok(f, &t, 1, &id, &was_new);
    ms_err err = {0};

    edit_probe e = {.fail = 1, .age = 60};
    assert_int_equal(store_edit_meta(f->s, id, probe_edit, &e, &err), MS_EINVAL);
    assert_string_equal(err.msg, "the editor said no");
    e = (edit_probe){.age = 201};
    assert_int_equal(store_edit_meta(f->s, id, probe_edit, &e, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "age 201"));
    char idname[40];
    snprintf(idname, sizeof idname, "image %lld", (long long)id);
    assert_non_null(strstr(err.msg, idname));
    e = (edit_probe){.age = 60, .label = "bad \xff label"};
    assert_int_equal(store_edit_meta(f->s, id, probe_edit, &e, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "label 2"));
    char long_label[STORE_MAX_TEXT + 2];
    memset(long_label, 'x', sizeof long_label - 1);
    long_label[sizeof long_label - 1] = '\0';
    e = (edit_probe){.age = 60, .label = long_label};
    assert_int_equal(store_edit_meta(f->s, id, probe_edit, &e, &err), MS_EINVAL);
    store_meta got = stored_meta(f, id);
    assert_int_equal(got.age, 50);
    assert_int_equal(got.n_labels, 1);
    store_meta_free(&got);

    /* the file name is the image's first one: an edit of it is dropped */
    e = (edit_probe){.age = 61, .rename = "other.png"};
    assert_int_equal(store_edit_meta(f->s, id, probe_edit, &e, &err), 0);
    got = stored_meta(f, id);
    assert_int_equal(got.age, 61);
    assert_string_equal(got.original_name, "keep.png");
    store_meta_free(&got);
    assert_int_equal(store_has_name(f->s, "other.png", &err), 0);
    e = (edit_probe){.age = 61};
    assert_int_equal(store_edit_meta(f->s, id, probe_edit, &e, &err), 1);
    assert_int_equal(store_edit_meta(f->s, id + 5, probe_edit, &e, &err), MS_ENOTFOUND);
    assert_int_equal(store_edit_meta(f->s, id, NULL, &e, &err), MS_EINVAL);
    assert_int_equal(store_patch_meta(f->s, id, NULL, &err), MS_EINVAL);
    check_sound(f);
    titem_free(&t);
}

/* Two handles add labels to one image at the same time: with each edit a
 * read-modify-write in one transaction, none is lost. */
typedef struct label_adder {
    const char *uri;
    int64_t id;
    char prefix;
    int n, failures;
    char msg[512];
} label_adder;

static void *add_labels_thread(void *arg)
{
    label_adder *a = arg;
    store *s = NULL;
    ms_err err = {0};
    if (store_open(a->uri, &s, &err) != 0) {
        a->failures = a->n;
        snprintf(a->msg, sizeof a->msg, "%s", err.msg);
        return NULL;
    }
    for (int i = 0; i < a->n; i++) {
        char label[16];
        snprintf(label, sizeof label, "%c%02d", a->prefix, i);
        const char *add[] = {label};
        store_meta_patch p;
        store_meta_patch_init(&p);
        p.add_labels = add, p.n_add_labels = 1;
        if (store_patch_meta(s, a->id, &p, &err) != 0) {
            a->failures++;
            snprintf(a->msg, sizeof a->msg, "%s", err.msg);
        }
    }
    store_close(s);
    return NULL;
}

static void t_edit_meta_concurrent(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    titem t;
    titem_make(&t, 23, 300, DIM, NULL, 0);
    int64_t id;
    int was_new;
    ingest_ok(f, &t, 1, &id, &was_new);
    label_adder a[2] = {{f->uri, id, 'a', 60, 0, ""}, {f->uri, id, 'b', 60, 0, ""}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, add_labels_thread, &a[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++)
        if (a[i].failures)
            fail_msg("%d edits failed: %s", a[i].failures, a[i].msg);
    store_meta got = stored_meta(f, id);
    assert_int_equal(got.n_labels, 120);
    store_meta_free(&got);
    check_sound(f);
    titem_free(&t);
}

/* store_meta_same compares as the store keeps metadata. */
static void t_meta_same(void **state)
{
    (void)state;
    char *la[] = {"Mass", "mass", "Effusion"}, *lb[] = {"Mass", "Effusion"}, *lc[] = {"Effusion", "Mass"};
    store_kv ka[] = {{"k", "1"}, {"k", "2"}, {"j", "x"}}, kb[] = {{"j", "x"}, {"k", "2"}};
    store_meta a = meta_of("a", "P", 5, 'M', "pa", la, 3, ka, 3);
    store_meta b = meta_of("b", "P", 5, 'M', "PA", lb, 2, kb, 2);
    assert_true(store_meta_same(&a, &b));
    b.labels = lc;
    assert_false(store_meta_same(&a, &b));  /* order: the first label is the primary finding */
    assert_true(store_labels_same_set(&a, &b) && store_labels_same_set(&b, &a)); /* but the same findings */
    b.n_labels = 1;
    assert_false(store_labels_same_set(&a, &b) || store_labels_same_set(&b, &a));
    b.n_labels = 2;
    b.labels = lb;
    kb[1].value = "1";
    assert_false(store_meta_same(&a, &b));  /* a repeated key keeps its last value */
    kb[1].value = "2";
    b.n_kv = 1;
    assert_false(store_meta_same(&a, &b));
    b.n_kv = 2;
    b.patient_id = "";
    a.patient_id = NULL;
    assert_true(store_meta_same(&a, &b));
    b.age = 6;
    assert_false(store_meta_same(&a, &b));
    b.age = 5, b.sex = 'F';
    assert_false(store_meta_same(&a, &b));
    b.sex = 'M', b.view = NULL;
    assert_false(store_meta_same(&a, &b));
    b.view = "pA";
    assert_true(store_meta_same(&a, &b));
    store_meta c;
    ms_err err = {0};
    assert_int_equal(store_meta_copy(&c, &a, &err), 0);
    assert_true(store_meta_same(&a, &c));
    assert_string_equal(c.original_name, "a");
    assert_int_equal(c.n_kv, 3);
    store_meta_free(&c);
}

static void t_label_set_and_batch_duplicates(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    /* Labels are a set, compared without case: the first spelling is kept. */
    char *dup_labels[] = {"Effusion", "effusion", "EFFUSION", "Mass"};
    store_kv dup_kv[] = {{"k", "first"}, {"k", "last"}};
    store_meta m1 = meta_of("x.png", "P1", 30, 0, NULL, dup_labels, 4, dup_kv, 2);
    char *l2[] = {"Nodule"};
    store_meta m2 = meta_of("y.png", "P2", 31, 0, NULL, l2, 1, NULL, 0);
    titem t[2];
    titem_make(&t[0], 30, 400, DIM, &m1, 0);
    titem_make(&t[1], 30, 400, DIM, &m2, 0);  /* the same bytes */
    int64_t ids[2];
    int was_new[2];
    ingest_ok(f, t, 2, ids, was_new);
    assert_int_equal(ids[0], ids[1]);
    assert_int_equal(was_new[0], 1);
    assert_int_equal(was_new[1], 0);
    assert_int_equal(count(f), 1);
    ms_err err = {0};
    store_meta got;
    assert_int_equal(store_get_meta(f->s, ids[0], &got, &err), 0);
    assert_string_equal(got.patient_id, "P2");  /* the later item wins */
    assert_int_equal(got.n_labels, 1);
    store_meta_free(&got);

    t[0].it.meta = &m1;
    ingest_ok(f, t, 1, ids, was_new);
    assert_int_equal(store_get_meta(f->s, ids[0], &got, &err), 0);
    assert_int_equal(got.n_labels, 2);
    assert_string_equal(got.labels[0], "Effusion");
    assert_string_equal(got.labels[1], "Mass");
    assert_int_equal(got.n_kv, 1);
    assert_string_equal(got.kv[0].value, "last");
    store_meta_free(&got);
    check_sound(f);
    titem_free(&t[0]);
    titem_free(&t[1]);
}

static void t_delete(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    char *labels[] = {"Mass"};
    store_kv kv[] = {{"site", "A"}};
    store_meta m = meta_of("gone.png", "P1", 40, 'M', "AP", labels, 1, kv, 1);
    titem t[2];
    titem_make(&t[0], 40, 300, DIM, &m, 1);
    titem_make(&t[1], 41, 300, DIM, NULL, 1);
    int64_t ids[2];
    int was_new[2];
    ingest_ok(f, t, 2, ids, was_new);
    uint64_t g = generation(f);
    ms_err err = {0};
    assert_int_equal(store_delete(f->s, ids[0], &err), 0);
    assert_int_equal(generation(f), g + 1);
    assert_int_equal(count(f), 1);

    store_image_info info;
    uint8_t *bytes;
    size_t len;
    char mime[32];
    store_meta got;
    float vec[8];
    assert_int_equal(store_get_info(f->s, ids[0], &info, &err), MS_ENOTFOUND);
    assert_int_equal(store_get_image(f->s, ids[0], &bytes, &len, mime, &err), MS_ENOTFOUND);
    assert_int_equal(store_get_thumbnail(f->s, ids[0], &bytes, &len, mime, &err), MS_ENOTFOUND);
    assert_int_equal(store_get_meta(f->s, ids[0], &got, &err), MS_ENOTFOUND);
    assert_int_equal(store_get_vector(f->s, ids[0], vec, DIM, &err), MS_ENOTFOUND);
    assert_int_equal(store_has_name(f->s, "gone.png", &err), 0);
    static const char *const tables[] = {"images", "originals", "thumbnails", "metadata", "labels",
                                         "kv", "vectors", "image_names"};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM %s WHERE %s = %lld", tables[i],
                 i == 0 ? "id" : "image_id", (long long)ids[0]);
        if (raw_int(f, sql) != 0)
            fail_msg("%s still holds rows of the deleted image", tables[i]);
    }
    assert_int_equal(raw_int(f, "SELECT count(*) FROM vectors"), 1);  /* the other is intact */

    assert_int_equal(store_delete(f->s, ids[0], &err), MS_ENOTFOUND);
    assert_int_equal(generation(f), g + 1);
    /* Ids are never reused: a persisted index can't confuse old and new. */
    titem t2;
    titem_make(&t2, 42, 300, DIM, NULL, 0);
    int64_t id3;
    ingest_ok(f, &t2, 1, &id3, was_new);
    assert_true(id3 > ids[1]);
    check_sound(f);
    titem_free(&t[0]);
    titem_free(&t[1]);
    titem_free(&t2);
}

/* ---- filters ---- */

typedef struct filter_case {
    const char *expr;
    int expect[9];  /* indices into the dataset, -1 terminated */
} filter_case;

static void expect_ids(fixture *f, const char *expr, const int64_t *ids, const int *expect)
{
    store_filter flt;
    ms_err err = {0};
    if (store_filter_parse(expr, &flt, &err) != 0)
        fail_msg("parse '%s': %s", expr, err.msg);
    int64_t *got = NULL;
    size_t n = 0;
    if (store_filter_ids(f->s, &flt, &got, &n, &err) != 0)
        fail_msg("filter '%s': %s", expr, err.msg);
    size_t want = 0;
    while (expect[want] >= 0)
        want++;
    int ok = n == want;
    for (size_t i = 0; ok && i < n; i++)
        ok = got[i] == ids[expect[i]];
    if (!ok) {
        char line[256] = "";
        for (size_t i = 0; i < n; i++)
            snprintf(line + strlen(line), sizeof line - strlen(line), " %lld", (long long)got[i]);
        fail_msg("filter '%s': got %zu ids (%s), want %zu", expr, n, line, want);
    }
    free(got);
    store_filter_free(&flt);
}

static void t_filters(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    char *l0[] = {"Effusion", "Mass"}, *l1[] = {"Effusion"}, *l2[] = {"Pneumonia"},
         *l3[] = {"No Finding"}, *l4[] = {"effusion", "Pneumonia"}, *l6[] = {"Mass", "Nodule"};
    store_kv k0[] = {{"site", "A"}}, k1[] = {{"site", "B"}}, k2[] = {{"site", "A"}, {"followup", "2"}},
             k6[] = {{"site", "C"}};
    store_meta m[8] = {
        meta_of("0", "P1", 45, 'F', "PA", l0, 2, k0, 1),
        meta_of("1", "P1", 46, 'F', "AP", l1, 1, k1, 1),
        meta_of("2", "P2", 60, 'M', "PA", l2, 1, k2, 2),
        meta_of("3", "P3", -1, 'M', "LL", l3, 1, NULL, 0),
        meta_of("4", NULL, 30, 'F', "pa", l4, 2, k0, 1),
        meta_of("5", "P4", 80, 0, NULL, NULL, 0, NULL, 0),
        meta_of("6", "P5", 40, 'F', "AP", l6, 2, k6, 1),
    };
    titem t[8];
    for (int i = 0; i < 8; i++)
        titem_make(&t[i], 100 + (uint64_t)i, 200, DIM, i < 7 ? &m[i] : NULL, 0);
    int64_t ids[8];
    int was_new[8];
    ingest_ok(f, t, 4, ids, was_new);
    ingest_ok(f, t + 4, 4, ids + 4, was_new + 4);
    static const filter_case cases[] = {
        {"", {0, 1, 2, 3, 4, 5, 6, 7, -1}},
        {"   ", {0, 1, 2, 3, 4, 5, 6, 7, -1}},
        {"labels:Effusion", {0, 1, 4, -1}},
        {"labels:effusion", {0, 1, 4, -1}},
        {"label:EFFUSION+mass", {0, -1}},
        {"labels:Mass|Pneumonia", {0, 2, 4, 6, -1}},
        {"labels:\"No Finding\"", {3, -1}},
        {"labels:\"no finding\"|Nodule", {3, 6, -1}},
        {"labels:Effusion labels:Pneumonia", {4, -1}},
        {"labels:Effusion|Mass labels:Nodule", {6, -1}},
        {"labels:Nothing", {-1}},
        {"sex:F", {0, 1, 4, 6, -1}},
        {"sex:male", {2, 3, -1}},
        {"age:40-60", {0, 1, 2, 6, -1}},
        {"age:61-", {5, -1}},
        {"age:-40", {4, 6, -1}},
        {"age:45", {0, -1}},
        {"age:0-200", {0, 1, 2, 4, 5, 6, -1}},  /* unknown ages never match */
        {"view:PA", {0, 2, 4, -1}},
        {"view:pa|ll", {0, 2, 3, 4, -1}},
        {"patient:P1", {0, 1, -1}},
        {"-patient:P1", {2, 3, 4, 5, 6, 7, -1}},  /* unknown patients are not P1 */
        {"site=A", {0, 2, 4, -1}},
        {"site=A followup=2", {2, -1}},
        {"site=a", {-1}},  /* key/values match exactly */
        {"labels:Effusion sex:F age:40-60 view:PA", {0, -1}},
        {"labels:Effusion -patient:P1", {4, -1}},
        {"\tsex:F\n  view:AP  ", {1, 6, -1}},
        {"patient:\"P1' OR '1'='1\"", {-1}},
        {"site=\"A' OR 1=1 --\"", {-1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_ids(f, cases[i].expr, ids, cases[i].expect);

    /* A filter built by hand gets the same checks as a parsed one. */
    store_filter flt;
    store_filter_init(&flt);
    int64_t *got = NULL;
    size_t n = 0;
    ms_err err = {0};
    flt.age_min = 300;
    assert_int_equal(store_filter_ids(f->s, &flt, &got, &n, &err), MS_EINVAL);
    flt.age_min = 50, flt.age_max = 40;
    assert_int_equal(store_filter_ids(f->s, &flt, &got, &n, &err), MS_EINVAL);
    store_filter_init(&flt);
    flt.sex = 'X';
    assert_int_equal(store_filter_ids(f->s, &flt, &got, &n, &err), MS_EINVAL);
    store_filter_init(&flt);
    char *bad_utf8[] = {"\xff\xfe"};
    flt.labels_any = bad_utf8;
    flt.n_labels_any = 1;
    assert_int_equal(store_filter_ids(f->s, &flt, &got, &n, &err), MS_EINVAL);
    assert_null(got);
    for (int i = 0; i < 8; i++)
        titem_free(&t[i]);
}

static void t_bad_filters(void **state)
{
    (void)fx(state);
    static const char *const bad[] = {
        "labels", "labels:", "labels:A|", "labels:|A", "labels:A|B+C", "labels:A|B labels:C|D",
        "sex:X", "sex:", "sex:F sex:M", "age:abc", "age:40-30", "age:-", "age:201", "age:1000-",
        "age:4 0", "age:40-60-70", "view:", "view:PA view:AP", "patient:", "-sex:F", "-labels:A",
        "-k=v", "colour:red", "=v", "justaword", "labels:\"unclosed", "patient:A patient:B",
        "labels:\xff\xfe",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        store_filter flt;
        ms_err err = {0};
        int rc = store_filter_parse(bad[i], &flt, &err);
        if (rc != MS_EINVAL)
            fail_msg("'%s' parsed (rc %d)", bad[i], rc);
        if (!strstr(err.msg, "bad filter term"))
            fail_msg("'%s': message does not name the term: %s", bad[i], err.msg);
        /* f is empty again: freeing it is harmless. */
        assert_int_equal(flt.n_labels_any + flt.n_labels_all + flt.n_views + flt.n_kv, 0);
        assert_null(flt.patient_id);
        store_filter_free(&flt);
    }
    store_filter flt;
    ms_err err = {0};
    assert_int_equal(store_filter_parse("colour:red", &flt, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "'colour:red'"));
    /* A parse that works fills exactly what it says. */
    assert_int_equal(store_filter_parse("labels:A|\"B C\" labels:D+e sex:female age:-60 view:pa|Ap "
                                        "patient:\"x y\" -patient:z k=\"v=1 | 2\" k2=", &flt, &err), 0);
    assert_int_equal(flt.n_labels_any, 2);
    assert_string_equal(flt.labels_any[1], "B C");
    assert_int_equal(flt.n_labels_all, 2);
    assert_string_equal(flt.labels_all[1], "e");
    assert_int_equal(flt.sex, 'F');
    assert_int_equal(flt.age_min, -1);
    assert_int_equal(flt.age_max, 60);
    assert_int_equal(flt.n_views, 2);
    assert_string_equal(flt.views[1], "AP");
    assert_string_equal(flt.patient_id, "x y");
    assert_string_equal(flt.exclude_patient, "z");
    assert_int_equal(flt.n_kv, 2);
    assert_string_equal(flt.kv[0].value, "v=1 | 2");
    assert_string_equal(flt.kv[1].value, "");
    store_filter_free(&flt);
    assert_int_equal(store_filter_parse("labels:\"say \\\"hi\\\" \\\\ bye\"", &flt, &err), 0);
    assert_string_equal(flt.labels_all[0], "say \"hi\" \\ bye");
    store_filter_free(&flt);
    assert_int_equal(store_filter_parse(NULL, &flt, &err), 0);
    assert_int_equal(flt.age_min, -1);
    store_filter_free(&flt);
    /* A huge expression is refused, not parsed slowly. */
    size_t big = 70000;
    char *huge = malloc(big + 1);
    assert_non_null(huge);
    memset(huge, 'a', big);
    huge[big] = '\0';
    assert_int_equal(store_filter_parse(huge, &flt, &err), MS_EINVAL);
    free(huge);
}

static void t_injection_values(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    /* Values that would hurt if they were ever spliced into SQL. */
    static char *const evil[] = {
        "x'); DROP TABLE images; --", "\" OR 1=1 --", "%", "_", "\\", "'", "''", "; DELETE FROM kv",
        "Robert'); DROP TABLE labels;--", "\xc3\xa9panchement \xe2\x80\x94 \xf0\x9f\xa9\xbb", "$1", "?",
    };
    enum { N = sizeof evil / sizeof evil[0] };
    titem t[N];
    store_meta m[N];
    store_kv kv[N];
    char *labels[N][1];
    for (int i = 0; i < N; i++) {
        labels[i][0] = evil[i];
        kv[i] = (store_kv){evil[i], evil[(i + 1) % N]};
        m[i] = meta_of(evil[i], evil[i], 40, 'F', evil[i], labels[i], 1, &kv[i], 1);
        titem_make(&t[i], 200 + (uint64_t)i, 100, DIM, &m[i], 0);
    }
    int64_t ids[N];
    int was_new[N];
    ingest_ok(f, t, N, ids, was_new);
    assert_int_equal(count(f), N);
    ms_err err = {0};
    for (int i = 0; i < N; i++) {
        store_meta got;
        assert_int_equal(store_get_meta(f->s, ids[i], &got, &err), 0);
        assert_string_equal(got.patient_id, evil[i]);
        assert_string_equal(got.original_name, evil[i]);
        assert_string_equal(got.labels[0], evil[i]);
        assert_string_equal(got.kv[0].key, evil[i]);
        assert_string_equal(got.kv[0].value, evil[(i + 1) % N]);
        store_meta_free(&got);
        assert_int_equal(store_has_name(f->s, evil[i], &err), 1);

        /* Each value, used as a filter, finds exactly its own image. */
        store_filter flt;
        store_filter_init(&flt);
        flt.patient_id = evil[i];
        int64_t *got_ids = NULL;
        size_t n = 0;
        assert_int_equal(store_filter_ids(f->s, &flt, &got_ids, &n, &err), 0);
        assert_int_equal(n, 1);
        assert_int_equal(got_ids[0], ids[i]);
        free(got_ids);
        store_filter_init(&flt);
        flt.labels_all = labels[i];
        flt.n_labels_all = 1;
        flt.kv = &kv[i];
        flt.n_kv = 1;
        assert_int_equal(store_filter_ids(f->s, &flt, &got_ids, &n, &err), 0);
        assert_int_equal(n, 1);
        assert_int_equal(got_ids[0], ids[i]);
        free(got_ids);
    }
    assert_int_equal(store_has_name(f->s, "x') OR 1=1 --", &err), 0);
    assert_int_equal(count(f), N);
    check_sound(f);
    for (int i = 0; i < N; i++)
        titem_free(&t[i]);
}

/* ---- vectors ---- */

typedef struct collected {
    int64_t ids[256];
    float first[256];
    int n, stop_after;
    int dim;
    uint8_t bits[8 * 4];  /* the bytes of the first vector seen */
} collected;

static int collect(void *ctx, int64_t id, const float *vec, int dim)
{
    collected *c = ctx;
    if (c->n == 0)
        memcpy(c->bits, vec, sizeof c->bits);
    c->dim = dim;
    c->ids[c->n] = id;
    c->first[c->n] = vec[0];
    c->n++;
    return c->stop_after && c->n >= c->stop_after;
}

static void t_vectors_bit_exact(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    titem t;
    titem_make(&t, 300, 100, DIM, NULL, 0);
    float special[8] = {-0.0f, FLT_MIN, 1e-45f /* the smallest denormal */, FLT_MAX, -FLT_MAX,
                        0.1f, -1.0f / 3.0f, 0};
    uint32_t bits = 0x3F8CCCCD;  /* an arbitrary pattern */
    memcpy(&special[7], &bits, 4);
    memcpy(t.vec, special, sizeof special);
    int64_t id;
    int was_new;
    ingest_ok(f, &t, 1, &id, &was_new);
    float back[8];
    ms_err err = {0};
    assert_int_equal(store_get_vector(f->s, id, back, DIM, &err), 0);
    assert_memory_equal(back, special, sizeof special);
    collected c = {0};
    assert_int_equal(store_each_vector(f->s, collect, &c, &err), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.dim, DIM);
    assert_memory_equal(c.bits, special, sizeof special);
    /* The stored bytes are little-endian float32, whatever the host. */
    if (f->kind == SQLITE) {
        assert_int_equal(raw_int(f, "SELECT hex(substr(vector, 29, 4)) = 'CDCC8C3F' FROM vectors"), 1);
    } else {
        assert_int_equal(raw_int(f, "SELECT (substring(vector from 29 for 4) = '\\xcdcc8c3f'::bytea)::int "
                                    "FROM vectors"), 1);
    }

    float repl[8];
    for (int i = 0; i < 8; i++)
        repl[i] = (float)i / 7.0f;
    uint64_t g = generation(f);
    assert_int_equal(store_set_vector(f->s, id, repl, DIM, &err), 0);
    assert_int_equal(generation(f), g + 1);
    assert_int_equal(store_get_vector(f->s, id, back, DIM, &err), 0);
    assert_memory_equal(back, repl, sizeof repl);
    assert_int_equal(store_set_vector(f->s, id + 99, repl, DIM, &err), MS_ENOTFOUND);
    assert_int_equal(store_set_vector(f->s, id, repl, DIM - 1, &err), MS_EINVAL);
    assert_int_equal(store_get_vector(f->s, id, back, DIM - 1, &err), MS_EINVAL);
    repl[3] = NAN;
    assert_int_equal(store_set_vector(f->s, id, repl, DIM, &err), MS_EINVAL);
    titem bad;
    titem_make(&bad, 301, 100, DIM, NULL, 0);
    bad.vec[5] = INFINITY;
    assert_int_equal(store_ingest(f->s, &bad.it, 1, &id, &was_new, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "not finite"));
    assert_int_equal(count(f), 1);
    titem_free(&bad);
    titem_free(&t);
}

static void t_each_vector_order(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    enum { N = 40 };
    titem t[N];
    int64_t ids[N];
    int was_new[N];
    for (int i = 0; i < N; i++)
        titem_make(&t[i], 400 + (uint64_t)i, 50, DIM, NULL, 0);
    ingest_ok(f, t, 15, ids, was_new);
    ingest_ok(f, t + 15, 25, ids + 15, was_new + 15);
    ms_err err = {0};
    for (int i = 0; i < N; i += 7)
        assert_int_equal(store_delete(f->s, ids[i], &err), 0);
    collected c = {0};
    assert_int_equal(store_each_vector(f->s, collect, &c, &err), 0);
    int64_t *list;
    size_t n;
    assert_int_equal(store_list_ids(f->s, &list, &n, &err), 0);
    assert_int_equal((size_t)c.n, n);
    assert_int_equal(n, N - 6);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(c.ids[i], list[i]);
        if (i > 0)
            assert_true(list[i] > list[i - 1]);
    }
    /* Each vector comes with its own id. */
    for (int i = 0, k = 0; i < N; i++) {
        if (i % 7 == 0)
            continue;
        assert_int_equal(c.ids[k], ids[i]);
        assert_memory_equal(&c.first[k], &t[i].vec[0], sizeof(float));
        k++;
    }
    free(list);
    collected stop = {.stop_after = 5};
    assert_int_equal(store_each_vector(f->s, collect, &stop, &err), 0);
    assert_int_equal(stop.n, 5);
    /* After a forced model change, only the new model's vectors are listed. */
    assert_int_equal(store_use_model(f->s, "other", DIM, 1, &err), 0);
    collected none = {0};
    assert_int_equal(store_each_vector(f->s, collect, &none, &err), 0);
    assert_int_equal(none.n, 0);
    assert_int_equal(store_check(f->s, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "another model"));
    for (int i = 0; i < N; i++)
        titem_free(&t[i]);
}

/* ---- integrity ---- */

static void t_check_finds_damage(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    titem t[3];
    int64_t ids[3];
    int was_new[3];
    for (int i = 0; i < 3; i++)
        titem_make(&t[i], 500 + (uint64_t)i, 64, DIM, NULL, 0);
    ingest_ok(f, t, 3, ids, was_new);
    check_sound(f);
    ms_err err = {0};
    char sql[128], id_text[32];
    snprintf(id_text, sizeof id_text, "image %lld", (long long)ids[1]);

    snprintf(sql, sizeof sql, "DELETE FROM vectors WHERE image_id = %lld", (long long)ids[1]);
    raw_exec(f, sql);
    assert_int_equal(store_check(f->s, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, id_text));
    assert_non_null(strstr(err.msg, "no vector"));
    assert_int_equal(store_set_vector(f->s, ids[1], t[1].vec, DIM, &err), 0);  /* repaired */
    check_sound(f);

    snprintf(sql, sizeof sql, "DELETE FROM metadata WHERE image_id = %lld", (long long)ids[1]);
    raw_exec(f, sql);
    assert_int_equal(store_check(f->s, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "no metadata"));
    snprintf(sql, sizeof sql, "INSERT INTO metadata (image_id) VALUES (%lld)", (long long)ids[1]);
    raw_exec(f, sql);
    check_sound(f);

    snprintf(sql, sizeof sql, "UPDATE images SET bytes = 1 WHERE id = %lld", (long long)ids[2]);
    raw_exec(f, sql);
    assert_int_equal(store_check(f->s, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "recorded size"));
    snprintf(sql, sizeof sql, "UPDATE images SET bytes = 64 WHERE id = %lld", (long long)ids[2]);
    raw_exec(f, sql);

    snprintf(sql, sizeof sql, "UPDATE vectors SET vector = %s WHERE image_id = %lld",
             f->kind == SQLITE ? "x'00112233'" : "'\\x00112233'::bytea", (long long)ids[0]);
    raw_exec(f, sql);
    assert_int_equal(store_check(f->s, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "floats"));
    collected c = {0};
    assert_int_equal(store_each_vector(f->s, collect, &c, &err), MS_EFORMAT);
    for (int i = 0; i < 3; i++)
        titem_free(&t[i]);
}

static void t_bad_items_store_nothing(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    char *ok_labels[] = {"Fine"};
    char *bad_labels[] = {"Fine", "\xc0\xaf"};  /* an overlong '/' */
    char *long_label = malloc(STORE_MAX_TEXT + 2);
    assert_non_null(long_label);
    memset(long_label, 'L', STORE_MAX_TEXT + 1);
    long_label[STORE_MAX_TEXT + 1] = '\0';
    char *too_long[] = {long_label};
    store_kv empty_key[] = {{"", "v"}};
    store_meta good = meta_of("good.png", "P1", 30, 'F', "PA", ok_labels, 1, NULL, 0);
    struct {
        const char *what;
        store_meta meta;
        const char *sha, *mime;
        int width;
    } bad[] = {
        {"invalid UTF-8 label", meta_of(NULL, NULL, -1, 0, NULL, bad_labels, 2, NULL, 0), NULL, NULL, 0},
        {"label too long", meta_of(NULL, NULL, -1, 0, NULL, too_long, 1, NULL, 0), NULL, NULL, 0},
        {"empty key", meta_of(NULL, NULL, -1, 0, NULL, NULL, 0, empty_key, 1), NULL, NULL, 0},
        {"bad sex", meta_of(NULL, NULL, -1, 'X', NULL, NULL, 0, NULL, 0), NULL, NULL, 0},
        {"bad age", meta_of(NULL, NULL, 999, 0, NULL, NULL, 0, NULL, 0), NULL, NULL, 0},
        {"negative label count", meta_of(NULL, NULL, -1, 0, NULL, ok_labels, -3, NULL, 0), NULL, NULL, 0},
        {"upper-case sha", meta_of(NULL, NULL, -1, 0, NULL, NULL, 0, NULL, 0),
         "ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789", NULL, 0},
        {"short sha", meta_of(NULL, NULL, -1, 0, NULL, NULL, 0, NULL, 0), "abc", NULL, 0},
        {"empty mime", meta_of(NULL, NULL, -1, 0, NULL, NULL, 0, NULL, 0), NULL, "", 0},
        {"zero width", meta_of(NULL, NULL, -1, 0, NULL, NULL, 0, NULL, 0), NULL, NULL, -1},
    };
    ms_err err = {0};
    uint64_t g = generation(f);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        titem t[2];
        titem_make(&t[0], 600, 80, DIM, &good, 0);
        titem_make(&t[1], 601 + i, 80, DIM, &bad[i].meta, 0);
        if (bad[i].sha)
            t[1].it.sha256 = bad[i].sha;
        if (bad[i].mime)
            t[1].it.mime = bad[i].mime;
        if (bad[i].width < 0)
            t[1].it.width = 0;
        store_item items[2] = {t[0].it, t[1].it};
        int64_t ids[2] = {7, 7};
        int was_new[2];
        int rc = store_ingest(f->s, items, 2, ids, was_new, &err);
        if (rc != MS_EINVAL)
            fail_msg("%s: rc %d (%s)", bad[i].what, rc, err.msg);
        if (!strstr(err.msg, "item 1"))
            fail_msg("%s: the message does not name the item: %s", bad[i].what, err.msg);
        assert_int_equal(count(f), 0);  /* the good item of the batch is absent too */
        titem_free(&t[0]);
        titem_free(&t[1]);
    }
    assert_int_equal(generation(f), g);
    free(long_label);
}

/* Forks a writer that ingests batches of 4 forever, kills it with SIGKILL at
 * a random moment, and checks what is left: a sound collection made of whole
 * batches. */
static void t_sigkill_leaves_whole_batches(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    srand((unsigned)time(NULL));
    for (int round = 0; round < 4; round++) {
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            store *s = NULL;
            if (store_open(f->uri, &s, NULL) != 0)
                _exit(3);
            for (uint64_t b = 0;; b++) {
                titem t[4];
                store_item items[4];
                int64_t ids[4];
                int was_new[4];
                for (int i = 0; i < 4; i++) {
                    titem_make(&t[i], 10000 + (uint64_t)round * 1000000 + b * 4 + (uint64_t)i, 20000,
                               DIM, NULL, 1);
                    items[i] = t[i].it;
                }
                if (store_ingest(s, items, 4, ids, was_new, NULL) != 0)
                    _exit(4);
                for (int i = 0; i < 4; i++)
                    titem_free(&t[i]);
            }
        }
        usleep(30000 + (useconds_t)(rand() % 150000));
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        if (!WIFSIGNALED(status))
            fail_msg("the writer exited by itself (status %d)", status);
        reopen(f);
        check_sound(f);
        size_t n = count(f);
        if (n % 4 != 0)
            fail_msg("round %d: %zu images, not whole batches of 4", round, n);
        assert_int_equal(raw_int(f, "SELECT count(*) FROM vectors"), (long long)n);
        assert_int_equal(raw_int(f, "SELECT count(*) FROM thumbnails"), (long long)n);
    }
    printf("after 4 SIGKILLs: %zu images, all in whole batches, check passes\n", count(f));
}

static void t_schema_newer_refused(void **state)
{
    fixture *f = fx(state);
    raw_exec(f, "UPDATE schema_version SET version = 999");
    store_close(f->s);
    f->s = NULL;
    ms_err err = {0};
    assert_int_equal(store_open(f->uri, &f->s, &err), MS_EDB);
    assert_null(f->s);
    assert_non_null(strstr(err.msg, "999"));
    assert_non_null(strstr(err.msg, "newer"));
}

static int count_vectors(void *ctx, int64_t id, const float *vec, int dim)
{
    (void)id;
    (void)vec;
    (void)dim;
    ++*(int *)ctx;
    return 0;
}

/* Values no store writes, as a tampered file or database holds them; each
 * was found by tests/fuzz/fuzz_store_db.c to crash a read or to make it
 * undefined: an empty blob (memcpy from NULL), a model dimension of 2^29
 * (a 2 GB allocation per scan, int overflow in dim * 4), a negative schema
 * version (MIGRATIONS[-1]). */
static void t_tampered_values(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    titem t;
    int64_t id;
    int was_new;
    titem_make(&t, 900, 64, DIM, NULL, 1);
    ingest_ok(f, &t, 1, &id, &was_new);
    titem_free(&t);
    ms_err err = {0};

    raw_exec(f, f->kind == SQLITE ? "UPDATE thumbnails SET data = x''" : "UPDATE thumbnails SET data = ''::bytea");
    uint8_t *bytes = NULL;
    size_t len = 99;
    char mime[32];
    assert_int_equal(store_get_thumbnail(f->s, id, &bytes, &len, mime, &err), 0);
    assert_int_equal(len, 0);
    free(bytes);

    raw_exec(f, "UPDATE models SET dim = 536936448");
    char *identity = NULL;
    int dim = 0, seen = 0;
    assert_int_equal(store_get_model(f->s, &identity, &dim, &err), MS_EFORMAT);
    assert_null(identity);
    assert_non_null(strstr(err.msg, "dimension 536936448, outside 1..65536"));
    assert_int_equal(store_each_vector(f->s, count_vectors, &seen, &err), MS_EFORMAT);
    assert_int_equal(seen, 0);
    raw_exec(f, "UPDATE models SET dim = 8");
    assert_int_equal(store_each_vector(f->s, count_vectors, &seen, &err), 0);
    assert_int_equal(seen, 1);

    raw_exec(f, "UPDATE schema_version SET version = -1");
    store_close(f->s);
    f->s = NULL;
    assert_int_equal(store_open(f->uri, &f->s, &err), MS_EDB);
    assert_null(f->s);
    assert_non_null(strstr(err.msg, "schema version -1, which no medsearch writes"));
}

static void t_not_a_collection(void **state)
{
    fixture *f = fx(state);
    store_close(f->s);
    f->s = NULL;
    ms_err err = {0};
    if (f->kind == SQLITE) {
        char path[300];
        snprintf(path, sizeof path, "%s/garbage.db", f->dir);
        FILE *fp = fopen(path, "wb");
        assert_non_null(fp);
        for (int i = 0; i < 4096; i++)
            fputc((i * 7919) & 0xff, fp);
        fclose(fp);
        assert_int_equal(store_open(path, &f->s, &err), MS_EDB);
        assert_non_null(strstr(err.msg, "not a SQLite database"));
        snprintf(path, sizeof path, "%s/other.db", f->dir);
        sqlite3 *db;
        assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db, "CREATE TABLE invoices (id INTEGER)", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
        assert_int_equal(store_open(path, &f->s, &err), MS_EDB);
        assert_non_null(strstr(err.msg, "another application"));
        assert_null(f->s);
        assert_int_equal(store_open("", &f->s, &err), MS_EINVAL);
        assert_int_equal(store_open("postgresql:oops", &f->s, &err), MS_EINVAL);
    } else {
        raw_exec(f, "SET client_min_messages = warning; DROP SCHEMA public CASCADE; CREATE SCHEMA public; "
                    "CREATE TABLE images (x int)");
        assert_int_equal(store_open(f->uri, &f->s, &err), MS_EDB);
        assert_non_null(strstr(err.msg, "did not create"));
        assert_null(f->s);
    }
}

/* ---- measurement ---- */

typedef struct scan_count {
    size_t n;
    double sum;
} scan_count;

static int scan_fn(void *ctx, int64_t id, const float *vec, int dim)
{
    scan_count *c = ctx;
    c->n++;
    c->sum += vec[dim - 1] + (double)id * 0;
    return 0;
}

static size_t env_size(const char *name, size_t dflt)
{
    const char *v = getenv(name);
    return v && atol(v) > 0 ? (size_t)atol(v) : dflt;
}

typedef struct rates {
    double ingest, scan;        /* images/s, vectors/s */
    double client_us, server_us; /* CPU per ingested image; server -1 when unknown */
} rates;

/* CPU seconds this process has used. */
static double own_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* CPU seconds of the PostgreSQL backend serving the fixture's store, read
 * from /proc (a server on this machine); -1 when it cannot be read. Wall
 * time on a shared machine varies with the load; CPU per image does not. */
static double backend_cpu_s(const fixture *f)
{
    if (f->kind != POSTGRES)
        return -1;
    long long pid = raw_int(f, "SELECT coalesce(max(pid), 0) FROM pg_stat_activity "
                               "WHERE application_name = 'medsearch' AND pid <> pg_backend_pid()");
    char path[64];
    snprintf(path, sizeof path, "/proc/%lld/stat", pid);
    FILE *fp = pid > 0 ? fopen(path, "r") : NULL;
    if (!fp)
        return -1;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    const char *after = strrchr(buf, ')');  /* the command name may hold spaces */
    unsigned long long ut, st;
    if (!after || sscanf(after + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Ingests n synthetic images in batches of 16 into the fixture's empty
 * collection, then scans the vectors; returns both rates. */
static rates measure_once(fixture *f, size_t n, int dim)
{
    const size_t batch = 16, image_bytes = 40000;
    ms_err err = {0};
    assert_int_equal(store_use_model(f->s, "bench", dim, 0, &err), 0);
    char *labels[] = {"Effusion", "Infiltration", "Mass"};
    store_kv kv[] = {{"follow_up", "3"}, {"site", "A"}};
    char names[16][32];
    store_meta m[16];
    titem t[16];
    for (size_t i = 0; i < batch; i++)
        titem_make(&t[i], 0, image_bytes, dim, &m[i], 1);
    double ingest_s = 0, cpu_s = 0, server0 = backend_cpu_s(f);
    for (size_t done = 0; done < n; done += batch) {
        store_item items[16];
        int64_t ids[16];
        int was_new[16];
        size_t k = n - done < batch ? n - done : batch;
        for (size_t i = 0; i < k; i++) {
            /* New bytes per image (a new sha), the rest reused. */
            memcpy(t[i].bytes, &done, sizeof done);
            t[i].bytes[sizeof done] = (uint8_t)i;
            ms_sha256_hex(t[i].bytes, image_bytes, t[i].sha);
            snprintf(names[i], sizeof names[i], "%zu.png", done + i);
            m[i] = meta_of(names[i], "P7", 40, 'F', "PA", labels, 3, kv, 2);
            items[i] = t[i].it;
            items[i].meta = &m[i];
        }
        uint64_t t0 = ms_now_ns();
        double c0 = own_cpu_s();
        if (store_ingest(f->s, items, k, ids, was_new, &err) != 0)
            fail_msg("bench ingest: %s", err.msg);
        cpu_s += own_cpu_s() - c0;
        ingest_s += (double)(ms_now_ns() - t0) / 1e9;
    }
    double server1 = backend_cpu_s(f);
    assert_int_equal(count(f), n);
    scan_count sc = {0};
    uint64_t t0 = ms_now_ns();
    assert_int_equal(store_each_vector(f->s, scan_fn, &sc, &err), 0);
    double scan_s = (double)(ms_now_ns() - t0) / 1e9;
    assert_int_equal(sc.n, n);
    for (size_t i = 0; i < batch; i++)
        titem_free(&t[i]);
    return (rates){(double)n / ingest_s, (double)n / scan_s, cpu_s * 1e6 / (double)n,
                   server0 >= 0 && server1 >= 0 ? (server1 - server0) * 1e6 / (double)n : -1};
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Rounds alternate the backends (SQLite first, then PostgreSQL first...) so
 * that noise from other work on the machine falls on both alike. */
static void t_measure_ingest_and_scan(void **state)
{
    (void)state;
    size_t n = env_size("MEDSEARCH_STORE_BENCH_N", 400);
    int dim = (int)env_size("MEDSEARCH_STORE_BENCH_DIM", 2048);
    int rounds = (int)env_size("MEDSEARCH_STORE_BENCH_ROUNDS", 3);
    if (rounds > 15)
        rounds = 15;
    int kinds = G.pg_uri[0] ? 2 : 1;
    double ingest[2][15], scan[2][15], cpu[2][15];
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < kinds; k++) {
            backend_kind kind = (backend_kind)((r + k) % kinds);
            void *fs = NULL;
            G.current = kind;
            setup(&fs);
            rates got = measure_once(fs, n, dim);
            teardown(&fs);
            ingest[kind][r] = got.ingest;
            scan[kind][r] = got.scan;
            cpu[kind][r] = got.client_us + (got.server_us > 0 ? got.server_us : 0);
            printf("measure round %d %s: ingest %.0f images/s (CPU per image: %.0f us here", r + 1,
                   kind == SQLITE ? "sqlite" : "postgresql", got.ingest, got.client_us);
            if (kind == POSTGRES && got.server_us >= 0)
                printf(" + %.0f us in the server", got.server_us);
            printf("), each_vector %.0f vectors/s\n", got.scan);
        }
    }
    printf("measure: %zu images of 40 KB + 300 B thumbnail + %d-d vector + 3 labels + 2 key/values, "
           "batches of 16, median of %d rounds:\n", n, dim, rounds);
    double med_i[2] = {0, 0}, med_s[2] = {0, 0}, med_c[2] = {0, 0};
    for (int k = 0; k < kinds; k++) {
        med_i[k] = median(ingest[k], rounds);
        med_s[k] = median(scan[k], rounds);
        med_c[k] = median(cpu[k], rounds);
        printf("measure %-10s ingest %6.0f images/s (%4.0f us CPU/image in all)   each_vector %7.0f "
               "vectors/s (%.0f MB/s)\n",
               k == SQLITE ? "sqlite" : "postgresql", med_i[k], med_c[k], med_s[k], med_s[k] * dim * 4 / 1e6);
    }
    if (kinds == 2)
        printf("measure: PostgreSQL/SQLite ingest %.2f (target >= 0.90; by total CPU per image %.2f), "
               "each_vector %.2f\n",
               med_i[POSTGRES] / med_i[SQLITE], med_c[SQLITE] / med_c[POSTGRES], med_s[POSTGRES] / med_s[SQLITE]);
    else
        printf("measure: PostgreSQL unavailable (%s), no ratio\n", G.pg_skip);
}

/* ---- backend-specific failures ---- */

static void t_unreachable_postgres(void **state)
{
    (void)state;
    store *s = NULL;
    ms_err err = {0};
    uint64_t t0 = ms_now_ns();
    /* Port 1 on loopback: nothing listens, the connection is refused. */
    int rc = store_open("postgresql://medsearch:secret@127.0.0.1:1/nowhere?connect_timeout=5", &s, &err);
    assert_int_equal(rc, MS_EDB);
    assert_null(s);
    printf("unreachable: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "cannot connect"));
    assert_non_null(strstr(err.msg, "127.0.0.1:1"));
    assert_null(strstr(err.msg, "secret"));  /* never the password */
    assert_true(ms_elapsed_ms(t0) < 5000);
}

/* A 2 MiB tmpfs at dir when we may mount (root); 0 when mounted. */
static int mount_small_tmpfs(const char *dir, const char *opts)
{
    return mount("medsearch-test", dir, "tmpfs", 0, opts);
}

static void t_readonly_sqlite(void **state)
{
    fixture *f = *state;
    char dir[300], path[340];
    snprintf(dir, sizeof dir, "%s/ro", f->dir);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof path, "%s/collection.db", dir);
    int mounted = mount_small_tmpfs(dir, "size=4m") == 0;
    store *s = NULL;
    ms_err err = {0};
    assert_int_equal(store_open(path, &s, &err), 0);
    assert_int_equal(store_use_model(s, "m", DIM, 0, &err), 0);
    store_close(s);
    s = NULL;
    if (mounted) {
        /* Root ignores file modes: make the whole file system read-only. */
        assert_int_equal(mount(NULL, dir, NULL, MS_REMOUNT | MS_RDONLY, NULL), 0);
    } else if (geteuid() != 0) {
        assert_int_equal(chmod(path, 0444), 0);
    } else {
        umount(dir);
        printf("skip: running as root without permission to mount a read-only file system\n");
        skip();
    }
    int rc = store_open(path, &s, &err);
    printf("read-only: %s\n", err.msg);
    assert_int_equal(rc, MS_EIO);
    assert_null(s);
    assert_non_null(strstr(err.msg, "read-only"));
    assert_non_null(strstr(err.msg, path));
    if (mounted)
        assert_int_equal(umount(dir), 0);
}

/* Fills the database until the disk is full; checks the failing batch left
 * nothing and the collection still opens, checks and counts right. */
static void fill_until_full(const char *path, const char *how)
{
    store *s = NULL;
    ms_err err = {0};
    assert_int_equal(store_open(path, &s, &err), 0);
    assert_int_equal(store_use_model(s, "m", DIM, 0, &err), 0);
    size_t stored = 0;
    int rc = 0;
    for (uint64_t b = 0; b < 200 && rc == 0; b++) {
        titem t[3];
        store_item items[3];
        int64_t ids[3];
        int was_new[3];
        for (int i = 0; i < 3; i++) {
            titem_make(&t[i], 7000 + b * 3 + (uint64_t)i, 60000, DIM, NULL, 1);
            items[i] = t[i].it;
        }
        rc = store_ingest(s, items, 3, ids, was_new, &err);
        if (rc == 0)
            stored += 3;
        for (int i = 0; i < 3; i++)
            titem_free(&t[i]);
    }
    printf("disk full (%s) after %zu images: %s\n", how, stored, err.msg);
    assert_int_equal(rc, MS_EIO);
    assert_non_null(strstr(err.msg, "full") ? strstr(err.msg, "full") : strstr(err.msg, "large"));
    assert_true(stored > 0);
    size_t n = 0;
    assert_int_equal(store_count(s, &n, &err), 0);
    assert_int_equal(n, stored);
    store_close(s);
    s = NULL;
    assert_int_equal(store_open(path, &s, &err), 0);
    assert_int_equal(store_count(s, &n, &err), 0);
    assert_int_equal(n, stored);
    if (store_check(s, &err) != 0)
        fail_msg("after a full disk: %s", err.msg);
    store_close(s);
}

static void t_disk_full_sqlite(void **state)
{
    fixture *f = *state;
    char dir[300], path[340];
    snprintf(dir, sizeof dir, "%s/full", f->dir);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof path, "%s/collection.db", dir);
    if (mount_small_tmpfs(dir, "size=2m") == 0) {
        fill_until_full(path, "a 2 MiB tmpfs");
        assert_int_equal(umount(dir), 0);
    } else {
        printf("cannot mount a tmpfs (%s): the file-size limit stands in for a full disk\n", strerror(errno));
    }
    /* Without mounting: a file-size limit (EFBIG) on the same process. */
    char path2[340];
    snprintf(path2, sizeof path2, "%s/limited.db", f->dir);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 2 << 20;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    fill_until_full(path2, "a 2 MiB file-size limit");
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
}

/* The test's URI with libpq "options" (server settings) appended. */
static void uri_with_options(const fixture *f, const char *options, char *out, size_t cap)
{
    snprintf(out, cap, "%s%soptions=%s", f->uri, strchr(f->uri, '?') ? "&" : "?", options);
}

static void t_readonly_postgres(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    titem t;
    titem_make(&t, 800, 100, DIM, NULL, 0);
    int64_t id;
    int was_new;
    ingest_ok(f, &t, 1, &id, &was_new);
    /* A read-only session, as on a standby: opening works (the schema is
     * current), writing fails clearly and leaves nothing. */
    char uri[700];
    uri_with_options(f, "-c%20default_transaction_read_only%3Don", uri, sizeof uri);
    store *ro = NULL;
    ms_err err = {0};
    if (store_open(uri, &ro, &err) != 0)
        fail_msg("read-only open: %s", err.msg);
    titem t2;
    titem_make(&t2, 801, 100, DIM, NULL, 0);
    assert_int_equal(store_ingest(ro, &t2.it, 1, &id, &was_new, &err), MS_EIO);
    printf("read-only postgresql: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "read-only"));
    assert_int_equal(store_delete(ro, id, &err), MS_EIO);
    store_meta_patch p;
    store_meta_patch_init(&p);
    p.replace = STORE_PATCH_AGE;
    p.to.age = 7;
    assert_int_equal(store_patch_meta(ro, id, &p, &err), MS_EIO);
    size_t n = 0;
    assert_int_equal(store_count(ro, &n, &err), 0);  /* reading still works */
    assert_int_equal(n, 1);
    store_close(ro);
    assert_int_equal(count(f), 1);
    check_sound(f);
    titem_free(&t);
    titem_free(&t2);
}

/* The collection's tables on a 3 MiB tmpfs tablespace: the server's disk
 * fills, its own files (WAL) do not. Needs root (mount) and a server we
 * started (the tablespace directory must belong to its user). */
static void t_disk_full_postgres(void **state)
{
    fixture *f = fx(state);
    if (!G.pg_dir[0] || geteuid() != 0) {
        printf("skip: needs root and the test's own PostgreSQL server\n");
        skip();
    }
    char dir[600];
    snprintf(dir, sizeof dir, "%s/small-tablespace", G.pg_dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    if (mount_small_tmpfs(dir, "size=3m,mode=0700") != 0) {
        rmdir(dir);
        printf("skip: cannot mount a tmpfs: %s\n", strerror(errno));
        skip();
    }
    char cmd[1400], sql[700], uri[700];
    snprintf(cmd, sizeof cmd, "chown \"$(stat -c %%U '%s')\" '%s'", G.pg_dir, dir);
    assert_int_equal(system(cmd), 0);
    store_close(f->s);
    f->s = NULL;
    raw_exec(f, "SET client_min_messages = warning; DROP SCHEMA public CASCADE; CREATE SCHEMA public");
    snprintf(sql, sizeof sql, "CREATE TABLESPACE ms_small LOCATION '%s'", dir);
    raw_exec(f, sql);
    uri_with_options(f, "-c%20default_tablespace%3Dms_small", uri, sizeof uri);
    store *s = NULL;
    ms_err err = {0};
    int rc = store_open(uri, &s, &err);
    if (rc != 0)
        fail_msg("open on the small tablespace: %s", err.msg);
    assert_int_equal(store_use_model(s, "m", DIM, 0, &err), 0);
    size_t stored = 0;
    for (uint64_t b = 0; b < 200 && rc == 0; b++) {
        titem t[3];
        store_item items[3];
        int64_t ids[3];
        int was_new[3];
        for (int i = 0; i < 3; i++) {
            titem_make(&t[i], 9000 + b * 3 + (uint64_t)i, 60000, DIM, NULL, 1);
            items[i] = t[i].it;
        }
        rc = store_ingest(s, items, 3, ids, was_new, &err);
        if (rc == 0)
            stored += 3;
        for (int i = 0; i < 3; i++)
            titem_free(&t[i]);
    }
    printf("disk full (postgresql, a 3 MiB tablespace) after %zu images: %s\n", stored, err.msg);
    assert_int_equal(rc, MS_EIO);
    assert_non_null(strstr(err.msg, "disk is full"));
    assert_true(stored > 0);
    size_t n = 0;
    assert_int_equal(store_count(s, &n, &err), 0);
    assert_int_equal(n, stored);
    if (store_check(s, &err) != 0)
        fail_msg("after a full disk: %s", err.msg);
    store_close(s);
    raw_exec(f, "SET client_min_messages = warning; DROP SCHEMA public CASCADE; CREATE SCHEMA public");
    raw_exec(f, "DROP TABLESPACE ms_small");
    assert_int_equal(umount(dir), 0);
    rmdir(dir);
    reopen(f);
}

/* A server restart under an open store: the call that meets the dead
 * connection fails clearly, the next one reconnects. */
static void t_reconnect_postgres(void **state)
{
    fixture *f = fx(state);
    use_model(f, DIM);
    titem t;
    titem_make(&t, 850, 100, DIM, NULL, 0);
    int64_t id;
    int was_new;
    ms_err err = {0};
    for (int round = 0; round < 2; round++) {
        raw_exec(f, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'medsearch' AND pid <> pg_backend_pid()");
        /* Round 0 meets the dead connection in a plain query, round 1 in a
         * pipelined ingest. */
        int rc = round == 0 ? store_count(f->s, &(size_t){0}, &err)
                            : store_ingest(f->s, &t.it, 1, &id, &was_new, &err);
        assert_int_equal(rc, MS_EDB);
        printf("dropped connection: %s\n", err.msg);
        assert_non_null(strstr(err.msg, "connection"));
        assert_int_equal(count(f), 0);  /* reconnected */
    }
    ingest_ok(f, &t, 1, &id, &was_new);
    assert_int_equal(count(f), 1);
    check_sound(f);
    titem_free(&t);
}

/* ---- groups ---- */

static const char *tools_dir(void)
{
    static char dir[600];
    const char *env = getenv("MEDSEARCH_TEST_TOOLS");
    if (env)
        return env;
    /* Run from the repository root (tests/run.sh does), or from beside this
     * file. */
    if (access("tests/tools/pg_start.sh", X_OK) == 0)
        return "tests/tools";
    snprintf(dir, sizeof dir, "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (slash)
        snprintf(slash, sizeof dir - (size_t)(slash - dir), "/../tools");
    return dir;
}

static int group_sqlite(void **state)
{
    (void)state;
    G.current = SQLITE;
    return 0;
}

/* Uses $MEDSEARCH_TEST_PG, or starts a throwaway server; -1 when one should
 * have started and did not. */
static int pg_start_server(void)
{
    const char *env = getenv("MEDSEARCH_TEST_PG");
    if (env && *env) {
        snprintf(G.pg_uri, sizeof G.pg_uri, "%s", env);
        printf("PostgreSQL: using MEDSEARCH_TEST_PG\n");
        return 0;
    }
    snprintf(G.pg_dir, sizeof G.pg_dir, "%s/ms-pg-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(G.pg_dir)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        return -1;
    }
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "'%s/pg_start.sh' '%s'", tools_dir(), G.pg_dir);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    char line[512] = "";
    if (!fgets(line, sizeof line, p))
        line[0] = '\0';
    int status = pclose(p);
    line[strcspn(line, "\n")] = '\0';
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
        snprintf(G.pg_skip, sizeof G.pg_skip,
                 "PostgreSQL binaries (initdb, pg_ctl) not found by pg_start.sh; PostgreSQL cases skipped");
        printf("skip: %s\n", G.pg_skip);
        rm_rf(G.pg_dir);
        G.pg_dir[0] = '\0';
        return 0;
    }
    if (status != 0 || strncmp(line, "postgresql://", 13) != 0) {
        fprintf(stderr, "could not start PostgreSQL with %s (status %d)\n", cmd, status);
        rm_rf(G.pg_dir);
        G.pg_dir[0] = '\0';
        return -1;
    }
    snprintf(G.pg_uri, sizeof G.pg_uri, "%s", line);
    printf("PostgreSQL: started a throwaway server at %s\n", G.pg_uri);
    return 0;
}

static void pg_stop_server(void)
{
    if (G.pg_dir[0]) {
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "'%s/pg_stop.sh' '%s'", tools_dir(), G.pg_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "warning: %s failed\n", cmd);
    }
}

static int group_postgres(void **state)
{
    (void)state;
    G.current = POSTGRES;
    return 0;
}

#define SHARED_TESTS                                                                  \
    cmocka_unit_test_setup_teardown(t_open_schema, setup, teardown),                  \
    cmocka_unit_test_setup_teardown(t_migrate_from_version_1, setup, teardown),       \
    cmocka_unit_test_setup_teardown(t_migrate_from_version_2, setup, teardown),       \
    cmocka_unit_test_setup_teardown(t_migrate_from_version_3, setup, teardown),       \
    cmocka_unit_test_setup_teardown(t_migrate_from_version_4, setup, teardown),       \
    cmocka_unit_test_setup_teardown(t_center_policy, setup, teardown),                \
    cmocka_unit_test_setup_teardown(t_center_policy_hostile, setup, teardown),        \
    cmocka_unit_test_setup_teardown(t_search_qe, setup, teardown),                    \
    cmocka_unit_test_setup_teardown(t_search_qe_hostile, setup, teardown),            \
    cmocka_unit_test_setup_teardown(t_center, setup, teardown),                       \
    cmocka_unit_test_setup_teardown(t_center_hostile, setup, teardown),               \
    cmocka_unit_test_setup_teardown(t_model, setup, teardown),                        \
    cmocka_unit_test_setup_teardown(t_ingest_needs_model, setup, teardown),           \
    cmocka_unit_test_setup_teardown(t_ingest_and_dedup, setup, teardown),             \
    cmocka_unit_test_setup_teardown(t_ingest_own_ids, setup, teardown),               \
    cmocka_unit_test_setup_teardown(t_metadata_update, setup, teardown),              \
    cmocka_unit_test_setup_teardown(t_edit_meta_patch, setup, teardown),              \
    cmocka_unit_test_setup_teardown(t_edit_meta_refused, setup, teardown),            \
    cmocka_unit_test_setup_teardown(t_edit_meta_concurrent, setup, teardown),         \
    cmocka_unit_test_setup_teardown(t_label_set_and_batch_duplicates, setup, teardown), \
    cmocka_unit_test_setup_teardown(t_delete, setup, teardown),                       \
    cmocka_unit_test_setup_teardown(t_filters, setup, teardown),                      \
    cmocka_unit_test_setup_teardown(t_bad_filters, setup, teardown),                  \
    cmocka_unit_test_setup_teardown(t_injection_values, setup, teardown),             \
    cmocka_unit_test_setup_teardown(t_vectors_bit_exact, setup, teardown),            \
    cmocka_unit_test_setup_teardown(t_each_vector_order, setup, teardown),            \
    cmocka_unit_test_setup_teardown(t_check_finds_damage, setup, teardown),           \
    cmocka_unit_test_setup_teardown(t_bad_items_store_nothing, setup, teardown),      \
    cmocka_unit_test_setup_teardown(t_sigkill_leaves_whole_batches, setup, teardown), \
    cmocka_unit_test_setup_teardown(t_schema_newer_refused, setup, teardown),         \
    cmocka_unit_test_setup_teardown(t_tampered_values, setup, teardown),              \
    cmocka_unit_test_setup_teardown(t_not_a_collection, setup, teardown)

int main(void)
{
    const struct CMUnitTest shared[] = {SHARED_TESTS};
    const struct CMUnitTest errors[] = {
        cmocka_unit_test(t_unreachable_postgres),
        cmocka_unit_test(t_meta_same),
        cmocka_unit_test_setup_teardown(t_readonly_sqlite, setup, teardown),
        cmocka_unit_test_setup_teardown(t_disk_full_sqlite, setup, teardown),
    };
    const struct CMUnitTest pg_errors[] = {
        cmocka_unit_test_setup_teardown(t_readonly_postgres, setup, teardown),
        cmocka_unit_test_setup_teardown(t_disk_full_postgres, setup, teardown),
        cmocka_unit_test_setup_teardown(t_reconnect_postgres, setup, teardown),
    };
    const struct CMUnitTest measure[] = {cmocka_unit_test(t_measure_ingest_and_scan)};
    if (pg_start_server() < 0) {
        printf("PostgreSQL should be available but did not start: failing\n");
        return 1;
    }
    int failed = 0;
    /* MEDSEARCH_STORE_BENCH_ONLY=1: just the measurement (for benchmarks). */
    const char *only = getenv("MEDSEARCH_STORE_BENCH_ONLY");
    if (!only || strcmp(only, "1") != 0) {
        failed += cmocka_run_group_tests_name("store on sqlite", shared, group_sqlite, NULL);
        failed += cmocka_run_group_tests_name("store on postgresql", shared, group_postgres, NULL);
        G.current = SQLITE;
        failed += cmocka_run_group_tests_name("store errors", errors, NULL, NULL);
        failed += cmocka_run_group_tests_name("store errors on postgresql", pg_errors, group_postgres, NULL);
    }
    failed += cmocka_run_group_tests_name("store measurement", measure, NULL, NULL);
    pg_stop_server();
    return failed ? 1 : 0;
}
