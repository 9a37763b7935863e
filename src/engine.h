/*
 * engine.h - the facade that ties image, model, index and store together.
 * The faces (CLI, HTTP server) only translate their world into these calls.
 *
 * engine_open opens the store, loads the model, checks that the collection
 * was built with this model (MS_ECONFLICT otherwise, unless reembed is set),
 * then loads the persisted index next to the collection or rebuilds it from
 * the store when missing, stale or damaged (engine_open_report says which).
 *
 * Centering: ImageNet features of chest X-rays share a large common
 * component (mean pairwise cosine about 0.7), which drowns the differences
 * between them. The engine therefore ranks by cos(l2(q - c), l2(v - c)),
 * c the collection's center (the mean of its stored vectors). The stored
 * vectors stay as the model made them; c is a statistic kept in the store;
 * x -> l2(x - c) is applied to every vector entering the index (ingest,
 * rebuild, re-embed) and to every query vector, and query expansion works
 * in that centred space. Scores are cosines there: an identical image still
 * scores 1, unrelated ones score near 0 or below. When |x - c| is under
 * 1e-6 (x is the center) x is kept as it is. A collection of fewer than
 * ENGINE_CENTER_MIN vectors has no center (the transform is the identity);
 * once it has that many, the center is computed, stored and frozen, and
 * computed again when the collection has grown to twice the count it came
 * from or shrunk (by deletes) to half of it, and removed when it falls
 * under ENGINE_CENTER_MIN (each recomputation rebuilds the index, so
 * doubling keeps the total cost linear). That check runs in engine_open (not for no_model opens,
 * which never write) and in engine_update_center. The persisted index
 * records the center it was built with (a tag in its identity), so a file
 * built with another center is rebuilt.
 *
 * Centering policy: centering helps ImageNet features but may hurt a model
 * fine-tuned on the collection's own kind of images; the operator measures
 * (`medsearch eval --compare "center=off" ""`) and chooses. Each collection
 * stores its policy (store_get_center_policy): auto (the default, as above)
 * or off: no center is read, computed or stored, the transform is the
 * identity, and the index file is persisted as usual with the identity tag
 * "|center=off" (a file built with a center is rebuilt, one built without
 * is reused). engine_set_center_policy changes it; engine_options.center
 * overrides it for one open without changing it.
 *
 * Query expansion: each collection stores how many neighbours a search
 * averages with its query when the request leaves it to the collection
 * (engine_query.qe = ENGINE_QE_COLLECTION): STORE_NEW_COLLECTION_QE for a
 * collection created by this version, 0 (off) for one from before, until
 * the operator sets it after measuring (store_set_search_qe, `medsearch qe`,
 * `ingest --qe`). It is read at engine_open: a running server picks a change
 * up when opened again.
 *
 * Thread safety: every function except engine_close may be called from many
 * threads at once. Forwards of the model are serialised on one inference
 * thread that takes whatever queries are waiting and runs them as one batch
 * (dynamic batching); the queue is bounded (MS_EBUSY when full).
 *
 * Ownership: result arrays are malloc'd; release with engine_results_free.
 */
#ifndef MS_ENGINE_H
#define MS_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "image/image.h"
#include "index/index.h"
#include "model/model.h"
#include "store/store.h"
#include "util/err.h"

typedef struct engine engine;

/* Fewest vectors a center is computed from. Measured on random
 * patient-disjoint subsets of the dev sets with an ImageNet model (12 to
 * 256 images, docs/evaluation.md "Defaults chosen"), centering ranked better at
 * every size; below 16 the mean is mostly the few images themselves and
 * mAP@10 cannot be measured, so such a collection keeps plain cosine. */
#define ENGINE_CENTER_MIN 16
/* The same number as a string literal, for help texts. */
#define ENGINE_CENTER_MIN_TEXT ENGINE_STRINGIFY_(ENGINE_CENTER_MIN)
#define ENGINE_STRINGIFY_(x) ENGINE_STRINGIFY2_(x)
#define ENGINE_STRINGIFY2_(x) #x

