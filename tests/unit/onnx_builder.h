/*
 * onnx_builder.h - builds small ONNX models in memory with protobuf-c, for
 * the tests that need a model without a file from shared/: the model unit
 * tests (valid and hostile graphs) and the HTTP fuzz target (a tiny network
 * behind a real server).
 *
 * Everything the builder allocates is kept in one pool and freed together
 * by pool_free(); an allocation failure aborts (test code). Typical use:
 * mb_init, mb_input, mb_const for the weights, mb_node per operator (attr_*
 * for its attributes), mb_output, then mb_pack for the file's bytes.
 */
#ifndef MS_ONNX_BUILDER_H
#define MS_ONNX_BUILDER_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "onnx.pb-c.h"

/* Everything the builder allocates, freed by pool_free(). */
static void *pool[4096];
static int n_pool;

static inline void *palloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p || n_pool >= (int)(sizeof pool / sizeof pool[0]))
        abort();
    pool[n_pool++] = p;
    return p;
}

static inline char *pstr(const char *s)
{
    char *d = palloc(strlen(s) + 1);
    strcpy(d, s);
    return d;
}

static inline void pool_free(void)
{
    while (n_pool)
        free(pool[--n_pool]);
}

typedef struct mb {
    Onnx__ModelProto m;
    Onnx__GraphProto g;
    Onnx__OperatorSetIdProto opset;
    Onnx__OperatorSetIdProto *opsets[1];
    Onnx__NodeProto *nodes[64];
    Onnx__TensorProto *inits[64];
    Onnx__ValueInfoProto *inputs[4], *outputs[4];
    Onnx__StringStringEntryProto *meta[8];
} mb;

static inline void mb_init(mb *b)
{
    memset(b, 0, sizeof *b);
    onnx__model_proto__init(&b->m);
    onnx__graph_proto__init(&b->g);
    onnx__operator_set_id_proto__init(&b->opset);
    b->opset.has_version = 1;
    b->opset.version = 13;
    b->opset.domain = pstr("");
    b->opsets[0] = &b->opset;
    b->m.n_opset_import = 1;
    b->m.opset_import = b->opsets;
    b->m.has_ir_version = 1;
    b->m.ir_version = 7;
    b->m.graph = &b->g;
    b->g.node = b->nodes;
    b->g.initializer = b->inits;
    b->g.input = b->inputs;
    b->g.output = b->outputs;
    b->m.metadata_props = b->meta;
}

static inline Onnx__ValueInfoProto *value_info(const char *name, int rank, const int64_t *dims)
{
    Onnx__ValueInfoProto *v = palloc(sizeof *v);
    onnx__value_info_proto__init(v);
    v->name = pstr(name);
    if (rank < 0)
        return v;
    Onnx__TypeProto *tp = palloc(sizeof *tp);
    onnx__type_proto__init(tp);
    Onnx__TypeProto__Tensor *tt = palloc(sizeof *tt);
    onnx__type_proto__tensor__init(tt);
    tt->has_elem_type = 1;
    tt->elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    Onnx__TensorShapeProto *sh = palloc(sizeof *sh);
    onnx__tensor_shape_proto__init(sh);
    sh->n_dim = (size_t)rank;
    sh->dim = palloc((size_t)rank * sizeof *sh->dim);
    for (int i = 0; i < rank; i++) {
        Onnx__TensorShapeProto__Dimension *d = palloc(sizeof *d);
        onnx__tensor_shape_proto__dimension__init(d);
        if (dims[i] < 0) {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            d->dim_param = pstr("batch");
        } else {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            d->dim_value = dims[i];
        }
        sh->dim[i] = d;
    }
    tt->shape = sh;
    tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    tp->tensor_type = tt;
    v->type = tp;
    return v;
}

static inline void mb_input(mb *b, const char *name, int64_t c, int64_t s)
{
    int64_t dims[4] = {-1, c, s, s};
    b->inputs[b->g.n_input++] = value_info(name, 4, dims);
}

static inline void mb_output(mb *b, const char *name)
{
    b->outputs[b->g.n_output++] = value_info(name, -1, NULL);
}

/* A float initializer filled with a deterministic pattern (raw_data). */
static inline Onnx__TensorProto *mb_const(mb *b, const char *name, int rank, const int64_t *dims)
{
    Onnx__TensorProto *t = palloc(sizeof *t);
    onnx__tensor_proto__init(t);
    t->name = pstr(name);
    t->has_data_type = 1;
    t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    t->n_dims = (size_t)rank;
    t->dims = palloc((size_t)(rank ? rank : 1) * sizeof *t->dims);
    size_t n = 1;
    for (int i = 0; i < rank; i++) {
        t->dims[i] = dims[i];
        n *= (size_t)(dims[i] > 0 ? dims[i] : 0);
    }
    float *f = palloc(n * sizeof *f);
    for (size_t i = 0; i < n; i++)
        f[i] = (float)((int)(i * 7919 % 200) - 100) / 400.0f;
    t->has_raw_data = 1;
    t->raw_data.len = n * sizeof *f;
    t->raw_data.data = (uint8_t *)f;
    b->inits[b->g.n_initializer++] = t;
    return t;
}

static inline Onnx__NodeProto *mb_node(mb *b, const char *op, const char *name, const char *in0, const char *in1,
                                const char *in2, const char *out)
{
    Onnx__NodeProto *n = palloc(sizeof *n);
    onnx__node_proto__init(n);
    n->op_type = pstr(op);
    n->name = pstr(name);
    n->input = palloc(3 * sizeof *n->input);
    const char *ins[3] = {in0, in1, in2};
    for (int i = 0; i < 3 && ins[i]; i++)
        n->input[n->n_input++] = pstr(ins[i]);
    n->output = palloc(sizeof *n->output);
    n->output[0] = pstr(out);
    n->n_output = 1;
    n->attribute = palloc(8 * sizeof *n->attribute);
    b->nodes[b->g.n_node++] = n;
    return n;
}

static inline Onnx__AttributeProto *attr(Onnx__NodeProto *n, const char *name, Onnx__AttributeProto__AttributeType type)
{
    Onnx__AttributeProto *a = palloc(sizeof *a);
    onnx__attribute_proto__init(a);
    a->name = pstr(name);
    a->has_type = 1;
    a->type = type;
    n->attribute[n->n_attribute++] = a;
    return a;
}

static inline void attr_ints(Onnx__NodeProto *n, const char *name, int count, const int64_t *v)
{
    Onnx__AttributeProto *a = attr(n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    a->n_ints = (size_t)count;
    a->ints = palloc((size_t)count * sizeof *a->ints);
    memcpy(a->ints, v, (size_t)count * sizeof *v);
}

static inline void mb_meta(mb *b, const char *k, const char *v)
{
    Onnx__StringStringEntryProto *e = palloc(sizeof *e);
    onnx__string_string_entry_proto__init(e);
    e->key = pstr(k);
    e->value = pstr(v);
    b->meta[b->m.n_metadata_props++] = e;
}

static inline uint8_t *mb_pack(mb *b, size_t *len)
{
    *len = onnx__model_proto__get_packed_size(&b->m);
    uint8_t *buf = palloc(*len);
    onnx__model_proto__pack(&b->m, buf);
    return buf;
}

#endif
