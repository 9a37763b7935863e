/*
 * err.h - the error convention every MedSearch module follows.
 *
 * Library functions return 0 on success or a negative MS_E* code on failure,
 * and fill the caller's ms_err with that code and a one-line, human-readable
 * message naming the problem ("image is 30000x30000, over the 50 Mpx limit").
 * Library code never prints and never exits: the faces (CLI, HTTP) decide how
 * to show the message. A NULL ms_err is allowed: the message is then dropped.
 * The message is always printable, one-line UTF-8: control characters and
 * malformed bytes of the text it quotes become '?' (util/text.h), so a face
 * may show it on a terminal as it is.
 */
#ifndef MS_ERR_H
#define MS_ERR_H

#include <stddef.h>

enum ms_code {
    MS_OK = 0,
    MS_EINVAL = -1,        /* bad argument or bad option value */
    MS_ENOMEM = -2,        /* allocation failed */
    MS_EIO = -3,           /* read/write/fsync failed, disk full */
    MS_EFORMAT = -4,       /* corrupt or malformed input (image, ONNX, index file) */
    MS_ETOOBIG = -5,       /* over a size, pixel or dimension limit */
    MS_EUNSUPPORTED = -6,  /* well-formed but not supported (op, image type) */
    MS_ENOTFOUND = -7,     /* no such image, file, tensor */
    MS_ECONFLICT = -8,     /* exists already, or model mismatch */
    MS_EBUSY = -9,         /* queue full, try later */
    MS_EDB = -10,          /* database error */
    MS_EINTERNAL = -11,    /* a bug: an invariant did not hold */
    MS_EINTR = -12,        /* stopped at the user's request (Ctrl-C, SIGTERM) */
    MS_ENOTIMAGE = -13,    /* well-formed, but holds no image (a DICOMDIR, a DICOM report) */
};

/* The last code of ms_code: every code is in MS_ELAST..-1. */
#define MS_ELAST MS_ENOTIMAGE

typedef struct ms_err {
    int code;
    char msg[512];
} ms_err;

/* Sets err (when not NULL) and returns code, so callers can write
 * `return ms_err_set(err, MS_EINVAL, "k must be positive, got %d", k);` */
int ms_err_set(ms_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes the existing message with context: "model.onnx: " + msg. Returns err->code. */
int ms_err_prefix(ms_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void ms_err_clear(ms_err *err);

/* Short stable name of a code ("format", "too_big"), used as the API error code. */
const char *ms_code_name(int code);

#endif
