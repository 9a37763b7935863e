/*
 * ingest.c - the ingest pipeline and re-embedding.
 *
 * Items flow through ENGINE_SLOTS batches ("slots") of up to max_batch:
 *
 *   fill     caller thread: take items from the source, SHA-256 the bytes,
 *            skip those the store has already (no decoding), queue the rest
 *            to the decode workers (decode, prepare, thumbnail);
 *   infer    the inference thread runs the slot's prepared images as one batch;
 *   finish   caller thread: L2-normalise, store the batch (each image one
 *            transaction), add the new vectors to the index, report results.
 *
 * While slot i is finished, slot i+1 is in the model and slot i+2 is being
 * decoded, so decoding overlaps inference and memory is bounded by the
 * slots whatever the number of items. Results are reported in input order.
 *
 * Re-embedding runs the same pipeline over the stored images, writing
 * vectors instead of new images.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/internal.h"
#include "util/sha256.h"
#include "util/timing.h"

/* ---- decode workers ---- */

static void *worker_main(void *arg)
{
    work_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && !p->head)
            pthread_cond_wait(&p->cv, &p->mu);
        if (!p->head)
            break;
        work_task *t = p->head;
        p->head = t->next;
        if (!p->head)
            p->tail = NULL;
        pthread_mutex_unlock(&p->mu);
        t->fn(t->arg);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static int default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

int engine_workers_ensure(engine *e, ms_err *err)
{
    int rc = 0;
    pthread_mutex_lock(&e->workers_mu);
    if (!e->workers_started) {
        work_pool *p = &e->workers;
        memset(p, 0, sizeof *p);
        int n = e->opt.threads > 0 ? e->opt.threads : default_threads();
        p->threads = calloc((size_t)n, sizeof(pthread_t));
        if (!p->threads) {
            rc = ms_err_set(err, MS_ENOMEM, "no memory for decode workers");
        } else {
            pthread_mutex_init(&p->mu, NULL);
            pthread_cond_init(&p->cv, NULL);
            for (; p->n < n; p->n++)
                if (pthread_create(&p->threads[p->n], NULL, worker_main, p) != 0)
                    break;
            if (p->n == 0) {
                pthread_mutex_destroy(&p->mu);
                pthread_cond_destroy(&p->cv);
                free(p->threads);
                rc = ms_err_set(err, MS_EINTERNAL, "cannot start decode workers");
            } else {
                e->workers_started = 1;
            }
        }
    }
    pthread_mutex_unlock(&e->workers_mu);
    return rc;
}

void engine_workers_stop(engine *e)
{
    if (!e->workers_started)
        return;
    work_pool *p = &e->workers;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    e->workers_started = 0;
}

