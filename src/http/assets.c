/*
 * assets.c - the web page's files, from the table tools/embed_assets.c
 * generates at build time. A request path is only ever compared with the
 * embedded names: nothing here touches the file system.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "http/assets.h"
#include "http/http_internal.h"
#include "util/sha256.h"

#define MAX_ASSETS 64

static char asset_etags[MAX_ASSETS][72];
static pthread_once_t etags_once = PTHREAD_ONCE_INIT;

/* Content hashes as ETags, computed once: the browser revalidates with
 * If-None-Match and gets 304 until the binary changes. */
static void compute_etags(void)
{
    for (int i = 0; i < MAX_ASSETS && web_assets[i].name; i++) {
        char hex[65];
        ms_sha256_hex(web_assets[i].data, web_assets[i].len, hex);
        snprintf(asset_etags[i], sizeof asset_etags[i], "\"%.32s\"", hex);
    }
}

static const char *mime_for(const char *name)
{
    static const struct {
        const char *ext, *mime;
    } types[] = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
        {".json", "application/json"},
    };
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(dot, types[i].ext))
            return types[i].mime;
    return "application/octet-stream";
}

int asset_find(const char *path, asset_ref *out)
{
    if (path[0] != '/')
        return MS_ENOTFOUND;
    const char *name = path[1] ? path + 1 : "index.html";
    pthread_once(&etags_once, compute_etags);
    for (int i = 0; i < MAX_ASSETS && web_assets[i].name; i++) {
        if (strcmp(web_assets[i].name, name))
            continue;
        out->data = web_assets[i].data;
        out->len = web_assets[i].len;
        out->mime = mime_for(name);
        out->etag = asset_etags[i];
        return 0;
    }
    return MS_ENOTFOUND;
}
