/*
 * search.c - from a query image (or a stored image, or a ready vector) to
 * the k most similar stored images with their metadata.
 *
 * Order of work: embed the query (through the inference thread's dynamic
 * batches), turn a metadata filter into the candidate id set (store),
 * optionally expand the query with its top-N neighbours (QE), search the
 * index, keep one image per patient when asked, then read the results'
 * metadata. Relevance feedback (feedback.c) moves the query before the
 * expansion. Every step obeys the same filter and exclusions (the query
 * itself, the images the user marked), so that query expansion never leaks
 * an image the caller excluded.
 */
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"
#include "util/timing.h"

#define K_MAX 1000
#define QE_MAX STORE_SEARCH_QE_MAX

typedef struct search_ctx {
    engine *e;
    const engine_query *q;
    int64_t *excluded;        /* ids left out, sorted (NULL = none) */
    size_t n_excluded;
    int64_t *allowed;         /* filter candidates (NULL = no filter) */
    size_t n_allowed;
    int filtered;
    engine_timing *t;
} search_ctx;

/* Top-want hits for vec, the filter and exclusions applied. hits must hold
 * want + n_excluded entries. */
static int top_hits(search_ctx *c, const float *vec, int want, index_hit *hits, int *n, ms_err *err)
{
    int ask = want + (int)c->n_excluded;
    uint64_t t0 = ms_now_ns();
    int rc;
    if (c->filtered)
        rc = c->n_allowed == 0 ? (*n = 0, 0)
                               : index_search_filtered(c->e->ix, vec, ask, c->q->ef, c->allowed, c->n_allowed,
                                                       hits, n, err);
    else
        rc = index_search(c->e->ix, vec, ask, c->q->ef, hits, n, err);
    c->t->index_ms += ms_elapsed_ms(t0);
    if (rc)
        return rc;
    int w = 0;
    for (int i = 0; i < *n; i++)
        if (!engine_ids_contain(c->excluded, c->n_excluded, hits[i].id))
            hits[w++] = hits[i];
    *n = w < want ? w : want;
    return 0;
}

/* Average of the query and its top-N neighbours, re-normalised. */
static int expand_query(search_ctx *c, const float *vec, float *out, ms_err *err)
{
    int dim = c->e->dim, nq = c->q->qe;
    index_hit *hits = malloc(((size_t)nq + c->n_excluded) * sizeof *hits);
    float *v = malloc((size_t)dim * sizeof *v);
    if (!hits || !v) {
        free(hits);
        free(v);
        return ms_err_set(err, MS_ENOMEM, "no memory for query expansion");
    }
    int n = 0;
    int rc = top_hits(c, vec, nq, hits, &n, err);
    memcpy(out, vec, (size_t)dim * sizeof *out);
    for (int i = 0; rc == 0 && i < n; i++)
        if (index_get(c->e->ix, hits[i].id, v) == 0)
            for (int d = 0; d < dim; d++)
                out[d] += v[d];
    model_l2_normalise(out, 1, dim);
    free(hits);
    free(v);
    return rc;
}

/* Reads the metadata of a hit; 0, or MS_ENOTFOUND when deleted meanwhile. */
static int hit_meta(search_ctx *c, store *s, const index_hit *h, engine_result *r, ms_err *err)
{
    memset(r, 0, sizeof *r);
    r->id = h->id;
    r->score = h->score;
    uint64_t t0 = ms_now_ns();
    int rc = store_get_meta(s, h->id, &r->meta, err);
    c->t->store_ms += ms_elapsed_ms(t0);
    return rc;
}

static int same_patient(const store_meta *a, const store_meta *b)
{
    return a->patient_id && b->patient_id && *a->patient_id && strcmp(a->patient_id, b->patient_id) == 0;
}

/* Walks hits in order keeping those wanted; returns how many results. */
static int collect(search_ctx *c, store *s, const index_hit *hits, int n, int k, engine_result *res, int *got,
                   ms_err *err)
{
    *got = 0;
    for (int i = 0; i < n && *got < k; i++) {
        engine_result *r = &res[*got];
        ms_err merr = {0};
        int rc = hit_meta(c, s, &hits[i], r, &merr);
        if (rc == MS_ENOTFOUND)
            continue; /* deleted since the index answered */
        if (rc) {
            if (err)
                *err = merr;
            return rc;
        }
        int dup = 0;
        if (c->q->one_per_patient)
            for (int j = 0; j < *got && !dup; j++)
                dup = same_patient(&res[j].meta, &r->meta);
        if (dup) {
            store_meta_free(&r->meta);
            continue;
        }
        (*got)++;
    }
    return 0;
}

static void free_results(engine_result *res, int n)
{
    for (int i = 0; i < n; i++)
        store_meta_free(&res[i].meta);
}

/* The final top-k. With one_per_patient the index is asked for more until
 * k distinct patients are found or the candidates run out. */
