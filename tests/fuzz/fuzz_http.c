/*
 * fuzz_http.c - libFuzzer target for the HTTP face: a real server
 * (http_server_start over an engine with a tiny ONNX network and a SQLite
 * collection of 24 images) on 127.0.0.1, and each input sent to it as one
 * request over a new connection. A second server over the same engine has
 * the other settings: reads need the token, small upload limits.
 *
 * The input describes the request rather than being its raw bytes, so that
 * the fuzzer spends its time in our routes, parameters, filters, uploads and
 * replies instead of in libmicrohttpd's request-line parser:
 *
 *   byte 0      flags: 1 = "Authorization: Bearer <the token>",
 *               2 = a wrong bearer token, 4 = HTTP/1.0, 8 = to the second
 *               server (reads need the token, uploads capped at 4 KiB)
 *   line        the method (bytes that cannot be in a request line dropped)
 *   line        the request target, path and query string (the same)
 *   lines       header lines "Name: value" up to an empty line; Host,
 *               Connection, Content-Length and Transfer-Encoding are ours
 *   rest        the body, sent with its Content-Length
 *
 * What must hold for every reply (else abort, with the request and reply):
 * it comes within 10 s; its status is one docs/api.md lists and not 500 (a
 * 500 is "never the client's fault": hostile input must not cause one); a
 * JSON reply parses, an error is {"error":{"code":"...","message":"..."}},
 * and a list of results has at most k entries, ranks 1..n in order of
 * non-increasing score, and (similar) not the query image unless asked.
 *
 * FUZZ_HTTP_TRACE=1 prints each request line with its status.
 *
 * The target writes its own seeds (FUZZ_WRITE_SEEDS=DIR): one request of
 * each route with the parameters docs/api.md gives, uploads as multipart and
 * as raw bodies. The collection is made afresh at each start, in a scratch
 * directory removed at exit; requests that ingest or delete change it for
 * the inputs after them, as they would on a server.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "../unit/onnx_builder.h"
#include "engine.h"
#include "fuzz_file.h"
#include "http/server.h"
#include "image/internal.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { N_IMAGES = 24, SIDE = 16, REPLY_MAX = 1 << 22, WAIT_MS = 10000 };

static const char TOKEN[] = "fuzz-token-8c1f";

static engine *eng;
/* Two servers over the one engine: [0] as `serve --token-file`, [1] with
 * --read-token and uploads capped at 4 KiB (413 before the body is read;
 * 429 when the 8 KiB budget of bodies in flight is spent). */
static http_server *srv[2];
static unsigned port[2];

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "fuzz_http: %s: %s\n", what, msg);
    abort();
}

/* ---- the server under test ---- */

/* input [N,3,8,8] -> Conv 3x3 (4 channels) + bias -> Relu -> GlobalAveragePool
 * -> Flatten: a 4-d feature, which the engine pools by GeM of the map. */
static void write_tiny_model(const char *path)
{
    mb b;
    mb_init(&b);
    mb_input(&b, "input", 3, 8);
    int64_t wd[4] = {4, 3, 3, 3}, bd[1] = {4}, pads[4] = {1, 1, 1, 1};
    mb_const(&b, "W", 4, wd);
    mb_const(&b, "B", 1, bd);
    attr_ints(mb_node(&b, "Conv", "conv", "input", "W", "B", "c"), "pads", 4, pads);
    mb_node(&b, "Relu", "relu", "c", NULL, NULL, "r");
    mb_node(&b, "GlobalAveragePool", "gap", "r", NULL, NULL, "g");
    Onnx__AttributeProto *axis = attr(mb_node(&b, "Flatten", "flat", "g", NULL, NULL, "features"), "axis",
                                      ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    axis->has_i = 1;
    axis->i = 1;
    mb_output(&b, "features");
    size_t len;
    uint8_t *bytes = mb_pack(&b, &len);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(bytes, 1, len, f) != len || fclose(f))
        die(path, "cannot write the model");
    pool_free();
}

