/*
 * copy.c - `medsearch copy --db SRC --to DST`: copies a collection from one
 * store to another, SQLite or PostgreSQL either way, without re-embedding.
 *
 * A collection usually starts as a SQLite file on one machine and moves to
 * PostgreSQL when several search servers share it. Its vectors took the
 * hours (a CPU embeds a few dozen X-rays a second); everything else is
 * bytes. So the copy moves every image as stored: its bytes, thumbnail,
 * metadata, creation time and vector, under its own id, which the API's
 * image URLs and exported reports name. The model identity, the centering
 * policy, the query-expansion default and the center go with them, so that
 * the same query finds the same ids with the same scores in both.
 *
 * It goes through the store directly, as `qe` and `center` do: no model is
 * needed and no index is built (DST's engine builds its index when it is
 * first opened). Batches are transactions; an image whose bytes DST holds
 * already is skipped, so an interrupted copy is finished by running it
 * again. The ids are kept when DST is empty, or holds only images of SRC
 * under their SRC ids (an interrupted copy); into a collection of other
 * images every copied image gets a new id, since ids DST gives and ids
 * kept would meet.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "util/progress.h"
#include "util/timing.h"

typedef struct copy_run {
    store *src, *dst;
    int dim;
    int keep_ids;
    size_t total, copied, existing, renumbered;
} copy_run;

/* One image of src as a store_item owning its buffers. */
typedef struct copy_item {
    store_item it;
    uint8_t *bytes, *thumb;
    char mime[32], thumb_mime[32];
    store_meta meta;
    store_image_info info;
    float *vec;
} copy_item;

static void item_free(copy_item *c)
{
    free(c->bytes);
    free(c->thumb);
    free(c->vec);
    store_meta_free(&c->meta);
    memset(c, 0, sizeof *c);
}

/* Reads the rest of image id of src into c, whose info is read. Returns
 * 0, or an error naming the image. */
static int item_read(copy_run *r, int64_t id, copy_item *c, ms_err *err)
{
    size_t len = 0, thumb_len = 0;
    int rc = store_get_image(r->src, id, &c->bytes, &len, c->mime, err);
    if (!rc) {
        rc = store_get_thumbnail(r->src, id, &c->thumb, &thumb_len, c->thumb_mime, err);
        if (rc == MS_ENOTFOUND) /* an image too small or odd for one */
            rc = 0, thumb_len = 0;
    }
    if (!rc)
        rc = store_get_meta(r->src, id, &c->meta, err);
    if (!rc && !(c->vec = malloc((size_t)r->dim * sizeof *c->vec)))
        rc = ms_err_set(err, MS_ENOMEM, "no memory");
    if (!rc && (rc = store_get_vector(r->src, id, c->vec, r->dim, err)) == MS_ENOTFOUND)
        rc = ms_err_set(err, MS_EFORMAT, "image %lld has no vector of the collection's model (an unfinished "
                        "re-embed?): run medsearch reembed on it first", (long long)id);
    if (rc)
        return rc;
    c->it = (store_item){.id = id, .created = c->info.created, .bytes = c->bytes, .len = len,
                         .sha256 = c->info.sha256, .mime = c->mime, .width = c->info.width,
                         .height = c->info.height, .thumb = thumb_len ? c->thumb : NULL,
                         .thumb_len = thumb_len, .thumb_mime = thumb_len ? c->thumb_mime : NULL,
                         .meta = &c->meta, .vec = c->vec};
    return 0;
}

/* Reads the info of image id of src into c (set empty first), and says
 * whether dst has the image already (by its bytes): then nothing more of
 * it is read. Returns 0 or an error. */
static int item_info(copy_run *r, int64_t id, copy_item *c, int *skip, ms_err *err)
{
    memset(c, 0, sizeof *c);
    store_meta_init(&c->meta);
    int64_t there = 0;
    int rc = store_get_info(r->src, id, &c->info, err);
    if (!rc)
        rc = store_find_sha256(r->dst, c->info.sha256, &there, err);
    *skip = rc == 0;
    return rc == MS_ENOTFOUND ? 0 : rc;
}

/* Ids can be kept when every image dst holds is an image of src under its
 * src id (none, or an interrupted copy's). Sets r->keep_ids. */
static int decide_ids(copy_run *r, ms_err *err)
{
    int64_t *ids = NULL;
    size_t n = 0;
    int rc = store_list_ids(r->dst, &ids, &n, err);
    r->keep_ids = 1;
    for (size_t i = 0; !rc && r->keep_ids && i < n; i++) {
        store_image_info info;
        int64_t in_src = 0;
        rc = store_get_info(r->dst, ids[i], &info, err);
        if (!rc && (rc = store_find_sha256(r->src, info.sha256, &in_src, err)) == MS_ENOTFOUND)
            rc = 0;
        r->keep_ids = !rc && in_src == ids[i];
    }
    free(ids);
    return rc;
}

