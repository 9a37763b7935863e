/*
 * ingest.c - `medsearch ingest PATH... [--labels CSV]`: adds X-rays to a
 * collection.
 *
 * Folders are walked recursively in name order; files are taken as images
 * by their content (PNG, JPEG, JPEG 2000, TIFF, WebP, HEIC, AVIF, GIF,
 * DICOM), never by their name, and other files are reported and skipped.
 * The files are streamed through the engine's ingest pipeline, so memory
 * stays bounded whatever their number. An image stored already (same bytes)
 * is skipped cheaply, which makes a re-run resume an interrupted one; with
 * --update-metadata it takes its labels row instead (a corrected labels
 * file), still without decoding or re-embedding. A bad file is reported and the rest goes on.
 * Ctrl-C stops taking new files, finishes the batches in flight and saves
 * the index.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "cli/labels.h"
#include "util/progress.h"
#include "util/text.h"
#include "util/timing.h"

typedef struct file_entry {
    char *path;
    char *name;          /* original name recorded: relative to the folder given */
} file_entry;

typedef struct file_list {
    file_entry *v;
    size_t n, cap;
} file_list;

typedef struct item_token {
    size_t index;
    unsigned char *bytes;
    store_meta meta;     /* shallow: strings owned by the labels table */
} item_token;

typedef struct ingest_run {
    const cli_command *cmd;
    file_list files;
    size_t next;
    labels *lab;
    size_t max_bytes;
    progress prog;
    int quiet, json;
    int update_meta;     /* --update-metadata */
    size_t processed, ingested, existing, failed, not_images, unlabelled, env_failures;
    size_t meta_updated; /* stored already, metadata brought up to date */
    json_t *errors;      /* [{"file":..,"error":..}] */
} ingest_run;

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
    signal(SIGINT, SIG_DFL); /* a second Ctrl-C ends the process at once */
}

/* ---- collecting the files ---- */

static int list_push(file_list *l, const char *path, const char *name)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 1024;
        file_entry *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return -1;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n].path = strdup(path);
    l->v[l->n].name = strdup(name);
    if (!l->v[l->n].path || !l->v[l->n].name) {
        free(l->v[l->n].path);
        free(l->v[l->n].name);
        return -1;
    }
    l->n++;
    return 0;
}

static void list_free(file_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].path);
        free(l->v[i].name);
    }
    free(l->v);
}

/* a is a file name found in a folder, b a reason that may quote one: both are
 * shown printable (a name may hold terminal control sequences). */
static void say(ingest_run *r, const char *fmt, const char *a, const char *b)
{
    char sa[4096], sb[1024];
    progress_clear(&r->prog);
    fprintf(stderr, fmt, r->cmd->name, ms_text_printable(sa, sizeof sa, a), ms_text_printable(sb, sizeof sb, b));
}

static void record_error(ingest_run *r, const char *file, const char *msg)
{
    if (r->errors)
        json_array_append_new(r->errors,
                              json_pack("{s:o, s:o}", "file", cli_json_text(file), "error", cli_json_text(msg)));
}

static void fail_file(ingest_run *r, const char *path, const char *why)
{
    say(r, "medsearch %s: fail: %s: %s\n", path, why);
    record_error(r, path, why);
    r->failed++;
}

/* Is this file an image, by its first bytes? (DICOM's mark is at byte 128.) */
static int sniff_file(const char *path)
{
    unsigned char head[132];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, head, sizeof head);
    close(fd);
    return n > 0 && image_sniff(head, (size_t)n) != IMAGE_UNKNOWN;
}

/* The name a file is stored under: its path relative to the folder given,
 * as well-formed UTF-8 (the store keeps only that; a name from an old
 * Latin-1 archive gets U+FFFD for each byte that is not UTF-8) and, past the
 * store's limit on text, U+2026 (an ellipsis) and its last bytes, so that the file's own
 * name survives a deep folder. A note says so; an image is never failed for
 * its name. malloc'd; NULL when out of memory. */
