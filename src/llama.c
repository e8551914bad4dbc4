// llama.c: Llama sequence classifier with LoRA, forward and backward over the op table.
//
// Per block (N = B*T tokens, C hidden, I intermediate, H/KVH heads, D head dim):
//   xn1 = rmsnorm(x_in)                       q,k,v = xn1 W^T (+ LoRA), RoPE on q,k
//   att = attention(q, k, v)                  x_mid = x_in + att Wo^T (+ LoRA)
//   xn2 = rmsnorm(x_mid)                      gate, up = xn2 W^T (+ LoRA)
//   h = silu(gate) * up                       x_out = x_mid + h Wd^T (+ LoRA)
// Head: the last real token of each row -> final rmsnorm -> score (HF pools the normed
// hidden state of the last non-pad token; the norm is per token, so pooling first is exact).
#include "actlora/llama.h"
#include "actlora/lora_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/common.h"
#include "actlora/rng.h"

void llama_lora_shapes(const ModelConfig *mc, LoraShapes *s) {
    int C = mc->hidden_size, I = mc->intermediate_size;
    int qd = mc->num_attention_heads * mc->head_dim, kvd = mc->num_key_value_heads * mc->head_dim;
    s->in[LORA_Q] = C;    s->out[LORA_Q] = qd;
    s->in[LORA_K] = C;    s->out[LORA_K] = kvd;
    s->in[LORA_V] = C;    s->out[LORA_V] = kvd;
    s->in[LORA_O] = qd;   s->out[LORA_O] = C;
    s->in[LORA_GATE] = C; s->out[LORA_GATE] = I;
    s->in[LORA_UP] = C;   s->out[LORA_UP] = I;
    s->in[LORA_DOWN] = I; s->out[LORA_DOWN] = C;
}

// ---------------------------------------------------------------------------- loading

// Reads one tensor (or draws it) into freshly allocated backend memory.
// Random weights (model.init = "random"): N(0, 0.02) keyed by the tensor's name, norms 1; drawn
// on the backend (an 8B model's 7.5e9 draws would take minutes on the host).
static float *load_tensor(Backend *be, const HFWeights *w, const char *name, int ndim, int64_t d0, int64_t d1,
                          int random_init, uint64_t seed, int is_norm) {
    int64_t shape[2] = {d0, d1};
    size_t n = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);
    float *dev = be->alloc(be, n * sizeof(float), name);
    if (random_init) {
        be->randn(be, dev, n, is_norm ? 1.0f : 0.0f, is_norm ? 0.0f : 0.02f,
                  rng_key(seed, fnv1a64(FNV64_INIT, name, strlen(name))));
        return dev;
    }
    float *host = xmalloc(n * sizeof(float), name);
    Error err;
    if (hfweights_read_f32(w, name, ndim, shape, host, &err) != 0) die("%s", err.msg);
    be->upload(be, dev, host, n * sizeof(float));
    free(host);
    return dev;
}

// The same for a frozen weight that only feeds wgemm / wembedding_fwd: kept in the backend's weight
// format (bf16 on CUDA by default; backend.h), drawn or converted on the backend. border > 0: a
// bordered weight [d0 + border, d1 + border] (lora.fuse), W in its top-left block, the rest zero
// (weight_set_lora writes the adapter's part).
static void *load_weight(Backend *be, const HFWeights *w, const char *name, int64_t d0, int64_t d1, int random_init,
                         uint64_t seed, int border) {
    int64_t shape[2] = {d0, d1};
    size_t rows = (size_t)d0 + (size_t)border, cols = (size_t)d1 + (size_t)border, n = rows * cols;
    void *dev = be->weight_alloc(be, n, name);
    if (random_init) {  // bordered: the same draw in the W block (the border stays zero)
        uint64_t key = rng_key(seed, fnv1a64(FNV64_INIT, name, strlen(name)));
        if (border > 0) be->weight_randn_2d(be, dev, (int)d0, (int)d1, (int)cols, 0.0f, 0.02f, key);
        else be->weight_randn(be, dev, n, 0.0f, 0.02f, key);
        return dev;
    }
    float *host = xmalloc(n * sizeof(float), name);
    Error err;
    if (hfweights_read_f32(w, name, 2, shape, host, &err) != 0) die("%s", err.msg);
    if (border > 0) {  // spread the rows to the bordered stride, from the last row up (in place)
        for (size_t i = (size_t)d0; i-- > 0;) {
            memmove(host + i * cols, host + i * (size_t)d1, (size_t)d1 * sizeof(float));
            memset(host + i * cols + d1, 0, (size_t)border * sizeof(float));
        }
        memset(host + (size_t)d0 * cols, 0, (n - (size_t)d0 * cols) * sizeof(float));
    }
    be->weight_upload(be, dev, host, n);
    free(host);
    return dev;
}

