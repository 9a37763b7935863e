/*
 * eval_tune.c - `medsearch eval --tune [--vectors] [--apply]`: a
 * collection's defaults chosen from evidence on its own labels.
 *
 * What a collection can change without re-embedding is how it searches: its
 * query-expansion default (`medsearch qe`) and its centering policy
 * (`medsearch center`). --tune evaluates query expansion 0, 1, 2, 3 and 5,
 * each with centering on and off, on the same queries as `medsearch eval`
 * (a collection too small to have a center, under ENGINE_CENTER_MIN images,
 * ranks the same either way: only query expansion varies). Each candidate is
 * paired with the collection's current settings, query by query.
 *
 * --vectors also varies how the vectors are made from the collection's own
 * model: pooling (the collection's own, and GeM of the last feature map or,
 * for a GeM collection, the graph's own output) and
 * flip (each image also embedded mirrored), at the collection's input size.
 * Each variant is re-embedded once into a scratch collection (evaluate_config
 * keeps it in a work folder, so its ten searches reuse it) and searched with
 * every query-expansion and centering candidate. Which of these wins depends
 * on the model (docs/evaluation.md: GeM and flip help an ImageNet model on
 * X-rays, and cost a model fine-tuned on them), hence measuring, not a
 * global default.
 *
 * Why a margin: the candidates are chosen on the very queries they are
 * scored on, so the best of ten (or forty) looks better than it is; on a
 * small collection a difference of one standard error is what luck gives.
 * The best candidate is therefore recommended only when it beats the
 * current settings by more than two standard errors of the paired
 * difference of AP@k; otherwise the current settings stay. --apply records
 * the recommendation, exactly as `medsearch reembed`, `medsearch qe N` and
 * `medsearch center auto|off` would.
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/eval_internal.h"
#include "util/text.h"

static const int TUNE_QE[] = {0, 1, 2, 3, 5};
#define TUNE_N_QE ((int)(sizeof TUNE_QE / sizeof TUNE_QE[0]))
/* The stored vectors, then pooling {output, gem} x flip {off, on}. */
#define TUNE_MAX_VECTORS 5
#define TUNE_MAX (TUNE_MAX_VECTORS * 2 * TUNE_N_QE + 1) /* + a current qe outside the list */
/* How many standard errors a change must gain to be recommended. */
#define TUNE_MARGIN_SE 2.0

/* One way of making the vectors. */
typedef struct vectors {
    eval_config cfg;          /* nothing set for the stored ones */
    char identity[256];       /* the model identity they carry */
    const char *label;        /* its pooling part: "output", "gem3-flip" (points into identity) */
    int stored;
} vectors;

typedef struct candidate {
    int vec;                  /* index into tune_state.v */
    int center;               /* 1 centred, 0 plain cosine */
    int qe;
    int is_now;               /* the collection's current settings */
    eval_outcome out;
    eval_pairs vs_now;        /* B = this candidate, A = the current settings */
} candidate;

typedef struct tune_state {
    eval_args args;           /* the command's, with the work folder of --vectors */
    eval_env env;
    char workdir[1024];       /* "" when none; own_workdir: made here, removed at the end */
    int own_workdir;
    vectors v[TUNE_MAX_VECTORS];
    int nv;
    char not_tried[600];      /* a pooling the model cannot make, and why; "" when none */
    candidate c[TUNE_MAX];
    int n;
    int now, best, pick;      /* indexes into c */
    int significant;          /* best beats now by the margin */
    eval_pairs best_vs_pick;  /* B = best, A = pick (when they differ) */
    struct tier_step {        /* each tier's best against the pick before it */
        int from, to, taken;
        eval_paired ap;
    } steps[3];
    int n_steps;
    int center_varies;        /* the collection is large enough to have a center */
    int now_center, now_qe, policy_off;
} tune_state;

static const char *center_name(int center)
{
    return center ? "centred" : "plain";
}

static const char *pool_part(const char *identity)
{
    const char *p = strrchr(identity, ':');
    return p ? p + 1 : identity;
}

/* The length of an identity's "name:sha256" (what precedes ":dim:pooling";
 * the file name may itself hold ':'), or 0 when it has no such form. */
static size_t model_part_len(const char *identity)
{
    const char *part = strrchr(identity, ':');
    if (!part)
        return 0;
    for (const char *p = part - 1; p >= identity; p--)
        if (*p == ':')
            return (size_t)(p - identity);
    return 0;
}

