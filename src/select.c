// select.c: the calibration phase: collect statistics, all-reduce, score, rank, select, agree,
// report (table + JSONL record + calibration.h5).
#include "actlora/select.h"

#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actlora/common.h"
#include "actlora/lora.h"
#include "actlora/rng.h"

static void write_h5(const Selection *sel, const CalibStats *mine, const RunConfig *cfg, const Dist *d,
                     const char *task, const char *dir);

static void selection_alloc(Selection *sel, int L) {
    memset(sel, 0, sizeof *sel);
    sel->num_layers = L;
    sel->scores = xcalloc((size_t)L, sizeof(double), "layer scores");
    sel->order = xcalloc((size_t)L, sizeof(int), "layer order");
    sel->rank_of = xcalloc((size_t)L, sizeof(int), "layer ranks");
    sel->selected = xcalloc((size_t)L, sizeof(int), "selected layers");
    calib_stats_init(&sel->stats, L);
}

void select_free(Selection *sel) {
    free(sel->scores);
    free(sel->order);
    free(sel->rank_of);
    free(sel->selected);
    calib_stats_free(&sel->stats);
    memset(sel, 0, sizeof *sel);
}

void select_explicit(Selection *sel, const RunConfig *cfg, int num_layers) {
    selection_alloc(sel, num_layers);
    if (cfg->lora.all_layers) {
        for (int l = 0; l < num_layers; l++) sel->selected[sel->n_selected++] = l;
    } else {
        for (int i = 0; i < cfg->lora.n_layers; i++) {
            check(cfg->lora.layers[i] < num_layers, "lora.layers names layer %d but the model has %d layers (0..%d)",
                  cfg->lora.layers[i], num_layers, num_layers - 1);
            sel->selected[sel->n_selected++] = cfg->lora.layers[i];
        }
    }
    for (int l = 0; l < num_layers; l++) sel->order[l] = sel->rank_of[l] = l;
}

void select_restore(Selection *sel, int num_layers, const double *scores, const int *selected, int n_selected) {
    selection_alloc(sel, num_layers);
    memcpy(sel->scores, scores, sizeof(double) * (size_t)num_layers);
    calib_rank(sel->scores, num_layers, sel->order, sel->rank_of);
    check(n_selected >= 0 && n_selected <= num_layers, "restored selection has %d of %d layers", n_selected, num_layers);
    memcpy(sel->selected, selected, sizeof(int) * (size_t)n_selected);
    sel->n_selected = n_selected;
}

// Forward-only passes with no adapters: per-layer activation statistics of this rank.
static void collect_activation(const RunConfig *cfg, const Dist *d, Backend *be, Model *model, Source *src,
                               Batch *batch, CalibStats *mine) {
    LoraShapes shapes;
    model_lora_shapes(&model->cfg, &shapes);
    LoraSet none;  // the head only: logits are computed but not used
    lora_init(&none, be, model_lora_naming(model->arch), &shapes, model->cfg.num_hidden_layers, NULL, 0, NULL, 0, 1, 1.0, 0, 0.0, model->num_labels,
              model_head_hidden(&model->cfg));
    model_alloc_acts(model, be, &none, cfg->train.micro_batch, src->max_T);
    for (int i = 0; i < cfg->calibration.batches; i++) {
        source_calib_batch(src, batch, i, cfg->train.micro_batch, d->world, d->rank);
        model_forward(model, be, &none, batch, 0, 0.0f, 0, mine);
    }
    lora_free(&none, be);
}

