// test_backend_cuda_wf.c: RoPE and attention on activations in the weight format (rope_fwd_wf,
// attention_fwd_wf, attention_bwd_wf; backend.h "activations in the weight format") on the CUDA backend
// against the CPU backend, in both weight formats (fp32; bf16 against the CPU's bf16 emulation). Exits 77
// (skipped) when the build has no CUDA backend or no GPU is visible; ACTLORA_TEST_HARNESS_ON_CPU=1 runs every
// comparison with the CPU backend on both sides (a check of this test's own code without a GPU).
// The context, host copies, measures and setup are shared with test_backend_cuda_fuse.c (test_cuda_fmt.h).
//  GPU vs CPU:
//    rope_fwd_wf [3, 11, 5, 18]: fp32 rel 1e-5 (test_backend_cuda's rope measure), bf16 within one bf16 ulp
//      (+ 1e-6 of the largest);
//    attention_fwd_wf out and probs, attention_bwd_wf dq, dk, dv on random inputs (B3 T37 H4/2 D16, B2 T7 H4/4
//      D6, B2 T64 H8/2 D128; masks with right padding, left padding: queries with no visible key, and a fully
//      padded sequence; dq, dk, dv start as garbage: they are overwritten): fp32 norm 1e-5 (test_backend_cuda's
//      attention tolerance), bf16 norm 2e-2 (P and dS rounded to bf16 on both sides, one bf16 ulp apart where
//      the two sides' fp32 values round apart, and fp32 sums in another order).
//  On the device:
//    fp32 format: rope_fwd_wf = rope_fwd, attention_fwd_wf = attention_fwd (out, probs), attention_bwd_wf =
//      attention_bwd (dq, dk, dv), bit for bit; bf16: rope_fwd_wf = rope_fwd on the widened values, rounded,
//      bit for bit;
//    both formats: probs exactly 0 where the key is masked or in the future, out exactly 0 for queries with no
//      visible key, and a second run gives the same bits (out, probs, dq, dk, dv).
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
#include "test_fixture.h"
#include "test_cuda_fmt.h"  // FmtCtx, host copies, cmp_* measures, setup

// ------------------------------------------------------------------------------ RoPE

static void test_rope(FmtCtx *c, int f) {
    Backend *cb = &c->cpu[f], *gb = &c->gpu[f];
    const char *fn = f ? "bf16" : "fp32";
    const int B = 3, T = 11, nh = 5, D = 18;
    size_t n = (size_t)B * T * nh * D, nt = (size_t)T * (D / 2);
    char what[160];
    float *x = hrand(c, n, -2, 2), *cs = xmalloc(nt * sizeof(float), "cos"), *sn = xmalloc(nt * sizeof(float), "sin");
    for (size_t i = 0; i < nt; i++) {
        double a = 6.283 * rnd(&c->r);
        cs[i] = (float)cos(a);
        sn[i] = (float)sin(a);
    }
    float *ccs = on(cb, cs, nt), *csn = on(cb, sn, nt), *gcs = on(gb, cs, nt), *gsn = on(gb, sn, nt);
    void *cx = wf_on(cb, x, n), *gx = wf_on(gb, x, n);
    float *x0 = fx_weights_host(gb, gx, n);  // the values in the format, before the rotation
    cb->rope_fwd_wf(cb, cx, ccs, csn, B, T, nh, D);
    gb->rope_fwd_wf(gb, gx, gcs, gsn, B, T, nh, D);
    float *a = fx_weights_host(gb, gx, n), *b = fx_weights_host(cb, cx, n);
    snprintf(what, sizeof what, "%s rope_fwd_wf [%d, %d, %d, %d]", fn, B, T, nh, D);
    cmp_elem(c->tc, f, a, b, n, what);
    // on the device: = rope_fwd on the widened values (rounded to the format)
    float *fx = on(gb, x0, n);
    gb->rope_fwd(gb, fx, gcs, gsn, B, T, nh, D);
    float *want = to_host(gb, fx, n);
    round_fmt(f, want, n);
    snprintf(what, sizeof what, "%s rope_fwd_wf = rope_fwd%s on the device", fn, f ? ", rounded," : "");
    exact(c->tc, a, want, n, what);
    free(x), free(cs), free(sn), free(x0), free(a), free(b), free(want);
    cb->free(cb, ccs), cb->free(cb, csn), cb->free(cb, cx);
    gb->free(gb, gcs), gb->free(gb, gsn), gb->free(gb, gx), gb->free(gb, fx);
}

// ------------------------------------------------------------------------------ attention

