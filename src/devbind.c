// devbind.c: backend / device choice per rank (devbind.h). No CUDA calls in devbind_choose, so
// every case is tested on machines without a GPU (tests/test_devbind.c).
#include "actlora/devbind.h"

#include <stdio.h>
#include <string.h>

#ifdef ACTLORA_HAVE_CUDA
#include "actlora/backend_cuda.h"
#endif

// the one-line note of a successful choice: "run.device = <setting>: <what>"
static void note(Error *err, const char *setting, const char *what) {
    if (err) snprintf(err->msg, sizeof err->msg, "run.device = %s: %s", setting, what);
}

int devbind_choose(int local_rank, int local_world, int visible_devices, const char *device_setting,
                   int built_with_cuda, int *device_out, Error *err) {
    if (device_out) *device_out = -1;
    if (err) err->msg[0] = 0;
    if (!device_setting) return error_set(err, "run.device is not set (expected \"auto\", \"cpu\" or \"cuda\")");
    int is_auto = strcmp(device_setting, "auto") == 0, is_cuda = strcmp(device_setting, "cuda") == 0;
    if (!is_auto && !is_cuda && strcmp(device_setting, "cpu") != 0)
        return error_set(err, "run.device = \"%s\": expected \"auto\", \"cpu\" or \"cuda\"", device_setting);
    if (local_world < 1 || local_rank < 0 || local_rank >= local_world)
        return error_set(err, "internal: node-local rank %d outside [0, %d)", local_rank, local_world);
    if (!device_out) return error_set(err, "internal: devbind_choose needs device_out");
    if (visible_devices < 0) visible_devices = 0;

    if (!is_auto && !is_cuda) {
        note(err, device_setting, "using the CPU backend");
        return 0;
    }
    if (!built_with_cuda) {
        if (is_cuda)
            return error_set(err, "run.device = \"cuda\" but this build has no CUDA backend: rebuild with nvcc on "
                                  "PATH and -DACTLORA_CUDA=ON (docs/gpu.md), or set run.device = \"cpu\"");
        note(err, device_setting, "this build has no CUDA backend, using the CPU backend");
        return 0;
    }
    if (visible_devices == 0) {
        if (is_cuda)
            return error_set(err, "run.device = \"cuda\" but no CUDA device is visible on this node (no GPU, no "
                                  "driver, or CUDA_VISIBLE_DEVICES hides them): run on a GPU node or set "
                                  "run.device = \"cpu\"");
        note(err, device_setting, "no visible CUDA device, using the CPU backend");
        return 0;
    }
    if (local_world > visible_devices)
        return error_set(err, "run.device = \"%s\": node has %d ranks but %d visible GPU%s: launch one rank per GPU "
                              "(e.g. srun --ntasks-per-node=%d) or set CUDA_VISIBLE_DEVICES so every rank of the "
                              "node sees all of the node's GPUs%s",
                         device_setting, local_world, visible_devices, visible_devices == 1 ? "" : "s",
                         visible_devices, is_auto ? " (or set run.device = \"cpu\")" : "");
    *device_out = local_rank;
    if (err)
        snprintf(err->msg, sizeof err->msg, "run.device = %s: node-local rank %d uses CUDA device %d of %d visible",
                 device_setting, local_rank, local_rank, visible_devices);
    return 1;
}

int devbind_built_with_cuda(void) {
#ifdef ACTLORA_HAVE_CUDA
    return 1;
#else
    return 0;
#endif
}

int devbind_visible_devices(void) {
#ifdef ACTLORA_HAVE_CUDA
    return backend_cuda_device_count();
#else
    return 0;
#endif
}
