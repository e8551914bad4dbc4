// attention.cu: causal + key-padding attention with GQA for the CUDA backend, the CPU backend's
// algorithm (backend_cpu_attn.c) one query row per thread block. Correctness first: no tiling
// and no fused (flash) kernel yet; the [B,H,T,T] probabilities are materialised as backend.h
// requires (they are saved for backward anyway).
//
// Layouts: q, dq, out, dout: [B,T,H,D]; k, v, dk, dv: [B,T,KVH,D]; probs: [B,H,T,T];
// mask: [B,T] (1 = real). Query head h reads kv head h / (H/KVH). Key j is visible to query i
// iff j <= i and mask[b,j] == 1; a row with no visible key gets zero probabilities and output.
//
// Kernels (each output element written by exactly one thread, sums in a fixed order, no atomics):
//   forward, block (b,h,i):   S_ij = q_i.k_j / sqrt(D), one warp per key (lanes over D, fixed
//                             shuffle tree); max, exp, sum (fixed block tree), P = e / sum;
//                             out_i = sum_j P_ij v_j, threads over D, j in order.
//   backward 1, block (b,h,i): dP_ij = dout_i.v_j; r = sum_j dP_ij P_ij (fp64, as the CPU);
//                             dS_ij = P_ij (dP_ij - r) / sqrt(D) into scratch [B,H,T,T];
//                             dq_i = sum_j dS_ij k_j.
//   backward 2, block (b,g,j): dk_j = sum_{h in group g} sum_{i >= j} dS_h,ij q_h,i and
//                             dv_j = sum_h sum_{i >= j} P_h,ij dout_h,i (columns staged in shared
//                             memory, chunk by chunk).
// The probability / dS row under construction lives in global memory (its final home), so any
// T works without a shared-memory limit; __syncthreads orders the block's global accesses.
#include <math.h>

#include "cuda_internal.cuh"

#define ATT_THREADS 128  // 4 warps; a power of two (block_sum / block_max)
#define ATT_CHUNK 256    // rows of a dS / P column staged at a time by backward 2

static void attn_check(int B, int T, int H, int KVH, int D) {
    check(B >= 0 && T >= 0 && D > 0 && H > 0 && KVH > 0 && H % KVH == 0,
          "attention: bad shape B=%d T=%d H=%d KVH=%d D=%d (H must be a multiple of KVH)", B, T, H, KVH, D);
}

// ---------------------------------------------------------------------------- forward

static __global__ void __launch_bounds__(ATT_THREADS)
k_attn_fwd(float *__restrict__ out, float *probs, const float *__restrict__ q, const float *__restrict__ k,
           const float *__restrict__ v, const int32_t *__restrict__ mask, int T, int H, int KVH, int D, float scale) {
    extern __shared__ float qs[];  // [D] this query row
    __shared__ float redf[ATT_THREADS];
    size_t blk = blockIdx.x, bh = blk / (size_t)T;  // bh = b * H + h
    int i = (int)(blk % (size_t)T), h = (int)(bh % (size_t)H), b = (int)(bh / (size_t)H);
    int g = h / (H / KVH), tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarp = blockDim.x >> 5;
    const float *qi = q + (((size_t)b * T + i) * H + h) * D;
    for (int d = tid; d < D; d += blockDim.x) qs[d] = qi[d];
    __syncthreads();
    float *P = probs + (bh * T + (size_t)i) * T;             // row i of [T, T]
    const int32_t *mb = mask + (size_t)b * T;
    const float *Kb = k + ((size_t)b * T * KVH + g) * D;     // key j at Kb + j * KVH * D
    const float *Vb = v + ((size_t)b * T * KVH + g) * D;
    size_t kv_ld = (size_t)KVH * D;
    // scores
    for (int j = warp; j <= i; j += nwarp) {
        float s = -INFINITY;  // masked key: exp gives exactly 0
        if (mb[j] == 1) {
            const float *kj = Kb + (size_t)j * kv_ld;
            float acc = 0.0f;
            for (int d = lane; d < D; d += 32) acc += qs[d] * kj[d];
            s = scale * warp_sum(acc);
        }
        if (lane == 0) P[j] = s;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int j = tid; j <= i; j += blockDim.x) mx = fmaxf(mx, P[j]);
    mx = block_max(mx, redf);
    float *o = out + (((size_t)b * T + i) * H + h) * D;
    if (mx == -INFINITY) {  // no visible key (left padding): probabilities 0, output 0
        for (int j = tid; j < T; j += blockDim.x) P[j] = 0.0f;
        for (int d = tid; d < D; d += blockDim.x) o[d] = 0.0f;
        return;
    }
    float part = 0.0f;
    for (int j = tid; j <= i; j += blockDim.x) {
        float e = expf(P[j] - mx);
        P[j] = e;
        part += e;
    }
    float sum = block_sum(part, redf);
    for (int j = tid; j < T; j += blockDim.x) P[j] = j <= i ? P[j] / sum : 0.0f;  // causal zeros
    __syncthreads();
    for (int d = tid; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j <= i; j++) acc += P[j] * Vb[(size_t)j * kv_ld + d];
        o[d] = acc;
    }
}

