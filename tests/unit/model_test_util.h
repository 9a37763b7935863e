/*
 * model_test_util.h - small helpers shared by the model module's unit tests
 * (tests/unit/test_model*.c): files, the shared/ folder, tolerances, and
 * running the Python reference tools.
 */
#ifndef MS_MODEL_TEST_UTIL_H
#define MS_MODEL_TEST_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define SKIP_EXIT 77

/* Reads a whole file; NULL when it cannot. *len gets the size. */
static inline void *mt_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf && len)
        *len = (size_t)n;
    return buf;
}

static inline int mt_write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(buf, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}

static inline int mt_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* $MEDSEARCH_SHARED when it holds path (relative), else NULL. */
static inline const char *mt_shared(const char *need)
{
    const char *s = getenv("MEDSEARCH_SHARED");
    static char buf[4096];
    if (!s || !*s)
        return NULL;
    snprintf(buf, sizeof buf, "%s/%s", s, need);
    return mt_exists(buf) ? s : NULL;
}

/* Largest |a[i] - b[i]| relative to the largest |b[i]|. */
static inline double mt_rel_err(const float *a, const float *b, size_t n)
{
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > worst || d != d)
            worst = d != d ? INFINITY : d;
        if (fabs(b[i]) > scale)
            scale = fabs(b[i]);
    }
    return scale > 0 ? worst / scale : worst;
}

static inline double mt_max_abs_diff(const float *a, const float *b, size_t n)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > worst || d != d)
            worst = d != d ? INFINITY : d;
    }
    return worst;
}

/* Whether /usr/bin/python3 imports every module of a comma-separated list
 * ("torch,onnx"). Debian's python3-torch etc. are visible only to it. */
static inline int mt_python_has(const char *modules)
{
    char cmd[512];
    if (!mt_exists("/usr/bin/python3"))
        return 0;
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c 'import %s' >/dev/null 2>&1", modules);
    return system(cmd) == 0;
}

/* Runs a shell command; 0 when it exits 0. */
static inline int mt_run(const char *cmd)
{
    int rc = system(cmd);
    return rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0 ? 0 : -1;
}

/* A fresh temporary directory (mkdtemp); the caller removes it. */
static inline char *mt_tempdir(void)
{
    const char *base = getenv("TMPDIR");
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/medsearch-model-XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(buf);
}

static inline void mt_rmtree(const char *dir)
{
    char cmd[700];
    if (!dir || strncmp(dir, "/tmp/", 5) != 0 || strstr(dir, "medsearch-model-") == NULL)
        return; /* only what mt_tempdir made */
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

#endif
