// test_backend_cuda.c: the CUDA backend against the CPU reference backend, op by op on random
// inputs, in both weight formats (fp32; bf16 against the CPU's bf16 emulation). Exits 77 (skipped) when
// the build has no CUDA backend or no GPU is visible. The CPU backend itself is checked against double
// references and finite differences in test_backend_ops.c; this test checks that the two backends agree.
// The whole tiny model (fp32 and bf16 training), its determinism and NCCL are test_backend_cuda_model.c's;
// the helpers and measures are shared with it (test_cuda_common.h).
//
// Measures and tolerances:
//   rel(tol)  max_i |gpu_i - cpu_i| / (|cpu_i| + 1e-2 * max_j |cpu_j|)   (test_backend_ops' measure)
//   norm(tol) max_i |gpu_i - cpu_i| / max_j |cpu_j|                      (sums over T keys / C
//             columns with cancellation, where an element-wise bound would test rounding noise)
//   exact     bitwise equal
//   gemm: rel 1e-4 (cuBLAS fp32, TF32 off: a 512-deep product with TF32 would miss this by 10x)
//   add, scale, embedding, pooling, dropout (mask and values), memory ops: exact
//   rmsnorm_fwd, rope, swiglu, loss (dlogits), adamw (5 steps): rel 1e-5; randn rel 1e-6
//   rmsnorm_bwd, attention fwd (out, probs) and bwd (dq, dk, dv): norm 1e-5; attention with bf16
//   weights (TF32 products on the GPU) against the CPU's fp32: norm 1e-2
//   sumsq, row_norm_sum, loss sum (fp64 on both): 1e-12 relative; and bitwise run to run on the GPU
//   bf16 weights: weight_upload (RNE) and wembedding_fwd exact, weight_randn rel 1e-2 (one bf16 ulp);
//   wgemm norm 1e-4 against the CPU's bf16 emulation and 1e-2 against the fp32 gemm, bitwise run to
//   run, K = 0 exact; wgemm_multi = wgemm bitwise (both formats); fp32-format wgemm = gemm, rel 1e-4
//   device-side input errors (negative token id, bad label, bad pooled position) and an impossible
//   allocation die with a message naming them (checked in a re-executed child process)
// ACTLORA_TEST_HARNESS_ON_CPU=1 runs every comparison with the CPU backend on both sides: a check of
// this test's own code on machines without a GPU.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#ifdef ACTLORA_HAVE_CUDA
#include <sys/wait.h>
#include <unistd.h>

#include "actlora/backend.h"
#include "actlora/backend_cuda.h"
#include "actlora/common.h"
#include "actlora/rng.h"
#include "test_cuda_common.h"  // Ctx, host copies, cmp_* measures, setup
#include "test_fixture.h"      // Rand / rnd, fx_weights_host

// ------------------------------------------------------------------------------ memory

static void test_memory(Ctx *c) {
    printf("memory ops\n");
    size_t n = 4099;
    float *d = c->gpu.alloc(&c->gpu, n * sizeof(float), "zero test"), *h = from_gpu(c, d, n);
    float *zeros = xcalloc(n, sizeof(float), "zeros");
    cmp_exact(c, h, zeros, n, "alloc is zero-filled");
    float *src = hrand(c, n, -1, 1);
    c->gpu.upload(&c->gpu, d, src, n * sizeof(float));
    float *d2 = c->gpu.alloc(&c->gpu, n * sizeof(float), "copy test");
    c->gpu.copy(&c->gpu, d2, d, n * sizeof(float));
    free(h);
    h = from_gpu(c, d2, n);
    cmp_exact(c, h, src, n, "upload / copy / download round trip");
    c->gpu.zero(&c->gpu, d2 + 10, 100 * sizeof(float));
    free(h);
    h = from_gpu(c, d2, n);
    float *want = xmalloc(n * sizeof(float), "want");
    memcpy(want, src, n * sizeof(float));
    memset(want + 10, 0, 100 * sizeof(float));
    cmp_exact(c, h, want, n, "zero has the right extent");
    // overlapping copies have memmove semantics, both directions
    c->gpu.copy(&c->gpu, d + 7, d, 1000 * sizeof(float));
    memmove(src + 7, src, 1000 * sizeof(float));
    c->gpu.copy(&c->gpu, d + 100, d + 150, 2000 * sizeof(float));
    memmove(src + 100, src + 150, 2000 * sizeof(float));
    free(h);
    h = from_gpu(c, d, n);
    cmp_exact(c, h, src, n, "overlapping copy (memmove)");
    c->gpu.sync(&c->gpu);
    void *z = c->gpu.alloc(&c->gpu, 0, "empty");  // a 0-byte allocation is valid and freeable
    c->gpu.free(&c->gpu, z);
    c->gpu.free(&c->gpu, NULL);
    c->gpu.free(&c->gpu, d);
    c->gpu.free(&c->gpu, d2);
    free(h);
    free(zeros);
    free(src);
    free(want);
}

// ------------------------------------------------------------------------------ dense algebra