/* Image bytes one transaction holds at most (a batch of large DICOM files
 * would otherwise hold gigabytes); a single larger image goes alone. */
#define COPY_BATCH_BYTES ((size_t)256 << 20)

/* Copies images ids[0..n) in one transaction, or as many of them as fit in
 * COPY_BATCH_BYTES (at least one): *used says how many were taken. */
static int copy_batch(copy_run *r, const int64_t *ids, size_t n, size_t *used, ms_err *err)
{
    copy_item *c = calloc(n, sizeof *c);
    store_item *items = calloc(n, sizeof *items);
    int64_t *got = calloc(n, sizeof *got);
    int *was_new = calloc(n, sizeof *was_new);
    int rc = c && items && got && was_new ? 0 : ms_err_set(err, MS_ENOMEM, "no memory");
    size_t k = 0, bytes = 0, i = 0;
    for (; !rc && i < n && bytes < COPY_BATCH_BYTES; i++) {
        int skip = 0;
        if ((rc = item_info(r, ids[i], &c[i], &skip, err)) != 0)
            break;
        if (skip) {
            r->existing++;
            continue;
        }
        if ((rc = item_read(r, ids[i], &c[i], err)) != 0)
            break;
        if (!r->keep_ids) {
            c[i].it.id = 0; /* dst gives the next one */
            r->renumbered++;
        }
        items[k++] = c[i].it;
        bytes += c[i].it.len;
    }
    *used = i;
    if (!rc && k > 0 && (rc = store_ingest(r->dst, items, k, got, was_new, err)) == 0)
        r->copied += k;
    for (size_t j = 0; c && j < n; j++)
        item_free(&c[j]);
    free(c);
    free(items);
    free(got);
    free(was_new);
    return rc;
}

/* The collection's settings, copied when dst starts empty. */
static int copy_settings(copy_run *r, ms_err *err)
{
    int off = 0, qe = 0;
    int rc = store_get_center_policy(r->src, &off, err);
    if (!rc)
        rc = store_set_center_policy(r->dst, off, err);
    if (!rc)
        rc = store_get_search_qe(r->src, &qe, err);
    if (!rc)
        rc = store_set_search_qe(r->dst, qe, err);
    return rc;
}

/* The center goes along when dst ends up holding exactly src's images:
 * then it is the mean of dst's vectors too, and searches rank the same. */
static int copy_center(copy_run *r, int *copied, ms_err *err)
{
    *copied = 0;
    size_t n = 0;
    int rc = store_count(r->dst, &n, err);
    if (rc || n != r->total || r->copied + r->existing != r->total)
        return rc;
    float *c = malloc((size_t)r->dim * sizeof *c);
    size_t from = 0;
    if (!c)
        return ms_err_set(err, MS_ENOMEM, "no memory");
    rc = store_get_center(r->src, c, r->dim, &from, err);
    if (rc == 0 && (rc = store_set_center(r->dst, c, r->dim, from, err)) == 0)
        *copied = 1;
    else if (rc == MS_ENOTFOUND)
        rc = store_clear_center(r->dst, err);
    free(c);
    return rc;
}

/* The model of src, registered in dst (which must have none or the same). */
static int adopt_model(copy_run *r, const char *src_uri, const char *dst_uri, char **identity, ms_err *err)
{
    int rc = store_get_model(r->src, identity, &r->dim, err);
    if (rc || !*identity)
        return rc;
    char *theirs = NULL;
    int their_dim = 0;
    rc = store_get_model(r->dst, &theirs, &their_dim, err);
    if (!rc && theirs && strcmp(theirs, *identity))
        rc = ms_err_set(err, MS_ECONFLICT, "%s holds vectors of model %s, and %s of %s: copy into an empty "
                        "collection, or re-embed one of them", dst_uri, theirs, src_uri, *identity);
    else if (!rc && !theirs)
        rc = store_use_model(r->dst, *identity, r->dim, 0, err);
    free(theirs);
    return rc;
}

