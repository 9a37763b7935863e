/*
 * idlist.h - a list of image ids as people type them: "12,17,33".
 *
 * The CLI's --like/--unlike and the API's like=/unlike= take the same
 * text, so they share one parser and one set of error messages. Ids are
 * positive decimal integers that fit int64_t, separated by commas; spaces
 * around an id are allowed, nothing else is (no signs, no hex, no empty
 * items such as "1,,2" or a trailing comma). The empty text, or only
 * spaces, is the empty list.
 */
#ifndef MS_IDLIST_H
#define MS_IDLIST_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

/* One id at the start of s: digits only, no sign or leading zero, at most
 * INT64_MAX ("1".."9223372036854775807"). Returns the characters used, 0
 * when s does not start with a valid id (what follows is not looked at). */
size_t ms_id_parse(const char *s, int64_t *id);

/* Parses text into ids[0..max); *n receives the count. Returns 0, or
 * MS_EINVAL with a message naming the offending item (at most 40 bytes of
 * it) or saying that more than max ids were given. Repeats are kept: what
 * they mean is the caller's business. */
int ms_id_list_parse(const char *text, int64_t *ids, int max, int *n, ms_err *err);

#endif
