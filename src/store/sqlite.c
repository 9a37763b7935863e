/*
 * sqlite.c - the embedded store: one SQLite file in WAL mode.
 *
 * Connection settings (every open): 32 KiB pages for a new file, WAL
 * journal (readers never block the writer), synchronous=NORMAL (safe in WAL:
 * a crash can lose the last commits, never corrupt), foreign keys on
 * (deleting an image cascades to its rows), a busy timeout so a second
 * process waits instead of failing at once.
 * Writes take the lock up front (BEGIN IMMEDIATE), so two writers never
 * deadlock upgrading a read lock.
 *
 * A file that is not ours is refused rather than altered: we mark our files
 * with PRAGMA application_id and only create the schema in an empty file.
 */
#include "store/store_impl.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* 'MSDB': our mark in the SQLite header. */
#define APPLICATION_ID 0x4D534442
#define BUSY_TIMEOUT_MS 10000

/* Schema migrations: MIGRATIONS[v] takes a database from version v to v + 1
 * (the runner records the new version). To change the schema, append one
 * entry, mirror it in postgres.c, and describe it in docs/store.md. */
static const char *const MIGRATIONS[] = {
    /* 0 -> 1: the first schema. */
    "CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT;"
    "INSERT INTO schema_version VALUES (0);"
    "CREATE TABLE models (id INTEGER PRIMARY KEY, identity TEXT NOT NULL UNIQUE,"
    "  dim INTEGER NOT NULL CHECK (dim > 0), created INTEGER NOT NULL) STRICT;"
    "CREATE TABLE collection (id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  model_id INTEGER REFERENCES models (id), generation INTEGER NOT NULL DEFAULT 0) STRICT;"
    "INSERT INTO collection (id) VALUES (1);"
    "CREATE TABLE images (id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL UNIQUE,"
    "  bytes INTEGER NOT NULL, mime TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,"
    "  created INTEGER NOT NULL, original_name TEXT) STRICT;"
    "CREATE TABLE originals (image_id INTEGER PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,"
    "  data BLOB NOT NULL) STRICT;"
    "CREATE TABLE image_names (name TEXT NOT NULL,"
    "  image_id INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,"
    "  PRIMARY KEY (name, image_id)) STRICT;"
    "CREATE INDEX image_names_image ON image_names (image_id);"
    "CREATE TABLE thumbnails (image_id INTEGER PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,"
    "  mime TEXT NOT NULL, data BLOB NOT NULL) STRICT;"
    "CREATE TABLE metadata (image_id INTEGER PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,"
    "  patient_id TEXT, study_date TEXT, age INTEGER, sex TEXT CHECK (sex IN ('M', 'F')),"
    "  view TEXT) STRICT;"
    "CREATE INDEX metadata_patient ON metadata (patient_id);"
    "CREATE TABLE labels (image_id INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,"
    "  label_key TEXT NOT NULL, label TEXT NOT NULL, PRIMARY KEY (image_id, label_key)) STRICT;"
    "CREATE INDEX labels_key ON labels (label_key, image_id);"
    "CREATE TABLE kv (image_id INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,"
    "  key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (image_id, key)) STRICT;"
    "CREATE INDEX kv_key_value ON kv (key, value);"
    "CREATE TABLE vectors (image_id INTEGER PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,"
    "  model_id INTEGER NOT NULL REFERENCES models (id), vector BLOB NOT NULL) STRICT;",
    /* 1 -> 2: labels keep the order they were given in (the first one is
     * the primary finding, which eval's "single" rule reads). Rows of
     * version 1 get position 0 and keep their alphabetical order. */
    "ALTER TABLE labels ADD COLUMN position INTEGER NOT NULL DEFAULT 0;",
    /* 2 -> 3: the collection's center (the mean of its vectors, float32
     * little-endian, NULL = none) and how many vectors it came from. It
     * belongs to the collection's current model: changing the model clears
     * it. Collections of version 2 have none until the engine computes it. */
    ("ALTER TABLE collection ADD COLUMN center BLOB;"
     "ALTER TABLE collection ADD COLUMN center_n INTEGER;"),
    /* 3 -> 4: the collection's centering policy: 'auto' (centred once it
     * is large enough, what version 3 did) or 'off' (plain cosine, chosen
     * by the operator). Collections of version 3 become 'auto'. */
    ("ALTER TABLE collection ADD COLUMN center_policy TEXT NOT NULL DEFAULT 'auto'"
     "  CHECK (center_policy IN ('auto', 'off'));"),
    /* 4 -> 5: the collection's query-expansion default, the neighbours a
     * search averages with its query when the request does not say (0 =
     * off, what version 4 did). */
    ("ALTER TABLE collection ADD COLUMN search_qe INTEGER NOT NULL DEFAULT 0"
     "  CHECK (search_qe BETWEEN 0 AND 100);"),
};
#define SCHEMA_VERSION ((int)(sizeof MIGRATIONS / sizeof MIGRATIONS[0]))

/* Statements prepared once per connection, on first use. */
enum stmt {
    S_MODEL, S_MODEL_BY_IDENTITY, S_INS_MODEL, S_SET_MODEL, S_BUMP, S_CENTER, S_SET_CENTER,
    S_POLICY, S_SET_POLICY, S_SEARCH_QE, S_SET_SEARCH_QE,
    S_FIND_SHA, S_INS_IMAGE, S_INS_ORIGINAL, S_INS_THUMB, S_INS_VECTOR, S_UPSERT_META,
    S_DEL_LABELS, S_INS_LABEL, S_DEL_KV, S_INS_KV, S_INS_NAME,
    S_HAS_NAME, S_INFO, S_ORIGINAL, S_THUMB, S_META, S_LABELS, S_KVS,
    S_GET_VEC, S_IMAGE_EXISTS, S_SET_VEC, S_DELETE, S_EACH_VEC, S_LIST, S_COUNT, S_GEN,
    N_STMTS
};

