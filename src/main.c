// main.c: actlora-mpi, the story of a run.
//   init -> config -> load model -> data -> resume? -> calibrate + select -> train (fwd, bwd,
//   all-reduce, AdamW) <-> checkpoint, with periodic evaluation -> final evaluation -> summary
// docs/method.md describes the method; docs/config.md every key.
#include <cjson/cJSON.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include "actlora/backend.h"
#include "actlora/calib.h"
#ifdef ACTLORA_HAVE_CUDA
#include "actlora/backend_cuda.h"
#endif
#include "actlora/comm.h"
#include "actlora/common.h"
#include "actlora/config.h"
#include "actlora/data.h"
#include "actlora/devbind.h"
#include "actlora/dist.h"
#include "actlora/export.h"
#include "actlora/hfmodel.h"
#include "actlora/model.h"
#include "actlora/log.h"
#include "actlora/profile.h"
#include "actlora/progress.h"
#include "actlora/lora.h"
#include "actlora/memplan.h"
#include "actlora/resume.h"
#include "actlora/runlock.h"
#include "actlora/select.h"
#include "actlora/signals.h"
#include "actlora/source.h"
#include "actlora/train.h"
#include "actlora/watchdog.h"

#define MAX_EVAL 4

static void print_summary(const Trainer *t, const Ledger *total, const EvalResult *ev, int n_ev, const Dist *d,
                          Log *lg, double wall) {
    // total and wall include the runs this one resumed from
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (d->rank != 0) return;
    double all = 0.0;
    for (int p = 0; p < PHASE_COUNT; p++) all += total->seconds[p];
    printf("summary | %lld steps, %lld epoch(s) | trainable %zu params (%d adapters + head) | peak RSS %.0f MiB "
           "(rank 0)\n", (long long)t->step, (long long)t->epoch, t->ls->numel, t->ls->n, (double)ru.ru_maxrss / 1024.0);
    for (int i = 0; i < n_ev; i++) {
        printf("summary | %s:", ev[i].split);
        for (int k = 0; k < ev[i].score.n; k++) printf(" %s %.4f", ev[i].score.name[k], ev[i].score.value[k]);
        printf("\n");
    }
    printf("summary | step %.1f ms (median) | wall %.1f s x %d rank(s) | time x ranks by phase:",
           1000.0 * trainer_median_step(t), wall, d->world);
    for (int p = 0; p < PHASE_COUNT; p++) printf(" %s %.1f s", phase_name((Phase)p), total->seconds[p]);
    printf(" | %.4f %s-hours\n", wall * d->world / 3600.0, strcmp(t->be->name, "cuda") == 0 ? "GPU" : "CPU");
    fflush(stdout);
    char rec[2048];
    int len = snprintf(rec, sizeof rec,
                       "{\"type\":\"summary\",\"steps\":%lld,\"epochs\":%lld,\"trainable_params\":%zu,\"adapters\":%d,"
                       "\"world\":%d,\"wall_s\":%.3f,\"device_hours\":%.6f,\"ledger_s\":{",
                       (long long)t->step, (long long)t->epoch, t->ls->numel, t->ls->n, d->world, wall,
                       wall * d->world / 3600.0);
    for (int p = 0; p < PHASE_COUNT; p++)
        len += snprintf(rec + len, sizeof rec - (size_t)len, "%s\"%s\":%.3f", p ? "," : "", phase_name((Phase)p),
                        total->seconds[p]);
    len += snprintf(rec + len, sizeof rec - (size_t)len, "},\"accounted_s\":%.3f,\"eval\":{", all);
    for (int i = 0; i < n_ev; i++)
        len += snprintf(rec + len, sizeof rec - (size_t)len, "%s\"%s\":%.8g", i ? "," : "", ev[i].split,
                        ev[i].score.main);
    snprintf(rec + len, sizeof rec - (size_t)len, "}}");
    log_record(lg, rec);
}

