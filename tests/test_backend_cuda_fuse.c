// test_backend_cuda_fuse.c: LoRA on the frozen GEMM (lora.fuse) on the CUDA backend against the CPU
// backend, in both weight formats (fp32; bf16 against the CPU's bf16 emulation). Exits 77 (skipped)
// when the build has no CUDA backend or no GPU is visible; ACTLORA_TEST_HARNESS_ON_CPU=1 runs every
// comparison with the CPU backend on both sides (a check of this test's own code without a GPU).
// The context, host copies, measures and setup are shared with test_backend_cuda_wf.c (test_cuda_fmt.h).
//  ops: weight_set_lora exact (the same roundings); weight_randn_2d exact in fp32 up to libm vs CUDA
//       (rel 1e-6) and within one bf16 ulp in bf16; wgemm_lora forward / input gradient, with and without
//       Xa, beta 0 and 1, sizes up to a 4096-deep product: max |diff| / max |cpu| 1e-5 (fp32) and 1e-4
//       (bf16, as wgemm); wgemm_lora_multi = the single calls bit for bit on the device, and a second
//       run gives the same bits.
//  activations in the weight format (M 37, hidden 29, intermediate 40, r 8, row strides 48 / 44 / 11 / 15 ...,
//       padding columns compared too: they must stay as they were):
//       GPU vs CPU: wgemm_lora_multi_wf (its operand Xw in the format, read in place; Xw afterwards exact) norm
//       1e-5 (fp32) / 1e-2 (bf16 outputs: one bf16 ulp of the largest); rmsnorm_fwd_wf 1e-5 / one bf16 ulp;
//       wgemm_lora_wf and gemm_wf (both operand formats, transposes, strides, alpha, beta; K = 0 exact) 1e-5 /
//       1e-4, and Xw after wgemm_lora_wf exact; swiglu_fwd_wf / swiglu_bwd_wf rel 1e-5 (test_backend_cuda's
//       measure) / one bf16 ulp (+ 1e-6 of the largest);
//       row_norm_sum_wf 1e-12 relative and run to run bitwise.
//       On the device against the fp32 ops: wgemm_lora_multi_wf = wgemm_lora_multi (fp32 exact, bf16 within one
//       ulp), wgemm_lora_wf = wgemm_lora (exact), gemm_wf = gemm (fp32, contiguous: exact), swiglu / dropout =
//       the fp32 op rounded (exact), row_norm_sum_wf = row_norm_sum on the widened values (bitwise).
//  model: the tiny Llama fixture bordered (fuse r 8, layers 1 and 3, all seven modules, non-zero B, LoRA
//       dropout 0.1 so the unfolded path runs too, and 0): GPU vs CPU loss 1e-5 relative, gradients 1e-4
//       of each tensor's largest element in fp32; in bf16 loss 1e-3, gradients 3e-2 (test_backend_cuda_model's
//       bf16 tolerances); and the bf16 fused GPU run vs the plain bf16 GPU run (informative). The same again
//       with the activations in the weight format (llama_set_act_wf; model.act_dtype "bf16"), and in bf16 with
//       the fused attention on top (llama_set_att_fused; model.attention "fused"), the same tolerances.
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
#include "test_cuda_fmt.h"  // FmtCtx, host copies, cmp_* measures, setup

// ------------------------------------------------------------------------------ ops

