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
 *
 * Input is checked before any SQL runs (MS_EINVAL naming the item and field):
 * strings must be valid UTF-8 of at most STORE_MAX_TEXT bytes, sha256 64
 * lowercase hex digits, vectors finite. Labels are a set compared without
 * regard to ASCII case ("effusion" finds "Effusion"; of spellings repeated in
 * one list the first is kept); view positions are stored upper-cased ("pa" -> "PA"); patient ids
 * and key/values match exactly. docs/store.md describes the schema.
 */
#ifndef MS_STORE_H
#define MS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

typedef struct store store;

/* Limits on what one image may carry (checked, MS_EINVAL). */
#define STORE_MAX_TEXT 1024      /* bytes of any one string (PostgreSQL indexes
                                    refuse much longer keys) */
#define STORE_MAX_BLOB (512u << 20)  /* bytes of an image or thumbnail */
#define STORE_MAX_LABELS 256     /* labels of one image */
#define STORE_MAX_KV 256         /* key/values of one image */
#define STORE_MAX_DIM 65536      /* floats in a vector */
#define STORE_MAX_FILTER_VALUES 256  /* values of one filter list */

/* Is s (n bytes) well-formed UTF-8: no overlong forms, no surrogates,
 * nothing above U+10FFFF? This is the text every string field must be
 * (PostgreSQL would refuse anything else, SQLite would store it; checking
 * makes both backends behave alike); faces may check their input with it
 * before a store call. Returns 1 or 0. */
int store_utf8_valid(const unsigned char *s, size_t n);

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
    store_kv *kv;          /* free key/values; a repeated key keeps the last */
    int n_kv;
} store_meta;

/* Sets an empty store_meta (age -1, everything else unknown). */
void store_meta_init(store_meta *m);

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
    int64_t id;            /* 0: the store gives the next id; else this id (a copy of a
                              collection keeps its ids; the id must be free) */
    int64_t created;       /* unix seconds; 0: now */
    const uint8_t *bytes;
    size_t len;
    const char *sha256;    /* hex of bytes */
    const char *mime;
    int width, height;
    const uint8_t *thumb;
    size_t thumb_len;
    const char *thumb_mime;
    const store_meta *meta;  /* may be NULL */
    const float *vec;      /* dim floats (the collection model's), L2-normalised */
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

/* Sets a filter that matches everything (age bounds -1). A zeroed struct is
 * NOT that: age_max 0 would keep newborns only. */
void store_filter_init(store_filter *f);

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

/* The collection's center: the mean of its vectors, a statistic the engine
 * computes and keeps here (it subtracts it before the index; the stored
 * vectors stay as the model made them). It belongs to the current model:
 * store_use_model clears it whenever it changes the model, and also when
 * force is given with the same model (a re-embed rewrites every vector).
 *
 * store_get_center fills c[dim] and *from_n (how many vectors it was
 * computed from). Returns 0, MS_ENOTFOUND when the collection has none, or
 * MS_EFORMAT when what is stored is not a center of dim finite floats from
 * at least one vector (a damaged or hand-edited database): never trusted.
 * store_set_center records one (dim must be the model's, values finite,
 * from_n >= 1; MS_EINVAL otherwise, MS_EINVAL too when the collection has
 * no model). store_clear_center removes it (0 when there was none). None of
 * them changes the generation: an index built with a center says so in its
 * own identity. */
int store_get_center(store *s, float *c, int dim, size_t *from_n, ms_err *err);
int store_set_center(store *s, const float *c, int dim, size_t from_n, ms_err *err);
int store_clear_center(store *s, ms_err *err);

/* The collection's centering policy (schema 4): auto (*off = 0, the
 * default: the engine centres the collection once it is large enough) or
 * off (*off = 1: the operator chose plain cosine; the engine neither reads
 * nor computes a center). It is the collection's, not the model's: a model
 * change or re-embed keeps it. store_get_center_policy returns 0, or
 * MS_EFORMAT when the stored value is neither (a hand-edited database).
 * store_set_center_policy takes 0 or 1 (MS_EINVAL otherwise); setting off
 * also clears the center, in the same transaction. Neither changes the
 * generation. */
int store_get_center_policy(store *s, int *off, ms_err *err);
int store_set_center_policy(store *s, int off, ms_err *err);

