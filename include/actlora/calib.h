// calib.h: Act-LoRA's calibration and layer selection.
//
// Statistics: over the calibration batches, for every layer l, the sum over real (unpadded)
// tokens of the per-token L2 norm of (0) the block output and (1+m) the input of each
// LoRA-targetable module m (q/k/v read the attention-normed input, o the attention output,
// gate/up the MLP-normed input, down the SwiGLU output), plus the real-token count. Sums are
// fp64 and all-reduced (SUM) so every rank computes the very same scores and selection.
//
// Scores: activation/block_output = mean block-output norm; activation/lora_input = mean over the
// configured target modules of their mean input norm; gradient = mean per-layer L2 norm of the LoRA
// gradients (adapters on every layer, PEFT init) over the calibration batches; random = seeded
// uniform draws. Layers are ranked by descending score, ties broken by lower layer index.
#ifndef ACTLORA_CALIB_H
#define ACTLORA_CALIB_H

#include <stdint.h>

#include "actlora/common.h"
#include "actlora/lora.h"

#define CALIB_NSTAT (1 + LORA_NUM_MODULES)  // block output + one per module input

typedef enum { PROBE_BLOCK_OUTPUT, PROBE_LORA_INPUT } CalibProbe;
typedef enum { METHOD_ACTIVATION, METHOD_GRADIENT, METHOD_RANDOM } CalibMethod;
typedef enum { RULE_TOP_K, RULE_FRACTION, RULE_CUMULATIVE } SelectRule;

typedef struct {
    int num_layers;
    double *sums;    // [L, CALIB_NSTAT] sums of per-token norms (activation), or [L, 1] gradient norms
    double tokens;   // real tokens (activation) or batches (gradient) accumulated
} CalibStats;

void calib_stats_init(CalibStats *s, int num_layers);
void calib_stats_free(CalibStats *s);
void calib_stats_zero(CalibStats *s);

int calib_probe_parse(const char *name);
int calib_method_parse(const char *name);
int calib_rule_parse(const char *name);

// Per-layer scores [L] from (reduced) statistics. For PROBE_LORA_INPUT, `modules` lists the
// target modules averaged over. METHOD_RANDOM ignores the statistics and draws from `seed`.
void calib_scores(const CalibStats *s, CalibMethod method, CalibProbe probe, const int *modules, int n_modules,
                  uint64_t seed, double *scores);
// order[i] = layer with the i-th highest score (ties: lower layer first); rank_of[layer] = i.
void calib_rank(const double *scores, int L, int *order, int *rank_of);
// Chooses layers by rule: top_k (k), fraction (round(fraction * L), at least 1) or cumulative (the
// fewest top-ranked layers whose share of the total score reaches threshold). Writes the chosen
// layers sorted ascending into `layers` and returns how many.
int calib_select(const double *scores, int L, SelectRule rule, int k, double fraction, double threshold,
                 int *layers);
// The most layers calib_select can choose by the rule, known before any score: top_k and fraction choose exactly
// this many (k, round(fraction * L), clamped to 1..L); cumulative at most L. (--plan-memory plans "auto" with it.)
int calib_select_max(int L, SelectRule rule, int k, double fraction);

#endif
