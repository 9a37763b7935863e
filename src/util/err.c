#include "util/err.h"

#include "util/text.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int ms_err_set(ms_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        /* The message is one line whatever the text it quotes (a file name, a label). */
        ms_text_make_printable(err->msg);
        err->code = code;
    }
    return code;
}

int ms_err_prefix(ms_err *err, const char *fmt, ...)
{
    if (!err)
        return MS_EINTERNAL;
    char head[256], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* Truncation is fine: a long message loses its tail, never its head. */
    size_t n = strlen(head);
    if (n >= sizeof err->msg)
        n = sizeof err->msg - 1;
    memcpy(err->msg, head, n);
    size_t rest = strnlen(old, sizeof old);
    if (rest > sizeof err->msg - 1 - n)
        rest = sizeof err->msg - 1 - n;
    memcpy(err->msg + n, old, rest);
    err->msg[n + rest] = '\0';
    ms_text_make_printable(err->msg);
    return err->code;
}

void ms_err_clear(ms_err *err)
{
    if (err) {
        err->code = MS_OK;
        err->msg[0] = '\0';
    }
}

const char *ms_code_name(int code)
{
    switch (code) {
    case MS_OK: return "ok";
    case MS_EINVAL: return "invalid_argument";
    case MS_ENOMEM: return "out_of_memory";
    case MS_EIO: return "io_error";
    case MS_EFORMAT: return "bad_format";
    case MS_ETOOBIG: return "too_large";
    case MS_EUNSUPPORTED: return "unsupported";
    case MS_ENOTFOUND: return "not_found";
    case MS_ECONFLICT: return "conflict";
    case MS_EBUSY: return "busy";
    case MS_EDB: return "database_error";
    case MS_EINTR: return "interrupted";
    case MS_ENOTIMAGE: return "not_an_image";
    default: return "internal_error";
    }
}
