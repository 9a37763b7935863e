/*
 * jpeg_stream.h - the parts of ITU T.81 that MedSearch's own JPEG decoders
 * share: the marker segments up to the first scan (frame header, Huffman
 * and quantisation tables, restart interval), and the entropy-coded data's
 * bit reader with its Huffman decoding. jpeg_lossless.c decodes process 14
 * (lossless) scans with them and jpeg_dct.c the 12-bit sequential DCT
 * scans (processes 2 and 4), the two kinds of DICOM frame Debian 12's
 * libjpeg-turbo cannot read. Internal to the image module.
 *
 * Hostile input: every segment's length is checked against the bytes left
 * before it is read, a Huffman table whose code lengths overflow is
 * refused, a code longer than 16 bits is an error, and the bit reader
 * never reads past the buffer nor past a marker.
 */
#ifndef MS_IMAGE_JPEG_STREAM_H
#define MS_IMAGE_JPEG_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

#define JPEG_MAX_COMPONENTS 4

/* Codes of up to JPEG_FAST_BITS bits are decoded by one table lookup. */
#define JPEG_FAST_BITS 9

typedef struct jpeg_huffman {
    bool defined;
    uint16_t fast[1 << JPEG_FAST_BITS]; /* length << 8 | symbol; 0: a longer code */
    /* T.81 F.2.2.3: codes of length l are mincode[l]..maxcode[l], their
     * symbols from values[valptr[l]]. maxcode[17] is a sentinel above
     * every code. */
    int32_t mincode[17], maxcode[18], valptr[17];
    uint8_t values[256];
} jpeg_huffman;

typedef struct jpeg_component {
    int id, h, v;          /* identifier, sampling factors */
    int tq;                /* quantisation table 0..3 */
} jpeg_component;

/* Everything before the first scan's entropy-coded data. */
typedef struct jpeg_headers {
    const char *codec;     /* the caller's name for the stream, first word of every message */
    int process;           /* n of the frame's SOFn marker; -1 before one is seen */
    int precision, width, height, ncomp;
    jpeg_component comp[JPEG_MAX_COMPONENTS];
    jpeg_huffman dc[4], ac[4];
    bool quant_defined[4];
    uint16_t quant[4][64]; /* in the zigzag order they are stored in */
    int restart_interval;  /* in MCUs; 0: none */
    const uint8_t *scan;   /* the first SOS segment's contents (points into the stream) */
    size_t scan_len;
    size_t data;           /* offset of the scan's entropy-coded data */
} jpeg_headers;

/* MS_EFORMAT with "<codec> data is corrupt: <what>". */
int jpeg_corrupt(ms_err *err, const char *codec, const char *what);

/* Reads buf's marker segments from SOI up to the first SOS into *h, which
 * it clears first (codec names the stream in messages). The frame header
 * is required before the scan, with 1..4 components; its process,
 * precision and size are left for the caller to judge. Returns 0,
 * MS_EFORMAT (not JPEG, corrupt, or no scan before EOI or the end). */
int jpeg_read_headers(const uint8_t *buf, size_t len, const char *codec, jpeg_headers *h, ms_err *err);

/* ---- the entropy-coded data ---- */

typedef struct jpeg_bits {
    const uint8_t *p;
    size_t len, pos;       /* pos: next byte of the entropy-coded data */
    uint32_t acc;          /* bits not yet used, most significant first */
    int nbits;
    bool at_marker;        /* a marker ends the entropy-coded data here */
} jpeg_bits;

/* Brings at least 1 new bit into the accumulator; false when the data has
 * ended (a marker or the end of the buffer). 0xFF 0x00 is a data 0xFF. */
static inline bool jpeg_bits_fill(jpeg_bits *r)
{
    if (r->at_marker || r->pos >= r->len)
        return false;
    uint8_t b = r->p[r->pos];
    if (b == 0xff) {
        if (r->pos + 1 >= r->len || r->p[r->pos + 1] != 0x00) {
            r->at_marker = true;
            return false;
        }
        r->pos += 2;
    } else {
        r->pos++;
    }
    r->acc = r->acc << 8 | b;
    r->nbits += 8;
    return true;
}

/* n (0..16) bits; -1 when the data ends first. */
static inline int32_t jpeg_bits_get(jpeg_bits *r, int n)
{
    while (r->nbits < n)
        if (!jpeg_bits_fill(r))
            return -1;
    r->nbits -= n;
    return (int32_t)((r->acc >> r->nbits) & ((1u << n) - 1));
}

/* The next Huffman symbol; -1 at the end of the data, -2 for a code that
 * is not in the table. */
int jpeg_decode_slow(jpeg_bits *r, const jpeg_huffman *h);

static inline int jpeg_decode_symbol(jpeg_bits *r, const jpeg_huffman *h)
{
    while (r->nbits < JPEG_FAST_BITS && jpeg_bits_fill(r))
        ;
    if (r->nbits >= JPEG_FAST_BITS) {
        uint16_t e = h->fast[(r->acc >> (r->nbits - JPEG_FAST_BITS)) & ((1u << JPEG_FAST_BITS) - 1)];
        if (e) {
            r->nbits -= e >> 8;
            return e & 0xff;
        }
    }
    return jpeg_decode_slow(r, h);
}

/* The signed value of the s (1..15) raw bits v that follow a category s
 * (T.81 F.2.2.1's EXTEND). */
static inline int32_t jpeg_extend(int32_t v, int s)
{
    return v < (1 << (s - 1)) ? v - (1 << s) + 1 : v;
}

/* Steps over the restart marker RST(expected mod 8) at the reader's
 * position and empties the accumulator. Returns 0 or MS_EFORMAT. */
int jpeg_bits_restart(jpeg_bits *r, int expected, const char *codec, ms_err *err);

#endif
