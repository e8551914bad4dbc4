// test_cuda_emu_race.cu: the test of the CUDA emulator's race checker (race.cpp), built only into its
// instrumented build (CMake: test_cuda_emu_race). Each racy kernel runs in a fork()ed child that must die
// naming the kernel, the kind of race and the source line of the racing access; each correctly synchronised
// kernel must run and give the host's result: shared memory exchanged across __syncthreads, a warp's across
// __syncwarp, tree reductions, atomics from every block, bf16 neighbours written by different threads, one
// buffer written by two launches, reads of one value by every thread of every block, device memory read after
// cudaMemset or a kernel wrote it. Device memory read that nothing wrote since cudaMalloc is reported too.
#include <cuda_bf16.h>

#include "emu_check.h"

// "test_cuda_emu_race.cu:LINE" (the report's location of an access); a few at a time
static const char *AT(int line) {
    static char buf[4][64];
    static int k = 0;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "test_cuda_emu_race.cu:%d", line);
    return buf[k];
}
static char *cat(const char *a, const char *b) {  // a + b in a buffer that is never freed (test set-up)
    char *s = (char *)malloc(strlen(a) + strlen(b) + 1);
    strcpy(s, a);
    return strcat(s, b);
}

// ------------------------------------------------------------------------------------------- racy kernels