typedef enum {
    ENGINE_CENTER_AUTO = 0,   /* follow the collection's policy (the default) */
    ENGINE_CENTER_OFF,        /* this open only: rank by raw cosine: no center is read,
                                 computed or stored, and no index file is read or written
                                 (the one on disk may belong to a centred collection): the
                                 index is built in memory from the store (eval's
                                 center=off, tests) */
    ENGINE_CENTER_ON          /* this open only: rank centred even when the policy is off:
                                 the stored center when there is one, else one computed in
                                 memory from the stored vectors when there are at least
                                 ENGINE_CENTER_MIN (none below; engine_update_center
                                 recomputes it in memory as the collection grows). Nothing
                                 is written: no center, no index file (eval's center=on) */
} engine_center_mode;

typedef struct engine_options {
    const char *db;            /* SQLite path or PostgreSQL URI (default medsearch.db) */
    const char *model_path;    /* ONNX file; NULL: MEDSEARCH_MODEL, then default places */
    model_options model;
    index_params index;
    const char *index_path;    /* default: <db>.index for SQLite, none for PostgreSQL */
    image_limits limits;
    int max_batch;             /* largest inference batch (default 16) */
    int queue_depth;           /* bounded query queue (default 64) */
    int threads;               /* decode workers for ingest, 0 = cores */
    int reembed;               /* allow a model change: the open succeeds with an empty
                                  index, ingest waits, engine_reembed does the work */
    int thumb_size;            /* thumbnail longest side (default 256) */
    int no_model;              /* open store and index only (info, check, delete,
                                  export): functions that embed fail MS_EINVAL; the
                                  stored center is used as it is, never computed */
    engine_center_mode center; /* default ENGINE_CENTER_AUTO */
    int pooling_from_collection; /* an existing collection is opened with the
                                  pooling, GeM p, bf16 and flip its model
                                  identity records instead of model.pool/gem_p/
                                  bf16/flip (the faces set it when none of
                                  pooling, GeM p and flip was asked for) */
    int prep_from_collection;  /* the same for the input size: the one the
                                  identity records ("-in288", else the model's
                                  own) replaces model.input_size (the faces set
                                  it when no input size was asked for). Mean and
                                  scale are never adopted: the identity holds
                                  only a digest of them ("-norm...") */
} engine_options;

void engine_options_init(engine_options *o);

/* How engine_open found the index, for the faces to say. */
typedef struct engine_open_report {
    int index_loaded;          /* 1 loaded from file, 0 rebuilt */
    char index_note[256];      /* why it was rebuilt, or "" */
    char center_note[256];     /* what happened to the center ("" when nothing did) */
    double open_ms, model_ms, index_ms;
} engine_open_report;

int engine_open(const engine_options *o, engine **out, engine_open_report *rep, ms_err *err);
/* Persists the index (when it changed) and closes everything. */
void engine_close(engine *e);

/* Where the model came from, or the message explaining how to get one.
 * Order: flag_path, $MEDSEARCH_MODEL, ./models/resnet50.onnx,
 * $XDG_DATA_HOME/medsearch/model.onnx (~/.local/share when unset).
 * Returns 0, or MS_ENOTFOUND whose message says how to get ResNet-50 as ONNX. */
int engine_find_model(const char *flag_path, char *out, size_t out_len, ms_err *err);
/* The longer, multi-line version of that advice, for a terminal. Static. */
const char *engine_model_help(void);

/* ---- ingest ---- */
typedef struct engine_item {
    const uint8_t *bytes;
    size_t len;
    const store_meta *meta;    /* may be NULL */
    int update_meta;           /* when the image is stored already (same bytes):
                                  1 gives it the metadata a first ingest would
                                  store now (meta, which must not be NULL,
                                  completed from a DICOM header) in place of
                                  what it has, in one transaction; its bytes,
                                  name and vector stay, nothing is decoded.
                                  0 leaves it as it is. */
} engine_item;

typedef struct engine_item_result {
    int64_t id;                /* stored id (0 on failure) */
    int was_new;               /* 1 stored now, 0 existed already */
    int meta_updated;          /* existed, and update_meta changed its metadata */
    ms_err err;                /* err.code != 0: this item failed, others went on */
} engine_item_result;

