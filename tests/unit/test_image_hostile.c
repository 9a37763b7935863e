/*
 * test_image_hostile.c - the image module against hostile and broken input:
 * empty, truncated at every length, wrong magic, lying headers, huge
 * claimed sizes, decompression bombs, extreme aspect ratios, random bytes
 * and random mutations of valid files. Every case must end in a clear
 * error code with a message (or a correct image), never a crash, a hang, a
 * sanitizer report or an allocation the size of the claimed image.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <vips/vips.h>

#include "image/image.h"
#include "image_test_util.h"
#include "util/timing.h"

static VipsImage *gradient(int w, int h)
{
    uint8_t *px = malloc((size_t)w * h);
    assert_non_null(px);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            px[(size_t)y * w + x] = (uint8_t)(((uint64_t)x * 255 / (w > 1 ? w - 1 : 1) + (uint64_t)y * 3) & 0xff);
    VipsImage *im = vips_image_new_from_memory_copy(px, (size_t)w * h, w, h, 1, VIPS_FORMAT_UCHAR);
    free(px);
    assert_non_null(im);
    return im;
}

static VipsImage *black(int w, int h)
{
    VipsImage *b = NULL, *u = NULL;
    assert_int_equal(vips_black(&b, w, h, NULL), 0);
    assert_int_equal(vips_cast(b, &u, VIPS_FORMAT_UCHAR, NULL), 0);
    g_object_unref(b);
    return u;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rng(void)
{
    return xorshift64(&rng_state);
}

static uint32_t crc32_of(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return ~c;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* Rewrites a PNG's IHDR size, with a valid CRC, so only the size lies. */
static void png_set_size(blob *b, uint32_t w, uint32_t h)
{
    assert_true(b->len > 33 && !memcmp(b->data + 12, "IHDR", 4));
    put_be32(b->data + 16, w);
    put_be32(b->data + 20, h);
    put_be32(b->data + 29, crc32_of(b->data + 12, 17));
}

/* CPU time of this thread: all of the module's work runs on the calling
 * thread, and unlike wall time it does not grow when the machine is busy. */
static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Refusing from the header costs microseconds; decoding even the 16 Mpx
 * bomb below takes well over 20 ms of CPU. */
#define HEADER_ONLY_CPU_NS 20000000u

static int prepare_rc(const uint8_t *p, size_t n, const image_limits *lim, int size, ms_err *err)
{
    image_prep prep = {size, {0, 0, 0}, {1, 1, 1}};
    float *out = malloc(sizeof(float) * 3 * (size_t)size * size);
    assert_non_null(out);
    int rc = image_prepare(p, n, lim, &prep, out, NULL, err);
    free(out);
    return rc;
}

static int thumb_rc(const uint8_t *p, size_t n, const image_limits *lim, ms_err *err)
{
    uint8_t *t = NULL;
    size_t tlen = 0;
    int rc = image_thumbnail(p, n, lim, 32, THUMB_JPEG, &t, &tlen, err);
    if (rc == 0)
        assert_true(t && tlen > 0);
    else
        assert_null(t);
    free(t);
    return rc;
}

/* An error is one of the codes hostile bytes may earn, with a message. */
static void assert_clean_error(int rc, const ms_err *err)
{
    if (rc != MS_EFORMAT && rc != MS_EUNSUPPORTED && rc != MS_ETOOBIG)
        fail_msg("unexpected code %d (%s)", rc, err->msg);
    assert_int_equal(err->code, rc);
    assert_true(strlen(err->msg) > 10);
}

static int setup(void **state)
{
    (void)state;
    ms_err err;
    return image_init(0, &err);
}

/* ---- tests ---- */

static void test_empty_and_null(void **state)
{
    (void)state;
    ms_err err = {0};
    assert_int_equal(prepare_rc((const uint8_t *)"", 0, NULL, 4, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "0 bytes"));
    assert_int_equal(prepare_rc(NULL, 10, NULL, 4, &err), MS_EINVAL);
    assert_int_equal(thumb_rc((const uint8_t *)"", 0, NULL, &err), MS_EFORMAT);
    image_info info;
    assert_int_equal(image_probe(NULL, 0, NULL, &info, &err), MS_EFORMAT);
}

