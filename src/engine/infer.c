/*
 * infer.c - the one thread that owns the model and runs every forward.
 *
 * A model may be used by one thread at a time, so searches, embeds and
 * ingest batches all queue here. Queries (one image each, usually) waiting
 * together are copied into one batch of up to max_batch images: when many
 * clients search at once they share a forward instead of queueing behind
 * each other (dynamic batching). There is no waiting window: whatever
 * accumulated while the previous forward ran is the next batch. Queries go
 * before bulk (ingest) batches so a long ingest does not stall searches
 * for more than one batch. The query queue is bounded (MS_EBUSY beyond);
 * bulk batches are not, since their callers wait for each one.
 */
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"
#include "util/timing.h"

static void *infer_main(void *arg);

int infer_start(infer_queue *q, model *m, int max_batch, size_t depth, ms_err *err)
{
    memset(q, 0, sizeof *q);
    q->m = m;
    q->max_batch = max_batch;
    q->dim = model_dim(m);
    int size = model_prep(m)->size;
    q->per_image = (size_t)3 * (size_t)size * (size_t)size;
    q->depth = depth;
    q->in = malloc(q->per_image * (size_t)max_batch * sizeof(float));
    q->out = malloc((size_t)q->dim * (size_t)max_batch * sizeof(float));
    if (!q->in || !q->out) {
        free(q->in);
        free(q->out);
        return ms_err_set(err, MS_ENOMEM, "no memory for an inference batch of %d images", max_batch);
    }
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->work, NULL);
    pthread_cond_init(&q->done, NULL);
    if (pthread_create(&q->thread, NULL, infer_main, q) != 0) {
        pthread_mutex_destroy(&q->mu);
        pthread_cond_destroy(&q->work);
        pthread_cond_destroy(&q->done);
        free(q->in);
        free(q->out);
        return ms_err_set(err, MS_EINTERNAL, "cannot start the inference thread");
    }
    q->running = 1;
    return 0;
}

void infer_stop(infer_queue *q)
{
    if (!q->running)
        return;
    pthread_mutex_lock(&q->mu);
    q->stop = 1;
    pthread_cond_broadcast(&q->work);
    pthread_mutex_unlock(&q->mu);
    pthread_join(q->thread, NULL);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->work);
    pthread_cond_destroy(&q->done);
    free(q->in);
    free(q->out);
    q->running = 0;
}

int infer_submit(infer_queue *q, infer_job *job, ms_err *err)
{
    if (job->n < 1 || job->n > q->max_batch)
        return ms_err_set(err, MS_EINTERNAL, "inference job of %d images (batch limit %d)",
                          job->n, q->max_batch);
    job->done = 0;
    job->rc = 0;
    job->next = NULL;
    ms_err_clear(&job->err);
    pthread_mutex_lock(&q->mu);
    if (q->stop) {
        pthread_mutex_unlock(&q->mu);
        return ms_err_set(err, MS_EINTERNAL, "the engine is closing");
    }
    if (job->bulk) {
        if (q->bt)
            q->bt->next = job;
        else
            q->bh = job;
        q->bt = job;
    } else {
        if (q->qn >= q->depth) {
            size_t waiting = q->qn;
            pthread_mutex_unlock(&q->mu);
            return ms_err_set(err, MS_EBUSY, "%zu queries are waiting for the model; try again shortly",
                              waiting);
        }
        if (q->qt)
            q->qt->next = job;
        else
            q->qh = job;
        q->qt = job;
        q->qn++;
    }
    pthread_cond_signal(&q->work);
    pthread_mutex_unlock(&q->mu);
    return 0;
}

int infer_wait(infer_queue *q, infer_job *job, ms_err *err)
{
    pthread_mutex_lock(&q->mu);
    while (!job->done)
        pthread_cond_wait(&q->done, &q->mu);
    pthread_mutex_unlock(&q->mu);
    if (job->rc && err)
        *err = job->err;
    return job->rc;
}

size_t infer_waiting(infer_queue *q)
{
    pthread_mutex_lock(&q->mu);
    size_t n = q->qn;
    pthread_mutex_unlock(&q->mu);
    return n;
}

/* Takes the queries that fit in one batch off the queue (q->mu held). */
static infer_job *take_queries(infer_queue *q, int *total)
{
    infer_job *first = q->qh, *last = NULL;
    int n = 0;
    /* a job for shares is no plain forward: it runs as a batch of its own */
    for (infer_job *j = q->qh; j && n + j->n <= q->max_batch && !(n && j->shares); j = j->next) {
        n += j->n;
        last = j;
        q->qn--;
        if (j->shares)
            break;
    }
    q->qh = last->next;
    if (!q->qh)
        q->qt = NULL;
    last->next = NULL;
    *total = n;
    return first;
}

static int run_queries(infer_queue *q, infer_job *jobs, int total, ms_err *err)
{
    if (jobs->shares)
        return model_feature_shares(q->m, jobs->input, jobs->n, jobs->out, jobs->shares, err);
    if (!jobs->next) /* a lone query runs from its own buffer */
        return model_forward(q->m, jobs->input, jobs->n, jobs->out, err);
    size_t row = 0;
    for (infer_job *j = jobs; j; j = j->next) {
        memcpy(q->in + row * q->per_image, j->input, (size_t)j->n * q->per_image * sizeof(float));
        row += (size_t)j->n;
    }
    int rc = model_forward(q->m, q->in, total, q->out, err);
    if (rc)
        return rc;
    row = 0;
    for (infer_job *j = jobs; j; j = j->next) {
        memcpy(j->out, q->out + row * (size_t)q->dim, (size_t)j->n * (size_t)q->dim * sizeof(float));
        row += (size_t)j->n;
    }
    return 0;
}

static void *infer_main(void *arg)
{
    infer_queue *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (!q->stop && !q->qh && !q->bh)
            pthread_cond_wait(&q->work, &q->mu);
        if (!q->qh && !q->bh)
            break; /* stop asked and nothing left to run */
        infer_job *jobs;
        int total;
        if (q->qh) {
            jobs = take_queries(q, &total);
        } else {
            jobs = q->bh;
            q->bh = jobs->next;
            if (!q->bh)
                q->bt = NULL;
            jobs->next = NULL;
            total = jobs->n;
        }
        pthread_mutex_unlock(&q->mu);

        ms_err err = {0};
        uint64_t t0 = ms_now_ns();
        int rc = jobs->bulk ? model_forward(q->m, jobs->input, jobs->n, jobs->out, &err)
                            : run_queries(q, jobs, total, &err);
        double ms = ms_elapsed_ms(t0);

        pthread_mutex_lock(&q->mu);
        q->forwards++;
        q->images += (uint64_t)total;
        q->forward_ms += ms;
        for (infer_job *j = jobs, *next; j; j = next) {
            next = j->next; /* j may be freed by its waiter once done is set */
            j->rc = rc;
            if (rc)
                j->err = err;
            j->done = 1;
        }
        pthread_cond_broadcast(&q->done);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}
