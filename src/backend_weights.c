// backend_weights.c: the weight-format part of the op table (backend.h, "frozen weights") for the
// CPU backend, and backend_set_dtype, which resolves model.dtype for any backend.
//
// CPU weight formats:
//   fp32: weights are plain fp32 buffers, wgemm is be->gemm, wembedding_fwd is be->embedding_fwd.
//   bf16: an emulation of the CUDA bf16 path with the same numerics — weights are stored as fp32
//         holding bf16-rounded values (round-to-nearest-even, as __float2bfloat16_rn), and wgemm rounds
//         its activation operand to bf16 into scratch before an fp32 sgemm. bf16 x bf16 products are
//         exact in fp32, so both backends compute the same sums up to summation order. Memory and
//         speed are those of fp32: this is a reference for tests, not a production mode.
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "actlora/backend.h"
#include "actlora/common.h"
#include "actlora/rng.h"
#include "backend_cpu_internal.h"

static int cpu_set_weight_dtype(Backend *be, int dtype) {
    if (dtype != BACKEND_WEIGHT_FP32 && dtype != BACKEND_WEIGHT_BF16) return -1;
    be->weight_dtype = dtype;
    be->weight_bytes = sizeof(float);  // both formats store fp32 on the CPU
    return 0;
}

static void *cpu_weight_alloc(Backend *be, size_t n, const char *what) { return be->alloc(be, n * sizeof(float), what); }

static void cpu_weight_upload(Backend *be, void *w, const float *src_host, size_t n) {
    if (!n) return;
    memcpy(w, src_host, n * sizeof(float));
    if (be->weight_dtype == BACKEND_WEIGHT_BF16) round_bf16_inplace(be, (float *)w, n);
}

static void cpu_weight_randn(Backend *be, void *w, size_t n, float mean, float std, uint64_t key) {
    be->randn(be, (float *)w, n, mean, std, key);
    if (be->weight_dtype == BACKEND_WEIGHT_BF16) round_bf16_inplace(be, (float *)w, n);
}

// wgemm's activation operand: X itself (fp32), or X rounded to bf16 in scratch (bf16 emulation)
static const float *operand_rounded(Backend *be, const float *X, int M, int K) {
    if (be->weight_dtype != BACKEND_WEIGHT_BF16 || M <= 0 || K <= 0) return X;
    size_t n = (size_t)M * (size_t)K;
    float *s = cpu_scratch(be, n, "wgemm bf16 operand");
    #pragma omp parallel for num_threads(be->threads) if (n >= 32768) schedule(static)
    for (size_t i = 0; i < n; i++) s[i] = round_bf16(X[i]);
    return s;
}

static void cpu_wgemm(Backend *be, int trans_w, int M, int N, int K, float alpha, const float *X, const void *W,
                      float beta, float *Y) {
    be->gemm(be, 0, trans_w, M, N, K, alpha, operand_rounded(be, X, M, K), (const float *)W, beta, Y);
}

// n Linear forwards sharing X: X rounded once, then the fp32 sgemm per weight (what n wgemm calls do).
static void cpu_wgemm_multi(Backend *be, int n, int M, int K, const float *X, const void *const *W, const int *N,
                            float *const *Y) {
    check(n >= 0, "wgemm_multi: negative count %d", n);
    const float *Xr = operand_rounded(be, X, M, K);
    for (int i = 0; i < n; i++) be->gemm(be, 0, 1, M, N[i], K, 1.0f, Xr, (const float *)W[i], 0.0f, Y[i]);
}

// ---------------------------------------------------------------------------- bordered weights

// The operand [X | Xa] of a bordered product: op [M, ld], X [M, k0] into columns [0, k0), Xa [M, r]
// (when given) into [k0, k0 + r); rounded to bf16 in the bf16 format.
static void operand_fill(Backend *be, float *op, int ld, const float *X, int k0, const float *Xa, int r, int M) {
    int bf = be->weight_dtype == BACKEND_WEIGHT_BF16;
    // (one thread: an OpenMP region right before OpenBLAS's own threads makes both spin against each other)
    for (int m = 0; m < M; m++) {
        float *o = op + (size_t)m * ld;
        const float *x = X + (size_t)m * k0;
        for (int c = 0; c < k0; c++) o[c] = bf ? round_bf16(x[c]) : x[c];
        if (Xa)
            for (int j = 0; j < r; j++) o[k0 + j] = bf ? round_bf16(Xa[(size_t)m * r + j]) : Xa[(size_t)m * r + j];
    }
}

// Y [M, n] = op [M, k] (row stride ldo) @ rows / columns of the bordered Wb (row stride in + r), beta Y
void cpu_bordered_gemm(int trans_w, int M, int n, int k, const float *op, int ldo, const float *Wb, int ldw,
                          float beta, float *Y) {
    if (beta == 0.0f) memset(Y, 0, (size_t)M * (size_t)n * sizeof(float));  // never read what beta 0 overwrites
    cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_w ? CblasTrans : CblasNoTrans, M, n, k, 1.0f, op, ldo, Wb, ldw,
                beta, Y, n);
}

// Y = [X | Xa] op(Wb) + beta Y (backend.h, "LoRA on the frozen GEMM")
static void cpu_wgemm_lora(Backend *be, int trans_w, int M, int out, int in, int r, const float *X, const float *Xa,
                           const void *Wb, float beta, float *Y) {
    cpu_lora_shape_check("wgemm_lora", M, out, in, r);
    if (M == 0) return;
    int k0 = trans_w ? in : out, k = k0 + (Xa ? r : 0);
    float *op = cpu_scratch(be, (size_t)M * (size_t)k, "wgemm_lora operand [X | Xa]");
    operand_fill(be, op, k, X, k0, Xa, r, M);
    cpu_bordered_gemm(trans_w, M, trans_w ? out : in, k, op, k, (const float *)Wb, in + r, beta, Y);
}