static const char *const SQL[N_STMTS] = {
    [S_MODEL] = "SELECT m.id, m.identity, m.dim FROM collection c JOIN models m ON m.id = c.model_id "
                "WHERE c.id = 1",
    [S_MODEL_BY_IDENTITY] = "SELECT id, dim FROM models WHERE identity = ?1",
    [S_INS_MODEL] = "INSERT INTO models (identity, dim, created) VALUES (?1, ?2, ?3)",
    [S_SET_MODEL] = "UPDATE collection SET model_id = ?1, generation = generation + 1, center = NULL, "
                    "center_n = NULL WHERE id = 1",
    [S_CENTER] = "SELECT center, center_n FROM collection WHERE id = 1",
    [S_SET_CENTER] = "UPDATE collection SET center = ?1, center_n = ?2 WHERE id = 1",
    [S_POLICY] = "SELECT center_policy FROM collection WHERE id = 1",
    [S_SET_POLICY] = "UPDATE collection SET center_policy = ?1 WHERE id = 1",
    [S_SEARCH_QE] = "SELECT search_qe FROM collection WHERE id = 1",
    [S_SET_SEARCH_QE] = "UPDATE collection SET search_qe = ?1 WHERE id = 1",
    [S_BUMP] = "UPDATE collection SET generation = generation + 1 WHERE id = 1",
    [S_FIND_SHA] = "SELECT id FROM images WHERE sha256 = ?1",
    [S_INS_IMAGE] = "INSERT INTO images (id, sha256, bytes, mime, width, height, created, original_name) "
                    "VALUES (?8, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [S_INS_ORIGINAL] = "INSERT INTO originals (image_id, data) VALUES (?1, ?2)",
    [S_INS_THUMB] = "INSERT INTO thumbnails (image_id, mime, data) VALUES (?1, ?2, ?3)",
    [S_INS_VECTOR] = "INSERT INTO vectors (image_id, model_id, vector) VALUES (?1, ?2, ?3)",
    [S_UPSERT_META] = "INSERT INTO metadata (image_id, patient_id, study_date, age, sex, view) "
                      "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (image_id) DO UPDATE SET "
                      "patient_id = excluded.patient_id, study_date = excluded.study_date, "
                      "age = excluded.age, sex = excluded.sex, view = excluded.view",
    [S_DEL_LABELS] = "DELETE FROM labels WHERE image_id = ?1",
    [S_INS_LABEL] = "INSERT INTO labels (image_id, label_key, label, position) VALUES (?1, ?2, ?3, ?4) "
                    "ON CONFLICT DO NOTHING",
    [S_DEL_KV] = "DELETE FROM kv WHERE image_id = ?1",
    [S_INS_KV] = "INSERT INTO kv (image_id, key, value) VALUES (?1, ?2, ?3) "
                 "ON CONFLICT (image_id, key) DO UPDATE SET value = excluded.value",
    [S_INS_NAME] = "INSERT INTO image_names (name, image_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    [S_HAS_NAME] = "SELECT EXISTS (SELECT 1 FROM image_names WHERE name = ?1)",
    [S_INFO] = "SELECT id, sha256, mime, width, height, created, bytes FROM images WHERE id = ?1",
    [S_ORIGINAL] = "SELECT i.mime, o.data FROM images i JOIN originals o ON o.image_id = i.id "
                   "WHERE i.id = ?1",
    [S_THUMB] = "SELECT mime, data FROM thumbnails WHERE image_id = ?1",
    [S_META] = "SELECT i.original_name, m.patient_id, m.study_date, m.age, m.sex, m.view "
               "FROM images i LEFT JOIN metadata m ON m.image_id = i.id WHERE i.id = ?1",
    [S_LABELS] = "SELECT label FROM labels WHERE image_id = ?1 ORDER BY position, label_key",
    [S_KVS] = "SELECT key, value FROM kv WHERE image_id = ?1 ORDER BY key",
    [S_GET_VEC] = "SELECT vector FROM vectors WHERE image_id = ?1",
    [S_IMAGE_EXISTS] = "SELECT 1 FROM images WHERE id = ?1",
    [S_SET_VEC] = "INSERT INTO vectors (image_id, model_id, vector) VALUES (?1, ?2, ?3) "
                  "ON CONFLICT (image_id) DO UPDATE SET model_id = excluded.model_id, "
                  "vector = excluded.vector",
    [S_DELETE] = "DELETE FROM images WHERE id = ?1",
    [S_EACH_VEC] = "SELECT v.image_id, v.vector FROM vectors v JOIN collection c ON c.id = 1 "
                   "WHERE v.model_id = c.model_id ORDER BY v.image_id",
    [S_LIST] = "SELECT id FROM images ORDER BY id",
    [S_COUNT] = "SELECT count(*) FROM images",
    [S_GEN] = "SELECT generation FROM collection WHERE id = 1",
};

typedef struct sqlite_store {
    store base;
    sqlite3 *db;
    sqlite3_stmt *st[N_STMTS];
} sqlite_store;

static sqlite_store *impl(store *s)
{
    return (sqlite_store *)s;
}

/* ---- errors ---- */

static int code_of(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_FULL: case SQLITE_IOERR: case SQLITE_READONLY: case SQLITE_CANTOPEN:
    case SQLITE_PERM:
        return MS_EIO;
    case SQLITE_BUSY: case SQLITE_LOCKED:
        return MS_EBUSY;
    case SQLITE_NOMEM:
        return MS_ENOMEM;
    default:
        return MS_EDB;
    }
}

/* Fails with the database, what we were doing and SQLite's own words (plus
 * the OS error behind an I/O failure). */
static int db_fail(sqlite_store *s, int rc, const char *doing, ms_err *err)
{
    const char *msg = s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
    int sys = s->db ? sqlite3_system_errno(s->db) : 0;
    int code = code_of(rc);
    if ((rc & 0xff) == SQLITE_FULL)
        return ms_err_set(err, code, "%s: %s: the disk is full (%s)", s->base.where, doing, msg);
    if (rc == SQLITE_IOERR_WRITE && !sys)
        return ms_err_set(err, code,
                          "%s: %s: could not write the database file (the disk is full, a file-size "
                          "limit was reached, or the device failed)",
                          s->base.where, doing);
    if (code == MS_EIO && sys)
        return ms_err_set(err, code, "%s: %s: %s (%s)", s->base.where, doing, msg, strerror(sys));
    return ms_err_set(err, code, "%s: %s: %s", s->base.where, doing, msg);
}

/* ---- statements ---- */

/* The cached statement, reset and with its bindings cleared; NULL after
 * filling err. */
static sqlite3_stmt *stmt(sqlite_store *s, enum stmt id, ms_err *err)
{
    if (!s->st[id]) {
        int rc = sqlite3_prepare_v3(s->db, SQL[id], -1, SQLITE_PREPARE_PERSISTENT, &s->st[id], NULL);
        if (rc != SQLITE_OK) {
            db_fail(s, rc, "preparing a query", err);
            return NULL;
        }
    } else {
        sqlite3_reset(s->st[id]);
        sqlite3_clear_bindings(s->st[id]);
    }
    return s->st[id];
}

/* Steps a statement that returns no rows. */
static int run(sqlite_store *s, sqlite3_stmt *st, const char *doing, ms_err *err)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : db_fail(s, rc, doing, err);
}

