/*
 * flat.c - exact search: a scan of every vector (or of a candidate set)
 * with the SIMD kernels of simd.c and a bounded heap.
 *
 * Single query: the scan streams each chunk's contiguous vectors through
 * dot_rows in blocks of SCAN_BLOCK scores; a score enters the heap only if
 * it beats the current k-th, so the heap costs almost nothing and the scan
 * runs at memory bandwidth.
 *
 * Compressed pre-scan: the int8 (or float16) copy is a quarter (half) of the
 * bytes, so scanning it is that much faster; the best `rerank` candidates by
 * approximate score are then scored exactly from the float32 vectors. The
 * approximation error is tiny next to the gaps between true neighbours and
 * the rest, so a few dozen candidates per wanted hit recover the exact
 * answer (the tests and the benchmark check recall@10 = 1.0).
 *
 * Batches: dot_block computes a tile of queries x vectors from registers,
 * each vector block is loaded once for every query of the batch, and the
 * threads split the vectors (each keeps its own heaps, merged at the end).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "index/internal.h"
#include "index/simd.h"

#define SCAN_BLOCK 256
#define PTR_GROUP 64
#define RERANK_FACTOR 8
#define RERANK_MIN 64

int ix_rerank_count(int k)
{
    long r = (long)k * RERANK_FACTOR;
    if (r < (long)k + RERANK_MIN)
        r = (long)k + RERANK_MIN;
    return r > 1 << 30 ? 1 << 30 : (int)r;
}

static inline void consider(vindex *ix, ix_hitheap *hp, const ix_chunk *c, size_t i, float score)
{
    if (hp->n == hp->k && score < hp->h[0].score)
        return; /* the common case: not among the best */
    if (ld_relaxed(&c->dead[i]))
        return;
    int64_t id = c->ids[i];
    if (ix_heap_wants(hp, score, id))
        ix_heap_push(hp, score, id);
}

static size_t cap_k(int k, size_t n)
{
    return (size_t)k < n ? (size_t)k : n;
}

/* Scan of every slot below n. */
static void scan_all(vindex *ix, const float *q, size_t n, ix_hitheap *hp)
{
    const ix_kernels *K = ix_kern();
    float scores[SCAN_BLOCK];
    size_t d = (size_t)ix->dim;
    for (size_t base = 0; base < n; base += ix->S) {
        const ix_chunk *c = ix_chunk_of(ix, base);
        size_t in_chunk = n - base < ix->S ? n - base : ix->S;
        for (size_t b = 0; b < in_chunk; b += SCAN_BLOCK) {
            size_t m = in_chunk - b < SCAN_BLOCK ? in_chunk - b : SCAN_BLOCK;
            K->dot_rows(q, c->vec + b * d, m, ix->dim, scores);
            for (size_t i = 0; i < m; i++)
                consider(ix, hp, c, b + i, scores[i]);
        }
    }
}

/* Scan of a list of slots, PTR_GROUP at a time. */
static void scan_slots(vindex *ix, const float *q, const uint32_t *slots, size_t n, ix_hitheap *hp)
{
    const ix_kernels *K = ix_kern();
    const float *ptrs[PTR_GROUP];
    float scores[PTR_GROUP];
    for (size_t g = 0; g < n; g += PTR_GROUP) {
        size_t m = n - g < PTR_GROUP ? n - g : PTR_GROUP;
        for (size_t i = 0; i < m; i++)
            ptrs[i] = ix_vec(ix, slots[g + i]);
        if (g + PTR_GROUP < n) /* start the next group's misses early */
            for (size_t i = g + PTR_GROUP; i < n && i < g + 2 * PTR_GROUP; i++)
                __builtin_prefetch(ix_vec(ix, slots[i]));
        K->dot_ptrs(q, ptrs, m, ix->dim, scores);
        for (size_t i = 0; i < m; i++) {
            size_t s = slots[g + i];
            consider(ix, hp, ix_chunk_of(ix, s), s & (ix->S - 1), scores[i]);
        }
    }
}

int ix_flat_search_slots(vindex *ix, const float *q, int k, const uint32_t *slots, size_t n,
                         index_hit *hits, int *n_hits, ms_err *err)
{
    ix_hitheap hp = {hits, 0, (int)cap_k(k, n)};
    if (hp.k > 0)
        scan_slots(ix, q, slots, n, &hp);
    *n_hits = ix_heap_sort(&hp);
    return 0;
}

