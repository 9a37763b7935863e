/*
 * jpeg_stream.c - marker segments and the entropy-coded bit reader of ITU
 * T.81 for MedSearch's own JPEG decoders; see jpeg_stream.h.
 */
#include <stdlib.h>
#include <string.h>

#include "image/internal.h"
#include "image/jpeg_stream.h"

int jpeg_corrupt(ms_err *err, const char *codec, const char *what)
{
    return ms_err_set(err, MS_EFORMAT, "%s data is corrupt: %s", codec, what);
}

/* ---- tables ---- */

/* One table of a DHT segment at seg (n bytes left), built into h; *used is
 * the bytes it took. */
static int read_huffman_table(const uint8_t *seg, size_t n, jpeg_huffman *h, size_t *used, const char *codec,
                              ms_err *err)
{
    const uint8_t *counts = seg + 1;
    int total = 0;
    for (int l = 0; l < 16; l++)
        total += counts[l];
    if (total > 256 || n - 17 < (size_t)total)
        return jpeg_corrupt(err, codec, "a Huffman table holds more codes than its segment");
    memset(h, 0, sizeof *h);
    memcpy(h->values, seg + 17, (size_t)total);
    /* Canonical codes (T.81 annex C): each length's codes follow the
     * previous length's last code, shifted left by one. */
    int32_t code = 0;
    int k = 0;
    for (int l = 1; l <= 16; l++) {
        h->valptr[l] = k;
        h->mincode[l] = code;
        /* Checked before the fast table is filled from these codes. */
        if (code + counts[l - 1] > (1 << l))
            return jpeg_corrupt(err, codec, "a Huffman table's code lengths overflow");
        for (int j = 0; j < counts[l - 1] && l <= JPEG_FAST_BITS; j++) {
            int shift = JPEG_FAST_BITS - l;
            for (int32_t fill = 0; fill < (1 << shift); fill++)
                h->fast[(code + j) << shift | fill] = (uint16_t)(l << 8 | h->values[k + j]);
        }
        code += counts[l - 1];
        k += counts[l - 1];
        h->maxcode[l] = counts[l - 1] ? code - 1 : -1;
        code <<= 1;
    }
    h->maxcode[17] = INT32_MAX;
    h->defined = true;
    *used = 17 + (size_t)total;
    return 0;
}

static int read_huffman_tables(const uint8_t *seg, size_t n, jpeg_headers *h, ms_err *err)
{
    for (size_t at = 0; at < n;) {
        if (n - at < 17)
            return jpeg_corrupt(err, h->codec, "a Huffman table is cut short");
        int tc = seg[at] >> 4, th = seg[at] & 15;
        if (tc > 1 || th > 3)
            return jpeg_corrupt(err, h->codec, "a Huffman table is not a DC or AC table 0..3");
        size_t used = 0;
        int rc = read_huffman_table(seg + at, n - at, tc ? &h->ac[th] : &h->dc[th], &used, h->codec, err);
        if (rc)
            return rc;
        at += used;
    }
    return 0;
}

static int read_quant_tables(const uint8_t *seg, size_t n, jpeg_headers *h, ms_err *err)
{
    for (size_t at = 0; at < n;) {
        int pq = seg[at] >> 4, tq = seg[at] & 15;
        if (pq > 1 || tq > 3)
            return jpeg_corrupt(err, h->codec, "a quantisation table is not one of 8 or 16 bits, 0..3");
        size_t size = 64 * (size_t)(pq + 1);
        if (n - at - 1 < size)
            return jpeg_corrupt(err, h->codec, "a quantisation table is cut short");
        const uint8_t *q = seg + at + 1;
        for (int k = 0; k < 64; k++)
            h->quant[tq][k] = pq ? read_be16(q + 2 * k) : q[k];
        h->quant_defined[tq] = true;
        at += 1 + size;
    }
    return 0;
}

