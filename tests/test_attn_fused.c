// test_attn_fused.c: the CPU backend's fused attention (attention_fused_fwd / attention_fused_bwd; backend.h
// "fused attention"), the reference of the CUDA kernels, against the attention it replaces.
//  1. fp32 format, against attention_fwd / attention_bwd (the attention test_llama_parity checks against HF):
//     out rel 1e-5 of the largest, dq, dk, dv norm 1e-5; lse against a double-precision log-sum-exp of the
//     scaled visible scores (abs 1e-5); exactly -inf and out exactly 0 for queries with no visible key; dk, dv
//     exactly 0 for padded keys; dq, dk, dv overwritten (they start as garbage); a second run on one thread
//     instead of two gives the same bits (out, lse, dq, dk, dv).
//     Shapes: B3 T37 H4/2 D16 (right, left and full padding), B2 T70 H2/1 D32, B1 T9 H3/3 D6.
//  2. bf16 emulation against attention_fwd_wf / attention_bwd_wf on the same bf16 inputs (both round P, dout
//     and dS to bf16, at different points): out, dq, dk, dv norm 2e-2; the same exact zeros and -inf.
//  3. model_att_fused: "gemm" is off, "fused" on with activations in the weight format; refused for an
//     encoder, without model.act_dtype = "bf16", on CUDA for a head dimension its kernels lack (96; the CPU
//     takes it), and for an unknown name (messages name the keys).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/backend.h"
#include "actlora/model.h"
#include "test_fixture.h"

typedef struct {
    int B, T, H, KVH, D;
} Shape;

