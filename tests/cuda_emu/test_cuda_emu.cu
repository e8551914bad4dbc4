// test_cuda_emu.cu: the CUDA emulator's own test (tests/cuda_emu/), in plain CUDA C that nvcc compiles too. It checks
// grid and block coordinates; __syncthreads over static and dynamic shared memory, full and partial warps; the warp
// shuffles (int, float, double; widths 32 and 8; long back-to-back runs) and __match_any_sync; cuBLAS (Sgemm in all
// four transposes, GemmEx and GemmBatchedEx with bf16, the leading-dimension check); bf16 rounding; launch limits;
// and, emulator only, the thread order (ACTLORA_CUDA_EMU_ORDER), fresh memory reading as NaN and the emulator's
// deaths (out-of-bounds access to device or dynamic shared memory, a __syncthreads / __syncwarp deadlock, bad
// cudaMemcpy pointers, a shuffle from a lane outside the block; built with UBSan's alignment check, a misaligned
// float4 load), each in a fork()ed child.
// Every expected value is computed on the host in plain loops. Built against the emulator:
//   python3 tests/cuda_emu/cu2cpp.py tests/cuda_emu/test_cuda_emu.cu test_cuda_emu.cpp
//   g++ -std=c++17 -O2 -ffp-contract=off -Itests/cuda_emu/include -Itests/cuda_emu test_cuda_emu.cpp tests/cuda_emu/cuda_emu.cpp
//       tests/cuda_emu/cublas_emu.cpp -o test_cuda_emu
// or by nvcc (-lcublas) for a GPU, where the emulator-only checks are skipped. Exit status 0: every check passed.
#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <math.h>

#include "emu_check.h"

static unsigned g_rng = 12345u;
static int rnd(int lo, int hi) {
    g_rng = g_rng * 1664525u + 1013904223u;
    return lo + (int)((g_rng >> 8) % (unsigned)(hi - lo + 1));
}

// got vs want: exact when tol is 0, else |got - want| <= tol * scale[i]
static void check_vals(const char *what, const double *got, const double *want, int n, double tol,
                       const double *scale) {
    int bad = 0, f = -1;
    for (int i = 0; i < n; i++)
        if (!(tol == 0.0 ? got[i] == want[i] : fabs(got[i] - want[i]) <= tol * scale[i]) && bad++ == 0) f = i;
    report(bad == 0, what, "%d of %d wrong, first [%d]: got %.17g, expected %.17g", bad, n, f, f < 0 ? 0.0 : got[f],
           f < 0 ? 0.0 : want[f]);
}
// ------------------------------------------------------------------------------------------- 1. coordinates

static __global__ void k_coords(int *rec, int *count) {
    int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    int gid = (b * blockDim.z + threadIdx.z) * blockDim.x * blockDim.y + threadIdx.y * blockDim.x + threadIdx.x;
    int *r = rec + 8 * gid;
    r[0] = gid, r[1] = threadIdx.x, r[2] = threadIdx.y, r[3] = threadIdx.z;
    r[4] = blockIdx.x, r[5] = blockIdx.y, r[6] = blockIdx.z;
    r[7] = ((((gridDim.x * 16 + gridDim.y) * 16 + gridDim.z) * 16 + blockDim.x) * 16 + blockDim.y) * 16 + blockDim.z;
    atomicAdd(&count[gid], 1);
}

static void test_coords(void) {  // grid 3x4x2 and block 8x4x2: x, y, z all differ in the grid
    enum { GX = 3, GY = 4, GZ = 2, BX = 8, BY = 4, BZ = 2, N = GX * GY * GZ * BX * BY * BZ };
    static int got[8 * N], want[8 * N], cnt[N], one[N];
    int *rec, *count;
    CK(cudaMalloc(&rec, sizeof got));
    CK(cudaMalloc(&count, sizeof cnt));
    CK(cudaMemset(count, 0, sizeof cnt));
    k_coords<<<dim3(GX, GY, GZ), dim3(BX, BY, BZ)>>>(rec, count);
    SYNC();
    to_host(got, rec, sizeof got);
    to_host(cnt, count, sizeof cnt);
    for (int bz = 0; bz < GZ; bz++) for (int by = 0; by < GY; by++) for (int bx = 0; bx < GX; bx++)
        for (int tz = 0; tz < BZ; tz++) for (int ty = 0; ty < BY; ty++) for (int tx = 0; tx < BX; tx++) {
            int gid = ((bz * GY + by) * GX + bx) * (BX * BY * BZ) + (tz * BY + ty) * BX + tx, *w = want + 8 * gid;
            w[0] = gid, w[1] = tx, w[2] = ty, w[3] = tz, w[4] = bx, w[5] = by, w[6] = bz;
            w[7] = ((((GX * 16 + GY) * 16 + GZ) * 16 + BX) * 16 + BY) * 16 + BZ;
            one[gid] = 1;
        }
    check_ints("3-D grid 3x4x2, block 8x4x2: global id, threadIdx, blockIdx, dims of every thread", got, want, 8 * N);
    check_ints("3-D grid: every global id written exactly once", cnt, one, N);
    CK(cudaFree(rec)), CK(cudaFree(count));
}

// ------------------------------------------------------------------------------------------- 2, 3, 6. barriers

