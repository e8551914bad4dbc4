// test_cuda_fmt.h: what test_backend_cuda_fuse.c (LoRA on the frozen GEMM, activations in the weight format)
// and test_backend_cuda_wf.c (RoPE and attention in the weight format) share (static inline; include inside
// #ifdef ACTLORA_HAVE_CUDA after test_fixture.h; not together with test_cuda_common.h, whose Ctx, hrand()
// and cmp_norm() it would clash with):
//   - FmtCtx: the four backends both compare, CPU and GPU in each weight format ([0] fp32, [1] bf16), and the
//     inputs' Rand;
//   - host tensors and copies: hrand(), on() (an fp32 buffer), wf_on() (a buffer in the weight format),
//     compact() (a strided host matrix made contiguous), round_fmt() (host values rounded to the format);
//   - the measures, each a T_CHECK with the caller's tolerance (or none: exact) and one printed line:
//     cmp_norm() (max |diff| / max |cpu|), cmp_elem() (fp32 rel, bf16 ulps; the tolerances are in its
//     comment), wf_exact() (two weight-format buffers, check_exact()), exact() (bit for bit);
//   - setup: fmt_ctx_open() (the SKIP line, or the four backends with their formats, each a check, and the
//     device line) and fmt_ctx_close().
// ACTLORA_TEST_HARNESS_ON_CPU=1 puts the CPU backend on both sides (a check of the tests' own code).
#ifndef ACTLORA_TEST_CUDA_FMT_H
#define ACTLORA_TEST_CUDA_FMT_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/backend.h"
#include "actlora/backend_cuda.h"
#include "actlora/common.h"
#include "test_fixture.h"  // Rand / fill(), falloc(), to_d(), bf16_ref(), check_close_ref(), check_exact()
#include "test_util.h"

// ------------------------------------------------------------------------------ helpers

typedef struct {
    TestCounts *tc;
    Backend cpu[2], gpu[2];  // [0] fp32, [1] bf16 weight format
    Rand r;
} FmtCtx;

static inline float *hrand(FmtCtx *c, size_t n, double lo, double hi) {
    float *x = xmalloc((n ? n : 1) * sizeof(float), "test host tensor");
    fill(x, n, lo, hi, &c->r);
    return x;
}

// an fp32 buffer of be holding a copy of h
static inline float *on(Backend *be, const void *h, size_t n) {
    float *d = falloc(be, n ? n : 1);
    if (n) be->upload(be, d, h, n * sizeof(float));
    return d;
}

// a buffer in be's weight format holding the host values h rounded to the format
static inline void *wf_on(Backend *be, const float *h, size_t n) {
    void *w = be->weight_alloc(be, n ? n : 1, "wf test tensor");
    if (n) be->weight_upload(be, w, h, n);
    return w;
}

// x [rows, cols] (row stride ld) -> a contiguous host copy
static inline float *compact(const float *x, int rows, int cols, int ld) {
    float *o = xmalloc((size_t)rows * cols * sizeof(float) + 4, "compact copy");
    for (int i = 0; i < rows; i++) memcpy(o + (size_t)i * cols, x + (size_t)i * ld, (size_t)cols * sizeof(float));
    return o;
}

// x rounded to the format f in place (bf16_ref: the nearest bf16, ties to even)
static inline void round_fmt(int f, float *x, size_t n) {
    if (f)
        for (size_t i = 0; i < n; i++) x[i] = bf16_ref(x[i]);
}

// ------------------------------------------------------------------------------ measures

static inline void cmp_norm(TestCounts *tc, const float *got, const float *want, size_t n, double tol,
                            const char *what) {
    double mx = 0.0, d = 0.0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs((double)want[i]));
        double e = fabs((double)got[i] - (double)want[i]);
        if (!(e <= d)) d = e, w = i;  // NaN sticks
    }
    double e = d / (mx > 0 ? mx : 1.0);
    T_CHECK(tc, e <= tol, "%s: max |diff| / max |cpu| = %.3g > %.0e at [%zu] (gpu %.9g vs cpu %.9g)", what, e, tol, w,
            n ? (double)got[w] : 0.0, n ? (double)want[w] : 0.0);
    printf("  %-58s norm %.2e (tol %.0e)\n", what, e, tol);
}