static void test_gemm(Ctx *c) {
    printf("gemm\n");
    const int sizes[4][3] = {{13, 7, 19}, {67, 45, 129}, {256, 384, 512}, {5, 1, 3}};
    const float ab[3][2] = {{0.7f, -0.3f}, {1.0f, 0.0f}, {-1.3f, 1.0f}};
    for (int s = 0; s < 4; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int k = 0; k < 3; k++) {
                    int M = sizes[s][0], N = sizes[s][1], K = sizes[s][2];
                    size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * N;
                    float *A = hrand(c, na, -1, 1), *B = hrand(c, nb, -1, 1), *C = hrand(c, nc, -1, 1);
                    if (ab[k][1] == 0.0f)
                        for (size_t i = 0; i < nc; i++) C[i] = NAN;  // beta = 0 overwrites, never reads C
                    float *ca = on_cpu(c, A, na * 4), *cb = on_cpu(c, B, nb * 4), *cc = on_cpu(c, C, nc * 4);
                    float *ga = on_gpu(c, A, na * 4), *gb = on_gpu(c, B, nb * 4), *gc = on_gpu(c, C, nc * 4);
                    c->cpu.gemm(&c->cpu, ta, tb, M, N, K, ab[k][0], ca, cb, ab[k][1], cc);
                    c->gpu.gemm(&c->gpu, ta, tb, M, N, K, ab[k][0], ga, gb, ab[k][1], gc);
                    float *got = from_gpu(c, gc, nc);
                    char what[96];
                    snprintf(what, sizeof what, "gemm %dx%dx%d ta=%d tb=%d a=%g b=%g", M, N, K, ta, tb,
                             (double)ab[k][0], (double)ab[k][1]);
                    cmp_rel(c, got, cc, nc, 1e-4, what);
                    free(A), free(B), free(C), free(got);
                    c->cpu.free(&c->cpu, ca), c->cpu.free(&c->cpu, cb), c->cpu.free(&c->cpu, cc);
                    c->gpu.free(&c->gpu, ga), c->gpu.free(&c->gpu, gb), c->gpu.free(&c->gpu, gc);
                }
    // K = 0: C = beta * C
    float *C = hrand(c, 12, -1, 1), *cc = on_cpu(c, C, 48), *gc = on_gpu(c, C, 48);
    c->cpu.gemm(&c->cpu, 0, 0, 3, 4, 0, 1.0f, cc, cc, 0.5f, cc);
    c->gpu.gemm(&c->gpu, 0, 0, 3, 4, 0, 1.0f, gc, gc, 0.5f, gc);
    float *got = from_gpu(c, gc, 12);
    cmp_exact(c, got, cc, 12, "gemm K=0 (C = beta C)");
    free(C), free(got);
    c->cpu.free(&c->cpu, cc);
    c->gpu.free(&c->gpu, gc);
}

static void test_add_scale_reduce(Ctx *c) {
    printf("add, scale, sumsq, row_norm_sum\n");
    size_t n = 1000003;
    float *x = hrand(c, n, -2, 2), *y = hrand(c, n, -2, 2);
    float *cx = on_cpu(c, x, n * 4), *cy = on_cpu(c, y, n * 4), *gx = on_gpu(c, x, n * 4), *gy = on_gpu(c, y, n * 4);
    c->cpu.add(&c->cpu, cy, cx, n);
    c->gpu.add(&c->gpu, gy, gx, n);
    float *got = from_gpu(c, gy, n);
    cmp_exact(c, got, cy, n, "add");
    free(got);
    c->cpu.scale(&c->cpu, cy, -0.37f, n);
    c->gpu.scale(&c->gpu, gy, -0.37f, n);
    got = from_gpu(c, gy, n);
    cmp_exact(c, got, cy, n, "scale");
    free(got);
    double s_cpu = c->cpu.sumsq(&c->cpu, cy, n), s1 = c->gpu.sumsq(&c->gpu, gy, n), s2 = c->gpu.sumsq(&c->gpu, gy, n);
    cmp_double(c, s1, s_cpu, 1e-12, "sumsq (1000003 elements)");
    T_CHECK(c->tc, memcmp(&s1, &s2, sizeof s1) == 0, "sumsq is not deterministic on the GPU: %.17g vs %.17g", s1, s2);
    cmp_double(c, c->gpu.sumsq(&c->gpu, gy, 5), c->cpu.sumsq(&c->cpu, cy, 5), 1e-12, "sumsq (5 elements)");
    T_CHECK(c->tc, c->gpu.sumsq(&c->gpu, gy, 0) == 0.0, "sumsq of nothing must be 0");
    // row norms over masked rows
    int N = 37, C = 300;
    int32_t mask[37];
    for (int i = 0; i < N; i++) mask[i] = (i % 5) != 3;
    int32_t *cm = on_cpu(c, mask, sizeof mask), *gm = on_gpu(c, mask, sizeof mask);
    double r_cpu = c->cpu.row_norm_sum(&c->cpu, cx, cm, N, C), r1 = c->gpu.row_norm_sum(&c->gpu, gx, gm, N, C),
           r2 = c->gpu.row_norm_sum(&c->gpu, gx, gm, N, C);
    cmp_double(c, r1, r_cpu, 1e-12, "row_norm_sum (37 x 300, masked rows)");
    T_CHECK(c->tc, memcmp(&r1, &r2, sizeof r1) == 0, "row_norm_sum is not deterministic on the GPU");
    free(x), free(y);
    c->cpu.free(&c->cpu, cx), c->cpu.free(&c->cpu, cy), c->cpu.free(&c->cpu, cm);
    c->gpu.free(&c->gpu, gx), c->gpu.free(&c->gpu, gy), c->gpu.free(&c->gpu, gm);
}

// ------------------------------------------------------------------------------ row ops

static void test_embedding_rmsnorm(Ctx *c) {
    printf("embedding, rmsnorm\n");
    int V = 50, C = 333, N = 41;
    float *wte = hrand(c, (size_t)V * C, -1, 1);
    int32_t ids[41];
    for (int i = 0; i < N; i++) ids[i] = (int32_t)(rnd(&c->r) * V);
    float *cw = on_cpu(c, wte, (size_t)V * C * 4), *gw = on_gpu(c, wte, (size_t)V * C * 4);
    int32_t *ci = on_cpu(c, ids, sizeof ids), *gi = on_gpu(c, ids, sizeof ids);
    size_t nc = (size_t)N * C;
    float *co = c->cpu.alloc(&c->cpu, nc * 4, "out"), *go = c->gpu.alloc(&c->gpu, nc * 4, "out");
    c->cpu.embedding_fwd(&c->cpu, co, ci, cw, N, C);
    c->gpu.embedding_fwd(&c->gpu, go, gi, gw, N, C);
    float *got = from_gpu(c, go, nc);
    cmp_exact(c, got, co, nc, "embedding_fwd");
    free(got);
    // rmsnorm forward on the embedded rows, then backward into a prefilled gradient
    float *w = hrand(c, (size_t)C, 0.5, 1.5);
    float *cwn = on_cpu(c, w, (size_t)C * 4), *gwn = on_gpu(c, w, (size_t)C * 4);
    float *cy = c->cpu.alloc(&c->cpu, nc * 4, "y"), *gy = c->gpu.alloc(&c->gpu, nc * 4, "y");
    float *cr = c->cpu.alloc(&c->cpu, (size_t)N * 4, "rstd"), *gr = c->gpu.alloc(&c->gpu, (size_t)N * 4, "rstd");
    c->cpu.rmsnorm_fwd(&c->cpu, cy, cr, co, cwn, N, C, 1e-5f);
    c->gpu.rmsnorm_fwd(&c->gpu, gy, gr, go, gwn, N, C, 1e-5f);
    got = from_gpu(c, gy, nc);
    cmp_rel(c, got, cy, nc, 1e-5, "rmsnorm_fwd out");
    free(got);
    got = from_gpu(c, gr, (size_t)N);
    cmp_rel(c, got, cr, (size_t)N, 1e-5, "rmsnorm_fwd rstd");
    free(got);
    float *dy = hrand(c, nc, -1, 1), *dx0 = hrand(c, nc, -1, 1);
    float *cdy = on_cpu(c, dy, nc * 4), *gdy = on_gpu(c, dy, nc * 4);
    float *cdx = on_cpu(c, dx0, nc * 4), *gdx = on_gpu(c, dx0, nc * 4);
    c->cpu.rmsnorm_bwd(&c->cpu, cdx, cdy, co, cwn, cr, N, C);
    c->gpu.rmsnorm_bwd(&c->gpu, gdx, gdy, go, gwn, gr, N, C);
    got = from_gpu(c, gdx, nc);
    cmp_norm(c, got, cdx, nc, 1e-5, "rmsnorm_bwd (accumulates)");
    free(got);
    free(wte), free(w), free(dy), free(dx0);
    void *cp[] = {cw, ci, co, cwn, cy, cr, cdy, cdx}, *gp[] = {gw, gi, go, gwn, gy, gr, gdy, gdx};
    for (int i = 0; i < 8; i++) c->cpu.free(&c->cpu, cp[i]), c->gpu.free(&c->gpu, gp[i]);
}