static void workers_submit(work_pool *p, work_task *t)
{
    t->next = NULL;
    pthread_mutex_lock(&p->mu);
    if (p->tail)
        p->tail->next = t;
    else
        p->head = t;
    p->tail = t;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* ---- slots ---- */

enum item_state { ITEM_DECODE, ITEM_EXISTS, ITEM_DUP, ITEM_FAILED };
enum pipe_mode { PIPE_INGEST, PIPE_REEMBED };

typedef struct slot slot;

typedef struct slot_item {
    engine_item item;
    void *token;
    char sha[65];
    int state, dup_of, row;
    image_info info;
    uint8_t *thumb;
    size_t thumb_len;
    int has_dicom_meta;    /* dicom_meta is what gets stored */
    store_meta dicom_meta; /* the caller's metadata completed from a DICOM header */
    image_dicom_meta dicom;
    store_kv *dicom_kv;    /* dicom_meta.kv when extended (malloc'd) */
    engine_item_result res;
    work_task task;
    slot *owner;
} slot_item;

struct slot {
    struct pipe *pipe;
    slot_item *it;
    size_t n;
    float *input;          /* capacity x per_image */
    float *feat;           /* capacity x dim */
    int rows;              /* items sent to the model */
    infer_job job;
    int in_model;          /* job submitted, not yet waited for */
    int model_ran;         /* job finished: feat holds the features */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;           /* decode tasks outstanding */
};

typedef struct pipe {
    engine *e;
    int mode;
    const engine_ingest_source *src;
    store *s;
    size_t cap;            /* items per slot */
    int nslots;
    slot slots[ENGINE_SLOTS];
    size_t per_image;
    int eof, failed;       /* failed: the stream stops, err says why */
    ms_err err;
} pipe_t;

static bool text_given(const char *s)
{
    return s && *s;
}

/* A DICOM file's own attributes fill in what the caller's metadata leaves
 * unknown (patient, study date, age, sex, view), and its modality and body
 * part become the key/values "modality" and "body_part" unless the caller
 * gave those keys. The caller's values always win. */
static void complete_from_dicom(slot_item *si)
{
    ms_err ignored = {0};
    if (si->info.format != IMAGE_DICOM ||
        image_dicom_metadata(si->item.bytes, si->item.len, &si->dicom, &ignored) != 0)
        return;
    store_meta *m = &si->dicom_meta;
    if (si->item.meta)
        *m = *si->item.meta;
    else
        store_meta_init(m);
    image_dicom_meta *d = &si->dicom;
    if (!text_given(m->patient_id) && d->patient_id[0])
        m->patient_id = d->patient_id;
    if (!text_given(m->study_date) && d->study_date[0])
        m->study_date = d->study_date;
    if (!text_given(m->view) && d->view[0])
        m->view = d->view;
    if (m->age < 0)
        m->age = d->age;
    if (!m->sex)
        m->sex = d->sex;
    si->has_dicom_meta = 1;

    char *keys[2] = {"modality", "body_part"}, *values[2] = {d->modality, d->body_part};
    int add = 0;
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < m->n_kv && values[k]; i++)
            if (!strcmp(m->kv[i].key, keys[k]))
                values[k] = NULL;
        add += values[k] && values[k][0];
    }
    store_kv *kv = add ? malloc(((size_t)m->n_kv + (size_t)add) * sizeof *kv) : NULL;
    if (!kv)
        return; /* without memory the file's key/values are left out, not the image */
    if (m->n_kv)
        memcpy(kv, m->kv, (size_t)m->n_kv * sizeof *kv);
    for (int k = 0; k < 2; k++)
        if (values[k] && values[k][0])
            kv[m->n_kv++] = (store_kv){.key = keys[k], .value = values[k]};
    m->kv = kv;
    si->dicom_kv = kv;
}

static void decode_task(void *arg)
{
    slot_item *si = arg;
    slot *sl = si->owner;
    engine *e = sl->pipe->e;
    const image_prep *prep = model_prep(e->m);
    float *out = sl->input + (size_t)si->row * sl->pipe->per_image;
    int rc;
    if (sl->pipe->mode == PIPE_INGEST)
        rc = image_prepare_with_thumbnail(si->item.bytes, si->item.len, &e->opt.limits, prep, out, &si->info,
                                          e->opt.thumb_size, THUMB_JPEG, &si->thumb, &si->thumb_len,
                                          &si->res.err);
    else
        rc = image_prepare(si->item.bytes, si->item.len, &e->opt.limits, prep, out, &si->info, &si->res.err);
    if (rc) {
        si->state = ITEM_FAILED;
        si->res.err.code = rc;
    } else if (sl->pipe->mode == PIPE_INGEST) {
        complete_from_dicom(si);
    }
    pthread_mutex_lock(&sl->mu);
    if (--sl->pending == 0)
        pthread_cond_signal(&sl->cv);
    pthread_mutex_unlock(&sl->mu);
}

static void slot_wait_decoded(slot *sl)
{
    pthread_mutex_lock(&sl->mu);
    while (sl->pending > 0)
        pthread_cond_wait(&sl->cv, &sl->mu);
    pthread_mutex_unlock(&sl->mu);
}

