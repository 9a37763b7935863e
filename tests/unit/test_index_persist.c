/*
 * test_index_persist.c - index files: bit-exact round trips (vectors,
 * graph, answers, and a second save giving the same bytes), and damage
 * detection: a flipped byte anywhere, truncation, a wrong dimension, a
 * wrong model identity, a missing file, and a forged file whose checksum is
 * right but whose graph points outside the index.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "index/internal.h"
#include "model_test_util.h"
#include "test_index_common.h"

#define MODEL "mobilenet_v2 sha256:0123abcd"

static char dir[256];

static int setup(void **state)
{
    const char *t = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/ms-index-test-XXXXXX", t && *t ? t : "/tmp");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static unsigned char *slurp(const char *path, size_t *len)
{
    unsigned char *b = mt_read_file(path, len);
    assert_non_null(b);
    return b;
}

static void spit(const char *path, const unsigned char *b, size_t len)
{
    assert_int_equal(mt_write_file(path, b, len), 0);
}

static vindex *build(index_kind kind, index_quant quant, int dim, size_t n, float **data_out, float **qs_out)
{
    float *data, *qs;
    make_clustered(dim, n, 20, 50, 404, &data, &qs);
    int64_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int64_t)(n - i) * 3;
    index_params p;
    index_params_init(&p);
    p.kind = kind;
    p.quant = quant;
    p.threads = 2;
    vindex *ix;
    ms_err err;
    assert_int_equal(ix_create(dim, &p, 6, &ix, &err), 0); /* small chunks: some borrowed, one copied */
    assert_int_equal(index_add(ix, ids, data, n, &err), 0);
    for (size_t i = 0; i < n; i += 17) /* tombstones persist too */
        assert_int_equal(index_remove(ix, ids[i]), 0);
    free(ids);
    *data_out = data;
    *qs_out = qs;
    return ix;
}

static void same_answers(vindex *a, vindex *b, const float *qs, int dim)
{
    ms_err err;
    for (int q = 0; q < 20; q++) {
        index_hit ha[10], hb[10];
        int na, nb;
        assert_int_equal(index_search(a, qs + (size_t)q * dim, 10, 0, ha, &na, &err), 0);
        assert_int_equal(index_search(b, qs + (size_t)q * dim, 10, 0, hb, &nb, &err), 0);
        assert_int_equal(na, nb);
        for (int i = 0; i < na; i++)
            assert_true(ha[i].id == hb[i].id && ha[i].score == hb[i].score);
    }
}

static void round_trip(index_kind kind, index_quant quant, int dim)
{
    ms_err err;
    float *data, *qs;
    size_t n = 1000;
    vindex *ix = build(kind, quant, dim, n, &data, &qs);
    char p1[400], p2[400];
    snprintf(p1, sizeof p1, "%s/a.idx", dir);
    snprintf(p2, sizeof p2, "%s/b.idx", dir);
    assert_int_equal(index_save(ix, p1, MODEL, 42, &err), 0);
    vindex *lx;
    uint64_t gen = 0;
    assert_int_equal(index_load(p1, dim, MODEL, NULL, &lx, &gen, &err), 0);
    assert_true(gen == 42);
    assert_int_equal(index_count(lx), index_count(ix));
    assert_int_equal(index_current_kind(lx), index_current_kind(ix));
    /* every vector bit-exact */
    float *a = malloc((size_t)dim * sizeof *a), *b = malloc((size_t)dim * sizeof *b);
    for (size_t i = 0; i < n; i++) {
        int64_t id = (int64_t)(n - i) * 3;
        int ra = index_get(ix, id, a), rb = index_get(lx, id, b);
        assert_int_equal(ra, rb);
        if (ra == 0)
            assert_memory_equal(a, b, (size_t)dim * sizeof *a);
    }
    same_answers(ix, lx, qs, dim);
    /* saving the loaded index gives the same bytes */
    assert_int_equal(index_save(lx, p2, MODEL, 42, &err), 0);
    size_t l1, l2;
    unsigned char *b1 = slurp(p1, &l1), *b2 = slurp(p2, &l2);
    assert_int_equal(l1, l2);
    assert_memory_equal(b1, b2, l1);
    free(b1);
    free(b2);
    /* a loaded index takes inserts and removals (its pages are private) */
    int64_t new_id = 999999;
    assert_int_equal(index_add(lx, &new_id, qs, 1, &err), 0);
    index_hit h[1];
    int nh;
    assert_int_equal(index_search(lx, qs, 1, 0, h, &nh, &err), 0);
    assert_true(nh == 1 && h[0].id == new_id);
    assert_int_equal(index_remove(lx, 3 * (int64_t)n - 3), 0);
    /* the file itself did not change */
    b1 = slurp(p1, &l1);
    vindex *again;
    assert_int_equal(index_load(p1, dim, MODEL, NULL, &again, NULL, &err), 0);
    same_answers(ix, again, qs, dim);
    index_free(again);
    free(b1);
    free(a);
    free(b);
    index_free(lx);
    index_free(ix);
    free(data);
    free(qs);
}

