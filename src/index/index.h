/*
 * index.h - top-k cosine search over L2-normalised float vectors.
 *
 * Two kinds behind one interface: an exact SIMD scan (AVX-512 / AVX2 chosen
 * at run time, portable fallback; optional int8 or float16 pre-scan with
 * exact re-rank) and an HNSW graph. INDEX_AUTO uses exact search below
 * params.auto_threshold vectors and HNSW above. Vectors are identified by
 * the caller's int64 ids (the store's image ids); internal slots are private.
 *
 * Filters: index_search_filtered restricts the answer to a caller-given set
 * of ids. It never returns an id outside the set and returns min(k, |set ∩
 * index|) results: small sets are scanned exactly, large ones searched in
 * the graph with the set as a bitmap.
 *
 * Concurrency contract: any number of threads may search (index_search*,
 * index_get, index_count, index_memory_bytes) while at most one thread adds
 * or removes (the writer); readers never block on the writer and never take
 * a lock it holds (see src/index/hnsw.c and internal.h for how: slots and
 * graph links are published with release/acquire order, link lists are
 * read without locks, old chunk directories and id maps live until
 * index_free). A reader sees each add or remove entirely or not at all per
 * vector; a replaced id is briefly absent, never present twice. Two writers
 * at once must be serialised by the caller (index_add itself may use
 * params.threads build threads). index_save may run beside readers, not
 * beside the writer. index_rebuild and index_free need the index to
 * themselves (no readers): they replace or release the storage.
 *
 * Persistence: index_save writes PATH.tmp, fsyncs, renames over PATH. The
 * header holds magic, version, dimension, count, metric, the caller's
 * model identity and generation, and a checksum; index_load validates all
 * of it and maps or reads the file in one go.
 *
 * Ties in score are broken by smaller id first, everywhere.
 */
#ifndef MS_INDEX_H
#define MS_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

typedef struct vindex vindex;

typedef enum { INDEX_AUTO = 0, INDEX_FLAT, INDEX_HNSW } index_kind;
/* Compressed copies beside the float32 vectors (the float32 ones stay: they
 * give exact scores). INT8: dim + 8 bytes a vector; F16: 2 * dim; INT4:
 * ceil(dim / 2) + 8, for graph walks where an int8 copy costs too much
 * memory (it is the coarsest; the exact re-rank recovers the order). */
typedef enum { INDEX_QUANT_NONE = 0, INDEX_QUANT_INT8, INDEX_QUANT_F16, INDEX_QUANT_INT4 } index_quant;

typedef struct index_params {
    index_kind kind;
    size_t auto_threshold;  /* AUTO: HNSW at or above this many vectors (default 20000) */
    int M;                  /* HNSW links per node (default 16) */
    int ef_construction;    /* default 200 */
    int ef_search;          /* default 64: recall@10 >= 0.95 at 100,000 x 1,280 (docs) */
    index_quant quant;      /* compressed copy, default NONE (see index_quant) */
    int threads;            /* build threads, 0 = all cores */
    int graph_f32;          /* 1: HNSW builds and walks on float32 only (see below); default 0 */
} index_params;

/*
 * int8 distances in the graph (graph_f32 == 0, the default):
 * - Search: with quant INT8 (or INT4) the HNSW walk (greedy descent and
 *   beam search) scores the codes (dim bytes a node, or dim / 2, instead of
 *   4 * dim), then the final ef candidates are re-ranked exactly on float32
 *   and the top k of those are returned, with exact scores. Without such a
 *   copy (NONE, F16) the walk is float32 throughout.
 * - Build: inserts score the int8 codes too when there are any (quant INT8)
 *   and, without them (NONE, F16, INT4), when one add or rebuild inserts at least 1024 nodes
 *   of dimension >= 64 and at least as many as the graph already holds (a
 *   bulk build): codes for every slot are then made in a temporary array of
 *   dim + 8 bytes a vector, freed when the build ends (peak memory during
 *   the build, not after it). Readers that search meanwhile walk float32.
 * The codes are approximate (about 1e-3 of a cosine); recall is measured
 * against the exact scan by the tests and the benchmark. graph_f32 = 1
 * keeps every graph distance float32 (the reference; also a run-time
 * setting of index_load).
 */

typedef struct index_hit {
    int64_t id;
    float score;            /* cosine similarity, higher is closer */
} index_hit;

void index_params_init(index_params *p);

