/*
 * bench.c - `medsearch bench WHAT`: dispatches to the benchmarks, one file
 * each (bench_embed.c, bench_index.c, bench_ingest.c, bench_serve.c,
 * bench_decode.c).
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static const struct bench {
    const char *name;
    int (*run)(int, char **);
    const char *summary;
} benches[] = {
    {"embed", bench_embed, "feature extraction: images/s and GFLOP/s per batch size, against PyTorch"},
    {"index", bench_index, "vector search: latency and recall of exact and HNSW search, against FAISS/hnswlib"},
    {"ingest", bench_ingest, "end-to-end ingest of PNGs: images/s against pure inference, a Python peer, PostgreSQL"},
    {"serve", bench_serve, "the HTTP server: search latency and throughput under concurrent clients"},
    {"decode", bench_decode, "image decoding and preparation per format and size"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: medsearch bench WHAT [options]   (medsearch bench WHAT --help for details)\n\n");
    for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++)
        fprintf(f, "  %-7s %s\n", benches[i].name, benches[i].summary);
}

int cmd_bench(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++)
        if (!strcmp(argv[1], benches[i].name))
            return benches[i].run(argc - 1, argv + 1);
    fprintf(stderr, "medsearch bench: unknown benchmark '%s'\n\n", argv[1]);
    usage(stderr);
    return EXIT_USAGE;
}
