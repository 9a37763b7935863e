#include "util/idlist.h"

#include <stddef.h>

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

size_t ms_id_parse(const char *s, int64_t *id)
{
    if (s[0] < '1' || s[0] > '9')
        return 0;
    int64_t v = 0;
    size_t i = 0;
    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        int d = s[i] - '0';
        if (v > (INT64_MAX - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    *id = v;
    return i;
}

/* The item starting at s, up to the next comma, for a message. */
static int item_len(const char *s)
{
    int n = 0;
    while (s[n] && s[n] != ',' && n < 40)
        n++;
    return n;
}

int ms_id_list_parse(const char *text, int64_t *ids, int max, int *n, ms_err *err)
{
    *n = 0;
    const char *s = text ? text : "";
    while (is_space(*s))
        s++;
    if (!*s)
        return 0;
    for (;;) {
        while (is_space(*s))
            s++;
        int64_t id;
        size_t used = ms_id_parse(s, &id);
        const char *after = s + used;
        while (used && is_space(*after))
            after++;
        if (!used && (!*s || *s == ','))
            return ms_err_set(err, MS_EINVAL, "an empty item in the id list '%.40s'", text);
        if (!used || (*after && *after != ','))
            return ms_err_set(err, MS_EINVAL, "'%.*s' is not an image id (ids are whole numbers from 1, "
                              "separated by commas)", item_len(s), s);
        if (*n >= max)
            return ms_err_set(err, MS_EINVAL, "more than %d ids", max);
        ids[(*n)++] = id;
        if (!*after)
            return 0;
        s = after + 1;
    }
}
