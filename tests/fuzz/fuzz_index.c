/*
 * fuzz_index.c - libFuzzer target for index files (index_load).
 *
 * persist.c promises that even a file whose checksums are right cannot
 * make a search read out of bounds: the structure itself is validated.
 * Random bytes almost never carry right checksums, so the target lets the
 * fuzzer ask for them. The input is one flag byte, then the file:
 *   flag & 1  set the header's payload size to the file's real size,
 *   flag & 2  recompute the payload CRC and then the header CRC,
 * as a forger would. The dimension and model identity passed to
 * index_load are the header's own (when sane), so that loading gets past
 * the conflict checks and into the structure.
 *
 * A file that loads is then used as the product uses one: searched
 * (graph, exact, filtered, batched), read back, added to, removed from,
 * rebuilt, saved and loaded again; the copy must load.
 *
 * Seeds: with FUZZ_WRITE_SEEDS=DIR set, the target writes a few valid
 * index files (flat and graph, every quantisation) into DIR, each with
 * flag byte 3, and exits; tests/fuzz/run.sh does that before fuzzing.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_file.h"
#include "index/index.h"
#include "index/internal.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HEADER_BYTES 512
#define OFF_DIM 20                 /* magic 8, version, header_bytes, byte_order */
#define OFF_PAYLOAD_CRC (8 + 4 * 14)
#define OFF_MODEL_ID_LEN (8 + 4 * 13)
#define OFF_PAYLOAD_BYTES (8 + 4 * 16 + 8 * 5)
#define OFF_MODEL_ID (OFF_PAYLOAD_BYTES + 8)
#define SEED_MODEL "fuzz-model"

static char save_path[4096 + 16];

static void unit_vector(float *v, int dim, unsigned seed)
{
    double norm = 0;
    for (int i = 0; i < dim; i++) {
        seed = seed * 1103515245u + 12345u;
        v[i] = (float)((seed >> 8) & 0xFFFF) / 65536.0f - 0.5f;
        norm += (double)v[i] * v[i];
    }
    float s = norm > 0 ? (float)(1.0 / __builtin_sqrt(norm)) : 1.0f;
    for (int i = 0; i < dim; i++)
        v[i] *= s;
}

static void write_file(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return;
    fwrite(b, 1, n, f);
    fclose(f);
}

/* One valid index file, written as a seed with flag byte 3 in front. */
static void write_seed(const char *dir, const char *name, index_kind kind, index_quant quant, int dim, int n)
{
    index_params p;
    index_params_init(&p);
    p.kind = kind;
    p.quant = quant;
    p.M = 4;
    p.ef_construction = 16;
    p.threads = 1;
    vindex *ix;
    ms_err err;
    if (index_create(dim, &p, &ix, &err))
        return;
    float *v = malloc((size_t)n * dim * sizeof *v);
    int64_t *ids = malloc((size_t)n * sizeof *ids);
    for (int i = 0; v && ids && i < n; i++) {
        unit_vector(v + (size_t)i * dim, dim, (unsigned)i + 1);
        ids[i] = 100 + 3 * i;
    }
    char tmp[600], out[600];
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, name);
    snprintf(out, sizeof out, "%s/%s", dir, name);
    if (v && ids && !index_add(ix, ids, v, (size_t)n, &err) && !index_remove(ix, ids[1]) &&
        !index_save(ix, tmp, SEED_MODEL, 7, &err)) {
        FILE *f = fopen(tmp, "rb");
        uint8_t *b = malloc((1u << 20) + 1);
        size_t len = f && b ? fread(b + 1, 1, 1u << 20, f) : 0;
        if (len) {
            b[0] = 3;
            write_file(out, b, len + 1);
        }
        if (f)
            fclose(f);
        free(b);
        unlink(tmp);
    }
    free(v);
    free(ids);
    index_free(ix);
}

static void write_seeds(const char *dir)
{
    write_seed(dir, "flat.idx", INDEX_FLAT, INDEX_QUANT_NONE, 8, 20);
    write_seed(dir, "flat_int8.idx", INDEX_FLAT, INDEX_QUANT_INT8, 8, 20);
    write_seed(dir, "hnsw.idx", INDEX_HNSW, INDEX_QUANT_NONE, 4, 24);
    write_seed(dir, "hnsw_int8.idx", INDEX_HNSW, INDEX_QUANT_INT8, 8, 30);
    write_seed(dir, "hnsw_f16.idx", INDEX_HNSW, INDEX_QUANT_F16, 6, 12);
    write_seed(dir, "hnsw_int4.idx", INDEX_HNSW, INDEX_QUANT_INT4, 5, 16);
    write_seed(dir, "auto.idx", INDEX_AUTO, INDEX_QUANT_NONE, 3, 5);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_write_seeds_if_asked(write_seeds);
    const char *dir = fuzz_scratch_dir("fuzz_index");
    if (!dir)
        abort();
    snprintf(save_path, sizeof save_path, "%s/copy.idx", dir);
    return 0;
}

