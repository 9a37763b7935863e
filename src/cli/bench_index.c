/*
 * bench_index.c - `medsearch bench index`: speed and recall of the vector
 * index on clustered synthetic data, next to FAISS and hnswlib run on the
 * same data and queries in the same run (bench/peer_index.py).
 *
 * What it prints, per engine: build time, memory, single-query latency
 * p50/p99, queries/s for batches of 100, recall@10 against the exact
 * answer; the machine's memory bandwidth (STREAM-like copy and read,
 * measured here) and each exact scan as a share of it; the HNSW recall vs
 * queries/s curve over efSearch; save and load times of the index file;
 * and a summary: each HNSW engine at the first efSearch reaching
 * recall@k >= 0.95, with its ratios to hnswlib and FAISS of the same run.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "index/index.h"
#include "index/synth.h"
#include "util/timing.h"

#define BATCH 100
#define MAX_EFS 32

typedef struct bench_opts {
    size_t n;
    int dim, queries, k, centres, M, efc, threads;
    uint64_t seed;
    double spread;
    int efs[MAX_EFS], n_efs;
    bool peers, flat, quant, hnsw, persist, graph_f32;
    bool hnsw_f32, hnsw_int8, hnsw_int4;   /* graph variants: float32 only, int8 / int4 copy walked */
    const char *peer_script, *peer_engines, *simd, *tmpdir;
} bench_opts;

typedef struct engine_row {
    char name[48];
    double build_s, mem_mb, p50_ms, p99_ms, qps, recall;
    int ef;
} engine_row;

static engine_row rows[64];
static int n_rows;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsearch bench index [OPTIONS]\n"
            "  --n N            vectors (default 100000)\n"
            "  --dim D          dimension (default 1280)\n"
            "  --queries Q      test queries (default 200)\n"
            "  --k K            neighbours per query (default 10)\n"
            "  --centres C      Gaussian centres of the synthetic data (default 300)\n"
            "  --spread S       within-centre spread, latent units (default 1.0; centres are N(0,1))\n"
            "  --M M --efc E    HNSW links and efConstruction (default 16, 200)\n"
            "  --ef LIST        efSearch values for the curve (default 16,24,32,48,64,96,128,192,256,384,512)\n"
            "  --threads T      build and batch threads (default 2)\n"
            "  --seed S         data seed (default 1)\n"
            "  --peers          also run FAISS and hnswlib (bench/peer_index.py, /usr/bin/python3)\n"
            "  --peer-script P  path of peer_index.py (default bench/peer_index.py)\n"
            "  --peer-engines L hnswlib,faiss (default both, run in that order)\n"
            "  --hnsw-quant L   our HNSW variants: none (float32 vectors), int8 or int4 (that copy\n"
            "                   walked, exact re-rank); a list runs each (default none)\n"
            "  --graph-f32      build our graphs with float32 distances only (no temporary int8 codes)\n"
            "  --no-flat --no-quant --no-hnsw --no-persist   skip parts\n"
            "  --simd LEVEL     auto, avx512, avx2 or portable\n"
            "  --tmpdir DIR     where data files for the peers go (default $TMPDIR or /tmp)\n");
}

static int parse_efs(const char *s, bench_opts *o)
{
    o->n_efs = 0;
    while (*s && o->n_efs < MAX_EFS) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 100000)
            return -1;
        o->efs[o->n_efs++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return o->n_efs ? 0 : -1;
}

/* Each numeric option is a whole number (or, for --spread, a number) in its
 * range, written in full: "10x" or "-1" is a usage error, not 10 or a
 * default taken in silence. Returns 0, or -1 having said why. */
static int int_option(const char *name, const char *v, int lo, int hi, int *out)
{
    if (cli_parse_int_in(v, lo, hi, out) == 0)
        return 0;
    fprintf(stderr, "bench index: --%s wants a whole number from %d to %d, not '%s'\n", name, lo, hi, v);
    return -1;
}

