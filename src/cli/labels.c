/*
 * labels.c - the metadata CSV reader (see labels.h for the formats).
 *
 * The whole file is read into memory (it is bounded) and parsed in place
 * into records; each kept row becomes a store_meta owned by the table, with
 * two hash maps from the row's image key and from its base name.
 */
#include "cli/labels.h"

#include <ctype.h>
#include <errno.h>
#include <glob.h>
#include <libdeflate.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "util/text.h"

#define MAX_FIELDS 4096
#define AMBIGUOUS ((size_t)-1)

typedef struct row {
    char *key;           /* image path as given (leading "./" removed); MIMIC-CXR: "s" and
                          * the study id, or (metadata) the image's dicom_id */
    char *study;         /* MIMIC-CXR metadata: "s" and the image's study id */
    store_meta meta;
    size_t line;
} row;

typedef struct map {
    char **keys;         /* points at row keys or base names */
    size_t *rows;        /* row index, or AMBIGUOUS */
    size_t cap;          /* power of two */
} map;

struct labels {
    labels_format format;
    char separator;      /* ',', ';' or '\t', from the header */
    const char *encoding; /* the file's text encoding, by name */
    int gzipped;         /* the file was gzip-compressed */
    char *joined;        /* MIMIC-CXR: the metadata file joined in (its base name), or NULL */
    char *dir;           /* the CSV's folder, resolved */
    row *rows;
    size_t n, cap;
    char **warnings;
    size_t n_warn, cap_warn;
    map by_key, by_base;
};

/* Column roles. */
enum {
    COL_KV = 0, COL_IMAGE, COL_LABELS, COL_PATIENT, COL_AGE, COL_SEX, COL_VIEW, COL_DATE, COL_FOLLOWUP,
    COL_FINDING, COL_FRONTAL, COL_STUDY, COL_IGNORE
};

/* ---- small helpers ---- */

