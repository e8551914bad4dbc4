// dataset.h: tokenized GLUE splits in HDF5 files written by tools/prep_glue.py.
//
// File format "actlora-glue", version 2 (tools/prep_glue.py is the writer; this is the reader; version 1
// files, which have no type_ids, are read too):
//   root attributes: format ("actlora-glue"), format_version (1 or 2), task ("SST-2", "STS-B", "MNLI", ...),
//     num_labels (1 for regression), is_regression (0/1), label_names (strings, [num_labels] or empty),
//     pad_id, max_len, tokenizer_sha256 (64 hex chars), tokenizer_name, splits (strings: "train", "dev", ...)
//   one group per split, "/<split>":
//     tokens  int32 [total_tokens]   rows concatenated, no padding
//     type_ids uint8 [total_tokens]  (version 2; optional) token type (segment) id of every token, parallel
//                                    to tokens; absent = all 0
//     offsets int64 [rows + 1]       row i = tokens[offsets[i] : offsets[i+1]]
//     labels  int32 [rows] (classification) or float32 [rows] (regression)
//     attributes: source_file, source_sha256 (strings), rows, skipped, truncated, max_row_len (ints),
//                 max_type_id (int; required with type_ids: the largest type id of the split)
// Strings may be variable-length (h5py's default) or fixed-length; integers any integer type.
//
// A DatasetSplit keeps offsets, lengths and labels in memory (16 bytes a row) and reads the
// tokens of only the rows a batch needs, so a rank's memory does not grow with the corpus. HDF5
// (serial build) is not thread-safe: call these functions from one thread per process.
#ifndef ACTLORA_DATASET_H
#define ACTLORA_DATASET_H

#include <stdint.h>

#include "actlora/common.h"
#include "actlora/data.h"

#define DATASET_FORMAT "actlora-glue"
#define DATASET_FORMAT_VERSION 2      // newest version read (and written by tools/prep_glue.py)
#define DATASET_FORMAT_VERSION_MIN 1  // oldest version read (no type_ids)
#define DATASET_MAX_SPLITS 8
#define DATASET_MAX_LABELS 32

// The root attributes of a dataset file.
typedef struct {
    char path[4096];
    char task[32];
    int num_labels, is_regression, pad_id, max_len;
    char tokenizer_sha256[72];
    char tokenizer_name[128];
    int n_label_names;                            // 0 or num_labels
    char label_names[DATASET_MAX_LABELS][64];
    int n_splits;
    char splits[DATASET_MAX_SPLITS][32];
} DatasetInfo;

// Reads and validates the root attributes: format and version, and every attribute's presence,
// type and range. Returns 0, or -1 with err naming the file, the attribute and what was expected.
int dataset_info_read(DatasetInfo *di, const char *path, Error *err);

// Checks the file against what the run expects; task == NULL, num_labels <= 0 and
// tokenizer_sha256 == NULL (or "") skip that check. The task compares case-insensitively.
int dataset_check(const DatasetInfo *di, const char *task, int num_labels, const char *tokenizer_sha256, Error *err);

// Index of split `name` in di->splits, or -1.
int dataset_find_split(const DatasetInfo *di, const char *name);

// One split of a file, open for reading.
typedef struct {
    DatasetInfo info;
    char name[32];            // split name
    int64_t rows;             // > 0
    int64_t total_tokens;     // = offsets[rows]
    int64_t *offsets;         // [rows + 1]
    int32_t *lengths;         // [rows], each in 1..info.max_len (what the sampler groups by)
    int32_t *labels_i;        // [rows] (classification) or NULL
    float *labels_f;          // [rows] (regression) or NULL
    int32_t max_row_len;      // longest row
    int64_t skipped, truncated;  // as recorded by the writer (rows dropped / cut to max_len)
    int has_type_ids;         // the split has a type_ids dataset (else every token's type is 0)
    int32_t max_type_id;      // largest token type id of the split (attribute max_type_id; 0 without type_ids)
    char source_file[256];
    char source_sha256[72];
    int64_t file_id, tokens_id;  // HDF5 handles (hid_t); the token dataset stays open
    int64_t types_id;         // the type_ids dataset (open), or H5I_INVALID_HID
    int32_t *scratch;         // token read buffer, grows as needed
    int32_t *type_scratch;    // type id read buffer (same layout and capacity as scratch)
    int64_t scratch_cap;      // elements
} DatasetSplit;

// Opens split `split` of the file at `path`: reads and validates the root attributes, the
// split's attributes, offsets (start at 0, non-decreasing, end at the token count, row lengths in
// 1..max_len), labels ([0, num_labels) for classification, finite for regression) and, when present,
// type_ids (an integer dataset of exactly total_tokens elements, with a max_type_id attribute). Every
// problem names the file, the split and the row. On failure *s is left closed (safe to close).
int dataset_split_open(DatasetSplit *s, const char *path, const char *split, Error *err);

// Reads rows[0..n) (any order, repeats allowed) into b: b->B = n, b->T = the longest of these
// rows (dynamic padding), ids right-padded with info.pad_id, mask 1 on real tokens, type ids into
// b->type_ids (same layout as ids, right-padded with 0; all 0 when the split has no type_ids; skipped
// when b->type_ids is NULL; each checked to be in 0..max_type_id), labels into
// b->labels_i (classification) or b->labels_f (regression; the other one is zeroed), and
// b->n_tokens = the real tokens. b must come from batch_init(b, cap_B >= n, cap_T >= info.max_len
// or at least the longest row). Reads only these rows' tokens and type ids (the same hyperslab
// selections for both, each distinct row once, ~1 us a row from a warm page cache); offsets and labels
// come from memory.
int dataset_split_read(DatasetSplit *s, const int64_t *rows, int n, Batch *b, Error *err);

// Length of row `row` (0 <= row < s->rows).
int32_t dataset_row_len(const DatasetSplit *s, int64_t row);

void dataset_split_close(DatasetSplit *s);

#endif
