/*
 * jpeg_lossless.c - lossless JPEG (ITU T.81 process 14, Huffman coded), the
 * codec of DICOM's JPEG Lossless transfer syntaxes (1.2.840.10008.1.2.4.57
 * and .70), which most archived CR and DX radiographs use. libjpeg-turbo
 * reads it only from version 3, which Debian 12 does not have.
 *
 * The codec predicts each sample from its decoded neighbours
 *
 *      c b
 *      a x        selection value 1: a, 2: b, 3: c, 4: a + b - c,
 *                 5: a + ((b - c) >> 1), 6: b + ((a - c) >> 1), 7: (a + b) / 2
 *
 * and codes the difference x - prediction, modulo 2^16, as a Huffman-coded
 * category SSSS (the difference needs SSSS bits; 16 means exactly 32768)
 * followed by SSSS raw bits. The first row of the scan (and of each restart
 * interval) is predicted from a, the first sample of every other row from
 * b, and the very first sample from 2^(P - Pt - 1). A point transform Pt
 * codes the samples shifted right by Pt; they are shifted back on output.
 *
 * Hostile input: every marker segment's length is checked against the
 * bytes left, the frame must have the size and components the caller
 * expects (so the output buffer, sized by the caller, is exactly filled),
 * a Huffman code longer than 16 bits or a read past the entropy-coded data
 * is an error, and each sample consumes at least one bit, so decoding ends.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "image/internal.h"

#define MAX_COMPONENTS 4

/* Codes of up to FAST_BITS bits are decoded by one table lookup. */
#define FAST_BITS 9

typedef struct huffman {
    bool defined;
    uint16_t fast[1 << FAST_BITS]; /* length << 8 | symbol; 0: a longer code */
    /* T.81 F.2.2.3: codes of length l are mincode[l]..maxcode[l], their
     * symbols from values[valptr[l]]. */
    int32_t mincode[17], maxcode[18], valptr[17];
    uint8_t values[256];
} huffman;

typedef struct bit_reader {
    const uint8_t *p;
    size_t len, pos;       /* pos: next byte of the entropy-coded data */
    uint32_t acc;          /* bits not yet used, most significant first */
    int nbits;
    bool at_marker;        /* a marker ends the entropy-coded data here */
} bit_reader;

typedef struct frame {
    int precision, width, height, ncomp;
    int comp_id[MAX_COMPONENTS];
    int table[MAX_COMPONENTS];
    int predictor, point_transform, restart_interval;
} frame;

static int corrupt(ms_err *err, const char *what)
{
    return ms_err_set(err, MS_EFORMAT, "JPEG Lossless data is corrupt: %s", what);
}

/* ---- Huffman tables (T.81 annex C and F.2.2.3) ---- */

static int read_huffman_tables(const uint8_t *seg, size_t n, huffman tables[4], ms_err *err)
{
    size_t at = 0;
    while (at < n) {
        if (n - at < 17)
            return corrupt(err, "a Huffman table is cut short");
        int tc = seg[at] >> 4, th = seg[at] & 15;
        if (tc > 1 || th > 3)
            return corrupt(err, "a Huffman table is not a DC or AC table 0..3");
        const uint8_t *counts = seg + at + 1;
        int total = 0;
        for (int l = 0; l < 16; l++)
            total += counts[l];
        if (total > 256 || n - at - 17 < (size_t)total)
            return corrupt(err, "a Huffman table holds more codes than its segment");
        if (tc == 1) { /* an AC table: lossless coding has no use for it */
            at += 17 + (size_t)total;
            continue;
        }
        huffman *h = &tables[th];
        memset(h, 0, sizeof *h);
        memcpy(h->values, seg + at + 17, (size_t)total);
        int32_t code = 0;
        int k = 0;
        for (int l = 1; l <= 16; l++) {
            h->valptr[l] = k;
            h->mincode[l] = code;
            for (int j = 0; j < counts[l - 1] && l <= FAST_BITS; j++) {
                int shift = FAST_BITS - l;
                for (int32_t fill = 0; fill < (1 << shift); fill++)
                    h->fast[(code + j) << shift | fill] = (uint16_t)(l << 8 | h->values[k + j]);
            }
            code += counts[l - 1];
            k += counts[l - 1];
            h->maxcode[l] = counts[l - 1] ? code - 1 : -1;
            if (code > (1 << l))
                return corrupt(err, "a Huffman table's code lengths overflow");
            code <<= 1;
        }
        h->maxcode[17] = INT32_MAX; /* sentinel: a code longer than 16 bits is an error */
        h->defined = true;
        at += 17 + (size_t)total;
    }
    return 0;
}

/* ---- the entropy-coded data ---- */

/* Brings at least 1 new bit into the accumulator; false when the data has
 * ended (a marker or the end of the buffer). 0xFF 0x00 is a data 0xFF. */
static bool fill(bit_reader *r)
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
static int32_t get_bits(bit_reader *r, int n)
{
    while (r->nbits < n)
        if (!fill(r))
            return -1;
    r->nbits -= n;
    return (int32_t)((r->acc >> r->nbits) & ((1u << n) - 1));
}

