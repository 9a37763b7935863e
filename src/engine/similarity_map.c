/*
 * similarity_map.c - where two images are alike: the similarity search
 * ranks by, split over the cells of each image (engine.h,
 * engine_map_similarity).
 *
 * The split is exact, not a saliency guess. The model gives each image's
 * raw feature f as a sum over the cells of its last feature map,
 * f = sum_i s_i (model_feature_shares). The stored vector is v = f / |f|,
 * centred u = (v - c) / |v - c| (c: the collection's center; without one
 * u = v), and the similarity is <u_q, u_r>. Holding the other image's u
 * fixed, that is linear in f:
 *
 *   <u_q, u_r> = ( <f_q, u_r> / |f_q| - <c, u_r> ) / |v_q - c|
 *              = sum_i ( <s_i, u_r> / |f_q| - <c, u_r> / N ) / |v_q - c|
 *
 * so cell i of the query gets the i-th term, and the N terms add up to the
 * similarity. The center's term belongs to no cell; it is spread evenly,
 * which moves every cell by the same amount and changes no cell's rank. The
 * result's cells are the same with the roles swapped. A cell's value is
 * how much that patch of one image, as the network sees it with its
 * receptive field reaching beyond the patch, agrees with the whole of the
 * other image; negative where it argues against the match.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"

/* One image of the pair: its prepared input, feature and shares. */
typedef struct side {
    float *input, *feature, *shares;
    double inv_norm;     /* 1 / |f| */
    double inv_centred;  /* 1 / |v - c|, or 1 when not centred */
    int centred;
    float *u;            /* the vector search compares: l2(v - c), or v */
} side;

static void side_free(side *s)
{
    free(s->input);
    free(s->feature);
    free(s->shares);
    free(s->u);
}

/* f -> v -> u, as ingest and engine_center_one make them. */
static void side_vectors(const engine *e, side *s)
{
    int dim = e->dim;
    double ss = 0;
    for (int i = 0; i < dim; i++)
        ss += (double)s->feature[i] * s->feature[i];
    s->inv_norm = ss > 0 ? 1.0 / sqrt(ss) : 0;
    for (int i = 0; i < dim; i++)
        s->u[i] = (float)(s->feature[i] * s->inv_norm);
    double inv = engine_center_one(e, s->u);
    s->centred = inv > 0;
    s->inv_centred = s->centred ? inv : 1;
}

/* Cells of s against the other image's vector `other` (the formula above). */
static void side_cells(const engine *e, const side *s, const float *other, int cells, float *out)
{
    int dim = e->dim;
    double center_term = 0;
    if (s->centred) {
        for (int ch = 0; ch < dim; ch++)
            center_term += (double)e->center[ch] * other[ch];
        center_term /= cells;
    }
    for (int i = 0; i < cells; i++) {
        double dot = 0;
        for (int ch = 0; ch < dim; ch++)
            dot += (double)s->shares[(size_t)ch * (size_t)cells + (size_t)i] * other[ch];
        out[i] = (float)((dot * s->inv_norm - center_term) * s->inv_centred);
    }
}

/* Decodes, prepares and runs one image (bytes, or a region of them). */
static int side_run(engine *e, const uint8_t *bytes, size_t len, const image_region *region, image_rect *used,
                    int cells, side *s, ms_err *err)
{
    int rc = engine_prepare(e, bytes, len, region, used, &s->input, NULL, err);
    if (rc)
        return rc;
    s->feature = malloc((size_t)e->dim * sizeof *s->feature);
    s->u = malloc((size_t)e->dim * sizeof *s->u);
    s->shares = malloc((size_t)e->dim * (size_t)cells * sizeof *s->shares);
    if (!s->feature || !s->u || !s->shares)
        return ms_err_set(err, MS_ENOMEM, "no memory for a similarity map");
    infer_job job = {.input = s->input, .n = 1, .out = s->feature, .shares = s->shares};
    if ((rc = infer_submit(&e->infer, &job, err)) || (rc = infer_wait(&e->infer, &job, err)))
        return rc;
    side_vectors(e, s);
    return 0;
}

/* The query's bytes: q's own, or its stored image's read back into
 * *stored (malloc'd, the caller frees it; NULL for q's own). */
static int query_bytes(engine *e, const engine_query *q, const uint8_t **bytes, size_t *len, uint8_t **stored,
                       ms_err *err)
{
    *stored = NULL;
    *bytes = q->bytes;
    *len = q->len;
    if (q->bytes)
        return 0;
    if (q->by_id <= 0)
        return ms_err_set(err, MS_EINVAL, "a similarity map needs a query image or a stored image's id");
    int rc = engine_read_stored(e, q->by_id, stored, len, err);
    *bytes = *stored;
    return rc;
}