// Backward passes with adapters on every layer at PEFT's init (B = 0, so only the B gradients are
// non-zero): per micro-batch, the L2 norm of each layer's LoRA gradients, summed into column 0.
static void collect_gradient(const RunConfig *cfg, const Dist *d, Backend *be, Model *model, Source *src,
                             Batch *batch, const int *modules, int n_modules, CalibStats *mine) {
    int L = model->cfg.num_hidden_layers;
    int *all = xmalloc(sizeof(int) * (size_t)L, "layer list");
    for (int l = 0; l < L; l++) all[l] = l;
    LoraShapes shapes;
    model_lora_shapes(&model->cfg, &shapes);
    LoraSet ls;
    lora_init(&ls, be, model_lora_naming(model->arch), &shapes, L, all, L, modules, n_modules, cfg->lora.r, cfg->lora.alpha, cfg->lora.rslora, 0.0,
              model->num_labels, model_head_hidden(&model->cfg));
    uint64_t seed = (uint64_t)cfg->train.seed;
    model_init_head(model, be, cfg->model.path, strcmp(cfg->model.init, "random") == 0, &ls, seed);
    lora_init_weights(&ls, be, seed);
    model_alloc_acts(model, be, &ls, cfg->train.micro_batch, src->max_T);
    for (int i = 0; i < cfg->calibration.batches; i++) {
        source_calib_batch(src, batch, i, cfg->train.micro_batch, d->world, d->rank);
        be->zero(be, ls.grads, ls.numel * sizeof(float));
        model_forward(model, be, &ls, batch, 1, 1.0f / (float)batch->B, 0, NULL);
        model_backward(model, be, &ls, batch, 0);
        for (int l = 0; l < L; l++) {
            double ss = 0.0;
            for (int m = 0; m < LORA_NUM_MODULES; m++) {
                int a = lora_find(&ls, l, (LoraModule)m);
                if (a < 0) continue;
                const LoraAdapter *ad = &ls.ad[a];
                ss += be->sumsq(be, ls.grads + ad->a_off, (size_t)ls.r * ad->in);
                ss += be->sumsq(be, ls.grads + ad->b_off, (size_t)ad->out * ls.r);
            }
            mine->sums[(size_t)l * CALIB_NSTAT] += sqrt(ss);
        }
        mine->tokens += 1.0;  // the gradient score is a mean over micro-batches
    }
    lora_free(&ls, be);
    free(all);
}

static void print_table(const Selection *sel, const RunConfig *cfg, const Dist *d) {
    printf("calibration: %s%s%s over %d micro-batch(es) x %d rank(s) (%.0f %s), %.1f s\n", cfg->calibration.method,
           strcmp(cfg->calibration.method, "activation") == 0 ? "/" : "",
           strcmp(cfg->calibration.method, "activation") == 0 ? cfg->calibration.probe : "", cfg->calibration.batches,
           d->world, sel->stats.tokens, strcmp(cfg->calibration.method, "gradient") == 0 ? "micro-batches" : "tokens",
           sel->seconds);
    printf("  layer        score  rank  selected\n");
    int *is_sel = xcalloc((size_t)sel->num_layers, sizeof(int), "selected flags");
    for (int i = 0; i < sel->n_selected; i++) is_sel[sel->selected[i]] = 1;
    for (int l = 0; l < sel->num_layers; l++)
        printf("  %5d %12.6g %5d  %s\n", l, sel->scores[l], sel->rank_of[l], is_sel[l] ? "*" : "");
    free(is_sel);
    printf("selected %d of %d layers (rule %s): [", sel->n_selected, sel->num_layers, cfg->calibration.rule);
    for (int i = 0; i < sel->n_selected; i++) printf("%s%d", i ? ", " : "", sel->selected[i]);
    printf("] | statistics hash %016llx (identical on all ranks)\n", sel->stats_hash);
    fflush(stdout);
}

static void log_selection(const Selection *sel, const RunConfig *cfg, Log *lg) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    fprintf(f, "{\"type\":\"calibration\",\"method\":\"%s\",\"probe\":\"%s\",\"rule\":\"%s\",\"batches\":%d,"
            "\"seconds\":%.3f,\"scores\":[", cfg->calibration.method, cfg->calibration.probe, cfg->calibration.rule,
            cfg->calibration.batches, sel->seconds);
    for (int l = 0; l < sel->num_layers; l++) fprintf(f, "%s%.17g", l ? "," : "", sel->scores[l]);
    fputs("],\"rank\":[", f);
    for (int l = 0; l < sel->num_layers; l++) fprintf(f, "%s%d", l ? "," : "", sel->rank_of[l]);
    fputs("],\"selected\":[", f);
    for (int i = 0; i < sel->n_selected; i++) fprintf(f, "%s%d", i ? "," : "", sel->selected[i]);
    fprintf(f, "],\"stats_hash\":\"%016llx\"}", sel->stats_hash);
    fclose(f);
    log_record(lg, buf);
    free(buf);
}