static double norm_err(const float *got, const float *want, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d, den += (double)want[i] * want[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static void run_case(TestCounts *tc, int bf, const Shape *s, unsigned seed) {
    Backend be;
    backend_cpu_init(&be, 2);
    char msg[256], what[200], shape[64];
    if (backend_set_dtype(&be, bf ? "bf16" : "fp32", msg, sizeof msg) != 0) die("%s", msg);
    const int B = s->B, T = s->T, H = s->H, KVH = s->KVH, D = s->D;
    snprintf(shape, sizeof shape, "%s B%d T%d H%d/%d D%d", bf ? "bf16" : "fp32", B, T, H, KVH, D);
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KVH * D, np = (size_t)B * H * T * T,
           nl = (size_t)B * H * T;
    Rand r = {seed};
    float *q = xmalloc(nq * 4, "q"), *k = xmalloc(nk * 4, "k"), *v = xmalloc(nk * 4, "v"), *dout = xmalloc(nq * 4, "do");
    fill(q, nq, -2, 2, &r), fill(k, nk, -2, 2, &r), fill(v, nk, -1, 1, &r), fill(dout, nq, -1, 1, &r);
    if (bf)  // stored in the format
        for (size_t i = 0; i < nq; i++) q[i] = bf16_ref(q[i]);
    if (bf)
        for (size_t i = 0; i < nk; i++) k[i] = bf16_ref(k[i]), v[i] = bf16_ref(v[i]);
    int32_t *mask = fx_attention_mask(B, T);
    float *o_ref = xmalloc(nq * 4, "out"), *p_ref = xmalloc(np * 4, "probs"), *o = xmalloc(nq * 4, "out"),
          *lse = xmalloc(nl * 4, "lse");
    float *dq_ref = xmalloc(nq * 4, "dq"), *dk_ref = xmalloc(nk * 4, "dk"), *dv_ref = xmalloc(nk * 4, "dv");
    float *dq = xmalloc(nq * 4, "dq"), *dk = xmalloc(nk * 4, "dk"), *dv = xmalloc(nk * 4, "dv");
    fill(dq, nq, -9, 9, &r), fill(dk, nk, -9, 9, &r), fill(dv, nk, -9, 9, &r);  // garbage: overwritten
    fill(o, nq, -9, 9, &r), fill(lse, nl, -9, 9, &r);
    be.attention_fwd_wf(&be, o_ref, p_ref, q, k, v, mask, B, T, H, KVH, D);
    be.attention_bwd_wf(&be, dq_ref, dk_ref, dv_ref, dout, p_ref, q, k, v, B, T, H, KVH, D);
    be.attention_fused_fwd(&be, o, lse, q, k, v, mask, B, T, H, KVH, D);
    be.attention_fused_bwd(&be, dq, dk, dv, dout, o, lse, q, k, v, mask, B, T, H, KVH, D);

    double tol = bf ? 2e-2 : 1e-5;
    snprintf(what, sizeof what, "%s attention_fused_fwd out vs attention_fwd%s", shape, bf ? "_wf" : "");
    double e = t_rel_to_max(o, o_ref, nq);
    T_CHECK(tc, e <= tol, "%s: %.3g of the largest (tol %.0e)", what, e, tol);
    printf("  %-70s %.2e (tol %.0e)\n", what, e, tol);
    const float *got[3] = {dq, dk, dv}, *want[3] = {dq_ref, dk_ref, dv_ref};
    const size_t ns[3] = {nq, nk, nk};
    const char *names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; i++) {
        snprintf(what, sizeof what, "%s attention_fused_bwd %s vs attention_bwd%s", shape, names[i], bf ? "_wf" : "");
        e = norm_err(got[i], want[i], ns[i]);
        T_CHECK(tc, e <= tol, "%s: norm %.3g (tol %.0e)", what, e, tol);
        printf("  %-70s norm %.2e (tol %.0e)\n", what, e, tol);
    }
    // lse against a double log-sum-exp of the scaled visible scores; -inf and out 0 where no key is visible
    double worst = 0.0;
    size_t bad_inf = 0, bad_zero = 0, no_key = 0;
    double scale = 1.0 / sqrt((double)D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                int g = h / (H / KVH);
                double m = -INFINITY, sc[T];
                for (int j = 0; j <= i; j++) {
                    sc[j] = -INFINITY;
                    if (mask[(size_t)b * T + j] != 1) continue;
                    double acc = 0.0;
                    for (int d = 0; d < D; d++)
                        acc += (double)q[(((size_t)b * T + i) * H + h) * D + d] * k[(((size_t)b * T + j) * KVH + g) * D + d];
                    sc[j] = acc * scale;
                    m = fmax(m, sc[j]);
                }
                float got_l = lse[((size_t)b * H + h) * T + i];
                if (m == -INFINITY) {
                    no_key++;
                    bad_inf += got_l != -INFINITY;
                    for (int d = 0; d < D; d++) bad_zero += o[(((size_t)b * T + i) * H + h) * D + d] != 0.0f;
                    continue;
                }
                double l = 0.0;
                for (int j = 0; j <= i; j++)
                    if (sc[j] != -INFINITY) l += exp(sc[j] - m);
                worst = fmax(worst, fabs((double)got_l - (m + log(l))));
            }
    snprintf(what, sizeof what, "%s attention_fused_fwd lse vs double log-sum-exp", shape);
    T_CHECK(tc, worst <= 1e-5, "%s: off by %.3g (tol 1e-5)", what, worst);
    printf("  %-70s %.2e (tol 1e-05)\n", what, worst);
    T_CHECK(tc, bad_inf == 0 && bad_zero == 0 && (B < 2 || no_key > 0),
            "%s: of %zu queries with no visible key, %zu lse not -inf and %zu outputs not 0", shape, no_key, bad_inf,
            bad_zero);
    size_t bad_kv = 0;
    for (int b = 0; b < B; b++)
        for (int j = 0; j < T; j++)
            if (mask[(size_t)b * T + j] != 1)
                for (size_t c = 0; c < (size_t)KVH * D; c++) {
                    size_t at = ((size_t)b * T + j) * KVH * D + c;
                    bad_kv += dk[at] != 0.0f || dv[at] != 0.0f;
                }
    T_CHECK(tc, bad_kv == 0, "%s: %zu dk / dv entries of padded keys are not 0", shape, bad_kv);
    snprintf(what, sizeof what, "%s zeros and -inf", shape);
    printf("  %-70s exact (%zu queries see no key)\n", what, no_key);
    // a second run on one thread instead of two: the same bits (fixed summation orders)
    Backend be1;
    backend_cpu_init(&be1, 1);
    if (backend_set_dtype(&be1, bf ? "bf16" : "fp32", msg, sizeof msg) != 0) die("%s", msg);
    float *o2 = xmalloc(nq * 4, "out"), *l2 = xmalloc(nl * 4, "lse"), *dq2 = xmalloc(nq * 4, "dq");
    float *dk2 = xmalloc(nk * 4, "dk"), *dv2 = xmalloc(nk * 4, "dv");
    be1.attention_fused_fwd(&be1, o2, l2, q, k, v, mask, B, T, H, KVH, D);
    be1.attention_fused_bwd(&be1, dq2, dk2, dv2, dout, o2, l2, q, k, v, mask, B, T, H, KVH, D);
    backend_free(&be1);
    snprintf(what, sizeof what, "%s fused, 1 thread vs 2: out", shape);
    check_exact(tc, o2, o, nq, what);
    snprintf(what, sizeof what, "%s fused, 1 thread vs 2: dq", shape);
    check_exact(tc, dq2, dq, nq, what);
    snprintf(what, sizeof what, "%s fused, 1 thread vs 2: dk", shape);
    check_exact(tc, dk2, dk, nk, what);
    snprintf(what, sizeof what, "%s fused, 1 thread vs 2: dv", shape);
    check_exact(tc, dv2, dv, nk, what);
    snprintf(what, sizeof what, "%s fused, 1 thread vs 2: lse", shape);
    check_exact(tc, l2, lse, nl, what);
    free(o2), free(l2), free(dq2), free(dk2), free(dv2);
    free(q), free(k), free(v), free(dout), free(mask), free(o_ref), free(p_ref), free(o), free(lse);
    free(dq_ref), free(dk_ref), free(dv_ref), free(dq), free(dk), free(dv);
    backend_free(&be);
}

static void test_switch(TestCounts *tc) {
    Error err;
    Backend cpu, cuda;  // only the name is read: the CUDA kernels exist for some head dimensions only
    memset(&cpu, 0, sizeof cpu), memset(&cuda, 0, sizeof cuda);
    cpu.name = "cpu", cuda.name = "cuda";
    T_CHECK(tc, model_att_fused(ARCH_LLAMA, &cuda, 1, 128, "gemm", &err) == 0, "model.attention gemm must be off");
    T_CHECK(tc, model_att_fused(ARCH_LLAMA, &cuda, 1, 128, "fused", &err) == 1, "fused, bf16 activations, D 128: on");
    T_CHECK(tc, model_att_fused(ARCH_LLAMA, &cpu, 1, 96, "fused", &err) == 1, "fused on the CPU, D 96: on");
    T_CHECK(tc, model_att_fused(ARCH_LLAMA, &cuda, 1, 96, "fused", &err) < 0 && strstr(err.msg, "96") &&
                strstr(err.msg, "model.attention = \"gemm\""),
            "fused on CUDA with head dimension 96 must be refused at start, naming it (got: %s)", err.msg);
    T_CHECK(tc, model_att_fused(ARCH_LLAMA, &cuda, 0, 128, "fused", &err) < 0 &&
                strstr(err.msg, "model.act_dtype = \"bf16\""),
            "fused without bf16 activations must be refused naming model.act_dtype (got: %s)", err.msg);
    T_CHECK(tc, model_att_fused(ARCH_BERT, &cuda, 1, 64, "fused", &err) < 0 && strstr(err.msg, "Llama models only"),
            "fused on an encoder must be refused (got: %s)", err.msg);
    T_CHECK(tc, model_att_fused(ARCH_LLAMA, &cuda, 1, 128, "flash", &err) < 0 &&
                strstr(err.msg, "\"gemm\" or \"fused\""),
            "an unknown model.attention must be refused (got: %s)", err.msg);
    printf("  model_att_fused: gemm off, fused on; refusals name model.act_dtype, the CUDA head dimension, the "
           "architecture, the values\n");
}

int main(void) {
    TestCounts tc = {0};
    const Shape shapes[] = {{3, 37, 4, 2, 16}, {2, 70, 2, 1, 32}, {1, 9, 3, 3, 6}};
    for (int bf = 0; bf <= 1; bf++)
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) run_case(&tc, bf, &shapes[i], 71u + 13u * (unsigned)i + 7u * (unsigned)bf);
    test_switch(&tc);
    return t_finish(&tc, "test_attn_fused");
}
