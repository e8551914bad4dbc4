// act_wf.cu: activations in the weight format for the CUDA backend (backend.h, "activations in the weight
// format"; docs/gpu.md "bf16 activations"). A Llama with lora.fuse may keep the normed inputs of its
// projections (xn1, xn2), q, k, v and the attention probabilities, and its MLP activations (gate, up, h, dgate,
// dup: [N, intermediate]) in the weight format: bf16 (__nv_bfloat16, 2 bytes) in the bf16 format, float in the
// fp32 format. Values written into the format are rounded with __float2bfloat16_rn (cuda_to_fmt); all
// arithmetic is fp32 (fp64 in row_norm_sum_wf and the attention backward's row sums).
//
// In the fp32 format every op computes exactly what the fp32 op it stands for computes on this backend:
// the elementwise kernels use the same formulas (cuda_swiglu, cuda_swiglu_grads in
// cuda_internal.cuh, shared with elementwise.cu), row_norm_sum_wf is reduce.cu's row_norm_sum kernel with a
// row stride, rmsnorm_fwd_wf is elementwise.cu's rmsnorm kernel with a row stride, the products are the
// same cuBLAS calls as wgemm_lora / gemm, and rope_fwd_wf, attention_fwd_wf, attention_bwd_wf call the fp32 ops
// (rope_fwd, attention_fwd, attention_bwd). In the bf16 format rope_fwd_wf is elementwise.cu's rope kernel on
// bf16 (cuda_rope_fwd_fmt) and the attention ops are attention.cu's bf16 form (cuda_attention_fwd_bf16 /
// cuda_attention_bwd_bf16: bf16 x bf16 -> fp32 batched products, cublasGemmBatchedEx).
//
// Products (row-major to column-major as in backend_cuda.cu: a row-major X [r, c] with row stride ld is the
// column-major X^T [c, r] with leading dimension ld, so C [M, N] = op(A) op(B) is computed as the
// column-major C^T [N, M] = op(B)^T op(A)^T: operands swapped, m = N, n = M, the same transpose flags, the
// row strides as leading dimensions, ldc = N):
//   wgemm_lora_multi_wf  cuda_bordered_gemm (lora_gemm.cu) on the caller's Xw, the outputs in the weight format:
//                        bf16 output written by cuBLAS from the fp32 accumulator (cublasGemmEx, C type
//                        CUDA_R_16BF, CUBLAS_COMPUTE_32F); fp32: the cublasSgemm of wgemm_lora_wf.
//   wgemm_lora_wf        the operand is the caller's Xw (row stride k0 + r): Xa is written into its last r
//                        columns (cuda_lora_operand) and cuda_bordered_gemm reads it in place.
//   gemm_wf              cublasGemmEx (bf16 x bf16 -> fp32, CUBLAS_COMPUTE_32F) with the given strides, fp32
//                        operands first rounded into the backend's scratch (contiguous); fp32: cublasSgemm
//                        with the given strides.
// The backend's handle, stream and fixed workspace, atomics off: deterministic run to run.
//
// Elementwise kernels: a 2-D grid over the [M, C] views (blockIdx.y strides over rows, the threads of
// blockIdx.x over columns), so row strides cost no division per element; scalar loads and stores (odd
// widths and strides leave bf16 pairs unaligned).
#include <cuda_bf16.h>

#include "cuda_internal.cuh"

// for (m = this block's first row; m < M; m += all rows of the grid) / the same over columns
#define ROWS(m, M) for (int m = blockIdx.y; m < (M); m += gridDim.y)
#define COLS(c, C) for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < (C); c += gridDim.x * blockDim.x)


// ---------------------------------------------------------------------------- kernels

// dst [rows, cols] contiguous = bf16(src [rows, cols] with row stride lds)
static __global__ void k_cast_rows_bf16(__nv_bfloat16 *__restrict__ dst, const float *__restrict__ src, int lds,
                                        int rows, int cols) {
    ROWS(m, rows) {
        const float *s = src + (size_t)m * lds;
        __nv_bfloat16 *d = dst + (size_t)m * cols;
        COLS(c, cols) d[c] = __float2bfloat16_rn(s[c]);
    }
}

// h [M, I] (row stride ldh) = silu(gate) * up; gate, up contiguous [M, I]. Each element is read and written
// by one thread (h may alias gate or up when ldh == I).
template <typename T>
static __global__ void k_swiglu_fwd_wf(T *h, int ldh, const T *gate, const T *up, int M, int I) {
    ROWS(m, M) {
        const T *g = gate + (size_t)m * I, *u = up + (size_t)m * I;
        T *o = h + (size_t)m * ldh;
        COLS(i, I) o[i] = cuda_to_fmt<T>(cuda_swiglu(cuda_to_float(g[i]), cuda_to_float(u[i])));
    }
}