/* A SIDE x SIDE grey JPEG that differs with i; *len its size, malloc'd. */
static uint8_t *synthetic_jpeg(int i, size_t *len)
{
    uint8_t px[SIDE * SIDE];
    for (int y = 0; y < SIDE; y++)
        for (int x = 0; x < SIDE; x++)
            px[y * SIDE + x] = (uint8_t)((x * (i % 5 + 1) * 13 + y * (i / 5 + 1) * 7 + i * 29) & 0xff);
    uint8_t *out = NULL;
    ms_err err = {0};
    if (jpeg_encode_gray8(px, SIDE, SIDE, 90, &out, len, &err))
        die("jpeg_encode_gray8", err.msg);
    return out;
}

static void ingest_collection(void)
{
    static const char *const labels[] = {"No Finding", "Effusion", "Mass", "Cardiomegaly", "Infiltration"};
    static const char *const views[] = {"PA", "AP", NULL};
    for (int i = 0; i < N_IMAGES; i++) {
        char patient[16], name[32];
        snprintf(patient, sizeof patient, "P%d", i / 3);
        snprintf(name, sizeof name, "img%02d.jpg", i);
        char *lab[2] = {(char *)labels[i % 5], (char *)labels[(i + 2) % 5]};
        store_kv kv = {"site", i % 2 ? "ward 4" : "A&E"};
        store_meta m;
        store_meta_init(&m);
        m.patient_id = patient;
        m.original_name = name;
        m.age = i % 7 == 0 ? -1 : 20 + 3 * i;
        m.sex = i % 3 == 2 ? 0 : (i % 2 ? 'F' : 'M');
        m.view = (char *)views[i % 3];
        m.labels = lab;
        m.n_labels = i % 5 == 0 ? 1 : 2;
        m.kv = &kv;
        m.n_kv = 1;
        size_t len;
        uint8_t *jpeg = synthetic_jpeg(i, &len);
        int64_t id;
        int was_new;
        ms_err err = {0};
        if (engine_ingest(eng, jpeg, len, &m, &id, &was_new, &err))
            die("engine_ingest", err.msg);
        free(jpeg);
    }
    int changed;
    ms_err err = {0};
    if (engine_update_center(eng, 0, &changed, &err))
        die("engine_update_center", err.msg);
}

static void stop_server(void)
{
    for (int i = 0; i < 2; i++)
        if (srv[i])
            http_server_stop(srv[i], 1000);
    if (eng)
        engine_close(eng);
    srv[0] = srv[1] = NULL;
    eng = NULL;
}

static void start_server(void)
{
    const char *dir = fuzz_scratch_dir("fuzz_http");
    if (!dir)
        die("scratch directory", strerror(errno));
    static char model_path[4200], db_path[4200];
    snprintf(model_path, sizeof model_path, "%s/tiny.onnx", dir);
    snprintf(db_path, sizeof db_path, "%s/c.db", dir);
    write_tiny_model(model_path);

    engine_options eo;
    engine_options_init(&eo);
    eo.db = db_path;
    eo.model_path = model_path;
    eo.threads = 1;
    ms_err err = {0};
    if (engine_open(&eo, &eng, NULL, &err))
        die("engine_open", err.msg);
    ingest_collection();

    http_options ho;
    http_options_init(&ho);
    ho.listen = "127.0.0.1:0";
    ho.token = TOKEN;
    ho.threads = 1;
    ho.workers = 2;
    ho.max_upload = 256 * 1024;
    ho.upload_budget = 1024 * 1024;
    ho.timeout_s = 5;
    ho.access_log = 0;
    if (http_server_start(eng, &ho, &srv[0], &err))
        die("http_server_start", err.msg);
    ho.read_token = 1;
    ho.max_upload = 4096;
    ho.upload_budget = 8192;
    if (http_server_start(eng, &ho, &srv[1], &err))
        die("http_server_start (second)", err.msg);
    for (int i = 0; i < 2; i++)
        port[i] = http_server_port(srv[i]);
    atexit(stop_server); /* runs before the scratch directory's removal */
}

/* ---- the request an input describes ---- */

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static void put(buf *b, const void *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void puts_(buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* The next '\n'-ended line of [*at, end); *at moves past it. */
static size_t next_line(const uint8_t **at, const uint8_t *end, const uint8_t **line)
{
    const uint8_t *nl = memchr(*at, '\n', (size_t)(end - *at));
    *line = *at;
    size_t n = nl ? (size_t)(nl - *at) : (size_t)(end - *at);
    *at = nl ? nl + 1 : end;
    return n;
}

/* Bytes a request line can carry: visible ASCII and bytes above it. */
static void put_token(buf *b, const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] > 0x20 && s[i] != 0x7f)
            put(b, s + i, 1);
}