// RoPE tables in HF's convention, with rope_type "llama3" frequency scaling.
static void rope_tables(const ModelConfig *mc, int T, float *cos_t, float *sin_t) {
    int D = mc->head_dim, half = D / 2;
    for (int i = 0; i < half; i++) {
        double inv = 1.0 / pow(mc->rope_theta, (double)(2 * i) / (double)D);
        if (mc->rope_llama3) {
            double old = (double)mc->rope_original_max_position_embeddings;
            double low_wl = old / mc->rope_low_freq_factor, high_wl = old / mc->rope_high_freq_factor;
            double wl = 2.0 * M_PI / inv;
            if (wl > low_wl) {
                inv = inv / mc->rope_factor;  // low frequencies: fully scaled
            } else if (!(wl < high_wl)) {     // medium: smooth interpolation
                double s = (old / wl - mc->rope_low_freq_factor) /
                           (mc->rope_high_freq_factor - mc->rope_low_freq_factor);
                inv = (1.0 - s) * inv / mc->rope_factor + s * inv;
            }
        }
        for (int t = 0; t < T; t++) {
            cos_t[t * half + i] = (float)cos((double)t * inv);
            sin_t[t * half + i] = (float)sin((double)t * inv);
        }
    }
}

void llama_load(Llama *m, Backend *be, const char *dir, const ModelConfig *mc, int num_labels, int random_init,
                uint64_t seed) {
    llama_load_fused(m, be, dir, mc, num_labels, random_init, seed, 0, NULL);
}

void llama_load_fused(Llama *m, Backend *be, const char *dir, const ModelConfig *mc, int num_labels, int random_init,
                      uint64_t seed, int fuse_r, Progress *progress) {
    memset(m, 0, sizeof *m);
    check(mc->arch == ARCH_LLAMA, "%s: model_type '%s' is not a Llama model", dir, mc->model_type);
    check(fuse_r >= 0, "internal: fuse rank %d", fuse_r);
    m->cfg = *mc;
    m->fuse_r = fuse_r;
    m->num_labels = num_labels;
    HFWeights w = {0};
    if (!random_init) {
        Error err;
        if (hfweights_open(&w, dir, &err) != 0) die("%s", err.msg);
    }
    int L = mc->num_hidden_layers, C = mc->hidden_size, I = mc->intermediate_size, V = mc->vocab_size;
    int qd = mc->num_attention_heads * mc->head_dim, kvd = mc->num_key_value_heads * mc->head_dim;
    m->wte = load_weight(be, &w, "model.embed_tokens.weight", V, C, random_init, seed, 0);  // weight format
    m->norm = load_tensor(be, &w, "model.norm.weight", 1, C, 0, random_init, seed, 1);
    m->layers = xcalloc((size_t)L, sizeof(LlamaLayer), "layers");
    char name[160];
    // norms: fp32 (rmsnorm reads them); projections: the backend's weight format (wgemm reads them)
#define LAYER_NORM(field, suffix)                                                             \
    snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);                             \
    m->layers[l].field = load_tensor(be, &w, name, 1, C, 0, random_init, seed, 1)
#define LAYER_WEIGHT(field, suffix, a, b)                                                     \
    snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);                             \
    m->layers[l].field = load_weight(be, &w, name, a, b, random_init, seed, fuse_r)
    for (int l = 0; l < L; l++) {
        LAYER_NORM(ln1, "input_layernorm.weight");
        LAYER_WEIGHT(wq, "self_attn.q_proj.weight", qd, C);
        LAYER_WEIGHT(wk, "self_attn.k_proj.weight", kvd, C);
        LAYER_WEIGHT(wv, "self_attn.v_proj.weight", kvd, C);
        LAYER_WEIGHT(wo, "self_attn.o_proj.weight", C, qd);
        LAYER_NORM(ln2, "post_attention_layernorm.weight");
        LAYER_WEIGHT(wg, "mlp.gate_proj.weight", I, C);
        LAYER_WEIGHT(wu, "mlp.up_proj.weight", I, C);
        LAYER_WEIGHT(wd, "mlp.down_proj.weight", C, I);
        progress_step(progress, l + 1, L, "layer");
    }
#undef LAYER_NORM
#undef LAYER_WEIGHT
    if (!random_init) hfweights_close(&w);
    m->rope_T = mc->max_position_embeddings;
    size_t rn = (size_t)m->rope_T * (size_t)(mc->head_dim / 2);
    float *c = xmalloc(rn * sizeof(float), "rope cos"), *s = xmalloc(rn * sizeof(float), "rope sin");
    rope_tables(mc, m->rope_T, c, s);
    m->rope_cos = be->alloc(be, rn * sizeof(float), "rope cos");
    m->rope_sin = be->alloc(be, rn * sizeof(float), "rope sin");
    be->upload(be, m->rope_cos, c, rn * sizeof(float));
    be->upload(be, m->rope_sin, s, rn * sizeof(float));
    free(c);
    free(s);
}

void llama_set_act_wf(Llama *m, int on) {
    check(!on || m->fuse_r > 0, "internal: activations in the weight format need the fused (bordered) weights");
    check(!m->acts, "internal: llama_set_act_wf after the activations were allocated");
    m->act_wf = on != 0;
}

void llama_set_att_fused(Llama *m, int on) {
    check(!on || m->act_wf, "internal: the fused attention needs the activations in the weight format");
    check(!m->acts, "internal: llama_set_att_fused after the activations were allocated");
    m->att_fused = on != 0;
}

