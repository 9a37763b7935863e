/*
 * graph.h - the model module's internal picture of a CNN (not a public API).
 *
 * onnx.c turns an ONNX file into a `graph`: tensors (the image input,
 * constants, activations) and nodes with their attributes already parsed and
 * checked. graph.c orders the nodes; shapes.c infers every shape (folding
 * shape arithmetic into constants); graph.c then folds BatchNorm and Pad into
 * convolutions and pools and fuses activations and residual adds into the
 * node that produces their input. dnnl.c turns a compiled graph into oneDNN
 * primitives.
 *
 * Shapes of activations are per image: dims[0] is always 1 and stands for
 * the batch, whatever the file declares (a fixed batch of 1 included).
 *
 * Ownership: the graph owns every string and every constant's data; a
 * constant's `f` may be released early by dnnl.c once oneDNN holds its own
 * copy (graph_release_constant).
 */
#ifndef MS_MODEL_GRAPH_H
#define MS_MODEL_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

#define G_MAX_RANK 6       /* constants; activations are rank 2 or 4 */
#define G_MAX_POST 4       /* fused post-ops on one node */

/* Limits on what a file may ask for. */
#define G_MAX_NODES 100000
#define G_MAX_DIM ((int64_t)1 << 24)            /* one dimension */
#define G_MAX_CONST_ELEMS ((int64_t)1 << 31)    /* one constant */
#define G_MAX_ACT_ELEMS ((int64_t)1 << 28)      /* one activation, per image (1 GiB) */
#define G_MAX_LIVE_BYTES ((int64_t)2 << 30)     /* live activations at once, per image */
#define G_MAX_KERNEL 1024
#define G_MAX_INPUT_SIZE 4096

/* In an INT64 constant folded from a Shape: "the batch", unknown until run
 * time. Only a Reshape's first dimension may hold it. */
#define G_BATCH_DIM INT64_MIN

typedef enum {
    G_CONV = 0,
    G_BN,
    G_RELU,
    G_CLIP,
    G_SIGMOID,
    G_SWISH,     /* x * sigmoid(x): a Sigmoid and a Mul fused at load */
    G_ADD,
    G_MUL,
    G_MAXPOOL,
    G_AVGPOOL,
    G_GAP,
    G_FLATTEN,
    G_RESHAPE,
    G_GEMM,
    G_CONCAT,
    G_IDENTITY,
    G_HARDSIGMOID, /* max(0, min(1, alpha * x + beta)) */
    G_HARDSWISH,   /* x * HardSigmoid(x) with alpha 1/6, beta 1/2; also a fused pair */
    G_SUB,
    G_DIV,
    G_PAD,         /* zero padding of H and W, folded into the Conv or pool reading it */
    G_GMP,         /* GlobalMaxPool */
    /* Shape arithmetic, folded into constants by shape inference (a Reshape to
     * [x.size(0), -1] exports as Shape, Gather, Unsqueeze, Concat): */
    G_SHAPE,
    G_GATHER,
    G_UNSQUEEZE,
    /* Squeeze of size-1 dimensions of an activation (x.squeeze() after a
     * global pool): a view, as Flatten. The batch is never squeezed. */
    G_SQUEEZE,
    /* An op MedSearch does not run: kept so that the graph is whole, and
     * refused (onnx_unsupported) only when the feature depends on it;
     * otherwise graph_prune drops it and what is computed from it. */
    G_UNSUPPORTED,
    /* Counted under their own name in op_count, run as another op:
     * ReduceMean over H and W as G_GAP, Dropout (inference) as G_IDENTITY. */
    G_REDUCEMEAN,
    G_DROPOUT,
    /* Activations of other CNN families (Darknet, PReLU networks, older
     * Keras models): one value in, one out, alpha/beta as below. */
    G_LEAKYRELU,   /* x < 0 ? alpha x : x */
    G_PRELU,       /* the same with a constant slope per channel (input 1) */
    G_ELU,         /* x < 0 ? alpha (e^x - 1) : x */
    G_SELU,        /* beta (gamma) * Elu(alpha) */
    G_TANH,
    G_SOFTPLUS,    /* log(1 + e^x) */
    G_LRN,         /* across channels: x / (eps + alpha / kernel[0] * sum x^2)^beta (eps: ONNX's bias) */
    /* Counted under its own name, run as G_IDENTITY when it casts between
     * float types (MedSearch computes in float32 whatever the file says). */
    G_CAST,
    /* Only [N, H, W, C] -> [N, C, H, W] of the image input (perm in axes),
     * folded at parse (onnx.c): MedSearch feeds NCHW. Any other is refused. */
    G_TRANSPOSE,
    /* Layer normalisation over the channels of an NCHW map or of a [N, C]
     * vector, with an optional constant scale (in[1]) and shift (in[2]) of C
     * values; eps as below. From LayerNormalization (opset 17) or from its
     * decomposition into ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt and Div,
     * as PyTorch exports it before. axis: one of G_LN_* below, settled to
     * G_LN_CHANNELS by the lift (rewrite.c) or by shape inference. */
    G_LAYERNORM,
    G_GELU,        /* x * Phi(x), from the Gelu op or Erf as PyTorch exports it */
    /* Channel `channel` of an NCHW map as [N, 1, H, W]: a Gather of one index
     * on axis 1 (then an Unsqueeze of axis 1 for a scalar index), as
     * x[:, k:k+1] or torch.unsqueeze(x[:, k], 1) export (rewrite.c). */
    G_CHANNEL,
    G_GELU_TANH,   /* Gelu with approximate = "tanh" */
    /* Counted under their own name, run only as part of what rewrite.c
     * turns them into (a 1x1 Conv, GELU, LayerNorm); otherwise unsupported. */
    G_MATMUL,
    G_ERF,
    G_POW,
    G_SQRT,
    G_OP_COUNT
} g_op;

