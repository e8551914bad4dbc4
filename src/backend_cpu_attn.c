// backend_cpu_attn.c: causal + key-padding attention with GQA for the CPU backend.
//
// Layouts: q, dq, out, dout: [B,T,H,D]; k, v, dk, dv: [B,T,KVH,D]; probs: [B,H,T,T];
// mask: [B,T] (1 = real token). Query head h reads kv head h / (H/KVH).
// The _fmt forms with bf = 1 are the bf16 emulation of attention_fwd_wf / attention_bwd_wf (backend.h):
// P rounded to bf16 before it is saved and used, dout and dS rounded before their products.
// Key j is visible to query i iff j <= i and mask[b,j] == 1.
//
// Work is split into tasks of ATT_ROWS query (or key) rows of one head, run by an OpenMP
// loop; each task does its products with single-threaded cblas_sgemm on strided views of
// the [B,T,H,D] tensors (lda = H*D for q, KVH*D for k/v) and only over the causal prefix of
// keys, so the wasted work is the upper triangle of one ATT_ROWS x ATT_ROWS diagonal tile.
// OpenBLAS runs on one thread inside these loops (restored afterwards), so the OpenMP tasks
// do not oversubscribe the cores. Every output element is written by exactly one task and
// summed in a fixed order: the results do not depend on the thread count (no atomics).
#include "actlora/backend.h"
#include "actlora/common.h"
#include "backend_cpu_internal.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

void openblas_set_num_threads(int num_threads);

// Query / key rows per task. The dq pass writes dS[i, 0:i1) for the row block [i0, i1) of
// row i, and the dk/dv pass reads dS[i, j0:j1) for i >= j0 of the key block [j0, j1): the
// two passes must use the same block size so that j1 <= i1 (no uninitialized dS is read).
#define ATT_ROWS 32

static void attn_check(int B, int T, int H, int KVH, int D) {
    check(B >= 0 && T >= 0 && D > 0 && H > 0 && KVH > 0 && H % KVH == 0,
          "attention: bad shape B=%d T=%d H=%d KVH=%d D=%d (H must be a multiple of KVH)", B, T, H, KVH, D);
}

// Query rows [i0, i1) of head h in batch b: probs[b,h,i,:] and out[b,i,h,:].
static void attn_fwd_rows(float *out, float *probs, const float *q, const float *k, const float *v,
                          const int32_t *mask, int b, int h, int i0, int i1, int T, int H, int KVH, int D, int bf) {
    int g = h / (H / KVH), rows = i1 - i0;
    float scale = 1.0f / sqrtf((float)D);
    const int32_t *mb = mask + (size_t)b * T;
    float *P = probs + (((size_t)b * H + h) * T + i0) * T;       // [rows, T], ld T
    const float *Q = q + (((size_t)b * T + i0) * H + h) * D;     // [rows, D], ld H*D
    const float *Kb = k + ((size_t)b * T * KVH + g) * D;         // [T, D], ld KVH*D
    const float *Vb = v + ((size_t)b * T * KVH + g) * D;         // [T, D], ld KVH*D
    float *O = out + (((size_t)b * T + i0) * H + h) * D;         // [rows, D], ld H*D
    // S[:, 0:i1) = Q K[0:i1)^T / sqrt(D)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, i1, D, scale, Q, H * D, Kb, KVH * D,
                0.0f, P, T);
    for (int i = i0; i < i1; i++) {
        float *pi = P + (size_t)(i - i0) * T;
        float mx = -INFINITY;
        for (int j = 0; j <= i; j++) {
            if (mb[j] != 1) pi[j] = -INFINITY;  // exp gives exactly 0
            else mx = pi[j] > mx ? pi[j] : mx;
        }
        if (i + 1 < T) memset(pi + i + 1, 0, (size_t)(T - i - 1) * sizeof(float));  // causal
        if (mx == -INFINITY) {  // no visible key (left padding): probs 0, and so out 0
            memset(pi, 0, (size_t)(i + 1) * sizeof(float));
            continue;
        }
        float sum = 0.0f;
        for (int j = 0; j <= i; j++) {
            float e = expf(pi[j] - mx);
            pi[j] = e;
            sum += e;
        }
        for (int j = 0; j <= i; j++) pi[j] = bf ? round_bf16(pi[j] / sum) : pi[j] / sum;
    }
    // O = P[:, 0:i1) V[0:i1)   (P is exactly 0 right of the diagonal)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, D, i1, 1.0f, P, T, Vb, KVH * D, 0.0f, O, H * D);
}

void cpu_attention_fwd(Backend *be, float *out, float *probs, const float *q, const float *k,
                       const float *v, const int32_t *mask, int B, int T, int H, int KVH, int D) {
    cpu_attention_fwd_fmt(be, out, probs, q, k, v, mask, B, T, H, KVH, D, 0);
}

void cpu_attention_fwd_fmt(Backend *be, float *out, float *probs, const float *q, const float *k, const float *v,
                           const int32_t *mask, int B, int T, int H, int KVH, int D, int bf) {
    attn_check(B, T, H, KVH, D);
    int nblk = (T + ATT_ROWS - 1) / ATT_ROWS;
    openblas_set_num_threads(1);
    #pragma omp parallel for collapse(3) schedule(dynamic) num_threads(be->threads)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int ib = 0; ib < nblk; ib++) {
                int i0 = ib * ATT_ROWS, i1 = i0 + ATT_ROWS < T ? i0 + ATT_ROWS : T;
                attn_fwd_rows(out, probs, q, k, v, mask, b, h, i0, i1, T, H, KVH, D, bf);
            }
    openblas_set_num_threads(be->threads);
}

