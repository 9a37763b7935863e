/*
 * image.h - from untrusted image bytes to a model input tensor, and thumbnails.
 *
 * Formats are chosen by magic bytes, never by file name: PNG (1/2/4/8/16-bit
 * gray, gray+alpha, RGB, RGBA, palette), JPEG (8-bit baseline, extended,
 * progressive, gray or colour; 12-bit sequential gray and lossless through
 * MedSearch's own decoders; CMYK, hierarchical and other 12-bit kinds are
 * rejected), TIFF (classic, 8/16-bit unsigned grayscale, MinIsBlack or
 * MinIsWhite, or RGB; 8-bit palette; first page) and DICOM (a Part 10
 * file or a bare data set: uncompressed, RLE, JPEG Lossless, JPEG 2000, JPEG-LS, or JPEG of 8
 * bits or 12-bit gray; monochrome of 8 or 16 bits, or 8-bit colour; first
 * frame; read by dicom.c, see dicom.h) and WebP (lossy, lossless, extended;
 * with or without alpha; first frame; its EXIF orientation is not applied,
 * as browsers do not apply it) and JPEG 2000 (a JP2 file or a bare
 * codestream, through OpenJPEG as DICOM's frames: gray or RGB, with or
 * without alpha, 1 to 16 bits; no HTJ2K, palette or YCC) and HEIF (HEIC and
 * AVIF: the primary image, turned as its irot/imir say, by libheif through
 * libvips) and GIF (the first frame, on its canvas). BMP, JPEG XL, PDF, ... are
 * recognised and refused with MS_EUNSUPPORTED and a message naming them;
 * other bytes give MS_EFORMAT. Decoding uses libvips' PNG/JPEG/TIFF/WebP/HEIF/GIF
 * loaders called by name, with its untrusted loaders blocked, where
 * MedSearch does not call the codec itself (plain PNG through libdeflate,
 * lossless and 12-bit JPEG, still WebP through libwebp, JPEG 2000 through
 * OpenJPEG, DICOM).
 *
 * Hostile input: the byte limit, then the width x height of the PNG IHDR /
 * JPEG frame header / first TIFF directory / WebP first chunk / JPEG 2000 SIZ /
 * HEIF primary item's ispe / GIF logical screen (parsed here by a bounded parser)
 * against the pixel limit, are checked before any pixel is decoded, so a
 * lying header or a decompression bomb is refused without allocating its
 * pixels. A PNG whose compressed pixel data inflates to more than its
 * header declares is refused too (libpng would otherwise inflate all of the
 * excess, up to 1000x the file size in CPU time; see internal.h). A file cut
 * short inside its pixel data, a corrupt stream, or a decoder that
 * disagrees with the header is MS_EFORMAT. Any width x height within the
 * limits works, 1x1 and 100000x1 included.
 *
 * Preparation, exactly (documented for users in docs/image.md):
 *   1. decode at full size, except that a JPEG at least 4x larger than the
 *      target on both axes is decoded at 1/2, 1/4 or 1/8 scale by libjpeg's
 *      DCT scaling, and a JPEG 2000 (file or DICOM frame) 1 to 3 resolution
 *      levels down (leaving at least 2x the target for step 4);
 *      ICC profiles are ignored; the 8-bit gray image (step 3) is turned as a JPEG's
 *      EXIF Orientation, a TIFF's Orientation tag or a PNG's eXIf says (image_info's
 *      orientation), so that every face shows and embeds the X-ray the way
 *      a browser or viewer shows the file (a phone's photo of a film is
 *      often stored sideways with Orientation 6);
 *   2. drop alpha (ignored, not blended); RGB becomes Rec.601 luma
 *      Y = 0.299 R + 0.587 G + 0.114 B on the stored values, like PIL's
 *      convert("L"): for 8-bit in PIL's exact fixed point
 *      (19595 R + 38470 G + 7471 B + 32768) >> 16, for 16-bit in floating
 *      point;
 *   3. 16-bit images (and JPEG 2000 of other precisions than 8 bits) are
 *      scaled by their own maximum: v * 255 / max(image),
 *      not / 65535 (an all-zero image stays 0); everything is rounded to
 *      8-bit gray (round half up). A DICOM image instead goes through its
 *      own display pipeline (rescale, VOI window or LUT, or its value range
 *      without either; MONOCHROME1 inverted; dicom_gray8 in dicom.h);
 *   4. resize the whole image (aspect not kept; or only the region asked
 *      for, image_prepare_region) to size x size:
 *      Lanczos3 on each reducing axis (a true antialiasing low-pass filter
 *      over all source pixels; reductions beyond 8x are done in steps of at
 *      most 8x; our own code with exactly libvips 8.14's pixels),
 *      bicubic interpolation on an enlarging axis; rounded to 8-bit;
 *   5. replicate to 3 channels and apply x[c] = (pixel - mean[c]) * scale[c],
 *      written NCHW, channel order as the model wants (the gray value is the
 *      same in every channel, so RGB vs BGR only changes mean/scale order).
 *
 * Memory: the 8-bit gray image is held once (width x height bytes); while
 * it is made, a colour image is also held decoded (3-4 bytes/pixel), and a
 * 16-bit image its 16-bit gray (2 bytes/pixel) or, for 16-bit colour, float
 * luminance (4 bytes/pixel) while its maximum is found.
 *
 * Thread safety: all functions may be called from several threads at once
 * once image_init() has returned. Nothing of the caller's buffer is kept
 * after a call returns.
 */