int llama_init_head(Llama *m, Backend *be, const char *dir, int random_init, LoraSet *ls, uint64_t seed) {
    size_t n = (size_t)m->num_labels * (size_t)m->cfg.hidden_size;
    float *host = xmalloc(n * sizeof(float), "score head");
    int loaded = 0;
    if (!random_init) {
        HFWeights w;
        Error err;
        if (hfweights_open(&w, dir, &err) != 0) die("%s", err.msg);
        const StTensor *t = hfweights_find(&w, "score.weight", NULL);
        if (t && t->ndim == 2 && t->shape[0] == m->num_labels && t->shape[1] == m->cfg.hidden_size) {
            int64_t shape[2] = {m->num_labels, m->cfg.hidden_size};
            if (hfweights_read_f32(&w, "score.weight", 2, shape, host, &err) != 0) die("%s", err.msg);
            loaded = 1;
        }
        hfweights_close(&w);
    }
    if (loaded) be->upload(be, ls->params + ls->head_off, host, n * sizeof(float));
    else be->randn(be, ls->params + ls->head_off, n, 0.0f, 0.02f, rng_key(seed, 0x5c03e));
    free(host);
    return loaded;
}

// ---------------------------------------------------------------------------- activations

void llama_alloc_acts(Llama *m, Backend *be, const LoraSet *ls, int B, int T) {
    llama_free_acts(m, be);  // re-planning (e.g. after calibration) replaces the old buffers
    const ModelConfig *mc = &m->cfg;
    check(T <= m->rope_T, "sequence length %d exceeds the model's max_position_embeddings %d", T, m->rope_T);
    int L = mc->num_hidden_layers, C = mc->hidden_size, I = mc->intermediate_size, K = m->num_labels;
    size_t N = (size_t)B * T, H = mc->num_attention_heads, qd = H * mc->head_dim,
           kvd = (size_t)mc->num_key_value_heads * mc->head_dim, r = (size_t)ls->r;
    m->cap_B = B;
    m->cap_T = T;
    m->saved_from = ls->lowest_layer < L ? ls->lowest_layer : L;
    int n_sets = (L - m->saved_from) + (m->saved_from > 0 ? 1 : 0);
    m->acts = xcalloc((size_t)n_sets, sizeof(LlamaActs), "activation sets");
    size_t bytes = 0;
#define ACT_BYTES(ptr, nbytes)                                             \
    do {                                                                   \
        size_t _b = (size_t)(nbytes);                                      \
        (ptr) = be->alloc(be, _b, #ptr);                                   \
        bytes += _b;                                                       \
    } while (0)
#define ACT(ptr, count) ACT_BYTES(ptr, (size_t)(count) * sizeof(float))
    // the MLP tensors: fp32 [N, I], or in the weight format (act_wf) with the bordered operands' r columns
    size_t mlp_el = m->act_wf ? be->weight_bytes : sizeof(float);
    size_t mlp_ld = m->act_wf ? (size_t)I + (size_t)m->fuse_r : (size_t)I;
    // xn1, xn2: fp32 [N, C], or in the weight format [N, C + r] (act_wf: the operands of their projections);
    // q, k, v and probs: fp32, or in the weight format (act_wf)
    size_t xn_el = mlp_el, xn_ld = m->act_wf ? (size_t)C + (size_t)m->fuse_r : (size_t)C;
    for (int s = 0; s < n_sets; s++) {
        LlamaActs *a = &m->acts[s];
        ACT(a->x_in, N * C);
        ACT(a->rstd1, N);
        ACT_BYTES(a->xn1, N * xn_ld * xn_el);
        ACT_BYTES(a->q, N * qd * xn_el);
        ACT_BYTES(a->k, N * kvd * xn_el);
        ACT_BYTES(a->v, N * kvd * xn_el);
        if (m->att_fused) ACT(a->lse, (size_t)B * H * T);
        else ACT_BYTES(a->probs, (size_t)B * H * T * T * xn_el);
        ACT(a->att, N * qd);
        ACT(a->x_mid, N * C);
        ACT(a->rstd2, N);
        ACT_BYTES(a->xn2, N * xn_ld * xn_el);
        ACT_BYTES(a->gate, N * I * mlp_el);
        ACT_BYTES(a->up, N * I * mlp_el);
        ACT_BYTES(a->h, N * mlp_ld * mlp_el);
        int layer = m->saved_from + s;  // the scratch set (layer >= L) has no adapters
        for (int mod = 0; mod < LORA_NUM_MODULES && layer < L; mod++)
            if (lora_find(ls, layer, (LoraModule)mod) >= 0) ACT(a->lora_a[mod], N * r);
    }
    ACT(m->x_final, N * C);
    ACT(m->pooled, (size_t)B * C);
    ACT(m->rstd_f, B);
    ACT(m->pooled_n, (size_t)B * C);
    ACT(m->logits, (size_t)B * K);
    ACT(m->dlogits, (size_t)B * K);
    ACT(m->dpool, (size_t)B * C);
    ACT(m->dpool_n, (size_t)B * C);
    if (m->saved_from < L) {  // backward scratch only when something below the head is trained
        ACT(m->dres, N * C);
        ACT(m->dxn, N * C);
        ACT(m->dh, N * I);
        ACT_BYTES(m->dgate, N * mlp_ld * mlp_el);
        ACT_BYTES(m->dup, N * mlp_ld * mlp_el);
        ACT(m->datt, N * qd);
        ACT(m->dq, N * qd);
        ACT(m->dk, N * kvd);
        ACT(m->dv, N * kvd);
        ACT(m->lora_da, N * r);
    }
#undef ACT
#undef ACT_BYTES
    m->d_ids = be->alloc(be, N * sizeof(int32_t), "batch ids");
    m->d_mask = be->alloc(be, N * sizeof(int32_t), "batch mask");
    m->d_last = be->alloc(be, (size_t)B * sizeof(int32_t), "batch last index");
    m->d_labels_i = be->alloc(be, (size_t)B * sizeof(int32_t), "batch labels");
    m->d_labels_f = be->alloc(be, (size_t)B * sizeof(float), "batch labels");
    m->last = xmalloc((size_t)B * sizeof(int32_t), "last index");
    m->act_bytes = bytes;
}

void llama_free_acts(Llama *m, Backend *be) {
    if (!m->acts) return;
    int L = m->cfg.num_hidden_layers;
    int n_sets = (L - m->saved_from) + (m->saved_from > 0 ? 1 : 0);
    for (int s = 0; s < n_sets; s++) {
        LlamaActs *a = &m->acts[s];
        float *p[] = {a->x_in, a->rstd1, a->xn1, a->q, a->k, a->v, a->probs, a->lse, a->att,
                      a->x_mid, a->rstd2, a->xn2, a->gate, a->up, a->h};
        for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
            if (p[i]) be->free(be, p[i]);
        for (int mod = 0; mod < LORA_NUM_MODULES; mod++)
            if (a->lora_a[mod]) be->free(be, a->lora_a[mod]);
    }
    free(m->acts);
    float *p[] = {m->x_final, m->pooled, m->rstd_f, m->pooled_n, m->logits, m->dlogits, m->dpool,
                  m->dpool_n, m->dres, m->dxn, m->dh, m->dgate, m->dup, m->datt, m->dq, m->dk,
                  m->dv, m->lora_da, m->d_labels_f};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        if (p[i]) be->free(be, p[i]);
    be->free(be, m->d_ids);
    be->free(be, m->d_mask);
    be->free(be, m->d_last);
    be->free(be, m->d_labels_i);
    free(m->last);
    m->acts = NULL;
    m->x_final = m->pooled = m->rstd_f = m->pooled_n = m->logits = m->dlogits = m->dpool = m->dpool_n = NULL;
    m->dres = m->dxn = m->dh = m->dgate = m->dup = m->datt = m->dq = m->dk = m->dv = NULL;
    m->lora_da = m->d_labels_f = NULL;
    m->d_ids = m->d_mask = m->d_last = m->d_labels_i = m->last = NULL;
    m->act_bytes = 0;
}

void llama_free(Llama *m, Backend *be) {
    llama_free_acts(m, be);
    int L = m->cfg.num_hidden_layers;
    for (int l = 0; l < L && m->layers; l++) {
        LlamaLayer *w = &m->layers[l];
        float *p[] = {w->ln1, w->wq, w->wk, w->wv, w->wo, w->ln2, w->wg, w->wu, w->wd};
        for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) be->free(be, p[i]);
    }
    free(m->layers);
    be->free(be, m->wte);
    be->free(be, m->norm);
    be->free(be, m->rope_cos);
    be->free(be, m->rope_sin);
    memset(m, 0, sizeof *m);
}

