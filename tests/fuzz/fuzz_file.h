/*
 * fuzz_file.h - for targets whose code under test opens a path: the input
 * as an anonymous in-memory file (memfd), reachable as /proc/self/fd/N; a
 * scratch directory for the files a target writes itself, removed when the
 * target exits; and the seed mode of targets that write their own seeds.
 */
#ifndef MS_FUZZ_FILE_H
#define MS_FUZZ_FILE_H

#include <stddef.h>
#include <stdint.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* Writes the n bytes to a new memfd and its path to path. Returns the fd
 * (the caller closes it) or -1 when it could not be made or filled. */
static inline int fuzz_file_open(const uint8_t *bytes, size_t n, char path[64])
{
    int fd = memfd_create("fuzz-input", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    for (size_t off = 0; off < n;) {
        ssize_t w = write(fd, bytes + off, n - off);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    snprintf(path, 64, "/proc/self/fd/%d", fd);
    return fd;
}

/* The scratch directory's path; a function so that a target that includes
 * this header without using the directory has no unused variable. */
static inline char *fuzz_scratch_path(void)
{
    static char path[4096];
    return path;
}

static inline int fuzz_scratch_remove_entry(const char *path, const struct stat *sb, int type, struct FTW *at)
{
    (void)sb;
    (void)type;
    (void)at;
    remove(path);
    return 0;
}

static inline void fuzz_scratch_remove(void)
{
    nftw(fuzz_scratch_path(), fuzz_scratch_remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Makes a new directory $TMPDIR/NAME_XXXXXX (/tmp without TMPDIR) and
 * returns its path, which lives as long as the process. The directory and
 * what the target wrote into it are removed at a normal exit: libFuzzer ends
 * a run of -max_total_time with exit(), so bounded runs leave nothing behind,
 * while a crash (_Exit) keeps the files (run.sh points TMPDIR into the build
 * folder for that). A process has one such directory. Returns NULL when it
 * could not be made. */
static inline const char *fuzz_scratch_dir(const char *name)
{
    char *path = fuzz_scratch_path();
    const char *tmp = getenv("TMPDIR");
    int n = snprintf(path, 4096, "%s/%s_XXXXXX", tmp && *tmp ? tmp : "/tmp", name);
    if (n < 0 || n >= 4096 || !mkdtemp(path))
        return NULL;
    atexit(fuzz_scratch_remove);
    return path;
}

/* Seed mode: with FUZZ_WRITE_SEEDS=DIR set, write(DIR) writes the target's
 * own seeds (valid inputs only its code can make) and the process exits.
 * tests/fuzz/run.sh finds the targets that call this by its name in their
 * source and runs each so before fuzzing it. */
static inline void fuzz_write_seeds_if_asked(void (*write)(const char *dir))
{
    const char *dir = getenv("FUZZ_WRITE_SEEDS");
    if (dir) {
        write(dir);
        exit(0);
    }
}

#endif
