// memplan.c: device-memory plan of a Llama or encoder (BERT / DeBERTa-v2) LoRA run (memplan.h).
// Every term is the element count of a buffer the code allocates, written next to the name it has
// there, so a change to llama_alloc_acts / encoder_load / encoder_alloc_acts that is not mirrored
// here fails tests/test_memplan.c.
#include "actlora/memplan.h"

#include <stdio.h>
#include <string.h>

#include "actlora/backend_cuda.h"  // BACKEND_CUDA_CUBLAS_WORKSPACE (a constant; no CUDA needed)
#include "actlora/common.h"
#include "actlora/model.h"         // model_arch_name, model_lora_naming, model_head_hidden

#define F32 sizeof(float)
#define SUMSQ_CHUNK 8192  // src/cuda/reduce.cu: elements per sumsq partial
#define BG_CHUNK 256      // src/cuda/encoder.cu: rows per bias_grad partial

// r * (in + out) of one adapter on module m
static size_t adapter_params(const ModelConfig *mc, int m, int r) {
    size_t C = (size_t)mc->hidden_size, I = (size_t)mc->intermediate_size,
           qd = (size_t)mc->num_attention_heads * mc->head_dim, kvd = (size_t)mc->num_key_value_heads * mc->head_dim;
    size_t in = 0, out = 0;
    switch (m) {
    case LORA_Q: in = C; out = qd; break;
    case LORA_K: in = C; out = kvd; break;
    case LORA_V: in = C; out = kvd; break;
    case LORA_O: in = qd; out = C; break;
    case LORA_GATE: in = C; out = I; break;
    case LORA_UP: in = C; out = I; break;
    case LORA_DOWN: in = I; out = C; break;
    default: die("internal: memplan: bad LoRA module id %d", m);
    }
    return (size_t)r * (in + out);
}

// The inputs both planners share: checked, normalised (no adapted layer or no module: head only,
// lowest_layer = L) and stored in p (zeroed first).
static void plan_inputs(MemPlan *p, const ModelConfig *mc, int num_labels, int lowest_layer, int n_adapted_layers,
                        const int *modules, int n_modules, int r, int micro_batch, int seq_len, int weight_bytes) {
    memset(p, 0, sizeof *p);
    int L = mc->num_hidden_layers;
    check(weight_bytes == 2 || weight_bytes == 4, "memplan: weight_bytes %d (2 = bf16, 4 = fp32)", weight_bytes);
    check(micro_batch >= 1 && seq_len >= 1 && r >= 1 && num_labels >= 1, "memplan: micro_batch %d, seq_len %d, "
          "r %d, num_labels %d must be positive", micro_batch, seq_len, r, num_labels);
    check(n_modules >= 0 && n_modules <= LORA_NUM_MODULES, "memplan: %d modules", n_modules);
    if (n_adapted_layers <= 0 || n_modules == 0) {
        n_adapted_layers = 0;
        lowest_layer = L;
    }
    check(n_adapted_layers == 0 || (lowest_layer >= 0 && lowest_layer < L && n_adapted_layers <= L - lowest_layer),
          "memplan: %d adapted layers from layer %d do not fit a model of %d layers", n_adapted_layers, lowest_layer,
          L);
    p->mc = *mc;
    p->num_labels = num_labels;
    p->lowest_layer = lowest_layer;
    p->n_adapted_layers = n_adapted_layers;
    for (int i = 0; i < n_modules; i++) p->modules[i] = modules[i];
    p->n_modules = n_modules;
    p->r = r;
    p->micro_batch = micro_batch;
    p->seq_len = seq_len;
    p->weight_bytes = weight_bytes;
}

