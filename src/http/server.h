/*
 * server.h - the HTTP face: the JSON API and the embedded web page, served
 * by libmicrohttpd over an open engine.
 *
 * Threads: libmicrohttpd runs a pool of `threads` polling threads (epoll)
 * that parse requests and read bodies; every call that may wait on the
 * model (search, similar, ingest, delete) is handed to a pool of `workers`
 * threads while the connection is suspended, so a slow inference never
 * stalls the other connections of a polling thread. Concurrent searches
 * therefore reach engine_search together and share one batch there.
 *
 * Memory is bounded: each connection's header buffer
 * (connection_memory), each body (max_upload) and all bodies being
 * received at once (upload_budget; over it a request gets 429 with
 * Retry-After). Bodies are kept in memory only, never written to disk.
 *
 * Security: listens on loopback by default; http_server_start refuses any
 * other address without a token. Write routes need "Authorization: Bearer
 * TOKEN" (compared in constant time) and are disabled (403) when no token
 * is set; read_token extends the check to every /api route and /metrics.
 *
 * The server prints one access-log line per request on stderr when
 * access_log is set; it never calls exit().
 */
#ifndef MS_HTTP_SERVER_H
#define MS_HTTP_SERVER_H

#include <stddef.h>

#include "engine.h"
#include "util/err.h"

typedef struct http_options {
    const char *listen;          /* "HOST:PORT", "[V6]:PORT" or "PORT"; port 0 = any free one */
    const char *token;           /* bearer token, or NULL: writes refused */
    int read_token;              /* reads need the token too */
    unsigned threads;            /* polling threads (default 4) */
    unsigned workers;            /* engine-call threads (default 16) */
    size_t max_upload;           /* largest request body in bytes (default 32 MiB) */
    size_t upload_budget;        /* bodies in flight, all requests (default 256 MiB) */
    size_t connection_memory;    /* per-connection header/read buffer (default 64 KiB) */
    unsigned max_connections;    /* default 256 */
    unsigned per_ip_connections; /* default 64 */
    unsigned timeout_s;          /* idle connection timeout (default 15) */
    int default_k;               /* k when the request names none (default 10) */
    int access_log;              /* one line per request on stderr (default on) */
} http_options;

void http_options_init(http_options *o);

typedef struct http_server http_server;

/* Starts serving. Returns 0, MS_EINVAL (bad listen address, non-loopback
 * without a token, bad limits) or MS_EIO (cannot bind; the message names
 * the address and the reason). The engine must outlive the server. */
int http_server_start(engine *e, const http_options *o, http_server **out, ms_err *err);

/* The bound port (useful with port 0) and the page's URL. */
unsigned http_server_port(const http_server *s);
const char *http_server_url(const http_server *s);

/* Graceful stop: stops accepting, lets requests in flight finish for up to
 * grace_ms, then closes every connection and frees the server. Returns the
 * number of requests that were still running when the grace ran out. */
int http_server_stop(http_server *s, unsigned grace_ms);

/* Is the listen address a loopback one? 1 yes, 0 no, MS_EINVAL unparsable. */
int http_listen_is_loopback(const char *listen, ms_err *err);

#endif
