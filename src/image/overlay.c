/*
 * overlay.c - a heat map drawn over a gray image (image.h,
 * image_heat_blend): how `medsearch explain --overlay` shows where two
 * X-rays are alike, in the colours of the web page's viewer.
 */
#include <math.h>
#include <stdlib.h>

#include "image/image.h"

/* Where pixel p of n falls between the centres of the g cells across:
 * the cell before it, the one after, and how far toward the latter. */
static void between_centres(int p, int n, int g, int *c0, int *c1, double *t)
{
    double f = (p + 0.5) * g / n - 0.5;
    if (f < 0)
        f = 0;
    if (f > g - 1)
        f = g - 1;
    *c0 = (int)f;
    *c1 = *c0 + 1 < g ? *c0 + 1 : *c0;
    *t = f - *c0;
}

void image_heat_blend(const uint8_t *gray, int w, int h, const float *cells, int grid_w, int grid_h, uint8_t *rgb)
{
    float max = 0;
    for (int i = 0; i < grid_w * grid_h; i++)
        if (cells[i] > max)
            max = cells[i];
    for (int y = 0; y < h; y++) {
        int y0, y1;
        double ty;
        between_centres(y, h, grid_h, &y0, &y1, &ty);
        for (int x = 0; x < w; x++) {
            int x0, x1;
            double tx;
            between_centres(x, w, grid_w, &x0, &x1, &tx);
            double top = cells[y0 * grid_w + x0] * (1 - tx) + cells[y0 * grid_w + x1] * tx;
            double bottom = cells[y1 * grid_w + x0] * (1 - tx) + cells[y1 * grid_w + x1] * tx;
            double heat = max > 0 ? (top * (1 - ty) + bottom * ty) / max : 0;
            double g = gray[(size_t)y * (size_t)w + (size_t)x];
            uint8_t *o = rgb + 3 * ((size_t)y * (size_t)w + (size_t)x);
            if (!(heat > 0)) {
                o[0] = o[1] = o[2] = (uint8_t)g;
                continue;
            }
            /* orange to yellow, more opaque the hotter (the viewer's 210/255 at the top) */
            double a = 0.82 * heat * sqrt(heat); /* heat^1.5 */
            o[0] = (uint8_t)lround(g + (255 - g) * a);
            o[1] = (uint8_t)lround(g + (60 + 170 * heat - g) * a);
            o[2] = (uint8_t)lround(g * (1 - a));
        }
    }
}

uint8_t *image_gray8_repeat(const uint8_t *gray, int w, int h, int k)
{
    size_t W = (size_t)w * (size_t)k, H = (size_t)h * (size_t)k;
    uint8_t *out = k >= 1 ? malloc(W * H) : NULL;
    if (!out)
        return NULL;
    for (size_t y = 0; y < H; y++)
        for (size_t x = 0; x < W; x++)
            out[y * W + x] = gray[(y / (size_t)k) * (size_t)w + x / (size_t)k];
    return out;
}
