/*
 * test_model_mobilenet.c - the real ImageNet MobileNetV2 of shared/models
 * against the reference outputs PyTorch computed from the same weights
 * (reference/manifest.json): features and logits within 1e-4 of the largest
 * reference value, one image at a time and all five in one batch; the same
 * image gives the same vector in any batch position; pooling options.
 * Skips when $MEDSEARCH_SHARED/models is absent.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "model/model.h"
#include "unit/model_test_util.h"

#define MODEL_FILE "models/mobilenet_v2_1.0_224_imagenet.onnx"
#define S 224
#define NREF 5
#define TOL 1e-4

static const char *shared;
static float inputs[NREF][3 * S * S];
static float ref_pool[NREF][1280];
static float ref_logits[NREF][1001];

static void path_of(char *buf, size_t len, const char *rel)
{
    snprintf(buf, len, "%s/%s", shared, rel);
}

static void load_refs(void)
{
    char p[4096];
    for (int r = 0; r < NREF; r++) {
        size_t len;
        char name[128];
        snprintf(name, sizeof name, "models/reference/ref%d_input_nhwc_1x224x224x3.f32", r);
        path_of(p, sizeof p, name);
        float *nhwc = mt_read_file(p, &len);
        assert_non_null(nhwc);
        assert_int_equal(len, sizeof inputs[r]);
        for (int y = 0; y < S; y++) /* NHWC -> NCHW */
            for (int x = 0; x < S; x++)
                for (int c = 0; c < 3; c++)
                    inputs[r][(c * S + y) * S + x] = nhwc[(y * S + x) * 3 + c];
        free(nhwc);
        snprintf(name, sizeof name, "models/reference/ref%d_pool_1280.f32", r);
        path_of(p, sizeof p, name);
        float *pool = mt_read_file(p, &len);
        assert_non_null(pool);
        assert_int_equal(len, sizeof ref_pool[r]);
        memcpy(ref_pool[r], pool, len);
        free(pool);
        snprintf(name, sizeof name, "models/reference/ref%d_logits_1001.f32", r);
        path_of(p, sizeof p, name);
        float *lg = mt_read_file(p, &len);
        assert_non_null(lg);
        assert_int_equal(len, sizeof ref_logits[r]);
        memcpy(ref_logits[r], lg, len);
        free(lg);
    }
}

static model *load_with(const model_options *o)
{
    char p[4096];
    path_of(p, sizeof p, MODEL_FILE);
    model *m = NULL;
    ms_err err = {0};
    int rc = model_load(p, o, &m, &err);
    if (rc)
        fail_msg("model_load: %s", err.msg);
    return m;
}

static void test_one_at_a_time(void **state)
{
    (void)state;
    model *m = load_with(NULL);
    assert_int_equal(model_dim(m), 1280);
    assert_int_equal(model_tensor_size(m, "logits"), 1001);
    ms_err err = {0};
    for (int r = 0; r < NREF; r++) {
        float feat[1280], logits[1001];
        assert_int_equal(model_forward(m, inputs[r], 1, feat, &err), 0);
        double e = mt_rel_err(feat, ref_pool[r], 1280);
        print_message("ref%d features: max error %.2e of the largest value\n", r, e);
        assert_true(e <= TOL);
        assert_int_equal(model_forward_tensor(m, inputs[r], 1, "logits", logits, 1001, &err), 0);
        e = mt_rel_err(logits, ref_logits[r], 1001);
        print_message("ref%d logits:   max error %.2e of the largest value\n", r, e);
        assert_true(e <= TOL);
    }
    model_free(m);
}

static void test_five_in_one_batch(void **state)
{
    (void)state;
    model *m = load_with(NULL);
    static float feat[NREF][1280], logits[NREF][1001];
    ms_err err = {0};
    assert_int_equal(model_forward(m, &inputs[0][0], NREF, &feat[0][0], &err), 0);
    assert_int_equal(model_forward_tensor(m, &inputs[0][0], NREF, "logits", &logits[0][0], 1001, &err), 0);
    for (int r = 0; r < NREF; r++) {
        assert_true(mt_rel_err(feat[r], ref_pool[r], 1280) <= TOL);
        assert_true(mt_rel_err(logits[r], ref_logits[r], 1001) <= TOL);
    }
    model_free(m);
}

