// attention_fused.cu: fused attention for the CUDA backend (backend.h "fused attention", model.attention =
// "fused"): causal + key-padding attention with GQA on the tensor cores (WMMA, bf16 inputs, fp32 accumulation)
// that never stores the [B,H,T,T] probabilities. The plain-C reference is backend_cpu_attn_fused.c.
//
// Layouts: q, dq, out, dout: [B,T,H,D]; k, v, dk, dv: [B,T,KVH,D]; lse, delta: [B,H,T]; mask: [B,T]. q, k, v
// bf16 (the weight format); out, dout, dq, dk, dv, lse fp32. Key j is visible to query i iff j <= i and
// mask[b,j] == 1. D is a template parameter (16, 32, 64 or 128: one kernel each).
//
// Every tile lives in shared memory with a padded row stride (LD = D + 8 bf16: consecutive rows start 16 bytes
// apart in the banks); each warp owns 16 rows of the block's tile and runs its products on them alone (so only a
// __syncwarp orders its own score rows), the tiles shared by the block are staged between __syncthreads.
//
//   forward (k_fa_fwd; block: 64 query rows of one (b, h), 4 warps):
//     Q tile -> registers (WMMA fragments, D/16 of them per warp);
//     pass 1 over the key tiles (32 keys): S = Q K^T (fp32), per row the running max m and sum l of
//       exp(scale s - m) (two lanes per row, 16 columns each, combined by one shuffle);
//     pass 2 over them again: S once more, P = exp(scale s - m) / l rounded to bf16, O += P V (fragments).
//     Two passes instead of an online rescale keep O in fragments (whose per-lane layout is opaque) and give
//     the normalised P the CPU reference rounds. lse = m + log l; a row with no visible key: out 0, -inf.
//   backward (three kernels, no atomics: every output element is written by one thread, sums in fixed order):
//     k_fa_bwd_pre:  delta_i = sum_d dout_id out_id (fp32, one warp per row, fixed tree), dout -> bf16;
//     k_fa_bwd_dkv:  block: 32 keys of one (b, g), 2 warps. Over the group's heads in order and the query
//       tiles from the diagonal on: S^T = K Q^T, P^T = exp(scale S^T - lse) (bf16), dP^T = V dO^T,
//       dS^T = P^T (dP^T - delta) scale (bf16); dV += P^T dO, dK += dS^T Q in fragments;
//     k_fa_bwd_dq:   block: 32 queries of one (b, h), 2 warps. Over the key tiles up to the diagonal: S, P,
//       dP = dO V^T, dS as above; dQ += dS K.
//   The scores are recomputed in both backward kernels instead of summing dQ with atomics: one more S and dP
//   product each, for a run that is bit-reproducible.
// Shared memory stays under the 48 KiB of a static allocation at D = 128 (the forward ~35 KiB, the backward
// ~44 KiB). Scratch (cuda_scratch): [dout bf16 B*T*H*D][delta fp32 B*H*T], 256-byte aligned regions.
#include <math.h>
#include <mma.h>

#include "cuda_internal.cuh"

using namespace nvcuda;

typedef __nv_bfloat16 bf16;

#define FA_BQ 64        // forward: query rows per block (4 warps x 16)
#define FA_BK 32        // key rows per tile (forward), rows per block and per tile (backward)
#define FA_LS (FA_BK + 4)  // row stride of the fp32 score tiles
#define FA_LP (FA_BK + 8)  // row stride of the bf16 P / dS tiles

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> FragBRow;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> FragBCol;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

// Copies rows [r0, r0 + n) of a [*, stride] bf16 tensor (row r at base + r * stride) into a [n, LD] tile
// (rows at or past `rows` become zeros), 8 bf16 (16 bytes) per thread and step.
template <int D>
__device__ void fa_stage(bf16 *tile, const bf16 *base, size_t stride, int r0, int n, int rows) {
    const int LD = D + 8, V = D / 8;
    for (int e = threadIdx.x; e < n * V; e += blockDim.x) {
        int r = e / V, c = (e % V) * 8;
        uint4 val = {0u, 0u, 0u, 0u};
        if (r0 + r < rows) val = *(const uint4 *)(base + (size_t)(r0 + r) * stride + c);
        *(uint4 *)(tile + r * LD + c) = val;
    }
}

