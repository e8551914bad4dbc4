// test_cuda_emu_wmma.cu: the test of the CUDA emulator's WMMA (tests/cuda_emu/include/mma.h), in plain CUDA C that
// nvcc compiles too. It checks C[32x48] = A[32x64] B[64x48] (+ a bias) from bf16 tiles in six warps, B as
// row_major and as col_major fragments, accumulators started by fill_fragment and by loads of a row- or
// column-major bias, stored row- and column-major; bf16 fill_fragment; the same product staged through
// __shared__ tiles between __syncthreads; and, emulator only, the exact fp32 order of the emulation and its
// deaths: a misaligned pointer (device, shared), a bad ldm, a call outside a kernel, from half a warp, from a
// partial warp, with different pointers in the lanes of a warp. In the race checker's build
// (test_cuda_emu_wmma_race) the staged product must be race-free, and reading another lane's element of a
// stored accumulator without __syncwarp must stop the program as a race. Every expected value is computed on
// the host in plain loops. Exit status 0: every check passed.
#include <cuda_bf16.h>
#include <math.h>
#include <mma.h>

#include "emu_check.h"

using namespace nvcuda;

enum { M = 32, N = 48, K = 64, KC = 32 };  // the product's shape; KC: the k-chunk of the shared-memory version

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

template <typename L> struct IsCol { enum { value = 0 }; };
template <> struct IsCol<wmma::col_major> { enum { value = 1 }; };

static unsigned g_rng = 2024u;
static float rnd_unit(void) {  // in [-1, 1)
    g_rng = g_rng * 1664525u + 1013904223u;
    return (float)((g_rng >> 8) & 0xffffu) / 32768.0f - 1.0f;
}
static float bf16_round(float f) { return __bfloat162float(__float2bfloat16_rn(f)); }

// ------------------------------------------------------------------------------------------- 1. global tiles

// Warp w of the block's six computes the tile (w / 3, w % 3) of C. B: row_major [K x N] (ldm N), or col_major,
// the transposed copy [N x K] (ldm K). bias_layout -1: the accumulator starts at 0 (fill_fragment); 0: at the
// row-major bias [M x N]; 1: at the column-major bias [N x M]. C is stored row-major [M x N] or column-major.
// The first step's mma_sync writes a fragment other than its C, the later ones accumulate in place (D is C).
template <typename LayoutB>
static __global__ void k_gemm(const __nv_bfloat16 *A, const __nv_bfloat16 *B, const float *bias, int bias_layout,
                              float *C, int c_col) {
    int w = threadIdx.x / 32, tm = w / 3, tn = w % 3;
    FragA a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> b;
    FragC c0, acc;
    if (bias_layout < 0) wmma::fill_fragment(c0, 0.0f);
    else if (bias_layout == 0) wmma::load_matrix_sync(c0, bias + tm * 16 * N + tn * 16, N, wmma::mem_row_major);
    else wmma::load_matrix_sync(c0, bias + tn * 16 * M + tm * 16, M, wmma::mem_col_major);
    for (int k0 = 0; k0 < K; k0 += 16) {
        wmma::load_matrix_sync(a, A + tm * 16 * K + k0, K);
        if (IsCol<LayoutB>::value) wmma::load_matrix_sync(b, B + tn * 16 * K + k0, K);
        else wmma::load_matrix_sync(b, B + k0 * N + tn * 16, N);
        wmma::mma_sync(acc, a, b, k0 == 0 ? c0 : acc);
    }
    if (c_col) wmma::store_matrix_sync(C + tn * 16 * M + tm * 16, acc, M, wmma::mem_col_major);
    else wmma::store_matrix_sync(C + tm * 16 * N + tn * 16, acc, N, wmma::mem_row_major);
}

// the host's inputs (bf16-rounded) and their device copies
static float hA[M * K], hB[K * N], hBias[M * N];
static __nv_bfloat16 *dA, *dB, *dBt;
static float *dBias, *dBiasT, *dC;

static void upload(void) {
    static __nv_bfloat16 a[M * K], b[K * N], bt[N * K];
    static float biasT[N * M];
    for (int i = 0; i < M * K; i++) a[i] = __float2bfloat16_rn(hA[i]);
    for (int k = 0; k < K; k++)
        for (int j = 0; j < N; j++) b[k * N + j] = bt[j * K + k] = __float2bfloat16_rn(hB[k * N + j]);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) biasT[j * M + i] = hBias[i * N + j];
    CK(cudaMemcpy(dA, a, sizeof a, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dB, b, sizeof b, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dBt, bt, sizeof bt, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dBias, hBias, sizeof hBias, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dBiasT, biasT, sizeof biasT, cudaMemcpyHostToDevice));
}

