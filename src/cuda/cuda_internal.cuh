// cuda_internal.cuh: what the CUDA backend's translation units share — the backend context, the
// error-checking macros, launch helpers, the device-side error flag and deterministic block
// reductions. Not a public header (include/actlora/backend_cuda.h is).
#ifndef ACTLORA_CUDA_INTERNAL_CUH
#define ACTLORA_CUDA_INTERNAL_CUH

// System and CUDA headers first: common.h defines a function-like macro `check`.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "actlora/rng.h"  // header-only, host and device (the dropout draw below)

extern "C" {
#include "actlora/backend.h"
#include "actlora/backend_cuda.h"
#include "actlora/common.h"
}

// ---------------------------------------------------------------------------- error checking

// cuda_check(call): a failed CUDA runtime call is fatal; the message names the call, the source
// location and CUDA's error string (die() ends the whole MPI job).
#define cuda_check(call)                                                                          \
    do {                                                                                          \
        cudaError_t _ce = (call);                                                                 \
        if (_ce != cudaSuccess)                                                                   \
            die("CUDA call %s failed at %s:%d: %s (%s)", #call, __FILE__, __LINE__,               \
                cudaGetErrorString(_ce), cudaGetErrorName(_ce));                                  \
    } while (0)

// cublas_check(call): the same for cuBLAS status codes.
#define cublas_check(call)                                                                        \
    do {                                                                                          \
        cublasStatus_t _bs = (call);                                                              \
        if (_bs != CUBLAS_STATUS_SUCCESS)                                                         \
            die("cuBLAS call %s failed at %s:%d: %s (status %d)", #call, __FILE__, __LINE__,      \
                cublasGetStatusString(_bs), (int)_bs);                                            \
    } while (0)

// launch_check(name): call right after a kernel launch; reports bad launch configurations at
// once (errors raised while the kernel runs surface at the next synchronising call).
#define launch_check(name)                                                                        \
    do {                                                                                          \
        cudaError_t _le = cudaGetLastError();                                                     \
        if (_le != cudaSuccess)                                                                   \
            die("CUDA kernel %s failed to launch at %s:%d: %s (%s)", name, __FILE__, __LINE__,    \
                cudaGetErrorString(_le), cudaGetErrorName(_le));                                  \
    } while (0)

// ---------------------------------------------------------------------------- context

// Codes of the device-side error flag: kernels that find bad input (which the CPU backend
// checks on the host) record the first such error here instead of reading out of bounds; the
// host reports it, with the values, at the next synchronising call.
enum {
    CUDA_ERR_NONE = 0,
    CUDA_ERR_TOKEN_ID = 1,   // info: token index, id
    CUDA_ERR_POOL_LAST = 2,  // info: row, position, T
    CUDA_ERR_LABEL = 3,      // info: row, label, K
    CUDA_ERR_REL_IDX = 4,    // info: query i, key j, relative-position index (attention_enc)
};
#define CUDA_ERR_WORDS 4     // code + 3 info words

typedef struct {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;              // fixed cuBLAS workspace (BACKEND_CUDA_CUBLAS_WORKSPACE bytes)
    float *scratch;             // grow-only device scratch (attention scores / dS, overlapping copies, ...)
    size_t scratch_n;           // floats
    double *partials;           // grow-only device buffer of reduction partials
    size_t partials_n;
    double *host_partials;      // host copy of the partials (summed there in index order)
    size_t host_partials_n;
    void *wbuf;                 // grow-only buffer of wgemm's activation operand (weights.cu)
    size_t wbuf_bytes;
    int *d_err;                 // device error flag [CUDA_ERR_WORDS]
    const char *err_op;         // name of the last op that may set the flag (for the message)
} CudaCtx;

static inline CudaCtx *cuda_ctx(Backend *be) { return (CudaCtx *)be->ctx; }

// The most blocks a grid-stride loop's grid gets in one dimension. The CUDA emulator's race-checked build
// lowers it (docs/emulator.md "Races"), so that the tests run every grid-stride loop, and the barriers inside one,
// more than once per block.
#ifndef CUDA_GRID_STRIDE_CAP
#define CUDA_GRID_STRIDE_CAP ((size_t)1 << 20)
#endif

// Threads per block of the elementwise kernels, and a grid that covers n elements with a
// grid-stride loop (capped so huge n still launches).
#define CUDA_THREADS 256
static inline unsigned cuda_blocks(size_t n) {
    size_t b = (n + CUDA_THREADS - 1) / CUDA_THREADS;
    if (b < 1) b = 1;
    if (b > CUDA_GRID_STRIDE_CAP) b = CUDA_GRID_STRIDE_CAP;
    return (unsigned)b;
}

