/*
 * bench_ingest.c - `medsearch bench ingest`: end-to-end ingest speed, and
 * search latency in a large running collection.
 *
 * In one run, on the same model and batch size:
 *   1. N 1024x1024 PNGs are made in a temporary folder (real X-rays of
 *      $MEDSEARCH_SHARED upscaled, synthetic texture without it; written
 *      like an X-ray export, about 200 KB each; --noise adds Gaussian
 *      noise for heavier files), or taken from --images;
 *   2. pure feature extraction: model_forward on prepared batches (the
 *      ceiling ingest can approach);
 *   3. end-to-end ingest into a new SQLite collection through the engine's
 *      pipeline (read, hash, decode, thumbnail, embed, store, index);
 *   4. the peer: bench/peer_ingest.py (PIL + torch.jit.freeze at batch 1 +
 *      FAISS + sqlite3, 2 threads) on the same files;
 *   5. the same ingest into a throwaway PostgreSQL (tests/tools/pg_start.sh);
 *   6. search: --search-n synthetic vectors (clustered, src/index/synth.h)
 *      stored directly in a collection of a running engine, then PNG queries
 *      through engine_search: p50/p90 with decoding and embedding included.
 * Without --model a random-weight torchvision ResNet-50 is exported by
 * bench/peer_torch_embed.py (weights do not change speed).
 */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vips/vips.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "image/image.h"
#include "index/synth.h"
#include "util/sha256.h"
#include "util/timing.h"

#define PYTHON "/usr/bin/python3"

typedef struct bench_cfg {
    int n, batch, size, no_peer, no_pg, search_n, queries, threads, rounds;
    double noise;          /* sigma of the Gaussian noise added to each PNG */
    const char *images, *search_db;
    cli_common c;
    char model[4096];
    char dir[512];         /* temporary folder */
    char img_dir[4096];
    char **files;
    int n_files;
    double mean_file_kb;   /* of the PNGs ingested, for the report */
    model_pool pooling;    /* in force (--pool auto resolved), for the report */
} bench_cfg;

/* ---- test images ---- */

typedef struct gen_ctx {
    bench_cfg *b;
    char **sources;
    int n_sources, next, failed;
    pthread_mutex_t mu;
} gen_ctx;

/* Writes px (size x size, 8-bit grey) as a PNG the way X-ray exports are
 * written: zlib level 6 and libpng's adaptive choice of filter per row
 * (mostly Paeth on a radiograph, as in the NIH ChestX-ray14 export). The
 * file's index goes into its first 4 pixels, so that no two files are the
 * same bytes even when two source X-rays are (content addressing would
 * store them once). */
static int save_png(uint8_t *px, int size, int index, const char *out)
{
    for (int i = 0; i < 4; i++)
        px[i] = (uint8_t)((unsigned)index >> (8 * i));
    image_vips_ops_lock();
    VipsImage *im = vips_image_new_from_memory(px, (size_t)size * (size_t)size, size, size, 1, VIPS_FORMAT_UCHAR);
    image_vips_ops_unlock();
    if (!im)
        return -1;
    int rc = vips_pngsave(im, out, "compression", 6, "filter", VIPS_FOREIGN_PNG_FILTER_ALL, NULL) ? -1 : 0;
    image_vips_ops_lock();
    g_object_unref(im);
    image_vips_ops_unlock();
    return rc;
}

/* One size x size 8-bit grey PNG from a real X-ray (or from synthetic
 * texture), with Gaussian noise of sigma `noise` (0: none). */
