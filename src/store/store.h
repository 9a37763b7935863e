/*
 * store.h - the collection's source of truth: image bytes, thumbnails,
 * metadata and vectors, in SQLite (a file path, the default) or PostgreSQL
 * ("postgresql://..." / "postgres://..." URIs, or "postgresql:" alone to use
 * the PG* environment).
 *
 * One interface, two implementations (sqlite.c, postgres.c) behind a table
 * of functions; the same test suite runs against both. The schema is created
 * and migrated forward by the program (schema_version table). All SQL uses
 * bound parameters.
 *
 * Ownership: strings and arrays inside a store_meta filled by the store are
 * malloc'd and released with store_meta_free(). Buffers returned through
 * uint8_t ** / int64_t ** are malloc'd and owned by the caller (free()).
 *
 * Thread safety: a store handle is used by one thread at a time; the engine
 * opens one handle per thread that needs one.
 */
#ifndef MS_STORE_H
#define MS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

typedef struct store store;

typedef struct store_kv {
    char *key, *value;
} store_kv;

typedef struct store_meta {
    char *original_name;   /* file name at ingest, or NULL */
    char *patient_id;
    char *study_date;      /* as given, e.g. 2017-01-31 */
    int age;               /* years, -1 unknown */
    char sex;              /* 'M', 'F' or 0 unknown */
    char *view;            /* PA, AP, LL, ... or NULL */
    char **labels;         /* finding labels, a set (no duplicates) */
    int n_labels;
    store_kv *kv;          /* free key/values */
    int n_kv;
} store_meta;

typedef struct store_image_info {
    int64_t id;
    char sha256[65];
    char mime[32];
    int width, height;
    int64_t created;       /* unix seconds */
    size_t bytes;
} store_image_info;

/* One image to ingest. The caller owns every pointer. */
typedef struct store_item {
    const uint8_t *bytes;
    size_t len;
    const char *sha256;    /* hex of bytes */
    const char *mime;
    int width, height;
    const uint8_t *thumb;
    size_t thumb_len;
    const char *thumb_mime;
    const store_meta *meta;  /* may be NULL */
    const float *vec;      /* dim floats, L2-normalised */
} store_item;

/* A metadata predicate; every set part must hold (AND). */
typedef struct store_filter {
    char **labels_any;     /* has at least one of */
    int n_labels_any;
    char **labels_all;     /* has every one of */
    int n_labels_all;
    char sex;              /* 0 = any */
    int age_min, age_max;  /* -1 = open */
    char **views;          /* any of; NULL/0 = any */
    int n_views;
    char *patient_id;      /* only this patient */
    char *exclude_patient; /* not this patient */
    store_kv *kv;          /* key = value, each must hold */
    int n_kv;
} store_filter;

/* Opens (creating/migrating the schema). Returns 0 or MS_EDB / MS_EIO with
 * a message naming the database (unreachable server, read-only file, ...). */
int store_open(const char *uri, store **out, ms_err *err);
void store_close(store *s);
const char *store_backend(const store *s);   /* "sqlite" or "postgresql" */

/* The collection's model: registers identity/dim when the collection has
 * none; MS_ECONFLICT when it has another (message names both). force
 * replaces it (used by reembed, which rewrites every vector). */
int store_use_model(store *s, const char *identity, int dim, int force, ms_err *err);
/* The recorded identity (malloc'd, caller frees) or NULL when none. */
int store_get_model(store *s, char **identity, int *dim, ms_err *err);

/* Ingests n items; each image is atomic (bytes, thumbnail, metadata and
 * vector together or nothing). An item whose sha256 exists already gets
 * that id back with was_new[i] = 0 (its metadata replaced when meta is not
 * NULL). ids and was_new have n entries. Returns 0 or a negative code, in
 * which case nothing of the failing batch is stored. */
int store_ingest(store *s, const store_item *items, size_t n, int64_t *ids,
                 int *was_new, ms_err *err);

/* Id of the image with this sha256: 0 and *id set, or MS_ENOTFOUND. */
int store_find_sha256(store *s, const char *sha256, int64_t *id, ms_err *err);
/* Is an image with this original name stored (resumable ingest)? 1/0/<0. */
int store_has_name(store *s, const char *original_name, ms_err *err);

int store_get_info(store *s, int64_t id, store_image_info *info, ms_err *err);
int store_get_image(store *s, int64_t id, uint8_t **bytes, size_t *len,
                    char mime[32], ms_err *err);
int store_get_thumbnail(store *s, int64_t id, uint8_t **bytes, size_t *len,
                        char mime[32], ms_err *err);
int store_get_meta(store *s, int64_t id, store_meta *meta, ms_err *err);
/* vec must hold dim floats. */
int store_get_vector(store *s, int64_t id, float *vec, int dim, ms_err *err);
/* Replaces an image's vector (reembed). */
int store_set_vector(store *s, int64_t id, const float *vec, int dim, ms_err *err);

/* Deletes image, thumbnail, metadata and vector together; MS_ENOTFOUND. */
int store_delete(store *s, int64_t id, ms_err *err);

/* Candidate ids for a filter, ascending. *ids malloc'd (caller frees). */
int store_filter_ids(store *s, const store_filter *f, int64_t **ids, size_t *n,
                     ms_err *err);

/* Calls fn for every stored vector in ascending id order; fn returns
 * nonzero to stop. Used to (re)build the index. */
typedef int (*store_vector_fn)(void *ctx, int64_t id, const float *vec, int dim);
int store_each_vector(store *s, store_vector_fn fn, void *ctx, ms_err *err);

/* All image ids ascending (reembed, check, export). */
int store_list_ids(store *s, int64_t **ids, size_t *n, ms_err *err);

int store_count(store *s, size_t *n, ms_err *err);
/* A counter bumped by every ingest and delete: tells a persisted index it is
 * stale. */
int store_generation(store *s, uint64_t *gen, ms_err *err);

/* Integrity: every image has metadata and a vector of the right dim, no
 * orphans. Returns 0 when sound, MS_EFORMAT with the first problem. */
int store_check(store *s, ms_err *err);

void store_meta_free(store_meta *m);
void store_filter_free(store_filter *f);

/* Parses a filter expression: space-separated terms
 *   labels:A|B (any of)  labels:A+B (all of)  sex:F  age:40-60 age:40- age:-60
 *   view:PA|AP  patient:ID  -patient:ID  key=value
 * Returns 0 or MS_EINVAL naming the bad term. */
int store_filter_parse(const char *expr, store_filter *f, ms_err *err);

#endif
