// test_util.h: a few assertion macros shared by the C tests. Each test binary prints
// "<name>: N passed, M failed" at the end and exits non-zero on any failure; a test
// that cannot run on this machine exits with TEST_SKIP (77), which ctest reports as skipped.
#ifndef ACTLORA_TEST_UTIL_H
#define ACTLORA_TEST_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define TEST_SKIP 77

typedef struct {
    int passed, failed;
} TestCounts;

#define T_CHECK(tc, cond, ...)                                            \
    do {                                                                  \
        if (cond) (tc)->passed++;                                         \
        else {                                                            \
            (tc)->failed++;                                               \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);          \
            fprintf(stderr, __VA_ARGS__);                                 \
            fprintf(stderr, "\n");                                        \
        }                                                                 \
    } while (0)

// Max |a-b| / (|b| + atol) over n elements (equal values count 0, a NaN in either is the worst and
// stays so); reports the worst element.
static inline double t_max_rel_err(const float *a, const float *b, size_t n, double atol, size_t *worst) {
    double m = 0.0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        double diff = fabs((double)a[i] - (double)b[i]);
        double d = diff == 0.0 ? 0.0 : diff / (fabs((double)b[i]) + atol);
        if (d != d) { m = d; w = i; break; }  // NaN: the worst, and it stays so
        if (d > m) { m = d; w = i; }
    }
    if (worst) *worst = w;
    return m;
}

// Max |a-b| relative to max |b| over the tensor (gradients of tiny elements are noise-dominated; a NaN
// difference is the worst).
static inline double t_rel_to_max(const float *a, const float *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= num)) num = d;
        if (fabs((double)b[i]) > den) den = fabs((double)b[i]);
    }
    return num / (den > 0 ? den : 1.0);
}

#define T_CLOSE(tc, a, b, n, rtol, atol, what)                                         \
    do {                                                                               \
        size_t _w;                                                                     \
        double _e = t_max_rel_err((a), (b), (n), (atol), &_w);                         \
        T_CHECK(tc, _e <= (rtol), "%s: max rel err %.3g > %.3g at [%zu] (%.8g vs %.8g)", \
                (what), _e, (double)(rtol), _w, (double)(a)[_w], (double)(b)[_w]);     \
    } while (0)

static inline int t_finish(const TestCounts *tc, const char *name) {
    printf("%s: %d passed, %d failed\n", name, tc->passed, tc->failed);
    return tc->failed ? 1 : (tc->passed ? 0 : 1);
}

#endif
