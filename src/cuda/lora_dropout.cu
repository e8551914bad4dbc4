// lora_dropout.cu: LoRA dropout without a copy of the dropped input for the CUDA backend (backend.h, "LoRA
// dropout without a copy of the dropped input"): lora_down_dropout, lora_grad_a_dropout, lora_dx_dropout. The
// dropped input dropout(X) [N, in] is never written anywhere: every kernel draws the mask of the element it
// reads on the fly, element (n, c) as the dropout op's element n * in + c under the key, with the dropout op's
// own formula (cuda_dropout_value, cuda_internal.cuh: rng_uniform(key, i) >= p, kept values __fdiv_rn(v, 1 - p)),
// so the values that enter the products are bit for bit the CPU reference's dropped copy. X is fp32 (x_wf 0) or
// in the weight format (x_wf 1: __nv_bfloat16 in the bf16 format, float in the fp32 format), widened with
// cuda_to_float; A, da, dA, dX, a are fp32 and nothing is rounded: fp32 products and sums throughout. p == 0:
// the same kernels without the draw (kept values unscaled, as the dropout op's copy).
//
// Determinism: fixed summation orders, no atomics; the results depend on the shapes only (not on the GPU's
// SM count, which picks among launch shapes that sum in the same order).
//
//   lora_down_dropout   a [N, r] = dropout(X) A^T, overwritten. Blocks of 8 warps; warp w of a block owns RR
//                       consecutive rows (the block 8 RR rows, a grid-stride loop over row blocks) and RC
//                       outputs j0 .. j0 + RC - 1 (RC the smallest of 8, 16, 32, 64 >= r; blockIdx.y walks
//                       chunks of 64 outputs when r > 64). The block walks the columns in tiles of 128: the
//                       tile A [j0 .. j0 + RC, c0 .. c0 + 128] is staged in shared memory (RC x 128 floats, at
//                       most 32 KiB, read by all 8 warps), then lane l of each warp takes columns c0 + 32 u + l
//                       (u = 0..3; coalesced loads of X), draws the mask, and adds x(n, c) A[j, c] into its RR x RC
//                       register accumulators (RR x RC = 64, or 32 when the row blocks would not cover the SMs:
//                       the same sums in the same order). Each lane's partial sums thus run over the columns
//                       c = l (mod 32) in increasing order (fmaf); the 32 lanes' partials are then summed by a
//                       transposing shuffle reduction (warp_reduce_scatter: xor 16, 8, 4, 2, 1, each step
//                       halving the values per lane) whose tree is the same for every output
//                       (((P0 + P16) + (P8 + P24)) + ...), after which lane l holds outputs l * V/32 + k.
//   lora_grad_a_dropout dA [r, in] += da^T dropout(X). Two stages. The N rows are cut into chunks =
//                       min(64, ceil(N / 128)) chunks of ceil(N / chunks) consecutive rows (a function of N only).
//                       Stage 1: grid (ceil(in / 256) column tiles, chunks, ceil(r / 64) output chunks), 256
//                       threads, thread t owns column c = 256 blockIdx.x + t and RC accumulators (RC the
//                       smallest of 4, 8, 16, 32, 64 >= r); the block stages da[n, j0 .. j0 + RC] of 32 rows at
//                       a time in shared memory (read as float4 broadcasts) and every thread adds
//                       da[n, j] x(n, c) over its chunk's rows in increasing n (fmaf). With one chunk the sums go
//                       straight into dA (dA += sum); otherwise into partials [chunks, r, in] in the backend's
//                       scratch (cuda_scratch: chunks r in floats, the memory planner's
//                       BACKEND_CUDA_LORA_DROP_CHUNKS r in), and stage 2 (elementwise over [r, in]) adds
//                       dA += ((p_0 + p_1) + ...) + p_{chunks-1}, the chunks in order.
//   lora_dx_dropout     dX [N, in] += mask (da A) / (1 - p). Grid (ceil(in / 256) column tiles, row groups of 32,
//                       grid-stride over the groups); thread t owns column c and holds A[0 .. r, c] in registers
//                       (RC as in grad_a; r > 64: a plain kernel reading A and da from global memory); the block
//                       stages the group's da rows in shared memory. Per element: the draw first; a dropped
//                       element is left alone (dX keeps its value exactly: nothing is read, summed or written);
//                       a kept one gets the r-length dot in the order j = 0 .. r - 1 (fmaf), scaled by the
//                       dropout op's formula and added (__fadd_rn).
#include <cuda_bf16.h>

