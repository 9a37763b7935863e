/*
 * onnx.c - an ONNX file (protobuf, parsed by protobuf-c) into a `graph`.
 *
 * Every byte is untrusted. Before protobuf-c sees the buffer, a walk over the
 * wire format checks that every length fits and bounds the nesting of
 * messages (protobuf-c recurses without a limit). Then every constant's
 * element count is checked against its data, every attribute against its
 * type and range, and every op against the supported list.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/graph.h"
#include "onnx.pb-c.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ONNX raw_data is little-endian; this loader assumes a little-endian host"
#endif

#define ONNX_MAX_DEPTH 24      /* real models nest about 8 deep */
#define ONNX_MAX_INPUTS 4096   /* inputs of one node (Concat) */
#define ONNX_MAX_NAME 4096

/* ---------------------------------------------------------------- wire scan */

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end)
            return -1;
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* Walks one message's fields; descends into sub-messages the schema knows. */
static int scan_message(const uint8_t *start, const uint8_t *p, const uint8_t *end,
                        const ProtobufCMessageDescriptor *d, int depth, ms_err *err)
{
    if (depth > ONNX_MAX_DEPTH)
        return ms_err_set(err, MS_EFORMAT,
                          "not a valid ONNX file: messages nest deeper than %d levels",
                          ONNX_MAX_DEPTH);
    while (p < end) {
        size_t at = (size_t)(p - start);
        uint64_t tag, v;
        if (read_varint(&p, end, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1fffffff)
            return ms_err_set(err, MS_EFORMAT, "not a valid ONNX file: bad field tag at byte %zu", at);
        switch (tag & 7) {
        case 0:
            if (read_varint(&p, end, &v))
                return ms_err_set(err, MS_EFORMAT, "not a valid ONNX file: truncated number at byte %zu", at);
            break;
        case 1:
            if (end - p < 8)
                return ms_err_set(err, MS_EFORMAT, "not a valid ONNX file: truncated at byte %zu", at);
            p += 8;
            break;
        case 5:
            if (end - p < 4)
                return ms_err_set(err, MS_EFORMAT, "not a valid ONNX file: truncated at byte %zu", at);
            p += 4;
            break;
        case 2: {
            if (read_varint(&p, end, &v) || v > (uint64_t)(end - p))
                return ms_err_set(err, MS_EFORMAT,
                                  "not a valid ONNX file: a field at byte %zu is longer than the file", at);
            const ProtobufCFieldDescriptor *f =
                d ? protobuf_c_message_descriptor_get_field(d, (unsigned)(tag >> 3)) : NULL;
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                int rc = scan_message(start, p, p + v, f->descriptor, depth + 1, err);
                if (rc)
                    return rc;
            }
            p += v;
            break;
        }
        default:
            return ms_err_set(err, MS_EFORMAT,
                              "not a valid ONNX file: unknown wire type %u at byte %zu",
                              (unsigned)(tag & 7), at);
        }
    }
    return 0;
}

/* --------------------------------------------------------------- attributes */

typedef struct node_ctx {
    const Onnx__NodeProto *np;
    const char *name;     /* for messages */
    const char *op;
} node_ctx;

static const Onnx__AttributeProto *attr_find(const node_ctx *c, const char *name)
{
    for (size_t i = 0; i < c->np->n_attribute; i++) {
        const Onnx__AttributeProto *a = c->np->attribute[i];
        if (a && a->name && !strcmp(a->name, name))
            return a;
    }
    return NULL;
}

static int attr_bad(const node_ctx *c, const char *name, const char *want, ms_err *err)
{
    return ms_err_set(err, MS_EFORMAT, "node '%s' (%s): attribute '%s' must be %s",
                      c->name, c->op, name, want);
}

static int attr_int(const node_ctx *c, const char *name, int64_t def, int64_t lo, int64_t hi,
                    int64_t *out, ms_err *err)
{
    const Onnx__AttributeProto *a = attr_find(c, name);
    *out = def;
    if (!a)
        return 0;
    if (!a->has_i && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT)
        return attr_bad(c, name, "an integer", err);
    if (a->i < lo || a->i > hi)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (%s): attribute %s = %lld is out of range [%lld, %lld]",
                          c->name, c->op, name, (long long)a->i, (long long)lo, (long long)hi);
    *out = a->i;
    return 0;
}

static int attr_float(const node_ctx *c, const char *name, float def, float *out, int *present,
                      ms_err *err)
{
    const Onnx__AttributeProto *a = attr_find(c, name);
    *out = def;
    if (present)
        *present = a != NULL;
    if (!a)
        return 0;
    if (!a->has_f && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT)
        return attr_bad(c, name, "a float", err);
    if (a->f != a->f)
        return attr_bad(c, name, "a number (it is NaN)", err);
    *out = a->f;
    return 0;
}

/* A float attribute that must be finite: an activation's slope or scale,
 * where infinity would turn every feature into inf or NaN. */
static int attr_finite(const node_ctx *c, const char *name, float def, float *out, ms_err *err)
{
    int rc = attr_float(c, name, def, out, NULL, err);
    if (!rc && !isfinite(*out))
        return attr_bad(c, name, "a finite number", err);
    return rc;
}

/* A list of exactly `want` ints in [lo, hi]; absent leaves out[] as is and
 * sets *present to 0. A list of another length is MS_EUNSUPPORTED when
 * `dims_msg` (only 2-D is supported) else MS_EFORMAT. */
static int attr_ints(const node_ctx *c, const char *name, size_t want, int64_t lo, int64_t hi,
                     int *out, int *present, ms_err *err)
{
    const Onnx__AttributeProto *a = attr_find(c, name);
    if (present)
        *present = a != NULL;
    if (!a)
        return 0;
    if (a->n_ints == 0 && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS)
        return attr_bad(c, name, "a list of integers", err);
    if (a->n_ints != want)
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "node '%s' (%s): attribute '%s' has %zu values; only 2-D %s (%zu values) is supported",
                          c->name, c->op, name, a->n_ints, c->op, want);
    for (size_t i = 0; i < want; i++) {
        if (a->ints[i] < lo || a->ints[i] > hi)
            return ms_err_set(err, MS_EFORMAT,
                              "node '%s' (%s): attribute %s[%zu] = %lld is out of range [%lld, %lld]",
                              c->name, c->op, name, i, (long long)a->ints[i], (long long)lo, (long long)hi);
        out[i] = (int)a->ints[i];
    }
    return 0;
}

