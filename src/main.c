/*
 * medsearch - find chest X-rays that look like the one in front of you.
 * This file only dispatches to the commands in src/cli/.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

#define MEDSEARCH_VERSION "0.1.0"

static const struct command {
    const char *name;
    int (*run)(int, char **);
    const char *summary;
} commands[] = {
    {"ingest", cmd_ingest, "add X-rays (files, folders) with their labels to a collection"},
    {"search", cmd_search, "find the k stored X-rays most similar to an image"},
    {"explain", cmd_explain, "show where an image and a stored one are alike (a similarity map)"},
    {"serve", cmd_serve, "run the HTTP API and the web page"},
    {"embed", cmd_embed, "print the feature vector of images"},
    {"eval", cmd_eval, "measure retrieval quality on a labelled collection"},
    {"bench", cmd_bench, "measure speed: bench embed|index|ingest|serve|decode"},
    {"info", cmd_info, "describe a collection, or a model with --model"},
    {"check", cmd_check, "verify a collection's integrity"},
    {"delete", cmd_delete, "remove images from a collection"},
    {"export", cmd_export, "export ids, vectors and metadata for research"},
    {"reembed", cmd_reembed, "re-embed every stored image with a new model"},
    {"center", cmd_center, "show or set a collection's centering policy (auto|off)"},
    {"qe", cmd_qe, "show or set a collection's query-expansion default"},
    {"meta", cmd_meta, "show or change an image's metadata"},
    {"duplicates", cmd_duplicates, "list the pictures stored more than once (re-encoded, resized copies)"},
    {"copy", cmd_copy, "copy a collection to another store (SQLite, PostgreSQL) without re-embedding"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: medsearch COMMAND [OPTIONS]   (medsearch COMMAND --help for details)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nenvironment: MEDSEARCH_MODEL (ONNX model), MEDSEARCH_DB (collection), MEDSEARCH_TOKEN\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("medsearch %s\n", MEDSEARCH_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "medsearch: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return EXIT_USAGE;
}
