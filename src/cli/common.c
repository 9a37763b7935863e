#include "cli/common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "util/progress.h"
#include "util/text.h"

/* The common groups, as option tables that write into a cli_common. */
static void common_options(cli_common *c, unsigned groups, cli_option *out, int *n)
{
    if (groups & CLI_DB)
        out[(*n)++] = (cli_option){"db", 0, CLI_STRING, &c->db, "DB",
                                   "collection: SQLite file or postgresql://... (default $MEDSEARCH_DB, "
                                   "then medsearch.db)", 0, 0};
    if (groups & CLI_MODEL) {
        out[(*n)++] = (cli_option){"model", 0, CLI_STRING, &c->model, "M",
                                   "ONNX model (default $MEDSEARCH_MODEL, then ./models/resnet50.onnx)", 0, 0};
        out[(*n)++] = (cli_option){"output", 0, CLI_STRING, &c->model_opt.output, "TENSOR",
                                   "feature tensor (default: the model's medsearch.feature_output or first output)",
                                   0, 0};
        out[(*n)++] = (cli_option){"pool", 0, CLI_STRING, &c->pool, "P",
                                   "pooling: auto (GeM of the map behind a global average pool, else the graph's "
                                   "output; the default but for embed)|output|avg|gem|max|topleft", 0, 0};
        out[(*n)++] = (cli_option){"gem-p", 0, CLI_DOUBLE, &c->gem_p, "P", "GeM exponent (default 3)", 0, 0};
        out[(*n)++] = (cli_option){"flip", 0, CLI_FLAG, &c->model_opt.flip, NULL,
                                   "also embed each image mirrored left-right and add the two (twice the forwards)",
                                   0, 0};
        out[(*n)++] = (cli_option){"input-size", 0, CLI_INT, &c->input_size, "N",
                                   "input side in pixels (default: the model's)", 16, 4096};
        out[(*n)++] = (cli_option){"mean", 0, CLI_STRING, &c->model_opt.mean, "M",
                                   "mean to subtract, 0..255 scale: m or m1,m2,m3", 0, 0};
        out[(*n)++] = (cli_option){"scale", 0, CLI_STRING, &c->model_opt.scale, "S",
                                   "multiplier after the mean: s or s1,s2,s3", 0, 0};
        out[(*n)++] = (cli_option){"std", 0, CLI_STRING, &c->model_opt.std, "S",
                                   "divisor after the mean (scale = 1/std): s or s1,s2,s3", 0, 0};
    }
    if (groups & CLI_JSON)
        out[(*n)++] = (cli_option){"json", 0, CLI_FLAG, &c->json, NULL, "print JSON for scripts", 0, 0};
}

static void print_options(FILE *f, const cli_option *opts, int n)
{
    for (int i = 0; i < n; i++) {
        char left[64];
        const cli_option *o = &opts[i];
        const char *mv = o->type == CLI_FLAG ? "" : o->metavar ? o->metavar : "VALUE";
        if (o->short_name)
            snprintf(left, sizeof left, "-%c, --%s%s%s", o->short_name, o->name, *mv ? " " : "", mv);
        else
            snprintf(left, sizeof left, "    --%s%s%s", o->name, *mv ? " " : "", mv);
        fprintf(f, "  %-26s %s\n", left, o->help);
    }
}

void cli_usage(const cli_command *cmd, FILE *f)
{
    int has_args = cmd->args && *cmd->args;
    fprintf(f, "usage: medsearch %s%s%s [options]\n\n%s\n", cmd->name, has_args ? " " : "",
            has_args ? cmd->args : "", cmd->about);
    int n = 0;
    if (cmd->options)
        for (; cmd->options[n].name; n++)
            ;
    if (n) {
        fprintf(f, "\noptions:\n");
        print_options(f, cmd->options, n);
    }
    cli_common dummy;
    cli_option common[16];
    int nc = 0;
    common_options(&dummy, cmd->common, common, &nc);
    if (nc) {
        fprintf(f, "\ncommon options:\n");
        print_options(f, common, nc);
    }
    fprintf(f, "  %-26s %s\n", "-h, --help", "show this help");
    fprintf(f, "\nexit codes: 0 done, 1 the job failed (or found nothing), 2 usage, 3 environment "
               "(no model, database unusable)\n");
}