/* Is this header name one the harness writes itself? */
static int ours(const char *name, size_t n)
{
    static const char *const reserved[] = {"host", "connection", "content-length", "transfer-encoding"};
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (n == strlen(reserved[i]) && !strncasecmp(name, reserved[i], n))
            return 1;
    return 0;
}

static void build_request(const uint8_t *data, size_t size, buf *req)
{
    unsigned flags = data[0];
    const uint8_t *at = data + 1, *end = data + size, *line;
    size_t n = next_line(&at, end, &line);
    size_t method_at = req->len;
    put_token(req, line, n);
    if (req->len == method_at)
        puts_(req, "GET");
    puts_(req, " ");
    n = next_line(&at, end, &line);
    size_t target_at = req->len;
    put_token(req, line, n);
    if (req->len == target_at)
        puts_(req, "/");
    puts_(req, flags & 4 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n");
    puts_(req, "Host: 127.0.0.1\r\nConnection: close\r\n");
    if (flags & 1)
        puts_(req, "Authorization: Bearer "), puts_(req, TOKEN), puts_(req, "\r\n");
    else if (flags & 2)
        puts_(req, "Authorization: Bearer not-the-token\r\n");
    while (at < end) {
        n = next_line(&at, end, &line);
        if (n == 0 || (n == 1 && line[0] == '\r'))
            break; /* the empty line: the body follows */
        /* a header line holds no CR, LF or NUL; dropped before the name is
         * looked at, so "Content-Le\0ngth" cannot become ours */
        char h[65536];
        size_t hn = 0;
        for (size_t i = 0; i < n; i++)
            if (line[i] != '\r' && line[i] != 0)
                h[hn++] = (char)line[i];
        const char *colon = memchr(h, ':', hn);
        if (!colon || colon == h || ours(h, (size_t)(colon - h)))
            continue;
        put(req, h, hn);
        puts_(req, "\r\n");
    }
    char cl[48];
    snprintf(cl, sizeof cl, "Content-Length: %zu\r\n\r\n", (size_t)(end - at));
    puts_(req, cl);
    put(req, at, (size_t)(end - at));
}

/* ---- one exchange ---- */

/* A new connection; one interrupted by a signal (libFuzzer's SIGALRM for its
 * -timeout) is made again on a fresh socket. */
static int connect_server(unsigned to_port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)to_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die("socket", strerror(errno));
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
            return fd;
        int e = errno;
        close(fd);
        if (e != EINTR)
            die("connect", strerror(e));
    }
}

/* Waits for fd to be ready for events; 0 on time-out. */
static int wait_fd(int fd, short events)
{
    struct pollfd p = {.fd = fd, .events = events};
    int r;
    do
        r = poll(&p, 1, WAIT_MS);
    while (r < 0 && errno == EINTR);
    return r > 0;
}

/* Sends the request and reads the reply up to the server's close. Returns 1
 * with the reply, 0 when the connection was reset (the server may answer
 * and close before the body is sent: 413, 401, ...). */
