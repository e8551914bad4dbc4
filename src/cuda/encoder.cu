// encoder.cu: the encoder ops of the CUDA backend (BERT / DeBERTa-v2) — embedding_add, LayerNorm,
// bias add / gradient, exact GELU, tanh, mask_rows, and bidirectional attention with key padding
// and DeBERTa's disentangled relative terms. Semantics: backend.h ("encoder ops"); the CPU
// reference is backend_cpu_enc.c.
//
// Conventions (as elementwise.cu / attention.cu): one stream, every output element written by
// exactly one thread, every sum in a fixed order (fixed block trees, index-ordered loops), no
// atomics on floating-point data, so results are bit-identical run to run. Float arithmetic that
// mirrors a CPU expression uses the _rn intrinsics (no FMA contraction, as the CPU build); row
// statistics (LayerNorm), softmax sums and column sums (bias_grad, position gradients over b) are
// fp64 as on the CPU. Indices the CPU checks on the host (a negative id, a relative-position index
// outside [0, P)) are recorded in the device error flag and never read.
//
// Attention (layouts: q, k, v, out, dq, dk, dv, dout [B,T,H,D]; probs [B,H,T,T]; pq, pk, dpq, dpk
// [P, H*D]; idx [T,T]; mask [B,T]):
//   forward, block (b,h,i):  s_ij = scale q_i.k_j (+ scale q_i.pk[idx_ij,h]) (+ scale k_j.pq[idx_ij,h]),
//                            one warp per key (lanes over D, fixed shuffle tree); masked keys -inf;
//                            max / fp64 sum (fixed block trees); P row into probs; out_i = sum_j P_ij v_j.
//   backward 1, block (b,h,i): dP_ij = dout_i.v_j; r = sum_j dP_ij P_ij (fp64); dS_ij = scale P_ij (dP_ij - r)
//                            into scratch [B,H,T,T]; dq_i = sum_j dS_ij k_j + sum_j dS_ij pk[idx_ij,h].
//   backward 2, block (b,h,j): dk_j = sum_i dS_ij q_i + sum_i dS_ij pq[idx_ij,h]; dv_j = sum_i P_ij dout_i
//                            (column chunks of dS, P, idx staged in shared memory).
//   position gradients (only with pq / pk): an inverse index of idx is built on the device without
//     atomics — per row i the count of each bucket p (one warp per row, __match_any_sync groups equal
//     buckets within 32 keys), an exclusive scan over (p, i), and a fill — giving for each bucket p
//     the list of pairs (i, j) with idx_ij == p, ordered by (i, j). Then one block per (p, h):
//     dpk[p,h] = sum_b sum_{(i,j) in list p} dS_bhij q_bi, dpq[p,h] = ... dS_bhij k_bj, with the pairs
//     split over a fixed number of thread groups and the groups' sums added in group order.
#include <math.h>

#include "cuda_internal.cuh"

#define ENC_THREADS 128      // attention blocks: 4 warps; a power of two (block_sum / block_max)
#define ENC_CHUNK 256        // rows of a dS / P / idx column staged at a time by backward 2
#define ENC_REL_THREADS 256  // position-gradient blocks
#define ENC_IDX_WARPS 4      // rows of idx per block in the inverse-index kernels (one warp each)
#define BG_COLS 32           // bias_grad: columns per block
#define BG_ROWS 8            //            row lanes per block
#define BG_CHUNK 256         //            rows per partial sum (grown for huge N)

// ---------------------------------------------------------------------------- embedding_add

static void cu_embedding_add(Backend *be, float *out, const int32_t *ids, const float *table, int N, int C) {
    check(N >= 0 && C >= 0, "embedding_add: bad shape N=%d C=%d", N, C);
    size_t total = (size_t)N * (size_t)C;
    if (!total) return;
    CudaCtx *cx = cuda_ctx(be);
    cx->err_op = "embedding_add";
    // out[n, :] += table[ids[n], :] (cuda_internal.cuh); a negative id sets the error flag and leaves the row
    k_embedding_rows<float, 1><<<cuda_blocks(total), CUDA_THREADS, 0, cx->stream>>>(out, ids, table, C, total,
                                                                                     cx->d_err);
    launch_check("embedding_add");
}

// ---------------------------------------------------------------------------- LayerNorm