// C [16, 16*NT] (row stride ldc, fp32) = A [16, D] (row-major, stride lda) times B^T, B [16*NT, D] (row-major,
// stride ldb): the score products S = Q K^T, S^T = K Q^T, dP = dO V^T.
template <int D, int NT>
__device__ void fa_abt(float *C, int ldc, const bf16 *A, int lda, const bf16 *B, int ldb) {
    for (int n = 0; n < NT; n++) {
        FragC acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kk = 0; kk < D / 16; kk++) {
            FragA a;
            FragBCol b;
            wmma::load_matrix_sync(a, A + kk * 16, lda);
            wmma::load_matrix_sync(b, B + n * 16 * ldb + kk * 16, ldb);
            wmma::mma_sync(acc, a, b, acc);
        }
        wmma::store_matrix_sync(C + n * 16, acc, ldc, wmma::mem_row_major);
    }
}

// acc[D/16] ([16, D]) += A [16, 32] (bf16, stride FA_LP) times B [32, D] (bf16, row-major, stride LD)
template <int D>
__device__ void fa_acc_ab(FragC *acc, const bf16 *A, const bf16 *B) {
    const int LD = D + 8;
    for (int kk = 0; kk < FA_BK / 16; kk++) {
        FragA a;
        wmma::load_matrix_sync(a, A + kk * 16, FA_LP);
        for (int dn = 0; dn < D / 16; dn++) {
            FragBRow b;
            wmma::load_matrix_sync(b, B + kk * 16 * LD + dn * 16, LD);
            wmma::mma_sync(acc[dn], a, b, acc[dn]);
        }
    }
}

// Writes a warp's [16, D] accumulator to rows [r0, r0 + 16) of a [*, stride] fp32 tensor (rows at or past
// `rows` skipped), through stage (16 x 16 fp32 of the warp's own shared memory).
template <int D>
__device__ void fa_write(float *dst, size_t stride, int r0, int rows, FragC *acc, float *stage) {
    int lane = threadIdx.x % 32;
    for (int dn = 0; dn < D / 16; dn++) {
        wmma::store_matrix_sync(stage, acc[dn], 16, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
            int r = e / 16, c = e % 16;
            if (r0 + r < rows) dst[(size_t)(r0 + r) * stride + dn * 16 + c] = stage[e];
        }
        __syncwarp();
    }
}

// ---------------------------------------------------------------------------- forward

