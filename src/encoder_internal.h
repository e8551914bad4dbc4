// encoder_internal.h: the private state behind Encoder.impl, shared by encoder_load.c (weights,
// activation memory, head) and encoder.c (forward, backward). Not part of the interface.
#ifndef ACTLORA_ENCODER_INTERNAL_H
#define ACTLORA_ENCODER_INTERNAL_H

#include <stdint.h>

#include "actlora/encoder.h"

// Frozen weights of one layer (backend memory). Linear weights [out, in] are in the backend's weight
// format (void *: only wgemm reads them); biases and LayerNorm weights are fp32.
typedef struct {
    void *wq, *wk, *wv, *wo, *wi, *wout;  // query/key/value(_proj), attention.output.dense [C, C];
                                          // intermediate.dense [I, C]; output.dense [C, I]
    float *bq, *bk, *bv, *bo, *bi, *bout; // their biases
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b; // attention.output.LayerNorm, output.LayerNorm
    // DeBERTa relative attention: the positional projections of the (normed) relative embeddings
    // without LoRA, [P, C] each (NULL when that term is off): pq_base = rel Wq^T + bq and
    // pk_base = rel Wk^T + bk with share_att_key, else pos_query_proj(rel) / pos_key_proj(rel).
    float *pq_base, *pk_base;
} EncLayer;

// Activations of one layer (N = B*T rows).
typedef struct {
    float *x_in;                          // [N, C] layer input
    float *q, *k, *v;                     // [N, C]
    float *probs;                         // [B, H, T, T]
    float *ctx;                           // [N, C] attention context (attention.output.dense input)
    float *a_sum;                         // [N, C] ctx Wo^T + bo + x_in (LayerNorm 1 input)
    float *mean1, *rstd1;                 // [N]
    float *x_mid;                         // [N, C] LayerNorm 1 output (intermediate.dense input)
    float *u, *h;                         // [N, I] intermediate.dense output, h = gelu(u) (output.dense input)
    float *f_sum;                         // [N, C] h Wout^T + bout + x_mid (LayerNorm 2 input)
    float *mean2, *rstd2;                 // [N]
    float *lora_a[LORA_NUM_MODULES];      // [N, r] LoRA A-projections (adapted modules only)
    // DeBERTa share_att_key with a Q / K adapter on the layer: the positional projections with LoRA
    // [P, C] and their LoRA A-projections [P, r]; NULL otherwise (the layer uses pq_base / pk_base).
    float *pq, *pk, *lora_pa_q, *lora_pa_k;
} EncActs;

typedef struct {
    int deberta;                          // 0 BERT, 1 DeBERTa-v2
    int L, C, I, H, D, V, K;
    float eps, scale;                     // LayerNorm eps; attention score scale
    float init_std;                       // initializer_range (config.json; 0.02 when absent)
    // embeddings: word table in the weight format; position / token-type tables fp32 (embedding_add)
    void *wte;
    float *wpe, *wtt, *emb_ln_w, *emb_ln_b;  // wpe / wtt NULL when the model has none
    int max_pos, type_vocab;
    EncLayer *layers;
    // DeBERTa relative attention
    int rel_on, c2p, p2c, share_att_key;
    int span, P, buckets, max_rel;        // P = 2 * span rows of rel
    float *rel;                           // [P, C] relative embeddings after encoder.LayerNorm
    // pooler (frozen) and its activation
    void *pool_w;                         // [C, C] (weight format)
    float *pool_b;                        // [C]
    int pool_tanh;
    // activation memory for batches up to [cap_B, cap_T]
    int cap_B, cap_T, saved_from;         // layers >= saved_from keep their activations
    int n_sets;
    EncActs *acts;                        // [L - saved_from] saved sets, then 1 scratch set if saved_from > 0
    float *x_final;                       // [N, C]
    float *emb_mean, *emb_rstd;           // [N] embedding LayerNorm statistics (not needed for backward)
    float *pooled0, *pre, *pooled;        // [B, C]: token 0, pooler dense output, pooler activation output
    float *logits, *dlogits;              // [B, K]
    float *dpooled, *dpre, *dpooled0;     // [B, C]
    // backward scratch
    float *dres, *dfs, *dh, *du, *dq, *dk, *dv, *dpq, *dpk, *lora_da;
    // batch on the backend
    int32_t *d_ids, *d_mask, *d_pos, *d_type, *d_last, *d_labels_i, *d_idx;
    float *d_labels_f;
    int pos_T, idx_T;                     // T that d_pos / d_idx were built for (0: none)
    int32_t *h_tmp;                       // host [cap_B * cap_T] (position ids, relative index)
} EncImpl;

#endif
