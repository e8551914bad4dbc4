// test_cuda_common.h: what test_backend_cuda.c (the ops one by one) and test_backend_cuda_model.c (the
// tiny model, bf16 training, NCCL) share (static inline; include inside #ifdef ACTLORA_HAVE_CUDA):
//   - Ctx: the four backends both compare (fp32 and bf16 weight format, CPU and GPU) and the inputs' Rand;
//   - host tensors and copies: hrand(), on_cpu(), alloc_copy(), download_any(), on_gpu(), from_gpu();
//   - the measures, each a T_CHECK with the caller's tolerance and one printed line (test_backend_cuda.c's
//     header states them): cmp_rel(), cmp_norm(), cmp_exact(), cmp_double();
//   - setup: cuda_test_devices() (the SKIP line, or the device line), cuda_test_open_gpu() and
//     cuda_test_open_rest() (the backends and their weight formats, each step a check), cuda_test_close().
// ACTLORA_TEST_HARNESS_ON_CPU=1 puts the CPU backend on both sides (a check of the tests' own code).
#ifndef ACTLORA_TEST_CUDA_COMMON_H
#define ACTLORA_TEST_CUDA_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/backend.h"
#include "actlora/backend_cuda.h"
#include "actlora/common.h"
#include "test_fixture.h"  // Rand / rnd
#include "test_util.h"

// ------------------------------------------------------------------------------ helpers

typedef struct {
    TestCounts *tc;
    Backend cpu, gpu;  // fp32 weight format on both: the fp32 parity checks
    Backend cbf, gbf;  // bf16 weight format: the CPU's bf16 emulation and the CUDA bf16 path
    Rand r;
} Ctx;

static inline float *hrand(Ctx *c, size_t n, double lo, double hi) {
    float *x = xmalloc((n ? n : 1) * sizeof(float), "test host tensor");
    for (size_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * rnd(&c->r));
    return x;
}

// a CPU-backend buffer holding a copy of host data
static inline void *on_cpu(Ctx *c, const void *h, size_t bytes) {
    void *p = c->cpu.alloc(&c->cpu, bytes, "cpu test tensor");
    if (bytes) memcpy(p, h, bytes);
    return p;
}

// a buffer of backend be holding a copy of host data
static inline void *alloc_copy(Backend *be, const void *h, size_t bytes) {
    void *p = be->alloc(be, bytes, "test tensor");
    be->upload(be, p, h, bytes);
    return p;
}

// a fresh host copy of n floats of backend be's memory
static inline float *download_any(Backend *be, const void *d, size_t n) {
    float *h = xmalloc((n ? n : 1) * sizeof(float), "test download");
    be->download(be, h, d, n * sizeof(float));
    return h;
}

// the same on the GPU backend
static inline void *on_gpu(Ctx *c, const void *h, size_t bytes) { return alloc_copy(&c->gpu, h, bytes); }
static inline float *from_gpu(Ctx *c, const void *d, size_t n) { return download_any(&c->gpu, d, n); }

static inline void cmp_rel(Ctx *c, const float *got, const float *want, size_t n, double tol, const char *what) {
    double mx = 0.0, worst = 0.0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs((double)want[i]));
    double atol = 1e-2 * mx + 1e-30;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)want[i]) / (fabs((double)want[i]) + atol);
        if (!(e <= worst)) {  // NaN is the worst
            worst = e;
            w = i;
        }
    }
    T_CHECK(c->tc, worst <= tol, "%s: max rel err %.3g > %.1g at [%zu] (gpu %.9g vs cpu %.9g)", what, worst, tol, w,
            n ? (double)got[w] : 0.0, n ? (double)want[w] : 0.0);
    printf("  %-52s rel  %.2e (tol %.0e)\n", what, worst, tol);
}

static inline void cmp_norm(Ctx *c, const float *got, const float *want, size_t n, double tol, const char *what) {
    double mx = 0.0, dmax = 0.0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs((double)want[i]));
        double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= dmax)) {
            dmax = d;
            w = i;
        }
    }
    double e = dmax / (mx > 0 ? mx : 1.0);
    T_CHECK(c->tc, e <= tol, "%s: max |diff| / max |cpu| = %.3g > %.1g at [%zu] (gpu %.9g vs cpu %.9g)", what, e, tol,
            w, n ? (double)got[w] : 0.0, n ? (double)want[w] : 0.0);
    printf("  %-52s norm %.2e (tol %.0e)\n", what, e, tol);
}

