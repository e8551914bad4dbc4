// export.h: a PEFT-compatible adapter directory, loadable with
// `PeftModel.from_pretrained(<Arch>ForSequenceClassification.from_pretrained(base, num_labels=K), dir)`
// (Llama shown; BERT / DeBERTa adapters are named bert.encoder.layer.N... / deberta.encoder.layer.N..., their
// head is classifier.weight + classifier.bias, and target_modules is a regex naming exactly the adapted
// modules, because encoder module names are not suffix-unique):
//   adapter_model.safetensors  every LoRA A/B as "base_model.model.model.layers.N.<block>.<module>.lora_{A,B}.weight"
//                              and the head as "base_model.model.score.weight" (fp32)
//   adapter_config.json        peft_type LORA, task_type SEQ_CLS, r, lora_alpha, lora_dropout, use_rslora,
//                              target_modules, layers_to_transform (= the selection; null for encoders,
//                              whose target regex names the layers), modules_to_save
//                              ["classifier", "score"], base_model_name_or_path
#ifndef ACTLORA_EXPORT_H
#define ACTLORA_EXPORT_H

#include <stdint.h>

#include "actlora/common.h"
#include "actlora/backend.h"
#include "actlora/config.h"
#include "actlora/lora.h"

typedef struct {
    const char *name;   // actlora/PEFT short name, e.g. "model.layers.3.self_attn.q_proj.lora_A.weight", "score.weight"
    int64_t rows, cols;
    const float *data;  // host memory
} ExportTensor;

// Creates out_dir (and parents) and writes both files there (each via temp file + rename).
int export_peft(const char *out_dir, const RunConfig *cfg, const ExportTensor *t, int n, const int *layers,
                int n_layers, Error *err);

// The same from a live LoraSet (parameters downloaded from the backend).
int export_lora(const char *out_dir, const RunConfig *cfg, const LoraSet *ls, Backend *be, const int *layers,
                int n_layers, Error *err);

#endif
