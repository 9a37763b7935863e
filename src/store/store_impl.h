/*
 * store_impl.h - internals shared by the store's files (store.c, filter.c,
 * sqlite.c, postgres.c); nothing outside src/store/ includes it.
 *
 * store.c checks every argument and every item once, then dispatches through
 * a backend's store_ops. A backend therefore receives validated input only:
 * sha256 is 64 lowercase hex digits, strings are valid UTF-8 within the
 * STORE_MAX_* limits, vectors are finite, model dims are positive, and err
 * is never NULL.
 */
#ifndef MS_STORE_IMPL_H
#define MS_STORE_IMPL_H

#include <stdint.h>
#include <stddef.h>

#include "store/store.h"

typedef struct store_ops {
    const char *name;  /* "sqlite" or "postgresql" */
    void (*close)(store *s);
    int (*use_model)(store *s, const char *identity, int dim, int force, ms_err *err);
    int (*get_model)(store *s, char **identity, int *dim, ms_err *err);
    /* The raw center: *bytes (malloc'd, the caller frees) and its length,
     * *from_n as stored (unchecked); MS_ENOTFOUND when none. store.c checks
     * its size and values against the dim asked for. */
    int (*get_center)(store *s, uint8_t **bytes, size_t *len, int64_t *from_n, ms_err *err);
    /* bytes NULL: clear. Otherwise dim * 4 bytes (store_vec_encode'd); the
     * backend checks dim against the model inside its transaction. */
    int (*set_center)(store *s, const uint8_t *bytes, int dim, int64_t from_n, ms_err *err);
    /* The centering policy as stored, unchecked: *text malloc'd (the caller
     * frees; "" when the column holds no text). store.c parses it. */
    int (*get_center_policy)(store *s, char **text, ms_err *err);
    /* Records 'off' or 'auto'; off also clears the center, in the same
     * transaction. */
    int (*set_center_policy)(store *s, int off, ms_err *err);
    /* The query-expansion default as stored, unchecked (store.c checks the
     * range); *is_int 0 when the column holds something else than an
     * integer (a hand-edited file). */
    int (*get_search_qe)(store *s, int64_t *qe, int *is_int, ms_err *err);
    int (*set_search_qe)(store *s, int qe, ms_err *err);
    /* dim: the model dim the items were checked against; the backend
     * re-reads the model inside its transaction and refuses a mismatch. */
    int (*ingest)(store *s, const store_item *items, size_t n, int dim, int64_t *ids,
                  int *was_new, ms_err *err);
    int (*find_sha256)(store *s, const char *sha256, int64_t *id, ms_err *err);
    int (*has_name)(store *s, const char *name, ms_err *err);
    int (*get_info)(store *s, int64_t id, store_image_info *info, ms_err *err);
    /* thumb = 0: the original; 1: the thumbnail. */
    int (*get_blob)(store *s, int64_t id, int thumb, uint8_t **bytes, size_t *len,
                    char mime[32], ms_err *err);
    int (*get_meta)(store *s, int64_t id, store_meta *meta, ms_err *err);
    /* Inside one write transaction: locks the image, reads its metadata
     * into a fresh store_meta, calls edit (store.c's checking wrapper) and,
     * when it returns 0, writes everything but original_name back. Returns
     * edit's 0 or 1 (1: nothing written), or a negative code (rolled back). */
    int (*edit_meta)(store *s, int64_t id, store_meta_edit_fn edit, void *ctx, ms_err *err);
    int (*get_vector)(store *s, int64_t id, float *vec, int dim, ms_err *err);
    int (*set_vector)(store *s, int64_t id, const float *vec, int dim, ms_err *err);
    int (*delete_image)(store *s, int64_t id, ms_err *err);
    /* Runs a query built by store_filter_sql (see below). */
    int (*filter_ids)(store *s, const store_filter *f, int64_t **ids, size_t *n,
                      ms_err *err);
    int (*each_vector)(store *s, store_vector_fn fn, void *ctx, ms_err *err);
    int (*list_ids)(store *s, int64_t **ids, size_t *n, ms_err *err);
    int (*count)(store *s, size_t *n, ms_err *err);
    int (*generation)(store *s, uint64_t *gen, ms_err *err);
    int (*check)(store *s, ms_err *err);
} store_ops;

