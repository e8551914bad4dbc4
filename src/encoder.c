// encoder.c: BERT / DeBERTa-v2 sequence classifiers with LoRA, forward and backward over the op
// table (weights, head and activation memory: encoder_load.c).
//
// Embeddings: BERT   x = LN(word[ids] + type[type_ids] + pos[t])
//             DeBERTa x = LN(word[ids] (+ pos[t]) (+ type[type_ids])) * mask
// Per layer (post-LN; N = B*T tokens, C hidden, I intermediate; every Linear has a bias):
//   q, k, v = x_in W^T + b (+ LoRA)             ctx = attention(q, k, v [, pq, pk])
//   a_sum = ctx Wo^T + bo (+ LoRA) + x_in       x_mid = LN1(a_sum)
//   u = x_mid Wi^T + bi (+ LoRA), h = gelu(u)   f_sum = h Wout^T + bout (+ LoRA) + x_mid
//   x_out = LN2(f_sum)
// DeBERTa's relative attention adds c2p (q . pk) and p2c (k . pq) terms, pq / pk being the query /
// key projections of the normed relative embeddings rel [P, C] (with share_att_key through
// query_proj / key_proj, LoRA included, so those adapters also train through rel).
// Head: token 0 -> pooler dense + tanh (BERT) / pooler_hidden_act (DeBERTa), frozen ->
// classifier (weight + bias, trained).
#include "actlora/encoder.h"

#include <stdio.h>
#include <string.h>

#include "actlora/common.h"
#include "actlora/lora_ops.h"
#include "actlora/rng.h"
#include "encoder_internal.h"

const LoraNaming LORA_NAMING_BERT = {
    .layer_fmt = "bert.encoder.layer.%d.",
    .module_path = {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                    NULL, "intermediate.dense", "output.dense"},
    .module_name = {"query", "key", "value", "attention.output.dense", NULL, "intermediate.dense", "output.dense"},
    .head_weight = "classifier.weight",
    .head_bias = "classifier.bias",
};

const LoraNaming LORA_NAMING_DEBERTA = {
    .layer_fmt = "deberta.encoder.layer.%d.",
    .module_path = {"attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
                    "attention.output.dense", NULL, "intermediate.dense", "output.dense"},
    .module_name = {"query_proj", "key_proj", "value_proj", "attention.output.dense", NULL, "intermediate.dense",
                    "output.dense"},
    .head_weight = "classifier.weight",
    .head_bias = "classifier.bias",
};

// Dropout key of the positional LoRA path (query_proj / key_proj applied to rel): distinct from the
// token path's, as PEFT draws a fresh dropout mask for each call of the adapted Linear.
static uint64_t pos_key(uint64_t key) { return rng_key(key, 0x9051E1ULL); }

static EncActs *acts_for(EncImpl *e, int l) {
    return l >= e->saved_from ? &e->acts[l - e->saved_from] : &e->acts[e->n_sets - 1];
}

// ---------------------------------------------------------------------------- forward

