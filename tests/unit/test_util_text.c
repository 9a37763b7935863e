/*
 * test_util_text.c - util/text.h: untrusted text made printable (control
 * characters, C1 controls, malformed UTF-8, cuts), and ms_err's messages,
 * which pass through it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "util/err.h"
#include "util/text.h"

static const char *pr(const char *s)
{
    static char buf[256];
    return ms_text_printable(buf, sizeof buf, s);
}

static void test_printable_text_is_kept(void **state)
{
    (void)state;
    const char *kept[] = {
        "", "Effusion", "a b ~!@#$%^&*()[]{}|\\\"'`", "Pleural_Thickening",
        "\xc3\xa9panchement",         /* é */
        "\xc2\xa0nbsp",               /* U+00A0, the first code point after the C1 block */
        "\xe4\xb8\xad\xe6\x96\x87",   /* two CJK characters */
        "\xf0\x9f\xa9\xbb x-ray",     /* U+1FA7B */
        "\xf4\x8f\xbf\xbf",           /* U+10FFFF, the last code point */
    };
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) {
        assert_string_equal(pr(kept[i]), kept[i]);
        assert_true(ms_text_is_printable(kept[i], strlen(kept[i])));
    }
    assert_string_equal(pr(NULL), "");
}

static void test_controls_become_question_marks(void **state)
{
    (void)state;
    /* ESC sequences that recolour, retitle and clear a terminal */
    assert_string_equal(pr("a\x1b[31mred"), "a?[31mred");
    assert_string_equal(pr("X\x1b]0;title\x07Y"), "X?]0;title?Y");
    assert_string_equal(pr("line\nbreak\rtab\tend"), "line?break?tab?end");
    assert_string_equal(pr("\x01\x1f\x7f"), "???");
    /* C1 controls as UTF-8: U+0080, U+009B (CSI), U+009F; one '?' each */
    assert_string_equal(pr("a\xc2\x80" "b\xc2\x9b" "2J\xc2\x9f"), "a?b?2J?");
    assert_false(ms_text_is_printable("a\x1b", 2));
    assert_false(ms_text_is_printable("\xc2\x9b", 2));
    /* a NUL inside a counted text is a control too */
    assert_false(ms_text_is_printable("a\0b", 3));
}

static void test_malformed_utf8(void **state)
{
    (void)state;
    assert_string_equal(pr("a\x9b" "b"), "a?b");           /* a lone C1 byte (CSI in 8-bit terminals) */
    assert_string_equal(pr("\xff\xfe"), "??");
    assert_string_equal(pr("\xc0\xaf"), "??");             /* overlong '/' */
    assert_string_equal(pr("\xe0\x80\xaf"), "???");        /* overlong, three bytes */
    assert_string_equal(pr("\xed\xa0\x80"), "???");        /* a surrogate */
    assert_string_equal(pr("\xf4\x90\x80\x80"), "????");   /* above U+10FFFF */
    assert_string_equal(pr("\xc3(x"), "?(x");              /* a lead byte without its continuation */
    assert_false(ms_text_is_printable("\xff", 1));
    /* a character cut short by the end of the text (a truncated message) is dropped */
    assert_string_equal(pr("ab\xe4\xb8"), "ab");
    assert_string_equal(pr("ab\xf0\x9f\xa9"), "ab");
    assert_false(ms_text_is_printable("ab\xe4\xb8", 4));
}

static void test_cut_by_capacity(void **state)
{
    (void)state;
    char b[8];
    assert_string_equal(ms_text_printable(b, 1, "abc"), "");
    assert_string_equal(ms_text_printable(b, 3, "abc"), "ab");
    /* never half a character: "a" + é (2 bytes) needs 4 bytes with the NUL */
    assert_string_equal(ms_text_printable(b, 3, "a\xc3\xa9"), "a");
    assert_string_equal(ms_text_printable(b, 4, "a\xc3\xa9"), "a\xc3\xa9");
    assert_string_equal(ms_text_printable(b, 5, "\xf0\x9f\xa9\xbb!"), "\xf0\x9f\xa9\xbb");
    assert_string_equal(ms_text_printable(b, 4, "\x1b\x1b\x1b\x1b"), "???");
}

/* Random bytes: the result is printable, no longer than the input, a fixed
 * point, and the in-place form gives the same. */
static void test_random_bytes(void **state)
{
    (void)state;
    srand(7);
    char in[64], out[128], again[128];
    for (int t = 0; t < 20000; t++) {
        size_t n = (size_t)(rand() % 63);
        for (size_t i = 0; i < n; i++) {
            int r = rand() % 4;
            /* bias toward the interesting ranges: controls, C1, lead and continuation bytes */
            in[i] = (char)(r == 0 ? rand() % 0x20 : r == 1 ? 0x80 + rand() % 0x40 : r == 2 ? 0xc0 + rand() % 0x40
                                                                                              : 0x20 + rand() % 0x60);
            if (in[i] == 0)
                in[i] = 1;
        }
        in[n] = '\0';
        ms_text_printable(out, sizeof out, in);
        size_t m = strlen(out);
        assert_true(m <= n);
        assert_true(ms_text_is_printable(out, m));
        assert_string_equal(ms_text_printable(again, sizeof again, out), out);
        char copy[64];
        memcpy(copy, in, n + 1);
        ms_text_make_printable(copy);
        assert_string_equal(copy, out);
    }
}

