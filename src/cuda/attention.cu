// attention.cu: causal + key-padding attention with GQA for the CUDA backend, the CPU backend's
// algorithm (backend_cpu_attn.c) with every matrix product a batched fp32 cuBLAS GEMM and two
// small row kernels (softmax, softmax backward) in between. The [B,H,T,T] probabilities are
// materialised as backend.h requires (they are saved for backward anyway). No fused (flash) kernel.
//
// Layouts: q, dq, out, dout: [B,T,H,D]; k, v, dk, dv: [B,T,KVH,D]; probs: [B,H,T,T];
// mask: [B,T] (1 = real). Query head h reads kv head g = h / (H/KVH). Key j is visible to query i
// iff j <= i and mask[b,j] == 1; a row with no visible key gets zero probabilities and output.
//
// Batched GEMMs (cublasSgemmBatched, one call per product, batched over every (b, h)): per (b, h)
// the operands are strided views of the row-major tensors — q_bh / dout_bh / out_bh / dq_bh:
// [T, D] at ((b*T)*H + h)*D with row stride H*D; k_bg / v_bg / dk_bg / dv_bg: [T, D] at
// ((b*T)*KVH + g)*D with row stride KVH*D; P_bh / dS_bh: [T, T] at (b*H + h)*T*T with row stride T.
// The arrays of device pointers cuBLAS takes are written by a small kernel each call, from the
// op's own base pointers (they change from call to call and layer to layer), into the backend's
// grow-only scratch buffer: no per-call allocation, no upload, no host synchronisation. Batch entry
// n of every array is (hh, b, g) with n = (hh*B + b)*KVH + g, h = g*(H/KVH) + hh: entries
// [hh*B*KVH, (hh+1)*B*KVH) are the heads hh of every (b, g), in (b, g) order — the batch of one
// GQA accumulation step below — and the first B*KVH entries of a kv-view array list every (b, g).
// Row-major to column-major exactly as cu_gemm (backend_cuda.cu): C[M,N] = op(A) op(B) is the
// column-major C^T = op(B)^T op(A)^T — operands swapped, m = N, n = M, the same transpose flags,
// and the row strides as leading dimensions. With fp32 weights, full fp32 (cublasSgemmBatched,
// CUBLAS_DEFAULT_MATH, no TF32); with bf16 weights (the GPU default) the products run on the tensor
// cores in TF32 (cublasGemmBatchedEx, CUBLAS_COMPUTE_32F_FAST_TF32: fp32 storage, inputs rounded to a
// 10-bit mantissa, finer than the bf16 inputs of every projection, fp32 accumulation). Either way the
// backend's handle (no atomics, fixed workspace, one stream): bit-identical run to run.
// The products run over all T keys: the entries right of the diagonal are computed and then
// overwritten with exact zeros (probs, dS), so they add exact zeros in the products that follow.
//
//   forward:    S = scale Q K^T                       (batched over (b,h), into probs)
//               P = softmax over the visible keys     (k_attn_softmax, in place; zeros elsewhere)
//               O = P V                               (batched over (b,h))
//   backward:   dP = dO V^T                           (batched over (b,h), into scratch dS [B,H,T,T])
//               dS = P (dP - rowsum(dP P)) scale      (k_attn_dsoftmax, in place; rowsum in fp64)
//               dQ = dS K                             (batched over (b,h))
//               dK = sum_hh dS_h^T Q_h, dV = sum_hh P_h^T dO_h over the heads h = g*rep + hh of
//                    group g: rep calls each, batched over (b,g), hh = 0 with beta = 0 (overwrites)
//                    and then beta = 1 in order hh = 1, 2, ... (the CPU's order; deterministic).
// Row kernels: one warp per query row (lanes over keys, fixed lane-strided partial sums and a fixed
// shuffle tree: deterministic); the row lives in global memory, its final home, so any T works.
#include <limits.h>
#include <math.h>

#include "cuda_internal.cuh"

#define ATT_THREADS 128                 // 4 warps = 4 query rows per block of the row kernels
#define ATT_ROWS_PER_BLOCK (ATT_THREADS / 32)
#define ATT_MAX_ARRAYS 9                // pointer arrays of one op (backward: 9)
#define ATT_PTR_ALIGN 64                // floats: the pointer arrays start 256-byte aligned in scratch

static void attn_check(int B, int T, int H, int KVH, int D) {
    check(B >= 0 && T >= 0 && D > 0 && H > 0 && KVH > 0 && H % KVH == 0,
          "attention: bad shape B=%d T=%d H=%d KVH=%d D=%d (H must be a multiple of KVH)", B, T, H, KVH, D);
}

// ---------------------------------------------------------------------------- pointer arrays

