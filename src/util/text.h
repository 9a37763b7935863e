/*
 * text.h - untrusted text made safe to show on a terminal.
 *
 * File names, labels, patient ids and model names come from files and from
 * the network. Written raw to a terminal, their control characters act: an
 * ESC sequence in a file name can recolour, retitle or clear the user's
 * terminal, a line break in a label splits a table row, and a carriage
 * return can overwrite what a line said. Every face that prints stored or
 * outside text as text (the CLI's tables, reports and messages; ms_err
 * messages, which must be one line) passes it through here first. JSON
 * output needs none of this: jansson escapes control characters.
 *
 * What is replaced, each by one '?' (as GNU ls does on a terminal):
 * - the C0 controls U+0000-U+001F and DEL (U+007F), tab and line breaks included;
 * - the C1 controls U+0080-U+009F, which terminals in UTF-8 mode obey too;
 * - each byte that is not part of well-formed UTF-8.
 * Everything else, all printable UTF-8 included, is kept as it is. A
 * multibyte character cut short by the end of the text (a message truncated
 * by snprintf) is dropped rather than shown as '?'.
 */
#ifndef MS_TEXT_H
#define MS_TEXT_H

#include <stddef.h>

/* Copies src (NULL reads as "") into dst, at most cap - 1 bytes and a NUL,
 * made printable as above; a copy cut by cap never ends inside a character.
 * Returns dst. cap must be at least 1. */
char *ms_text_printable(char *dst, size_t cap, const char *src);

/* The same in place: s never grows, so this cannot fail. */
void ms_text_make_printable(char *s);

/* Is s (n bytes) printable already, i.e. would the functions above keep it as it is? */
int ms_text_is_printable(const char *s, size_t n);

/* The UTF-8 character at s, n > 0 bytes left: returns its length (1-4)
 * with its code point in *cp; 0 when s does not start a well-formed one (a
 * stray continuation byte, a bad continuation, an overlong form, a
 * surrogate, above U+10FFFF); -1 when the end of the text cuts it short. */
int ms_utf8_char(const unsigned char *s, size_t n, unsigned *cp);

/* For text that is kept or sent on rather than shown (a file name stored as
 * an image's original name, a path in a JSON report): copies src (NULL reads
 * as "") into dst as well-formed UTF-8. Each byte that is not part of a
 * well-formed character, including a character cut short by the end of src,
 * becomes U+FFFD, the replacement character; everything else, controls
 * included, is kept. Writes at most cap - 1 bytes and a NUL, never ending
 * inside a character; cap must be at least 1, and 3 * strlen(src) + 1 always
 * holds the whole result. Returns how many bytes of src were replaced in
 * what was copied (0 when src fits: src was well-formed UTF-8). */
size_t ms_utf8_repair(char *dst, size_t cap, const char *src);

/* The same into a new string of the whole result: malloc'd, the caller's to
 * free; NULL when out of memory. *replaced (when not NULL) gets the count. */
char *ms_utf8_repaired(const char *src, size_t *replaced);

#endif
