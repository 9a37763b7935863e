/*
 * engine.c - opening and closing a collection, the store handle pool, the
 * index's persistence, and the small operations (delete, stats, check).
 * Ingest is in engine/ingest.c, search in engine/search.c, the inference
 * thread in engine/infer.c.
 *
 * The store is the source of truth; the index is derived from it. The index
 * file records the store generation it reflects: on open, a file whose
 * generation or count differs from the store's is stale and the index is
 * rebuilt from the stored vectors, so a process killed at any moment leaves
 * a collection that opens correctly.
 */
#include "engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/internal.h"
#include "util/timing.h"

#define REBUILD_CHUNK 2048

void engine_options_init(engine_options *o)
{
    memset(o, 0, sizeof *o);
    o->db = "medsearch.db";
    model_options_init(&o->model);
    index_params_init(&o->index);
    o->limits = image_default_limits();
    o->max_batch = 16;
    o->queue_depth = 64;
    o->thumb_size = 256;
}

/* ---- finding the model ---- */

static const char model_advice[] =
    "Get ResNet-50 as ONNX: the ONNX model zoo's resnet50-v1-12.onnx, or export torchvision's: "
    "python3 -c \"import torch,torchvision; m=torchvision.models.resnet50(weights='IMAGENET1K_V1'); "
    "m.fc=torch.nn.Identity(); torch.onnx.export(m.eval(), torch.zeros(1,3,224,224), 'resnet50.onnx', "
    "opset_version=13, input_names=['input'], output_names=['features'], "
    "dynamic_axes={'input':{0:'batch'}})\"";

const char *engine_model_help(void)
{
    return "MedSearch needs a CNN as an ONNX file. It looks for it in this order:\n"
           "  --model PATH, then $MEDSEARCH_MODEL, then ./models/resnet50.onnx,\n"
           "  then $XDG_DATA_HOME/medsearch/model.onnx (~/.local/share/medsearch/model.onnx).\n"
           "\n"
           "The default users ask for is ResNet-50 (ImageNet weights, classifier removed). Either:\n"
           "  1. download resnet50-v1-12.onnx from the ONNX model zoo (validated/vision/classification/\n"
           "     resnet) and use it with --pool avg to take its 2048-d pooled feature, or\n"
           "  2. export torchvision's ResNet-50 with PyTorch (two lines):\n"
           "     python3 -c \"import torch,torchvision; m=torchvision.models.resnet50(weights='IMAGENET1K_V1'); "
           "m.fc=torch.nn.Identity(); torch.onnx.export(m.eval(), torch.zeros(1,3,224,224), 'resnet50.onnx', "
           "opset_version=13, input_names=['input'], output_names=['features'], "
           "dynamic_axes={'input':{0:'batch'}})\"\n"
           "     mkdir -p models && mv resnet50.onnx models/\n";
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int set_path(char *out, size_t out_len, const char *path, ms_err *err)
{
    if (snprintf(out, out_len, "%s", path) >= (int)out_len)
        return ms_err_set(err, MS_EINVAL, "model path too long: %.80s...", path);
    return 0;
}

int engine_find_model(const char *flag_path, char *out, size_t out_len, ms_err *err)
{
    if (flag_path && *flag_path) {
        if (!file_exists(flag_path))
            return ms_err_set(err, MS_ENOTFOUND, "model file %s not found (--model)", flag_path);
        return set_path(out, out_len, flag_path, err);
    }
    const char *env = getenv("MEDSEARCH_MODEL");
    if (env && *env) {
        if (!file_exists(env))
            return ms_err_set(err, MS_ENOTFOUND, "model file %s not found (MEDSEARCH_MODEL)", env);
        return set_path(out, out_len, env, err);
    }
    char xdg[1024];
    const char *data = getenv("XDG_DATA_HOME");
    const char *home = getenv("HOME");
    if (data && *data)
        snprintf(xdg, sizeof xdg, "%s/medsearch/model.onnx", data);
    else
        snprintf(xdg, sizeof xdg, "%s/.local/share/medsearch/model.onnx", home ? home : "");
    const char *places[] = {"models/resnet50.onnx", xdg};
    for (size_t i = 0; i < sizeof places / sizeof places[0]; i++)
        if (file_exists(places[i]))
            return set_path(out, out_len, places[i], err);
    return ms_err_set(err, MS_ENOTFOUND,
                      "no model: give --model or MEDSEARCH_MODEL (looked in ./models/resnet50.onnx, "
                      "$XDG_DATA_HOME/medsearch/model.onnx). %s", model_advice);
}

/* ---- store handle pool ---- */

int engine_pool_get(engine *e, store **s, ms_err *err)
{
    pthread_mutex_lock(&e->pool_mu);
    for (;;) {
        if (e->pool_nfree > 0) {
            *s = e->pool_free[--e->pool_nfree];
            pthread_mutex_unlock(&e->pool_mu);
            return 0;
        }
        if (e->pool_open < ENGINE_POOL_MAX)
            break;
        pthread_cond_wait(&e->pool_cv, &e->pool_mu);
    }
    e->pool_open++; /* reserve the slot, then open without the lock */
    pthread_mutex_unlock(&e->pool_mu);
    int rc = store_open(e->db, s, err);
    if (rc) {
        pthread_mutex_lock(&e->pool_mu);
        e->pool_open--;
        pthread_cond_signal(&e->pool_cv);
        pthread_mutex_unlock(&e->pool_mu);
    }
    return rc;
}

void engine_pool_put(engine *e, store *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&e->pool_mu);
    e->pool_free[e->pool_nfree++] = s;
    pthread_cond_signal(&e->pool_cv);
    pthread_mutex_unlock(&e->pool_mu);
}