// The model's switches on backend be (lora.fuse, model.act_dtype, model.attention): *act_wf, *att_fused and the
// memory planner's flags for them. Dies naming the key when the model or the backend refuses one.
static int model_switches(const RunConfig *cfg, const ModelConfig *mc, const Backend *be, int *act_wf, int *att_fused) {
    Error err = {{0}};
    *act_wf = model_act_wf(mc->arch, be, cfg->model.act_dtype, cfg->lora.fuse, &err);
    if (*act_wf < 0) die("%s", err.msg);
    *att_fused = model_att_fused(mc->arch, be, *act_wf, mc->head_dim, cfg->model.attention, &err);
    if (*att_fused < 0) die("%s", err.msg);
    return (cfg->lora.fuse ? MEMPLAN_FUSED : 0) | (*act_wf ? MEMPLAN_ACT_WF : 0) | (*att_fused ? MEMPLAN_ATT_FUSED : 0);
}

// The device-memory plan (memplan.h) on backend be (its weight format and switches) of adapters on n_layers
// layers from `lowest` (n_modules targets, none: head only) at micro-batch B x T tokens.
static void make_plan(MemPlan *plan, const RunConfig *cfg, const ModelConfig *mc, const Backend *be, int lowest,
                      int n_layers, const int *modules, int n_modules, int B, int T) {
    int act_wf, att_fused, flags = model_switches(cfg, mc, be, &act_wf, &att_fused);
    if (mc->arch == ARCH_LLAMA)
        memplan_llama(plan, mc, cfg->model.num_labels, lowest, n_layers, modules, n_modules, cfg->lora.r, B, T,
                      (int)be->weight_bytes, flags);
    else
        memplan_encoder(plan, mc, cfg->model.num_labels, lowest, n_layers, modules, n_modules, cfg->lora.r, B, T,
                        (int)be->weight_bytes);
}