/* Whether two identities are of the same model file (name and digest). */
static bool same_model(const char *x, const char *y)
{
    size_t n = model_part_len(x);
    return n > 0 && n == model_part_len(y) && !memcmp(x, y, n);
}

/* Whether two identities record the same normalisation: the same "-norm"
 * digest, or none (the model's own) in both. Mean and scale cannot be read
 * back from the digest, so the command must be given them again. */
static bool same_normalisation(const char *x, const char *y)
{
    const char *nx = strstr(pool_part(x), "-norm"), *ny = strstr(pool_part(y), "-norm");
    if (!nx || !ny)
        return !nx && !ny;
    return !strncmp(nx, ny, 13); /* "-norm" and 8 hex digits */
}

/* The variants of --vectors: the collection's model at its input size (and
 * bf16 and GeM p), pooled as the collection is or by GeM, with and without
 * flip; those equal to the stored vectors are not repeated. */
static int list_vector_variants(tune_state *t, const engine_stats *st, ms_err *err)
{
    const eval_args *a = &t->args;
    model_options stored;
    model_options_init(&stored);
    if (model_options_from_identity(st->model_identity, &stored))
        return ms_err_set(err, MS_EINVAL, "the collection's model identity '%s' cannot be read back",
                          st->model_identity);
    /* The collection's own pooling against GeM, or a GeM collection's
     * against the graph's output (its average pool, for the models GeM
     * applies to); the prototype's top-left cell is a baseline, never worth
     * keeping, so the graph's output stands in for it. */
    model_pool own = stored.pool == MODEL_POOL_TOPLEFT ? MODEL_POOL_OUTPUT : stored.pool;
    const model_pool pools[] = {own, own == MODEL_POOL_GEM ? MODEL_POOL_OUTPUT : MODEL_POOL_GEM};
    for (int p = 0; p < 2; p++)
        for (int flip = 0; flip <= 1; flip++) {
            vectors *v = &t->v[t->nv];
            memset(v, 0, sizeof *v);
            eval_config *c = &v->cfg;
            c->qe = c->center = -1;
            c->pool_set = 1;
            c->pool = pools[p];
            c->flip = flip;
            c->bf16 = a->common.model_opt.bf16 ? -1 : stored.bf16;
            c->input_size = a->common.input_size ? 0 : stored.input_size;
            if (pools[p] == MODEL_POOL_GEM && a->common.gem_p == 0 && stored.pool == MODEL_POOL_GEM)
                c->gem_p = stored.gem_p;
            int rc = eval_config_identity(&t->env, c, v->identity, sizeof v->identity, err);
            if (rc == MS_EUNSUPPORTED && p > 0) {
                /* a feature not behind a global pool (a projection or
                 * classifier head): only its own pooling is tried */
                snprintf(t->not_tried, sizeof t->not_tried, "%s: %s", model_pool_name(pools[p]), err->msg);
                *err = (ms_err){0};
                break;
            }
            if (rc)
                return rc;
            if (!same_model(v->identity, st->model_identity))
                return ms_err_set(err, MS_ECONFLICT,
                                  "--vectors re-embeds with the collection's own model, and the model given "
                                  "(%s) is not it (%s): give that model with --model",
                                  v->identity, st->model_identity);
            if (!same_normalisation(v->identity, st->model_identity))
                return ms_err_set(err, MS_EINVAL,
                                  "the collection was embedded with another mean or scale than this command's "
                                  "(%s against %s): give the same --mean/--scale/--std as at ingest",
                                  v->identity, st->model_identity);
            bool seen = false;
            for (int i = 0; i < t->nv; i++)
                seen = seen || !strcmp(t->v[i].identity, v->identity);
            if (seen)
                continue;
            v->label = pool_part(v->identity);
            t->nv++;
        }
    return 0;
}

static int list_vectors(tune_state *t, const engine_stats *st, ms_err *err)
{
    vectors *v = &t->v[0];
    memset(v, 0, sizeof *v);
    v->cfg.flip = v->cfg.bf16 = v->cfg.qe = v->cfg.center = -1; /* as stored */
    v->stored = 1;
    snprintf(v->identity, sizeof v->identity, "%s", st->model_identity);
    v->label = pool_part(v->identity);
    t->nv = 1;
    return t->args.tune_vectors ? list_vector_variants(t, st, err) : 0;
}

