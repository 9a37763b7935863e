/*
 * hnsw.c - Hierarchical Navigable Small World graph (Malkov & Yashunin,
 * 2016) over the index's slots, with concurrent readers, parallel inserts,
 * tombstones and filtered search.
 *
 * THE IDEA
 * --------
 * Every vector is a node. Each node links to a few (M, or M0 = 2M on the
 * bottom layer) nodes that are close to it, chosen so that the links point
 * in different directions. Greedy walking along links towards a query then
 * reaches the query's neighbourhood in few steps, as in a small-world
 * network. To make the first steps long, nodes also live on upper layers
 * with exponentially fewer members: a node's top layer is
 * floor(-ln(U) / ln(M)), so each layer holds about 1/M of the one below and
 * the top has a handful of nodes. A search starts at the single entry point
 * on the top layer, walks greedily down the layers (each layer's result is
 * the next one's starting node), and on layer 0 runs a beam search: a
 * candidate queue ordered by closeness, and a result set of the ef best
 * nodes seen; it stops when the closest unexpanded candidate is farther than
 * the worst of ef results. ef (efSearch) trades speed for recall.
 *
 * Inserting a node is a search for its own vector (with ef =
 * efConstruction) on every layer it belongs to, followed by choosing its
 * links among the results with the paper's heuristic: take candidates from
 * the closest, and keep one only if it is closer to the new node than to
 * every link already kept. This keeps links spread out (a cluster needs one
 * link, not M) and is what makes the graph navigable on clustered data,
 * where plain "M nearest" links make islands. Each chosen neighbour then
 * links back; a neighbour whose list is full re-runs the heuristic over its
 * old links plus the new node.
 *
 * Similarity is the inner product (cosine on normalised vectors); higher
 * is closer. Scores come from the same kernels as the exact scan, so a
 * vector gets the same score whichever path found it.
 *
 * COMPRESSED WALKS
 * ----------------
 * A walk is bound by memory traffic: every node it scores is a random read
 * of its vector. With an int8 (or int4) copy, searches score the codes
 * (dim, or dim / 2, bytes a node instead of 4 * dim; quant.c gives the
 * formula) and re-rank the final ef results exactly on float32, so the
 * answer carries exact scores and only the path is approximate. Builds use
 * int8 codes as well: the copy's own, or for a bulk build a temporary
 * array made before the build threads start and freed after they join
 * (they only read it; readers never do). Neighbour selection then compares
 * stored vectors with each other: one of them, requantised from its codes,
 * is the query. An int4 copy is only walked; inserts into it outside a
 * bulk build score float32.
 *
 * Memory-level details: a node's unvisited neighbours are scored by one
 * kernel call that prefetches the next group while computing the current
 * one; the likely next node's link list is prefetched before that; the
 * visited set is a small generation-tagged hash (internal.h), not a tag per
 * node; and a search of an index without tombstones reads no flags.
 *
 * CONCURRENCY (readers never block; one writer, which may use threads)
 * -----------
 * - A node is invisible until some link points to it. Its vector, id,
 *   codes, level and all of its own link lists are written before the first link
 *   to it is stored with release order; readers load links with acquire
 *   order, so a reader that reaches a node sees it complete.
 * - A link list is [count, n1, n2, ...] in place, capacity fixed. A writer
 *   changes it (under a striped mutex that only writers take) by storing the
 *   new entries, then the new count. A reader copies the list without any
 *   lock: it may see old entries, new ones or a mix, but every entry it can
 *   read is the id of a complete node (lists only ever hold published
 *   nodes), so the worst case is one slightly stale step of a walk.
 * - The entry point and top level are one 64-bit word, stored with release
 *   order after the new top node's lists exist.
 * - Build threads insert different nodes at once: they share the stripes;
 *   each holds at most one stripe at a time, so they cannot deadlock.
 * - Deleted nodes stay in the graph as waypoints (removing links would
 *   disconnect it) and are only kept out of results; index_rebuild drops
 *   them for good.
 *
 * FILTERS
 * -------
 * A filtered search walks the same graph through every node but admits only
 * nodes in the caller's bitmap (and not deleted) to the result set. It stops
 * only when ef admitted results are closer than every candidate left, so
 * with a low pass rate it simply walks further (ef is effectively raised
 * until enough pass). If the reachable part of the graph holds fewer than k
 * admitted nodes, the caller finishes with an exact scan of the set.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "index/internal.h"
#include "index/simd.h"

typedef struct hnode {
    float s;
    uint32_t slot;
} hnode;

/* ------------------------------------------------------------------ */
/* heaps of nodes: "max" has the closest at the root, "min" the farthest */
/* ------------------------------------------------------------------ */