int engine_store_acquire(engine *e, store **s, ms_err *err)
{
    return engine_pool_get(e, s, err);
}

void engine_store_release(engine *e, store *s)
{
    engine_pool_put(e, s);
}

/* ---- writer sections ---- */

void engine_write_begin(engine *e, store *s)
{
    pthread_mutex_lock(&e->write_mu);
    uint64_t g;
    if (store_generation(s, &g, NULL) == 0 && g != e->known_gen)
        e->index_foreign = 1;
}

void engine_write_end(engine *e, store *s, int changed)
{
    uint64_t g;
    if (store_generation(s, &g, NULL) == 0)
        e->known_gen = g;
    else
        e->index_foreign = 1; /* cannot tell what the index reflects */
    if (changed)
        e->index_dirty = 1;
    pthread_mutex_unlock(&e->write_mu);
}

int engine_need_model(const engine *e, ms_err *err)
{
    if (!e->m)
        return ms_err_set(err, MS_EINVAL, "the collection was opened without a model");
    if (e->pending_reembed)
        return ms_err_set(err, MS_ECONFLICT,
                          "the collection's vectors come from another model: run `medsearch reembed` first");
    return 0;
}

int engine_prepare(engine *e, const uint8_t *bytes, size_t len, const image_region *region,
                   image_rect *used, float **input, image_info *info, ms_err *err)
{
    const image_prep *prep = model_prep(e->m);
    float *buf = malloc((size_t)3 * (size_t)prep->size * (size_t)prep->size * sizeof(float));
    if (!buf)
        return ms_err_set(err, MS_ENOMEM, "no memory for a prepared image");
    int rc = image_prepare_region(bytes, len, &e->opt.limits, prep, region, buf, info, used, err);
    if (rc) {
        free(buf);
        return rc;
    }
    *input = buf;
    return 0;
}

/* ---- the index: load, rebuild, save ---- */

typedef struct rebuild_ctx {
    engine *e;
    int64_t *ids;
    float *vecs;
    size_t n;
    int rc;
    ms_err err;
} rebuild_ctx;

static int rebuild_flush(rebuild_ctx *c)
{
    if (c->n == 0)
        return 0;
    engine_center_apply(c->e, c->vecs, c->n);
    int rc = index_add(c->e->ix, c->ids, c->vecs, c->n, &c->err);
    c->n = 0;
    return rc;
}