/* Image 1 placed at every position of a batch of 7 among the others gives
 * the same normalised vector within 1e-5. */
static void test_batch_position(void **state)
{
    (void)state;
    model *m = load_with(NULL);
    enum { B = 7 };
    static float batch[B][3 * S * S], feat[B][1280];
    float alone[1280];
    ms_err err = {0};
    assert_int_equal(model_forward(m, inputs[1], 1, alone, &err), 0);
    model_l2_normalise(alone, 1, 1280);
    for (int pos = 0; pos < B; pos++) {
        for (int i = 0; i < B; i++)
            memcpy(batch[i], inputs[i == pos ? 1 : (i % 2 ? 4 : 0)], sizeof batch[i]);
        assert_int_equal(model_forward(m, &batch[0][0], B, &feat[0][0], &err), 0);
        model_l2_normalise(&feat[0][0], B, 1280);
        double d = mt_max_abs_diff(feat[pos], alone, 1280);
        if (d > 1e-5)
            fail_msg("position %d differs from batch 1 by %.2e", pos, d);
    }
    model_free(m);
}

static void test_identity_and_preprocessing(void **state)
{
    (void)state;
    model *m = load_with(NULL);
    const char *id = model_identity(m);
    assert_string_equal(model_name(m), "mobilenet_v2_1.0_224_imagenet.onnx");
    assert_string_equal(model_sha256(m), "387662a9c01e908bc90f060507cce94ad94b136b62f406f1ea5823f422f25e92");
    assert_string_equal(id, "mobilenet_v2_1.0_224_imagenet.onnx:"
                            "387662a9c01e908bc90f060507cce94ad94b136b62f406f1ea5823f422f25e92:1280:output");
    const image_prep *p = model_prep(m);
    assert_int_equal(p->size, 224);
    assert_int_equal(model_prep_from_metadata(m), 1);
    for (int c = 0; c < 3; c++) {
        assert_true(fabsf(p->mean[c] - 127.5f) < 1e-4f);
        assert_true(fabsf(p->scale[c] - 1.0f / 127.5f) < 1e-7f);
    }
    const char *d = model_describe(m);
    print_message("%s", d);
    assert_non_null(strstr(d, "Conv 52"));
    assert_non_null(strstr(d, "Clip 35"));
    assert_non_null(strstr(d, "3489099"));
    assert_non_null(strstr(d, "medsearch.* metadata"));
    /* about 0.6 GFLOP per image (300 M multiply-adds) */
    assert_true(model_flops_per_image(m) > 0.55e9 && model_flops_per_image(m) < 0.65e9);
    model_free(m);
}

/* Flags override the metadata; the fused pre-activation tensor is refused
 * with a message saying why; a missing output is not found. */
static void test_options(void **state)
{
    (void)state;
    model_options o;
    model_options_init(&o);
    o.input_size = 160;
    o.mean = "1,2,3";
    o.std = "2";
    model *m = load_with(&o);
    const image_prep *p = model_prep(m);
    assert_int_equal(p->size, 160);
    assert_true(p->mean[0] == 1.0f && p->mean[2] == 3.0f && p->scale[1] == 0.5f);
    float feat[1280];
    static float in160[3 * 160 * 160];
    ms_err err = {0};
    assert_int_equal(model_forward(m, in160, 1, feat, &err), 0);
    assert_int_equal(model_forward_tensor(m, in160, 1, "MobilenetV2/Conv_1/preact", feat, 1280 * 25, &err),
                     MS_ENOTFOUND);
    assert_non_null(strstr(err.msg, "fused"));
    model_free(m);

    char path[4096];
    path_of(path, sizeof path, MODEL_FILE);
    model_options_init(&o);
    o.output = "no_such_tensor";
    assert_int_equal(model_load(path, &o, &m, &err), MS_ENOTFOUND);
    assert_non_null(strstr(err.msg, "no_such_tensor"));
    model_options_init(&o);
    o.output = "logits";
    o.pool = MODEL_POOL_GEM;
    assert_int_equal(model_load(path, &o, &m, &err), MS_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "GlobalAveragePool"));
    model_options_init(&o);
    o.mean = "1,2";
    assert_int_equal(model_load(path, &o, &m, &err), MS_EINVAL);
    assert_int_equal(model_load("/nonexistent/model.onnx", NULL, &m, &err), MS_ENOTFOUND);
}

