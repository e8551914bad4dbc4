// encoder_load.c: BERT / DeBERTa-v2 weights, head initialisation and activation memory
// (the forward and backward are in encoder.c).
//
// Tensor names are accepted with or without the "bert." / "deberta." prefix (a BertModel checkpoint
// such as all-MiniLM-L6-v2 has none; a *ForSequenceClassification one has it), and LayerNorm
// weights also under their legacy names "LayerNorm.gamma" / "LayerNorm.beta".
#include <cjson/cJSON.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/common.h"
#include "actlora/rng.h"
#include "encoder_internal.h"

void encoder_lora_shapes(const ModelConfig *mc, LoraShapes *s) {
    int C = mc->hidden_size, I = mc->intermediate_size;
    int qd = mc->num_attention_heads * (mc->head_dim > 0 ? mc->head_dim : C / mc->num_attention_heads);
    for (int m = 0; m < LORA_NUM_MODULES; m++) s->in[m] = s->out[m] = 0;
    s->in[LORA_Q] = C;    s->out[LORA_Q] = qd;
    s->in[LORA_K] = C;    s->out[LORA_K] = qd;
    s->in[LORA_V] = C;    s->out[LORA_V] = qd;
    s->in[LORA_O] = qd;   s->out[LORA_O] = C;
    s->in[LORA_UP] = C;   s->out[LORA_UP] = I;
    s->in[LORA_DOWN] = I; s->out[LORA_DOWN] = C;
}

// ---------------------------------------------------------------------------- DeBERTa positions

// transformers' make_log_bucket_position for one relative position, in float32 as torch computes it.
static int log_bucket(int rel, int bucket_size, int max_position) {
    int mid = bucket_size / 2;
    int abs_pos = (rel < mid && rel > -mid) ? mid - 1 : abs(rel);
    if (abs_pos <= mid) return rel;
    float ratio = (float)abs_pos / (float)mid;
    float denom = logf((float)((double)(max_position - 1) / (double)mid));
    float log_pos = ceilf(logf(ratio) / denom * (float)(mid - 1)) + (float)mid;
    return (int)(log_pos * (float)(rel > 0 ? 1 : -1));
}

void encoder_relpos_index(int32_t *idx, int T, int span, int buckets, int max_rel) {
    for (int i = 0; i < T; i++)
        for (int j = 0; j < T; j++) {
            int rel = i - j;
            if (buckets > 0 && max_rel > 0) rel = log_bucket(rel, buckets, max_rel);
            int p = rel + span;
            idx[i * T + j] = p < 0 ? 0 : p > 2 * span - 1 ? 2 * span - 1 : p;
        }
}

// ---------------------------------------------------------------------------- loading

typedef enum { INIT_NORMAL, INIT_ONES, INIT_ZEROS } InitKind;

typedef struct {
    HFWeights w;
    const char *dir;
    const char *prefix;  // "bert." / "deberta."
    int random_init;
    uint64_t seed;
    float std;
} Loader;

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

// The name under which `name` is stored (with or without the prefix, or the legacy LayerNorm
// gamma/beta), written into buf; NULL when absent.
static const char *stored_name(const Loader *ld, const char *name, char *buf, size_t n) {
    char alt[256];
    snprintf(alt, sizeof alt, "%s", name);
    if (ends_with(name, "LayerNorm.weight")) snprintf(alt + strlen(alt) - 6, sizeof alt - strlen(alt) + 6, "gamma");
    else if (ends_with(name, "LayerNorm.bias")) snprintf(alt + strlen(alt) - 4, sizeof alt - strlen(alt) + 4, "beta");
    const char *base[2] = {name, alt};
    for (int b = 0; b < 2; b++)
        for (int p = 0; p < 2; p++) {
            snprintf(buf, n, "%s%s", p == 0 ? ld->prefix : "", base[b]);
            if (hfweights_find(&ld->w, buf, NULL)) return buf;
        }
    return NULL;
}

