/*
 * metrics.c - retrieval metrics, chance levels, ground truth and paired
 * differences (see metrics.h for the definitions).
 */
#include "eval/metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- rules ---- */

int eval_rule_parse(const char *name, eval_rule *rule, ms_err *err)
{
    static const struct { const char *name; eval_rule rule; } rules[] = {
        {"any", EVAL_RULE_ANY}, {"exact", EVAL_RULE_EXACT}, {"single", EVAL_RULE_SINGLE},
    };
    for (size_t i = 0; name && i < sizeof rules / sizeof rules[0]; i++)
        if (!strcmp(name, rules[i].name)) {
            *rule = rules[i].rule;
            return 0;
        }
    return ms_err_set(err, MS_EINVAL, "unknown relevance rule '%s' (use any, exact or single)",
                      name ? name : "(null)");
}

const char *eval_rule_name(eval_rule rule)
{
    switch (rule) {
    case EVAL_RULE_ANY: return "any";
    case EVAL_RULE_EXACT: return "exact";
    case EVAL_RULE_SINGLE: return "single";
    }
    return "unknown";
}

/* Labels compare without regard to ASCII case, as the store's filters do
 * ("effusion" finds "Effusion"); locale-independent on purpose. */
static int label_cmp(const char *a, const char *b)
{
    for (;; a++, b++) {
        int x = (unsigned char)*a, y = (unsigned char)*b;
        x += (x >= 'A' && x <= 'Z') ? 'a' - 'A' : 0;
        y += (y >= 'A' && y <= 'Z') ? 'a' - 'A' : 0;
        if (x != y || !x)
            return x - y;
    }
}

static int has_label(const int *set, int n, int label)
{
    for (int i = 0; i < n; i++)
        if (set[i] == label)
            return 1;
    return 0;
}

int eval_labels_relevant(eval_rule rule, const int *a, int na, const int *b, int nb)
{
    if (na <= 0 || nb <= 0)
        return 0;
    switch (rule) {
    case EVAL_RULE_SINGLE:
        return a[0] == b[0];
    case EVAL_RULE_EXACT:
        if (na != nb)
            return 0;
        /* Sets without duplicates of equal size: a within b means equal. */
        for (int i = 0; i < na; i++)
            if (!has_label(b, nb, a[i]))
                return 0;
        return 1;
    case EVAL_RULE_ANY:
        for (int i = 0; i < na; i++)
            if (has_label(b, nb, a[i]))
                return 1;
        return 0;
    }
    return 0;
}

/* ---- one ranked list ---- */

double eval_precision_at(const unsigned char *rel, int n_ret, int c)
{
    if (c < 1)
        return 0.0;
    int hits = 0;
    for (int i = 0; i < c && i < n_ret; i++)
        hits += rel[i] != 0;
    return (double)hits / c;
}

double eval_average_precision(const unsigned char *rel, int n_ret, int k, size_t R)
{
    if (R == 0 || k < 1)
        return NAN;
    double sum = 0.0;
    int hits = 0;
    for (int j = 0; j < k && j < n_ret; j++) {
        if (!rel[j])
            continue;
        hits++;
        sum += (double)hits / (j + 1);
    }
    double denom = (double)(R < (size_t)k ? R : (size_t)k);
    return sum / denom;
}

double eval_chance_precision(int c, size_t R, size_t G)
{
    if (c < 1 || G == 0)
        return 0.0;
    double shown = (size_t)c < G ? c : (double)G;
    return shown * (double)R / ((double)G * c);
}

double eval_chance_average_precision(int k, size_t R, size_t G)
{
    if (R == 0 || R > G || k < 1)
        return NAN;
    double r = (double)R, g = (double)G;
    double p_one = r / g;
    /* G = 1 only has rank 1, where the pair term is multiplied by 0. */
    double p_pair = G > 1 ? r * (r - 1.0) / (g * (g - 1.0)) : 0.0;
    size_t ranks = (size_t)k < G ? (size_t)k : G;
    double sum = 0.0;
    for (size_t j = 1; j <= ranks; j++)
        sum += (p_one + (double)(j - 1) * p_pair) / (double)j;
    return sum / (double)(R < (size_t)k ? R : (size_t)k);
}

