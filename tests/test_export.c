// test_export.c: the PEFT adapter export. Trains nothing: puts known non-zero values into the
// adapters and the head of the tiny Llama, exports them, and checks the files (names, shapes,
// values, adapter_config.json). It also leaves <build>/export_case/ with the adapter and the
// logits of the fixture batch, which tests/python/test_export_peft.py loads with real PEFT.
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/export.h"
#include "actlora/hfmodel.h"
#include "actlora/llama.h"
#include "actlora/rng.h"
#include "actlora/safetensors.h"
#include "test_util.h"

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : ".", *build = argc > 2 ? argv[2] : ".";
    TestCounts tc = {0};
    char dir[2048], path[4096], out[3000];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tiny-llama", root);
    snprintf(path, sizeof path, "%s/config.json", dir);
    Error err;
    ModelConfig mc;
    if (hfconfig_load(&mc, path, &err) != 0) die("%s", err.msg);
    Backend be;
    backend_cpu_init(&be, 0);
    Llama model;
    llama_load(&model, &be, dir, &mc, 3, 0, 0);
    static RunConfig cfg;
    config_defaults(&cfg);
    snprintf(cfg.model.path, sizeof cfg.model.path, "%s", dir);
    cfg.lora.r = 4;
    cfg.lora.alpha = 8.0;
    cfg.lora.n_targets = 3;
    strcpy(cfg.lora.targets[0], "q_proj");
    strcpy(cfg.lora.targets[1], "v_proj");
    strcpy(cfg.lora.targets[2], "down_proj");
    int layers[2] = {1, 3}, mods[3] = {LORA_Q, LORA_V, LORA_DOWN};
    LoraShapes shapes;
    llama_lora_shapes(&mc, &shapes);
    LoraSet ls;
    lora_init(&ls, &be, &LORA_NAMING_LLAMA, &shapes, mc.num_hidden_layers, layers, 2, mods, 3, 4, 8.0, 0, 0.0, 3, mc.hidden_size);
    for (size_t i = 0; i < ls.numel; i++) ls.params[i] = 0.2f * (2.0f * rng_uniform(77, i) - 1.0f);

    // logits of the fixture batch with these adapters
    snprintf(path, sizeof path, "%s/tests/fixtures/llama_cls.safetensors", root);
    SafeTensors fx;
    if (safetensors_open(&fx, path, &err) != 0) die("%s", err.msg);
    const StTensor *ids = safetensors_find(&fx, "input_ids"), *mask = safetensors_find(&fx, "attention_mask");
    int B = (int)ids->shape[0], T = (int)ids->shape[1];
    Batch b;
    batch_init(&b, B, T);
    st_to_i32(ids, path, b.ids, &err);
    st_to_i32(mask, path, b.mask, &err);
    for (int i = 0; i < B * T; i++) b.n_tokens += b.mask[i];
    llama_alloc_acts(&model, &be, &ls, B, T);
    llama_forward(&model, &be, &ls, &b, 0, 0.0f, 0, NULL);

    snprintf(out, sizeof out, "%s/export_case/adapter", build);
    T_CHECK(&tc, export_lora(out, &cfg, &ls, &be, layers, 2, &err) == 0, "export_lora: %s", err.msg);
    snprintf(path, sizeof path, "%s/export_case/reference.safetensors", build);
    StWriteTensor ref[3] = {{.name = "input_ids", .dtype = ST_I32, .ndim = 2, .shape = {B, T}, .data = b.ids},
                            {.name = "attention_mask", .dtype = ST_I32, .ndim = 2, .shape = {B, T}, .data = b.mask},
                            {.name = "logits", .dtype = ST_F32, .ndim = 2, .shape = {B, 3}, .data = model.logits}};
    T_CHECK(&tc, safetensors_write(path, ref, 3, NULL, NULL, 0, &err) == 0, "reference: %s", err.msg);

    // the adapter file: PEFT names, shapes, values
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out);
    SafeTensors st;
    T_CHECK(&tc, safetensors_open(&st, path, &err) == 0, "reopen: %s", err.msg);
    T_CHECK(&tc, st.n == 2 * ls.n + 1, "%d tensors, expected %d", st.n, 2 * ls.n + 1);
    const StTensor *q = safetensors_find(&st, "base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight");
    const StTensor *d = safetensors_find(&st, "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
    const StTensor *h = safetensors_find(&st, "base_model.model.score.weight");
    T_CHECK(&tc, q && q->shape[0] == 64 && q->shape[1] == 4, "q_proj lora_B missing or wrong shape");
    T_CHECK(&tc, d && d->shape[0] == 4 && d->shape[1] == 160, "down_proj lora_A missing or wrong shape");
    T_CHECK(&tc, h && h->shape[0] == 3 && h->shape[1] == 64, "score missing or wrong shape");
    size_t off, n;
    if (h && lora_param_lookup(&ls, "score.weight", &off, &n) == 0) {
        float *v = xmalloc(n * sizeof(float), "head");
        st_to_f32(h, v);
        T_CHECK(&tc, memcmp(v, ls.params + off, n * sizeof(float)) == 0, "exported head differs from the parameters");
        free(v);
    }
    safetensors_close(&st);
    snprintf(path, sizeof path, "%s/adapter_config.json", out);
    char *text = file_read_all(path, NULL, &err);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    T_CHECK(&tc, j != NULL, "adapter_config.json is not JSON");
    if (j) {
        const cJSON *lt = cJSON_GetObjectItem(j, "layers_to_transform");
        T_CHECK(&tc, cJSON_GetArraySize(lt) == 2 && cJSON_GetArrayItem(lt, 1)->valueint == 3, "layers_to_transform");
        T_CHECK(&tc, cJSON_GetObjectItem(j, "r")->valueint == 4 && cJSON_GetObjectItem(j, "lora_alpha")->valuedouble == 8.0,
                "r / lora_alpha");
        T_CHECK(&tc, strcmp(cJSON_GetObjectItem(j, "task_type")->valuestring, "SEQ_CLS") == 0, "task_type");
        T_CHECK(&tc, cJSON_GetArraySize(cJSON_GetObjectItem(j, "target_modules")) == 3, "target_modules");
        cJSON_Delete(j);
    }
    free(text);
    batch_free(&b);
    safetensors_close(&fx);
    llama_free(&model, &be);
    lora_free(&ls, &be);
    backend_free(&be);
    return t_finish(&tc, "test_export");
}