// ---------------------------------------------------------------------------- projections

// The frozen weight of a LoRA-targetable module.
static void *proj_weight(const Llama *m, int l, LoraModule mod) {
    const LlamaLayer *w = &m->layers[l];
    void *p[LORA_NUM_MODULES] = {w->wq, w->wk, w->wv, w->wo, w->wg, w->wu, w->wd};
    return p[mod];
}

// lora.fuse: every adapter of ls into the border of its projection (from the current A, B)
static void write_borders(Llama *m, Backend *be, const LoraSet *ls) {
    if (!m->fuse_r || ls->n == 0) return;
    check(ls->r == m->fuse_r, "internal: LoRA rank %d, but the model was loaded for fused adapters of rank %d",
          ls->r, m->fuse_r);
    for (int i = 0; i < ls->n; i++) {
        const LoraAdapter *ad = &ls->ad[i];
        be->weight_set_lora(be, proj_weight(m, ad->layer, ad->module), ad->out, ad->in, ls->r,
                            ls->params + ad->a_off, ls->params + ad->b_off, ls->scaling);
    }
}

// Forward of n projections of layer l sharing their input x [N, in]: y_i [N, out_i] = x W_i^T (+ the
// adapter, its A-projection kept in a_out_i); beta 0. Fused: each adapter on its frozen GEMM; with act_wf,
// x is the weight-format xn [N, in + r] (llama.h), read in place by every product, and the y_i are written
// in the weight format too (q, k, v).
static void proj_forward(Llama *m, Backend *be, const LoraSet *ls, int l, int n, const LoraModule *mods,
                         float *x, int in, const int *out, float *const *y, float *const *a_out, int N,
                         int train, uint64_t key) {
    void *W[3];
    check(n >= 1 && n <= 3, "internal: %d projections share an input (at most 3)", n);
    for (int i = 0; i < n; i++) W[i] = proj_weight(m, l, mods[i]);
    if (m->act_wf) {
        const float *a[3];
        for (int i = 0; i < n; i++)
            a[i] = lora_ops_down_wf(be, ls, l, mods[i], x, in + m->fuse_r, a_out[i], N, train, key);
        be->wgemm_lora_multi_wf(be, n, N, in, m->fuse_r, x, a, (const void *const *)W, out, (void *const *)y);
        return;
    }
    if (m->fuse_r) {
        const float *a[3];
        for (int i = 0; i < n; i++) a[i] = lora_ops_down(be, ls, l, mods[i], x, a_out[i], N, train, key);
        if (n == 1) be->wgemm_lora(be, 1, N, out[0], in, m->fuse_r, x, a[0], W[0], 0.0f, y[0]);
        else be->wgemm_lora_multi(be, n, N, in, m->fuse_r, x, a, (const void *const *)W, out, y);
        return;
    }
    if (n == 1) be->wgemm(be, 1, N, out[0], in, 1.0f, x, W[0], 0.0f, y[0]);
    else be->wgemm_multi(be, n, N, in, x, (const void *const *)W, out, y);
    for (int i = 0; i < n; i++) lora_ops_forward(be, ls, l, mods[i], x, y[i], a_out[i], N, train, key);
}