int eval_check_order(const int64_t *ids, const float *scores, int n, ms_err *err)
{
    for (int i = 0; i < n; i++) {
        if (isnan(scores[i]))
            return ms_err_set(err, MS_EINTERNAL, "result %d (id %lld) has no score",
                              i + 1, (long long)ids[i]);
        if (i == 0)
            continue;
        int ordered = scores[i - 1] > scores[i] ||
                      (scores[i - 1] == scores[i] && ids[i - 1] < ids[i]);
        if (!ordered)
            return ms_err_set(err, MS_EINTERNAL,
                              "results %d and %d are out of order: id %lld score %.9g, then id %lld score %.9g",
                              i, i + 1, (long long)ids[i - 1], (double)scores[i - 1],
                              (long long)ids[i], (double)scores[i]);
    }
    return 0;
}

/* ---- ground truth ---- */

typedef struct truth_image {
    int64_t id;
    char *patient;          /* NULL: unknown */
    int first_label;        /* offset into label_of */
    int n_labels;
    int group;              /* patient group number */
    int set;                /* label-set number */
} truth_image;

struct eval_truth {
    truth_image *img;
    size_t n, cap;
    char **raw_labels;      /* label strings as added, until finish */
    int *label_of;          /* after finish: label numbers, per image a run */
    size_t n_raw, cap_raw;
    char **names;           /* distinct labels, sorted */
    size_t n_names;
    size_t *group_size;     /* images per patient group */
    size_t *R;
    int finished;
    eval_rule rule;
};

int eval_truth_create(eval_truth **out, ms_err *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return ms_err_set(err, MS_ENOMEM, "out of memory for the evaluation's ground truth");
    return 0;
}

void eval_truth_free(eval_truth *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++)
        free(t->img[i].patient);
    for (size_t i = 0; i < t->n_raw; i++)
        free(t->raw_labels ? t->raw_labels[i] : NULL);
    for (size_t i = 0; i < t->n_names; i++)
        free(t->names[i]);
    free(t->img);
    free(t->raw_labels);
    free(t->label_of);
    free(t->names);
    free(t->group_size);
    free(t->R);
    free(t);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap * 2 : 64;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

int eval_truth_add(eval_truth *t, int64_t id, const char *patient,
                   const char *const *labels, int n_labels, ms_err *err)
{
    if (t->finished)
        return ms_err_set(err, MS_EINVAL, "ground truth is finished; no image can be added");
    if (n_labels < 0 || (n_labels > 0 && !labels))
        return ms_err_set(err, MS_EINVAL, "image %lld: bad label list", (long long)id);
    for (int i = 0; i < n_labels; i++)
        if (!labels[i] || !labels[i][0])
            return ms_err_set(err, MS_EINVAL, "image %lld: label %d is empty", (long long)id, i + 1);
    if (grow((void **)&t->img, &t->cap, t->n + 1, sizeof *t->img) ||
        grow((void **)&t->raw_labels, &t->cap_raw, t->n_raw + (size_t)n_labels, sizeof(char *)))
        return ms_err_set(err, MS_ENOMEM, "out of memory for the evaluation's ground truth");
    truth_image *im = &t->img[t->n];
    memset(im, 0, sizeof *im);
    im->id = id;
    im->first_label = (int)t->n_raw;
    if (patient && patient[0] && !(im->patient = strdup(patient)))
        return ms_err_set(err, MS_ENOMEM, "out of memory for the evaluation's ground truth");
    for (int i = 0; i < n_labels; i++) {
        int dup = 0;
        for (int j = 0; j < i; j++)
            dup |= !label_cmp(labels[i], labels[j]);
        if (dup)
            continue;
        char *copy = strdup(labels[i]);
        if (!copy) {
            free(im->patient);
            for (size_t j = (size_t)im->first_label; j < t->n_raw; j++)
                free(t->raw_labels[j]);
            t->n_raw = (size_t)im->first_label;
            return ms_err_set(err, MS_ENOMEM, "out of memory for the evaluation's ground truth");
        }
        t->raw_labels[t->n_raw++] = copy;
        im->n_labels++;
    }
    t->n++;
    return 0;
}

static int cmp_image_id(const void *a, const void *b)
{
    int64_t x = ((const truth_image *)a)->id, y = ((const truth_image *)b)->id;
    return (x > y) - (x < y);
}

/* Case-insensitive order, then exact order: the first spelling of a label
 * in this order names it. */
static int cmp_label_strp(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    int c = label_cmp(x, y);
    return c ? c : strcmp(x, y);
}

