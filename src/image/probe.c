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
    case IMAGE_WEBP: return "webp";
    case IMAGE_JP2: return "jp2";
    case IMAGE_J2K: return "j2k";
    case IMAGE_HEIC: return "heic";
    case IMAGE_AVIF: return "avif";
    case IMAGE_GIF: return "gif";
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
    case IMAGE_WEBP: return "image/webp";
    case IMAGE_JP2: return "image/jp2";
    case IMAGE_J2K: return "image/j2c";
    case IMAGE_HEIC: return "image/heic";
    case IMAGE_AVIF: return "image/avif";
    case IMAGE_GIF: return "image/gif";
    default: return "application/octet-stream";
    }
}

static const uint8_t PNG_MAGIC[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
/* JPEG 2000: the JP2 signature box, and a codestream's SOC then SIZ */
static const uint8_t JP2_MAGIC[12] = {0, 0, 0, 0x0c, 'j', 'P', ' ', ' ', '\r', '\n', 0x87, '\n'};
static const uint8_t J2K_MAGIC[4] = {0xff, 0x4f, 0xff, 0x51};

static bool starts_with(const uint8_t *p, size_t len, const void *magic, size_t n)
{
    return len >= n && memcmp(p, magic, n) == 0;
}

/* HEIF's file type box names its brands: AVIF, or HEIC (HEVC images; mif1
 * alone is a HEIF image of either codec, and libheif reads both). Returns
 * IMAGE_UNKNOWN for other ISO media (MP4 and QuickTime video). */
static image_format heif_brand(const uint8_t *p, size_t len)
{
    if (len < 16 || memcmp(p + 4, "ftyp", 4) != 0)
        return IMAGE_UNKNOWN;
    size_t n = read_be32(p);
    n = n < len ? n : len;
    bool heif = false;
    for (size_t at = 8; at + 4 <= n; at += at == 8 ? 8 : 4) { /* the major brand, a version, the others */
        if (!memcmp(p + at, "avif", 4) || !memcmp(p + at, "avis", 4))
            return IMAGE_AVIF;
        static const char *const brands[] = {"heic", "heix", "heim", "heis", "hevc", "hevx", "mif1", "msf1"};
        for (size_t i = 0; i < sizeof brands / sizeof *brands; i++)
            heif |= !memcmp(p + at, brands[i], 4);
    }
    return heif ? IMAGE_HEIC : IMAGE_UNKNOWN;
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
    if (len >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WEBP", 4) == 0)
        return IMAGE_WEBP;
    if (starts_with(p, len, JP2_MAGIC, sizeof JP2_MAGIC))
        return IMAGE_JP2;
    if (starts_with(p, len, J2K_MAGIC, sizeof J2K_MAGIC))
        return IMAGE_J2K;
    if (starts_with(p, len, "GIF87a", 6) || starts_with(p, len, "GIF89a", 6))
        return IMAGE_GIF;
    image_format heif = heif_brand(p, len);
    if (heif != IMAGE_UNKNOWN)
        return heif;
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
    if (starts_with(p, len, "II+\0", 4) || starts_with(p, len, "MM\0+", 4))
        return "BigTIFF";
    if (starts_with(p, len, "\xff\x0a", 2) || starts_with(p, len, "\0\0\0\x0cJXL \r\n\x87\n", 12))
        return "JPEG XL";
    if (len >= 12 && memcmp(p + 4, "ftyp", 4) == 0)
        return "MP4 or QuickTime (ISO media)";
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
                          "%s files are not supported; convert to PNG, JPEG, JPEG 2000, TIFF, WebP, HEIC, AVIF, GIF or DICOM", name);
    char hex[3 * 8 + 1] = "";
    size_t at = 0;
    for (size_t i = 0; i < len && i < 8; i++)
        at += (size_t)snprintf(hex + at, sizeof hex - at, i ? " %02x" : "%02x", p[i]);
    return ms_err_set(err, MS_EFORMAT,
                      "not a PNG, JPEG, JPEG 2000, TIFF, WebP, HEIC, AVIF, GIF or DICOM image (first bytes: %s)", hex);
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
    info->width = (int)w;
    info->height = (int)h;
    info->bands = photometric == 3 ? 3 : (int)samples; /* a palette decodes to RGB */
    info->bits = (int)bits;
    info->orientation = orientation_in(&t, ifd);
    return 0;
}

/* ---- WebP ---- */

/* The fourcc of a chunk, printable, for a message. */
static void fourcc_text(const uint8_t *p, char out[5])
{
    for (int i = 0; i < 4; i++)
        out[i] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
    out[4] = '\0';
}

/* A WebP file is a RIFF container: "RIFF", the size of what follows as a
 * 32-bit little-endian number, "WEBP", then chunks of a fourcc, a 32-bit
 * size and the data. The first chunk tells the kind of file and its size:
 * "VP8 " (lossy) in its key frame header, "VP8L" (lossless) in its 5-byte
 * header, "VP8X" (extended: alpha, animation, metadata) as its canvas. An
 * EXIF Orientation inside a WebP is not applied: browsers show the file as
 * stored (Chromium 156 checked), and MedSearch shows what they show. An
 * animated WebP is read as its first frame, like a multi-frame DICOM. */
static int probe_webp(const uint8_t *p, size_t len, image_info *info, ms_err *err)
{
    if (len < 12 + 8)
        return ms_err_set(err, MS_EFORMAT, "WebP is truncated: %zu bytes, no complete header", len);
    uint32_t riff = le32(p + 4), clen = le32(p + 16);
    if ((uint64_t)riff + 8 > len)
        return ms_err_set(err, MS_EFORMAT, "WebP is truncated: its header says %llu bytes, the file has %zu",
                          (unsigned long long)riff + 8, len);
    if (riff < 12 || clen > riff - 12)
        return ms_err_set(err, MS_EFORMAT, "WebP is corrupt: its first chunk of %u bytes is larger than the file",
                          clen);
    const uint8_t *d = p + 20;
    uint32_t w, h;
    int bands = 3;
    if (!memcmp(p + 12, "VP8 ", 4)) {
        /* a 3-byte frame tag (bit 0 clear for a key frame), the start code
         * 9d 01 2a, then 14-bit width and height, each with 2 scale bits */
        if (clen < 10 || (d[0] & 1) || d[3] != 0x9d || d[4] != 0x01 || d[5] != 0x2a)
            return ms_err_set(err, MS_EFORMAT, "WebP is corrupt: its VP8 chunk does not start with a key frame");
        w = le16(d + 6) & 0x3fffu;
        h = le16(d + 8) & 0x3fffu;
    } else if (!memcmp(p + 12, "VP8L", 4)) {
        /* the signature byte 0x2f, then 14 bits of width - 1, 14 of height
         * - 1, one alpha bit and a 3-bit version that must be 0 */
        uint32_t bits = clen >= 5 ? le32(d + 1) : 0;
        if (clen < 5 || d[0] != 0x2f || bits >> 29 != 0)
            return ms_err_set(err, MS_EFORMAT, "WebP is corrupt: its VP8L chunk has no valid header");
        w = (bits & 0x3fffu) + 1;
        h = (bits >> 14 & 0x3fffu) + 1;
        bands = bits >> 28 & 1 ? 4 : 3;
    } else if (!memcmp(p + 12, "VP8X", 4)) {
        /* flags (0x10 alpha, 0x02 animation), 3 reserved bytes, then the
         * canvas width - 1 and height - 1 in 24 bits each */
        if (clen < 10)
            return ms_err_set(err, MS_EFORMAT, "WebP is corrupt: its VP8X chunk is %u bytes, not 10", clen);
        w = (uint32_t)(d[4] | d[5] << 8 | d[6] << 16) + 1;
        h = (uint32_t)(d[7] | d[8] << 8 | d[9] << 16) + 1;
        bands = d[0] & 0x12 ? 4 : 3; /* libwebp gives an animation's canvas with alpha */
    } else {
        char name[5];
        fourcc_text(p + 12, name);
        return ms_err_set(err, MS_EFORMAT, "WebP is corrupt: its first chunk is '%s', not VP8, VP8L or VP8X", name);
    }
    if (w == 0 || h == 0)
        return ms_err_set(err, MS_EFORMAT, "WebP is corrupt: invalid size %ux%u", w, h);
    info->width = (int)w;
    info->height = (int)h;
    info->bands = bands;
    info->bits = 8;
    return 0;
}

/* ---- JPEG 2000 ---- */

/* A codestream's main header starts with SOC (ff 4f) and the SIZ marker
 * segment (ff 51): its length, capabilities (Rsiz), the reference grid's
 * size and the image's offset in it, the tiling, then the component count
 * and, for each component, its precision (bit 7: signed) and subsampling.
 * OpenJPEG decodes what is read here (j2k_decode in dicom_codecs.c, as for
 * DICOM's JPEG 2000 frames), checked again against it before it allocates. */
static int probe_j2k_codestream(const uint8_t *p, size_t len, image_info *info, ms_err *err)
{
    if (len < 4 + 38 + 3)
        return ms_err_set(err, MS_EFORMAT, "JPEG 2000 is truncated: %zu bytes, no complete header", len);
    if (memcmp(p, J2K_MAGIC, sizeof J2K_MAGIC) != 0)
        return ms_err_set(err, MS_EFORMAT, "JPEG 2000 is corrupt: its codestream does not start with SOC and SIZ");
    uint32_t lsiz = read_be16(p + 4), rsiz = read_be16(p + 6), ncomp = read_be16(p + 40);
    uint32_t xsiz = read_be32(p + 8), ysiz = read_be32(p + 12), x0 = read_be32(p + 16), y0 = read_be32(p + 20);
    if (ncomp == 0 || lsiz != 38 + 3 * ncomp)
        return ms_err_set(err, MS_EFORMAT, "JPEG 2000 is corrupt: its SIZ segment of %u bytes does not hold %u "
                          "components", lsiz, ncomp);
    if (len < 4 + (size_t)lsiz)
        return ms_err_set(err, MS_EFORMAT, "JPEG 2000 is truncated inside its SIZ segment");
    if (xsiz <= x0 || ysiz <= y0 || xsiz - x0 > 0x7fffffffu || ysiz - y0 > 0x7fffffffu)
        return ms_err_set(err, MS_EFORMAT, "JPEG 2000 is corrupt: invalid size %ux%u at offset %u,%u", xsiz, ysiz,
                          x0, y0);
    if (rsiz & 0x4000)
        return ms_err_set(err, MS_EUNSUPPORTED, "High-Throughput JPEG 2000 (HTJ2K) is not supported; convert it to "
                          "classic JPEG 2000 (e.g. with OpenJPH's ojph_expand, then opj_compress) or to PNG");
    if (x0 || y0)
        return ms_err_set(err, MS_EUNSUPPORTED, "JPEG 2000 with its image at offset %u,%u of the reference grid is "
                          "not supported", x0, y0);
    if (ncomp > 4)
        return ms_err_set(err, MS_EUNSUPPORTED, "JPEG 2000 with %u components is not supported; only gray or RGB, "
                          "with or without alpha", ncomp);
    int precision = 0;
    for (uint32_t k = 0; k < ncomp; k++) {
        const uint8_t *c = p + 42 + 3 * k;
        int prec = (c[0] & 0x7f) + 1;
        if (c[1] == 0 || c[2] == 0)
            return ms_err_set(err, MS_EFORMAT, "JPEG 2000 is corrupt: component %u has a subsampling of 0", k);
        if (c[1] != 1 || c[2] != 1)
            return ms_err_set(err, MS_EUNSUPPORTED, "JPEG 2000 with subsampled components (%ux%u) is not supported",
                              c[1], c[2]);
        if (c[0] & 0x80)
            return ms_err_set(err, MS_EUNSUPPORTED, "JPEG 2000 with signed samples is not supported");
        if (prec > 16)
            return ms_err_set(err, MS_EUNSUPPORTED, "%d-bit JPEG 2000 is not supported; at most 16 bits", prec);
        if (k > 0 && prec != precision)
            return ms_err_set(err, MS_EUNSUPPORTED, "JPEG 2000 with components of %d and %d bits is not supported",
                              precision, prec);
        precision = prec;
    }
    info->width = (int)(xsiz - x0);
    info->height = (int)(ysiz - y0);
    info->bands = (int)ncomp;
    /* 8-bit samples are used as they are; any other precision is scaled
     * by the image's maximum, as a 16-bit PNG or a 12-bit JPEG is */
    info->bits = precision == 8 ? 8 : 16;
    return 0;
}

/* An ISO base media box (JP2 and HEIF are made of them) at off: its type
 * and where its content starts and ends. The length is 32 bits, or 1 and a
 * 64-bit one after the type, or 0 for "to the end". Returns false when the
 * box does not fit in [off, end). */
typedef struct iso_box {
    const uint8_t *type;
    size_t start, end;
} iso_box;

static bool iso_box_at(const uint8_t *p, size_t off, size_t end, iso_box *b)
{
    if (end - off < 8)
        return false;
    uint64_t n = read_be32(p + off);
    size_t head = 8;
    if (n == 1) {
        if (end - off < 16)
            return false;
        n = (uint64_t)read_be32(p + off + 8) << 32 | read_be32(p + off + 12);
        head = 16;
    } else if (n == 0) {
        n = end - off;
    }
    if (n < head || n > end - off)
        return false;
    *b = (iso_box){.type = p + off + 4, .start = off + head, .end = off + (size_t)n};
    return true;
}

/* The name of an enumerated JP2/JPX colour space whose samples are not
 * gray or RGB, or NULL. OpenJPEG decodes samples, not colours, so such a
 * file would be read as if it were RGB. Unknown values pass: OpenJPEG
 * writes 0 when its caller names no colour space, as libvips does for
 * gray with alpha. */
static const char *jp2_colour_space_not_rgb(uint32_t space)
{
    switch (space) {
    case 1: case 3: case 4: return "YCbCr";
    case 9: return "PhotoYCC";
    case 11: return "CMY";
    case 12: return "CMYK";
    case 13: return "YCCK";
    case 14: return "CIELab";
    case 18: return "sYCC";
    case 19: return "CIEJab";
    case 22: case 23: return "YPbPr";
    case 24: return "e-sYCC";
    default: return NULL;
    }
}

/* What the JP2 header box says that MedSearch cannot show as a browser
 * would: a palette, or colours that are not gray or RGB (an ICC profile is
 * ignored, as in every format). */
static int jp2_header_check(const uint8_t *p, const iso_box *header, ms_err *err)
{
    iso_box b;
    for (size_t off = header->start; off < header->end && iso_box_at(p, off, header->end, &b); off = b.end) {
        if (!memcmp(b.type, "pclr", 4))
            return ms_err_set(err, MS_EUNSUPPORTED, "JPEG 2000 with a palette is not supported");
        if (!memcmp(b.type, "colr", 4) && b.end - b.start >= 7 && p[b.start] == 1) {
            uint32_t space = read_be32(p + b.start + 3);
            const char *name = jp2_colour_space_not_rgb(space);
            if (name)
                return ms_err_set(err, MS_EUNSUPPORTED, "JPEG 2000 in colour space %u (%s) is not supported; only "
                                  "gray and RGB", space, name);
        }
    }
    return 0;
}

/* A JP2 file is a sequence of boxes: the signature, the file type, the
 * header ("jp2h": image header, colour, optional palette) and the
 * codestream ("jp2c"), whose main header gives the size. */
static int probe_jp2(const uint8_t *p, size_t len, image_info *info, ms_err *err)
{
    iso_box b;
    size_t off = sizeof JP2_MAGIC;
    while (off < len) {
        if (!iso_box_at(p, off, len, &b))
            return ms_err_set(err, MS_EFORMAT, "JPEG 2000 is truncated: a box at byte %zu runs past the end of the "
                              "file", off);
        if (!memcmp(b.type, "jp2h", 4)) {
            int rc = jp2_header_check(p, &b, err);
            if (rc)
                return rc;
        } else if (!memcmp(b.type, "jp2c", 4)) {
            return probe_j2k_codestream(p + b.start, b.end - b.start, info, err);
        }
        off = b.end;
    }
    return ms_err_set(err, MS_EFORMAT, "JPEG 2000 is truncated: its JP2 file has no codestream box");
}

/* ---- HEIF: HEIC and AVIF ----
 *
 * A HEIF file is ISO media boxes: the file type, then "meta": its primary
 * item ("pitm"), and the item properties ("iprp": the properties in
 * "ipco", and in "ipma" which of them each item has). The primary item's
 * "ispe" gives its size (a grid of tiles, as phones write, has its own),
 * "irot" a rotation that libheif applies while decoding (so the size as
 * shown is what MedSearch measures; nothing is left to turn), "pixi" its
 * bit depth. Chromium shows AVIF turned the same way, and does not show
 * HEIC, which the page then shows as the server renders it. */

typedef struct heif_props {
    uint32_t width, height;
    bool have_size;
    int rotation;      /* quarter turns anticlockwise, 0-3 */
    int bits;          /* the deepest channel, 0 when not said */
} heif_props;

/* The index-th (1-based) box inside ipco, or false. */
static bool ipco_child(const uint8_t *p, const iso_box *ipco, unsigned index, iso_box *b)
{
    size_t off = ipco->start;
    for (unsigned i = 1; off < ipco->end && iso_box_at(p, off, ipco->end, b); i++, off = b->end)
        if (i == index)
            return true;
    return false;
}

static void heif_property(const uint8_t *p, const iso_box *b, heif_props *h)
{
    size_t n = b->end - b->start;
    const uint8_t *d = p + b->start;
    if (!memcmp(b->type, "ispe", 4) && n >= 12) {
        h->width = read_be32(d + 4);
        h->height = read_be32(d + 8);
        h->have_size = true;
    } else if (!memcmp(b->type, "irot", 4) && n >= 1) {
        h->rotation = d[0] & 3;
    } else if (!memcmp(b->type, "pixi", 4) && n >= 5) {
        for (unsigned c = 0; c < d[4] && 5 + c < n; c++)
            h->bits = d[5 + c] > h->bits ? d[5 + c] : h->bits;
    }
}

/* The properties ipma associates with the item, read from ipco. */
static int heif_item_props(const uint8_t *p, const iso_box *ipma, const iso_box *ipco, uint32_t item,
                           heif_props *h, ms_err *err)
{
    const uint8_t *d = p + ipma->start, *end = p + ipma->end;
    if (end - d < 8)
        return ms_err_set(err, MS_EFORMAT, "HEIF is corrupt: its ipma box is too short");
    int version = d[0], wide_index = d[3] & 1;
    uint32_t entries = read_be32(d + 4);
    d += 8;
    for (uint32_t e = 0; e < entries; e++) {
        size_t id_bytes = version < 1 ? 2 : 4;
        if ((size_t)(end - d) < id_bytes + 1)
            break;
        uint32_t id = id_bytes == 2 ? read_be16(d) : read_be32(d);
        unsigned count = d[id_bytes];
        d += id_bytes + 1;
        size_t each = wide_index ? 2 : 1;
        if ((size_t)(end - d) < count * each)
            break;
        for (unsigned a = 0; id == item && a < count; a++) {
            unsigned index = wide_index ? read_be16(d + 2 * a) & 0x7fff : d[a] & 0x7f;
            iso_box b;
            if (index && ipco_child(p, ipco, index, &b))
                heif_property(p, &b, h);
        }
        if (id == item)
            return 0;
        d += count * each;
    }
    return ms_err_set(err, MS_EFORMAT, "HEIF is corrupt: its primary item %u has no properties", item);
}

static int probe_heif(const uint8_t *p, size_t len, image_info *info, ms_err *err)
{
    const char *kind = info->format == IMAGE_AVIF ? "AVIF" : "HEIC";
    iso_box b, meta = {0}, ipco = {0}, ipma = {0};
    for (size_t off = 0; !meta.type; off = b.end) {
        if (off >= len || !iso_box_at(p, off, len, &b))
            return ms_err_set(err, MS_EFORMAT, "%s is truncated: no meta box before byte %zu", kind, off);
        if (!memcmp(b.type, "meta", 4))
            meta = b;
    }
    uint32_t primary = 0;
    bool have_primary = false;
    /* meta is a full box: 4 bytes of version and flags, then its boxes */
    for (size_t off = meta.start + 4; off < meta.end; off = b.end) {
        if (!iso_box_at(p, off, meta.end, &b))
            return ms_err_set(err, MS_EFORMAT, "%s is corrupt: a box in its meta box runs past it", kind);
        size_t n = b.end - b.start;
        if (!memcmp(b.type, "pitm", 4) && n >= 6) {
            primary = p[b.start] == 0 ? read_be16(p + b.start + 4) : n >= 8 ? read_be32(p + b.start + 4) : 0;
            have_primary = true;
        } else if (!memcmp(b.type, "iprp", 4)) {
            iso_box c;
            for (size_t at = b.start; at < b.end && iso_box_at(p, at, b.end, &c); at = c.end) {
                if (!memcmp(c.type, "ipco", 4) && !ipco.type)
                    ipco = c;
                else if (!memcmp(c.type, "ipma", 4) && !ipma.type)
                    ipma = c;
            }
        }
    }
    if (!have_primary || !ipco.type || !ipma.type)
        return ms_err_set(err, MS_EFORMAT, "%s is corrupt: no primary item or no item properties", kind);
    heif_props h = {0};
    int rc = heif_item_props(p, &ipma, &ipco, primary, &h, err);
    if (rc)
        return rc;
    if (!h.have_size || h.width == 0 || h.height == 0 || h.width > 0x7fffffffu || h.height > 0x7fffffffu)
        return ms_err_set(err, MS_EFORMAT, "%s is corrupt: its primary item has no valid size (ispe)", kind);
    bool turned = h.rotation == 1 || h.rotation == 3;
    info->width = (int)(turned ? h.height : h.width);
    info->height = (int)(turned ? h.width : h.height);
    info->bands = 3;
    info->bits = h.bits > 8 ? 16 : 8;
    return 0;
}

/* ---- GIF ----
 *
 * Old teaching files and web pages hold X-rays as GIF: 8-bit palette
 * images, gray or colour. The logical screen descriptor after the
 * signature gives the canvas, which libvips' loader (libnsgif) composes
 * the first frame on; an animation gives its first frame. */
static int probe_gif(const uint8_t *p, size_t len, image_info *info, ms_err *err)
{
    if (len < 13)
        return ms_err_set(err, MS_EFORMAT, "GIF is truncated: %zu bytes, no complete header", len);
    int w = le16(p + 6), h = le16(p + 8);
    if (w == 0 || h == 0)
        return ms_err_set(err, MS_EFORMAT, "GIF is corrupt: invalid size %dx%d", w, h);
    info->width = w;
    info->height = h;
    info->bands = 3;
    info->bits = 8;
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

/* A deflated data set may inflate to the size limit of a file: what the
 * same DICOM file would be allowed uncompressed. */
static int probe_dicom(const uint8_t *p, size_t len, const image_limits *lim, image_info *info, ms_err *err)
{
    dicom_image d;
    int rc = dicom_parse(p, len, lim->max_bytes, &d, err);
    dicom_image_free(&d);
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
    /* the format is known from here on; each probe fills the rest */
    info->format = image_sniff(p, len);
    switch (info->format) {
    case IMAGE_PNG: rc = probe_png(p, len, info, err); break;
    case IMAGE_JPEG: rc = probe_jpeg(p, len, info, err); break;
    case IMAGE_TIFF: rc = probe_tiff(p, len, info, err); break;
    case IMAGE_DICOM: rc = probe_dicom(p, len, lim, info, err); break;
    case IMAGE_WEBP: rc = probe_webp(p, len, info, err); break;
    case IMAGE_JP2: rc = probe_jp2(p, len, info, err); break;
    case IMAGE_J2K: rc = probe_j2k_codestream(p, len, info, err); break;
    case IMAGE_GIF: rc = probe_gif(p, len, info, err); break;
    case IMAGE_HEIC:
    case IMAGE_AVIF: rc = probe_heif(p, len, info, err); break;
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
