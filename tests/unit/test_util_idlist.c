/*
 * test_util_idlist.c - the id lists of --like/--unlike and like=/unlike=.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "util/idlist.h"

static int parse(const char *text, int64_t *ids, int max, int *n, ms_err *err)
{
    memset(err, 0, sizeof *err);
    return ms_id_list_parse(text, ids, max, n, err);
}

static void test_lists(void **state)
{
    (void)state;
    int64_t ids[4];
    int n = -1;
    ms_err err;
    assert_int_equal(parse("12,17,33", ids, 4, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_true(ids[0] == 12 && ids[1] == 17 && ids[2] == 33);
    assert_int_equal(parse(" 5 , 6\t", ids, 4, &n, &err), 0);
    assert_true(n == 2 && ids[0] == 5 && ids[1] == 6);
    assert_int_equal(parse("7,7", ids, 4, &n, &err), 0); /* repeats are the caller's */
    assert_true(n == 2 && ids[1] == 7);
    assert_int_equal(parse("9223372036854775807", ids, 4, &n, &err), 0);
    assert_true(n == 1 && ids[0] == INT64_MAX);
    assert_int_equal(parse("", ids, 4, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(parse("  ", ids, 4, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(parse(NULL, ids, 4, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(parse("1,2,3,4", ids, 4, &n, &err), 0);
    assert_int_equal(n, 4);
}

static void test_refusals(void **state)
{
    (void)state;
    int64_t ids[4];
    int n;
    ms_err err;
    static const char *bad[] = {"0", "-1", "+1", "01", "1.5", "0x10", "12a", "1 2", "a",
                                "9223372036854775808", "99999999999999999999", "1;2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(parse(bad[i], ids, 4, &n, &err), MS_EINVAL);
        assert_non_null(strstr(err.msg, "is not an image id"));
    }
    assert_int_equal(parse("1,x,3", ids, 4, &n, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "'x'"));
    static const char *empty[] = {"1,", ",1", "1,,2", ",", "1, ,2"};
    for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++) {
        assert_int_equal(parse(empty[i], ids, 4, &n, &err), MS_EINVAL);
        assert_non_null(strstr(err.msg, "empty item"));
    }
    assert_int_equal(parse("1,2,3,4,5", ids, 4, &n, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "more than 4"));
    /* A long bad item is quoted in part, the message stays one line. */
    char longitem[300];
    memset(longitem, 'z', sizeof longitem - 1);
    longitem[sizeof longitem - 1] = '\0';
    assert_int_equal(parse(longitem, ids, 4, &n, &err), MS_EINVAL);
    assert_true(strlen(err.msg) < 120);
}

static void test_single_id(void **state)
{
    (void)state;
    int64_t id = 0;
    assert_int_equal(ms_id_parse("42/thumbnail", &id), 2);
    assert_true(id == 42);
    assert_int_equal(ms_id_parse("042", &id), 0);
    assert_int_equal(ms_id_parse("", &id), 0);
    assert_int_equal(ms_id_parse("9223372036854775808", &id), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_single_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
