#include "util/progress.h"

#include <unistd.h>

#include "util/timing.h"

#define BAR_WIDTH 24

void progress_init(progress *p, FILE *f, const char *label, const char *unit, size_t total, int tty)
{
    p->f = f;
    p->label = label;
    p->unit = unit;
    p->total = total;
    p->done = 0;
    p->tty = tty >= 0 ? tty : isatty(fileno(f));
    p->enabled = f != NULL;
    p->drawn = 0;
    p->every_s = 10.0;
    p->start_ns = p->last_ns = ms_now_ns();
}

double progress_rate(const progress *p)
{
    double s = ms_elapsed_ms(p->start_ns) / 1000.0;
    return s > 0 ? (double)p->done / s : 0;
}

void progress_format_duration(double seconds, char *buf, size_t len)
{
    if (seconds < 0 || seconds > 1e7) {
        snprintf(buf, len, "?");
        return;
    }
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, len, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
    else if (s >= 60)
        snprintf(buf, len, "%ldm%02lds", s / 60, s % 60);
    else
        snprintf(buf, len, "%lds", s);
}

/* "1200/4759  25%  38.2 images/s  ETA 1m33s" */
static void status_text(const progress *p, char *buf, size_t len)
{
    double rate = progress_rate(p);
    char eta[32] = "?";
    if (rate > 0 && p->total >= p->done)
        progress_format_duration((double)(p->total - p->done) / rate, eta, sizeof eta);
    int pct = p->total ? (int)(100.0 * (double)p->done / (double)p->total) : 100;
    snprintf(buf, len, "%zu/%zu %3d%%  %.1f %s/s  ETA %s", p->done, p->total, pct, rate, p->unit, eta);
}

static void draw(progress *p)
{
    char text[160];
    status_text(p, text, sizeof text);
    if (p->tty) {
        char bar[BAR_WIDTH + 1];
        size_t fill = p->total ? (size_t)BAR_WIDTH * p->done / p->total : BAR_WIDTH;
        if (fill > BAR_WIDTH)
            fill = BAR_WIDTH;
        for (size_t i = 0; i < BAR_WIDTH; i++)
            bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
        bar[BAR_WIDTH] = '\0';
        fprintf(p->f, "\r\033[K%s [%s] %s", p->label, bar, text);
        p->drawn = 1;
    } else {
        fprintf(p->f, "%s: %s\n", p->label, text);
    }
    fflush(p->f);
}

void progress_update(progress *p, size_t done)
{
    p->done = done;
    if (!p->enabled)
        return;
    uint64_t now = ms_now_ns();
    double since = (double)(now - p->last_ns) / 1e9;
    /* A bar is redrawn at most 10 times a second; plain lines every every_s. */
    if (since < (p->tty ? 0.1 : p->every_s))
        return;
    p->last_ns = now;
    draw(p);
}

void progress_clear(progress *p)
{
    if (p->enabled && p->tty && p->drawn) {
        fprintf(p->f, "\r\033[K");
        fflush(p->f);
        p->drawn = 0;
    }
}

void progress_finish(progress *p)
{
    if (!p->enabled)
        return;
    draw(p);
    if (p->tty)
        fputc('\n', p->f);
    p->drawn = 0;
    fflush(p->f);
}