/* The collection's query-expansion default (schema 5): how many of its top
 * results a search averages with the query before searching again, when the
 * request does not say (0 = off; at most STORE_SEARCH_QE_MAX). A collection
 * created by this version starts at STORE_NEW_COLLECTION_QE, the setting
 * that won on the labelled dev sets (docs/evaluation.md, "Defaults chosen");
 * one migrated from an older schema keeps 0, what it searched with before.
 * The operator changes it after measuring (`medsearch eval --tune`,
 * `medsearch qe N`); search, serve and eval follow it. Like the centering
 * policy it is the collection's, kept across model changes and re-embeds.
 * store_get_search_qe returns 0, or MS_EFORMAT when the stored value is not
 * an integer in range (a hand-edited database). store_set_search_qe returns
 * 0, or MS_EINVAL for a value out of range. Neither changes the generation. */
#define STORE_SEARCH_QE_MAX 100
#define STORE_NEW_COLLECTION_QE 3
int store_get_search_qe(store *s, int *qe, ms_err *err);
int store_set_search_qe(store *s, int qe, ms_err *err);

/* Ingests n items; each image is atomic (bytes, thumbnail, metadata and
 * vector together or nothing). An item whose sha256 exists already gets
 * that id back with was_new[i] = 0 (its metadata replaced when meta is not
 * NULL). ids and was_new have n entries. Returns 0 or a negative code, in
 * which case nothing of the failing batch is stored.
 *
 * The whole batch is one transaction. A collection needs a model first
 * (store_use_model; MS_EINVAL otherwise) and every vector has its dim.
 * "Replaced" means all of it: patient, date, age, sex, view, labels and
 * key/values take meta's values (unknown where meta has none); an existing
 * image keeps its thumbnail and vector. meta->original_name is never
 * replaced: the first name stays the image's original_name, and every name
 * given is remembered for store_has_name. A sha256 repeated inside one batch
 * is stored once, the later item's metadata winning. The generation is
 * bumped once per successful call. An item with an id of its own takes
 * it (an id already used by another image fails the batch, MS_EDB); the
 * ids given later stay above it. */
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
/* Changes one image's metadata in one transaction, so that two editors
 * (two search servers on one PostgreSQL collection, a server and the CLI)
 * never lose each other's change: the image's metadata is read as
 * store_get_meta gives it and handed to edit(ctx, m, err), which changes m
 * in place. What edit leaves is checked as store_ingest checks an item's
 * metadata and, when it differs from what was stored (as the store would
 * keep it, store_meta_same), written back whole: patient, study date, age,
 * sex, view, labels and key/values. original_name is the image's first
 * file name and is never written (edit's change to it is dropped). The
 * generation does not change: the index holds no metadata.
 *
 * edit may free and replace any of m's strings and arrays (malloc'd; the
 * store releases m with store_meta_free); it returns 0 to go on, or a
 * negative code with err set to leave the image as it was. It must not use
 * s. Returns 0 when written, 1 when edit changed nothing (nothing written),
 * MS_ENOTFOUND, MS_EINVAL (the result breaks a limit, message naming the
 * field), edit's code, or MS_EDB / MS_EBUSY. */
typedef int (*store_meta_edit_fn)(void *ctx, store_meta *m, ms_err *err);
int store_edit_meta(store *s, int64_t id, store_meta_edit_fn edit, void *ctx, ms_err *err);

/* A change to an image's metadata, applied in this order: the fields named
 * in replace take to's values (NULL, "", age -1 and sex 0 make them
 * unknown; STORE_PATCH_LABELS and STORE_PATCH_KV replace the whole lists);
 * remove_labels are taken out and add_labels added unless there (both
 * compared without regard to ASCII case); each set_kv pair is set, or its
 * key removed when its value is NULL. Everything is borrowed. */
enum {
    STORE_PATCH_PATIENT = 1 << 0,
    STORE_PATCH_DATE = 1 << 1,
    STORE_PATCH_AGE = 1 << 2,
    STORE_PATCH_SEX = 1 << 3,
    STORE_PATCH_VIEW = 1 << 4,
    STORE_PATCH_LABELS = 1 << 5,
    STORE_PATCH_KV = 1 << 6,
    STORE_PATCH_ALL = (1 << 7) - 1,
};
typedef struct store_meta_patch {
    unsigned replace;
    store_meta to;
    const char *const *remove_labels;
    int n_remove_labels;
    const char *const *add_labels;
    int n_add_labels;
    const store_kv *set_kv;
    int n_set_kv;
} store_meta_patch;