static void test_ops(FmtCtx *c, int f) {
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

// ------------------------------------------------------------------------------ activations in the weight format

#define WF_M 37  // rows (tokens)
#define WF_H 29  // hidden size
#define WF_I 40  // intermediate size
#define WF_R 8   // adapter rank
#define WF_LD (WF_I + WF_R)

// A bordered weight [out + r, in + r] (a plain draw and the border of random A, B with s = 0.5) on the CPU,
// and the same values uploaded to the GPU side as they are.
static void bordered_pair(FmtCtx *c, int f, int out, int in, uint64_t key, void **cw, void **gw) {
    Backend *cb = &c->cpu[f], *gb = &c->gpu[f];
    size_t nb = (size_t)(out + WF_R) * (in + WF_R);
    float *A = hrand(c, (size_t)WF_R * in, -1, 1), *B = hrand(c, (size_t)out * WF_R, -1, 1);
    float *ca = on(cb, A, (size_t)WF_R * in), *cbm = on(cb, B, (size_t)out * WF_R);
    *cw = cb->weight_alloc(cb, nb, "bordered");
    cb->weight_randn_2d(cb, *cw, out, in, in + WF_R, 0.0f, 0.05f, key);
    cb->weight_set_lora(cb, *cw, out, in, WF_R, ca, cbm, 0.5f);
    float *h = fx_weights_host(cb, *cw, nb);
    *gw = wf_on(gb, h, nb);
    free(h), free(A), free(B);
    cb->free(cb, ca), cb->free(cb, cbm);
}

// wgemm_lora_multi_wf and wgemm_lora_wf: GPU vs CPU, and against the fp32-output ops on the device
static void test_wf_lora(FmtCtx *c, int f, void *cw[3], void *gw[3]) {
    Backend *cb = &c->cpu[f], *gb = &c->gpu[f];
    const char *fn = f ? "bf16" : "fp32";
    const int M = WF_M, H = WF_H, I = WF_I, R = WF_R, LD = WF_LD;
    char what[160];
    float *Xa = hrand(c, (size_t)M * R, -2, 2);
    float *cxa = on(cb, Xa, (size_t)M * R), *gxa = on(gb, Xa, (size_t)M * R);
    // gate (with an adapter) and up (without) sharing Xw [M, H + R] in the weight format
    {
        int outs[2] = {I, I}, ldx = H + R;
        const float *cxas[2] = {cxa, NULL}, *gxas[2] = {gxa, NULL};
        const void *cws[2] = {cw[0], cw[1]}, *gws[2] = {gw[0], gw[1]};
        float *Xh = hrand(c, (size_t)M * ldx, -1, 1);
        void *cxw = wf_on(cb, Xh, (size_t)M * ldx), *gxw = wf_on(gb, Xh, (size_t)M * ldx);
        float *xw0 = fx_weights_host(gb, gxw, (size_t)M * ldx), *xc = compact(xw0, M, H, ldx);
        float *gx = on(gb, xc, (size_t)M * H);  // the same values as fp32 [M, H], for wgemm_lora_multi
        void *cy[2], *gy[2];
        float *gyf[2];
        for (int i = 0; i < 2; i++) {
            cy[i] = cb->weight_alloc(cb, (size_t)M * I, "y"), gy[i] = gb->weight_alloc(gb, (size_t)M * I, "y");
            gyf[i] = falloc(gb, (size_t)M * I);
        }
        cb->wgemm_lora_multi_wf(cb, 2, M, H, R, cxw, cxas, cws, outs, cy);
        gb->wgemm_lora_multi_wf(gb, 2, M, H, R, gxw, gxas, gws, outs, gy);
        gb->wgemm_lora_multi(gb, 2, M, H, R, gx, gxas, gws, outs, gyf);
        snprintf(what, sizeof what, "%s wgemm_lora_multi_wf: Xw afterwards", fn);
        wf_exact(c->tc, gb, gxw, cb, cxw, (size_t)M * ldx, what);
        for (int i = 0; i < 2; i++) {
            float *a = fx_weights_host(cb, cy[i], (size_t)M * I), *b = fx_weights_host(gb, gy[i], (size_t)M * I);
            float *d = to_host(gb, gyf[i], (size_t)M * I);
            snprintf(what, sizeof what, "%s wgemm_lora_multi_wf %d %dx%dx%d%s", fn, i, M, I, H, i ? "" : "+r");
            cmp_norm(c->tc, b, a, (size_t)M * I, f ? 1e-2 : 1e-5, what);
            snprintf(what, sizeof what, "%s wgemm_lora_multi_wf %d = wgemm_lora_multi on the device%s", fn, i,
                     f ? ", rounded" : "");
            if (f) cmp_elem(c->tc, f, b, d, (size_t)M * I, what);
            else check_exact(c->tc, b, d, (size_t)M * I, what), printf("  %-58s exact\n", what);
            free(a), free(b), free(d);
            cb->free(cb, cy[i]), gb->free(gb, gy[i]), gb->free(gb, gyf[i]);
        }
        free(Xh), free(xw0), free(xc);
        cb->free(cb, cxw), gb->free(gb, gxw), gb->free(gb, gx);
    }
    // down forward (trans_w 1, W [H, I]) and gate's input gradient (trans_w 0, W [I, H]): k0 = I, n = H both
    for (int tw = 1; tw >= 0; tw--)
        for (int with = 1; with >= 0; with--)
            for (int beta = 0; beta <= 1; beta++) {
                const void *cwb = tw ? cw[2] : cw[0], *gwb = tw ? gw[2] : gw[0];
                int out = tw ? H : I, in = tw ? I : H;
                float *Xh = hrand(c, (size_t)M * LD, -1, 1), *Y0 = hrand(c, (size_t)M * H, -1, 1);
                void *cxw = wf_on(cb, Xh, (size_t)M * LD), *gxw = wf_on(gb, Xh, (size_t)M * LD);
                float *cy = on(cb, Y0, (size_t)M * H), *gy = on(gb, Y0, (size_t)M * H);
                float *xw0 = fx_weights_host(gb, gxw, (size_t)M * LD);  // columns [0, I) stay as they are
                cb->wgemm_lora_wf(cb, tw, M, out, in, R, cxw, with ? cxa : NULL, cwb, (float)beta, cy);
                gb->wgemm_lora_wf(gb, tw, M, out, in, R, gxw, with ? gxa : NULL, gwb, (float)beta, gy);
                float *hc = to_host(cb, cy, (size_t)M * H), *hg = to_host(gb, gy, (size_t)M * H);
                snprintf(what, sizeof what, "%s wgemm_lora_wf %s %dx%dx%d%s beta %d", fn, tw ? "fwd" : "dX", M, H, I,
                         with ? "+r" : "", beta);
                cmp_norm(c->tc, hg, hc, (size_t)M * H, f ? 1e-4 : 1e-5, what);
                snprintf(what, sizeof what, "%s wgemm_lora_wf %s%s: Xw afterwards", fn, tw ? "fwd" : "dX",
                         with ? "+r" : "");
                wf_exact(c->tc, gb, gxw, cb, cxw, (size_t)M * LD, what);
                if (with) {  // = wgemm_lora on X = Xw[:, :I] (same operand, same product) on the device
                    float *xc = compact(xw0, M, I, LD), *gxc = on(gb, xc, (size_t)M * I);
                    float *gy2 = on(gb, Y0, (size_t)M * H);
                    gb->wgemm_lora(gb, tw, M, out, in, R, gxc, gxa, gwb, (float)beta, gy2);
                    float *h2 = to_host(gb, gy2, (size_t)M * H);
                    snprintf(what, sizeof what, "%s wgemm_lora_wf %s beta %d = wgemm_lora on the device", fn,
                             tw ? "fwd" : "dX", beta);
                    check_exact(c->tc, hg, h2, (size_t)M * H, what);
                    printf("  %-58s exact\n", what);
                    free(xc), free(h2);
                    gb->free(gb, gxc), gb->free(gb, gy2);
                }
                free(Xh), free(Y0), free(xw0), free(hc), free(hg);
                cb->free(cb, cxw), cb->free(cb, cy), gb->free(gb, gxw), gb->free(gb, gy);
            }
    free(Xa);
    cb->free(cb, cxa), gb->free(gb, gxa);
}

// gemm_wf: the products of the adapters' gradients and more, strided operands in either format
static void test_wf_gemm(FmtCtx *c, int f) {
    Backend *cb = &c->cpu[f], *gb = &c->gpu[f];
    const char *fn = f ? "bf16" : "fp32";
    const int M = WF_M, I = WF_I, R = WF_R, LD = WF_LD;
    typedef struct {
        int ta, tb, M, N, K, lda, a_wf, ldb, b_wf;
        float alpha, beta;
        const char *name;
    } Case;
    const Case cases[] = {
        {1, 0, I, R, M, LD, 1, R, 0, 0.5f, 1.0f, "dB = dgate^T a"},                    // A wf [M, I]; B [M, R]
        {0, 0, M, R, I, LD, 1, R, 0, 1.0f, 0.0f, "da = dgate B"},                      // B fp32 [I, R]
        {0, 1, M, R, I, I, 1, 44, 0, 1.0f, 0.0f, "h A^T, strided fp32 B"},             // B fp32 [R, I] ld 44
        {1, 0, R, I, M, 11, 0, LD, 1, 1.0f, 1.0f, "dA = da^T x, strided fp32 A"},      // A fp32 [M, R] ld 11
        {1, 1, 13, 9, M, 15, 0, 40, 0, -0.75f, 0.5f, "fp32 A^T B^T, strided"},         // A [M, 13]; B [9, M]
        {0, 0, M, 21, I, LD, 1, 24, 1, 1.0f, 0.0f, "both in the format, strided"},     // B wf [I, 21] ld 24
        {0, 0, M, R, I, I, 0, R, 0, 1.0f, 0.0f, "contiguous fp32"},                    // = gemm (fp32 format)
        {0, 1, M, R, I, I, 1, I, 1, 2.0f, 1.0f, "contiguous, both in the format"},     // = gemm (fp32 format)
        {0, 1, M, R, 0, 1, 1, 1, 0, 1.0f, 0.0f, "K = 0, beta 0"},
        {0, 0, M, R, 0, 1, 0, R, 1, 1.0f, 0.5f, "K = 0, beta 0.5"},
    };
    char what[160];
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const Case *q = &cases[k];
        int ar = q->ta ? q->K : q->M, ac = q->ta ? q->M : q->K, br = q->tb ? q->N : q->K, bc = q->tb ? q->K : q->N;
        size_t na = (size_t)ar * q->lda, nb = (size_t)br * q->ldb, nc = (size_t)q->M * q->N;
        float *A = hrand(c, na, -1, 1), *B = hrand(c, nb, -1, 1), *C0 = hrand(c, nc, -1, 1);
        void *ca = q->a_wf ? wf_on(cb, A, na) : on(cb, A, na), *ga = q->a_wf ? wf_on(gb, A, na) : on(gb, A, na);
        void *cbb = q->b_wf ? wf_on(cb, B, nb) : on(cb, B, nb), *gbb = q->b_wf ? wf_on(gb, B, nb) : on(gb, B, nb);
        float *cc = on(cb, C0, nc), *gc = on(gb, C0, nc);
        cb->gemm_wf(cb, q->ta, q->tb, q->M, q->N, q->K, q->alpha, ca, q->lda, q->a_wf, cbb, q->ldb, q->b_wf, q->beta,
                    cc);
        gb->gemm_wf(gb, q->ta, q->tb, q->M, q->N, q->K, q->alpha, ga, q->lda, q->a_wf, gbb, q->ldb, q->b_wf, q->beta,
                    gc);
        float *hc = to_host(cb, cc, nc), *hg = to_host(gb, gc, nc);
        snprintf(what, sizeof what, "%s gemm_wf %dx%dx%d %s", fn, q->M, q->N, q->K, q->name);
        if (q->K == 0) {
            check_exact(c->tc, hg, hc, nc, what);
            printf("  %-58s exact\n", what);
        } else {
            cmp_norm(c->tc, hg, hc, nc, f ? 1e-4 : 1e-5, what);
        }
        if (!f && q->K > 0 && q->lda == ac && q->ldb == bc) {  // fp32 format, contiguous: the gemm op's bits
            float *gc2 = on(gb, C0, nc);
            gb->gemm(gb, q->ta, q->tb, q->M, q->N, q->K, q->alpha, (const float *)ga, (const float *)gbb, q->beta, gc2);
            float *h2 = to_host(gb, gc2, nc);
            snprintf(what, sizeof what, "%s gemm_wf %s = gemm on the device", fn, q->name);
            check_exact(c->tc, hg, h2, nc, what);
            printf("  %-58s exact\n", what);
            free(h2);
            gb->free(gb, gc2);
        }
        free(A), free(B), free(C0), free(hc), free(hg);
        cb->free(cb, ca), cb->free(cb, cbb), cb->free(cb, cc), gb->free(gb, ga), gb->free(gb, gbb), gb->free(gb, gc);
    }
}

