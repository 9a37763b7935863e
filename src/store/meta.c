/*
 * meta.c - working with one image's metadata in memory: copying it,
 * comparing it as the store would keep it, and applying a patch to it.
 *
 * "As the store would keep it" matters for comparing: labels are a set
 * compared without regard to ASCII case (the first spelling of a repeated
 * label is the one kept), view positions are upper-cased, a repeated key
 * keeps its last value, and "" is no more known than NULL. Two metadata that
 * would be stored alike are the same, so that an edit that changes nothing
 * writes nothing and says so.
 */
#include "store/store_impl.h"

#include <stdlib.h>
#include <string.h>

/* ---- copying ---- */

static int dup_field(const char *src, char **dst, int *ok)
{
    *dst = NULL;
    if (src && !(*dst = strdup(src)))
        *ok = 0;
    return *ok;
}

int store_meta_copy(store_meta *dst, const store_meta *src, ms_err *err)
{
    store_meta_init(dst);
    int ok = 1;
    dup_field(src->original_name, &dst->original_name, &ok);
    dup_field(src->patient_id, &dst->patient_id, &ok);
    dup_field(src->study_date, &dst->study_date, &ok);
    dup_field(src->view, &dst->view, &ok);
    dst->age = src->age;
    dst->sex = src->sex;
    if (ok && src->n_labels > 0 && !(dst->labels = calloc((size_t)src->n_labels, sizeof *dst->labels)))
        ok = 0;
    for (int i = 0; ok && i < src->n_labels; i++)
        if (dup_field(src->labels[i], &dst->labels[i], &ok))
            dst->n_labels++;
    if (ok && src->n_kv > 0 && !(dst->kv = calloc((size_t)src->n_kv, sizeof *dst->kv)))
        ok = 0;
    for (int i = 0; ok && i < src->n_kv; i++) {
        dst->n_kv++;  /* counted first: store_meta_free releases a half-copied pair */
        dup_field(src->kv[i].key, &dst->kv[i].key, &ok);
        dup_field(src->kv[i].value, &dst->kv[i].value, &ok);
    }
    if (ok)
        return 0;
    store_meta_free(dst);
    return ms_err_set(err, MS_ENOMEM, "out of memory copying metadata");
}

/* ---- comparing ---- */

/* Equal but for the case of ASCII letters: how labels and views compare in
 * the store (store_fold_label), whatever the process locale. */
static int ascii_caseeq(const char *a, const char *b)
{
    for (;; a++, b++) {
        char x = (*a >= 'A' && *a <= 'Z') ? (char)(*a - 'A' + 'a') : *a;
        char y = (*b >= 'A' && *b <= 'Z') ? (char)(*b - 'A' + 'a') : *b;
        if (x != y)
            return 0;
        if (!x)
            return 1;
    }
}

static const char *known(const char *s)
{
    return s && *s ? s : NULL;
}

static int same_text(const char *a, const char *b)
{
    a = known(a), b = known(b);
    return (!a && !b) || (a && b && !strcmp(a, b));
}

/* Index of the first of m's labels before upto that is label, compared
 * without regard to ASCII case, or -1. */
static int find_label(const store_meta *m, int upto, const char *label)
{
    for (int i = 0; i < upto; i++)
        if (ascii_caseeq(m->labels[i], label))
            return i;
    return -1;
}

/* m's labels as stored: each folded key once, first spelling, in order.
 * Fills kept[] with indexes into m->labels; returns how many. */
static int stored_labels(const store_meta *m, int *kept)
{
    int n = 0;
    for (int i = 0; i < m->n_labels; i++)
        if (find_label(m, i, m->labels[i]) < 0)
            kept[n++] = i;
    return n;
}

static int same_labels(const store_meta *a, const store_meta *b)
{
    int ka[STORE_MAX_LABELS], kb[STORE_MAX_LABELS];
    if (a->n_labels > STORE_MAX_LABELS || b->n_labels > STORE_MAX_LABELS)
        return 0;
    int na = stored_labels(a, ka), nb = stored_labels(b, kb);
    if (na != nb)
        return 0;
    for (int i = 0; i < na; i++)
        if (strcmp(a->labels[ka[i]], b->labels[kb[i]]))
            return 0;
    return 1;
}

/* The value a repeated key ends with (the last), or NULL when absent. */
static const char *kv_value(const store_meta *m, const char *key)
{
    const char *v = NULL;
    for (int i = 0; i < m->n_kv; i++)
        if (!strcmp(m->kv[i].key, key))
            v = m->kv[i].value;
    return v;
}

/* Every key of a has the same final value in b. */
static int kv_within(const store_meta *a, const store_meta *b)
{
    for (int i = 0; i < a->n_kv; i++) {
        const char *vb = kv_value(b, a->kv[i].key);
        if (!vb || strcmp(kv_value(a, a->kv[i].key), vb))
            return 0;
    }
    return 1;
}