// halving (blockDim a power of two) or interleaved (any blockDim) tree reduction
static __global__ void k_reduce(const int *in, int *out, int halving) {
    __shared__ int s[1024];
    int t = threadIdx.x, n = blockDim.x;
    s[t] = in[blockIdx.x * n + t];
    __syncthreads();
    for (int h = halving ? n / 2 : 1; halving ? h > 0 : h < n; h = halving ? h / 2 : 2 * h) {
        if (halving ? t < h : t % (2 * h) == 0 && t + h < n) s[t] += s[t + h];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

// a = in reversed, then out[t] = 3 a[(t + 1) % n] + a[t]: reads after writes and writes after reads, each fenced
static __global__ void k_reverse(const int *in, int *out) {
    __shared__ int s[1024];
    int t = threadIdx.x, n = blockDim.x, base = blockIdx.x * n;
    s[t] = in[base + t];
    __syncthreads();
    int a = s[n - 1 - t];
    __syncthreads();
    s[t] = 3 * a;
    __syncthreads();
    out[base + t] = s[(t + 1) % n] + a;
}

// the block's n * per ints staged in dynamic shared memory, each thread a weighted sum over another thread's
// column, then the block's sum of those in the same memory
static __global__ void k_dyn(const int *in, int *out, int per) {
    extern __shared__ int dsm[];
    int t = threadIdx.x, n = blockDim.x, acc = 0;
    for (int i = 0; i < per; i++) dsm[i * n + t] = in[blockIdx.x * n * per + i * n + t];
    __syncthreads();
    for (int i = 0; i < per; i++) acc += dsm[(per - 1 - i) * n + (n - 1 - t)] * (i + 1);
    __syncthreads();
    dsm[t] = acc;
    __syncthreads();
    for (int h = 1; h < n; h *= 2) {
        if (t % (2 * h) == 0 && t + h < n) dsm[t] += dsm[t + h];
        __syncthreads();
    }
    out[blockIdx.x * (n + 1) + t] = acc;
    if (t == 0) out[blockIdx.x * (n + 1) + n] = dsm[0];
}

// each warp's sum by shuffles under the mask of the lanes that exist (a partial last warp's too)
static __global__ void k_warp_sums(const int *in, int *out) {
    int t = threadIdx.x, n = blockDim.x, l = t % 32, wn = n - (t - l) < 32 ? n - (t - l) : 32;
    unsigned mask = wn == 32 ? 0xffffffffu : (1u << wn) - 1u;
    int v = in[blockIdx.x * n + t];
    for (int o = 16; o > 0; o >>= 1) {
        int u = __shfl_sync(mask, v, l + o < wn ? l + o : l);
        v += l + o < wn ? u : 0;
    }
    if (l == 0) out[blockIdx.x * 4 + t / 32] = v;
}

static void test_barriers(void) {
    static int hin[20480], hout[4096], want[4096];
    char what[160];
    for (int i = 0; i < 20480; i++) hin[i] = rnd(-1000, 1000);
    int *din = (int *)dev_copy(hin, sizeof hin), *dout, grid = 3;
    CK(cudaMalloc(&dout, sizeof hout));
    const int sizes[5] = {256, 128, 40, 70, 1024};  // 2: power-of-two blocks; 6: partial last warps
    for (int c = 0; c < 5; c++) {
        int n = sizes[c];
        k_reduce<<<grid, n>>>(din, dout, c < 2);
        SYNC();
        to_host(hout, dout, grid * sizeof(int));
        for (int b = 0; b < grid; b++) {
            want[b] = 0;
            for (int t = 0; t < n; t++) want[b] += hin[b * n + t];
        }
        snprintf(what, sizeof what, "__syncthreads: static shared tree reduction, %d blocks of %d threads", grid, n);
        check_ints(what, hout, want, grid);
        if (c == 4) break;
        k_reverse<<<grid, n>>>(din, dout);
        SYNC();
        to_host(hout, dout, grid * n * sizeof(int));
        for (int b = 0; b < grid; b++)
            for (int t = 0; t < n; t++) want[b * n + t] = 3 * hin[b * n + n - 1 - (t + 1) % n] + hin[b * n + n - 1 - t];
        snprintf(what, sizeof what, "__syncthreads: shared reversal, neighbour read, %d blocks of %d threads", grid, n);
        check_ints(what, hout, want, grid * n);
    }
    const int dn[2] = {128, 96}, dper[2] = {4, 100};  // 3: dynamic shared memory of a size given at launch
    for (int c = 0; c < 2; c++) {
        int n = dn[c], per = dper[c];
        size_t smem = (size_t)n * per * sizeof(int);
        k_dyn<<<2, n, smem>>>(din, dout, per);
        SYNC();
        to_host(hout, dout, 2 * (n + 1) * sizeof(int));
        for (int b = 0; b < 2; b++) {
            want[b * (n + 1) + n] = 0;
            for (int t = 0; t < n; t++) {
                int acc = 0;
                for (int i = 0; i < per; i++) acc += hin[b * n * per + (per - 1 - i) * n + (n - 1 - t)] * (i + 1);
                want[b * (n + 1) + t] = acc;
                want[b * (n + 1) + n] += acc;
            }
        }
        snprintf(what, sizeof what, "dynamic shared memory (%zu bytes), 2 blocks of %d threads: sums, reduction", smem,
                 n);
        check_ints(what, hout, want, 2 * (n + 1));
    }
    for (int n = 40; n <= 70; n += 30) {  // 6: shuffles within partial warps, under the existing lanes' mask
        int nw = (n + 31) / 32, g2[12], w2[12];
        k_warp_sums<<<grid, n>>>(din, dout);
        SYNC();
        to_host(hout, dout, grid * 4 * sizeof(int));
        for (int b = 0; b < grid; b++)
            for (int w = 0; w < nw; w++) {
                g2[b * nw + w] = hout[b * 4 + w], w2[b * nw + w] = 0;
                for (int t = w * 32; t < n && t < w * 32 + 32; t++) w2[b * nw + w] += hin[b * n + t];
            }
        snprintf(what, sizeof what, "partial last warp: shuffle sums under the existing lanes' mask, blocks of %d", n);
        check_ints(what, g2, w2, grid * nw);
    }
    CK(cudaFree(din)), CK(cudaFree(dout));
}

// ------------------------------------------------------------------------------------------- 4, 5. warp operations

#define NPAT 9
static const char *const pat_name[NPAT] = {
    "down-sync tree reduction", "xor-sync butterfly sum", "sync broadcast from lane 5", "up-sync inclusive prefix sum",
    "down-sync by 3", "up-sync by 3", "sync from lane+9 (mod width)", "xor-sync by 8", "sync from lane 31-lane"};

template <typename T>
__global__ void k_shfl(const T *in, T *out, int width) {  // 2-D blocks: lanes run over the linear thread id
    const unsigned full = 0xffffffffu;
    int t = threadIdx.y * blockDim.x + threadIdx.x, nt = blockDim.x * blockDim.y, lane = t % 32;
    int n = gridDim.x * nt, tid = blockIdx.x * nt + t;
    T v = in[tid], r = v;
    for (int o = width / 2; o > 0; o >>= 1) r += __shfl_down_sync(full, r, o, width);
    out[0 * n + tid] = r;
    r = v;
    for (int m = 1; m < width; m <<= 1) r += __shfl_xor_sync(full, r, m, width);
    out[1 * n + tid] = r;
    out[2 * n + tid] = __shfl_sync(full, v, 5, width);
    r = v;
    for (int o = 1; o < width; o <<= 1) {
        T u = __shfl_up_sync(full, r, o, width);
        if (lane % width >= o) r += u;
    }
    out[3 * n + tid] = r;
    out[4 * n + tid] = __shfl_down_sync(full, v, 3, width);
    out[5 * n + tid] = __shfl_up_sync(full, v, 3, width);
    out[6 * n + tid] = __shfl_sync(full, v, lane + 9, width);
    out[7 * n + tid] = __shfl_xor_sync(full, v, 8, width);
    out[8 * n + tid] = __shfl_sync(full, v, 31 - lane, width);
}

// CUDA's documented semantics lane by lane: a source past the lane's segment (down, xor) or before it (up) gives
// the lane its own value; xor may read an earlier segment; __shfl_sync's source lane is taken modulo the width
static void shfl_expected(const double *x, int n, int w, double *e) {
    for (int w0 = 0; w0 < n; w0 += 32) {
        const double *v = x + w0;
        double cur[32], nxt[32];
        memcpy(cur, v, sizeof cur);
        for (int o = w / 2; o > 0; o >>= 1) {
            for (int l = 0; l < 32; l++) nxt[l] = cur[l] + (l + o < l / w * w + w ? cur[l + o] : cur[l]);
            memcpy(cur, nxt, sizeof cur);
        }
        for (int l = 0; l < 32; l++) {
            int b = l / w * w;
            double seg = 0, pre = 0, *o = e + w0 + l;
            for (int j = b; j < b + w; j++) seg += v[j], pre += j <= l ? v[j] : 0.0;
            o[0] = cur[l], o[n] = seg, o[2 * n] = v[b + 5], o[3 * n] = pre;
            o[4 * n] = l + 3 < b + w ? v[l + 3] : v[l];
            o[5 * n] = l - 3 >= b ? v[l - 3] : v[l];
            o[6 * n] = v[b + (l + 9) % w];
            o[7 * n] = (l ^ 8) < b + w ? v[l ^ 8] : v[l];
            o[8 * n] = v[b + (31 - l) % w];
        }
    }
}

// kind 0: int; 1: float quarters; 2: double with bits in both 32-bit halves. Every sum is exact.
template <typename T>
static void test_shfl(const char *tname, int kind) {
    enum { N = 128 };
    T hin[N], hout[NPAT * N];
    double x[N], got[NPAT * N], want[NPAT * N];
    char what[160];
    for (int i = 0; i < N; i++) {
        x[i] = kind == 0 ? (i * 37) % 101 - 50 : kind == 1 ? ((i * 13) % 29 - 14) * 0.25 : i % 11 + ldexp(i, -40);
        hin[i] = (T)x[i];
    }
    T *din = (T *)dev_copy(hin, sizeof hin), *dout;
    CK(cudaMalloc(&dout, sizeof hout));
    for (int w = 32; w >= 8; w -= 24) {
        k_shfl<T><<<2, dim3(16, 4)>>>(din, dout, w);
        SYNC();
        to_host(hout, dout, sizeof hout);
        for (int i = 0; i < NPAT * N; i++) got[i] = (double)hout[i];
        shfl_expected(x, N, w, want);
        for (int p = 0; p < NPAT; p++) {
            snprintf(what, sizeof what, "shuffle %s, width %d: %s", tname, w, pat_name[p]);
            check_vals(what, got + p * N, want + p * N, N, 0.0, NULL);
        }
    }
    CK(cudaFree(din)), CK(cudaFree(dout));
}

// iters back-to-back rotations, an int one way and a double the other, a __syncwarp now and then
static __global__ void k_rotate(const int *in, int *out, double *dout, int iters) {
    int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z), lane = t % 32;
    int g = blockIdx.x * blockDim.x * blockDim.y * blockDim.z + t, v = in[g];
    double d = (double)in[g] * 4294967296.0 + 0.25;
    for (int i = 0; i < iters; i++) {
        v = __shfl_sync(0xffffffffu, v, (lane + 1) % 32);
        d = __shfl_sync(0xffffffffu, d, (lane + 31) % 32);
        if (i % 7 == 3) __syncwarp();
    }
    out[g] = v, dout[g] = d;
}

static __global__ void k_match(int *out) {
    int t = threadIdx.x, lane = t % 32;
    out[3 * t + 0] = (int)__match_any_sync(0xffffffffu, lane % 3);
    out[3 * t + 1] = (int)__match_any_sync(0xffffffffu, lane / 7);
    out[3 * t + 2] = lane % 2 == 0 ? (int)__match_any_sync(0x55555555u, t % 3) : 0xdead;
}

// warp operations with different masks in flight at once: lanes 0-15 sync among themselves first (and lanes 0-7
// swap neighbours), then the whole warp shuffles; CUDA releases each group on its own
static __global__ void k_split_warp(int *out) {
    int lane = threadIdx.x % 32, v = lane * 10;
    if (lane < 16) __syncwarp(0x0000ffffu);
    if (lane < 8) v = __shfl_xor_sync(0x000000ffu, v, 1);
    out[threadIdx.x] = __shfl_sync(0xffffffffu, v, (lane + 16) % 32);
}

static void test_warp_ops(void) {
    test_shfl<int>("int", 0);
    test_shfl<float>("float", 1);
    test_shfl<double>("double", 2);
    enum { N = 128, IT = 100 };  // back-to-back rotations in 3-D blocks (lanes counted over the linear thread id)
    int hin[N], hout[N], want[N], *din, *dout;
    double dgot[N], dwant[N], *ddout;
    for (int i = 0; i < N; i++) hin[i] = rnd(0, 999);
    din = (int *)dev_copy(hin, sizeof hin);
    CK(cudaMalloc(&dout, sizeof hout));
    CK(cudaMalloc(&ddout, sizeof dgot));
    k_rotate<<<2, dim3(8, 4, 2)>>>(din, dout, ddout, IT);
    SYNC();
    to_host(hout, dout, sizeof hout);
    to_host(dgot, ddout, sizeof dgot);
    for (int g = 0; g < N; g++) {
        int w0 = g / 32 * 32, l = g % 32;
        want[g] = hin[w0 + (l + IT) % 32];
        dwant[g] = (double)hin[w0 + ((l - IT) % 32 + 32) % 32] * 4294967296.0 + 0.25;
    }
    check_ints("100 back-to-back int shuffles (rotation by one lane), 3-D blocks", hout, want, N);
    check_vals("100 back-to-back double shuffles (rotation the other way), interleaved", dgot, dwant, N, 0.0, NULL);
    CK(cudaFree(din)), CK(cudaFree(dout)), CK(cudaFree(ddout));
    int *dm, gm[3 * 64], wm[3 * 64];  // 5. __match_any_sync, two warps
    CK(cudaMalloc(&dm, sizeof gm));
    k_match<<<1, 64>>>(dm);
    SYNC();
    to_host(gm, dm, sizeof gm);
    for (int t = 0; t < 64; t++) {
        unsigned a = 0, b = 0, c = 0;
        int l = t % 32;
        for (int j = 0; j < 32; j++) {
            a |= (unsigned)(j % 3 == l % 3) << j;
            b |= (unsigned)(j / 7 == l / 7) << j;
            c |= (unsigned)(j % 2 == 0 && (t - l + j) % 3 == t % 3) << j;
        }
        wm[3 * t] = (int)a, wm[3 * t + 1] = (int)b, wm[3 * t + 2] = l % 2 == 0 ? (int)c : 0xdead;
    }
    check_ints("__match_any_sync: lane%3, lane/7 (full mask), tid%3 on the even lanes' mask", gm, wm, 3 * 64);
    CK(cudaFree(dm));
    int *ds, gs[64], ws[64];
    CK(cudaMalloc(&ds, sizeof gs));
    k_split_warp<<<1, 64>>>(ds);
    SYNC();
    to_host(gs, ds, sizeof gs);
    for (int t = 0; t < 64; t++) {
        int src = (t % 32 + 16) % 32;
        ws[t] = (src < 8 ? (src ^ 1) : src) * 10;
    }
    check_ints("warp operations of different masks in flight (__syncwarp / xor on 8 lanes, then the full warp)", gs, ws,
               64);
    CK(cudaFree(ds));
}

// ------------------------------------------------------------------------------------------- 7. cuBLAS

static float frnd(void) { return (float)rnd(-1000, 1000) / 997.0f; }
static void check_status(const char *what, cublasStatus_t st, const double *got, const double *want, int n, double tol,
                         const double *scale) {
    if (st != CUBLAS_STATUS_SUCCESS) report(0, what, "status %d", (int)st);
    else check_vals(what, got, want, n, tol, scale);
}

static void test_cublas(void) {
    cublasHandle_t h;
    char what[160];
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return report(0, "cublasCreate", "failed");
    // cublasSgemm, every transpose, m n k 5 7 3, leading dimensions larger than needed, alpha 0.5, beta 2 (C
    // preloaded, its padding rows a sentinel that must stay); tolerance 1e-5 of the sum of the terms' magnitudes
    const int m = 5, n = 7, k = 3;
    const float alpha = 0.5f, beta = 2.0f;
    for (int c = 0; c < 4; c++) {
        cublasOperation_t ta = c & 1 ? CUBLAS_OP_T : CUBLAS_OP_N, tb = c & 2 ? CUBLAS_OP_T : CUBLAS_OP_N;
        int lda = (ta == CUBLAS_OP_N ? m : k) + 2, ca = ta == CUBLAS_OP_N ? k : m;
        int ldb = (tb == CUBLAS_OP_N ? k : n) + 3, cb = tb == CUBLAS_OP_N ? n : k, ldc = m + 1, pad_ok = 1;
        float A[128], B[128], C[128], R[128];
        double got[64], want[64], scale[64];
        for (int i = 0; i < lda * ca; i++) A[i] = frnd();
        for (int i = 0; i < ldb * cb; i++) B[i] = frnd();
        for (int i = 0; i < ldc * n; i++) C[i] = i % ldc < m ? frnd() : 12345.0f;
        float *dA = (float *)dev_copy(A, lda * ca * 4), *dB = (float *)dev_copy(B, ldb * cb * 4);
        float *dC = (float *)dev_copy(C, ldc * n * 4);
        cublasStatus_t st = cublasSgemm(h, ta, tb, m, n, k, &alpha, dA, lda, dB, ldb, &beta, dC, ldc);
        to_host(R, dC, ldc * n * 4);
        for (int j = 0; j < n; j++)
            for (int i = 0; i < ldc; i++) {
                pad_ok &= i < m || R[j * ldc + i] == 12345.0f;
                if (i >= m) continue;
                double acc = 0, mag = 0;
                for (int l = 0; l < k; l++) {
                    double a = ta == CUBLAS_OP_N ? A[l * lda + i] : A[i * lda + l];
                    double b = tb == CUBLAS_OP_N ? B[j * ldb + l] : B[l * ldb + j];
                    acc += a * b, mag += fabs(a * b);
                }
                got[j * m + i] = R[j * ldc + i];
                want[j * m + i] = alpha * acc + beta * (double)C[j * ldc + i];
                scale[j * m + i] = alpha * mag + beta * fabs((double)C[j * ldc + i]);
            }
        snprintf(what, sizeof what, "cublasSgemm %c%c 5x7x3, lda %d ldb %d ldc %d, alpha 0.5 beta 2",
                 "NT"[ta == CUBLAS_OP_T], "NT"[tb == CUBLAS_OP_T], lda, ldb, ldc);
        if (!pad_ok) report(0, what, "the padding rows of C were written");
        else check_status(what, st, got, want, m * n, 1e-5, scale);
        CK(cudaFree(dA)), CK(cudaFree(dB)), CK(cudaFree(dC));
    }
    const float one = 1.0f, two = 2.0f, zero = 0.0f;
    {  // cublasGemmEx, bf16 A (transposed) and B, small integers: exact; C fp32 (alpha 1, beta 1) and bf16 (alpha 2,
       // beta 0 over never-written memory: C is not read)
        enum { M = 4, N = 6, K = 9, LDA = K + 1, LDB = K, LDC = M + 2 };
        __nv_bfloat16 A[LDA * M], B[LDB * N], Cb[LDC * N];
        float Ai[LDA * M], Bi[LDB * N], C[LDC * N], R[LDC * N];
        for (int i = 0; i < LDA * M; i++) Ai[i] = (float)rnd(-3, 3), A[i] = __float2bfloat16_rn(Ai[i]);
        for (int i = 0; i < LDB * N; i++) Bi[i] = (float)rnd(-3, 3), B[i] = __float2bfloat16_rn(Bi[i]);
        for (int i = 0; i < LDC * N; i++) C[i] = (float)rnd(-50, 50);
        void *dA = dev_copy(A, sizeof A), *dB = dev_copy(B, sizeof B), *dC = dev_copy(C, sizeof C), *dCb;
        CK(cudaMalloc(&dCb, sizeof Cb));
        cublasStatus_t s1 = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, &one, dA, CUDA_R_16BF, LDA, dB,
                                         CUDA_R_16BF, LDB, &one, dC, CUDA_R_32F, LDC, CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT);
        cublasStatus_t s2 = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, &two, dA, CUDA_R_16BF, LDA, dB,
                                         CUDA_R_16BF, LDB, &zero, dCb, CUDA_R_16BF, LDC, CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT);
        to_host(R, dC, sizeof R);
        to_host(Cb, dCb, sizeof Cb);
        double g1[M * N], w1[M * N], g2[M * N], w2[M * N];
        for (int j = 0; j < N; j++)
            for (int i = 0; i < M; i++) {
                double acc = 0;
                for (int l = 0; l < K; l++) acc += (double)Ai[i * LDA + l] * Bi[j * LDB + l];
                g1[j * M + i] = R[j * LDC + i], w1[j * M + i] = acc + C[j * LDC + i];
                g2[j * M + i] = __bfloat162float(Cb[j * LDC + i]), w2[j * M + i] = 2.0 * acc;
            }
        check_status("cublasGemmEx bf16 x bf16 -> fp32, TN 4x6x9, beta 1: exact", s1, g1, w1, M * N, 0.0, NULL);
        check_status("cublasGemmEx bf16 x bf16 -> bf16, alpha 2, beta 0 on unwritten C: exact", s2, g2, w2, M * N, 0.0,
                     NULL);
        CK(cudaFree(dA)), CK(cudaFree(dB)), CK(cudaFree(dC)), CK(cudaFree(dCb));
    }
    {  // cublasGemmBatchedEx: 3 batches through device pointer arrays; then ldc < m: CUBLAS_STATUS_INVALID_VALUE
        enum { NB = 3, M = 3, N = 4, K = 5, LDC = M + 2 };
        __nv_bfloat16 A[NB][M * K], B[NB][K * N];
        float Af[NB][M * K], Bf[NB][K * N], R[NB][LDC * N], R0[LDC * N];
        const void *pa[NB], *pb[NB];
        void *pc[NB];
        double got[NB * M * N], want[NB * M * N];
        for (int b = 0; b < NB; b++) {
            for (int i = 0; i < M * K; i++) Af[b][i] = (float)rnd(-4, 4), A[b][i] = __float2bfloat16_rn(Af[b][i]);
            for (int i = 0; i < K * N; i++) Bf[b][i] = (float)rnd(-4, 4), B[b][i] = __float2bfloat16_rn(Bf[b][i]);
            pa[b] = dev_copy(A[b], sizeof A[b]), pb[b] = dev_copy(B[b], sizeof B[b]);
            CK(cudaMalloc(&pc[b], sizeof R[b]));
        }
        const void **dpa = (const void **)dev_copy(pa, sizeof pa), **dpb = (const void **)dev_copy(pb, sizeof pb);
        void **dpc = (void **)dev_copy(pc, sizeof pc);
        cublasStatus_t st = cublasGemmBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, M, N, K, &one, dpa, CUDA_R_16BF, M, dpb,
                                                CUDA_R_16BF, K, &zero, dpc, CUDA_R_32F, LDC, NB, CUBLAS_COMPUTE_32F,
                                                CUBLAS_GEMM_DEFAULT);
        for (int b = 0; b < NB; b++) {
            to_host(R[b], pc[b], sizeof R[b]);
            for (int j = 0; j < N; j++)
                for (int i = 0; i < M; i++) {
                    double acc = 0;
                    for (int l = 0; l < K; l++) acc += (double)Af[b][l * M + i] * Bf[b][j * K + l];
                    got[(b * N + j) * M + i] = R[b][j * LDC + i], want[(b * N + j) * M + i] = acc;
                }
        }
        check_status("cublasGemmBatchedEx bf16 -> fp32, 3 batches via device pointer arrays", st, got, want,
                     NB * M * N, 0.0, NULL);
        st = cublasGemmBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, M, N, K, &one, dpa, CUDA_R_16BF, M, dpb, CUDA_R_16BF, K,
                                 &zero, dpc, CUDA_R_32F, M - 1, NB, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        to_host(R0, pc[0], sizeof R0);
        int kept = memcmp(R0, R[0], sizeof R0) == 0;
        report(st == CUBLAS_STATUS_INVALID_VALUE && kept,
               "cublasGemmBatchedEx with ldc < m: CUBLAS_STATUS_INVALID_VALUE, C untouched", "status %d, C %s",
               (int)st, kept ? "kept" : "changed");
        for (int b = 0; b < NB; b++) CK(cudaFree((void *)pa[b])), CK(cudaFree((void *)pb[b])), CK(cudaFree(pc[b]));
        CK(cudaFree(dpa)), CK(cudaFree(dpb)), CK(cudaFree(dpc));
    }
    cublasDestroy(h);
}

