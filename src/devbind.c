// devbind.c: backend / device choice per rank (devbind.h). No CUDA calls in devbind_choose, so
// every case is tested on machines without a GPU (tests/test_devbind.c).
#include "actlora/devbind.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef ACTLORA_HAVE_CUDA
#include "actlora/backend_cuda.h"
#endif

static int view_n(const DevbindView *v) { return v->n < 0 ? 0 : v->n > DEVBIND_MAX_DEVICES ? DEVBIND_MAX_DEVICES : v->n; }

// "uuid 3f2a91c0": the first 4 bytes, as nvidia-smi's GPU-3f2a91c0-... begins
static const char *uuid_short(const unsigned char *u, char buf[16]) {
    snprintf(buf, 16, "%02x%02x%02x%02x", u[0], u[1], u[2], u[3]);
    return buf;
}

// The node's GPUs: gid[r * MAX + j] = the index of rank r's device j among the node's distinct UUIDs.
typedef struct {
    int world, n_gpus;
    int *gid, *owner, *match, *seen;  // gid [world * MAX]; owner [n_gpus] (rank or -1); match [world] (device or -1)
} Node;

// Kuhn's augmenting path: gives rank r a GPU, moving earlier ranks to other GPUs they see if need be.
static int augment(Node *nd, const DevbindView *node, int r) {
    for (int j = 0; j < view_n(&node[r]); j++) {
        int g = nd->gid[r * DEVBIND_MAX_DEVICES + j];
        if (nd->seen[g]) continue;
        nd->seen[g] = 1;
        if (nd->owner[g] < 0 || augment(nd, node, nd->owner[g])) {
            nd->owner[g] = r;
            nd->match[r] = j;
            return 1;
        }
    }
    return 0;
}

// Assigns every rank a GPU of its own; returns the first rank left without one, or -1 when all have one.
// In rank order, each takes its first free device (every rank seeing the same devices: rank k -> device k),
// failing that an augmenting path.
static int node_assign(Node *nd, const DevbindView *node) {
    for (int r = 0; r < nd->world; r++) {
        nd->match[r] = -1;
        for (int j = 0; j < view_n(&node[r]) && nd->match[r] < 0; j++) {
            int g = nd->gid[r * DEVBIND_MAX_DEVICES + j];
            if (nd->owner[g] < 0) nd->owner[g] = r, nd->match[r] = j;
        }
        if (nd->match[r] >= 0) continue;
        memset(nd->seen, 0, (size_t)nd->n_gpus * sizeof(int));
        if (!augment(nd, node, r)) return r;
    }
    return -1;
}

static void node_init(Node *nd, const DevbindView *node, int world) {
    size_t cap = (size_t)world * DEVBIND_MAX_DEVICES;
    nd->world = world;
    nd->n_gpus = 0;
    nd->gid = xmalloc(cap * sizeof(int), "devbind GPU ids");
    nd->owner = xmalloc(cap * sizeof(int), "devbind owners");
    nd->seen = xmalloc(cap * sizeof(int), "devbind marks");
    nd->match = xmalloc((size_t)world * sizeof(int), "devbind matches");
    const unsigned char **ids = xmalloc(cap * sizeof *ids, "devbind uuids");
    for (int r = 0; r < world; r++)
        for (int j = 0; j < view_n(&node[r]); j++) {
            const unsigned char *u = node[r].uuid[j];
            int g = 0;
            while (g < nd->n_gpus && memcmp(ids[g], u, 16) != 0) g++;
            if (g == nd->n_gpus) ids[nd->n_gpus++] = u;
            nd->gid[r * DEVBIND_MAX_DEVICES + j] = g;
        }
    for (int g = 0; g < nd->n_gpus; g++) nd->owner[g] = -1;
    free(ids);
}

static void node_free(Node *nd) {
    free(nd->gid), free(nd->owner), free(nd->seen), free(nd->match);
}

static int views_identical(const DevbindView *node, int world) {
    for (int r = 1; r < world; r++) {
        int n = view_n(&node[0]);
        if (view_n(&node[r]) != n || memcmp(node[r].uuid, node[0].uuid, (size_t)n * 16) != 0) return 0;
    }
    return 1;
}

// the one-line note of a successful choice: "run.device = <setting>: <what>"
static void note(Error *err, const char *setting, const char *what) {
    if (err) snprintf(err->msg, sizeof err->msg, "run.device = %s: %s", setting, what);
}

