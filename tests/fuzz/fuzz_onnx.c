/*
 * fuzz_onnx.c - libFuzzer target for the ONNX loader: any bytes go through
 * model_load_buffer (wire-format scan, protobuf-c, graph checks, shape
 * inference, folding, fusion and oneDNN primitive creation); a model that
 * loads with a small input is also run once, so the execution plan is
 * fuzzed too. Built and run by tests/fuzz/run.sh.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    model_options o;
    model_options_init(&o);
    o.max_file_bytes = 16u << 20;
    o.max_activation_bytes = 32u << 20; /* keeps a forward well under libFuzzer's RSS limit */
    model *m = NULL;
    ms_err err;
    if (model_load_buffer(data, size, "fuzz.onnx", &o, &m, &err))
        return 0;
    int s = model_prep(m)->size, dim = model_dim(m);
    if (dim <= (1 << 22) && model_flops_per_image(m) < 1e9) {
        float *in = calloc((size_t)3 * s * s, sizeof *in), *out = calloc((size_t)dim, sizeof *out);
        if (in && out)
            model_forward(m, in, 1, out, &err);
        free(in);
        free(out);
    }
    model_free(m);
    return 0;
}
