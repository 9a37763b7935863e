/*
 * common.h - what every command shares: option parsing with --help text,
 * the common options (collection, model, preprocessing, JSON), opening the
 * engine with clear messages, and exit codes.
 *
 * A command describes itself with a cli_command (its options in a table)
 * and calls cli_parse. Options may come before or after the positional
 * arguments; "--name=value" and "--name value" both work; "--" ends the
 * options. The common groups it asks for are parsed into a cli_common:
 *   CLI_DB     --db DB (default $MEDSEARCH_DB, then medsearch.db)
 *   CLI_MODEL  --model M, --output TENSOR, --pool output|avg|gem|max|topleft,
 *              --gem-p P, --flip, --input-size N, --mean M, --scale S, --std S
 *   CLI_JSON   --json
 * --help / -h is always understood.
 */
#ifndef MS_CLI_COMMON_H
#define MS_CLI_COMMON_H

#include <jansson.h>
#include <stdio.h>

#include "engine.h"

typedef enum { CLI_FLAG, CLI_STRING, CLI_INT, CLI_DOUBLE } cli_type;

typedef struct cli_option {
    const char *name;      /* long name without "--" ("one-per-patient") */
    char short_name;       /* 'k' for -k, or 0 */
    cli_type type;
    void *value;           /* int * (FLAG: set to 1, INT), const char ** (STRING), double * */
    const char *metavar;   /* "N", "EXPR"; unused for flags */
    const char *help;
    long min, max;         /* CLI_INT bounds, checked when min < max */
} cli_option;

enum { CLI_DB = 1, CLI_MODEL = 2, CLI_JSON = 4 };

typedef struct cli_common {
    const char *db;
    int db_given;          /* --db or $MEDSEARCH_DB was used */
    const char *model;     /* --model, or NULL */
    model_options model_opt;  /* --output/--pool/--gem-p/--flip/--input-size/--mean/--scale/--std */
    int json;
    /* raw values, checked and copied into model_opt by cli_parse */
    const char *pool;
    double gem_p;
    int input_size;
} cli_common;

typedef struct cli_command {
    const char *name;      /* "search" */
    const char *args;      /* "IMAGE", shown in the usage line */
    const char *about;     /* what it does: a few lines */
    unsigned common;       /* CLI_DB | CLI_MODEL | CLI_JSON */
    const cli_option *options;  /* ends with a {0} entry; may be NULL */
    int min_args, max_args;     /* positional arguments; max_args -1 = any */
} cli_command;

/* Parses argv (argv[0] is the command name). Returns 1 to go on, with the
 * positional arguments in *args (a malloc'd array of argv's pointers, the
 * caller frees it) and *n_args. Returns 0 when the command must stop now
 * with *exit_code: 0 after --help (printed on stdout), EXIT_USAGE after a
 * mistake (said on stderr). */
int cli_parse(const cli_command *cmd, int argc, char **argv, cli_common *c, char ***args, int *n_args,
              int *exit_code);
void cli_usage(const cli_command *cmd, FILE *f);

/* engine_options from the common options. */
void cli_engine_options(const cli_common *c, engine_options *o);
/* Opens the engine and says on stderr why it could not, with the model
 * advice when no model was found. Prints the index note when verbose, or
 * always when the index had to be rebuilt from a non-empty store. Returns
 * 0 or the exit code to return. */
int cli_open(const cli_command *cmd, const engine_options *o, engine **e, engine_open_report *rep, int verbose);

/* Re-embeds every stored image through e (opened with reembed set), with a
 * progress bar on stderr when show_progress, then computes the center as
 * ingest does and persists the index. *done gets the images re-embedded.
 * Returns 0 or engine_reembed's error. The vectors are then done: a failure
 * of the center or of saving the index is said on stderr only (the next
 * open repairs both). */
int cli_reembed_all(const cli_command *cmd, engine *e, int show_progress, size_t *done, ms_err *err);