static void test_round_trip_flat(void **state)
{
    round_trip(INDEX_FLAT, INDEX_QUANT_INT4, 9);
    round_trip(INDEX_FLAT, INDEX_QUANT_NONE, 37);
    round_trip(INDEX_FLAT, INDEX_QUANT_INT8, 64);
    round_trip(INDEX_FLAT, INDEX_QUANT_F16, 5);
}

static void test_round_trip_hnsw(void **state)
{
    round_trip(INDEX_HNSW, INDEX_QUANT_NONE, 24);
    round_trip(INDEX_AUTO, INDEX_QUANT_INT8, 16);
    round_trip(INDEX_HNSW, INDEX_QUANT_INT8, 64); /* the int8 walk on loaded codes */
    round_trip(INDEX_HNSW, INDEX_QUANT_INT4, 65); /* int4, odd dimension */
}

static void test_damage_detected(void **state)
{
    ms_err err;
    float *data, *qs;
    int dim = 20;
    vindex *ix = build(INDEX_HNSW, INDEX_QUANT_INT8, dim, 700, &data, &qs);
    char p[400], bad[400];
    snprintf(p, sizeof p, "%s/good.idx", dir);
    snprintf(bad, sizeof bad, "%s/bad.idx", dir);
    assert_int_equal(index_save(ix, p, MODEL, 7, &err), 0);
    size_t len;
    unsigned char *b = slurp(p, &len);
    vindex *lx = NULL;
    /* a flipped byte anywhere: header fields, model id, every section, last byte */
    ix_rng r;
    ix_rng_seed(&r, 5);
    size_t spots[64];
    int n_spots = 0;
    size_t fixed[] = {0, 8, 20, 100, 300, 508, 511, 512, 513, len / 3, len / 2, len - 1};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        spots[n_spots++] = fixed[i];
    while (n_spots < 64)
        spots[n_spots++] = (size_t)(ix_rng_next(&r) % len);
    for (int i = 0; i < n_spots; i++) {
        b[spots[i]] ^= 0x10;
        spit(bad, b, len);
        int rc = index_load(bad, dim, MODEL, NULL, &lx, NULL, &err);
        if (rc != MS_EFORMAT)
            fprintf(stderr, "flip at %zu of %zu: rc %d (%s)\n", spots[i], len, rc, err.msg);
        assert_int_equal(rc, MS_EFORMAT);
        assert_null(lx);
        b[spots[i]] ^= 0x10;
    }
    /* truncated at many lengths, and one byte too many */
    size_t cuts[] = {0, 1, 100, 511, 512, 600, len / 2, len - 64, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        spit(bad, b, cuts[i]);
        assert_int_equal(index_load(bad, dim, MODEL, NULL, &lx, NULL, &err), MS_EFORMAT);
        assert_non_null(strstr(err.msg, "truncated"));
    }
    unsigned char *longer = malloc(len + 1);
    memcpy(longer, b, len);
    longer[len] = 0;
    spit(bad, longer, len + 1);
    assert_int_equal(index_load(bad, dim, MODEL, NULL, &lx, NULL, &err), MS_EFORMAT);
    free(longer);
    /* wrong dimension, wrong model */
    assert_int_equal(index_load(p, dim + 1, MODEL, NULL, &lx, NULL, &err), MS_ECONFLICT);
    assert_non_null(strstr(err.msg, "dimension"));
    assert_int_equal(index_load(p, dim, "resnet50 sha256:ffff", NULL, &lx, NULL, &err), MS_ECONFLICT);
    assert_non_null(strstr(err.msg, "model"));
    /* missing file */
    char missing[400];
    snprintf(missing, sizeof missing, "%s/none.idx", dir);
    assert_int_equal(index_load(missing, dim, MODEL, NULL, &lx, NULL, &err), MS_ENOTFOUND);
    /* the good file still loads */
    assert_int_equal(index_load(p, dim, MODEL, NULL, &lx, NULL, &err), 0);
    index_free(lx);
    free(b);
    index_free(ix);
    free(data);
    free(qs);
}

/* Rewrites the payload CRC and the header CRC after an edit, as a forger
 * would: the structural checks must still refuse the file. */