static int exec(sqlite_store *s, const char *sql, const char *doing, ms_err *err)
{
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : db_fail(s, rc, doing, err);
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

/* A column as a fresh string (NULL stays NULL). */
static int column_strdup(sqlite3_stmt *st, int col, char **out, ms_err *err)
{
    return store_strdup((const char *)sqlite3_column_text(st, col), out, err);
}

/* ---- transactions ---- */

static int begin_write(sqlite_store *s, ms_err *err)
{
    return exec(s, "BEGIN IMMEDIATE", "starting a write transaction", err);
}

static int commit(sqlite_store *s, ms_err *err)
{
    return exec(s, "COMMIT", "committing", err);
}

/* Rolls back whatever is open (SQLite may have done it itself after an I/O
 * error) and returns rc. */
static int rollback(sqlite_store *s, int rc)
{
    if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* ---- model ---- */

/* The collection's model inside the current transaction: *id 0 when none. */
static int read_model(sqlite_store *s, int64_t *id, char **identity, int *dim, ms_err *err)
{
    sqlite3_stmt *st = stmt(s, S_MODEL, err);
    if (!st)
        return err->code;
    *id = 0;
    *dim = 0;
    if (identity)
        *identity = NULL;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        int64_t d = sqlite3_column_int64(st, 2);
        if (store_check_model_dim(s->base.where, d, err) < 0) {
            sqlite3_reset(st);
            return err->code;
        }
        *id = sqlite3_column_int64(st, 0);
        *dim = (int)d;
        if (identity && column_strdup(st, 1, identity, err) < 0) {
            sqlite3_reset(st);
            return err->code;
        }
        rc = sqlite3_step(st);
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : db_fail(s, rc, "reading the collection's model", err);
}

static int sq_get_model(store *base, char **identity, int *dim, ms_err *err)
{
    int64_t id;
    return read_model(impl(base), &id, identity, dim, err);
}

/* The id of a model row for identity/dim, inserted when new. */
static int model_row(sqlite_store *s, const char *identity, int dim, int64_t *id, ms_err *err)
{
    sqlite3_stmt *st = stmt(s, S_MODEL_BY_IDENTITY, err);
    if (!st)
        return err->code;
    sqlite3_bind_text(st, 1, identity, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *id = sqlite3_column_int64(st, 0);
        int known_dim = sqlite3_column_int(st, 1);
        sqlite3_reset(st);
        if (known_dim != dim)
            return ms_err_set(err, MS_ECONFLICT, "%s: model %.200s is recorded with dim %d, not %d",
                              s->base.where, identity, known_dim, dim);
        return 0;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return db_fail(s, rc, "looking up a model", err);
    if (!(st = stmt(s, S_INS_MODEL, err)))
        return err->code;
    sqlite3_bind_text(st, 1, identity, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, dim);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)time(NULL));
    if ((rc = run(s, st, "recording the model", err)) < 0)
        return rc;
    *id = sqlite3_last_insert_rowid(s->db);
    return 0;
}

/* ---- center ---- */

/* Sets (bytes != NULL) or clears the center inside the current transaction. */
static int write_center(sqlite_store *s, const uint8_t *bytes, int dim, int64_t from_n, ms_err *err)
{
    sqlite3_stmt *st = stmt(s, S_SET_CENTER, err);
    if (!st)
        return err->code;
    if (bytes) {
        sqlite3_bind_blob(st, 1, bytes, dim * 4, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, from_n);
    }
    return run(s, st, bytes ? "storing the center" : "clearing the center", err);
}

/* Steps st, a query of the one collection row: 0 with the row ready, else
 * the error (st reset). */
static int step_collection_row(sqlite_store *s, sqlite3_stmt *st, const char *doing, ms_err *err)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        return 0;
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? ms_err_set(err, MS_EDB, "%s: the collection row is missing", s->base.where)
                             : db_fail(s, rc, doing, err);
}

static int sq_get_center(store *base, uint8_t **bytes, size_t *len, int64_t *from_n, ms_err *err)
{
    sqlite_store *s = impl(base);
    sqlite3_stmt *st = stmt(s, S_CENTER, err);
    if (!st)
        return err->code;
    int rc = step_collection_row(s, st, "reading the center", err);
    if (rc)
        return rc;
    if (sqlite3_column_type(st, 0) == SQLITE_NULL) {
        sqlite3_reset(st);
        return ms_err_set(err, MS_ENOTFOUND, "%s: the collection has no center", s->base.where);
    }
    /* A hostile file may hold any type here: only a blob is a center. */
    int is_blob = sqlite3_column_type(st, 0) == SQLITE_BLOB;
    int n = sqlite3_column_bytes(st, 0);
    *from_n = sqlite3_column_type(st, 1) == SQLITE_INTEGER ? sqlite3_column_int64(st, 1) : 0;
    *len = is_blob ? (size_t)n : 0;
    *bytes = malloc(n > 0 ? (size_t)n : 1);
    if (!*bytes) {
        sqlite3_reset(st);
        return ms_err_set(err, MS_ENOMEM, "out of memory reading a %d-byte center", n);
    }
    if (is_blob && n > 0)
        memcpy(*bytes, sqlite3_column_blob(st, 0), (size_t)n);
    sqlite3_reset(st);
    return 0;
}

static int sq_set_center(store *base, const uint8_t *bytes, int dim, int64_t from_n, ms_err *err)
{
    sqlite_store *s = impl(base);
    int rc = begin_write(s, err);
    if (rc < 0)
        return rc;
    if (bytes) {
        int64_t model_id;
        int model_dim;
        if ((rc = read_model(s, &model_id, NULL, &model_dim, err)) < 0)
            return rollback(s, rc);
        if (model_id == 0 || model_dim != dim)
            return rollback(s, model_id == 0
                                   ? ms_err_set(err, MS_EINVAL, "%s: a center for a collection without a model",
                                                s->base.where)
                                   : ms_err_set(err, MS_EINVAL,
                                                "%s: a %d-float center for a collection whose model has dim %d",
                                                s->base.where, dim, model_dim));
    }
    if ((rc = write_center(s, bytes, dim, from_n, err)) < 0 || (rc = commit(s, err)) < 0)
        return rollback(s, rc);
    return 0;
}

/* The policy as stored (any text a hand-edited file holds; store.c checks
 * it): a malloc'd string into *text. */
static int sq_get_center_policy(store *base, char **text, ms_err *err)
{
    sqlite_store *s = impl(base);
    sqlite3_stmt *st = stmt(s, S_POLICY, err);
    if (!st)
        return err->code;
    int rc = step_collection_row(s, st, "reading the centering policy", err);
    if (rc)
        return rc;
    /* Only text is a policy; anything else reads as "" and is refused. */
    const char *v = sqlite3_column_type(st, 0) == SQLITE_TEXT ? (const char *)sqlite3_column_text(st, 0) : "";
    *text = strdup(v ? v : "");
    sqlite3_reset(st);
    return *text ? 0 : ms_err_set(err, MS_ENOMEM, "out of memory reading the centering policy");
}

static int sq_set_center_policy(store *base, int off, ms_err *err)
{
    sqlite_store *s = impl(base);
    int rc = begin_write(s, err);
    if (rc < 0)
        return rc;
    sqlite3_stmt *st = stmt(s, S_SET_POLICY, err);
    if (!st)
        return rollback(s, err->code);
    sqlite3_bind_text(st, 1, off ? "off" : "auto", -1, SQLITE_STATIC);
    if ((rc = run(s, st, "setting the centering policy", err)) < 0 ||
        (off && (rc = write_center(s, NULL, 0, 0, err)) < 0) || (rc = commit(s, err)) < 0)
        return rollback(s, rc);
    return 0;
}

