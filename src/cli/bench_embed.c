/*
 * bench_embed.c - `medsearch bench embed`: how fast the CNN runs, against
 * PyTorch (the peer) measured in the same run on the same model and batch.
 *
 * The peer (bench/peer_torch_embed.py serve) stays loaded in a child
 * process; for each batch size the two sides take turns in short rounds, so
 * a machine whose load changes during the run slows both alike. Reported per
 * batch size: median forward time, images/s, GFLOP/s and its share of the
 * fp32 peak measured here (a oneDNN matmul), minor page faults per forward in
 * steady state (getrusage); then model load to first vector and peak RSS
 * after the batch-1 work. Without --model it builds a random-weight
 * torchvision ResNet-50 with the peer script (weights do not change speed).
 */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "model/model.h"
#include "util/timing.h"

extern char **environ;

#define MAX_BATCHES 8
#define MAX_SAMPLES 200000
#define PYTHON "/usr/bin/python3"

typedef struct bench_opts {
    const char *model;
    int batches[MAX_BATCHES];
    int n_batches;
    double seconds;
    int rounds;
    int peer;
    const char *peer_arch;
    int bf16;
    int json;
} bench_opts;

/* One side's samples for one batch size. */
typedef struct side {
    double *ms;
    int n;
    double faults;       /* minor faults, summed over the samples */
} side;

typedef struct result {
    int batch;
    side ours, peer;
    double ms, ips, gflops, faults;
    double peer_ms, peer_ips, peer_faults;
    int peer_ok;
} result;

/* The peer child: its stdin and stdout. */
typedef struct peer {
    pid_t pid;
    FILE *to, *from;
    char info[512];
    int ok;
} peer;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsearch bench embed [--model M.onnx] [--batch 1,16] [--seconds S] [--rounds R]\n"
            "                             [--no-peer] [--peer-arch NAME] [--bf16] [--json]\n"
            "\n"
            "Times the CNN forward per batch size (median of repeated forwards after warm-up),\n"
            "with GFLOP/s as a share of the fp32 peak measured here, minor page faults per\n"
            "forward, model load to first vector and peak RSS at batch 1. The peer, PyTorch\n"
            "(torch.jit.freeze, 2 threads) on the same network, runs in the same invocation,\n"
            "in rounds alternating with ours.\n"
            "\n"
            "  --model M.onnx   the model (default: a random-weight torchvision ResNet-50,\n"
            "                   exported by bench/peer_torch_embed.py; needs python3-torch)\n"
            "  --batch LIST     comma-separated batch sizes (default 1,16)\n"
            "  --seconds S      timing per batch size and side (default 6)\n"
            "  --rounds R       alternations of ours and the peer per batch size (default 3)\n"
            "  --no-peer        skip PyTorch\n"
            "  --peer-arch NAME peer runs torchvision's own model NAME (resnet50, densenet121, ...)\n"
            "                   instead of the ONNX graph rebuilt in PyTorch\n"
            "  --bf16           let convolutions compute in bf16 (fp32 is the reference)\n"
            "  --json           one JSON object on stdout\n"
            "\n"
            "environment: OMP_NUM_THREADS sets our threads (default: all cores); the peer uses 2\n");
}

static int parse_batches(const char *s, bench_opts *o)
{
    o->n_batches = 0;
    while (*s && o->n_batches < MAX_BATCHES) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 1024 || (*end && *end != ','))
            return -1;
        o->batches[o->n_batches++] = (int)v;
        s = *end ? end + 1 : end;
    }
    return o->n_batches && !*s ? 0 : -1;
}