/* Repair for kept text: only ill-formed bytes change, each into U+FFFD. */
static void test_utf8_repair(void **state)
{
    (void)state;
    char b[64];
    const char *kept[] = {"", "plain.png", "\xc3\xa9panchement", "\xf4\x8f\xbf\xbf", "tab\there\x1b[2J\x7f"};
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) {
        assert_int_equal(ms_utf8_repair(b, sizeof b, kept[i]), 0);
        assert_string_equal(b, kept[i]); /* controls are kept: this is not for showing */
    }
    assert_int_equal(ms_utf8_repair(b, sizeof b, NULL), 0);
    assert_string_equal(b, "");
    /* Latin-1 "Röntgen_é.png": two bytes, two replacement characters */
    assert_int_equal(ms_utf8_repair(b, sizeof b, "R\xf6ntgen_\xe9.png"), 2);
    assert_string_equal(b, "R\xef\xbf\xbdntgen_\xef\xbf\xbd.png");
    assert_int_equal(ms_utf8_repair(b, sizeof b, "\xc0\xaf"), 2); /* overlong: per byte */
    assert_string_equal(b, "\xef\xbf\xbd\xef\xbf\xbd");
    assert_int_equal(ms_utf8_repair(b, sizeof b, "\xed\xa0\x80"), 3); /* a surrogate */
    /* a character cut short by the end of the text is replaced, not dropped */
    assert_int_equal(ms_utf8_repair(b, sizeof b, "ab\xe4\xb8"), 2);
    assert_string_equal(b, "ab\xef\xbf\xbd\xef\xbf\xbd");
    /* cut by capacity: never inside a character, replacement or not */
    assert_int_equal(ms_utf8_repair(b, 3, "a\xff"), 0);
    assert_string_equal(b, "a");
    ms_utf8_repair(b, 4, "a\xc3\xa9");
    assert_string_equal(b, "a\xc3\xa9");
    ms_utf8_repair(b, 1, "abc");
    assert_string_equal(b, "");
    /* the allocating form holds the whole result: every byte a U+FFFD */
    size_t replaced = 0;
    char *whole = ms_utf8_repaired("\xff\xfe\xfd", &replaced);
    assert_non_null(whole);
    assert_int_equal(replaced, 3);
    assert_string_equal(whole, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    free(whole);
    whole = ms_utf8_repaired(NULL, NULL);
    assert_string_equal(whole, "");
    free(whole);
}

/* Random bytes: the repair is well-formed, a fixed point, fits in 3n + 1, and
 * keeps every well-formed character in order. */
static void test_utf8_repair_random(void **state)
{
    (void)state;
    srand(11);
    char in[64], out[3 * 64 + 1], again[3 * 64 + 1];
    for (int t = 0; t < 20000; t++) {
        size_t n = (size_t)(rand() % 63);
        for (size_t i = 0; i < n; i++) {
            int r = rand() % 3;
            in[i] = (char)(r == 0 ? 0x80 + rand() % 0x40 : r == 1 ? 0xc0 + rand() % 0x40 : 1 + rand() % 0x7f);
        }
        in[n] = '\0';
        size_t replaced = ms_utf8_repair(out, sizeof out, in);
        size_t m = strlen(out), kept = 0;
        assert_true(m <= 3 * n);
        for (size_t i = 0; i < m;) { /* well-formed throughout */
            unsigned cp;
            int len = ms_utf8_char((const unsigned char *)out + i, m - i, &cp);
            assert_true(len > 0);
            kept += cp == 0xFFFD ? 0 : (size_t)len;
            i += (size_t)len;
        }
        assert_int_equal(kept + replaced, n); /* every input byte kept or replaced (no U+FFFD in the input) */
        assert_int_equal(ms_utf8_repair(again, sizeof again, out), 0);
        assert_string_equal(again, out);
    }
}

/* ms_err messages are one printable line whatever they quote. */
static void test_err_messages_are_printable(void **state)
{
    (void)state;
    ms_err err;
    assert_int_equal(ms_err_set(&err, MS_EINVAL, "label '%s' is odd", "a\nb\x1b[2J"), MS_EINVAL);
    assert_string_equal(err.msg, "label 'a?b?[2J' is odd");
    assert_int_equal(ms_err_prefix(&err, "%s: ", "file\r.png"), MS_EINVAL);
    assert_string_equal(err.msg, "file?.png: label 'a?b?[2J' is odd");
    /* cut by the buffer inside a character: the broken tail is dropped */
    char longer[sizeof err.msg + 8];
    memset(longer, 'x', sizeof longer);
    memcpy(longer + sizeof err.msg - 3, "\xe4\xb8\xad", 3);
    longer[sizeof longer - 1] = '\0';
    ms_err_set(&err, MS_EINVAL, "%s", longer);
    assert_int_equal(strlen(err.msg), sizeof err.msg - 3);
    assert_true(ms_text_is_printable(err.msg, strlen(err.msg)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_printable_text_is_kept),   cmocka_unit_test(test_controls_become_question_marks),
        cmocka_unit_test(test_malformed_utf8),           cmocka_unit_test(test_cut_by_capacity),
        cmocka_unit_test(test_random_bytes),             cmocka_unit_test(test_err_messages_are_printable),
        cmocka_unit_test(test_utf8_repair),              cmocka_unit_test(test_utf8_repair_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
