/*
 * engine/internal.h - what the engine's files (engine.c and the files of src/engine/) share.
 * Nothing outside the engine includes this; the contract is engine.h.
 *
 * Locks, in the order they may be nested:
 *   write_mu (one writer: store writes, index adds/removes, generation)
 *     -> pool.mu (store handle pool, held only to take/return a handle)
 *     -> infer.mu (inference queue, held only to queue/dequeue)
 * Searches take no engine lock to read the index: the index allows any
 * number of readers beside its one writer (index.h). The center (and the
 * index that goes with it) is replaced only by engine_open,
 * engine_update_center and engine_reembed, which need the engine to
 * themselves (engine.h), so searches read it without a lock too.
 */
#ifndef MS_ENGINE_INTERNAL_H
#define MS_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "engine.h"

#define ENGINE_POOL_MAX 16
/* Batches in flight in one ingest stream: one being stored, one in the
 * model, one being decoded. */
#define ENGINE_SLOTS 3

/* ---- the inference thread (infer.c) ---- */
typedef struct infer_job {
    const float *input;   /* n prepared images, NCHW */
    int n;
    float *out;           /* n x dim raw features */
    float *shares;        /* when not NULL: model_feature_shares into out and
                             this (n x dim x grid cells), run as a batch of its own */
    int bulk;             /* ingest/re-embed batch: queued without a bound */
    int done, rc;
    ms_err err;
    struct infer_job *next;
} infer_job;

typedef struct infer_queue {
    model *m;
    int max_batch, dim;
    size_t per_image;     /* floats of one prepared image */
    size_t depth;         /* most queries waiting before MS_EBUSY */
    pthread_t thread;
    int running, stop;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    infer_job *qh, *qt;   /* queries (searches, embeds) */
    size_t qn;
    infer_job *bh, *bt;   /* bulk batches (ingest, re-embed) */
    float *in, *out;      /* gathering buffers for a batch of queries */
    uint64_t forwards, images;
    double forward_ms;
} infer_queue;

int infer_start(infer_queue *q, model *m, int max_batch, size_t depth, ms_err *err);
void infer_stop(infer_queue *q);
/* Queues a job; a query is refused with MS_EBUSY when depth are waiting. */
int infer_submit(infer_queue *q, infer_job *job, ms_err *err);
/* Waits for a submitted job; returns its rc (and copies its message). */
int infer_wait(infer_queue *q, infer_job *job, ms_err *err);
size_t infer_waiting(infer_queue *q);

/* ---- decode workers (ingest.c) ---- */
typedef struct work_task {
    void (*fn)(void *arg);
    void *arg;
    struct work_task *next;
} work_task;

typedef struct work_pool {
    pthread_t *threads;
    int n, stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    work_task *head, *tail;
} work_pool;

/* ---- the engine ---- */
struct engine {
    char *db, *model_path, *index_path;
    engine_options opt;           /* copy; its strings point at the fields above */
    model *m;                     /* NULL when opened with no_model */
    int dim;                      /* 0: empty collection opened without a model */
    char identity[256];           /* model identity of the vectors in the index */
    int pending_reembed;          /* opened with reembed and another model: the
                                     collection switches in engine_reembed */
    size_t missing_vectors;       /* images without a vector of the model (an
                                     interrupted re-embed), seen at open */
    const char *backend;

    store *main_store;            /* engine_store(): handed to one face thread */
    pthread_mutex_t pool_mu;
    pthread_cond_t pool_cv;
    store *pool_free[ENGINE_POOL_MAX];
    int pool_nfree, pool_open;

    pthread_mutex_t write_mu;
    vindex *ix;
    uint64_t known_gen;           /* store generation the index reflects */
    uint64_t loaded_gen;
    int index_dirty;              /* changed since loaded/saved */
    int index_foreign;            /* another process wrote: never save as current */

