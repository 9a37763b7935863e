/*
 * metrics.h - retrieval quality as numbers: relevance between label sets,
 * precision and average precision of one ranked list, their chance levels,
 * summaries over many queries and paired differences between two systems.
 *
 * Everything here is a pure function of its arguments (no engine, no I/O),
 * so the arithmetic can be tested against hand-computed examples.
 *
 * Protocol these functions serve (docs/evaluation.md says it for users):
 * every labelled image is a query; its gallery is every other image except
 * images of the same patient; for a cut-off k
 *   P@c  = (relevant results among the first c) / c
 *   AP@k = (1 / min(R, k)) * sum_{j=1..k} P@j * rel_j
 * where R is the number of relevant images in the query's gallery. A query
 * with R = 0 has no defined AP: it is left out of the means and counted.
 * Chance level = the expected value under a uniformly random ranking of the
 * same gallery (G images, R of them relevant), computed exactly per query.
 *
 * Labels: an image's labels are an ordered set (first = primary label, no
 * duplicates). Label names compare without regard to ASCII case, as the
 * store's filters do ("effusion" is "Effusion"). An image without labels is relevant to nothing and is never
 * a query, but it stays in the galleries of the others.
 */
#ifndef MS_EVAL_METRICS_H
#define MS_EVAL_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

/* When is a gallery image relevant to a query? */
typedef enum {
    EVAL_RULE_ANY = 0,   /* the two label sets share at least one label */
    EVAL_RULE_EXACT,     /* identical label sets (order ignored) */
    EVAL_RULE_SINGLE,    /* same primary (first) label */
} eval_rule;

/* "any", "exact", "single" -> rule. Returns 0 or MS_EINVAL naming the word. */
int eval_rule_parse(const char *name, eval_rule *rule, ms_err *err);
const char *eval_rule_name(eval_rule rule);

/* Relevance of two label sets given as label numbers (any integers, no
 * duplicates inside one set, a[0] / b[0] primary). 1 relevant, 0 not; an
 * empty set is relevant to nothing. */
int eval_labels_relevant(eval_rule rule, const int *a, int na, const int *b, int nb);

/* ---- one ranked list ----
 * rel[0..n_ret) holds 1 (relevant) or 0 for the results, best first.
 * Fewer results than the cut-off (a tiny gallery) count as non-relevant. */

/* P@c. c must be >= 1; returns 0 for c < 1. */
double eval_precision_at(const unsigned char *rel, int n_ret, int c);

/* AP@k as defined above; R = relevant images in the whole gallery. Returns
 * NAN when R = 0 or k < 1 (undefined: the caller leaves the query out). */
double eval_average_precision(const unsigned char *rel, int n_ret, int k, size_t R);

/* Expected P@c under a random ranking of a gallery of G images with R
 * relevant: min(c, G) * R / (G * c); 0 when G = 0. */
double eval_chance_precision(int c, size_t R, size_t G);

/* Expected AP@k under a random ranking. With rel_j the relevance at rank j,
 * E[rel_j] = R/G and E[rel_i rel_j] = R(R-1) / (G(G-1)) for i != j, so
 *   E[P@j rel_j] = (1/j) (R/G + (j-1) R(R-1) / (G(G-1)))
 * summed over j = 1..min(k, G) and divided by min(R, k). NAN when R = 0,
 * R > G or k < 1. */
double eval_chance_average_precision(int k, size_t R, size_t G);

/* Checks that a result list is in the protocol's order: score descending,
 * equal scores by smaller id first (the index's rule). Metrics are only
 * meaningful on lists ranked that way, so the evaluation verifies it rather
 * than re-ranking. Returns 0 or MS_EINTERNAL naming the first pair out of
 * order (also for a NAN score or an id twice in a row). */
int eval_check_order(const int64_t *ids, const float *scores, int n, ms_err *err);

/* ---- ground truth of a collection ----
 * Who is relevant to whom: image ids, patients and label sets, interned.
 * Build it with eval_truth_add (any id order), then eval_truth_finish, which
 * sorts by id and computes every image's gallery size G and relevant count
 * R under the rule. An empty or NULL patient means "unknown": the image is
 * its own patient (only itself is left out of its gallery). */
typedef struct eval_truth eval_truth;

/* Returns 0 or MS_ENOMEM. *out is owned by the caller: eval_truth_free(). */
int eval_truth_create(eval_truth **out, ms_err *err);
void eval_truth_free(eval_truth *t);

/* Copies everything it is given. Returns 0, MS_EINVAL (after finish, a NULL
 * or empty label), MS_ECONFLICT (id added twice, found by finish), MS_ENOMEM.
 * Duplicate labels within one image are dropped (the first stays). */
int eval_truth_add(eval_truth *t, int64_t id, const char *patient,
                   const char *const *labels, int n_labels, ms_err *err);

/* Fixes the rule and computes G and R of every image. Returns 0,
 * MS_EINVAL (finished already), MS_ECONFLICT (an id twice) or MS_ENOMEM;
 * after a failure only eval_truth_free may be called. */
int eval_truth_finish(eval_truth *t, eval_rule rule, ms_err *err);

