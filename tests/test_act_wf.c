// test_act_wf.c: activations in the weight format (backend.h "activations in the weight format";
// model.act_dtype) on the CPU backend, the reference the CUDA backend is checked against.
//  1. fp32 format: every *_wf op computes exactly what the fp32 op computes (swiglu_fwd / swiglu_bwd,
//     dropout with the same mask, row_norm_sum, gemm, wgemm_lora_multi, wgemm_lora), bit for bit, over
//     row strides wider than the rows (the stride's extra columns are left alone).
//  2. bf16 emulation: the elementwise ops write bf16_ref of the fp32 op's value, exactly; gemm_wf is the
//     double product of the bf16-rounded operands (rel 1e-4 over |ref| + 1e-2 max, as test_lora_fuse); wgemm_lora_wf on a
//     rounded operand is wgemm_lora on the fp32 one, bit for bit; wgemm_lora_multi_wf on the rounded operand
//     writes the rounded wgemm_lora_multi outputs; rmsnorm_fwd_wf writes the rounded rmsnorm_fwd values.
//     rope_fwd_wf writes the rounded rope_fwd values; attention_fwd_wf saves the rounded attention_fwd
//     probabilities and outputs P v of them (rel 1e-4 over |ref| + 1e-2 max); attention_bwd_wf within norm
//     2e-2 of attention_bwd on the same P (bf16 dout and dS); in fp32 all three are the fp32 ops exactly.
//  3. model.act_dtype: "fp32" is off; "bf16" on a fused Llama with bf16 weights is on; an encoder, lora.fuse
//     off or fp32 weights are refused with a message naming the key to change.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/backend.h"
#include "actlora/model.h"
#include "test_fixture.h"

static const char *fmt_name(int bf) { return bf ? "bf16" : "fp32"; }

// a CPU backend (2 threads) in the fp32 format or the bf16 emulation
static void open_cpu(TestCounts *tc, Backend *be, int bf) {
    char msg[256];
    backend_cpu_init(be, 2);
    T_CHECK(tc, backend_set_dtype(be, fmt_name(bf), msg, sizeof msg) == 0, "%s", msg);
}

// rows [M, C] of a strided buffer (stride ld) gathered into a contiguous copy
static float *gather(const float *x, int M, int C, int ld) {
    float *g = malloc((size_t)M * C * sizeof(float));
    for (int m = 0; m < M; m++) memcpy(g + (size_t)m * C, x + (size_t)m * ld, (size_t)C * sizeof(float));
    return g;
}

// the stride's extra columns still hold the sentinel
static void check_pad(TestCounts *tc, const float *x, int M, int C, int ld, const char *what) {
    int bad = 0;
    for (int m = 0; m < M; m++)
        for (int c = C; c < ld; c++) bad += x[(size_t)m * ld + c] != 7.0f;
    T_CHECK(tc, bad == 0, "%s: %d element(s) beyond the row width were written", what, bad);
}

static void round_all(float *x, size_t n, int bf) {
    for (size_t i = 0; bf && i < n; i++) x[i] = bf16_ref(x[i]);
}

