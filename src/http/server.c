/*
 * server.c - libmicrohttpd glue: listening, limits, authentication, body
 * reading, the worker threads, the access log and graceful shutdown. The
 * routes themselves are in api.c.
 *
 * A request goes through these phases (libmicrohttpd calls on_request
 * several times for one request):
 *   NEW      headers are in: route, method, authentication, Content-Type
 *            and Content-Length are checked, the body's bytes are reserved
 *            from the upload budget. Anything wrong is answered at once,
 *            before a byte of the body is read.
 *   BODY     body chunks arrive: a raw image body is appended, a multipart
 *            body goes through libmicrohttpd's post processor, both capped.
 *   WORK     the request is complete; routes that may wait on the model run
 *            on a worker thread while the connection is suspended, the
 *            others run at once on the polling thread.
 *   READY    the reply is built and is queued.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/crypto.h>

#include "http/http_internal.h"
#include "util/sha256.h"
#include "util/text.h"
#include "util/timing.h"

enum phase { P_NEW, P_BODY, P_WORK, P_READY };

typedef struct conn_ctx {
    struct http_server *srv;
    struct MHD_Connection *conn;
    uint64_t t0;
    char log_path[200];          /* raw path, escaped, no query string */
    char method[12];
    int nul_in_path;             /* %00 in the raw path: libmicrohttpd's decoded
                                    path would silently end there */
    _Atomic int phase;
    http_request req;
    http_reply rep;
    size_t reserved;             /* bytes taken from the upload budget */
    size_t received;             /* body bytes seen */
    struct MHD_PostProcessor *pp;
    uint64_t field_received;     /* bytes of the last form field's value so far */
    char dup_arg[72];            /* a query parameter given twice, shown printable */
    int form_error;              /* the multipart body was malformed */
    char form_error_msg[160];
    int body_too_big;
    size_t body_limit;           /* the most body bytes this route takes */
    int queued;                  /* a response went out */
    unsigned status;
    size_t bytes_out;
    struct conn_ctx *next_job;
} conn_ctx;

struct http_server {
    struct MHD_Daemon *d;
    engine *eng;
    http_options opt;
    char *listen_copy, *token_copy;
    char token_hash[65];
    unsigned port;
    char url[96];
    metrics *met;
    api_ctx api;

    /* work for the worker threads */
    pthread_mutex_t mu;
    pthread_cond_t has_work;
    conn_ctx *jobs_head, *jobs_tail;
    int workers_stop;
    pthread_t *workers;
    unsigned n_workers;

    _Atomic size_t in_flight;
    _Atomic size_t upload_bytes;
    _Atomic int stopping;
    _Atomic int starting;        /* libmicrohttpd's messages are kept, not printed */
    char start_msg[200];         /* its last message while starting (printed after a
                                    start that went through) */
};

void http_options_init(http_options *o)
{
    memset(o, 0, sizeof *o);
    o->listen = "127.0.0.1:8080";
    o->threads = 4;
    o->workers = 16;
    o->max_upload = 32u << 20;
    o->upload_budget = 256u << 20;
    o->connection_memory = 64u << 10;
    o->max_connections = 256;
    o->per_ip_connections = 64;
    o->timeout_s = 15;
    o->default_k = 10;
    o->access_log = 1;
}

/* ---- listen address ---- */

typedef struct listen_addr {
    struct sockaddr_storage sa;
    int v6;
    int loopback;
} listen_addr;

