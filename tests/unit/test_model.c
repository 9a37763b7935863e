/*
 * test_model.c - the model module without external files: small ONNX
 * models built here with protobuf-c, valid and hostile. Hostile files
 * (bad protobuf, deep nesting, missing initializers, cycles, external data,
 * raw_data not matching dims, absurd or negative dims, kernels larger than
 * the input, shape mismatches, unsupported ops) must give a clear error and
 * never crash; a few hundred random mutations of a valid file must load or
 * fail cleanly. Also: preprocessing metadata, identity, pooling, L2
 * normalisation, and zero page faults per forward in steady state.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>

#include <cmocka.h>

#include "model/model.h"
#include "onnx.pb-c.h"
#include "unit/model_test_util.h"
#include "unit/onnx_builder.h"
#include "util/sha256.h"


/* A Gemm "name" of `out` values (transB, weights "name_W", bias "name_B")
 * reading `x` of `in` values. */
static void gemm_layer(mb *b, const char *name, const char *x, int in, int out, const char *y)
{
    char w[32], bias[32];
    snprintf(w, sizeof w, "%s_W", name);
    snprintf(bias, sizeof bias, "%s_B", name);
    int64_t wd[2] = {out, in}, bd[1] = {out};
    mb_const(b, w, 2, wd);
    mb_const(b, bias, 1, bd);
    Onnx__NodeProto *h = mb_node(b, "Gemm", name, x, w, bias, y);
    Onnx__AttributeProto *tb = attr(h, "transB", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    tb->has_i = 1;
    tb->i = 1;
}

/* Conv (4 channels, 8x8) -> act -> pool_op -> Flatten ("features", or
 * "pooled" then a head of 5 values: head 1 a Gemm; 2 a MatMul, Add and
 * Softmax as Keras models come; 3 Gemm, Relu, Dropout, Gemm, Softmax; 4
 * Gemm, hard swish as HardSigmoid and Mul, Dropout, Gemm, as MobileNetV3's
 * classifier; 5 a Gemm and Sigmoid "probs" post-processed by ops MedSearch
 * does not run, Where(Less(probs, THR), probs, Reshape(THR, THR)), as
 * torchxrayvision's op_norm, with a Reshape of a constant that shape
 * inference cannot take; 6 the same with "pooled" for the Reshape, a path
 * around the head). pool_op is a global pool, or with kernel > 0 an
 * AveragePool or MaxPool of that kernel and stride. */
static void base_full(mb *b, const char *act, const char *pool_op, int kernel, int head)
{
    mb_init(b);
    mb_input(b, "input", 3, 8);
    int64_t wd[4] = {4, 3, 3, 3}, bd[1] = {4};
    mb_const(b, "W", 4, wd);
    mb_const(b, "B", 1, bd);
    Onnx__NodeProto *c = mb_node(b, "Conv", "conv", "input", "W", "B", "c");
    int64_t pads[4] = {1, 1, 1, 1};
    attr_ints(c, "pads", 4, pads);
    mb_node(b, act, "act", "c", NULL, NULL, "r");
    Onnx__NodeProto *gp = mb_node(b, pool_op, "gap", "r", NULL, NULL, "g");
    if (kernel) {
        int64_t k[2] = {kernel, kernel};
        attr_ints(gp, "kernel_shape", 2, k);
        attr_ints(gp, "strides", 2, k);
    }
    Onnx__NodeProto *f = mb_node(b, "Flatten", "flat", "g", NULL, NULL, head ? "pooled" : "features");
    Onnx__AttributeProto *ax = attr(f, "axis", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    ax->has_i = 1;
    ax->i = 1;
    if (head == 2) {
        int64_t hw[2] = {4, 5}, hb[1] = {5};
        mb_const(b, "HW", 2, hw);
        mb_const(b, "HB", 1, hb);
        mb_node(b, "MatMul", "dense", "pooled", "HW", NULL, "mm");
        mb_node(b, "Add", "dense_bias", "mm", "HB", NULL, "logits");
        mb_node(b, "Softmax", "probs", "logits", NULL, NULL, "features");
    } else if (head == 3) {
        gemm_layer(b, "hidden", "pooled", 4, 6, "h");
        mb_node(b, "Relu", "hidden_act", "h", NULL, NULL, "ha");
        mb_node(b, "Dropout", "drop", "ha", NULL, NULL, "hd");
        gemm_layer(b, "head", "hd", 6, 5, "logits");
        mb_node(b, "Softmax", "probs", "logits", NULL, NULL, "features");
    } else if (head == 4) {
        gemm_layer(b, "hidden", "pooled", 4, 6, "h");
        Onnx__NodeProto *hs = mb_node(b, "HardSigmoid", "gate", "h", NULL, NULL, "hg");
        Onnx__AttributeProto *a = attr(hs, "alpha", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
        a->has_f = 1;
        a->f = 1.0f / 6.0f;
        mb_node(b, "Mul", "swish", "h", "hg", NULL, "ha");
        mb_node(b, "Dropout", "drop", "ha", NULL, NULL, "hd");
        gemm_layer(b, "head", "hd", 6, 5, "features");
    } else if (head == 5 || head == 6) {
        gemm_layer(b, "head", "pooled", 4, 5, "logits");
        mb_node(b, "Sigmoid", "sig", "logits", NULL, NULL, "probs");
        int64_t td[1] = {5};
        mb_const(b, "THR", 1, td);
        mb_node(b, "Less", "cmp", "probs", "THR", NULL, "mask");
        mb_node(b, "Reshape", "odd", "THR", "THR", NULL, "thr2");
        mb_node(b, "Where", "sel", "mask", "probs", head == 5 ? "thr2" : "pooled", "features");
    } else if (head) {
        gemm_layer(b, "head", "pooled", 4, 5, "features");
    }
    mb_output(b, "features");
}

static void base_with(mb *b, const char *global_op, int gemm_head)
{
    base_full(b, "Relu", global_op, 0, gemm_head);
}

/* The base model: base_with a GlobalAveragePool and no head. */
static void base(mb *b)
{
    base_with(b, "GlobalAveragePool", 0);
}

/* Loads bytes; returns the code and keeps the message in *err. */
static int try_load(const void *buf, size_t len, const model_options *o, ms_err *err)
{
    model *m = NULL;
    int rc = model_load_buffer(buf, len, "test.onnx", o, &m, err);
    if (!rc) {
        /* a model that loads must also run */
        int s = model_prep(m)->size, d = model_dim(m);
        float *in = calloc((size_t)3 * s * s, sizeof *in), *out = calloc((size_t)d, sizeof *out);
        ms_err ferr = {0};
        assert_non_null(in);
        assert_non_null(out);
        assert_int_equal(model_forward(m, in, 1, out, &ferr), 0);
        free(in);
        free(out);
    }
    model_free(m);
    return rc;
}

static void expect_error(const void *buf, size_t len, int code, const char *w1, const char *w2)
{
    ms_err err = {0};
    int rc = try_load(buf, len, NULL, &err);
    print_message("  %-14s %s\n", ms_code_name(rc), err.msg);
    assert_int_equal(rc, code);
    if (w1)
        assert_non_null(strstr(err.msg, w1));
    if (w2)
        assert_non_null(strstr(err.msg, w2));
}

/* -------------------------------------------------------------- tests */

static void test_valid_model(void **state)
{
    (void)state;
    mb b;
    base(&b);
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    model *m = NULL;
    ms_err err = {0};
    assert_int_equal(model_load_buffer(buf, len, "dir/small.onnx", NULL, &m, &err), 0);
    assert_int_equal(model_dim(m), 4);
    assert_string_equal(model_name(m), "small.onnx");
    char hex[65];
    ms_sha256_hex(buf, len, hex);
    char id[256];
    snprintf(id, sizeof id, "small.onnx:%s:4:output", hex);
    assert_string_equal(model_identity(m), id);
    /* no metadata: torchvision's ImageNet convention at the input's 8 x 8 */
    const image_prep *p = model_prep(m);
    assert_int_equal(model_prep_from_metadata(m), 0);
    assert_int_equal(p->size, 8);
    assert_true(fabsf(p->mean[1] - 116.28f) < 1e-4f && fabsf(p->scale[1] - 1 / 57.12f) < 1e-7f);
    assert_true(model_flops_per_image(m) == 2.0 * 4 * 64 * 27);
    assert_non_null(strstr(model_describe(m), "ImageNet"));

    /* the feature equals the mean over the map of relu(conv) (computed here) */
    float in[2][3 * 64], out[2][4];
    for (int i = 0; i < 3 * 64; i++) {
        in[0][i] = (float)((i * 37) % 19) / 10.0f - 0.9f;
        in[1][i] = -in[0][i];
    }
    const float *W = (const float *)b.inits[0]->raw_data.data, *B = (const float *)b.inits[1]->raw_data.data;
    assert_int_equal(model_forward(m, &in[0][0], 2, &out[0][0], &err), 0);
    for (int n = 0; n < 2; n++)
        for (int o = 0; o < 4; o++) {
            double acc = 0;
            for (int y = 0; y < 8; y++)
                for (int x = 0; x < 8; x++) {
                    double v = B[o];
                    for (int c = 0; c < 3; c++)
                        for (int ky = 0; ky < 3; ky++)
                            for (int kx = 0; kx < 3; kx++) {
                                int yy = y + ky - 1, xx = x + kx - 1;
                                if (yy >= 0 && yy < 8 && xx >= 0 && xx < 8)
                                    v += W[((o * 3 + c) * 3 + ky) * 3 + kx] * in[n][(c * 8 + yy) * 8 + xx];
                            }
                    acc += v > 0 ? v : 0;
                }
            assert_true(fabs(out[n][o] - acc / 64) < 1e-5);
        }
    /* the Conv output feeding the fused Relu is not available on its own */
    float big[4 * 64];
    assert_int_equal(model_forward_tensor(m, &in[0][0], 1, "c", big, 4 * 64, &err), MS_ENOTFOUND);
    assert_non_null(strstr(err.msg, "fused"));
    assert_int_equal(model_forward_tensor(m, &in[0][0], 1, "r", big, 4 * 64, &err), 0);
    assert_int_equal(model_forward_tensor(m, &in[0][0], 1, "r", big, 7, &err), MS_EINVAL);
    assert_int_equal(model_tensor_size(m, "W"), 0);
    assert_int_equal(model_forward(m, &in[0][0], 0, &out[0][0], &err), MS_EINVAL);
    model_free(m);
    pool_free();
}

static void test_bad_bytes(void **state)
{
    (void)state;
    mb b;
    base(&b);
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    expect_error(buf, 0, MS_EFORMAT, "empty", NULL);
    expect_error(buf, len / 2, MS_EFORMAT, "ONNX", NULL);
    uint8_t junk[64];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 97 + 13);
    expect_error(junk, sizeof junk, MS_EFORMAT, "ONNX", NULL);
    const char text[] = "this is a text file, not a model\n";
    expect_error(text, sizeof text - 1, MS_EFORMAT, NULL, NULL);
    pool_free();
}

/* ModelProto.graph -> node -> attribute.g -> node -> ... 3000 levels deep:
 * protobuf-c would recurse without a bound; the loader refuses first. */
static void test_nesting_bomb(void **state)
{
    (void)state;
    enum { LEVELS = 3000 }; /* the outermost level is Graph.node */
    size_t cap = (size_t)LEVELS * 12 + 64, len = 0;
    uint8_t *buf = malloc(cap), *tmp = malloc(cap);
    assert_non_null(buf);
    assert_non_null(tmp);
    /* innermost: an empty GraphProto; wrap alternately in Node.attribute(5) /
     * Attribute.g(6) / Graph.node(1) */
    for (int level = 0; level < LEVELS; level++) {
        static const uint8_t tags[3] = {(6 << 3) | 2, (5 << 3) | 2, (1 << 3) | 2};
        uint8_t hdr[12];
        size_t h = 0, v = len;
        hdr[h++] = tags[level % 3];
        do {
            hdr[h++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
            v >>= 7;
        } while (v);
        memcpy(tmp, hdr, h);
        memcpy(tmp + h, buf, len);
        len += h;
        memcpy(buf, tmp, len);
    }
    /* ModelProto.graph (7) around it all */
    uint8_t hdr[12];
    size_t h = 0, v = len;
    hdr[h++] = (7 << 3) | 2;
    do {
        hdr[h++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    memcpy(tmp, hdr, h);
    memcpy(tmp + h, buf, len);
    expect_error(tmp, len + h, MS_EFORMAT, "nest", NULL);
    free(buf);
    free(tmp);
}

static void test_graph_errors(void **state)
{
    (void)state;
    mb b;
    size_t len;
    uint8_t *buf;

    /* missing initializer */
    base(&b);
    b.g.n_initializer = 1; /* drops B */
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EFORMAT, "'B'", "conv");

    /* an unsupported op the feature depends on, named with its node; one it
     * does not depend on is left out */
    base(&b);
    mb_node(&b, "LSTM", "lstm_7", "features", NULL, NULL, "h");
    mb_meta(&b, "medsearch.feature_output", "h");
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EUNSUPPORTED, "LSTM", "lstm_7");
    base(&b);
    mb_node(&b, "LSTM", "lstm_7", "features", NULL, NULL, "h");
    buf = mb_pack(&b, &len);
    expect_error(buf, len, 0, NULL, NULL); /* loads and runs */

    /* a cycle: relu reads its own descendant */
    base(&b);
    b.nodes[1]->input[0] = pstr("loop");
    mb_node(&b, "Relu", "back", "r", NULL, NULL, "loop");
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EFORMAT, "cycle", NULL);

    /* external data */
    base(&b);
    b.inits[0]->has_data_location = 1;
    b.inits[0]->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EUNSUPPORTED, "external", "'W'");

    /* raw_data shorter than the dims claim */
    base(&b);
    b.inits[0]->raw_data.len = 100;
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EFORMAT, "'W'", "raw_data");

    /* 1e12 elements claimed */
    base(&b);
    b.inits[0]->dims[0] = 1000000;
    b.inits[0]->dims[1] = 1000000;
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EFORMAT, "'W'", NULL);

    /* 1e18 elements: overflow-safe */
    base(&b);
    b.inits[0]->dims[0] = 1000000000000LL;
    b.inits[0]->dims[1] = 1000000000000LL;
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EFORMAT, "absurd", NULL);

    /* negative dims */
    base(&b);
    b.inits[1]->dims[0] = -4;
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EFORMAT, "negative", NULL);

    /* a kernel larger than the (padded) input: 11 x 11 on 8 x 8 padded to 10 */
    base(&b);
    int64_t wd[4] = {4, 3, 11, 11};
    b.inits[0] = mb_const(&b, "W11", 4, wd);
    b.g.n_initializer--;
    b.nodes[0]->input[1] = pstr("W11");
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EFORMAT, "kernel", "conv");

    /* weights for 5 input channels, input has 3 */
    base(&b);
    b.inits[0]->dims[1] = 5;
    b.inits[0]->raw_data.len = 4 * 5 * 9 * 4;
    b.inits[0]->raw_data.data = palloc(4 * 5 * 9 * 4);
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EFORMAT, "channels", "conv");

    /* a tensor produced twice */
    base(&b);
    mb_node(&b, "Relu", "again", "c", NULL, NULL, "r");
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EFORMAT, "twice", NULL);

    /* two inputs */
    base(&b);
    mb_input(&b, "mask", 3, 8);
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EUNSUPPORTED, "2 inputs", NULL);

    /* a two-channel input */
    base(&b);
    b.inputs[0] = value_info("input", 4, (int64_t[]){-1, 2, 8, 8});
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EUNSUPPORTED, "channels", NULL);

    /* a one-channel input read by a Conv with weights for three */
    base(&b);
    b.inputs[0] = value_info("input", 4, (int64_t[]){-1, 1, 8, 8});
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EUNSUPPORTED, "one-channel input", "conv");

    /* kernel_shape as a float */
    base(&b);
    Onnx__AttributeProto *a = attr(b.nodes[0], "kernel_shape", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    a->has_f = 1;
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EFORMAT, "kernel_shape", NULL);

    /* a 3-D convolution */
    base(&b);
    attr_ints(b.nodes[0], "strides", 3, (int64_t[]){1, 1, 1});
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EUNSUPPORTED, "2-D", NULL);

    /* double-precision weights */
    base(&b);
    b.inits[1]->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE;
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EUNSUPPORTED, "DOUBLE", NULL);

    /* an output nothing produces */
    base(&b);
    mb_output(&b, "ghost");
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_EFORMAT, "ghost", NULL);

    /* activations of 65536 channels at 4096 x 4096: over the limit, refused
     * before anything is allocated */
    base(&b);
    b.inputs[0] = value_info("input", 4, (int64_t[]){-1, 3, 4096, 4096});
    int64_t wbig[4] = {65536, 3, 1, 1};
    b.inits[0] = mb_const(&b, "Wbig", 4, wbig);
    b.g.n_initializer--;
    b.nodes[0]->input[1] = pstr("Wbig");
    b.nodes[0]->n_input = 2;
    buf = mb_pack(&b, &len);
    expect_error(buf, len, MS_ETOOBIG, "conv", NULL);
    pool_free();
}