/* What a G_LAYERNORM normalises over (its `axis`). */
enum {
    G_LN_REFUSED = 0,  /* anything else (ONNX's axis 2, say): never run */
    G_LN_CHANNELS = 1, /* axis 1 of NCHW or of [N, C] */
    G_LN_LAST = -1,    /* the last axis: channels-last (lifted) or [N, C] */
    G_LN_ONNX_AXIS1 = 2 /* ONNX's axis 1, which normalises C, H and W of a map:
                         * run only on [N, C], where it is the channels */
};

typedef enum { G_POST_ELTWISE = 1, G_POST_SUM } g_post_kind;
typedef enum {
    G_ACT_RELU = 1,
    G_ACT_CLIP,
    G_ACT_SIGMOID,
    G_ACT_SWISH,
    G_ACT_HARDSIGMOID,
    G_ACT_HARDSWISH,
    G_ACT_LEAKYRELU,
    G_ACT_ELU,
    G_ACT_SELU,
    G_ACT_TANH,
    G_ACT_SOFTPLUS,
    G_ACT_GELU_ERF,
    G_ACT_GELU_TANH
} g_act;

/* One post-op fused into a Conv, Gemm or binary node, applied in order. */
typedef struct g_post {
    g_post_kind kind;
    g_act act;           /* G_POST_ELTWISE */
    float lo, hi;        /* G_ACT_CLIP bounds; the node's alpha, beta for the others */
    int tensor;          /* G_POST_SUM: the residual added to the result */
} g_post;

typedef struct g_tensor {
    char *name;
    int rank;
    int64_t dims[G_MAX_RANK];
    int is_const;
    int is_input;        /* the image input */
    int elem_type;       /* constants: ONNX FLOAT (1; FLOAT16 and BFLOAT16 are widened to it) or INT64 (7) */
    float *f;            /* constant floats, owned */
    int64_t *i64;        /* constant int64s, owned */
    int64_t count;       /* elements of a constant */
    int producer;        /* node index; -1 for input and constants */
    int consumers;       /* uses by live nodes (post-op sums included) */
    int shaped;          /* dims are known (inferred) */
    int fused_into;      /* 1 + the node this intermediate was fused into, else 0 */
} g_tensor;