static inline bool closer(const hnode *a, const hnode *b)
{
    return a->s > b->s || (a->s == b->s && a->slot < b->slot);
}

static void heap_push(hnode *h, int *n, hnode x, bool max_heap)
{
    int i = (*n)++;
    h[i] = x;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (max_heap ? !closer(&h[i], &h[p]) : !closer(&h[p], &h[i]))
            break;
        hnode t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

static hnode heap_pop(hnode *h, int *n, bool max_heap)
{
    hnode top = h[0];
    h[0] = h[--*n];
    for (int i = 0;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (max_heap) {
            if (l < *n && closer(&h[l], &h[w]))
                w = l;
            if (r < *n && closer(&h[r], &h[w]))
                w = r;
        } else {
            if (l < *n && closer(&h[w], &h[l]))
                w = l;
            if (r < *n && closer(&h[w], &h[r]))
                w = r;
        }
        if (w == i)
            break;
        hnode t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
    return top;
}

/* ------------------------------------------------------------------ */
/* node access                                                          */
/* ------------------------------------------------------------------ */

static inline uint32_t *links_of(const vindex *ix, uint32_t slot, int level)
{
    ix_chunk *c = ix_chunk_of(ix, slot);
    size_t i = slot & (ix->S - 1);
    if (level == 0)
        return c->links0 + i * ix_links0_stride(ix);
    uint32_t *up = ld_acquire(&c->upper[i]);
    return up + (size_t)(level - 1) * ix_upper_stride(ix);
}

static inline int max_links(const vindex *ix, int level)
{
    return level == 0 ? ix->M0 : ix->M;
}

/* Copies a list without locks; entries are complete nodes (see top). */
static int read_links(const vindex *ix, uint32_t slot, int level, uint32_t *out)
{
    const uint32_t *l = links_of(ix, slot, level);
    int n = (int)ld_acquire(&l[0]);
    int cap = max_links(ix, level);
    if (n > cap)
        n = cap;
    for (int i = 0; i < n; i++)
        out[i] = ld_acquire(&l[1 + i]);
    return n;
}

/* Writer side, under the node's stripe (or before the node is published). */
static void write_links(const vindex *ix, uint32_t slot, int level, const uint32_t *nb, int n)
{
    uint32_t *l = links_of(ix, slot, level);
    for (int i = 0; i < n; i++)
        st_release(&l[1 + i], nb[i]);
    st_release(&l[0], (uint32_t)n);
}

static inline int node_level(const vindex *ix, uint32_t slot)
{
    return ld_relaxed(&ix_chunk_of(ix, slot)->level[slot & (ix->S - 1)]);
}

static inline pthread_mutex_t *stripe(const vindex *ix, uint32_t slot)
{
    return &ix->stripes[(slot * 2654435761u) >> 22 & (IX_LOCK_STRIPES - 1)];
}

static int random_level(const vindex *ix, uint32_t slot)
{
    /* A hash of the slot, so levels do not depend on thread timing. */
    uint64_t z = ix->level_seed + (uint64_t)slot * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    double u = ((double)(z >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
    int level = (int)floor(-log(u) * ix->level_mult);
    return level > IX_MAX_LEVEL ? IX_MAX_LEVEL : level;
}

int ix_hnsw_init(vindex *ix, ms_err *err)
{
    ix->stripes = malloc(IX_LOCK_STRIPES * sizeof *ix->stripes);
    if (!ix->stripes)
        return ms_err_set(err, MS_ENOMEM, "index: out of memory for graph locks");
    for (int i = 0; i < IX_LOCK_STRIPES; i++)
        pthread_mutex_init(&ix->stripes[i], NULL);
    return 0;
}

/* ------------------------------------------------------------------ */
/* what a walk scores: float32 vectors or int8 codes                    */
/* ------------------------------------------------------------------ */

/* Where the int8 codes of a build come from: a temporary slot-indexed
 * array (codes == NULL: the chunks' own copy). */
typedef struct walk_codes {
    const uint8_t *codes;
    const float *qparams;
} walk_codes;

typedef struct wquery {
    const float *f;          /* the float query */
    int codes;               /* 0: score f on float32; 8 or 4: qz on int8 or int4 codes */
    ix_qquery qz;
    const walk_codes *wc;
} wquery;

static inline void code_of(const vindex *ix, const walk_codes *wc, uint32_t slot, const uint8_t **codes,
                           const float **qp)
{
    if (wc && wc->codes) {
        *codes = wc->codes + (size_t)slot * (size_t)ix->dim;
        *qp = wc->qparams + 2 * (size_t)slot;
        return;
    }
    const ix_chunk *c = ix_chunk_of(ix, slot);
    size_t i = slot & (ix->S - 1);
    *codes = c->codes + i * ix->q.code_bytes;
    *qp = c->qparams + 2 * i;
}

/* sc->scores[i] = similarity of slots[i] to the query, i < m. */
static void score_slots(const vindex *ix, ix_scratch *sc, const wquery *wq, const uint32_t *slots, int m)
{
    if (m <= 0)
        return;
    if (!wq->codes) {
        for (int i = 0; i < m; i++)
            sc->ptrs[i] = ix_vec(ix, slots[i]);
        ix_kern()->dot_ptrs(wq->f, sc->ptrs, (size_t)m, ix->dim, sc->scores);
        return;
    }
    for (int i = 0; i < m; i++)
        code_of(ix, wq->wc, slots[i], &sc->cptrs[i], &sc->qps[i]);
    if (wq->codes == 4)
        ix_kern()->i4dot_ptrs(wq->qz.qq, sc->cptrs, (size_t)m, ix->dim, sc->iscores);
    else
        ix_kern()->idot_ptrs(wq->qz.qq, sc->cptrs, (size_t)m, ix->dim, sc->iscores);
    for (int i = 0; i < m; i++)
        sc->scores[i] = ix_qscore(&wq->qz, sc->qps[i], sc->iscores[i]);
}

/* ------------------------------------------------------------------ */
/* visited set (see ix_scratch in internal.h)                           */
/* ------------------------------------------------------------------ */

static inline size_t vis_home(const ix_scratch *sc, uint32_t slot)
{
    return (uint32_t)(slot * 2654435761u) >> (32 - sc->vis_bits);
}

static void vis_put(ix_scratch *sc, uint32_t slot)
{
    size_t mask = sc->vis_cap - 1;
    size_t i = vis_home(sc, slot);
    while ((uint32_t)(sc->vis[i] >> 32) == sc->vis_gen)
        i = (i + 1) & mask;
    sc->vis[i] = (uint64_t)sc->vis_gen << 32 | slot;
    sc->vis_n++;
}

static int vis_grow(ix_scratch *sc)
{
    size_t cap = sc->vis_cap ? sc->vis_cap * 2 : 1024;
    if (cap > ((size_t)1 << 31))
        return MS_ENOMEM;
    uint64_t *t = calloc(cap, sizeof *t);
    if (!t)
        return MS_ENOMEM;
    uint64_t *old = sc->vis;
    size_t old_cap = sc->vis_cap;
    unsigned bits = 0;
    while (((size_t)1 << bits) < cap)
        bits++;
    sc->vis = t;
    sc->vis_cap = cap;
    sc->vis_bits = bits;
    sc->vis_n = 0;
    if (sc->vis_gen == 0)
        sc->vis_gen = 1; /* generation 0 marks the fresh table's free entries */
    for (size_t i = 0; i < old_cap; i++)
        if ((uint32_t)(old[i] >> 32) == sc->vis_gen)
            vis_put(sc, (uint32_t)old[i]);
    free(old);
    return 0;
}

/* Starts a new walk: all marks of earlier walks become free entries. */
static int vis_reset(ix_scratch *sc)
{
    if (!sc->vis && vis_grow(sc))
        return MS_ENOMEM;
    if (++sc->vis_gen == 0) {
        memset(sc->vis, 0, sc->vis_cap * sizeof *sc->vis);
        sc->vis_gen = 1;
    }
    sc->vis_n = 0;
    return 0;
}

/* Marks slot; true when it was not marked yet. */
static inline bool visit(ix_scratch *sc, uint32_t s)
{
    size_t mask = sc->vis_cap - 1;
    for (size_t i = vis_home(sc, s);; i = (i + 1) & mask) {
        uint64_t e = sc->vis[i];
        if ((uint32_t)(e >> 32) != sc->vis_gen)
            break;
        if ((uint32_t)e == s)
            return false;
    }
    if ((sc->vis_n + 1) * 2 > sc->vis_cap && vis_grow(sc))
        return false; /* out of memory: treat as visited, the walk goes on */
    vis_put(sc, s);
    return true;
}

/* ------------------------------------------------------------------ */
/* search on one layer                                                  */
/* ------------------------------------------------------------------ */

typedef struct layer_search {
    const wquery *q;
    int ef, level;
    const uint64_t *bitmap;  /* admitted slots, NULL: all */
    size_t bitmap_bits;
    bool skip_dead;          /* queries skip tombstones; construction does not */
} layer_search;

static inline bool admitted(const vindex *ix, const layer_search *ls, uint32_t s)
{
    if (ls->bitmap && (s >= ls->bitmap_bits || !(ls->bitmap[s / 64] >> (s % 64) & 1)))
        return false;
    return !ls->skip_dead || !ix_dead(ix, s);
}

static int grow_candidates(const vindex *ix, ix_scratch *sc, int need)
{
    if ((size_t)need <= sc->heap_cap)
        return 0;
    return ix_scratch_reserve(sc, sc->heap_cap * 2 > (size_t)need ? sc->heap_cap * 2 : (size_t)need,
                              sizeof(hnode), sc->nbr_cap, (size_t)ix->dim);
}

static inline void prefetch_links(const vindex *ix, uint32_t slot, int level)
{
    if (level == 0) {
        const ix_chunk *c = ix_chunk_of(ix, slot);
        __builtin_prefetch(c->links0 + (slot & (ix->S - 1)) * ix_links0_stride(ix));
    }
}

/* Scores a node's unvisited neighbours together (first lines prefetched,
 * one kernel call that prefetches the rest a group ahead), returning how
 * many are in sc->nbr / sc->scores. */
static int score_neighbours(const vindex *ix, ix_scratch *sc, const wquery *wq, uint32_t slot, int level)
{
    uint32_t tmp[257];
    int n = read_links(ix, slot, level, tmp), m = 0;
    size_t code_bytes = wq->codes == 8 ? (size_t)ix->dim : wq->codes == 4 ? ((size_t)ix->dim + 1) / 2 : 0;
    size_t pf_bytes = code_bytes <= 256 ? code_bytes : 64;
    for (int i = 0; i < n; i++)
        if (visit(sc, tmp[i])) {
            if (wq->codes) {
                /* codes of up to 4 lines (int4 at dim <= 512) are requested
                 * whole for every neighbour at once: many misses in flight */
                const uint8_t *c;
                const float *qp;
                code_of(ix, wq->wc, tmp[i], &c, &qp);
                for (size_t at = 0; at < pf_bytes; at += 64)
                    __builtin_prefetch(c + at);
                __builtin_prefetch(qp);
            } else {
                const float *v = ix_vec(ix, tmp[i]);
                __builtin_prefetch(v);
                __builtin_prefetch((const char *)v + 64);
            }
            sc->nbr[m++] = tmp[i];
        }
    score_slots(ix, sc, wq, sc->nbr, m);
    return m;
}

/* Beam search of one layer from the entry nodes in sc->heap_b[0..*n_res).
 * On return sc->heap_b holds up to ef admitted results (a min-heap). */
static int search_layer(const vindex *ix, ix_scratch *sc, const layer_search *ls, int *n_res)
{
    hnode *cand = sc->heap_a;
    hnode *res = sc->heap_b;
    int n_cand = 0, n_out = 0, n_in = *n_res;
    /* The entries (in res) become candidates; admitted ones also results. */
    for (int i = 0; i < n_in; i++)
        heap_push(cand, &n_cand, res[i], true);
    for (int i = 0; i < n_cand; i++)
        if (admitted(ix, ls, cand[i].slot))
            heap_push(res, &n_out, cand[i], false);
    while (n_cand > 0) {
        hnode c = heap_pop(cand, &n_cand, true);
        if (n_out >= ls->ef && c.s < res[0].s)
            break;
        if (n_cand > 0) /* likely the next node expanded: fetch its list meanwhile */
            prefetch_links(ix, cand[0].slot, ls->level);
        int m = score_neighbours(ix, sc, ls->q, c.slot, ls->level);
        for (int i = 0; i < m; i++) {
            hnode x = {sc->scores[i], sc->nbr[i]};
            if (n_out >= ls->ef && !closer(&x, &res[0]))
                continue;
            if (grow_candidates(ix, sc, n_cand + 1))
                return MS_ENOMEM;
            cand = sc->heap_a;
            res = sc->heap_b;
            heap_push(cand, &n_cand, x, true);
            if (admitted(ix, ls, x.slot)) {
                heap_push(res, &n_out, x, false);
                if (n_out > ls->ef)
                    heap_pop(res, &n_out, false);
            }
        }
    }
    *n_res = n_out;
    return 0;
}

/* Greedy walk on an upper layer: move to any closer neighbour until none. */
static hnode greedy(const vindex *ix, ix_scratch *sc, const wquery *wq, hnode cur, int level)
{
    for (bool moved = true; moved;) {
        moved = false;
        uint32_t nb[257];
        int n = read_links(ix, cur.slot, level, nb);
        score_slots(ix, sc, wq, nb, n);
        for (int i = 0; i < n; i++) {
            hnode x = {sc->scores[i], nb[i]};
            if (closer(&x, &cur)) {
                cur = x;
                moved = true;
            }
        }
    }
    return cur;
}

static int prepare_scratch(const vindex *ix, ix_scratch *sc, int ef)
{
    size_t nbr = (size_t)(ix->M0 > ix->M ? ix->M0 : ix->M) + 1;
    size_t heap = (size_t)ef * 4 + 64;
    if (ix_scratch_reserve(sc, heap, sizeof(hnode), nbr + 256, (size_t)ix->dim + 1))
        return MS_ENOMEM;
    return vis_reset(sc);
}

/* Walks down to level `stop` + 1 greedily and leaves the entry in heap_b. */
static int descend(const vindex *ix, ix_scratch *sc, const wquery *wq, int stop, int *top_out)
{
    uint64_t e = atomic_load_explicit((_Atomic uint64_t *)&ix->entry, memory_order_acquire);
    if (e == IX_NO_ENTRY)
        return 0;
    int top = (int)(e >> 32);
    uint32_t entry = (uint32_t)e;
    score_slots(ix, sc, wq, &entry, 1);
    hnode cur = {sc->scores[0], entry};
    for (int l = top; l > stop; l--)
        cur = greedy(ix, sc, wq, cur, l);
    ((hnode *)sc->heap_b)[0] = cur;
    *top_out = top;
    return 1;
}

/* What a search walks: 8 (int8 codes), 4 (int4 codes) or 0 (float32). */
static int walk_codes_kind(const vindex *ix)
{
    if (ix->p.graph_f32)
        return 0;
    return ix->q.kind == INDEX_QUANT_INT8 ? 8 : ix->q.kind == INDEX_QUANT_INT4 ? 4 : 0;
}

/* The final candidates of an int8 walk scored exactly (float32), then the
 * best k of them: a vector gets the same score as in the exact scan. */
static void rerank_exact(const vindex *ix, const float *q, const hnode *res, int n_res, ix_hitheap *hp)
{
    enum { G = 64 };
    const float *ptrs[G];
    float scores[G];
    for (int g = 0; g < n_res; g += G) {
        int m = n_res - g < G ? n_res - g : G;
        for (int i = 0; i < m; i++) {
            ptrs[i] = ix_vec(ix, res[g + i].slot);
            __builtin_prefetch(ptrs[i]);
        }
        ix_kern()->dot_ptrs(q, ptrs, (size_t)m, ix->dim, scores);
        for (int i = 0; i < m; i++) {
            int64_t id = ix_id(ix, res[g + i].slot);
            if (ix_heap_wants(hp, scores[i], id))
                ix_heap_push(hp, scores[i], id);
        }
    }
}

int ix_hnsw_search(vindex *ix, const float *q, int k, int ef, const uint64_t *bitmap, size_t bitmap_bits,
                   index_hit *hits, int *n_hits, ms_err *err)
{
    *n_hits = 0;
    ix_scratch *sc = ix_scratch_get(ix);
    if (!sc)
        return ms_err_set(err, MS_ENOMEM, "index: out of memory for a graph search");
    int ef_eff = ef > k ? ef : k;
    size_t n = ix_published(ix);
    if ((size_t)ef_eff > n) /* never more results than nodes (and no overflow below) */
        ef_eff = n ? (int)n : 1;
    int rc = prepare_scratch(ix, sc, ef_eff);
    wquery wq = {q, 0, {sc->qq, 1, 0}, NULL};
    if (!rc && walk_codes_kind(ix)) {
        wq.codes = walk_codes_kind(ix);
        ix_quant_query(q, ix->dim, &wq.qz);
    }
    int top = 0, n_res = 0;
    /* Without tombstones the walk reads no flags (one cache miss a result). */
    bool any_dead = atomic_load_explicit(&ix->n_live, memory_order_relaxed) != n;
    if (!rc && descend(ix, sc, &wq, 0, &top)) {
        visit(sc, ((hnode *)sc->heap_b)[0].slot);
        n_res = 1;
        layer_search ls = {&wq, ef_eff, 0, bitmap, bitmap_bits, any_dead};
        rc = search_layer(ix, sc, &ls, &n_res);
    }
    if (rc) {
        ix_scratch_put(ix, sc);
        return ms_err_set(err, MS_ENOMEM, "index: out of memory during a graph search");
    }
    hnode *res = sc->heap_b;
    size_t n_now = any_dead ? 0 : ix_published(ix); /* first: acquire, then the live count */
    if (!any_dead && atomic_load_explicit(&ix->n_live, memory_order_relaxed) != n_now) {
        /* Tombstones appeared during the walk (a removal, or a replacement
         * whose new node the walk may have reached: the old one must not be
         * returned beside it). Reaching a new node synchronised with its
         * publication, so the counts read here already show it. */
        int m = 0;
        for (int i = 0; i < n_res; i++)
            if (!ix_dead(ix, res[i].slot))
                res[m++] = res[i];
        n_res = m;
    }
    ix_hitheap hp = {hits, 0, k};
    if (wq.codes) {
        rerank_exact(ix, q, res, n_res, &hp);
    } else {
        for (int i = 0; i < n_res; i++) {
            int64_t id = ix_id(ix, res[i].slot);
            if (ix_heap_wants(&hp, res[i].s, id))
                ix_heap_push(&hp, res[i].s, id);
        }
    }
    *n_hits = ix_heap_sort(&hp);
    ix_scratch_put(ix, sc);
    return 0;
}

/* ------------------------------------------------------------------ */
/* insertion                                                            */
/* ------------------------------------------------------------------ */

static int by_closeness(const void *a, const void *b)
{
    const hnode *x = a, *y = b;
    return closer(x, y) ? -1 : closer(y, x) ? 1 : 0;
}

/* The neighbour-selection heuristic: from candidates sorted closest first
 * (scores are similarity to the base node), keep c unless some kept s is
 * closer to c than the base is. Writes up to max_n slots to out. With wc,
 * similarities come from the int8 codes (c, requantised, is the query). */
static int select_neighbours(const vindex *ix, ix_scratch *sc, const walk_codes *wc, hnode *cand, int n,
                             int max_n, uint32_t *out)
{
    qsort(cand, (size_t)n, sizeof *cand, by_closeness);
    int kept = 0;
    const float *kept_vec[257];
    const uint8_t *kept_codes[257];
    const float *kept_qp[257];
    float sims[257];
    int32_t isims[257];
    for (int i = 0; i < n && kept < max_n; i++) {
        uint32_t cs = cand[i].slot;
        const float *cv = NULL;
        const uint8_t *cc = NULL;
        const float *cqp = NULL;
        if (wc)
            code_of(ix, wc, cs, &cc, &cqp);
        else
            cv = ix_vec(ix, cs);
        bool good = true;
        if (kept) {
            if (wc) {
                ix_qquery qz = {sc->qh, 1, 0};
                ix_quant_query_codes(cc, cqp, ix->dim, &qz);
                ix_kern()->idot_ptrs(qz.qq, kept_codes, (size_t)kept, ix->dim, isims);
                for (int j = 0; j < kept; j++)
                    sims[j] = ix_qscore(&qz, kept_qp[j], isims[j]);
            } else {
                ix_kern()->dot_ptrs(cv, kept_vec, (size_t)kept, ix->dim, sims);
            }
            for (int j = 0; j < kept; j++)
                if (sims[j] > cand[i].s) {
                    good = false;
                    break;
                }
        }
        if (good) {
            kept_vec[kept] = cv;
            kept_codes[kept] = cc;
            kept_qp[kept] = cqp;
            out[kept++] = cs;
        }
    }
    return kept;
}

/* Adds new_slot to the list of slot at level, pruning with the heuristic
 * when the list is full. */
static void link_back(const vindex *ix, ix_scratch *sc, const walk_codes *wc, uint32_t slot, uint32_t new_slot,
                      int level)
{
    int cap = max_links(ix, level);
    pthread_mutex_t *lk = stripe(ix, slot);
    pthread_mutex_lock(lk);
    uint32_t cur[257];
    int n = read_links(ix, slot, level, cur);
    for (int i = 0; i < n; i++)
        if (cur[i] == new_slot) {
            pthread_mutex_unlock(lk);
            return;
        }
    if (n < cap) {
        uint32_t *l = links_of(ix, slot, level);
        st_release(&l[1 + n], new_slot);
        st_release(&l[0], (uint32_t)(n + 1));
        pthread_mutex_unlock(lk);
        return;
    }
    cur[n++] = new_slot;
    /* The node itself is the query its list is scored against. */
    wquery base = {ix_vec(ix, slot), wc ? 8 : 0, {sc->qh, 1, 0}, wc};
    if (wc) {
        const uint8_t *bc;
        const float *bqp;
        code_of(ix, wc, slot, &bc, &bqp);
        ix_quant_query_codes(bc, bqp, ix->dim, &base.qz);
    }
    score_slots(ix, sc, &base, cur, n);
    hnode cand[257];
    for (int i = 0; i < n; i++)
        cand[i] = (hnode){sc->scores[i], cur[i]};
    uint32_t kept[257];
    int m = select_neighbours(ix, sc, wc, cand, n, cap, kept);
    write_links(ix, slot, level, kept, m);
    pthread_mutex_unlock(lk);
}

static int insert_one(vindex *ix, ix_scratch *sc, uint32_t slot, const walk_codes *wc)
{
    int level = node_level(ix, slot);
    const float *q = ix_vec(ix, slot);
    uint64_t e = atomic_load_explicit(&ix->entry, memory_order_acquire);
    if (e == IX_NO_ENTRY) {
        pthread_mutex_lock(&ix->entry_lock);
        e = atomic_load_explicit(&ix->entry, memory_order_acquire);
        if (e == IX_NO_ENTRY) {
            atomic_store_explicit(&ix->entry, (uint64_t)level << 32 | slot, memory_order_release);
            pthread_mutex_unlock(&ix->entry_lock);
            return 0;
        }
        pthread_mutex_unlock(&ix->entry_lock);
    }
    int rc = prepare_scratch(ix, sc, ix->p.ef_construction);
    if (rc)
        return rc;
    wquery wq = {q, wc ? 8 : 0, {sc->qq, 1, 0}, wc};
    if (wc)
        ix_quant_query(q, ix->dim, &wq.qz);
    int top = 0;
    descend(ix, sc, &wq, level, &top);
    int n_res = 1;
    visit(sc, ((hnode *)sc->heap_b)[0].slot);
    int first = level < top ? level : top;
    uint32_t chosen[IX_MAX_LEVEL + 1][257];
    int n_chosen[IX_MAX_LEVEL + 1] = {0};
    hnode cand[1024];
    /* Phase 1: choose the node's links on every layer, top down. Nobody can
     * reach the node yet, so its own lists are written without a lock. */
    for (int l = first; l >= 0; l--) {
        layer_search ls = {&wq, ix->p.ef_construction, l, NULL, 0, false};
        if ((rc = search_layer(ix, sc, &ls, &n_res)))
            return rc;
        hnode *res = sc->heap_b;
        int n = n_res < 1024 ? n_res : 1024;
        if (n_res > 1024) /* efConstruction over 1024: keep the closest 1024 */
            qsort(res, (size_t)n_res, sizeof *res, by_closeness);
        memcpy(cand, res, (size_t)n * sizeof *cand);
        uint32_t sel[257];
        int nsel = select_neighbours(ix, sc, wc, cand, n, ix->M, sel);
        memcpy(chosen[l], sel, (size_t)nsel * sizeof *sel);
        n_chosen[l] = nsel;
        write_links(ix, slot, l, sel, nsel);
        /* The next layer starts from this layer's results, restarted visits. */
        if ((rc = vis_reset(sc)))
            return rc;
        for (int i = 0; i < n_res; i++)
            visit(sc, ((hnode *)sc->heap_b)[i].slot);
    }
    /* Phase 2: publish by linking back. */
    for (int l = first; l >= 0; l--)
        for (int i = 0; i < n_chosen[l]; i++)
            link_back(ix, sc, wc, chosen[l][i], slot, l);
    if (level > top) {
        pthread_mutex_lock(&ix->entry_lock);
        uint64_t now = atomic_load_explicit(&ix->entry, memory_order_acquire);
        if (now == IX_NO_ENTRY || level > (int)(now >> 32))
            atomic_store_explicit(&ix->entry, (uint64_t)level << 32 | slot, memory_order_release);
        pthread_mutex_unlock(&ix->entry_lock);
    }
    return 0;
}

/* Gives the node its level and (empty) upper lists; done by the writer
 * before any build thread starts, so threads only read them. */
static int prepare_node(vindex *ix, uint32_t slot)
{
    ix_chunk *c = ix_chunk_of(ix, slot);
    size_t i = slot & (ix->S - 1);
    int level = random_level(ix, slot);
    if (level > 0) {
        size_t bytes = (size_t)level * ix_upper_stride(ix) * sizeof(uint32_t);
        uint32_t *up = calloc(1, bytes);
        if (!up)
            return MS_ENOMEM;
        ix->upper_bytes += bytes;
        st_release(&c->upper[i], up);
    }
    st_release(&c->level[i], (uint8_t)level);
    st_relaxed(&c->links0[i * ix_links0_stride(ix)], 0u);
    return 0;
}

typedef struct build_job {
    vindex *ix;
    const uint32_t *todo;
    size_t n;
    const walk_codes *wc;    /* int8 distances, or NULL: float32 */
    uint8_t *tmp_codes;      /* temporary codes being made (encode_worker) */
    float *tmp_qparams;
    size_t n_encode;
    _Atomic size_t next;
    _Atomic int rc;
} build_job;

#define ENCODE_BLOCK 4096

static void *encode_worker(void *arg)
{
    build_job *b = arg;
    size_t d = (size_t)b->ix->dim;
    for (;;) {
        size_t from = atomic_fetch_add(&b->next, ENCODE_BLOCK);
        if (from >= b->n_encode)
            return NULL;
        size_t to = from + ENCODE_BLOCK < b->n_encode ? from + ENCODE_BLOCK : b->n_encode;
        for (size_t s = from; s < to; s++)
            ix_quant_encode_int8(b->ix->dim, ix_vec(b->ix, s), b->tmp_codes + s * d, b->tmp_qparams + 2 * s);
    }
}

static void *build_worker(void *arg)
{
    build_job *b = arg;
    ix_scratch *sc = ix_scratch_get(b->ix);
    if (!sc) {
        atomic_store(&b->rc, MS_ENOMEM);
        return NULL;
    }
    for (;;) {
        size_t i = atomic_fetch_add(&b->next, 1);
        if (i >= b->n || atomic_load(&b->rc))
            break;
        int rc = insert_one(b->ix, sc, b->todo[i], b->wc);
        if (rc)
            atomic_store(&b->rc, rc);
    }
    ix_scratch_put(b->ix, sc);
    return NULL;
}

/* Runs fn on `threads` threads (this one included). */
static void run_threads(void *(*fn)(void *), build_job *b, int threads)
{
    pthread_t th[64];
    int started = 0;
    for (; started < threads - 1 && started < 64; started++)
        if (pthread_create(&th[started], NULL, fn, b))
            break;
    fn(b);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
}

/* A bulk build without an int8 copy: temporary codes for slots [0, to),
 * or false (small insert, small dimension, float32 asked, no memory). */
static bool make_build_codes(vindex *ix, size_t to, size_t n_new, int threads, build_job *b)
{
    if (ix->p.graph_f32 || ix->q.kind == INDEX_QUANT_INT8 || ix->dim < 64 || n_new < 1024 ||
        n_new < ix->graph_nodes)
        return false;
    b->tmp_codes = malloc(to * (size_t)ix->dim);
    b->tmp_qparams = malloc(to * 2 * sizeof(float));
    if (!b->tmp_codes || !b->tmp_qparams) {
        free(b->tmp_codes);
        free(b->tmp_qparams);
        b->tmp_codes = NULL;
        b->tmp_qparams = NULL;
        return false;
    }
    b->n_encode = to;
    atomic_store(&b->next, 0);
    run_threads(encode_worker, b, threads);
    return true;
}

int ix_hnsw_insert_range(vindex *ix, size_t from, size_t to, int threads, ms_err *err)
{
    if (from >= to)
        return 0;
    uint32_t *todo = malloc((to - from) * sizeof *todo);
    if (!todo)
        return ms_err_set(err, MS_ENOMEM, "index: out of memory inserting %zu nodes", to - from);
    size_t n = 0;
    for (size_t s = from; s < to; s++) {
        if (ix_dead(ix, s) || node_level(ix, (uint32_t)s) != (int)IX_NOT_IN_GRAPH)
            continue;
        if (prepare_node(ix, (uint32_t)s)) {
            free(todo);
            return ms_err_set(err, MS_ENOMEM, "index: out of memory for graph links");
        }
        todo[n++] = (uint32_t)s;
    }
    build_job b = {.ix = ix, .todo = todo, .n = n};
    walk_codes wc = {NULL, NULL};
    if (make_build_codes(ix, to, n, threads, &b)) {
        wc = (walk_codes){b.tmp_codes, b.tmp_qparams};
        b.wc = &wc;
    } else if (walk_codes_kind(ix) == 8) {
        b.wc = &wc; /* the chunks' own codes */
    } /* else float32 (an int4 copy is too coarse to choose links with) */
    atomic_store(&b.next, 0);
    /* The first node becomes the entry point alone; then threads share. */
    size_t first = atomic_load_explicit(&ix->entry, memory_order_relaxed) == IX_NO_ENTRY && n ? 1 : 0;
    if (first) {
        atomic_store(&b.next, 1);
        ix_scratch *sc = ix_scratch_get(ix);
        int rc = sc ? insert_one(ix, sc, todo[0], b.wc) : MS_ENOMEM;
        if (sc)
            ix_scratch_put(ix, sc);
        atomic_store(&b.rc, rc);
    }
    int nt = threads;
    if ((size_t)nt * 64 > n)
        nt = 1;
    run_threads(build_worker, &b, nt);
    free(todo);
    free(b.tmp_codes);
    free(b.tmp_qparams);
    ix->graph_nodes += n;
    int rc = atomic_load(&b.rc);
    if (rc)
        return ms_err_set(err, rc, "index: out of memory while building the graph");
    return 0;
}
