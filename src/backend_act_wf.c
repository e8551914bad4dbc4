// backend_act_wf.c: activations in the weight format for the CPU backend (backend.h, "activations in
// the weight format"; docs/gpu.md "bf16 activations").
//
// On the CPU both weight formats store fp32: in the fp32 format these ops compute exactly what the fp32
// ops compute (the same formulas, the same sgemm calls up to operand strides), so a model on this path
// follows the plain fused path bit for bit; in the bf16 emulation every value written into a buffer of
// the format is rounded to bf16 (round_bf16) and every fp32 operand of a product too, which is what the
// CUDA backend computes with bf16 storage, up to summation order.
#include <cblas.h>

#include "actlora/backend.h"
#include "actlora/common.h"
#include "backend_cpu_internal.h"

// below this many elements an elementwise op runs on one thread (as backend_cpu.c)
#define WF_PAR_MIN 32768

static int is_bf16(const Backend *be) { return be->weight_dtype == BACKEND_WEIGHT_BF16; }

// ---------------------------------------------------------------------------- products

// n bordered forwards reading Xw in place (each Xa_i written into its last r columns first), outputs rounded
static void cpu_wgemm_lora_multi_wf(Backend *be, int n, int M, int in, int r, void *Xw, const float *const *Xa,
                                    const void *const *Wb, const int *out, void *const *Y) {
    check(n >= 0, "wgemm_lora_multi_wf: negative count %d", n);
    for (int i = 0; i < n; i++) {
        be->wgemm_lora_wf(be, 1, M, out[i], in, r, Xw, Xa[i], Wb[i], 0.0f, (float *)Y[i]);
        if (is_bf16(be)) round_bf16_inplace(be, (float *)Y[i], (size_t)M * (size_t)out[i]);
    }
}

// rmsnorm_fwd into strided rows in the format
static void cpu_rmsnorm_fwd_wf(Backend *be, void *out, int ldo, float *rstd, const float *inp, const float *w, int N,
                               int C, float eps) {
    check(N >= 0 && C > 0 && ldo >= C, "rmsnorm_fwd_wf: bad shape N=%d C=%d ldo=%d", N, C, ldo);
    cpu_rmsnorm_fwd_ld(be, (float *)out, (size_t)ldo, is_bf16(be), rstd, inp, w, N, C, eps);
}

// Y = [Xw | Xa] op(Wb) + beta Y with the operand already in the format (Xa written into Xw's last r columns)
static void cpu_wgemm_lora_wf(Backend *be, int trans_w, int M, int out, int in, int r, void *Xw, const float *Xa,
                              const void *Wb, float beta, float *Y) {
    cpu_lora_shape_check("wgemm_lora_wf", M, out, in, r);
    if (M == 0) return;
    int k0 = trans_w ? in : out, ld = k0 + r;
    float *op = (float *)Xw;
    if (Xa)
        for (int m = 0; m < M; m++)
            for (int j = 0; j < r; j++) op[(size_t)m * ld + k0 + j] = round_wf(be, Xa[(size_t)m * r + j]);
    cpu_bordered_gemm(trans_w, M, trans_w ? out : in, Xa ? ld : k0, op, ld, (const float *)Wb, in + r, beta, Y);
}

// An fp32 operand [rows, cols] (row stride ld) rounded to bf16 into dst (contiguous); returns dst.
static const float *round_operand(const float *src, int rows, int cols, int ld, float *dst) {
    for (int i = 0; i < rows; i++)
        for (int c = 0; c < cols; c++) dst[(size_t)i * cols + c] = round_bf16(src[(size_t)i * ld + c]);
    return dst;
}

// C = alpha op(A) op(B) + beta C with strided operands, the fp32 ones rounded in the bf16 emulation
static void cpu_gemm_wf(Backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A,
                        int lda, int a_wf, const void *B, int ldb, int b_wf, float beta, float *C) {
    check(M >= 0 && N >= 0 && K >= 0, "gemm_wf: negative size M=%d N=%d K=%d", M, N, K);
    if (M == 0 || N == 0) return;
    if (K == 0) {  // the gemm op's empty product: C = beta * C (beta == 0 overwrites)
        be->gemm(be, trans_a, trans_b, M, N, 0, alpha, NULL, NULL, beta, C);
        return;
    }
    int ar = trans_a ? K : M, ac = trans_a ? M : K, br = trans_b ? N : K, bc = trans_b ? K : N;
    check(lda >= ac && ldb >= bc, "gemm_wf: row strides %d, %d below the widths %d, %d", lda, ldb, ac, bc);
    const float *a = (const float *)A, *b = (const float *)B;
    if (is_bf16(be) && (!a_wf || !b_wf)) {
        size_t na = a_wf ? 0 : (size_t)ar * ac, nb = b_wf ? 0 : (size_t)br * bc;
        float *s = cpu_scratch(be, na + nb, "gemm_wf bf16 operands");
        if (!a_wf) a = round_operand(a, ar, ac, lda, s), lda = ac;
        if (!b_wf) b = round_operand(b, br, bc, ldb, s + na), ldb = bc;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, a, lda, b, ldb, beta, C, N);
}