static void test_rope_swiglu(Ctx *c) {
    printf("rope, swiglu\n");
    int B = 3, T = 11, nh = 5, D = 18;
    size_t n = (size_t)B * T * nh * D, nt = (size_t)T * (D / 2);
    float *x = hrand(c, n, -1, 1), *cs = xmalloc(nt * 4, "cos"), *sn = xmalloc(nt * 4, "sin");
    for (size_t i = 0; i < nt; i++) {
        double a = 6.283 * rnd(&c->r);
        cs[i] = (float)cos(a);
        sn[i] = (float)sin(a);
    }
    float *cx = on_cpu(c, x, n * 4), *gx = on_gpu(c, x, n * 4);
    float *ccs = on_cpu(c, cs, nt * 4), *gcs = on_gpu(c, cs, nt * 4), *csn = on_cpu(c, sn, nt * 4),
          *gsn = on_gpu(c, sn, nt * 4);
    c->cpu.rope_fwd(&c->cpu, cx, ccs, csn, B, T, nh, D);
    c->gpu.rope_fwd(&c->gpu, gx, gcs, gsn, B, T, nh, D);
    float *got = from_gpu(c, gx, n);
    cmp_rel(c, got, cx, n, 1e-5, "rope_fwd");
    free(got);
    c->cpu.rope_bwd(&c->cpu, cx, ccs, csn, B, T, nh, D);
    c->gpu.rope_bwd(&c->gpu, gx, gcs, gsn, B, T, nh, D);
    got = from_gpu(c, gx, n);
    cmp_rel(c, got, cx, n, 1e-5, "rope_bwd");
    free(got);
    // swiglu over a wide range of gate values
    size_t m = 100003;
    float *g = hrand(c, m, -12, 12), *u = hrand(c, m, -2, 2), *dh = hrand(c, m, -1, 1);
    float *cg = on_cpu(c, g, m * 4), *gg = on_gpu(c, g, m * 4), *cu = on_cpu(c, u, m * 4), *gu = on_gpu(c, u, m * 4);
    float *cdh = on_cpu(c, dh, m * 4), *gdh = on_gpu(c, dh, m * 4);
    float *ch = c->cpu.alloc(&c->cpu, m * 4, "h"), *gh = c->gpu.alloc(&c->gpu, m * 4, "h");
    float *cdg = c->cpu.alloc(&c->cpu, m * 4, "dg"), *gdg = c->gpu.alloc(&c->gpu, m * 4, "dg");
    float *cdu = c->cpu.alloc(&c->cpu, m * 4, "du"), *gdu = c->gpu.alloc(&c->gpu, m * 4, "du");
    c->cpu.swiglu_fwd(&c->cpu, ch, cg, cu, m);
    c->gpu.swiglu_fwd(&c->gpu, gh, gg, gu, m);
    got = from_gpu(c, gh, m);
    cmp_rel(c, got, ch, m, 1e-5, "swiglu_fwd");
    free(got);
    c->cpu.swiglu_bwd(&c->cpu, cdg, cdu, cdh, cg, cu, m);
    c->gpu.swiglu_bwd(&c->gpu, gdg, gdu, gdh, gg, gu, m);
    got = from_gpu(c, gdg, m);
    cmp_rel(c, got, cdg, m, 1e-5, "swiglu_bwd dgate");
    free(got);
    got = from_gpu(c, gdu, m);
    cmp_rel(c, got, cdu, m, 1e-5, "swiglu_bwd dup");
    free(got);
    free(x), free(cs), free(sn), free(g), free(u), free(dh);
    void *cp[] = {cx, ccs, csn, cg, cu, cdh, ch, cdg, cdu}, *gp[] = {gx, gcs, gsn, gg, gu, gdh, gh, gdg, gdu};
    for (int i = 0; i < 9; i++) c->cpu.free(&c->cpu, cp[i]), c->gpu.free(&c->gpu, gp[i]);
}

static void test_dropout(Ctx *c) {
    printf("dropout\n");
    size_t n = 300007;
    float *x = hrand(c, n, -1, 1);
    const float ps[] = {0.1f, 0.3f, 0.5f, 1.0f, 0.0f};
    for (int k = 0; k < 5; k++) {
        uint64_t key = rng_key(0xD20u, (uint64_t)k) ^ 0xFFFFFFFF00000000ULL;
        float *cx = on_cpu(c, x, n * 4), *gx = on_gpu(c, x, n * 4);
        float *co = c->cpu.alloc(&c->cpu, n * 4, "o"), *go = c->gpu.alloc(&c->gpu, n * 4, "o");
        c->cpu.dropout(&c->cpu, co, cx, n, ps[k], key);
        c->gpu.dropout(&c->gpu, go, gx, n, ps[k], key);
        float *got = from_gpu(c, go, n);
        char what[64];
        snprintf(what, sizeof what, "dropout p=%g (mask and values)", (double)ps[k]);
        cmp_exact(c, got, co, n, what);
        free(got);
        // in place (out aliases inp)
        c->cpu.dropout(&c->cpu, cx, cx, n, ps[k], key + 1);
        c->gpu.dropout(&c->gpu, gx, gx, n, ps[k], key + 1);
        got = from_gpu(c, gx, n);
        snprintf(what, sizeof what, "dropout p=%g in place", (double)ps[k]);
        cmp_exact(c, got, cx, n, what);
        free(got);
        c->cpu.free(&c->cpu, cx), c->cpu.free(&c->cpu, co);
        c->gpu.free(&c->gpu, gx), c->gpu.free(&c->gpu, go);
    }
    free(x);
}