static int add_warning(labels *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int add_warning(labels *t, const char *fmt, ...)
{
    if (t->n_warn == t->cap_warn) {
        size_t cap = t->cap_warn ? t->cap_warn * 2 : 16;
        char **w = realloc(t->warnings, cap * sizeof *w);
        if (!w)
            return MS_ENOMEM;
        t->warnings = w;
        t->cap_warn = cap;
    }
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (!(t->warnings[t->n_warn] = strdup(buf)))
        return MS_ENOMEM;
    t->n_warn++;
    return 0;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* ---- hash maps (open addressing, built once) ---- */

static int map_init(map *m, size_t n)
{
    m->cap = 16;
    while (m->cap < n * 2)
        m->cap *= 2;
    m->keys = calloc(m->cap, sizeof *m->keys);
    m->rows = calloc(m->cap, sizeof *m->rows);
    return m->keys && m->rows ? 0 : MS_ENOMEM;
}

static size_t *map_slot(const map *m, const char *key, int *found)
{
    size_t i = (size_t)hash(key) & (m->cap - 1);
    while (m->keys[i] && strcmp(m->keys[i], key) != 0)
        i = (i + 1) & (m->cap - 1);
    *found = m->keys[i] != NULL;
    return &m->rows[i];
}

/* Adds key -> r; returns the row already there, or (size_t)-2 when new. */
static size_t map_put(map *m, char *key, size_t r)
{
    int found;
    size_t *slot = map_slot(m, key, &found);
    if (found)
        return *slot;
    m->keys[slot - m->rows] = key;
    *slot = r;
    return (size_t)-2;
}

static void map_free(map *m)
{
    free(m->keys);
    free(m->rows);
}

/* The row that key names in m, or NULL (none, or several). */
static const store_meta *lookup(const map *m, const labels *t, const char *key)
{
    if (!m->cap)
        return NULL;
    int found;
    size_t *slot = map_slot(m, key, &found);
    return found && *slot != AMBIGUOUS ? &t->rows[*slot].meta : NULL;
}

/* ---- CSV records ---- */

typedef struct csv {
    char *p, *end;
    size_t line;         /* line of the next record */
    char sep;
} csv;

/* The field separator, from the first line that is not blank: ',' unless
 * ';' or a tab comes more often outside quotes. A spreadsheet saves "CSV"
 * with ';' where the comma is the decimal mark (much of Europe), and a
 * tab-separated export is as common; the header's column names hold none of
 * the three, so its counts decide. */
static char detect_separator(const char *p, const char *end)
{
    static const char seps[] = {',', ';', '\t'};
    size_t count[3] = {0, 0, 0};
    int quoted = 0, seen_text = 0;
    for (; p < end; p++) {
        if (*p == '"')
            quoted = !quoted;
        else if (!quoted && *p == '\n' && seen_text)
            break;
        else if (!quoted && (*p == ',' || *p == ';' || *p == '\t'))
            count[*p == ',' ? 0 : *p == ';' ? 1 : 2]++;
        if (*p != '\n' && *p != '\r' && *p != ' ')
            seen_text = 1;
    }
    int best = 0;
    for (int i = 1; i < 3; i++)
        if (count[i] > count[best])
            best = i;
    return seps[best];
}

/* Splits the next record in place into fields (NUL-terminated, quotes
 * removed). Returns the number of fields, 0 at the end, -1 for an
 * unterminated quote, -2 for too many fields. *line gets its first line. */
static int csv_record(csv *c, char **fields, size_t *line)
{
    if (c->p >= c->end)
        return 0;
    *line = c->line;
    int n = 0;
    char *out = c->p;
    fields[n++] = out;
    int quoted = 0;
    while (c->p < c->end) {
        char ch = *c->p++;
        if (quoted) {
            if (ch == '"') {
                if (c->p < c->end && *c->p == '"') {
                    *out++ = '"';
                    c->p++;
                } else {
                    quoted = 0;
                }
            } else {
                if (ch == '\n')
                    c->line++;
                *out++ = ch;
            }
        } else if (ch == '"') {
            quoted = 1;
        } else if (ch == c->sep) {
            *out++ = '\0';
            if (n == MAX_FIELDS)
                return -2;
            fields[n++] = out;
        } else if (ch == '\n') {
            c->line++;
            break;
        } else if (ch == '\r' && c->p < c->end && *c->p == '\n') {
            continue; /* CRLF: the \n ends the record */
        } else {
            *out++ = ch;
        }
    }
    if (quoted)
        return -1;
    *out = '\0';
    return n;
}

static int blank_record(char **fields, int n)
{
    for (int i = 0; i < n; i++)
        if (*trim(fields[i]))
            return 0;
    return 1;
}

/* ---- header ---- */

/* CheXpert's fourteen observations, each a column of 1.0, 0.0, -1.0 or empty. */
static const char *const chexpert_findings[] = {
    "No Finding",      "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema",           "Consolidation",              "Pneumonia",    "Atelectasis",  "Pneumothorax",
    "Pleural Effusion", "Pleural Other",             "Fracture",     "Support Devices",
};

static int is_chexpert_finding(const char *name)
{
    for (size_t i = 0; i < sizeof chexpert_findings / sizeof *chexpert_findings; i++)
        if (!strcasecmp(name, chexpert_findings[i]))
            return 1;
    return 0;
}

static int role_of(labels_format f, const char *name)
{
    static const struct {
        const char *name;
        int role;
    } generic[] = {{"image", COL_IMAGE}, {"labels", COL_LABELS}, {"patient_id", COL_PATIENT},
                   {"age", COL_AGE}, {"sex", COL_SEX}, {"view", COL_VIEW}, {"study_date", COL_DATE}},
      nih[] = {{"image index", COL_IMAGE}, {"finding labels", COL_LABELS}, {"patient id", COL_PATIENT},
               {"patient age", COL_AGE}, {"patient gender", COL_SEX}, {"patient sex", COL_SEX},
               {"view position", COL_VIEW},
               {"follow-up #", COL_FOLLOWUP}},
      chexpert[] = {{"path", COL_IMAGE}, {"sex", COL_SEX}, {"age", COL_AGE}, {"frontal/lateral", COL_FRONTAL},
                    {"ap/pa", COL_VIEW}},
      mimic[] = {{"subject_id", COL_PATIENT}, {"study_id", COL_STUDY}},
      mimic_meta[] = {{"dicom_id", COL_IMAGE}, {"subject_id", COL_PATIENT}, {"study_id", COL_STUDY},
                      {"viewposition", COL_VIEW}, {"studydate", COL_DATE}};
    if (!*name)
        return COL_IGNORE;
    if (f == LABELS_NIH) {
        for (size_t i = 0; i < sizeof nih / sizeof nih[0]; i++)
            if (!strcasecmp(name, nih[i].name))
                return nih[i].role;
    } else if (f == LABELS_CHEXPERT) {
        for (size_t i = 0; i < sizeof chexpert / sizeof chexpert[0]; i++)
            if (!strcasecmp(name, chexpert[i].name))
                return chexpert[i].role;
        if (is_chexpert_finding(name))
            return COL_FINDING;
    } else if (f == LABELS_MIMIC) {
        for (size_t i = 0; i < sizeof mimic / sizeof mimic[0]; i++)
            if (!strcasecmp(name, mimic[i].name))
                return mimic[i].role;
        if (is_chexpert_finding(name))
            return COL_FINDING;
    } else if (f == LABELS_MIMIC_METADATA) {
        for (size_t i = 0; i < sizeof mimic_meta / sizeof mimic_meta[0]; i++)
            if (!strcasecmp(name, mimic_meta[i].name))
                return mimic_meta[i].role;
        /* the image's size and time, and DICOM code meanings that repeat
         * the view: 377,110 rows of them would only take memory */
        return COL_IGNORE;
    } else {
        for (size_t i = 0; i < sizeof generic / sizeof generic[0]; i++)
            if (!strcasecmp(name, generic[i].name))
                return generic[i].role;
    }
    return COL_KV;
}

static int has_column(char **names, int n, const char *want)
{
    for (int i = 0; i < n; i++)
        if (!strcasecmp(names[i], want))
            return 1;
    return 0;
}

/* Can the store take this column name as a key (store_check_text)? */
static int key_storable(const char *name)
{
    size_t len = strlen(name);
    return len <= STORE_MAX_TEXT && store_utf8_valid((const unsigned char *)name, len);
}

static int read_header(labels *t, const char *path, size_t line, char **names, int n, int *roles, ms_err *err)
{
    for (int i = 0; i < n; i++)
        names[i] = trim(names[i]);
    int nih = has_column(names, n, "image index") || has_column(names, n, "finding labels");
    int generic = has_column(names, n, "image") || has_column(names, n, "labels");
    int findings = 0;
    for (int i = 0; i < n; i++)
        findings += is_chexpert_finding(names[i]);
    int chexpert = !nih && !generic && has_column(names, n, "path") && findings > 0;
    int other = nih || generic || chexpert;
    int mimic_meta = !other && has_column(names, n, "dicom_id") && has_column(names, n, "study_id");
    int mimic = !other && !mimic_meta && has_column(names, n, "study_id") && findings > 0;
    if (!other && !mimic && !mimic_meta)
        return ms_err_set(err, MS_EFORMAT,
                          "%s: header names neither 'image,labels,...' (MedSearch labels.csv), 'Image Index,Finding "
                          "Labels,...' (NIH Data_Entry_2017.csv), 'Path,...' and CheXpert's observations, "
                          "'subject_id,study_id,...' and the observations (MIMIC-CXR) nor 'dicom_id,subject_id,"
                          "study_id,...' (MIMIC-CXR metadata); it starts '%.60s'",
                          path, n > 0 ? names[0] : "");
    t->format = nih ? LABELS_NIH : chexpert ? LABELS_CHEXPERT : mimic ? LABELS_MIMIC
              : mimic_meta ? LABELS_MIMIC_METADATA : LABELS_GENERIC;
    static const char *const required[][2] = {[LABELS_GENERIC] = {"image", "labels"},
                                              [LABELS_NIH] = {"Image Index", "Finding Labels"},
                                              [LABELS_CHEXPERT] = {"Path", "Path"},
                                              [LABELS_MIMIC] = {"study_id", "subject_id"},
                                              [LABELS_MIMIC_METADATA] = {"dicom_id", "study_id"}};
    const char *const *need = required[t->format];
    for (int k = 0; k < 2; k++)
        if (!has_column(names, n, need[k]))
            return ms_err_set(err, MS_EFORMAT, "%s: missing required column '%s' (%s format)", path, need[k],
                              labels_format_name(t->format));
    int kv = 0;
    for (int i = 0; i < n; i++) {
        roles[i] = role_of(t->format, names[i]);
        for (int j = 0; j < i; j++)
            if (roles[i] != COL_IGNORE && !strcasecmp(names[i], names[j]))
                return ms_err_set(err, MS_EFORMAT, "%s: column '%s' appears twice", path, names[i]);
        if (roles[i] == COL_KV && !key_storable(names[i])) {
            /* the store would refuse the key, and with it every image */
            add_warning(t, "line %zu: column %d's name is not UTF-8 text of at most %d bytes; column ignored",
                        line, i + 1, STORE_MAX_TEXT);
            roles[i] = COL_IGNORE;
        }
        if (roles[i] == COL_KV && ++kv > STORE_MAX_KV)
            roles[i] = COL_IGNORE;
    }
    if (kv > STORE_MAX_KV)
        add_warning(t, "line %zu: only the first %d extra columns are kept", line, STORE_MAX_KV);
    return 0;
}

/* ---- rows ---- */

/* "58", "058Y", "58.0", "7M" (months: 0 years). Returns 0 and *age, or -1. */
static int parse_age(const char *s, int *age)
{
    if (!*s) {
        *age = -1;
        return 0;
    }
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0 || v != v)
        return -1;
    if (*end == ',' && isdigit((unsigned char)end[1])) /* a decimal comma: "58,5" in a ';' file */
        for (end++; isdigit((unsigned char)*end); end++)
            ;
    char unit = (char)toupper((unsigned char)*end);
    if (unit == 'Y' || unit == 'M' || unit == 'W' || unit == 'D')
        end++;
    else
        unit = 'Y';
    if (*end)
        return -1;
    if (unit != 'Y')
        v = 0;
    *age = v > 1000 ? 1000 : (int)v;
    return 0;
}

static char parse_sex(const char *s)
{
    if (!strcasecmp(s, "M") || !strcasecmp(s, "male"))
        return 'M';
    if (!strcasecmp(s, "F") || !strcasecmp(s, "female"))
        return 'F';
    return 0;
}

static int add_label(store_meta *m, const char *label)
{
    for (int i = 0; i < m->n_labels; i++)
        if (!strcasecmp(m->labels[i], label))
            return 0;
    if (m->n_labels == STORE_MAX_LABELS)
        return 0;
    char **l = realloc(m->labels, (size_t)(m->n_labels + 1) * sizeof *l);
    if (!l)
        return MS_ENOMEM;
    m->labels = l;
    if (!(l[m->n_labels] = strdup(label)))
        return MS_ENOMEM;
    m->n_labels++;
    return 0;
}

static int split_labels(store_meta *m, char *s)
{
    for (char *save = NULL, *tok = strtok_r(s, "|", &save); tok; tok = strtok_r(NULL, "|", &save)) {
        tok = trim(tok);
        if (*tok && add_label(m, tok) != 0)
            return MS_ENOMEM;
    }
    return 0;
}

static int add_kv(store_meta *m, const char *key, const char *value)
{
    store_kv *kv = realloc(m->kv, (size_t)(m->n_kv + 1) * sizeof *kv);
    if (!kv)
        return MS_ENOMEM;
    m->kv = kv;
    kv[m->n_kv].key = strdup(key);
    kv[m->n_kv].value = strdup(value);
    if (!kv[m->n_kv].key || !kv[m->n_kv].value) {
        free(kv[m->n_kv].key);
        free(kv[m->n_kv].value);
        return MS_ENOMEM;
    }
    m->n_kv++;
    return 0;
}

static int set_string(char **dst, const char *v)
{
    if (!*v)
        return 0;
    return (*dst = strdup(v)) ? 0 : MS_ENOMEM;
}

/* A CheXpert observation: 1 positive, -1 uncertain, 0 or empty negative
 * (or not mentioned). Returns 1, -1, 0, or 2 for anything else. */
static int observation_value(const char *v)
{
    if (!*v)
        return 0;
    char *end;
    double x = strtod(v, &end);
    if (*end || (x != 1.0 && x != 0.0 && x != -1.0))
        return 2;
    return (int)x;
}

/* CheXpert names no patient: its paths hold one, .../patient00001/study1/... */
static int patient_from_path(row *r)
{
    for (const char *p = r->key; (p = strstr(p, "patient")) != NULL; p++) {
        size_t digits = strspn(p + 7, "0123456789");
        if ((p == r->key || p[-1] == '/') && digits > 0 && (p[7 + digits] == '/' || !p[7 + digits]))
            return (r->meta.patient_id = strndup(p, 7 + digits)) ? 0 : MS_ENOMEM;
    }
    return 0;
}

/* What a CheXpert row adds after its columns: the uncertain observations
 * as the key/value uncertain_findings (A|B), LATERAL as the view of a
 * lateral image, and the patient from the path. */
static int finish_chexpert_row(row *r, const char *uncertain, int lateral)
{
    int rc = 0;
    if (*uncertain)
        rc = add_kv(&r->meta, "uncertain_findings", uncertain);
    if (!rc && lateral && !r->meta.view)
        rc = (r->meta.view = strdup("LATERAL")) ? 0 : MS_ENOMEM;
    if (!rc && !r->meta.patient_id && r->key)
        rc = patient_from_path(r);
    return rc;
}

/* Fills r from a record. Returns 0, MS_ENOMEM, or MS_EFORMAT with *why. */
static int parse_row(labels *t, char **names, const int *roles, char **f, int n, row *r, const char **why)
{
    store_meta_init(&r->meta);
    char uncertain[512] = "";
    int lateral = 0;
    for (int i = 0; i < n; i++) {
        char *v = trim(f[i]);
        size_t len = strlen(v);
        if (len > STORE_MAX_TEXT || !store_utf8_valid((const unsigned char *)v, len)) {
            *why = "a field is not UTF-8 text or is too long";
            return MS_EFORMAT;
        }
        int rc = 0;
        switch (roles[i]) {
        case COL_IMAGE:
            /* A spreadsheet made on Windows names files "images\a.png" */
            for (char *c = v; *c; c++)
                if (*c == '\\')
                    *c = '/';
            while (v[0] == '.' && v[1] == '/')
                v += 2;
            if (!*v) {
                *why = "no image name";
                return MS_EFORMAT;
            }
            rc = (r->key = strdup(v)) ? 0 : MS_ENOMEM;
            break;
        case COL_LABELS:
            rc = split_labels(&r->meta, v);
            break;
        case COL_PATIENT:
            rc = set_string(&r->meta.patient_id, v);
            break;
        case COL_AGE:
            if (parse_age(v, &r->meta.age) != 0) {
                *why = "the age is not a number";
                return MS_EFORMAT;
            }
            if (r->meta.age > 150) {
                add_warning(t, "line %zu: age %s is implausible; recorded as unknown", r->line, v);
                r->meta.age = -1;
            }
            break;
        case COL_SEX:
            r->meta.sex = parse_sex(v);
            break;
        case COL_VIEW:
            rc = set_string(&r->meta.view, v);
            break;
        case COL_DATE:
            if (t->format == LABELS_MIMIC_METADATA && strlen(v) == 8 && strspn(v, "0123456789") == 8) {
                char dashed[11]; /* DICOM's 20170131, written as every other date is */
                snprintf(dashed, sizeof dashed, "%.4s-%.2s-%.2s", v, v + 4, v + 6);
                rc = set_string(&r->meta.study_date, dashed);
            } else {
                rc = set_string(&r->meta.study_date, v);
            }
            break;
        case COL_STUDY:
            if (!*v || strlen(v) > 18 || strspn(v, "0123456789") != strlen(v)) {
                *why = "the study_id is not a number";
                return MS_EFORMAT;
            }
            /* the name of the study's folder in MIMIC-CXR's tree */
            if (asprintf(t->format == LABELS_MIMIC ? &r->key : &r->study, "s%s", v) < 0)
                rc = MS_ENOMEM;
            break;
        case COL_FOLLOWUP:
            rc = *v ? add_kv(&r->meta, "follow_up", v) : 0;
            break;
        case COL_FINDING:
            switch (observation_value(v)) {
            case 1: rc = add_label(&r->meta, names[i]); break;
            case -1: /* the fourteen names fit the buffer */
                snprintf(uncertain + strlen(uncertain), sizeof uncertain - strlen(uncertain), "%s%s",
                         *uncertain ? "|" : "", names[i]);
                break;
            case 0: break;
            default: *why = "an observation is not 1.0, 0.0, -1.0 or empty"; return MS_EFORMAT;
            }
            break;
        case COL_FRONTAL:
            lateral = !strcasecmp(v, "lateral");
            break;
        case COL_KV:
            rc = *v ? add_kv(&r->meta, names[i], v) : 0;
            break;
        default:
            break;
        }
        if (rc)
            return rc;
    }
    if (t->format == LABELS_MIMIC && *uncertain)
        return add_kv(&r->meta, "uncertain_findings", uncertain);
    if (t->format == LABELS_MIMIC_METADATA && !r->key) {
        *why = "no dicom_id";
        return MS_EFORMAT;
    }
    return t->format == LABELS_CHEXPERT ? finish_chexpert_row(r, uncertain, lateral) : 0;
}

static void row_free(row *r)
{
    free(r->key);
    free(r->study);
    store_meta_free(&r->meta);
}

static int push_row(labels *t, row *r)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        row *rows = realloc(t->rows, cap * sizeof *rows);
        if (!rows)
            return MS_ENOMEM;
        t->rows = rows;
        t->cap = cap;
    }
    t->rows[t->n++] = *r;
    return 0;
}

