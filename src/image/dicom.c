/*
 * dicom.c - the one image of a DICOM Part 10 file: header, pixel layout,
 * RLE Lossless and the grayscale display pipeline (see dicom.h).
 *
 * A DICOM data set is a flat list of elements, each a tag (group,
 * element), in explicit VR syntaxes a two-letter value representation, a
 * length and the value. A length of 0xFFFFFFFF ("undefined") means the
 * value is a sequence of items that ends with a delimiter element, and
 * each item is itself a data set, possibly with undefined lengths inside.
 * We need a dozen top-level attributes and the pixel data, so the reader
 * walks the top level, steps over every value it does not need, and walks
 * undefined-length sequences only to find where they end (a sequence's
 * content cannot be skipped any other way). Two rules keep a hostile file
 * harmless: a length is compared with the bytes that are left before the
 * value is touched, and nesting is bounded by DICOM_MAX_DEPTH, so the
 * recursion cannot exhaust the stack and every step moves forward.
 *
 * The grayscale pipeline follows PS3.3 C.11: stored value -> modality
 * rescale -> VOI window or LUT -> MONOCHROME1 inversion. The stored values
 * of one frame span at most 2^16 codes, so the whole pipeline becomes one
 * table from code to 8-bit gray, built once per image and applied per
 * pixel: the per-pixel cost is one lookup whatever the window function.
 */
#include "image/dicom.h"

#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libdeflate.h>

#include "image/image.h"

#define UNDEFINED_LENGTH 0xffffffffu
#define TAG(g, e) ((uint32_t)(g) << 16 | (uint32_t)(e))

/* Tags read at the top level, and the item delimiters. */
#define T_SOP_CLASS TAG(0x0002, 0x0002)
#define T_DATA_SET_SOP_CLASS TAG(0x0008, 0x0016)
#define T_TRANSFER_SYNTAX TAG(0x0002, 0x0010)
#define T_STUDY_DATE TAG(0x0008, 0x0020)
#define T_MODALITY TAG(0x0008, 0x0060)
#define T_PATIENT_ID TAG(0x0010, 0x0020)
#define T_PATIENT_SEX TAG(0x0010, 0x0040)
#define T_PATIENT_AGE TAG(0x0010, 0x1010)
#define T_BODY_PART TAG(0x0018, 0x0015)
#define T_VIEW_POSITION TAG(0x0018, 0x5101)
#define T_SAMPLES TAG(0x0028, 0x0002)
#define T_PHOTOMETRIC TAG(0x0028, 0x0004)
#define T_PLANAR TAG(0x0028, 0x0006)
#define T_FRAMES TAG(0x0028, 0x0008)
#define T_ROWS TAG(0x0028, 0x0010)
#define T_COLUMNS TAG(0x0028, 0x0011)
#define T_BITS_ALLOCATED TAG(0x0028, 0x0100)
#define T_BITS_STORED TAG(0x0028, 0x0101)
#define T_HIGH_BIT TAG(0x0028, 0x0102)
#define T_PIXEL_REPRESENTATION TAG(0x0028, 0x0103)
#define T_PIXEL_PADDING_VALUE TAG(0x0028, 0x0120)
#define T_PIXEL_PADDING_LIMIT TAG(0x0028, 0x0121)
#define T_WINDOW_CENTER TAG(0x0028, 0x1050)
#define T_WINDOW_WIDTH TAG(0x0028, 0x1051)
#define T_RESCALE_INTERCEPT TAG(0x0028, 0x1052)
#define T_RESCALE_SLOPE TAG(0x0028, 0x1053)
#define T_VOI_FUNCTION TAG(0x0028, 0x1056)
#define T_LUT_DESCRIPTOR TAG(0x0028, 0x3002)
#define T_LUT_DATA TAG(0x0028, 0x3006)
#define T_VOI_LUT_SEQUENCE TAG(0x0028, 0x3010)
#define T_FLOAT_PIXEL_DATA TAG(0x7fe0, 0x0008)
#define T_DOUBLE_PIXEL_DATA TAG(0x7fe0, 0x0009)
#define T_PIXEL_DATA TAG(0x7fe0, 0x0010)
#define T_ITEM TAG(0xfffe, 0xe000)
#define T_ITEM_END TAG(0xfffe, 0xe00d)
#define T_SEQUENCE_END TAG(0xfffe, 0xe0dd)

/* ---- reading elements ---- */

typedef struct cursor {
    const uint8_t *buf;
    size_t end;            /* the cursor never reads at or past end */
    size_t pos;
    bool explicit_vr, big_endian;
} cursor;

typedef struct element {
    uint32_t tag;
    char vr[3];            /* "" for implicit VR and for items */
    uint32_t length;       /* UNDEFINED_LENGTH or the value's bytes */
    size_t value;          /* offset of the value in buf */
} element;

static uint16_t rd16(const uint8_t *p, bool be)
{
    return be ? (uint16_t)(p[0] << 8 | p[1]) : (uint16_t)(p[1] << 8 | p[0]);
}

static uint32_t rd32(const uint8_t *p, bool be)
{
    return be ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]
              : (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

/* VRs whose explicit encoding has two reserved bytes and a 32-bit length. */
static bool long_vr(const char *vr)
{
    static const char *const long_vrs[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ",
                                           "SV", "UC", "UN", "UR", "UT", "UV"};
    for (size_t i = 0; i < sizeof long_vrs / sizeof *long_vrs; i++)
        if (!strcmp(vr, long_vrs[i]))
            return true;
    return false;
}

static int truncated(size_t at, ms_err *err)
{
    return ms_err_set(err, MS_EFORMAT, "DICOM is truncated or corrupt: an element at byte %zu runs past the end "
                      "of its data", at);
}

/* Reads one element header at c->pos and moves past it (not past the
 * value). A defined length must fit in what is left. */
static int read_element(cursor *c, element *e, ms_err *err)
{
    size_t at = c->pos;
    if (c->end - at < 8)
        return truncated(at, err);
    const uint8_t *p = c->buf + at;
    bool be = c->big_endian;
    e->tag = TAG(rd16(p, be), rd16(p + 2, be));
    e->vr[0] = '\0';
    if ((e->tag >> 16) == 0xfffe || !c->explicit_vr) {
        e->length = rd32(p + 4, be);
        c->pos += 8;
    } else {
        if (!isupper(p[4]) || !isupper(p[5]))
            return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: element (%04x,%04x) at byte %zu has no valid "
                              "value representation", e->tag >> 16, e->tag & 0xffff, at);
        e->vr[0] = (char)p[4];
        e->vr[1] = (char)p[5];
        e->vr[2] = '\0';
        if (long_vr(e->vr)) {
            if (c->end - at < 12)
                return truncated(at, err);
            e->length = rd32(p + 8, be);
            c->pos += 12;
        } else {
            e->length = rd16(p + 6, be);
            c->pos += 8;
        }
    }
    e->value = c->pos;
    if (e->length != UNDEFINED_LENGTH && e->length > c->end - c->pos) {
        if (e->tag == T_PIXEL_DATA)
            return ms_err_set(err, MS_EFORMAT, "DICOM is truncated: its Pixel Data holds %u bytes, %zu are left",
                              e->length, c->end - c->pos);
        return truncated(at, err);
    }
    return 0;
}

