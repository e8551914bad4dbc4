// select.h: the calibration phase that picks the layers to adapt (Act-LoRA), and its baselines.
//
//   activation: forward-only passes over calibration.batches micro-batches per rank with no
//               adapters, collecting the per-layer statistics of calib.h;
//   gradient:   backward passes with adapters on every layer (PEFT init), collecting the
//               per-layer L2 norm of the LoRA gradients per micro-batch (docs/method.md);
//   random:     seeded draws, no passes.
// Statistics are all-reduced (SUM, fp64); every rank then scores, ranks and selects from the same
// reduced numbers, and the ranks compare a hash of the statistics and of the selection before
// training starts (a mismatch is fatal). Rank 0 prints the table and writes calibration.h5.
#ifndef ACTLORA_SELECT_H
#define ACTLORA_SELECT_H

#include "actlora/backend.h"
#include "actlora/calib.h"
#include "actlora/config.h"
#include "actlora/data.h"
#include "actlora/dist.h"
#include "actlora/model.h"
#include "actlora/log.h"
#include "actlora/source.h"

typedef struct {
    int num_layers;
    double *scores;     // [L]
    int *order;         // [L] layers from most to least important
    int *rank_of;       // [L]
    int n_selected;
    int *selected;      // [n_selected], ascending
    CalibStats stats;   // reduced statistics
    unsigned long long stats_hash;
    double seconds;     // wall time of the phase on this rank
} Selection;

// Runs the configured method (lora.layers = "auto") and selects; `modules` are the LoRA targets.
// The model's activation memory is re-planned inside; the caller re-plans it for training after.
void select_calibrate(Selection *sel, const RunConfig *cfg, const Dist *d, Backend *be, Model *model, Source *src,
                      Batch *batch, const int *modules, int n_modules, Log *lg);
// Explicit layers (lora.layers = [..] or "all"): no calibration, the same Selection shape.
void select_explicit(Selection *sel, const RunConfig *cfg, int num_layers);
// A selection restored from a checkpoint (no statistics).
void select_restore(Selection *sel, int num_layers, const double *scores, const int *selected, int n_selected);
void select_free(Selection *sel);
#endif