void memplan_llama(MemPlan *p, const ModelConfig *mc, int num_labels, int lowest_layer, int n_adapted_layers,
                   const int *modules, int n_modules, int r, int micro_batch, int seq_len, int weight_bytes,
                   int flags) {
    plan_inputs(p, mc, num_labels, lowest_layer, n_adapted_layers, modules, n_modules, r, micro_batch, seq_len,
                weight_bytes);
    int L = mc->num_hidden_layers;
    lowest_layer = p->lowest_layer;
    n_adapted_layers = p->n_adapted_layers;
    p->fused = (flags & MEMPLAN_FUSED) != 0;
    p->act_wf = (flags & MEMPLAN_ACT_WF) != 0;
    p->att_fused = (flags & MEMPLAN_ATT_FUSED) != 0;
    check(!p->act_wf || p->fused, "internal: memplan: activations in the weight format without lora.fuse");
    check(!p->att_fused || p->act_wf, "internal: memplan: fused attention without activations in the weight format");

    size_t B = (size_t)micro_batch, T = (size_t)seq_len, N = B * T, C = (size_t)mc->hidden_size,
           I = (size_t)mc->intermediate_size, H = (size_t)mc->num_attention_heads, V = (size_t)mc->vocab_size,
           K = (size_t)num_labels, R = (size_t)r, qd = H * mc->head_dim,
           kvd = (size_t)mc->num_key_value_heads * mc->head_dim;

    // ---- frozen weights (llama_load): embedding + 7 projections per layer in the backend's weight
    //      format (weight_bytes), the final norm + 2 norms per layer in fp32 (rmsnorm reads them)
    size_t per_layer = qd * C + 2 * kvd * C + C * qd + 3 * C * I;
    if (p->fused)  // bordered [out + r, in + r] (lora.fuse)
        per_layer = (qd + R) * (C + R) + 2 * (kvd + R) * (C + R) + (C + R) * (qd + R) + 3 * (C + R) * (I + R);
    p->weights = (V * C + (size_t)L * per_layer) * (size_t)weight_bytes + (C + (size_t)L * 2 * C) * F32;
    p->rope = 2 * (size_t)mc->max_position_embeddings * (size_t)(mc->head_dim / 2) * F32;

    // ---- trainable state (lora_init): adapters + head, four fp32 buffers
    size_t per_adapted_layer = 0;
    for (int i = 0; i < n_modules; i++) per_adapted_layer += adapter_params(mc, modules[i], r);
    p->n_adapters = n_adapted_layers * n_modules;
    p->trainable_params = (size_t)n_adapted_layers * per_adapted_layer + K * C;
    p->trainable = 4 * p->trainable_params * F32;

    // ---- activations (llama_alloc_acts)
    p->saved_from = lowest_layer < L ? lowest_layer : L;
    p->act_sets = (L - p->saved_from) + (p->saved_from > 0 ? 1 : 0);
    size_t set = N * C      // x_in
                 + N        // rstd1
                 + N * qd   // att
                 + N * C    // x_mid
                 + N;       // rstd2
    // xn1, xn2 [N, C], q, k, v, probs, gate, up [N, I] and h: fp32, or in the weight format with xn1, xn2
    // [N, C + r] and h [N, I + r] (act_wf)
    size_t mlp_el = p->act_wf ? (size_t)weight_bytes : F32, mlp_ld = p->act_wf ? I + R : I,
           xn_ld = p->act_wf ? C + R : C;
    // (att_fused: lse [B, H, T] fp32 instead of the probabilities [B, H, T, T])
    size_t set_mlp = (2 * N * xn_ld + N * qd + 2 * N * kvd + (p->att_fused ? 0 : B * H * T * T) + 2 * N * I +
                      N * mlp_ld) * mlp_el;
    if (p->att_fused) set += B * H * T;  // lse
    p->acts_layers = (size_t)p->act_sets * (set * F32 + set_mlp) + (size_t)p->n_adapters * N * R * F32;  // + lora_a
    p->logits = 2 * B * K * F32;                                                           // logits, dlogits
    p->acts_head = (N * C          // x_final
                    + B * C        // pooled
                    + B            // rstd_f
                    + B * C        // pooled_n
                    + 2 * B * K    // logits, dlogits
                    + B * C        // dpool
                    + B * C)       // dpool_n
                   * F32;
    int trains_layers = p->saved_from < L;
    if (trains_layers) {
        p->acts_bwd = (N * C        // dres
                       + N * C      // dxn
                       + N * I      // dh
                       + N * qd     // datt
                       + N * qd     // dq
                       + 2 * N * kvd  // dk, dv
                       + N * R)     // lora_da
                          * F32 +
                      2 * N * mlp_ld * mlp_el;  // dgate, dup (in the weight format with act_wf)
    }
    p->acts = p->acts_layers + p->acts_head + p->acts_bwd;
    p->batch = (2 * N + 3 * B) * sizeof(int32_t);  // ids, mask; last, labels_i, labels_f

    // ---- backend scratch: attention backward's dS (whenever backward reaches an attention block:
    //      any layer above the lowest, or q/k/v adapters on the lowest), and reduction partials
    int attn_bwd = 0;
    if (trains_layers) {
        attn_bwd = p->saved_from < L - 1;
        for (int i = 0; i < n_modules; i++)
            if (modules[i] == LORA_Q || modules[i] == LORA_K || modules[i] == LORA_V) attn_bwd = 1;
    }
    size_t partials = p->trainable_params / SUMSQ_CHUNK + 1;
    if (N > partials) partials = N;
    size_t tt = B * H * T * T, att_scratch = attn_bwd ? tt * F32 : 0;
    if (p->act_wf && (size_t)weight_bytes != F32)  // attention_*_wf in bf16 (src/cuda/attention*.cu): the fp32
        // scores in the forward; in the backward dP (fp32), dS and a copy of dout in the weight format
        att_scratch = attn_bwd ? tt * (F32 + (size_t)weight_bytes) + N * qd * (size_t)weight_bytes : tt * F32;
    if (p->att_fused)  // attention_fused_bwd (src/cuda/attention_fused.cu): dout in bf16 and delta [B,H,T] fp32
        att_scratch = attn_bwd ? N * qd * (size_t)weight_bytes + 256 + B * H * T * F32 : 0;
    // LoRA dropout (lora_grad_a_dropout): [chunks, r, in] fp32 partial sums, in the same grow-only scratch
    size_t widest_in = I > C ? I : C;
    if (qd > widest_in) widest_in = qd;
    size_t drop_scratch = trains_layers ? (size_t)BACKEND_CUDA_LORA_DROP_CHUNKS * R * widest_in * F32 : 0;
    // every attention op also keeps its pointer arrays (B*H device pointers each) in the scratch, after its
    // regions (at most three, each 256-byte aligned): the forward needs them even when nothing trains
    if (!p->att_fused)  // (the fused kernels have none)
        att_scratch += B * H * BACKEND_CUDA_ATT_MAX_ARRAYS * sizeof(void *) + 3 * (size_t)BACKEND_CUDA_ATT_ALIGN;
    p->scratch = (att_scratch > drop_scratch ? att_scratch : drop_scratch) + partials * sizeof(double);
    // bf16 weights: wgemm's bf16 copy of its activation operand (src/cuda/weights.cu), at most
    // N x max(C, I, H*D) (the backward's dgate / dup, N x I, when layers are trained; h in the forward)
    // (fused: the operand [X | Xa], N x (width + r), in the weight format: bf16, or fp32)
    // (act_wf: the products of xn1, xn2, h, dgate, dup read them in place; the widest operand is then C or H*D)
    size_t widest = I > C && !p->act_wf ? I : C;
    if (qd > widest) widest = qd;
    if (p->fused) p->scratch += N * (widest + R) * (size_t)weight_bytes;
    else if (weight_bytes == 2) p->scratch += N * widest * 2;
    p->workspace = BACKEND_CUDA_CUBLAS_WORKSPACE;

    p->total = p->weights + p->rope + p->trainable + p->acts + p->batch + p->scratch + p->workspace;
}