static int parse_listen(const char *spec, listen_addr *out, ms_err *err)
{
    memset(out, 0, sizeof *out);
    char host[64] = "127.0.0.1";
    const char *port_s = spec;
    if (spec[0] == '[') {                       /* [v6]:port */
        const char *close = strchr(spec, ']');
        if (!close || close[1] != ':' || (size_t)(close - spec - 1) >= sizeof host)
            return ms_err_set(err, MS_EINVAL, "listen address '%.80s' is not [IPv6]:PORT", spec);
        memcpy(host, spec + 1, (size_t)(close - spec - 1));
        host[close - spec - 1] = '\0';
        port_s = close + 2;
    } else if (strchr(spec, ':')) {             /* host:port, ":port" = every interface */
        const char *colon = strrchr(spec, ':');
        size_t n = (size_t)(colon - spec);
        if (n >= sizeof host)
            return ms_err_set(err, MS_EINVAL, "listen address '%.80s' is too long", spec);
        memcpy(host, spec, n);
        host[n] = '\0';
        if (!n)
            snprintf(host, sizeof host, "0.0.0.0");
        port_s = colon + 1;
    }
    /* Digits only: strtol alone would also take " 80", "+80" and "-0". */
    char *end = NULL;
    long port = strtol(port_s, &end, 10);
    if (port_s[0] < '0' || port_s[0] > '9' || *end || port < 0 || port > 65535)
        return ms_err_set(err, MS_EINVAL, "listen port '%.20s' is not a number from 0 to 65535",
                          port_s);
    if (!strcmp(host, "localhost"))
        snprintf(host, sizeof host, "127.0.0.1");
    struct sockaddr_in *v4 = (struct sockaddr_in *)&out->sa;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&out->sa;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        out->loopback = (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        out->v6 = 1;
        out->loopback = IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr);
    } else {
        return ms_err_set(err, MS_EINVAL, "listen host '%.64s' is not an IP address (use "
                          "127.0.0.1, ::1, 0.0.0.0 or an interface's address)", host);
    }
    return 0;
}

int http_listen_is_loopback(const char *listen, ms_err *err)
{
    listen_addr a;
    int rc = parse_listen(listen, &a, err);
    return rc ? rc : a.loopback;
}

/* ---- small helpers ---- */

static http_method method_of(const char *m)
{
    if (!strcmp(m, "GET")) return M_GET;
    if (!strcmp(m, "HEAD")) return M_HEAD;
    if (!strcmp(m, "POST")) return M_POST;
    if (!strcmp(m, "DELETE")) return M_DELETE;
    if (!strcmp(m, "PATCH")) return M_PATCH;
    return M_OTHER;
}

/* Copies the path of a raw request target for the log: no query string
 * (it may hold patient ids), control and non-ASCII bytes escaped. */
static void log_path_of(const char *uri, char *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = uri; *p && *p != '?' && n + 5 < cap; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch < 0x21 || ch >= 0x7f || ch == '"' || ch == '\\')
            n += (size_t)snprintf(out + n, cap - n, "\\x%02x", ch);
        else
            out[n++] = (char)ch;
    }
    out[n] = '\0';
}

static int reserve_upload(http_server *s, size_t bytes)
{
    size_t cur = atomic_load(&s->upload_bytes);
    do {
        if (cur + bytes > s->opt.upload_budget)
            return -1;
    } while (!atomic_compare_exchange_weak(&s->upload_bytes, &cur, cur + bytes));
    return 0;
}

static size_t gauge_in_flight(void *srv)
{
    return atomic_load(&((http_server *)srv)->in_flight);
}

static size_t gauge_upload_bytes(void *srv)
{
    return atomic_load(&((http_server *)srv)->upload_bytes);
}

/* Constant-time comparison: both sides are hashed first, so neither the
 * content nor the length of the secret leaks through timing. */
static int token_ok(const http_server *s, struct MHD_Connection *c)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7))
        return 0;
    h += 7;
    while (*h == ' ')
        h++;
    char hex[65];
    ms_sha256_hex(h, strlen(h), hex);
    return CRYPTO_memcmp(hex, s->token_hash, 64) == 0;
}

/* ---- responses ---- */

static void add_header(struct MHD_Response *r, const char *name, const char *value)
{
    MHD_add_response_header(r, name, value);
}