/* Returns 0 or MS_EINVAL (dim outside 1..65536), MS_ENOMEM. */
int index_create(int dim, const index_params *p, vindex **out, ms_err *err);
void index_free(vindex *ix);

/* Adds n vectors (n x dim floats, already L2-normalised; scores are inner
 * products) with their ids; the index copies them. An id already present is
 * replaced. INT64_MIN is reserved. With kind AUTO, the add that brings the
 * live count to auto_threshold builds the graph over everything (readers
 * keep using the exact scan meanwhile). Returns 0, MS_EINVAL (a NaN or
 * infinite component, the reserved id), MS_ETOOBIG (over 2^32 - 2 slots)
 * or MS_ENOMEM. */
int index_add(vindex *ix, const int64_t *ids, const float *vecs, size_t n, ms_err *err);

/* Removes an id (a tombstone for HNSW, compacted by index_rebuild).
 * Returns 0, or MS_ENOTFOUND when absent. */
int index_remove(vindex *ix, int64_t id);

/* Rebuilds the structure without tombstones (and switches kind when AUTO
 * says so). Needs the index to itself (no concurrent readers). */
int index_rebuild(vindex *ix, ms_err *err);

/* Top-k for one query. hits must hold k entries; *n_hits gets how many were
 * written (k, or fewer when the index holds fewer). ef <= 0 uses the
 * default ef_search. */
int index_search(vindex *ix, const float *query, int k, int ef, index_hit *hits,
                 int *n_hits, ms_err *err);

/* nq queries at once (blocked kernel for the exact kind); hits is nq x k,
 * n_hits has nq entries. */
int index_search_batch(vindex *ix, const float *queries, int nq, int k, int ef,
                       index_hit *hits, int *n_hits, ms_err *err);

/* Top-k among the given ids only (ids absent from the index, removed ids
 * and duplicates are ignored). Returns min(k, passing) hits. Small sets
 * are scanned exactly; large ones (when the graph's expected cost, about
 * 4 * ef * 2M / pass rate distances, is below the set's size) walk the
 * graph admitting only members, and fall back to the exact scan if the
 * walk finds fewer than k. */
int index_search_filtered(vindex *ix, const float *query, int k, int ef,
                          const int64_t *allowed, size_t n_allowed,
                          index_hit *hits, int *n_hits, ms_err *err);

/* Exact top-k regardless of kind: the reference recall is measured against. */
int index_search_exact(vindex *ix, const float *query, int k, index_hit *hits,
                       int *n_hits, ms_err *err);

/* Copies the stored vector of id into out[dim]; MS_ENOTFOUND when absent. */
int index_get(const vindex *ix, int64_t id, float *out);

size_t index_count(const vindex *ix);        /* live vectors */
int index_dim(const vindex *ix);
index_kind index_current_kind(const vindex *ix);  /* FLAT or HNSW */
const char *index_kind_name(index_kind k);
size_t index_memory_bytes(const vindex *ix);

/* Persistence. generation is an opaque counter from the store that tells
 * whether the file is stale; model_identity must match on load. */
int index_save(const vindex *ix, const char *path, const char *model_identity,
               uint64_t generation, ms_err *err);
/* Returns 0, MS_ENOTFOUND (no file), MS_EFORMAT (damaged, truncated,
 * checksum, impossible graph, a NaN or infinite number), MS_ECONFLICT
 * (dimension or model identity differs), MS_EIO. *generation (may be NULL) receives the saved
 * generation. The structure (kind, M, efConstruction, quantisation, graph)
 * comes from the file; p (may be NULL) only supplies run-time settings:
 * ef_search (when > 0), threads and graph_f32. The file is mapped privately: it must
 * be replaced by rename (as index_save does), never rewritten in place,
 * while an index loaded from it is open. */
int index_load(const char *path, int dim, const char *model_identity,
               const index_params *p, vindex **out, uint64_t *generation, ms_err *err);

/* Instruction set of the scan kernels ("avx512", "avx2" or "portable"),
 * chosen at run time from the CPU. */
const char *index_simd_name(void);
/* Forces a kernel set ("auto", "avx512", "avx2", "portable") for tests and
 * benchmarks; call it while no search runs. Returns 0, MS_EINVAL (unknown
 * name) or MS_EUNSUPPORTED (this CPU lacks it). */
int index_simd_select(const char *name, ms_err *err);

#endif
