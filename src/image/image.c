/*
 * image.c - decoding, preparation and thumbnails on libvips.
 *
 * The pipeline for one image (see image.h for the contract):
 *   probe the header (probe.c) -> load with the loader the magic bytes chose
 *   -> drop alpha -> Rec.601 luminance for RGB -> 16-bit scaled by its max
 *   -> 8-bit grayscale held in memory ("decode")
 *   -> Lanczos3 resize of the whole image to the target size ("resize";
 *      reductions by lanczos.c, enlarging by libvips)
 *   -> mean/scale into the caller's NCHW float buffer ("normalise").
 * Every libvips object is local to the call, so concurrent calls share
 * nothing but libvips itself, which is thread-safe after vips_init().
 */
#include "image/image.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vips/vips.h>
#include <webp/decode.h>

#include "image/dicom.h"
#include "image/internal.h"
#include "util/timing.h"

#define MAX_PREP_SIZE 8192
#define MAX_THUMB_SIDE 16383 /* WebP's limit; JPEG allows a little more */
#define THUMB_JPEG_QUALITY 85
#define THUMB_WEBP_QUALITY 80

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

/* Guards the making and the freeing of resize operations. libvips' vertical
 * reduce compiles Orc programs when it is built (under libvips' own lock)
 * and frees them when it is finalised (under no lock), and liborc's
 * executable-memory allocator is not thread-safe: a free in one decode
 * worker racing a compile in another crashed ingest now and then (SEGV in
 * liborc under g_object_unref). Running the compiled code needs no lock, so
 * decoding and resizing still run in parallel; only these short steps are
 * serialised. */
static pthread_mutex_t orc_lock = PTHREAD_MUTEX_INITIALIZER;

void image_vips_ops_lock(void)
{
    pthread_mutex_lock(&orc_lock);
}

void image_vips_ops_unlock(void)
{
    pthread_mutex_unlock(&orc_lock);
}
static atomic_bool initialised;

/* libvips reports problems twice: through its error buffer (which we turn
 * into ms_err messages) and as GLib warnings on stderr. Library code never
 * prints, so the warnings of the "VIPS" log domain are dropped. */
static void drop_vips_log(const gchar *domain, GLogLevelFlags level, const gchar *msg, gpointer data)
{
    (void)domain, (void)level, (void)msg, (void)data;
}

int image_init(int cache_off, ms_err *err)
{
    pthread_mutex_lock(&init_lock);
    if (!atomic_load(&initialised)) {
        if (VIPS_INIT("medsearch")) {
            char *msg = vips_error_buffer_copy();
            ms_err_set(err, MS_EINTERNAL, "libvips failed to start: %s", msg);
            g_free(msg);
            pthread_mutex_unlock(&init_lock);
            return MS_EINTERNAL;
        }
        /* We call the PNG, JPEG and TIFF loaders by name. Blocking the
         * loaders libvips itself marks untrusted (ImageMagick, MATLAB, ...)
         * is defence in depth should anything ever load by content. */
        vips_block_untrusted_set(TRUE);
        g_log_set_handler("VIPS", G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_INFO | G_LOG_LEVEL_DEBUG,
                          drop_vips_log, NULL);
        /* Pixels are computed on the caller's thread (compute_here); the
         * one libvips sink left, the thumbnail encoder, gets one worker:
         * callers parallelise across images. */
        vips_concurrency_set(1);
        atomic_store(&initialised, true);
    }
    if (cache_off)
        vips_cache_set_max(0);
    pthread_mutex_unlock(&init_lock);
    return 0;
}

void image_set_threads(int threads)
{
    vips_concurrency_set(threads > 0 ? threads : 0);
}

static char library_version[64];

static void format_library_version(void)
{
    snprintf(library_version, sizeof library_version, "libvips %d.%d.%d", vips_version(0), vips_version(1),
             vips_version(2));
}

const char *image_library_version(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, format_library_version);
    return library_version;
}

static int need_init(ms_err *err)
{
    if (!atomic_load(&initialised))
        return ms_err_set(err, MS_EINTERNAL, "image_init() was not called");
    return 0;
}

/* Turns the libvips error buffer into our message, "what: libvips text". */
static int vips_failed(ms_err *err, int code, const char *what)
{
    char *msg = vips_error_buffer_copy();
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
    for (char *p = msg; *p; p++)
        if (*p == '\n')
            *p = ' ';
    ms_err_set(err, code, "%s: %s", what, n ? msg : "libvips gave no reason");
    g_free(msg);
    return code;
}

/* Owns the intermediate images of one call; released all at once. The
 * longest chain (16-bit RGBA, resized) uses 10 slots. */
typedef struct pipeline {
    VipsImage *img[16];
    int n;
} pipeline;

static VipsImage **pipe_slot(pipeline *pl)
{
    return &pl->img[pl->n++];
}

static void pipe_free(pipeline *pl)
{
    pthread_mutex_lock(&orc_lock);
    for (int i = 0; i < pl->n; i++)
        if (pl->img[i])
            g_object_unref(pl->img[i]);
    pthread_mutex_unlock(&orc_lock);
    pl->n = 0;
}

static VipsImage *pipe_last(pipeline *pl)
{
    return pl->img[pl->n - 1];
}

/* Output rows computed per step by compute_here. */
#define STRIP_ROWS 64

/* Computes `in` into a new memory image on the calling thread, strip by
 * strip from the top (as sequential loaders need). libvips' own evaluation
 * (vips_image_copy_memory and its sinks) hands the work to worker threads
 * and waits: a fixed cost per call that made small images 2-3x slower on a
 * busy machine, and libvips 8.14 can lose a decoder error raised in a worker
 * (a truncated JPEG then "decoded" now and then). Here every error comes
 * back. Returns a new reference, or NULL with the libvips error set. */
static VipsImage *compute_here(VipsImage *in)
{
    VipsImage *out = vips_image_new_memory();
    vips_image_init_fields(out, in->Xsize, in->Ysize, in->Bands, in->BandFmt, in->Coding, in->Type, in->Xres,
                           in->Yres);
    if (vips_image_write_prepare(out)) {
        g_object_unref(out);
        return NULL;
    }
    VipsRegion *region = vips_region_new(in);
    size_t line = VIPS_IMAGE_SIZEOF_LINE(in);
    int rc = 0;
    for (int y = 0; y < in->Ysize && !rc; y += STRIP_ROWS) {
        VipsRect strip = {0, y, in->Xsize, VIPS_MIN(STRIP_ROWS, in->Ysize - y)};
        rc = vips_region_prepare(region, &strip);
        for (int row = y; !rc && row < y + strip.height; row++)
            memcpy(VIPS_IMAGE_ADDR(out, 0, row), VIPS_REGION_ADDR(region, 0, row), line);
    }
    g_object_unref(region);
    if (rc) {
        g_object_unref(out);
        return NULL;
    }
    return out;
}

/* A new w x h 8-bit gray memory image with its pixels allocated (not
 * set), for the steps that compute their pixels themselves; NULL when out
 * of memory. */
static VipsImage *gray8_memory_image(int w, int h)
{
    VipsImage *im = vips_image_new_memory();
    vips_image_init_fields(im, w, h, 1, VIPS_FORMAT_UCHAR, VIPS_CODING_NONE, VIPS_INTERPRETATION_B_W, 1.0, 1.0);
    if (vips_image_write_prepare(im)) {
        g_object_unref(im);
        return NULL;
    }
    return im;
}

/* Eight lanes of each type (GCC and Clang vectors; without AVX each is two
 * SSE registers). gcc's -O2 does not vectorise the 16-bit loops below by itself. */
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef float f32x8 __attribute__((vector_size(32)));
typedef uint8_t u8x8 __attribute__((vector_size(8)));

