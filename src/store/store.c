/*
 * store.c - the store's front door: picks the backend from the URI, checks
 * every argument and item once (so backends see valid input only), then
 * dispatches through the backend's store_ops. Also the helpers both backends
 * share: label/view folding, the vector byte layout, id lists.
 */
#include "store/store_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/text.h"

/* ---- small helpers ---- */

void store_fold_label(const char *label, char *out, size_t cap)
{
    size_t i = 0;
    for (; label[i] && i + 1 < cap; i++) {
        char c = label[i];
        out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    out[i] = '\0';
}

void store_fold_view(const char *view, char *out, size_t cap)
{
    size_t i = 0;
    for (; view[i] && i + 1 < cap; i++) {
        char c = view[i];
        out[i] = (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
    }
    out[i] = '\0';
}

void store_vec_encode(const float *vec, int dim, uint8_t *out)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(out, vec, (size_t)dim * sizeof(float));
#else
    for (int i = 0; i < dim; i++) {
        uint32_t u;
        memcpy(&u, &vec[i], 4);
        out[4 * i] = (uint8_t)u;
        out[4 * i + 1] = (uint8_t)(u >> 8);
        out[4 * i + 2] = (uint8_t)(u >> 16);
        out[4 * i + 3] = (uint8_t)(u >> 24);
    }
#endif
}

void store_vec_decode(const uint8_t *in, int dim, float *vec)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(vec, in, (size_t)dim * sizeof(float));
#else
    for (int i = 0; i < dim; i++) {
        uint32_t u = (uint32_t)in[4 * i] | (uint32_t)in[4 * i + 1] << 8 |
                     (uint32_t)in[4 * i + 2] << 16 | (uint32_t)in[4 * i + 3] << 24;
        memcpy(&vec[i], &u, 4);
    }
#endif
}

int id_list_push(id_list *l, int64_t id, ms_err *err)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        int64_t *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return ms_err_set(err, MS_ENOMEM, "out of memory listing %zu image ids", l->n);
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = id;
    return 0;
}

int store_strdup(const char *s, char **out, ms_err *err)
{
    *out = NULL;
    if (!s)
        return 0;
    *out = strdup(s);
    return *out ? 0 : ms_err_set(err, MS_ENOMEM, "out of memory copying a %zu-byte string", strlen(s));
}

void store_meta_init(store_meta *m)
{
    memset(m, 0, sizeof *m);
    m->age = -1;
}

void store_meta_free(store_meta *m)
{
    if (!m)
        return;
    free(m->original_name);
    free(m->patient_id);
    free(m->study_date);
    free(m->view);
    for (int i = 0; i < m->n_labels; i++)
        free(m->labels[i]);
    free(m->labels);
    for (int i = 0; i < m->n_kv; i++) {
        free(m->kv[i].key);
        free(m->kv[i].value);
    }
    free(m->kv);
    store_meta_init(m);
}

/* ---- integrity ---- */

#define ORPHANS(table)                                                                        \
    {"SELECT t.image_id FROM " table " t WHERE NOT EXISTS "                                   \
     "(SELECT 1 FROM images i WHERE i.id = t.image_id) ORDER BY t.image_id LIMIT 1",          \
     0, "a row of " table " belongs to image %lld, which does not exist"}