static int sq_get_search_qe(store *base, int64_t *qe, int *is_int, ms_err *err)
{
    sqlite_store *s = impl(base);
    sqlite3_stmt *st = stmt(s, S_SEARCH_QE, err);
    if (!st)
        return err->code;
    int rc = step_collection_row(s, st, "reading the query-expansion default", err);
    if (rc)
        return rc;
    *is_int = sqlite3_column_type(st, 0) == SQLITE_INTEGER;
    *qe = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return 0;
}

static int sq_set_search_qe(store *base, int qe, ms_err *err)
{
    sqlite_store *s = impl(base);
    sqlite3_stmt *st = stmt(s, S_SET_SEARCH_QE, err);
    if (!st)
        return err->code;
    sqlite3_bind_int(st, 1, qe);
    return run(s, st, "setting the query-expansion default", err);
}

static int sq_use_model(store *base, const char *identity, int dim, int force, ms_err *err)
{
    sqlite_store *s = impl(base);
    int rc = begin_write(s, err);
    if (rc < 0)
        return rc;
    int64_t cur_id, id = 0;
    int cur_dim;
    char *cur = NULL;
    if ((rc = read_model(s, &cur_id, &cur, &cur_dim, err)) < 0)
        return rollback(s, rc);
    if (cur_id && !strcmp(cur, identity) && cur_dim == dim) {
        free(cur);
        if (!force)
            return rollback(s, 0);  /* nothing to change */
        /* The same model, forced (a re-embed): its vectors are about to be
         * rewritten, so the center made from the old ones goes. */
        if ((rc = write_center(s, NULL, 0, 0, err)) < 0)
            return rollback(s, rc);
        rc = commit(s, err);
        return rc < 0 ? rollback(s, rc) : 0;
    }
    if (cur_id && !force) {
        rc = ms_err_set(err, MS_ECONFLICT,
                        "%s: the collection was built with model %.200s (dim %d), not %.200s (dim %d); "
                        "re-embed the collection to switch models",
                        s->base.where, cur, cur_dim, identity, dim);
        free(cur);
        return rollback(s, rc);
    }
    free(cur);
    sqlite3_stmt *st;
    if ((rc = model_row(s, identity, dim, &id, err)) < 0 || !(st = stmt(s, S_SET_MODEL, err)))
        return rollback(s, rc < 0 ? rc : err->code);
    sqlite3_bind_int64(st, 1, id);
    if ((rc = run(s, st, "setting the collection's model", err)) < 0)
        return rollback(s, rc);
    rc = commit(s, err);
    return rc < 0 ? rollback(s, rc) : 0;
}

/* ---- ingest ---- */

static int write_labels_kv(sqlite_store *s, int64_t id, const store_meta *m, ms_err *err)
{
    sqlite3_stmt *st;
    int rc;
    if (!(st = stmt(s, S_DEL_LABELS, err)))
        return err->code;
    sqlite3_bind_int64(st, 1, id);
    if ((rc = run(s, st, "replacing labels", err)) < 0)
        return rc;
    if (!(st = stmt(s, S_DEL_KV, err)))
        return err->code;
    sqlite3_bind_int64(st, 1, id);
    if ((rc = run(s, st, "replacing key/values", err)) < 0)
        return rc;
    char key[STORE_MAX_TEXT + 1];
    for (int i = 0; i < m->n_labels; i++) {
        if (!(st = stmt(s, S_INS_LABEL, err)))
            return err->code;
        store_fold_label(m->labels[i], key, sizeof key);
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, key, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 3, m->labels[i], -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 4, i);
        if ((rc = run(s, st, "storing a label", err)) < 0)
            return rc;
    }
    for (int i = 0; i < m->n_kv; i++) {
        if (!(st = stmt(s, S_INS_KV, err)))
            return err->code;
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, m->kv[i].key, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, m->kv[i].value, -1, SQLITE_STATIC);
        if ((rc = run(s, st, "storing a key/value", err)) < 0)
            return rc;
    }
    return 0;
}

/* The metadata row (m NULL: all unknown), then labels and key/values. */
static int write_meta(sqlite_store *s, int64_t id, const store_meta *m, ms_err *err)
{
    sqlite3_stmt *st = stmt(s, S_UPSERT_META, err);
    if (!st)
        return err->code;
    char view[STORE_MAX_TEXT + 1], sex[2] = {m ? m->sex : 0, '\0'};
    sqlite3_bind_int64(st, 1, id);
    if (m) {
        bind_text_or_null(st, 2, m->patient_id);
        bind_text_or_null(st, 3, m->study_date);
        if (m->age >= 0)
            sqlite3_bind_int(st, 4, m->age);
        bind_text_or_null(st, 5, m->sex ? sex : NULL);
        if (m->view) {
            store_fold_view(m->view, view, sizeof view);
            sqlite3_bind_text(st, 6, view, -1, SQLITE_TRANSIENT);
        }
    }
    int rc = run(s, st, "storing metadata", err);
    if (rc < 0 || !m)
        return rc;
    return write_labels_kv(s, id, m, err);
}

static int insert_blob_row(sqlite_store *s, enum stmt which, int64_t id, const char *mime,
                           const void *data, size_t len, const char *doing, ms_err *err)
{
    sqlite3_stmt *st = stmt(s, which, err);
    if (!st)
        return err->code;
    int col = 2;
    sqlite3_bind_int64(st, 1, id);
    if (mime)
        sqlite3_bind_text(st, col++, mime, -1, SQLITE_STATIC);
    sqlite3_bind_blob64(st, col, data, len, SQLITE_STATIC);
    return run(s, st, doing, err);
}

/* A new image: its row, bytes, thumbnail, vector and metadata. */
static int insert_image(sqlite_store *s, const store_item *it, int64_t model_id,
                        uint8_t *vec_bytes, int dim, int64_t *id, ms_err *err)
{
    sqlite3_stmt *st = stmt(s, S_INS_IMAGE, err);
    if (!st)
        return err->code;
    const char *name = it->meta ? it->meta->original_name : NULL;
    sqlite3_bind_text(st, 1, it->sha256, 64, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)it->len);
    sqlite3_bind_text(st, 3, it->mime, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, it->width);
    sqlite3_bind_int(st, 5, it->height);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)(it->created ? it->created : time(NULL)));
    bind_text_or_null(st, 7, name);
    if (it->id > 0) /* else NULL: the next id (AUTOINCREMENT stays above every id given) */
        sqlite3_bind_int64(st, 8, (sqlite3_int64)it->id);
    else
        sqlite3_bind_null(st, 8);
    int rc = run(s, st, "storing an image", err);
    if (rc < 0)
        return rc;
    *id = sqlite3_last_insert_rowid(s->db);
    if ((rc = insert_blob_row(s, S_INS_ORIGINAL, *id, NULL, it->bytes, it->len,
                              "storing image bytes", err)) < 0)
        return rc;
    if (it->thumb_len > 0 &&
        (rc = insert_blob_row(s, S_INS_THUMB, *id, it->thumb_mime, it->thumb, it->thumb_len,
                              "storing a thumbnail", err)) < 0)
        return rc;
    if (!(st = stmt(s, S_INS_VECTOR, err)))
        return err->code;
    store_vec_encode(it->vec, dim, vec_bytes);
    sqlite3_bind_int64(st, 1, *id);
    sqlite3_bind_int64(st, 2, model_id);
    sqlite3_bind_blob(st, 3, vec_bytes, dim * 4, SQLITE_STATIC);
    if ((rc = run(s, st, "storing a vector", err)) < 0)
        return rc;
    return write_meta(s, *id, it->meta, err);
}