/* The next Huffman symbol; -1 at the end of the data, -2 for a code that
 * is not in the table. */
static int decode_symbol(bit_reader *r, const huffman *h)
{
    while (r->nbits < FAST_BITS && fill(r))
        ;
    if (r->nbits >= FAST_BITS) {
        uint16_t e = h->fast[(r->acc >> (r->nbits - FAST_BITS)) & ((1u << FAST_BITS) - 1)];
        if (e) {
            r->nbits -= e >> 8;
            return e & 0xff;
        }
    }
    /* A longer code, or the last bits before a marker: bit by bit. */
    int32_t code = get_bits(r, 1);
    int l = 1;
    while (code >= 0 && code > h->maxcode[l]) {
        if (l == 16)
            return -2;
        int32_t bit = get_bits(r, 1);
        if (bit < 0)
            return -1;
        code = code << 1 | bit;
        l++;
    }
    if (code < 0)
        return -1;
    return h->values[h->valptr[l] + code - h->mincode[l]];
}

/* A difference of category s (T.81 H.1.2.2: 16 is 32768, no extra bits). */
static bool read_difference(bit_reader *r, int s, int32_t *diff)
{
    if (s == 0 || s == 16) {
        *diff = s ? 32768 : 0;
        return true;
    }
    if (s > 16)
        return false;
    int32_t v = get_bits(r, s);
    if (v < 0)
        return false;
    *diff = v < (1 << (s - 1)) ? v - (1 << s) + 1 : v;
    return true;
}

/* Steps over a restart marker RSTn at the reader's position. */
static int restart(bit_reader *r, int expected, ms_err *err)
{
    r->acc = 0;
    r->nbits = 0;
    if (r->len - r->pos < 2 || r->p[r->pos] != 0xff || r->p[r->pos + 1] != (0xd0 | (expected & 7)))
        return corrupt(err, "a restart marker is missing");
    r->pos += 2;
    r->at_marker = false;
    return 0;
}

static int32_t predict(int predictor, int32_t a, int32_t b, int32_t c)
{
    switch (predictor) {
    case 1: return a;
    case 2: return b;
    case 3: return c;
    case 4: return a + b - c;
    case 5: return a + ((b - c) >> 1);
    case 6: return b + ((a - c) >> 1);
    default: return (a + b) >> 1;
    }
}

/* Decodes the scan into rows of 32-bit samples (the previous and current
 * row of each component), writing each finished sample to out. */
static int decode_scan(const frame *f, const huffman tables[4], bit_reader *r, int bytes, uint8_t *out,
                       ms_err *err)
{
    size_t w = (size_t)f->width, nc = (size_t)f->ncomp;
    /* The previous and the current row, as decoded (before the point
     * transform's shift): the predictions are made from those. */
    int32_t *prev = NULL, *cur = NULL;
    size_t row_len = w * nc;
    int32_t *buf = malloc(2 * row_len * sizeof *buf);
    if (!buf)
        return ms_err_set(err, MS_ENOMEM, "no memory for two rows of %zu samples", row_len);
    prev = buf;
    cur = buf + row_len;
    int32_t initial = 1 << (f->precision - f->point_transform - 1);
    int restarts = 0;
    size_t mcus_left = f->restart_interval ? (size_t)f->restart_interval : SIZE_MAX;
    bool first_row = true;
    int rc = 0;
    for (int y = 0; y < f->height && !rc; y++) {
        if (mcus_left == 0) {
            if ((rc = restart(r, restarts++, err)))
                break;
            mcus_left = (size_t)f->restart_interval;
            first_row = true;
        }
        for (size_t x = 0; x < w && !rc; x++) {
            for (size_t k = 0; k < nc; k++) {
                int s = decode_symbol(r, &tables[f->table[k]]);
                int32_t diff;
                if (s < 0 || !read_difference(r, s, &diff)) {
                    rc = corrupt(err, s == -2 ? "a Huffman code is not in its table" : "the data ends before the image");
                    break;
                }
                int32_t pred;
                if (first_row)
                    pred = x == 0 ? initial : cur[(x - 1) * nc + k];
                else if (x == 0)
                    pred = prev[k];
                else
                    pred = predict(f->predictor, cur[(x - 1) * nc + k], prev[x * nc + k], prev[(x - 1) * nc + k]);
                int32_t v = (pred + diff) & 0xffff;
                cur[x * nc + k] = v;
                uint32_t sample = (uint32_t)v << f->point_transform;
                uint8_t *o = out + (((size_t)y * w + x) * nc + k) * (size_t)bytes;
                o[0] = (uint8_t)sample;
                if (bytes == 2)
                    o[1] = (uint8_t)(sample >> 8);
            }
        }
        if (f->restart_interval)
            mcus_left -= w;
        first_row = false;
        int32_t *t = prev;
        prev = cur;
        cur = t;
    }
    free(buf);
    return rc;
}

/* ---- markers ---- */

