// lora_ops.c: one LoRA adapter's forward and backward over the op table (lora_ops.h).
#include "actlora/lora_ops.h"

#include "actlora/common.h"

void lora_ops_forward(Backend *be, const LoraSet *ls, int layer, LoraModule module, const float *X, float *Y,
                      float *a_out, int N, int train, uint64_t key, float *scratch) {
    int idx = lora_find(ls, layer, module);
    if (idx < 0) return;
    check(a_out != NULL, "internal: layer %d has an adapter the activation memory was not planned for "
          "(alloc_acts with another LoRA set)", layer);
    const LoraAdapter *ad = &ls->ad[idx];
    const float *A = ls->params + ad->a_off, *Bw = ls->params + ad->b_off;
    const float *Xd = X;
    if (train && ls->dropout > 0.0f) {
        be->dropout(be, scratch, X, (size_t)N * (size_t)ad->in, ls->dropout, lora_ops_key(key, ad->layer, ad->module));
        Xd = scratch;
    }
    be->gemm(be, 0, 1, N, ls->r, ad->in, 1.0f, Xd, A, 0.0f, a_out);
    be->gemm(be, 0, 1, N, ad->out, ls->r, ls->scaling, a_out, Bw, 1.0f, Y);
}

void lora_ops_backward(Backend *be, LoraSet *ls, int layer, LoraModule module, const float *X, const float *dY,
                       const float *a_saved, float *dX, int N, uint64_t key, float *da, float *tmp) {
    int idx = lora_find(ls, layer, module);
    if (idx < 0) return;
    const LoraAdapter *ad = &ls->ad[idx];
    const float *A = ls->params + ad->a_off, *Bw = ls->params + ad->b_off;
    float *dA = ls->grads + ad->a_off, *dB = ls->grads + ad->b_off;
    int r = ls->r;
    size_t n_in = (size_t)N * (size_t)ad->in;
    uint64_t k = lora_ops_key(key, ad->layer, ad->module);
    be->gemm(be, 1, 0, ad->out, r, N, ls->scaling, dY, a_saved, 1.0f, dB);
    be->gemm(be, 0, 0, N, r, ad->out, ls->scaling, dY, Bw, 0.0f, da);
    const float *Xd = X;
    if (ls->dropout > 0.0f) {
        be->dropout(be, tmp, X, n_in, ls->dropout, k);
        Xd = tmp;
    }
    be->gemm(be, 1, 0, r, ad->in, N, 1.0f, da, Xd, 1.0f, dA);
    if (!dX) return;
    if (ls->dropout > 0.0f) {  // the same mask scales the input gradient
        be->gemm(be, 0, 0, N, ad->in, r, 1.0f, da, A, 0.0f, tmp);
        be->dropout(be, tmp, tmp, n_in, ls->dropout, k);
        be->add(be, dX, tmp, n_in);
    } else {
        be->gemm(be, 0, 0, N, ad->in, r, 1.0f, da, A, 1.0f, dX);
    }
}
