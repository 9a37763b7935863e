/*
 * duplicates.c - `medsearch duplicates`: the pictures a collection holds
 * more than once, as different files.
 *
 * Public chest X-ray sets gather images from many sources, and the same
 * radiograph often comes back re-encoded, resized or windowed differently,
 * under another name and sometimes another patient id or label: a copy on
 * both sides of a train/test split inflates every figure measured on it,
 * and two labels on one picture are label noise. Byte-identical files are
 * already one image (content addressing); this finds the others.
 *
 * Two steps, because neither alone separates copies from look-alikes:
 *   1. candidates: each image's k nearest stored images by the model's
 *      vectors (the index, as `search --id` ranks them; no model is
 *      loaded). A copy is its original's nearest neighbour, but the score
 *      of a resized copy can be lower than that of two different patients'
 *      radiographs, so the score alone cannot decide;
 *   2. the decision: the correlation of the two pictures' fingerprints
 *      (image.h: 32 x 32 gray, from the stored thumbnails), which a copy
 *      keeps near 1 whatever its encoding, and which different radiographs,
 *      however alike, do not reach.
 * Pairs at or above --min-correlation are printed, strongest first, with
 * both images' patient and labels; groups are the connected sets of pairs.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "util/text.h"
#include "util/timing.h"

#define MAX_THREADS 4 /* each holds two store handles of the pool of 16 at most */

typedef struct dup_pair {
    int a, b;          /* positions in the id list, a < b */
    float score;       /* the index's similarity */
    double correlation;
} dup_pair;

typedef struct pair_list {
    dup_pair *pairs;
    size_t n, cap;
} pair_list;

typedef struct dup_run {
    engine *e;
    store *s;          /* the reporting thread's: metadata */
    int64_t *ids;      /* ascending */
    size_t n;
    uint8_t *prints;   /* n fingerprints */
    pair_list found;
    int k, threads;
    atomic_size_t next;    /* the next image a worker takes */
    atomic_int failed;
    pthread_mutex_t mu;    /* guards err */
    ms_err err;            /* the first failure */
} dup_run;

static int position_of(const dup_run *r, int64_t id)
{
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (r->ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < r->n && r->ids[lo] == id ? (int)lo : -1;
}

static int add_pair(pair_list *l, int a, int b, float score, ms_err *err)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 1024;
        dup_pair *p = realloc(l->pairs, cap * sizeof *p);
        if (!p)
            return ms_err_set(err, MS_ENOMEM, "no memory for %zu candidate pairs", cap);
        l->pairs = p;
        l->cap = cap;
    }
    l->pairs[l->n++] = (dup_pair){a < b ? a : b, a < b ? b : a, score, 0};
    return 0;
}

static int by_positions(const void *x, const void *y)
{
    const dup_pair *p = x, *q = y;
    return p->a != q->a ? (p->a > q->a) - (p->a < q->a) : (p->b > q->b) - (p->b < q->b);
}

static int by_correlation(const void *x, const void *y)
{
    const dup_pair *p = x, *q = y;
    if (p->correlation != q->correlation)
        return p->correlation < q->correlation ? 1 : -1;
    return by_positions(x, y);
}

/* Step 1 for image i: its k nearest, as candidate pairs. */
static int add_candidates(dup_run *r, size_t i, pair_list *l, ms_err *err)
{
    engine_query q = {.by_id = r->ids[i], .k = r->k, .qe = 0, .exclude_self = 1};
    engine_result *res = NULL;
    int n = 0, rc = engine_search(r->e, &q, &res, &n, NULL, err);
    if (rc == MS_ENOTFOUND) /* stored since the index was read: not ours to judge */
        return 0;
    if (rc)
        return ms_err_prefix(err, "image %lld: ", (long long)r->ids[i]);
    for (int j = 0; j < n && !rc; j++) {
        int other = position_of(r, res[j].id);
        if (other >= 0)
            rc = add_pair(l, (int)i, other, res[j].score, err);
    }
    engine_results_free(res, n);
    return rc;
}