/* Ingests n items: decoding on worker threads, one batched forward, one
 * store transaction per image. A bad item fails alone (res[i].err); the
 * function returns 0 unless the store itself failed. */
int engine_ingest_batch(engine *e, const engine_item *items, size_t n,
                        engine_item_result *res, ms_err *err);
int engine_ingest(engine *e, const uint8_t *bytes, size_t len, const store_meta *meta,
                  int64_t *id, int *was_new, ms_err *err);

/* ---- search ---- */

/* engine_query.qe for "as the collection says" (store_get_search_qe). */
#define ENGINE_QE_COLLECTION (-1)

typedef struct engine_query {
    const uint8_t *bytes;      /* image to search with, or NULL ... */
    size_t len;
    int64_t by_id;             /* ... a stored image's id (> 0), or 0 with
                                  like ids: the marked images alone */
    int k;                     /* 1..1000 */
    const store_filter *filter;/* may be NULL */
    int one_per_patient;       /* best image per patient only */
    int qe;                    /* query expansion with top-N, 0 = off,
                                  ENGINE_QE_COLLECTION = the collection's default */
    int ef;                    /* HNSW efSearch override, 0 = default */
    int exclude_self;          /* by_id: leave the query image out */
    const image_region *region;/* search with this part of the image only
                                  (NULL: all of it); with by_id the stored
                                  image is decoded and embedded again, which
                                  needs the model */
    image_rect *region_used;   /* with region, when not NULL: receives the
                                  region in pixels of the image as shown */
    const int64_t *like;       /* relevance feedback: stored images the user
                                  marked as like what they look for ... */
    int n_like;
    const int64_t *unlike;     /* ... and as not like it; see below */
    int n_unlike;
} engine_query;

/* Relevance feedback (feedback.c has the why): with like or unlike ids the
 * query's centred vector q becomes
 *   l2(q + ENGINE_FEEDBACK_LIKE * mean(like) - ENGINE_FEEDBACK_UNLIKE * mean(unlike))
 * over the marked images' vectors as the index holds them, before query
 * expansion. The marked images are judged already: they are left out of
 * the results and of the expansion, like the query itself. Each list holds
 * at most ENGINE_FEEDBACK_MAX ids (repeats count once); an id on both
 * lists is MS_EINVAL, one not in the collection MS_ENOTFOUND. The marked
 * images need not pass the filter: the user has seen them. Without bytes
 * and by_id the query is the marks alone: a zero vector moved by them, so
 * the ranking is by l2(LIKE * mean(like) - UNLIKE * mean(unlike)); that
 * needs like ids (and no region). */
#define ENGINE_FEEDBACK_MAX 100
#define ENGINE_FEEDBACK_LIKE 2.0f
#define ENGINE_FEEDBACK_UNLIKE 1.0f

typedef struct engine_result {
    int64_t id;
    float score;
    store_meta meta;
} engine_result;

typedef struct engine_timing {
    double decode_ms, embed_ms, index_ms, store_ms, total_ms;
} engine_timing;

/* Returns 0 or MS_EFORMAT/MS_EUNSUPPORTED/MS_ENOTIMAGE/MS_ETOOBIG (bad
 * image), MS_EINVAL (bad k, a region outside the image, a region of a
 * stored image without the model, bad feedback lists), MS_ENOTFOUND (by_id
 * or a marked image absent), MS_EBUSY (queue full). */
int engine_search(engine *e, const engine_query *q, engine_result **res, int *n,
                  engine_timing *t, ms_err *err);
/* Search with a ready vector (dim floats, L2-normalised, as the model makes
 * them and the store keeps them: the engine centres it like any query). */
int engine_search_vector(engine *e, const float *vec, const engine_query *q,
                         engine_result **res, int *n, ms_err *err);
void engine_results_free(engine_result *res, int n);

/* Embeds one image through the same path as search (vec: model dim): the
 * model's L2-normalised vector, before centering (what the store keeps). */
int engine_embed(engine *e, const uint8_t *bytes, size_t len, float *vec, ms_err *err);