// dgate, dup [M, I] (row stride ld) from dh (fp32), gate, up (contiguous [M, I])
template <typename T>
static __global__ void k_swiglu_bwd_wf(T *dgate, T *dup, int ld, const float *dh, const T *gate, const T *up, int M,
                                       int I) {
    ROWS(m, M) {
        size_t ri = (size_t)m * I, ro = (size_t)m * ld;
        COLS(i, I) {
            float dg, du;
            cuda_swiglu_grads(dh[ri + i], cuda_to_float(gate[ri + i]), cuda_to_float(up[ri + i]), &dg, &du);
            dgate[ro + i] = cuda_to_fmt<T>(dg);
            dup[ro + i] = cuda_to_fmt<T>(du);
        }
    }
}

// ---------------------------------------------------------------------------- products

// Y_i = [Xw | Xa_i] Wb_i^T in the weight format (backend.h): the operand is the caller's Xw (row stride in + r),
// read in place; per weight in order, its Xa_i is rounded into Xw's last r columns (the stream orders each
// rewrite after the product before it) and one product writes Y_i in the format. Column-major:
//   Y_i^T [out_i, M] = OP_T(Wb_i [out_i, k] row-major = col-major [k, out_i], ld in + r) . Xw^T [k, M] (ld in + r)
// ldc = out_i; k = in + r with Xa_i, in without (cuda_bordered_gemm with y_wf = 1: bf16 written by cuBLAS
// from the fp32 accumulator; fp32: the cublasSgemm of wgemm_lora_wf).
static void cu_wgemm_lora_multi_wf(Backend *be, int n, int M, int in, int r, void *Xw, const float *const *Xa,
                                   const void *const *Wb, const int *out, void *const *Y) {
    check(n >= 0, "wgemm_lora_multi_wf: negative count %d", n);
    for (int i = 0; i < n; i++) cuda_lora_shape_check("wgemm_lora_multi_wf", M, out[i], in, r);
    if (M == 0 || n == 0) return;
    int ld = in + r;
    for (int i = 0; i < n; i++) {
        if (Xa[i]) cuda_lora_operand(be, Xw, ld, NULL, in, Xa[i], r, M);
        cuda_bordered_gemm(be, 1, M, out[i], Xa[i] ? ld : in, Xw, ld, Wb[i], ld, 0.0f, Y[i], 1);
    }
}

// rmsnorm_fwd into rows of stride ldo in the weight format (elementwise.cu's kernel, bf16 or fp32 output)
static void cu_rmsnorm_fwd_wf(Backend *be, void *out, int ldo, float *rstd, const float *inp, const float *w, int N,
                              int C, float eps) {
    check(N >= 0 && C > 0 && ldo >= C, "rmsnorm_fwd_wf: bad shape N=%d C=%d, row stride %d", N, C, ldo);
    cuda_rmsnorm_fwd_ld(be, out, cuda_wf_bf16(be), (size_t)ldo, rstd, inp, w, N, C, eps);
}

// Y = Xw op(Wb) + beta Y with Xw [M, k0 + r] already in the weight format (backend.h). Xa (when given) is
// rounded into Xw's columns [k0, k0 + r) first. Column-major, as cu_wgemm_lora (lora_gemm.cu):
//   trans_w = 1: Y^T [out, M] = (Wb [out, k] row-major = col-major [k, out], ld in + r, OP_T) . Xw^T [k, M]
//   trans_w = 0: Y^T [in, M]  = (Wb [k, in]  row-major = col-major [in, k], ld in + r, OP_N) . Xw^T [k, M]
// with Xw^T the column-major view of Xw (ldb = k0 + r, whatever k is), ldc = n; k = k0 + r with Xa, k0 without
// (the border is not read). Y is fp32.
static void cu_wgemm_lora_wf(Backend *be, int trans_w, int M, int out, int in, int r, void *Xw, const float *Xa,
                             const void *Wb, float beta, float *Y) {
    cuda_lora_shape_check("wgemm_lora_wf", M, out, in, r);
    if (M == 0) return;
    int k0 = trans_w ? in : out, ld = k0 + r;
    if (Xa) cuda_lora_operand(be, Xw, ld, NULL, k0, Xa, r, M);
    cuda_bordered_gemm(be, trans_w, M, trans_w ? out : in, Xa ? ld : k0, Xw, ld, Wb, in + r, beta, Y, 0);
}

