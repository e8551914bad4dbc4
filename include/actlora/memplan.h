// memplan.h: device-memory plan of a LoRA run — Llama (memplan_llama) or a BERT / DeBERTa-v2
// encoder (memplan_encoder) — what the model, the adapters and one micro-batch need on one GPU,
// before anything is allocated. Pure arithmetic over the shapes, mirroring the buffers llama_load /
// llama_alloc_acts, encoder_load / encoder_alloc_acts, lora_init and the CUDA backend allocate
// (tests/test_memplan.c holds the activation term equal to what llama_alloc_acts / encoder_alloc_acts
// allocate, and the frozen-weight term to what the loaders allocate).
//
// Precision: activations, adapters, gradients and AdamW moments are fp32 (the backends compute in
// fp32); only the frozen weights take weight_bytes (2 = bf16, 4 = fp32: the backend's weight format,
// Backend.weight_bytes; docs/gpu.md).
#ifndef ACTLORA_MEMPLAN_H
#define ACTLORA_MEMPLAN_H

#include <stddef.h>

#include "actlora/hfmodel.h"
#include "actlora/lora.h"

#ifdef __cplusplus
extern "C" {
#endif

// Safety margin memplan_fit keeps free: CUDA context, allocator rounding and fragmentation, NCCL
// buffers, and the odd temporary: MEMPLAN_MARGIN_FIXED bytes + MEMPLAN_MARGIN_PERCENT of the device.
#define MEMPLAN_MARGIN_FIXED ((size_t)1 << 30)
#define MEMPLAN_MARGIN_PERCENT 5

typedef struct {
    // ---- inputs (as passed to memplan_llama / memplan_encoder; mc.arch says which planned it)
    ModelConfig mc;
    int num_labels;
    int lowest_layer;        // lowest adapted layer (L when only the head is trained)
    int n_adapted_layers;    // layers with adapters (all >= lowest_layer)
    int modules[LORA_NUM_MODULES], n_modules;  // LoRA target modules on every adapted layer
    int r, micro_batch, seq_len;
    int weight_bytes;        // bytes per frozen weight element: 2 (bf16) or 4 (fp32)
    int fused;               // lora.fuse: bordered projections [out + r, in + r] (llama.h; 0 for encoders)
    int act_wf;              // model.act_dtype "bf16": xn1, xn2 and the MLP activations in the weight format (llama.h)
    int att_fused;           // model.attention "fused": lse [B,H,T] fp32 instead of the probabilities (needs act_wf)
    // ---- derived counts
    int saved_from;          // layers >= saved_from keep their activations (llama.h)
    int act_sets;            // activation sets: L - saved_from saved, + 1 scratch set if saved_from > 0
    int n_adapters;          // (layer, module) pairs
    size_t trainable_params; // adapters + head
    // ---- bytes
    size_t weights;          // frozen base weights (embedding, layers, final norm); encoders: also the
                             // position / token-type tables, biases, LayerNorms, pooler, DeBERTa's
                             // relative embeddings and their positional projections [P, C]
    size_t rope;             // RoPE cos/sin tables (fp32, max_position_embeddings x head_dim/2 each); 0 for encoders
    size_t acts_layers;      // the per-layer activation sets (incl. LoRA A-projections)
    size_t acts_head;        // x_final and the head buffers (pooled, norms, logits, dlogits, dpool)
    size_t acts_bwd;         // backward scratch (dres, dxn, dh, ..., lora_da)
    size_t acts;             // acts_layers + acts_head + acts_bwd == Llama.act_bytes / Encoder.act_bytes
    size_t logits;           // logits + dlogits (inside acts_head, shown on its own line)
    size_t batch;            // ids, mask, last index, labels on the device (encoders: + position and
                             // token-type ids, DeBERTa's relative-position index [T, T])
    size_t scratch;          // backend scratch: attention-backward dS [B,H,T,T] (+ DeBERTa's position
                             // index) + reduction partials (+ wgemm's bf16 operand)
    size_t trainable;        // params + grads + AdamW m + v, fp32
    size_t workspace;        // cuBLAS workspace of the CUDA backend
    size_t total;            // sum of the above (without the safety margin)
} MemPlan;

// memplan_llama's flags
// lora.fuse; model.act_dtype "bf16" (needs MEMPLAN_FUSED); model.attention "fused" (needs MEMPLAN_ACT_WF)
enum { MEMPLAN_FUSED = 1, MEMPLAN_ACT_WF = 2, MEMPLAN_ATT_FUSED = 4 };

// Fills the plan. modules are LoraModule ids (lora.h); n_adapted_layers = 0 plans a head-only run
// (lowest_layer is then taken as L); flags: MEMPLAN_FUSED | MEMPLAN_ACT_WF | MEMPLAN_ATT_FUSED. Dies on inconsistent
// arguments (an internal error).
void memplan_llama(MemPlan *p, const ModelConfig *mc, int num_labels, int lowest_layer, int n_adapted_layers,
                   const int *modules, int n_modules, int r, int micro_batch, int seq_len, int weight_bytes,
                   int flags);
// The same for a BERT / DeBERTa-v2 encoder (mc->arch ARCH_BERT or ARCH_DEBERTA_V2): modules are the
// encoder's LoraModule slots (Q, K, V, O, UP, DOWN; encoder.h), the head is the classifier with its
// bias (model_head_hidden), rope is 0 and there is no lora.fuse.
void memplan_encoder(MemPlan *p, const ModelConfig *mc, int num_labels, int lowest_layer, int n_adapted_layers,
                     const int *modules, int n_modules, int r, int micro_batch, int seq_len, int weight_bytes);
// Margin memplan_fit keeps on a device of device_bytes.
size_t memplan_margin(size_t device_bytes);
// Writes a table of the plan against device_bytes into report (NUL-terminated, truncated to n)
// and returns 1 when total + margin fits, else 0 (the report then says by how much it misses,
// the largest micro-batch that would fit, or what else to change).
int memplan_fit(const MemPlan *p, size_t device_bytes, char *report, size_t n);
// Largest micro-batch (at most 65536) for which the plan (Llama or encoder), everything else unchanged, fits
// device_bytes with the margin; 0 when not even a micro-batch of 1 fits.
int memplan_max_micro_batch(const MemPlan *p, size_t device_bytes);

#ifdef __cplusplus
}
#endif

#endif