static int rebuild_add(void *ctx, int64_t id, const float *vec, int dim)
{
    rebuild_ctx *c = ctx;
    if (dim != c->e->dim) {
        c->rc = ms_err_set(&c->err, MS_EFORMAT, "image %lld has a %d-d vector, the collection's model gives %d",
                           (long long)id, dim, c->e->dim);
        return 1;
    }
    c->ids[c->n] = id;
    memcpy(c->vecs + c->n * (size_t)dim, vec, (size_t)dim * sizeof(float));
    if (++c->n == REBUILD_CHUNK && (c->rc = rebuild_flush(c)) != 0)
        return 1;
    return 0;
}

/* Fills a fresh index from every stored vector, centred. */
int engine_index_rebuild(engine *e, store *s, ms_err *err)
{
    index_free(e->ix);
    e->ix = NULL;
    int rc = index_create(e->dim, &e->opt.index, &e->ix, err);
    if (rc)
        return rc;
    rebuild_ctx c = {.e = e};
    c.ids = malloc(REBUILD_CHUNK * sizeof(int64_t));
    c.vecs = malloc((size_t)REBUILD_CHUNK * (size_t)e->dim * sizeof(float));
    if (!c.ids || !c.vecs) {
        free(c.ids);
        free(c.vecs);
        return ms_err_set(err, MS_ENOMEM, "no memory to rebuild the index");
    }
    rc = store_each_vector(s, rebuild_add, &c, err);
    if (!rc && !c.rc)
        c.rc = rebuild_flush(&c);
    free(c.ids);
    free(c.vecs);
    if (!rc && c.rc) {
        rc = c.rc;
        if (err)
            *err = c.err;
    }
    if (rc)
        return ms_err_prefix(err, "rebuilding the index from the store: ");
    /* A bulk load goes in as an exact index; AUTO switches to the graph
     * when the collection is large enough. */
    if (e->opt.index.kind == INDEX_AUTO && index_current_kind(e->ix) == INDEX_FLAT &&
        index_count(e->ix) >= e->opt.index.auto_threshold)
        rc = index_rebuild(e->ix, err);
    return rc;
}

/* From index_load's identity message ("...built with model 'FILE', not
 * 'OURS'"): 1 when the file's identity carries another center tag, -1 when
 * it carries none (written before centering), 0 when it is something else. */
static int center_mismatch(const char *msg)
{
    const char *not_ours = strstr(msg, "', not '");
    const char *tag = strstr(msg, "|center=");
    if (!not_ours || !tag)
        return 0;
    return tag < not_ours ? 1 : -1;
}

