/*
 * test_http.c - the pure parts of the HTTP face (src/http), with hostile
 * input and exact expectations; no socket is opened.
 *
 *   routing     route_find / route_name: every route and method of
 *               docs/api.md, 405 (route exists, other method) against 404
 *               (no route), strict ids, slashes, dot segments, encodings,
 *               very long paths.
 *   parameters  kv_add / kv_get / kv_free limits, duplicates, NUL bytes,
 *               empty keys; req_param's form-then-query order.
 *   replies     http_status_for for every MS_E* code against the table of
 *               docs/api.md; reply_error / reply_ms_err / reply_json: the
 *               {"error":{"code","message"}} shape, statuses, Retry-After,
 *               escaping of quotes, control bytes and invalid UTF-8.
 *   metrics     metrics_render parsed back as Prometheus text 0.0.4
 *               (HELP/TYPE, cumulative buckets ending in +Inf == _count,
 *               _sum), exact counters by route and status, and no count
 *               lost by concurrent metrics_request.
 *   assets      asset_find: the page's files with their MIME types and
 *               content ETags, byte-equal to web/; anything else not found.
 *   listen      http_listen_is_loopback on good, public and malformed
 *               addresses.
 *
 * Run from the repository root (tests/run.sh does): the asset test
 * compares the embedded files with web/.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "http/assets.h"
#include "http/http_internal.h"
#include "http/server.h"
#include "util/err.h"
#include "util/sha256.h"

/* ================================================================ routing */

typedef struct route_case {
    http_method m;
    const char *path;
    route_id route;
    int method_ok;
    int64_t id;
    int is_write, needs_worker, wants_body;
    const char *allow;   /* NULL: no route, no Allow */
} route_case;

static const char *method_str(http_method m)
{
    static const char *const names[] = {"GET", "HEAD", "POST", "DELETE", "PATCH", "OTHER"};
    return (m >= M_GET && m <= M_OTHER) ? names[m] : "?";
}

static void check_route(const route_case *c)
{
    route_match r;
    memset(&r, 0xa5, sizeof r);   /* route_find must set every field */
    route_find(c->m, c->path, &r);
    if (r.route != c->route || r.method_ok != c->method_ok || r.id != c->id ||
        r.is_write != c->is_write || r.needs_worker != c->needs_worker ||
        r.wants_body != c->wants_body) {
        print_error("%s %.120s: got route=%s ok=%d id=%lld write=%d worker=%d body=%d, "
                    "want route=%s ok=%d id=%lld write=%d worker=%d body=%d\n",
                    method_str(c->m), c->path, route_name(r.route), r.method_ok,
                    (long long)r.id, r.is_write, r.needs_worker, r.wants_body,
                    route_name(c->route), c->method_ok, (long long)c->id, c->is_write,
                    c->needs_worker, c->wants_body);
        fail();
    }
    if (c->allow)
        assert_string_equal(r.allow, c->allow);
    else
        assert_null(r.allow);
}

/* What the server does with a match: 404, 405 or runs the route. */
static int route_status(http_method m, const char *path)
{
    route_match r;
    route_find(m, path, &r);
    if (r.route == ROUTE_NONE)
        return 404;
    return r.method_ok ? 200 : 405;
}

