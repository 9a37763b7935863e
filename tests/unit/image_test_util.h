/*
 * image_test_util.h - helpers shared by the image module's unit tests
 * (tests/unit/test_image*.c): encoded images as blobs. Include after
 * <cmocka.h> and <vips/vips.h>.
 */
#ifndef MS_IMAGE_TEST_UTIL_H
#define MS_IMAGE_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

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

#endif