static void test_named_unsupported_formats(void **state)
{
    (void)state;
    struct {
        const char *bytes;
        size_t len;
        const char *name;
    } cases[] = {
        {"\xff\x0a\xfa\x7f\x01\x90", 6, "JPEG XL"},
        {"BM\x3a\0\0\0\0\0\0\0", 10, "BMP"},
        {"%PDF-1.4\n", 9, "PDF"},
        {"\0\0\0\x18" "ftypisom\0\0\0\0isomavc1", 24, "MP4"},
        {"II+\0\x08\0\0\0", 8, "BigTIFF"},
        {"<svg xmlns=", 11, "SVG"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ms_err err = {0};
        int rc = prepare_rc((const uint8_t *)cases[i].bytes, cases[i].len, NULL, 4, &err);
        assert_int_equal(rc, MS_EUNSUPPORTED);
        if (!strstr(err.msg, cases[i].name))
            fail_msg("message for %s does not name it: %s", cases[i].name, err.msg);
    }
    /* a DICOM preamble and "DICM", then nothing DICOM: read as DICOM and
     * refused as a broken one (tests/unit/test_image_dicom.c has the rest) */
    uint8_t dcm[200] = {0};
    memcpy(dcm + 128, "DICM", 4);
    ms_err err = {0};
    assert_int_equal(prepare_rc(dcm, sizeof dcm, NULL, 4, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "DICOM is corrupt: its file meta information has no Transfer Syntax UID"));
    /* plain text: not an image, and the message shows its first bytes */
    assert_int_equal(prepare_rc((const uint8_t *)"hello world", 11, NULL, 4, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "68 65 6c 6c 6f"));
}

/* Magic bytes of one format, body of another: refused, not guessed. */
static void test_wrong_magic(void **state)
{
    (void)state;
    blob jpg = encode_with(gradient(20, 20), ".jpg");
    blob png = encode_with(gradient(20, 20), ".png");
    ms_err err = {0};
    /* PNG signature on JPEG data */
    uint8_t *fake = malloc(jpg.len + 8);
    assert_non_null(fake);
    memcpy(fake, "\x89PNG\r\n\x1a\n", 8);
    memcpy(fake + 8, jpg.data, jpg.len);
    assert_int_equal(prepare_rc(fake, jpg.len + 8, NULL, 4, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "PNG"));
    free(fake);
    /* JPEG SOI on PNG data */
    fake = malloc(png.len + 3);
    assert_non_null(fake);
    memcpy(fake, "\xff\xd8\xff", 3);
    memcpy(fake + 3, png.data, png.len);
    assert_clean_error(prepare_rc(fake, png.len + 3, NULL, 4, &err), &err);
    free(fake);
    /* TIFF header on PNG data */
    fake = malloc(png.len);
    assert_non_null(fake);
    memcpy(fake, png.data, png.len);
    memcpy(fake, "II*\0", 4);
    assert_clean_error(prepare_rc(fake, png.len, NULL, 4, &err), &err);
    free(fake);
    blob_free(&jpg);
    blob_free(&png);
}

/* Every prefix of a valid file: a clean error whenever pixel data is cut,
 * and the same answer from prepare and thumbnail. */
static void check_every_prefix(const blob *b, size_t must_fail_below, const char *what)
{
    int succeeded = 0;
    for (size_t n = 0; n < b->len; n++) {
        ms_err err = {0}, terr = {0};
        int rc = prepare_rc(b->data, n, NULL, 8, &err);
        int trc = thumb_rc(b->data, n, NULL, &terr);
        if (rc == 0) {
            succeeded++;
            if (n < must_fail_below)
                fail_msg("%s cut to %zu of %zu bytes was accepted", what, n, b->len);
        } else {
            assert_clean_error(rc, &err);
        }
        assert_int_equal(rc != 0, trc != 0);
    }
    print_message("%s: %zu prefixes, %d decodable, all of them %zu bytes or longer\n", what, b->len, succeeded,
                  must_fail_below);
}

static void test_truncated_at_every_length(void **state)
{
    (void)state;
    blob png = encode_with(gradient(32, 32), ".png");
    /* the IDAT chunk ends where the final IEND chunk (12 bytes) starts */
    assert_true(!memcmp(png.data + png.len - 8, "IEND", 4));
    check_every_prefix(&png, png.len - 12, "PNG");
    blob_free(&png);

    blob jpg = encode_with(gradient(32, 32), ".jpg");
    check_every_prefix(&jpg, jpg.len - 2, "JPEG"); /* all but the EOI marker */
    blob_free(&jpg);

    blob prog = encode_with(gradient(32, 32), ".jpg[interlace]");
    check_every_prefix(&prog, prog.len - 2, "progressive JPEG");
    blob_free(&prog);

    /* libvips writes the pixels first, then the directory: any cut before
     * the directory's end must fail (after it only tag values are lost) */
    blob tif = encode_with(gradient(16, 16), ".tif");
    assert_true(!memcmp(tif.data, "II*\0", 4));
    size_t ifd = tif.data[4] | tif.data[5] << 8 | (size_t)tif.data[6] << 16 | (size_t)tif.data[7] << 24;
    assert_true(ifd > 16 * 16 && ifd + 2 < tif.len);
    check_every_prefix(&tif, ifd + 2 + 12 * (size_t)(tif.data[ifd] | tif.data[ifd + 1] << 8), "TIFF");
    blob_free(&tif);
}

/* Every cut of a WebP, with its RIFF size left as written (the probe sees
 * the file is short) and with it set to the cut (only libwebp can tell). */
static void test_webp_truncated(void **state)
{
    (void)state;
    const char *suffixes[] = {".webp", ".webp[lossless]"};
    for (size_t s = 0; s < 2; s++) {
        blob b = encode_with(gradient(32, 32), suffixes[s]);
        check_every_prefix(&b, b.len, suffixes[s]);
        blob cut = {g_memdup2(b.data, b.len), 0};
        int accepted = 0;
        for (size_t n = 20; n < b.len; n += 1) {
            memcpy(cut.data, b.data, b.len);
            uint32_t riff = (uint32_t)n - 8, chunk = (uint32_t)n - 20;
            for (int i = 0; i < 4; i++) {
                cut.data[4 + i] = (uint8_t)(riff >> 8 * i);
                cut.data[16 + i] = (uint8_t)(chunk >> 8 * i);
            }
            ms_err err = {0};
            int rc = prepare_rc(cut.data, n, NULL, 8, &err);
            if (rc)
                assert_clean_error(rc, &err);
            else
                accepted++;
        }
        /* libwebp decodes nothing from a cut stream */
        if (accepted)
            fail_msg("%s: %d cuts with a matching RIFF size were accepted", suffixes[s], accepted);
        blob_free(&cut);
        blob_free(&b);
    }
}

/* The codestream inside a JP2 file that libvips wrote: its "jp2c" box. */
static blob j2k_codestream_of(const blob *jp2)
{
    for (size_t i = 4; i + 4 <= jp2->len; i++)
        if (!memcmp(jp2->data + i, "jp2c", 4)) {
            size_t start = i + 4;
            return (blob){g_memdup2(jp2->data + start, jp2->len - start), jp2->len - start};
        }
    fail_msg("no jp2c box");
    return (blob){0};
}

/* Every cut of a JPEG 2000 file and of its bare codestream fails: OpenJPEG
 * runs in its strict mode, so no cut is decoded with blank code blocks. */
static void test_jpeg2000_truncated(void **state)
{
    (void)state;
    const char *suffixes[] = {".jp2[lossless]", ".jp2[Q=30]"};
    for (size_t s = 0; s < 2; s++) {
        blob jp2 = encode_with(gradient(32, 32), suffixes[s]);
        check_every_prefix(&jp2, jp2.len, suffixes[s]);
        blob j2k = j2k_codestream_of(&jp2);
        assert_true(j2k.len > 4 && !memcmp(j2k.data + j2k.len - 2, "\xff\xd9", 2)); /* EOC */
        check_every_prefix(&j2k, j2k.len - 2, "JPEG 2000 codestream");
        blob_free(&j2k);
        blob_free(&jp2);
    }
}

/* A JP2 file around codestream: signature, file type, a header box with
 * the image header, a colour box of colour space `space` and `extra` (a
 * whole box, or NULL), then the codestream box. */
static blob jp2_around(const blob *codestream, uint32_t space, const uint8_t *extra, size_t extra_len)
{
    static const uint8_t head[] = {0, 0, 0, 0x0c, 'j', 'P', ' ', ' ', '\r', '\n', 0x87, '\n',
                                   0, 0, 0, 0x14, 'f', 't', 'y', 'p', 'j', 'p', '2', ' ', 0, 0, 0, 0, 'j', 'p', '2', ' '};
    size_t jp2h = 8 + 22 + 15 + extra_len, n = sizeof head + jp2h + 8 + codestream->len;
    blob b = {g_malloc0(n), n};
    uint8_t *p = b.data;
    memcpy(p, head, sizeof head);
    p += sizeof head;
    uint8_t box[8 + 22 + 15] = {0, 0, 0, 0, 'j', 'p', '2', 'h', 0, 0, 0, 22, 'i', 'h', 'd', 'r'};
    box[3] = (uint8_t)jp2h;
    /* ihdr: height, width, components, bits - 1, compression 7, two flags */
    memcpy(box + 16, codestream->data + 12, 4);
    memcpy(box + 20, codestream->data + 8, 4);
    memcpy(box + 24, codestream->data + 40, 2);
    box[26] = (uint8_t)(codestream->data[42] & 0x7f);
    box[27] = 7;
    static const uint8_t colr[7] = {0, 0, 0, 15, 'c', 'o', 'l'};
    memcpy(box + 30, colr, sizeof colr);
    box[37] = 'r';
    box[38] = 1; /* enumerated colour space */
    box[41] = (uint8_t)(space >> 24), box[42] = (uint8_t)(space >> 16), box[43] = (uint8_t)(space >> 8);
    box[44] = (uint8_t)space;
    memcpy(p, box, sizeof box);
    p += sizeof box;
    if (extra_len)
        memcpy(p, extra, extra_len);
    p += extra_len;
    uint32_t jp2c = (uint32_t)(8 + codestream->len);
    uint8_t cbox[8] = {(uint8_t)(jp2c >> 24), (uint8_t)(jp2c >> 16), (uint8_t)(jp2c >> 8), (uint8_t)jp2c,
                       'j', 'p', '2', 'c'};
    memcpy(p, cbox, 8);
    memcpy(p + 8, codestream->data, codestream->len);
    return b;
}

/* The SIZ segment and the JP2 boxes: what OpenJPEG would decode is
 * measured from them, and what MedSearch does not read is named. */
static void test_jpeg2000_headers(void **state)
{
    (void)state;
    blob jp2 = encode_with(gradient(20, 12), ".jp2[lossless]");
    blob j2k = j2k_codestream_of(&jp2);
    blob_free(&jp2);
    ms_err err = {0};
    image_info info;
    /* the hand-made JP2 around libvips' codestream decodes like it */
    blob made = jp2_around(&j2k, 17, NULL, 0);
    float a[3 * 8 * 8], b[3 * 8 * 8];
    image_prep prep = {8, {0, 0, 0}, {1, 1, 1}};
    assert_int_equal(image_prepare(j2k.data, j2k.len, NULL, &prep, a, &info, &err), 0);
    assert_int_equal(info.format, IMAGE_J2K);
    assert_int_equal(image_prepare(made.data, made.len, NULL, &prep, b, &info, &err), 0);
    assert_int_equal(info.format, IMAGE_JP2);
    assert_memory_equal(a, b, sizeof a);
    assert_true(info.width == 20 && info.height == 12 && info.bands == 1 && info.bits == 8);
    blob_free(&made);

    /* SIZ: offsets 6 Rsiz, 8 Xsiz, 12 Ysiz, 16 XOsiz, 20 YOsiz, 40 Csiz,
     * 42 the first component's Ssiz, XRsiz, YRsiz */
    static const struct {
        size_t at;
        uint8_t value;
        int rc;
        const char *says;
    } siz[] = {
        {6, 0x40, MS_EUNSUPPORTED, "High-Throughput"},
        {19, 3, MS_EUNSUPPORTED, "offset 3,0"},
        {42, 0x88, MS_EUNSUPPORTED, "signed"},
        {42, 16, MS_EUNSUPPORTED, "17-bit"},
        {43, 2, MS_EUNSUPPORTED, "subsampled"},
        {44, 0, MS_EFORMAT, "subsampling of 0"},
        {5, 40, MS_EFORMAT, "does not hold 1 components"},
        {11, 0, MS_EFORMAT, "invalid size 0x12"},
        {9, 0xff, MS_ETOOBIG, "over the 50 Mpx limit"},
    };
    for (size_t i = 0; i < sizeof siz / sizeof siz[0]; i++) {
        blob c = {g_memdup2(j2k.data, j2k.len), j2k.len};
        c.data[siz[i].at] = siz[i].value;
        if (siz[i].at == 9) /* 0x00ff0014 x 0x0000ff0c */
            c.data[14] = 0xff;
        for (int wrapped = 0; wrapped < 2; wrapped++) {
            blob f = wrapped ? jp2_around(&c, 17, NULL, 0) : (blob){g_memdup2(c.data, c.len), c.len};
            int rc = prepare_rc(f.data, f.len, NULL, 8, &err);
            if (rc != siz[i].rc || !strstr(err.msg, siz[i].says))
                fail_msg("SIZ case %zu%s: %d \"%s\", want %d and \"%s\"", i, wrapped ? " in JP2" : "", rc, err.msg,
                         siz[i].rc, siz[i].says);
            blob_free(&f);
        }
        blob_free(&c);
    }
    /* five components, and two of different precisions (a SIZ made longer) */
    uint8_t longer[4 + 38 + 15];
    memcpy(longer, j2k.data, 4 + 38 + 3);
    for (int k = 1; k < 5; k++)
        memcpy(longer + 42 + 3 * k, j2k.data + 42, 3);
    longer[5] = 38 + 15, longer[41] = 5;
    assert_int_equal(prepare_rc(longer, sizeof longer, NULL, 8, &err), MS_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "5 components"));
    longer[5] = 38 + 6, longer[41] = 2, longer[45] = 11;
    assert_int_equal(prepare_rc(longer, 4 + 38 + 6, NULL, 8, &err), MS_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "components of 8 and 12 bits"));
    assert_int_equal(prepare_rc(longer, 4 + 38 + 5, NULL, 8, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "truncated inside its SIZ"));
    assert_int_equal(prepare_rc(longer, 20, NULL, 8, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "no complete header"));

    /* JP2 boxes: a palette, colour spaces, no codestream, a box past the end */
    static const uint8_t pclr[] = {0, 0, 0, 8, 'p', 'c', 'l', 'r'};
    blob f = jp2_around(&j2k, 17, pclr, sizeof pclr);
    assert_int_equal(prepare_rc(f.data, f.len, NULL, 8, &err), MS_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "palette"));
    blob_free(&f);
    const uint32_t spaces[] = {18, 12, 24, 3};
    const char *names[] = {"sYCC", "CMYK", "e-sYCC", "YCbCr"};
    for (int i = 0; i < 4; i++) {
        f = jp2_around(&j2k, spaces[i], NULL, 0);
        assert_int_equal(prepare_rc(f.data, f.len, NULL, 8, &err), MS_EUNSUPPORTED);
        if (!strstr(err.msg, names[i]))
            fail_msg("colour space %u: \"%s\" does not say %s", spaces[i], err.msg, names[i]);
        blob_free(&f);
    }
    f = jp2_around(&j2k, 0, NULL, 0); /* unspecified, as OpenJPEG writes it for gray + alpha: read */
    assert_int_equal(prepare_rc(f.data, f.len, NULL, 8, &err), 0);
    blob_free(&f);
    f = jp2_around(&j2k, 16, NULL, 0); /* sRGB: read, and gray data as gray */
    assert_int_equal(prepare_rc(f.data, f.len, NULL, 8, &err), 0);
    size_t jp2c = f.len - j2k.len - 8;
    assert_true(!memcmp(f.data + jp2c + 4, "jp2c", 4));
    assert_int_equal(prepare_rc(f.data, jp2c, NULL, 8, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "no codestream box"));
    uint32_t past = (uint32_t)(f.len - jp2c + 1); /* one byte longer than the file */
    for (int i = 0; i < 4; i++)
        f.data[jp2c + i] = (uint8_t)(past >> (24 - 8 * i));
    assert_int_equal(prepare_rc(f.data, f.len, NULL, 8, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "runs past the end"));
    memset(f.data + jp2c, 0, 4); /* 0: to the end of the file */
    assert_int_equal(prepare_rc(f.data, f.len, NULL, 8, &err), 0);
    blob_free(&f);
    /* a 64-bit box length (1, then the length after the type) */
    f.len = jp2c + 16 + j2k.len;
    f.data = g_malloc0(f.len);
    blob plain = jp2_around(&j2k, 17, NULL, 0);
    memcpy(f.data, plain.data, jp2c);
    memcpy(f.data + jp2c, "\0\0\0\x01jp2c\0\0\0\0", 12);
    uint32_t xl = (uint32_t)(16 + j2k.len);
    for (int i = 0; i < 4; i++)
        f.data[jp2c + 12 + i] = (uint8_t)(xl >> (24 - 8 * i));
    memcpy(f.data + jp2c + 16, j2k.data, j2k.len);
    assert_int_equal(prepare_rc(f.data, f.len, NULL, 8, &err), 0);
    f.data[jp2c + 8] = 1; /* 2^56 bytes */
    assert_int_equal(prepare_rc(f.data, f.len, NULL, 8, &err), MS_EFORMAT);
    blob_free(&plain);
    blob_free(&f);
    blob_free(&j2k);
}