// One block per row. mean and variance in fp64 (two passes, fixed block tree), then the CPU's fp32
// expression y = (x - mean) * rstd * w + b. out may alias inp: every thread reads its elements for
// the statistics before the last block_sum barrier and writes only the elements it reads after it.
static __global__ void k_layernorm_fwd(float *out, float *__restrict__ mean, float *__restrict__ rstd, const float *inp,
                                       const float *__restrict__ w, const float *__restrict__ b, int C, float eps) {
    __shared__ double sh[CUDA_THREADS];
    size_t n = blockIdx.x;
    const float *x = inp + n * (size_t)C;
    float *y = out + n * (size_t)C;
    double s = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) s += (double)x[c];
    double m = block_sum(s, sh) / C;
    double ss = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        double d = (double)x[c] - m;
        ss += d * d;
    }
    ss = block_sum(ss, sh);
    float mf = (float)m, r = (float)(1.0 / sqrt(ss / C + (double)eps));
    if (threadIdx.x == 0) {
        if (mean) mean[n] = mf;
        if (rstd) rstd[n] = r;
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        y[c] = __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(x[c], mf), r), w[c]), b[c]);
}

static void cu_layernorm_fwd(Backend *be, float *out, float *mean, float *rstd, const float *inp, const float *w,
                             const float *b, int N, int C, float eps) {
    check(N >= 0 && C > 0, "layernorm_fwd: bad shape N=%d C=%d", N, C);
    if (N == 0) return;
    k_layernorm_fwd<<<(unsigned)N, CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(out, mean, rstd, inp, w, b, C, eps);
    launch_check("layernorm_fwd");
}

// xh = (x - mean) rstd, g = dy w  =>  dx += rstd (g - mean(g) - xh mean(g xh)); the sums in fp64
static __global__ void k_layernorm_bwd(float *__restrict__ dinp, const float *__restrict__ dout,
                                       const float *__restrict__ inp, const float *__restrict__ w,
                                       const float *__restrict__ mean, const float *__restrict__ rstd, int C) {
    __shared__ double sh[CUDA_THREADS];
    size_t n = blockIdx.x;
    const float *x = inp + n * (size_t)C, *dy = dout + n * (size_t)C;
    float *dx = dinp + n * (size_t)C;
    float m = mean[n], r = rstd[n];
    double sg = 0.0, sgx = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        double g = (double)dy[c] * (double)w[c];
        sg += g;
        sgx += g * ((double)x[c] - (double)m) * (double)r;
    }
    sg = block_sum(sg, sh);
    sgx = block_sum(sgx, sh);
    float mg = (float)(sg / C), mgx = (float)(sgx / C);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float t = __fsub_rn(__fsub_rn(__fmul_rn(dy[c], w[c]), mg), __fmul_rn(__fmul_rn(__fsub_rn(x[c], m), r), mgx));
        dx[c] = __fadd_rn(dx[c], __fmul_rn(r, t));
    }
}

static void cu_layernorm_bwd(Backend *be, float *dinp, const float *dout, const float *inp, const float *w,
                             const float *mean, const float *rstd, int N, int C) {
    check(N >= 0 && C > 0, "layernorm_bwd: bad shape N=%d C=%d", N, C);
    if (N == 0) return;
    k_layernorm_bwd<<<(unsigned)N, CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(dinp, dout, inp, w, mean, rstd, C);
    launch_check("layernorm_bwd");
}

// ---------------------------------------------------------------------------- bias

static __global__ void k_bias_add(float *__restrict__ y, const float *__restrict__ b, int C, size_t total) {
    GRID_STRIDE(i, total) y[i] = __fadd_rn(y[i], b[i % (size_t)C]);
}

static void cu_bias_add(Backend *be, float *y, const float *b, int N, int C) {
    check(N >= 0 && C >= 0, "bias_add: bad shape N=%d C=%d", N, C);
    size_t total = (size_t)N * (size_t)C;
    if (!total) return;
    k_bias_add<<<cuda_blocks(total), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(y, b, C, total);
    launch_check("bias_add");
}

// Stage 1, block (column block, row chunk): part[chunk, c] = sum of dy[n, c] over the chunk's rows in
// fp64 — BG_ROWS row lanes (lane ty takes rows ty, ty + BG_ROWS, ... in order), then the lanes in order.
static __global__ void k_bias_grad_part(double *__restrict__ part, const float *__restrict__ dy, int N, int C,
                                        int chunk) {
    __shared__ double sh[BG_ROWS][BG_COLS];
    int tx = threadIdx.x, ty = threadIdx.y;
    int c = blockIdx.x * BG_COLS + tx;
    int n0 = blockIdx.y * chunk, n1 = N - n0 < chunk ? N : n0 + chunk;
    double s = 0.0;
    if (c < C)
        for (int n = n0 + ty; n < n1; n += BG_ROWS) s += (double)dy[(size_t)n * C + c];
    sh[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && c < C) {
        double t = 0.0;
        for (int r = 0; r < BG_ROWS; r++) t += sh[r][tx];
        part[(size_t)blockIdx.y * C + c] = t;
    }
}

// Stage 2, one thread per column: db[c] = db[c] + sum over the chunks in order (one rounding, as the CPU)
static __global__ void k_bias_grad_sum(float *__restrict__ db, const double *__restrict__ part, int nchunk, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double s = 0.0;
    for (int k = 0; k < nchunk; k++) s += part[(size_t)k * C + c];
    db[c] = (float)((double)db[c] + s);
}

