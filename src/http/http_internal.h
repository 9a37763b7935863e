/*
 * http_internal.h - what the files of src/http share and nobody else uses:
 * a parsed request, the reply a route builds, the routes (api.c), the
 * embedded page (assets.c) and the Prometheus counters (metrics.c).
 *
 * A request reaches api.c already parsed by server.c: method, path, the
 * query arguments, the form fields and the body, all copied out of
 * libmicrohttpd so that a worker thread can use them while the connection
 * is suspended. Every string in it is NUL-terminated and owned by the
 * request.
 */
#ifndef MS_HTTP_INTERNAL_H
#define MS_HTTP_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "engine.h"
#include "http/server.h"
#include "util/err.h"

/* ---- routes ---- */
typedef enum {
    ROUTE_SEARCH = 0,   /* POST /api/search */
    ROUTE_INGEST,       /* POST /api/images */
    ROUTE_IMAGE,        /* GET /api/images/{id}, DELETE /api/images/{id} */
    ROUTE_THUMBNAIL,    /* GET /api/images/{id}/thumbnail */
    ROUTE_METADATA,     /* GET, PATCH /api/images/{id}/metadata */
    ROUTE_SIMILAR,      /* GET /api/images/{id}/similar */
    ROUTE_PREVIEW,      /* POST /api/preview */
    ROUTE_IMAGE_PREVIEW, /* GET /api/images/{id}/preview */
    ROUTE_COPIES,       /* GET /api/images/{id}/copies */
    ROUTE_MAP,          /* POST /api/similarity-map */
    ROUTE_IMAGE_MAP,    /* GET /api/images/{id}/similarity-map */
    ROUTE_SIMILAR_MARKED, /* GET /api/similar?like=...: the marked images alone */
    ROUTE_STATS,        /* GET /api/stats */
    ROUTE_HEALTH,       /* GET /api/health */
    ROUTE_METRICS,      /* GET /metrics */
    ROUTE_ASSET,        /* GET / and the page's files */
    ROUTE_NONE,         /* anything else: 404 */
    ROUTE_COUNT
} route_id;

typedef enum { M_GET, M_HEAD, M_POST, M_DELETE, M_PATCH, M_OTHER } http_method;

typedef struct route_match {
    route_id route;
    int64_t id;            /* the {id} of /api/images/{id}..., else 0 */
    int method_ok;         /* the route exists but not with this method: 0 */
    const char *allow;     /* Allow header for 405 */
    int is_write;          /* ingest, delete, metadata edit: needs the token */
    int needs_worker;      /* may wait on the model or the store's writer */
    int wants_body;        /* POST routes, PATCH of metadata */
} route_match;

/* Matches method + path strictly: ids are 1..2^63-1 in plain decimal with
 * no sign, no leading zero and nothing after them. */
void route_find(http_method m, const char *path, route_match *out);
const char *route_name(route_id r);   /* "search", "image", ... for logs/metrics */

/* ---- request ---- */
typedef struct kv_pair {
    char *key, *value;
} kv_pair;

#define HTTP_MAX_ARGS 64       /* query arguments or form fields kept */
#define HTTP_MAX_FIELD 4096    /* longest non-file form field value */
#define HTTP_MAX_JSON (64u << 10) /* largest JSON body (a metadata edit) */

typedef struct kv_list {
    kv_pair items[HTTP_MAX_ARGS];
    int n;
    int overflow;          /* more than HTTP_MAX_ARGS or a value too long */
} kv_list;

/* Appends copies; returns 0 or MS_ENOMEM / MS_ETOOBIG (list full). */
int kv_add(kv_list *l, const char *key, size_t klen, const char *value, size_t vlen);
/* First value of key, or NULL. */
const char *kv_get(const kv_list *l, const char *key);
void kv_free(kv_list *l);

typedef struct http_body {
    uint8_t *data;         /* malloc'd, grows up to the cap */
    size_t len, cap_alloc;
} http_body;

