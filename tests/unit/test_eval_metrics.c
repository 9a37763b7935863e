/*
 * test_eval_metrics.c - retrieval metrics against hand-computed values,
 * the chance formulas against exhaustive enumeration and simulation, the
 * ground truth's G and R against brute force, and the paired difference.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "eval/metrics.h"

#define EPS 1e-12

/* cmocka 1.1 has no floating-point assertion; this one names both values. */
static void assert_near_at(double got, double want, double eps, const char *file, int line)
{
    if (!(fabs(got - want) <= eps))
        fail_msg("%s:%d: got %.17g, want %.17g (tolerance %g)", file, line, got, want, eps);
}
#define assert_double_equal(got, want, eps) assert_near_at((got), (want), (eps), __FILE__, __LINE__)

/* ---- rules ---- */

static void test_rule_names(void **state)
{
    (void)state;
    eval_rule r;
    ms_err err = {0};
    assert_int_equal(eval_rule_parse("any", &r, &err), 0);
    assert_int_equal(r, EVAL_RULE_ANY);
    assert_int_equal(eval_rule_parse("exact", &r, &err), 0);
    assert_int_equal(r, EVAL_RULE_EXACT);
    assert_int_equal(eval_rule_parse("single", &r, &err), 0);
    assert_int_equal(r, EVAL_RULE_SINGLE);
    assert_int_equal(eval_rule_parse("Any", &r, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "'Any'"));
    assert_int_equal(eval_rule_parse(NULL, &r, NULL), MS_EINVAL);
    assert_string_equal(eval_rule_name(EVAL_RULE_EXACT), "exact");
}

static void test_relevance_rules(void **state)
{
    (void)state;
    const int pb[] = {1, 2};      /* PNEUMONIA|BACTERIA */
    const int bp[] = {2, 1};      /* the same set, other order */
    const int pv[] = {1, 3};      /* PNEUMONIA|VIRUS */
    const int n[] = {0};          /* NORMAL */
    const int v[] = {3};          /* VIRUS alone */

    assert_true(eval_labels_relevant(EVAL_RULE_ANY, pb, 2, pv, 2));
    assert_false(eval_labels_relevant(EVAL_RULE_ANY, pb, 2, n, 1));
    assert_true(eval_labels_relevant(EVAL_RULE_ANY, v, 1, pv, 2));

    assert_true(eval_labels_relevant(EVAL_RULE_EXACT, pb, 2, bp, 2));
    assert_false(eval_labels_relevant(EVAL_RULE_EXACT, pb, 2, pv, 2));
    assert_false(eval_labels_relevant(EVAL_RULE_EXACT, v, 1, pv, 2));
    assert_true(eval_labels_relevant(EVAL_RULE_EXACT, n, 1, n, 1));

    assert_true(eval_labels_relevant(EVAL_RULE_SINGLE, pb, 2, pv, 2));
    assert_false(eval_labels_relevant(EVAL_RULE_SINGLE, pb, 2, bp, 2)); /* primary differs */
    assert_false(eval_labels_relevant(EVAL_RULE_SINGLE, v, 1, pv, 2));

    /* An empty set is relevant to nothing, not even another empty set. */
    for (int r = EVAL_RULE_ANY; r <= EVAL_RULE_SINGLE; r++) {
        assert_false(eval_labels_relevant((eval_rule)r, n, 0, n, 0));
        assert_false(eval_labels_relevant((eval_rule)r, n, 1, n, 0));
    }
}

/* ---- one ranked list ---- */

static void test_precision_and_ap_by_hand(void **state)
{
    (void)state;
    /* Hits at ranks 1, 3 and 10; R = 5:
     * AP@10 = (1/1 + 2/3 + 3/10) / min(5, 10) = 0.39333... */
    const unsigned char rel[10] = {1, 0, 1, 0, 0, 0, 0, 0, 0, 1};
    assert_double_equal(eval_precision_at(rel, 10, 1), 1.0, EPS);
    assert_double_equal(eval_precision_at(rel, 10, 5), 0.4, EPS);
    assert_double_equal(eval_precision_at(rel, 10, 10), 0.3, EPS);
    assert_double_equal(eval_average_precision(rel, 10, 10, 5), (1.0 + 2.0 / 3 + 0.3) / 5, EPS);
    /* At k = 5 only the first two hits count, normalised by min(5, 5). */
    assert_double_equal(eval_average_precision(rel, 10, 5, 5), (1.0 + 2.0 / 3) / 5, EPS);
}