static void cu_bias_grad(Backend *be, float *db, const float *dy, int N, int C) {
    check(N >= 0 && C >= 0, "bias_grad: bad shape N=%d C=%d", N, C);
    if (N == 0 || C == 0) return;
    CudaCtx *cx = cuda_ctx(be);
    int chunk = BG_CHUNK;
    while ((N + chunk - 1) / chunk > 65535) chunk *= 2;  // gridDim.y limit
    int nchunk = (N + chunk - 1) / chunk;
    double *part = cuda_partials(be, (size_t)nchunk * C);
    dim3 grid((unsigned)((C + BG_COLS - 1) / BG_COLS), (unsigned)nchunk), block(BG_COLS, BG_ROWS);
    k_bias_grad_part<<<grid, block, 0, cx->stream>>>(part, dy, N, C, chunk);
    launch_check("bias_grad (partials)");
    k_bias_grad_sum<<<(unsigned)((C + CUDA_THREADS - 1) / CUDA_THREADS), CUDA_THREADS, 0, cx->stream>>>(db, part,
                                                                                                      nchunk, C);
    launch_check("bias_grad (sum)");
}

// ---------------------------------------------------------------------------- GELU, tanh

// exact GELU in fp64, rounded once: 0.5 x erfc(-x / sqrt 2) (erfc keeps the negative tail accurate)
static __global__ void k_gelu_fwd(float *__restrict__ h, const float *__restrict__ x, size_t n) {
    GRID_STRIDE(i, n) {
        double v = (double)x[i];
        h[i] = (float)(0.5 * v * erfc(-v * 0.70710678118654752440));
    }
}

// gelu'(x) = Phi(x) + x phi(x), in fp64; dx = dh gelu'(x)
static __global__ void k_gelu_bwd(float *__restrict__ dx, const float *__restrict__ dh, const float *__restrict__ x,
                                  size_t n) {
    GRID_STRIDE(i, n) {
        double v = (double)x[i];
        double cdf = 0.5 * erfc(-v * 0.70710678118654752440), pdf = 0.39894228040143267794 * exp(-0.5 * v * v);
        dx[i] = (float)((double)dh[i] * (cdf + v * pdf));
    }
}

// y may alias x (each element read, then written, by one thread)
static __global__ void k_tanh_fwd(float *y, const float *x, size_t n) {
    GRID_STRIDE(i, n) y[i] = (float)tanh((double)x[i]);
}

// dx = dy (1 - y^2), the CPU's fp32 expression
static __global__ void k_tanh_bwd(float *dx, const float *dy, const float *y, size_t n) {
    GRID_STRIDE(i, n) {
        float yi = y[i];
        dx[i] = __fmul_rn(dy[i], __fsub_rn(1.0f, __fmul_rn(yi, yi)));
    }
}

static void cu_gelu_fwd(Backend *be, float *h, const float *x, size_t n) {
    if (!n) return;
    k_gelu_fwd<<<cuda_blocks(n), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(h, x, n);
    launch_check("gelu_fwd");
}

static void cu_gelu_bwd(Backend *be, float *dx, const float *dh, const float *x, size_t n) {
    if (!n) return;
    k_gelu_bwd<<<cuda_blocks(n), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(dx, dh, x, n);
    launch_check("gelu_bwd");
}

static void cu_tanh_fwd(Backend *be, float *y, const float *x, size_t n) {
    if (!n) return;
    k_tanh_fwd<<<cuda_blocks(n), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(y, x, n);
    launch_check("tanh_fwd");
}

static void cu_tanh_bwd(Backend *be, float *dx, const float *dy, const float *y, size_t n) {
    if (!n) return;
    k_tanh_bwd<<<cuda_blocks(n), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(dx, dy, y, n);
    launch_check("tanh_bwd");
}

// ---------------------------------------------------------------------------- mask_rows

static __global__ void k_mask_rows(float *__restrict__ x, const int32_t *__restrict__ mask, int C, size_t total) {
    GRID_STRIDE(i, total) {
        if (mask[i / (size_t)C] == 0) x[i] = 0.0f;
    }
}

static void cu_mask_rows(Backend *be, float *x, const int32_t *mask, int N, int C) {
    check(N >= 0 && C >= 0, "mask_rows: bad shape N=%d C=%d", N, C);
    size_t total = (size_t)N * (size_t)C;
    if (!total) return;
    k_mask_rows<<<cuda_blocks(total), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(x, mask, C, total);
    launch_check("mask_rows");
}

// ---------------------------------------------------------------------------- attention: checks