static int exchange(unsigned to_port, const buf *req, buf *reply)
{
    int fd = connect_server(to_port);
    for (size_t off = 0; off < req->len;) {
        if (!wait_fd(fd, POLLOUT))
            die("send", "the server accepts no bytes for 10 s");
        ssize_t w = send(fd, req->p + off, req->len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (w <= 0)
            break; /* closed on us; read what it said */
        off += (size_t)w;
    }
    char chunk[65536];
    for (;;) {
        if (!wait_fd(fd, POLLIN)) {
            fprintf(stderr, "fuzz_http: no reply within 10 s to:\n%.*s\n", (int)(req->len < 2000 ? req->len : 2000),
                    req->p);
            abort();
        }
        ssize_t r = recv(fd, chunk, sizeof chunk, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (r < 0) {
            int e = errno; /* before close() may change it */
            close(fd);
            if (e != ECONNRESET)
                die("recv", strerror(e));
            return 0;
        }
        if (r == 0)
            break;
        if (reply->len + (size_t)r > REPLY_MAX)
            die("recv", "reply over 4 MiB");
        put(reply, chunk, (size_t)r);
    }
    close(fd);
    return 1;
}

/* ---- what a reply must be ---- */

static const buf *cur_req, *cur_reply;

static void fail(const char *why)
{
    fprintf(stderr, "fuzz_http: %s\n--- request (%zu bytes) ---\n%.*s\n--- reply (%zu bytes) ---\n%.*s\n", why,
            cur_req->len, (int)(cur_req->len < 3000 ? cur_req->len : 3000), cur_req->p, cur_reply->len,
            (int)(cur_reply->len < 3000 ? cur_reply->len : 3000), cur_reply->p);
    abort();
}

static int status_documented(int s)
{
    static const int ok[] = {200, 201, 304, 400, 401, 403, 404, 405, 409, 412, 413, 415, 422, 429, 431, 503};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (s == ok[i])
            return 1;
    return 0;
}

/* Whether id is in the reply's feedback list name ("like", "unlike"). */
static int in_feedback(const json_t *doc, const char *name, json_int_t id)
{
    const json_t *list = json_object_get(json_object_get(doc, "feedback"), name);
    for (size_t i = 0; i < json_array_size(list); i++)
        if (json_integer_value(json_array_get(list, i)) == id)
            return 1;
    return 0;
}

/* The results of a search or similar reply. A similar reply keeps its query
 * image out unless the request has include_self somewhere; no reply holds
 * an image its relevance feedback marked. */
static void check_results(const json_t *doc, const buf *req)
{
    const json_t *results = json_object_get(doc, "results");
    if (!results)
        return;
    if (!json_is_array(results))
        fail("\"results\" is not an array");
    const json_t *k = json_object_get(doc, "k");
    if (!json_is_integer(k) || json_integer_value(k) < 1 || json_integer_value(k) > 1000 ||
        json_array_size(results) > (size_t)json_integer_value(k))
        fail("more results than \"k\", or k outside 1..1000");
    const json_t *query = json_object_get(doc, "query_id");
    json_int_t self = json_is_integer(query) && !memmem(req->p, req->len, "include_self", 12)
                          ? json_integer_value(query) : 0;
    double last = 1e300;
    for (size_t i = 0; i < json_array_size(results); i++) {
        const json_t *r = json_array_get(results, i);
        const json_t *rank = json_object_get(r, "rank"), *score = json_object_get(r, "score"),
                     *id = json_object_get(r, "id");
        if (!json_is_integer(rank) || json_integer_value(rank) != (json_int_t)i + 1)
            fail("result ranks are not 1..n");
        if (!json_is_integer(id) || json_integer_value(id) <= 0)
            fail("a result without a positive id");
        if (self && json_integer_value(id) == self)
            fail("a similar list holds its query image without include_self");
        if (in_feedback(doc, "like", json_integer_value(id)) || in_feedback(doc, "unlike", json_integer_value(id)))
            fail("a result the feedback marked");
        if (!json_is_number(score) || json_number_value(score) > last + 1e-6)
            fail("result scores are not in non-increasing order");
        last = json_number_value(score);
    }
    const json_t *count = json_object_get(doc, "count");
    if (count && (!json_is_integer(count) || (size_t)json_integer_value(count) != json_array_size(results)))
        fail("\"count\" is not the number of results");
}

/* A copies reply: at most k copies, never the image itself, ranks 1..n,
 * correlations from min_correlation to 1 in non-increasing order. */
static void check_copies(const json_t *doc)
{
    const json_t *copies = json_object_get(doc, "copies");
    if (!copies)
        return;
    const json_t *k = json_object_get(doc, "k"), *id = json_object_get(doc, "id"),
                 *min = json_object_get(doc, "min_correlation"), *count = json_object_get(doc, "count");
    if (!json_is_array(copies) || !json_is_integer(k) || !json_is_integer(id) || !json_is_number(min) ||
        !json_is_integer(count) || (size_t)json_integer_value(count) != json_array_size(copies) ||
        json_array_size(copies) > (size_t)json_integer_value(k))
        fail("a copies reply without its id, k, min_correlation and count, or with more than k copies");
    double last = 1;
    for (size_t i = 0; i < json_array_size(copies); i++) {
        const json_t *c = json_array_get(copies, i);
        const json_t *rank = json_object_get(c, "rank"), *cid = json_object_get(c, "id"),
                     *corr = json_object_get(c, "correlation");
        if (!json_is_integer(rank) || json_integer_value(rank) != (json_int_t)i + 1 || !json_is_integer(cid) ||
            json_integer_value(cid) == json_integer_value(id) || !json_is_number(corr) ||
            json_number_value(corr) > last + 1e-9 || json_number_value(corr) < json_number_value(min) - 1e-9)
            fail("copies out of order, below min_correlation, or holding the image itself");
        last = json_number_value(corr);
    }
}

/* The sum of a grid of h rows of w numbers, or fail. */
static double grid_sum(const json_t *rows, json_int_t w, json_int_t h, double *magnitude)
{
    if (!json_is_array(rows) || (json_int_t)json_array_size(rows) != h)
        fail("a similarity map's cells are not its grid's rows");
    double sum = 0;
    for (size_t y = 0; y < json_array_size(rows); y++) {
        const json_t *row = json_array_get(rows, y);
        if (!json_is_array(row) || (json_int_t)json_array_size(row) != w)
            fail("a similarity map's row is not its grid's width");
        for (size_t x = 0; x < json_array_size(row); x++) {
            const json_t *v = json_array_get(row, x);
            if (!json_is_number(v))
                fail("a similarity map's cell is not a number");
            sum += json_number_value(v);
            *magnitude += fabs(json_number_value(v));
        }
    }
    return sum;
}

/* A similarity map: a grid of cells on each side, each side summing to
 * the similarity, which is a cosine. */
static void check_similarity_map(const json_t *doc)
{
    const json_t *qc = json_object_get(doc, "query_cells");
    if (!qc)
        return;
    const json_t *grid = json_object_get(doc, "grid"), *sim = json_object_get(doc, "similarity");
    const json_t *w = json_object_get(grid, "width"), *h = json_object_get(grid, "height");
    if (!json_is_integer(w) || !json_is_integer(h) || json_integer_value(w) < 1 || json_integer_value(h) < 1 ||
        !json_is_number(sim) || fabs(json_number_value(sim)) > 1 + 1e-4 ||
        !json_is_integer(json_object_get(doc, "with")))
        fail("a similarity map without its grid, a similarity in [-1, 1] and with");
    double mag = 0, s = json_number_value(sim);
    double q = grid_sum(qc, json_integer_value(w), json_integer_value(h), &mag);
    double r = grid_sum(json_object_get(doc, "result_cells"), json_integer_value(w), json_integer_value(h), &mag);
    if (fabs(q - s) > 1e-4 * (1 + mag) || fabs(r - s) > 1e-4 * (1 + mag))
        fail("a similarity map's cells do not sum to its similarity");
}

static void check_reply(const buf *req, const buf *reply, int head)
{
    cur_req = req;
    cur_reply = reply;
    int status = 0;
    if (reply->len < 12 || sscanf(reply->p, "HTTP/1.%*1[01] %3d", &status) != 1)
        fail("no status line");
    if (getenv("FUZZ_HTTP_TRACE")) /* to see what a corpus does: one line per request */
        fprintf(stderr, "%.*s -> %d\n", (int)strcspn(req->p, "\r"), req->p, status);
    if (status == 500)
        fail("500 for a client's request");
    if (!status_documented(status))
        fail("a status docs/api.md does not list");
    const char *end = strstr(reply->p, "\r\n\r\n");
    if (!end)
        fail("no end of headers");
    const char *body = end + 4;
    size_t body_len = reply->len - (size_t)(body - reply->p);
    /* the headers as one lower-cased string, for lookups */
    char headers[8192];
    size_t hn = (size_t)(end - reply->p) < sizeof headers - 1 ? (size_t)(end - reply->p) : sizeof headers - 1;
    for (size_t i = 0; i < hn; i++)
        headers[i] = (char)((reply->p[i] >= 'A' && reply->p[i] <= 'Z') ? reply->p[i] + 32 : reply->p[i]);
    headers[hn] = 0;
    const char *cl = strstr(headers, "\r\ncontent-length:");
    if (cl && !head && status != 304 && strtoull(cl + 17, NULL, 10) != body_len)
        fail("the body's length is not its Content-Length");
    if (head || status == 304 || status == 431 || !strstr(headers, "\r\ncontent-type: application/json"))
        return;
    json_error_t jerr;
    json_t *doc = json_loadb(body, body_len, 0, &jerr);
    if (!doc)
        fail("a JSON reply that does not parse");
    if (status >= 400) {
        const json_t *e = json_object_get(doc, "error");
        if (!json_is_string(json_object_get(e, "code")) || !json_is_string(json_object_get(e, "message")))
            fail("an error without {\"error\":{\"code\",\"message\"}}");
    } else {
        check_results(doc, req);
        check_copies(doc);
        check_similarity_map(doc);
    }
    json_decref(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return -1;
    buf req = {0}, reply = {0};
    build_request(data, size, &req);
    if (exchange(port[(data[0] >> 3) & 1], &req, &reply))
        check_reply(&req, &reply, !strncmp(req.p, "HEAD ", 5));
    free(req.p);
    free(reply.p);
    return 0;
}

/* ---- seeds ---- */

static void write_seed(const char *dir, const char *name, unsigned flags, const char *head, const void *body,
                       size_t body_len)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fputc((int)flags, f) == EOF || fputs(head, f) == EOF ||
        (body_len && fwrite(body, 1, body_len, f) != body_len) || fclose(f))
        die(path, "cannot write the seed");
}

static void write_multipart_seed(const char *dir, const char *name, unsigned flags, const char *target,
                                 const char *const *fields, const uint8_t *jpeg, size_t jpeg_len)
{
    buf b = {0};
    for (const char *const *f = fields; *f; f += 2) {
        puts_(&b, "--XyZ\r\nContent-Disposition: form-data; name=\"");
        puts_(&b, f[0]);
        puts_(&b, "\"\r\n\r\n");
        puts_(&b, f[1]);
        puts_(&b, "\r\n");
    }
    puts_(&b, "--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"chest.jpg\"\r\n"
              "Content-Type: image/jpeg\r\n\r\n");
    put(&b, jpeg, jpeg_len);
    puts_(&b, "\r\n--XyZ--\r\n");
    char head[512];
    snprintf(head, sizeof head, "POST\n%s\nContent-Type: multipart/form-data; boundary=XyZ\n\n", target);
    write_seed(dir, name, flags, head, b.p, b.len);
    free(b.p);
}

static void write_seeds(const char *dir)
{
    static const struct {
        const char *name, *head;
        unsigned flags;
    } plain[] = {
        {"health", "GET\n/api/health\n\n", 0},
        {"stats", "GET\n/api/stats\n\n", 0},
        {"metrics", "GET\n/metrics\n\n", 0},
        {"page", "GET\n/\n\n", 0},
        {"app", "HEAD\n/app.js\n\n", 0},
        {"image", "GET\n/api/images/1\nIf-None-Match: \"0000\"\n\n", 0},
        {"thumbnail", "HEAD\n/api/images/2/thumbnail\n\n", 0},
        {"metadata", "GET\n/api/images/3/metadata\n\n", 0},
        {"similar", "GET\n/api/images/4/similar?k=5&qe=2&labels=Effusion|Mass&sex=F&age_min=20&age_max=70"
                    "&view=PA&one_per_patient=1&include_self=1\n\n", 0},
        {"similar_filter", "GET\n/api/images/5/similar?filter=labels:%22No%20Finding%22%20age:30-50%20site=A%26E"
                           "&exclude_patient=P1&ef=50&labels_all=Effusion,Mass\n\n", 0},
        {"copies", "GET\n/api/images/3/copies?k=7&min_correlation=0.5\n\n", 0},
        {"copies_head", "HEAD\n/api/images/2/copies\n\n", 0},
        {"similarity_map", "GET\n/api/images/3/similarity-map?with=5\n\n", 0},
        {"similarity_map_region", "GET\n/api/images/2/similarity-map?with=2&region=10%25,0,50%25,8\n\n", 0},
        {"similar_region", "GET\n/api/images/4/similar?k=5&region=2,3,10,8\n\n", 0},
        {"similar_region_percent", "GET\n/api/images/6/similar?region=10%25,0%25,50.5%25,99.99%25\n\n", 0},
        {"similar_feedback", "GET\n/api/images/4/similar?k=8&qe=2&like=2,5,2&unlike=7\n\n", 0},
        {"similar_feedback_filter", "GET\n/api/images/3/similar?like=1&unlike=&sex=F&one_per_patient=1\n\n", 0},
        {"similar_marked", "GET\n/api/similar?k=6&like=2,3&unlike=4&qe=1\n\n", 0},
        {"delete", "DELETE\n/api/images/6\n\n", 1},
        {"delete_no_token", "DELETE\n/api/images/7\n\n", 2},
        {"form_no_image", "POST\n/api/search\nContent-Type: application/x-www-form-urlencoded\n\nk=3&qe=1", 0},
        {"method", "PUT\n/api/stats\n\n", 0},
        {"read_token_missing", "GET\n/api/images/3/metadata\n\n", 8},
        {"read_token_given", "GET\n/api/stats\n\n", 8 | 1},
        {"read_token_health", "GET\n/api/health\n\n", 8},
    };
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++)
        write_seed(dir, plain[i].name, plain[i].flags, plain[i].head, NULL, 0);

    size_t len;
    uint8_t *jpeg = synthetic_jpeg(N_IMAGES + 1, &len);
    write_seed(dir, "search_raw", 0, "POST\n/api/search?k=3&patient=P2\nContent-Type: image/jpeg\n\n", jpeg, len);
    write_seed(dir, "search_raw_region", 0, "POST\n/api/search?k=3&region=0,0,50%25,16\nContent-Type: image/jpeg\n\n",
               jpeg, len);
    write_seed(dir, "similarity_map_raw", 0,
               "POST\n/api/similarity-map?with=4&region=0,0,50%25,16\nContent-Type: image/jpeg\n\n", jpeg, len);
    write_seed(dir, "search_raw_small_cap", 8 | 1, "POST\n/api/search?k=3\nContent-Type: image/jpeg\n\n", jpeg, len);
    uint8_t over[5000]; /* over the second server's 4 KiB cap: 413 */
    for (size_t i = 0; i < sizeof over; i++)
        over[i] = jpeg[i % len];
    write_seed(dir, "search_over_cap", 8 | 1, "POST\n/api/search\nContent-Type: image/jpeg\n\n", over, sizeof over);
    write_seed(dir, "ingest_raw", 1,
               "POST\n/api/images?patient_id=P9&age=44&sex=F&view=PA&labels=Effusion|Mass&meta.site=x\n"
               "Content-Type: application/octet-stream\n\n",
               jpeg, len);
    static const char *const search_fields[] = {"k", "4", "labels_all", "Effusion|Mass", "qe", "0", "region",
                                                "1,1,14,14", "like", "3,4", "unlike", "6", NULL};
    write_multipart_seed(dir, "search_multipart", 0, "/api/search", search_fields, jpeg, len);
    static const char *const map_fields[] = {"with", "6", "region", "1,1,14,14", NULL};
    write_multipart_seed(dir, "similarity_map_multipart", 0, "/api/similarity-map", map_fields, jpeg, len);
    static const char *const ingest_fields[] = {"patient_id", "P-77", "age", "44", "sex", "F", "view", "AP",
                                                "labels", "Effusion|Mass", "study_date", "2020-03-01",
                                                "meta.site", "ward4", "original_name", "x.jpg", NULL};
    write_multipart_seed(dir, "ingest_multipart", 1, "/api/images", ingest_fields, jpeg, len);
    free(jpeg);
    static const char patch[] = "{\"labels\":[\"Effusion\",\"Mass\"],\"age\":44,\"sex\":\"F\",\"view\":null,"
                                "\"extra\":{\"site\":null,\"k\":\"v\"}}";
    write_seed(dir, "metadata_patch", 1, "PATCH\n/api/images/3/metadata\nContent-Type: application/json\n\n", patch,
               sizeof patch - 1);
    write_seed(dir, "metadata_patch_if_match", 1,
               "PATCH\n/api/images/3/metadata\nContent-Type: application/merge-patch+json\nIf-Match: \"m-0\", *\n\n",
               "{\"age\":3}", 9);
    write_seed(dir, "metadata_patch_no_token", 2,
               "PATCH\n/api/images/3/metadata\nContent-Type: application/json\n\n", "{}", 2);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_write_seeds_if_asked(write_seeds);
    start_server();
    return 0;
}