// dst (contiguous bf16 [rows, cols]) = bf16(src [rows, cols], row stride lds), on the backend's stream
static void cast_rows_bf16(Backend *be, __nv_bfloat16 *dst, const float *src, int lds, int rows, int cols) {
    k_cast_rows_bf16<<<cuda_rows_grid(rows, cols), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(dst, src, lds, rows, cols);
    launch_check("gemm_wf (operand to bf16)");
}

// C [M, N] = alpha op(A) op(B) + beta C with row strides lda, ldb (backend.h). A is stored [ar, ac] =
// trans_a ? [K, M] : [M, K], B [br, bc] = trans_b ? [N, K] : [K, N]. Column-major (top of this file):
//   C^T [N, M] = op_b(B^T col-major [bc, br], ld ldb) [N, K] . op_a(A^T col-major [ac, ar], ld lda) [K, M]
// with op_x = CUBLAS_OP_T when trans_x (so [bc, br] = [K, N] transposed gives [N, K], [ac, ar] = [M, K] gives
// [K, M]) and CUBLAS_OP_N otherwise ([bc, br] = [N, K], [ac, ar] = [K, M] as they are); ldc = N.
// cuBLAS needs ldb >= bc and lda >= ac (the rows of the column-major views): the checks below.
static void cu_gemm_wf(Backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A, int lda,
                       int a_wf, const void *B, int ldb, int b_wf, float beta, float *C) {
    check(M >= 0 && N >= 0 && K >= 0, "gemm_wf: negative size M=%d N=%d K=%d", M, N, K);
    if (M == 0 || N == 0) return;
    if (K == 0) {  // C = beta C (beta 0 overwrites with zeros): the gemm op's empty product, no operand read
        be->gemm(be, trans_a, trans_b, M, N, 0, alpha, NULL, NULL, beta, C);
        return;
    }
    int ar = trans_a ? K : M, ac = trans_a ? M : K, br = trans_b ? N : K, bc = trans_b ? K : N;
    check(lda >= ac && ldb >= bc, "gemm_wf: row stride lda=%d < %d or ldb=%d < %d (M=%d N=%d K=%d)", lda, ac, ldb, bc,
          M, N, K);
    CudaCtx *cx = cuda_ctx(be);
    cublasOperation_t oa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, ob = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (!cuda_wf_bf16(be)) {  // fp32 format: both operands fp32 whatever a_wf / b_wf say; cu_gemm's call with strides
        cublas_check(cublasSgemm(cx->blas, ob, oa, N, M, K, &alpha, (const float *)B, ldb, (const float *)A, lda,
                                 &beta, C, N));
        return;
    }
    // bf16: an fp32 operand is rounded into the scratch, contiguous (its row stride becomes its width); B's
    // copy starts 16-byte aligned after A's
    size_t na = a_wf ? 0 : (size_t)ar * (size_t)ac, nb = b_wf ? 0 : (size_t)br * (size_t)bc;
    size_t na_pad = (na + 7) & ~(size_t)7;
    if (na + nb) {
        __nv_bfloat16 *s = (__nv_bfloat16 *)cuda_scratch(be, (na_pad + nb + 1) / 2, "gemm_wf bf16 operands");
        if (!a_wf) {
            cast_rows_bf16(be, s, (const float *)A, lda, ar, ac);
            A = s;
            lda = ac;
        }
        if (!b_wf) {
            cast_rows_bf16(be, s + na_pad, (const float *)B, ldb, br, bc);
            B = s + na_pad;
            ldb = bc;
        }
    }
    cublas_check(cublasGemmEx(cx->blas, ob, oa, N, M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, C,
                              CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// ---------------------------------------------------------------------------- elementwise

static void cu_swiglu_fwd_wf(Backend *be, void *h, int ldh, const void *gate, const void *up, int M, int I) {
    check(M >= 0 && I >= 0 && ldh >= I, "swiglu_fwd_wf: bad shape M=%d I=%d, row stride %d", M, I, ldh);
    if (M == 0 || I == 0) return;
    dim3 grid = cuda_rows_grid(M, I);
    cudaStream_t st = cuda_ctx(be)->stream;
    if (cuda_wf_bf16(be))
        k_swiglu_fwd_wf<__nv_bfloat16><<<grid, CUDA_THREADS, 0, st>>>(
            (__nv_bfloat16 *)h, ldh, (const __nv_bfloat16 *)gate, (const __nv_bfloat16 *)up, M, I);
    else
        k_swiglu_fwd_wf<float><<<grid, CUDA_THREADS, 0, st>>>((float *)h, ldh, (const float *)gate, (const float *)up,
                                                              M, I);
    launch_check("swiglu_fwd_wf");
}

static void cu_swiglu_bwd_wf(Backend *be, void *dgate, void *dup, int ld, const float *dh, const void *gate,
                             const void *up, int M, int I) {
    check(M >= 0 && I >= 0 && ld >= I, "swiglu_bwd_wf: bad shape M=%d I=%d, row stride %d", M, I, ld);
    if (M == 0 || I == 0) return;
    dim3 grid = cuda_rows_grid(M, I);
    cudaStream_t st = cuda_ctx(be)->stream;
    if (cuda_wf_bf16(be))
        k_swiglu_bwd_wf<__nv_bfloat16><<<grid, CUDA_THREADS, 0, st>>>((__nv_bfloat16 *)dgate, (__nv_bfloat16 *)dup, ld,
                                                                      dh, (const __nv_bfloat16 *)gate,
                                                                      (const __nv_bfloat16 *)up, M, I);
    else
        k_swiglu_bwd_wf<float><<<grid, CUDA_THREADS, 0, st>>>((float *)dgate, (float *)dup, ld, dh,
                                                              (const float *)gate, (const float *)up, M, I);
    launch_check("swiglu_bwd_wf");
}

// row_norm_sum's kernel and host sum (reduce.cu) over the strided x
static double cu_row_norm_sum_wf(Backend *be, const void *x, int ld, const int32_t *mask, int N, int C) {
    check(N >= 0 && C >= 0 && ld >= C, "row_norm_sum_wf: bad shape N=%d C=%d, row stride %d", N, C, ld);
    return cuda_row_norm_sum_ld(be, x, cuda_wf_bf16(be), (size_t)ld, mask, N, C);
}

// ---------------------------------------------------------------------------- RoPE and attention

// rope_fwd on x in the weight format: the rope_fwd op in fp32; its kernel on bf16 (fp32 arithmetic, rounded)
static void cu_rope_fwd_wf(Backend *be, void *x, const float *cos_t, const float *sin_t, int B, int T, int nh, int D) {
    if (!cuda_wf_bf16(be)) {
        be->rope_fwd(be, (float *)x, cos_t, sin_t, B, T, nh, D);
        return;
    }
    cuda_rope_fwd_fmt(be, x, 1, cos_t, sin_t, B, T, nh, D);
}

// attention_fwd with q, k, v, probs in the weight format: attention_fwd in fp32; attention.cu's bf16 form
static void cu_attention_fwd_wf(Backend *be, float *out, void *probs, const void *q, const void *k, const void *v,
                                const int32_t *mask, int B, int T, int H, int KVH, int D) {
    if (!cuda_wf_bf16(be)) {
        be->attention_fwd(be, out, (float *)probs, (const float *)q, (const float *)k, (const float *)v, mask, B, T,
                          H, KVH, D);
        return;
    }
    cuda_attention_fwd_bf16(be, out, probs, q, k, v, mask, B, T, H, KVH, D);
}

// attention_bwd with probs, q, k, v in the weight format: attention_bwd in fp32; attention.cu's bf16 form
static void cu_attention_bwd_wf(Backend *be, float *dq, float *dk, float *dv, const float *dout, const void *probs,
                                const void *q, const void *k, const void *v, int B, int T, int H, int KVH, int D) {
    if (!cuda_wf_bf16(be)) {
        be->attention_bwd(be, dq, dk, dv, dout, (const float *)probs, (const float *)q, (const float *)k,
                          (const float *)v, B, T, H, KVH, D);
        return;
    }
    cuda_attention_bwd_bf16(be, dq, dk, dv, dout, probs, q, k, v, B, T, H, KVH, D);
}

void cuda_install_act_wf(Backend *be) {
    be->wgemm_lora_multi_wf = cu_wgemm_lora_multi_wf;
    be->wgemm_lora_wf = cu_wgemm_lora_wf;
    be->gemm_wf = cu_gemm_wf;
    be->swiglu_fwd_wf = cu_swiglu_fwd_wf;
    be->swiglu_bwd_wf = cu_swiglu_bwd_wf;
    be->row_norm_sum_wf = cu_row_norm_sum_wf;
    be->rmsnorm_fwd_wf = cu_rmsnorm_fwd_wf;
    be->rope_fwd_wf = cu_rope_fwd_wf;
    be->attention_fwd_wf = cu_attention_fwd_wf;
    be->attention_bwd_wf = cu_attention_bwd_wf;
}
