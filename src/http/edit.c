/*
 * edit.c - PATCH /api/images/{id}/metadata: a JSON merge patch (RFC 7396)
 * of an image's metadata as GET /api/images/{id}/metadata shows it.
 *
 * A member given replaces that field; null (or "") makes it unknown;
 * "labels" replaces the whole list; "extra" is merged key by key (a null
 * value removes the key; "extra": null removes them all). The fixed facts
 * of an image (its id, bytes, size, type, creation time and first file
 * name) are refused by name, and so is any other member: nothing sent is
 * dropped in silence.
 *
 * The edit is one store transaction (store_edit_meta), so that two clients
 * never lose each other's change. A client that shows metadata before
 * changing it sends the ETag it was shown as If-Match: the edit is then
 * refused with 412 when someone else changed the image in between.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/http_internal.h"
#include "util/sha256.h"

#define MAX_TEXT 256         /* patient id, study date, view, one label (as POST /api/images) */
#define MAX_KEY 64           /* an "extra" key (as a meta.KEY field of POST /api/images) */

void api_meta_etag(const store_meta *m, char out[48])
{
    json_t *o = json_object();
    api_meta_to_json(m, o);
    char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    char hex[65] = "";
    ms_sha256_hex(text ? text : "", text ? strlen(text) : 0, hex);
    free(text);
    snprintf(out, 48, "\"m-%.32s\"", hex);
}

/* Does an If-Match list name etag? Strong comparison (RFC 9110 13.1.1): a
 * weak tag (W/"...") never matches; "*" matches any image that exists. */
static int if_match_holds(const char *list, const char *etag)
{
    size_t elen = strlen(etag);
    for (const char *p = list; *p;) {
        p += strspn(p, " \t,");
        size_t n = strcspn(p, ",");
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if ((n == 1 && p[0] == '*') || (n == elen && !strncmp(p, etag, n)))
            return 1;
        p += strcspn(p, ",");
    }
    return 0;
}

/* ---- the patch from JSON ---- */

typedef struct meta_edit {
    store_meta_patch patch;          /* borrows the JSON document's strings */
    const char *labels[STORE_MAX_LABELS];
    store_kv set_kv[STORE_MAX_KV];
    const char *if_match;            /* "" when not sent */
    int precondition_failed;
    char etag_found[48];             /* the image's ETag when If-Match failed */
} meta_edit;

static int bad(ms_err *err, const char *fmt, const char *name)
{
    return ms_err_set(err, MS_EINVAL, fmt, name);
}

/* A text member: a string of at most max bytes without control characters,
 * or null / "" for unknown. */
static int text_member(json_t *v, const char *name, size_t max, char **dst, ms_err *err)
{
    *dst = NULL;
    if (json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return bad(err, "'%s' must be a string or null", name);
    const char *s = json_string_value(v);
    if (!*s)
        return 0;
    if (!http_text_ok(s, max))
        return ms_err_set(err, MS_EINVAL, "'%s' is over %zu bytes or has control characters", name, max);
    *dst = (char *)s;
    return 0;
}

static int age_member(json_t *v, int *age, ms_err *err)
{
    *age = -1;
    if (json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 200)
        return bad(err, "'%s' must be a whole number of years from 0 to 200, or null", "age");
    *age = (int)json_integer_value(v);
    return 0;
}

static int sex_member(json_t *v, char *sex, ms_err *err)
{
    *sex = 0;
    if (json_is_null(v))
        return 0;
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    if (s && (!strcasecmp(s, "M") || !strcasecmp(s, "male")))
        *sex = 'M';
    else if (s && (!strcasecmp(s, "F") || !strcasecmp(s, "female")))
        *sex = 'F';
    else if (!s || *s)
        return bad(err, "'%s' must be \"M\", \"F\" or null", "sex");
    return 0;
}

static int labels_member(json_t *v, meta_edit *e, ms_err *err)
{
    store_meta *to = &e->patch.to;
    to->labels = (char **)e->labels;
    to->n_labels = 0;
    if (json_is_null(v))
        return 0;
    if (!json_is_array(v))
        return bad(err, "'%s' must be an array of strings, or null", "labels");
    if (json_array_size(v) > STORE_MAX_LABELS)
        return ms_err_set(err, MS_EINVAL, "'labels' has over %d labels", STORE_MAX_LABELS);
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item) {
        const char *s = json_is_string(item) ? json_string_value(item) : NULL;
        if (!s || !http_text_ok(s, MAX_TEXT))
            return ms_err_set(err, MS_EINVAL, "label %zu must be a string of 1 to %d bytes without "
                              "control characters", i + 1, MAX_TEXT);
        e->labels[to->n_labels++] = s;
    }
    return 0;
}

