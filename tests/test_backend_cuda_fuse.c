// test_backend_cuda_fuse.c: LoRA on the frozen GEMM (lora.fuse) on the CUDA backend against the CPU
// backend, in both weight formats (fp32; bf16 against the CPU's bf16 emulation). Exits 77 (skipped)
// when the build has no CUDA backend or no GPU is visible; ACTLORA_TEST_HARNESS_ON_CPU=1 runs every
// comparison with the CPU backend on both sides (a check of this test's own code without a GPU).
//  ops: weight_set_lora exact (the same roundings); weight_randn_2d exact in fp32 up to libm vs CUDA
//       (rel 1e-6) and within one bf16 ulp in bf16; wgemm_lora forward / input gradient, with and without
//       Xa, beta 0 and 1, sizes up to a 4096-deep product: max |diff| / max |cpu| 1e-5 (fp32) and 1e-4
//       (bf16, as wgemm); wgemm_lora_multi = the single calls bit for bit on the device, and a second
//       run gives the same bits.
//  model: the tiny Llama fixture bordered (fuse r 8, layers 1 and 3, all seven modules, non-zero B, LoRA
//       dropout 0.1 so the unfolded path runs too, and 0): GPU vs CPU loss 1e-5 relative, gradients 1e-4
//       of each tensor's largest element in fp32; in bf16 loss 1e-3, gradients 3e-2 (test_backend_cuda's
//       bf16 tolerances); and the bf16 fused GPU run vs the plain bf16 GPU run (informative).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#ifdef ACTLORA_HAVE_CUDA
#include "actlora/backend.h"
#include "actlora/backend_cuda.h"
#include "actlora/hfmodel.h"
#include "actlora/llama.h"
#include "actlora/lora.h"
#include "actlora/rng.h"
#include "test_fixture.h"

typedef struct {
    TestCounts *tc;
    Backend cpu[2], gpu[2];  // [0] fp32, [1] bf16 weight format
    Rand r;
} Ctx;

static void *on(Backend *be, const float *h, size_t n) {
    float *d = falloc(be, n ? n : 1);
    if (n) be->upload(be, d, h, n * sizeof(float));
    return d;
}

static void cmp_norm(TestCounts *tc, const float *got, const float *want, size_t n, double tol, const char *what) {
    double mx = 0.0, d = 0.0;
    for (size_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs((double)want[i]));
        double e = fabs((double)got[i] - (double)want[i]);
        if (!(e <= d)) d = e;  // NaN sticks
    }
    double e = d / (mx > 0 ? mx : 1.0);
    T_CHECK(tc, e <= tol, "%s: max |diff| / max |cpu| = %.3g > %.0e", what, e, tol);
    printf("  %-58s norm %.2e (tol %.0e)\n", what, e, tol);
}

// ------------------------------------------------------------------------------ ops

