/*
 * image_test_util.h - helpers shared by the image module's unit tests
 * (tests/unit/test_image*.c): their main(), encoded images as blobs.
 * Include after <cmocka.h>, <stdio.h>, <vips/vips.h> and image/image.h.
 */
#ifndef MS_IMAGE_TEST_UTIL_H
#define MS_IMAGE_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* main() of an image test: image_init without the operation cache, then
 * the group. Returns the process exit status. */
#define RUN_IMAGE_TESTS(tests)                                                                                   \
    do {                                                                                                         \
        ms_err init_err = {0};                                                                                   \
        if (image_init(1, &init_err)) {                                                                          \
            fprintf(stderr, "image_init: %s\n", init_err.msg);                                                   \
            return 1;                                                                                            \
        }                                                                                                        \
        return cmocka_run_group_tests(tests, NULL, NULL);                                                        \
    } while (0)

/* An encoded image; data is g_malloc'd (libvips' buffers are). */
typedef struct blob {
    uint8_t *data;
    size_t len;
} blob;

static inline void blob_free(blob *b)
{
    g_free(b->data);
    b->data = NULL;
    b->len = 0;
}

/* Encodes im with a libvips saver chosen by suffix and options, e.g.
 * ".png[palette]" or ".jpg[Q=95,interlace]". Takes ownership of im. */
static inline blob encode_with(VipsImage *im, const char *suffix)
{
    blob b = {0};
    void *buf = NULL;
    if (vips_image_write_to_buffer(im, suffix, &buf, &b.len, NULL))
        fail_msg("encoding %s failed: %s", suffix, vips_error_buffer());
    b.data = buf;
    g_object_unref(im);
    return b;
}

/* xorshift64: deterministic pseudo-random numbers, so failures reproduce. */
static inline uint64_t xorshift64(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

#endif
