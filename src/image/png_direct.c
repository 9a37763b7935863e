/*
 * png_direct.c - the fast path for the PNGs X-ray collections are made of
 * (see internal.h for the contract).
 *
 * Why it exists: a 1024x1024 8-bit PNG cost about 13 ms to decode through
 * libvips' PNG loader, most of it two inflates of the same stream (the bomb
 * check of png_stream.c, then libpng's own, done 8 KiB at a time through
 * zlib). That was the largest cost of ingest after the model and half of a
 * search's latency. Here the IDAT chunks are gathered into one buffer and
 * inflated in a single libdeflate call into a buffer exactly as large as the
 * rows the header declares (plus libpng's tolerance): a stream that would
 * inflate to more stops at the first byte too many, so the bomb check costs
 * nothing extra, and libdeflate inflates whole buffers 2-3x faster than
 * zlib's streaming inflate. The rows are then unfiltered (png_unfilter.c)
 * and copied into a libvips memory image, which the rest of the pipeline
 * takes as if libvips had decoded it.
 *
 * What it takes: non-interlaced 8- and 16-bit gray, gray+alpha, RGB and
 * RGBA, with every chunk in its place and every CRC right. Everything else
 * (palettes, 1/2/4-bit gray, Adam7, tRNS, unknown critical chunks, a stream
 * that is corrupt, short, or followed by stray bytes, a missing IEND, a CRC
 * error) is handed back untouched to the libvips path, which decodes or
 * reports it exactly as before. The only verdict given here is the bomb,
 * since deciding it costs nothing. The pixels are those of libpng by
 * construction (tests/unit/test_image_png.c compares both on every filter
 * type, colour type, depth and odd widths).
 */
#include "image/internal.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <libdeflate.h>
#include <vips/vips.h>

/* Raw (filtered) rows up to this size take the direct path; beyond it the
 * raw rows and the decoded image together would double the memory the
 * streaming libvips loader needs. 64 MiB is an 8-bit gray 8192x8191. */
#define DIRECT_MAX_RAW ((uint64_t)64 << 20)

/* Where the chunks are, once the layout has been found sound. */
typedef struct png_layout {
    uint32_t width, height;
    unsigned depth, channels;  /* 8 or 16; 1..4 */
    size_t idat_first;         /* offset of the first IDAT chunk */
    size_t idat_end;           /* offset just past the last IDAT chunk */
    uint64_t idat_bytes;       /* their data, summed */
} png_layout;

static bool is_type(const uint8_t *chunk, const char *type)
{
    return memcmp(chunk + 4, type, 4) == 0;
}

static bool chunk_crc_ok(const uint8_t *chunk, uint32_t clen)
{
    uint32_t crc = libdeflate_crc32(0, chunk + 4, 4 + (size_t)clen);
    return crc == read_be32(chunk + 8 + clen);
}

/* Colour type -> channels, for the types taken here (0 = not taken). */
static unsigned direct_channels(unsigned colour)
{
    switch (colour) {
    case 0: return 1;
    case 2: return 3;
    case 4: return 2;
    case 6: return 4;
    default: return 0;
    }
}

/* Reads IHDR and walks every chunk to IEND. False when anything is not the
 * plain layout this path takes: the libvips path then decides. */
static bool find_layout(const uint8_t *p, size_t len, png_layout *lay)
{
    if (len < 8 + 25 || !is_type(p + 8, "IHDR") || read_be32(p + 8) != 13)
        return false;
    const uint8_t *ihdr = p + 16;
    unsigned depth = ihdr[8], channels = direct_channels(ihdr[9]);
    if (!channels || (depth != 8 && depth != 16) || ihdr[10] || ihdr[11] || ihdr[12])
        return false; /* palette, sub-byte gray, unknown methods, Adam7 */
    *lay = (png_layout){.width = read_be32(ihdr), .height = read_be32(ihdr + 4), .depth = depth, .channels = channels};
    enum { BEFORE_IDAT, IN_IDAT, AFTER_IDAT } state = BEFORE_IDAT;
    for (size_t off = 8; off + 12 <= len;) {
        const uint8_t *c = p + off;
        uint32_t clen = read_be32(c);
        if (clen > 0x7fffffffu || clen > len - off - 12 || !chunk_crc_ok(c, clen))
            return false;
        bool idat = is_type(c, "IDAT");
        if (idat && state == AFTER_IDAT)
            return false; /* IDATs must be consecutive */
        if (idat && state == BEFORE_IDAT) {
            lay->idat_first = off;
            state = IN_IDAT;
        }
        if (!idat && state == IN_IDAT) {
            lay->idat_end = off;
            state = AFTER_IDAT;
        }
        if (idat)
            lay->idat_bytes += clen;
        else if (is_type(c, "IEND"))
            return state == AFTER_IDAT && clen == 0;
        else if (off > 8 && ((c[4] & 0x20) == 0 || is_type(c, "tRNS")))
            return false; /* a critical chunk (PLTE, unknown), or transparency */
        off += 12 + (size_t)clen;
    }
    return false; /* no IEND: cut short, or stray bytes */
}