template <int D>
__global__ void __launch_bounds__(128) k_fa_fwd(float *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                                                const int32_t *mask, int T, int H, int KVH, float scale) {
    const int LD = D + 8;
    // [Q tile 64 x LD] at the start, then [S 64 x FA_LS fp32][P 64 x FA_LP bf16] in the same bytes
    const int QBYTES = FA_BQ * LD * 2, SPBYTES = FA_BQ * FA_LS * 4 + FA_BQ * FA_LP * 2;
    __shared__ __align__(128) unsigned char sm[QBYTES > SPBYTES ? QBYTES : SPBYTES];
    __shared__ __align__(128) bf16 Ks[FA_BK * LD];
    __shared__ __align__(128) bf16 Vs[FA_BK * LD];
    __shared__ int kvis[FA_BK];
    bf16 *Qs = (bf16 *)sm, *Ps = (bf16 *)(sm + FA_BQ * FA_LS * 4);
    float *Ss = (float *)sm;

    int b = blockIdx.z, h = blockIdx.y, g = h / (H / KVH), q0 = blockIdx.x * FA_BQ;
    int w = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane >> 1, half = lane & 1;
    int i = q0 + w * 16 + r;                       // this lane's query row
    int wlast = min(q0 + w * 16 + 15, T - 1);      // the warp's last row (keys past it are never visible)
    size_t kvstride = (size_t)KVH * D;
    const bf16 *kb = k + (size_t)b * T * kvstride + (size_t)g * D, *vb = v + (size_t)b * T * kvstride + (size_t)g * D;

    fa_stage<D>(Qs, q + (size_t)b * T * H * D + (size_t)h * D, (size_t)H * D, q0, FA_BQ, T);
    __syncthreads();
    FragA qf[D / 16];
    for (int kk = 0; kk < D / 16; kk++) wmma::load_matrix_sync(qf[kk], Qs + w * 16 * LD + kk * 16, LD);
    // (the Q tile's bytes become S and P after the first key tile's __syncthreads)

    float *Sw = Ss + w * 16 * FA_LS;
    bf16 *Pw = Ps + w * 16 * FA_LP;
    int nkt = (min(q0 + FA_BQ, T) - 1) / FA_BK + 1;  // key tiles up to the block's last row
    float m = -INFINITY, l = 0.0f;
    FragC o[D / 16];
    for (int dn = 0; dn < D / 16; dn++) wmma::fill_fragment(o[dn], 0.0f);
    for (int pass = 0; pass < 2; pass++) {
        for (int kt = 0; kt < nkt; kt++) {
            int k0 = kt * FA_BK;
            __syncthreads();  // every warp is done with the previous tiles
            fa_stage<D>(Ks, kb, kvstride, k0, FA_BK, T);
            if (pass == 1) fa_stage<D>(Vs, vb, kvstride, k0, FA_BK, T);
            if (threadIdx.x < FA_BK) kvis[threadIdx.x] = k0 + (int)threadIdx.x < T && mask[(size_t)b * T + k0 + threadIdx.x] == 1;
            __syncthreads();
            if (k0 > wlast) continue;  // the warp's rows see none of these keys
            // S [16, 32] = Q_w K^T with the fragments of Q_w in registers
            for (int n = 0; n < FA_BK / 16; n++) {
                FragC acc;
                wmma::fill_fragment(acc, 0.0f);
                for (int kk = 0; kk < D / 16; kk++) {
                    FragBCol kf;
                    wmma::load_matrix_sync(kf, Ks + n * 16 * LD + kk * 16, LD);
                    wmma::mma_sync(acc, qf[kk], kf, acc);
                }
                wmma::store_matrix_sync(Sw + n * 16, acc, FA_LS, wmma::mem_row_major);
            }
            __syncwarp();
            float s[16];  // the lane's 16 scaled scores, -inf where the key is not visible
            for (int c = 0; c < 16; c++) {
                int cc = half * 16 + c, j = k0 + cc;
                int vis = i < T && j <= i && kvis[cc];
                s[c] = vis ? Sw[r * FA_LS + cc] * scale : -INFINITY;
            }
            if (pass == 0) {
                float mt = -INFINITY;
                for (int c = 0; c < 16; c++) mt = fmaxf(mt, s[c]);
                mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
                float mn = fmaxf(m, mt), part = 0.0f;
                for (int c = 0; c < 16; c++) part += s[c] == -INFINITY ? 0.0f : expf(s[c] - mn);
                part += __shfl_xor_sync(0xffffffffu, part, 1);  // the same sum in both lanes (a + b == b + a)
                if (mn != -INFINITY) {
                    l = (m == -INFINITY ? 0.0f : l * expf(m - mn)) + part;
                    m = mn;
                }
            } else {
                for (int c = 0; c < 16; c++) {
                    float p = s[c] == -INFINITY ? 0.0f : expf(s[c] - m) / l;
                    Pw[r * FA_LP + half * 16 + c] = __float2bfloat16_rn(p);
                }
                __syncwarp();
                fa_acc_ab<D>(o, Pw, Vs);  // O += P [16, 32] V [32, D]
            }
        }
    }
    if (half == 0 && i < T) lse[((size_t)b * H + h) * T + i] = m == -INFINITY ? -INFINITY : m + logf(l);
    __syncthreads();  // P is no longer read: its bytes stage the output
    fa_write<D>(out + (size_t)b * T * H * D + (size_t)h * D, (size_t)H * D, q0 + w * 16, T, o, Ss + w * 256);
}

// ---------------------------------------------------------------------------- backward

// delta[b,h,i] = sum_d dout out (fixed lane-strided sums and shuffle tree), dob = dout in bf16; one warp per
// (b, i, h) row, rows = B*T*H.
template <int D>
__global__ void k_fa_bwd_pre(float *delta, bf16 *dob, const float *dout, const float *out, size_t rows, int T, int H) {
    size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float *dr = dout + row * D, *orow = out + row * D;
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) {
        s += dr[d] * orow[d];
        dob[row * D + d] = __float2bfloat16_rn(dr[d]);
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) {
        size_t bi = row / H;  // b*T + i
        int h = (int)(row % H), i = (int)(bi % T), b = (int)(bi / T);
        delta[((size_t)b * H + h) * T + i] = s;
    }
}

// Shared tiles of the two backward kernels: four [32, LD] bf16 tiles, one [32, FA_LS] fp32 score tile, two
// [32, FA_LP] bf16 tiles, and per-row values of the query tile.
template <int D>
struct FaBwdSmem {
    __align__(128) bf16 t0[FA_BK * (D + 8)];
    __align__(128) bf16 t1[FA_BK * (D + 8)];
    __align__(128) bf16 t2[FA_BK * (D + 8)];
    __align__(128) bf16 t3[FA_BK * (D + 8)];
    __align__(128) float S[FA_BK * FA_LS];
    __align__(128) bf16 P[FA_BK * FA_LP];
    __align__(128) bf16 dS[FA_BK * FA_LP];
    float lse[FA_BK], delta[FA_BK];
    int vis[FA_BK];
};