static void test_route_every_documented_route(void **state)
{
    static const route_case cases[] = {
        /* POST routes: body, worker; ingest is a write */
        {M_POST, "/api/search", ROUTE_SEARCH, 1, 0, 0, 1, 1, "POST"},
        {M_POST, "/api/images", ROUTE_INGEST, 1, 0, 1, 1, 1, "POST"},
        {M_POST, "/api/preview", ROUTE_PREVIEW, 1, 0, 0, 1, 1, "POST"},
        /* an image: GET/HEAD read on the polling thread, DELETE writes on a worker */
        {M_GET, "/api/images/1", ROUTE_IMAGE, 1, 1, 0, 0, 0, "GET, HEAD, DELETE"},
        {M_HEAD, "/api/images/1", ROUTE_IMAGE, 1, 1, 0, 0, 0, "GET, HEAD, DELETE"},
        {M_DELETE, "/api/images/42", ROUTE_IMAGE, 1, 42, 1, 1, 0, "GET, HEAD, DELETE"},
        {M_GET, "/api/images/163/thumbnail", ROUTE_THUMBNAIL, 1, 163, 0, 0, 0, "GET, HEAD"},
        {M_HEAD, "/api/images/163/thumbnail", ROUTE_THUMBNAIL, 1, 163, 0, 0, 0, "GET, HEAD"},
        {M_GET, "/api/images/7/metadata", ROUTE_METADATA, 1, 7, 0, 0, 0, "GET, HEAD, PATCH"},
        {M_HEAD, "/api/images/7/metadata", ROUTE_METADATA, 1, 7, 0, 0, 0, "GET, HEAD, PATCH"},
        /* an edit of metadata: a write with a (JSON) body, on a worker */
        {M_PATCH, "/api/images/7/metadata", ROUTE_METADATA, 1, 7, 1, 1, 1, "GET, HEAD, PATCH"},
        {M_GET, "/api/images/9/similar", ROUTE_SIMILAR, 1, 9, 0, 1, 0, "GET, HEAD"},
        {M_HEAD, "/api/images/9/similar", ROUTE_SIMILAR, 1, 9, 0, 1, 0, "GET, HEAD"},
        {M_GET, "/api/images/12/preview", ROUTE_IMAGE_PREVIEW, 1, 12, 0, 1, 0, "GET, HEAD"},
        {M_HEAD, "/api/images/12/preview", ROUTE_IMAGE_PREVIEW, 1, 12, 0, 1, 0, "GET, HEAD"},
        {M_GET, "/api/images/13/copies", ROUTE_COPIES, 1, 13, 0, 1, 0, "GET, HEAD"},
        {M_HEAD, "/api/images/13/copies", ROUTE_COPIES, 1, 13, 0, 1, 0, "GET, HEAD"},
        {M_POST, "/api/similarity-map", ROUTE_MAP, 1, 0, 0, 1, 1, "POST"},
        {M_GET, "/api/images/14/similarity-map", ROUTE_IMAGE_MAP, 1, 14, 0, 1, 0, "GET, HEAD"},
        {M_HEAD, "/api/images/14/similarity-map", ROUTE_IMAGE_MAP, 1, 14, 0, 1, 0, "GET, HEAD"},
        {M_GET, "/api/similar", ROUTE_SIMILAR_MARKED, 1, 0, 0, 1, 0, "GET, HEAD"},
        {M_HEAD, "/api/similar", ROUTE_SIMILAR_MARKED, 1, 0, 0, 1, 0, "GET, HEAD"},
        {M_GET, "/api/stats", ROUTE_STATS, 1, 0, 0, 0, 0, "GET, HEAD"},
        {M_HEAD, "/api/stats", ROUTE_STATS, 1, 0, 0, 0, 0, "GET, HEAD"},
        {M_GET, "/api/health", ROUTE_HEALTH, 1, 0, 0, 0, 0, "GET, HEAD"},
        {M_HEAD, "/api/health", ROUTE_HEALTH, 1, 0, 0, 0, 0, "GET, HEAD"},
        {M_GET, "/metrics", ROUTE_METRICS, 1, 0, 0, 0, 0, "GET, HEAD"},
        {M_HEAD, "/metrics", ROUTE_METRICS, 1, 0, 0, 0, 0, "GET, HEAD"},
        {M_GET, "/", ROUTE_ASSET, 1, 0, 0, 0, 0, "GET, HEAD"},
        {M_HEAD, "/", ROUTE_ASSET, 1, 0, 0, 0, 0, "GET, HEAD"},
        {M_GET, "/index.html", ROUTE_ASSET, 1, 0, 0, 0, 0, "GET, HEAD"},
        {M_GET, "/app.js", ROUTE_ASSET, 1, 0, 0, 0, 0, "GET, HEAD"},
        {M_GET, "/style.css", ROUTE_ASSET, 1, 0, 0, 0, 0, "GET, HEAD"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_route(&cases[i]);
}

/* A route that exists with other methods: method_ok 0 (405 with Allow),
 * and none of write/worker/body is claimed, so the server neither asks for
 * the token nor reads a body before answering 405. */
static void test_route_wrong_method_is_405(void **state)
{
    static const route_case cases[] = {
        {M_GET, "/api/search", ROUTE_SEARCH, 0, 0, 0, 0, 0, "POST"},
        {M_HEAD, "/api/search", ROUTE_SEARCH, 0, 0, 0, 0, 0, "POST"},
        {M_DELETE, "/api/search", ROUTE_SEARCH, 0, 0, 0, 0, 0, "POST"},
        {M_OTHER, "/api/search", ROUTE_SEARCH, 0, 0, 0, 0, 0, "POST"},
        {M_GET, "/api/images", ROUTE_INGEST, 0, 0, 0, 0, 0, "POST"},
        {M_DELETE, "/api/images", ROUTE_INGEST, 0, 0, 0, 0, 0, "POST"},
        {M_OTHER, "/api/images", ROUTE_INGEST, 0, 0, 0, 0, 0, "POST"},
        {M_POST, "/api/images/5", ROUTE_IMAGE, 0, 5, 0, 0, 0, "GET, HEAD, DELETE"},
        {M_OTHER, "/api/images/5", ROUTE_IMAGE, 0, 5, 0, 0, 0, "GET, HEAD, DELETE"},
        {M_POST, "/api/images/5/thumbnail", ROUTE_THUMBNAIL, 0, 5, 0, 0, 0, "GET, HEAD"},
        {M_DELETE, "/api/images/5/thumbnail", ROUTE_THUMBNAIL, 0, 5, 0, 0, 0, "GET, HEAD"},
        {M_DELETE, "/api/images/5/metadata", ROUTE_METADATA, 0, 5, 0, 0, 0, "GET, HEAD, PATCH"},
        {M_POST, "/api/images/5/metadata", ROUTE_METADATA, 0, 5, 0, 0, 0, "GET, HEAD, PATCH"},
        {M_OTHER, "/api/images/5/metadata", ROUTE_METADATA, 0, 5, 0, 0, 0, "GET, HEAD, PATCH"},
        /* PATCH changes metadata only: nowhere else is it a write or takes a body */
        {M_PATCH, "/api/images/5", ROUTE_IMAGE, 0, 5, 0, 0, 0, "GET, HEAD, DELETE"},
        {M_PATCH, "/api/images/5/thumbnail", ROUTE_THUMBNAIL, 0, 5, 0, 0, 0, "GET, HEAD"},
        {M_PATCH, "/api/images/5/similar", ROUTE_SIMILAR, 0, 5, 0, 0, 0, "GET, HEAD"},
        {M_PATCH, "/api/images", ROUTE_INGEST, 0, 0, 0, 0, 0, "POST"},
        {M_PATCH, "/api/search", ROUTE_SEARCH, 0, 0, 0, 0, 0, "POST"},
        {M_PATCH, "/api/stats", ROUTE_STATS, 0, 0, 0, 0, 0, "GET, HEAD"},
        {M_PATCH, "/", ROUTE_ASSET, 0, 0, 0, 0, 0, "GET, HEAD"},
        {M_POST, "/api/images/5/similar", ROUTE_SIMILAR, 0, 5, 0, 0, 0, "GET, HEAD"},
        {M_DELETE, "/api/images/5/similar", ROUTE_SIMILAR, 0, 5, 0, 0, 0, "GET, HEAD"},
        {M_OTHER, "/api/images/5/similar", ROUTE_SIMILAR, 0, 5, 0, 0, 0, "GET, HEAD"},
        {M_POST, "/api/images/5/preview", ROUTE_IMAGE_PREVIEW, 0, 5, 0, 0, 0, "GET, HEAD"},
        {M_PATCH, "/api/images/5/copies", ROUTE_COPIES, 0, 5, 0, 0, 0, "GET, HEAD"},
        {M_DELETE, "/api/images/5/copies", ROUTE_COPIES, 0, 5, 0, 0, 0, "GET, HEAD"},
        {M_GET, "/api/similarity-map", ROUTE_MAP, 0, 0, 0, 0, 0, "POST"},
        {M_PATCH, "/api/similarity-map", ROUTE_MAP, 0, 0, 0, 0, 0, "POST"},
        {M_POST, "/api/images/5/similarity-map", ROUTE_IMAGE_MAP, 0, 5, 0, 0, 0, "GET, HEAD"},
        {M_DELETE, "/api/images/5/similarity-map", ROUTE_IMAGE_MAP, 0, 5, 0, 0, 0, "GET, HEAD"},
        {M_POST, "/api/similar", ROUTE_SIMILAR_MARKED, 0, 0, 0, 0, 0, "GET, HEAD"},
        {M_PATCH, "/api/similar", ROUTE_SIMILAR_MARKED, 0, 0, 0, 0, 0, "GET, HEAD"},
        {M_GET, "/api/preview", ROUTE_PREVIEW, 0, 0, 0, 0, 0, "POST"},
        {M_DELETE, "/api/preview", ROUTE_PREVIEW, 0, 0, 0, 0, 0, "POST"},
        {M_POST, "/api/stats", ROUTE_STATS, 0, 0, 0, 0, 0, "GET, HEAD"},
        {M_DELETE, "/api/health", ROUTE_HEALTH, 0, 0, 0, 0, 0, "GET, HEAD"},
        {M_POST, "/metrics", ROUTE_METRICS, 0, 0, 0, 0, 0, "GET, HEAD"},
        {M_POST, "/", ROUTE_ASSET, 0, 0, 0, 0, 0, "GET, HEAD"},
        {M_DELETE, "/app.js", ROUTE_ASSET, 0, 0, 0, 0, 0, "GET, HEAD"},
        {M_OTHER, "/style.css", ROUTE_ASSET, 0, 0, 0, 0, 0, "GET, HEAD"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_route(&cases[i]);
    assert_int_equal(route_status(M_GET, "/api/search"), 405);
    assert_int_equal(route_status(M_GET, "/api/nope"), 404);
    assert_int_equal(route_status(M_POST, "/api/nope"), 404);
    assert_int_equal(route_status(M_GET, "/api/similar/"), 404);
    assert_int_equal(route_status(M_GET, "/api/similars"), 404);
}

/* ids are 1..2^63-1 in plain decimal: anything else is no route (404),
 * whatever the method. */
static void test_route_ids(void **state)
{
    static const struct {
        const char *id;
        int64_t want;   /* 0: no route */
    } ids[] = {
        {"1", 1},
        {"9", 9},
        {"10", 10},
        {"1234567890", 1234567890},
        {"9223372036854775806", INT64_MAX - 1},
        {"9223372036854775807", INT64_MAX},
        {"9223372036854775808", 0},         /* INT64_MAX + 1 */
        {"9223372036854775817", 0},         /* over by a last digit that passes the first check */
        {"18446744073709551615", 0},        /* UINT64_MAX */
        {"18446744073709551616", 0},        /* wraps to 0 in 64 bits */
        {"92233720368547758070", 0},
        {"99999999999999999999999999999999999999", 0},
        {"0", 0},
        {"00", 0},
        {"01", 0},
        {"007", 0},
        {"-1", 0},
        {"-0", 0},
        {"+1", 0},
        {"-9223372036854775808", 0},
        {"", 0},
        {" 1", 0},
        {"1 ", 0},
        {"\t1", 0},
        {"1\n", 0},
        {"1a", 0},
        {"a1", 0},
        {"abc", 0},
        {"1.0", 0},
        {"1e3", 0},
        {"0x10", 0},
        {"1,2", 0},
        {"1;2", 0},
        {"1%00", 0},
        {"%31", 0},                          /* "1" percent-encoded: paths arrive decoded */
        {"\xef\xbc\x91", 0},                 /* FULLWIDTH DIGIT ONE */
        {"\xd9\xa1", 0},                     /* ARABIC-INDIC DIGIT ONE */
        {"1\xff", 0},
        {"..", 0},
        {".", 0},
        {"1/..", 0},
    };
    static const http_method methods[] = {M_GET, M_HEAD, M_POST, M_DELETE, M_OTHER};
    static const char *const tails[] = {"", "/thumbnail", "/metadata", "/similar"};
    char path[256];
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        for (size_t t = 0; t < sizeof tails / sizeof tails[0]; t++)
            for (size_t k = 0; k < sizeof methods / sizeof methods[0]; k++) {
                snprintf(path, sizeof path, "/api/images/%s%s", ids[i].id, tails[t]);
                route_match r;
                route_find(methods[k], path, &r);
                if (ids[i].want) {
                    assert_int_not_equal(r.route, ROUTE_NONE);
                    assert_int_equal(r.id, ids[i].want);
                } else if (r.route != ROUTE_NONE || r.id != 0 || r.is_write ||
                           r.needs_worker || r.wants_body || !r.method_ok) {
                    print_error("%s %s matched %s id %lld\n", method_str(methods[k]), path,
                                route_name(r.route), (long long)r.id);
                    fail();
                }
            }
}

/* Paths are compared with the table byte for byte: no normalisation of
 * slashes, dot segments, case or percent escapes (libmicrohttpd has decoded
 * the path already; a second decoding here would be a bypass). */
static void test_route_strict_paths(void **state)
{
    static const char *const none[] = {
        "",
        "/api",
        "/api/",
        "/api/search/",
        "/api/search?k=5",            /* the query string never reaches route_find */
        "/api/search#x",
        "/api/search/.",
        "/api/searchx",
        "/api/Search",
        "/API/search",
        "//api/search",
        "/api//search",
        "api/search",
        " /api/search",
        "/api/search ",
        "/api/images/",
        "/api/images//1",
        "/api//images/1",
        "/api/images/1/",
        "/api/images/1//thumbnail",
        "/api/images/1/thumbnail/",
        "/api/images/1/thumbnailx",
        "/api/images/1/Thumbnail",
        "/api/images/1/thumbnail/..",
        "/api/images/1/original",
        "/api/images/1/thumbnail/1",
        "/api/images/1/similar/similar",
        "/api/images/1/2",
        "/api/images/1/../2",
        "/api/images/../../etc/passwd",
        "/api/images/..%2f..%2fetc%2fpasswd",
        "/api/images/%2e%2e/x",
        "/api/images/%2e%2e/%2e%2e/etc/passwd",
        "/api/images/1%2fthumbnail",
        "/api/images/1%2Fthumbnail",
        "/api/images/1/%74humbnail",
        "/api/./search",
        "/api/../api/search",
        "/./metrics",
        "/metrics/",
        "/metrics/..",
        "/Metrics",
        "/api/health/",
        "/api/healthz",
        "/api/stats/",
        "/api/images/1\\thumbnail",
        "\\api\\search",
        "/../etc/passwd",
        "/..",
        "/.",
        "/%2e%2e/etc/passwd",
        "/web/index.html",
        "/../web/index.html",
        "/./app.js",
        "/app.js/",
        "//app.js",
        "/%61pp.js",
        "/index.htm",
        "/index.html.bak",
        "/APP.JS",
        "/app.js;x",
        "/etc/passwd",
        "http://127.0.0.1/api/search",
        "*",
    };
    static const http_method methods[] = {M_GET, M_HEAD, M_POST, M_DELETE, M_OTHER};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++)
        for (size_t k = 0; k < sizeof methods / sizeof methods[0]; k++) {
            route_match r;
            memset(&r, 0x5a, sizeof r);
            route_find(methods[k], none[i], &r);
            if (r.route != ROUTE_NONE || !r.method_ok || r.id || r.is_write ||
                r.needs_worker || r.wants_body || r.allow) {
                print_error("%s '%s' matched %s (ok=%d)\n", method_str(methods[k]), none[i],
                            route_name(r.route), r.method_ok);
                fail();
            }
            assert_int_equal(route_status(methods[k], none[i]), 404);
        }
}

static void test_route_long_paths(void **state)
{
    size_t n = 1u << 20;
    char *p = malloc(n + 64);
    assert_non_null(p);
    route_match r;

    /* a huge id */
    memcpy(p, "/api/images/", 12);
    memset(p + 12, '9', n);
    p[12 + n] = '\0';
    route_find(M_GET, p, &r);
    assert_int_equal(r.route, ROUTE_NONE);
    /* the largest id behind a megabyte of zeros is still not plain decimal */
    memset(p + 12, '0', n);
    memcpy(p + 12 + n - 19, "9223372036854775807", 20);
    route_find(M_GET, p, &r);
    assert_int_equal(r.route, ROUTE_NONE);
    /* a valid id with a megabyte of tail */
    memcpy(p + 12, "5/thumbnail", 11);
    memset(p + 23, 'x', n - 11);
    p[12 + n] = '\0';
    route_find(M_GET, p, &r);
    assert_int_equal(r.route, ROUTE_NONE);
    /* a megabyte of slashes, of dot segments, of one name */
    memset(p, '/', n);
    p[n] = '\0';
    route_find(M_GET, p, &r);
    assert_int_equal(r.route, ROUTE_NONE);
    for (size_t i = 0; i + 3 <= n; i += 3)
        memcpy(p + i, "/..", 3);
    p[n - n % 3] = '\0';
    route_find(M_GET, p, &r);
    assert_int_equal(r.route, ROUTE_NONE);
    p[0] = '/';
    memset(p + 1, 'a', n);
    p[n + 1] = '\0';
    route_find(M_GET, p, &r);
    assert_int_equal(r.route, ROUTE_NONE);
    /* a real route with a megabyte after it */
    memcpy(p, "/api/search", 11);
    route_find(M_POST, p, &r);
    assert_int_equal(r.route, ROUTE_NONE);
    free(p);
}

static void test_route_names(void **state)
{
    static const char *const want[ROUTE_COUNT] = {
        [ROUTE_SEARCH] = "search",     [ROUTE_INGEST] = "ingest",
        [ROUTE_IMAGE] = "image",       [ROUTE_THUMBNAIL] = "thumbnail",
        [ROUTE_METADATA] = "metadata", [ROUTE_SIMILAR] = "similar",
        [ROUTE_PREVIEW] = "preview",   [ROUTE_IMAGE_PREVIEW] = "image_preview",
        [ROUTE_COPIES] = "copies",     [ROUTE_MAP] = "similarity_map",
        [ROUTE_IMAGE_MAP] = "image_similarity_map", [ROUTE_SIMILAR_MARKED] = "similar_marked",
        [ROUTE_STATS] = "stats",       [ROUTE_HEALTH] = "health",
        [ROUTE_METRICS] = "metrics",   [ROUTE_ASSET] = "asset",
        [ROUTE_NONE] = "none",
    };
    for (int r = 0; r < ROUTE_COUNT; r++)
        assert_string_equal(route_name((route_id)r), want[r]);
    assert_string_equal(route_name((route_id)-1), "none");
    assert_string_equal(route_name(ROUTE_COUNT), "none");
    assert_string_equal(route_name((route_id)1000000), "none");
    assert_string_equal(route_name((route_id)INT32_MIN), "none");
}

/* ============================================================= parameters */

static void test_kv_basic_duplicates_empty(void **state)
{
    kv_list l = {0};
    assert_null(kv_get(&l, "k"));
    assert_int_equal(kv_add(&l, "k", 1, "5", 1), 0);
    assert_int_equal(kv_add(&l, "k", 1, "7", 1), 0);          /* duplicate: kept, second */
    assert_int_equal(kv_add(&l, "K", 1, "upper", 5), 0);      /* keys are case-sensitive */
    assert_int_equal(kv_add(&l, "", 0, "empty key", 9), 0);
    assert_int_equal(kv_add(&l, "nullv", 5, NULL, 99), 0);    /* NULL value: "" */
    assert_int_equal(kv_add(&l, "emptyv", 6, "", 0), 0);
    assert_int_equal(kv_add(&l, "prefix_of_longer", 6, "v", 1), 0);   /* key "prefix" */
    assert_int_equal(kv_add(&l, "value", 5, "abcdef", 3), 0);          /* value "abc" */
    assert_int_equal(l.n, 8);
    assert_int_equal(l.overflow, 0);
    assert_string_equal(kv_get(&l, "k"), "5");                 /* first value wins */
    assert_string_equal(l.items[1].value, "7");
    assert_string_equal(kv_get(&l, "K"), "upper");
    assert_string_equal(kv_get(&l, ""), "empty key");
    assert_string_equal(kv_get(&l, "nullv"), "");
    assert_string_equal(kv_get(&l, "emptyv"), "");
    assert_string_equal(kv_get(&l, "prefix"), "v");
    assert_null(kv_get(&l, "prefix_of_longer"));
    assert_string_equal(kv_get(&l, "value"), "abc");
    assert_null(kv_get(&l, "kk"));
    assert_null(kv_get(&l, "k "));
    /* copies: the caller's buffers may go away */
    char key[8] = "tmp", val[8] = "orig";
    assert_int_equal(kv_add(&l, key, 3, val, 4), 0);
    memset(key, 'z', sizeof key - 1);
    memset(val, 'z', sizeof val - 1);
    assert_string_equal(kv_get(&l, "tmp"), "orig");
    kv_free(&l);
    assert_int_equal(l.n, 0);
    assert_null(kv_get(&l, "k"));
    kv_free(&l);   /* twice: harmless */
    /* reusable after kv_free */
    assert_int_equal(kv_add(&l, "a", 1, "b", 1), 0);
    assert_string_equal(kv_get(&l, "a"), "b");
    kv_free(&l);
}

/* Keys and values are C strings: a NUL byte inside the given length ends
 * them (libmicrohttpd hands query values over as C strings; a form value
 * with a NUL in it is cut there). The limits apply to the lengths given. */
static void test_kv_embedded_nul(void **state)
{
    kv_list l = {0};
    assert_int_equal(kv_add(&l, "a\0b", 3, "x\0y", 3), 0);
    assert_string_equal(l.items[0].key, "a");
    assert_string_equal(l.items[0].value, "x");
    assert_string_equal(kv_get(&l, "a"), "x");
    assert_string_equal(kv_get(&l, "a\0b"), "x");   /* the same C string as "a" */
    char big[HTTP_MAX_FIELD + 2];
    memset(big, 0, sizeof big);
    /* all NULs: an empty value, but the declared length still counts */
    assert_int_equal(kv_add(&l, "z", 1, big, HTTP_MAX_FIELD + 1), MS_ETOOBIG);
    assert_int_equal(kv_add(&l, "z", 1, big, HTTP_MAX_FIELD), 0);
    assert_string_equal(kv_get(&l, "z"), "");
    kv_free(&l);
}

static void test_kv_limits(void **state)
{
    kv_list l = {0};
    char key[200], *val = malloc(HTTP_MAX_FIELD + 2);
    assert_non_null(val);
    memset(key, 'k', sizeof key);
    memset(val, 'v', HTTP_MAX_FIELD + 2);

    /* key: 128 bytes at most */
    assert_int_equal(kv_add(&l, key, 129, "x", 1), MS_ETOOBIG);
    assert_int_equal(l.n, 0);
    assert_int_equal(l.overflow, 1);
    l.overflow = 0;
    assert_int_equal(kv_add(&l, key, 128, "x", 1), 0);
    assert_int_equal(strlen(l.items[0].key), 128);
    /* value: HTTP_MAX_FIELD bytes at most */
    assert_int_equal(kv_add(&l, "v", 1, val, HTTP_MAX_FIELD + 1), MS_ETOOBIG);
    assert_int_equal(l.overflow, 1);
    assert_int_equal(l.n, 1);
    assert_int_equal(kv_add(&l, "v", 1, val, SIZE_MAX), MS_ETOOBIG);
    assert_int_equal(kv_add(&l, key, SIZE_MAX, "x", 1), MS_ETOOBIG);
    assert_int_equal(l.n, 1);
    assert_int_equal(kv_add(&l, "v", 1, val, HTTP_MAX_FIELD), 0);
    assert_int_equal(strlen(kv_get(&l, "v")), HTTP_MAX_FIELD);
    /* count: HTTP_MAX_ARGS at most; the list is unchanged by a refused add */
    char name[16];
    for (int i = l.n; i < HTTP_MAX_ARGS; i++) {
        snprintf(name, sizeof name, "f%d", i);
        assert_int_equal(kv_add(&l, name, strlen(name), name, strlen(name)), 0);
    }
    assert_int_equal(l.n, HTTP_MAX_ARGS);
    l.overflow = 0;
    assert_int_equal(kv_add(&l, "one_more", 8, "x", 1), MS_ETOOBIG);
    assert_int_equal(kv_add(&l, "", 0, "", 0), MS_ETOOBIG);
    assert_int_equal(l.n, HTTP_MAX_ARGS);
    assert_int_equal(l.overflow, 1);
    assert_null(kv_get(&l, "one_more"));
    snprintf(name, sizeof name, "f%d", HTTP_MAX_ARGS - 1);
    assert_string_equal(kv_get(&l, name), name);
    kv_free(&l);
    assert_int_equal(l.n, 0);
    free(val);
}

static void test_req_param_form_then_query(void **state)
{
    http_request *r = calloc(1, sizeof *r);
    assert_non_null(r);
    assert_null(req_param(r, "k"));
    assert_int_equal(kv_add(&r->args, "k", 1, "3", 1), 0);
    assert_int_equal(kv_add(&r->args, "only_query", 10, "q", 1), 0);
    assert_int_equal(kv_add(&r->args, "empty_form", 10, "from query", 10), 0);
    assert_string_equal(req_param(r, "k"), "3");
    assert_int_equal(kv_add(&r->form, "k", 1, "5", 1), 0);
    assert_int_equal(kv_add(&r->form, "only_form", 9, "f", 1), 0);
    assert_int_equal(kv_add(&r->form, "empty_form", 10, "", 0), 0);
    assert_string_equal(req_param(r, "k"), "5");                 /* form field first */
    assert_string_equal(req_param(r, "only_query"), "q");
    assert_string_equal(req_param(r, "only_form"), "f");
    assert_string_equal(req_param(r, "empty_form"), "");         /* given empty: no fallback */
    assert_null(req_param(r, "absent"));
    assert_null(req_param(r, ""));
    kv_free(&r->args);
    kv_free(&r->form);
    free(r);
}

/* ================================================================ replies */

/* Parses an error reply and checks its exact shape. Returns the message
 * (a copy the caller frees). */
static char *check_error_reply(const http_reply *rep, unsigned status, const char *code)
{
    assert_int_equal(rep->status, status);
    assert_string_equal(rep->content_type, "application/json");
    assert_non_null(rep->body);
    assert_int_equal(rep->len, strlen(rep->body));
    /* JSON_ENSURE_ASCII and escaping: no raw control or non-ASCII byte */
    for (size_t i = 0; i < rep->len; i++) {
        unsigned char ch = (unsigned char)rep->body[i];
        if (ch < 0x20 || ch >= 0x80) {
            print_error("raw byte 0x%02x at %zu of %s\n", ch, i, rep->body);
            fail();
        }
    }
    json_error_t je;
    json_t *doc = json_loadb(rep->body, rep->len, JSON_REJECT_DUPLICATES, &je);
    if (!doc) {
        print_error("not JSON (%s): %s\n", je.text, rep->body);
        fail();
    }
    assert_true(json_is_object(doc));
    assert_int_equal(json_object_size(doc), 1);
    json_t *e = json_object_get(doc, "error");
    assert_true(json_is_object(e));
    assert_int_equal(json_object_size(e), 2);
    assert_true(json_is_string(json_object_get(e, "code")));
    assert_true(json_is_string(json_object_get(e, "message")));
    assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    char *msg = strdup(json_string_value(json_object_get(e, "message")));
    assert_int_equal(strlen(msg), json_string_length(json_object_get(e, "message")));
    json_decref(doc);
    assert_non_null(msg);
    return msg;
}

static void test_reply_init_and_json(void **state)
{
    http_reply rep;
    memset(&rep, 0x77, sizeof rep);
    reply_init(&rep);
    assert_int_equal(rep.status, 0);
    assert_null(rep.body);
    assert_int_equal(rep.len, 0);
    assert_string_equal(rep.cache, "no-store");
    assert_int_equal(rep.retry_after, 0);
    assert_null(rep.allow);
    assert_string_equal(rep.etag, "");

    reply_json(&rep, 201, json_pack("{s:I,s:b,s:s,s:f}", "id", (json_int_t)INT64_MAX,
                                    "created", 1, "url", "/api/images/1", "score",
                                    0.75964081234));
    assert_int_equal(rep.status, 201);
    assert_string_equal(rep.content_type, "application/json");
    assert_false(rep.body_static);
    /* compact, keys in insertion order, 7 significant digits for reals */
    assert_string_equal(rep.body, "{\"id\":9223372036854775807,\"created\":true,"
                                  "\"url\":\"/api/images/1\",\"score\":0.7596408}");
    assert_int_equal(rep.len, strlen(rep.body));
    assert_int_equal(rep.retry_after, 0);

    /* replacing a body frees the old one (ASan would see a leak) */
    reply_json(&rep, 200, json_pack("{s:s}", "t", "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\xa9\xbb"));
    assert_string_equal(rep.body, "{\"t\":\"caf\\u00E9 \\u2713 \\uD83E\\uDE7B\"}");
    assert_int_equal(rep.status, 200);

    /* no document (out of memory building it): a static 503 */
    reply_json(&rep, 200, NULL);
    char *msg = check_error_reply(&rep, 503, "out_of_memory");
    free(msg);
    assert_true(rep.body_static);
    assert_int_equal(rep.retry_after, 1);
    reply_free(&rep);   /* must not free the static body */
    assert_null(rep.body);
    assert_int_equal(rep.len, 0);
    reply_free(&rep);
}

static void test_json_text(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"", ""},
        {"plain", "plain"},
        {"caf\xc3\xa9", "caf\xc3\xa9"},                    /* valid UTF-8 kept */
        {"\xe2\x9c\x93 \xf0\x9f\xa9\xbb", "\xe2\x9c\x93 \xf0\x9f\xa9\xbb"},
        {"\x01\x1f\x7f\t\n", "\x01\x1f\x7f\t\n"},          /* kept; escaped on output */
        {"ok\xff\xfe end", "ok?? end"},                    /* invalid: every byte >= 0x80 is '?' */
        {"caf\xc3\xa9 \xff", "caf?? ?"},
        {"\xc0\xaf", "??"},                                /* overlong '/' */
        {"\xed\xa0\x80", "???"},                           /* UTF-16 surrogate */
        {"\xf4\x90\x80\x80", "????"},                      /* above U+10FFFF */
        {"\xe2\x82", "??"},                                /* truncated sequence */
        {"a\x80z", "a?z"},                                 /* lone continuation byte */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *j = json_text(cases[i].in);
        assert_non_null(j);
        assert_true(json_is_string(j));
        assert_string_equal(json_string_value(j), cases[i].out);
        json_decref(j);
    }
    json_t *n = json_text(NULL);
    assert_true(json_is_null(n));
    json_decref(n);
}

static void test_reply_error_shape_and_escaping(void **state)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"no such image 42", "no such image 42"},
        {"he said \"hi\" \\ and \\\"", "he said \"hi\" \\ and \\\""},
        {"}\"},\"x\":{\"", "}\"},\"x\":{\""},                        /* JSON injection attempt */
        {"ctl \x01\x02\x1b[31m\r\n\t\b\f\x7f end", "ctl \x01\x02\x1b[31m\r\n\t\b\f\x7f end"},
        {"caf\xc3\xa9 \xe2\x9c\x93", "caf\xc3\xa9 \xe2\x9c\x93"},
        {"bad \xff\xfe utf8", "bad ?? utf8"},
        {"mixed caf\xc3\xa9 \xc0\xaf", "mixed caf?? ??"},
        {"%s%n%d%%", "%s%n%d%%"},                                  /* passed as an argument */
        {"</script><script>alert(1)</script>", "</script><script>alert(1)</script>"},
        {"", ""},
    };
    http_reply rep;
    reply_init(&rep);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        reply_error(&rep, 404, "not_found", "%s", cases[i].in);
        char *msg = check_error_reply(&rep, 404, "not_found");
        assert_string_equal(msg, cases[i].want);
        assert_int_equal(rep.retry_after, 0);
        free(msg);
    }
    /* the format itself works */
    reply_error(&rep, 400, "invalid_argument", "k must be from %d to %d, got '%.5s'", 1, 1000,
                "123456789");
    char *msg = check_error_reply(&rep, 400, "invalid_argument");
    assert_string_equal(msg, "k must be from 1 to 1000, got '12345'");
    free(msg);

    /* a long message is cut, still valid JSON */
    char *big = malloc(100000);
    assert_non_null(big);
    memset(big, 'a', 99999);
    big[99999] = '\0';
    big[0] = '"';
    reply_error(&rep, 400, "bad_request", "%s", big);
    msg = check_error_reply(&rep, 400, "bad_request");
    assert_true(strlen(msg) > 100 && strlen(msg) < 1024);
    assert_int_equal(msg[0], '"');
    free(msg);
    /* cut inside a multi-byte character: the partial character is dropped,
     * the whole ones before it are kept (not replaced by '?') */
    for (size_t i = 0; i + 2 < 99999; i += 2)
        memcpy(big + i, "\xc3\xa9", 2);
    big[99998] = '\0';
    for (int shift = 0; shift < 3; shift++) {
        reply_error(&rep, 400, "bad_request", "%.*s%s", shift, "xx", big);
        msg = check_error_reply(&rep, 400, "bad_request");
        assert_true(strlen(msg) > 100 && strlen(msg) < 1024);
        assert_null(strchr(msg, '?'));
        assert_int_equal(strlen(msg) % 2, (size_t)shift % 2);
        free(msg);
    }
    free(big);

    /* Retry-After on 429 and 503 only; an existing one is kept */
    reply_error(&rep, 429, "busy", "too many uploads");
    free(check_error_reply(&rep, 429, "busy"));
    assert_int_equal(rep.retry_after, 1);
    rep.retry_after = 7;
    reply_error(&rep, 503, "busy", "queue full");
    free(check_error_reply(&rep, 503, "busy"));
    assert_int_equal(rep.retry_after, 7);
    reply_free(&rep);
    reply_init(&rep);
    reply_error(&rep, 500, "internal_error", "x");
    free(check_error_reply(&rep, 500, "internal_error"));
    assert_int_equal(rep.retry_after, 0);
    assert_string_equal(rep.cache, "no-store");
    reply_free(&rep);
}

