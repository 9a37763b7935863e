/*
 * explain.c - `medsearch explain IMAGE --with ID`: where a query and one
 * stored image are alike, as the similarity split over each image's grid
 * of cells (engine.h, engine_map_similarity).
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "util/timing.h"

static json_t *cells_json(const float *cells, int w, int h)
{
    json_t *rows = json_array();
    for (int y = 0; y < h; y++) {
        json_t *row = json_array();
        for (int x = 0; x < w; x++)
            json_array_append_new(row, json_real(cells[y * w + x]));
        json_array_append_new(rows, row);
    }
    return rows;
}

static void print_json(const char *query, long long with, const engine_similarity_map *m, const char *overlay_q,
                       const char *overlay_r, const double ms[2])
{
    json_t *o = json_pack("{s:o, s:I, s:f, s:s, s:{s:i, s:i}, s:o, s:o}", "query", cli_json_text(query), "with",
                          (json_int_t)with, "similarity", m->similarity, "similarity_kind",
                          m->centred ? "centred cosine" : "cosine", "grid", "width", m->grid_w, "height", m->grid_h,
                          "query_cells", cells_json(m->query_cells, m->grid_w, m->grid_h), "result_cells",
                          cells_json(m->result_cells, m->grid_w, m->grid_h));
    if (m->region_used)
        json_object_set_new(o, "region", json_pack("{s:i, s:i, s:i, s:i}", "x", m->region.x, "y", m->region.y,
                                                   "width", m->region.width, "height", m->region.height));
    if (overlay_q)
        json_object_set_new(o, "overlays", json_pack("{s:o, s:o}", "query", cli_json_text(overlay_q), "result",
                                                     cli_json_text(overlay_r)));
    json_object_set_new(o, "timing_ms", json_pack("{s:f}", "map", ms[0]));
    if (overlay_q)
        json_object_set_new(json_object_get(o, "timing_ms"), "overlays", json_real(ms[1]));
    json_dumpf(o, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(o);
}

/* Writes bytes to path (through a temporary file renamed into place). */
static int write_png(const char *path, const uint8_t *png, size_t len)
{
    cli_out_file o = {0};
    if (cli_out_open(&o, path)) {
        fprintf(stderr, "medsearch explain: cannot write %s: %s\n", path, strerror(errno));
        return EXIT_ENV;
    }
    int ok = fwrite(png, 1, len, o.f) == len;
    if (cli_out_close(&o, ok) || !ok) {
        fprintf(stderr, "medsearch explain: cannot write %s: %s\n", path, strerror(errno));
        return EXIT_ENV;
    }
    return 0;
}

/* PREFIX-query.png and PREFIX-result.png into *q and *r (malloc'd). 0 or -1. */
static int overlay_paths(const char *prefix, char **q, char **r)
{
    size_t n = strlen(prefix) + sizeof "-result.png";
    *q = malloc(n);
    *r = malloc(n);
    if (!*q || !*r) {
        free(*q);
        free(*r);
        *q = *r = NULL;
        return -1;
    }
    snprintf(*q, n, "%s-query.png", prefix);
    snprintf(*r, n, "%s-result.png", prefix);
    return 0;
}

/* The map drawn over the images, written to qpath and rpath. */
static int write_overlays(engine *e, const engine_query *q, int with, const engine_similarity_map *m, int side,
                          const char *qpath, const char *rpath)
{
    uint8_t *qpng, *rpng;
    size_t qlen, rlen;
    ms_err err = {0};
    if (engine_similarity_overlays(e, q, with, m, side, &qpng, &qlen, &rpng, &rlen, &err)) {
        fprintf(stderr, "medsearch explain: the overlays: %s\n", err.msg);
        return 1;
    }
    int rc = write_png(qpath, qpng, qlen);
    if (!rc)
        rc = write_png(rpath, rpng, rlen);
    free(qpng);
    free(rpng);
    return rc;
}

/* The grid in thousandths of the similarity's scale, and its strongest cell. */
static void print_grid(const char *title, const float *cells, int w, int h)
{
    int best = 0;
    printf("%s\n", title);
    for (int y = 0; y < h; y++) {
        printf("   ");
        for (int x = 0; x < w; x++) {
            printf(" %6.1f", 1000.0 * cells[y * w + x]);
            if (cells[y * w + x] > cells[best])
                best = y * w + x;
        }
        printf("\n");
    }
    printf("    strongest: row %d, column %d (%.1f)\n", best / w + 1, best % w + 1, 1000.0 * cells[best]);
}