static int read_frame_header(const uint8_t *seg, size_t n, int marker, jpeg_headers *h, ms_err *err)
{
    if (h->process >= 0)
        return jpeg_corrupt(err, h->codec, "it has two frame headers");
    if (n < 6)
        return jpeg_corrupt(err, h->codec, "its frame header is cut short");
    h->process = marker - 0xc0;
    h->precision = seg[0];
    h->height = read_be16(seg + 1);
    h->width = read_be16(seg + 3);
    h->ncomp = seg[5];
    if (h->ncomp < 1 || h->ncomp > JPEG_MAX_COMPONENTS || n < 6 + 3 * (size_t)h->ncomp)
        return jpeg_corrupt(err, h->codec, "its frame header lists no or too many components");
    for (int k = 0; k < h->ncomp; k++) {
        const uint8_t *c = seg + 6 + 3 * k;
        h->comp[k] = (jpeg_component){.id = c[0], .h = c[1] >> 4, .v = c[1] & 15, .tq = c[2]};
    }
    return 0;
}

/* ---- markers ---- */

int jpeg_read_headers(const uint8_t *buf, size_t len, const char *codec, jpeg_headers *h, ms_err *err)
{
    memset(h, 0, sizeof *h);
    h->codec = codec;
    h->process = -1;
    if (len < 4 || buf[0] != 0xff || buf[1] != 0xd8)
        return jpeg_corrupt(err, codec, "it does not start with a JPEG SOI marker");
    for (size_t at = 2;;) {
        if (len - at < 4)
            return jpeg_corrupt(err, codec, "it ends before its scan");
        if (buf[at] != 0xff)
            return jpeg_corrupt(err, codec, "a marker is expected between segments");
        int m = buf[at + 1];
        if (m == 0xff) { /* fill byte */
            at++;
            continue;
        }
        if (m == 0xd9)
            return jpeg_corrupt(err, codec, "it ends before its scan");
        size_t n = read_be16(buf + at + 2);
        if (n < 2 || len - at - 2 < n)
            return jpeg_corrupt(err, codec, "a marker segment runs past the end");
        const uint8_t *seg = buf + at + 4;
        size_t seg_len = n - 2;
        int rc = 0;
        if (jpeg_is_sof(m)) {
            rc = read_frame_header(seg, seg_len, m, h, err);
        } else if (m == 0xc4) {
            rc = read_huffman_tables(seg, seg_len, h, err);
        } else if (m == 0xdb) {
            rc = read_quant_tables(seg, seg_len, h, err);
        } else if (m == 0xdd) {
            rc = seg_len < 2 ? jpeg_corrupt(err, codec, "its restart interval segment is cut short") : 0;
            h->restart_interval = rc ? 0 : read_be16(seg);
        } else if (m == 0xda) {
            if (h->process < 0)
                return jpeg_corrupt(err, codec, "its scan comes before its frame header");
            h->scan = seg;
            h->scan_len = seg_len;
            h->data = at + 2 + n;
            return 0;
        }
        if (rc)
            return rc;
        at += 2 + n;
    }
}

int jpeg_frame_process(const uint8_t *buf, size_t len, int *precision)
{
    *precision = 0;
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
        if (jpeg_is_sof(m)) {
            if (len - at >= 5)
                *precision = buf[at + 4];
            return m - 0xc0;
        }
        if (m == 0xda || m == 0xd9)
            return -1;
        at += 2 + read_be16(buf + at + 2);
    }
    return -1;
}

/* ---- the entropy-coded data ---- */

int jpeg_decode_slow(jpeg_bits *r, const jpeg_huffman *h)
{
    /* A code longer than the fast table's, or the last bits before a
     * marker: bit by bit. */
    int32_t code = jpeg_bits_get(r, 1);
    int l = 1;
    while (code >= 0 && code > h->maxcode[l]) {
        if (l == 16)
            return -2;
        int32_t bit = jpeg_bits_get(r, 1);
        if (bit < 0)
            return -1;
        code = code << 1 | bit;
        l++;
    }
    if (code < 0)
        return -1;
    return h->values[h->valptr[l] + code - h->mincode[l]];
}

int jpeg_bits_restart(jpeg_bits *r, int expected, const char *codec, ms_err *err)
{
    r->acc = 0;
    r->nbits = 0;
    if (r->len - r->pos < 2 || r->p[r->pos] != 0xff || r->p[r->pos + 1] != (0xd0 | (expected & 7)))
        return jpeg_corrupt(err, codec, "a restart marker is missing");
    r->pos += 2;
    r->at_marker = false;
    return 0;
}
