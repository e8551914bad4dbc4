// test_devbind.c: backend / device choice per rank (devbind.h), every case, no GPU needed.
#include <stdio.h>
#include <string.h>

#include "actlora/devbind.h"
#include "test_util.h"

// runs devbind_choose and checks the result, the device and (when given) a phrase of the message
static void expect(TestCounts *tc, int lr, int lw, int vis, const char *setting, int built, int want_rc, int want_dev,
                   const char *phrase) {
    Error err;
    int dev = 12345;
    int rc = devbind_choose(lr, lw, vis, setting, built, &dev, &err);
    T_CHECK(tc, rc == want_rc && dev == want_dev,
            "devbind_choose(rank %d of %d, %d GPUs, \"%s\", built %d) = %d device %d, expected %d device %d (%s)", lr,
            lw, vis, setting ? setting : "(null)", built, rc, dev, want_rc, want_dev, err.msg);
    if (phrase)
        T_CHECK(tc, strstr(err.msg, phrase) != NULL, "message '%s' lacks '%s'", err.msg, phrase);
    T_CHECK(tc, err.msg[0] != 0, "no message / note for rank %d of %d, %d GPUs, \"%s\"", lr, lw, vis,
            setting ? setting : "(null)");
}

int main(void) {
    TestCounts tc = {0};
    // cpu: always the CPU, whatever is visible or built
    expect(&tc, 0, 1, 0, "cpu", 0, 0, -1, "CPU backend");
    expect(&tc, 3, 4, 4, "cpu", 1, 0, -1, "CPU backend");
    expect(&tc, 0, 8, 0, "cpu", 1, 0, -1, NULL);
    // cuda: one rank per GPU, device = local rank
    expect(&tc, 0, 1, 1, "cuda", 1, 1, 0, "device 0");
    expect(&tc, 3, 4, 4, "cuda", 1, 1, 3, "device 3 of 4");
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
    // a NULL err is allowed
    int dev = 9;
    T_CHECK(&tc, devbind_choose(1, 2, 2, "cuda", 1, &dev, NULL) == 1 && dev == 1, "NULL err: rank 1 -> device 1");
    T_CHECK(&tc, devbind_choose(1, 4, 2, "cuda", 1, &dev, NULL) == -1 && dev == -1, "NULL err: refusal");
    // the build facts agree with each other
    T_CHECK(&tc, devbind_built_with_cuda() || devbind_visible_devices() == 0,
            "a build without CUDA must see no devices");
    printf("devbind: built with CUDA %d, %d visible device(s)\n", devbind_built_with_cuda(), devbind_visible_devices());
    return t_finish(&tc, "test_devbind");
}
