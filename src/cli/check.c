/*
 * check.c - `medsearch check`: verifies a collection. The store's own check
 * (every image has its bytes, metadata and a vector of the collection's
 * model, no orphans) and then the index against the store (same count,
 * every stored vector in the index with the same values).
 */
#include <stdlib.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "util/text.h"

int cmd_check(int argc, char **argv)
{
    static const cli_command cmd = {
        "check", NULL,
        "Verifies a collection's integrity: every image has its bytes, metadata and a vector of the\n"
        "collection's model; nothing is orphaned; the index holds exactly the stored vectors. Exit code\n"
        "0 when sound, 1 with the first problem found. It needs no model; with --model it also checks\n"
        "that the collection was built with that model.",
        CLI_DB | CLI_MODEL, NULL, 0, 0};
    cli_common c;
    char **args;
    int n_args, code;
    if (!cli_parse(&cmd, argc, argv, &c, &args, &n_args, &code))
        return code;
    free(args);
    engine_options o;
    cli_engine_options(&c, &o);
    o.no_model = c.model == NULL;
    engine *e;
    engine_open_report rep;
    int rc = cli_open(&cmd, &o, &e, &rep, 1);
    if (rc)
        return rc;
    ms_err err = {0};
    engine_stats st;
    engine_get_stats(e, &st);
    rc = engine_check(e, &err);
    if (rc == 0) {
        char shown[1024];
        printf("ok: %zu images, model %s, the index matches the store\n", st.images,
               st.model_identity[0] ? ms_text_printable(shown, sizeof shown, st.model_identity) : "(none yet)");
    } else {
        printf("problem: %s\n", err.msg);
        rc = rc == MS_EFORMAT ? 1 : cli_exit_code(rc);
    }
    engine_close(e);
    return rc;
}
