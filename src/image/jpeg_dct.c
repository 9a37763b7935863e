/*
 * jpeg_dct.c - sequential DCT JPEG of one component, 8 or 12 bits (ITU T.81
 * processes 1, 2 and 4, Huffman coded). The 12-bit kind is what DICOM's JPEG
 * Extended transfer syntax (1.2.840.10008.1.2.4.51) holds in older CR and
 * DX radiographs; Debian 12's libjpeg-turbo is built for 8-bit samples
 * only, so image.c hands 8-bit frames to it and 12-bit ones to this file.
 *
 * A one-component scan is never interleaved, whatever the sampling factors
 * say: the image is cut into 8x8 blocks, coded left to right and top to
 * bottom (the right and bottom edge blocks padded). Each block is 64 DCT
 * coefficients in zigzag order:
 *
 *   - DC: a Huffman-coded category s (the difference needs s bits) and s
 *     raw bits giving the difference from the previous block's DC, which
 *     starts at 0 and returns to 0 after each restart marker;
 *   - AC: Huffman-coded symbols RS (R zeros, then a coefficient of
 *     category S and S raw bits), where 0x00 (EOB) ends the block and 0xF0
 *     (ZRL) stands for sixteen zeros.
 *
 * Each coefficient is multiplied by its entry of the quantisation table,
 * the 8x8 inverse DCT of T.81 A.3.3 gives the samples, and those are
 * shifted up by 2^(P-1), rounded and clamped to 0..2^P - 1.
 *
 * The inverse DCT is the separable sum itself in float (rows, then
 * columns), skipping the rows whose coefficients are all zero; a block
 * with only its DC coefficient is flat. Its error against the exact
 * transform is far below half a level, so a sample can differ by one from
 * libjpeg's fixed-point transform of the same stream (both are within
 * what T.81 allows), never by more.
 *
 * Hostile input: the headers are read by jpeg_stream.c; the frame must be
 * the size and the component the caller expects, so the output, sized by
 * the caller, is exactly filled; every block reads at least one bit, so
 * decoding ends with the data; a run past the 64th coefficient, a
 * category the precision cannot have, or a code not in its table is an
 * error; the DC predictor is kept within bounds, so no arithmetic
 * overflows.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "image/internal.h"
#include "image/jpeg_stream.h"

#define CODEC "JPEG"

/* The DC predictor never leaves +-2^20: a valid 12-bit stream stays within
 * +-2^15, a hostile one only gets a wrong image. */
#define DC_BOUND (1 << 20)

typedef struct dct_tables {
    uint8_t zigzag[64];    /* natural (row-major) index of the k-th coefficient */
    float cosines[8][8];   /* [x][u] = C(u) / 2 * cos((2x + 1) u pi / 16) */
} dct_tables;

/* The zigzag order of T.81 figure A.6 walks the anti-diagonals u + v = d,
 * alternately up and down. */
static void make_tables(dct_tables *t)
{
    int k = 0;
    for (int d = 0; d < 15; d++)
        for (int i = 0; i <= d; i++) {
            int row = d % 2 ? i : d - i, col = d - row;
            if (row < 8 && col < 8)
                t->zigzag[k++] = (uint8_t)(row * 8 + col);
        }
    for (int x = 0; x < 8; x++)
        for (int u = 0; u < 8; u++)
            t->cosines[x][u] = (float)((u ? 0.5 : 0.5 / sqrt(2.0)) * cos((2 * x + 1) * u * M_PI / 16.0));
}

typedef struct block {
    float coef[64];        /* dequantised, natural order */
    unsigned rows;         /* bit v set: row v of coef has a non-zero value */
} block;

