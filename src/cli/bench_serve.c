/*
 * bench_serve.c - `medsearch bench serve`: the HTTP server under load, on
 * loopback only, bounded in time.
 *
 * Starts the real server in this process on 127.0.0.1 (a free port, no
 * access log), reports its idle RSS, then drives it with its own client
 * threads over plain keep-alive sockets, each sending multipart
 * POST /api/search requests with the same image (a 1024x1024 PNG by
 * default; qe=0, since the peer does no query expansion, whatever the
 * collection's default) for a fixed time after a warm-up:
 *   1. one client: latency p50/p99 and requests/s;
 *   2. N clients (default 8): requests/s and its ratio to one client.
 * Then the same two runs against bench/peer_flask.py (Flask + torch.jit.freeze
 * + FAISS over the same vectors and the same network) started by this
 * command, and the ratio of the two servers' N-client throughputs.
 */
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "engine.h"
#include "http/server.h"
#include "util/timing.h"

#define PYTHON "/usr/bin/python3"
#define BOUNDARY "medsearchbench7f3a9c"

extern char **environ;

/* ---- the load generator ---- */

typedef struct load_cfg {
    unsigned port;
    const char *request;        /* the whole HTTP request, sent as is */
    size_t request_len;
    double warmup_s, seconds;
} load_cfg;

typedef struct client {
    const load_cfg *cfg;
    pthread_t thread;
    double *lat_ms;             /* measured requests only */
    size_t n, cap;
    size_t errors;
    unsigned last_bad_status;
    uint64_t start_ns, end_ns;  /* the measured window */
} client;

static int open_conn(unsigned port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            if (w < 0 && errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one response; returns its status, or -1 when the connection broke.
 * *keep is cleared when the server closes the connection after it. */
static int read_response(int fd, int *keep)
{
    char buf[65536];
    size_t have = 0;
    char *end = NULL;
    while (!end) {
        if (have == sizeof buf - 1)
            return -1;   /* headers over 64 KiB: not a server we test */
        ssize_t r = recv(fd, buf + have, sizeof buf - 1 - have, 0);
        if (r <= 0)
            return -1;
        have += (size_t)r;
        buf[have] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
        return -1;
    size_t head = (size_t)(end + 4 - buf);
    long long length = -1;
    *keep = !strncmp(buf, "HTTP/1.1", 8);
    for (char *line = strstr(buf, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
        if (!strncasecmp(line + 2, "Content-Length:", 15))
            length = atoll(line + 17);
        else if (!strncasecmp(line + 2, "Connection: close", 17))
            *keep = 0;
    }
    size_t body = have - head;
    while (length < 0 || body < (size_t)length) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r < 0)
            return -1;
        if (r == 0) {
            *keep = 0;
            return length < 0 ? status : -1;
        }
        body += (size_t)r;
    }
    return status;
}

/* One request over *fd (opened or reopened as needed); the status or -1. */
static int request(const load_cfg *cfg, int *fd)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        int fresh = *fd < 0;
        if (fresh && (*fd = open_conn(cfg->port)) < 0)
            return -1;
        int keep = 1;
        int status = -1;
        if (!send_all(*fd, cfg->request, cfg->request_len))
            status = read_response(*fd, &keep);
        if (status < 0 || !keep) {
            close(*fd);
            *fd = -1;
        }
        if (status >= 0 || fresh)
            return status;   /* a kept-alive connection may have been closed: retry once */
    }
    return -1;
}

static void record(client *c, double ms)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 1024;
        double *nl = realloc(c->lat_ms, cap * sizeof *nl);
        if (!nl)
            return;
        c->lat_ms = nl;
        c->cap = cap;
    }
    c->lat_ms[c->n++] = ms;
}

static void *client_main(void *arg)
{
    client *c = arg;
    const load_cfg *cfg = c->cfg;
    int fd = -1;
    uint64_t t = ms_now_ns();
    c->start_ns = t + (uint64_t)(cfg->warmup_s * 1e9);
    c->end_ns = c->start_ns + (uint64_t)(cfg->seconds * 1e9);
    while ((t = ms_now_ns()) < c->end_ns) {
        int status = request(cfg, &fd);
        uint64_t done = ms_now_ns();
        if (t < c->start_ns)
            continue;   /* warm-up */
        if (status != 200) {
            c->errors++;
            c->last_bad_status = status < 0 ? 0 : (unsigned)status;
            continue;
        }
        record(c, (double)(done - t) / 1e6);
    }
    if (fd >= 0)
        close(fd);
    return NULL;
}