static int make_png(const char *src, int size, double noise, int index, const char *out)
{
    VipsImage *in = NULL, *t[6] = {0};
    int rc = -1;
    /* Making and dropping operations is serialised (image_vips_ops_lock);
     * the pixels are computed outside the lock. */
    image_vips_ops_lock();
    if (src) {
        if (!(in = vips_image_new_from_file(src, "access", VIPS_ACCESS_SEQUENTIAL, NULL)))
            goto out;
        if (vips_colourspace(in, &t[0], VIPS_INTERPRETATION_B_W, NULL) ||
            vips_extract_band(t[0], &t[1], 0, NULL) ||
            vips_resize(t[1], &t[2], (double)size / in->Xsize, "vscale", (double)size / in->Ysize, NULL))
            goto out;
    } else {
        /* smooth random structure: blurred noise on a gradient */
        if (vips_gaussnoise(&t[0], size, size, "sigma", 60.0, "mean", 128.0, NULL) ||
            vips_gaussblur(t[0], &t[2], 6.0, NULL))
            goto out;
    }
    if (noise > 0) {
        if (vips_gaussnoise(&t[3], size, size, "sigma", noise, "mean", 0.0, NULL) || vips_add(t[2], t[3], &t[4], NULL))
            goto out;
    } else {
        t[4] = t[2];
        g_object_ref(t[4]);
    }
    if (vips_cast_uchar(t[4], &t[5], NULL))
        goto out;
    image_vips_ops_unlock();
    size_t len = 0;
    uint8_t *px = vips_image_write_to_memory(t[5], &len);
    rc = px && len == (size_t)size * (size_t)size ? save_png(px, size, index, out) : -1;
    g_free(px);
    image_vips_ops_lock();
out:
    for (int i = 0; i < 6; i++)
        if (t[i])
            g_object_unref(t[i]);
    if (in)
        g_object_unref(in);
    image_vips_ops_unlock();
    return rc;
}

static void *gen_worker(void *arg)
{
    gen_ctx *g = arg;
    for (;;) {
        pthread_mutex_lock(&g->mu);
        int i = g->next < g->b->n ? g->next++ : -1;
        pthread_mutex_unlock(&g->mu);
        if (i < 0)
            break;
        const char *src = g->n_sources ? g->sources[i % g->n_sources] : NULL;
        if (make_png(src, g->b->size, g->b->noise, i, g->b->files[i]) != 0) {
            pthread_mutex_lock(&g->mu);
            g->failed++;
            pthread_mutex_unlock(&g->mu);
        }
    }
    vips_thread_shutdown();
    return NULL;
}

static int list_sources(gen_ctx *g)
{
    const char *shared = getenv("MEDSEARCH_SHARED");
    char dir[4096];
    if (!shared || snprintf(dir, sizeof dir, "%s/data/kermany_pneumonia_224/images", shared) >= (int)sizeof dir)
        return 0;
    struct dirent **ents;
    int n = scandir(dir, &ents, NULL, alphasort);
    if (n < 0)
        return 0;
    g->sources = calloc((size_t)n, sizeof *g->sources);
    for (int i = 0; i < n; i++) {
        if (g->sources && ents[i]->d_name[0] != '.' &&
            asprintf(&g->sources[g->n_sources], "%s/%s", dir, ents[i]->d_name) > 0)
            g->n_sources++;
        free(ents[i]);
    }
    free(ents);
    return g->n_sources;
}

static int prepare_images(bench_cfg *b)
{
    const char *dir = b->images ? b->images : b->img_dir;
    if (!b->images && snprintf(b->img_dir, sizeof b->img_dir, "%s/images", b->dir) < (int)sizeof b->img_dir)
        mkdir(b->img_dir, 0700);
    b->files = calloc((size_t)b->n, sizeof *b->files);
    if (!b->files)
        return -1;
    int missing = 0;
    for (int i = 0; i < b->n; i++) {
        if (asprintf(&b->files[i], "%s/bench_%06d.png", b->images ? b->images : b->img_dir, i) < 0)
            return -1;
        missing += access(b->files[i], R_OK) != 0;
        b->n_files++;
    }
    if (!missing)
        return 0;
    if (b->images)
        mkdir(b->images, 0700);
    gen_ctx g = {.b = b};
    pthread_mutex_init(&g.mu, NULL);
    int from_xrays = list_sources(&g);
    fprintf(stderr, "bench ingest: making %d %dx%d PNGs in %s (%s)...\n", b->n, b->size, b->size, dir,
            from_xrays ? "Kermany X-rays upscaled" : "synthetic texture");
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, gen_worker, &g);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < g.n_sources; i++)
        free(g.sources[i]);
    free(g.sources);
    pthread_mutex_destroy(&g.mu);
    if (g.failed)
        fprintf(stderr, "bench ingest: %d images could not be made\n", g.failed);
    return g.failed ? -1 : 0;
}