/* Every cut of a HEIC and of an AVIF fails cleanly: before the end of the
 * meta box the probe finds no size, after it libheif finds the image data
 * short. */
static void test_heif_truncated(void **state)
{
    (void)state;
    const char *suffixes[] = {".heic", ".avif"};
    for (size_t s = 0; s < 2; s++) {
        blob b = encode_with(gradient(24, 16), suffixes[s]);
        check_every_prefix(&b, b.len, suffixes[s]);
        blob_free(&b);
    }
}

static size_t put_box(uint8_t *out, const char *type, const uint8_t *content, size_t n)
{
    uint32_t size = (uint32_t)(8 + n);
    uint8_t head[8] = {(uint8_t)(size >> 24), (uint8_t)(size >> 16), (uint8_t)(size >> 8), (uint8_t)size};
    memcpy(head + 4, type, 4);
    memcpy(out, head, 8);
    memcpy(out + 8, content, n);
    return 8 + n;
}

/* The header of a HEIF file (no image data): ftyp, then meta with pitm
 * (primary item 1) and iprp, whose ipco holds ispe (w x h), irot, pixi and
 * whose ipma gives item `item` the properties of `index` (1-based, in that
 * order; ipma version 0 with 8-bit indexes, or 1 with 32-bit ids and
 * 16-bit indexes when wide). */
typedef struct heif_spec {
    uint32_t w, h, item;
    int rotation, bits, wide, no_pitm;
    uint8_t index[4];
    int n_index;
} heif_spec;

static blob heif_header(const heif_spec *sp)
{
    uint8_t ipco[128], ipma[64], iprp[256], meta[512], prop[32];
    size_t n = 0;
    memset(prop, 0, sizeof prop);
    put_be32(prop + 4, sp->w);
    put_be32(prop + 8, sp->h);
    n += put_box(ipco + n, "ispe", prop, 12);
    prop[0] = (uint8_t)sp->rotation;
    n += put_box(ipco + n, "irot", prop, 1);
    uint8_t pixi[7] = {0, 0, 0, 0, 3, 8, (uint8_t)sp->bits};
    n += put_box(ipco + n, "pixi", pixi, 6 + 1);
    size_t ipco_n = n, m = 0;
    ipma[m++] = sp->wide ? 1 : 0;
    ipma[m++] = 0, ipma[m++] = 0, ipma[m++] = sp->wide ? 1 : 0; /* flags: 16-bit indexes */
    put_be32(ipma + m, 1);
    m += 4;
    if (sp->wide) {
        put_be32(ipma + m, sp->item);
        m += 4;
    } else {
        ipma[m++] = (uint8_t)(sp->item >> 8), ipma[m++] = (uint8_t)sp->item;
    }
    ipma[m++] = (uint8_t)sp->n_index;
    for (int i = 0; i < sp->n_index; i++) {
        if (sp->wide)
            ipma[m++] = 0x80, ipma[m++] = sp->index[i];
        else
            ipma[m++] = (uint8_t)(0x80 | sp->index[i]);
    }
    n = put_box(iprp, "ipco", ipco, ipco_n);
    n += put_box(iprp + n, "ipma", ipma, m);
    size_t k = 4; /* meta's version and flags */
    memset(meta, 0, 4);
    static const uint8_t pitm[6] = {0, 0, 0, 0, 0, 1};
    if (!sp->no_pitm)
        k += put_box(meta + k, "pitm", pitm, sizeof pitm);
    k += put_box(meta + k, "iprp", iprp, n);
    blob b = {g_malloc0(24 + 8 + k), 24 + 8 + k};
    memcpy(b.data, "\0\0\0\x18" "ftypheic\0\0\0\0mif1heic", 24);
    put_box(b.data + 24, "meta", meta, k);
    return b;
}

/* The size comes from the primary item's own ispe, as shown after irot;
 * what is missing or broken is named; libheif refuses the rest cleanly. */
