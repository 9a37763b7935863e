/*
 * model.h - a CNN from an ONNX file, run on oneDNN, turning prepared images
 * into feature vectors.
 *
 * model_load parses the ONNX protobuf (protobuf-c), validates every node
 * against the supported ops (Conv, BatchNormalization, Relu, Clip, Sigmoid,
 * HardSigmoid, HardSwish, LeakyRelu, PRelu, Elu, Selu, Tanh, Softplus, LRN, Add,
 * Sub, Mul, Div, Pad of H and W with zeros,
 * MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, ReduceMean over H
 * and W, Flatten, Reshape to 2-D, Squeeze, Gemm, Concat, Identity, Dropout,
 * Shape, Gather, Unsqueeze and Concat of shapes, Cast between float types,
 * Gelu, LayerNormalization over channels, and the Transpose of an NHWC input
 * to NCHW, which is folded away; rewrite.c turns GELU's Erf formula, a
 * layer norm's ReduceMean ... Div formula and ConvNeXt's channels-last
 * blocks (Transposes around MatMuls) into those ops; float16
 * and bfloat16 weights are widened to float32; the exact limits are in
 * docs/models.md), folds shape arithmetic into constants, BatchNorm into
 * convolutions and Pads into the Conv or pool reading them, fuses activations and residual adds
 * into the producing Conv, and plans activation memory. An op MedSearch does
 * not run is an error at load time naming the op and node when the feature
 * depends on it; otherwise it and what is computed from it are dropped.
 * oneDNN is called from dnnl.c only.
 *
 * The feature tensor is chosen by options.output, else the metadata key
 * medsearch.feature_output, else the graph's first output; when that is a
 * classifier head on a global pool (up to four dense layers, each a Gemm or
 * a MatMul and Add, activations and Dropout between them, then any
 * Softmax; or any ops MedSearch does not run after such a head's scores,
 * when every path back from the output ends there), the pooled vector the
 * head reads instead. With a pooling
 * other than MODEL_POOL_OUTPUT the runtime instead takes the 4-D map that
 * feeds the global pooling (GlobalAveragePool, ReduceMean over H and W,
 * GlobalMaxPool, or an AveragePool or MaxPool whose kernel covers the whole
 * map; any other is MS_EUNSUPPORTED) producing that output and pools it itself
 * (GeM, max, average, or the legacy top-left cell).
 *
 * Preprocessing (model_prep): each of input size, mean and scale comes from
 * the options (flags) when set, else from the model's metadata_props
 * (medsearch.input_size, medsearch.mean, medsearch.scale or medsearch.std,
 * medsearch.color; ../shared/models/README.md), else from the input's
 * declared H = W (size) and torchvision's ImageNet convention (mean
 * 123.675,116.28,103.53, std 58.395,57.12,57.375). Three-value means and
 * scales are in the model's input channel order, as written; only the
 * ImageNet defaults, stated R,G,B, are reversed for a model whose
 * medsearch.color is bgr. model_describe says where each value came from;
 * model_identity records the flags that change the model's own values.
 *
 * Also accepted: Constant nodes (as initializers), Identity of an
 * initializer, opset-6 Clip attributes, a fixed batch of 1 in the file (any
 * batch runs: dim 0 is always the batch). Limits: 2 GiB file, dimensions
 * and kernels of sane size, max_activation_bytes of live activations per
 * image (plain layout) and 16 times that for one forward's arena.
 *
 * Thread safety: one model may be used by one thread at a time (the engine
 * serialises forwards and batches concurrent queries). Different models are
 * independent.
 */
#ifndef MS_MODEL_H
#define MS_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "image/image.h"
#include "util/err.h"

typedef struct model model;

typedef enum {
    MODEL_POOL_OUTPUT = 0, /* the output tensor as the graph computes it */
    MODEL_POOL_AVG,        /* mean over H x W of the last feature map */
    MODEL_POOL_GEM,        /* (mean x^p)^(1/p), x clamped at >= 1e-6 */
    MODEL_POOL_MAX,        /* max over H x W */
    MODEL_POOL_TOPLEFT,    /* the prototype's bug, a baseline only: first C values of the flattened NCHW map */
    MODEL_POOL_AUTO,       /* resolved at load: GeM when the feature is a global
                            * average pool (GlobalAveragePool, ReduceMean over H
                            * and W, or an AveragePool whose kernel covers the
                            * map, through Flatten, Reshape, Squeeze or Identity),
                            * options.output does not name it and the map it pools
                            * cannot be negative, or only slightly (made by Relu,
                            * ReLU6, Sigmoid, Softplus, swish, hard swish), else
                            * OUTPUT. The faces' default: GeM p=3 retrieved better
                            * than the average with ImageNet models
                            * (docs/evaluation.md); it clamps negative values */
} model_pool;