// random inputs rounded to bf16 (integers in [-4, 4] when small_ints: every sum is exact in fp32, in any order)
static void make_inputs(int small_ints) {
    for (int i = 0; i < M * K; i++) hA[i] = small_ints ? (float)(int)(4.5f * rnd_unit()) : bf16_round(rnd_unit());
    for (int i = 0; i < K * N; i++) hB[i] = small_ints ? (float)(int)(4.5f * rnd_unit()) : bf16_round(rnd_unit());
    for (int i = 0; i < M * N; i++) hBias[i] = small_ints ? (float)(int)(8.5f * rnd_unit()) : rnd_unit();
    upload();
}

// C (row-major) against the host: in double within rel_tol of sum |terms| (0: exactly), and, in the emulator,
// exactly the fp32 sum the emulation forms: the start value, then the products for k = 0, 1, ..., K - 1
static void check_c(const char *what, const float *got, int with_bias, double rel_tol) {
    int bad = 0, f = -1;
    double fw = 0;
#ifdef __CUDA_EMU__
    int bad_exact = 0, fe = -1;
    double fwe = 0;
#endif
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = with_bias ? hBias[i * N + j] : 0.0, mag = fabs(s);
            for (int k = 0; k < K; k++) {
                double p = (double)hA[i * K + k] * hB[k * N + j];
                s += p, mag += fabs(p);
            }
            double g = got[i * N + j];
            if (!(fabs(g - s) <= rel_tol * mag) && bad++ == 0) f = i * N + j, fw = s;
#ifdef __CUDA_EMU__
            float e = with_bias ? hBias[i * N + j] : 0.0f;
            for (int k = 0; k < K; k++) e += hA[i * K + k] * hB[k * N + j];  // exact products, one rounding per add
            if (g != (double)e && bad_exact++ == 0) fe = i * N + j, fwe = e;
#endif
        }
    char line[256];
    snprintf(line, sizeof line, "%s: against the host's double sum (%s)", what,
             rel_tol ? "within 1e-5 of the sum of |terms|" : "exactly");
    report(bad == 0, line, "%d of %d wrong, first [%d]: got %.9g, expected %.9g", bad, M * N, f,
           f < 0 ? 0.0 : got[f], fw);
#ifdef __CUDA_EMU__
    snprintf(line, sizeof line, "%s: the emulation's fp32 order (start, then k = 0..63), exactly", what);
    report(bad_exact == 0, line, "%d of %d differ, first [%d]: got %.9g, expected %.9g", bad_exact, M * N, fe,
           fe < 0 ? 0.0 : got[fe], fwe);
#endif
}

// runs k_gemm in one configuration and checks it
static void run_gemm(int b_col, int bias_layout, int c_col, double rel_tol, const char *inputs) {
    static float got[M * N], raw[M * N];
    CK(cudaMemset(dC, 0, M * N * sizeof(float)));
    const float *bias = bias_layout == 0 ? dBias : dBiasT;
    if (b_col) k_gemm<wmma::col_major><<<1, 192>>>(dA, dBt, bias, bias_layout, dC, c_col);
    else k_gemm<wmma::row_major><<<1, 192>>>(dA, dB, bias, bias_layout, dC, c_col);
    SYNC();
    to_host(raw, dC, sizeof raw);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) got[i * N + j] = c_col ? raw[j * M + i] : raw[i * N + j];
    char what[200];
    static const char *start[3] = {"fill_fragment(0)", "row-major bias", "column-major bias"};
    snprintf(what, sizeof what, "%s, B %s, C from %s, stored %s", inputs, b_col ? "col_major" : "row_major",
             start[bias_layout + 1], c_col ? "mem_col_major" : "mem_row_major");
    check_c(what, got, bias_layout >= 0, rel_tol);
}

static void test_global(void) {
    make_inputs(0);
    for (int b_col = 0; b_col < 2; b_col++)
        for (int bias_layout = -1; bias_layout < 2; bias_layout++)
            for (int c_col = 0; c_col < 2; c_col++) run_gemm(b_col, bias_layout, c_col, 1e-5, "random bf16");
    make_inputs(1);  // exact on any device: every partial sum is an integer below 2^24
    run_gemm(0, 0, 0, 0.0, "small integers");
    run_gemm(1, 1, 1, 0.0, "small integers");
}