static candidate *add_candidate(tune_state *t, int vec, int center, int qe)
{
    candidate *c = &t->c[t->n++];
    memset(c, 0, sizeof *c);
    c->vec = vec;
    c->center = center;
    c->qe = qe;
    return c;
}

/* The candidates, the current settings among them. Centred ones come first
 * for each vectors, so a scratch collection is built with its center. */
static void list_candidates(tune_state *t, const engine_stats *st)
{
    t->center_varies = st->images >= ENGINE_CENTER_MIN;
    t->now_center = st->center_from > 0;
    t->now_qe = st->search_qe;
    t->policy_off = st->center_policy_off;
    t->n = 0;
    for (int v = 0; v < t->nv; v++)
        for (int centred = 1; centred >= 0; centred--) {
            if (!t->center_varies && centred != t->now_center)
                continue;
            for (int i = 0; i < TUNE_N_QE; i++)
                add_candidate(t, v, centred, TUNE_QE[i]);
        }
    /* A current qe outside the list (medsearch qe 7) is a candidate too. */
    t->now = -1;
    for (int i = 0; i < t->n; i++)
        if (t->c[i].vec == 0 && t->c[i].center == t->now_center && t->c[i].qe == t->now_qe)
            t->now = i;
    if (t->now < 0) {
        add_candidate(t, 0, t->now_center, t->now_qe);
        t->now = t->n - 1;
    }
    t->c[t->now].is_now = 1;
}

static void candidate_text(const tune_state *t, const candidate *c, char *out, size_t len)
{
    if (t->nv > 1)
        snprintf(out, len, "vectors=%s,center=%s,qe=%d", t->v[c->vec].label, c->center ? "on" : "off", c->qe);
    else
        snprintf(out, len, "center=%s,qe=%d", c->center ? "on" : "off", c->qe);
}

static int evaluate_candidates(tune_state *t, ms_err *err)
{
    for (int i = 0; i < t->n; i++) {
        candidate *c = &t->c[i];
        eval_config cfg = t->v[c->vec].cfg;
        cfg.qe = c->qe;
        /* The collection's own ranking where it already is what is asked
         * for; otherwise a second, read-only view (eval.c). */
        cfg.center = c->center == t->now_center ? -1 : c->center;
        candidate_text(t, c, cfg.text, sizeof cfg.text);
        int rc = evaluate_config(&t->env, &cfg, &c->out, err);
        if (rc)
            return ms_err_prefix(err, "%s: ", cfg.text);
        const eval_summary *s = &c->out.summary;
        if (s->scored == 0) /* the same for every candidate: say it once */
            return ms_err_set(err, MS_EINVAL,
                              "%s: no query could be scored (%zu images, %zu without labels, %zu without a relevant "
                              "image); ingest with --labels",
                              t->args.db, s->images, s->unlabelled, s->no_relevant);
    }
    size_t n = eval_truth_count(t->env.truth);
    for (int i = 0; i < t->n; i++) {
        int rc = pair_outcomes(&t->c[t->now].out, &t->c[i].out, n, &t->c[i].vs_now, err);
        if (rc)
            return rc;
    }
    return 0;
}

/* How much a candidate costs to adopt: 0 a search setting, 1 re-embedding,
 * 2 re-embedding with flip (then also twice the forwards for every later
 * image and query). */
static int tier(const tune_state *t, const candidate *c)
{
    const vectors *v = &t->v[c->vec];
    return v->stored ? 0 : v->cfg.flip > 0 ? 2 : 1;
}

/* For ties: the cheaper tier, then less query expansion, then the current
 * centering. */
static int cost(const tune_state *t, const candidate *c)
{
    return tier(t, c) * 1000 + c->qe * 2 + (c->center != t->now_center);
}

/* The best mAP@k among the candidates of a tier (all for tier < 0); ties go
 * to the current settings, then to the cheaper change. */
static int best_of(const tune_state *t, int only_tier)
{
    int best = -1;
    for (int i = 0; i < t->n; i++) {
        const candidate *c = &t->c[i];
        if (only_tier >= 0 && tier(t, c) != only_tier)
            continue;
        if (best < 0) {
            best = i;
            continue;
        }
        const candidate *b = &t->c[best];
        double d = c->out.summary.map - b->out.summary.map;
        if (d > 0 || (d == 0 && !b->is_now && (c->is_now || cost(t, c) < cost(t, b))))
            best = i;
    }
    return best;
}

