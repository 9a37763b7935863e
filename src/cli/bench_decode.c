/*
 * bench_decode.c - `medsearch bench decode`: how long decoding and preparing
 * one X-ray takes, stage by stage, against PIL on the same files in the
 * same run.
 *
 * Each file is read into memory once. Then, in R rounds: time our
 * image_prepare_timed (decode to 8-bit gray, Lanczos3 resize, normalise into
 * the input tensor; libvips on one thread) on every file, then run
 * bench/peer_decode.py with /usr/bin/python3 (PIL: open + convert("L") +
 * resize, LANCZOS and BILINEAR with reducing_gap) on the same files.
 * Alternating the two in rounds spreads the load of other processes over
 * both sides. Reported: our median per stage over all runs, PIL's median of
 * its per-round medians, and the ratio ours / PIL.
 */
#include <dirent.h>
#include <limits.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "image/image.h"
#include "util/timing.h"

extern char **environ;

#define DEFAULT_DIR "data/nih_cxr14_fullres/images"
#define PEER_SCRIPT "bench/peer_decode.py"
#define PEER_PYTHON "/usr/bin/python3"
#define MAX_FILES 256
#define MAX_ROUNDS 20

/* Stages as image_timing gives them, the call's wall time, and the CPU time
 * of the calling thread (where all of image_prepare's work runs). */
enum { ST_DECODE, ST_RESIZE, ST_NORMALISE, ST_TOTAL, ST_CPU, N_STAGES };

typedef struct file_bench {
    const char *path;
    unsigned char *bytes;
    size_t len;
    uint64_t *ns[N_STAGES]; /* every timed run, all rounds */
    int n_runs;
    /* per-round PIL medians, ms: wall and thread CPU, LANCZOS and BIL-RG */
    double pil_lanczos[MAX_ROUNDS], pil_bilinear[MAX_ROUNDS];
    double pil_lanczos_cpu[MAX_ROUNDS], pil_bilinear_cpu[MAX_ROUNDS];
    int n_pil;
} file_bench;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double median_ms(uint64_t *ns, int n)
{
    qsort(ns, (size_t)n, sizeof *ns, cmp_u64);
    return (double)(n % 2 ? ns[n / 2] : (ns[n / 2 - 1] + ns[n / 2]) / 2) / 1e6;
}

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One warm-up run, then `runs` timed runs appended to f->ns. */
static int time_file(file_bench *f, const image_prep *prep, float *out, int runs, ms_err *err)
{
    image_limits lim = image_default_limits();
    for (int i = -1; i < runs; i++) {
        image_timing tm;
        uint64_t t0 = ms_now_ns(), c0 = thread_cpu_ns();
        int rc = image_prepare_timed(f->bytes, f->len, &lim, prep, out, NULL, &tm, err);
        uint64_t total = ms_now_ns() - t0, cpu = thread_cpu_ns() - c0;
        if (rc)
            return rc;
        if (i < 0)
            continue;
        f->ns[ST_DECODE][f->n_runs] = tm.decode_ns;
        f->ns[ST_RESIZE][f->n_runs] = tm.resize_ns;
        f->ns[ST_NORMALISE][f->n_runs] = tm.normalise_ns;
        f->ns[ST_TOTAL][f->n_runs] = total;
        f->ns[ST_CPU][f->n_runs] = cpu;
        f->n_runs++;
    }
    return 0;
}

/* The default files: every image of $MEDSEARCH_SHARED/data/nih_cxr14_fullres. */
static int default_files(char **files, int max)
{
    const char *shared = getenv("MEDSEARCH_SHARED");
    if (!shared || !*shared)
        return 0;
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s/%s", shared, DEFAULT_DIR) >= (int)sizeof dir)
        return 0;
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort), count = 0;
    for (int i = 0; i < n; i++) {
        if (names[i]->d_name[0] != '.' && count < max) {
            size_t len = strlen(dir) + strlen(names[i]->d_name) + 2;
            if ((files[count] = malloc(len)))
                snprintf(files[count++], len, "%s/%s", dir, names[i]->d_name);
        }
        free(names[i]);
    }
    if (n >= 0)
        free(names);
    return count;
}

/* The peer script: --peer, else bench/peer_decode.py found as
 * cli_find_repo_file finds repository files. */