/* Loads the persisted index if it is current, else rebuilds. */
static int index_open(engine *e, store *s, engine_open_report *rep, ms_err *err)
{
    uint64_t gen = 0;
    size_t count = 0;
    int rc = store_generation(s, &gen, err);
    if (!rc)
        rc = store_count(s, &count, err);
    if (rc)
        return rc;
    e->known_gen = gen;
    rep->index_loaded = 0;
    if (e->pending_reembed || e->dim == 0) {
        snprintf(rep->index_note, sizeof rep->index_note, "%s",
                 e->dim == 0 ? "empty collection without a model: no index"
                             : "a re-embed with the new model is pending: the index starts empty");
        return e->dim == 0 ? 0 : index_create(e->dim, &e->opt.index, &e->ix, err);
    }
    if (e->index_path) {
        ms_err lerr = {0};
        uint64_t saved_gen = 0;
        vindex *ix = NULL;
        char identity[512];
        engine_index_identity(e, identity, sizeof identity);
        int lrc = index_load(e->index_path, e->dim, identity, &e->opt.index, &ix, &saved_gen, &lerr);
        if (lrc == 0 && saved_gen == gen && index_count(ix) == count) {
            e->ix = ix;
            e->loaded_gen = gen;
            rep->index_loaded = 1;
            return 0;
        }
        if (lrc == 0)
            snprintf(rep->index_note, sizeof rep->index_note,
                     "index file is stale (generation %llu and %zu vectors; the store is at %llu with %zu images): "
                     "rebuilt from the store",
                     (unsigned long long)saved_gen, index_count(ix), (unsigned long long)gen, count);
        else if (lrc == MS_ENOTFOUND)
            snprintf(rep->index_note, sizeof rep->index_note, "%s",
                     count ? "no index file: rebuilt from the store" : "new collection: empty index");
        else if (lrc == MS_ECONFLICT && center_mismatch(lerr.msg) > 0)
            snprintf(rep->index_note, sizeof rep->index_note,
                     "index file was built with another center (this one: %s): rebuilt from the store",
                     engine_centering(e) ? e->center_tag : "off");
        else if (lrc == MS_ECONFLICT && center_mismatch(lerr.msg) < 0)
            snprintf(rep->index_note, sizeof rep->index_note, "%s",
                     "index file predates centering: rebuilt from the store");
        else
            snprintf(rep->index_note, sizeof rep->index_note, "index file unusable (%.180s): rebuilt from the store",
                     lerr.msg);
        index_free(ix);
    } else {
        snprintf(rep->index_note, sizeof rep->index_note, "%s",
                 e->opt.center == ENGINE_CENTER_OFF  ? "centering off: index built in memory from the store"
                 : e->opt.center == ENGINE_CENTER_ON ? "centering on for this open: index built in memory from "
                                                       "the store"
                                                     : "no index file for this backend: built from the store");
    }
    rc = engine_index_rebuild(e, s, err);
    if (rc)
        return rc;
    e->missing_vectors = count - index_count(e->ix);
    if (e->missing_vectors) {
        size_t len = strlen(rep->index_note);
        snprintf(rep->index_note + len, sizeof rep->index_note - len,
                 "; %zu of %zu images have no vector of this model (an interrupted re-embed?): "
                 "run `medsearch reembed`", e->missing_vectors, count);
    }
    /* Save what was rebuilt, unless there is nothing worth saving yet. */
    e->index_dirty = e->index_path && count > 0;
    return 0;
}

int engine_flush(engine *e, ms_err *err)
{
    pthread_mutex_lock(&e->write_mu);
    int rc = 0;
    if (e->ix && e->index_path && e->index_dirty && !e->index_foreign && !e->pending_reembed) {
        char identity[512];
        engine_index_identity(e, identity, sizeof identity);
        rc = index_save(e->ix, e->index_path, identity, e->known_gen, err);
        if (rc == 0)
            e->index_dirty = 0;
        else
            ms_err_prefix(err, "saving the index (it will be rebuilt on the next open): ");
    }
    pthread_mutex_unlock(&e->write_mu);
    return rc;
}

/* ---- open and close ---- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static int check_options(const engine_options *o, ms_err *err)
{
    if (o->center != ENGINE_CENTER_AUTO && o->center != ENGINE_CENTER_OFF && o->center != ENGINE_CENTER_ON)
        return ms_err_set(err, MS_EINVAL, "unknown centering override %d", (int)o->center);
    if (o->max_batch < 1 || o->max_batch > 1024)
        return ms_err_set(err, MS_EINVAL, "max_batch must be 1..1024, got %d", o->max_batch);
    if (o->queue_depth < 1)
        return ms_err_set(err, MS_EINVAL, "queue_depth must be positive, got %d", o->queue_depth);
    if (o->thumb_size < 16 || o->thumb_size > 4096)
        return ms_err_set(err, MS_EINVAL, "thumbnail size must be 16..4096, got %d", o->thumb_size);
    if (o->threads < 0 || o->threads > 256)
        return ms_err_set(err, MS_EINVAL, "threads must be 0..256, got %d", o->threads);
    return 0;
}

static void set_identity(engine *e, const char *id)
{
    snprintf(e->identity, sizeof e->identity, "%s", id);
}

/* Compares the collection's model (have: its recorded identity, NULL for a
 * new collection) with ours; registers ours on a new one. */