static int u64_option(const char *name, const char *v, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || x < lo || x > hi) {
        fprintf(stderr, "bench index: --%s wants a whole number from %llu to %llu, not '%s'\n", name,
                (unsigned long long)lo, (unsigned long long)hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int spread_option(const char *v, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x > 0 && x <= 100)) {
        fprintf(stderr, "bench index: --spread wants a number above 0 and at most 100, not '%s'\n", v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_args(int argc, char **argv, bench_opts *o)
{
    *o = (bench_opts){.n = 100000, .dim = 1280, .queries = 200, .k = 10, .centres = 300, .spread = 1.0, .M = 16, .efc = 200,
                      .threads = 2, .seed = 1, .flat = true, .quant = true, .hnsw = true, .persist = true,
                      .peer_script = "bench/peer_index.py", .peer_engines = "hnswlib,faiss", .simd = "auto",
                      .hnsw_f32 = true};
    parse_efs("16,24,32,48,64,96,128,192,256,384,512", o);
    const char *t = getenv("TMPDIR");
    o->tmpdir = t && *t ? t : "/tmp";
    static const struct option lo[] = {
        {"n", 1, 0, 'n'}, {"dim", 1, 0, 'd'}, {"queries", 1, 0, 'q'}, {"k", 1, 0, 'k'},
        {"centres", 1, 0, 'c'}, {"spread", 1, 0, 'p'}, {"M", 1, 0, 'M'}, {"efc", 1, 0, 'E'}, {"ef", 1, 0, 'e'},
        {"threads", 1, 0, 't'}, {"seed", 1, 0, 's'}, {"peers", 0, 0, 'P'}, {"peer-script", 1, 0, 'S'}, {"peer-engines", 1, 0, 'G'},
        {"no-flat", 0, 0, 1}, {"no-quant", 0, 0, 2}, {"no-hnsw", 0, 0, 3}, {"no-persist", 0, 0, 4},
        {"simd", 1, 0, 'x'}, {"tmpdir", 1, 0, 'T'}, {"hnsw-quant", 1, 0, 'H'}, {"graph-f32", 0, 0, 5},
        {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    optind = 1;
    int c;
    uint64_t n = o->n;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        /* The index's own limits (index.h) for M, efConstruction and k. */
        case 'n': bad = u64_option("n", optarg, 1, 100000000, &n); o->n = (size_t)n; break;
        case 'd': bad = int_option("dim", optarg, 1, 65536, &o->dim); break;
        case 'q': bad = int_option("queries", optarg, 1, 1000000, &o->queries); break;
        case 'k': bad = int_option("k", optarg, 1, 1000, &o->k); break;
        case 'c': bad = int_option("centres", optarg, 1, 1000000, &o->centres); break;
        case 'p': bad = spread_option(optarg, &o->spread); break;
        case 'M': bad = int_option("M", optarg, 2, 128, &o->M); break;
        case 'E': bad = int_option("efc", optarg, 1, 100000, &o->efc); break;
        case 'e':
            if (parse_efs(optarg, o)) {
                fprintf(stderr, "bench index: --ef wants a comma-separated list of 1..100000\n");
                return EXIT_USAGE;
            }
            break;
        case 't': bad = int_option("threads", optarg, 1, 256, &o->threads); break;
        case 's': bad = u64_option("seed", optarg, 0, UINT64_MAX, &o->seed); break;
        case 'P': o->peers = true; break;
        case 'S': o->peer_script = optarg; break;
        case 'G': o->peer_engines = optarg; break;
        case 1: o->flat = false; break;
        case 2: o->quant = false; break;
        case 3: o->hnsw = false; break;
        case 4: o->persist = false; break;
        case 'x': o->simd = optarg; break;
        case 'H':
            o->hnsw_f32 = strstr(optarg, "none") != NULL;
            o->hnsw_int8 = strstr(optarg, "int8") != NULL;
            o->hnsw_int4 = strstr(optarg, "int4") != NULL;
            if (!o->hnsw_f32 && !o->hnsw_int8 && !o->hnsw_int4) {
                fprintf(stderr, "bench index: --hnsw-quant wants a list of none, int8, int4\n");
                return EXIT_USAGE;
            }
            break;
        case 5: o->graph_f32 = true; break;
        case 'T': o->tmpdir = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return EXIT_USAGE;
        }
        if (bad)
            return EXIT_USAGE;
    }
    if (optind < argc) {
        fprintf(stderr, "bench index: unexpected argument '%s'\n", argv[optind]);
        return EXIT_USAGE;
    }
    return -1;
}

/* ---- measurement helpers ---- */

static double rss_mb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / 1048576.0;
}

/* The 1-minute load average, so a reader knows how quiet the machine was. */
static void print_load(const char *when)
{
    FILE *f = fopen("/proc/loadavg", "r");
    double l1 = -1, l5 = -1, l15 = -1;
    if (f) {
        if (fscanf(f, "%lf %lf %lf", &l1, &l5, &l15) != 3)
            l1 = -1;
        fclose(f);
    }
    printf("load average %s: %.2f %.2f %.2f\n", when, l1, l5, l15);
    fflush(stdout);
}

/* STREAM-like: best of 5 copies of 256 MiB (bytes read + written), and
 * best of 5 reads. The read uses glibc's memchr for a byte that is not
 * there: a vectorised pure read written by others, the access pattern of a
 * scan, and no computation to hide behind. */
static void memory_bandwidth(double *copy_gbs, double *read_gbs)
{
    size_t bytes = (size_t)256 << 20;
    unsigned char *a = malloc(bytes), *b = malloc(bytes);
    *copy_gbs = *read_gbs = 0;
    if (!a || !b) {
        free(a);
        free(b);
        return;
    }
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    void *(*volatile find)(const void *, int, size_t) = memchr;
    for (int rep = 0; rep < 5; rep++) {
        uint64_t t0 = ms_now_ns();
        memcpy(b, a, bytes);
        double s = (double)(ms_now_ns() - t0) / 1e9;
        double gbs = 2.0 * (double)bytes / s / 1e9;
        *copy_gbs = gbs > *copy_gbs ? gbs : *copy_gbs;
        t0 = ms_now_ns();
        if (find(b, 0, bytes))
            fprintf(stderr, "bench index: memchr found a byte that is not there\n");
        s = (double)(ms_now_ns() - t0) / 1e9;
        gbs = (double)bytes / s / 1e9;
        *read_gbs = gbs > *read_gbs ? gbs : *read_gbs;
    }
    free(a);
    free(b);
}

static double recall_vs(const index_hit *found, const int *n_found, const int64_t *truth, int nq, int k)
{
    double sum = 0;
    for (int q = 0; q < nq; q++) {
        int hit = 0;
        for (int i = 0; i < n_found[q]; i++)
            for (int j = 0; j < k; j++)
                if (found[(size_t)q * k + i].id == truth[(size_t)q * k + j]) {
                    hit++;
                    break;
                }
        sum += (double)hit / k;
    }
    return sum / nq;
}

typedef int (*search_fn)(vindex *ix, const float *q, int k, int ef, index_hit *hits, int *n, ms_err *err);

static int exact_fn(vindex *ix, const float *q, int k, int ef, index_hit *hits, int *n, ms_err *err)
{
    return index_search_exact(ix, q, k, hits, n, err);
}

/* Single queries one by one: latencies and answers. */
static int run_single(vindex *ix, search_fn fn, const float *qs, int nq, int dim, int k, int ef, index_hit *hits,
                      int *n_hits, double *p50, double *p99, double *mean)
{
    double *lat = malloc((size_t)nq * sizeof *lat);
    ms_err err;
    double total = 0;
    if (!lat) {
        fprintf(stderr, "bench index: out of memory for %d latencies\n", nq);
        return -1;
    }
    for (int q = 0; q < nq; q++) {
        uint64_t t0 = ms_now_ns();
        if (fn(ix, qs + (size_t)q * dim, k, ef, hits + (size_t)q * k, &n_hits[q], &err)) {
            fprintf(stderr, "bench index: search failed: %s\n", err.msg);
            free(lat);
            return -1;
        }
        lat[q] = ms_elapsed_ms(t0);
        total += lat[q];
    }
    *mean = total / nq;
    *p50 = cli_percentile(lat, (size_t)nq, 0.50);
    *p99 = cli_percentile(lat, (size_t)nq, 0.99);
    free(lat);
    return 0;
}

/* Batches of BATCH queries; returns queries/s. */
static double run_batches(vindex *ix, const float *qs, int nq, int dim, int k, int ef, index_hit *hits, int *n_hits)
{
    ms_err err;
    uint64_t t0 = ms_now_ns();
    for (int q = 0; q < nq; q += BATCH) {
        int m = nq - q < BATCH ? nq - q : BATCH;
        if (index_search_batch(ix, qs + (size_t)q * dim, m, k, ef, hits + (size_t)q * k, n_hits + q, &err)) {
            fprintf(stderr, "bench index: batch failed: %s\n", err.msg);
            return 0;
        }
    }
    return nq / ((double)(ms_now_ns() - t0) / 1e9);
}

static engine_row *add_row(const char *name)
{
    engine_row *r = &rows[n_rows < 63 ? n_rows++ : 63];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->ef = -1;
    return r;
}

static vindex *build(const bench_opts *o, index_kind kind, index_quant quant, const int64_t *ids, const float *data,
                     engine_row *row)
{
    index_params p;
    index_params_init(&p);
    p.kind = kind;
    p.quant = quant;
    p.M = o->M;
    p.ef_construction = o->efc;
    p.threads = o->threads;
    p.graph_f32 = o->graph_f32;
    vindex *ix;
    ms_err err;
    double rss0 = rss_mb();
    uint64_t t0 = ms_now_ns();
    if (index_create(o->dim, &p, &ix, &err))
        ix = NULL;
    if (!ix || index_add(ix, ids, data, o->n, &err)) {
        fprintf(stderr, "bench index: build failed: %s\n", err.msg);
        index_free(ix);
        return NULL;
    }
    row->build_s = (double)(ms_now_ns() - t0) / 1e9;
    double rss = rss_mb() - rss0;
    row->mem_mb = (double)index_memory_bytes(ix) / 1048576.0;
    printf("  built %s in %.2f s: %.1f MiB by its own count, RSS grew %.1f MiB\n", row->name, row->build_s,
           row->mem_mb, rss);
    fflush(stdout);
    return ix;
}

/* ---- peers ---- */

static int write_f32(const char *path, const float *v, size_t count)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(v, sizeof *v, count, f);
    return fclose(f) == 0 && w == count ? 0 : -1;
}

static void run_peers(const bench_opts *o, const float *data, const float *qs, const int64_t *truth)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/msbench-XXXXXX", o->tmpdir);
    if (!mkdtemp(dir)) {
        fprintf(stderr, "bench index: cannot make a temporary folder in %s: %s\n", o->tmpdir, strerror(errno));
        return;
    }
    char fd[600], fq[600], fg[600], cmd[4096];
    snprintf(fd, sizeof fd, "%s/data.f32", dir);
    snprintf(fq, sizeof fq, "%s/queries.f32", dir);
    snprintf(fg, sizeof fg, "%s/truth.i64", dir);
    FILE *g = fopen(fg, "wb");
    bool ok = g && write_f32(fd, data, o->n * (size_t)o->dim) == 0 &&
              write_f32(fq, qs, (size_t)o->queries * o->dim) == 0 &&
              fwrite(truth, sizeof *truth, (size_t)o->queries * o->k, g) == (size_t)o->queries * o->k;
    if (g)
        ok = fclose(g) == 0 && ok;
    if (!ok) {
        fprintf(stderr, "bench index: cannot write the peers' data files in %s\n", dir);
    } else {
        char efs[256] = "";
        for (int i = 0; i < o->n_efs; i++)
            snprintf(efs + strlen(efs), sizeof efs - strlen(efs), "%s%d", i ? "," : "", o->efs[i]);
        snprintf(cmd, sizeof cmd,
                 "/usr/bin/python3 '%s' --data '%s' --queries '%s' --truth '%s' --n %zu --dim %d --nq %d --k %d "
                 "--M %d --efc %d --ef %s --threads %d --engines '%s'%s%s",
                 o->peer_script, fd, fq, fg, o->n, o->dim, o->queries, o->k, o->M, o->efc, efs, o->threads, o->peer_engines,
                 o->flat ? "" : " --no-flat", o->hnsw ? "" : " --no-hnsw");
        printf("\npeers: %s\n", cmd);
        fflush(stdout);
        FILE *p = popen(cmd, "r");
        char line[4096];
        while (p && fgets(line, sizeof line, p)) {
            json_error_t je;
            json_t *j = line[0] == '{' ? json_loads(line, 0, &je) : NULL;
            if (!j) {
                fputs(line, stdout); /* the script's own notes */
                fflush(stdout);
                continue;
            }
            engine_row *r = add_row(json_string_value(json_object_get(j, "engine")) ?: "peer");
            r->build_s = json_number_value(json_object_get(j, "build_s"));
            r->mem_mb = json_number_value(json_object_get(j, "mem_mb"));
            r->p50_ms = json_number_value(json_object_get(j, "p50_ms"));
            r->p99_ms = json_number_value(json_object_get(j, "p99_ms"));
            r->qps = json_number_value(json_object_get(j, "qps"));
            r->recall = json_number_value(json_object_get(j, "recall"));
            r->ef = json_object_get(j, "ef") ? (int)json_integer_value(json_object_get(j, "ef")) : -1;
            printf("  %-28s ef %4d  recall@%d %.4f  p50 %8.3f ms  p99 %8.3f ms  %9.1f q/s\n", r->name, r->ef,
                   o->k, r->recall, r->p50_ms, r->p99_ms, r->qps);
            fflush(stdout);
            json_decref(j);
        }
        int st = p ? pclose(p) : -1;
        if (st != 0)
            printf("  (peer script exited with status %d)\n", st);
    }
    unlink(fd);
    unlink(fq);
    unlink(fg);
    rmdir(dir);
}

