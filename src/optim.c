// optim.c: LR schedules, clipping, AdamW over the flat trainable buffer.
#include "actlora/optim.h"

#include <math.h>
#include <string.h>

int optim_schedule_parse(const char *name) {
    if (strcmp(name, "constant") == 0) return SCHED_CONSTANT;
    if (strcmp(name, "linear") == 0) return SCHED_LINEAR;
    if (strcmp(name, "cosine") == 0) return SCHED_COSINE;
    return -1;
}

double optim_lr_at(const OptimConfig *oc, int step) {
    int w = oc->warmup_steps;
    if (step < w) return oc->lr * (double)step / (double)(w > 1 ? w : 1);
    double span = (double)(oc->total_steps - w > 1 ? oc->total_steps - w : 1);
    double progress = (double)(step - w) / span;
    double f = 1.0;
    switch (oc->kind) {
    case SCHED_CONSTANT: f = 1.0; break;
    case SCHED_LINEAR: f = (double)(oc->total_steps - step) / span; break;
    case SCHED_COSINE: f = 0.5 * (1.0 + cos(M_PI * progress)); break;
    }
    return oc->lr * (f > 0.0 ? f : 0.0);
}

double optim_clip(const OptimConfig *oc, Backend *be, LoraSet *ls) {
    double norm = sqrt(be->sumsq(be, ls->grads, ls->numel));
    if (oc->clip > 0.0) {
        double coef = oc->clip / (norm + 1e-6);
        if (coef < 1.0) be->scale(be, ls->grads, (float)coef, ls->numel);
    }
    return norm;
}

void optim_step(const OptimConfig *oc, Backend *be, LoraSet *ls, double lr, int t) {
    be->adamw(be, ls->params, ls->grads, ls->m, ls->v, ls->numel, (float)lr, (float)oc->beta1,
              (float)oc->beta2, (float)oc->eps, (float)oc->weight_decay, t);
}