/* ---- copies: the same picture stored as another image ---- */

/* The defaults of `medsearch duplicates` and the API's copies route: the
 * fingerprint rank correlation from which two images are copies, and how
 * many nearest images are checked (docs/cli.md "duplicates" for the
 * figures behind them). */
#define ENGINE_COPIES_MIN_CORRELATION 0.99
#define ENGINE_COPIES_CANDIDATES 5
#define ENGINE_COPIES_MAX_CANDIDATES 100

/* The fingerprint (image.h) of stored image id, read through s, a handle of
 * this engine's pool: from its thumbnail, or from the image itself when the
 * thumbnail cannot be read. Returns 0, MS_ENOTFOUND, or a decode error. */
int engine_fingerprint_stored(engine *e, store *s, int64_t id, uint8_t out[IMAGE_FINGERPRINT_SIZE], ms_err *err);

typedef struct engine_copy {
    int64_t id;
    float score;          /* the vectors' similarity, as search ranks */
    double correlation;   /* the fingerprints' rank correlation */
    store_meta meta;
} engine_copy;

/* The copies of stored image id among its k nearest images by the index
 * (itself left out): those whose fingerprints correlate with its at
 * min_correlation or above, strongest first. Needs no model. *copies is
 * malloc'd (engine_copies_free) and NULL when n is 0 on failure. Returns 0,
 * MS_EINVAL (k outside 1..ENGINE_COPIES_MAX_CANDIDATES, min_correlation not
 * in (-1, 1]), MS_ENOTFOUND (no image id), or a store or decode error. */
int engine_find_copies(engine *e, int64_t id, int k, double min_correlation, engine_copy **copies, int *n,
                       ms_err *err);
void engine_copies_free(engine_copy *c, int n);

/* ---- where two images are alike: similarity maps ---- */

typedef struct engine_similarity_map {
    int grid_w, grid_h;      /* cells across and down: the model's last map
                                (model_feature_grid), each cell one patch of
                                the image (of the query's region) as the
                                model input tiles it */
    float *query_cells;      /* grid_h x grid_w, row by row from the top left:
                                each cell's part of `similarity` */
    float *result_cells;     /* the same over the result image */
    double similarity;       /* the two images' similarity as search ranks
                                without query expansion; each side's cells
                                sum to it (to float rounding) */
    int centred;             /* 1: centred cosine; 0: plain cosine */
    int region_used;         /* the query was a region of its image ... */
    image_rect region;       /* ... this one, in pixels of the image as shown */
} engine_similarity_map;

/* Where the query q (its bytes, or stored image q->by_id; q->region when
 * set, and q->region_used receives it) and stored image result_id are
 * alike: both are embedded again with their features split over the
 * model's grid, and the similarity is split over each image's cells
 * exactly (similarity_map.c says how). Other fields of q are ignored.
 * Needs the model: two forwards (four with flip). Returns 0 (free *out
 * with engine_similarity_map_free), or MS_EINVAL (no model, no query, a
 * region outside the image), MS_ENOTFOUND (no image q->by_id or
 * result_id), MS_EUNSUPPORTED (a model whose feature is no global pooling
 * of a map, with why; or an image it cannot decode), a decode error as
 * engine_search, MS_EBUSY, MS_ENOMEM. */
int engine_map_similarity(engine *e, const engine_query *q, int64_t result_id,
                          engine_similarity_map *out, ms_err *err);
void engine_similarity_map_free(engine_similarity_map *m);

/* The map m of q and result_id (as engine_map_similarity made it) drawn as
 * two PNGs: the query (its region, when m has one) and the result as
 * MedSearch sees them, each reduced so its longest side is at most
 * longest_side (1..16383), or enlarged by the largest whole factor that
 * keeps it there (its pixels repeated), its cells over it as heat
 * (image_heat_blend).
 * Needs no model. *query_png and *result_png are malloc'd, the caller frees
 * them; NULL on failure. Returns 0, or MS_EINVAL, MS_ENOTFOUND, a decode
 * error, MS_ENOMEM. */
