// test_dataset.c: the GLUE HDF5 reader against files written here with the HDF5 C API in the
// "actlora-glue" v2 format (and v1, without type_ids), laid out as h5py writes them
// (variable-length UTF-8 string attributes, int64 scalar attributes): attribute reading, every
// validation error, the task/labels/tokenizer check, and row reads (arbitrary order, repeats)
// with dynamic padding of ids, mask and token type ids (absent type_ids read as zeros).
// Optional: ACTLORA_TEST_GLUE_H5=/path/file.h5 also opens every split of a real prepared file.
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "actlora/data.h"
#include "actlora/dataset.h"
#include "actlora/rng.h"
#include "test_util.h"

#define SHA_A "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define SHA_B "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"

// ---------------------------------------------------------------------------------- writer

typedef struct {
    const char *name;
    int64_t rows, n_tokens;
    int64_t *offsets;   // [rows + 1]
    int32_t *tokens;    // [n_tokens]
    uint8_t *type_ids;  // [n_tokens] or NULL (no type_ids dataset)
    int max_type_id;    // written as the max_type_id attribute when type_ids is set
    int32_t *labels_i;  // [rows] or NULL
    float *labels_f;    // [rows] or NULL
    int max_row_len;
} SplitData;

typedef struct {
    const char *format, *task, *sha;
    int format_version, num_labels, is_regression, pad_id, max_len;
    int n_label_names;
    const char *label_names[4];
    int n_splits;
    const char *splits[3];
    const char *omit_attr;   // root attribute left out
    const char *float_attr;  // root integer attribute written as float64 instead
    int fixed_strings;       // fixed-length (numpy 'S') instead of variable-length strings
    int empty_f64_names;     // label_names as an empty float64 array (what h5py makes of [])
    int chunked;             // tokens chunked + deflate (as h5py compression="gzip" writes)
    int64_t rows_attr_delta; // added to the 'rows' group attribute
    int types_i32;           // type_ids stored as int32 (any integer type is read)
    int types_float;         // type_ids stored as float32 (an error)
    int64_t types_len_delta; // added to the length of the type_ids dataset (an error when != 0)
    int omit_max_type_id;    // type_ids without the max_type_id attribute (an error)
} FileSpec;

// Token id of position t of row r: unique per (row, t) so reads can be checked exactly.
static int32_t tok_of(int64_t r, int t) { return (int32_t)(1000 * r + t + 5); }

static void split_make(SplitData *s, const char *name, int64_t rows, int max_len, int regression, int num_labels,
                       uint64_t seed) {
    memset(s, 0, sizeof *s);
    s->name = name;
    s->rows = rows;
    s->offsets = calloc((size_t)rows + 1, sizeof(int64_t));
    for (int64_t r = 0; r < rows; r++) {
        int len = 1 + (int)(rng_u64(seed, (uint64_t)r) % (uint64_t)max_len);
        if (len > s->max_row_len) s->max_row_len = len;
        s->offsets[r + 1] = s->offsets[r] + len;
    }
    s->n_tokens = s->offsets[rows];
    s->tokens = calloc((size_t)s->n_tokens, sizeof(int32_t));
    for (int64_t r = 0; r < rows; r++)
        for (int t = 0; t < s->offsets[r + 1] - s->offsets[r]; t++) s->tokens[s->offsets[r] + t] = tok_of(r, t);
    if (regression) {
        s->labels_f = calloc((size_t)rows, sizeof(float));
        for (int64_t r = 0; r < rows; r++) s->labels_f[r] = 5.0f * rng_uniform(seed + 1, (uint64_t)r);
    } else {
        s->labels_i = calloc((size_t)rows, sizeof(int32_t));
        for (int64_t r = 0; r < rows; r++) s->labels_i[r] = (int32_t)(r % num_labels);
    }
}

// Token type ids like a BERT pair template: the first half of a row (rounded up) is segment 0, the
// rest segment 1; every third row is a single sentence (all 0).
static void split_add_types(SplitData *s) {
    s->type_ids = calloc((size_t)s->n_tokens + 1, 1);
    s->max_type_id = 0;
    for (int64_t r = 0; r < s->rows; r++) {
        int len = (int)(s->offsets[r + 1] - s->offsets[r]);
        for (int t = 0; t < len; t++) {
            uint8_t v = (uint8_t)(r % 3 != 0 && t >= (len + 1) / 2);
            s->type_ids[s->offsets[r] + t] = v;
            if (v > s->max_type_id) s->max_type_id = v;
        }
    }
}

static void split_free(SplitData *s) {
    free(s->offsets);
    free(s->tokens);
    free(s->type_ids);
    free(s->labels_i);
    free(s->labels_f);
}

