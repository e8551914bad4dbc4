// encoder.h: BERT-family (BertForSequenceClassification) and DeBERTa-v2/v3
// (DebertaV2ForSequenceClassification) encoders: forward and backward over the backend op table,
// with LoRA adapters from a LoraSet. Same contract as llama.h (see model.h).
//
// Adapters: query, key, value (DeBERTa: query_proj, key_proj, value_proj), attention.output.dense,
// intermediate.dense, output.dense on layers encoder.layer.N (LoraNaming slots Q, K, V, O, UP, DOWN).
// The pooler is frozen (as PEFT leaves it); the classifier (weight + bias) is the trainable head.
//
// LoRA set: lora_init(..., LORA_NAMING_BERT / LORA_NAMING_DEBERTA, shapes from encoder_lora_shapes,
// num_labels, hidden = hidden_size). The classifier is [num_labels, hidden_size] plus a bias: transformers'
// DebertaV2ForSequenceClassification sizes it by ContextPooler.output_dim = hidden_size, and its pooler
// is [pooler_hidden_size, pooler_hidden_size] applied to a hidden_size vector, so a DeBERTa whose
// pooler_hidden_size differs from hidden_size does not run in transformers either and is refused.
//
// Weights: tensor names with or without the "bert." / "deberta." prefix (a BertModel checkpoint such
// as all-MiniLM-L6-v2 has none), LayerNorm weights also as legacy gamma / beta. A checkpoint without
// pooler (DeBERTa-v3) gets one as transformers initialises it: weight N(0, initializer_range of
// config.json, 0.02 when absent) drawn from the seed, bias 0 (one line on stdout says so). A new
// classifier is N(0, initializer_range) drawn from the seed with bias 0.
//
// DeBERTa relative attention: the relative embeddings are normed once at load (frozen); without
// share_att_key the positional projections pos_query_proj / pos_key_proj of them are computed once
// too. With share_att_key, query_proj / key_proj adapters also act on the relative embeddings (as
// PEFT's wrapped Linear does), their dropout keyed apart from the token path's.
//
// Memory: as llama.h, activations are kept only for layers >= the lowest adapted layer (layers below
// run through one scratch set); act_bytes counts them with the head and backward scratch.
// Calibration (stats != NULL; calib.h): slot 0 = layer output, Q/K/V = layer input, O = attention
// context (attention.output.dense input), UP = LayerNorm-1 output (intermediate.dense input), DOWN = GELU
// output (output.dense input); GATE stays 0. Sums over real tokens.
//
// Padded rows: keys at mask 0 are invisible; the [CLS] (first) token is pooled, so every row must
// start with a real token (right padding).
#ifndef ACTLORA_ENCODER_H
#define ACTLORA_ENCODER_H

#include <stddef.h>
#include <stdint.h>

#include "actlora/backend.h"
#include "actlora/calib.h"
#include "actlora/data.h"
#include "actlora/hfmodel.h"
#include "actlora/lora.h"
#include "actlora/progress.h"

extern const LoraNaming LORA_NAMING_BERT;
extern const LoraNaming LORA_NAMING_DEBERTA;

typedef struct {
    ModelConfig cfg;
    int num_labels;
    float *logits;     // [B, num_labels] of the last forward (backend memory)
    size_t act_bytes;  // bytes of activation + scratch memory
    void *impl;        // weights, activations, scratch (src/encoder_internal.h; private)
} Encoder;

void encoder_lora_shapes(const ModelConfig *mc, LoraShapes *s);
// progress (may be NULL): a line every few seconds while the layers load (progress.h).
void encoder_load(Encoder *m, Backend *be, const char *dir, const ModelConfig *mc, int num_labels, int random_init,
                  uint64_t seed, Progress *progress);
int encoder_init_head(Encoder *m, Backend *be, const char *dir, int random_init, LoraSet *ls, uint64_t seed);
void encoder_alloc_acts(Encoder *m, Backend *be, const LoraSet *ls, int B, int T);
void encoder_free_acts(Encoder *m, Backend *be);
void encoder_free(Encoder *m, Backend *be);
double encoder_forward(Encoder *m, Backend *be, const LoraSet *ls, const Batch *b, int train, float grad_scale,
                       uint64_t dropout_key, CalibStats *stats);
void encoder_backward(Encoder *m, Backend *be, LoraSet *ls, const Batch *b, uint64_t dropout_key);

// DeBERTa's relative-position index for T tokens: idx[i*T + j] = clamp(bucket(i - j) + span, 0,
// 2*span - 1), where bucket is transformers' make_log_bucket_position(., buckets, max_rel) computed in
// float32 (identity when buckets <= 0), span = buckets > 0 ? buckets : max_rel.
void encoder_relpos_index(int32_t *idx, int T, int span, int buckets, int max_rel);

#endif