typedef struct model_options {
    const char *output;    /* tensor name, or NULL */
    model_pool pool;
    float gem_p;           /* default 3 */
    /* Preprocessing overrides (flags); <= 0 / NULL leaves the model's own.
     * One that changes the model's own value is recorded in the identity's
     * pool part ("-in288", "-norm<digest>"; see model_identity). */
    int input_size;
    const char *mean;      /* "m" or "m1,m2,m3" on the 0..255 scale */
    const char *scale;     /* "s" or "s1,s2,s3" */
    const char *std;       /* "s" or "s1,s2,s3" (scale = 1/std) */
    size_t max_file_bytes; /* 0: 2 GiB */
    size_t max_activation_bytes; /* activations alive at once per image (plain
                            * layout), checked at load: 0: 2 GiB. A forward's arena
                            * may hold 16 x this (blocked layouts, batch). */
    int bf16;              /* Conv/Gemm read weights and activations as bf16 (AVX-512
                            * BF16), accumulate in fp32: twice the fp32 throughput;
                            * features within cosine 0.99 of fp32 (MobileNetV2: errors
                            * up to a few % of the largest value). For benchmarks; the
                            * identity's pool part gets "-bf16". */
    int flip;              /* test-time augmentation: each image is also run mirrored
                            * left-right, and its feature is the sum of the two
                            * L2-normalised features (so an image and its mirror
                            * image get the same vector). Twice the forwards; the
                            * identity's pool part gets "-flip". */
} model_options;

void model_options_init(model_options *o);

/* Loads, validates and compiles. Returns 0 or MS_ENOTFOUND (no file, or no
 * tensor named options.output), MS_EIO, MS_EFORMAT (bad protobuf, missing
 * initializer, shape mismatch, absurd dims, bad medsearch.* metadata),
 * MS_EUNSUPPORTED (op, attribute, external data, a Pad that cannot be
 * folded, pooling without a global pooling node), MS_ETOOBIG (file or activations over a limit),
 * MS_EINVAL (bad option), MS_ENOMEM. Every oneDNN primitive of a batch-1
 * forward is created here, so a model that loads also runs.
 * *out is owned by the caller: model_free(). */
int model_load(const char *path, const model_options *opt, model **out, ms_err *err);
int model_load_buffer(const void *buf, size_t len, const char *name,
                      const model_options *opt, model **out, ms_err *err);
void model_free(model *m);

/* Runs n prepared images (n x 3 x S x S floats, NCHW) and writes n x dim
 * raw (not normalised) features to out; with options.flip, each the sum of
 * the L2-normalised features of the image and of its mirror image.
 * Activation memory is allocated, and every primitive created, once per
 * batch size, then reused: a steady-state forward allocates nothing and
 * faults no page in. Returns 0 or MS_EINVAL
 * (n outside 1..4096), MS_ENOMEM / MS_EINTERNAL. */
int model_forward(model *m, const float *input, int n, float *out, ms_err *err);

/* Runs n images (never mirrored: options.flip is for model_forward) and
 * copies the named tensor (any graph tensor, e.g. "logits") flattened per
 * image, in NCHW order, into out (n x
 * model_tensor_size floats). A tensor fused into another node at load (a
 * Conv's output feeding a fused Relu) is MS_ENOTFOUND: name it in
 * options.output to keep it. out_per_image must be model_tensor_size. */
int model_forward_tensor(model *m, const float *input, int n, const char *tensor,
                         float *out, size_t out_per_image, ms_err *err);
/* Per-image element count of a tensor, or 0 when there is none of that name. */
size_t model_tensor_size(const model *m, const char *tensor);

/* ---- where a feature comes from (similarity maps) ----
 *
 * A feature pooled from the last feature map is a sum over that map's
 * cells, each cell seeing one patch of the prepared image (the map is
 * h x w for an input of S x S: 7 x 7 at 224 for ResNet-50 and MobileNetV2).
 * With the feature split that way, any dot product with it splits too,
 * which is what shows where two images are alike (engine.h,
 * engine_map_similarity). */

