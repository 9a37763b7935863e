/*
 * eval.c - `medsearch eval`: retrieval quality of a labelled collection.
 *
 * Every labelled image is a query, searched through the engine exactly as
 * `search --id` does (engine_search by the image's id: its vector as the
 * index holds it, centred like every query; the query itself and its
 * patient's images excluded by the engine's filter),
 * and the ranked ids are scored by src/eval/metrics.c. The ranking is never
 * recomputed here; the order the engine returns is only verified.
 *
 * --compare A B evaluates two configurations on the same queries. A
 * configuration that changes the vectors (another model, pooling or GeM p)
 * is evaluated on a scratch collection: every stored image is re-ingested
 * (bytes and metadata, in ascending id order) into an SQLite collection in
 * a temporary directory, or in --workdir where it is kept and reused. Its
 * ids are mapped back to the original ones through the ingest (or by
 * content hash when a kept collection is reused), so both configurations
 * are scored on the same queries with the same ground truth. QE alone needs
 * no scratch collection; nor does center=off, which opens the same
 * collection a second time with centering off (its index then lives in
 * memory only: nothing of the collection is changed).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "cli/eval_internal.h"
#include "engine.h"
#include "eval/metrics.h"
#include "util/err.h"
#include "util/text.h"
#include "util/timing.h"


static const char ABOUT[] =
    "Measures retrieval quality on a collection ingested with labels. Every labelled\n"
    "image is a query; its gallery is every other image except those of the same\n"
    "patient; the results come from the same engine search as `medsearch search`, with\n"
    "the image's stored vector (centred like every query once the collection has a\n"
    "center). Reports P@1, P@5, P@k and mAP@k, each with its chance\n"
    "level (the expected value under a random ranking of the same gallery), P@k per\n"
    "label, and how many queries were scored: queries without labels, or without any\n"
    "relevant image in their gallery, are left out and counted.\n"
    "\n"
    "Relevance (--rule): any = shares a label, exact = same label set, single = same\n"
    "first label. Labels compare without regard to ASCII case.\n"
    "\n"
    "--compare A B evaluates two configurations on the same queries and reports the\n"
    "paired difference B - A of mAP@k and P@k with its standard error (sd of the\n"
    "per-query differences / sqrt(n)). A configuration is a comma-separated list of\n"
    "pool=output|avg|gem|max|topleft, gem_p=P, flip=on|off, qe=N, model=PATH,\n"
    "center=on|off (\"\" = the collection as stored). One that changes the vectors\n"
    "(model, pooling, GeM p, flip) re-embeds every stored image into a scratch SQLite\n"
    "collection (deleted afterwards, or kept and reused in --workdir); the model is\n"
    "--model's unless model= says otherwise. Without center= the search is the\n"
    "product's, as the collection's centering policy says (medsearch center). center=off ranks by plain cosine,\n"
    "center=on by centred cosine even when the policy is off (the center is then\n"
    "computed in memory); either opens the collection a second time and changes\n"
    "nothing in it. A collection of fewer than " ENGINE_CENTER_MIN_TEXT " images has no center either way.\n"
    "To choose the policy: medsearch eval --compare \"center=off\" \"center=on\".\n"
    "\n"
    "--tune tries the search settings a collection can change without re-embedding:\n"
    "query expansion 0, 1, 2, 3 and 5, each with centering on and off, on the same\n"
    "queries, each paired with the collection's current settings. The best is\n"
    "recommended only when it gains more than two standard errors of mAP@k (it is\n"
    "chosen on the queries it is scored on); --apply records it (medsearch qe,\n"
    "medsearch center). --tune --vectors also tries the ways of making the vectors\n"
    "from the collection's own model (give it with --model): its pooling and GeM,\n"
    "each with and without flip, each re-embedded once into a scratch collection\n"
    "(in --workdir when given) and searched with every candidate above. A\n"
    "re-embedding must beat the best search setting by the same margin, and flip the\n"
    "best without it; --apply then re-embeds the collection too (medsearch reembed).\n"
    "\n"
    "--feedback N simulates relevance feedback (search --like/--unlike): a user who\n"
    "marks each of the first N results like or unlike the query by its labels, then\n"
    "searches again. Both rounds are scored on the images not yet judged (the first\n"
    "round's results after the N, the second round's results), paired per query.\n"
    "\n"
    "Example: medsearch eval --rule exact --compare \"pool=avg,center=off\" \"pool=gem,qe=2\"";

/* Ctrl-C (or SIGTERM) stops the searches and the re-embedding of a scratch
 * collection at the next image, so that the normal error path removes the
 * temporary scratch collections; a second signal ends the process at once. */
static volatile sig_atomic_t interrupted; /* the signal, or 0 */

static void on_signal(int sig)
{
    interrupted = sig;
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
}

/* A signal the process was started with ignored (a background job of a
 * script ignores Ctrl-C) stays ignored. */
