/*
 * meta.c - `medsearch meta ID [CHANGE...]`: shows one image's metadata, or
 * changes it (the CLI face of PATCH /api/images/{id}/metadata).
 *
 * A change is one argument, named as the API names the fields:
 *   FIELD=VALUE      patient_id, study_date, age, sex, view: set; an empty
 *                    VALUE makes the field unknown
 *   labels=A|B       the whole list (labels= : none)
 *   labels+=A|B      add these unless there; labels-=A|B  take these out
 *                    (both compared without regard to case)
 *   extra.KEY=VALUE  set a free key/value (VALUE may be empty)
 *   extra-=KEY|KEY   remove these keys
 * All changes are made in one store transaction (store_edit_meta), so a
 * server editing the same image at the same time loses nothing. Like `qe`,
 * it goes straight to the store: no model, no index.
 */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "util/text.h"

#define MAX_PARTS STORE_MAX_LABELS  /* labels or keys named by one argument */

/* The changes of the command line, as a patch borrowing argv's strings. */
typedef struct meta_changes {
    store_meta_patch patch;
    char *labels[MAX_PARTS], *add[MAX_PARTS], *remove[MAX_PARTS];
    store_kv kv[STORE_MAX_KV];
    char *pieces;                 /* the split copies of '|' lists (owned) */
} meta_changes;

/* Splits a '|' list (a copy kept in c->pieces) into out, which has room
 * for room entries; empty pieces are skipped. Returns the count, or -1 when
 * there is no room for them. */
static int split_bar(meta_changes *c, const char *list, char **out, int room, size_t *used)
{
    size_t n = strlen(list);
    memcpy(c->pieces + *used, list, n + 1);
    char *p = c->pieces + *used, *save = NULL;
    *used += n + 1;
    int count = 0;
    for (char *tok = strtok_r(p, "|", &save); tok; tok = strtok_r(NULL, "|", &save)) {
        if (count == room)
            return -1;
        out[count++] = tok;
    }
    return count;
}

static int bad_change(const char *arg, const char *why)
{
    fprintf(stderr, "medsearch meta: '%.200s': %s\n", arg, why);
    return -1;
}

static int scalar_change(meta_changes *c, const char *arg, const char *name, const char *value)
{
    store_meta *to = &c->patch.to;
    const char *v = *value ? value : NULL;
    if (!strcmp(name, "patient_id"))
        c->patch.replace |= STORE_PATCH_PATIENT, to->patient_id = (char *)v;
    else if (!strcmp(name, "study_date"))
        c->patch.replace |= STORE_PATCH_DATE, to->study_date = (char *)v;
    else if (!strcmp(name, "view"))
        c->patch.replace |= STORE_PATCH_VIEW, to->view = (char *)v;
    else if (!strcmp(name, "age")) {
        c->patch.replace |= STORE_PATCH_AGE;
        to->age = -1;
        if (v && cli_parse_int_in(v, 0, 200, &to->age) != 0)
            return bad_change(arg, "age is a whole number of years from 0 to 200 (empty: unknown)");
    } else if (!strcmp(name, "sex")) {
        c->patch.replace |= STORE_PATCH_SEX;
        to->sex = !v ? 0 : (!strcasecmp(v, "M") || !strcasecmp(v, "male")) ? 'M'
                     : (!strcasecmp(v, "F") || !strcasecmp(v, "female")) ? 'F' : '?';
        if (to->sex == '?')
            return bad_change(arg, "sex is M, F, male or female (empty: unknown)");
    } else {
        return bad_change(arg, "not a field (patient_id, study_date, age, sex, view, labels, extra.KEY)");
    }
    return 0;
}