static int attr_auto_pad(const node_ctx *c, int *out, ms_err *err)
{
    const Onnx__AttributeProto *a = attr_find(c, "auto_pad");
    *out = 0;
    if (!a)
        return 0;
    if (!a->has_s && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING)
        return attr_bad(c, "auto_pad", "a string", err);
    static const char *const names[] = {"NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"};
    for (int i = 0; i < 4; i++) {
        size_t n = strlen(names[i]);
        if (a->s.len == n && !memcmp(a->s.data, names[i], n)) {
            *out = i;
            return 0;
        }
    }
    return ms_err_set(err, MS_EFORMAT, "node '%s' (%s): auto_pad '%.*s' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID",
                      c->name, c->op, (int)(a->s.len > 40 ? 40 : a->s.len), (const char *)a->s.data);
}

/* Spatial attributes shared by Conv and the pools. */
static int parse_window(const node_ctx *c, g_node *nd, int kernel_required, int has_dilation,
                        ms_err *err)
{
    int present, rc, pads[4] = {0, 0, 0, 0};
    nd->kernel[0] = nd->kernel[1] = 0;
    nd->stride[0] = nd->stride[1] = 1;
    nd->dilation[0] = nd->dilation[1] = 1;
    if ((rc = attr_ints(c, "kernel_shape", 2, 1, G_MAX_KERNEL, nd->kernel, &present, err)))
        return rc;
    if (!present && kernel_required)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (%s) has no kernel_shape", c->name, c->op);
    if ((rc = attr_ints(c, "strides", 2, 1, G_MAX_KERNEL, nd->stride, NULL, err)))
        return rc;
    if (has_dilation && (rc = attr_ints(c, "dilations", 2, 1, G_MAX_KERNEL, nd->dilation, NULL, err)))
        return rc;
    if ((rc = attr_ints(c, "pads", 4, 0, G_MAX_KERNEL, pads, NULL, err)))
        return rc;
    nd->pad_l[0] = pads[0];
    nd->pad_l[1] = pads[1];
    nd->pad_r[0] = pads[2];
    nd->pad_r[1] = pads[3];
    return attr_auto_pad(c, &nd->auto_pad, err);
}

/* Whether string attribute `name` is absent or equals want. */
static int attr_absent_or(const node_ctx *c, const char *name, const char *want)
{
    const Onnx__AttributeProto *a = attr_find(c, name);
    return !a || (a->s.len == strlen(want) && !memcmp(a->s.data, want, a->s.len));
}

/* Pad: only mode "constant". Opset < 11 gives pads and value as attributes;
 * later opsets as inputs, read by shape inference once constants are known. */
static int parse_pad(const node_ctx *c, g_node *nd, ms_err *err)
{
    if (!attr_absent_or(c, "mode", "constant")) { /* absent: constant */
        const Onnx__AttributeProto *a = attr_find(c, "mode");
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "node '%s' (Pad): mode '%.*s' is not supported; only constant (zero) padding is",
                          c->name, (int)(a->s.len > 20 ? 20 : a->s.len), (const char *)a->s.data);
    }
    int pads[8], present, rc;
    nd->beta = 0.0f; /* the padding value, 0 unless the file says otherwise */
    if ((rc = attr_ints(c, "pads", 8, -G_MAX_KERNEL, G_MAX_KERNEL, pads, &present, err)))
        return rc;
    if (!present)
        return 0;
    nd->from_attrs = 1;
    for (int ax = 0; ax < 2; ax++) {
        nd->pad_l[ax] = pads[2 + ax];
        nd->pad_r[ax] = pads[6 + ax];
    }
    if (pads[0] || pads[1] || pads[4] || pads[5])
        nd->from_attrs = -1; /* pads the batch or channels: refused with the shape */
    return attr_float(c, "value", 0.0f, &nd->beta, NULL, err);
}

/* An axes attribute (ReduceMean before opset 18, (Un)squeeze before 13); absent,
 * n_axes is -1 and the axes are input 1. */
static int parse_axes(const node_ctx *c, g_node *nd, ms_err *err)
{
    const Onnx__AttributeProto *a = attr_find(c, "axes");
    nd->n_axes = -1;
    if (!a)
        return 0;
    if (a->n_ints > G_MAX_RANK)
        return attr_bad(c, "axes", "a list of at most 6 axes", err);
    nd->n_axes = (int)a->n_ints;
    for (size_t i = 0; i < a->n_ints; i++) {
        if (a->ints[i] < -G_MAX_RANK || a->ints[i] >= G_MAX_RANK)
            return attr_bad(c, "axes", "a list of axes in [-6, 5]", err);
        nd->axes[i] = (int)a->ints[i];
    }
    return 0;
}

/* Transpose: perm, a permutation of at most 6 axes, into axes / n_axes
 * (-1 without one: the axes reversed). */
static int parse_perm(const node_ctx *c, g_node *nd, ms_err *err)
{
    const Onnx__AttributeProto *a = attr_find(c, "perm");
    nd->n_axes = -1;
    if (!a)
        return 0;
    if (a->n_ints == 0 || a->n_ints > G_MAX_RANK)
        return attr_bad(c, "perm", "a list of 1 to 6 axes", err);
    unsigned seen = 0;
    for (size_t i = 0; i < a->n_ints; i++) {
        if (a->ints[i] < 0 || a->ints[i] >= (int64_t)a->n_ints || (seen >> a->ints[i] & 1u))
            return attr_bad(c, "perm", "a permutation of the axes", err);
        seen |= 1u << a->ints[i];
        nd->axes[i] = (int)a->ints[i];
    }
    nd->n_axes = (int)a->n_ints;
    return 0;
}

/* LRN: size (required), alpha, beta and bias. alpha >= 0 and bias > 0 keep
 * the base of the power positive, so no NaN comes out of a finite input. */
static int parse_lrn(const node_ctx *c, g_node *nd, ms_err *err)
{
    if (!attr_find(c, "size"))
        return ms_err_set(err, MS_EFORMAT, "node '%s' (LRN) has no size", c->name);
    int64_t v;
    int rc = attr_int(c, "size", 1, 1, G_MAX_KERNEL, &v, err);
    if (rc || (rc = attr_finite(c, "alpha", 1e-4f, &nd->alpha, err)) ||
        (rc = attr_finite(c, "beta", 0.75f, &nd->beta, err)) || (rc = attr_finite(c, "bias", 1.0f, &nd->eps, err)))
        return rc;
    nd->kernel[0] = (int)v;
    if (v % 2 == 0) /* the window is then uneven, and oneDNN's would not be ONNX's */
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (LRN): size %lld; MedSearch runs odd sizes", c->name,
                          (long long)v);
    if (nd->alpha < 0 || nd->eps <= 0)
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (LRN): alpha %g and bias %g; MedSearch runs alpha >= 0 "
                          "and bias > 0", c->name, (double)nd->alpha, (double)nd->eps);
    return 0;
}