// The refusal when the node's ranks cannot each have a GPU of their own (rank `left` got none).
static int refuse_sharing(Error *err, const char *setting, int is_auto, const DevbindView *node, int world, int left,
                          int n_gpus) {
    const char *alt = is_auto ? " (or set run.device = \"cpu\")" : "";
    if (views_identical(node, world))
        return error_set(err, "run.device = \"%s\": node has %d ranks but %d visible GPU%s: launch one rank per GPU "
                              "(e.g. srun --ntasks-per-node=%d), give each rank a GPU of its own (srun "
                              "--gpus-per-task=1), or set CUDA_VISIBLE_DEVICES so every rank of the node sees all of "
                              "the node's GPUs%s",
                         setting, world, n_gpus, n_gpus == 1 ? "" : "s", n_gpus, alt);
    char u[16];
    return error_set(err, "run.device = \"%s\": the node's %d ranks see %d distinct GPU%s between them, so node-local "
                          "rank %d (which sees %d, the first uuid %s) would share one: give each rank a GPU of its own "
                          "(srun --gpus-per-task=1, or --gpus-per-node=N with N ranks per node and no per-rank "
                          "CUDA_VISIBLE_DEVICES)%s",
                     setting, world, n_gpus, n_gpus == 1 ? "" : "s", left, view_n(&node[left]),
                     uuid_short(node[left].uuid[0], u), alt);
}

int devbind_choose(int local_rank, int local_world, const DevbindView *node, const char *device_setting,
                   int built_with_cuda, int *device_out, Error *err) {
    if (device_out) *device_out = -1;
    if (err) err->msg[0] = 0;
    if (!device_setting) return error_set(err, "run.device is not set (expected \"auto\", \"cpu\" or \"cuda\")");
    int is_auto = strcmp(device_setting, "auto") == 0, is_cuda = strcmp(device_setting, "cuda") == 0;
    if (!is_auto && !is_cuda && strcmp(device_setting, "cpu") != 0)
        return error_set(err, "run.device = \"%s\": expected \"auto\", \"cpu\" or \"cuda\"", device_setting);
    if (local_world < 1 || local_rank < 0 || local_rank >= local_world)
        return error_set(err, "internal: node-local rank %d outside [0, %d)", local_rank, local_world);
    if (!device_out || !node) return error_set(err, "internal: devbind_choose needs device_out and the node's views");

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
    int blind = -1, seeing = -1;  // a rank that sees no device, one that sees some
    for (int r = 0; r < local_world; r++) {
        if (view_n(&node[r]) == 0 && blind < 0) blind = r;
        if (view_n(&node[r]) > 0 && seeing < 0) seeing = r;
    }
    if (seeing < 0) {
        if (is_cuda)
            return error_set(err, "run.device = \"cuda\" but no CUDA device is visible on this node (no GPU, no "
                                  "driver, or CUDA_VISIBLE_DEVICES hides them): run on a GPU node or set "
                                  "run.device = \"cpu\"");
        note(err, device_setting, "no visible CUDA device, using the CPU backend");
        return 0;
    }
    if (blind >= 0)
        return error_set(err, "run.device = \"%s\": node-local rank %d sees no GPU but rank %d sees %d: give every rank "
                              "of the node a GPU (srun --gpus-per-task=1, or --gpus-per-node with every GPU visible "
                              "to every rank; check CUDA_VISIBLE_DEVICES)%s",
                         device_setting, blind, seeing, view_n(&node[seeing]),
                         is_auto ? " (or set run.device = \"cpu\")" : "");
    Node nd;
    node_init(&nd, node, local_world);
    int left = node_assign(&nd, node), rc = 1;
    if (left >= 0) rc = refuse_sharing(err, device_setting, is_auto, node, local_world, left, nd.n_gpus);
    else *device_out = nd.match[local_rank];
    node_free(&nd);
    if (rc == 1 && err) {
        char u[16];
        snprintf(err->msg, sizeof err->msg, "run.device = %s: node-local rank %d uses CUDA device %d of %d visible (uuid %s)",
                 device_setting, local_rank, *device_out, view_n(&node[local_rank]),
                 uuid_short(node[local_rank].uuid[*device_out], u));
    }
    return rc;
}

int devbind_built_with_cuda(void) {
#ifdef ACTLORA_HAVE_CUDA
    return 1;
#else
    return 0;
#endif
}

void devbind_view_local(DevbindView *v) {
    memset(v, 0, sizeof *v);
#ifdef ACTLORA_HAVE_CUDA
    v->n = backend_cuda_device_uuids(v->uuid, DEVBIND_MAX_DEVICES);
#endif
}