static void print_text(const char *query, long long with, const engine_similarity_map *m, const char *overlay_q,
                       const char *overlay_r)
{
    printf("similarity %.4f (%s, without query expansion) of %s and image %lld\n", m->similarity,
           m->centred ? "centred cosine" : "cosine", query, with);
    if (m->region_used)
        printf("query region: x %d, y %d, %dx%d pixels of the image as shown\n", m->region.x, m->region.y,
               m->region.width, m->region.height);
    printf("each cell's part of it, in thousandths, on a %d x %d grid over each image (top row first; the cells "
           "of either image sum to the similarity)\n",
           m->grid_w, m->grid_h);
    print_grid("query:", m->query_cells, m->grid_w, m->grid_h);
    char title[64];
    snprintf(title, sizeof title, "image %lld:", with);
    print_grid(title, m->result_cells, m->grid_w, m->grid_h);
    if (overlay_q)
        printf("overlays: %s, %s\n", overlay_q, overlay_r);
}

int cmd_explain(int argc, char **argv)
{
    int by_id = 0, with = 0, overlay_size = 1024;
    const char *region_text = NULL, *overlay = NULL;
    const cli_option opts[] = {
        {"with", 'w', CLI_INT, &with, "ID", "the stored image to compare with (required)", 1, 2147483647},
        {"id", 0, CLI_INT, &by_id, "ID", "a stored image as the query instead of a file", 1, 2147483647},
        {"region", 0, CLI_STRING, &region_text, "X,Y,W,H",
         "only this part of the query, as search --region takes it", 0, 0},
        {"overlay", 'o', CLI_STRING, &overlay, "PREFIX",
         "also draw the map over the images: PREFIX-query.png and PREFIX-result.png", 0, 0},
        {"overlay-size", 0, CLI_INT, &overlay_size, "N",
         "longest side of the overlays (default 1024; a smaller image is enlarged by whole factors)", 16, 16383},
        {0},
    };
    static const cli_command base = {
        "explain", "IMAGE --with ID",
        "Shows where IMAGE (or stored image --id) and stored image --with are alike: their similarity, as search\n"
        "ranks without query expansion, split exactly over a grid of cells on each image (the model's last\n"
        "feature map: 7 x 7 for a 224-px ResNet-50 or MobileNetV2). A large cell is a part of one image that\n"
        "matches the other; a negative one argues against the match. Needs the model.",
        CLI_DB | CLI_MODEL | CLI_JSON, NULL, 0, 1};
    cli_command me = base;
    me.options = opts;
    cli_common c;
    char **args;
    int n_args, code;
    if (!cli_parse(&me, argc, argv, &c, &args, &n_args, &code))
        return code;
    const char *image = n_args ? args[0] : NULL;
    free(args);
    if ((image != NULL) == (by_id > 0) || !with) {
        fprintf(stderr, "medsearch explain: give an IMAGE file or --id ID, and --with ID\n");
        return EXIT_USAGE;
    }
    ms_err err = {0};
    image_region region;
    if (region_text && image_region_parse(region_text, &region, &err) != 0) {
        cli_error(&me, &err);
        return EXIT_USAGE;
    }
    unsigned char *bytes = NULL;
    size_t len = 0;
    engine_options o;
    cli_engine_options(&c, &o);
    if (image && cli_read_file(image, o.limits.max_bytes, &bytes, &len, &err) != 0) {
        fprintf(stderr, "medsearch explain: %s: %s\n", image, err.msg);
        return err.code == MS_ENOTFOUND ? EXIT_USAGE : 1;
    }
    engine *e;
    engine_open_report rep;
    int rc = cli_open(&me, &o, &e, &rep, 0);
    if (rc) {
        free(bytes);
        return rc;
    }
    char *qpath = NULL, *rpath = NULL;
    if (overlay && overlay_paths(overlay, &qpath, &rpath)) {
        free(bytes);
        engine_close(e);
        fprintf(stderr, "medsearch explain: out of memory\n");
        return 1;
    }
    engine_query q = {.bytes = bytes, .len = len, .by_id = by_id, .region = region_text ? &region : NULL};
    engine_similarity_map m;
    double ms[2];
    uint64_t t0 = ms_now_ns();
    rc = engine_map_similarity(e, &q, with, &m, &err);
    ms[0] = ms_elapsed_ms(t0);
    t0 = ms_now_ns();
    int written = rc || !overlay ? 0 : write_overlays(e, &q, with, &m, overlay_size, qpath, rpath);
    ms[1] = ms_elapsed_ms(t0);
    char label[32];
    snprintf(label, sizeof label, "image %d", by_id);
    if (rc) {
        if (image && rc != MS_ENOTFOUND)
            ms_err_prefix(&err, "%s: ", image);
        cli_error(&me, &err);
        rc = rc == MS_EINVAL || rc == MS_ENOTFOUND ? EXIT_USAGE : 1;
    } else if (written) {
        rc = written;
    } else if (c.json) {
        print_json(image ? image : label, with, &m, qpath, rpath, ms);
    } else {
        print_text(image ? image : label, with, &m, qpath, rpath);
    }
    free(qpath);
    free(rpath);
    engine_similarity_map_free(&m);
    engine_close(e);
    free(bytes);
    return rc;
}