int engine_similarity_overlays(engine *e, const engine_query *q, int64_t result_id,
                               const engine_similarity_map *m, int longest_side,
                               uint8_t **query_png, size_t *query_len,
                               uint8_t **result_png, size_t *result_len, ms_err *err);

/* Streaming ingest: the engine pulls items from next() and hands each back
 * to done(), in input order, on the calling thread. While one batch is in
 * the model the next is decoded by the workers and the previous one stored,
 * so at most ENGINE_SLOTS (3) x max_batch items are in flight: memory stays
 * bounded whatever the number of items.
 *   next: fills *item (its bytes and meta stay valid until done() for it)
 *         and *token; returns 1, 0 at the end, or < 0 (err set) to stop.
 *   done: the item's result; the caller may free the item's memory now.
 * Returns 0, or the error that stopped the stream (the store failed, or
 * next() did); done() has then been called for every item taken. */
typedef struct engine_ingest_source {
    int (*next)(void *ctx, engine_item *item, void **token, ms_err *err);
    void (*done)(void *ctx, void *token, const engine_item *item,
                 const engine_item_result *res);
    void *ctx;
    size_t size_hint;          /* items expected (0 = unknown): sizes buffers */
} engine_ingest_source;
int engine_ingest_stream(engine *e, const engine_ingest_source *src, ms_err *err);

/* ---- the rest ---- */

/* A lossless 8-bit gray PNG of the image in bytes as MedSearch sees it
 * (decoded under the engine's limits; a DICOM file through its display
 * pipeline), longest side at most longest_side (1..16383, never enlarged),
 * for pages that cannot show the file itself (DICOM, TIFF). *png is
 * malloc'd, the caller frees it. Needs no model. Returns 0 or a code as
 * image_thumbnail. */
int engine_preview(engine *e, const uint8_t *bytes, size_t len, int longest_side, uint8_t **png,
                   size_t *png_len, ms_err *err);

/* engine_preview of the stored image id: MS_ENOTFOUND when there is none. */
int engine_preview_stored(engine *e, int64_t id, int longest_side, uint8_t **png, size_t *png_len,
                          ms_err *err);

int engine_delete(engine *e, int64_t id, ms_err *err);
/* store_edit_meta on one of the engine's store handles, as a write (it waits
 * for an ingest or delete of this process to finish). The index is not
 * touched: it holds no metadata. Returns as store_edit_meta. */
int engine_edit_meta(engine *e, int64_t id, store_meta_edit_fn edit, void *ctx, ms_err *err);
store *engine_store(engine *e);   /* the engine's store handle, for reads by one thread at a time */
model *engine_model(engine *e);
vindex *engine_index(engine *e);

typedef struct engine_stats {
    size_t images;
    int dim;
    char model_identity[256];
    char index_kind[16];
    size_t index_bytes;
    char backend[16];
    size_t queue_depth;        /* queries waiting now */
    uint64_t searches, ingests;
    double embed_ms_total, search_ms_total;
    int center_off;            /* ranks by plain cosine by choice: opened with
                                  ENGINE_CENTER_OFF, or the policy is off (and the
                                  open was not ENGINE_CENTER_ON) */
    engine_center_mode center_mode; /* the override this engine was opened with */
    int center_policy_off;     /* the collection's stored policy: 1 off, 0 auto */
    size_t center_from;        /* vectors the center came from; 0 = not centred */
    char center_tag[20];       /* 16 hex digits of SHA-256 of the center, or "none" */
    int search_qe;             /* the collection's query-expansion default, 0 = off */
} engine_stats;
int engine_get_stats(engine *e, engine_stats *st);

/* Re-embeds every stored image with the engine's model (after a model change)
 * and makes it the collection's model; the index is refilled as it goes.
 * Interrupted, it can run again: the store records each vector's model, so
 * store_check and engine_open report the images still holding an old one.
 * progress (may be NULL) is called from this thread. */
int engine_reembed(engine *e, void (*progress)(void *ctx, size_t done, size_t total),
                   void *ctx, ms_err *err);