/* ---- the parts ---- */

/* Builds one HNSW variant, runs the efSearch curve, saves and loads it. */
static int run_hnsw(const bench_opts *po, index_quant quant, const int64_t *ids, const float *data, const float *qs,
                    const int64_t *truth, index_hit *hits, int *n_hits)
{
    bench_opts o = *po;
    ms_err err;
    double mean;
    const char *family = quant == INDEX_QUANT_INT8   ? "medsearch hnsw int8"
                         : quant == INDEX_QUANT_INT4 ? "medsearch hnsw int4"
                                                     : "medsearch hnsw";
    char bname[48];
    snprintf(bname, sizeof bname, "%s (build)", family);
    {
        engine_row *hb = add_row(bname);
        vindex *ix = build(&o, INDEX_HNSW, quant, ids, data, hb);
        if (!ix)
            return 1;
        printf("  %s: efSearch curve (single queries one by one; batches of %d on %d threads):\n", family, BATCH,
               o.threads);
        engine_row *best = NULL;
        for (int e = 0; e < o.n_efs; e++) {
            engine_row *r = add_row(family);
            r->ef = o.efs[e];
            r->build_s = hb->build_s;
            r->mem_mb = hb->mem_mb;
            if (run_single(ix, index_search, qs, o.queries, o.dim, o.k, o.efs[e], hits, n_hits, &r->p50_ms,
                           &r->p99_ms, &mean)) {
                index_free(ix);
                return 1;
            }
            r->recall = recall_vs(hits, n_hits, truth, o.queries, o.k);
            r->qps = run_batches(ix, qs, o.queries, o.dim, o.k, o.efs[e], hits, n_hits);
            printf("    ef %4d  recall@%d %.4f  p50 %8.3f ms  p99 %8.3f ms  %9.1f q/s\n", r->ef, o.k, r->recall,
                   r->p50_ms, r->p99_ms, r->qps);
            fflush(stdout);
            if (!best && r->recall >= 0.95)
                best = r;
        }
        if (best)
            printf("  first efSearch with recall@%d >= 0.95: %d (%.1f q/s)\n", o.k, best->ef, best->qps);
        if (o.persist) {
            char path[600];
            snprintf(path, sizeof path, "%s/msbench-index-%ld.idx", o.tmpdir, (long)getpid());
            uint64_t ts = ms_now_ns();
            if (index_save(ix, path, "bench", 1, &err)) {
                fprintf(stderr, "bench index: %s\n", err.msg);
            } else {
                double save_s = (double)(ms_now_ns() - ts) / 1e9;
                vindex *lx;
                uint64_t gen;
                ts = ms_now_ns();
                if (index_load(path, o.dim, "bench", NULL, &lx, &gen, &err)) {
                    fprintf(stderr, "bench index: %s\n", err.msg);
                } else {
                    double load_s = (double)(ms_now_ns() - ts) / 1e9;
                    run_single(lx, index_search, qs, o.queries, o.dim, o.k, 0, hits, n_hits, &mean,
                               &mean, &mean);
                    printf("  persisted: save %.2f s, load %.3f s (%zu vectors; recall@%d after load %.4f)\n", save_s,
                           load_s, index_count(lx), o.k, recall_vs(hits, n_hits, truth, o.queries, o.k));
                    index_free(lx);
                }
                unlink(path);
            }
        }
        index_free(ix);
    }
    return 0;
}