static int pipe_init(pipe_t *p, engine *e, int mode, const engine_ingest_source *src, store *s, ms_err *err)
{
    memset(p, 0, sizeof *p);
    p->e = e;
    p->mode = mode;
    p->src = src;
    p->s = s;
    p->cap = (size_t)e->opt.max_batch;
    if (src->size_hint > 0 && src->size_hint < p->cap)
        p->cap = src->size_hint;
    size_t slots_needed = src->size_hint ? (src->size_hint + p->cap - 1) / p->cap : ENGINE_SLOTS;
    p->nslots = slots_needed < ENGINE_SLOTS ? (int)slots_needed : ENGINE_SLOTS;
    int size = model_prep(e->m)->size;
    p->per_image = (size_t)3 * (size_t)size * (size_t)size;
    for (int i = 0; i < p->nslots; i++) {
        slot *sl = &p->slots[i];
        sl->pipe = p;
        sl->it = calloc(p->cap, sizeof *sl->it);
        sl->input = malloc(p->cap * p->per_image * sizeof(float));
        sl->feat = malloc(p->cap * (size_t)e->dim * sizeof(float));
        pthread_mutex_init(&sl->mu, NULL);
        pthread_cond_init(&sl->cv, NULL);
        if (!sl->it || !sl->input || !sl->feat) {
            p->nslots = i + 1;
            return ms_err_set(err, MS_ENOMEM, "no memory for %zu ingest buffers of %zu images", (size_t)ENGINE_SLOTS,
                              p->cap);
        }
    }
    return 0;
}

static void pipe_free(pipe_t *p)
{
    for (int i = 0; i < p->nslots; i++) {
        slot *sl = &p->slots[i];
        free(sl->it);
        free(sl->input);
        free(sl->feat);
        pthread_mutex_destroy(&sl->mu);
        pthread_cond_destroy(&sl->cv);
    }
}

static void pipe_fail(pipe_t *p, const ms_err *err)
{
    if (!p->failed) {
        p->failed = 1;
        p->err = *err;
    }
}

/* Whether image id has what patch would write, read outside any write
 * transaction: most rows of a corrected labels file are unchanged, and a
 * read is a third of an edit's round trips to a PostgreSQL server. 0 when
 * it cannot tell (the edit then decides). */
static int already_has(store *s, int64_t id, const store_meta_patch *patch)
{
    store_meta now, want;
    if (store_get_meta(s, id, &now, NULL) != 0)
        return 0;
    int same = store_meta_copy(&want, &now, NULL) == 0 && store_meta_patch_apply(patch, &want, NULL) == 0 &&
               store_meta_same(&now, &want);
    store_meta_free(&want);
    store_meta_free(&now);
    return same;
}

/* An item stored already, with the source asking for its metadata to be
 * brought up to date: it gets what a first ingest of it would store now
 * (the caller's metadata, completed from a DICOM header), in place of what
 * it has; its bytes and vector stay. A refused metadata fails the item
 * alone; a store that fails stops the stream. */
static void update_existing_meta(pipe_t *p, slot_item *si)
{
    if (image_sniff(si->item.bytes, si->item.len) == IMAGE_DICOM) {
        si->info.format = IMAGE_DICOM;
        complete_from_dicom(si);
    }
    store_meta_patch patch;
    store_meta_patch_init(&patch);
    patch.replace = STORE_PATCH_ALL;
    patch.to = si->has_dicom_meta ? si->dicom_meta : *si->item.meta;
    ms_err err = {0};
    if (already_has(p->s, si->res.id, &patch))
        return;
    engine_write_begin(p->e, p->s);
    int rc = store_patch_meta(p->s, si->res.id, &patch, &err);
    engine_write_end(p->e, p->s, 0);
    if (rc >= 0) {
        si->res.meta_updated = rc == 0;
        return;
    }
    si->state = ITEM_FAILED;
    si->res.err = err;
    if (rc != MS_EINVAL)
        pipe_fail(p, &err);
}

/* Decides what to do with a fresh item: skip, deduplicate or decode. */
static void classify(pipe_t *p, slot *sl, size_t i)
{
    slot_item *si = &sl->it[i];
    if (p->mode == PIPE_REEMBED) {
        si->state = ITEM_DECODE;
        return;
    }
    ms_sha256_hex(si->item.bytes, si->item.len, si->sha);
    for (size_t j = 0; j < i; j++)
        if (sl->it[j].state != ITEM_FAILED && strcmp(sl->it[j].sha, si->sha) == 0) {
            si->state = ITEM_DUP;
            si->dup_of = (int)j;
            return;
        }
    int64_t id = 0;
    ms_err err = {0};
    int rc = store_find_sha256(p->s, si->sha, &id, &err);
    if (rc == 0) {
        si->state = ITEM_EXISTS;
        si->res.id = id;
        si->res.was_new = 0;
        if (si->item.update_meta && si->item.meta)
            update_existing_meta(p, si);
    } else if (rc == MS_ENOTFOUND) {
        si->state = ITEM_DECODE;
    } else {
        si->state = ITEM_FAILED;
        si->res.err = err;
        pipe_fail(p, &err);
    }
}

