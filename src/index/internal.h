/*
 * internal.h - the private layout of a vindex, shared by the files of
 * src/index/ (and by the index's own unit tests). Nothing outside the index
 * includes it.
 *
 * Storage. Every vector lives in a "slot" (0, 1, 2, ... in insertion order).
 * Slots are grouped in chunks of S = 2^shift slots; a chunk holds, for its S
 * slots, the float32 vectors (contiguous, so the exact scan streams them),
 * the caller's ids, tombstone flags, the optional compressed copy and, when
 * the index may hold a graph, the HNSW levels and links. Chunks never move:
 * growing the index adds chunks and, now and then, a bigger directory of
 * chunk pointers. Old directories are kept until index_free, so a reader that
 * loaded the previous directory pointer still reads valid memory: this is
 * what lets readers run beside the writer without locks.
 *
 * Publication. The writer fills a slot completely (vector, id, codes) and
 * only then stores n_slots with release order; readers load n_slots with
 * acquire order and never look past it. Graph links are published the same
 * way (see hnsw.c). Tombstones are single bytes written and read atomically.
 *
 * A loaded index points its full chunks straight into the mapped file
 * (MAP_PRIVATE: later writes to links copy the page); only the last,
 * partial chunk is copied so that appends can continue.
 */
#ifndef MS_INDEX_INTERNAL_H
#define MS_INDEX_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "index/index.h"

#define IX_NONE UINT32_MAX          /* "no slot" */
#define IX_NOT_IN_GRAPH 0xFFu       /* level of a slot the graph does not hold */
#define IX_MAX_LEVEL 15             /* levels 0..15: P(level > 15) = M^-16 */
#define IX_MAX_SLOTS (UINT32_MAX - 1u)
#define IX_LOCK_STRIPES 1024        /* writer locks for neighbour lists */
#define IX_POOL 32                  /* reusable search scratch areas */

/* ---- relaxed / acquire / release helpers on plain memory ---- */
#define ld_relaxed(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define ld_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define st_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define st_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

typedef struct ix_chunk {
    float *vec;          /* S x dim */
    int64_t *ids;        /* S caller ids */
    uint8_t *dead;       /* S tombstone flags (atomic bytes) */
    uint8_t *codes;      /* S x code_bytes: int8 / int4 codes or float16 halves; NULL if no quant */
    float *qparams;      /* S x 2 (offset, step) of int8 / int4 codes; NULL otherwise */
    uint8_t *level;      /* S top graph level or IX_NOT_IN_GRAPH; NULL without graph */
    uint32_t *links0;    /* S x (1 + M0): count, then neighbours at level 0 */
    uint32_t **upper;    /* S pointers to level x (1 + M) u32 for levels 1..level */
    bool borrowed;       /* arrays point into the mapped file (not freed) */
} ix_chunk;

typedef struct ix_dir {
    size_t cap;              /* chunk pointers the directory can hold */
    struct ix_dir *retired;  /* older directories, freed by index_free */
    ix_chunk *chunk[];
} ix_dir;

/* id -> slot, open addressing, written by the writer, read by anyone.
 * A removed id keeps its key with slot IX_NONE (reused if the id returns). */
typedef struct ix_map {
    size_t cap;              /* power of two */
    size_t used;             /* keys present (live or removed) */
    struct ix_map *retired;
    int64_t *keys;           /* IX_EMPTY_KEY where free */
    uint32_t *slots;
} ix_map;
#define IX_EMPTY_KEY INT64_MIN

/* Scratch of one search (graph or filtered scan), reused through a pool. */
typedef struct ix_scratch {
    /* Visited set of a graph walk: open addressing over (generation << 32 |
     * slot); an entry of another generation is free, so starting a walk is
     * one increment. Sized to the walk (a few thousand nodes), not to the
     * index: it stays in L1/L2 where a tag per node of a million-node graph
     * would miss the cache on every check. */
    uint64_t *vis;
    size_t vis_cap, vis_n;   /* power of two; marks of this generation */
    unsigned vis_bits;       /* log2(vis_cap) */
    uint32_t vis_gen;
    void *heap_a, *heap_b;   /* candidate and result heaps */
    size_t heap_cap;
    uint32_t *nbr;           /* neighbour list copies */
    const float **ptrs;      /* vectors to score together */
    const uint8_t **cptrs;   /* int8 codes to score together */
    const float **qps;       /* their (offset, step) */
    int32_t *iscores;
    float *scores;
    size_t nbr_cap;
    int8_t *qq, *qh;         /* int8 queries: the walk's, the heuristic's */
    size_t qq_cap;
    int pool_slot;           /* index in vindex.pool, or -1 for a private one */
} ix_scratch;