/* Finds a label's number among the sorted distinct names. */
static int label_number(const eval_truth *t, const char *name)
{
    size_t lo = 0, hi = t->n_names;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = label_cmp(t->names[mid], name);
        if (c == 0)
            return (int)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* Interns the label strings into numbers 0..n_names-1 (sorted by name). */
static int intern_labels(eval_truth *t)
{
    t->label_of = malloc((t->n_raw ? t->n_raw : 1) * sizeof *t->label_of);
    char **sorted = malloc((t->n_raw ? t->n_raw : 1) * sizeof *sorted);
    if (!t->label_of || !sorted) {
        free(sorted);
        return MS_ENOMEM;
    }
    if (t->n_raw > 0) {
        memcpy(sorted, t->raw_labels, t->n_raw * sizeof *sorted);
        qsort(sorted, t->n_raw, sizeof *sorted, cmp_label_strp);
    }
    t->names = malloc((t->n_raw ? t->n_raw : 1) * sizeof *t->names);
    if (!t->names) {
        free(sorted);
        return MS_ENOMEM;
    }
    for (size_t i = 0; i < t->n_raw; i++) {
        if (t->n_names && !label_cmp(t->names[t->n_names - 1], sorted[i]))
            continue;
        if (!(t->names[t->n_names] = strdup(sorted[i]))) {
            free(sorted);
            return MS_ENOMEM;
        }
        t->n_names++;
    }
    free(sorted);
    for (size_t i = 0; i < t->n_raw; i++) {
        t->label_of[i] = label_number(t, t->raw_labels[i]);
        free(t->raw_labels[i]);
    }
    free(t->raw_labels);
    t->raw_labels = NULL;
    t->n_raw = 0;
    return 0;
}

/* Sort keys carry what they compare, so no global context is needed. */
typedef struct patient_key {
    const char *patient;    /* NULL: unknown */
    size_t image;
} patient_key;

static int cmp_patient_key(const void *a, const void *b)
{
    const patient_key *x = a, *y = b;
    /* Unknown patients sort last and never group together. */
    if (!x->patient || !y->patient)
        return (x->patient == NULL) - (y->patient == NULL);
    return strcmp(x->patient, y->patient);
}

/* Numbers the patients: images of one known patient share a group; an
 * image of unknown patient is a group of its own. */
static int group_patients(eval_truth *t)
{
    patient_key *order = malloc((t->n ? t->n : 1) * sizeof *order);
    t->group_size = calloc(t->n ? t->n : 1, sizeof *t->group_size);
    if (!order || !t->group_size) {
        free(order);
        return MS_ENOMEM;
    }
    for (size_t i = 0; i < t->n; i++)
        order[i] = (patient_key){t->img[i].patient, i};
    if (t->n > 1)
        qsort(order, t->n, sizeof *order, cmp_patient_key);
    int groups = -1;
    for (size_t i = 0; i < t->n; i++) {
        const char *p = order[i].patient;
        if (i == 0 || !p || !order[i - 1].patient || strcmp(p, order[i - 1].patient))
            groups++;
        t->img[order[i].image].group = groups;
        t->group_size[groups]++;
    }
    free(order);
    return 0;
}

/* Images whose labels are the same ordered list share a "set" number, so
 * relevance counts are computed once per distinct set, not once per image. */
typedef struct label_sets {
    int *rep;               /* an image of each set */
    size_t *count;          /* images per set */
    size_t n;
} label_sets;

typedef struct list_key {
    const int *labels;
    int n;
    size_t image;
} list_key;

static int cmp_list_key(const void *a, const void *b)
{
    const list_key *x = a, *y = b;
    if (x->n != y->n)
        return x->n - y->n;
    for (int i = 0; i < x->n; i++)
        if (x->labels[i] != y->labels[i])
            return x->labels[i] - y->labels[i];
    return 0;
}

static int number_sets(eval_truth *t, label_sets *ls)
{
    list_key *order = malloc((t->n ? t->n : 1) * sizeof *order);
    ls->rep = malloc((t->n ? t->n : 1) * sizeof *ls->rep);
    ls->count = calloc(t->n ? t->n : 1, sizeof *ls->count);
    if (!order || !ls->rep || !ls->count) {
        free(order);
        return MS_ENOMEM;
    }
    for (size_t i = 0; i < t->n; i++)
        order[i] = (list_key){t->label_of + t->img[i].first_label, t->img[i].n_labels, i};
    if (t->n > 1)
        qsort(order, t->n, sizeof *order, cmp_list_key);
    ls->n = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (i == 0 || cmp_list_key(&order[i - 1], &order[i]))
            ls->rep[ls->n++] = (int)order[i].image;
        t->img[order[i].image].set = (int)ls->n - 1;
        ls->count[ls->n - 1]++;
    }
    free(order);
    return 0;
}

