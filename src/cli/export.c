/*
 * export.c - `medsearch export --vectors`: ids, vectors and metadata for
 * research (numpy, pandas, a spreadsheet).
 *
 *   --format npy (default): OUT.npy, float32 [n, dim] in row order, and
 *                 OUT.csv, one row per vector: id and metadata.
 *   --format csv: OUT.csv, the same metadata columns followed by v0..v{dim-1}
 *                 ("-" writes it to standard output).
 * CSV columns: id, original_name, patient_id, study_date, age, sex, view,
 * labels (pipe-separated), extra (key=value pairs separated by ';').
 * Vectors come from the store (the source of truth), L2-normalised, as the
 * model made them. Search ranks by centred cosine (engine.h, "Centering"):
 * the collection's center c is written beside them, so that a reader can
 * compute l2(v - c) itself:
 *   --format npy: OUT.center.npy, float32 [dim];
 *   --format csv: OUT.center.csv, a header v0..v{dim-1} and one row
 *                 (not written when the CSV goes to standard output).
 * When the collection has no center (fewer than ENGINE_CENTER_MIN images)
 * the center file is absent, and one left by an earlier export is removed.
 * Files are written beside their final name and renamed when complete.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/common.h"

#define NPY_HEADER 128 /* bytes before the data, the NPY 1.0 header padded */

/* Writes a CSV field, quoted when it holds a comma, quote or line break. */
static void csv_field(FILE *f, const char *s)
{
    if (!s)
        return;
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void csv_meta(FILE *f, int64_t id, const store_meta *m)
{
    char labels[4096];
    cli_join_labels(m, labels, sizeof labels);
    fprintf(f, "%lld,", (long long)id);
    csv_field(f, m->original_name);
    fputc(',', f);
    csv_field(f, m->patient_id);
    fputc(',', f);
    csv_field(f, m->study_date);
    if (m->age >= 0)
        fprintf(f, ",%d,", m->age);
    else
        fputs(",,", f);
    if (m->sex)
        fputc(m->sex, f);
    fputc(',', f);
    csv_field(f, m->view);
    fputc(',', f);
    csv_field(f, labels);
    fputc(',', f);
    /* key=value;key=value, quoted as one field when needed */
    size_t need = 1;
    for (int i = 0; i < m->n_kv; i++)
        need += strlen(m->kv[i].key) + strlen(m->kv[i].value) + 2;
    char *extra = malloc(need);
    if (extra) {
        extra[0] = '\0';
        size_t used = 0;
        for (int i = 0; i < m->n_kv; i++)
            used += (size_t)sprintf(extra + used, "%s%s=%s", i ? ";" : "", m->kv[i].key, m->kv[i].value);
        csv_field(f, extra);
        free(extra);
    }
}

static const char CSV_HEADER[] = "id,original_name,patient_id,study_date,age,sex,view,labels,extra";

static int npy_header(FILE *f, size_t n, int dim)
{
    char h[NPY_HEADER];
    memset(h, ' ', sizeof h);
    memcpy(h, "\x93NUMPY\x01\x00", 8);
    h[8] = (char)(NPY_HEADER - 10);
    h[9] = 0;
    int w = snprintf(h + 10, NPY_HEADER - 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %d), }", n,
                     dim);
    if (w < 0 || w >= NPY_HEADER - 11)
        return -1;
    h[10 + w] = ' '; /* snprintf's NUL becomes padding */
    h[NPY_HEADER - 1] = '\n';
    return fseek(f, 0, SEEK_SET) == 0 && fwrite(h, 1, sizeof h, f) == sizeof h ? 0 : -1;
}

/* The header of a 1-d float32 array of n values. */
static int npy_header_1d(FILE *f, int n)
{
    char h[NPY_HEADER];
    memset(h, ' ', sizeof h);
    memcpy(h, "\x93NUMPY\x01\x00", 8);
    h[8] = (char)(NPY_HEADER - 10);
    h[9] = 0;
    int w = snprintf(h + 10, NPY_HEADER - 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }", n);
    if (w < 0 || w >= NPY_HEADER - 11)
        return -1;
    h[10 + w] = ' ';
    h[NPY_HEADER - 1] = '\n';
    return fwrite(h, 1, sizeof h, f) == sizeof h ? 0 : -1;
}

/* OUT + ext through cli_out_open ("-" is standard output). */
static int out_open(cli_out_file *o, const char *base, const char *ext)
{
    if (!strcmp(base, "-"))
        return cli_out_open(o, "-");
    char *path = NULL;
    if (asprintf(&path, "%s%s", base, ext) < 0) {
        memset(o, 0, sizeof *o);
        errno = ENOMEM;
        return -1;
    }
    int rc = cli_out_open(o, path), saved = errno;
    free(path);
    errno = saved;
    return rc;
}

