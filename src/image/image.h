/*
 * image.h - from untrusted image bytes to a model input tensor, and thumbnails.
 *
 * Formats are chosen by magic bytes, never by file name: PNG (8/16-bit gray,
 * gray+alpha, RGB, RGBA, palette), JPEG (baseline, progressive, gray; CMYK is
 * rejected) and TIFF (8/16-bit grayscale). Decoding uses libvips with its
 * untrusted loaders blocked. Size limits are checked from the header before
 * any pixel is decoded.
 *
 * Preparation, exactly (documented for users in docs/):
 *   1. decode; 16-bit images are scaled to 8-bit by their actual maximum
 *      (v * 255 / max), not by 65535; an alpha channel is dropped;
 *   2. convert to 8-bit grayscale (RGB by Rec.601 luminance);
 *   3. resize the whole image (no crop) to size x size with an antialiasing
 *      filter (libvips' Lanczos3 reduce);
 *   4. replicate to 3 channels and apply x[c] = (pixel - mean[c]) * scale[c],
 *      written NCHW, channel order as the model wants (the gray value is the
 *      same in every channel, so RGB vs BGR only changes mean/scale order).
 *
 * Thread safety: all functions may be called from several threads at once
 * once image_init() has returned.
 */
#ifndef MS_IMAGE_H
#define MS_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

typedef enum { IMAGE_UNKNOWN = 0, IMAGE_PNG, IMAGE_JPEG, IMAGE_TIFF } image_format;

typedef struct image_limits {
    size_t max_bytes;     /* default 64 MiB */
    uint64_t max_pixels;  /* default 50,000,000 */
} image_limits;

typedef struct image_info {
    image_format format;
    int width, height;
    int bands;            /* channels in the file, alpha included */
    int bits;             /* 8 or 16 */
} image_info;

/* How the model wants its input. */
typedef struct image_prep {
    int size;             /* output is size x size */
    float mean[3];        /* per output channel, on the 0..255 scale */
    float scale[3];       /* multiplier after mean subtraction (1/std) */
} image_prep;

/* Once per process, before any other call; idempotent. Blocks untrusted
 * libvips loaders and, when cache_off is set, disables the operation cache
 * (the server does this). Returns 0 or MS_EINTERNAL. */
int image_init(int cache_off, ms_err *err);

image_limits image_default_limits(void);

/* "png", "jpeg", "tiff" or "unknown"; and the MIME type ("image/png", ...). */
const char *image_format_name(image_format f);
const char *image_format_mime(image_format f);

/* Format from the first bytes alone; IMAGE_UNKNOWN when none matches. */
image_format image_sniff(const void *buf, size_t len);

/* Reads the header only: format, size, bands, bits; checks limits.
 * Returns 0, or MS_EFORMAT (unknown/corrupt), MS_EUNSUPPORTED (CMYK, DICOM,
 * ...), MS_ETOOBIG (over a limit). */
int image_probe(const void *buf, size_t len, const image_limits *lim,
                image_info *info, ms_err *err);

/* Decodes and prepares one image into out[3 * size * size] (NCHW, caller's
 * buffer). info, when not NULL, receives the probe result. Returns 0 or a
 * negative code as image_probe, plus MS_ENOMEM. */
int image_prepare(const void *buf, size_t len, const image_limits *lim,
                  const image_prep *prep, float *out, image_info *info,
                  ms_err *err);

/* Per-stage timing of image_prepare for the benchmark, in nanoseconds. */
typedef struct image_timing {
    uint64_t decode_ns, resize_ns, normalise_ns;
} image_timing;
int image_prepare_timed(const void *buf, size_t len, const image_limits *lim,
                        const image_prep *prep, float *out, image_info *info,
                        image_timing *t, ms_err *err);

typedef enum { THUMB_JPEG = 0, THUMB_WEBP } thumb_format;

/* A thumbnail whose longest side is longest_side (never enlarged), 8-bit
 * grayscale. *out is malloc'd and owned by the caller (free()). */
int image_thumbnail(const void *buf, size_t len, const image_limits *lim,
                    int longest_side, thumb_format fmt, uint8_t **out,
                    size_t *out_len, ms_err *err);

#endif
