// test_backend_cuda_attn_fused.c: the fused attention (attention_fused_fwd / attention_fused_bwd; backend.h
// "fused attention", src/cuda/attention_fused.cu: WMMA tensor-core kernels) on the CUDA backend against the
// CPU backend's plain-C reference (backend_cpu_attn_fused.c, itself checked against attention_fwd /
// attention_bwd by test_attn_fused), in the bf16 weight format (the kernels need it). Exits 77 (skipped) when
// the build has no CUDA backend or no GPU is visible; ACTLORA_TEST_HARNESS_ON_CPU=1 puts the CPU on both sides.
//  GPU vs CPU on random inputs (masks with right padding, left padding: queries with no visible key, and a
//  fully padded sequence; dq, dk, dv and out start as garbage: they are overwritten):
//    out, dq, dk, dv: norm 2e-2 of the largest (P, dout and dS rounded to bf16 on both sides, one bf16 ulp
//    apart where the two sides' fp32 values round apart, and fp32 sums in another order: the tensor cores');
//    lse: within 1e-4 + 1e-5 |lse| where finite, and -inf on both sides at the same rows.
//  Shapes: B3 T37 H4/2 D16 (partial tiles, GQA 2:1), B2 T70 H2/1 D32 (two 64-row query tiles, three key
//    tiles), B1 T130 H2/2 D64, B2 T64 H8/2 D128 (Llama-shaped heads, GQA 4:1).
//  On the device: out exactly 0 and lse -inf for queries with no visible key, dk and dv exactly 0 for padded
//    keys; a second run gives the same bits (out, lse, dq, dk, dv).
//  The GPU's fused attention against its own attention_fwd_wf / attention_bwd_wf (the cuBLAS path): norm 2e-2.
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

typedef struct {
    int B, T, H, KVH, D;
} Shape;

// One side's device buffers and host results: out, lse, dq, dk, dv
typedef struct {
    float *d[5];
    float *h[5];
} Side;

static void side_run(Backend *be, Side *s, const size_t n[5], const float *garbage, void *q, void *k, void *v,
                     const float *dout, const int32_t *mask, const Shape *sh) {
    for (int i = 0; i < 5; i++) {
        s->d[i] = falloc(be, n[i] ? n[i] : 1);
        be->upload(be, s->d[i], garbage, n[i] * sizeof(float));
    }
    be->attention_fused_fwd(be, s->d[0], s->d[1], q, k, v, mask, sh->B, sh->T, sh->H, sh->KVH, sh->D);
    be->attention_fused_bwd(be, s->d[2], s->d[3], s->d[4], dout, s->d[0], s->d[1], q, k, v, mask, sh->B, sh->T,
                            sh->H, sh->KVH, sh->D);
    for (int i = 0; i < 5; i++) s->h[i] = to_host(be, s->d[i], n[i]);
}

static void side_free(Backend *be, Side *s) {
    for (int i = 0; i < 5; i++) be->free(be, s->d[i]), free(s->h[i]);
}

// lse: finite values close, -inf at the same rows
static void cmp_lse(TestCounts *tc, const float *got, const float *want, size_t n, const char *what) {
    size_t bad_inf = 0, n_inf = 0;
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        int gi = got[i] == -INFINITY, wi = want[i] == -INFINITY;
        n_inf += wi;
        if (gi || wi) {
            bad_inf += gi != wi;
            continue;
        }
        double e = fabs((double)got[i] - want[i]) / (1e-4 + 1e-5 * fabs((double)want[i]));
        if (!(e <= worst)) worst = e;
    }
    T_CHECK(tc, worst <= 1.0 && bad_inf == 0, "%s: %.3g of the tolerance (1e-4 + 1e-5 |lse|); %zu rows -inf on one "
            "side only", what, worst, bad_inf);
    printf("  %-58s %.2f of tol, %zu rows -inf on both\n", what, worst, n_inf);
}

