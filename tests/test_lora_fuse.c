// test_lora_fuse.c: LoRA on the frozen GEMM (lora.fuse; backend.h "LoRA on the frozen GEMM") on the CPU
// backend, in both weight formats (fp32, and the bf16 emulation).
//  1. Ops against double references from the rounded host values: weight_set_lora writes s B and A into
//     the border exactly (W and the unused corner untouched); wgemm_lora forward (X W^T + Xa (sB)^T) and
//     input gradient (X W + Xa A), beta 0 and 0.5, with and without Xa (rel 1e-4 over |ref| + 1e-2 max:
//     fp32 sums of 44 terms around outputs near 0); wgemm_lora_multi is the single calls bit for bit.
//  2. The tiny Llama fixture loaded bordered (llama_load_fused) against the plain model, adapters on
//     layers 1 and 3 (all seven modules, non-zero B): fp32 — loss and logits within 1e-6, every adapter's
//     and the head's gradient within 1e-5 of its largest element, with LoRA dropout 0 and 0.1, and six
//     AdamW steps' losses within 1e-5 (the borders follow every update); bf16 emulation — the same within
//     bf16 tolerances (the fused factors are rounded to bf16 too: logits 2e-2, gradients 3e-2, losses 1e-2).
//     Random weights (weight_randn_2d): the bordered model draws the plain model's W (loss within 1e-6).
//     Activations in the weight format (llama_set_act_wf; model.act_dtype "bf16": xn1, xn2, the MLP's) against the
//     fused model: fp32 bit for bit (loss, logits, gradients, 6 AdamW steps; dropout 0 and 0.1); bf16
//     emulation within bf16 tolerances (logits 2e-2, gradients 5e-2, losses 1e-2).
//     The fused attention (llama_set_att_fused; model.attention "fused") against those activations with the
//     gemm attention, LoRA dropout 0.1: fp32 within 1e-5 (loss, logits, gradients, 6 AdamW steps), bf16
//     emulation within the same bf16 tolerances.
//  3. A model loaded for rank 8 refuses a LoraSet of rank 4; model_load refuses lora.fuse for an encoder.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/backend.h"
#include "actlora/hfmodel.h"
#include "actlora/llama.h"
#include "actlora/lora.h"
#include "actlora/model.h"
#include "actlora/optim.h"
#include "actlora/rng.h"
#include "test_fixture.h"

static const char *fmt_name(int bf) { return bf ? "bf16" : "fp32"; }
static float rb(int bf, float x) { return bf ? bf16_ref(x) : x; }

static float *up(Backend *be, const float *h, size_t n) {
    float *d = falloc(be, n);
    be->upload(be, d, h, n * sizeof(float));
    return d;
}

// ------------------------------------------------------------------------------ 1. ops

