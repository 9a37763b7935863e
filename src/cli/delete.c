/*
 * delete.c - `medsearch delete ID...`: removes images (bytes, thumbnail,
 * metadata and vector together) and their index entries.
 */
#include <errno.h>
#include <stdlib.h>

#include "cli/cli.h"
#include "cli/common.h"

int cmd_delete(int argc, char **argv)
{
    static const cli_command cmd = {
        "delete", "ID...",
        "Removes images from a collection by id (as `search` and `export` show them). Exit code 1 when\n"
        "an id was not found (the others are deleted all the same). It needs no model.",
        CLI_DB, NULL, 1, -1};
    cli_common c;
    char **ids;
    int n, code;
    if (!cli_parse(&cmd, argc, argv, &c, &ids, &n, &code))
        return code;
    for (int i = 0; i < n; i++) {
        char *end;
        errno = 0;
        long long v = strtoll(ids[i], &end, 10);
        if (end == ids[i] || *end || errno || v <= 0) {
            fprintf(stderr, "medsearch delete: '%s' is not an image id (a positive whole number)\n", ids[i]);
            free(ids);
            return EXIT_USAGE;
        }
    }
    engine_options o;
    cli_engine_options(&c, &o);
    o.no_model = 1;
    engine *e;
    engine_open_report rep;
    int rc = cli_open(&cmd, &o, &e, &rep, 0);
    if (rc) {
        free(ids);
        return rc;
    }
    int missing = 0, deleted = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        ms_err err = {0};
        int r = engine_delete(e, strtoll(ids[i], NULL, 10), &err);
        if (r == 0) {
            deleted++;
        } else if (r == MS_ENOTFOUND) {
            fprintf(stderr, "medsearch delete: %s: no such image\n", ids[i]);
            missing++;
        } else {
            cli_error(&cmd, &err);
            rc = cli_exit_code(r) == EXIT_ENV ? EXIT_ENV : 1;
        }
    }
    ms_err ferr = {0};
    if (engine_flush(e, &ferr) != 0)
        cli_error(&cmd, &ferr);
    engine_close(e);
    printf("deleted %d image%s\n", deleted, deleted == 1 ? "" : "s");
    free(ids);
    return rc ? rc : missing ? 1 : 0;
}