static void catch_one(int sig, int on)
{
    struct sigaction old;
    if (sigaction(sig, NULL, &old) == 0 && old.sa_handler == SIG_IGN)
        return;
    struct sigaction sa = {.sa_handler = on ? on_signal : SIG_DFL};
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

void eval_catch_signals(int on)
{
    catch_one(SIGINT, on);
    catch_one(SIGTERM, on);
}

/* "pool=gem,gem_p=3,qe=2,model=PATH" -> config. Returns 0 or -1 with a
 * message in why. */
static int parse_config(const char *text, eval_config *c, char *why, size_t why_len)
{
    memset(c, 0, sizeof *c);
    c->qe = -1;
    c->center = -1;
    c->flip = -1;
    c->bf16 = -1;
    if (strlen(text) >= sizeof c->text) {
        snprintf(why, why_len, "configuration is longer than %zu characters", sizeof c->text - 1);
        return -1;
    }
    snprintf(c->text, sizeof c->text, "%s", text);
    char buf[sizeof c->text];
    snprintf(buf, sizeof buf, "%s", text);
    char *save = NULL;
    for (char *item = strtok_r(buf, ", ", &save); item; item = strtok_r(NULL, ", ", &save)) {
        char *eq = strchr(item, '=');
        if (!eq) {
            snprintf(why, why_len, "'%s' is not key=value", item);
            return -1;
        }
        *eq = '\0';
        const char *key = item, *val = eq + 1;
        if (!strcmp(key, "pool")) {
            if (model_pool_parse(val, &c->pool)) {
                snprintf(why, why_len, "unknown pooling '%s' (output, avg, gem, max, topleft)", val);
                return -1;
            }
            c->pool_set = 1;
        } else if (!strcmp(key, "gem_p") || !strcmp(key, "gem-p") || !strcmp(key, "p")) {
            char *end;
            errno = 0;
            double p = strtod(val, &end);
            /* The same range as --gem-p. */
            if (errno || end == val || *end || !(p >= 1 && p <= 16)) {
                snprintf(why, why_len, "GeM p '%s' is not a number from 1 to 16", val);
                return -1;
            }
            c->gem_p = (float)p;
        } else if (!strcmp(key, "qe")) {
            if (cli_parse_int_in(val, 0, EVAL_MAX_QE, &c->qe)) {
                snprintf(why, why_len, "qe '%s' is not a whole number from 0 to %d", val, EVAL_MAX_QE);
                return -1;
            }
        } else if (!strcmp(key, "model")) {
            if (!val[0] || strlen(val) >= sizeof c->model_buf) {
                snprintf(why, why_len, "model= needs a path (under %zu characters)", sizeof c->model_buf);
                return -1;
            }
            snprintf(c->model_buf, sizeof c->model_buf, "%s", val);
            c->model_path = c->model_buf;
        } else if (!strcmp(key, "center") || !strcmp(key, "flip")) {
            if (strcmp(val, "on") && strcmp(val, "off")) {
                snprintf(why, why_len, "%s '%s' is not on or off", key, val);
                return -1;
            }
            *(!strcmp(key, "flip") ? &c->flip : &c->center) = !strcmp(val, "on");
        } else {
            snprintf(why, why_len, "unknown key '%s' (pool, gem_p, flip, qe, model, center)", key);
            return -1;
        }
    }
    return 0;
}

static const cli_command EVAL_CMD_BASE = {
    .name = "eval",
    .args = "[--compare A B | --tune [--vectors] [--apply]]",
    .about = ABOUT,
    .common = CLI_DB | CLI_MODEL | CLI_JSON,
    .min_args = 0,
    .max_args = 1,
};

/* A report written to "-" takes standard output's place: the text tables would interleave with
 * it, and JSON could not be parsed out of the mixture. Returns the option that sends one there
 * ("out" or "per-query"), or NULL. */
static const char *report_to_stdout(const eval_args *a)
{
    if (a->out_md && !strcmp(a->out_md, "-"))
        return "out";
    return a->per_query && !strcmp(a->per_query, "-") ? "per-query" : NULL;
}

/* Returns -1 to go on, or the exit code to return now. */
static int parse_args(int argc, char **argv, eval_args *a)
{
    memset(a, 0, sizeof *a);
    a->k = 10;
    a->qe = ENGINE_QE_COLLECTION;
    a->rule_name = "exact";
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    a->threads = cores > 0 ? (int)(cores < 8 ? cores : 8) : 2;
    const cli_option opts[] = {
        {"k", 'k', CLI_INT, &a->k, "N", "cut-off of P@k and mAP@k (default 10)", 1, EVAL_MAX_K},
        {"rule", 0, CLI_STRING, &a->rule_name, "R", "relevance: any, exact or single (default exact)", 0, 0},
        {"qe", 0, CLI_INT, &a->qe, "N", "query expansion with the top N results (default: the collection's)",
         0, EVAL_MAX_QE},
        {"out", 'o', CLI_STRING, &a->out_md, "FILE", "also write a Markdown report to FILE (-: instead of the text)", 0, 0},
        {"per-query", 0, CLI_STRING, &a->per_query, "FILE", "write each query's R, G, AP@k, P@k as CSV (-: instead of the text)", 0, 0},
        {"threads", 0, CLI_INT, &a->threads, "N", "concurrent searches (default: cores, at most 8)", 1,
         EVAL_MAX_THREADS},
        {"compare", 0, CLI_STRING, &a->compare_a, "A B", "evaluate configurations A and B on the same queries", 0, 0},
        {"workdir", 0, CLI_STRING, &a->workdir, "DIR", "keep and reuse --compare's scratch collections in DIR", 0, 0},
        {"tune", 0, CLI_FLAG, &a->tune, NULL, "try query expansion 0-5 and centering on/off, recommend the best", 0, 0},
        {"apply", 0, CLI_FLAG, &a->apply, NULL, "with --tune: make the recommendation the collection's defaults", 0, 0},
        {"vectors", 0, CLI_FLAG, &a->tune_vectors, NULL,
         "with --tune: also try GeM pooling and flip (re-embeds with the collection's model)", 0, 0},
        {"feedback", 0, CLI_INT, &a->feedback, "N",
         "simulate relevance feedback on the first N results; score both rounds on the rest", 1,
         ENGINE_FEEDBACK_MAX},
        {"quiet", 'q', CLI_FLAG, &a->quiet, NULL, "no progress on stderr", 0, 0},
        {0},
    };
    cli_command cmd = EVAL_CMD_BASE;
    cmd.options = opts;
    char **args = NULL;
    int n_args = 0, code = 0;
    if (!cli_parse(&cmd, argc, argv, &a->common, &args, &n_args, &code))
        return code;
    int bad = 0;
    ms_err err = {0};
    char why[sizeof err.msg] = "";
    if (eval_rule_parse(a->rule_name, &a->rule, &err)) {
        snprintf(why, sizeof why, "%s", err.msg);
        bad = 1;
    } else if (a->compare_a && n_args != 1) {
        snprintf(why, sizeof why, "--compare needs two configurations, A and B (\"\" for the stored one)");
        bad = 1;
    } else if (!a->compare_a && n_args) {
        snprintf(why, sizeof why, "unexpected argument '%s'", args[0]);
        bad = 1;
    } else if (a->compare_a && (parse_config(a->compare_a, &a->cfg[0], why, sizeof why) ||
                                parse_config(args[0], &a->cfg[1], why, sizeof why))) {
        bad = 1;
    } else if (a->workdir && !a->compare_a && !a->tune_vectors) {
        snprintf(why, sizeof why, "--workdir only applies with --compare or --tune --vectors");
        bad = 1;
    } else if ((a->apply || a->tune_vectors) && !a->tune) {
        snprintf(why, sizeof why, "%s only applies with --tune", a->apply ? "--apply" : "--vectors");
        bad = 1;
    } else if (a->out_md && a->per_query && !strcmp(a->out_md, a->per_query)) {
        snprintf(why, sizeof why, "--out and --per-query name the same file, %s", a->out_md);
        bad = 1;
    } else if (a->common.json && report_to_stdout(a)) {
        snprintf(why, sizeof why, "--json and --%s - both write to standard output", report_to_stdout(a));
        bad = 1;
    } else if (a->tune && (a->compare_a || a->qe != ENGINE_QE_COLLECTION || a->out_md || a->per_query ||
                           a->feedback)) {
        snprintf(why, sizeof why,
                 "--tune tries its own settings: it takes none of --compare, --qe, --out, --per-query, --feedback");
        bad = 1;
    } else if (a->feedback && a->compare_a) {
        snprintf(why, sizeof why, "--feedback compares two rounds of the collection's own search: not with --compare");
        bad = 1;
    } else if (a->feedback && a->k + a->feedback > EVAL_MAX_K) {
        snprintf(why, sizeof why, "-k plus --feedback must be at most %d: the first round shows both", EVAL_MAX_K);
        bad = 1;
    }
    if (a->feedback && !bad) {
        snprintf(a->cfg[0].text, sizeof a->cfg[0].text, "first round, its results after the %d judged", a->feedback);
        snprintf(a->cfg[1].text, sizeof a->cfg[1].text,
                 "second round, with the first round's %d results marked like or unlike by their labels",
                 a->feedback);
    }
    free(args);
    if (bad) {
        fprintf(stderr, "medsearch eval: %s\n", why);
        return EXIT_USAGE;
    }
    a->compare = a->compare_a != NULL;
    a->db = a->common.db;
    a->json = a->common.json;
    return -1;
}

/* ---- ground truth from the collection ---- */

static int load_truth(engine *e, eval_rule rule, eval_truth **out, ms_err *err)
{
    store *s = engine_store(e);
    int64_t *ids = NULL;
    size_t n = 0;
    int rc = store_list_ids(s, &ids, &n, err);
    if (rc)
        return rc;
    eval_truth *t = NULL;
    if ((rc = eval_truth_create(&t, err))) {
        free(ids);
        return rc;
    }
    for (size_t i = 0; i < n && !rc; i++) {
        store_meta m;
        store_meta_init(&m);
        rc = store_get_meta(s, ids[i], &m, err);
        if (!rc)
            rc = eval_truth_add(t, ids[i], m.patient_id, (const char *const *)m.labels, m.n_labels, err);
        store_meta_free(&m);
        if (rc)
            ms_err_prefix(err, "image %lld: ", (long long)ids[i]);
    }
    free(ids);
    if (!rc)
        rc = eval_truth_finish(t, rule, err);
    if (rc) {
        eval_truth_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

/* ---- searching every query ---- */

/* Ids of one collection as seen from another: truth index <-> engine id. */
typedef struct id_pair {
    int64_t engine_id;
    size_t truth_index;
} id_pair;

typedef struct id_map {
    int64_t *engine_id;       /* per truth index; NULL: the ids are the truth's */
    id_pair *by_engine;       /* sorted by engine_id */
    size_t n;
} id_map;

static int cmp_pair(const void *a, const void *b)
{
    int64_t x = ((const id_pair *)a)->engine_id, y = ((const id_pair *)b)->engine_id;
    return (x > y) - (x < y);
}

static int64_t truth_id_of(const eval_truth *t, const id_map *map, int64_t engine_id)
{
    if (!map->engine_id)
        return engine_id;
    size_t lo = 0, hi = map->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (map->by_engine[mid].engine_id == engine_id)
            return eval_truth_id(t, map->by_engine[mid].truth_index);
        if (map->by_engine[mid].engine_id < engine_id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

typedef struct run_ctx {
    engine *e;
    const eval_truth *t;
    const id_map *map;
    int k, qe, dim;
    eval_query_score *scores;
    int feedback;             /* --feedback N: judge the first N, search again */
    eval_query_score *after;  /* with feedback: the second round's scores */
    atomic_size_t next, done;
    atomic_int failed;
    pthread_mutex_t err_mu;
    ms_err err;               /* the first failure */
} run_ctx;

static void run_fail(run_ctx *c, const ms_err *err)
{
    pthread_mutex_lock(&c->err_mu);
    if (!atomic_load(&c->failed))
        c->err = *err;
    atomic_store(&c->failed, 1);
    pthread_mutex_unlock(&c->err_mu);
}

/* Searches query q through the engine (by its id, as `search --id` does),
 * with the feedback lists when given (engine ids), for want results: their
 * truth ids in ids[0..*n), checked against the protocol. */
static int search_query(run_ctx *c, size_t q, const engine_query *fb, int want, int64_t *ids, float *scores,
                        int *n_out, ms_err *err)
{
    const eval_truth *t = c->t;
    int64_t eid = c->map->engine_id ? c->map->engine_id[q] : eval_truth_id(t, q);
    store_filter f;
    store_filter_init(&f);
    /* The filter only reads the patient key; the cast drops const for the
     * struct field, nothing writes through it. */
    const char *patient = eval_truth_patient(t, q);
    f.exclude_patient = patient[0] ? (char *)patient : NULL;
    engine_query query = {.by_id = eid, .k = want, .filter = &f, .qe = c->qe, .exclude_self = 1};
    if (fb) {
        query.like = fb->like, query.n_like = fb->n_like;
        query.unlike = fb->unlike, query.n_unlike = fb->n_unlike;
    }
    engine_result *res = NULL;
    int n = 0;
    *n_out = 0;
    int rc = engine_search(c->e, &query, &res, &n, NULL, err);
    if (rc == MS_ENOTFOUND)
        return ms_err_set(err, rc, "image %lld has no vector in the index", (long long)eid);
    if (rc)
        return ms_err_prefix(err, "query %lld: ", (long long)eval_truth_id(t, q));
    for (int i = 0; i < n; i++) {
        ids[i] = res[i].id;
        scores[i] = res[i].score;
    }
    engine_results_free(res, n);
    if (n > want)
        return ms_err_set(err, MS_EINTERNAL, "query %lld: the engine returned %d results for k = %d",
                          (long long)eval_truth_id(t, q), n, want);
    if ((rc = eval_check_order(ids, scores, n, err)))
        return ms_err_prefix(err, "query %lld: ", (long long)eval_truth_id(t, q));
    for (int i = 0; i < n; i++) {
        int64_t tid = truth_id_of(t, c->map, ids[i]);
        if (!tid)
            return ms_err_set(err, MS_EINTERNAL, "query %lld: result %lld is not in the collection",
                              (long long)eval_truth_id(t, q), (long long)ids[i]);
        ids[i] = tid;
    }
    *n_out = n;
    return 0;
}

/* Searches query q and scores it. */
static int run_one(run_ctx *c, size_t q, int64_t *ids, float *scores, ms_err *err)
{
    int n;
    int rc = search_query(c, q, NULL, c->k, ids, scores, &n, err);
    return rc ? rc : eval_score_query(c->t, q, ids, n, c->k, &c->scores[q], err);
}

/* Engine id of the truth id of a result (the inverse of truth_id_of). */
static int64_t engine_id_of(const run_ctx *c, int64_t truth_id)
{
    if (!c->map->engine_id)
        return truth_id;
    ptrdiff_t i = eval_truth_find(c->t, truth_id);
    return i < 0 ? 0 : c->map->engine_id[i];
}

/* --feedback: the first round's k + N results; a perfect user marks the
 * first N like or unlike by their labels; the second round searches with
 * the marks. Both rounds are scored on the residual gallery (the N judged
 * images taken out): the first by its results after the N, the second by
 * its k results, from which the engine left the judged images out. */
static int run_one_feedback(run_ctx *c, size_t q, int64_t *ids, float *scores, ms_err *err)
{
    const eval_truth *t = c->t;
    int n, judged;
    int rc = search_query(c, q, NULL, c->k + c->feedback, ids, scores, &n, err);
    if (rc)
        return rc;
    judged = n < c->feedback ? n : c->feedback;
    int64_t like[ENGINE_FEEDBACK_MAX], unlike[ENGINE_FEEDBACK_MAX], marked[ENGINE_FEEDBACK_MAX];
    engine_query fb = {.like = like, .unlike = unlike};
    for (int i = 0; i < judged; i++) {
        ptrdiff_t j = eval_truth_find(t, ids[i]);
        int64_t eid = engine_id_of(c, ids[i]);
        if (j < 0 || !eid)
            return ms_err_set(err, MS_EINTERNAL, "query %lld: result %lld is not in the collection",
                              (long long)eval_truth_id(t, q), (long long)ids[i]);
        marked[i] = ids[i];
        if (eval_truth_relevant(t, q, (size_t)j))
            like[fb.n_like++] = eid;
        else
            unlike[fb.n_unlike++] = eid;
    }
    if ((rc = eval_score_query_judged(t, q, marked, judged, ids + judged, n - judged, c->k, &c->scores[q], err)))
        return rc;
    if ((rc = search_query(c, q, &fb, c->k, ids, scores, &n, err)))
        return rc;
    return eval_score_query_judged(t, q, marked, judged, ids, n, c->k, &c->after[q], err);
}

static void *run_worker(void *arg)
{
    run_ctx *c = arg;
    size_t most = (size_t)c->k + (size_t)c->feedback;
    int64_t *ids = malloc(most * sizeof *ids);
    float *scores = malloc(most * sizeof *scores);
    ms_err err = {0};
    if (!ids || !scores) {
        ms_err_set(&err, MS_ENOMEM, "out of memory for a search worker");
        run_fail(c, &err);
    }
    size_t n = eval_truth_count(c->t);
    while (!atomic_load(&c->failed)) {
        if (interrupted) {
            ms_err_set(&err, MS_EINTR, "interrupted");
            run_fail(c, &err);
            break;
        }
        size_t q = atomic_fetch_add(&c->next, 1);
        if (q >= n)
            break;
        /* Queries that cannot be scored (no labels, R = 0) are not searched. */
        int n_lab;
        eval_truth_labels(c->t, q, &n_lab);
        if (n_lab == 0 || eval_truth_relevant_count(c->t, q) == 0) {
            if (eval_score_query(c->t, q, NULL, 0, c->k, &c->scores[q], &err) ||
                (c->after && eval_score_query(c->t, q, NULL, 0, c->k, &c->after[q], &err)))
                run_fail(c, &err);
        } else if (c->feedback ? run_one_feedback(c, q, ids, scores, &err) : run_one(c, q, ids, scores, &err)) {
            run_fail(c, &err);
        }
        atomic_fetch_add(&c->done, 1);
    }
    free(ids), free(scores);
    return NULL;
}

static void show_progress(const char *what, size_t done, size_t total, double secs)
{
    double rate = secs > 0 ? (double)done / secs : 0;
    fprintf(stderr, "\r%s: %zu/%zu queries, %.0f/s   ", what, done, total, rate);
    fflush(stderr);
}

/* Searches every query of t on e with `threads` concurrent searches; with
 * feedback > 0, two rounds per query, the second's scores into after. */
static int run_queries(engine *e, const eval_truth *t, const id_map *map, int k, int qe, int feedback,
                       int threads, int progress, const char *what, eval_query_score *scores,
                       eval_query_score *after, ms_err *err)
{
    engine_stats st;
    int rc = engine_get_stats(e, &st);
    if (rc)
        return ms_err_set(err, rc, "cannot read the collection's statistics");
    run_ctx c = {.e = e, .t = t, .map = map, .k = k, .qe = qe, .dim = st.dim, .scores = scores,
                 .feedback = feedback, .after = feedback ? after : NULL};
    atomic_init(&c.next, 0);
    atomic_init(&c.done, 0);
    atomic_init(&c.failed, 0);
    pthread_mutex_init(&c.err_mu, NULL);
    size_t n = eval_truth_count(t);
    pthread_t tid[EVAL_MAX_THREADS];
    int started = 0;
    for (; started < threads; started++)
        if (pthread_create(&tid[started], NULL, run_worker, &c))
            break;
    if (started == 0)
        run_worker(&c);
    uint64_t t0 = ms_now_ns();
    while (progress && started && atomic_load(&c.done) < n && !atomic_load(&c.failed)) {
        show_progress(what, atomic_load(&c.done), n, ms_elapsed_ms(t0) / 1e3);
        usleep(250000);
    }
    for (int i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    if (progress) {
        show_progress(what, atomic_load(&c.done), n, ms_elapsed_ms(t0) / 1e3);
        fputc('\n', stderr);
    }
    pthread_mutex_destroy(&c.err_mu);
    if (atomic_load(&c.failed)) {
        if (err)
            *err = c.err;
        return c.err.code ? c.err.code : MS_EINTERNAL;
    }
    return 0;
}

/* ---- scratch collections for configurations with other vectors ---- */

typedef struct copy_ctx {
    store *src;
    const eval_truth *t;
    size_t next;
    int64_t *engine_id;       /* per truth index, filled by done() */
    size_t failed;
    ms_err first;
    int progress;
    uint64_t t0;
} copy_ctx;

typedef struct copy_item {
    size_t truth_index;
    uint8_t *bytes;
    store_meta meta;
} copy_item;

static int copy_next(void *ctx, engine_item *item, void **token, ms_err *err)
{
    copy_ctx *c = ctx;
    if (interrupted)
        return ms_err_set(err, MS_EINTR, "interrupted");
    if (c->next >= eval_truth_count(c->t))
        return 0;
    copy_item *ci = calloc(1, sizeof *ci);
    if (!ci)
        return ms_err_set(err, MS_ENOMEM, "out of memory copying the collection");
    ci->truth_index = c->next++;
    store_meta_init(&ci->meta);
    int64_t id = eval_truth_id(c->t, ci->truth_index);
    size_t len = 0;
    char mime[32];
    int rc = store_get_image(c->src, id, &ci->bytes, &len, mime, err);
    if (!rc)
        rc = store_get_meta(c->src, id, &ci->meta, err);
    if (rc) {
        free(ci->bytes);
        store_meta_free(&ci->meta);
        free(ci);
        return ms_err_prefix(err, "image %lld: ", (long long)id);
    }
    *item = (engine_item){.bytes = ci->bytes, .len = len, .meta = &ci->meta};
    *token = ci;
    return 1;
}

static void copy_done(void *ctx, void *token, const engine_item *item, const engine_item_result *res)
{
    (void)item;
    copy_ctx *c = ctx;
    copy_item *ci = token;
    if (res->err.code) {
        if (!c->failed++)
            c->first = res->err;
    } else {
        c->engine_id[ci->truth_index] = res->id;
    }
    if (c->progress && (ci->truth_index % 64 == 63 || ci->truth_index + 1 == eval_truth_count(c->t)))
        show_progress("re-embedding", ci->truth_index + 1, eval_truth_count(c->t),
                      ms_elapsed_ms(c->t0) / 1e3);
    free(ci->bytes);
    store_meta_free(&ci->meta);
    free(ci);
}

/* Maps the truth's ids to a scratch collection's by content hash, for a
 * kept collection reused from --workdir. */
static int map_by_hash(store *src, store *dst, const eval_truth *t, int64_t *engine_id, ms_err *err)
{
    size_t n = eval_truth_count(t);
    for (size_t i = 0; i < n; i++) {
        store_image_info info;
        int rc = store_get_info(src, eval_truth_id(t, i), &info, err);
        if (!rc)
            rc = store_find_sha256(dst, info.sha256, &engine_id[i], err);
        if (rc)
            return ms_err_prefix(err, "scratch collection does not match, image %lld: ",
                                 (long long)eval_truth_id(t, i));
    }
    return 0;
}

static int build_map(id_map *map, int64_t *engine_id, size_t n, ms_err *err)
{
    map->engine_id = engine_id;
    map->n = n;
    map->by_engine = malloc((n ? n : 1) * sizeof *map->by_engine);
    if (!map->by_engine)
        return ms_err_set(err, MS_ENOMEM, "out of memory mapping ids");
    for (size_t i = 0; i < n; i++)
        map->by_engine[i] = (id_pair){engine_id[i], i};
    if (n > 1)
        qsort(map->by_engine, n, sizeof *map->by_engine, cmp_pair);
    for (size_t i = 1; i < n; i++)
        if (map->by_engine[i].engine_id == map->by_engine[i - 1].engine_id)
            return ms_err_set(err, MS_EINTERNAL, "two images became one (id %lld) in the scratch collection",
                              (long long)map->by_engine[i].engine_id);
    return 0;
}

/* A file-name-safe digest of the source collection and the identity,
 * naming the kept collection. */
static void scratch_name(const char *db, const char *identity, char *out, size_t len)
{
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    for (const char *p = db; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h = (h ^ '\n') * 1099511628211ull;
    for (const char *p = identity; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    snprintf(out, len, "eval-%016llx.db", (unsigned long long)h);
}

static int remove_scratch(const char *dir, const char *db)
{
    static const char *suffix[] = {"", "-wal", "-shm", ".index", ".index.tmp"};
    char path[1200];
    for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
        snprintf(path, sizeof path, "%s%s", db, suffix[i]);
        unlink(path);
    }
    return dir ? rmdir(dir) : 0;
}

/* ---- one configuration ---- */


/* Whether the configuration makes other vectors than the collection's
 * (another model, pooling, GeM p or flip): it is then re-embedded. */
bool eval_config_changes_vectors(const eval_config *c)
{
    return c && (c->model_path || c->pool_set || c->gem_p > 0 || c->flip >= 0 || c->bf16 >= 0 ||
                 c->input_size > 0);
}

/* Engine options of a configuration: the command's model options, then
 * what the configuration changes. */
void eval_config_options(const eval_env *env, const eval_config *c, engine_options *o)
{
    cli_engine_options(&env->a->common, o);
    if (c && c->model_path)
        o->model_path = c->model_path;
    if (c && c->pool_set)
        o->model.pool = c->pool;
    if (c && c->gem_p > 0)
        o->model.gem_p = c->gem_p;
    if (c && c->flip >= 0)
        o->model.flip = c->flip;
    if (c && c->bf16 >= 0)
        o->model.bf16 = c->bf16;
    if (c && c->input_size > 0)
        o->model.input_size = c->input_size;
    if (eval_config_changes_vectors(c)) { /* the configuration and the flags say how vectors are made */
        o->pooling_from_collection = 0;
        o->prep_from_collection = 0;
    }
    if (c && c->center == 0)
        o->center = ENGINE_CENTER_OFF;
    else if (c && c->center == 1)
        o->center = ENGINE_CENTER_ON;
}

/* The identity vectors made with these options would carry. */
static int config_identity(const engine_options *o, char *out, size_t len, ms_err *err)
{
    char path[1024];
    int rc = engine_find_model(o->model_path, path, sizeof path, err);
    if (rc)
        return rc;
    model *m = NULL;
    if ((rc = model_load(path, &o->model, &m, err)))
        return ms_err_prefix(err, "%s: ", path);
    snprintf(out, len, "%s", model_identity(m));
    model_free(m);
    return 0;
}

int eval_config_identity(const eval_env *env, const eval_config *c, char *out, size_t len, ms_err *err)
{
    engine_options o;
    eval_config_options(env, c, &o);
    return config_identity(&o, out, len, err);
}

int eval_make_temp_dir(const char *prefix, char *out, size_t len, ms_err *err)
{
    const char *base = getenv("TMPDIR");
    if (!base || !base[0])
        base = "/tmp";
    snprintf(out, len, "%s/%s-XXXXXX", base, prefix);
    if (!mkdtemp(out))
        return ms_err_set(err, MS_EIO, "cannot create a temporary directory in %s: %s", base, strerror(errno));
    return 0;
}

void eval_scratch_remove(const char *workdir, const char *db, const char *identity)
{
    char name[64], path[1200];
    scratch_name(db, identity, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", workdir, name);
    remove_scratch(NULL, path);
}

/* A scratch collection ranks as the collection it copies: the same
 * centering policy. */
static int scratch_policy(const eval_env *env, engine *scratch, ms_err *err)
{
    engine_stats want, have;
    engine_get_stats(env->main, &want);
    engine_get_stats(scratch, &have);
    if (want.center_policy_off == have.center_policy_off)
        return 0;
    return engine_set_center_policy(scratch, want.center_policy_off, err);
}

/* Opens (building when needed) the scratch collection with options o and
 * maps its ids. *dir is the temporary directory to remove (NULL in workdir). */
static int open_scratch(const eval_env *env, engine_options *o, const char *identity,
                        engine **out, int64_t *engine_id, char *db, size_t db_len,
                        char **tmpdir, ms_err *err)
{
    const eval_args *a = env->a;
    char name[64];
    scratch_name(a->db, identity, name, sizeof name);
    *tmpdir = NULL;
    if (a->workdir) {
        if (mkdir(a->workdir, 0700) && errno != EEXIST)
            return ms_err_set(err, MS_EIO, "cannot create --workdir %s: %s", a->workdir, strerror(errno));
        snprintf(db, db_len, "%s/%s", a->workdir, name);
    } else {
        char tmpl[1024];
        int rc = eval_make_temp_dir("medsearch-eval", tmpl, sizeof tmpl, err);
        if (rc)
            return rc;
        *tmpdir = strdup(tmpl);
        if (!*tmpdir) {
            rmdir(tmpl);
            return ms_err_set(err, MS_ENOMEM, "out of memory");
        }
        snprintf(db, db_len, "%s/%s", tmpl, name);
    }
    o->db = db;
    o->index_path = NULL;
    engine_open_report rep;
    int rc = engine_open(o, out, &rep, err);
    if (rc)
        return ms_err_prefix(err, "scratch collection %s: ", db);
    size_t have = 0, n = eval_truth_count(env->truth);
    store_count(engine_store(*out), &have, NULL);
    if (have == n && !map_by_hash(engine_store(env->main), engine_store(*out), env->truth, engine_id, NULL)) {
        if (!a->quiet && !a->quiet_reuse)
            fprintf(stderr, "medsearch eval: reusing %s (%zu images)\n", db, n);
        if ((rc = scratch_policy(env, *out, err)) != 0) {
            engine_close(*out);
            *out = NULL;
        }
        return rc;
    }
    if (have > 0) {
        /* Interrupted, or made from another state of the collection: start
         * again rather than mix. */
        engine_close(*out);
        *out = NULL;
        remove_scratch(NULL, db);
        if ((rc = engine_open(o, out, &rep, err)))
            return ms_err_prefix(err, "scratch collection %s: ", db);
    }
    copy_ctx cc = {.src = engine_store(env->main), .t = env->truth, .engine_id = engine_id,
                   .progress = !a->quiet && isatty(2), .t0 = ms_now_ns()};
    engine_ingest_source src = {.next = copy_next, .done = copy_done, .ctx = &cc, .size_hint = n};
    if (!a->quiet)
        fprintf(stderr, "medsearch eval: re-embedding %zu images into %s\n", n, db);
    rc = engine_ingest_stream(*out, &src, err);
    if (cc.progress)
        fputc('\n', stderr);
    if (!rc && cc.failed)
        rc = ms_err_set(err, cc.first.code ? cc.first.code : MS_EINTERNAL,
                        "%zu images failed to re-embed; first: %s", cc.failed, cc.first.msg);
    if (!rc)
        rc = scratch_policy(env, *out, err);
    if (!rc) /* as `medsearch ingest` does: centred before the first search */
        rc = engine_update_center(*out, 0, NULL, err);
    if (!rc)
        rc = engine_flush(*out, err);
    if (rc) {
        engine_close(*out);
        *out = NULL;
    }
    return rc;
}

int evaluate_config(const eval_env *env, const eval_config *c, eval_outcome *res, ms_err *err)
{
    const eval_args *a = env->a;
    size_t n = eval_truth_count(env->truth);
    memset(res, 0, sizeof *res);
    /* What search would do: a configuration without qe= (and the command
     * without --qe) expands as the collection says, also when its vectors
     * are re-embedded into a scratch collection. */
    res->qe = c && c->qe >= 0 ? c->qe : engine_resolve_qe(env->main, a->qe);
    res->qe_from_collection = !(c && c->qe >= 0) && a->qe == ENGINE_QE_COLLECTION;
    res->scores = calloc(n ? n : 1, sizeof *res->scores);
    if (!res->scores)
        return ms_err_set(err, MS_ENOMEM, "out of memory for %zu query scores", n);
    engine_options o;
    eval_config_options(env, c, &o);
    engine *e = env->main;
    id_map map = {0};
    int64_t *engine_id = NULL;
    char *tmpdir = NULL, db[1200] = "";
    int rc = 0;
    engine_stats st;
    if ((rc = engine_get_stats(env->main, &st)))
        goto out;
    snprintf(res->identity, sizeof res->identity, "%s", st.model_identity);
    if (eval_config_changes_vectors(c)) {
        char want[256];
        if ((rc = config_identity(&o, want, sizeof want, err)))
            goto out;
        if (strcmp(want, res->identity)) {
            snprintf(res->identity, sizeof res->identity, "%s", want);
            engine_id = calloc(n ? n : 1, sizeof *engine_id);
            if (!engine_id) {
                rc = ms_err_set(err, MS_ENOMEM, "out of memory");
                goto out;
            }
            if ((rc = open_scratch(env, &o, want, &e, engine_id, db, sizeof db, &tmpdir, err)))
                goto out;
            if ((rc = build_map(&map, engine_id, n, err)))
                goto out;
        }
    }
    if (e == env->main && o.center != ENGINE_CENTER_AUTO) {
        /* The same vectors, ranked without the center or with one whatever
         * the policy: a second, read-only view of the collection (no index
         * file, nothing written). */
        o.no_model = 1;
        o.db = a->db;
        engine_open_report rep;
        if ((rc = engine_open(&o, &e, &rep, err))) {
            e = NULL;
            goto out;
        }
    }
    engine_stats cst;
    engine_get_stats(e, &cst);
    res->center_off = cst.center_off;
    res->center_from = cst.center_from;
    uint64_t t0 = ms_now_ns();
    char what[300];
    snprintf(what, sizeof what, "eval %s", c && c->text[0] ? c->text : "");
    rc = run_queries(e, env->truth, &map, a->k, res->qe, 0, a->threads, !a->quiet && isatty(2), what,
                     res->scores, NULL, err);
    res->seconds = ms_elapsed_ms(t0) / 1e3;
    for (size_t i = 0; i < n; i++)
        res->searched += res->scores[i].scored;
    if (!rc)
        rc = eval_summarise(env->truth, res->scores, n, a->k, &res->summary, err);
out:
    if (e != env->main && e)
        engine_close(e);
    if (tmpdir) {
        remove_scratch(tmpdir, db);
        free(tmpdir);
    }
    free(map.by_engine);
    free(engine_id);
    return rc;
}

/* --feedback: the collection as stored, searched in two rounds per query;
 * res[0] scores the first round, res[1] the second, on the same residual
 * galleries. On failure the caller still frees both. */
static int evaluate_feedback(const eval_env *env, eval_outcome res[2], ms_err *err)
{
    const eval_args *a = env->a;
    size_t n = eval_truth_count(env->truth);
    memset(res, 0, 2 * sizeof *res);
    engine_stats st;
    int rc = engine_get_stats(env->main, &st);
    if (rc)
        return ms_err_set(err, rc, "cannot read the collection's statistics");
    for (int i = 0; i < 2; i++) {
        res[i].qe = engine_resolve_qe(env->main, a->qe);
        res[i].qe_from_collection = a->qe == ENGINE_QE_COLLECTION;
        snprintf(res[i].identity, sizeof res[i].identity, "%s", st.model_identity);
        res[i].center_off = st.center_off;
        res[i].center_from = st.center_from;
        if (!(res[i].scores = calloc(n ? n : 1, sizeof *res[i].scores)))
            return ms_err_set(err, MS_ENOMEM, "out of memory for %zu query scores", n);
    }
    id_map map = {0};
    uint64_t t0 = ms_now_ns();
    rc = run_queries(env->main, env->truth, &map, a->k, res[0].qe, a->feedback, a->threads,
                     !a->quiet && isatty(2), "eval --feedback", res[0].scores, res[1].scores, err);
    /* Two searches for every query with a relevant image, whether or not
     * its judged images left one to score: both reports give the time of
     * all of them. */
    size_t searches = 0;
    for (size_t q = 0; q < n; q++) {
        int n_lab;
        eval_truth_labels(env->truth, q, &n_lab);
        searches += n_lab && eval_truth_relevant_count(env->truth, q) ? 2 : 0;
    }
    for (int i = 0; i < 2 && rc == 0; i++) {
        res[i].seconds = ms_elapsed_ms(t0) / 1e3;
        res[i].searched = searches;
        rc = eval_summarise(env->truth, res[i].scores, n, a->k, &res[i].summary, err);
    }
    return rc;
}

void outcome_free(eval_outcome *r)
{
    free(r->scores);
    eval_summary_free(&r->summary);
}

/* ---- output ---- */

static void metric_name(const eval_summary *s, int c, char *out, size_t len)
{
    snprintf(out, len, "P@%d", s->cuts[c]);
}

json_t *jnum(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static json_t *summary_json(const eval_summary *s, const eval_outcome *r)
{
    json_t *o = json_object();
    json_object_set_new(o, "images", json_integer((json_int_t)s->images));
    json_object_set_new(o, "model", cli_json_text(r->identity));
    json_object_set_new(o, "qe", json_integer(r->qe));
    json_object_set_new(o, "qe_from_collection", json_boolean(r->qe_from_collection));
    json_object_set_new(o, "center", json_pack("{s:b,s:I}", "on", r->center_from > 0, "from",
                                               (json_int_t)r->center_from));
    json_object_set_new(o, "queries", json_pack("{s:I,s:I,s:I,s:I}", "total", (json_int_t)s->queries,
                                                "scored", (json_int_t)s->scored,
                                                "unlabelled", (json_int_t)s->unlabelled,
                                                "no_relevant", (json_int_t)s->no_relevant));
    json_t *m = json_object(), *ch = json_object();
    char name[32];
    for (int c = 0; c < EVAL_N_CUTS; c++)
        if (s->cuts[c]) {
            metric_name(s, c, name, sizeof name);
            json_object_set_new(m, name, jnum(s->p[c]));
            json_object_set_new(ch, name, jnum(s->chance_p[c]));
        }
    snprintf(name, sizeof name, "mAP@%d", s->k);
    json_object_set_new(m, name, jnum(s->map));
    json_object_set_new(ch, name, jnum(s->chance_map));
    json_object_set_new(o, "metrics", m);
    json_object_set_new(o, "chance", ch);
    json_t *labels = json_array();
    char pk[32], cpk[48];
    snprintf(pk, sizeof pk, "P@%d", s->k);
    snprintf(cpk, sizeof cpk, "chance_P@%d", s->k);
    for (size_t i = 0; i < s->n_labels; i++) {
        json_t *l = json_object();
        json_object_set_new(l, "label", json_string(s->labels[i].label));
        json_object_set_new(l, "queries", json_integer((json_int_t)s->labels[i].queries));
        json_object_set_new(l, pk, jnum(s->labels[i].p_k));
        json_object_set_new(l, cpk, jnum(s->labels[i].chance_p_k));
        json_array_append_new(labels, l);
    }
    json_object_set_new(o, "per_label", labels);
    json_object_set_new(o, "timing", json_pack("{s:f,s:f,s:I}", "seconds", r->seconds,
                                               "queries_per_s", r->seconds > 0 ? (double)r->searched / r->seconds : 0.0,
                                               "searched", (json_int_t)r->searched));
    return o;
}


int pair_outcomes(const eval_outcome *x, const eval_outcome *y, size_t n, eval_pairs *p, ms_err *err)
{
    double *a = malloc((n ? n : 1) * 4 * sizeof *a);
    if (!a)
        return ms_err_set(err, MS_ENOMEM, "out of memory pairing queries");
    double *b = a + n, *pa = a + 2 * n, *pb = a + 3 * n;
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (x->scores[i].scored && y->scores[i].scored) {
            a[m] = x->scores[i].ap;
            b[m] = y->scores[i].ap;
            pa[m] = x->scores[i].p[EVAL_N_CUTS - 1];
            pb[m] = y->scores[i].p[EVAL_N_CUTS - 1];
            m++;
        }
    int rc = eval_paired_diff(a, b, m, &p->ap, err);
    if (!rc)
        rc = eval_paired_diff(pa, pb, m, &p->pk, err);
    free(a);
    return rc;
}

static json_t *paired_json(const eval_paired *p)
{
    return json_pack("{s:I,s:o,s:o,s:o,s:o}", "n", (json_int_t)p->n, "a", jnum(p->mean_a),
                     "b", jnum(p->mean_b), "diff", jnum(p->diff), "se", jnum(p->se));
}

json_t *protocol_json(const eval_args *a)
{
    return json_pack("{s:s,s:i,s:s,s:s,s:s}", "rule", eval_rule_name(a->rule), "k", a->k, "gallery",
                     "every other image except the query's patient's", "similarity",
                     "cosine (after subtracting the collection's center when it has one)", "ties", "smaller id first");
}

static json_t *report_json(const eval_args *a, const eval_outcome *r, int nr, const eval_pairs *pairs)
{
    json_t *root;
    if (nr == 1) {
        root = summary_json(&r[0].summary, &r[0]);
    } else {
        root = json_object();
        json_t *cfgs = json_array();
        for (int i = 0; i < nr; i++) {
            json_t *c = summary_json(&r[i].summary, &r[i]);
            json_object_set_new(c, "config", cli_json_text(a->cfg[i].text));
            json_array_append_new(cfgs, c);
        }
        json_object_set_new(root, "configs", cfgs);
        char ap[32], pk[32];
        snprintf(ap, sizeof ap, "mAP@%d", a->k);
        snprintf(pk, sizeof pk, "P@%d", a->k);
        json_object_set_new(root, "paired", json_pack("{s:o,s:o,s:s}", ap, paired_json(&pairs->ap),
                                                      pk, paired_json(&pairs->pk),
                                                      "diff", "B - A over queries scored by both"));
    }
    json_object_set_new(root, "db", cli_json_text(a->db));
    json_object_set_new(root, "protocol", protocol_json(a));
    return root;
}

static void qe_text(const eval_outcome *r, char *out, size_t len)
{
    if (r->qe)
        snprintf(out, len, "with the top %d%s", r->qe, r->qe_from_collection ? " (the collection's default)" : "");
    else
        snprintf(out, len, "off");
}

/* How the vectors were compared, for the reports. */
static void center_text(const eval_outcome *r, char *out, size_t len)
{
    if (r->center_from)
        snprintf(out, len, "centred cosine (center: mean of %zu vectors)", r->center_from);
    else if (r->center_off)
        snprintf(out, len, "plain cosine (centering off)");
    else
        snprintf(out, len, "plain cosine (the collection has no center)");
}

/* Labels and the model's file name are stored text: any of them may hold
 * control characters, which reach the terminal only as '?'. */
typedef char shown_buf[1024];

static const char *shown(const char *s, shown_buf buf)
{
    return ms_text_printable(buf, sizeof(shown_buf), s);
}

static void print_summary_text(FILE *f, const eval_summary *s, const eval_outcome *r)
{
    shown_buf b;
    fprintf(f, "queries: %zu images, %zu scored, %zu without labels, %zu without a relevant image\n",
            s->images, s->scored, s->unlabelled, s->no_relevant);
    fprintf(f, "\n  %-8s %8s %8s\n", "metric", "value", "chance");
    char name[32];
    for (int c = 0; c < EVAL_N_CUTS; c++)
        if (s->cuts[c]) {
            metric_name(s, c, name, sizeof name);
            fprintf(f, "  %-8s %8.4f %8.4f\n", name, s->p[c], s->chance_p[c]);
        }
    snprintf(name, sizeof name, "mAP@%d", s->k);
    fprintf(f, "  %-8s %8.4f %8.4f\n", name, s->map, s->chance_map);
    if (s->n_labels) {
        char pk[32];
        snprintf(pk, sizeof pk, "P@%d", s->k);
        fprintf(f, "\n  %-24s %8s %8s %8s\n", "label", "queries", pk, "chance");
        for (size_t i = 0; i < s->n_labels; i++)
            fprintf(f, "  %-24s %8zu %8.4f %8.4f\n", shown(s->labels[i].label, b), s->labels[i].queries,
                    s->labels[i].p_k, s->labels[i].chance_p_k);
    }
    fprintf(f, "\ntime: %.2f s for %zu searches (%.0f queries/s)\n", r->seconds, r->searched,
            r->seconds > 0 ? (double)r->searched / r->seconds : 0.0);
}

static void print_paired_text(FILE *f, const char *name, const eval_paired *p)
{
    fprintf(f, "  %-8s %8.4f %8.4f %+9.4f %8.4f\n", name, p->mean_a, p->mean_b, p->diff, p->se);
}

static void print_text(const eval_args *a, const eval_outcome *r, int nr, const eval_pairs *pairs)
{
    shown_buf b;
    printf("collection: %s\n", shown(a->db, b));
    printf("protocol: rule %s, k %d, gallery = every other image except the query's patient's,"
           " cosine, ties to the smaller id\n", eval_rule_name(a->rule), a->k);
    for (int i = 0; i < nr; i++) {
        if (nr > 1)
            printf("\n== %s: %s ==\n", i ? "B" : "A", a->cfg[i].text[0] ? shown(a->cfg[i].text, b) : "(as stored)");
        char qe[64];
        qe_text(&r[i], qe, sizeof qe);
        char center[96];
        center_text(&r[i], center, sizeof center);
        printf("model: %s, query expansion %s, %s\n", shown(r[i].identity, b), qe, center);
        print_summary_text(stdout, &r[i].summary, &r[i]);
    }
    if (nr > 1) {
        char ap[32], pk[32];
        snprintf(ap, sizeof ap, "mAP@%d", a->k);
        snprintf(pk, sizeof pk, "P@%d", a->k);
        printf("\npaired difference B - A over %zu queries scored by both (SE = sd / sqrt(n)):\n",
               pairs->ap.n);
        printf("  %-8s %8s %8s %9s %8s\n", "metric", "A", "B", "B - A", "SE");
        print_paired_text(stdout, ap, &pairs->ap);
        print_paired_text(stdout, pk, &pairs->pk);
    }
}

/* A label in a Markdown table cell: printable, each '|' escaped so that the
 * cell stays one cell. */
static void md_cell(FILE *f, const char *s)
{
    shown_buf b;
    for (const char *p = shown(s, b); *p; p++) {
        if (*p == '|')
            fputc('\\', f);
        fputc(*p, f);
    }
}

/* A code span in running text: printable, between one backtick, or two
 * when the text holds one. */
static void md_code(FILE *f, const char *s)
{
    shown_buf b;
    const char *fence = strchr(s, '`') ? "``" : "`", *pad = fence[1] ? " " : "";
    fprintf(f, "%s%s%s%s%s", fence, pad, shown(s, b), pad, fence);
}

static void md_summary(FILE *f, const eval_summary *s, const eval_outcome *r)
{
    char qe[64], center[96];
    qe_text(r, qe, sizeof qe);
    center_text(r, center, sizeof center);
    fputs("Model ", f);
    md_code(f, r->identity);
    fprintf(f, ", query expansion %s, %s. %zu images; %zu queries scored, "
               "%zu without labels and %zu without a relevant image left out.\n\n",
            qe, center, s->images, s->scored, s->unlabelled, s->no_relevant);
    fprintf(f, "| metric | value | chance |\n| --- | ---: | ---: |\n");
    char name[32];
    for (int c = 0; c < EVAL_N_CUTS; c++)
        if (s->cuts[c]) {
            metric_name(s, c, name, sizeof name);
            fprintf(f, "| %s | %.4f | %.4f |\n", name, s->p[c], s->chance_p[c]);
        }
    fprintf(f, "| mAP@%d | %.4f | %.4f |\n\n", s->k, s->map, s->chance_map);
    if (s->n_labels) {
        fprintf(f, "| label | queries | P@%d | chance |\n| --- | ---: | ---: | ---: |\n", s->k);
        for (size_t i = 0; i < s->n_labels; i++) {
            fputs("| ", f);
            md_cell(f, s->labels[i].label);
            fprintf(f, " | %zu | %.4f | %.4f |\n", s->labels[i].queries, s->labels[i].p_k,
                    s->labels[i].chance_p_k);
        }
        fputc('\n', f);
    }
}

static void write_markdown(FILE *f, const eval_args *a, const eval_outcome *r, int nr, const eval_pairs *pairs)
{
    fputs("# Retrieval evaluation of ", f);
    md_code(f, a->db);
    fputs("\n\n", f);
    fprintf(f, "Protocol: every labelled image is a query; its gallery is every other image except "
               "those of the same patient; cosine similarity, ties to the smaller id; relevance rule "
               "`%s`; cut-off k = %d. Chance = expected value under a random ranking of the same "
               "gallery.\n\n", eval_rule_name(a->rule), a->k);
    for (int i = 0; i < nr; i++) {
        if (nr > 1) {
            fprintf(f, "## %s: ", i ? "B" : "A");
            md_code(f, a->cfg[i].text[0] ? a->cfg[i].text : "(as stored)");
            fputs("\n\n", f);
        }
        md_summary(f, &r[i].summary, &r[i]);
    }
    if (nr > 1) {
        fprintf(f, "## Paired difference B - A\n\n%zu queries scored by both; SE = sd of the "
                   "per-query differences / sqrt(n).\n\n", pairs->ap.n);
        fprintf(f, "| metric | A | B | B - A | SE |\n| --- | ---: | ---: | ---: | ---: |\n");
        fprintf(f, "| mAP@%d | %.4f | %.4f | %+.4f | %.4f |\n", a->k, pairs->ap.mean_a, pairs->ap.mean_b,
                pairs->ap.diff, pairs->ap.se);
        fprintf(f, "| P@%d | %.4f | %.4f | %+.4f | %.4f |\n", a->k, pairs->pk.mean_a, pairs->pk.mean_b,
                pairs->pk.diff, pairs->pk.se);
    }
}

static void write_per_query(FILE *f, const eval_args *a, const eval_truth *t, const eval_outcome *r, int nr)
{
    fprintf(f, "id,R,G");
    for (int i = 0; i < nr; i++) {
        const char *sfx = nr == 1 ? "" : i ? "_B" : "_A";
        fprintf(f, ",scored%s,AP@%d%s,P@%d%s,chance_AP@%d%s", sfx, a->k, sfx, a->k, sfx, a->k, sfx);
    }
    fputc('\n', f);
    for (size_t q = 0; q < eval_truth_count(t); q++) {
        const eval_query_score *s0 = &r[0].scores[q];
        fprintf(f, "%lld,%zu,%zu", (long long)s0->id, s0->R, s0->G);
        for (int i = 0; i < nr; i++) {
            const eval_query_score *s = &r[i].scores[q];
            if (s->scored)
                fprintf(f, ",1,%.17g,%.17g,%.17g", s->ap, s->p[EVAL_N_CUTS - 1], s->chance_ap);
            else
                fprintf(f, ",0,,,");
        }
        fputc('\n', f);
    }
}

/* --out and --per-query, opened before the evaluation (cli_out_open). */
typedef struct eval_reports {
    cli_out_file md, csv;
} eval_reports;

static int reports_open(const eval_args *a, eval_reports *rp)
{
    memset(rp, 0, sizeof *rp);
    const char *paths[2] = {a->out_md, a->per_query};
    cli_out_file *files[2] = {&rp->md, &rp->csv};
    for (int i = 0; i < 2; i++)
        if (paths[i] && cli_out_open(files[i], paths[i])) {
            fprintf(stderr, "medsearch eval: cannot write %s: %s\n", paths[i], strerror(errno));
            cli_out_close(&rp->md, 0);
            return -1;
        }
    return 0;
}

/* Puts the written reports in place (ok) or removes them. Returns 0 or -1, having said why. */
static int reports_close(const eval_args *a, eval_reports *rp, int ok)
{
    const char *paths[2] = {a->out_md, a->per_query};
    cli_out_file *files[2] = {&rp->md, &rp->csv};
    int rc = 0;
    for (int i = 0; i < 2; i++)
        if (files[i]->f && cli_out_close(files[i], ok) && ok) {
            fprintf(stderr, "medsearch eval: cannot write %s: %s\n", paths[i], strerror(errno));
            rc = -1;
        }
    return rc;
}

/* ---- the command ---- */

int eval_exit_code(int rc)
{
    if (rc == MS_EINTR)
        return 128 + (interrupted ? (int)interrupted : SIGINT);
    return rc == MS_ENOTFOUND || rc == MS_EDB || rc == MS_EIO || rc == MS_ECONFLICT ? EXIT_ENV : 1;
}

int cmd_eval(int argc, char **argv)
{
    eval_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0)
        return rc;
    eval_env env = {.a = &a};
    ms_err err = {0};
    /* Evaluating must not create an empty collection as a side effect. */
    if (cli_collection_missing(a.db)) {
        fprintf(stderr, "medsearch eval: no collection at %s (%s): ingest labelled images first, "
                        "e.g. medsearch ingest DIR --labels labels.csv --db %s\n", a.db, strerror(errno), a.db);
        return 1;
    }
    /* The stored vectors are the queries: no model is needed unless a
     * configuration re-embeds. */
    engine_options o;
    eval_config_options(&env, NULL, &o);
    o.no_model = 1;
    engine_open_report rep;
    cli_command cmd = EVAL_CMD_BASE;
    if ((rc = cli_open(&cmd, &o, &env.main, &rep, 0)))
        return rc;
    eval_reports reports;
    if (reports_open(&a, &reports)) {
        engine_close(env.main);
        return EXIT_ENV;
    }
    eval_catch_signals(1);
    eval_truth *truth = NULL;
    eval_outcome res[2];
    memset(res, 0, sizeof res);
    int nr = a.compare || a.feedback ? 2 : 1, code = 0;
    eval_pairs pairs = {0};
    if ((rc = load_truth(env.main, a.rule, &truth, &err))) {
        fprintf(stderr, "medsearch eval: %s: %s\n", a.db, err.msg);
        code = eval_exit_code(rc);
        goto out;
    }
    env.truth = truth;
    if (a.tune) {
        nr = 0;
        code = eval_tune(&env);
        goto out;
    }
    if (a.feedback && (rc = evaluate_feedback(&env, res, &err))) {
        fprintf(stderr, "medsearch eval: %s\n", err.msg);
        code = eval_exit_code(rc);
        goto out;
    }
    for (int i = 0; i < nr && !a.feedback; i++)
        if ((rc = evaluate_config(&env, a.compare ? &a.cfg[i] : NULL, &res[i], &err))) {
            fprintf(stderr, "medsearch eval: %s%s%s\n", a.compare ? a.cfg[i].text : "",
                    a.compare ? ": " : "", err.msg);
            code = eval_exit_code(rc);
            goto out;
        }
    if (res[0].summary.scored == 0) {
        fprintf(stderr, "medsearch eval: %s: no query could be scored (%zu images, %zu without labels, "
                        "%zu without a relevant image); ingest with --labels\n",
                a.db, res[0].summary.images, res[0].summary.unlabelled, res[0].summary.no_relevant);
        code = 1;
        goto out;
    }
    if (nr == 2 && (rc = pair_outcomes(&res[0], &res[1], eval_truth_count(truth), &pairs, &err))) {
        fprintf(stderr, "medsearch eval: %s\n", err.msg);
        code = 1;
        goto out;
    }
    if (a.json) {
        json_t *root = report_json(&a, res, nr, &pairs);
        if (root && a.feedback)
            json_object_set_new(root, "feedback",
                                json_pack("{s:i, s:f, s:f}", "judged", a.feedback, "like_weight",
                                          (double)ENGINE_FEEDBACK_LIKE, "unlike_weight",
                                          (double)ENGINE_FEEDBACK_UNLIKE));
        if (!root || json_dumpf(root, stdout, JSON_INDENT(1) | JSON_REAL_PRECISION(17)) ||
            fputc('\n', stdout) == EOF) {
            fprintf(stderr, "medsearch eval: cannot write the JSON report\n");
            code = 1;
        }
        json_decref(root);
    } else if (!report_to_stdout(&a)) {
        print_text(&a, res, nr, &pairs);
    }
    if (reports.md.f)
        write_markdown(reports.md.f, &a, res, nr, &pairs);
    if (reports.csv.f)
        write_per_query(reports.csv.f, &a, truth, res, nr);
    if (reports_close(&a, &reports, 1))
        code = EXIT_ENV;
out:
    reports_close(&a, &reports, 0); /* after a failure: removes what was begun */
    eval_catch_signals(0);
    for (int i = 0; i < nr; i++)
        outcome_free(&res[i]);
    eval_truth_free(truth);
    engine_close(env.main);
    return code;
}