/* docs/api.md, "Errors": every MS_E* code, its HTTP status and API code. */
static const struct {
    int code;
    unsigned status;
    const char *name;
} ms_codes[] = {
    {MS_EINVAL, 400, "invalid_argument"},
    {MS_EFORMAT, 400, "bad_format"},
    {MS_ENOTFOUND, 404, "not_found"},
    {MS_ECONFLICT, 409, "conflict"},
    {MS_ETOOBIG, 413, "too_large"},
    {MS_EUNSUPPORTED, 415, "unsupported"},
    {MS_EBUSY, 503, "busy"},
    {MS_ENOMEM, 503, "out_of_memory"},   /* not the client's fault, retry later */
    {MS_EIO, 500, "io_error"},
    {MS_EDB, 500, "database_error"},
    {MS_EINTERNAL, 500, "internal_error"},
    {MS_EINTR, 503, "interrupted"},
    {MS_ENOTIMAGE, 415, "not_an_image"},
};
#define N_MS_CODES (sizeof ms_codes / sizeof ms_codes[0])

static void test_http_status_for_every_code(void **state)
{
    /* the table above covers every code of err.h */
    int seen[-MS_ELAST + 1];
    memset(seen, 0, sizeof seen);
    for (size_t i = 0; i < N_MS_CODES; i++) {
        assert_true(ms_codes[i].code <= -1 && ms_codes[i].code >= MS_ELAST);
        seen[-ms_codes[i].code]++;
    }
    for (int c = 1; c <= -MS_ELAST; c++)
        assert_int_equal(seen[c], 1);
    for (size_t i = 0; i < N_MS_CODES; i++) {
        assert_int_equal(http_status_for(ms_codes[i].code), ms_codes[i].status);
        assert_string_equal(ms_code_name(ms_codes[i].code), ms_codes[i].name);
    }
    /* no code that is not an error is ever a success or the client's fault */
    static const int others[] = {MS_OK, 1, 200, MS_ELAST - 1, -100, INT32_MIN, INT32_MAX};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
        assert_int_equal(http_status_for(others[i]), 500);
}