static int build_maps(labels *t, ms_err *err)
{
    /* MIMIC-CXR's rows are found by their key alone (find_mimic), and its
     * 377,110 images would make the base-name map a large unused one */
    int by_base = t->format != LABELS_MIMIC && t->format != LABELS_MIMIC_METADATA;
    if (map_init(&t->by_key, t->n) || (by_base && map_init(&t->by_base, t->n)))
        return ms_err_set(err, MS_ENOMEM, "no memory for the labels index");
    size_t kept = 0;
    for (size_t i = 0; i < t->n; i++) {
        size_t prev = map_put(&t->by_key, t->rows[i].key, kept);
        if (prev != (size_t)-2) {
            add_warning(t, "line %zu: image %s is listed already (line %zu); this row is ignored",
                        t->rows[i].line, t->rows[i].key, t->rows[prev].line);
            row_free(&t->rows[i]);
            continue;
        }
        t->rows[kept++] = t->rows[i];
    }
    t->n = kept;
    for (size_t i = 0; by_base && i < t->n; i++) {
        /* A base name shared by several rows matches none of them. */
        char *base = (char *)base_name(t->rows[i].key);
        int found;
        size_t *slot = map_slot(&t->by_base, base, &found);
        if (found)
            *slot = AMBIGUOUS;
        else
            map_put(&t->by_base, base, i);
    }
    return 0;
}