/* Takes up to cap items from the source and queues their decoding. */
static void slot_fill(pipe_t *p, slot *sl)
{
    sl->n = 0;
    sl->rows = 0;
    sl->in_model = 0;
    sl->model_ran = 0;
    while (sl->n < p->cap && !p->eof && !p->failed) {
        slot_item *si = &sl->it[sl->n];
        memset(si, 0, sizeof *si);
        si->owner = sl;
        ms_err err = {0};
        int rc = p->src->next(p->src->ctx, &si->item, &si->token, &err);
        if (rc == 0) {
            p->eof = 1;
            break;
        }
        if (rc < 0) {
            if (!err.code)
                ms_err_set(&err, rc, "the ingest source failed");
            pipe_fail(p, &err);
            break;
        }
        sl->n++;
        classify(p, sl, sl->n - 1);
    }
    /* Rows are given in order so that a batch's inputs are contiguous. */
    int to_decode = 0;
    for (size_t i = 0; i < sl->n; i++)
        if (sl->it[i].state == ITEM_DECODE)
            sl->it[i].row = to_decode++;
    if (to_decode == 0)
        return;
    if (engine_workers_ensure(p->e, &p->err) != 0) {
        p->failed = 1;
        for (size_t i = 0; i < sl->n; i++)
            if (sl->it[i].state == ITEM_DECODE) {
                sl->it[i].state = ITEM_FAILED;
                sl->it[i].res.err = p->err;
            }
        return;
    }
    sl->pending = to_decode;
    for (size_t i = 0; i < sl->n; i++)
        if (sl->it[i].state == ITEM_DECODE) {
            sl->it[i].task.fn = decode_task;
            sl->it[i].task.arg = &sl->it[i];
            workers_submit(&p->e->workers, &sl->it[i].task);
        }
}

/* Waits for decoding, closes the gaps left by failed images, starts the model. */
static void slot_start_model(pipe_t *p, slot *sl)
{
    slot_wait_decoded(sl);
    int rows = 0;
    for (size_t i = 0; i < sl->n; i++) {
        slot_item *si = &sl->it[i];
        if (si->state != ITEM_DECODE)
            continue;
        if (si->row != rows)
            memmove(sl->input + (size_t)rows * p->per_image, sl->input + (size_t)si->row * p->per_image,
                    p->per_image * sizeof(float));
        si->row = rows++;
    }
    sl->rows = rows;
    if (rows == 0 || p->failed)
        return;
    sl->job = (infer_job){.input = sl->input, .n = rows, .out = sl->feat, .bulk = 1};
    ms_err err = {0};
    if (infer_submit(&p->e->infer, &sl->job, &err) == 0)
        sl->in_model = 1;
    else
        pipe_fail(p, &err);
}

static void mark_failed(slot *sl, int state_from, const ms_err *err)
{
    for (size_t i = 0; i < sl->n; i++)
        if (sl->it[i].state == state_from) {
            sl->it[i].state = ITEM_FAILED;
            sl->it[i].res.err = *err;
            sl->it[i].res.id = 0;
        }
}

