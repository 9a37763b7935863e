/*
 * filter.c - metadata filters: the expression parser (store_filter_parse)
 * and the translation of a filter into one SQL query (store_filter_sql).
 *
 * The query is assembled from fixed fragments only; every value becomes a
 * placeholder and travels separately as a bound parameter, so a value such
 * as  x' OR 1=1; DROP TABLE images; --  is just a string that matches
 * nothing.
 */
#include "store/store_impl.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_EXPR 65536  /* bytes of a filter expression */

void store_filter_init(store_filter *f)
{
    memset(f, 0, sizeof *f);
    f->age_min = -1;
    f->age_max = -1;
}

static void free_strings(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void store_filter_free(store_filter *f)
{
    if (!f)
        return;
    free_strings(f->labels_any, f->n_labels_any);
    free_strings(f->labels_all, f->n_labels_all);
    free_strings(f->views, f->n_views);
    free(f->patient_id);
    free(f->exclude_patient);
    for (int i = 0; i < f->n_kv; i++) {
        free(f->kv[i].key);
        free(f->kv[i].value);
    }
    free(f->kv);
    store_filter_init(f);
}

/* ---- parsing ---- */

/* The term being parsed, for messages: printable ASCII kept, anything else
 * shown as '?', long terms cut. */
typedef struct term_ctx {
    char shown[88];
    ms_err *err;
} term_ctx;

static int bad_term(term_ctx *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad_term(term_ctx *t, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return ms_err_set(t->err, MS_EINVAL, "bad filter term '%s': %s", t->shown, why);
}

static void show_term(const char *term, size_t len, char *shown, size_t cap)
{
    size_t n = len < cap - 4 ? len : cap - 4;
    for (size_t i = 0; i < n; i++)
        shown[i] = (term[i] >= ' ' && term[i] <= '~') ? term[i] : '?';
    if (n < len)
        memcpy(shown + n, "...", 3), n += 3;
    shown[n] = '\0';
}

/* Reads one piece of a term from *p up to an unquoted character of seps (or
 * the end), removing quotes and escapes, into a malloc'd *out. *stop gets the
 * separator met ('\0' at the end); *p is left on it. */
static int read_piece(term_ctx *t, const char **p, const char *end, const char *seps,
                      char **out, char *stop)
{
    char *buf = malloc((size_t)(end - *p) + 1);
    if (!buf)
        return ms_err_set(t->err, MS_ENOMEM, "out of memory parsing a filter");
    size_t n = 0;
    int quoted = 0;
    const char *q = *p;
    for (; q < end; q++) {
        char c = *q;
        if (quoted) {
            if (c == '"') {
                quoted = 0;
                continue;
            }
            if (c == '\\' && q + 1 < end && (q[1] == '"' || q[1] == '\\'))
                c = *++q;
        } else if (c == '"') {
            quoted = 1;
            continue;
        } else if (strchr(seps, c)) {
            break;
        }
        buf[n++] = c;
    }
    if (quoted) {
        free(buf);
        return bad_term(t, "a double quote is not closed");
    }
    buf[n] = '\0';
    *stop = q < end ? *q : '\0';
    *p = q;
    *out = buf;
    return 0;
}

/* Appends s to v (taking it; freed on failure). */
static int push_string(term_ctx *t, char ***v, int *n, char *s)
{
    if (*n >= STORE_MAX_FILTER_VALUES) {
        free(s);
        return bad_term(t, "more than %d values", STORE_MAX_FILTER_VALUES);
    }
    char **grown = realloc(*v, (size_t)(*n + 1) * sizeof *grown);
    if (!grown) {
        free(s);
        return ms_err_set(t->err, MS_ENOMEM, "out of memory parsing a filter");
    }
    grown[(*n)++] = s;
    *v = grown;
    return 0;
}

/* A value read from a term must be non-empty (unless allow_empty) valid text. */
static int check_value(term_ctx *t, const char *v, int allow_empty)
{
    if (!*v && !allow_empty)
        return bad_term(t, "a value is empty");
    ms_err sub;
    if (store_check_text(v, 0, allow_empty, "value", &sub) < 0)
        return bad_term(t, "%s", sub.msg);
    return 0;
}

/* labels:A|B (any), labels:A+B or labels:A (all). */
static int parse_labels(term_ctx *t, const char *p, const char *end, store_filter *f)
{
    char **vals = NULL;
    int n = 0, rc = 0;
    char kind = 0;  /* '|' or '+' once seen */
    for (;;) {
        char *v, stop;
        if ((rc = read_piece(t, &p, end, "|+", &v, &stop)) < 0)
            break;
        if ((rc = check_value(t, v, 0)) < 0) {
            free(v);
            break;
        }
        if ((rc = push_string(t, &vals, &n, v)) < 0)  /* frees v on failure */
            break;
        if (!stop)
            break;
        if (kind && stop != kind) {
            rc = bad_term(t, "mixes '|' (any of) and '+' (all of)");
            break;
        }
        kind = stop;
        p++;
    }
    if (rc == 0 && kind == '|') {
        if (f->n_labels_any > 0)
            rc = bad_term(t, "only one labels:A|B (any of) term is allowed");
        else
            f->labels_any = vals, f->n_labels_any = n, vals = NULL, n = 0;
    }
    for (int i = 0; rc == 0 && i < n; i++) {
        rc = push_string(t, &f->labels_all, &f->n_labels_all, vals[i]);
        vals[i] = NULL;
    }
    free_strings(vals, n);
    return rc;
}

static int parse_views(term_ctx *t, const char *p, const char *end, store_filter *f)
{
    if (f->n_views > 0)
        return bad_term(t, "view is given twice");
    for (;;) {
        char *v, stop;
        int rc = read_piece(t, &p, end, "|", &v, &stop);
        if (rc < 0)
            return rc;
        if ((rc = check_value(t, v, 0)) < 0) {
            free(v);
            return rc;
        }
        store_fold_view(v, v, strlen(v) + 1);
        if ((rc = push_string(t, &f->views, &f->n_views, v)) < 0)
            return rc;
        if (!stop)
            return 0;
        p++;
    }
}

/* Reads "", or a whole number of years 0..200, from s. */
static int parse_years(const char *s, size_t len, int *out)
{
    if (len == 0) {
        *out = -1;
        return 0;
    }
    if (len > 3)
        return -1;
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > 200)
        return -1;
    *out = v;
    return 0;
}

static int parse_age(term_ctx *t, const char *v, store_filter *f)
{
    if (f->age_min >= 0 || f->age_max >= 0)
        return bad_term(t, "age is given twice");
    const char *dash = strchr(v, '-');
    int lo, hi;
    if (!dash) {
        if (!*v || parse_years(v, strlen(v), &lo) < 0)
            return bad_term(t, "age must be N, N-M, N- or -M in whole years 0..200");
        hi = lo;
    } else if (parse_years(v, (size_t)(dash - v), &lo) < 0 ||
               parse_years(dash + 1, strlen(dash + 1), &hi) < 0 || (lo < 0 && hi < 0)) {
        return bad_term(t, "age must be N, N-M, N- or -M in whole years 0..200");
    }
    if (lo >= 0 && hi >= 0 && lo > hi)
        return bad_term(t, "the lower age %d is above the upper %d", lo, hi);
    f->age_min = lo;
    f->age_max = hi;
    return 0;
}

static int parse_sex(term_ctx *t, const char *v, store_filter *f)
{
    if (f->sex)
        return bad_term(t, "sex is given twice");
    if (!strcasecmp(v, "f") || !strcasecmp(v, "female"))
        f->sex = 'F';
    else if (!strcasecmp(v, "m") || !strcasecmp(v, "male"))
        f->sex = 'M';
    else
        return bad_term(t, "sex must be M, F, male or female");
    return 0;
}

/* field:value with a single value (sex, age, patient, -patient). */
static int parse_single(term_ctx *t, const char *field, int negated, const char *p,
                        const char *end, store_filter *f)
{
    char *v, stop;
    int rc = read_piece(t, &p, end, "", &v, &stop);
    if (rc < 0)
        return rc;
    if ((rc = check_value(t, v, 0)) < 0)
        goto out;
    if (negated && strcmp(field, "patient") != 0) {
        rc = bad_term(t, "only patient can be negated (-patient:ID)");
    } else if (!strcmp(field, "sex")) {
        rc = parse_sex(t, v, f);
    } else if (!strcmp(field, "age")) {
        rc = parse_age(t, v, f);
    } else {
        char **slot = negated ? &f->exclude_patient : &f->patient_id;
        if (*slot) {
            rc = bad_term(t, "%spatient is given twice", negated ? "-" : "");
        } else {
            *slot = v;
            v = NULL;
        }
    }
out:
    free(v);
    return rc;
}

static int parse_kv(term_ctx *t, char *key, const char *p, const char *end, store_filter *f)
{
    char *value = NULL, stop;
    int rc = check_value(t, key, 0);
    if (rc == 0)
        rc = read_piece(t, &p, end, "", &value, &stop);
    if (rc == 0)
        rc = check_value(t, value, 1);
    if (rc == 0 && f->n_kv >= STORE_MAX_FILTER_VALUES)
        rc = bad_term(t, "more than %d key=value terms", STORE_MAX_FILTER_VALUES);
    if (rc == 0) {
        store_kv *grown = realloc(f->kv, (size_t)(f->n_kv + 1) * sizeof *grown);
        if (!grown) {
            rc = ms_err_set(t->err, MS_ENOMEM, "out of memory parsing a filter");
        } else {
            f->kv = grown;
            f->kv[f->n_kv].key = key;
            f->kv[f->n_kv].value = value;
            f->n_kv++;
            return 0;
        }
    }
    free(key);
    free(value);
    return rc;
}

static int parse_term(const char *term, size_t len, store_filter *f, ms_err *err)
{
    term_ctx t = {.err = err};
    show_term(term, len, t.shown, sizeof t.shown);
    const char *p = term, *end = term + len;
    int negated = *p == '-';
    if (negated)
        p++;
    char *name, stop;
    int rc = read_piece(&t, &p, end, ":=", &name, &stop);
    if (rc < 0)
        return rc;
    if (!stop) {
        free(name);
        return bad_term(&t, "expected field:value (labels, sex, age, view, patient) or key=value");
    }
    p++;
    if (stop == '=') {
        if (negated) {
            free(name);
            return bad_term(&t, "key=value cannot be negated");
        }
        return parse_kv(&t, name, p, end, f);  /* takes name */
    }
    if (!strcmp(name, "labels") || !strcmp(name, "label"))
        rc = negated ? bad_term(&t, "only patient can be negated (-patient:ID)")
                     : parse_labels(&t, p, end, f);
    else if (!strcmp(name, "view"))
        rc = negated ? bad_term(&t, "only patient can be negated (-patient:ID)")
                     : parse_views(&t, p, end, f);
    else if (!strcmp(name, "sex") || !strcmp(name, "age") || !strcmp(name, "patient"))
        rc = parse_single(&t, name, negated, p, end, f);
    else
        rc = bad_term(&t, "unknown field (known: labels, sex, age, view, patient; or key=value)");
    free(name);
    return rc;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int store_filter_parse(const char *expr, store_filter *f, ms_err *err)
{
    if (!f)
        return ms_err_set(err, MS_EINVAL, "store_filter_parse: f is NULL");
    store_filter_init(f);
    if (!expr)
        return 0;
    size_t len = strnlen(expr, MAX_EXPR + 1);
    if (len > MAX_EXPR)
        return ms_err_set(err, MS_EINVAL, "filter expression is longer than %d bytes", MAX_EXPR);
    const char *p = expr, *end = expr + len;
    while (p < end) {
        while (p < end && is_space(*p))
            p++;
        if (p == end)
            break;
        /* A term runs to the next whitespace outside double quotes. */
        const char *start = p;
        int quoted = 0;
        for (; p < end && (quoted || !is_space(*p)); p++) {
            if (quoted && *p == '\\' && p + 1 < end)
                p++;
            else if (*p == '"')
                quoted = !quoted;
        }
        int rc = parse_term(start, (size_t)(p - start), f, err);
        if (rc < 0) {
            store_filter_free(f);
            return rc;
        }
    }
    return 0;
}

/* ---- SQL ---- */

typedef struct sqlbuf {
    char *s;
    size_t n, cap;
    int oom;
} sqlbuf;

static void sb_add(sqlbuf *b, const char *frag)
{
    size_t k = strlen(frag);
    if (b->oom)
        return;
    if (b->n + k + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 512) + k;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->n, frag, k + 1);
    b->n += k;
}

typedef struct query_builder {
    sqlbuf sql;
    filter_sql *out;
    enum placeholder_style style;
    int n_conditions;
    int oom;
} query_builder;

/* Starts a condition: " WHERE " for the first, " AND " after. */
static void qb_cond(query_builder *q, const char *frag)
{
    sb_add(&q->sql, q->n_conditions++ ? " AND " : " WHERE ");
    sb_add(&q->sql, frag);
}

/* Appends a placeholder bound to a copy of text (or to the integer). */
static void qb_param(query_builder *q, const char *text, int64_t i)
{
    filter_sql *o = q->out;
    filter_param *grown = realloc(o->params, (size_t)(o->n_params + 1) * sizeof *grown);
    char *copy = text ? strdup(text) : NULL;
    if (!grown || (text && !copy)) {
        free(copy);
        if (grown)
            o->params = grown;
        q->oom = 1;
        return;
    }
    o->params = grown;
    o->params[o->n_params++] = (filter_param){.is_int = !text, .i = i, .s = copy};
    char ph[16];
    if (q->style == PLACEHOLDER_DOLLAR)
        snprintf(ph, sizeof ph, "$%d", o->n_params);
    else
        snprintf(ph, sizeof ph, "?");
    sb_add(&q->sql, ph);
}

/* "(?, ?, ?)" bound to the given strings. */
static void qb_list(query_builder *q, char *const *vals, int n)
{
    sb_add(&q->sql, "(");
    for (int i = 0; i < n; i++) {
        if (i)
            sb_add(&q->sql, ", ");
        qb_param(q, vals[i], 0);
    }
    sb_add(&q->sql, ")");
}

static int check_list(char *const *v, int n, const char *what, ms_err *err)
{
    if (n < 0 || n > STORE_MAX_FILTER_VALUES || (n > 0 && !v))
        return ms_err_set(err, MS_EINVAL, "filter has %d %s (0..%d allowed)", n, what,
                          STORE_MAX_FILTER_VALUES);
    for (int i = 0; i < n; i++) {
        int rc = store_check_text(v[i], 0, 0, what, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* A filter built by hand (not by store_filter_parse) gets the same checks. */
static int check_filter(const store_filter *f, ms_err *err)
{
    int rc;
    if ((rc = check_list(f->labels_any, f->n_labels_any, "labels (any of)", err)) < 0 ||
        (rc = check_list(f->labels_all, f->n_labels_all, "labels (all of)", err)) < 0 ||
        (rc = check_list(f->views, f->n_views, "views", err)) < 0 ||
        (rc = store_check_text(f->patient_id, 1, 0, "filter patient", err)) < 0 ||
        (rc = store_check_text(f->exclude_patient, 1, 0, "filter excluded patient", err)) < 0)
        return rc;
    if (f->sex != 0 && f->sex != 'M' && f->sex != 'F')
        return ms_err_set(err, MS_EINVAL, "filter sex must be 'M', 'F' or 0 (any)");
    if (f->age_min < -1 || f->age_min > 200 || f->age_max < -1 || f->age_max > 200)
        return ms_err_set(err, MS_EINVAL, "filter ages %d..%d must be within 0..200 (-1 = open)",
                          f->age_min, f->age_max);
    if (f->age_min >= 0 && f->age_max >= 0 && f->age_min > f->age_max)
        return ms_err_set(err, MS_EINVAL, "filter lower age %d is above the upper %d", f->age_min,
                          f->age_max);
    if (f->n_kv < 0 || f->n_kv > STORE_MAX_FILTER_VALUES || (f->n_kv > 0 && !f->kv))
        return ms_err_set(err, MS_EINVAL, "filter has %d key=value terms (0..%d allowed)", f->n_kv,
                          STORE_MAX_FILTER_VALUES);
    for (int i = 0; i < f->n_kv; i++)
        if ((rc = store_check_text(f->kv[i].key, 0, 0, "filter key", err)) < 0 ||
            (rc = store_check_text(f->kv[i].value, 0, 1, "filter value", err)) < 0)
            return rc;
    return 0;
}

/* Folds (label or view) and de-duplicates a list into fresh strings. */
static int fold_unique(char *const *v, int n, int is_label, char ***out, int *n_out, ms_err *err)
{
    *out = NULL;
    *n_out = 0;
    if (n == 0)
        return 0;
    char **u = calloc((size_t)n, sizeof *u);
    if (!u)
        return ms_err_set(err, MS_ENOMEM, "out of memory building a filter");
    int k = 0;
    for (int i = 0; i < n; i++) {
        size_t cap = strlen(v[i]) + 1;
        char *c = malloc(cap);
        if (!c) {
            free_strings(u, k);
            return ms_err_set(err, MS_ENOMEM, "out of memory building a filter");
        }
        if (is_label)
            store_fold_label(v[i], c, cap);
        else
            store_fold_view(v[i], c, cap);
        int dup = 0;
        for (int j = 0; j < k && !dup; j++)
            dup = !strcmp(u[j], c);
        if (dup)
            free(c);
        else
            u[k++] = c;
    }
    *out = u;
    *n_out = k;
    return 0;
}

static void build_conditions(query_builder *q, const store_filter *f, char **any, int n_any,
                             char **all, int n_all, char **views, int n_views)
{
    if (f->sex) {
        char sex[2] = {f->sex, '\0'};
        qb_cond(q, "m.sex = ");
        qb_param(q, sex, 0);
    }
    if (f->age_min >= 0) {
        qb_cond(q, "m.age >= ");
        qb_param(q, NULL, f->age_min);
    }
    if (f->age_max >= 0) {
        qb_cond(q, "m.age <= ");
        qb_param(q, NULL, f->age_max);
    }
    if (n_views > 0) {
        qb_cond(q, "m.view IN ");
        qb_list(q, views, n_views);
    }
    if (f->patient_id) {
        qb_cond(q, "m.patient_id = ");
        qb_param(q, f->patient_id, 0);
    }
    if (f->exclude_patient) {
        /* Images of unknown patient are not that patient's. */
        qb_cond(q, "(m.patient_id IS NULL OR m.patient_id <> ");
        qb_param(q, f->exclude_patient, 0);
        sb_add(&q->sql, ")");
    }
    if (n_any > 0) {
        qb_cond(q, "i.id IN (SELECT image_id FROM labels WHERE label_key IN ");
        qb_list(q, any, n_any);
        sb_add(&q->sql, ")");
    }
    if (n_all > 0) {
        qb_cond(q, "i.id IN (SELECT image_id FROM labels WHERE label_key IN ");
        qb_list(q, all, n_all);
        sb_add(&q->sql, " GROUP BY image_id HAVING count(*) = ");
        qb_param(q, NULL, n_all);
        sb_add(&q->sql, ")");
    }
    for (int i = 0; i < f->n_kv; i++) {
        qb_cond(q, "i.id IN (SELECT image_id FROM kv WHERE key = ");
        qb_param(q, f->kv[i].key, 0);
        sb_add(&q->sql, " AND value = ");
        qb_param(q, f->kv[i].value, 0);
        sb_add(&q->sql, ")");
    }
}

int store_filter_sql(const store_filter *f, enum placeholder_style style, filter_sql *out,
                     ms_err *err)
{
    memset(out, 0, sizeof *out);
    int rc = check_filter(f, err);
    if (rc < 0)
        return rc;
    char **any = NULL, **all = NULL, **views = NULL;
    int n_any = 0, n_all = 0, n_views = 0;
    if ((rc = fold_unique(f->labels_any, f->n_labels_any, 1, &any, &n_any, err)) < 0 ||
        (rc = fold_unique(f->labels_all, f->n_labels_all, 1, &all, &n_all, err)) < 0 ||
        (rc = fold_unique(f->views, f->n_views, 0, &views, &n_views, err)) < 0)
        goto done;

    query_builder q = {.out = out, .style = style};
    sb_add(&q.sql, "SELECT i.id FROM images i LEFT JOIN metadata m ON m.image_id = i.id");
    build_conditions(&q, f, any, n_any, all, n_all, views, n_views);
    sb_add(&q.sql, " ORDER BY i.id");
    out->sql = q.sql.s;
    if (q.oom || q.sql.oom) {
        filter_sql_free(out);
        rc = ms_err_set(err, MS_ENOMEM, "out of memory building a filter query");
    }
done:
    free_strings(any, n_any);
    free_strings(all, n_all);
    free_strings(views, n_views);
    return rc;
}

void filter_sql_free(filter_sql *q)
{
    if (!q)
        return;
    free(q->sql);
    for (int i = 0; i < q->n_params; i++)
        free(q->params[i].s);
    free(q->params);
    memset(q, 0, sizeof *q);
}