static void print_rows(int k)
{
    printf("\n%-30s %5s %9s %10s %9s %9s %10s %9s\n", "engine", "ef", "build s", "memory MiB", "p50 ms", "p99 ms",
           "batch q/s", "recall@k");
    for (int i = 0; i < n_rows; i++) {
        engine_row *r = &rows[i];
        char ef[16] = "-";
        if (r->ef >= 0)
            snprintf(ef, sizeof ef, "%d", r->ef);
        printf("%-30s %5s %9.2f %10.1f %9.3f %9.3f %10.1f %9.4f\n", r->name, ef, r->build_s, r->mem_mb, r->p50_ms,
               r->p99_ms, r->qps, r->recall);
    }
    (void)k;
}

static const char *const graph_engines[] = {"medsearch hnsw", "medsearch hnsw int8", "medsearch hnsw int4", "hnswlib",
                                            "faiss IndexHNSWFlat"};
#define N_GRAPH_ENGINES 5

static engine_row *row_at(const char *name, int ef)
{
    for (int i = 0; i < n_rows; i++)
        if (!strcmp(rows[i].name, name) && rows[i].ef == ef)
            return &rows[i];
    return NULL;
}

/* The row of name at its first efSearch (in the curve's order) with recall >= min. */
static engine_row *first_reaching(const bench_opts *o, const char *name, double min)
{
    for (int e = 0; e < o->n_efs; e++) {
        engine_row *r = row_at(name, o->efs[e]);
        if (r && r->recall >= min)
            return r;
    }
    return NULL;
}