static const cli_option *find_long(const cli_option *opts, int n, const char *name, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(opts[i].name) == len && !strncmp(opts[i].name, name, len))
            return &opts[i];
    return NULL;
}

static const cli_option *find_short(const cli_option *opts, int n, char c)
{
    for (int i = 0; i < n; i++)
        if (opts[i].short_name == c)
            return &opts[i];
    return NULL;
}

static int set_value(const cli_command *cmd, const cli_option *o, const char *v, cli_common *c)
{
    char *end;
    errno = 0;
    switch (o->type) {
    case CLI_FLAG:
        *(int *)o->value = 1;
        return 0;
    case CLI_STRING:
        *(const char **)o->value = v;
        return 0;
    case CLI_INT: {
        long x = strtol(v, &end, 10);
        if (end == v || *end || errno || (o->min < o->max && (x < o->min || x > o->max)) || x < INT_MIN ||
            x > INT_MAX) {
            if (o->min < o->max)
                fprintf(stderr, "medsearch %s: --%s needs a whole number from %ld to %ld, not '%s'\n", cmd->name,
                        o->name, o->min, o->max, v);
            else
                fprintf(stderr, "medsearch %s: --%s needs a whole number, not '%s'\n", cmd->name, o->name, v);
            return -1;
        }
        *(int *)o->value = (int)x;
        return 0;
    }
    case CLI_DOUBLE: {
        double x = strtod(v, &end);
        if (end == v || *end || errno || x != x) {
            fprintf(stderr, "medsearch %s: --%s needs a number, not '%s'\n", cmd->name, o->name, v);
            return -1;
        }
        *(double *)o->value = x;
        return 0;
    }
    }
    return -1;
}

static void common_defaults(cli_common *c)
{
    memset(c, 0, sizeof *c);
    model_options_init(&c->model_opt);
    c->model_opt.pool = MODEL_POOL_AUTO; /* a new collection's; an existing one keeps its own */
    const char *db = getenv("MEDSEARCH_DB");
    c->db = db && *db ? db : "medsearch.db";
    c->db_given = db && *db;
}

/* Checks the model options' raw values and moves them into model_opt. */
static int finish_model_options(const cli_command *cmd, cli_common *c)
{
    if (c->pool && model_pool_parse(c->pool, &c->model_opt.pool)) {
        fprintf(stderr, "medsearch %s: --pool must be auto, output, avg, gem, max or topleft, not '%s'\n", cmd->name,
                c->pool);
        return -1;
    }
    if (c->gem_p != 0) {
        if (!(c->gem_p >= 1 && c->gem_p <= 16)) {
            fprintf(stderr, "medsearch %s: --gem-p must be from 1 to 16\n", cmd->name);
            return -1;
        }
        c->model_opt.gem_p = (float)c->gem_p;
    }
    if (c->input_size)
        c->model_opt.input_size = c->input_size;
    return 0;
}

/* Parses one option at argv[*i]; returns 0, 1 for --help, -1 for a mistake. */
static int parse_option(const cli_command *cmd, const cli_option *all, int n, int argc, char **argv, int *i,
                        cli_common *c)
{
    const char *a = argv[*i];
    const cli_option *o;
    const char *value = NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h"))
        return 1;
    if (a[1] == '-') {
        const char *name = a + 2, *eq = strchr(name, '=');
        o = find_long(all, n, name, eq ? (size_t)(eq - name) : strlen(name));
        if (eq)
            value = eq + 1;
    } else {
        o = a[2] ? NULL : find_short(all, n, a[1]);
    }
    if (!o) {
        fprintf(stderr, "medsearch %s: unknown option '%s' (see medsearch %s --help)\n", cmd->name, a, cmd->name);
        return -1;
    }
    if (o->type == CLI_FLAG) {
        if (value) {
            fprintf(stderr, "medsearch %s: --%s takes no value\n", cmd->name, o->name);
            return -1;
        }
    } else if (!value) {
        if (*i + 1 >= argc) {
            fprintf(stderr, "medsearch %s: %s needs a value (%s)\n", cmd->name, a, o->metavar ? o->metavar : "VALUE");
            return -1;
        }
        value = argv[++*i];
    }
    if (o->value == &c->db)
        c->db_given = 1;
    return set_value(cmd, o, value, c);
}