// swiglu_fwd_wf / swiglu_bwd_wf: GPU vs CPU over strided outputs (padding included: it must stay as it was),
// and on the device = swiglu_fwd / swiglu_bwd on the fp32 values, rounded to the format, bit for bit
static void test_wf_swiglu(FmtCtx *c, int f) {
    Backend *cb = &c->cpu[f], *gb = &c->gpu[f];
    const char *fn = f ? "bf16" : "fp32";
    const int M = WF_M, I = WF_I, LD = WF_LD;
    size_t n = (size_t)M * I, nl = (size_t)M * LD;
    char what[160];
    float *G = hrand(c, n, -8, 8), *U = hrand(c, n, -2, 2), *DH = hrand(c, n, -1, 1), *P = hrand(c, nl, -1, 1);
    void *cg = wf_on(cb, G, n), *gg = wf_on(gb, G, n), *cu = wf_on(cb, U, n), *gu = wf_on(gb, U, n);
    float *cdh = on(cb, DH, n), *gdh = on(gb, DH, n);
    void *ch = wf_on(cb, P, nl), *gh = wf_on(gb, P, nl), *cdg = wf_on(cb, P, nl), *gdg = wf_on(gb, P, nl);
    void *cdu = wf_on(cb, P, nl), *gdu = wf_on(gb, P, nl);
    cb->swiglu_fwd_wf(cb, ch, LD, cg, cu, M, I);
    gb->swiglu_fwd_wf(gb, gh, LD, gg, gu, M, I);
    cb->swiglu_bwd_wf(cb, cdg, cdu, LD, cdh, cg, cu, M, I);
    gb->swiglu_bwd_wf(gb, gdg, gdu, LD, gdh, gg, gu, M, I);
    void *cs[3] = {ch, cdg, cdu}, *gs[3] = {gh, gdg, gdu};
    const char *names[3] = {"swiglu_fwd_wf h", "swiglu_bwd_wf dgate", "swiglu_bwd_wf dup"};
    for (int i = 0; i < 3; i++) {
        float *a = fx_weights_host(gb, gs[i], nl), *b = fx_weights_host(cb, cs[i], nl);
        snprintf(what, sizeof what, "%s %s %dx%d stride %d", fn, names[i], M, I, LD);
        cmp_elem(c->tc, f, a, b, nl, what);
        free(a), free(b);
    }
    // on the device, contiguous outputs against the fp32 ops on the (widened) values of gate and up
    float *hg = fx_weights_host(gb, gg, n), *hu = fx_weights_host(gb, gu, n);
    float *fg = on(gb, hg, n), *fu = on(gb, hu, n), *fh = falloc(gb, n), *fdg = falloc(gb, n), *fdu = falloc(gb, n);
    void *wh = gb->weight_alloc(gb, n, "h"), *wdg = gb->weight_alloc(gb, n, "dg"), *wdu = gb->weight_alloc(gb, n, "du");
    gb->swiglu_fwd(gb, fh, fg, fu, n);
    gb->swiglu_bwd(gb, fdg, fdu, gdh, fg, fu, n);
    gb->swiglu_fwd_wf(gb, wh, I, gg, gu, M, I);
    gb->swiglu_bwd_wf(gb, wdg, wdu, I, gdh, gg, gu, M, I);
    float *fs[3] = {fh, fdg, fdu};
    void *ws[3] = {wh, wdg, wdu};
    for (int i = 0; i < 3; i++) {
        float *want = to_host(gb, fs[i], n), *got = fx_weights_host(gb, ws[i], n);
        round_fmt(f, want, n);
        snprintf(what, sizeof what, "%s %s = the fp32 op%s on the device", fn, names[i], f ? ", rounded," : "");
        check_exact(c->tc, got, want, n, what);
        printf("  %-58s exact\n", what);
        free(want), free(got);
        gb->free(gb, fs[i]), gb->free(gb, ws[i]);
    }
    free(G), free(U), free(DH), free(P), free(hg), free(hu);
    gb->free(gb, fg), gb->free(gb, fu);
    void *cf[] = {cg, cu, cdh, ch, cdg, cdu}, *gf[] = {gg, gu, gdh, gh, gdg, gdu};
    for (int i = 0; i < 6; i++) cb->free(cb, cf[i]), gb->free(gb, gf[i]);
    // rmsnorm_fwd_wf: rows of width I into stride LD, GPU vs CPU (rstd too), and = rmsnorm_fwd rounded on the device
    float *X = hrand(c, n, -3, 3), *Wn = hrand(c, (size_t)I, 0.5, 1.5), *Q = hrand(c, nl, -1, 1);
    float *cx = on(cb, X, n), *gx = on(gb, X, n), *cwn = on(cb, Wn, (size_t)I), *gwn = on(gb, Wn, (size_t)I);
    float *crs = falloc(cb, (size_t)M), *grs = falloc(gb, (size_t)M), *frs = falloc(gb, (size_t)M), *fo = falloc(gb, n);
    void *co = wf_on(cb, Q, nl), *go = wf_on(gb, Q, nl), *go2 = gb->weight_alloc(gb, n, "rmsnorm out");
    cb->rmsnorm_fwd_wf(cb, co, LD, crs, cx, cwn, M, I, 1e-5f);
    gb->rmsnorm_fwd_wf(gb, go, LD, grs, gx, gwn, M, I, 1e-5f);
    float *a = fx_weights_host(gb, go, nl), *b = fx_weights_host(cb, co, nl);
    snprintf(what, sizeof what, "%s rmsnorm_fwd_wf %dx%d stride %d", fn, M, I, LD);
    cmp_elem(c->tc, f, a, b, nl, what);
    float *ra = to_host(gb, grs, (size_t)M), *rb = to_host(cb, crs, (size_t)M);
    snprintf(what, sizeof what, "%s rmsnorm_fwd_wf rstd", fn);
    cmp_elem(c->tc, 0, ra, rb, (size_t)M, what);
    gb->rmsnorm_fwd(gb, fo, frs, gx, gwn, M, I, 1e-5f);
    gb->rmsnorm_fwd_wf(gb, go2, I, grs, gx, gwn, M, I, 1e-5f);
    float *want = to_host(gb, fo, n), *got = fx_weights_host(gb, go2, n);
    round_fmt(f, want, n);
    snprintf(what, sizeof what, "%s rmsnorm_fwd_wf = rmsnorm_fwd%s on the device", fn, f ? ", rounded," : "");
    check_exact(c->tc, got, want, n, what);
    printf("  %-58s exact\n", what);
    free(X), free(Wn), free(Q), free(a), free(b), free(ra), free(rb), free(want), free(got);
    void *cf2[] = {cx, cwn, crs, co}, *gf2[] = {gx, gwn, grs, frs, fo, go, go2};
    for (int i = 0; i < 4; i++) cb->free(cb, cf2[i]);
    for (int i = 0; i < 7; i++) gb->free(gb, gf2[i]);
}