// --plan-memory GIB: the device-memory plan of the configured run on a GPU of GIB, without a GPU and without
// loading weights (config.json and the data file's sequence length only); rank 0 prints it. The weight format
// is the device's (bf16 unless model.dtype = "fp32"). lora.layers = "auto" is planned for the worst case of
// its rule: the rule's layer count (all layers for "cumulative") down to layer 0, since which layers
// calibration selects is not known before it runs. Returns the exit code: 0 fits, 1 does not.
static int plan_memory_only(const RunConfig *cfg, int rank, double gib) {
    char path[CONFIG_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/config.json", cfg->model.path);
    ModelConfig mc;
    Error err = {{0}};
    if (hfconfig_load(&mc, path, &err) != 0) die("%s (model.path must be a Hugging Face model directory)", err.msg);
    Backend dev;  // the device's weight format and name, all the model's switches and the planner read
    memset(&dev, 0, sizeof dev);
    int bf16 = strcmp(cfg->model.dtype, "fp32") != 0;
    dev.name = "cuda";
    dev.weight_dtype = bf16 ? BACKEND_WEIGHT_BF16 : BACKEND_WEIGHT_FP32;
    dev.weight_bytes = bf16 ? 2 : 4;
    int act_wf, att_fused;
    model_switches(cfg, &mc, &dev, &act_wf, &att_fused);  // a refusal before the plan
    int modules[LORA_NUM_MODULES];
    if (model_parse_targets(mc.arch, cfg->lora.targets, cfg->lora.n_targets, modules, &err) != 0)
        die("%s (model %s)", err.msg, path);
    Source src;
    source_open(&src, cfg, &mc);
    int T = src.max_T, L = mc.num_hidden_layers, lowest = 0, n;
    source_close(&src);
    char layers[128];
    if (cfg->lora.auto_layers) {
        n = calib_select_max(L, calib_rule_parse(cfg->calibration.rule), cfg->calibration.k, cfg->calibration.fraction);
        snprintf(layers, sizeof layers, "\"auto\": rule %s, %d layer(s), the lowest planned as layer 0 (the worst case)",
                 cfg->calibration.rule, n);
    } else {  // "all" or a list: the layers the run will adapt (checked against the model as the run does)
        Selection sel;
        select_explicit(&sel, cfg, L);
        lowest = sel.selected[0];
        n = sel.n_selected;
        select_free(&sel);
        snprintf(layers, sizeof layers, "%d layer(s) from layer %d", n, lowest);
    }
    MemPlan plan;
    make_plan(&plan, cfg, &mc, &dev, lowest, n, modules, cfg->lora.n_targets, cfg->train.micro_batch, T);
    size_t device_bytes = (size_t)(gib * 1073741824.0);
    char report[4096];
    int fits = memplan_fit(&plan, device_bytes, report, sizeof report);
    if (rank == 0) {
        printf("--plan-memory %g: the run's device memory on a %g GiB GPU (lora.layers %s; nothing loaded)\n%s\n"
               "plan    %zu bytes in total, %zu bytes of margin, %zu bytes on the device: %s\n",
               gib, gib, layers, report, plan.total, memplan_margin(device_bytes), device_bytes,
               fits ? "fits" : "does not fit");
        fflush(stdout);
    }
    return fits ? 0 : 1;
}

#ifdef ACTLORA_HAVE_CUDA
// The device-memory plan of adapters on n_layers layers from `lowest` (n_modules targets, none: head
// only) at micro-batch B x T tokens; dies before the memory is allocated when it cannot fit (`what`: the
// phase, for the message). Rank 0 prints the plan (with `quiet`, only when it does not fit) and, with a log,
// writes it as a "memory_plan" record (bytes; docs/outputs.md).
static void plan_device_memory(const RunConfig *cfg, const ModelConfig *mc, const Backend *be, int device, int rank,
                               int lowest, int n_layers, const int *modules, int n_modules, int B, int T, int quiet,
                               const char *what, Log *lg) {
    MemPlan plan;
    make_plan(&plan, cfg, mc, be, lowest, n_layers, modules, n_modules, B, T);
    size_t free_b = 0, total_b = 0;
    backend_cuda_device_memory(device, &free_b, &total_b);
    char report[4096];
    int fits = memplan_fit(&plan, total_b, report, sizeof report);
    if (rank == 0 && (!fits || !quiet)) printf("%s\n", report);
    if (rank == 0 && lg) {
        cJSON *rec = cJSON_CreateObject();
        cJSON_AddStringToObject(rec, "type", "memory_plan");
        cJSON_AddStringToObject(rec, "phase", what);
        cJSON_AddNumberToObject(rec, "micro_batch", B);
        cJSON_AddNumberToObject(rec, "seq_len", T);
        const struct { const char *key; size_t v; } f[] = {
            {"weights", plan.weights}, {"rope", plan.rope},   {"acts", plan.acts},
            {"batch", plan.batch},     {"scratch", plan.scratch}, {"trainable", plan.trainable},
            {"workspace", plan.workspace}, {"total_bytes", plan.total}, {"margin_bytes", memplan_margin(total_b)},
            {"device_bytes", total_b}};
        for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) cJSON_AddNumberToObject(rec, f[i].key, (double)f[i].v);
        cJSON_AddBoolToObject(rec, "fits", fits);
        char *text = cJSON_PrintUnformatted(rec);
        log_record(lg, text);
        free(text);
        cJSON_Delete(rec);
    }
    check(fits, "%s does not fit in the %.1f GiB of device %d (plan above)", what, (double)total_b / 1073741824.0,
          device);
}
#endif

// run.device -> the CPU backend (0) or CUDA device *device (1): every rank of a node gathers what the others
// see (devbind.h), so all agree on who drives which GPU. A refusal on any rank ends the run on all; rank 0
// prints the choice, every rank's when GPUs are used (which GPU each drives, by uuid).
static int bind_device(const Dist *d, const char *setting, int *device) {
    DevbindView mine = {0}, *node = xmalloc((size_t)d->local_world * sizeof *node, "the node's device views");
    if (strcmp(setting, "cpu") != 0) devbind_view_local(&mine);  // "cpu" does not even start the CUDA driver
    dist_node_allgather(d, &mine, sizeof mine, node);
    Error err;
    int use_cuda = devbind_choose(d->local_rank, d->local_world, node, setting, devbind_built_with_cuda(), device, &err);
    free(node);
    check(!dist_any(d, use_cuda < 0), "%s",
          use_cuda < 0 ? err.msg : "another rank cannot use the requested device (see its message)");
    dist_check_agree(d, &use_cuda, sizeof use_cuda, "the backend (cuda on some ranks, cpu on others)");
    if (!use_cuda || d->world == 1) {  // one note: the CPU backend's is the same on every rank
        if (d->rank == 0) printf("device  %s\n", err.msg), fflush(stdout);
        return use_cuda;
    }
    char line[320] = {0}, host[64] = {0}, *all = d->rank == 0 ? xmalloc((size_t)d->world * sizeof line, "notes") : NULL;
    gethostname(host, sizeof host - 1);
    snprintf(line, sizeof line, "rank %d on %.60s: %.240s", d->rank, host, err.msg);
    MPI_Gather(line, (int)sizeof line, MPI_CHAR, all, (int)sizeof line, MPI_CHAR, 0, d->comm);
    for (int r = 0; d->rank == 0 && r < d->world; r++) printf("device  %s\n", all + (size_t)r * sizeof line);
    if (d->rank == 0) fflush(stdout);
    free(all);
    return use_cuda;
}

