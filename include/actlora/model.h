// model.h: the model a run trains, whatever its architecture. Dispatches to the Llama decoder
// (llama.h) or the BERT / DeBERTa-v2 encoders (encoder.h); main, calibration, training and
// export speak only to this interface. Each implementation keeps the same contract:
//   - frozen base weights live in the model; the adapters and the head in the LoraSet's flat buffer;
//   - forward returns the summed per-row loss, logits land in model_logits();
//   - backward accumulates (+=) into ls->grads and stops at the lowest adapted layer;
//   - with stats != NULL, forward adds the per-layer calibration statistics (calib.h).
#ifndef ACTLORA_MODEL_H
#define ACTLORA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "actlora/backend.h"
#include "actlora/calib.h"
#include "actlora/data.h"
#include "actlora/encoder.h"
#include "actlora/hfmodel.h"
#include "actlora/llama.h"
#include "actlora/lora.h"
#include "actlora/progress.h"

typedef struct {
    ModelArch arch;
    ModelConfig cfg;
    int num_labels;
    Llama llama;      // arch == ARCH_LLAMA
    Encoder enc;      // arch == ARCH_BERT or ARCH_DEBERTA_V2
} Model;

// "Llama", "BERT", "DeBERTa-v2" (for messages).
const char *model_arch_name(ModelArch arch);
// Names of the model's adapters, target modules and head.
const LoraNaming *model_lora_naming(ModelArch arch);
void model_lora_shapes(const ModelConfig *mc, LoraShapes *s);
// lora.target_modules names -> module slots of this architecture; an unknown name is an error that
// lists the architecture's names.
int model_parse_targets(ModelArch arch, const char (*names)[32], int n, int *modules, Error *err);
// Input width of the classification head: hidden_size, or DeBERTa's pooler_hidden_size.
int model_head_hidden(const ModelConfig *mc);
// Loads the frozen model. fuse_r > 0 (lora.fuse): the projections as bordered weights for adapters of
// rank fuse_r riding on the frozen GEMMs (Llama only: an encoder dies with a message saying so).
// progress (may be NULL): a line every few seconds while the layers load (progress.h).
void model_load(Model *m, Backend *be, const char *dir, const ModelConfig *mc, int num_labels, int random_init,
                uint64_t seed, int fuse_r, Progress *progress);
// Fills the head in ls from the directory when it holds one of the right shape, else initialises it
// as transformers does (weights N(0, initializer_range) drawn from seed: 0.02 for Llama, config.json's
// initializer_range for the encoders; bias 0). Returns 1 if loaded.
int model_init_head(Model *m, Backend *be, const char *dir, int random_init, LoraSet *ls, uint64_t seed);
// model.act_dtype for a model of this architecture on this backend (its weight format set) with lora.fuse =
// fuse: returns 1 when the saved activations go into the weight format ("bf16"), 0 for "fp32", or -1 with a
// message in err (may be NULL) naming the key to change (an encoder, lora.fuse off, or fp32 weights).
// Call it before model_load.
int model_act_wf(ModelArch arch, const Backend *be, const char *act_dtype, int fuse, Error *err);
// Puts the activations of a model loaded with lora.fuse into the weight format (model_act_wf == 1);
// before model_alloc_acts.
void model_set_act_wf(Model *m, int on);
// model.attention for a model of this architecture and head dimension on this backend (its name: the CUDA
// kernels exist for some head dimensions only), whose activations are (act_wf = 1) or are not in the weight
// format: 1 = "fused", 0 = "gemm", or -1 with a message in err (may be NULL) naming the key to change.
int model_att_fused(ModelArch arch, const Backend *be, int act_wf, int head_dim, const char *attention, Error *err);
// The fused attention on a model whose activations are in the weight format (model_att_fused == 1); after
// model_set_act_wf, before model_alloc_acts.
void model_set_att_fused(Model *m, int on);
void model_alloc_acts(Model *m, Backend *be, const LoraSet *ls, int B, int T);
void model_free_acts(Model *m, Backend *be);
void model_free(Model *m, Backend *be);
double model_forward(Model *m, Backend *be, const LoraSet *ls, const Batch *b, int train, float grad_scale,
                     uint64_t dropout_key, CalibStats *stats);
void model_backward(Model *m, Backend *be, LoraSet *ls, const Batch *b, uint64_t dropout_key);
// Logits [B, num_labels] of the last forward (backend memory) and the activation bytes allocated.
const float *model_logits(const Model *m);
size_t model_act_bytes(const Model *m);

#endif