/* Bytes of one vector's compressed copy, and whether it has (offset, step). */
static inline size_t ix_code_bytes(index_quant q, size_t dim)
{
    return q == INDEX_QUANT_INT8 ? dim : q == INDEX_QUANT_F16 ? 2 * dim : q == INDEX_QUANT_INT4 ? (dim + 1) / 2 : 0;
}
static inline bool ix_has_qparams(index_quant q)
{
    return q == INDEX_QUANT_INT8 || q == INDEX_QUANT_INT4;
}

typedef struct ix_quant_info {
    index_quant kind;
    size_t code_bytes;       /* per slot: ix_code_bytes */
} ix_quant_info;

struct vindex {
    int dim;
    index_params p;          /* defaults filled in */
    unsigned shift;          /* S = 1 << shift slots per chunk */
    size_t S;
    ix_quant_info q;
    bool graph_arrays;       /* chunks carry level/links (kind AUTO or HNSW) */

    _Atomic(ix_dir *) dir;
    _Atomic size_t n_slots;  /* slots published to readers */
    _Atomic size_t n_live;   /* slots not tombstoned */
    _Atomic(ix_map *) map;
    _Atomic int kind;        /* INDEX_FLAT or INDEX_HNSW: what searches use now */

    /* graph */
    int M, M0;               /* max links above level 0, at level 0 (2M) */
    double level_mult;       /* 1 / ln(M) */
    uint64_t level_seed;
    _Atomic uint64_t entry;  /* (top level << 32) | slot, or IX_NO_ENTRY */
    size_t graph_nodes;      /* slots inserted in the graph (writer only) */
    pthread_mutex_t entry_lock;
    pthread_mutex_t *stripes;  /* IX_LOCK_STRIPES writer locks */

    /* scratch pool: a searcher claims a free entry with a CAS, never waits */
    _Atomic int pool_busy[IX_POOL];
    ix_scratch *pool[IX_POOL];

    /* the mapped file of index_load, unmapped by index_free */
    void *mapped;
    size_t mapped_len;
    size_t upper_bytes;      /* malloc'd upper link lists, for index_memory_bytes */
};
#define IX_NO_ENTRY UINT64_MAX

/* ---- storage (index.c) ---- */
static inline ix_chunk *ix_chunk_of(const vindex *ix, size_t slot)
{
    ix_dir *d = atomic_load_explicit((_Atomic(ix_dir *) *)&ix->dir, memory_order_acquire);
    return d->chunk[slot >> ix->shift];
}
static inline const float *ix_vec(const vindex *ix, size_t slot)
{
    return ix_chunk_of(ix, slot)->vec + (slot & (ix->S - 1)) * (size_t)ix->dim;
}
static inline int64_t ix_id(const vindex *ix, size_t slot)
{
    return ix_chunk_of(ix, slot)->ids[slot & (ix->S - 1)];
}
static inline bool ix_dead(const vindex *ix, size_t slot)
{
    return ld_relaxed(&ix_chunk_of(ix, slot)->dead[slot & (ix->S - 1)]) != 0;
}
static inline size_t ix_published(const vindex *ix)
{
    return atomic_load_explicit((_Atomic size_t *)&ix->n_slots, memory_order_acquire);
}

/* Slot of id, or IX_NONE. Safe beside the writer. */
uint32_t ix_map_find(const vindex *ix, int64_t id);

ix_scratch *ix_scratch_get(vindex *ix);
void ix_scratch_put(vindex *ix, ix_scratch *s);
/* Room for heap_items heap entries, nbr neighbours and int8 queries of dim. */
int ix_scratch_reserve(ix_scratch *s, size_t heap_items, size_t item_size, size_t nbr, size_t dim);

/* ---- bounded top-k (topk.c) ----
 * Order: higher score first, equal scores by smaller id. The heap keeps the
 * k best seen so far with the worst at the root. */
typedef struct ix_hitheap {
    index_hit *h;
    int n, k;
} ix_hitheap;

static inline bool ix_better(float s1, int64_t id1, float s2, int64_t id2)
{
    return s1 > s2 || (s1 == s2 && id1 < id2);
}
void ix_heap_push(ix_hitheap *hp, float score, int64_t id);
/* Would (score, id) enter the heap? */
static inline bool ix_heap_wants(const ix_hitheap *hp, float score, int64_t id)
{
    return hp->n < hp->k || ix_better(score, id, hp->h[0].score, hp->h[0].id);
}
/* Sorts the heap's contents best first, in place; returns the count. */
int ix_heap_sort(ix_hitheap *hp);