static int read_file(const char *path, char **buf, size_t *len, ms_err *err)
{
    struct stat pre;
    if (stat(path, &pre) == 0 && !S_ISREG(pre.st_mode)) /* a FIFO would block fopen */
        return ms_err_set(err, MS_EIO, "%s: not a regular file", path);
    FILE *f = fopen(path, "rb");
    if (!f)
        return ms_err_set(err, errno == ENOENT ? MS_ENOTFOUND : MS_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return ms_err_set(err, MS_EIO, "%s: not a regular file", path);
    }
    if ((size_t)st.st_size > LABELS_MAX_BYTES) {
        fclose(f);
        return ms_err_set(err, MS_ETOOBIG, "%s: %lld bytes, over the %zu MiB limit for a labels file", path,
                          (long long)st.st_size, LABELS_MAX_BYTES >> 20);
    }
    *buf = malloc((size_t)st.st_size + 1);
    if (!*buf) {
        fclose(f);
        return ms_err_set(err, MS_ENOMEM, "no memory for %s", path);
    }
    *len = fread(*buf, 1, (size_t)st.st_size, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(*buf);
        return ms_err_set(err, MS_EIO, "%s: read error", path);
    }
    (*buf)[*len] = '\0';
    return 0;
}

/* ---- text encodings ----
 *
 * Spreadsheets do not always save UTF-8. Excel's "CSV" on Windows is in the
 * ANSI code page (Windows-1252 in Western Europe and the Americas), and its
 * "Unicode Text" is UTF-16 with a byte-order mark. Read as UTF-8, every row
 * with an accented name or label would be skipped. A UTF-16 file is known
 * by its mark; a file that is not UTF-8 and holds no well-formed multibyte
 * UTF-8 character either is taken as Windows-1252 (a file with both is
 * UTF-8 with some damaged rows: those are skipped, and the rest is kept
 * as it is rather than misread). Everything is converted to UTF-8 first. */

