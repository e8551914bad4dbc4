// train.c: the data-parallel optimizer step, progress reporting and sharded evaluation.
#include "actlora/train.h"

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/common.h"
#include "actlora/progress.h"
#include "actlora/rng.h"
#include "actlora/sampler.h"

void trainer_init(Trainer *t, const RunConfig *cfg, const Dist *d, Backend *be, Comm *comm, Log *lg, Ledger *led,
                  Model *model, LoraSet *ls, Source *src, Batch *batch) {
    memset(t, 0, sizeof *t);
    t->cfg = cfg;
    t->d = d;
    t->be = be;
    t->comm = comm;
    t->lg = lg;
    t->led = led;
    t->model = model;
    t->ls = ls;
    t->src = src;
    t->batch = batch;
    t->G = (int64_t)cfg->train.micro_batch * cfg->train.grad_accum * d->world;
    t->steps_per_epoch = source_steps_per_epoch(src, t->G);
    check(t->steps_per_epoch > 0,
          "%s: the training split has %lld rows, fewer than one global batch of %lld (train.micro_batch %d x "
          "train.grad_accum %d x %d ranks): lower one of them", cfg->data.path, (long long)src->train.rows,
          (long long)t->G, cfg->train.micro_batch, cfg->train.grad_accum, d->world);
    int64_t by_epochs = src->glue ? t->steps_per_epoch * cfg->train.epochs : 0;
    if (cfg->train.max_steps > 0) t->total_steps = by_epochs > 0 && by_epochs < cfg->train.max_steps ? by_epochs : cfg->train.max_steps;
    else t->total_steps = by_epochs;
    check(t->total_steps > 0, "nothing to train: train.max_steps = %d, train.epochs = %d", cfg->train.max_steps,
          cfg->train.epochs);
    check(cfg->train.warmup_steps <= t->total_steps,
          "train.warmup_steps = %d exceeds the %lld optimizer steps of this run", cfg->train.warmup_steps,
          (long long)t->total_steps);
    t->oc = (OptimConfig){.lr = cfg->train.lr, .kind = (ScheduleKind)optim_schedule_parse(cfg->train.schedule),
                          .warmup_steps = cfg->train.warmup_steps, .total_steps = (int)t->total_steps,
                          .beta1 = cfg->train.beta1, .beta2 = cfg->train.beta2, .eps = cfg->train.eps,
                          .weight_decay = cfg->train.weight_decay, .clip = cfg->train.clip};
    t->step_s = xcalloc((size_t)t->total_steps, sizeof(double), "step times");
    t->t_start = time_now();
}