static void test_ops(TestCounts *tc, int bf) {
    Backend be;
    backend_cpu_init(&be, 1);
    char msg[256];
    T_CHECK(tc, backend_set_dtype(&be, fmt_name(bf), msg, sizeof msg) == 0, "%s", msg);
    Rand r = {bf ? 11u : 7u};
    int M = 13, out = 24, in = 40, R = 4, ld = in + R;
    float s = 0.75f;
    size_t nb = (size_t)(out + R) * ld;
    float *W = malloc((size_t)out * in * 4), *A = malloc((size_t)R * in * 4), *Bm = malloc((size_t)out * R * 4),
          *X = malloc((size_t)M * in * 4), *Xa = malloc((size_t)M * R * 4), *dY = malloc((size_t)M * out * 4),
          *Y0 = malloc((size_t)M * (in > out ? in : out) * 4), *hb = calloc(nb, 4);
    fill(W, (size_t)out * in, -1, 1, &r), fill(A, (size_t)R * in, -1, 1, &r), fill(Bm, (size_t)out * R, -1, 1, &r);
    fill(X, (size_t)M * in, -1, 1, &r), fill(Xa, (size_t)M * R, -2, 2, &r), fill(dY, (size_t)M * out, -1, 1, &r);
    fill(Y0, (size_t)M * (in > out ? in : out), -1, 1, &r);
    for (int i = 0; i < out; i++) memcpy(hb + (size_t)i * ld, W + (size_t)i * in, (size_t)in * 4);
    void *wb = be.weight_alloc(&be, nb, "bordered");
    be.weight_upload(&be, wb, hb, nb);
    float *dA = up(&be, A, (size_t)R * in), *dB = up(&be, Bm, (size_t)out * R);
    be.weight_set_lora(&be, wb, out, in, R, dA, dB, s);
    // the border, exactly; W and the corner untouched
    float *got = malloc(nb * 4), *want = malloc(nb * 4);
    be.download(&be, got, wb, nb * 4);
    for (int i = 0; i < out + R; i++)
        for (int c = 0; c < ld; c++) {
            float v = 0.0f;
            if (i < out && c < in) v = rb(bf, W[(size_t)i * in + c]);
            else if (i < out) v = rb(bf, s * Bm[(size_t)i * R + (c - in)]);
            else if (c < in) v = rb(bf, A[(size_t)(i - out) * in + c]);
            want[(size_t)i * ld + c] = v;
        }
    char what[128];
    snprintf(what, sizeof what, "%s weight_set_lora: W | sB over A | 0", fmt_name(bf));
    check_exact(tc, got, want, nb, what);
    // products against double references of the rounded values (want holds the rounded bordered matrix)
    for (int tw = 1; tw >= 0; tw--)
        for (int with = 1; with >= 0; with--)
            for (int bi = 0; bi < 2; bi++) {
                float beta = bi ? 0.5f : 0.0f;
                int k0 = tw ? in : out, n = tw ? out : in;
                const float *Xin = tw ? X : dY;
                double *ref = dalloc((size_t)M * n);
                for (int m = 0; m < M; m++)
                    for (int j = 0; j < n; j++) {
                        double acc = beta * (double)Y0[(size_t)m * n + j];
                        for (int c = 0; c < k0; c++) {
                            double w = tw ? want[(size_t)j * ld + c] : want[(size_t)c * ld + j];
                            acc += (double)rb(bf, Xin[(size_t)m * k0 + c]) * w;
                        }
                        for (int q = 0; with && q < R; q++) {
                            double w = tw ? want[(size_t)j * ld + in + q] : want[(size_t)(out + q) * ld + j];
                            acc += (double)rb(bf, Xa[(size_t)m * R + q]) * w;
                        }
                        ref[(size_t)m * n + j] = acc;
                    }
                float *dX = up(&be, Xin, (size_t)M * k0), *dXa = up(&be, Xa, (size_t)M * R);
                float *dYo = up(&be, Y0, (size_t)M * n);
                if (!bi) fill_nan(dYo, (size_t)M * n);  // beta 0 never reads Y (CPU memory: the host's)
                be.wgemm_lora(&be, tw, M, out, in, R, dX, with ? dXa : NULL, wb, beta, dYo);
                snprintf(what, sizeof what, "%s wgemm_lora %s%s beta %.1f", fmt_name(bf),
                         tw ? "forward X W^T" : "input grad X W", with ? " + Xa" : "", (double)beta);
                check_close_ref(tc, dYo, ref, (size_t)M * n, 1e-4, 1e-2, what, 48);
                free(ref);
                be.free(&be, dX), be.free(&be, dXa), be.free(&be, dYo);
            }
    // wgemm_lora_multi = the single calls, bit for bit (three weights: the bordered one, twice, and a
    // second one of another width without an adapter)
    {
        int outs[3] = {out, out, 8};
        size_t nb2 = (size_t)(8 + R) * ld;
        float *h2 = calloc(nb2, 4);
        fill(h2, (size_t)8 * ld, -1, 1, &r);
        void *w2 = be.weight_alloc(&be, nb2, "bordered 2");
        be.weight_upload(&be, w2, h2, nb2);
        const void *ws[3] = {wb, wb, w2};
        float *dX = up(&be, X, (size_t)M * in), *dXa = up(&be, Xa, (size_t)M * R), *dXb = up(&be, dY, (size_t)M * R);
        const float *xas[3] = {dXa, dXb, NULL};
        float *ym[3], *ys[3];
        for (int i = 0; i < 3; i++) ym[i] = falloc(&be, (size_t)M * outs[i]), ys[i] = falloc(&be, (size_t)M * outs[i]);
        be.wgemm_lora_multi(&be, 3, M, in, R, dX, xas, ws, outs, ym);
        for (int i = 0; i < 3; i++) be.wgemm_lora(&be, 1, M, outs[i], in, R, dX, xas[i], ws[i], 0.0f, ys[i]);
        for (int i = 0; i < 3; i++) {
            snprintf(what, sizeof what, "%s wgemm_lora_multi output %d = wgemm_lora", fmt_name(bf), i);
            check_exact(tc, ym[i], ys[i], (size_t)M * outs[i], what);
            be.free(&be, ym[i]), be.free(&be, ys[i]);
        }
        be.free(&be, dX), be.free(&be, dXa), be.free(&be, dXb), be.free(&be, w2);
        free(h2);
    }
    be.free(&be, wb), be.free(&be, dA), be.free(&be, dB);
    free(W), free(A), free(Bm), free(X), free(Xa), free(dY), free(Y0), free(hb), free(got), free(want);
    backend_free(&be);
}