typedef struct g_node {
    g_op op;
    char *name;          /* from the file, or "OpType #index" */
    char *op_type;       /* as written in the file */
    int *in;             /* tensor indices; -1 for an omitted optional input */
    int n_in;
    int out;
    /* Attributes (only those of the node's op are meaningful). */
    int kernel[2], stride[2], dilation[2], pad_l[2], pad_r[2];
    int auto_pad;        /* 0 NOTSET, 1 SAME_UPPER, 2 SAME_LOWER, 3 VALID */
    int group;
    int ceil_mode, count_include_pad;
    float clip_lo, clip_hi;
    int clip_from_attrs; /* Clip bounds given as attributes (opset < 11) */
    float eps;
    float alpha, beta;   /* Gemm; HardSigmoid; LeakyRelu, Elu: alpha; Selu: alpha, gamma as beta;
                          * Pad: beta is the constant value */
    int trans_a, trans_b;
    int axis;
    int from_attrs;      /* Pad: pads and value were attributes (opset < 11) */
    int keepdims;        /* ReduceMean (run as G_GAP): 0 gives [N, C] */
    int axes[G_MAX_RANK], n_axes; /* ReduceMean, Unsqueeze; -1 axes: from input 1; Transpose: perm,
                                   * -1: none (reverse the axes) */
    int shape_start, shape_end;   /* Shape (opset 15); end INT_MAX: to the last axis */
    int channel;         /* G_CHANNEL: the channel taken (negative: from the end) */
    /* Filled by compilation. */
    int dead;            /* folded or fused into another node */
    int weights, bias;   /* Conv/Gemm constants after folding (bias may be -1) */
    g_post post[G_MAX_POST];
    int n_post;
} g_node;

typedef struct g_meta {
    char *key, *value;
} g_meta;

typedef struct g_stats {
    int bn_folded;       /* BatchNormalization folded into a Conv */
    int act_fused;       /* activations fused as eltwise post-ops */
    int add_fused;       /* residual Adds fused as sum post-ops */
    int swish_fused;     /* Sigmoid+Mul (HardSigmoid+Mul) pairs turned into (hard) swish */
    int gelu_rewritten;  /* Erf chains run as GELU (rewrite.c) */
    int norm_rewritten;  /* ReduceMean ... Div chains run as a layer norm */
    int transposes_lifted, matmuls_lifted; /* of channels-last regions run in NCHW */
} g_stats;

typedef struct graph {
    g_tensor *t;
    int nt, cap_t;
    g_node *n;
    int nn, cap_n;
    int *order;          /* live nodes in execution order */
    int n_order;
    int input;           /* tensor index of the image input */
    int *outputs;        /* graph outputs, tensor indices */
    int n_outputs;
    g_meta *meta;
    int n_meta;
    int64_t opset;       /* default-domain opset, 0 when the file names none */
    int64_t ir_version;
    char *producer;      /* producer_name + version, may be "" */
    int64_t input_decl[4]; /* the input shape the file declares, -1 symbolic */
    int input_channels;  /* 3, or 1 for a model of one grey channel (graph_grey_input) */
    int input_nhwc;      /* the file's input was [N, H, W, C], transposed first; input_decl is NCHW */
    int op_count[G_OP_COUNT + 1]; /* nodes per op in the file ([G_OP_COUNT]: Constant) */
    int64_t params;      /* float constant elements in the file */
    g_stats stats;
    /* name -> tensor index (open addressing) */
    int *hash;
    int hash_cap;
} graph;

/* Op names as ONNX writes them; "Swish" for the fused G_SWISH. */
const char *graph_op_name(g_op op);

void graph_init(graph *g);
void graph_free(graph *g);

