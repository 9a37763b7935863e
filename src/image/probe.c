/*
 * probe.c - format sniffing and header-only checks, without libvips.
 *
 * Every image is measured here before a single pixel is decoded: the PNG
 * IHDR chunk, the JPEG SOFn segment or the first TIFF IFD gives width,
 * height, bands and bit depth, and the byte and pixel limits are checked
 * against them. The parsers read only inside [buf, buf + len), every offset
 * is checked before it is used, and every loop advances, so a hostile header
 * can only produce an error, never a crash, an overread or a hang.
 */
#include "image/image.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "image/dicom.h"
#include "image/internal.h"

#define DEFAULT_MAX_BYTES ((size_t)64 << 20)
#define DEFAULT_MAX_PIXELS 50000000u

image_limits image_default_limits(void)
{
    return (image_limits){.max_bytes = DEFAULT_MAX_BYTES, .max_pixels = DEFAULT_MAX_PIXELS};
}

const char *image_format_name(image_format f)
{
    switch (f) {
    case IMAGE_PNG: return "png";
    case IMAGE_JPEG: return "jpeg";
    case IMAGE_TIFF: return "tiff";
    case IMAGE_DICOM: return "dicom";
    default: return "unknown";
    }
}

const char *image_format_mime(image_format f)
{
    switch (f) {
    case IMAGE_PNG: return "image/png";
    case IMAGE_JPEG: return "image/jpeg";
    case IMAGE_TIFF: return "image/tiff";
    case IMAGE_DICOM: return "application/dicom";
    default: return "application/octet-stream";
    }
}

static const uint8_t PNG_MAGIC[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

static bool starts_with(const uint8_t *p, size_t len, const void *magic, size_t n)
{
    return len >= n && memcmp(p, magic, n) == 0;
}

image_format image_sniff(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    if (!p)
        return IMAGE_UNKNOWN;
    if (starts_with(p, len, PNG_MAGIC, sizeof PNG_MAGIC))
        return IMAGE_PNG;
    if (starts_with(p, len, "\xff\xd8\xff", 3))
        return IMAGE_JPEG;
    if (starts_with(p, len, "II*\0", 4) || starts_with(p, len, "MM\0*", 4))
        return IMAGE_TIFF;
    if (dicom_sniff(p, len))
        return IMAGE_DICOM;
    return IMAGE_UNKNOWN;
}

/* Big- and little-endian readers; callers have checked the bounds. */
static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}
static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[1] << 8 | p[0]); }

/* ---- formats we recognise only to name them in the error ---- */

/* Names a well-known format that is not an allowed input, or returns NULL. */
static const char *unsupported_format_name(const uint8_t *p, size_t len)
{
    if (starts_with(p, len, "GIF87a", 6) || starts_with(p, len, "GIF89a", 6))
        return "GIF";
    if (len >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WEBP", 4) == 0)
        return "WebP";
    if (starts_with(p, len, "II+\0", 4) || starts_with(p, len, "MM\0+", 4))
        return "BigTIFF";
    if (starts_with(p, len, "\0\0\0\x0cjP  \r\n\x87\n", 12) || starts_with(p, len, "\xff\x4f\xff\x51", 4))
        return "JPEG 2000";
    if (starts_with(p, len, "\xff\x0a", 2) || starts_with(p, len, "\0\0\0\x0cJXL \r\n\x87\n", 12))
        return "JPEG XL";
    if (len >= 12 && memcmp(p + 4, "ftyp", 4) == 0)
        return "HEIF/AVIF";
    if (starts_with(p, len, "BM", 2))
        return "BMP";
    if (starts_with(p, len, "%PDF", 4))
        return "PDF";
    if (starts_with(p, len, "\x1f\x8b", 2) || starts_with(p, len, "PK\x03\x04", 4))
        return "a compressed archive (gzip/zip)";
    if (starts_with(p, len, "<", 1) || starts_with(p, len, "\xef\xbb\xbf<", 4))
        return "XML/HTML/SVG text";
    return NULL;
}

static int unknown_format(const uint8_t *p, size_t len, ms_err *err)
{
    const char *name = unsupported_format_name(p, len);
    if (name)
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "%s files are not supported; convert to PNG, JPEG, TIFF or DICOM", name);
    char hex[3 * 8 + 1] = "";
    size_t at = 0;
    for (size_t i = 0; i < len && i < 8; i++)
        at += (size_t)snprintf(hex + at, sizeof hex - at, i ? " %02x" : "%02x", p[i]);
    return ms_err_set(err, MS_EFORMAT,
                      "not a PNG, JPEG, TIFF or DICOM image (first bytes: %s)", hex);
}