/* The mean size of the files, in KB (1000 bytes), for the report. */
static double mean_file_kb(const bench_cfg *b)
{
    double sum = 0;
    for (int i = 0; i < b->n_files; i++) {
        struct stat st;
        if (stat(b->files[i], &st) == 0)
            sum += (double)st.st_size;
    }
    return b->n_files ? sum / b->n_files / 1000 : 0;
}

/* ---- pure feature extraction ---- */

static int pure_throughput(bench_cfg *b, double *ips, ms_err *err)
{
    model *m;
    int rc = model_load(b->model, &b->c.model_opt, &m, err);
    if (rc)
        return rc;
    b->pooling = model_pooling(m);
    const image_prep *prep = model_prep(m);
    size_t per = (size_t)3 * (size_t)prep->size * (size_t)prep->size;
    float *in = malloc(per * (size_t)b->batch * sizeof(float));
    float *out = malloc((size_t)model_dim(m) * (size_t)b->batch * sizeof(float));
    image_limits lim = image_default_limits();
    for (int i = 0; rc == 0 && i < b->batch; i++) {
        unsigned char *bytes;
        size_t len;
        rc = cli_read_file(b->files[i % b->n], lim.max_bytes, &bytes, &len, err);
        if (rc == 0) {
            rc = image_prepare(bytes, len, &lim, prep, in + (size_t)i * per, NULL, err);
            free(bytes);
        }
    }
    if (rc == 0)
        rc = model_forward(m, in, b->batch, out, err); /* warm-up: allocates activations */
    int iters = 0;
    uint64_t t0 = ms_now_ns();
    /* as many images as the ingest will run, at least 3 batches */
    while (rc == 0 && (iters < 3 || iters * b->batch < b->n)) {
        rc = model_forward(m, in, b->batch, out, err);
        iters++;
        if (ms_elapsed_ms(t0) > 120000)
            break;
    }
    double s = ms_elapsed_ms(t0) / 1000.0;
    *ips = rc == 0 && s > 0 ? iters * b->batch / s : 0;
    free(in);
    free(out);
    model_free(m);
    return rc;
}

/* ---- end-to-end ingest through the engine ---- */

typedef struct file_src {
    bench_cfg *b;
    int next, failed, stored;
    ms_err first;
} file_src;

static int fs_next(void *ctx, engine_item *item, void **token, ms_err *err)
{
    file_src *f = ctx;
    if (f->next >= f->b->n)
        return 0;
    unsigned char *bytes;
    size_t len;
    image_limits lim = image_default_limits();
    int rc = cli_read_file(f->b->files[f->next++], lim.max_bytes, &bytes, &len, err);
    if (rc)
        return rc;
    *item = (engine_item){.bytes = bytes, .len = len};
    *token = bytes;
    return 1;
}

static void fs_done(void *ctx, void *token, const engine_item *item, const engine_item_result *res)
{
    (void)item;
    file_src *f = ctx;
    if (res->err.code && !f->failed++)
        f->first = res->err;
    f->stored += res->err.code == 0 && res->was_new;
    free(token);
}

static int ingest_run(bench_cfg *b, const char *db, double *ips, double *open_s, ms_err *err)
{
    engine_options o;
    cli_engine_options(&b->c, &o);
    o.db = db;
    o.model_path = b->model;
    o.max_batch = b->batch;
    o.threads = b->threads;
    engine *e;
    uint64_t t0 = ms_now_ns();
    int rc = engine_open(&o, &e, NULL, err);
    if (rc)
        return rc;
    *open_s = ms_elapsed_ms(t0) / 1000.0;
    file_src f = {.b = b};
    engine_ingest_source src = {.next = fs_next, .done = fs_done, .ctx = &f, .size_hint = (size_t)b->n};
    t0 = ms_now_ns();
    rc = engine_ingest_stream(e, &src, err);
    double s = ms_elapsed_ms(t0) / 1000.0;
    if (rc == 0)
        rc = engine_flush(e, err);
    engine_close(e);
    if (rc == 0 && f.stored != b->n)
        rc = ms_err_set(err, MS_EINTERNAL, "%d of %d images stored (first failure: %s)", f.stored, b->n,
                        f.first.msg);
    *ips = rc == 0 ? b->n / s : 0;
    return rc;
}

/* ---- the peer ---- */

