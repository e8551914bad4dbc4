// train.h: data-parallel training and evaluation.
//
// One optimizer step = grad_accum micro-steps per rank over the next global batch of
// G = micro_batch x grad_accum x world samples (sampler.h), then ONE mean all-reduce of the flat
// gradient buffer (adapters of the selected layers + head), global-norm clipping and AdamW. Every
// rank applies the same update to the same parameters; they are compared by checksum at every
// evaluation. Position in the data is (epoch, global sample cursor).
#ifndef ACTLORA_TRAIN_H
#define ACTLORA_TRAIN_H

#include <stdint.h>

#include "actlora/backend.h"
#include "actlora/comm.h"
#include "actlora/config.h"
#include "actlora/dist.h"
#include "actlora/model.h"
#include "actlora/log.h"
#include "actlora/lora.h"
#include "actlora/metrics.h"
#include "actlora/optim.h"
#include "actlora/source.h"

typedef struct {
    const RunConfig *cfg;
    const Dist *d;
    Backend *be;
    Comm *comm;
    Log *lg;
    Ledger *led;
    Model *model;
    LoraSet *ls;
    Source *src;
    Batch *batch;
    OptimConfig oc;
    int64_t G;                // global batch (samples per optimizer step)
    int64_t steps_per_epoch;
    int64_t total_steps;
    int64_t step;             // optimizer steps done
    int64_t epoch, cursor;    // where the next global batch starts
    int micro;                // micro-steps of the current step done (gradients accumulated)
    double loss_partial;      // this rank's loss sum over those micro-steps
    int64_t tokens;           // real tokens this rank has trained on
    double t_start, loss_ema;
    double *step_s;           // [total_steps] wall time of each step on this rank
} Trainer;

typedef struct {
    char split[32];
    int64_t rows;
    double loss;              // mean loss over the split
    GlueScore score;          // official GLUE metrics (classification tasks of an unknown task: accuracy)
} EvalResult;

// Plans the run: global batch, steps per epoch, total steps, LR schedule. Dies with a clear
// message if the training split holds less than one global batch.
void trainer_init(Trainer *t, const RunConfig *cfg, const Dist *d, Backend *be, Comm *comm, Log *lg, Ledger *led,
                  Model *model, LoraSet *ls, Source *src, Batch *batch);
void trainer_free(Trainer *t);
// Median wall time of the steps run so far, the first (warm-up) step excluded when there are more.
double trainer_median_step(const Trainer *t);
// One micro-step of the current optimizer step: forward + backward, gradients accumulated.
void trainer_micro_step(Trainer *t);
// After grad_accum micro-steps: all-reduce, clip, AdamW, advance the cursor; returns the mean
// training loss of the global batch (identical on every rank).
double trainer_finish_step(Trainer *t, double *grad_norm, double *lr);
// Prints the progress line (rank 0) and appends the train record to the JSONL log.
void trainer_report(Trainer *t, double loss, double grad_norm, double lr);
// Evaluates every dev split of the data (sharded over ranks, predictions gathered on rank 0);
// returns how many results were written (0 for synthetic data). Results are valid on every rank.
int trainer_evaluate(Trainer *t, EvalResult *out, int max_out);
// Dies unless every rank holds bit-identical trainable parameters.
void trainer_check_agree(Trainer *t, const char *when);

#endif