/* An EXIF block's Orientation, 1 when absent or unreadable (below, with the TIFF reader). */
static int exif_orientation(const uint8_t *p, size_t len);

/* ---- PNG ---- */

static int probe_png(const uint8_t *p, size_t len, image_info *info, ms_err *err)
{
    /* signature, IHDR length + type + 13 data bytes + CRC */
    if (len < 8 + 8 + 13 + 4)
        return ms_err_set(err, MS_EFORMAT, "PNG is truncated: %zu bytes, no complete header", len);
    if (read_be32(p + 8) != 13 || memcmp(p + 12, "IHDR", 4) != 0)
        return ms_err_set(err, MS_EFORMAT, "PNG is corrupt: first chunk is not a valid IHDR");
    const uint8_t *ihdr = p + 16;
    uint32_t w = read_be32(ihdr), h = read_be32(ihdr + 4);
    int depth = ihdr[8], colour = ihdr[9];
    if (w == 0 || h == 0 || w > 0x7fffffffu || h > 0x7fffffffu)
        return ms_err_set(err, MS_EFORMAT, "PNG is corrupt: invalid size %ux%u", w, h);

    bool depth_ok;
    int bands;
    switch (colour) {
    case 0: bands = 1; depth_ok = depth == 1 || depth == 2 || depth == 4 || depth == 8 || depth == 16; break;
    case 2: bands = 3; depth_ok = depth == 8 || depth == 16; break;
    case 3: bands = 3; depth_ok = depth == 1 || depth == 2 || depth == 4 || depth == 8; break;
    case 4: bands = 2; depth_ok = depth == 8 || depth == 16; break;
    case 6: bands = 4; depth_ok = depth == 8 || depth == 16; break;
    default:
        return ms_err_set(err, MS_EFORMAT, "PNG is corrupt: unknown colour type %d", colour);
    }
    if (!depth_ok)
        return ms_err_set(err, MS_EFORMAT, "PNG is corrupt: bit depth %d is invalid for colour type %d",
                          depth, colour);

    /* A palette or a gray/RGB image with a tRNS chunk decodes with alpha;
     * an eXIf chunk (a TIFF structure, which some writers put after
     * "Exif\0\0" as in a JPEG) may turn the image, as browsers turn it.
     * Walk the chunk headers up to the first IDAT; each step moves forward. */
    size_t off = 8 + 8 + 13 + 4;
    bool trns = false;
    while (off + 8 <= len) {
        uint32_t clen = read_be32(p + off);
        if (clen > 0x7fffffffu)
            break;
        if (memcmp(p + off + 4, "IDAT", 4) == 0)
            break;
        if (memcmp(p + off + 4, "tRNS", 4) == 0 && (colour == 0 || colour == 2 || colour == 3))
            trns = true;
        if ((uint64_t)off + 12 + clen > len)
            break;
        if (memcmp(p + off + 4, "eXIf", 4) == 0 && info->orientation == 0) {
            const uint8_t *exif = p + off + 8;
            bool prefixed = clen >= 6 && !memcmp(exif, "Exif\0\0", 6);
            info->orientation = exif_orientation(exif + (prefixed ? 6 : 0), clen - (prefixed ? 6 : 0));
        }
        off += 12 + (size_t)clen;
    }
    bands += trns;

    info->format = IMAGE_PNG;
    info->width = (int)w;
    info->height = (int)h;
    info->bands = bands;
    info->bits = depth == 16 ? 16 : 8;
    return 0;
}

/* ---- JPEG ---- */