static int use_model(engine *e, store *s, const char *have, ms_err *err)
{
    const char *mine = model_identity(e->m);
    set_identity(e, mine);
    if (!have)
        return store_use_model(s, mine, e->dim, 0, err);
    if (strcmp(have, mine) == 0)
        return 0;
    if (e->opt.reembed) {
        e->pending_reembed = 1; /* engine_reembed switches the collection */
        return 0;
    }
    return ms_err_set(err, MS_ECONFLICT,
                      "%s holds vectors of model %s, not of %s: open it with its own model, or re-embed "
                      "every image with this one: `medsearch reembed --db %s --model %s`",
                      e->db, have, mine, e->db, e->model_path);
}

static int engine_alloc(const engine_options *o, engine **out, ms_err *err)
{
    engine *e = calloc(1, sizeof *e);
    if (!e)
        return ms_err_set(err, MS_ENOMEM, "no memory for the engine");
    e->opt = *o;
    e->db = strdup(o->db && *o->db ? o->db : "medsearch.db");
    e->model_path = dup_or_null(o->model_path);
    if (!e->db || (o->model_path && !e->model_path)) {
        free(e->db);
        free(e->model_path);
        free(e);
        return ms_err_set(err, MS_ENOMEM, "no memory for the engine");
    }
    e->opt.db = e->db;
    e->opt.model_path = e->model_path;
    e->opt.index_path = NULL;
    pthread_mutex_init(&e->pool_mu, NULL);
    pthread_cond_init(&e->pool_cv, NULL);
    pthread_mutex_init(&e->write_mu, NULL);
    pthread_mutex_init(&e->workers_mu, NULL);
    pthread_mutex_init(&e->stats_mu, NULL);
    *out = e;
    return 0;
}

static int choose_index_path(engine *e, const engine_options *o, ms_err *err)
{
    const char *p = o->index_path;
    char buf[4096];
    /* With an override the index differs from the collection's own: it
     * lives in memory only, so that it never replaces the persisted one. */
    if (o->center != ENGINE_CENTER_AUTO)
        return 0;
    if (!p && strcmp(e->backend, "sqlite") == 0) {
        if (snprintf(buf, sizeof buf, "%s.index", e->db) >= (int)sizeof buf)
            return ms_err_set(err, MS_EINVAL, "database path too long");
        p = buf;
    }
    if (p && !(e->index_path = strdup(p)))
        return ms_err_set(err, MS_ENOMEM, "no memory");
    e->opt.index_path = e->index_path;
    return 0;
}

static int load_model(engine *e, engine_open_report *rep, ms_err *err)
{
    char path[4096];
    int rc = engine_find_model(e->opt.model_path, path, sizeof path, err);
    if (rc)
        return rc;
    free(e->model_path);
    if (!(e->model_path = strdup(path)))
        return ms_err_set(err, MS_ENOMEM, "no memory");
    e->opt.model_path = e->model_path;
    uint64_t t0 = ms_now_ns();
    rc = model_load(path, &e->opt.model, &e->m, err);
    rep->model_ms = ms_elapsed_ms(t0);
    if (rc)
        return ms_err_prefix(err, "%s: ", path);
    e->dim = model_dim(e->m);
    return 0;
}

/* What the faces did not ask for is taken from the collection's identity
 * (have), each group on its own: --pool gem on a collection ingested at
 * --input-size 288 still searches at 288, and --input-size on a GeM
 * collection still pools with GeM. An identity that is not one
 * model_identity writes changes nothing: use_model then refuses it. */
static void adopt_collection_options(engine *e, const engine_options *o, const char *have)
{
    model_options rec = e->opt.model;
    if (!have || model_options_from_identity(have, &rec))
        return;
    model_options *mo = &e->opt.model;
    if (o->pooling_from_collection) {
        mo->pool = rec.pool;
        mo->gem_p = rec.gem_p;
        mo->bf16 = rec.bf16;
        mo->flip = rec.flip;
    }
    if (o->prep_from_collection)
        mo->input_size = rec.input_size;
}

/* Sets up the engine's model against the collection's record (its identity
 * and dimension, read once). Without a model the collection's own identity
 * and dimension are used. With pooling_from_collection / prep_from_collection
 * the recorded pooling (pooling, GeM p, bf16, flip) / input size replace the
 * options', so that a collection ingested with --pool gem --flip
 * --input-size 288 is searched the same way without the flags being
 * repeated; a new collection keeps the options. */