static char *strip_ext(const char *out)
{
    char *base = strdup(out);
    if (!base)
        return NULL;
    size_t n = strlen(base);
    if (n > 4 && (!strcmp(base + n - 4, ".npy") || !strcmp(base + n - 4, ".csv")))
        base[n - 4] = '\0';
    return base;
}

/* OUT.center.npy / .csv, or none (an old one removed) when not centred. */
static int export_center(engine *e, const char *base, int dim, int npy, ms_err *err)
{
    char *path = NULL;
    if (asprintf(&path, "%s.center.%s", base, npy ? "npy" : "csv") < 0)
        return ms_err_set(err, MS_ENOMEM, "no memory");
    float *c = malloc((size_t)(dim > 0 ? dim : 1) * sizeof *c);
    int rc = c ? 0 : ms_err_set(err, MS_ENOMEM, "no memory");
    if (rc == 0 && (dim <= 0 || engine_get_center(e, c, NULL) != 0)) {
        if (remove(path) != 0 && errno != ENOENT)
            rc = ms_err_set(err, MS_EIO, "cannot remove the old %s: %s", path, strerror(errno));
        free(c);
        free(path);
        return rc;
    }
    cli_out_file o;
    char ext[16];
    snprintf(ext, sizeof ext, ".center.%s", npy ? "npy" : "csv");
    if (rc == 0 && out_open(&o, base, ext) != 0)
        rc = ms_err_set(err, MS_EIO, "cannot create %s: %s", path, strerror(errno));
    if (rc == 0) {
        int ok;
        if (npy) {
            ok = npy_header_1d(o.f, dim) == 0 && fwrite(c, sizeof *c, (size_t)dim, o.f) == (size_t)dim;
        } else {
            for (int d = 0; d < dim; d++)
                fprintf(o.f, "%sv%d", d ? "," : "", d);
            fputc('\n', o.f);
            for (int d = 0; d < dim; d++)
                fprintf(o.f, "%s%.9g", d ? "," : "", (double)c[d]);
            ok = fputc('\n', o.f) != EOF;
        }
        if (cli_out_close(&o, ok) != 0)
            rc = ms_err_set(err, MS_EIO, "writing %s: %s", path, strerror(errno));
    }
    free(c);
    free(path);
    return rc;
}

typedef struct export_job {
    store *s;
    int dim, npy;
    cli_out_file vec, meta;
    size_t rows;
    float *v;
} export_job;

static int export_one(export_job *j, int64_t id, ms_err *err)
{
    store_meta m;
    int rc = store_get_vector(j->s, id, j->v, j->dim, err);
    if (rc == MS_ENOTFOUND)
        return 0; /* deleted meanwhile, or no vector of this model: left out */
    if (rc || (rc = store_get_meta(j->s, id, &m, err)) != 0)
        return rc;
    csv_meta(j->meta.f, id, &m);
    if (j->npy) {
        fputc('\n', j->meta.f);
        if (fwrite(j->v, sizeof(float), (size_t)j->dim, j->vec.f) != (size_t)j->dim)
            rc = ms_err_set(err, MS_EIO, "write error: %s", strerror(errno));
    } else {
        for (int d = 0; d < j->dim; d++)
            fprintf(j->meta.f, ",%.9g", (double)j->v[d]);
        fputc('\n', j->meta.f);
    }
    store_meta_free(&m);
    j->rows++;
    return rc;
}