static char *stored_name(ingest_run *r, const char *path, const char *name)
{
    size_t repaired;
    char *s = ms_utf8_repaired(name, &repaired);
    if (!s)
        return NULL;
    size_t len = strlen(s);
    char note[256] = "";
    if (len > STORE_MAX_TEXT) {
        static const char ellipsis[] = "\xe2\x80\xa6"; /* U+2026 */
        size_t from = len - (STORE_MAX_TEXT - (sizeof ellipsis - 1));
        while ((s[from] & 0xC0) == 0x80) /* to the start of a character */
            from++;
        memcpy(s, ellipsis, sizeof ellipsis - 1);
        memmove(s + sizeof ellipsis - 1, s + from, len - from + 1);
        snprintf(note, sizeof note, "the path is longer than %d bytes: stored as '\xe2\x80\xa6' and its last %zu bytes%s",
                 STORE_MAX_TEXT, len - from, repaired ? " (U+FFFD for each byte that is not UTF-8)" : "");
    } else if (repaired && len < 128) {
        snprintf(note, sizeof note, "the file name is not UTF-8: stored as '%.127s'", s);
    } else if (repaired) {
        snprintf(note, sizeof note, "the file name is not UTF-8: stored with U+FFFD for each byte that is not");
    }
    if (note[0] && !r->quiet)
        say(r, "medsearch %s: note: %s: %s\n", path, note);
    return s;
}

static void add_file(ingest_run *r, const char *path, const char *name)
{
    int s = sniff_file(path);
    if (s < 0) {
        fail_file(r, path, strerror(errno));
    } else if (s == 0) {
        if (!r->quiet)
            say(r, "medsearch %s: skip: %s: %s\n", path, "not a PNG, JPEG, JPEG 2000, TIFF, WebP, HEIC, AVIF, GIF or DICOM image (by content)");
        r->not_images++;
    } else {
        char *stored = stored_name(r, path, name);
        if (!stored || list_push(&r->files, path, stored) != 0)
            fail_file(r, path, "out of memory");
        free(stored);
    }
}