static int skip_sequence(cursor *c, const element *seq, int depth, ms_err *err);

/* Steps over the value of e, walking it when its length is undefined. */
static int skip_value(cursor *c, const element *e, int depth, ms_err *err)
{
    if (e->length != UNDEFINED_LENGTH) {
        c->pos += e->length;
        return 0;
    }
    return skip_sequence(c, e, depth, err);
}

/* Walks an item's data set of undefined length up to its Item
 * Delimitation, stepping over every element. */
static int skip_item(cursor *c, int depth, ms_err *err)
{
    for (;;) {
        element e;
        int rc = read_element(c, &e, err);
        if (rc)
            return rc;
        if (e.tag == T_ITEM_END)
            return 0;
        if ((e.tag >> 16) == 0xfffe)
            return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: a (fffe,%04x) delimiter inside an item at byte %zu",
                              e.tag & 0xffff, e.value - 8);
        if ((rc = skip_value(c, &e, depth, err)))
            return rc;
    }
}

/* Steps over a sequence of undefined length: items up to the Sequence
 * Delimitation. A UN element of undefined length holds its sequence in
 * implicit VR little endian whatever the transfer syntax (PS3.5 6.2.2). */
static int skip_sequence(cursor *c, const element *seq, int depth, ms_err *err)
{
    if (depth >= DICOM_MAX_DEPTH)
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt or hostile: sequences nested more than %d deep",
                          DICOM_MAX_DEPTH);
    cursor inner = *c;
    if (!strcmp(seq->vr, "UN")) {
        inner.explicit_vr = false;
        inner.big_endian = false;
    }
    for (;;) {
        element item;
        int rc = read_element(&inner, &item, err);
        if (rc)
            return rc;
        if (item.tag == T_SEQUENCE_END)
            break;
        if (item.tag != T_ITEM)
            return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: element (%04x,%04x) where a sequence item was "
                              "expected, at byte %zu", item.tag >> 16, item.tag & 0xffff, item.value - 8);
        rc = item.length == UNDEFINED_LENGTH ? skip_item(&inner, depth + 1, err)
                                             : (inner.pos += item.length, 0);
        if (rc)
            return rc;
    }
    c->pos = inner.pos;
    return 0;
}

/* ---- values ---- */

/* The value of e as text: leading and trailing spaces and NULs dropped,
 * only when it fits cap - 1 bytes and is printable ASCII; else "". */
