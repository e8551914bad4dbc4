// attention.cu: causal + key-padding attention with GQA for the CUDA backend, the CPU backend's
// algorithm (backend_cpu_attn.c) with every matrix product a batched cuBLAS GEMM and two small row
// kernels (softmax, softmax backward) in between. The [B,H,T,T] probabilities are materialised as
// backend.h requires (they are saved for backward anyway). No fused (flash) kernel. Two forms:
//   - attention_fwd / attention_bwd (fp32 q, k, v, probs), installed here;
//   - the bf16 form of attention_fwd_wf / attention_bwd_wf (backend.h "activations in the weight format":
//     q, k, v and probs bf16 on the device; out, dout, dq, dk, dv fp32), cuda_attention_fwd_bf16 /
//     cuda_attention_bwd_bf16 below, installed by act_wf.cu (whose fp32 format calls the fp32 ops).
//
// Layouts: q, dq, out, dout: [B,T,H,D]; k, v, dk, dv: [B,T,KVH,D]; probs: [B,H,T,T];
// mask: [B,T] (1 = real). Query head h reads kv head g = h / (H/KVH). Key j is visible to query i
// iff j <= i and mask[b,j] == 1; a row with no visible key gets zero probabilities and output.
//
// Batched GEMMs (one call per product, batched over every (b, h)): per (b, h) the operands are strided
// views of the row-major tensors — q_bh / dout_bh / out_bh / dq_bh: [T, D] at ((b*T)*H + h)*D with row
// stride H*D; k_bg / v_bg / dk_bg / dv_bg: [T, D] at ((b*T)*KVH + g)*D with row stride KVH*D; P_bh /
// dS_bh: [T, T] at (b*H + h)*T*T with row stride T (offsets in elements of the tensor's own type: 4 bytes
// for fp32, 2 for bf16). The arrays of device pointers cuBLAS takes are written by a small kernel each
// call, from the op's own base pointers (they change from call to call and layer to layer), into the
// backend's grow-only scratch buffer: no per-call allocation, no upload, no host synchronisation. Batch
// entry n of every array is (hh, b, g) with n = (hh*B + b)*KVH + g, h = g*(H/KVH) + hh: entries
// [hh*B*KVH, (hh+1)*B*KVH) are the heads hh of every (b, g), in (b, g) order — the batch of one
// GQA accumulation step below — and the first B*KVH entries of a kv-view array list every (b, g).
// Row-major to column-major exactly as cu_gemm (backend_cuda.cu): C[M,N] = op(A) op(B) is the
// column-major C^T = op(B)^T op(A)^T — operands swapped, m = N, n = M, the same transpose flags,
// and the row strides as leading dimensions (att_bgemm). Precision of the products (AttGemm):
//   fp32 ops, fp32 weights: full fp32 (cublasSgemmBatched, CUBLAS_DEFAULT_MATH, no TF32);
//   fp32 ops, bf16 weights (the GPU default): TF32 on the tensor cores (cublasGemmBatchedEx,
//     CUBLAS_COMPUTE_32F_FAST_TF32: fp32 storage, inputs rounded to a 10-bit mantissa, finer than the
//     bf16 inputs of every projection, fp32 accumulation);
//   bf16 form of the _wf ops: bf16 inputs, fp32 output and accumulation (cublasGemmBatchedEx, A/B
//     CUDA_R_16BF, C CUDA_R_32F, CUBLAS_COMPUTE_32F).
// Either way the backend's handle (no atomics, fixed workspace, one stream): bit-identical run to run.
// The products run over all T keys: the entries right of the diagonal are computed and then
// overwritten with exact zeros (probs, dS), so they add exact zeros in the products that follow.
//
//   forward:    S = scale Q K^T                       (batched over (b,h), into probs; bf16: into an fp32
//                                                      [B,H,T,T] scratch)
//               P = softmax over the visible keys     (k_attn_softmax, in place; bf16: S fp32 -> P bf16 in
//                                                      probs; zeros elsewhere)
//               O = P V                               (batched over (b,h))
//   backward:   (bf16: dO rounded to a bf16 copy in scratch, the operand of dP and dV)
//               dP = dO V^T                           (batched over (b,h), into scratch [B,H,T,T], fp32)
//               dS = P (dP - rowsum(dP P)) scale      (k_attn_dsoftmax, rowsum in fp64; fp32: in place;
//                                                      bf16: dS rounded into its own bf16 scratch region)
//               dQ = dS K                             (batched over (b,h))
//               dK = sum_hh dS_h^T Q_h, dV = sum_hh P_h^T dO_h over the heads h = g*rep + hh of
//                    group g: rep calls each, batched over (b,g), hh = 0 with beta = 0 (overwrites)
//                    and then beta = 1 in order hh = 1, 2, ... (the CPU's order; deterministic).
// Row kernels: one warp per query row (lanes over keys, fixed lane-strided partial sums and a fixed
// shuffle tree: deterministic); the row lives in global memory, its final home, so any T works. Their
// fp32 instances (the fp32 ops) compute exactly what they computed before the bf16 form existed.
//
// Scratch (cuda_scratch, one call per op, regions 256-byte aligned; contents undefined between calls):
//   attention_fwd          [pointer arrays 5 x B*H]
//   attention_bwd          [dS fp32 B*H*T*T][pointer arrays 9 x B*H]
//   bf16 forward           [S fp32 B*H*T*T][pointer arrays 6 x B*H]
//   bf16 backward          [dP fp32 B*H*T*T][dS bf16 B*H*T*T][dO bf16 B*T*H*D][pointer arrays 10 x B*H]
#include <limits.h>
#include <math.h>

