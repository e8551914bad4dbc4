// test_devbind.c: backend / device choice per rank (devbind.h), every case, no GPU needed. A node is the
// views of its ranks (the UUIDs each sees); every rank of it must reach the same decision, each a GPU of
// its own.
#include <stdio.h>
#include <string.h>

#include "actlora/devbind.h"
#include "test_util.h"

#define MAXR 8

// a view of n physical GPUs phys[0..n): GPU p has uuid 5p c0 ff ee ...
static DevbindView view(int n, const int *phys) {
    DevbindView v;
    memset(&v, 0, sizeof v);
    v.n = n;
    for (int j = 0; j < n && j < DEVBIND_MAX_DEVICES; j++) {
        v.uuid[j][0] = (unsigned char)(0x50 + phys[j]), v.uuid[j][1] = 0xc0, v.uuid[j][2] = 0xff, v.uuid[j][3] = 0xee;
        v.uuid[j][15] = (unsigned char)phys[j];
    }
    return v;
}

// lw ranks that all see GPUs 0..vis-1 (srun --gpus-per-node, mpirun)
static void node_shared(DevbindView *node, int lw, int vis) {
    int phys[DEVBIND_MAX_DEVICES];
    for (int j = 0; j < DEVBIND_MAX_DEVICES; j++) phys[j] = j;
    for (int r = 0; r < lw; r++) node[r] = view(vis, phys);
}

// runs devbind_choose for one rank and checks the result, the device and (when given) a phrase of the message
static void expect_rank(TestCounts *tc, const char *what, int lr, int lw, const DevbindView *node, const char *setting,
                        int built, int want_rc, int want_dev, const char *phrase) {
    Error err;
    int dev = 12345;
    int rc = devbind_choose(lr, lw, node, setting, built, &dev, &err);
    T_CHECK(tc, rc == want_rc && dev == want_dev, "%s: rank %d of %d, \"%s\", built %d -> %d device %d, expected %d device %d (%s)",
            what, lr, lw, setting ? setting : "(null)", built, rc, dev, want_rc, want_dev, err.msg);
    if (phrase) T_CHECK(tc, strstr(err.msg, phrase) != NULL, "%s: message '%s' lacks '%s'", what, err.msg, phrase);
    T_CHECK(tc, err.msg[0] != 0, "%s: no message / note for rank %d of %d", what, lr, lw);
}

// the node's ranks with every GPU visible: the old contract, rank k -> device k
static void expect(TestCounts *tc, int lr, int lw, int vis, const char *setting, int built, int want_rc, int want_dev,
                   const char *phrase) {
    DevbindView node[MAXR];
    node_shared(node, lw > 0 && lw <= MAXR ? lw : 1, vis);
    expect_rank(tc, "shared view", lr, lw, node, setting, built, want_rc, want_dev, phrase);
}

// every rank of the node: the devices want[r] (all rc 1), distinct physical GPUs; or all refused with phrase
static void expect_node(TestCounts *tc, const char *what, const DevbindView *node, int lw, const char *setting,
                        const int *want, const char *phrase) {
    unsigned char used[MAXR][16];
    for (int r = 0; r < lw; r++) {
        Error err;
        int dev = -7, rc = devbind_choose(r, lw, node, setting, 1, &dev, &err);
        if (!want) {
            T_CHECK(tc, rc == -1 && dev == -1, "%s: rank %d: %d device %d, expected a refusal (%s)", what, r, rc, dev, err.msg);
            if (phrase) T_CHECK(tc, strstr(err.msg, phrase) != NULL, "%s: message '%s' lacks '%s'", what, err.msg, phrase);
            continue;
        }
        T_CHECK(tc, rc == 1 && dev == want[r], "%s: rank %d: %d device %d, expected device %d (%s)", what, r, rc, dev,
                want[r], err.msg);
        if (rc != 1 || dev < 0) continue;
        memcpy(used[r], node[r].uuid[dev], 16);
        for (int q = 0; q < r; q++)
            T_CHECK(tc, memcmp(used[q], used[r], 16) != 0, "%s: ranks %d and %d share a GPU", what, q, r);
        if (phrase) T_CHECK(tc, strstr(err.msg, phrase) != NULL, "%s: note '%s' lacks '%s'", what, err.msg, phrase);
    }
}

