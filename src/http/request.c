/*
 * request.c - the routing table, request parameters and reply helpers
 * shared by server.c and api.c.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_internal.h"
#include "util/idlist.h"

/* ---- routing ---- */

static const char *const route_names[ROUTE_COUNT] = {
    [ROUTE_SEARCH] = "search",       [ROUTE_INGEST] = "ingest",
    [ROUTE_IMAGE] = "image",         [ROUTE_THUMBNAIL] = "thumbnail",
    [ROUTE_METADATA] = "metadata",   [ROUTE_SIMILAR] = "similar",
    [ROUTE_PREVIEW] = "preview",     [ROUTE_IMAGE_PREVIEW] = "image_preview",
    [ROUTE_COPIES] = "copies",       [ROUTE_MAP] = "similarity_map",
    [ROUTE_IMAGE_MAP] = "image_similarity_map", [ROUTE_SIMILAR_MARKED] = "similar_marked",
    [ROUTE_STATS] = "stats",         [ROUTE_HEALTH] = "health",
    [ROUTE_METRICS] = "metrics",     [ROUTE_ASSET] = "asset",
    [ROUTE_NONE] = "none",
};

const char *route_name(route_id r)
{
    return (r >= 0 && r < ROUTE_COUNT) ? route_names[r] : "none";
}

static void allow_only(route_match *m, http_method got, const char *allow,
                       int get_ok, int post_ok, int delete_ok)
{
    m->allow = allow;
    m->method_ok = (get_ok && (got == M_GET || got == M_HEAD)) ||
                   (post_ok && got == M_POST) || (delete_ok && got == M_DELETE);
}

/* The route of a resource that PATCH also changes. */
static void allow_get_or_patch(route_match *m, http_method got)
{
    allow_only(m, got, "GET, HEAD, PATCH", 1, 0, 0);
    if (got == M_PATCH)
        m->method_ok = m->is_write = m->needs_worker = m->wants_body = 1;
}

/* The read-only routes under /api/images/{id}: GET and HEAD, and whether
 * they may wait on the model or the store (a worker thread). */
static const struct {
    const char *tail;
    route_id route;
    int needs_worker;
} image_reads[] = {
    {"/thumbnail", ROUTE_THUMBNAIL, 0},
    {"/similar", ROUTE_SIMILAR, 1},
    {"/preview", ROUTE_IMAGE_PREVIEW, 1},
    {"/copies", ROUTE_COPIES, 1},
    {"/similarity-map", ROUTE_IMAGE_MAP, 1},
};

static void match_image_route(http_method m, const char *rest, route_match *out)
{
    int64_t id = 0;
    size_t n = ms_id_parse(rest, &id);
    if (!n)
        return;
    const char *tail = rest + n;
    if (!*tail) {
        out->route = ROUTE_IMAGE;
        allow_only(out, m, "GET, HEAD, DELETE", 1, 0, 1);
        out->is_write = (m == M_DELETE);
        out->needs_worker = (m == M_DELETE);
        out->id = id;
        return;
    }
    if (!strcmp(tail, "/metadata")) {
        out->route = ROUTE_METADATA;
        allow_get_or_patch(out, m);
        out->id = id;
        return;
    }
    for (size_t i = 0; i < sizeof image_reads / sizeof *image_reads; i++)
        if (!strcmp(tail, image_reads[i].tail)) {
            out->route = image_reads[i].route;
            allow_only(out, m, "GET, HEAD", 1, 0, 0);
            out->needs_worker = image_reads[i].needs_worker;
            out->id = id;
            return;
        }
}

void route_find(http_method m, const char *path, route_match *out)
{
    memset(out, 0, sizeof *out);
    out->route = ROUTE_NONE;
    out->method_ok = 1;
    if (!strcmp(path, "/api/search")) {
        out->route = ROUTE_SEARCH;
        allow_only(out, m, "POST", 0, 1, 0);
        out->needs_worker = out->wants_body = 1;
    } else if (!strcmp(path, "/api/similarity-map")) {
        out->route = ROUTE_MAP;
        allow_only(out, m, "POST", 0, 1, 0);
        out->needs_worker = out->wants_body = 1;
    } else if (!strcmp(path, "/api/preview")) {
        out->route = ROUTE_PREVIEW;
        allow_only(out, m, "POST", 0, 1, 0);
        out->needs_worker = out->wants_body = 1;
    } else if (!strcmp(path, "/api/images")) {
        out->route = ROUTE_INGEST;
        allow_only(out, m, "POST", 0, 1, 0);
        out->needs_worker = out->wants_body = out->is_write = 1;
    } else if (!strncmp(path, "/api/images/", 12)) {
        match_image_route(m, path + 12, out);
    } else if (!strcmp(path, "/api/similar")) {
        out->route = ROUTE_SIMILAR_MARKED;
        allow_only(out, m, "GET, HEAD", 1, 0, 0);
        out->needs_worker = 1;
    } else if (!strcmp(path, "/api/stats")) {
        out->route = ROUTE_STATS;
        allow_only(out, m, "GET, HEAD", 1, 0, 0);
    } else if (!strcmp(path, "/api/health")) {
        out->route = ROUTE_HEALTH;
        allow_only(out, m, "GET, HEAD", 1, 0, 0);
    } else if (!strcmp(path, "/metrics")) {
        out->route = ROUTE_METRICS;
        allow_only(out, m, "GET, HEAD", 1, 0, 0);
    } else {
        asset_ref a;
        if (asset_find(path, &a) == 0) {
            out->route = ROUTE_ASSET;
            allow_only(out, m, "GET, HEAD", 1, 0, 0);
        }
    }
    if (!out->method_ok) {
        out->needs_worker = out->wants_body = out->is_write = 0;
    }
}

