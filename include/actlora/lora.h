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

typedef enum { LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN, LORA_NUM_MODULES } LoraModule;

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
    size_t head_off;      // head weight [num_labels, hidden]
    size_t numel;         // all trainable parameters
    // backend memory, numel floats each
    float *params, *grads, *m, *v;
} LoraSet;

// HF module name ("q_proj", ...) of a module, and the reverse (-1 if unknown).
const char *lora_module_name(LoraModule m);
int lora_module_parse(const char *name);
// Allocates adapters on every (layer in layers) x (module in modules). Parameters are zero.
void lora_init(LoraSet *ls, Backend *be, const LoraShapes *shapes, int num_layers, const int *layers,
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
// PEFT-style name of A (which = 0) or B (which = 1) of adapter i; "score.weight" for the head.
void lora_param_name(const LoraSet *ls, int i, int which, char *buf, size_t n);
// The trainable tensors in layout order: i in [0, 2 * n + 1) is A, B of each adapter, then the head.
// Fills its PEFT-style name, element offset in the flat buffers and [rows, cols] shape.
static inline int lora_num_tensors(const LoraSet *ls) { return 2 * ls->n + 1; }
void lora_tensor(const LoraSet *ls, int i, char *name, size_t name_n, size_t *off, int64_t *rows, int64_t *cols);
// Looks a name up: returns 0 and the offset / element count in the flat buffer, or -1.
int lora_param_lookup(const LoraSet *ls, const char *name, size_t *off, size_t *numel);

#endif