// r * (in + out) of one encoder adapter on module m (encoder_lora_shapes; there is no GATE)
static size_t enc_adapter_params(const ModelConfig *mc, int m, int r) {
    size_t C = (size_t)mc->hidden_size, I = (size_t)mc->intermediate_size;
    size_t qd = (size_t)mc->num_attention_heads *
                (size_t)(mc->head_dim > 0 ? mc->head_dim : mc->hidden_size / mc->num_attention_heads);
    size_t in = 0, out = 0;
    switch (m) {
    case LORA_Q: case LORA_K: case LORA_V: in = C; out = qd; break;
    case LORA_O: in = qd; out = C; break;
    case LORA_UP: in = C; out = I; break;
    case LORA_DOWN: in = I; out = C; break;
    default: die("internal: memplan: LoRA module id %d is not an encoder module", m);
    }
    return (size_t)r * (in + out);
}

void memplan_encoder(MemPlan *p, const ModelConfig *mc, int num_labels, int lowest_layer, int n_adapted_layers,
                     const int *modules, int n_modules, int r, int micro_batch, int seq_len, int weight_bytes) {
    check(mc->arch == ARCH_BERT || mc->arch == ARCH_DEBERTA_V2, "internal: memplan_encoder on a %s model",
          model_arch_name(mc->arch));
    plan_inputs(p, mc, num_labels, lowest_layer, n_adapted_layers, modules, n_modules, r, micro_batch, seq_len,
                weight_bytes);
    int L = mc->num_hidden_layers;
    lowest_layer = p->lowest_layer;
    n_adapted_layers = p->n_adapted_layers;
    int has[LORA_NUM_MODULES] = {0};
    for (int i = 0; i < n_modules; i++) {
        (void)enc_adapter_params(mc, modules[i], 1);  // dies on a module encoders lack
        has[modules[i]] = 1;
    }

    // the encoder's derived sizes (encoder_load)
    int deberta = mc->arch == ARCH_DEBERTA_V2;
    int rel_on = deberta && mc->relative_attention;
    int c2p = rel_on && mc->att_c2p, p2c = rel_on && mc->att_p2c;
    size_t P = 0;  // rows of the relative embeddings: 2 * span
    if (rel_on) {
        int max_rel = mc->max_relative_positions < 1 ? mc->max_position_embeddings : mc->max_relative_positions;
        P = 2 * (size_t)(mc->position_buckets > 0 ? mc->position_buckets : max_rel);
    }
    size_t B = (size_t)micro_batch, T = (size_t)seq_len, N = B * T, C = (size_t)mc->hidden_size,
           I = (size_t)mc->intermediate_size, H = (size_t)mc->num_attention_heads, V = (size_t)mc->vocab_size,
           K = (size_t)num_labels, R = (size_t)r;

    // ---- frozen weights (encoder_load): the word table, 6 Linear weights per layer and the pooler
    //      in the weight format (a pooler missing from the checkpoint is created, so always); in fp32
    //      the position / token-type tables, the embedding LayerNorm, the relative embeddings, per layer
    //      6 biases + 2 LayerNorms and the positional projections pq_base / pk_base [P, C], the pooler
    //      bias. (encoder.LayerNorm and pos_*_proj are loaded, applied and freed during the load.)
    size_t wfmt = V * C                                   // wte
                  + (size_t)L * (4 * C * C + 2 * C * I)   // wq, wk, wv, wo; wi, wout
                  + C * C;                                // pool_w
    size_t f32 = ((!deberta || mc->position_biased_input) ? (size_t)mc->max_position_embeddings * C : 0)  // wpe
                 + (mc->type_vocab_size > 0 ? (size_t)mc->type_vocab_size * C : 0)                          // wtt
                 + 2 * C                                                                                   // emb LN
                 + P * C                                                                                   // rel
                 + (size_t)L * (4 * C + I + C   // bq, bk, bv, bo; bi; bout
                                + 4 * C         // ln1_w, ln1_b, ln2_w, ln2_b
                                + (p2c ? P * C : 0) + (c2p ? P * C : 0))  // pq_base, pk_base
                 + C;                                                                                      // pool_b
    p->weights = wfmt * (size_t)weight_bytes + f32 * F32;
    p->rope = 0;

    // ---- trainable state (lora_init): adapters + the classifier weight and bias, four fp32 buffers
    size_t per_adapted_layer = 0;
    for (int i = 0; i < n_modules; i++) per_adapted_layer += enc_adapter_params(mc, modules[i], r);
    p->n_adapters = n_adapted_layers * n_modules;
    p->trainable_params = (size_t)n_adapted_layers * per_adapted_layer + K * (size_t)model_head_hidden(mc) + K;
    p->trainable = 4 * p->trainable_params * F32;

    // ---- activations (encoder_alloc_acts)
    p->saved_from = lowest_layer < L ? lowest_layer : L;
    p->act_sets = (L - p->saved_from) + (p->saved_from > 0 ? 1 : 0);
    size_t set = N * C            // x_in
                 + 3 * N * C      // q, k, v
                 + B * H * T * T  // probs
                 + N * C          // ctx
                 + N * C          // a_sum
                 + 2 * N          // mean1, rstd1
                 + N * C          // x_mid
                 + 2 * N * I      // u, h
                 + N * C          // f_sum
                 + 2 * N;         // mean2, rstd2
    // per adapted layer: lora_a [N, r] per module; with share_att_key the positional path of a Q (p2c) /
    // K (c2p) adapter: pq / pk [P, C] and lora_pa_q / lora_pa_k [P, r]
    size_t per_adapted_acts = (size_t)n_modules * N * R;
    if (rel_on && mc->share_att_key) {
        if (p2c && has[LORA_Q]) per_adapted_acts += P * C + P * R;
        if (c2p && has[LORA_K]) per_adapted_acts += P * C + P * R;
    }
    p->acts_layers = ((size_t)p->act_sets * set + (size_t)n_adapted_layers * per_adapted_acts) * F32;
    p->logits = 2 * B * K * F32;  // logits, dlogits
    p->acts_head = (N * C        // x_final
                    + 2 * N      // emb_mean, emb_rstd
                    + 3 * B * C  // pooled0, pre, pooled
                    + 2 * B * K) // logits, dlogits
                   * F32;
    int trains_layers = p->saved_from < L;
    if (trains_layers) {
        size_t rows = N > P ? N : P;
        p->acts_bwd = (3 * B * C                    // dpooled, dpre, dpooled0
                       + 2 * N * C                  // dres, dfs
                       + 2 * N * I                  // dh, du
                       + 3 * N * C                  // dq, dk, dv
                       + (p2c ? P * C : 0)          // dpq
                       + (c2p ? P * C : 0)          // dpk
                       + rows * R)                  // lora_da
                      * F32;
    }
    p->acts = p->acts_layers + p->acts_head + p->acts_bwd;
    // ids, mask, position ids, token types; pooled token, labels_i, labels_f; relative-position index
    p->batch = (4 * N + 3 * B + (rel_on ? T * T : 0)) * sizeof(int32_t);

    // ---- backend scratch (src/cuda/encoder.cu): attention_enc_bwd's dS [B,H,T,T] and, with the c2p / p2c
    //      terms, its position index (off [T,P], start [P+1], list [T*T]), whenever backward reaches an
    //      attention block (a layer above the lowest, or q/k/v adapters on the lowest); reduction partials
    //      (sumsq over the trainable state, row norms of calibration, the classifier's bias_grad)
    int attn_bwd = 0;
    if (trains_layers) attn_bwd = p->saved_from < L - 1 || has[LORA_Q] || has[LORA_K] || has[LORA_V];
    size_t idx = (c2p || p2c) ? T * P + P + 1 + T * T : 0;
    size_t partials = p->trainable_params / SUMSQ_CHUNK + 1;
    if (N > partials) partials = N;
    if ((B + BG_CHUNK - 1) / BG_CHUNK * K > partials) partials = (B + BG_CHUNK - 1) / BG_CHUNK * K;
    size_t att_scratch = attn_bwd ? (B * H * T * T + idx) * F32 : 0, widest_in = I > C ? I : C;
    size_t drop_scratch = trains_layers ? (size_t)BACKEND_CUDA_LORA_DROP_CHUNKS * R * widest_in * F32 : 0;  // as Llama's
    p->scratch = (att_scratch > drop_scratch ? att_scratch : drop_scratch) + partials * sizeof(double);
    // bf16 weights: wgemm's bf16 copy of its activation operand (src/cuda/weights.cu), grow-only: the
    // largest is N x max(C, I) (h into output.dense; du into intermediate.dense's dX), or [P, C] when
    // the load projects the relative embeddings
    if (weight_bytes == 2) {
        size_t op = N * (I > C ? I : C);
        if ((c2p || p2c) && P * C > op) op = P * C;
        p->scratch += op * 2;
    }
    p->workspace = BACKEND_CUDA_CUBLAS_WORKSPACE;

    p->total = p->weights + p->rope + p->trainable + p->acts + p->batch + p->scratch + p->workspace;
}