// ------------------------------------------------------------------------------------------- 2. bf16 fill

// one warp: A filled with one bf16 value v, B's first 16 rows: C[i][j] = v * (B[0][j] + ... + B[15][j])
static __global__ void k_fill_a(const __nv_bfloat16 *B, float v, float *C) {
    FragA a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
    FragC acc;
    wmma::fill_fragment(a, __float2bfloat16_rn(v));
    wmma::fill_fragment(acc, 0.0f);
    wmma::load_matrix_sync(b, B, N);
    wmma::mma_sync(acc, a, b, acc);
    wmma::store_matrix_sync(C, acc, 16, wmma::mem_row_major);
}

static void test_fill(void) {
    make_inputs(1);
    float got[256];
    k_fill_a<<<1, 32>>>(dB, 0.5f, dC);
    SYNC();
    to_host(got, dC, sizeof got);
    int bad = 0;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float s = 0.0f;
            for (int k = 0; k < 16; k++) s += hB[k * N + j];
            bad += got[i * 16 + j] != 0.5f * s;
        }
    report(bad == 0, "fill_fragment of a bf16 matrix_a with 0.5: C = 0.5 x the column sums of B (exact)",
           "%d of 256 wrong", bad);
}

// ------------------------------------------------------------------------------------------- 3. shared tiles

// The product again, B row-major, its operands staged in __shared__ tiles KC columns of A / rows of B at a time
// (row strides padded by 8 elements) between __syncthreads; the accumulators are stored to a shared C tile, and
// every thread then copies elements that other warps stored: after a __syncthreads (none when skip_barrier,
// the race the race checker's build must report).
enum { LDA_S = KC + 8, LDB_S = N + 8, LDC_S = N + 8 };
enum { L_SMEM_COPY = __LINE__ + 24 };  // the line of the copy's read of sC
static __global__ void k_gemm_smem(const __nv_bfloat16 *A, const __nv_bfloat16 *B, float *C, int skip_barrier) {
    __shared__ __align__(32) __nv_bfloat16 sA[M * LDA_S];
    __shared__ __align__(32) __nv_bfloat16 sB[KC * LDB_S];
    __shared__ __align__(32) float sC[M * LDC_S];
    int t = threadIdx.x, nt = blockDim.x, w = t / 32, tm = w / 3, tn = w % 3;
    FragA a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
    FragC acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k0 = 0; k0 < K; k0 += KC) {
        if (k0) __syncthreads();  // every warp is done with the previous chunk
        for (int i = t; i < M * KC; i += nt) sA[i / KC * LDA_S + i % KC] = A[i / KC * K + k0 + i % KC];
        for (int i = t; i < KC * N; i += nt) sB[i / N * LDB_S + i % N] = B[(k0 + i / N) * N + i % N];
        __syncthreads();
        for (int kk = 0; kk < KC; kk += 16) {
            wmma::load_matrix_sync(a, sA + tm * 16 * LDA_S + kk, LDA_S);
            wmma::load_matrix_sync(b, sB + kk * LDB_S + tn * 16, LDB_S);
            wmma::mma_sync(acc, a, b, acc);
        }
    }
    wmma::store_matrix_sync(sC + tm * 16 * LDC_S + tn * 16, acc, LDC_S, wmma::mem_row_major);
    if (!skip_barrier) __syncthreads();
    for (int i = nt - 1 - t; i < M * N; i += nt) {  // from the other end: elements of other warps
        float v = sC[i / N * LDC_S + i % N];
        C[i] = v;
    }
}

static void test_shared(void) {
    make_inputs(0);
    static float got[M * N];
    CK(cudaMemset(dC, 0, M * N * sizeof(float)));
    k_gemm_smem<<<1, 192>>>(dA, dB, dC, 0);
    SYNC();
    to_host(got, dC, sizeof got);
    check_c("tiles staged in __shared__ (padded strides, __syncthreads), C through a shared tile", got, 0, 1e-5);
}

// ------------------------------------------------------------------------------------------- 4. emulator only
#ifdef __CUDA_EMU__