// Reads tensor `name` of shape [d0] (d1 == 0) or [d0, d1] into a fresh host buffer; a missing
// tensor is fatal when required, else returns NULL.
static float *read_host(const Loader *ld, const char *name, int64_t d0, int64_t d1, int required) {
    size_t n = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    char buf[320];
    const char *found = stored_name(ld, name, buf, sizeof buf);
    int64_t shape[2] = {d0, d1};
    Error err;
    if (!found) {
        if (!required) return NULL;
        if (hfweights_read_f32(&ld->w, name, d1 > 0 ? 2 : 1, shape, NULL, &err) != 0)
            die("%s (also looked for '%s%s')", err.msg, ld->prefix, name);
    }
    float *host = xmalloc(n * sizeof(float), name);
    if (hfweights_read_f32(&ld->w, found, d1 > 0 ? 2 : 1, shape, host, &err) != 0) die("%s", err.msg);
    return host;
}

static uint64_t name_key(const Loader *ld, const char *name) {
    return rng_key(ld->seed, fnv1a64(FNV64_INIT, name, strlen(name)));
}

// An fp32 tensor (biases, LayerNorm weights, position / token-type tables, relative embeddings) read
// or, with random_init, drawn; NULL when absent and not required.
static float *load(Backend *be, const Loader *ld, const char *name, int64_t d0, int64_t d1, InitKind kind,
                   int required) {
    size_t n = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    float *host = NULL;
    if (!ld->random_init && !(host = read_host(ld, name, d0, d1, required))) return NULL;
    float *dev = be->alloc(be, n * sizeof(float), name);
    if (host) {
        be->upload(be, dev, host, n * sizeof(float));
        free(host);
    } else {
        be->randn(be, dev, n, kind == INIT_ONES ? 1.0f : 0.0f, kind == INIT_NORMAL ? ld->std : 0.0f,
                  name_key(ld, name));
    }
    return dev;
}

// A frozen Linear weight [d0, d1] (or the word table) in the backend's weight format.
static void *load_weight(Backend *be, const Loader *ld, const char *name, int64_t d0, int64_t d1, int required) {
    size_t n = (size_t)d0 * (size_t)d1;
    float *host = NULL;
    if (!ld->random_init && !(host = read_host(ld, name, d0, d1, required))) return NULL;
    void *dev = be->weight_alloc(be, n, name);
    if (host) {
        be->weight_upload(be, dev, host, n);
        free(host);
    } else {
        be->weight_randn(be, dev, n, 0.0f, ld->std, name_key(ld, name));
    }
    return dev;
}

// config.json's initializer_range (ModelConfig does not carry it); 0.02 when absent or unreadable.
static double initializer_range(const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    Error err;
    char *text = file_read_all(path, NULL, &err);
    if (!text) return 0.02;
    double r = 0.02;
    cJSON *root = cJSON_Parse(text);
    const cJSON *v = root ? cJSON_GetObjectItemCaseSensitive(root, "initializer_range") : NULL;
    if (cJSON_IsNumber(v) && v->valuedouble > 0) r = v->valuedouble;
    cJSON_Delete(root);
    free(text);
    return r;
}

static int is_rank0(void) {
    int init = 0, rank = 0;
    MPI_Initialized(&init);
    if (init) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank == 0;
}

// y[P, C] = x[P, C] W^T + b on the backend (W [C, C] in the weight format).
static float *project(Backend *be, const float *x, const void *W, const float *b, int P, int C, const char *what) {
    float *y = be->alloc(be, (size_t)P * C * sizeof(float), what);
    be->wgemm(be, 1, P, C, C, 1.0f, x, W, 0.0f, y);
    be->bias_add(be, y, b, P, C);
    return y;
}