static void test_elementwise(TestCounts *tc, int bf) {
    Backend be;
    open_cpu(tc, &be, bf);
    char what[160];
    Rand r = {bf ? 31u : 29u};
    int M = 37, C = 40, ld = 48;
    size_t n = (size_t)M * C, nl = (size_t)M * ld;
    float *gate = malloc(n * 4), *upv = malloc(n * 4), *dh = malloc(n * 4), *x = malloc(nl * 4);
    fill(gate, n, -4, 4, &r), fill(upv, n, -2, 2, &r), fill(dh, n, -1, 1, &r), fill(x, nl, -3, 3, &r);
    round_all(gate, n, bf), round_all(upv, n, bf), round_all(x, nl, bf);  // stored values of the format
    // swiglu_fwd_wf vs swiglu_fwd
    float *h = malloc(nl * 4), *want = malloc(n * 4);
    for (size_t i = 0; i < nl; i++) h[i] = 7.0f;
    be.swiglu_fwd_wf(&be, h, ld, gate, upv, M, C);
    be.swiglu_fwd(&be, want, gate, upv, n);
    round_all(want, n, bf);
    float *g = gather(h, M, C, ld);
    snprintf(what, sizeof what, "%s swiglu_fwd_wf = swiglu_fwd%s", fmt_name(bf), bf ? ", rounded" : "");
    check_exact(tc, g, want, n, what);
    check_pad(tc, h, M, C, ld, what);
    free(g);
    // swiglu_bwd_wf vs swiglu_bwd
    float *dg = malloc(nl * 4), *du = malloc(nl * 4), *wg = malloc(n * 4), *wu = malloc(n * 4);
    for (size_t i = 0; i < nl; i++) dg[i] = du[i] = 7.0f;
    be.swiglu_bwd_wf(&be, dg, du, ld, dh, gate, upv, M, C);
    be.swiglu_bwd(&be, wg, wu, dh, gate, upv, n);
    round_all(wg, n, bf), round_all(wu, n, bf);
    float *g1 = gather(dg, M, C, ld), *g2 = gather(du, M, C, ld);
    snprintf(what, sizeof what, "%s swiglu_bwd_wf dgate = swiglu_bwd", fmt_name(bf));
    check_exact(tc, g1, wg, n, what);
    check_pad(tc, dg, M, C, ld, what);
    snprintf(what, sizeof what, "%s swiglu_bwd_wf dup = swiglu_bwd", fmt_name(bf));
    check_exact(tc, g2, wu, n, what);
    free(g1), free(g2);
    // rmsnorm_fwd_wf (strided out) vs rmsnorm_fwd: the same rstd, the values rounded
    {
        float *xin = gather(x, M, C, ld), *wn = malloc((size_t)C * 4), *o = malloc(nl * 4), *wo = malloc(n * 4);
        float *rs = malloc((size_t)M * 4), *rw = malloc((size_t)M * 4);
        fill(wn, (size_t)C, 0.5, 1.5, &r);
        for (size_t i = 0; i < nl; i++) o[i] = 7.0f;
        be.rmsnorm_fwd_wf(&be, o, ld, rs, xin, wn, M, C, 1e-5f);
        be.rmsnorm_fwd(&be, wo, rw, xin, wn, M, C, 1e-5f);
        round_all(wo, n, bf);
        float *go = gather(o, M, C, ld);
        snprintf(what, sizeof what, "%s rmsnorm_fwd_wf = rmsnorm_fwd%s", fmt_name(bf), bf ? ", rounded" : "");
        check_exact(tc, go, wo, n, what);
        check_pad(tc, o, M, C, ld, what);
        snprintf(what, sizeof what, "%s rmsnorm_fwd_wf rstd = rmsnorm_fwd's", fmt_name(bf));
        check_exact(tc, rs, rw, (size_t)M, what);
        free(xin), free(wn), free(o), free(wo), free(rs), free(rw), free(go);
    }
    // row_norm_sum_wf vs row_norm_sum of the gathered rows, some rows masked
    int32_t *mask = malloc((size_t)M * sizeof(int32_t));
    for (int m = 0; m < M; m++) mask[m] = m % 5 != 2;
    float *xg = gather(x, M, C, ld);
    double a = be.row_norm_sum_wf(&be, x, ld, mask, M, C), b = be.row_norm_sum(&be, xg, mask, M, C);
    T_CHECK(tc, a == b, "%s row_norm_sum_wf %.17g != row_norm_sum %.17g", fmt_name(bf), a, b);
    free(mask), free(xg);
    free(gate), free(upv), free(dh), free(x), free(h), free(want), free(dg), free(du), free(wg), free(wu);
    backend_free(&be);
}