// lse and delta of the query rows [i0, i0 + FA_BK) of one (b, h) (row i at row0 + i) into the shared copies;
// rows at or past T get -inf (no visible key: P = 0) and 0
__device__ inline void fa_stage_rows(float *lse_s, float *delta_s, const float *lse, const float *delta, size_t row0,
                                     int i0, int T) {
    if (threadIdx.x >= FA_BK) return;
    int i = i0 + (int)threadIdx.x;
    lse_s[threadIdx.x] = i < T ? lse[row0 + i] : -INFINITY;
    delta_s[threadIdx.x] = i < T ? delta[row0 + i] : 0.0f;
}

// P of one recomputed score s (the raw product, unscaled), rounded to bf16; 0 for an invisible key.
__device__ inline float fa_prob(float s, float scale, float lse, int vis) {
    return vis ? __bfloat162float(__float2bfloat16_rn(expf(s * scale - lse))) : 0.0f;
}

template <int D>
__global__ void __launch_bounds__(64) k_fa_bwd_dkv(float *dk, float *dv, const bf16 *q, const bf16 *k, const bf16 *v,
                                                   const bf16 *dob, const float *lse, const float *delta,
                                                   const int32_t *mask, int T, int H, int KVH, float scale) {
    const int LD = D + 8;
    __shared__ FaBwdSmem<D> sm;
    bf16 *Ks = sm.t0, *Vs = sm.t1, *Qs = sm.t2, *dOs = sm.t3;
    int b = blockIdx.z, g = blockIdx.y, j0 = blockIdx.x * FA_BK, rep = H / KVH;
    int w = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane >> 1, half = lane & 1;
    int j = j0 + w * 16 + r;  // this lane's key row
    int jvis = j < T && mask[(size_t)b * T + min(j, T - 1)] == 1;
    size_t kvstride = (size_t)KVH * D, qstride = (size_t)H * D;
    fa_stage<D>(Ks, k + (size_t)b * T * kvstride + (size_t)g * D, kvstride, j0, FA_BK, T);
    fa_stage<D>(Vs, v + (size_t)b * T * kvstride + (size_t)g * D, kvstride, j0, FA_BK, T);
    float *Sw = sm.S + w * 16 * FA_LS;
    bf16 *Pw = sm.P + w * 16 * FA_LP, *dSw = sm.dS + w * 16 * FA_LP;
    FragC dkf[D / 16], dvf[D / 16];
    for (int dn = 0; dn < D / 16; dn++) {
        wmma::fill_fragment(dkf[dn], 0.0f);
        wmma::fill_fragment(dvf[dn], 0.0f);
    }
    int nqt = (T + FA_BK - 1) / FA_BK, wfirst = j0 + w * 16;
    for (int hh = 0; hh < rep; hh++) {
        int h = g * rep + hh;
        for (int qt = blockIdx.x; qt < nqt; qt++) {
            int i0 = qt * FA_BK;
            __syncthreads();  // the previous tiles are read
            fa_stage<D>(Qs, q + (size_t)b * T * qstride + (size_t)h * D, qstride, i0, FA_BK, T);
            fa_stage<D>(dOs, dob + (size_t)b * T * qstride + (size_t)h * D, qstride, i0, FA_BK, T);
            fa_stage_rows(sm.lse, sm.delta, lse, delta, ((size_t)b * H + h) * T, i0, T);
            __syncthreads();
            if (i0 + FA_BK - 1 < wfirst) continue;  // no query of this tile sees the warp's keys
            fa_abt<D, FA_BK / 16>(Sw, FA_LS, Ks + w * 16 * LD, LD, Qs, LD);  // S^T [16 keys, 32 queries]
            __syncwarp();
            float p[16];
            for (int c = 0; c < 16; c++) {
                int cc = half * 16 + c, ii = i0 + cc;
                int vis = jvis && ii < T && j <= ii && sm.lse[cc] != -INFINITY;
                p[c] = fa_prob(Sw[r * FA_LS + cc], scale, sm.lse[cc], vis);
                Pw[r * FA_LP + cc] = __float2bfloat16_rn(p[c]);
            }
            __syncwarp();  // S^T is read: dP^T takes its place
            fa_abt<D, FA_BK / 16>(Sw, FA_LS, Vs + w * 16 * LD, LD, dOs, LD);  // dP^T = V_w dO^T
            __syncwarp();
            for (int c = 0; c < 16; c++) {
                int cc = half * 16 + c;
                dSw[r * FA_LP + cc] = __float2bfloat16_rn(p[c] * (Sw[r * FA_LS + cc] - sm.delta[cc]) * scale);
            }
            __syncwarp();
            fa_acc_ab<D>(dvf, Pw, dOs);  // dV += P^T dO
            fa_acc_ab<D>(dkf, dSw, Qs);  // dK += dS^T Q
        }
    }
    size_t base = (size_t)b * T * kvstride + (size_t)g * D;
    fa_write<D>(dk + base, kvstride, j0 + w * 16, T, dkf, Sw);
    fa_write<D>(dv + base, kvstride, j0 + w * 16, T, dvf, Sw);
}

