/*
 * eval_internal.h - what the parts of `medsearch eval` share: eval.c (the
 * command, one configuration or --compare A B) and eval_tune.c (--tune:
 * the collection's search defaults chosen from its own labels).
 *
 * An eval_env holds the parsed arguments, the collection's engine (opened
 * without a model; configurations that re-embed open their own) and the
 * ground truth. evaluate_config scores one configuration on every query
 * of the truth into an eval_outcome the caller releases with outcome_free;
 * pair_outcomes gives the paired differences of two outcomes over the
 * queries both scored. All return 0 or an ms_err code with a message.
 */
#ifndef MS_CLI_EVAL_INTERNAL_H
#define MS_CLI_EVAL_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "cli/common.h"
#include "engine.h"
#include "eval/metrics.h"

#define EVAL_MAX_K 1000
#define EVAL_MAX_QE STORE_SEARCH_QE_MAX
#define EVAL_MAX_THREADS 64

/* One evaluated configuration: how vectors are made and how search runs. */
typedef struct eval_config {
    char text[256];           /* as the user wrote it, for the report */
    const char *model_path;   /* NULL: --model's (or the default model) */
    char model_buf[1024];
    int pool_set;
    model_pool pool;
    float gem_p;              /* > 0 when set */
    int flip;                 /* -1: the command's --flip; 0 off; 1 on */
    int bf16;                 /* -1: the command's --bf16; 0 off; 1 on */
    int input_size;           /* 0: the command's --input-size */
    int qe;                   /* -1: the command's --qe */
    int center;               /* -1: as the collection is; 0 off; 1 on */
} eval_config;

typedef struct eval_args {
    cli_common common;        /* --db, --model and its options, --json */
    const char *db, *out_md, *per_query, *workdir, *rule_name, *compare_a;
    int k, qe, json, threads, quiet;
    eval_rule rule;
    int compare;
    int tune, apply;          /* --tune, --apply */
    int tune_vectors;         /* --vectors: --tune also re-embeds (pooling, flip) */
    int feedback;             /* --feedback N: two rounds, N results judged */
    int quiet_reuse;          /* not a flag: say nothing when a scratch collection is reused */
    eval_config cfg[2];
} eval_args;

/* The outcome of evaluating one configuration. */
typedef struct eval_outcome {
    eval_query_score *scores; /* one per truth image, in truth order */
    eval_summary summary;
    char identity[256];
    int qe;
    int qe_from_collection;   /* qe is the collection's default (medsearch qe) */
    int center_off;           /* evaluated with centering off */
    size_t center_from;       /* vectors of the center used; 0 = not centred */
    double seconds;
    size_t searched;
} eval_outcome;

typedef struct eval_env {
    const eval_args *a;
    engine *main;
    const eval_truth *truth;
} eval_env;

/* Paired differences B - A of AP@k and P@k over the queries both scored. */
typedef struct eval_pairs {
    eval_paired ap, pk;
} eval_pairs;


/* c NULL: the command's own settings (the collection as stored). */
int evaluate_config(const eval_env *env, const eval_config *c, eval_outcome *res, ms_err *err);
void outcome_free(eval_outcome *r);
/* Whether c makes other vectors than the collection's, and then the model
 * identity they would carry (the model is loaded to tell). */
bool eval_config_changes_vectors(const eval_config *c);
int eval_config_identity(const eval_env *env, const eval_config *c, char *out, size_t len, ms_err *err);
/* The engine options c opens a collection with (the command's, then what c
 * changes). */
void eval_config_options(const eval_env *env, const eval_config *c, engine_options *o);
/* Makes the folder "$TMPDIR/<prefix>-XXXXXX" (/tmp without TMPDIR), its path
 * in out. Returns 0 or MS_EIO. */
int eval_make_temp_dir(const char *prefix, char *out, size_t len, ms_err *err);
/* Removes the scratch collection a configuration of that identity made in
 * workdir (kept there by evaluate_config). */
void eval_scratch_remove(const char *workdir, const char *db, const char *identity);
int pair_outcomes(const eval_outcome *x, const eval_outcome *y, size_t n, eval_pairs *p, ms_err *err);

/* A JSON number, or null for NaN/infinity (jansson refuses those). */
json_t *jnum(double v);
/* The protocol object every JSON report carries. */
json_t *protocol_json(const eval_args *a);

/* The command's exit code for an error code: 3 for the environment (no
 * collection, database, model), 128 + the signal for MS_EINTR (130 after
 * Ctrl-C, 143 after SIGTERM, as shells report a process they killed), else
 * 1. */
int eval_exit_code(int rc);
/* on: Ctrl-C and SIGTERM make searches and re-embeddings stop with MS_EINTR
 * at the next image (a second signal ends the process); one the process
 * was started with ignored stays ignored. off: the default handling again
 * (for steps that are safe to kill, such as a re-embedding of the
 * collection, which resumes). */
void eval_catch_signals(int on);

/* --tune: returns the command's exit code (the engine in env stays open). */
int eval_tune(const eval_env *env);

#endif