static void w_str(hid_t obj, const char *name, const char *v, int fixed) {
    hid_t t = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR);
    if (fixed) {
        H5Tset_size(t, strlen(v) ? strlen(v) : 1);
        H5Tset_strpad(t, H5T_STR_NULLPAD);
    } else {
        H5Tset_size(t, H5T_VARIABLE);
        H5Tset_cset(t, H5T_CSET_UTF8);
    }
    hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, t, fixed ? (const void *)v : (const void *)&v);
    H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
}

static void w_strs(hid_t obj, const char *name, int n, const char *const *v) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    hsize_t d = (hsize_t)n;
    hid_t sp = H5Screate_simple(1, &d, NULL), a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (n) H5Awrite(a, t, v);
    H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
}

static void w_i64(hid_t obj, const char *name, int64_t v, int as_float) {
    double f = (double)v;
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, as_float ? H5T_IEEE_F64LE : H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, as_float ? H5T_NATIVE_DOUBLE : H5T_NATIVE_INT64, as_float ? (void *)&f : (void *)&v);
    H5Aclose(a);
    H5Sclose(sp);
}

static void w_dset(hid_t g, const char *name, hid_t ftype, hid_t mtype, int64_t n, const void *data, int chunked) {
    hsize_t d = (hsize_t)n, c = 64;
    hid_t sp = H5Screate_simple(1, &d, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (chunked && n > 0) {
        H5Pset_chunk(dcpl, 1, &c);
        if (H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0) H5Pset_deflate(dcpl, 4);
    }
    hid_t ds = H5Dcreate2(g, name, ftype, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (n > 0) H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    H5Dclose(ds);
    H5Pclose(dcpl);
    H5Sclose(sp);
}

static void root_attr(const FileSpec *f, hid_t fid, const char *name, const char *sv, int64_t iv, int is_str) {
    if (f->omit_attr && strcmp(f->omit_attr, name) == 0) return;
    if (is_str) w_str(fid, name, sv, f->fixed_strings);
    else w_i64(fid, name, iv, f->float_attr && strcmp(f->float_attr, name) == 0);
}

// Writes spec + splits to path; splits[i] is written as group "/<name>" unless name is NULL.
static void file_write(const char *path, const FileSpec *f, const SplitData *splits, int n_data) {
    hid_t fid = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (fid < 0) {
        fprintf(stderr, "cannot create %s\n", path);
        exit(1);
    }
    root_attr(f, fid, "format", f->format, 0, 1);
    root_attr(f, fid, "format_version", NULL, f->format_version, 0);
    root_attr(f, fid, "task", f->task, 0, 1);
    root_attr(f, fid, "num_labels", NULL, f->num_labels, 0);
    root_attr(f, fid, "is_regression", NULL, f->is_regression, 0);
    if (f->empty_f64_names) {
        hsize_t zero = 0;
        hid_t sp = H5Screate_simple(1, &zero, NULL), a = H5Acreate2(fid, "label_names", H5T_IEEE_F64LE, sp,
                                                                      H5P_DEFAULT, H5P_DEFAULT);
        H5Aclose(a);
        H5Sclose(sp);
    } else if (!f->omit_attr || strcmp(f->omit_attr, "label_names"))
        w_strs(fid, "label_names", f->n_label_names, f->label_names);
    root_attr(f, fid, "pad_id", NULL, f->pad_id, 0);
    root_attr(f, fid, "max_len", NULL, f->max_len, 0);
    root_attr(f, fid, "tokenizer_sha256", f->sha, 0, 1);
    root_attr(f, fid, "tokenizer_name", "tiny-llama", 0, 1);
    if (!f->omit_attr || strcmp(f->omit_attr, "splits")) w_strs(fid, "splits", f->n_splits, f->splits);
    for (int i = 0; i < n_data; i++) {
        const SplitData *s = &splits[i];
        if (!s->name) continue;
        hid_t g = H5Gcreate2(fid, s->name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        w_dset(g, "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, s->n_tokens, s->tokens, f->chunked);
        if (s->type_ids) {  // as prep_glue.py writes it: uint8, parallel to tokens
            int64_t n = s->n_tokens + f->types_len_delta;
            if (f->types_i32 || f->types_float) {
                int32_t *wide = calloc((size_t)n + 1, sizeof(int32_t));
                float *fl = calloc((size_t)n + 1, sizeof(float));
                for (int64_t i = 0; i < n && i < s->n_tokens; i++) wide[i] = s->type_ids[i], fl[i] = s->type_ids[i];
                if (f->types_float) w_dset(g, "type_ids", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, n, fl, f->chunked);
                else w_dset(g, "type_ids", H5T_STD_I32LE, H5T_NATIVE_INT32, n, wide, f->chunked);
                free(wide);
                free(fl);
            } else {
                uint8_t *tb = calloc((size_t)n + 1, 1);
                memcpy(tb, s->type_ids, (size_t)(n < s->n_tokens ? n : s->n_tokens));
                w_dset(g, "type_ids", H5T_STD_U8LE, H5T_NATIVE_UINT8, n, tb, f->chunked);
                free(tb);
            }
        }
        w_dset(g, "offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, s->rows + 1, s->offsets, 0);
        if (s->labels_f) w_dset(g, "labels", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, s->rows, s->labels_f, 0);
        else w_dset(g, "labels", H5T_STD_I32LE, H5T_NATIVE_INT32, s->rows, s->labels_i, 0);
        w_str(g, "source_file", "glue/SST-2/train.tsv", f->fixed_strings);
        w_str(g, "source_sha256", SHA_B, f->fixed_strings);
        w_i64(g, "rows", s->rows + f->rows_attr_delta, 0);
        w_i64(g, "skipped", 3, 0);
        w_i64(g, "truncated", 2, 0);
        w_i64(g, "max_row_len", s->max_row_len, 0);
        if (s->type_ids && !f->omit_max_type_id) w_i64(g, "max_type_id", s->max_type_id, 0);
        H5Gclose(g);
    }
    H5Fclose(fid);
}

static FileSpec spec_cls(void) {
    FileSpec f = {.format = "actlora-glue", .task = "SST-2", .sha = SHA_A, .format_version = 2, .num_labels = 2,
                  .is_regression = 0, .pad_id = 0, .max_len = 24, .n_label_names = 2,
                  .label_names = {"negative", "positive"}, .n_splits = 2, .splits = {"train", "dev"}};
    return f;
}

// ---------------------------------------------------------------------------------- checks

typedef struct {
    char dir[1024];
    char path[1200];
    int n;
} Tmp;

static const char *tmp_file(Tmp *t, const char *stem) {
    snprintf(t->path, sizeof t->path, "%s/%s_%d.h5", t->dir, stem, t->n++);
    return t->path;
}

// Expects opening `split` of a file from spec/splits to fail with every needle in the message.
static void expect_open_fail(TestCounts *tc, Tmp *t, const FileSpec *f, SplitData *sd, int n_sd, const char *split,
                             const char *what, const char *n1, const char *n2, const char *n3) {
    const char *path = tmp_file(t, "bad");
    file_write(path, f, sd, n_sd);
    DatasetSplit s;
    Error err = {{0}};
    int rc = dataset_split_open(&s, path, split, &err);
    T_CHECK(tc, rc == -1, "%s: open succeeded", what);
    const char *needles[4] = {path, n1, n2, n3};
    for (int i = 0; i < 4; i++)
        T_CHECK(tc, !needles[i] || strstr(err.msg, needles[i]), "%s: message lacks '%s': %s", what, needles[i],
                err.msg);
    T_CHECK(tc, s.offsets == NULL && s.tokens_id < 0 && s.types_id < 0, "%s: failed open left state behind", what);
    dataset_split_close(&s);
    remove(path);
}

// Reads rows[0..n) and compares ids, mask, type ids, labels, T, n_tokens with the source data (type
// ids: sd->type_ids, or all 0 when the file has none; padding 0).
static void check_read(TestCounts *tc, DatasetSplit *s, const SplitData *sd, const int64_t *rows, int n, Batch *b,
                       const char *what) {
    Error err = {{0}};
    memset(b->ids, 0x55, (size_t)b->cap_B * b->cap_T * sizeof(int32_t));
    if (b->type_ids) memset(b->type_ids, 0x55, (size_t)b->cap_B * b->cap_T * sizeof(int32_t));
    int rc = dataset_split_read(s, rows, n, b, &err);
    T_CHECK(tc, rc == 0, "%s: read failed: %s", what, err.msg);
    if (rc) return;
    int T = 0;
    int64_t ntok = 0;
    for (int i = 0; i < n; i++) {
        int len = (int)(sd->offsets[rows[i] + 1] - sd->offsets[rows[i]]);
        T = len > T ? len : T;
        ntok += len;
    }
    T_CHECK(tc, b->B == n && b->T == T && b->n_tokens == ntok, "%s: shape B=%d T=%d n_tokens=%lld, expected %d %d %lld",
            what, b->B, b->T, (long long)b->n_tokens, n, T, (long long)ntok);
    int bad = 0;
    for (int i = 0; i < n && !bad; i++) {
        int len = (int)(sd->offsets[rows[i] + 1] - sd->offsets[rows[i]]);
        for (int t = 0; t < T && !bad; t++) {
            int32_t want = t < len ? tok_of(rows[i], t) : s->info.pad_id;
            int32_t want_type = t < len && sd->type_ids ? sd->type_ids[sd->offsets[rows[i]] + t] : 0;
            int32_t got_type = b->type_ids ? b->type_ids[i * T + t] : want_type;
            bad = b->ids[i * T + t] != want || b->mask[i * T + t] != (t < len) || got_type != want_type;
            if (bad)
                T_CHECK(tc, 0, "%s: batch row %d (file row %lld) pos %d: id %d mask %d type %d, expected %d %d %d",
                        what, i, (long long)rows[i], t, b->ids[i * T + t], b->mask[i * T + t], got_type, want, t < len,
                        want_type);
        }
        int bad_label = sd->labels_i ? b->labels_i[i] != sd->labels_i[rows[i]] : b->labels_f[i] != sd->labels_f[rows[i]];
        if (bad_label) T_CHECK(tc, 0, "%s: batch row %d: wrong label", what, i);
        bad |= bad_label;
    }
    T_CHECK(tc, !bad, "%s: contents", what);
}

// with_types: 0 = no type_ids (format_version 1, as before version 2), 1 = uint8 type_ids,
// 2 = int32 type_ids
static void test_info_and_reads(TestCounts *tc, Tmp *t, int fixed_strings, int chunked, int with_types) {
    FileSpec f = spec_cls();
    f.fixed_strings = fixed_strings;
    f.chunked = chunked;
    f.types_i32 = with_types == 2;
    if (!with_types) f.format_version = 1;
    SplitData sd[2];
    split_make(&sd[0], "train", 300, f.max_len, 0, 2, 11);
    split_make(&sd[1], "dev", 40, f.max_len, 0, 2, 12);
    if (with_types) {
        split_add_types(&sd[0]);
        split_add_types(&sd[1]);
    }
    const char *path = tmp_file(t, "sst2");
    file_write(path, &f, sd, 2);
    char what[96];
    snprintf(what, sizeof what, "%s strings, %s tokens, %s type ids", fixed_strings ? "fixed" : "vlen",
             chunked ? "chunked" : "contiguous", with_types == 2 ? "int32" : with_types ? "uint8" : "no");

    DatasetInfo di;
    Error err = {{0}};
    int rc = dataset_info_read(&di, path, &err);
    T_CHECK(tc, rc == 0, "%s: info read: %s", what, err.msg);
    T_CHECK(tc, strcmp(di.task, "SST-2") == 0 && di.num_labels == 2 && di.is_regression == 0 && di.pad_id == 0 &&
                    di.max_len == 24 && strcmp(di.tokenizer_sha256, SHA_A) == 0 &&
                    strcmp(di.tokenizer_name, "tiny-llama") == 0 && strcmp(di.path, path) == 0,
            "%s: info fields (task %s, sha %s)", what, di.task, di.tokenizer_sha256);
    T_CHECK(tc, di.n_splits == 2 && strcmp(di.splits[0], "train") == 0 && strcmp(di.splits[1], "dev") == 0 &&
                    dataset_find_split(&di, "dev") == 1 && dataset_find_split(&di, "test") == -1,
            "%s: splits", what);
    T_CHECK(tc, di.n_label_names == 2 && strcmp(di.label_names[1], "positive") == 0, "%s: label names", what);

    // dataset_check
    T_CHECK(tc, dataset_check(&di, "SST-2", 2, SHA_A, &err) == 0, "%s: check matching: %s", what, err.msg);
    T_CHECK(tc, dataset_check(&di, "sst-2", 0, NULL, &err) == 0, "check is case-insensitive on the task");
    T_CHECK(tc, dataset_check(&di, NULL, 0, "", &err) == 0, "check with nothing to check");
    rc = dataset_check(&di, "MNLI", 0, NULL, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "SST-2") && strstr(err.msg, "MNLI") && strstr(err.msg, path),
            "task mismatch message: %s", err.msg);
    rc = dataset_check(&di, NULL, 3, NULL, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "num_labels 2") && strstr(err.msg, "num_labels 3"),
            "num_labels mismatch message: %s", err.msg);
    rc = dataset_check(&di, "SST-2", 2, SHA_B, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, SHA_A) && strstr(err.msg, SHA_B) &&
                    strstr(err.msg, "re-run tools/prep_glue.py with the model's tokenizer.json"),
            "tokenizer mismatch message: %s", err.msg);

    // split reads
    DatasetSplit s;
    rc = dataset_split_open(&s, path, "train", &err);
    T_CHECK(tc, rc == 0, "%s: open train: %s", what, err.msg);
    if (rc) goto out;
    T_CHECK(tc, s.rows == 300 && s.total_tokens == sd[0].n_tokens && s.max_row_len == sd[0].max_row_len &&
                    s.skipped == 3 && s.truncated == 2 && strcmp(s.name, "train") == 0 &&
                    strcmp(s.source_sha256, SHA_B) == 0 && strcmp(s.source_file, "glue/SST-2/train.tsv") == 0,
            "%s: split fields", what);
    T_CHECK(tc, s.has_type_ids == (with_types != 0) && s.max_type_id == (with_types ? 1 : 0) &&
                    (s.types_id >= 0) == (with_types != 0),
            "%s: has_type_ids %d max_type_id %d", what, s.has_type_ids, s.max_type_id);
    T_CHECK(tc, dataset_row_len(&s, 17) == sd[0].offsets[18] - sd[0].offsets[17], "row_len");
    Batch b;
    batch_init(&b, 64, f.max_len);
    int64_t rows1[] = {7, 2, 7, 0, 299, 1, 2, 150};  // unsorted, repeated, both ends
    check_read(tc, &s, &sd[0], rows1, 8, &b, what);
    int64_t rows2[] = {42};
    check_read(tc, &s, &sd[0], rows2, 1, &b, what);
    int64_t rows3[64];
    for (int it = 0; it < 20; it++) {
        int n = 1 + (int)(rng_u64(99, (uint64_t)it) % 64);
        for (int i = 0; i < n; i++) rows3[i] = (int64_t)(rng_u64(100 + it, (uint64_t)i) % 300);
        check_read(tc, &s, &sd[0], rows3, n, &b, what);
    }
    for (int i = 0; i < 64; i++) rows3[i] = 100 + i;  // adjacent rows (merged ranges)
    check_read(tc, &s, &sd[0], rows3, 64, &b, what);
    for (int i = 0; i < 64; i++) rows3[i] = (i * 37) % 300;  // > DATASET_READ_RANGES ranges: several reads
    check_read(tc, &s, &sd[0], rows3, 64, &b, what);
    {  // a batch without a type id buffer: ids still read, type ids skipped
        int32_t *keep = b.type_ids;
        b.type_ids = NULL;
        check_read(tc, &s, &sd[0], rows1, 8, &b, what);
        b.type_ids = keep;
    }
    // errors: too many rows, row out of range, rows longer than the batch
    rc = dataset_split_read(&s, rows3, 65, &b, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "65 rows") && strstr(err.msg, "64"), "too many rows: %s", err.msg);
    int64_t bad_row[] = {3, 300};
    rc = dataset_split_read(&s, bad_row, 2, &b, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "row 300") && strstr(err.msg, "300 rows"), "row out of range: %s",
            err.msg);
    Batch small;
    batch_init(&small, 4, 2);
    int64_t long_row = 0;
    while (sd[0].offsets[long_row + 1] - sd[0].offsets[long_row] <= 2) long_row++;
    rc = dataset_split_read(&s, &long_row, 1, &small, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "does not fit"), "row longer than batch: %s", err.msg);
    batch_free(&small);
    dataset_split_close(&s);

    rc = dataset_split_open(&s, path, "dev", &err);
    T_CHECK(tc, rc == 0 && s.rows == 40, "%s: open dev: %s", what, err.msg);
    if (rc == 0) {
        int64_t all[40];
        for (int i = 0; i < 40; i++) all[i] = 39 - i;
        check_read(tc, &s, &sd[1], all, 40, &b, what);
    }
    dataset_split_close(&s);
    batch_free(&b);