int main(void) {
    TestCounts tc = {0};
    // cpu: always the CPU, whatever is visible or built
    expect(&tc, 0, 1, 0, "cpu", 0, 0, -1, "CPU backend");
    expect(&tc, 3, 4, 4, "cpu", 1, 0, -1, "CPU backend");
    expect(&tc, 0, 8, 0, "cpu", 1, 0, -1, NULL);
    // cuda, every rank sees every GPU: device = local rank
    expect(&tc, 0, 1, 1, "cuda", 1, 1, 0, "device 0");
    expect(&tc, 3, 4, 4, "cuda", 1, 1, 3, "device 3 of 4");
    expect(&tc, 3, 4, 4, "cuda", 1, 1, 3, "(uuid 53c0ffee)");  // GPU 3
    expect(&tc, 1, 2, 8, "cuda", 1, 1, 1, NULL);  // fewer ranks than GPUs: fine, ranks use 0..1
    expect(&tc, 7, 8, 8, "cuda", 1, 1, 7, NULL);
    // cuda refusals
    expect(&tc, 0, 1, 1, "cuda", 0, -1, -1, "no CUDA backend");
    expect(&tc, 0, 1, 0, "cuda", 1, -1, -1, "no CUDA device is visible");
    expect(&tc, 0, 2, -3, "cuda", 1, -1, -1, "no CUDA device is visible");  // an error count counts as none
    expect(&tc, 5, 8, 4, "cuda", 1, -1, -1, "node has 8 ranks but 4 visible GPUs");
    expect(&tc, 0, 8, 4, "cuda", 1, -1, -1, "srun --ntasks-per-node=4");  // even rank 0, which would fit
    expect(&tc, 0, 8, 4, "cuda", 1, -1, -1, "CUDA_VISIBLE_DEVICES");
    expect(&tc, 1, 2, 1, "cuda", 1, -1, -1, "node has 2 ranks but 1 visible GPU:");
    // auto: CUDA when built and visible, else the CPU with a note; never a wrong mapping
    expect(&tc, 2, 4, 4, "auto", 1, 1, 2, "device 2");
    expect(&tc, 0, 1, 0, "auto", 1, 0, -1, "no visible CUDA device, using the CPU backend");
    expect(&tc, 0, 1, 4, "auto", 0, 0, -1, "no CUDA backend, using the CPU backend");
    expect(&tc, 0, 2, 0, "auto", 0, 0, -1, "using the CPU backend");
    expect(&tc, 3, 8, 4, "auto", 1, -1, -1, "node has 8 ranks but 4 visible GPUs");
    expect(&tc, 3, 8, 4, "auto", 1, -1, -1, "run.device = \"cpu\"");
    // bad arguments
    expect(&tc, 0, 1, 1, "gpu", 1, -1, -1, "expected \"auto\", \"cpu\" or \"cuda\"");
    expect(&tc, 0, 1, 1, "", 1, -1, -1, "expected");
    expect(&tc, 0, 1, 1, NULL, 1, -1, -1, "not set");
    expect(&tc, 2, 2, 4, "cuda", 1, -1, -1, "outside");
    expect(&tc, -1, 2, 4, "cpu", 1, -1, -1, "outside");
    expect(&tc, 0, 0, 4, "auto", 1, -1, -1, "outside");
    int dev = 9;
    T_CHECK(&tc, devbind_choose(0, 1, NULL, "cuda", 1, &dev, NULL) == -1 && dev == -1, "a NULL node is refused");

    // per-rank views: each rank sees its own GPU (srun --gpus-per-task=1, cgroups): each uses its device 0
    DevbindView node[MAXR];
    for (int r = 0; r < 4; r++) node[r] = view(1, (int[]){r});
    expect_node(&tc, "one GPU per task", node, 4, "cuda", (int[]){0, 0, 0, 0}, "device 0 of 1 visible");
    expect_node(&tc, "one GPU per task, auto", node, 4, "auto", (int[]){0, 0, 0, 0}, NULL);
    expect_rank(&tc, "one GPU per task", 2, 4, node, "cuda", 1, 1, 0, "(uuid 52c0ffee)");
    // two GPUs per task: each rank its first
    for (int r = 0; r < 2; r++) node[r] = view(2, (int[]){2 * r, 2 * r + 1});
    expect_node(&tc, "two GPUs per task", node, 2, "cuda", (int[]){0, 0}, NULL);
    // per-rank CUDA_VISIBLE_DEVICES in another order than the ranks
    node[0] = view(1, (int[]){3}), node[1] = view(1, (int[]){1}), node[2] = view(1, (int[]){0});
    expect_node(&tc, "per-rank CUDA_VISIBLE_DEVICES", node, 3, "cuda", (int[]){0, 0, 0}, NULL);
    // --gpu-bind=closest: ranks 0-3 see GPUs 0-3, ranks 4-7 GPUs 4-7: rank k takes its (k mod 4)-th
    for (int r = 0; r < 8; r++) node[r] = view(4, r < 4 ? (int[]){0, 1, 2, 3} : (int[]){4, 5, 6, 7});
    expect_node(&tc, "two NUMA domains", node, 8, "cuda", (int[]){0, 1, 2, 3, 0, 1, 2, 3}, NULL);
    // overlapping views that only an augmenting path solves: rank 0 sees {0, 1}, rank 1 only {0}
    node[0] = view(2, (int[]){0, 1}), node[1] = view(1, (int[]){0});
    expect_node(&tc, "rank 0 moves over", node, 2, "cuda", (int[]){1, 0}, NULL);
    node[0] = view(2, (int[]){0, 1}), node[1] = view(2, (int[]){1, 2}), node[2] = view(1, (int[]){0});
    expect_node(&tc, "a chain of moves", node, 3, "cuda", (int[]){1, 1, 0}, NULL);  // GPUs 1, 2, 0
    // two ranks given the same GPU (srun --gpus=1 with 2 tasks): refused on every rank, naming launches that work
    node[0] = view(1, (int[]){2}), node[1] = view(1, (int[]){2});
    expect_node(&tc, "two tasks, one GPU", node, 2, "cuda", NULL, "node has 2 ranks but 1 visible GPU");
    expect_node(&tc, "two tasks, one GPU", node, 2, "cuda", NULL, "--gpus-per-task=1");
    expect_node(&tc, "two tasks, one GPU, auto", node, 2, "auto", NULL, "run.device = \"cpu\"");
    // views that differ and still leave a rank without a GPU of its own
    node[0] = view(2, (int[]){0, 1}), node[1] = view(1, (int[]){0}), node[2] = view(1, (int[]){1});
    expect_node(&tc, "three ranks, two GPUs", node, 3, "cuda", NULL, "3 ranks see 2 distinct GPUs");
    expect_node(&tc, "three ranks, two GPUs", node, 3, "cuda", NULL, "rank 2 (which sees 1, the first uuid 51c0ffee)");
    expect_node(&tc, "three ranks, two GPUs", node, 3, "cuda", NULL, "--gpus-per-task=1");
    // a rank that sees nothing while others see GPUs: refused on every rank (auto too: no silent CPU rank)
    node[0] = view(1, (int[]){0}), node[1] = view(0, NULL);
    expect_node(&tc, "a rank without a GPU", node, 2, "cuda", NULL, "node-local rank 1 sees no GPU but rank 0 sees 1");
    expect_node(&tc, "a rank without a GPU, auto", node, 2, "auto", NULL, "sees no GPU");
    // no rank sees one: auto takes the CPU on every rank
    node[0] = view(0, NULL), node[1] = view(0, NULL);
    for (int r = 0; r < 2; r++) expect_rank(&tc, "no GPU on the node", r, 2, node, "auto", 1, 0, -1, "using the CPU");
    // a NULL err is allowed
    node_shared(node, 2, 2);
    T_CHECK(&tc, devbind_choose(1, 2, node, "cuda", 1, &dev, NULL) == 1 && dev == 1, "NULL err: rank 1 -> device 1");
    node_shared(node, 4, 2);
    T_CHECK(&tc, devbind_choose(1, 4, node, "cuda", 1, &dev, NULL) == -1 && dev == -1, "NULL err: refusal");
    // the build facts agree with each other
    DevbindView mine;
    devbind_view_local(&mine);
    T_CHECK(&tc, devbind_built_with_cuda() || mine.n == 0, "a build without CUDA must see no devices");
    printf("devbind: built with CUDA %d, %d visible device(s)\n", devbind_built_with_cuda(), mine.n);
    return t_finish(&tc, "test_devbind");
}