static void test_ap_with_few_relevant(void **state)
{
    (void)state;
    /* R = 3 < 10, hits at ranks 2 and 5: AP@10 = (1/2 + 2/5) / 3 = 0.3 */
    const unsigned char rel[10] = {0, 1, 0, 0, 1, 0, 0, 0, 0, 0};
    assert_double_equal(eval_average_precision(rel, 10, 10, 3), 0.3, EPS);
    /* All 3 relevant first: a perfect list scores 1, not 3/10. */
    const unsigned char best[10] = {1, 1, 1, 0, 0, 0, 0, 0, 0, 0};
    assert_double_equal(eval_average_precision(best, 10, 10, 3), 1.0, EPS);
    assert_double_equal(eval_precision_at(best, 10, 10), 0.3, EPS);
    /* R = 25 > 10 and all ten relevant: 1. */
    const unsigned char all[10] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    assert_double_equal(eval_average_precision(all, 10, 10, 25), 1.0, EPS);
}

static void test_ap_undefined_without_relevant(void **state)
{
    (void)state;
    const unsigned char none[10] = {0};
    assert_true(isnan(eval_average_precision(none, 10, 10, 0)));
    assert_true(isnan(eval_average_precision(none, 10, 0, 4)));
    assert_double_equal(eval_average_precision(none, 10, 10, 4), 0.0, EPS);
    assert_true(isnan(eval_chance_average_precision(10, 0, 50)));
    assert_true(isnan(eval_chance_average_precision(10, 51, 50)));
}

static void test_short_result_list(void **state)
{
    (void)state;
    /* A gallery of 2 (both relevant) returns 2 results for k = 10. */
    const unsigned char rel[2] = {1, 1};
    assert_double_equal(eval_average_precision(rel, 2, 10, 2), 1.0, EPS);
    assert_double_equal(eval_precision_at(rel, 2, 10), 0.2, EPS);
    assert_double_equal(eval_chance_precision(10, 2, 2), 0.2, EPS);
    assert_double_equal(eval_chance_average_precision(10, 2, 2), 1.0, EPS);
    assert_double_equal(eval_precision_at(rel, 2, 0), 0.0, EPS);
}

/* ---- chance levels ---- */

static void test_chance_by_hand(void **state)
{
    (void)state;
    /* G = 4, R = 2, k = 2: rank 1 is relevant w.p. 1/2; P@2 rel_2 is 1
     * when both are (1/6), 1/2 when only rank 2 is (1/3):
     * E[AP@2] = (1/2) (1/2 + 1/6 + 1/6) = 5/12. */
    assert_double_equal(eval_chance_average_precision(2, 2, 4), 5.0 / 12, EPS);
    assert_double_equal(eval_chance_precision(1, 2, 4), 0.5, EPS);
    assert_double_equal(eval_chance_precision(10, 30, 120), 0.25, EPS);
    /* Every image relevant: any ranking is perfect. */
    assert_double_equal(eval_chance_average_precision(10, 40, 40), 1.0, EPS);
    assert_double_equal(eval_chance_average_precision(10, 1, 1), 1.0, EPS);
}

/* All C(G, R) placements of the relevant images are equally likely under a
 * random ranking: averaging AP over every placement gives the exact mean. */
static double enumerate_ap(int k, int R, int G)
{
    double sum = 0.0;
    long count = 0;
    unsigned char rel[16];
    for (unsigned mask = 0; mask < (1u << G); mask++) {
        if (__builtin_popcount(mask) != R)
            continue;
        for (int i = 0; i < G; i++)
            rel[i] = (mask >> i) & 1u;
        sum += eval_average_precision(rel, G, k, (size_t)R);
        count++;
    }
    return sum / (double)count;
}

static void test_chance_ap_exhaustive(void **state)
{
    (void)state;
    for (int G = 1; G <= 12; G++)
        for (int R = 1; R <= G; R++)
            for (int k = 1; k <= 10; k++)
                assert_double_equal(eval_chance_average_precision(k, (size_t)R, (size_t)G),
                                    enumerate_ap(k, R, G), 1e-12);
}

/* splitmix64: a fixed seed makes the simulation reproducible. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Shuffles a gallery of G (R relevant) many times and compares the mean
 * AP@k and P@k with the formulas, within 4 standard errors. */