out:
    remove(path);
    split_free(&sd[0]);
    split_free(&sd[1]);
}

// batch_init allocates zeroed type ids; the synthetic task leaves them 0.
static void test_batch_init(TestCounts *tc) {
    Batch b;
    batch_init(&b, 4, 16);
    int zero = b.type_ids != NULL;
    for (int i = 0; zero && i < 4 * 16; i++) zero = b.type_ids[i] == 0;
    T_CHECK(tc, zero, "batch_init: type_ids allocated and zeroed");
    for (int i = 0; b.type_ids && i < 4 * 16; i++) b.type_ids[i] = 9;
    data_synthetic_batch(&b, 100, 0, 2, 5, 0, 0, 0);
    zero = 1;
    for (int i = 0; b.type_ids && i < b.B * b.T; i++) zero &= b.type_ids[i] == 0;
    T_CHECK(tc, zero, "synthetic batch: type_ids all 0");
    batch_free(&b);
    T_CHECK(tc, b.type_ids == NULL && b.ids == NULL, "batch_free clears the batch");
}

// Token type ids: absent in a version 2 file (zeros), and every malformed form of them.
static void test_type_ids(TestCounts *tc, Tmp *t) {
    FileSpec f0 = spec_cls(), f;
    SplitData sd[2];
    split_make(&sd[0], "train", 30, f0.max_len, 0, 2, 41);
    split_make(&sd[1], "dev", 10, f0.max_len, 0, 2, 42);
    Error err = {{0}};
    Batch b;
    batch_init(&b, 16, f0.max_len);

    // version 2 without type_ids (a writer may leave them out): read as zeros
    const char *path = tmp_file(t, "notypes");
    file_write(path, &f0, sd, 2);
    DatasetSplit s;
    int rc = dataset_split_open(&s, path, "train", &err);
    T_CHECK(tc, rc == 0 && !s.has_type_ids && s.max_type_id == 0, "v2 without type_ids opens: %s", err.msg);
    if (rc == 0) {
        int64_t rows[] = {3, 1, 29, 3};
        check_read(tc, &s, &sd[0], rows, 4, &b, "v2 without type_ids");
    }
    dataset_split_close(&s);
    remove(path);

    split_add_types(&sd[0]);
    split_add_types(&sd[1]);
    // only one split with type ids: the other reads zeros
    SplitData dev_plain = sd[1];
    dev_plain.type_ids = NULL;
    SplitData mixed[2] = {sd[0], dev_plain};
    path = tmp_file(t, "mixed");
    file_write(path, &f0, mixed, 2);
    rc = dataset_split_open(&s, path, "dev", &err);
    T_CHECK(tc, rc == 0 && !s.has_type_ids, "dev without type_ids: %s", err.msg);
    if (rc == 0) {
        int64_t rows[] = {0, 1, 2, 9};
        check_read(tc, &s, &dev_plain, rows, 4, &b, "dev without type_ids");
    }
    dataset_split_close(&s);
    rc = dataset_split_open(&s, path, "train", &err);
    T_CHECK(tc, rc == 0 && s.has_type_ids && s.max_type_id == 1, "train with type_ids: %s", err.msg);
    if (rc == 0) {
        int64_t rows[] = {2, 1, 29, 2, 0, 13};
        check_read(tc, &s, &sd[0], rows, 6, &b, "train with type_ids");
    }
    dataset_split_close(&s);
    remove(path);

    // shape disagreement: one short, one long; not an integer; max_type_id missing
    f = f0, f.types_len_delta = -1;
    expect_open_fail(tc, t, &f, sd, 2, "train", "type_ids too short", "'/train/type_ids'", "'/train/tokens'",
                     "one type id per token");
    f = f0, f.types_len_delta = 5;
    expect_open_fail(tc, t, &f, sd, 2, "dev", "type_ids too long", "'/dev/type_ids'", "elements", "'/dev/tokens'");
    f = f0, f.types_float = 1;
    expect_open_fail(tc, t, &f, sd, 2, "train", "float type_ids", "'/train/type_ids'", "a float", "uint8");
    f = f0, f.omit_max_type_id = 1;
    expect_open_fail(tc, t, &f, sd, 2, "train", "no max_type_id", "split 'train'", "'max_type_id'", "missing");

    // a type id above max_type_id is caught when its row is read
    sd[0].type_ids[sd[0].offsets[4] + 0] = 2;
    path = tmp_file(t, "badtype");
    file_write(path, &f0, sd, 2);
    rc = dataset_split_open(&s, path, "train", &err);
    T_CHECK(tc, rc == 0, "file with a bad type id opens: %s", err.msg);
    if (rc == 0) {
        int64_t ok_rows[] = {3, 5};
        rc = dataset_split_read(&s, ok_rows, 2, &b, &err);
        T_CHECK(tc, rc == 0, "rows without the bad type id read: %s", err.msg);
        int64_t rows[] = {3, 4};
        rc = dataset_split_read(&s, rows, 2, &b, &err);
        T_CHECK(tc, rc == -1 && strstr(err.msg, "row 4") && strstr(err.msg, "type id 2") && strstr(err.msg, "0..1") &&
                        strstr(err.msg, path),
                "bad type id: %s", err.msg);
    }
    dataset_split_close(&s);
    remove(path);
    batch_free(&b);
    split_free(&sd[0]);
    split_free(&sd[1]);
}

