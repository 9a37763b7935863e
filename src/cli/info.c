/*
 * info.c - `medsearch info`: what a collection holds (count, model, index,
 * sizes), and `medsearch info --model M`: what a model file is.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "util/text.h"

static int describe_model(const cli_command *cmd, const cli_common *c)
{
    ms_err err = {0};
    char path[4096];
    model *m;
    if (engine_find_model(c->model, path, sizeof path, &err) != 0 || model_load(path, &c->model_opt, &m, &err) != 0) {
        cli_error(cmd, &err);
        return EXIT_ENV;
    }
    if (c->json) {
        json_t *o = json_pack("{s:o, s:o, s:o, s:i, s:s, s:f}", "path", cli_json_text(path), "name",
                              cli_json_text(model_name(m)), "identity", cli_json_text(model_identity(m)), "dim",
                              model_dim(m), "description", model_describe(m),
                              "gflops_per_image", model_flops_per_image(m) / 1e9);
        json_dumpf(o, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(o);
    } else {
        /* The identity holds the file's name and the description its tensor
         * names: text from outside, shown printable line by line. */
        char shown[1024];
        printf("model: %s\n", ms_text_printable(shown, sizeof shown, path));
        printf("identity: %s\n", ms_text_printable(shown, sizeof shown, model_identity(m)));
        const char *d = model_describe(m);
        while (*d) {
            size_t n = strcspn(d, "\n");
            char *line = strndup(d, n);
            if (line) {
                ms_text_make_printable(line);
                puts(line);
            }
            free(line);
            d += n + (d[n] == '\n');
        }
    }
    model_free(m);
    return 0;
}

static void print_size(const char *what, long long bytes)
{
    if (bytes < 0)
        printf("%-16s -\n", what);
    else
        printf("%-16s %.1f MiB (%lld bytes)\n", what, (double)bytes / 1048576.0, bytes);
}

/* cli_center_state, plus what the open did to the center. */
static void center_text(const engine_stats *st, const engine_open_report *rep, char *out, size_t len)
{
    cli_center_state(st, out, len);
    if (rep->center_note[0]) {
        size_t n = strlen(out);
        snprintf(out + n, len - n, " (%.200s)", rep->center_note);
    }
}

static int describe_collection(const cli_command *cmd, const cli_common *c)
{
    engine_options o;
    cli_engine_options(c, &o);
    o.no_model = 1;
    o.model_path = NULL;
    engine *e;
    engine_open_report rep;
    int rc = cli_open(cmd, &o, &e, &rep, 0);
    if (rc)
        return rc;
    engine_stats st;
    engine_info in;
    ms_err err = {0};
    engine_get_stats(e, &st);
    if ((rc = engine_describe(e, &in, &err)) != 0) {
        cli_error(cmd, &err);
        engine_close(e);
        return cli_exit_code(rc);
    }
    const char *state = rep.index_loaded ? "loaded from its file" : rep.index_note;
    char center[512];
    center_text(&st, &rep, center, sizeof center);
    if (c->json) {
        json_t *o_js = json_pack("{s:o, s:s, s:I, s:o, s:i, s:s, s:I, s:o, s:I, s:I, s:I, s:s, s:b}", "db", cli_json_text(in.db),
                                 "backend", in.backend, "images", (json_int_t)st.images, "model", cli_json_text(st.model_identity),
                                 "dim", st.dim, "index_kind", st.index_kind, "index_memory_bytes",
                                 (json_int_t)st.index_bytes, "index_path", cli_json_text(in.index_path), "index_file_bytes",
                                 (json_int_t)in.index_file_bytes, "db_bytes", (json_int_t)in.db_bytes, "generation",
                                 (json_int_t)in.generation, "index_state", state, "reembed_pending",
                                 in.pending_reembed);
        json_object_set_new(o_js, "center_policy", json_string(in.center_policy_off ? "off" : "auto"));
        json_object_set_new(o_js, "centered", json_boolean(st.center_from > 0));
        json_object_set_new(o_js, "center_from", json_integer((json_int_t)st.center_from));
        json_object_set_new(o_js, "center_tag", json_string(st.center_tag));
        json_object_set_new(o_js, "center_state", json_string(center));
        json_object_set_new(o_js, "search_qe", json_integer(st.search_qe));
        json_dumpf(o_js, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(o_js);
    } else {
        printf("%-16s %s (%s)\n", "collection", in.db, in.backend);
        printf("%-16s %zu\n", "images", st.images);
        char shown[1024];
        printf("%-16s %s\n", "model",
               st.model_identity[0] ? ms_text_printable(shown, sizeof shown, st.model_identity) : "(none yet)");
        printf("%-16s %d\n", "dimension", st.dim);
        printf("%-16s %s, %s\n", "index", st.index_kind, state);
        printf("%-16s %s\n", "center policy", in.center_policy_off ? "off" : "auto");
        printf("%-16s %s\n", "center", center);
        printf("%-16s %d%s\n", "query expansion", st.search_qe, st.search_qe ? "" : " (off)");
        print_size("index memory", (long long)st.index_bytes);
        if (in.index_path[0])
            printf("%-16s %s\n", "index file", in.index_path);
        print_size("index file size", in.index_file_bytes);
        print_size("database size", in.db_bytes);
        printf("%-16s %llu\n", "generation", (unsigned long long)in.generation);
    }
    engine_close(e);
    return 0;
}

int cmd_info(int argc, char **argv)
{
    static const cli_command cmd = {
        "info", NULL,
        "Describes a collection: images, model, index kind and state, sizes. It needs no model.\n"
        "With --model M it describes the model instead: inputs, outputs, preprocessing, ops, parameters\n"
        "(and the collection as well when --db is given too).",
        CLI_DB | CLI_MODEL | CLI_JSON, NULL, 0, 0};
    cli_common c;
    char **args;
    int n_args, code;
    if (!cli_parse(&cmd, argc, argv, &c, &args, &n_args, &code))
        return code;
    free(args);
    int rc = 0;
    if (c.model)
        rc = describe_model(&cmd, &c);
    if (rc == 0 && (!c.model || c.db_given)) {
        if (c.model && !c.json)
            putchar('\n');
        rc = describe_collection(&cmd, &c);
    }
    return rc;
}
