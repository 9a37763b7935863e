#include "util/text.h"

#include <stdlib.h>
#include <string.h>

int ms_utf8_char(const unsigned char *s, size_t n, unsigned *cp)
{
    unsigned c = s[0], min;
    int len;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        len = 2, min = 0x80, c &= 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, min = 0x800, c &= 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4, min = 0x10000, c &= 0x07;
    } else {
        return 0;
    }
    for (int k = 1; k < len; k++) {
        if ((size_t)k >= n)
            return -1;
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[k] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return len;
}

static int is_control(unsigned cp)
{
    return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F);
}

/* The core of both forms: reads n bytes of src, writes at most cap - 1 to
 * dst (which may be src: the output never outgrows the input) and a NUL. */
static void make_printable(char *dst, size_t cap, const char *src, size_t n)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0, o = 0;
    while (i < n) {
        unsigned cp;
        int len = ms_utf8_char(s + i, n - i, &cp);
        if (len < 0)
            break; /* cut short at the end: dropped */
        if (len == 0 || is_control(cp)) {
            if (o + 1 > cap - 1)
                break;
            dst[o++] = '?';
            i += len > 0 ? (size_t)len : 1;
            continue;
        }
        if (o + (size_t)len > cap - 1)
            break; /* never half a character */
        memmove(dst + o, s + i, (size_t)len);
        o += (size_t)len;
        i += (size_t)len;
    }
    dst[o] = '\0';
}

char *ms_text_printable(char *dst, size_t cap, const char *src)
{
    if (!src)
        src = "";
    make_printable(dst, cap, src, strlen(src));
    return dst;
}

void ms_text_make_printable(char *s)
{
    size_t n = strlen(s);
    make_printable(s, n + 1, s, n);
}

int ms_text_is_printable(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned cp;
        int len = ms_utf8_char(u + i, n - i, &cp);
        if (len <= 0 || is_control(cp))
            return 0;
        i += (size_t)len;
    }
    return 1;
}

size_t ms_utf8_repair(char *dst, size_t cap, const char *src)
{
    static const char replacement[] = "\xef\xbf\xbd"; /* U+FFFD */
    const unsigned char *s = (const unsigned char *)(src ? src : "");
    size_t n = strlen((const char *)s), i = 0, o = 0, replaced = 0;
    while (i < n) {
        unsigned cp;
        int len = ms_utf8_char(s + i, n - i, &cp);
        const char *piece = len > 0 ? (const char *)s + i : replacement;
        size_t piece_len = len > 0 ? (size_t)len : 3;
        if (o + piece_len > cap - 1)
            break; /* never half a character */
        memcpy(dst + o, piece, piece_len);
        o += piece_len;
        i += len > 0 ? (size_t)len : 1;
        replaced += len <= 0;
    }
    dst[o] = '\0';
    return replaced;
}

char *ms_utf8_repaired(const char *src, size_t *replaced)
{
    size_t cap = 3 * strlen(src ? src : "") + 1; /* each byte at worst one U+FFFD */
    char *out = malloc(cap);
    if (!out)
        return NULL;
    size_t n = ms_utf8_repair(out, cap, src);
    if (replaced)
        *replaced = n;
    return out;
}
