/*
 * dicom_codecs.c - the compressed DICOM frames MedSearch hands to a library:
 * JPEG 2000 (OpenJPEG, libopenjp2) and JPEG-LS (CharLS). Both are the
 * codecs DICOM toolkits themselves use, maintained and fuzzed upstream.
 *
 * Each decoder reads the frame's own header first and refuses a frame that
 * is not the size, component count and precision the DICOM header gave
 * (and the caller checked against its pixel limit), so the library never
 * allocates for a size nobody checked. The samples come out in the layout
 * jpeg_lossless_decode writes: `bytes` per sample, little endian,
 * components interleaved.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <charls/charls.h>
#include <openjpeg.h>

#include "image/internal.h"

int dicom_frame_size_mismatch(const char *codec, int width, int height, int components, long w, long h, long nc,
                              ms_err *err)
{
    return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: its header says %dx%d with %d sample(s), its %s frame "
                      "is %ldx%ld with %ld", width, height, components, codec, w, h, nc);
}

int dicom_frame_precision_too_high(const char *codec, int precision, int bytes, ms_err *err)
{
    return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: %d-bit %s samples in %d bits allocated", precision, codec,
                      8 * bytes);
}

/* ---- JPEG 2000 ---- */

typedef struct memory_stream {
    const uint8_t *data;
    size_t len, pos;
} memory_stream;

static OPJ_SIZE_T stream_read(void *buf, OPJ_SIZE_T n, void *user)
{
    memory_stream *m = user;
    size_t left = m->len - m->pos;
    if (left == 0)
        return (OPJ_SIZE_T)-1;
    size_t take = n < left ? n : left;
    memcpy(buf, m->data + m->pos, take);
    m->pos += take;
    return take;
}

static OPJ_OFF_T stream_skip(OPJ_OFF_T n, void *user)
{
    memory_stream *m = user;
    if (n < 0)
        return -1;
    size_t left = m->len - m->pos, step = (uint64_t)n < left ? (size_t)n : left;
    m->pos += step;
    return (OPJ_OFF_T)step;
}

static OPJ_BOOL stream_seek(OPJ_OFF_T to, void *user)
{
    memory_stream *m = user;
    if (to < 0 || (uint64_t)to > m->len)
        return OPJ_FALSE;
    m->pos = (size_t)to;
    return OPJ_TRUE;
}

/* OpenJPEG's first error message, kept for ours. */
static void keep_first_error(const char *msg, void *user)
{
    char *kept = user;
    if (!kept[0]) {
        snprintf(kept, 200, "%s", msg);
        size_t n = strlen(kept);
        while (n && (kept[n - 1] == '\n' || kept[n - 1] == ' '))
            kept[--n] = '\0';
    }
}

static void ignore_message(const char *msg, void *user)
{
    (void)msg, (void)user;
}

/* The codestream, or a JP2 file around it (some writers put one in DICOM). */
static OPJ_CODEC_FORMAT j2k_format(const uint8_t *buf, size_t len)
{
    static const uint8_t jp2[12] = {0, 0, 0, 0x0c, 'j', 'P', ' ', ' ', 0x0d, 0x0a, 0x87, 0x0a};
    if (len >= 12 && !memcmp(buf, jp2, 12))
        return OPJ_CODEC_JP2;
    return OPJ_CODEC_J2K;
}

/* width x height is the decoded size (the frame's, reduced); the caller
 * has checked the component count against the header. */
static int j2k_samples(const opj_image_t *im, int width, int height, int components, int bytes, uint8_t *out,
                       ms_err *err)
{
    for (int k = 0; k < components; k++) {
        const opj_image_comp_t *c = &im->comps[k];
        if ((int)c->w != width || (int)c->h != height || c->dx != 1 || c->dy != 1 || !c->data)
            return dicom_frame_size_mismatch("JPEG 2000", width, height, components, (long)c->w, (long)c->h, (long)im->numcomps,
                                 err);
        if (c->prec < 1 || (int)c->prec > 8 * bytes)
            return dicom_frame_precision_too_high("JPEG 2000", (int)c->prec, bytes, err);
    }
    size_t n = (size_t)width * (size_t)height;
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < components; k++)
            put_sample_le(out + (i * (size_t)components + (size_t)k) * (size_t)bytes, im->comps[k].data[i], bytes);
    return 0;
}