static void cu_attention_fwd(Backend *be, float *out, float *probs, const float *q, const float *k, const float *v,
                             const int32_t *mask, int B, int T, int H, int KVH, int D) {
    attn_check(B, T, H, KVH, D);
    size_t blocks = (size_t)B * H * T;
    if (!blocks) return;
    check(blocks <= 0x7fffffffu, "attention_fwd: %zu query rows are too many for one launch", blocks);
    float scale = 1.0f / sqrtf((float)D);
    k_attn_fwd<<<(unsigned)blocks, ATT_THREADS, (size_t)D * sizeof(float), cuda_ctx(be)->stream>>>(
        out, probs, q, k, v, mask, T, H, KVH, D, scale);
    launch_check("attention_fwd");
}

// ---------------------------------------------------------------------------- backward

// Pass 1, block (b, h, i): dS row i (into ds, laid out like probs; only j <= i is written) and dq_i.
static __global__ void __launch_bounds__(ATT_THREADS)
k_attn_bwd_dq(float *__restrict__ dq, float *ds, const float *__restrict__ dout, const float *__restrict__ probs,
              const float *__restrict__ k, const float *__restrict__ v, int T, int H, int KVH, int D, float scale) {
    extern __shared__ float dos[];  // [D] dout row i
    __shared__ double redd[ATT_THREADS];
    size_t blk = blockIdx.x, bh = blk / (size_t)T;
    int i = (int)(blk % (size_t)T), h = (int)(bh % (size_t)H), b = (int)(bh / (size_t)H);
    int g = h / (H / KVH), tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarp = blockDim.x >> 5;
    const float *doi = dout + (((size_t)b * T + i) * H + h) * D;
    for (int d = tid; d < D; d += blockDim.x) dos[d] = doi[d];
    __syncthreads();
    size_t row = (bh * T + (size_t)i) * T;
    const float *P = probs + row;
    float *dS = ds + row;
    const float *Kb = k + ((size_t)b * T * KVH + g) * D;
    const float *Vb = v + ((size_t)b * T * KVH + g) * D;
    size_t kv_ld = (size_t)KVH * D;
    // dP_ij = dout_i . v_j
    for (int j = warp; j <= i; j += nwarp) {
        const float *vj = Vb + (size_t)j * kv_ld;
        float acc = 0.0f;
        for (int d = lane; d < D; d += 32) acc += dos[d] * vj[d];
        float dp = warp_sum(acc);
        if (lane == 0) dS[j] = dp;
    }
    __syncthreads();
    double part = 0.0;
    for (int j = tid; j <= i; j += blockDim.x) part += (double)dS[j] * (double)P[j];
    float rf = (float)block_sum(part, redd);
    // P is 0 for masked and future keys, so their dS is exactly 0
    for (int j = tid; j <= i; j += blockDim.x) dS[j] = P[j] * (dS[j] - rf) * scale;
    __syncthreads();
    float *dqi = dq + (((size_t)b * T + i) * H + h) * D;
    for (int d = tid; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j <= i; j++) acc += dS[j] * Kb[(size_t)j * kv_ld + d];
        dqi[d] = acc;
    }
}

