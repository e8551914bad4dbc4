// resume.c: the run <-> checkpoint glue (collective save, checked resume).
#include "actlora/resume.h"

#include <errno.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "actlora/common.h"

int resume_open(Resume *r, CkptState *ck, const CliArgs *args, const RunConfig *cfg, const Dist *d,
                uint64_t model_fingerprint) {
    memset(r, 0, sizeof *r);
    memset(ck, 0, sizeof *ck);
    r->model_fingerprint = model_fingerprint;
    r->t_last_save = time_now();
    if (strcmp(args->resume, "no") == 0) return 0;
    int found = 0;
    Error err = {{0}};
    if (d->rank == 0) {
        if (strcmp(args->resume, "auto") == 0) {
            char dir[4200], warnings[4096] = "";
            snprintf(dir, sizeof dir, "%s/checkpoints", cfg->run.dir);
            struct stat st;
            if (stat(dir, &st) == 0) {
                found = ckpt_find_latest(dir, r->path, sizeof r->path, warnings, sizeof warnings, &err);
                if (warnings[0]) fprintf(stderr, "actlora-mpi: warning: %s\n", warnings);
                if (found < 0) found = -1;
            }
        } else {
            snprintf(r->path, sizeof r->path, "%s", args->resume);
            found = 1;
        }
    }
    MPI_Bcast(&found, 1, MPI_INT, 0, d->comm);
    if (found < 0) {
        MPI_Bcast(err.msg, sizeof err.msg, MPI_CHAR, 0, d->comm);
        die("--resume auto: %s", err.msg);
    }
    if (!found) {
        if (d->rank == 0) printf("resume  none: starting fresh (no checkpoint in %s/checkpoints)\n", cfg->run.dir);
        return 0;
    }
    MPI_Bcast(r->path, sizeof r->path, MPI_CHAR, 0, d->comm);
    if (ckpt_read(r->path, ck, &err) != 0) die("cannot resume from %s: %s", r->path, err.msg);
    check(ck->model_fingerprint == model_fingerprint,
          "checkpoint %s was written for another model (fingerprint %016llx, this model.path gives %016llx): "
          "point model.path at the model it was trained from, or start a new run.dir", r->path,
          (unsigned long long)ck->model_fingerprint, (unsigned long long)model_fingerprint);
    static RunConfig saved;  // large: off the stack
    if (config_load_text(&saved, ck->config_text, r->path, &err) != 0)
        die("checkpoint %s holds an unreadable configuration: %s", r->path, err.msg);
    char diff[4096];
    int n_diff = config_diff_run(&saved, cfg, diff, sizeof diff);
    check(n_diff == 0 || args->force,
          "checkpoint %s was written with a different configuration; these keys would change the run:\n%s\n"
          "use the original values, start a new run.dir, or pass --force to continue with the new ones", r->path, diff);
    if (n_diff && d->rank == 0)
        fprintf(stderr, "actlora-mpi: warning: --force: continuing %s with changed keys:\n%s\n", r->path, diff);
    r->resumed = 1;
    r->elastic = ck->world != d->world;
    memcpy(r->ledger_prior, ck->ledger, sizeof r->ledger_prior);
    r->wall_prior = ck->wall_s;
    if (d->rank == 0) {
        printf("resume  from %s (step %lld, micro %d, epoch %lld, cursor %lld)", r->path, (long long)ck->step,
               ck->micro, (long long)ck->epoch, (long long)ck->cursor);
        if (r->elastic)
            printf("; elastic: %d -> %d ranks, continuing at the same sample cursor%s", ck->world, d->world,
                   ck->micro > 0 ? ", the interrupted step restarts" : "");
        printf("\n");
        fflush(stdout);
    }
    return 1;
}

void resume_selection(const CkptState *ck, Selection *sel) {
    select_restore(sel, ck->num_layers, ck->scores, ck->selected, ck->n_selected);
}

