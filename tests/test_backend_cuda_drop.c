// test_backend_cuda_drop.c: LoRA dropout without a copy of the dropped input (lora_down_dropout,
// lora_grad_a_dropout, lora_dx_dropout; backend.h) on the CUDA backend against the CPU backend (which
// materialises the dropped input and calls gemm), in both weight formats (fp32; bf16 against the CPU's bf16
// emulation), with X fp32 (x_wf 0) and in the weight format (x_wf 1). Exits 77 (skipped) when the build has no
// CUDA backend or no GPU is visible; ACTLORA_TEST_HARNESS_ON_CPU=1 runs every comparison with the CPU backend on
// both sides (a check of this test's own code without a GPU). Shared context and measures: test_cuda_fmt.h.
//  Cases: shapes N x in, rank r, row stride ldx of X (37x40 r8 ld48; 300x129 r3: three chunks of rows in the
//  GPU's grad_a; 1x7 r17; 64x300 r48 ld301; 160x1030 r32: several column tiles; 5x33 r70: r past 64, outputs in
//  chunks; 9000x16 r4 ld20: the chunk count capped at 64), each with p = 0.1, 0.5 and 0 (no mask); X's columns
//  past in are NaN (never read); row 1 of X is zero where the mask keeps and 1e30 where it drops (so its dropped
//  row is zero exactly when the mask is right).
//  GPU vs CPU, fp32 sums in another order, the same mask (norm: max |diff| / max |cpu|):
//    lora_down_dropout a (NaN before: overwritten) norm 1e-5; a's row 1 exactly 0; a second run bit for bit;
//    lora_grad_a_dropout dA (random before: accumulates) norm 1e-5; a second run bit for bit (determinism);
//    lora_dx_dropout dX (random before: accumulates) norm 1e-5; the elements the mask drops (the mask computed
//      on the host with rng_uniform) keep their previous value bit for bit (once per format and case: dX does
//      not read X).
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#ifdef ACTLORA_HAVE_CUDA
#include "actlora/backend.h"
#include "actlora/backend_cuda.h"
#include "actlora/common.h"
#include "actlora/rng.h"
#include "test_fixture.h"
#include "test_cuda_fmt.h"  // FmtCtx, host copies, cmp_norm / exact, setup

typedef struct {
    int N, in, r, ldx;
} DShape;

// keep[n * in + c] = 1 where the dropout op's element n * in + c is kept (every element when p == 0)
static unsigned char *host_mask(int N, int in, float p, uint64_t key) {
    size_t n = (size_t)N * in;
    unsigned char *k = xmalloc(n ? n : 1, "host mask");
    for (size_t i = 0; i < n; i++) k[i] = p == 0.0f || rng_uniform(key, (uint64_t)i) >= p;
    return k;
}

// the buffer of X on be: fp32 (x_wf 0) or in be's weight format (x_wf 1)
static void *x_on(Backend *be, int x_wf, const float *X, size_t n) { return x_wf ? wf_on(be, X, n) : on(be, X, n); }