// loads a bf16 tile from p with ldm, multiplies it by itself and stores the result to out (ldm 16)
static __global__ void k_wmma_load(const __nv_bfloat16 *p, unsigned ldm, float *out) {
    FragA a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
    FragC acc;
    wmma::fill_fragment(acc, 0.0f);
    wmma::load_matrix_sync(a, p, ldm);
    wmma::load_matrix_sync(b, p, ldm);
    wmma::mma_sync(acc, a, b, acc);
    wmma::store_matrix_sync(out, acc, 16, wmma::mem_row_major);
}
// stores a zero accumulator to out with ldm
static __global__ void k_wmma_store(float *out, unsigned ldm) {
    FragC acc;
    wmma::fill_fragment(acc, 0.0f);
    wmma::store_matrix_sync(out, acc, ldm, wmma::mem_col_major);
}
// a static __shared__ tile, loaded 16 bytes past its (32-byte aligned) start
static __global__ void k_wmma_smem_misaligned(float *out) {
    __shared__ __align__(32) __nv_bfloat16 s[16 * 24 + 8];
    for (int i = threadIdx.x; i < 16 * 24 + 8; i += 32) s[i] = __float2bfloat16_rn(1.0f);
    __syncthreads();
    FragA a;
    wmma::load_matrix_sync(a, s + 8, 24);
    out[threadIdx.x] = 0.0f;
}
// only lanes 0-15 reach mma_sync
static __global__ void k_wmma_half_warp(float *out) {
    FragA a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
    FragC acc;
    wmma::fill_fragment(a, __float2bfloat16_rn(1.0f));
    wmma::fill_fragment(b, __float2bfloat16_rn(1.0f));
    wmma::fill_fragment(acc, 0.0f);
    if (threadIdx.x < 16) wmma::mma_sync(acc, a, b, acc);
    if (threadIdx.x < 16) wmma::store_matrix_sync(out, acc, 16, wmma::mem_row_major);
}
// each lane its own tile pointer
static __global__ void k_wmma_lane_pointers(const __nv_bfloat16 *p, float *out) {
    FragA a;
    wmma::load_matrix_sync(a, p + (threadIdx.x & 1) * 16 * K, K);
    out[threadIdx.x] = 0.0f;
}

static float *dev_floats(int n) {
    float *d;
    CK(cudaMalloc(&d, n * sizeof(float)));
    return d;
}
static void die_misaligned_load(void) { k_wmma_load<<<1, 32>>>(dA + 8, K, dev_floats(256)); }  // 16 bytes
static void die_misaligned_store(void) { k_wmma_store<<<1, 32>>>(dev_floats(1024) + 4, 16); }
static void die_misaligned_smem(void) { k_wmma_smem_misaligned<<<1, 32>>>(dev_floats(32)); }
static void die_ldm_bf16(void) { k_wmma_load<<<1, 32>>>(dA, 20, dev_floats(256)); }
static void die_ldm_float(void) { k_wmma_store<<<1, 32>>>(dev_floats(1024), 18); }
static void die_host(void) {
    FragA a;
    wmma::load_matrix_sync(a, dA, K);
}
static void die_half_warp(void) { k_wmma_half_warp<<<1, 32>>>(dev_floats(256)); }
static void die_partial_warp(void) { k_wmma_load<<<1, 48>>>(dA, K, dev_floats(256)); }
static void die_lane_pointers(void) { k_wmma_lane_pointers<<<1, 32>>>(dA, dev_floats(32)); }

static void test_emulator_only(void) {
    make_inputs(0);
    expect_death("load_matrix_sync from a device pointer 16 bytes off 32-byte alignment dies", die_misaligned_load,
                 "kernel k_wmma_load (",
                 "nvcuda::wmma::load_matrix_sync: the pointer is not 32-byte (256-bit) aligned");
    expect_death("store_matrix_sync to a device pointer 16 bytes off 32-byte alignment dies", die_misaligned_store,
                 "kernel k_wmma_store (",
                 "nvcuda::wmma::store_matrix_sync: the pointer is not 32-byte (256-bit) aligned");
    expect_death("load_matrix_sync from a static __shared__ tile 16 bytes past its start dies", die_misaligned_smem,
                 "kernel k_wmma_smem_misaligned (", "load_matrix_sync: the pointer is not 32-byte (256-bit) aligned");
    expect_death("load_matrix_sync of bf16 with ldm 20 (not a multiple of 8) dies", die_ldm_bf16,
                 "kernel k_wmma_load (", "nvcuda::wmma::load_matrix_sync: ldm 20 is not a multiple of 8");
    expect_death("store_matrix_sync of float with ldm 18 (not a multiple of 4) dies", die_ldm_float,
                 "kernel k_wmma_store (", "nvcuda::wmma::store_matrix_sync: ldm 18 is not a multiple of 4");
    expect_death("load_matrix_sync in host code dies", die_host, "nvcuda::wmma::load_matrix_sync(pointer",
                 "called outside a kernel");
    expect_death("mma_sync by half a warp (the other lanes exit) dies", die_half_warp, "k_wmma_half_warp",
                 "which has exited");
    expect_death("a WMMA call in a warp of 16 threads (a block of 48) dies", die_partial_warp, "kernel k_wmma_load (",
                 "in warp 1, which has 16 threads");
    expect_death("lanes of a warp loading from different pointers dies", die_lane_pointers,
                 "kernel k_wmma_lane_pointers (",
                 "the lanes of a warp make the same WMMA call with the same arguments");
}
#endif

