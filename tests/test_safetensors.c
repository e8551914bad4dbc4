// test_safetensors.c: round trips through safetensors_write/open, exact bf16/f16 widening,
// a file written by Python's safetensors package, and every malformed-file rejection (checking
// that the message names the file and the tensor).
#define _GNU_SOURCE
#include <ftw.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "actlora/safetensors.h"
#include "test_util.h"

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static const char *tmp_path(char *buf, size_t cap, const char *dir, const char *name) {
    snprintf(buf, cap, "%s/%s", dir, name);
    return buf;
}

// Writes [u64 len(header)][header][data] exactly as given (no padding, no checks).
static void write_raw(const char *path, const char *header, const void *data, size_t data_len) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(2); }
    uint64_t n = strlen(header);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(n >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(header, 1, n, f);
    if (data_len) fwrite(data, 1, data_len, f);
    fclose(f);
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(2); }
    fwrite(p, 1, n, f);
    fclose(f);
}

// Expects safetensors_open to fail with a message containing the file name and every needle.
static void expect_reject(TestCounts *tc, const char *dir, const char *name, const char *header, size_t data_len,
                          const char *n1, const char *n2) {
    char path[256];
    tmp_path(path, sizeof path, dir, name);
    static const unsigned char zeros[16384];
    write_raw(path, header, zeros, data_len);
    SafeTensors st;
    Error err = {{0}};
    int rc = safetensors_open(&st, path, &err);
    T_CHECK(tc, rc == -1, "%s: expected rejection, got rc=%d", name, rc);
    if (rc == 0) { safetensors_close(&st); return; }
    if (getenv("TEST_VERBOSE")) printf("  %s\n", err.msg);
    T_CHECK(tc, strstr(err.msg, name) != NULL, "%s: message does not name the file: %s", name, err.msg);
    T_CHECK(tc, !n1 || strstr(err.msg, n1), "%s: message lacks '%s': %s", name, n1, err.msg);
    T_CHECK(tc, !n2 || strstr(err.msg, n2), "%s: message lacks '%s': %s", name, n2, err.msg);
}

static uint16_t f32_to_bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