static double run_peer(bench_cfg *b, int dim, json_t **detail)
{
    char script[4096], cmd[16384], db[1024];
    *detail = NULL;
    if (cli_find_repo_file("bench/peer_ingest.py", script, sizeof script) != 0 || access(PYTHON, X_OK) != 0) {
        fprintf(stderr, "bench ingest: peer skipped: bench/peer_ingest.py or %s not found\n", PYTHON);
        return 0;
    }
    snprintf(db, sizeof db, "%s/peer.sqlite", b->dir);
    if (snprintf(cmd, sizeof cmd, "%s '%s' --images '%s' --n %d --db '%s' --arch %s --threads 2", PYTHON, script,
                 b->images ? b->images : b->img_dir, b->n, db, dim == 2048 ? "resnet50" : "mobilenet_v2") >=
        (int)sizeof cmd)
        return 0;
    fprintf(stderr, "bench ingest: running the peer (%s)...\n", dim == 2048 ? "ResNet-50" : "MobileNetV2");
    FILE *p = popen(cmd, "r");
    char line[8192] = "";
    while (p && fgets(line, sizeof line, p))
        if (line[0] == '{')
            break;
    if (p)
        pclose(p);
    json_error_t je;
    json_t *o = json_loads(line, 0, &je);
    double ips = o ? json_real_value(json_object_get(o, "images_per_s")) : 0;
    if (!o || ips <= 0) {
        fprintf(stderr, "bench ingest: the peer gave no result: %s\n", line);
        json_decref(o);
        return 0;
    }
    *detail = o;
    return ips;
}

/* ---- PostgreSQL ---- */

