/*
 * fuzz_image.c - libFuzzer target for the image module: arbitrary bytes
 * through image_prepare, image_thumbnail and the ingest path that does both
 * from one decode (image_prepare_with_thumbnail), image_gray8 (whole and a
 * rectangle, as overlays take it), with small limits so every input stays
 * cheap, and image_dicom_metadata. Any outcome is fine except a crash, a sanitizer
 * report, a hang, or an error without its message. Then MedSearch's direct
 * PNG decoder against libpng (libvips' loader), on two PNGs made from the
 * input: the input itself with every chunk's CRC made right (when it is a
 * PNG), and a well-formed PNG whose size, colour type, depth and filtered
 * rows (filter bytes included) are the input's bytes, compressed here, so
 * that mutations reach the unfiltering instead of a CRC or zlib check.
 * Whatever the direct decoder decodes, libpng must decode to the same
 * pixels. Built and run by tests/fuzz/run.sh (`make fuzz`).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <libdeflate.h>
#include <vips/vips.h>

#include "image/image.h"
#include "image/internal.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    /* cache off: every input is decoded afresh, memory stays flat */
    if (image_init(1, NULL) != 0)
        abort();
    return 0;
}

/* An error must come with its code and a message naming the problem. */
static void check_error(int rc, const ms_err *err)
{
    if (rc != 0 && (err->code != rc || err->msg[0] == '\0'))
        __builtin_trap();
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A copy of a PNG with the CRC of every complete chunk recomputed. */
static uint8_t *with_crcs_fixed(const uint8_t *data, size_t size)
{
    uint8_t *p = malloc(size);
    if (!p)
        return NULL;
    memcpy(p, data, size);
    for (size_t off = 8; off + 12 <= size;) {
        uint32_t len = be32(p + off);
        if (len > size - off - 12)
            break;
        uint32_t crc = libdeflate_crc32(0, p + off + 4, 4 + (size_t)len);
        uint8_t *at = p + off + 8 + len;
        at[0] = (uint8_t)(crc >> 24), at[1] = (uint8_t)(crc >> 16), at[2] = (uint8_t)(crc >> 8), at[3] = (uint8_t)crc;
        off += 12 + (size_t)len;
    }
    return p;
}

static void put_be32(uint8_t *at, uint32_t v)
{
    at[0] = (uint8_t)(v >> 24), at[1] = (uint8_t)(v >> 16), at[2] = (uint8_t)(v >> 8), at[3] = (uint8_t)v;
}

/* Appends one chunk with its CRC at out + *len (room checked by the caller). */
static void put_chunk(uint8_t *out, size_t *len, const char *type, const uint8_t *body, uint32_t n)
{
    uint8_t *c = out + *len;
    put_be32(c, n);
    memcpy(c + 4, type, 4);
    if (n)
        memcpy(c + 8, body, n);
    put_be32(c + 8 + n, libdeflate_crc32(0, c + 4, 4 + (size_t)n));
    *len += 12 + (size_t)n;
}

/* A well-formed PNG from the input's bytes: byte 0 and 1 the width and
 * height (1..64), byte 2 the colour type (gray, RGB, gray+alpha, RGBA) and
 * depth (8 or 16), the rest the filtered rows, repeated as needed; a
 * filter byte is taken mod 6, so 5 (no such filter) comes up too. */
static uint8_t *png_from_bytes(const uint8_t *data, size_t size, size_t *out_len)
{
    if (size < 4)
        return NULL;
    static const unsigned colours[4] = {0, 2, 4, 6}, channels[4] = {1, 3, 2, 4};
    uint32_t w = 1 + data[0] % 64, h = 1 + data[1] % 64;
    unsigned kind = data[2] % 4, depth = data[2] & 4 ? 16 : 8;
    size_t row = (size_t)w * channels[kind] * depth / 8, raw_len = (size_t)h * (1 + row);
    uint8_t *raw = malloc(raw_len);
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(1);
    size_t zcap = c ? libdeflate_zlib_compress_bound(c, raw_len) : 0;
    uint8_t *out = malloc(8 + 25 + 12 + zcap + 12);
    if (!raw || !c || !out) {
        free(raw), free(out);
        libdeflate_free_compressor(c);
        return NULL;
    }
    for (size_t i = 0; i < raw_len; i++)
        raw[i] = data[3 + i % (size - 3)];
    for (uint32_t y = 0; y < h; y++)
        raw[y * (1 + row)] %= 6;
    memcpy(out, "\x89PNG\r\n\x1a\n", 8);
    uint8_t ihdr[13] = {0};
    put_be32(ihdr, w);
    put_be32(ihdr + 4, h);
    ihdr[8] = (uint8_t)depth;
    ihdr[9] = (uint8_t)colours[kind];
    size_t len = 8;
    put_chunk(out, &len, "IHDR", ihdr, 13);
    size_t zlen = libdeflate_zlib_compress(c, raw, raw_len, out + len + 8, zcap);
    put_be32(out + len, (uint32_t)zlen); /* IDAT written in place: its header and CRC around the data */
    memcpy(out + len + 4, "IDAT", 4);
    put_be32(out + len + 8 + zlen, libdeflate_crc32(0, out + len + 4, 4 + zlen));
    len += 12 + zlen;
    put_chunk(out, &len, "IEND", NULL, 0);
    libdeflate_free_compressor(c);
    free(raw);
    *out_len = len;
    return zlen ? out : (free(out), NULL);
}

/* The direct decoder against libpng on p: when both decode, the pixels
 * must be the same (libpng may refuse what the direct decoder takes, e.g. a
 * malformed ancillary chunk it never reads). Takes ownership of p. */
static void png_differential(uint8_t *p, size_t size)
{
    if (!p)
        return;
    ms_err err = {0};
    VipsImage *direct = NULL, *ref = NULL;
    int rc = png_decode_direct(p, size, &direct, &err);
    check_error(rc < 0 ? rc : 0, &err);
    if (rc == 0 && vips_pngload_buffer(p, size, &ref, "fail_on", VIPS_FAIL_ON_ERROR, NULL) == 0) {
        size_t a_len = 0, b_len = 0;
        void *a = vips_image_write_to_memory(direct, &a_len), *b = vips_image_write_to_memory(ref, &b_len);
        if (a && b && (direct->Bands != ref->Bands || direct->BandFmt != ref->BandFmt || a_len != b_len ||
                       memcmp(a, b, a_len) != 0))
            __builtin_trap();
        g_free(a);
        g_free(b);
    }
    vips_error_clear();
    if (ref)
        g_object_unref(ref);
    if (direct)
        g_object_unref(direct);
    free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const image_limits lim = {.max_bytes = 1 << 20, .max_pixels = 1 << 20};
    const image_prep prep = {32, {127.5f, 127.5f, 127.5f}, {1 / 127.5f, 1 / 127.5f, 1 / 127.5f}};
    static float out[3 * 32 * 32];
    ms_err err = {0};
    image_info info;

    int rc = image_prepare(data, size, &lim, &prep, out, &info, &err);
    check_error(rc, &err);
    if (rc == 0) {
        if (info.width < 1 || info.height < 1 || (uint64_t)info.width * info.height > lim.max_pixels)
            __builtin_trap();
        for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
            if (!(out[i] >= -1.0f && out[i] <= 1.0f)) /* 0..255 mapped to -1..1 */
                __builtin_trap();
    }

    /* A DICOM file's metadata: texts NUL-terminated within their arrays. */
    image_dicom_meta meta;
    int mrc = image_dicom_metadata(data, size, &meta, &err);
    check_error(mrc, &err);
    if (mrc == 0 && (memchr(meta.patient_id, 0, sizeof meta.patient_id) == NULL ||
                     memchr(meta.view, 0, sizeof meta.view) == NULL || meta.age < -1 || meta.age > 200))
        __builtin_trap();

    uint8_t *thumb = NULL;
    size_t thumb_len = 0;
    thumb_format fmt = size % 2 ? THUMB_WEBP : THUMB_JPEG;
    int trc = image_thumbnail(data, size, &lim, 48, fmt, &thumb, &thumb_len, &err);
    check_error(trc, &err);
    if (trc == 0 && (!thumb || thumb_len == 0))
        __builtin_trap();
    free(thumb);

    /* An overlay's gray pixels, of all of it and of a rectangle taken from
     * the input's last bytes (refused when it is not inside the image),
     * within the size asked for. */
    if (rc == 0) {
        uint8_t *gray = NULL;
        int gw = 0, gh = 0;
        int grc = image_gray8(data, size, &lim, NULL, 40, &gray, &gw, &gh, &err);
        check_error(grc, &err);
        if (grc == 0 && (!gray || gw < 1 || gh < 1 || gw > 40 || gh > 40))
            __builtin_trap();
        free(gray);
        int iw, ih;
        image_info_shown_size(&info, &iw, &ih);
        const uint8_t *t = data + size - (size >= 4 ? 4 : size);
        image_rect r = {size >= 4 ? t[0] % (iw + 1) : 0, size >= 4 ? t[1] % (ih + 1) : 0, size >= 4 ? 1 + t[2] : iw,
                        size >= 4 ? 1 + t[3] : ih};
        gray = NULL;
        grc = image_gray8(data, size, &lim, &r, 1 + (int)(size % 64), &gray, &gw, &gh, &err);
        check_error(grc, &err);
        int inside = r.x + r.width <= iw && r.y + r.height <= ih;
        if ((!inside && grc != MS_EINVAL) || (grc == 0 && (!gray || gw < 1 || gh < 1 || gw > 64 || gh > 64)))
            __builtin_trap();
        free(gray);
    }

    /* The one-decode ingest path succeeds exactly when the two calls do. */
    static float out2[3 * 32 * 32];
    thumb = NULL;
    thumb_len = 0;
    int crc = image_prepare_with_thumbnail(data, size, &lim, &prep, out2, NULL, 48, fmt, &thumb, &thumb_len, &err);
    check_error(crc, &err);
    if ((crc == 0) != (rc == 0 && trc == 0) || (crc == 0 && (!thumb || thumb_len == 0)))
        __builtin_trap();
    free(thumb);

    if (size >= 8 && memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0 && image_probe(data, size, &lim, NULL, NULL) == 0)
        png_differential(with_crcs_fixed(data, size), size);
    size_t made_len = 0;
    uint8_t *made = png_from_bytes(data, size, &made_len);
    png_differential(made, made_len);
    return 0;
}