typedef enum { TEXT_UTF8, TEXT_CP1252, TEXT_UTF16LE, TEXT_UTF16BE } text_encoding;

static const char *const encoding_names[] = {"UTF-8", "Windows-1252", "UTF-16LE", "UTF-16BE"};

/* Windows-1252's 0x80-0x9F, where it differs from Latin-1; 0 marks the five
 * bytes it leaves undefined, read as U+FFFD. */
static const unsigned short cp1252_80_9f[32] = {
    0x20AC, 0,      0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0,      0x017D, 0,      0,      0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0,      0x017E, 0x0178,
};

static text_encoding detect_encoding(const unsigned char *s, size_t n)
{
    if (n >= 2 && s[0] == 0xFF && s[1] == 0xFE)
        return TEXT_UTF16LE;
    if (n >= 2 && s[0] == 0xFE && s[1] == 0xFF)
        return TEXT_UTF16BE;
    int multibyte = 0, bad = 0;
    for (size_t i = 0; i < n;) {
        unsigned cp;
        int len = ms_utf8_char(s + i, n - i, &cp);
        bad |= len <= 0;
        multibyte |= len > 1;
        i += len > 0 ? (size_t)len : 1;
    }
    return bad && !multibyte ? TEXT_CP1252 : TEXT_UTF8;
}