static enum MHD_Result send_reply(conn_ctx *x)
{
    http_reply *rep = &x->rep;
    struct MHD_Response *r;
    if (rep->body && rep->len) {
        r = MHD_create_response_from_buffer(rep->len, rep->body,
                                            rep->body_static ? MHD_RESPMEM_PERSISTENT
                                                             : MHD_RESPMEM_MUST_FREE);
    } else {
        r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    }
    if (!r)
        return MHD_NO;
    if (rep->body && rep->len && !rep->body_static)
        rep->body = NULL;   /* libmicrohttpd owns it now */
    if (rep->content_type[0])
        add_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, rep->content_type);
    add_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, rep->cache[0] ? rep->cache : "no-store");
    add_header(r, "X-Content-Type-Options", "nosniff");
    add_header(r, "Referrer-Policy", "no-referrer");
    add_header(r, "X-Frame-Options", "DENY");
    if (rep->etag[0])
        add_header(r, MHD_HTTP_HEADER_ETAG, rep->etag);
    if (rep->retry_after) {
        char v[16];
        snprintf(v, sizeof v, "%u", rep->retry_after);
        add_header(r, MHD_HTTP_HEADER_RETRY_AFTER, v);
    }
    if (rep->allow)
        add_header(r, MHD_HTTP_HEADER_ALLOW, rep->allow);
    if (rep->www_auth)
        add_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"medsearch\"");
    if (rep->csp)
        add_header(r, "Content-Security-Policy",
                   "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                   "script-src 'self'; connect-src 'self'; object-src 'none'; "
                   "base-uri 'none'; frame-ancestors 'none'; form-action 'none'");
    if (atomic_load(&x->srv->stopping) || x->body_too_big || x->form_error ||
        atomic_load(&x->phase) == P_NEW)
        add_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    x->status = rep->status;
    x->bytes_out = rep->len;
    x->queued = 1;
    enum MHD_Result ok = MHD_queue_response(x->conn, rep->status, r);
    MHD_destroy_response(r);
    reply_free(rep);
    return ok;
}

static enum MHD_Result send_error(conn_ctx *x, unsigned status, const char *code,
                                  const char *msg)
{
    reply_error(&x->rep, status, code, "%s", msg);
    return send_reply(x);
}

/* ---- workers ---- */

static void run_job(http_server *s, conn_ctx *x)
{
    api_handle(&s->api, &x->req, &x->rep);
    atomic_store(&x->phase, P_READY);
}

static void *worker_main(void *arg)
{
    http_server *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->jobs_head && !s->workers_stop)
            pthread_cond_wait(&s->has_work, &s->mu);
        conn_ctx *x = s->jobs_head;
        if (!x)
            break;   /* stopping and nothing left */
        s->jobs_head = x->next_job;
        if (!s->jobs_head)
            s->jobs_tail = NULL;
        pthread_mutex_unlock(&s->mu);
        run_job(s, x);
        MHD_resume_connection(x->conn);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Hands x to a worker; 0 when the workers have stopped (the caller runs it). */