static void test_reply_ms_err(void **state)
{
    http_reply rep;
    reply_init(&rep);
    for (size_t i = 0; i < N_MS_CODES; i++) {
        ms_err err = {0};
        ms_err_set(&err, ms_codes[i].code, "image %d: \"%s\" \xff", 12, "x\ny");
        reply_ms_err(&rep, &err);
        char *msg = check_error_reply(&rep, ms_codes[i].status, ms_codes[i].name);
        assert_string_equal(msg, "image 12: \"x?y\" ?"); /* ms_err keeps a message on one line */
        free(msg);
        assert_int_equal(rep.retry_after, ms_codes[i].status == 503 ? 1u : 0u);
        reply_free(&rep);
        reply_init(&rep);
    }
    /* an empty ms_err (a caller forgot to fill it): 500, never 200 */
    ms_err none = {0};
    reply_ms_err(&rep, &none);
    char *msg = check_error_reply(&rep, 500, "internal_error");
    assert_string_equal(msg, "internal error");
    free(msg);
    /* a code with no message */
    ms_err bare = {.code = MS_ENOTFOUND};
    reply_ms_err(&rep, &bare);
    msg = check_error_reply(&rep, 404, "not_found");
    assert_string_equal(msg, "internal error");
    free(msg);
    /* a full 511-byte message of hostile bytes */
    ms_err full = {.code = MS_EFORMAT};
    for (size_t i = 0; i < sizeof full.msg - 1; i++)
        full.msg[i] = (char)(1 + (i * 37) % 255);
    full.msg[sizeof full.msg - 1] = '\0';
    reply_ms_err(&rep, &full);
    free(check_error_reply(&rep, 400, "bad_format"));
    reply_free(&rep);
}