/* Recall vs queries/s of every graph engine, side by side, then each at
 * its first efSearch reaching recall 0.95 with ratios to the peers. */
static void print_curves(const bench_opts *o)
{
    printf("\nrecall@%d / batch q/s / single-query p50 ms by efSearch:\n%5s", o->k, "ef");
    for (int g = 0; g < N_GRAPH_ENGINES; g++)
        if (first_reaching(o, graph_engines[g], 0))
            printf("  %-30s", graph_engines[g]);
    printf("\n");
    for (int e = 0; e < o->n_efs; e++) {
        printf("%5d", o->efs[e]);
        for (int g = 0; g < N_GRAPH_ENGINES; g++) {
            if (!first_reaching(o, graph_engines[g], 0))
                continue;
            engine_row *r = row_at(graph_engines[g], o->efs[e]);
            if (r)
                printf("  %.4f %9.1f %8.3f      ", r->recall, r->qps, r->p50_ms);
            else
                printf("  %-30s", "-");
        }
        printf("\n");
    }
    engine_row *hl = first_reaching(o, "hnswlib", 0.95), *fh = first_reaching(o, "faiss IndexHNSWFlat", 0.95);
    printf("\nat the first efSearch with recall@%d >= 0.95 (ratios: ours / peer for q/s, build and memory; peer / "
           "ours for p50):\n", o->k);
    for (int g = 0; g < N_GRAPH_ENGINES; g++) {
        engine_row *r = first_reaching(o, graph_engines[g], 0.95);
        if (!r)
            continue;
        printf("  %-20s ef %4d  recall %.4f  %9.1f q/s  p50 %7.3f ms  build %8.1f s  memory %8.1f MiB\n", r->name,
               r->ef, r->recall, r->qps, r->p50_ms, r->build_s, r->mem_mb);
        engine_row *peers[2] = {hl, fh};
        const char *pn[2] = {"hnswlib", "FAISS HNSW"};
        for (int p = 0; p < 2; p++)
            if (peers[p] && r != peers[p] && !strncmp(r->name, "medsearch", 9))
                printf("      vs %-10s q/s %.2fx  p50 %.2fx lower  build %.2fx  memory %.2fx\n", pn[p],
                       r->qps / peers[p]->qps, peers[p]->p50_ms / r->p50_ms, r->build_s / peers[p]->build_s,
                       peers[p]->mem_mb > 0 ? r->mem_mb / peers[p]->mem_mb : 0);
    }
}