static int enqueue(http_server *s, conn_ctx *x)
{
    pthread_mutex_lock(&s->mu);
    if (s->workers_stop || !s->n_workers) {
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    x->next_job = NULL;
    if (s->jobs_tail)
        s->jobs_tail->next_job = x;
    else
        s->jobs_head = x;
    s->jobs_tail = x;
    pthread_cond_signal(&s->has_work);
    pthread_mutex_unlock(&s->mu);
    return 1;
}

/* ---- request bodies ---- */

static int body_append(conn_ctx *x, const char *data, size_t size)
{
    http_body *b = &x->req.body;
    if (b->len + size > x->body_limit) {
        x->body_too_big = 1;
        return -1;
    }
    if (b->len + size > b->cap_alloc) {
        size_t cap = b->cap_alloc ? b->cap_alloc * 2 : 64u << 10;
        while (cap < b->len + size)
            cap *= 2;
        if (cap > x->body_limit)
            cap = x->body_limit;
        uint8_t *nb = realloc(b->data, cap);
        if (!nb)
            return -1;
        b->data = nb;
        b->cap_alloc = cap;
    }
    memcpy(b->data + b->len, data, size);
    b->len += size;
    return 0;
}

/* Records the first problem of a multipart body; a field name in it comes
 * from the client, so the message is made printable. */
static void form_fail(conn_ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void form_fail(conn_ctx *x, const char *fmt, ...)
{
    if (!x->form_error) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(x->form_error_msg, sizeof x->form_error_msg, fmt, ap);
        va_end(ap);
        ms_text_make_printable(x->form_error_msg);
    }
    x->form_error = 1;
}

/* Appends to the value of the last form field (a field may come in pieces). */
static int form_append(conn_ctx *x, const char *data, size_t size)
{
    kv_pair *last = &x->req.form.items[x->req.form.n - 1];
    size_t have = strlen(last->value);
    if (have + size > HTTP_MAX_FIELD) {
        form_fail(x, "form field '%.64s' is longer than %d bytes", last->key, HTTP_MAX_FIELD);
        return -1;
    }
    char *nv = realloc(last->value, have + size + 1);
    if (!nv)
        return -1;
    memcpy(nv + have, data, size);
    nv[have + size] = '\0';
    last->value = nv;
    return 0;
}

static enum MHD_Result on_form_data(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *filename, const char *content_type,
                                    const char *transfer_encoding, const char *data,
                                    uint64_t off, size_t size)
{
    conn_ctx *x = cls;
    if (!key)
        return MHD_YES;
    if (!strcmp(key, "image")) {
        if (off == 0 && x->req.body_is_image && x->req.body.len) {
            form_fail(x, "more than one 'image' part");
            return MHD_NO;
        }
        if (off == 0) {
            x->req.body_is_image = 1;
            snprintf(x->req.body_type, sizeof x->req.body_type, "%s",
                     content_type ? content_type : "");
            snprintf(x->req.upload_name, sizeof x->req.upload_name, "%s",
                     filename ? filename : "");
        }
        return (size && body_append(x, data, size)) ? MHD_NO : MHD_YES;
    }
    /* Other fields: short text values (metadata, filters, k). */
    if (size && memchr(data, '\0', size)) {
        form_fail(x, "form field '%.64s' holds a NUL byte", key);
        return MHD_NO;
    }
    /* libmicrohttpd hands a value over in pieces as the body arrives, and may
     * open a field with an empty piece at offset 0 before its bytes (when the
     * part's headers end a read). A piece continues the last field when it
     * has that field's name and starts where the field's bytes end; a field
     * whose name came before is a second field of that name. */
    int continues = x->req.form.n > 0 && off == x->field_received &&
                    !strcmp(x->req.form.items[x->req.form.n - 1].key, key);
    if (continues) {
        if (form_append(x, data, size))
            return MHD_NO;
        x->field_received += size;
        return MHD_YES;
    }
    if (kv_get(&x->req.form, key)) {
        form_fail(x, "form field '%.64s' is given twice", key);
        return MHD_NO;
    }
    if (kv_add(&x->req.form, key, strlen(key), data, size)) {
        form_fail(x, "too many form fields or a field too long");
        return MHD_NO;
    }
    x->field_received = size;
    return MHD_YES;
}

static enum MHD_Result on_query_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    conn_ctx *x = cls;
    if (kv_get(&x->req.args, key)) {
        /* Which one would count is a guess either way: refused, named. */
        snprintf(x->dup_arg, sizeof x->dup_arg, "%.64s", key);
        ms_text_make_printable(x->dup_arg);
        return MHD_NO;
    }
    if (kv_add(&x->req.args, key, strlen(key), value, value ? strlen(value) : 0))
        return MHD_NO;
    return MHD_YES;
}

/* ---- the phases ---- */

static int content_type_is(const char *ct, const char *want)
{
    size_t n = strlen(want);
    return ct && !strncasecmp(ct, want, n) && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* Checks the body's declared type and size and prepares to receive it.
 * Returns 0, or an HTTP status with the reply already set. */
static unsigned accept_body(conn_ctx *x)
{
    http_server *s = x->srv;
    struct MHD_Connection *c = x->conn;
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    const char *te = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_TRANSFER_ENCODING);
    int json = x->req.method == M_PATCH;  /* the one route taking PATCH takes JSON */
    x->body_limit = json ? HTTP_MAX_JSON : s->opt.max_upload;
    size_t declared = te ? x->body_limit : 0;   /* chunked: assume the worst */
    if (cl) {
        char *end = NULL;
        unsigned long long v = strtoull(cl, &end, 10);
        if (*end || cl[0] == '-')
            return reply_error(&x->rep, 400, "bad_request", "bad Content-Length"), 400;
        if (v > x->body_limit) {
            reply_error(&x->rep, 413, "too_large", "request body of %llu bytes is over the "
                        "%zu-byte limit", v, x->body_limit);
            return 413;
        }
        declared = (size_t)v;
    }
    if (json) {
        if (!content_type_is(ct, "application/json") && !content_type_is(ct, "application/merge-patch+json")) {
            reply_error(&x->rep, 415, "unsupported_media_type",
                        "Content-Type '%.60s' is not accepted: send the changes as application/json "
                        "(or application/merge-patch+json)", ct ? ct : "(none)");
            return 415;
        }
        snprintf(x->req.body_type, sizeof x->req.body_type, "%s", ct);
    } else if (content_type_is(ct, "multipart/form-data")) {
        x->pp = MHD_create_post_processor(c, 32u << 10, on_form_data, x);
        if (!x->pp)
            return reply_error(&x->rep, 400, "bad_request",
                               "multipart/form-data without a usable boundary"), 400;
    } else if (ct && (!strncasecmp(ct, "image/", 6) || content_type_is(ct, "application/dicom") ||
                      content_type_is(ct, "application/octet-stream"))) {
        x->req.body_is_image = 1;
        snprintf(x->req.body_type, sizeof x->req.body_type, "%s", ct);
    } else if (declared > 0 || te) {
        reply_error(&x->rep, 415, "unsupported_media_type",
                    "Content-Type '%.60s' is not accepted: send multipart/form-data with an "
                    "'image' field, or the image itself as image/* (PNG, JPEG, JPEG 2000, TIFF, WebP, HEIC, AVIF, GIF) or "
                    "application/dicom",
                    ct ? ct : "(none)");
        return 415;
    }
    if (reserve_upload(s, declared)) {
        reply_error(&x->rep, 429, "busy", "too many uploads in progress; retry shortly");
        return 429;
    }
    x->reserved = declared;
    return 0;
}