/* ReduceMean: axes (parse_axes) and keepdims. */
static int parse_reduce_mean(const node_ctx *c, g_node *nd, ms_err *err)
{
    int64_t v;
    int rc;
    if ((rc = attr_int(c, "keepdims", 1, 0, 1, &v, err)))
        return rc;
    nd->keepdims = (int)v;
    if ((rc = attr_int(c, "noop_with_empty_axes", 0, 0, 1, &v, err)))
        return rc;
    return parse_axes(c, nd, err);
}

/* LayerNormalization: axis and epsilon. It normalises axis..last, which
 * MedSearch runs when that is the channels: the last axis of a
 * channels-last tensor (rewrite.c lifts it), or axis 1 or -1 of [N, C]
 * (shapes.c tells once ranks are known). */
static int parse_layer_norm(const node_ctx *c, g_node *nd, ms_err *err)
{
    int64_t v;
    int rc = attr_int(c, "axis", -1, -G_MAX_RANK, G_MAX_RANK - 1, &v, err);
    if (rc)
        return rc;
    nd->axis = v == -1 || v == 3 ? G_LN_LAST : v == 1 ? G_LN_ONNX_AXIS1 : G_LN_REFUSED;
    if ((rc = attr_finite(c, "epsilon", 1e-5f, &nd->eps, err)))
        return rc;
    return nd->eps < 0 ? attr_bad(c, "epsilon", "a number >= 0", err) : 0;
}

static int parse_attributes(const node_ctx *c, g_node *nd, ms_err *err)
{
    int64_t v;
    int rc = 0;
    switch (nd->op) {
    case G_CONV:
        if ((rc = parse_window(c, nd, 0, 1, err)))
            return rc;
        if ((rc = attr_int(c, "group", 1, 1, G_MAX_DIM, &v, err)))
            return rc;
        nd->group = (int)v;
        return 0;
    case G_MAXPOOL:
    case G_AVGPOOL:
        if ((rc = parse_window(c, nd, 1, nd->op == G_MAXPOOL, err)))
            return rc;
        if ((rc = attr_int(c, "ceil_mode", 0, 0, 1, &v, err)))
            return rc;
        nd->ceil_mode = (int)v;
        if (nd->op == G_AVGPOOL) {
            if ((rc = attr_int(c, "count_include_pad", 0, 0, 1, &v, err)))
                return rc;
            nd->count_include_pad = (int)v;
        }
        if (nd->op == G_MAXPOOL && (rc = attr_int(c, "storage_order", 0, 0, 1, &v, err)))
            return rc;
        return 0;
    case G_BN:
        if ((rc = attr_float(c, "epsilon", 1e-5f, &nd->eps, NULL, err)))
            return rc;
        if (!(nd->eps >= 0.0f))
            return attr_bad(c, "epsilon", "non-negative", err);
        if ((rc = attr_int(c, "training_mode", 0, 0, 1, &v, err)))
            return rc;
        if (v)
            return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (BatchNormalization) is in training mode; export the model in eval mode", c->name);
        if ((rc = attr_int(c, "spatial", 1, 0, 1, &v, err)))
            return rc;
        if (!v)
            return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (BatchNormalization) has spatial = 0, which is not supported", c->name);
        return 0;
    case G_CLIP: {
        int has_lo, has_hi;
        if ((rc = attr_float(c, "min", -3.402823466e38f, &nd->clip_lo, &has_lo, err)) ||
            (rc = attr_float(c, "max", 3.402823466e38f, &nd->clip_hi, &has_hi, err)))
            return rc;
        nd->clip_from_attrs = has_lo || has_hi;
        return 0;
    }
    case G_GEMM:
        if ((rc = attr_float(c, "alpha", 1.0f, &nd->alpha, NULL, err)) ||
            (rc = attr_float(c, "beta", 1.0f, &nd->beta, NULL, err)))
            return rc;
        if ((rc = attr_int(c, "transA", 0, 0, 1, &v, err)))
            return rc;
        nd->trans_a = (int)v;
        if ((rc = attr_int(c, "transB", 0, 0, 1, &v, err)))
            return rc;
        nd->trans_b = (int)v;
        if (nd->trans_a)
            return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (Gemm) has transA = 1; only transA = 0 is supported", c->name);
        return 0;
    case G_FLATTEN:
        if ((rc = attr_int(c, "axis", 1, -G_MAX_RANK, G_MAX_RANK, &v, err)))
            return rc;
        nd->axis = (int)v;
        return 0;
    case G_CONCAT:
        if (!attr_find(c, "axis"))
            return ms_err_set(err, MS_EFORMAT, "node '%s' (Concat) has no axis", c->name);
        if ((rc = attr_int(c, "axis", 1, -G_MAX_RANK, G_MAX_RANK, &v, err)))
            return rc;
        nd->axis = (int)v;
        return 0;
    case G_RESHAPE:
        if ((rc = attr_int(c, "allowzero", 0, 0, 1, &v, err)))
            return rc;
        nd->axis = (int)v; /* allowzero, kept for shape inference */
        return 0;
    case G_HARDSIGMOID:
        if ((rc = attr_float(c, "alpha", 0.2f, &nd->alpha, NULL, err)) ||
            (rc = attr_float(c, "beta", 0.5f, &nd->beta, NULL, err)))
            return rc;
        return 0;
    case G_LEAKYRELU:
        return attr_finite(c, "alpha", 0.01f, &nd->alpha, err);
    case G_ELU:
        return attr_finite(c, "alpha", 1.0f, &nd->alpha, err);
    case G_SELU: /* the defaults are the ONNX spec's (Klambauer et al.'s constants) */
        if ((rc = attr_finite(c, "alpha", 1.67326319217681884765625f, &nd->alpha, err)))
            return rc;
        return attr_finite(c, "gamma", 1.05070102214813232421875f, &nd->beta, err);
    case G_LRN:
        return parse_lrn(c, nd, err);
    case G_LAYERNORM:
        return parse_layer_norm(c, nd, err);
    case G_GELU:
        if (attr_absent_or(c, "approximate", "none"))
            return 0;
        if (!attr_absent_or(c, "approximate", "tanh"))
            return attr_bad(c, "approximate", "\"none\" or \"tanh\"", err);
        nd->op = G_GELU_TANH;
        return 0;
    case G_PAD:
        return parse_pad(c, nd, err);
    case G_GAP:
        return strcmp(c->op, "ReduceMean") ? 0 : parse_reduce_mean(c, nd, err);
    case G_UNSQUEEZE:
    case G_SQUEEZE:
        return parse_axes(c, nd, err);
    case G_TRANSPOSE:
        return parse_perm(c, nd, err);
    case G_GATHER:
        if ((rc = attr_int(c, "axis", 0, -G_MAX_RANK, G_MAX_RANK, &v, err)))
            return rc;
        nd->axis = (int)v;
        return 0;
    case G_SHAPE:
        if ((rc = attr_int(c, "start", 0, -G_MAX_RANK, G_MAX_RANK, &v, err)))
            return rc;
        nd->shape_start = (int)v;
        if ((rc = attr_int(c, "end", G_MAX_RANK, -G_MAX_RANK, INT64_MAX, &v, err)))
            return rc;
        nd->shape_end = v > G_MAX_RANK ? G_MAX_RANK : (int)v;
        return 0;
    default:
        return 0;
    }
}