// thread 0 writes s[0]; the other warps read it with no barrier between
enum { L_SMEM_RAW = __LINE__ + 4 };
static __global__ void k_smem_raw(int *out) {
    __shared__ int s[1];
    if (threadIdx.x == 0) s[0] = 7;
    if (threadIdx.x >= 32) out[threadIdx.x] = s[0];
}
// every thread reads s[0]; thread 40 then overwrites it, no barrier between
enum { L_SMEM_WAR = __LINE__ + 6 };
static __global__ void k_smem_war(int *out) {
    __shared__ int s[1];
    if (threadIdx.x == 0) s[0] = 1;
    __syncthreads();
    out[threadIdx.x] = s[0];
    if (threadIdx.x == 40) s[0] = 2;
}
// lane 0 writes, lane 5 reads after a shuffle: a shuffle exchanges registers, it does not order memory
enum { L_WARP_RAW = __LINE__ + 5 };
static __global__ void k_warp_raw(int *out) {
    __shared__ int s[32];
    if (threadIdx.x == 0) s[0] = 3;
    int v = __shfl_sync(0xffffffffu, (int)threadIdx.x, 0);
    if (threadIdx.x == 5) out[0] = s[0] + v;
}
// every block writes out[0]
enum { L_BLOCKS_WAW = __LINE__ + 2 };
static __global__ void k_blocks_waw(int *out) {
    if (threadIdx.x == 0) out[0] = (int)blockIdx.x;
}
// block 1 reads what block 0 writes (or the other way round, in reverse order)
enum { L_BLOCKS_RAW = __LINE__ + 4 };
static __global__ void k_blocks_raw(int *buf, int *out) {
    if (blockIdx.x == 0) buf[threadIdx.x] = 1;
    else
        out[threadIdx.x] = buf[threadIdx.x];
}
// shared memory read before any thread of the block wrote it (the launch has no thread 64 or above: the write
// only keeps the compiler from folding the read of a static nobody writes)
enum { L_SMEM_UNINIT = __LINE__ + 4 };
static __global__ void k_smem_uninit(int *out) {
    __shared__ int s[64];
    if (threadIdx.x >= 64) s[threadIdx.x - 64] = 1;
    out[threadIdx.x] = s[threadIdx.x];
}
// block 0 writes s[t]; every block reads it after a barrier: block 1 reads what only block 0 wrote (on the device,
// whatever its shared memory happened to hold)
enum { L_SMEM_STALE = __LINE__ + 5 };
static __global__ void k_smem_stale(int *out) {
    __shared__ int s[64];
    if (blockIdx.x == 0) s[threadIdx.x] = 5;
    __syncthreads();
    out[blockIdx.x * 64 + threadIdx.x] = s[threadIdx.x];
}
// the dynamic shared memory: thread 0 writes, thread 64 reads with no barrier
enum { L_DYN_RAW = __LINE__ + 4 };
static __global__ void k_dyn_raw(int *out) {
    extern __shared__ int dsm[];
    if (threadIdx.x == 0) dsm[0] = 9;
    if (threadIdx.x == 64) out[0] = dsm[0];
}
// a block reduction whose last step is missing its barrier (the classic bug)
enum { L_REDUCE = __LINE__ + 6 };
static __global__ void k_reduce_missing_barrier(const float *x, float *out) {
    __shared__ float sh[128];
    sh[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    for (int s = 64; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        if (s > 32) __syncthreads();  // below 32 the warp is trusted to run in lockstep: it does not
    }
    if (threadIdx.x == 0) out[0] = sh[0];
}

// thread 0 overwrites an index in shared memory that thread 32 uses with no barrier between: run first to last,
// thread 32 reads the new index (far past the buffer) and faults, and the race comes out before the fault
enum { L_CRASH = __LINE__ + 6 };
static __global__ void k_race_then_crash(float *buf) {
    __shared__ int at[1];
    if (threadIdx.x == 0) at[0] = 0;
    __syncthreads();
    if (threadIdx.x == 0) at[0] = 1 << 28;
    if (threadIdx.x == 32) buf[at[0]] = 1.0f;
}

// reads n floats of x: the launch below gives it 64 of which cudaMemcpy filled only the first 32
enum { L_DEV_UNINIT = __LINE__ + 2 };
static __global__ void k_read_dev(const float *x, float *out) {
    out[threadIdx.x] = x[threadIdx.x] * 2.0f;
}

static int *dev_ints(int n) {
    int *d;
    CK(cudaMalloc(&d, n * sizeof(int)));
    return d;
}
static void die_smem_raw(void) { k_smem_raw<<<1, 64>>>(dev_ints(64)); }
static void die_smem_war(void) { k_smem_war<<<1, 64>>>(dev_ints(64)); }
static void die_warp_raw(void) { k_warp_raw<<<1, 32>>>(dev_ints(1)); }
static void die_blocks_waw(void) { k_blocks_waw<<<3, 32>>>(dev_ints(1)); }
static void die_blocks_raw(void) { k_blocks_raw<<<2, 32>>>(dev_ints(32), dev_ints(32)); }
static void die_smem_uninit(void) { k_smem_uninit<<<1, 64>>>(dev_ints(64)); }
static void die_smem_stale(void) { k_smem_stale<<<2, 64>>>(dev_ints(128)); }
static void die_dyn_raw(void) { k_dyn_raw<<<1, 96, 64>>>(dev_ints(1)); }
static void die_dev_uninit(void) {
    float h[32] = {0}, *x;
    CK(cudaMalloc(&x, 64 * sizeof(float)));
    CK(cudaMemcpy(x, h, sizeof h, cudaMemcpyHostToDevice));
    k_read_dev<<<1, 64>>>(x, (float *)dev_ints(64));
}
static __global__ void k_write_dev(float *x) { x[threadIdx.x] = 1.0f; }
// a kernel writes a buffer, which is freed; the next allocation of the size gets the same pages (said on stderr,
// which the check wants to see), and a kernel reads it: what the first kernel wrote does not count
static void die_dev_reused(void) {
    float *x, *y;
    CK(cudaMalloc(&x, 64 * sizeof(float)));
    k_write_dev<<<1, 64>>>(x);
    SYNC();
    CK(cudaFree(x));
    CK(cudaMalloc(&y, 64 * sizeof(float)));
    fprintf(stderr, "%s\n", x == y ? "the same pages" : "other pages");
    k_read_dev<<<1, 64>>>(y, (float *)dev_ints(64));
}
static void die_crash(void) { k_race_then_crash<<<1, 64>>>((float *)dev_ints(64)); }
static void die_reduce(void) {
    float h[128];
    for (int i = 0; i < 128; i++) h[i] = (float)i;
    k_reduce_missing_barrier<<<1, 128>>>((const float *)dev_copy(h, sizeof h), (float *)dev_ints(1));
}

static void test_races(void) {
    expect_death("shared memory written by thread 0, read by other warps without __syncthreads", die_smem_raw,
                 "data race in kernel k_smem_raw", AT(L_SMEM_RAW));
    expect_death("shared memory read by all, then written by one thread without __syncthreads", die_smem_war,
                 cat("writes 4 bytes (shared memory) at ", AT(L_SMEM_WAR)), "__syncthreads");
    expect_death("a lane's write read by another lane after a shuffle, without __syncwarp", die_warp_raw,
                 cat("reads 4 bytes (shared memory) at ", AT(L_WARP_RAW)), "__syncwarp");
    expect_death("one global element written by every block of a launch", die_blocks_waw,
                 AT(L_BLOCKS_WAW), "blocks of one launch are not ordered");
    expect_death("a global element written by one block and read by another", die_blocks_raw,
                 AT(L_BLOCKS_RAW), "blocks of one launch are not ordered");
    expect_death("shared memory read before any thread of the block wrote it", die_smem_uninit,
                 AT(L_SMEM_UNINIT), "no thread of its block wrote");
    expect_death("shared memory read in block 1 that only block 0 wrote", die_smem_stale, AT(L_SMEM_STALE),
                 "no thread of its block wrote");
    expect_death("dynamic shared memory written and read without __syncthreads", die_dyn_raw,
                 "data race in kernel k_dyn_raw", AT(L_DYN_RAW));
    expect_death("device memory read that nothing wrote since cudaMalloc (half of it filled by cudaMemcpy)",
                 die_dev_uninit, cat("bytes of a 256-byte device allocation) at ", AT(L_DEV_UNINIT)),
                 "nothing has written since cudaMalloc");
    expect_death("device memory a kernel wrote, freed and allocated again (the same pages), then read: reported",
                 die_dev_reused, "the same pages", "nothing has written since cudaMalloc");
    expect_death("a race that makes the kernel fault is reported (before the fault in the forward order)", die_crash,
                 "data race in kernel k_race_then_crash", AT(L_CRASH));
    expect_death("a block reduction without barriers in its last warp", die_reduce,
                 "data race in kernel k_reduce_missing_barrier", AT(L_REDUCE));
}

// ------------------------------------------------------------------------------------------- correct kernels

// out[b*T + t] = the block's sum of in (a shared tree, a barrier per step; then every thread reads s[0]) + in[0]
// (read by every thread of every block)
static __global__ void k_tree(const int *in, int *out) {
    __shared__ int s[256];
    int t = threadIdx.x, T = blockDim.x;
    s[t] = in[blockIdx.x * T + t];
    __syncthreads();
    for (int h = T / 2; h > 0; h >>= 1) {
        if (t < h) s[t] += s[t + h];
        __syncthreads();
    }
    out[blockIdx.x * T + t] = s[0] + in[0];
}
// a warp exchanges through shared memory with __syncwarp between the write and the reads, and again for the
// overwrite: out[w*32 + l] = value of lane 31 - l
static __global__ void k_warp_exchange(int *out) {
    __shared__ int s[64];
    int l = threadIdx.x % 32, w = threadIdx.x / 32;
    s[threadIdx.x] = 100 * w + l;
    __syncwarp();
    int v = s[w * 32 + 31 - l];
    __syncwarp();
    s[threadIdx.x] = v;
    out[threadIdx.x] = s[threadIdx.x];
}
// every thread of every block adds to one counter
static __global__ void k_atomic_count(int *c) { atomicAdd(c, 1); }
// bf16 neighbours written by different threads (2-byte elements in one 4-byte word)
static __global__ void k_bf16_neighbours(__nv_bfloat16 *y, const float *x) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = __float2bfloat16_rn(x[i]);
}
// each thread updates its own element in place, twice
static __global__ void k_own_rmw(int *p) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    p[i] += 1;
    p[i] *= 3;
}