/* After finish: images are numbered 0..count-1 in ascending id order. */
size_t eval_truth_count(const eval_truth *t);
eval_rule eval_truth_rule(const eval_truth *t);
int64_t eval_truth_id(const eval_truth *t, size_t i);
/* Index of id, or -1 when absent (binary search). */
ptrdiff_t eval_truth_find(const eval_truth *t, int64_t id);
/* The patient key ("" for unknown); owned by t. */
const char *eval_truth_patient(const eval_truth *t, size_t i);
int eval_truth_same_patient(const eval_truth *t, size_t a, size_t b);
/* Image i's label numbers (first = primary), owned by t. */
const int *eval_truth_labels(const eval_truth *t, size_t i, int *n);
size_t eval_truth_label_count(const eval_truth *t);   /* distinct labels */
const char *eval_truth_label_name(const eval_truth *t, int label);
/* Is gallery image j relevant to query q under the rule? (q == j: 0) */
int eval_truth_relevant(const eval_truth *t, size_t q, size_t j);
size_t eval_truth_gallery(const eval_truth *t, size_t q);   /* G */
size_t eval_truth_relevant_count(const eval_truth *t, size_t q); /* R */

/* ---- per query and summary ---- */

/* The cut-offs reported: P@1, P@5 and P@k, AP@k. Cut-offs above k are
 * not reported (P@5 with k = 3), nor repeated (with k = 5, P@5 is P@k). */
#define EVAL_N_CUTS 3

typedef struct eval_query_score {
    int64_t id;
    int scored;                     /* 1 when it counts: labelled and R > 0 */
    size_t R, G;
    double p[EVAL_N_CUTS];          /* P@1, P@5, P@k (0 when cut > k) */
    double ap;                      /* AP@k (NAN when not scored) */
    double chance_p[EVAL_N_CUTS];
    double chance_ap;
} eval_query_score;

/* The cut-off values for k: {1, 5, k}; the first two are 0 when above k
 * or equal to it (the last entry, P@k, is always k). */
void eval_cuts(int k, int cuts[EVAL_N_CUTS]);

/* Scores query q of t from its results (image ids, best first; ids unknown
 * to t count as non-relevant). Returns 0, MS_EINVAL (k < 1, n_ret < 0, q out
 * of range), MS_EINTERNAL (a result is the query itself or of its patient:
 * the search did not follow the protocol), MS_ENOMEM. A query with no labels
 * or R = 0 gets scored = 0. */
int eval_score_query(const eval_truth *t, size_t q, const int64_t *result_ids,
                     int n_ret, int k, eval_query_score *out, ms_err *err);

/* The same on the residual gallery of relevance feedback: the images in
 * judged[0..n_judged) (shown to the user and marked; repeats count once)
 * are taken out of q's gallery, so R and G count only the images not yet
 * judged, and chance levels follow. A result that was judged, or a judged
 * image of q's patient, is MS_EINTERNAL; a judged id unknown to t
 * MS_EINVAL. A query whose judged images held every relevant one has
 * R = 0: scored = 0, like any query without a relevant image. */
int eval_score_query_judged(const eval_truth *t, size_t q, const int64_t *judged, int n_judged,
                            const int64_t *result_ids, int n_ret, int k, eval_query_score *out, ms_err *err);

typedef struct eval_label_summary {
    const char *label;              /* owned by the truth table */
    size_t queries;                 /* scored queries carrying this label */
    double p_k, chance_p_k;         /* their mean P@k and its chance level */
} eval_label_summary;

typedef struct eval_summary {
    int k;
    int cuts[EVAL_N_CUTS];
    eval_rule rule;
    size_t images;                  /* every image of the collection */
    size_t queries;                 /* images that were queries (all) */
    size_t scored;                  /* queries in the means */
    size_t unlabelled;              /* left out: no labels */
    size_t no_relevant;             /* left out: labelled but R = 0 */
    double p[EVAL_N_CUTS], chance_p[EVAL_N_CUTS];
    double map, chance_map;         /* mean AP@k and mean chance AP@k */
    eval_label_summary *labels;     /* malloc'd, by descending query count */
    size_t n_labels;
} eval_summary;

/* Means over the scored entries of scores[0..n). Labels with no scored
 * query are omitted. The label names point into t: keep t until the
 * summary is freed. Returns 0 or MS_ENOMEM / MS_EINVAL. Release with
 * eval_summary_free. */
int eval_summarise(const eval_truth *t, const eval_query_score *scores, size_t n,
                   int k, eval_summary *out, ms_err *err);
void eval_summary_free(eval_summary *s);

/* ---- paired comparison ---- */
typedef struct eval_paired {
    size_t n;
    double mean_a, mean_b;
    double diff;                    /* mean of b[i] - a[i] */
    double se;                      /* sd(b - a) / sqrt(n), sd with n - 1; NAN when n < 2 */
} eval_paired;

/* Returns 0 or MS_EINVAL (n = 0, or a NAN/inf value). */
int eval_paired_diff(const double *a, const double *b, size_t n, eval_paired *out,
                     ms_err *err);

#endif