#include "cuda_internal.cuh"

#define ATT_THREADS 128                 // 4 warps = 4 query rows per block of the row kernels
#define ATT_ROWS_PER_BLOCK (ATT_THREADS / 32)
#define ATT_MAX_ARRAYS BACKEND_CUDA_ATT_MAX_ARRAYS  // pointer arrays of one op (bf16 backward: 10)
#define ATT_ALIGN BACKEND_CUDA_ATT_ALIGN            // bytes: every scratch region starts 256-byte aligned

static void attn_check(int B, int T, int H, int KVH, int D) {
    check(B >= 0 && T >= 0 && D > 0 && H > 0 && KVH > 0 && H % KVH == 0,
          "attention: bad shape B=%d T=%d H=%d KVH=%d D=%d (H must be a multiple of KVH)", B, T, H, KVH, D);
}

// bytes rounded up to the next region boundary of the scratch layouts
static size_t att_align(size_t bytes) { return (bytes + ATT_ALIGN - 1) / ATT_ALIGN * ATT_ALIGN; }

// ---------------------------------------------------------------------------- pointer arrays

// What a pointer array points into: the [T, D] view of head h in a [B,T,H,D] tensor, of kv head g
// in a [B,T,KVH,D] tensor, or the [T, T] matrix (b, h) of a [B,H,T,T] tensor.
enum { ATT_HEAD = 0, ATT_KV = 1, ATT_TT = 2 };

// The arrays of one op: base pointer, kind and element size (bytes: 4 fp32, 2 bf16) of each.
typedef struct {
    char *base[ATT_MAX_ARRAYS];
    int kind[ATT_MAX_ARRAYS];
    int esize[ATT_MAX_ARRAYS];
} AttArrays;

static void att_set(AttArrays *arr, int a, const void *base, int kind, int esize) {
    arr->base[a] = (char *)base;
    arr->kind[a] = kind;
    arr->esize[a] = esize;
}