/* The forger's fix-ups the flag byte asks for. */
static void forge(uint8_t *b, size_t len, unsigned flag)
{
    if (len < HEADER_BYTES)
        return;
    if (flag & 1) {
        uint64_t payload = len - HEADER_BYTES;
        memcpy(b + OFF_PAYLOAD_BYTES, &payload, 8);
    }
    if (flag & 2) {
        uint32_t pcrc = ix_crc32c(0, b + HEADER_BYTES, len - HEADER_BYTES);
        memcpy(b + OFF_PAYLOAD_CRC, &pcrc, 4);
        uint32_t hcrc = ix_crc32c(0, b, HEADER_BYTES - 4);
        memcpy(b + HEADER_BYTES - 4, &hcrc, 4);
    }
}

/* What a face does with a loaded index; every call must return cleanly. */
static void use_index(vindex *ix, int dim)
{
    enum { K = 5 };
    float *q = malloc(2 * (size_t)dim * sizeof *q), *got = malloc((size_t)dim * sizeof *got);
    index_hit hits[2 * K];
    int n_hits[2];
    ms_err err;
    if (!q || !got)
        goto out;
    unit_vector(q, dim, 42);
    unit_vector(q + dim, dim, 43);
    index_search(ix, q, K, 0, hits, n_hits, &err);
    index_search(ix, q, K, 2, hits, n_hits, &err);
    index_search_exact(ix, q, K, hits, n_hits, &err);
    index_search_batch(ix, q, 2, K, 0, hits, n_hits, &err);
    int64_t allowed[4] = {100, 103, 106, 0};
    if (index_search(ix, q, 1, 0, hits, n_hits, &err) == 0 && n_hits[0] == 1) {
        allowed[3] = hits[0].id;
        index_get(ix, hits[0].id, got);
    }
    index_search_filtered(ix, q, K, 0, allowed, 4, hits, n_hits, &err);
    int64_t id = 1234567;
    index_add(ix, &id, q + dim, 1, &err); /* writes into the mapped file's pages */
    index_search(ix, q + dim, K, 0, hits, n_hits, &err);
    if (index_count(ix) <= 4096)
        index_rebuild(ix, &err);
    index_remove(ix, id);
    index_search(ix, q, K, 0, hits, n_hits, &err);
    if (index_save(ix, save_path, SEED_MODEL, 1, &err) == 0) {
        vindex *copy = NULL;
        if (index_load(save_path, dim, SEED_MODEL, NULL, &copy, NULL, &err)) {
            fprintf(stderr, "fuzz_index: a saved copy does not load: %s\n", err.msg);
            abort(); /* what we wrote ourselves must load */
        }
        index_free(copy);
    }
out:
    free(q);
    free(got);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > (8u << 20))
        return 0;
    size_t len = size - 1;
    uint8_t *b = malloc(len ? len : 1);
    if (!b)
        return 0;
    memcpy(b, data + 1, len);
    forge(b, len, data[0]);

    int dim = 8;
    char model[256] = SEED_MODEL;
    if (len >= HEADER_BYTES) {
        uint32_t d, id_len;
        memcpy(&d, b + OFF_DIM, 4);
        memcpy(&id_len, b + OFF_MODEL_ID_LEN, 4);
        if (d >= 1 && d <= 4096)
            dim = (int)d;
        if (id_len < sizeof model) {
            memcpy(model, b + OFF_MODEL_ID, id_len);
            model[id_len] = '\0';
        }
    }
    char path[64];
    int fd = fuzz_file_open(b, len, path);
    free(b);
    if (fd < 0)
        return 0;
    index_params p;
    index_params_init(&p);
    p.threads = 1;
    vindex *ix = NULL;
    ms_err err;
    if (index_load(path, dim, model, &p, &ix, NULL, &err) == 0) {
        use_index(ix, dim);
        index_free(ix);
    }
    close(fd);
    return 0;
}