static int name_order(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static void walk(ingest_run *r, const char *dir, const char *rel, int depth);

/* One entry of a folder. Symbolic links to folders are not followed (no
 * loops); a link to a file is, and a broken one fails like a missing file
 * named on the command line, so that no image is left out unsaid. FIFOs,
 * sockets and devices are not images (a FIFO could block forever). */
static void walk_entry(ingest_run *r, const char *path, const char *name, int depth)
{
    struct stat lst, st;
    if (lstat(path, &lst) != 0) {
        fail_file(r, path, strerror(errno));
    } else if (S_ISDIR(lst.st_mode)) {
        walk(r, path, name, depth + 1);
    } else if (stat(path, &st) != 0) {
        char why[300];
        snprintf(why, sizeof why, "broken symbolic link (%s)", strerror(errno));
        fail_file(r, path, why);
    } else if (S_ISREG(st.st_mode)) {
        add_file(r, path, name);
    } else if (!S_ISDIR(st.st_mode)) {
        if (!r->quiet)
            say(r, "medsearch %s: skip: %s: %s\n", path, "not a regular file (a FIFO, socket or device)");
        r->not_images++;
    }
}

/* Walks a folder in name order, leaving out hidden entries. */
static void walk(ingest_run *r, const char *dir, const char *rel, int depth)
{
    if (depth > 64) {
        say(r, "medsearch %s: skip: %s: %s\n", dir, "folders nested too deep");
        return;
    }
    struct dirent **ents;
    int n = scandir(dir, &ents, NULL, name_order);
    if (n < 0) {
        fail_file(r, dir, strerror(errno));
        return;
    }
    for (int i = 0; i < n; i++) {
        const char *d = ents[i]->d_name;
        if (d[0] != '.') { /* hidden files and . .. */
            char *path, *name;
            if (asprintf(&path, "%s/%s", dir, d) < 0) {
                fail_file(r, dir, "out of memory");
            } else {
                if (asprintf(&name, "%s%s%s", rel, *rel ? "/" : "", d) < 0) {
                    fail_file(r, path, "out of memory");
                } else {
                    walk_entry(r, path, name, depth);
                    free(name);
                }
                free(path);
            }
        }
        free(ents[i]);
    }
    free(ents);
}

static void collect(ingest_run *r, char **paths, int n)
{
    for (int i = 0; i < n; i++) {
        struct stat st;
        const char *p = paths[i];
        if (stat(p, &st) != 0) {
            fail_file(r, p, strerror(errno));
        } else if (S_ISDIR(st.st_mode)) {
            char *dir = strdup(p);
            if (!dir) {
                fail_file(r, p, "out of memory");
                continue;
            }
            size_t len = strlen(dir);
            while (len > 1 && dir[len - 1] == '/')
                dir[--len] = '\0';
            walk(r, dir, "", 0);
            free(dir);
        } else if (!S_ISREG(st.st_mode)) {
            /* a FIFO or a device could block or never end */
            fail_file(r, p, "not a regular file or folder");
        } else {
            const char *slash = strrchr(p, '/');
            add_file(r, p, slash ? slash + 1 : p);
        }
    }
}

/* ---- the engine's source ---- */

static int src_next(void *ctx, engine_item *item, void **token, ms_err *err)
{
    (void)err;
    ingest_run *r = ctx;
    while (r->next < r->files.n && !interrupted) {
        size_t i = r->next++;
        const file_entry *f = &r->files.v[i];
        item_token *t = calloc(1, sizeof *t);
        ms_err rerr = {0};
        size_t len = 0;
        if (!t || cli_read_file(f->path, r->max_bytes, &t->bytes, &len, &rerr) != 0) {
            fail_file(r, f->path, t ? rerr.msg : "out of memory");
            r->processed++;
            progress_update(&r->prog, r->processed);
            free(t);
            continue;
        }
        t->index = i;
        const store_meta *row = r->lab ? labels_find(r->lab, f->path) : NULL;
        if (row)
            t->meta = *row;
        else
            store_meta_init(&t->meta);
        if (r->lab && !row && r->unlabelled++ < 5)
            say(r, "medsearch %s: note: %s: %s\n", f->path, "no row in the labels file");
        t->meta.original_name = f->name;
        /* without a row there is nothing to bring up to date: a stored image keeps its metadata */
        *item = (engine_item){.bytes = t->bytes, .len = len, .meta = &t->meta,
                              .update_meta = r->update_meta && row};
        *token = t;
        return 1;
    }
    return 0;
}

static void src_done(void *ctx, void *token, const engine_item *item, const engine_item_result *res)
{
    (void)item;
    ingest_run *r = ctx;
    item_token *t = token;
    const char *path = r->files.v[t->index].path;
    if (res->err.code == MS_ENOTIMAGE) {
        /* A DICOMDIR or report beside the images: skipped like any other
         * file that is not an image, only found out later. */
        if (!r->quiet)
            say(r, "medsearch %s: skip: %s: %s\n", path, res->err.msg);
        r->not_images++;
    } else if (res->err.code) {
        /* A store failure (disk full, database gone) fails every image in
         * flight: say it once, not for each of them. */
        int env = res->err.code == MS_EIO || res->err.code == MS_EDB;
        if (!env || r->env_failures++ == 0)
            say(r, "medsearch %s: fail: %s: %s\n", path, res->err.msg[0] ? res->err.msg : ms_code_name(res->err.code));
        record_error(r, path, res->err.msg);
        r->failed++;
    } else if (res->was_new) {
        r->ingested++;
    } else {
        r->existing++;
        r->meta_updated += res->meta_updated != 0;
    }
    r->processed++;
    progress_update(&r->prog, r->processed);
    free(t->bytes);
    free(t);
}

/* ---- the command ---- */

static void print_labels_warnings(const cli_command *cmd, const labels *lab, const char *path)
{
    size_t n = labels_n_warnings(lab);
    char sep = labels_separator(lab);
    const char *enc = labels_encoding(lab);
    int utf8 = !strcmp(enc, "UTF-8");
    const char *joined = labels_joined(lab);
    fprintf(stderr, "medsearch %s: %s: %zu rows (%s format%s%s%s%s%s%s)%s\n", cmd->name, path, labels_rows(lab),
            labels_format_name(labels_get_format(lab)), labels_gzipped(lab) ? ", gzip" : "",
            sep == ';' ? ", separated by ';'" : sep == '\t' ? ", separated by tabs" : "", utf8 ? "" : ", read as ",
            utf8 ? "" : enc, joined ? ", joined with " : "", joined ? joined : "", n ? ", problems:" : "");
    char shown[1024];
    for (size_t i = 0; i < n && i < 20; i++) /* a warning may quote the file's text */
        fprintf(stderr, "  %s: %s\n", path, ms_text_printable(shown, sizeof shown, labels_warning(lab, i)));
    if (n > 20)
        fprintf(stderr, "  ... and %zu more\n", n - 20);
}

static void print_summary(ingest_run *r, double seconds, int stopped, const ms_err *stream_err)
{
    double rate = seconds > 0 ? (double)r->ingested / seconds : 0;
    if (r->json) {
        json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:b, s:O}", "ingested", (json_int_t)r->ingested,
                              "skipped_existing", (json_int_t)r->existing, "skipped_not_images",
                              (json_int_t)r->not_images, "failed", (json_int_t)r->failed, "unlabelled",
                              (json_int_t)r->unlabelled, "seconds", seconds, "images_per_s", rate, "interrupted",
                              stopped, "errors", r->errors);
        if (r->update_meta)
            json_object_set_new(o, "metadata_updated", json_integer((json_int_t)r->meta_updated));
        if (stream_err && stream_err->code)
            json_object_set_new(o, "error", cli_json_text(stream_err->msg));
        json_dumpf(o, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(o);
        return;
    }
    char dur[32];
    progress_format_duration(seconds, dur, sizeof dur);
    printf("ingested %zu, skipped %zu (%zu already stored, %zu not images), failed %zu in %s (%.1f images/s)\n",
           r->ingested, r->existing + r->not_images, r->existing, r->not_images, r->failed, dur, rate);
    if (r->update_meta)
        printf("metadata updated for %zu of the %zu already stored (the others had it already%s)\n",
               r->meta_updated, r->existing, r->unlabelled ? " or have no row" : "");
    if (r->unlabelled)
        printf("%zu images had no row in the labels file and were stored without metadata\n", r->unlabelled);
    if (stopped)
        printf("interrupted: %zu images were not processed; run the same command again to resume\n",
               r->files.n - r->processed);
}