// One layer: a->x_in -> out (out may alias a->x_in: it is written only after x_in is consumed).
static void block_forward(EncImpl *e, Backend *be, const LoraSet *ls, int l, EncActs *a, float *out, int B, int T,
                          int train, uint64_t key) {
    const EncLayer *w = &e->layers[l];
    int N = B * T, C = e->C, I = e->I;
    // HF order: (x W^T + b) + LoRA; q, k, v share x_in (rounded to the weight format once)
    const void *wqkv[3] = {w->wq, w->wk, w->wv};
    int nqkv[3] = {C, C, C};
    float *yqkv[3] = {a->q, a->k, a->v};
    be->wgemm_multi(be, 3, N, C, a->x_in, wqkv, nqkv, yqkv);
    be->bias_add(be, a->q, w->bq, N, C);
    be->bias_add(be, a->k, w->bk, N, C);
    be->bias_add(be, a->v, w->bv, N, C);
    lora_ops_forward(be, ls, l, LORA_Q, a->x_in, a->q, a->lora_a[LORA_Q], N, train, key);
    lora_ops_forward(be, ls, l, LORA_K, a->x_in, a->k, a->lora_a[LORA_K], N, train, key);
    lora_ops_forward(be, ls, l, LORA_V, a->x_in, a->v, a->lora_a[LORA_V], N, train, key);
    const float *pq = NULL, *pk = NULL;
    if (e->rel_on) {
        uint64_t pkey = pos_key(key);
        size_t pbytes = (size_t)e->P * C * sizeof(float);
        if (e->p2c) {
            pq = w->pq_base;
            if (a->pq) {  // share_att_key with a query_proj adapter: LoRA on rel too
                be->copy(be, a->pq, w->pq_base, pbytes);
                lora_ops_forward(be, ls, l, LORA_Q, e->rel, a->pq, a->lora_pa_q, e->P, train, pkey);
                pq = a->pq;
            }
        }
        if (e->c2p) {
            pk = w->pk_base;
            if (a->pk) {
                be->copy(be, a->pk, w->pk_base, pbytes);
                lora_ops_forward(be, ls, l, LORA_K, e->rel, a->pk, a->lora_pa_k, e->P, train, pkey);
                pk = a->pk;
            }
        }
    }
    be->attention_enc_fwd(be, a->ctx, a->probs, a->q, a->k, a->v, pq, pk, (pq || pk) ? e->d_idx : NULL, e->d_mask, B,
                          T, e->H, e->D, e->P, e->scale);
    be->wgemm(be, 1, N, C, C, 1.0f, a->ctx, w->wo, 0.0f, a->a_sum);
    be->bias_add(be, a->a_sum, w->bo, N, C);
    lora_ops_forward(be, ls, l, LORA_O, a->ctx, a->a_sum, a->lora_a[LORA_O], N, train, key);
    be->add(be, a->a_sum, a->x_in, (size_t)N * C);
    be->layernorm_fwd(be, a->x_mid, a->mean1, a->rstd1, a->a_sum, w->ln1_w, w->ln1_b, N, C, e->eps);
    be->wgemm(be, 1, N, I, C, 1.0f, a->x_mid, w->wi, 0.0f, a->u);
    be->bias_add(be, a->u, w->bi, N, I);
    lora_ops_forward(be, ls, l, LORA_UP, a->x_mid, a->u, a->lora_a[LORA_UP], N, train, key);
    be->gelu_fwd(be, a->h, a->u, (size_t)N * I);
    be->wgemm(be, 1, N, C, I, 1.0f, a->h, w->wout, 0.0f, a->f_sum);
    be->bias_add(be, a->f_sum, w->bout, N, C);
    lora_ops_forward(be, ls, l, LORA_DOWN, a->h, a->f_sum, a->lora_a[LORA_DOWN], N, train, key);
    be->add(be, a->f_sum, a->x_mid, (size_t)N * C);
    be->layernorm_fwd(be, out, a->mean2, a->rstd2, a->f_sum, w->ln2_w, w->ln2_b, N, C, e->eps);
}

// Uploads the batch (ids, mask, token types, positions, relative index, labels) after checking it.
static void upload_batch(EncImpl *e, Backend *be, const Batch *b) {
    int B = b->B, T = b->T, N = B * T;
    check(B <= e->cap_B && T <= e->cap_T, "batch [%d, %d] exceeds the activation memory planned for [%d, %d]", B, T,
          e->cap_B, e->cap_T);
    for (int i = 0; i < N; i++)
        check(b->ids[i] >= 0 && b->ids[i] < e->V, "token id %d at position %d is outside the vocabulary (0..%d)",
              b->ids[i], i, e->V - 1);
    for (int i = 0; i < B; i++)
        check(b->mask[i * T] != 0, "batch row %d does not start with a real token (the encoder pools token 0; "
              "sequences must be right-padded)", i);
    be->upload(be, e->d_ids, b->ids, (size_t)N * sizeof(int32_t));
    be->upload(be, e->d_mask, b->mask, (size_t)N * sizeof(int32_t));
    if (e->wtt) {
        if (b->type_ids) {
            for (int i = 0; i < N; i++)
                check(b->type_ids[i] >= 0 && b->type_ids[i] < e->type_vocab,
                      "token type id %d at position %d is outside the model's type_vocab_size %d", b->type_ids[i], i,
                      e->type_vocab);
            be->upload(be, e->d_type, b->type_ids, (size_t)N * sizeof(int32_t));
        } else {
            be->zero(be, e->d_type, (size_t)N * sizeof(int32_t));
        }
    }
    if (e->wpe && e->pos_T != T) {  // positions 0..T-1 of every row ([cap_B, T] layout)
        for (int i = 0; i < e->cap_B * T; i++) e->h_tmp[i] = i % T;
        be->upload(be, e->d_pos, e->h_tmp, (size_t)e->cap_B * T * sizeof(int32_t));
        e->pos_T = T;
    }
    if (e->rel_on && e->idx_T != T) {
        encoder_relpos_index(e->h_tmp, T, e->span, e->buckets, e->max_rel);
        be->upload(be, e->d_idx, e->h_tmp, (size_t)T * T * sizeof(int32_t));
        e->idx_T = T;
    }
    if (e->K > 1) be->upload(be, e->d_labels_i, b->labels_i, (size_t)B * sizeof(int32_t));
    else be->upload(be, e->d_labels_f, b->labels_f, (size_t)B * sizeof(float));
}

