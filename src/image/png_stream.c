/*
 * png_stream.c - bounds the inflate work of a PNG before libpng sees it
 * (see internal.h). Uses GLib's zlib converter: GIO comes with libvips.
 */
#include "image/internal.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <gio/gio.h>

/* Bytes of one row of `width` pixels at `bits` bits a pixel, plus the
 * filter-type byte that starts every row. */
static uint64_t row_bytes(uint64_t width, unsigned bits)
{
    return 1 + (width * bits + 7) / 8;
}

/* What the IDAT stream of this IHDR must inflate to: every row of the
 * image, or of each of the seven Adam7 passes when interlaced. */
static uint64_t expected_bytes(const uint8_t *ihdr)
{
    uint64_t w = read_be32(ihdr), h = read_be32(ihdr + 4);
    unsigned depth = ihdr[8], colour = ihdr[9], interlaced = ihdr[12];
    static const unsigned channels[7] = {1, 0, 3, 1, 2, 0, 4}; /* by colour type */
    unsigned bits = depth * channels[colour < 7 ? colour : 1];
    if (!interlaced)
        return h * row_bytes(w, bits);
    static const unsigned x0[7] = {0, 4, 0, 2, 0, 1, 0}, dx[7] = {8, 8, 4, 4, 2, 2, 1};
    static const unsigned y0[7] = {0, 0, 4, 0, 2, 0, 1}, dy[7] = {8, 8, 8, 4, 4, 2, 2};
    uint64_t total = 0;
    for (int p = 0; p < 7; p++) {
        uint64_t cols = w > x0[p] ? (w - x0[p] + dx[p] - 1) / dx[p] : 0;
        uint64_t rows = h > y0[p] ? (h - y0[p] + dy[p] - 1) / dy[p] : 0;
        if (cols && rows)
            total += rows * row_bytes(cols, bits);
    }
    return total;
}

/* Deflate's best ratio: 258 bytes from about 2 bits, just over 1032:1. */
#define DEFLATE_MAX_RATIO 1033u
/* Inflating this much costs a few tenths of a second; a stream that cannot
 * reach it is not worth an extra inflate pass (about a third of a PNG's
 * decode time). */
#define UNCHECKED_INFLATE_BUDGET ((uint64_t)256 << 20)

/* Total length of the IDAT chunks, walking the chunk headers only. */
static uint64_t idat_bytes(const uint8_t *p, size_t len)
{
    uint64_t total = 0;
    size_t off = 8;
    while (off + 12 <= len) {
        uint32_t clen = read_be32(p + off);
        if (clen > len - off - 12)
            break;
        if (memcmp(p + off + 4, "IDAT", 4) == 0)
            total += clen;
        off += 12 + (size_t)clen;
    }
    return total;
}

int png_bomb_error(unsigned width, unsigned height, unsigned long long expected, ms_err *err)
{
    return ms_err_set(err, MS_EFORMAT,
                      "PNG is corrupt: its pixel data inflates to more than the %ux%u image its header "
                      "declares (%llu bytes); refused as a decompression bomb",
                      width, height, expected);
}

int png_check_stream(const void *buf, size_t len, ms_err *err)
{
    const uint8_t *p = buf;
    if (len < 33)
        return 0; /* image_probe refused it already */
    if (idat_bytes(p, len) * DEFLATE_MAX_RATIO <= UNCHECKED_INFLATE_BUDGET)
        return 0; /* even all of it as excess would be cheap */
    uint64_t expected = expected_bytes(p + 16);
    uint64_t allowed = png_inflate_allowance(expected);

    GConverter *z = G_CONVERTER(g_zlib_decompressor_new(G_ZLIB_COMPRESSOR_FORMAT_ZLIB));
    uint8_t sink[16384];
    uint64_t inflated = 0;
    bool done = false, seen_idat = false;
    size_t off = 8;
    while (!done && off + 12 <= len) {
        uint32_t clen = read_be32(p + off);
        bool idat = memcmp(p + off + 4, "IDAT", 4) == 0;
        if (clen > len - off - 12 || (seen_idat && !idat))
            break; /* truncated, or the IDATs are over */
        seen_idat |= idat;
        const uint8_t *in = p + off + 8;
        size_t left = idat ? clen : 0;
        while (left > 0 && !done) {
            gsize read = 0, written = 0;
            GConverterResult r =
                g_converter_convert(z, in, left, sink, sizeof sink, G_CONVERTER_NO_FLAGS, &read, &written, NULL);
            inflated += written;
            in += read;
            left -= read;
            if (inflated > allowed) {
                g_object_unref(z);
                return png_bomb_error(read_be32(p + 16), read_be32(p + 20), expected, err);
            }
            /* the end of the stream, a corrupt stream (libpng will say
             * why), or no progress: stop here */
            done = r == G_CONVERTER_FINISHED || r == G_CONVERTER_ERROR || (read == 0 && written == 0);
        }
        off += 12 + (size_t)clen;
    }
    g_object_unref(z);
    return 0;
}
