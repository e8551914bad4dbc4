// backend_cuda.h: the CUDA backend — the op table of backend.h on one GPU, with cuBLAS for the
// GEMMs and hand-written kernels for everything else (src/cuda/*.cu; docs/gpu.md). Activations,
// adapters, gradients and the optimizer are fp32; frozen weights are in the backend's weight format,
// bf16 by default (model.dtype "auto"; wgemm: bf16 x bf16 tensor-core GEMMs with fp32 accumulation),
// or fp32 after backend_set_dtype(be, "fp32", ...) (then every op, wgemm included, is full fp32).
// Only declared when the program is built with -DACTLORA_CUDA=ON (ACTLORA_HAVE_CUDA); callers
// that may be built without CUDA guard their calls with #ifdef ACTLORA_HAVE_CUDA.
//
// Every op runs on the backend's one CUDA stream, in the order it was called; ops that hand
// results to the host (download, sumsq, row_norm_sum, loss_fwd_bwd, sync) wait for the stream.
// Results are deterministic run to run on the same GPU model / toolkit: reductions are summed
// in a fixed order (no atomics) and cuBLAS runs with a fixed workspace on one stream.
#ifndef ACTLORA_BACKEND_CUDA_H
#define ACTLORA_BACKEND_CUDA_H

#include <stddef.h>

#include "actlora/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

// Number of CUDA devices this process can see (after CUDA_VISIBLE_DEVICES); 0 when there is no
// driver, no device or any other CUDA error. Never dies.
int backend_cuda_device_count(void);
// The UUIDs of the visible devices (cudaDeviceProp.uuid, CUDA's order; at most `max`); returns how many,
// 0 on any CUDA error (as backend_cuda_device_count). Never dies. Device binding compares them across the
// node's ranks (devbind.h).
int backend_cuda_device_uuids(unsigned char (*uuid)[16], int max);
// 1 when at least one device is visible (backend_cuda_device_count() > 0), else 0. Never dies.
int backend_cuda_available(void);
// Total and free memory of device `device` in bytes; returns 0, or -1 (and leaves the outputs 0)
// when the device cannot be queried. Never dies.
int backend_cuda_device_memory(int device, size_t *free_bytes, size_t *total_bytes);
// Binds the calling thread to `device` and fills every op of the table (be->name = "cuda"), with
// the weight format bf16 (backend_set_dtype switches it before weights are allocated).
// Dies with the CUDA error when the device cannot be used.
void backend_cuda_init(Backend *be, int device);

// cuBLAS workspace the backend reserves (bytes; the memory planner counts it).
#define BACKEND_CUDA_CUBLAS_WORKSPACE ((size_t)32 << 20)
// lora_grad_a_dropout sums dA over row chunks: partial sums [chunks, r, in] in the backend's scratch (fp32,
// at most this many chunks), then the chunks in a fixed order (deterministic; memplan counts the partials).
#define BACKEND_CUDA_LORA_DROP_CHUNKS 64
// The attention ops' scratch (src/cuda/attention.cu): up to BACKEND_CUDA_ATT_MAX_ARRAYS pointer arrays of B*H
// device pointers after the [B,H,T,T] regions, every region starting BACKEND_CUDA_ATT_ALIGN-byte aligned (the
// memory planner counts both).
#define BACKEND_CUDA_ATT_MAX_ARRAYS 10
#define BACKEND_CUDA_ATT_ALIGN 256
// The head dimensions the fused attention's kernels exist for (src/cuda/attention_fused.cu; model.c refuses the
// others at start, before any weight is loaded).
#define BACKEND_CUDA_ATT_FUSED_HEAD_DIM_OK(D) ((D) == 16 || (D) == 32 || (D) == 64 || (D) == 128)

#ifdef __cplusplus
}
#endif

#endif