// ---------------------------------------------------------------------------- elementwise

// h = silu(gate) * up (swiglu_fwd's formula, cpu_swiglu), into rows of stride ldh
static void cpu_swiglu_fwd_wf(Backend *be, void *h, int ldh, const void *gate, const void *up, int M, int C) {
    check(M >= 0 && C >= 0 && ldh >= C, "swiglu_fwd_wf: bad shape M=%d C=%d ldh=%d", M, C, ldh);
    float *ho = (float *)h;
    const float *gt = (const float *)gate, *u = (const float *)up;
    int bf = is_bf16(be);
    #pragma omp parallel for num_threads(be->threads) if ((size_t)M * C >= WF_PAR_MIN) schedule(static)
    for (int m = 0; m < M; m++)
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)m * C + c;
            float v = cpu_swiglu(gt[i], u[i]);
            ho[(size_t)m * ldh + c] = bf ? round_bf16(v) : v;
        }
}

// swiglu_bwd's formulas, dgate and dup into rows of stride ld
static void cpu_swiglu_bwd_wf(Backend *be, void *dgate, void *dup, int ld, const float *dh, const void *gate,
                              const void *up, int M, int C) {
    check(M >= 0 && C >= 0 && ld >= C, "swiglu_bwd_wf: bad shape M=%d C=%d ld=%d", M, C, ld);
    float *dg = (float *)dgate, *du = (float *)dup;
    const float *gt = (const float *)gate, *u = (const float *)up;
    int bf = is_bf16(be);
    #pragma omp parallel for num_threads(be->threads) if ((size_t)M * C >= WF_PAR_MIN) schedule(static)
    for (int m = 0; m < M; m++)
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)m * C + c, o = (size_t)m * ld + c;
            float vg, vu;
            cpu_swiglu_grads(dh[i], gt[i], u[i], &vg, &vu);
            dg[o] = bf ? round_bf16(vg) : vg;
            du[o] = bf ? round_bf16(vu) : vu;
        }
}

// row_norm_sum's per-row fp64 norms over strided rows, summed in row order
static double cpu_row_norm_sum_wf(Backend *be, const void *x, int ld, const int32_t *mask, int N, int C) {
    check(N >= 0 && C >= 0 && ld >= C, "row_norm_sum_wf: bad shape N=%d C=%d ld=%d", N, C, ld);
    return cpu_row_norm_sum_ld(be, (const float *)x, (size_t)ld, mask, N, C);
}

// ---------------------------------------------------------------------------- RoPE and attention

static void cpu_rope_fwd_wf(Backend *be, void *x, const float *cos, const float *sin, int B, int T, int nh, int D) {
    be->rope_fwd(be, (float *)x, cos, sin, B, T, nh, D);
    if (is_bf16(be)) round_bf16_inplace(be, (float *)x, (size_t)B * T * nh * D);
}

static void cpu_attention_fwd_wf(Backend *be, float *out, void *probs, const void *q, const void *k, const void *v,
                                 const int32_t *mask, int B, int T, int H, int KVH, int D) {
    cpu_attention_fwd_fmt(be, out, (float *)probs, (const float *)q, (const float *)k, (const float *)v, mask, B, T,
                          H, KVH, D, is_bf16(be));
}

static void cpu_attention_bwd_wf(Backend *be, float *dq, float *dk, float *dv, const float *dout, const void *probs,
                                 const void *q, const void *k, const void *v, int B, int T, int H, int KVH, int D) {
    cpu_attention_bwd_fmt(be, dq, dk, dv, dout, (const float *)probs, (const float *)q, (const float *)k,
                          (const float *)v, B, T, H, KVH, D, is_bf16(be));
}

void backend_cpu_act_wf_init(Backend *be) {
    be->wgemm_lora_multi_wf = cpu_wgemm_lora_multi_wf;
    be->wgemm_lora_wf = cpu_wgemm_lora_wf;
    be->gemm_wf = cpu_gemm_wf;
    be->swiglu_fwd_wf = cpu_swiglu_fwd_wf;
    be->swiglu_bwd_wf = cpu_swiglu_bwd_wf;
    be->row_norm_sum_wf = cpu_row_norm_sum_wf;
    be->rmsnorm_fwd_wf = cpu_rmsnorm_fwd_wf;
    be->rope_fwd_wf = cpu_rope_fwd_wf;
    be->attention_fwd_wf = cpu_attention_fwd_wf;
    be->attention_bwd_wf = cpu_attention_bwd_wf;
}