static double run_pg(bench_cfg *b, ms_err *err)
{
    char start[4096], stop[4096], cmd[8192], uri[512] = "";
    if (cli_find_repo_file("tests/tools/pg_start.sh", start, sizeof start) != 0 ||
        cli_find_repo_file("tests/tools/pg_stop.sh", stop, sizeof stop) != 0) {
        fprintf(stderr, "bench ingest: PostgreSQL skipped: tests/tools/pg_start.sh not found\n");
        return 0;
    }
    chmod(b->dir, 0711); /* as root the cluster belongs to another user */
    snprintf(cmd, sizeof cmd, "'%s' '%s/pg'", start, b->dir);
    FILE *p = popen(cmd, "r");
    int got = p && fgets(uri, sizeof uri, p) != NULL;
    int status = p ? pclose(p) : -1;
    if (!got || status != 0) {
        fprintf(stderr, "bench ingest: PostgreSQL skipped: it did not start (pg_start.sh status %d)\n", status);
        return 0;
    }
    uri[strcspn(uri, "\r\n")] = '\0';
    fprintf(stderr, "bench ingest: ingesting into PostgreSQL (%s)...\n", uri);
    double ips = 0, open_s;
    if (ingest_run(b, uri, &ips, &open_s, err) != 0) {
        fprintf(stderr, "bench ingest: PostgreSQL ingest failed: %s\n", err->msg);
        ips = 0;
    }
    snprintf(cmd, sizeof cmd, "'%s' '%s/pg' >/dev/null 2>&1", stop, b->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench ingest: pg_stop.sh failed\n");
    return ips;
}

/* ---- search in a large collection ---- */

typedef struct search_stats {
    double p50, p90, decode, embed, index, store;
    int n;
    char kind[16];
} search_stats;

/* Stores n synthetic vectors straight into the collection (no images to
 * decode: tiny unique payloads). A collection large enough to be centred
 * then gets its center and its index in one go from engine_update_center,
 * as `medsearch ingest` ends, so that the index is built once, centred,
 * and persisted for the next open (bench serve); a smaller one has its
 * vectors added to the running engine's index as they are stored. */
static int fill_synthetic(engine *e, int n, int dim, ms_err *err)
{
    int centre_after = n >= ENGINE_CENTER_MIN;
    enum { CHUNK = 1000 };
    ix_synth *syn;
    int rc = ix_synth_open(dim, 500, 0, 42, &syn, err);
    if (rc)
        return rc;
    float *v = malloc((size_t)CHUNK * (size_t)dim * sizeof(float));
    store_item *items = calloc(CHUNK, sizeof *items);
    int64_t ids[CHUNK];
    int was_new[CHUNK];
    char payload[CHUNK][32], sha[CHUNK][65], patient[CHUNK][16];
    char *labels[] = {"No Finding", "Effusion", "Atelectasis", "Infiltration"};
    store_meta meta[CHUNK];
    store *s = engine_store(e);
    uint64_t t0 = ms_now_ns();
    for (int done = 0; rc == 0 && done < n; done += CHUNK) {
        int k = n - done < CHUNK ? n - done : CHUNK;
        ix_synth_points(syn, 0, (size_t)k, v);
        for (int i = 0; i < k; i++) {
            snprintf(payload[i], sizeof payload[i], "synthetic-%d", done + i);
            ms_sha256_hex(payload[i], strlen(payload[i]), sha[i]);
            snprintf(patient[i], sizeof patient[i], "%d", (done + i) / 3);
            store_meta_init(&meta[i]);
            meta[i].patient_id = patient[i];
            meta[i].labels = &labels[(done + i) % 4];
            meta[i].n_labels = 1;
            meta[i].age = 20 + (done + i) % 60;
            meta[i].sex = (done + i) % 2 ? 'F' : 'M';
            items[i] = (store_item){.bytes = (const uint8_t *)payload[i], .len = strlen(payload[i]), .sha256 = sha[i],
                                    .mime = "image/png", .width = 1024, .height = 1024, .meta = &meta[i],
                                    .vec = v + (size_t)i * (size_t)dim};
        }
        rc = store_ingest(s, items, (size_t)k, ids, was_new, err);
        if (rc == 0 && !centre_after)
            rc = index_add(engine_index(e), ids, v, (size_t)k, err);
    }
    if (rc == 0 && centre_after)
        rc = engine_update_center(e, 0, NULL, err);
    /* The index (AUTO) switched to the graph by itself as it grew. */
    if (rc == 0)
        fprintf(stderr, "bench ingest: %d vectors stored and indexed (%s) in %.1f s\n", n,
                index_kind_name(index_current_kind(engine_index(e))), ms_elapsed_ms(t0) / 1000.0);
    free(v);
    free(items);
    ix_synth_close(syn);
    return rc;
}

static int search_bench(bench_cfg *b, search_stats *st, ms_err *err)
{
    char db[4096];
    if (b->search_db)
        snprintf(db, sizeof db, "%s", b->search_db);
    else
        snprintf(db, sizeof db, "%s/search.db", b->dir);
    engine_options o;
    cli_engine_options(&b->c, &o);
    o.db = db;
    o.model_path = b->model;
    engine *e;
    int rc = engine_open(&o, &e, NULL, err);
    if (rc)
        return rc;
    engine_stats have;
    engine_get_stats(e, &have);
    if (have.images >= (size_t)b->search_n) {
        fprintf(stderr, "bench ingest: reusing %s (%zu vectors)\n", db, have.images);
    } else if (have.images > 0) {
        rc = ms_err_set(err, MS_EINVAL, "%s holds %zu vectors, fewer than --search-n %d: remove it or "
                        "choose another path", db, have.images, b->search_n);
    } else {
        fprintf(stderr, "bench ingest: storing %d synthetic vectors...\n", b->search_n);
        rc = fill_synthetic(e, b->search_n, model_dim(engine_model(e)), err);
    }
    double *tot = calloc((size_t)b->queries, sizeof *tot);
    st->n = 0;
    for (int i = -3; rc == 0 && i < b->queries; i++) { /* 3 warm-up queries */
        unsigned char *bytes;
        size_t len;
        image_limits lim = image_default_limits();
        if ((rc = cli_read_file(b->files[(i + 3) % b->n], lim.max_bytes, &bytes, &len, err)) != 0)
            break;
        engine_query q = {.bytes = bytes, .len = len, .k = 10};
        engine_result *res;
        int n;
        engine_timing t;
        rc = engine_search(e, &q, &res, &n, &t, err);
        free(bytes);
        if (rc)
            break;
        engine_results_free(res, n);
        if (i < 0)
            continue;
        tot[st->n++] = t.total_ms;
        st->decode += t.decode_ms / b->queries;
        st->embed += t.embed_ms / b->queries;
        st->index += t.index_ms / b->queries;
        st->store += t.store_ms / b->queries;
    }
    if (rc == 0 && st->n > 0) {
        qsort(tot, (size_t)st->n, sizeof *tot, cli_cmp_double);
        st->p50 = tot[st->n / 2];
        st->p90 = tot[(st->n * 9) / 10 < st->n ? (st->n * 9) / 10 : st->n - 1];
        snprintf(st->kind, sizeof st->kind, "%s", index_kind_name(index_current_kind(engine_index(e))));
    }
    free(tot);
    engine_close(e);
    return rc;
}

/* ---- the command ---- */

static int make_model(bench_cfg *b)
{
    if (b->c.model) {
        ms_err err = {0};
        if (engine_find_model(b->c.model, b->model, sizeof b->model, &err) != 0) {
            fprintf(stderr, "medsearch bench ingest: %s\n", err.msg);
            return -1;
        }
        return 0;
    }
    char script[4096], cmd[16384];
    if (cli_find_repo_file("bench/peer_torch_embed.py", script, sizeof script) != 0 || access(PYTHON, X_OK) != 0) {
        fprintf(stderr, "medsearch bench ingest: give --model: without it a random-weight ResNet-50 is exported by "
                        "bench/peer_torch_embed.py with %s (python3-torch), not found here\n", PYTHON);
        return -1;
    }
    snprintf(b->model, sizeof b->model, "%s/resnet50.onnx", b->dir);
    snprintf(cmd, sizeof cmd, "%s '%s' export-resnet50 '%s' >/dev/null 2>&1", PYTHON, script, b->model);
    fprintf(stderr, "bench ingest: exporting a random-weight torchvision ResNet-50...\n");
    if (system(cmd) != 0) {
        fprintf(stderr, "medsearch bench ingest: exporting ResNet-50 failed (%s)\n", cmd);
        return -1;
    }
    return 0;
}

/* Pure extraction and the SQLite ingest, alternated so that a slow spell
 * of a shared machine falls on both; the ratio is taken within a round. */
#define MAX_ROUNDS 100

typedef struct rounds_t {
    double pure[MAX_ROUNDS], ingest[MAX_ROUNDS], ratio[MAX_ROUNDS];
} rounds_t;

static double median(const double *v, int n)
{
    double s[MAX_ROUNDS];
    memcpy(s, v, sizeof *v * (size_t)n);
    return cli_median(s, n);
}

static void print_list(const char *name, const double *v, int n, const char *fmt)
{
    printf("%s", name);
    for (int i = 0; i < n; i++) {
        putchar(' ');
        printf(fmt, v[i]);
    }
}

/* Removes a SQLite collection and the files beside it, so that each round
 * ingests into a fresh one. */
static void remove_collection(const char *db)
{
    static const char *const suffix[] = {"", "-wal", "-shm", ".index"};
    char path[1100];
    for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
        snprintf(path, sizeof path, "%s%s", db, suffix[i]);
        unlink(path);
    }
}