/* Sets an empty patch (changes nothing). */
void store_meta_patch_init(store_meta_patch *p);
/* Applies p to m (malloc'd strings, as the store fills it): 0, or
 * MS_ENOMEM with m unchanged. The result is not checked here;
 * store_edit_meta checks it. */
int store_meta_patch_apply(const store_meta_patch *p, store_meta *m, ms_err *err);
/* store_edit_meta with store_meta_patch_apply: the same returns. */
int store_patch_meta(store *s, int64_t id, const store_meta_patch *p, ms_err *err);

/* A deep copy of src into dst (free it with store_meta_free): 0 or
 * MS_ENOMEM, dst then empty. */
int store_meta_copy(store_meta *dst, const store_meta *src, ms_err *err);
/* Would a and b be stored alike? 1 or 0. Labels compare as the store keeps
 * them (each one once without regard to ASCII case, the first spelling, in
 * order), views without regard to case, key/values as a map (a repeated
 * key's last value), and an empty string as unknown. original_name is not
 * compared. */
int store_meta_same(const store_meta *a, const store_meta *b);
/* Do a and b name the same findings, whatever their order? Labels compare
 * as the store compares them (without regard to ASCII case). 1 or 0. */
int store_labels_same_set(const store_meta *a, const store_meta *b);

/* vec must hold dim floats; MS_EINVAL when the stored vector has another
 * dim, MS_ENOTFOUND when the image has none. */
int store_get_vector(store *s, int64_t id, float *vec, int dim, ms_err *err);
/* Replaces an image's vector (reembed) with one of the collection's current
 * model (dim must be its dim). Bumps the generation. */
int store_set_vector(store *s, int64_t id, const float *vec, int dim, ms_err *err);

/* Deletes image, thumbnail, metadata and vector together; MS_ENOTFOUND. */
int store_delete(store *s, int64_t id, ms_err *err);

/* Candidate ids for a filter, ascending. *ids malloc'd (caller frees). */
int store_filter_ids(store *s, const store_filter *f, int64_t **ids, size_t *n,
                     ms_err *err);

/* Calls fn for every stored vector of the collection's current model in
 * ascending id order; fn returns nonzero to stop (store_each_vector then
 * returns 0). vec is valid during the call only. fn must not use s. Used to
 * (re)build the index. */
typedef int (*store_vector_fn)(void *ctx, int64_t id, const float *vec, int dim);
int store_each_vector(store *s, store_vector_fn fn, void *ctx, ms_err *err);

/* All image ids ascending (reembed, check, export). */
int store_list_ids(store *s, int64_t **ids, size_t *n, ms_err *err);

int store_count(store *s, size_t *n, ms_err *err);
/* A counter bumped by every ingest and delete: tells a persisted index it is
 * stale. */
int store_generation(store *s, uint64_t *gen, ms_err *err);

/* Integrity: every image has metadata and a vector of the collection's model
 * with the right dim, no orphans, a centering policy that
 * store_get_center_policy accepts, a query-expansion default that
 * store_get_search_qe accepts, a center (when there is one) that
 * store_get_center accepts (SQLite: plus PRAGMA quick_check). Returns 0
 * when sound, MS_EFORMAT with the first problem. */
int store_check(store *s, ms_err *err);

void store_meta_free(store_meta *m);
void store_filter_free(store_filter *f);

/* Parses a filter expression: space-separated terms
 *   labels:A|B (any of)  labels:A+B (all of)  sex:F  age:40-60 age:40- age:-60
 *   view:PA|AP  patient:ID  -patient:ID  key=value
 * A value may be double-quoted to hold spaces, '|', '+' or ':'
 * (labels:"No Finding"); inside quotes \" and \\ stand for " and \.
 * labels:A (one label) and repeated labels:A+B terms add to labels_all; only
 * one labels:A|B term is allowed. age:45 means 45-45; sex takes M, F, male or
 * female. An age bound outside 0..200 or a min above the max is an error;
 * patients without a known age never match an age term.
 * f is initialised by the call (any previous content is not freed) and is
 * empty again after an error. Returns 0 or MS_EINVAL naming the bad term. */
int store_filter_parse(const char *expr, store_filter *f, ms_err *err);

#endif