/* The concatenated IDAT data, malloc'd; NULL when out of memory. */
static uint8_t *gather_idat(const uint8_t *p, const png_layout *lay)
{
    uint8_t *z = malloc(lay->idat_bytes ? lay->idat_bytes : 1);
    if (!z)
        return NULL;
    size_t at = 0;
    for (size_t off = lay->idat_first; off < lay->idat_end;) {
        uint32_t clen = read_be32(p + off);
        memcpy(z + at, p + off + 8, clen);
        at += clen;
        off += 12 + (size_t)clen;
    }
    return z;
}

/* Copies one unfiltered row into the image, 16-bit samples from PNG's
 * big-endian order to the machine's. */
static void store_row(uint8_t *dst, const uint8_t *src, size_t n, unsigned depth)
{
    if (depth == 8) {
        memcpy(dst, src, n);
        return;
    }
    for (size_t i = 0; i + 1 < n; i += 2) {
        uint16_t v = (uint16_t)(src[i] << 8 | src[i + 1]);
        memcpy(dst + i, &v, 2);
    }
}

static VipsInterpretation interpretation_of(const png_layout *lay)
{
    if (lay->channels <= 2)
        return lay->depth == 16 ? VIPS_INTERPRETATION_GREY16 : VIPS_INTERPRETATION_B_W;
    return lay->depth == 16 ? VIPS_INTERPRETATION_RGB16 : VIPS_INTERPRETATION_sRGB;
}

/* Unfilters raw (height rows of 1 + row_bytes) and copies it into a new
 * memory image *out. Returns 0, PNG_DIRECT_DECLINED (a filter type that
 * does not exist: libpng words the error) or MS_ENOMEM. */
static int unfilter_into_image(uint8_t *raw, const png_layout *lay, size_t row_bytes, VipsImage **out,
                               ms_err *err)
{
    size_t bpp = (size_t)lay->channels * lay->depth / 8;
    int rc = png_unfilter(raw, row_bytes, lay->height, bpp);
    if (rc == PNG_DIRECT_DECLINED)
        return rc;
    if (rc)
        return ms_err_set(err, MS_ENOMEM, "no memory for a %ux%u PNG", lay->width, lay->height);
    VipsImage *im = vips_image_new_memory();
    vips_image_init_fields(im, (int)lay->width, (int)lay->height, (int)lay->channels,
                           lay->depth == 16 ? VIPS_FORMAT_USHORT : VIPS_FORMAT_UCHAR, VIPS_CODING_NONE,
                           interpretation_of(lay), 1.0, 1.0);
    if (vips_image_write_prepare(im)) {
        g_object_unref(im);
        return ms_err_set(err, MS_ENOMEM, "no memory for a %ux%u PNG", lay->width, lay->height);
    }
    for (uint32_t y = 0; y < lay->height; y++)
        store_row(VIPS_IMAGE_ADDR(im, 0, y), raw + (size_t)y * (1 + row_bytes) + 1, row_bytes, lay->depth);
    *out = im;
    return 0;
}

int png_decode_direct(const void *buf, size_t len, VipsImage **out, ms_err *err)
{
    const uint8_t *p = buf;
    *out = NULL;
    png_layout lay;
    if (!find_layout(p, len, &lay) || lay.width == 0 || lay.height == 0 || lay.width > 0x7fffffffu ||
        lay.height > 0x7fffffffu)
        return PNG_DIRECT_DECLINED; /* sizes beyond the PNG specification's: libpng words it */
    /* each factor bounded before the product, so nothing overflows */
    uint64_t row_bytes = (uint64_t)lay.width * lay.channels * lay.depth / 8;
    if (row_bytes >= DIRECT_MAX_RAW || (uint64_t)lay.height * (1 + row_bytes) > DIRECT_MAX_RAW)
        return PNG_DIRECT_DECLINED;
    uint64_t expected = (uint64_t)lay.height * (1 + row_bytes);
    uint64_t allowed = png_inflate_allowance(expected);

    uint8_t *z = gather_idat(p, &lay), *raw = malloc(allowed);
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    int rc = PNG_DIRECT_DECLINED;
    if (!z || !raw || !d) {
        rc = ms_err_set(err, MS_ENOMEM, "no memory for a %ux%u PNG", lay.width, lay.height);
        goto done;
    }
    size_t used_in = 0, got = 0;
    enum libdeflate_result r = libdeflate_zlib_decompress_ex(d, z, lay.idat_bytes, raw, allowed, &used_in, &got);
    if (r == LIBDEFLATE_INSUFFICIENT_SPACE) {
        rc = png_bomb_error(lay.width, lay.height, expected, err);
        goto done;
    }
    if (r != LIBDEFLATE_SUCCESS || got != expected || used_in != lay.idat_bytes)
        goto done; /* corrupt, short, too long within tolerance, stray bytes: libpng's call */
    rc = unfilter_into_image(raw, &lay, (size_t)row_bytes, out, err);
done:
    libdeflate_free_decompressor(d);
    free(raw);
    free(z);
    return rc;
}