/* The vector size of the collection at db, for the report (0 if unknown). */
static int collection_dim(bench_cfg *b, const char *db)
{
    engine_options o;
    cli_engine_options(&b->c, &o);
    o.db = db;
    o.no_model = 1;
    engine *e;
    ms_err err = {0};
    int dim = 0;
    if (engine_open(&o, &e, NULL, &err) == 0) {
        engine_stats st;
        engine_get_stats(e, &st);
        dim = st.dim;
        engine_close(e);
    }
    return dim;
}

static int pure_and_ingest_rounds(bench_cfg *b, rounds_t *r, double *open_s, int *dim, ms_err *err)
{
    char db[1024];
    snprintf(db, sizeof db, "%s/ingest.db", b->dir);
    int rc = 0;
    for (int i = 0; rc == 0 && i < b->rounds; i++) {
        fprintf(stderr, "bench ingest: round %d of %d: pure feature extraction...\n", i + 1, b->rounds);
        rc = pure_throughput(b, &r->pure[i], err);
        if (rc)
            break;
        fprintf(stderr, "bench ingest: round %d of %d: ingesting into SQLite...\n", i + 1, b->rounds);
        remove_collection(db);
        rc = ingest_run(b, db, &r->ingest[i], open_s, err);
        r->ratio[i] = r->pure[i] > 0 ? r->ingest[i] / r->pure[i] : 0;
    }
    if (rc == 0)
        *dim = collection_dim(b, db);
    return rc;
}