/* The fewest resolution levels of any component in the main header: a
 * reduction must leave at least one. */
static int j2k_levels(opj_codec_t *codec, int components)
{
    opj_codestream_info_v2_t *info = opj_get_cstr_info(codec);
    int levels = 1;
    if (info && info->m_default_tile_info.tccp_info) {
        levels = 33;
        for (int k = 0; k < components; k++) {
            int n = (int)info->m_default_tile_info.tccp_info[k].numresolutions;
            levels = n < levels ? n : levels;
        }
    }
    opj_destroy_cstr_info(&info);
    return levels < 1 ? 1 : levels;
}

static int j2k_decode_at(const uint8_t *buf, size_t len, int width, int height, int components, int bytes,
                         int reduce, uint8_t **out, int *out_w, int *out_h, ms_err *err)
{
    memory_stream m = {buf, len, 0};
    char why[200] = "";
    opj_codec_t *codec = opj_create_decompress(j2k_format(buf, len));
    opj_stream_t *stream = opj_stream_create(64 << 10, OPJ_TRUE);
    opj_image_t *im = NULL;
    int rc = 0;
    if (!codec || !stream) {
        rc = ms_err_set(err, MS_ENOMEM, "no memory for a JPEG 2000 decoder");
        goto out;
    }
    opj_stream_set_user_data(stream, &m, NULL);
    opj_stream_set_user_data_length(stream, len);
    opj_stream_set_read_function(stream, stream_read);
    opj_stream_set_skip_function(stream, stream_skip);
    opj_stream_set_seek_function(stream, stream_seek);
    opj_set_error_handler(codec, keep_first_error, why);
    opj_set_warning_handler(codec, ignore_message, NULL);
    opj_set_info_handler(codec, ignore_message, NULL);
    opj_dparameters_t params;
    opj_set_default_decoder_parameters(&params);
    /* Strict: a truncated codestream is an error, not an image with its
     * missing code blocks left at zero. */
    if (!opj_setup_decoder(codec, &params) || !opj_decoder_set_strict_mode(codec, OPJ_TRUE) ||
        !opj_read_header(stream, codec, &im)) {
        rc = ms_err_set(err, MS_EFORMAT, "JPEG 2000 frame is corrupt: %s", why[0] ? why : "its header is unreadable");
        goto out;
    }
    /* Check the size before the decoder allocates for it. */
    if ((long)(im->x1 - im->x0) != width || (long)(im->y1 - im->y0) != height || (int)im->numcomps != components ||
        im->x0 != 0 || im->y0 != 0) {
        rc = dicom_frame_size_mismatch("JPEG 2000", width, height, components, (long)(im->x1 - im->x0), (long)(im->y1 - im->y0),
                           (long)im->numcomps, err);
        goto out;
    }
    int levels = j2k_levels(codec, components);
    reduce = reduce < levels ? reduce : levels - 1;
    if (reduce > 0 && !opj_set_decoded_resolution_factor(codec, (OPJ_UINT32)reduce))
        reduce = 0;
    if (!opj_decode(codec, stream, im) || !opj_end_decompress(codec, stream)) {
        rc = ms_err_set(err, MS_EFORMAT, "JPEG 2000 frame is corrupt or truncated: %s",
                        why[0] ? why : "OpenJPEG could not decode it");
        goto out;
    }
    /* Each level halves the size, rounding up (the image starts at 0, 0). */
    *out_w = (int)(((uint32_t)width + (1u << reduce) - 1) >> reduce);
    *out_h = (int)(((uint32_t)height + (1u << reduce) - 1) >> reduce);
    size_t n = (size_t)*out_w * (size_t)*out_h * (size_t)components * (size_t)bytes;
    if (!(*out = malloc(n))) {
        rc = ms_err_set(err, MS_ENOMEM, "no memory for a JPEG 2000 frame of %zu bytes", n);
        goto out;
    }
    rc = j2k_samples(im, *out_w, *out_h, components, bytes, *out, err);
    if (rc) {
        free(*out);
        *out = NULL;
    }
out:
    if (im)
        opj_image_destroy(im);
    if (stream)
        opj_stream_destroy(stream);
    if (codec)
        opj_destroy_codec(codec);
    return rc;
}