/* Finds a tensor by name: its index, or -1. */
int graph_find(const graph *g, const char *name);
/* Finds or adds a tensor named name: its index, or a negative MS_E* code. */
int graph_intern(graph *g, const char *name, ms_err *err);
/* Appends a zeroed node (op and name set): its index or a negative code. */
int graph_add_node(graph *g, g_op op, const char *name, const char *op_type, ms_err *err);
/* The metadata value for key, or NULL. */
const char *graph_meta(const graph *g, const char *key);

/* Parses an ONNX model (onnx.c). max_bytes bounds len. Fills an initialised
 * g with tensors, nodes, metadata, the input and outputs, without ordering or
 * shapes. Returns 0, MS_EFORMAT, MS_EUNSUPPORTED, MS_ETOOBIG or MS_ENOMEM. */
int onnx_parse(const void *buf, size_t len, graph *g, ms_err *err);
/* The error for a G_UNSUPPORTED node the tensor `feature` depends on: it
 * names the node, its op, the supported ops and the feature. Returns
 * MS_EUNSUPPORTED. */
int onnx_unsupported(const graph *g, const g_node *nd, int feature, ms_err *err);

/* What compilation needs to know from the caller. */
typedef struct graph_config {
    int input_size;      /* S: the input is [N, 3, S, S] */
    const int *keep;     /* tensors that must stay materialised (never fused away) */
    int n_keep;
} graph_config;

/* Orders the nodes (rejecting cycles and undefined inputs; graph.c), infers
 * shapes for an S x S input and checks every node against its inputs
 * (shapes.c), then folds BatchNorm and Pad and fuses post-ops (graph.c).
 * Each returns 0 or a negative code with a message naming the node. */
int graph_order(graph *g, ms_err *err);
/* For a model taking one grey channel (input_channels 1): MedSearch still
 * feeds 3 identical channels, and each Conv reading the input gets weights
 * [M, 3, kh, kw] holding a third of its [M, 1, kh, kw] in each channel, which
 * gives the same sums. Needs every reader of the input to be a Conv with its
 * own weights; MS_EUNSUPPORTED otherwise. 0 and nothing done for 3 channels.
 * Call once, after graph_order. */
int graph_grey_input(graph *g, ms_err *err);
/* Shapes of every tensor at the given input size, shape arithmetic folded
 * into constants. A node the tensor `target` does not need whose shape
 * cannot be inferred (a classifier's post-processing, say) is dropped with
 * what reads it; one it needs is an error. 0 or a code. */
int graph_infer_shapes(graph *g, int input_size, int target, ms_err *err);
int graph_optimise(graph *g, const int *keep, int n_keep, ms_err *err);

/* Marks in need[] (g->nn entries, zeroed by the caller) every live node the
 * tensor `target` depends on. */
void graph_mark_needed(const graph *g, int target, unsigned char *need);

/* Drops the nodes of ops MedSearch does not run (G_UNSUPPORTED) and every
 * node computed from them, as long as the tensor `feature` does not depend
 * on them (a Softmax after the feature); other nodes stay, so any tensor they
 * compute (logits) can still be asked for. Returns 0, MS_EUNSUPPORTED
 * (onnx_unsupported) when the feature depends on an op MedSearch does not
 * run, or MS_ENOMEM. Call after graph_order, before shape inference. */
int graph_prune(graph *g, int feature, ms_err *err);
/* The first node in order of an op MedSearch does not run that tensor t
 * needs: its index, -1 for none, or MS_ENOMEM. */
int graph_first_unsupported(const graph *g, int t);

/* The tensors node reads, post-op sums included: fills in[] (capacity cap)
 * and returns the count; -1 entries (omitted inputs) are skipped. */
int graph_node_reads(const graph *g, const g_node *nd, int *in, int cap);

/* The most tensors any node reads: a capacity for graph_node_reads. */
int graph_max_reads(const graph *g);

/* Per-image elements of a tensor (product of dims). */
int64_t graph_elems(const g_tensor *t);

/* Multiply-add x 2 of the convolutions and Gemms that producing target needs. */
double graph_flops(const graph *g, int target);