/* The largest value of a one-band ushort or float memory image. */
static double max_value(VipsImage *im)
{
    size_t n = (size_t)im->Xsize * (size_t)im->Ysize;
    double max = 0;
    if (im->BandFmt == VIPS_FORMAT_USHORT) {
        const uint16_t *p = vips_image_get_data(im);
        u16x8 lanes = {0};
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            u16x8 v;
            memcpy(&v, p + i, sizeof v);
            u16x8 more = (u16x8)(v > lanes);
            lanes = (v & more) | (lanes & ~more);
        }
        uint16_t m = 0;
        for (int k = 0; k < 8; k++)
            m = lanes[k] > m ? lanes[k] : m;
        for (; i < n; i++)
            m = p[i] > m ? p[i] : m;
        max = m;
    } else {
        const float *p = vips_image_get_data(im);
        for (size_t i = 0; i < n; i++)
            max = p[i] > max ? p[i] : max;
    }
    return max;
}

/* The largest JPEG DCT scale-down (8, 4, 2) that still leaves at least twice
 * the wanted size on both axes, so the Lanczos3 step always finishes the
 * reduction from real detail. */
static int jpeg_shrink_for(const image_info *info, int want_w, int want_h)
{
    int w, h;
    image_info_shown_size(info, &w, &h); /* want_w x want_h is of the image as shown */
    for (int s = 8; s > 1; s /= 2)
        if (w / s >= 2 * want_w && h / s >= 2 * want_h)
            return s;
    return 1;
}

static const char *decode_failed_text(image_format f)
{
    return f == IMAGE_PNG                      ? "PNG decode failed"
           : f == IMAGE_JPEG                   ? "JPEG decode failed"
           : f == IMAGE_WEBP                   ? "WebP decode failed"
           : f == IMAGE_JP2 || f == IMAGE_J2K ? "JPEG 2000 decode failed"
           : f == IMAGE_HEIC                   ? "HEIC decode failed"
           : f == IMAGE_AVIF                   ? "AVIF decode failed"
           : f == IMAGE_GIF                    ? "GIF decode failed"
                                               : "TIFF decode failed";
}

/* MedSearch's own decoders (JPEG, JPEG 2000) write 16-bit samples little
 * endian; libvips' ushort is native. Swaps the n samples at px on a
 * big-endian machine, does nothing on a little-endian one. */
static void samples16_to_native(uint8_t *px, size_t n)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (size_t i = 0; i < n; i++) {
        uint8_t t = px[2 * i];
        px[2 * i] = px[2 * i + 1];
        px[2 * i + 1] = t;
    }
#else
    (void)px, (void)n;
#endif
}

/* A JPEG file libjpeg cannot read (lossless, or 12-bit sequential; the
 * probe let only those through) decoded by MedSearch's own decoders into a
 * new memory image *out, as libvips' loader would have made it: 8-bit
 * samples as uchar, any other precision as ushort (then scaled by its
 * maximum like a 16-bit PNG), 1 or 3 bands. */
static int load_jpeg_own(const uint8_t *buf, size_t len, const image_info *info, int process, int precision,
                         VipsImage **out, ms_err *err)
{
    int bytes = precision == 8 ? 1 : 2, bands = info->bands;
    VipsInterpretation type = bands == 3 ? (bytes == 2 ? VIPS_INTERPRETATION_RGB16 : VIPS_INTERPRETATION_sRGB)
                                         : (bytes == 2 ? VIPS_INTERPRETATION_GREY16 : VIPS_INTERPRETATION_B_W);
    *out = vips_image_new_memory();
    vips_image_init_fields(*out, info->width, info->height, bands,
                           bytes == 2 ? VIPS_FORMAT_USHORT : VIPS_FORMAT_UCHAR, VIPS_CODING_NONE, type, 1.0, 1.0);
    if (vips_image_write_prepare(*out))
        return vips_failed(err, MS_ENOMEM, "no memory for the decoded JPEG");
    uint8_t *px = VIPS_IMAGE_ADDR(*out, 0, 0);
    int rc = process == 3 ? jpeg_lossless_decode(buf, len, info->width, info->height, bands, bytes, px, err)
                          : jpeg_dct_decode(buf, len, info->width, info->height, bands, bytes, px, err);
    if (!rc && bytes == 2)
        samples16_to_native(px, (size_t)info->width * (size_t)info->height * (size_t)bands);
    return rc;
}

static void free_samples(VipsImage *im, void *samples)
{
    (void)im;
    free(samples);
}

/* A JPEG 2000 file or codestream decoded by OpenJPEG (as DICOM's JPEG 2000
 * frames are), `shrink` (1, 2, 4 or 8) giving the resolution levels to
 * drop, into a new memory image *out that owns the samples: 8-bit samples
 * as uchar, any other precision as ushort, 1 to 4 bands. */
static int load_j2k_own(const uint8_t *buf, size_t len, const image_info *info, int shrink, VipsImage **out,
                        ms_err *err)
{
    int bytes = info->bits == 8 ? 1 : 2, w, h;
    uint8_t *px = NULL;
    int rc = j2k_decode(buf, len, info->width, info->height, info->bands, bytes, __builtin_ctz((unsigned)shrink), &px,
                        &w, &h, err);
    if (rc)
        return rc;
    size_t n = (size_t)w * (size_t)h * (size_t)info->bands;
    if (bytes == 2)
        samples16_to_native(px, n);
    *out = vips_image_new_from_memory(px, n * (size_t)bytes, w, h, info->bands,
                                      bytes == 2 ? VIPS_FORMAT_USHORT : VIPS_FORMAT_UCHAR);
    if (!*out) {
        free(px);
        return vips_failed(err, MS_ENOMEM, "no memory for the decoded JPEG 2000 image");
    }
    g_signal_connect(*out, "postclose", G_CALLBACK(free_samples), px);
    return 0;
}

/* A still WebP decoded by libwebp straight into a new memory image *out of
 * 8-bit RGB (an alpha channel is left out, never blended, as everywhere).
 * libvips' loader calls the same decoder into a buffer of its own and hands
 * the pixels on region by region: 23 ms against 7 for a 1024x1024 X-ray
 * here. Returns 1, *out left NULL, for an animation, whose first frame
 * libvips composes on the canvas. */
static int load_webp_direct(const uint8_t *buf, size_t len, const image_info *info, VipsImage **out, ms_err *err)
{
    WebPBitstreamFeatures features;
    if (WebPGetFeatures(buf, len, &features) != VP8_STATUS_OK)
        return ms_err_set(err, MS_EFORMAT, "WebP is corrupt: libwebp cannot read its header");
    if (features.has_animation)
        return 1;
    if (features.width != info->width || features.height != info->height)
        return ms_err_set(err, MS_EFORMAT, "webp is corrupt: header says %dx%d but the decoder sees %dx%d",
                          info->width, info->height, features.width, features.height);
    *out = vips_image_new_memory();
    vips_image_init_fields(*out, info->width, info->height, 3, VIPS_FORMAT_UCHAR, VIPS_CODING_NONE,
                           VIPS_INTERPRETATION_sRGB, 1.0, 1.0);
    if (vips_image_write_prepare(*out))
        return vips_failed(err, MS_ENOMEM, "no memory for the decoded WebP");
    size_t stride = (size_t)info->width * 3;
    if (!WebPDecodeRGBInto(buf, len, VIPS_IMAGE_ADDR(*out, 0, 0), stride * (size_t)info->height, (int)stride))
        return ms_err_set(err, MS_EFORMAT, "WebP is corrupt or truncated: libwebp could not decode it");
    return 0;
}

