/*
 * center.c - the collection's center: the mean of its stored vectors,
 * subtracted from every vector before the index (engine.h, "Centering").
 *
 * Life of a center: engine_open reads the stored one (a damaged one is not
 * trusted: it is recomputed, or ignored by opens that may not write), then
 * computes it when the collection needs one (center_refresh); ingest and
 * reembed call engine_update_center when they finish. A recomputation is
 * one pass over the stored vectors with double sums, one store write, and
 * a rebuild of the index from the store with the new transform.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"
#include "util/sha256.h"

/* Below this distance from the center a vector has no direction of its own:
 * it is kept as it is rather than divided by (almost) zero. */
#define CENTER_TINY 1e-6

double engine_center_one(const engine *e, float *x)
{
    const float *c = e->center;
    if (!c)
        return 0;
    size_t dim = (size_t)e->dim;
    double ss = 0;
    for (size_t i = 0; i < dim; i++) {
        double d = (double)x[i] - (double)c[i];
        ss += d * d;
    }
    double norm = sqrt(ss);
    if (!(norm >= CENTER_TINY))
        return 0;
    double inv = 1.0 / norm;
    for (size_t i = 0; i < dim; i++)
        x[i] = (float)(((double)x[i] - (double)c[i]) * inv);
    return inv;
}

void engine_center_apply(const engine *e, float *v, size_t n)
{
    for (size_t r = 0; e->center && r < n; r++)
        engine_center_one(e, v + r * (size_t)e->dim);
}

int engine_centering(const engine *e)
{
    return e->opt.center == ENGINE_CENTER_ON || (e->opt.center == ENGINE_CENTER_AUTO && !e->center_policy_off);
}

void engine_index_identity(const engine *e, char *out, size_t len)
{
    const char *tag = e->center_tag[0] ? e->center_tag : "none";
    if (e->opt.center == ENGINE_CENTER_AUTO && e->center_policy_off)
        tag = "off";
    snprintf(out, len, "%s|center=%s", e->identity, tag);
}

/* Takes ownership of c (NULL: no center) and tags it: the first 16 hex
 * digits of the SHA-256 of its little-endian float32 bytes. */
static void center_set(engine *e, float *c, size_t from_n)
{
    free(e->center);
    e->center = c;
    e->center_n = c ? from_n : 0;
    if (!c) {
        snprintf(e->center_tag, sizeof e->center_tag, "none");
        return;
    }
    size_t bytes = (size_t)e->dim * 4;
    uint8_t *le = malloc(bytes);
    char hex[65];
    if (le) {
        for (int i = 0; i < e->dim; i++) {
            uint32_t u;
            memcpy(&u, &c[i], 4);
            for (int b = 0; b < 4; b++)
                le[4 * i + b] = (uint8_t)(u >> (8 * b));
        }
        ms_sha256_hex(le, bytes, hex);
        free(le);
    } else {
        ms_sha256_hex(c, bytes, hex); /* host order: the same on little-endian hosts */
    }
    snprintf(e->center_tag, sizeof e->center_tag, "%.16s", hex);
}

void engine_center_forget(engine *e)
{
    center_set(e, NULL, 0);
}

typedef struct mean_ctx {
    double *sum;
    int dim;
    size_t n;
    int bad_dim;
} mean_ctx;

static int mean_add(void *ctx, int64_t id, const float *vec, int dim)
{
    (void)id;
    mean_ctx *m = ctx;
    if (dim != m->dim) {
        m->bad_dim = dim;
        return 1;
    }
    for (int i = 0; i < dim; i++)
        m->sum[i] += vec[i];
    m->n++;
    return 0;
}