#include "cuda_internal.cuh"

#define DROP_THREADS 256                // threads of every kernel here (8 warps)
#define DROP_WARPS (DROP_THREADS / 32)
#define DOWN_TC 128                     // columns of a staged A tile (lora_down_dropout)
#define DROP_ROWS 32                    // da rows staged at a time (lora_grad_a_dropout, lora_dx_dropout)
#define GA_ROWS_PER_CHUNK 128           // rows of a lora_grad_a_dropout chunk before the chunk count is capped
#define DROP_MAX_RC 64                  // most outputs per thread (register accumulators)

static void drop_check(const char *op, int N, int in, int r, int ldx, float p) {
    check(N >= 0 && in > 0 && r > 0 && ldx >= in, "%s: bad shape N=%d in=%d r=%d ldx=%d", op, N, in, r, ldx);
    check(p >= 0.0f && p <= 1.0f, "%s: probability %g is outside [0, 1]", op, (double)p);
}

// ---------------------------------------------------------------------------- device helpers

// x(n, c) after dropout: the stored value widened to fp32, then the dropout op's element i (p > 0)
template <typename T>
static __device__ __forceinline__ float dropped_value(const T *x, uint64_t key, uint64_t i, float p, float ks) {
    float v = cuda_to_float(*x);
    return p > 0.0f ? cuda_dropout_value(v, key, i, p, ks) : v;
}

