/*
 * cli.h - the command-line face: one function per command, each taking the
 * arguments after the command name (argv[0] is the command) and returning
 * the process exit code: 0 success, 1 failure of the job (some files failed,
 * nothing found), 2 usage error, 3 environment error (no model, database
 * unreachable). Commands print; library code never does.
 */
#ifndef MS_CLI_H
#define MS_CLI_H

int cmd_ingest(int argc, char **argv);
int cmd_search(int argc, char **argv);
int cmd_explain(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_embed(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_delete(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_reembed(int argc, char **argv);
int cmd_center(int argc, char **argv);
int cmd_qe(int argc, char **argv);
int cmd_copy(int argc, char **argv);
int cmd_meta(int argc, char **argv);
int cmd_duplicates(int argc, char **argv);

/* bench subcommands, one file each (src/cli/bench_*.c) */
int bench_embed(int argc, char **argv);
int bench_index(int argc, char **argv);
int bench_ingest(int argc, char **argv);
int bench_serve(int argc, char **argv);
int bench_decode(int argc, char **argv);

#define EXIT_USAGE 2
#define EXIT_ENV 3

#endif
