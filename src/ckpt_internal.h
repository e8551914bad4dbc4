// ckpt_internal.h: what the checkpoint files' writer (ckpt_write.c), reader (ckpt_read.c) and
// directory logic (ckpt.c) share. Private to those three files.
#ifndef ACTLORA_CKPT_INTERNAL_H
#define ACTLORA_CKPT_INTERNAL_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

#include "actlora/ckpt.h"

#define CKPT_FORMAT "actlora-checkpoint"
#define CKPT_CHUNK_ELEMS ((hsize_t)1 << 20)  // at most 1 Mi elements (4 MiB of float32) per chunk
#define CKPT_PATH_MAX 4400
#define CKPT_USERBLOCK 512  // the seal: format, size and whole-file checksum, readable with head -c 512

// What the HDF5 error stack says about the last failure: the innermost description, checksum failures.
// (System errors never reach HDF5: the file is opened with open(2) first, and written by us.)
typedef struct {
    int fletcher, checksum;
    char desc[400];
} H5Cause;

typedef struct {
    int64_t step;
    int micro;
    char name[256];
} CkptEntry;

// The innermost HDF5 error description and whether a checksum failed.
void ckpt_h5_cause(H5Cause *c);
// The description for messages ("HDF5 error" when there is none).
const char *ckpt_cause_str(const H5Cause *c);
// A tensor name that is safe as an HDF5 link name.
int ckpt_name_ok(const char *s);
// File access properties: the checksummed 1.10 formats.
hid_t ckpt_h5_fapl(void);
// Internal consistency of a state (writing = 1: before writing; 0: after reading).
int ckpt_state_check(const CkptState *s, int writing, Error *err);
// The whole-file checksum over little-endian 64-bit words.
uint64_t ckpt_hash_words(uint64_t h, const unsigned char *p, size_t n);
// "ckpt-<step>-<micro>.h5" -> step, micro (1), or 0.
int ckpt_parse_name(const char *name, int64_t *step, int *micro);
// The ckpt-*.h5 of dir, newest first. Returns the count, or -1 with errno set.
int ckpt_list(const char *dir, CkptEntry **out);

#endif