int ix_flat_search(vindex *ix, const float *q, int k, const uint64_t *bitmap, size_t n_bits,
                   index_hit *hits, int *n_hits, ms_err *err)
{
    size_t n = ix_published(ix);
    *n_hits = 0;
    if (!bitmap) {
        ix_hitheap hp = {hits, 0, (int)cap_k(k, n)};
        if (hp.k > 0)
            scan_all(ix, q, n, &hp);
        *n_hits = ix_heap_sort(&hp);
        return 0;
    }
    if (n_bits < n)
        n = n_bits;
    size_t count = 0;
    for (size_t w = 0; w < (n + 63) / 64; w++)
        count += (size_t)__builtin_popcountll(bitmap[w]);
    uint32_t *slots = malloc((count ? count : 1) * sizeof *slots);
    if (!slots)
        return ms_err_set(err, MS_ENOMEM, "index: out of memory for %zu candidates", count);
    size_t m = 0;
    for (size_t w = 0; w < (n + 63) / 64; w++)
        for (uint64_t bits = bitmap[w]; bits; bits &= bits - 1) {
            size_t s = w * 64 + (size_t)__builtin_ctzll(bits);
            if (s < n)
                slots[m++] = (uint32_t)s;
        }
    int rc = ix_flat_search_slots(ix, q, k, slots, m, hits, n_hits, err);
    free(slots);
    return rc;
}

/* ------------------------------------------------------------------ */
/* compressed pre-scan + exact re-rank                                  */
/* ------------------------------------------------------------------ */

/* Approximate scores of slots [base, base+m) of chunk c. */
static void approx_block(const vindex *ix, const ix_chunk *c, size_t b, size_t m, const float *q,
                         const ix_qquery *qz, int32_t *iscores, float *scores)
{
    const ix_kernels *K = ix_kern();
    if (ix->q.kind == INDEX_QUANT_F16) {
        K->hdot_rows(q, (const uint16_t *)(const void *)(c->codes + b * ix->q.code_bytes), m, ix->dim, scores);
        return;
    }
    if (ix->q.kind == INDEX_QUANT_INT4) {
        const uint8_t *rows[SCAN_BLOCK];
        for (size_t i = 0; i < m; i++)
            rows[i] = c->codes + (b + i) * ix->q.code_bytes;
        K->i4dot_ptrs(qz->qq, rows, m, ix->dim, iscores);
    } else {
        K->idot_rows(qz->qq, c->codes + b * ix->q.code_bytes, m, ix->dim, iscores);
    }
    const float *qp = c->qparams + 2 * b;
    for (size_t i = 0; i < m; i++)
        scores[i] = ix_qscore(qz, qp + 2 * i, iscores[i]);
}

int ix_flat_search_quant(vindex *ix, const float *q, int k, int rerank, index_hit *hits, int *n_hits,
                         ms_err *err)
{
    size_t n = ix_published(ix);
    *n_hits = 0;
    size_t r = cap_k(rerank > k ? rerank : k, n);
    if (r == 0)
        return 0;
    index_hit *cand = malloc(r * sizeof *cand);
    int8_t *qq = malloc((size_t)ix->dim + 1);
    uint32_t *slots = malloc(r * sizeof *slots);
    if (!cand || !qq || !slots) {
        free(cand);
        free(qq);
        free(slots);
        return ms_err_set(err, MS_ENOMEM, "index: out of memory for %zu re-rank candidates", r);
    }
    ix_qquery qz = {qq, 1, 0};
    if (ix->q.kind != INDEX_QUANT_F16)
        ix_quant_query(q, ix->dim, &qz);
    /* Candidates are keyed by slot: ties in approximate score do not matter. */
    ix_hitheap hp = {cand, 0, (int)r};
    int32_t iscores[SCAN_BLOCK];
    float scores[SCAN_BLOCK];
    for (size_t base = 0; base < n; base += ix->S) {
        const ix_chunk *c = ix_chunk_of(ix, base);
        size_t in_chunk = n - base < ix->S ? n - base : ix->S;
        for (size_t b = 0; b < in_chunk; b += SCAN_BLOCK) {
            size_t m = in_chunk - b < SCAN_BLOCK ? in_chunk - b : SCAN_BLOCK;
            approx_block(ix, c, b, m, q, &qz, iscores, scores);
            for (size_t i = 0; i < m; i++) {
                if (hp.n == hp.k && scores[i] < hp.h[0].score)
                    continue;
                if (ld_relaxed(&c->dead[b + i]))
                    continue;
                if (ix_heap_wants(&hp, scores[i], (int64_t)(base + b + i)))
                    ix_heap_push(&hp, scores[i], (int64_t)(base + b + i));
            }
        }
    }
    for (int i = 0; i < hp.n; i++)
        slots[i] = (uint32_t)cand[i].id;
    int rc = ix_flat_search_slots(ix, q, k, slots, (size_t)hp.n, hits, n_hits, err);
    free(cand);
    free(qq);
    free(slots);
    return rc;
}