/* Every backend's handle starts with this. */
struct store {
    const store_ops *ops;
    /* The database for messages: a path, or host:port/dbname (never a
     * password). */
    char where[256];
};

int store_sqlite_open(const char *path, store **out, ms_err *err);
int store_pg_open(const char *conninfo, store **out, ms_err *err);

/* ---- helpers ---- */

/* Lower-cases ASCII letters of a label into out (cap bytes): the key that
 * label matching and label set semantics use. Labels are at most
 * STORE_MAX_TEXT bytes, so out needs STORE_MAX_TEXT + 1. */
void store_fold_label(const char *label, char *out, size_t cap);
/* Upper-cases ASCII letters of a view position (PA, AP, LL...) into out. */
void store_fold_view(const char *view, char *out, size_t cap);

/* Vectors are stored as little-endian IEEE-754 float32, whatever the host. */
void store_vec_encode(const float *vec, int dim, uint8_t *out);
void store_vec_decode(const uint8_t *in, int dim, float *vec);

/* Growable arrays of ids. */
typedef struct id_list {
    int64_t *v;
    size_t n, cap;
} id_list;
int id_list_push(id_list *l, int64_t id, ms_err *err);

/* Checks a text field: NULL is fine when optional, "" when allow_empty;
 * otherwise valid UTF-8 of at most STORE_MAX_TEXT bytes. what names the field
 * in the message ("item 3 label 2"). Returns 0 or MS_EINVAL. */
int store_check_text(const char *s, int optional, int allow_empty, const char *what, ms_err *err);

/* Copies a string into a fresh malloc'd one; NULL in, NULL out. */
int store_strdup(const char *s, char **out, ms_err *err);

/* Read-back checks both backends share, for values only a tampered
 * database holds. A schema version this program cannot migrate from
 * (newer than supported, or negative, which would index the migrations
 * out of bounds): MS_EDB naming where. A model dimension outside
 * 1..STORE_MAX_DIM (every reader allocates dim floats): MS_EFORMAT.
 * Each returns 0 when the value is usable. */
int store_check_schema_version(const char *where, int64_t version, int supported, ms_err *err);
int store_check_model_dim(const char *where, int64_t dim, ms_err *err);

/* ---- integrity checks ----
 * Queries both backends run for store_check, in order. Each returns the id
 * of the first image with the problem, or no row. "$1", where used, is the
 * byte length of one vector (SQLite reads $1 as a numbered parameter too). */
typedef struct store_check_query {
    const char *sql;
    int binds_vector_bytes;
    const char *problem;  /* printf format with one %lld: the image id */
} store_check_query;

extern const store_check_query STORE_CHECKS[];
extern const int STORE_N_CHECKS;

/* ---- filter SQL ----
 * store_filter_sql turns a (validated) filter into one SELECT returning image
 * ids ascending, written from fixed fragments with one placeholder per value:
 * "?" for SQLite, "$1", "$2"... for PostgreSQL. Values never enter the text. */
typedef struct filter_param {
    int is_int;
    int64_t i;
    char *s;          /* owned by the filter_sql */
} filter_param;

typedef struct filter_sql {
    char *sql;        /* malloc'd */
    filter_param *params;
    int n_params;
} filter_sql;

enum placeholder_style { PLACEHOLDER_QUESTION, PLACEHOLDER_DOLLAR };

int store_filter_sql(const store_filter *f, enum placeholder_style style,
                     filter_sql *out, ms_err *err);
void filter_sql_free(filter_sql *q);

#endif