// Elementwise outputs: fp32 rel 1e-5 (test_backend_cuda's measure: |d| / (|cpu| + 1e-2 max|cpu|)); bf16
// |d| <= one bf16 ulp of |cpu| + 1e-6 max|cpu| (the fp32 values may differ by an ulp of expf and round apart).
static inline void cmp_elem(TestCounts *tc, int f, const float *got, const float *want, size_t n, const char *what) {
    if (!f) {
        double *ref = to_d(want, n);
        check_close_ref(tc, got, ref, n, 1e-5, 1e-2, what, 58);
        free(ref);
        return;
    }
    double mx = 0.0, worst = 0.0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs((double)want[i]));
    for (size_t i = 0; i < n; i++) {
        int e;
        frexp(fabs((double)want[i]), &e);
        double ulp = want[i] != 0.0f ? ldexp(1.0, e - 8) : 0.0;
        double r = fabs((double)got[i] - (double)want[i]) / (ulp + 1e-6 * mx + 1e-30);
        if (!(r <= worst)) worst = r, w = i;
    }
    T_CHECK(tc, worst <= 1.0, "%s: %.3g bf16 ulps at [%zu] (%.9g vs %.9g)", what, worst, w, n ? (double)got[w] : 0.0,
            n ? (double)want[w] : 0.0);
    printf("  %-58s %.2f bf16 ulp (tol 1)\n", what, worst);
}

// exact comparison of two weight-format buffers of n elements (host copies; check_exact: NaN equals NaN),
// with a line
static inline void wf_exact(TestCounts *tc, Backend *gb, const void *g, Backend *cb, const void *cw, size_t n,
                            const char *what) {
    float *a = fx_weights_host(gb, g, n), *b = fx_weights_host(cb, cw, n);
    check_exact(tc, a, b, n, what);
    printf("  %-58s exact\n", what);
    free(a), free(b);
}

// one check that got == want bit for bit (n floats), with a line
static inline void exact(TestCounts *tc, const float *got, const float *want, size_t n, const char *what) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            if (!bad) first = i;
            bad++;
        }
    T_CHECK(tc, bad == 0, "%s: %zu of %zu elements differ, first [%zu] %.9g vs %.9g", what, bad, n, first,
            n ? (double)got[first] : 0.0, n ? (double)want[first] : 0.0);
    printf("  %-58s %s\n", what, bad ? "DIFFERS" : "exact");
}

// ------------------------------------------------------------------------------ setup

// 0 after printing "<name>: SKIP: no CUDA device is visible" (the caller returns TEST_SKIP); otherwise 1,
// with c zeroed, c->tc = tc, c->r seeded with seed, c->cpu[f] and c->gpu[f] (device 0; harness: the CPU)
// opened in the weight format f (fp32, bf16), each backend_set_dtype a check into tc, and the line
// "<name>: device 0" (harness: "<name>: ACTLORA_TEST_HARNESS_ON_CPU (CPU on both sides)") printed.
static inline int fmt_ctx_open(FmtCtx *c, TestCounts *tc, const char *name, uint64_t seed) {
    int harness = getenv("ACTLORA_TEST_HARNESS_ON_CPU") != NULL;
    int n = harness ? 1 : backend_cuda_device_count();
    if (n <= 0) {
        printf("%s: SKIP: no CUDA device is visible\n", name);
        return 0;
    }
    memset(c, 0, sizeof *c);
    c->tc = tc;
    c->r.s = seed;
    char msg[256];
    for (int f = 0; f < 2; f++) {
        backend_cpu_init(&c->cpu[f], 0);
        if (harness) backend_cpu_init(&c->gpu[f], 0);
        else backend_cuda_init(&c->gpu[f], 0);
        const char *dt = f ? "bf16" : "fp32";
        T_CHECK(tc, backend_set_dtype(&c->cpu[f], dt, msg, sizeof msg) == 0, "%s", msg);
        T_CHECK(tc, backend_set_dtype(&c->gpu[f], dt, msg, sizeof msg) == 0, "%s", msg);
    }
    printf("%s: %s\n", name, harness ? "ACTLORA_TEST_HARNESS_ON_CPU (CPU on both sides)" : "device 0");
    return 1;
}

static inline void fmt_ctx_close(FmtCtx *c) {
    for (int f = 0; f < 2; f++) backend_free(&c->cpu[f]), backend_free(&c->gpu[f]);
}

#endif