static int find_sha(sqlite_store *s, const char *sha256, int64_t *id, ms_err *err)
{
    sqlite3_stmt *st = stmt(s, S_FIND_SHA, err);
    if (!st)
        return err->code;
    sqlite3_bind_text(st, 1, sha256, 64, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    *id = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return db_fail(s, rc, "looking up an image by sha256", err);
    return 0;
}

static int ingest_one(sqlite_store *s, const store_item *it, int64_t model_id, uint8_t *vec_bytes,
                      int dim, int64_t *id, int *was_new, ms_err *err)
{
    int rc = find_sha(s, it->sha256, id, err);
    if (rc < 0)
        return rc;
    *was_new = *id == 0;
    if (*was_new)
        rc = insert_image(s, it, model_id, vec_bytes, dim, id, err);
    else if (it->meta)
        rc = write_meta(s, *id, it->meta, err);
    if (rc < 0)
        return rc;
    if (it->meta && it->meta->original_name) {
        sqlite3_stmt *st = stmt(s, S_INS_NAME, err);
        if (!st)
            return err->code;
        sqlite3_bind_text(st, 1, it->meta->original_name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, *id);
        rc = run(s, st, "recording a file name", err);
    }
    return rc;
}

static int bump_generation(sqlite_store *s, ms_err *err)
{
    sqlite3_stmt *st = stmt(s, S_BUMP, err);
    return st ? run(s, st, "bumping the generation", err) : err->code;
}

/* The body of sq_ingest, inside its transaction. */
static int ingest_all(sqlite_store *s, const store_item *items, size_t n, int dim, int64_t *ids,
                      int *was_new, uint8_t *vec_bytes, ms_err *err)
{
    int64_t model_id;
    int model_dim;
    int rc = read_model(s, &model_id, NULL, &model_dim, err);
    if (rc < 0)
        return rc;
    if (model_dim != dim)
        return ms_err_set(err, MS_ECONFLICT, "%s: the collection's model changed during ingest",
                          s->base.where);
    for (size_t i = 0; i < n; i++)
        if ((rc = ingest_one(s, &items[i], model_id, vec_bytes, dim, &ids[i], &was_new[i], err)) < 0)
            return ms_err_prefix(err, "item %zu: ", i);
    return bump_generation(s, err);
}

static int sq_ingest(store *base, const store_item *items, size_t n, int dim, int64_t *ids,
                     int *was_new, ms_err *err)
{
    sqlite_store *s = impl(base);
    uint8_t *vec_bytes = malloc((size_t)dim * 4);
    if (!vec_bytes)
        return ms_err_set(err, MS_ENOMEM, "out of memory for a %d-float vector", dim);
    int rc = begin_write(s, err);
    if (rc == 0)
        rc = ingest_all(s, items, n, dim, ids, was_new, vec_bytes, err);
    if (rc == 0)
        rc = commit(s, err);
    free(vec_bytes);
    if (rc < 0) {
        memset(ids, 0, n * sizeof *ids);
        memset(was_new, 0, n * sizeof *was_new);
        return rollback(s, rc);
    }
    return 0;
}

/* ---- reads ---- */

static int sq_find_sha256(store *base, const char *sha256, int64_t *id, ms_err *err)
{
    sqlite_store *s = impl(base);
    int rc = find_sha(s, sha256, id, err);
    if (rc == 0 && *id == 0)
        return ms_err_set(err, MS_ENOTFOUND, "no image with sha256 %.64s", sha256);
    return rc;
}

static int sq_has_name(store *base, const char *name, ms_err *err)
{
    sqlite_store *s = impl(base);
    sqlite3_stmt *st = stmt(s, S_HAS_NAME, err);
    if (!st)
        return err->code;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    int found = rc == SQLITE_ROW && sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? found : db_fail(s, rc, "looking up a file name", err);
}

static int not_found(sqlite_store *s, int64_t id, ms_err *err)
{
    return ms_err_set(err, MS_ENOTFOUND, "%s: no image %lld", s->base.where, (long long)id);
}

/* Steps a one-row lookup by id: 1 row, 0 none, <0 error. */
static int step_row(sqlite_store *s, sqlite3_stmt *st, const char *doing, ms_err *err)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        return 1;
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : db_fail(s, rc, doing, err);
}

static void copy_text(char *dst, size_t cap, const unsigned char *src)
{
    snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

static int sq_get_info(store *base, int64_t id, store_image_info *info, ms_err *err)
{
    sqlite_store *s = impl(base);
    sqlite3_stmt *st = stmt(s, S_INFO, err);
    if (!st)
        return err->code;
    sqlite3_bind_int64(st, 1, id);
    int rc = step_row(s, st, "reading image info", err);
    if (rc <= 0)
        return rc < 0 ? rc : not_found(s, id, err);
    info->id = sqlite3_column_int64(st, 0);
    copy_text(info->sha256, sizeof info->sha256, sqlite3_column_text(st, 1));
    copy_text(info->mime, sizeof info->mime, sqlite3_column_text(st, 2));
    info->width = sqlite3_column_int(st, 3);
    info->height = sqlite3_column_int(st, 4);
    info->created = sqlite3_column_int64(st, 5);
    info->bytes = (size_t)sqlite3_column_int64(st, 6);
    sqlite3_reset(st);
    return 0;
}

static int sq_get_blob(store *base, int64_t id, int thumb, uint8_t **bytes, size_t *len,
                       char mime[32], ms_err *err)
{
    sqlite_store *s = impl(base);
    sqlite3_stmt *st = stmt(s, thumb ? S_THUMB : S_ORIGINAL, err);
    if (!st)
        return err->code;
    sqlite3_bind_int64(st, 1, id);
    int rc = step_row(s, st, thumb ? "reading a thumbnail" : "reading image bytes", err);
    if (rc < 0)
        return rc;
    if (rc == 0)
        return thumb ? ms_err_set(err, MS_ENOTFOUND, "%s: image %lld has no thumbnail", s->base.where,
                                  (long long)id)
                     : not_found(s, id, err);
    const void *data = sqlite3_column_blob(st, 1);
    size_t n = (size_t)sqlite3_column_bytes(st, 1);
    copy_text(mime, 32, sqlite3_column_text(st, 0));
    *bytes = malloc(n ? n : 1);
    if (!*bytes) {
        sqlite3_reset(st);
        return ms_err_set(err, MS_ENOMEM, "out of memory for %zu bytes of image %lld", n, (long long)id);
    }
    if (n) /* an empty blob comes back as NULL */
        memcpy(*bytes, data, n);
    *len = n;
    sqlite3_reset(st);
    return 0;
}

static int read_labels(sqlite_store *s, int64_t id, store_meta *m, ms_err *err)
{
    sqlite3_stmt *st = stmt(s, S_LABELS, err);
    if (!st)
        return err->code;
    sqlite3_bind_int64(st, 1, id);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        char **grown = realloc(m->labels, (size_t)(m->n_labels + 1) * sizeof *grown);
        if (!grown)
            break;
        m->labels = grown;
        if (column_strdup(st, 0, &m->labels[m->n_labels], err) < 0)
            break;
        m->n_labels++;
    }
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return ms_err_set(err, MS_ENOMEM, "out of memory reading labels of image %lld", (long long)id);
    return rc == SQLITE_DONE ? 0 : db_fail(s, rc, "reading labels", err);
}