/* ---------------------------------------------------------------- constants */

static const char *type_name(int32_t t)
{
    static const char *const names[] = {"UNDEFINED", "FLOAT", "UINT8", "INT8", "UINT16", "INT16",
                                        "INT32", "INT64", "STRING", "BOOL", "FLOAT16", "DOUBLE",
                                        "UINT32", "UINT64", "COMPLEX64", "COMPLEX128", "BFLOAT16"};
    return t >= 0 && t <= 16 ? names[t] : "unknown";
}

/* Takes the bytes of raw_data when they are aligned (they come from malloc),
 * so a 100 MB model is not copied a second time; copies otherwise. */
static void *take_raw(Onnx__TensorProto *tp)
{
    void *p = tp->raw_data.data;
    if (((uintptr_t)p & 7u) == 0) {
        tp->raw_data.data = NULL;
        tp->raw_data.len = 0;
        return p;
    }
    void *copy = malloc(tp->raw_data.len);
    if (copy)
        memcpy(copy, p, tp->raw_data.len);
    return copy;
}

/* IEEE half precision bits to float: exact, as every half is a float. */
static float half_to_float(uint16_t h)
{
    unsigned exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    float f = exp == 0    ? ldexpf((float)man, -24) /* zero and subnormals */
              : exp == 31 ? (man ? NAN : INFINITY)
                          : ldexpf((float)(man | 0x400u), (int)exp - 25);
    return (h & 0x8000u) ? -f : f;
}

/* A FLOAT16 or BFLOAT16 tensor (fp16-converted models, bf16 exports),
 * widened to float32: from raw_data (2 bytes each, little-endian) or from
 * int32_data, which holds each value's 16 bits. */
static int half_constant(g_tensor *t, const Onnx__TensorProto *tp, int has_raw, int bf16, ms_err *err)
{
    size_t n = (size_t)t->count;
    size_t held = has_raw ? tp->raw_data.len / 2 : tp->n_int32_data;
    if ((has_raw && tp->raw_data.len != n * 2) || held != n)
        return ms_err_set(err, MS_EFORMAT, "tensor '%s' claims %lld 16-bit floats but holds %zu", t->name,
                          (long long)t->count, held);
    t->elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    if (!(t->f = malloc((n ? n : 1) * sizeof *t->f)))
        return ms_err_set(err, MS_ENOMEM, "out of memory reading tensor '%s'", t->name);
    for (size_t i = 0; i < n; i++) {
        uint16_t h = has_raw ? (uint16_t)(tp->raw_data.data[2 * i] | tp->raw_data.data[2 * i + 1] << 8)
                             : (uint16_t)tp->int32_data[i];
        if (bf16) {
            uint32_t bits = (uint32_t)h << 16;
            memcpy(&t->f[i], &bits, sizeof bits);
        } else {
            t->f[i] = half_to_float(h);
        }
    }
    return 0;
}

static int constant_data(g_tensor *t, Onnx__TensorProto *tp, int may_take, ms_err *err)
{
    int32_t dt = tp->has_data_type ? tp->data_type : 0;
    size_t n = (size_t)t->count;
    int has_raw = tp->raw_data.data != NULL || tp->has_raw_data;
    if (dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT) {
        t->elem_type = dt;
        if (has_raw && tp->raw_data.len != n * 4)
            return ms_err_set(err, MS_EFORMAT, "tensor '%s' claims %lld floats but its raw_data holds %zu bytes",
                              t->name, (long long)t->count, tp->raw_data.len);
        if (!has_raw && tp->n_float_data != n)
            return ms_err_set(err, MS_EFORMAT, "tensor '%s' claims %lld floats but holds %zu",
                              t->name, (long long)t->count, tp->n_float_data);
        if (n == 0)
            return 0;
        if (has_raw && may_take) {
            t->f = take_raw(tp);
        } else if (!has_raw && may_take) {
            t->f = tp->float_data; /* taken over, like raw_data */
            tp->float_data = NULL;
            tp->n_float_data = 0;
        } else if ((t->f = malloc(n * sizeof *t->f))) {
            memcpy(t->f, has_raw ? (const void *)tp->raw_data.data : (const void *)tp->float_data, n * 4);
        }
        return t->f ? 0 : ms_err_set(err, MS_ENOMEM, "out of memory reading tensor '%s'", t->name);
    }
    if (dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT64 || dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT32) {
        size_t esz = dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT64 ? 8 : 4;
        size_t held = has_raw ? tp->raw_data.len / esz
                              : (esz == 8 ? tp->n_int64_data : tp->n_int32_data);
        if ((has_raw && tp->raw_data.len != n * esz) || held != n)
            return ms_err_set(err, MS_EFORMAT, "tensor '%s' claims %lld integers but holds %zu",
                              t->name, (long long)t->count, held);
        t->elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
        t->i64 = malloc((n ? n : 1) * sizeof *t->i64);
        if (!t->i64)
            return ms_err_set(err, MS_ENOMEM, "out of memory reading tensor '%s'", t->name);
        for (size_t i = 0; i < n; i++) {
            if (esz == 8 && has_raw)
                memcpy(&t->i64[i], tp->raw_data.data + 8 * i, 8);
            else if (esz == 8)
                t->i64[i] = tp->int64_data[i];
            else if (has_raw) {
                int32_t v;
                memcpy(&v, tp->raw_data.data + 4 * i, 4);
                t->i64[i] = v;
            } else
                t->i64[i] = tp->int32_data[i];
        }
        return 0;
    }
    if (dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16 || dt == ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16)
        return half_constant(t, tp, has_raw, dt == ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16, err);
    return ms_err_set(err, MS_EUNSUPPORTED,
                      "tensor '%s' has data type %s; MedSearch reads FLOAT, FLOAT16 and BFLOAT16 tensors (and INT64 "
                      "shapes)", t->name, type_name(dt));
}