/* ---- parameters ---- */

int kv_add(kv_list *l, const char *key, size_t klen, const char *value, size_t vlen)
{
    if (l->n >= HTTP_MAX_ARGS || klen > 128 || vlen > HTTP_MAX_FIELD) {
        l->overflow = 1;
        return MS_ETOOBIG;
    }
    char *k = strndup(key, klen);
    char *v = strndup(value ? value : "", value ? vlen : 0);
    if (!k || !v) {
        free(k);
        free(v);
        return MS_ENOMEM;
    }
    l->items[l->n].key = k;
    l->items[l->n].value = v;
    l->n++;
    return 0;
}

const char *kv_get(const kv_list *l, const char *key)
{
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->items[i].key, key))
            return l->items[i].value;
    return NULL;
}

void kv_free(kv_list *l)
{
    for (int i = 0; i < l->n; i++) {
        free(l->items[i].key);
        free(l->items[i].value);
    }
    l->n = 0;
}

const char *req_param(const http_request *r, const char *key)
{
    const char *v = kv_get(&r->form, key);
    return v ? v : kv_get(&r->args, key);
}

/* ---- replies ---- */

json_t *json_text(const char *s)
{
    if (!s)
        return json_null();
    json_t *j = json_string(s);
    if (j)
        return j;
    char *copy = strdup(s);
    if (!copy)
        return NULL;
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

void reply_init(http_reply *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->cache, sizeof r->cache, "no-store");
}

void reply_free(http_reply *r)
{
    if (!r->body_static)
        free(r->body);
    r->body = NULL;
    r->len = 0;
}

void reply_bytes(http_reply *r, unsigned status, const char *type, char *body, size_t len)
{
    reply_free(r);
    r->status = status;
    r->body = body;
    r->len = len;
    r->body_static = 0;
    snprintf(r->content_type, sizeof r->content_type, "%s", type);
}

static void reply_set_text(http_reply *r, unsigned status, const char *type, char *body)
{
    reply_bytes(r, status, type, body, body ? strlen(body) : 0);
}

void reply_json(http_reply *r, unsigned status, json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_ENCODE_ANY | JSON_REAL_PRECISION(7)) : NULL;
    json_decref(doc);
    if (!text) {
        /* Out of memory while answering: a fixed body needs no allocation. */
        static const char oom[] =
            "{\"error\":{\"code\":\"out_of_memory\",\"message\":\"server out of memory\"}}";
        reply_free(r);
        r->status = 503;
        r->body = (char *)oom;
        r->len = sizeof oom - 1;
        r->body_static = 1;
        r->retry_after = 1;
        snprintf(r->content_type, sizeof r->content_type, "application/json");
        return;
    }
    reply_set_text(r, status, "application/json", text);
}

/* A message cut by vsnprintf may end inside a UTF-8 character; drop that
 * partial character so the rest is not taken for invalid UTF-8 (and
 * replaced by json_text). */
static void drop_partial_utf8_tail(char *msg)
{
    size_t n = strlen(msg), i = n;
    while (i > 0 && ((unsigned char)msg[i - 1] & 0xC0) == 0x80)
        i--;
    if (i == 0 || !((unsigned char)msg[i - 1] & 0x80))
        return;
    unsigned char lead = (unsigned char)msg[i - 1];
    size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
    if (n - (i - 1) < need)
        msg[i - 1] = '\0';
}

void reply_error(http_reply *r, unsigned status, const char *code, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    int full = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (full >= (int)sizeof msg)
        drop_partial_utf8_tail(msg);
    json_t *doc = json_pack("{s:{s:s,s:o}}", "error", "code", code, "message", json_text(msg));
    reply_json(r, status, doc);
    if (status == 503 || status == 429)
        r->retry_after = r->retry_after ? r->retry_after : 1;
}

unsigned http_status_for(int ms_code)
{
    switch (ms_code) {
    case MS_EINVAL: return 400;
    case MS_EFORMAT: return 400;
    case MS_ETOOBIG: return 413;
    case MS_EUNSUPPORTED: return 415;
    case MS_ENOTIMAGE: return 415;
    case MS_ENOTFOUND: return 404;
    case MS_ECONFLICT: return 409;
    case MS_EBUSY: return 503;
    case MS_ENOMEM: return 503;
    case MS_EINTR: return 503;
    default: return 500;   /* MS_EIO, MS_EDB, MS_EINTERNAL: our fault, not the client's */
    }
}

void reply_ms_err(http_reply *r, const ms_err *err)
{
    int code = err->code ? err->code : MS_EINTERNAL;
    const char *msg = err->msg[0] ? err->msg : "internal error";
    reply_error(r, http_status_for(code), ms_code_name(code), "%s", msg);
}