// What a pointer array points into: the [T, D] view of head h in a [B,T,H,D] tensor, of kv head g
// in a [B,T,KVH,D] tensor, or the [T, T] matrix (b, h) of a [B,H,T,T] tensor.
enum { ATT_HEAD = 0, ATT_KV = 1, ATT_TT = 2 };

typedef struct {
    float *base[ATT_MAX_ARRAYS];
    int kind[ATT_MAX_ARRAYS];
} AttArrays;

// Batch entry n -> first element of its matrix (n = (hh*B + b)*KVH + g, h = g*(H/KVH) + hh).
static __host__ __device__ __forceinline__ float *att_ptr(float *base, int kind, int n, int B, int T, int H,
                                                          int KVH, int D) {
    int bg = n % (B * KVH), hh = n / (B * KVH);
    int b = bg / KVH, g = bg % KVH, h = g * (H / KVH) + hh;
    if (kind == ATT_HEAD) return base + ((size_t)b * T * H + h) * D;    // [b, 0, h, 0]
    if (kind == ATT_KV) return base + ((size_t)b * T * KVH + g) * D;    // [b, 0, g, 0]
    return base + ((size_t)b * H + h) * T * T;                          // [b, h, 0, 0]
}

// out[a * nb + n] = att_ptr(arrays.base[a], arrays.kind[a], n) for a < narr, n < nb = B*H.
static __global__ void k_attn_ptrs(float **out, AttArrays arrays, int narr, int nb, int B, int T, int H, int KVH,
                                   int D) {
    size_t total = (size_t)narr * nb;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total; t += (size_t)gridDim.x * blockDim.x) {
        int a = (int)(t / (size_t)nb), n = (int)(t % (size_t)nb);
        out[t] = att_ptr(arrays.base[a], arrays.kind[a], n, B, T, H, KVH, D);
    }
}

// Writes the narr pointer arrays (B*H entries each) into ptrs (device memory) on the stream.
static void att_fill_ptrs(CudaCtx *cx, float **ptrs, const AttArrays *arrays, int narr, int B, int T, int H, int KVH,
                          int D) {
    int nb = B * H;
    size_t total = (size_t)narr * nb;
    k_attn_ptrs<<<cuda_blocks(total), CUDA_THREADS, 0, cx->stream>>>(ptrs, *arrays, narr, nb, B, T, H, KVH, D);
    launch_check("attention (pointer arrays)");
}

