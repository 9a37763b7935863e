/*
 * dicom.h - reading the one image of a DICOM file (PS3.10 "Part 10" file:
 * 128-byte preamble, "DICM", file meta group, data set; or the data set
 * alone, as older modalities and ACR-NEMA archives write it), without libvips.
 * Internal to the image module: image.c turns what this gives into the
 * 8-bit gray image every other format becomes.
 *
 * What is read:
 *   - transfer syntaxes: implicit VR little endian, explicit VR little and
 *     big endian (native pixels), the deflated data set of Deflated
 *     Explicit VR Little Endian (inflated here with libdeflate, within the
 *     caller's bound), RLE Lossless (decoded here), JPEG
 *     Lossless (process 14, jpeg_lossless.c), JPEG 2000 (OpenJPEG) and
 *     JPEG-LS (CharLS; both dicom_codecs.c), and JPEG Baseline / Extended
 *     (process 1 and 2/4: image.c hands an 8-bit frame's bytes to libjpeg
 *     through libvips and decodes a 12-bit one with jpeg_dct.c).
 *     High-Throughput JPEG 2000 and video are refused by name;
 *   - pixels: 1 sample (MONOCHROME1, MONOCHROME2) of 8 or 16 bits
 *     allocated, any bits stored up to that with any high bit, unsigned or
 *     two's complement; or 3 samples (RGB, YBR_FULL, and YBR_FULL_422 /
 *     YBR_ICT / YBR_RCT only as JPEG decodes them) of 8 bits, interleaved
 *     or planar (YBR_ICT and YBR_RCT as JPEG 2000 decodes them to RGB).
 *     A multi-frame image gives its first frame;
 *   - the grayscale pipeline of PS3.3 C.11 for one sample: the modality
 *     rescale (Rescale Slope, Intercept), then the first VOI window
 *     (Window Center, Width; VOI LUT Function LINEAR, LINEAR_EXACT or
 *     SIGMOID) or, without a window, the VOI LUT of the VOI LUT Sequence,
 *     or without either the full range of the frame's values, then
 *     MONOCHROME1's inversion; Pixel Padding Value (and Range Limit) marks
 *     pixels shown black and left out of that range; see dicom_gray8;
 *   - a few attributes for the collection's metadata (dicom_meta).
 *
 * Hostile input: every element's length is checked against the bytes left
 * before its value is read, every loop advances, sequences nest at most
 * DICOM_MAX_DEPTH deep, and the frame's size comes from Rows, Columns and
 * the sample layout, never from a length field, so a lying header can only
 * give an error. Nothing here allocates except a deflated data set's
 * inflated copy (bounded by the caller), dicom_frame_bytes and
 * dicom_rle_decode's output, the last two bounded by the frame size the
 * caller has checked against its pixel limit.
 */
#ifndef MS_IMAGE_DICOM_H
#define MS_IMAGE_DICOM_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

#define DICOM_MAX_DEPTH 16
#define DICOM_MAX_INFLATED (256u << 20)  /* bytes a deflated data set may ever inflate to */

typedef enum { DICOM_NATIVE = 0, DICOM_RLE, DICOM_JPEG, DICOM_JPEG_LOSSLESS, DICOM_J2K, DICOM_JPEG_LS } dicom_encoding;

typedef enum {
    DICOM_MONOCHROME1 = 1, DICOM_MONOCHROME2, DICOM_RGB, DICOM_YBR_FULL,
    DICOM_YBR_JPEG,        /* YBR_FULL_422, YBR_PARTIAL_420, YBR_ICT, YBR_RCT: JPEG gives RGB */
} dicom_photometric;

typedef enum { DICOM_VOI_LINEAR = 0, DICOM_VOI_LINEAR_EXACT, DICOM_VOI_SIGMOID } dicom_voi_function;

/* The VOI LUT of the VOI LUT Sequence's first item (PS3.3 C.11.2.1.1). */
typedef struct dicom_voi_lut {
    int entries;           /* 1..65536 */
    int first;             /* the stored value mapped by the first entry */
    int bits;              /* 8..16: the entries' range is 0..2^bits - 1 */
    const uint8_t *data;   /* entries 16-bit values in the file's byte order, or 8-bit ones */
    int data_bytes;        /* 1 or 2 per entry */
} dicom_voi_lut;

typedef struct dicom_image {
    char transfer_syntax[65];
    char sop_class[65];    /* Media Storage SOP Class UID (or the data set's SOP Class UID); "" when absent */
    int bare;              /* a data set without the file meta group (no transfer syntax given) */
    dicom_encoding encoding;
    int big_endian;        /* native pixels stored big endian */
    int rows, cols, samples, frames;
    int bits_allocated, bits_stored, high_bit, is_signed, planar;
    dicom_photometric photometric;
    double slope, intercept;
    int has_window;
    double window_center, window_width;
    dicom_voi_function voi_function;
    int has_voi_lut;
    dicom_voi_lut voi_lut;
    /* Pixel Padding Value (and Range Limit): stored values padding_lo ..
     * padding_hi mark pixels outside the image, shown black and left out
     * of the frame's range. */
    int has_padding;
    int32_t padding_lo, padding_hi;
    /* Native: the Pixel Data value (all frames). Encapsulated: the items
     * after the Basic Offset Table, up to the sequence's end. */
    const uint8_t *pixel_data;
    size_t pixel_len;
    const uint8_t *offset_table;   /* encapsulated: the Basic Offset Table's value */
    size_t offset_table_len;
    /* Attributes for the collection, NUL-terminated, "" when absent,
     * printable ASCII only (a value with other bytes is left out). */
    char patient_id[65], patient_sex[17], patient_age[17], view_position[17];
    char study_date[17], modality[17], body_part[17];
    /* A deflated data set's inflated bytes (malloc'd; the pointers above
     * point into them), or NULL. Released by dicom_image_free. */
    uint8_t *inflated;
} dicom_image;