static int make_fingerprint(dup_run *r, store *s, size_t i, ms_err *err)
{
    return engine_fingerprint_stored(r->e, s, r->ids[i], r->prints + i * IMAGE_FINGERPRINT_SIZE, err);
}

typedef struct dup_worker {
    dup_run *r;
    pair_list mine;
} dup_worker;

/* Takes images one by one: their candidates and fingerprints. */
static void *work(void *arg)
{
    dup_worker *w = arg;
    dup_run *r = w->r;
    ms_err err = {0};
    store *s = NULL;
    int rc = engine_store_acquire(r->e, &s, &err);
    for (size_t i; !rc && !atomic_load(&r->failed) && (i = atomic_fetch_add(&r->next, 1)) < r->n;) {
        rc = add_candidates(r, i, &w->mine, &err);
        if (!rc)
            rc = make_fingerprint(r, s, i, &err);
    }
    if (s)
        engine_store_release(r->e, s);
    if (rc) {
        pthread_mutex_lock(&r->mu);
        if (!atomic_exchange(&r->failed, 1))
            r->err = err;
        pthread_mutex_unlock(&r->mu);
    }
    return NULL;
}

/* Step 1 on every image, in r->threads workers; then each pair once. */
static int collect(dup_run *r, ms_err *err)
{
    dup_worker w[MAX_THREADS] = {0};
    pthread_t tid[MAX_THREADS];
    int started = 0;
    for (; started < r->threads; started++) {
        w[started].r = r;
        if (pthread_create(&tid[started], NULL, work, &w[started]))
            break;
    }
    if (started == 0)
        return ms_err_set(err, MS_ENOMEM, "cannot start a worker thread");
    for (int t = 0; t < started; t++)
        pthread_join(tid[t], NULL);
    int rc = 0;
    for (int t = 0; t < started; t++) {
        for (size_t i = 0; i < w[t].mine.n && !rc && !atomic_load(&r->failed); i++)
            rc = add_pair(&r->found, w[t].mine.pairs[i].a, w[t].mine.pairs[i].b, w[t].mine.pairs[i].score, err);
        free(w[t].mine.pairs);
    }
    if (atomic_load(&r->failed)) {
        *err = r->err;
        return err->code;
    }
    if (rc)
        return rc;
    pair_list *l = &r->found;
    qsort(l->pairs, l->n, sizeof *l->pairs, by_positions);
    size_t kept = 0;
    for (size_t i = 0; i < l->n; i++)
        if (!kept || by_positions(&l->pairs[i], &l->pairs[kept - 1]))
            l->pairs[kept++] = l->pairs[i];
    l->n = kept;
    return 0;
}

/* Step 2: keeps the pairs whose pictures correlate at min or above. */
static void decide(dup_run *r, double min)
{
    pair_list *l = &r->found;
    size_t kept = 0;
    for (size_t i = 0; i < l->n; i++) {
        dup_pair p = l->pairs[i];
        p.correlation = image_fingerprint_correlation(r->prints + (size_t)p.a * IMAGE_FINGERPRINT_SIZE,
                                                      r->prints + (size_t)p.b * IMAGE_FINGERPRINT_SIZE);
        if (p.correlation >= min)
            l->pairs[kept++] = p;
    }
    l->n = kept;
    qsort(l->pairs, l->n, sizeof *l->pairs, by_correlation);
}

static int find_root(int *parent, int x)
{
    while (parent[x] != x)
        x = parent[x] = parent[parent[x]];
    return x;
}

/* Groups of copies: the connected sets of images the pairs link. Each pair
 * that joins two sets makes one set fewer, so the groups are the images in
 * pairs less the joins. */
static size_t count_groups(const dup_run *r)
{
    int *parent = malloc(r->n * sizeof *parent);
    unsigned char *seen = calloc(r->n, 1);
    size_t joins = 0, in_pairs = 0;
    if (parent && seen) {
        for (size_t i = 0; i < r->n; i++)
            parent[i] = (int)i;
        for (size_t i = 0; i < r->found.n; i++) {
            const dup_pair *p = &r->found.pairs[i];
            int a = find_root(parent, p->a), b = find_root(parent, p->b);
            if (a != b) {
                parent[b] = a;
                joins++;
            }
            in_pairs += !seen[p->a] + !seen[p->b];
            seen[p->a] = seen[p->b] = 1;
        }
    }
    free(parent);
    free(seen);
    return in_pairs - joins;
}

