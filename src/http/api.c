/*
 * api.c - the JSON API: each route turns a parsed request into engine or
 * store calls and a reply. Nothing here knows about sockets; server.c does.
 *
 * Parameters are parsed strictly (an integer is all digits and in range,
 * a boolean is 1/0/true/false/yes/no/on/off) and a bad one is answered
 * with 400, or 422 when it is part of a metadata filter. Every value that
 * reaches the store goes there as a bound parameter.
 */
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/http_internal.h"
#include "util/idlist.h"
#include "util/timing.h"
#include "util/text.h"

#define MAX_K 1000
#define MAX_LIST 32          /* labels or views in one filter parameter */
#define MAX_TEXT 256         /* longest label, view, patient id */

/* ---- strict parsing ---- */

/* An integer in [min, max] written in plain decimal (optional '-'). */
static int parse_int(const char *s, long min, long max, long *out)
{
    if (!s || !*s || isspace((unsigned char)*s))
        return -1;
    errno = 0;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off", ""};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        if (!strcasecmp(s, yes[i]))
            return *out = 1, 0;
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        if (!strcasecmp(s, no[i]))
            return *out = 0, 0;
    return -1;
}

int http_text_ok(const char *s, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++)
        if ((unsigned char)s[n] < 0x20 || s[n] == 0x7f)
            return 0;
    return n > 0 && n <= max;
}

static int parse_sex(const char *s, char *out)
{
    if (!strcasecmp(s, "M") || !strcasecmp(s, "male"))
        return *out = 'M', 0;
    if (!strcasecmp(s, "F") || !strcasecmp(s, "female"))
        return *out = 'F', 0;
    if (!*s || !strcasecmp(s, "any"))
        return *out = 0, 0;
    return -1;
}

/* Splits "A|B,C" into a malloc'd array of malloc'd strings appended to
 * *list (store_filter_free releases them). Empty pieces are skipped. */
static int split_list(const char *s, char ***list, int *n, const char *what, ms_err *err)
{
    const char *p = s;
    while (*p) {
        size_t len = strcspn(p, "|,");
        if (len) {
            if (*n >= MAX_LIST)
                return ms_err_set(err, MS_EINVAL, "too many %s values (at most %d)", what,
                                  MAX_LIST);
            char *item = strndup(p, len);
            if (!item)
                return ms_err_set(err, MS_ENOMEM, "out of memory");
            if (!http_text_ok(item, MAX_TEXT)) {
                free(item);
                return ms_err_set(err, MS_EINVAL, "%s value is empty, too long or has "
                                  "control characters", what);
            }
            char **grown = realloc(*list, (size_t)(*n + 1) * sizeof *grown);
            if (!grown) {
                free(item);
                return ms_err_set(err, MS_ENOMEM, "out of memory");
            }
            grown[(*n)++] = item;
            *list = grown;
        }
        p += len;
        if (*p)
            p++;
    }
    return 0;
}

/* A filter field set by filter= and again by its own parameter. */
static int given_twice(const char *key, ms_err *err)
{
    return ms_err_set(err, MS_EINVAL, "%s is given twice (in filter= and as a parameter)", key);
}

static int set_string(char **dst, const char *value, const char *what, ms_err *err)
{
    if (*dst)
        return given_twice(what, err);
    if (!http_text_ok(value, MAX_TEXT))
        return ms_err_set(err, MS_EINVAL, "%s is empty, too long or has control characters",
                          what);
    *dst = strdup(value);
    return *dst ? 0 : ms_err_set(err, MS_ENOMEM, "out of memory");
}

/* An any-of list (labels, view) given both in filter= and as a parameter is
 * refused: the filter holds one any-of set per field. An all-of list
 * (labels_all) adds to the filter's: every label of both is required (the
 * store folds duplicates). */
static int add_list(const http_request *r, const char *key, int all_of, char ***list, int *n,
                    ms_err *err)
{
    const char *v = req_param(r, key);
    if (!v || !v[strspn(v, "|,")])
        return 0; /* empty: no constraint */
    if (*n && !all_of)
        return given_twice(key, err);
    return split_list(v, list, n, key, err);
}

static int add_age(const http_request *r, const char *key, int *dst, ms_err *err)
{
    const char *v = req_param(r, key);
    long age;
    if (!v || !*v)
        return 0;
    if (*dst >= 0)
        return given_twice(key, err);
    if (parse_int(v, 0, 200, &age))
        return ms_err_set(err, MS_EINVAL, "%s must be a whole number of years from 0 to 200",
                          key);
    *dst = (int)age;
    return 0;
}

/* The filter of a request: the CLI's expression in filter= plus the
 * separate parameters. Returns 1 when a filter was given, 0 when none, or
 * a negative code (the message names the bad part). */