static void test_products(TestCounts *tc, int bf) {
    Backend be;
    open_cpu(tc, &be, bf);
    char what[160];
    Rand r = {bf ? 41u : 43u};
    // gemm_wf: the four transpose cases, each operand strided and in either form
    int M = 19, N = 6, K = 45, pad = 5;
    for (int t = 0; t < 16; t++) {
        int ta = t & 1, tb = (t >> 1) & 1, awf = (t >> 2) & 1, bwf = (t >> 3) & 1;
        int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N, lda = ac + pad, ldb = bc + pad;
        float *A = malloc((size_t)ar * lda * 4), *B = malloc((size_t)br * ldb * 4), *C0 = malloc((size_t)M * N * 4);
        fill(A, (size_t)ar * lda, -1, 1, &r), fill(B, (size_t)br * ldb, -1, 1, &r), fill(C0, (size_t)M * N, -1, 1, &r);
        if (awf) round_all(A, (size_t)ar * lda, bf);  // stored in the format
        if (bwf) round_all(B, (size_t)br * ldb, bf);
        double *ref = dalloc((size_t)M * N);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double acc = 0.5 * C0[(size_t)i * N + j];
                for (int k = 0; k < K; k++) {
                    float av = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                    float bv = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                    if (bf) av = bf16_ref(av), bv = bf16_ref(bv);  // fp32 operands are rounded first
                    acc += 0.75 * (double)av * (double)bv;
                }
                ref[(size_t)i * N + j] = acc;
            }
        float *Cg = malloc((size_t)M * N * 4);
        memcpy(Cg, C0, (size_t)M * N * 4);
        be.gemm_wf(&be, ta, tb, M, N, K, 0.75f, A, lda, awf, B, ldb, bwf, 0.5f, Cg);
        snprintf(what, sizeof what, "%s gemm_wf %c%c, A %s, B %s", fmt_name(bf), ta ? 'T' : 'N', tb ? 'T' : 'N',
                 awf ? "wf" : "fp32", bwf ? "wf" : "fp32");
        check_close_ref(tc, Cg, ref, (size_t)M * N, 1e-4, 1e-2, what, 48);
        if (!bf) {  // fp32: the gemm op on contiguous copies, bit for bit
            float *Ac = gather(A, ar, ac, lda), *Bc = gather(B, br, bc, ldb), *Cw = malloc((size_t)M * N * 4);
            memcpy(Cw, C0, (size_t)M * N * 4);
            be.gemm(&be, ta, tb, M, N, K, 0.75f, Ac, Bc, 0.5f, Cw);
            snprintf(what, sizeof what, "fp32 gemm_wf %c%c = gemm", ta ? 'T' : 'N', tb ? 'T' : 'N');
            check_exact(tc, Cg, Cw, (size_t)M * N, what);
            free(Ac), free(Bc), free(Cw);
        }
        free(A), free(B), free(C0), free(ref), free(Cg);
    }
    // bordered products: W [out, in] with its border, rank R
    int Mr = 13, out = 24, in = 40, R = 4, ldw = in + R;
    size_t nb = (size_t)(out + R) * ldw;
    float *hb = malloc(nb * 4), *X = malloc((size_t)Mr * in * 4), *Xa = malloc((size_t)Mr * R * 4),
          *dY = malloc((size_t)Mr * out * 4);
    fill(hb, nb, -1, 1, &r), fill(X, (size_t)Mr * in, -1, 1, &r), fill(Xa, (size_t)Mr * R, -1, 1, &r);
    fill(dY, (size_t)Mr * out, -1, 1, &r);
    void *wb = be.weight_alloc(&be, nb, "bordered");
    be.weight_upload(&be, wb, hb, nb);
    for (int tw = 1; tw >= 0; tw--)
        for (int with = 1; with >= 0; with--) {
            int k0 = tw ? in : out, n = tw ? out : in, ldx = k0 + R;
            const float *src = tw ? X : dY;
            float *Xw = malloc((size_t)Mr * ldx * 4), *Yw = malloc((size_t)Mr * n * 4), *Yp = malloc((size_t)Mr * n * 4);
            for (int m = 0; m < Mr; m++)
                for (int c = 0; c < ldx; c++) Xw[(size_t)m * ldx + c] = c < k0 ? src[(size_t)m * k0 + c] : 7.0f;
            round_all(Xw, (size_t)Mr * ldx, bf);
            fill(Yw, (size_t)Mr * n, -1, 1, &r);
            memcpy(Yp, Yw, (size_t)Mr * n * 4);
            be.wgemm_lora_wf(&be, tw, Mr, out, in, R, Xw, with ? Xa : NULL, wb, 1.0f, Yw);
            be.wgemm_lora(&be, tw, Mr, out, in, R, src, with ? Xa : NULL, wb, 1.0f, Yp);
            snprintf(what, sizeof what, "%s wgemm_lora_wf %s%s = wgemm_lora", fmt_name(bf), tw ? "forward" : "input grad",
                     with ? " + Xa" : "");
            check_exact(tc, Yw, Yp, (size_t)Mr * n, what);
            int tail_ok = 1;  // Xa landed (rounded) in the operand's last R columns, or they were left alone
            for (int m = 0; m < Mr; m++)
                for (int j = 0; j < R; j++) {
                    float v = Xw[(size_t)m * ldx + k0 + j], w = with ? Xa[(size_t)m * R + j] : 7.0f;
                    tail_ok &= v == (bf ? bf16_ref(w) : w);
                }
            T_CHECK(tc, tail_ok, "%s: the operand's adapter columns", what);
            free(Xw), free(Yw), free(Yp);
        }
    // wgemm_lora_multi_wf on Xw [Mr, in + R] (X rounded to the format) = wgemm_lora_multi on X, rounded
    {
        const void *ws[2] = {wb, wb};
        const float *xas[2] = {Xa, NULL};
        int outs[2] = {out, out}, ldx = in + R;
        float *ym[2], *yw[2], *Xw = malloc((size_t)Mr * ldx * 4);
        for (int m = 0; m < Mr; m++)
            for (int c = 0; c < ldx; c++) Xw[(size_t)m * ldx + c] = c < in ? X[(size_t)m * in + c] : 7.0f;
        round_all(Xw, (size_t)Mr * ldx, bf);
        for (int i = 0; i < 2; i++) ym[i] = malloc((size_t)Mr * out * 4), yw[i] = malloc((size_t)Mr * out * 4);
        be.wgemm_lora_multi(&be, 2, Mr, in, R, X, xas, ws, outs, ym);
        be.wgemm_lora_multi_wf(&be, 2, Mr, in, R, Xw, xas, ws, outs, (void *const *)yw);
        int tail_ok = 1;  // Xa_0 landed (rounded) in Xw's last R columns
        for (int m = 0; m < Mr; m++)
            for (int j = 0; j < R; j++) {
                float v = Xa[(size_t)m * R + j];
                tail_ok &= Xw[(size_t)m * ldx + in + j] == (bf ? bf16_ref(v) : v);
            }
        T_CHECK(tc, tail_ok, "%s wgemm_lora_multi_wf: Xa written into the operand's adapter columns", fmt_name(bf));
        free(Xw);
        for (int i = 0; i < 2; i++) {
            round_all(ym[i], (size_t)Mr * out, bf);
            snprintf(what, sizeof what, "%s wgemm_lora_multi_wf output %d = wgemm_lora_multi%s", fmt_name(bf), i,
                     bf ? ", rounded" : "");
            check_exact(tc, yw[i], ym[i], (size_t)Mr * out, what);
            free(ym[i]), free(yw[i]);
        }
    }
    be.free(&be, wb);
    free(hb), free(X), free(Xa), free(dY);
    backend_free(&be);
}