#ifndef MS_IMAGE_H
#define MS_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

/* JP2 is the JPEG 2000 file format (boxes around a codestream), J2K a bare
 * JPEG 2000 codestream; both are read the same way. */
typedef enum {
    IMAGE_UNKNOWN = 0,
    IMAGE_PNG,
    IMAGE_JPEG,
    IMAGE_TIFF,
    IMAGE_DICOM,
    IMAGE_WEBP,
    IMAGE_JP2,
    IMAGE_J2K,
    IMAGE_HEIC, /* HEIF of HEVC images (what phones write), or of another codec but AV1 */
    IMAGE_AVIF, /* HEIF of AV1 images */
    IMAGE_GIF
} image_format;

typedef struct image_limits {
    size_t max_bytes;     /* default 64 MiB */
    uint64_t max_pixels;  /* default 50,000,000 */
} image_limits;

typedef struct image_info {
    image_format format;
    int width, height;    /* as stored, before the orientation is applied */
    int bands;            /* channels in the file, alpha included */
    int bits;             /* 8 or 16 */
    int orientation;      /* EXIF/TIFF Orientation, 1 (as stored) to 8; 5-8 swap width and height */
} image_info;

/* The size of the image as shown: width and height after the orientation. */
void image_info_shown_size(const image_info *info, int *width, int *height);

/* How the model wants its input. */
typedef struct image_prep {
    int size;             /* output is size x size */
    float mean[3];        /* per output channel, on the 0..255 scale */
    float scale[3];       /* multiplier after mean subtraction (1/std) */
} image_prep;

/* Once per process, before any other call (the others fail with
 * MS_EINTERNAL until then); idempotent and thread-safe. Starts libvips,
 * blocks its untrusted loaders, silences its warnings (errors come back
 * through ms_err) and sets one libvips worker (image_set_threads).
 * When cache_off is set it disables libvips' operation cache for the rest of
 * the process: every call here decodes new bytes, so the cache only holds
 * memory; the server and batch jobs should pass 1. Returns 0 or
 * MS_EINTERNAL. */
int image_init(int cache_off, ms_err *err);

/* Worker threads libvips may use inside one call. Decoding, conversion and
 * resizing run on the caller's thread whatever this says; only libvips'
 * own sinks (the thumbnail encoders) use workers. image_init() sets 1,
 * right for callers that parallelise across images (server, ingest);
 * threads <= 0 means libvips' default (the number of cores). Global to the
 * process; call after image_init(). */
