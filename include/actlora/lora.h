// lora.h: the trainable state — LoRA adapters on a chosen set of (layer, module) pairs plus
// the classification head — laid out in ONE flat parameter buffer with a twin gradient buffer
// and AdamW moments. The flat gradient is what the data-parallel all-reduce sends, so it must
// hold exactly the selected adapters and the head, nothing else.
//
// Layout of the flat buffers: adapters sorted by (layer, module), each as A [r, in] then
// B [out, r], followed by the head weight [num_labels, hidden]. Names follow PEFT's saved keys
// without the "base_model.model." prefix, e.g. "model.layers.3.self_attn.q_proj.lora_A.weight".
#ifndef ACTLORA_LORA_H
#define ACTLORA_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "actlora/backend.h"

// Module slots. Llama uses all seven; encoders map theirs onto the same slots (LoraNaming):
// Q/K/V = query/key/value(_proj), O = attention.output.dense, UP = intermediate.dense,
// DOWN = output.dense; GATE is unused there.
typedef enum { LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN, LORA_NUM_MODULES } LoraModule;

// How a model names its adapters and head (PEFT's saved keys without "base_model.model.").
typedef struct {
    const char *layer_fmt;                      // printf format of a layer's path, e.g. "model.layers.%d."
    const char *module_path[LORA_NUM_MODULES];  // under the layer, e.g. "self_attn.q_proj"; NULL: no such module
    const char *module_name[LORA_NUM_MODULES];  // name in lora.target_modules, e.g. "q_proj"; NULL likewise
    const char *head_weight;                    // "score.weight" / "classifier.weight"
    const char *head_bias;                      // "classifier.bias", or NULL when the head has no bias
} LoraNaming;

extern const LoraNaming LORA_NAMING_LLAMA;

typedef struct {
    int layer;
    LoraModule module;
    int in, out;          // the frozen Linear is [out, in]
    size_t a_off, b_off;  // offsets (elements) of A [r, in] and B [out, r] in the flat buffers
} LoraAdapter;

// Per-module Linear shapes of the base model (filled by the model code).
typedef struct {
    int in[LORA_NUM_MODULES];
    int out[LORA_NUM_MODULES];
} LoraShapes;

typedef struct {
    int r;
    float scaling;        // alpha / r, or alpha / sqrt(r) with rsLoRA
    float dropout;
    int num_layers;       // layers in the base model
    int n;                // number of adapters
    LoraAdapter *ad;      // [n], sorted by (layer, module)
    int *index;           // [num_layers * LORA_NUM_MODULES] -> adapter index or -1
    int lowest_layer;     // lowest adapted layer; num_layers when there are no adapters
    int num_labels, hidden;
    const LoraNaming *naming;
    size_t head_off;      // head weight [num_labels, hidden]
    size_t head_bias_off; // head bias [num_labels] right after the weight (naming->head_bias != NULL)
    size_t numel;         // all trainable parameters
    // backend memory, numel floats each
    float *params, *grads, *m, *v;
} LoraSet;

// Target name of a module under a naming ("q_proj", "query", ...; NULL when the model has none), and
// the reverse (-1 if the model has no module of that name).
const char *lora_module_name(const LoraNaming *nm, LoraModule m);
int lora_module_parse(const LoraNaming *nm, const char *name);
// Allocates adapters on every (layer in layers) x (module in modules), named by nm. Parameters are zero.
void lora_init(LoraSet *ls, Backend *be, const LoraNaming *nm, const LoraShapes *shapes, int num_layers, const int *layers,
               int n_layers, const int *modules, int n_modules, int r, double alpha, int rslora,
               double dropout, int num_labels, int hidden);
void lora_free(LoraSet *ls, Backend *be);
// PEFT's default init, drawn from a counter-based stream keyed by seed: A ~ kaiming_uniform(a=sqrt(5))
// = U(-1/sqrt(in), 1/sqrt(in)), B = 0. The head is left as is (loaded or initialised by the model).
void lora_init_weights(LoraSet *ls, Backend *be, uint64_t seed);
// Adapter index for (layer, module), or -1.
static inline int lora_find(const LoraSet *ls, int layer, LoraModule m) {
    return ls->index[layer * LORA_NUM_MODULES + (int)m];
}
// PEFT-style name of A (which = 0) or B (which = 1) of adapter i; for i outside [0, n) the head's
// weight (which = 0) or bias (which = 1).
void lora_param_name(const LoraSet *ls, int i, int which, char *buf, size_t n);
// The trainable tensors in layout order: A, B of each adapter, then the head weight and, when the
// head has one, its bias. Fills its PEFT-style name, element offset in the flat buffers and
// [rows, cols] shape (the bias is [num_labels, 1]; exports write it 1-D).
static inline int lora_num_tensors(const LoraSet *ls) { return 2 * ls->n + 1 + (ls->naming->head_bias != NULL); }
void lora_tensor(const LoraSet *ls, int i, char *name, size_t name_n, size_t *off, int64_t *rows, int64_t *cols);
// Looks a name up: returns 0 and the offset / element count in the flat buffer, or -1.
int lora_param_lookup(const LoraSet *ls, const char *name, size_t *off, size_t *numel);

#endif