// lora_down_dropout and lora_grad_a_dropout with X fp32 or in the format; lora_dx_dropout once (x_wf 0)
static void drop_case(FmtCtx *c, int f, int x_wf, const DShape *s, float p, uint64_t key) {
    Backend *cb = &c->cpu[f], *gb = &c->gpu[f];
    const int N = s->N, in = s->in, r = s->r, ldx = s->ldx;
    const size_t nx = (size_t)N * ldx, na = (size_t)N * r, nA = (size_t)r * in, nd = (size_t)N * in;
    char tag[96], what[160];
    snprintf(tag, sizeof tag, "wf%d %dx%d r%d ld%d p%.1f", x_wf, N, in, r, ldx, (double)p);
    const char *fn = f ? "bf16" : "fp32";

    unsigned char *keep = host_mask(N, in, p, key);
    float *X = hrand(c, nx, -1, 1);
    for (int n = 0; n < N; n++)
        for (int k = in; k < ldx; k++) X[(size_t)n * ldx + k] = NAN;  // past in: never read
    const int zrow = N > 1 ? 1 : -1;                                  // kept values 0, dropped ones huge
    if (zrow >= 0)
        for (int k = 0; k < in; k++) X[(size_t)zrow * ldx + k] = keep[(size_t)zrow * in + k] ? 0.0f : 1e30f;
    if (x_wf) round_fmt(f, X, nx);
    float *A = hrand(c, nA, -1, 1), *da = hrand(c, na, -1, 1), *dA0 = hrand(c, nA, -1, 1);
    float *a0 = xmalloc((na ? na : 1) * sizeof(float), "a before");
    fill_nan(a0, na);
    void *cX = x_on(cb, x_wf, X, nx), *gX = x_on(gb, x_wf, X, nx);
    float *cA = on(cb, A, nA), *gA = on(gb, A, nA), *cda = on(cb, da, na), *gda = on(gb, da, na);

    // ---- lora_down_dropout
    float *ca = on(cb, a0, na), *ga = on(gb, a0, na), *ga2 = on(gb, a0, na);
    cb->lora_down_dropout(cb, ca, cX, ldx, x_wf, cA, N, in, r, p, key);
    gb->lora_down_dropout(gb, ga, gX, ldx, x_wf, gA, N, in, r, p, key);
    gb->lora_down_dropout(gb, ga2, gX, ldx, x_wf, gA, N, in, r, p, key);
    float *hc = to_host(cb, ca, na), *hg = to_host(gb, ga, na), *hg2 = to_host(gb, ga2, na);
    snprintf(what, sizeof what, "%s lora_down_dropout %s", fn, tag);
    cmp_norm(c->tc, hg, hc, na, 1e-5, what);
    if (zrow >= 0) {
        float *zero = xmalloc((size_t)r * sizeof(float), "zeros");
        memset(zero, 0, (size_t)r * sizeof(float));
        snprintf(what, sizeof what, "%s lora_down_dropout %s row of kept zeros", fn, tag);
        exact(c->tc, hg + (size_t)zrow * r, zero, (size_t)r, what);
        free(zero);
    }
    snprintf(what, sizeof what, "%s lora_down_dropout %s second run", fn, tag);
    exact(c->tc, hg2, hg, na, what);
    free(hc), free(hg), free(hg2);
    cb->free(cb, ca), gb->free(gb, ga), gb->free(gb, ga2);

    // ---- lora_grad_a_dropout (dA starts non-zero: +=)
    float *cdA = on(cb, dA0, nA), *gdA = on(gb, dA0, nA), *gdA2 = on(gb, dA0, nA);
    cb->lora_grad_a_dropout(cb, cdA, cda, cX, ldx, x_wf, N, in, r, p, key);
    gb->lora_grad_a_dropout(gb, gdA, gda, gX, ldx, x_wf, N, in, r, p, key);
    gb->lora_grad_a_dropout(gb, gdA2, gda, gX, ldx, x_wf, N, in, r, p, key);
    hc = to_host(cb, cdA, nA), hg = to_host(gb, gdA, nA), hg2 = to_host(gb, gdA2, nA);
    snprintf(what, sizeof what, "%s lora_grad_a_dropout %s", fn, tag);
    cmp_norm(c->tc, hg, hc, nA, 1e-5, what);
    snprintf(what, sizeof what, "%s lora_grad_a_dropout %s second run", fn, tag);
    exact(c->tc, hg2, hg, nA, what);
    free(hc), free(hg), free(hg2);
    cb->free(cb, cdA), gb->free(gb, gdA), gb->free(gb, gdA2);

    // ---- lora_dx_dropout (dX starts random: +=; dropped elements keep their value)
    if (!x_wf) {
        float *dX0 = hrand(c, nd, -1, 1);
        float *cdX = on(cb, dX0, nd), *gdX = on(gb, dX0, nd);
        cb->lora_dx_dropout(cb, cdX, cda, cA, N, in, r, p, key);
        gb->lora_dx_dropout(gb, gdX, gda, gA, N, in, r, p, key);
        hc = to_host(cb, cdX, nd), hg = to_host(gb, gdX, nd);
        snprintf(what, sizeof what, "%s lora_dx_dropout %dx%d r%d p%.1f", fn, N, in, r, (double)p);
        cmp_norm(c->tc, hg, hc, nd, 1e-5, what);
        float *got = xmalloc((nd ? nd : 1) * sizeof(float), "dropped dX");
        float *want = xmalloc((nd ? nd : 1) * sizeof(float), "dX before");
        size_t m = 0;
        for (size_t i = 0; i < nd; i++)
            if (!keep[i]) got[m] = hg[i], want[m++] = dX0[i];
        snprintf(what, sizeof what, "%s lora_dx_dropout %dx%d r%d p%.1f: %zu dropped unchanged", fn, N, in, r,
                 (double)p, m);
        exact(c->tc, got, want, m, what);
        free(got), free(want), free(hc), free(hg), free(dX0);
        cb->free(cb, cdX), gb->free(gb, gdX);
    }

    free(keep), free(X), free(A), free(da), free(dA0), free(a0);
    cb->free(cb, cX), gb->free(gb, gX), cb->free(cb, cA), gb->free(gb, gA), cb->free(cb, cda), gb->free(gb, gda);
}

static int run(void) {
    TestCounts tc = {0};
    FmtCtx c;
    if (!fmt_ctx_open(&c, &tc, "test_backend_cuda_drop", 5151)) return TEST_SKIP;
    const DShape shapes[] = {
        {37, 40, 8, 48},       // strided X (bf16 rows of 96 bytes)
        {300, 129, 3, 129},    // three chunks of rows in the GPU's lora_grad_a_dropout
        {1, 7, 17, 7},         // one row, r past 16
        {64, 300, 48, 301},    // r in (32, 64], odd stride, three column tiles of A
        {160, 1030, 32, 1030}, // several column tiles, two chunks
        {5, 33, 70, 35},       // r past 64: the outputs in chunks
        {9000, 16, 4, 20},     // the chunk count capped at 64
    };
    const float probs[] = {0.1f, 0.5f, 0.0f};
    uint64_t key = 0x5eed;
    for (int f = 0; f < 2; f++)
        for (int x_wf = 0; x_wf < 2; x_wf++)
            for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
                for (size_t k = 0; k < sizeof probs / sizeof probs[0]; k++)
                    drop_case(&c, f, x_wf, &shapes[i], probs[k], rng_key(key, ((uint64_t)i << 8) | k));
    fmt_ctx_close(&c);
    return t_finish(&tc, "test_backend_cuda_drop");
}
#endif

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
#ifndef ACTLORA_HAVE_CUDA
    printf("test_backend_cuda_drop: SKIP: built without the CUDA backend (configure with -DACTLORA_CUDA=ON)\n");
    return TEST_SKIP;
#else
    return run();
#endif
}