// Pass 1, query rows [i0, i1) of head h: dS (into ds, laid out like probs) and dq.
//   dP = dout V^T ; dS_ij = P_ij (dP_ij - sum_j' dP_ij' P_ij') / sqrt(D) ; dq = dS K
static void attn_bwd_dq_rows(float *dq, float *ds, const float *dout, const float *probs, const float *k,
                             const float *v, int b, int h, int i0, int i1, int T, int H, int KVH, int D, int bf) {
    int g = h / (H / KVH), rows = i1 - i0;
    float scale = 1.0f / sqrtf((float)D);
    size_t prow = (((size_t)b * H + h) * T + i0) * T;
    const float *P = probs + prow;                               // [rows, T], ld T
    float *dS = ds + prow;                                       // [rows, T], ld T; cols [0, i1) used
    const float *dO = dout + (((size_t)b * T + i0) * H + h) * D; // [rows, D], ld H*D
    const float *Kb = k + ((size_t)b * T * KVH + g) * D;         // [T, D], ld KVH*D
    const float *Vb = v + ((size_t)b * T * KVH + g) * D;
    float *dQ = dq + (((size_t)b * T + i0) * H + h) * D;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, i1, D, 1.0f, dO, H * D, Vb, KVH * D, 0.0f, dS, T);
    for (int i = i0; i < i1; i++) {
        const float *pi = P + (size_t)(i - i0) * T;
        float *dsi = dS + (size_t)(i - i0) * T;
        double r = 0.0;
        for (int j = 0; j <= i; j++) r += (double)dsi[j] * (double)pi[j];
        float rf = (float)r;
        // P is 0 for masked and future keys, so their dS is exactly 0
        for (int j = 0; j < i1; j++) dsi[j] = pi[j] * (dsi[j] - rf) * scale;
        if (bf)
            for (int j = 0; j < i1; j++) dsi[j] = round_bf16(dsi[j]);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, D, i1, 1.0f, dS, T, Kb, KVH * D, 0.0f, dQ, H * D);
}

// Pass 2, key rows [j0, j1) of kv head g, summed over the query heads h of its group:
//   dk[j0:j1) = sum_h dS_h[j0:T, j0:j1)^T q_h[j0:T) ; dv[j0:j1) = sum_h P_h[j0:T, j0:j1)^T dout_h[j0:T)
// (rows i < j0 have dS = P = 0 in these columns by causality)
static void attn_bwd_dkv_rows(float *dk, float *dv, const float *ds, const float *dout, const float *probs,
                              const float *q, int b, int g, int j0, int j1, int T, int H, int KVH, int D) {
    int rep = H / KVH, cols = j1 - j0, n = T - j0;
    float *dK = dk + (((size_t)b * T + j0) * KVH + g) * D;  // [cols, D], ld KVH*D
    float *dV = dv + (((size_t)b * T + j0) * KVH + g) * D;
    for (int hh = 0; hh < rep; hh++) {
        int h = g * rep + hh;
        float beta = hh == 0 ? 0.0f : 1.0f;
        size_t tile = (((size_t)b * H + h) * T + j0) * T + j0;   // [n, cols], ld T
        const float *Q = q + (((size_t)b * T + j0) * H + h) * D;  // [n, D], ld H*D
        const float *dO = dout + (((size_t)b * T + j0) * H + h) * D;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, D, n, 1.0f, ds + tile, T, Q, H * D, beta, dK, KVH * D);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, D, n, 1.0f, probs + tile, T, dO, H * D, beta, dV, KVH * D);
    }
}

void cpu_attention_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                       const float *probs, const float *q, const float *k, const float *v,
                       int B, int T, int H, int KVH, int D) {
    cpu_attention_bwd_fmt(be, dq, dk, dv, dout, probs, q, k, v, B, T, H, KVH, D, 0);
}

void cpu_attention_bwd_fmt(Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *probs,
                           const float *q, const float *k, const float *v, int B, int T, int H, int KVH, int D,
                           int bf) {
    attn_check(B, T, H, KVH, D);
    if (B == 0 || T == 0) return;
    size_t n_ds = (size_t)B * H * T * T, n_do = bf ? (size_t)B * T * H * D : 0;
    float *ds = cpu_scratch(be, n_ds + n_do, "attention backward dS [B,H,T,T] (and dout in bf16)");
    if (bf) {  // dout rounded to bf16 for dP = dout v^T and dv = P^T dout (as the CUDA backend's bf16 copy)
        float *dr = ds + n_ds;
        for (size_t i = 0; i < n_do; i++) dr[i] = round_bf16(dout[i]);
        dout = dr;
    }
    int nblk = (T + ATT_ROWS - 1) / ATT_ROWS;
    openblas_set_num_threads(1);
    #pragma omp parallel num_threads(be->threads)
    {
        #pragma omp for collapse(3) schedule(dynamic)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int ib = 0; ib < nblk; ib++) {
                    int i0 = ib * ATT_ROWS, i1 = i0 + ATT_ROWS < T ? i0 + ATT_ROWS : T;
                    attn_bwd_dq_rows(dq, ds, dout, probs, k, v, b, h, i0, i1, T, H, KVH, D, bf);
                }
        // implicit barrier: all of dS is written before pass 2 reads it
        #pragma omp for collapse(3) schedule(dynamic)
        for (int b = 0; b < B; b++)
            for (int g = 0; g < KVH; g++)
                for (int jb = 0; jb < nblk; jb++) {
                    int j0 = jb * ATT_ROWS, j1 = j0 + ATT_ROWS < T ? j0 + ATT_ROWS : T;
                    attn_bwd_dkv_rows(dk, dv, ds, dout, probs, q, b, g, j0, j1, T, H, KVH, D);
                }
    }
    openblas_set_num_threads(be->threads);
}