/* ---- exact scans (flat.c) ---- */
/* Exact top-k over all live slots, or over the slots set in bitmap
 * (bitmap == NULL: all). hits holds k. */
int ix_flat_search(vindex *ix, const float *q, int k, const uint64_t *bitmap, size_t n_slots,
                   index_hit *hits, int *n_hits, ms_err *err);
/* Exact top-k over a sorted list of slots. */
int ix_flat_search_slots(vindex *ix, const float *q, int k, const uint32_t *slots, size_t n,
                         index_hit *hits, int *n_hits, ms_err *err);
/* Compressed pre-scan of all live slots, then exact re-rank of the best
 * `rerank` candidates. */
int ix_flat_search_quant(vindex *ix, const float *q, int k, int rerank, index_hit *hits,
                         int *n_hits, ms_err *err);
/* Blocked exact top-k of nq queries (threads split the slots). */
int ix_flat_search_batch(vindex *ix, const float *qs, int nq, int k, index_hit *hits,
                         int *n_hits, ms_err *err);
/* Re-rank candidate count used by the quantised pre-scan for k. */
int ix_rerank_count(int k);

/* ---- compressed copies (quant.c) ---- */
void ix_quant_encode(const vindex *ix, const float *v, uint8_t *codes, float *qparams);
/* int8 affine code of one vector: qparams = (offset, step). */
void ix_quant_encode_int8(int dim, const float *v, uint8_t *codes, float *qparams);
/* int4 affine code (0..15, packed as simd.h's i4dot_ptrs reads it). */
void ix_quant_encode_int4(int dim, const float *v, uint8_t *codes, float *qparams);

/* A query quantised symmetrically to int8: q ~ scale * qq; sum is the sum
 * of q. Against int8 codes (offset, step, c) the score is
 *     offset * sum + step * scale * sum_j c[j] * qq[j]. */
typedef struct ix_qquery {
    int8_t *qq;      /* dim entries (+1, zero, for an odd dim), owned by the caller */
    float scale;
    float sum;
} ix_qquery;
void ix_quant_query(const float *q, int dim, ix_qquery *out);
/* The same for a stored vector given by its codes (the dequantised vector
 * is the query). */
void ix_quant_query_codes(const uint8_t *codes, const float *qparams, int dim, ix_qquery *out);
static inline float ix_qscore(const ix_qquery *qz, const float *qparams, int32_t idot)
{
    return qparams[0] * qz->sum + qparams[1] * qz->scale * (float)idot;
}

/* ---- HNSW (hnsw.c) ---- */
int ix_hnsw_init(vindex *ix, ms_err *err);
/* Inserts slots [from, to) into the graph with `threads` workers. */
int ix_hnsw_insert_range(vindex *ix, size_t from, size_t to, int threads, ms_err *err);
/* Graph top-k; bitmap (may be NULL) restricts the answer, not the path.
 * Returns the count found (may be < k: the caller falls back to a scan). */
int ix_hnsw_search(vindex *ix, const float *q, int k, int ef, const uint64_t *bitmap,
                   size_t bitmap_bits, index_hit *hits, int *n_hits, ms_err *err);

/* ---- chunk allocation (index.c) ---- */
int ix_reserve_slots(vindex *ix, size_t n_total, ms_err *err);
size_t ix_links0_stride(const vindex *ix);
size_t ix_upper_stride(const vindex *ix);

/* Fills the id map of a loaded index (MS_EFORMAT on a duplicate id). */
int ix_load_map(vindex *ix, const int64_t *ids, const uint8_t *dead, size_t n, ms_err *err);

/* ---- checksums (persist.c) ---- */
uint32_t ix_crc32c(uint32_t crc, const void *buf, size_t len);

/* Filtered search with the strategy forced: 0 choose, 1 graph, 2 scan. */
int ix_search_filtered_mode(vindex *ix, const float *query, int k, int ef, const int64_t *allowed,
                            size_t n_allowed, int mode, index_hit *hits, int *n_hits, ms_err *err);
/* index_create with a chosen chunk size (0: from dim); tests use small ones. */
int ix_create(int dim, const index_params *p, unsigned chunk_shift, vindex **out, ms_err *err);

/* ---- threads ---- */
int ix_threads(const vindex *ix);

#endif
