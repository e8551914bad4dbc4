// weights.cu: the CUDA backend's weight formats (backend.h, "frozen weights") — bf16 or fp32
// frozen weights, and wgemm on the tensor cores.
//
// bf16 (the CUDA backend's default weight format, model.dtype "auto"): weights are stored as bf16
// (2 bytes), converted from fp32 with round-to-nearest-even on the device (weight_upload goes through
// a fixed-size fp32 staging buffer; weight_randn draws the randn op's values and rounds them).
// wgemm rounds its fp32 activation operand X to bf16 into a grow-only device buffer (one vectorised
// cast kernel; X is left as it is) and calls
//   cublasGemmEx(bf16 W, bf16 X, fp32 Y, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)
// with the operand swap of cu_gemm (backend_cuda.cu: row-major C = column-major C^T): tensor cores,
// fp32 accumulation, fp32 output, alpha / beta in fp32 (beta != 0 accumulates into the fp32 Y).
// The same handle, stream and fixed workspace as cu_gemm, atomics off: deterministic run to run.
// The CPU backend emulates these numerics (backend_weights.c); test_backend_cuda compares the two.
//
// fp32: the weight ops are the plain fp32 ops (alloc, upload, randn, gemm, embedding_fwd), so an
// fp32 run is bit-identical to what it was before weight formats existed.
#include <cuda_bf16.h>
#include <math.h>

#include "actlora/rng.h"
#include "cuda_internal.cuh"

// fp32 elements per chunk of weight_upload's staging buffer (64 MiB)
#define UPLOAD_CHUNK ((size_t)1 << 24)

// ---------------------------------------------------------------------------- kernels

// out[i] = bf16(in[i]), four at a time (in 16-byte aligned, out 8-byte aligned); the tail of n % 4
// elements is done by the first threads
static __global__ void k_cast_bf16_x4(__nv_bfloat16 *__restrict__ out, const float *__restrict__ in, size_t n) {
    size_t n4 = n / 4;
    const float4 *in4 = (const float4 *)in;
    __nv_bfloat162 *out2 = (__nv_bfloat162 *)out;
    GRID_STRIDE(q, n4) {
        float4 v = in4[q];
        out2[2 * q] = __floats2bfloat162_rn(v.x, v.y);
        out2[2 * q + 1] = __floats2bfloat162_rn(v.z, v.w);
    }
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x, tail = n - 4 * n4;
    if (t < tail) out[4 * n4 + t] = __float2bfloat16_rn(in[4 * n4 + t]);
}

static __global__ void k_cast_bf16(__nv_bfloat16 *__restrict__ out, const float *__restrict__ in, size_t n) {
    GRID_STRIDE(i, n) out[i] = __float2bfloat16_rn(in[i]);
}

// w[i] = bf16(mean + std * rng_normal(key, i)) (the randn op's value, then rounded)
static __global__ void k_randn_bf16(__nv_bfloat16 *w, size_t n, float mean, float std, uint64_t key) {
    GRID_STRIDE(i, n) w[i] = __float2bfloat16_rn(__fadd_rn(mean, __fmul_rn(std, rng_normal(key, (uint64_t)i))));
}

// dst[0..n) = bf16(src[0..n)) on the backend's stream (device memory on both sides)
static void cast_bf16(CudaCtx *cx, __nv_bfloat16 *dst, const float *src, size_t n) {
    if (!n) return;
    if ((uintptr_t)src % 16 == 0 && (uintptr_t)dst % 8 == 0) {
        size_t work = n / 4 > 0 ? n / 4 : 1;
        k_cast_bf16_x4<<<cuda_blocks(work), CUDA_THREADS, 0, cx->stream>>>(dst, src, n);
    } else {
        k_cast_bf16<<<cuda_blocks(n), CUDA_THREADS, 0, cx->stream>>>(dst, src, n);
    }
    launch_check("cast to bf16");
}

// ---------------------------------------------------------------------------- ops

static int cu_set_weight_dtype(Backend *be, int dtype) {
    if (dtype == BACKEND_WEIGHT_FP32) {
        be->weight_dtype = BACKEND_WEIGHT_FP32;
        be->weight_bytes = sizeof(float);
        return 0;
    }
    if (dtype == BACKEND_WEIGHT_BF16) {
        be->weight_dtype = BACKEND_WEIGHT_BF16;
        be->weight_bytes = sizeof(__nv_bfloat16);
        return 0;
    }
    return -1;
}

static void *cu_weight_alloc(Backend *be, size_t n, const char *what) {
    return be->alloc(be, n * be->weight_bytes, what);
}

static void cu_weight_upload(Backend *be, void *w, const float *src_host, size_t n) {
    if (!n) return;
    if (be->weight_dtype == BACKEND_WEIGHT_FP32) {
        be->upload(be, w, src_host, n * sizeof(float));
        return;
    }
    // bf16: through a staging buffer in chunks (no host-side pass over billions of values; the
    // staging buffer is freed again: this runs at load time, never in the step loop)
    CudaCtx *cx = cuda_ctx(be);
    size_t chunk = n < UPLOAD_CHUNK ? n : UPLOAD_CHUNK;
    float *stage = (float *)be->alloc(be, chunk * sizeof(float), "bf16 weight upload staging");
    __nv_bfloat16 *dst = (__nv_bfloat16 *)w;
    for (size_t off = 0; off < n; off += chunk) {
        size_t m = n - off < chunk ? n - off : chunk;
        cuda_check(cudaMemcpyAsync(stage, src_host + off, m * sizeof(float), cudaMemcpyHostToDevice, cx->stream));
        cast_bf16(cx, dst + off, stage, m);
    }
    cuda_check(cudaStreamSynchronize(cx->stream));  // synchronous, as upload: the caller may free src_host
    be->free(be, stage);
}