static int build_filter(const http_request *r, store_filter *f, ms_err *err)
{
    static const char *const keys[] = {"filter", "labels", "labels_all", "sex", "age_min",
                                       "age_max", "view", "patient", "exclude_patient"};
    int any = 0;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *v = req_param(r, keys[i]);
        any |= v && *v;
    }
    store_filter_init(f);
    if (!any)
        return 0;
    const char *expr = req_param(r, "filter");
    if (expr && *expr) {
        if (!http_text_ok(expr, HTTP_MAX_FIELD))
            return ms_err_set(err, MS_EINVAL, "filter has control characters");
        int rc = store_filter_parse(expr, f, err);
        if (rc)
            return rc;
    }
    int rc = add_list(r, "labels", 0, &f->labels_any, &f->n_labels_any, err);
    if (!rc)
        rc = add_list(r, "labels_all", 1, &f->labels_all, &f->n_labels_all, err);
    if (!rc)
        rc = add_list(r, "view", 0, &f->views, &f->n_views, err);
    char sex = 0;
    if (!rc && req_param(r, "sex") && parse_sex(req_param(r, "sex"), &sex))
        rc = ms_err_set(err, MS_EINVAL, "sex must be M or F, got '%.40s'", req_param(r, "sex"));
    if (!rc && sex && f->sex)   /* "" and "any" ask for nothing, so cannot clash */
        rc = given_twice("sex", err);
    if (!rc && sex)
        f->sex = sex;
    if (!rc)
        rc = add_age(r, "age_min", &f->age_min, err);
    if (!rc)
        rc = add_age(r, "age_max", &f->age_max, err);
    if (!rc && f->age_min >= 0 && f->age_max >= 0 && f->age_min > f->age_max)
        rc = ms_err_set(err, MS_EINVAL, "age_min %d is above age_max %d", f->age_min,
                        f->age_max);
    if (!rc && req_param(r, "patient") && *req_param(r, "patient"))
        rc = set_string(&f->patient_id, req_param(r, "patient"), "patient", err);
    if (!rc && req_param(r, "exclude_patient") && *req_param(r, "exclude_patient"))
        rc = set_string(&f->exclude_patient, req_param(r, "exclude_patient"),
                        "exclude_patient", err);
    return rc ? rc : 1;
}

/* ---- JSON of stored things ---- */

static json_t *str_or_null(const char *s)
{
    return json_text(s);
}

void api_meta_to_json(const store_meta *m, json_t *o)
{
    json_t *labels = json_array();
    for (int i = 0; i < m->n_labels; i++)
        json_array_append_new(labels, json_text(m->labels[i]));
    char sex[2] = {m->sex, 0};
    json_object_set_new(o, "patient_id", str_or_null(m->patient_id));
    json_object_set_new(o, "age", m->age >= 0 ? json_integer(m->age) : json_null());
    json_object_set_new(o, "sex", m->sex ? json_string(sex) : json_null());
    json_object_set_new(o, "view", str_or_null(m->view));
    json_object_set_new(o, "labels", labels);
    json_object_set_new(o, "study_date", str_or_null(m->study_date));
    json_object_set_new(o, "original_name", str_or_null(m->original_name));
    if (m->n_kv) {
        json_t *kv = json_object();
        for (int i = 0; i < m->n_kv; i++) {
            json_t *key = m->kv[i].key ? json_text(m->kv[i].key) : NULL;
            if (key && json_string_value(key))
                json_object_set_new(kv, json_string_value(key), str_or_null(m->kv[i].value));
            json_decref(key);
        }
        json_object_set_new(o, "extra", kv);
    }
}

static json_t *result_to_json(const engine_result *res, int rank)
{
    char url[64];
    json_t *o = json_object();
    json_object_set_new(o, "rank", json_integer(rank));
    json_object_set_new(o, "id", json_integer(res->id));
    json_object_set_new(o, "score", json_real(res->score));
    api_meta_to_json(&res->meta, o);
    snprintf(url, sizeof url, "/api/images/%lld", (long long)res->id);
    json_object_set_new(o, "image_url", json_string(url));
    snprintf(url, sizeof url, "/api/images/%lld/thumbnail", (long long)res->id);
    json_object_set_new(o, "thumbnail_url", json_string(url));
    return o;
}

static json_t *timing_to_json(const engine_timing *t, double server_ms)
{
    return json_pack("{s:f,s:f,s:f,s:f,s:f,s:f}", "decode", t->decode_ms, "embed", t->embed_ms,
                     "index", t->index_ms, "store", t->store_ms, "engine", t->total_ms,
                     "server", server_ms);
}

/* ---- search and similar ---- */

/* Where a request's relevance feedback lists live while it is searched. */
typedef struct feedback_ids {
    int64_t like[ENGINE_FEEDBACK_MAX], unlike[ENGINE_FEEDBACK_MAX];
} feedback_ids;

