/*
 * eval_tune.c - `medsearch eval --tune [--apply]`: a collection's search
 * defaults chosen from evidence on its own labels.
 *
 * What a collection can change without re-embedding is how it searches: its
 * query-expansion default (`medsearch qe`) and its centering policy
 * (`medsearch center`). --tune evaluates query expansion 0, 1, 2, 3 and 5,
 * each with centering on and off, on the same queries as `medsearch eval`
 * (a collection too small to have a center, under ENGINE_CENTER_MIN images,
 * ranks the same either way: only query expansion varies). Each candidate is
 * paired with the collection's current settings, query by query.
 *
 * Why a margin: the candidates are chosen on the very queries they are
 * scored on, so the best of ten looks better than it is; on a small
 * collection a difference of one standard error is what luck gives. The
 * best candidate is therefore recommended only when it beats the current
 * settings by more than two standard errors of the paired difference of
 * AP@k; otherwise the current settings stay. --apply records the
 * recommendation, exactly as `medsearch qe N` and `medsearch center
 * auto|off` would.
 *
 * Pooling, GeM p, flip and the model are not tried here: they change the
 * vectors and are fixed at ingest (`medsearch eval --compare "" "pool=gem"`
 * measures one by re-embedding; `medsearch reembed` applies it).
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/eval_internal.h"

static const int TUNE_QE[] = {0, 1, 2, 3, 5};
#define TUNE_N_QE ((int)(sizeof TUNE_QE / sizeof TUNE_QE[0]))
#define TUNE_MAX (2 * TUNE_N_QE + 1) /* + a current qe outside the list */
/* How many standard errors a change must gain to be recommended. */
#define TUNE_MARGIN_SE 2.0

typedef struct candidate {
    int center;               /* 1 centred, 0 plain cosine */
    int qe;
    int is_now;               /* the collection's current settings */
    eval_outcome out;
    eval_pairs vs_now;        /* B = this candidate, A = the current settings */
} candidate;

typedef struct tune_state {
    candidate c[TUNE_MAX];
    int n;
    int now, best, pick;      /* indexes into c */
    int significant;          /* best beats now by the margin */
    int center_varies;        /* the collection is large enough to have a center */
    int now_center, now_qe, policy_off;
} tune_state;

static const char *center_name(int center)
{
    return center ? "centred" : "plain";
}

/* The candidates, the current settings among them. */
static void list_candidates(const eval_env *env, tune_state *t)
{
    engine_stats st;
    engine_get_stats(env->main, &st);
    t->center_varies = st.images >= ENGINE_CENTER_MIN;
    t->now_center = st.center_from > 0;
    t->now_qe = st.search_qe;
    t->policy_off = st.center_policy_off;
    t->n = 0;
    for (int centred = 1; centred >= 0; centred--) {
        if (!t->center_varies && centred != t->now_center)
            continue;
        for (int i = 0; i < TUNE_N_QE; i++) {
            candidate *c = &t->c[t->n++];
            memset(c, 0, sizeof *c);
            c->center = centred;
            c->qe = TUNE_QE[i];
        }
    }
    /* A current qe outside the list (medsearch qe 7) is a candidate too. */
    t->now = -1;
    for (int i = 0; i < t->n; i++)
        if (t->c[i].center == t->now_center && t->c[i].qe == t->now_qe)
            t->now = i;
    if (t->now < 0) {
        candidate *c = &t->c[t->n];
        memset(c, 0, sizeof *c);
        c->center = t->now_center;
        c->qe = t->now_qe;
        t->now = t->n++;
    }
    t->c[t->now].is_now = 1;
}