// ------------------------------------------------------------------------------------------- 8. bf16

static __global__ void k_bf16(const float *in, __nv_bfloat16 *out, float *back, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = __float2bfloat16_rn(in[i]);
    back[i] = __bfloat162float(out[i]);
}

static float f_of(unsigned u) { float f; memcpy(&f, &u, 4); return f; }

static void test_bf16(void) {
    static const unsigned table[][2] = {  // by hand: input bits, round-to-nearest-even bf16 bits
        {0x3f800000u, 0x3f80u}, {0x3f808000u, 0x3f80u},  // 1; 1 + 2^-8: a tie, to the even 1
        {0x3f80c000u, 0x3f81u}, {0x3f818000u, 0x3f82u},  // 1 + 3*2^-9: up; 1 + 2^-7 + 2^-8: a tie, up to even
        {0x3f807fffu, 0x3f80u}, {0xbf80c000u, 0xbf81u},  // just under a tie; negative
        {0x477fe000u, 0x4780u}, {0x7f7fffffu, 0x7f80u},  // 65504 -> 65536; FLT_MAX -> inf
        {0x7f7f7fffu, 0x7f7fu}, {0x7f7f8000u, 0x7f80u},  // largest finite kept; the tie above it: inf
        {0x7f800000u, 0x7f80u}, {0xff800000u, 0xff80u},  // +-inf
        {0x80000000u, 0x8000u}, {0x00018000u, 0x0002u}, {0x00008000u, 0x0000u},  // -0; subnormal ties
        {0x4f000000u, 0x4f00u}, {0xcb800001u, 0xcb80u},  // 2^31; -(2^24 + 2)
    };
    enum { NT = sizeof table / sizeof table[0], NN = 3, NR = 1000, N = NT + NN + NR };
    static const unsigned nans[NN] = {0x7fc00000u, 0x7f800001u, 0xffffffffu};
    static float in[N], back[N];
    static __nv_bfloat16 out[N];
    unsigned short bits[N];
    int g[NT], w[NT], nan_ok = 1, bad = 0, first = -1, rt_bad = 0;
    unsigned first_u = 0;
    for (int i = 0; i < NT; i++) in[i] = f_of(table[i][0]);
    for (int i = 0; i < NN; i++) in[NT + i] = f_of(nans[i]);
    for (int i = 0; i < NR; i++) {  // random finite values, every fourth an exact tie
        unsigned u = (unsigned)rnd(0, 0x7fff) << 17 ^ (unsigned)rnd(0, 0x1ffff);
        if ((u & 0x7f800000u) == 0x7f800000u) u &= 0xbfffffffu;
        in[NT + NN + i] = f_of(i % 4 ? u : (u & 0xffff0000u) | 0x8000u);
    }
    float *din = (float *)dev_copy(in, sizeof in), *dback;
    __nv_bfloat16 *dout;
    CK(cudaMalloc(&dout, sizeof out));
    CK(cudaMalloc(&dback, sizeof back));
    k_bf16<<<(N + 127) / 128, 128>>>(din, dout, dback, N);
    SYNC();
    to_host(out, dout, sizeof out);
    to_host(back, dback, sizeof back);
    memcpy(bits, out, sizeof bits);
    for (int i = 0; i < NT; i++) g[i] = bits[i], w[i] = (int)table[i][1];
    check_ints("__float2bfloat16_rn: ties to even, 65504, FLT_MAX, inf, -0, subnormals (bit patterns)", g, w, NT);
    for (int i = NT; i < NT + NN; i++) nan_ok &= (bits[i] & 0x7f80) == 0x7f80 && (bits[i] & 0x7f) != 0 && isnan(back[i]);
    report(nan_ok, "__float2bfloat16_rn: NaNs stay NaN (quiet, signalling with a low payload, negative)",
           "bits 0x%04x 0x%04x 0x%04x", bits[NT], bits[NT + 1], bits[NT + 2]);
    for (int i = NT + NN; i < N; i++) {  // the host's rounding: from the discarded half, not by an addition
        unsigned u;
        memcpy(&u, &in[i], 4);
        unsigned hi = u >> 16, rem = u & 0xffffu;
        if (rem > 0x8000u || (rem == 0x8000u && (hi & 1u))) hi++;
        if (bits[i] != (unsigned short)hi && bad++ == 0) first = i, first_u = u;
        rt_bad += back[i] != f_of((unsigned)bits[i] << 16);
    }
    report(bad == 0, "__float2bfloat16_rn: 1000 random values (250 exact ties) vs a host rounding",
           "%d wrong, first input 0x%08x gave 0x%04x", bad, first_u, first < 0 ? 0u : (unsigned)bits[first]);
    report(rt_bad == 0, "__bfloat162float: exact widening of every result", "%d wrong", rt_bad);
    CK(cudaFree(din)), CK(cudaFree(dout)), CK(cudaFree(dback));
}