static int run_export(const cli_command *cmd, engine *e, const char *out, int npy)
{
    engine_stats st;
    engine_get_stats(e, &st);
    export_job j = {.dim = st.dim, .npy = npy};
    ms_err err = {0};
    int64_t *ids = NULL;
    size_t n = 0;
    char *base = strip_ext(out);
    int rc = base ? engine_store_acquire(e, &j.s, &err) : ms_err_set(&err, MS_ENOMEM, "no memory");
    if (rc == 0)
        rc = store_list_ids(j.s, &ids, &n, &err);
    if (rc == 0 && n > 0 && st.dim <= 0)
        rc = ms_err_set(&err, MS_EFORMAT, "the collection has images but no model");
    if (rc == 0 && !(j.v = malloc((size_t)(st.dim > 0 ? st.dim : 1) * sizeof(float))))
        rc = ms_err_set(&err, MS_ENOMEM, "no memory");
    if (rc == 0 && npy && !strcmp(out, "-"))
        rc = ms_err_set(&err, MS_EINVAL, "--out - works with --format csv only");
    if (rc == 0 && (out_open(&j.meta, base, ".csv") != 0 || (npy && out_open(&j.vec, base, ".npy") != 0)))
        rc = ms_err_set(&err, MS_EIO, "cannot create %s.csv/.npy: %s", base, strerror(errno));
    if (rc == 0 && npy && npy_header(j.vec.f, 0, st.dim) != 0)
        rc = ms_err_set(&err, MS_EIO, "write error: %s", strerror(errno));
    if (rc == 0) {
        fputs(CSV_HEADER, j.meta.f);
        for (int d = 0; !npy && d < st.dim; d++)
            fprintf(j.meta.f, ",v%d", d);
        fputc('\n', j.meta.f);
    }
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = export_one(&j, ids[i], &err);
    if (rc == 0 && npy && npy_header(j.vec.f, j.rows, st.dim) != 0)
        rc = ms_err_set(&err, MS_EIO, "write error: %s", strerror(errno));
    if (rc == 0 && strcmp(out, "-"))
        rc = export_center(e, base, st.dim, npy, &err);
    int closed = cli_out_close(&j.meta, rc == 0);
    if (npy)
        closed |= cli_out_close(&j.vec, rc == 0);
    if (rc == 0 && closed != 0)
        rc = ms_err_set(&err, MS_EIO, "writing %s: %s", base, strerror(errno));
    if (rc)
        cli_error(cmd, &err);
    else if (npy)
        fprintf(stderr, "exported %zu vectors (dim %d) to %s.npy and their metadata to %s.csv\n", j.rows, st.dim,
                base, base);
    else if (strcmp(out, "-"))
        fprintf(stderr, "exported %zu vectors (dim %d) with their metadata to %s.csv\n", j.rows, st.dim, base);
    if (rc == 0 && st.center_from)
        fprintf(stderr, "search ranks by cosine after subtracting the collection's center (the mean of %zu "
                        "vectors)%s%s%s\n", st.center_from, strcmp(out, "-") ? ": written to " : "; write to a file to "
                        "export it", strcmp(out, "-") ? base : "", strcmp(out, "-") ? (npy ? ".center.npy" : ".center.csv") : "");
    engine_store_release(e, j.s);
    free(ids);
    free(j.v);
    free(base);
    return rc ? (cli_exit_code(rc) == EXIT_USAGE ? EXIT_USAGE : 1) : 0;
}

int cmd_export(int argc, char **argv)
{
    int vectors = 0;
    const char *format = "npy", *out = "vectors";
    const cli_option opts[] = {
        {"vectors", 0, CLI_FLAG, &vectors, NULL, "export ids, vectors and metadata (required)", 0, 0},
        {"format", 0, CLI_STRING, &format, "npy|csv",
         "npy: OUT.npy (float32 [n, dim]) + OUT.csv (metadata); csv: one OUT.csv with v0..vN", 0, 0},
        {"out", 'o', CLI_STRING, &out, "OUT", "output name without extension (default 'vectors'; '-' = stdout, csv)",
         0, 0},
        {0},
    };
    static const cli_command base = {
        "export", NULL,
        "Exports the collection for research: every image's id, vector (L2-normalised, from the store)\n"
        "and metadata. CSV columns: id, original_name, patient_id, study_date, age, sex, view, labels\n"
        "(pipe-separated), extra (key=value;...). It needs no model.\n"
        "Search ranks by cos(l2(q - c), l2(v - c)), c the collection's center (the mean of its vectors,\n"
        "once it has " ENGINE_CENTER_MIN_TEXT "): c is written to OUT.center.npy (float32 [dim]) or OUT.center.csv, and\n"
        "absent when the collection has none.",
        CLI_DB, NULL, 0, 0};
    cli_command cmd = base;
    cmd.options = opts;
    cli_common c;
    char **args;
    int n_args, code;
    if (!cli_parse(&cmd, argc, argv, &c, &args, &n_args, &code))
        return code;
    free(args);
    int npy = !strcmp(format, "npy");
    if (!vectors || (!npy && strcmp(format, "csv"))) {
        fprintf(stderr, "medsearch export: %s\n",
                !vectors ? "say what to export: --vectors" : "--format must be npy or csv");
        return EXIT_USAGE;
    }
    engine_options o;
    cli_engine_options(&c, &o);
    o.no_model = 1;
    engine *e;
    engine_open_report rep;
    int rc = cli_open(&cmd, &o, &e, &rep, 0);
    if (rc)
        return rc;
    rc = run_export(&cmd, e, out, npy);
    engine_close(e);
    return rc;
}
