/*
 * internal.h - what the image module's files share and nobody else needs.
 */
#ifndef MS_IMAGE_INTERNAL_H
#define MS_IMAGE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

/* A big-endian 16-bit value (JPEG's lengths and sizes); the caller has
 * checked the bounds. */
static inline uint16_t read_be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* A JPEG SOFn marker (a frame header: C0-CF but DHT, JPG and DAC). */
static inline int jpeg_is_sof(int marker)
{
    return marker >= 0xc0 && marker <= 0xcf && marker != 0xc4 && marker != 0xc8 && marker != 0xcc;
}

/* A big-endian 32-bit value (PNG's lengths and sizes); the caller has
 * checked the bounds. */
static inline uint32_t read_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* How much a PNG whose rows are `expected` raw bytes may inflate to before
 * it is refused: libpng tolerates a little extra data ("Too much image
 * data" is only a warning), so both PNG paths allow this slack. */
static inline uint64_t png_inflate_allowance(uint64_t expected)
{
    return expected + expected / 256 + 1024;
}

/* For a PNG that image_probe() accepted: inflates its pixel data (the
 * concatenated IDAT chunks) without keeping it and refuses, with
 * MS_EFORMAT, a stream that inflates to more than the image its header
 * declares. libpng decodes the rows the header asks for and then inflates
 * whatever follows "to check it", so a 1x1 header over megabytes of
 * compressed zeros would cost up to 1000 times its size in CPU; this check
 * stops at the first byte too many instead. The check costs an extra
 * inflate, about a third of a PNG's decode time, so it is skipped when the
 * compressed pixel data is small enough (under about 254 KiB) that even all
 * of it inflating as excess would cost at most 256 MiB of inflate, a few
 * tenths of a second. Streams that are short or corrupt pass: libpng
 * reports those itself. Returns 0 or MS_EFORMAT. */
int png_check_stream(const void *buf, size_t len, ms_err *err);

/* The message both PNG paths give a stream that inflates past what a
 * width x height image of `expected` raw bytes can hold. Returns MS_EFORMAT. */
int png_bomb_error(unsigned width, unsigned height, unsigned long long expected, ms_err *err);

/* The direct decoder (png_direct.c) declined: the file is not the plain
 * layout it takes, or is damaged in a way libpng should describe. */
#define PNG_DIRECT_DECLINED 1

/* Undoes the PNG row filters (0-4) of height rows in place: raw holds
 * height * (1 + row_bytes) bytes, each row its filter type byte and then
 * row_bytes bytes; bpp is the bytes of one pixel (1-8). Pixels of 1 and 2
 * bytes go 16 or 32 rows at a time through AVX2 where the CPU has it
 * (png_unfilter.c).
 * Returns 0, PNG_DIRECT_DECLINED (a filter type above 4, nothing changed)
 * or MS_ENOMEM. */
int png_unfilter(uint8_t *raw, size_t row_bytes, size_t height, size_t bpp);

/* 0: png_unfilter does every row with the portable code even where the CPU
 * has AVX2; 1 (the default): the 16-row blocks where it has. For the
 * tests, which hold both to libpng's pixels. */
void png_unfilter_allow_simd(int allow);

struct _VipsImage;

/* For a PNG that image_probe() accepted: decodes a non-interlaced 8- or
 * 16-bit gray, gray+alpha, RGB or RGBA image whose chunks are all in order
 * (CRCs, IDATs consecutive, IEND present, no tRNS or PLTE) with one
 * inflate and no libpng, into a new libvips memory image *out (owned by
 * the caller; 16-bit samples in machine order; the interpretation libvips'
 * loader would give). The pixels are the ones libpng would give. Returns 0;
 * PNG_DIRECT_DECLINED with *out NULL and err untouched for every other
 * file (the caller then runs png_check_stream and libvips' loader); or
 * MS_EFORMAT (a decompression bomb, refused after inflating at most the
 * declared size plus libpng's tolerance) or MS_ENOMEM. */
int png_decode_direct(const void *buf, size_t len, struct _VipsImage **out, ms_err *err);

/* Reduces an 8-bit gray image (in_w x in_h, rows packed) to out_w x out_h
 * (1 <= out <= in on each axis) by area averaging: each output pixel is
 * the mean of the source area it covers, edge pixels weighted by the part
 * inside, rounded to nearest. out is the caller's out_w * out_h bytes.
 * Returns 0, MS_EINVAL (sizes) or MS_ENOMEM. */
int area_reduce_gray8(const uint8_t *in, int in_w, int in_h, uint8_t *out, int out_w, int out_h);

/* Reduces an 8-bit gray image (in_w x in_h, rows packed) to out_w x out_h
 * with the model input's Lanczos3 filter (lanczos.c): the same pixels as
 * libvips 8.14's vips_resize(kernel lanczos3, gap 0), in steps of at most
 * 8 per axis as resize_from() does with libvips. out is the caller's
 * out_w * out_h bytes. Returns 0, MS_EINVAL (a size below 1),
 * MS_EUNSUPPORTED (an axis would be enlarged, or a reduction this exact
 * arithmetic does not cover: the caller uses libvips) or MS_ENOMEM. */
int lanczos3_reduce_gray8(const uint8_t *in, int in_w, int in_h, uint8_t *out, int out_w, int out_h);

/* 0: lanczos3_reduce_gray8 uses its portable inner loops even where the CPU
 * has AVX2, 1 (the default): the AVX2 ones where it has. For the tests,
 * which hold both to the same pixels. */
void lanczos3_allow_avx2(int allow);

/* n 16-bit samples to 8 bits as the 16-bit path scales them: out =
 * min(255, gain * in + 0.5) truncated (0.5 only when gain > 0), in float,
 * exactly as libvips' vips_linear1(gain, 0.5, "uchar", TRUE) computes it.
 * gain is 255 / the image's maximum (image.c). */
void image_gray16_to_gray8(const uint16_t *in, size_t n, float gain, uint8_t *out);

/* Encodes an 8-bit gray image (w x h, rows packed) as a baseline JPEG at
 * quality 1..100 with no JFIF or other marker (jpeg_encode.c). *out is
 * malloc'd, the caller frees it. Returns 0, MS_EINVAL (sizes, quality),
 * MS_ENOMEM or MS_EINTERNAL (libjpeg failed; its message in err). */
int jpeg_encode_gray8(const uint8_t *px, int w, int h, int quality, uint8_t **out, size_t *out_len, ms_err *err);

/* Sample v's low 8 or 16 bits (`bytes` 1 or 2; two's complement for a
 * negative one), little endian: the layout every frame decoder below
 * writes. */
static inline void put_sample_le(uint8_t *o, int32_t v, int bytes)
{
    o[0] = (uint8_t)v;
    if (bytes == 2)
        o[1] = (uint8_t)((uint32_t)v >> 8);
}

/* The MS_EFORMAT of a DICOM frame whose own header disagrees with the DICOM
 * header: another size or sample count (w x h with nc samples where
 * width x height with `components` was said), or a precision over
 * 8 x bytes allocated. codec names the frame ("JPEG Lossless", ...)
 * (dicom_codecs.c). */
int dicom_frame_size_mismatch(const char *codec, int width, int height, int components, long w, long h, long nc,
                              ms_err *err);
int dicom_frame_precision_too_high(const char *codec, int precision, int bytes, ms_err *err);

/* Decodes a lossless JPEG (ITU T.81 process 14, Huffman, one scan of all
 * components, predictors 1-7, point transform, restart intervals of whole
 * rows; jpeg_lossless.c) that must be width x height with `components`
 * samples per pixel, into out: width x height x components samples of
 * `bytes` (1 or 2; the precision must fit) each, little endian,
 * interleaved. Returns 0, MS_EFORMAT (corrupt or truncated, or not the
 * size the caller expects), MS_EUNSUPPORTED (another JPEG process, several
 * scans) or MS_ENOMEM. */
int jpeg_lossless_decode(const uint8_t *buf, size_t len, int width, int height, int components, int bytes,
                         uint8_t *out, ms_err *err);

/* Decodes a sequential DCT JPEG (ITU T.81 processes 1, 2 and 4: SOF0 or
 * SOF1, Huffman coded) of 8- or 12-bit precision and one component, the
 * 12-bit kind of DICOM's JPEG Extended transfer syntax, which Debian 12's
 * libjpeg-turbo cannot read (jpeg_dct.c). The frame must be width x height
 * with `components` (1) sample per pixel; out receives width x height
 * samples of `bytes` (1 or 2; the precision must fit) each, little endian.
 * Returns 0, MS_EFORMAT (corrupt or truncated, or not the size the caller
 * expects), MS_EUNSUPPORTED (another process, several components) or
 * MS_ENOMEM. */
int jpeg_dct_decode(const uint8_t *buf, size_t len, int width, int height, int components, int bytes,
                    uint8_t *out, ms_err *err);

/* The n of a JPEG stream's first SOFn marker (0 baseline, 1 extended, 2
 * progressive, 3 lossless, ...), with its sample precision in *precision
 * (0 when the stream ends inside the marker), or -1 when there is none
 * before its scan or the stream is not JPEG (jpeg_stream.c). Reads only
 * inside [buf, buf + len). */
int jpeg_frame_process(const uint8_t *buf, size_t len, int *precision);

/* The same for a JPEG-LS stream through CharLS (dicom_codecs.c): the
 * frame's header is checked against width, height and components before
 * anything is decoded. Returns 0, MS_EFORMAT (corrupt, truncated, not the
 * expected size, a precision over 8 x bytes) or MS_ENOMEM. */
int jpegls_decode(const uint8_t *buf, size_t len, int width, int height, int components, int bytes, uint8_t *out,
                  ms_err *err);

/* A JPEG 2000 codestream (or JP2 file) through OpenJPEG (dicom_codecs.c),
 * checked like jpegls_decode, decoded `reduce` resolution levels down
 * (each halves both sides, rounding up; at most the codestream's levels
 * minus one; a frame that cannot be reduced is decoded whole) into a
 * malloc'd *out of *out_w x *out_h samples in jpeg_lossless_decode's
 * layout. Returns 0, MS_EFORMAT or MS_ENOMEM (*out NULL on failure). */
int j2k_decode(const uint8_t *buf, size_t len, int width, int height, int components, int bytes, int reduce,
               uint8_t **out, int *out_w, int *out_h, ms_err *err);

#endif