/* The pick climbs the tiers: from the current settings, the best search
 * setting is taken if it beats them by the margin; then the best
 * re-embedding if it beats that pick by the margin, then the best with
 * flip. So each dearer change must earn its own keep: a re-embedding that
 * only matches what query expansion already gives is not recommended. */
static int choose(tune_state *t, ms_err *err)
{
    t->best = best_of(t, -1);
    const eval_paired *p = &t->c[t->best].vs_now.ap;
    t->significant = t->best != t->now && isfinite(p->se) && p->diff > TUNE_MARGIN_SE * p->se;
    t->pick = t->now;
    size_t n = eval_truth_count(t->env.truth);
    for (int level = 0; level <= 2; level++) {
        int b = best_of(t, level);
        if (b < 0 || b == t->pick)
            continue;
        eval_pairs step;
        int rc = pair_outcomes(&t->c[t->pick].out, &t->c[b].out, n, &step, err);
        if (rc)
            return rc;
        struct tier_step *st = &t->steps[t->n_steps++];
        st->from = t->pick;
        st->to = b;
        st->ap = step.ap;
        st->taken = isfinite(step.ap.se) && step.ap.diff > TUNE_MARGIN_SE * step.ap.se;
        if (st->taken)
            t->pick = b;
    }
    if (t->best != t->pick && t->pick != t->now)
        return pair_outcomes(&t->c[t->pick].out, &t->c[t->best].out, n, &t->best_vs_pick, err);
    return 0;
}

/* Gives the collection behind e a centering policy (the engine computes or
 * drops the center and rebuilds the index) and persists it. */
static int record_center(engine *e, int centred, ms_err *err)
{
    int rc = engine_set_center_policy(e, !centred, err);
    return rc ? rc : engine_flush(e, err);
}

/* Re-embeds the collection as the pick's vectors are made, through an
 * engine of its own, and gives it the pick's centering policy. The
 * command's engine is flushed first and is only read afterwards, so its
 * close writes nothing over the new index. */
static int apply_vectors(tune_state *t, const candidate *p, ms_err *err)
{
    int rc = engine_flush(t->env.main, err);
    if (rc)
        return rc;
    engine_options o;
    eval_config_options(&t->env, &t->v[p->vec].cfg, &o);
    o.reembed = 1;
    o.no_model = 0;
    o.center = ENGINE_CENTER_AUTO;
    engine *e;
    engine_open_report rep;
    if ((rc = engine_open(&o, &e, &rep, err)))
        return rc;
    static const cli_command reembed_cmd = {"eval --tune --apply", NULL, NULL, 0, NULL, 0, 0};
    size_t done = 0;
    rc = cli_reembed_all(&reembed_cmd, e, !t->args.quiet, &done, err);
    if (rc == 0 && p->center != t->now_center)
        rc = record_center(e, p->center, err);
    engine_close(e);
    return rc;
}

/* Records the pick: the vectors through a re-embedding, the query-expansion
 * default through the store, the centering policy through the engine
 * (which computes or drops the center and rebuilds the index, as `medsearch
 * center` does). */
static int apply_pick(tune_state *t, ms_err *err)
{
    const candidate *p = &t->c[t->pick];
    int rc = 0;
    bool reembed = !t->v[p->vec].stored;
    if (reembed)
        rc = apply_vectors(t, p, err);
    if (rc == 0 && p->qe != t->now_qe) {
        store *s;
        if ((rc = store_open(t->args.db, &s, err)) == 0) {
            rc = store_set_search_qe(s, p->qe, err);
            store_close(s);
        }
    }
    if (rc == 0 && !reembed && p->center != t->now_center)
        rc = record_center(t->env.main, p->center, err);
    return rc;
}