void select_calibrate(Selection *sel, const RunConfig *cfg, const Dist *d, Backend *be, Model *model, Source *src,
                      Batch *batch, const int *modules, int n_modules, Log *lg) {
    double t0 = time_now();
    int L = model->cfg.num_hidden_layers;
    selection_alloc(sel, L);
    CalibMethod method = (CalibMethod)calib_method_parse(cfg->calibration.method);
    CalibStats mine;
    calib_stats_init(&mine, L);
    if (method == METHOD_ACTIVATION) collect_activation(cfg, d, be, model, src, batch, &mine);
    else if (method == METHOD_GRADIENT) collect_gradient(cfg, d, be, model, src, batch, modules, n_modules, &mine);

    // reduce in fp64; then prove that every rank holds the same numbers and the same selection
    size_t n = (size_t)L * CALIB_NSTAT;
    MPI_Allreduce(mine.sums, sel->stats.sums, (int)n, MPI_DOUBLE, MPI_SUM, d->comm);
    MPI_Allreduce(&mine.tokens, &sel->stats.tokens, 1, MPI_DOUBLE, MPI_SUM, d->comm);
    sel->stats_hash = fnv1a64(fnv1a64(FNV64_INIT, sel->stats.sums, n * sizeof(double)), &sel->stats.tokens,
                              sizeof(double));
    dist_check_agree(d, &sel->stats_hash, sizeof sel->stats_hash, "the reduced calibration statistics");
    calib_scores(&sel->stats, method, (CalibProbe)calib_probe_parse(cfg->calibration.probe), modules, n_modules,
                 (uint64_t)cfg->train.seed, sel->scores);
    calib_rank(sel->scores, L, sel->order, sel->rank_of);
    int k = cfg->calibration.k < L ? cfg->calibration.k : L;
    sel->n_selected = calib_select(sel->scores, L, (SelectRule)calib_rule_parse(cfg->calibration.rule), k,
                                   cfg->calibration.fraction, cfg->calibration.threshold, sel->selected);
    dist_check_agree(d, sel->selected, sizeof(int) * (size_t)sel->n_selected, "the selected layers");
    sel->seconds = time_now() - t0;
    if (d->rank == 0) print_table(sel, cfg, d);
    log_selection(sel, cfg, lg);
    write_h5(sel, &mine, cfg, d, src->task, cfg->run.dir);
    calib_stats_free(&mine);
}

// ---------------------------------------------------------------------------- calibration.h5

static void h5_attr_str(hid_t loc, const char *name, const char *v) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(v) > 0 ? strlen(v) : 1);
    H5Tset_cset(t, H5T_CSET_UTF8);
    hid_t sp = H5Screate(H5S_SCALAR), a = H5Acreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, t, strlen(v) > 0 ? v : "");
    H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
}

static void h5_attr_num(hid_t loc, const char *name, hid_t type, const void *v) {
    hid_t sp = H5Screate(H5S_SCALAR), a = H5Acreate2(loc, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, type, v);
    H5Aclose(a);
    H5Sclose(sp);
}