int cli_parse(const cli_command *cmd, int argc, char **argv, cli_common *c, char ***args, int *n_args,
              int *exit_code)
{
    common_defaults(c);
    *args = NULL;
    *n_args = 0;
    cli_option all[64];
    int n = 0;
    if (cmd->options)
        for (int i = 0; cmd->options[i].name && n < 48; i++)
            all[n++] = cmd->options[i];
    common_options(c, cmd->common, all, &n);
    char **pos = calloc((size_t)argc + 1, sizeof *pos);
    if (!pos) {
        fprintf(stderr, "medsearch %s: out of memory\n", cmd->name);
        *exit_code = 1;
        return 0;
    }
    int np = 0, only_args = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_args && !strcmp(a, "--")) {
            only_args = 1;
        } else if (!only_args && a[0] == '-' && a[1] != '\0') {
            int rc = parse_option(cmd, all, n, argc, argv, &i, c);
            if (rc != 0) {
                free(pos);
                if (rc > 0)
                    cli_usage(cmd, stdout);
                *exit_code = rc > 0 ? 0 : EXIT_USAGE;
                return 0;
            }
        } else {
            pos[np++] = argv[i];
        }
    }
    if (np < cmd->min_args || (cmd->max_args >= 0 && np > cmd->max_args)) {
        fprintf(stderr, "medsearch %s: %s\nusage: medsearch %s %s [options]   (--help for details)\n", cmd->name,
                np < cmd->min_args ? "missing arguments" : "too many arguments", cmd->name,
                cmd->args ? cmd->args : "");
        free(pos);
        *exit_code = EXIT_USAGE;
        return 0;
    }
    if (finish_model_options(cmd, c) != 0) {
        free(pos);
        *exit_code = EXIT_USAGE;
        return 0;
    }
    *args = pos;
    *n_args = np;
    return 1;
}

void cli_engine_options(const cli_common *c, engine_options *o)
{
    engine_options_init(o);
    o->db = c->db;
    o->model_path = c->model;
    o->model = c->model_opt;
    /* what is not asked for (pooling; input size) is an existing collection's own */
    o->pooling_from_collection = !c->pool && c->gem_p == 0 && !c->model_opt.flip;
    o->prep_from_collection = !c->input_size;
}

static void reembed_progress(void *ctx, size_t done, size_t total)
{
    progress *p = ctx;
    p->total = total;
    progress_update(p, done);
}

int cli_reembed_all(const cli_command *cmd, engine *e, int show_progress, size_t *done, ms_err *err)
{
    progress p;
    progress_init(&p, stderr, "reembed", "images", 0, -1);
    p.enabled = show_progress;
    int rc = engine_reembed(e, reembed_progress, &p, err);
    progress_finish(&p);
    *done = p.done;
    if (rc)
        return rc;
    ms_err later = {0};
    if (engine_update_center(e, 0, NULL, &later) != 0)
        cli_error(cmd, &later);
    ms_err saving = {0};
    if (engine_flush(e, &saving) != 0)
        cli_error(cmd, &saving);
    return 0;
}

int cli_exit_code(int code)
{
    switch (code) {
    case MS_OK:
        return 0;
    case MS_EINVAL:
        return EXIT_USAGE;
    case MS_EDB:
    case MS_EIO:
        return EXIT_ENV;
    default:
        return 1;
    }
}

void cli_error(const cli_command *cmd, const ms_err *err)
{
    fprintf(stderr, "medsearch %s: %s\n", cmd->name, err->msg[0] ? err->msg : ms_code_name(err->code));
}