// One step of warp_reduce_scatter: lanes L and L ^ O each hold 2 H values and exchange half of them; the lane with
// bit O set keeps (and sums) the upper half, the other the lower half, into v[0 .. H).
template <int H, int O, int V>
static __device__ __forceinline__ void rs_step(float (&v)[V], int lane) {
    const bool up = (lane & O) != 0;
#pragma unroll
    for (int k = 0; k < H; k++) {
        float send = up ? v[k] : v[k + H];
        float keep = up ? v[k + H] : v[k];
        v[k] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
}

// Sums V values (V a power of two >= 32) over the 32 lanes of a warp; afterwards lane l holds in v[k] the sum of
// value l * (V / 32) + k (k < V / 32). Every output is summed by the same tree over the lanes (pairs differing
// in lane bit 4, then bit 3, ..., bit 0; fp32 addition is commutative), whatever V: deterministic, and the same
// bits for every V. All 32 lanes must take part.
template <int V>
static __device__ __forceinline__ void warp_reduce_scatter(float (&v)[V]) {
    static_assert(V >= 32 && (V & (V - 1)) == 0, "warp_reduce_scatter: V must be a power of two >= 32");
    const int lane = threadIdx.x & 31;
    rs_step<V / 2, 16>(v, lane);
    rs_step<V / 4, 8>(v, lane);
    rs_step<V / 8, 4>(v, lane);
    rs_step<V / 16, 2>(v, lane);
    rs_step<V / 32, 1>(v, lane);
}

// ---------------------------------------------------------------------------- kernels

// a [N, r] = dropout(X) A^T for the outputs j0 = RC blockIdx.y .. j0 + RC (see the top of this file)
template <typename T, int RC, int RR>
static __global__ void __launch_bounds__(DROP_THREADS)
    k_lora_down_dropout(float *__restrict__ a, const T *__restrict__ X, int ldx, const float *__restrict__ A, int N,
                        int in, int r, float p, float ks, uint64_t key) {
    constexpr int V = RR * RC;
    constexpr int DOWN_UNROLL = RR >= 8 ? 2 : DOWN_TC / 32;  // RR = 8: fewer draws in flight (no spills)
    __shared__ float As[RC][DOWN_TC];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int j0 = blockIdx.y * RC, rc = min(RC, r - j0);
    const long long rows_per_block = (long long)DROP_WARPS * RR;
    for (long long b = blockIdx.x; b * rows_per_block < N; b += gridDim.x) {  // uniform over the block
        const int n0 = (int)(b * rows_per_block) + warp * RR;
        float acc[V];
#pragma unroll
        for (int k = 0; k < V; k++) acc[k] = 0.0f;
        for (int c0 = 0; c0 < in; c0 += DOWN_TC) {
            __syncthreads();  // the previous tile has been read
            for (int t = threadIdx.x; t < RC * DOWN_TC; t += DROP_THREADS) {
                int j = t / DOWN_TC, cc = t % DOWN_TC, c = c0 + cc;
                As[j][cc] = j < rc && c < in ? A[(size_t)(j0 + j) * in + c] : 0.0f;
            }
            __syncthreads();
#pragma unroll(DOWN_UNROLL)
            for (int u = 0; u < DOWN_TC / 32; u++) {
                const int cc = u * 32 + lane, c = c0 + cc;
                float x[RR];
#pragma unroll
                for (int rr = 0; rr < RR; rr++) {
                    const int n = n0 + rr;
                    x[rr] = n < N && c < in
                                ? dropped_value(X + (size_t)n * ldx + c, key, (uint64_t)n * (uint64_t)in + c, p, ks)
                                : 0.0f;
                }
#pragma unroll
                for (int j = 0; j < RC; j++) {
                    const float w = As[j][cc];
#pragma unroll
                    for (int rr = 0; rr < RR; rr++) acc[rr * RC + j] = fmaf(x[rr], w, acc[rr * RC + j]);
                }
            }
        }
        warp_reduce_scatter<V>(acc);
#pragma unroll
        for (int k = 0; k < V / 32; k++) {
            const int o = lane * (V / 32) + k, rr = o / RC, j = o % RC, n = n0 + rr;
            if (n < N && j < rc) a[(size_t)n * r + j0 + j] = acc[k];
        }
    }
}

// Stage 1 of lora_grad_a_dropout: the sums of chunk blockIdx.y (rows [nb, ne)) for column c and the outputs
// j0 = RC blockIdx.z .. j0 + RC: into dA (direct = 1: dA += sums) or the partials [chunks, r, in] (direct = 0).
template <typename T, int RC>
static __global__ void __launch_bounds__(DROP_THREADS)
    k_lora_grad_a_partial(float *__restrict__ out, int direct, const float *__restrict__ da, const T *__restrict__ X,
                          int ldx, int N, int in, int r, int rows_per_chunk, float p, float ks, uint64_t key) {
    __shared__ __align__(16) float sda[DROP_ROWS][RC];
    const int c = blockIdx.x * DROP_THREADS + threadIdx.x;
    const int chunk = blockIdx.y, j0 = blockIdx.z * RC, rc = min(RC, r - j0);
    const int nb = chunk * rows_per_chunk, ne = min(N, nb + rows_per_chunk);
    float acc[RC];
#pragma unroll
    for (int j = 0; j < RC; j++) acc[j] = 0.0f;
    for (int n0 = nb; n0 < ne; n0 += DROP_ROWS) {  // uniform over the block
        const int nr = min(DROP_ROWS, ne - n0);
        __syncthreads();  // the previous rows have been read
        for (int t = threadIdx.x; t < DROP_ROWS * RC; t += DROP_THREADS) {
            int k = t / RC, j = t % RC;
            sda[k][j] = k < nr && j < rc ? da[(size_t)(n0 + k) * r + j0 + j] : 0.0f;
        }
        __syncthreads();
        if (c < in) {
#pragma unroll 4
            for (int k = 0; k < nr; k++) {
                const int n = n0 + k;
                const float x = dropped_value(X + (size_t)n * ldx + c, key, (uint64_t)n * (uint64_t)in + c, p, ks);
#pragma unroll
                for (int j = 0; j < RC; j += 4) {
                    const float4 w = *reinterpret_cast<const float4 *>(&sda[k][j]);
                    acc[j] = fmaf(w.x, x, acc[j]);
                    acc[j + 1] = fmaf(w.y, x, acc[j + 1]);
                    acc[j + 2] = fmaf(w.z, x, acc[j + 2]);
                    acc[j + 3] = fmaf(w.w, x, acc[j + 3]);
                }
            }
        }
    }
    if (c >= in) return;
    if (direct) {
#pragma unroll
        for (int j = 0; j < RC; j++)
            if (j < rc) {
                float *d = out + (size_t)(j0 + j) * in + c;
                *d = __fadd_rn(*d, acc[j]);
            }
    } else {
        float *part = out + (size_t)chunk * r * in;
#pragma unroll
        for (int j = 0; j < RC; j++)
            if (j < rc) part[(size_t)(j0 + j) * in + c] = acc[j];
    }
}

// Stage 2: dA[i] += the chunks' partials [chunks, n] of element i, summed in chunk order
static __global__ void k_lora_grad_a_sum(float *__restrict__ dA, const float *__restrict__ part, int chunks,
                                         size_t n) {
    GRID_STRIDE(i, n) {
        float s = part[i];
        for (int k = 1; k < chunks; k++) s = __fadd_rn(s, part[(size_t)k * n + i]);
        dA[i] = __fadd_rn(dA[i], s);
    }
}

// dX [N, in] += mask (da A) / (1 - p), r <= RC: A[:, c] in registers, the row group's da staged in shared memory
template <int RC>
static __global__ void __launch_bounds__(DROP_THREADS)
    k_lora_dx_dropout(float *__restrict__ dX, const float *__restrict__ da, const float *__restrict__ A, int N, int in,
                      int r, float p, float ks, uint64_t key) {
    __shared__ __align__(16) float sda[DROP_ROWS][RC];
    const int c = blockIdx.x * DROP_THREADS + threadIdx.x;
    float Ac[RC];  // zero past r (and past in): the padded terms add nothing
#pragma unroll
    for (int j = 0; j < RC; j++) Ac[j] = c < in && j < r ? A[(size_t)j * in + c] : 0.0f;
    for (long long g = blockIdx.y; g * DROP_ROWS < N; g += gridDim.y) {  // uniform over the block
        const int n0 = (int)(g * DROP_ROWS), nr = min(DROP_ROWS, N - n0);
        __syncthreads();
        for (int t = threadIdx.x; t < DROP_ROWS * RC; t += DROP_THREADS) {
            int k = t / RC, j = t % RC;
            sda[k][j] = k < nr && j < r ? da[(size_t)(n0 + k) * r + j] : 0.0f;
        }
        __syncthreads();
        if (c >= in) continue;
#pragma unroll 4
        for (int k = 0; k < nr; k++) {
            const uint64_t i = (uint64_t)(n0 + k) * (uint64_t)in + c;  // dX is contiguous: its index is the draw's
            if (p > 0.0f && !(rng_uniform(key, i) >= p)) continue;    // dropped: dX keeps its value
            float s = 0.0f;
#pragma unroll
            for (int j = 0; j < RC; j += 4) {
                const float4 w = *reinterpret_cast<const float4 *>(&sda[k][j]);
                s = fmaf(w.x, Ac[j], s);
                s = fmaf(w.y, Ac[j + 1], s);
                s = fmaf(w.z, Ac[j + 2], s);
                s = fmaf(w.w, Ac[j + 3], s);
            }
            // kept: the dropout op's value of s (the same draw as above; the compiler may reuse it)
            dX[i] = __fadd_rn(dX[i], p > 0.0f ? cuda_dropout_value(s, key, i, p, ks) : s);
        }
    }
}

// The same for any r (r > DROP_MAX_RC): A and da read from global memory (through the caches)
static __global__ void __launch_bounds__(DROP_THREADS)
    k_lora_dx_dropout_any(float *__restrict__ dX, const float *__restrict__ da, const float *__restrict__ A, int N,
                          int in, int r, float p, float ks, uint64_t key) {
    const int c = blockIdx.x * DROP_THREADS + threadIdx.x;
    if (c >= in) return;
    for (long long n = blockIdx.y; n < N; n += gridDim.y) {
        const uint64_t i = (uint64_t)n * (uint64_t)in + c;
        if (p > 0.0f && !(rng_uniform(key, i) >= p)) continue;
        const float *d = da + (size_t)n * r;
        float s = 0.0f;
        for (int j = 0; j < r; j++) s = fmaf(d[j], A[(size_t)j * in + c], s);
        dX[i] = __fadd_rn(dX[i], p > 0.0f ? cuda_dropout_value(s, key, i, p, ks) : s);
    }
}

// ---------------------------------------------------------------------------- launches

static int x_is_bf16(const Backend *be, int x_wf) { return x_wf && cuda_wf_bf16(be); }

static int sm_count(Backend *be) {
    int v = 0;
    cuda_check(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, cuda_ctx(be)->device));
    return v > 0 ? v : 1;
}