/* Exit code for a library error: EXIT_USAGE for MS_EINVAL, EXIT_ENV for a
 * missing model or an unusable database, 1 otherwise. */
int cli_exit_code(int code);
/* "medsearch CMD: message" on stderr. */
void cli_error(const cli_command *cmd, const ms_err *err);

/* Reads a whole file, at most max bytes. *buf malloc'd. 0, MS_ENOTFOUND,
 * MS_EIO, MS_ETOOBIG. */
/* A JSON string of outside text (a path from the command line or from a
 * folder, a message that may quote one), made well-formed UTF-8 first
 * (ms_utf8_repair): jansson refuses anything else, and a report must not
 * lose the file it is about. New reference; NULL only when out of memory. */
json_t *cli_json_text(const char *s);

int cli_read_file(const char *path, size_t max, unsigned char **buf, size_t *len, ms_err *err);

/* A file of the repository (a peer script, a test tool) by its path from
 * the repository root: under $MEDSEARCH_BENCH_DIR/.. (the bench folder's
 * parent), then relative to the working directory, then beside the running
 * binary or up to two folders above it. 0 with the path in out, -1 when
 * none exists. */
int cli_find_repo_file(const char *rel, char *out, size_t len);

/* A whole number lo..hi written in full (no sign tricks, no trailing text)
 * into *out. Returns 0, or -1 with *out unchanged. */
int cli_parse_int_in(const char *s, int lo, int hi, int *out);

/* Whether db names an SQLite file that does not exist (errno says why):
 * commands that only read or tune a collection must not create an empty
 * one as a side effect. A PostgreSQL URI is never "missing" here. */
int cli_collection_missing(const char *db);

/* A centering policy given on the command line: "auto" (*off = 0) or
 * "off" (*off = 1). Returns 0, or -1 for anything else. */
int cli_parse_center_policy(const char *text, int *off);

/* Whether search ranks by centred cosine, and why not when it does not, in
 * a few words for `medsearch info` and `medsearch center`. */
void cli_center_state(const engine_stats *st, char *out, size_t len);

/* qsort() comparison of doubles, ascending. */
int cli_cmp_double(const void *a, const void *b);
/* The median of v[0..n) (sorting v in place); 0 when n < 1. */
double cli_median(double *v, int n);
/* The p-quantile (0 < p <= 1) of v[0..n) by nearest rank, the ceil(p n)-th
 * smallest value (sorting v in place), so that p50 <= p99 for any n; 0
 * when n < 1. */
double cli_percentile(double *v, size_t n, double p);

/* "Effusion|Mass" from a store_meta's labels into buf. */
void cli_join_labels(const store_meta *m, char *buf, size_t len);

/* An output file written whole or not at all (`export`, `eval --out`). The
 * text goes to a temporary file made beside the path, renamed over it by
 * cli_out_close(o, 1): a failed or interrupted command leaves what was at
 * the path as it was, never half a file. The file keeps the mode of the one
 * it replaces (a new one gets 0666 less the umask), and a path that is a
 * symbolic link is replaced where the link points. "-" is standard output.
 * A path that exists and is not a regular file (/dev/stdout, a FIFO) is
 * written directly; a folder is refused. Opening first tells an unwritable
 * path before a command's long work, not after it. */
typedef struct cli_out_file {
    char *final;   /* where the file ends up (owned) */
    char *tmp;     /* the temporary file (owned); NULL when writing directly */
    FILE *f;       /* NULL when not open */
} cli_out_file;

/* Opens o for path. Returns 0, or -1 with errno saying why (EISDIR for a folder). */
int cli_out_open(cli_out_file *o, const char *path);

/* Flushes and closes o; with ok, renames the temporary file into place,
 * else removes it. Frees o's strings; a zeroed or closed o is a no-op.
 * Returns 0 when ok and all of it worked, else -1 (errno says why after a
 * failed write, close or rename). */
int cli_out_close(cli_out_file *o, int ok);

#endif