/* like= and unlike=: comma-separated ids into fb, which q then points to. */
static int feedback_params(const http_request *r, engine_query *q, feedback_ids *fb, ms_err *err)
{
    const char *s;
    if ((s = req_param(r, "like")) && ms_id_list_parse(s, fb->like, ENGINE_FEEDBACK_MAX, &q->n_like, err))
        return ms_err_prefix(err, "like: ");
    if ((s = req_param(r, "unlike")) && ms_id_list_parse(s, fb->unlike, ENGINE_FEEDBACK_MAX, &q->n_unlike, err))
        return ms_err_prefix(err, "unlike: ");
    q->like = fb->like;
    q->unlike = fb->unlike;
    return 0;
}

/* Fills the parts of an engine_query that come from parameters; a region
 * is read into *region and feedback lists into *fb, which q then points
 * to. */
static int query_params(const api_ctx *c, const http_request *r, engine_query *q, image_region *region,
                        feedback_ids *fb, ms_err *err)
{
    long v;
    const char *s;
    q->k = c->opt->default_k;
    if ((s = req_param(r, "k")) && *s) {
        if (parse_int(s, 1, MAX_K, &v))
            return ms_err_set(err, MS_EINVAL, "k must be a whole number from 1 to %d, got "
                              "'%.40s'", MAX_K, s);
        q->k = (int)v;
    }
    q->qe = ENGINE_QE_COLLECTION;
    if ((s = req_param(r, "qe")) && *s) {
        if (parse_int(s, 0, STORE_SEARCH_QE_MAX, &v))
            return ms_err_set(err, MS_EINVAL, "qe must be a whole number from 0 (off) to 100");
        q->qe = (int)v;
    }
    if ((s = req_param(r, "ef")) && *s) {
        if (parse_int(s, 0, 100000, &v))
            return ms_err_set(err, MS_EINVAL, "ef must be a whole number from 0 to 100000");
        q->ef = (int)v;
    }
    if ((s = req_param(r, "one_per_patient")) && parse_bool(s, &q->one_per_patient))
        return ms_err_set(err, MS_EINVAL, "one_per_patient must be true or false");
    if ((s = req_param(r, "region")) && *s) {
        if (image_region_parse(s, region, err))
            return MS_EINVAL;
        q->region = region;
    }
    return feedback_params(r, q, fb, err);
}

