/*
 * reembed.c - `medsearch reembed --model NEW`: computes every stored image's
 * vector again with another model (or pooling) and makes it the
 * collection's model. Interrupted, it can be run again: the store knows
 * which vectors are of which model.
 */
#include <stdlib.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "util/text.h"

int cmd_reembed(int argc, char **argv)
{
    int batch = 0, quiet = 0;
    const cli_option opts[] = {
        {"batch", 0, CLI_INT, &batch, "N", "images per inference batch (default 16)", 1, 256},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no progress", 0, 0},
        {0},
    };
    static const cli_command base = {
        "reembed", NULL,
        "Re-embeds every stored image with the model given (--model, or the usual places) and makes it\n"
        "the collection's model. Use it after changing the model, its pooling or its preprocessing.\n"
        "If it is interrupted, run it again: it starts over and the collection is usable meanwhile\n"
        "(`medsearch check` reports the images that still hold the old model's vectors).",
        CLI_DB | CLI_MODEL, NULL, 0, 0};
    cli_command cmd = base;
    cmd.options = opts;
    cli_common c;
    char **args;
    int n_args, code;
    if (!cli_parse(&cmd, argc, argv, &c, &args, &n_args, &code))
        return code;
    free(args);
    engine_options o;
    cli_engine_options(&c, &o);
    o.reembed = 1;
    if (batch)
        o.max_batch = batch;
    engine *e;
    engine_open_report rep;
    int rc = cli_open(&cmd, &o, &e, &rep, !quiet);
    if (rc)
        return rc;
    ms_err err = {0};
    size_t done = 0;
    rc = cli_reembed_all(&cmd, e, !quiet, &done, &err);
    if (rc == 0) {
        engine_stats st;
        engine_get_stats(e, &st);
        char shown[1024];
        printf("re-embedded %zu images with %s\n", done, ms_text_printable(shown, sizeof shown, st.model_identity));
    } else {
        cli_error(&cmd, &err);
        rc = cli_exit_code(rc) == EXIT_ENV ? EXIT_ENV : 1;
    }
    engine_close(e);
    return rc;
}
