// lora_gemm.cu: LoRA on the frozen GEMM for the CUDA backend (backend.h, "LoRA on the frozen GEMM";
// docs/gpu.md "Fused LoRA").
//
// A bordered weight is a row-major [out + r, in + r] matrix in the weight format (row stride in + r):
// W | s B on the first out rows, A | unused on the last r. The operand [X | Xa] is written into the
// grow-only wgemm operand buffer (rounded to bf16 in the bf16 format, copied in fp32) with row stride
// k0 + r, and one cuBLAS product covers the frozen weight and the adapter, so the adapter's
// up-projection (forward) and input-gradient term (backward) cost no pass over the activations of
// their own. The border is written by weight_set_lora from the fp32 A and B (every forward).
//
// cuBLAS mapping, as cu_wgemm (row-major Y = column-major Y^T): Y^T [n, M] = op(Wb)^T op^T with
//   trans_w = 1: CUBLAS_OP_T on Wb (its first out rows, k = in (+ r) columns), lda = in + r
//   trans_w = 0: CUBLAS_OP_N on Wb (its first k = out (+ r) rows, n = in columns), lda = in + r
// and the operand as CUBLAS_OP_N with ldb = its row stride. bf16: cublasGemmEx (bf16 x bf16 -> fp32,
// CUBLAS_COMPUTE_32F); fp32: cublasSgemm. The backend's handle, stream and fixed workspace, atomics
// off: deterministic run to run.
#include <cuda_bf16.h>

#include "actlora/rng.h"
#include "cuda_internal.cuh"

// Rows of the operand: op[m, c] = X[m, c] for c < k0 (when X), op[m, k0 + j] = Xa[m, j] for j < r (when
// Xa); row stride ld. blockIdx.y strides over rows, the threads of blockIdx.x over columns.
template <typename T>
static __global__ void k_operand(T *__restrict__ op, int ld, const float *__restrict__ X, int k0,
                                 const float *__restrict__ Xa, int r, int M) {
    for (int m = blockIdx.y; m < M; m += gridDim.y) {
        T *o = op + (size_t)m * ld;
        if (X) {
            const float *x = X + (size_t)m * k0;
            for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < k0; c += gridDim.x * blockDim.x)
                o[c] = cuda_to_fmt<T>(x[c]);
        }
        if (Xa && blockIdx.x == 0)
            for (int j = threadIdx.x; j < r; j += blockDim.x) o[k0 + j] = cuda_to_fmt<T>(Xa[(size_t)m * r + j]);
    }
}

// The border: w[i, in + j] = s B[i, j] (i < out), w[out + j, c] = A[j, c] (c < in); row stride in + r
template <typename T>
static __global__ void k_set_lora(T *w, int out, int in, int r, const float *__restrict__ A,
                                  const float *__restrict__ B, float s) {
    size_t ld = (size_t)in + r, nb = (size_t)out * r, na = (size_t)r * in;
    GRID_STRIDE(i, nb + na) {
        if (i < nb) {
            size_t o = i / r, j = i % r;
            w[o * ld + in + j] = cuda_to_fmt<T>(__fmul_rn(s, B[i]));
        } else {
            size_t t = i - nb, j = t / in, c = t % in;
            w[((size_t)out + j) * ld + c] = cuda_to_fmt<T>(A[t]);
        }
    }
}

// w[i * ld + c] = the plain draw of element i * cols + c: k_randn's value (fp32), k_randn_bf16's (bf16)
static __global__ void k_randn_2d_f32(float *w, int rows, int cols, int ld, float mean, float std, uint64_t key) {
    GRID_STRIDE(t, (size_t)rows * cols) {
        size_t i = t / (size_t)cols, c = t % (size_t)cols;
        w[i * ld + c] = mean + std * rng_normal(key, (uint64_t)t);
    }
}
static __global__ void k_randn_2d_bf16(__nv_bfloat16 *w, int rows, int cols, int ld, float mean, float std,
                                       uint64_t key) {
    GRID_STRIDE(t, (size_t)rows * cols) {
        size_t i = t / (size_t)cols, c = t % (size_t)cols;
        w[i * ld + c] = __float2bfloat16_rn(__fadd_rn(mean, __fmul_rn(std, rng_normal(key, (uint64_t)t))));
    }
}

static size_t elem_bytes(const Backend *be) { return cuda_wf_bf16(be) ? sizeof(__nv_bfloat16) : sizeof(float); }

// Writes rows of the operand (X and / or Xa parts) on the backend's stream (cuda_internal.cuh).
void cuda_lora_operand(Backend *be, void *op, int ld, const float *X, int k0, const float *Xa, int r, int M) {
    if (M <= 0 || (!X && !Xa)) return;
    CudaCtx *cx = cuda_ctx(be);
    dim3 grid = cuda_rows_grid(M, X ? k0 : 1);  // Xa alone: one block across (its r columns)
    if (cuda_wf_bf16(be))
        k_operand<__nv_bfloat16><<<grid, CUDA_THREADS, 0, cx->stream>>>((__nv_bfloat16 *)op, ld, X, k0, Xa, r, M);
    else
        k_operand<float><<<grid, CUDA_THREADS, 0, cx->stream>>>((float *)op, ld, X, k0, Xa, r, M);
    launch_check("wgemm_lora (operand [X | Xa])");
}