static json_t *ids_to_json(const int64_t *ids, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

static json_t *rect_to_json(const image_rect *rect)
{
    return json_pack("{s:i,s:i,s:i,s:i}", "x", rect->x, "y", rect->y, "width", rect->width, "height",
                     rect->height);
}

static void run_search(api_ctx *c, const http_request *r, http_reply *rep, engine_query *q)
{
    uint64_t t0 = ms_now_ns();
    ms_err err = {0};
    image_region region;
    image_rect used = {0};
    feedback_ids fb;
    q->region_used = &used;
    if (query_params(c, r, q, &region, &fb, &err)) {
        reply_error(rep, 400, "invalid_argument", "%s", err.msg);
        return;
    }
    store_filter filter;
    int has = build_filter(r, &filter, &err);
    if (has < 0) {
        store_filter_free(&filter);
        if (has == MS_ENOMEM)
            reply_ms_err(rep, &err);
        else
            reply_error(rep, 422, "bad_filter", "%s", err.msg);
        return;
    }
    q->filter = has ? &filter : NULL;
    engine_result *res = NULL;
    engine_timing t = {0};
    int n = 0;
    int rc = engine_search(c->eng, q, &res, &n, &t, &err);
    store_filter_free(&filter);
    if (rc) {
        reply_ms_err(rep, &err);
        return;
    }
    metrics_engine(c->met, &t);
    json_t *list = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(list, result_to_json(&res[i], i + 1));
    engine_results_free(res, n);
    json_t *doc = json_object();
    json_object_set_new(doc, "k", json_integer(q->k));
    json_object_set_new(doc, "qe", json_integer(engine_resolve_qe(c->eng, q->qe)));
    if (q->by_id)
        json_object_set_new(doc, "query_id", json_integer(q->by_id));
    if (q->region)
        json_object_set_new(doc, "region", rect_to_json(&used));
    if (q->n_like + q->n_unlike > 0)
        json_object_set_new(doc, "feedback", json_pack("{s:o, s:o}", "like", ids_to_json(q->like, q->n_like),
                                                       "unlike", ids_to_json(q->unlike, q->n_unlike)));
    json_object_set_new(doc, "count", json_integer(n));
    json_object_set_new(doc, "results", list);
    json_object_set_new(doc, "timing_ms", timing_to_json(&t, ms_elapsed_ms(t0)));
    reply_json(rep, 200, doc);
}

/* The request's image, or a 400 saying how to send one; 0 when there is none. */
static int has_image(const http_request *r, http_reply *rep)
{
    if (r->body_is_image && r->body.len)
        return 1;
    reply_error(rep, 400, "bad_request", "no image: send it as the multipart field 'image' "
                "or as a raw image/* (PNG, JPEG, JPEG 2000, TIFF, WebP, HEIC, AVIF, GIF), application/dicom or "
                    "application/octet-stream body");
    return 0;
}

static void handle_search(api_ctx *c, const http_request *r, http_reply *rep)
{
    if (!has_image(r, rep))
        return;
    engine_query q = {0};
    q.bytes = r->body.data;
    q.len = r->body.len;
    run_search(c, r, rep, &q);
}

/* A correlation in (-1, 1] written as a plain decimal number. */
static int parse_correlation(const char *s, double *out)
{
    if (!s || !*s || strlen(s) > 20 || strspn(s, "-0123456789.") != strlen(s))
        return -1;
    char *end = NULL;
    double v = strtod(s, &end);
    if (*end || !(v > -1 && v <= 1))
        return -1;
    *out = v;
    return 0;
}

/* The copies of a stored image (engine_find_copies): the same picture
 * stored again, re-encoded, resized or windowed differently. */
static void handle_copies(api_ctx *c, const http_request *r, http_reply *rep)
{
    long k = ENGINE_COPIES_CANDIDATES;
    double min = ENGINE_COPIES_MIN_CORRELATION;
    const char *s;
    if ((s = req_param(r, "k")) && parse_int(s, 1, ENGINE_COPIES_MAX_CANDIDATES, &k)) {
        reply_error(rep, 400, "invalid_argument", "k must be a whole number from 1 to %d",
                    ENGINE_COPIES_MAX_CANDIDATES);
        return;
    }
    if ((s = req_param(r, "min_correlation")) && parse_correlation(s, &min)) {
        reply_error(rep, 400, "invalid_argument", "min_correlation must be a number above -1 and at most 1");
        return;
    }
    engine_copy *copies = NULL;
    int n = 0;
    ms_err err = {0};
    if (engine_find_copies(c->eng, r->match.id, (int)k, min, &copies, &n, &err)) {
        reply_ms_err(rep, &err);
        return;
    }
    json_t *list = json_array();
    for (int i = 0; i < n; i++) {
        engine_result as_result = {copies[i].id, copies[i].score, copies[i].meta};
        json_t *o = result_to_json(&as_result, i + 1);
        json_object_set_new(o, "correlation", json_real(copies[i].correlation));
        json_array_append_new(list, o);
    }
    engine_copies_free(copies, n);
    reply_json(rep, 200, json_pack("{s:I, s:i, s:f, s:i, s:o}", "id", (json_int_t)r->match.id, "k", (int)k,
                                   "min_correlation", min, "count", n, "copies", list));
}

static void handle_similar(api_ctx *c, const http_request *r, http_reply *rep)
{
    engine_query q = {0};
    int include_self = 0;
    const char *s = req_param(r, "include_self");
    if (s && parse_bool(s, &include_self)) {
        reply_error(rep, 400, "invalid_argument", "include_self must be true or false");
        return;
    }
    q.by_id = r->match.id;
    q.exclude_self = !include_self;
    run_search(c, r, rep, &q);
}

/* GET /api/similar?like=...: the images marked like (moved away from those
 * marked unlike) are the query, without an image of its own. */
static void handle_similar_marked(api_ctx *c, const http_request *r, http_reply *rep)
{
    const char *s = req_param(r, "like");
    if (!s || strspn(s, " \t") == strlen(s)) {
        reply_error(rep, 400, "invalid_argument", "like must name the stored images to search with (ids, 12,17)");
        return;
    }
    if ((s = req_param(r, "region")) && *s) {
        reply_error(rep, 400, "invalid_argument", "region needs a query image: not with the marked images alone");
        return;
    }
    engine_query q = {0};
    run_search(c, r, rep, &q);
}

/* ---- similarity maps: where a query and a result are alike ---- */

static json_t *cells_to_json(const float *cells, int w, int h)
{
    json_t *rows = json_array();
    for (int y = 0; y < h; y++) {
        json_t *row = json_array();
        for (int x = 0; x < w; x++)
            json_array_append_new(row, json_real(cells[y * w + x]));
        json_array_append_new(rows, row);
    }
    return rows;
}

/* POST /api/similarity-map (the query image in the body) and GET
 * /api/images/{id}/similarity-map (a stored query): with=ID names the
 * result, region= the query's part as search takes it. */
static void handle_similarity_map(api_ctx *c, const http_request *r, http_reply *rep)
{
    uint64_t t0 = ms_now_ns();
    engine_query q = {0};
    if (r->match.route == ROUTE_MAP) {
        if (!has_image(r, rep))
            return;
        q.bytes = r->body.data;
        q.len = r->body.len;
    } else {
        q.by_id = r->match.id;
    }
    long with;
    const char *s = req_param(r, "with");
    if (!s || parse_int(s, 1, INT64_MAX, &with)) {
        reply_error(rep, 400, "invalid_argument", "with must name the stored image to compare with (an id)");
        return;
    }
    ms_err err = {0};
    image_region region;
    image_rect used = {0};
    if ((s = req_param(r, "region")) && *s) {
        if (image_region_parse(s, &region, &err)) {
            reply_error(rep, 400, "invalid_argument", "%s", err.msg);
            return;
        }
        q.region = &region;
        q.region_used = &used;
    }
    int gw, gh;
    model *m = engine_model(c->eng);
    if (m && model_feature_grid(m, &gh, &gw, &err)) {
        reply_error(rep, 409, "unsupported_model", "%s", err.msg);
        return;
    }
    engine_similarity_map map;
    if (engine_map_similarity(c->eng, &q, with, &map, &err)) {
        reply_ms_err(rep, &err);
        return;
    }
    json_t *doc = json_pack("{s:I, s:f, s:s, s:{s:i, s:i}, s:o, s:o}", "with", (json_int_t)with, "similarity",
                            map.similarity, "similarity_kind", map.centred ? "centred cosine" : "cosine", "grid",
                            "width", map.grid_w, "height", map.grid_h, "query_cells",
                            cells_to_json(map.query_cells, map.grid_w, map.grid_h), "result_cells",
                            cells_to_json(map.result_cells, map.grid_w, map.grid_h));
    engine_similarity_map_free(&map);
    if (q.by_id)
        json_object_set_new(doc, "query_id", json_integer(q.by_id));
    if (q.region)
        json_object_set_new(doc, "region", rect_to_json(&used));
    json_object_set_new(doc, "timing_ms", json_pack("{s:f}", "server", ms_elapsed_ms(t0)));
    reply_json(rep, 200, doc);
}

/* ---- previews: what MedSearch sees, for pages that cannot show the file ---- */

#define PREVIEW_DEFAULT_SIDE 1024
#define PREVIEW_MAX_SIDE 4096

static void handle_preview(api_ctx *c, const http_request *r, http_reply *rep)
{
    long side = PREVIEW_DEFAULT_SIDE;
    const char *s = req_param(r, "size");
    if (s && parse_int(s, 16, PREVIEW_MAX_SIDE, &side)) {
        reply_error(rep, 400, "invalid_argument", "size must be an integer in 16..%d", PREVIEW_MAX_SIDE);
        return;
    }
    if (r->match.route == ROUTE_PREVIEW && !has_image(r, rep))
        return;
    uint8_t *png = NULL;
    size_t len = 0;
    ms_err err = {0};
    int rc = r->match.route == ROUTE_PREVIEW
                 ? engine_preview(c->eng, r->body.data, r->body.len, (int)side, &png, &len, &err)
                 : engine_preview_stored(c->eng, r->match.id, (int)side, &png, &len, &err);
    if (rc) {
        reply_ms_err(rep, &err);
        return;
    }
    reply_bytes(rep, 200, "image/png", (char *)png, len);
    snprintf(rep->cache, sizeof rep->cache, "no-store"); /* a patient image, made on demand */
}

/* ---- stored images ---- */

static int etag_matches(const char *if_none_match, const char *etag)
{
    if (!if_none_match[0])
        return 0;
    if (!strcmp(if_none_match, "*"))
        return 1;
    /* A list of tags, possibly weak (W/"..."): any equal one matches. */
    const char *p = if_none_match;
    size_t elen = strlen(etag);
    while ((p = strstr(p, etag))) {
        char after = p[elen];
        if (after == '\0' || after == ',' || after == ' ')
            return 1;
        p += elen;
    }
    return 0;
}

static store *borrow(api_ctx *c, http_reply *rep)
{
    ms_err err = {0};
    store *s = NULL;
    if (engine_store_acquire(c->eng, &s, &err)) {
        reply_ms_err(rep, &err);
        return NULL;
    }
    return s;
}

static void handle_image_bytes(api_ctx *c, const http_request *r, http_reply *rep, int thumb)
{
    store *s = borrow(c, rep);
    if (!s)
        return;
    ms_err err = {0};
    store_image_info info;
    if (store_get_info(s, r->match.id, &info, &err)) {
        engine_store_release(c->eng, s);
        reply_ms_err(rep, &err);
        return;
    }
    char etag[80];
    snprintf(etag, sizeof etag, thumb ? "\"%.64s-t\"" : "\"%.64s\"", info.sha256);
    if (etag_matches(r->if_none_match, etag)) {
        engine_store_release(c->eng, s);
        reply_free(rep);
        rep->status = 304;
        snprintf(rep->etag, sizeof rep->etag, "%s", etag);
        snprintf(rep->cache, sizeof rep->cache, "private, max-age=3600");
        return;
    }
    uint8_t *bytes = NULL;
    size_t len = 0;
    char mime[32] = "";
    int rc = thumb ? store_get_thumbnail(s, r->match.id, &bytes, &len, mime, &err)
                   : store_get_image(s, r->match.id, &bytes, &len, mime, &err);
    engine_store_release(c->eng, s);
    if (rc) {
        reply_ms_err(rep, &err);
        return;
    }
    reply_bytes(rep, 200, mime[0] ? mime : "application/octet-stream", (char *)bytes, len);
    snprintf(rep->etag, sizeof rep->etag, "%s", etag);
    /* Private: these are patient images; revalidation is cheap (304). */
    snprintf(rep->cache, sizeof rep->cache, "private, max-age=3600");
}

/* The metadata document of image id, with its ETag; 304 when if_none_match
 * (may be NULL) names that ETag. */
static void metadata_reply(api_ctx *c, int64_t id, const char *if_none_match, http_reply *rep)
{
    store *s = borrow(c, rep);
    if (!s)
        return;
    ms_err err = {0};
    store_image_info info;
    store_meta meta;
    store_meta_init(&meta);
    int rc = store_get_info(s, id, &info, &err);
    if (!rc)
        rc = store_get_meta(s, id, &meta, &err);
    engine_store_release(c->eng, s);
    if (rc) {
        store_meta_free(&meta);
        reply_ms_err(rep, &err);
        return;
    }
    char etag[48];
    api_meta_etag(&meta, etag);
    if (if_none_match && etag_matches(if_none_match, etag)) {
        store_meta_free(&meta);
        reply_free(rep);
        rep->status = 304;
        snprintf(rep->etag, sizeof rep->etag, "%s", etag);
        return;
    }
    char url[64];
    json_t *o = json_object();
    json_object_set_new(o, "id", json_integer(info.id));
    json_object_set_new(o, "sha256", json_string(info.sha256));
    json_object_set_new(o, "mime", json_string(info.mime));
    json_object_set_new(o, "width", json_integer(info.width));
    json_object_set_new(o, "height", json_integer(info.height));
    json_object_set_new(o, "bytes", json_integer((json_int_t)info.bytes));
    json_object_set_new(o, "created", json_integer(info.created));
    api_meta_to_json(&meta, o);
    store_meta_free(&meta);
    snprintf(url, sizeof url, "/api/images/%lld", (long long)info.id);
    json_object_set_new(o, "image_url", json_string(url));
    snprintf(url, sizeof url, "/api/images/%lld/thumbnail", (long long)info.id);
    json_object_set_new(o, "thumbnail_url", json_string(url));
    reply_json(rep, 200, o);
    snprintf(rep->etag, sizeof rep->etag, "%s", etag);
}

void api_metadata_reply(api_ctx *c, int64_t id, http_reply *rep)
{
    metadata_reply(c, id, NULL, rep);
}

static void handle_delete(api_ctx *c, const http_request *r, http_reply *rep)
{
    ms_err err = {0};
    if (engine_delete(c->eng, r->match.id, &err)) {
        reply_ms_err(rep, &err);
        return;
    }
    reply_json(rep, 200, json_pack("{s:I,s:b}", "id", (json_int_t)r->match.id, "deleted", 1));
}

/* ---- ingest ---- */

/* The free key/values of an ingest: fields named "meta.KEY" (from the form,
 * then from the query string for names the form does not have). KEY is 1 to
 * 64 characters, a value at most STORE_MAX_TEXT bytes (it may be empty),
 * neither with control characters, and at most max of them: anything else
 * is refused, never dropped in silence. Returns the count, or -1 with err
 * set. */
static int collect_kv(const http_request *r, store_kv *kv, int max, ms_err *err)
{
    const kv_list *lists[2] = {&r->form, &r->args};
    int n = 0;
    for (int l = 0; l < 2; l++)
        for (int i = 0; i < lists[l]->n; i++) {
            const char *k = lists[l]->items[i].key, *v = lists[l]->items[i].value;
            if (strncmp(k, "meta.", 5) || (l == 1 && kv_get(&r->form, k)))
                continue;
            if (!http_text_ok(k + 5, 64))
                return ms_err_set(err, MS_EINVAL, "field '%.80s': a meta. name is 1 to 64 characters "
                                  "without control characters", k);
            if (*v && !http_text_ok(v, STORE_MAX_TEXT))
                return ms_err_set(err, MS_EINVAL, "%s is longer than %d bytes or has control characters", k,
                                  STORE_MAX_TEXT);
            if (n == max)
                return ms_err_set(err, MS_EINVAL, "more than %d meta. fields", max);
            kv[n].key = (char *)k + 5;
            kv[n].value = (char *)v;
            n++;
        }
    return n;
}

/* A name safe to keep: the base name of what the client sent, without
 * control characters, as well-formed UTF-8 (a client may send its file
 * system's Latin-1: each byte that is not UTF-8 becomes U+FFFD rather than
 * failing the upload), cut to cap - 1 bytes between characters. It is only
 * ever stored as text, never used as a path. */
static void clean_name(const char *in, char *out, size_t cap)
{
    const char *base = in;
    for (const char *p = in; *p; p++)
        if (*p == '/' || *p == '\\')
            base = p + 1;
    char *kept = malloc(strlen(base) + 1);
    size_t n = 0;
    if (!kept) {
        out[0] = '\0';
        return;
    }
    for (; *base; base++)
        if ((unsigned char)*base >= 0x20 && *base != 0x7f)
            kept[n++] = *base;
    kept[n] = '\0';
    ms_utf8_repair(out, cap, kept);
    free(kept);
}

static int ingest_meta(const http_request *r, store_meta *m, store_kv *kv, int max_kv,
                       char *name, size_t name_cap, ms_err *err)
{
    static const struct {
        const char *key;
        size_t off;
    } texts[] = {
        {"patient_id", offsetof(store_meta, patient_id)},
        {"study_date", offsetof(store_meta, study_date)},
        {"view", offsetof(store_meta, view)},
    };
    store_meta_init(m);
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        const char *v = req_param(r, texts[i].key);
        if (!v || !*v)
            continue;
        if (!http_text_ok(v, MAX_TEXT))
            return ms_err_set(err, MS_EINVAL, "%s is too long or has control characters",
                              texts[i].key);
        *(const char **)((char *)m + texts[i].off) = v;
    }
    const char *v = req_param(r, "age");
    long age;
    if (v && *v) {
        if (parse_int(v, 0, 200, &age))
            return ms_err_set(err, MS_EINVAL, "age must be a whole number of years from 0 to 200");
        m->age = (int)age;
    }
    if ((v = req_param(r, "sex")) && parse_sex(v, &m->sex))
        return ms_err_set(err, MS_EINVAL, "sex must be M or F");
    if ((v = req_param(r, "labels")) && *v) {
        int rc = split_list(v, &m->labels, &m->n_labels, "labels", err);
        if (rc)
            return rc;
    }
    v = req_param(r, "original_name");
    clean_name(v && *v ? v : r->upload_name, name, name_cap);
    m->original_name = name[0] ? name : NULL;
    m->kv = kv;
    if ((m->n_kv = collect_kv(r, kv, max_kv, err)) < 0) {
        m->n_kv = 0;
        return err->code;
    }
    return 0;
}

