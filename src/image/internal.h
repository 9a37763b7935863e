/*
 * internal.h - what the image module's files share and nobody else needs.
 */
#ifndef MS_IMAGE_INTERNAL_H
#define MS_IMAGE_INTERNAL_H

#include <stddef.h>

#include "util/err.h"

/* For a PNG that image_probe() accepted: inflates its pixel data (the
 * concatenated IDAT chunks) without keeping it and refuses, with
 * MS_EFORMAT, a stream that inflates to more than the image its header
 * declares. libpng decodes the rows the header asks for and then inflates
 * whatever follows "to check it", so a 1x1 header over megabytes of
 * compressed zeros would cost up to 1000 times its size in CPU; this check
 * stops at the first byte too many instead. The check costs an extra
 * inflate, about a third of a PNG's decode time, so it is skipped when the
 * compressed pixel data is small enough (under about 254 KiB) that even all
 * of it inflating as excess would cost at most 256 MiB of inflate, a few
 * tenths of a second. Streams that are short or corrupt pass: libpng
 * reports those itself. Returns 0 or MS_EFORMAT. */
int png_check_stream(const void *buf, size_t len, ms_err *err);

#endif