size_t memplan_margin(size_t device_bytes) { return MEMPLAN_MARGIN_FIXED + device_bytes / 100 * MEMPLAN_MARGIN_PERCENT; }

static int fits(const MemPlan *p, size_t device_bytes) {
    size_t need = p->total + memplan_margin(device_bytes);
    return need >= p->total && need <= device_bytes;
}

// p planned again with micro-batch B, everything else unchanged (Llama or encoder, by p->mc.arch)
static void replan(MemPlan *q, const MemPlan *p, int B) {
    if (p->mc.arch == ARCH_LLAMA)
        memplan_llama(q, &p->mc, p->num_labels, p->lowest_layer, p->n_adapted_layers, p->modules, p->n_modules,
                      p->r, B, p->seq_len, p->weight_bytes,
                      (p->fused ? MEMPLAN_FUSED : 0) | (p->act_wf ? MEMPLAN_ACT_WF : 0) |
                          (p->att_fused ? MEMPLAN_ATT_FUSED : 0));
    else
        memplan_encoder(q, &p->mc, p->num_labels, p->lowest_layer, p->n_adapted_layers, p->modules, p->n_modules,
                        p->r, B, p->seq_len, p->weight_bytes);
}

int memplan_max_micro_batch(const MemPlan *p, size_t device_bytes) {
    MemPlan q;
    int lo = 0, hi = 1;  // fits(lo) (or lo == 0), and we look for the largest
    const int cap = 65536;
    for (;;) {  // double until it stops fitting
        replan(&q, p, hi);
        if (!fits(&q, device_bytes)) break;
        lo = hi;
        if (hi == cap) return cap;
        hi = hi * 2 > cap ? cap : hi * 2;
    }
    while (hi - lo > 1) {  // fits(lo), !fits(hi)
        int mid = lo + (hi - lo) / 2;
        replan(&q, p, mid);
        if (fits(&q, device_bytes)) lo = mid;
        else hi = mid;
    }
    return lo;
}