template <int D>
__global__ void __launch_bounds__(64) k_fa_bwd_dq(float *dq, const bf16 *q, const bf16 *k, const bf16 *v,
                                                  const bf16 *dob, const float *lse, const float *delta,
                                                  const int32_t *mask, int T, int H, int KVH, float scale) {
    const int LD = D + 8;
    __shared__ FaBwdSmem<D> sm;
    bf16 *Qs = sm.t0, *dOs = sm.t1, *Ks = sm.t2, *Vs = sm.t3;
    int b = blockIdx.z, h = blockIdx.y, g = h / (H / KVH), i0 = blockIdx.x * FA_BK;
    int w = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane >> 1, half = lane & 1;
    int i = i0 + w * 16 + r;  // this lane's query row
    size_t kvstride = (size_t)KVH * D, qstride = (size_t)H * D;
    fa_stage<D>(Qs, q + (size_t)b * T * qstride + (size_t)h * D, qstride, i0, FA_BK, T);
    fa_stage<D>(dOs, dob + (size_t)b * T * qstride + (size_t)h * D, qstride, i0, FA_BK, T);
    fa_stage_rows(sm.lse, sm.delta, lse, delta, ((size_t)b * H + h) * T, i0, T);
    float *Sw = sm.S + w * 16 * FA_LS;
    bf16 *dSw = sm.dS + w * 16 * FA_LP;
    FragC dqf[D / 16];
    for (int dn = 0; dn < D / 16; dn++) wmma::fill_fragment(dqf[dn], 0.0f);
    int wlast = min(i0 + w * 16 + 15, T - 1);
    int nkt = (min(i0 + FA_BK, T) - 1) / FA_BK + 1;
    for (int kt = 0; kt < nkt; kt++) {
        int j0 = kt * FA_BK;
        __syncthreads();  // the previous key tiles are read (and, the first time, the query tiles written)
        fa_stage<D>(Ks, k + (size_t)b * T * kvstride + (size_t)g * D, kvstride, j0, FA_BK, T);
        fa_stage<D>(Vs, v + (size_t)b * T * kvstride + (size_t)g * D, kvstride, j0, FA_BK, T);
        if (threadIdx.x < FA_BK) sm.vis[threadIdx.x] = j0 + (int)threadIdx.x < T && mask[(size_t)b * T + j0 + threadIdx.x] == 1;
        __syncthreads();
        if (j0 > wlast) continue;
        fa_abt<D, FA_BK / 16>(Sw, FA_LS, Qs + w * 16 * LD, LD, Ks, LD);  // S [16 queries, 32 keys]
        __syncwarp();
        float p[16];
        float li = sm.lse[w * 16 + r];
        for (int c = 0; c < 16; c++) {
            int cc = half * 16 + c, jj = j0 + cc;
            p[c] = fa_prob(Sw[r * FA_LS + cc], scale, li, i < T && jj <= i && sm.vis[cc] && li != -INFINITY);
        }
        __syncwarp();
        fa_abt<D, FA_BK / 16>(Sw, FA_LS, dOs + w * 16 * LD, LD, Vs, LD);  // dP = dO_w V^T
        __syncwarp();
        float di = sm.delta[w * 16 + r];
        for (int c = 0; c < 16; c++) {
            int cc = half * 16 + c;
            dSw[r * FA_LP + cc] = __float2bfloat16_rn(p[c] * (Sw[r * FA_LS + cc] - di) * scale);
        }
        __syncwarp();
        fa_acc_ab<D>(dqf, dSw, Ks);  // dQ += dS K
    }
    fa_write<D>(dq + (size_t)b * T * qstride + (size_t)h * D, qstride, i0 + w * 16, T, dqf, Sw);
}