// Layer l's positional projection with its own weights (DeBERTa without share_att_key): which = "query" or
// "key" (pos_query_proj / pos_key_proj), loaded, applied to the relative embeddings and freed again.
static float *project_own(Backend *be, Loader *ld, const EncImpl *e, int l, const char *which) {
    char name[160], what[16];
    int C = e->C;
    snprintf(name, sizeof name, "encoder.layer.%d.attention.self.pos_%s_proj.weight", l, which);
    void *pw = load_weight(be, ld, name, C, C, 1);
    snprintf(name, sizeof name, "encoder.layer.%d.attention.self.pos_%s_proj.bias", l, which);
    float *pb = load(be, ld, name, C, 0, INIT_ZEROS, 1);
    snprintf(what, sizeof what, "pos %s", which);
    float *y = project(be, e->rel, pw, pb, e->P, C, what);
    be->free(be, pw);
    be->free(be, pb);
    return y;
}

void encoder_load(Encoder *m, Backend *be, const char *dir, const ModelConfig *mc, int num_labels, int random_init,
                  uint64_t seed, Progress *progress) {
    memset(m, 0, sizeof *m);
    check(mc->arch == ARCH_BERT || mc->arch == ARCH_DEBERTA_V2, "%s: model_type '%s' is not a BERT or DeBERTa-v2 model",
          dir, mc->model_type);
    check(num_labels >= 1, "%s: num_labels must be at least 1 (got %d)", dir, num_labels);
    m->cfg = *mc;
    m->num_labels = num_labels;
    EncImpl *e = xcalloc(1, sizeof *e, "encoder");
    m->impl = e;
    e->deberta = mc->arch == ARCH_DEBERTA_V2;
    e->L = mc->num_hidden_layers;
    e->C = mc->hidden_size;
    e->I = mc->intermediate_size;
    e->H = mc->num_attention_heads;
    e->D = mc->head_dim > 0 ? mc->head_dim : e->C / e->H;
    e->V = mc->vocab_size;
    e->K = num_labels;
    e->eps = (float)(mc->layer_norm_eps > 0 ? mc->layer_norm_eps : 1e-12);
    int L = e->L, C = e->C, I = e->I;
    check(e->H * e->D == C,
          "%s: num_attention_heads (%d) x head size (%d) must equal hidden_size (%d): the attention output "
          "projection is [hidden, hidden]", dir, e->H, e->D, C);
    check(mc->pooler_hidden_size <= 0 || mc->pooler_hidden_size == C,
          "%s: pooler_hidden_size (%d) differs from hidden_size (%d); transformers' ContextPooler and classifier "
          "need them equal", dir, mc->pooler_hidden_size, C);
    e->pool_tanh = e->deberta ? mc->pooler_tanh : 1;
    e->max_pos = mc->max_position_embeddings;
    e->type_vocab = mc->type_vocab_size;
    // attention scale: 1/sqrt(D) (BERT); 1/sqrt(D * (1 + #pos_att_type)) (DeBERTa, with or without
    // relative attention, as transformers computes it)
    int factor = 1 + (e->deberta ? (mc->att_c2p != 0) + (mc->att_p2c != 0) : 0);
    e->scale = (float)(1.0 / sqrt((double)e->D * (double)factor));
    if (e->deberta && mc->relative_attention) {
        e->rel_on = 1;
        e->c2p = mc->att_c2p != 0;
        e->p2c = mc->att_p2c != 0;
        e->share_att_key = mc->share_att_key;
        e->max_rel = mc->max_relative_positions < 1 ? mc->max_position_embeddings : mc->max_relative_positions;
        e->buckets = mc->position_buckets;
        e->span = e->buckets > 0 ? e->buckets : e->max_rel;
        e->P = 2 * e->span;
    }

    Loader ld = {.dir = dir, .prefix = e->deberta ? "deberta." : "bert.", .random_init = random_init, .seed = seed};
    ld.std = (float)(random_init ? 0.02 : initializer_range(dir));
    if (!random_init) {
        Error err;
        if (hfweights_open(&ld.w, dir, &err) != 0) die("%s", err.msg);
    }
    e->wte = load_weight(be, &ld, "embeddings.word_embeddings.weight", e->V, C, 1);
    if (!e->deberta || mc->position_biased_input)
        e->wpe = load(be, &ld, "embeddings.position_embeddings.weight", e->max_pos, C, INIT_NORMAL, 1);
    if (e->type_vocab > 0)
        e->wtt = load(be, &ld, "embeddings.token_type_embeddings.weight", e->type_vocab, C, INIT_NORMAL, 1);
    e->emb_ln_w = load(be, &ld, "embeddings.LayerNorm.weight", C, 0, INIT_ONES, 1);
    e->emb_ln_b = load(be, &ld, "embeddings.LayerNorm.bias", C, 0, INIT_ZEROS, 1);
    if (e->rel_on) {
        e->rel = load(be, &ld, "encoder.rel_embeddings.weight", e->P, C, INIT_NORMAL, 1);
        if (mc->norm_rel_ebd) {  // frozen: normalise once here
            float *w = load(be, &ld, "encoder.LayerNorm.weight", C, 0, INIT_ONES, 1);
            float *b = load(be, &ld, "encoder.LayerNorm.bias", C, 0, INIT_ZEROS, 1);
            float *mean = be->alloc(be, (size_t)e->P * sizeof(float), "rel mean");
            float *rstd = be->alloc(be, (size_t)e->P * sizeof(float), "rel rstd");
            be->layernorm_fwd(be, e->rel, mean, rstd, e->rel, w, b, e->P, C, e->eps);
            be->free(be, w);
            be->free(be, b);
            be->free(be, mean);
            be->free(be, rstd);
        }
    }
    e->layers = xcalloc((size_t)L, sizeof(EncLayer), "encoder layers");
    const char *qn = e->deberta ? "query_proj" : "query", *kn = e->deberta ? "key_proj" : "key",
               *vn = e->deberta ? "value_proj" : "value";
    char name[256];
#define T_(field, suffix, d0, d1, kind) \
    (snprintf(name, sizeof name, "encoder.layer.%d.%s", l, suffix), w->field = load(be, &ld, name, d0, d1, kind, 1))
#define W_(field, suffix, d0, d1) \
    (snprintf(name, sizeof name, "encoder.layer.%d.%s", l, suffix), w->field = load_weight(be, &ld, name, d0, d1, 1))
    for (int l = 0; l < L; l++) {
        EncLayer *w = &e->layers[l];
        char s[96];
        snprintf(s, sizeof s, "attention.self.%s.weight", qn); W_(wq, s, C, C);
        snprintf(s, sizeof s, "attention.self.%s.bias", qn);   T_(bq, s, C, 0, INIT_ZEROS);
        snprintf(s, sizeof s, "attention.self.%s.weight", kn); W_(wk, s, C, C);
        snprintf(s, sizeof s, "attention.self.%s.bias", kn);   T_(bk, s, C, 0, INIT_ZEROS);
        snprintf(s, sizeof s, "attention.self.%s.weight", vn); W_(wv, s, C, C);
        snprintf(s, sizeof s, "attention.self.%s.bias", vn);   T_(bv, s, C, 0, INIT_ZEROS);
        W_(wo, "attention.output.dense.weight", C, C);
        T_(bo, "attention.output.dense.bias", C, 0, INIT_ZEROS);
        T_(ln1_w, "attention.output.LayerNorm.weight", C, 0, INIT_ONES);
        T_(ln1_b, "attention.output.LayerNorm.bias", C, 0, INIT_ZEROS);
        W_(wi, "intermediate.dense.weight", I, C);
        T_(bi, "intermediate.dense.bias", I, 0, INIT_ZEROS);
        W_(wout, "output.dense.weight", C, I);
        T_(bout, "output.dense.bias", C, 0, INIT_ZEROS);
        T_(ln2_w, "output.LayerNorm.weight", C, 0, INIT_ONES);
        T_(ln2_b, "output.LayerNorm.bias", C, 0, INIT_ZEROS);
        progress_step(progress, l + 1, L, "layer");
        if (!e->rel_on) continue;
        // positional projections of rel without LoRA (frozen: computed once)
        if (e->share_att_key) {
            if (e->p2c) w->pq_base = project(be, e->rel, w->wq, w->bq, e->P, C, "pos query");
            if (e->c2p) w->pk_base = project(be, e->rel, w->wk, w->bk, e->P, C, "pos key");
        } else {
            if (e->p2c) w->pq_base = project_own(be, &ld, e, l, "query");
            if (e->c2p) w->pk_base = project_own(be, &ld, e, l, "key");
        }
    }
#undef T_
#undef W_
    // pooler: BertPooler (tanh) / ContextPooler (pooler_hidden_act); DeBERTa-v3 checkpoints have none
    e->pool_w = load_weight(be, &ld, "pooler.dense.weight", C, C, 0);
    if (e->pool_w) {
        e->pool_b = load(be, &ld, "pooler.dense.bias", C, 0, INIT_ZEROS, 1);
    } else {  // as transformers initialises a missing module: weight N(0, initializer_range), bias 0
        size_t n = (size_t)C * C;
        e->pool_w = be->weight_alloc(be, n, "pooler weight");
        be->weight_randn(be, e->pool_w, n, 0.0f, ld.std, rng_key(seed, 0x9001E5));
        e->pool_b = be->alloc(be, (size_t)C * sizeof(float), "pooler bias");
        if (is_rank0()) {
            printf("model   %s has no pooler (pooler.dense.weight): initialised as transformers does, weight "
                   "N(0, %g) drawn from seed %llu, bias 0 (frozen)\n", dir, ld.std, (unsigned long long)seed);
            fflush(stdout);
        }
    }
    if (!random_init) hfweights_close(&ld.w);
    e->init_std = ld.std;
}