// Pass 2, block (b, g, j): dk_j and dv_j summed over the query heads of kv group g and the rows
// i >= j (rows i < j have dS = P = 0 in column j by causality).
static __global__ void __launch_bounds__(ATT_THREADS)
k_attn_bwd_dkv(float *__restrict__ dk, float *__restrict__ dv, const float *__restrict__ ds,
               const float *__restrict__ probs, const float *__restrict__ q, const float *__restrict__ dout, int T,
               int H, int KVH, int D) {
    __shared__ float cs[ATT_CHUNK], cp[ATT_CHUNK];  // a chunk of column j of dS_h and P_h
    extern __shared__ float acc[];                  // [2 * D]: dk, dv accumulators of this row
    size_t blk = blockIdx.x, bg = blk / (size_t)T;  // bg = b * KVH + g
    int j = (int)(blk % (size_t)T), g = (int)(bg % (size_t)KVH), b = (int)(bg / (size_t)KVH);
    int rep = H / KVH, tid = threadIdx.x;
    size_t q_ld = (size_t)H * D;
    for (int d = tid; d < 2 * D; d += blockDim.x) acc[d] = 0.0f;
    for (int hh = 0; hh < rep; hh++) {
        int h = g * rep + hh;
        const float *col_s = ds + (((size_t)b * H + h) * T) * T + j;     // element i at col_s[i * T]
        const float *col_p = probs + (((size_t)b * H + h) * T) * T + j;
        const float *Qh = q + ((size_t)b * T * H + h) * D;              // row i at Qh + i * H * D
        const float *dOh = dout + ((size_t)b * T * H + h) * D;
        for (int i0 = j; i0 < T; i0 += ATT_CHUNK) {
            int n = T - i0 < ATT_CHUNK ? T - i0 : ATT_CHUNK;
            __syncthreads();  // the previous chunk is consumed
            for (int t = tid; t < n; t += blockDim.x) {
                cs[t] = col_s[(size_t)(i0 + t) * T];
                cp[t] = col_p[(size_t)(i0 + t) * T];
            }
            __syncthreads();
            for (int d = tid; d < D; d += blockDim.x) {
                float ak = acc[d], av = acc[D + d];
                for (int t = 0; t < n; t++) {
                    size_t r = (size_t)(i0 + t) * q_ld + d;
                    ak += cs[t] * Qh[r];
                    av += cp[t] * dOh[r];
                }
                acc[d] = ak;
                acc[D + d] = av;
            }
        }
    }
    __syncthreads();
    float *dkj = dk + (((size_t)b * T + j) * KVH + g) * D, *dvj = dv + (((size_t)b * T + j) * KVH + g) * D;
    for (int d = tid; d < D; d += blockDim.x) {
        dkj[d] = acc[d];
        dvj[d] = acc[D + d];
    }
}

static void cu_attention_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *probs,
                             const float *q, const float *k, const float *v, int B, int T, int H, int KVH, int D) {
    attn_check(B, T, H, KVH, D);
    if (B == 0 || T == 0) return;
    CudaCtx *cx = cuda_ctx(be);
    size_t q_blocks = (size_t)B * H * T, kv_blocks = (size_t)B * KVH * T;
    check(q_blocks <= 0x7fffffffu, "attention_bwd: %zu query rows are too many for one launch", q_blocks);
    float *ds = cuda_scratch(be, (size_t)B * H * T * T, "attention backward dS [B,H,T,T]");
    float scale = 1.0f / sqrtf((float)D);
    k_attn_bwd_dq<<<(unsigned)q_blocks, ATT_THREADS, (size_t)D * sizeof(float), cx->stream>>>(
        dq, ds, dout, probs, k, v, T, H, KVH, D, scale);
    launch_check("attention_bwd (dq)");
    // same stream: pass 2 starts after all of dS is written
    k_attn_bwd_dkv<<<(unsigned)kv_blocks, ATT_THREADS, 2 * (size_t)D * sizeof(float), cx->stream>>>(
        dk, dv, ds, probs, q, dout, T, H, KVH, D);
    launch_check("attention_bwd (dk, dv)");
}

void cuda_install_attention(Backend *be) {
    be->attention_fwd = cu_attention_fwd;
    be->attention_bwd = cu_attention_bwd;
}