static void cu_weight_randn(Backend *be, void *w, size_t n, float mean, float std, uint64_t key) {
    if (be->weight_dtype == BACKEND_WEIGHT_FP32) {
        be->randn(be, (float *)w, n, mean, std, key);
        return;
    }
    if (!n) return;
    k_randn_bf16<<<cuda_blocks(n), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>((__nv_bfloat16 *)w, n, mean, std, key);
    launch_check("weight_randn (bf16)");
}

static void cu_wembedding_fwd(Backend *be, float *out, const int32_t *ids, const void *table, int N, int C) {
    if (be->weight_dtype == BACKEND_WEIGHT_FP32) {
        be->embedding_fwd(be, out, ids, (const float *)table, N, C);
        return;
    }
    size_t total = (size_t)N * (size_t)C;
    if (N <= 0 || C <= 0) return;
    CudaCtx *cx = cuda_ctx(be);
    k_embedding_rows<<<cuda_blocks(total), CUDA_THREADS, 0, cx->stream>>>(out, ids, (const __nv_bfloat16 *)table, C,
                                                                          total, cx->d_err);
    launch_check("wembedding_fwd (bf16)");
}

// Grow-only device buffer of `bytes` for wgemm's activation operand (cuda_internal.cuh). Grows only on
// the first steps (the largest operand is N x intermediate); a grow frees the old buffer (cudaFree
// waits for the work that used it).
void *cuda_operand_buffer(Backend *be, size_t bytes) {
    CudaCtx *cx = cuda_ctx(be);
    if (bytes > cx->wbuf_bytes) {
        if (cx->wbuf) cuda_check(cudaFree(cx->wbuf));
        cx->wbuf = NULL;
        cx->wbuf_bytes = 0;
        cx->wbuf = be->alloc(be, bytes, "wgemm operand");
        cx->wbuf_bytes = bytes;
    }
    return cx->wbuf;
}

static __nv_bfloat16 *operand_buffer(Backend *be, size_t n) {
    return (__nv_bfloat16 *)cuda_operand_buffer(be, n * sizeof(__nv_bfloat16));
}

// Y[M,N] = alpha * X[M,K] @ op(W)[K,N] + beta * Y (backend.h)
static void cu_wgemm(Backend *be, int trans_w, int M, int N, int K, float alpha, const float *X, const void *W,
                     float beta, float *Y) {
    if (be->weight_dtype == BACKEND_WEIGHT_FP32 || K == 0 || M == 0 || N == 0) {
        // fp32 weights: the fp32 GEMM; K == 0 (Y = beta Y) and empty products read no operand
        be->gemm(be, 0, trans_w, M, N, K, alpha, X, (const float *)W, beta, Y);
        return;
    }
    CudaCtx *cx = cuda_ctx(be);
    check(M > 0 && N > 0 && K > 0, "wgemm: negative size M=%d N=%d K=%d", M, N, K);
    __nv_bfloat16 *xb = operand_buffer(be, (size_t)M * (size_t)K);
    cast_bf16(cx, xb, X, (size_t)M * (size_t)K);
    // column-major: Y^T[N,M] = op(W)^T[N,K] X^T[K,M]; W row-major [N,K] (trans_w) has ld K, [K,N] has ld N
    cublas_check(cublasGemmEx(cx->blas, trans_w ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &alpha, W,
                              CUDA_R_16BF, trans_w ? K : N, xb, CUDA_R_16BF, K, &beta, Y, CUDA_R_32F, N,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// Y_i = X W_i^T for i < n, X cast once (backend.h): the cublasGemmEx calls of n wgemm, in order.
static void cu_wgemm_multi(Backend *be, int n, int M, int K, const float *X, const void *const *W, const int *N,
                           float *const *Y) {
    check(n >= 0 && M >= 0 && K >= 0, "wgemm_multi: negative size n=%d M=%d K=%d", n, M, K);
    if (be->weight_dtype == BACKEND_WEIGHT_FP32 || K == 0 || M == 0) {
        for (int i = 0; i < n; i++) cu_wgemm(be, 1, M, N[i], K, 1.0f, X, W[i], 0.0f, Y[i]);
        return;
    }
    CudaCtx *cx = cuda_ctx(be);
    __nv_bfloat16 *xb = operand_buffer(be, (size_t)M * (size_t)K);
    cast_bf16(cx, xb, X, (size_t)M * (size_t)K);
    const float alpha = 1.0f, beta = 0.0f;
    for (int i = 0; i < n; i++) {
        check(N[i] >= 0, "wgemm_multi: negative size N[%d]=%d", i, N[i]);
        if (N[i] == 0) continue;
        cublas_check(cublasGemmEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, N[i], M, K, &alpha, W[i], CUDA_R_16BF, K, xb,
                                  CUDA_R_16BF, K, &beta, Y[i], CUDA_R_32F, N[i], CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    }
}

void cuda_install_weights(Backend *be) {
    be->set_weight_dtype = cu_set_weight_dtype;
    be->weight_alloc = cu_weight_alloc;
    be->weight_upload = cu_weight_upload;
    be->weight_randn = cu_weight_randn;
    be->wgemm = cu_wgemm;
    be->wgemm_multi = cu_wgemm_multi;
    be->wembedding_fwd = cu_wembedding_fwd;
    cu_set_weight_dtype(be, BACKEND_WEIGHT_BF16);  // the CUDA backend's default ("auto")
}
