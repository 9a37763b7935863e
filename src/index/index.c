/*
 * index.c - the public face of the index: storage of slots, the id map, the
 * choice between exact and graph search, filters, and rebuilds.
 * Layout and publication rules are described in internal.h.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "index/internal.h"
#include "index/simd.h"

#define DEFAULT_AUTO_THRESHOLD 20000
#define DEFAULT_M 16
#define DEFAULT_EF_CONSTRUCTION 200
#define DEFAULT_EF_SEARCH 64
#define CHUNK_TARGET_BYTES (2u << 20)
#define MIN_CHUNK_SHIFT 6
#define MAX_CHUNK_SHIFT 14

void index_params_init(index_params *p)
{
    memset(p, 0, sizeof *p);
    p->kind = INDEX_AUTO;
    p->auto_threshold = DEFAULT_AUTO_THRESHOLD;
    p->M = DEFAULT_M;
    p->ef_construction = DEFAULT_EF_CONSTRUCTION;
    p->ef_search = DEFAULT_EF_SEARCH;
    p->quant = INDEX_QUANT_NONE;
    p->threads = 0;
}

const char *index_kind_name(index_kind k)
{
    switch (k) {
    case INDEX_AUTO: return "auto";
    case INDEX_FLAT: return "flat";
    case INDEX_HNSW: return "hnsw";
    }
    return "unknown";
}

int ix_threads(const vindex *ix)
{
    long n = ix->p.threads > 0 ? ix->p.threads : sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

size_t ix_links0_stride(const vindex *ix)
{
    return 1 + (size_t)ix->M0;
}

size_t ix_upper_stride(const vindex *ix)
{
    return 1 + (size_t)ix->M;
}

static int check_params(const index_params *p, ms_err *err)
{
    if (p->kind != INDEX_AUTO && p->kind != INDEX_FLAT && p->kind != INDEX_HNSW)
        return ms_err_set(err, MS_EINVAL, "index kind %d is not auto, flat or hnsw", (int)p->kind);
    if (p->quant != INDEX_QUANT_NONE && p->quant != INDEX_QUANT_INT8 && p->quant != INDEX_QUANT_F16 &&
        p->quant != INDEX_QUANT_INT4)
        return ms_err_set(err, MS_EINVAL, "index quantisation %d is not none, int8, f16 or int4", (int)p->quant);
    if (p->M < 2 || p->M > 128)
        return ms_err_set(err, MS_EINVAL, "HNSW M must be 2..128, got %d", p->M);
    if (p->ef_construction < 1 || p->ef_construction > 100000)
        return ms_err_set(err, MS_EINVAL, "HNSW efConstruction must be 1..100000, got %d",
                          p->ef_construction);
    if (p->ef_search < 0 || p->ef_search > 100000)
        return ms_err_set(err, MS_EINVAL, "HNSW efSearch must be 0..100000, got %d", p->ef_search);
    if (p->graph_f32 != 0 && p->graph_f32 != 1)
        return ms_err_set(err, MS_EINVAL, "graph_f32 must be 0 or 1, got %d", p->graph_f32);
    if (p->threads < 0)
        return ms_err_set(err, MS_EINVAL, "threads must be 0 (all cores) or more, got %d", p->threads);
    return 0;
}

/* ------------------------------------------------------------------ */
/* chunks                                                               */
/* ------------------------------------------------------------------ */

static void chunk_free(const vindex *ix, ix_chunk *c)
{
    if (!c)
        return;
    if (c->upper) {
        /* Upper lists are always malloc'd, also for borrowed chunks. */
        for (size_t i = 0; i < ix->S; i++)
            if (c->upper[i] && !(ix->mapped && (char *)c->upper[i] >= (char *)ix->mapped &&
                                 (char *)c->upper[i] < (char *)ix->mapped + ix->mapped_len))
                free(c->upper[i]);
        free(c->upper);
    }
    if (!c->borrowed) {
        free(c->vec);
        free(c->ids);
        free(c->codes);
        free(c->qparams);
        free(c->links0);
    }
    free(c->dead);
    free(c->level);
    free(c);
}