static void test_regression(TestCounts *tc, Tmp *t) {
    FileSpec f = spec_cls();
    f.task = "STS-B";
    f.num_labels = 1;
    f.is_regression = 1;
    f.n_label_names = 0;
    f.empty_f64_names = 1;
    SplitData sd[2];
    split_make(&sd[0], "train", 50, f.max_len, 1, 1, 21);
    split_make(&sd[1], "dev", 10, f.max_len, 1, 1, 22);
    const char *path = tmp_file(t, "stsb");
    file_write(path, &f, sd, 2);
    DatasetSplit s;
    Error err = {{0}};
    int rc = dataset_split_open(&s, path, "dev", &err);
    T_CHECK(tc, rc == 0, "regression open: %s", err.msg);
    if (rc == 0) {
        T_CHECK(tc, s.labels_f && !s.labels_i && s.info.is_regression == 1 && s.info.n_label_names == 0,
                "regression labels are float");
        Batch b;
        batch_init(&b, 8, f.max_len);
        int64_t rows[] = {9, 0, 4, 4};
        check_read(tc, &s, &sd[1], rows, 4, &b, "regression");
        batch_free(&b);
    }
    dataset_split_close(&s);
    remove(path);

    // NaN label at row 4
    sd[0].labels_f[4] = NAN;
    expect_open_fail(tc, t, &f, sd, 2, "train", "NaN label", "split 'train'", "row 4", "finite");
    split_free(&sd[0]);
    split_free(&sd[1]);
}

