/*
 * serve.c - `medsearch serve`: opens the collection and serves the JSON API
 * and the web page until SIGINT or SIGTERM, then stops gracefully (requests
 * in flight finish, the index is persisted, the store is closed).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "engine.h"
#include "http/server.h"

/* Reads the token: the file's first line, surrounding white space removed. */
static int read_token_file(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "medsearch serve: cannot read token file %s: %s\n", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
        fprintf(stderr, "medsearch serve: warning: token file %s is readable by other users "
                "(chmod 600 %s)\n", path, path);
    if (!fgets(out, (int)cap, f))
        out[0] = '\0';
    fclose(f);
    size_t n = strlen(out);
    while (n && strchr(" \t\r\n", out[n - 1]))
        out[--n] = '\0';
    size_t skip = strspn(out, " \t");
    memmove(out, out + skip, n - skip + 1);
    if (!out[0]) {
        fprintf(stderr, "medsearch serve: token file %s is empty\n", path);
        return -1;
    }
    return 0;
}

typedef struct serve_args {
    const char *listen, *token_file;
    int read_token, threads, workers, max_upload_mb, max_connections, per_ip, timeout_s;
    int max_batch, queue_depth, k, quiet;
    char token[512];
} serve_args;

/* The token: --token-file, else $MEDSEARCH_TOKEN, else none. */
static int load_token(serve_args *a)
{
    if (a->token_file)
        return read_token_file(a->token_file, a->token, sizeof a->token) ? EXIT_USAGE : 0;
    const char *env = getenv("MEDSEARCH_TOKEN");
    if (env && *env) {
        if (strlen(env) >= sizeof a->token) {
            fprintf(stderr, "medsearch serve: MEDSEARCH_TOKEN is too long\n");
            return EXIT_USAGE;
        }
        snprintf(a->token, sizeof a->token, "%s", env);
    }
    return 0;
}

static void http_from_args(const serve_args *a, http_options *h)
{
    http_options_init(h);
    h->listen = a->listen;
    h->token = a->token[0] ? a->token : NULL;
    h->read_token = a->read_token;
    h->threads = (unsigned)a->threads;
    h->workers = (unsigned)a->workers;
    h->max_upload = (size_t)a->max_upload_mb << 20;
    if (h->upload_budget < 4 * h->max_upload)
        h->upload_budget = 4 * h->max_upload;
    h->max_connections = (unsigned)a->max_connections;
    h->per_ip_connections = (unsigned)a->per_ip;
    h->timeout_s = (unsigned)a->timeout_s;
    h->default_k = a->k;
    h->access_log = !a->quiet;
}

/* Refuses a public address without a token before the slow model load. */
static int check_exposure(const http_options *h)
{
    ms_err err = {0};
    int loopback = http_listen_is_loopback(h->listen, &err);
    if (loopback < 0) {
        fprintf(stderr, "medsearch serve: %s\n", err.msg);
        return EXIT_USAGE;
    }
    if (h->read_token && !h->token) {
        fprintf(stderr, "medsearch serve: --read-token needs a token (--token-file or "
                "MEDSEARCH_TOKEN)\n");
        return EXIT_USAGE;
    }
    if (!loopback && !h->token) {
        fprintf(stderr, "medsearch serve: refusing to listen on %s without a token: patient "
                "images would be readable and writable by anyone on the network.\n"
                "Give --token-file FILE or MEDSEARCH_TOKEN (and --read-token to protect "
                "reads), or listen on 127.0.0.1.\n", h->listen);
        return EXIT_USAGE;
    }
    return 0;
}