static void refresh_crcs(unsigned char *b, size_t len)
{
    uint32_t pcrc = ix_crc32c(0, b + 512, len - 512);
    /* payload_crc sits after 14 uint32 fields and the magic: offset 8 + 4 * 14 */
    memcpy(b + 8 + 4 * 14, &pcrc, 4);
    uint32_t hcrc = ix_crc32c(0, b, 508);
    memcpy(b + 508, &hcrc, 4);
}

static void test_forged_graph_refused(void **state)
{
    ms_err err;
    float *data, *qs;
    int dim = 8;
    size_t n = 300;
    vindex *ix = build(INDEX_HNSW, INDEX_QUANT_NONE, dim, n, &data, &qs);
    char p[400], bad[400];
    snprintf(p, sizeof p, "%s/g.idx", dir);
    snprintf(bad, sizeof bad, "%s/forged.idx", dir);
    assert_int_equal(index_save(ix, p, MODEL, 1, &err), 0);
    size_t len;
    unsigned char *b = slurp(p, &len);
    /* sanity: refreshing the CRCs of an unmodified file changes nothing */
    refresh_crcs(b, len);
    spit(bad, b, len);
    vindex *lx = NULL;
    if (index_load(bad, dim, MODEL, NULL, &lx, NULL, &err))
        fail_msg("refreshed file refused: %s", err.msg);
    index_free(lx);
    /* links0 follows ids, dead, vectors, levels (each 64-aligned) */
    size_t at = 0;
    at += (n * 8 + 63) / 64 * 64;
    at += (n + 63) / 64 * 64;
    at += (n * dim * 4 + 63) / 64 * 64;
    at += (n + 63) / 64 * 64;
    size_t links0 = 512 + at;
    uint32_t huge = 1000000, count;
    memcpy(&count, b + links0, 4);
    assert_true(count > 0 && count <= 32);
    unsigned char *f = malloc(len);
    memcpy(f, b, len);
    memcpy(f + links0 + 4, &huge, 4); /* first neighbour of slot 0 out of range */
    refresh_crcs(f, len);
    spit(bad, f, len);
    assert_int_equal(index_load(bad, dim, MODEL, NULL, &lx, NULL, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "invalid node"));
    memcpy(f, b, len);
    uint32_t too_many = 33;
    memcpy(f + links0, &too_many, 4); /* more links than the list holds */
    refresh_crcs(f, len);
    spit(bad, f, len);
    assert_int_equal(index_load(bad, dim, MODEL, NULL, &lx, NULL, &err), MS_EFORMAT);
    memcpy(f, b, len);
    memcpy(f + 512 + 8, f + 512 + 16, 8); /* two live slots (1 and 2) with one id */
    refresh_crcs(f, len);
    spit(bad, f, len);
    int rc = index_load(bad, dim, MODEL, NULL, &lx, NULL, &err);
    assert_int_equal(rc, MS_EFORMAT);
    free(f);
    free(b);
    index_free(ix);
    free(data);
    free(qs);
}

/* Byte offset of a section in a saved file of n slots (64-aligned each). */
static size_t section_at(size_t n, int dim, index_quant quant, int which)
{
    size_t sizes[5] = {n * 8, n, n * (size_t)dim * 4, 0, 0}; /* ids, dead, vectors, codes, qparams */
    sizes[3] = n * (quant == INDEX_QUANT_F16 ? 2 * (size_t)dim : quant == INDEX_QUANT_INT8 ? (size_t)dim : 0);
    size_t at = 512;
    for (int i = 0; i < which; i++)
        at += (sizes[i] + 63) / 64 * 64;
    return at;
}

/* A forged file (checksums right) holding a NaN where index_add would
 * never have let one in: refused with MS_EFORMAT, never handed to the
 * quantisers (found by tests/fuzz/fuzz_index.c). */
static void forged_number_refused(index_quant quant, int section, size_t slot_byte, const unsigned char *bad_bytes,
                                  size_t bad_len, const char *expect)
{
    ms_err err;
    float *data, *qs;
    int dim = 8;
    size_t n = 100;
    vindex *ix = build(INDEX_HNSW, quant, dim, n, &data, &qs);
    char p[400];
    snprintf(p, sizeof p, "%s/n.idx", dir);
    assert_int_equal(index_save(ix, p, MODEL, 1, &err), 0);
    size_t len;
    unsigned char *b = slurp(p, &len);
    memcpy(b + section_at(n, dim, quant, section) + slot_byte, bad_bytes, bad_len);
    refresh_crcs(b, len);
    spit(p, b, len);
    vindex *lx = NULL;
    assert_int_equal(index_load(p, dim, MODEL, NULL, &lx, NULL, &err), MS_EFORMAT);
    assert_null(lx);
    if (!strstr(err.msg, expect))
        fail_msg("message '%s' lacks '%s'", err.msg, expect);
    free(b);
    index_free(ix);
    free(data);
    free(qs);
}