static json_t *json_doubles(const double *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_real(v[i]));
    return a;
}

static void report(bench_cfg *b, int dim, const rounds_t *r, double pure, double e2e, double open_s, double peer,
                   json_t *peer_detail, double pg, const search_stats *ss)
{
    double ratio = median(r->ratio, b->rounds);
    if (b->c.json) {
        json_t *o = json_pack("{s:o, s:s, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:o, s:o, s:o}", "model",
                              cli_json_text(b->model), "pooling", model_pool_name(b->pooling), "dim", dim, "images", b->n,
                              "batch", b->batch, "size", b->size, "rounds", b->rounds,
                              "pure_images_per_s", pure, "ingest_images_per_s", e2e, "ingest_vs_pure", ratio,
                              "engine_open_s", open_s, "pure_rounds", json_doubles(r->pure, b->rounds),
                              "ingest_rounds", json_doubles(r->ingest, b->rounds), "ingest_vs_pure_rounds",
                              json_doubles(r->ratio, b->rounds));
        if (peer > 0) {
            json_object_set_new(o, "peer_images_per_s", json_real(peer));
            json_object_set_new(o, "ingest_vs_peer", json_real(e2e / peer));
            json_object_set(o, "peer", peer_detail);
        }
        if (pg > 0) {
            json_object_set_new(o, "postgresql_images_per_s", json_real(pg));
            json_object_set_new(o, "postgresql_vs_sqlite", json_real(pg / e2e));
        }
        if (ss->n > 0)
            json_object_set_new(o, "search",
                                json_pack("{s:i, s:s, s:i, s:f, s:f, s:f, s:f, s:f, s:f}", "vectors", b->search_n,
                                          "index", ss->kind, "queries", ss->n, "p50_ms", ss->p50, "p90_ms", ss->p90,
                                          "decode_ms", ss->decode, "embed_ms", ss->embed, "index_ms", ss->index,
                                          "store_ms", ss->store));
        json_object_set_new(o, "mean_file_kb", json_real(b->mean_file_kb));
        json_dumpf(o, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(5));
        fputc('\n', stdout);
        json_decref(o);
        return;
    }
    printf("model %s (dim %d, pooling %s), %d images %dx%d PNG (mean %.0f KB), batch %d, %ld cores\n", b->model,
           dim, model_pool_name(b->pooling), b->n, b->size, b->size, b->mean_file_kb, b->batch,
           sysconf(_SC_NPROCESSORS_ONLN));
    printf("pure feature extraction   %8.1f images/s\n", pure);
    printf("ingest, SQLite            %8.1f images/s   %.0f%% of pure (target >= 85%%); open %.2f s not counted\n",
           e2e, 100 * ratio, open_s);
    if (b->rounds > 1) {
        printf("  medians of %d rounds:", b->rounds);
        print_list(" pure", r->pure, b->rounds, "%.1f");
        print_list("; ingest", r->ingest, b->rounds, "%.1f");
        print_list("; ingest/pure", r->ratio, b->rounds, "%.3f");
        putchar('\n');
    }
    if (peer > 0)
        printf("peer (PIL+torch+FAISS)    %8.1f images/s   ours %.2fx the peer (target >= 1.4x)\n", peer, e2e / peer);
    if (pg > 0)
        printf("ingest, PostgreSQL        %8.1f images/s   %.0f%% of SQLite (target >= 90%%)\n", pg, 100 * pg / e2e);
    if (ss->n > 0)
        printf("search in %d vectors (%s): p50 %.1f ms, p90 %.1f ms (target p50 < 60 ms); mean decode %.1f, "
               "embed %.1f, index %.2f, store %.2f ms\n",
               b->search_n, ss->kind, ss->p50, ss->p90, ss->decode, ss->embed, ss->index, ss->store);
}