static int load(const void *buf, size_t len, const image_info *info, int shrink, pipeline *pl, ms_err *err)
{
    void *data = (void *)buf; /* libvips' loaders take non-const but only read */
    VipsImage **out = pipe_slot(pl);
    int rc;
    switch (info->format) {
    case IMAGE_PNG:
        /* The common plain PNG in one inflate; the rest through libpng, after
         * the bomb check its streaming inflate needs. */
        rc = png_decode_direct(buf, len, out, err);
        if (rc < 0)
            return rc;
        if (rc == PNG_DIRECT_DECLINED && (rc = png_check_stream(buf, len, err)) < 0)
            return rc;
        if (!*out)
            rc = vips_pngload_buffer(data, len, out, "access", VIPS_ACCESS_SEQUENTIAL, "fail_on",
                                     VIPS_FAIL_ON_ERROR, NULL);
        break;
    case IMAGE_JPEG: {
        int precision, process = jpeg_frame_process(buf, len, &precision);
        if (process == 3 || precision != 8)
            return load_jpeg_own(buf, len, info, process, precision, out, err);
        rc = vips_jpegload_buffer(data, len, out, "access", VIPS_ACCESS_SEQUENTIAL, "fail_on", VIPS_FAIL_ON_ERROR,
                                  "shrink", shrink, NULL);
        break;
    }
    case IMAGE_TIFF:
        rc = vips_tiffload_buffer(data, len, out, "access", VIPS_ACCESS_SEQUENTIAL, "fail_on", VIPS_FAIL_ON_ERROR,
                                  NULL);
        break;
    case IMAGE_JP2:
    case IMAGE_J2K:
        return load_j2k_own(buf, len, info, shrink, out, err);
    case IMAGE_GIF:
        /* the first frame, composed on the logical screen */
        rc = vips_gifload_buffer(data, len, out, "access", VIPS_ACCESS_SEQUENTIAL, "fail_on", VIPS_FAIL_ON_ERROR,
                                 NULL);
        break;
    case IMAGE_HEIC:
    case IMAGE_AVIF:
        /* the primary image, turned and mirrored as its irot and imir say
         * (libheif applies them; the probe measured the size as shown) */
        rc = vips_heifload_buffer(data, len, out, "fail_on", VIPS_FAIL_ON_ERROR, NULL);
        break;
    case IMAGE_WEBP:
        if ((rc = load_webp_direct(buf, len, info, out, err)) <= 0)
            return rc;
        /* the first frame of an animation, on its canvas */
        rc = vips_webpload_buffer(data, len, out, "access", VIPS_ACCESS_SEQUENTIAL, "fail_on", VIPS_FAIL_ON_ERROR,
                                  NULL);
        break;
    default:
        return ms_err_set(err, MS_EINTERNAL, "load called for an unknown format");
    }
    if (rc)
        return vips_failed(err, MS_EFORMAT, decode_failed_text(info->format));

    /* The loader must agree with the header we checked the limits on. */
    VipsImage *im = *out;
    bool size_ok = shrink == 1 ? im->Xsize == info->width && im->Ysize == info->height
                               : im->Xsize <= info->width && im->Ysize <= info->height;
    if (!size_ok)
        return ms_err_set(err, MS_EFORMAT, "%s is corrupt: header says %dx%d but the decoder sees %dx%d",
                          image_format_name(info->format), info->width, info->height, im->Xsize, im->Ysize);
    if (im->Bands < 1 || im->Bands > 4)
        return ms_err_set(err, MS_EUNSUPPORTED, "%s with %d channels is not supported",
                          image_format_name(info->format), im->Bands);
    if (im->BandFmt != VIPS_FORMAT_UCHAR && im->BandFmt != VIPS_FORMAT_USHORT)
        return ms_err_set(err, MS_EUNSUPPORTED, "%s with %s samples is not supported; only 8- and 16-bit",
                          image_format_name(info->format), vips_enum_nick(VIPS_TYPE_BAND_FORMAT, im->BandFmt));
    return 0;
}

/* n pixels of `stride` interleaved 8-bit samples (R, G, B first) to luma. */
static void luma8_pixels(const uint8_t *src, size_t stride, size_t n, uint8_t *dst)
{
    for (size_t i = 0; i < n; i++, src += stride)
        dst[i] = (uint8_t)((19595u * src[0] + 38470u * src[1] + 7471u * src[2] + 32768u) >> 16);
}

/* 8-bit RGB(A) -> 8-bit Rec.601 luma in one pass over the decoded pixels,
 * in PIL's fixed point: (19595 R + 38470 G + 7471 B + 32768) >> 16, the
 * weights 0.299/0.587/0.114 in 1/65536 (summing to exactly 1), rounded to
 * nearest. Several times cheaper than libvips' recomb (float) and linear
 * (back to 8-bit), which made colour JPEGs decode 40% slower. The colour
 * image is held in memory meanwhile (3 or 4 bytes a pixel). */
static int luma8_from_rgb(pipeline *pl, image_format format, ms_err *err)
{
    VipsImage *rgb = pipe_last(pl);
    if (rgb->dtype != VIPS_IMAGE_SETBUF && rgb->dtype != VIPS_IMAGE_SETBUF_FOREIGN) {
        /* not decoded yet (a libvips loader) */
        VipsImage **decoded = pipe_slot(pl);
        if (!(*decoded = compute_here(rgb)))
            return vips_failed(err, MS_EFORMAT, decode_failed_text(format));
        rgb = *decoded;
    }
    VipsImage **gray = pipe_slot(pl);
    const uint8_t *src = vips_image_get_data(rgb);
    if (!src || !(*gray = gray8_memory_image(rgb->Xsize, rgb->Ysize)))
        return vips_failed(err, MS_ENOMEM, "no memory for the gray image");
    luma8_pixels(src, (size_t)rgb->Bands, (size_t)rgb->Xsize * (size_t)rgb->Ysize, VIPS_IMAGE_ADDR(*gray, 0, 0));
    return 0;
}

/* Gray, gray+alpha, RGB or RGBA in; one band out: 8-bit, or for a 16-bit
 * image its ushort gray or float luminance. Alpha is ignored, not blended. */
static int to_luminance(pipeline *pl, image_format format, ms_err *err)
{
    VipsImage *in = pipe_last(pl);
    if (in->Bands >= 3 && in->BandFmt == VIPS_FORMAT_UCHAR)
        return luma8_from_rgb(pl, format, err);
    int colour_bands = in->Bands >= 3 ? 3 : 1;
    if (in->Bands != colour_bands) {
        if (vips_extract_band(in, pipe_slot(pl), 0, "n", colour_bands, NULL))
            return vips_failed(err, MS_EINTERNAL, "dropping the alpha channel failed");
        in = pipe_last(pl);
    }
    if (colour_bands == 1)
        return 0;
    /* 16-bit RGB: the same Rec.601 weights in floating point (libvips'
     * own B_W conversion would work in linear light). */
    static const double rec601[3] = {0.299, 0.587, 0.114};
    VipsImage **m = pipe_slot(pl);
    *m = vips_image_new_matrix_from_array(3, 1, rec601, 3);
    if (!*m)
        return vips_failed(err, MS_ENOMEM, "luminance matrix");
    if (vips_recomb(in, pipe_slot(pl), *m, NULL))
        return vips_failed(err, MS_EINTERNAL, "RGB to luminance failed");
    return 0;
}

void image_gray16_to_gray8(const uint16_t *in, size_t n, float gain, uint8_t *out)
{
    /* vips_linear1(gain, 0.5, uchar)'s arithmetic, to the bit: float
     * multiply, float add, clip at 255, truncate. */
    float offset = gain > 0 ? 0.5f : 0.0f;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        u16x8 v;
        memcpy(&v, in + i, sizeof v);
        f32x8 t = __builtin_convertvector(v, f32x8) * gain + offset;
        i32x8 over = t >= 255.0f, r = __builtin_convertvector(t, i32x8);
        r = (r & ~over) | (255 & over);
        u8x8 b = __builtin_convertvector(r, u8x8);
        memcpy(out + i, &b, sizeof b);
    }
    for (; i < n; i++) {
        float t = gain * (float)in[i] + offset;
        out[i] = t >= 255.0f ? 255 : (uint8_t)t;
    }
}