void trainer_free(Trainer *t) {
    free(t->step_s);
    t->step_s = NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double trainer_median_step(const Trainer *t) {
    if (t->step == 0) return 0.0;
    int64_t first = t->step > 1 ? 1 : 0, n = t->step - first;
    double *v = xmalloc(sizeof(double) * (size_t)n, "step times");
    memcpy(v, t->step_s + first, sizeof(double) * (size_t)n);
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    double med = v[n / 2];
    free(v);
    return med;
}

void trainer_micro_step(Trainer *t) {
    const RunConfig *cfg = t->cfg;
    Backend *be = t->be;
    LoraSet *ls = t->ls;
    int mb = cfg->train.micro_batch;
    float grad_scale = 1.0f / (float)(mb * cfg->train.grad_accum);  // mean over this rank's samples; ranks then averaged
    double t0 = time_now();
    if (t->micro == 0) {
        be->zero(be, ls->grads, ls->numel * sizeof(float));
        t->loss_partial = 0.0;
    }
    source_train_batch(t->src, t->batch, t->epoch, t->cursor, t->micro, mb, t->d->world, t->d->rank);
    uint64_t key = rng_key(rng_key(rng_key(rng_key((uint64_t)cfg->train.seed, 0xD207), (uint64_t)t->step),
                                   (uint64_t)t->micro), (uint64_t)t->d->rank);
    double t1 = time_now();
    t->loss_partial += model_forward(t->model, be, ls, t->batch, 1, grad_scale, key, NULL);
    double t2 = time_now();
    model_backward(t->model, be, ls, t->batch, key);
    be->sync(be);
    t->led->seconds[PHASE_FORWARD] += t2 - t1;
    t->led->seconds[PHASE_BACKWARD] += time_now() - t2;
    t->tokens += t->batch->n_tokens;
    t->micro++;
    t->step_s[t->step] += time_now() - t0;
}

double trainer_finish_step(Trainer *t, double *grad_norm, double *lr) {
    Backend *be = t->be;
    LoraSet *ls = t->ls;
    check(t->micro == t->cfg->train.grad_accum, "internal: step finished after %d of %d micro-steps", t->micro,
          t->cfg->train.grad_accum);
    double c0 = time_now();
    comm_allreduce_mean(t->comm, be, ls->grads, ls->numel);
    double global_loss = dist_sum(t->d, t->loss_partial) / (double)t->G;
    double o0 = time_now();
    t->led->seconds[PHASE_COMM] += o0 - c0;
    *lr = optim_lr_at(&t->oc, (int)t->step);
    *grad_norm = optim_clip(&t->oc, be, ls);
    optim_step(&t->oc, be, ls, *lr, (int)t->step + 1);
    be->sync(be);
    t->led->seconds[PHASE_OPTIMIZER] += time_now() - o0;
    t->step_s[t->step] += time_now() - c0;
    // advance the global sample cursor; an incomplete last global batch ends the epoch
    t->step++;
    t->micro = 0;
    t->cursor += t->G;
    if (sampler_steps_left(t->src->glue ? t->src->train.rows : INT64_MAX, t->cursor, t->G) == 0) {
        t->epoch++;
        t->cursor = 0;
    }
    // the average restarts at the first step this process runs (a resumed run has no history of it)
    t->loss_ema = t->loss_ema == 0.0 ? global_loss : 0.9 * t->loss_ema + 0.1 * global_loss;
    return global_loss;
}

void trainer_report(Trainer *t, double loss, double grad_norm, double lr) {
    int64_t all_tokens = 0, mine = t->tokens;
    MPI_Allreduce(&mine, &all_tokens, 1, MPI_INT64_T, MPI_SUM, t->d->comm);
    if (t->d->rank != 0) return;
    double el = time_now() - t->t_start, train_s = 0.0;  // throughput and ETA from step time alone (no eval)
    for (int64_t i = 0; i < t->step; i++) train_s += t->step_s[i];
    double tps = (double)all_tokens / (train_s > 0 ? train_s : 1e-9);
    char rec[512];
    snprintf(rec, sizeof rec,
             "{\"type\":\"train\",\"step\":%lld,\"total_steps\":%lld,\"epoch\":%lld,\"loss\":%.8g,\"lr\":%.8g,"
             "\"grad_norm\":%.8g,\"tokens_per_s\":%.1f,\"elapsed_s\":%.3f}",
             (long long)t->step, (long long)t->total_steps, (long long)t->epoch, loss, lr, grad_norm, tps, el);
    log_record(t->lg, rec);
    int every = t->cfg->run.log_every;
    if (t->step % every != 0 && t->step != t->total_steps && t->step != 1) return;
    char eta[32];
    log_duration(eta, sizeof eta, train_s / (double)t->step * (double)(t->total_steps - t->step));
    int w = snprintf(NULL, 0, "%lld", (long long)t->total_steps);
    printf("step %*lld/%lld | epoch %lld | loss %.4f (avg %.4f) | lr %.3e | grad %.3f | %.0f tok/s | ETA %s\n", w,
           (long long)t->step, (long long)t->total_steps, (long long)t->epoch, loss, t->loss_ema, lr, grad_norm, tps,
           eta);
    fflush(stdout);
}

void trainer_check_agree(Trainer *t, const char *when) {
    size_t n = t->ls->numel;
    float *host = xmalloc(n * sizeof(float), "parameter checksum");
    t->be->download(t->be, host, t->ls->params, n * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "the trainable parameters %s", when);
    dist_check_agree(t->d, host, n * sizeof(float), what);
    free(host);
}

// Forward-only over this rank's shard of one split; predictions of rank r land in rank order on
// rank 0, which scores them against the split's labels.
static void evaluate_split(Trainer *t, DatasetSplit *split, EvalResult *res) {
    const Dist *d = t->d;
    Backend *be = t->be;
    int mb = t->cfg->train.micro_batch, K = t->src->num_labels, reg = K == 1;
    int64_t begin, end;
    sampler_eval_shard(split->rows, d->world, d->rank, &begin, &end);
    int64_t n = end - begin;
    int32_t *pred_i = xcalloc((size_t)(n > 0 ? n : 1), sizeof(int32_t), "predictions");
    float *pred_f = xcalloc((size_t)(n > 0 ? n : 1), sizeof(float), "predictions");
    float *logits = xmalloc(sizeof(float) * (size_t)mb * K, "logits");
    int64_t *rows = xmalloc(sizeof(int64_t) * (size_t)mb, "eval rows");
    double loss_sum = 0.0;
    Error err;
    Progress pg;  // rank 0's shard stands for all: the shards differ by at most one row
    char what[96];
    snprintf(what, sizeof what, "%.40s split, rank 0's shard", split->name);
    progress_init(&pg, d->rank == 0 ? stdout : NULL, "eval", what, t->cfg->run.progress_seconds);
    for (int64_t r0 = begin; r0 < end; r0 += mb) {
        progress_step(&pg, (long)(r0 - begin), (long)n, "row");
        int nb = (int)(end - r0 < mb ? end - r0 : mb);
        for (int j = 0; j < nb; j++) rows[j] = r0 + j;
        if (dataset_split_read(split, rows, nb, t->batch, &err) != 0) die("%s", err.msg);
        loss_sum += model_forward(t->model, be, t->ls, t->batch, 0, 0.0f, 0, NULL);
        be->download(be, logits, model_logits(t->model), sizeof(float) * (size_t)nb * K);
        for (int j = 0; j < nb; j++) {
            const float *lg = logits + (size_t)j * K;
            int best = 0;
            for (int k = 1; k < K; k++)
                if (lg[k] > lg[best]) best = k;  // ties: the lower class, as numpy/torch argmax
            pred_i[r0 - begin + j] = best;
            pred_f[r0 - begin + j] = lg[0];
        }
    }
    // gather predictions in row order (shards are contiguous and ordered by rank)
    int *counts = NULL, *displs = NULL;
    int32_t *all_i = NULL;
    float *all_f = NULL;
    int my = (int)n;
    if (d->rank == 0) {
        counts = xmalloc(sizeof(int) * (size_t)d->world, "counts");
        displs = xmalloc(sizeof(int) * (size_t)d->world, "displs");
        all_i = xmalloc(sizeof(int32_t) * (size_t)split->rows, "all predictions");
        all_f = xmalloc(sizeof(float) * (size_t)split->rows, "all predictions");
    }
    MPI_Gather(&my, 1, MPI_INT, counts, 1, MPI_INT, 0, d->comm);
    if (d->rank == 0)
        for (int r = 0, off = 0; r < d->world; r++) {
            displs[r] = off;
            off += counts[r];
        }
    MPI_Gatherv(pred_i, my, MPI_INT32_T, all_i, counts, displs, MPI_INT32_T, 0, d->comm);
    MPI_Gatherv(pred_f, my, MPI_FLOAT, all_f, counts, displs, MPI_FLOAT, 0, d->comm);
    memset(res, 0, sizeof *res);
    snprintf(res->split, sizeof res->split, "%s", split->name);
    res->rows = split->rows;
    res->loss = dist_sum(d, loss_sum) / (double)split->rows;
    if (d->rank == 0) {
        int task = metrics_task_parse(t->src->task);
        int nrows = (int)split->rows;
        if (task >= 0) {
            metrics_glue((GlueTask)task, all_i, split->labels_i, all_f, split->labels_f, nrows, &res->score);
        } else if (reg) {  // a regression file of another task: STS-B's metrics
            metrics_glue(GLUE_STSB, NULL, NULL, all_f, split->labels_f, nrows, &res->score);
        } else {
            metrics_glue(GLUE_SST2, all_i, split->labels_i, NULL, NULL, nrows, &res->score);
        }
    }
    MPI_Bcast(&res->score, (int)sizeof res->score, MPI_BYTE, 0, d->comm);
    free(counts);
    free(displs);
    free(all_i);
    free(all_f);
    free(pred_i);
    free(pred_f);
    free(logits);
    free(rows);
}

int trainer_evaluate(Trainer *t, EvalResult *out, int max_out) {
    if (!t->src->glue) return 0;
    double t0 = time_now();
    trainer_check_agree(t, "at evaluation");
    int n = 0;
    for (int i = 0; i < t->src->n_eval && n < max_out; i++) {
        EvalResult *r = &out[n++];
        evaluate_split(t, &t->src->eval[i], r);
        if (t->d->rank == 0) {
            char rec[1024];
            int len = snprintf(rec, sizeof rec, "{\"type\":\"eval\",\"step\":%lld,\"split\":\"%s\",\"loss\":%.8g,\"metrics\":{",
                               (long long)t->step, r->split, r->loss);
            for (int k = 0; k < r->score.n; k++)
                len += snprintf(rec + len, sizeof rec - (size_t)len, "%s\"%s\":%.8g", k ? "," : "", r->score.name[k],
                                r->score.value[k]);
            snprintf(rec + len, sizeof rec - (size_t)len, "},\"main\":%.8g}", r->score.main);
            log_record(t->lg, rec);
            printf("eval  step %lld | %s (%lld rows) | loss %.4f |", (long long)t->step, r->split, (long long)r->rows,
                   r->loss);
            for (int k = 0; k < r->score.n; k++) printf(" %s %.4f", r->score.name[k], r->score.value[k]);
            printf("\n");
            fflush(stdout);
        }
    }
    t->led->seconds[PHASE_EVAL] += time_now() - t0;
    return n;
}