const store_check_query STORE_CHECKS[] = {
    {"SELECT i.id FROM images i WHERE NOT EXISTS (SELECT 1 FROM metadata m WHERE m.image_id = i.id) "
     "ORDER BY i.id LIMIT 1",
     0, "image %lld has no metadata"},
    {"SELECT i.id FROM images i WHERE NOT EXISTS (SELECT 1 FROM originals o WHERE o.image_id = i.id) "
     "ORDER BY i.id LIMIT 1",
     0, "image %lld has no stored bytes"},
    {"SELECT i.id FROM images i JOIN originals o ON o.image_id = i.id WHERE length(o.data) <> i.bytes "
     "ORDER BY i.id LIMIT 1",
     0, "the stored bytes of image %lld do not have its recorded size"},
    {"SELECT i.id FROM images i WHERE NOT EXISTS (SELECT 1 FROM vectors v WHERE v.image_id = i.id) "
     "ORDER BY i.id LIMIT 1",
     0, "image %lld has no vector"},
    {"SELECT v.image_id FROM vectors v JOIN collection c ON c.id = 1 "
     "WHERE c.model_id IS NULL OR v.model_id <> c.model_id ORDER BY v.image_id LIMIT 1",
     0, "the vector of image %lld comes from another model than the collection's (an unfinished re-embed?)"},
    {"SELECT image_id FROM vectors WHERE length(vector) <> $1 ORDER BY image_id LIMIT 1",
     1, "the vector of image %lld does not hold as many floats as the model's dim"},
    ORPHANS("metadata"),
    ORPHANS("originals"),
    ORPHANS("thumbnails"),
    ORPHANS("labels"),
    ORPHANS("kv"),
    ORPHANS("vectors"),
    ORPHANS("image_names"),
};
const int STORE_N_CHECKS = (int)(sizeof STORE_CHECKS / sizeof STORE_CHECKS[0]);

/* ---- validation ---- */

/* Is s well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF)? */
int store_utf8_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned cp;
        int len = ms_utf8_char(s + i, n - i, &cp);
        if (len <= 0)
            return 0;
        i += (size_t)len;
    }
    return 1;
}

int store_check_schema_version(const char *where, int64_t version, int supported, ms_err *err)
{
    if (version < 0)
        return ms_err_set(err, MS_EDB, "%s: the collection has schema version %lld, which no medsearch writes",
                          where, (long long)version);
    if (version > supported)
        return ms_err_set(err, MS_EDB,
                          "%s: the collection has schema version %lld, newer than this program's %d; "
                          "use a newer medsearch",
                          where, (long long)version, supported);
    return 0;
}

int store_check_model_dim(const char *where, int64_t dim, ms_err *err)
{
    if (dim < 1 || dim > STORE_MAX_DIM)
        return ms_err_set(err, MS_EFORMAT, "%s: the collection's model has dimension %lld, outside 1..%d", where,
                          (long long)dim, STORE_MAX_DIM);
    return 0;
}

int store_check_text(const char *s, int optional, int allow_empty, const char *what, ms_err *err)
{
    if (!s)
        return optional ? 0 : ms_err_set(err, MS_EINVAL, "%s is missing", what);
    size_t n = strnlen(s, STORE_MAX_TEXT + 1);
    if (n > STORE_MAX_TEXT)
        return ms_err_set(err, MS_EINVAL, "%s is longer than %d bytes", what, STORE_MAX_TEXT);
    if (n == 0 && !allow_empty)
        return ms_err_set(err, MS_EINVAL, "%s is empty", what);
    if (!store_utf8_valid((const unsigned char *)s, n))
        return ms_err_set(err, MS_EINVAL, "%s is not valid UTF-8", what);
    return 0;
}