// random init: the same counter-based normals as the CPU (libm vs CUDA log/cos: ~1 ulp)
static void test_randn(Ctx *c) {
    printf("randn\n");
    size_t n = 300007;
    float *co = c->cpu.alloc(&c->cpu, n * 4, "r"), *go = c->gpu.alloc(&c->gpu, n * 4, "r");
    c->cpu.randn(&c->cpu, co, n, 0.5f, 0.02f, 0xABCDu);
    c->gpu.randn(&c->gpu, go, n, 0.5f, 0.02f, 0xABCDu);
    float *got = from_gpu(c, go, n);
    cmp_rel(c, got, co, n, 1e-6, "randn");
    free(got);
    c->cpu.free(&c->cpu, co), c->gpu.free(&c->gpu, go);
}

static void test_head(Ctx *c) {
    printf("pool_last, loss, adamw\n");
    int B = 6, T = 13, C = 70;
    size_t nx = (size_t)B * T * C, np = (size_t)B * C;
    float *x = hrand(c, nx, -1, 1), *dp = hrand(c, np, -1, 1), *dx0 = hrand(c, nx, -1, 1);
    int32_t last[6];
    for (int b = 0; b < B; b++) last[b] = (int32_t)(rnd(&c->r) * T);
    float *cx = on_cpu(c, x, nx * 4), *gx = on_gpu(c, x, nx * 4);
    int32_t *cl = on_cpu(c, last, sizeof last), *gl = on_gpu(c, last, sizeof last);
    float *cp = c->cpu.alloc(&c->cpu, np * 4, "pooled"), *gp = c->gpu.alloc(&c->gpu, np * 4, "pooled");
    c->cpu.pool_last_fwd(&c->cpu, cp, cx, cl, B, T, C);
    c->gpu.pool_last_fwd(&c->gpu, gp, gx, gl, B, T, C);
    float *got = from_gpu(c, gp, np);
    cmp_exact(c, got, cp, np, "pool_last_fwd");
    free(got);
    float *cdp = on_cpu(c, dp, np * 4), *gdp = on_gpu(c, dp, np * 4);
    float *cdx = on_cpu(c, dx0, nx * 4), *gdx = on_gpu(c, dx0, nx * 4);
    c->cpu.pool_last_bwd(&c->cpu, cdx, cdp, cl, B, T, C);
    c->gpu.pool_last_bwd(&c->gpu, gdx, gdp, gl, B, T, C);
    got = from_gpu(c, gdx, nx);
    cmp_exact(c, got, cdx, nx, "pool_last_bwd (accumulates)");
    free(got);
    // losses: classification (K = 3, 1000) and regression (K = 1)
    const int Ks[] = {3, 1000, 1};
    for (int t = 0; t < 3; t++) {
        int K = Ks[t];
        size_t nl = (size_t)B * K;
        float *lg = hrand(c, nl, -4, 4), *lf = hrand(c, (size_t)B, -1, 1);
        int32_t li[6];
        for (int b = 0; b < B; b++) li[b] = (int32_t)(rnd(&c->r) * K);
        float *clg = on_cpu(c, lg, nl * 4), *glg = on_gpu(c, lg, nl * 4);
        int32_t *cli = on_cpu(c, li, sizeof li), *gli = on_gpu(c, li, sizeof li);
        float *clf = on_cpu(c, lf, (size_t)B * 4), *glf = on_gpu(c, lf, (size_t)B * 4);
        float *cd = c->cpu.alloc(&c->cpu, nl * 4, "dlogits"), *gd = c->gpu.alloc(&c->gpu, nl * 4, "dlogits");
        double lc = 0, lgpu = 0;
        c->cpu.loss_fwd_bwd(&c->cpu, &lc, cd, clg, K > 1 ? cli : NULL, K == 1 ? clf : NULL, B, K, 0.125f);
        c->gpu.loss_fwd_bwd(&c->gpu, &lgpu, gd, glg, K > 1 ? gli : NULL, K == 1 ? glf : NULL, B, K, 0.125f);
        char what[64];
        snprintf(what, sizeof what, "loss_fwd_bwd K=%d loss sum", K);
        cmp_double(c, lgpu, lc, 1e-12, what);
        got = from_gpu(c, gd, nl);
        snprintf(what, sizeof what, "loss_fwd_bwd K=%d dlogits", K);
        cmp_rel(c, got, cd, nl, 1e-5, what);
        free(got), free(lg), free(lf);
        void *cpp[] = {clg, cli, clf, cd}, *gpp[] = {glg, gli, glf, gd};
        for (int i = 0; i < 4; i++) c->cpu.free(&c->cpu, cpp[i]), c->gpu.free(&c->gpu, gpp[i]);
    }
    double l0 = -1.0;
    c->gpu.loss_fwd_bwd(&c->gpu, &l0, NULL, NULL, NULL, NULL, 0, 3, 1.0f);
    T_CHECK(c->tc, l0 == 0.0, "loss of an empty batch must be 0 (got %g)", l0);
    // AdamW: five steps with fresh gradients
    size_t n = 50021;
    float *p = hrand(c, n, -1, 1);
    float *cpp_ = on_cpu(c, p, n * 4), *gpp_ = on_gpu(c, p, n * 4);
    float *cm = c->cpu.alloc(&c->cpu, n * 4, "m"), *gm = c->gpu.alloc(&c->gpu, n * 4, "m");
    float *cv = c->cpu.alloc(&c->cpu, n * 4, "v"), *gv = c->gpu.alloc(&c->gpu, n * 4, "v");
    for (int t = 1; t <= 5; t++) {
        float *g = hrand(c, n, -0.1, 0.1);
        float *cg = on_cpu(c, g, n * 4), *gg = on_gpu(c, g, n * 4);
        c->cpu.adamw(&c->cpu, cpp_, cg, cm, cv, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, t);
        c->gpu.adamw(&c->gpu, gpp_, gg, gm, gv, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, t);
        free(g);
        c->cpu.free(&c->cpu, cg);
        c->gpu.free(&c->gpu, gg);
    }
    got = from_gpu(c, gpp_, n);
    cmp_rel(c, got, cpp_, n, 1e-5, "adamw params after 5 steps");
    free(got);
    got = from_gpu(c, gm, n);
    cmp_rel(c, got, cm, n, 1e-5, "adamw m after 5 steps");
    free(got);
    got = from_gpu(c, gv, n);
    cmp_rel(c, got, cv, n, 1e-5, "adamw v after 5 steps");
    free(got), free(p), free(x), free(dp), free(dx0);
    void *cq[] = {cx, cl, cp, cdp, cdx, cpp_, cm, cv}, *gq[] = {gx, gl, gp, gdp, gdx, gpp_, gm, gv};
    for (int i = 0; i < 8; i++) c->cpu.free(&c->cpu, cq[i]), c->gpu.free(&c->gpu, gq[i]);
}

