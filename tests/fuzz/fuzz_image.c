/*
 * fuzz_image.c - libFuzzer target for the image module: arbitrary bytes
 * through image_prepare, image_thumbnail and the ingest path that does both
 * from one decode (image_prepare_with_thumbnail), with small limits so every
 * input stays cheap. Any outcome is fine except a crash, a sanitizer
 * report, a hang, or an error without its message. Built and run by
 * tests/fuzz/run.sh (`make fuzz`).
 */
#include <stdint.h>
#include <stdlib.h>

#include "image/image.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    /* cache off: every input is decoded afresh, memory stays flat */
    if (image_init(1, NULL) != 0)
        abort();
    return 0;
}

/* An error must come with its code and a message naming the problem. */
static void check_error(int rc, const ms_err *err)
{
    if (rc != 0 && (err->code != rc || err->msg[0] == '\0'))
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const image_limits lim = {.max_bytes = 1 << 20, .max_pixels = 1 << 20};
    const image_prep prep = {32, {127.5f, 127.5f, 127.5f}, {1 / 127.5f, 1 / 127.5f, 1 / 127.5f}};
    static float out[3 * 32 * 32];
    ms_err err = {0};
    image_info info;

    int rc = image_prepare(data, size, &lim, &prep, out, &info, &err);
    check_error(rc, &err);
    if (rc == 0) {
        if (info.width < 1 || info.height < 1 || (uint64_t)info.width * info.height > lim.max_pixels)
            __builtin_trap();
        for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
            if (!(out[i] >= -1.0f && out[i] <= 1.0f)) /* 0..255 mapped to -1..1 */
                __builtin_trap();
    }

    uint8_t *thumb = NULL;
    size_t thumb_len = 0;
    thumb_format fmt = size % 2 ? THUMB_WEBP : THUMB_JPEG;
    int trc = image_thumbnail(data, size, &lim, 48, fmt, &thumb, &thumb_len, &err);
    check_error(trc, &err);
    if (trc == 0 && (!thumb || thumb_len == 0))
        __builtin_trap();
    free(thumb);

    /* The one-decode ingest path succeeds exactly when the two calls do. */
    static float out2[3 * 32 * 32];
    thumb = NULL;
    thumb_len = 0;
    int crc = image_prepare_with_thumbnail(data, size, &lim, &prep, out2, NULL, 48, fmt, &thumb, &thumb_len, &err);
    check_error(crc, &err);
    if ((crc == 0) != (rc == 0 && trc == 0) || (crc == 0 && (!thumb || thumb_len == 0)))
        __builtin_trap();
    free(thumb);
    return 0;
}