static void test_errors(TestCounts *tc, Tmp *t) {
    FileSpec f0 = spec_cls(), f;
    SplitData sd[2];
    split_make(&sd[0], "train", 30, f0.max_len, 0, 2, 31);
    split_make(&sd[1], "dev", 10, f0.max_len, 0, 2, 32);
    Error err = {{0}};
    DatasetInfo di;

    f = f0, f.format = "not-glue";
    expect_open_fail(tc, t, &f, sd, 2, "train", "wrong format", "'format'", "not-glue", "actlora-glue");
    f = f0, f.format_version = 3;
    expect_open_fail(tc, t, &f, sd, 2, "train", "newer version", "format_version 3", "newer", NULL);
    f = f0, f.format_version = 0;
    expect_open_fail(tc, t, &f, sd, 2, "train", "older version", "'format_version' is 0", "expected 1..2", NULL);
    const char *attrs[] = {"format", "format_version", "task", "num_labels", "is_regression", "label_names",
                           "pad_id", "max_len", "tokenizer_sha256", "tokenizer_name", "splits"};
    for (size_t i = 0; i < sizeof attrs / sizeof *attrs; i++) {
        f = f0, f.omit_attr = attrs[i];
        char quoted[64];
        snprintf(quoted, sizeof quoted, "'%s'", attrs[i]);
        expect_open_fail(tc, t, &f, sd, 2, "train", attrs[i], quoted, "missing", "tools/prep_glue.py");
    }
    f = f0, f.float_attr = "num_labels";
    expect_open_fail(tc, t, &f, sd, 2, "train", "float attribute", "'num_labels'", "a float", "expected an integer");
    f = f0, f.num_labels = 1;
    expect_open_fail(tc, t, &f, sd, 2, "train", "classification with 1 label", "num_labels 1", NULL, NULL);
    f = f0, f.n_label_names = 3, f.label_names[2] = "x";
    expect_open_fail(tc, t, &f, sd, 2, "train", "label names count", "'label_names'", "3 names", NULL);
    f = f0, f.sha = "abc";
    expect_open_fail(tc, t, &f, sd, 2, "train", "bad sha", "'tokenizer_sha256'", "64 hex", NULL);
    f = f0, f.rows_attr_delta = 1;
    expect_open_fail(tc, t, &f, sd, 2, "train", "rows attr", "offsets", "31 elements", NULL);

    // an empty split
    SplitData empty = sd[1];
    empty.rows = 0;
    empty.n_tokens = 0;
    empty.max_row_len = 1;
    SplitData with_empty[2] = {sd[0], empty};
    expect_open_fail(tc, t, &f0, with_empty, 2, "dev", "empty split", "split 'dev'", "no rows", NULL);

    // missing split: not listed; listed but no group
    expect_open_fail(tc, t, &f0, sd, 2, "test", "unlisted split", "no split 'test'", "train, dev", NULL);
    SplitData no_dev[2] = {sd[0], sd[1]};
    no_dev[1].name = NULL;
    expect_open_fail(tc, t, &f0, no_dev, 2, "train", "listed split without group", "'dev'", "no group '/dev'", NULL);

    // offsets: not starting at 0, decreasing, too long a row, last != token count
    int64_t keep = sd[0].offsets[0];
    sd[0].offsets[0] = 1;
    expect_open_fail(tc, t, &f0, sd, 2, "train", "offsets[0]", "split 'train'", "offsets[0] is 1", NULL);
    sd[0].offsets[0] = keep;
    keep = sd[0].offsets[4];
    sd[0].offsets[4] = sd[0].offsets[3] - 1;
    expect_open_fail(tc, t, &f0, sd, 2, "train", "decreasing offsets", "split 'train'", "row 3", NULL);
    sd[0].offsets[4] = sd[0].offsets[3];
    expect_open_fail(tc, t, &f0, sd, 2, "train", "empty row", "row 3", "length 0", NULL);
    sd[0].offsets[4] = keep;
    f = f0, f.max_len = sd[0].max_row_len - 1;
    expect_open_fail(tc, t, &f, sd, 2, "train", "row over max_len", "max_row_len", NULL, NULL);
    sd[0].n_tokens -= 1;  // tokens dataset one shorter than offsets[rows]
    expect_open_fail(tc, t, &f0, sd, 2, "train", "token count", "offsets[30]", "dataset 'tokens' has", NULL);
    sd[0].n_tokens += 1;

    // labels out of range
    sd[0].labels_i[5] = 2;
    expect_open_fail(tc, t, &f0, sd, 2, "train", "label out of range", "row 5", "label 2", "0..1");
    sd[0].labels_i[5] = -1;
    expect_open_fail(tc, t, &f0, sd, 2, "train", "negative label", "row 5", "label -1", NULL);
    sd[0].labels_i[5] = 1;

    // a negative token id is caught when its row is read
    sd[0].tokens[sd[0].offsets[2] + 1] = -7;
    const char *neg = tmp_file(t, "negtok");
    file_write(neg, &f0, sd, 2);
    DatasetSplit s;
    int rc = dataset_split_open(&s, neg, "train", &err);
    T_CHECK(tc, rc == 0, "negative token file opens: %s", err.msg);
    if (rc == 0) {
        Batch b;
        batch_init(&b, 4, f0.max_len);
        int64_t rows[] = {1, 2};
        rc = dataset_split_read(&s, rows, 2, &b, &err);
        T_CHECK(tc, rc == -1 && strstr(err.msg, "row 2") && strstr(err.msg, "-7") && strstr(err.msg, neg),
                "negative token: %s", err.msg);
        batch_free(&b);
    }
    dataset_split_close(&s);
    remove(neg);
    sd[0].tokens[sd[0].offsets[2] + 1] = tok_of(2, 1);

    // not a file / not HDF5
    rc = dataset_info_read(&di, "/nonexistent/glue.h5", &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "/nonexistent/glue.h5") && strstr(err.msg, "cannot open"),
            "missing file: %s", err.msg);
    const char *txt = tmp_file(t, "text");
    FILE *fp = fopen(txt, "w");
    fputs("sentence\tlabel\n", fp);
    fclose(fp);
    rc = dataset_info_read(&di, txt, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "not an HDF5 file"), "not HDF5: %s", err.msg);
    remove(txt);
    // a valid file cut short (a copy interrupted by a quota): HDF5's reason is in the message
    const char *cut = tmp_file(t, "cut");
    file_write(cut, &f0, sd, 2);
    struct stat st;
    T_CHECK(tc, stat(cut, &st) == 0 && st.st_size > 4096 && truncate(cut, 4096) == 0, "cannot truncate %s", cut);
    rc = dataset_info_read(&di, cut, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "cannot open HDF5 file") && strstr(err.msg, "truncated file: eof = 4096"),
            "truncated file: %s", err.msg);
    remove(cut);
    split_free(&sd[0]);
    split_free(&sd[1]);
}

