// cuda_emu.h: the CUDA C the backend's kernels use, on the CPU. tests/cuda_emu/cu2cpp.py rewrites each
// src/cuda/*.cu into C++ (launches become cuda_emu_launch calls, dynamic shared memory a pointer), and the
// fake cuda_runtime.h / cuda_bf16.h / mma.h / cublas_v2.h / nccl.h next to this header stand in for the real ones.
// Every CUDA thread of a block runs as a fiber on one OS thread (cuda_emu.cpp): __syncthreads, warp
// shuffles and __match_any_sync are real barriers between them, blocks run one after another, and device
// memory is host memory with a guard page after every allocation. The emulator runs the kernels' indexing,
// synchronisation and arithmetic as written; it says nothing about speed, and its cuBLAS is a plain loop.
#ifndef ACTLORA_CUDA_EMU_H
#define ACTLORA_CUDA_EMU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>  // a launch's arguments (cu2cpp.py)

// ------------------------------------------------------------------ qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static  // blocks run one at a time: one instance per kernel is one per block
#define __CUDA_EMU__ 1

// ------------------------------------------------------------------ vector types, dim3
struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

// the running thread's coordinates (set by the scheduler before it resumes a fiber)
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
static const int warpSize = 32;

// ------------------------------------------------------------------ synchronisation (cuda_emu.cpp)
void __syncthreads(void);
void __syncwarp(unsigned mask = 0xffffffffu);
uint64_t cuda_emu_shfl(unsigned mask, uint64_t v, int src_lane, int width);  // value of src_lane (or own)
unsigned __match_any_sync(unsigned mask, unsigned v);
unsigned __match_any_sync(unsigned mask, int v);
void *cuda_emu_dyn_smem(void);  // the launch's dynamic shared memory

template <typename T>
static inline T cuda_emu_shfl_t(unsigned mask, T v, int src, int width) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof v);
    u = cuda_emu_shfl(mask, u, src, width);
    T r;
    memcpy(&r, &u, sizeof r);
    return r;
}
static inline unsigned cuda_emu_lane(void) { return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32u; }
template <typename T>
static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {  // src modulo width, as the hardware
    return cuda_emu_shfl_t(mask, v, (int)(cuda_emu_lane() / width * width) + ((src % width) + width) % width, width);
}
template <typename T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
    int lane = (int)cuda_emu_lane(), base = lane / width * width, src = lane + (int)d;
    return cuda_emu_shfl_t(mask, v, src < base + width ? src : -1, width);  // -1: keep own value
}
template <typename T>
static inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
    int lane = (int)cuda_emu_lane(), base = lane / width * width, src = lane - (int)d;
    return cuda_emu_shfl_t(mask, v, src >= base ? src : -1, width);
}
template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32) {
    int lane = (int)cuda_emu_lane(), base = lane / width * width, src = lane ^ m;
    return cuda_emu_shfl_t(mask, v, src < base + width ? src : -1, width);
}

// ------------------------------------------------------------------ atomics
// One OS thread runs every CUDA thread, so plain code would do; the __atomic builtins tell the race checker's
// instrumented build (race.cpp) that these accesses are atomic.
#define CUDA_EMU_RELAXED __ATOMIC_RELAXED
template <typename T>
static inline T cuda_emu_cas(T *p, T cmp, T v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, CUDA_EMU_RELAXED, CUDA_EMU_RELAXED);
    return cmp;  // the old value
}
static inline int atomicCAS(int *p, int cmp, int v) { return cuda_emu_cas(p, cmp, v); }
static inline unsigned atomicCAS(unsigned *p, unsigned cmp, unsigned v) { return cuda_emu_cas(p, cmp, v); }
static inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, CUDA_EMU_RELAXED); }
static inline unsigned atomicAdd(unsigned *p, unsigned v) { return __atomic_fetch_add(p, v, CUDA_EMU_RELAXED); }
static inline float atomicAdd(float *p, float v) {
    unsigned *u = (unsigned *)p, o = __atomic_load_n(u, CUDA_EMU_RELAXED), n;
    float f;
    do {
        memcpy(&f, &o, 4);
        f += v;
        memcpy(&n, &f, 4);
    } while (!__atomic_compare_exchange_n(u, &o, n, false, CUDA_EMU_RELAXED, CUDA_EMU_RELAXED));
    memcpy(&f, &o, 4);
    return f;
}
static inline int atomicExch(int *p, int v) { return __atomic_exchange_n(p, v, CUDA_EMU_RELAXED); }

// ------------------------------------------------------------------ integer and float intrinsics
static inline int __popc(unsigned v) { return __builtin_popcount(v); }
static inline int __ffs(unsigned v) { return __builtin_ffs((int)v); }
static inline int __clz(unsigned v) { return v ? __builtin_clz(v) : 32; }
// the _rn intrinsics: one IEEE operation, never contracted (the emulator is built with -ffp-contract=off)
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
static inline float __int_as_float(int v) { float f; memcpy(&f, &v, 4); return f; }
static inline int __float_as_int(float f) { int v; memcpy(&v, &f, 4); return v; }
static inline unsigned __float_as_uint(float f) { unsigned v; memcpy(&v, &f, 4); return v; }
static inline float __uint_as_float(unsigned v) { float f; memcpy(&f, &v, 4); return f; }

// CUDA's global min / max overloads
#define CUDA_EMU_MINMAX(T)                                        \
    static inline T min(T a, T b) { return a < b ? a : b; }      \
    static inline T max(T a, T b) { return a > b ? a : b; }
CUDA_EMU_MINMAX(int)
CUDA_EMU_MINMAX(unsigned)
CUDA_EMU_MINMAX(long)
CUDA_EMU_MINMAX(unsigned long)
CUDA_EMU_MINMAX(long long)
CUDA_EMU_MINMAX(unsigned long long)
CUDA_EMU_MINMAX(float)
CUDA_EMU_MINMAX(double)
#undef CUDA_EMU_MINMAX

// ------------------------------------------------------------------ WMMA (mma.h; cuda_emu.cpp)
// The checks of a warp-wide WMMA call (fn: load_matrix_sync, store_matrix_sync, mma_sync) by the running
// thread: it must run in a kernel, in a warp of 32 threads, with p (NULL: no pointer) 32-byte aligned and ldm a
// multiple of 16 / elem_bytes; then it waits until every lane of its warp makes a WMMA call with the same fn,
// p, ldm and layout (a convergence that orders no memory, as a shuffle). Any failure stops the program.
void cuda_emu_wmma_enter(const char *fn, const void *p, unsigned ldm, unsigned elem_bytes, int layout);

// ------------------------------------------------------------------ launches
typedef struct CudaEmuStream *cudaStream_t;  // streams run their work at once: an opaque token
typedef void (*CudaEmuThunk)(void *fn);
// Runs f once per thread of every block of grid (blocks in order; the threads of a block as fibers), at once
// whatever the stream.
// kernel / file / line name the launch in the emulator's messages.
void cuda_emu_run(dim3 grid, dim3 block, size_t smem, CudaEmuThunk thunk, void *fn, const char *kernel,
                  const char *file, int line);
template <typename F>
static void cuda_emu_thunk(void *fn) { (*(F *)fn)(); }
template <typename F>
static inline void cuda_emu_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const char *kernel,
                                   const char *file, int line, F f) {
    (void)stream;
    cuda_emu_run(grid, block, smem, cuda_emu_thunk<F>, (void *)&f, kernel, file, line);
}

#endif
