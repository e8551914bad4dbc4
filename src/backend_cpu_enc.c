// backend_cpu_enc.c: the encoder ops of the CPU reference backend (BERT / DeBERTa-v2).
// Semantics of every op: backend.h ("encoder ops").
//
// Threading follows backend_cpu.c: every parallel region names num_threads(be->threads) and
// small ops run on one thread (PAR_MIN). Every output element is written by one thread and
// every sum runs in a fixed order (row statistics and softmax sums in fp64), so nothing
// depends on the thread count.
//
// Attention (attention_enc_fwd / _bwd): the forward is one task per (b, h), run by an OpenMP loop;
// each task does its products with single-threaded cblas_sgemm on strided views of the [B,T,H,D]
// tensors (ld = H*D). The DeBERTa relative terms are computed as HF does: one gemm per (b, h)
// against all P positions ([T,D] x [D,P]) and a gather with idx; the backward scatters dS into a
// [T,P] buffer and multiplies. The position gradients dpq / dpk are sums over b: a backward task is
// one head h and a fixed chunk of ENC_BCHUNK batch rows, which its gemms sum in b order (beta = 1)
// into the task's own [P,D] slice; the slices are then summed over the chunks in index order. The
// chunking is a constant, so the sums do not depend on the thread count.
// Keys after the last visible key of a batch row (right padding) have probability exactly 0 and are
// left out of the products (their gradients are exactly 0).
#include "actlora/backend.h"
#include "actlora/common.h"
#include "backend_cpu_internal.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

void openblas_set_num_threads(int num_threads);

// below this many elements an op runs on one thread (fork/join costs more); as in backend_cpu.c
#define PAR_MIN 32768
// bias_grad / position-gradient reduction: columns per block (fp64 partial sums on the stack)
#define COL_BLOCK 64
// attention_enc_bwd: batch rows per task (they share one [P,D] slice of dpq / dpk per head)
#define ENC_BCHUNK 8

// ------------------------------------------------------------------------------ embedding, bias, mask

// out[n, :] += table[ids[n], :]; ids: [N], table: [V, C], out: [N, C]
static void cpu_embedding_add(Backend *be, float *out, const int32_t *ids, const float *table, int N, int C) {
    check(N >= 0 && C >= 0, "embedding_add: bad shape N=%d C=%d", N, C);
    for (int n = 0; n < N; n++) check(ids[n] >= 0, "embedding_add: token %d has negative id %d", n, (int)ids[n]);
    #pragma omp parallel for num_threads(be->threads) if ((size_t)N * C >= PAR_MIN) schedule(static)
    for (int n = 0; n < N; n++) {
        float *y = out + (size_t)n * C;
        const float *e = table + (size_t)ids[n] * C;
        #pragma omp simd
        for (int c = 0; c < C; c++) y[c] += e[c];
    }
}

// y[n, c] += b[c]; y: [N, C], b: [C]
static void cpu_bias_add(Backend *be, float *y, const float *b, int N, int C) {
    check(N >= 0 && C >= 0, "bias_add: bad shape N=%d C=%d", N, C);
    #pragma omp parallel for num_threads(be->threads) if ((size_t)N * C >= PAR_MIN) schedule(static)
    for (int n = 0; n < N; n++) {
        float *r = y + (size_t)n * C;
        #pragma omp simd
        for (int c = 0; c < C; c++) r[c] += b[c];
    }
}

// db[c] += sum_n dy[n, c]; dy: [N, C]. Column blocks in parallel, rows summed in order in fp64.
static void cpu_bias_grad(Backend *be, float *db, const float *dy, int N, int C) {
    check(N >= 0 && C >= 0, "bias_grad: bad shape N=%d C=%d", N, C);
    int nblk = (C + COL_BLOCK - 1) / COL_BLOCK;
    #pragma omp parallel for num_threads(be->threads) if ((size_t)N * C >= PAR_MIN && nblk > 1) schedule(static)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * COL_BLOCK, nc = C - c0 < COL_BLOCK ? C - c0 : COL_BLOCK;
        double acc[COL_BLOCK];
        for (int c = 0; c < nc; c++) acc[c] = 0.0;
        for (int n = 0; n < N; n++) {
            const float *r = dy + (size_t)n * C + c0;
            #pragma omp simd
            for (int c = 0; c < nc; c++) acc[c] += (double)r[c];
        }
        for (int c = 0; c < nc; c++) db[c0 + c] = (float)((double)db[c0 + c] + acc[c]);
    }
}