/* Peak bytes of activations alive at once per image when producing target,
 * in plain layout (a bound used to refuse absurd models); -1 without memory. */
int64_t graph_live_bytes(const graph *g, int target);

/* Load-time rewrites (rewrite.c), after graph_order and before the feature
 * is chosen: GELU from Erf, layer normalisation over channels from its
 * decomposition, one channel from a Gather, and channels-last regions
 * between Transposes (ConvNeXt's blocks) lifted to NCHW. Tensor `keep` (the
 * feature named by the caller, -1 for none) and the graph outputs stay as
 * the file computes them. Leaves the graph ordered; 0 or a code. */
int graph_rewrite(graph *g, int keep, ms_err *err);

/* Node `into` takes over the output of node `from`, a node after it that it
 * absorbed (now dead); into's own output is marked fused into it. */
void graph_take_output(graph *g, g_node *into, g_node *from);

/* The node that produces tensor t after fusion, or -1. */
int graph_producer(const graph *g, int t);

/* The global pooling node (GlobalAveragePool, ReduceMean over H and W,
 * GlobalMaxPool) that, through Flatten, Reshape, Squeeze or Identity,
 * produces t; -1 when there is none. An AveragePool or MaxPool found there
 * is returned too: it is a global pool when its kernel covers the whole map
 * (older exports, TF-slim's 7x7 AvgPool), which graph_pool_is_global tells
 * once shapes are known. */
int graph_global_pool_node(const graph *g, int t);
/* When tensor t is a classifier's output on top of a global pool
 * (GlobalAveragePool, ReduceMean over H and W or GlobalMaxPool, possibly
 * viewed by Flatten, Reshape, Squeeze or Identity, then up to
 * G_MAX_HEAD_LAYERS dense layers, each a Gemm with constant weights or a
 * MatMul with constant weights and an optional constant Add, with
 * activations and Dropouts between them, then possibly Softmax, LogSoftmax,
 * Sigmoid and views): the pooled tensor the head reads (normalised, when
 * a layer normalisation over the channels comes between the pool and the
 * first layer, as in ConvNeXt), with *head set to
 * its first dense layer's node and *layers to the number of dense layers.
 * -1 otherwise. Before shapes and fusion; MatMul and Softmax are found even
 * though MedSearch does not run them. */
#define G_MAX_HEAD_LAYERS 4
int graph_classifier_head(const graph *g, int t, int *head, int *layers);
/* The same when t is computed from a classifier's scores by any ops (the
 * post-processing of a chest X-ray model's outputs, as torchxrayvision's
 * op_norm exports): every path back from t, over all non-constant inputs,
 * must end at the same scores (a tensor from which graph_classifier_head
 * finds the head), never at the image input. Its pooled tensor, or -1. */
int graph_classifier_head_behind(const graph *g, int t, int *head, int *layers);

/* Whether pooling node `node` pools its whole input map into one value per
 * channel: always for the global pools, and for an AveragePool or MaxPool
 * whose kernel equals the map's height and width, without padding or
 * dilation. Needs shapes (graph_infer_shapes). */
int graph_pool_is_global(const graph *g, int node);

/* The activation node e as a post-op (its act and parameters) into *p:
 * 1, or 0 when e is not an activation that fuses (Relu, Clip, Sigmoid,
 * swish, HardSigmoid, hard swish, LeakyRelu, Elu, Selu, Tanh, Softplus). The
 * runtime runs a standalone activation from the same description. */
int graph_eltwise_post(const g_node *e, g_post *p);

/* Whether the values of t cannot be negative, or only slightly (swish, hard
 * swish), as far as the ops that made it tell (before graph_optimise, after
 * graph_infer_shapes: Clip bounds given as inputs are read then). GeM, which
 * clamps at a small floor, suits such a map and would drop the rest of a
 * signed one. */
int graph_nearly_nonnegative(const graph *g, int t);

/* Frees a constant's float data once nothing needs it on the host. */
void graph_release_constant(graph *g, int t);

#endif