static void text_value(const cursor *c, const element *e, char *out, size_t cap)
{
    out[0] = '\0';
    if (e->length == UNDEFINED_LENGTH)
        return;
    const uint8_t *s = c->buf + e->value;
    size_t a = 0, b = e->length;
    while (a < b && (s[a] == ' ' || s[a] == '\0'))
        a++;
    while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\0'))
        b--;
    if (b - a >= cap)
        return;
    for (size_t i = a; i < b; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            return;
    memcpy(out, s + a, b - a);
    out[b - a] = '\0';
}

/* An unsigned 16-bit value (US); -1 when e does not hold one. */
static int us_value(const cursor *c, const element *e)
{
    if (e->length < 2 || e->length == UNDEFINED_LENGTH)
        return -1;
    return rd16(c->buf + e->value, c->big_endian);
}

/* The first number of a DS or IS value (values are separated by '\'). */
static bool number_value(const cursor *c, const element *e, double *v)
{
    char s[68];
    if (e->length == UNDEFINED_LENGTH)
        return false;
    const uint8_t *p = c->buf + e->value;
    size_t n = 0;
    while (n < e->length && p[n] != '\\')
        n++;
    element first = *e;
    first.length = (uint32_t)n;
    text_value(c, &first, s, sizeof s);
    if (!s[0])
        return false;
    char *end;
    double x = strtod(s, &end);
    if (*end || !isfinite(x))
        return false;
    *v = x;
    return true;
}

/* ---- transfer syntaxes ---- */

#define DEFLATED_UID "1.2.840.10008.1.2.1.99"

typedef struct syntax {
    const char *uid;
    const char *name;      /* for messages */
    int supported;
    bool explicit_vr, big_endian;
    dicom_encoding encoding;
} syntax;

static const syntax SYNTAXES[] = {
    {"1.2.840.10008.1.2", "Implicit VR Little Endian", 1, false, false, DICOM_NATIVE},
    {"1.2.840.10008.1.2.1", "Explicit VR Little Endian", 1, true, false, DICOM_NATIVE},
    {"1.2.840.10008.1.2.2", "Explicit VR Big Endian", 1, true, true, DICOM_NATIVE},
    {"1.2.840.10008.1.2.5", "RLE Lossless", 1, true, false, DICOM_RLE},
    {"1.2.840.10008.1.2.4.50", "JPEG Baseline", 1, true, false, DICOM_JPEG},
    {"1.2.840.10008.1.2.4.51", "JPEG Extended", 1, true, false, DICOM_JPEG},
    {DEFLATED_UID, "Deflated Explicit VR Little Endian", 1, true, false, DICOM_NATIVE},
    {"1.2.840.10008.1.2.4.57", "JPEG Lossless", 1, true, false, DICOM_JPEG_LOSSLESS},
    {"1.2.840.10008.1.2.4.70", "JPEG Lossless (first-order prediction)", 1, true, false, DICOM_JPEG_LOSSLESS},
    {"1.2.840.10008.1.2.4.80", "JPEG-LS Lossless", 1, true, false, DICOM_JPEG_LS},
    {"1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless", 1, true, false, DICOM_JPEG_LS},
    {"1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless", 1, true, false, DICOM_J2K},
    {"1.2.840.10008.1.2.4.91", "JPEG 2000", 1, true, false, DICOM_J2K},
    {"1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000 Lossless", 0, true, false, DICOM_JPEG},
    {"1.2.840.10008.1.2.4.202", "High-Throughput JPEG 2000 (RPCL)", 0, true, false, DICOM_JPEG},
    {"1.2.840.10008.1.2.4.203", "High-Throughput JPEG 2000", 0, true, false, DICOM_JPEG},
};

static int choose_syntax(const char *uid, dicom_image *d, cursor *c, ms_err *err)
{
    if (!uid[0])
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: its file meta information has no Transfer Syntax UID");
    for (size_t i = 0; i < sizeof SYNTAXES / sizeof *SYNTAXES; i++) {
        const syntax *s = &SYNTAXES[i];
        if (strcmp(uid, s->uid))
            continue;
        if (!s->supported)
            return ms_err_set(err, MS_EUNSUPPORTED, "DICOM with the %s transfer syntax (%s) is not supported; "
                              "decompress it first (e.g. gdcmconv --raw, or dcmconv +te)", s->name, uid);
        d->encoding = s->encoding;
        d->big_endian = s->big_endian;
        c->explicit_vr = s->explicit_vr;
        c->big_endian = s->big_endian;
        return 0;
    }
    return ms_err_set(err, MS_EUNSUPPORTED, "DICOM with transfer syntax %s is not supported; MedSearch reads "
                      "uncompressed, RLE, JPEG (8 and 12 bits), JPEG Lossless, JPEG-LS and JPEG 2000 DICOM", uid);
}

/* ---- the header ----
 *
 * A Part 10 file is a 128-byte preamble, "DICM", the file meta group
 * (0002,xxxx) and the data set. Older modalities, ACR-NEMA archives and
 * some PACS exports write the data set alone, without the preamble, and
 * often without the meta group; dcmtk, GDCM and pydicom read those too.
 * Such a bare data set is told by its first elements: a data set starts
 * with the meta group or with group 0008 (Identifying: Specific Character
 * Set, Image Type, SOP Class...), at a low element number, with small
 * values, and its tags ascend. Without a meta group there is no transfer
 * syntax to read: it is little endian, with explicit VR when the first
 * element names a known VR, implicit otherwise (the default syntax). */

typedef enum {
    DATA_SET_NONE,
    DATA_SET_PART10,         /* preamble, "DICM", meta group */
    DATA_SET_BARE_META,      /* the meta group at byte 0 */
    DATA_SET_BARE_IMPLICIT,  /* no meta group: implicit VR little endian */
    DATA_SET_BARE_EXPLICIT,  /* no meta group: explicit VR little endian */
} data_set_kind;

static bool is_vr(const uint8_t *p)
{
    static const char vrs[] = "AEASATCSDADSDTFDFLISLOLTOBODOFOLOVOWPNSHSLSQSSSTSVTMUCUIULUNURUSUTUV";
    for (size_t i = 0; i + 1 < sizeof vrs; i += 2)
        if (p[0] == vrs[i] && p[1] == vrs[i + 1])
            return true;
    return false;
}

static data_set_kind bare_data_set_kind(const uint8_t *buf, size_t len)
{
    if (len < 8)
        return DATA_SET_NONE;
    unsigned group = rd16(buf, false), first_element = rd16(buf + 2, false);
    bool explicit_vr = is_vr(buf + 4);
    if ((group != 0x0002 && group != 0x0008) || first_element > 0x0020 || (group == 0x0002 && !explicit_vr))
        return DATA_SET_NONE;
    /* The first elements that lie whole in buf (a sniff sees only a head). */
    cursor c = {.buf = buf, .end = len, .explicit_vr = explicit_vr};
    uint32_t last = 0;
    int whole = 0;
    while (whole < 4 && c.end - c.pos >= 8) {
        element e;
        ms_err ignored;
        if (group == 0x0002 && rd16(buf + c.pos, false) != 0x0002)
            break; /* the data set after the meta group is in its own syntax */
        if (explicit_vr && !is_vr(buf + c.pos + 4))
            return DATA_SET_NONE;
        if (read_element(&c, &e, &ignored) != 0)
            break; /* runs past the head */
        if ((whole > 0 && e.tag <= last) || e.length == UNDEFINED_LENGTH || (whole == 0 && e.length > 256))
            return DATA_SET_NONE;
        last = e.tag;
        c.pos += e.length;
        whole++;
    }
    if (whole < 2)
        return DATA_SET_NONE;
    return group == 0x0002 ? DATA_SET_BARE_META : explicit_vr ? DATA_SET_BARE_EXPLICIT : DATA_SET_BARE_IMPLICIT;
}

static data_set_kind data_set_kind_of(const uint8_t *buf, size_t len)
{
    if (!buf)
        return DATA_SET_NONE;
    if (len >= 132 && memcmp(buf + 128, "DICM", 4) == 0)
        return DATA_SET_PART10;
    return bare_data_set_kind(buf, len);
}

int dicom_sniff(const uint8_t *buf, size_t len)
{
    return data_set_kind_of(buf, len) != DATA_SET_NONE;
}

/* The file meta group (0002,xxxx) from byte at, always explicit VR little endian. */
static int read_meta_group(cursor *c, size_t at, dicom_image *d, ms_err *err)
{
    c->explicit_vr = true;
    c->big_endian = false;
    c->pos = at;
    while (c->end - c->pos >= 8 && rd16(c->buf + c->pos, false) == 0x0002) {
        element e;
        int rc = read_element(c, &e, err);
        if (rc)
            return rc;
        if (e.length == UNDEFINED_LENGTH)
            return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: an undefined length in its file meta information");
        if (e.tag == T_TRANSFER_SYNTAX)
            text_value(c, &e, d->transfer_syntax, sizeof d->transfer_syntax);
        else if (e.tag == T_SOP_CLASS)
            text_value(c, &e, d->sop_class, sizeof d->sop_class);
        c->pos += e.length;
    }
    return choose_syntax(d->transfer_syntax, d, c, err);
}

/* The first item of the VOI LUT Sequence: its LUT Descriptor and Data. A
 * bounded item ends at c->end, an unbounded one at its Item Delimitation. */
static int read_voi_lut_item(cursor *c, bool bounded, dicom_image *d, ms_err *err)
{
    int desc[3] = {-1, -1, -1};
    element data = {0};
    bool have_data = false;
    for (;;) {
        if (bounded && c->pos >= c->end)
            break;
        element e;
        int rc = read_element(c, &e, err);
        if (rc)
            return rc;
        if (!bounded && e.tag == T_ITEM_END)
            break;
        if (e.tag == T_LUT_DESCRIPTOR && e.length == 6) {
            for (int i = 0; i < 3; i++)
                desc[i] = rd16(c->buf + e.value + 2 * i, c->big_endian);
        } else if (e.tag == T_LUT_DATA && e.length != UNDEFINED_LENGTH) {
            data = e;
            have_data = true;
        }
        if ((rc = skip_value(c, &e, 2, err))) /* inside the sequence's item */
            return rc;
    }
    if (desc[0] < 0 || !have_data)
        return 0; /* not a usable LUT: the item is ignored */
    int entries = desc[0] ? desc[0] : 65536, bits = desc[2];
    int bytes = data.length == (uint32_t)entries * 2 ? 2 : data.length == (uint32_t)entries ? 1 : 0;
    if (bits < 8 || bits > 16 || !bytes)
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: its VOI LUT describes %d entries of %d bits but holds "
                          "%u bytes", entries, bits, data.length);
    /* The first mapped value is US or SS as the pixels are; SS shows as
     * a US above 32767. */
    int first = desc[1];
    if (d->is_signed && first > 32767)
        first -= 65536;
    d->voi_lut = (dicom_voi_lut){.entries = entries, .first = first, .bits = bits, .data = c->buf + data.value,
                                 .data_bytes = bytes};
    d->has_voi_lut = 1;
    return 0;
}