// x[n, :] = 0 where mask[n] == 0; x: [N, C], mask: [N]
static void cpu_mask_rows(Backend *be, float *x, const int32_t *mask, int N, int C) {
    check(N >= 0 && C >= 0, "mask_rows: bad shape N=%d C=%d", N, C);
    #pragma omp parallel for num_threads(be->threads) if ((size_t)N * C >= PAR_MIN) schedule(static)
    for (int n = 0; n < N; n++)
        if (mask[n] == 0) memset(x + (size_t)n * C, 0, (size_t)C * sizeof(float));
}

// ------------------------------------------------------------------------------ LayerNorm

// inp, out: [N, C] (may alias); w, b: [C]; mean, rstd: [N]. Statistics in fp64 (two passes).
static void cpu_layernorm_fwd(Backend *be, float *out, float *mean, float *rstd, const float *inp, const float *w,
                              const float *b, int N, int C, float eps) {
    check(N >= 0 && C > 0, "layernorm_fwd: bad shape N=%d C=%d", N, C);
    #pragma omp parallel for num_threads(be->threads) if ((size_t)N * C >= PAR_MIN) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        double s = 0.0;
        #pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; c++) s += (double)x[c];
        double m = s / C, ss = 0.0;
        #pragma omp simd reduction(+ : ss)
        for (int c = 0; c < C; c++) ss += ((double)x[c] - m) * ((double)x[c] - m);
        float mf = (float)m, r = (float)(1.0 / sqrt(ss / C + (double)eps));
        mean[n] = mf;
        rstd[n] = r;
        #pragma omp simd
        for (int c = 0; c < C; c++) y[c] = (x[c] - mf) * r * w[c] + b[c];
    }
}

// xh = (x - mean) rstd, g = dy w  =>  dx += rstd (g - mean(g) - xh mean(g xh))
static void cpu_layernorm_bwd(Backend *be, float *dinp, const float *dout, const float *inp, const float *w,
                              const float *mean, const float *rstd, int N, int C) {
    check(N >= 0 && C > 0, "layernorm_bwd: bad shape N=%d C=%d", N, C);
    #pragma omp parallel for num_threads(be->threads) if ((size_t)N * C >= PAR_MIN) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float m = mean[n], r = rstd[n];
        double sg = 0.0, sgx = 0.0;
        #pragma omp simd reduction(+ : sg, sgx)
        for (int c = 0; c < C; c++) {
            double g = (double)dy[c] * (double)w[c];
            sg += g;
            sgx += g * ((double)x[c] - (double)m) * (double)r;
        }
        float mg = (float)(sg / C), mgx = (float)(sgx / C);
        #pragma omp simd
        for (int c = 0; c < C; c++) dx[c] += r * (dy[c] * w[c] - mg - (x[c] - m) * r * mgx);
    }
}

// ------------------------------------------------------------------------------ GELU, tanh

// exact GELU, 0.5 x (1 + erf(x/sqrt 2)) written with erfc so that the negative tail keeps its
// relative accuracy (1 + erf cancels there)
static void cpu_gelu_fwd(Backend *be, float *h, const float *x, size_t n) {
    #pragma omp parallel for num_threads(be->threads) if (n >= PAR_MIN / 4) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        h[i] = 0.5f * v * erfcf(-v * (float)M_SQRT1_2);
    }
}

// gelu'(x) = Phi(x) + x phi(x), Phi(x) = erfc(-x/sqrt 2)/2, phi(x) = exp(-x^2/2)/sqrt(2 pi)
static void cpu_gelu_bwd(Backend *be, float *dx, const float *dh, const float *x, size_t n) {
    const float inv_sqrt_2pi = 0.3989422804014327f;
    #pragma omp parallel for num_threads(be->threads) if (n >= PAR_MIN / 4) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float cdf = 0.5f * erfcf(-v * (float)M_SQRT1_2), pdf = inv_sqrt_2pi * expf(-0.5f * v * v);
        dx[i] = dh[i] * (cdf + v * pdf);
    }
}