static int add_constant(graph *g, Onnx__TensorProto *tp, const char *name, int may_take, ms_err *err)
{
    if (!name || !*name)
        return ms_err_set(err, MS_EFORMAT, "an initializer has no name");
    if ((tp->has_data_location && tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) ||
        tp->n_external_data)
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "tensor '%s' keeps its data in an external file, which MedSearch does not read; "
                          "save the model with its weights inside the .onnx file", name);
    if (tp->segment)
        return ms_err_set(err, MS_EUNSUPPORTED, "tensor '%s' is segmented, which is not supported", name);
    if (tp->n_dims > G_MAX_RANK)
        return ms_err_set(err, MS_EUNSUPPORTED, "tensor '%s' has rank %zu; at most %d is supported",
                          name, tp->n_dims, G_MAX_RANK);
    int64_t count = 1;
    for (size_t i = 0; i < tp->n_dims; i++) {
        int64_t d = tp->dims[i];
        if (d < 0)
            return ms_err_set(err, MS_EFORMAT, "tensor '%s' has a negative dimension (%lld)", name, (long long)d);
        if (d > G_MAX_CONST_ELEMS || (d && count > G_MAX_CONST_ELEMS / d))
            return ms_err_set(err, MS_EFORMAT, "tensor '%s' claims more than %lld elements, an absurd size",
                              name, (long long)G_MAX_CONST_ELEMS);
        count *= d;
    }
    int idx = graph_intern(g, name, err);
    if (idx < 0)
        return idx;
    g_tensor *t = &g->t[idx];
    if (t->is_const)
        return ms_err_set(err, MS_EFORMAT, "constant '%s' is defined twice", name);
    t->is_const = 1;
    t->rank = (int)tp->n_dims;
    for (size_t i = 0; i < tp->n_dims; i++)
        t->dims[i] = tp->dims[i];
    t->count = count;
    t->shaped = 1;
    return constant_data(t, tp, may_take, err);
}

/* A Constant node: its value becomes a constant tensor like an initializer. */
static int add_constant_node(graph *g, const node_ctx *c, ms_err *err)
{
    const Onnx__NodeProto *np = c->np;
    if (np->n_output < 1 || !np->output[0] || !*np->output[0])
        return ms_err_set(err, MS_EFORMAT, "node '%s' (Constant) has no output", c->name);
    const Onnx__AttributeProto *a = attr_find(c, "value");
    if (a && a->t)
        return add_constant(g, a->t, np->output[0], 1, err);
    Onnx__TensorProto tp = ONNX__TENSOR_PROTO__INIT;
    int64_t one = 1;
    float fval;
    int64_t ival;
    if ((a = attr_find(c, "value_float"))) {
        fval = a->f;
        tp.data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
        tp.n_float_data = 1;
        tp.float_data = &fval;
    } else if ((a = attr_find(c, "value_floats"))) {
        tp.data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
        tp.n_dims = 1;
        one = (int64_t)a->n_floats;
        tp.n_float_data = a->n_floats;
        tp.float_data = a->floats;
    } else if ((a = attr_find(c, "value_int"))) {
        ival = a->i;
        tp.data_type = ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
        tp.n_int64_data = 1;
        tp.int64_data = &ival;
    } else if ((a = attr_find(c, "value_ints"))) {
        tp.data_type = ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
        tp.n_dims = 1;
        one = (int64_t)a->n_ints;
        tp.n_int64_data = a->n_ints;
        tp.int64_data = a->ints;
    } else {
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (Constant) has no value MedSearch can read", c->name);
    }
    tp.has_data_type = 1;
    tp.dims = &one;
    /* Copied: the arrays belong to the attribute or to this stack frame. */
    return add_constant(g, &tp, np->output[0], 0, err);
}

/* -------------------------------------------------------------------- nodes */

/* ONNX op -> the op that runs it, and the op it is counted as in op_count. */
static const struct {
    const char *name;
    g_op op, counted;
    int min_in, max_in;
} op_table[] = {
    {"Conv", G_CONV, G_CONV, 2, 3},
    {"BatchNormalization", G_BN, G_BN, 5, 5},
    {"Relu", G_RELU, G_RELU, 1, 1},
    {"Clip", G_CLIP, G_CLIP, 1, 3},
    {"Sigmoid", G_SIGMOID, G_SIGMOID, 1, 1},
    {"HardSigmoid", G_HARDSIGMOID, G_HARDSIGMOID, 1, 1},
    {"HardSwish", G_HARDSWISH, G_HARDSWISH, 1, 1},
    {"LeakyRelu", G_LEAKYRELU, G_LEAKYRELU, 1, 1},
    {"PRelu", G_PRELU, G_PRELU, 2, 2},
    {"Elu", G_ELU, G_ELU, 1, 1},
    {"Selu", G_SELU, G_SELU, 1, 1},
    {"Tanh", G_TANH, G_TANH, 1, 1},
    {"Softplus", G_SOFTPLUS, G_SOFTPLUS, 1, 1},
    {"LRN", G_LRN, G_LRN, 1, 1},
    {"Transpose", G_TRANSPOSE, G_TRANSPOSE, 1, 1},
    {"Add", G_ADD, G_ADD, 2, 2},
    {"Sub", G_SUB, G_SUB, 2, 2},
    {"Mul", G_MUL, G_MUL, 2, 2},
    {"Div", G_DIV, G_DIV, 2, 2},
    {"Pad", G_PAD, G_PAD, 1, 4},
    {"MaxPool", G_MAXPOOL, G_MAXPOOL, 1, 1},
    {"AveragePool", G_AVGPOOL, G_AVGPOOL, 1, 1},
    {"GlobalAveragePool", G_GAP, G_GAP, 1, 1},
    {"GlobalMaxPool", G_GMP, G_GMP, 1, 1},
    {"Shape", G_SHAPE, G_SHAPE, 1, 1},
    {"Gather", G_GATHER, G_GATHER, 2, 2},
    {"Unsqueeze", G_UNSQUEEZE, G_UNSQUEEZE, 1, 2},
    {"Squeeze", G_SQUEEZE, G_SQUEEZE, 1, 2},
    {"ReduceMean", G_GAP, G_REDUCEMEAN, 1, 2},
    {"Flatten", G_FLATTEN, G_FLATTEN, 1, 1},
    {"Reshape", G_RESHAPE, G_RESHAPE, 2, 2},
    {"Gemm", G_GEMM, G_GEMM, 2, 3},
    {"Concat", G_CONCAT, G_CONCAT, 1, ONNX_MAX_INPUTS},
    {"Identity", G_IDENTITY, G_IDENTITY, 1, 1},
    {"Dropout", G_IDENTITY, G_DROPOUT, 1, 3},
    {"Cast", G_IDENTITY, G_CAST, 1, 1},
    {"LayerNormalization", G_LAYERNORM, G_LAYERNORM, 2, 3},
    {"Gelu", G_GELU, G_GELU, 1, 1},
    /* run only as what rewrite.c makes of them */
    {"MatMul", G_UNSUPPORTED, G_MATMUL, 2, 2},
    {"Erf", G_UNSUPPORTED, G_ERF, 1, 1},
    {"Pow", G_UNSUPPORTED, G_POW, 2, 2},
    {"Sqrt", G_UNSUPPORTED, G_SQRT, 1, 1},
};