// ------------------------------------------------------------------------------ 2. the model

typedef struct {
    Backend be;
    ModelConfig mc;
    Llama m;
    LoraSet ls;
    Batch b;
    float *adam_m, *adam_v;
} Side;

// act_wf: 0 fp32 activations, 1 in the weight format, 2 in the weight format with the fused attention
static void side_init(Side *s, const char *dir, int bf, int fuse_r, int act_wf, double dropout) {
    Error err;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (hfconfig_load(&s->mc, path, &err) != 0) die("%s", err.msg);
    backend_cpu_init(&s->be, 1);
    char msg[256];
    if (backend_set_dtype(&s->be, fmt_name(bf), msg, sizeof msg) != 0) die("%s", msg);
    llama_load_fused(&s->m, &s->be, dir, &s->mc, 3, 0, 0, fuse_r, NULL);
    llama_set_act_wf(&s->m, act_wf != 0);
    llama_set_att_fused(&s->m, act_wf == 2);  // 2: and the fused attention (model.attention = "fused")
    LoraShapes shapes;
    llama_lora_shapes(&s->mc, &shapes);
    int layers[] = {1, 3}, mods[] = {LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN};
    lora_init(&s->ls, &s->be, &LORA_NAMING_LLAMA, &shapes, s->mc.num_hidden_layers, layers, 2, mods, 7, 8, 16.0, 0,
              dropout, 3, s->mc.hidden_size);
    llama_init_head(&s->m, &s->be, dir, 0, &s->ls, 7);
    lora_init_weights(&s->ls, &s->be, 7);
    fx_nonzero_b(&s->ls, s->ls.params);
    llama_alloc_acts(&s->m, &s->be, &s->ls, 4, 12);
    batch_init(&s->b, 4, 12);
    data_synthetic_batch(&s->b, s->mc.vocab_size, s->mc.pad_token_id, 3, 99, 0, 0, 0);
    s->adam_m = xcalloc(s->ls.numel, sizeof(float), "adam m");
    s->adam_v = xcalloc(s->ls.numel, sizeof(float), "adam v");
}

static double side_step(Side *s, int st) {
    uint64_t key = 0xABCDEF + (uint64_t)st;
    s->be.zero(&s->be, s->ls.grads, s->ls.numel * sizeof(float));
    double loss = llama_forward(&s->m, &s->be, &s->ls, &s->b, 1, 1.0f / (float)s->b.B, key, NULL) / s->b.B;
    llama_backward(&s->m, &s->be, &s->ls, &s->b, key);
    return loss;
}

static void side_adamw(Side *s, int st) {
    s->be.adamw(&s->be, s->ls.params, s->ls.grads, s->adam_m, s->adam_v, s->ls.numel, 2e-3f, 0.9f, 0.999f, 1e-8f,
                0.0f, st + 1);
}

static void side_free(Side *s) {
    batch_free(&s->b);
    llama_free(&s->m, &s->be);
    lora_free(&s->ls, &s->be);
    free(s->adam_m), free(s->adam_v);
    backend_free(&s->be);
}

