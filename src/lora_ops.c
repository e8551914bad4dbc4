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

const float *lora_ops_down(Backend *be, const LoraSet *ls, int layer, LoraModule module, const float *X,
                           float *a_out, int N, int train, uint64_t key, float *scratch) {
    const LoraAdapter *ad = planned_adapter(ls, layer, module, a_out);
    if (!ad) return NULL;
    const float *Xd = X;
    if (train && ls->dropout > 0.0f) {
        be->dropout(be, scratch, X, (size_t)N * (size_t)ad->in, ls->dropout, lora_ops_key(key, ad->layer, ad->module));
        Xd = scratch;
    }
    be->gemm(be, 0, 1, N, ls->r, ad->in, 1.0f, Xd, ls->params + ad->a_off, 0.0f, a_out);
    return a_out;
}

void lora_ops_forward(Backend *be, const LoraSet *ls, int layer, LoraModule module, const float *X, float *Y,
                      float *a_out, int N, int train, uint64_t key, float *scratch) {
    const float *a = lora_ops_down(be, ls, layer, module, X, a_out, N, train, key, scratch);
    if (!a) return;
    const LoraAdapter *ad = &ls->ad[lora_find(ls, layer, module)];
    be->gemm(be, 0, 1, N, ad->out, ls->r, ls->scaling, a, ls->params + ad->b_off, 1.0f, Y);
}

const float *lora_ops_grads(Backend *be, LoraSet *ls, int layer, LoraModule module, const float *X, const float *dY,
                            const float *a_saved, int N, uint64_t key, float *da, float *tmp) {
    int idx = lora_find(ls, layer, module);
    if (idx < 0) return NULL;
    const LoraAdapter *ad = &ls->ad[idx];
    const float *Bw = ls->params + ad->b_off;
    float *dA = ls->grads + ad->a_off, *dB = ls->grads + ad->b_off;
    int r = ls->r;
    be->gemm(be, 1, 0, ad->out, r, N, ls->scaling, dY, a_saved, 1.0f, dB);
    be->gemm(be, 0, 0, N, r, ad->out, ls->scaling, dY, Bw, 0.0f, da);
    const float *Xd = X;
    if (ls->dropout > 0.0f) {
        be->dropout(be, tmp, X, (size_t)N * (size_t)ad->in, ls->dropout, lora_ops_key(key, ad->layer, ad->module));
        Xd = tmp;
    }
    be->gemm(be, 1, 0, r, ad->in, N, 1.0f, da, Xd, 1.0f, dA);
    return da;
}

void lora_ops_dx(Backend *be, const LoraSet *ls, int layer, LoraModule module, const float *da, float *dX, int N,
                 uint64_t key, float *tmp) {
    int idx = lora_find(ls, layer, module);
    if (idx < 0) return;
    const LoraAdapter *ad = &ls->ad[idx];
    const float *A = ls->params + ad->a_off;
    size_t n_in = (size_t)N * (size_t)ad->in;
    if (ls->dropout > 0.0f) {  // the same mask scales the input gradient
        be->gemm(be, 0, 0, N, ad->in, ls->r, 1.0f, da, A, 0.0f, tmp);
        be->dropout(be, tmp, tmp, n_in, ls->dropout, lora_ops_key(key, ad->layer, ad->module));
        be->add(be, dX, tmp, n_in);
    } else {
        be->gemm(be, 0, 0, N, ad->in, ls->r, 1.0f, da, A, 1.0f, dX);
    }
}

void lora_ops_backward(Backend *be, LoraSet *ls, int layer, LoraModule module, const float *X, const float *dY,
                       const float *a_saved, float *dX, int N, uint64_t key, float *da, float *tmp) {
    const float *d = lora_ops_grads(be, ls, layer, module, X, dY, a_saved, N, key, da, tmp);
    if (d && dX) lora_ops_dx(be, ls, layer, module, d, dX, N, key, tmp);
}

// ---------------------------------------------------------------------------- operands in the weight format

const float *lora_ops_down_wf(Backend *be, const LoraSet *ls, int layer, LoraModule module, const void *Xw, int ldx,
                              float *a_out, int N, int train, uint64_t key, void *scratch_w) {
    const LoraAdapter *ad = planned_adapter(ls, layer, module, a_out);
    if (!ad) return NULL;
    const void *Xd = Xw;
    int ld = ldx;
    if (train && ls->dropout > 0.0f) {
        be->dropout_wf(be, scratch_w, ad->in, Xw, ldx, N, ad->in, ls->dropout, lora_ops_key(key, ad->layer, ad->module));
        Xd = scratch_w;
        ld = ad->in;
    }
    be->gemm_wf(be, 0, 1, N, ls->r, ad->in, 1.0f, Xd, ld, 1, ls->params + ad->a_off, ad->in, 0, 0.0f, a_out);
    return a_out;
}

// C = alpha op(A) op(B) + beta C through gemm when both operands are fp32 (contiguous), else gemm_wf
static void any_gemm(Backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, const void *Aw,
                     int lda, const float *B, const void *Bw, int ldb, float beta, float *C) {
    if (A && B) be->gemm(be, ta, tb, M, N, K, alpha, A, B, beta, C);
    else be->gemm_wf(be, ta, tb, M, N, K, alpha, A ? (const void *)A : Aw, lda, A == NULL, B ? (const void *)B : Bw,
                     ldb, B == NULL, beta, C);
}

const float *lora_ops_grads_wf(Backend *be, LoraSet *ls, int layer, LoraModule module, const float *X, const void *Xw,
                               int ldx, const float *dY, const void *dYw, int ldy, const float *a_saved, int N,
                               uint64_t key, float *da, float *tmp) {
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
    if (X) {  // an fp32 input: as lora_ops_grads
        const float *Xd = X;
        if (ls->dropout > 0.0f) {
            be->dropout(be, tmp, X, (size_t)N * (size_t)ad->in, ls->dropout, lora_ops_key(key, ad->layer, ad->module));
            Xd = tmp;
        }
        be->gemm(be, 1, 0, r, ad->in, N, 1.0f, da, Xd, 1.0f, dA);
        return da;
    }
    const void *Xd = Xw;
    int ld = ldx;
    if (ls->dropout > 0.0f) {  // the forward's mask, into tmp in the format
        be->dropout_wf(be, tmp, ad->in, Xw, ldx, N, ad->in, ls->dropout, lora_ops_key(key, ad->layer, ad->module));
        Xd = tmp;
        ld = ad->in;
    }
    be->gemm_wf(be, 1, 0, r, ad->in, N, 1.0f, da, r, 0, Xd, ld, 1, 1.0f, dA);
    return da;
}
