/*
 * progress.h - progress of a long job (ingest, re-embed) for a person
 * watching: on a terminal one line redrawn in place
 *   "ingest [=========>          ] 1200/4759  25%  38.2 images/s  ETA 1m33s"
 * and elsewhere (a log, a pipe) a plain line every `every_s` seconds and at
 * the end, so logs stay readable.
 *
 * It writes to the FILE the caller gives (the CLI passes stderr); it is a
 * helper of the faces, not of the library. Not thread-safe: one thread
 * updates it.
 */
#ifndef MS_PROGRESS_H
#define MS_PROGRESS_H

#include <stdint.h>
#include <stdio.h>

typedef struct progress {
    FILE *f;
    const char *label;      /* "ingest" */
    const char *unit;       /* "images" */
    size_t total, done;
    int tty;                /* redraw in place */
    int enabled;
    int drawn;              /* a bar is on screen (tty) */
    double every_s;         /* plain lines: seconds between them */
    uint64_t start_ns, last_ns;
} progress;

/* tty: 1 force a bar, 0 force plain lines, -1 ask isatty(f). */
void progress_init(progress *p, FILE *f, const char *label, const char *unit, size_t total, int tty);
/* done items so far; draws when due. */
void progress_update(progress *p, size_t done);
/* Erases the bar so the caller can print a line; the next update redraws. */
void progress_clear(progress *p);
/* The final state, always printed (a bar gets its newline). */
void progress_finish(progress *p);
/* Items per second since init. */
double progress_rate(const progress *p);
/* Formats "1h02m", "3m07s" or "12s" into buf. */
void progress_format_duration(double seconds, char *buf, size_t len);

#endif