static void test_round_trip(TestCounts *tc, const char *dir) {
    float f32[6] = {1.0f, -2.5f, 3.25f, 0.0f, 1e-20f, -1e20f};
    double f64[2] = {0.1, -1e300};
    uint16_t f16[3] = {0x3c00, 0xc000, 0x7bff};  // 1, -2, 65504
    uint16_t bf16[4];
    for (int i = 0; i < 4; i++) bf16[i] = f32_to_bf16_bits((float)(i - 1) * 0.5f);
    int64_t i64[3] = {-5, 0, (int64_t)1 << 40};
    int32_t i32 = 123456;
    int16_t i16[2] = {-32768, 32767};
    int8_t i8[3] = {-128, 0, 127};
    uint8_t u8[5] = {0, 1, 2, 254, 255};
    uint8_t bl[2] = {1, 0};
    uint8_t odd[3] = {9, 8, 7};  // makes the next tensor start at an odd offset
    float after_odd[2] = {4.5f, -6.0f};
    StWriteTensor w[] = {
        {"model.f32", ST_F32, 2, {2, 3}, f32},    {"f64", ST_F64, 1, {2}, f64},
        {"f16", ST_F16, 1, {3}, f16},             {"bf16", ST_BF16, 2, {2, 2}, bf16},
        {"i64", ST_I64, 1, {3}, i64},             {"i32 scalar", ST_I32, 0, {0}, &i32},
        {"i16", ST_I16, 1, {2}, i16},             {"i8", ST_I8, 1, {3}, i8},
        {"u8", ST_U8, 1, {5}, u8},                {"bool", ST_BOOL, 1, {2}, bl},
        {"empty", ST_F32, 2, {0, 4}, NULL},       {"odd", ST_U8, 1, {3}, odd},
        {"after_odd", ST_F32, 1, {2}, after_odd},
    };
    int n = (int)(sizeof w / sizeof w[0]);
    const char *mk[] = {"format", "note \"quoted\""}, *mv[] = {"pt", "back\\slash\nnew line \xc3\xa9"};
    char path[256];
    tmp_path(path, sizeof path, dir, "rt.safetensors");
    Error err = {{0}};
    int rc = safetensors_write(path, w, n, mk, mv, 2, &err);
    T_CHECK(tc, rc == 0, "write failed: %s", err.msg);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    T_CHECK(tc, access(tmp, F_OK) != 0, "temporary file %s left behind", tmp);

    FILE *f = fopen(path, "rb");
    unsigned char len8[8] = {0};
    T_CHECK(tc, f && fread(len8, 1, 8, f) == 8, "cannot reread header length");
    if (f) fclose(f);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | len8[i];
    T_CHECK(tc, hl % 8 == 0, "header length %llu not a multiple of 8", (unsigned long long)hl);

    SafeTensors st;
    rc = safetensors_open(&st, path, &err);
    T_CHECK(tc, rc == 0, "open failed: %s", err.msg);
    if (rc != 0) return;
    T_CHECK(tc, st.n == n, "tensor count %d != %d", st.n, n);
    for (int i = 0; i < n && i < st.n; i++) {
        const StTensor *t = &st.tensors[i];
        T_CHECK(tc, strcmp(t->name, w[i].name) == 0, "tensor %d: name '%s' != '%s' (order kept)", i, t->name,
                w[i].name);
        T_CHECK(tc, t->dtype == w[i].dtype && t->ndim == w[i].ndim, "tensor '%s': dtype/ndim differ", w[i].name);
        size_t numel = 1;
        for (int d = 0; d < w[i].ndim; d++) {
            T_CHECK(tc, t->shape[d] == w[i].shape[d], "tensor '%s': dim %d differs", w[i].name, d);
            numel *= (size_t)w[i].shape[d];
        }
        T_CHECK(tc, t->numel == numel && t->nbytes == numel * st_dtype_size(w[i].dtype), "tensor '%s': sizes",
                w[i].name);
        T_CHECK(tc, t->nbytes == 0 || memcmp(t->data, w[i].data, t->nbytes) == 0, "tensor '%s': bytes differ",
                w[i].name);
    }
    T_CHECK(tc, safetensors_find(&st, "i64") == &st.tensors[4], "find i64");
    T_CHECK(tc, safetensors_find(&st, "nope") == NULL, "find of a missing name");
    const char *m0 = safetensors_meta(&st, "format"), *m1 = safetensors_meta(&st, "note \"quoted\"");
    T_CHECK(tc, m0 && strcmp(m0, "pt") == 0, "metadata format");
    T_CHECK(tc, m1 && strcmp(m1, mv[1]) == 0, "metadata with escapes: got '%s'", m1 ? m1 : "(null)");
    T_CHECK(tc, safetensors_meta(&st, "absent") == NULL, "absent metadata key");

    // conversions straight from the mapping, including a misaligned F32 tensor
    float out[8];
    const StTensor *t = safetensors_find(&st, "after_odd");
    T_CHECK(tc, t && ((uintptr_t)t->data % 4) != 0, "after_odd should be misaligned in the mapping");
    if (t) {
        st_to_f32(t, out);
        T_CHECK(tc, out[0] == 4.5f && out[1] == -6.0f, "misaligned F32: %g %g", out[0], out[1]);
    }
    st_to_f32(safetensors_find(&st, "f64"), out);
    T_CHECK(tc, out[0] == (float)0.1 && isinf(out[1]) && out[1] < 0, "F64 -> F32: %g %g", out[0], out[1]);
    st_to_f32(safetensors_find(&st, "bf16"), out);
    T_CHECK(tc, out[0] == -0.5f && out[1] == 0.0f && out[3] == 1.0f, "BF16 -> F32");
    st_to_f32(safetensors_find(&st, "i16"), out);
    T_CHECK(tc, out[0] == -32768.0f && out[1] == 32767.0f, "I16 -> F32");
    st_to_f32(safetensors_find(&st, "i8"), out);
    T_CHECK(tc, out[0] == -128.0f && out[2] == 127.0f, "I8 -> F32");
    st_to_f32(safetensors_find(&st, "u8"), out);
    T_CHECK(tc, out[4] == 255.0f, "U8 -> F32");
    st_to_f32(safetensors_find(&st, "bool"), out);
    T_CHECK(tc, out[0] == 1.0f && out[1] == 0.0f, "BOOL -> F32");

    int32_t iv[8];
    rc = st_to_i32(safetensors_find(&st, "i64"), path, iv, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "'i64'") && strstr(err.msg, "1099511627776") && strstr(err.msg, path),
            "I64 out of int32 range: rc=%d %s", rc, err.msg);
    rc = st_to_i32(safetensors_find(&st, "i32 scalar"), path, iv, &err);
    T_CHECK(tc, rc == 0 && iv[0] == 123456, "I32 scalar -> int32");
    rc = st_to_i32(safetensors_find(&st, "u8"), path, iv, &err);
    T_CHECK(tc, rc == 0 && iv[3] == 254 && iv[4] == 255, "U8 -> int32");
    rc = st_to_i32(safetensors_find(&st, "i16"), path, iv, &err);
    T_CHECK(tc, rc == 0 && iv[0] == -32768, "I16 -> int32");
    rc = st_to_i32(safetensors_find(&st, "bool"), path, iv, &err);
    T_CHECK(tc, rc == 0 && iv[0] == 1 && iv[1] == 0, "BOOL -> int32");
    rc = st_to_i32(safetensors_find(&st, "model.f32"), path, iv, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "'model.f32'") && strstr(err.msg, "F32"), "F32 -> int32 refused: %s",
            err.msg);
    safetensors_close(&st);

    // no tensors at all is a valid (empty) file
    tmp_path(path, sizeof path, dir, "empty.safetensors");
    rc = safetensors_write(path, NULL, 0, NULL, NULL, 0, &err);
    T_CHECK(tc, rc == 0 && safetensors_open(&st, path, &err) == 0 && st.n == 0, "empty file: %s", err.msg);
    safetensors_close(&st);

    // writer input errors
    StWriteTensor dup[2] = {{"a", ST_U8, 1, {1}, u8}, {"a", ST_U8, 1, {1}, u8}};
    rc = safetensors_write(path, dup, 2, NULL, NULL, 0, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "'a'"), "duplicate names refused by the writer: %s", err.msg);
    StWriteTensor neg = {"neg", ST_U8, 1, {-1}, u8};
    rc = safetensors_write(path, &neg, 1, NULL, NULL, 0, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "'neg'"), "negative dim refused by the writer: %s", err.msg);
    rc = safetensors_write("/nonexistent-dir/x.safetensors", w, 1, NULL, NULL, 0, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "/nonexistent-dir/x.safetensors"), "unwritable path: %s", err.msg);
}