// y = tanh(x); y may alias x
static void cpu_tanh_fwd(Backend *be, float *y, const float *x, size_t n) {
    #pragma omp parallel for num_threads(be->threads) if (n >= PAR_MIN / 4) schedule(static)
    for (size_t i = 0; i < n; i++) y[i] = tanhf(x[i]);
}

// dx = dy (1 - y^2)
static void cpu_tanh_bwd(Backend *be, float *dx, const float *dy, const float *y, size_t n) {
    #pragma omp parallel for simd num_threads(be->threads) if (parallel : n >= PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
}

// ------------------------------------------------------------------------------ attention

static void enc_check(const char *op, const float *pq, const float *pk, const int32_t *idx, int B, int T, int H,
                      int D, int P) {
    check(B >= 0 && T >= 0 && H > 0 && D > 0, "%s: bad shape B=%d T=%d H=%d D=%d", op, B, T, H, D);
    if (!pq && !pk) return;
    check(P > 0, "%s: relative terms (pq/pk) given with P=%d positions", op, P);
    check(idx != NULL, "%s: relative terms (pq/pk) given without the [T,T] position index idx", op);
    for (int i = 0; i < T; i++)
        for (int j = 0; j < T; j++) {
            int p = idx[(size_t)i * T + j];
            check(p >= 0 && p < P, "%s: idx[%d, %d] = %d is outside [0, %d): clamp the relative positions to the table",
                  op, i, j, p, P);
        }
}

// Forward of head h in batch b, keys [0, n) (n = 1 + last visible key; n == 0: no visible key).
//   S = scale (Q K^T + C2P gathered + P2C gathered), softmax over visible keys, O = P V.
// W: [2T, P] scratch for the relative terms (c2p in rows [0, T), p2c in rows [T, T + n)).
static void enc_fwd_head(float *out, float *probs, const float *q, const float *k, const float *v, const float *pq,
                         const float *pk, const int32_t *idx, const int32_t *mb, int b, int h, int n, int T, int H,
                         int D, int P, float scale, float *W) {
    int ld = H * D;
    size_t off = (size_t)b * T * ld + (size_t)h * D;
    const float *Q = q + off, *K = k + off, *V = v + off;  // [T, D], ld H*D
    float *O = out + off;                                   // [T, D], ld H*D
    float *S = probs + ((size_t)b * H + h) * T * T;         // [T, T], ld T
    if (n == 0) {  // no visible key: probs 0, output 0
        memset(S, 0, (size_t)T * T * sizeof(float));
        for (int i = 0; i < T; i++) memset(O + (size_t)i * ld, 0, (size_t)D * sizeof(float));
        return;
    }
    // S[:, 0:n) = scale Q K[0:n)^T
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n, D, scale, Q, ld, K, ld, 0.0f, S, T);
    float *Wc = NULL, *Wp = NULL;
    if (pk) {  // c2p: Wc[T, P] = scale Q pk_h^T, gathered as Wc[i, idx[i,j]]
        Wc = W;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, P, D, scale, Q, ld, pk + (size_t)h * D, ld, 0.0f, Wc, P);
    }
    if (pq) {  // p2c: Wp[n, P] = scale K[0:n) pq_h^T, gathered as Wp[j, idx[i,j]]
        Wp = W + (size_t)T * P;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, P, D, scale, K, ld, pq + (size_t)h * D, ld, 0.0f, Wp, P);
    }
    for (int i = 0; i < T; i++) {
        float *si = S + (size_t)i * T;
        const float *wc = Wc ? Wc + (size_t)i * P : NULL;
        const int32_t *ii = idx ? idx + (size_t)i * T : NULL;
        float mx = -INFINITY;
        for (int j = 0; j < n; j++) {
            if (mb[j] == 0) {
                si[j] = -INFINITY;  // exp gives exactly 0
                continue;
            }
            float x = si[j];
            if (wc) x += wc[ii[j]];
            if (Wp) x += Wp[(size_t)j * P + ii[j]];
            si[j] = x;
            mx = x > mx ? x : mx;
        }
        if (n < T) memset(si + n, 0, (size_t)(T - n) * sizeof(float));
        if (mx == -INFINITY) {  // cannot happen for n > 0 (key n-1 is visible); kept for safety
            memset(si, 0, (size_t)n * sizeof(float));
            continue;
        }
        double sum = 0.0;
        for (int j = 0; j < n; j++) {
            float e = expf(si[j] - mx);
            si[j] = e;
            sum += e;
        }
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < n; j++) si[j] *= inv;
    }
    // O = P[:, 0:n) V[0:n)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, n, 1.0f, S, T, V, ld, 0.0f, O, ld);
}