static int read_kv(sqlite_store *s, int64_t id, store_meta *m, ms_err *err)
{
    sqlite3_stmt *st = stmt(s, S_KVS, err);
    if (!st)
        return err->code;
    sqlite3_bind_int64(st, 1, id);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        store_kv *grown = realloc(m->kv, (size_t)(m->n_kv + 1) * sizeof *grown);
        if (!grown)
            break;
        m->kv = grown;
        store_kv *kv = &m->kv[m->n_kv];
        kv->key = kv->value = NULL;
        m->n_kv++;  /* counted now so store_meta_free releases a half-read pair */
        if (column_strdup(st, 0, &kv->key, err) < 0 || column_strdup(st, 1, &kv->value, err) < 0)
            break;
    }
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return ms_err_set(err, MS_ENOMEM, "out of memory reading key/values of image %lld", (long long)id);
    return rc == SQLITE_DONE ? 0 : db_fail(s, rc, "reading key/values", err);
}

static int sq_get_meta(store *base, int64_t id, store_meta *m, ms_err *err)
{
    sqlite_store *s = impl(base);
    sqlite3_stmt *st = stmt(s, S_META, err);
    if (!st)
        return err->code;
    sqlite3_bind_int64(st, 1, id);
    int rc = step_row(s, st, "reading metadata", err);
    if (rc <= 0)
        return rc < 0 ? rc : not_found(s, id, err);
    const unsigned char *sex = sqlite3_column_text(st, 4);
    m->age = sqlite3_column_type(st, 3) == SQLITE_NULL ? -1 : sqlite3_column_int(st, 3);
    m->sex = sex ? (char)sex[0] : 0;
    if (column_strdup(st, 0, &m->original_name, err) < 0 || column_strdup(st, 1, &m->patient_id, err) < 0 ||
        column_strdup(st, 2, &m->study_date, err) < 0 || column_strdup(st, 5, &m->view, err) < 0) {
        sqlite3_reset(st);
        return err->code;
    }
    sqlite3_reset(st);
    if ((rc = read_labels(s, id, m, err)) < 0)
        return rc;
    return read_kv(s, id, m, err);
}

/* The body of sq_edit_meta, inside its write transaction (BEGIN IMMEDIATE
 * holds the write lock from the read on, so no other writer comes between
 * the read and the write). */
static int edit_meta_tx(sqlite_store *s, int64_t id, store_meta_edit_fn edit, void *ctx, ms_err *err)
{
    store_meta m;
    store_meta_init(&m);
    int rc = sq_get_meta(&s->base, id, &m, err);
    if (rc == 0)
        rc = edit(ctx, &m, err);
    if (rc == 0)
        rc = write_meta(s, id, &m, err);
    store_meta_free(&m);
    return rc;
}

static int sq_edit_meta(store *base, int64_t id, store_meta_edit_fn edit, void *ctx, ms_err *err)
{
    sqlite_store *s = impl(base);
    int rc = begin_write(s, err);
    if (rc == 0)
        rc = edit_meta_tx(s, id, edit, ctx, err);
    if (rc != 0)
        return rollback(s, rc);
    rc = commit(s, err);
    return rc < 0 ? rollback(s, rc) : 0;
}

static int sq_get_vector(store *base, int64_t id, float *vec, int dim, ms_err *err)
{
    sqlite_store *s = impl(base);
    sqlite3_stmt *st = stmt(s, S_GET_VEC, err);
    if (!st)
        return err->code;
    sqlite3_bind_int64(st, 1, id);
    int rc = step_row(s, st, "reading a vector", err);
    if (rc <= 0)
        return rc < 0 ? rc
                      : ms_err_set(err, MS_ENOTFOUND, "%s: image %lld has no vector", s->base.where,
                                   (long long)id);
    int n = sqlite3_column_bytes(st, 0);
    if (n != dim * 4) {
        sqlite3_reset(st);
        return ms_err_set(err, MS_EINVAL, "%s: the vector of image %lld has %d bytes, not %d floats",
                          s->base.where, (long long)id, n, dim);
    }
    store_vec_decode(sqlite3_column_blob(st, 0), dim, vec);
    sqlite3_reset(st);
    return 0;
}

static int image_exists(sqlite_store *s, int64_t id, ms_err *err)
{
    sqlite3_stmt *st = stmt(s, S_IMAGE_EXISTS, err);
    if (!st)
        return err->code;
    sqlite3_bind_int64(st, 1, id);
    int rc = step_row(s, st, "looking up an image", err);
    if (rc > 0)
        sqlite3_reset(st);
    return rc;
}

/* The body of sq_set_vector, inside its transaction. */
static int replace_vector(sqlite_store *s, int64_t id, const uint8_t *bytes, int dim, ms_err *err)
{
    int64_t model_id;
    int model_dim;
    int rc = read_model(s, &model_id, NULL, &model_dim, err);
    if (rc < 0)
        return rc;
    if (model_dim != dim)
        return ms_err_set(err, MS_EINVAL, "%s: a %d-float vector for a collection whose model has dim %d",
                          s->base.where, dim, model_dim);
    if ((rc = image_exists(s, id, err)) <= 0)
        return rc < 0 ? rc : not_found(s, id, err);
    sqlite3_stmt *st = stmt(s, S_SET_VEC, err);
    if (!st)
        return err->code;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, model_id);
    sqlite3_bind_blob(st, 3, bytes, dim * 4, SQLITE_STATIC);
    if ((rc = run(s, st, "replacing a vector", err)) < 0)
        return rc;
    return bump_generation(s, err);
}

static int sq_set_vector(store *base, int64_t id, const float *vec, int dim, ms_err *err)
{
    sqlite_store *s = impl(base);
    uint8_t *bytes = malloc((size_t)dim * 4);
    if (!bytes)
        return ms_err_set(err, MS_ENOMEM, "out of memory for a %d-float vector", dim);
    store_vec_encode(vec, dim, bytes);
    int rc = begin_write(s, err);
    if (rc == 0)
        rc = replace_vector(s, id, bytes, dim, err);
    if (rc == 0)
        rc = commit(s, err);
    free(bytes);
    return rc < 0 ? rollback(s, rc) : 0;
}