static float conv16(StDtype d, uint16_t bits) {
    StTensor t = {.name = "x", .dtype = d, .ndim = 1, .shape = {1}, .numel = 1, .nbytes = 2, .data = &bits};
    float f;
    st_to_f32(&t, &f);
    return f;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void test_half_conversions(TestCounts *tc) {
    T_CHECK(tc, conv16(ST_BF16, 0x3f80) == 1.0f, "bf16 0x3f80");
    T_CHECK(tc, conv16(ST_BF16, 0xc040) == -3.0f, "bf16 0xc040");
    T_CHECK(tc, conv16(ST_BF16, 0x0001) == ldexpf(1.0f, -133), "bf16 smallest subnormal");
    T_CHECK(tc, isinf(conv16(ST_BF16, 0xff80)) && conv16(ST_BF16, 0xff80) < 0, "bf16 -inf");
    T_CHECK(tc, isnan(conv16(ST_BF16, 0x7fc0)), "bf16 nan");
    T_CHECK(tc, conv16(ST_F16, 0x3c00) == 1.0f, "f16 0x3c00");
    T_CHECK(tc, conv16(ST_F16, 0xc100) == -2.5f, "f16 0xc100");
    T_CHECK(tc, conv16(ST_F16, 0x7bff) == 65504.0f, "f16 max");
    T_CHECK(tc, conv16(ST_F16, 0x0400) == ldexpf(1.0f, -14), "f16 smallest normal");
    T_CHECK(tc, conv16(ST_F16, 0x0001) == ldexpf(1.0f, -24), "f16 smallest subnormal: %g", conv16(ST_F16, 1));
    T_CHECK(tc, conv16(ST_F16, 0x03ff) == ldexpf(1023.0f, -24), "f16 largest subnormal");
    T_CHECK(tc, conv16(ST_F16, 0x8200) == -ldexpf(1.0f, -15), "f16 negative subnormal");
    T_CHECK(tc, f32_bits(conv16(ST_F16, 0x8000)) == 0x80000000u, "f16 -0 keeps its sign");
    T_CHECK(tc, isinf(conv16(ST_F16, 0xfc00)) && conv16(ST_F16, 0xfc00) < 0, "f16 -inf");
    T_CHECK(tc, isinf(conv16(ST_F16, 0x7c00)) && conv16(ST_F16, 0x7c00) > 0, "f16 +inf");
    T_CHECK(tc, isnan(conv16(ST_F16, 0x7e00)) && isnan(conv16(ST_F16, 0x7c01)), "f16 nan");
    // all finite halves against the value formula
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
        if (e == 31) continue;
        float ref = e ? ldexpf((float)(1024 + m), (int)e - 25) : ldexpf((float)m, -24);
        if (h & 0x8000) ref = -ref;
        bad += f32_bits(conv16(ST_F16, (uint16_t)h)) != f32_bits(ref);
    }
    T_CHECK(tc, bad == 0, "%d finite f16 values widen wrongly", bad);
}