static int jpeg_frame(const uint8_t *seg, size_t seglen, int marker, image_info *info, ms_err *err)
{
    if (seglen < 6)
        return ms_err_set(err, MS_EFORMAT, "JPEG is corrupt: frame header too short");
    if (marker == 0xcb)
        return ms_err_set(err, MS_EUNSUPPORTED, "lossless JPEG with arithmetic coding (SOF11) is not supported; "
                          "convert to PNG");
    if ((marker >= 0xc5 && marker <= 0xc7) || marker >= 0xcd)
        return ms_err_set(err, MS_EUNSUPPORTED, "hierarchical JPEG (SOF%d) is not supported; convert to PNG",
                          marker - 0xc0);
    int precision = seg[0];
    uint16_t h = read_be16(seg + 1), w = read_be16(seg + 3);
    int ncomp = seg[5];
    /* libjpeg reads 8-bit DCT frames; MedSearch's own decoders lossless
     * ones (SOF3, 2 to 16 bits, jpeg_lossless.c) and 12-bit sequential
     * gray ones (SOF0/SOF1, jpeg_dct.c). */
    bool lossless = marker == 0xc3, sequential = marker == 0xc0 || marker == 0xc1;
    if (lossless && (precision < 2 || precision > 16))
        return ms_err_set(err, MS_EFORMAT, "JPEG is corrupt: lossless sample precision %d is outside 2..16",
                          precision);
    if (lossless && ncomp == 3 && precision != 8)
        return ms_err_set(err, MS_EUNSUPPORTED, "%d-bit colour lossless JPEG is not supported; only 8-bit colour "
                          "or 2- to 16-bit grayscale", precision);
    if (!lossless && precision == 12 && !sequential)
        return ms_err_set(err, MS_EUNSUPPORTED, "12-bit JPEG of process SOF%d (progressive or arithmetic) is not "
                          "supported; only sequential Huffman 12-bit JPEG (use PNG for 16-bit)", marker - 0xc0);
    if (!lossless && precision == 12 && ncomp != 1)
        return ms_err_set(err, MS_EUNSUPPORTED, "12-bit colour JPEG is not supported; only 12-bit grayscale");
    if (!lossless && precision != 8 && precision != 12)
        return ms_err_set(err, MS_EUNSUPPORTED, "%d-bit JPEG is not supported; only 8- and 12-bit JPEG (use PNG for "
                          "16-bit)", precision);
    if (ncomp == 4)
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "CMYK JPEG images are not supported; convert to grayscale or RGB first");
    if (ncomp != 1 && ncomp != 3)
        return ms_err_set(err, MS_EUNSUPPORTED, "JPEG with %d colour components is not supported", ncomp);
    if (h == 0)
        return ms_err_set(err, MS_EUNSUPPORTED, "JPEG whose height is given after the scan (DNL) is not supported");
    if (w == 0)
        return ms_err_set(err, MS_EFORMAT, "JPEG is corrupt: width is 0");
    info->format = IMAGE_JPEG;
    info->width = w;
    info->height = h;
    info->bands = ncomp;
    info->bits = precision == 8 ? 8 : 16;
    return 0;
}

/* Walks the marker segments from SOI to the first scan (SOS): the frame
 * header gives the size, and every table before the scan must be complete
 * (libjpeg would otherwise decode a file cut inside its Huffman tables with
 * default tables, silently). */
static int probe_jpeg(const uint8_t *p, size_t len, image_info *info, ms_err *err)
{
    size_t off = 2; /* after SOI */
    bool have_frame = false;
    for (;;) {
        /* Markers may be preceded by any number of 0xff fill bytes. */
        if (off >= len || p[off] != 0xff)
            break;
        while (off < len && p[off] == 0xff)
            off++;
        if (off >= len)
            break;
        int marker = p[off++];
        if (marker == 0x01 || (marker >= 0xd0 && marker <= 0xd7))
            continue; /* no length field */
        if (marker == 0xd9 || marker == 0xd8 || marker == 0x00 || (marker == 0xda && !have_frame))
            return ms_err_set(err, MS_EFORMAT, "JPEG is corrupt: marker 0x%02x before the %s", marker,
                              have_frame ? "scan" : "frame header");
        if (off + 2 > len)
            break;
        size_t seglen = read_be16(p + off);
        if (seglen < 2)
            return ms_err_set(err, MS_EFORMAT, "JPEG is corrupt: segment length %zu", seglen);
        if (off + seglen > len)
            break;
        if (marker == 0xda)
            return off + seglen < len ? 0 : ms_err_set(err, MS_EFORMAT, "JPEG is truncated: no scan data");
        /* The first EXIF block (APP1 "Exif\0\0" and a TIFF structure) gives the orientation. */
        if (marker == 0xe1 && info->orientation == 0 && seglen >= 2 + 6 && !memcmp(p + off + 2, "Exif\0\0", 6))
            info->orientation = exif_orientation(p + off + 8, seglen - 8);
        if (jpeg_is_sof(marker)) {
            if (have_frame)
                return ms_err_set(err, MS_EFORMAT, "JPEG is corrupt: two frame headers");
            int rc = jpeg_frame(p + off + 2, seglen - 2, marker, info, err);
            if (rc)
                return rc;
            have_frame = true;
        }
        off += seglen;
    }
    if (off >= len)
        return ms_err_set(err, MS_EFORMAT, "JPEG is truncated: %zu bytes end before the %s", len,
                          have_frame ? "scan" : "frame header");
    return ms_err_set(err, MS_EFORMAT, "JPEG is corrupt: expected a marker at byte %zu", off);
}