// row_norm_sum_wf
static void test_wf_norm(FmtCtx *c, int f) {
    Backend *cb = &c->cpu[f], *gb = &c->gpu[f];
    const char *fn = f ? "bf16" : "fp32";
    const int M = WF_M, I = WF_I, LD = WF_LD;
    size_t n = (size_t)M * I;
    char what[160];
    // row_norm_sum_wf over a strided x with masked rows
    float *X = hrand(c, (size_t)M * LD, -2, 2);
    int32_t mask[WF_M];
    for (int i = 0; i < M; i++) mask[i] = rnd(&c->r) < 0.8 || i == 0;
    void *cx = wf_on(cb, X, (size_t)M * LD), *gx = wf_on(gb, X, (size_t)M * LD);
    int32_t *cm = cb->alloc(cb, sizeof mask, "mask"), *gm = gb->alloc(gb, sizeof mask, "mask");
    cb->upload(cb, cm, mask, sizeof mask), gb->upload(gb, gm, mask, sizeof mask);
    double rc = cb->row_norm_sum_wf(cb, cx, LD, cm, M, I), rg = gb->row_norm_sum_wf(gb, gx, LD, gm, M, I);
    double rg2 = gb->row_norm_sum_wf(gb, gx, LD, gm, M, I), e = fabs(rg - rc) / fabs(rc);
    T_CHECK(c->tc, e <= 1e-12, "%s row_norm_sum_wf: GPU %.17g vs CPU %.17g (rel %.3g > 1e-12)", fn, rg, rc, e);
    T_CHECK(c->tc, memcmp(&rg, &rg2, sizeof rg) == 0, "%s row_norm_sum_wf is not deterministic", fn);
    // on the device: = row_norm_sum of the contiguous fp32 values, bit for bit
    float *hx = fx_weights_host(gb, gx, (size_t)M * LD), *xc = compact(hx, M, I, LD), *fx = on(gb, xc, n);
    double r3 = gb->row_norm_sum(gb, fx, gm, M, I);
    T_CHECK(c->tc, memcmp(&rg, &r3, sizeof rg) == 0, "%s row_norm_sum_wf %.17g != row_norm_sum %.17g on the device",
            fn, rg, r3);
    snprintf(what, sizeof what, "%s row_norm_sum_wf %dx%d stride %d", fn, M, I, LD);
    printf("  %-58s rel %.2e (tol 1e-12); = row_norm_sum on the device\n", what, e);
    free(X), free(hx), free(xc);
    cb->free(cb, cx), cb->free(cb, cm), gb->free(gb, gx), gb->free(gb, gm), gb->free(gb, fx);
}

