/*
 * sha256.h - SHA-256 (OpenSSL libcrypto) as lowercase hex, for content
 * addressing of images and the identity of model files.
 */
#ifndef MS_SHA256_H
#define MS_SHA256_H

#include <stddef.h>

/* Writes 64 hex chars and a NUL into hex[65]. */
void ms_sha256_hex(const void *buf, size_t len, char hex[65]);

#endif