static void test_clean(void) {
    enum { NB = 4, T = 256 };
    int h[NB * T], want[NB * T], got[NB * T];
    for (int i = 0; i < NB * T; i++) h[i] = i % 17 - 8;
    for (int b = 0; b < NB; b++) {
        int s = 0;
        for (int t = 0; t < T; t++) s += h[b * T + t];
        for (int t = 0; t < T; t++) want[b * T + t] = s + h[0];
    }
    int *din = (int *)dev_copy(h, sizeof h), *dout = dev_ints(NB * T);
    k_tree<<<NB, T>>>(din, dout);
    SYNC();
    to_host(got, dout, sizeof got);
    check_ints("tree reduction with a barrier per step, shared and global reads by all: no race", got, want, NB * T);

    int wx[64];
    for (int i = 0; i < 64; i++) wx[i] = 100 * (i / 32) + 31 - i % 32;
    k_warp_exchange<<<1, 64>>>(dout);
    SYNC();
    to_host(got, dout, 64 * sizeof(int));
    check_ints("a warp's exchange through shared memory ordered by __syncwarp: no race", got, wx, 64);

    float *zeros, zgot[64], zwant[64] = {0};  // cudaMemset, then a kernel, count as writes for the next kernel
    CK(cudaMalloc(&zeros, 64 * sizeof(float)));
    CK(cudaMemset(zeros, 0, 64 * sizeof(float)));
    float *twice = (float *)dev_ints(64);
    k_read_dev<<<1, 64>>>(zeros, twice);
    k_read_dev<<<1, 64>>>(twice, zeros);
    SYNC();
    to_host(zgot, zeros, sizeof zgot);
    report(memcmp(zgot, zwant, sizeof zgot) == 0, "device memory written by cudaMemset, then by a kernel, read by the next: no report",
           "wrong values");

    int *cnt = dev_ints(1), one = 0;
    CK(cudaMemset(cnt, 0, sizeof(int)));
    k_atomic_count<<<5, 128>>>(cnt);
    SYNC();
    to_host(&one, cnt, sizeof one);
    int want_cnt = 5 * 128;
    check_ints("atomicAdd on one counter from every thread of 5 blocks: no race", &one, &want_cnt, 1);

    float xf[NB * T];
    for (int i = 0; i < NB * T; i++) xf[i] = (float)i * 0.25f;
    __nv_bfloat16 *yb;
    CK(cudaMalloc(&yb, NB * T * sizeof(__nv_bfloat16)));
    k_bf16_neighbours<<<NB, T>>>(yb, (const float *)dev_copy(xf, sizeof xf));
    SYNC();
    unsigned short hb[NB * T];
    to_host(hb, yb, sizeof hb);
    int okb = 0;
    for (int i = 0; i < NB * T; i++) {
        __nv_bfloat16 v;
        memcpy(&v, &hb[i], 2);
        okb += __bfloat162float(v) == __bfloat162float(__float2bfloat16_rn(xf[i]));
    }
    report(okb == NB * T, "bf16 neighbours written by different threads: no race", "%d of %d right", okb, NB * T);

    for (int i = 0; i < NB * T; i++) want[i] = (h[i] + 1) * 3;
    k_own_rmw<<<NB, T>>>(din);  // in place, twice: the second launch rewrites what the first wrote
    SYNC();
    for (int i = 0; i < NB * T; i++) want[i] = (want[i] + 1) * 3;
    k_own_rmw<<<NB, T>>>(din);
    SYNC();
    to_host(got, din, sizeof got);
    check_ints("a buffer rewritten in place by two launches, each thread its own element: no race", got, want, NB * T);
}

int main(void) {
    test_clean();
    test_races();
    printf("test_cuda_emu_race: %d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