int cli_open(const cli_command *cmd, const engine_options *o, engine **e, engine_open_report *rep, int verbose)
{
    ms_err err = {0};
    int rc = engine_open(o, e, rep, &err);
    if (rc) {
        cli_error(cmd, &err);
        /* No model, a model that would not load, or another model's
         * collection: all are the environment's, not the job's. */
        int no_model = rc == MS_ENOTFOUND && !o->no_model && strstr(err.msg, "model");
        if (no_model && !strstr(err.msg, "not found ("))
            fprintf(stderr, "\n%s", engine_model_help());
        if (no_model || rc == MS_ECONFLICT || rc == MS_EFORMAT || rc == MS_EUNSUPPORTED)
            return EXIT_ENV;
        return cli_exit_code(rc);
    }
    int rebuilt = !rep->index_loaded && rep->index_note[0] && strstr(rep->index_note, "rebuilt");
    if (verbose || rebuilt || strstr(rep->index_note, "re-embed"))
        fprintf(stderr, "medsearch %s: %s\n", cmd->name,
                rep->index_loaded ? "index loaded from its file" : rep->index_note);
    return 0;
}

json_t *cli_json_text(const char *s)
{
    char *ok = ms_utf8_repaired(s, NULL);
    if (!ok)
        return NULL;
    json_t *j = json_string(ok);
    free(ok);
    return j;
}

int cli_read_file(const char *path, size_t max, unsigned char **buf, size_t *len, ms_err *err)
{
    struct stat pre;
    if (stat(path, &pre) == 0 && !S_ISREG(pre.st_mode)) /* a FIFO would block fopen */
        return ms_err_set(err, MS_EIO, "not a regular file");
    FILE *f = fopen(path, "rb");
    if (!f)
        return ms_err_set(err, errno == ENOENT ? MS_ENOTFOUND : MS_EIO, "%s", strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return ms_err_set(err, MS_EIO, "not a regular file");
    }
    if ((size_t)st.st_size > max) {
        fclose(f);
        return ms_err_set(err, MS_ETOOBIG, "%lld bytes, over the %zu MiB limit", (long long)st.st_size, max >> 20);
    }
    *buf = malloc((size_t)st.st_size + 1);
    if (!*buf) {
        fclose(f);
        return ms_err_set(err, MS_ENOMEM, "no memory for %lld bytes", (long long)st.st_size);
    }
    *len = fread(*buf, 1, (size_t)st.st_size, f);
    int bad = ferror(f) || *len != (size_t)st.st_size;
    fclose(f);
    if (bad) {
        free(*buf);
        *buf = NULL;
        return ms_err_set(err, MS_EIO, "read error (the file changed size?)");
    }
    return 0;
}