/* The query side: q's bytes, or its stored image's, with q's region. */
static int run_query(engine *e, const engine_query *q, int cells, side *s, engine_similarity_map *out, ms_err *err)
{
    uint8_t *stored;
    size_t len;
    const uint8_t *bytes;
    int rc = query_bytes(e, q, &bytes, &len, &stored, err);
    if (rc == 0)
        rc = side_run(e, bytes, len, q->region, q->region ? &out->region : NULL, cells, s, err);
    out->region_used = rc == 0 && q->region;
    if (q->region && q->region_used && rc == 0)
        *q->region_used = out->region;
    free(stored);
    return rc;
}

int engine_map_similarity(engine *e, const engine_query *q, int64_t result_id, engine_similarity_map *out,
                          ms_err *err)
{
    memset(out, 0, sizeof *out);
    int rc = engine_need_model(e, err);
    if (rc || (rc = model_feature_grid(e->m, &out->grid_h, &out->grid_w, err)))
        return rc;
    int cells = out->grid_h * out->grid_w;
    side qs = {0}, rs = {0};
    uint8_t *bytes = NULL;
    size_t len = 0;
    rc = run_query(e, q, cells, &qs, out, err);
    if (rc == 0 && (rc = engine_read_stored(e, result_id, &bytes, &len, err)) == 0)
        rc = side_run(e, bytes, len, NULL, NULL, cells, &rs, err);
    free(bytes);
    if (rc == 0) {
        out->query_cells = malloc((size_t)cells * sizeof *out->query_cells);
        out->result_cells = malloc((size_t)cells * sizeof *out->result_cells);
        if (!out->query_cells || !out->result_cells)
            rc = ms_err_set(err, MS_ENOMEM, "no memory for a similarity map");
    }
    if (rc == 0) {
        side_cells(e, &qs, rs.u, cells, out->query_cells);
        side_cells(e, &rs, qs.u, cells, out->result_cells);
        double sim = 0;
        for (int i = 0; i < e->dim; i++)
            sim += (double)qs.u[i] * rs.u[i];
        out->similarity = sim;
        out->centred = qs.centred && rs.centred;
    }
    side_free(&qs);
    side_free(&rs);
    if (rc)
        engine_similarity_map_free(out);
    return rc;
}

void engine_similarity_map_free(engine_similarity_map *m)
{
    if (!m)
        return;
    free(m->query_cells);
    free(m->result_cells);
    m->query_cells = m->result_cells = NULL;
}

/* One image of a map, its cells drawn over it as heat, as a PNG. */
static int side_overlay(engine *e, const uint8_t *bytes, size_t len, const image_rect *rect, const float *cells,
                        const engine_similarity_map *m, int longest_side, uint8_t **png, size_t *png_len, ms_err *err)
{
    uint8_t *gray = NULL, *rgb = NULL;
    int w, h;
    int rc = image_gray8(bytes, len, &e->opt.limits, rect, longest_side, &gray, &w, &h, err);
    int k = rc ? 1 : longest_side / (w > h ? w : h); /* a smaller image is enlarged, its pixels repeated */
    if (k > 1) {
        uint8_t *big = image_gray8_repeat(gray, w, h, k);
        free(gray);
        gray = big;
        w *= k;
        h *= k;
        if (!gray)
            rc = ms_err_set(err, MS_ENOMEM, "no memory for a %dx%d overlay", w, h);
    }
    if (rc == 0 && !(rgb = malloc((size_t)w * (size_t)h * 3)))
        rc = ms_err_set(err, MS_ENOMEM, "no memory for a %dx%d overlay", w, h);
    if (rc == 0) {
        image_heat_blend(gray, w, h, cells, m->grid_w, m->grid_h, rgb);
        rc = image_encode_rgb_png(rgb, w, h, png, png_len, err);
    }
    free(gray);
    free(rgb);
    return rc;
}

int engine_similarity_overlays(engine *e, const engine_query *q, int64_t result_id, const engine_similarity_map *m,
                               int longest_side, uint8_t **query_png, size_t *query_len, uint8_t **result_png,
                               size_t *result_len, ms_err *err)
{
    *query_png = *result_png = NULL;
    *query_len = *result_len = 0;
    uint8_t *stored, *result = NULL;
    size_t len, rlen = 0;
    const uint8_t *bytes;
    int rc = query_bytes(e, q, &bytes, &len, &stored, err);
    if (rc == 0)
        rc = side_overlay(e, bytes, len, m->region_used ? &m->region : NULL, m->query_cells, m, longest_side,
                          query_png, query_len, err);
    if (rc == 0 && (rc = engine_read_stored(e, result_id, &result, &rlen, err)) == 0)
        rc = side_overlay(e, result, rlen, NULL, m->result_cells, m, longest_side, result_png, result_len, err);
    free(stored);
    free(result);
    if (rc) {
        free(*query_png);
        free(*result_png);
        *query_png = *result_png = NULL;
        *query_len = *result_len = 0;
    }
    return rc;
}