static int read_voi_lut_sequence(cursor *c, const element *seq, dicom_image *d, ms_err *err)
{
    cursor inner = *c;
    if (seq->length != UNDEFINED_LENGTH)
        inner.end = seq->value + seq->length;
    bool first = true;
    for (;;) {
        if (seq->length != UNDEFINED_LENGTH && inner.pos >= inner.end)
            break;
        element item;
        int rc = read_element(&inner, &item, err);
        if (rc)
            return rc;
        if (item.tag == T_SEQUENCE_END && seq->length == UNDEFINED_LENGTH)
            break;
        if (item.tag != T_ITEM)
            return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: element (%04x,%04x) where a VOI LUT item was "
                              "expected", item.tag >> 16, item.tag & 0xffff);
        bool bounded = item.length != UNDEFINED_LENGTH;
        if (first) {
            cursor in_item = inner;
            if (bounded)
                in_item.end = item.value + item.length;
            if ((rc = read_voi_lut_item(&in_item, bounded, d, err)))
                return rc;
            inner.pos = bounded ? item.value + item.length : in_item.pos;
            first = false;
        } else if (bounded) {
            inner.pos += item.length;
        } else if ((rc = skip_item(&inner, 2, err))) {
            return rc;
        }
    }
    c->pos = seq->length == UNDEFINED_LENGTH ? inner.pos : seq->value + seq->length;
    return 0;
}

static int read_photometric(const char *s, dicom_image *d, ms_err *err)
{
    static const struct {
        const char *name;
        dicom_photometric value;
    } known[] = {
        {"MONOCHROME1", DICOM_MONOCHROME1}, {"MONOCHROME2", DICOM_MONOCHROME2}, {"RGB", DICOM_RGB},
        {"YBR_FULL", DICOM_YBR_FULL},       {"YBR_FULL_422", DICOM_YBR_JPEG},   {"YBR_PARTIAL_420", DICOM_YBR_JPEG},
        {"YBR_ICT", DICOM_YBR_JPEG},        {"YBR_RCT", DICOM_YBR_JPEG},
    };
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (!strcmp(s, known[i].name)) {
            d->photometric = known[i].value;
            return 0;
        }
    if (!s[0])
        return ms_err_set(err, MS_EFORMAT, "DICOM has no Photometric Interpretation");
    return ms_err_set(err, MS_EUNSUPPORTED, "DICOM with photometric interpretation %s is not supported", s);
}

/* Walks the items of encapsulated Pixel Data: the Basic Offset Table,
 * then at least one fragment, then the Sequence Delimitation. */
static int read_fragments(cursor *c, dicom_image *d, ms_err *err)
{
    cursor f = *c;
    f.big_endian = false;
    element item;
    int rc = read_element(&f, &item, err);
    if (rc)
        return rc;
    if (item.tag != T_ITEM || item.length == UNDEFINED_LENGTH)
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: encapsulated Pixel Data does not start with its "
                          "Basic Offset Table");
    d->offset_table = f.buf + item.value;
    d->offset_table_len = item.length;
    f.pos += item.length;
    d->pixel_data = f.buf + f.pos;
    int fragments = 0;
    for (;;) {
        size_t at = f.pos;
        if ((rc = read_element(&f, &item, err)))
            return rc;
        if (item.tag == T_SEQUENCE_END) {
            d->pixel_len = at - (size_t)(d->pixel_data - f.buf);
            break;
        }
        if (item.tag != T_ITEM || item.length == UNDEFINED_LENGTH)
            return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: a fragment of its Pixel Data at byte %zu is not "
                              "an item of defined length", at);
        f.pos += item.length;
        fragments++;
    }
    if (fragments == 0)
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: its compressed Pixel Data has no fragment");
    return 0;
}

static int read_pixel_data(cursor *c, const element *e, dicom_image *d, ms_err *err)
{
    if (d->encoding == DICOM_NATIVE) {
        if (e->length == UNDEFINED_LENGTH)
            return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: uncompressed Pixel Data of undefined length");
        d->pixel_data = c->buf + e->value;
        d->pixel_len = e->length;
        return 0;
    }
    if (e->length != UNDEFINED_LENGTH)
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: its compressed (%s) Pixel Data is not encapsulated",
                          d->transfer_syntax);
    return read_fragments(c, d, err);
}

/* A DICOM file without Pixel Data: MS_ENOTIMAGE, named, when its SOP class
 * is one of the non-image objects archives and CD exports hold beside the
 * images; otherwise (an image class, an unknown one, none) a file cut
 * before its pixels as far as can be told, MS_EFORMAT. */
static int no_pixel_data(const dicom_image *d, ms_err *err)
{
    static const struct {
        const char *prefix, *name;
    } kinds[] = {
        {"1.2.840.10008.1.3.10", "a DICOMDIR (the index of a DICOM folder)"},
        {"1.2.840.10008.5.1.4.1.1.88.", "a structured report"},
        {"1.2.840.10008.5.1.4.1.1.11.", "a presentation state"},
        {"1.2.840.10008.5.1.4.1.1.104.", "an encapsulated document"},
        {"1.2.840.10008.5.1.4.1.1.481.", "a radiotherapy object"},
        {"1.2.840.10008.5.1.4.1.1.66", "a raw data, spatial registration or segmentation object"},
        {"1.2.840.10008.5.1.4.1.1.9.", "a waveform"},
        {"1.2.840.10008.5.1.4.38.", "a hanging protocol"},
        {"1.2.840.10008.5.1.4.39.", "a colour palette"},
    };
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
        if (!strncmp(d->sop_class, kinds[i].prefix, strlen(kinds[i].prefix)))
            return ms_err_set(err, MS_ENOTIMAGE, "DICOM file is %s (SOP class %s), not an image", kinds[i].name,
                              d->sop_class);
    if (d->sop_class[0])
        return ms_err_set(err, MS_EFORMAT, "DICOM file has no Pixel Data (SOP class %s): it is truncated, or holds "
                          "no image", d->sop_class);
    return ms_err_set(err, MS_EFORMAT, "DICOM file has no Pixel Data: it is truncated, or holds no image");
}

