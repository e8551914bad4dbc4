// devbind.h: which backend and which GPU a rank uses — pure logic, testable without a GPU.
//
// One MPI rank drives one GPU. Every rank of a node says which GPUs it sees (their UUIDs, in its own
// CUDA order); all of them then compute the same assignment, each rank a different GPU:
//   - every rank sees all of the node's GPUs (srun --gpus-per-node, mpirun): node-local rank k uses
//     visible device k;
//   - each rank sees its own (srun --gpus-per-task, --gpu-bind, a CUDA_VISIBLE_DEVICES per rank, cgroups):
//     each uses the one it sees;
//   - anything in between (--gpu-bind=closest): every rank a different GPU it sees, each its first free
//     one in rank order, others moved over when that leaves a rank without one (a bipartite matching:
//     found whenever one exists).
// A node whose ranks cannot each get a GPU of their own (two ranks would share one) is refused with a
// message saying how to launch instead; it is never "fixed" silently (two ranks sharing a device would
// run, slowly, and NCCL refuses duplicate devices later with a less helpful error).
#ifndef ACTLORA_DEVBIND_H
#define ACTLORA_DEVBIND_H

#include "actlora/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DEVBIND_MAX_DEVICES 64

// What one rank sees: its visible CUDA devices' UUIDs, device i = uuid[i] (CUDA's order after
// CUDA_VISIBLE_DEVICES). n = 0: no device, no driver, or a build without CUDA.
typedef struct {
    int n;
    unsigned char uuid[DEVBIND_MAX_DEVICES][16];
} DevbindView;

// device_setting is run.device: "auto" | "cpu" | "cuda"; node[0 .. local_world) are the views of the
// node's ranks in node-local rank order (gathered over the node: every rank passes the same array).
//   "cpu"  -> 0 (CPU backend).
//   "cuda" -> 1 with *device_out = the index of this rank's GPU among its visible devices, or -1 (err)
//             when the build has no CUDA backend, no rank of the node sees a device, some rank sees
//             none, or the ranks cannot each have a GPU of their own.
//   "auto" -> 1 as for "cuda" when built with CUDA and a device is visible; 0 (CPU) when not built
//             with CUDA or no rank of the node sees a device; -1 when devices are visible but the
//             ranks cannot each have one (an explicit choice is needed, not a silent fallback).
// Every rank of a node reaches the same decision. On 0 and 1, err->msg (when err != NULL) holds a
// one-line note for the run log saying what was chosen and why (e.g. "run.device = cuda: node-local
// rank 1 uses CUDA device 1 of 4 visible (uuid 3f2a91c0)"). *device_out is set to -1 unless the result
// is 1. Bad arguments (unknown setting, local_rank outside [0, local_world), NULL node) return -1.
int devbind_choose(int local_rank, int local_world, const DevbindView *node, const char *device_setting,
                   int built_with_cuda, int *device_out, Error *err);

// 1 when this binary was built with the CUDA backend (ACTLORA_HAVE_CUDA), else 0.
int devbind_built_with_cuda(void);
// What this process sees: backend_cuda_device_uuids() in a CUDA build, n = 0 otherwise.
void devbind_view_local(DevbindView *v);

#ifdef __cplusplus
}
#endif

#endif