// ------------------------------------------------------------------------------------------- 5. race checker
#ifdef __SANITIZE_THREAD__  // the race checker's build (test_cuda_emu_wmma_race): GCC's -fsanitize=thread

// one warp stores an accumulator (element e = e) to shared memory; each lane then reads the element that the
// next lane stored, after a __syncwarp (sync) or without one (the race)
enum { L_PEEK = __LINE__ + 13 };
static __global__ void k_store_peek(const float *ramp, float *out, int sync) {
    __shared__ __align__(32) float s[256];
    FragC acc;
    FragA a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
    wmma::fill_fragment(a, __float2bfloat16_rn(0.0f));
    wmma::fill_fragment(b, __float2bfloat16_rn(0.0f));
    wmma::load_matrix_sync(acc, ramp, 16, wmma::mem_row_major);
    wmma::mma_sync(acc, a, b, acc);
    wmma::store_matrix_sync(s, acc, 16, wmma::mem_row_major);
    if (sync) __syncwarp();
    int l = threadIdx.x;
    float v = s[(l + 1) % 32];
    out[l] = v;
}

static float *g_ramp;
static void die_store_peek(void) {
    float *out;
    CK(cudaMalloc(&out, 32 * sizeof(float)));
    k_store_peek<<<1, 32>>>(g_ramp, out, 0);
}
static void die_smem_no_barrier(void) {
    float *out;
    CK(cudaMalloc(&out, M * N * sizeof(float)));
    k_gemm_smem<<<1, 192>>>(dA, dB, out, 1);
}

static void test_races(void) {
    float ramp[256], got[32], want[32];
    for (int e = 0; e < 256; e++) ramp[e] = (float)e;
    g_ramp = (float *)dev_copy(ramp, sizeof ramp);
    float *out;
    CK(cudaMalloc(&out, sizeof got));
    k_store_peek<<<1, 32>>>(g_ramp, out, 1);
    SYNC();
    to_host(got, out, sizeof got);
    for (int l = 0; l < 32; l++) want[l] = (float)((l + 1) % 32);
    report(memcmp(got, want, sizeof got) == 0,
           "a stored accumulator's element read by another lane after __syncwarp: no race, the right value",
           "lane 0 read %g, expected %g", got[0], want[0]);
    char line[64];
    snprintf(line, sizeof line, "test_cuda_emu_wmma.cu:%d", L_PEEK);
    expect_death("a stored accumulator's element read by another lane without __syncwarp: a race", die_store_peek,
                 "data race in kernel k_store_peek", line);
    snprintf(line, sizeof line, "test_cuda_emu_wmma.cu:%d", L_SMEM_COPY);
    expect_death("the shared C tile read by other warps without __syncthreads after store_matrix_sync: a race",
                 die_smem_no_barrier, "data race in kernel k_gemm_smem", line);
}
#endif

int main(void) {
    CK(cudaMalloc(&dA, M * K * sizeof(__nv_bfloat16)));
    CK(cudaMalloc(&dB, K * N * sizeof(__nv_bfloat16)));
    CK(cudaMalloc(&dBt, N * K * sizeof(__nv_bfloat16)));
    CK(cudaMalloc(&dBias, M * N * sizeof(float)));
    CK(cudaMalloc(&dBiasT, N * M * sizeof(float)));
    CK(cudaMalloc(&dC, M * N * sizeof(float)));
    test_global();
    test_fill();
    test_shared();
#ifdef __CUDA_EMU__
    test_emulator_only();
#else
    printf("  (not the emulator: the exact-order and death checks are skipped)\n");
#endif
#ifdef __SANITIZE_THREAD__
    test_races();
#endif
    printf("test_cuda_emu_wmma: %d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