/* The 8-bit image of a one-band 16-bit memory image, as the last image of
 * pl: what vips_linear1 would compute, without building its operation and
 * copying the result out of it. */
static int gray16_to_gray8_here(pipeline *pl, VipsImage *in, double gain, ms_err *err)
{
    VipsImage **out = pipe_slot(pl);
    if (!(*out = gray8_memory_image(in->Xsize, in->Ysize)))
        return vips_failed(err, MS_ENOMEM, "no memory for the 8-bit image");
    image_gray16_to_gray8((const uint16_t *)VIPS_IMAGE_ADDR(in, 0, 0), (size_t)in->Xsize * (size_t)in->Ysize,
                          (float)gain, VIPS_IMAGE_ADDR(*out, 0, 0));
    return 0;
}

/* Luminance (any format) -> 8-bit, rounding to nearest. A 16-bit image is
 * scaled by its own maximum so a dim 12-bit X-ray still spans 0..255. */
static int to_uint8(pipeline *pl, bool sixteen_bit, ms_err *err)
{
    VipsImage *in = pipe_last(pl);
    double gain = 1.0;
    if (sixteen_bit) {
        /* The maximum needs every pixel, so decode into memory once (the
         * direct PNG decoder's and OpenJPEG's images already are). */
        if (in->dtype != VIPS_IMAGE_SETBUF && in->dtype != VIPS_IMAGE_SETBUF_FOREIGN) {
            VipsImage **mem = pipe_slot(pl);
            if (!(*mem = compute_here(in)))
                return vips_failed(err, MS_EFORMAT, "16-bit decode failed");
            in = *mem;
        }
        double max = max_value(in);
        gain = max > 0 ? 255.0 / max : 0.0;
        if (in->Bands == 1 && in->BandFmt == VIPS_FORMAT_USHORT)
            return gray16_to_gray8_here(pl, in, gain, err);
    } else if (in->BandFmt == VIPS_FORMAT_UCHAR) {
        return 0;
    }
    /* x * gain + 0.5, truncated by the uchar cast: round half up. */
    if (vips_linear1(in, pipe_slot(pl), gain, gain > 0 ? 0.5 : 0.0, "uchar", TRUE, NULL))
        return vips_failed(err, MS_EINTERNAL, "conversion to 8-bit failed");
    return 0;
}

/* A DICOM frame's JPEG stream decoded into the gray image out (cols x
 * rows): its samples, or the luma of its colour, then for one sample the
 * DICOM display pipeline. */
static int dicom_jpeg_gray8(const dicom_image *d, const uint8_t *frame, size_t len, uint8_t *out, ms_err *err)
{
    pipeline jp = {0};
    int rc = 0;
    if (vips_jpegload_buffer((void *)frame, len, pipe_slot(&jp), "access", VIPS_ACCESS_SEQUENTIAL, "fail_on",
                             VIPS_FAIL_ON_ERROR, NULL))
        rc = vips_failed(err, MS_EFORMAT, "JPEG decode of the DICOM frame failed");
    VipsImage *im = rc ? NULL : compute_here(pipe_last(&jp));
    if (!rc && !im)
        rc = vips_failed(err, MS_EFORMAT, "JPEG decode of the DICOM frame failed");
    if (im)
        *pipe_slot(&jp) = im;
    if (!rc && (im->Xsize != d->cols || im->Ysize != d->rows || im->BandFmt != VIPS_FORMAT_UCHAR ||
                (im->Bands != 1 && im->Bands != 3)))
        rc = dicom_frame_size_mismatch("JPEG", d->cols, d->rows, d->samples, im->Xsize, im->Ysize, im->Bands, err);
    if (!rc) {
        const uint8_t *px = vips_image_get_data(im);
        size_t n = (size_t)d->cols * (size_t)d->rows;
        if (im->Bands == 3) {
            luma8_pixels(px, 3, n, out);
        } else {
            memcpy(out, px, n);
            if (d->samples == 1)
                rc = dicom_gray8_from_jpeg(d, out, err);
        }
    }
    pipe_free(&jp);
    return rc;
}

/* The pixels of a new w x h gray image, the last of pl; NULL (with the
 * libvips error set) when out of memory. */
static uint8_t *pipe_gray8(pipeline *pl, int w, int h)
{
    VipsImage **gray = pipe_slot(pl);
    return (*gray = gray8_memory_image(w, h)) ? VIPS_IMAGE_ADDR(*gray, 0, 0) : NULL;
}

/* A frame w x h (the frame's size, or smaller when JPEG 2000 decoded it
 * reduced) in the file's layout, or in dicom_rle_decode's when decoded is
 * set, through the display pipeline into a new gray image, the last of pl. */
static int dicom_frame_gray8(pipeline *pl, const dicom_image *d, const uint8_t *frame, int decoded, int w, int h,
                             ms_err *err)
{
    dicom_image at = *d;
    at.cols = w;
    at.rows = h;
    uint8_t *out = pipe_gray8(pl, w, h);
    if (!out)
        return vips_failed(err, MS_ENOMEM, "no memory for the gray image");
    return dicom_gray8(&at, frame, decoded, out, err);
}

/* The first frame of a DICOM file, through its display pipeline, as the
 * 8-bit gray memory image every format becomes (the last image of pl). A
 * JPEG 2000 frame at least 4x larger than want_w x want_h is decoded 1 to
 * 3 resolution levels down, as a large JPEG file is decoded at 1/2 to 1/8
 * scale, leaving at least twice the wanted size for the resize. */
static int decode_parsed_dicom(const dicom_image *dp, const image_info *info, int want_w, int want_h, pipeline *pl,
                               ms_err *err)
{
    dicom_image d = *dp;
    int rc;
    if (d.encoding == DICOM_NATIVE)
        return dicom_frame_gray8(pl, &d, d.pixel_data, 0, d.cols, d.rows, err);
    uint8_t *frame = NULL, *raw = NULL;
    size_t frame_len = 0;
    if ((rc = dicom_frame_bytes(&d, &frame, &frame_len, err)))
        return rc;
    /* The frame's own SOF marker decides between libjpeg, the lossless
     * decoder and the 12-bit DCT one: some writers label an 8-bit baseline
     * frame JPEG Lossless, or the reverse. */
    bool dct12 = false;
    if (d.encoding == DICOM_JPEG || d.encoding == DICOM_JPEG_LOSSLESS) {
        int precision, process = jpeg_frame_process(frame, frame_len, &precision);
        if (process == 3)
            d.encoding = DICOM_JPEG_LOSSLESS;
        else if (process == 0 || process == 1)
            d.encoding = DICOM_JPEG;
        dct12 = d.encoding == DICOM_JPEG && precision > 8;
    }
    if (d.encoding == DICOM_JPEG && !dct12 && d.bits_stored > 8) {
        free(frame);
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: its header says %d bits stored, its JPEG frame has "
                          "8-bit samples", d.bits_stored);
    }
    int bytes = d.bits_allocated / 8, w = d.cols, h = d.rows;
    if (d.encoding == DICOM_JPEG && !dct12) {
        uint8_t *out = pipe_gray8(pl, d.cols, d.rows);
        rc = out ? dicom_jpeg_gray8(&d, frame, frame_len, out, err)
                 : vips_failed(err, MS_ENOMEM, "no memory for the gray image");
    } else if (d.encoding == DICOM_J2K) {
        int reduce = __builtin_ctz((unsigned)jpeg_shrink_for(info, want_w, want_h));
        rc = j2k_decode(frame, frame_len, d.cols, d.rows, d.samples, bytes, reduce, &raw, &w, &h, err);
    } else if (!(raw = malloc(dicom_frame_size(&d)))) {
        rc = ms_err_set(err, MS_ENOMEM, "no memory for a DICOM frame of %zu bytes", dicom_frame_size(&d));
    } else if (d.encoding == DICOM_RLE) {
        rc = dicom_rle_decode(&d, frame, frame_len, raw, err);
    } else if (d.encoding == DICOM_JPEG_LS) {
        rc = jpegls_decode(frame, frame_len, d.cols, d.rows, d.samples, bytes, raw, err);
    } else if (dct12) {
        rc = jpeg_dct_decode(frame, frame_len, d.cols, d.rows, d.samples, bytes, raw, err);
    } else {
        rc = jpeg_lossless_decode(frame, frame_len, d.cols, d.rows, d.samples, bytes, raw, err);
    }
    if (!rc && raw)
        rc = dicom_frame_gray8(pl, &d, raw, 1, w, h, err);
    free(raw);
    free(frame);
    return rc;
}