/* The mean of the stored vectors into a fresh c (NULL when there are none). */
static int compute_mean(engine *e, store *s, float **out, size_t *n, ms_err *err)
{
    *out = NULL;
    *n = 0;
    mean_ctx m = {.dim = e->dim};
    if (!(m.sum = calloc((size_t)e->dim, sizeof *m.sum)))
        return ms_err_set(err, MS_ENOMEM, "no memory to compute the center");
    int rc = store_each_vector(s, mean_add, &m, err);
    if (rc == 0 && m.bad_dim)
        rc = ms_err_set(err, MS_EFORMAT, "a stored vector has %d floats, the collection's model gives %d",
                        m.bad_dim, e->dim);
    float *c = NULL;
    if (rc == 0 && m.n > 0 && !(c = malloc((size_t)e->dim * sizeof *c)))
        rc = ms_err_set(err, MS_ENOMEM, "no memory for the center");
    if (rc == 0 && c) {
        for (int i = 0; i < e->dim; i++)
            c[i] = (float)(m.sum[i] / (double)m.n);
        *out = c;
        *n = m.n;
    }
    free(m.sum);
    return rc ? ms_err_prefix(err, "computing the center: ") : 0;
}

enum center_plan { PLAN_KEEP, PLAN_COMPUTE, PLAN_NONE };

/* A center is due when there is none, when the collection has doubled since
 * it was computed, or when deletes have halved it: the mean of the images a
 * collection no longer holds is no longer its common part. Below the minimum
 * a center left by a larger collection is removed. */
static enum center_plan plan(const engine *e, size_t count, int force)
{
    int redo = force || e->center_unstored;
    if (count < ENGINE_CENTER_MIN)
        return e->center || e->center_unstored ? PLAN_NONE : PLAN_KEEP;
    if (redo || !e->center || count >= 2 * e->center_n || 2 * count <= e->center_n)
        return PLAN_COMPUTE;
    return PLAN_KEEP;
}

int engine_index_rebuild_now(engine *e, store *s, ms_err *err)
{
    uint64_t gen = 0;
    int rc = store_generation(s, &gen, err);
    if (rc == 0)
        rc = engine_index_rebuild(e, s, err);
    if (rc)
        return rc;
    e->known_gen = gen;
    e->index_foreign = 0; /* rebuilt from the store: it reflects it */
    e->index_dirty = e->index_path && index_count(e->ix) > 0;
    return 0;
}

/* Computes, stores and applies the center when the collection needs it;
 * rebuilds the index when there is one. note (may be NULL) says what was
 * done. Opened with ENGINE_CENTER_ON the center is kept in memory only.
 * The caller holds write_mu or has the engine to itself. */
static int center_refresh(engine *e, store *s, int force, int *changed, char *note, size_t note_len, ms_err *err)
{
    int persist = e->opt.center == ENGINE_CENTER_AUTO;
    size_t count = 0;
    int rc = store_count(s, &count, err);
    if (rc)
        return rc;
    enum center_plan p = plan(e, count, force);
    if (p == PLAN_KEEP)
        return 0;
    float *c = NULL;
    size_t n = 0;
    size_t old_n = e->center_n;
    if (p == PLAN_COMPUTE && (rc = compute_mean(e, s, &c, &n, err)) != 0)
        return rc;
    if (c && n < ENGINE_CENTER_MIN) { /* images without a vector of this model */
        free(c);
        c = NULL;
    }
    if (persist)
        rc = c ? store_set_center(s, c, e->dim, n, err) : store_clear_center(s, err);
    if (rc) {
        free(c);
        return ms_err_prefix(err, "recording the center: ");
    }
    center_set(e, c, n);
    e->center_unstored = 0;
    if (note && c && old_n)
        snprintf(note, note_len, "center recomputed from %zu vectors (was from %zu)", n, old_n);
    else if (note && c)
        snprintf(note, note_len, "center computed from %zu vectors", n);
    else if (note)
        snprintf(note, note_len, "center removed (fewer than %d vectors)", ENGINE_CENTER_MIN);
    if (changed)
        *changed = 1;
    if (!e->ix)
        return 0; /* engine_open: the index is built after this */
    return engine_index_rebuild_now(e, s, err);
}