static void test_wf(FmtCtx *c, int f) {
    void *cw[3], *gw[3];  // gate [I, H], up [I, H], down [H, I], bordered
    bordered_pair(c, f, WF_I, WF_H, 0x51u, &cw[0], &gw[0]);
    bordered_pair(c, f, WF_I, WF_H, 0x52u, &cw[1], &gw[1]);
    bordered_pair(c, f, WF_H, WF_I, 0x53u, &cw[2], &gw[2]);
    test_wf_lora(c, f, cw, gw);
    test_wf_gemm(c, f);
    test_wf_swiglu(c, f);
    test_wf_norm(c, f);
    for (int i = 0; i < 3; i++) c->cpu[f].free(&c->cpu[f], cw[i]), c->gpu[f].free(&c->gpu[f], gw[i]);
}

// ------------------------------------------------------------------------------ the model

typedef struct {
    Llama m;
    LoraSet ls;
    Batch b;
} Side;

// One forward + backward of the tiny Llama on be (fuse_r 0 = plain; act_wf: 1 the activations in the weight
// format, model.act_dtype "bf16"; 2 and the fused attention, model.attention "fused"): the mean loss; host
// copies of the grads.
static double model_step(Backend *be, const char *dir, int fuse_r, int act_wf, double dropout, float **grads,
                         size_t *numel) {
    Error err;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    ModelConfig mc;
    if (hfconfig_load(&mc, path, &err) != 0) die("%s", err.msg);
    Side s;
    llama_load_fused(&s.m, be, dir, &mc, 3, 0, 0, fuse_r, NULL);
    llama_set_act_wf(&s.m, act_wf != 0);
    llama_set_att_fused(&s.m, act_wf == 2);
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

static void test_model(FmtCtx *c, const char *dir, int f, int act_wf, double dropout) {
    const char *fn = f ? "bf16" : "fp32";
    const char *what = act_wf == 2 ? "fused + activations in the weight format + fused attention"
                                   : act_wf ? "fused + activations in the weight format" : "fused";
    float *gc, *gg, *gp;
    size_t nc, ng, np;
    double lc = model_step(&c->cpu[f], dir, 8, act_wf, dropout, &gc, &nc);
    double lg = model_step(&c->gpu[f], dir, 8, act_wf, dropout, &gg, &ng);
    double lp = model_step(&c->gpu[f], dir, 0, 0, dropout, &gp, &np);
    T_CHECK(c->tc, nc == ng && ng == np, "parameter counts %zu %zu %zu", nc, ng, np);
    double tl = f ? 1e-3 : 1e-5, tg = f ? 3e-2 : 1e-4;
    double el = fabs(lg - lc) / fabs(lc), eg = worst_grad(gg, gc, nc);
    T_CHECK(c->tc, el <= tl, "%s %s dropout %.1f: GPU loss %.9g vs CPU %.9g (rel %.2e > %.0e)", fn, what, dropout, lg,
            lc, el, tl);
    T_CHECK(c->tc, eg <= tg, "%s %s dropout %.1f: gradients GPU vs CPU %.2e of the largest > %.0e", fn, what, dropout,
            eg, tg);
    printf("  %s %s dropout %.1f: loss GPU %.9g CPU %.9g (rel %.2e, tol %.0e); gradients %.2e (tol %.0e); plain GPU "
           "loss %.9g, vs plain gradients %.2e (informative)\n",
           fn, what, dropout, lg, lc, el, tl, eg, tg, lp, worst_grad(gg, gp, nc));
    free(gc), free(gg), free(gp);
}

static int run(const char *root) {
    TestCounts tc = {0};
    FmtCtx c;
    if (!fmt_ctx_open(&c, &tc, "test_backend_cuda_fuse", 99)) return TEST_SKIP;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tiny-llama", root);
    for (int f = 0; f < 2; f++) {
        test_ops(&c, f);
        test_wf(&c, f);
        for (int wf = 0; wf <= (f ? 2 : 1); wf++) {  // the fused attention needs bf16
            test_model(&c, dir, f, wf, 0.1);
            test_model(&c, dir, f, wf, 0.0);
        }
    }
    fmt_ctx_close(&c);
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