// Offset and size in the trainer's flat buffer of checkpoint tensor i (dies if it does not fit).
static size_t tensor_off(const CkptState *ck, int i, const LoraSet *ls, size_t *numel) {
    size_t off = 0, n = 0;
    check(lora_param_lookup(ls, ck->names[i], &off, &n) == 0,
          "checkpoint tensor '%s' has no place among this run's adapters: the checkpoint's layout differs", ck->names[i]);
    check(n == (size_t)(ck->shapes[i][0] * ck->shapes[i][1]), "checkpoint tensor '%s' has %lld x %lld elements, this "
          "run's adapter %zu", ck->names[i], (long long)ck->shapes[i][0], (long long)ck->shapes[i][1], n);
    *numel = n;
    return off;
}

void resume_apply(Resume *r, const CkptState *ck, Trainer *t) {
    LoraSet *ls = t->ls;
    Backend *be = t->be;
    check(ck->numel == ls->numel && ck->n_tensors == lora_num_tensors(ls),
          "checkpoint %s holds %zu parameters in %d tensors, this run %zu in %d", r->path, ck->numel, ck->n_tensors,
          ls->numel, lora_num_tensors(ls));
    int partial = ck->micro > 0 && !r->elastic;
    for (int i = 0; i < ck->n_tensors; i++) {
        size_t n, off = tensor_off(ck, i, ls, &n), src = (size_t)ck->offsets[i];
        be->upload(be, ls->params + off, ck->params + src, n * sizeof(float));
        be->upload(be, ls->m + off, ck->adam_m + src, n * sizeof(float));
        be->upload(be, ls->v + off, ck->adam_v + src, n * sizeof(float));
        if (partial)
            be->upload(be, ls->grads + off, ck->grads + (size_t)t->d->rank * ck->numel + src, n * sizeof(float));
    }
    t->step = ck->step;
    t->epoch = ck->epoch;
    t->cursor = ck->cursor;
    t->micro = partial ? ck->micro : 0;
    t->loss_partial = partial ? ck->loss_partial[t->d->rank] : 0.0;
    if (!r->elastic) {
        t->tokens = ck->tokens[t->d->rank];
    } else {
        int64_t sum = 0;
        for (int w = 0; w < ck->world; w++) sum += ck->tokens[w];
        t->tokens = t->d->rank == 0 ? sum : 0;
    }
    check(t->step <= t->total_steps, "checkpoint %s is at step %lld but this run has only %lld steps",
          r->path, (long long)t->step, (long long)t->total_steps);
}