double encoder_forward(Encoder *m, Backend *be, const LoraSet *ls, const Batch *b, int train, float grad_scale,
                       uint64_t dropout_key, CalibStats *stats) {
    EncImpl *e = m->impl;
    check(e->acts, "internal: encoder_forward before encoder_alloc_acts");
    check(ls->lowest_layer >= e->saved_from && ls->num_labels == e->K,
          "internal: the activation memory was planned for adapters from layer %d and %d labels, the LoRA set has "
          "them from layer %d and %d labels (call encoder_alloc_acts again)", e->saved_from, e->K, ls->lowest_layer,
          ls->num_labels);
    int B = b->B, T = b->T, N = B * T, L = e->L, C = e->C, I = e->I, K = e->K;
    upload_batch(e, be, b);

    float *x = acts_for(e, 0)->x_in;
    be->wembedding_fwd(be, x, e->d_ids, e->wte, N, C);
    if (e->deberta) {
        if (e->wpe) be->embedding_add(be, x, e->d_pos, e->wpe, N, C);
        if (e->wtt) be->embedding_add(be, x, e->d_type, e->wtt, N, C);
    } else {
        if (e->wtt) be->embedding_add(be, x, e->d_type, e->wtt, N, C);
        be->embedding_add(be, x, e->d_pos, e->wpe, N, C);
    }
    be->layernorm_fwd(be, x, e->emb_mean, e->emb_rstd, x, e->emb_ln_w, e->emb_ln_b, N, C, e->eps);
    if (e->deberta) be->mask_rows(be, x, e->d_mask, N, C);

    for (int l = 0; l < L; l++) {
        EncActs *a = acts_for(e, l);
        float *out = l + 1 == L ? e->x_final : acts_for(e, l + 1)->x_in;
        double *row = stats ? stats->sums + (size_t)l * CALIB_NSTAT : NULL;
        if (row) {  // Q/K/V read the layer input (probed before out may overwrite it)
            double n_in = be->row_norm_sum(be, a->x_in, e->d_mask, N, C);
            row[1 + LORA_Q] += n_in;
            row[1 + LORA_K] += n_in;
            row[1 + LORA_V] += n_in;
        }
        block_forward(e, be, ls, l, a, out, B, T, train, dropout_key);
        if (row) {
            row[0] += be->row_norm_sum(be, out, e->d_mask, N, C);
            row[1 + LORA_O] += be->row_norm_sum(be, a->ctx, e->d_mask, N, C);
            row[1 + LORA_UP] += be->row_norm_sum(be, a->x_mid, e->d_mask, N, C);
            row[1 + LORA_DOWN] += be->row_norm_sum(be, a->h, e->d_mask, N, I);
        }
    }
    if (stats) stats->tokens += (double)b->n_tokens;

    be->pool_last_fwd(be, e->pooled0, e->x_final, e->d_last, B, T, C);  // d_last = 0: the first token
    be->wgemm(be, 1, B, C, C, 1.0f, e->pooled0, e->pool_w, 0.0f, e->pre);
    be->bias_add(be, e->pre, e->pool_b, B, C);
    if (e->pool_tanh) be->tanh_fwd(be, e->pooled, e->pre, (size_t)B * C);
    else be->gelu_fwd(be, e->pooled, e->pre, (size_t)B * C);
    be->gemm(be, 0, 1, B, K, C, 1.0f, e->pooled, ls->params + ls->head_off, 0.0f, e->logits);
    be->bias_add(be, e->logits, ls->params + ls->head_bias_off, B, K);
    double loss_sum = 0.0;
    be->loss_fwd_bwd(be, &loss_sum, e->dlogits, e->logits, e->d_labels_i, e->d_labels_f, B, K,
                     train ? grad_scale : 0.0f);
    return loss_sum;
}

// ---------------------------------------------------------------------------- backward