// The residual projections (o, down): y [N, out] += x W^T (+ the adapter).
static void proj_forward_add(Llama *m, Backend *be, const LoraSet *ls, int l, LoraModule mod, const float *x,
                             int in, int out, float *y, float *a_out, int N, int train, uint64_t key) {
    void *W = proj_weight(m, l, mod);
    if (m->fuse_r) {
        const float *a = lora_ops_down(be, ls, l, mod, x, a_out, N, train, key);
        be->wgemm_lora(be, 1, N, out, in, m->fuse_r, x, a, W, 1.0f, y);
        return;
    }
    be->wgemm(be, 1, N, out, in, 1.0f, x, W, 1.0f, y);
    lora_ops_forward(be, ls, l, mod, x, y, a_out, N, train, key);
}

// The input gradient of a bordered projection of layer l: dx [N, in] (beta) = [dy | da] [W ; A], dy [N, out]
// fp32 — or dyw, in the weight format with row stride out + r (act_wf), da then written into its last r
// columns. The adapter's da (NULL: none) rides on the product, or under LoRA dropout is added apart.
static void proj_dx(Llama *m, Backend *be, const LoraSet *ls, int l, LoraModule mod, const float *dy, void *dyw,
                    const float *da, int in, int out, float beta, float *dx, int N, uint64_t key) {
    int fold = da && ls->dropout == 0.0f;
    if (dyw) be->wgemm_lora_wf(be, 0, N, out, in, m->fuse_r, dyw, fold ? da : NULL, proj_weight(m, l, mod), beta, dx);
    else be->wgemm_lora(be, 0, N, out, in, m->fuse_r, dy, fold ? da : NULL, proj_weight(m, l, mod), beta, dx);
    if (da && !fold) lora_ops_dx(be, ls, l, mod, da, dx, N, key);
}

// Backward of one projection y = x W^T (+ adapter) of layer l: the adapter's dA, dB and, when dx != NULL,
// dx [N, in] = dy W (+ the adapter's term) with beta 0 (overwrite) or 1 (accumulate). Fused without LoRA
// dropout: the adapter's term rides on the frozen GEMM; with dropout its masked term is added apart.
// x_wf: x is in the weight format with row stride in + r (act_wf's xn1).
static void proj_backward(Llama *m, Backend *be, LoraSet *ls, int l, LoraModule mod, const float *x, int x_wf,
                          const float *dy, const float *a_saved, int in, int out, float beta, float *dx, int N,
                          uint64_t key) {
    void *W = proj_weight(m, l, mod);
    if (m->fuse_r) {
        const float *da =
            x_wf ? lora_ops_grads_wf(be, ls, l, mod, NULL, x, in + m->fuse_r, dy, NULL, 0, a_saved, N, key, m->lora_da)
                 : lora_ops_grads(be, ls, l, mod, x, dy, a_saved, N, key, m->lora_da);
        if (dx) proj_dx(m, be, ls, l, mod, dy, NULL, da, in, out, beta, dx, N, key);
        return;
    }
    if (dx) be->wgemm(be, 0, N, in, out, 1.0f, dy, W, beta, dx);
    lora_ops_backward(be, ls, l, mod, x, dy, a_saved, dx, N, key, m->lora_da);
}

// ---------------------------------------------------------------------------- forward

static LlamaActs *acts_for(Llama *m, int l) {
    return l >= m->saved_from ? &m->acts[l - m->saved_from] : &m->acts[m->cfg.num_hidden_layers - m->saved_from];
}

// The MLP with its activations in the weight format (act_wf): gate, up = [xn2 | a] [W | sB]^T in the format,
// xn2 [N, C + r] read in place; h = silu(gate) up into h [N, I + r]; out += [h | a] [Wd | sB]^T with down's a
// written into h's last r columns (no operand copy). The same products and formulas as the fused path.
static void mlp_forward_wf(Llama *m, Backend *be, const LoraSet *ls, int l, LlamaActs *a, float *out, int N,
                           int train, uint64_t key) {
    int C = m->cfg.hidden_size, I = m->cfg.intermediate_size, r = m->fuse_r;
    const float *ag[2] = {
        lora_ops_down_wf(be, ls, l, LORA_GATE, a->xn2, C + r, a->lora_a[LORA_GATE], N, train, key),
        lora_ops_down_wf(be, ls, l, LORA_UP, a->xn2, C + r, a->lora_a[LORA_UP], N, train, key)};
    const void *W[2] = {proj_weight(m, l, LORA_GATE), proj_weight(m, l, LORA_UP)};
    const int n_out[2] = {I, I};
    void *const Y[2] = {a->gate, a->up};
    be->wgemm_lora_multi_wf(be, 2, N, C, r, a->xn2, ag, W, n_out, Y);
    be->swiglu_fwd_wf(be, a->h, I + r, a->gate, a->up, N, I);
    const float *ad = lora_ops_down_wf(be, ls, l, LORA_DOWN, a->h, I + r, a->lora_a[LORA_DOWN], N, train, key);
    be->wgemm_lora_wf(be, 1, N, C, I, r, a->h, ad, proj_weight(m, l, LORA_DOWN), 1.0f, out);
}

