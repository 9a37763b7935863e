/*
 * qe.c - `medsearch qe [N]`: shows or sets the collection's query-expansion
 * default (engine.h, "Query expansion").
 *
 * A search that does not say how many neighbours to expand with (the CLI
 * without --qe, the API without qe=) uses the collection's default. It is 0
 * (off) until the operator, having measured with `medsearch eval --compare
 * "" "qe=N"`, sets it here; from then on search, serve (when started again),
 * the web page and eval follow it. It lives in the store beside the
 * centering policy, so it is written straight through the store: no model
 * is needed, no index is touched, and a value damaged by hand (which makes
 * engine_open refuse the collection) is repaired by setting it again.
 */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/common.h"

/* -1: the stored value is damaged (reported as such, repaired by a set). */
static void print_state(const char *db, const char *backend, int qe, int set, int was, int json)
{
    if (json) {
        json_t *o = json_pack("{s:o, s:s, s:i}", "db", cli_json_text(db), "backend", backend, "qe", qe);
        if (set) {
            json_object_set_new(o, "previous", was < 0 ? json_string("damaged") : json_integer(was));
            json_object_set_new(o, "changed", json_boolean(was != qe));
        }
        json_dumpf(o, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(o);
        return;
    }
    char now[96], before[32];
    if (qe)
        snprintf(now, sizeof now, "%d (each search expands with its top %d unless it says otherwise)", qe, qe);
    else
        snprintf(now, sizeof now, "0 (off unless a search asks for it)");
    if (was < 0)
        snprintf(before, sizeof before, "damaged");
    else
        snprintf(before, sizeof before, "%d", was);
    printf("%-10s %s (%s)\n", "collection", db, backend);
    if (set && was != qe)
        printf("%-10s %s, was %s\n", "qe", now, before);
    else
        printf("%-10s %s%s\n", "qe", now, set ? ", unchanged" : "");
}

int cmd_qe(int argc, char **argv)
{
    static const cli_command cmd = {
        "qe", "[N]",
        "Shows the collection's query-expansion default: how many of its top results a search averages\n"
        "with the query before searching again, when the search does not say (--qe, the API's qe=).\n"
        "A new collection's is 3 (one made before 2026-11-26: 0). With N (0 = off, up to 100) it sets\n"
        "it; search, eval and the web page follow it, and a running server when it is started again.\n"
        "Measure first: medsearch eval --compare \"\" \"qe=0\", or medsearch eval --tune.\n"
        "With query expansion on, a score is the similarity to the expanded query: an image searched\n"
        "again ranks first but no longer scores exactly 1.",
        CLI_DB | CLI_JSON, NULL, 0, 1};
    cli_common c;
    char **args;
    int n_args, code;
    if (!cli_parse(&cmd, argc, argv, &c, &args, &n_args, &code))
        return code;
    int set = n_args == 1, qe = 0;
    if (set && cli_parse_int_in(args[0], 0, STORE_SEARCH_QE_MAX, &qe) != 0) {
        fprintf(stderr, "medsearch qe: N is a whole number of neighbours from 0 (off) to %d, not '%s'\n",
                STORE_SEARCH_QE_MAX, args[0]);
        cli_usage(&cmd, stderr);
        free(args);
        return EXIT_USAGE;
    }
    free(args);
    engine_options o;
    cli_engine_options(&c, &o);
    /* Showing or setting a default must not create an empty collection. */
    if (cli_collection_missing(o.db)) {
        fprintf(stderr, "medsearch qe: no collection at %s (%s)\n", o.db, strerror(errno));
        return 1;
    }
    store *s;
    ms_err err = {0};
    int rc = store_open(o.db, &s, &err);
    int was = 0;
    if (rc == 0) {
        if (store_get_search_qe(s, &was, set ? NULL : &err) != 0)
            was = -1;
        if (set)
            rc = store_set_search_qe(s, qe, &err);
        else if (was < 0)
            rc = err.code;
        else
            qe = was;
        if (rc == 0)
            print_state(o.db, store_backend(s), qe, set, was, c.json);
        store_close(s);
    }
    if (rc) {
        cli_error(&cmd, &err);
        if (rc == MS_EFORMAT)
            fprintf(stderr, "medsearch qe: set it again with medsearch qe N --db %s\n", o.db);
        return rc == MS_EDB || rc == MS_EIO ? EXIT_ENV : cli_exit_code(rc);
    }
    return 0;
}
