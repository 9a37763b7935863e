/*
 * dnn.h - the model module's execution backend (internal). dnnl.c is the
 * only file that calls oneDNN; everything it needs from the rest of the
 * module comes through a compiled `graph`.
 *
 * A dnn keeps the weights in the layouts oneDNN picked (reordered once) and
 * one execution plan per (batch size, target tensor): primitives created
 * once, activations in one arena laid out by liveness, so a steady-state
 * forward allocates nothing and touches no new page.
 */
#ifndef MS_MODEL_DNN_H
#define MS_MODEL_DNN_H

#include <stddef.h>

#include "model/graph.h"
#include "util/err.h"

typedef struct dnn dnn;

typedef struct dnn_options {
    int bf16;              /* convolutions and Gemms read and write bf16 (AVX-512 BF16) */
    size_t max_arena;      /* activation bytes one plan may use; 0: 8 GiB */
} dnn_options;

/* Creates the engine and stream. g must outlive the dnn and stay unchanged
 * (except constants released through dnn_release_host_weights). */
int dnn_create(graph *g, const dnn_options *o, dnn **out, ms_err *err);
void dnn_free(dnn *d);

/* Builds (or finds) the plan producing tensor `target` for batch n, without
 * running it: load-time validation of every primitive. */
int dnn_prepare(dnn *d, int target, int n, ms_err *err);

/* Runs n images (n x 3 x S x S floats, NCHW) and writes target, flattened
 * per image in plain NCHW / NC order, to out. Returns 0, MS_ENOMEM or
 * MS_EINTERNAL (and MS_EUNSUPPORTED when a new plan cannot be built). */
int dnn_run(dnn *d, int target, int n, const float *in, float *out, ms_err *err);

/* Frees the host copies of weights that oneDNN already holds in its own
 * layout; later layouts are reordered from that copy. */
void dnn_release_host_weights(dnn *d);

/* Bytes of the activation arena (allocated, or planned when larger) and
 * of the weights in oneDNN's layouts. */
size_t dnn_arena_bytes(const dnn *d);
size_t dnn_weight_bytes(const dnn *d);

/* The implementation oneDNN chose for the convolutions of the last plan
 * built, e.g. "brg:avx512_core", for the benchmark report. */
const char *dnn_conv_impl(const dnn *d);

/* Measures this machine's f32 peak: a 1024^3 oneDNN matmul repeated for
 * about `seconds`, all threads. Returns 0 and *gflops, or a negative code. */
int dnn_measure_peak(double seconds, double *gflops, ms_err *err);

/* oneDNN version and CPU ISA, e.g. "oneDNN 2.6.3, avx512_core_bf16". */
const char *dnn_version(void);

#endif