/* Relevant images in the whole collection for every label set, found via
 * an inverted index label -> sets (every rule implies a shared label). */
static int count_relevant_per_set(const eval_truth *t, const label_sets *ls, size_t *per_set)
{
    size_t nl = t->n_names;
    size_t *start = calloc(nl + 1, sizeof *start);
    size_t total = 0;
    for (size_t s = 0; s < ls->n; s++)
        total += (size_t)t->img[ls->rep[s]].n_labels;
    int *members = malloc((total ? total : 1) * sizeof *members);
    size_t *fill = calloc(nl + 1, sizeof *fill);
    size_t *stamp = malloc((ls->n ? ls->n : 1) * sizeof *stamp);
    if (!start || !members || !fill || !stamp) {
        free(start), free(members), free(fill), free(stamp);
        return MS_ENOMEM;
    }
    for (size_t s = 0; s < ls->n; s++) {
        const truth_image *im = &t->img[ls->rep[s]];
        for (int i = 0; i < im->n_labels; i++)
            start[t->label_of[im->first_label + i] + 1]++;
    }
    for (size_t l = 0; l < nl; l++)
        start[l + 1] += start[l];
    for (size_t s = 0; s < ls->n; s++) {
        const truth_image *im = &t->img[ls->rep[s]];
        for (int i = 0; i < im->n_labels; i++) {
            int l = t->label_of[im->first_label + i];
            members[start[l] + fill[l]++] = (int)s;
        }
    }
    for (size_t s = 0; s < ls->n; s++)
        stamp[s] = (size_t)-1;
    for (size_t s = 0; s < ls->n; s++) {
        const truth_image *a = &t->img[ls->rep[s]];
        per_set[s] = 0;
        for (int i = 0; i < a->n_labels; i++) {
            int l = t->label_of[a->first_label + i];
            for (size_t m = start[l]; m < start[l + 1]; m++) {
                size_t o = (size_t)members[m];
                if (stamp[o] == s)
                    continue;
                stamp[o] = s;
                const truth_image *b = &t->img[ls->rep[o]];
                if (eval_labels_relevant(t->rule, t->label_of + a->first_label, a->n_labels,
                                         t->label_of + b->first_label, b->n_labels))
                    per_set[s] += ls->count[o];
            }
        }
    }
    free(start), free(members), free(fill), free(stamp);
    return 0;
}

/* R of each image: relevant images of the collection minus those of its own
 * patient (itself included). Images of one patient are found through a
 * patient-sorted order. */
static int compute_relevant_counts(eval_truth *t, const size_t *per_set)
{
    size_t *order = malloc((t->n ? t->n : 1) * sizeof *order);
    size_t *first = calloc((t->n ? t->n : 1) + 1, sizeof *first);
    t->R = calloc(t->n ? t->n : 1, sizeof *t->R);
    if (!order || !first || !t->R) {
        free(order), free(first);
        return MS_ENOMEM;
    }
    size_t n_groups = 0;
    for (size_t i = 0; i < t->n; i++)
        if ((size_t)t->img[i].group + 1 > n_groups)
            n_groups = (size_t)t->img[i].group + 1;
    for (size_t g = 0; g < n_groups; g++)
        first[g + 1] = first[g] + t->group_size[g];
    size_t *fill = calloc(n_groups ? n_groups : 1, sizeof *fill);
    if (!fill) {
        free(order), free(first);
        return MS_ENOMEM;
    }
    for (size_t i = 0; i < t->n; i++) {
        int g = t->img[i].group;
        order[first[g] + fill[g]++] = i;
    }
    for (size_t q = 0; q < t->n; q++) {
        const truth_image *a = &t->img[q];
        size_t same = 0;
        int g = a->group;
        for (size_t m = first[g]; m < first[g + 1]; m++) {
            const truth_image *b = &t->img[order[m]];
            same += (size_t)eval_labels_relevant(t->rule, t->label_of + a->first_label, a->n_labels,
                                                 t->label_of + b->first_label, b->n_labels);
        }
        t->R[q] = per_set[a->set] - same;
    }
    free(order), free(first), free(fill);
    return 0;
}