static enum MHD_Result begin(conn_ctx *x, const char *url, const char *method)
{
    http_server *s = x->srv;
    http_request *req = &x->req;
    snprintf(x->method, sizeof x->method, "%.11s", method);
    req->method = method_of(method);
    snprintf(req->path, sizeof req->path, "%s", url);
    route_find(req->method, req->path, &req->match);
    const char *inm = MHD_lookup_connection_value(x->conn, MHD_HEADER_KIND,
                                                  MHD_HTTP_HEADER_IF_NONE_MATCH);
    snprintf(req->if_none_match, sizeof req->if_none_match, "%s", inm ? inm : "");
    const char *im = MHD_lookup_connection_value(x->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_MATCH);
    if (im && strlen(im) >= sizeof req->if_match)
        return send_error(x, 400, "bad_request", "the If-Match header is over 255 bytes");
    snprintf(req->if_match, sizeof req->if_match, "%s", im ? im : "");

    if (x->nul_in_path)
        return send_error(x, 400, "bad_request", "the path contains an encoded NUL byte");
    if (strlen(url) >= sizeof req->path || req->match.route == ROUTE_NONE)
        return send_error(x, 404, "not_found", "no such route (see /api/health, /api/search, "
                          "/api/images/{id})");
    if (!req->match.method_ok) {
        x->rep.allow = req->match.allow;
        return send_error(x, 405, "method_not_allowed", "method not allowed on this route");
    }
    int api_read = req->match.route != ROUTE_ASSET && req->match.route != ROUTE_HEALTH;
    if (req->match.is_write && !s->token_copy)
        return send_error(x, 403, "forbidden", "writes are disabled on this server: start it "
                          "with --token-file FILE or MEDSEARCH_TOKEN to allow ingest, delete and "
                          "metadata edits");
    if ((req->match.is_write || (s->opt.read_token && api_read)) && !token_ok(s, x->conn)) {
        x->rep.www_auth = 1;
        return send_error(x, 401, "unauthorized", "missing or wrong bearer token "
                          "(Authorization: Bearer TOKEN)");
    }
    if (MHD_get_connection_values(x->conn, MHD_GET_ARGUMENT_KIND, on_query_arg, x) < 0 ||
        req->args.overflow)
        return send_error(x, 400, "bad_request", "too many or too long query parameters");
    if (x->dup_arg[0]) {
        reply_error(&x->rep, 400, "bad_request", "query parameter '%s' is given twice", x->dup_arg);
        return send_reply(x);
    }
    if (req->match.wants_body && accept_body(x))
        return send_reply(x);
    atomic_store(&x->phase, P_BODY);
    return MHD_YES;
}

static enum MHD_Result receive(conn_ctx *x, const char *data, size_t size)
{
    x->received += size;
    if (!x->req.match.wants_body) {
        /* A body on GET/DELETE is not used; a large one is abuse. */
        return x->received > (64u << 10) ? MHD_NO : MHD_YES;
    }
    if (x->received > x->body_limit) {
        /* Only a chunked body gets here (Content-Length was checked). No
         * answer can be queued in the middle of a body with libmicrohttpd,
         * so the rest is read and dropped and 413 sent at its end; a body
         * going on past twice the limit is cut off instead. */
        x->body_too_big = 1;
        free(x->req.body.data);
        x->req.body = (http_body){0};
        return x->received > 2 * x->body_limit ? MHD_NO : MHD_YES;
    }
    if (x->pp) {
        if (!x->form_error && !x->body_too_big && MHD_post_process(x->pp, data, size) != MHD_YES)
            form_fail(x, "malformed multipart body");
        return MHD_YES;
    }
    if (!x->body_too_big && body_append(x, data, size))
        return MHD_NO;   /* out of memory */
    return MHD_YES;
}