/* A grown collection is centred before its first search (engine.h,
 * "Centering"): the center is recomputed here when the ingest made it due. */
static void update_center(const cli_command *cmd, engine *e, const engine_open_report *rep, int quiet)
{
    if (!quiet && rep->center_note[0])
        fprintf(stderr, "medsearch %s: %s\n", cmd->name, rep->center_note);
    int changed = 0;
    ms_err err = {0};
    if (engine_update_center(e, 0, &changed, &err) != 0) {
        cli_error(cmd, &err);
        return;
    }
    engine_stats st;
    engine_get_stats(e, &st);
    if (changed && !quiet)
        fprintf(stderr, "medsearch %s: %s from %zu vectors; the index was rebuilt with it\n", cmd->name,
                st.center_from ? "center computed" : "center removed", st.center_from);
}

/* --center: records the collection's centering policy before the images go
 * in (a collection made for a fine-tuned model, say). 0 or the exit code. */
static int set_policy(const cli_command *cmd, engine *e, int off, int quiet)
{
    engine_stats st;
    engine_get_stats(e, &st);
    if (st.center_policy_off == off)
        return 0;
    ms_err err = {0};
    if (engine_set_center_policy(e, off, &err) != 0) {
        cli_error(cmd, &err);
        return cli_exit_code(err.code);
    }
    if (!quiet)
        fprintf(stderr, "medsearch %s: centering policy %s (was %s)\n", cmd->name, off ? "off" : "auto",
                off ? "auto" : "off");
    return 0;
}

/* --qe: records the collection's query-expansion default before the images
 * go in. 0 or the exit code. */
static int set_qe(const cli_command *cmd, engine *e, int qe, int quiet)
{
    int was = engine_resolve_qe(e, ENGINE_QE_COLLECTION);
    if (was == qe)
        return 0;
    ms_err err = {0};
    if (engine_set_search_qe(e, qe, &err) != 0) {
        cli_error(cmd, &err);
        return cli_exit_code(err.code);
    }
    if (!quiet)
        fprintf(stderr, "medsearch %s: query-expansion default %d (was %d)\n", cmd->name, qe, was);
    return 0;
}