// Side f against side p (both already initialised): the first step's loss and logits within tl of p's
// (relative; of the largest logit), every adapter's and the head's gradient within tg of its largest
// element, and 7 losses around 6 AdamW steps within ts relative. Tolerances 0: bit for bit.
static void compare_sides(TestCounts *tc, Side *p, Side *f, double tl, double tg, double ts, const char *tag) {
    char what[200];
    double lp = side_step(p, 0), lf = side_step(f, 0);
    snprintf(what, sizeof what, "%s: loss %.9g vs %.9g", tag, lf, lp);
    T_CHECK(tc, fabs(lf - lp) <= tl * fabs(lp), "%s (tol %.0e)", what, tl);
    printf("  %s\n", what);
    double mxl = 0, dl = 0;
    for (int i = 0; i < p->b.B * 3; i++)
        mxl = fmax(mxl, fabs(p->m.logits[i])), dl = fmax(dl, fabs((double)f->m.logits[i] - p->m.logits[i]));
    T_CHECK(tc, dl <= tl * mxl, "%s: logits differ by %.3g > %.0e of the largest logit %.3g", tag, dl, tl, mxl);
    printf("  %s: logits, max |diff| %.2e of the largest (tol %.0e)\n", tag, dl / (mxl > 0 ? mxl : 1), tl);
    double worst = 0.0;
    char name[160];
    size_t off, numel;
    for (int t = 0; fx_param_tensor(&p->ls, t, name, sizeof name, &off, &numel); t++) {
        double mx = 0, d = 0;
        for (size_t j = off; j < off + numel; j++) {
            mx = fmax(mx, fabs((double)p->ls.grads[j]));
            d = fmax(d, fabs((double)f->ls.grads[j] - (double)p->ls.grads[j]));
        }
        double e = d / (mx > 0 ? mx : 1);
        T_CHECK(tc, e <= tg, "%s: gradient %s differs by %.3g of its largest element (tol %.0e)", tag, name, e, tg);
        worst = fmax(worst, e);
    }
    printf("  %s: gradients, worst tensor %.2e of its largest element (tol %.0e)\n", tag, worst, tg);
    // AdamW steps: a fused model must see every update (its borders are rewritten by each forward)
    double wl = 0.0;
    for (int st = 0; st < 6; st++) {
        if (st > 0) lp = side_step(p, st), lf = side_step(f, st);
        side_adamw(p, st), side_adamw(f, st);
        wl = fmax(wl, fabs(lf - lp) / fabs(lp));
    }
    lp = side_step(p, 6), lf = side_step(f, 6);
    wl = fmax(wl, fabs(lf - lp) / fabs(lp));
    T_CHECK(tc, wl <= ts, "%s: losses over 6 AdamW steps differ by %.3g relative (tol %.0e)", tag, wl, ts);
    printf("  %s: 7 losses around 6 AdamW steps, worst rel diff %.2e (tol %.0e)\n", tag, wl, ts);
}

// Side b (fuse_r, act_wf) against side a on the tiny Llama, with compare_sides's tolerances (loss / logits,
// gradients, AdamW losses) and the tag "<format> dropout <p>, <what>"
static void test_pair(TestCounts *tc, const char *dir, int bf, double dropout, int fuse_a, int wf_a, int fuse_b,
                      int wf_b, double tl, double tg, double ts, const char *what) {
    Side a, b;
    side_init(&a, dir, bf, fuse_a, wf_a, dropout);
    side_init(&b, dir, bf, fuse_b, wf_b, dropout);
    char tag[96];
    snprintf(tag, sizeof tag, "%s dropout %.1f, %s", fmt_name(bf), dropout, what);
    compare_sides(tc, &a, &b, tl, tg, ts, tag);
    side_free(&a);
    side_free(&b);
}

// fused against plain
static void test_model(TestCounts *tc, const char *dir, int bf, double dropout) {
    test_pair(tc, dir, bf, dropout, 0, 0, 8, 0, bf ? 2e-2 : 1e-6, bf ? 3e-2 : 1e-5, bf ? 1e-2 : 1e-5,
              "fused vs plain");
}

// Activations in the weight format (model.act_dtype "bf16") against the fused model: in the fp32 format
// bit for bit (the same products and formulas); in the bf16 emulation within bf16 tolerances (xn1, xn2, q,
// k, v, P, gate, up, h, dgate, dup, dS and the adapters' fp32 operands of those products are rounded to
// bf16 on top of the fused model's roundings).
static void test_act_wf(TestCounts *tc, const char *dir, int bf, double dropout) {
    test_pair(tc, dir, bf, dropout, 8, 0, 8, 1, bf ? 2e-2 : 0.0, bf ? 5e-2 : 0.0, bf ? 1e-2 : 0.0,
              "activations in the weight format vs fused");
}