static void test_python_fixture(TestCounts *tc, const char *src_root) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/st_python.safetensors", src_root);
    SafeTensors st;
    Error err = {{0}};
    int rc = safetensors_open(&st, path, &err);
    T_CHECK(tc, rc == 0, "python fixture: %s", err.msg);
    if (rc != 0) return;
    T_CHECK(tc, st.n == 5, "python fixture has %d tensors", st.n);
    const char *src = safetensors_meta(&st, "source");
    T_CHECK(tc, src && strcmp(src, "tools/make_st_fixture.py") == 0, "python fixture metadata");
    float out[8];
    const StTensor *t = safetensors_find(&st, "f32");
    T_CHECK(tc, t && t->dtype == ST_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3, "f32 shape");
    if (t) {
        st_to_f32(t, out);
        const float ref[6] = {0.0f, 1.5f, -2.0f, 3.25f, 1e-3f, -1e30f};
        T_CHECK(tc, memcmp(out, ref, sizeof ref) == 0, "f32 values");
    }
    t = safetensors_find(&st, "f16");
    T_CHECK(tc, t && t->dtype == ST_F16 && t->ndim == 1 && t->shape[0] == 5, "f16 shape");
    if (t) {
        st_to_f32(t, out);
        T_CHECK(tc, out[0] == 1.0f && out[1] == -0.5f && out[2] == 65504.0f && out[3] == ldexpf(1.0f, -24) &&
                        isinf(out[4]) && out[4] < 0, "f16 values %g %g %g %g %g", out[0], out[1], out[2], out[3],
                out[4]);
    }
    t = safetensors_find(&st, "bf16");
    T_CHECK(tc, t && t->dtype == ST_BF16 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 2, "bf16 shape");
    if (t) {
        st_to_f32(t, out);
        T_CHECK(tc, out[0] == 1.0f && out[1] == -2.0f && out[2] == 0.15625f && out[3] == ldexpf(1.0f, -133),
                "bf16 values");
    }
    t = safetensors_find(&st, "i64");
    T_CHECK(tc, t && t->dtype == ST_I64 && t->shape[0] == 3, "i64 shape");
    if (t) {
        st_to_f32(t, out);
        T_CHECK(tc, out[0] == -1.0f && out[1] == 0.0f && out[2] == ldexpf(1.0f, 40), "i64 as f32");
        int32_t iv[3];
        T_CHECK(tc, st_to_i32(t, path, iv, &err) == -1 && strstr(err.msg, "'i64'"), "i64 2^40 does not fit int32");
    }
    t = safetensors_find(&st, "i64_small");
    int32_t iv[2] = {0, 0};
    T_CHECK(tc, t && st_to_i32(t, path, iv, &err) == 0 && iv[0] == 7 && iv[1] == -3, "i64_small as int32");
    safetensors_close(&st);
}