static void test_metadata(void **state)
{
    (void)state;
    mb b;
    size_t len;
    uint8_t *buf;
    model *m;
    ms_err err = {0};

    /* BGR without mean/std: the ImageNet values, reversed into B,G,R order */
    base(&b);
    mb_meta(&b, "medsearch.color", "bgr");
    mb_meta(&b, "medsearch.input_size", "16");
    buf = mb_pack(&b, &len);
    assert_int_equal(model_load_buffer(buf, len, "m.onnx", NULL, &m, &err), 0);
    assert_int_equal(model_prep(m)->size, 16);
    assert_true(fabsf(model_prep(m)->mean[0] - 103.53f) < 1e-4f);
    assert_true(fabsf(model_prep(m)->scale[2] - 1 / 58.395f) < 1e-7f);
    assert_int_equal(model_prep_from_metadata(m), 1);
    model_free(m);

    /* given values are in the model's channel order, as written */
    base(&b);
    mb_meta(&b, "medsearch.color", "BGR");
    mb_meta(&b, "medsearch.mean", "1, 2, 3");
    mb_meta(&b, "medsearch.std", "4");
    mb_meta(&b, "medsearch.feature_output", "r");
    buf = mb_pack(&b, &len);
    assert_int_equal(model_load_buffer(buf, len, "m.onnx", NULL, &m, &err), 0);
    assert_true(model_prep(m)->mean[0] == 1.0f && model_prep(m)->mean[2] == 3.0f);
    assert_true(model_prep(m)->scale[1] == 0.25f);
    assert_int_equal(model_dim(m), 4 * 64); /* the feature output named by metadata */
    model_free(m);

    /* flags win over metadata */
    model_options o;
    model_options_init(&o);
    o.mean = "10";
    o.scale = "0.5,0.25,0.125";
    assert_int_equal(model_load_buffer(buf, len, "m.onnx", &o, &m, &err), 0);
    assert_true(model_prep(m)->mean[1] == 10.0f && model_prep(m)->scale[2] == 0.125f);
    model_free(m);

    const char *bad[][2] = {{"medsearch.mean", "abc"}, {"medsearch.color", "cmyk"}, {"medsearch.input_size", "0"},
                            {"medsearch.std", "0"}, {"medsearch.scale", "1,2"}, {"medsearch.input_size", "99999"},
                            {"medsearch.feature_output", "nowhere"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        base(&b);
        mb_meta(&b, bad[i][0], bad[i][1]);
        buf = mb_pack(&b, &len);
        expect_error(buf, len, MS_EFORMAT, bad[i][0], NULL);
    }
    model_options_init(&o);
    o.std = "0";
    assert_int_equal(model_load_buffer(buf, len, "m.onnx", &o, &m, &err), MS_EINVAL);
    model_options_init(&o);
    o.max_file_bytes = 100;
    assert_int_equal(model_load_buffer(buf, len, "m.onnx", &o, &m, &err), MS_ETOOBIG);
    model_options_init(&o);
    o.pool = MODEL_POOL_GEM;
    o.gem_p = -1;
    assert_int_equal(model_load_buffer(buf, len, "m.onnx", &o, &m, &err), MS_EINVAL);
    pool_free();
}

/* Pooled features against the map "r" read back from the runtime. */
static void test_pooling(void **state)
{
    (void)state;
    mb b;
    base(&b);
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    float in[3 * 64], map[4 * 64];
    for (int i = 0; i < 3 * 64; i++)
        in[i] = (float)((i * 53) % 23) / 7.0f - 1.5f;
    model *m;
    ms_err err = {0};
    assert_int_equal(model_load_buffer(buf, len, "m.onnx", NULL, &m, &err), 0);
    assert_int_equal(model_forward_tensor(m, in, 1, "r", map, 4 * 64, &err), 0);
    model_free(m);
    const model_pool pools[] = {MODEL_POOL_AVG, MODEL_POOL_GEM, MODEL_POOL_MAX, MODEL_POOL_TOPLEFT};
    for (int k = 0; k < 4; k++) {
        model_options o;
        model_options_init(&o);
        o.pool = pools[k];
        o.gem_p = 2.5f;
        assert_int_equal(model_load_buffer(buf, len, "m.onnx", &o, &m, &err), 0);
        float got[4];
        assert_int_equal(model_forward(m, in, 1, got, &err), 0);
        for (int c = 0; c < 4; c++) {
            double acc = 0, mx = -1e30;
            for (int i = 0; i < 64; i++) {
                double v = map[c * 64 + i];
                acc += pools[k] == MODEL_POOL_GEM ? pow(v > 1e-6 ? v : 1e-6, 2.5) : v;
                mx = v > mx ? v : mx;
            }
            double want = pools[k] == MODEL_POOL_AVG   ? acc / 64
                          : pools[k] == MODEL_POOL_GEM ? pow(acc / 64, 1 / 2.5)
                          : pools[k] == MODEL_POOL_MAX ? mx
                                                       : map[c]; /* first C values of the flattened map */
            assert_true(fabs(got[c] - want) <= 1e-5 * (1 + fabs(want)));
        }
        const char *id = model_identity(m);
        const char *suffix = pools[k] == MODEL_POOL_AVG ? ":avg" : pools[k] == MODEL_POOL_GEM ? ":gem2.5"
                             : pools[k] == MODEL_POOL_MAX ? ":max" : ":topleft";
        assert_string_equal(id + strlen(id) - strlen(suffix), suffix);
        model_free(m);
    }
    pool_free();
}

/* The pooling of the first (and only) image of a forward, into got. */
static void forward_one(const uint8_t *buf, size_t len, const model_options *o, const float *in, float *got,
                        int dim, char *identity, size_t id_len, model_pool *in_force)
{
    model *m;
    ms_err err = {0};
    assert_int_equal(model_load_buffer(buf, len, "m.onnx", o, &m, &err), 0);
    assert_int_equal(model_dim(m), dim);
    assert_int_equal(model_forward(m, in, 1, got, &err), 0);
    snprintf(identity, id_len, "%s", strrchr(model_identity(m), ':') + 1);
    *in_force = model_pooling(m);
    model_free(m);
}

/* base_full(Relu, pool_op, kernel, head) loaded with o: MS_EUNSUPPORTED
 * with `words` in the message. */
static void expect_base_refused(const char *pool_op, int kernel, int head, const model_options *o, const char *words)
{
    mb b;
    base_full(&b, "Relu", pool_op, kernel, head);
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    model *m = NULL;
    ms_err err = {0};
    assert_int_equal(model_load_buffer(buf, len, "m.onnx", o, &m, &err), MS_EUNSUPPORTED);
    print_message("  %s\n", err.msg);
    assert_non_null(strstr(err.msg, words));
    pool_free();
}

/* MODEL_POOL_AUTO: GeM of the map behind a global average pool (or an
 * AveragePool covering the map) when the map cannot be negative, identical
 * to asking for GeM; the graph's output behind a global max pool, a pool not
 * covering the map, a map that may be negative, or a tensor named by
 * options.output. A classifier head on a global pool is left out of the
 * default feature, kept when options.output names it, and kept behind an
 * AveragePool. Never "auto" in an identity. */
static void test_pooling_auto(void **state)
{
    (void)state;
    float in[3 * 64], got[16], want[16];
    for (int i = 0; i < 3 * 64; i++)
        in[i] = (float)((i * 31) % 17) / 5.0f - 1.5f;
    char id[64], want_id[64];
    model_pool in_force;
    struct {
        const char *act, *global_op;
        int kernel, head;
        const char *output;
        model_pool resolved;
        int dim;
        const char *identity;
    } cases[] = {
        {"Relu", "GlobalAveragePool", 0, 0, NULL, MODEL_POOL_GEM, 4, "gem2.5"},
        {"Relu", "GlobalAveragePool", 0, 0, "features", MODEL_POOL_OUTPUT, 4, "output"},
        {"Relu", "GlobalMaxPool", 0, 0, NULL, MODEL_POOL_OUTPUT, 4, "output"},
        {"Relu", "GlobalAveragePool", 0, 1, "features", MODEL_POOL_OUTPUT, 5, "output"},
        {"Relu", "GlobalAveragePool", 0, 1, NULL, MODEL_POOL_GEM, 4, "gem2.5"},
        {"Relu", "GlobalAveragePool", 0, 2, NULL, MODEL_POOL_GEM, 4, "gem2.5"},
        {"Relu", "GlobalMaxPool", 0, 1, NULL, MODEL_POOL_OUTPUT, 4, "output"},
        {"Relu", "AveragePool", 8, 1, NULL, MODEL_POOL_OUTPUT, 5, "output"},
        {"Relu", "GlobalAveragePool", 0, 3, NULL, MODEL_POOL_GEM, 4, "gem2.5"},
        {"Relu", "GlobalAveragePool", 0, 4, NULL, MODEL_POOL_GEM, 4, "gem2.5"},
        {"Relu", "GlobalAveragePool", 0, 4, "features", MODEL_POOL_OUTPUT, 5, "output"},
        {"Relu", "AveragePool", 8, 4, NULL, MODEL_POOL_OUTPUT, 5, "output"},
        {"Relu", "GlobalAveragePool", 0, 5, NULL, MODEL_POOL_GEM, 4, "gem2.5"},
        {"Relu", "GlobalAveragePool", 0, 5, "pooled", MODEL_POOL_OUTPUT, 4, "output"},
        {"Relu", "GlobalAveragePool", 0, 5, "probs", MODEL_POOL_OUTPUT, 5, "output"},
        {"Softplus", "GlobalAveragePool", 0, 0, NULL, MODEL_POOL_GEM, 4, "gem2.5"},
        {"Sigmoid", "GlobalAveragePool", 0, 0, NULL, MODEL_POOL_GEM, 4, "gem2.5"},
        {"LeakyRelu", "GlobalAveragePool", 0, 0, NULL, MODEL_POOL_OUTPUT, 4, "output"},
        {"Tanh", "GlobalAveragePool", 0, 0, NULL, MODEL_POOL_OUTPUT, 4, "output"},
        {"Identity", "GlobalAveragePool", 0, 0, NULL, MODEL_POOL_OUTPUT, 4, "output"},
        {"Relu", "AveragePool", 8, 0, NULL, MODEL_POOL_GEM, 4, "gem2.5"},
        {"Relu", "AveragePool", 4, 0, NULL, MODEL_POOL_OUTPUT, 16, "output"},
        {"Relu", "MaxPool", 8, 0, NULL, MODEL_POOL_OUTPUT, 4, "output"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        mb b;
        base_full(&b, cases[k].act, cases[k].global_op, cases[k].kernel, cases[k].head);
        size_t len;
        uint8_t *buf = mb_pack(&b, &len);
        model_options o;
        model_options_init(&o);
        o.pool = MODEL_POOL_AUTO;
        o.gem_p = 2.5f;
        o.output = cases[k].output;
        forward_one(buf, len, &o, in, got, cases[k].dim, id, sizeof id, &in_force);
        assert_string_equal(id, cases[k].identity);
        assert_int_equal(in_force, cases[k].resolved);
        o.pool = cases[k].resolved; /* the same vector as asking for it */
        forward_one(buf, len, &o, in, want, cases[k].dim, want_id, sizeof want_id, &in_force);
        assert_string_equal(want_id, id);
        assert_memory_equal(got, want, (size_t)cases[k].dim * sizeof *got);
        pool_free();
    }
    /* info names the head left out, from its first dense layer */
    const struct {
        int head;
        const char *words;
    } told[] = {{1, "head of 1 dense layer from 'head' (Gemm) giving 'features'"},
                {2, "head of 1 dense layer from 'dense' (MatMul) giving 'features'"},
                {3, "head of 2 dense layers from 'hidden' (Gemm) giving 'features'"},
                {4, "head of 2 dense layers from 'hidden' (Gemm) giving 'features'"},
                {5, "head of 1 dense layer from 'head' (Gemm) giving 'features'"}};
    for (size_t k = 0; k < sizeof told / sizeof *told; k++) {
        mb b;
        base_with(&b, "GlobalAveragePool", told[k].head);
        size_t len;
        uint8_t *buf = mb_pack(&b, &len);
        model_options o;
        model_options_init(&o);
        model *m;
        ms_err err = {0};
        assert_int_equal(model_load_buffer(buf, len, "m.onnx", &o, &m, &err), 0);
        if (!strstr(model_describe(m), told[k].words))
            fail_msg("head %d: '%s' not in:\n%s", told[k].head, told[k].words, model_describe(m));
        model_free(m);
        pool_free();
    }
    /* asked for by name, GeM behind a pool that does not cover the map is an
     * error; so is a Keras head named as the feature: MedSearch does not run MatMul */
    model_options o;
    model_options_init(&o);
    o.pool = MODEL_POOL_GEM;
    expect_base_refused("AveragePool", 4, 0, &o, "4x4 kernel, not the whole map");
    model_options_init(&o);
    o.output = "features";
    expect_base_refused("GlobalAveragePool", 0, 2, &o, "MatMul");
    /* post-processed scores: named, they need ops MedSearch does not run; with
     * a path around the head, the output is no head's and is refused too */
    expect_base_refused("GlobalAveragePool", 0, 5, &o, "Less");
    model_options_init(&o);
    expect_base_refused("GlobalAveragePool", 0, 6, &o, "Less");
    model_pool p = MODEL_POOL_OUTPUT;
    assert_int_equal(model_pool_parse("auto", &p), 0);
    assert_int_equal(p, MODEL_POOL_AUTO);
    assert_string_equal(model_pool_name(MODEL_POOL_AUTO), "auto");
    assert_int_equal(model_pool_parse("Auto", &p), MS_EINVAL);
    model_options_init(&o);
    o.pool = MODEL_POOL_AUTO;
    o.gem_p = 0;
    mb b;
    base(&b);
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    model *m;
    ms_err err = {0};
    assert_int_equal(model_load_buffer(buf, len, "m.onnx", &o, &m, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "GeM p"));
    pool_free();
}

/* Each of n images (3 planes of side x side) reversed left-right. */
static void mirror_planes(const float *in, int n, int side, float *out)
{
    for (int r = 0; r < n * 3 * side; r++)
        for (int x = 0; x < side; x++)
            out[r * side + x] = in[r * side + side - 1 - x];
}

/* options.flip: each image's feature is l2(f(image)) + l2(f(mirror image)),
 * checked against two plain forwards, for the graph's own output and for a
 * pooling of ours, at batch 1 and then 2 (the mirrored batch's buffer grows);
 * an image and its mirror image get the same vector; the identity says so. */
static void test_flip(void **state)
{
    (void)state;
    mb b;
    base(&b);
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    float in[2 * 3 * 64], mirrored[2 * 3 * 64];
    for (int i = 0; i < 2 * 3 * 64; i++)
        in[i] = (float)((i * 37) % 29) / 9.0f - 1.2f;
    mirror_planes(in, 2, 8, mirrored);
    const model_pool pools[] = {MODEL_POOL_OUTPUT, MODEL_POOL_GEM};
    const char *suffixes[] = {":output-flip", ":gem3-flip"};
    for (int k = 0; k < 2; k++) {
        model_options o;
        model_options_init(&o);
        o.pool = pools[k];
        model *plain, *flip;
        ms_err err = {0};
        assert_int_equal(model_load_buffer(buf, len, "m.onnx", &o, &plain, &err), 0);
        o.flip = 1;
        assert_int_equal(model_load_buffer(buf, len, "m.onnx", &o, &flip, &err), 0);
        assert_int_equal(model_dim(flip), 4);
        float f[2 * 4], fm[2 * 4], got[2 * 4], got_mirrored[2 * 4];
        assert_int_equal(model_forward(plain, in, 2, f, &err), 0);
        assert_int_equal(model_forward(plain, mirrored, 2, fm, &err), 0);
        model_l2_normalise(f, 2, 4);
        model_l2_normalise(fm, 2, 4);
        assert_true(mt_max_abs_diff(f, fm, 8) > 1e-3); /* the input is not symmetric */
        assert_int_equal(model_forward(flip, in, 1, got, &err), 0);
        assert_int_equal(model_forward(flip, in, 2, got, &err), 0);
        assert_int_equal(model_forward(flip, mirrored, 2, got_mirrored, &err), 0);
        for (int i = 0; i < 8; i++) {
            assert_true(fabsf(got[i] - (f[i] + fm[i])) <= 1e-5f);
            assert_true(fabsf(got[i] - got_mirrored[i]) <= 1e-6f);
        }
        const char *id = model_identity(flip);
        assert_string_equal(id + strlen(id) - strlen(suffixes[k]), suffixes[k]);
        assert_null(strstr(model_identity(plain), "flip"));
        model_free(plain);
        model_free(flip);
    }
    pool_free();
}

/* The shares one pooling gives one channel's 64 cells, by hand from the map. */
static void want_shares(const float *x, model_pool how, int ch, double *out)
{
    double sum = 0;
    int at = 0;
    for (int i = 0; i < 64; i++) {
        double y = x[i] > 1e-6 ? x[i] : 1e-6;
        sum += how == MODEL_POOL_GEM ? pow(y, 2.5) : x[i];
        at = x[i] > x[at] ? i : at;
    }
    for (int i = 0; i < 64; i++) {
        double y = x[i] > 1e-6 ? x[i] : 1e-6;
        switch (how) {
        case MODEL_POOL_GEM: out[i] = pow(sum / 64, 1 / 2.5) * pow(y, 2.5) / sum; break;
        case MODEL_POOL_MAX: out[i] = i == at ? x[i] : 0; break;
        case MODEL_POOL_TOPLEFT: out[i] = 0; break;
        default: out[i] = x[i] / 64; break;
        }
    }
    if (how == MODEL_POOL_TOPLEFT) /* value ch of the flattened map: channel 0, cell ch */
        out[ch] = x[ch];
}

/* model_feature_shares: for every pooling of ours and for the graph's own
 * average and max pool, the feature is model_forward's, its shares sum to
 * it over the cells, and they are what the pooling gives each cell by hand;
 * with flip, the image's and the mirror image's shares normalised, the
 * mirror's cells mirrored back. A feature that is no global pooling of a
 * map (a head, a pool not covering the map) has no grid. */
static void test_feature_shares(void **state)
{
    (void)state;
    float in[2 * 3 * 64], map[2 * 4 * 64];
    for (int i = 0; i < 2 * 3 * 64; i++)
        in[i] = (float)((i * 41) % 31) / 8.0f - 1.7f;
    const struct {
        const char *global_op;
        model_pool pool, splits_as;
    } cases[] = {{"GlobalAveragePool", MODEL_POOL_AVG, MODEL_POOL_AVG},
                 {"GlobalAveragePool", MODEL_POOL_GEM, MODEL_POOL_GEM},
                 {"GlobalAveragePool", MODEL_POOL_MAX, MODEL_POOL_MAX},
                 {"GlobalAveragePool", MODEL_POOL_TOPLEFT, MODEL_POOL_TOPLEFT},
                 {"GlobalAveragePool", MODEL_POOL_OUTPUT, MODEL_POOL_AVG},
                 {"GlobalMaxPool", MODEL_POOL_OUTPUT, MODEL_POOL_MAX}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        mb b;
        base_with(&b, cases[k].global_op, 0);
        size_t len;
        uint8_t *buf = mb_pack(&b, &len);
        model_options o;
        model_options_init(&o);
        o.pool = cases[k].pool;
        o.gem_p = 2.5f;
        model *m;
        ms_err err = {0};
        assert_int_equal(model_load_buffer(buf, len, "m.onnx", &o, &m, &err), 0);
        int h = 0, w = 0;
        assert_int_equal(model_feature_grid(m, &h, &w, &err), 0);
        assert_true(h == 8 && w == 8);
        float feature[2 * 4], want[2 * 4], shares[2 * 4 * 64];
        assert_int_equal(model_forward(m, in, 2, want, &err), 0);
        assert_int_equal(model_feature_shares(m, in, 2, feature, shares, &err), 0);
        assert_int_equal(model_forward_tensor(m, in, 2, "r", map, 4 * 64, &err), 0);
        for (int i = 0; i < 2; i++)
            for (int c = 0; c < 4; c++) {
                double sum = 0, by_hand[64];
                float f = feature[i * 4 + c];
                assert_true(fabsf(f - want[i * 4 + c]) <= 1e-5f * (1 + fabsf(f)));
                want_shares(map + i * 256 + (cases[k].splits_as == MODEL_POOL_TOPLEFT ? 0 : c * 64),
                            cases[k].splits_as, c, by_hand);
                for (int cell = 0; cell < 64; cell++) {
                    float got = shares[(i * 4 + c) * 64 + cell];
                    sum += got;
                    if (fabs(got - by_hand[cell]) > 1e-5 * (1 + fabs(by_hand[cell])))
                        fail_msg("case %zu image %d channel %d cell %d: %g, by hand %g", k, i, c, cell, (double)got,
                                 by_hand[cell]);
                }
                assert_true(fabs(sum - f) <= 1e-5 * (1 + fabs(f)));
            }
        model_free(m);
        /* with flip */
        if (cases[k].pool == MODEL_POOL_GEM || cases[k].pool == MODEL_POOL_OUTPUT) {
            model *flip;
            assert_int_equal(model_load_buffer(buf, len, "m.onnx", &o, &m, &err), 0);
            o.flip = 1;
            assert_int_equal(model_load_buffer(buf, len, "m.onnx", &o, &flip, &err), 0);
            float mirrored[2 * 3 * 64], fm[2 * 4], sm[2 * 4 * 64], ff[2 * 4], sf[2 * 4 * 64];
            mirror_planes(in, 2, 8, mirrored);
            assert_int_equal(model_feature_shares(m, in, 2, feature, shares, &err), 0);
            assert_int_equal(model_feature_shares(m, mirrored, 2, fm, sm, &err), 0);
            assert_int_equal(model_forward(flip, in, 2, want, &err), 0);
            assert_int_equal(model_feature_shares(flip, in, 2, ff, sf, &err), 0);
            for (int i = 0; i < 2; i++) {
                double na = 0, nb = 0;
                for (int c = 0; c < 4; c++) {
                    na += (double)feature[i * 4 + c] * feature[i * 4 + c];
                    nb += (double)fm[i * 4 + c] * fm[i * 4 + c];
                }
                na = sqrt(na);
                nb = sqrt(nb);
                for (int c = 0; c < 4; c++) {
                    double sum = 0;
                    assert_true(fabsf(ff[i * 4 + c] - want[i * 4 + c]) <= 1e-5f);
                    for (int y = 0; y < 8; y++)
                        for (int x = 0; x < 8; x++) {
                            size_t at = (size_t)(i * 4 + c) * 64 + (size_t)y * 8;
                            double by_hand = shares[at + x] / na + sm[at + 7 - x] / nb;
                            assert_true(fabs(sf[at + x] - by_hand) <= 1e-6);
                            sum += sf[at + x];
                        }
                    assert_true(fabs(sum - ff[i * 4 + c]) <= 1e-5);
                }
            }
            o.flip = 0;
            model_free(m);
            model_free(flip);
        }
        pool_free();
    }
    /* no grid: a dense head after the pool, named as the feature; a pool that does not cover the map */
    const struct {
        const char *pool_op;
        int kernel, head;
        const char *output;
    } none[] = {{"GlobalAveragePool", 0, 1, "features"}, {"AveragePool", 4, 0, NULL}};
    for (size_t k = 0; k < sizeof none / sizeof *none; k++) {
        mb b;
        base_full(&b, "Relu", none[k].pool_op, none[k].kernel, none[k].head);
        size_t len;
        uint8_t *buf = mb_pack(&b, &len);
        model_options o;
        model_options_init(&o);
        o.output = none[k].output;
        model *m;
        ms_err err = {0};
        assert_int_equal(model_load_buffer(buf, len, "m.onnx", &o, &m, &err), 0);
        int h = 1, w = 1;
        float feature[16], shares[16 * 64];
        assert_int_equal(model_feature_grid(m, &h, &w, &err), MS_EUNSUPPORTED);
        assert_true(h == 0 && w == 0);
        print_message("  %s\n", err.msg);
        assert_non_null(strstr(err.msg, "not a global pooling of a feature map"));
        assert_int_equal(model_feature_shares(m, in, 1, feature, shares, &err), MS_EUNSUPPORTED);
        model_free(m);
        pool_free();
    }
}

/* model_options_from_identity reads back what model_identity writes, and
 * refuses what it never writes, changing nothing then. */
static void test_options_from_identity(void **state)
{
    (void)state;
    mb b;
    base(&b);
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    const model_pool pools[] = {MODEL_POOL_OUTPUT, MODEL_POOL_AVG, MODEL_POOL_GEM, MODEL_POOL_MAX,
                                MODEL_POOL_TOPLEFT};
    for (int k = 0; k < 5; k++)
        for (int flip = 0; flip <= 1; flip++) {
            model_options o, back;
            model_options_init(&o);
            o.pool = pools[k];
            o.gem_p = 2.5f;
            o.flip = flip;
            model *m;
            ms_err err = {0};
            assert_int_equal(model_load_buffer(buf, len, "a:b.onnx", &o, &m, &err), 0);
            model_options_init(&back);
            back.input_size = 99; /* no "-in": the model's own */
            back.mean = "7";      /* left alone */
            assert_int_equal(model_options_from_identity(model_identity(m), &back), 0);
            assert_int_equal(back.pool, o.pool);
            assert_int_equal(back.flip, flip);
            assert_int_equal(back.bf16, 0);
            assert_int_equal(back.input_size, 0);
            assert_string_equal(back.mean, "7");
            if (o.pool == MODEL_POOL_GEM)
                assert_true(back.gem_p == 2.5f);
            model_free(m);
        }
    model_options o;
    model_options_init(&o);
    assert_int_equal(model_options_from_identity("m:ab:1280:gem3-bf16-flip", &o), 0);
    assert_true(o.pool == MODEL_POOL_GEM && o.gem_p == 3.0f && o.bf16 == 1 && o.flip == 1);
    assert_int_equal(o.input_size, 0);
    assert_int_equal(model_options_from_identity("m:ab:1280:gem1e-05-bf16-flip-in288-norm0123abcd", &o), 0);
    assert_true(o.pool == MODEL_POOL_GEM && o.gem_p == 1e-5f && o.bf16 == 1 && o.flip == 1);
    assert_int_equal(o.input_size, 288);
    assert_null(o.mean); /* a digest is not values */
    assert_int_equal(model_options_from_identity("m:ab:1280:avg-norm0123abcd", &o), 0);
    assert_true(o.pool == MODEL_POOL_AVG && o.bf16 == 0 && o.flip == 0 && o.input_size == 0);
    assert_int_equal(model_options_from_identity("m:ab:1280:output-in8", &o), 0);
    assert_int_equal(o.input_size, 8);
    static const char *bad[] = {"gem3", "m:ab:1:", "m:ab:1:gem", "m:ab:1:gemx", "m:ab:1:gem0", "m:ab:1:gem200",
                                "m:ab:1:avg-flop", "m:ab:1:avg-flip-bf16", "m:ab:1:median", "m:ab:1:max-flip ",
                                "m:ab:1:gem 3", "m:ab:1:gem3.0", "m:ab:1:gem+3", "m:ab:1:avg-", "m:ab:1:avg--flip",
                                "m:ab:1:avg-flip-flip", "m:ab:1:avg-in", "m:ab:1:avg-in0", "m:ab:1:avg-in7",
                                "m:ab:1:avg-in4097", "m:ab:1:avg-in99999", "m:ab:1:avg-in0288", "m:ab:1:avg-in+288",
                                "m:ab:1:avg-in 288", "m:ab:1:avg-in288x", "m:ab:1:avg-in288-in288",
                                "m:ab:1:avg-in288-flip", "m:ab:1:avg-norm", "m:ab:1:avg-normXYZ",
                                "m:ab:1:avg-norm0123abc", "m:ab:1:avg-norm0123abcde", "m:ab:1:avg-norm0123ABCD",
                                "m:ab:1:avg-norm0123abcd-in288", "m:ab:1:avg-norm0123abcd-norm0123abcd",
                                "m:ab:1:avg-norm0123abcd-flip", "m:ab:1:avg-in288-norm0123abcd-", "m:ab:1:auto",
                                "m:ab:1:auto-flip"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        model_options before, after;
        model_options_init(&before);
        before.pool = MODEL_POOL_MAX;
        after = before;
        assert_int_equal(model_options_from_identity(bad[i], &after), MS_EINVAL);
        assert_memory_equal(&after, &before, sizeof before);
    }
    assert_int_equal(model_options_from_identity(NULL, &o), MS_EINVAL);
    pool_free();
}

/* The identity's part for a given pooling part and preprocessing flags. */
static const char *prep_id(const uint8_t *buf, size_t len, const model_options *o, char *out, size_t out_len)
{
    model *m;
    ms_err err = {0};
    assert_int_equal(model_load_buffer(buf, len, "m.onnx", o, &m, &err), 0);
    snprintf(out, out_len, "%s", strrchr(model_identity(m), ':') + 1);
    model_free(m);
    return out;
}

/* "-norm" and the first 8 hex digits of SHA-256 of the documented text of
 * the mean and scale a model loaded with o uses. */
static void norm_suffix(const uint8_t *buf, size_t len, const model_options *o, char out[16])
{
    model *m;
    ms_err err = {0};
    assert_int_equal(model_load_buffer(buf, len, "m.onnx", o, &m, &err), 0);
    const image_prep *p = model_prep(m);
    char text[192], hex[65];
    snprintf(text, sizeof text, "mean %.9g,%.9g,%.9g scale %.9g,%.9g,%.9g", (double)p->mean[0], (double)p->mean[1],
             (double)p->mean[2], (double)p->scale[0], (double)p->scale[1], (double)p->scale[2]);
    ms_sha256_hex(text, strlen(text), hex);
    snprintf(out, 16, "-norm%.8s", hex);
    model_free(m);
}

/* Preprocessing flags that change the model's own preprocessing are in the
 * identity ("-in<N>", "-norm<digest>"); flags that restate it are not, so
 * that identities of collections made without flags never change. */
static void test_prep_identity(void **state)
{
    (void)state;
    mb b;
    base(&b); /* no metadata: the declared 8 x 8 and the ImageNet convention */
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    char id[96], want[128], norm[16], norm2[16];
    model_options o;

    model_options_init(&o);
    assert_string_equal(prep_id(buf, len, &o, id, sizeof id), "output");
    o.input_size = 8;
    o.mean = "123.675,116.28,103.53";
    o.std = "58.395,57.12,57.375";
    assert_string_equal(prep_id(buf, len, &o, id, sizeof id), "output");
    o.std = NULL;
    o.scale = "0.0171247538,0.0175070028,0.0174291939"; /* 1/std, to float rounding */
    assert_string_equal(prep_id(buf, len, &o, id, sizeof id), "output");

    model_options_init(&o);
    o.input_size = 16;
    assert_string_equal(prep_id(buf, len, &o, id, sizeof id), "output-in16");

    model_options_init(&o);
    o.mean = "100";
    norm_suffix(buf, len, &o, norm);
    snprintf(want, sizeof want, "output%s", norm);
    assert_string_equal(prep_id(buf, len, &o, id, sizeof id), want);
    assert_string_equal(prep_id(buf, len, &o, id, sizeof id), want); /* the same at every load */
    o.mean = "100,100,100";
    assert_string_equal(prep_id(buf, len, &o, id, sizeof id), want); /* the values, not the text */
    o.mean = "101";
    norm_suffix(buf, len, &o, norm2);
    assert_string_not_equal(norm, norm2);
    model_options_init(&o);
    o.std = "50";
    norm_suffix(buf, len, &o, norm2);
    assert_string_not_equal(norm, norm2);
    snprintf(want, sizeof want, "output%s", norm2);
    assert_string_equal(prep_id(buf, len, &o, id, sizeof id), want);
    o.std = NULL;
    o.scale = "0.02"; /* = 1/50 */
    assert_string_equal(prep_id(buf, len, &o, id, sizeof id), want);

    /* everything at once, in the documented order, and read back */
    model_options_init(&o);
    o.pool = MODEL_POOL_GEM;
    o.flip = 1;
    o.input_size = 16;
    o.mean = "100";
    snprintf(want, sizeof want, "gem3-flip-in16%s", norm);
    assert_string_equal(prep_id(buf, len, &o, id, sizeof id), want);
    model_options back;
    model_options_init(&back);
    snprintf(want, sizeof want, "m:x:4:%s", id);
    assert_int_equal(model_options_from_identity(want, &back), 0);
    assert_true(back.pool == MODEL_POOL_GEM && back.gem_p == 3.0f && back.flip == 1 && back.bf16 == 0);
    assert_int_equal(back.input_size, 16);
    assert_null(back.mean);
    back.mean = "100"; /* the digest's values, given again */
    char again[128];
    assert_string_equal(prep_id(buf, len, &back, again, sizeof again), id);

    /* the model's own from its metadata; a bad value has no own: a flag then always differs */
    base(&b);
    mb_meta(&b, "medsearch.input_size", "16");
    mb_meta(&b, "medsearch.mean", "1,2,3");
    mb_meta(&b, "medsearch.scale", "0.25");
    buf = mb_pack(&b, &len);
    model_options_init(&o);
    o.input_size = 16;
    o.mean = "1,2,3";
    o.std = "4";
    assert_string_equal(prep_id(buf, len, &o, id, sizeof id), "output");
    o.input_size = 8;
    assert_string_equal(prep_id(buf, len, &o, id, sizeof id), "output-in8");
    base(&b);
    mb_meta(&b, "medsearch.input_size", "0");
    buf = mb_pack(&b, &len);
    model_options_init(&o);
    o.input_size = 8;
    assert_string_equal(prep_id(buf, len, &o, id, sizeof id), "output-in8");
    pool_free();
}

static void test_l2_normalise(void **state)
{
    (void)state;
    float v[2][3] = {{3, 4, 0}, {0, 0, 0}};
    model_l2_normalise(&v[0][0], 2, 3);
    assert_true(fabsf(v[0][0] - 0.6f) < 1e-7f && fabsf(v[0][1] - 0.8f) < 1e-7f);
    assert_true(v[1][0] == 0 && v[1][1] == 0 && v[1][2] == 0);
}

/* After warm-up, forwards allocate no activation memory: a batch of 4 here
 * has 2 MiB of activations (512 pages), so allocating them per forward would
 * fault hundreds of pages each time. Under ASan the allocator itself faults
 * a page now and then (oneDNN builds a small argument map per call), so this
 * test allows < 2 per forward; the release build measures exactly 0 (see
 * `medsearch bench embed` and tests/e2e/embed.sh). */
static void test_no_page_faults(void **state)
{
    (void)state;
    mb b;
    mb_init(&b);
    mb_input(&b, "input", 3, 64);
    int64_t wd[4] = {32, 3, 3, 3};
    mb_const(&b, "W", 4, wd);
    Onnx__NodeProto *c = mb_node(&b, "Conv", "conv", "input", "W", NULL, "c");
    attr_ints(c, "pads", 4, (int64_t[]){1, 1, 1, 1});
    mb_node(&b, "Relu", "relu", "c", NULL, NULL, "r");
    mb_node(&b, "GlobalAveragePool", "gap", "r", NULL, NULL, "g");
    mb_node(&b, "Flatten", "flat", "g", NULL, NULL, "features");
    mb_output(&b, "features");
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    model *m;
    ms_err err = {0};
    assert_int_equal(model_load_buffer(buf, len, "m.onnx", NULL, &m, &err), 0);
    enum { N = 4, FWD = 100 };
    float *in = calloc((size_t)N * 3 * 64 * 64, sizeof *in), out[N * 32];
    assert_non_null(in);
    for (int i = 0; i < 3; i++)
        assert_int_equal(model_forward(m, in, N, out, &err), 0);
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    for (int i = 0; i < FWD; i++)
        assert_int_equal(model_forward(m, in, N, out, &err), 0);
    getrusage(RUSAGE_SELF, &r1);
    long faults = r1.ru_minflt - r0.ru_minflt;
    print_message("minor faults over %d forwards: %ld\n", FWD, faults);
    free(in);
    model_free(m);
    pool_free();
    assert_true(faults < 2 * FWD);
}

/* Random byte mutations of a valid file: each loads (and runs) or fails
 * with a code; ASan/UBSan catch any memory error. */
static void test_mutations(void **state)
{
    (void)state;
    mb b;
    base(&b);
    size_t len;
    uint8_t *orig = mb_pack(&b, &len), *buf = malloc(len);
    assert_non_null(buf);
    uint32_t seed = 2024;
    int loaded = 0, refused = 0;
    for (int round = 0; round < 400; round++) {
        memcpy(buf, orig, len);
        int flips = 1 + round % 4;
        for (int k = 0; k < flips; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 8) % len;
            seed = seed * 1103515245u + 12345u;
            buf[at] = (uint8_t)(round % 3 == 0 ? buf[at] ^ (1u << ((seed >> 16) % 8)) : (seed >> 16));
        }
        ms_err err = {0};
        size_t cut = round % 7 == 0 ? len - (seed % (len / 2 + 1)) : len;
        int rc = try_load(buf, cut, NULL, &err);
        if (rc) {
            refused++;
            assert_true(rc < 0 && err.msg[0]);
        } else {
            loaded++;
        }
    }
    print_message("mutations: %d loaded, %d refused\n", loaded, refused);
    free(buf);
    pool_free();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_model),  cmocka_unit_test(test_bad_bytes),
        cmocka_unit_test(test_nesting_bomb), cmocka_unit_test(test_graph_errors),
        cmocka_unit_test(test_metadata),     cmocka_unit_test(test_pooling),
        cmocka_unit_test(test_pooling_auto), cmocka_unit_test(test_flip),
        cmocka_unit_test(test_feature_shares),
        cmocka_unit_test(test_options_from_identity), cmocka_unit_test(test_prep_identity),
        cmocka_unit_test(test_l2_normalise), cmocka_unit_test(test_no_page_faults),
        cmocka_unit_test(test_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