/* Labels that conflict: both images have some, and they are not the same
 * set (a copy without labels only lacks them). */
static int labels_differ(const store_meta *x, const store_meta *y)
{
    return x->n_labels > 0 && y->n_labels > 0 && !store_labels_same_set(x, y);
}

static int other_patients(const store_meta *x, const store_meta *y)
{
    return x->patient_id && y->patient_id && x->patient_id[0] && y->patient_id[0] &&
           strcmp(x->patient_id, y->patient_id) != 0;
}

static json_t *side_json(int64_t id, const store_meta *m)
{
    json_t *labels = json_array();
    for (int i = 0; i < m->n_labels; i++)
        json_array_append_new(labels, json_string(m->labels[i]));
    return json_pack("{s:I, s:o, s:o, s:o}", "id", (json_int_t)id, "original_name", cli_json_text(m->original_name),
                     "patient_id", cli_json_text(m->patient_id), "labels", labels);
}

static void print_side(int64_t id, const store_meta *m)
{
    char name[STORE_MAX_TEXT + 1], patient[STORE_MAX_TEXT + 1], labels[512], shown[512];
    ms_text_printable(name, sizeof name, m->original_name ? m->original_name : "-");
    ms_text_printable(patient, sizeof patient, m->patient_id && m->patient_id[0] ? m->patient_id : "-");
    cli_join_labels(m, labels, sizeof labels);
    ms_text_printable(shown, sizeof shown, labels[0] ? labels : "-");
    printf("  %8lld  %-40s  patient %-12s  %s\n", (long long)id, name, patient, shown);
}

typedef struct dup_summary {
    size_t across_patients, labels_differ, shown;
} dup_summary;

/* Prints (or adds to arr) the pairs, reading both sides' metadata; with
 * only_other_patients, the pairs of two known, different patients alone. */
static int report_pairs(dup_run *r, int only_other_patients, json_t *arr, dup_summary *sum, ms_err *err)
{
    for (size_t i = 0; i < r->found.n; i++) {
        const dup_pair *p = &r->found.pairs[i];
        store_meta ma, mb;
        int rc = store_get_meta(r->s, r->ids[p->a], &ma, err);
        if (rc)
            return rc;
        if ((rc = store_get_meta(r->s, r->ids[p->b], &mb, err)) != 0) {
            store_meta_free(&ma);
            return rc;
        }
        int across = other_patients(&ma, &mb), differ = labels_differ(&ma, &mb);
        sum->across_patients += across;
        sum->labels_differ += differ;
        if (!only_other_patients || across) {
            sum->shown++;
            if (arr) {
                json_array_append_new(arr, json_pack("{s:f, s:f, s:b, s:b, s:o, s:o}", "correlation", p->correlation,
                                                     "score", (double)p->score, "other_patients", across,
                                                     "labels_differ", differ, "a", side_json(r->ids[p->a], &ma),
                                                     "b", side_json(r->ids[p->b], &mb)));
            } else {
                printf("correlation %.4f  score %.4f%s%s\n", p->correlation, (double)p->score,
                       across ? "  OTHER PATIENTS" : "", differ ? "  LABELS DIFFER" : "");
                print_side(r->ids[p->a], &ma);
                print_side(r->ids[p->b], &mb);
            }
        }
        store_meta_free(&ma);
        store_meta_free(&mb);
    }
    return 0;
}

