// llama.h: Llama (HF LlamaForSequenceClassification semantics) forward and backward over the
// backend op table, with LoRA adapters from a LoraSet. Frozen base weights live in the model;
// the trainable adapters and the `score` head live in the LoraSet's flat buffer.
//
// Backward stops at the lowest adapted layer: activations are kept only for layers at or above
// it (layers below run through one scratch set), so memory and backward compute grow with
// (num_layers - lowest adapted layer).
#ifndef ACTLORA_LLAMA_H
#define ACTLORA_LLAMA_H

#include <stddef.h>
#include <stdint.h>

#include "actlora/backend.h"
#include "actlora/calib.h"
#include "actlora/data.h"
#include "actlora/hfmodel.h"
#include "actlora/lora.h"
#include "actlora/progress.h"

typedef struct {
    float *ln1, *wq, *wk, *wv, *wo, *ln2, *wg, *wu, *wd;
} LlamaLayer;

typedef struct {
    float *x_in;                          // [N, C] residual stream entering the layer
    float *rstd1, *xn1;                   // [N], [N, C] (act_wf: [N, C + r] in the weight format)
    float *q, *k, *v;                     // [N, H*D], [N, KVH*D], [N, KVH*D]; q, k after RoPE (act_wf: weight format)
    float *probs;                         // [B, H, T, T] (act_wf: in the weight format); NULL with att_fused
    float *lse;                           // att_fused: [B, H, T] each query row's log-sum-exp (else NULL)
    float *att;                           // [N, H*D] attention output (o_proj input)
    float *x_mid;                         // [N, C] residual after attention
    float *rstd2, *xn2;                   // [N], [N, C] (act_wf: [N, C + r] in the weight format)
    float *gate, *up, *h;                 // [N, I]; h = silu(gate) * up (down_proj input). With act_wf: in the
                                          // weight format, h [N, I + r] (its last r columns: down's [h | a])
    float *lora_a[LORA_NUM_MODULES];      // [N, r] LoRA A-projections (adapted modules only)
} LlamaActs;

typedef struct {
    ModelConfig cfg;
    int num_labels;
    // frozen weights (backend memory, in the backend's weight format: fp32, or bf16 on CUDA; pass them only
    // to the weight ops wgemm / wembedding_fwd, never index them as floats)
    float *wte;            // [V, C]
    LlamaLayer *layers;    // [L]
    float *norm;           // [C]
    float *rope_cos, *rope_sin;  // [max_T, D/2]
    int rope_T;
    // lora.fuse: > 0 = the seven projections are BORDERED weights [out + fuse_r, in + fuse_r] (backend.h,
    // "LoRA on the frozen GEMM"): adapters of rank fuse_r ride on the frozen GEMMs; 0 = plain weights
    int fuse_r;
    // model.act_dtype = "bf16" (needs fuse_r > 0): xn1, xn2, q, k, v, probs, gate, up, h and the backward's
    // dgate, dup live in the backend's weight format (backend.h "activations in the weight format"; docs/gpu.md "bf16
    // activations"); xn1, xn2 (row stride C + fuse_r) and h, dgate, dup (I + fuse_r) are the bordered
    // products' operands in place
    int act_wf;
    // model.attention = "fused" (needs act_wf): attention_fused_fwd/bwd, which keep lse [B,H,T] instead of the
    // [B,H,T,T] probabilities (backend.h "fused attention")
    int att_fused;
    // activation memory for batches up to [cap_B, cap_T]
    int cap_B, cap_T, saved_from;  // layers >= saved_from keep their activations
    LlamaActs *acts;               // [L - saved_from] saved sets, then 1 scratch set if saved_from > 0
    float *x_final;                // [N, C] output of the last block
    float *pooled, *rstd_f, *pooled_n, *logits, *dlogits;  // [B,C], [B], [B,C], [B,K], [B,K]
    // backward scratch
    float *dres, *dxn, *dh, *dgate, *dup, *datt, *dq, *dk, *dv, *dpool, *dpool_n, *lora_da;  // act_wf:
                           // dgate, dup [N, I + r] in the weight format
    // batch on the backend
    int32_t *d_ids, *d_mask, *d_last, *d_labels_i;
    float *d_labels_f;
    int32_t *last;         // host [cap_B]
    size_t act_bytes;      // bytes of activation + scratch memory
} Llama;

// Linear shapes of the LoRA-targetable modules.
void llama_lora_shapes(const ModelConfig *mc, LoraShapes *s);
// Loads (or, with random_init, draws from `seed`) the frozen base weights of an HF directory.
void llama_load(Llama *m, Backend *be, const char *dir, const ModelConfig *mc, int num_labels, int random_init,
                uint64_t seed);
// The same with fuse_r > 0: the projections are loaded as bordered weights for adapters of rank fuse_r
// (lora.fuse); forward and backward then run each adapter on its frozen GEMM (llama_forward writes the
// borders from the LoraSet it is given, whose rank must be fuse_r). With random_init, W holds the same
// values as in the plain layout.
// progress (may be NULL): a line every few seconds while the layers load (progress.h).
void llama_load_fused(Llama *m, Backend *be, const char *dir, const ModelConfig *mc, int num_labels, int random_init,
                      uint64_t seed, int fuse_r, Progress *progress);
// Activations in the backend's weight format (act_wf) on (1) or off (0), for a model loaded with fuse_r > 0;
// before llama_alloc_acts (which sizes them). With fp32 weights the results are bit-identical either way.
void llama_set_act_wf(Llama *m, int on);
// model.attention = "fused": before llama_alloc_acts, after llama_set_act_wf (needs act_wf).
void llama_set_att_fused(Llama *m, int on);
// Fills the head in ls: `score.weight` from the directory when present with shape
// [num_labels, hidden], else N(0, 0.02) drawn from `seed` (as transformers initialises a new head).
// Returns 1 if loaded, 0 if initialised.
int llama_init_head(Llama *m, Backend *be, const char *dir, int random_init, LoraSet *ls, uint64_t seed);
// Allocates activation memory for batches up to [B, T] given the adapters' lowest layer
// (replacing any earlier allocation).
void llama_alloc_acts(Llama *m, Backend *be, const LoraSet *ls, int B, int T);
// Releases the activation memory only (the weights stay).
void llama_free_acts(Llama *m, Backend *be);
void llama_free(Llama *m, Backend *be);

// Forward pass over a batch. Returns the summed per-row loss; logits land in m->logits.
// With train != 0, also writes dlogits = grad_scale * d(loss sum)/dlogits for llama_backward, and
// applies LoRA dropout drawn from dropout_key. With stats != NULL, adds this batch's per-layer
// activation statistics (calib.h) over its real tokens.
double llama_forward(Llama *m, Backend *be, const LoraSet *ls, const Batch *b, int train, float grad_scale,
                     uint64_t dropout_key, CalibStats *stats);
// Backward of the last forward: accumulates (+=) gradients of every adapter and the head into
// ls->grads, stopping at the lowest adapted layer.
void llama_backward(Llama *m, Backend *be, LoraSet *ls, const Batch *b, uint64_t dropout_key);

#endif