void image_set_threads(int threads);

/* Held while making or freeing libvips operations from several threads.
 * libvips compiles some operations (resize, convolution) into Orc programs
 * when they are made and frees them when they are finalised, and liborc's
 * allocator for compiled code is not thread-safe. Every call of this module
 * takes it itself; code that uses libvips directly beside it (a benchmark's
 * image generator) takes it around making operations and dropping its
 * references, not around computing pixels. */
void image_vips_ops_lock(void);
void image_vips_ops_unlock(void);

/* The decoding library and its version, "libvips 8.14.1", for reports. */
const char *image_library_version(void);

image_limits image_default_limits(void);

/* "png", "jpeg", "tiff", "dicom" or "unknown"; and the MIME type
 * ("image/png", ..., "application/dicom"). */
const char *image_format_name(image_format f);
const char *image_format_mime(image_format f);

/* Format from the first bytes alone; IMAGE_UNKNOWN when none matches. */
image_format image_sniff(const void *buf, size_t len);

/* Reads the header only: format, size, bands, bits; checks limits. Needs
 * no image_init() and decodes nothing. lim NULL means the defaults; info
 * may be NULL, and is filled as far as the header was read even on
 * MS_ETOOBIG (so the caller can report the size). bands counts alpha, and a
 * palette or tRNS transparency as the channels they decode to.
 * Returns 0, or MS_EINVAL (buf NULL with len > 0), MS_EFORMAT (empty,
 * unknown or corrupt), MS_EUNSUPPORTED (CMYK, RGB TIFF, a High-Throughput
 * JPEG 2000 DICOM, ...), MS_ENOTIMAGE (a DICOM file
 * without Pixel Data: a DICOMDIR, a report), MS_ETOOBIG (over a limit). */
int image_probe(const void *buf, size_t len, const image_limits *lim,
                image_info *info, ms_err *err);

/* ---- a region of the image instead of the whole ----
 *
 * A query can name the part of its X-ray to search with (one lung, the
 * film inside a photo of a light box, a screenshot without its viewer's
 * frame): the rectangle is cut from the 8-bit gray image as shown (step 3,
 * after the orientation), and only it is resized to the model's input in
 * step 4, so that the region fills the input as a whole image would. Each
 * of its four numbers is in pixels of the image as shown, or a percentage
 * of the shown width (x, width) or height (y, height). */
typedef struct image_region {
    double value[4];          /* x, y, width, height */
    unsigned char percent[4]; /* 1: value[i] is a percentage, 0: pixels */
} image_region;

/* A rectangle in pixels of the image as shown. */
typedef struct image_rect {
    int x, y, width, height;
} image_rect;

/* Longest region text image_region_parse reads. */
#define IMAGE_REGION_TEXT_MAX 128

/* Reads "X,Y,W,H": four values separated by commas (spaces around them
 * allowed), each a whole number of pixels (0 to 1,000,000,000) or a
 * decimal percentage followed by '%' (0 to 100); width and height above
 * zero; a percentage x + width (y + height) at most 100. "10%,0,80%,50%"
 * mixes both. Returns 0, or MS_EINVAL with a message naming what is
 * wrong. */
int image_region_parse(const char *text, image_region *r, ms_err *err);

/* The region in pixels of an image shown w x h. A percentage becomes
 * pixels by rounding its edges to the nearest pixel (edge = value * size /
 * 100); a rectangle that rounds to nothing keeps one pixel. Returns 0, or
 * MS_EINVAL when the rectangle does not lie inside the image (its message
 * gives the image's size). */
int image_region_resolve(const image_region *r, int w, int h, image_rect *rect, ms_err *err);

