/*
 * search.c - `medsearch search IMAGE`: the k stored X-rays most similar to
 * an image, as a table or JSON.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "util/idlist.h"
#include "util/text.h"
#include "util/timing.h"

static json_t *result_json(const engine_result *r, int rank)
{
    const store_meta *m = &r->meta;
    json_t *labels = json_array(), *extra = json_object();
    for (int i = 0; i < m->n_labels; i++)
        json_array_append_new(labels, json_string(m->labels[i]));
    for (int i = 0; i < m->n_kv; i++)
        json_object_set_new(extra, m->kv[i].key, json_string(m->kv[i].value));
    char sex[2] = {m->sex, 0};
    return json_pack("{s:i, s:I, s:f, s:s?, s:o, s:s?, s:o, s:s?, s:s?, s:s?, s:o}", "rank", rank, "id",
                     (json_int_t)r->id, "score", (double)r->score, "original_name", m->original_name, "labels",
                     labels, "patient_id", m->patient_id, "age", m->age >= 0 ? json_integer(m->age) : json_null(),
                     "sex", m->sex ? sex : NULL, "view", m->view, "study_date", m->study_date, "extra", extra);
}

static json_t *ids_json(const int64_t *ids, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

static void print_json(const char *query, const engine_query *q, int qe, const image_rect *region,
                       const engine_result *res, int n, const engine_timing *t, double open_ms)
{
    int k = q->k;
    json_t *arr = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(arr, result_json(&res[i], i + 1));
    json_t *o = json_pack("{s:o, s:i, s:i, s:o, s:{s:f, s:f, s:f, s:f, s:f, s:f}}", "query", cli_json_text(query), "k", k, "qe",
                          qe, "results", arr, "timing_ms", "open", open_ms, "decode", t->decode_ms, "embed",
                          t->embed_ms, "index", t->index_ms, "store", t->store_ms, "total", t->total_ms);
    if (region)
        json_object_set_new(o, "region", json_pack("{s:i, s:i, s:i, s:i}", "x", region->x, "y", region->y, "width",
                                                   region->width, "height", region->height));
    if (q->n_like + q->n_unlike > 0)
        json_object_set_new(o, "feedback", json_pack("{s:o, s:o}", "like", ids_json(q->like, q->n_like), "unlike",
                                                      ids_json(q->unlike, q->n_unlike)));
    json_dumpf(o, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(o);
}

/* A table cell: the stored text made printable (a file name or label may
 * hold terminal control sequences), kept to width bytes with '~' marking a
 * cut, which never falls inside a UTF-8 character. */
typedef char cell_buf[STORE_MAX_TEXT + 1];

static const char *cell(const char *s, cell_buf buf, size_t width)
{
    if (!s || !*s)
        return "-";
    ms_text_printable(buf, sizeof(cell_buf), s);
    size_t n = strlen(buf);
    if (n <= width)
        return buf;
    size_t keep = width - 1;
    while (keep > 0 && ((unsigned char)buf[keep] & 0xC0) == 0x80)
        keep--; /* back to the start of the character the cut would split */
    buf[keep] = '~';
    buf[keep + 1] = '\0';
    return buf;
}

/* qe > 0 or feedback (1: a query moved by marks, 2: the marks alone): the
 * scores are not plain similarities, so the table says so. */
static void print_table(const engine_result *res, int n, int qe, int feedback)
{
    printf("%4s  %8s  %6s  %-32s  %-28s  %-10s  %3s  %3s  %-4s\n", "rank", "id", "score", "name", "labels", "patient",
           "age", "sex", "view");
    for (int i = 0; i < n; i++) {
        const store_meta *m = &res[i].meta;
        char labels[512], age[8];
        cell_buf b1, b2, b3, b4;
        cli_join_labels(m, labels, sizeof labels);
        snprintf(age, sizeof age, "%d", m->age);
        char sex[2] = {m->sex ? m->sex : '-', 0};
        printf("%4d  %8lld  %6.4f  %-32s  %-28s  %-10s  %3s  %3s  %-4s\n", i + 1, (long long)res[i].id,
               (double)res[i].score, cell(m->original_name, b1, 32), cell(labels, b2, 28),
               cell(m->patient_id, b3, 10), m->age >= 0 ? age : "-", sex, cell(m->view, b4, 4));
    }
    if (n > 0 && feedback)
        printf("scores: similarity to %s%s\n",
               feedback > 1 ? "l2(2 mean(like) - mean(unlike)) of the marked images" : "the query moved by the feedback",
               qe > 0 ? ", then expanded with its top results (--qe)" : "");
    else if (qe > 0 && n > 0)
        printf("scores: similarity to the query expanded with its top %d result%s (--qe 0: to the query "
               "itself)\n",
               qe, qe == 1 ? "" : "s");
}