// One block: a->x_in -> out (out may alias a->x_in: it is written only after x_in is consumed).
static void block_forward(Llama *m, Backend *be, const LoraSet *ls, int l, LlamaActs *a, float *out, int B, int T,
                          int train, uint64_t key) {
    const ModelConfig *mc = &m->cfg;
    const LlamaLayer *w = &m->layers[l];
    int N = B * T, C = mc->hidden_size, I = mc->intermediate_size, H = mc->num_attention_heads,
        KVH = mc->num_key_value_heads, D = mc->head_dim, qd = H * D, kvd = KVH * D;
    float eps = (float)mc->rms_norm_eps;
    if (m->act_wf) be->rmsnorm_fwd_wf(be, a->xn1, C + m->fuse_r, a->rstd1, a->x_in, w->ln1, N, C, eps);
    else be->rmsnorm_fwd(be, a->xn1, a->rstd1, a->x_in, w->ln1, N, C, eps);
    // q, k, v share xn1 (rounded to the weight format once)
    const LoraModule mqkv[3] = {LORA_Q, LORA_K, LORA_V};
    const int nqkv[3] = {qd, kvd, kvd};
    float *yqkv[3] = {a->q, a->k, a->v}, *aqkv[3] = {a->lora_a[LORA_Q], a->lora_a[LORA_K], a->lora_a[LORA_V]};
    proj_forward(m, be, ls, l, 3, mqkv, a->xn1, C, nqkv, yqkv, aqkv, N, train, key);
    if (m->act_wf) {  // q, k, v and the probabilities in the weight format
        be->rope_fwd_wf(be, a->q, m->rope_cos, m->rope_sin, B, T, H, D);
        be->rope_fwd_wf(be, a->k, m->rope_cos, m->rope_sin, B, T, KVH, D);
        if (m->att_fused) be->attention_fused_fwd(be, a->att, a->lse, a->q, a->k, a->v, m->d_mask, B, T, H, KVH, D);
        else be->attention_fwd_wf(be, a->att, a->probs, a->q, a->k, a->v, m->d_mask, B, T, H, KVH, D);
    } else {
        be->rope_fwd(be, a->q, m->rope_cos, m->rope_sin, B, T, H, D);
        be->rope_fwd(be, a->k, m->rope_cos, m->rope_sin, B, T, KVH, D);
        be->attention_fwd(be, a->att, a->probs, a->q, a->k, a->v, m->d_mask, B, T, H, KVH, D);
    }
    be->copy(be, a->x_mid, a->x_in, (size_t)N * C * sizeof(float));  // residual, then += o_proj
    proj_forward_add(m, be, ls, l, LORA_O, a->att, qd, C, a->x_mid, a->lora_a[LORA_O], N, train, key);
    if (m->act_wf) be->rmsnorm_fwd_wf(be, a->xn2, C + m->fuse_r, a->rstd2, a->x_mid, w->ln2, N, C, eps);
    else be->rmsnorm_fwd(be, a->xn2, a->rstd2, a->x_mid, w->ln2, N, C, eps);
    be->copy(be, out, a->x_mid, (size_t)N * C * sizeof(float));  // residual, then += down_proj
    if (m->act_wf) {
        mlp_forward_wf(m, be, ls, l, a, out, N, train, key);
        return;
    }
    const LoraModule mgu[2] = {LORA_GATE, LORA_UP};
    const int ngu[2] = {I, I};
    float *ygu[2] = {a->gate, a->up}, *agu[2] = {a->lora_a[LORA_GATE], a->lora_a[LORA_UP]};
    proj_forward(m, be, ls, l, 2, mgu, a->xn2, C, ngu, ygu, agu, N, train, key);
    be->swiglu_fwd(be, a->h, a->gate, a->up, (size_t)N * I);
    proj_forward_add(m, be, ls, l, LORA_DOWN, a->h, I, C, out, a->lora_a[LORA_DOWN], N, train, key);
}