static int decode_dicom_gray8(const void *buf, size_t len, const image_info *info, int want_w, int want_h,
                              pipeline *pl, ms_err *err)
{
    dicom_image d;
    /* image_probe has held a deflated data set to the caller's file size limit */
    int rc = dicom_parse(buf, len, DICOM_MAX_INFLATED, &d, err);
    if (rc == 0)
        rc = decode_parsed_dicom(&d, info, want_w, want_h, pl, err);
    dicom_image_free(&d);
    return rc;
}

/* Turns the gray image as its EXIF or TIFF Orientation says: 2 mirrored,
 * 3 upside down, 4 mirrored upside down, 5 transposed, 6 turned a quarter
 * clockwise, 7 transposed the other way, 8 a quarter anticlockwise: a
 * rotation, followed for 2, 4, 5 and 7 by a left-right mirror. */
static int orient(pipeline *pl, int orientation, ms_err *err)
{
    static const struct {
        VipsAngle angle;
        bool mirror;
    } turns[9] = {[2] = {VIPS_ANGLE_D0, true},   [3] = {VIPS_ANGLE_D180, false}, [4] = {VIPS_ANGLE_D180, true},
                  [5] = {VIPS_ANGLE_D90, true},  [6] = {VIPS_ANGLE_D90, false},  [7] = {VIPS_ANGLE_D270, true},
                  [8] = {VIPS_ANGLE_D270, false}};
    if (orientation < 2 || orientation > 8)
        return 0;
    VipsImage *in = pipe_last(pl); /* before pipe_slot, which makes a new last */
    if (turns[orientation].angle != VIPS_ANGLE_D0) {
        if (vips_rot(in, pipe_slot(pl), turns[orientation].angle, NULL))
            return vips_failed(err, MS_EINTERNAL, "turning the image to its orientation failed");
        in = pipe_last(pl);
    }
    if (turns[orientation].mirror && vips_flip(in, pipe_slot(pl), VIPS_DIRECTION_HORIZONTAL, NULL))
        return vips_failed(err, MS_EINTERNAL, "mirroring the image to its orientation failed");
    return 0;
}

/* Decodes buf (already probed into info) to an 8-bit one-band image in
 * memory, owned by pl (its last image). want_w x want_h is the size the
 * caller will resize to; it only lets JPEG (and JPEG 2000 in DICOM) decode
 * at a reduced scale. */
static int decode_gray8(const void *buf, size_t len, const image_info *info, int want_w, int want_h, pipeline *pl,
                        ms_err *err)
{
    if (info->format == IMAGE_DICOM)
        return decode_dicom_gray8(buf, len, info, want_w, want_h, pl, err);
    /* JPEG by libjpeg's DCT scaling, JPEG 2000 by dropping resolution levels */
    bool scalable = info->format == IMAGE_JPEG || info->format == IMAGE_JP2 || info->format == IMAGE_J2K;
    int shrink = scalable ? jpeg_shrink_for(info, want_w, want_h) : 1;
    int rc = load(buf, len, info, shrink, pl, err);
    if (!rc)
        rc = to_luminance(pl, info->format, err);
    if (!rc)
        rc = to_uint8(pl, pl->img[0]->BandFmt == VIPS_FORMAT_USHORT, err);
    if (!rc)
        rc = orient(pl, info->orientation, err);
    if (rc)
        return rc;
    VipsImage *gray = pipe_last(pl);
    /* Already 8-bit gray in memory (the direct PNG decoder, RGB luma): done. */
    if (gray->dtype == VIPS_IMAGE_SETBUF && gray->Bands == 1 && gray->BandFmt == VIPS_FORMAT_UCHAR &&
        gray->Type == VIPS_INTERPRETATION_B_W)
        return 0;
    /* Mark it plain 8-bit gray: a GREY16 tag left from the loader would make
     * savers "shift" the already 8-bit values. */
    VipsImage **tagged = pipe_slot(pl);
    if (vips_copy(gray, tagged, "interpretation", VIPS_INTERPRETATION_B_W, NULL))
        return vips_failed(err, MS_EINTERNAL, "tagging the gray image failed");
    VipsImage **mem = pipe_slot(pl);
    if (!(*mem = compute_here(*tagged)))
        return vips_failed(err, MS_EFORMAT, decode_failed_text(info->format));
    return 0;
}

/* libvips' vertical Lanczos3 reduce runs vectorised up to a factor of about
 * 8 and falls back to plain C beyond; larger reductions go in steps. */
#define MAX_REDUCE_STEP 8.0

/* Reduces `in` in steps of at most MAX_REDUCE_STEP per axis until what is
 * left fits one step. Returns a new reference (in itself when no step was
 * needed), or NULL with the libvips error set. */
static VipsImage *reduce_in_steps(VipsImage *in, int w, int h)
{
    VipsImage *cur = in;
    g_object_ref(cur);
    while (cur->Xsize > MAX_REDUCE_STEP * w || cur->Ysize > MAX_REDUCE_STEP * h) {
        double fx = fmin(MAX_REDUCE_STEP, fmax(1.0, (double)cur->Xsize / w));
        double fy = fmin(MAX_REDUCE_STEP, fmax(1.0, (double)cur->Ysize / h));
        VipsImage *next = NULL;
        int rc = vips_reduce(cur, &next, fx, fy, "kernel", VIPS_KERNEL_LANCZOS3, NULL);
        g_object_unref(cur); /* next, if made, holds its input */
        if (rc)
            return NULL;
        cur = next;
    }
    return cur;
}

/* Reduces the 8-bit gray memory image `in` to w x h with our own copy of
 * libvips' Lanczos3 (lanczos.c: the same pixels, without building a
 * libvips operation per image), as the last image of pl. Returns
 * MS_EUNSUPPORTED, with nothing added to pl, for what it does not cover
 * (another pixel format, an enlarged axis). */
static int reduce_here(pipeline *pl, VipsImage *in, int w, int h, ms_err *err)
{
    if (in->Bands != 1 || in->BandFmt != VIPS_FORMAT_UCHAR || in->Xsize < w || in->Ysize < h)
        return MS_EUNSUPPORTED;
    const uint8_t *src = vips_image_get_data(in);
    if (!src)
        return MS_EUNSUPPORTED;
    VipsImage *out = gray8_memory_image(w, h);
    if (!out)
        return vips_failed(err, MS_ENOMEM, "no memory for the resized image");
    int rc = lanczos3_reduce_gray8(src, in->Xsize, in->Ysize, VIPS_IMAGE_ADDR(out, 0, 0), w, h);
    if (rc) {
        g_object_unref(out);
        if (rc == MS_EUNSUPPORTED)
            return rc;
        return ms_err_set(err, rc, "resize of %dx%d to %dx%d failed", in->Xsize, in->Ysize, w, h);
    }
    *pipe_slot(pl) = out;
    return 0;
}

/* Resizes the last image of pl to exactly w x h, evaluated into memory:
 * Lanczos3 when reducing (a true low-pass filter over every source pixel,
 * vertical pass first), bicubic interpolation when enlarging an axis. */