// Another run has taken run.dir over (runlock.h: it judged this one dead): every rank ends here, writing
// nothing more into it. Exit 1: the job script does not requeue.
static int end_lost(const Dist *d, RunLock *lock, Watchdog *wd, Log *lg, const char *dir) {
    if (d->rank == 0)
        fprintf(stderr, "actlora-mpi: error: another run (%s) has taken over run.dir '%s': this run stops without "
                        "writing a checkpoint; its checkpoints so far and the other run's are intact\n", lock->taker, dir);
    watchdog_stop(wd);
    log_close(lg);
    runlock_release(lock);
    MPI_Finalize();
    return 1;
}

int main(int argc, char **argv) {
    signals_install();  // before MPI_Init (a signal during a slow start must not kill a rank) ...
    MPI_Init(&argc, &argv);
    signals_install();  // ... and after, in case the MPI library installed its own handlers
    double t_start = time_now();
    Dist d;
    dist_init(&d, MPI_COMM_WORLD);

    // ---- config: defaults -> file -> --set overrides -> validate; identical on every rank
    static RunConfig cfg;  // large (paths): off the stack
    CliArgs args;
    Error err = {{0}};
    if (config_parse_args(&cfg, &args, argc, argv, &err) != 0) {
        if (d.rank == 0) fprintf(stderr, "actlora-mpi: error: %s\n(run with --help for usage)\n", err.msg);
        MPI_Finalize();
        return 2;
    }
    if (args.help || args.version || args.print_config) {
        if (d.rank == 0) {
            if (args.help) config_usage(stdout);
            else if (args.version) printf("actlora-mpi %s\n", ACTLORA_VERSION);
            else config_print(&cfg, stdout);
        }
        MPI_Finalize();
        return 0;
    }
    if (args.plan_memory_gib > 0) {  // no device, no weights: the plan of the run, then exit
        int rc = plan_memory_only(&cfg, d.rank, args.plan_memory_gib);
        MPI_Finalize();
        return rc;
    }
    uint64_t cfg_hash = config_hash(&cfg);
    dist_check_agree(&d, &cfg_hash, sizeof cfg_hash, "the configuration (give every rank the same --config and --set)");

    // ---- device: one GPU per rank (the node's ranks compare the GPUs they see), or the CPU backend
    int device = -1, use_cuda = bind_device(&d, cfg.run.device, &device);
    Backend be;
    Comm comm;
    comm_init(&comm, MPI_COMM_WORLD);
#ifdef ACTLORA_HAVE_CUDA
    if (use_cuda) {
        backend_cuda_init(&be, device);
        comm_nccl_init(&comm);
    } else
#endif
        backend_cpu_init(&be, cfg.run.threads);
    if (backend_set_dtype(&be, cfg.model.dtype, err.msg, sizeof err.msg) != 0) die("%s", err.msg);
    if (d.rank == 0 && !use_cuda && be.threads > 1 && backend_cpu_blas_threading() == 1 && !getenv("OMP_WAIT_POLICY"))
        printf("note    OpenBLAS's own threads and OpenMP's spin against each other: install libopenblas0-openmp "
               "(then used) or export OMP_WAIT_POLICY=PASSIVE (CPU steps up to 1.9x faster; docs/benchmarks.md)\n");
    Log lg;
    log_open(&lg, &d, cfg.run.dir);
    Ledger led = {0};

    // ---- load: HF config.json + weights (or random weights of the same shapes)
    double t0 = time_now();
    char cfg_path[CONFIG_PATH_MAX + 16];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", cfg.model.path);
    ModelConfig mc;
    if (hfconfig_load(&mc, cfg_path, &err) != 0) die("%s (model.path must be a Hugging Face model directory)", err.msg);
    check(strcmp(cfg.model.arch, "auto") == 0 || strcmp(cfg.model.arch, mc.model_type) == 0,
          "model.arch = \"%s\" but %s says model_type \"%s\"", cfg.model.arch, cfg_path, mc.model_type);
    int random_init = strcmp(cfg.model.init, "random") == 0;
    uint64_t seed = (uint64_t)cfg.train.seed;
    int act_wf, att_fused;
    model_switches(&cfg, &mc, &be, &act_wf, &att_fused);  // a refusal before minutes of loading
#ifdef ACTLORA_HAVE_CUDA
    if (use_cuda)  // the frozen weights alone (head only, one token): refused before loading when they cannot fit
        plan_device_memory(&cfg, &mc, &be, device, d.rank, mc.num_hidden_layers, 0, NULL, 0, 1, 1, 1,
                           "the model's frozen weights", NULL);
#endif
    Model model;
    Progress lp;  // a line every run.progress_seconds while an 8B model's 16 GB are read
    progress_init(&lp, d.rank == 0 ? stdout : NULL, "load", random_init ? "random weights" : "weights",
                  cfg.run.progress_seconds);
    model_load(&model, &be, cfg.model.path, &mc, cfg.model.num_labels, random_init, seed,
               cfg.lora.fuse ? cfg.lora.r : 0, &lp);
    model_set_act_wf(&model, act_wf);
    model_set_att_fused(&model, att_fused);

    // ---- data: this rank's view of the GLUE file (or the synthetic task)
    Source src;
    source_open(&src, &cfg, &mc);
    Batch batch;
    batch_init(&batch, cfg.train.micro_batch, src.max_T);
    led.seconds[PHASE_LOAD] = time_now() - t0;
    // ---- one run per run.dir: refused, naming the other run, while another one lives there. Taken after the
    //      inputs are read (a mistake in them ends the run before it holds anything) and before it writes a record
    RunLock lock;
    runlock_open(&lock, &d, cfg.run.dir);
    if (d.rank == 0) {
        printf("actlora-mpi %s | %d rank(s) | backend %s, %d thread(s) per rank | run dir %s\n", ACTLORA_VERSION,
               d.world, be.name, be.threads, cfg.run.dir);
        printf("model   %s: %s (%s), %d layers, hidden %d, heads %d/%d, vocab %d (%s weights, %.1f s)\n",
               cfg.model.path, mc.model_type, model_arch_name(mc.arch), mc.num_hidden_layers, mc.hidden_size,
               mc.num_attention_heads, mc.num_key_value_heads, mc.vocab_size, random_init ? "random" : "pretrained", led.seconds[PHASE_LOAD]);
        if (src.glue)
            printf("data    %s: %s, %lld train rows, %d dev split(s), %d labels, longest row %d; tokenizer %s\n",
                   cfg.data.path, src.task, (long long)src.train.rows, src.n_eval, src.num_labels, src.max_T,
                   src.tokenizer_checked ? "matches the model's tokenizer.json"
                                         : "not checked (no tokenizer.json in the model directory)");
        else
            printf("data    synthetic task: %d labels, sequences of %d tokens\n", src.num_labels, src.max_T);
        char hash[32];
        snprintf(hash, sizeof hash, "%016llx", (unsigned long long)cfg_hash);
        cJSON *rec = cJSON_CreateObject();  // cJSON escapes the user's paths
        cJSON_AddStringToObject(rec, "type", "start");
        cJSON_AddNumberToObject(rec, "world", d.world);
        cJSON_AddStringToObject(rec, "model", cfg.model.path);
        cJSON_AddStringToObject(rec, "data", cfg.data.path);
        cJSON_AddStringToObject(rec, "task", src.task);
        cJSON_AddStringToObject(rec, "config_hash", hash);
        char *text = cJSON_PrintUnformatted(rec);
        log_record(&lg, text);
        free(text);
        cJSON_Delete(rec);
        fflush(stdout);
    }
    if (d.rank == 0 && src.glue && mc.type_vocab_size > 1 && !src.train.has_type_ids)
        printf("warning: %s has no token type ids (an older format): every token gets type 0, which is wrong for "
               "sentence-pair tasks; re-run tools/prep_glue.py to write them\n", cfg.data.path);
    check(src.num_labels == cfg.model.num_labels, "model.num_labels = %d but the data has %d labels",
          cfg.model.num_labels, src.num_labels);

    // ---- from here every phase beats the watchdog: a rank without progress for run.watchdog_minutes (a hung
    //      collective, GPU or filesystem) exits with ACTLORA_EXIT_HUNG instead of holding the job until its limit
    Watchdog wd;
    watchdog_start(&wd, 60.0 * cfg.run.watchdog_minutes, d.rank);
    watchdog_beat(&wd, "resuming and calibrating");

    // ---- resume? the newest valid checkpoint of run.dir (--resume auto), a given one, or none
    uint64_t fingerprint = 0;
    if (hfmodel_fingerprint(cfg.model.path, !random_init, &fingerprint, &err) != 0) die("%s", err.msg);
    Resume res;
    CkptState ck;
    int resumed = resume_open(&res, &ck, &args, &cfg, &d, fingerprint);

    // ---- calibrate + select (lora.layers = "auto"), or the configured layers, or the checkpoint's
    int modules[LORA_NUM_MODULES];
    const LoraNaming *naming = model_lora_naming(mc.arch);
    if (model_parse_targets(mc.arch, cfg.lora.targets, cfg.lora.n_targets, modules, &err) != 0)
        die("%s (model %s)", err.msg, cfg_path);
    Selection sel;
    if (resumed) {
        resume_selection(&ck, &sel);
    } else if (cfg.lora.auto_layers) {
#ifdef ACTLORA_HAVE_CUDA
        if (use_cuda && strcmp(cfg.calibration.method, "gradient") == 0)  // adapters on every layer meanwhile
            plan_device_memory(&cfg, &mc, &be, device, d.rank, 0, mc.num_hidden_layers, modules,
                               cfg.lora.n_targets, cfg.train.micro_batch, src.max_T, 0,
                               "gradient calibration (adapters on every layer; calibration.method = \"activation\" "
                               "needs no backward)", &lg);
#endif
        double tc = time_now();
        select_calibrate(&sel, &cfg, &d, &be, &model, &src, &batch, modules, cfg.lora.n_targets, &lg);
        led.seconds[PHASE_CALIBRATION] = time_now() - tc;
    } else {
        select_explicit(&sel, &cfg, mc.num_hidden_layers);
    }
    if (args.calibrate_only) {
        if (d.rank == 0) printf("--calibrate-only: stopping after selection (%s/calibration.h5)\n", cfg.run.dir);
        watchdog_stop(&wd);
        select_free(&sel);
        source_close(&src);
        batch_free(&batch);
        model_free(&model, &be);
        backend_free(&be);
        log_close(&lg);
        runlock_release(&lock);
        MPI_Finalize();
        return 0;
    }

    // ---- adapters on the selected layers, plus the classification head
    LoraShapes shapes;
    model_lora_shapes(&mc, &shapes);
    LoraSet ls;
    lora_init(&ls, &be, naming, &shapes, mc.num_hidden_layers, sel.selected, sel.n_selected, modules,
              cfg.lora.n_targets, cfg.lora.r, cfg.lora.alpha, cfg.lora.rslora, cfg.lora.dropout, cfg.model.num_labels,
              model_head_hidden(&mc));
#ifdef ACTLORA_HAVE_CUDA
    if (use_cuda)  // the device-memory plan and an early refusal if it cannot fit
        plan_device_memory(&cfg, &mc, &be, device, d.rank, ls.lowest_layer, sel.n_selected, modules,
                           cfg.lora.n_targets, cfg.train.micro_batch, src.max_T, 0, "the run", &lg);
#endif
    int head_loaded = model_init_head(&model, &be, cfg.model.path, random_init, &ls, seed);
    lora_init_weights(&ls, &be, seed);
    model_alloc_acts(&model, &be, &ls, cfg.train.micro_batch, src.max_T);
    Trainer tr;
    trainer_init(&tr, &cfg, &d, &be, &comm, &lg, &led, &model, &ls, &src, &batch);
    if (resumed) {
        resume_apply(&res, &ck, &tr);
        ckpt_state_free(&ck);
    }
    if (d.rank == 0) {
        printf("lora    r=%d alpha=%g (scale %g) on %d adapter(s) in layers [", ls.r, cfg.lora.alpha, ls.scaling, ls.n);
        for (int i = 0; i < sel.n_selected; i++) printf("%s%d", i ? ", " : "", sel.selected[i]);
        printf("], backward stops at layer %d; head %s%s%s%s\n", ls.lowest_layer, head_loaded ? "loaded" : "new",
               cfg.lora.fuse ? "; each adapter on its frozen GEMM (lora.fuse)" : "", act_wf ? ", bf16 activations" : "",
               att_fused ? ", fused attention" : "");
        printf("params  %zu trainable (%zu in adapters, %zu in head); gradient all-reduce of %zu bytes per step\n",
               ls.numel, ls.head_off, ls.numel - ls.head_off, ls.numel * sizeof(float));
        double pad = source_pad_fraction(&src, tr.epoch, tr.G, cfg.train.micro_batch, d.world);
        printf("plan    %lld steps (%lld per epoch) of global batch %lld = %d x %d x %d rank(s); activations %.1f MiB",
               (long long)tr.total_steps, (long long)(src.glue ? tr.steps_per_epoch : tr.total_steps), (long long)tr.G,
               cfg.train.micro_batch, cfg.train.grad_accum, d.world, (double)model_act_bytes(&model) / 1048576.0);
        if (pad >= 0) printf("; padding %.1f%% of tokens (length-grouped)", 100.0 * pad);
        printf("\n");
        fflush(stdout);
    }

    // ---- train: micro-steps, then the all-reduce + AdamW; at every micro-step boundary the ranks
    //      agree whether a stop signal arrived (then: checkpoint together, exit "requeue me")
    EvalResult ev[MAX_EVAL];
    int n_ev = 0;
    double every_s = 60.0 * cfg.checkpoint.every_minutes;
    // testing aid: ACTLORA_FAULT_STOP_AT=STEP.MICRO raises SIGUSR1 on this process at that boundary
    long long stop_step = -1, stop_micro = -1;
    const char *fault = getenv("ACTLORA_FAULT_STOP_AT");
    if (fault) check(sscanf(fault, "%lld.%lld", &stop_step, &stop_micro) == 2,
                     "ACTLORA_FAULT_STOP_AT='%s' must be STEP.MICRO", fault);
    // run.profile: every op timed (profile.h), from the second step of this run (the first allocates)
    Profile prof = {0};
    long long prof_first = tr.step, prof_warm = tr.step + 1;  // the profile holds the steps from prof_first
    if (cfg.run.profile) profile_start(&prof, &be);
    while (tr.step < tr.total_steps) {
        if (cfg.run.profile && tr.step == prof_warm && tr.micro == 0) {
            profile_reset(&prof);
            prof_first = tr.step;
        }
        while (tr.micro < cfg.train.grad_accum) {
            if (tr.step == stop_step && tr.micro == stop_micro) raise(SIGUSR1);
            watchdog_beat(&wd, "step %lld, micro-step %d", (long long)tr.step + 1, tr.micro);
            // every rank agrees: 2 = another run took run.dir over (runlock.h), 1 = a stop signal
            int stop = dist_max(&d, runlock_lost(&lock) ? 2 : actlora_stop_signal != 0);
            if (stop == 2) return end_lost(&d, &lock, &wd, &lg, cfg.run.dir);
            if (stop) {
                if (d.rank == 0) printf("signal  received: writing a checkpoint before exiting\n");
                watchdog_beat(&wd, "the stop-signal checkpoint at step %lld", (long long)tr.step);
                if (resume_save(&res, &tr, &sel, "stop signal", &err) != 0)
                    die("the stop-signal checkpoint failed: %s (earlier checkpoints are intact)", err.msg);
                watchdog_stop(&wd);
                log_close(&lg);
                runlock_release(&lock);
                MPI_Finalize();
                return CKPT_EXIT_REQUEUE;
            }
            trainer_micro_step(&tr);
        }
        watchdog_beat(&wd, "the gradient all-reduce and optimizer step %lld", (long long)tr.step + 1);
        double grad_norm, lr, loss = trainer_finish_step(&tr, &grad_norm, &lr);
        trainer_report(&tr, loss, grad_norm, lr);
        watchdog_beat(&wd, "the evaluation and checkpoint after step %lld", (long long)tr.step);
        if (cfg.train.eval_every > 0 && tr.step % cfg.train.eval_every == 0 && tr.step < tr.total_steps)
            trainer_evaluate(&tr, ev, MAX_EVAL);
        // periodic checkpoints: by steps, or by wall time on rank 0's clock (agreed by all-reduce)
        int due = (cfg.checkpoint.every_steps > 0 && tr.step % cfg.checkpoint.every_steps == 0) ||
                  (every_s > 0 && dist_any(&d, d.rank == 0 && time_now() - res.t_last_save >= every_s));
        if (due && tr.step < tr.total_steps && !dist_any(&d, runlock_lost(&lock)) && resume_save(&res, &tr, &sel, "periodic", &err) != 0 && d.rank == 0)
            fprintf(stderr, "actlora-mpi: warning: periodic checkpoint failed, training goes on: %s\n", err.msg);
    }
    if (cfg.run.profile) {
        long long steps = tr.step - prof_first;
        profile_stop(&prof);
        if (d.rank == 0) profile_print(&prof, stdout, steps, 30, 0.0);
        profile_log(&prof, &lg, steps);
        profile_free(&prof);
    }
    watchdog_beat(&wd, "the final evaluation, checkpoint and export");
    if (dist_any(&d, runlock_lost(&lock))) return end_lost(&d, &lock, &wd, &lg, cfg.run.dir);
    n_ev = trainer_evaluate(&tr, ev, MAX_EVAL);
    trainer_check_agree(&tr, "at the end of training");
    if ((cfg.checkpoint.every_steps > 0 || every_s > 0) && resume_save(&res, &tr, &sel, "final", &err) != 0 &&
        d.rank == 0)
        fprintf(stderr, "actlora-mpi: warning: final checkpoint failed: %s\n", err.msg);

    // ---- export: a PEFT adapter directory (rank 0)
    char export_dir[CONFIG_PATH_MAX + 16];
    snprintf(export_dir, sizeof export_dir, "%s/adapter", cfg.run.dir);
    int exported = d.rank != 0 || export_lora(export_dir, &cfg, &ls, &be, sel.selected, sel.n_selected, &err) == 0;
    MPI_Bcast(&exported, 1, MPI_INT, 0, d.comm);
    check(exported, "exporting the adapter to %s failed: %s", export_dir, err.msg);
    if (d.rank == 0) printf("export  %s (PEFT adapter: adapter_model.safetensors + adapter_config.json)\n", export_dir);

    // ---- summary: metrics, trainable parameters, time x ranks by phase (earlier runs included)
    Ledger total;
    ledger_reduce(&led, &total, &d);
    for (int p = 0; p < PHASE_COUNT; p++) total.seconds[p] += res.ledger_prior[p];
    print_summary(&tr, &total, ev, n_ev, &d, &lg, res.wall_prior + time_now() - t_start);
    watchdog_stop(&wd);

    trainer_free(&tr);
    select_free(&sel);
    source_close(&src);
    batch_free(&batch);
    model_free(&model, &be);
    lora_free(&ls, &be);
#ifdef ACTLORA_HAVE_CUDA
    if (comm.nccl) comm_nccl_free(&comm);
#endif
    backend_free(&be);
    log_close(&lg);
    runlock_release(&lock);
    MPI_Finalize();
    return 0;
}