/* ---- TIFF (classic, first IFD) ---- */

enum { TIFF_SHORT = 3, TIFF_LONG = 4 };

typedef struct tiff_reader {
    const uint8_t *p;
    size_t len;
    bool big_endian;
} tiff_reader;

static uint16_t t16(const tiff_reader *t, size_t off)
{
    return t->big_endian ? read_be16(t->p + off) : le16(t->p + off);
}
static uint32_t t32(const tiff_reader *t, size_t off)
{
    return t->big_endian ? read_be32(t->p + off) : le32(t->p + off);
}

/* First value of an IFD entry of type SHORT or LONG; false when it is of
 * another type or points outside the file. */
static bool tiff_first_value(const tiff_reader *t, size_t entry, uint32_t *v)
{
    uint16_t type = t16(t, entry + 2);
    uint32_t count = t32(t, entry + 4);
    size_t unit = type == TIFF_SHORT ? 2 : type == TIFF_LONG ? 4 : 0;
    if (!unit || count == 0)
        return false;
    size_t at = entry + 8;
    if ((uint64_t)count * unit > 4) {
        at = t32(t, entry + 8);
        if (at > t->len || t->len - at < unit)
            return false;
    }
    *v = unit == 2 ? t16(t, at) : t32(t, at);
    return true;
}

/* Orientation (tag 274) from the first directory of the TIFF structure at
 * p: how its grid is to be turned for display, 1 (as stored) to 8. Absent,
 * unreadable or out of range, it is 1, as viewers take it. */
static int orientation_in(const tiff_reader *t, uint32_t ifd)
{
    if (ifd < 8 || ifd > t->len || t->len - ifd < 2)
        return 1;
    uint16_t n = t16(t, ifd);
    if ((uint64_t)n * 12 > t->len - ifd - 2)
        return 1;
    for (uint16_t i = 0; i < n; i++) {
        size_t e = ifd + 2 + (size_t)i * 12;
        uint32_t v;
        if (t16(t, e) == 274 && tiff_first_value(t, e, &v))
            return v >= 1 && v <= 8 ? (int)v : 1;
    }
    return 1;
}

static int exif_orientation(const uint8_t *p, size_t len)
{
    if (len < 8 || (memcmp(p, "II*\0", 4) && memcmp(p, "MM\0*", 4)))
        return 1;
    tiff_reader t = {.p = p, .len = len, .big_endian = p[0] == 'M'};
    return orientation_in(&t, t32(&t, 4));
}

static int probe_tiff(const uint8_t *p, size_t len, image_info *info, ms_err *err)
{
    tiff_reader t = {.p = p, .len = len, .big_endian = p[0] == 'M'};
    if (len < 8)
        return ms_err_set(err, MS_EFORMAT, "TIFF is truncated: %zu bytes, no complete header", len);
    uint32_t ifd = t32(&t, 4);
    if (ifd < 8 || ifd > len || len - ifd < 2)
        return ms_err_set(err, MS_EFORMAT, "TIFF is corrupt: first directory offset %u is outside the file", ifd);
    uint16_t n = t16(&t, ifd);
    if ((uint64_t)n * 12 > len - ifd - 2)
        return ms_err_set(err, MS_EFORMAT, "TIFF is truncated: directory of %u entries does not fit", n);

    uint32_t w = 0, h = 0, bits = 1, samples = 1, photometric = 1, sample_format = 1;
    bool have_photometric = false;
    for (uint16_t i = 0; i < n; i++) {
        size_t e = ifd + 2 + (size_t)i * 12;
        uint32_t v;
        if (!tiff_first_value(&t, e, &v))
            continue;
        switch (t16(&t, e)) {
        case 256: w = v; break;
        case 257: h = v; break;
        case 258: bits = v; break;
        case 262: photometric = v; have_photometric = true; break;
        case 277: samples = v; break;
        case 339: sample_format = v; break;
        default: break;
        }
    }
    if (w == 0 || h == 0 || w > 0x7fffffffu || h > 0x7fffffffu)
        return ms_err_set(err, MS_EFORMAT, "TIFF is corrupt: invalid or missing size %ux%u", w, h);
    if (!have_photometric)
        return ms_err_set(err, MS_EFORMAT, "TIFF is corrupt: no photometric interpretation tag");
    /* Grayscale (0 MinIsWhite, 1 MinIsBlack), RGB (2) and palette (3):
     * libtiff, under libvips, gives gray or RGB(A) for those. */
    const char *kind = photometric <= 1 ? "grayscale" : photometric == 2 ? "RGB" : photometric == 3 ? "palette" : NULL;
    if (!kind)
        return ms_err_set(err, MS_EUNSUPPORTED, "TIFF with photometric interpretation %u (%s) is not supported; only "
                          "grayscale, RGB and palette TIFF", photometric,
                          photometric == 5 ? "CMYK" : photometric == 6 ? "YCbCr" : "not gray or RGB");
    if (photometric == 2 ? samples != 3 && samples != 4 : samples != 1 && samples != 2)
        return ms_err_set(err, MS_EUNSUPPORTED, "%s TIFF with %u samples per pixel is not supported", kind, samples);
    if (photometric == 3 ? bits != 8 : bits != 8 && bits != 16)
        return ms_err_set(err, MS_EUNSUPPORTED, "%u-bit %s TIFF is not supported; only 8- and 16-bit grayscale or "
                          "RGB, and 8-bit palette", bits, kind);
    if (sample_format != 1)
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "TIFF with sample format %u is not supported; only unsigned integer samples",
                          sample_format);
    info->format = IMAGE_TIFF;
    info->width = (int)w;
    info->height = (int)h;
    info->bands = photometric == 3 ? 3 : (int)samples; /* a palette decodes to RGB */
    info->bits = (int)bits;
    info->orientation = orientation_in(&t, ifd);
    return 0;
}