// Batch entry n -> first element of its matrix (n = (hh*B + b)*KVH + g, h = g*(H/KVH) + hh): the element
// offset times the element size (for fp32, the float* offset the fp32 ops always used).
static __host__ __device__ __forceinline__ void *att_ptr(char *base, int kind, int esize, int n, int B, int T, int H,
                                                         int KVH, int D) {
    int bg = n % (B * KVH), hh = n / (B * KVH);
    int b = bg / KVH, g = bg % KVH, h = g * (H / KVH) + hh;
    size_t off;
    if (kind == ATT_HEAD) off = ((size_t)b * T * H + h) * D;        // [b, 0, h, 0]
    else if (kind == ATT_KV) off = ((size_t)b * T * KVH + g) * D;   // [b, 0, g, 0]
    else off = ((size_t)b * H + h) * T * T;                         // [b, h, 0, 0]
    return base + off * (size_t)esize;
}

// out[a * nb + n] = att_ptr(array a, n) for a < narr, n < nb = B*H.
static __global__ void k_attn_ptrs(void **out, AttArrays arrays, int narr, int nb, int B, int T, int H, int KVH,
                                   int D) {
    size_t total = (size_t)narr * nb;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total; t += (size_t)gridDim.x * blockDim.x) {
        int a = (int)(t / (size_t)nb), n = (int)(t % (size_t)nb);
        out[t] = att_ptr(arrays.base[a], arrays.kind[a], arrays.esize[a], n, B, T, H, KVH, D);
    }
}

// Writes the narr pointer arrays (B*H entries each) into ptrs (device memory) on the stream.
static void att_fill_ptrs(CudaCtx *cx, void **ptrs, const AttArrays *arrays, int narr, int B, int T, int H, int KVH,
                          int D) {
    int nb = B * H;
    size_t total = (size_t)narr * nb;
    k_attn_ptrs<<<cuda_blocks(total), CUDA_THREADS, 0, cx->stream>>>(ptrs, *arrays, narr, nb, B, T, H, KVH, D);
    launch_check("attention (pointer arrays)");
}

// Data types and precision of a batched product (file header): fp32 in and out, full fp32 or TF32 tensor-core
// products; or bf16 in, fp32 out, fp32 accumulation.
typedef enum { ATT_GEMM_FP32 = 0, ATT_GEMM_TF32 = 1, ATT_GEMM_BF16 = 2 } AttGemm;