static int open_model(engine *e, const engine_options *o, engine_open_report *rep, ms_err *err)
{
    char *have = NULL;
    int have_dim = 0;
    int rc = store_get_model(e->main_store, &have, &have_dim, err);
    if (!rc && o->no_model) {
        if (have) {
            set_identity(e, have);
            e->dim = have_dim;
        }
    } else if (!rc) {
        adopt_collection_options(e, o, have);
        rc = load_model(e, rep, err);
        if (!rc)
            rc = use_model(e, e->main_store, have, err);
    }
    free(have);
    return rc;
}

/* A collection setting damaged by hand (MS_EFORMAT) is repaired by setting
 * it again: the message says with which command. Returns rc. */
static int with_repair_hint(int rc, ms_err *err, const char *db, const char *command)
{
    if (rc == MS_EFORMAT && err) {
        size_t n = strlen(err->msg);
        snprintf(err->msg + n, sizeof err->msg - n, "; set it again with `medsearch %s --db %s`", command, db);
    }
    return rc;
}

int engine_open(const engine_options *o, engine **out, engine_open_report *rep, ms_err *err)
{
    engine_open_report local;
    if (!rep)
        rep = &local;
    memset(rep, 0, sizeof *rep);
    *out = NULL;
    int rc = check_options(o, err);
    if (rc)
        return rc;
    if ((rc = image_init(1, err)) != 0)
        return rc;
    /* Images are decoded in parallel by the engine's workers (ingest) or
     * the faces' threads (search): one libvips thread per image. */
    image_set_threads(1);
    engine *e = NULL;
    if ((rc = engine_alloc(o, &e, err)) != 0)
        return rc;
    uint64_t t0 = ms_now_ns();
    rc = store_open(e->db, &e->main_store, err);
    if (!rc) {
        e->backend = store_backend(e->main_store);
        rc = choose_index_path(e, o, err);
    }
    if (!rc)
        rc = open_model(e, o, rep, err);
    if (!rc)
        rc = with_repair_hint(store_get_center_policy(e->main_store, &e->center_policy_off, err), err, e->db,
                              "center auto|off");
    if (!rc)
        rc = with_repair_hint(store_get_search_qe(e->main_store, &e->search_qe, err), err, e->db, "qe N");
    uint64_t t1 = ms_now_ns();
    if (!rc)
        rc = engine_center_open(e, e->main_store, rep, err);
    if (!rc)
        rc = index_open(e, e->main_store, rep, err);
    rep->index_ms = ms_elapsed_ms(t1);
    if (!rc && e->m)
        rc = infer_start(&e->infer, e->m, o->max_batch, (size_t)o->queue_depth, err);
    rep->open_ms = ms_elapsed_ms(t0);
    if (rc) {
        e->index_dirty = 0; /* never persist a half-opened index */
        engine_close(e);
        return rc;
    }
    *out = e;
    return 0;
}

void engine_close(engine *e)
{
    if (!e)
        return;
    infer_stop(&e->infer);
    engine_workers_stop(e);
    engine_flush(e, NULL);
    index_free(e->ix);
    free(e->center);
    model_free(e->m);
    for (int i = 0; i < e->pool_nfree; i++)
        store_close(e->pool_free[i]);
    store_close(e->main_store);
    pthread_mutex_destroy(&e->pool_mu);
    pthread_cond_destroy(&e->pool_cv);
    pthread_mutex_destroy(&e->write_mu);
    pthread_mutex_destroy(&e->workers_mu);
    pthread_mutex_destroy(&e->stats_mu);
    free(e->db);
    free(e->model_path);
    free(e->index_path);
    free(e);
}

/* ---- accessors, delete, stats ---- */

store *engine_store(engine *e)
{
    return e->main_store;
}

model *engine_model(engine *e)
{
    return e->m;
}

vindex *engine_index(engine *e)
{
    return e->ix;
}