// ------------------------------------------------------------------------------------------- 9, 10. limits, deaths

static __global__ void k_count(int *p) { atomicAdd(p, 1); }

static void test_launch_limits(void) {  // 9c; not a death: the launch fails, cudaGetLastError says so once
    int *d, v = -1;
    CK(cudaMalloc(&d, sizeof(int)));
    CK(cudaMemset(d, 0, sizeof(int)));
    k_count<<<2, 1024>>>(d);
    cudaError_t e1 = cudaGetLastError(), e2;
    CK(cudaDeviceSynchronize());
    to_host(&v, d, sizeof v);
    report(e1 == cudaSuccess && v == 2048, "launch of 2 blocks of 1024 threads runs every thread", "error %d, count %d",
           (int)e1, v);
    CK(cudaMemset(d, 0, sizeof(int)));
    k_count<<<1, 2048>>>(d);
    e1 = cudaGetLastError(), e2 = cudaGetLastError();
    to_host(&v, d, sizeof v);
    report(e1 != cudaSuccess && e2 == cudaSuccess && v == 0,
           "launch of 2048 threads per block: cudaGetLastError reports it once, nothing runs",
           "errors %d then %d, count %d", (int)e1, (int)e2, v);
    k_count<<<1, dim3(1, 1, 65)>>>(d);
    e1 = cudaGetLastError();
    to_host(&v, d, sizeof v);
    report(e1 != cudaSuccess && v == 0, "launch with blockDim.z 65: an error, nothing runs", "error %d, count %d",
           (int)e1, v);
    CK(cudaFree(d));
}