static void enc_check(const char *op, const float *pq, const float *pk, const int32_t *idx, int B, int T, int H, int D,
                      int P) {
    check(B >= 0 && T >= 0 && H > 0 && D > 0, "%s: bad shape B=%d T=%d H=%d D=%d", op, B, T, H, D);
    if (!pq && !pk) return;
    check(P > 0, "%s: relative terms (pq/pk) given with P=%d positions", op, P);
    check(idx != NULL, "%s: relative terms (pq/pk) given without the [T,T] position index idx", op);
    // idx values are device memory: checked by the kernels (device error flag, CUDA_ERR_REL_IDX)
    check((size_t)T * T <= 0x7fffffffu && (size_t)T * P <= 0x7fffffffu,
          "%s: T=%d, P=%d are too large for the relative-position index", op, T, P);
}

// ---------------------------------------------------------------------------- attention: forward

static __global__ void __launch_bounds__(ENC_THREADS)
k_enc_fwd(float *__restrict__ out, float *probs, const float *__restrict__ q, const float *__restrict__ k,
          const float *__restrict__ v, const float *__restrict__ pq, const float *__restrict__ pk,
          const int32_t *__restrict__ idx, const int32_t *__restrict__ mask, int T, int H, int D, int P, float scale,
          int *err) {
    extern __shared__ float qs[];  // [D] this query row
    __shared__ float redf[ENC_THREADS];
    __shared__ double redd[ENC_THREADS];
    size_t blk = blockIdx.x, bh = blk / (size_t)T;  // bh = b * H + h
    int i = (int)(blk % (size_t)T), h = (int)(bh % (size_t)H), b = (int)(bh / (size_t)H);
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarp = blockDim.x >> 5;
    size_t ld = (size_t)H * D;
    const float *qi = q + ((size_t)b * T + i) * ld + (size_t)h * D;
    for (int d = tid; d < D; d += blockDim.x) qs[d] = qi[d];
    __syncthreads();
    float *Pr = probs + (bh * T + (size_t)i) * T;              // row i of [T, T]
    const int32_t *mb = mask + (size_t)b * T;
    const float *Kb = k + (size_t)b * T * ld + (size_t)h * D;  // key j at Kb + j * ld
    const float *Vb = v + (size_t)b * T * ld + (size_t)h * D;
    const float *pkh = pk ? pk + (size_t)h * D : NULL;         // bucket p at pkh + p * ld
    const float *pqh = pq ? pq + (size_t)h * D : NULL;
    const int32_t *ir = (pk || pq) ? idx + (size_t)i * T : NULL;
    // scores: scale q.k (+ scale c2p) (+ scale p2c), added in the CPU's order
    for (int j = warp; j < T; j += nwarp) {
        float s = -INFINITY;  // masked key: exp gives exactly 0
        if (mb[j] != 0) {
            const float *kj = Kb + (size_t)j * ld, *pkr = NULL, *pqr = NULL;
            if (ir) {
                int p = ir[j];
                if (p >= 0 && p < P) {
                    if (pkh) pkr = pkh + (size_t)p * ld;
                    if (pqh) pqr = pqh + (size_t)p * ld;
                } else if (lane == 0) {
                    cuda_set_error(err, CUDA_ERR_REL_IDX, i, j, p);
                }
            }
            float a = 0.0f, c = 0.0f, e = 0.0f;
            for (int d = lane; d < D; d += 32) {
                float kd = kj[d], qd = qs[d];
                a += qd * kd;
                if (pkr) c += qd * pkr[d];
                if (pqr) e += kd * pqr[d];
            }
            s = __fmul_rn(scale, warp_sum(a));
            if (pkh) s = __fadd_rn(s, __fmul_rn(scale, warp_sum(c)));  // warp-uniform conditions
            if (pqh) s = __fadd_rn(s, __fmul_rn(scale, warp_sum(e)));
        }
        if (lane == 0) Pr[j] = s;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int j = tid; j < T; j += blockDim.x) mx = fmaxf(mx, Pr[j]);
    mx = block_max(mx, redf);
    float *o = out + ((size_t)b * T + i) * ld + (size_t)h * D;
    if (mx == -INFINITY) {  // no visible key: probabilities 0, output 0
        for (int j = tid; j < T; j += blockDim.x) Pr[j] = 0.0f;
        for (int d = tid; d < D; d += blockDim.x) o[d] = 0.0f;
        return;
    }
    double part = 0.0;
    for (int j = tid; j < T; j += blockDim.x) {
        float e = expf(__fsub_rn(Pr[j], mx));
        Pr[j] = e;
        part += (double)e;
    }
    float inv = (float)(1.0 / block_sum(part, redd));
    for (int j = tid; j < T; j += blockDim.x) Pr[j] = __fmul_rn(Pr[j], inv);
    __syncthreads();
    for (int d = tid; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < T; j++) {
            float pj = Pr[j];
            if (pj != 0.0f) acc += pj * Vb[(size_t)j * ld + d];  // block-uniform branch; skips padding
        }
        o[d] = acc;
    }
}