static int final_results(search_ctx *c, const float *vec, engine_result **out, int *n_out, ms_err *err)
{
    int k = c->q->k;
    size_t total = c->filtered ? c->n_allowed : index_count(c->e->ix);
    int want = k;
    if (c->q->one_per_patient)
        want = k * 4 < 64 ? 64 : k * 4;
    engine_result *res = calloc((size_t)k, sizeof *res);
    if (!res)
        return ms_err_set(err, MS_ENOMEM, "no memory for results");
    store *s;
    int rc = engine_pool_get(c->e, &s, err);
    if (rc) {
        free(res);
        return rc;
    }
    int got = 0;
    for (;;) {
        if ((size_t)want > total + 1)
            want = (int)(total + 1);
        if (want < 1)
            want = 1;
        index_hit *hits = malloc(((size_t)want + c->n_excluded) * sizeof *hits);
        if (!hits) {
            rc = ms_err_set(err, MS_ENOMEM, "no memory for %d hits", want);
            break;
        }
        int n = 0;
        rc = top_hits(c, vec, want, hits, &n, err);
        if (rc == 0)
            rc = collect(c, s, hits, n, k, res, &got, err);
        free(hits);
        int exhausted = n < want || (size_t)want > total;
        if (rc || got >= k || exhausted || !c->q->one_per_patient)
            break;
        free_results(res, got);
        got = 0;
        want = (size_t)want * 4 > (size_t)total + 1 ? (int)total + 1 : want * 4;
    }
    engine_pool_put(c->e, s);
    if (rc) {
        free_results(res, got);
        free(res);
        return rc;
    }
    *out = res;
    *n_out = got;
    return 0;
}

static int check_query(const engine *e, const engine_query *q, ms_err *err)
{
    if (q->k < 1 || q->k > K_MAX)
        return ms_err_set(err, MS_EINVAL, "k must be 1..%d, got %d", K_MAX, q->k);
    if ((q->qe < 0 && q->qe != ENGINE_QE_COLLECTION) || q->qe > QE_MAX)
        return ms_err_set(err, MS_EINVAL, "query expansion must use 0..%d neighbours, got %d", QE_MAX, q->qe);
    if (q->ef < 0)
        return ms_err_set(err, MS_EINVAL, "ef must be >= 0, got %d", q->ef);
    if (!e->ix)
        return ms_err_set(err, MS_EINVAL, "the collection has no model and no images yet");
    return engine_feedback_check(q, err);
}

static int search_core(engine *e, const float *vec, const engine_query *q, engine_result **res, int *n,
                       engine_timing *t, ms_err *err)
{
    *res = NULL;
    *n = 0;
    engine_query resolved = *q;
    resolved.qe = engine_resolve_qe(e, q->qe);
    q = &resolved;
    int rc = check_query(e, q, err);
    if (rc)
        return rc;
    search_ctx c = {.e = e, .q = q, .t = t};
    if ((rc = engine_feedback_excluded(q, &c.excluded, &c.n_excluded, err)))
        return rc;
    if (q->filter) {
        store *s;
        if ((rc = engine_pool_get(e, &s, err)) != 0) {
            free(c.excluded);
            return rc;
        }
        uint64_t t0 = ms_now_ns();
        rc = store_filter_ids(s, q->filter, &c.allowed, &c.n_allowed, err);
        t->store_ms += ms_elapsed_ms(t0);
        engine_pool_put(e, s);
        if (rc) {
            free(c.excluded);
            return rc;
        }
        c.filtered = 1;
    }
    float *moved = NULL, *expanded = NULL;
    if (engine_feedback_given(q)) {
        if (!(moved = malloc((size_t)e->dim * sizeof *moved)))
            rc = ms_err_set(err, MS_ENOMEM, "no memory");
        else if ((rc = engine_feedback_apply(e, q, vec, moved, err)) == 0)
            vec = moved;
    }
    if (rc == 0 && q->qe > 0) {
        if (!(expanded = malloc((size_t)e->dim * sizeof *expanded)))
            rc = ms_err_set(err, MS_ENOMEM, "no memory");
        else
            rc = expand_query(&c, vec, expanded, err);
    }
    if (rc == 0)
        rc = final_results(&c, expanded ? expanded : vec, res, n, err);
    free(moved);
    free(expanded);
    free(c.allowed);
    free(c.excluded);
    return rc;
}

int engine_resolve_qe(const engine *e, int qe)
{
    return qe == ENGINE_QE_COLLECTION ? e->search_qe : qe;
}

int engine_set_search_qe(engine *e, int qe, ms_err *err)
{
    int rc = store_set_search_qe(e->main_store, qe, err);
    if (rc == 0)
        e->search_qe = qe;
    return rc;
}

static void count_search(engine *e, double total_ms, double embed_ms)
{
    pthread_mutex_lock(&e->stats_mu);
    e->searches++;
    e->search_ms_total += total_ms;
    e->embed_ms_total += embed_ms;
    pthread_mutex_unlock(&e->stats_mu);
}