/* Writes cp as UTF-8 at out (when out is not NULL); returns its length. */
static size_t put_utf8(char *out, unsigned cp)
{
    unsigned char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp, n = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xC0 | cp >> 6), b[1] = (unsigned char)(0x80 | (cp & 0x3F)), n = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | cp >> 12), b[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        b[2] = (unsigned char)(0x80 | (cp & 0x3F)), n = 3;
    } else {
        b[0] = (unsigned char)(0xF0 | cp >> 18), b[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
        b[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F)), b[3] = (unsigned char)(0x80 | (cp & 0x3F)), n = 4;
    }
    if (out)
        memcpy(out, b, n);
    return n;
}

/* The code point at s[*i] (advanced past it) in encoding e, not UTF-8; a
 * unit that cannot be read (an undefined byte, a lone surrogate, an odd
 * last byte) is U+FFFD. */
static unsigned next_code_point(text_encoding e, const unsigned char *s, size_t n, size_t *i)
{
    if (e == TEXT_CP1252) {
        unsigned c = s[(*i)++];
        return c < 0x80 || c > 0x9F ? c : cp1252_80_9f[c - 0x80] ? cp1252_80_9f[c - 0x80] : 0xFFFD;
    }
    int le = e == TEXT_UTF16LE;
    if (n - *i < 2) {
        *i = n;
        return 0xFFFD;
    }
    unsigned u = le ? (unsigned)(s[*i] | s[*i + 1] << 8) : (unsigned)(s[*i] << 8 | s[*i + 1]);
    *i += 2;
    if (u < 0xD800 || u > 0xDFFF)
        return u;
    if (u > 0xDBFF || n - *i < 2)
        return 0xFFFD;
    unsigned lo = le ? (unsigned)(s[*i] | s[*i + 1] << 8) : (unsigned)(s[*i] << 8 | s[*i + 1]);
    if (lo < 0xDC00 || lo > 0xDFFF)
        return 0xFFFD; /* the next unit is read on its own */
    *i += 2;
    return 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
}

/* Converts *text (*len bytes, e not UTF-8) to UTF-8 in a new buffer that
 * replaces it. Two passes: the first measures, so the buffer is exact. */
static int convert_to_utf8(text_encoding e, char **text, size_t *len, ms_err *err)
{
    const unsigned char *s = (const unsigned char *)*text;
    size_t start = e == TEXT_CP1252 ? 0 : 2, need = 0;
    for (size_t i = start; i < *len;)
        need += put_utf8(NULL, next_code_point(e, s, *len, &i));
    char *out = malloc(need + 1);
    if (!out)
        return ms_err_set(err, MS_ENOMEM, "no memory to convert the labels file from %s", encoding_names[e]);
    size_t o = 0;
    for (size_t i = start; i < *len;)
        o += put_utf8(out + o, next_code_point(e, s, *len, &i));
    out[o] = '\0';
    free(*text);
    *text = out;
    *len = o;
    return 0;
}

static int parse_all(labels *t, const char *path, char *text, size_t len, ms_err *err)
{
    csv c = {.p = text, .end = text + len, .line = 1};
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3))
        c.p += 3;
    t->separator = c.sep = detect_separator(c.p, c.end);
    char **fields = malloc(MAX_FIELDS * sizeof *fields);
    char **names = malloc(MAX_FIELDS * sizeof *names);
    int *roles = malloc(MAX_FIELDS * sizeof *roles);
    int rc = 0;
    if (!fields || !names || !roles) {
        rc = ms_err_set(err, MS_ENOMEM, "no memory");
        goto out;
    }
    size_t line;
    int ncol;
    do
        ncol = csv_record(&c, names, &line);
    while (ncol > 0 && blank_record(names, ncol));
    if (ncol <= 0) {
        rc = ms_err_set(err, MS_EFORMAT, "%s: %s", path, ncol == 0 ? "empty file, no header" : "unreadable header");
        goto out;
    }
    if ((rc = read_header(t, path, line, names, ncol, roles, err)) != 0)
        goto out;
    for (;;) {
        int n = csv_record(&c, fields, &line);
        if (n == 0)
            break;
        if (n < 0) {
            add_warning(t, "line %zu: %s; the rest of the file is skipped", line,
                        n == -1 ? "a quoted field is never closed" : "too many fields");
            break;
        }
        if (blank_record(fields, n))
            continue;
        if (n != ncol) {
            add_warning(t, "line %zu: %d fields where the header has %d; row skipped", line, n, ncol);
            continue;
        }
        row r = {.line = line};
        const char *why = NULL;
        rc = parse_row(t, names, roles, fields, n, &r, &why);
        if (rc == MS_EFORMAT) {
            add_warning(t, "line %zu: %s; row skipped", line, why);
            row_free(&r);
            rc = 0;
            continue;
        }
        if (rc || (rc = push_row(t, &r)) != 0) {
            row_free(&r);
            rc = ms_err_set(err, MS_ENOMEM, "no memory reading %s", path);
            goto out;
        }
    }
    rc = build_maps(t, err);