static void cu_attention_enc_fwd(Backend *be, float *out, float *probs, const float *q, const float *k, const float *v,
                                 const float *pq, const float *pk, const int32_t *idx, const int32_t *mask, int B,
                                 int T, int H, int D, int P, float scale) {
    enc_check("attention_enc_fwd", pq, pk, idx, B, T, H, D, P);
    size_t blocks = (size_t)B * H * T;
    if (!blocks) return;
    check(blocks <= 0x7fffffffu, "attention_enc_fwd: %zu query rows are too many for one launch", blocks);
    CudaCtx *cx = cuda_ctx(be);
    cx->err_op = "attention_enc_fwd";
    k_enc_fwd<<<(unsigned)blocks, ENC_THREADS, (size_t)D * sizeof(float), cx->stream>>>(
        out, probs, q, k, v, pq, pk, (pq || pk) ? idx : NULL, mask, T, H, D, P, scale, cx->d_err);
    launch_check("attention_enc_fwd");
}

// ---------------------------------------------------------------------------- attention: backward

// Pass 1, block (b, h, i): dS row i (into ds, laid out like probs; every element written) and dq_i.
static __global__ void __launch_bounds__(ENC_THREADS)
k_enc_bwd_rows(float *__restrict__ dq, float *ds, const float *__restrict__ dout, const float *__restrict__ probs,
               const float *__restrict__ k, const float *__restrict__ v, const float *__restrict__ pk,
               const int32_t *__restrict__ idx, int T, int H, int D, int P, float scale, int *err) {
    extern __shared__ float dos[];  // [D] dout row i
    __shared__ double redd[ENC_THREADS];
    size_t blk = blockIdx.x, bh = blk / (size_t)T;
    int i = (int)(blk % (size_t)T), h = (int)(bh % (size_t)H), b = (int)(bh / (size_t)H);
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarp = blockDim.x >> 5;
    size_t ld = (size_t)H * D;
    const float *doi = dout + ((size_t)b * T + i) * ld + (size_t)h * D;
    for (int d = tid; d < D; d += blockDim.x) dos[d] = doi[d];
    __syncthreads();
    size_t row = (bh * T + (size_t)i) * T;
    const float *Pr = probs + row;
    float *dS = ds + row;
    const float *Kb = k + (size_t)b * T * ld + (size_t)h * D;
    const float *Vb = v + (size_t)b * T * ld + (size_t)h * D;
    // dP_ij = dout_i . v_j where P_ij != 0 (elsewhere dS is exactly 0 and dP is not needed)
    for (int j = warp; j < T; j += nwarp) {
        float dp = 0.0f;
        if (Pr[j] != 0.0f) {  // warp-uniform
            const float *vj = Vb + (size_t)j * ld;
            float acc = 0.0f;
            for (int d = lane; d < D; d += 32) acc += dos[d] * vj[d];
            dp = warp_sum(acc);
        }
        if (lane == 0) dS[j] = dp;
    }
    __syncthreads();
    double part = 0.0;
    for (int j = tid; j < T; j += blockDim.x) part += (double)dS[j] * (double)Pr[j];
    float rf = (float)block_sum(part, redd);
    for (int j = tid; j < T; j += blockDim.x) dS[j] = __fmul_rn(scale, __fmul_rn(Pr[j], __fsub_rn(dS[j], rf)));
    __syncthreads();
    const float *pkh = pk ? pk + (size_t)h * D : NULL;
    const int32_t *ir = pk ? idx + (size_t)i * T : NULL;
    float *dqi = dq + ((size_t)b * T + i) * ld + (size_t)h * D;
    for (int d = tid; d < D; d += blockDim.x) {
        float a = 0.0f, c = 0.0f;
        for (int j = 0; j < T; j++) {
            float g = dS[j];
            if (g == 0.0f) continue;  // block-uniform
            a += g * Kb[(size_t)j * ld + d];
            if (pkh) {
                int p = ir[j];
                if (p >= 0 && p < P) c += g * pkh[(size_t)p * ld + d];
                else if (d == 0) cuda_set_error(err, CUDA_ERR_REL_IDX, i, j, p);
            }
        }
        dqi[d] = __fadd_rn(a, c);
    }
}