// rope_fwd_wf and attention in the weight format against the fp32 ops on the same (stored) values
static void test_attention(TestCounts *tc, int bf) {
    Backend be;
    open_cpu(tc, &be, bf);
    char what[160];
    Rand r = {bf ? 53u : 59u};
    int B = 3, T = 37, H = 4, KVH = 2, D = 16;
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KVH * D, np = (size_t)B * H * T * T;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *dout = malloc(nq * 4);
    float *cs = malloc((size_t)T * D / 2 * 4), *sn = malloc((size_t)T * D / 2 * 4);
    fill(q, nq, -2, 2, &r), fill(k, nk, -2, 2, &r), fill(v, nk, -1, 1, &r), fill(dout, nq, -1, 1, &r);
    fill(cs, (size_t)T * D / 2, -1, 1, &r), fill(sn, (size_t)T * D / 2, -1, 1, &r);
    round_all(q, nq, bf), round_all(k, nk, bf), round_all(v, nk, bf);  // stored in the format
    int32_t *mask = malloc((size_t)B * T * sizeof(int32_t));
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) mask[b * T + t] = b == 1 ? t >= 5 : (b == 2 ? t < 30 : 1);  // left / right pad
    // rope_fwd_wf = rope_fwd, rounded
    float *qr = malloc(nq * 4), *qw = malloc(nq * 4);
    memcpy(qr, q, nq * 4), memcpy(qw, q, nq * 4);
    be.rope_fwd(&be, qr, cs, sn, B, T, H, D);
    be.rope_fwd_wf(&be, qw, cs, sn, B, T, H, D);
    round_all(qr, nq, bf);
    snprintf(what, sizeof what, "%s rope_fwd_wf = rope_fwd%s", fmt_name(bf), bf ? ", rounded" : "");
    check_exact(tc, qw, qr, nq, what);
    // forward: probs = the fp32 op's probabilities, rounded; out = P v of the rounded P (double reference)
    float *o32 = malloc(nq * 4), *p32 = malloc(np * 4), *ow = malloc(nq * 4), *pw = malloc(np * 4);
    be.attention_fwd(&be, o32, p32, q, k, v, mask, B, T, H, KVH, D);
    be.attention_fwd_wf(&be, ow, pw, q, k, v, mask, B, T, H, KVH, D);
    round_all(p32, np, bf);
    snprintf(what, sizeof what, "%s attention_fwd_wf probs = attention_fwd's%s", fmt_name(bf), bf ? ", rounded" : "");
    check_exact(tc, pw, p32, np, what);
    if (!bf) {
        check_exact(tc, ow, o32, nq, "fp32 attention_fwd_wf out = attention_fwd's");
    } else {
        double *ref = dalloc(nq);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < T; i++)
                    for (int d = 0; d < D; d++) {
                        double acc = 0.0;
                        for (int j = 0; j < T; j++)
                            acc += (double)pw[(((size_t)b * H + h) * T + i) * T + j] *
                                   (double)v[(((size_t)b * T + j) * KVH + h / (H / KVH)) * D + d];
                        ref[(((size_t)b * T + i) * H + h) * D + d] = acc;
                    }
        check_close_ref(tc, ow, ref, nq, 1e-4, 1e-2, "bf16 attention_fwd_wf out = the rounded P v", 48);
        free(ref);
    }
    // backward: the fp32 op exactly in fp32; in bf16 within 2e-2 of the fp32 op's gradients (norm), from the
    // same stored P
    float *dq = malloc(nq * 4), *dk = malloc(nk * 4), *dv = malloc(nk * 4);
    float *dqw = malloc(nq * 4), *dkw = malloc(nk * 4), *dvw = malloc(nk * 4);
    be.attention_bwd(&be, dq, dk, dv, dout, pw, q, k, v, B, T, H, KVH, D);
    be.attention_bwd_wf(&be, dqw, dkw, dvw, dout, pw, q, k, v, B, T, H, KVH, D);
    const float *got[3] = {dqw, dkw, dvw}, *want[3] = {dq, dk, dv};
    const size_t ns[3] = {nq, nk, nk};
    const char *names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; i++) {
        snprintf(what, sizeof what, "%s attention_bwd_wf %s = attention_bwd's", fmt_name(bf), names[i]);
        if (!bf) {
            check_exact(tc, got[i], want[i], ns[i], what);
            continue;
        }
        double num = 0.0, den = 0.0;
        for (size_t j = 0; j < ns[i]; j++) {
            double d = (double)got[i][j] - want[i][j];
            num += d * d, den += (double)want[i][j] * want[i][j];
        }
        double e = sqrt(num / (den > 0 ? den : 1));
        T_CHECK(tc, e <= 2e-2, "%s: norm %.3g > 2e-2 (bf16 dout and dS)", what, e);
        printf("  %-58s norm %.2e (tol 2e-02)\n", what, e);
    }
    free(q), free(k), free(v), free(dout), free(cs), free(sn), free(mask), free(qr), free(qw);
    free(o32), free(p32), free(ow), free(pw), free(dq), free(dk), free(dv), free(dqw), free(dkw), free(dvw);
    backend_free(&be);
}