int engine_center_open(engine *e, store *s, engine_open_report *rep, ms_err *err)
{
    center_set(e, NULL, 0);
    if (!engine_centering(e) || e->dim == 0 || e->pending_reembed)
        return 0; /* a pending re-embed: the stored center is the old model's */
    int persist = e->opt.center == ENGINE_CENTER_AUTO;
    float *c = malloc((size_t)e->dim * sizeof *c);
    if (!c)
        return ms_err_set(err, MS_ENOMEM, "no memory for the center");
    size_t n = 0;
    ms_err lerr = {0};
    int rc = store_get_center(s, c, e->dim, &n, &lerr);
    if (rc == 0) {
        center_set(e, c, n);
    } else {
        free(c);
        if (rc != MS_ENOTFOUND && rc != MS_EFORMAT) {
            if (err)
                *err = lerr;
            return rc;
        }
        if (rc == MS_EFORMAT) {
            /* Derived data, like the index: never trusted when damaged. */
            snprintf(rep->center_note, sizeof rep->center_note, "stored center unusable (%.160s): %s", lerr.msg,
                     e->m || !persist ? "recomputed" : "ignored");
            e->center_unstored = 1;
        }
    }
    if (!e->m && persist)
        return 0; /* opens without a model never write (ENGINE_CENTER_ON writes nothing) */
    char note[200] = "";
    rc = center_refresh(e, s, 0, NULL, note, sizeof note, err);
    if (rc == 0 && note[0]) {
        size_t len = strlen(rep->center_note);
        snprintf(rep->center_note + len, sizeof rep->center_note - len, "%s%s", len ? "; " : "", note);
    }
    return rc;
}

int engine_update_center(engine *e, int force, int *changed, ms_err *err)
{
    if (changed)
        *changed = 0;
    if (!e->m)
        return ms_err_set(err, MS_EINVAL, "the collection was opened without a model: its center is not updated");
    if (!engine_centering(e) || e->pending_reembed || e->dim == 0)
        return 0;
    store *s;
    int rc = engine_pool_get(e, &s, err);
    if (rc)
        return rc;
    pthread_mutex_lock(&e->write_mu);
    rc = center_refresh(e, s, force, changed, NULL, 0, err);
    pthread_mutex_unlock(&e->write_mu);
    engine_pool_put(e, s);
    return rc;
}

/* Applies the policy just recorded (the caller holds write_mu). */
static int apply_policy(engine *e, store *s, ms_err *err)
{
    if (e->opt.center != ENGINE_CENTER_AUTO || e->pending_reembed || e->dim == 0 || !e->ix)
        return 0; /* an override rules this open; nothing to apply to yet */
    if (e->center_policy_off) {
        int had = e->center != NULL;
        center_set(e, NULL, 0);
        e->center_unstored = 0;
        if (had)
            return engine_index_rebuild_now(e, s, err);
    } else {
        int changed = 0;
        int rc = center_refresh(e, s, 0, &changed, NULL, 0, err);
        if (rc || changed)
            return rc; /* rebuilt with the new center */
    }
    /* The same vectors, but the index file's identity changed (center=off
     * <-> none or the tag): save it again. */
    e->index_dirty = e->index_path && index_count(e->ix) > 0;
    return 0;
}

int engine_set_center_policy(engine *e, int off, ms_err *err)
{
    if (off != 0 && off != 1)
        return ms_err_set(err, MS_EINVAL, "the centering policy is off (1) or auto (0), got %d", off);
    store *s;
    int rc = engine_pool_get(e, &s, err);
    if (rc)
        return rc;
    pthread_mutex_lock(&e->write_mu);
    rc = store_set_center_policy(s, off, err);
    if (rc == 0) {
        e->center_policy_off = off;
        rc = apply_policy(e, s, err);
    }
    pthread_mutex_unlock(&e->write_mu);
    engine_pool_put(e, s);
    return rc;
}

int engine_get_center(engine *e, float *c, size_t *from_n)
{
    if (!e->center)
        return MS_ENOTFOUND;
    memcpy(c, e->center, (size_t)e->dim * sizeof *c);
    if (from_n)
        *from_n = e->center_n;
    return 0;
}