static void test_forged_numbers_refused(void **state)
{
    const float nan = __builtin_nanf(""), inf = __builtin_inff();
    const uint16_t half_nan = 0x7E00;
    /* a component of slot 5, of a dead slot (0: the graph walks tombstones), an infinity */
    forged_number_refused(INDEX_QUANT_NONE, 2, 5 * 8 * 4 + 12, (const void *)&nan, 4, "slot 5 has a NaN");
    forged_number_refused(INDEX_QUANT_NONE, 2, 0, (const void *)&nan, 4, "slot 0 has a NaN");
    forged_number_refused(INDEX_QUANT_NONE, 2, 99 * 8 * 4, (const void *)&inf, 4, "slot 99 has a NaN or infinite");
    /* an int8 step, a float16 half */
    forged_number_refused(INDEX_QUANT_INT8, 4, 3 * 8 + 4, (const void *)&nan, 4, "range at slot 3");
    float negative = -1.0f;
    forged_number_refused(INDEX_QUANT_INT8, 4, 7 * 8 + 4, (const void *)&negative, 4, "range at slot 7");
    forged_number_refused(INDEX_QUANT_F16, 3, 2 * 8 * 2 + 6, (const void *)&half_nan, 2, "slot 2 holds a NaN");
}

/* Finite vectors the quantisers once turned into NaN codes (undefined
 * behaviour on the conversion to an integer; UBSan in this build): a range
 * wider than FLT_MAX, a range of denormals, a near-zero query. Each index
 * takes them, searches, and its file loads again. */
static void test_extreme_finite_vectors(void **state)
{
    const index_quant quants[] = {INDEX_QUANT_INT8, INDEX_QUANT_INT4, INDEX_QUANT_F16};
    const int dim = 8;
    float v[4][8] = {
        {3e38f, -3e38f, 1, 0, 0, 0, 0, 0},           /* max - min overflows a float */
        {1e-41f, -1e-41f, 0, 0, 0, 0, 0, 2e-41f},    /* denormals: 1 / step overflows */
        {1e5f, 0, 0, 0, 0, 0, 0, -7e4f},             /* beyond float16's range */
        {0.5f, 0.5f, 0.5f, 0.5f, 0, 0, 0, 0},        /* an ordinary unit vector */
    };
    const float tiny_query[8] = {1e-38f, 0, 0, 0, 0, 0, 0, -1e-38f};
    for (size_t qi = 0; qi < sizeof quants / sizeof quants[0]; qi++) {
        index_params p;
        index_params_init(&p);
        p.kind = INDEX_HNSW;
        p.quant = quants[qi];
        p.threads = 1;
        vindex *ix;
        ms_err err;
        assert_int_equal(index_create(dim, &p, &ix, &err), 0);
        int64_t ids[4] = {1, 2, 3, 4};
        assert_int_equal(index_add(ix, ids, &v[0][0], 4, &err), 0);
        index_hit h[4];
        int nh;
        assert_int_equal(index_search(ix, v[3], 4, 0, h, &nh, &err), 0);
        assert_int_equal(nh, 4);
        assert_int_equal(index_search(ix, tiny_query, 4, 0, h, &nh, &err), 0);
        assert_int_equal(nh, 4);
        assert_int_equal(index_rebuild(ix, &err), 0);
        char path[400];
        snprintf(path, sizeof path, "%s/extreme.idx", dir);
        assert_int_equal(index_save(ix, path, MODEL, 1, &err), 0);
        vindex *lx = NULL;
        if (index_load(path, dim, MODEL, NULL, &lx, NULL, &err))
            fail_msg("quant %d: saved file refused: %s", (int)quants[qi], err.msg);
        index_hit h2[4];
        int nh2;
        assert_int_equal(index_search(ix, v[3], 4, 0, h, &nh, &err), 0);
        assert_int_equal(index_search(lx, v[3], 4, 0, h2, &nh2, &err), 0);
        assert_int_equal(nh2, nh);
        for (int i = 0; i < nh; i++)
            assert_true(h[i].id == h2[i].id && h[i].score == h2[i].score);
        index_free(lx);
        index_free(ix);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_flat),
        cmocka_unit_test(test_round_trip_hnsw),
        cmocka_unit_test(test_damage_detected),
        cmocka_unit_test(test_forged_graph_refused),
        cmocka_unit_test(test_forged_numbers_refused),
        cmocka_unit_test(test_extreme_finite_vectors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