static int resize_from(pipeline *pl, VipsImage *in, int w, int h, ms_err *err)
{
    if (in->Xsize == w && in->Ysize == h) {
        VipsImage **same = pipe_slot(pl);
        *same = in;
        g_object_ref(in);
        return 0;
    }
    int rc = reduce_here(pl, in, w, h, err);
    if (rc != MS_EUNSUPPORTED)
        return rc;
    pthread_mutex_lock(&orc_lock);
    VipsImage *stepped = reduce_in_steps(in, w, h);
    if (!stepped) {
        pthread_mutex_unlock(&orc_lock);
        return vips_failed(err, MS_EINTERNAL, "resize failed");
    }
    /* gap 0: no box pre-shrink, the whole reduction is Lanczos3 */
    double hscale = (double)w / stepped->Xsize, vscale = (double)h / stepped->Ysize;
    VipsImage **resized = pipe_slot(pl);
    rc = vips_resize(stepped, resized, hscale, "vscale", vscale, "kernel", VIPS_KERNEL_LANCZOS3, "gap", 0.0, NULL);
    g_object_unref(stepped);
    pthread_mutex_unlock(&orc_lock);
    if (rc)
        return vips_failed(err, MS_EINTERNAL, "resize failed");
    VipsImage **mem = pipe_slot(pl);
    if (!(*mem = compute_here(*resized)))
        return vips_failed(err, MS_EINTERNAL, "resize failed");
    if ((*mem)->Xsize != w || (*mem)->Ysize != h)
        return ms_err_set(err, MS_EINTERNAL, "resize of %dx%d gave %dx%d, not %dx%d", in->Xsize, in->Ysize,
                          (*mem)->Xsize, (*mem)->Ysize, w, h);
    return 0;
}

static int resize_exact(pipeline *pl, int w, int h, ms_err *err)
{
    return resize_from(pl, pipe_last(pl), w, h, err);
}

static int check_prep(const image_prep *prep, const float *out, ms_err *err)
{
    if (!prep || !out)
        return ms_err_set(err, MS_EINVAL, "image_prepare needs a preparation and an output buffer");
    if (prep->size < 1 || prep->size > MAX_PREP_SIZE)
        return ms_err_set(err, MS_EINVAL, "input size %d is out of range 1..%d", prep->size, MAX_PREP_SIZE);
    for (int c = 0; c < 3; c++)
        if (!isfinite(prep->mean[c]) || !isfinite(prep->scale[c]))
            return ms_err_set(err, MS_EINVAL, "channel %d mean/scale is not a finite number", c);
    return 0;
}

static void normalise(const uint8_t *gray, const image_prep *prep, float *out)
{
    size_t plane = (size_t)prep->size * (size_t)prep->size;
    for (int c = 0; c < 3; c++) {
        float mean = prep->mean[c], scale = prep->scale[c];
        float *dst = out + (size_t)c * plane;
        for (size_t i = 0; i < plane; i++)
            dst[i] = ((float)gray[i] - mean) * scale;
    }
}

/* Normalises the pipeline's last image (the resized gray one) into out. */
static int normalise_last(pipeline *pl, const image_prep *prep, float *out, ms_err *err)
{
    const uint8_t *gray = vips_image_get_data(pipe_last(pl));
    if (!gray)
        return vips_failed(err, MS_EINTERNAL, "reading the resized pixels failed");
    normalise(gray, prep, out);
    return 0;
}

/* Cuts rect (in pixels of the image as shown, shown_w x shown_h) out of the
 * last image of pl, the 8-bit gray image in memory, as a new last image. The
 * gray image is smaller than shown when a JPEG or JPEG 2000 was decoded
 * reduced: the rectangle is scaled to it, its edges moved outwards to whole
 * pixels. */
static int cut_region(pipeline *pl, const image_rect *rect, int shown_w, int shown_h, ms_err *err)
{
    VipsImage *in = pipe_last(pl);
    const uint8_t *src = vips_image_get_data(in);
    if (!src || in->Bands != 1 || in->BandFmt != VIPS_FORMAT_UCHAR)
        return ms_err_set(err, MS_EINTERNAL, "the gray image to cut a region from is not 8-bit gray in memory");
    int64_t w = in->Xsize, h = in->Ysize;
    int x0 = (int)(rect->x * w / shown_w), y0 = (int)(rect->y * h / shown_h);
    int x1 = (int)(((rect->x + (int64_t)rect->width) * w + shown_w - 1) / shown_w);
    int y1 = (int)(((rect->y + (int64_t)rect->height) * h + shown_h - 1) / shown_h);
    x1 = x1 > w ? (int)w : x1 <= x0 ? x0 + 1 : x1;
    y1 = y1 > h ? (int)h : y1 <= y0 ? y0 + 1 : y1;
    if (x0 == 0 && y0 == 0 && x1 == w && y1 == h)
        return 0;
    uint8_t *out = pipe_gray8(pl, x1 - x0, y1 - y0);
    if (!out)
        return vips_failed(err, MS_ENOMEM, "no memory for the region");
    size_t stride = VIPS_IMAGE_SIZEOF_LINE(in), row = (size_t)(x1 - x0);
    for (int y = y0; y < y1; y++)
        memcpy(out + (size_t)(y - y0) * row, src + (size_t)y * stride + (size_t)x0, row);
    return 0;
}

/* The size to decode for: the input size, or, for a region, what makes the
 * region that size (so that a JPEG is not decoded too reduced for it). */
static void decode_size_for(const image_info *info, const image_rect *rect, int size, int *want_w, int *want_h)
{
    *want_w = *want_h = size;
    if (!rect)
        return;
    int w, h;
    image_info_shown_size(info, &w, &h);
    /* past the image's own size no decoder reduces: capped there, which also
     * keeps a 1-pixel region of a 100000-pixel-wide image within int */
    int64_t ww = ((int64_t)size * w + rect->width - 1) / rect->width;
    int64_t wh = ((int64_t)size * h + rect->height - 1) / rect->height;
    *want_w = (int)(ww < w ? ww : w);
    *want_h = (int)(wh < h ? wh : h);
}

static int prepare(const void *buf, size_t len, const image_limits *lim, const image_prep *prep,
                   const image_region *region, float *out, image_info *info, image_rect *used, image_timing *t,
                   ms_err *err)
{
    memset(t, 0, sizeof *t);
    int rc = need_init(err);
    if (!rc)
        rc = check_prep(prep, out, err);
    if (!rc)
        rc = image_probe(buf, len, lim, info, err);
    if (rc)
        return rc;
    int shown_w, shown_h;
    image_info_shown_size(info, &shown_w, &shown_h);
    image_rect rect = {0, 0, shown_w, shown_h};
    if (region && (rc = image_region_resolve(region, shown_w, shown_h, &rect, err)) != 0)
        return rc;
    if (used)
        *used = rect;

    pipeline pl = {0};
    int want_w, want_h;
    decode_size_for(info, region ? &rect : NULL, prep->size, &want_w, &want_h);
    uint64_t t0 = ms_now_ns();
    rc = decode_gray8(buf, len, info, want_w, want_h, &pl, err);
    if (!rc && region)
        rc = cut_region(&pl, &rect, shown_w, shown_h, err);
    uint64_t t1 = ms_now_ns();
    if (!rc)
        rc = resize_exact(&pl, prep->size, prep->size, err);
    uint64_t t2 = ms_now_ns();
    if (!rc)
        rc = normalise_last(&pl, prep, out, err);
    uint64_t t3 = ms_now_ns();
    pipe_free(&pl);
    t->decode_ns = t1 - t0;
    t->resize_ns = t2 - t1;
    t->normalise_ns = t3 - t2;
    return rc;
}

int image_prepare_timed(const void *buf, size_t len, const image_limits *lim, const image_prep *prep, float *out,
                        image_info *info, image_timing *t, ms_err *err)
{
    image_info local;
    image_timing tlocal;
    return prepare(buf, len, lim, prep, NULL, out, info ? info : &local, NULL, t ? t : &tlocal, err);
}