static int evaluate_candidates(const eval_env *env, tune_state *t, ms_err *err)
{
    for (int i = 0; i < t->n; i++) {
        candidate *c = &t->c[i];
        eval_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.flip = -1;
        cfg.qe = c->qe;
        /* The collection's own ranking where it already is what is asked
         * for; otherwise a second, read-only view (eval.c). */
        cfg.center = c->center == t->now_center ? -1 : c->center;
        snprintf(cfg.text, sizeof cfg.text, "center=%s,qe=%d", c->center ? "on" : "off", c->qe);
        int rc = evaluate_config(env, &cfg, &c->out, err);
        if (rc)
            return ms_err_prefix(err, "%s: ", cfg.text);
        const eval_summary *s = &c->out.summary;
        if (s->scored == 0) /* the same for every candidate: say it once */
            return ms_err_set(err, MS_EINVAL,
                              "%s: no query could be scored (%zu images, %zu without labels, %zu without a relevant "
                              "image); ingest with --labels",
                              env->a->db, s->images, s->unlabelled, s->no_relevant);
    }
    size_t n = eval_truth_count(env->truth);
    for (int i = 0; i < t->n; i++) {
        int rc = pair_outcomes(&t->c[t->now].out, &t->c[i].out, n, &t->c[i].vs_now, err);
        if (rc)
            return rc;
    }
    return 0;
}

/* The best mAP@k; ties go to the current settings, then to less query
 * expansion, then to the current centering. */
static void choose(tune_state *t)
{
    int best = t->now;
    for (int i = 0; i < t->n; i++) {
        const candidate *c = &t->c[i], *b = &t->c[best];
        double d = c->out.summary.map - b->out.summary.map;
        if (d > 0 || (d == 0 && !b->is_now &&
                      (c->qe < b->qe || (c->qe == b->qe && c->center == t->now_center))))
            best = i;
    }
    t->best = best;
    const eval_paired *p = &t->c[best].vs_now.ap;
    t->significant = best != t->now && isfinite(p->se) && p->diff > TUNE_MARGIN_SE * p->se;
    t->pick = t->significant ? best : t->now;
}

/* Records the pick: the query-expansion default through the store, the
 * centering policy through the engine (which computes or drops the center
 * and rebuilds the index, as `medsearch center` does). */
static int apply_pick(const eval_env *env, const tune_state *t, ms_err *err)
{
    const candidate *p = &t->c[t->pick];
    int rc = 0;
    if (p->qe != t->now_qe) {
        store *s;
        if ((rc = store_open(env->a->db, &s, err)) == 0) {
            rc = store_set_search_qe(s, p->qe, err);
            store_close(s);
        }
    }
    if (rc == 0 && p->center != t->now_center) {
        rc = engine_set_center_policy(env->main, !p->center, err);
        if (rc == 0)
            rc = engine_flush(env->main, err);
    }
    return rc;
}

/* The commands that make the pick the collection's defaults. */
static void pick_commands(const eval_env *env, const tune_state *t, char *out, size_t len)
{
    const candidate *p = &t->c[t->pick];
    out[0] = '\0';
    size_t used = 0;
    if (p->qe != t->now_qe)
        used += (size_t)snprintf(out, len, "medsearch qe %d --db %s", p->qe, env->a->db);
    if (p->center != t->now_center && used < len)
        snprintf(out + used, len - used, "%smedsearch center %s --db %s", used ? "; " : "", p->center ? "auto" : "off",
                 env->a->db);
}

static json_t *candidate_json(const candidate *c, int k)
{
    char ap[32], pk[32];
    snprintf(ap, sizeof ap, "mAP@%d", k);
    snprintf(pk, sizeof pk, "P@%d", k);
    const eval_summary *s = &c->out.summary;
    return json_pack("{s:s,s:i,s:b,s:o,s:o,s:o,s:o}", "center", c->center ? "on" : "off", "qe", c->qe, "current",
                     c->is_now, ap, jnum(s->map), pk, jnum(s->p[EVAL_N_CUTS - 1]), "diff", jnum(c->vs_now.ap.diff),
                     "se", jnum(c->vs_now.ap.se));
}