// Optional: a real file from tools/prep_glue.py (no Python needed here).
static void test_real_file(TestCounts *tc, const char *path) {
    DatasetInfo di;
    Error err = {{0}};
    int rc = dataset_info_read(&di, path, &err);
    T_CHECK(tc, rc == 0, "real file: %s", err.msg);
    for (int i = 0; rc == 0 && i < di.n_splits; i++) {
        DatasetSplit s;
        int r = dataset_split_open(&s, path, di.splits[i], &err);
        T_CHECK(tc, r == 0, "real file split %s: %s", di.splits[i], err.msg);
        if (r == 0) {
            Batch b;
            batch_init(&b, 64, di.max_len);
            int64_t rows[64];
            for (int j = 0; j < 64; j++) rows[j] = (int64_t)(rng_u64(7, (uint64_t)j) % (uint64_t)s.rows);
            r = dataset_split_read(&s, rows, 64, &b, &err);
            T_CHECK(tc, r == 0, "real file read %s: %s", di.splits[i], err.msg);
            printf("  %s/%s: %lld rows, %lld tokens, longest %d, type ids %s (max %d)\n", di.task, s.name,
                   (long long)s.rows, (long long)s.total_tokens, s.max_row_len, s.has_type_ids ? "yes" : "no",
                   s.max_type_id);
            batch_free(&b);
        }
        dataset_split_close(&s);
    }
}