/* Computes the center again when the collection needs it: it has at least
 * ENGINE_CENTER_MIN vectors and no center, or twice as many vectors as the
 * center came from, or half as many or fewer, or force is set; below the
 * minimum it removes a center. A recomputation is the mean of the stored vectors
 * (double sums), recorded in the store, and the index rebuilt from the store
 * with it (persisted at the next flush or close). *changed (may be NULL)
 * tells whether anything changed. ingest and reembed call it when done, so a
 * grown collection is centred before its first search.
 * It needs the engine to itself, like engine_close: no search, ingest or
 * delete may run meanwhile (it replaces the index that searches read
 * without a lock). The server never calls it; a long-running server picks a
 * new center up when it is opened again.
 * Returns 0 (also with ENGINE_CENTER_OFF, policy off or a re-embed pending:
 * nothing to do), MS_EINVAL (opened without a model) or a store error.
 * Opened with ENGINE_CENTER_ON it works the same in memory only: nothing is
 * recorded in the store. */
int engine_update_center(engine *e, int force, int *changed, ms_err *err);

/* Records the collection's centering policy (off = 1: plain cosine; 0:
 * auto) and applies it at once. off: the stored center is cleared and the
 * index rebuilt without one; auto: the center is computed when the
 * collection has at least ENGINE_CENTER_MIN vectors and the index rebuilt
 * with it. The index is persisted at the next flush or close with the new
 * identity. Works on opens without a model too (the stored vectors
 * suffice), so `medsearch center` needs none. Opened with an override
 * (ENGINE_CENTER_OFF/ON) the policy is recorded but this engine keeps
 * ranking as the override says; with a re-embed pending, or on a
 * collection without a model yet, it is recorded only. Setting the policy
 * it already has applies it again (a center that became due is computed).
 * The engine must be to itself, as for engine_update_center. Returns 0,
 * MS_EINVAL (off not 0 or 1) or a store error. */
int engine_set_center_policy(engine *e, int off, ms_err *err);

/* The neighbours a query with this engine_query.qe expands with: qe itself,
 * or the collection's default for ENGINE_QE_COLLECTION (what faces report). */
int engine_resolve_qe(const engine *e, int qe);

/* Records the collection's query-expansion default (store_set_search_qe)
 * and makes it this engine's for later searches (`ingest --qe`). The engine
 * must be to itself, as for engine_set_center_policy. Returns 0, MS_EINVAL
 * (out of range) or a store error. */
int engine_set_search_qe(engine *e, int qe, ms_err *err);

/* The center the engine applies: copies its dim floats into c and the
 * number of vectors it came from into *from_n (may be NULL). Returns 0, or
 * MS_ENOTFOUND when the collection is not centred (too small, centering
 * off, or not computed yet). */
int engine_get_center(engine *e, float *c, size_t *from_n);

/* Integrity check: store_check plus index-vs-store agreement (the index
 * holds each stored vector centred as the engine centres it). */
int engine_check(engine *e, ms_err *err);

/* Persists the index now when it changed (engine_close does it too, but
 * cannot report a failure): 0, or MS_EIO with the reason. */
int engine_flush(engine *e, ms_err *err);

/* A store handle of the engine's pool for the calling thread alone, for
 * faces that read (images, thumbnails, metadata) from many threads; give it
 * back with engine_store_release. Blocks while all handles are in use. */
int engine_store_acquire(engine *e, store **s, ms_err *err);
void engine_store_release(engine *e, store *s);

/* Where the collection lives and in what state, for `medsearch info`. */
typedef struct engine_info {
    char db[512];
    char backend[16];
    char index_path[512];      /* "" when none (PostgreSQL without cache) */
    long long db_bytes;        /* file size(s) for SQLite, -1 unknown */
    long long index_file_bytes;/* -1 when there is no file */
    uint64_t generation;       /* the store's */
    int pending_reembed;       /* a model change is under way: run reembed */
    char model_path[512];      /* "" when opened without a model */
    int center_policy_off;     /* the collection's centering policy: 1 off, 0 auto */
} engine_info;
int engine_describe(engine *e, engine_info *info, ms_err *err);

#endif