int store_meta_same(const store_meta *a, const store_meta *b)
{
    const char *va = known(a->view), *vb = known(b->view);
    if (!same_text(a->patient_id, b->patient_id) || !same_text(a->study_date, b->study_date) ||
        a->age != b->age || a->sex != b->sex || (!va) != (!vb) || (va && !ascii_caseeq(va, vb)))
        return 0;
    return same_labels(a, b) && kv_within(a, b) && kv_within(b, a);
}

int store_labels_same_set(const store_meta *a, const store_meta *b)
{
    for (int i = 0; i < a->n_labels; i++)
        if (find_label(b, b->n_labels, a->labels[i]) < 0)
            return 0;
    for (int i = 0; i < b->n_labels; i++)
        if (find_label(a, a->n_labels, b->labels[i]) < 0)
            return 0;
    return 1;
}

/* ---- patching ---- */

/* The labels after the patch: the base list (the patch's when it replaces
 * them, else m's), without the removed ones, then each added one that is
 * not there yet. */
static int patched_labels(const store_meta_patch *p, const store_meta *m, store_meta *out, int *ok)
{
    const store_meta *base = (p->replace & STORE_PATCH_LABELS) ? &p->to : m;
    size_t cap = (size_t)base->n_labels + (size_t)p->n_add_labels + 1;
    if (!(out->labels = calloc(cap, sizeof *out->labels)))
        return *ok = 0;
    for (int i = 0; *ok && i < base->n_labels; i++) {
        int removed = 0;
        for (int j = 0; j < p->n_remove_labels && !removed; j++)
            removed = ascii_caseeq(base->labels[i], p->remove_labels[j]);
        if (!removed && dup_field(base->labels[i], &out->labels[out->n_labels], ok))
            out->n_labels++;
    }
    for (int j = 0; *ok && j < p->n_add_labels; j++)
        if (find_label(out, out->n_labels, p->add_labels[j]) < 0 &&
            dup_field(p->add_labels[j], &out->labels[out->n_labels], ok))
            out->n_labels++;
    return *ok;
}

/* Appends key = value to out, replacing an earlier pair of that key. */
static void put_kv(store_meta *out, const char *key, const char *value, int *ok)
{
    for (int i = 0; i < out->n_kv; i++)
        if (!strcmp(out->kv[i].key, key)) {
            char *v = NULL;
            if (dup_field(value, &v, ok)) {
                free(out->kv[i].value);
                out->kv[i].value = v;
            }
            return;
        }
    store_kv *kv = &out->kv[out->n_kv];
    out->n_kv++;
    dup_field(key, &kv->key, ok);
    dup_field(value, &kv->value, ok);
}

static void drop_kv(store_meta *out, const char *key)
{
    for (int i = 0; i < out->n_kv; i++)
        if (!strcmp(out->kv[i].key, key)) {
            free(out->kv[i].key);
            free(out->kv[i].value);
            out->kv[i] = out->kv[--out->n_kv];
            return;
        }
}

/* The key/values after the patch: the base pairs (the patch's when it
 * replaces them, else m's), then each set pair (a NULL value removes). */
static int patched_kv(const store_meta_patch *p, const store_meta *m, store_meta *out, int *ok)
{
    const store_meta *base = (p->replace & STORE_PATCH_KV) ? &p->to : m;
    size_t cap = (size_t)base->n_kv + (size_t)p->n_set_kv + 1;
    if (!(out->kv = calloc(cap, sizeof *out->kv)))
        return *ok = 0;
    for (int i = 0; *ok && i < base->n_kv; i++)
        put_kv(out, base->kv[i].key, base->kv[i].value, ok);
    for (int i = 0; *ok && i < p->n_set_kv; i++) {
        if (p->set_kv[i].value)
            put_kv(out, p->set_kv[i].key, p->set_kv[i].value, ok);
        else
            drop_kv(out, p->set_kv[i].key);
    }
    return *ok;
}

int store_meta_patch_apply(const store_meta_patch *p, store_meta *m, ms_err *err)
{
    store_meta out;
    store_meta_init(&out);
    int ok = 1;
    unsigned r = p->replace;
    dup_field(m->original_name, &out.original_name, &ok);
    dup_field(known((r & STORE_PATCH_PATIENT) ? p->to.patient_id : m->patient_id), &out.patient_id, &ok);
    dup_field(known((r & STORE_PATCH_DATE) ? p->to.study_date : m->study_date), &out.study_date, &ok);
    dup_field(known((r & STORE_PATCH_VIEW) ? p->to.view : m->view), &out.view, &ok);
    out.age = (r & STORE_PATCH_AGE) ? p->to.age : m->age;
    out.sex = (r & STORE_PATCH_SEX) ? p->to.sex : m->sex;
    if (ok && patched_labels(p, m, &out, &ok))
        patched_kv(p, m, &out, &ok);
    if (!ok) {
        store_meta_free(&out);
        return ms_err_set(err, MS_ENOMEM, "out of memory editing metadata");
    }
    store_meta_free(m);
    *m = out;
    return 0;
}