static void print_json(const eval_env *env, const tune_state *t, int applied, const char *commands)
{
    const eval_args *a = env->a;
    json_t *list = json_array();
    for (int i = 0; i < t->n; i++)
        json_array_append_new(list, candidate_json(&t->c[i], a->k));
    const candidate *b = &t->c[t->best], *p = &t->c[t->pick];
    json_t *root = json_pack(
        "{s:s,s:o,s:I,s:{s:s,s:i,s:s},s:o,s:{s:s,s:i,s:o,s:o,s:b},s:{s:s,s:i},s:f,s:b,s:b,s:s}", "db", a->db,
        "protocol", protocol_json(a), "queries", (json_int_t)t->c[t->now].vs_now.ap.n, "current", "center",
        t->now_center ? "on" : "off", "qe", t->now_qe, "policy", t->policy_off ? "off" : "auto", "candidates", list,
        "best", "center", b->center ? "on" : "off", "qe", b->qe, "diff", jnum(b->vs_now.ap.diff), "se",
        jnum(b->vs_now.ap.se), "significant", t->significant, "recommended", "center", p->center ? "on" : "off",
        "qe", p->qe, "margin_se", TUNE_MARGIN_SE, "changed", t->pick != t->now, "applied", applied, "commands",
        commands);
    if (!root || json_dumpf(root, stdout, JSON_INDENT(1) | JSON_REAL_PRECISION(17)) || fputc('\n', stdout) == EOF)
        fprintf(stderr, "medsearch eval: cannot write the JSON report\n");
    json_decref(root);
}

static void print_text(const eval_env *env, const tune_state *t, int applied, const char *commands)
{
    const eval_args *a = env->a;
    const candidate *now = &t->c[t->now], *b = &t->c[t->best];
    printf("collection: %s\n", a->db);
    printf("tuning the search defaults on %zu queries (rule %s, k %d); now: %s cosine, query expansion %d\n",
           now->vs_now.ap.n, eval_rule_name(a->rule), a->k, center_name(t->now_center), t->now_qe);
    if (!t->center_varies)
        printf("(fewer than %d images: no center, so only query expansion varies)\n", ENGINE_CENTER_MIN);
    char ap[32], pk[32];
    snprintf(ap, sizeof ap, "mAP@%d", a->k);
    snprintf(pk, sizeof pk, "P@%d", a->k);
    printf("\n  %-8s %3s %8s %8s %9s %8s\n", "cosine", "qe", ap, pk, "vs now", "SE");
    for (int i = 0; i < t->n; i++) {
        const candidate *c = &t->c[i];
        printf("  %-8s %3d %8.4f %8.4f ", center_name(c->center), c->qe, c->out.summary.map,
               c->out.summary.p[EVAL_N_CUTS - 1]);
        if (c->is_now)
            printf("%9s %8s\n", "now", "");
        else
            printf("%+9.4f %8.4f%s\n", c->vs_now.ap.diff, c->vs_now.ap.se, i == t->best ? "  best" : "");
    }
    printf("\n");
    if (t->best == t->now)
        printf("the current settings are the best of these.\n");
    else if (!t->significant)
        printf("keep the current settings: the best (%s cosine, qe %d) gains %+.4f %s, within %.0f standard errors "
               "(SE %.4f)\n",
               center_name(b->center), b->qe, b->vs_now.ap.diff, ap, TUNE_MARGIN_SE, b->vs_now.ap.se);
    else
        printf("recommended: %s cosine, query expansion %d: %+.4f %s (SE %.4f) over the current settings\n",
               center_name(b->center), b->qe, b->vs_now.ap.diff, ap, b->vs_now.ap.se);
    if (t->pick != t->now)
        printf(applied ? "applied: %s\n" : "to apply it: %s (or eval --tune --apply)\n", commands);
}

int eval_tune(const eval_env *env)
{
    tune_state *t = calloc(1, sizeof *t);
    if (!t) {
        fprintf(stderr, "medsearch eval: out of memory\n");
        return 1;
    }
    ms_err err = {0};
    list_candidates(env, t);
    int rc = evaluate_candidates(env, t, &err);
    int code = 0, applied = 0;
    char commands[1200] = "";
    if (rc == 0) {
        choose(t);
        pick_commands(env, t, commands, sizeof commands);
        if (env->a->apply && t->pick != t->now) {
            if ((rc = apply_pick(env, t, &err)) == 0)
                applied = 1;
        }
    }
    if (rc) {
        fprintf(stderr, "medsearch eval --tune: %s\n", err.msg);
        code = eval_exit_code(rc);
    } else if (env->a->json) {
        print_json(env, t, applied, commands);
    } else {
        print_text(env, t, applied, commands);
    }
    for (int i = 0; i < t->n; i++)
        outcome_free(&t->c[i].out);
    free(t);
    return code;
}