/* ------------------------------------------------------------------ */
/* batches                                                              */
/* ------------------------------------------------------------------ */

typedef struct flat_batch {
    vindex *ix;
    const float *qs;
    int nq, k;
    size_t n, block, n_blocks;
    _Atomic size_t next;
} flat_batch;

typedef struct flat_worker {
    flat_batch *b;
    index_hit *heaps;   /* nq x k */
    int *counts;
    float *scores;      /* nq x block */
    pthread_t th;
    bool started;
} flat_worker;

static void *flat_batch_run(void *arg)
{
    flat_worker *w = arg;
    flat_batch *b = w->b;
    vindex *ix = b->ix;
    const ix_kernels *K = ix_kern();
    size_t d = (size_t)ix->dim;
    for (;;) {
        size_t u = atomic_fetch_add(&b->next, 1);
        if (u >= b->n_blocks)
            return NULL;
        size_t start = u * b->block;
        size_t m = b->n - start < b->block ? b->n - start : b->block;
        const ix_chunk *c = ix_chunk_of(ix, start);
        size_t off = start & (ix->S - 1);
        K->dot_block(b->qs, b->nq, c->vec + off * d, m, ix->dim, w->scores, b->block);
        for (int j = 0; j < b->nq; j++) {
            ix_hitheap hp = {w->heaps + (size_t)j * b->k, w->counts[j], b->k};
            const float *sc = w->scores + (size_t)j * b->block;
            for (size_t i = 0; i < m; i++)
                consider(ix, &hp, c, off + i, sc[i]);
            w->counts[j] = hp.n;
        }
    }
}

int ix_flat_search_batch(vindex *ix, const float *qs, int nq, int k, index_hit *hits, int *n_hits,
                         ms_err *err)
{
    size_t n = ix_published(ix);
    int kk = (int)cap_k(k, n);
    if (kk == 0) {
        memset(n_hits, 0, (size_t)nq * sizeof *n_hits);
        return 0;
    }
    /* A block of vectors of ~256 KiB stays in L2 while every query passes. */
    size_t block = 256 * 1024 / ((size_t)ix->dim * sizeof(float));
    block = block < 4 ? 4 : block > 256 ? 256 : block;
    while (block & (block - 1))
        block &= block - 1; /* a power of two divides the chunk size */
    if (block > ix->S)
        block = ix->S;
    flat_batch b = {.ix = ix, .qs = qs, .nq = nq, .k = kk, .n = n, .block = block,
                    .n_blocks = (n + block - 1) / block};
    int nt = ix_threads(ix);
    if ((size_t)nt > b.n_blocks)
        nt = (int)b.n_blocks;
    flat_worker *w = calloc((size_t)nt, sizeof *w);
    int rc = w ? 0 : MS_ENOMEM;
    for (int t = 0; t < nt && !rc; t++) {
        w[t].b = &b;
        w[t].heaps = malloc((size_t)nq * (size_t)kk * sizeof *w[t].heaps);
        w[t].counts = calloc((size_t)nq, sizeof *w[t].counts);
        w[t].scores = malloc((size_t)nq * block * sizeof *w[t].scores);
        if (!w[t].heaps || !w[t].counts || !w[t].scores)
            rc = MS_ENOMEM;
    }
    if (!rc) {
        for (int t = 1; t < nt; t++)
            w[t].started = pthread_create(&w[t].th, NULL, flat_batch_run, &w[t]) == 0;
        flat_batch_run(&w[0]);
        for (int t = 1; t < nt; t++)
            if (w[t].started)
                pthread_join(w[t].th, NULL);
            else
                flat_batch_run(&w[t]); /* no thread: do its share here */
        for (int j = 0; j < nq; j++) {
            ix_hitheap hp = {hits + (size_t)j * k, 0, kk};
            for (int t = 0; t < nt; t++)
                for (int i = 0; i < w[t].counts[j]; i++) {
                    const index_hit *h = &w[t].heaps[(size_t)j * kk + i];
                    if (ix_heap_wants(&hp, h->score, h->id))
                        ix_heap_push(&hp, h->score, h->id);
                }
            n_hits[j] = ix_heap_sort(&hp);
        }
    }
    for (int t = 0; w && t < nt; t++) {
        free(w[t].heaps);
        free(w[t].counts);
        free(w[t].scores);
    }
    free(w);
    if (rc)
        return ms_err_set(err, MS_ENOMEM, "index: out of memory for a batch of %d queries", nq);
    return 0;
}