/* The attributes of the top level, up to the Pixel Data. */
typedef struct header_values {
    int samples, rows, cols, bits_allocated, bits_stored, high_bit, pixel_rep, planar;
    int padding, padding_limit; /* the raw 16 bits of US or SS; -1 when absent */
    double frames;
    char photometric[17], voi_function[17];
    bool has_center, has_width;
} header_values;

static int read_top_level(cursor *c, dicom_image *d, header_values *h, ms_err *err)
{
    for (;;) {
        if (c->pos >= c->end)
            return no_pixel_data(d, err);
        element e;
        int rc = read_element(c, &e, err);
        if (rc)
            return rc;
        if (e.tag == T_PIXEL_DATA)
            return read_pixel_data(c, &e, d, err);
        if (e.tag == T_FLOAT_PIXEL_DATA || e.tag == T_DOUBLE_PIXEL_DATA)
            return ms_err_set(err, MS_EUNSUPPORTED, "DICOM with floating-point pixel data is not supported");
        if ((e.tag >> 16) == 0xfffe)
            return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: a (fffe,%04x) item outside any sequence at byte %zu",
                              e.tag & 0xffff, e.value - 8);
        switch (e.tag) {
        case T_DATA_SET_SOP_CLASS: /* the meta group's copy comes first; a bare data set has only this one */
            if (!d->sop_class[0])
                text_value(c, &e, d->sop_class, sizeof d->sop_class);
            break;
        case T_STUDY_DATE: text_value(c, &e, d->study_date, sizeof d->study_date); break;
        case T_MODALITY: text_value(c, &e, d->modality, sizeof d->modality); break;
        case T_PATIENT_ID: text_value(c, &e, d->patient_id, sizeof d->patient_id); break;
        case T_PATIENT_SEX: text_value(c, &e, d->patient_sex, sizeof d->patient_sex); break;
        case T_PATIENT_AGE: text_value(c, &e, d->patient_age, sizeof d->patient_age); break;
        case T_BODY_PART: text_value(c, &e, d->body_part, sizeof d->body_part); break;
        case T_VIEW_POSITION: text_value(c, &e, d->view_position, sizeof d->view_position); break;
        case T_SAMPLES: h->samples = us_value(c, &e); break;
        case T_PHOTOMETRIC: text_value(c, &e, h->photometric, sizeof h->photometric); break;
        case T_PLANAR: h->planar = us_value(c, &e); break;
        case T_FRAMES:
            if (!number_value(c, &e, &h->frames))
                h->frames = -1;
            break;
        case T_ROWS: h->rows = us_value(c, &e); break;
        case T_COLUMNS: h->cols = us_value(c, &e); break;
        case T_BITS_ALLOCATED: h->bits_allocated = us_value(c, &e); break;
        case T_BITS_STORED: h->bits_stored = us_value(c, &e); break;
        case T_HIGH_BIT: h->high_bit = us_value(c, &e); break;
        case T_PIXEL_REPRESENTATION: h->pixel_rep = us_value(c, &e); break;
        case T_PIXEL_PADDING_VALUE: h->padding = us_value(c, &e); break;
        case T_PIXEL_PADDING_LIMIT: h->padding_limit = us_value(c, &e); break;
        case T_WINDOW_CENTER: h->has_center = number_value(c, &e, &d->window_center); break;
        case T_WINDOW_WIDTH: h->has_width = number_value(c, &e, &d->window_width); break;
        case T_RESCALE_INTERCEPT:
            if (!number_value(c, &e, &d->intercept))
                return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: its Rescale Intercept is not a number");
            break;
        case T_RESCALE_SLOPE:
            if (!number_value(c, &e, &d->slope))
                return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: its Rescale Slope is not a number");
            break;
        case T_VOI_FUNCTION: text_value(c, &e, h->voi_function, sizeof h->voi_function); break;
        case T_VOI_LUT_SEQUENCE:
            if ((rc = read_voi_lut_sequence(c, &e, d, err)))
                return rc;
            continue; /* read_voi_lut_sequence moved past it */
        default: break;
        }
        if ((rc = skip_value(c, &e, 1, err)))
            return rc;
    }
}

/* Pixel Padding Value and Range Limit (PS3.3 C.7.5.1.1.2) of a monochrome
 * image: US or SS as Pixel Representation says, in stored values. */
static void read_padding(dicom_image *d, const header_values *h)
{
    if (h->padding < 0 || d->samples != 1)
        return;
    int32_t a = d->is_signed ? (int16_t)h->padding : h->padding;
    int32_t b = h->padding_limit < 0 ? a : d->is_signed ? (int16_t)h->padding_limit : h->padding_limit;
    d->has_padding = 1;
    d->padding_lo = a < b ? a : b;
    d->padding_hi = a < b ? b : a;
}