/* Pooling options against the map the runtime computes (Conv_1 after ReLU6). */
static void test_pooling(void **state)
{
    (void)state;
    const char *map_name = "MobilenetV2/Conv_1";
    model_options o;
    model_options_init(&o);
    o.output = map_name;
    model *mapm = load_with(&o);
    assert_int_equal(model_tensor_size(mapm, map_name), 1280 * 49);
    static float map[1280 * 49];
    ms_err err = {0};
    assert_int_equal(model_forward(mapm, inputs[2], 1, map, &err), 0);
    model_free(mapm);

    const model_pool pools[] = {MODEL_POOL_AVG, MODEL_POOL_GEM, MODEL_POOL_MAX, MODEL_POOL_TOPLEFT};
    const char *names[] = {"avg", "gem3", "max", "topleft"};
    for (int k = 0; k < 4; k++) {
        model_options_init(&o);
        o.pool = pools[k];
        model *m = load_with(&o);
        float got[1280], want[1280];
        assert_int_equal(model_dim(m), 1280);
        assert_int_equal(model_forward(m, inputs[2], 1, got, &err), 0);
        for (int c = 0; c < 1280; c++) {
            const float *x = map + c * 49;
            double acc = 0, mx = x[0];
            for (int i = 0; i < 49; i++) {
                double v = x[i];
                acc += pools[k] == MODEL_POOL_GEM ? pow(v > 1e-6 ? v : 1e-6, 3) : v;
                mx = v > mx ? v : mx;
            }
            want[c] = pools[k] == MODEL_POOL_AVG   ? (float)(acc / 49)
                      : pools[k] == MODEL_POOL_GEM ? (float)cbrt(acc / 49)
                      : pools[k] == MODEL_POOL_MAX ? (float)mx
                                                   : map[c];
        }
        double e = mt_rel_err(got, want, 1280);
        print_message("pool %s: error %.2e\n", names[k], e);
        assert_true(e <= 1e-5);
        if (pools[k] == MODEL_POOL_AVG)
            assert_true(mt_rel_err(got, ref_pool[2], 1280) <= TOL);
        char suffix[32];
        snprintf(suffix, sizeof suffix, ":1280:%s", names[k]);
        const char *id = model_identity(m);
        assert_string_equal(id + strlen(id) - strlen(suffix), suffix);
        model_free(m);
    }
}

/* bf16 (an option, fp32 is the reference): the same network within bf16's
 * precision, and an identity that keeps its vectors apart from fp32 ones. */
static void test_bf16(void **state)
{
    (void)state;
    model_options o;
    model_options_init(&o);
    o.bf16 = 1;
    model *m = load_with(&o);
    const char *id = model_identity(m);
    assert_string_equal(id + strlen(id) - strlen(":1280:output-bf16"), ":1280:output-bf16");
    static float feat[NREF][1280];
    ms_err err = {0};
    assert_int_equal(model_forward(m, &inputs[0][0], NREF, &feat[0][0], &err), 0);
    for (int r = 0; r < NREF; r++) {
        double dot = 0, na = 0, nb = 0;
        for (int i = 0; i < 1280; i++) {
            dot += (double)feat[r][i] * ref_pool[r][i];
            na += (double)feat[r][i] * feat[r][i];
            nb += (double)ref_pool[r][i] * ref_pool[r][i];
        }
        double cos = dot / sqrt(na * nb), e = mt_rel_err(feat[r], ref_pool[r], 1280);
        print_message("ref%d bf16: cosine %.5f, max error %.2e of the largest value\n", r, cos, e);
        assert_true(cos > 0.99);
        assert_true(e > 1e-4); /* really computed in bf16, not fp32 */
    }
    model_free(m);
}

int main(void)
{
    shared = mt_shared(MODEL_FILE);
    if (!shared || !mt_shared("models/reference/manifest.json")) {
        printf("skip: $MEDSEARCH_SHARED/%s not found (set MEDSEARCH_SHARED to the shared/ folder)\n", MODEL_FILE);
        return SKIP_EXIT;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_at_a_time),
        cmocka_unit_test(test_five_in_one_batch),
        cmocka_unit_test(test_batch_position),
        cmocka_unit_test(test_identity_and_preprocessing),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_pooling),
        cmocka_unit_test(test_bf16),
    };
    load_refs();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
