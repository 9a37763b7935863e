/*
 * assets.h - the web page's files (web/), embedded into the binary at build
 * time by tools/embed_assets.c. The table ends with a NULL name.
 */
#ifndef MS_ASSETS_H
#define MS_ASSETS_H

#include <stddef.h>

typedef struct web_asset {
    const char *name;            /* base name: "index.html", "app.js", ... */
    const unsigned char *data;   /* static, NUL-terminated for convenience */
    size_t len;
} web_asset;

extern const web_asset web_assets[];

#endif