/* 0 to go on, 1 after --help, -1 on a mistake (said on stderr). */
static int parse_args(int argc, char **argv, bench_opts *o)
{
    memset(o, 0, sizeof *o);
    o->batches[0] = 1;
    o->batches[1] = 16;
    o->n_batches = 2;
    o->seconds = 6;
    o->rounds = 3;
    o->peer = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return 1;
        if (!strcmp(a, "--no-peer")) {
            o->peer = 0;
        } else if (!strcmp(a, "--bf16")) {
            o->bf16 = 1;
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!v) {
            fprintf(stderr, "medsearch bench embed: unknown option or missing value: '%s'\n", a);
            return -1;
        } else if (!strcmp(a, "--model")) {
            o->model = argv[++i];
        } else if (!strcmp(a, "--peer-arch")) {
            o->peer_arch = argv[++i];
        } else if (!strcmp(a, "--batch")) {
            if (parse_batches(argv[++i], o))
                return fprintf(stderr, "medsearch bench embed: --batch wants sizes 1..1024 like 1,16\n"), -1;
        } else if (!strcmp(a, "--seconds")) {
            o->seconds = atof(argv[++i]);
            if (!(o->seconds > 0 && o->seconds <= 3600))
                return fprintf(stderr, "medsearch bench embed: --seconds wants a number in (0, 3600]\n"), -1;
        } else if (!strcmp(a, "--rounds")) {
            o->rounds = atoi(argv[++i]);
            if (o->rounds < 1 || o->rounds > 100)
                return fprintf(stderr, "medsearch bench embed: --rounds wants 1..100\n"), -1;
        } else {
            fprintf(stderr, "medsearch bench embed: unknown option '%s'\n", a);
            return -1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- helpers */

/* Starts argv without a shell (paths pass as they are): its stdout and
 * stderr come back in *from; *to (when not NULL) feeds its stdin. */
static int spawn(char *const argv[], pid_t *pid, FILE **to, FILE **from)
{
    int out[2], in[2] = {-1, -1};
    if (pipe(out))
        return -1;
    if (to && pipe(in)) {
        close(out[0]);
        close(out[1]);
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, out[1], 2);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    posix_spawn_file_actions_addclose(&fa, out[1]);
    if (to) {
        posix_spawn_file_actions_adddup2(&fa, in[0], 0);
        posix_spawn_file_actions_addclose(&fa, in[0]);
        posix_spawn_file_actions_addclose(&fa, in[1]);
    }
    int rc = posix_spawn(pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    if (to)
        close(in[0]);
    if (rc) {
        close(out[0]);
        if (to)
            close(in[1]);
        errno = rc;
        return -1;
    }
    *from = fdopen(out[0], "r");
    if (to)
        *to = fdopen(in[1], "w");
    return 0;
}

static int reap(pid_t pid)
{
    int st;
    if (waitpid(pid, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static long minor_faults(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

static void fill_random(float *x, size_t n)
{
    uint32_t s = 12345;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)(s >> 8) / (float)(1u << 24) * 4.0f - 2.0f;
    }
}

static const char *cpu_name(void)
{
    static char name[128] = "unknown CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(name, sizeof name, "%s", strchr(line, ':') + 2);
            name[strcspn(name, "\n")] = '\0';
            break;
        }
    if (f)
        fclose(f);
    return name;
}

/* ------------------------------------------------------------------ peer */

static void peer_start(peer *p, const bench_opts *o, const char *script, const char *model_path, int size)
{
    char batches[128] = "", sz[16];
    size_t used = 0;
    for (int i = 0; i < o->n_batches; i++)
        used += (size_t)snprintf(batches + used, sizeof batches - used, "%s%d", i ? "," : "", o->batches[i]);
    snprintf(sz, sizeof sz, "%d", size);
    char *argv[] = {PYTHON, (char *)script, "serve", o->peer_arch ? "--arch" : "--onnx",
                    (char *)(o->peer_arch ? o->peer_arch : model_path), "--batch", batches, "--size", sz, NULL};
    memset(p, 0, sizeof *p);
    if (access(PYTHON, X_OK)) {
        snprintf(p->info, sizeof p->info, "skipped: %s not found", PYTHON);
        return;
    }
    if (spawn(argv, &p->pid, &p->to, &p->from)) {
        snprintf(p->info, sizeof p->info, "could not start: %s", strerror(errno));
        return;
    }
    char line[1024];
    while (fgets(line, sizeof line, p->from)) {
        line[strcspn(line, "\n")] = '\0';
        if (!strcmp(line, "ready")) {
            p->ok = 1;
            return;
        }
        if (!strncmp(line, "peer ", 5))
            snprintf(p->info, sizeof p->info, "%.400s", line + 5);
        else if (strstr(line, "Error") || strstr(line, "error"))
            snprintf(p->info, sizeof p->info, "failed: %.400s", line);
    }
    if (!p->info[0] || !strstr(p->info, "failed"))
        snprintf(p->info, sizeof p->info, "failed: the peer exited before it was ready");
}

/* Asks the peer for one round; appends its samples. 0 or -1. */
static int peer_round(peer *p, int batch, double seconds, side *out)
{
    fprintf(p->to, "run %d %g\n", batch, seconds);
    fflush(p->to);
    char *line = NULL;
    size_t cap = 0;
    int rc = -1;
    while (getline(&line, &cap, p->from) > 0) {
        int b, iters;
        double med, ips, faults;
        char *t = strstr(line, "times_ms=");
        if (sscanf(line, "peer batch=%d median_ms=%lf images_per_s=%lf faults_per_forward=%lf iters=%d", &b, &med,
                   &ips, &faults, &iters) == 5 &&
            t) {
            t += 9;
            for (char *end; out->n < MAX_SAMPLES; t = end + 1) {
                double v = strtod(t, &end);
                if (end == t)
                    break;
                out->ms[out->n++] = v;
                if (*end != ',')
                    break;
            }
            out->faults += faults * iters;
            rc = 0;
            break;
        }
        if (strstr(line, "error") || strstr(line, "Error")) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(p->info, sizeof p->info, "failed: %.400s", line);
            break;
        }
    }
    free(line);
    if (rc)
        p->ok = 0;
    return rc;
}

static void peer_stop(peer *p)
{
    if (p->to) {
        fputs("quit\n", p->to);
        fclose(p->to);
    }
    if (p->from) {
        char line[256];
        while (fgets(line, sizeof line, p->from))
            ;
        fclose(p->from);
    }
    if (p->pid > 0)
        reap(p->pid);
}

/* --------------------------------------------------------------- timing */

/* Runs our forwards of batch n for about `seconds`, appending samples. */
static int our_round(model *m, const float *in, float *out, int n, double seconds, side *s, ms_err *err)
{
    long f0 = minor_faults();
    uint64_t start = ms_now_ns();
    int before = s->n;
    while (s->n < MAX_SAMPLES && (s->n - before < 3 || (double)(ms_now_ns() - start) / 1e9 < seconds)) {
        uint64_t t0 = ms_now_ns();
        int rc = model_forward(m, in, n, out, err);
        if (rc)
            return rc;
        s->ms[s->n++] = (double)(ms_now_ns() - t0) / 1e6;
    }
    s->faults += (double)(minor_faults() - f0);
    return 0;
}

static int bench_batch(model *m, const bench_opts *o, peer *p, result *r, ms_err *err)
{
    int n = r->batch, s = model_prep(m)->size, dim = model_dim(m);
    size_t in_n = (size_t)n * 3 * (size_t)s * (size_t)s;
    float *in = malloc(in_n * sizeof *in), *out = calloc((size_t)n * (size_t)dim, sizeof *out);
    r->ours.ms = malloc(MAX_SAMPLES * sizeof(double));
    r->peer.ms = malloc(MAX_SAMPLES * sizeof(double));
    int rc = 0;
    if (!in || !out || !r->ours.ms || !r->peer.ms) {
        rc = ms_err_set(err, MS_ENOMEM, "out of memory");
    } else {
        /* touch the sample arrays now: their pages must not count as the forward's faults */
        memset(r->ours.ms, 0, MAX_SAMPLES * sizeof(double));
        memset(r->peer.ms, 0, MAX_SAMPLES * sizeof(double));
        fill_random(in, in_n);
        for (int i = 0; i < 3 && !rc; i++) /* the first builds the plan for this batch size */
            rc = model_forward(m, in, n, out, err);
    }
    double slice = o->seconds / o->rounds;
    for (int k = 0; k < o->rounds && !rc; k++) {
        rc = our_round(m, in, out, n, slice, &r->ours, err);
        if (!rc && p->ok)
            peer_round(p, n, slice, &r->peer);
    }
    if (!rc) {
        r->faults = r->ours.faults / r->ours.n;
        r->ms = cli_median(r->ours.ms, r->ours.n);
        r->ips = n / (r->ms / 1e3);
        r->gflops = model_flops_per_image(m) * n / (r->ms / 1e3) / 1e9;
        if (r->peer.n && p->ok) {
            r->peer_ok = 1;
            r->peer_ms = cli_median(r->peer.ms, r->peer.n);
            r->peer_ips = n / (r->peer_ms / 1e3);
            r->peer_faults = r->peer.faults / r->peer.n;
        }
    }
    free(in);
    free(out);
    return rc;
}

/* --------------------------------------------------------------- output */

typedef struct summary {
    const char *path;
    double load_ms, rss_mb, peak;
    const char *peer_info;
} summary;

static void print_text(const bench_opts *o, model *m, const result *r, const summary *s)
{
    printf("machine     %s, %ld online CPUs; OMP_NUM_THREADS=%s OPENBLAS_CORETYPE=%s\n", cpu_name(),
           sysconf(_SC_NPROCESSORS_ONLN), getenv("OMP_NUM_THREADS") ? getenv("OMP_NUM_THREADS") : "(unset)",
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "(unset)");
    printf("model       %s (%d-d, %.2f GFLOP/image)%s\n", s->path, model_dim(m), model_flops_per_image(m) / 1e9,
           o->bf16 ? ", fpmath bf16" : ", fp32");
    printf("runtime     %s\n", model_runtime_info(m));
    printf("fp32 peak   %.0f GFLOP/s (oneDNN 1024^3 matmul, all threads)\n", s->peak);
    printf("load        %.0f ms from model_load to the first vector (batch 1)\n", s->load_ms);
    printf("peak RSS    %.0f MB after load and the batch-1 forwards\n", s->rss_mb);
    if (o->peer)
        printf("peer        %s\n", s->peer_info[0] ? s->peer_info : "(no output)");
    printf("\n%5s %10s %9s %9s %6s %11s | %10s %9s %11s | %6s\n", "batch", "images/s", "ms/fwd", "GFLOP/s", "%peak",
           "faults/fwd", "peer img/s", "peer ms", "peer faults", "ratio");
    for (int i = 0; i < o->n_batches; i++) {
        printf("%5d %10.1f %9.2f %9.1f %5.0f%% %11.2f |", r[i].batch, r[i].ips, r[i].ms, r[i].gflops,
               s->peak > 0 ? 100 * r[i].gflops / s->peak : 0, r[i].faults);
        if (r[i].peer_ok)
            printf(" %10.1f %9.2f %11.1f | %5.2fx\n", r[i].peer_ips, r[i].peer_ms, r[i].peer_faults,
                   r[i].ips / r[i].peer_ips);
        else
            printf(" %10s %9s %11s | %6s\n", "-", "-", "-", "-");
    }
    printf("\nmedians of every forward, %.0f s per side and batch size in %d alternating rounds, after 3 warm-up\n"
           "forwards; ratio = our images/s over the peer's; faults = minor page faults per forward\n",
           o->seconds, o->rounds);
}

static void print_json(const bench_opts *o, model *m, const result *r, const summary *s)
{
    json_t *root = json_object(), *rows = json_array();
    json_object_set_new(root, "model", cli_json_text(s->path));
    json_object_set_new(root, "identity", json_string(model_identity(m)));
    json_object_set_new(root, "gflop_per_image", json_real(model_flops_per_image(m) / 1e9));
    json_object_set_new(root, "runtime", json_string(model_runtime_info(m)));
    json_object_set_new(root, "cpu", json_string(cpu_name()));
    json_object_set_new(root, "fp32_peak_gflops", json_real(s->peak));
    json_object_set_new(root, "load_to_first_vector_ms", json_real(s->load_ms));
    json_object_set_new(root, "peak_rss_mb_batch1", json_real(s->rss_mb));
    json_object_set_new(root, "bf16", json_boolean(o->bf16));
    json_object_set_new(root, "seconds", json_real(o->seconds));
    json_object_set_new(root, "rounds", json_integer(o->rounds));
    json_object_set_new(root, "peer", json_string(s->peer_info));
    for (int i = 0; i < o->n_batches; i++) {
        json_t *row = json_object();
        json_object_set_new(row, "batch", json_integer(r[i].batch));
        json_object_set_new(row, "median_ms", json_real(r[i].ms));
        json_object_set_new(row, "images_per_s", json_real(r[i].ips));
        json_object_set_new(row, "gflops", json_real(r[i].gflops));
        json_object_set_new(row, "share_of_peak", json_real(s->peak > 0 ? r[i].gflops / s->peak : 0));
        json_object_set_new(row, "faults_per_forward", json_real(r[i].faults));
        json_object_set_new(row, "forwards", json_integer(r[i].ours.n));
        if (r[i].peer_ok) {
            json_object_set_new(row, "peer_median_ms", json_real(r[i].peer_ms));
            json_object_set_new(row, "peer_images_per_s", json_real(r[i].peer_ips));
            json_object_set_new(row, "peer_faults_per_forward", json_real(r[i].peer_faults));
            json_object_set_new(row, "peer_forwards", json_integer(r[i].peer.n));
            json_object_set_new(row, "ratio", json_real(r[i].ips / r[i].peer_ips));
        }
        json_array_append_new(rows, row);
    }
    json_object_set_new(root, "batches", rows);
    char *out = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
    if (out)
        puts(out);
    free(out);
    json_decref(root);
}

/* Without --model: a random-weight ResNet-50 in a temporary folder. */
static int make_resnet50(const char *script, char *dir, size_t dlen, char *path, size_t plen)
{
    snprintf(dir, dlen, "%s/medsearch-bench-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, plen, "%s/resnet50.onnx", dir);
    fprintf(stderr, "bench embed: exporting a random-weight torchvision ResNet-50 to %s ...\n", path);
    char *argv[] = {PYTHON, (char *)script, "export-resnet50", path, NULL};
    pid_t pid;
    FILE *from;
    if (spawn(argv, &pid, NULL, &from))
        return -1;
    char line[512];
    while (fgets(line, sizeof line, from))
        ; /* the exporter's warnings */
    fclose(from);
    return reap(pid) == 0 ? 0 : -1;
}

/* Load to first vector: model_load and one batch-1 forward. */
static int timed_load(const bench_opts *o, model **m, double *ms, ms_err *err)
{
    model_options mo;
    model_options_init(&mo);
    mo.bf16 = o->bf16;
    uint64_t t0 = ms_now_ns();
    int rc = model_load(o->model, &mo, m, err);
    if (rc)
        return rc;
    int s = model_prep(*m)->size;
    float *in = calloc((size_t)3 * s * s, sizeof *in), *out = calloc((size_t)model_dim(*m), sizeof *out);
    rc = in && out ? model_forward(*m, in, 1, out, err) : ms_err_set(err, MS_ENOMEM, "out of memory");
    *ms = (double)(ms_now_ns() - t0) / 1e6;
    free(in);
    free(out);
    return rc;
}

int bench_embed(int argc, char **argv)
{
    bench_opts o;
    int pa = parse_args(argc, argv, &o);
    if (pa) {
        usage(pa > 0 ? stdout : stderr);
        return pa > 0 ? 0 : EXIT_USAGE;
    }
    char script[4096] = "", tmpdir[512] = "", made[1024] = "";
    int have_script = cli_find_repo_file("bench/peer_torch_embed.py", script, sizeof script) == 0;
    if (!o.model) {
        if (!have_script || make_resnet50(script, tmpdir, sizeof tmpdir, made, sizeof made)) {
            fprintf(stderr, "medsearch bench embed: no --model given, and bench/peer_torch_embed.py with "
                            "%s (python3-torch) could not build ResNet-50\n", PYTHON);
            if (tmpdir[0]) {
                unlink(made);
                rmdir(tmpdir);
            }
            return EXIT_ENV;
        }
        o.model = made;
        if (!o.peer_arch)
            o.peer_arch = "resnet50"; /* the peer runs the torchvision module the file came from */
    }
    signal(SIGPIPE, SIG_IGN); /* a dying peer must not kill us */
    ms_err err = {0};
    model *m = NULL;
    result res[MAX_BATCHES];
    memset(res, 0, sizeof res);
    summary sum = {o.model, 0, 0, 0, ""};
    peer p;
    memset(&p, 0, sizeof p);
    int rc = timed_load(&o, &m, &sum.load_ms, &err);
    sum.rss_mb = peak_rss_mb();
    if (!rc && o.peer && have_script)
        peer_start(&p, &o, script, o.model, model_prep(m)->size);
    else if (o.peer)
        snprintf(p.info, sizeof p.info, "skipped: bench/peer_torch_embed.py not found");
    for (int i = 0; i < o.n_batches && !rc; i++) {
        res[i].batch = o.batches[i];
        rc = bench_batch(m, &o, &p, &res[i], &err);
        if (o.batches[i] == 1)
            sum.rss_mb = peak_rss_mb(); /* before a larger batch adds its activations */
    }
    if (o.peer)
        peer_stop(&p);
    sum.peer_info = p.info;
    if (!rc)
        rc = model_measure_peak_gflops(2.0, &sum.peak, &err);
    int code = 0;
    if (rc) {
        fprintf(stderr, "medsearch bench embed: %s: %s\n", o.model, err.msg);
        code = rc == MS_ENOTFOUND || rc == MS_EIO ? EXIT_ENV : 1;
    } else if (o.json) {
        print_json(&o, m, res, &sum);
    } else {
        print_text(&o, m, res, &sum);
    }
    for (int i = 0; i < MAX_BATCHES; i++) {
        free(res[i].ours.ms);
        free(res[i].peer.ms);
    }
    model_free(m);
    if (made[0]) {
        unlink(made);
        rmdir(tmpdir);
    }
    return code;
}