int encoder_init_head(Encoder *m, Backend *be, const char *dir, int random_init, LoraSet *ls, uint64_t seed) {
    EncImpl *e = m->impl;
    int K = m->num_labels, C = e->C;
    check(ls->num_labels == K && ls->hidden == C && ls->naming->head_bias,
          "internal: the LoRA set's head is [%d, %d]%s but the encoder's classifier is [%d, %d] with a bias",
          ls->num_labels, ls->hidden, ls->naming->head_bias ? "" : " without bias", K, C);
    size_t n = (size_t)K * C;
    float *host = xmalloc((n + (size_t)K) * sizeof(float), "classifier");
    int loaded = 0;
    if (!random_init) {
        HFWeights w;
        Error err;
        if (hfweights_open(&w, dir, &err) != 0) die("%s", err.msg);
        const StTensor *tw = hfweights_find(&w, "classifier.weight", NULL);
        const StTensor *tb = hfweights_find(&w, "classifier.bias", NULL);
        if (tw && tb && tw->ndim == 2 && tw->shape[0] == K && tw->shape[1] == C && tb->ndim == 1 && tb->shape[0] == K) {
            int64_t sw[2] = {K, C}, sb[1] = {K};
            if (hfweights_read_f32(&w, "classifier.weight", 2, sw, host, &err) != 0 ||
                hfweights_read_f32(&w, "classifier.bias", 1, sb, host + n, &err) != 0)
                die("%s", err.msg);
            loaded = 1;
        }
        hfweights_close(&w);
    }
    if (loaded) {
        be->upload(be, ls->params + ls->head_off, host, n * sizeof(float));
        be->upload(be, ls->params + ls->head_bias_off, host + n, (size_t)K * sizeof(float));
    } else {  // transformers' init of a new classifier: N(0, initializer_range), bias 0
        be->randn(be, ls->params + ls->head_off, n, 0.0f, e->init_std, rng_key(seed, 0x5c03e));
        be->zero(be, ls->params + ls->head_bias_off, (size_t)K * sizeof(float));
    }
    free(host);
    return loaded;
}