static void test_ops(Ctx *c, int f) {
    Backend *cb = &c->cpu[f], *gb = &c->gpu[f];
    const char *fn = f ? "bf16" : "fp32";
    const int shapes[3][4] = {{13, 24, 40, 4}, {67, 96, 160, 8}, {96, 1024, 4096, 8}};  // M, out, in, r
    for (int si = 0; si < 3; si++) {
        int M = shapes[si][0], out = shapes[si][1], in = shapes[si][2], R = shapes[si][3], ld = in + R;
        size_t nb = (size_t)(out + R) * ld;
        float s = 0.5f;
        float *A = xmalloc((size_t)R * in * 4, "A"), *Bm = xmalloc((size_t)out * R * 4, "B"),
              *X = xmalloc((size_t)M * (in > out ? in : out) * 4, "X"), *Xa = xmalloc((size_t)M * R * 4, "Xa"),
              *Y0 = xmalloc((size_t)M * (in > out ? in : out) * 4, "Y0");
        fill(A, (size_t)R * in, -1, 1, &c->r), fill(Bm, (size_t)out * R, -1, 1, &c->r);
        fill(X, (size_t)M * (in > out ? in : out), -1, 1, &c->r), fill(Xa, (size_t)M * R, -2, 2, &c->r);
        fill(Y0, (size_t)M * (in > out ? in : out), -1, 1, &c->r);
        void *cw = cb->weight_alloc(cb, nb, "w"), *gw = gb->weight_alloc(gb, nb, "w");
        cb->weight_randn_2d(cb, cw, out, in, ld, 0.0f, 0.05f, 0x5eedu + (uint64_t)si);
        gb->weight_randn_2d(gb, gw, out, in, ld, 0.0f, 0.05f, 0x5eedu + (uint64_t)si);
        float *ca = on(cb, A, (size_t)R * in), *cbm = on(cb, Bm, (size_t)out * R);
        float *ga = on(gb, A, (size_t)R * in), *gbm = on(gb, Bm, (size_t)out * R);
        char what[128];
        float *wc = fx_weights_host(cb, cw, nb), *wg = fx_weights_host(gb, gw, nb);
        snprintf(what, sizeof what, "%s weight_randn_2d %dx%d stride %d", fn, out, in, ld);
        cmp_norm(c->tc, wg, wc, nb, f ? 8e-3 : 1e-6, what);
        free(wc), free(wg);
        cb->weight_set_lora(cb, cw, out, in, R, ca, cbm, s);
        gb->weight_set_lora(gb, gw, out, in, R, ga, gbm, s);
        // the border must be the same bits (same inputs, same rounding); compare only the border
        wc = fx_weights_host(cb, cw, nb), wg = fx_weights_host(gb, gw, nb);
        size_t bad = 0;
        for (int i = 0; i < out + R; i++)
            for (int k = 0; k < ld; k++) {
                int border = (i < out && k >= in) || (i >= out && k < in);
                if (border && memcmp(&wc[(size_t)i * ld + k], &wg[(size_t)i * ld + k], 4) != 0) bad++;
            }
        T_CHECK(c->tc, bad == 0, "%s weight_set_lora %dx%d r%d: %zu border elements differ", fn, out, in, R, bad);
        // GPU products against the CPU's on the CPU's weights (uploaded as they are)
        void *gw2 = gb->weight_alloc(gb, nb, "w2");
        gb->weight_upload(gb, gw2, wc, nb);  // wc holds already-rounded values: the upload keeps them
        for (int tw = 1; tw >= 0; tw--)
            for (int with = 1; with >= 0; with--)
                for (int beta = 0; beta <= 1; beta++) {
                    int k0 = tw ? in : out, n = tw ? out : in;
                    float *cx = on(cb, X, (size_t)M * k0), *cxa = on(cb, Xa, (size_t)M * R),
                          *cy = on(cb, Y0, (size_t)M * n);
                    float *gx = on(gb, X, (size_t)M * k0), *gxa = on(gb, Xa, (size_t)M * R),
                          *gy = on(gb, Y0, (size_t)M * n);
                    cb->wgemm_lora(cb, tw, M, out, in, R, cx, with ? cxa : NULL, cw, (float)beta, cy);
                    gb->wgemm_lora(gb, tw, M, out, in, R, gx, with ? gxa : NULL, gw2, (float)beta, gy);
                    float *hc = to_host(cb, cy, (size_t)M * n), *hg = to_host(gb, gy, (size_t)M * n);
                    snprintf(what, sizeof what, "%s wgemm_lora %s %dx%dx%d%s beta %d", fn, tw ? "fwd" : "dX", M, n, k0,
                             with ? "+r" : "", beta);
                    cmp_norm(c->tc, hg, hc, (size_t)M * n, f ? 1e-4 : 1e-5, what);
                    free(hc), free(hg);
                    cb->free(cb, cx), cb->free(cb, cxa), cb->free(cb, cy);
                    gb->free(gb, gx), gb->free(gb, gxa), gb->free(gb, gy);
                }
        // multi = singles on the device, and run to run
        {
            int outs[2] = {out, out};
            const void *ws[2] = {gw2, gw2};
            float *gx = on(gb, X, (size_t)M * in), *gxa = on(gb, Xa, (size_t)M * R);
            const float *xas[2] = {gxa, NULL};
            float *ym[2], *ys[2];
            for (int i = 0; i < 2; i++) ym[i] = falloc(gb, (size_t)M * out), ys[i] = falloc(gb, (size_t)M * out);
            gb->wgemm_lora_multi(gb, 2, M, in, R, gx, xas, ws, outs, ym);
            float *first = to_host(gb, ym[0], (size_t)M * out);
            gb->wgemm_lora_multi(gb, 2, M, in, R, gx, xas, ws, outs, ym);
            for (int i = 0; i < 2; i++) gb->wgemm_lora(gb, 1, M, out, in, R, gx, xas[i], ws[i], 0.0f, ys[i]);
            for (int i = 0; i < 2; i++) {
                float *a = to_host(gb, ym[i], (size_t)M * out), *b = to_host(gb, ys[i], (size_t)M * out);
                snprintf(what, sizeof what, "%s wgemm_lora_multi %d = wgemm_lora (%dx%dx%d)", fn, i, M, out, in);
                check_exact(c->tc, a, b, (size_t)M * out, what);
                if (i == 0) check_exact(c->tc, a, first, (size_t)M * out, "wgemm_lora_multi, second run vs first");
                free(a), free(b);
                gb->free(gb, ym[i]), gb->free(gb, ys[i]);
            }
            free(first);
            gb->free(gb, gx), gb->free(gb, gxa);
        }
        free(wc), free(wg), free(A), free(Bm), free(X), free(Xa), free(Y0);
        cb->free(cb, cw), cb->free(cb, ca), cb->free(cb, cbm);
        gb->free(gb, gw), gb->free(gb, gw2), gb->free(gb, ga), gb->free(gb, gbm);
    }
}