static void fused_case(FmtCtx *c, const Shape *s) {
    Backend *cb = &c->cpu[1], *gb = &c->gpu[1];
    const int B = s->B, T = s->T, H = s->H, KVH = s->KVH, D = s->D;
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KVH * D, nl = (size_t)B * H * T;
    const size_t n[5] = {nq, nl, nq, nk, nk};
    const char *names[5] = {"out", "lse", "dq", "dk", "dv"};
    char shape[64], what[160];
    snprintf(shape, sizeof shape, "B%d T%d H%d/%d D%d", B, T, H, KVH, D);
    float *Q = hrand(c, nq, -2, 2), *K = hrand(c, nk, -2, 2), *V = hrand(c, nk, -1, 1), *DO = hrand(c, nq, -1, 1);
    float *G = hrand(c, nq > nl ? nq : nl, -5, 5);  // garbage: every output is overwritten
    int32_t *mask = fx_attention_mask(B, T);
    void *cq = wf_on(cb, Q, nq), *ck = wf_on(cb, K, nk), *cv = wf_on(cb, V, nk);
    void *gq = wf_on(gb, Q, nq), *gk = wf_on(gb, K, nk), *gv = wf_on(gb, V, nk);
    int32_t *cm = cb->alloc(cb, (size_t)B * T * sizeof(int32_t), "mask");
    int32_t *gm = gb->alloc(gb, (size_t)B * T * sizeof(int32_t), "mask");
    cb->upload(cb, cm, mask, (size_t)B * T * sizeof(int32_t));
    gb->upload(gb, gm, mask, (size_t)B * T * sizeof(int32_t));
    float *cdo = on(cb, DO, nq), *gdo = on(gb, DO, nq);
    Side sc, sg, s2;
    side_run(cb, &sc, n, G, cq, ck, cv, cdo, cm, s);
    side_run(gb, &sg, n, G, gq, gk, gv, gdo, gm, s);
    for (int i = 0; i < 5; i++) {
        snprintf(what, sizeof what, "attention_fused %s %s", names[i], shape);
        if (i == 1) cmp_lse(c->tc, sg.h[1], sc.h[1], nl, what);
        else cmp_norm(c->tc, sg.h[i], sc.h[i], n[i], 2e-2, what);
    }
    // exact zeros and -inf on the device
    size_t bad = 0, no_key = 0;
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < T; i++) {
            int seen = 0;
            for (int j = 0; j <= i; j++) seen |= mask[(size_t)b * T + j] == 1;
            if (seen) continue;
            no_key++;
            for (int h = 0; h < H; h++) {
                bad += sg.h[1][((size_t)b * H + h) * T + i] != -INFINITY;
                for (int d = 0; d < D; d++) bad += sg.h[0][(((size_t)b * T + i) * H + h) * D + d] != 0.0f;
            }
        }
        for (int j = 0; j < T; j++)
            if (mask[(size_t)b * T + j] != 1)
                for (size_t e = 0; e < (size_t)KVH * D; e++) {
                    size_t at = ((size_t)b * T + j) * KVH * D + e;
                    bad += sg.h[3][at] != 0.0f || sg.h[4][at] != 0.0f;
                }
    }
    T_CHECK(c->tc, bad == 0 && (B < 2 || no_key > 0), "attention_fused %s: %zu outputs of queries with no visible key "
            "or gradients of padded keys are not 0 / -inf", shape, bad);
    snprintf(what, sizeof what, "attention_fused %s zeros", shape);
    printf("  %-58s %s (%zu queries see no key; padded keys' dk, dv)\n", what, bad ? "NOT ZERO" : "exact", no_key);
    // a second run on the device: the same bits
    side_run(gb, &s2, n, G, gq, gk, gv, gdo, gm, s);
    for (int i = 0; i < 5; i++) {
        snprintf(what, sizeof what, "attention_fused %s %s, second run", names[i], shape);
        exact(c->tc, s2.h[i], sg.h[i], n[i], what);
    }
    side_free(gb, &s2);
    // against the device's own cuBLAS attention in the same format
    {
        size_t np = (size_t)B * H * T * T;
        float *go = falloc(gb, nq), *gdq = falloc(gb, nq), *gdk = falloc(gb, nk), *gdv = falloc(gb, nk);
        void *gp = gb->weight_alloc(gb, np, "probs");
        gb->attention_fwd_wf(gb, go, gp, gq, gk, gv, gm, B, T, H, KVH, D);
        gb->attention_bwd_wf(gb, gdq, gdk, gdv, gdo, gp, gq, gk, gv, B, T, H, KVH, D);
        float *ref[5] = {to_host(gb, go, nq), NULL, to_host(gb, gdq, nq), to_host(gb, gdk, nk), to_host(gb, gdv, nk)};
        for (int i = 0; i < 5; i++) {
            if (i == 1) continue;
            snprintf(what, sizeof what, "attention_fused %s %s vs attention_*_wf", names[i], shape);
            cmp_norm(c->tc, sg.h[i], ref[i], n[i], 2e-2, what);
            free(ref[i]);
        }
        gb->free(gb, go), gb->free(gb, gdq), gb->free(gb, gdk), gb->free(gb, gdv), gb->free(gb, gp);
    }
    side_free(cb, &sc), side_free(gb, &sg);
    free(Q), free(K), free(V), free(DO), free(G), free(mask);
    void *cf[] = {cq, ck, cv, cm, cdo}, *gf[] = {gq, gk, gv, gm, gdo};
    for (int i = 0; i < 5; i++) cb->free(cb, cf[i]), gb->free(gb, gf[i]);
}

static int run(void) {
    TestCounts tc = {0};
    FmtCtx c;
    if (!fmt_ctx_open(&c, &tc, "test_backend_cuda_attn_fused", 4343)) return TEST_SKIP;
    const Shape shapes[] = {
        {3, 37, 4, 2, 16},   // GQA 2:1; right, left and full padding; partial tiles
        {2, 70, 2, 1, 32},   // two query tiles of the forward, three key tiles
        {1, 130, 2, 2, 64},  // five key tiles, the last one of 2 rows
        {2, 64, 8, 2, 128},  // Llama-shaped heads, GQA 4:1
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) fused_case(&c, &shapes[i]);
    fmt_ctx_close(&c);
    return t_finish(&tc, "test_backend_cuda_attn_fused");
}
#endif

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
#ifndef ACTLORA_HAVE_CUDA
    printf("test_backend_cuda_attn_fused: SKIP: built without the CUDA backend (configure with -DACTLORA_CUDA=ON)\n");
    return TEST_SKIP;
#else
    return run();
#endif
}