static int read_frame_header(const uint8_t *seg, size_t n, frame *f, ms_err *err)
{
    if (n < 6)
        return corrupt(err, "its frame header is cut short");
    f->precision = seg[0];
    f->height = read_be16(seg + 1);
    f->width = read_be16(seg + 3);
    f->ncomp = seg[5];
    if (f->ncomp < 1 || f->ncomp > MAX_COMPONENTS || n < 6 + 3 * (size_t)f->ncomp)
        return corrupt(err, "its frame header lists no or too many components");
    for (int k = 0; k < f->ncomp; k++)
        f->comp_id[k] = seg[6 + 3 * k];
    if (f->precision < 2 || f->precision > 16)
        return corrupt(err, "its sample precision is outside 2..16 bits");
    return 0;
}

static int read_scan_header(const uint8_t *seg, size_t n, frame *f, const huffman tables[4], ms_err *err)
{
    if (n < 1 || seg[0] != f->ncomp || n < 4 + 2 * (size_t)f->ncomp)
        return ms_err_set(err, MS_EUNSUPPORTED, "JPEG Lossless with several scans or a scan of some "
                          "components is not supported");
    for (int k = 0; k < f->ncomp; k++) {
        int id = seg[1 + 2 * k], td = seg[2 + 2 * k] >> 4;
        if (id != f->comp_id[k])
            return corrupt(err, "its scan lists the components in another order than its frame");
        if (td > 3 || !tables[td].defined)
            return corrupt(err, "its scan uses a Huffman table that is not defined");
        f->table[k] = td;
    }
    const uint8_t *tail = seg + 1 + 2 * f->ncomp;
    f->predictor = tail[0];
    f->point_transform = tail[2] & 15;
    if (f->predictor < 1 || f->predictor > 7)
        return corrupt(err, "its predictor is not 1..7");
    if (f->point_transform >= f->precision)
        return corrupt(err, "its point transform is not below its precision");
    return 0;
}

int jpeg_frame_process(const uint8_t *buf, size_t len)
{
    if (len < 4 || buf[0] != 0xff || buf[1] != 0xd8)
        return -1;
    for (size_t at = 2; at < len && len - at >= 4;) {
        if (buf[at] != 0xff)
            return -1;
        int m = buf[at + 1];
        if (m == 0xff) {
            at++;
            continue;
        }
        if (jpeg_is_sof(m))
            return m - 0xc0;
        if (m == 0xda || m == 0xd9)
            return -1;
        at += 2 + read_be16(buf + at + 2);
    }
    return -1;
}

int jpeg_lossless_decode(const uint8_t *buf, size_t len, int width, int height, int components, int bytes,
                         uint8_t *out, ms_err *err)
{
    if (len < 4 || buf[0] != 0xff || buf[1] != 0xd8)
        return corrupt(err, "it does not start with a JPEG SOI marker");
    huffman tables[4] = {0};
    frame f = {0};
    bool have_frame = false;
    size_t at = 2;
    for (;;) {
        if (len - at < 4)
            return corrupt(err, "it ends before its scan");
        if (buf[at] != 0xff)
            return corrupt(err, "a marker is expected between segments");
        int m = buf[at + 1];
        if (m == 0xff) { /* fill byte */
            at++;
            continue;
        }
        size_t n = read_be16(buf + at + 2);
        if (n < 2 || len - at - 2 < n)
            return corrupt(err, "a marker segment runs past the end");
        const uint8_t *seg = buf + at + 4;
        size_t seg_len = n - 2;
        int rc = 0;
        if (m == 0xc3) {
            rc = read_frame_header(seg, seg_len, &f, err);
            have_frame = true;
        } else if (jpeg_is_sof(m)) {
            return ms_err_set(err, MS_EUNSUPPORTED, "JPEG Lossless holds a JPEG of another process (SOF%d), "
                              "not process 14 (SOF3)", m - 0xc0);
        } else if (m == 0xc4) {
            rc = read_huffman_tables(seg, seg_len, tables, err);
        } else if (m == 0xdd) {
            rc = seg_len < 2 ? corrupt(err, "its restart interval segment is cut short") : 0;
            f.restart_interval = rc ? 0 : read_be16(seg);
        } else if (m == 0xda) {
            if (!have_frame)
                return corrupt(err, "its scan comes before its frame header");
            if ((rc = read_scan_header(seg, seg_len, &f, tables, err)))
                return rc;
            if (f.width != width || f.height != height || f.ncomp != components)
                return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: its header says %dx%d with %d sample(s), its "
                                  "JPEG Lossless frame is %dx%d with %d", width, height, components, f.width,
                                  f.height, f.ncomp);
            if (f.precision > 8 * bytes)
                return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: %d-bit JPEG Lossless samples in %d bits "
                                  "allocated", f.precision, 8 * bytes);
            if (f.restart_interval && f.restart_interval % f.width)
                return ms_err_set(err, MS_EUNSUPPORTED, "JPEG Lossless with a restart interval of %d samples, "
                                  "not whole rows of %d, is not supported", f.restart_interval, f.width);
            bit_reader r = {.p = buf, .len = len, .pos = at + 2 + n};
            return decode_scan(&f, tables, &r, bytes, out, err);
        } else if (m == 0xd9) {
            return corrupt(err, "it ends before its scan");
        }
        if (rc)
            return rc;
        at += 2 + n;
    }
}