// q, k, v, out: [B,T,H,D]; probs: [B,H,T,T]; pq, pk: [P, H*D] or NULL; idx: [T,T]; mask: [B,T]
static void cpu_attention_enc_fwd(Backend *be, float *out, float *probs, const float *q, const float *k,
                                  const float *v, const float *pq, const float *pk, const int32_t *idx,
                                  const int32_t *mask, int B, int T, int H, int D, int P, float scale) {
    enc_check("attention_enc_fwd", pq, pk, idx, B, T, H, D, P);
    if (B == 0 || T == 0) return;
    int nt = be->threads, rel = pq || pk;
    size_t wsz = rel ? (size_t)2 * T * P : 0;
    float *work = rel ? cpu_scratch(be, wsz * nt, "encoder attention forward [2T,P] per thread") : NULL;
    int *nvis = xmalloc((size_t)B * sizeof(int), "encoder attention visible-key counts");
    for (int b = 0; b < B; b++) {  // keys [0, nvis[b]) hold every visible key of row b
        int n = T;
        while (n > 0 && mask[(size_t)b * T + n - 1] == 0) n--;
        nvis[b] = n;
    }
    openblas_set_num_threads(1);
    #pragma omp parallel for collapse(2) schedule(dynamic) num_threads(nt)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            float *W = rel ? work + wsz * (size_t)omp_get_thread_num() : NULL;
            enc_fwd_head(out, probs, q, k, v, pq, pk, idx, mask + (size_t)b * T, b, h, nvis[b], T, H, D, P, scale, W);
        }
    openblas_set_num_threads(nt);
    free(nvis);
}

