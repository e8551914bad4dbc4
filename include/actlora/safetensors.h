// safetensors.h: a defensive reader (mmap) and a writer for the safetensors format:
//   [u64 little-endian header length N][N bytes of JSON header][data]
// The header maps tensor names to {dtype, shape, data_offsets: [begin, end)} relative to the
// data section, plus an optional "__metadata__" string->string map. Files come from users and
// the internet: every size, offset and shape is checked; every rejection names the file and
// tensor and says what was expected.
#ifndef ACTLORA_SAFETENSORS_H
#define ACTLORA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "actlora/common.h"

#define ST_MAX_DIMS 8

typedef enum { ST_F64, ST_F32, ST_F16, ST_BF16, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL } StDtype;

typedef struct {
    char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;
    size_t nbytes;
    const void *data;  // points into the mapping
} StTensor;

typedef struct {
    char *path;
    void *map;
    size_t map_size;
    int n;
    StTensor *tensors;
    int n_meta;
    char **meta_keys, **meta_vals;
} SafeTensors;

// Opens and validates a file; on failure returns -1 with err naming the file (and tensor).
int safetensors_open(SafeTensors *st, const char *path, Error *err);
void safetensors_close(SafeTensors *st);
const StTensor *safetensors_find(const SafeTensors *st, const char *name);
// Value of a "__metadata__" key, or NULL.
const char *safetensors_meta(const SafeTensors *st, const char *key);
const char *st_dtype_name(StDtype d);
size_t st_dtype_size(StDtype d);
// Converts any floating or integer tensor to fp32 (bf16/f16 exactly widened).
void st_to_f32(const StTensor *t, float *out);
// Converts an integer tensor to int32; returns -1 (err names tensor) if a value does not fit
// or the tensor is not of an integer type.
int st_to_i32(const StTensor *t, const char *file, int32_t *out, Error *err);

// Writer: tensors given as name/dtype/shape/data; written in the given order, 8-byte aligned
// header, metadata optional (n_meta may be 0). Writes to path atomically (tmp + rename).
typedef struct {
    const char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} StWriteTensor;
int safetensors_write(const char *path, const StWriteTensor *t, int n, const char *const *meta_keys,
                      const char *const *meta_vals, int n_meta, Error *err);

// "a number", "a string", ... : how a JSON value is described in "expected X, found Y" messages
// (shared by the safetensors header and config.json readers).
struct cJSON;
const char *json_kind(const struct cJSON *v);

#endif