int engine_preview(engine *e, const uint8_t *bytes, size_t len, int longest_side, uint8_t **png,
                   size_t *png_len, ms_err *err)
{
    *png = NULL;
    *png_len = 0;
    return image_thumbnail(bytes, len, &e->opt.limits, longest_side, THUMB_PNG, png, png_len, err);
}

int engine_read_stored(engine *e, int64_t id, uint8_t **bytes, size_t *len, ms_err *err)
{
    *bytes = NULL;
    *len = 0;
    store *s;
    int rc = engine_store_acquire(e, &s, err);
    if (rc)
        return rc;
    char mime[32];
    rc = store_get_image(s, id, bytes, len, mime, err);
    engine_store_release(e, s);
    return rc;
}

int engine_preview_stored(engine *e, int64_t id, int longest_side, uint8_t **png, size_t *png_len,
                          ms_err *err)
{
    *png = NULL;
    *png_len = 0;
    uint8_t *bytes;
    size_t len;
    int rc = engine_read_stored(e, id, &bytes, &len, err);
    if (!rc)
        rc = engine_preview(e, bytes, len, longest_side, png, png_len, err);
    free(bytes);
    return rc;
}

int engine_delete(engine *e, int64_t id, ms_err *err)
{
    store *s;
    int rc = engine_pool_get(e, &s, err);
    if (rc)
        return rc;
    engine_write_begin(e, s);
    rc = store_delete(s, id, err);
    if (rc == 0 && e->ix)
        index_remove(e->ix, id); /* absent from the index already is fine */
    engine_write_end(e, s, rc == 0);
    engine_pool_put(e, s);
    return rc;
}

int engine_edit_meta(engine *e, int64_t id, store_meta_edit_fn edit, void *ctx, ms_err *err)
{
    store *s;
    int rc = engine_pool_get(e, &s, err);
    if (rc)
        return rc;
    engine_write_begin(e, s);
    rc = store_edit_meta(s, id, edit, ctx, err);
    engine_write_end(e, s, 0);
    engine_pool_put(e, s);
    return rc;
}

int engine_get_stats(engine *e, engine_stats *st)
{
    memset(st, 0, sizeof *st);
    st->images = e->ix ? index_count(e->ix) : 0;
    st->dim = e->dim;
    snprintf(st->model_identity, sizeof st->model_identity, "%s", e->identity);
    snprintf(st->index_kind, sizeof st->index_kind, "%s",
             e->ix ? index_kind_name(index_current_kind(e->ix)) : "none");
    st->index_bytes = e->ix ? index_memory_bytes(e->ix) : 0;
    snprintf(st->backend, sizeof st->backend, "%s", e->backend);
    st->queue_depth = e->m ? infer_waiting(&e->infer) : 0;
    pthread_mutex_lock(&e->stats_mu);
    st->searches = e->searches;
    st->ingests = e->ingests;
    st->embed_ms_total = e->embed_ms_total;
    st->search_ms_total = e->search_ms_total;
    pthread_mutex_unlock(&e->stats_mu);
    st->center_off = !engine_centering(e);
    st->center_mode = e->opt.center;
    st->center_policy_off = e->center_policy_off;
    st->search_qe = e->search_qe;
    st->center_from = e->center ? e->center_n : 0;
    snprintf(st->center_tag, sizeof st->center_tag, "%s", e->center_tag[0] ? e->center_tag : "none");
    return 0;
}

static long long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

int engine_describe(engine *e, engine_info *info, ms_err *err)
{
    memset(info, 0, sizeof *info);
    snprintf(info->db, sizeof info->db, "%s", e->db);
    snprintf(info->backend, sizeof info->backend, "%s", e->backend);
    snprintf(info->index_path, sizeof info->index_path, "%s", e->index_path ? e->index_path : "");
    snprintf(info->model_path, sizeof info->model_path, "%s", e->m ? e->model_path : "");
    info->pending_reembed = e->pending_reembed;
    info->center_policy_off = e->center_policy_off;
    info->db_bytes = -1;
    if (strcmp(e->backend, "sqlite") == 0) {
        info->db_bytes = file_size(e->db);
        char wal[4200];
        snprintf(wal, sizeof wal, "%s-wal", e->db);
        long long w = file_size(wal);
        if (info->db_bytes >= 0 && w > 0)
            info->db_bytes += w;
    }
    info->index_file_bytes = e->index_path ? file_size(e->index_path) : -1;
    store *s;
    int rc = engine_pool_get(e, &s, err);
    if (rc)
        return rc;
    rc = store_generation(s, &info->generation, err);
    engine_pool_put(e, s);
    return rc;
}