// ------------------------------------------------------------------------------ attention

static void attention_case(Ctx *c, int B, int T, int H, int KVH, int D, int left_pad) {
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KVH * D, np = (size_t)B * H * T * T;
    float *q = hrand(c, nq, -1, 1), *k = hrand(c, nk, -1, 1), *v = hrand(c, nk, -1, 1), *dout = hrand(c, nq, -1, 1);
    int32_t *mask = xmalloc((size_t)B * T * sizeof(int32_t), "mask");
    for (int b = 0; b < B; b++) {  // row b: right padding of b tokens; the last row also left-padded
        int len = T - b < 1 ? 1 : T - b;
        for (int t = 0; t < T; t++) mask[b * T + t] = t < len;
        if (left_pad && b == B - 1)
            for (int t = 0; t < T / 3; t++) mask[b * T + t] = 0;
    }
    float *cq = on_cpu(c, q, nq * 4), *ck = on_cpu(c, k, nk * 4), *cv = on_cpu(c, v, nk * 4),
          *cdo = on_cpu(c, dout, nq * 4);
    float *gq = on_gpu(c, q, nq * 4), *gk = on_gpu(c, k, nk * 4), *gv = on_gpu(c, v, nk * 4),
          *gdo = on_gpu(c, dout, nq * 4);
    int32_t *cm = on_cpu(c, mask, (size_t)B * T * 4), *gm = on_gpu(c, mask, (size_t)B * T * 4);
    float *co = c->cpu.alloc(&c->cpu, nq * 4, "out"), *go = c->gpu.alloc(&c->gpu, nq * 4, "out");
    float *cp = c->cpu.alloc(&c->cpu, np * 4, "probs"), *gp = c->gpu.alloc(&c->gpu, np * 4, "probs");
    float *cdq = c->cpu.alloc(&c->cpu, nq * 4, "dq"), *gdq = c->gpu.alloc(&c->gpu, nq * 4, "dq");
    float *cdk = c->cpu.alloc(&c->cpu, nk * 4, "dk"), *gdk = c->gpu.alloc(&c->gpu, nk * 4, "dk");
    float *cdv = c->cpu.alloc(&c->cpu, nk * 4, "dv"), *gdv = c->gpu.alloc(&c->gpu, nk * 4, "dv");
    c->cpu.attention_fwd(&c->cpu, co, cp, cq, ck, cv, cm, B, T, H, KVH, D);
    c->cpu.attention_bwd(&c->cpu, cdq, cdk, cdv, cdo, cp, cq, ck, cv, B, T, H, KVH, D);
    // fp32 weight format: full fp32 products (1e-5); bf16 format: the products in TF32 on the GPU
    // (the CPU's bf16 emulation keeps fp32 attention), 2^-11 per input: 1e-2 of the largest element
    Backend *gs[2] = {&c->gpu, &c->gbf};
    const double tol[2] = {1e-5, 1e-2};
    const char *fmt[2] = {"", " bf16/tf32"};
    for (int f = 0; f < 2; f++) {
        Backend *g = gs[f];
        c->gpu.sync(&c->gpu);  // the buffers come from c->gpu's stream; g may be another backend instance
        g->attention_fwd(g, go, gp, gq, gk, gv, gm, B, T, H, KVH, D);
        g->attention_bwd(g, gdq, gdk, gdv, gdo, gp, gq, gk, gv, B, T, H, KVH, D);
        g->sync(g);
        char what[96];
        float *got = from_gpu(c, go, nq);
        snprintf(what, sizeof what, "attention_fwd%s out B%d T%d H%d/%d D%d", fmt[f], B, T, H, KVH, D);
        cmp_norm(c, got, co, nq, tol[f], what);
        free(got);
        got = from_gpu(c, gp, np);
        snprintf(what, sizeof what, "attention_fwd%s probs B%d T%d H%d/%d D%d", fmt[f], B, T, H, KVH, D);
        cmp_norm(c, got, cp, np, tol[f], what);
        free(got);
        const float *cw[3] = {cdq, cdk, cdv}, *gw[3] = {gdq, gdk, gdv};
        const size_t nw[3] = {nq, nk, nk};
        const char *names[3] = {"dq", "dk", "dv"};
        for (int i = 0; i < 3; i++) {
            got = from_gpu(c, gw[i], nw[i]);
            snprintf(what, sizeof what, "attention_bwd%s %s B%d T%d H%d/%d D%d", fmt[f], names[i], B, T, H, KVH, D);
            cmp_norm(c, got, cw[i], nw[i], tol[f], what);
            free(got);
        }
    }
    free(q), free(k), free(v), free(dout), free(mask);
    void *cpp[] = {cq, ck, cv, cdo, cm, co, cp, cdq, cdk, cdv}, *gpp[] = {gq, gk, gv, gdo, gm, go, gp, gdq, gdk, gdv};
    for (int i = 0; i < 10; i++) c->cpu.free(&c->cpu, cpp[i]), c->gpu.free(&c->gpu, gpp[i]);
}