#ifdef __CUDA_EMU__
static __global__ void k_oob_write(float *p, int n) {  // thread n writes one element past the end
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) p[i] = 1.0f;
}
static __global__ void k_oob_read(const float *p, float *out, int n) { out[0] = p[n + threadIdx.x]; }
static __global__ void k_misaligned(const float *p, float *out) {  // a float4 load 4 bytes off its alignment
    float4 v = *(const float4 *)(p + 1);
    out[0] = v.x;
}
static __global__ void k_dyn_oob(int n) {  // thread 0 writes one float past n floats of dynamic shared memory
    extern __shared__ float dyn[];
    if (threadIdx.x == 0) dyn[n] = 1.0f;
}
static __global__ void k_mixed_barriers(int *p) {
    if (threadIdx.x % 32 < 16) __syncthreads();
    else __syncwarp();
    p[threadIdx.x] = 1;
}
static __global__ void k_shfl_missing_lane(int *p) {
    int v = threadIdx.x;
    p[threadIdx.x] = v + __shfl_down_sync(0xffffffffu, v, 16);  // lanes 0-7 of warp 1 read lanes 16-23: none
}
static float *dev_floats(int n) {
    float *d;
    cudaMalloc(&d, n * sizeof(float));
    return d;
}
static void die_oob_write(void) { k_oob_write<<<5, 256>>>(dev_floats(1024), 1024); }
static void die_oob_read(void) { k_oob_read<<<1, 1>>>(dev_floats(1024), dev_floats(1), 1024); }
static void die_misaligned(void) { k_misaligned<<<1, 1>>>(dev_floats(64), dev_floats(1)); }
static void die_dyn_oob(void) { k_dyn_oob<<<1, 32, 64 * sizeof(float)>>>(64); }
static void die_deadlock(void) { k_mixed_barriers<<<1, 32>>>((int *)dev_floats(32)); }
static void die_shfl(void) { k_shfl_missing_lane<<<1, 40>>>((int *)dev_floats(40)); }
static void die_memcpy_host(void) {
    static float dst[16], src[16];
    cudaMemcpy(dst, src, sizeof src, cudaMemcpyHostToDevice);
}
static void die_memcpy_past_end(void) {
    static char src[4096];
    cudaMemcpy((char *)dev_floats(1024) + 1, src, sizeof src, cudaMemcpyHostToDevice);
}

