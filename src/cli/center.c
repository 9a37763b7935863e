/*
 * center.c - `medsearch center [auto|off]`: shows or sets the collection's
 * centering policy (engine.h, "Centering policy").
 *
 * Without an argument it says the policy, whether search ranks centred, and
 * from how many vectors the center came. With one it records the policy and
 * applies it at once: off clears the center and rebuilds the index without
 * it; auto computes the center when the collection is large enough and
 * rebuilds the index with it. The stored vectors suffice for both, so no
 * model is needed (with --model the collection is opened with it, which
 * also checks that it is the collection's model).
 *
 * The policy is written through the store first, then applied through the
 * engine: a policy damaged by hand (which makes engine_open refuse the
 * collection) is repaired by setting it again.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/common.h"

static const char *policy_name(int off)
{
    return off ? "off" : "auto";
}

/* Records the policy in the store alone (before any engine opens it). */
static int record_policy(const cli_command *cmd, const char *db, int off, int *was_off)
{
    store *s;
    ms_err err = {0};
    int rc = store_open(db, &s, &err);
    if (rc == 0) {
        if (store_get_center_policy(s, was_off, NULL) != 0)
            *was_off = -1; /* damaged: repaired now */
        rc = store_set_center_policy(s, off, &err);
        store_close(s);
    }
    if (rc) {
        cli_error(cmd, &err);
        return rc == MS_EDB || rc == MS_EIO ? EXIT_ENV : cli_exit_code(rc);
    }
    return 0;
}

static void print_state(const engine_info *in, const engine_stats *st, int set, int was_off, int json)
{
    char state[300];
    cli_center_state(st, state, sizeof state);
    if (json) {
        json_t *o = json_pack("{s:o, s:s, s:s, s:b, s:I, s:s, s:I, s:s}", "db", cli_json_text(in->db), "backend", in->backend,
                              "policy", policy_name(st->center_policy_off), "centered", st->center_from > 0,
                              "center_from", (json_int_t)st->center_from, "center_tag", st->center_tag, "images",
                              (json_int_t)st->images, "state", state);
        if (set) {
            json_object_set_new(o, "previous", was_off < 0 ? json_string("damaged") : json_string(policy_name(was_off)));
            json_object_set_new(o, "changed", json_boolean(was_off != st->center_policy_off));
        }
        json_dumpf(o, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(o);
        return;
    }
    printf("%-10s %s (%s)\n", "collection", in->db, in->backend);
    if (set && was_off != st->center_policy_off)
        printf("%-10s %s (was %s)\n", "policy", policy_name(st->center_policy_off),
               was_off < 0 ? "damaged" : policy_name(was_off));
    else
        printf("%-10s %s%s\n", "policy", policy_name(st->center_policy_off), set ? " (unchanged)" : "");
    printf("%-10s %zu\n", "images", st->images);
    printf("%-10s %s\n", "ranking", state);
}

int cmd_center(int argc, char **argv)
{
    static const cli_command cmd = {
        "center", "[auto|off]",
        "Shows the collection's centering policy, whether search ranks by centred cosine and from how many\n"
        "vectors the center came. With auto or off it sets the policy and applies it at once:\n"
        "  auto  (the default) rank by cos(l2(q - c), l2(v - c)), c the collection's mean, once the\n"
        "        collection has " ENGINE_CENTER_MIN_TEXT " vectors; the center is computed now when it is due\n"
        "  off   rank by plain cosine; the stored center is removed\n"
        "Measure first: medsearch eval --compare \"center=off\" \"\". No model is needed; with --model the\n"
        "collection is opened with it (it must be the collection's model). A running server picks the\n"
        "change up when it is started again.",
        CLI_DB | CLI_MODEL | CLI_JSON, NULL, 0, 1};
    cli_common c;
    char **args;
    int n_args, code;
    if (!cli_parse(&cmd, argc, argv, &c, &args, &n_args, &code))
        return code;
    int set = n_args == 1, off = 0, was_off = 0;
    if (set && cli_parse_center_policy(args[0], &off) != 0) {
        fprintf(stderr, "medsearch center: the policy is auto or off, not '%s'\n", args[0]);
        cli_usage(&cmd, stderr);
        free(args);
        return EXIT_USAGE;
    }
    free(args);
    engine_options o;
    cli_engine_options(&c, &o);
    if (!c.model) {
        o.no_model = 1;
        o.model_path = NULL;
    }
    int rc = set ? record_policy(&cmd, o.db, off, &was_off) : 0;
    if (rc)
        return rc;
    engine *e;
    engine_open_report rep;
    if ((rc = cli_open(&cmd, &o, &e, &rep, 0)) != 0)
        return rc;
    ms_err err = {0};
    engine_info in;
    if (set && (rc = engine_set_center_policy(e, off, &err)) == 0)
        rc = engine_flush(e, &err);
    if (rc == 0)
        rc = engine_describe(e, &in, &err);
    if (rc) {
        cli_error(&cmd, &err);
        engine_close(e);
        return cli_exit_code(rc);
    }
    engine_stats st;
    engine_get_stats(e, &st);
    print_state(&in, &st, set, was_off, c.json);
    engine_close(e);
    return 0;
}