/* One block's coefficients from r into b. Returns 0 or MS_EFORMAT. */
static int read_block(jpeg_bits *r, const jpeg_huffman *dc, const jpeg_huffman *ac, const uint16_t *q,
                      const dct_tables *t, int max_category, int32_t *pred, block *b, ms_err *err)
{
    memset(b, 0, sizeof *b);
    int s = jpeg_decode_symbol(r, dc);
    if (s < 0)
        return jpeg_corrupt(err, CODEC, s == -2 ? "a Huffman code is not in its table" : "the data ends before the image");
    if (s > max_category)
        return jpeg_corrupt(err, CODEC, "a DC difference is too large for the precision");
    if (s) {
        int32_t v = jpeg_bits_get(r, s);
        if (v < 0)
            return jpeg_corrupt(err, CODEC, "the data ends before the image");
        int32_t p = *pred + jpeg_extend(v, s);
        *pred = p > DC_BOUND ? DC_BOUND : p < -DC_BOUND ? -DC_BOUND : p;
    }
    b->coef[0] = (float)*pred * q[0];
    b->rows = b->coef[0] != 0.0f;
    for (int k = 1; k < 64;) {
        int rs = jpeg_decode_symbol(r, ac);
        if (rs < 0)
            return jpeg_corrupt(err, CODEC, rs == -2 ? "a Huffman code is not in its table"
                                                     : "the data ends before the image");
        int run = rs >> 4, size = rs & 15;
        if (size == 0) {
            if (run != 15)
                break; /* EOB */
            k += 16;   /* ZRL */
            continue;
        }
        k += run;
        if (k > 63)
            return jpeg_corrupt(err, CODEC, "a block has more than 64 coefficients");
        if (size > max_category - 1)
            return jpeg_corrupt(err, CODEC, "an AC coefficient is too large for the precision");
        int32_t v = jpeg_bits_get(r, size);
        if (v < 0)
            return jpeg_corrupt(err, CODEC, "the data ends before the image");
        int n = t->zigzag[k];
        b->coef[n] = (float)jpeg_extend(v, size) * q[k];
        b->rows |= 1u << (n >> 3);
        k++;
    }
    return 0;
}

/* The block's 8x8 samples, level-shifted, rounded and clamped to
 * 0..maxval. */
static void inverse_dct(const block *b, const dct_tables *t, int precision, int32_t px[64])
{
    float shift = (float)(1 << (precision - 1)) + 0.5f, maxval = (float)((1 << precision) - 1);
    float samples[64];
    if (b->rows <= 1 && memcmp(b->coef + 1, (float[7]){0}, sizeof(float[7])) == 0) {
        float flat = b->coef[0] / 8.0f;
        for (int i = 0; i < 64; i++)
            samples[i] = flat;
    } else {
        float tmp[8][8] = {{0}}; /* [v][x]: row v of coef transformed along u */
        for (int v = 0; v < 8; v++) {
            if (!(b->rows >> v & 1))
                continue;
            const float *row = b->coef + 8 * v;
            for (int x = 0; x < 8; x++) {
                float sum = 0.0f;
                for (int u = 0; u < 8; u++)
                    sum += t->cosines[x][u] * row[u];
                tmp[v][x] = sum;
            }
        }
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++) {
                float sum = 0.0f;
                for (int v = 0; v < 8; v++)
                    sum += t->cosines[y][v] * tmp[v][x];
                samples[8 * y + x] = sum;
            }
    }
    for (int i = 0; i < 64; i++) {
        float s = samples[i] + shift; /* + 0.5: truncation below rounds to nearest */
        px[i] = s < 0.0f ? 0 : s > maxval ? (int32_t)maxval : (int32_t)s;
    }
}

/* Copies the part of block (bx, by) inside the image to out. */
static void put_block(const int32_t px[64], int bx, int by, int width, int height, int bytes, uint8_t *out)
{
    int x0 = 8 * bx, y0 = 8 * by;
    int w = width - x0 < 8 ? width - x0 : 8, h = height - y0 < 8 ? height - y0 : 8;
    for (int y = 0; y < h; y++) {
        uint8_t *o = out + ((size_t)(y0 + y) * (size_t)width + (size_t)x0) * (size_t)bytes;
        for (int x = 0; x < w; x++)
            put_sample_le(o + bytes * x, px[8 * y + x], bytes);
    }
}