static int sq_delete(store *base, int64_t id, ms_err *err)
{
    sqlite_store *s = impl(base);
    sqlite3_stmt *st;
    int rc = begin_write(s, err);
    if (rc < 0)
        return rc;
    if (!(st = stmt(s, S_DELETE, err)))
        return rollback(s, err->code);
    sqlite3_bind_int64(st, 1, id);
    if ((rc = run(s, st, "deleting an image", err)) < 0)
        return rollback(s, rc);
    if (sqlite3_changes(s->db) == 0)
        return rollback(s, not_found(s, id, err));
    if ((rc = bump_generation(s, err)) < 0 || (rc = commit(s, err)) < 0)
        return rollback(s, rc);
    return 0;
}

/* Collects the first int64 column of every row. */
static int collect_ids(sqlite_store *s, sqlite3_stmt *st, int64_t **ids, size_t *n, ms_err *err)
{
    id_list l = {0};
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (id_list_push(&l, sqlite3_column_int64(st, 0), err) < 0)
            break;
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        free(l.v);
        return rc == SQLITE_ROW ? err->code : db_fail(s, rc, "listing images", err);
    }
    *ids = l.v;
    *n = l.n;
    return 0;
}

static int sq_filter_ids(store *base, const store_filter *f, int64_t **ids, size_t *n, ms_err *err)
{
    sqlite_store *s = impl(base);
    filter_sql q;
    int rc = store_filter_sql(f, PLACEHOLDER_QUESTION, &q, err);
    if (rc < 0)
        return rc;
    sqlite3_stmt *st = NULL;
    rc = sqlite3_prepare_v2(s->db, q.sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        filter_sql_free(&q);
        return db_fail(s, rc, "preparing a filter", err);
    }
    for (int i = 0; i < q.n_params; i++) {
        if (q.params[i].is_int)
            sqlite3_bind_int64(st, i + 1, q.params[i].i);
        else
            sqlite3_bind_text(st, i + 1, q.params[i].s, -1, SQLITE_STATIC);
    }
    rc = collect_ids(s, st, ids, n, err);
    sqlite3_finalize(st);
    filter_sql_free(&q);
    return rc;
}

/* Feeds every vector of the current model to fn (inside sq_each_vector's
 * read transaction). */
static int scan_vectors(sqlite_store *s, store_vector_fn fn, void *ctx, ms_err *err)
{
    int64_t model_id;
    int dim;
    int rc = read_model(s, &model_id, NULL, &dim, err);
    if (rc < 0 || model_id == 0)
        return rc;  /* no model, no vectors */
    sqlite3_stmt *st = stmt(s, S_EACH_VEC, err);
    if (!st)
        return err->code;
    float *vec = malloc((size_t)dim * sizeof *vec);
    if (!vec)
        return ms_err_set(err, MS_ENOMEM, "out of memory for a %d-float vector", dim);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0);
        if (sqlite3_column_bytes(st, 1) != dim * 4) {
            rc = ms_err_set(err, MS_EFORMAT, "%s: the vector of image %lld has %d bytes, not %d floats",
                            s->base.where, (long long)id, sqlite3_column_bytes(st, 1), dim);
            break;
        }
        store_vec_decode(sqlite3_column_blob(st, 1), dim, vec);
        if (fn(ctx, id, vec, dim) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    free(vec);
    if (rc == SQLITE_DONE)
        return 0;
    return rc > 0 ? db_fail(s, rc, "reading vectors", err) : rc;
}

static int sq_each_vector(store *base, store_vector_fn fn, void *ctx, ms_err *err)
{
    sqlite_store *s = impl(base);
    /* One read transaction: the scan sees one consistent collection. */
    int rc = exec(s, "BEGIN", "starting a read", err);
    if (rc < 0)
        return rc;
    rc = scan_vectors(s, fn, ctx, err);
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);  /* a read: nothing to lose */
    return rc;
}

static int sq_list_ids(store *base, int64_t **ids, size_t *n, ms_err *err)
{
    sqlite_store *s = impl(base);
    sqlite3_stmt *st = stmt(s, S_LIST, err);
    return st ? collect_ids(s, st, ids, n, err) : err->code;
}

static int one_int64(sqlite_store *s, enum stmt which, int64_t *v, const char *doing, ms_err *err)
{
    sqlite3_stmt *st = stmt(s, which, err);
    if (!st)
        return err->code;
    int rc = step_row(s, st, doing, err);
    if (rc <= 0)
        return rc < 0 ? rc : ms_err_set(err, MS_EDB, "%s: %s: no row", s->base.where, doing);
    *v = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return 0;
}

static int sq_count(store *base, size_t *n, ms_err *err)
{
    int64_t v;
    int rc = one_int64(impl(base), S_COUNT, &v, "counting images", err);
    if (rc == 0)
        *n = (size_t)v;
    return rc;
}

static int sq_generation(store *base, uint64_t *gen, ms_err *err)
{
    int64_t v;
    int rc = one_int64(impl(base), S_GEN, &v, "reading the generation", err);
    if (rc == 0)
        *gen = (uint64_t)v;
    return rc;
}

static int quick_check(sqlite_store *s, ms_err *err)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, "PRAGMA quick_check", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, "checking the file", err);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *r = (const char *)sqlite3_column_text(st, 0);
        if (!r || strcmp(r, "ok") != 0)
            rc = ms_err_set(err, MS_EFORMAT, "%s: the database file is damaged: %.300s", s->base.where,
                            r ? r : "(no detail)");
        else
            rc = 0;
    } else {
        rc = db_fail(s, rc, "checking the file", err);
    }
    sqlite3_finalize(st);
    return rc;
}

static int sq_check(store *base, ms_err *err)
{
    sqlite_store *s = impl(base);
    int64_t model_id;
    int dim;
    int rc = quick_check(s, err);
    if (rc == 0)
        rc = read_model(s, &model_id, NULL, &dim, err);
    for (int i = 0; rc == 0 && i < STORE_N_CHECKS; i++) {
        sqlite3_stmt *st;
        if ((rc = sqlite3_prepare_v2(s->db, STORE_CHECKS[i].sql, -1, &st, NULL)) != SQLITE_OK)
            return db_fail(s, rc, "preparing a check", err);
        if (STORE_CHECKS[i].binds_vector_bytes)
            sqlite3_bind_int64(st, 1, (sqlite3_int64)dim * 4);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            char problem[256];
            snprintf(problem, sizeof problem, STORE_CHECKS[i].problem,
                     (long long)sqlite3_column_int64(st, 0));
            rc = ms_err_set(err, MS_EFORMAT, "%s: %s", s->base.where, problem);
        } else {
            rc = rc == SQLITE_DONE ? 0 : db_fail(s, rc, "checking integrity", err);
        }
        sqlite3_finalize(st);
    }
    return rc;
}

/* ---- open / close ---- */

static void sq_close(store *base)
{
    sqlite_store *s = impl(base);
    for (int i = 0; i < N_STMTS; i++)
        sqlite3_finalize(s->st[i]);
    sqlite3_close_v2(s->db);
    free(s);
}