static void simulate(int k, int R, int G, int trials, uint64_t seed)
{
    unsigned char *gal = malloc((size_t)G);
    assert_non_null(gal);
    double s_ap = 0, ss_ap = 0, s_p = 0, ss_p = 0;
    for (int t = 0; t < trials; t++) {
        for (int i = 0; i < G; i++)
            gal[i] = i < R;
        /* Only the first k positions matter: a partial Fisher-Yates. */
        for (int i = 0; i < k && i < G - 1; i++) {
            int j = i + (int)(rng_next(&seed) % (uint64_t)(G - i));
            unsigned char tmp = gal[i];
            gal[i] = gal[j];
            gal[j] = tmp;
        }
        double ap = eval_average_precision(gal, G, k, (size_t)R);
        double p = eval_precision_at(gal, G, k);
        s_ap += ap, ss_ap += ap * ap, s_p += p, ss_p += p * p;
    }
    double m_ap = s_ap / trials, m_p = s_p / trials;
    double se_ap = sqrt((ss_ap / trials - m_ap * m_ap) / trials);
    double se_p = sqrt((ss_p / trials - m_p * m_p) / trials);
    double want_ap = eval_chance_average_precision(k, (size_t)R, (size_t)G);
    double want_p = eval_chance_precision(k, (size_t)R, (size_t)G);
    assert_true(fabs(m_ap - want_ap) < 4 * se_ap + 1e-12);
    assert_true(fabs(m_p - want_p) < 4 * se_p + 1e-12);
    /* The formula is not trivially close: AP's chance differs from R/G. */
    assert_true(want_ap > 0.0 && want_ap < 1.0);
    free(gal);
}

static void test_chance_ap_simulation(void **state)
{
    (void)state;
    simulate(10, 30, 200, 200000, 1);     /* R > k */
    simulate(10, 4, 150, 200000, 2);      /* R < k */
    simulate(10, 1300, 4700, 100000, 3);  /* Kermany-like class sizes */
    simulate(5, 7, 9, 200000, 4);         /* tiny gallery */
}

/* ---- result order ---- */

static void test_result_order(void **state)
{
    (void)state;
    ms_err err = {0};
    const int64_t ids[] = {7, 3, 9, 12, 2};
    const float ok[] = {0.9f, 0.5f, 0.5f, 0.5f, 0.1f};   /* ties: 3 < 9 < 12 */
    assert_int_equal(eval_check_order(ids, ok, 5, &err), 0);
    const int64_t swapped[] = {7, 9, 3, 12, 2};
    assert_int_equal(eval_check_order(swapped, ok, 5, &err), MS_EINTERNAL);
    assert_non_null(strstr(err.msg, "id 9"));
    const float down_up[] = {0.9f, 0.4f, 0.5f, 0.5f, 0.1f};
    assert_int_equal(eval_check_order(ids, down_up, 5, &err), MS_EINTERNAL);
    const float nan_score[] = {0.9f, NAN, 0.5f, 0.5f, 0.1f};
    assert_int_equal(eval_check_order(ids, nan_score, 5, &err), MS_EINTERNAL);
    const int64_t twice[] = {7, 7};
    const float same[] = {0.5f, 0.5f};
    assert_int_equal(eval_check_order(twice, same, 2, &err), MS_EINTERNAL);
    assert_int_equal(eval_check_order(ids, ok, 0, &err), 0);
}

/* ---- ground truth ---- */

/* A Kermany-like toy: 8 images, 5 patients.
 *   id  patient  labels
 *   10  p1       NORMAL
 *   11  p1       NORMAL
 *   20  p2       PNEUMONIA|BACTERIA
 *   21  p2       PNEUMONIA|VIRUS
 *   30  p3       PNEUMONIA|BACTERIA
 *   40  p4       PNEUMONIA|VIRUS
 *   50  (none)   NORMAL
 *   60  (none)   no labels
 */
static eval_truth *toy(eval_rule rule)
{
    static const char *normal[] = {"NORMAL"};
    static const char *bact[] = {"PNEUMONIA", "BACTERIA"};
    static const char *vir[] = {"PNEUMONIA", "VIRUS"};
    eval_truth *t;
    ms_err err = {0};
    assert_int_equal(eval_truth_create(&t, &err), 0);
    /* Added out of id order on purpose: finish sorts. */
    assert_int_equal(eval_truth_add(t, 40, "p4", vir, 2, &err), 0);
    assert_int_equal(eval_truth_add(t, 10, "p1", normal, 1, &err), 0);
    assert_int_equal(eval_truth_add(t, 11, "p1", normal, 1, &err), 0);
    assert_int_equal(eval_truth_add(t, 20, "p2", bact, 2, &err), 0);
    assert_int_equal(eval_truth_add(t, 21, "p2", vir, 2, &err), 0);
    assert_int_equal(eval_truth_add(t, 30, "p3", bact, 2, &err), 0);
    assert_int_equal(eval_truth_add(t, 50, NULL, normal, 1, &err), 0);
    assert_int_equal(eval_truth_add(t, 60, "", NULL, 0, &err), 0);
    assert_int_equal(eval_truth_finish(t, rule, &err), 0);
    return t;
}