static int store_new_images(pipe_t *p, slot *sl, ms_err *err)
{
    engine *e = p->e;
    size_t rows = (size_t)sl->rows, dim = (size_t)e->dim;
    store_item *items = calloc(rows, sizeof *items);
    int64_t *ids = calloc(rows, sizeof *ids), *add_ids = calloc(rows, sizeof *add_ids);
    int *was_new = calloc(rows, sizeof *was_new);
    ms_err *item_err = NULL;
    int rc = 0;
    if (!items || !ids || !add_ids || !was_new) {
        rc = ms_err_set(err, MS_ENOMEM, "no memory to store a batch");
        goto out;
    }
    for (size_t i = 0; i < sl->n; i++) {
        slot_item *it = &sl->it[i];
        if (it->state != ITEM_DECODE)
            continue;
        int w, h; /* as shown: what the thumbnail, the preview and a browser show */
        image_info_shown_size(&it->info, &w, &h);
        items[it->row] = (store_item){
            .bytes = it->item.bytes, .len = it->item.len, .sha256 = it->sha,
            .mime = image_format_mime(it->info.format), .width = w, .height = h,
            .thumb = it->thumb, .thumb_len = it->thumb_len, .thumb_mime = "image/jpeg",
            .meta = it->has_dicom_meta ? &it->dicom_meta : it->item.meta,
            .vec = sl->feat + (size_t)it->row * dim,
        };
    }
    engine_write_begin(e, p->s);
    rc = store_ingest(p->s, items, rows, ids, was_new, err);
    if (rc == MS_EINVAL && rows > 1 && (item_err = calloc(rows, sizeof *item_err)) != NULL) {
        /* The store refuses a whole batch for one item's bad metadata:
         * store them one by one so that only that item fails. */
        rc = 0;
        for (size_t r = 0; r < rows && rc == 0; r++)
            if (store_ingest(p->s, &items[r], 1, &ids[r], &was_new[r], &item_err[r]) != 0) {
                ids[r] = 0;
                was_new[r] = 0;
                if (item_err[r].code != MS_EINVAL && (rc = item_err[r].code) != 0 && err)
                    *err = item_err[r];
            }
        if (rc)
            e->index_foreign = 1; /* some were stored, the index has none of them */
    }
    size_t n_add = 0;
    if (rc == 0) {
        for (size_t i = 0; i < sl->n; i++) {
            slot_item *it = &sl->it[i];
            if (it->state != ITEM_DECODE)
                continue;
            if (item_err && item_err[it->row].code) {
                it->state = ITEM_FAILED;
                it->res.err = item_err[it->row];
                continue;
            }
            it->res.id = ids[it->row];
            it->res.was_new = was_new[it->row];
        }
        /* Only new images enter the index (a stored one is there already):
         * their vectors are packed to the front of feat. */
        for (size_t r = 0; r < rows; r++) {
            if (!was_new[r])
                continue;
            if (r != n_add)
                memcpy(sl->feat + n_add * dim, sl->feat + r * dim, dim * sizeof(float));
            add_ids[n_add++] = ids[r];
        }
        /* Stored as the model made them; indexed centred. */
        engine_center_apply(e, sl->feat, n_add);
        if (n_add > 0 && index_add(e->ix, add_ids, sl->feat, n_add, NULL) != 0)
            e->index_foreign = 1; /* the index misses them: never save it as current */
    }
    engine_write_end(e, p->s, n_add > 0);
out:
    free(items);
    free(ids);
    free(add_ids);
    free(was_new);
    free(item_err);
    return rc;
}

static int reembed_vectors(pipe_t *p, slot *sl, ms_err *err)
{
    engine *e = p->e;
    int rc = 0;
    engine_write_begin(e, p->s);
    for (size_t i = 0; i < sl->n && rc == 0; i++) {
        slot_item *it = &sl->it[i];
        if (it->state != ITEM_DECODE)
            continue;
        int64_t id = (int64_t)(intptr_t)it->token;
        float *v = sl->feat + (size_t)it->row * (size_t)e->dim;
        rc = store_set_vector(p->s, id, v, e->dim, err);
        if (rc == 0)
            engine_center_apply(e, v, 1); /* stored raw, indexed centred */
        if (rc == 0 && index_add(e->ix, &id, v, 1, err) != 0)
            e->index_foreign = 1;
        it->res.id = id;
    }
    engine_write_end(e, p->s, 1);
    return rc;
}

static void slot_wait_model(pipe_t *p, slot *sl)
{
    if (!sl->in_model)
        return;
    ms_err err = {0};
    if (infer_wait(&p->e->infer, &sl->job, &err) != 0) {
        mark_failed(sl, ITEM_DECODE, &err);
        pipe_fail(p, &err);
    }
    sl->in_model = 0;
    sl->model_ran = 1;
}