/* The scan's single component and its tables, checked against the frame. */
static int read_scan_header(const jpeg_headers *h, const jpeg_huffman **dc, const jpeg_huffman **ac,
                            const uint16_t **q, ms_err *err)
{
    const uint8_t *seg = h->scan;
    if (h->scan_len < 6 || seg[0] != 1)
        return jpeg_corrupt(err, CODEC, "its scan header is not one of its component");
    int id = seg[1], td = seg[2] >> 4, ta = seg[2] & 15;
    int ss = seg[3], se = seg[4], ah = seg[5] >> 4, al = seg[5] & 15;
    if (id != h->comp[0].id)
        return jpeg_corrupt(err, CODEC, "its scan names a component its frame does not have");
    if (ss != 0 || se != 63 || ah != 0 || al != 0)
        return jpeg_corrupt(err, CODEC, "its sequential scan does not code all 64 coefficients");
    if (td > 3 || ta > 3 || !h->dc[td].defined || !h->ac[ta].defined)
        return jpeg_corrupt(err, CODEC, "its scan uses a Huffman table that is not defined");
    int tq = h->comp[0].tq;
    if (tq > 3 || !h->quant_defined[tq])
        return jpeg_corrupt(err, CODEC, "its component uses a quantisation table that is not defined");
    *dc = &h->dc[td];
    *ac = &h->ac[ta];
    *q = h->quant[tq];
    return 0;
}

static int check_frame(const jpeg_headers *h, int width, int height, int components, int bytes, ms_err *err)
{
    if (h->process == 2 || h->process == 6 || h->process == 10 || h->process == 14)
        return ms_err_set(err, MS_EUNSUPPORTED, "progressive JPEG of %d-bit samples is not supported",
                          h->precision);
    if (h->process != 0 && h->process != 1)
        return ms_err_set(err, MS_EUNSUPPORTED, "JPEG of process SOF%d is not supported here; only sequential "
                          "Huffman-coded DCT (SOF0, SOF1)", h->process);
    if (h->precision != 8 && h->precision != 12)
        return ms_err_set(err, MS_EUNSUPPORTED, "%d-bit sequential DCT JPEG is not supported; T.81 defines 8 and "
                          "12 bits", h->precision);
    if (h->ncomp != 1 || components != 1)
        return ms_err_set(err, MS_EUNSUPPORTED, "%d-bit JPEG with %d components is not supported; only one "
                          "(grayscale)", h->precision, h->ncomp);
    if (h->width != width || h->height != height)
        return dicom_frame_size_mismatch(CODEC, width, height, components, h->width, h->height, h->ncomp, err);
    if (h->precision > 8 * bytes)
        return dicom_frame_precision_too_high(CODEC, h->precision, bytes, err);
    return 0;
}

int jpeg_dct_decode(const uint8_t *buf, size_t len, int width, int height, int components, int bytes,
                    uint8_t *out, ms_err *err)
{
    jpeg_headers h;
    int rc = jpeg_read_headers(buf, len, CODEC, &h, err);
    if (!rc)
        rc = check_frame(&h, width, height, components, bytes, err);
    const jpeg_huffman *dc = NULL, *ac = NULL;
    const uint16_t *q = NULL;
    if (!rc)
        rc = read_scan_header(&h, &dc, &ac, &q, err);
    if (rc)
        return rc;
    dct_tables t;
    make_tables(&t);
    /* 8-bit DC differences need up to 11 bits, AC values 10; 12-bit 15 and 14. */
    int max_category = h.precision == 8 ? 11 : 15;
    int blocks_x = (width + 7) / 8, blocks_y = (height + 7) / 8;
    jpeg_bits r = {.p = buf, .len = len, .pos = h.data};
    int32_t pred = 0;
    long left = h.restart_interval ? h.restart_interval : -1, restarts = 0;
    for (int by = 0; by < blocks_y; by++)
        for (int bx = 0; bx < blocks_x; bx++) {
            if (left == 0) {
                if ((rc = jpeg_bits_restart(&r, (int)(restarts++ & 7), CODEC, err)))
                    return rc;
                pred = 0;
                left = h.restart_interval;
            }
            block b;
            if ((rc = read_block(&r, dc, ac, q, &t, max_category, &pred, &b, err)))
                return rc;
            int32_t px[64];
            inverse_dct(&b, &t, h.precision, px);
            put_block(px, bx, by, width, height, bytes, out);
            left--;
        }
    return 0;
}