static void test_attention(Ctx *c) {
    printf("attention\n");
    attention_case(c, 2, 7, 4, 2, 6, 0);     // test_backend_ops' awkward sizes
    attention_case(c, 3, 37, 4, 1, 64, 1);   // GQA 4:1, a left-padded row (rows with no visible key)
    attention_case(c, 1, 300, 2, 2, 160, 0); // T past one staged chunk (256), D past one block (128)
    attention_case(c, 2, 64, 8, 2, 128, 1);  // Llama-shaped heads
}

// ------------------------------------------------------------------------------ bf16 weights

// host fp32 -> a new weight buffer of backend be
static void *weights_on(Backend *be, const float *h, size_t n) {
    void *w = be->weight_alloc(be, n, "test weights");
    be->weight_upload(be, w, h, n);
    return w;
}

// wgemm in bf16: the CUDA bf16 path against the CPU's bf16 emulation (same rounded inputs, fp32
// accumulation in another order: norm 1e-4) and against the fp32 GEMM (bf16 input rounding, relative
// 2^-9 per operand: norm 1e-2); weight conversion, bf16 randn, the bf16 embedding; fp32-format wgemm.
static void test_wgemm(Ctx *c) {
    printf("bf16 weights: weight_upload, weight_randn, wembedding_fwd, wgemm, wgemm_multi\n");
    Backend *cb = &c->cbf, *gb = &c->gbf;
    T_CHECK(c->tc, cb->weight_dtype == BACKEND_WEIGHT_BF16 && gb->weight_dtype == BACKEND_WEIGHT_BF16,
            "the bf16 backends are not in bf16 format (%d, %d)", cb->weight_dtype, gb->weight_dtype);
    // conversion: round to nearest even, ties, the largest values, subnormals, signed zero
    {
        const float sp[] = {1.00390625f, 1.01171875f, -1.00390625f, 1.0f + 1.0f / 1024.0f, 65504.0f, 3.0e38f,
                            -3.3e38f, 1e-40f, -1e-39f, 0.0f, -0.0f, 0.1f, -2.7182818f, 3.14159265f};
        size_t ns = sizeof sp / sizeof sp[0], n = ns + 10007;
        float *h = hrand(c, n, -3, 3);
        memcpy(h, sp, sizeof sp);
        void *cw = weights_on(cb, h, n), *gw = weights_on(gb, h, n);
        float *wc = fx_weights_host(cb, cw, n), *wg = fx_weights_host(gb, gw, n);
        cmp_exact(c, wg, wc, n, "weight_upload: bf16 rounding (RNE) = CPU emulation");
        T_CHECK(c->tc, wc[0] == 1.0f && wc[1] == 1.015625f && wc[2] == -1.0f && wc[3] == 1.0f,
                "CPU bf16 rounding of ties: %.9g %.9g %.9g %.9g", wc[0], wc[1], wc[2], wc[3]);
        T_CHECK(c->tc, gb->weight_bytes == 2 || getenv("ACTLORA_TEST_HARNESS_ON_CPU"), "CUDA bf16 weight_bytes %zu",
                gb->weight_bytes);
        free(h), free(wc), free(wg);
        cb->free(cb, cw), gb->free(gb, gw);
    }
    // randn drawn on the backend, rounded: within one bf16 ulp of the CPU (libm vs CUDA log/cos ~1 ulp fp32)
    {
        size_t n = 300007;
        void *cw = cb->weight_alloc(cb, n, "r"), *gw = gb->weight_alloc(gb, n, "r");
        cb->weight_randn(cb, cw, n, 0.0f, 0.02f, 0xABCDu);
        gb->weight_randn(gb, gw, n, 0.0f, 0.02f, 0xABCDu);
        float *wc = fx_weights_host(cb, cw, n), *wg = fx_weights_host(gb, gw, n);
        cmp_rel(c, wg, wc, n, 1e-2, "weight_randn bf16 (1 bf16 ulp)");
        free(wc), free(wg);
        cb->free(cb, cw), gb->free(gb, gw);
    }
    // embedding lookup from a bf16 table: exact (the same rounded values, widened)
    {
        int V = 50, C = 333, N = 41;
        float *tab = hrand(c, (size_t)V * C, -1, 1);
        int32_t ids[41];
        for (int i = 0; i < N; i++) ids[i] = (int32_t)(rnd(&c->r) * V);
        void *ct = weights_on(cb, tab, (size_t)V * C), *gt = weights_on(gb, tab, (size_t)V * C);
        int32_t *ci = alloc_copy(cb, ids, sizeof ids), *gi = alloc_copy(gb, ids, sizeof ids);
        float *co = cb->alloc(cb, (size_t)N * C * 4, "o"), *go = gb->alloc(gb, (size_t)N * C * 4, "o");
        cb->wembedding_fwd(cb, co, ci, ct, N, C);
        gb->wembedding_fwd(gb, go, gi, gt, N, C);
        float *got = download_any(gb, go, (size_t)N * C);
        cmp_exact(c, got, co, (size_t)N * C, "wembedding_fwd (bf16 table)");
        free(got), free(tab);
        cb->free(cb, ct), cb->free(cb, ci), cb->free(cb, co);
        gb->free(gb, gt), gb->free(gb, gi), gb->free(gb, go);
    }
    // GEMMs: odd sizes, a 4096-deep Llama-like product, both weight layouts, alpha / beta
    const int sizes[5][3] = {{13, 7, 19}, {67, 45, 129}, {256, 384, 512}, {96, 1024, 4096}, {5, 1, 3}};
    const float ab[3][2] = {{0.7f, -0.3f}, {1.0f, 0.0f}, {1.0f, 1.0f}};
    double worst16 = 0.0, worst32 = 0.0;
    for (int s = 0; s < 5; s++)
        for (int tw = 0; tw < 2; tw++)
            for (int k = 0; k < 3; k++) {
                int M = sizes[s][0], N = sizes[s][1], K = sizes[s][2];
                size_t nx = (size_t)M * K, nw = (size_t)K * N, ny = (size_t)M * N;
                float *X = hrand(c, nx, -1, 1), *W = hrand(c, nw, -1, 1), *Y = hrand(c, ny, -1, 1);
                if (ab[k][1] == 0.0f)
                    for (size_t i = 0; i < ny; i++) Y[i] = NAN;  // beta = 0 overwrites, never reads Y
                float *c32x = on_cpu(c, X, nx * 4), *c32w = on_cpu(c, W, nw * 4), *c32y = on_cpu(c, Y, ny * 4);
                c->cpu.gemm(&c->cpu, 0, tw, M, N, K, ab[k][0], c32x, c32w, ab[k][1], c32y);
                float *cbx = alloc_copy(cb, X, nx * 4), *cby = alloc_copy(cb, Y, ny * 4);
                float *gbx = alloc_copy(gb, X, nx * 4), *gby = alloc_copy(gb, Y, ny * 4);
                void *cbw = weights_on(cb, W, nw), *gbw = weights_on(gb, W, nw);
                cb->wgemm(cb, tw, M, N, K, ab[k][0], cbx, cbw, ab[k][1], cby);
                gb->wgemm(gb, tw, M, N, K, ab[k][0], gbx, gbw, ab[k][1], gby);
                float *got = download_any(gb, gby, ny), *x_after = download_any(gb, gbx, nx);
                char what[128];
                snprintf(what, sizeof what, "wgemm bf16 %dx%dx%d tw=%d a=%g b=%g vs CPU bf16", M, N, K, tw,
                         (double)ab[k][0], (double)ab[k][1]);
                cmp_norm(c, got, cby, ny, 1e-4, what);
                snprintf(what, sizeof what, "wgemm bf16 %dx%dx%d tw=%d a=%g b=%g vs fp32 gemm", M, N, K, tw,
                         (double)ab[k][0], (double)ab[k][1]);
                cmp_norm(c, got, c32y, ny, 1e-2, what);
                T_CHECK(c->tc, memcmp(x_after, X, nx * 4) == 0, "wgemm modified its activation operand X");
                if (s == 3 && tw == 1 && k == 1) {  // run to run on the device: the same bits
                    gb->upload(gb, gby, Y, ny * 4);
                    gb->wgemm(gb, tw, M, N, K, ab[k][0], gbx, gbw, ab[k][1], gby);
                    float *again = download_any(gb, gby, ny);
                    cmp_exact(c, again, got, ny, "wgemm bf16 96x1024x4096, second run vs first");
                    free(again);
                }
                double mx = 0, d16 = 0, d32 = 0;
                for (size_t i = 0; i < ny; i++) {
                    mx = fmax(mx, fabs((double)c32y[i]));
                    d16 = fmax(d16, fabs((double)got[i] - (double)cby[i]));
                    d32 = fmax(d32, fabs((double)got[i] - (double)c32y[i]));
                }
                worst16 = fmax(worst16, d16 / (mx > 0 ? mx : 1));
                worst32 = fmax(worst32, d32 / (mx > 0 ? mx : 1));
                free(X), free(W), free(Y), free(got), free(x_after);
                c->cpu.free(&c->cpu, c32x), c->cpu.free(&c->cpu, c32w), c->cpu.free(&c->cpu, c32y);
                cb->free(cb, cbx), cb->free(cb, cby), cb->free(cb, cbw);
                gb->free(gb, gbx), gb->free(gb, gby), gb->free(gb, gbw);
            }
    printf("  wgemm bf16 worst over all shapes: norm %.2e vs CPU bf16 emulation, %.2e vs fp32\n", worst16, worst32);
    // K = 0: Y = beta Y, as gemm
    {
        float *Y = hrand(c, 12, -1, 1), *cy = on_cpu(c, Y, 48), *gy = alloc_copy(gb, Y, 48);
        c->cpu.gemm(&c->cpu, 0, 0, 3, 4, 0, 1.0f, cy, cy, 0.5f, cy);
        gb->wgemm(gb, 0, 3, 4, 0, 1.0f, gy, gy, 0.5f, gy);
        float *got = download_any(gb, gy, 12);
        cmp_exact(c, got, cy, 12, "wgemm bf16 K=0 (Y = beta Y)");
        free(Y), free(got);
        c->cpu.free(&c->cpu, cy), gb->free(gb, gy);
    }
    // wgemm_multi (q/k/v, gate/up): the same bits as one wgemm per weight, in both formats, X untouched
    for (int f = 0; f < 2; f++) {
        Backend *g = f ? gb : &c->gpu;
        int M = 77, K = 320, Ns[3] = {256, 64, 0};  // an empty output too
        float *X = hrand(c, (size_t)M * K, -1, 1), *gx = alloc_copy(g, X, (size_t)M * K * 4);
        void *gw[3];
        float *gy[3], *gs[3];
        for (int i = 0; i < 3; i++) {
            float *W = hrand(c, (size_t)Ns[i] * K + 1, -1, 1);
            gw[i] = weights_on(g, W, (size_t)Ns[i] * K + 1);
            gy[i] = g->alloc(g, (size_t)M * Ns[i] * 4 + 4, "y multi");
            gs[i] = g->alloc(g, (size_t)M * Ns[i] * 4 + 4, "y single");
            free(W);
        }
        g->wgemm_multi(g, 3, M, K, gx, (const void *const *)gw, Ns, gy);
        for (int i = 0; i < 3; i++)
            if (Ns[i]) g->wgemm(g, 1, M, Ns[i], K, 1.0f, gx, gw[i], 0.0f, gs[i]);
        for (int i = 0; i < 2; i++) {
            float *a = download_any(g, gy[i], (size_t)M * Ns[i]), *b = download_any(g, gs[i], (size_t)M * Ns[i]);
            char what[96];
            snprintf(what, sizeof what, "wgemm_multi %s output %d = wgemm", f ? "bf16" : "fp32", i);
            cmp_exact(c, a, b, (size_t)M * Ns[i], what);
            free(a), free(b);
        }
        float *x_after = download_any(g, gx, (size_t)M * K);
        T_CHECK(c->tc, memcmp(x_after, X, (size_t)M * K * 4) == 0, "wgemm_multi modified X");
        free(X), free(x_after);
        g->free(g, gx);
        for (int i = 0; i < 3; i++) g->free(g, gw[i]), g->free(g, gy[i]), g->free(g, gs[i]);
    }
    // fp32 weight format: wgemm is the fp32 gemm
    {
        int M = 67, N = 45, K = 129;
        float *X = hrand(c, (size_t)M * K, -1, 1), *W = hrand(c, (size_t)N * K, -1, 1);
        float *cx = on_cpu(c, X, (size_t)M * K * 4), *cw = on_cpu(c, W, (size_t)N * K * 4);
        float *cy = c->cpu.alloc(&c->cpu, (size_t)M * N * 4, "y"), *gy = c->gpu.alloc(&c->gpu, (size_t)M * N * 4, "y");
        float *gx = on_gpu(c, X, (size_t)M * K * 4);
        void *gw = weights_on(&c->gpu, W, (size_t)N * K);
        c->cpu.gemm(&c->cpu, 0, 1, M, N, K, 1.0f, cx, cw, 0.0f, cy);
        c->gpu.wgemm(&c->gpu, 1, M, N, K, 1.0f, gx, gw, 0.0f, gy);
        float *got = from_gpu(c, gy, (size_t)M * N);
        cmp_rel(c, got, cy, (size_t)M * N, 1e-4, "wgemm in fp32 format = fp32 gemm");
        free(X), free(W), free(got);
        c->cpu.free(&c->cpu, cx), c->cpu.free(&c->cpu, cw), c->cpu.free(&c->cpu, cy);
        c->gpu.free(&c->gpu, gx), c->gpu.free(&c->gpu, gw), c->gpu.free(&c->gpu, gy);
    }
}