int cmd_serve(int argc, char **argv)
{
    serve_args a = {.listen = "127.0.0.1:8080", .threads = 4, .workers = 16,
                    .max_upload_mb = 32, .max_connections = 256, .per_ip = 64, .timeout_s = 15,
                    .max_batch = 16, .queue_depth = 64, .k = 10};
    const cli_option opts[] = {
        {"listen", 0, CLI_STRING, &a.listen, "HOST:PORT",
         "address (default 127.0.0.1:8080; port 0 picks a free one)", 0, 0},
        {"token-file", 0, CLI_STRING, &a.token_file, "FILE",
         "bearer token for ingest/delete (else $MEDSEARCH_TOKEN); needed off loopback", 0, 0},
        {"read-token", 0, CLI_FLAG, &a.read_token, NULL,
         "every /api route and /metrics need the token too", 0, 0},
        {"threads", 0, CLI_INT, &a.threads, "N", "HTTP polling threads (default 4)", 1, 256},
        {"workers", 0, CLI_INT, &a.workers, "N", "threads running searches and ingests (default 16)",
         1, 1024},
        {"max-upload-mb", 0, CLI_INT, &a.max_upload_mb, "N", "largest request body (default 32)", 1,
         1024},
        {"max-connections", 0, CLI_INT, &a.max_connections, "N", "open connections (default 256)",
         1, 65536},
        {"per-ip", 0, CLI_INT, &a.per_ip, "N", "open connections per client address (default 64)", 1,
         65536},
        {"timeout", 0, CLI_INT, &a.timeout_s, "S", "idle connection timeout in seconds (default 15)",
         1, 3600},
        {"max-batch", 0, CLI_INT, &a.max_batch, "N", "largest inference batch (default 16)", 1, 256},
        {"queue-depth", 0, CLI_INT, &a.queue_depth, "N",
         "queries waiting for the model before 503 (default 64)", 1, 100000},
        {"k", 'k', CLI_INT, &a.k, "N", "results when a request names no k (default 10)", 1, 1000},
        {"quiet", 'q', CLI_FLAG, &a.quiet, NULL, "no access log", 0, 0},
        {0},
    };
    static const cli_command base = {
        "serve", "",
        "Serves the JSON API and the web page of a collection. Prints the page's URL on stdout once\n"
        "listening. Stop with Ctrl-C (SIGINT) or SIGTERM: requests in flight finish and the index is\n"
        "saved. One access-log line per request goes to stderr.",
        CLI_DB | CLI_MODEL, NULL, 0, 0};
    cli_command me = base;
    me.options = opts;
    cli_common c;
    char **args;
    int n_args, code;
    if (!cli_parse(&me, argc, argv, &c, &args, &n_args, &code))
        return code;
    free(args);
    if ((code = load_token(&a)))
        return code;
    http_options h;
    http_from_args(&a, &h);
    if ((code = check_exposure(&h)))
        return code;

    /* Signals are taken by sigwait below: every thread started from here on
     * (engine, libmicrohttpd, workers) inherits the blocked mask. */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
    signal(SIGPIPE, SIG_IGN);

    ms_err err = {0};
    if (image_init(1, &err)) {   /* no libvips operation cache in a server */
        cli_error(&me, &err);
        return EXIT_ENV;
    }
    image_set_threads(1);        /* requests already run in parallel */
    engine_options o;
    cli_engine_options(&c, &o);
    o.max_batch = a.max_batch;
    o.queue_depth = a.queue_depth;
    engine *e = NULL;
    engine_open_report rep;
    if ((code = cli_open(&me, &o, &e, &rep, 1)))
        return code;
    engine_stats st;
    memset(&st, 0, sizeof st);
    engine_get_stats(e, &st);
    fprintf(stderr, "medsearch serve: %s: %zu images, model %s (%d-d), %s index, opened in %.0f ms\n",
            o.db, st.images, st.model_identity, st.dim, st.index_kind, rep.open_ms);

    http_server *srv = NULL;
    if (http_server_start(e, &h, &srv, &err)) {
        cli_error(&me, &err);
        engine_close(e);
        return err.code == MS_EINVAL ? EXIT_USAGE : EXIT_ENV;
    }
    printf("medsearch: serving %s (Ctrl-C to stop)\n", http_server_url(srv));
    fflush(stdout);
    if (!h.token)
        fprintf(stderr, "medsearch serve: no token: ingest and delete over HTTP are disabled\n");

    int sig = 0;
    sigwait(&stop_set, &sig);
    fprintf(stderr, "medsearch serve: %s received, finishing requests in flight\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM");
    int left = http_server_stop(srv, 10000);
    if (left)
        fprintf(stderr, "medsearch serve: %d requests were cut off after 10 s\n", left);
    int flushed = engine_flush(e, &err);
    if (flushed)
        cli_error(&me, &err);
    engine_close(e);
    OPENSSL_cleanse(a.token, sizeof a.token);
    fprintf(stderr, "medsearch serve: stopped%s\n", flushed ? "" : "; index saved");
    return flushed ? 1 : 0;
}