typedef struct {
    int B, T, H, KVH, D;
} Shape;

// host copies of one side's five results: out, probs (widened), dq, dk, dv
typedef struct {
    float *o[5];
} Results;

static void results_get(Backend *be, Results *r, float *out, void *probs, float *dq, float *dk, float *dv,
                        const size_t n[5]) {
    r->o[0] = to_host(be, out, n[0]);
    r->o[1] = fx_weights_host(be, probs, n[1]);
    r->o[2] = to_host(be, dq, n[2]);
    r->o[3] = to_host(be, dk, n[3]);
    r->o[4] = to_host(be, dv, n[4]);
}

static void results_free(Results *r) {
    for (int i = 0; i < 5; i++) free(r->o[i]);
}

static void attention_case(FmtCtx *c, int f, const Shape *s) {
    Backend *cb = &c->cpu[f], *gb = &c->gpu[f];
    const char *fn = f ? "bf16" : "fp32";
    const int B = s->B, T = s->T, H = s->H, KVH = s->KVH, D = s->D;
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KVH * D, np = (size_t)B * H * T * T;
    const size_t n[5] = {nq, np, nq, nk, nk};
    const char *names[5] = {"attention_fwd_wf out", "attention_fwd_wf probs", "attention_bwd_wf dq",
                            "attention_bwd_wf dk", "attention_bwd_wf dv"};
    char shape[64], what[160];
    snprintf(shape, sizeof shape, "B%d T%d H%d/%d D%d", B, T, H, KVH, D);
    float *Q = hrand(c, nq, -2, 2), *K = hrand(c, nk, -2, 2), *V = hrand(c, nk, -1, 1), *DO = hrand(c, nq, -1, 1);
    float *G = hrand(c, nq, -5, 5);  // garbage: dq, dk, dv are overwritten
    int32_t *mask = fx_attention_mask(B, T);
    void *cq = wf_on(cb, Q, nq), *ck = wf_on(cb, K, nk), *cv = wf_on(cb, V, nk);
    void *gq = wf_on(gb, Q, nq), *gk = wf_on(gb, K, nk), *gv = wf_on(gb, V, nk);
    int32_t *cm = cb->alloc(cb, (size_t)B * T * sizeof(int32_t), "mask");
    int32_t *gm = gb->alloc(gb, (size_t)B * T * sizeof(int32_t), "mask");
    cb->upload(cb, cm, mask, (size_t)B * T * sizeof(int32_t));
    gb->upload(gb, gm, mask, (size_t)B * T * sizeof(int32_t));
    float *cdo = on(cb, DO, nq), *gdo = on(gb, DO, nq);
    float *co = falloc(cb, nq), *go = falloc(gb, nq);
    void *cp = cb->weight_alloc(cb, np, "probs"), *gp = gb->weight_alloc(gb, np, "probs");
    float *cdq = on(cb, G, nq), *cdk = on(cb, G, nk), *cdv = on(cb, G, nk);
    float *gdq = on(gb, G, nq), *gdk = on(gb, G, nk), *gdv = on(gb, G, nk);
    cb->attention_fwd_wf(cb, co, cp, cq, ck, cv, cm, B, T, H, KVH, D);
    gb->attention_fwd_wf(gb, go, gp, gq, gk, gv, gm, B, T, H, KVH, D);
    cb->attention_bwd_wf(cb, cdq, cdk, cdv, cdo, cp, cq, ck, cv, B, T, H, KVH, D);
    gb->attention_bwd_wf(gb, gdq, gdk, gdv, gdo, gp, gq, gk, gv, B, T, H, KVH, D);
    Results rc, rg;
    results_get(cb, &rc, co, cp, cdq, cdk, cdv, n);
    results_get(gb, &rg, go, gp, gdq, gdk, gdv, n);
    double tol = f ? 2e-2 : 1e-5;
    for (int i = 0; i < 5; i++) {
        snprintf(what, sizeof what, "%s %s %s", fn, names[i], shape);
        cmp_norm(c->tc, rg.o[i], rc.o[i], n[i], tol, what);
    }
    // exact zeros: probs of masked and future keys, out of queries with no visible key
    size_t bad_p = 0, bad_o = 0, no_key = 0;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < T; i++) {
            int seen = 0;
            for (int j = 0; j <= i; j++) seen |= mask[(size_t)b * T + j] == 1;
            for (int h = 0; h < H; h++) {
                const float *p = rg.o[1] + (((size_t)b * H + h) * T + i) * T;
                for (int j = 0; j < T; j++)
                    if ((j > i || mask[(size_t)b * T + j] != 1) && p[j] != 0.0f) bad_p++;
                if (!seen) {
                    const float *o = rg.o[0] + (((size_t)b * T + i) * H + h) * D;
                    for (int d = 0; d < D; d++) bad_o += o[d] != 0.0f;
                }
            }
            no_key += !seen;
        }
    T_CHECK(c->tc, bad_p == 0, "%s attention_fwd_wf %s: %zu probabilities of masked or future keys are not 0", fn,
            shape, bad_p);
    T_CHECK(c->tc, bad_o == 0 && no_key > 0,
            "%s attention_fwd_wf %s: %zu outputs of the %zu queries with no visible key are not 0", fn, shape, bad_o,
            no_key);
    snprintf(what, sizeof what, "%s attention_fwd_wf %s zeros", fn, shape);
    printf("  %-58s %s (probs of masked / future keys; out of the %zu queries that see no key)\n", what,
           bad_p || bad_o ? "NOT ZERO" : "exact", no_key);
    // a second run on the device: the same bits
    Results r2;
    gb->attention_fwd_wf(gb, go, gp, gq, gk, gv, gm, B, T, H, KVH, D);
    gb->attention_bwd_wf(gb, gdq, gdk, gdv, gdo, gp, gq, gk, gv, B, T, H, KVH, D);
    results_get(gb, &r2, go, gp, gdq, gdk, gdv, n);
    for (int i = 0; i < 5; i++) {
        snprintf(what, sizeof what, "%s %s %s, second run", fn, names[i], shape);
        exact(c->tc, r2.o[i], rg.o[i], n[i], what);
    }
    results_free(&r2);
    if (!f) {  // fp32 format: the fp32 ops on the same buffers, bit for bit
        float *go2 = falloc(gb, nq), *gp2 = falloc(gb, np), *gdq2 = on(gb, G, nq), *gdk2 = on(gb, G, nk),
              *gdv2 = on(gb, G, nk);
        gb->attention_fwd(gb, go2, gp2, (const float *)gq, (const float *)gk, (const float *)gv, gm, B, T, H, KVH, D);
        gb->attention_bwd(gb, gdq2, gdk2, gdv2, gdo, gp2, (const float *)gq, (const float *)gk, (const float *)gv, B, T,
                          H, KVH, D);
        Results rf;
        results_get(gb, &rf, go2, gp2, gdq2, gdk2, gdv2, n);
        const char *ops[5] = {"attention_fwd out", "attention_fwd probs", "attention_bwd dq", "attention_bwd dk",
                              "attention_bwd dv"};
        for (int i = 0; i < 5; i++) {
            snprintf(what, sizeof what, "fp32 %s = %s on the device", names[i], ops[i]);
            exact(c->tc, rg.o[i], rf.o[i], n[i], what);
        }
        results_free(&rf);
        gb->free(gb, go2), gb->free(gb, gp2), gb->free(gb, gdq2), gb->free(gb, gdk2), gb->free(gb, gdv2);
    }
    results_free(&rc), results_free(&rg);
    free(Q), free(K), free(V), free(DO), free(G), free(mask);
    void *cf[] = {cq, ck, cv, cm, cdo, co, cp, cdq, cdk, cdv}, *gf[] = {gq, gk, gv, gm, gdo, go, gp, gdq, gdk, gdv};
    for (int i = 0; i < 10; i++) cb->free(cb, cf[i]), gb->free(gb, gf[i]);
}

static void test_attention(FmtCtx *c, int f) {
    const Shape shapes[] = {
        {3, 37, 4, 2, 16},   // GQA 2:1; right, left and full padding
        {2, 7, 4, 4, 6},     // test_backend_ops' awkward sizes, no GQA (bf16 rows of 12 bytes)
        {2, 64, 8, 2, 128},  // Llama-shaped heads, GQA 4:1
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) attention_case(c, f, &shapes[i]);
}

static int run(void) {
    TestCounts tc = {0};
    FmtCtx c;
    if (!fmt_ctx_open(&c, &tc, "test_backend_cuda_wf", 4242)) return TEST_SKIP;
    for (int f = 0; f < 2; f++) {
        test_rope(&c, f);
        test_attention(&c, f);
    }
    fmt_ctx_close(&c);
    return t_finish(&tc, "test_backend_cuda_wf");
}
#endif

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
#ifndef ACTLORA_HAVE_CUDA
    printf("test_backend_cuda_wf: SKIP: built without the CUDA backend (configure with -DACTLORA_CUDA=ON)\n");
    return TEST_SKIP;
#else
    return run();
#endif
}
