/*
 * copies.c - the stored images that are copies of one stored image: the
 * test `medsearch duplicates` applies to a whole collection, for one image
 * (the API's GET /api/images/{id}/copies, the viewer's "Copies" line).
 *
 * A copy (the same radiograph re-encoded, resized or windowed differently)
 * is always among an image's nearest by the stored vectors, but the
 * vectors' score cannot tell it from a look-alike; the rank correlation of
 * the two pictures' fingerprints (image.h) can. So: the k nearest by the
 * index, then their fingerprints against the image's.
 */
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"

int engine_fingerprint_stored(engine *e, store *s, int64_t id, uint8_t out[IMAGE_FINGERPRINT_SIZE], ms_err *err)
{
    uint8_t *bytes = NULL;
    size_t len = 0;
    char mime[32];
    int rc = store_get_thumbnail(s, id, &bytes, &len, mime, err);
    if (rc == 0)
        rc = image_fingerprint(bytes, len, &e->opt.limits, out, err);
    free(bytes);
    if (rc) { /* no thumbnail, or one it cannot read: the image itself */
        bytes = NULL;
        rc = store_get_image(s, id, &bytes, &len, mime, err);
        if (rc == 0)
            rc = image_fingerprint(bytes, len, &e->opt.limits, out, err);
        free(bytes);
    }
    return rc ? ms_err_prefix(err, "image %lld: ", (long long)id) : 0;
}

void engine_copies_free(engine_copy *c, int n)
{
    for (int i = 0; c && i < n; i++)
        store_meta_free(&c[i].meta);
    free(c);
}

static int by_correlation(const void *x, const void *y)
{
    const engine_copy *a = x, *b = y;
    if (a->correlation != b->correlation)
        return a->correlation < b->correlation ? 1 : -1;
    return (a->id > b->id) - (a->id < b->id);
}

/* Keeps the results whose fingerprint correlates with fp at min or above,
 * moving their metadata into *copies. */
static int keep_copies(engine *e, store *s, const uint8_t *fp, engine_result *res, int n, double min,
                       engine_copy *copies, int *kept, ms_err *err)
{
    uint8_t other[IMAGE_FINGERPRINT_SIZE];
    *kept = 0;
    for (int i = 0; i < n; i++) {
        int rc = engine_fingerprint_stored(e, s, res[i].id, other, err);
        if (rc == MS_ENOTFOUND) /* deleted since the search */
            continue;
        if (rc)
            return rc;
        double c = image_fingerprint_correlation(fp, other);
        if (c < min)
            continue;
        copies[*kept] = (engine_copy){res[i].id, res[i].score, c, res[i].meta};
        memset(&res[i].meta, 0, sizeof res[i].meta); /* moved */
        (*kept)++;
    }
    return 0;
}

int engine_find_copies(engine *e, int64_t id, int k, double min_correlation, engine_copy **copies, int *n,
                       ms_err *err)
{
    *copies = NULL;
    *n = 0;
    if (k < 1 || k > ENGINE_COPIES_MAX_CANDIDATES)
        return ms_err_set(err, MS_EINVAL, "candidates must be 1..%d, got %d", ENGINE_COPIES_MAX_CANDIDATES, k);
    if (!(min_correlation > -1 && min_correlation <= 1))
        return ms_err_set(err, MS_EINVAL, "the correlation must be above -1 and at most 1");
    engine_query q = {.by_id = id, .k = k, .qe = 0, .exclude_self = 1};
    engine_result *res = NULL;
    int got = 0;
    int rc = engine_search(e, &q, &res, &got, NULL, err);
    if (rc)
        return rc;
    engine_copy *out = calloc((size_t)got + 1, sizeof *out);
    store *s = NULL;
    uint8_t fp[IMAGE_FINGERPRINT_SIZE];
    int kept = 0;
    if (!out)
        rc = ms_err_set(err, MS_ENOMEM, "no memory for %d copies", got);
    else if ((rc = engine_store_acquire(e, &s, err)) == 0) {
        rc = engine_fingerprint_stored(e, s, id, fp, err);
        if (rc == 0)
            rc = keep_copies(e, s, fp, res, got, min_correlation, out, &kept, err);
        engine_store_release(e, s);
    }
    engine_results_free(res, got);
    if (rc) {
        engine_copies_free(out, kept);
        return rc;
    }
    qsort(out, (size_t)kept, sizeof *out, by_correlation);
    *copies = out;
    *n = kept;
    return 0;
}