static unsigned cap_grid(size_t n, size_t cap) {  // blocks of a grid-stride dimension
    if (cap > CUDA_GRID_STRIDE_CAP) cap = CUDA_GRID_STRIDE_CAP;
    return (unsigned)(n < 1 ? 1 : n > cap ? cap : n);
}

template <typename T, int RC, int RR>
static void down_launch(Backend *be, float *a, const T *X, int ldx, const float *A, int N, int in, int r, float p,
                        uint64_t key) {
    size_t rows = (size_t)DROP_WARPS * RR;
    dim3 grid(cap_grid(((size_t)N + rows - 1) / rows, (size_t)1 << 20), (unsigned)((r + RC - 1) / RC));
    k_lora_down_dropout<T, RC, RR><<<grid, DROP_THREADS, 0, cuda_ctx(be)->stream>>>(a, X, ldx, A, N, in, r, p,
                                                                                    1.0f - p, key);
    launch_check("lora_down_dropout");
}

// RR x RC = 64 accumulators per lane, or 32 when the larger row blocks would leave SMs without one
template <typename T, int RC>
static void down_rows(Backend *be, float *a, const T *X, int ldx, const float *A, int N, int in, int r, float p,
                      uint64_t key) {
    constexpr int RR_BIG = 64 / RC, RR_SMALL = 32 / RC > 0 ? 32 / RC : 1;
    size_t blocks_big = ((size_t)N + DROP_WARPS * RR_BIG - 1) / (DROP_WARPS * RR_BIG);
    if (RR_SMALL < RR_BIG && blocks_big < (size_t)sm_count(be))
        down_launch<T, RC, RR_SMALL>(be, a, X, ldx, A, N, in, r, p, key);
    else
        down_launch<T, RC, RR_BIG>(be, a, X, ldx, A, N, in, r, p, key);
}