static void free_labels(store_meta *m)
{
    for (int i = 0; i < m->n_labels; i++)
        free(m->labels[i]);
    free(m->labels);
}

static void handle_ingest(api_ctx *c, const http_request *r, http_reply *rep)
{
    if (!r->body_is_image || !r->body.len) {
        reply_error(rep, 400, "bad_request", "no image: send it as the multipart field 'image' "
                    "or as a raw image/* (PNG, JPEG, JPEG 2000, TIFF, WebP, HEIC, AVIF, GIF), application/dicom or "
                    "application/octet-stream body");
        return;
    }
    store_meta meta;
    store_kv kv[32];
    char name[256];
    ms_err err = {0};
    if (ingest_meta(r, &meta, kv, 32, name, sizeof name, &err)) {
        free_labels(&meta);
        reply_error(rep, 400, "invalid_argument", "%s", err.msg);
        return;
    }
    int64_t id = 0;
    int was_new = 0;
    int rc = engine_ingest(c->eng, r->body.data, r->body.len, &meta, &id, &was_new, &err);
    free_labels(&meta);
    if (rc) {
        reply_ms_err(rep, &err);
        return;
    }
    char url[64];
    snprintf(url, sizeof url, "/api/images/%lld", (long long)id);
    reply_json(rep, was_new ? 201 : 200,
               json_pack("{s:I,s:b,s:s}", "id", (json_int_t)id, "created", was_new, "url", url));
}

