// test_llama_parity.c: the Llama + LoRA forward, backward and AdamW trajectory against fixtures
// written by HF transformers + PEFT (tools/gen_reference.py; tests/fixtures/README.md says how
// to regenerate them). Covers a classification head (cross-entropy) and a regression head (MSE,
// rsLoRA), LoRA on non-contiguous layers and several modules with non-zero B, a padded batch of
// mixed lengths, and 10 AdamW steps with warmup, a decaying schedule and clipping.
//
// Tolerances (fp32 on both sides, different summation orders): logits and loss 1e-5 relative,
// gradients 1e-4 relative to the largest element of the tensor, trajectory losses 1e-4 of the
// largest (initial) loss,
// parameters after 10 steps 1e-4 relative to the tensor's largest element.
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/backend.h"
#include "actlora/hfmodel.h"
#include "actlora/llama.h"
#include "actlora/lora.h"
#include "actlora/optim.h"
#include "actlora/safetensors.h"
#include "test_fixture.h"

static double llama_step(void *model, Backend *be, LoraSet *ls, const Batch *b) {
    double loss = llama_forward(model, be, ls, b, 1, 1.0f / (float)b->B, 0, NULL) / b->B;
    llama_backward(model, be, ls, b, 0);
    return loss;
}

static void run_case(TestCounts *tc, const char *root, const char *fixture) {
    char path[4096], dir[2048];
    SafeTensors st;
    cJSON *meta;
    ModelConfig mc;
    if (fx_open(tc, root, fixture, &st, &meta, dir, path, &mc) != 0) return;
    int K = json_int(meta, "num_labels");
    Backend be;
    backend_cpu_init(&be, 0);
    Llama model;
    llama_load(&model, &be, dir, &mc, K, 0, 0);

    // adapters exactly as PEFT was configured
    LoraShapes shapes;
    llama_lora_shapes(&mc, &shapes);
    LoraSet ls;
    fx_peft_lora(tc, &ls, &be, &LORA_NAMING_LLAMA, &shapes, mc.num_hidden_layers, meta, K, mc.hidden_size, fixture);
    // initial values of every trainable tensor from the fixture; every fixture tensor must map
    int n_init = fx_load_init(tc, &st, &ls, &be, fixture);
    T_CHECK(tc, n_init == 2 * ls.n + 1, "%s: %d init tensors, expected %d (2 per adapter + head)", fixture, n_init,
            2 * ls.n + 1);

    Batch b;
    fx_batch(&b, &st, path, K, 0);
    int B = b.B, T = b.T;
    llama_alloc_acts(&model, &be, &ls, B, T);
    char what[256];

    // ---- calibration statistics of the base model (no adapters) vs HF forward hooks
    {
        LoraSet none;
        lora_init(&none, &be, &LORA_NAMING_LLAMA, &shapes, mc.num_hidden_layers, NULL, 0, NULL, 0, 1, 1.0, 0, 0.0, K, mc.hidden_size);
        memcpy(none.params + none.head_off, ls.params + ls.head_off, (size_t)K * mc.hidden_size * sizeof(float));
        Llama base;
        llama_load(&base, &be, dir, &mc, K, 0, 0);
        llama_alloc_acts(&base, &be, &none, B, T);
        CalibStats cs;
        calib_stats_init(&cs, mc.num_hidden_layers);
        llama_forward(&base, &be, &none, &b, 0, 0.0f, 0, &cs);
        size_t w;
        fx_check_calib(tc, &st, &cs, fixture, &w);
        calib_stats_free(&cs);
        llama_free(&base, &be);
        lora_free(&none, &be);
    }

    // ---- forward + backward at the initial parameters (loss = mean over rows)
    be.zero(&be, ls.grads, ls.numel * sizeof(float));
    double loss = llama_forward(&model, &be, &ls, &b, 1, 1.0f / (float)B, 0, NULL) / B;
    llama_backward(&model, &be, &ls, &b, 0);
    float ref_logits[64], ref_loss;
    st_to_f32(need(&st, "logits"), ref_logits);
    st_to_f32(need(&st, "loss"), &ref_loss);
    snprintf(what, sizeof what, "%s logits", fixture);
    T_CLOSE(tc, model.logits, ref_logits, (size_t)B * K, 1e-5, 1e-3, what);
    size_t wl;
    double logits_err = t_max_rel_err(model.logits, ref_logits, (size_t)B * K, 1e-3, &wl);
    float lossf = (float)loss;
    snprintf(what, sizeof what, "%s loss", fixture);
    T_CLOSE(tc, &lossf, &ref_loss, 1, 1e-5, 0.0, what);
    int n_grad;
    double worst_grad = fx_check_tensors(tc, &st, "grad.", &ls, ls.grads, 1e-4, fixture, "gradient", 0, &n_grad, NULL);
    T_CHECK(tc, n_grad == lora_num_tensors(&ls), "%s: %d gradients compared, expected %d", fixture, n_grad,
            lora_num_tensors(&ls));

    // ---- 10 AdamW steps on the same batch, transformers' schedule, torch's clipping
    double worst_final,
        traj_err = fx_train_steps(tc, &st, meta, fixture, llama_step, &model, &be, &ls, &b, &worst_final);
    printf("%s: logits err %.2e, loss err %.2e, worst grad err %.2e, trajectory loss err %.2e, final params "
           "err %.2e\n", fixture, logits_err, fabs(loss - ref_loss) / fabs(ref_loss), worst_grad, traj_err,
           worst_final);
    batch_free(&b);
    llama_free(&model, &be);
    lora_free(&ls, &be);
    backend_free(&be);
    cJSON_Delete(meta);
    safetensors_close(&st);
}

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : ".";
    TestCounts tc = {0};
    run_case(&tc, root, "llama_cls.safetensors");
    run_case(&tc, root, "llama_reg.safetensors");
    return t_finish(&tc, "test_llama_parity");
}