static int h5_dataset(hid_t loc, const char *name, hid_t type, int rank, const hsize_t *dims, const void *data) {
    hid_t sp = H5Screate_simple(rank, dims, NULL);
    hid_t ds = H5Dcreate2(loc, name, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int rc = ds < 0 ? -1 : (H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0 ? -1 : 0);
    if (ds >= 0) H5Dclose(ds);
    H5Sclose(sp);
    return rc;
}

// <dir>/calibration.h5 (rank 0 writes; the other ranks send their statistics). Collective.
static void write_h5(const Selection *sel, const CalibStats *mine, const RunConfig *cfg, const Dist *d,
                     const char *task, const char *dir) {
    int L = sel->num_layers;
    size_t n = (size_t)L * CALIB_NSTAT;
    double *all_sums = d->rank == 0 ? xmalloc(sizeof(double) * n * (size_t)d->world, "per-rank sums") : NULL;
    double *all_tokens = d->rank == 0 ? xmalloc(sizeof(double) * (size_t)d->world, "per-rank tokens") : NULL;
    MPI_Gather(mine->sums, (int)n, MPI_DOUBLE, all_sums, (int)n, MPI_DOUBLE, 0, d->comm);
    MPI_Gather(&mine->tokens, 1, MPI_DOUBLE, all_tokens, 1, MPI_DOUBLE, 0, d->comm);
    int ok = 1;
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/calibration.h5", dir);
    if (d->rank == 0) {
        snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
        hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        ok = f >= 0;
        if (ok) {
            char targets[CONFIG_MAX_TARGETS * 33] = "", hash[32];
            for (int i = 0; i < cfg->lora.n_targets; i++) {
                if (i) strcat(targets, ",");
                strcat(targets, cfg->lora.targets[i]);
            }
            snprintf(hash, sizeof hash, "%016llx", sel->stats_hash);
            int version = 1, world = d->world;
            long long seed = (long long)cfg->train.seed;
            h5_attr_str(f, "format", "actlora-calibration");
            h5_attr_num(f, "format_version", H5T_NATIVE_INT, &version);
            h5_attr_str(f, "method", cfg->calibration.method);
            h5_attr_str(f, "probe", cfg->calibration.probe);
            h5_attr_str(f, "rule", cfg->calibration.rule);
            h5_attr_num(f, "k", H5T_NATIVE_INT, &cfg->calibration.k);
            h5_attr_num(f, "fraction", H5T_NATIVE_DOUBLE, &cfg->calibration.fraction);
            h5_attr_num(f, "threshold", H5T_NATIVE_DOUBLE, &cfg->calibration.threshold);
            h5_attr_num(f, "batches", H5T_NATIVE_INT, &cfg->calibration.batches);
            h5_attr_num(f, "world", H5T_NATIVE_INT, &world);
            h5_attr_num(f, "seed", H5T_NATIVE_LLONG, &seed);
            h5_attr_str(f, "model_path", cfg->model.path);
            h5_attr_str(f, "task", task[0] ? task : cfg->data.task);
            h5_attr_str(f, "target_modules", targets);
            h5_attr_num(f, "num_layers", H5T_NATIVE_INT, &L);
            h5_attr_str(f, "stats_hash", hash);
            hsize_t dl[1] = {(hsize_t)L}, ds[1] = {(hsize_t)sel->n_selected}, dsum[2] = {(hsize_t)L, CALIB_NSTAT},
                    one[1] = {1}, dr[3] = {(hsize_t)d->world, (hsize_t)L, CALIB_NSTAT}, dw[1] = {(hsize_t)d->world};
            ok &= h5_dataset(f, "scores", H5T_NATIVE_DOUBLE, 1, dl, sel->scores) == 0;
            ok &= h5_dataset(f, "rank", H5T_NATIVE_INT, 1, dl, sel->rank_of) == 0;
            ok &= h5_dataset(f, "order", H5T_NATIVE_INT, 1, dl, sel->order) == 0;
            ok &= h5_dataset(f, "selected", H5T_NATIVE_INT, 1, ds, sel->selected) == 0;
            ok &= h5_dataset(f, "sums", H5T_NATIVE_DOUBLE, 2, dsum, sel->stats.sums) == 0;
            ok &= h5_dataset(f, "tokens", H5T_NATIVE_DOUBLE, 1, one, &sel->stats.tokens) == 0;
            ok &= h5_dataset(f, "per_rank_sums", H5T_NATIVE_DOUBLE, 3, dr, all_sums) == 0;
            ok &= h5_dataset(f, "per_rank_tokens", H5T_NATIVE_DOUBLE, 1, dw, all_tokens) == 0;
            ok &= H5Fclose(f) >= 0;
        }
        ok = ok && rename(tmp, path) == 0;
        if (!ok) unlink(tmp);
    }
    MPI_Bcast(&ok, 1, MPI_INT, 0, d->comm);
    check(ok, "could not write %s (is run.dir writable and is there space?)", path);
    free(all_sums);
    free(all_tokens);
}