static const char *find_peer(const char *given, char *buf, size_t n)
{
    if (given)
        return access(given, R_OK) == 0 ? given : NULL;
    return cli_find_repo_file(PEER_SCRIPT, buf, n) == 0 ? buf : NULL;
}

/* Reads the peer's lines "path<TAB>lanczos<TAB>bilinear<TAB>lanczos_cpu<TAB>
 * bilinear_cpu" (ms; and its "# version" line) into the files' figures. */
static int read_peer_output(FILE *f, file_bench *files, int n, char *peer_info, size_t info_len)
{
    char line[PATH_MAX + 128];
    int got = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0] == '#') {
            if (snprintf(peer_info, info_len, "%s", line + 2) >= (int)info_len)
                peer_info[info_len - 1] = '\0'; /* a long version line is only cut */
            continue;
        }
        char *tab = strchr(line, '\t');
        double lz, bl, lz_cpu, bl_cpu;
        if (!tab)
            continue;
        *tab = '\0';
        if (sscanf(tab + 1, "%lf\t%lf\t%lf\t%lf", &lz, &bl, &lz_cpu, &bl_cpu) != 4)
            continue;
        for (int i = 0; i < n; i++) {
            file_bench *fb = &files[i];
            if (!strcmp(fb->path, line) && fb->n_pil < MAX_ROUNDS) {
                fb->pil_lanczos[fb->n_pil] = lz;
                fb->pil_bilinear[fb->n_pil] = bl;
                fb->pil_lanczos_cpu[fb->n_pil] = lz_cpu;
                fb->pil_bilinear_cpu[fb->n_pil++] = bl_cpu;
                got++;
                break;
            }
        }
    }
    return got;
}

/* Runs the PIL peer once on every file (no shell: paths go as argv).
 * Says why on stderr when it cannot; returns the number of files timed. */