typedef struct load_result {
    int clients;
    size_t requests, errors;
    unsigned bad_status;
    double rps, p50, p99, mean;
} load_result;

static int run_load(const load_cfg *cfg, int n_clients, load_result *out)
{
    client *cs = calloc((size_t)n_clients, sizeof *cs);
    if (!cs)
        return -1;
    int started = 0;
    for (; started < n_clients; started++) {
        cs[started].cfg = cfg;
        if (pthread_create(&cs[started].thread, NULL, client_main, &cs[started]))
            break;
    }
    size_t total = 0;
    memset(out, 0, sizeof *out);
    out->clients = started;
    for (int i = 0; i < started; i++) {
        pthread_join(cs[i].thread, NULL);
        total += cs[i].n;
        out->errors += cs[i].errors;
        if (cs[i].errors)
            out->bad_status = cs[i].last_bad_status;
    }
    double *all = malloc((total ? total : 1) * sizeof *all);
    size_t k = 0;
    double sum = 0;
    for (int i = 0; i < started; i++) {
        for (size_t j = 0; all && j < cs[i].n; j++) {
            all[k++] = cs[i].lat_ms[j];
            sum += cs[i].lat_ms[j];
        }
        free(cs[i].lat_ms);
    }
    free(cs);
    if (!all)
        return -1;
    out->requests = k;
    out->rps = (double)k / cfg->seconds;
    /* the same nearest-rank rule for both: with a handful of requests the
     * old pair (k / 2 and (k - 1) * 0.99) put p99 below p50 */
    out->p50 = cli_percentile(all, k, 0.50);
    out->p99 = cli_percentile(all, k, 0.99);
    out->mean = k ? sum / (double)k : 0;
    free(all);
    return started == n_clients ? 0 : -1;
}

/* The request every client sends: multipart with the image, as a browser does. */
static char *build_request(const unsigned char *img, size_t len, const char *name, int k,
                           size_t *out_len)
{
    char head[512], part[512];
    const char *tail = "\r\n--" BOUNDARY "--\r\n";
    int pn = snprintf(part, sizeof part,
                      "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"image\"; "
                      "filename=\"%.100s\"\r\nContent-Type: image/png\r\n\r\n", name);
    size_t body = (size_t)pn + len + strlen(tail);
    int hn = snprintf(head, sizeof head,
                      "POST /api/search?k=%d&qe=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      "Content-Type: multipart/form-data; boundary=" BOUNDARY "\r\n"
                      "Content-Length: %zu\r\n\r\n", k, body);
    char *req = malloc((size_t)hn + body);
    if (!req)
        return NULL;
    memcpy(req, head, (size_t)hn);
    memcpy(req + hn, part, (size_t)pn);
    memcpy(req + hn + pn, img, len);
    memcpy(req + hn + pn + len, tail, strlen(tail));
    *out_len = (size_t)hn + body;
    return req;
}

static double rss_mb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %lf kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb / 1024.0;
}

/* ---- the peer ---- */

typedef struct peer {
    pid_t pid;
    unsigned port;
    double rss_mb;
    char info[256];
    char vec_path[4096], ids_path[4096];
} peer;

typedef struct vec_dump {
    FILE *vecs, *ids;
    size_t n;
    int failed;
} vec_dump;

static int dump_vector(void *ctx, int64_t id, const float *vec, int dim)
{
    vec_dump *d = ctx;
    if (fwrite(vec, sizeof *vec, (size_t)dim, d->vecs) != (size_t)dim ||
        fwrite(&id, sizeof id, 1, d->ids) != 1) {
        d->failed = 1;
        return 1;
    }
    d->n++;
    return 0;
}