int cmd_ingest(int argc, char **argv)
{
    const char *labels_path = NULL, *center = NULL;
    int batch = 0, threads = 0, quiet = 0, qe = -1, update_meta = 0;
    const cli_option opts[] = {
        {"labels", 0, CLI_STRING, &labels_path, "CSV",
         "metadata: a MedSearch labels.csv, NIH's Data_Entry_2017.csv, CheXpert's train.csv or MIMIC-CXR's "
         "mimic-cxr-2.0.0-chexpert.csv(.gz)", 0, 0},
        {"batch", 0, CLI_INT, &batch, "N", "images per inference batch (default 16)", 1, 256},
        {"threads", 0, CLI_INT, &threads, "N", "decode threads (default: one per core)", 1, 256},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no progress and no per-file notes (errors still shown)", 0, 0},
        {"center", 0, CLI_STRING, &center, "auto|off",
         "set the collection's centering policy first (see medsearch center)", 0, 0},
        {"qe", 0, CLI_INT, &qe, "N",
         "set the collection's query-expansion default first, 0 = off (see medsearch qe)", 0, STORE_SEARCH_QE_MAX},
        {"update-metadata", 0, CLI_FLAG, &update_meta, NULL,
         "images stored already take their labels row now (a corrected labels file), without re-embedding", 0, 0},
        {0},
    };
    static const cli_command cmd = {
        "ingest", "PATH...",
        "Adds X-ray images (files, and folders searched recursively) to a collection with their metadata.\n"
        "Images are recognised by content: PNG, JPEG, JPEG 2000, TIFF, WebP, HEIC, AVIF, GIF, DICOM; other\n"
        "files are reported and skipped.\n"
        "Images stored already (same bytes) are skipped, so running it again resumes an interrupted run;\n"
        "with --update-metadata they take the metadata of their labels row instead of keeping theirs.\n"
        "A file that cannot be read or decoded is reported and skipped; the exit code is then 1.",
        CLI_DB | CLI_MODEL | CLI_JSON, NULL, 1, -1};
    cli_command me = cmd;
    me.options = opts;
    cli_common c;
    char **paths;
    int n_paths, code;
    if (!cli_parse(&me, argc, argv, &c, &paths, &n_paths, &code))
        return code;
    int center_off = 0;
    if (center && cli_parse_center_policy(center, &center_off) != 0) {
        fprintf(stderr, "medsearch ingest: --center takes auto or off, not '%s'\n", center);
        free(paths);
        return EXIT_USAGE;
    }

    if (update_meta && !labels_path) {
        fprintf(stderr, "medsearch ingest: --update-metadata needs --labels: the file the metadata comes from\n");
        free(paths);
        return EXIT_USAGE;
    }

    ingest_run r = {.cmd = &me, .quiet = quiet, .json = c.json, .update_meta = update_meta};
    r.errors = json_array();
    progress_init(&r.prog, stderr, "ingest", "images", 0, -1);
    r.prog.enabled = 0; /* until the files are counted */
    int rc = 0;
    ms_err err = {0};
    if (labels_path) {
        if (labels_load(labels_path, &r.lab, &err) != 0) {
            cli_error(&me, &err);
            rc = EXIT_USAGE; /* a wrong --labels file: nothing was written */
            goto out;
        }
        if (!quiet || labels_n_warnings(r.lab))
            print_labels_warnings(&me, r.lab, labels_path);
    }

    engine_options o;
    cli_engine_options(&c, &o);
    if (batch)
        o.max_batch = batch;
    o.threads = threads;
    r.max_bytes = o.limits.max_bytes;
    engine *e;
    engine_open_report rep;
    if ((rc = cli_open(&me, &o, &e, &rep, !quiet)) != 0)
        goto out;
    if ((center && (rc = set_policy(&me, e, center_off, quiet)) != 0) ||
        (qe >= 0 && (rc = set_qe(&me, e, qe, quiet)) != 0)) {
        engine_close(e);
        goto out;
    }

    collect(&r, paths, n_paths);
    progress_init(&r.prog, stderr, "ingest", "images", r.files.n, -1);
    r.prog.enabled = !quiet;
    struct sigaction sa = {.sa_handler = on_sigint}, old;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);

    uint64_t t0 = ms_now_ns();
    engine_ingest_source src = {.next = src_next, .done = src_done, .ctx = &r, .size_hint = r.files.n};
    int src_rc = engine_ingest_stream(e, &src, &err);
    double seconds = ms_elapsed_ms(t0) / 1000.0;
    sigaction(SIGINT, &old, NULL);
    if (!quiet)
        progress_finish(&r.prog);
    if (src_rc)
        cli_error(&me, &err);
    else
        update_center(&me, e, &rep, quiet);
    ms_err ferr = {0};
    if (engine_flush(e, &ferr) != 0)
        cli_error(&me, &ferr);
    engine_close(e);
    print_summary(&r, seconds, interrupted, src_rc ? &err : NULL);
    if (src_rc)
        rc = cli_exit_code(src_rc) == EXIT_ENV ? EXIT_ENV : 1;
    else
        rc = r.failed || interrupted ? 1 : 0;
out:
    labels_free(r.lab);
    list_free(&r.files);
    json_decref(r.errors);
    free(paths);
    return rc;
}