/* ================================================================ metrics */

/* A small parser of the Prometheus text format 0.0.4, strict enough to
 * catch what a scraper would reject or misread. */
typedef struct prom_sample {
    char name[128];
    char labels[256];    /* the labels other than le, as written, in order */
    char le[32];         /* "" when absent */
    double value;
} prom_sample;

typedef struct prom_family {
    char name[128];
    char type[16];
} prom_family;

typedef struct prom {
    prom_sample *s;
    size_t n, cap;
    prom_family fam[64];
    size_t n_fam;
} prom;

static int metric_name_ok(const char *s, size_t n)
{
    if (!n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
            return 0;
    }
    return 1;
}

static int parse_value(const char *s, double *v)
{
    if (!strcmp(s, "+Inf"))
        return *v = INFINITY, 0;
    if (!strcmp(s, "-Inf"))
        return *v = -INFINITY, 0;
    if (!strcmp(s, "NaN"))
        return *v = NAN, 0;
    char *end = NULL;
    if (!*s || !((*s >= '0' && *s <= '9') || *s == '-' || *s == '+' || *s == '.'))
        return -1;
    *v = strtod(s, &end);
    return (*end || isnan(*v) || isinf(*v)) ? -1 : 0;
}

static const prom_family *prom_family_of(const prom *p, const char *name)
{
    for (size_t i = 0; i < p->n_fam; i++)
        if (!strcmp(p->fam[i].name, name))
            return &p->fam[i];
    return NULL;
}

/* The family a sample name belongs to under the current TYPE. */
static int sample_in_family(const char *name, const prom_family *f, int has_le)
{
    size_t n = strlen(f->name);
    if (strncmp(name, f->name, n))
        return 0;
    const char *suffix = name + n;
    if (!strcmp(f->type, "histogram")) {
        if (!strcmp(suffix, "_bucket"))
            return has_le;
        return !has_le && (!strcmp(suffix, "_sum") || !strcmp(suffix, "_count"));
    }
    return !has_le && !*suffix;
}

/* Parses `{a="x",b="y"}`: returns the bytes used, or 0 when malformed. */
static size_t parse_labels(const char *s, prom_sample *out)
{
    size_t i = 1, used = 0;
    out->labels[0] = out->le[0] = '\0';
    if (s[i] == '}')
        return i + 1;
    for (;;) {
        size_t start = i;
        while (metric_name_ok(s + start, i - start + 1) && s[i] != ':')
            i++;
        if (i == start || s[i] != '=' || s[i + 1] != '"')
            return 0;
        char lname[64];
        if (i - start >= sizeof lname)
            return 0;
        memcpy(lname, s + start, i - start);
        lname[i - start] = '\0';
        i += 2;
        char value[128];
        size_t vn = 0;
        for (; s[i] != '"'; i++) {
            if (!s[i] || s[i] == '\n' || vn + 2 >= sizeof value)
                return 0;
            if (s[i] == '\\') {
                i++;
                if (s[i] != '\\' && s[i] != '"' && s[i] != 'n')
                    return 0;
            }
            value[vn++] = s[i];
        }
        value[vn] = '\0';
        i++;
        if (!strcmp(lname, "le")) {
            if (out->le[0] || vn >= sizeof out->le)
                return 0;
            memcpy(out->le, value, vn + 1);
        } else {
            int w = snprintf(out->labels + used, sizeof out->labels - used, "%s%s=\"%s\"",
                             used ? "," : "", lname, value);
            if (w < 0 || (size_t)w >= sizeof out->labels - used)
                return 0;
            used += (size_t)w;
        }
        if (s[i] == '}')
            return i + 1;
        if (s[i] != ',')
            return 0;
        i++;
    }
}

/* Returns NULL when the text is valid, else what is wrong (static). */
static const char *prom_parse(const char *text, size_t len, prom *p)
{
    static char why[1024];
    memset(p, 0, sizeof *p);
    if (strlen(text) != len)
        return "NUL byte in the text";
    if (!len || text[len - 1] != '\n')
        return "the text does not end with a newline";
    const prom_family *cur = NULL;
    int need_type = 0;
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        size_t ll = (size_t)(nl - line);
        char buf[512];
        if (ll == 0 || ll >= sizeof buf)
            return "empty or overlong line";
        memcpy(buf, line, ll);
        buf[ll] = '\0';
        line = nl + 1;
        for (size_t i = 0; i < ll; i++)
            if ((unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] >= 0x7f)
                return snprintf(why, sizeof why, "control or non-ASCII byte: %s", buf), why;
        if (!strncmp(buf, "# HELP ", 7)) {
            const char *name = buf + 7, *sp = strchr(name, ' ');
            if (need_type || !sp || !metric_name_ok(name, (size_t)(sp - name)) || !sp[1])
                return snprintf(why, sizeof why, "bad HELP: %s", buf), why;
            if (p->n_fam == sizeof p->fam / sizeof p->fam[0])
                return "too many families";
            prom_family *f = &p->fam[p->n_fam];
            snprintf(f->name, sizeof f->name, "%.*s", (int)(sp - name), name);
            if (prom_family_of(p, f->name))
                return snprintf(why, sizeof why, "family %s twice", f->name), why;
            p->n_fam++;
            cur = f;
            need_type = 1;
        } else if (!strncmp(buf, "# TYPE ", 7)) {
            const char *name = buf + 7, *sp = strchr(name, ' ');
            if (!need_type || !sp || strncmp(name, cur->name, (size_t)(sp - name)) ||
                strlen(cur->name) != (size_t)(sp - name))
                return snprintf(why, sizeof why, "TYPE without its HELP: %s", buf), why;
            const char *type = sp + 1;
            if (strcmp(type, "counter") && strcmp(type, "gauge") && strcmp(type, "histogram"))
                return snprintf(why, sizeof why, "bad type: %s", buf), why;
            snprintf(p->fam[p->n_fam - 1].type, sizeof p->fam[0].type, "%s", type);
            need_type = 0;
        } else if (buf[0] == '#') {
            return snprintf(why, sizeof why, "stray comment: %s", buf), why;
        } else {
            if (!cur || need_type)
                return snprintf(why, sizeof why, "sample before HELP/TYPE: %s", buf), why;
            if (p->n == p->cap) {
                p->cap = p->cap ? 2 * p->cap : 256;
                p->s = realloc(p->s, p->cap * sizeof *p->s);
                assert_non_null(p->s);
            }
            prom_sample *s = &p->s[p->n];
            size_t nl_name = strcspn(buf, "{ ");
            if (!metric_name_ok(buf, nl_name) || nl_name >= sizeof s->name)
                return snprintf(why, sizeof why, "bad sample name: %s", buf), why;
            snprintf(s->name, sizeof s->name, "%.*s", (int)nl_name, buf);
            size_t i = nl_name;
            s->labels[0] = s->le[0] = '\0';
            if (buf[i] == '{') {
                size_t used = parse_labels(buf + i, s);
                if (!used)
                    return snprintf(why, sizeof why, "bad labels: %s", buf), why;
                i += used;
            }
            if (buf[i] != ' ' || parse_value(buf + i + 1, &s->value))
                return snprintf(why, sizeof why, "bad value: %s", buf), why;
            if (!sample_in_family(s->name, cur, s->le[0] != '\0'))
                return snprintf(why, sizeof why, "sample outside its family %s: %s",
                                cur->name, buf), why;
            if (!strcmp(cur->type, "counter") && s->value < 0)
                return snprintf(why, sizeof why, "negative counter: %s", buf), why;
            for (size_t k = 0; k < p->n; k++)
                if (!strcmp(p->s[k].name, s->name) && !strcmp(p->s[k].labels, s->labels) &&
                    !strcmp(p->s[k].le, s->le))
                    return snprintf(why, sizeof why, "series twice: %s", buf), why;
            p->n++;
        }
    }
    if (need_type)
        return "HELP without TYPE at the end";
    return NULL;
}

static void prom_free(prom *p)
{
    free(p->s);
    p->s = NULL;
}

/* The value of a series, or NAN when absent. */
static double prom_get(const prom *p, const char *name, const char *labels, const char *le)
{
    for (size_t i = 0; i < p->n; i++)
        if (!strcmp(p->s[i].name, name) && !strcmp(p->s[i].labels, labels) &&
            !strcmp(p->s[i].le, le ? le : ""))
            return p->s[i].value;
    return NAN;
}

/* Every histogram series: buckets in increasing le, cumulative, the last
 * one +Inf and equal to _count; _sum present. Returns NULL or the problem. */