/* Writes the collection's vectors and ids for the peer's FAISS index. */
static int dump_vectors(engine *e, peer *p, ms_err *err)
{
    const char *tmp = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(p->vec_path, sizeof p->vec_path, "%s/medsearch-bench-vecs-XXXXXX", tmp);
    snprintf(p->ids_path, sizeof p->ids_path, "%s/medsearch-bench-ids-XXXXXX", tmp);
    int vfd = mkstemp(p->vec_path), ifd = vfd >= 0 ? mkstemp(p->ids_path) : -1;
    if (vfd < 0 || ifd < 0) {
        if (vfd >= 0)
            close(vfd);
        p->vec_path[0] = p->ids_path[0] = '\0';
        return ms_err_set(err, MS_EIO, "cannot create temporary files for the peer in %s: %s", tmp, strerror(errno));
    }
    vec_dump d = {fdopen(vfd, "wb"), fdopen(ifd, "wb"), 0, 0};
    store *s = NULL;
    int rc = d.vecs && d.ids ? engine_store_acquire(e, &s, err) : MS_EIO;
    if (!rc) {
        rc = store_each_vector(s, dump_vector, &d, err);
        engine_store_release(e, s);
    }
    if ((d.vecs && fclose(d.vecs)) || (d.ids && fclose(d.ids)) || d.failed)
        rc = rc ? rc : ms_err_set(err, MS_EIO, "cannot write the peer's vectors");
    return rc;
}

/* Starts the peer and waits (up to 180 s: torch and the model load) for
 * its "peer listening PORT" line. */
static int start_peer(peer *p, const char *script, const char *model_path, int dim,
                      const char *kind_name, ms_err *err)
{
    int fds[2];
    if (pipe(fds))
        return ms_err_set(err, MS_EIO, "pipe: %s", strerror(errno));
    char dim_s[16];
    snprintf(dim_s, sizeof dim_s, "%d", dim);
    const char *kind = !strcmp(kind_name, "hnsw") ? "hnsw" : "flat";
    char *argv[] = {PYTHON, (char *)script, "--vectors", p->vec_path, "--ids", p->ids_path,
                    "--dim", dim_s, "--onnx", (char *)model_path, "--index", (char *)kind,
                    "--threads", "2", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    int rc = posix_spawn(&p->pid, PYTHON, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc) {
        close(fds[0]);
        p->pid = 0;
        return ms_err_set(err, MS_EIO, "cannot start %s: %s", PYTHON, strerror(rc));
    }
    FILE *f = fdopen(fds[0], "r");
    char line[512];
    uint64_t deadline = ms_now_ns() + 180ull * 1000000000ull;
    while (f && ms_now_ns() < deadline && fgets(line, sizeof line, f)) {
        if (sscanf(line, "peer listening %u rss_mb=%lf", &p->port, &p->rss_mb) == 2) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(p->info, sizeof p->info, "%.255s", line);
            break;
        }
    }
    if (f)
        fclose(f);   /* the peer prints nothing more; a closed pipe does not stop it */
    if (!p->port)
        return ms_err_set(err, MS_EIO, "the Flask peer did not start (needs python3-flask, "
                          "python3-torch, python3-faiss, python3-onnx, python3-pil)");
    return 0;
}

static void stop_peer(peer *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGTERM);
        waitpid(p->pid, NULL, 0);
    }
    if (p->vec_path[0])
        unlink(p->vec_path);
    if (p->ids_path[0])
        unlink(p->ids_path);
}

/* ---- the command ---- */

static void print_row(const char *who, const load_result *r)
{
    printf("  %-10s %2d client%s  %8.1f req/s  p50 %7.1f ms  p99 %7.1f ms  (%zu requests, %zu errors%s)\n",
           who, r->clients, r->clients == 1 ? " " : "s", r->rps, r->p50, r->p99, r->requests,
           r->errors, r->errors ? ", see status" : "");
}

static json_t *row_json(const load_result *r)
{
    return json_pack("{s:i,s:I,s:I,s:i,s:f,s:f,s:f,s:f}", "clients", r->clients, "requests",
                     (json_int_t)r->requests, "errors", (json_int_t)r->errors, "last_bad_status",
                     (int)r->bad_status, "requests_per_s", r->rps, "p50_ms", r->p50, "p99_ms",
                     r->p99, "mean_ms", r->mean);
}

static const char *default_image(char *buf, size_t len)
{
    const char *shared = getenv("MEDSEARCH_SHARED");
    snprintf(buf, len, "%s/data/nih_cxr14_fullres/images/00000001_000.png",
             shared && *shared ? shared : "../shared");
    return buf;
}