// ---------------------------------------------------------------------------- activations

static float *act_alloc(Backend *be, size_t count, const char *what, size_t *bytes) {
    size_t b = count * sizeof(float);
    *bytes += b;
    return be->alloc(be, b, what);
}

void encoder_alloc_acts(Encoder *m, Backend *be, const LoraSet *ls, int B, int T) {
    encoder_free_acts(m, be);  // re-planning (e.g. after calibration) replaces the old buffers
    EncImpl *e = m->impl;
    check(B > 0 && T > 0, "internal: activation memory for a [%d, %d] batch", B, T);
    check(!e->wpe || T <= e->max_pos, "sequence length %d exceeds the model's max_position_embeddings %d", T,
          e->max_pos);
    check(ls->num_layers == e->L && ls->num_labels == e->K && ls->hidden == e->C,
          "internal: LoRA set for %d layers with a [%d, %d] head on a %d-layer encoder with a [%d, %d] classifier",
          ls->num_layers, ls->num_labels, ls->hidden, e->L, e->K, e->C);
    int L = e->L, C = e->C, I = e->I, K = e->K, P = e->P;
    size_t N = (size_t)B * T, r = (size_t)ls->r, bytes = 0;
    e->cap_B = B;
    e->cap_T = T;
    e->saved_from = ls->lowest_layer < L ? ls->lowest_layer : L;
    e->n_sets = (L - e->saved_from) + (e->saved_from > 0 ? 1 : 0);
    e->acts = xcalloc((size_t)e->n_sets, sizeof(EncActs), "activation sets");
#define ACT(ptr, count) ((ptr) = act_alloc(be, (size_t)(count), #ptr, &bytes))
    for (int s = 0; s < e->n_sets; s++) {
        EncActs *a = &e->acts[s];
        ACT(a->x_in, N * C);
        ACT(a->q, N * C);
        ACT(a->k, N * C);
        ACT(a->v, N * C);
        ACT(a->probs, (size_t)B * e->H * T * T);
        ACT(a->ctx, N * C);
        ACT(a->a_sum, N * C);
        ACT(a->mean1, N);
        ACT(a->rstd1, N);
        ACT(a->x_mid, N * C);
        ACT(a->u, N * I);
        ACT(a->h, N * I);
        ACT(a->f_sum, N * C);
        ACT(a->mean2, N);
        ACT(a->rstd2, N);
        int layer = e->saved_from + s;  // the scratch set (layer >= L) has no adapters
        if (layer >= L) continue;
        for (int mod = 0; mod < LORA_NUM_MODULES; mod++)
            if (lora_find(ls, layer, (LoraModule)mod) >= 0) ACT(a->lora_a[mod], N * r);
        if (e->rel_on && e->share_att_key) {  // the positional path goes through query_proj / key_proj
            if (e->p2c && lora_find(ls, layer, LORA_Q) >= 0) {
                ACT(a->pq, (size_t)P * C);
                ACT(a->lora_pa_q, (size_t)P * r);
            }
            if (e->c2p && lora_find(ls, layer, LORA_K) >= 0) {
                ACT(a->pk, (size_t)P * C);
                ACT(a->lora_pa_k, (size_t)P * r);
            }
        }
    }
    ACT(e->x_final, N * C);
    ACT(e->emb_mean, N);
    ACT(e->emb_rstd, N);
    ACT(e->pooled0, (size_t)B * C);
    ACT(e->pre, (size_t)B * C);
    ACT(e->pooled, (size_t)B * C);
    ACT(e->logits, (size_t)B * K);
    ACT(e->dlogits, (size_t)B * K);
    if (e->saved_from < L) {  // backward scratch only when something below the head is trained
        size_t rows = N > (size_t)P ? N : (size_t)P;
        ACT(e->dpooled, (size_t)B * C);
        ACT(e->dpre, (size_t)B * C);
        ACT(e->dpooled0, (size_t)B * C);
        ACT(e->dres, N * C);
        ACT(e->dfs, N * C);
        ACT(e->dh, N * I);
        ACT(e->du, N * I);
        ACT(e->dq, N * C);
        ACT(e->dk, N * C);
        ACT(e->dv, N * C);
        if (e->rel_on && e->p2c) ACT(e->dpq, (size_t)P * C);
        if (e->rel_on && e->c2p) ACT(e->dpk, (size_t)P * C);
        ACT(e->lora_da, rows * r);
    }
#undef ACT
    e->d_ids = be->alloc(be, N * sizeof(int32_t), "batch ids");
    e->d_mask = be->alloc(be, N * sizeof(int32_t), "batch mask");
    e->d_pos = be->alloc(be, N * sizeof(int32_t), "position ids");
    e->d_type = be->alloc(be, N * sizeof(int32_t), "token type ids");
    e->d_last = be->alloc(be, (size_t)B * sizeof(int32_t), "pooled token");  // zeros: the first token
    e->d_labels_i = be->alloc(be, (size_t)B * sizeof(int32_t), "batch labels");
    e->d_labels_f = be->alloc(be, (size_t)B * sizeof(float), "batch labels");
    size_t host_n = N;
    if (e->rel_on) {
        e->d_idx = be->alloc(be, (size_t)T * T * sizeof(int32_t), "relative positions");
        if ((size_t)T * T > host_n) host_n = (size_t)T * T;
    }
    e->h_tmp = xmalloc(host_n * sizeof(int32_t), "encoder host scratch");
    e->pos_T = e->idx_T = 0;
    m->logits = e->logits;
    m->act_bytes = bytes;
}