static enum MHD_Result complete(conn_ctx *x)
{
    http_server *s = x->srv;
    if (x->pp) {
        int clean = MHD_destroy_post_processor(x->pp) == MHD_YES;
        x->pp = NULL;
        if (!clean && !x->form_error)
            form_fail(x, "multipart body is truncated or malformed (no closing boundary)");
    }
    if (x->body_too_big) {
        reply_error(&x->rep, 413, "too_large", "request body is over the %zu-byte limit",
                    x->body_limit);
        return send_reply(x);
    }
    if (x->form_error)
        return send_error(x, 400, "bad_request", x->form_error_msg);
    if (x->req.form.overflow)
        return send_error(x, 400, "bad_request", "too many form fields");
    atomic_store(&x->phase, P_WORK);
    if (x->req.match.needs_worker) {
        MHD_suspend_connection(x->conn);
        if (enqueue(s, x))
            return MHD_YES;
        MHD_resume_connection(x->conn);
    }
    run_job(s, x);
    return send_reply(x);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    conn_ctx *x = *con_cls;
    if (!x)
        return MHD_NO;   /* on_uri could not allocate: drop the connection */
    x->conn = conn;
    switch (atomic_load(&x->phase)) {
    case P_NEW:
        return begin(x, url, method);
    case P_BODY:
        if (*upload_data_size) {
            enum MHD_Result r = receive(x, upload_data, *upload_data_size);
            *upload_data_size = 0;
            return r;
        }
        return complete(x);
    case P_READY:
        return x->queued ? MHD_YES : send_reply(x);
    default:
        return MHD_YES;   /* P_WORK: still suspended work; nothing to do */
    }
}

/* ---- connection bookkeeping and the access log ---- */

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    http_server *s = cls;
    conn_ctx *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->srv = s;
    x->conn = conn;
    x->t0 = ms_now_ns();
    log_path_of(uri ? uri : "", x->log_path, sizeof x->log_path);
    for (const char *p = uri ? uri : ""; *p && *p != '?'; p++)
        if (p[0] == '%' && p[1] == '0' && p[2] == '0')
            x->nul_in_path = 1;
    reply_init(&x->rep);
    atomic_store(&x->phase, P_NEW);
    atomic_fetch_add(&s->in_flight, 1);
    return x;
}

static void client_ip(struct MHD_Connection *c, char *out, size_t cap)
{
    snprintf(out, cap, "-");
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)cap);
}

static void access_log(const conn_ctx *x, double ms, enum MHD_RequestTerminationCode toe)
{
    char ts[32], ip[64], line[512];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    client_ip(x->conn, ip, sizeof ip);
    int n = snprintf(line, sizeof line,
                     "%s access method=%s path=\"%s\" route=%s status=%u bytes=%zu ms=%.1f ip=%s%s\n",
                     ts, x->method[0] ? x->method : "-", x->log_path,
                     route_name(x->req.match.route), x->status, x->bytes_out, ms, ip,
                     toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " aborted=1");
    if (n > 0) {
        size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
        /* One write(2) per line keeps lines whole across threads. */
        ssize_t w = write(STDERR_FILENO, line, len);
        (void)w;
    }
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    http_server *s = cls;
    conn_ctx *x = *con_cls;
    if (!x)
        return;
    *con_cls = NULL;
    x->conn = conn;
    double ms = ms_elapsed_ms(x->t0);
    if (x->status)
        metrics_request(s->met, x->req.match.route, x->status, ms);
    if (s->opt.access_log)
        access_log(x, ms, toe);
    if (x->pp)
        MHD_destroy_post_processor(x->pp);
    if (x->reserved)
        atomic_fetch_sub(&s->upload_bytes, x->reserved);
    free(x->req.body.data);
    kv_free(&x->req.args);
    kv_free(&x->req.form);
    reply_free(&x->rep);
    free(x);
    atomic_fetch_sub(&s->in_flight, 1);
}