out:
    free(fields);
    free(names);
    free(roles);
    return rc;
}

/* ---- gzip ----
 *
 * MIMIC-CXR ships its CSVs as .csv.gz. A gzip file (told by its magic
 * bytes, not its name) is inflated whole, to the size its trailer states,
 * which must be at most LABELS_MAX_BYTES: a small file that would inflate
 * to more is refused before anything is allocated for it. */
static int gunzip(const char *path, char **text, size_t *len, ms_err *err)
{
    const unsigned char *in = (const unsigned char *)*text;
    if (*len < 18)
        return ms_err_set(err, MS_EFORMAT, "%s: gzip file is truncated", path);
    const unsigned char *trailer = in + *len - 4;
    size_t size = (size_t)trailer[0] | (size_t)trailer[1] << 8 | (size_t)trailer[2] << 16 | (size_t)trailer[3] << 24;
    if (size > LABELS_MAX_BYTES)
        return ms_err_set(err, MS_ETOOBIG, "%s: inflates to %zu bytes, over the %zu MiB limit for a labels file",
                          path, size, LABELS_MAX_BYTES >> 20);
    char *out = malloc(size + 1);
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    size_t got = 0, used = 0;
    enum libdeflate_result r =
        out && d ? libdeflate_gzip_decompress_ex(d, in, *len, out, size, &used, &got) : LIBDEFLATE_BAD_DATA;
    libdeflate_free_decompressor(d);
    if (!out || !d) {
        free(out);
        return ms_err_set(err, MS_ENOMEM, "no memory to inflate %s", path);
    }
    /* a second member after the first (cat a.gz b.gz) would be lost */
    if (r != LIBDEFLATE_SUCCESS || got != size || used != *len) {
        free(out);
        return ms_err_set(err, MS_EFORMAT, "%s: not a readable gzip file (corrupt, cut short, or of several "
                          "members: gunzip it first)", path);
    }
    out[size] = '\0';
    free(*text);
    *text = out;
    *len = size;
    return 0;
}

/* ---- MIMIC-CXR: labels per study, views and dates per image ---- */

/* mimic-cxr-2.0.0-metadata.csv (or .csv.gz) beside the labels file, or NULL. */
static char *metadata_beside(const char *dir)
{
    static const char *const patterns[] = {"/mimic-cxr-*-metadata.csv", "/mimic-cxr-*-metadata.csv.gz"};
    for (size_t i = 0; i < 2; i++) {
        char pattern[PATH_MAX];
        if (snprintf(pattern, sizeof pattern, "%s%s", dir, patterns[i]) >= (int)sizeof pattern)
            return NULL;
        glob_t g;
        char *found = NULL;
        if (glob(pattern, 0, NULL, &g) == 0 && g.gl_pathc > 0)
            found = strdup(g.gl_pathv[0]);
        globfree(&g);
        if (found)
            return found;
    }
    return NULL;
}

static int copy_study(store_meta *to, const store_meta *study)
{
    int rc = 0;
    for (int i = 0; !rc && i < study->n_labels; i++)
        rc = add_label(to, study->labels[i]);
    for (int i = 0; !rc && i < study->n_kv; i++)
        rc = add_kv(to, study->kv[i].key, study->kv[i].value);
    return rc;
}

/* Each image row of the metadata table gets its study's labels and
 * uncertain findings and moves into t, where a file is looked for by its
 * dicom_id before its study folder. The metadata's warnings come along. */
static int join_metadata(labels *t, labels *meta, const char *meta_path, ms_err *err)
{
    const char *name = base_name(meta_path);
    for (size_t i = 0; i < meta->n_warn; i++)
        add_warning(t, "%s: %s", name, meta->warnings[i]);
    for (size_t i = 0; i < meta->n; i++) {
        row *r = &meta->rows[i];
        const store_meta *study = r->study ? lookup(&t->by_key, t, r->study) : NULL;
        if ((study && copy_study(&r->meta, study)) || push_row(t, r)) {
            meta->n = i; /* the rows before i moved to t; r and those after stay meta's */
            return ms_err_set(err, MS_ENOMEM, "no memory joining %s", meta_path);
        }
    }
    meta->n = 0;
    map_free(&t->by_key);
    map_free(&t->by_base);
    memset(&t->by_key, 0, sizeof t->by_key);
    memset(&t->by_base, 0, sizeof t->by_base);
    if (!(t->joined = strdup(name)))
        return ms_err_set(err, MS_ENOMEM, "no memory");
    return build_maps(t, err);
}

static int join_metadata_beside(labels *t, ms_err *err)
{
    char *meta_path = metadata_beside(t->dir);
    if (!meta_path)
        return 0;
    labels *meta = NULL;
    int rc = labels_load(meta_path, &meta, err);
    if (!rc && meta->format != LABELS_MIMIC_METADATA)
        rc = ms_err_set(err, MS_EFORMAT, "%s: beside MIMIC-CXR's labels but not its metadata (%s format)",
                        meta_path, labels_format_name(meta->format));
    if (!rc)
        rc = join_metadata(t, meta, meta_path, err);
    labels_free(meta);
    free(meta_path);
    return rc;
}

