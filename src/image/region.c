/*
 * region.c - the rectangle of an image a query is prepared from: its text
 * form ("X,Y,W,H", pixels or percentages) and its pixels in an image of a
 * given size. The text comes from a command line or an HTTP request, so it
 * is read strictly: no signs, exponents, "inf" or "nan", no trailing bytes.
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "image/image.h"

#define REGION_MAX_PIXELS 1000000000.0

static const char *const region_names[4] = {"x", "y", "width", "height"};

static const char *skip_spaces(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* One value at *pp: digits, and for a percentage a '.' and more digits and
 * then '%'. Advances *pp past it. Returns 0 or MS_EINVAL. */
static int parse_value(const char **pp, int i, image_region *r, ms_err *err)
{
    const char *p = skip_spaces(*pp);
    double v = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9') {
        if (digits < 12)
            v = v * 10 + (*p - '0');
        digits++;
        p++;
    }
    double scale = 0.1;
    bool fraction = *p == '.';
    if (fraction) {
        p++;
        for (; *p >= '0' && *p <= '9'; p++, digits++)
            if (scale > 1e-9) {
                v += (*p - '0') * scale;
                scale /= 10;
            }
    }
    if (digits == 0 || digits > 12)
        return ms_err_set(err, MS_EINVAL, "region %s must be a whole number of pixels or a percentage such as "
                          "12.5%%", region_names[i]);
    r->percent[i] = *p == '%';
    if (r->percent[i])
        p++;
    else if (fraction)
        return ms_err_set(err, MS_EINVAL, "region %s: a number of pixels is whole; add %% for a percentage",
                          region_names[i]);
    if (r->percent[i] ? v > 100 : v > REGION_MAX_PIXELS)
        return ms_err_set(err, MS_EINVAL, "region %s is over %s", region_names[i],
                          r->percent[i] ? "100%" : "1,000,000,000 pixels");
    if (i >= 2 && v <= 0)
        return ms_err_set(err, MS_EINVAL, "region %s must be above zero", region_names[i]);
    r->value[i] = v;
    *pp = skip_spaces(p);
    return 0;
}

int image_region_parse(const char *text, image_region *r, ms_err *err)
{
    if (!text || !r)
        return ms_err_set(err, MS_EINVAL, "no region given");
    if (strlen(text) > IMAGE_REGION_TEXT_MAX)
        return ms_err_set(err, MS_EINVAL, "region is longer than %d characters", IMAGE_REGION_TEXT_MAX);
    image_region got = {{0}, {0}};
    const char *p = text;
    for (int i = 0; i < 4; i++) {
        int rc = parse_value(&p, i, &got, err);
        if (rc)
            return rc;
        if (i < 3 && *p++ != ',')
            return ms_err_set(err, MS_EINVAL, "region must be four values X,Y,WIDTH,HEIGHT separated by commas");
    }
    if (*p)
        return ms_err_set(err, MS_EINVAL, "region must be four values X,Y,WIDTH,HEIGHT; it has more after the "
                          "height");
    for (int i = 0; i < 2; i++)
        if (got.percent[i] && got.percent[i + 2] && got.value[i] + got.value[i + 2] > 100 + 1e-9)
            return ms_err_set(err, MS_EINVAL, "region %s + %s is over 100%%", region_names[i], region_names[i + 2]);
    *r = got;
    return 0;
}

/* One axis: start and length in pixels of an image `size` pixels long.
 * Returns 1 when the rectangle leaves the image on this axis. */
static int resolve_axis(const image_region *r, int i, int size, int *start, int *length)
{
    double a = r->value[i], b = r->value[i + 2];
    double edge0 = r->percent[i] ? floor(a * size / 100 + 0.5) : a;
    double edge1;
    if (!r->percent[i + 2])
        edge1 = edge0 + b;
    else if (r->percent[i])
        edge1 = floor((a + b) * size / 100 + 0.5); /* both edges rounded, not the length */
    else
        edge1 = edge0 + floor(b * size / 100 + 0.5);
    if (r->percent[i] && edge0 >= size && a < 100)
        edge0 = size - 1; /* a start under 100% that rounds to the far edge: the last pixel */
    if (edge0 >= size || edge1 > size)
        return 1;
    if (edge1 <= edge0) /* a percentage that rounds to nothing */
        edge1 = edge0 + 1;
    *start = (int)edge0;
    *length = (int)(edge1 - edge0);
    return 0;
}

int image_region_resolve(const image_region *r, int w, int h, image_rect *rect, ms_err *err)
{
    if (!r || !rect || w < 1 || h < 1)
        return ms_err_set(err, MS_EINVAL, "image_region_resolve needs a region and an image size");
    image_rect got;
    if (resolve_axis(r, 0, w, &got.x, &got.width) || resolve_axis(r, 1, h, &got.y, &got.height)) {
        char text[160];
        int n = 0;
        for (int i = 0; i < 4; i++)
            n += snprintf(text + n, sizeof text - (size_t)n, "%s%.10g%s", i ? "," : "", r->value[i],
                          r->percent[i] ? "%" : "");
        return ms_err_set(err, MS_EINVAL, "region %s does not lie inside the %dx%d image", text, w, h);
    }
    *rect = got;
    return 0;
}