int bench_serve(int argc, char **argv)
{
    const char *image = NULL;
    double seconds = 10, warmup = 2;
    int clients = 8, k = 10, no_peer = 0, threads = 4, workers = 16;
    const cli_option opts[] = {
        {"image", 0, CLI_STRING, &image, "PNG",
         "query image (default $MEDSEARCH_SHARED/data/nih_cxr14_fullres/images/00000001_000.png, 1024x1024)", 0, 0},
        {"seconds", 0, CLI_DOUBLE, &seconds, "S", "measured time of each run (default 10)", 0, 0},
        {"warmup", 0, CLI_DOUBLE, &warmup, "S", "unmeasured time before each run (default 2)", 0, 0},
        {"clients", 'c', CLI_INT, &clients, "N", "concurrent clients of the second run (default 8)", 2, 256},
        {"k", 'k', CLI_INT, &k, "N", "results per search (default 10)", 1, 1000},
        {"threads", 0, CLI_INT, &threads, "N", "server polling threads (default 4)", 1, 256},
        {"workers", 0, CLI_INT, &workers, "N", "server worker threads (default 16)", 1, 1024},
        {"no-peer", 0, CLI_FLAG, &no_peer, NULL, "skip the Flask peer", 0, 0},
        {0},
    };
    static const cli_command base = {
        "bench serve", "",
        "Measures the HTTP server on 127.0.0.1: search latency p50/p99 with one client (the upload of\n"
        "the image included), throughput with N concurrent clients against one, and both against a\n"
        "minimal Flask peer (bench/peer_flask.py: torch.jit.freeze + FAISS, same network, same\n"
        "vectors) run in the same invocation. Reports the server's idle RSS. Takes about\n"
        "4 x (warmup + seconds) plus the peer's start-up.",
        CLI_DB | CLI_MODEL | CLI_JSON, NULL, 0, 0};
    cli_command me = base;
    me.options = opts;
    cli_common c;
    char **args;
    int n_args, code;
    if (!cli_parse(&me, argc, argv, &c, &args, &n_args, &code))
        return code;
    free(args);
    if (seconds <= 0 || seconds > 3600 || warmup < 0 || warmup > 600) {
        fprintf(stderr, "medsearch bench serve: --seconds must be in (0, 3600] and --warmup in [0, 600]\n");
        return EXIT_USAGE;
    }
    char img_buf[4096];
    if (!image)
        image = default_image(img_buf, sizeof img_buf);
    ms_err err = {0};
    unsigned char *img = NULL;
    size_t img_len = 0;
    /* A mistyped --db must not become an empty collection measured as if it were the one meant. */
    if (cli_collection_missing(c.db)) {
        fprintf(stderr, "medsearch bench serve: no collection at %s (%s): it measures an existing one, "
                        "e.g. medsearch ingest DIR --db %s first\n", c.db, strerror(errno), c.db);
        return EXIT_ENV;
    }
    if (cli_read_file(image, 64u << 20, &img, &img_len, &err)) {
        fprintf(stderr, "medsearch bench serve: %s: %s\n", image, err.msg);
        return EXIT_USAGE;
    }
    signal(SIGPIPE, SIG_IGN);
    image_init(1, NULL);
    image_set_threads(1);
    engine_options o;
    cli_engine_options(&c, &o);
    engine *e = NULL;
    engine_open_report rep;
    if ((code = cli_open(&me, &o, &e, &rep, 0))) {
        free(img);
        return code;
    }
    engine_stats st;
    memset(&st, 0, sizeof st);
    engine_get_stats(e, &st);
    engine_info info;
    memset(&info, 0, sizeof info);
    engine_describe(e, &info, NULL);

    http_options h;
    http_options_init(&h);
    h.listen = "127.0.0.1:0";
    h.access_log = 0;
    h.threads = (unsigned)threads;
    h.workers = (unsigned)workers;
    h.per_ip_connections = h.max_connections;
    http_server *srv = NULL;
    if (http_server_start(e, &h, &srv, &err)) {
        cli_error(&me, &err);
        engine_close(e);
        free(img);
        return EXIT_ENV;
    }
    double idle_rss = rss_mb();
    const char *slash = strrchr(image, '/');
    size_t req_len = 0;
    char *req = build_request(img, img_len, slash ? slash + 1 : image, k, &req_len);
    free(img);
    if (!req) {
        http_server_stop(srv, 1000);
        engine_close(e);
        return 1;
    }
    if (!c.json) {
        printf("medsearch bench serve: %zu images, %d-d, %s index, model %s\n", st.images, st.dim,
               st.index_kind, info.model_path);
        printf("  query %s (%zu bytes, multipart upload), k=%d, no query expansion, %g s warm-up + %g s per run, "
               "server %d threads + %d workers, %ld CPUs\n", image, img_len, k, warmup, seconds,
               threads, workers, sysconf(_SC_NPROCESSORS_ONLN));
        printf("  idle server RSS (model + index + store, in this process): %.0f MB\n", idle_rss);
        fflush(stdout);
    }
    load_cfg cfg = {http_server_port(srv), req, req_len, warmup, seconds};
    load_result ours1, oursN, peer1 = {0}, peerN = {0};
    run_load(&cfg, 1, &ours1);
    if (!c.json)
        print_row("medsearch", &ours1), fflush(stdout);
    run_load(&cfg, clients, &oursN);
    if (!c.json)
        print_row("medsearch", &oursN), fflush(stdout);
    http_server_stop(srv, 5000);

    peer p;
    memset(&p, 0, sizeof p);
    char script[2200];
    const char *peer_note = NULL;
    int have_peer = 0;
    if (no_peer)
        peer_note = "skipped (--no-peer)";
    else if (access(PYTHON, X_OK) || cli_find_repo_file("bench/peer_flask.py", script, sizeof script))
        peer_note = "skipped: " PYTHON " or bench/peer_flask.py not found";
    else if (dump_vectors(e, &p, &err) ||
             start_peer(&p, script, info.model_path, st.dim, st.index_kind, &err))
        peer_note = err.msg;
    else
        have_peer = 1;
    if (have_peer) {
        if (!c.json)
            printf("  peer: %s\n", p.info), fflush(stdout);
        cfg.port = p.port;
        run_load(&cfg, 1, &peer1);
        if (!c.json)
            print_row("flask", &peer1), fflush(stdout);
        run_load(&cfg, clients, &peerN);
        if (!c.json)
            print_row("flask", &peerN);
    }
    stop_peer(&p);
    engine_close(e);
    free(req);

    double scale = ours1.rps > 0 ? oursN.rps / ours1.rps : 0;
    double vs_peer = have_peer && peerN.rps > 0 ? oursN.rps / peerN.rps : 0;
    if (c.json) {
        json_t *doc = json_pack("{s:I,s:i,s:s,s:s,s:f,s:f,s:o,s:o,s:f}", "images",
                                (json_int_t)st.images, "dim", st.dim, "index", st.index_kind,
                                "image", image, "seconds", seconds, "idle_rss_mb", idle_rss,
                                "single", row_json(&ours1), "concurrent", row_json(&oursN),
                                "concurrency_speedup", scale);
        if (have_peer) {
            json_object_set_new(doc, "peer", json_pack("{s:s,s:f,s:o,s:o}", "info", p.info,
                                                       "idle_rss_mb", p.rss_mb, "single",
                                                       row_json(&peer1), "concurrent",
                                                       row_json(&peerN)));
            json_object_set_new(doc, "vs_peer", json_real(vs_peer));
        } else {
            json_object_set_new(doc, "peer", json_string(peer_note));
        }
        json_dumpf(doc, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(doc);
    } else {
        printf("  %d clients vs 1: %.2fx (target >= 1.2x)\n", clients, scale);
        if (have_peer)
            printf("  vs Flask peer at %d clients: %.2fx (target >= 1.5x); peer idle RSS %.0f MB\n",
                   clients, vs_peer, p.rss_mb);
        else
            printf("  peer: %s\n", peer_note);
    }
    int failed = ours1.errors || oursN.errors || !ours1.requests;
    if (failed)
        fprintf(stderr, "medsearch bench serve: requests failed (last status %u)\n",
                ours1.errors ? ours1.bad_status : oursN.bad_status);
    return failed ? 1 : 0;
}
