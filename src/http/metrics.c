/*
 * metrics.c - Prometheus counters of the HTTP server: requests by route and
 * status, latency histograms by route, per-search engine stage histograms,
 * and the gauges the caller passes in at render time (text format 0.0.4).
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_internal.h"

/* Latency buckets in seconds: searches take tens of milliseconds, image
 * fetches well under one, a burst can push a request to seconds. */
static const double buckets_s[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                   0.1,   0.25,   0.5,   1,    2.5,   5,   10};
#define N_BUCKETS (sizeof buckets_s / sizeof buckets_s[0])

typedef struct histogram {
    uint64_t counts[N_BUCKETS + 1];   /* last: above every bound (+Inf only) */
    uint64_t count;
    double sum_s;
} histogram;

/* Statuses counted one by one; anything else lands in "other". */
static const unsigned statuses[] = {200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 412,
                                    413, 415, 422, 429, 431, 500, 503};
#define N_STATUS (sizeof statuses / sizeof statuses[0])

enum { STAGE_DECODE, STAGE_EMBED, STAGE_INDEX, STAGE_STORE, STAGE_COUNT };
static const char *const stage_names[STAGE_COUNT] = {"decode", "embed", "index", "store"};

struct metrics {
    pthread_mutex_t mu;
    uint64_t requests[ROUTE_COUNT][N_STATUS + 1];
    histogram latency[ROUTE_COUNT];
    histogram stages[STAGE_COUNT];
};