/* `medsearch reembed` with the options that make v. */
static size_t reembed_command(const tune_state *t, const vectors *v, char *out, size_t len)
{
    const eval_args *a = &t->args;
    char model_file[1024];
    ms_err err = {0};
    if (engine_find_model(a->common.model, model_file, sizeof model_file, &err))
        snprintf(model_file, sizeof model_file, "%s", a->common.model ? a->common.model : "MODEL");
    model_options o;
    model_options_init(&o);
    model_options_from_identity(v->identity, &o);
    char extra[128] = "";
    size_t used = 0;
    if (o.pool == MODEL_POOL_GEM)
        used += (size_t)snprintf(extra + used, sizeof extra - used, " --gem-p %g", o.gem_p);
    if (o.flip)
        used += (size_t)snprintf(extra + used, sizeof extra - used, " --flip");
    if (o.bf16)
        used += (size_t)snprintf(extra + used, sizeof extra - used, " --bf16");
    if (v->cfg.input_size > 0 || a->common.input_size > 0)
        snprintf(extra + used, sizeof extra - used, " --input-size %d",
                 v->cfg.input_size > 0 ? v->cfg.input_size : a->common.input_size);
    int n = snprintf(out, len, "medsearch reembed --db %s --model %s --pool %s%s", a->db, model_file,
                     model_pool_name(o.pool), extra);
    return n < 0 ? 0 : (size_t)n < len ? (size_t)n : len - 1;
}

/* The commands that make the pick the collection's defaults. */
static void pick_commands(const tune_state *t, char *out, size_t len)
{
    const candidate *p = &t->c[t->pick];
    const char *db = t->args.db;
    out[0] = '\0';
    size_t used = 0;
    if (!t->v[p->vec].stored)
        used += reembed_command(t, &t->v[p->vec], out, len);
    if (p->qe != t->now_qe && used < len)
        used += (size_t)snprintf(out + used, len - used, "%smedsearch qe %d --db %s", used ? "; " : "", p->qe, db);
    if (p->center != t->now_center && used < len)
        snprintf(out + used, len - used, "%smedsearch center %s --db %s", used ? "; " : "", p->center ? "auto" : "off",
                 db);
}

static json_t *candidate_json(const tune_state *t, const candidate *c, int k)
{
    char ap[32], pk[32];
    snprintf(ap, sizeof ap, "mAP@%d", k);
    snprintf(pk, sizeof pk, "P@%d", k);
    const eval_summary *s = &c->out.summary;
    return json_pack("{s:s,s:s,s:i,s:b,s:o,s:o,s:o,s:o}", "vectors", t->v[c->vec].label, "center",
                     c->center ? "on" : "off", "qe", c->qe, "current", c->is_now, ap, jnum(s->map), pk,
                     jnum(s->p[EVAL_N_CUTS - 1]), "diff", jnum(c->vs_now.ap.diff), "se", jnum(c->vs_now.ap.se));
}

static json_t *vectors_json(const tune_state *t)
{
    json_t *list = json_array();
    for (int i = 0; i < t->nv; i++)
        json_array_append_new(list, json_pack("{s:s,s:s,s:b}", "vectors", t->v[i].label, "identity",
                                              t->v[i].identity, "stored", t->v[i].stored));
    return list;
}

static void print_json(const tune_state *t, int applied, const char *commands)
{
    const eval_args *a = &t->args;
    json_t *list = json_array();
    for (int i = 0; i < t->n; i++)
        json_array_append_new(list, candidate_json(t, &t->c[i], a->k));
    const candidate *b = &t->c[t->best], *p = &t->c[t->pick];
    json_t *root = json_pack(
        "{s:o,s:o,s:I,s:{s:s,s:s,s:i,s:s},s:o,s:o,s:{s:s,s:s,s:i,s:o,s:o,s:b},s:{s:s,s:s,s:i,s:b,s:o,s:o},s:f,s:b,s:b,"
        "s:s}",
        "db", cli_json_text(a->db), "protocol", protocol_json(a), "queries", (json_int_t)t->c[t->now].vs_now.ap.n, "current",
        "vectors", t->v[0].label, "center", t->now_center ? "on" : "off", "qe", t->now_qe, "policy",
        t->policy_off ? "off" : "auto", "vectors", vectors_json(t), "candidates", list, "best", "vectors",
        t->v[b->vec].label, "center", b->center ? "on" : "off", "qe", b->qe, "diff", jnum(b->vs_now.ap.diff), "se",
        jnum(b->vs_now.ap.se), "significant", t->significant, "recommended", "vectors", t->v[p->vec].label,
        "center", p->center ? "on" : "off", "qe", p->qe, "reembed", !t->v[p->vec].stored, "diff",
        jnum(p->vs_now.ap.diff), "se", jnum(p->vs_now.ap.se), "margin_se",
        TUNE_MARGIN_SE, "changed", t->pick != t->now, "applied", applied, "commands", commands);
    json_t *steps = json_array();
    for (int i = 0; i < t->n_steps; i++) {
        const struct tier_step *st = &t->steps[i];
        const candidate *to = &t->c[st->to];
        json_array_append_new(steps, json_pack("{s:s,s:s,s:i,s:o,s:o,s:b}", "vectors", t->v[to->vec].label,
                                               "center", to->center ? "on" : "off", "qe", to->qe, "diff",
                                               jnum(st->ap.diff), "se", jnum(st->ap.se), "taken", st->taken));
    }
    if (root) {
        json_object_set_new(root, "steps", steps);
        json_object_set_new(root, "not_tried", t->not_tried[0] ? json_string(t->not_tried) : json_null());
    } else {
        json_decref(steps);
    }
    /* Why the best was not recommended, when it beats now but not the pick. */
    if (root && t->best != t->pick && t->pick != t->now)
        json_object_set_new(root, "best_vs_recommended",
                            json_pack("{s:o,s:o}", "diff", jnum(t->best_vs_pick.ap.diff), "se",
                                      jnum(t->best_vs_pick.ap.se)));
    if (!root || json_dumpf(root, stdout, JSON_INDENT(1) | JSON_REAL_PRECISION(17)) || fputc('\n', stdout) == EOF)
        fprintf(stderr, "medsearch eval: cannot write the JSON report\n");
    json_decref(root);
}