static size_t idx(const eval_truth *t, int64_t id)
{
    ptrdiff_t i = eval_truth_find(t, id);
    assert_true(i >= 0);
    return (size_t)i;
}

static void test_truth_counts_by_hand(void **state)
{
    (void)state;
    eval_truth *t = toy(EVAL_RULE_EXACT);
    assert_int_equal(eval_truth_count(t), 8);
    assert_int_equal(eval_truth_id(t, 0), 10);
    assert_int_equal(eval_truth_find(t, 12), -1);
    assert_int_equal(eval_truth_label_count(t), 4);
    assert_string_equal(eval_truth_patient(t, idx(t, 50)), "");
    /* G: 8 minus the patient's images. */
    assert_int_equal(eval_truth_gallery(t, idx(t, 10)), 6);
    assert_int_equal(eval_truth_gallery(t, idx(t, 20)), 6);
    assert_int_equal(eval_truth_gallery(t, idx(t, 30)), 7);
    assert_int_equal(eval_truth_gallery(t, idx(t, 50)), 7);
    assert_int_equal(eval_truth_gallery(t, idx(t, 60)), 7);
    /* exact: 10's NORMAL partner 11 is the same patient, only 50 counts. */
    assert_int_equal(eval_truth_relevant_count(t, idx(t, 10)), 1);
    assert_int_equal(eval_truth_relevant_count(t, idx(t, 50)), 2);
    assert_int_equal(eval_truth_relevant_count(t, idx(t, 20)), 1);   /* 30 */
    assert_int_equal(eval_truth_relevant_count(t, idx(t, 21)), 1);   /* 40 */
    assert_int_equal(eval_truth_relevant_count(t, idx(t, 60)), 0);
    assert_false(eval_truth_relevant(t, idx(t, 10), idx(t, 10)));
    assert_true(eval_truth_same_patient(t, idx(t, 20), idx(t, 21)));
    assert_false(eval_truth_same_patient(t, idx(t, 50), idx(t, 60)));
    eval_truth_free(t);

    t = toy(EVAL_RULE_ANY);
    /* any: 20 (PNEUMONIA|BACTERIA) shares PNEUMONIA with 30 and 40; 21 is its patient. */
    assert_int_equal(eval_truth_relevant_count(t, idx(t, 20)), 2);
    assert_int_equal(eval_truth_relevant_count(t, idx(t, 30)), 3);
    eval_truth_free(t);

    t = toy(EVAL_RULE_SINGLE);
    assert_int_equal(eval_truth_relevant_count(t, idx(t, 30)), 3);
    int n;
    const int *lab = eval_truth_labels(t, idx(t, 30), &n);
    assert_int_equal(n, 2);
    assert_string_equal(eval_truth_label_name(t, lab[0]), "PNEUMONIA");
    assert_string_equal(eval_truth_label_name(t, lab[1]), "BACTERIA");
    eval_truth_free(t);
}

static void test_truth_bad_input(void **state)
{
    (void)state;
    eval_truth *t;
    ms_err err = {0};
    const char *empty[] = {""};
    const char *dup[] = {"A", "B", "A"};
    assert_int_equal(eval_truth_create(&t, &err), 0);
    assert_int_equal(eval_truth_add(t, 1, "p", empty, 1, &err), MS_EINVAL);
    assert_int_equal(eval_truth_add(t, 1, "p", NULL, 2, &err), MS_EINVAL);
    assert_int_equal(eval_truth_add(t, 1, "p", dup, 3, &err), 0);
    assert_int_equal(eval_truth_add(t, 1, "q", dup, 1, &err), 0);
    assert_int_equal(eval_truth_finish(t, EVAL_RULE_ANY, &err), MS_ECONFLICT);
    assert_non_null(strstr(err.msg, "image 1 "));
    eval_truth_free(t);

    assert_int_equal(eval_truth_create(&t, &err), 0);
    assert_int_equal(eval_truth_add(t, 1, "p", dup, 3, &err), 0);
    assert_int_equal(eval_truth_finish(t, EVAL_RULE_EXACT, &err), 0);
    int n;
    eval_truth_labels(t, 0, &n);
    assert_int_equal(n, 2);   /* the duplicate A dropped */
    assert_int_equal(eval_truth_add(t, 2, "p", dup, 1, &err), MS_EINVAL);
    assert_int_equal(eval_truth_finish(t, EVAL_RULE_EXACT, &err), MS_EINVAL);
    eval_truth_free(t);

    /* An empty collection is fine. */
    assert_int_equal(eval_truth_create(&t, &err), 0);
    assert_int_equal(eval_truth_finish(t, EVAL_RULE_ANY, &err), 0);
    assert_int_equal(eval_truth_count(t), 0);
    assert_int_equal(eval_truth_find(t, 1), -1);
    eval_truth_free(t);
}

