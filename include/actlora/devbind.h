// devbind.h: which backend and which GPU a rank uses — pure logic, testable without a GPU.
//
// One MPI rank drives one GPU: node-local rank k uses visible device k. A mapping that would put
// two ranks on one GPU (more ranks on the node than visible GPUs) is refused with a message
// saying how to launch instead; it is never "fixed" silently (two ranks sharing a device would
// run, slowly, and NCCL refuses duplicate devices later with a less helpful error).
#ifndef ACTLORA_DEVBIND_H
#define ACTLORA_DEVBIND_H

#include "actlora/common.h"

#ifdef __cplusplus
extern "C" {
#endif

// device_setting is run.device: "auto" | "cpu" | "cuda".
//   "cpu"  -> 0 (CPU backend).
//   "cuda" -> 1 with *device_out = local_rank, or -1 (err) when the build has no CUDA backend,
//             no device is visible, or local_world > visible_devices.
//   "auto" -> 1 as for "cuda" when built with CUDA and a device is visible; 0 (CPU) when not
//             built with CUDA or no device is visible; -1 when devices are visible but fewer than
//             the node's ranks (an explicit choice is needed, not a silent fallback).
// On 0 and 1, err->msg (when err != NULL) holds a one-line note for the run log saying what was
// chosen and why (e.g. "run.device = auto: no visible CUDA device, using the CPU backend").
// *device_out is set to -1 unless the result is 1. Bad arguments (unknown setting, local_rank
// outside [0, local_world)) return -1.
int devbind_choose(int local_rank, int local_world, int visible_devices, const char *device_setting,
                   int built_with_cuda, int *device_out, Error *err);

// 1 when this binary was built with the CUDA backend (ACTLORA_HAVE_CUDA), else 0.
int devbind_built_with_cuda(void);
// Devices this process can see: backend_cuda_device_count() in a CUDA build, 0 otherwise.
int devbind_visible_devices(void);

#ifdef __cplusplus
}
#endif

#endif