/* "gem3-flip, centred cosine, query expansion 2" (the vectors only when
 * --vectors varied them). The stored vectors' label comes from the
 * collection, so the text is made printable. */
static void describe(const tune_state *t, const candidate *c, char *out, size_t len)
{
    if (t->nv > 1)
        snprintf(out, len, "%s vectors%s, %s cosine, qe %d", t->v[c->vec].label,
                 t->v[c->vec].stored ? " (stored)" : "", center_name(c->center), c->qe);
    else
        snprintf(out, len, "%s cosine, qe %d", center_name(c->center), c->qe);
    ms_text_make_printable(out);
}

static void print_table(const tune_state *t)
{
    int k = t->args.k;
    char ap[32], pk[32];
    snprintf(ap, sizeof ap, "mAP@%d", k);
    snprintf(pk, sizeof pk, "P@%d", k);
    int wide = t->nv > 1;
    printf("\n  %-*s%-8s %3s %8s %8s %9s %8s\n", wide ? 18 : 0, wide ? "vectors" : "", "cosine", "qe", ap, pk,
           "vs now", "SE");
    for (int i = 0; i < t->n; i++) {
        const candidate *c = &t->c[i];
        char label[64];
        ms_text_printable(label, sizeof label, wide ? t->v[c->vec].label : "");
        printf("  %-*s%-8s %3d %8.4f %8.4f ", wide ? 18 : 0, label, center_name(c->center),
               c->qe, c->out.summary.map, c->out.summary.p[EVAL_N_CUTS - 1]);
        if (c->is_now)
            printf("%9s %8s\n", "now", "");
        else
            printf("%+9.4f %8.4f%s\n", c->vs_now.ap.diff, c->vs_now.ap.se, i == t->best ? "  best" : "");
    }
    printf("\n");
}

/* How the pick climbed the tiers. */
static void print_steps(const tune_state *t)
{
    static const char *const tier_name[] = {"search settings", "re-embedding", "re-embedding with flip"};
    for (int i = 0; i < t->n_steps; i++) {
        const struct tier_step *st = &t->steps[i];
        char to[160];
        describe(t, &t->c[st->to], to, sizeof to);
        printf("%-22s best %s: %+.4f (SE %.4f) over the pick so far: %s\n", tier_name[tier(t, &t->c[st->to])], to,
               st->ap.diff, st->ap.se, st->taken ? "taken" : "not beyond the margin");
    }
    printf("\n");
}