/* ---- service routes ---- */

static void handle_stats(api_ctx *c, http_reply *rep)
{
    engine_stats st;
    memset(&st, 0, sizeof st);
    if (engine_get_stats(c->eng, &st)) {
        reply_error(rep, 500, "internal_error", "engine statistics unavailable");
        return;
    }
    json_t *server = json_pack(
        "{s:f,s:I,s:I,s:i,s:i,s:I,s:b,s:b}", "uptime_s", ms_elapsed_ms(c->started_ns) / 1000.0,
        "in_flight", (json_int_t)c->in_flight(c->srv), "upload_bytes",
        (json_int_t)c->upload_bytes(c->srv), "threads", (int)c->opt->threads, "workers",
        (int)c->opt->workers, "max_upload", (json_int_t)c->opt->max_upload, "writes_enabled",
        c->opt->token != NULL, "reads_need_token", c->opt->read_token);
    json_t *doc = json_pack(
        "{s:I,s:i,s:s,s:{s:s,s:I},s:s,s:I,s:I,s:I,s:f,s:f,s:o}", "images", (json_int_t)st.images,
        "dim", st.dim, "model", st.model_identity, "index", "kind", st.index_kind, "bytes",
        (json_int_t)st.index_bytes, "backend", st.backend, "queue_depth",
        (json_int_t)st.queue_depth, "searches", (json_int_t)st.searches, "ingests",
        (json_int_t)st.ingests, "embed_ms_total", st.embed_ms_total, "search_ms_total",
        st.search_ms_total, "server", server);
    /* How scores are made: centred cosine or plain (docs/evaluation.md). */
    if (doc)
        json_object_set_new(doc, "center",
                            json_pack("{s:s,s:b,s:I,s:s}", "policy", st.center_policy_off ? "off" : "auto",
                                      "centered", st.center_from > 0, "from", (json_int_t)st.center_from, "tag",
                                      st.center_tag));
    /* The collection's defaults for a search that does not say. */
    if (doc)
        json_object_set_new(doc, "search", json_pack("{s:i}", "qe", st.search_qe));
    reply_json(rep, doc ? 200 : 500, doc);
}