// backend_cuda.cu
float *cuda_scratch(Backend *be, size_t n, const char *what);  // n floats, contents undefined
double *cuda_partials(Backend *be, size_t n);                 // n doubles on the device
double *cuda_host_partials(Backend *be, size_t n);            // n doubles on the host
// Waits for the stream and dies if a kernel recorded a device-side error (names `where`).
void cuda_sync_and_check(Backend *be, const char *where);

// reduce.cu, elementwise.cu, attention.cu: fill their part of the op table
void cuda_install_reduce(Backend *be);
void cuda_install_elementwise(Backend *be);
void cuda_install_attention(Backend *be);
void cuda_install_encoder(Backend *be);  // encoder.cu: the encoder ops (BERT / DeBERTa)
void cuda_install_weights(Backend *be);  // weights.cu: weight formats (bf16 default), wgemm, wembedding_fwd
void cuda_install_lora_gemm(Backend *be);  // lora_gemm.cu: wgemm_lora, wgemm_lora_multi, weight_set_lora
void cuda_install_act_wf(Backend *be);     // act_wf.cu: the ops on activations in the weight format
void cuda_install_attention_fused(Backend *be);  // attention_fused.cu: attention_fused_fwd/bwd (WMMA)
void cuda_install_lora_dropout(Backend *be);  // lora_dropout.cu: lora_{down,grad_a,dx}_dropout (mask drawn inside)

// weights.cu: the grow-only buffer of wgemm's activation operand (contents undefined; lora_gemm.cu builds
// its [X | Xa] operands in it too)
void *cuda_operand_buffer(Backend *be, size_t bytes);

// Whether the backend's weight format is bf16 (else fp32): the storage of weights and of activations in it.
static inline int cuda_wf_bf16(const Backend *be) { return be->weight_dtype == BACKEND_WEIGHT_BF16; }
// The shape check of the bordered-weight ops (lora_gemm.cu, act_wf.cu).
static inline void cuda_lora_shape_check(const char *op, int M, int out, int in, int r) {
    check(M >= 0 && out > 0 && in > 0 && r > 0, "%s: bad shape M=%d out=%d in=%d r=%d", op, M, out, in, r);
}
// The grid of the row kernels over [M, C] (M > 0; blockIdx.y over rows, the threads of blockIdx.x over
// columns): up to 64 blocks across a row (at least 1), up to 65535 rows at once.
static inline dim3 cuda_rows_grid(int M, int C) {
    unsigned gx = (unsigned)((C + CUDA_THREADS - 1) / CUDA_THREADS), gy = (unsigned)(M < 65535 ? M : 65535);
    if (gx < 1) gx = 1;
    if (gx > 64) gx = 64;
    return dim3(gx, gy);
}

// lora_gemm.cu, shared with act_wf.cu:
// Rows of a bordered product's operand in the weight format (row stride ld), on the backend's stream:
// op[m, c] = X[m, c] for c < k0 (when X != NULL; X contiguous [M, k0]), op[m, k0 + j] = Xa[m, j] for j < r
// (when Xa != NULL; Xa contiguous [M, r]); rounded to bf16 in the bf16 format. Other columns untouched.
void cuda_lora_operand(Backend *be, void *op, int ld, const float *X, int k0, const float *Xa, int r, int M);
// Y [M, n] = op [M, k] (weight format, row stride ldo) op(Wb) + beta Y, Wb a bordered weight with row stride
// ldw (trans_w: its first n rows and k columns, transposed; else its first k rows and n columns). Y is fp32
// (y_wf = 0) or, with y_wf = 1, in the weight format (bf16 written by cuBLAS from the fp32 accumulator);
// either way contiguous with row stride n.
void cuda_bordered_gemm(Backend *be, int trans_w, int M, int n, int k, const void *op, int ldo, const void *Wb,
                        int ldw, float beta, void *Y, int y_wf);

// elementwise.cu: rmsnorm_fwd with out rows of stride ldo, fp32 (bf16 = 0) or bf16 (bf16 = 1, rounded); the
// rmsnorm_fwd op is the case bf16 = 0, ldo = C
void cuda_rmsnorm_fwd_ld(Backend *be, void *out, int bf16, size_t ldo, float *rstd, const float *inp, const float *w,
                         int N, int C, float eps);

// elementwise.cu: rope_fwd in place on x [B, T, nh, D], fp32 (bf16 = 0: the rope_fwd op) or bf16 (bf16 = 1:
// widened, rotated in fp32 as rope_fwd, rounded back)
void cuda_rope_fwd_fmt(Backend *be, void *x, int bf16, const float *cos_t, const float *sin_t, int B, int T, int nh,
                       int D);

// attention.cu: attention_fwd_wf / attention_bwd_wf in the bf16 format (q, k, v, probs __nv_bfloat16 on the
// device; out, dout, dq, dk, dv fp32): bf16 x bf16 -> fp32 batched products, P and dS rounded to bf16 (backend.h)
void cuda_attention_fwd_bf16(Backend *be, float *out, void *probs, const void *q, const void *k, const void *v,
                             const int32_t *mask, int B, int T, int H, int KVH, int D);
