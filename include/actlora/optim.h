// optim.h: learning-rate schedules (transformers' get_*_schedule_with_warmup semantics),
// global grad-norm clipping (torch.nn.utils.clip_grad_norm_) and the AdamW step over the
// flat trainable buffer.
#ifndef ACTLORA_OPTIM_H
#define ACTLORA_OPTIM_H

#include "actlora/backend.h"
#include "actlora/lora.h"

typedef enum { SCHED_CONSTANT, SCHED_LINEAR, SCHED_COSINE } ScheduleKind;

typedef struct {
    double lr;          // peak learning rate
    ScheduleKind kind;
    int warmup_steps;
    int total_steps;
    double beta1, beta2, eps, weight_decay;
    double clip;        // max global grad norm; 0 = off
} OptimConfig;

// "constant" | "linear" | "cosine" -> kind; -1 if unknown.
int optim_schedule_parse(const char *name);
// Learning rate used by optimizer step `step` (0-based), as transformers computes it:
//   warmup: lr * step / warmup;  then constant: lr;  linear: lr * (total - step) / (total - warmup);
//   cosine: lr * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup))), floored at 0.
double optim_lr_at(const OptimConfig *oc, int step);
// Global L2 norm of the gradients (before clipping); scales them by max_norm / (norm + 1e-6)
// when that is below 1, as torch does. oc->clip == 0 only measures.
double optim_clip(const OptimConfig *oc, Backend *be, LoraSet *ls);
// One AdamW step (t = 1-based step count) with learning rate lr over all trainable parameters.
void optim_step(const OptimConfig *oc, Backend *be, LoraSet *ls, double lr, int t);

#endif
