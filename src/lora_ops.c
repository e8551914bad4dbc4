// lora_ops.c: one LoRA adapter's forward and backward over the op table (lora_ops.h).
#include "actlora/lora_ops.h"

#include "actlora/common.h"

// The adapter on (layer, module), or NULL; one with no a_out buffer is an internal error (the activations
// were planned for another LoRA set).
static const LoraAdapter *planned_adapter(const LoraSet *ls, int layer, LoraModule module, const float *a_out) {
    int idx = lora_find(ls, layer, module);
    if (idx < 0) return NULL;
    check(a_out != NULL, "internal: layer %d has an adapter the activation memory was not planned for "
          "(alloc_acts with another LoRA set)", layer);
    return &ls->ad[idx];
}

// C = alpha op(A) op(B) + beta C through gemm when both operands are fp32 (contiguous), else gemm_wf
static void any_gemm(Backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, const void *Aw,
                     int lda, const float *B, const void *Bw, int ldb, float beta, float *C) {
    if (A && B) be->gemm(be, ta, tb, M, N, K, alpha, A, B, beta, C);
    else be->gemm_wf(be, ta, tb, M, N, K, alpha, A ? (const void *)A : Aw, lda, A == NULL, B ? (const void *)B : Bw,
                     ldb, B == NULL, beta, C);
}

// a_out = dropout(X) A^T for an input X [N, in] with row stride ldx (0: in, contiguous), fp32 (x_wf 0) or in
// the weight format
static const float *down_any(Backend *be, const LoraSet *ls, int layer, LoraModule module, const void *X, int ldx,
                             int x_wf, float *a_out, int N, int train, uint64_t key) {
    const LoraAdapter *ad = planned_adapter(ls, layer, module, a_out);
    if (!ad) return NULL;
    const float *A = ls->params + ad->a_off;
    if (ldx <= 0) ldx = ad->in;
    if (train && ls->dropout > 0.0f)
        be->lora_down_dropout(be, a_out, X, ldx, x_wf, A, N, ad->in, ls->r, ls->dropout,
                              lora_ops_key(key, ad->layer, ad->module));
    else if (x_wf)
        be->gemm_wf(be, 0, 1, N, ls->r, ad->in, 1.0f, X, ldx, 1, A, ad->in, 0, 0.0f, a_out);
    else
        be->gemm(be, 0, 1, N, ls->r, ad->in, 1.0f, (const float *)X, A, 0.0f, a_out);
    return a_out;
}

const float *lora_ops_down(Backend *be, const LoraSet *ls, int layer, LoraModule module, const float *X,
                           float *a_out, int N, int train, uint64_t key) {
    return down_any(be, ls, layer, module, X, 0, 0, a_out, N, train, key);
}

const float *lora_ops_down_wf(Backend *be, const LoraSet *ls, int layer, LoraModule module, const void *Xw, int ldx,
                              float *a_out, int N, int train, uint64_t key) {
    return down_any(be, ls, layer, module, Xw, ldx, 1, a_out, N, train, key);
}

void lora_ops_forward(Backend *be, const LoraSet *ls, int layer, LoraModule module, const float *X, float *Y,
                      float *a_out, int N, int train, uint64_t key) {
    const float *a = lora_ops_down(be, ls, layer, module, X, a_out, N, train, key);
    if (!a) return;
    const LoraAdapter *ad = &ls->ad[lora_find(ls, layer, module)];
    be->gemm(be, 0, 1, N, ad->out, ls->r, ls->scaling, a, ls->params + ad->b_off, 1.0f, Y);
}

const float *lora_ops_grads_wf(Backend *be, LoraSet *ls, int layer, LoraModule module, const float *X, const void *Xw,
                               int ldx, const float *dY, const void *dYw, int ldy, const float *a_saved, int N,
                               uint64_t key, float *da) {
    check((X == NULL) != (Xw == NULL) && (dY == NULL) != (dYw == NULL),
          "internal: lora_ops_grads_wf takes exactly one of X / Xw and one of dY / dYw");
    int idx = lora_find(ls, layer, module);
    if (idx < 0) return NULL;
    const LoraAdapter *ad = &ls->ad[idx];
    const float *Bw = ls->params + ad->b_off;
    float *dA = ls->grads + ad->a_off, *dB = ls->grads + ad->b_off;
    int r = ls->r, ldo = dY ? ad->out : ldy;
    any_gemm(be, 1, 0, ad->out, r, N, ls->scaling, dY, dYw, ldo, a_saved, NULL, r, 1.0f, dB);
    any_gemm(be, 0, 0, N, r, ad->out, ls->scaling, dY, dYw, ldo, Bw, NULL, r, 0.0f, da);
    if (ls->dropout > 0.0f)  // the forward's mask, drawn again inside the product
        be->lora_grad_a_dropout(be, dA, da, X ? (const void *)X : Xw, X ? ad->in : ldx, X == NULL, N, ad->in, r,
                                ls->dropout, lora_ops_key(key, ad->layer, ad->module));
    else
        any_gemm(be, 1, 0, r, ad->in, N, 1.0f, da, NULL, r, X, Xw, X ? ad->in : ldx, 1.0f, dA);
    return da;
}

const float *lora_ops_grads(Backend *be, LoraSet *ls, int layer, LoraModule module, const float *X, const float *dY,
                            const float *a_saved, int N, uint64_t key, float *da) {
    return lora_ops_grads_wf(be, ls, layer, module, X, NULL, 0, dY, NULL, 0, a_saved, N, key, da);
}

void lora_ops_dx(Backend *be, const LoraSet *ls, int layer, LoraModule module, const float *da, float *dX, int N,
                 uint64_t key) {
    int idx = lora_find(ls, layer, module);
    if (idx < 0) return;
    const LoraAdapter *ad = &ls->ad[idx];
    const float *A = ls->params + ad->a_off;
    if (ls->dropout > 0.0f)  // the same mask scales the input gradient
        be->lora_dx_dropout(be, dX, da, A, N, ad->in, ls->r, ls->dropout, lora_ops_key(key, ad->layer, ad->module));
    else
        be->gemm(be, 0, 0, N, ad->in, ls->r, 1.0f, da, A, 1.0f, dX);
}

void lora_ops_backward(Backend *be, LoraSet *ls, int layer, LoraModule module, const float *X, const float *dY,
                       const float *a_saved, float *dX, int N, uint64_t key, float *da) {
    const float *d = lora_ops_grads(be, ls, layer, module, X, dY, a_saved, N, key, da);
    if (d && dX) lora_ops_dx(be, ls, layer, module, d, dX, N, key);
}