// Backward of head h in batch b. dS: [T, T] and W: [T, P] scratch; sk, sq: [P, D] slices of
// dpk / dpq that this head's contribution is added to (acc = 1) or written to (acc = 0).
//   dP = dO V^T ; dS = scale P (dP - rowsum(dP P)) ; dV = P^T dO ; dK = dS^T Q ; dQ = dS K
//   c2p: Wc[i, idx[i,j]] += dS[i,j] ; dQ += Wc pk_h ; dpk_h += Wc^T Q
//   p2c: Wp[j, idx[i,j]] += dS[i,j] ; dK += Wp pq_h ; dpq_h += Wp^T K
static void enc_bwd_head(float *dq, float *dk, float *dv, float *sq, float *sk, const float *dout,
                         const float *probs, const float *q, const float *k, const float *v, const float *pq,
                         const float *pk, const int32_t *idx, int b, int h, int T, int H, int D, int P, float scale,
                         int acc, float *dS, float *W) {
    int ld = H * D;
    size_t off = (size_t)b * T * ld + (size_t)h * D;
    const float *Q = q + off, *K = k + off, *V = v + off, *dO = dout + off;  // [T, D], ld H*D
    float *dQ = dq + off, *dK = dk + off, *dV = dv + off;
    const float *Pb = probs + ((size_t)b * H + h) * T * T;                    // [T, T], ld T
    // n = 1 + the last key with a nonzero probability in any row: keys after it get zero gradients
    // (a branch-free pass over each row's tail [n, T), then a backward search only when it is not all 0)
    int n = 0;
    for (int i = 0; i < T; i++) {
        const float *pi = Pb + (size_t)i * T;
        uint32_t any = 0;
        #pragma omp simd reduction(| : any)
        for (int j = n; j < T; j++) {
            uint32_t u;
            memcpy(&u, pi + j, sizeof u);
            any |= u << 1;  // ignores the sign bit: -0 counts as 0
        }
        if (!any) continue;
        int j = T;
        while (j > n && pi[j - 1] == 0.0f) j--;
        n = j;
    }
    for (int j = n; j < T; j++) {
        memset(dK + (size_t)j * ld, 0, (size_t)D * sizeof(float));
        memset(dV + (size_t)j * ld, 0, (size_t)D * sizeof(float));
    }
    if (n == 0) {  // no visible key at all: every gradient of this head is 0
        for (int i = 0; i < T; i++) memset(dQ + (size_t)i * ld, 0, (size_t)D * sizeof(float));
        if (sk && !acc) memset(sk, 0, (size_t)P * D * sizeof(float));
        if (sq && !acc) memset(sq, 0, (size_t)P * D * sizeof(float));
        return;
    }
    // dS[:, 0:n) = dO V[0:n)^T, then the softmax backward in place
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n, D, 1.0f, dO, ld, V, ld, 0.0f, dS, T);
    for (int i = 0; i < T; i++) {
        const float *pi = Pb + (size_t)i * T;
        float *di = dS + (size_t)i * T;
        double r = 0.0;
        for (int j = 0; j < n; j++) r += (double)di[j] * (double)pi[j];
        float rf = (float)r;
        for (int j = 0; j < n; j++) di[j] = scale * (pi[j] * (di[j] - rf));  // P == 0 gives exactly 0
    }
    // dV[0:n) = P[:, 0:n)^T dO ; dK[0:n) = dS^T Q ; dQ = dS K[0:n)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, D, T, 1.0f, Pb, T, dO, ld, 0.0f, dV, ld);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, D, T, 1.0f, dS, T, Q, ld, 0.0f, dK, ld);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, n, 1.0f, dS, T, K, ld, 0.0f, dQ, ld);
    if (pk) {  // c2p: W[T, P]
        memset(W, 0, (size_t)T * P * sizeof(float));
        for (int i = 0; i < T; i++) {
            float *wi = W + (size_t)i * P;
            const float *di = dS + (size_t)i * T;
            const int32_t *ii = idx + (size_t)i * T;
            for (int j = 0; j < n; j++) wi[ii[j]] += di[j];
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, P, 1.0f, W, P, pk + (size_t)h * D, ld, 1.0f, dQ, ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, P, D, T, 1.0f, W, P, Q, ld, acc ? 1.0f : 0.0f, sk, D);
    }
    if (pq) {  // p2c: W[n, P]
        memset(W, 0, (size_t)n * P * sizeof(float));
        for (int i = 0; i < T; i++) {
            const float *di = dS + (size_t)i * T;
            const int32_t *ii = idx + (size_t)i * T;
            for (int j = 0; j < n; j++) W[(size_t)j * P + ii[j]] += di[j];
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, D, P, 1.0f, W, P, pq + (size_t)h * D, ld, 1.0f, dK, ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, P, D, n, 1.0f, W, P, K, ld, acc ? 1.0f : 0.0f, sq, D);
    }
}

// dpos[p, h*D + d] = sum over chunks c (in order, fp64) of slices[c, h, p, d]; slices: [NC, H, P, D]
static void enc_reduce_slices(Backend *be, float *dpos, const float *slices, int NC, int H, int D, int P) {
    size_t hs = (size_t)P * D, cs = (size_t)H * hs;
    #pragma omp parallel for collapse(2) num_threads(be->threads) if ((size_t)NC * P * H * D >= PAR_MIN) schedule(static)
    for (int h = 0; h < H; h++)
        for (int p = 0; p < P; p++) {
            float *o = dpos + (size_t)p * H * D + (size_t)h * D;
            const float *s0 = slices + (size_t)h * hs + (size_t)p * D;
            for (int d0 = 0; d0 < D; d0 += COL_BLOCK) {
                int nd = D - d0 < COL_BLOCK ? D - d0 : COL_BLOCK;
                double acc[COL_BLOCK] = {0};
                for (int c = 0; c < NC; c++) {
                    const float *s = s0 + (size_t)c * cs + d0;
                    for (int d = 0; d < nd; d++) acc[d] += (double)s[d];
                }
                for (int d = 0; d < nd; d++) o[d0 + d] = (float)acc[d];
            }
        }
}