// Row-major batched GEMM: C_n[M,N] = alpha op(A_n)[M,K] op(B_n)[K,N] + beta C_n for n < batch,
// op(X) = X^T when trans_x; A_n stored [M,K] ([K,M] when trans_a), B_n stored [K,N] ([N,K] when
// trans_b), lda / ldb / ldc their row strides. A, Bm, C: device arrays of device pointers. Mapped to
// cuBLAS as cu_gemm does: the column-major C^T[N,M] = op(B)^T op(A)^T.
// tf32: the products on the tensor cores in TF32 (inputs with a 10-bit mantissa, fp32 accumulation;
// the bf16 weight format's attention), else full fp32 (cublasSgemmBatched, the verified fp32 path).
static void att_bgemm(CudaCtx *cx, int tf32, int trans_a, int trans_b, int M, int N, int K, float alpha,
                      float *const *A, int lda, float *const *Bm, int ldb, float beta, float *const *C, int ldc,
                      int batch) {
    cublasOperation_t ob = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, oa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (tf32)
        cublas_check(cublasGemmBatchedEx(cx->blas, ob, oa, N, M, K, &alpha, (const void *const *)Bm, CUDA_R_32F, ldb,
                                         (const void *const *)A, CUDA_R_32F, lda, &beta, (void *const *)C, CUDA_R_32F,
                                         ldc, batch, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
    else
        cublas_check(cublasSgemmBatched(cx->blas, ob, oa, N, M, K, &alpha, Bm, ldb, A, lda, &beta, C, ldc, batch));
}

// Shapes the int arguments of cuBLAS and the kernels can hold.
static void att_size_check(const char *op, int B, int T, int H, int KVH, int D) {
    size_t nb = (size_t)B * H;
    check(nb * ATT_MAX_ARRAYS <= (size_t)INT_MAX && (size_t)H * D <= (size_t)INT_MAX &&
              (size_t)KVH * D <= (size_t)INT_MAX,
          "%s: B=%d H=%d D=%d is too large for one batched GEMM", op, B, H, D);
    size_t rows = nb * (size_t)T, blocks = (rows + ATT_ROWS_PER_BLOCK - 1) / ATT_ROWS_PER_BLOCK;
    check(blocks <= 0x7fffffffu, "%s: %zu query rows are too many for one launch", op, rows);
}

// ---------------------------------------------------------------------------- row kernels

// Max over a full warp; max is exact and order-free, so the butterfly gives every lane the same bits.
static __device__ __forceinline__ float att_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a full warp in a fixed tree order, broadcast from lane 0 (as warp_sum, in fp64).
static __device__ __forceinline__ double att_warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return __shfl_sync(0xffffffffu, v, 0);
}

// One warp per row r = (b*H + h)*T + i of probs, which holds the scaled scores S: over the visible
// keys P = exp(S - max) / sum (fp32 sum, lane-strided partials + fixed tree); 0 for masked keys,
// for j > i, and for the whole row when no key is visible (left padding).
static __global__ void __launch_bounds__(ATT_THREADS)
k_attn_softmax(float *probs, const int32_t *__restrict__ mask, int T, int H, size_t rows) {
    size_t r = (size_t)blockIdx.x * ATT_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (r >= rows) return;  // the whole warp: no block-level synchronisation in this kernel
    int lane = threadIdx.x & 31, i = (int)(r % (size_t)T), b = (int)(r / (size_t)T / (size_t)H);
    float *p = probs + r * (size_t)T;
    const int32_t *mb = mask + (size_t)b * T;
    float mx = -INFINITY;
    for (int j = lane; j <= i; j += 32)
        if (mb[j] == 1) mx = fmaxf(mx, p[j]);
    mx = att_warp_max(mx);
    if (mx == -INFINITY) {  // no visible key: probabilities 0 (and so output 0)
        for (int j = lane; j < T; j += 32) p[j] = 0.0f;
        return;
    }
    float part = 0.0f;
    for (int j = lane; j <= i; j += 32) {  // each lane rewrites only its own entries
        float e = mb[j] == 1 ? expf(p[j] - mx) : 0.0f;
        p[j] = e;
        part += e;
    }
    float sum = warp_sum(part);
    for (int j = lane; j < T; j += 32) p[j] = j <= i ? p[j] / sum : 0.0f;  // causal zeros
}

// One warp per row r of ds, which holds dP = dO V^T: dS = P (dP - sum_j dP_j P_j) scale for j <= i
// (the row sum in fp64 over j <= i, as the CPU), exact 0 for j > i. Masked keys have P = 0, so dS 0.
static __global__ void __launch_bounds__(ATT_THREADS)
k_attn_dsoftmax(float *ds, const float *__restrict__ probs, int T, size_t rows, float scale) {
    size_t r = (size_t)blockIdx.x * ATT_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (r >= rows) return;
    int lane = threadIdx.x & 31, i = (int)(r % (size_t)T);
    float *d = ds + r * (size_t)T;
    const float *p = probs + r * (size_t)T;
    double part = 0.0;
    for (int j = lane; j <= i; j += 32) part += (double)d[j] * (double)p[j];
    float rf = (float)att_warp_sum_d(part);
    for (int j = lane; j < T; j += 32) d[j] = j <= i ? p[j] * (d[j] - rf) * scale : 0.0f;
}

static unsigned att_row_blocks(size_t rows) {
    return (unsigned)((rows + ATT_ROWS_PER_BLOCK - 1) / ATT_ROWS_PER_BLOCK);
}

// ---------------------------------------------------------------------------- forward

static void cu_attention_fwd(Backend *be, float *out, float *probs, const float *q, const float *k, const float *v,
                             const int32_t *mask, int B, int T, int H, int KVH, int D) {
    attn_check(B, T, H, KVH, D);
    if (B == 0 || T == 0) return;
    att_size_check("attention_fwd", B, T, H, KVH, D);
    CudaCtx *cx = cuda_ctx(be);
    int nb = B * H, tf32 = be->weight_dtype == BACKEND_WEIGHT_BF16;
    float scale = 1.0f / sqrtf((float)D);
    enum { Q, K, V, P, O, NARR };
    AttArrays arr = {};
    arr.base[Q] = (float *)q, arr.kind[Q] = ATT_HEAD;
    arr.base[K] = (float *)k, arr.kind[K] = ATT_KV;
    arr.base[V] = (float *)v, arr.kind[V] = ATT_KV;
    arr.base[P] = probs, arr.kind[P] = ATT_TT;
    arr.base[O] = out, arr.kind[O] = ATT_HEAD;
    // pointer arrays: NARR * nb pointers (2 floats each) at the start of the scratch
    float **pt = (float **)cuda_scratch(be, (size_t)NARR * nb * 2, "attention pointer arrays");
    att_fill_ptrs(cx, pt, &arr, NARR, B, T, H, KVH, D);
    float *const *pq = pt + (size_t)Q * nb, *const *pk = pt + (size_t)K * nb, *const *pv = pt + (size_t)V * nb,
                 *const *pp = pt + (size_t)P * nb, *const *po = pt + (size_t)O * nb;
    // S[T,T] = scale * Q[T,D] K[T,D]^T
    att_bgemm(cx, tf32, 0, 1, T, T, D, scale, pq, H * D, pk, KVH * D, 0.0f, pp, T, nb);
    size_t rows = (size_t)nb * T;
    k_attn_softmax<<<att_row_blocks(rows), ATT_THREADS, 0, cx->stream>>>(probs, mask, T, H, rows);
    launch_check("attention_fwd (softmax)");
    // O[T,D] = P[T,T] V[T,D]
    att_bgemm(cx, tf32, 0, 0, T, D, T, 1.0f, pp, T, pv, KVH * D, 0.0f, po, H * D, nb);
}

// ---------------------------------------------------------------------------- backward

static void cu_attention_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *probs,
                             const float *q, const float *k, const float *v, int B, int T, int H, int KVH, int D) {
    attn_check(B, T, H, KVH, D);
    if (B == 0 || T == 0) return;
    att_size_check("attention_bwd", B, T, H, KVH, D);
    CudaCtx *cx = cuda_ctx(be);
    int nb = B * H, nbg = B * KVH, rep = H / KVH, tf32 = be->weight_dtype == BACKEND_WEIGHT_BF16;
    float scale = 1.0f / sqrtf((float)D);
    enum { DO, V, DS, K, DQ, Q, P, DK, DV, NARR };
    // scratch: dS [B,H,T,T] floats, then (256-byte aligned) the NARR * nb pointers, 2 floats each
    size_t n_ds = (size_t)nb * T * T, off = (n_ds + ATT_PTR_ALIGN - 1) / ATT_PTR_ALIGN * ATT_PTR_ALIGN;
    float *ds = cuda_scratch(be, off + (size_t)NARR * nb * 2, "attention backward dS [B,H,T,T] and pointer arrays");
    float **pt = (float **)(ds + off);
    AttArrays arr = {};
    arr.base[DO] = (float *)dout, arr.kind[DO] = ATT_HEAD;
    arr.base[V] = (float *)v, arr.kind[V] = ATT_KV;
    arr.base[DS] = ds, arr.kind[DS] = ATT_TT;
    arr.base[K] = (float *)k, arr.kind[K] = ATT_KV;
    arr.base[DQ] = dq, arr.kind[DQ] = ATT_HEAD;
    arr.base[Q] = (float *)q, arr.kind[Q] = ATT_HEAD;
    arr.base[P] = (float *)probs, arr.kind[P] = ATT_TT;
    arr.base[DK] = dk, arr.kind[DK] = ATT_KV;
    arr.base[DV] = dv, arr.kind[DV] = ATT_KV;
    att_fill_ptrs(cx, pt, &arr, NARR, B, T, H, KVH, D);
    float *const *pdo = pt + (size_t)DO * nb, *const *pv = pt + (size_t)V * nb, *const *pds = pt + (size_t)DS * nb,
                 *const *pk = pt + (size_t)K * nb, *const *pdq = pt + (size_t)DQ * nb, *const *pq = pt + (size_t)Q * nb,
                 *const *pp = pt + (size_t)P * nb, *const *pdk = pt + (size_t)DK * nb,
                 *const *pdv = pt + (size_t)DV * nb;
    // dP[T,T] = dO[T,D] V[T,D]^T, into dS's place
    att_bgemm(cx, tf32, 0, 1, T, T, D, 1.0f, pdo, H * D, pv, KVH * D, 0.0f, pds, T, nb);
    size_t rows = (size_t)nb * T;
    k_attn_dsoftmax<<<att_row_blocks(rows), ATT_THREADS, 0, cx->stream>>>(ds, probs, T, rows, scale);
    launch_check("attention_bwd (softmax backward)");
    // dQ[T,D] = dS[T,T] K[T,D]
    att_bgemm(cx, tf32, 0, 0, T, D, T, 1.0f, pds, T, pk, KVH * D, 0.0f, pdq, H * D, nb);
    // dK[T,D] = sum_hh dS_h[T,T]^T Q_h[T,D], dV[T,D] = sum_hh P_h[T,T]^T dO_h[T,D]: step hh is
    // batched over (b, g) (entries [hh*nbg, (hh+1)*nbg) of the head arrays; the first nbg of dK/dV's)
    for (int hh = 0; hh < rep; hh++) {
        size_t o = (size_t)hh * nbg;
        float beta = hh == 0 ? 0.0f : 1.0f;
        att_bgemm(cx, tf32, 1, 0, T, D, T, 1.0f, pds + o, T, pq + o, H * D, beta, pdk, KVH * D, nbg);
        att_bgemm(cx, tf32, 1, 0, T, D, T, 1.0f, pp + o, T, pdo + o, H * D, beta, pdv, KVH * D, nbg);
    }
}

void cuda_install_attention(Backend *be) {
    be->attention_fwd = cu_attention_fwd;
    be->attention_bwd = cu_attention_bwd;
}