// seq[g] = the position at which thread g (global linear id) ran, counted by one shared counter
static __global__ void k_order(int *seq, int *counter) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    seq[g] = atomicAdd(counter, 1);
}

// ACTLORA_CUDA_EMU_ORDER: unset or "forward" runs blocks, warps and lanes first to last, "reverse" last to first
// (ctest runs this test both ways: test_cuda_emu and test_cuda_emu_reverse)
static void test_order(void) {
    enum { NB = 3, NT = 70, N = NB * NT };
    int *seq, *counter, got[N], want[N];
    CK(cudaMalloc(&seq, sizeof got));
    CK(cudaMalloc(&counter, sizeof(int)));
    CK(cudaMemset(counter, 0, sizeof(int)));
    k_order<<<NB, NT>>>(seq, counter);
    SYNC();
    to_host(got, seq, sizeof got);
    const char *o = getenv("ACTLORA_CUDA_EMU_ORDER");
    int rev = o && strcmp(o, "reverse") == 0;
    for (int g = 0; g < N; g++) want[g] = rev ? N - 1 - g : g;
    check_ints(rev ? "ACTLORA_CUDA_EMU_ORDER=reverse: blocks, warps and lanes run last to first"
                   : "default order: blocks, warps and lanes run first to last",
               got, want, N);
    CK(cudaFree(seq)), CK(cudaFree(counter));
}