void cuda_attention_bwd_bf16(Backend *be, float *dq, float *dk, float *dv, const float *dout, const void *probs,
                             const void *q, const void *k, const void *v, int B, int T, int H, int KVH, int D);

// reduce.cu: row_norm_sum of x [N, C] with row stride ld, fp32 (bf16 = 0) or bf16 (bf16 = 1) elements; the
// row_norm_sum op is the case bf16 = 0, ld = C (one reduction order for both)
double cuda_row_norm_sum_ld(Backend *be, const void *x, int bf16, size_t ld, const int32_t *mask, int N, int C);

// ---------------------------------------------------------------------------- device helpers

// for (i = this thread's first index; i < n; i += all threads of the grid)
#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

static __device__ __forceinline__ float cuda_to_float(float v) { return v; }
static __device__ __forceinline__ float cuda_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// fp32 -> the storage type T: itself, or bf16 round-to-nearest-even
template <typename T>
static __device__ __forceinline__ T cuda_to_fmt(float v);
template <>
__device__ __forceinline__ float cuda_to_fmt<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 cuda_to_fmt<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// The elementwise formulas of swiglu and dropout, shared by the fp32 ops (elementwise.cu), the weight-format
// forms of swiglu (act_wf.cu) and the LoRA dropout kernels (lora_dropout.cu), so that those compute the same
// bits as the fp32 ops. The _rn
// intrinsics keep nvcc from contracting into FMAs (the CPU build does not use FMA).
// h = silu(g) * u
static __device__ __forceinline__ float cuda_swiglu(float g, float u) {
    return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}
// s = sigmoid(g): dsilu/dg = s (1 + g (1 - s)); dgate = dh up dsilu; dup = dh silu(g)
static __device__ __forceinline__ void cuda_swiglu_grads(float d, float g, float u, float *dgate, float *dup) {
    float s = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-g)));
    float dsilu = __fmul_rn(s, __fadd_rn(1.0f, __fmul_rn(g, __fsub_rn(1.0f, s))));
    *dgate = __fmul_rn(__fmul_rn(d, u), dsilu);
    *dup = __fmul_rn(d, __fmul_rn(g, s));
}
// inverted dropout of element i under key: keep = rng_uniform(key, i) >= p (rng.h), kept values / (1 - p)
static __device__ __forceinline__ float cuda_dropout_value(float v, uint64_t key, uint64_t i, float p,
                                                           float keep_scale) {
    return rng_uniform(key, i) >= p ? __fdiv_rn(v, keep_scale) : 0.0f;
}


// Records the first device-side error (later ones are dropped); not a reduction.
static __device__ __forceinline__ void cuda_set_error(int *err, int code, int a, int b, int c) {
    if (atomicCAS(err, 0, code) == 0) {
        err[1] = a;
        err[2] = b;
        err[3] = c;
    }
}

// out[n, :] = float(table[ids[n], :]) for a [V, C] table of fp32 or bf16 (embedding_fwd, wembedding_fwd), or with
// ADD out[n, :] += table[ids[n], :] (the encoders' embedding_add); a negative id sets the device error flag (first
// error wins) and writes zeros (ADD: leaves the row). total = N * C.
template <typename T, int ADD = 0>
static __global__ void k_embedding_rows(float *__restrict__ out, const int32_t *__restrict__ ids,
                                        const T *__restrict__ table, int C, size_t total, int *err) {
    GRID_STRIDE(i, total) {
        size_t n = i / (size_t)C, c = i % (size_t)C;
        int id = ids[n];
        if (id < 0) {
            if (c == 0) cuda_set_error(err, CUDA_ERR_TOKEN_ID, (int)n, id, 0);
            if (!ADD) out[i] = 0.0f;
        } else {
            float v = cuda_to_float(table[(size_t)id * C + c]);
            out[i] = ADD ? __fadd_rn(out[i], v) : v;
        }
    }
}

// Sum over the block in a fixed tree order (blockDim.x a power of two, sh >= blockDim.x
// elements). Every thread gets the result. Deterministic: the order depends only on blockDim.x.
template <typename T>
static __device__ __forceinline__ T block_sum(T v, T *sh) {
    unsigned t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    T r = sh[0];
    __syncthreads();
    return r;
}

template <typename T>
static __device__ __forceinline__ T block_max(T v, T *sh) {
    unsigned t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] = sh[t + s] > sh[t] ? sh[t + s] : sh[t];
        __syncthreads();
    }
    T r = sh[0];
    __syncthreads();
    return r;
}

// Sum over a full warp in a fixed tree order; lane 0's sum is broadcast so every lane holds the
// same bits (a butterfly would give each lane its own summation order).
static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return __shfl_sync(0xffffffffu, v, 0);
}

#endif
