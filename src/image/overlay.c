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

/* One pixel blended toward orange and yellow by its heat (0..1]: more
 * opaque the hotter (0.82 at the top, the viewer's 210/255). Every value
 * lies in 0..255, so + 0.5 rounds. */
static void blend_pixel(double g, double heat, uint8_t *o)
{
    double a = 0.82 * heat * sqrt(heat); /* heat^1.5 */
    o[0] = (uint8_t)(g + (255 - g) * a + 0.5);
    o[1] = (uint8_t)(g + (60 + 170 * heat - g) * a + 0.5);
    o[2] = (uint8_t)(g * (1 - a) + 0.5);
}

/* Each column's place between the cells' centres, worked out once. */
typedef struct column_place {
    int c0, c1;
    double t;
} column_place;

void image_heat_blend(const uint8_t *gray, int w, int h, const float *cells, int grid_w, int grid_h, uint8_t *rgb)
{
    float max = 0;
    for (int i = 0; i < grid_w * grid_h; i++)
        if (cells[i] > max)
            max = cells[i];
    column_place *cols = malloc((size_t)w * sizeof *cols);
    double *row = malloc((size_t)grid_w * sizeof *row);
    for (int x = 0; cols && x < w; x++)
        between_centres(x, w, grid_w, &cols[x].c0, &cols[x].c1, &cols[x].t);
    for (int y = 0; y < h; y++) {
        const uint8_t *g = gray + (size_t)y * (size_t)w;
        uint8_t *o = rgb + 3 * (size_t)y * (size_t)w;
        if (!(max > 0) || !cols || !row) { /* nothing warm (or no memory for the tables): gray */
            for (int x = 0; x < w; x++)
                o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = g[x];
            continue;
        }
        int y0, y1;
        double ty;
        between_centres(y, h, grid_h, &y0, &y1, &ty);
        for (int c = 0; c < grid_w; c++) /* the cells down to this row, over the largest */
            row[c] = (cells[y0 * grid_w + c] * (1 - ty) + cells[y1 * grid_w + c] * ty) / max;
        for (int x = 0; x < w; x++) {
            double heat = row[cols[x].c0] * (1 - cols[x].t) + row[cols[x].c1] * cols[x].t;
            if (heat > 0)
                blend_pixel(g[x], heat, o + 3 * x);
            else
                o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = g[x];
        }
    }
    free(cols);
    free(row);
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