#define ENT(dt, shape, b, e) "{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static void test_malformed(TestCounts *tc, const char *dir) {
    char path[256];
    SafeTensors st;
    Error err = {{0}};

    tmp_path(path, sizeof path, dir, "missing.safetensors");
    T_CHECK(tc, safetensors_open(&st, path, &err) == -1 && strstr(err.msg, "missing.safetensors"), "missing file: %s",
            err.msg);

    tmp_path(path, sizeof path, dir, "short.safetensors");
    write_bytes(path, "\x05\0\0\0\0", 5);
    T_CHECK(tc, safetensors_open(&st, path, &err) == -1 && strstr(err.msg, "short.safetensors") &&
                    strstr(err.msg, "too short"), "5-byte file: %s", err.msg);

    const unsigned char zero_len[8] = {0};
    tmp_path(path, sizeof path, dir, "zerolen.safetensors");
    write_bytes(path, zero_len, 8);
    T_CHECK(tc, safetensors_open(&st, path, &err) == -1 && strstr(err.msg, "zerolen.safetensors") &&
                    strstr(err.msg, "length is 0"), "header length 0: %s", err.msg);

    unsigned char big[16] = {0x40, 0, 0, 0, 0, 0, 0, 0, '{', '}'};  // claims 64 bytes, has 8
    tmp_path(path, sizeof path, dir, "pastend.safetensors");
    write_bytes(path, big, sizeof big);
    T_CHECK(tc, safetensors_open(&st, path, &err) == -1 && strstr(err.msg, "pastend.safetensors") &&
                    strstr(err.msg, "64"), "header past the end: %s", err.msg);

    unsigned char huge[16] = {0, 0, 0, 0x10, 0, 0, 0, 0, '{', '}'};  // 256 MiB
    tmp_path(path, sizeof path, dir, "hugehdr.safetensors");
    write_bytes(path, huge, sizeof huge);
    T_CHECK(tc, safetensors_open(&st, path, &err) == -1 && strstr(err.msg, "hugehdr.safetensors") &&
                    strstr(err.msg, "100 MB"), "header > 100 MB: %s", err.msg);

    tmp_path(path, sizeof path, dir, "nul.safetensors");
    write_bytes(path, "\x08\0\0\0\0\0\0\0{\"a\0\":1}", 16);
    T_CHECK(tc, safetensors_open(&st, path, &err) == -1 && strstr(err.msg, "nul.safetensors") &&
                    strstr(err.msg, "0x00"), "NUL in header: %s", err.msg);

    expect_reject(tc, dir, "notjson.safetensors", "{\"a\": ", 0, "JSON", NULL);
    expect_reject(tc, dir, "array.safetensors", "[1, 2]", 0, "object", "array");
    expect_reject(tc, dir, "trailing.safetensors", "{} x", 0, "trailing", NULL);
    expect_reject(tc, dir, "badutf8.safetensors", "{\"\xff\":1}", 0, "UTF-8", NULL);
    expect_reject(tc, dir, "entrynum.safetensors", "{\"w.a\": 5}", 0, "'w.a'", "found a number");
    expect_reject(tc, dir, "dtype.safetensors", "{\"w.b\":" ENT("F8_E4M3", "[1]", 0, 1) "}", 1, "'w.b'", "BF16");
    expect_reject(tc, dir, "dtypetype.safetensors", "{\"w.b\":{\"dtype\":3,\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                  "'w.b'", "dtype");
    expect_reject(tc, dir, "shapenum.safetensors", "{\"w.c\":" ENT("U8", "4", 0, 4) "}", 4, "'w.c'", "shape");
    expect_reject(tc, dir, "shapeneg.safetensors", "{\"w.c\":" ENT("U8", "[-4]", 0, 4) "}", 4,
                  "'w.c'", "shape[0] must be a non-negative integer below 2^53, found -4");
    expect_reject(tc, dir, "shapefrac.safetensors", "{\"w.c\":" ENT("U8", "[2, 1.5]", 0, 3) "}", 3,
                  "'w.c'", "shape[1]");
    expect_reject(tc, dir, "shapestr.safetensors", "{\"w.c\":" ENT("U8", "[\"4\"]", 0, 4) "}", 4,
                  "'w.c'", "found \"4\"");
    expect_reject(tc, dir, "dims.safetensors", "{\"w.d\":" ENT("U8", "[1,1,1,1,1,1,1,1,1]", 0, 1) "}", 1, "'w.d'",
                  "9 dimensions");
    expect_reject(tc, dir, "overflow.safetensors",
                  "{\"w.e\":" ENT("F32", "[4294967296, 4294967296, 4294967296]", 0, 4) "}", 4, "'w.e'", "overflow");
    expect_reject(tc, dir, "nooff.safetensors", "{\"w.f\":{\"dtype\":\"U8\",\"shape\":[4]}}", 4, "'w.f'",
                  "data_offsets");
    expect_reject(tc, dir, "oneoff.safetensors", "{\"w.f\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0]}}", 4,
                  "'w.f'", "found [0]");
    expect_reject(tc, dir, "stroff.safetensors",
                  "{\"w.f\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,\"4\"]}}", 4, "'w.f'", "[0,\"4\"]");
    expect_reject(tc, dir, "backoff.safetensors", "{\"w.g\":" ENT("U8", "[4]", 4, 0) "}", 4,
                  "'w.g'", "begin after end");
    expect_reject(tc, dir, "beyond.safetensors", "{\"w.h\":" ENT("U8", "[8]", 0, 8) "}", 4, "'w.h'", "beyond");
    expect_reject(tc, dir, "nbytes.safetensors",
                  "{\"model.layers.0.self_attn.q_proj.weight\":" ENT("BF16", "[64, 64]", 0, 100) "}", 100,
                  "'model.layers.0.self_attn.q_proj.weight'", "[0, 100) hold 100 bytes but BF16 [64, 64] needs 8192");
    expect_reject(tc, dir, "overlap.safetensors",
                  "{\"w.i\":" ENT("U8", "[4]", 0, 4) ",\"w.j\":" ENT("U8", "[4]", 2, 6) "}", 6, "'w.j'", "'w.i'");
    expect_reject(tc, dir, "hole.safetensors",
                  "{\"w.k\":" ENT("U8", "[2]", 0, 2) ",\"w.l\":" ENT("U8", "[2]", 4, 6) "}", 6, "'w.l'",
                  "after tensor 'w.k'");
    expect_reject(tc, dir, "leadgap.safetensors", "{\"w.m\":" ENT("U8", "[2]", 2, 4) "}", 4,
                  "'w.m'", "hole of 2 bytes at the start");
    expect_reject(tc, dir, "tail.safetensors", "{\"w.n\":" ENT("U8", "[2]", 0, 2) "}", 4, "trailing", NULL);
    expect_reject(tc, dir, "dup.safetensors",
                  "{\"w.o\":" ENT("U8", "[2]", 0, 2) ",\"w.o\":" ENT("U8", "[2]", 2, 4) "}", 4, "'w.o'", "twice");
    expect_reject(tc, dir, "metanum.safetensors", "{\"__metadata__\": 5}", 0, "__metadata__", "number");
    expect_reject(tc, dir, "metaval.safetensors", "{\"__metadata__\": {\"epoch\": 1}}", 0, "'epoch'", "string");

    // accepted edge cases: tensors listed out of offset order, zero-size tensors, null metadata
    tmp_path(path, sizeof path, dir, "unordered.safetensors");
    const unsigned char data[6] = {1, 2, 3, 4, 5, 6};
    write_raw(path, "{\"__metadata__\":null,\"b\":" ENT("U8", "[2]", 4, 6) ",\"z\":" ENT("F32", "[0]", 4, 4)
                    ",\"a\":" ENT("U8", "[4]", 0, 4) "}   ", data, 6);
    int rc = safetensors_open(&st, path, &err);
    T_CHECK(tc, rc == 0, "unordered offsets should load: %s", err.msg);
    if (rc == 0) {
        const StTensor *b = safetensors_find(&st, "b");
        T_CHECK(tc, st.n == 3 && b && ((const unsigned char *)b->data)[0] == 5, "unordered tensor data");
        safetensors_close(&st);
    }
}

int main(int argc, char **argv) {
    const char *src_root = argc > 1 ? argv[1] : ".";
    char dir[] = "/tmp/actlora_st_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 2; }
    TestCounts tc = {0, 0};
    test_round_trip(&tc, dir);
    test_half_conversions(&tc);
    test_python_fixture(&tc, src_root);
    test_malformed(&tc, dir);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return t_finish(&tc, "test_safetensors");
}