static void test_heif_headers(void **state)
{
    (void)state;
    static const struct {
        heif_spec sp;
        int rc, w, h, bits;
        const char *says;
    } cases[] = {
        {{40, 24, 1, 0, 8, 0, 0, {1, 2, 3}, 3}, 0, 40, 24, 8, NULL},
        {{40, 24, 1, 1, 8, 0, 0, {1, 2, 3}, 3}, 0, 24, 40, 8, NULL},   /* a quarter turn */
        {{40, 24, 1, 2, 10, 0, 0, {1, 2, 3}, 3}, 0, 40, 24, 16, NULL}, /* upside down; 10 bits */
        {{40, 24, 1, 3, 8, 1, 0, {1, 2, 3}, 3}, 0, 24, 40, 8, NULL},   /* ipma v1, 16-bit indexes */
        {{40, 24, 1, 0, 8, 0, 0, {2, 9, 1}, 3}, 0, 40, 24, 8, NULL},   /* an index past ipco: ignored */
        {{60000, 60000, 1, 0, 8, 0, 0, {1}, 1}, MS_ETOOBIG, 60000, 60000, 8, "over the 50 Mpx limit"},
        {{40, 24, 2, 0, 8, 0, 0, {1}, 1}, MS_EFORMAT, 0, 0, 0, "primary item 1 has no properties"},
        {{40, 24, 1, 0, 8, 0, 0, {2, 3}, 2}, MS_EFORMAT, 0, 0, 0, "no valid size"},
        {{0, 24, 1, 0, 8, 0, 0, {1}, 1}, MS_EFORMAT, 0, 0, 0, "no valid size"},
        {{40, 24, 1, 0, 8, 0, 1, {1}, 1}, MS_EFORMAT, 0, 0, 0, "no primary item"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        blob b = heif_header(&cases[i].sp);
        image_info info;
        ms_err err = {0};
        int rc = image_probe(b.data, b.len, NULL, &info, &err);
        if (rc != cases[i].rc || (cases[i].says && !strstr(err.msg, cases[i].says)))
            fail_msg("case %zu: %d \"%s\", want %d and \"%s\"", i, rc, err.msg, cases[i].rc,
                     cases[i].says ? cases[i].says : "");
        if (!rc && (info.format != IMAGE_HEIC || info.width != cases[i].w || info.height != cases[i].h ||
                    info.bits != cases[i].bits || info.orientation != 1))
            fail_msg("case %zu: %dx%d %d bits, orientation %d", i, info.width, info.height, info.bits,
                     info.orientation);
        if (!rc) { /* no image data: libheif's refusal, clean */
            rc = prepare_rc(b.data, b.len, NULL, 8, &err);
            assert_int_equal(rc, MS_EFORMAT);
            assert_clean_error(rc, &err);
        }
        /* every cut of the header: an error, never a crash */
        for (size_t cut = 0; cut < b.len; cut++)
            if (image_probe(b.data, cut, NULL, &info, &err) == 0)
                fail_msg("case %zu cut to %zu of %zu bytes was measured", i, cut, b.len);
        blob_free(&b);
    }
}

/* Every cut of a GIF before its trailer fails; so do a zero size and a
 * header without its screen descriptor. */
static void test_gif_truncated(void **state)
{
    (void)state;
    blob b = encode_with(gradient(24, 16), ".gif");
    assert_true(b.len > 13 && b.data[b.len - 1] == 0x3b); /* the trailer */
    check_every_prefix(&b, b.len - 1, ".gif");
    ms_err err = {0};
    b.data[6] = b.data[7] = 0;
    assert_int_equal(prepare_rc(b.data, b.len, NULL, 8, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "invalid size 0x16"));
    assert_int_equal(prepare_rc(b.data, 12, NULL, 8, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "GIF is truncated"));
    /* a screen of 65535 x 65535 (4.3 Gpx) is refused before decoding */
    memset(b.data + 6, 0xff, 4);
    assert_int_equal(prepare_rc(b.data, b.len, NULL, 8, &err), MS_ETOOBIG);
    blob_free(&b);
}

/* A hand-made WebP of one chunk: "RIFF", size, "WEBP", fourcc, size, data. */
static blob webp_of_chunk(const char *fourcc, const uint8_t *data, uint32_t n)
{
    blob b = {g_malloc0(20 + n + 64), 20 + n + 64};
    memcpy(b.data, "RIFF", 4);
    memcpy(b.data + 8, "WEBP", 4);
    memcpy(b.data + 12, fourcc, 4);
    uint32_t riff = (uint32_t)b.len - 8;
    for (int i = 0; i < 4; i++) {
        b.data[4 + i] = (uint8_t)(riff >> 8 * i);
        b.data[16 + i] = (uint8_t)(n >> 8 * i);
    }
    memcpy(b.data + 20, data, n);
    return b;
}

/* The three kinds of first chunk give their size from the header alone;
 * each kind of broken header is named. */
static void test_webp_headers(void **state)
{
    (void)state;
    static const struct {
        const char *fourcc;
        uint8_t data[10];
        uint32_t n;
        int rc, w, h, bands;
        const char *says;
    } cases[] = {
        /* lossy: key frame tag, start code, 14-bit sizes (the top 2 bits scale) */
        {"VP8 ", {0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x2c, 0xc1, 0x90, 0x41}, 10, 0, 300, 400, 3, NULL},
        {"VP8 ", {0x11, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x2c, 0x01, 0x90, 0x01}, 10, MS_EFORMAT, 0, 0, 0, "key frame"},
        {"VP8 ", {0x10, 0x02, 0x00, 0x9d, 0x01, 0x2b, 0x2c, 0x01, 0x90, 0x01}, 10, MS_EFORMAT, 0, 0, 0, "key frame"},
        {"VP8 ", {0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x00, 0x90, 0x01}, 10, MS_EFORMAT, 0, 0, 0, "0x400"},
        {"VP8 ", {0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x2c, 0x01}, 8, MS_EFORMAT, 0, 0, 0, "key frame"},
        /* lossless: 0x2f, then (w - 1) | (h - 1) << 14 | alpha << 28 */
        {"VP8L", {0x2f, 0xff, 0xff, 0xff, 0x1f}, 5, MS_ETOOBIG, 16384, 16384, 4, NULL},
        {"VP8L", {0x2f, 0xff, 0xff, 0xff, 0x0f}, 5, MS_ETOOBIG, 16384, 16384, 3, NULL},
        {"VP8L", {0x2e, 0x00, 0x00, 0x00, 0x00}, 5, MS_EFORMAT, 0, 0, 0, "no valid header"},
        {"VP8L", {0x2f, 0x00, 0x00, 0x00, 0x20}, 5, MS_EFORMAT, 0, 0, 0, "no valid header"},
        {"VP8L", {0x2f, 0x00, 0x00}, 3, MS_EFORMAT, 0, 0, 0, "no valid header"},
        /* extended: flags, 3 reserved, 24-bit canvas width - 1 and height - 1 */
        {"VP8X", {0x10, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 10, MS_ETOOBIG, 16777216, 16777216, 4, NULL},
        {"VP8X", {0x02, 0, 0, 0, 0x0f, 0x27, 0x00, 0x0f, 0x27, 0x00}, 10, MS_ETOOBIG, 10000, 10000, 4, NULL},
        {"VP8X", {0x00, 0, 0, 0, 0x0f, 0x27, 0x00, 0x0f, 0x27, 0x00}, 10, MS_ETOOBIG, 10000, 10000, 3, NULL},
        {"VP8X", {0x00, 0, 0, 0, 0x0f, 0x27, 0x00, 0x0f}, 8, MS_EFORMAT, 0, 0, 0, "not 10"},
        {"ALPH", {0}, 10, MS_EFORMAT, 0, 0, 0, "first chunk is 'ALPH'"},
        {"\x01\x02" "AB", {0}, 10, MS_EFORMAT, 0, 0, 0, "first chunk is '??AB'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        blob b = webp_of_chunk(cases[i].fourcc, cases[i].data, cases[i].n);
        image_info info;
        ms_err err = {0};
        int rc = image_probe(b.data, b.len, NULL, &info, &err);
        if (rc != cases[i].rc)
            fail_msg("case %zu: probe gave %d (%s), want %d", i, rc, err.msg, cases[i].rc);
        if (cases[i].says && !strstr(err.msg, cases[i].says))
            fail_msg("case %zu: \"%s\" does not say %s", i, err.msg, cases[i].says);
        if (!cases[i].says) {
            /* measured before anything was decoded: refused by its size, or
             * its body (zeros) refused by libwebp */
            assert_int_equal(info.format, IMAGE_WEBP);
            if (info.width != cases[i].w || info.height != cases[i].h || info.bands != cases[i].bands)
                fail_msg("case %zu: %dx%d, %d bands; want %dx%d, %d", i, info.width, info.height, info.bands,
                         cases[i].w, cases[i].h, cases[i].bands);
            rc = prepare_rc(b.data, b.len, NULL, 8, &err);
            assert_int_equal(rc, cases[i].rc ? cases[i].rc : MS_EFORMAT);
            assert_clean_error(rc, &err);
        }
        blob_free(&b);
    }
    /* the RIFF size: more than the file, and a first chunk larger than it */
    blob b = webp_of_chunk("VP8L", (const uint8_t *)"\x2f\0\0\0\0", 5);
    ms_err err = {0};
    b.data[4] = 0xff;
    assert_int_equal(prepare_rc(b.data, b.len, NULL, 8, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "WebP is truncated: its header says"));
    b.data[4] = (uint8_t)(b.len - 8);
    b.data[16] = 0xff, b.data[17] = 0xff;
    assert_int_equal(prepare_rc(b.data, b.len, NULL, 8, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "larger than the file"));
    assert_int_equal(prepare_rc(b.data, 19, NULL, 8, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "no complete header"));
    blob_free(&b);
    /* a header that passes with a body of zeros: libwebp's error, clean */
    b = webp_of_chunk("VP8L", (const uint8_t *)"\x2f\x1f\xc0\x07\x00", 5);
    assert_int_equal(prepare_rc(b.data, b.len, NULL, 8, &err), MS_EFORMAT);
    assert_non_null(strstr(err.msg, "WebP"));
    blob_free(&b);
}

static void test_tiny_and_extreme_aspect(void **state)
{
    (void)state;
    ms_err err = {0};
    /* 1x1: upsampled to a constant image */
    blob one = encode_with(gradient(1, 1), ".png");
    image_prep prep = {224, {0, 0, 0}, {1, 1, 1}};
    float *out = malloc(sizeof(float) * 3 * 224 * 224);
    assert_non_null(out);
    assert_int_equal(image_prepare(one.data, one.len, NULL, &prep, out, NULL, &err), 0);
    for (int i = 1; i < 3 * 224 * 224; i++)
        assert_true(out[i] == out[0]);
    blob_free(&one);

    /* 100000x1 and 1x100000: one row/column stretched, the gradient kept */
    for (int vertical = 0; vertical < 2; vertical++) {
        VipsImage *g = gradient(100000, 1), *r = NULL;
        if (vertical) {
            assert_int_equal(vips_rot(g, &r, VIPS_ANGLE_D90, NULL), 0);
            g_object_unref(g);
            g = r;
        }
        blob b = encode_with(g, ".png");
        uint64_t t0 = ms_now_ns();
        int rc = image_prepare(b.data, b.len, NULL, &prep, out, NULL, &err);
        if (rc)
            fail_msg("%s: %s", vertical ? "1x100000" : "100000x1", err.msg);
        assert_true(ms_now_ns() - t0 < 20000000000u);
        for (int y = 0; y < 224; y++)
            for (int x = 0; x < 224; x++) {
                /* along the long side values rise; across it they are constant */
                float v = out[y * 224 + x];
                float across = vertical ? out[y * 224] : out[x];
                float before = vertical ? (y ? out[(y - 1) * 224 + x] : -1) : (x ? out[y * 224 + x - 1] : -1);
                assert_true(v == across);
                assert_true(v + 1.0f >= before);
            }
        assert_true(out[0] < 10 && out[vertical ? 223 * 224 : 223] > 245);
        uint8_t *t = NULL;
        size_t tlen;
        assert_int_equal(image_thumbnail(b.data, b.len, NULL, 256, THUMB_JPEG, &t, &tlen, &err), 0);
        free(t);
        blob_free(&b);
    }
    free(out);
}

static void test_huge_claimed_size_refused_from_header(void **state)
{
    (void)state;
    ms_err err = {0};
    /* a small PNG whose IHDR claims 50000x50000 */
    blob png = encode_with(gradient(8, 8), ".png");
    png_set_size(&png, 50000, 50000);
    uint64_t t0 = cpu_ns();
    assert_int_equal(prepare_rc(png.data, png.len, NULL, 224, &err), MS_ETOOBIG);
    assert_true(cpu_ns() - t0 < HEADER_ONLY_CPU_NS); /* no pixel was touched */
    assert_string_equal(err.msg, "image is 50000x50000 (2500 Mpx), over the 50 Mpx limit");
    assert_int_equal(thumb_rc(png.data, png.len, NULL, &err), MS_ETOOBIG);
    image_info info;
    assert_int_equal(image_probe(png.data, png.len, NULL, &info, &err), MS_ETOOBIG);
    assert_int_equal(info.width, 50000);
    /* the PNG maximum and invalid zero sizes */
    png_set_size(&png, 0x7fffffffu, 0x7fffffffu);
    assert_int_equal(prepare_rc(png.data, png.len, NULL, 224, &err), MS_ETOOBIG);
    png_set_size(&png, 0x80000000u, 1);
    assert_int_equal(prepare_rc(png.data, png.len, NULL, 224, &err), MS_EFORMAT);
    png_set_size(&png, 0, 10);
    assert_int_equal(prepare_rc(png.data, png.len, NULL, 224, &err), MS_EFORMAT);
    blob_free(&png);

    /* a JPEG whose frame header claims 65535x65535 */
    blob jpg = encode_with(gradient(8, 8), ".jpg");
    size_t sof = 0;
    for (size_t i = 2; i + 9 < jpg.len; i++)
        if (jpg.data[i] == 0xff && jpg.data[i + 1] == 0xc0) {
            sof = i;
            break;
        }
    assert_true(sof > 0);
    memset(jpg.data + sof + 5, 0xff, 4); /* height, width */
    assert_int_equal(prepare_rc(jpg.data, jpg.len, NULL, 224, &err), MS_ETOOBIG);
    assert_non_null(strstr(err.msg, "65535x65535"));
    memset(jpg.data + sof + 5, 0, 2); /* height 0: defined later by DNL */
    assert_int_equal(prepare_rc(jpg.data, jpg.len, NULL, 224, &err), MS_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "DNL"));
    jpg.data[sof + 5 + 1] = 8; /* height 8 again */
    /* frame types and precisions outside the allow-list, named */
    struct {
        uint8_t marker, precision, components;
        const char *says;
    } frames[] = {{0xcb, 8, 1, "arithmetic coding (SOF11)"},
                  {0xc5, 8, 1, "hierarchical JPEG"},
                  {0xc2, 12, 1, "12-bit JPEG of process SOF2"},
                  {0xc1, 12, 3, "12-bit colour JPEG"},
                  {0xc1, 16, 1, "16-bit JPEG is not supported"},
                  {0xc3, 12, 3, "12-bit colour lossless JPEG"},
                  {0xc0, 8, 4, "CMYK"},
                  {0xc0, 8, 2, "2 colour components"}};
    for (size_t i = 0; i < sizeof frames / sizeof frames[0]; i++) {
        blob copy = {g_memdup2(jpg.data, jpg.len), jpg.len};
        copy.data[sof + 1] = frames[i].marker;
        copy.data[sof + 4] = frames[i].precision;
        copy.data[sof + 9] = frames[i].components;
        assert_int_equal(prepare_rc(copy.data, copy.len, NULL, 224, &err), MS_EUNSUPPORTED);
        if (!strstr(err.msg, frames[i].says))
            fail_msg("frame %zu: \"%s\" does not say %s", i, err.msg, frames[i].says);
        blob_free(&copy);
    }
    blob_free(&jpg);

    /* byte limit */
    blob small = encode_with(gradient(16, 16), ".png");
    image_limits lim = image_default_limits();
    lim.max_bytes = small.len - 1;
    assert_int_equal(prepare_rc(small.data, small.len, &lim, 4, &err), MS_ETOOBIG);
    assert_non_null(strstr(err.msg, "bytes"));
    lim.max_bytes = small.len;
    assert_int_equal(prepare_rc(small.data, small.len, &lim, 4, &err), 0);
    /* pixel limit, exactly at and one over */
    lim.max_pixels = 256;
    assert_int_equal(prepare_rc(small.data, small.len, &lim, 4, &err), 0);
    lim.max_pixels = 255;
    assert_int_equal(prepare_rc(small.data, small.len, &lim, 4, &err), MS_ETOOBIG);
    assert_string_equal(err.msg, "image is 16x16 (256 pixels), over the 255 pixels limit");
    blob_free(&small);
}

/* A small zlib stream that inflates to far more pixels than allowed. */
static void test_decompression_bomb(void **state)
{
    (void)state;
    ms_err err = {0};
    blob bomb = encode_with(black(4000, 4000), ".png[compression=9]");
    print_message("bomb: %zu bytes inflating to 16 Mpx\n", bomb.len);
    assert_true(bomb.len < 40000);
    image_limits lim = image_default_limits();
    lim.max_pixels = 1000000;
    uint64_t t0 = cpu_ns();
    assert_int_equal(prepare_rc(bomb.data, bomb.len, &lim, 224, &err), MS_ETOOBIG);
    assert_int_equal(thumb_rc(bomb.data, bomb.len, &lim, &err), MS_ETOOBIG);
    assert_true(cpu_ns() - t0 < HEADER_ONLY_CPU_NS);
    assert_non_null(strstr(err.msg, "4000x4000 (16 Mpx), over the 1 Mpx limit"));
    /* the same bomb with a limit it fits: it decodes, and that costs more */
    lim.max_pixels = 16000000;
    t0 = cpu_ns();
    assert_int_equal(prepare_rc(bomb.data, bomb.len, &lim, 224, &err), 0);
    assert_true(cpu_ns() - t0 > HEADER_ONLY_CPU_NS);
    lim.max_pixels = 1000000;

    /* The same small stream behind a header that claims 100x100: libpng
     * inflates all of it after the 100 rows; small streams cost little. */
    png_set_size(&bomb, 100, 100);
    t0 = cpu_ns();
    int rc = prepare_rc(bomb.data, bomb.len, &lim, 224, &err);
    uint64_t spent = cpu_ns() - t0;
    print_message("16 Mpx stream (%zu bytes) behind a 100x100 header: %s in %.1f ms CPU\n", bomb.len,
                  rc ? err.msg : "decoded", spent / 1e6);
    if (rc)
        assert_clean_error(rc, &err);
    blob_free(&bomb);
}

/* LSB-first bit writer for a hand-made deflate stream. */
typedef struct bit_writer {
    uint8_t *p;
    size_t n;
    unsigned acc, used;
} bit_writer;

static void put_bits(bit_writer *b, unsigned v, unsigned count)
{
    for (unsigned i = 0; i < count; i++) {
        b->acc |= ((v >> i) & 1u) << b->used++;
        if (b->used == 8) {
            b->p[b->n++] = (uint8_t)b->acc;
            b->acc = b->used = 0;
        }
    }
}

/* Huffman codes go most significant bit first. */
static void put_code(bit_writer *b, unsigned code, unsigned count)
{
    for (unsigned i = count; i-- > 0;)
        put_bits(b, (code >> i) & 1u, 1);
}

/* A PNG claiming 100x100 gray whose zlib stream is one fixed-Huffman block:
 * a literal 0, `matches` copies of 258 bytes (length 258, distance 1), and
 * one more copy of `tail` bytes (0, or 35..42), i.e. 1 + 258 * matches +
 * tail zero bytes from about 13 bits per 258. */
static blob lying_png(size_t matches, unsigned tail)
{
    size_t cap = 64 + matches * 13 / 8 + 64;
    uint8_t *z = malloc(cap);
    assert_non_null(z);
    bit_writer b = {z, 0, 0, 0};
    z[b.n++] = 0x78, z[b.n++] = 0x01; /* zlib header */
    put_bits(&b, 1, 1);               /* final block */
    put_bits(&b, 1, 2);               /* fixed Huffman */
    put_code(&b, 0x30, 8);            /* literal 0 */
    for (size_t i = 0; i < matches; i++) {
        put_code(&b, 0xc5, 8); /* length symbol 285: 258 */
        put_code(&b, 0x00, 5); /* distance symbol 0: 1 */
    }
    if (tail) {
        put_code(&b, 273 - 256, 7); /* length symbol 273: 35 + 3 extra bits */
        put_bits(&b, tail - 35, 3);
        put_code(&b, 0x00, 5);
    }
    put_code(&b, 0x00, 7); /* end of block */
    if (b.used)
        put_bits(&b, 0, 8 - b.used);
    uint64_t out = 1 + 258 * (uint64_t)matches + tail; /* Adler-32 of n zeros: a = 1, b = n */
    put_be32(z + b.n, (uint32_t)((out % 65521) << 16 | 1));
    b.n += 4;

    size_t len = 8 + 25 + 12 + b.n + 12;
    blob png = {g_malloc(len), len};
    uint8_t *q = png.data;
    memcpy(q, "\x89PNG\r\n\x1a\n", 8);
    put_be32(q + 8, 13);
    memcpy(q + 12, "IHDR", 4);
    put_be32(q + 16, 100);
    put_be32(q + 20, 100);
    memcpy(q + 24, "\x08\x00\x00\x00\x00", 5); /* 8-bit gray, not interlaced */
    put_be32(q + 29, crc32_of(q + 12, 17));
    put_be32(q + 33, (uint32_t)b.n);
    memcpy(q + 37, "IDAT", 4);
    memcpy(q + 41, z, b.n);
    put_be32(q + 41 + b.n, crc32_of(q + 37, 4 + b.n));
    put_be32(q + 45 + b.n, 0);
    memcpy(q + 49 + b.n, "IEND", 4);
    put_be32(q + 53 + b.n, crc32_of(q + 49 + b.n, 4));
    free(z);
    return png;
}

/* A header that lies small over a long stream: refused after inflating
 * just past what the header declares, not after inflating all of it. */
static void test_png_stream_longer_than_header(void **state)
{
    (void)state;
    ms_err err = {0};
    /* the writer is right: exactly the 100 rows (1 + 10062 + 37 = 10100
     * bytes) decode, to black */
    blob ok = lying_png(39, 37);
    float out[3 * 16 * 16];
    image_prep prep = {16, {0, 0, 0}, {1, 1, 1}};
    assert_int_equal(image_prepare(ok.data, ok.len, NULL, &prep, out, NULL, &err), 0);
    for (int i = 0; i < 3 * 16 * 16; i++)
        assert_true(out[i] == 0.0f);
    blob_free(&ok);
    /* 77 MB behind 490 KB: too big to let libpng swallow unchecked */
    blob bomb = lying_png(300000, 0);
    uint64_t t0 = cpu_ns();
    assert_int_equal(prepare_rc(bomb.data, bomb.len, NULL, 224, &err), MS_EFORMAT);
    uint64_t spent = cpu_ns() - t0;
    print_message("77 MB stream behind a 100x100 header (%zu bytes): \"%s\" after %.1f ms CPU\n", bomb.len,
                  err.msg, spent / 1e6);
    assert_non_null(strstr(err.msg, "decompression bomb"));
    assert_true(spent < HEADER_ONLY_CPU_NS);
    assert_int_equal(thumb_rc(bomb.data, bomb.len, NULL, &err), MS_EFORMAT);
    blob_free(&bomb);
}

/* Hand-made uncompressed TIFFs in both byte orders. */
typedef struct tiff_writer {
    uint8_t *p;
    int big_endian;
} tiff_writer;

static void tw16(const tiff_writer *t, size_t at, uint32_t v)
{
    t->p[at + (t->big_endian ? 0 : 1)] = (uint8_t)(v >> 8);
    t->p[at + (t->big_endian ? 1 : 0)] = (uint8_t)v;
}

static void tw32(const tiff_writer *t, size_t at, uint32_t v)
{
    for (int k = 0; k < 4; k++)
        t->p[at + (t->big_endian ? 3 - k : k)] = (uint8_t)(v >> (8 * k));
}

static void tiff_entry(const tiff_writer *t, size_t at, uint16_t tag, uint16_t type, uint32_t value)
{
    tw16(t, at, tag);
    tw16(t, at + 2, type);
    tw32(t, at + 4, 1);
    if (type == 3)
        tw16(t, at + 8, value); /* a SHORT sits in the first two bytes */
    else
        tw32(t, at + 8, value);
}

/* w x h, 8 or 16 bits, one strip; pixel i holds value i * step. */
static blob make_tiff(int big_endian, uint32_t w, uint32_t h, uint16_t bits, uint16_t photometric, uint32_t step)
{
    enum { N_ENTRIES = 9 };
    const size_t ifd = 8, data_at = ifd + 2 + N_ENTRIES * 12 + 4;
    size_t bytes = (size_t)w * h * (bits / 8);
    if (bytes > 1 << 20)
        bytes = 1 << 20; /* a lying size: the strip is short */
    blob b = {g_malloc0(data_at + bytes), data_at + bytes};
    tiff_writer t = {b.data, big_endian};
    memcpy(b.data, big_endian ? "MM\0*" : "II*\0", 4);
    tw32(&t, 4, ifd);
    tw16(&t, ifd, N_ENTRIES);
    size_t e = ifd + 2;
    tiff_entry(&t, e, 256, 4, w), e += 12;
    tiff_entry(&t, e, 257, 4, h), e += 12;
    tiff_entry(&t, e, 258, 3, bits), e += 12;
    tiff_entry(&t, e, 259, 3, 1), e += 12; /* no compression */
    tiff_entry(&t, e, 262, 3, photometric), e += 12;
    tiff_entry(&t, e, 273, 4, (uint32_t)data_at), e += 12;
    tiff_entry(&t, e, 277, 3, 1), e += 12;
    tiff_entry(&t, e, 278, 4, h), e += 12;
    tiff_entry(&t, e, 279, 4, (uint32_t)((size_t)w * h * (bits / 8))), e += 12;
    tw32(&t, e, 0); /* no next IFD */
    for (size_t i = 0; i < bytes / (bits / 8); i++) {
        if (bits == 8)
            b.data[data_at + i] = (uint8_t)(i * step);
        else
            tw16(&t, data_at + 2 * i, (uint32_t)(i * step));
    }
    return b;
}

static void test_handmade_tiff_both_byte_orders(void **state)
{
    (void)state;
    for (int be = 0; be < 2; be++) {
        ms_err err = {0};
        image_prep prep = {2, {0, 0, 0}, {1, 1, 1}};
        float out[12];
        image_info info;
        /* 8-bit: values pass through */
        blob b = make_tiff(be, 2, 2, 8, 1, 60);
        assert_int_equal(image_prepare(b.data, b.len, NULL, &prep, out, &info, &err), 0);
        assert_int_equal(info.format, IMAGE_TIFF);
        assert_true(out[0] == 0 && out[1] == 60 && out[2] == 120 && out[3] == 180);
        blob_free(&b);
        /* 16-bit: 0, 300, 600, 900 scaled by the max 900 */
        b = make_tiff(be, 2, 2, 16, 1, 300);
        assert_int_equal(image_prepare(b.data, b.len, NULL, &prep, out, &info, &err), 0);
        assert_int_equal(info.bits, 16);
        assert_true(out[0] == 0 && out[1] == 85 && out[2] == 170 && out[3] == 255);
        blob_free(&b);
        /* lying headers */
        b = make_tiff(be, 60000, 60000, 8, 1, 1);
        assert_int_equal(prepare_rc(b.data, b.len, NULL, 8, &err), MS_ETOOBIG);
        blob_free(&b);
        b = make_tiff(be, 3000, 3000, 8, 1, 1); /* 9 Mpx claimed, 1 MiB present */
        assert_clean_error(prepare_rc(b.data, b.len, NULL, 8, &err), &err);
        blob_free(&b);
        b = make_tiff(be, 0, 5, 8, 1, 1);
        assert_int_equal(prepare_rc(b.data, b.len, NULL, 8, &err), MS_EFORMAT);
        blob_free(&b);
        b = make_tiff(be, 4, 4, 8, 2, 1); /* RGB photometric with one sample */
        assert_int_equal(prepare_rc(b.data, b.len, NULL, 8, &err), MS_EUNSUPPORTED);
        assert_non_null(strstr(err.msg, "RGB TIFF with 1 samples per pixel"));
        blob_free(&b);
        const struct {
            uint16_t photometric;
            const char *says;
        } refused[] = {{5, "(CMYK) is not supported"}, {6, "(YCbCr) is not supported"}, {8, "interpretation 8"}};
        for (size_t k = 0; k < sizeof refused / sizeof *refused; k++) {
            b = make_tiff(be, 4, 4, 8, refused[k].photometric, 1);
            assert_int_equal(prepare_rc(b.data, b.len, NULL, 8, &err), MS_EUNSUPPORTED);
            if (!strstr(err.msg, refused[k].says))
                fail_msg("photometric %u: \"%s\"", refused[k].photometric, err.msg);
            blob_free(&b);
        }
        b = make_tiff(be, 4, 4, 8, 1, 1);
        tiff_writer t = {b.data, be};
        tw32(&t, 4, (uint32_t)b.len + 100); /* IFD outside the file */
        assert_int_equal(prepare_rc(b.data, b.len, NULL, 8, &err), MS_EFORMAT);
        tw32(&t, 4, 8);
        tw16(&t, 8, 0xffff); /* more entries than bytes */
        assert_int_equal(prepare_rc(b.data, b.len, NULL, 8, &err), MS_EFORMAT);
        tw16(&t, 8, 9);
        tiff_entry(&t, 8 + 2 + 5 * 12, 273, 4, 0x7ffffff0u); /* strip outside the file */
        assert_clean_error(prepare_rc(b.data, b.len, NULL, 8, &err), &err);
        blob_free(&b);
    }
}

/* TIFF Orientation (tag 274): a 2x2 image of 0, 20 / 40, 60 comes out as
 * shown, each of the eight turns worked out by hand. Entry 6 of make_tiff
 * (SamplesPerPixel, 1 by default) becomes the Orientation, which keeps the
 * tags in order. */
static void test_tiff_orientation(void **state)
{
    (void)state;
    static const float shown[9][4] = {
        [1] = {0, 20, 40, 60}, [2] = {20, 0, 60, 40}, [3] = {60, 40, 20, 0}, [4] = {40, 60, 0, 20},
        [5] = {0, 40, 20, 60}, [6] = {40, 0, 60, 20}, [7] = {60, 20, 40, 0}, [8] = {20, 60, 0, 40},
    };
    for (int be = 0; be < 2; be++)
        for (uint32_t o = 0; o <= 9; o++) {
            blob b = make_tiff(be, 2, 2, 8, 1, 20);
            tiff_writer t = {b.data, be};
            tiff_entry(&t, 8 + 2 + 6 * 12, 274, 3, o);
            ms_err err = {0};
            image_prep prep = {2, {0, 0, 0}, {1, 1, 1}};
            float out[12];
            image_info info;
            assert_int_equal(image_prepare(b.data, b.len, NULL, &prep, out, &info, &err), 0);
            int want = o >= 1 && o <= 8 ? (int)o : 1; /* out of range: as stored, as viewers take it */
            assert_int_equal(info.orientation, want);
            if (memcmp(out, shown[want], sizeof shown[want]))
                fail_msg("orientation %u: %g %g / %g %g", o, out[0], out[1], out[2], out[3]);
            blob_free(&b);
        }
    /* 3x2 turned a quarter: shown 2x3 */
    blob b = make_tiff(0, 3, 2, 8, 1, 20);
    tiff_writer t = {b.data, 0};
    tiff_entry(&t, 8 + 2 + 6 * 12, 274, 3, 6);
    image_info info;
    ms_err err = {0};
    assert_int_equal(image_probe(b.data, b.len, NULL, &info, &err), 0);
    int w, h;
    image_info_shown_size(&info, &w, &h);
    assert_true(info.width == 3 && info.height == 2 && w == 2 && h == 3);
    blob_free(&b);
}

/* An APP1 "Exif" block with a TIFF structure whose first directory holds
 * n_entries, the first being Orientation of the given type and value. */
static size_t exif_block(uint8_t *out, int big_endian, uint16_t type, uint32_t value, uint16_t n_entries,
                         uint32_t ifd_offset)
{
    size_t payload = 6 + 8 + 2 + 12 + 4;
    out[0] = 0xFF, out[1] = 0xE1, out[2] = (uint8_t)((payload + 2) >> 8), out[3] = (uint8_t)(payload + 2);
    memcpy(out + 4, "Exif\0\0", 6);
    tiff_writer t = {out + 10, big_endian};
    memcpy(out + 10, big_endian ? "MM\0*" : "II*\0", 4);
    tw32(&t, 4, ifd_offset);
    tw16(&t, 8, n_entries);
    tiff_entry(&t, 10, 274, type, value);
    tw32(&t, 22, 0);
    return 4 + payload;
}

/* A JPEG with blocks spliced in after its SOI. */
static blob jpeg_with(const uint8_t *blocks, size_t n)
{
    blob plain = encode_with(vips_image_new_from_image1(vips_image_new_matrix(8, 8), 128), ".jpg[Q=90,strip]");
    blob b = {g_malloc(plain.len + n), plain.len + n};
    memcpy(b.data, plain.data, 2);
    if (n)
        memcpy(b.data + 2, blocks, n);
    memcpy(b.data + 2 + n, plain.data + 2, plain.len - 2);
    blob_free(&plain);
    return b;
}

static int jpeg_orientation(const uint8_t *blocks, size_t n)
{
    blob b = jpeg_with(blocks, n);
    image_info info;
    ms_err err = {0};
    if (image_probe(b.data, b.len, NULL, &info, &err))
        fail_msg("probe: %s", err.msg);
    blob_free(&b);
    return info.orientation;
}

static void test_exif_orientation_read_safely(void **state)
{
    (void)state;
    uint8_t blk[256];
    size_t n = exif_block(blk, 0, 3, 6, 1, 8);
    assert_int_equal(jpeg_orientation(blk, n), 6);
    assert_int_equal(jpeg_orientation(blk, exif_block(blk, 1, 3, 8, 1, 8)), 8);
    assert_int_equal(jpeg_orientation(blk, exif_block(blk, 0, 4, 5, 1, 8)), 5);    /* as a LONG */
    assert_int_equal(jpeg_orientation(blk, exif_block(blk, 0, 3, 9, 1, 8)), 1);    /* out of range */
    assert_int_equal(jpeg_orientation(blk, exif_block(blk, 0, 2, 6, 1, 8)), 1);    /* ASCII, not a number */
    assert_int_equal(jpeg_orientation(blk, exif_block(blk, 0, 3, 6, 1, 9000)), 1); /* directory outside */
    assert_int_equal(jpeg_orientation(blk, exif_block(blk, 0, 3, 6, 0xFFFF, 8)), 1); /* entries past the end */
    assert_int_equal(jpeg_orientation(blk, exif_block(blk, 0, 3, 6, 1, 0)), 1);    /* directory in the header */
    /* the first Exif block counts, after any other APP1 (XMP) */
    static const char xmp[] = "\xFF\xE1\x00\x23http://ns.adobe.com/xap/1.0/\0<x/>";
    memcpy(blk, xmp, sizeof xmp - 1);
    n = sizeof xmp - 1;
    n += exif_block(blk + n, 0, 3, 3, 1, 8);
    n += exif_block(blk + n, 0, 3, 6, 1, 8);
    assert_int_equal(jpeg_orientation(blk, n), 3);
    /* an Exif block cut anywhere before the end of its Orientation entry
     * (byte 32: 10 of marker and "Exif", 22 of TIFF header, count and
     * entry) reads as 1; cut after it, in the next-directory pointer, the
     * entry is whole and counts */
    size_t full = exif_block(blk, 0, 3, 6, 1, 8);
    for (size_t cut = 10; cut < full; cut++) {
        uint8_t cutb[64];
        memcpy(cutb, blk, cut);
        cutb[2] = (uint8_t)((cut - 2) >> 8), cutb[3] = (uint8_t)(cut - 2);
        assert_int_equal(jpeg_orientation(cutb, cut), cut < 32 ? 1 : 6);
    }
    assert_int_equal(jpeg_orientation(NULL, 0), 1); /* no Exif at all */
}

/* plain with a chunk of the given type and data inserted at byte at. */
static blob png_with_chunk(const blob *plain, size_t at, const char *type, const uint8_t *data, size_t n)
{
    blob b = {g_malloc(plain->len + 12 + n), plain->len + 12 + n};
    uint8_t *q = b.data;
    memcpy(q, plain->data, at);
    q += at;
    put_be32(q, (uint32_t)n);
    memcpy(q + 4, type, 4);
    memcpy(q + 8, data, n);
    put_be32(q + 8 + n, crc32_of(q + 4, 4 + n));
    memcpy(q + 12 + n, plain->data + at, plain->len - at);
    return b;
}

/* PNG's eXIf chunk before IDAT turns the image, as browsers turn it; with or
 * without the "Exif\0\0" some writers put first; after IDAT it is not read. */
static void test_png_exif_orientation(void **state)
{
    (void)state;
    VipsImage *im = vips_image_new_matrix(4, 2);
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 4; x++)
            *VIPS_MATRIX(im, x, y) = x * 40 + y * 120;
    VipsImage *u8 = NULL;
    assert_int_equal(vips_cast_uchar(im, &u8, NULL), 0);
    g_object_unref(im);
    blob plain = encode_with(u8, ".png[strip]");
    uint8_t blk[64];
    size_t n = exif_block(blk, 1, 3, 6, 1, 8) - 10; /* the TIFF structure alone */
    const size_t after_ihdr = 8 + 25;
    const struct {
        size_t skip;   /* bytes of blk before the TIFF structure kept: 6 keeps "Exif\0\0" */
        int after_idat;
        int want;
    } cases[] = {{10, 0, 6}, {4, 0, 6}, {10, 1, 1}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        size_t at = after_ihdr;
        if (cases[k].after_idat) /* before IEND, the last 12 bytes */
            at = plain.len - 12;
        blob b = png_with_chunk(&plain, at, "eXIf", blk + cases[k].skip, n + 10 - cases[k].skip);
        image_info info;
        ms_err err = {0};
        image_prep prep = {2, {0, 0, 0}, {1, 1, 1}};
        float out[12];
        assert_int_equal(image_prepare(b.data, b.len, NULL, &prep, out, &info, &err), 0);
        assert_int_equal(info.orientation, cases[k].want);
        int w, h;
        image_info_shown_size(&info, &w, &h);
        assert_int_equal(w, cases[k].want == 6 ? 2 : 4);
        blob_free(&b);
    }
    blob_free(&plain);
}

/* Random bytes, alone and behind each accepted magic number. */
static void test_random_bytes(void **state)
{
    (void)state;
    static const struct {
        const char *magic;
        size_t len;
    } magics[] = {{"", 0},           {"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR", 16},
                  {"\xff\xd8\xff", 3}, {"II*\0", 4},
                  {"MM\0*", 4},       {"RIFF\xf8\x01\0\0WEBPVP8L\xe4\x01\0\0\x2f", 21},
                  {"\xff\x4f\xff\x51\0\x29\0\0\0\0\0\x20\0\0\0\x20\0\0\0\0\0\0\0\0", 24},
                  {"\0\0\0\x18" "ftypheic\0\0\0\0mif1heic\0\0\x01\0meta\0\0\0\0", 36},
                  {"GIF89a\x20\0\x20\0\xf7\0\0", 13}};
    uint8_t buf[2048];
    for (size_t m = 0; m < sizeof magics / sizeof magics[0]; m++)
        for (int round = 0; round < 150; round++) {
            size_t n = magics[m].len + rng() % (sizeof buf - magics[m].len);
            for (size_t i = 0; i < n; i++)
                buf[i] = (uint8_t)rng();
            memcpy(buf, magics[m].magic, magics[m].len);
            ms_err err = {0};
            int rc = prepare_rc(buf, n, NULL, 8, &err);
            if (rc)
                assert_clean_error(rc, &err);
            rc = thumb_rc(buf, n, NULL, &err);
            if (rc)
                assert_clean_error(rc, &err);
        }
}

/* Valid small files with a few random bytes changed. */
static void test_mutated_files(void **state)
{
    (void)state;
    const char *suffixes[] = {".png", ".jpg", ".jpg[interlace]", ".tif", ".tif[compression=lzw]",
                              ".png[palette]", ".webp", ".webp[lossless]", ".jp2[lossless]", ".jp2[Q=50]", ".heic", ".avif",
                              ".gif"};
    for (size_t s = 0; s < sizeof suffixes / sizeof suffixes[0]; s++) {
        blob b = encode_with(gradient(48, 40), suffixes[s]);
        uint8_t *m = malloc(b.len);
        assert_non_null(m);
        int ok = 0;
        for (int round = 0; round < 250; round++) {
            memcpy(m, b.data, b.len);
            int flips = 1 + (int)(rng() % 8);
            for (int f = 0; f < flips; f++)
                m[rng() % b.len] = (uint8_t)rng();
            ms_err err = {0};
            int rc = prepare_rc(m, b.len, NULL, 16, &err);
            if (rc)
                assert_clean_error(rc, &err);
            else
                ok++;
        }
        print_message("%s: 250 mutants, %d still decodable\n", suffixes[s], ok);
        free(m);
        blob_free(&b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_and_null),
        cmocka_unit_test(test_named_unsupported_formats),
        cmocka_unit_test(test_wrong_magic),
        cmocka_unit_test(test_truncated_at_every_length),
        cmocka_unit_test(test_webp_truncated),
        cmocka_unit_test(test_jpeg2000_truncated),
        cmocka_unit_test(test_jpeg2000_headers),
        cmocka_unit_test(test_heif_truncated),
        cmocka_unit_test(test_gif_truncated),
        cmocka_unit_test(test_heif_headers),
        cmocka_unit_test(test_webp_headers),
        cmocka_unit_test(test_tiny_and_extreme_aspect),
        cmocka_unit_test(test_huge_claimed_size_refused_from_header),
        cmocka_unit_test(test_decompression_bomb),
        cmocka_unit_test(test_png_stream_longer_than_header),
        cmocka_unit_test(test_handmade_tiff_both_byte_orders),
        cmocka_unit_test(test_tiff_orientation),
        cmocka_unit_test(test_exif_orientation_read_safely),
        cmocka_unit_test(test_png_exif_orientation),
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test(test_mutated_files),
    };
    return cmocka_run_group_tests_name("image hostile", tests, setup, NULL) ? 1 : 0;
}