static void print_text(const tune_state *t, int applied, const char *commands)
{
    const eval_args *a = &t->args;
    const candidate *now = &t->c[t->now], *b = &t->c[t->best];
    char ap[32], what[160];
    snprintf(ap, sizeof ap, "mAP@%d", a->k);
    printf("collection: %s\n", a->db);
    printf("tuning the defaults on %zu queries (rule %s, k %d); now: %s cosine, query expansion %d\n",
           now->vs_now.ap.n, eval_rule_name(a->rule), a->k, center_name(t->now_center), t->now_qe);
    if (t->nv > 1)
        printf("vectors: %s as stored; %d other way%s re-embedded with the same model\n",
               ms_text_printable(what, sizeof what, t->v[0].label), t->nv - 1,
               t->nv == 2 ? "" : "s");
    if (t->not_tried[0])
        printf("not tried: %s\n", t->not_tried);
    if (!t->center_varies)
        printf("(fewer than %d images: no center, so only query expansion varies)\n", ENGINE_CENTER_MIN);
    print_table(t);
    if (t->nv > 1)
        print_steps(t);
    describe(t, b, what, sizeof what);
    const candidate *p = &t->c[t->pick];
    if (t->best == t->now) {
        printf("the current settings are the best of these.\n");
    } else if (t->pick == t->now) {
        printf("keep the current settings: the best (%s) gains %+.4f %s, within %.0f standard errors (SE %.4f)\n",
               what, b->vs_now.ap.diff, ap, TUNE_MARGIN_SE, b->vs_now.ap.se);
    } else {
        char pick[160];
        describe(t, p, pick, sizeof pick);
        printf("recommended: %s: %+.4f %s (SE %.4f) over the current settings\n", pick, p->vs_now.ap.diff, ap,
               p->vs_now.ap.se);
        if (t->best != t->pick)
            printf("(the best, %s, gains only %+.4f over it (SE %.4f), within %.0f standard errors: not worth %s)\n",
                   what, t->best_vs_pick.ap.diff, t->best_vs_pick.ap.se, TUNE_MARGIN_SE,
                   tier(t, b) == 2 ? "twice the forwards" : "re-embedding");
    }
    if (t->pick != t->now)
        printf(applied ? "applied: %s\n" : "to apply it: %s (or eval --tune%s --apply)\n", commands,
               t->nv > 1 ? " --vectors" : "");
}

/* --vectors keeps its scratch collections in a folder, so that every
 * search candidate of a variant reuses one re-embedding: --workdir's, or a
 * temporary one removed at the end. */
static int make_workdir(tune_state *t, ms_err *err)
{
    if (!t->args.tune_vectors || t->args.workdir)
        return 0;
    int rc = eval_make_temp_dir("medsearch-tune", t->workdir, sizeof t->workdir, err);
    if (rc)
        return rc;
    t->own_workdir = 1;
    t->args.workdir = t->workdir;
    return 0;
}

static void remove_workdir(tune_state *t)
{
    if (!t->own_workdir)
        return;
    for (int i = 1; i < t->nv; i++)
        eval_scratch_remove(t->workdir, t->args.db, t->v[i].identity);
    rmdir(t->workdir);
}

int eval_tune(const eval_env *env)
{
    tune_state *t = calloc(1, sizeof *t);
    if (!t) {
        fprintf(stderr, "medsearch eval: out of memory\n");
        return 1;
    }
    t->args = *env->a;
    t->args.quiet_reuse = 1;
    t->env = *env;
    t->env.a = &t->args;
    ms_err err = {0};
    engine_stats st; /* the collection as it is now */
    engine_get_stats(t->env.main, &st);
    int rc = make_workdir(t, &err);
    if (rc == 0)
        rc = list_vectors(t, &st, &err);
    if (rc == 0) {
        list_candidates(t, &st);
        rc = evaluate_candidates(t, &err);
    }
    int code = 0, applied = 0;
    char commands[2400] = "";
    if (rc == 0)
        rc = choose(t, &err);
    if (rc == 0) {
        pick_commands(t, commands, sizeof commands);
        if (t->args.apply && t->pick != t->now) {
            /* Killing a re-embedding is safe (it resumes), and a half-done
             * apply is better stopped at once than at the next image. */
            eval_catch_signals(0);
            if ((rc = apply_pick(t, &err)) == 0)
                applied = 1;
        }
    }
    if (rc) {
        fprintf(stderr, "medsearch eval --tune: %s\n", err.msg);
        code = eval_exit_code(rc);
    } else if (t->args.json) {
        print_json(t, applied, commands);
    } else {
        print_text(t, applied, commands);
    }
    remove_workdir(t);
    for (int i = 0; i < t->n; i++)
        outcome_free(&t->c[i].out);
    free(t);
    return code;
}