int eval_truth_finish(eval_truth *t, eval_rule rule, ms_err *err)
{
    if (t->finished)
        return ms_err_set(err, MS_EINVAL, "ground truth is finished already");
    t->rule = rule;
    if (t->n > 1)
        qsort(t->img, t->n, sizeof *t->img, cmp_image_id);
    for (size_t i = 1; i < t->n; i++)
        if (t->img[i].id == t->img[i - 1].id)
            return ms_err_set(err, MS_ECONFLICT, "image %lld appears twice in the ground truth",
                              (long long)t->img[i].id);
    if (intern_labels(t) || group_patients(t))
        return ms_err_set(err, MS_ENOMEM, "out of memory for the evaluation's ground truth");
    label_sets ls = {0};
    size_t *per_set = NULL;
    int rc = number_sets(t, &ls);
    if (!rc && !(per_set = malloc((ls.n ? ls.n : 1) * sizeof *per_set)))
        rc = MS_ENOMEM;
    if (!rc)
        rc = count_relevant_per_set(t, &ls, per_set);
    if (!rc)
        rc = compute_relevant_counts(t, per_set);
    free(ls.rep), free(ls.count), free(per_set);
    if (rc)
        return ms_err_set(err, MS_ENOMEM, "out of memory for the evaluation's ground truth");
    t->finished = 1;
    return 0;
}

size_t eval_truth_count(const eval_truth *t) { return t->n; }
eval_rule eval_truth_rule(const eval_truth *t) { return t->rule; }
int64_t eval_truth_id(const eval_truth *t, size_t i) { return t->img[i].id; }

