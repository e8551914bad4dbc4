// test_lora_dropout.c: the LoRA dropout ops (backend.h, "LoRA dropout without a copy of the dropped
// input") on the CPU backend, the reference for the CUDA kernels (test_backend_cuda_drop).
//  1. Against the ops they replace, bit for bit: lora_down_dropout = gemm(dropout(X), A^T),
//     lora_grad_a_dropout = dA + gemm(da^T, dropout(X)), lora_dx_dropout = dX + dropout(da A), with X read
//     through a row stride wider than its rows (the dropout op's element n * in + c is the mask), for
//     p = 0.3 and p = 0 (no mask), in both weight formats (the CPU stores fp32 either way).
//  2. The mask against an independent draw: where rng_uniform(key, n * in + c) < p, lora_dx_dropout leaves
//     dX exactly as it was; a row of X whose kept values are all zero gives a = 0 exactly.
//  3. A probability outside [0, 1] and a row stride below the width are refused with a message.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/backend.h"
#include "actlora/rng.h"
#include "test_fixture.h"

static float *compact(const float *x, int rows, int cols, int ld) {
    float *o = malloc((size_t)rows * cols * sizeof(float));
    for (int i = 0; i < rows; i++) memcpy(o + (size_t)i * cols, x + (size_t)i * ld, (size_t)cols * sizeof(float));
    return o;
}

static void test_against_composite(TestCounts *tc, int bf, float p) {
    Backend be;
    backend_cpu_init(&be, 2);
    char msg[256], what[160];
    T_CHECK(tc, backend_set_dtype(&be, bf ? "bf16" : "fp32", msg, sizeof msg) == 0, "%s", msg);
    Rand r = {bf ? 71u : 73u};
    int N = 37, in = 40, R = 8, ld = 48;
    uint64_t key = 0xd12035ULL;
    float *X = malloc((size_t)N * ld * 4), *A = malloc((size_t)R * in * 4), *da = malloc((size_t)N * R * 4);
    float *dA0 = malloc((size_t)R * in * 4), *dX0 = malloc((size_t)N * in * 4);
    fill(X, (size_t)N * ld, -2, 2, &r), fill(A, (size_t)R * in, -1, 1, &r), fill(da, (size_t)N * R, -1, 1, &r);
    fill(dA0, (size_t)R * in, -1, 1, &r), fill(dX0, (size_t)N * in, -1, 1, &r);
    for (int c = 0; c < in; c++) X[(size_t)5 * ld + c] = 0.0f;  // row 5: all zero
    // the composite: the dropout op on the compact X, then the gemm op
    float *Xc = compact(X, N, in, ld), *Xd = malloc((size_t)N * in * 4);
    be.dropout(&be, Xd, Xc, (size_t)N * in, p, key);
    float *a_want = malloc((size_t)N * R * 4), *a_got = malloc((size_t)N * R * 4);
    be.gemm(&be, 0, 1, N, R, in, 1.0f, Xd, A, 0.0f, a_want);
    be.lora_down_dropout(&be, a_got, X, ld, 1, A, N, in, R, p, key);
    snprintf(what, sizeof what, "%s p %.1f lora_down_dropout = gemm(dropout(X), A^T)", bf ? "bf16" : "fp32", (double)p);
    check_exact(tc, a_got, a_want, (size_t)N * R, what);
    int zero = 1;
    for (int j = 0; j < R; j++) zero &= a_got[(size_t)5 * R + j] == 0.0f;
    T_CHECK(tc, zero, "%s: a row of zeros gives a non-zero down-projection", what);
    float *dA_want = malloc((size_t)R * in * 4), *dA_got = malloc((size_t)R * in * 4);
    memcpy(dA_want, dA0, (size_t)R * in * 4), memcpy(dA_got, dA0, (size_t)R * in * 4);
    be.gemm(&be, 1, 0, R, in, N, 1.0f, da, Xd, 1.0f, dA_want);
    be.lora_grad_a_dropout(&be, dA_got, da, X, ld, 0, N, in, R, p, key);
    snprintf(what, sizeof what, "%s p %.1f lora_grad_a_dropout = dA + da^T dropout(X)", bf ? "bf16" : "fp32", (double)p);
    check_exact(tc, dA_got, dA_want, (size_t)R * in, what);
    float *t = malloc((size_t)N * in * 4), *dX_want = malloc((size_t)N * in * 4), *dX_got = malloc((size_t)N * in * 4);
    be.gemm(&be, 0, 0, N, in, R, 1.0f, da, A, 0.0f, t);
    be.dropout(&be, t, t, (size_t)N * in, p, key);
    memcpy(dX_want, dX0, (size_t)N * in * 4), memcpy(dX_got, dX0, (size_t)N * in * 4);
    be.add(&be, dX_want, t, (size_t)N * in);
    be.lora_dx_dropout(&be, dX_got, da, A, N, in, R, p, key);
    snprintf(what, sizeof what, "%s p %.1f lora_dx_dropout = dX + dropout(da A)", bf ? "bf16" : "fp32", (double)p);
    check_exact(tc, dX_got, dX_want, (size_t)N * in, what);
    // the mask, drawn independently: dropped positions keep dX as it was
    int kept_bad = 0, dropped = 0;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < in; c++) {
            size_t i = (size_t)n * in + c;
            if (p > 0.0f && rng_uniform(key, (uint64_t)i) < p) dropped++, kept_bad += dX_got[i] != dX0[i];
        }
    T_CHECK(tc, kept_bad == 0 && (p == 0.0f || dropped > 0), "%s: %d of %d dropped positions changed dX", what,
            kept_bad, dropped);
    free(X), free(A), free(da), free(dA0), free(dX0), free(Xc), free(Xd), free(a_want), free(a_got);
    free(dA_want), free(dA_got), free(t), free(dX_want), free(dX_got);
    backend_free(&be);
}

static void bad_p(void *ctx) {
    (void)ctx;
    Backend be;
    backend_cpu_init(&be, 1);
    float x[4] = {0}, A[4] = {0}, a[2];
    be.lora_down_dropout(&be, a, x, 2, 0, A, 2, 2, 1, 1.5f, 1);
}

static void bad_ld(void *ctx) {
    (void)ctx;
    Backend be;
    backend_cpu_init(&be, 1);
    float x[4] = {0}, da[2] = {0}, dA[2] = {0};
    be.lora_grad_a_dropout(&be, dA, da, x, 1, 0, 2, 2, 1, 0.5f, 1);
}

int main(int argc, char **argv) {
    (void)argc, (void)argv;
    TestCounts tc = {0};
    for (int bf = 0; bf <= 1; bf++) {
        test_against_composite(&tc, bf, 0.3f);
        test_against_composite(&tc, bf, 0.0f);
    }
    expect_death(&tc, bad_p, NULL, "probability 1.5 is outside [0, 1]", "lora_down_dropout p = 1.5");
    expect_death(&tc, bad_ld, NULL, "bad shape", "lora_grad_a_dropout ldx < in");
    return t_finish(&tc, "test_lora_dropout");
}