static void test_truth_label_case(void **state)
{
    (void)state;
    eval_truth *t;
    ms_err err = {0};
    const char *a[] = {"effusion", "Mass"}, *b[] = {"MASS", "Effusion"}, *c[] = {"Mass", "MASS"};
    assert_int_equal(eval_truth_create(&t, &err), 0);
    assert_int_equal(eval_truth_add(t, 1, "p", a, 2, &err), 0);
    assert_int_equal(eval_truth_add(t, 2, "q", b, 2, &err), 0);
    assert_int_equal(eval_truth_add(t, 3, "r", c, 2, &err), 0);
    assert_int_equal(eval_truth_finish(t, EVAL_RULE_EXACT, &err), 0);
    assert_int_equal(eval_truth_label_count(t), 2);
    assert_true(eval_truth_relevant(t, 0, 1));
    assert_int_equal(eval_truth_relevant_count(t, 0), 1);
    int n;
    const int *lab = eval_truth_labels(t, 2, &n);
    assert_int_equal(n, 1);     /* "MASS" repeats "Mass" */
    assert_string_equal(eval_truth_label_name(t, lab[0]), "MASS");  /* 'M' 'A' sorts before 'M' 'a' */
    eval_truth_free(t);
}

/* Random collections: R and G from the grouped computation must equal a
 * brute-force count over every pair, for every rule. */
static void test_truth_against_brute_force(void **state)
{
    (void)state;
    static const char *names[] = {"No Finding", "Effusion", "Mass", "Nodule", "Edema", "Hernia"};
    uint64_t seed = 42;
    for (int round = 0; round < 6; round++) {
        int n = 50 + round * 40;
        char (*patient)[16] = malloc((size_t)n * sizeof *patient);
        const char *(*labels)[4] = malloc((size_t)n * sizeof *labels);
        int *nl = malloc((size_t)n * sizeof *nl);
        assert_non_null(patient), assert_non_null(labels), assert_non_null(nl);
        for (int i = 0; i < n; i++) {
            snprintf(patient[i], sizeof patient[i], "p%d", (int)(rng_next(&seed) % (uint64_t)(n / 3)));
            nl[i] = (int)(rng_next(&seed) % 4);     /* 0..3 labels, duplicates possible */
            for (int j = 0; j < nl[i]; j++)
                labels[i][j] = names[rng_next(&seed) % 6];
        }
        for (int r = EVAL_RULE_ANY; r <= EVAL_RULE_SINGLE; r++) {
            eval_truth *t;
            ms_err err = {0};
            assert_int_equal(eval_truth_create(&t, &err), 0);
            for (int i = 0; i < n; i++)
                /* Every 7th image has an unknown patient. */
                assert_int_equal(eval_truth_add(t, 1000 - i, i % 7 ? patient[i] : NULL,
                                                labels[i], nl[i], &err), 0);
            assert_int_equal(eval_truth_finish(t, (eval_rule)r, &err), 0);
            for (size_t q = 0; q < (size_t)n; q++) {
                size_t G = 0, R = 0;
                for (size_t j = 0; j < (size_t)n; j++) {
                    if (eval_truth_same_patient(t, q, j))
                        continue;
                    G++;
                    R += (size_t)eval_truth_relevant(t, q, j);
                }
                assert_int_equal(eval_truth_gallery(t, q), G);
                assert_int_equal(eval_truth_relevant_count(t, q), R);
            }
            eval_truth_free(t);
        }
        free(patient), free(labels), free(nl);
    }
}

/* ---- scoring and summary ---- */