/* Checks the image attributes against each other and the pixel data. */
static int check_layout(dicom_image *d, const header_values *h, ms_err *err)
{
    if (h->rows < 1 || h->cols < 1)
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: Rows and Columns must be set and above 0 (%d x %d)",
                          h->cols, h->rows);
    if (h->bits_allocated < 0)
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: it has no Bits Allocated");
    if (h->bits_allocated != 8 && h->bits_allocated != 16)
        return ms_err_set(err, MS_EUNSUPPORTED, "DICOM with %d bits allocated per sample is not supported; only 8 "
                          "and 16", h->bits_allocated);
    d->rows = h->rows;
    d->cols = h->cols;
    d->samples = h->samples < 0 ? 1 : h->samples;
    d->bits_allocated = h->bits_allocated;
    d->bits_stored = h->bits_stored < 0 ? h->bits_allocated : h->bits_stored;
    d->high_bit = h->high_bit < 0 ? d->bits_stored - 1 : h->high_bit;
    d->is_signed = h->pixel_rep == 1;
    d->planar = h->planar == 1;
    if (d->bits_stored < 1 || d->bits_stored > d->bits_allocated || d->high_bit >= d->bits_allocated ||
        d->high_bit + 1 < d->bits_stored)
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: %d bits stored with high bit %d do not fit %d bits "
                          "allocated", d->bits_stored, d->high_bit, d->bits_allocated);
    if (h->pixel_rep > 1)
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: Pixel Representation %d", h->pixel_rep);
    if (h->frames != h->frames || h->frames < 1 || h->frames > 1e6 || h->frames != floor(h->frames))
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: Number of Frames is not a count");
    d->frames = (int)h->frames;
    /* ACR-NEMA data sets may have no Photometric Interpretation; one sample
     * is then grey with black at 0, as dcmtk reads them too. */
    const char *photometric = !h->photometric[0] && d->bare && d->samples == 1 ? "MONOCHROME2" : h->photometric;
    int rc = read_photometric(photometric, d, err);
    if (rc)
        return rc;
    bool mono = d->photometric == DICOM_MONOCHROME1 || d->photometric == DICOM_MONOCHROME2;
    if (d->samples != (mono ? 1 : 3))
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: %s with %d samples per pixel", photometric,
                          d->samples);
    if (!mono && d->bits_allocated != 8)
        return ms_err_set(err, MS_EUNSUPPORTED, "DICOM colour images of %d bits are not supported; only 8",
                          d->bits_allocated);
    if (d->photometric == DICOM_YBR_JPEG && d->encoding != DICOM_JPEG && d->encoding != DICOM_J2K)
        return ms_err_set(err, MS_EUNSUPPORTED, "DICOM with %s pixels outside JPEG is not supported",
                          h->photometric);
    if (d->encoding == DICOM_NATIVE && d->pixel_len / dicom_frame_size(d) < (size_t)d->frames)
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: its Pixel Data holds %zu bytes, %d frame(s) of %d x %d "
                          "need %zu", d->pixel_len, d->frames, d->cols, d->rows,
                          dicom_frame_size(d) * (size_t)d->frames);
    read_padding(d, h);
    if (h->has_center && h->has_width) {
        d->voi_function = !strcmp(h->voi_function, "SIGMOID")        ? DICOM_VOI_SIGMOID
                          : !strcmp(h->voi_function, "LINEAR_EXACT") ? DICOM_VOI_LINEAR_EXACT
                                                                     : DICOM_VOI_LINEAR;
        /* A window too narrow for its function is ignored, as viewers do. */
        d->has_window = d->voi_function == DICOM_VOI_LINEAR ? d->window_width >= 1.0 : d->window_width > 0.0;
    }
    return 0;
}

/* A deflated data set (PS3.5 A.5): everything after the file meta group is
 * one raw deflate stream (RFC 1951) of an explicit VR little endian data
 * set, and the cursor moves to its inflated bytes (d->inflated, owned).
 * The inflated size is written nowhere: the buffer starts at four times the
 * stream and doubles up to max bytes, so a small file that would inflate
 * past that (a decompression bomb) is refused having used at most that much
 * memory. Bytes after the stream's end (padding) are ignored. */
static int inflate_data_set(const uint8_t *in, size_t in_len, size_t max, dicom_image *d, cursor *c,
                            ms_err *err)
{
    if (max > DICOM_MAX_INFLATED)
        max = DICOM_MAX_INFLATED;
    struct libdeflate_decompressor *z = libdeflate_alloc_decompressor();
    if (!z)
        return ms_err_set(err, MS_ENOMEM, "no memory to inflate a DICOM data set");
    size_t cap = in_len < max / 4 ? in_len * 4 : max;
    if (cap < 65536)
        cap = max < 65536 ? max : 65536;
    int rc = 0;
    for (;;) {
        free(d->inflated);
        if (!(d->inflated = malloc(cap))) {
            rc = ms_err_set(err, MS_ENOMEM, "no memory to inflate a DICOM data set to %zu bytes", cap);
            break;
        }
        size_t used = 0, got = 0;
        enum libdeflate_result r = libdeflate_deflate_decompress_ex(z, in, in_len, d->inflated, cap, &used, &got);
        if (r == LIBDEFLATE_SUCCESS) {
            *c = (cursor){.buf = d->inflated, .end = got, .pos = 0, .explicit_vr = true, .big_endian = false};
            break;
        }
        if (r != LIBDEFLATE_INSUFFICIENT_SPACE) {
            rc = ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: its deflated data set does not inflate "
                            "(damaged, cut short, or not deflated)");
            break;
        }
        if (cap >= max) {
            rc = ms_err_set(err, MS_ETOOBIG, "DICOM's deflated data set inflates to over %zu bytes (%.1f MiB), "
                            "the limit for an image file", max, (double)max / (1 << 20));
            break;
        }
        cap = cap > max / 2 ? max : cap * 2;
    }
    libdeflate_free_decompressor(z);
    return rc;
}

void dicom_image_free(dicom_image *d)
{
    free(d->inflated);
    d->inflated = NULL;
}

int dicom_parse(const uint8_t *buf, size_t len, size_t max_inflated, dicom_image *d, ms_err *err)
{
    memset(d, 0, sizeof *d);
    d->slope = 1.0;
    data_set_kind kind = data_set_kind_of(buf, len);
    if (kind == DATA_SET_NONE)
        return ms_err_set(err, MS_EFORMAT, "not a DICOM file: neither \"DICM\" after a 128-byte preamble nor a "
                          "DICOM data set at its start");
    cursor c = {.buf = buf, .end = len};
    int rc;
    if (kind == DATA_SET_PART10 || kind == DATA_SET_BARE_META) {
        rc = read_meta_group(&c, kind == DATA_SET_PART10 ? 132 : 0, d, err);
        if (rc == 0 && !strcmp(d->transfer_syntax, DEFLATED_UID))
            rc = inflate_data_set(buf + c.pos, len - c.pos, max_inflated, d, &c, err);
    } else {
        snprintf(d->transfer_syntax, sizeof d->transfer_syntax, "%s",
                 kind == DATA_SET_BARE_EXPLICIT ? "1.2.840.10008.1.2.1" : "1.2.840.10008.1.2");
        rc = choose_syntax(d->transfer_syntax, d, &c, err);
        d->bare = 1;
    }
    if (rc)
        return rc;
    header_values h = {.samples = -1, .rows = -1, .cols = -1, .bits_allocated = -1, .bits_stored = -1,
                       .high_bit = -1, .pixel_rep = 0, .planar = 0, .padding = -1, .padding_limit = -1,
                       .frames = 1};
    if ((rc = read_top_level(&c, d, &h, err)))
        return rc;
    if (!isfinite(d->slope) || !isfinite(d->intercept))
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: its rescale is not finite");
    return check_layout(d, &h, err);
}

size_t dicom_frame_size(const dicom_image *d)
{
    return (size_t)d->rows * (size_t)d->cols * (size_t)d->samples * (size_t)(d->bits_allocated / 8);
}

/* ---- encapsulated frames ---- */

typedef struct fragment {
    size_t item;           /* offset of the item header from the first fragment's */
    const uint8_t *data;
    size_t len;
} fragment;