// ---------------------------------------------------------------------------- ops

static void fa_check(Backend *be, const char *op, int B, int T, int H, int KVH, int D) {
    check(B >= 0 && T >= 0 && D > 0 && H > 0 && KVH > 0 && H % KVH == 0,
          "%s: bad shape B=%d T=%d H=%d KVH=%d D=%d (H must be a multiple of KVH)", op, B, T, H, KVH, D);
    check(cuda_wf_bf16(be), "%s: the CUDA fused attention runs on bf16 tensor cores and needs the bf16 weight format "
          "(model.dtype = \"bf16\"); this backend holds fp32 weights", op);
    check(BACKEND_CUDA_ATT_FUSED_HEAD_DIM_OK(D),
          "%s: head dimension %d is not supported by the fused kernels (16, 32, 64 or 128); use model.attention = "
          "\"gemm\"", op, D);
    check(B <= 65535 && H <= 65535, "%s: B=%d or H=%d is over the grid's 65535", op, B, H);
}

#define FA_DISPATCH(D, launch) \
    switch (D) {               \
    case 16: launch(16); break;  \
    case 32: launch(32); break;  \
    case 64: launch(64); break;  \
    default: launch(128); break; \
    }

static void cu_attention_fused_fwd(Backend *be, float *out, float *lse, const void *q, const void *k, const void *v,
                                   const int32_t *mask, int B, int T, int H, int KVH, int D) {
    fa_check(be, "attention_fused_fwd", B, T, H, KVH, D);
    if (B == 0 || T == 0) return;
    cudaStream_t st = cuda_ctx(be)->stream;
    dim3 grid((unsigned)((T + FA_BQ - 1) / FA_BQ), (unsigned)H, (unsigned)B);
    float scale = 1.0f / sqrtf((float)D);
#define FA_FWD(DD)                                                                                              \
    k_fa_fwd<DD><<<grid, 128, 0, st>>>(out, lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, mask, T, H, \
                                       KVH, scale)
    FA_DISPATCH(D, FA_FWD)
#undef FA_FWD
    launch_check("k_fa_fwd");
}

static void cu_attention_fused_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                   const float *lse, const void *q, const void *k, const void *v, const int32_t *mask,
                                   int B, int T, int H, int KVH, int D) {
    fa_check(be, "attention_fused_bwd", B, T, H, KVH, D);
    if (B == 0 || T == 0) return;
    cudaStream_t st = cuda_ctx(be)->stream;
    size_t rows = (size_t)B * T * H;
    size_t dob_bytes = (rows * D * sizeof(bf16) + 255) / 256 * 256;
    char *scr = (char *)cuda_scratch(be, (dob_bytes + rows * sizeof(float) + 3) / 4,
                                     "fused attention backward: dout in bf16 and delta");
    bf16 *dob = (bf16 *)scr;
    float *delta = (float *)(scr + dob_bytes);
    float scale = 1.0f / sqrtf((float)D);
    unsigned pre_blocks = (unsigned)((rows + 7) / 8);
    dim3 gkv((unsigned)((T + FA_BK - 1) / FA_BK), (unsigned)KVH, (unsigned)B);
    dim3 gq((unsigned)((T + FA_BK - 1) / FA_BK), (unsigned)H, (unsigned)B);
#define FA_BWD(DD)                                                                                                  \
    do {                                                                                                            \
        k_fa_bwd_pre<DD><<<pre_blocks, 256, 0, st>>>(delta, dob, dout, out, rows, T, H);                            \
        launch_check("k_fa_bwd_pre");                                                                               \
        k_fa_bwd_dkv<DD><<<gkv, 64, 0, st>>>(dk, dv, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, dob, lse,   \
                                             delta, mask, T, H, KVH, scale);                                        \
        launch_check("k_fa_bwd_dkv");                                                                               \
        k_fa_bwd_dq<DD><<<gq, 64, 0, st>>>(dq, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, dob, lse, delta, \
                                           mask, T, H, KVH, scale);                                                 \
        launch_check("k_fa_bwd_dq");                                                                                \
    } while (0)
    FA_DISPATCH(D, FA_BWD)
#undef FA_BWD
}

void cuda_install_attention_fused(Backend *be) {
    be->attention_fused_fwd = cu_attention_fused_fwd;
    be->attention_fused_bwd = cu_attention_fused_bwd;
}