int j2k_decode(const uint8_t *buf, size_t len, int width, int height, int components, int bytes, int reduce,
               uint8_t **out, int *out_w, int *out_h, ms_err *err)
{
    *out = NULL;
    int rc = j2k_decode_at(buf, len, width, height, components, bytes, reduce, out, out_w, out_h, err);
    /* A tile or component with fewer levels than the main header says
     * fails the reduced decode: the whole frame still decodes. */
    if (rc == MS_EFORMAT && reduce > 0)
        rc = j2k_decode_at(buf, len, width, height, components, bytes, 0, out, out_w, out_h, err);
    return rc;
}

/* ---- JPEG-LS ---- */

static int charls_failed(charls_jpegls_errc e, ms_err *err)
{
    return ms_err_set(err, e == CHARLS_JPEGLS_ERRC_NOT_ENOUGH_MEMORY ? MS_ENOMEM : MS_EFORMAT,
                      "JPEG-LS frame is corrupt or truncated: %s", charls_get_error_message(e));
}

int jpegls_decode(const uint8_t *buf, size_t len, int width, int height, int components, int bytes, uint8_t *out,
                  ms_err *err)
{
    /* CharLS 2.4 decodes a stream cut short as if zeros followed, for up to
     * seconds on a small image before it fails: refuse a stream that does
     * not end with its EOI marker (a fragment may be padded with one 0). */
    size_t end = len;
    if (end > 0 && buf[end - 1] == 0x00)
        end--;
    if (end < 4 || buf[end - 2] != 0xff || buf[end - 1] != 0xd9)
        return ms_err_set(err, MS_EFORMAT, "JPEG-LS frame is truncated: it does not end with an EOI marker");
    charls_jpegls_decoder *dec = charls_jpegls_decoder_create();
    if (!dec)
        return ms_err_set(err, MS_ENOMEM, "no memory for a JPEG-LS decoder");
    charls_frame_info fi = {0};
    charls_interleave_mode mode = CHARLS_INTERLEAVE_MODE_NONE;
    size_t need = 0;
    uint8_t *raw = NULL;
    int rc = 0;
    charls_jpegls_errc e = charls_jpegls_decoder_set_source_buffer(dec, buf, len);
    if (!e)
        e = charls_jpegls_decoder_read_header(dec);
    if (!e)
        e = charls_jpegls_decoder_get_frame_info(dec, &fi);
    if (!e)
        e = charls_jpegls_decoder_get_interleave_mode(dec, &mode);
    if (e) {
        rc = charls_failed(e, err);
        goto out;
    }
    if ((long)fi.width != width || (long)fi.height != height || fi.component_count != components) {
        rc = dicom_frame_size_mismatch("JPEG-LS", width, height, components, (long)fi.width, (long)fi.height,
                           (long)fi.component_count, err);
        goto out;
    }
    if (fi.bits_per_sample < 2 || fi.bits_per_sample > 8 * bytes) {
        rc = dicom_frame_precision_too_high("JPEG-LS", fi.bits_per_sample, bytes, err);
        goto out;
    }
    if ((e = charls_jpegls_decoder_get_destination_size(dec, 0, &need))) {
        rc = charls_failed(e, err);
        goto out;
    }
    if (!(raw = malloc(need))) {
        rc = ms_err_set(err, MS_ENOMEM, "no memory for a JPEG-LS frame of %zu bytes", need);
        goto out;
    }
    if ((e = charls_jpegls_decoder_decode_to_buffer(dec, raw, need, 0))) {
        rc = charls_failed(e, err);
        goto out;
    }
    /* CharLS gives 1 byte a sample up to 8 bits, else 2 (machine order),
     * planes one after another when not interleaved. */
    int in_bytes = fi.bits_per_sample > 8 ? 2 : 1;
    size_t n = (size_t)width * (size_t)height, nc = (size_t)components;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < nc; k++) {
            size_t at = mode == CHARLS_INTERLEAVE_MODE_NONE ? k * n + i : i * nc + k;
            int32_t v;
            if (in_bytes == 2) {
                uint16_t s;
                memcpy(&s, raw + 2 * at, 2);
                v = s;
            } else {
                v = raw[at];
            }
            put_sample_le(out + (i * nc + k) * (size_t)bytes, v, bytes);
        }
out:
    free(raw);
    charls_jpegls_decoder_destroy(dec);
    return rc;
}