// Y [M, n] = op [M, k] (row stride ldo) op(Wb) + beta Y, Wb with row stride ldw; Y fp32, or in the weight
// format when y_wf (cuda_internal.cuh). Column-major (top of this file): Y^T [n, M] = op(Wb)^T [n, k] op^T [k, M],
// ldc = n; with y_wf in bf16 cuBLAS rounds the fp32 accumulator to the bf16 Y (C type CUDA_R_16BF).
void cuda_bordered_gemm(Backend *be, int trans_w, int M, int n, int k, const void *op, int ldo, const void *Wb,
                        int ldw, float beta, void *Y, int y_wf) {
    CudaCtx *cx = cuda_ctx(be);
    const float alpha = 1.0f;
    cublasOperation_t ow = trans_w ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (cuda_wf_bf16(be))
        cublas_check(cublasGemmEx(cx->blas, ow, CUBLAS_OP_N, n, M, k, &alpha, Wb, CUDA_R_16BF, ldw, op, CUDA_R_16BF,
                                  ldo, &beta, Y, y_wf ? CUDA_R_16BF : CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    else
        cublas_check(cublasSgemm(cx->blas, ow, CUBLAS_OP_N, n, M, k, &alpha, (const float *)Wb, ldw,
                                 (const float *)op, ldo, &beta, (float *)Y, n));
}

// Y = [X | Xa] op(Wb) + beta Y (backend.h)
static void cu_wgemm_lora(Backend *be, int trans_w, int M, int out, int in, int r, const float *X, const float *Xa,
                          const void *Wb, float beta, float *Y) {
    cuda_lora_shape_check("wgemm_lora", M, out, in, r);
    if (M == 0) return;
    int k0 = trans_w ? in : out, k = k0 + (Xa ? r : 0);
    void *op = cuda_operand_buffer(be, (size_t)M * (size_t)k * elem_bytes(be));
    cuda_lora_operand(be, op, k, X, k0, Xa, r, M);
    cuda_bordered_gemm(be, trans_w, M, trans_w ? out : in, k, op, k, Wb, in + r, beta, Y, 0);
}

// n bordered forwards sharing X: X written once (row stride in + r), then per weight its Xa_i into the
// last r columns and the product. The stream orders each rewrite after the product before it.
static void cu_wgemm_lora_multi(Backend *be, int n, int M, int in, int r, const float *X, const float *const *Xa,
                                const void *const *Wb, const int *out, float *const *Y) {
    check(n >= 0, "wgemm_lora_multi: negative count %d", n);
    for (int i = 0; i < n; i++) cuda_lora_shape_check("wgemm_lora_multi", M, out[i], in, r);
    if (M == 0 || n == 0) return;
    int ld = in + r;
    void *op = cuda_operand_buffer(be, (size_t)M * (size_t)ld * elem_bytes(be));
    cuda_lora_operand(be, op, ld, X, in, NULL, r, M);
    for (int i = 0; i < n; i++) {
        if (Xa[i]) cuda_lora_operand(be, op, ld, NULL, in, Xa[i], r, M);
        cuda_bordered_gemm(be, 1, M, out[i], Xa[i] ? ld : in, op, ld, Wb[i], ld, 0.0f, Y[i], 0);
    }
}

static void cu_weight_set_lora(Backend *be, void *Wb, int out, int in, int r, const float *A, const float *B,
                               float s) {
    cuda_lora_shape_check("weight_set_lora", 0, out, in, r);
    CudaCtx *cx = cuda_ctx(be);
    size_t total = (size_t)r * ((size_t)out + (size_t)in);
    if (cuda_wf_bf16(be))
        k_set_lora<__nv_bfloat16><<<cuda_blocks(total), CUDA_THREADS, 0, cx->stream>>>((__nv_bfloat16 *)Wb, out, in,
                                                                                        r, A, B, s);
    else
        k_set_lora<float><<<cuda_blocks(total), CUDA_THREADS, 0, cx->stream>>>((float *)Wb, out, in, r, A, B, s);
    launch_check("weight_set_lora");
}

static void cu_weight_randn_2d(Backend *be, void *w, int rows, int cols, int ld, float mean, float std,
                               uint64_t key) {
    check(rows >= 0 && cols >= 0 && ld >= cols, "weight_randn_2d: bad shape %d x %d, stride %d", rows, cols, ld);
    size_t n = (size_t)rows * (size_t)cols;
    if (!n) return;
    cudaStream_t st = cuda_ctx(be)->stream;
    if (cuda_wf_bf16(be))
        k_randn_2d_bf16<<<cuda_blocks(n), CUDA_THREADS, 0, st>>>((__nv_bfloat16 *)w, rows, cols, ld, mean, std, key);
    else
        k_randn_2d_f32<<<cuda_blocks(n), CUDA_THREADS, 0, st>>>((float *)w, rows, cols, ld, mean, std, key);
    launch_check("weight_randn_2d");
}

void cuda_install_lora_gemm(Backend *be) {
    be->wgemm_lora = cu_wgemm_lora;
    be->wgemm_lora_multi = cu_wgemm_lora_multi;
    be->weight_set_lora = cu_weight_set_lora;
    be->weight_randn_2d = cu_weight_randn_2d;
}
