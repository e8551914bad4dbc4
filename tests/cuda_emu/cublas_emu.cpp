// cublas_emu.cpp: the CUDA emulator's cuBLAS (cublas_v2.h).
// GEMMs are column-major, as cuBLAS: C = alpha op(A) op(B) + beta C with C m x n, op(A) m x k, op(B) k x n.
// Each output element is an fp32 sum over l in order; inputs widened exactly from bf16, rounded to TF32 (10-bit
// mantissa, nearest even) with CUBLAS_COMPUTE_32F_FAST_TF32 or the TF32 math mode; a bf16 C is rounded from the
// fp32 result. beta = 0 overwrites C without reading it; with alpha = 0 or k = 0, A and B are not read. The argument checks are cuBLAS's (m, n, k >= 0, leading
// dimensions at least the rows stored), and every matrix must lie inside one device allocation.
#include <stdio.h>
#include <stdlib.h>
#include <vector>

#include "cublas_v2.h"
#include "cuda_bf16.h"

extern "C" void cuda_emu_check_device(const void *p, size_t bytes, const char *what);
extern "C" void cuda_emu_race_host_write(const void *p, size_t bytes);  // emu_sched.h
extern "C" void cuda_emu_set_activity(const char *what);

struct CudaEmuBlas {
    cublasMath_t math;
    cublasPointerMode_t pointer_mode;
};

cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = (cublasHandle_t)calloc(1, sizeof(CudaEmuBlas));
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
    (void)h, (void)s;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes) {
    (void)h;
    cuda_emu_check_device(ws, bytes, "cublasSetWorkspace");
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetPointerMode(cublasHandle_t h, cublasPointerMode_t m) {
    h->pointer_mode = m;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
    h->math = m;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetAtomicsMode(cublasHandle_t h, cublasAtomicsMode_t m) {
    (void)h, (void)m;
    return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "unknown cuBLAS status";
}

static float tf32(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
    memcpy(&f, &u, 4);
    return f;
}

static size_t type_bytes(cudaDataType_t t) { return t == CUDA_R_16BF ? 2 : 4; }

static float load(const void *p, cudaDataType_t t, size_t i, int round_tf32) {
    if (t == CUDA_R_16BF) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    float v = ((const float *)p)[i];
    return round_tf32 ? tf32(v) : v;
}

typedef struct {
    cublasOperation_t ta, tb;
    int m, n, k, lda, ldb, ldc;
    cudaDataType_t at, bt, ct;
    int round_tf32;
} GemmShape;

static cublasStatus_t gemm_check(const char *call, const GemmShape *s) {
    int rows_a = s->ta == CUBLAS_OP_N ? s->m : s->k, rows_b = s->tb == CUBLAS_OP_N ? s->k : s->n;
    if (s->m < 0 || s->n < 0 || s->k < 0 || s->lda < (rows_a > 1 ? rows_a : 1) || s->ldb < (rows_b > 1 ? rows_b : 1) ||
        s->ldc < (s->m > 1 ? s->m : 1)) {
        fprintf(stderr, "cuda_emu: %s: invalid arguments m %d n %d k %d lda %d ldb %d ldc %d (op A %s, op B %s)\n", call,
                s->m, s->n, s->k, s->lda, s->ldb, s->ldc, s->ta == CUBLAS_OP_N ? "N" : "T", s->tb == CUBLAS_OP_N ? "N" : "T");
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    return CUBLAS_STATUS_SUCCESS;
}

// bytes spanned by a column-major rows x cols matrix with leading dimension ld
static size_t span(int rows, int cols, int ld, size_t el) {
    return rows <= 0 || cols <= 0 ? 0 : ((size_t)(cols - 1) * (size_t)ld + (size_t)rows) * el;
}

static void gemm_one(const char *call, const GemmShape *s, float alpha, const void *A, const void *B, float beta,
                     void *C) {
    int rows_a = s->ta == CUBLAS_OP_N ? s->m : s->k, cols_a = s->ta == CUBLAS_OP_N ? s->k : s->m;
    int rows_b = s->tb == CUBLAS_OP_N ? s->k : s->n, cols_b = s->tb == CUBLAS_OP_N ? s->n : s->k;
    char what[96];
    snprintf(what, sizeof what, "%s matrix C", call);
    cuda_emu_check_device(C, span(s->m, s->n, s->ldc, type_bytes(s->ct)), what);
    cuda_emu_race_host_write(C, span(s->m, s->n, s->ldc, type_bytes(s->ct)));  // C is written below
    if (s->k > 0 && alpha != 0.0f) {
        snprintf(what, sizeof what, "%s matrix A", call);
        cuda_emu_check_device(A, span(rows_a, cols_a, s->lda, type_bytes(s->at)), what);
        snprintf(what, sizeof what, "%s matrix B", call);
        cuda_emu_check_device(B, span(rows_b, cols_b, s->ldb, type_bytes(s->bt)), what);
    }
    if (s->k == 0 || alpha == 0.0f) {  // C = beta C, A and B not read (BLAS)
        for (int j = 0; j < s->n; j++)
            for (int i = 0; i < s->m; i++) {
                size_t c = (size_t)j * s->ldc + i;
                float r = beta != 0.0f ? beta * load(C, s->ct, c, 0) : 0.0f;
                if (s->ct == CUDA_R_16BF)
                    ((__nv_bfloat16 *)C)[c] = __float2bfloat16_rn(r);
                else
                    ((float *)C)[c] = r;
            }
        return;
    }
    // op(A) as a[i][l] and op(B) as b[j][l], contiguous in l
    std::vector<float> a((size_t)s->m * s->k), b((size_t)s->n * s->k);
    for (int i = 0; i < s->m; i++)
        for (int l = 0; l < s->k; l++)
            a[(size_t)i * s->k + l] = load(A, s->at, s->ta == CUBLAS_OP_N ? (size_t)l * s->lda + i : (size_t)i * s->lda + l,
                                           s->round_tf32);
    for (int j = 0; j < s->n; j++)
        for (int l = 0; l < s->k; l++)
            b[(size_t)j * s->k + l] = load(B, s->bt, s->tb == CUBLAS_OP_N ? (size_t)j * s->ldb + l : (size_t)l * s->ldb + j,
                                           s->round_tf32);
    for (int j = 0; j < s->n; j++)
        for (int i = 0; i < s->m; i++) {
            const float *ai = &a[(size_t)i * s->k], *bj = &b[(size_t)j * s->k];
            float acc = 0.0f;
            for (int l = 0; l < s->k; l++) acc += ai[l] * bj[l];
            size_t c = (size_t)j * s->ldc + i;
            float r = alpha * acc;
            if (beta != 0.0f) r += beta * load(C, s->ct, c, 0);
            if (s->ct == CUDA_R_16BF)
                ((__nv_bfloat16 *)C)[c] = __float2bfloat16_rn(r);
            else
                ((float *)C)[c] = r;
        }
}

static cublasStatus_t gemm(const char *call, cublasHandle_t h, const GemmShape *s, const void *alpha,
                           const void *const *A, const void *const *B, const void *beta, void *const *C, int batch,
                           cublasComputeType_t compute) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (h->pointer_mode != CUBLAS_POINTER_MODE_HOST) {
        fprintf(stderr, "cuda_emu: %s: only the host pointer mode is emulated\n", call);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_FAST_TF32) return CUBLAS_STATUS_NOT_SUPPORTED;
    cublasStatus_t st = gemm_check(call, s);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    if (batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    cuda_emu_set_activity(call);
    float al = *(const float *)alpha, be = *(const float *)beta;
    for (int i = 0; i < batch; i++) gemm_one(call, s, al, A[i], B[i], be, C[i]);
    cuda_emu_set_activity("host code");
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc) {
    GemmShape s = {ta, tb, m, n, k, lda, ldb, ldc, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
                   h && h->math == CUBLAS_TF32_TENSOR_OP_MATH};
    const void *a = A, *b = B;
    void *c = C;
    return gemm("cublasSgemm", h, &s, alpha, &a, &b, beta, &c, 1, CUBLAS_COMPUTE_32F);
}

cublasStatus_t cublasSgemmBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                  const float *alpha, const float *const A[], int lda, const float *const B[], int ldb,
                                  const float *beta, float *const C[], int ldc, int batch) {
    GemmShape s = {ta, tb, m, n, k, lda, ldb, ldc, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
                   h && h->math == CUBLAS_TF32_TENSOR_OP_MATH};
    size_t pb = (size_t)(batch > 0 ? batch : 0) * sizeof(void *);
    cuda_emu_check_device(A, pb, "cublasSgemmBatched's A pointer array");
    cuda_emu_check_device(B, pb, "cublasSgemmBatched's B pointer array");
    cuda_emu_check_device(C, pb, "cublasSgemmBatched's C pointer array");
    return gemm("cublasSgemmBatched", h, &s, alpha, (const void *const *)A, (const void *const *)B, beta,
                (void *const *)C, batch, CUBLAS_COMPUTE_32F);
}

static int types_ok(cudaDataType_t a, cudaDataType_t b, cudaDataType_t c, cublasComputeType_t compute) {
    if (a != b) return 0;
    if (a == CUDA_R_16BF) return compute == CUBLAS_COMPUTE_32F && (c == CUDA_R_32F || c == CUDA_R_16BF);
    return a == CUDA_R_32F && c == CUDA_R_32F;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType_t Atype, int lda, const void *B,
                            cudaDataType_t Btype, int ldb, const void *beta, void *C, cudaDataType_t Ctype, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    (void)algo;
    if (!types_ok(Atype, Btype, Ctype, compute)) return CUBLAS_STATUS_NOT_SUPPORTED;
    GemmShape s = {ta, tb, m, n, k, lda, ldb, ldc, Atype, Btype, Ctype,
                   Atype == CUDA_R_32F && (compute == CUBLAS_COMPUTE_32F_FAST_TF32 || (h && h->math == CUBLAS_TF32_TENSOR_OP_MATH))};
    void *c = C;
    return gemm("cublasGemmEx", h, &s, alpha, &A, &B, beta, &c, 1, compute);
}

cublasStatus_t cublasGemmBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                   const void *alpha, const void *const A[], cudaDataType_t Atype, int lda,
                                   const void *const B[], cudaDataType_t Btype, int ldb, const void *beta,
                                   void *const C[], cudaDataType_t Ctype, int ldc, int batch,
                                   cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    (void)algo;
    if (!types_ok(Atype, Btype, Ctype, compute)) return CUBLAS_STATUS_NOT_SUPPORTED;
    GemmShape s = {ta, tb, m, n, k, lda, ldb, ldc, Atype, Btype, Ctype,
                   Atype == CUDA_R_32F && (compute == CUBLAS_COMPUTE_32F_FAST_TF32 || (h && h->math == CUBLAS_TF32_TENSOR_OP_MATH))};
    size_t pb = (size_t)(batch > 0 ? batch : 0) * sizeof(void *);
    cuda_emu_check_device(A, pb, "cublasGemmBatchedEx's A pointer array");
    cuda_emu_check_device(B, pb, "cublasGemmBatchedEx's B pointer array");
    cuda_emu_check_device(C, pb, "cublasGemmBatchedEx's C pointer array");
    return gemm("cublasGemmBatchedEx", h, &s, alpha, A, B, beta, C, batch, compute);
}