/* The grid of cells the feature is split over: 0 with *h, *w; or
 * MS_EUNSUPPORTED, with the reason, when the feature is not a global
 * pooling of a map (a projection or classifier head after the pool, a
 * tensor named with options.output that is not pooled). */
int model_feature_grid(const model *m, int *h, int *w, ms_err *err);

/* Runs n prepared images (as model_forward takes them) and writes each
 * one's feature, as model_forward gives it (dim raw values; with flip, the
 * sum of the normalised features of the image and of its mirror image,
 * whose cells are mirrored back), to feature (n x dim), and its split over
 * the grid to shares (n x dim x h x w): for each channel, its h x w shares
 * sum to its feature value, to float rounding. How each pooling splits is
 * in pooling.h. Returns 0, the errors of model_feature_grid and
 * model_forward, or MS_ENOMEM. */
int model_feature_shares(model *m, const float *input, int n, float *feature, float *shares, ms_err *err);

/* L2-normalises n rows of dim floats in place (zero rows stay zero). */
void model_l2_normalise(float *v, int n, int dim);

int model_dim(const model *m);                 /* feature length */
const image_prep *model_prep(const model *m);  /* preprocessing in force */
int model_prep_from_metadata(const model *m);  /* 1 when medsearch.* keys set it */

/* Identity recorded with every stored vector: "name:sha256hex:dim:pool".
 * name is the file's base name; pool is "output", "avg", "gem3", ...,
 * followed, in this order and only when they apply, by "-bf16", "-flip",
 * "-in<N>" (the input size in force is N, not the model's own) and
 * "-norm<8 hex>" (the mean or scale in force is not the model's own; the
 * first 8 hex digits of SHA-256 of "mean %.9g,%.9g,%.9g scale %.9g,%.9g,%.9g"
 * of the values in force, in the model's channel order). "The model's own"
 * is what the same file gets without flags (metadata, else the declared
 * input and the ImageNet defaults): flags that restate it, to float
 * rounding (1e-6 relative), leave the identity as it is without them. So
 * "m.onnx:<sha>:1280:gem3-flip-in288-norm1a2b3c4d". */
const char *model_identity(const model *m);

/* The pooling named "output", "avg", "gem", "max", "topleft" or "auto" (as
 * --pool takes it) into *out. Returns 0, or MS_EINVAL for any other name. */
int model_pool_parse(const char *name, model_pool *out);
/* The name --pool takes for p ("gem" for GeM, whatever its p). Static. */
const char *model_pool_name(model_pool p);
/* The pooling in force: options.pool, with MODEL_POOL_AUTO resolved (never
 * AUTO). The identity records this one. */
model_pool model_pooling(const model *m);

/* Reads the pooling part of an identity (what follows its last ':', as
 * model_identity writes it) into o's pool, gem_p, bf16, flip and
 * input_size ("-in<N>", else 0: the model's own), leaving the rest of o as
 * it is. A "-norm" digest cannot be turned back into values: mean, scale
 * and std are left as they are, so a model loaded with o has the
 * normalisation they give, and its identity differs from this one unless
 * they are the values the digest was made of. Returns 0, or MS_EINVAL
 * (nothing changed) for any text model_identity never writes (another
 * order, an element twice, "-in0", "-in99999", "-normXYZ", ...). */
int model_options_from_identity(const char *identity, model_options *o);
const char *model_name(const model *m);
const char *model_sha256(const model *m);      /* 64 hex chars */

/* A printable description for `medsearch info --model`: inputs, outputs,
 * preprocessing (and whether it came from metadata or the ImageNet default),
 * op counts, parameter count. Owned by the model. */
const char *model_describe(const model *m);

/* Floating-point operations of one image's forward (multiply-add = 2). */
double model_flops_per_image(const model *m);

/* Measures this machine's fp32 peak with a oneDNN matmul run for about
 * `seconds` on all threads (for the benchmark's "share of peak"). */
int model_measure_peak_gflops(double seconds, double *gflops, ms_err *err);

/* One line on the runtime: oneDNN version and ISA, the convolution kernel
 * chosen, bytes of weights and activations. m may be NULL. Static buffer. */
const char *model_runtime_info(const model *m);

#endif