static inline void cmp_exact(Ctx *c, const float *got, const float *want, size_t n, const char *what) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            if (!bad) first = i;
            bad++;
        }
    T_CHECK(c->tc, bad == 0, "%s: %zu of %zu elements differ, first [%zu] gpu %.9g vs cpu %.9g", what, bad, n, first,
            n ? (double)got[first] : 0.0, n ? (double)want[first] : 0.0);
    printf("  %-52s %s\n", what, bad ? "DIFFERS" : "bit-identical");
}

static inline void cmp_double(Ctx *c, double got, double want, double tol, const char *what) {
    double e = fabs(got - want) / (fabs(want) + 1e-300);
    T_CHECK(c->tc, e <= tol, "%s: gpu %.17g vs cpu %.17g (rel %.3g > %.1g)", what, got, want, e, tol);
    printf("  %-52s rel  %.2e (tol %.0e)\n", what, e, tol);
}

// ------------------------------------------------------------------------------ setup

// The number of CUDA devices (1 in the harness mode), after printing "<name>: N device(s); ..."; or 0
// after printing "<name>: SKIP: no CUDA device is visible" (the caller returns TEST_SKIP).
static inline int cuda_test_devices(const char *name, int harness) {
    int n = harness ? 1 : backend_cuda_device_count();
    if (n <= 0) {
        printf("%s: SKIP: no CUDA device is visible\n", name);
        return 0;
    }
    size_t fb = 0, tb = 0;
    if (!harness) backend_cuda_device_memory(0, &fb, &tb);
    printf("%s: %d device(s); device 0 has %.1f of %.1f GiB free\n", name, n, (double)fb / 1073741824.0,
           (double)tb / 1073741824.0);
    return n;
}

// c->cpu and c->cbf (bf16 emulation) on the CPU, c->gpu on device 0 (harness: the CPU), checked into
// c->tc: the CUDA backend's name and default weight format (bf16).
static inline void cuda_test_open_gpu(Ctx *c, int harness) {
    char msg[256];
    backend_cpu_init(&c->cpu, 0);
    backend_cpu_init(&c->cbf, 0);
    T_CHECK(c->tc, backend_set_dtype(&c->cbf, "bf16", msg, sizeof msg) == 0, "CPU bf16: %s", msg);
    if (harness) backend_cpu_init(&c->gpu, 0);
    else {
        backend_cuda_init(&c->gpu, 0);
        T_CHECK(c->tc, strcmp(c->gpu.name, "cuda") == 0, "backend name '%s'", c->gpu.name);
        T_CHECK(c->tc, c->gpu.weight_dtype == BACKEND_WEIGHT_BF16 && c->gpu.weight_bytes == 2,
                "the CUDA backend's default weight format is not bf16");
    }
}

// Then c->gbf (bf16 on device 0: "auto"; harness: the CPU's emulation), c->gpu switched to fp32 weights
// (the fp32 parity checks) and c->cpu's "auto" (fp32), each checked into c->tc.
static inline void cuda_test_open_rest(Ctx *c, int harness) {
    char msg[256];
    if (harness) {
        backend_cpu_init(&c->gbf, 0);
        T_CHECK(c->tc, backend_set_dtype(&c->gbf, "bf16", msg, sizeof msg) == 0, "CPU bf16: %s", msg);
    } else {
        backend_cuda_init(&c->gbf, 0);
        T_CHECK(c->tc,
                backend_set_dtype(&c->gbf, "auto", msg, sizeof msg) == 0 && c->gbf.weight_dtype == BACKEND_WEIGHT_BF16,
                "CUDA auto -> bf16: %s", msg);
    }
    T_CHECK(c->tc, backend_set_dtype(&c->gpu, "fp32", msg, sizeof msg) == 0, "fp32: %s", msg);
    T_CHECK(c->tc,
            backend_set_dtype(&c->cpu, "auto", msg, sizeof msg) == 0 && c->cpu.weight_dtype == BACKEND_WEIGHT_FP32,
            "CPU auto -> fp32: %s", msg);
}

static inline void cuda_test_close(Ctx *c) {
    backend_free(&c->gbf);
    backend_free(&c->cbf);
    backend_free(&c->gpu);
    backend_free(&c->cpu);
}

#endif