/* One CHANGE argument into c. Returns 0 or -1 (said on stderr). */
static int parse_change(meta_changes *c, const char *arg, size_t *used)
{
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg)
        return bad_change(arg, "a change is FIELD=VALUE, labels+=A|B, labels-=A|B or extra-=KEY");
    if (!ms_text_is_printable(arg, strlen(arg)))
        return bad_change(arg, "it has control characters or bytes that are not UTF-8");
    char op = eq[-1] == '+' || eq[-1] == '-' ? eq[-1] : 0;
    size_t name_len = (size_t)(eq - arg) - (op != 0);
    const char *value = eq + 1;
    store_meta_patch *p = &c->patch;
    int n;
    if (name_len == 6 && !strncmp(arg, "labels", 6)) {
        /* += and -= add up over arguments; a second labels= replaces the first */
        int *have = op == '+' ? &p->n_add_labels : op == '-' ? &p->n_remove_labels : &p->to.n_labels;
        char **list = op == '+' ? c->add : op == '-' ? c->remove : c->labels;
        if (!op)
            *have = 0;
        if ((n = split_bar(c, value, list + *have, MAX_PARTS - *have, used)) < 0)
            return bad_change(arg, "too many labels");
        *have += n;
        if (!op)
            p->replace |= STORE_PATCH_LABELS;
        return 0;
    }
    if (name_len == 5 && !strncmp(arg, "extra", 5) && op == '-') {
        char *keys[MAX_PARTS];
        if ((n = split_bar(c, value, keys, MAX_PARTS, used)) < 0 || p->n_set_kv + n > STORE_MAX_KV)
            return bad_change(arg, "too many keys");
        for (int i = 0; i < n; i++)
            c->kv[p->n_set_kv++] = (store_kv){.key = keys[i], .value = NULL};
        return 0;
    }
    if (op)
        return bad_change(arg, "+= and -= are for labels (and -= for extra)");
    if (name_len > 6 && !strncmp(arg, "extra.", 6)) {
        if (p->n_set_kv == STORE_MAX_KV)
            return bad_change(arg, "too many keys");
        memcpy(c->pieces + *used, arg + 6, name_len - 6);
        c->pieces[*used + name_len - 6] = '\0';
        c->kv[p->n_set_kv++] = (store_kv){.key = c->pieces + *used, .value = (char *)value};
        *used += name_len - 5;
        return 0;
    }
    char name[16];
    snprintf(name, sizeof name, "%.*s", (int)(name_len < 15 ? name_len : 15), arg);
    return scalar_change(c, arg, name_len < 15 ? name : "", value);
}

static int parse_changes(meta_changes *c, char **args, int n)
{
    size_t total = 0, used = 0;
    for (int i = 0; i < n; i++)
        total += strlen(args[i]) + 1;
    if (!(c->pieces = malloc(total + 1)))
        return bad_change("", "out of memory");
    store_meta_patch_init(&c->patch);
    c->patch.set_kv = c->kv;
    c->patch.to.labels = c->labels;
    c->patch.add_labels = (const char *const *)c->add;
    c->patch.remove_labels = (const char *const *)c->remove;
    for (int i = 0; i < n; i++)
        if (parse_change(c, args[i], &used) != 0)
            return -1;
    return 0;
}

/* ---- output ---- */

/* Stored text on a terminal, made printable (util/text.h); "-" for unknown.
 * The longest is a joined label list (4,096 bytes) and the result is never
 * longer than the text. */
static void put_text(const char *s)
{
    char shown[4096];
    fputs(s && *s ? ms_text_printable(shown, sizeof shown, s) : "-", stdout);
}

static void print_field(const char *name, const char *value)
{
    char shown[128];
    printf("%-11s ", ms_text_printable(shown, sizeof shown, name));
    put_text(value);
    putchar('\n');
}

static void print_text(int64_t id, const store_meta *m, int edited, int changed)
{
    char num[32], labels[4096];
    snprintf(num, sizeof num, "%lld", (long long)id);
    print_field("id", num);
    print_field("file", m->original_name);
    print_field("patient_id", m->patient_id);
    print_field("study_date", m->study_date);
    snprintf(num, sizeof num, "%d", m->age);
    print_field("age", m->age >= 0 ? num : NULL);
    char sex[2] = {m->sex, 0};
    print_field("sex", sex);
    print_field("view", m->view);
    cli_join_labels(m, labels, sizeof labels);
    print_field("labels", labels);
    for (int i = 0; i < m->n_kv; i++) {
        char name[80];
        snprintf(name, sizeof name, "extra.%s", m->kv[i].key);
        print_field(name, m->kv[i].value);
    }
    if (edited)
        printf("%s\n", changed ? "changed" : "unchanged: the image already had this metadata");
}