/* The next fragment at *pos (an offset into d->pixel_data); false at the end. */
static bool next_fragment(const dicom_image *d, size_t *pos, fragment *f)
{
    if (d->pixel_len - *pos < 8)
        return false;
    const uint8_t *p = d->pixel_data + *pos;
    f->item = *pos;
    f->len = rd32(p + 4, false);
    f->data = p + 8;
    *pos += 8 + f->len; /* read_fragments checked every item's bounds */
    return true;
}

static bool ends_jpeg(const fragment *f)
{
    size_t n = f->len;
    while (n > 0 && f->data[n - 1] == 0x00) /* fragments are padded to an even length */
        n--;
    return n >= 2 && f->data[n - 2] == 0xff && f->data[n - 1] == 0xd9;
}

/* The end of the first frame, as an offset of the fragments' item headers. */
static size_t first_frame_end(const dicom_image *d)
{
    if (d->frames > 1 && d->offset_table_len >= 8) {
        uint32_t next = rd32(d->offset_table + 4, false);
        return next > 0 ? next : d->pixel_len;
    }
    if (d->frames > 1) {
        size_t pos = 0;
        fragment f;
        while (next_fragment(d, &pos, &f))
            if (d->encoding == DICOM_RLE || ends_jpeg(&f))
                return pos;
    }
    return d->pixel_len;
}

int dicom_frame_bytes(const dicom_image *d, uint8_t **out, size_t *out_len, ms_err *err)
{
    *out = NULL;
    *out_len = 0;
    size_t end = first_frame_end(d), total = 0, pos = 0;
    fragment f;
    while (next_fragment(d, &pos, &f) && f.item < end)
        total += f.len;
    if (total == 0)
        return ms_err_set(err, MS_EFORMAT, "DICOM is corrupt: the first frame of its Pixel Data is empty");
    uint8_t *buf = malloc(total);
    if (!buf)
        return ms_err_set(err, MS_ENOMEM, "no memory for a DICOM frame of %zu bytes", total);
    size_t at = 0;
    pos = 0;
    while (next_fragment(d, &pos, &f) && f.item < end) {
        memcpy(buf + at, f.data, f.len);
        at += f.len;
    }
    *out = buf;
    *out_len = total;
    return 0;
}

/* ---- RLE Lossless (PS3.5 annex G) ---- */

/* One PackBits segment into n bytes at out, every stride-th byte. A run
 * past n is cut (some encoders pad rows); a segment that ends before n
 * bytes is corrupt. */
static bool unpack_segment(const uint8_t *in, size_t in_len, uint8_t *out, size_t n, size_t stride)
{
    size_t i = 0, p = 0;
    while (i < n) {
        if (p >= in_len)
            return false;
        int8_t h = (int8_t)in[p++];
        if (h >= 0) {
            size_t run = (size_t)h + 1;
            if (in_len - p < run)
                return false;
            for (size_t k = 0; k < run && i < n; k++, i++)
                out[i * stride] = in[p + k];
            p += run;
        } else if (h != -128) {
            if (p >= in_len)
                return false;
            uint8_t v = in[p++];
            for (size_t k = 0; k < (size_t)(1 - h) && i < n; k++, i++)
                out[i * stride] = v;
        }
    }
    return true;
}

int dicom_rle_decode(const dicom_image *d, const uint8_t *frame, size_t len, uint8_t *out, ms_err *err)
{
    int bytes = d->bits_allocated / 8, want = d->samples * bytes;
    if (len < 64)
        return ms_err_set(err, MS_EFORMAT, "DICOM RLE frame is corrupt: %zu bytes, no complete header", len);
    uint32_t nseg = rd32(frame, false);
    if (nseg != (uint32_t)want)
        return ms_err_set(err, MS_EFORMAT, "DICOM RLE frame is corrupt: %u segments where %d samples of %d bits "
                          "need %d", nseg, d->samples, d->bits_allocated, want);
    size_t pixels = (size_t)d->rows * (size_t)d->cols, stride = (size_t)want;
    for (int s = 0; s < want; s++) {
        uint32_t start = rd32(frame + 4 + 4 * s, false);
        uint32_t stop = s + 1 < want ? rd32(frame + 8 + 4 * s, false) : (uint32_t)(len > UINT32_MAX ? UINT32_MAX : len);
        if (start < 64 || start > stop || stop > len)
            return ms_err_set(err, MS_EFORMAT, "DICOM RLE frame is corrupt: segment %d spans bytes %u to %u of %zu",
                              s + 1, start, stop, len);
        /* Segments hold each sample's bytes most significant first; the
         * output keeps 16-bit values little endian. */
        int sample = s / bytes, byte = bytes - 1 - s % bytes;
        if (!unpack_segment(frame + start, stop - start, out + (size_t)sample * (size_t)bytes + (size_t)byte, pixels,
                            stride))
            return ms_err_set(err, MS_EFORMAT, "DICOM RLE frame is corrupt or truncated: segment %d ends before its "
                              "%zu values", s + 1, pixels);
    }
    return 0;
}

/* ---- to 8-bit gray ---- */

/* The stored value of one raw sample word. */
static int32_t stored_value(const dicom_image *d, uint32_t raw)
{
    int shift = d->high_bit + 1 - d->bits_stored;
    uint32_t mask = d->bits_stored >= 32 ? 0xffffffffu : (1u << d->bits_stored) - 1;
    uint32_t v = (raw >> shift) & mask;
    if (d->is_signed && (v >> (d->bits_stored - 1)) & 1)
        return (int32_t)v - (int32_t)(1u << d->bits_stored);
    return (int32_t)v;
}

static uint8_t round_gray(double y)
{
    if (!(y > 0)) /* NaN too */
        return 0;
    return y >= 254.5 ? 255 : (uint8_t)floor(y + 0.5);
}

static double voi_window(const dicom_image *d, double m)
{
    double c = d->window_center, w = d->window_width;
    switch (d->voi_function) {
    case DICOM_VOI_SIGMOID: return 255.0 / (1.0 + exp(-4.0 * (m - c) / w));
    case DICOM_VOI_LINEAR_EXACT:
        if (m <= c - w / 2)
            return 0;
        if (m > c + w / 2)
            return 255;
        return (m - c) / w * 255.0 + 127.5;
    default:
        if (m <= c - 0.5 - (w - 1) / 2)
            return 0;
        if (m > c - 0.5 + (w - 1) / 2)
            return 255;
        return ((m - (c - 0.5)) / (w - 1) + 0.5) * 255.0;
    }
}

