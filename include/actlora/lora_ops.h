// lora_ops.h: applying one LoRA adapter inside a model's forward and backward, shared by the
// model implementations (llama.c, encoder.c). Same semantics and dropout keying everywhere:
//   forward:  Y[N,out] += s * dropout(X)[N,in] A^T B^T, and a_out[N,r] = dropout(X) A^T is kept
//   backward: dB += s dY^T a; da = s dY B; dA += da^T dropout(X); dX += dropout'(da A)
// where s = ls->scaling and dropout (inverted, p = ls->dropout) draws its mask from
// lora_ops_key(key, layer, module) of the adapter, so backward re-draws the forward's mask.
// All buffers are backend memory.
#ifndef ACTLORA_LORA_OPS_H
#define ACTLORA_LORA_OPS_H

#include <stdint.h>

#include "actlora/backend.h"
#include "actlora/lora.h"
#include "actlora/rng.h"

// The dropout key of adapter (layer, module) under a batch's dropout key.
static inline uint64_t lora_ops_key(uint64_t key, int layer, int module) {
    return rng_key(rng_key(key, (uint64_t)layer), (uint64_t)module);
}

// Forward of the adapter on (layer, module), if the set has one (else nothing) on N rows:
// Y += s * dropout(X) A^T B^T; a_out [N, r] receives dropout(X) A^T. Dropout applies only when
// train != 0 and ls->dropout > 0 (the backend's lora_*_dropout ops: no copy of the dropped X).
void lora_ops_forward(Backend *be, const LoraSet *ls, int layer, LoraModule module, const float *X, float *Y,
                      float *a_out, int N, int train, uint64_t key);

// Backward of the adapter on (layer, module), if any, given dY [N, out], its forward input X [N, in] and
// the a_out the forward kept: accumulates (+=) dA and dB into ls->grads and, when dX != NULL, adds the
// input gradient to dX [N, in]. da: [N, r] floats of scratch. The key must be the forward's.
void lora_ops_backward(Backend *be, LoraSet *ls, int layer, LoraModule module, const float *X, const float *dY,
                       const float *a_saved, float *dX, int N, uint64_t key, float *da);

// The parts, for a model that puts the up-projection and the input-gradient term on the frozen GEMM
// (lora.fuse, backend.h "LoRA on the frozen GEMM"); each returns NULL when (layer, module) has no adapter.
// lora_ops_forward = lora_ops_down + (Y += s a B^T); lora_ops_backward = lora_ops_grads + lora_ops_dx.
//   lora_ops_down:  a_out = dropout(X) A^T; returns a_out
//   lora_ops_grads: dB += s dY^T a; da = s dY B; dA += da^T dropout(X); returns da
//   lora_ops_dx:    dX += dropout'(da A) (the forward's mask)
const float *lora_ops_down(Backend *be, const LoraSet *ls, int layer, LoraModule module, const float *X,
                           float *a_out, int N, int train, uint64_t key);
const float *lora_ops_grads(Backend *be, LoraSet *ls, int layer, LoraModule module, const float *X, const float *dY,
                            const float *a_saved, int N, uint64_t key, float *da);
void lora_ops_dx(Backend *be, const LoraSet *ls, int layer, LoraModule module, const float *da, float *dX, int N,
                 uint64_t key);

// The same parts when a Llama keeps activations in the weight format (model.act_dtype = "bf16";
// backend.h "activations in the weight format"): an operand given as Xw / dYw lives in the format with
// row stride ldx / ldy, one given as X / dY is fp32 and contiguous — exactly one of each pair non-NULL.
//   lora_ops_down_wf:  a_out = dropout(Xw) A^T
//   lora_ops_grads_wf: lora_ops_grads
// In the fp32 format they compute exactly what lora_ops_down / lora_ops_grads compute.
const float *lora_ops_down_wf(Backend *be, const LoraSet *ls, int layer, LoraModule module, const void *Xw, int ldx,
                              float *a_out, int N, int train, uint64_t key);
const float *lora_ops_grads_wf(Backend *be, LoraSet *ls, int layer, LoraModule module, const float *X, const void *Xw,
                               int ldx, const float *dY, const void *dYw, int ldy, const float *a_saved, int N,
                               uint64_t key, float *da);

#endif
