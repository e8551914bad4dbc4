// encoder.h: BERT-family (BertForSequenceClassification) and DeBERTa-v2/v3
// (DebertaV2ForSequenceClassification) encoders: forward and backward over the backend op table,
// with LoRA adapters from a LoraSet. Same contract as llama.h (see model.h).
//
// Adapters: query, key, value (DeBERTa: query_proj, key_proj, value_proj), attention.output.dense,
// intermediate.dense, output.dense on layers encoder.layer.N (LoraNaming slots Q, K, V, O, UP, DOWN).
// The pooler is frozen (as PEFT leaves it); the classifier (weight + bias) is the trainable head.
#ifndef ACTLORA_ENCODER_H
#define ACTLORA_ENCODER_H

#include <stddef.h>
#include <stdint.h>

#include "actlora/backend.h"
#include "actlora/calib.h"
#include "actlora/data.h"
#include "actlora/hfmodel.h"
#include "actlora/lora.h"

extern const LoraNaming LORA_NAMING_BERT;
extern const LoraNaming LORA_NAMING_DEBERTA;

typedef struct {
    ModelConfig cfg;
    int num_labels;
    float *logits;     // [B, num_labels] of the last forward (backend memory)
    size_t act_bytes;  // bytes of activation + scratch memory
    void *impl;        // weights, activations, scratch (encoder.c)
} Encoder;

void encoder_lora_shapes(const ModelConfig *mc, LoraShapes *s);
void encoder_load(Encoder *m, Backend *be, const char *dir, const ModelConfig *mc, int num_labels, int random_init,
                  uint64_t seed);
int encoder_init_head(Encoder *m, Backend *be, const char *dir, int random_init, LoraSet *ls, uint64_t seed);
void encoder_alloc_acts(Encoder *m, Backend *be, const LoraSet *ls, int B, int T);
void encoder_free_acts(Encoder *m, Backend *be);
void encoder_free(Encoder *m, Backend *be);
double encoder_forward(Encoder *m, Backend *be, const LoraSet *ls, const Batch *b, int train, float grad_scale,
                       uint64_t dropout_key, CalibStats *stats);
void encoder_backward(Encoder *m, Backend *be, LoraSet *ls, const Batch *b, uint64_t dropout_key);

#endif