// model_act_wf: the switch and its refusals
static void test_act_dtype(TestCounts *tc) {
    Backend be;
    backend_cpu_init(&be, 1);
    char msg[256];
    Error err;
    T_CHECK(tc, model_act_wf(ARCH_LLAMA, &be, "fp32", 1, &err) == 0, "act_dtype fp32 must be off");
    int rc = model_act_wf(ARCH_LLAMA, &be, "bf16", 1, &err);
    T_CHECK(tc, rc < 0 && strstr(err.msg, "model.dtype = \"bf16\"") && strstr(err.msg, "fp32 weights"),
            "bf16 activations with fp32 weights must be refused naming model.dtype: rc %d '%s'", rc, err.msg);
    T_CHECK(tc, backend_set_dtype(&be, "bf16", msg, sizeof msg) == 0, "%s", msg);
    T_CHECK(tc, model_act_wf(ARCH_LLAMA, &be, "bf16", 1, &err) == 1, "act_dtype bf16, fused, bf16 weights: on");
    rc = model_act_wf(ARCH_LLAMA, &be, "bf16", 0, &err);
    T_CHECK(tc, rc < 0 && strstr(err.msg, "lora.fuse = true"), "without lora.fuse: refused: rc %d '%s'", rc, err.msg);
    rc = model_act_wf(ARCH_BERT, &be, "bf16", 1, &err);
    T_CHECK(tc, rc < 0 && strstr(err.msg, "Llama models only") && strstr(err.msg, "BERT"),
            "an encoder: refused: rc %d '%s'", rc, err.msg);
    rc = model_act_wf(ARCH_LLAMA, &be, "fp16", 1, &err);
    T_CHECK(tc, rc < 0 && strstr(err.msg, "expected"), "an unknown value: refused: rc %d '%s'", rc, err.msg);
    backend_free(&be);
}

int main(int argc, char **argv) {
    (void)argc, (void)argv;
    TestCounts tc = {0};
    for (int bf = 0; bf <= 1; bf++) {
        test_elementwise(&tc, bf);
        test_products(&tc, bf);
        test_attention(&tc, bf);
    }
    test_act_dtype(&tc);
    return t_finish(&tc, "test_act_wf");
}