template <typename T>
static void down_typed(Backend *be, float *a, const T *X, int ldx, const float *A, int N, int in, int r, float p,
                       uint64_t key) {
    if (r <= 8) down_rows<T, 8>(be, a, X, ldx, A, N, in, r, p, key);
    else if (r <= 16) down_rows<T, 16>(be, a, X, ldx, A, N, in, r, p, key);
    else if (r <= 32) down_rows<T, 32>(be, a, X, ldx, A, N, in, r, p, key);
    else down_rows<T, 64>(be, a, X, ldx, A, N, in, r, p, key);  // r > 64: blockIdx.y walks chunks of 64
}

static void cu_lora_down_dropout(Backend *be, float *a, const void *X, int ldx, int x_wf, const float *A, int N,
                                 int in, int r, float p, uint64_t key) {
    drop_check("lora_down_dropout", N, in, r, ldx, p);
    check(x_wf == 0 || x_wf == 1, "lora_down_dropout: x_wf %d is neither 0 nor 1", x_wf);
    if (N == 0) return;
    if (x_is_bf16(be, x_wf)) down_typed(be, a, (const __nv_bfloat16 *)X, ldx, A, N, in, r, p, key);
    else down_typed(be, a, (const float *)X, ldx, A, N, in, r, p, key);
}

template <typename T, int RC>
static void grad_a_launch(Backend *be, float *out, int direct, const float *da, const T *X, int ldx, int N, int in,
                          int r, int rows_per_chunk, int chunks, float p, uint64_t key) {
    dim3 grid((unsigned)((in + DROP_THREADS - 1) / DROP_THREADS), (unsigned)chunks, (unsigned)((r + RC - 1) / RC));
    k_lora_grad_a_partial<T, RC><<<grid, DROP_THREADS, 0, cuda_ctx(be)->stream>>>(
        out, direct, da, X, ldx, N, in, r, rows_per_chunk, p, 1.0f - p, key);
    launch_check("lora_grad_a_dropout");
}