static void report(const copy_run *r, const char *src_uri, const char *dst_uri, int settings, int center,
                   double seconds, int json)
{
    if (json) {
        json_t *o = json_pack("{s:o, s:s, s:o, s:s, s:I, s:I, s:I, s:I, s:b, s:b, s:f}", "from",
                              cli_json_text(src_uri), "from_backend", store_backend(r->src), "to",
                              cli_json_text(dst_uri), "to_backend", store_backend(r->dst), "images",
                              (json_int_t)r->total, "copied", (json_int_t)r->copied, "already_there",
                              (json_int_t)r->existing, "new_ids", (json_int_t)r->renumbered, "settings_copied",
                              settings, "center_copied", center, "seconds", seconds);
        json_dumpf(o, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(o);
        return;
    }
    printf("copied %zu of %zu images from %s (%s) to %s (%s) in %.1f s", r->copied, r->total, src_uri,
           store_backend(r->src), dst_uri, store_backend(r->dst), seconds);
    if (r->existing)
        printf("; %zu were there already", r->existing);
    if (r->renumbered)
        printf("; %zu took new ids (%s holds other images)", r->renumbered, dst_uri);
    printf("\n%s%s\n", settings ? "model, centering policy and query-expansion default copied" : "model checked",
           center ? "; center copied" : "");
}

/* Both names the same SQLite file, or the same PostgreSQL URI. */
static int same_collection(const char *a, const char *b)
{
    if (!strcmp(a, b))
        return 1;
    char ra[PATH_MAX], rb[PATH_MAX];
    return realpath(a, ra) && realpath(b, rb) && !strcmp(ra, rb);
}

static int run_copy(const cli_command *cmd, const char *src_uri, const char *dst_uri, int batch, int quiet,
                    int json)
{
    copy_run r = {0};
    ms_err err = {0};
    char *identity = NULL;
    int64_t *ids = NULL;
    int settings = 0, center = 0;
    uint64_t t0 = ms_now_ns();
    int rc = store_open(src_uri, &r.src, &err);
    if (!rc)
        rc = store_open(dst_uri, &r.dst, &err);
    size_t dst_before = 0;
    if (!rc)
        rc = store_list_ids(r.src, &ids, &r.total, &err);
    if (!rc)
        rc = store_count(r.dst, &dst_before, &err);
    if (!rc)
        rc = adopt_model(&r, src_uri, dst_uri, &identity, &err);
    if (!rc && r.total > 0 && !identity)
        rc = ms_err_set(&err, MS_EFORMAT, "%s has images but no model", src_uri);
    if (!rc && dst_before == 0 && identity && (rc = copy_settings(&r, &err)) == 0)
        settings = 1;
    if (!rc)
        rc = decide_ids(&r, &err);
    int show = !quiet && !json;
    progress prog;
    if (show)
        progress_init(&prog, stderr, "copy", "images", r.total, -1);
    for (size_t i = 0, used = 0; !rc && i < r.total; i += used) {
        size_t n = r.total - i < (size_t)batch ? r.total - i : (size_t)batch;
        rc = copy_batch(&r, ids + i, n, &used, &err);
        if (show)
            progress_update(&prog, i + used);
    }
    if (show)
        progress_finish(&prog);
    if (!rc && identity)
        rc = copy_center(&r, &center, &err);
    if (!rc)
        report(&r, src_uri, dst_uri, settings, center, ms_elapsed_ms(t0) / 1000.0, json);
    else
        cli_error(cmd, &err);
    if (rc && r.copied)
        fprintf(stderr, "medsearch copy: %zu images were copied before the error; run the copy again to finish "
                "it (images already there are skipped)\n", r.copied);
    free(ids);
    free(identity);
    store_close(r.dst);
    store_close(r.src);
    return rc == 0 ? 0 : rc == MS_EDB || rc == MS_EIO ? EXIT_ENV : rc == MS_ECONFLICT ? EXIT_USAGE : 1;
}

int cmd_copy(int argc, char **argv)
{
    const char *to = NULL;
    int batch = 64, quiet = 0;
    const cli_option opts[] = {
        {"to", 0, CLI_STRING, &to, "DST", "the collection to copy into: a SQLite file or a postgresql:// URI "
         "(created when absent)", 0, 0},
        {"batch", 0, CLI_INT, &batch, "N", "images per transaction (default 64; fewer past 256 MiB of images)",
         1, 4096},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no progress (errors still shown)", 0, 0},
        {0},
    };
    const cli_command cmd = {
        "copy", "--to DST",
        "Copies the collection --db (SQLite or PostgreSQL) into DST, without re-embedding: every image\n"
        "with its bytes, thumbnail, metadata, creation time and vector under its own id, and the model\n"
        "identity, centering policy, query-expansion default and center, so that a query finds the\n"
        "same ids with the same scores in both. DST must be empty or hold the same model. Images it\n"
        "holds already (the same bytes) are skipped, so an interrupted copy is finished by running it\n"
        "again; into a collection of other images the copies get new ids, and its settings stay.\n"
        "Moving a collection from SQLite to PostgreSQL:\n"
        "  medsearch copy --db medsearch.db --to postgresql://host/medsearch",
        CLI_DB | CLI_JSON, opts, 0, 0};
    cli_common c;
    char **args;
    int n_args, code;
    if (!cli_parse(&cmd, argc, argv, &c, &args, &n_args, &code))
        return code;
    free(args);
    if (!to || !*to) {
        fprintf(stderr, "medsearch copy: --to DST is required\n");
        cli_usage(&cmd, stderr);
        return EXIT_USAGE;
    }
    if (same_collection(c.db, to)) {
        fprintf(stderr, "medsearch copy: --db and --to name the same collection (%s)\n", to);
        return EXIT_USAGE;
    }
    if (cli_collection_missing(c.db)) {
        fprintf(stderr, "medsearch copy: no collection at %s (%s)\n", c.db, strerror(errno));
        return 1;
    }
    return run_copy(&cmd, c.db, to, batch, quiet, c.json);
}