int main(int argc, char **argv) {
    TestCounts tc = {0, 0};
    Tmp t = {.n = 0};
    if (argc > 2) snprintf(t.dir, sizeof t.dir, "%s/test_dataset_tmp", argv[2]);
    else snprintf(t.dir, sizeof t.dir, "/tmp/actlora_test_dataset_%d", (int)getpid());
    if (mkdir(t.dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "cannot create %s: %s\n", t.dir, strerror(errno));
        return 1;
    }
    test_batch_init(&tc);
    test_info_and_reads(&tc, &t, 0, 0, 0);
    test_info_and_reads(&tc, &t, 1, 1, 1);
    test_info_and_reads(&tc, &t, 0, 0, 1);
    test_info_and_reads(&tc, &t, 0, 1, 2);
    test_type_ids(&tc, &t);
    test_regression(&tc, &t);
    test_errors(&tc, &t);
    const char *real = getenv("ACTLORA_TEST_GLUE_H5");
    if (real && real[0]) test_real_file(&tc, real);
    ssize_t open_objs = H5Fget_obj_count((hid_t)H5F_OBJ_ALL, H5F_OBJ_ALL);
    T_CHECK(&tc, open_objs == 0, "%zd HDF5 files/objects left open (a handle leaks on some path)", open_objs);
    rmdir(t.dir);
    return t_finish(&tc, "test_dataset");
}
