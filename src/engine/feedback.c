/*
 * feedback.c - relevance feedback: the user marks some results as like
 * what they look for and some as not, and the search moves towards the
 * first and away from the second.
 *
 * Query expansion (search.c) guesses that the top results are relevant and
 * averages them into the query. Feedback replaces the guess with the
 * user's judgement. The query vector moves in the index's space (centred,
 * unit length, so cosine is a dot product) the way Rocchio's classic
 * formula moves a text query:
 *
 *     q' = l2(q + a * mean(like) - b * mean(unlike))
 *
 * Means rather than sums keep the balance between query and marks the same
 * whether the user marked one image or twenty. Centering matters here as
 * it does for expansion: before it, every chest X-ray's vector shares one
 * large component, and subtracting the unlike images' mean would mostly
 * subtract that component rather than what makes them different.
 *
 * The weights were chosen by simulation (docs/evaluation.md, "Relevance
 * feedback"): `medsearch eval --feedback N` lets a perfect user mark the
 * first N results by their labels, then scores the second search on the
 * images not yet judged. Pulling harder towards the liked images than
 * Rocchio's text-retrieval weights (0.75 / 0.15) do paid on both labelled
 * sets, and so did pushing away from the unliked ones: an X-ray collection
 * is dense, and the images the user rejects sit right beside the query.
 *
 * The marked images are judged already. They are left out of the results
 * and out of the query expansion that follows (it would otherwise add the
 * liked images a second time), exactly as the query image itself is.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"

int engine_feedback_check(const engine_query *q, ms_err *err)
{
    const struct {
        const int64_t *ids;
        int n;
        const char *name;
    } lists[2] = {{q->like, q->n_like, "like"}, {q->unlike, q->n_unlike, "unlike"}};
    for (int l = 0; l < 2; l++) {
        if (lists[l].n < 0 || lists[l].n > ENGINE_FEEDBACK_MAX)
            return ms_err_set(err, MS_EINVAL, "at most %d images can be marked %s, got %d", ENGINE_FEEDBACK_MAX,
                              lists[l].name, lists[l].n);
        if (lists[l].n > 0 && !lists[l].ids)
            return ms_err_set(err, MS_EINVAL, "%d images marked %s but no ids", lists[l].n, lists[l].name);
        for (int i = 0; i < lists[l].n; i++)
            if (lists[l].ids[i] <= 0)
                return ms_err_set(err, MS_EINVAL, "image ids are positive: %lld marked %s",
                                  (long long)lists[l].ids[i], lists[l].name);
    }
    return 0;
}

int engine_feedback_given(const engine_query *q)
{
    return q->n_like > 0 || q->n_unlike > 0;
}

static int cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Sorts ids[0..n) and drops repeats; returns the new count. */
static size_t sort_unique(int64_t *ids, size_t n)
{
    if (n == 0)
        return 0;
    qsort(ids, n, sizeof *ids, cmp_id);
    size_t w = 1;
    for (size_t i = 1; i < n; i++)
        if (ids[i] != ids[w - 1])
            ids[w++] = ids[i];
    return w;
}

int engine_ids_contain(const int64_t *sorted, size_t n, int64_t id)
{
    return n && bsearch(&id, sorted, n, sizeof id, cmp_id) != NULL;
}

int engine_feedback_excluded(const engine_query *q, int64_t **out, size_t *n_out, ms_err *err)
{
    *out = NULL;
    *n_out = 0;
    size_t nl = (size_t)(q->n_like > 0 ? q->n_like : 0), nu = (size_t)(q->n_unlike > 0 ? q->n_unlike : 0);
    int self = q->exclude_self && q->by_id > 0;
    if (nl + nu == 0 && !self)
        return 0;
    int64_t *ids = malloc((nl + nu + 1) * sizeof *ids);
    if (!ids)
        return ms_err_set(err, MS_ENOMEM, "no memory for the marked images");
    if (nl)
        memcpy(ids, q->like, nl * sizeof *ids);
    size_t likes = sort_unique(ids, nl);
    for (size_t i = 0; i < nu; i++)
        if (engine_ids_contain(ids, likes, q->unlike[i])) {
            long long id = (long long)q->unlike[i];
            free(ids);
            return ms_err_set(err, MS_EINVAL, "image %lld is marked both like and unlike", id);
        }
    size_t n = likes;
    if (nu)
        memcpy(ids + n, q->unlike, nu * sizeof *ids);
    n += nu;
    if (self)
        ids[n++] = q->by_id;
    *out = ids;
    *n_out = sort_unique(ids, n);
    return 0;
}

/* Adds weight * mean of the index's vectors of ids to acc (repeats count
 * once). v is scratch of dim floats. */
static int add_mean(const engine *e, const int64_t *ids, int n, const char *name, float weight, float *acc,
                    float *v, ms_err *err)
{
    if (n <= 0)
        return 0;
    int64_t *u = malloc((size_t)n * sizeof *u);
    if (!u)
        return ms_err_set(err, MS_ENOMEM, "no memory for the marked images");
    memcpy(u, ids, (size_t)n * sizeof *u);
    size_t nu = sort_unique(u, (size_t)n);
    int rc = 0;
    float w = weight / (float)nu;
    for (size_t i = 0; i < nu && rc == 0; i++) {
        if (index_get(e->ix, u[i], v))
            rc = ms_err_set(err, MS_ENOTFOUND, "no image with id %lld (marked %s) in the collection",
                            (long long)u[i], name);
        else
            for (int d = 0; d < e->dim; d++)
                acc[d] += w * v[d];
    }
    free(u);
    return rc;
}

int engine_feedback_apply(const engine *e, const engine_query *q, const float *vec, float *out, ms_err *err)
{
    int dim = e->dim;
    float *v = malloc((size_t)dim * sizeof *v);
    if (!v)
        return ms_err_set(err, MS_ENOMEM, "no memory for relevance feedback");
    memcpy(out, vec, (size_t)dim * sizeof *out);
    int rc = add_mean(e, q->like, q->n_like, "like", ENGINE_FEEDBACK_LIKE, out, v, err);
    if (rc == 0)
        rc = add_mean(e, q->unlike, q->n_unlike, "unlike", -ENGINE_FEEDBACK_UNLIKE, out, v, err);
    free(v);
    if (rc)
        return rc;
    double norm = 0;
    for (int d = 0; d < dim; d++)
        norm += (double)out[d] * out[d];
    norm = sqrt(norm);
    /* Only a query that the unliked images cancel exactly gets here. */
    if (!(norm > 1e-6))
        return ms_err_set(err, MS_EINVAL, "the images marked unlike cancel the query: nothing is left to search with");
    for (int d = 0; d < dim; d++)
        out[d] = (float)(out[d] / norm);
    return 0;
}