static void log_line(const char *msg)
{
    char line[480];
    int len = snprintf(line, sizeof line, "medsearch: http: %s\n", msg);
    if (len > 0) {
        ssize_t w = write(STDERR_FILENO, line, (size_t)len < sizeof line ? (size_t)len : sizeof line - 1);
        (void)w;
    }
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    http_server *s = cls;
    char msg[400];
    vsnprintf(msg, sizeof msg, fmt, ap);
    char *html = strstr(msg, " ('<html>");   /* the canned error page adds nothing */
    if (html)
        *html = '\0';
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    if (atomic_load(&s->starting)) {
        /* A failed start is reported once, by start_daemon: libmicrohttpd's
         * own words would name port 0 (the address is given as a sockaddr). */
        snprintf(s->start_msg, sizeof s->start_msg, "%.199s", msg);
        return;
    }
    log_line(msg);
}

/* ---- start and stop ---- */

static int check_options(const http_options *o, ms_err *err)
{
    if (!o->threads || o->threads > 256)
        return ms_err_set(err, MS_EINVAL, "threads must be 1..256, got %u", o->threads);
    if (o->workers > 1024)
        return ms_err_set(err, MS_EINVAL, "workers must be 0..1024, got %u", o->workers);
    if (o->max_upload < 1024 || o->max_upload > ((size_t)1 << 30))
        return ms_err_set(err, MS_EINVAL, "max upload must be 1 KiB..1 GiB");
    if (o->upload_budget < o->max_upload)
        return ms_err_set(err, MS_EINVAL, "upload budget must be at least the max upload");
    if (o->connection_memory < 8192)
        return ms_err_set(err, MS_EINVAL, "connection memory must be at least 8 KiB");
    if (!o->max_connections || !o->per_ip_connections)
        return ms_err_set(err, MS_EINVAL, "connection limits must be positive");
    if (o->default_k < 1 || o->default_k > 1000)
        return ms_err_set(err, MS_EINVAL, "default k must be 1..1000");
    if (o->token && strlen(o->token) < 8)
        return ms_err_set(err, MS_EINVAL, "the token is %zu characters; use at least 8 (for "
                          "example: openssl rand -hex 32)", strlen(o->token));
    return 0;
}

static void stop_workers(http_server *s)
{
    pthread_mutex_lock(&s->mu);
    s->workers_stop = 1;
    pthread_cond_broadcast(&s->has_work);
    pthread_mutex_unlock(&s->mu);
    for (unsigned i = 0; i < s->n_workers; i++)
        pthread_join(s->workers[i], NULL);
    s->n_workers = 0;
}

static void server_free(http_server *s)
{
    if (s->d)
        MHD_stop_daemon(s->d);
    stop_workers(s);
    metrics_free(s->met);
    pthread_cond_destroy(&s->has_work);
    pthread_mutex_destroy(&s->mu);
    free(s->workers);
    if (s->token_copy)
        OPENSSL_cleanse(s->token_copy, strlen(s->token_copy));
    free(s->token_copy);
    free(s->listen_copy);
    free(s);
}

/* Why the address cannot be bound, found by binding it the way libmicrohttpd
 * does: an errno, or 0 when it can be (libmicrohttpd failed for another
 * reason). Only used to explain a failed start. */