static ix_chunk *chunk_alloc(const vindex *ix)
{
    size_t S = ix->S, d = (size_t)ix->dim;
    ix_chunk *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->vec = aligned_alloc(64, S * d * sizeof(float));
    c->ids = malloc(S * sizeof *c->ids);
    c->dead = calloc(S, 1);
    bool ok = c->vec && c->ids && c->dead;
    if (ok && ix->q.kind != INDEX_QUANT_NONE) {
        c->codes = malloc(S * ix->q.code_bytes);
        ok = c->codes != NULL;
        if (ok && ix->q.kind != INDEX_QUANT_F16)
            ok = (c->qparams = malloc(S * 2 * sizeof(float))) != NULL;
    }
    if (ok && ix->graph_arrays) {
        c->level = malloc(S);
        c->links0 = calloc(S * ix_links0_stride(ix), sizeof(uint32_t));
        c->upper = calloc(S, sizeof *c->upper);
        ok = c->level && c->links0 && c->upper;
        if (ok)
            memset(c->level, IX_NOT_IN_GRAPH, S);
    }
    if (!ok) {
        chunk_free(ix, c);
        return NULL;
    }
    return c;
}

/* Makes chunks exist for slots [0, n_total). Writer only. */
int ix_reserve_slots(vindex *ix, size_t n_total, ms_err *err)
{
    ix_dir *d = atomic_load_explicit(&ix->dir, memory_order_relaxed);
    size_t need = (n_total + ix->S - 1) >> ix->shift;
    if (need > d->cap) {
        size_t cap = d->cap * 2 > need ? d->cap * 2 : need;
        ix_dir *nd = calloc(1, sizeof *nd + cap * sizeof nd->chunk[0]);
        if (!nd)
            return ms_err_set(err, MS_ENOMEM, "index: out of memory growing the chunk directory");
        nd->cap = cap;
        memcpy(nd->chunk, d->chunk, d->cap * sizeof d->chunk[0]);
        nd->retired = d; /* readers may still hold d: keep it until index_free */
        atomic_store_explicit(&ix->dir, nd, memory_order_release);
        d = nd;
    }
    for (size_t c = 0; c < need; c++) {
        if (d->chunk[c])
            continue;
        ix_chunk *ch = chunk_alloc(ix);
        if (!ch)
            return ms_err_set(err, MS_ENOMEM, "index: out of memory for %zu vectors of dimension %d",
                              ix->S, ix->dim);
        st_release(&d->chunk[c], ch);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* id map                                                               */
/* ------------------------------------------------------------------ */

static inline size_t map_pos(int64_t id, size_t cap)
{
    uint64_t h = (uint64_t)id * 0x9E3779B97F4A7C15ull;
    return (size_t)(h ^ (h >> 31)) & (cap - 1);
}

static ix_map *map_new(size_t cap)
{
    ix_map *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->cap = cap;
    m->keys = malloc(cap * sizeof *m->keys);
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->keys || !m->slots) {
        free(m->keys);
        free(m->slots);
        free(m);
        return NULL;
    }
    for (size_t i = 0; i < cap; i++)
        m->keys[i] = IX_EMPTY_KEY;
    return m;
}

static void map_free_all(ix_map *m)
{
    while (m) {
        ix_map *next = m->retired;
        free(m->keys);
        free(m->slots);
        free(m);
        m = next;
    }
}

uint32_t ix_map_find(const vindex *ix, int64_t id)
{
    ix_map *m = atomic_load_explicit((_Atomic(ix_map *) *)&ix->map, memory_order_acquire);
    for (size_t i = map_pos(id, m->cap);; i = (i + 1) & (m->cap - 1)) {
        int64_t k = ld_acquire(&m->keys[i]);
        if (k == id)
            return ld_acquire(&m->slots[i]);
        if (k == IX_EMPTY_KEY)
            return IX_NONE;
    }
}

/* Writer only: sets id -> slot, returns the previous slot or IX_NONE. */
static uint32_t map_set(ix_map *m, int64_t id, uint32_t slot)
{
    for (size_t i = map_pos(id, m->cap);; i = (i + 1) & (m->cap - 1)) {
        int64_t k = m->keys[i];
        if (k == id) {
            uint32_t old = m->slots[i];
            st_release(&m->slots[i], slot);
            return old;
        }
        if (k == IX_EMPTY_KEY) {
            st_relaxed(&m->slots[i], slot);
            st_release(&m->keys[i], id); /* key last: a reader that sees it sees the slot */
            m->used++;
            return IX_NONE;
        }
    }
}

/* Writer only: room for `more` new keys at load <= 1/2. Removed keys are
 * dropped when the table is rebuilt. */
static int map_reserve(vindex *ix, size_t more, ms_err *err)
{
    ix_map *m = atomic_load_explicit(&ix->map, memory_order_relaxed);
    if ((m->used + more) * 2 <= m->cap)
        return 0;
    size_t live = 0;
    for (size_t i = 0; i < m->cap; i++)
        live += m->keys[i] != IX_EMPTY_KEY && m->slots[i] != IX_NONE;
    size_t cap = 64;
    while (cap < (live + more) * 2 + 1)
        cap *= 2;
    ix_map *nm = map_new(cap);
    if (!nm)
        return ms_err_set(err, MS_ENOMEM, "index: out of memory growing the id map");
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i] != IX_EMPTY_KEY && m->slots[i] != IX_NONE)
            map_set(nm, m->keys[i], m->slots[i]);
    nm->retired = m;
    atomic_store_explicit(&ix->map, nm, memory_order_release);
    return 0;
}