void encoder_backward(Encoder *m, Backend *be, LoraSet *ls, const Batch *b, uint64_t key) {
    EncImpl *e = m->impl;
    int B = b->B, T = b->T, N = B * T, L = e->L, C = e->C, I = e->I, K = e->K, P = e->P;
    // classifier: logits = pooled W^T + bias
    const float *W = ls->params + ls->head_off;
    be->gemm(be, 1, 0, K, C, B, 1.0f, e->dlogits, e->pooled, 1.0f, ls->grads + ls->head_off);
    be->bias_grad(be, ls->grads + ls->head_bias_off, e->dlogits, B, K);
    if (ls->lowest_layer >= L) return;  // only the head is trained
    be->gemm(be, 0, 0, B, C, K, 1.0f, e->dlogits, W, 0.0f, e->dpooled);
    if (e->pool_tanh) be->tanh_bwd(be, e->dpre, e->dpooled, e->pooled, (size_t)B * C);
    else be->gelu_bwd(be, e->dpre, e->dpooled, e->pre, (size_t)B * C);
    be->wgemm(be, 0, B, C, C, 1.0f, e->dpre, e->pool_w, 0.0f, e->dpooled0);
    be->zero(be, e->dres, (size_t)N * C * sizeof(float));
    be->pool_last_bwd(be, e->dres, e->dpooled0, e->d_last, B, T, C);

    float *da = e->lora_da;
    for (int l = L - 1; l >= ls->lowest_layer; l--) {
        EncActs *a = acts_for(e, l);
        const EncLayer *w = &e->layers[l];
        int lowest = l == ls->lowest_layer;
        int has_q = lora_find(ls, l, LORA_Q) >= 0, has_k = lora_find(ls, l, LORA_K) >= 0,
            has_v = lora_find(ls, l, LORA_V) >= 0, has_o = lora_find(ls, l, LORA_O) >= 0;
        int need_att = !lowest || has_q || has_k || has_v || has_o;  // anything to learn below the MLP?
        int need_qkv = !lowest || has_q || has_k || has_v;
        // dres = d(x_out); LayerNorm 2: dfs = d(f_sum)
        be->zero(be, e->dfs, (size_t)N * C * sizeof(float));
        be->layernorm_bwd(be, e->dfs, e->dres, a->f_sum, w->ln2_w, a->mean2, a->rstd2, N, C);
        // output.dense: f_sum = h Wout^T + bout + x_mid
        be->wgemm(be, 0, N, I, C, 1.0f, e->dfs, w->wout, 0.0f, e->dh);
        lora_ops_backward(be, ls, l, LORA_DOWN, a->h, e->dfs, a->lora_a[LORA_DOWN], e->dh, N, key, da);
        be->gelu_bwd(be, e->du, e->dh, a->u, (size_t)N * I);
        // intermediate.dense: u = x_mid Wi^T + bi; dfs becomes d(x_mid) (residual + this path)
        if (need_att) be->wgemm(be, 0, N, C, I, 1.0f, e->du, w->wi, 1.0f, e->dfs);
        lora_ops_backward(be, ls, l, LORA_UP, a->x_mid, e->du, a->lora_a[LORA_UP], need_att ? e->dfs : NULL, N, key,
                          da);
        if (!need_att) break;
        // LayerNorm 1: dres = d(a_sum)
        be->zero(be, e->dres, (size_t)N * C * sizeof(float));
        be->layernorm_bwd(be, e->dres, e->dfs, a->a_sum, w->ln1_w, a->mean1, a->rstd1, N, C);
        // attention.output.dense: a_sum = ctx Wo^T + bo + x_in; dfs becomes d(ctx)
        if (need_qkv) be->wgemm(be, 0, N, C, C, 1.0f, e->dres, w->wo, 0.0f, e->dfs);
        lora_ops_backward(be, ls, l, LORA_O, a->ctx, e->dres, a->lora_a[LORA_O], need_qkv ? e->dfs : NULL, N, key,
                          da);
        if (!need_qkv) break;
        const float *pq = NULL, *pk = NULL;
        if (e->rel_on) {
            if (e->p2c) pq = a->pq ? a->pq : w->pq_base;
            if (e->c2p) pk = a->pk ? a->pk : w->pk_base;
        }
        be->attention_enc_bwd(be, e->dq, e->dk, e->dv, pq ? e->dpq : NULL, pk ? e->dpk : NULL, e->dfs, a->probs, a->q,
                              a->k, a->v, pq, pk, (pq || pk) ? e->d_idx : NULL, B, T, e->H, e->D, P, e->scale);
        // q, k, v = x_in W^T + b: dres becomes d(x_in) (residual + the three projections)
        float *dx = lowest ? NULL : e->dres;
        if (!lowest) {
            be->wgemm(be, 0, N, C, C, 1.0f, e->dq, w->wq, 1.0f, e->dres);
            be->wgemm(be, 0, N, C, C, 1.0f, e->dk, w->wk, 1.0f, e->dres);
            be->wgemm(be, 0, N, C, C, 1.0f, e->dv, w->wv, 1.0f, e->dres);
        }
        lora_ops_backward(be, ls, l, LORA_Q, a->x_in, e->dq, a->lora_a[LORA_Q], dx, N, key, da);
        lora_ops_backward(be, ls, l, LORA_K, a->x_in, e->dk, a->lora_a[LORA_K], dx, N, key, da);
        lora_ops_backward(be, ls, l, LORA_V, a->x_in, e->dv, a->lora_a[LORA_V], dx, N, key, da);
        // the positional path of query_proj / key_proj (share_att_key): rel is frozen, no input gradient
        if (a->pq)
            lora_ops_backward(be, ls, l, LORA_Q, e->rel, e->dpq, a->lora_pa_q, NULL, P, pos_key(key), da);
        if (a->pk)
            lora_ops_backward(be, ls, l, LORA_K, e->rel, e->dpk, a->lora_pa_k, NULL, P, pos_key(key), da);
    }
}