#define GIB(x) ((double)(x) / 1073741824.0)

int memplan_fit(const MemPlan *p, size_t device_bytes, char *report, size_t n) {
    const ModelConfig *mc = &p->mc;
    int ok = fits(p, device_bytes);
    size_t margin = memplan_margin(device_bytes);
    char buf[4096];
    size_t len = 0;
#define OUT(...)                                                                                 \
    do {                                                                                         \
        if (len < sizeof buf) {                                                                  \
            int _w = snprintf(buf + len, sizeof buf - len, __VA_ARGS__);                         \
            len = _w < 0 ? sizeof buf : len + (size_t)_w;                                        \
        }                                                                                        \
    } while (0)
#define ROW(name, bytes) OUT("  %-34s %10.2f GiB\n", name, GIB(bytes))
    int llama = mc->arch == ARCH_LLAMA;
    char mods[192] = "", heads[64];
    for (int i = 0; i < p->n_modules; i++)
        snprintf(mods + strlen(mods), sizeof mods - strlen(mods), "%s%s", i ? "," : "",
                 lora_module_name(model_lora_naming(mc->arch), (LoraModule)p->modules[i]));
    if (llama) snprintf(heads, sizeof heads, "%d/%d", mc->num_attention_heads, mc->num_key_value_heads);
    else snprintf(heads, sizeof heads, "%d", mc->num_attention_heads);
    OUT("memory plan: %s %d layers, hidden %d, inter %d, heads %s, vocab %d | micro-batch %d x %d tokens | "
        "weights %s%s | LoRA r=%d on %d layer(s) from layer %d [%s]\n", model_arch_name(mc->arch),
        mc->num_hidden_layers, mc->hidden_size, mc->intermediate_size, heads, mc->vocab_size, p->micro_batch,
        p->seq_len, p->weight_bytes == 2 ? "bf16" : "fp32", p->fused ? ", bordered (lora.fuse)" : "",
        p->r, p->n_adapted_layers, p->lowest_layer, mods);
    ROW(llama ? "frozen weights" : "frozen weights (+ biases, norms)", p->weights);
    if (llama) ROW("RoPE tables (fp32)", p->rope);
    char what[64];
    snprintf(what, sizeof what, "activations, %d layer set(s) (%s%s)", p->act_sets, p->act_wf ? "most in bf16" : "fp32",
             p->att_fused ? ", fused attention" : "");
    ROW(what, p->acts_layers);
    ROW("head buffers (incl. logits)", p->acts_head);
    ROW("  of which logits + dlogits", p->logits);
    ROW("backward scratch", p->acts_bwd);
    ROW(p->weight_bytes == 2 ? "backend scratch (dS, bf16 operand)" : "backend scratch (attention dS)", p->scratch);
    ROW("batch buffers", p->batch);
    snprintf(what, sizeof what, "trainable p/g/m/v (%zu params)", p->trainable_params);
    ROW(what, p->trainable);
    ROW("cuBLAS workspace", p->workspace);
    ROW("total", p->total);
    ROW("safety margin", margin);
    ROW("device", device_bytes);
    if (ok) {
        OUT("  => fits, %.2f GiB to spare; largest micro-batch that fits: %d\n",
            GIB(device_bytes - p->total - margin), memplan_max_micro_batch(p, device_bytes));
    } else {
        int best = memplan_max_micro_batch(p, device_bytes);
        OUT("  => does not fit: needs %.2f GiB + %.2f GiB margin, the device has %.2f GiB\n", GIB(p->total),
            GIB(margin), GIB(device_bytes));
        if (best > 0)
            OUT("     set train.micro_batch <= %d (and raise train.grad_accum to keep the global batch)\n", best);
        else
            OUT("     not even micro-batch 1 fits: adapt fewer layers (lora.layers, or calibration keeping the top "
                "layers), shorten data.seq_len,%s spread the run over a larger GPU\n",
                p->weight_bytes == 4 ? " use bf16 weights (model.dtype = \"bf16\", the GPU's default)," : "");
    }
#undef ROW
#undef OUT
    if (report && n) snprintf(report, n, "%s", buf);
    return ok;
}
