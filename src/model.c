// model.c: dispatch of the model interface (model.h) to the Llama decoder or the encoders.
#include "actlora/model.h"

#include <stdio.h>
#include <string.h>

#include "actlora/backend_cuda.h"  // BACKEND_CUDA_ATT_FUSED_HEAD_DIM_OK (a header of constants; any build)
#include "actlora/common.h"

static int is_encoder(ModelArch a) { return a == ARCH_BERT || a == ARCH_DEBERTA_V2; }

const char *model_arch_name(ModelArch arch) {
    switch (arch) {
    case ARCH_LLAMA: return "Llama";
    case ARCH_BERT: return "BERT";
    case ARCH_DEBERTA_V2: return "DeBERTa-v2";
    default: return "unknown";
    }
}

const LoraNaming *model_lora_naming(ModelArch arch) {
    switch (arch) {
    case ARCH_LLAMA: return &LORA_NAMING_LLAMA;
    case ARCH_BERT: return &LORA_NAMING_BERT;
    case ARCH_DEBERTA_V2: return &LORA_NAMING_DEBERTA;
    default: die("internal: no LoRA naming for architecture %d", (int)arch);
    }
    return NULL;
}

int model_parse_targets(ModelArch arch, const char (*names)[32], int n, int *modules, Error *err) {
    const LoraNaming *nm = model_lora_naming(arch);
    for (int i = 0; i < n; i++) {
        modules[i] = lora_module_parse(nm, names[i]);
        if (modules[i] >= 0) continue;
        char known[256] = "";
        for (int m = 0; m < LORA_NUM_MODULES; m++)
            if (nm->module_name[m])
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", known[0] ? ", " : "",
                         nm->module_name[m]);
        return error_set(err, "lora.target_modules: '%s' is not a module of a %s model; use some of: %s", names[i],
                         model_arch_name(arch), known);
    }
    return 0;
}

void model_lora_shapes(const ModelConfig *mc, LoraShapes *s) {
    if (is_encoder(mc->arch)) encoder_lora_shapes(mc, s);
    else llama_lora_shapes(mc, s);
}

int model_head_hidden(const ModelConfig *mc) {
    return mc->arch == ARCH_DEBERTA_V2 && mc->pooler_hidden_size > 0 ? mc->pooler_hidden_size : mc->hidden_size;
}

void model_load(Model *m, Backend *be, const char *dir, const ModelConfig *mc, int num_labels, int random_init,
                uint64_t seed, int fuse_r, Progress *progress) {
    memset(m, 0, sizeof *m);
    m->arch = mc->arch;
    m->cfg = *mc;
    m->num_labels = num_labels;
    check(fuse_r == 0 || !is_encoder(mc->arch), "lora.fuse = true is implemented for Llama models only, and %s is "
          "a %s model: set lora.fuse = false", dir, model_arch_name(mc->arch));
    if (is_encoder(mc->arch)) encoder_load(&m->enc, be, dir, mc, num_labels, random_init, seed, progress);
    else llama_load_fused(&m->llama, be, dir, mc, num_labels, random_init, seed, fuse_r, progress);
}

int model_act_wf(ModelArch arch, const Backend *be, const char *act_dtype, int fuse, Error *err) {
    if (!act_dtype || strcmp(act_dtype, "fp32") == 0) return 0;
    if (strcmp(act_dtype, "bf16") != 0)
        return error_set(err, "model.act_dtype = \"%s\": expected \"fp32\" or \"bf16\"", act_dtype);
    if (is_encoder(arch))
        return error_set(err, "model.act_dtype = \"bf16\" is implemented for Llama models only, and this is a %s "
                         "model: set model.act_dtype = \"fp32\"", model_arch_name(arch));
    if (!fuse)
        return error_set(err, "model.act_dtype = \"bf16\" needs lora.fuse = true (the bf16 activations are the "
                         "operands of the fused products): set lora.fuse = true, or model.act_dtype = \"fp32\"");
    if (be->weight_dtype != BACKEND_WEIGHT_BF16)
        return error_set(err, "model.act_dtype = \"bf16\" needs bf16 weights, but model.dtype gives %s weights on the "
                         "%s backend: set model.dtype = \"bf16\" (the CPU's is an emulation for tests), or "
                         "model.act_dtype = \"fp32\"", backend_weight_dtype_name(be), be->name);
    return 1;
}

