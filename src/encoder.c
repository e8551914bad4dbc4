// encoder.c: BERT / DeBERTa-v2 encoders (being written).
#include "actlora/encoder.h"

#include "actlora/common.h"

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

void encoder_lora_shapes(const ModelConfig *mc, LoraShapes *s) { (void)mc; (void)s; die("encoder: not yet built"); }
void encoder_load(Encoder *m, Backend *be, const char *dir, const ModelConfig *mc, int num_labels, int random_init,
                  uint64_t seed) {
    (void)m; (void)be; (void)dir; (void)mc; (void)num_labels; (void)random_init; (void)seed;
    die("encoder: not yet built");
}
int encoder_init_head(Encoder *m, Backend *be, const char *dir, int random_init, LoraSet *ls, uint64_t seed) {
    (void)m; (void)be; (void)dir; (void)random_init; (void)ls; (void)seed;
    return 0;
}
void encoder_alloc_acts(Encoder *m, Backend *be, const LoraSet *ls, int B, int T) { (void)m; (void)be; (void)ls; (void)B; (void)T; }
void encoder_free_acts(Encoder *m, Backend *be) { (void)m; (void)be; }
void encoder_free(Encoder *m, Backend *be) { (void)m; (void)be; }
double encoder_forward(Encoder *m, Backend *be, const LoraSet *ls, const Batch *b, int train, float grad_scale,
                       uint64_t dropout_key, CalibStats *stats) {
    (void)m; (void)be; (void)ls; (void)b; (void)train; (void)grad_scale; (void)dropout_key; (void)stats;
    return 0.0;
}
void encoder_backward(Encoder *m, Backend *be, LoraSet *ls, const Batch *b, uint64_t dropout_key) {
    (void)m; (void)be; (void)ls; (void)b; (void)dropout_key;
}