// Pass 2, block (b, h, j): dk_j = sum_i dS_ij (q_i + pq[idx_ij, h]) and dv_j = sum_i P_ij dout_i, i in order.
static __global__ void __launch_bounds__(ENC_THREADS)
k_enc_bwd_cols(float *__restrict__ dk, float *__restrict__ dv, const float *__restrict__ ds,
               const float *__restrict__ probs, const float *__restrict__ q, const float *__restrict__ dout,
               const float *__restrict__ pq, const int32_t *__restrict__ idx, int T, int H, int D, int P, int *err) {
    __shared__ float cs[ENC_CHUNK], cp[ENC_CHUNK];  // a chunk of column j of dS and P
    __shared__ int ci[ENC_CHUNK];                   // and of idx (-1: invalid)
    extern __shared__ float acc[];                  // [3 * D]: dk (content), dk (p2c), dv
    size_t blk = blockIdx.x, bh = blk / (size_t)T;
    int j = (int)(blk % (size_t)T), h = (int)(bh % (size_t)H), b = (int)(bh / (size_t)H);
    int tid = threadIdx.x;
    size_t ld = (size_t)H * D;
    for (int d = tid; d < 3 * D; d += blockDim.x) acc[d] = 0.0f;
    const float *col_s = ds + bh * T * T + j;  // element i at col_s[i * T]
    const float *col_p = probs + bh * T * T + j;
    const float *Qb = q + (size_t)b * T * ld + (size_t)h * D;  // row i at Qb + i * ld
    const float *dOb = dout + (size_t)b * T * ld + (size_t)h * D;
    const float *pqh = pq ? pq + (size_t)h * D : NULL;
    for (int i0 = 0; i0 < T; i0 += ENC_CHUNK) {
        int n = T - i0 < ENC_CHUNK ? T - i0 : ENC_CHUNK;
        __syncthreads();  // the previous chunk is consumed (and acc is initialised)
        for (int t = tid; t < n; t += blockDim.x) {
            cs[t] = col_s[(size_t)(i0 + t) * T];
            cp[t] = col_p[(size_t)(i0 + t) * T];
            if (pqh) {
                int p = idx[(size_t)(i0 + t) * T + j];
                if (p < 0 || p >= P) {
                    cuda_set_error(err, CUDA_ERR_REL_IDX, i0 + t, j, p);
                    p = -1;
                }
                ci[t] = p;
            }
        }
        __syncthreads();
        for (int d = tid; d < D; d += blockDim.x) {
            float ak = acc[d], ar = acc[D + d], av = acc[2 * D + d];
            for (int t = 0; t < n; t++) {
                size_t r = (size_t)(i0 + t) * ld + d;
                float s = cs[t], pp = cp[t];
                if (s != 0.0f) {  // block-uniform
                    ak += s * Qb[r];
                    if (pqh && ci[t] >= 0) ar += s * pqh[(size_t)ci[t] * ld + d];
                }
                if (pp != 0.0f) av += pp * dOb[r];
            }
            acc[d] = ak;
            acc[D + d] = ar;
            acc[2 * D + d] = av;
        }
    }
    __syncthreads();
    float *dkj = dk + ((size_t)b * T + j) * ld + (size_t)h * D, *dvj = dv + ((size_t)b * T + j) * ld + (size_t)h * D;
    for (int d = tid; d < D; d += blockDim.x) {
        dkj[d] = __fadd_rn(acc[d], acc[D + d]);
        dvj[d] = acc[2 * D + d];
    }
}

// Inverse index, step 1 — one warp per row i: cnt[i, p] = #{j : idx[i, j] == p} (cnt: [T, P], the row
// owned by its warp). Keys are taken 32 at a time; lanes holding the same bucket form one group
// (__match_any_sync) whose lowest lane adds the group's size: no atomics, no races.
static __global__ void k_rel_count(int *cnt, const int32_t *__restrict__ idx, int T, int P, int *err) {
    int lane = threadIdx.x & 31, i = blockIdx.x * ENC_IDX_WARPS + (threadIdx.x >> 5);
    if (i >= T) return;  // whole warps leave together
    int *row = cnt + (size_t)i * P;
    for (int p = lane; p < P; p += 32) row[p] = 0;
    __syncwarp();
    const int32_t *ir = idx + (size_t)i * T;
    for (int j0 = 0; j0 < T; j0 += 32) {
        int j = j0 + lane, p = -2;  // -2: past the row
        if (j < T) {
            p = ir[j];
            if (p < 0 || p >= P) {
                cuda_set_error(err, CUDA_ERR_REL_IDX, i, j, p);
                p = -1;  // left out
            }
        }
        unsigned grp = __match_any_sync(0xffffffffu, p);
        if (p >= 0 && lane == __ffs(grp) - 1) row[p] += __popc(grp);
        __syncwarp();
    }
}