/* Reads one integer from a query without parameters. */
static int query_int(sqlite_store *s, const char *sql, int64_t *v, ms_err *err)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, "reading the schema", err);
    rc = sqlite3_step(st);
    *v = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : db_fail(s, rc, "reading the schema", err);
}

/* The schema version, 0 for an empty file; refuses other applications' files. */
static int schema_version(sqlite_store *s, int64_t *version, ms_err *err)
{
    int64_t app_id, has_table, n_objects;
    int rc;
    if ((rc = query_int(s, "PRAGMA application_id", &app_id, err)) < 0 ||
        (rc = query_int(s, "SELECT count(*) FROM sqlite_schema", &n_objects, err)) < 0 ||
        (rc = query_int(s, "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'schema_version'",
                        &has_table, err)) < 0)
        return rc;
    *version = 0;
    if (n_objects == 0 && app_id == 0)
        return 0;
    if (app_id != APPLICATION_ID || !has_table)
        return ms_err_set(err, MS_EDB, "%s: is a SQLite database of another application, not a MedSearch collection",
                          s->base.where);
    return query_int(s, "SELECT version FROM schema_version", version, err);
}

static int migrate(sqlite_store *s, ms_err *err)
{
    int64_t version;
    int rc = schema_version(s, &version, err);
    if (rc < 0)
        return rc;
    if ((rc = store_check_schema_version(s->base.where, version, SCHEMA_VERSION, err)) < 0)
        return rc;
    if (version == SCHEMA_VERSION)
        return 0;
    /* Take the write lock, then look again: another process may have
     * migrated meanwhile. */
    if ((rc = begin_write(s, err)) < 0)
        return rc;
    if ((rc = schema_version(s, &version, err)) < 0)
        return rollback(s, rc);
    if ((rc = store_check_schema_version(s->base.where, version, SCHEMA_VERSION, err)) < 0)
        return rollback(s, rc);
    for (int64_t v = version; v < SCHEMA_VERSION; v++) {
        char bump[64];
        snprintf(bump, sizeof bump, "UPDATE schema_version SET version = %d", (int)v + 1);
        if ((rc = exec(s, MIGRATIONS[v], "creating the schema", err)) < 0 ||
            (rc = exec(s, bump, "recording the schema version", err)) < 0)
            return rollback(s, rc);
    }
    if (version == 0) {
        char mark[64], qe[80];
        snprintf(mark, sizeof mark, "PRAGMA application_id = %d", APPLICATION_ID);
        snprintf(qe, sizeof qe, "UPDATE collection SET search_qe = %d", STORE_NEW_COLLECTION_QE);
        if ((rc = exec(s, mark, "marking the file", err)) < 0 ||
            (rc = exec(s, qe, "setting the query-expansion default", err)) < 0)
            return rollback(s, rc);
    }
    if ((rc = commit(s, err)) < 0)
        return rollback(s, rc);
    return 0;
}

static int configure(sqlite_store *s, ms_err *err)
{
    int rc;
    if (sqlite3_db_readonly(s->db, "main") == 1)
        return ms_err_set(err, MS_EIO,
                          "%s: the database file is read-only (no write permission, or a read-only "
                          "file system); MedSearch needs to write to it",
                          s->base.where);
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
    sqlite3_extended_result_codes(s->db, 1);
    /* Reading the header first tells "not a database" apart from the rest. */
    sqlite3_stmt *st;
    if ((rc = sqlite3_prepare_v2(s->db, "PRAGMA schema_version", -1, &st, NULL)) == SQLITE_OK) {
        rc = sqlite3_step(st);
        sqlite3_finalize(st);
    }
    if ((rc & 0xff) == SQLITE_NOTADB)
        return ms_err_set(err, MS_EDB, "%s: is not a MedSearch collection (not a SQLite database)",
                          s->base.where);
    if (rc != SQLITE_ROW)
        return db_fail(s, rc, "reading the database header", err);
    /* A new file gets 32 KiB pages (set before WAL mode, which fixes the
     * size; an existing file keeps its own): a 1 MB image is then about 30
     * pages instead of 250, which took SQLite's share of ingest from about
     * 1.9 to 0.8 ms of CPU per image (and a 2048-d vector fits one page). */
    if ((rc = exec(s, "PRAGMA page_size = 32768", "setting the page size", err)) < 0)
        return rc;
    if ((rc = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &st, NULL)) != SQLITE_OK)
        return db_fail(s, rc, "switching to WAL mode", err);
    rc = sqlite3_step(st);
    const char *mode = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
    int wal = mode && !strcmp(mode, "wal");
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW)
        return db_fail(s, rc, "switching to WAL mode", err);
    if (!wal)
        return ms_err_set(err, MS_EDB, "%s: could not switch the database to WAL mode", s->base.where);
    if ((rc = exec(s, "PRAGMA synchronous = NORMAL", "setting synchronous", err)) < 0 ||
        (rc = exec(s, "PRAGMA foreign_keys = ON", "enabling foreign keys", err)) < 0)
        return rc;
    return migrate(s, err);
}

static const store_ops SQLITE_OPS = {
    .name = "sqlite",
    .close = sq_close,
    .use_model = sq_use_model,
    .get_model = sq_get_model,
    .get_center = sq_get_center,
    .set_center = sq_set_center,
    .get_center_policy = sq_get_center_policy,
    .set_center_policy = sq_set_center_policy,
    .get_search_qe = sq_get_search_qe,
    .set_search_qe = sq_set_search_qe,
    .ingest = sq_ingest,
    .find_sha256 = sq_find_sha256,
    .has_name = sq_has_name,
    .get_info = sq_get_info,
    .get_blob = sq_get_blob,
    .get_meta = sq_get_meta,
    .edit_meta = sq_edit_meta,
    .get_vector = sq_get_vector,
    .set_vector = sq_set_vector,
    .delete_image = sq_delete,
    .filter_ids = sq_filter_ids,
    .each_vector = sq_each_vector,
    .list_ids = sq_list_ids,
    .count = sq_count,
    .generation = sq_generation,
    .check = sq_check,
};

int store_sqlite_open(const char *path, store **out, ms_err *err)
{
    sqlite_store *s = calloc(1, sizeof *s);
    if (!s)
        return ms_err_set(err, MS_ENOMEM, "out of memory opening %s", path);
    s->base.ops = &SQLITE_OPS;
    snprintf(s->base.where, sizeof s->base.where, "%s", path);
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(path, &s->db, flags, NULL);
    if (rc != SQLITE_OK) {
        int sys = s->db ? sqlite3_system_errno(s->db) : 0;
        ms_err_set(err, MS_EIO, "%s: cannot open the database: %s%s%s%s", s->base.where,
                   s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc), sys ? " (" : "",
                   sys ? strerror(sys) : "", sys ? ")" : "");
        sq_close(&s->base);
        return err ? err->code : MS_EIO;
    }
    if ((rc = configure(s, err)) < 0) {
        sq_close(&s->base);
        return rc;
    }
    *out = &s->base;
    return 0;
}