static const char *prom_check_histograms(const prom *p)
{
    static char why[1024];
    for (size_t f = 0; f < p->n_fam; f++) {
        if (strcmp(p->fam[f].type, "histogram"))
            continue;
        char bucket[160], sum[160], count[160];
        snprintf(bucket, sizeof bucket, "%s_bucket", p->fam[f].name);
        snprintf(sum, sizeof sum, "%s_sum", p->fam[f].name);
        snprintf(count, sizeof count, "%s_count", p->fam[f].name);
        for (size_t c = 0; c < p->n; c++) {
            if (strcmp(p->s[c].name, count))
                continue;
            const char *labels = p->s[c].labels;
            double prev_le = -INFINITY, prev_v = 0, last_v = NAN;
            int n_buckets = 0, saw_inf = 0;
            for (size_t b = 0; b < p->n; b++) {
                if (strcmp(p->s[b].name, bucket) || strcmp(p->s[b].labels, labels))
                    continue;
                double le;
                if (saw_inf || parse_value(p->s[b].le, &le) || le <= prev_le ||
                    p->s[b].value < prev_v)
                    return snprintf(why, sizeof why, "%s{%s}: bucket le=%s out of order",
                                    bucket, labels, p->s[b].le), why;
                saw_inf = isinf(le);
                prev_le = le;
                prev_v = last_v = p->s[b].value;
                n_buckets++;
            }
            if (!saw_inf || last_v != p->s[c].value)
                return snprintf(why, sizeof why, "%s{%s}: no +Inf bucket equal to _count",
                                bucket, labels), why;
            if (isnan(prom_get(p, sum, labels, NULL)))
                return snprintf(why, sizeof why, "%s{%s} missing", sum, labels), why;
            if (n_buckets < 2)
                return "histogram with no finite bucket";
        }
        for (size_t b = 0; b < p->n; b++)
            if (!strcmp(p->s[b].name, bucket) &&
                isnan(prom_get(p, count, p->s[b].labels, NULL)))
                return snprintf(why, sizeof why, "%s{%s} without _count", bucket,
                                p->s[b].labels), why;
    }
    return NULL;
}

static void render_and_parse(metrics *m, const metrics_gauges *g, prom *p)
{
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(metrics_render(m, g, &text, &len), 0);
    assert_non_null(text);
    const char *why = prom_parse(text, len, p);
    if (!why)
        why = prom_check_histograms(p);
    if (why) {
        print_error("invalid exposition: %s\n", why);
        free(text);
        fail();
    }
    free(text);
}

static const char *const families[][2] = {
    {"medsearch_http_requests_total", "counter"},
    {"medsearch_http_request_duration_seconds", "histogram"},
    {"medsearch_search_stage_seconds", "histogram"},
    {"medsearch_http_requests_in_flight", "gauge"},
    {"medsearch_http_upload_bytes", "gauge"},
    {"medsearch_queue_depth", "gauge"},
    {"medsearch_collection_images", "gauge"},
    {"medsearch_searches_total", "counter"},
    {"medsearch_ingests_total", "counter"},
    {"medsearch_embed_seconds_total", "counter"},
    {"medsearch_search_seconds_total", "counter"},
    {"medsearch_uptime_seconds", "gauge"},
};

static void test_metrics_empty(void **state)
{
    metrics *m = metrics_new();
    assert_non_null(m);
    metrics_gauges g = {0};
    prom p;
    render_and_parse(m, &g, &p);
    /* every documented family, with its type, even with no request yet */
    assert_int_equal(p.n_fam, sizeof families / sizeof families[0]);
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        const prom_family *f = prom_family_of(&p, families[i][0]);
        assert_non_null(f);
        assert_string_equal(f->type, families[i][1]);
    }
    for (size_t i = 0; i < p.n; i++)
        assert_true(p.s[i].value == 0);
    /* no request series yet; the four stage histograms with zero counts */
    assert_true(isnan(prom_get(&p, "medsearch_http_requests_total",
                               "route=\"none\",status=\"404\"", NULL)));
    static const char *const stages[] = {"decode", "embed", "index", "store"};
    for (size_t s = 0; s < 4; s++) {
        char l[64];
        snprintf(l, sizeof l, "stage=\"%s\"", stages[s]);
        assert_true(prom_get(&p, "medsearch_search_stage_seconds_count", l, NULL) == 0);
        assert_true(prom_get(&p, "medsearch_search_stage_seconds_bucket", l, "+Inf") == 0);
    }
    prom_free(&p);
    metrics_free(m);
    metrics_free(NULL);
}

static void test_metrics_exact_counts_and_buckets(void **state)
{
    metrics *m = metrics_new();
    assert_non_null(m);
    /* search: 0.5 ms, exactly 1 ms (le is inclusive), just over 1 ms, 30 ms, 20 s */
    metrics_request(m, ROUTE_SEARCH, 200, 0.5);
    metrics_request(m, ROUTE_SEARCH, 200, 1.0);
    metrics_request(m, ROUTE_SEARCH, 200, 1.0001);
    metrics_request(m, ROUTE_SEARCH, 503, 30.0);
    metrics_request(m, ROUTE_SEARCH, 200, 20000.0);
    metrics_request(m, ROUTE_IMAGE, 304, 0.2);
    metrics_request(m, ROUTE_IMAGE, 404, 0.3);
    metrics_request(m, ROUTE_NONE, 404, 0.1);
    metrics_request(m, ROUTE_NONE, 418, 0.1);        /* not a listed status: "other" */
    metrics_request(m, ROUTE_NONE, 302, 0.1);
    metrics_request(m, (route_id)-3, 200, 0.1);      /* out of range: counted as none */
    metrics_request(m, (route_id)ROUTE_COUNT, 200, 0.1);
    metrics_request(m, (route_id)9999, 0, 0.1);
    engine_timing t1 = {.decode_ms = 3, .embed_ms = 10, .index_ms = 0.2, .store_ms = 1,
                        .total_ms = 14.2};
    engine_timing t2 = {.decode_ms = 5000, .embed_ms = 40, .index_ms = 0.9, .store_ms = 2.5,
                        .total_ms = 5043.4};
    metrics_engine(m, &t1);
    metrics_engine(m, &t2);
    metrics_gauges g = {.in_flight = 3, .upload_bytes = 1048576, .queue_depth = 2,
                        .images = 750, .searches = 12, .ingests = 4,
                        .embed_ms_total = 118.2, .search_ms_total = 1500, .uptime_s = 63.25};
    prom p;
    render_and_parse(m, &g, &p);
    const char *req = "medsearch_http_requests_total";
    assert_true(prom_get(&p, req, "route=\"search\",status=\"200\"", NULL) == 4);
    assert_true(prom_get(&p, req, "route=\"search\",status=\"503\"", NULL) == 1);
    assert_true(prom_get(&p, req, "route=\"image\",status=\"304\"", NULL) == 1);
    assert_true(prom_get(&p, req, "route=\"image\",status=\"404\"", NULL) == 1);
    assert_true(prom_get(&p, req, "route=\"none\",status=\"404\"", NULL) == 1);
    assert_true(prom_get(&p, req, "route=\"none\",status=\"other\"", NULL) == 3);
    assert_true(prom_get(&p, req, "route=\"none\",status=\"200\"", NULL) == 2);
    assert_true(isnan(prom_get(&p, req, "route=\"health\",status=\"200\"", NULL)));
    size_t n_req = 0;
    double total = 0;
    for (size_t i = 0; i < p.n; i++)
        if (!strcmp(p.s[i].name, req))
            n_req++, total += p.s[i].value;
    assert_int_equal(n_req, 7);
    assert_true(total == 13);

    const char *h = "medsearch_http_request_duration_seconds_bucket";
    const char *search = "route=\"search\"";
    assert_true(prom_get(&p, h, search, "0.001") == 2);
    assert_true(prom_get(&p, h, search, "0.0025") == 3);
    assert_true(prom_get(&p, h, search, "0.025") == 3);
    assert_true(prom_get(&p, h, search, "0.05") == 4);
    assert_true(prom_get(&p, h, search, "10") == 4);
    assert_true(prom_get(&p, h, search, "+Inf") == 5);
    assert_true(prom_get(&p, "medsearch_http_request_duration_seconds_count", search, NULL) == 5);
    double sum = prom_get(&p, "medsearch_http_request_duration_seconds_sum", search, NULL);
    assert_true(fabs(sum - (0.5 + 1.0 + 1.0001 + 30.0 + 20000.0) / 1000.0) < 2e-6);
    assert_true(prom_get(&p, "medsearch_http_request_duration_seconds_count",
                         "route=\"none\"", NULL) == 6);
    /* no latency series for a route that saw no request */
    assert_true(isnan(prom_get(&p, "medsearch_http_request_duration_seconds_count",
                               "route=\"health\"", NULL)));

    const char *st = "medsearch_search_stage_seconds_bucket";
    assert_true(prom_get(&p, st, "stage=\"decode\"", "0.005") == 1);
    assert_true(prom_get(&p, st, "stage=\"decode\"", "5") == 2);   /* 5 s: le is inclusive */
    assert_true(prom_get(&p, st, "stage=\"decode\"", "2.5") == 1);
    assert_true(prom_get(&p, st, "stage=\"embed\"", "0.01") == 1);
    assert_true(prom_get(&p, st, "stage=\"embed\"", "0.05") == 2);
    assert_true(prom_get(&p, st, "stage=\"index\"", "0.001") == 2);
    assert_true(prom_get(&p, st, "stage=\"store\"", "0.001") == 1);
    assert_true(prom_get(&p, st, "stage=\"store\"", "0.0025") == 2);
    assert_true(prom_get(&p, st, "stage=\"store\"", "0.005") == 2);
    assert_true(prom_get(&p, "medsearch_search_stage_seconds_count", "stage=\"embed\"", NULL) == 2);
    assert_true(fabs(prom_get(&p, "medsearch_search_stage_seconds_sum", "stage=\"decode\"", NULL) -
                     5.003) < 2e-6);

    assert_true(prom_get(&p, "medsearch_http_requests_in_flight", "", NULL) == 3);
    assert_true(prom_get(&p, "medsearch_http_upload_bytes", "", NULL) == 1048576);
    assert_true(prom_get(&p, "medsearch_queue_depth", "", NULL) == 2);
    assert_true(prom_get(&p, "medsearch_collection_images", "", NULL) == 750);
    assert_true(prom_get(&p, "medsearch_searches_total", "", NULL) == 12);
    assert_true(prom_get(&p, "medsearch_ingests_total", "", NULL) == 4);
    assert_true(fabs(prom_get(&p, "medsearch_embed_seconds_total", "", NULL) - 0.1182) < 1e-9);
    assert_true(prom_get(&p, "medsearch_search_seconds_total", "", NULL) == 1.5);
    assert_true(prom_get(&p, "medsearch_uptime_seconds", "", NULL) == 63.25);
    prom_free(&p);
    metrics_free(m);
}