// ------------------------------------------------------------------------------ device-side errors

// Child mode (`test_backend_cuda --die CASE`): makes the GPU backend meet a bad input; must die.
static int death_case(const char *which) {
    Backend be;
    backend_cuda_init(&be, 0);
    if (strcmp(which, "oom") == 0) {
        be.alloc(&be, (size_t)1 << 50, "an impossible test buffer");
        return 0;
    }
    int32_t bad_ids[4] = {1, 2, -7, 3}, bad_last[2] = {1, 9}, bad_labels[2] = {0, 5};
    float *x = be.alloc(&be, 4 * 8 * sizeof(float), "x"), *o = be.alloc(&be, 4 * 8 * sizeof(float), "o");
    if (strcmp(which, "token") == 0) {
        int32_t *d = be.alloc(&be, sizeof bad_ids, "ids");
        be.upload(&be, d, bad_ids, sizeof bad_ids);
        be.embedding_fwd(&be, o, d, x, 4, 8);
    } else if (strcmp(which, "pool") == 0) {
        int32_t *d = be.alloc(&be, sizeof bad_last, "last");
        be.upload(&be, d, bad_last, sizeof bad_last);
        be.pool_last_fwd(&be, o, x, d, 2, 4, 4);
    } else if (strcmp(which, "label") == 0) {
        int32_t *d = be.alloc(&be, sizeof bad_labels, "labels");
        be.upload(&be, d, bad_labels, sizeof bad_labels);
        double l;
        be.loss_fwd_bwd(&be, &l, o, x, d, NULL, 2, 3, 1.0f);
    }
    be.sync(&be);
    return 0;  // survived: the parent reports the failure
}