/* Fills the map of a loaded index; a live id twice is a damaged file. */
int ix_load_map(vindex *ix, const int64_t *ids, const uint8_t *dead, size_t n, ms_err *err)
{
    size_t live = 0;
    for (size_t s = 0; s < n; s++)
        live += !dead[s];
    int rc = map_reserve(ix, live, err);
    if (rc)
        return rc;
    ix_map *m = atomic_load_explicit(&ix->map, memory_order_relaxed);
    for (size_t s = 0; s < n; s++) {
        if (dead[s])
            continue;
        if (ids[s] == IX_EMPTY_KEY)
            return ms_err_set(err, MS_EFORMAT, "reserved id at slot %zu", s);
        if (map_set(m, ids[s], (uint32_t)s) != IX_NONE)
            return ms_err_set(err, MS_EFORMAT, "id %lld is stored twice", (long long)ids[s]);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* scratch pool                                                         */
/* ------------------------------------------------------------------ */

static void scratch_free(ix_scratch *s)
{
    if (!s)
        return;
    free(s->vis);
    free(s->heap_a);
    free(s->heap_b);
    free(s->nbr);
    free(s->ptrs);
    free(s->cptrs);
    free(s->qps);
    free(s->iscores);
    free(s->scores);
    free(s->qq);
    free(s->qh);
    free(s);
}

ix_scratch *ix_scratch_get(vindex *ix)
{
    for (int i = 0; i < IX_POOL; i++) {
        int expected = 0;
        if (atomic_load_explicit(&ix->pool_busy[i], memory_order_relaxed) == 0 &&
            atomic_compare_exchange_strong_explicit(&ix->pool_busy[i], &expected, 1,
                                                    memory_order_acquire, memory_order_relaxed)) {
            /* pool[i] is ours until we clear busy: no one else touches it */
            if (!ix->pool[i] && (ix->pool[i] = calloc(1, sizeof(ix_scratch))))
                ix->pool[i]->pool_slot = i;
            if (ix->pool[i])
                return ix->pool[i];
            atomic_store_explicit(&ix->pool_busy[i], 0, memory_order_release);
            return NULL;
        }
    }
    ix_scratch *s = calloc(1, sizeof(ix_scratch)); /* all busy: a private one, freed by put */
    if (s)
        s->pool_slot = -1;
    return s;
}

void ix_scratch_put(vindex *ix, ix_scratch *s)
{
    if (s->pool_slot >= 0)
        atomic_store_explicit(&ix->pool_busy[s->pool_slot], 0, memory_order_release);
    else
        scratch_free(s);
}

/* realloc that leaves *p alone on failure */
static int grow_array(void *p, size_t n, size_t size)
{
    void *q = realloc(*(void **)p, n * size);
    if (!q)
        return MS_ENOMEM;
    *(void **)p = q;
    return 0;
}

int ix_scratch_reserve(ix_scratch *s, size_t heap_items, size_t item_size, size_t nbr, size_t dim)
{
    if (s->heap_cap < heap_items) {
        if (grow_array(&s->heap_a, heap_items, item_size) || grow_array(&s->heap_b, heap_items, item_size))
            return MS_ENOMEM;
        s->heap_cap = heap_items;
    }
    if (s->nbr_cap < nbr) {
        if (grow_array(&s->nbr, nbr, sizeof *s->nbr) || grow_array(&s->ptrs, nbr, sizeof *s->ptrs) ||
            grow_array(&s->cptrs, nbr, sizeof *s->cptrs) || grow_array(&s->qps, nbr, sizeof *s->qps) ||
            grow_array(&s->iscores, nbr, sizeof *s->iscores) || grow_array(&s->scores, nbr, sizeof *s->scores))
            return MS_ENOMEM;
        s->nbr_cap = nbr;
    }
    if (s->qq_cap < dim) {
        if (grow_array(&s->qq, dim, 1) || grow_array(&s->qh, dim, 1))
            return MS_ENOMEM;
        s->qq_cap = dim;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* create / free                                                        */
/* ------------------------------------------------------------------ */

static void release_internals(vindex *ix)
{
    ix_dir *d = atomic_load_explicit(&ix->dir, memory_order_relaxed);
    if (d)
        for (size_t c = 0; c < d->cap; c++)
            chunk_free(ix, d->chunk[c]);
    while (d) {
        ix_dir *next = d->retired;
        free(d);
        d = next;
    }
    map_free_all(atomic_load_explicit(&ix->map, memory_order_relaxed));
    if (ix->stripes) {
        for (int i = 0; i < IX_LOCK_STRIPES; i++)
            pthread_mutex_destroy(&ix->stripes[i]);
        free(ix->stripes);
    }
    for (int i = 0; i < IX_POOL; i++)
        scratch_free(ix->pool[i]);
    if (ix->mapped)
        munmap(ix->mapped, ix->mapped_len);
    pthread_mutex_destroy(&ix->entry_lock);
}

void index_free(vindex *ix)
{
    if (!ix)
        return;
    release_internals(ix);
    free(ix);
}

static unsigned chunk_shift_for(int dim)
{
    unsigned shift = MIN_CHUNK_SHIFT;
    while (shift < MAX_CHUNK_SHIFT && ((size_t)1 << (shift + 1)) * (size_t)dim * sizeof(float) <= CHUNK_TARGET_BYTES)
        shift++;
    return shift;
}

/* Builds an empty index; chunk_shift 0 picks the size from dim. */
int ix_create(int dim, const index_params *p, unsigned chunk_shift, vindex **out, ms_err *err)
{
    *out = NULL;
    index_params def;
    if (!p) {
        index_params_init(&def);
        p = &def;
    }
    if (dim < 1 || dim > 65536)
        return ms_err_set(err, MS_EINVAL, "index dimension must be 1..65536, got %d", dim);
    int rc = check_params(p, err);
    if (rc)
        return rc;
    vindex *ix = calloc(1, sizeof *ix);
    if (!ix)
        return ms_err_set(err, MS_ENOMEM, "index: out of memory");
    ix->dim = dim;
    ix->p = *p;
    if (ix->p.auto_threshold == 0)
        ix->p.auto_threshold = DEFAULT_AUTO_THRESHOLD;
    if (ix->p.ef_search == 0)
        ix->p.ef_search = DEFAULT_EF_SEARCH;
    ix->shift = chunk_shift ? chunk_shift : chunk_shift_for(dim);
    ix->S = (size_t)1 << ix->shift;
    ix->q.kind = p->quant;
    ix->q.code_bytes = ix_code_bytes(p->quant, (size_t)dim);
    ix->graph_arrays = p->kind != INDEX_FLAT;
    ix->M = p->M;
    ix->M0 = 2 * p->M;
    ix->level_mult = 1.0 / log((double)p->M);
    ix->level_seed = 0x5EEDF00Du;
    atomic_init(&ix->entry, IX_NO_ENTRY);
    atomic_init(&ix->kind, p->kind == INDEX_HNSW ? INDEX_HNSW : INDEX_FLAT);
    pthread_mutex_init(&ix->entry_lock, NULL);
    ix_dir *d = calloc(1, sizeof *d + 16 * sizeof d->chunk[0]);
    ix_map *m = map_new(64);
    if (d)
        d->cap = 16;
    atomic_init(&ix->dir, d);
    atomic_init(&ix->map, m);
    if (!d || !m) {
        index_free(ix);
        return ms_err_set(err, MS_ENOMEM, "index: out of memory");
    }
    if (ix->graph_arrays && (rc = ix_hnsw_init(ix, err))) {
        index_free(ix);
        return rc;
    }
    *out = ix;
    return 0;
}

int index_create(int dim, const index_params *p, vindex **out, ms_err *err)
{
    if (!out)
        return ms_err_set(err, MS_EINVAL, "index_create: out is NULL");
    return ix_create(dim, p, 0, out, err);
}

/* ------------------------------------------------------------------ */
/* add / remove / get                                                   */
/* ------------------------------------------------------------------ */

static bool all_finite(const float *v, size_t n)
{
    float acc = 0;
    for (size_t i = 0; i < n; i++)
        acc += v[i] * 0.0f; /* NaN or inf anywhere makes acc NaN */
    return acc == 0.0f;
}

static void write_slot(vindex *ix, size_t slot, int64_t id, const float *v)
{
    ix_chunk *c = ix_chunk_of(ix, slot);
    size_t i = slot & (ix->S - 1), d = (size_t)ix->dim;
    memcpy(c->vec + i * d, v, d * sizeof *v);
    c->ids[i] = id;
    if (c->codes)
        ix_quant_encode(ix, v, c->codes + i * ix->q.code_bytes, c->qparams ? c->qparams + 2 * i : NULL);
    st_relaxed(&c->dead[i], 0);
}

static int maybe_switch_to_graph(vindex *ix, ms_err *err)
{
    if (ix->p.kind != INDEX_AUTO || !ix->graph_arrays ||
        atomic_load_explicit(&ix->kind, memory_order_relaxed) == INDEX_HNSW ||
        atomic_load_explicit(&ix->n_live, memory_order_relaxed) < ix->p.auto_threshold)
        return 0;
    /* Readers keep using the exact scan until the graph holds every slot. */
    int rc = ix_hnsw_insert_range(ix, 0, ix_published(ix), ix_threads(ix), err);
    if (rc)
        return rc;
    atomic_store_explicit(&ix->kind, INDEX_HNSW, memory_order_release);
    return 0;
}

int index_add(vindex *ix, const int64_t *ids, const float *vecs, size_t n, ms_err *err)
{
    if (!ix || (n && (!ids || !vecs)))
        return ms_err_set(err, MS_EINVAL, "index_add: NULL argument");
    if (n == 0)
        return 0;
    size_t base = atomic_load_explicit(&ix->n_slots, memory_order_relaxed);
    if (n > IX_MAX_SLOTS - base)
        return ms_err_set(err, MS_ETOOBIG, "index: %zu + %zu vectors is over the limit of %u",
                          base, n, (unsigned)IX_MAX_SLOTS);
    size_t d = (size_t)ix->dim;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == IX_EMPTY_KEY)
            return ms_err_set(err, MS_EINVAL, "index: id %lld is reserved", (long long)ids[i]);
        if (!all_finite(vecs + i * d, d))
            return ms_err_set(err, MS_EINVAL, "index: vector %zu (id %lld) has a NaN or infinite component",
                              i, (long long)ids[i]);
    }
    int rc = ix_reserve_slots(ix, base + n, err);
    if (!rc)
        rc = map_reserve(ix, n, err);
    if (rc)
        return rc;
    ix_map *m = atomic_load_explicit(&ix->map, memory_order_relaxed);
    size_t replaced = 0;
    for (size_t i = 0; i < n; i++) {
        size_t slot = base + i;
        write_slot(ix, slot, ids[i], vecs + i * d);
        uint32_t old = map_set(m, ids[i], (uint32_t)slot);
        if (old != IX_NONE) {
            /* Tombstone first, publish after: a reader sees the old vector or
             * nothing, never the id twice. */
            ix_chunk *oc = ix_chunk_of(ix, old);
            if (!ld_relaxed(&oc->dead[old & (ix->S - 1)]))
                replaced++;
            st_release(&oc->dead[old & (ix->S - 1)], 1);
        }
    }
    atomic_fetch_add_explicit(&ix->n_live, n - replaced, memory_order_relaxed);
    atomic_store_explicit(&ix->n_slots, base + n, memory_order_release);
    if (atomic_load_explicit(&ix->kind, memory_order_relaxed) == INDEX_HNSW)
        return ix_hnsw_insert_range(ix, base, base + n, ix_threads(ix), err);
    return maybe_switch_to_graph(ix, err);
}

int index_remove(vindex *ix, int64_t id)
{
    if (!ix || id == IX_EMPTY_KEY)
        return MS_ENOTFOUND;
    uint32_t slot = ix_map_find(ix, id);
    if (slot == IX_NONE)
        return MS_ENOTFOUND;
    ix_map *m = atomic_load_explicit(&ix->map, memory_order_relaxed);
    map_set(m, id, IX_NONE);
    ix_chunk *c = ix_chunk_of(ix, slot);
    st_release(&c->dead[slot & (ix->S - 1)], 1);
    atomic_fetch_sub_explicit(&ix->n_live, 1, memory_order_relaxed);
    return 0;
}

int index_get(const vindex *ix, int64_t id, float *out)
{
    if (!ix || !out || id == IX_EMPTY_KEY)
        return MS_ENOTFOUND;
    uint32_t slot = ix_map_find(ix, id);
    if (slot == IX_NONE)
        return MS_ENOTFOUND;
    memcpy(out, ix_vec(ix, slot), (size_t)ix->dim * sizeof *out);
    return 0;
}

size_t index_count(const vindex *ix)
{
    return ix ? atomic_load_explicit((_Atomic size_t *)&ix->n_live, memory_order_relaxed) : 0;
}

int index_dim(const vindex *ix)
{
    return ix ? ix->dim : 0;
}

index_kind index_current_kind(const vindex *ix)
{
    return (index_kind)atomic_load_explicit((_Atomic int *)&ix->kind, memory_order_acquire);
}

size_t index_memory_bytes(const vindex *ix)
{
    if (!ix)
        return 0;
    size_t total = sizeof *ix, per_chunk_slot = (size_t)ix->dim * sizeof(float) + sizeof(int64_t) + 1 +
                                                 ix->q.code_bytes + (ix_has_qparams(ix->q.kind) ? 8 : 0);
    if (ix->graph_arrays)
        per_chunk_slot += 1 + ix_links0_stride(ix) * sizeof(uint32_t) + sizeof(uint32_t *);
    ix_dir *d = atomic_load_explicit((_Atomic(ix_dir *) *)&ix->dir, memory_order_acquire);
    for (ix_dir *r = d; r; r = r->retired)
        total += sizeof *r + r->cap * sizeof r->chunk[0];
    for (size_t c = 0; c < d->cap; c++)
        if (ld_acquire(&d->chunk[c]))
            total += sizeof(ix_chunk) + ix->S * per_chunk_slot;
    for (ix_map *m = atomic_load_explicit((_Atomic(ix_map *) *)&ix->map, memory_order_acquire); m; m = m->retired)
        total += sizeof *m + m->cap * (sizeof(int64_t) + sizeof(uint32_t));
    total += ix->upper_bytes;
    if (ix->stripes)
        total += IX_LOCK_STRIPES * sizeof(pthread_mutex_t);
    return total; /* search scratch (visited marks) is transient and not counted */
}

/* ------------------------------------------------------------------ */
/* search                                                               */
/* ------------------------------------------------------------------ */

static int check_query(const vindex *ix, const float *q, int k, const index_hit *hits, const int *n_hits,
                       ms_err *err)
{
    if (!ix || !q || !hits || !n_hits)
        return ms_err_set(err, MS_EINVAL, "index search: NULL argument");
    if (k < 1)
        return ms_err_set(err, MS_EINVAL, "k must be at least 1, got %d", k);
    if (!all_finite(q, (size_t)ix->dim))
        return ms_err_set(err, MS_EINVAL, "the query vector has a NaN or infinite component");
    return 0;
}

int index_search_exact(vindex *ix, const float *query, int k, index_hit *hits, int *n_hits, ms_err *err)
{
    int rc = check_query(ix, query, k, hits, n_hits, err);
    if (rc)
        return rc;
    return ix_flat_search(ix, query, k, NULL, 0, hits, n_hits, err);
}

static int search_one(vindex *ix, const float *q, int k, int ef, index_hit *hits, int *n_hits, ms_err *err)
{
    if (atomic_load_explicit(&ix->kind, memory_order_acquire) == INDEX_HNSW) {
        int rc = ix_hnsw_search(ix, q, k, ef > 0 ? ef : ix->p.ef_search, NULL, 0, hits, n_hits, err);
        if (rc)
            return rc;
        size_t live = atomic_load_explicit(&ix->n_live, memory_order_relaxed);
        if ((size_t)*n_hits >= (live < (size_t)k ? live : (size_t)k))
            return 0;
        /* The graph ran dry (tombstones, a tiny graph): the scan never does. */
    }
    if (ix->q.kind != INDEX_QUANT_NONE)
        return ix_flat_search_quant(ix, q, k, ix_rerank_count(k), hits, n_hits, err);
    return ix_flat_search(ix, q, k, NULL, 0, hits, n_hits, err);
}

int index_search(vindex *ix, const float *query, int k, int ef, index_hit *hits, int *n_hits, ms_err *err)
{
    int rc = check_query(ix, query, k, hits, n_hits, err);
    if (rc)
        return rc;
    return search_one(ix, query, k, ef, hits, n_hits, err);
}

typedef struct batch_job {
    vindex *ix;
    const float *qs;
    int nq, k, ef;
    index_hit *hits;
    int *n_hits;
    _Atomic int next;
    _Atomic int rc;
    ms_err err;
    pthread_mutex_t err_lock;
} batch_job;

static void *batch_worker(void *arg)
{
    batch_job *b = arg;
    for (;;) {
        int i = atomic_fetch_add(&b->next, 1);
        if (i >= b->nq || atomic_load(&b->rc))
            return NULL;
        ms_err e;
        int rc = search_one(b->ix, b->qs + (size_t)i * b->ix->dim, b->k, b->ef, b->hits + (size_t)i * b->k,
                            &b->n_hits[i], &e);
        if (rc) {
            pthread_mutex_lock(&b->err_lock);
            if (!atomic_load(&b->rc)) {
                b->err = e;
                atomic_store(&b->rc, rc);
            }
            pthread_mutex_unlock(&b->err_lock);
        }
    }
}

int index_search_batch(vindex *ix, const float *queries, int nq, int k, int ef, index_hit *hits,
                       int *n_hits, ms_err *err)
{
    if (!ix || !queries || !hits || !n_hits || nq < 0)
        return ms_err_set(err, MS_EINVAL, "index_search_batch: NULL argument or negative count");
    for (int i = 0; i < nq; i++) {
        int rc = check_query(ix, queries + (size_t)i * ix->dim, k, hits, n_hits, err);
        if (rc)
            return ms_err_prefix(err, "query %d: ", i);
    }
    if (nq == 0)
        return 0;
    if (atomic_load_explicit(&ix->kind, memory_order_acquire) == INDEX_FLAT && ix->q.kind == INDEX_QUANT_NONE)
        return ix_flat_search_batch(ix, queries, nq, k, hits, n_hits, err);
    batch_job b = {.ix = ix, .qs = queries, .nq = nq, .k = k, .ef = ef, .hits = hits, .n_hits = n_hits};
    pthread_mutex_init(&b.err_lock, NULL);
    int nt = ix_threads(ix);
    if (nt > nq)
        nt = nq;
    pthread_t th[64];
    int started = 0;
    for (; started < nt - 1; started++)
        if (pthread_create(&th[started], NULL, batch_worker, &b))
            break;
    batch_worker(&b);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&b.err_lock);
    int rc = atomic_load(&b.rc);
    if (rc && err)
        *err = b.err;
    return rc;
}

/* ------------------------------------------------------------------ */
/* filters                                                              */
/* ------------------------------------------------------------------ */

/* Graph search of a candidate set pays roughly ef * M0 distances per
 * pass-rate (it must walk past the nodes that fail); scanning the set pays
 * one distance per member but streams better. */
static bool filter_prefers_graph(const vindex *ix, size_t n_pass, size_t n_live, int ef)
{
    if (n_pass == 0 || n_live == 0)
        return false;
    double pass_rate = (double)n_pass / (double)n_live;
    double graph_cost = 4.0 * (double)ef * (double)ix->M0 / pass_rate;
    return (double)n_pass > graph_cost;
}

int ix_search_filtered_mode(vindex *ix, const float *query, int k, int ef, const int64_t *allowed,
                            size_t n_allowed, int mode, index_hit *hits, int *n_hits, ms_err *err)
{
    int rc = check_query(ix, query, k, hits, n_hits, err);
    if (rc)
        return rc;
    if (n_allowed && !allowed)
        return ms_err_set(err, MS_EINVAL, "index_search_filtered: allowed is NULL");
    size_t n = ix_published(ix);
    *n_hits = 0;
    if (n == 0 || n_allowed == 0)
        return 0;
    size_t words = (n + 63) / 64, n_pass = 0;
    uint64_t *bitmap = calloc(words, sizeof *bitmap);
    if (!bitmap)
        return ms_err_set(err, MS_ENOMEM, "index: out of memory for a filter of %zu slots", n);
    for (size_t i = 0; i < n_allowed; i++) {
        uint32_t s = ix_map_find(ix, allowed[i]);
        if (s == IX_NONE || s >= n || ix_dead(ix, s) || (bitmap[s / 64] >> (s % 64) & 1))
            continue;
        bitmap[s / 64] |= (uint64_t)1 << (s % 64);
        n_pass++;
    }
    int ef_eff = ef > 0 ? ef : ix->p.ef_search;
    bool graph = atomic_load_explicit(&ix->kind, memory_order_acquire) == INDEX_HNSW &&
                 (mode == 1 || (mode == 0 && filter_prefers_graph(ix, n_pass, index_count(ix), ef_eff)));
    rc = 0;
    if (graph) {
        rc = ix_hnsw_search(ix, query, k, ef_eff, bitmap, n, hits, n_hits, err);
        if (!rc && (size_t)*n_hits < (n_pass < (size_t)k ? n_pass : (size_t)k))
            graph = false; /* never fewer than k when k pass: finish exactly */
    }
    if (!rc && !graph)
        rc = ix_flat_search(ix, query, k, bitmap, n, hits, n_hits, err);
    free(bitmap);
    return rc;
}

int index_search_filtered(vindex *ix, const float *query, int k, int ef, const int64_t *allowed,
                          size_t n_allowed, index_hit *hits, int *n_hits, ms_err *err)
{
    return ix_search_filtered_mode(ix, query, k, ef, allowed, n_allowed, 0, hits, n_hits, err);
}

/* ------------------------------------------------------------------ */
/* rebuild                                                              */
/* ------------------------------------------------------------------ */

int index_rebuild(vindex *ix, ms_err *err)
{
    if (!ix)
        return ms_err_set(err, MS_EINVAL, "index_rebuild: NULL index");
    index_params p = ix->p;
    vindex *nx;
    int rc = ix_create(ix->dim, &p, 0, &nx, err);
    if (rc)
        return rc;
    size_t n = ix_published(ix), d = (size_t)ix->dim;
    /* Copy live slots chunk by chunk: one chunk of scratch, not a second copy. */
    int64_t *ids = malloc(ix->S * sizeof *ids);
    float *vecs = malloc(ix->S * d * sizeof *vecs);
    if (!ids || !vecs) {
        free(ids);
        free(vecs);
        index_free(nx);
        return ms_err_set(err, MS_ENOMEM, "index_rebuild: out of memory");
    }
    /* Build flat first, then the graph once over everything (AUTO decides). */
    atomic_store_explicit(&nx->kind, INDEX_FLAT, memory_order_relaxed);
    for (size_t base = 0; base < n && !rc; base += ix->S) {
        size_t m = 0;
        for (size_t s = base; s < n && s < base + ix->S; s++)
            if (!ix_dead(ix, s)) {
                ids[m] = ix_id(ix, s);
                memcpy(vecs + m * d, ix_vec(ix, s), d * sizeof *vecs);
                m++;
            }
        nx->p.kind = INDEX_FLAT; /* no auto switch while copying */
        rc = index_add(nx, ids, vecs, m, err);
        nx->p.kind = p.kind;
    }
    free(ids);
    free(vecs);
    if (!rc) {
        bool want_graph = p.kind == INDEX_HNSW ||
                          (p.kind == INDEX_AUTO && index_count(nx) >= p.auto_threshold);
        if (want_graph) {
            rc = ix_hnsw_insert_range(nx, 0, ix_published(nx), ix_threads(nx), err);
            if (!rc)
                atomic_store_explicit(&nx->kind, INDEX_HNSW, memory_order_relaxed);
        }
    }
    if (rc) {
        index_free(nx);
        return rc;
    }
    release_internals(ix);
    pthread_mutex_destroy(&nx->entry_lock);
    memcpy(ix, nx, sizeof *ix);
    pthread_mutex_init(&ix->entry_lock, NULL);
    free(nx);
    return 0;
}
