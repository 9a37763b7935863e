/*
 * pooling.c - average, generalised-mean (GeM), max and "top-left" pooling
 * of the last feature map, for retrieval experiments (issue 6).
 */
#include "model/pooling.h"

#include <math.h>
#include <string.h>

#define GEM_FLOOR 1e-6f

/* (mean over the map of max(x, 1e-6)^p)^(1/p); p = 3 (the usual GeM) avoids powf. */
static float gem(const float *x, int hw, float p)
{
    double acc = 0;
    if (p == 3.0f) {
        for (int i = 0; i < hw; i++) {
            double v = x[i] > GEM_FLOOR ? x[i] : GEM_FLOOR;
            acc += v * v * v;
        }
        return (float)cbrt(acc / hw);
    }
    for (int i = 0; i < hw; i++)
        acc += pow(x[i] > GEM_FLOOR ? x[i] : GEM_FLOOR, p);
    return (float)pow(acc / hw, 1.0 / p);
}

static float mean(const float *x, int hw)
{
    double acc = 0;
    for (int i = 0; i < hw; i++)
        acc += x[i];
    return (float)(acc / hw);
}

static float max_of(const float *x, int hw)
{
    float m = x[0];
    for (int i = 1; i < hw; i++)
        if (x[i] > m)
            m = x[i];
    return m;
}

void pool_map(const float *map, int n, int c, int hw, model_pool pool, float p, float *out)
{
    size_t per_image = (size_t)c * (size_t)hw;
    for (int i = 0; i < n; i++) {
        const float *img = map + (size_t)i * per_image;
        float *o = out + (size_t)i * (size_t)c;
        if (pool == MODEL_POOL_TOPLEFT) {
            memcpy(o, img, (size_t)c * sizeof *o);
            continue;
        }
        for (int ch = 0; ch < c; ch++) {
            const float *x = img + (size_t)ch * (size_t)hw;
            o[ch] = pool == MODEL_POOL_GEM ? gem(x, hw, p) : pool == MODEL_POOL_MAX ? max_of(x, hw) : mean(x, hw);
        }
    }
}

/* max(x, floor)^p, in double as gem() sums it. */
static double gem_power(float x, float p)
{
    double y = x > GEM_FLOOR ? x : GEM_FLOOR;
    return p == 3.0f ? y * y * y : pow(y, p);
}

static void gem_shares(const float *x, int hw, float p, float *out)
{
    double sum = 0;
    for (int i = 0; i < hw; i++)
        sum += gem_power(x[i], p);
    double f = p == 3.0f ? cbrt(sum / hw) : pow(sum / hw, 1.0 / p);
    for (int i = 0; i < hw; i++)
        out[i] = (float)(f * (gem_power(x[i], p) / sum));
}

static void max_shares(const float *x, int hw, float *out)
{
    int at = 0;
    for (int i = 1; i < hw; i++)
        if (x[i] > x[at])
            at = i;
    memset(out, 0, (size_t)hw * sizeof *out);
    out[at] = x[at];
}

void pool_map_shares(const float *map, int c, int hw, model_pool pool, float p, float *shares)
{
    if (pool == MODEL_POOL_TOPLEFT) { /* value k of the flattened map: channel k / hw, cell k % hw */
        memset(shares, 0, (size_t)c * (size_t)hw * sizeof *shares);
        for (int k = 0; k < c; k++)
            shares[(size_t)k * (size_t)hw + (size_t)(k % hw)] = map[k];
        return;
    }
    for (int ch = 0; ch < c; ch++) {
        const float *x = map + (size_t)ch * (size_t)hw;
        float *o = shares + (size_t)ch * (size_t)hw;
        if (pool == MODEL_POOL_GEM)
            gem_shares(x, hw, p, o);
        else if (pool == MODEL_POOL_MAX)
            max_shares(x, hw, o);
        else
            for (int i = 0; i < hw; i++)
                o[i] = x[i] / (float)hw;
    }
}

void model_l2_normalise(float *v, int n, int dim)
{
    for (int i = 0; i < n; i++) {
        float *row = v + (size_t)i * (size_t)dim;
        double ss = 0;
        for (int k = 0; k < dim; k++)
            ss += (double)row[k] * row[k];
        if (ss <= 0)
            continue;
        float inv = (float)(1.0 / sqrt(ss));
        for (int k = 0; k < dim; k++)
            row[k] *= inv;
    }
}