/* ---- integrity ---- */

typedef struct check_ctx {
    engine *e;
    float *buf, *want;
    size_t seen;
    int rc;
    ms_err err;
} check_ctx;

static int check_vector(void *ctx, int64_t id, const float *vec, int dim)
{
    check_ctx *c = ctx;
    c->seen++;
    if (dim != c->e->dim) {
        c->rc = ms_err_set(&c->err, MS_EFORMAT, "image %lld has a %d-d vector; the collection's model gives %d",
                           (long long)id, dim, c->e->dim);
        return 1;
    }
    double norm = 0;
    for (int i = 0; i < dim; i++)
        norm += (double)vec[i] * vec[i];
    if (norm > 0 && (norm < 0.998 || norm > 1.002)) {
        c->rc = ms_err_set(&c->err, MS_EFORMAT, "image %lld: stored vector is not unit length (|v|^2 = %.4f)",
                           (long long)id, norm);
        return 1;
    }
    /* The index holds the vector as the engine centres it. */
    memcpy(c->want, vec, (size_t)dim * sizeof *c->want);
    engine_center_apply(c->e, c->want, 1);
    if (index_get(c->e->ix, id, c->buf) != 0) {
        c->rc = ms_err_set(&c->err, MS_EFORMAT, "image %lld is in the store but not in the index",
                           (long long)id);
        return 1;
    }
    float worst = 0;
    for (int i = 0; i < dim; i++) {
        float d = c->want[i] - c->buf[i];
        if (d < 0)
            d = -d;
        if (d > worst)
            worst = d;
    }
    if (worst > 1e-5f) {
        c->rc = ms_err_set(&c->err, MS_EFORMAT,
                           "image %lld: the index holds a different vector than the store (max difference %g)",
                           (long long)id, (double)worst);
        return 1;
    }
    return 0;
}

static int check_index(engine *e, store *s, ms_err *err)
{
    size_t count = 0;
    int rc = store_count(s, &count, err);
    if (rc)
        return rc;
    if (e->pending_reembed)
        return ms_err_set(err, MS_EFORMAT, "the collection's vectors come from another model: run `medsearch reembed`");
    if (!e->ix)
        return count ? ms_err_set(err, MS_EFORMAT, "%zu images but no model recorded", count) : 0;
    if (index_count(e->ix) != count)
        return ms_err_set(err, MS_EFORMAT, "the index holds %zu vectors, the store %zu images",
                          index_count(e->ix), count);
    check_ctx c = {.e = e};
    c.buf = malloc((size_t)e->dim * sizeof(float));
    c.want = malloc((size_t)e->dim * sizeof(float));
    if (!c.buf || !c.want) {
        free(c.buf);
        free(c.want);
        return ms_err_set(err, MS_ENOMEM, "no memory");
    }
    rc = store_each_vector(s, check_vector, &c, err);
    free(c.buf);
    free(c.want);
    if (!rc && c.rc) {
        rc = c.rc;
        if (err)
            *err = c.err;
    }
    if (!rc && c.seen != count)
        rc = ms_err_set(err, MS_EFORMAT, "%zu images but %zu vectors", count, c.seen);
    return rc;
}

int engine_check(engine *e, ms_err *err)
{
    store *s;
    int rc = engine_pool_get(e, &s, err);
    if (rc)
        return rc;
    pthread_mutex_lock(&e->write_mu); /* no writer while comparing */
    rc = store_check(s, err);
    if (!rc)
        rc = check_index(e, s, err);
    pthread_mutex_unlock(&e->write_mu);
    engine_pool_put(e, s);
    return rc;
}
