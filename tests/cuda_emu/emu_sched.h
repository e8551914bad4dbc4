// emu_sched.h: what the CUDA emulator's scheduler (cuda_emu.cpp) tells its race checker (race.cpp): who runs,
// in which launch and block, and which barriers each thread of the block has passed. Internal to the emulator.
//
// Happens-before, as the checker models it: within a launch, an access by thread U is ordered before an access
// by thread T when U == T, or U and T are in the same block and a __syncthreads was released after U's access
// and before T's, or they are in the same warp and a __syncwarp (or __syncthreads) did so. The clock counts
// barrier releases; each thread keeps the clock of the last block barrier and the last warp barrier it passed.
// Accesses of different blocks of one launch are never ordered (the kernels communicate across blocks only
// through atomics); launches on the stream are ordered, so records of an earlier launch are forgotten.
#ifndef ACTLORA_CUDA_EMU_SCHED_H
#define ACTLORA_CUDA_EMU_SCHED_H

#include <stddef.h>
#include <stdint.h>

#define EMU_MAX_THREADS 1024

typedef struct {
    int in_kernel;                          // a kernel's thread runs now
    int cur;                                // the running thread: linear id in its block
    uint32_t launch_tok, block_tok;         // serials of the running launch and block (one counter: never equal)
    uint32_t block_lin;                     // the running block's linear index in the grid
    uint32_t clock;                         // barrier releases so far
    uint32_t block_epoch[EMU_MAX_THREADS];  // clock of the thread's last __syncthreads in this block (0: none)
    uint32_t warp_epoch[EMU_MAX_THREADS];   // clock of its last __syncwarp or __syncthreads (0: none)
    char *stacks;                           // the fibers' stacks: private to each thread, not checked
    size_t stacks_bytes;
    char *dyn;                              // the launch's dynamic shared memory
    size_t dyn_bytes;
    uint32_t alloc_gen;                     // changes at every cudaMalloc / cudaFree
    const char *kernel, *file;              // the running launch (for messages)
    int line;
} EmuSched;

extern EmuSched cuda_emu_sched;

// Whether p lies in the pages of a device allocation (1: its first byte and its size; 0: host memory).
extern "C" int cuda_emu_device_range(const void *p, uintptr_t *user, size_t *bytes);

// Called by the scheduler when a launch has finished: reports what the race checker found and stops the
// program if it found anything. A no-op unless race.cpp is linked (the instrumented build).
extern "C" void cuda_emu_race_launch_end(void);
// Called by the host-side calls that write device memory (cudaMemcpy, cudaMemset, cuBLAS, NCCL) and by
// cudaMalloc: what a kernel may read as written. No-ops unless race.cpp is linked.
extern "C" void cuda_emu_race_host_write(const void *p, size_t bytes);
extern "C" void cuda_emu_race_alloc(const void *p, size_t bytes);

// Called when a kernel crashes (a fault): prints the races found so far in its launch. A no-op unless race.cpp
// is linked.
extern "C" void cuda_emu_race_on_crash(void);

#endif