template <typename T>
static void grad_a_typed(Backend *be, float *out, int direct, const float *da, const T *X, int ldx, int N, int in,
                         int r, int rows_per_chunk, int chunks, float p, uint64_t key) {
#define GA(RC) grad_a_launch<T, RC>(be, out, direct, da, X, ldx, N, in, r, rows_per_chunk, chunks, p, key)
    if (r <= 4) GA(4);
    else if (r <= 8) GA(8);
    else if (r <= 16) GA(16);
    else if (r <= 32) GA(32);
    else GA(64);  // r > 64: blockIdx.z walks chunks of 64
#undef GA
}

static void cu_lora_grad_a_dropout(Backend *be, float *dA, const float *da, const void *X, int ldx, int x_wf, int N,
                                   int in, int r, float p, uint64_t key) {
    drop_check("lora_grad_a_dropout", N, in, r, ldx, p);
    check(x_wf == 0 || x_wf == 1, "lora_grad_a_dropout: x_wf %d is neither 0 nor 1", x_wf);
    if (N == 0) return;  // dA += 0
    // the chunks: a function of N only (the same sums in the same order on every run and GPU)
    int chunks = (N + GA_ROWS_PER_CHUNK - 1) / GA_ROWS_PER_CHUNK;
    if (chunks > BACKEND_CUDA_LORA_DROP_CHUNKS) chunks = BACKEND_CUDA_LORA_DROP_CHUNKS;
    const int rows_per_chunk = (N + chunks - 1) / chunks;
    chunks = (N + rows_per_chunk - 1) / rows_per_chunk;  // none empty
    const size_t nel = (size_t)r * (size_t)in;
    float *out = dA;
    if (chunks > 1) out = cuda_scratch(be, (size_t)chunks * nel, "lora_grad_a_dropout partials [chunks, r, in]");
    const int direct = chunks == 1;
    if (x_is_bf16(be, x_wf))
        grad_a_typed(be, out, direct, da, (const __nv_bfloat16 *)X, ldx, N, in, r, rows_per_chunk, chunks, p, key);
    else grad_a_typed(be, out, direct, da, (const float *)X, ldx, N, in, r, rows_per_chunk, chunks, p, key);
    if (direct) return;
    k_lora_grad_a_sum<<<cuda_blocks(nel), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(dA, out, chunks, nel);
    launch_check("lora_grad_a_dropout (chunk sum)");
}

static void cu_lora_dx_dropout(Backend *be, float *dX, const float *da, const float *A, int N, int in, int r, float p,
                               uint64_t key) {
    drop_check("lora_dx_dropout", N, in, r, in, p);
    if (N == 0) return;
    cudaStream_t st = cuda_ctx(be)->stream;
    const unsigned gx = (unsigned)((in + DROP_THREADS - 1) / DROP_THREADS);
    const float ks = 1.0f - p;
    if (r > DROP_MAX_RC) {
        dim3 grid(gx, cap_grid((size_t)N, 65535));
        k_lora_dx_dropout_any<<<grid, DROP_THREADS, 0, st>>>(dX, da, A, N, in, r, p, ks, key);
        launch_check("lora_dx_dropout");
        return;
    }
    dim3 grid(gx, cap_grid(((size_t)N + DROP_ROWS - 1) / DROP_ROWS, 65535));
#define DX(RC) k_lora_dx_dropout<RC><<<grid, DROP_THREADS, 0, st>>>(dX, da, A, N, in, r, p, ks, key)
    if (r <= 4) DX(4);
    else if (r <= 8) DX(8);
    else if (r <= 16) DX(16);
    else if (r <= 32) DX(32);
    else DX(64);
#undef DX
    launch_check("lora_dx_dropout");
}

void cuda_install_lora_dropout(Backend *be) {
    be->lora_down_dropout = cu_lora_down_dropout;
    be->lora_grad_a_dropout = cu_lora_grad_a_dropout;
    be->lora_dx_dropout = cu_lora_dx_dropout;
}