/* Every route with every status: the text outgrows its first buffer. */
static void test_metrics_every_slot(void **state)
{
    static const unsigned statuses[] = {200, 201, 204, 304, 400, 401, 403, 404, 405, 409,
                                        413, 415, 422, 429, 431, 500, 503, 299};
    metrics *m = metrics_new();
    assert_non_null(m);
    for (int r = 0; r < ROUTE_COUNT; r++)
        for (size_t s = 0; s < sizeof statuses / sizeof statuses[0]; s++)
            for (int k = 0; k <= r; k++)
                metrics_request(m, (route_id)r, statuses[s], (double)(k * 100 + s));
    metrics_gauges g = {.in_flight = SIZE_MAX, .searches = UINT64_MAX, .uptime_s = 1e9};
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(metrics_render(m, &g, &text, &len), 0);
    assert_true(len > 16384);
    assert_int_equal(strlen(text), len);
    free(text);
    prom p;
    render_and_parse(m, &g, &p);
    for (int r = 0; r < ROUTE_COUNT; r++) {
        char l[128];
        for (size_t s = 0; s + 1 < sizeof statuses / sizeof statuses[0]; s++) {
            snprintf(l, sizeof l, "route=\"%s\",status=\"%u\"", route_name((route_id)r),
                     statuses[s]);
            assert_true(prom_get(&p, "medsearch_http_requests_total", l, NULL) == r + 1);
        }
        snprintf(l, sizeof l, "route=\"%s\",status=\"other\"", route_name((route_id)r));
        assert_true(prom_get(&p, "medsearch_http_requests_total", l, NULL) == r + 1);
        snprintf(l, sizeof l, "route=\"%s\"", route_name((route_id)r));
        assert_true(prom_get(&p, "medsearch_http_request_duration_seconds_count", l, NULL) ==
                    18.0 * (r + 1));
    }
    assert_true(prom_get(&p, "medsearch_searches_total", "", NULL) == (double)UINT64_MAX);
    prom_free(&p);
    metrics_free(m);
}

#define MT_THREADS 8
#define MT_PER_THREAD 200000

typedef struct mt_arg {
    metrics *m;
    int t;
    pthread_barrier_t *go;   /* all writers start together: races are likely */
} mt_arg;

static const unsigned mt_statuses[] = {200, 404, 503, 418};

static void mt_pick(int t, int i, route_id *r, unsigned *status, double *ms)
{
    *r = (route_id)((t + i) % ROUTE_COUNT);
    *status = mt_statuses[(i / 3 + t) % 4];
    *ms = (double)((i * 7 + t) % 40);
}

static void *mt_writer(void *arg)
{
    mt_arg *a = arg;
    pthread_barrier_wait(a->go);
    for (int i = 0; i < MT_PER_THREAD; i++) {
        route_id r;
        unsigned status;
        double ms;
        mt_pick(a->t, i, &r, &status, &ms);
        metrics_request(a->m, r, status, ms);
        if (i % 10 == 0) {
            engine_timing t = {.decode_ms = 1, .embed_ms = ms, .index_ms = 0.1, .store_ms = 2};
            metrics_engine(a->m, &t);
        }
    }
    return NULL;
}

typedef struct mt_reader {
    metrics *m;
    _Atomic int *stop;
    int renders;
    char why[1024];
} mt_reader;

/* Renders while writers run: each snapshot must be consistent on its own. */
static void *mt_render(void *arg)
{
    mt_reader *rd = arg;
    metrics_gauges g = {0};
    while ((!*rd->stop || rd->renders < 3) && !rd->why[0]) {
        char *text = NULL;
        size_t len = 0;
        if (metrics_render(rd->m, &g, &text, &len)) {
            snprintf(rd->why, sizeof rd->why, "metrics_render failed");
            break;
        }
        prom p;
        const char *why = prom_parse(text, len, &p);
        if (!why)
            why = prom_check_histograms(&p);
        if (why)
            snprintf(rd->why, sizeof rd->why, "%s", why);
        prom_free(&p);
        free(text);
        rd->renders++;
    }
    return NULL;
}

static void test_metrics_concurrent(void **state)
{
    metrics *m = metrics_new();
    assert_non_null(m);
    pthread_t th[MT_THREADS], reader;
    mt_arg args[MT_THREADS];
    _Atomic int stop = 0;
    mt_reader rd = {.m = m, .stop = &stop};
    pthread_barrier_t go;
    assert_int_equal(pthread_barrier_init(&go, NULL, MT_THREADS), 0);
    assert_int_equal(pthread_create(&reader, NULL, mt_render, &rd), 0);
    for (int t = 0; t < MT_THREADS; t++) {
        args[t] = (mt_arg){m, t, &go};
        assert_int_equal(pthread_create(&th[t], NULL, mt_writer, &args[t]), 0);
    }
    for (int t = 0; t < MT_THREADS; t++)
        pthread_join(th[t], NULL);
    stop = 1;
    pthread_join(reader, NULL);
    pthread_barrier_destroy(&go);
    if (rd.why[0]) {
        print_error("a render during writes was invalid: %s\n", rd.why);
        fail();
    }
    assert_true(rd.renders >= 1);

    /* the same requests counted in this thread */
    static double want[ROUTE_COUNT][4], want_n[ROUTE_COUNT], want_sum[ROUTE_COUNT];
    memset(want, 0, sizeof want);
    memset(want_n, 0, sizeof want_n);
    memset(want_sum, 0, sizeof want_sum);
    for (int t = 0; t < MT_THREADS; t++)
        for (int i = 0; i < MT_PER_THREAD; i++) {
            route_id r;
            unsigned status;
            double ms;
            mt_pick(t, i, &r, &status, &ms);
            int s = (i / 3 + t) % 4;
            want[r][s]++;
            want_n[r]++;
            want_sum[r] += ms / 1000.0;
        }
    metrics_gauges g = {0};
    prom p;
    render_and_parse(m, &g, &p);
    double all = 0;
    for (int r = 0; r < ROUTE_COUNT; r++) {
        char l[128];
        for (int s = 0; s < 4; s++) {
            if (mt_statuses[s] == 418)
                snprintf(l, sizeof l, "route=\"%s\",status=\"other\"", route_name((route_id)r));
            else
                snprintf(l, sizeof l, "route=\"%s\",status=\"%u\"", route_name((route_id)r),
                         mt_statuses[s]);
            double got = prom_get(&p, "medsearch_http_requests_total", l, NULL);
            if (got != want[r][s]) {
                print_error("%s: %.0f, want %.0f\n", l, got, want[r][s]);
                fail();
            }
            all += got;
        }
        snprintf(l, sizeof l, "route=\"%s\"", route_name((route_id)r));
        assert_true(prom_get(&p, "medsearch_http_request_duration_seconds_count", l, NULL) ==
                    want_n[r]);
        double sum = prom_get(&p, "medsearch_http_request_duration_seconds_sum", l, NULL);
        assert_true(fabs(sum - want_sum[r]) < 1e-5);
    }
    assert_true(all == (double)MT_THREADS * MT_PER_THREAD);
    assert_true(prom_get(&p, "medsearch_search_stage_seconds_count", "stage=\"embed\"", NULL) ==
                MT_THREADS * (MT_PER_THREAD / 10));
    prom_free(&p);
    metrics_free(m);
}

/* ================================================================= assets */

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    unsigned char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? 2 * cap : 65536;
            unsigned char *nb = realloc(buf, cap);
            assert_non_null(nb);
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (!got)
            break;
    }
    fclose(f);
    *len = n;
    return buf;
}