/* ---- the public probe ---- */

static void format_mpx(char *out, size_t n, uint64_t pixels)
{
    if (pixels < 100000u)
        snprintf(out, n, "%llu pixels", (unsigned long long)pixels);
    else if (pixels % 1000000u == 0)
        snprintf(out, n, "%llu Mpx", (unsigned long long)(pixels / 1000000u));
    else
        snprintf(out, n, "%.1f Mpx", (double)pixels / 1e6);
}

/* ---- DICOM ---- */

static int probe_dicom(const uint8_t *p, size_t len, image_info *info, ms_err *err)
{
    info->format = IMAGE_DICOM;
    dicom_image d;
    int rc = dicom_parse(p, len, &d, err);
    if (rc)
        return rc;
    info->width = d.cols;
    info->height = d.rows;
    info->bands = d.samples;
    info->bits = d.bits_allocated;
    return 0;
}

void image_info_shown_size(const image_info *info, int *width, int *height)
{
    bool turned = info->orientation >= 5 && info->orientation <= 8;
    *width = turned ? info->height : info->width;
    *height = turned ? info->width : info->height;
}

int image_probe(const void *buf, size_t len, const image_limits *lim, image_info *info, ms_err *err)
{
    image_limits def = image_default_limits();
    if (!lim)
        lim = &def;
    image_info local;
    if (!info)
        info = &local;
    memset(info, 0, sizeof *info);
    if (!buf && len)
        return ms_err_set(err, MS_EINVAL, "image buffer is NULL");
    if (len == 0)
        return ms_err_set(err, MS_EFORMAT, "empty input: 0 bytes is not an image");
    if (len > lim->max_bytes)
        return ms_err_set(err, MS_ETOOBIG, "image is %zu bytes, over the %zu byte limit (%.1f MiB)", len,
                          lim->max_bytes, (double)lim->max_bytes / (1 << 20));

    const uint8_t *p = buf;
    int rc;
    switch (image_sniff(p, len)) {
    case IMAGE_PNG: rc = probe_png(p, len, info, err); break;
    case IMAGE_JPEG: rc = probe_jpeg(p, len, info, err); break;
    case IMAGE_TIFF: rc = probe_tiff(p, len, info, err); break;
    case IMAGE_DICOM: rc = probe_dicom(p, len, info, err); break;
    default: return unknown_format(p, len, err);
    }
    if (rc)
        return rc;
    if (info->orientation < 1)
        info->orientation = 1; /* PNG, DICOM, a JPEG without EXIF */

    uint64_t pixels = (uint64_t)info->width * (uint64_t)info->height;
    if (pixels > lim->max_pixels) {
        char have[32], limit[32];
        format_mpx(have, sizeof have, pixels);
        format_mpx(limit, sizeof limit, lim->max_pixels);
        return ms_err_set(err, MS_ETOOBIG, "image is %dx%d (%s), over the %s limit", info->width, info->height,
                          have, limit);
    }
    return 0;
}