// (a re-executed child, not test_fixture.h's forked one: CUDA state does not survive fork; the parent's
// side is the same, fx_child_output)
static void expect_exec_death(Ctx *c, const char *which, const char *needle) {
    int fds[2];
    if (pipe(fds) != 0) {
        T_CHECK(c->tc, 0, "pipe failed");
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {  // a fresh process image: CUDA state does not survive fork
        close(fds[0]);
        dup2(fds[1], 2);
        dup2(fds[1], 1);
        char *args[] = {(char *)"test_backend_cuda", (char *)"--die", (char *)which, NULL};
        execv("/proc/self/exe", args);
        _exit(3);
    }
    close(fds[1]);
    char buf[8192];
    int st = fx_child_output(fds[0], pid, buf, sizeof buf);
    T_CHECK(c->tc, WIFEXITED(st) && WEXITSTATUS(st) == 1 && strstr(buf, needle),
            "--die %s: expected exit 1 with '%s', got status %d, output '%s'", which, needle, st, buf);
    printf("  %-52s %s\n", which, strstr(buf, needle) ? "dies with a clear message" : "WRONG");
}

static void test_deaths(Ctx *c) {
    printf("device-side input errors\n");
    expect_exec_death(c, "token", "embedding lookup: token 2 has negative id -7");
    expect_exec_death(c, "pool", "pool_last: row 1 pools position 9, outside [0, 4)");
    expect_exec_death(c, "label", "loss_fwd_bwd: row 1 has label 5, outside [0, 3)");
    expect_exec_death(c, "oom", "out of GPU memory");
}

static int run(void) {
    // ACTLORA_TEST_HARNESS_ON_CPU=1: both sides on the CPU backend, to check this test's own code on
    // a machine without a GPU (every comparison must then hold exactly or within rounding)
    int harness = getenv("ACTLORA_TEST_HARNESS_ON_CPU") != NULL;
    if (!cuda_test_devices("test_backend_cuda", harness)) return TEST_SKIP;
    TestCounts tc = {0};
    Ctx c;
    memset(&c, 0, sizeof c);
    c.tc = &tc;
    c.r.s = 20240601;
    cuda_test_open_gpu(&c, harness);
    if (!harness) test_deaths(&c);  // first: children re-execute this binary
    // the bf16 backend, and the fp32 weights of the parity checks ("auto" = fp32 on the CPU)
    cuda_test_open_rest(&c, harness);
    char msg[256];
    T_CHECK(&tc, backend_set_dtype(&c.cpu, "fp16", msg, sizeof msg) != 0 && strstr(msg, "fp16"),
            "an unknown model.dtype must be refused: '%s'", msg);
    test_memory(&c);
    test_gemm(&c);
    test_add_scale_reduce(&c);
    test_embedding_rmsnorm(&c);
    test_rope_swiglu(&c);
    test_dropout(&c);
    test_randn(&c);
    test_head(&c);
    test_attention(&c);
    test_wgemm(&c);
    cuda_test_close(&c);
    return t_finish(&tc, "test_backend_cuda");
}
#endif  // ACTLORA_HAVE_CUDA

int main(int argc, char **argv) {
#ifndef ACTLORA_HAVE_CUDA
    (void)argc;
    (void)argv;
    printf("test_backend_cuda: SKIP: built without the CUDA backend (configure with -DACTLORA_CUDA=ON)\n");
    return TEST_SKIP;
#else
    if (argc > 2 && strcmp(argv[1], "--die") == 0) return death_case(argv[2]);
    return run();
#endif
}