int image_prepare(const void *buf, size_t len, const image_limits *lim, const image_prep *prep, float *out,
                  image_info *info, ms_err *err)
{
    return image_prepare_timed(buf, len, lim, prep, out, info, NULL, err);
}

int image_prepare_region(const void *buf, size_t len, const image_limits *lim, const image_prep *prep,
                         const image_region *region, float *out, image_info *info, image_rect *used, ms_err *err)
{
    image_info local;
    image_timing t;
    return prepare(buf, len, lim, prep, region, out, info ? info : &local, used, &t, err);
}

int image_fingerprint(const void *buf, size_t len, const image_limits *lim, uint8_t out[IMAGE_FINGERPRINT_SIZE],
                      ms_err *err)
{
    image_info info;
    int rc = need_init(err);
    if (!rc && !out)
        rc = ms_err_set(err, MS_EINVAL, "image_fingerprint needs an output buffer");
    if (!rc)
        rc = image_probe(buf, len, lim, &info, err);
    if (rc)
        return rc;
    pipeline pl = {0};
    const int side = IMAGE_FINGERPRINT_SIDE;
    rc = decode_gray8(buf, len, &info, side, side, &pl, err);
    VipsImage *gray = rc ? NULL : pipe_last(&pl);
    if (gray && (gray->Xsize < side || gray->Ysize < side)) {
        /* smaller than the fingerprint on an axis: enlarged as for the model */
        if ((rc = resize_exact(&pl, side, side, err)) == 0)
            memcpy(out, vips_image_get_data(pipe_last(&pl)), IMAGE_FINGERPRINT_SIZE);
    } else if (gray) {
        const uint8_t *src = vips_image_get_data(gray);
        if (!src)
            rc = ms_err_set(err, MS_EINTERNAL, "the gray image is not in memory");
        else if ((rc = area_reduce_gray8(src, gray->Xsize, gray->Ysize, out, side, side)) != 0)
            rc = ms_err_set(err, rc, "fingerprint of %dx%d failed", gray->Xsize, gray->Ysize);
    }
    pipe_free(&pl);
    return rc;
}

/* Twice each value's rank among the fingerprint's values, 0-based, ties at
 * their mean rank (twice, to stay whole). */
static void fingerprint_ranks2(const uint8_t *v, int32_t *r2)
{
    int32_t count[256] = {0}, mean2[256];
    for (int i = 0; i < IMAGE_FINGERPRINT_SIZE; i++)
        count[v[i]]++;
    int32_t below = 0;
    for (int level = 0; level < 256; level++) {
        mean2[level] = 2 * below + count[level] - 1;
        below += count[level];
    }
    for (int i = 0; i < IMAGE_FINGERPRINT_SIZE; i++)
        r2[i] = mean2[v[i]];
}

double image_fingerprint_correlation(const uint8_t a[IMAGE_FINGERPRINT_SIZE], const uint8_t b[IMAGE_FINGERPRINT_SIZE])
{
    int32_t ra[IMAGE_FINGERPRINT_SIZE], rb[IMAGE_FINGERPRINT_SIZE];
    fingerprint_ranks2(a, ra);
    fingerprint_ranks2(b, rb);
    /* integer sums: exact, and the same whatever the order */
    int64_t sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
    for (int i = 0; i < IMAGE_FINGERPRINT_SIZE; i++) {
        sa += ra[i];
        sb += rb[i];
        saa += (int64_t)ra[i] * ra[i];
        sbb += (int64_t)rb[i] * rb[i];
        sab += (int64_t)ra[i] * rb[i];
    }
    const int64_t n = IMAGE_FINGERPRINT_SIZE;
    double va = (double)(n * saa - sa * sa), vb = (double)(n * sbb - sb * sb);
    if (va <= 0 || vb <= 0)
        return 0;
    return (double)(n * sab - sa * sb) / sqrt(va * vb);
}

static int check_thumb_args(int longest_side, thumb_format fmt, ms_err *err)
{
    if (longest_side < 1 || longest_side > MAX_THUMB_SIDE)
        return ms_err_set(err, MS_EINVAL, "thumbnail size %d is out of range 1..%d", longest_side, MAX_THUMB_SIDE);
    if (fmt != THUMB_JPEG && fmt != THUMB_WEBP && fmt != THUMB_PNG)
        return ms_err_set(err, MS_EINVAL, "unknown thumbnail format %d", (int)fmt);
    return 0;
}

/* Thumbnail size: the longest side becomes `longest` unless the image is
 * already smaller; the other side keeps the aspect ratio, at least 1. */
static void thumb_size(const image_info *info, int longest, int *w, int *h)
{
    int iw, ih;
    image_info_shown_size(info, &iw, &ih);
    int big = iw > ih ? iw : ih;
    if (big <= longest) {
        *w = iw;
        *h = ih;
        return;
    }
    double s = (double)longest / big;
    *w = iw >= ih ? longest : (int)fmax(1.0, lround(iw * s));
    *h = ih >= iw ? longest : (int)fmax(1.0, lround(ih * s));
}

/* The thumbnail of the decoded 8-bit gray memory image `in`, w x h (never
 * larger), as the last image of pl: area averaging (area.c), not the
 * model's Lanczos3, which costs several times more and buys a thumbnail
 * nothing visible. */
static int thumb_reduce(pipeline *pl, VipsImage *in, int w, int h, ms_err *err)
{
    VipsImage **slot = pipe_slot(pl);
    if (in->Xsize == w && in->Ysize == h) {
        *slot = in;
        g_object_ref(in);
        return 0;
    }
    const uint8_t *src = vips_image_get_data(in);
    if (!src || in->Bands != 1 || in->BandFmt != VIPS_FORMAT_UCHAR)
        return vips_failed(err, MS_EINTERNAL, "thumbnail source is not 8-bit gray in memory");
    if (!(*slot = gray8_memory_image(w, h)))
        return vips_failed(err, MS_ENOMEM, "no memory for the thumbnail");
    int rc = area_reduce_gray8(src, in->Xsize, in->Ysize, VIPS_IMAGE_ADDR(*slot, 0, 0), w, h);
    if (rc)
        return ms_err_set(err, rc, "thumbnail of %dx%d to %dx%d failed", in->Xsize, in->Ysize, w, h);
    return 0;
}

/* Encodes the thumbnail im, which thumb_reduce() left 8-bit gray in memory:
 * JPEG by libjpeg-turbo directly (jpeg_encode.c), WebP by libvips. */
static int encode(VipsImage *im, thumb_format fmt, uint8_t **out, size_t *out_len, ms_err *err)
{
    if (fmt == THUMB_JPEG) {
        const uint8_t *px = vips_image_get_data(im);
        if (!px || im->Bands != 1 || im->BandFmt != VIPS_FORMAT_UCHAR)
            return ms_err_set(err, MS_EINTERNAL, "thumbnail is not 8-bit gray in memory");
        return jpeg_encode_gray8(px, im->Xsize, im->Ysize, THUMB_JPEG_QUALITY, out, out_len, err);
    }
    void *vbuf = NULL;
    size_t vlen = 0;
    if (fmt == THUMB_PNG) {
        /* Level 1: a viewer-sized preview is sent once, and level 6 costs
         * several times the time for a few percent of bytes. */
        if (vips_pngsave_buffer(im, &vbuf, &vlen, "compression", 1, "strip", TRUE, NULL))
            return vips_failed(err, MS_EINTERNAL, "preview encoding failed");
    } else {
        if (!vips_type_find("VipsOperation", "webpsave_buffer"))
            return ms_err_set(err, MS_EUNSUPPORTED, "this libvips was built without WebP; ask for JPEG thumbnails");
        if (vips_webpsave_buffer(im, &vbuf, &vlen, "Q", THUMB_WEBP_QUALITY, "strip", TRUE, NULL))
            return vips_failed(err, MS_EINTERNAL, "thumbnail encoding failed");
    }
    /* Hand back plain malloc() memory: the contract says free(). */
    *out = malloc(vlen);
    if (!*out) {
        g_free(vbuf);
        return ms_err_set(err, MS_ENOMEM, "out of memory for a %zu byte thumbnail", vlen);
    }
    memcpy(*out, vbuf, vlen);
    *out_len = vlen;
    g_free(vbuf);
    return 0;
}