static int run(dup_run *r, double min, int only_other_patients, int json, ms_err *err)
{
    uint64_t t0 = ms_now_ns();
    int rc = store_list_ids(r->s, &r->ids, &r->n, err);
    if (rc)
        return rc;
    if (!(r->prints = malloc(r->n * (size_t)IMAGE_FINGERPRINT_SIZE + 1)))
        return ms_err_set(err, MS_ENOMEM, "no memory for %zu fingerprints", r->n);
    if ((rc = collect(r, err)) != 0)
        return rc;
    size_t candidates = r->found.n;
    decide(r, min);
    size_t groups = count_groups(r);
    dup_summary sum = {0};
    json_t *arr = json ? json_array() : NULL;
    rc = report_pairs(r, only_other_patients, arr, &sum, err);
    double secs = ms_elapsed_ms(t0) / 1000.0;
    if (rc == 0 && json) {
        json_t *o = json_pack("{s:I, s:I, s:i, s:f, s:I, s:I, s:I, s:I, s:o, s:f}", "images", (json_int_t)r->n,
                              "candidates", (json_int_t)candidates, "k", r->k, "min_correlation", min, "count",
                              (json_int_t)r->found.n, "groups", (json_int_t)groups, "other_patients",
                              (json_int_t)sum.across_patients, "labels_differ", (json_int_t)sum.labels_differ,
                              "pairs", json_incref(arr), "seconds", secs);
        json_dumpf(o, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
        fputc('\n', stdout);
        json_decref(o);
    } else if (rc == 0) {
        printf("%zu pair%s of copies in %zu group%s among %zu images (%zu candidate pairs, correlation >= %.3f); "
               "%zu of other patients, %zu with different labels; %.1f s\n",
               r->found.n, r->found.n == 1 ? "" : "s", groups, groups == 1 ? "" : "s", r->n, candidates, min,
               sum.across_patients, sum.labels_differ, secs);
    }
    json_decref(arr);
    return rc ? rc : sum.shown > 0 ? 0 : 1;
}

int cmd_duplicates(int argc, char **argv)
{
    double min = ENGINE_COPIES_MIN_CORRELATION;
    int k = ENGINE_COPIES_CANDIDATES, only_other_patients = 0;
    const cli_option opts[] = {
        {"min-correlation", 0, CLI_DOUBLE, &min, "C",
         "fingerprint rank correlation from which two images are copies (default 0.99)", 0, 0},
        {"candidates", 'k', CLI_INT, &k, "N", "nearest images checked per image (default 5)", 1,
         ENGINE_COPIES_MAX_CANDIDATES},
        {"other-patients", 0, CLI_FLAG, &only_other_patients, NULL,
         "list only copies stored under two different patient ids", 0, 0},
        {0},
    };
    static const cli_command base = {
        "duplicates", "",
        "Lists the pictures the collection holds more than once as different files (re-encoded, resized,\n"
        "windowed differently), with both images' patient and labels. Exit code 1 when there are none.",
        CLI_DB | CLI_JSON, NULL, 0, 0};
    cli_command me = base;
    me.options = opts;
    cli_common c;
    char **args;
    int n_args, code;
    if (!cli_parse(&me, argc, argv, &c, &args, &n_args, &code))
        return code;
    free(args);
    if (!(min > -1 && min <= 1)) {
        fprintf(stderr, "medsearch duplicates: --min-correlation must be above -1 and at most 1\n");
        return EXIT_USAGE;
    }
    engine_options o;
    cli_engine_options(&c, &o);
    o.no_model = 1; /* the stored vectors and thumbnails suffice */
    if (cli_collection_missing(o.db)) {
        fprintf(stderr, "medsearch duplicates: no collection at %s\n", o.db);
        return 1;
    }
    engine *e;
    engine_open_report rep;
    int rc = cli_open(&me, &o, &e, &rep, 0);
    if (rc)
        return rc;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    dup_run r = {.e = e, .k = k, .threads = cores > 1 ? (int)(cores < MAX_THREADS ? cores : MAX_THREADS) : 1};
    pthread_mutex_init(&r.mu, NULL);
    ms_err err = {0};
    rc = engine_store_acquire(e, &r.s, &err);
    if (rc == 0) {
        rc = run(&r, min, only_other_patients, c.json, &err);
        engine_store_release(e, r.s);
    }
    if (rc < 0) {
        cli_error(&me, &err);
        rc = cli_exit_code(rc);
    }
    free(r.ids);
    free(r.prints);
    free(r.found.pairs);
    pthread_mutex_destroy(&r.mu);
    engine_close(e);
    return rc;
}
