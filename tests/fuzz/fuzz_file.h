/*
 * fuzz_file.h - for targets whose code under test opens a path: the input
 * as an anonymous in-memory file (memfd), reachable as /proc/self/fd/N.
 */
#ifndef MS_FUZZ_FILE_H
#define MS_FUZZ_FILE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
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

#endif