// n bordered forwards sharing X: X placed (and rounded) once, each Xa_i written into the last r columns
static void cpu_wgemm_lora_multi(Backend *be, int n, int M, int in, int r, const float *X, const float *const *Xa,
                                 const void *const *Wb, const int *out, float *const *Y) {
    check(n >= 0, "wgemm_lora_multi: negative count %d", n);
    for (int i = 0; i < n; i++) cpu_lora_shape_check("wgemm_lora_multi", M, out[i], in, r);
    if (M == 0 || n == 0) return;
    int ld = in + r;
    float *op = cpu_scratch(be, (size_t)M * (size_t)ld, "wgemm_lora operand [X | Xa]");
    operand_fill(be, op, ld, X, in, NULL, r, M);
    for (int i = 0; i < n; i++) {
        if (Xa[i]) {
            int bf = be->weight_dtype == BACKEND_WEIGHT_BF16;
            for (int m = 0; m < M; m++)
                for (int j = 0; j < r; j++) {
                    float v = Xa[i][(size_t)m * r + j];
                    op[(size_t)m * ld + in + j] = bf ? round_bf16(v) : v;
                }
        }
        cpu_bordered_gemm(1, M, out[i], Xa[i] ? ld : in, op, ld, (const float *)Wb[i], ld, 0.0f, Y[i]);
    }
}

// The border: rows [0, out) columns [in, in + r) = s B, rows [out, out + r) columns [0, in) = A
static void cpu_weight_set_lora(Backend *be, void *Wb, int out, int in, int r, const float *A, const float *B,
                                float s) {
    cpu_lora_shape_check("weight_set_lora", 0, out, in, r);
    int bf = be->weight_dtype == BACKEND_WEIGHT_BF16;
    float *w = (float *)Wb;
    size_t ld = (size_t)in + (size_t)r;
    for (int i = 0; i < out; i++)
        for (int j = 0; j < r; j++) {
            float v = s * B[(size_t)i * r + j];
            w[(size_t)i * ld + in + j] = bf ? round_bf16(v) : v;
        }
    for (int j = 0; j < r; j++)
        for (int c = 0; c < in; c++) {
            float v = A[(size_t)j * in + c];
            w[((size_t)out + j) * ld + c] = bf ? round_bf16(v) : v;
        }
}

// The plain draw (cpu_weight_randn: the randn op's values, rounded in bf16) into a strided block.
static void cpu_weight_randn_2d(Backend *be, void *w, int rows, int cols, int ld, float mean, float std,
                                uint64_t key) {
    check(rows >= 0 && cols >= 0 && ld >= cols, "weight_randn_2d: bad shape %d x %d, stride %d", rows, cols, ld);
    int bf = be->weight_dtype == BACKEND_WEIGHT_BF16;
    float *x = (float *)w;
    #pragma omp parallel for num_threads(be->threads) if ((size_t)rows * cols >= 32768) schedule(static)
    for (int i = 0; i < rows; i++)
        for (int c = 0; c < cols; c++) {
            float v = mean + std * rng_normal(key, (uint64_t)i * (uint64_t)cols + (uint64_t)c);
            x[(size_t)i * ld + c] = bf ? round_bf16(v) : v;
        }
}

static void cpu_wembedding_fwd(Backend *be, float *out, const int32_t *ids, const void *table, int N, int C) {
    be->embedding_fwd(be, out, ids, (const float *)table, N, C);
}

void backend_cpu_weights_init(Backend *be) {
    be->weight_dtype = BACKEND_WEIGHT_FP32;
    be->weight_bytes = sizeof(float);
    be->set_weight_dtype = cpu_set_weight_dtype;
    be->weight_alloc = cpu_weight_alloc;
    be->weight_upload = cpu_weight_upload;
    be->weight_randn = cpu_weight_randn;
    be->wgemm = cpu_wgemm;
    be->wgemm_multi = cpu_wgemm_multi;
    be->wgemm_lora = cpu_wgemm_lora;
    be->wgemm_lora_multi = cpu_wgemm_lora_multi;
    be->weight_set_lora = cpu_weight_set_lora;
    be->weight_randn_2d = cpu_weight_randn_2d;
    be->wembedding_fwd = cpu_wembedding_fwd;
}

// ---------------------------------------------------------------------------- model.dtype

const char *backend_weight_dtype_name(const Backend *be) {
    return be->weight_dtype == BACKEND_WEIGHT_BF16 ? "bf16" : "fp32";
}

int backend_set_dtype(Backend *be, const char *dtype, char *msg, size_t msg_n) {
    int want;
    if (!dtype || strcmp(dtype, "auto") == 0) {
        want = strcmp(be->name, "cuda") == 0 ? BACKEND_WEIGHT_BF16 : BACKEND_WEIGHT_FP32;
    } else if (strcmp(dtype, "fp32") == 0) {
        want = BACKEND_WEIGHT_FP32;
    } else if (strcmp(dtype, "bf16") == 0) {
        want = BACKEND_WEIGHT_BF16;
    } else {
        if (msg && msg_n) snprintf(msg, msg_n, "model.dtype = \"%s\": expected \"auto\", \"fp32\" or \"bf16\"", dtype);
        return -1;
    }
    if (!be->set_weight_dtype || be->set_weight_dtype(be, want) != 0) {
        if (msg && msg_n)
            snprintf(msg, msg_n, "model.dtype = \"%s\": the %s backend cannot use %s weights", dtype ? dtype : "auto",
                     be->name, want == BACKEND_WEIGHT_BF16 ? "bf16" : "fp32");
        return -1;
    }
    if (msg && msg_n) msg[0] = 0;
    return 0;
}