// ------------------------------------------------------------------------------ the model

typedef struct {
    Llama m;
    LoraSet ls;
    Batch b;
} Side;

// One forward + backward of the tiny Llama on be (fuse_r 0 = plain): the mean loss; host copies of the grads.
static double model_step(Backend *be, const char *dir, int fuse_r, double dropout, float **grads, size_t *numel) {
    Error err;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    ModelConfig mc;
    if (hfconfig_load(&mc, path, &err) != 0) die("%s", err.msg);
    Side s;
    llama_load_fused(&s.m, be, dir, &mc, 3, 0, 0, fuse_r);
    LoraShapes shapes;
    llama_lora_shapes(&mc, &shapes);
    int layers[] = {1, 3}, mods[] = {LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN};
    lora_init(&s.ls, be, &LORA_NAMING_LLAMA, &shapes, mc.num_hidden_layers, layers, 2, mods, 7, 8, 16.0, 0, dropout, 3,
              mc.hidden_size);
    llama_init_head(&s.m, be, dir, 0, &s.ls, 7);
    lora_init_weights(&s.ls, be, 7);
    float *p = to_host(be, s.ls.params, s.ls.numel);
    fx_nonzero_b(&s.ls, p);
    be->upload(be, s.ls.params, p, s.ls.numel * sizeof(float));
    free(p);
    llama_alloc_acts(&s.m, be, &s.ls, 4, 12);
    batch_init(&s.b, 4, 12);
    data_synthetic_batch(&s.b, mc.vocab_size, mc.pad_token_id, 3, 99, 0, 0, 0);
    be->zero(be, s.ls.grads, s.ls.numel * sizeof(float));
    double loss = llama_forward(&s.m, be, &s.ls, &s.b, 1, 1.0f / 4.0f, 0xABCDEF, NULL) / 4.0;
    llama_backward(&s.m, be, &s.ls, &s.b, 0xABCDEF);
    *grads = to_host(be, s.ls.grads, s.ls.numel);
    *numel = s.ls.numel;
    batch_free(&s.b);
    llama_free(&s.m, be);
    lora_free(&s.ls, be);
    return loss;
}