static double voi_table(const dicom_image *d, double m)
{
    const dicom_voi_lut *t = &d->voi_lut;
    double at = floor(m) - t->first;
    long i = at < 0 ? 0 : at >= t->entries ? t->entries - 1 : (long)at;
    unsigned v = t->data_bytes == 2 ? rd16(t->data + 2 * i, d->big_endian) : t->data[i];
    double top = (double)((1u << t->bits) - 1);
    return (v > top ? top : v) * 255.0 / top;
}

/* The gray level of stored value v, for a frame whose values span
 * [vmin, vmax]. */
static uint8_t gray_of(const dicom_image *d, int32_t v, int32_t vmin, int32_t vmax)
{
    double m = v * d->slope + d->intercept, y;
    if (d->has_window) {
        y = voi_window(d, m);
    } else if (d->has_voi_lut) {
        y = voi_table(d, m);
    } else if (d->bits_stored == 8 && !d->is_signed && d->slope == 1.0 && d->intercept == 0.0) {
        y = v;
    } else {
        double a = vmin * d->slope + d->intercept, b = vmax * d->slope + d->intercept;
        double lo = fmin(a, b), hi = fmax(a, b);
        y = hi > lo ? (m - lo) * 255.0 / (hi - lo) : 0.0;
    }
    uint8_t g = round_gray(y);
    return d->photometric == DICOM_MONOCHROME1 ? (uint8_t)(255 - g) : g;
}

/* A stored value that marks padding: shown black, whatever the window and
 * the photometric interpretation say. */
static bool is_padding(const dicom_image *d, int32_t v)
{
    return d->has_padding && v >= d->padding_lo && v <= d->padding_hi;
}

/* Raw sample word i of a one-sample frame. */
static uint32_t raw_word(const uint8_t *frame, size_t i, int bytes, bool be)
{
    if (bytes == 1)
        return frame[i];
    return rd16(frame + 2 * i, be);
}

static int mono_to_gray8(const dicom_image *d, const uint8_t *frame, int bytes, bool be, uint8_t *out, ms_err *err)
{
    size_t n = (size_t)d->rows * (size_t)d->cols;
    /* vmin..vmax: every value, the table's span; rmin..rmax: the image's
     * own values, padding left out, for the range mapping. */
    int32_t vmin = INT32_MAX, vmax = INT32_MIN, rmin = INT32_MAX, rmax = INT32_MIN;
    for (size_t i = 0; i < n; i++) {
        int32_t v = stored_value(d, raw_word(frame, i, bytes, be));
        vmin = v < vmin ? v : vmin;
        vmax = v > vmax ? v : vmax;
        if (!is_padding(d, v)) {
            rmin = v < rmin ? v : rmin;
            rmax = v > rmax ? v : rmax;
        }
    }
    if (vmax < vmin) /* no pixels */
        return 0;
    if (rmax < rmin) /* padding only */
        rmin = rmax = 0;
    /* Stored values have at most 16 bits, so the table has at most 2^16 entries. */
    size_t span = (size_t)((int64_t)vmax - vmin) + 1;
    uint8_t *lut = span <= 65536 ? malloc(span) : NULL;
    if (!lut)
        return ms_err_set(err, MS_ENOMEM, "no memory for a DICOM lookup table");
    for (size_t k = 0; k < span; k++) {
        int32_t v = vmin + (int32_t)k;
        lut[k] = is_padding(d, v) ? 0 : gray_of(d, v, rmin, rmax);
    }
    for (size_t i = 0; i < n; i++)
        out[i] = lut[stored_value(d, raw_word(frame, i, bytes, be)) - vmin];
    free(lut);
    return 0;
}

int dicom_gray8(const dicom_image *d, const uint8_t *frame, int decoded, uint8_t *out, ms_err *err)
{
    int bytes = d->bits_allocated / 8;
    if (d->samples == 1)
        return mono_to_gray8(d, frame, bytes, decoded ? false : (bool)d->big_endian, out, err);
    /* Three 8-bit samples, interleaved (decoded frames are) or planar. */
    size_t n = (size_t)d->rows * (size_t)d->cols;
    bool planar = d->planar && !decoded;
    size_t step = planar ? 1 : 3, plane = planar ? n : 1;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = frame + i * step;
        if (d->photometric == DICOM_YBR_FULL)
            out[i] = p[0];
        else
            out[i] = (uint8_t)((19595u * p[0] + 38470u * p[plane] + 7471u * p[2 * plane] + 32768u) >> 16);
    }
    return 0;
}

int dicom_gray8_from_jpeg(const dicom_image *d, uint8_t *px, ms_err *err)
{
    /* JPEG gives 8-bit samples, whatever Bits Stored says within 8. */
    dicom_image eight = *d;
    eight.bits_allocated = 8;
    eight.bits_stored = 8;
    eight.high_bit = 7;
    eight.is_signed = 0;
    return mono_to_gray8(&eight, px, 1, false, px, err);
}

/* ---- metadata ---- */

/* "062Y", "062M", "010W", "003D" or plain digits "62" (seen in the wild)
 * to whole years; -1 when unreadable or above 200. */
static int age_years(const char *s)
{
    size_t n = strlen(s), digits = 0;
    while (digits < n && isdigit((unsigned char)s[digits]))
        digits++;
    if (digits == 0 || digits > 3 || (n != digits && n != digits + 1))
        return -1;
    int v = atoi(s);
    char unit = n > digits ? s[digits] : 'Y';
    switch (unit) {
    case 'Y': return v <= 200 ? v : -1;
    case 'M': return v / 12;
    case 'W': return v / 52;
    case 'D': return v / 365;
    default: return -1;
    }
}

int image_dicom_metadata(const void *buf, size_t len, image_dicom_meta *m, ms_err *err)
{
    memset(m, 0, sizeof *m);
    m->age = -1;
    dicom_image d;
    int rc = dicom_parse(buf, len, image_default_limits().max_bytes, &d, err);
    dicom_image_free(&d); /* the attributes below are copies */
    if (rc)
        return rc;
    memcpy(m->patient_id, d.patient_id, sizeof m->patient_id);
    memcpy(m->view, d.view_position, sizeof m->view);
    memcpy(m->modality, d.modality, sizeof m->modality);
    memcpy(m->body_part, d.body_part, sizeof m->body_part);
    if (!strcmp(d.patient_sex, "M") || !strcmp(d.patient_sex, "F"))
        m->sex = d.patient_sex[0];
    m->age = age_years(d.patient_age);
    /* DA is YYYYMMDD; shown as the ISO date the labels files use. */
    const char *s = d.study_date;
    bool date = strlen(s) == 8;
    for (int i = 0; date && i < 8; i++)
        date = isdigit((unsigned char)s[i]);
    if (date)
        snprintf(m->study_date, sizeof m->study_date, "%.4s-%.2s-%.2s", s, s + 4, s + 6);
    return 0;
}