// Inverse index, step 2 — one block: off[i, p] = start of the pairs of row i in bucket p's list, where
// the lists are laid out bucket by bucket and, within a bucket, row by row: off[i, p] =
// start[p] + sum_{i' < i} cnt[i', p]; start[p] = sum_{p' < p} (size of bucket p'); start[P] = total.
static __global__ void k_rel_scan(int *off, int *start, int T, int P) {
    for (int p = threadIdx.x; p < P; p += blockDim.x) {
        int run = 0;
        for (int i = 0; i < T; i++) {
            size_t o = (size_t)i * P + p;
            int c = off[o];
            off[o] = run;
            run += c;
        }
        start[p + 1] = run;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        start[0] = 0;
        for (int p = 1; p <= P; p++) start[p] += start[p - 1];
    }
    __syncthreads();
    for (int p = threadIdx.x; p < P; p += blockDim.x) {
        int s0 = start[p];
        for (int i = 0; i < T; i++) off[(size_t)i * P + p] += s0;
    }
}

// Inverse index, step 3 — one warp per row i: list[off[i, p] + rank] = i * T + j for every key j in order,
// rank = position of j among the row's keys of bucket p (the lower lanes of its group first, then the
// cursor off[i, p] advances by the group's size). Pairs within a bucket are so ordered by (i, j).
static __global__ void k_rel_fill(int *__restrict__ list, int *off, const int32_t *__restrict__ idx, int T,
                                  int P) {
    int lane = threadIdx.x & 31, i = blockIdx.x * ENC_IDX_WARPS + (threadIdx.x >> 5);
    if (i >= T) return;
    int *row = off + (size_t)i * P;
    const int32_t *ir = idx + (size_t)i * T;
    unsigned below = (1u << lane) - 1u;
    for (int j0 = 0; j0 < T; j0 += 32) {
        int j = j0 + lane, p = -2;
        if (j < T) {
            p = ir[j];
            if (p < 0 || p >= P) p = -1;  // reported by k_rel_count
        }
        unsigned grp = __match_any_sync(0xffffffffu, p);
        if (p >= 0) list[row[p] + __popc(grp & below)] = i * T + j;
        __syncwarp();  // every lane has read its cursor
        if (p >= 0 && lane == __ffs(grp) - 1) row[p] += __popc(grp);
        __syncwarp();
    }
}

// Position gradients, block (p, h): dpk[p, h, :] = sum_b sum_{(i,j) in bucket p} dS[b,h,i,j] q[b,i,h,:] and
// dpq[p, h, :] = ... dS[b,h,i,j] k[b,j,h,:]. Threads are G groups of dl lanes (dl = min(D, blockDim),
// lane d0 takes d = d0, d0 + dl, ...); group g takes the pairs g, g + G, ... of the bucket for every b in
// order, and the groups' sums are added in group order: a fixed order for a given D.
static __global__ void __launch_bounds__(ENC_REL_THREADS)
k_enc_bwd_rel(float *__restrict__ dpq, float *__restrict__ dpk, const float *__restrict__ ds,
              const float *__restrict__ q, const float *__restrict__ k, const int *__restrict__ start,
              const int *__restrict__ list, int B, int T, int H, int D) {
    extern __shared__ float red[];  // [2, G, D]
    int p = blockIdx.x / H, h = blockIdx.x % H, tid = threadIdx.x;
    int dl = D < (int)blockDim.x ? D : (int)blockDim.x, G = (int)blockDim.x / dl, g = tid / dl, d0 = tid % dl;
    size_t ld = (size_t)H * D;
    int e0 = start[p], e1 = start[p + 1];
    if (g < G) {
        for (int d = d0; d < D; d += dl) {
            float aq = 0.0f, ak = 0.0f;
            for (int b = 0; b < B; b++) {
                const float *dsb = ds + ((size_t)b * H + h) * T * T;  // pair (i, j) at dsb[i * T + j]
                const float *Qb = q + (size_t)b * T * ld + (size_t)h * D + d;
                const float *Kb = k + (size_t)b * T * ld + (size_t)h * D + d;
                for (int e = e0 + g; e < e1; e += G) {
                    int pr = list[e];
                    float s = dsb[pr];
                    if (s == 0.0f) continue;
                    int i = pr / T, j = pr - i * T;
                    if (dpq) aq += s * Kb[(size_t)j * ld];
                    if (dpk) ak += s * Qb[(size_t)i * ld];
                }
            }
            red[g * D + d] = aq;
            red[(G + g) * D + d] = ak;
        }
    }
    __syncthreads();
    for (int d = tid; d < D; d += blockDim.x) {
        float sq = 0.0f, sk = 0.0f;
        for (int gg = 0; gg < G; gg++) {
            sq += red[gg * D + d];
            sk += red[(G + gg) * D + d];
        }
        size_t o = (size_t)p * ld + (size_t)h * D + d;
        if (dpq) dpq[o] = sq;
        if (dpk) dpk[o] = sk;
    }
}