metrics *metrics_new(void)
{
    metrics *m = calloc(1, sizeof *m);
    if (m)
        pthread_mutex_init(&m->mu, NULL);
    return m;
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static void observe(histogram *h, double seconds)
{
    size_t b = 0;
    while (b < N_BUCKETS && seconds > buckets_s[b])
        b++;
    h->counts[b]++;
    h->count++;
    h->sum_s += seconds;
}

static size_t status_slot(unsigned status)
{
    for (size_t i = 0; i < N_STATUS; i++)
        if (statuses[i] == status)
            return i;
    return N_STATUS;
}

void metrics_request(metrics *m, route_id r, unsigned status, double ms)
{
    if (r < 0 || r >= ROUTE_COUNT)
        r = ROUTE_NONE;
    pthread_mutex_lock(&m->mu);
    m->requests[r][status_slot(status)]++;
    observe(&m->latency[r], ms / 1000.0);
    pthread_mutex_unlock(&m->mu);
}

void metrics_engine(metrics *m, const engine_timing *t)
{
    pthread_mutex_lock(&m->mu);
    observe(&m->stages[STAGE_DECODE], t->decode_ms / 1000.0);
    observe(&m->stages[STAGE_EMBED], t->embed_ms / 1000.0);
    observe(&m->stages[STAGE_INDEX], t->index_ms / 1000.0);
    observe(&m->stages[STAGE_STORE], t->store_ms / 1000.0);
    pthread_mutex_unlock(&m->mu);
}

/* A growing text buffer; any failure sticks and is reported at the end. */
typedef struct text {
    char *buf;
    size_t len, cap;
    int failed;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...)
{
    if (t->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n + 1;
        char *nb = realloc(t->buf, cap);
        if (!nb) {
            t->failed = 1;
            return;
        }
        t->buf = nb;
        t->cap = cap;
    }
}

static void put_histogram(text *t, const char *name, const char *label_key,
                          const char *label_value, const histogram *h)
{
    uint64_t cumulative = 0;
    for (size_t b = 0; b < N_BUCKETS; b++) {
        cumulative += h->counts[b];
        put(t, "%s_bucket{%s=\"%s\",le=\"%g\"} %llu\n", name, label_key, label_value,
            buckets_s[b], (unsigned long long)cumulative);
    }
    put(t, "%s_bucket{%s=\"%s\",le=\"+Inf\"} %llu\n", name, label_key, label_value,
        (unsigned long long)h->count);
    put(t, "%s_sum{%s=\"%s\"} %.6f\n", name, label_key, label_value, h->sum_s);
    put(t, "%s_count{%s=\"%s\"} %llu\n", name, label_key, label_value,
        (unsigned long long)h->count);
}

static void put_requests(text *t, const metrics *m)
{
    put(t, "# HELP medsearch_http_requests_total HTTP requests answered, by route and status.\n"
           "# TYPE medsearch_http_requests_total counter\n");
    for (int r = 0; r < ROUTE_COUNT; r++)
        for (size_t s = 0; s <= N_STATUS; s++) {
            if (!m->requests[r][s])
                continue;
            if (s < N_STATUS)
                put(t, "medsearch_http_requests_total{route=\"%s\",status=\"%u\"} %llu\n",
                    route_name((route_id)r), statuses[s], (unsigned long long)m->requests[r][s]);
            else
                put(t, "medsearch_http_requests_total{route=\"%s\",status=\"other\"} %llu\n",
                    route_name((route_id)r), (unsigned long long)m->requests[r][s]);
        }
    put(t, "# HELP medsearch_http_request_duration_seconds Time from request line to response, by route.\n"
           "# TYPE medsearch_http_request_duration_seconds histogram\n");
    for (int r = 0; r < ROUTE_COUNT; r++)
        if (m->latency[r].count)
            put_histogram(t, "medsearch_http_request_duration_seconds", "route",
                          route_name((route_id)r), &m->latency[r]);
    put(t, "# HELP medsearch_search_stage_seconds Time of each engine stage per search request.\n"
           "# TYPE medsearch_search_stage_seconds histogram\n");
    for (int s = 0; s < STAGE_COUNT; s++)
        put_histogram(t, "medsearch_search_stage_seconds", "stage", stage_names[s], &m->stages[s]);
}

static void put_gauges(text *t, const metrics_gauges *g)
{
    put(t, "# HELP medsearch_http_requests_in_flight Requests being received or answered now.\n"
           "# TYPE medsearch_http_requests_in_flight gauge\n"
           "medsearch_http_requests_in_flight %zu\n", g->in_flight);
    put(t, "# HELP medsearch_http_upload_bytes Request body bytes reserved by requests in flight.\n"
           "# TYPE medsearch_http_upload_bytes gauge\n"
           "medsearch_http_upload_bytes %zu\n", g->upload_bytes);
    put(t, "# HELP medsearch_queue_depth Queries waiting for the model now.\n"
           "# TYPE medsearch_queue_depth gauge\n"
           "medsearch_queue_depth %zu\n", g->queue_depth);
    put(t, "# HELP medsearch_collection_images Images in the collection.\n"
           "# TYPE medsearch_collection_images gauge\n"
           "medsearch_collection_images %zu\n", g->images);
    put(t, "# HELP medsearch_searches_total Searches run by the engine.\n"
           "# TYPE medsearch_searches_total counter\n"
           "medsearch_searches_total %llu\n", (unsigned long long)g->searches);
    put(t, "# HELP medsearch_ingests_total Images ingested by the engine.\n"
           "# TYPE medsearch_ingests_total counter\n"
           "medsearch_ingests_total %llu\n", (unsigned long long)g->ingests);
    put(t, "# HELP medsearch_embed_seconds_total Time spent embedding images (model forward).\n"
           "# TYPE medsearch_embed_seconds_total counter\n"
           "medsearch_embed_seconds_total %.6f\n", g->embed_ms_total / 1000.0);
    put(t, "# HELP medsearch_search_seconds_total Time spent in engine searches, all stages.\n"
           "# TYPE medsearch_search_seconds_total counter\n"
           "medsearch_search_seconds_total %.6f\n", g->search_ms_total / 1000.0);
    put(t, "# HELP medsearch_uptime_seconds Seconds since the server started.\n"
           "# TYPE medsearch_uptime_seconds gauge\n"
           "medsearch_uptime_seconds %.3f\n", g->uptime_s);
}

int metrics_render(metrics *m, const metrics_gauges *g, char **out, size_t *len)
{
    text t = {malloc(16384), 0, 16384, 0};
    if (!t.buf)
        return MS_ENOMEM;
    t.buf[0] = '\0';
    pthread_mutex_lock(&m->mu);
    put_requests(&t, m);
    pthread_mutex_unlock(&m->mu);
    put_gauges(&t, g);
    if (t.failed) {
        free(t.buf);
        return MS_ENOMEM;
    }
    *out = t.buf;
    *len = t.len;
    return 0;
}