static void test_score_query(void **state)
{
    (void)state;
    eval_truth *t = toy(EVAL_RULE_ANY);
    ms_err err = {0};
    eval_query_score s;
    /* Query 30 (PNEUMONIA|BACTERIA, R = 3 of G = 7): ranking 10, 21, 40, 50, 20. */
    const int64_t res[] = {10, 21, 40, 50, 20};
    assert_int_equal(eval_score_query(t, idx(t, 30), res, 5, 10, &s, &err), 0);
    assert_true(s.scored);
    assert_int_equal(s.R, 3);
    assert_int_equal(s.G, 7);
    assert_double_equal(s.p[0], 0.0, EPS);
    assert_double_equal(s.p[1], 0.6, EPS);
    assert_double_equal(s.p[2], 0.3, EPS);
    assert_double_equal(s.ap, (1.0 / 2 + 2.0 / 3 + 3.0 / 5) / 3, EPS);
    assert_double_equal(s.chance_p[2], 7.0 * 3 / (7.0 * 10), EPS);
    assert_double_equal(s.chance_ap, eval_chance_average_precision(10, 3, 7), EPS);

    /* The same patient's image in the results breaks the protocol. */
    const int64_t leak[] = {21, 30};
    assert_int_equal(eval_score_query(t, idx(t, 20), leak, 2, 10, &s, &err), MS_EINTERNAL);
    assert_non_null(strstr(err.msg, "same patient"));
    assert_int_equal(eval_score_query(t, idx(t, 20), leak + 1, 1, 10, &s, &err), 0);
    assert_int_equal(eval_score_query(t, idx(t, 30), leak + 1, 1, 10, &s, &err), MS_EINTERNAL);
    assert_non_null(strstr(err.msg, "query itself"));

    /* No labels: not scored; unknown result ids are simply not relevant. */
    const int64_t unknown[] = {999, 998};
    assert_int_equal(eval_score_query(t, idx(t, 60), unknown, 2, 10, &s, &err), 0);
    assert_false(s.scored);
    assert_true(isnan(s.ap));
    assert_int_equal(eval_score_query(t, idx(t, 30), unknown, 2, 10, &s, &err), 0);
    assert_double_equal(s.ap, 0.0, EPS);
    assert_int_equal(eval_score_query(t, idx(t, 30), unknown, 2, 0, &s, &err), MS_EINVAL);
    assert_int_equal(eval_score_query(t, 99, unknown, 2, 10, &s, &err), MS_EINVAL);
    eval_truth_free(t);
}

/* Relevance feedback's residual gallery: the judged images leave G and R. */
static void test_score_query_judged(void **state)
{
    (void)state;
    eval_truth *t = toy(EVAL_RULE_ANY);
    ms_err err = {0};
    eval_query_score s;
    /* Query 30: R = 3 (20, 21, 40) of G = 7. Judged 10 and 21 (21 twice):
     * G = 5, R = 2 (20, 40). Ranking 40, 50, 20. */
    const int64_t judged[] = {10, 21, 21};
    const int64_t res[] = {40, 50, 20};
    assert_int_equal(eval_score_query_judged(t, idx(t, 30), judged, 3, res, 3, 10, &s, &err), 0);
    assert_true(s.scored);
    assert_int_equal(s.R, 2);
    assert_int_equal(s.G, 5);
    assert_double_equal(s.p[0], 1.0, EPS);
    assert_double_equal(s.p[1], 0.4, EPS);
    assert_double_equal(s.p[2], 0.2, EPS);
    assert_double_equal(s.ap, (1.0 / 1 + 2.0 / 3) / 2, EPS);
    assert_double_equal(s.chance_p[2], 5.0 * 2 / (5.0 * 10), EPS);
    assert_double_equal(s.chance_ap, eval_chance_average_precision(10, 2, 5), EPS);
    /* No judged images: eval_score_query's figures. */
    eval_query_score plain;
    assert_int_equal(eval_score_query_judged(t, idx(t, 30), NULL, 0, res, 3, 10, &s, &err), 0);
    assert_int_equal(eval_score_query(t, idx(t, 30), res, 3, 10, &plain, &err), 0);
    assert_int_equal(s.R, plain.R);
    assert_int_equal(s.G, plain.G);
    assert_double_equal(s.ap, plain.ap, 0);
    /* Every relevant image judged: nothing left to find, not scored. */
    const int64_t all[] = {20, 21, 40};
    assert_int_equal(eval_score_query_judged(t, idx(t, 30), all, 3, res + 1, 1, 10, &s, &err), 0);
    assert_false(s.scored);
    assert_int_equal(s.R, 0);
    /* Protocol breaks: a judged image among the results, or of the query's
     * patient; an unknown judged id; bad counts. */
    const int64_t again[] = {50, 21};
    assert_int_equal(eval_score_query_judged(t, idx(t, 30), judged, 3, again, 2, 10, &s, &err), MS_EINTERNAL);
    assert_non_null(strstr(err.msg, "result 21 was judged already"));
    const int64_t mate[] = {21};
    assert_int_equal(eval_score_query_judged(t, idx(t, 20), mate, 1, res, 1, 10, &s, &err), MS_EINTERNAL);
    assert_non_null(strstr(err.msg, "judged image 21 is of the same patient"));
    const int64_t unknown[] = {999};
    assert_int_equal(eval_score_query_judged(t, idx(t, 30), unknown, 1, res, 1, 10, &s, &err), MS_EINVAL);
    assert_int_equal(eval_score_query_judged(t, idx(t, 30), judged, -1, res, 1, 10, &s, &err), MS_EINVAL);
    assert_int_equal(eval_score_query_judged(t, idx(t, 30), NULL, 1, res, 1, 10, &s, &err), MS_EINVAL);
    eval_truth_free(t);
}