int cmd_search(int argc, char **argv)
{
    int k = 10, one_per_patient = 0, qe = ENGINE_QE_COLLECTION, ef = 0, verbose = 0, by_id = 0;
    const char *filter_expr = NULL, *exclude_patient = NULL, *region_text = NULL, *like_text = NULL,
               *unlike_text = NULL;
    const cli_option opts[] = {
        {"k", 'k', CLI_INT, &k, "N", "number of results (default 10)", 1, 1000},
        {"filter", 'f', CLI_STRING, &filter_expr, "EXPR",
         "metadata filter, e.g. 'labels:Effusion sex:F age:40-60 view:PA'", 0, 0},
        {"exclude-patient", 0, CLI_STRING, &exclude_patient, "P", "leave out this patient's images", 0, 0},
        {"one-per-patient", 0, CLI_FLAG, &one_per_patient, NULL, "only the best image of each patient", 0, 0},
        {"qe", 0, CLI_INT, &qe, "N",
         "query expansion: average the query with its top N, search again (default: the collection's, see "
         "medsearch qe)",
         0, STORE_SEARCH_QE_MAX},
        {"ef", 0, CLI_INT, &ef, "N", "HNSW search breadth (default: the index's)", 1, 100000},
        {"id", 0, CLI_INT, &by_id, "ID", "search with a stored image instead of a file (it is left out)", 1,
         2147483647},
        {"region", 0, CLI_STRING, &region_text, "X,Y,W,H",
         "search with this part of the image: pixels of the image as shown, or percentages (10%,0,80%,50%)", 0, 0},
        {"like", 0, CLI_STRING, &like_text, "IDS",
         "relevance feedback: stored images like what you look for (12,17); left out of the results", 0, 0},
        {"unlike", 0, CLI_STRING, &unlike_text, "IDS", "stored images not like it; left out of the results", 0, 0},
        {"verbose", 'v', CLI_FLAG, &verbose, NULL, "print the timing breakdown and how the index was opened", 0, 0},
        {0},
    };
    static const cli_command base = {
        "search", "IMAGE | --id ID | --like IDS",
        "Finds the stored X-rays most similar to IMAGE (PNG, JPEG, JPEG 2000, TIFF, WebP, HEIC, AVIF, GIF or DICOM), by cosine similarity of\n"
        "the model's features. Filter terms: labels:A|B (any) labels:A+B (all) sex:F age:40-60 view:PA\n"
        "patient:ID -patient:ID key=value. Exit code 1 when nothing matches.",
        CLI_DB | CLI_MODEL | CLI_JSON, NULL, 0, 1};
    cli_command me = base;
    me.options = opts;
    cli_common c;
    char **args;
    int n_args, code;
    if (!cli_parse(&me, argc, argv, &c, &args, &n_args, &code))
        return code;
    if (n_args == 1 && by_id > 0) {
        fprintf(stderr, "medsearch search: give either an IMAGE file or --id ID\n");
        free(args);
        return EXIT_USAGE;
    }
    const char *image = n_args ? args[0] : NULL;
    free(args);

    ms_err err = {0};
    image_region region;
    if (region_text && image_region_parse(region_text, &region, &err) != 0) {
        cli_error(&me, &err);
        return EXIT_USAGE;
    }
    int64_t like[ENGINE_FEEDBACK_MAX], unlike[ENGINE_FEEDBACK_MAX];
    int n_like = 0, n_unlike = 0;
    const char *bad = like_text && ms_id_list_parse(like_text, like, ENGINE_FEEDBACK_MAX, &n_like, &err) ? "--like"
                      : unlike_text && ms_id_list_parse(unlike_text, unlike, ENGINE_FEEDBACK_MAX, &n_unlike, &err)
                          ? "--unlike"
                          : NULL;
    if (bad) {
        ms_err_prefix(&err, "%s: ", bad);
        cli_error(&me, &err);
        return EXIT_USAGE;
    }
    /* Neither an image nor --id: the marked images alone are the query. */
    int marks_alone = !image && !by_id;
    if (marks_alone && (!n_like || region_text)) {
        fprintf(stderr, "medsearch search: give an IMAGE file, --id ID, or --like IDS to search with the images "
                        "marked like alone%s\n", region_text ? " (a region needs an image)" : "");
        return EXIT_USAGE;
    }
    store_filter filter;
    store_filter_init(&filter);
    int have_filter = 0;
    if (filter_expr) {
        if (store_filter_parse(filter_expr, &filter, &err) != 0) {
            cli_error(&me, &err);
            return EXIT_USAGE;
        }
        have_filter = 1;
    }
    if (exclude_patient) {
        if (filter.exclude_patient && strcmp(filter.exclude_patient, exclude_patient)) {
            /* the filter holds one excluded patient: the flag must not silently drop
             * the expression's */
            fprintf(stderr, "medsearch search: --exclude-patient %s and the filter's -patient:%s "
                    "name different patients; give one of them\n", exclude_patient, filter.exclude_patient);
            store_filter_free(&filter);
            return EXIT_USAGE;
        }
        free(filter.exclude_patient);
        if (!(filter.exclude_patient = strdup(exclude_patient))) {
            store_filter_free(&filter);
            return 1;
        }
        have_filter = 1;
    }

    unsigned char *bytes = NULL;
    size_t len = 0;
    engine_options o;
    cli_engine_options(&c, &o);
    /* A stored image (or the marked images alone) is searched with stored
     * vectors: nothing is embedded, so the model is not needed (nor loaded)
     * unless --model names one to check against the collection's. */
    if (!image && !c.model && !region_text)
        o.no_model = 1;
    if (image && cli_read_file(image, o.limits.max_bytes, &bytes, &len, &err) != 0) {
        fprintf(stderr, "medsearch search: %s: %s\n", image, err.msg);
        store_filter_free(&filter);
        return err.code == MS_ENOTFOUND ? EXIT_USAGE : 1;
    }
    engine *e;
    engine_open_report rep;
    int rc = cli_open(&me, &o, &e, &rep, verbose);
    if (rc) {
        free(bytes);
        store_filter_free(&filter);
        return rc;
    }
    engine_query q = {.bytes = bytes, .len = len, .by_id = by_id, .k = k, .filter = have_filter ? &filter : NULL,
                      .one_per_patient = one_per_patient, .qe = qe, .ef = ef, .exclude_self = by_id > 0,
                      .like = like, .n_like = n_like, .unlike = unlike, .n_unlike = n_unlike};
    image_rect used = {0};
    if (region_text) {
        q.region = &region;
        q.region_used = &used;
    }
    engine_result *res = NULL;
    int n = 0;
    engine_timing t;
    rc = engine_search(e, &q, &res, &n, &t, &err);
    if (rc) {
        if (image)
            ms_err_prefix(&err, "%s: ", image);
        cli_error(&me, &err);
        rc = rc == MS_EINVAL || rc == MS_ENOTFOUND ? EXIT_USAGE : 1;
    } else {
        char label[32];
        if (by_id)
            snprintf(label, sizeof label, "id %d", by_id);
        else
            snprintf(label, sizeof label, "the images marked like");
        if (c.json)
            print_json(image ? image : label, &q, engine_resolve_qe(e, qe), region_text ? &used : NULL, res, n, &t,
                       rep.open_ms);
        else
            print_table(res, n, engine_resolve_qe(e, qe), marks_alone ? 2 : n_like + n_unlike > 0);
        if (n_like + n_unlike && !c.json && !marks_alone)
            printf("feedback: the query moved towards the image%s marked like (%d) and away from those marked "
                   "unlike (%d); the marked images are left out of the results\n", n_like == 1 ? "" : "s", n_like,
                   n_unlike);
        else if (!c.json && marks_alone)
            printf("query: the image%s marked like (%d), away from those marked unlike (%d); the marked images "
                   "are left out of the results\n", n_like == 1 ? "" : "s", n_like, n_unlike);
        if (region_text && !c.json)
            printf("region: x %d, y %d, %dx%d pixels of the image as shown\n", used.x, used.y, used.width,
                   used.height);
        if (verbose)
            fprintf(stderr,
                    "query expansion: %d; timing: open %.1f ms (model %.1f, index %.1f); search: decode %.1f, "
                    "embed %.1f, index %.2f, store %.2f, total %.1f ms\n",
                    engine_resolve_qe(e, qe), rep.open_ms, rep.model_ms, rep.index_ms, t.decode_ms, t.embed_ms,
                    t.index_ms, t.store_ms, t.total_ms);
        rc = n > 0 ? 0 : 1;
        if (n == 0 && !c.json)
            fprintf(stderr, "medsearch search: nothing matches\n");
    }
    engine_results_free(res, n);
    engine_close(e);
    free(bytes);
    store_filter_free(&filter);
    return rc;
}