// Row-major batched GEMM: C_n[M,N] = alpha op(A_n)[M,K] op(B_n)[K,N] + beta C_n for n < batch,
// op(X) = X^T when trans_x; A_n stored [M,K] ([K,M] when trans_a), B_n stored [K,N] ([N,K] when
// trans_b), lda / ldb / ldc their row strides (in elements). A, Bm, C: device arrays of device pointers
// (A, B of the input type, C fp32). Mapped to cuBLAS as cu_gemm does: the column-major C^T[N,M] =
// op(B)^T op(A)^T, i.e. (transa, transb) = (op of B, op of A), m = N, n = M, k = K, B's array first
// with ldb, then A's with lda, C with ldc.
static void att_bgemm(CudaCtx *cx, AttGemm prec, int trans_a, int trans_b, int M, int N, int K, float alpha,
                      void *const *A, int lda, void *const *Bm, int ldb, float beta, void *const *C, int ldc,
                      int batch) {
    cublasOperation_t ob = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, oa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (prec == ATT_GEMM_FP32) {
        cublas_check(cublasSgemmBatched(cx->blas, ob, oa, N, M, K, &alpha, (const float *const *)Bm, ldb,
                                        (const float *const *)A, lda, &beta, (float *const *)C, ldc, batch));
        return;
    }
    cudaDataType_t in = prec == ATT_GEMM_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasComputeType_t ct = prec == ATT_GEMM_BF16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
    cublas_check(cublasGemmBatchedEx(cx->blas, ob, oa, N, M, K, &alpha, (const void *const *)Bm, in, ldb,
                                     (const void *const *)A, in, lda, &beta, (void *const *)C, CUDA_R_32F, ldc, batch,
                                     ct, CUBLAS_GEMM_DEFAULT));
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

// One warp per row r = (b*H + h)*T + i of the scaled scores S (fp32, rows of T): over the visible keys
// P = exp(S - max) / sum (fp32 sum, lane-strided partials + fixed tree), written into probs (row r, type TP,
// rounded by cuda_to_fmt); 0 for masked keys, for j > i, and for the whole row when no key is visible (left
// padding). The exponentials are kept in S between the two passes (S is overwritten). The fp32 op runs
// it in place (probs == scores, TP = float).
template <typename TP>
static __global__ void __launch_bounds__(ATT_THREADS)
k_attn_softmax(TP *probs, float *scores, const int32_t *__restrict__ mask, int T, int H, size_t rows) {
    size_t r = (size_t)blockIdx.x * ATT_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (r >= rows) return;  // the whole warp: no block-level synchronisation in this kernel
    int lane = threadIdx.x & 31, i = (int)(r % (size_t)T), b = (int)(r / (size_t)T / (size_t)H);
    float *s = scores + r * (size_t)T;
    TP *p = probs + r * (size_t)T;
    const int32_t *mb = mask + (size_t)b * T;
    float mx = -INFINITY;
    for (int j = lane; j <= i; j += 32)
        if (mb[j] == 1) mx = fmaxf(mx, s[j]);
    mx = att_warp_max(mx);
    if (mx == -INFINITY) {  // no visible key: probabilities 0 (and so output 0)
        for (int j = lane; j < T; j += 32) p[j] = cuda_to_fmt<TP>(0.0f);
        return;
    }
    float part = 0.0f;
    for (int j = lane; j <= i; j += 32) {  // each lane rewrites only its own entries
        float e = mb[j] == 1 ? expf(s[j] - mx) : 0.0f;
        s[j] = e;
        part += e;
    }
    float sum = warp_sum(part);
    for (int j = lane; j < T; j += 32) p[j] = cuda_to_fmt<TP>(j <= i ? s[j] / sum : 0.0f);  // causal zeros
}

// One warp per row r of dp, which holds dP = dO V^T (fp32): dS = P (dP - sum_j dP_j P_j) scale for j <= i
// (the row sum in fp64 over j <= i, as the CPU), exact 0 for j > i, written into ds (type TS, rounded by
// cuda_to_fmt). Masked keys have P = 0, so dS 0. P of type TP (widened exactly). The fp32 op runs it in
// place (ds == dp, TS = TP = float); the bf16 form reads dP fp32 and P bf16 and writes dS bf16 elsewhere.
template <typename TS, typename TP>
static __global__ void __launch_bounds__(ATT_THREADS)
k_attn_dsoftmax(TS *ds, const float *dp, const TP *__restrict__ probs, int T, size_t rows, float scale) {
    size_t r = (size_t)blockIdx.x * ATT_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (r >= rows) return;
    int lane = threadIdx.x & 31, i = (int)(r % (size_t)T);
    const float *d = dp + r * (size_t)T;
    TS *o = ds + r * (size_t)T;
    const TP *p = probs + r * (size_t)T;
    double part = 0.0;
    for (int j = lane; j <= i; j += 32) part += (double)d[j] * (double)cuda_to_float(p[j]);
    float rf = (float)att_warp_sum_d(part);
    for (int j = lane; j < T; j += 32)
        o[j] = cuda_to_fmt<TS>(j <= i ? cuda_to_float(p[j]) * (d[j] - rf) * scale : 0.0f);
}

static unsigned att_row_blocks(size_t rows) {
    return (unsigned)((rows + ATT_ROWS_PER_BLOCK - 1) / ATT_ROWS_PER_BLOCK);
}

// dst[i] = bf16(src[i]) (round to nearest even), i < n
static __global__ void k_attn_to_bf16(__nv_bfloat16 *__restrict__ dst, const float *__restrict__ src, size_t n) {
    GRID_STRIDE(i, n) dst[i] = __float2bfloat16_rn(src[i]);
}

// ---------------------------------------------------------------------------- forward

static void cu_attention_fwd(Backend *be, float *out, float *probs, const float *q, const float *k, const float *v,
                             const int32_t *mask, int B, int T, int H, int KVH, int D) {
    attn_check(B, T, H, KVH, D);
    if (B == 0 || T == 0) return;
    att_size_check("attention_fwd", B, T, H, KVH, D);
    CudaCtx *cx = cuda_ctx(be);
    int nb = B * H;
    AttGemm prec = be->weight_dtype == BACKEND_WEIGHT_BF16 ? ATT_GEMM_TF32 : ATT_GEMM_FP32;
    float scale = 1.0f / sqrtf((float)D);
    enum { Q, K, V, P, O, NARR };
    AttArrays arr = {};
    att_set(&arr, Q, q, ATT_HEAD, 4);
    att_set(&arr, K, k, ATT_KV, 4);
    att_set(&arr, V, v, ATT_KV, 4);
    att_set(&arr, P, probs, ATT_TT, 4);
    att_set(&arr, O, out, ATT_HEAD, 4);
    // scratch: the NARR * nb pointers (2 floats each)
    void **pt = (void **)cuda_scratch(be, (size_t)NARR * nb * 2, "attention pointer arrays");
    att_fill_ptrs(cx, pt, &arr, NARR, B, T, H, KVH, D);
    void *const *pq = pt + (size_t)Q * nb, *const *pk = pt + (size_t)K * nb, *const *pv = pt + (size_t)V * nb,
                *const *pp = pt + (size_t)P * nb, *const *po = pt + (size_t)O * nb;
    // S[T,T] = scale * Q[T,D] K[T,D]^T
    att_bgemm(cx, prec, 0, 1, T, T, D, scale, pq, H * D, pk, KVH * D, 0.0f, pp, T, nb);
    size_t rows = (size_t)nb * T;
    k_attn_softmax<float><<<att_row_blocks(rows), ATT_THREADS, 0, cx->stream>>>(probs, probs, mask, T, H, rows);
    launch_check("attention_fwd (softmax)");
    // O[T,D] = P[T,T] V[T,D]
    att_bgemm(cx, prec, 0, 0, T, D, T, 1.0f, pp, T, pv, KVH * D, 0.0f, po, H * D, nb);
}

// attention_fwd_wf in the bf16 format (backend.h): q, k, v, probs bf16; out fp32. The products take bf16
// inputs and accumulate in fp32 (ATT_GEMM_BF16); the scores go to an fp32 [B,H,T,T] scratch, the softmax
// reads them and writes P rounded to bf16 into probs, and O = P V reads that bf16 P.
void cuda_attention_fwd_bf16(Backend *be, float *out, void *probs, const void *q, const void *k, const void *v,
                             const int32_t *mask, int B, int T, int H, int KVH, int D) {
    attn_check(B, T, H, KVH, D);
    if (B == 0 || T == 0) return;
    att_size_check("attention_fwd_wf", B, T, H, KVH, D);
    CudaCtx *cx = cuda_ctx(be);
    int nb = B * H;
    float scale = 1.0f / sqrtf((float)D);
    enum { Q, K, V, S, P, O, NARR };
    // scratch: S fp32 [B,H,T,T], then (256-byte aligned) the NARR * nb pointers
    size_t n_s = (size_t)nb * T * T, off_pt = att_align(n_s * sizeof(float));
    size_t bytes = off_pt + (size_t)NARR * nb * sizeof(void *);
    char *sc = (char *)cuda_scratch(be, (bytes + sizeof(float) - 1) / sizeof(float),
                                    "attention_fwd_wf scores [B,H,T,T] (fp32) and pointer arrays");
    float *sbuf = (float *)sc;
    void **pt = (void **)(sc + off_pt);
    AttArrays arr = {};
    att_set(&arr, Q, q, ATT_HEAD, 2);
    att_set(&arr, K, k, ATT_KV, 2);
    att_set(&arr, V, v, ATT_KV, 2);
    att_set(&arr, S, sbuf, ATT_TT, 4);
    att_set(&arr, P, probs, ATT_TT, 2);
    att_set(&arr, O, out, ATT_HEAD, 4);
    att_fill_ptrs(cx, pt, &arr, NARR, B, T, H, KVH, D);
    void *const *pq = pt + (size_t)Q * nb, *const *pk = pt + (size_t)K * nb, *const *pv = pt + (size_t)V * nb,
                *const *ps = pt + (size_t)S * nb, *const *pp = pt + (size_t)P * nb, *const *po = pt + (size_t)O * nb;
    // S[T,T] = scale * Q[T,D] K[T,D]^T (fp32 out). Column-major: S^T[T,T] = op_T(K^T col-major [D,T],
    // ld KVH*D) [T,D] . (Q^T col-major [D,T], ld H*D, op_N) [D,T]: transa T, transb N, m = T (keys),
    // n = T (queries), k = D, ldc = T
    att_bgemm(cx, ATT_GEMM_BF16, 0, 1, T, T, D, scale, pq, H * D, pk, KVH * D, 0.0f, ps, T, nb);
    size_t rows = (size_t)nb * T;
    k_attn_softmax<__nv_bfloat16><<<att_row_blocks(rows), ATT_THREADS, 0, cx->stream>>>(
        (__nv_bfloat16 *)probs, sbuf, mask, T, H, rows);
    launch_check("attention_fwd_wf (softmax)");
    // O[T,D] = P[T,T] V[T,D] (bf16 P and V, fp32 out). Column-major: O^T[D,T] = (V^T col-major [D,T],
    // ld KVH*D, op_N) . (P^T col-major [T keys, T queries], ld T, op_N): transa N, transb N, m = D, n = T,
    // k = T, ldc = H*D
    att_bgemm(cx, ATT_GEMM_BF16, 0, 0, T, D, T, 1.0f, pp, T, pv, KVH * D, 0.0f, po, H * D, nb);
}

// ---------------------------------------------------------------------------- backward

// The products of the backward after dS (both forms; prec: their precision): dQ[T,D] = dS[T,T] K[T,D]
// (column-major: dQ^T[D,T] = (K^T col-major [D,T], ld KVH*D, op_N) . (dS^T col-major [T keys, T queries],
// ld T, op_N): transa N, transb N, m = D, n = T, k = T, ldc = H*D), then dK[T,D] = sum_hh dS_h^T Q_h and
// dV[T,D] = sum_hh P_h^T dO_h, step hh batched over (b, g) (entries [hh*nbg, (hh+1)*nbg) of the head
// arrays; the first nbg of dK/dV's), hh = 0 with beta 0 and then beta 1 in order (the CPU's order;
// column-major: dK^T[D,T] = (Q_h^T col-major [D,T], ld H*D, op_N) . op_T(dS_h^T col-major [T keys,
// T queries], ld T) [T queries, T keys]: transa N, transb T, m = D, n = T keys, k = T queries, ldc = KVH*D;
// dV likewise with dO_h and P_h).
static void att_bwd_grads(CudaCtx *cx, AttGemm prec, void *const *pds, void *const *pk, void *const *pdq,
                          void *const *pq, void *const *pp, void *const *pdo, void *const *pdk, void *const *pdv,
                          int T, int H, int KVH, int D, int nb, int nbg, int rep) {
    att_bgemm(cx, prec, 0, 0, T, D, T, 1.0f, pds, T, pk, KVH * D, 0.0f, pdq, H * D, nb);
    for (int hh = 0; hh < rep; hh++) {
        size_t o = (size_t)hh * nbg;
        float beta = hh == 0 ? 0.0f : 1.0f;
        att_bgemm(cx, prec, 1, 0, T, D, T, 1.0f, pds + o, T, pq + o, H * D, beta, pdk, KVH * D, nbg);
        att_bgemm(cx, prec, 1, 0, T, D, T, 1.0f, pp + o, T, pdo + o, H * D, beta, pdv, KVH * D, nbg);
    }
}

static void cu_attention_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *probs,
                             const float *q, const float *k, const float *v, int B, int T, int H, int KVH, int D) {
    attn_check(B, T, H, KVH, D);
    if (B == 0 || T == 0) return;
    att_size_check("attention_bwd", B, T, H, KVH, D);
    CudaCtx *cx = cuda_ctx(be);
    int nb = B * H, nbg = B * KVH, rep = H / KVH;
    AttGemm prec = be->weight_dtype == BACKEND_WEIGHT_BF16 ? ATT_GEMM_TF32 : ATT_GEMM_FP32;
    float scale = 1.0f / sqrtf((float)D);
    enum { DO, V, DS, K, DQ, Q, P, DK, DV, NARR };
    // scratch: dS [B,H,T,T] floats, then (256-byte aligned) the NARR * nb pointers, 2 floats each
    size_t n_ds = (size_t)nb * T * T, off = att_align(n_ds * sizeof(float)) / sizeof(float);
    float *ds = cuda_scratch(be, off + (size_t)NARR * nb * 2, "attention backward dS [B,H,T,T] and pointer arrays");
    void **pt = (void **)(ds + off);
    AttArrays arr = {};
    att_set(&arr, DO, dout, ATT_HEAD, 4);
    att_set(&arr, V, v, ATT_KV, 4);
    att_set(&arr, DS, ds, ATT_TT, 4);
    att_set(&arr, K, k, ATT_KV, 4);
    att_set(&arr, DQ, dq, ATT_HEAD, 4);
    att_set(&arr, Q, q, ATT_HEAD, 4);
    att_set(&arr, P, probs, ATT_TT, 4);
    att_set(&arr, DK, dk, ATT_KV, 4);
    att_set(&arr, DV, dv, ATT_KV, 4);
    att_fill_ptrs(cx, pt, &arr, NARR, B, T, H, KVH, D);
    void *const *pdo = pt + (size_t)DO * nb, *const *pv = pt + (size_t)V * nb, *const *pds = pt + (size_t)DS * nb,
                *const *pk = pt + (size_t)K * nb, *const *pdq = pt + (size_t)DQ * nb, *const *pq = pt + (size_t)Q * nb,
                *const *pp = pt + (size_t)P * nb, *const *pdk = pt + (size_t)DK * nb,
                *const *pdv = pt + (size_t)DV * nb;
    // dP[T,T] = dO[T,D] V[T,D]^T, into dS's place
    att_bgemm(cx, prec, 0, 1, T, T, D, 1.0f, pdo, H * D, pv, KVH * D, 0.0f, pds, T, nb);
    size_t rows = (size_t)nb * T;
    k_attn_dsoftmax<float, float><<<att_row_blocks(rows), ATT_THREADS, 0, cx->stream>>>(ds, ds, probs, T, rows, scale);
    launch_check("attention_bwd (softmax backward)");
    att_bwd_grads(cx, prec, pds, pk, pdq, pq, pp, pdo, pdk, pdv, T, H, KVH, D, nb, nbg, rep);
}