/* True when buf is a Part 10 file ("DICM" after the preamble), or starts
 * with a bare data set as older modalities and archives write it (see
 * dicom.c, "the header"). buf may be only the file's head. */
int dicom_sniff(const uint8_t *buf, size_t len);

/* Reads the file's header and the attributes above; finds the pixel data
 * and checks it against the image attributes (a native frame must be
 * there in full). Decodes nothing but a deflated data set, which may
 * inflate to at most max_inflated bytes (and never past
 * DICOM_MAX_INFLATED): a decompression bomb costs at most that much
 * memory. d points into buf afterwards, or into its own inflated copy of
 * the data set: call dicom_image_free(d) when done with it, after an error
 * too.
 * Returns 0, MS_EFORMAT (corrupt, truncated, attributes missing or
 * contradicting each other, a deflated data set that does not inflate),
 * MS_ETOOBIG (one that inflates past the bound), MS_ENOMEM or
 * MS_EUNSUPPORTED (a transfer syntax, photometric interpretation or
 * sample layout not listed above). */
int dicom_parse(const uint8_t *buf, size_t len, size_t max_inflated, dicom_image *d, ms_err *err);

/* Releases what dicom_parse allocated (the inflated data set); d's
 * pointers are invalid afterwards. Safe to call twice. */
void dicom_image_free(dicom_image *d);

/* Bytes of one native frame: rows x cols x samples x bits_allocated / 8. */
size_t dicom_frame_size(const dicom_image *d);

/* The compressed bytes of the first frame of an encapsulated image: its
 * fragments concatenated (all fragments for a single frame; for several
 * frames, those the Basic Offset Table gives the first, or without a table
 * the first fragment for RLE and the fragments up to the first one ending
 * a JPEG stream). *out is malloc'd, the caller frees it. Returns 0,
 * MS_EFORMAT or MS_ENOMEM. */
int dicom_frame_bytes(const dicom_image *d, uint8_t **out, size_t *out_len, ms_err *err);

/* Decodes an RLE Lossless frame (PS3.5 annex G) into out, the layout of a
 * native frame: dicom_frame_size(d) bytes, samples interleaved, 16-bit
 * values little endian ("decoded" layout, as jpeg_lossless_decode writes
 * too). Returns 0 or MS_EFORMAT (a segment table that does not fit the
 * image, a segment that ends before its rows). */
int dicom_rle_decode(const dicom_image *d, const uint8_t *frame, size_t len, uint8_t *out, ms_err *err);

/* Native frame samples -> 8-bit gray (out: rows x cols bytes).
 * One sample: value = the stored bits (sign-extended when signed),
 * m = value * slope + intercept, then with a window (c, w):
 *   LINEAR        m <= c - 0.5 - (w-1)/2 -> 0, m > c - 0.5 + (w-1)/2 -> 255,
 *                 else ((m - (c - 0.5)) / (w - 1) + 0.5) * 255   (w >= 1)
 *   LINEAR_EXACT  m <= c - w/2 -> 0, m > c + w/2 -> 255,
 *                 else (m - c) / w * 255 + 127.5                 (w > 0)
 *   SIGMOID       255 / (1 + exp(-4 (m - c) / w))                (w > 0)
 * with a VOI LUT instead: the entry of m (clamped to the table) scaled
 * from 0..2^bits - 1 to 0..255; with neither: (m - min) / (max - min) * 255
 * over the frame's values but padding (a flat frame gives 0), except that
 * 8-bit unsigned values without a rescale stay as they are. Each result is
 * rounded half up; MONOCHROME1 then becomes 255 - y; padding pixels 0.
 * Three samples: RGB -> (19595 R + 38470 G + 7471 B + 32768) >> 16, as
 * the other formats' colour images; YBR_FULL -> its Y.
 * `frame` is in the file's layout (d->big_endian, d->planar), or in the
 * decoded layout (little endian, interleaved) when `decoded` is set.
 * Returns 0, MS_ENOMEM. */
int dicom_gray8(const dicom_image *d, const uint8_t *frame, int decoded, uint8_t *out, ms_err *err);

/* An 8-bit gray image decoded from a JPEG frame (w x h = cols x rows)
 * through the same pipeline as an 8-bit native frame: rescale, window or
 * LUT, MONOCHROME1. In place. Returns 0 or MS_ENOMEM. */
int dicom_gray8_from_jpeg(const dicom_image *d, uint8_t *px, ms_err *err);

#endif