static void handle_health(api_ctx *c, http_reply *rep)
{
    /* Open to everyone (load balancers): says nothing about the data, only
     * whether the server answers and what the page must ask the user for. */
    reply_json(rep, 200, json_pack("{s:s,s:{s:b,s:b}}", "status", "ok", "auth", "reads",
                                   c->opt->read_token, "writes", c->opt->token != NULL));
}

static void handle_metrics(api_ctx *c, http_reply *rep)
{
    engine_stats st;
    memset(&st, 0, sizeof st);
    engine_get_stats(c->eng, &st);
    metrics_gauges g = {
        .in_flight = c->in_flight(c->srv),
        .upload_bytes = c->upload_bytes(c->srv),
        .queue_depth = st.queue_depth,
        .images = st.images,
        .searches = st.searches,
        .ingests = st.ingests,
        .embed_ms_total = st.embed_ms_total,
        .search_ms_total = st.search_ms_total,
        .uptime_s = ms_elapsed_ms(c->started_ns) / 1000.0,
    };
    char *text = NULL;
    size_t len = 0;
    if (metrics_render(c->met, &g, &text, &len)) {
        reply_error(rep, 503, "out_of_memory", "out of memory rendering metrics");
        return;
    }
    reply_bytes(rep, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}

static void handle_asset(const http_request *r, http_reply *rep)
{
    asset_ref a;
    if (asset_find(r->path, &a)) {
        reply_error(rep, 404, "not_found", "no such page");
        return;
    }
    reply_free(rep);
    snprintf(rep->etag, sizeof rep->etag, "%s", a.etag);
    snprintf(rep->cache, sizeof rep->cache, "no-cache");
    rep->csp = 1;
    if (etag_matches(r->if_none_match, a.etag)) {
        rep->status = 304;
        return;
    }
    rep->status = 200;
    rep->body = (char *)a.data;
    rep->len = a.len;
    rep->body_static = 1;
    snprintf(rep->content_type, sizeof rep->content_type, "%s", a.mime);
}

void api_handle(api_ctx *c, const http_request *r, http_reply *rep)
{
    switch (r->match.route) {
    case ROUTE_SEARCH: handle_search(c, r, rep); break;
    case ROUTE_INGEST: handle_ingest(c, r, rep); break;
    case ROUTE_IMAGE:
        if (r->method == M_DELETE)
            handle_delete(c, r, rep);
        else
            handle_image_bytes(c, r, rep, 0);
        break;
    case ROUTE_THUMBNAIL: handle_image_bytes(c, r, rep, 1); break;
    case ROUTE_METADATA:
        if (r->method == M_PATCH)
            api_handle_metadata_patch(c, r, rep);
        else
            metadata_reply(c, r->match.id, r->if_none_match, rep);
        break;
    case ROUTE_SIMILAR: handle_similar(c, r, rep); break;
    case ROUTE_SIMILAR_MARKED: handle_similar_marked(c, r, rep); break;
    case ROUTE_COPIES: handle_copies(c, r, rep); break;
    case ROUTE_MAP:
    case ROUTE_IMAGE_MAP: handle_similarity_map(c, r, rep); break;
    case ROUTE_PREVIEW:
    case ROUTE_IMAGE_PREVIEW: handle_preview(c, r, rep); break;
    case ROUTE_STATS: handle_stats(c, rep); break;
    case ROUTE_HEALTH: handle_health(c, rep); break;
    case ROUTE_METRICS: handle_metrics(c, rep); break;
    case ROUTE_ASSET: handle_asset(r, rep); break;
    default: reply_error(rep, 404, "not_found", "no route %.200s", r->path); break;
    }
}