static int check_sha256(const char *hex, const char *what, ms_err *err)
{
    if (!hex)
        return ms_err_set(err, MS_EINVAL, "%s: sha256 is missing", what);
    for (int i = 0; i < 64; i++) {
        char c = hex[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return ms_err_set(err, MS_EINVAL, "%s: sha256 is not 64 lowercase hex digits", what);
    }
    if (hex[64] != '\0')
        return ms_err_set(err, MS_EINVAL, "%s: sha256 is longer than 64 hex digits", what);
    return 0;
}

/* A MIME type fits store_image_info.mime[32] and is plain ASCII. */
static int check_mime(const char *mime, const char *what, ms_err *err)
{
    if (!mime || !*mime)
        return ms_err_set(err, MS_EINVAL, "%s is missing", what);
    size_t n = strnlen(mime, 32);
    if (n >= 32)
        return ms_err_set(err, MS_EINVAL, "%s is longer than 31 bytes", what);
    for (size_t i = 0; i < n; i++)
        if (mime[i] <= ' ' || mime[i] > '~')
            return ms_err_set(err, MS_EINVAL, "%s has a character outside printable ASCII", what);
    return 0;
}

/* who names the metadata's owner in messages ("item 3", "image 17"). */
static int check_meta(const store_meta *m, const char *who, ms_err *err)
{
    char what[96];
    int rc;
#define TEXT(field, optional, label)                                           \
    do {                                                                       \
        snprintf(what, sizeof what, "%s %s", who, label);                      \
        if ((rc = store_check_text(field, optional, 0, what, err)) < 0)        \
            return rc;                                                         \
    } while (0)
    TEXT(m->original_name, 1, "original name");
    TEXT(m->patient_id, 1, "patient id");
    TEXT(m->study_date, 1, "study date");
    TEXT(m->view, 1, "view position");
#undef TEXT
    if (m->age < -1 || m->age > 200)
        return ms_err_set(err, MS_EINVAL, "%s age %d is outside 0..200 (-1 = unknown)", who, m->age);
    if (m->sex != 0 && m->sex != 'M' && m->sex != 'F')
        return ms_err_set(err, MS_EINVAL, "%s sex must be 'M', 'F' or unknown (0)", who);
    if (m->n_labels < 0 || m->n_labels > STORE_MAX_LABELS || (m->n_labels > 0 && !m->labels))
        return ms_err_set(err, MS_EINVAL, "%s has %d labels (0..%d allowed)", who,
                          m->n_labels, STORE_MAX_LABELS);
    for (int i = 0; i < m->n_labels; i++) {
        snprintf(what, sizeof what, "%s label %d", who, i + 1);
        if ((rc = store_check_text(m->labels[i], 0, 0, what, err)) < 0)
            return rc;
    }
    if (m->n_kv < 0 || m->n_kv > STORE_MAX_KV || (m->n_kv > 0 && !m->kv))
        return ms_err_set(err, MS_EINVAL, "%s has %d key/values (0..%d allowed)", who,
                          m->n_kv, STORE_MAX_KV);
    for (int i = 0; i < m->n_kv; i++) {
        snprintf(what, sizeof what, "%s key %d", who, i + 1);
        if ((rc = store_check_text(m->kv[i].key, 0, 0, what, err)) < 0)
            return rc;
        snprintf(what, sizeof what, "%s value of key '%.40s'", who, m->kv[i].key);
        if ((rc = store_check_text(m->kv[i].value, 0, 1, what, err)) < 0)
            return rc;
    }
    return 0;
}

static int check_vector(const float *vec, int dim, const char *what, ms_err *err)
{
    if (!vec)
        return ms_err_set(err, MS_EINVAL, "%s: vector is missing", what);
    for (int i = 0; i < dim; i++)
        if (!isfinite(vec[i]))
            return ms_err_set(err, MS_EINVAL, "%s: vector value %d is not finite", what, i);
    return 0;
}

static int check_dim(int dim, ms_err *err)
{
    if (dim < 1 || dim > STORE_MAX_DIM)
        return ms_err_set(err, MS_EINVAL, "vector dim %d is outside 1..%d", dim, STORE_MAX_DIM);
    return 0;
}

/* Checks the items of a batch whose vectors have dim floats. */
static int check_items(const store_item *items, size_t n, int dim, ms_err *err)
{
    for (size_t i = 0; i < n; i++) {
        const store_item *it = &items[i];
        char what[64];
        int rc;
        snprintf(what, sizeof what, "item %zu", i);
        if (!it->bytes || it->len == 0)
            return ms_err_set(err, MS_EINVAL, "item %zu has no image bytes", i);
        if (it->len > STORE_MAX_BLOB || it->thumb_len > STORE_MAX_BLOB)
            return ms_err_set(err, MS_ETOOBIG, "item %zu: an image or thumbnail over %u MiB", i,
                              STORE_MAX_BLOB >> 20);
        if ((rc = check_sha256(it->sha256, what, err)) < 0)
            return rc;
        snprintf(what, sizeof what, "item %zu mime type", i);
        if ((rc = check_mime(it->mime, what, err)) < 0)
            return rc;
        if (it->width < 1 || it->height < 1)
            return ms_err_set(err, MS_EINVAL, "item %zu size %dx%d is not positive", i,
                              it->width, it->height);
        if (it->thumb_len > 0) {
            if (!it->thumb)
                return ms_err_set(err, MS_EINVAL, "item %zu thumbnail bytes are missing", i);
            snprintf(what, sizeof what, "item %zu thumbnail mime type", i);
            if ((rc = check_mime(it->thumb_mime, what, err)) < 0)
                return rc;
        }
        snprintf(what, sizeof what, "item %zu", i);
        if (it->meta && (rc = check_meta(it->meta, what, err)) < 0)
            return rc;
        if ((rc = check_vector(it->vec, dim, what, err)) < 0)
            return rc;
    }
    return 0;
}

/* ---- the interface ---- */

static int is_pg_uri(const char *uri)
{
    return strncmp(uri, "postgresql:", 11) == 0 || strncmp(uri, "postgres:", 9) == 0;
}

int store_open(const char *uri, store **out, ms_err *err)
{
    ms_err local_err;
    if (!err)
        err = &local_err;
    if (!out)
        return ms_err_set(err, MS_EINVAL, "store_open: out is NULL");
    *out = NULL;
    if (!uri || !*uri)
        return ms_err_set(err, MS_EINVAL, "no database given (a SQLite file path or a postgresql:// URI)");
    if (is_pg_uri(uri)) {
        const char *rest = strchr(uri, ':') + 1;
        if (*rest == '\0')
            return store_pg_open(NULL, out, err);  /* PG* environment */
        if (strncmp(rest, "//", 2) != 0)
            return ms_err_set(err, MS_EINVAL,
                              "database '%.100s' is not a PostgreSQL URI: write postgresql://[user@]host[:port]/dbname, "
                              "or 'postgresql:' alone to use the PG* environment", uri);
        return store_pg_open(uri, out, err);
    }
    return store_sqlite_open(uri, out, err);
}

void store_close(store *s)
{
    if (s)
        s->ops->close(s);
}

const char *store_backend(const store *s)
{
    return s ? s->ops->name : "none";
}

/* Every entry point starts here: backends may then write to err freely
 * (a caller's NULL err becomes a local one). */
#define CHECK_STORE(s)                                                         \
    ms_err local_err_;                                                         \
    if (!err)                                                                  \
        err = &local_err_;                                                     \
    if (!(s))                                                                  \
    return ms_err_set(err, MS_EINVAL, "%s: store is NULL", __func__)

int store_use_model(store *s, const char *identity, int dim, int force, ms_err *err)
{
    CHECK_STORE(s);
    int rc = store_check_text(identity, 0, 0, "model identity", err);
    if (rc < 0 || (rc = check_dim(dim, err)) < 0)
        return rc;
    return s->ops->use_model(s, identity, dim, force, err);
}

int store_get_model(store *s, char **identity, int *dim, ms_err *err)
{
    CHECK_STORE(s);
    if (!identity || !dim)
        return ms_err_set(err, MS_EINVAL, "store_get_model: NULL output");
    *identity = NULL;
    *dim = 0;
    return s->ops->get_model(s, identity, dim, err);
}

int store_get_center(store *s, float *c, int dim, size_t *from_n, ms_err *err)
{
    CHECK_STORE(s);
    int rc = check_dim(dim, err);
    if (rc < 0)
        return rc;
    if (!c || !from_n)
        return ms_err_set(err, MS_EINVAL, "store_get_center: NULL output");
    *from_n = 0;
    uint8_t *bytes = NULL;
    size_t len = 0;
    int64_t n = 0;
    if ((rc = s->ops->get_center(s, &bytes, &len, &n, err)) < 0)
        return rc;
    /* The database is as hostile as any file: check before trusting. */
    if (len != (size_t)dim * 4)
        rc = ms_err_set(err, MS_EFORMAT, "%s: the stored center has %zu bytes, not %d floats of the model's dim",
                        s->where, len, dim);
    else if (n < 1)
        rc = ms_err_set(err, MS_EFORMAT, "%s: the stored center claims to come from %lld vectors", s->where,
                        (long long)n);
    if (rc == 0) {
        store_vec_decode(bytes, dim, c);
        for (int i = 0; i < dim && rc == 0; i++)
            if (!isfinite(c[i]))
                rc = ms_err_set(err, MS_EFORMAT, "%s: value %d of the stored center is not finite", s->where, i);
    }
    free(bytes);
    if (rc == 0)
        *from_n = (size_t)n;
    return rc;
}

int store_set_center(store *s, const float *c, int dim, size_t from_n, ms_err *err)
{
    CHECK_STORE(s);
    int rc = check_dim(dim, err);
    if (rc < 0 || (rc = check_vector(c, dim, "the center", err)) < 0)
        return rc;
    if (from_n < 1 || from_n > (size_t)INT64_MAX)
        return ms_err_set(err, MS_EINVAL, "a center must come from at least one vector, got %zu", from_n);
    uint8_t *bytes = malloc((size_t)dim * 4);
    if (!bytes)
        return ms_err_set(err, MS_ENOMEM, "out of memory for a %d-float center", dim);
    store_vec_encode(c, dim, bytes);
    rc = s->ops->set_center(s, bytes, dim, (int64_t)from_n, err);
    free(bytes);
    return rc;
}

int store_clear_center(store *s, ms_err *err)
{
    CHECK_STORE(s);
    return s->ops->set_center(s, NULL, 0, 0, err);
}

int store_get_center_policy(store *s, int *off, ms_err *err)
{
    CHECK_STORE(s);
    if (!off)
        return ms_err_set(err, MS_EINVAL, "store_get_center_policy: NULL output");
    *off = 0;
    char *text = NULL;
    int rc = s->ops->get_center_policy(s, &text, err);
    if (rc < 0)
        return rc;
    if (!strcmp(text, "off"))
        *off = 1;
    else if (strcmp(text, "auto") != 0)
        rc = ms_err_set(err, MS_EFORMAT, "%s: the centering policy is '%.40s', not 'auto' or 'off'", s->where,
                        text);
    free(text);
    return rc;
}

int store_set_center_policy(store *s, int off, ms_err *err)
{
    CHECK_STORE(s);
    if (off != 0 && off != 1)
        return ms_err_set(err, MS_EINVAL, "store_set_center_policy: off must be 0 or 1, got %d", off);
    return s->ops->set_center_policy(s, off, err);
}

int store_get_search_qe(store *s, int *qe, ms_err *err)
{
    CHECK_STORE(s);
    if (!qe)
        return ms_err_set(err, MS_EINVAL, "store_get_search_qe: NULL output");
    *qe = 0;
    int64_t v = 0;
    int is_int = 0;
    int rc = s->ops->get_search_qe(s, &v, &is_int, err);
    if (rc < 0)
        return rc;
    if (!is_int || v < 0 || v > STORE_SEARCH_QE_MAX)
        return ms_err_set(err, MS_EFORMAT, "%s: the query-expansion default is not a number of neighbours from 0 to %d",
                          s->where, STORE_SEARCH_QE_MAX);
    *qe = (int)v;
    return 0;
}

int store_set_search_qe(store *s, int qe, ms_err *err)
{
    CHECK_STORE(s);
    if (qe < 0 || qe > STORE_SEARCH_QE_MAX)
        return ms_err_set(err, MS_EINVAL, "query expansion uses 0 to %d neighbours, not %d", STORE_SEARCH_QE_MAX, qe);
    return s->ops->set_search_qe(s, qe, err);
}

int store_ingest(store *s, const store_item *items, size_t n, int64_t *ids,
                 int *was_new, ms_err *err)
{
    CHECK_STORE(s);
    if (n == 0)
        return 0;
    if (!items || !ids || !was_new)
        return ms_err_set(err, MS_EINVAL, "store_ingest: NULL items, ids or was_new");
    char *identity = NULL;
    int dim = 0;
    int rc = s->ops->get_model(s, &identity, &dim, err);
    free(identity);
    if (rc < 0)
        return rc;
    if (dim == 0)
        return ms_err_set(err, MS_EINVAL, "%s: the collection has no model yet (store_use_model first)", s->where);
    if ((rc = check_items(items, n, dim, err)) < 0)
        return rc;
    /* The backend re-reads the model inside its transaction: a concurrent
     * model change between here and there is reported, not mixed in. */
    return s->ops->ingest(s, items, n, dim, ids, was_new, err);
}

int store_find_sha256(store *s, const char *sha256, int64_t *id, ms_err *err)
{
    CHECK_STORE(s);
    int rc = check_sha256(sha256, "store_find_sha256", err);
    if (rc < 0)
        return rc;
    if (!id)
        return ms_err_set(err, MS_EINVAL, "store_find_sha256: id is NULL");
    return s->ops->find_sha256(s, sha256, id, err);
}

int store_has_name(store *s, const char *original_name, ms_err *err)
{
    CHECK_STORE(s);
    int rc = store_check_text(original_name, 0, 0, "original name", err);
    return rc < 0 ? rc : s->ops->has_name(s, original_name, err);
}

int store_get_info(store *s, int64_t id, store_image_info *info, ms_err *err)
{
    CHECK_STORE(s);
    if (!info)
        return ms_err_set(err, MS_EINVAL, "store_get_info: info is NULL");
    memset(info, 0, sizeof *info);
    return s->ops->get_info(s, id, info, err);
}

static int get_blob(store *s, int64_t id, int thumb, uint8_t **bytes, size_t *len,
                    char mime[32], ms_err *err)  /* err is not NULL */
{
    if (!bytes || !len || !mime)
        return ms_err_set(err, MS_EINVAL, "store_get_%s: NULL output", thumb ? "thumbnail" : "image");
    *bytes = NULL;
    *len = 0;
    mime[0] = '\0';
    return s->ops->get_blob(s, id, thumb, bytes, len, mime, err);
}

int store_get_image(store *s, int64_t id, uint8_t **bytes, size_t *len, char mime[32], ms_err *err)
{
    CHECK_STORE(s);
    return get_blob(s, id, 0, bytes, len, mime, err);
}

int store_get_thumbnail(store *s, int64_t id, uint8_t **bytes, size_t *len, char mime[32],
                        ms_err *err)
{
    CHECK_STORE(s);
    return get_blob(s, id, 1, bytes, len, mime, err);
}

int store_get_meta(store *s, int64_t id, store_meta *meta, ms_err *err)
{
    CHECK_STORE(s);
    if (!meta)
        return ms_err_set(err, MS_EINVAL, "store_get_meta: meta is NULL");
    store_meta_init(meta);
    int rc = s->ops->get_meta(s, id, meta, err);
    if (rc < 0)
        store_meta_free(meta);
    return rc;
}

/* What the backend calls inside its transaction: the caller's edit, then
 * the checks every stored metadata passes, then "did anything change":
 * 0 to write, 1 when nothing changed, or the first error. */
typedef struct edit_call {
    store_meta_edit_fn edit;
    void *ctx;
    int64_t id;
} edit_call;

static int checked_edit(void *arg, store_meta *m, ms_err *err)
{
    edit_call *c = arg;
    store_meta before;
    int rc = store_meta_copy(&before, m, err);
    if (rc < 0)
        return rc;
    char who[40];
    snprintf(who, sizeof who, "image %lld", (long long)c->id);
    if ((rc = c->edit(c->ctx, m, err)) == 0 && (rc = check_meta(m, who, err)) == 0)
        rc = store_meta_same(&before, m);
    store_meta_free(&before);
    return rc;
}

int store_edit_meta(store *s, int64_t id, store_meta_edit_fn edit, void *ctx, ms_err *err)
{
    CHECK_STORE(s);
    if (!edit)
        return ms_err_set(err, MS_EINVAL, "store_edit_meta: edit is NULL");
    edit_call c = {edit, ctx, id};
    return s->ops->edit_meta(s, id, checked_edit, &c, err);
}

void store_meta_patch_init(store_meta_patch *p)
{
    memset(p, 0, sizeof *p);
    store_meta_init(&p->to);
}

static int apply_patch(void *ctx, store_meta *m, ms_err *err)
{
    return store_meta_patch_apply(ctx, m, err);
}

int store_patch_meta(store *s, int64_t id, const store_meta_patch *p, ms_err *err)
{
    if (!p)
        return ms_err_set(err, MS_EINVAL, "store_patch_meta: patch is NULL");
    return store_edit_meta(s, id, apply_patch, (void *)p, err);
}

int store_get_vector(store *s, int64_t id, float *vec, int dim, ms_err *err)
{
    CHECK_STORE(s);
    int rc = check_dim(dim, err);
    if (rc < 0)
        return rc;
    if (!vec)
        return ms_err_set(err, MS_EINVAL, "store_get_vector: vec is NULL");
    return s->ops->get_vector(s, id, vec, dim, err);
}

int store_set_vector(store *s, int64_t id, const float *vec, int dim, ms_err *err)
{
    CHECK_STORE(s);
    char what[48];
    snprintf(what, sizeof what, "image %lld", (long long)id);
    int rc = check_dim(dim, err);
    if (rc < 0 || (rc = check_vector(vec, dim, what, err)) < 0)
        return rc;
    return s->ops->set_vector(s, id, vec, dim, err);
}

int store_delete(store *s, int64_t id, ms_err *err)
{
    CHECK_STORE(s);
    return s->ops->delete_image(s, id, err);
}

int store_filter_ids(store *s, const store_filter *f, int64_t **ids, size_t *n, ms_err *err)
{
    CHECK_STORE(s);
    if (!f || !ids || !n)
        return ms_err_set(err, MS_EINVAL, "store_filter_ids: NULL filter or output");
    *ids = NULL;
    *n = 0;
    return s->ops->filter_ids(s, f, ids, n, err);
}

int store_each_vector(store *s, store_vector_fn fn, void *ctx, ms_err *err)
{
    CHECK_STORE(s);
    if (!fn)
        return ms_err_set(err, MS_EINVAL, "store_each_vector: fn is NULL");
    return s->ops->each_vector(s, fn, ctx, err);
}

int store_list_ids(store *s, int64_t **ids, size_t *n, ms_err *err)
{
    CHECK_STORE(s);
    if (!ids || !n)
        return ms_err_set(err, MS_EINVAL, "store_list_ids: NULL output");
    *ids = NULL;
    *n = 0;
    return s->ops->list_ids(s, ids, n, err);
}

int store_count(store *s, size_t *n, ms_err *err)
{
    CHECK_STORE(s);
    if (!n)
        return ms_err_set(err, MS_EINVAL, "store_count: n is NULL");
    return s->ops->count(s, n, err);
}

int store_generation(store *s, uint64_t *gen, ms_err *err)
{
    CHECK_STORE(s);
    if (!gen)
        return ms_err_set(err, MS_EINVAL, "store_generation: gen is NULL");
    return s->ops->generation(s, gen, err);
}

int store_check(store *s, ms_err *err)
{
    CHECK_STORE(s);
    int rc = s->ops->check(s, err);
    if (rc < 0)
        return rc;
    char *identity = NULL;
    int dim = 0;
    int off, qe;
    if ((rc = store_get_center_policy(s, &off, err)) < 0 || (rc = store_get_search_qe(s, &qe, err)) < 0)
        return rc;
    if ((rc = s->ops->get_model(s, &identity, &dim, err)) < 0)
        return rc;
    free(identity);
    if (dim == 0)
        return 0;
    float *c = malloc((size_t)dim * sizeof *c);
    if (!c)
        return ms_err_set(err, MS_ENOMEM, "out of memory for a %d-float center", dim);
    size_t from_n;
    rc = store_get_center(s, c, dim, &from_n, err);
    free(c);
    return rc == MS_ENOTFOUND ? 0 : rc;
}