int onnx_unsupported(const graph *g, const g_node *nd, int feature, ms_err *err)
{
    char list[512];
    size_t used = 0;
    for (size_t i = 0; i < sizeof op_table / sizeof op_table[0] && used < sizeof list; i++)
        if (op_table[i].op != G_TRANSPOSE && op_table[i].op != G_UNSUPPORTED)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", op_table[i].name);
    /* ops MedSearch runs in one form only say which */
    static const struct {
        const char *op, *only;
    } forms[] = {
        {"Transpose", " other than from an NHWC image input to NCHW, or around ops on the channels of a channels-last "
                      "tensor (ConvNeXt)"},
        {"Cast", " other than to a float type"},
        {"LayerNormalization", " other than over the channels (of [N, C], or the last axis of a channels-last "
                               "tensor between Transposes)"},
        {"MatMul", " other than on the channels of a channels-last tensor (ConvNeXt's pointwise layers)"},
        {"Erf", " other than in GELU (x * 0.5 * (1 + Erf(x / sqrt(2))))"},
        {"Pow", " other than in a layer normalisation over the channels"},
        {"Sqrt", " other than in a layer normalisation over the channels"},
    };
    const char *only = "";
    for (size_t i = 0; i < sizeof forms / sizeof *forms; i++)
        if (!strcmp(nd->op_type, forms[i].op))
            only = forms[i].only;
    return ms_err_set(err, MS_EUNSUPPORTED,
                      "node '%s' uses op '%s', which MedSearch does not support%s (supported: %s); the feature '%s' "
                      "depends on it (--output can name a tensor computed before it)",
                      nd->name, nd->op_type, only, list, g->t[feature].name);
}

/* Dropout runs as Identity: it must not be in training mode. Its ratio is
 * not read; its mask (output 1), like any extra output, is never computed. */
static int dropout_for_inference(const node_ctx *c, const Onnx__NodeProto *np, ms_err *err)
{
    if (np->n_input > 2 && np->input[2] && *np->input[2])
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "node '%s' (Dropout) has a training_mode input; export the model in eval mode", c->name);
    int64_t v;
    int rc = attr_int(c, "is_test", 1, 0, 1, &v, err);
    if (!rc && !v)
        rc = ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (Dropout) has is_test = 0; export the model in eval mode",
                        c->name);
    return rc;
}

/* Whether a Cast node casts to a float type: then it changes nothing here,
 * where everything is computed in float32 (a model converted to float16
 * casts its input and output). A cast to an integer or other type is an op
 * MedSearch does not run. */
static int casts_to_float(const node_ctx *c)
{
    const Onnx__AttributeProto *a = attr_find(c, "to");
    if (!a)
        return 0;
    return a->i == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT || a->i == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16 ||
           a->i == ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16 || a->i == ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE;
}

static int add_node(graph *g, const Onnx__NodeProto *np, int index, ms_err *err)
{
    char fallback[64];
    node_ctx c = {np, np->name, np->op_type ? np->op_type : ""};
    if (!c.name || !*c.name) {
        snprintf(fallback, sizeof fallback, "#%d", index);
        c.name = fallback;
    }
    if (strlen(c.name) > ONNX_MAX_NAME || strlen(c.op) > ONNX_MAX_NAME)
        return ms_err_set(err, MS_EFORMAT, "node #%d has a name longer than %d bytes", index, ONNX_MAX_NAME);
    const char *domain = np->domain ? np->domain : "";
    int foreign = *domain && strcmp(domain, "ai.onnx");
    if (!foreign && !strcmp(c.op, "Constant")) {
        g->op_count[G_OP_COUNT]++;
        return add_constant_node(g, &c, err);
    }
    size_t k = 0, n_ops = sizeof op_table / sizeof op_table[0];
    while (!foreign && k < n_ops && strcmp(op_table[k].name, c.op))
        k++;
    /* An op MedSearch does not run is kept as G_UNSUPPORTED, refused only if
     * the feature needs it (graph_prune); its name keeps a foreign domain. */
    int known = !foreign && k < n_ops;
    int min_in = known ? op_table[k].min_in : 0, max_in = known ? op_table[k].max_in : ONNX_MAX_INPUTS;
    if ((int)np->n_input < min_in || (int)np->n_input > max_in)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (%s) has %zu inputs; it takes %d to %d",
                          c.name, c.op, np->n_input, min_in, max_in);
    if (np->n_output < 1 || !np->output[0] || !*np->output[0])
        return ms_err_set(err, MS_EFORMAT, "node '%s' (%s) has no output", c.name, c.op);
    char qualified[2 * ONNX_MAX_NAME + 2];
    snprintf(qualified, sizeof qualified, "%s%s%s", foreign ? domain : "", foreign ? "." : "", c.op);

    g_op op = known ? op_table[k].op : G_UNSUPPORTED, counted = known ? op_table[k].counted : G_UNSUPPORTED;
    if (counted == G_CAST && !casts_to_float(&c))
        op = counted = G_UNSUPPORTED;
    int ni = graph_add_node(g, op, c.name, qualified, err);
    if (ni < 0)
        return ni;
    g->op_count[counted]++;
    if (known && op_table[k].counted == G_DROPOUT) {
        int rc = dropout_for_inference(&c, np, err);
        if (rc)
            return rc;
    }
    g_node *nd = &g->n[ni];
    nd->in = malloc((np->n_input ? np->n_input : 1) * sizeof *nd->in); /* an unsupported op may have none */
    if (!nd->in)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    nd->n_in = known && op_table[k].counted == G_DROPOUT ? 1 : (int)np->n_input;
    for (size_t i = 0; i < (size_t)nd->n_in; i++) {
        const char *in = np->input[i];
        if (!in || !*in) {
            nd->in[i] = -1;
            continue;
        }
        int t = graph_intern(g, in, err);
        if (t < 0)
            return t;
        nd->in[i] = t; /* interning adds tensors, never nodes: nd stays valid */
    }
    int out = graph_intern(g, np->output[0], err);
    if (out < 0)
        return out;
    nd = &g->n[ni];
    if (g->t[out].producer != -1 || g->t[out].is_const)
        return ms_err_set(err, MS_EFORMAT, "tensor '%s' is produced twice (again by node '%s')",
                          np->output[0], c.name);
    nd->out = out;
    g->t[out].producer = ni;
    /* Extra outputs (BatchNormalization statistics, MaxPool indices) are not
     * computed: mark them so a node reading one gets a clear error. */
    for (size_t i = 1; i < np->n_output; i++) {
        if (!np->output[i] || !*np->output[i])
            continue;
        int x = graph_intern(g, np->output[i], err);
        if (x < 0)
            return x;
        if (g->t[x].producer != -1 || g->t[x].is_const)
            return ms_err_set(err, MS_EFORMAT, "tensor '%s' is produced twice", np->output[i]);
        g->t[x].producer = -2 - ni;
    }
    return parse_attributes(&c, &g->n[ni], err);
}