int resume_save(Resume *r, Trainer *t, const Selection *sel, const char *reason, Error *err) {
    double t0 = time_now();
    const Dist *d = t->d;
    LoraSet *ls = t->ls;
    Backend *be = t->be;
    size_t numel = ls->numel;
    int root = d->rank == 0, partial = t->micro > 0;
    // per-rank pieces to rank 0
    float *my_grads = NULL, *all_grads = NULL;
    double *all_loss = root ? xmalloc(sizeof(double) * (size_t)d->world, "partial losses") : NULL;
    int64_t *all_tokens = root ? xmalloc(sizeof(int64_t) * (size_t)d->world, "token counts") : NULL;
    if (partial) {
        my_grads = xmalloc(numel * sizeof(float), "partial gradients");
        be->download(be, my_grads, ls->grads, numel * sizeof(float));
        if (root) all_grads = xmalloc(numel * sizeof(float) * (size_t)d->world, "gathered partial gradients");
        for (size_t off = 0; off < numel;) {  // MPI counts are int: gather in chunks, rank-major in the end
            int cnt = numel - off > ((size_t)1 << 28) ? 1 << 28 : (int)(numel - off);
            float *tmp = root ? xmalloc((size_t)cnt * sizeof(float) * (size_t)d->world, "gather chunk") : NULL;
            MPI_Gather(my_grads + off, cnt, MPI_FLOAT, tmp, cnt, MPI_FLOAT, 0, d->comm);
            if (root)
                for (int w = 0; w < d->world; w++)
                    memcpy(all_grads + (size_t)w * numel + off, tmp + (size_t)w * cnt, (size_t)cnt * sizeof(float));
            free(tmp);
            off += (size_t)cnt;
        }
    }
    MPI_Gather(&t->loss_partial, 1, MPI_DOUBLE, all_loss, 1, MPI_DOUBLE, 0, d->comm);
    int64_t mine = t->tokens;
    MPI_Gather(&mine, 1, MPI_INT64_T, all_tokens, 1, MPI_INT64_T, 0, d->comm);
    Ledger now;
    ledger_reduce(t->led, &now, d);
    int rc = 0;
    char msg[sizeof err->msg] = "", path[4400] = "";
    if (root) {
        CkptState ck;
        memset(&ck, 0, sizeof ck);
        size_t len = 0;
        FILE *f = open_memstream(&ck.config_text, &len);
        config_print(t->cfg, f);
        fclose(f);
        ck.config_hash = config_hash(t->cfg);
        ck.model_fingerprint = r->model_fingerprint;
        ck.world = d->world;
        ck.num_layers = sel->num_layers;
        ck.scores = sel->scores;
        ck.n_selected = sel->n_selected;
        ck.selected = sel->selected;
        ck.n_tensors = lora_num_tensors(ls);
        ck.names = xcalloc((size_t)ck.n_tensors, sizeof(char *), "tensor names");
        ck.shapes = xcalloc((size_t)ck.n_tensors, sizeof *ck.shapes, "tensor shapes");
        ck.offsets = xcalloc((size_t)ck.n_tensors, sizeof(int64_t), "tensor offsets");
        for (int i = 0; i < ck.n_tensors; i++) {
            char name[160];
            size_t off;
            lora_tensor(ls, i, name, sizeof name, &off, &ck.shapes[i][0], &ck.shapes[i][1]);
            ck.names[i] = xstrdup(name);
            ck.offsets[i] = (int64_t)off;
        }
        ck.numel = numel;
        ck.params = xmalloc(numel * sizeof(float), "params copy");
        ck.adam_m = xmalloc(numel * sizeof(float), "adam_m copy");
        ck.adam_v = xmalloc(numel * sizeof(float), "adam_v copy");
        be->download(be, ck.params, ls->params, numel * sizeof(float));
        be->download(be, ck.adam_m, ls->m, numel * sizeof(float));
        be->download(be, ck.adam_v, ls->v, numel * sizeof(float));
        ck.grads = all_grads;
        ck.loss_partial = partial ? all_loss : NULL;
        ck.step = t->step;
        ck.epoch = t->epoch;
        ck.cursor = t->cursor;
        ck.micro = t->micro;
        ck.seed = (uint64_t)t->cfg->train.seed;
        ck.tokens = all_tokens;
        for (int p = 0; p < PHASE_COUNT; p++) ck.ledger[p] = r->ledger_prior[p] + now.seconds[p];
        ck.wall_s = r->wall_prior + (time_now() - t->lg->t_start);
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/checkpoints", t->cfg->run.dir);
        Error e;
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
            rc = -1;
            snprintf(msg, sizeof msg, "cannot create %.900s: %s", dir, strerror(errno));
        } else if (ckpt_write(dir, &ck, t->cfg->checkpoint.keep, path, sizeof path, &e) != 0) {
            rc = -1;
            snprintf(msg, sizeof msg, "%s", e.msg);
        }
        for (int i = 0; i < ck.n_tensors; i++) free(ck.names[i]);
        free(ck.names);
        free(ck.shapes);
        free(ck.offsets);
        free(ck.params);
        free(ck.adam_m);
        free(ck.adam_v);
        free(ck.config_text);
    }
    MPI_Bcast(&rc, 1, MPI_INT, 0, d->comm);
    MPI_Bcast(msg, sizeof msg, MPI_CHAR, 0, d->comm);
    free(my_grads);
    free(all_grads);
    free(all_loss);
    free(all_tokens);
    double dt = time_now() - t0;
    t->led->seconds[PHASE_CHECKPOINT] += dt;
    r->t_last_save = time_now();
    if (rc != 0) return error_set(err, "%s", msg);
    if (root) {
        printf("ckpt    %s (step %lld, micro %d; %s) in %.2f s\n", path, (long long)t->step, t->micro, reason, dt);
        fflush(stdout);
    }
    return 0;
}