int model_att_fused(ModelArch arch, const Backend *be, int act_wf, int head_dim, const char *attention, Error *err) {
    if (!attention || strcmp(attention, "gemm") == 0) return 0;
    if (strcmp(attention, "fused") != 0)
        return error_set(err, "model.attention = \"%s\": expected \"gemm\" or \"fused\"", attention);
    if (is_encoder(arch))
        return error_set(err, "model.attention = \"fused\" is implemented for Llama models only, and this is a %s "
                         "model: set model.attention = \"gemm\"", model_arch_name(arch));
    if (act_wf != 1)
        return error_set(err, "model.attention = \"fused\" needs model.act_dtype = \"bf16\" (its kernels read q, k, v "
                         "in bf16): set model.act_dtype = \"bf16\" (with lora.fuse and bf16 weights), or "
                         "model.attention = \"gemm\"");
    if (strcmp(be->name, "cuda") == 0 && !BACKEND_CUDA_ATT_FUSED_HEAD_DIM_OK(head_dim))
        return error_set(err, "model.attention = \"fused\": the CUDA kernels exist for head dimensions 16, 32, 64 and "
                         "128, and this model's is %d: set model.attention = \"gemm\"", head_dim);
    return 1;
}

void model_set_att_fused(Model *m, int on) {
    check(!on || m->arch == ARCH_LLAMA, "internal: fused attention on a %s model", model_arch_name(m->arch));
    if (m->arch == ARCH_LLAMA) llama_set_att_fused(&m->llama, on);
}

void model_set_act_wf(Model *m, int on) {
    check(!on || m->arch == ARCH_LLAMA, "internal: activations in the weight format on a %s model",
          model_arch_name(m->arch));
    if (m->arch == ARCH_LLAMA) llama_set_act_wf(&m->llama, on);
}

int model_init_head(Model *m, Backend *be, const char *dir, int random_init, LoraSet *ls, uint64_t seed) {
    if (is_encoder(m->arch)) return encoder_init_head(&m->enc, be, dir, random_init, ls, seed);
    return llama_init_head(&m->llama, be, dir, random_init, ls, seed);
}

void model_alloc_acts(Model *m, Backend *be, const LoraSet *ls, int B, int T) {
    if (is_encoder(m->arch)) encoder_alloc_acts(&m->enc, be, ls, B, T);
    else llama_alloc_acts(&m->llama, be, ls, B, T);
}

void model_free_acts(Model *m, Backend *be) {
    if (is_encoder(m->arch)) encoder_free_acts(&m->enc, be);
    else llama_free_acts(&m->llama, be);
}

void model_free(Model *m, Backend *be) {
    if (is_encoder(m->arch)) encoder_free(&m->enc, be);
    else llama_free(&m->llama, be);
}

double model_forward(Model *m, Backend *be, const LoraSet *ls, const Batch *b, int train, float grad_scale,
                     uint64_t dropout_key, CalibStats *stats) {
    if (is_encoder(m->arch)) return encoder_forward(&m->enc, be, ls, b, train, grad_scale, dropout_key, stats);
    return llama_forward(&m->llama, be, ls, b, train, grad_scale, dropout_key, stats);
}

void model_backward(Model *m, Backend *be, LoraSet *ls, const Batch *b, uint64_t dropout_key) {
    if (is_encoder(m->arch)) encoder_backward(&m->enc, be, ls, b, dropout_key);
    else llama_backward(&m->llama, be, ls, b, dropout_key);
}

const float *model_logits(const Model *m) { return is_encoder(m->arch) ? m->enc.logits : m->llama.logits; }

size_t model_act_bytes(const Model *m) { return is_encoder(m->arch) ? m->enc.act_bytes : m->llama.act_bytes; }
