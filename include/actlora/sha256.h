// sha256.h: SHA-256 (FIPS 180-4), used to check that a data file was tokenized with the model's
// own tokenizer.json (tools/prep_glue.py records the tokenizer's sha256).
#ifndef ACTLORA_SHA256_H
#define ACTLORA_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "actlora/common.h"

// hex = 64 lowercase hex digits + NUL of the SHA-256 of data[0..n).
void sha256_hex(const void *data, size_t n, char hex[65]);
// The same over a whole file; returns -1 (err names the file) if it cannot be read.
int sha256_file_hex(const char *path, char hex[65], Error *err);

#endif