static json_t *meta_json(int64_t id, const store_meta *m)
{
    json_t *labels = json_array(), *extra = json_object();
    for (int i = 0; i < m->n_labels; i++)
        json_array_append_new(labels, cli_json_text(m->labels[i]));
    for (int i = 0; i < m->n_kv; i++)
        json_object_set_new(extra, m->kv[i].key, cli_json_text(m->kv[i].value));
    char sex[2] = {m->sex, 0};
    return json_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "id", (json_int_t)id,
                     "original_name", m->original_name ? cli_json_text(m->original_name) : json_null(),
                     "patient_id", m->patient_id ? cli_json_text(m->patient_id) : json_null(),
                     "study_date", m->study_date ? cli_json_text(m->study_date) : json_null(),
                     "age", m->age >= 0 ? json_integer(m->age) : json_null(),
                     "sex", m->sex ? json_string(sex) : json_null(),
                     "view", m->view ? cli_json_text(m->view) : json_null(), "labels", labels, "extra", extra);
}

static void dump_json(json_t *o)
{
    json_dumpf(o, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(o);
}

static void print_json(int64_t id, const store_meta *m, int edited, int changed)
{
    json_t *o = meta_json(id, m);
    if (edited)
        json_object_set_new(o, "changed", json_boolean(changed));
    dump_json(o);
}

/* One line of a listing: id, file, patient, age, sex, view, labels. */
static void print_row(int64_t id, const store_meta *m)
{
    char labels[2048], age[8], sex[2] = {m->sex ? m->sex : '-', 0};
    cli_join_labels(m, labels, sizeof labels);
    snprintf(age, sizeof age, "%d", m->age);
    const char *cols[] = {m->original_name, m->patient_id, m->age >= 0 ? age : NULL, sex, m->view, labels};
    printf("%lld", (long long)id);
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++) {
        putchar('\t');
        put_text(cols[i]);
    }
    putchar('\n');
}

/* ---- the command ---- */

static int parse_id(const char *s, int64_t *id)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < 1)
        return -1;
    *id = v;
    return 0;
}

/* One image: shown, or changed and then shown. */
static int one_image(store *s, int64_t id, meta_changes *ch, int edited, int json, ms_err *err)
{
    int changed = 0, rc = 0;
    if (edited && (rc = store_patch_meta(s, id, &ch->patch, err)) >= 0) {
        changed = rc == 0;
        rc = 0;
    }
    store_meta m;
    store_meta_init(&m);
    if (rc == 0 && (rc = store_get_meta(s, id, &m, err)) == 0)
        (json ? print_json : print_text)(id, &m, edited, changed);
    store_meta_free(&m);
    return rc;
}

/* Every image a filter matches: listed, or each changed in its own
 * transaction. The changes are idempotent (set, add, remove), so after an
 * error the same command finishes the job. */
static int many_images(store *s, const char *expr, meta_changes *ch, int edited, int json, ms_err *err)
{
    store_filter f;
    int rc = store_filter_parse(expr, &f, err);
    if (rc)
        return rc;
    int64_t *ids = NULL;
    size_t n = 0, changed = 0, done = 0;
    rc = store_filter_ids(s, &f, &ids, &n, err);
    store_filter_free(&f);
    json_t *list = json && !edited ? json_array() : NULL;
    for (; rc == 0 && done < n; done++) {
        store_meta m;
        store_meta_init(&m);
        if (edited && (rc = store_patch_meta(s, ids[done], &ch->patch, err)) >= 0) {
            changed += rc == 0;
            rc = 0;
        } else if (!edited && (rc = store_get_meta(s, ids[done], &m, err)) == 0) {
            if (list)
                json_array_append_new(list, meta_json(ids[done], &m));
            else
                print_row(ids[done], &m);
        }
        store_meta_free(&m);
    }
    free(ids);
    if (list)
        dump_json(list);
    if (rc == 0 && n == 0) /* as search: finding nothing is exit 1 */
        rc = ms_err_set(err, MS_ENOTFOUND, "no image matches %s", expr);
    if (edited && json)
        dump_json(json_pack("{s:I, s:I, s:I}", "matched", (json_int_t)n, "changed", (json_int_t)changed,
                            "done", (json_int_t)(rc ? done : n)));
    else if (edited)
        printf("%zu images match; %zu changed, %zu had this metadata already%s\n", n, changed,
               (rc ? done : n) - changed, rc ? " before the error below (run the command again to finish)" : "");
    return rc;
}