void cli_join_labels(const store_meta *m, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < m->n_labels && used + 1 < len; i++) {
        int w = snprintf(buf + used, len - used, "%s%s", i ? "|" : "", m->labels[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

int cli_find_repo_file(const char *rel, char *out, size_t len)
{
    struct stat st;
    const char *dir = getenv("MEDSEARCH_BENCH_DIR");
    if (dir && *dir && snprintf(out, len, "%s/../%s", dir, rel) < (int)len && !stat(out, &st))
        return 0;
    if (snprintf(out, len, "%s", rel) < (int)len && !stat(out, &st))
        return 0;
    char exe[2048];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return -1;
    exe[n] = '\0';
    for (int up = 0; up < 3; up++) {
        char *slash = strrchr(exe, '/');
        if (!slash)
            break;
        *slash = '\0';
        if (snprintf(out, len, "%s/%s", exe, rel) < (int)len && !stat(out, &st))
            return 0;
    }
    return -1;
}

void cli_center_state(const engine_stats *st, char *out, size_t len)
{
    if (st->center_from)
        snprintf(out, len, "centred: mean of %zu vectors (tag %s)", st->center_from, st->center_tag);
    else if (st->center_policy_off)
        snprintf(out, len, "plain cosine: the centering policy is off");
    else if (st->images < ENGINE_CENTER_MIN)
        snprintf(out, len, "plain cosine: fewer than %d vectors", ENGINE_CENTER_MIN);
    else
        snprintf(out, len, "plain cosine for now: the center is computed at the next open with a model "
                           "(ingest, search, serve) or by `medsearch center auto`");
}

int cli_parse_int_in(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

int cli_collection_missing(const char *db)
{
    struct stat st;
    return strncmp(db, "postgres", 8) && stat(db, &st) != 0;
}

int cli_parse_center_policy(const char *text, int *off)
{
    if (!text || (strcmp(text, "auto") && strcmp(text, "off")))
        return -1;
    *off = !strcmp(text, "off");
    return 0;
}

int cli_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double cli_median(double *v, int n)
{
    if (n < 1)
        return 0;
    qsort(v, (size_t)n, sizeof *v, cli_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double cli_percentile(double *v, size_t n, double p)
{
    if (n < 1)
        return 0;
    qsort(v, n, sizeof *v, cli_cmp_double);
    double rank = ceil(p * (double)n);
    size_t i = rank < 1 ? 0 : (size_t)rank - 1;
    return v[i < n ? i : n - 1];
}

/* ---- output files written whole ---- */

/* The temporary file beside final: ".NAME.XXXXXX" in final's folder, with
 * the mode the final file should have. Returns its descriptor or -1. */
static int out_make_tmp(cli_out_file *o, mode_t mode)
{
    const char *slash = strrchr(o->final, '/');
    int dir_len = slash ? (int)(slash - o->final + 1) : 0;
    if (asprintf(&o->tmp, "%.*s.%s.XXXXXX", dir_len, o->final, slash ? slash + 1 : o->final) < 0) {
        o->tmp = NULL;
        errno = ENOMEM;
        return -1;
    }
    int fd = mkstemp(o->tmp);
    if (fd < 0 || fchmod(fd, mode) == 0)
        return fd;
    int saved = errno;
    close(fd);
    unlink(o->tmp);
    errno = saved;
    return -1;
}

int cli_out_open(cli_out_file *o, const char *path)
{
    memset(o, 0, sizeof *o);
    if (!strcmp(path, "-")) {
        o->f = stdout;
        return 0;
    }
    struct stat st;
    int exists = stat(path, &st) == 0;
    if (!exists && errno != ENOENT)
        return -1;
    if (exists && S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        return -1;
    }
    if (exists && !S_ISREG(st.st_mode)) {
        /* A device or a FIFO: there is nothing to replace. */
        if (!(o->final = strdup(path)) || !(o->f = fopen(path, "w"))) {
            int saved = errno;
            cli_out_close(o, 0);
            errno = saved;
            return -1;
        }
        return 0;
    }
    mode_t mode;
    if (exists) {
        o->final = realpath(path, NULL); /* through a symbolic link: replace its target */
        mode = st.st_mode & 07777;
    } else {
        o->final = strdup(path);
        mode_t mask = umask(0); /* reading the umask means setting it; single-threaded here */
        umask(mask);
        mode = 0666 & ~mask;
    }
    int fd = o->final ? out_make_tmp(o, mode) : -1;
    if (fd < 0 || !(o->f = fdopen(fd, "w"))) {
        int saved = errno;
        if (fd >= 0) {
            close(fd);
            unlink(o->tmp);
        }
        free(o->final);
        free(o->tmp);
        memset(o, 0, sizeof *o);
        errno = saved;
        return -1;
    }
    return 0;
}

int cli_out_close(cli_out_file *o, int ok)
{
    int failed = !ok, saved = 0;
    if (o->f == stdout) {
        if (fflush(stdout) != 0)
            failed = 1, saved = errno;
    } else if (o->f) {
        if (fflush(o->f) != 0 || ferror(o->f))
            failed = 1, saved = errno;
        if (fclose(o->f) != 0 && !saved)
            failed = 1, saved = errno;
        if (o->tmp && !failed && rename(o->tmp, o->final) != 0)
            failed = 1, saved = errno;
        if (o->tmp && failed)
            unlink(o->tmp);
    }
    free(o->final);
    free(o->tmp);
    memset(o, 0, sizeof *o);
    errno = saved;
    return failed ? -1 : 0;
}