// dq, dk, dv: [B,T,H,D]; dpq, dpk: [P, H*D] (iff pq / pk); scratch: slices + per-thread dS, W
static void cpu_attention_enc_bwd(Backend *be, float *dq, float *dk, float *dv, float *dpq, float *dpk,
                                  const float *dout, const float *probs, const float *q, const float *k,
                                  const float *v, const float *pq, const float *pk, const int32_t *idx, int B, int T,
                                  int H, int D, int P, float scale) {
    enc_check("attention_enc_bwd", pq, pk, idx, B, T, H, D, P);
    check(!pq == !dpq, "attention_enc_bwd: dpq must be given exactly when pq is (pq %s, dpq %s)",
          pq ? "given" : "NULL", dpq ? "given" : "NULL");
    check(!pk == !dpk, "attention_enc_bwd: dpk must be given exactly when pk is (pk %s, dpk %s)",
          pk ? "given" : "NULL", dpk ? "given" : "NULL");
    size_t npd = (size_t)P * H * D;
    if (B == 0 || T == 0) {  // empty sums
        if (dpq) memset(dpq, 0, npd * sizeof(float));
        if (dpk) memset(dpk, 0, npd * sizeof(float));
        return;
    }
    int nt = be->threads, rel = pq || pk, nc = (B + ENC_BCHUNK - 1) / ENC_BCHUNK;
    size_t slice = (size_t)P * D, nsl = (size_t)nc * H * slice;  // [nc, H, P, D] per term
    size_t per_thread = (size_t)T * T + (rel ? (size_t)T * P : 0);
    size_t total = (pk ? nsl : 0) + (pq ? nsl : 0) + per_thread * nt;
    float *scr = cpu_scratch(be, total, "encoder attention backward (dS, [T,P] buffers, position-gradient slices)");
    float *slk = pk ? scr : NULL, *slq = pq ? scr + (pk ? nsl : 0) : NULL;
    float *work = scr + (pk ? nsl : 0) + (pq ? nsl : 0);
    openblas_set_num_threads(1);
    #pragma omp parallel for collapse(2) schedule(dynamic) num_threads(nt)
    for (int c = 0; c < nc; c++)
        for (int h = 0; h < H; h++) {
            float *mine = work + per_thread * (size_t)omp_get_thread_num();
            size_t so = ((size_t)c * H + h) * slice;
            int b0 = c * ENC_BCHUNK, b1 = b0 + ENC_BCHUNK < B ? b0 + ENC_BCHUNK : B;
            for (int b = b0; b < b1; b++)
                enc_bwd_head(dq, dk, dv, slq ? slq + so : NULL, slk ? slk + so : NULL, dout, probs, q, k, v, pq, pk,
                             idx, b, h, T, H, D, P, scale, b > b0, mine, mine + (size_t)T * T);
        }
    openblas_set_num_threads(nt);
    if (dpk) enc_reduce_slices(be, dpk, slk, nc, H, D, P);
    if (dpq) enc_reduce_slices(be, dpq, slq, nc, H, D, P);
}

// ------------------------------------------------------------------------------ init

void backend_cpu_enc_init(Backend *be) {
    be->embedding_add = cpu_embedding_add;
    be->layernorm_fwd = cpu_layernorm_fwd;
    be->layernorm_bwd = cpu_layernorm_bwd;
    be->bias_add = cpu_bias_add;
    be->bias_grad = cpu_bias_grad;
    be->gelu_fwd = cpu_gelu_fwd;
    be->gelu_bwd = cpu_gelu_bwd;
    be->tanh_fwd = cpu_tanh_fwd;
    be->tanh_bwd = cpu_tanh_bwd;
    be->mask_rows = cpu_mask_rows;
    be->attention_enc_fwd = cpu_attention_enc_fwd;
    be->attention_enc_bwd = cpu_attention_enc_bwd;
}