static void cu_attention_enc_bwd(Backend *be, float *dq, float *dk, float *dv, float *dpq, float *dpk,
                                 const float *dout, const float *probs, const float *q, const float *k, const float *v,
                                 const float *pq, const float *pk, const int32_t *idx, int B, int T, int H, int D,
                                 int P, float scale) {
    enc_check("attention_enc_bwd", pq, pk, idx, B, T, H, D, P);
    check(!pq == !dpq, "attention_enc_bwd: dpq must be given exactly when pq is (pq %s, dpq %s)",
          pq ? "given" : "NULL", dpq ? "given" : "NULL");
    check(!pk == !dpk, "attention_enc_bwd: dpk must be given exactly when pk is (pk %s, dpk %s)",
          pk ? "given" : "NULL", dpk ? "given" : "NULL");
    CudaCtx *cx = cuda_ctx(be);
    int rel = pq || pk;
    size_t npd = rel ? (size_t)P * H * D : 0;
    if (B == 0 || T == 0) {  // empty sums
        if (dpq) cuda_check(cudaMemsetAsync(dpq, 0, npd * sizeof(float), cx->stream));
        if (dpk) cuda_check(cudaMemsetAsync(dpk, 0, npd * sizeof(float), cx->stream));
        return;
    }
    size_t blocks = (size_t)B * H * T;
    check(blocks <= 0x7fffffffu, "attention_enc_bwd: %zu query rows are too many for one launch", blocks);
    if (rel) check((size_t)P * H <= 0x7fffffffu, "attention_enc_bwd: P*H = %zu blocks are too many", (size_t)P * H);
    // scratch: dS [B,H,T,T] floats, then (relative terms) off [T,P], start [P+1], list [T*T] ints
    size_t n_ds = (size_t)B * H * T * T;
    size_t n_idx = rel ? (size_t)T * P + (size_t)P + 1 + (size_t)T * T : 0;
    float *ds = cuda_scratch(be, n_ds + n_idx, "encoder attention backward (dS [B,H,T,T], position index)");
    cx->err_op = "attention_enc_bwd";
    const int32_t *ix = rel ? idx : NULL;
    k_enc_bwd_rows<<<(unsigned)blocks, ENC_THREADS, (size_t)D * sizeof(float), cx->stream>>>(
        dq, ds, dout, probs, k, v, pk, ix, T, H, D, P, scale, cx->d_err);
    launch_check("attention_enc_bwd (dS, dq)");
    // same stream: the later kernels start after all of dS is written
    k_enc_bwd_cols<<<(unsigned)blocks, ENC_THREADS, 3 * (size_t)D * sizeof(float), cx->stream>>>(
        dk, dv, ds, probs, q, dout, pq, ix, T, H, D, P, cx->d_err);
    launch_check("attention_enc_bwd (dk, dv)");
    if (!rel) return;
    int *off = (int *)(ds + n_ds), *start = off + (size_t)T * P, *list = start + P + 1;
    unsigned row_blocks = (unsigned)((T + ENC_IDX_WARPS - 1) / ENC_IDX_WARPS);
    k_rel_count<<<row_blocks, 32 * ENC_IDX_WARPS, 0, cx->stream>>>(off, idx, T, P, cx->d_err);
    launch_check("attention_enc_bwd (position index: count)");
    k_rel_scan<<<1, 1024, 0, cx->stream>>>(off, start, T, P);
    launch_check("attention_enc_bwd (position index: scan)");
    k_rel_fill<<<row_blocks, 32 * ENC_IDX_WARPS, 0, cx->stream>>>(list, off, idx, T, P);
    launch_check("attention_enc_bwd (position index: fill)");
    int dl = D < ENC_REL_THREADS ? D : ENC_REL_THREADS, G = ENC_REL_THREADS / dl;
    size_t shmem = 2 * (size_t)G * D * sizeof(float);
    check(shmem <= 48 * 1024, "attention_enc_bwd: head dim %d is too large for the position-gradient kernel", D);
    k_enc_bwd_rel<<<(unsigned)((size_t)P * H), ENC_REL_THREADS, shmem, cx->stream>>>(dpq, dpk, ds, q, k, start, list,
                                                                                     B, T, H, D);
    launch_check("attention_enc_bwd (dpq, dpk)");
}

// ---------------------------------------------------------------------------- install

void cuda_install_encoder(Backend *be) {
    be->embedding_add = cu_embedding_add;
    be->layernorm_fwd = cu_layernorm_fwd;
    be->layernorm_bwd = cu_layernorm_bwd;
    be->bias_add = cu_bias_add;
    be->bias_grad = cu_bias_grad;
    be->gelu_fwd = cu_gelu_fwd;
    be->gelu_bwd = cu_gelu_bwd;
    be->tanh_fwd = cu_tanh_fwd;
    be->tanh_bwd = cu_tanh_bwd;
    be->mask_rows = cu_mask_rows;
    be->attention_enc_fwd = cu_attention_enc_fwd;
    be->attention_enc_bwd = cu_attention_enc_bwd;
}