    /* The center (center.c): NULL = none, the transform is the identity. */
    float *center;
    size_t center_n;              /* vectors it came from */
    char center_tag[20];          /* 16 hex digits of SHA-256 of its bytes, or "none" */
    int center_unstored;          /* the store no longer holds it (a re-embed with the
                                     same model cleared it there): recompute */
    int center_policy_off;        /* the collection's stored policy (engine.h) */
    int search_qe;                /* the collection's query-expansion default (engine.h) */

    infer_queue infer;
    pthread_mutex_t workers_mu;
    work_pool workers;
    int workers_started;

    pthread_mutex_t stats_mu;
    uint64_t searches, ingests;
    double embed_ms_total, search_ms_total;
};

/* engine.c */
int engine_pool_get(engine *e, store **s, ms_err *err);
void engine_pool_put(engine *e, store *s);
/* A writer section: takes write_mu and notes whether another process wrote
 * to the store since this engine last did (the index would then miss it). */
void engine_write_begin(engine *e, store *s);
void engine_write_end(engine *e, store *s, int changed);
int engine_need_model(const engine *e, ms_err *err);
/* The stored bytes of image id, read through a handle of the pool (*bytes
 * malloc'd, the caller frees it): 0, MS_ENOTFOUND, or a store error. */
int engine_read_stored(engine *e, int64_t id, uint8_t **bytes, size_t *len, ms_err *err);
/* Caller's thread: decode+prepare one image, or the region of it (NULL:
 * all of it; used receives it in pixels when not NULL), into a malloc'd
 * input. */
int engine_prepare(engine *e, const uint8_t *bytes, size_t len, const image_region *region,
                   image_rect *used, float **input, image_info *info, ms_err *err);

/* Fills a fresh index from every stored vector, centred (engine.c). */
int engine_index_rebuild(engine *e, store *s, ms_err *err);
/* The same, for an engine already open: also records the generation the
 * index reflects and marks it to be persisted. */
int engine_index_rebuild_now(engine *e, store *s, ms_err *err);

/* center.c */
/* x -> l2(x - c) for n vectors of dim floats in place; nothing without a center. */
void engine_center_apply(const engine *e, float *v, size_t n);
/* The same for one vector; returns 1 / |x - c|, or 0 when x was left as it
 * is (no center, or x too near it to have a direction of its own). */
double engine_center_one(const engine *e, float *x);
/* The identity the index file is saved and loaded with: the model's plus
 * "|center=" and the center's tag ("none" without one), or "off" when the
 * collection's policy is off. */
void engine_index_identity(const engine *e, char *out, size_t len);
/* engine_open: reads the stored center (rep->center_note says when one was
 * unusable), then computes it when needed and allowed. Before the index. */
int engine_center_open(engine *e, store *s, engine_open_report *rep, ms_err *err);
/* Drops the center in memory (not in the store). */
void engine_center_forget(engine *e);
/* Does this engine rank centred: ENGINE_CENTER_ON, or AUTO with policy auto? */
int engine_centering(const engine *e);

/* feedback.c (engine.h "Relevance feedback") */
/* The lists' counts and ids: 0 or MS_EINVAL. Cheap; before any embedding. */
int engine_feedback_check(const engine_query *q, ms_err *err);
int engine_feedback_given(const engine_query *q);
/* Every id a search leaves out: the query's own (by_id with exclude_self)
 * and the marked images, sorted, without repeats (*ids malloc'd, NULL when
 * there are none). 0, MS_EINVAL (an id on both lists) or MS_ENOMEM. */
int engine_feedback_excluded(const engine_query *q, int64_t **ids, size_t *n, ms_err *err);
/* Whether id is in sorted[0..n) (binary search). */
int engine_ids_contain(const int64_t *sorted, size_t n, int64_t id);
/* out = the centred query vec moved by q's marked images, unit length.
 * 0, MS_ENOTFOUND (a marked image not in the index), MS_EINVAL (nothing
 * left of the query), MS_ENOMEM. */
int engine_feedback_apply(const engine *e, const engine_query *q, const float *vec, float *out, ms_err *err);

/* ingest.c */
int engine_workers_ensure(engine *e, ms_err *err);
void engine_workers_stop(engine *e);

#endif