// The fused attention (model.attention "fused": lse instead of the probabilities, which backward recomputes)
// against the activations in the weight format with the batched-GEMM attention: fp32 within 1e-5 (another
// order of the same sums), bf16 emulation within bf16 tolerances (P, dout and dS rounded at other points).
static void test_att_fused(TestCounts *tc, const char *dir, int bf, double dropout) {
    test_pair(tc, dir, bf, dropout, 8, 1, 8, 2, bf ? 2e-2 : 1e-5, bf ? 5e-2 : 1e-5, bf ? 1e-2 : 1e-5,
              "fused attention vs gemm attention");
}

// Random weights (model.init = "random"): the bordered model holds the plain model's draw, so the two
// compute the same (fp32: the first loss within 1e-6, no adapters involved beyond their zero B).
static void test_random_init(TestCounts *tc, const char *dir) {
    Error err;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    ModelConfig mc;
    if (hfconfig_load(&mc, path, &err) != 0) die("%s", err.msg);
    double loss[2];
    for (int fused = 0; fused <= 1; fused++) {
        Backend be;
        backend_cpu_init(&be, 1);
        Llama m;
        llama_load_fused(&m, &be, "/nonexistent", &mc, 3, 1, 42, fused ? 8 : 0, NULL);  // random: no directory read
        LoraShapes shapes;
        llama_lora_shapes(&mc, &shapes);
        int layers[] = {2}, mods[] = {LORA_Q, LORA_DOWN};
        LoraSet ls;
        lora_init(&ls, &be, &LORA_NAMING_LLAMA, &shapes, mc.num_hidden_layers, layers, 1, mods, 2, 8, 16.0, 0, 0.0, 3,
                  mc.hidden_size);
        llama_init_head(&m, &be, "/nonexistent", 1, &ls, 7);
        lora_init_weights(&ls, &be, 7);
        llama_alloc_acts(&m, &be, &ls, 2, 10);
        Batch b;
        batch_init(&b, 2, 10);
        data_synthetic_batch(&b, mc.vocab_size, mc.pad_token_id, 3, 99, 0, 0, 0);
        loss[fused] = llama_forward(&m, &be, &ls, &b, 0, 0.0f, 0, NULL);
        batch_free(&b);
        llama_free(&m, &be);
        lora_free(&ls, &be);
        backend_free(&be);
    }
    T_CHECK(tc, fabs(loss[1] - loss[0]) <= 1e-6 * fabs(loss[0]), "random weights: bordered loss %.9g vs plain %.9g",
            loss[1], loss[0]);
    printf("  random weights: bordered loss %.9g, plain %.9g\n", loss[1], loss[0]);
}

// ------------------------------------------------------------------------------ 3. refusals

static const char *g_dir, *g_enc_dir;

static void rank_mismatch(void *ctx) {
    (void)ctx;
    Side f;
    side_init(&f, g_dir, 0, 4, 0, 0.0);  // loaded for rank 4, the set has rank 8
    side_step(&f, 0);
}

static void fuse_encoder(void *ctx) {
    (void)ctx;
    Error err;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", g_enc_dir);
    ModelConfig mc;
    if (hfconfig_load(&mc, path, &err) != 0) die("%s", err.msg);
    Backend be;
    backend_cpu_init(&be, 1);
    Model m;
    model_load(&m, &be, g_enc_dir, &mc, 2, 0, 0, 8, NULL);
}

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : ".";
    char dir[4096], enc[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tiny-llama", root);
    snprintf(enc, sizeof enc, "%s/tests/fixtures/tiny-bert", root);
    g_dir = dir, g_enc_dir = enc;
    TestCounts tc = {0};
    for (int bf = 0; bf <= 1; bf++) test_ops(&tc, bf);
    for (int bf = 0; bf <= 1; bf++) {
        test_model(&tc, dir, bf, 0.0);
        test_model(&tc, dir, bf, 0.1);
        test_act_wf(&tc, dir, bf, 0.0);
        test_act_wf(&tc, dir, bf, 0.1);
        test_att_fused(&tc, dir, bf, 0.1);
    }
    test_random_init(&tc, dir);
    expect_death(&tc, rank_mismatch, NULL, "was loaded for fused adapters of rank 4", "LoRA rank != the fused rank");
    expect_death(&tc, fuse_encoder, NULL, "lora.fuse = true is implemented for Llama models only",
                 "lora.fuse on an encoder");
    return t_finish(&tc, "test_lora_fuse");
}