static int run_peer(const char *script, int size, int runs, file_bench *files, int n, char *peer_info,
                    size_t info_len)
{
    char size_s[16], runs_s[16];
    snprintf(size_s, sizeof size_s, "%d", size);
    snprintf(runs_s, sizeof runs_s, "%d", runs);
    char **argv = calloc((size_t)n + 8, sizeof *argv);
    if (!argv)
        return 0;
    int a = 0;
    argv[a++] = (char *)PEER_PYTHON;
    argv[a++] = (char *)script;
    argv[a++] = (char *)"--size";
    argv[a++] = size_s;
    argv[a++] = (char *)"--runs";
    argv[a++] = runs_s;
    argv[a++] = (char *)"--";
    for (int i = 0; i < n; i++)
        argv[a++] = (char *)files[i].path;

    int fds[2];
    if (pipe(fds) != 0) {
        free(argv);
        return 0;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    pid_t pid;
    int rc = posix_spawn(&pid, PEER_PYTHON, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    free(argv);
    if (rc != 0) {
        fprintf(stderr, "bench decode: PIL peer not run: cannot start %s: %s\n", PEER_PYTHON, strerror(rc));
        close(fds[0]);
        return 0;
    }
    int got = 0;
    FILE *f = fdopen(fds[0], "r");
    if (f) {
        got = read_peer_output(f, files, n, peer_info, info_len);
        fclose(f);
    } else {
        close(fds[0]);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
        fprintf(stderr, "bench decode: PIL peer skipped: %s has no PIL (install python3-pil)\n", PEER_PYTHON);
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fprintf(stderr, "bench decode: PIL peer failed (wait status %d)\n", status);
    return got;
}

/* "Intel(R) Xeon(R) ..." from /proc/cpuinfo, or "unknown CPU". */
static void cpu_model(char *buf, size_t n)
{
    snprintf(buf, n, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (!strncmp(line, "model name", 10) && colon) {
            colon += strspn(colon + 1, " ") + 1;
            colon[strcspn(colon, "\n")] = '\0';
            if (snprintf(buf, n, "%s", colon) >= (int)n)
                buf[n - 1] = '\0';
            break;
        }
    }
    fclose(f);
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static void print_results(file_bench *files, int n)
{
    int have_peer = 0;
    for (int i = 0; i < n; i++)
        have_peer |= files[i].n_pil > 0;
    printf("%-24s %8s %8s %9s %8s", "file", "decode", "resize", "normalise", "total");
    if (have_peer)
        printf(" %11s %11s %8s %8s", "PIL-lanczos", "PIL-bil-rg", "ours/lz", "ours/bil");
    printf("   (median wall ms)\n");
    double sum[2] = {0}, sum_lz[2] = {0}, sum_bl[2] = {0}; /* [0] wall, [1] CPU */
    int peer_n = 0;
    for (int i = 0; i < n; i++) {
        file_bench *f = &files[i];
        double ms[N_STAGES];
        for (int s = 0; s < N_STAGES; s++)
            ms[s] = median_ms(f->ns[s], f->n_runs);
        printf("%-24.24s %8.3f %8.3f %9.3f %8.3f", base_name(f->path), ms[ST_DECODE], ms[ST_RESIZE],
               ms[ST_NORMALISE], ms[ST_TOTAL]);
        if (f->n_pil > 0) {
            double lz = cli_median(f->pil_lanczos, f->n_pil), bl = cli_median(f->pil_bilinear, f->n_pil);
            printf(" %11.3f %11.3f %8.2f %8.2f", lz, bl, ms[ST_TOTAL] / lz, ms[ST_TOTAL] / bl);
            sum[0] += ms[ST_TOTAL], sum_lz[0] += lz, sum_bl[0] += bl;
            sum[1] += ms[ST_CPU];
            sum_lz[1] += cli_median(f->pil_lanczos_cpu, f->n_pil);
            sum_bl[1] += cli_median(f->pil_bilinear_cpu, f->n_pil);
            peer_n++;
        }
        printf("\n");
    }
    if (!peer_n)
        return;
    printf("ratio ours/PIL over %d file(s), wall time: %.2f vs LANCZOS, %.2f vs BILINEAR reducing_gap=3\n", peer_n,
           sum[0] / sum_lz[0], sum[0] / sum_bl[0]);
    printf("ratio ours/PIL over %d file(s), CPU time of the calling thread (less sensitive to other processes): "
           "%.2f vs LANCZOS, %.2f vs BILINEAR reducing_gap=3\n(below 1 = ours is faster; CPU ms summed: ours %.3f, "
           "PIL LANCZOS %.3f, PIL BIL-RG %.3f)\n",
           peer_n, sum[1] / sum_lz[1], sum[1] / sum_bl[1], sum[1], sum_lz[1], sum_bl[1]);
}

/* Reads the files and allocates their sample arrays; 0 or an exit code. */
static int load_files(char **paths, int n, int total_runs, file_bench *files)
{
    image_limits lim = image_default_limits();
    for (int i = 0; i < n; i++) {
        ms_err err = {0};
        files[i].path = paths[i];
        if (cli_read_file(paths[i], lim.max_bytes, &files[i].bytes, &files[i].len, &err)) {
            fprintf(stderr, "medsearch bench decode: %s: %s\n", paths[i], err.msg);
            return 1;
        }
        for (int s = 0; s < N_STAGES; s++)
            if (!(files[i].ns[s] = calloc((size_t)total_runs, sizeof(uint64_t)))) {
                fprintf(stderr, "medsearch bench decode: out of memory\n");
                return 1;
            }
    }
    return 0;
}

static void free_files(file_bench *files, int n)
{
    for (int i = 0; i < n; i++) {
        free(files[i].bytes);
        for (int s = 0; s < N_STAGES; s++)
            free(files[i].ns[s]);
    }
    free(files);
}

/* The rounds: ours on every file, then the peer on every file. */
static int run_rounds(file_bench *files, int n, const image_prep *prep, int rounds, int per_round,
                      const char *script)
{
    float *out = malloc(sizeof(float) * 3 * (size_t)prep->size * (size_t)prep->size);
    char peer_info[256] = "PIL";
    int rc = 0;
    if (!out) {
        fprintf(stderr, "medsearch bench decode: out of memory\n");
        return 1;
    }
    for (int r = 0; r < rounds && !rc; r++) {
        for (int i = 0; i < n && !rc; i++) {
            ms_err err = {0};
            if (time_file(&files[i], prep, out, per_round, &err)) {
                fprintf(stderr, "medsearch bench decode: %s: %s\n", files[i].path, err.msg);
                rc = 1;
            }
        }
        if (!rc && script && run_peer(script, prep->size, per_round, files, n, peer_info, sizeof peer_info) == 0)
            script = NULL; /* said why; do not try again */
    }
    free(out);
    if (!rc && files[0].n_pil > 0)
        printf("peer: %s; LANCZOS = Image.resize(LANCZOS), BIL-RG = BILINEAR with reducing_gap=3.0\n", peer_info);
    return rc;
}

int bench_decode(int argc, char **argv)
{
    const char *file = NULL, *peer = NULL;
    int size = 224, runs = 30, rounds = 3, no_peer = 0;
    const cli_option options[] = {
        {"file", 'f', CLI_STRING, &file, "F", "image to time (also as arguments; default: every image of "
                                              "$MEDSEARCH_SHARED/" DEFAULT_DIR ")", 0, 0},
        {"size", 0, CLI_INT, &size, "N", "output side in pixels (default 224)", 1, 8192},
        {"runs", 'n', CLI_INT, &runs, "N", "timed runs per file, over all rounds (default 30)", 1, 100000},
        {"rounds", 0, CLI_INT, &rounds, "R", "alternate ours and PIL R times (default 3)", 1, MAX_ROUNDS},
        {"peer", 0, CLI_STRING, &peer, "SCRIPT", "PIL peer script (default bench/peer_decode.py)", 0, 0},
        {"no-peer", 0, CLI_FLAG, &no_peer, NULL, "do not run the PIL peer", 0, 0},
        {0},
    };
    const cli_command cmd = {
        "bench decode", "[FILE...]",
        "Times decoding + preparation of X-rays to the model input (decode to 8-bit gray, Lanczos3 resize,\n"
        "normalise), median per stage, against PIL's decode + resize of the same files in the same run.",
        0, options, 0, MAX_FILES};
    cli_common common;
    char **args = NULL;
    int n_args = 0, code = 0;
    if (!cli_parse(&cmd, argc, argv, &common, &args, &n_args, &code))
        return code;

    char *paths[MAX_FILES + 1];
    int n = 0, owned = 0;
    if (file)
        paths[n++] = (char *)file;
    for (int i = 0; i < n_args && n < MAX_FILES; i++)
        paths[n++] = args[i];
    free(args);
    if (n == 0 && (n = owned = default_files(paths, MAX_FILES)) == 0) {
        fprintf(stderr, "medsearch bench decode: no files: give FILE or --file, or set MEDSEARCH_SHARED "
                        "(uses $MEDSEARCH_SHARED/%s)\n", DEFAULT_DIR);
        return EXIT_USAGE;
    }

    ms_err err = {0};
    if (image_init(1, &err)) {
        fprintf(stderr, "medsearch bench decode: %s\n", err.msg);
        return EXIT_ENV;
    }
    int per_round = (runs + rounds - 1) / rounds;
    file_bench *files = calloc((size_t)n, sizeof *files);
    int rc = files ? load_files(paths, n, per_round * rounds, files) : 1;
    if (!rc) {
        char cpu[256], script_buf[PATH_MAX];
        const char *script = NULL;
        if (!no_peer && !(script = find_peer(peer, script_buf, sizeof script_buf)))
            fprintf(stderr, "bench decode: PIL peer not run: %s not found (run from the repository root or pass "
                            "--peer)\n", peer ? peer : PEER_SCRIPT);
        cpu_model(cpu, sizeof cpu);
        printf("bench decode: %d file(s), size %d, %d runs each in %d round(s) after a warm-up, %s on 1 "
               "thread\nmachine: %s, %ld cores online (other processes' load shows in these figures)\n",
               n, size, per_round * rounds, rounds, image_library_version(), cpu, sysconf(_SC_NPROCESSORS_ONLN));
        image_prep prep = {size, {127.5f, 127.5f, 127.5f}, {1 / 127.5f, 1 / 127.5f, 1 / 127.5f}};
        rc = run_rounds(files, n, &prep, rounds, per_round, script);
        if (!rc)
            print_results(files, n);
    }
    if (files)
        free_files(files, n);
    for (int i = 0; i < owned; i++)
        free(paths[i]);
    return rc;
}