static void test_summary(void **state)
{
    (void)state;
    eval_truth *t = toy(EVAL_RULE_EXACT);
    ms_err err = {0};
    /* Queries with their (exact-rule) results, k = 3:
     *   10 NORMAL (R=1: 50)           -> 50, 20, 30     AP 1,   P@1 1, P@3 1/3
     *   20 P|B    (R=1: 30)           -> 40, 30, 10     AP 1/2, P@1 0, P@3 1/3
     *   30 P|B    (R=1: 20)           -> 40, 10, 11     AP 0,   P@1 0, P@3 0
     *   60 no labels                  -> not scored (unlabelled)
     * and a NORMAL-only collection member 11 left out of the queries. */
    const int64_t r10[] = {50, 20, 30}, r20[] = {40, 30, 10}, r30[] = {40, 10, 11}, r60[] = {10};
    eval_query_score s[4];
    assert_int_equal(eval_score_query(t, idx(t, 10), r10, 3, 3, &s[0], &err), 0);
    assert_int_equal(eval_score_query(t, idx(t, 20), r20, 3, 3, &s[1], &err), 0);
    assert_int_equal(eval_score_query(t, idx(t, 30), r30, 3, 3, &s[2], &err), 0);
    assert_int_equal(eval_score_query(t, idx(t, 60), r60, 1, 3, &s[3], &err), 0);
    eval_summary sum;
    assert_int_equal(eval_summarise(t, s, 4, 3, &sum, &err), 0);
    assert_int_equal(sum.images, 8);
    assert_int_equal(sum.queries, 4);
    assert_int_equal(sum.scored, 3);
    assert_int_equal(sum.unlabelled, 1);
    assert_int_equal(sum.no_relevant, 0);
    assert_int_equal(sum.cuts[0], 1);
    assert_int_equal(sum.cuts[1], 0);      /* P@5 is above k = 3 */
    assert_int_equal(sum.cuts[2], 3);
    assert_double_equal(sum.map, (1.0 + 0.5 + 0.0) / 3, EPS);
    assert_double_equal(sum.p[0], 1.0 / 3, EPS);
    assert_double_equal(sum.p[2], (1.0 / 3 + 1.0 / 3) / 3, EPS);
    /* Queries 10 and 20 have G = 6, query 30 has G = 7; R = 1 for all. */
    double c = (2 * eval_chance_average_precision(3, 1, 6) + eval_chance_average_precision(3, 1, 7)) / 3;
    assert_double_equal(sum.chance_map, c, EPS);
    /* Per label: PNEUMONIA and BACTERIA have queries 20 and 30, NORMAL has 10. */
    assert_int_equal(sum.n_labels, 3);
    assert_string_equal(sum.labels[0].label, "BACTERIA");
    assert_int_equal(sum.labels[0].queries, 2);
    assert_double_equal(sum.labels[0].p_k, 1.0 / 6, EPS);
    assert_string_equal(sum.labels[1].label, "PNEUMONIA");
    assert_string_equal(sum.labels[2].label, "NORMAL");
    assert_double_equal(sum.labels[2].p_k, 1.0 / 3, EPS);
    assert_double_equal(sum.labels[2].chance_p_k, 1.0 / 6, EPS);
    eval_summary_free(&sum);

    /* A query whose labels nobody else in its gallery has: counted, not scored. */
    eval_truth *t2;
    const char *a[] = {"A"}, *b[] = {"B"};
    assert_int_equal(eval_truth_create(&t2, &err), 0);
    assert_int_equal(eval_truth_add(t2, 1, "x", a, 1, &err), 0);
    assert_int_equal(eval_truth_add(t2, 2, "x", a, 1, &err), 0);
    assert_int_equal(eval_truth_add(t2, 3, "y", b, 1, &err), 0);
    assert_int_equal(eval_truth_finish(t2, EVAL_RULE_ANY, &err), 0);
    const int64_t r1[] = {3};
    assert_int_equal(eval_score_query(t2, 0, r1, 1, 10, &s[0], &err), 0);
    assert_false(s[0].scored);
    assert_int_equal(s[0].R, 0);
    assert_int_equal(eval_summarise(t2, s, 1, 10, &sum, &err), 0);
    assert_int_equal(sum.no_relevant, 1);
    assert_int_equal(sum.scored, 0);
    assert_double_equal(sum.map, 0.0, EPS);
    eval_summary_free(&sum);
    eval_truth_free(t2);
    eval_truth_free(t);
}