/* Decodes and prepares one image into out[3 * size * size] (NCHW, caller's
 * buffer, written only on success). lim NULL means the defaults; info, when
 * not NULL, receives the probe result. Returns 0 or a negative code as
 * image_probe, plus MS_EINVAL (prep NULL, size outside 1..8192, a mean or
 * scale not finite, out NULL), MS_EFORMAT (the pixel data is corrupt or
 * truncated), MS_ENOMEM, MS_EINTERNAL (image_init not called). */
int image_prepare(const void *buf, size_t len, const image_limits *lim,
                  const image_prep *prep, float *out, image_info *info,
                  ms_err *err);

/* image_prepare of a region of the image (region NULL: the whole image, as
 * image_prepare). used, when not NULL, receives the region in pixels of the
 * image as shown (the whole image when region is NULL). A large JPEG or
 * JPEG 2000 is decoded reduced only as far as the region keeps at least
 * twice the input size. Returns what image_prepare returns; MS_EINVAL also
 * when the region does not lie inside the image. */
int image_prepare_region(const void *buf, size_t len, const image_limits *lim,
                         const image_prep *prep, const image_region *region,
                         float *out, image_info *info, image_rect *used,
                         ms_err *err);

/* image_prepare, also filling t (when not NULL) with the time of each
 * stage in nanoseconds, for the benchmark: decode = load + gray + 8-bit into
 * memory (steps 1-3), resize = step 4, normalise = step 5. Same output. */
typedef struct image_timing {
    uint64_t decode_ns, resize_ns, normalise_ns;
} image_timing;
int image_prepare_timed(const void *buf, size_t len, const image_limits *lim,
                        const image_prep *prep, float *out, image_info *info,
                        image_timing *t, ms_err *err);

typedef enum { THUMB_JPEG = 0, THUMB_WEBP, THUMB_PNG } thumb_format;

/* A thumbnail whose longest side is longest_side (1..16383; never
 * enlarged), aspect kept (the short side at least 1 pixel): 8-bit
 * grayscale made as steps 1-3 above, then reduced by area averaging (each
 * pixel the mean of the source area it covers; not Lanczos3), encoded as
 * JPEG (quality 85), WebP (quality 80) or PNG (lossless 8-bit gray, zlib
 * level 1: the "preview" a viewer shows), metadata stripped. *out is
 * malloc'd and owned by the caller (free()); NULL on failure. Returns 0 or
 * a code as image_prepare; MS_EUNSUPPORTED for WebP when libvips was built
 * without it. */
int image_thumbnail(const void *buf, size_t len, const image_limits *lim,
                    int longest_side, thumb_format fmt, uint8_t **out,
                    size_t *out_len, ms_err *err);

/* The image as MedSearch sees it (steps 1-4 above), or its rectangle rect
 * of the image as shown (NULL: all of it), as 8-bit gray pixels reduced by
 * area averaging so that the rectangle's longest side is at most
 * longest_side (1..16383; never enlarged): *pixels (*w x *h, rows from the
 * top) is malloc'd, the caller frees it. Returns 0 or a code as
 * image_thumbnail; MS_EINVAL for a rectangle not inside the image. */
int image_gray8(const void *buf, size_t len, const image_limits *lim, const image_rect *rect, int longest_side,
                uint8_t **pixels, int *w, int *h, ms_err *err);

/* A heat map over a gray image (overlay.c): each pixel of the w x h gray
 * image is blended toward orange and yellow by its heat, the grid_w x
 * grid_h cells (rows from the top, each covering an equal part of the
 * image) interpolated bilinearly between the cells' centres and divided by
 * the largest cell; where the heat is zero or negative the pixel stays
 * gray. Writes w x h x 3 bytes (RGB) to rgb. The web page's viewer draws
 * the same colours. */
void image_heat_blend(const uint8_t *gray, int w, int h, const float *cells, int grid_w, int grid_h, uint8_t *rgb);