// Adds the per-token norms of layer l's block output and module inputs to the statistics.
static void probe_layer(Llama *m, Backend *be, const LlamaActs *a, const float *out, int l, int N, CalibStats *s) {
    const ModelConfig *mc = &m->cfg;
    int C = mc->hidden_size, I = mc->intermediate_size, qd = mc->num_attention_heads * mc->head_dim;
    double *row = s->sums + (size_t)l * CALIB_NSTAT;
    double n_xn1 = m->act_wf ? be->row_norm_sum_wf(be, a->xn1, C + m->fuse_r, m->d_mask, N, C)
                             : be->row_norm_sum(be, a->xn1, m->d_mask, N, C);
    double n_xn2 = m->act_wf ? be->row_norm_sum_wf(be, a->xn2, C + m->fuse_r, m->d_mask, N, C)
                             : be->row_norm_sum(be, a->xn2, m->d_mask, N, C);
    row[0] += be->row_norm_sum(be, out, m->d_mask, N, C);
    row[1 + LORA_Q] += n_xn1;
    row[1 + LORA_K] += n_xn1;
    row[1 + LORA_V] += n_xn1;
    row[1 + LORA_O] += be->row_norm_sum(be, a->att, m->d_mask, N, qd);
    row[1 + LORA_GATE] += n_xn2;
    row[1 + LORA_UP] += n_xn2;
    row[1 + LORA_DOWN] += m->act_wf ? be->row_norm_sum_wf(be, a->h, I + m->fuse_r, m->d_mask, N, I)
                                    : be->row_norm_sum(be, a->h, m->d_mask, N, I);
}

double llama_forward(Llama *m, Backend *be, const LoraSet *ls, const Batch *b, int train, float grad_scale,
                     uint64_t dropout_key, CalibStats *stats) {
    const ModelConfig *mc = &m->cfg;
    int B = b->B, T = b->T, L = mc->num_hidden_layers, C = mc->hidden_size, K = m->num_labels;
    check(B <= m->cap_B && T <= m->cap_T, "batch [%d, %d] exceeds the activation memory planned for [%d, %d]", B,
          T, m->cap_B, m->cap_T);
    int N = B * T;
    for (int i = 0; i < B; i++) {  // right padding: pool at the last real token
        int last = -1;
        for (int t = 0; t < T; t++)
            if (b->mask[i * T + t]) last = t;
        check(last >= 0, "batch row %d has no real token", i);
        m->last[i] = last;
    }
    for (int i = 0; i < N; i++)
        check(b->ids[i] >= 0 && b->ids[i] < mc->vocab_size, "token id %d at position %d is outside the vocabulary (0..%d)",
              b->ids[i], i, mc->vocab_size - 1);
    be->upload(be, m->d_ids, b->ids, (size_t)N * sizeof(int32_t));
    be->upload(be, m->d_mask, b->mask, (size_t)N * sizeof(int32_t));
    be->upload(be, m->d_last, m->last, (size_t)B * sizeof(int32_t));
    if (K > 1) be->upload(be, m->d_labels_i, b->labels_i, (size_t)B * sizeof(int32_t));
    else be->upload(be, m->d_labels_f, b->labels_f, (size_t)B * sizeof(float));

    write_borders(m, be, ls);  // lora.fuse: the adapters as they are now, on their projections
    be->wembedding_fwd(be, acts_for(m, 0)->x_in, m->d_ids, m->wte, N, C);
    for (int l = 0; l < L; l++) {
        LlamaActs *a = acts_for(m, l);
        float *out = l + 1 == L ? m->x_final : acts_for(m, l + 1)->x_in;
        block_forward(m, be, ls, l, a, out, B, T, train, dropout_key);
        if (stats) probe_layer(m, be, a, out, l, N, stats);
    }
    if (stats) stats->tokens += (double)b->n_tokens;
    be->pool_last_fwd(be, m->pooled, m->x_final, m->d_last, B, T, C);
    be->rmsnorm_fwd(be, m->pooled_n, m->rstd_f, m->pooled, m->norm, B, C, (float)mc->rms_norm_eps);
    be->gemm(be, 0, 1, B, K, C, 1.0f, m->pooled_n, ls->params + ls->head_off, 0.0f, m->logits);
    double loss_sum = 0.0;
    be->loss_fwd_bwd(be, &loss_sum, m->dlogits, m->logits, m->d_labels_i, m->d_labels_f, B, K,
                     train ? grad_scale : 0.0f);
    return loss_sum;
}

// ---------------------------------------------------------------------------- backward

// The MLP's backward with its activations in the weight format (act_wf): dres = d(out) -> dh (fp32) ->
// dgate, dup in the format ([N, I + r]: the operands of their input-gradient products) -> dxn2 (beta 0,
// then 1) when dxn2 != NULL; the adapters' dA, dB on the way. The fused path's products, in the format.
static void mlp_backward_wf(Llama *m, Backend *be, LoraSet *ls, int l, LlamaActs *a, float *dxn2, int N,
                            uint64_t key) {
    int C = m->cfg.hidden_size, I = m->cfg.intermediate_size, r = m->fuse_r;
    const float *da = lora_ops_grads_wf(be, ls, l, LORA_DOWN, NULL, a->h, I + r, m->dres, NULL, 0,
                                        a->lora_a[LORA_DOWN], N, key, m->lora_da);
    proj_dx(m, be, ls, l, LORA_DOWN, m->dres, NULL, da, I, C, 0.0f, m->dh, N, key);
    be->swiglu_bwd_wf(be, m->dgate, m->dup, I + r, m->dh, a->gate, a->up, N, I);
    const LoraModule mods[2] = {LORA_GATE, LORA_UP};
    void *dy[2] = {m->dgate, m->dup};
    for (int i = 0; i < 2; i++) {
        da = lora_ops_grads_wf(be, ls, l, mods[i], NULL, a->xn2, C + r, NULL, dy[i], I + r, a->lora_a[mods[i]], N,
                               key, m->lora_da);
        if (dxn2) proj_dx(m, be, ls, l, mods[i], NULL, dy[i], da, C, I, i ? 1.0f : 0.0f, dxn2, N, key);
    }
}