static int extra_member(json_t *v, meta_edit *e, ms_err *err)
{
    if (json_is_null(v)) {  /* every key/value removed */
        e->patch.replace |= STORE_PATCH_KV;
        return 0;
    }
    if (!json_is_object(v))
        return bad(err, "'%s' must be an object of strings (null removes a key), or null", "extra");
    if (json_object_size(v) > STORE_MAX_KV)
        return ms_err_set(err, MS_EINVAL, "'extra' has over %d keys", STORE_MAX_KV);
    const char *key;
    json_t *value;
    json_object_foreach(v, key, value) {
        if (!http_text_ok(key, MAX_KEY))
            return ms_err_set(err, MS_EINVAL, "an 'extra' key is 1 to %d bytes without control "
                              "characters: '%.80s'", MAX_KEY, key);
        store_kv *kv = &e->set_kv[e->patch.n_set_kv++];
        kv->key = (char *)key;
        kv->value = NULL;
        if (json_is_null(value))
            continue;
        const char *s = json_is_string(value) ? json_string_value(value) : NULL;
        if (!s || (*s && !http_text_ok(s, STORE_MAX_TEXT)))
            return ms_err_set(err, MS_EINVAL, "extra '%.64s' must be a string of at most %d bytes "
                              "without control characters, or null", key, STORE_MAX_TEXT);
        kv->value = (char *)s;
    }
    e->patch.set_kv = e->set_kv;
    return 0;
}

static int is_fixed(const char *name)
{
    static const char *const fixed[] = {"id", "sha256", "mime", "width", "height", "bytes", "created",
                                        "original_name", "image_url", "thumbnail_url"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (!strcmp(name, fixed[i]))
            return 1;
    return 0;
}

/* Turns the document's members into e->patch. */
static int patch_from_json(json_t *doc, meta_edit *e, ms_err *err)
{
    static const struct {
        const char *name;
        unsigned bit;
        size_t off;
    } texts[] = {
        {"patient_id", STORE_PATCH_PATIENT, offsetof(store_meta, patient_id)},
        {"study_date", STORE_PATCH_DATE, offsetof(store_meta, study_date)},
        {"view", STORE_PATCH_VIEW, offsetof(store_meta, view)},
    };
    if (!json_is_object(doc))
        return ms_err_set(err, MS_EINVAL, "the body must be a JSON object of the fields to change");
    store_meta *to = &e->patch.to;
    const char *name;
    json_t *v;
    json_object_foreach(doc, name, v) {
        int rc = 0, text = -1;
        for (int i = 0; i < (int)(sizeof texts / sizeof texts[0]) && text < 0; i++)
            if (!strcmp(name, texts[i].name))
                text = i;
        if (text >= 0)
            e->patch.replace |= texts[text].bit,
                rc = text_member(v, name, MAX_TEXT, (char **)((char *)to + texts[text].off), err);
        else if (!strcmp(name, "age"))
            e->patch.replace |= STORE_PATCH_AGE, rc = age_member(v, &to->age, err);
        else if (!strcmp(name, "sex"))
            e->patch.replace |= STORE_PATCH_SEX, rc = sex_member(v, &to->sex, err);
        else if (!strcmp(name, "labels"))
            e->patch.replace |= STORE_PATCH_LABELS, rc = labels_member(v, e, err);
        else if (!strcmp(name, "extra"))
            rc = extra_member(v, e, err);
        else if (is_fixed(name))
            rc = ms_err_set(err, MS_EINVAL, "'%s' cannot be changed: an image's id, bytes, size, type, "
                            "creation time and first file name are fixed", name);
        else
            rc = ms_err_set(err, MS_EINVAL, "unknown field '%.80s' (the fields are patient_id, "
                            "study_date, age, sex, view, labels and extra)", name);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- the edit, inside the store's transaction ---- */

static int apply_edit(void *ctx, store_meta *m, ms_err *err)
{
    meta_edit *e = ctx;
    if (e->if_match[0]) {
        char etag[48];
        api_meta_etag(m, etag);
        if (!if_match_holds(e->if_match, etag)) {
            e->precondition_failed = 1;
            snprintf(e->etag_found, sizeof e->etag_found, "%s", etag);
            return ms_err_set(err, MS_ECONFLICT, "the image's metadata changed since it was read "
                              "(If-Match %.100s; it is now %s): read it again", e->if_match, etag);
        }
    }
    return store_meta_patch_apply(&e->patch, m, err);
}

void api_handle_metadata_patch(api_ctx *c, const http_request *r, http_reply *rep)
{
    json_error_t jerr;
    json_t *doc = json_loadb((const char *)r->body.data, r->body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        reply_error(rep, 400, "bad_request", "the body is not JSON: %.200s (line %d, column %d)",
                    jerr.text, jerr.line, jerr.column);
        return;
    }
    meta_edit *e = calloc(1, sizeof *e);
    if (!e) {
        json_decref(doc);
        reply_error(rep, 503, "no_memory", "out of memory");
        return;
    }
    store_meta_patch_init(&e->patch);
    e->if_match = r->if_match;
    ms_err err = {0};
    int rc = patch_from_json(doc, e, &err);
    if (rc == 0)
        rc = engine_edit_meta(c->eng, r->match.id, apply_edit, e, &err);
    if (rc < 0 && e->precondition_failed) {
        reply_error(rep, 412, "precondition_failed", "%s", err.msg);
        snprintf(rep->etag, sizeof rep->etag, "%s", e->etag_found);
    } else if (rc < 0) {
        reply_ms_err(rep, &err);
    } else {
        api_metadata_reply(c, r->match.id, rep);
    }
    free(e);
    json_decref(doc);
}