/* The w x h gray image enlarged k times (k >= 1) by repeating each pixel
 * k x k times, so that a small X-ray's overlay shows its own pixels:
 * malloc'd, the caller frees it; NULL when out of memory. */
uint8_t *image_gray8_repeat(const uint8_t *gray, int w, int h, int k);

/* w x h RGB pixels (1..16383 each way) as a PNG: *png malloc'd, the caller
 * frees it. Returns 0, MS_EINVAL, MS_ENOMEM or MS_EINTERNAL. */
int image_encode_rgb_png(const uint8_t *rgb, int w, int h, uint8_t **png, size_t *png_len, ms_err *err);

/* image_prepare and image_thumbnail of the same bytes from one decode (what
 * ingest needs): out and *thumb are exactly what the two calls would give.
 * *thumb is malloc'd and owned by the caller (free()); on failure it is
 * NULL and out may have been written. Returns 0 or a code as the two. */
int image_prepare_with_thumbnail(const void *buf, size_t len, const image_limits *lim,
                                 const image_prep *prep, float *out, image_info *info,
                                 int longest_side, thumb_format fmt, uint8_t **thumb,
                                 size_t *thumb_len, ms_err *err);

/* ---- fingerprints: is one picture a copy of another? ----
 *
 * The image as MedSearch sees it (steps 1-4 above: decoded, turned upright,
 * 8-bit gray, a DICOM through its display pipeline) reduced to 32 x 32 by
 * area averaging, aspect not kept. Two copies of one picture (re-encoded,
 * resized, windowed or made brighter) give fingerprints whose rank
 * correlation is near 1, and two different radiographs, however alike,
 * lower: see `medsearch duplicates` (docs/cli.md) for the figures on real
 * X-rays. */
#define IMAGE_FINGERPRINT_SIDE 32
#define IMAGE_FINGERPRINT_SIZE (IMAGE_FINGERPRINT_SIDE * IMAGE_FINGERPRINT_SIDE)

/* The fingerprint of the image in buf into out (the caller's
 * IMAGE_FINGERPRINT_SIZE bytes, rows top to bottom). Returns 0 or a code as
 * image_prepare. */
int image_fingerprint(const void *buf, size_t len, const image_limits *lim,
                      uint8_t out[IMAGE_FINGERPRINT_SIZE], ms_err *err);

/* The rank correlation (Spearman's: Pearson's of the values' ranks, ties
 * at their mean rank) of two fingerprints, -1..1; 0 when either is flat
 * (one gray level throughout: nothing to compare). Ranks make it blind to
 * any increasing change of the gray levels (another window, a gamma), which
 * copies exported from one DICOM differ by. */
double image_fingerprint_correlation(const uint8_t a[IMAGE_FINGERPRINT_SIZE],
                                     const uint8_t b[IMAGE_FINGERPRINT_SIZE]);

/* What a DICOM file says about its patient and study, for the collection's
 * metadata. Each text is NUL-terminated and "" when the file does not
 * have it or it is not printable ASCII of a valid length. */
typedef struct image_dicom_meta {
    char patient_id[65];   /* Patient ID (0010,0020) */
    char study_date[17];   /* Study Date (0008,0020) as YYYY-MM-DD */
    int age;               /* Patient's Age (0010,1010) in whole years, -1 unknown */
    char sex;              /* Patient's Sex (0010,0040): 'M', 'F' or 0 (O and other values) */
    char view[17];         /* View Position (0018,5101): PA, AP, LL, ... */
    char modality[17];     /* Modality (0008,0060): CR, DX, ... */
    char body_part[17];    /* Body Part Examined (0018,0015): CHEST, ... */
} image_dicom_meta;

/* Reads those attributes of the DICOM file in buf (top level, up to its
 * Pixel Data). Needs no image_init(). Returns 0, or a code as image_probe
 * (MS_EFORMAT for a file that is not DICOM). */
int image_dicom_metadata(const void *buf, size_t len, image_dicom_meta *m, ms_err *err);

#endif