static int bind_error(const listen_addr *la)
{
    int fd = socket(la->v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (la->v6)
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    socklen_t len = la->v6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int e = bind(fd, (const struct sockaddr *)&la->sa, len) ? errno : 0;
    close(fd);
    return e;
}

static int start_daemon(http_server *s, const listen_addr *la, ms_err *err)
{
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (la->v6)
        flags |= MHD_USE_IPv6;
    const http_options *o = &s->opt;
    /* One polling thread is the daemon's internal one: the pool option is
     * left out, as libmicrohttpd logs a warning for a pool size of 1 or 0. */
    struct MHD_OptionItem pool[] = {
        {o->threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, (intptr_t)o->threads, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    atomic_store(&s->starting, 1);
    s->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, s,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,   /* first, or early messages bypass it */
        MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)&la->sa,
        MHD_OPTION_ARRAY, pool,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)o->max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned int)o->per_ip_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)o->timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)o->connection_memory,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned int)128,
        MHD_OPTION_URI_LOG_CALLBACK, on_uri, s,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_END);
    atomic_store(&s->starting, 0);
    if (!s->d) {
        int e = bind_error(la);
        if (e == EADDRINUSE)
            return ms_err_set(err, MS_EIO, "cannot listen on %s: the port is in use (another "
                              "server?); choose another with --listen HOST:PORT", o->listen);
        if (e == EADDRNOTAVAIL)
            return ms_err_set(err, MS_EIO, "cannot listen on %s: that is not an address of "
                              "this machine", o->listen);
        if (e)
            return ms_err_set(err, MS_EIO, "cannot listen on %s: %s", o->listen, strerror(e));
        return ms_err_set(err, MS_EIO, "cannot listen on %s: %s", o->listen,
                          s->start_msg[0] ? s->start_msg : "the HTTP library could not start");
    }
    if (s->start_msg[0])
        log_line(s->start_msg); /* a warning of a start that went through */
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : 0;
    char host[INET6_ADDRSTRLEN] = "127.0.0.1";
    if (la->v6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&la->sa)->sin6_addr, host, sizeof host);
    else
        inet_ntop(AF_INET, &((const struct sockaddr_in *)&la->sa)->sin_addr, host, sizeof host);
    snprintf(s->url, sizeof s->url, la->v6 ? "http://[%s]:%u/" : "http://%s:%u/", host, s->port);
    return 0;
}

int http_server_start(engine *e, const http_options *o, http_server **out, ms_err *err)
{
    listen_addr la;
    int rc = check_options(o, err);
    if (!rc)
        rc = parse_listen(o->listen, &la, err);
    if (rc)
        return rc;
    if (!la.loopback && !o->token)
        return ms_err_set(err, MS_EINVAL, "refusing to listen on %s without a token: patient "
                          "images would be readable and writable by anyone on the network. "
                          "Give --token-file FILE or MEDSEARCH_TOKEN (and --read-token to "
                          "protect reads), or listen on 127.0.0.1", o->listen);
    http_server *s = calloc(1, sizeof *s);
    if (!s)
        return ms_err_set(err, MS_ENOMEM, "out of memory starting the server");
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->has_work, NULL);
    s->eng = e;
    s->opt = *o;
    s->listen_copy = strdup(o->listen);
    s->token_copy = o->token ? strdup(o->token) : NULL;
    s->opt.listen = s->listen_copy;
    s->opt.token = s->token_copy;
    s->met = metrics_new();
    s->workers = calloc(o->workers ? o->workers : 1, sizeof *s->workers);
    if (!s->listen_copy || (o->token && !s->token_copy) || !s->met || !s->workers) {
        server_free(s);
        return ms_err_set(err, MS_ENOMEM, "out of memory starting the server");
    }
    if (s->token_copy)
        ms_sha256_hex(s->token_copy, strlen(s->token_copy), s->token_hash);
    s->api = (api_ctx){.eng = e, .met = s->met, .opt = &s->opt,
                       .started_ns = ms_now_ns(), .in_flight = gauge_in_flight,
                       .upload_bytes = gauge_upload_bytes, .srv = s};
    for (unsigned i = 0; i < o->workers; i++) {
        if (pthread_create(&s->workers[i], NULL, worker_main, s)) {
            server_free(s);
            return ms_err_set(err, MS_ENOMEM, "cannot start worker thread %u", i);
        }
        s->n_workers++;
    }
    rc = start_daemon(s, &la, err);
    if (rc) {
        server_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

unsigned http_server_port(const http_server *s)
{
    return s->port;
}

const char *http_server_url(const http_server *s)
{
    return s->url;
}

static void wait_idle(http_server *s, uint64_t deadline_ns)
{
    while (atomic_load(&s->in_flight) && ms_now_ns() < deadline_ns) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

int http_server_stop(http_server *s, unsigned grace_ms)
{
    if (!s)
        return 0;
    atomic_store(&s->stopping, 1);
    MHD_socket lsock = MHD_quiesce_daemon(s->d);   /* no new connections */
    if (lsock != MHD_INVALID_SOCKET)
        close(lsock);
    wait_idle(s, ms_now_ns() + (uint64_t)grace_ms * 1000000u);
    /* Workers finish what they hold, then the answers get a moment to go out,
     * so that no connection is left suspended when the daemon stops. */
    stop_workers(s);
    wait_idle(s, ms_now_ns() + 1000000000u);
    int left = (int)atomic_load(&s->in_flight);
    server_free(s);
    return left;
}