/* The reduced size of a w x h image whose rect is to fit in `longest`. */
static double gray8_scale(const image_rect *r, int longest)
{
    int big = r->width > r->height ? r->width : r->height;
    return big > longest ? (double)longest / big : 1.0;
}

int image_gray8(const void *buf, size_t len, const image_limits *lim, const image_rect *rect, int longest_side,
                uint8_t **pixels, int *w, int *h, ms_err *err)
{
    *pixels = NULL;
    *w = *h = 0;
    int rc = need_init(err);
    if (!rc && (longest_side < 1 || longest_side > MAX_THUMB_SIDE))
        rc = ms_err_set(err, MS_EINVAL, "size %d is out of range 1..%d", longest_side, MAX_THUMB_SIDE);
    image_info info;
    if (!rc)
        rc = image_probe(buf, len, lim, &info, err);
    if (rc)
        return rc;
    int iw, ih;
    image_info_shown_size(&info, &iw, &ih);
    image_rect r = rect ? *rect : (image_rect){0, 0, iw, ih};
    if (r.x < 0 || r.y < 0 || r.width < 1 || r.height < 1 || r.x > iw - r.width || r.y > ih - r.height)
        return ms_err_set(err, MS_EINVAL, "the rectangle %d,%d,%d,%d does not lie inside the %dx%d image", r.x, r.y,
                          r.width, r.height, iw, ih);
    double s = gray8_scale(&r, longest_side);
    int tw = (int)fmax(1.0, lround(iw * s)), th = (int)fmax(1.0, lround(ih * s));
    /* the rectangle in the reduced image, at least a pixel, inside it */
    int cx = (int)fmin(tw - 1, floor(r.x * s)), cy = (int)fmin(th - 1, floor(r.y * s));
    int cw = (int)fmax(1.0, fmin(tw - cx, lround(r.width * s))), ch = (int)fmax(1.0, fmin(th - cy, lround(r.height * s)));
    pipeline pl = {0};
    rc = decode_gray8(buf, len, &info, tw, th, &pl, err);
    if (!rc)
        rc = thumb_reduce(&pl, pipe_last(&pl), tw, th, err);
    const uint8_t *src = rc ? NULL : vips_image_get_data(pipe_last(&pl));
    if (!rc && !src)
        rc = ms_err_set(err, MS_EINTERNAL, "the gray image is not in memory");
    if (!rc && !(*pixels = malloc((size_t)cw * (size_t)ch)))
        rc = ms_err_set(err, MS_ENOMEM, "no memory for a %dx%d image", cw, ch);
    for (int y = 0; !rc && y < ch; y++)
        memcpy(*pixels + (size_t)y * (size_t)cw, src + (size_t)(cy + y) * (size_t)tw + (size_t)cx, (size_t)cw);
    pipe_free(&pl);
    if (!rc) {
        *w = cw;
        *h = ch;
    }
    return rc;
}

int image_encode_rgb_png(const uint8_t *rgb, int w, int h, uint8_t **png, size_t *png_len, ms_err *err)
{
    *png = NULL;
    *png_len = 0;
    int rc = need_init(err);
    if (rc)
        return rc;
    if (!rgb || w < 1 || h < 1 || w > MAX_THUMB_SIDE || h > MAX_THUMB_SIDE)
        return ms_err_set(err, MS_EINVAL, "no %dx%d RGB image to encode", w, h);
    VipsImage *im = vips_image_new_from_memory(rgb, (size_t)w * (size_t)h * 3, w, h, 3, VIPS_FORMAT_UCHAR);
    void *vbuf = NULL;
    size_t vlen = 0;
    if (!im)
        return vips_failed(err, MS_ENOMEM, "no memory for the image");
    im->Type = VIPS_INTERPRETATION_sRGB;
    /* level 1, as previews: the heat's smooth colours compress well anyway,
     * and level 6 costs several times the time */
    rc = vips_pngsave_buffer(im, &vbuf, &vlen, "compression", 1, "strip", TRUE, NULL)
             ? vips_failed(err, MS_EINTERNAL, "PNG encoding failed") : 0;
    pthread_mutex_lock(&orc_lock);
    g_object_unref(im);
    pthread_mutex_unlock(&orc_lock);
    if (!rc && !(*png = malloc(vlen)))
        rc = ms_err_set(err, MS_ENOMEM, "out of memory for a %zu-byte PNG", vlen);
    if (!rc) {
        memcpy(*png, vbuf, vlen);
        *png_len = vlen;
    }
    g_free(vbuf);
    return rc;
}

int image_thumbnail(const void *buf, size_t len, const image_limits *lim, int longest_side, thumb_format fmt,
                    uint8_t **out, size_t *out_len, ms_err *err)
{
    if (!out || !out_len)
        return ms_err_set(err, MS_EINVAL, "image_thumbnail needs out and out_len");
    *out = NULL;
    *out_len = 0;
    int rc = need_init(err);
    if (rc)
        return rc;
    if ((rc = check_thumb_args(longest_side, fmt, err)))
        return rc;
    image_info info;
    if ((rc = image_probe(buf, len, lim, &info, err)))
        return rc;

    int w, h;
    thumb_size(&info, longest_side, &w, &h);
    pipeline pl = {0};
    rc = decode_gray8(buf, len, &info, w, h, &pl, err);
    if (!rc)
        rc = thumb_reduce(&pl, pipe_last(&pl), w, h, err);
    if (!rc)
        rc = encode(pipe_last(&pl), fmt, out, out_len, err);
    pipe_free(&pl);
    return rc;
}

/* The ingest path: one decode feeds both the model input and the
 * thumbnail, so a PNG is inflated (and checked) once instead of twice. A
 * JPEG whose DCT scale-down would differ between the two sizes is decoded
 * twice, so that each result is exactly what the single-purpose call makes. */
int image_prepare_with_thumbnail(const void *buf, size_t len, const image_limits *lim, const image_prep *prep,
                                 float *out, image_info *info, int longest_side, thumb_format fmt,
                                 uint8_t **thumb, size_t *thumb_len, ms_err *err)
{
    if (!thumb || !thumb_len)
        return ms_err_set(err, MS_EINVAL, "image_prepare_with_thumbnail needs thumb and thumb_len");
    *thumb = NULL;
    *thumb_len = 0;
    image_info local;
    if (!info)
        info = &local;
    int rc = need_init(err);
    if (!rc)
        rc = check_prep(prep, out, err);
    if (!rc)
        rc = check_thumb_args(longest_side, fmt, err);
    if (!rc)
        rc = image_probe(buf, len, lim, info, err);
    if (rc)
        return rc;
    int tw, th;
    thumb_size(info, longest_side, &tw, &th);
    if (info->format == IMAGE_JPEG &&
        jpeg_shrink_for(info, prep->size, prep->size) != jpeg_shrink_for(info, tw, th)) {
        rc = image_prepare(buf, len, lim, prep, out, info, err);
        return rc ? rc : image_thumbnail(buf, len, lim, longest_side, fmt, thumb, thumb_len, err);
    }
    pipeline pl = {0};
    rc = decode_gray8(buf, len, info, prep->size, prep->size, &pl, err);
    VipsImage *decoded = rc ? NULL : pipe_last(&pl);
    if (!rc)
        rc = resize_from(&pl, decoded, prep->size, prep->size, err);
    if (!rc)
        rc = normalise_last(&pl, prep, out, err);
    if (!rc)
        rc = thumb_reduce(&pl, decoded, tw, th, err);
    if (!rc)
        rc = encode(pipe_last(&pl), fmt, thumb, thumb_len, err);
    pipe_free(&pl);
    return rc;
}
