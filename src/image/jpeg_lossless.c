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
 * The marker segments, Huffman tables and entropy-coded bits are read by
 * jpeg_stream.c, which jpeg_dct.c shares.
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
#include "image/jpeg_stream.h"

/* What the scan header adds to the frame's headers. */
typedef struct scan {
    int table[JPEG_MAX_COMPONENTS]; /* each component's DC table */
    int predictor, point_transform;
} scan;

static int corrupt(ms_err *err, const char *what)
{
    return jpeg_corrupt(err, "JPEG Lossless", what);
}

/* A difference of category s (T.81 H.1.2.2: 16 is 32768, no extra bits). */
static bool read_difference(jpeg_bits *r, int s, int32_t *diff)
{
    if (s == 0 || s == 16) {
        *diff = s ? 32768 : 0;
        return true;
    }
    if (s > 16)
        return false;
    int32_t v = jpeg_bits_get(r, s);
    if (v < 0)
        return false;
    *diff = jpeg_extend(v, s);
    return true;
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
static int decode_scan(const jpeg_headers *h, const scan *sc, jpeg_bits *r, int bytes, uint8_t *out, ms_err *err)
{
    size_t w = (size_t)h->width, nc = (size_t)h->ncomp;
    /* The previous and the current row, as decoded (before the point
     * transform's shift): the predictions are made from those. */
    int32_t *prev = NULL, *cur = NULL;
    size_t row_len = w * nc;
    int32_t *buf = malloc(2 * row_len * sizeof *buf);
    if (!buf)
        return ms_err_set(err, MS_ENOMEM, "no memory for two rows of %zu samples", row_len);
    prev = buf;
    cur = buf + row_len;
    int32_t initial = 1 << (h->precision - sc->point_transform - 1);
    int restarts = 0;
    size_t mcus_left = h->restart_interval ? (size_t)h->restart_interval : SIZE_MAX;
    bool first_row = true;
    int rc = 0;
    for (int y = 0; y < h->height && !rc; y++) {
        if (mcus_left == 0) {
            if ((rc = jpeg_bits_restart(r, restarts++, "JPEG Lossless", err)))
                break;
            mcus_left = (size_t)h->restart_interval;
            first_row = true;
        }
        for (size_t x = 0; x < w && !rc; x++) {
            for (size_t k = 0; k < nc; k++) {
                int s = jpeg_decode_symbol(r, &h->dc[sc->table[k]]);
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
                    pred = predict(sc->predictor, cur[(x - 1) * nc + k], prev[x * nc + k], prev[(x - 1) * nc + k]);
                int32_t v = (pred + diff) & 0xffff;
                cur[x * nc + k] = v;
                put_sample_le(out + (((size_t)y * w + x) * nc + k) * (size_t)bytes, v << sc->point_transform, bytes);
            }
        }
        if (h->restart_interval)
            mcus_left -= w;
        first_row = false;
        int32_t *t = prev;
        prev = cur;
        cur = t;
    }
    free(buf);
    return rc;
}

/* ---- the scan ---- */

static int read_scan_header(const jpeg_headers *h, scan *sc, ms_err *err)
{
    const uint8_t *seg = h->scan;
    size_t n = h->scan_len;
    if (n < 1 || seg[0] != h->ncomp || n < 4 + 2 * (size_t)h->ncomp)
        return ms_err_set(err, MS_EUNSUPPORTED, "JPEG Lossless with several scans or a scan of some "
                          "components is not supported");
    for (int k = 0; k < h->ncomp; k++) {
        int id = seg[1 + 2 * k], td = seg[2 + 2 * k] >> 4;
        if (id != h->comp[k].id)
            return corrupt(err, "its scan lists the components in another order than its frame");
        if (td > 3 || !h->dc[td].defined)
            return corrupt(err, "its scan uses a Huffman table that is not defined");
        sc->table[k] = td;
    }
    const uint8_t *tail = seg + 1 + 2 * h->ncomp;
    sc->predictor = tail[0];
    sc->point_transform = tail[2] & 15;
    if (sc->predictor < 1 || sc->predictor > 7)
        return corrupt(err, "its predictor is not 1..7");
    if (sc->point_transform >= h->precision)
        return corrupt(err, "its point transform is not below its precision");
    return 0;
}

int jpeg_lossless_decode(const uint8_t *buf, size_t len, int width, int height, int components, int bytes,
                         uint8_t *out, ms_err *err)
{
    jpeg_headers h;
    int rc = jpeg_read_headers(buf, len, "JPEG Lossless", &h, err);
    if (rc)
        return rc;
    if (h.process != 3)
        return ms_err_set(err, MS_EUNSUPPORTED, "JPEG Lossless holds a JPEG of another process (SOF%d), "
                          "not process 14 (SOF3)", h.process);
    if (h.precision < 2 || h.precision > 16)
        return corrupt(err, "its sample precision is outside 2..16 bits");
    scan sc = {0};
    if ((rc = read_scan_header(&h, &sc, err)))
        return rc;
    if (h.width != width || h.height != height || h.ncomp != components)
        return dicom_frame_size_mismatch("JPEG Lossless", width, height, components, h.width, h.height, h.ncomp,
                                         err);
    if (h.precision > 8 * bytes)
        return dicom_frame_precision_too_high("JPEG Lossless", h.precision, bytes, err);
    if (h.restart_interval && h.restart_interval % h.width)
        return ms_err_set(err, MS_EUNSUPPORTED, "JPEG Lossless with a restart interval of %d samples, "
                          "not whole rows of %d, is not supported", h.restart_interval, h.width);
    jpeg_bits r = {.p = buf, .len = len, .pos = h.data};
    return decode_scan(&h, &sc, &r, bytes, out, err);
}