void llama_backward(Llama *m, Backend *be, LoraSet *ls, const Batch *b, uint64_t key) {
    const ModelConfig *mc = &m->cfg;
    int B = b->B, T = b->T, N = B * T, L = mc->num_hidden_layers, C = mc->hidden_size,
        I = mc->intermediate_size, H = mc->num_attention_heads, KVH = mc->num_key_value_heads, D = mc->head_dim,
        qd = H * D, kvd = KVH * D, K = m->num_labels;
    // head: logits = pooled_n score^T
    const float *score = ls->params + ls->head_off;
    be->gemm(be, 1, 0, K, C, B, 1.0f, m->dlogits, m->pooled_n, 1.0f, ls->grads + ls->head_off);
    if (ls->lowest_layer >= L) return;  // only the head is trained
    be->gemm(be, 0, 0, B, C, K, 1.0f, m->dlogits, score, 0.0f, m->dpool_n);
    be->zero(be, m->dpool, (size_t)B * C * sizeof(float));
    be->rmsnorm_bwd(be, m->dpool, m->dpool_n, m->pooled, m->norm, m->rstd_f, B, C);
    be->zero(be, m->dres, (size_t)N * C * sizeof(float));
    be->pool_last_bwd(be, m->dres, m->dpool, m->d_last, B, T, C);

    for (int l = L - 1; l >= ls->lowest_layer; l--) {
        LlamaActs *a = acts_for(m, l);
        const LlamaLayer *w = &m->layers[l];
        int lowest = l == ls->lowest_layer;
        int has_q = lora_find(ls, l, LORA_Q) >= 0, has_k = lora_find(ls, l, LORA_K) >= 0,
            has_v = lora_find(ls, l, LORA_V) >= 0, has_o = lora_find(ls, l, LORA_O) >= 0;
        int need_att = !lowest || has_q || has_k || has_v || has_o;  // anything to learn below the MLP?
        int need_qkv = !lowest || has_q || has_k || has_v;
        // MLP: out = x_mid + h Wd^T; dres is d(out)
        float *dxn2 = need_att ? m->dxn : NULL;
        if (m->act_wf) {
            mlp_backward_wf(m, be, ls, l, a, dxn2, N, key);
        } else {
            proj_backward(m, be, ls, l, LORA_DOWN, a->h, 0, m->dres, a->lora_a[LORA_DOWN], I, C, 0.0f, m->dh, N, key);
            be->swiglu_bwd(be, m->dgate, m->dup, m->dh, a->gate, a->up, (size_t)N * I);
            proj_backward(m, be, ls, l, LORA_GATE, a->xn2, 0, m->dgate, a->lora_a[LORA_GATE], C, I, 0.0f, dxn2, N, key);
            proj_backward(m, be, ls, l, LORA_UP, a->xn2, 0, m->dup, a->lora_a[LORA_UP], C, I, 1.0f, dxn2, N, key);
        }
        if (!need_att) break;
        be->rmsnorm_bwd(be, m->dres, m->dxn, a->x_mid, w->ln2, a->rstd2, N, C);  // dres = d(x_mid)
        // attention: x_mid = x_in + att Wo^T
        proj_backward(m, be, ls, l, LORA_O, a->att, 0, m->dres, a->lora_a[LORA_O], qd, C, 0.0f,
                      need_qkv ? m->datt : NULL, N, key);
        if (!need_qkv) break;
        if (m->att_fused)
            be->attention_fused_bwd(be, m->dq, m->dk, m->dv, m->datt, a->att, a->lse, a->q, a->k, a->v, m->d_mask, B,
                                    T, H, KVH, D);
        else if (m->act_wf)
            be->attention_bwd_wf(be, m->dq, m->dk, m->dv, m->datt, a->probs, a->q, a->k, a->v, B, T, H, KVH, D);
        else
            be->attention_bwd(be, m->dq, m->dk, m->dv, m->datt, a->probs, a->q, a->k, a->v, B, T, H, KVH, D);
        be->rope_bwd(be, m->dq, m->rope_cos, m->rope_sin, B, T, H, D);
        be->rope_bwd(be, m->dk, m->rope_cos, m->rope_sin, B, T, KVH, D);
        float *dxn1 = lowest ? NULL : m->dxn;  // the input gradient is needed only above the lowest layer
        proj_backward(m, be, ls, l, LORA_Q, a->xn1, m->act_wf, m->dq, a->lora_a[LORA_Q], C, qd, 0.0f, dxn1, N, key);
        proj_backward(m, be, ls, l, LORA_K, a->xn1, m->act_wf, m->dk, a->lora_a[LORA_K], C, kvd, 1.0f, dxn1, N, key);
        proj_backward(m, be, ls, l, LORA_V, a->xn1, m->act_wf, m->dv, a->lora_a[LORA_V], C, kvd, 1.0f, dxn1, N, key);
        if (!lowest) be->rmsnorm_bwd(be, m->dres, m->dxn, a->x_in, w->ln1, a->rstd1, N, C);  // dres = d(x_in)
    }
}