/* Stores the slot's results and reports every item to the source. */
static void slot_finish(pipe_t *p, slot *sl)
{
    engine *e = p->e;
    if (sl->rows > 0 && !sl->model_ran)
        mark_failed(sl, ITEM_DECODE, &p->err); /* the stream failed before the model ran */
    int to_store = 0;
    for (size_t i = 0; i < sl->n; i++)
        to_store += sl->it[i].state == ITEM_DECODE;
    if (to_store) {
        model_l2_normalise(sl->feat, sl->rows, e->dim);
        ms_err err = {0};
        int rc = p->mode == PIPE_INGEST ? store_new_images(p, sl, &err) : reembed_vectors(p, sl, &err);
        if (rc) {
            mark_failed(sl, ITEM_DECODE, &err);
            pipe_fail(p, &err);
        }
    }
    size_t stored = 0;
    for (size_t i = 0; i < sl->n; i++) {
        slot_item *it = &sl->it[i];
        if (it->state == ITEM_DUP) {
            it->res = sl->it[it->dup_of].res;
            it->res.was_new = 0;
            it->res.meta_updated = 0; /* the first copy's row was the one applied */
        }
        stored += it->state == ITEM_DECODE && it->res.was_new;
        p->src->done(p->src->ctx, it->token, &it->item, &it->res);
        free(it->thumb);
        it->thumb = NULL;
        free(it->dicom_kv);
        it->dicom_kv = NULL;
    }
    pthread_mutex_lock(&e->stats_mu);
    e->ingests += stored;
    pthread_mutex_unlock(&e->stats_mu);
    sl->n = 0;
    sl->rows = 0;
    sl->model_ran = 0;
}

/* Slot i is stored while slot i+1 is in the model and the rest decode. */
static int run_pipe(pipe_t *p, ms_err *err)
{
    for (int i = 0; i < p->nslots; i++)
        slot_fill(p, &p->slots[i]);
    slot_start_model(p, &p->slots[0]);
    for (int i = 0; p->slots[i].n > 0; i = (i + 1) % p->nslots) {
        slot *cur = &p->slots[i];
        slot *next = &p->slots[(i + 1) % p->nslots];
        slot_wait_model(p, cur);
        if (next != cur && next->n > 0)
            slot_start_model(p, next);
        slot_finish(p, cur);
        slot_fill(p, cur);
        if (next == cur && cur->n > 0)
            slot_start_model(p, cur);
    }
    if (p->failed && err)
        *err = p->err;
    return p->failed ? p->err.code : 0;
}

static int stream(engine *e, int mode, const engine_ingest_source *src, ms_err *err)
{
    int rc = engine_need_model(e, err);
    if (rc && !(mode == PIPE_REEMBED && rc == MS_ECONFLICT))
        return rc;
    store *s;
    if ((rc = engine_pool_get(e, &s, err)) != 0)
        return rc;
    pipe_t p;
    rc = pipe_init(&p, e, mode, src, s, err);
    if (!rc)
        rc = run_pipe(&p, err);
    pipe_free(&p);
    engine_pool_put(e, s);
    return rc;
}

int engine_ingest_stream(engine *e, const engine_ingest_source *src, ms_err *err)
{
    return stream(e, PIPE_INGEST, src, err);
}

/* ---- arrays of items ---- */

typedef struct array_src {
    const engine_item *items;
    engine_item_result *res;
    size_t n, next, reported;
} array_src;

static int array_next(void *ctx, engine_item *item, void **token, ms_err *err)
{
    (void)err;
    array_src *a = ctx;
    if (a->next == a->n)
        return 0;
    *item = a->items[a->next];
    *token = (void *)(uintptr_t)a->next;
    a->next++;
    return 1;
}

static void array_done(void *ctx, void *token, const engine_item *item, const engine_item_result *res)
{
    (void)item;
    array_src *a = ctx;
    a->res[(uintptr_t)token] = *res;
    a->reported++;
}

int engine_ingest_batch(engine *e, const engine_item *items, size_t n, engine_item_result *res, ms_err *err)
{
    if (n == 0)
        return 0;
    memset(res, 0, n * sizeof *res);
    array_src a = {.items = items, .res = res, .n = n};
    engine_ingest_source src = {.next = array_next, .done = array_done, .ctx = &a, .size_hint = n};
    int rc = engine_ingest_stream(e, &src, err);
    /* Items never taken (the stream stopped early) fail with its error. */
    for (size_t i = a.next; i < n; i++)
        if (err)
            res[i].err = *err;
        else
            res[i].err.code = rc;
    return rc;
}