int labels_load(const char *path, labels **out, ms_err *err)
{
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = read_file(path, &text, &len, err);
    int gzipped = !rc && len >= 2 && (unsigned char)text[0] == 0x1f && (unsigned char)text[1] == 0x8b;
    if (gzipped)
        rc = gunzip(path, &text, &len, err);
    if (rc) {
        free(text);
        return rc;
    }
    labels *t = calloc(1, sizeof *t);
    if (!t) {
        free(text);
        return ms_err_set(err, MS_ENOMEM, "no memory");
    }
    /* Rows name images relative to the CSV's own folder. */
    char *slash = strrchr(path, '/');
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    if (slash == path)
        snprintf(dir, sizeof dir, "/");
    t->dir = realpath(dir, NULL);
    text_encoding enc = detect_encoding((const unsigned char *)text, len);
    t->encoding = encoding_names[enc];
    if (!t->dir)
        rc = ms_err_set(err, MS_EIO, "%s: %s", dir, strerror(errno));
    else if (enc == TEXT_UTF8 || (rc = convert_to_utf8(enc, &text, &len, err)) == 0)
        rc = parse_all(t, path, text, len, err);
    free(text);
    t->gzipped = gzipped;
    if (!rc && t->format == LABELS_MIMIC)
        rc = join_metadata_beside(t, err);
    if (rc) {
        labels_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void labels_free(labels *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++)
        row_free(&t->rows[i]);
    free(t->rows);
    for (size_t i = 0; i < t->n_warn; i++)
        free(t->warnings[i]);
    free(t->warnings);
    map_free(&t->by_key);
    map_free(&t->by_base);
    free(t->dir);
    free(t->joined);
    free(t);
}

const char *labels_joined(const labels *t)
{
    return t->joined;
}

int labels_gzipped(const labels *t)
{
    return t->gzipped;
}

const char *labels_encoding(const labels *t)
{
    return t->encoding;
}

char labels_separator(const labels *t)
{
    return t->separator;
}

labels_format labels_get_format(const labels *t)
{
    return t->format;
}

const char *labels_format_name(labels_format f)
{
    return f == LABELS_NIH               ? "NIH ChestX-ray14"
           : f == LABELS_CHEXPERT        ? "CheXpert"
           : f == LABELS_MIMIC           ? "MIMIC-CXR"
           : f == LABELS_MIMIC_METADATA ? "MIMIC-CXR metadata"
                                         : "MedSearch labels.csv";
}

size_t labels_rows(const labels *t)
{
    return t->n;
}

size_t labels_n_warnings(const labels *t)
{
    return t->n_warn;
}

const char *labels_warning(const labels *t, size_t i)
{
    return i < t->n_warn ? t->warnings[i] : NULL;
}

/* Is s[0..n) a study's folder name, "s" and digits? (n >= 1; the digits
 * end with s[n], which is no digit.) */
static int is_study_name(const char *s, size_t n)
{
    return s[0] == 's' && strspn(s + 1, "0123456789") == n - 1;
}

/* The row keyed by s[0..n), or NULL. */
static const store_meta *lookup_span(const labels *t, const char *s, size_t n)
{
    char key[256];
    if (n >= sizeof key)
        return NULL;
    memcpy(key, s, n);
    key[n] = '\0';
    return lookup(&t->by_key, t, key);
}

/* MIMIC-CXR: files/p10/p10000032/s50414267/02aa804e-....jpg is the image
 * 02aa804e-... (its dicom_id, a metadata row) of study 50414267 (a labels
 * row, keyed "s50414267"). */
static const store_meta *find_mimic(const labels *t, const char *file_path)
{
    const char *base = base_name(file_path), *dot = strrchr(base, '.');
    size_t n = dot && dot > base ? (size_t)(dot - base) : strlen(base);
    const store_meta *m = NULL;
    /* (a dicom_id is hexadecimal: never a study's "s" and digits) */
    if (!(n >= 1 && is_study_name(base, n)))
        m = lookup_span(t, base, n);
    /* the nearest folder above the file named s and digits */
    for (const char *end = base; !m && end > file_path + 1;) {
        const char *start = end - 1; /* the '/' before the file or the folder below */
        while (start > file_path && start[-1] != '/')
            start--;
        size_t len = (size_t)(end - 1 - start);
        if (len > 1 && is_study_name(start, len))
            m = lookup_span(t, start, len);
        end = start;
    }
    return m;
}

const store_meta *labels_find(const labels *t, const char *file_path)
{
    if (t->format == LABELS_MIMIC || t->format == LABELS_MIMIC_METADATA)
        return find_mimic(t, file_path);
    char *real = realpath(file_path, NULL);
    const store_meta *m = NULL;
    size_t dl = strlen(t->dir);
    if (real && !strncmp(real, t->dir, dl) && (real[dl] == '/' || dl == 1))
        m = lookup(&t->by_key, t, real + (dl == 1 ? 1 : dl + 1));
    /* the longest tail of the path that a row names, longest first */
    for (const char *p = real; !m && p && (p = strchr(p, '/')) != NULL; p++)
        if (p[1])
            m = lookup(&t->by_key, t, p + 1);
    free(real);
    return m ? m : lookup(&t->by_base, t, base_name(file_path));
}