static void test_cuts(void **state)
{
    (void)state;
    int c[EVAL_N_CUTS];
    eval_cuts(10, c);
    assert_int_equal(c[0], 1), assert_int_equal(c[1], 5), assert_int_equal(c[2], 10);
    eval_cuts(5, c);   /* P@5 is P@k: not twice */
    assert_int_equal(c[0], 1), assert_int_equal(c[1], 0), assert_int_equal(c[2], 5);
    eval_cuts(1, c);
    assert_int_equal(c[0], 0), assert_int_equal(c[1], 0), assert_int_equal(c[2], 1);
    eval_cuts(3, c);
    assert_int_equal(c[0], 1), assert_int_equal(c[1], 0), assert_int_equal(c[2], 3);
}

/* ---- paired comparison ---- */

static void test_paired_difference(void **state)
{
    (void)state;
    ms_err err = {0};
    eval_paired p;
    /* d = b - a = 0.2, 0, -0.1, 0.5: mean 0.15, squared deviations sum
     * 0.0025 + 0.0225 + 0.0625 + 0.1225 = 0.21, sd = sqrt(0.21 / 3),
     * se = sd / 2 = 0.1322875... */
    const double a[] = {0.5, 0.2, 0.9, 0.4}, b[] = {0.7, 0.2, 0.8, 0.9};
    assert_int_equal(eval_paired_diff(a, b, 4, &p, &err), 0);
    assert_int_equal(p.n, 4);
    assert_double_equal(p.mean_a, 0.5, EPS);
    assert_double_equal(p.mean_b, 0.65, EPS);
    assert_double_equal(p.diff, 0.15, EPS);
    assert_double_equal(p.se, sqrt(0.07) / 2, EPS);
    assert_double_equal(p.se, 0.13228756555322952, 1e-15);

    assert_int_equal(eval_paired_diff(a, b, 1, &p, &err), 0);
    assert_double_equal(p.diff, 0.2, EPS);
    assert_true(isnan(p.se));
    assert_int_equal(eval_paired_diff(a, b, 0, &p, &err), MS_EINVAL);
    const double bad[] = {0.1, NAN};
    assert_int_equal(eval_paired_diff(a, bad, 2, &p, &err), MS_EINVAL);
    /* Identical systems: no difference, no spread. */
    assert_int_equal(eval_paired_diff(a, a, 4, &p, &err), 0);
    assert_double_equal(p.diff, 0.0, EPS);
    assert_double_equal(p.se, 0.0, EPS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rule_names),
        cmocka_unit_test(test_relevance_rules),
        cmocka_unit_test(test_precision_and_ap_by_hand),
        cmocka_unit_test(test_ap_with_few_relevant),
        cmocka_unit_test(test_ap_undefined_without_relevant),
        cmocka_unit_test(test_short_result_list),
        cmocka_unit_test(test_chance_by_hand),
        cmocka_unit_test(test_chance_ap_exhaustive),
        cmocka_unit_test(test_chance_ap_simulation),
        cmocka_unit_test(test_result_order),
        cmocka_unit_test(test_truth_counts_by_hand),
        cmocka_unit_test(test_truth_bad_input),
        cmocka_unit_test(test_truth_label_case),
        cmocka_unit_test(test_truth_against_brute_force),
        cmocka_unit_test(test_score_query),
        cmocka_unit_test(test_score_query_judged),
        cmocka_unit_test(test_summary),
        cmocka_unit_test(test_cuts),
        cmocka_unit_test(test_paired_difference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