// attention_bwd_wf in the bf16 format (backend.h): probs, q, k, v bf16; dout, dq, dk, dv fp32. dO is rounded
// to a bf16 copy (the operand of dP = dO V^T and dV = P^T dO); dP fp32; dS computed in fp32 from dP and the
// bf16 P and rounded to bf16 (the operand of dQ = dS K and dK = dS^T Q); every product bf16 x bf16 with fp32
// accumulation and output, in the order of cu_attention_bwd.
void cuda_attention_bwd_bf16(Backend *be, float *dq, float *dk, float *dv, const float *dout, const void *probs,
                             const void *q, const void *k, const void *v, int B, int T, int H, int KVH, int D) {
    attn_check(B, T, H, KVH, D);
    if (B == 0 || T == 0) return;
    att_size_check("attention_bwd_wf", B, T, H, KVH, D);
    CudaCtx *cx = cuda_ctx(be);
    int nb = B * H, nbg = B * KVH, rep = H / KVH;
    float scale = 1.0f / sqrtf((float)D);
    enum { DO, V, DP, DS, K, DQ, Q, P, DK, DV, NARR };
    // scratch, each region 256-byte aligned: dP fp32 [B,H,T,T] | dS bf16 [B,H,T,T] | dO bf16 [B,T,H,D] |
    // the NARR * nb pointers
    size_t n_tt = (size_t)nb * T * T, n_do = (size_t)B * T * H * D;
    size_t off_ds = att_align(n_tt * sizeof(float)), off_do = off_ds + att_align(n_tt * sizeof(__nv_bfloat16));
    size_t off_pt = off_do + att_align(n_do * sizeof(__nv_bfloat16));
    size_t bytes = off_pt + (size_t)NARR * nb * sizeof(void *);
    char *sc = (char *)cuda_scratch(be, (bytes + sizeof(float) - 1) / sizeof(float),
                                    "attention_bwd_wf dP (fp32), dS and dout (bf16) and pointer arrays");
    float *dpb = (float *)sc;
    __nv_bfloat16 *dsb = (__nv_bfloat16 *)(sc + off_ds), *dob = (__nv_bfloat16 *)(sc + off_do);
    void **pt = (void **)(sc + off_pt);
    k_attn_to_bf16<<<cuda_blocks(n_do), CUDA_THREADS, 0, cx->stream>>>(dob, dout, n_do);
    launch_check("attention_bwd_wf (dout to bf16)");
    AttArrays arr = {};
    att_set(&arr, DO, dob, ATT_HEAD, 2);
    att_set(&arr, V, v, ATT_KV, 2);
    att_set(&arr, DP, dpb, ATT_TT, 4);
    att_set(&arr, DS, dsb, ATT_TT, 2);
    att_set(&arr, K, k, ATT_KV, 2);
    att_set(&arr, DQ, dq, ATT_HEAD, 4);
    att_set(&arr, Q, q, ATT_HEAD, 2);
    att_set(&arr, P, probs, ATT_TT, 2);
    att_set(&arr, DK, dk, ATT_KV, 4);
    att_set(&arr, DV, dv, ATT_KV, 4);
    att_fill_ptrs(cx, pt, &arr, NARR, B, T, H, KVH, D);
    void *const *pdo = pt + (size_t)DO * nb, *const *pv = pt + (size_t)V * nb, *const *pdp = pt + (size_t)DP * nb,
                *const *pds = pt + (size_t)DS * nb, *const *pk = pt + (size_t)K * nb,
                *const *pdq = pt + (size_t)DQ * nb, *const *pq = pt + (size_t)Q * nb, *const *pp = pt + (size_t)P * nb,
                *const *pdk = pt + (size_t)DK * nb, *const *pdv = pt + (size_t)DV * nb;
    // dP[T,T] = dO[T,D] V[T,D]^T (bf16 dO and V, fp32 out). Column-major: dP^T[T,T] = op_T(V^T col-major
    // [D,T], ld KVH*D) [T,D] . (dO^T col-major [D,T], ld H*D, op_N): transa T, transb N, m = T (keys),
    // n = T (queries), k = D, ldc = T
    att_bgemm(cx, ATT_GEMM_BF16, 0, 1, T, T, D, 1.0f, pdo, H * D, pv, KVH * D, 0.0f, pdp, T, nb);
    size_t rows = (size_t)nb * T;
    k_attn_dsoftmax<__nv_bfloat16, __nv_bfloat16><<<att_row_blocks(rows), ATT_THREADS, 0, cx->stream>>>(
        dsb, dpb, (const __nv_bfloat16 *)probs, T, rows, scale);
    launch_check("attention_bwd_wf (softmax backward)");
    // dQ, dK, dV from the bf16 dS, K, Q, P and dO, fp32 out
    att_bwd_grads(cx, ATT_GEMM_BF16, pds, pk, pdq, pq, pp, pdo, pdk, pdv, T, H, KVH, D, nb, nbg, rep);
}

void cuda_install_attention(Backend *be) {
    be->attention_fwd = cu_attention_fwd;
    be->attention_bwd = cu_attention_bwd;
}