/* -------------------------------------------------------------------- input */

static int is_nhwc_to_nchw(const g_node *nd)
{
    return nd->op == G_TRANSPOSE && nd->n_axes == 4 && nd->axes[0] == 0 && nd->axes[1] == 3 && nd->axes[2] == 1 &&
           nd->axes[3] == 2;
}

/* A model written for channels-last images (Keras through tf2onnx, or
 * x.permute(0, 3, 1, 2) first thing in PyTorch) takes [N, H, W, C] and
 * transposes it to NCHW before anything else. MedSearch feeds NCHW, so when
 * every node reading the input is that Transpose, their readers read the
 * input itself instead and the Transposes are dead (kept as an Identity
 * only when their output is also a graph output); the caller permutes the
 * declared shape. Returns 0 when there is no such Transpose, 1 when folded,
 * or an error code. */
static int fold_input_transpose(graph *g, ms_err *err)
{
    int folded = 0;
    const g_node *other = NULL, *first = NULL;
    for (int i = 0; i < g->nn; i++)
        for (int k = 0; k < g->n[i].n_in; k++)
            if (g->n[i].in[k] == g->input) {
                if (k == 0 && is_nhwc_to_nchw(&g->n[i]))
                    first = first ? first : &g->n[i];
                else
                    other = other ? other : &g->n[i];
            }
    if (!first)
        return 0;
    if (other)
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "node '%s' (Transpose) turns the input '%s' from NHWC into NCHW, and node '%s' (%s) reads "
                          "it as it is; MedSearch feeds NCHW and folds the Transpose only when nothing else reads "
                          "the input", first->name, g->t[g->input].name, other->name, other->op_type);
    for (int i = 0; i < g->nn; i++) {
        g_node *t = &g->n[i];
        if (t->n_in < 1 || t->in[0] != g->input || !is_nhwc_to_nchw(t))
            continue;
        for (int j = 0; j < g->nn; j++)
            for (int k = 0; k < g->n[j].n_in; k++)
                if (g->n[j].in[k] == t->out)
                    g->n[j].in[k] = g->input;
        t->op = G_IDENTITY;
        t->dead = 1;
        for (int o = 0; o < g->n_outputs; o++)
            if (g->outputs[o] == t->out)
                t->dead = 0;
        folded = 1;
    }
    return folded;
}

/* Every Transpose not folded above is an op MedSearch does not run. */
static void refuse_other_transposes(graph *g)
{
    for (int i = 0; i < g->nn; i++)
        if (g->n[i].op == G_TRANSPOSE) {
            g->n[i].op = G_UNSUPPORTED;
            g->op_count[G_TRANSPOSE]--;
            g->op_count[G_UNSUPPORTED]++;
        }
}

/* The declared shape of the image input into g->input_decl (-1 where
 * symbolic or not given). */
static int read_input_shape(graph *g, const Onnx__ValueInfoProto *vi, ms_err *err)
{
    const Onnx__TypeProto *tp = vi->type;
    if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type)
        return 0; /* no type: assume [N, 3, S, S] float */
    const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
    /* A FLOAT16 or BFLOAT16 input is fed float32: every op here runs in float32. */
    if (tt->has_elem_type && tt->elem_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT &&
        tt->elem_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16 &&
        tt->elem_type != ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16)
        return ms_err_set(err, MS_EUNSUPPORTED, "input '%s' has element type %s; MedSearch feeds FLOAT",
                          vi->name, type_name(tt->elem_type));
    if (!tt->shape)
        return 0;
    if (tt->shape->n_dim != 4)
        return ms_err_set(err, MS_EUNSUPPORTED, "input '%s' has rank %zu; MedSearch feeds images as [N, 3, H, W]",
                          vi->name, tt->shape->n_dim);
    for (int i = 0; i < 4; i++) {
        const Onnx__TensorShapeProto__Dimension *d = tt->shape->dim[i];
        if (d && d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE) {
            if (d->dim_value < 1 || d->dim_value > G_MAX_DIM)
                return ms_err_set(err, MS_EFORMAT, "input '%s' declares dimension %d as %lld",
                                  vi->name, i, (long long)d->dim_value);
            g->input_decl[i] = d->dim_value;
        }
    }
    return 0;
}

static int parse_input(graph *g, const Onnx__ValueInfoProto *vi, ms_err *err)
{
    int idx = graph_intern(g, vi->name, err);
    if (idx < 0)
        return idx;
    g->input = idx;
    g->t[idx].is_input = 1;
    for (int i = 0; i < 4; i++)
        g->input_decl[i] = -1;
    return read_input_shape(g, vi, err);
}

/* Once nodes, input and outputs are known: the NHWC input's Transpose
 * folded, and the channel count checked. */