int cmd_meta(int argc, char **argv)
{
    const char *filter = NULL;
    const cli_option opts[] = {
        {"filter", 0, CLI_STRING, &filter, "EXPR",
         "every image this filter matches (search's filter syntax) instead of one ID: listed, or changed", 0, 0},
        {0},
    };
    static const cli_command cmd = {
        "meta", "ID [CHANGE...] | --filter EXPR [CHANGE...]",
        "Shows the metadata of image ID, or changes it. Each CHANGE is one argument:\n"
        "  FIELD=VALUE      patient_id, study_date, age, sex (M/F), view; empty VALUE: unknown\n"
        "  labels=A|B       replace the labels (labels= : none; the first is the primary finding)\n"
        "  labels+=A|B      add labels;  labels-=A|B  remove labels (case-insensitive)\n"
        "  extra.KEY=VALUE  set a free key/value;  extra-=KEY|KEY  remove keys\n"
        "All changes go in together, in one transaction, or none does. The image's bytes, vector\n"
        "and first file name never change. With --filter instead of ID, every image the filter\n"
        "matches is listed (one line each, --json an array), or changed, each in its own transaction.\n"
        "Examples:\n"
        "  medsearch meta 17 age=44 sex=F labels+=Nodule labels-=Mass extra.reviewed=yes\n"
        "  medsearch meta --filter 'labels:Pleural_Thickening' 'labels-=Pleural_Thickening' 'labels+=Pleural thickening'",
        CLI_DB | CLI_JSON, NULL, 0, -1};
    cli_command me = cmd;
    me.options = opts;
    cli_common c;
    char **args;
    int n_args, code;
    if (!cli_parse(&me, argc, argv, &c, &args, &n_args, &code))
        return code;
    int64_t id = 0;
    int first_change = filter ? 0 : 1;
    meta_changes *ch = calloc(1, sizeof *ch);
    code = -1;
    if (!ch) {
        fprintf(stderr, "medsearch meta: out of memory\n");
        code = 1;
    } else if (!filter && n_args == 0) {
        fprintf(stderr, "medsearch meta: give an image ID, or --filter EXPR\n");
        cli_usage(&me, stderr);
        code = EXIT_USAGE;
    } else if (filter && n_args > 0 && parse_id(args[0], &id) == 0) {
        fprintf(stderr, "medsearch meta: give an image ID or --filter, not both\n");
        code = EXIT_USAGE;
    } else if (!filter && parse_id(args[0], &id) != 0) {
        fprintf(stderr, "medsearch meta: ID is an image id (a whole number from 1), not '%.100s'\n", args[0]);
        code = EXIT_USAGE;
    } else if (parse_changes(ch, args + first_change, n_args - first_change) != 0) {
        code = EXIT_USAGE;
    }
    int edited = n_args > first_change;
    free(args);
    engine_options o;
    cli_engine_options(&c, &o);
    if (code < 0 && cli_collection_missing(o.db)) {
        fprintf(stderr, "medsearch meta: no collection at %s (%s)\n", o.db, strerror(errno));
        code = 1;
    }
    store *s = NULL;
    ms_err err = {0};
    int rc = 0;
    if (code < 0 && (rc = store_open(o.db, &s, &err)) == 0) {
        rc = filter ? many_images(s, filter, ch, edited, c.json, &err) : one_image(s, id, ch, edited, c.json, &err);
        store_close(s);
    }
    if (ch)
        free(ch->pieces);
    free(ch);
    if (code >= 0)
        return code;
    if (rc) {
        cli_error(&me, &err);
        return rc == MS_EDB || rc == MS_EIO ? EXIT_ENV : cli_exit_code(rc);
    }
    return 0;
}
