// lora.c: adapter layout in the flat parameter / gradient buffers, PEFT init and naming.
#include "actlora/lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/common.h"
#include "actlora/rng.h"

const LoraNaming LORA_NAMING_LLAMA = {
    .layer_fmt = "model.layers.%d.",
    .module_path = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                    "mlp.up_proj", "mlp.down_proj"},
    .module_name = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    .head_weight = "score.weight",
    .head_bias = NULL,
};

const char *lora_module_name(const LoraNaming *nm, LoraModule m) { return nm->module_name[m]; }

int lora_module_parse(const LoraNaming *nm, const char *name) {
    for (int m = 0; m < LORA_NUM_MODULES; m++)
        if (nm->module_name[m] && strcmp(name, nm->module_name[m]) == 0) return m;
    return -1;
}

void lora_init(LoraSet *ls, Backend *be, const LoraNaming *nm, const LoraShapes *shapes, int num_layers, const int *layers,
               int n_layers, const int *modules, int n_modules, int r, double alpha, int rslora,
               double dropout, int num_labels, int hidden) {
    memset(ls, 0, sizeof *ls);
    check(r > 0, "lora.r must be positive (got %d)", r);
    ls->r = r;
    ls->naming = nm;
    ls->scaling = (float)(rslora ? alpha / sqrt((double)r) : alpha / (double)r);
    ls->dropout = (float)dropout;
    ls->num_layers = num_layers;
    ls->num_labels = num_labels;
    ls->hidden = hidden;
    ls->index = xmalloc(sizeof(int) * (size_t)num_layers * LORA_NUM_MODULES, "lora index");
    for (int i = 0; i < num_layers * LORA_NUM_MODULES; i++) ls->index[i] = -1;
    int use[LORA_NUM_MODULES] = {0};
    for (int j = 0; j < n_modules; j++) {
        check(modules[j] >= 0 && modules[j] < LORA_NUM_MODULES && nm->module_path[modules[j]],
              "internal: bad LoRA module id %d for this model", modules[j]);
        use[modules[j]] = 1;
    }
    int on_layer[num_layers > 0 ? num_layers : 1];
    memset(on_layer, 0, sizeof on_layer);
    for (int j = 0; j < n_layers; j++) {
        check(layers[j] >= 0 && layers[j] < num_layers,
              "lora.layers names layer %d but the model has %d layers (0..%d)", layers[j], num_layers,
              num_layers - 1);
        on_layer[layers[j]] = 1;
    }
    ls->ad = xcalloc((size_t)num_layers * LORA_NUM_MODULES, sizeof(LoraAdapter), "lora adapters");
    ls->lowest_layer = num_layers;
    size_t off = 0;
    for (int l = 0; l < num_layers; l++) {
        if (!on_layer[l]) continue;
        for (int m = 0; m < LORA_NUM_MODULES; m++) {
            if (!use[m]) continue;
            LoraAdapter *a = &ls->ad[ls->n];
            a->layer = l;
            a->module = (LoraModule)m;
            a->in = shapes->in[m];
            a->out = shapes->out[m];
            a->a_off = off;
            off += (size_t)r * (size_t)a->in;
            a->b_off = off;
            off += (size_t)a->out * (size_t)r;
            ls->index[l * LORA_NUM_MODULES + m] = ls->n++;
            if (l < ls->lowest_layer) ls->lowest_layer = l;
        }
    }
    ls->head_off = off;
    ls->head_bias_off = off + (size_t)num_labels * (size_t)hidden;
    ls->numel = ls->head_bias_off + (nm->head_bias ? (size_t)num_labels : 0);
    size_t bytes = ls->numel * sizeof(float);
    ls->params = be->alloc(be, bytes, "trainable parameters");
    ls->grads = be->alloc(be, bytes, "gradients");
    ls->m = be->alloc(be, bytes, "AdamW first moments");
    ls->v = be->alloc(be, bytes, "AdamW second moments");
}

void lora_free(LoraSet *ls, Backend *be) {
    be->free(be, ls->params);
    be->free(be, ls->grads);
    be->free(be, ls->m);
    be->free(be, ls->v);
    free(ls->ad);
    free(ls->index);
    memset(ls, 0, sizeof *ls);
}

void lora_init_weights(LoraSet *ls, Backend *be, uint64_t seed) {
    size_t n = ls->head_off;  // adapters only; the head belongs to the model
    float *host = xcalloc(n ? n : 1, sizeof(float), "LoRA init");
    for (int i = 0; i < ls->n; i++) {
        const LoraAdapter *a = &ls->ad[i];
        // kaiming_uniform_(a=sqrt(5)) on [r, in]: gain = sqrt(2/(1+5)), bound = gain*sqrt(3/in) = 1/sqrt(in)
        float bound = 1.0f / sqrtf((float)a->in);
        uint64_t key = rng_key(rng_key(rng_key(seed, 0x10AA), (uint64_t)a->layer), (uint64_t)a->module);
        size_t na = (size_t)ls->r * (size_t)a->in;
        for (size_t j = 0; j < na; j++) host[a->a_off + j] = (2.0f * rng_uniform(key, j) - 1.0f) * bound;
        // B stays 0 so the adapted model starts equal to the base model
    }
    if (n) be->upload(be, ls->params, host, n * sizeof(float));
    free(host);
}

void lora_param_name(const LoraSet *ls, int i, int which, char *buf, size_t n) {
    if (i < 0 || i >= ls->n) {
        snprintf(buf, n, "%s", which ? ls->naming->head_bias : ls->naming->head_weight);
        return;
    }
    const LoraAdapter *a = &ls->ad[i];
    char layer[64];
    snprintf(layer, sizeof layer, ls->naming->layer_fmt, a->layer);
    snprintf(buf, n, "%s%s.lora_%c.weight", layer, ls->naming->module_path[a->module], which ? 'B' : 'A');
}

int lora_param_lookup(const LoraSet *ls, const char *name, size_t *off, size_t *numel) {
    char buf[160];
    if (strcmp(name, ls->naming->head_weight) == 0) {
        *off = ls->head_off;
        *numel = (size_t)ls->num_labels * (size_t)ls->hidden;
        return 0;
    }
    if (ls->naming->head_bias && strcmp(name, ls->naming->head_bias) == 0) {
        *off = ls->head_bias_off;
        *numel = (size_t)ls->num_labels;
        return 0;
    }
    for (int i = 0; i < ls->n; i++)
        for (int w = 0; w < 2; w++) {
            lora_param_name(ls, i, w, buf, sizeof buf);
            if (strcmp(buf, name) == 0) {
                const LoraAdapter *a = &ls->ad[i];
                *off = w ? a->b_off : a->a_off;
                *numel = w ? (size_t)a->out * (size_t)ls->r : (size_t)ls->r * (size_t)a->in;
                return 0;
            }
        }
    return -1;
}

void lora_tensor(const LoraSet *ls, int i, char *name, size_t name_n, size_t *off, int64_t *rows, int64_t *cols) {
    int adapter = i / 2 < ls->n ? i / 2 : -1, which = adapter < 0 ? i - 2 * ls->n : i % 2;
    lora_param_name(ls, adapter, which, name, name_n);
    if (adapter < 0) {
        *off = which ? ls->head_bias_off : ls->head_off;
        *rows = ls->num_labels;
        *cols = which ? 1 : ls->hidden;
        return;
    }
    const LoraAdapter *a = &ls->ad[adapter];
    *off = which ? a->b_off : a->a_off;
    *rows = which ? a->out : ls->r;
    *cols = which ? ls->r : a->in;
}