typedef struct http_request {
    http_method method;
    route_match match;
    char path[512];
    kv_list args;          /* query string */
    kv_list form;          /* multipart / urlencoded fields other than the image */
    http_body body;        /* raw image body, the multipart "image" part, or
                              a JSON body (PATCH; body_is_image 0) */
    int body_is_image;     /* a body or image part was given */
    char body_type[64];    /* its Content-Type */
    char upload_name[256]; /* multipart file name of the image, "" if none */
    char if_none_match[80];
    char if_match[256];    /* "" when not sent */
} http_request;

/* Parameter as the client gave it: form field first, then query argument. */
const char *req_param(const http_request *r, const char *key);

/* ---- reply ---- */
typedef struct http_reply {
    unsigned status;
    char *body;            /* malloc'd, or static when body_static */
    size_t len;
    int body_static;
    char content_type[64];
    char etag[80];         /* set: ETag header */
    char cache[64];        /* Cache-Control, default "no-store" */
    unsigned retry_after;  /* > 0: Retry-After header */
    const char *allow;     /* Allow header (405) */
    int www_auth;          /* WWW-Authenticate: Bearer (401) */
    int csp;               /* the page's Content-Security-Policy */
} http_reply;

/* A JSON string of s; bytes that are not valid UTF-8 become '?' (stored
 * text and client input are not trusted to be UTF-8). NULL s gives null. */
json_t *json_text(const char *s);

void reply_init(http_reply *r);
void reply_free(http_reply *r);
/* A malloc'd body of len bytes (ownership passes to r) with its status and
 * Content-Type. */
void reply_bytes(http_reply *r, unsigned status, const char *type, char *body, size_t len);
/* JSON body (the reference is stolen) with status. */
void reply_json(http_reply *r, unsigned status, json_t *doc);
/* {"error":{"code":code,"message":msg}} */
void reply_error(http_reply *r, unsigned status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The error of an engine/store call: status chosen from err->code. */
void reply_ms_err(http_reply *r, const ms_err *err);
unsigned http_status_for(int ms_code);

/* ---- metrics ---- */
typedef struct metrics metrics;
metrics *metrics_new(void);
void metrics_free(metrics *m);
void metrics_request(metrics *m, route_id r, unsigned status, double ms);
void metrics_engine(metrics *m, const engine_timing *t);
/* Prometheus text exposition (version 0.0.4) of the counters plus the
 * gauges given; *out malloc'd. */
typedef struct metrics_gauges {
    size_t in_flight, upload_bytes, queue_depth, images;
    uint64_t searches, ingests;
    double embed_ms_total, search_ms_total;
    double uptime_s;
} metrics_gauges;
int metrics_render(metrics *m, const metrics_gauges *g, char **out, size_t *len);

/* ---- embedded page ---- */
typedef struct asset_ref {
    const unsigned char *data;
    size_t len;
    const char *mime;
    const char *etag;      /* quoted strong ETag of the content */
} asset_ref;
/* "/" is index.html; other paths must name an embedded file exactly. */
int asset_find(const char *path, asset_ref *out);

/* ---- routes ---- */
typedef struct api_ctx {
    engine *eng;
    metrics *met;
    const http_options *opt;
    uint64_t started_ns;                /* ms_now_ns() at start */
    size_t (*in_flight)(void *srv);     /* gauges owned by the server */
    size_t (*upload_bytes)(void *srv);
    void *srv;
} api_ctx;

/* Runs a matched route; always fills rep. */
void api_handle(api_ctx *c, const http_request *req, http_reply *rep);

/* Printable text of 1 to max bytes without control characters: 1 or 0. */
int http_text_ok(const char *s, size_t max);
/* Adds an image's metadata fields to the object o, as the API shows them. */
void api_meta_to_json(const store_meta *m, json_t *o);
/* The metadata's ETag ("m-" and 32 hex digits of the SHA-256 of its JSON,
 * quoted): equal for equal metadata, on every server of a collection. */
void api_meta_etag(const store_meta *m, char out[48]);
/* GET /api/images/{id}/metadata's document of image id, with its ETag. */
void api_metadata_reply(api_ctx *c, int64_t id, http_reply *rep);
/* PATCH /api/images/{id}/metadata (edit.c). */
void api_handle_metadata_patch(api_ctx *c, const http_request *r, http_reply *rep);

#endif