void encoder_free_acts(Encoder *m, Backend *be) {
    EncImpl *e = m->impl;
    if (!e || !e->acts) return;
    for (int s = 0; s < e->n_sets; s++) {
        EncActs *a = &e->acts[s];
        float *p[] = {a->x_in, a->q, a->k, a->v, a->probs, a->ctx, a->a_sum, a->mean1, a->rstd1, a->x_mid,
                      a->u, a->h, a->f_sum, a->mean2, a->rstd2, a->pq, a->pk, a->lora_pa_q, a->lora_pa_k};
        for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
            if (p[i]) be->free(be, p[i]);
        for (int mod = 0; mod < LORA_NUM_MODULES; mod++)
            if (a->lora_a[mod]) be->free(be, a->lora_a[mod]);
    }
    free(e->acts);
    e->acts = NULL;
    float **f[] = {&e->x_final, &e->emb_mean, &e->emb_rstd, &e->pooled0, &e->pre, &e->pooled, &e->logits,
                   &e->dlogits, &e->dpooled, &e->dpre, &e->dpooled0, &e->dres, &e->dfs, &e->dh, &e->du, &e->dq,
                   &e->dk, &e->dv, &e->dpq, &e->dpk, &e->lora_da, &e->d_labels_f};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (*f[i]) {
            be->free(be, *f[i]);
            *f[i] = NULL;
        }
    int32_t **g[] = {&e->d_ids, &e->d_mask, &e->d_pos, &e->d_type, &e->d_last, &e->d_labels_i, &e->d_idx};
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++)
        if (*g[i]) {
            be->free(be, *g[i]);
            *g[i] = NULL;
        }
    free(e->h_tmp);
    e->h_tmp = NULL;
    e->n_sets = 0;
    m->logits = NULL;
    m->act_bytes = 0;
}

void encoder_free(Encoder *m, Backend *be) {
    EncImpl *e = m->impl;
    if (e) {
        encoder_free_acts(m, be);
        for (int l = 0; l < e->L && e->layers; l++) {
            EncLayer *w = &e->layers[l];
            void *p[] = {w->wq, w->bq, w->wk, w->bk, w->wv, w->bv, w->wo, w->bo, w->ln1_w, w->ln1_b, w->wi,
                         w->bi, w->wout, w->bout, w->ln2_w, w->ln2_b, w->pq_base, w->pk_base};
            for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
                if (p[i]) be->free(be, p[i]);
        }
        free(e->layers);
        void *p[] = {e->wte, e->wpe, e->wtt, e->emb_ln_w, e->emb_ln_b, e->rel, e->pool_w, e->pool_b};
        for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
            if (p[i]) be->free(be, p[i]);
        free(e);
    }
    memset(m, 0, sizeof *m);
}
