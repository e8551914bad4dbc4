// hfmodel.h: a Hugging Face model directory: config.json -> ModelConfig, and the weights in
// model.safetensors or in shards listed by model.safetensors.index.json.
#ifndef ACTLORA_HFMODEL_H
#define ACTLORA_HFMODEL_H

#include <stdint.h>

#include "actlora/common.h"
#include "actlora/safetensors.h"

// llama: LlamaForSequenceClassification; bert: BertForSequenceClassification (BERT, MiniLM);
// deberta-v2: DebertaV2ForSequenceClassification (DeBERTa-v2 and -v3).
typedef enum { ARCH_UNKNOWN = 0, ARCH_LLAMA = 1, ARCH_BERT = 2, ARCH_DEBERTA_V2 = 3 } ModelArch;

typedef struct {
    ModelArch arch;
    char model_type[32];          // as written in config.json
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;      // defaults to num_attention_heads
    int head_dim;                 // defaults to hidden_size / num_attention_heads
    int vocab_size;
    int max_position_embeddings;
    int pad_token_id;             // -1 when null/absent
    int bos_token_id;             // -1 when null/absent
    int eos_token_id;             // -1 when null/absent (first id if a list)
    double rms_norm_eps;
    double rope_theta;
    // rope scaling: rope_type "llama3" (transformers' rope_scaling or rope_parameters dict)
    int rope_llama3;
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_position_embeddings;
    int tie_word_embeddings;
    int num_labels;               // from num_labels or id2label; 0 when absent
    char torch_dtype[16];         // "float32" | "bfloat16" | "float16" | "" (informative)
    // ---- encoders (bert, deberta-v2); hidden_act must be "gelu" (exact erf GELU)
    double layer_norm_eps;
    int type_vocab_size;          // 0: no token-type embeddings (DeBERTa-v3)
    int pooler_tanh;              // pooler activation: 1 tanh (BERT), 0 gelu (DeBERTa pooler_hidden_act "gelu")
    int pooler_hidden_size;       // DeBERTa pooler_hidden_size (defaults to hidden_size)
    // ---- deberta-v2 only
    int relative_attention;       // relative (disentangled) attention on
    int position_buckets;         // <= 0: no log buckets
    int max_relative_positions;   // < 1 in config.json means max_position_embeddings
    int share_att_key;            // positional q/k projections are query_proj / key_proj (else pos_*_proj)
    int norm_rel_ebd;             // norm_rel_ebd contains "layer_norm"
    int position_biased_input;    // absolute position embeddings added to the input
    int att_c2p, att_p2c;         // pos_att_type contains "c2p" / "p2c"
} ModelConfig;

// Parses config.json text; `source` names the file in messages. Unsupported features
// (e.g. attention_bias, unknown rope_type, unknown model_type) are errors, never ignored.
int hfconfig_parse(ModelConfig *mc, const char *json_text, const char *source, Error *err);
int hfconfig_load(ModelConfig *mc, const char *config_json_path, Error *err);

typedef struct {
    char *dir;
    int n_files;
    SafeTensors *files;
} HFWeights;

// Opens <dir>/model.safetensors, or every shard named in <dir>/model.safetensors.index.json
// (checking that every indexed tensor is in the shard the index names).
int hfweights_open(HFWeights *w, const char *dir, Error *err);
void hfweights_close(HFWeights *w);
// Finds a tensor by name in any shard; *file (optional) receives the shard's path.
const StTensor *hfweights_find(const HFWeights *w, const char *name, const char **file);
// Reads tensor `name` as fp32 into out after checking it has exactly shape[0..ndim).
// Errors name the file and tensor and print the expected and found shapes.
int hfweights_read_f32(const HFWeights *w, const char *name, int ndim, const int64_t *shape, float *out,
                       Error *err);

// A fingerprint of a model directory for checkpoint compatibility: config.json's bytes and, when
// with_weights, every tensor's name, dtype and shape (not the values: hashing 16 GB would be slow).
int hfmodel_fingerprint(const char *dir, int with_weights, uint64_t *out, Error *err);

#endif