static double worst_grad(const float *got, const float *want, size_t n) {
    double mx = 0, d = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs((double)want[i])), d = fmax(d, fabs((double)got[i] - want[i]));
    return d / (mx > 0 ? mx : 1);
}

static void test_model(Ctx *c, const char *dir, int f, double dropout) {
    const char *fn = f ? "bf16" : "fp32";
    float *gc, *gg, *gp;
    size_t nc, ng, np;
    double lc = model_step(&c->cpu[f], dir, 8, dropout, &gc, &nc);
    double lg = model_step(&c->gpu[f], dir, 8, dropout, &gg, &ng);
    double lp = model_step(&c->gpu[f], dir, 0, dropout, &gp, &np);
    T_CHECK(c->tc, nc == ng && ng == np, "parameter counts %zu %zu %zu", nc, ng, np);
    double tl = f ? 1e-3 : 1e-5, tg = f ? 3e-2 : 1e-4;
    double el = fabs(lg - lc) / fabs(lc), eg = worst_grad(gg, gc, nc);
    T_CHECK(c->tc, el <= tl, "%s fused dropout %.1f: GPU loss %.9g vs CPU %.9g (rel %.2e > %.0e)", fn, dropout, lg,
            lc, el, tl);
    T_CHECK(c->tc, eg <= tg, "%s fused dropout %.1f: gradients GPU vs CPU %.2e of the largest > %.0e", fn, dropout, eg,
            tg);
    printf("  %s fused dropout %.1f: loss GPU %.9g CPU %.9g (rel %.2e, tol %.0e); gradients %.2e (tol %.0e); plain GPU "
           "loss %.9g, fused vs plain gradients %.2e (informative)\n",
           fn, dropout, lg, lc, el, tl, eg, tg, lp, worst_grad(gg, gp, nc));
    free(gc), free(gg), free(gp);
}

static int run(const char *root) {
    int harness = getenv("ACTLORA_TEST_HARNESS_ON_CPU") != NULL;
    int n = harness ? 1 : backend_cuda_device_count();
    if (n <= 0) {
        printf("test_backend_cuda_fuse: SKIP: no CUDA device is visible\n");
        return TEST_SKIP;
    }
    TestCounts tc = {0};
    Ctx c;
    memset(&c, 0, sizeof c);
    c.tc = &tc;
    c.r.s = 99;
    char msg[256];
    for (int f = 0; f < 2; f++) {
        backend_cpu_init(&c.cpu[f], 0);
        if (harness) backend_cpu_init(&c.gpu[f], 0);
        else backend_cuda_init(&c.gpu[f], 0);
        const char *dt = f ? "bf16" : "fp32";
        T_CHECK(&tc, backend_set_dtype(&c.cpu[f], dt, msg, sizeof msg) == 0, "%s", msg);
        T_CHECK(&tc, backend_set_dtype(&c.gpu[f], dt, msg, sizeof msg) == 0, "%s", msg);
    }
    printf("test_backend_cuda_fuse: %s\n", harness ? "ACTLORA_TEST_HARNESS_ON_CPU (CPU on both sides)" : "device 0");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tiny-llama", root);
    for (int f = 0; f < 2; f++) {
        test_ops(&c, f);
        test_model(&c, dir, f, 0.1);
        test_model(&c, dir, f, 0.0);
    }
    for (int f = 0; f < 2; f++) backend_free(&c.cpu[f]), backend_free(&c.gpu[f]);
    return t_finish(&tc, "test_backend_cuda_fuse");
}
#endif

int main(int argc, char **argv) {
#ifndef ACTLORA_HAVE_CUDA
    (void)argc;
    (void)argv;
    printf("test_backend_cuda_fuse: SKIP: built without the CUDA backend (configure with -DACTLORA_CUDA=ON)\n");
    return TEST_SKIP;
#else
    return run(argc > 1 ? argv[1] : ".");
#endif
}