static int settle_input_layout(graph *g, ms_err *err)
{
    int rc = fold_input_transpose(g, err);
    if (rc < 0)
        return rc;
    refuse_other_transposes(g);
    if (rc == 1) {
        int64_t nhwc[4] = {g->input_decl[0], g->input_decl[1], g->input_decl[2], g->input_decl[3]};
        g->input_decl[1] = nhwc[3];
        g->input_decl[2] = nhwc[1];
        g->input_decl[3] = nhwc[2];
        g->input_nhwc = 1;
    }
    if (g->input_decl[1] != -1 && g->input_decl[1] != 3 && g->input_decl[1] != 1)
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "input '%s' has %lld channels%s; MedSearch feeds 3 (grey replicated) or one grey channel",
                          g->t[g->input].name, (long long)g->input_decl[1],
                          g->input_nhwc ? " (NHWC, as its Transpose reads it)" : "");
    g->input_channels = g->input_decl[1] == 1 ? 1 : 3;
    return 0;
}

/* -------------------------------------------------------------------- model */

static char *dup_str(const char *s)
{
    size_t n = strlen(s ? s : "");
    char *d = malloc(n + 1);
    if (d)
        memcpy(d, s ? s : "", n + 1);
    return d;
}

static int parse_header(graph *g, const Onnx__ModelProto *mp, ms_err *err)
{
    g->ir_version = mp->has_ir_version ? mp->ir_version : 0;
    for (size_t i = 0; i < mp->n_opset_import; i++) {
        const Onnx__OperatorSetIdProto *o = mp->opset_import[i];
        if (o && (!o->domain || !*o->domain || !strcmp(o->domain, "ai.onnx")) && o->has_version)
            g->opset = o->version;
    }
    char prod[256];
    snprintf(prod, sizeof prod, "%.120s%s%.120s", mp->producer_name ? mp->producer_name : "",
             mp->producer_version && *mp->producer_version ? " " : "",
             mp->producer_version ? mp->producer_version : "");
    if (!(g->producer = dup_str(prod)))
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    if (mp->n_metadata_props) {
        g->meta = calloc(mp->n_metadata_props, sizeof *g->meta);
        if (!g->meta)
            return ms_err_set(err, MS_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < mp->n_metadata_props; i++) {
        const Onnx__StringStringEntryProto *e = mp->metadata_props[i];
        if (!e || !e->key)
            continue;
        g_meta *m = &g->meta[g->n_meta++];
        m->key = dup_str(e->key);
        m->value = dup_str(e->value);
        if (!m->key || !m->value)
            return ms_err_set(err, MS_ENOMEM, "out of memory");
    }
    return 0;
}

static int build_graph(graph *g, Onnx__ModelProto *mp, ms_err *err)
{
    int rc = parse_header(g, mp, err);
    if (rc)
        return rc;
    Onnx__GraphProto *gp = mp->graph;
    if (!gp)
        return ms_err_set(err, MS_EFORMAT, "the ONNX model has no graph");
    if (gp->n_node == 0)
        return ms_err_set(err, MS_EFORMAT, "the ONNX graph has no nodes");
    if (gp->n_node > G_MAX_NODES)
        return ms_err_set(err, MS_ETOOBIG, "the ONNX graph has %zu nodes, over the %d limit", gp->n_node, G_MAX_NODES);
    if (gp->n_sparse_initializer)
        return ms_err_set(err, MS_EUNSUPPORTED, "the model has sparse initializers, which are not supported");
    for (size_t i = 0; i < gp->n_initializer; i++) {
        if ((rc = add_constant(g, gp->initializer[i], gp->initializer[i]->name, 1, err)))
            return rc;
        if (g->t[graph_find(g, gp->initializer[i]->name)].elem_type == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT)
            g->params += g->t[graph_find(g, gp->initializer[i]->name)].count;
    }
    for (size_t i = 0; i < gp->n_node; i++)
        if (gp->node[i] && (rc = add_node(g, gp->node[i], (int)i, err)))
            return rc;

    /* The image input is the one graph input that is not a constant (old IR
     * versions list initializers among the inputs). */
    int n_inputs = 0;
    const char *first = NULL, *second = NULL;
    for (size_t i = 0; i < gp->n_input; i++) {
        const Onnx__ValueInfoProto *vi = gp->input[i];
        if (!vi || !vi->name || !*vi->name)
            return ms_err_set(err, MS_EFORMAT, "graph input %zu has no name", i);
        int t = graph_find(g, vi->name);
        if (t >= 0 && g->t[t].is_const)
            continue;
        if (n_inputs++ == 0) {
            first = vi->name;
            if ((rc = parse_input(g, vi, err)))
                return rc;
        } else if (!second) {
            second = vi->name;
        }
    }
    if (n_inputs == 0)
        return ms_err_set(err, MS_EFORMAT, "the model has no input");
    if (n_inputs > 1)
        return ms_err_set(err, MS_EUNSUPPORTED, "the model has %d inputs ('%s', '%s', ...); MedSearch feeds one image tensor",
                          n_inputs, first, second);
    if (g->t[g->input].producer != -1)
        return ms_err_set(err, MS_EFORMAT, "input '%s' is also produced by a node", first);

    if (gp->n_output == 0)
        return ms_err_set(err, MS_EFORMAT, "the model has no output");
    g->outputs = malloc(gp->n_output * sizeof *g->outputs);
    if (!g->outputs)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    for (size_t i = 0; i < gp->n_output; i++) {
        if (!gp->output[i] || !gp->output[i]->name || !*gp->output[i]->name)
            return ms_err_set(err, MS_EFORMAT, "graph output %zu has no name", i);
        int t = graph_intern(g, gp->output[i]->name, err);
        if (t < 0)
            return t;
        g->outputs[g->n_outputs++] = t;
    }
    return settle_input_layout(g, err);
}

int onnx_parse(const void *buf, size_t len, graph *g, ms_err *err)
{
    if (!buf || len == 0)
        return ms_err_set(err, MS_EFORMAT, "not an ONNX model: the file is empty");
    int rc = scan_message(buf, buf, (const uint8_t *)buf + len, &onnx__model_proto__descriptor, 0, err);
    if (rc)
        return rc;
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, len, buf);
    if (!mp)
        return ms_err_set(err, MS_EFORMAT, "not an ONNX model: the protobuf does not decode as a ModelProto");
    rc = build_graph(g, mp, err);
    onnx__model_proto__free_unpacked(mp, NULL);
    return rc;
}