static void test_emulator_only(void) {
    test_order();
    float *d = dev_floats(64), h[64];  // 10. fresh device memory is 0xff bytes: NaN as floats
    int nan_all = 1;
    to_host(h, d, sizeof h);
    for (int i = 0; i < 64; i++) nan_all &= isnan(h[i]) != 0;
    report(nan_all, "fresh cudaMalloc memory reads as NaN floats", "h[0] = %g", h[0]);
    CK(cudaFree(d));
    expect_death("a kernel writing one float past a 4096-byte allocation dies", die_oob_write, "invalid memory access",
                 "k_oob_write");
    expect_death("a kernel reading one float past a 4096-byte allocation dies", die_oob_read, "invalid memory access",
                 "k_oob_read");
#ifdef CUDA_EMU_CHECK_ALIGNMENT
    expect_death("a kernel loading a float4 4 bytes off its 16-byte alignment dies", die_misaligned,
                 "misaligned address", "float4");
#else
    printf("  not checked: misaligned vector loads (the compiler has no -fsanitize=alignment; docs/emulator.md)\n");
#endif
    expect_death("a kernel writing one float past its 256 bytes of dynamic shared memory dies", die_dyn_oob,
                 "invalid memory access", "k_dyn_oob");
    expect_death("lanes 0-15 at __syncthreads, lanes 16-31 at __syncwarp: deadlock", die_deadlock, "deadlock",
                 "k_mixed_barriers");
    expect_death("cudaMemcpy host-to-device into a host pointer dies", die_memcpy_host,
                 "not inside one device allocation", NULL);
    expect_death("cudaMemcpy host-to-device one byte past an allocation dies", die_memcpy_past_end,
                 "not inside one device allocation", NULL);
    expect_death("full-mask shuffle in a 40-thread block reading a missing lane dies", die_shfl, "outside the block",
                 "k_shfl_missing_lane");
}
#endif

int main(void) {
    test_coords();
    test_barriers();
    test_warp_ops();
    test_cublas();
    test_bf16();
    test_launch_limits();
#ifdef __CUDA_EMU__
    test_emulator_only();
#else
    printf("  (not the emulator: the fresh-memory and death checks are skipped)\n");
#endif
    printf("test_cuda_emu: %d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