int bench_ingest(int argc, char **argv)
{
    bench_cfg b = {.n = 1000, .batch = 16, .size = 1024, .search_n = 112120, .queries = 30, .rounds = 3};
    const cli_option opts[] = {
        {"n", 'n', CLI_INT, &b.n, "N", "images to ingest (default 1000)", 1, 1000000},
        {"batch", 0, CLI_INT, &b.batch, "N", "inference batch, both sides (default 16)", 1, 256},
        {"size", 0, CLI_INT, &b.size, "PX", "side of the generated PNGs (default 1024)", 64, 8192},
        {"noise", 0, CLI_DOUBLE, &b.noise, "SIGMA", "Gaussian noise added to the generated PNGs (default 0)", 0, 0},
        {"threads", 0, CLI_INT, &b.threads, "N", "decode threads (default: one per core)", 1, 256},
        {"rounds", 0, CLI_INT, &b.rounds, "R",
         "alternate pure extraction and the SQLite ingest R times; figures are medians (default 3)", 1, 100},
        {"images", 0, CLI_STRING, &b.images, "DIR", "make (or reuse) the PNGs in DIR and keep them", 0, 0},
        {"no-peer", 0, CLI_FLAG, &b.no_peer, NULL, "skip the Python peer", 0, 0},
        {"no-pg", 0, CLI_FLAG, &b.no_pg, NULL, "skip PostgreSQL", 0, 0},
        {"search-n", 0, CLI_INT, &b.search_n, "N", "vectors for the search part (default 112120, 0 = skip)", 0,
         10000000},
        {"queries", 0, CLI_INT, &b.queries, "N", "timed searches (default 30)", 1, 100000},
        {"search-db", 0, CLI_STRING, &b.search_db, "DB",
         "build the search part's collection here and keep it (reused when it holds --search-n vectors; "
         "give --model too, so that the model stays the same)", 0, 0},
        {0},
    };
    static const cli_command base = {
        "bench ingest", NULL,
        "End-to-end ingest speed of 1024x1024 PNGs into SQLite, against pure feature extraction of the\n"
        "same model and batch, a Python peer (bench/peer_ingest.py) and PostgreSQL, all in one run; then\n"
        "search latency in a large collection with decoding and embedding included. Without --model a\n"
        "random-weight torchvision ResNet-50 is exported (needs /usr/bin/python3 with python3-torch).",
        CLI_MODEL | CLI_JSON, NULL, 0, 0};
    cli_command cmd = base;
    cmd.options = opts;
    char **args;
    int n_args, code;
    if (!cli_parse(&cmd, argc, argv, &b.c, &args, &n_args, &code))
        return code;
    free(args);
    snprintf(b.dir, sizeof b.dir, "%s/medsearch-bench-ingest-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(b.dir)) {
        fprintf(stderr, "medsearch bench ingest: cannot make a temporary folder: %s\n", strerror(errno));
        return EXIT_ENV;
    }
    ms_err err = {0};
    int rc = image_init(1, &err);
    if (rc == 0 && (make_model(&b) != 0 || prepare_images(&b) != 0))
        rc = -1;
    b.mean_file_kb = rc == 0 ? mean_file_kb(&b) : 0;
    rounds_t r = {0};
    double open_s = 0, peer = 0, pg = 0;
    json_t *peer_detail = NULL;
    search_stats ss = {0};
    int dim = 0;
    if (rc == 0)
        rc = pure_and_ingest_rounds(&b, &r, &open_s, &dim, &err);
    double pure = median(r.pure, b.rounds), e2e = median(r.ingest, b.rounds);
    if (rc == 0 && !b.no_peer)
        peer = run_peer(&b, dim, &peer_detail);
    if (rc == 0 && !b.no_pg)
        pg = run_pg(&b, &err);
    if (rc == 0 && b.search_n > 0 && search_bench(&b, &ss, &err) != 0) {
        fprintf(stderr, "medsearch bench ingest: search part failed: %s\n", err.msg);
        ss.n = 0;
    }
    if (rc == 0)
        report(&b, dim, &r, pure, e2e, open_s, peer, peer_detail, pg, &ss);
    else if (err.msg[0])
        fprintf(stderr, "medsearch bench ingest: %s\n", err.msg);
    json_decref(peer_detail);
    for (int i = 0; i < b.n_files; i++)
        free(b.files[i]);
    free(b.files);
    char rm[1200];
    snprintf(rm, sizeof rm, "rm -rf '%s'", b.dir);
    if (system(rm) != 0)
        fprintf(stderr, "medsearch bench ingest: could not remove %s\n", b.dir);
    return rc == 0 ? 0 : 1;
}