ptrdiff_t eval_truth_find(const eval_truth *t, int64_t id)
{
    size_t lo = 0, hi = t->finished ? t->n : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->img[mid].id == id)
            return (ptrdiff_t)mid;
        if (t->img[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

const char *eval_truth_patient(const eval_truth *t, size_t i)
{
    return t->img[i].patient ? t->img[i].patient : "";
}

int eval_truth_same_patient(const eval_truth *t, size_t a, size_t b)
{
    return t->img[a].group == t->img[b].group;
}

const int *eval_truth_labels(const eval_truth *t, size_t i, int *n)
{
    *n = t->img[i].n_labels;
    return t->label_of + t->img[i].first_label;
}

size_t eval_truth_label_count(const eval_truth *t) { return t->n_names; }

const char *eval_truth_label_name(const eval_truth *t, int label)
{
    return label >= 0 && (size_t)label < t->n_names ? t->names[label] : "";
}

int eval_truth_relevant(const eval_truth *t, size_t q, size_t j)
{
    if (q == j)
        return 0;
    const truth_image *a = &t->img[q], *b = &t->img[j];
    return eval_labels_relevant(t->rule, t->label_of + a->first_label, a->n_labels,
                                t->label_of + b->first_label, b->n_labels);
}

size_t eval_truth_gallery(const eval_truth *t, size_t q)
{
    return t->n - t->group_size[t->img[q].group];
}

size_t eval_truth_relevant_count(const eval_truth *t, size_t q) { return t->R[q]; }

/* ---- per query and summary ---- */

void eval_cuts(int k, int cuts[EVAL_N_CUTS])
{
    const int wanted[EVAL_N_CUTS] = {1, 5, k};
    for (int i = 0; i < EVAL_N_CUTS - 1; i++)
        cuts[i] = wanted[i] < k ? wanted[i] : 0;
    cuts[EVAL_N_CUTS - 1] = k;
}

/* A result or judged image j of query q from outside its gallery means the
 * search did not follow the protocol. */
static int outside_gallery(const eval_truth *t, size_t q, ptrdiff_t j, int64_t id, const char *what, ms_err *err)
{
    if (j < 0 || !eval_truth_same_patient(t, q, (size_t)j))
        return 0;
    return ms_err_set(err, MS_EINTERNAL, "query %lld: %s %lld is %s, outside the gallery", (long long)t->img[q].id,
                      what, (long long)id, (size_t)j == q ? "the query itself" : "of the same patient");
}

/* Takes the judged images out of out->G and out->R. */
static int remove_judged(const eval_truth *t, size_t q, const int64_t *judged, int n_judged, eval_query_score *out,
                         ms_err *err)
{
    for (int i = 0; i < n_judged; i++) {
        int repeat = 0;
        for (int j = 0; j < i && !repeat; j++)
            repeat = judged[j] == judged[i];
        if (repeat)
            continue;
        ptrdiff_t j = eval_truth_find(t, judged[i]);
        if (j < 0)
            return ms_err_set(err, MS_EINVAL, "query %lld: judged image %lld is not in the collection",
                              (long long)out->id, (long long)judged[i]);
        if (outside_gallery(t, q, j, judged[i], "judged image", err))
            return MS_EINTERNAL;
        out->G--;
        if (eval_truth_relevant(t, q, (size_t)j))
            out->R--;
    }
    return 0;
}

static int was_judged(const int64_t *judged, int n_judged, int64_t id)
{
    for (int i = 0; i < n_judged; i++)
        if (judged[i] == id)
            return 1;
    return 0;
}

static int score_query(const eval_truth *t, size_t q, const int64_t *judged, int n_judged,
                       const int64_t *result_ids, int n_ret, int k, eval_query_score *out, ms_err *err)
{
    if (!t->finished || q >= t->n || k < 1 || n_ret < 0 || (n_ret > 0 && !result_ids) || n_judged < 0 ||
        (n_judged > 0 && !judged))
        return ms_err_set(err, MS_EINVAL, "bad query to score (k %d, %d results, %d judged)", k, n_ret, n_judged);
    memset(out, 0, sizeof *out);
    out->id = t->img[q].id;
    out->R = t->R[q];
    out->G = eval_truth_gallery(t, q);
    out->ap = out->chance_ap = NAN;
    int rc = remove_judged(t, q, judged, n_judged, out, err);
    if (rc)
        return rc;
    if (t->img[q].n_labels == 0 || out->R == 0)
        return 0;
    int shown = n_ret < k ? n_ret : k;
    unsigned char *rel = calloc((size_t)(shown ? shown : 1), 1);
    if (!rel)
        return ms_err_set(err, MS_ENOMEM, "out of memory scoring a query");
    for (int i = 0; i < shown; i++) {
        ptrdiff_t j = eval_truth_find(t, result_ids[i]);
        if (outside_gallery(t, q, j, result_ids[i], "result", err) ||
            (was_judged(judged, n_judged, result_ids[i]) &&
             ms_err_set(err, MS_EINTERNAL, "query %lld: result %lld was judged already", (long long)out->id,
                        (long long)result_ids[i]))) {
            free(rel);
            return MS_EINTERNAL;
        }
        rel[i] = j >= 0 && eval_truth_relevant(t, q, (size_t)j);
    }
    int cuts[EVAL_N_CUTS];
    eval_cuts(k, cuts);
    for (int c = 0; c < EVAL_N_CUTS; c++)
        if (cuts[c]) {
            out->p[c] = eval_precision_at(rel, shown, cuts[c]);
            out->chance_p[c] = eval_chance_precision(cuts[c], out->R, out->G);
        }
    out->ap = eval_average_precision(rel, shown, k, out->R);
    out->chance_ap = eval_chance_average_precision(k, out->R, out->G);
    out->scored = 1;
    free(rel);
    return 0;
}

int eval_score_query(const eval_truth *t, size_t q, const int64_t *result_ids,
                     int n_ret, int k, eval_query_score *out, ms_err *err)
{
    return score_query(t, q, NULL, 0, result_ids, n_ret, k, out, err);
}

int eval_score_query_judged(const eval_truth *t, size_t q, const int64_t *judged, int n_judged,
                            const int64_t *result_ids, int n_ret, int k, eval_query_score *out, ms_err *err)
{
    return score_query(t, q, judged, n_judged, result_ids, n_ret, k, out, err);
}

static int cmp_label_summary(const void *a, const void *b)
{
    const eval_label_summary *x = a, *y = b;
    if (x->queries != y->queries)
        return x->queries < y->queries ? 1 : -1;
    return label_cmp(x->label, y->label);
}

int eval_summarise(const eval_truth *t, const eval_query_score *scores, size_t n,
                   int k, eval_summary *out, ms_err *err)
{
    memset(out, 0, sizeof *out);
    if (!t->finished || k < 1)
        return ms_err_set(err, MS_EINVAL, "cannot summarise: %s",
                          k < 1 ? "k must be positive" : "ground truth not finished");
    out->k = k;
    out->rule = t->rule;
    eval_cuts(k, out->cuts);
    out->images = t->n;
    out->queries = n;
    size_t nl = t->n_names;
    double *sum_p = calloc(nl ? nl : 1, sizeof *sum_p);
    double *sum_c = calloc(nl ? nl : 1, sizeof *sum_c);
    size_t *cnt = calloc(nl ? nl : 1, sizeof *cnt);
    if (!sum_p || !sum_c || !cnt) {
        free(sum_p), free(sum_c), free(cnt);
        return ms_err_set(err, MS_ENOMEM, "out of memory summarising the evaluation");
    }
    for (size_t i = 0; i < n; i++) {
        const eval_query_score *s = &scores[i];
        ptrdiff_t q = eval_truth_find(t, s->id);
        int n_lab = 0;
        const int *lab = q >= 0 ? eval_truth_labels(t, (size_t)q, &n_lab) : NULL;
        if (!s->scored) {
            if (n_lab == 0)
                out->unlabelled++;
            else
                out->no_relevant++;
            continue;
        }
        out->scored++;
        for (int c = 0; c < EVAL_N_CUTS; c++) {
            out->p[c] += s->p[c];
            out->chance_p[c] += s->chance_p[c];
        }
        out->map += s->ap;
        out->chance_map += s->chance_ap;
        for (int l = 0; l < n_lab; l++) {
            sum_p[lab[l]] += s->p[EVAL_N_CUTS - 1];
            sum_c[lab[l]] += s->chance_p[EVAL_N_CUTS - 1];
            cnt[lab[l]]++;
        }
    }
    if (out->scored) {
        double m = (double)out->scored;
        for (int c = 0; c < EVAL_N_CUTS; c++) {
            out->p[c] /= m;
            out->chance_p[c] /= m;
        }
        out->map /= m;
        out->chance_map /= m;
    }
    for (size_t l = 0; l < nl; l++)
        out->n_labels += cnt[l] > 0;
    out->labels = calloc(out->n_labels ? out->n_labels : 1, sizeof *out->labels);
    if (!out->labels) {
        free(sum_p), free(sum_c), free(cnt);
        return ms_err_set(err, MS_ENOMEM, "out of memory summarising the evaluation");
    }
    size_t w = 0;
    for (size_t l = 0; l < nl; l++)
        if (cnt[l]) {
            out->labels[w] = (eval_label_summary){
                .label = t->names[l], .queries = cnt[l],
                .p_k = sum_p[l] / (double)cnt[l], .chance_p_k = sum_c[l] / (double)cnt[l]};
            w++;
        }
    if (out->n_labels > 1)
        qsort(out->labels, out->n_labels, sizeof *out->labels, cmp_label_summary);
    free(sum_p), free(sum_c), free(cnt);
    return 0;
}

void eval_summary_free(eval_summary *s)
{
    if (s) {
        free(s->labels);
        s->labels = NULL;
        s->n_labels = 0;
    }
}

/* ---- paired comparison ---- */

int eval_paired_diff(const double *a, const double *b, size_t n, eval_paired *out,
                     ms_err *err)
{
    memset(out, 0, sizeof *out);
    if (n == 0)
        return ms_err_set(err, MS_EINVAL, "no paired queries to compare");
    double sa = 0, sb = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i]))
            return ms_err_set(err, MS_EINVAL, "paired value %zu is not a finite number", i);
        sa += a[i];
        sb += b[i];
    }
    out->n = n;
    out->mean_a = sa / (double)n;
    out->mean_b = sb / (double)n;
    out->diff = out->mean_b - out->mean_a;
    if (n < 2) {
        out->se = NAN;
        return 0;
    }
    /* Two passes: the mean first, then squared deviations (stable enough
     * for differences bounded by 1). */
    double dm = 0;
    for (size_t i = 0; i < n; i++)
        dm += b[i] - a[i];
    dm /= (double)n;
    double ss = 0;
    for (size_t i = 0; i < n; i++) {
        double d = b[i] - a[i] - dm;
        ss += d * d;
    }
    out->se = sqrt(ss / (double)(n - 1)) / sqrt((double)n);
    return 0;
}