/* Prepared input -> one L2-normalised vector through the inference queue. */
static int embed_input(engine *e, const float *input, float *vec, ms_err *err)
{
    infer_job job = {.input = input, .n = 1, .out = vec};
    int rc = infer_submit(&e->infer, &job, err);
    if (rc == 0)
        rc = infer_wait(&e->infer, &job, err);
    if (rc == 0)
        model_l2_normalise(vec, 1, e->dim);
    return rc;
}

int engine_embed(engine *e, const uint8_t *bytes, size_t len, float *vec, ms_err *err)
{
    int rc = engine_need_model(e, err);
    if (rc)
        return rc;
    float *input;
    if ((rc = engine_prepare(e, bytes, len, NULL, NULL, &input, NULL, err)) != 0)
        return rc;
    rc = embed_input(e, input, vec, err);
    free(input);
    return rc;
}

/* The centred vector of the image in bytes, or of q's region of it. */
static int embed_query(engine *e, const uint8_t *bytes, size_t len, const engine_query *q, float *vec,
                       engine_timing *t, ms_err *err)
{
    int rc = engine_need_model(e, err);
    if (rc)
        return rc;
    uint64_t t0 = ms_now_ns();
    float *input;
    rc = engine_prepare(e, bytes, len, q->region, q->region ? q->region_used : NULL, &input, NULL, err);
    t->decode_ms += ms_elapsed_ms(t0);
    if (rc)
        return rc;
    t0 = ms_now_ns();
    rc = embed_input(e, input, vec, err);
    t->embed_ms = ms_elapsed_ms(t0);
    free(input);
    if (rc == 0)
        engine_center_apply(e, vec, 1);
    return rc;
}

/* A region of a stored image: its bytes are read back and embedded again
 * (the index holds the whole image's vector only). */
static int embed_stored_region(engine *e, const engine_query *q, float *vec, engine_timing *t, ms_err *err)
{
    int rc = engine_need_model(e, err);
    if (rc)
        return rc;
    uint64_t t0 = ms_now_ns();
    uint8_t *bytes;
    size_t len;
    rc = engine_read_stored(e, q->by_id, &bytes, &len, err);
    t->decode_ms = ms_elapsed_ms(t0);
    if (rc == 0)
        rc = embed_query(e, bytes, len, q, vec, t, err);
    free(bytes);
    return rc;
}

/* The query's vector in index space (centred): from the image bytes, or the
 * stored image's as the index holds it, or a region of either embedded. */
static int query_vector(engine *e, const engine_query *q, float *vec, engine_timing *t, ms_err *err)
{
    if (q->bytes)
        return embed_query(e, q->bytes, q->len, q, vec, t, err);
    if (q->by_id <= 0 && q->n_like > 0 && !q->region) {
        /* The marked images alone: feedback moves a zero query. */
        memset(vec, 0, (size_t)e->dim * sizeof *vec);
        return 0;
    }
    if (q->by_id <= 0)
        return ms_err_set(err, MS_EINVAL, "a search needs an image, a stored image's id or images marked like%s",
                          q->region ? " (and a region, an image)" : "");
    if (q->region)
        return embed_stored_region(e, q, vec, t, err);
    if (e->ix && index_get(e->ix, q->by_id, vec) == 0)
        return 0; /* centred already, as everything in the index */
    return ms_err_set(err, MS_ENOTFOUND, "no image with id %lld", (long long)q->by_id);
}

int engine_search(engine *e, const engine_query *q, engine_result **res, int *n, engine_timing *t, ms_err *err)
{
    engine_timing local;
    if (!t)
        t = &local;
    memset(t, 0, sizeof *t);
    *res = NULL;
    *n = 0;
    uint64_t t0 = ms_now_ns();
    int rc = check_query(e, q, err);
    if (rc)
        return rc;
    float *vec = malloc((size_t)e->dim * sizeof *vec);
    if (!vec)
        return ms_err_set(err, MS_ENOMEM, "no memory");
    rc = query_vector(e, q, vec, t, err);
    if (rc == 0)
        rc = search_core(e, vec, q, res, n, t, err);
    free(vec);
    t->total_ms = ms_elapsed_ms(t0);
    if (rc == 0)
        count_search(e, t->total_ms, t->embed_ms);
    return rc;
}

int engine_search_vector(engine *e, const float *vec, const engine_query *q, engine_result **res, int *n,
                         ms_err *err)
{
    engine_timing t = {0};
    *res = NULL;
    *n = 0;
    if (!e->center)
        return search_core(e, vec, q, res, n, &t, err);
    float *centred = malloc((size_t)e->dim * sizeof *centred);
    if (!centred)
        return ms_err_set(err, MS_ENOMEM, "no memory");
    memcpy(centred, vec, (size_t)e->dim * sizeof *centred);
    engine_center_apply(e, centred, 1);
    int rc = search_core(e, centred, q, res, n, &t, err);
    free(centred);
    return rc;
}

void engine_results_free(engine_result *res, int n)
{
    if (!res)
        return;
    free_results(res, n);
    free(res);
}