static void test_asset_page_files(void **state)
{
    static const struct {
        const char *path, *file, *mime;
    } want[] = {
        {"/", "web/index.html", "text/html; charset=utf-8"},
        {"/index.html", "web/index.html", "text/html; charset=utf-8"},
        {"/app.js", "web/app.js", "text/javascript; charset=utf-8"},
        {"/style.css", "web/style.css", "text/css; charset=utf-8"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        asset_ref a;
        memset(&a, 0, sizeof a);
        assert_int_equal(asset_find(want[i].path, &a), 0);
        assert_non_null(a.data);
        assert_string_equal(a.mime, want[i].mime);
        assert_int_equal(a.data[a.len], '\0');
        /* the ETag is the quoted first 128 bits of the content's SHA-256 */
        char hex[65], etag[40];
        ms_sha256_hex(a.data, a.len, hex);
        snprintf(etag, sizeof etag, "\"%.32s\"", hex);
        assert_string_equal(a.etag, etag);
        /* byte for byte the file in web/ (tests run from the repository root) */
        size_t flen = 0;
        unsigned char *file = read_file(want[i].file, &flen);
        if (!file) {
            print_error("cannot read %s: run from the repository root\n", want[i].file);
            fail();
        }
        assert_int_equal(flen, a.len);
        assert_memory_equal(file, a.data, flen);
        free(file);
    }
    asset_ref root, index;
    assert_int_equal(asset_find("/", &root), 0);
    assert_int_equal(asset_find("/index.html", &index), 0);
    assert_ptr_equal(root.data, index.data);
    assert_ptr_equal(root.etag, index.etag);
    /* every embedded file is reachable, with a known type and its own ETag */
    int n = 0;
    for (const web_asset *w = web_assets; w->name; w++, n++) {
        char path[300];
        snprintf(path, sizeof path, "/%s", w->name);
        asset_ref a;
        assert_int_equal(asset_find(path, &a), 0);
        assert_ptr_equal(a.data, w->data);
        assert_int_equal(a.len, w->len);
        assert_string_not_equal(a.mime, "application/octet-stream");
        for (const web_asset *o = web_assets; o < w; o++) {
            char opath[300];
            snprintf(opath, sizeof opath, "/%s", o->name);
            asset_ref b;
            assert_int_equal(asset_find(opath, &b), 0);
            assert_string_not_equal(a.etag, b.etag);
        }
    }
    assert_true(n >= 3);
}

static void test_asset_not_found(void **state)
{
    static const char *const paths[] = {
        "",
        "index.html",
        "app.js",
        "//",
        "//app.js",
        "/app.js/",
        "/app.js?v=1",
        "/app.js#x",
        "/app.js%00",
        "/app.js ",
        " /app.js",
        "/APP.JS",
        "/App.js",
        "/app.JS",
        "/app",
        "/.js",
        "/js",
        "/index.htm",
        "/index.html/",
        "/index",
        "/.",
        "/..",
        "/...",
        "/./app.js",
        "/../app.js",
        "/../web/app.js",
        "/web/app.js",
        "/web/",
        "/%2e%2e/web/app.js",
        "/%61pp.js",
        "/..%2fweb%2fapp.js",
        "/../../../../etc/passwd",
        "/etc/passwd",
        "/proc/self/environ",
        "/\\app.js",
        "/app.js\\",
        "/tools/embed_assets.c",
        "/Makefile",
        "/favicon.ico",
        "/robots.txt",
        "/api/search",
        "/metrics",
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        asset_ref a;
        memset(&a, 0, sizeof a);
        if (asset_find(paths[i], &a) != MS_ENOTFOUND) {
            print_error("asset_find('%s') found %zu bytes\n", paths[i], a.len);
            fail();
        }
        assert_null(a.data);
    }
    /* a megabyte-long name */
    size_t n = 1u << 20;
    char *p = malloc(n + 2);
    assert_non_null(p);
    p[0] = '/';
    memset(p + 1, 'a', n);
    memcpy(p + n - 2, ".js", 3);
    p[n + 1] = '\0';
    asset_ref a;
    assert_int_equal(asset_find(p, &a), MS_ENOTFOUND);
    free(p);
}

typedef struct asset_race {
    int ok;
    char etag[40];
} asset_race;

static void *asset_racer(void *arg)
{
    asset_race *r = arg;
    asset_ref a;
    r->ok = asset_find("/app.js", &a) == 0;
    if (r->ok)
        snprintf(r->etag, sizeof r->etag, "%s", a.etag);
    return NULL;
}

/* The ETags are computed once on first use: threads racing to it agree. */
static void test_asset_first_use_from_threads(void **state)
{
    pthread_t th[6];
    asset_race r[6];
    memset(r, 0, sizeof r);
    for (int i = 0; i < 6; i++)
        assert_int_equal(pthread_create(&th[i], NULL, asset_racer, &r[i]), 0);
    for (int i = 0; i < 6; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 6; i++) {
        assert_true(r[i].ok);
        assert_int_equal(strlen(r[i].etag), 34);
        assert_string_equal(r[i].etag, r[0].etag);
    }
}

/* ========================================================== listen address */

static void test_listen_loopback(void **state)
{
    static const struct {
        const char *spec;
        int want;   /* 1 loopback, 0 not, MS_EINVAL malformed */
    } cases[] = {
        /* loopback */
        {"127.0.0.1:8080", 1},
        {"127.0.0.1:0", 1},            /* port 0: any free one */
        {"127.0.0.1:65535", 1},
        {"127.0.0.1:1", 1},
        {"127.1.2.3:80", 1},           /* all of 127/8 */
        {"127.255.255.254:80", 1},
        {"127.0.0.0:80", 1},
        {"[::1]:8080", 1},
        {"[::1]:0", 1},
        {"[0:0:0:0:0:0:0:1]:80", 1},
        {"localhost:8080", 1},         /* the one name understood: 127.0.0.1 */
        {"8080", 1},                   /* a port alone: 127.0.0.1 */
        {"0", 1},
        {"127.0.0.1:080", 1},          /* leading zeros in a port are still decimal */
        /* not loopback: refused without a token */
        {"0.0.0.0:8080", 0},
        {":8080", 0},                  /* every interface */
        {":0", 0},
        {"[::]:8080", 0},
        {"[::0]:80", 0},
        {"10.0.0.1:80", 0},
        {"192.168.1.10:8080", 0},
        {"172.16.0.1:80", 0},
        {"8.8.8.8:53", 0},
        {"126.255.255.255:80", 0},
        {"128.0.0.1:80", 0},
        {"255.255.255.255:80", 0},
        {"[fe80::1]:80", 0},
        {"[2001:db8::1]:443", 0},
        {"[::2]:80", 0},
        {"[::ffff:127.0.0.1]:80", 0},  /* v4-mapped: conservatively not loopback */
        {"[::ffff:10.0.0.1]:80", 0},
        /* malformed */
        {"", MS_EINVAL},
        {":", MS_EINVAL},
        {"127.0.0.1", MS_EINVAL},      /* no port */
        {"127.0.0.1:", MS_EINVAL},
        {"127.0.0.1:65536", MS_EINVAL},
        {"127.0.0.1:99999999999999999999999", MS_EINVAL},
        {"127.0.0.1:-1", MS_EINVAL},
        {"127.0.0.1:-0", MS_EINVAL},
        {"127.0.0.1:+80", MS_EINVAL},
        {"127.0.0.1: 80", MS_EINVAL},
        {"127.0.0.1:\t80", MS_EINVAL},
        {"127.0.0.1:80 ", MS_EINVAL},
        {"127.0.0.1:80\n", MS_EINVAL},
        {"127.0.0.1:http", MS_EINVAL},
        {"127.0.0.1:0x50", MS_EINVAL},
        {"127.0.0.1:8o", MS_EINVAL},
        {"127.0.0.1:80:90", MS_EINVAL},
        {" 8080", MS_EINVAL},
        {"+8080", MS_EINVAL},
        {"-1", MS_EINVAL},
        {"65536", MS_EINVAL},
        {"port", MS_EINVAL},
        {"localhost", MS_EINVAL},
        {"LOCALHOST:80", MS_EINVAL},   /* only the exact name "localhost" */
        {"localhost.:80", MS_EINVAL},
        {"example.com:80", MS_EINVAL}, /* names are not resolved */
        {"0:80", MS_EINVAL},           /* shorthand IPv4 forms are not addresses */
        {"127.1:80", MS_EINVAL},
        {"2130706433:80", MS_EINVAL},
        {"127.0.0.1.1:80", MS_EINVAL},
        {"127.0.0.256:80", MS_EINVAL},
        {" 127.0.0.1:80", MS_EINVAL},
        {"127.0.0.1 :80", MS_EINVAL},
        {"[::1]", MS_EINVAL},          /* no port */
        {"[::1]:", MS_EINVAL},
        {"[::1]80", MS_EINVAL},
        {"[::1]:65536", MS_EINVAL},
        {"[::1", MS_EINVAL},
        {"::1]:80", MS_EINVAL},
        {"[]:80", MS_EINVAL},
        {"[::1]]:80", MS_EINVAL},
        {"[[::1]]:80", MS_EINVAL},
        {"[::1%lo]:80", MS_EINVAL},
        {"[gggg::1]:80", MS_EINVAL},
        {"::1", MS_EINVAL},            /* IPv6 needs brackets */
        {"::", MS_EINVAL},
        {"fe80::1", MS_EINVAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ms_err err = {0};
        int got = http_listen_is_loopback(cases[i].spec, &err);
        if (got != cases[i].want) {
            print_error("'%s': got %d, want %d (%s)\n", cases[i].spec, got, cases[i].want,
                        err.msg);
            fail();
        }
        if (got < 0) {
            assert_int_equal(err.code, MS_EINVAL);
            assert_true(strstr(err.msg, "listen") != NULL);   /* names what is wrong */
        } else {
            assert_int_equal(err.code, 0);
            assert_string_equal(err.msg, "");
        }
        /* a NULL ms_err is allowed */
        assert_int_equal(http_listen_is_loopback(cases[i].spec, NULL), cases[i].want);
    }
}

static void test_listen_long_and_hostile(void **state)
{
    size_t n = 100000;
    char *s = malloc(n + 16);
    assert_non_null(s);
    ms_err err = {0};
    /* a long host */
    memset(s, '1', n);
    memcpy(s + n, ":80", 4);
    assert_int_equal(http_listen_is_loopback(s, &err), MS_EINVAL);
    assert_true(strlen(err.msg) < sizeof err.msg);
    /* a long bracketed host */
    s[0] = '[';
    memset(s + 1, ':', n - 1);
    memcpy(s + n, "]:80", 5);
    assert_int_equal(http_listen_is_loopback(s, &err), MS_EINVAL);
    /* a long port */
    memcpy(s, "127.0.0.1:", 10);
    memset(s + 10, '9', n - 10);
    s[n] = '\0';
    assert_int_equal(http_listen_is_loopback(s, &err), MS_EINVAL);
    /* a long digit string alone */
    memset(s, '8', n);
    s[n] = '\0';
    assert_int_equal(http_listen_is_loopback(s, &err), MS_EINVAL);
    /* a host just under and just over the 63 characters kept */
    memset(s, 'a', 63);
    memcpy(s + 63, ":80", 4);
    assert_int_equal(http_listen_is_loopback(s, &err), MS_EINVAL);
    memset(s, 'a', 64);
    memcpy(s + 64, ":80", 4);
    assert_int_equal(http_listen_is_loopback(s, &err), MS_EINVAL);
    /* the longest IPv6 text form fits */
    assert_int_equal(http_listen_is_loopback("[0000:0000:0000:0000:0000:0000:0000:0001]:80",
                                             &err), 1);
    /* control and non-ASCII bytes */
    assert_int_equal(http_listen_is_loopback("127.0.0.1\n:80", &err), MS_EINVAL);
    assert_int_equal(http_listen_is_loopback("127.0.0.1\x1b[2J:80", &err), MS_EINVAL);
    assert_int_equal(http_listen_is_loopback("\xef\xbc\x91\x32\x37.0.0.1:80", &err), MS_EINVAL);
    assert_int_equal(http_listen_is_loopback("127.0.0.1:\xd9\xa8\x30", &err), MS_EINVAL);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* first: it races the first asset_find (route_find calls it too) */
        cmocka_unit_test(test_asset_first_use_from_threads),
        cmocka_unit_test(test_route_every_documented_route),
        cmocka_unit_test(test_route_wrong_method_is_405),
        cmocka_unit_test(test_route_ids),
        cmocka_unit_test(test_route_strict_paths),
        cmocka_unit_test(test_route_long_paths),
        cmocka_unit_test(test_route_names),
        cmocka_unit_test(test_kv_basic_duplicates_empty),
        cmocka_unit_test(test_kv_embedded_nul),
        cmocka_unit_test(test_kv_limits),
        cmocka_unit_test(test_req_param_form_then_query),
        cmocka_unit_test(test_reply_init_and_json),
        cmocka_unit_test(test_json_text),
        cmocka_unit_test(test_reply_error_shape_and_escaping),
        cmocka_unit_test(test_http_status_for_every_code),
        cmocka_unit_test(test_reply_ms_err),
        cmocka_unit_test(test_metrics_empty),
        cmocka_unit_test(test_metrics_exact_counts_and_buckets),
        cmocka_unit_test(test_metrics_every_slot),
        cmocka_unit_test(test_metrics_concurrent),
        cmocka_unit_test(test_asset_page_files),
        cmocka_unit_test(test_asset_not_found),
        cmocka_unit_test(test_listen_loopback),
        cmocka_unit_test(test_listen_long_and_hostile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