int engine_ingest(engine *e, const uint8_t *bytes, size_t len, const store_meta *meta, int64_t *id, int *was_new,
                  ms_err *err)
{
    engine_item item = {.bytes = bytes, .len = len, .meta = meta};
    engine_item_result r;
    int rc = engine_ingest_batch(e, &item, 1, &r, err);
    if (rc)
        return rc;
    if (r.err.code) {
        if (err)
            *err = r.err;
        return r.err.code;
    }
    if (id)
        *id = r.id;
    if (was_new)
        *was_new = r.was_new;
    return 0;
}

/* ---- re-embedding ---- */

typedef struct reembed_src {
    engine *e;
    store *s;               /* reads image bytes */
    int64_t *ids;
    size_t n, next, done, failed;
    void (*progress)(void *ctx, size_t done, size_t total);
    void *pctx;
    ms_err first_err;
} reembed_src;

static int reembed_next(void *ctx, engine_item *item, void **token, ms_err *err)
{
    reembed_src *r = ctx;
    if (r->next == r->n)
        return 0;
    int64_t id = r->ids[r->next++];
    uint8_t *bytes = NULL;
    size_t len = 0;
    char mime[32];
    int rc = store_get_image(r->s, id, &bytes, &len, mime, err);
    if (rc)
        return ms_err_prefix(err, "image %lld: ", (long long)id);
    *item = (engine_item){.bytes = bytes, .len = len};
    *token = (void *)(intptr_t)id;
    return 1;
}

static void reembed_done(void *ctx, void *token, const engine_item *item, const engine_item_result *res)
{
    reembed_src *r = ctx;
    (void)token;
    free((void *)item->bytes);
    if (res->err.code && !r->failed++)
        r->first_err = res->err;
    r->done++;
    if (r->progress)
        r->progress(r->pctx, r->done, r->n);
}

int engine_reembed(engine *e, void (*progress)(void *ctx, size_t done, size_t total), void *ctx, ms_err *err)
{
    if (!e->m)
        return ms_err_set(err, MS_EINVAL, "re-embedding needs a model");
    reembed_src r = {.e = e, .progress = progress, .pctx = ctx};
    int rc = engine_pool_get(e, &r.s, err);
    if (rc)
        return rc;
    rc = store_list_ids(r.s, &r.ids, &r.n, err);
    if (rc)
        goto out;
    /* Switch the collection to this model first. The store records each
     * vector's model, so if this run is interrupted the images still holding
     * an old vector are known (store_check, engine_open report them) and a
     * new run finishes the job. With the same model the index keeps serving,
     * each vector replaced in place; with a new one it started empty. */
    pthread_mutex_lock(&e->write_mu);
    rc = store_use_model(r.s, e->identity, e->dim, 1, err);
    /* That cleared the stored center: the vectors it came from are being
     * replaced. With the same model the index keeps its center meanwhile
     * (its vectors stay comparable) and engine_update_center recomputes it
     * afterwards; after a model change there was none in memory. */
    if (rc == 0 && e->center)
        e->center_unstored = 1;
    pthread_mutex_unlock(&e->write_mu);
    if (rc)
        goto out;
    engine_ingest_source src = {.next = reembed_next, .done = reembed_done, .ctx = &r, .size_hint = r.n};
    rc = stream(e, PIPE_REEMBED, &src, err);
    if (rc == 0 && r.failed)
        rc = ms_err_set(err, r.first_err.code ? r.first_err.code : MS_EINTERNAL,
                        "%zu of %zu images could not be re-embedded (first: %.200s); run reembed again "
                        "once they are fixed or deleted",
                        r.failed, r.n, r.first_err.msg);
    if (rc == 0) {
        pthread_mutex_lock(&e->write_mu);
        e->pending_reembed = 0;
        e->missing_vectors = 0;
        e->index_dirty = 1;
        pthread_mutex_unlock(&e->write_mu);
    }
out:
    free(r.ids);
    engine_pool_put(e, r.s);
    return rc;
}