int bench_index(int argc, char **argv)
{
    bench_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0)
        return rc;
    ms_err err;
    if (index_simd_select(o.simd, &err)) {
        fprintf(stderr, "bench index: %s\n", err.msg);
        return EXIT_USAGE;
    }
    const char *blas = getenv("OPENBLAS_CORETYPE");
    printf("bench index: n=%zu dim=%d queries=%d k=%d centres=%d spread=%.2f M=%d efConstruction=%d threads=%d seed=%llu\n",
           o.n, o.dim, o.queries, o.k, o.centres, o.spread, o.M, o.efc, o.threads, (unsigned long long)o.seed);
    printf("kernels: %s; cores online: %ld; OPENBLAS_CORETYPE=%s; graph build distances: %s\n", index_simd_name(),
           sysconf(_SC_NPROCESSORS_ONLN), blas ? blas : "(unset)",
           o.graph_f32 ? "float32 (--graph-f32)" : "int8 codes (temporary for bulk builds)");
    print_load("at start");
    double copy_gbs, read_gbs;
    memory_bandwidth(&copy_gbs, &read_gbs);
    printf("memory bandwidth (best of 5, 256 MiB): copy %.1f GB/s (read+write, memcpy), read %.1f GB/s (memchr)\n", copy_gbs,
           read_gbs);

    size_t nd = o.n * (size_t)o.dim;
    float *data = malloc(nd * sizeof *data), *qs = malloc((size_t)o.queries * o.dim * sizeof *qs);
    int64_t *ids = malloc(o.n * sizeof *ids), *truth = malloc((size_t)o.queries * o.k * sizeof *truth);
    index_hit *hits = malloc((size_t)o.queries * o.k * sizeof *hits);
    int *n_hits = malloc((size_t)o.queries * sizeof *n_hits);
    ix_synth *syn = NULL;
    vindex *flat = NULL;
    int code = 1;
    if (!data || !qs || !ids || !truth || !hits || !n_hits) {
        fprintf(stderr, "bench index: out of memory for %zu x %d floats\n", o.n, o.dim);
        goto out;
    }
    if (ix_synth_open(o.dim, o.centres, o.spread, o.seed, &syn, &err)) {
        fprintf(stderr, "bench index: %s\n", err.msg);
        goto out;
    }
    uint64_t t0 = ms_now_ns();
    ix_synth_points(syn, 0, o.n, data);
    ix_synth_points(syn, 1, (size_t)o.queries, qs);
    ix_synth_close(syn);
    for (size_t i = 0; i < o.n; i++)
        ids[i] = (int64_t)i;
    printf("data: %.2f s to generate %.1f MiB of clustered vectors\n", ms_elapsed_ms(t0) / 1e3,
           (double)nd * 4 / 1048576.0);

    /* ground truth and the exact scan */
    engine_row *fr = add_row("medsearch flat f32");
    if (!(flat = build(&o, INDEX_FLAT, INDEX_QUANT_NONE, ids, data, fr)))
        goto out;
    double mean;
    if (run_single(flat, exact_fn, qs, o.queries, o.dim, o.k, 0, hits, n_hits, &fr->p50_ms, &fr->p99_ms, &mean))
        goto out;
    for (int q = 0; q < o.queries; q++)
        for (int i = 0; i < o.k; i++)
            truth[(size_t)q * o.k + i] = i < n_hits[q] ? hits[(size_t)q * o.k + i].id : -1;
    fr->recall = 1.0;
    double scan_gbs = (double)nd * 4 / (fr->p50_ms / 1e3) / 1e9;
    fr->qps = o.flat ? run_batches(flat, qs, o.queries, o.dim, o.k, 0, hits, n_hits) : 0;
    printf("exact f32 scan: p50 %.2f ms = %.1f GB/s = %.0f%% of copy, %.0f%% of read bandwidth; batch %.1f q/s "
           "(%.1fx single)\n",
           fr->p50_ms, scan_gbs, 100 * scan_gbs / copy_gbs, 100 * scan_gbs / read_gbs, fr->qps,
           fr->qps * mean / 1e3);
    if (o.flat && recall_vs(hits, n_hits, truth, o.queries, o.k) < 1.0)
        printf("  WARNING: batched exact answers differ from single ones\n");
    index_quant qk[] = {INDEX_QUANT_INT8, INDEX_QUANT_F16};
    const char *qn[] = {"medsearch flat int8+rerank", "medsearch flat f16+rerank"};
    double code_bytes[] = {1, 2};
    for (int t = 0; o.quant && t < 2; t++) {
        engine_row *r = add_row(qn[t]);
        vindex *ix = build(&o, INDEX_FLAT, qk[t], ids, data, r);
        if (!ix)
            goto out;
        if (run_single(ix, index_search, qs, o.queries, o.dim, o.k, 0, hits, n_hits, &r->p50_ms, &r->p99_ms, &mean)) {
            index_free(ix);
            goto out;
        }
        r->recall = recall_vs(hits, n_hits, truth, o.queries, o.k);
        r->qps = run_batches(ix, qs, o.queries, o.dim, o.k, 0, hits, n_hits);
        /* Paired timing: each query on f32 then on the compressed copy, so
         * both see the same machine load; the median of the ratios. */
        double *ratio = malloc((size_t)o.queries * sizeof *ratio);
        if (!ratio) {
            fprintf(stderr, "bench index: out of memory\n");
            index_free(ix);
            goto out;
        }
        for (int q = 0; q < o.queries; q++) {
            index_hit h1[1024];
            int n1;
            int kk = o.k < 1024 ? o.k : 1024;
            uint64_t a = ms_now_ns();
            index_search_exact(flat, qs + (size_t)q * o.dim, kk, h1, &n1, &err);
            uint64_t b = ms_now_ns();
            index_search(ix, qs + (size_t)q * o.dim, kk, 0, h1, &n1, &err);
            uint64_t c = ms_now_ns();
            ratio[q] = (double)(b - a) / (double)(c - b);
        }
        double med = cli_percentile(ratio, (size_t)o.queries, 0.5);
        free(ratio);
        double gbs = (double)nd * code_bytes[t] / (r->p50_ms / 1e3) / 1e9;
        printf("  %s: p50 %.2f ms; paired with f32 query by query: %.2fx faster (median); compressed scan %.1f GB/s "
               "= %.0f%% of read bandwidth; recall@%d %.4f\n",
               r->name, r->p50_ms, med, gbs, 100 * gbs / read_gbs, o.k, r->recall);
        index_free(ix);
    }
    index_free(flat);
    flat = NULL;

    print_load("before the graphs");
    if (o.hnsw && o.hnsw_f32 && run_hnsw(&o, INDEX_QUANT_NONE, ids, data, qs, truth, hits, n_hits))
        goto out;
    if (o.hnsw && o.hnsw_int8 && run_hnsw(&o, INDEX_QUANT_INT8, ids, data, qs, truth, hits, n_hits))
        goto out;
    if (o.hnsw && o.hnsw_int4 && run_hnsw(&o, INDEX_QUANT_INT4, ids, data, qs, truth, hits, n_hits))
        goto out;
    fflush(stdout);
    if (o.peers) {
        print_load("before the peers");
        run_peers(&o, data, qs, truth);
    }
    print_load("at the end");
    print_rows(o.k);
    if (o.hnsw)
        print_curves(&o);
    code = 0;
out:
    index_free(flat);
    free(data);
    free(qs);
    free(ids);
    free(truth);
    free(hits);
    free(n_hits);
    return code;
}
