// main.c: actlora-mpi, the story of a run.
//   init -> config -> load model -> adapters -> train (fwd, bwd, all-reduce, AdamW) -> summary
// Later phases (data files, calibration and selection, checkpoints, evaluation, export) slot in
// between these steps; docs/ describes each.
#include <mpi.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/backend.h"
#include "actlora/comm.h"
#include "actlora/common.h"
#include "actlora/config.h"
#include "actlora/data.h"
#include "actlora/hfmodel.h"
#include "actlora/llama.h"
#include "actlora/lora.h"
#include "actlora/optim.h"
#include "actlora/rng.h"

// Seconds spent in each phase on this rank (x ranks = CPU- or GPU-hours).
typedef struct {
    double load, forward, backward, comm, optim, total;
} Ledger;

static void fmt_duration(char *buf, size_t n, double s) {
    long t = s > 0 ? (long)(s + 0.5) : 0;
    snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint64_t params_checksum(Backend *be, const LoraSet *ls) {
    float *host = xmalloc(ls->numel * sizeof(float), "checksum copy");
    be->download(be, host, ls->params, ls->numel * sizeof(float));
    uint64_t h = fnv1a64(FNV64_INIT, host, ls->numel * sizeof(float));
    free(host);
    return h;
}

// All ranks must hold bit-identical trainable parameters; a mismatch is fatal.
static void check_ranks_agree(Backend *be, const LoraSet *ls, MPI_Comm comm, const char *when) {
    unsigned long long h = params_checksum(be, ls), lo = 0, hi = 0;
    MPI_Allreduce(&h, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, comm);
    MPI_Allreduce(&h, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, comm);
    check(lo == hi, "ranks hold different parameters %s (checksums %016llx .. %016llx): the gradient "
          "all-reduce is not reproducible on this MPI; please report it", when, lo, hi);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    double t_start = time_now();
    int rank = 0, world = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);

    // ---- config: defaults -> file -> --set overrides -> validate (identical on every rank)
    static RunConfig cfg;  // large (paths): keep it off the stack
    CliArgs args;
    Error err;
    if (config_parse_args(&cfg, &args, argc, argv, &err) != 0) {
        if (rank == 0) fprintf(stderr, "actlora-mpi: error: %s\n(run with --help for usage)\n", err.msg);
        MPI_Finalize();
        return 2;
    }
    if (args.help || args.version || args.print_config) {
        if (rank == 0) {
            if (args.help) config_usage(stdout);
            else if (args.version) printf("actlora-mpi %s\n", ACTLORA_VERSION);
            else config_print(&cfg, stdout);
        }
        MPI_Finalize();
        return 0;
    }
    unsigned long long my_hash = config_hash(&cfg), root_hash = my_hash;
    MPI_Bcast(&root_hash, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
    check(my_hash == root_hash, "rank %d read a different configuration than rank 0: give every rank the same "
          "--config file and --set overrides", rank);
    check(strcmp(cfg.run.device, "cuda") != 0,
          "run.device = \"cuda\" but this build has no CUDA backend yet: use run.device = \"cpu\"");

    // ---- backend
    Backend be;
    backend_cpu_init(&be, cfg.run.threads);
    Comm comm;
    comm_init(&comm, MPI_COMM_WORLD);
    Ledger led = {0};

    // ---- load: HF config.json + weights (or random weights of the same shapes)
    double t0 = time_now();
    char cfg_path[CONFIG_PATH_MAX + 16];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", cfg.model.path);
    ModelConfig mc;
    if (hfconfig_load(&mc, cfg_path, &err) != 0) die("%s", err.msg);
    check(strcmp(cfg.model.arch, "auto") == 0 || strcmp(cfg.model.arch, mc.model_type) == 0,
          "model.arch = \"%s\" but %s says model_type \"%s\"", cfg.model.arch, cfg_path, mc.model_type);
    check(cfg.data.seq_len <= mc.max_position_embeddings,
          "data.seq_len = %d exceeds max_position_embeddings = %d of %s", cfg.data.seq_len,
          mc.max_position_embeddings, cfg_path);
    int random_init = strcmp(cfg.model.init, "random") == 0;
    uint64_t seed = (uint64_t)cfg.train.seed;
    Llama model;
    llama_load(&model, &be, cfg.model.path, &mc, cfg.model.num_labels, random_init, seed);

    // ---- adapters on the configured layers, plus the classification head
    int L = mc.num_hidden_layers, layers[CONFIG_MAX_LAYERS], n_layers = 0, modules[LORA_NUM_MODULES];
    if (cfg.lora.all_layers)
        for (int l = 0; l < L && l < CONFIG_MAX_LAYERS; l++) layers[n_layers++] = l;
    else
        for (int i = 0; i < cfg.lora.n_layers; i++) layers[n_layers++] = cfg.lora.layers[i];
    for (int i = 0; i < cfg.lora.n_targets; i++) {
        modules[i] = lora_module_parse(cfg.lora.targets[i]);
        check(modules[i] >= 0, "lora.target_modules: '%s' is not a Llama module", cfg.lora.targets[i]);
    }
    LoraShapes shapes;
    llama_lora_shapes(&mc, &shapes);
    LoraSet ls;
    lora_init(&ls, &be, &shapes, L, layers, n_layers, modules, cfg.lora.n_targets, cfg.lora.r, cfg.lora.alpha,
              cfg.lora.rslora, cfg.lora.dropout, cfg.model.num_labels, mc.hidden_size);
    int head_loaded = llama_init_head(&model, &be, cfg.model.path, random_init, &ls, seed);
    lora_init_weights(&ls, &be, seed);
    int B = cfg.train.micro_batch, T = cfg.data.seq_len;
    llama_alloc_acts(&model, &be, &ls, B, T);
    led.load = time_now() - t0;
    if (rank == 0) {
        printf("actlora-mpi %s | %d rank(s) | backend %s, %d thread(s)\n", ACTLORA_VERSION, world, be.name, be.threads);
        printf("model   %s: %s, %d layers, hidden %d, heads %d/%d, vocab %d (%s weights, loaded in %.1f s)\n",
               cfg.model.path, mc.model_type, L, mc.hidden_size, mc.num_attention_heads, mc.num_key_value_heads,
               mc.vocab_size, random_init ? "random" : "pretrained", led.load);
        printf("lora    r=%d alpha=%g scaling=%g on %d adapter(s), layers %d..%d (backward stops at layer %d); "
               "head %s\n", ls.r, cfg.lora.alpha, ls.scaling, ls.n, ls.n ? ls.ad[0].layer : -1,
               ls.n ? ls.ad[ls.n - 1].layer : -1, ls.lowest_layer, head_loaded ? "loaded" : "new");
        printf("params  %zu trainable (%zu in adapters, %zu in head), gradient all-reduce %zu bytes/step\n", ls.numel,
               ls.head_off, ls.numel - ls.head_off, ls.numel * sizeof(float));
        printf("memory  activations %.1f MiB for micro-batch %d x %d\n", (double)model.act_bytes / 1048576.0, B, T);
        fflush(stdout);
    }

    // ---- train
    OptimConfig oc = {.lr = cfg.train.lr, .kind = (ScheduleKind)optim_schedule_parse(cfg.train.schedule),
                      .warmup_steps = cfg.train.warmup_steps, .total_steps = cfg.train.max_steps,
                      .beta1 = cfg.train.beta1, .beta2 = cfg.train.beta2, .eps = cfg.train.eps,
                      .weight_decay = cfg.train.weight_decay, .clip = cfg.train.clip};
    int accum = cfg.train.grad_accum, K = cfg.model.num_labels;
    float grad_scale = 1.0f / (float)(B * accum);  // mean over the micro-batches; ranks averaged by comm
    Batch batch;
    batch_init(&batch, B, T);
    double t_train = time_now(), loss_ema = 0.0;
    int64_t tokens = 0;
    double *step_s = xcalloc((size_t)cfg.train.max_steps, sizeof(double), "step times");
    for (int step = 0; step < cfg.train.max_steps; step++) {
        double t_step = time_now();
        be.zero(&be, ls.grads, ls.numel * sizeof(float));
        double loss_sum = 0.0;
        for (int micro = 0; micro < accum; micro++) {
            data_synthetic_batch(&batch, mc.vocab_size, mc.pad_token_id, K, seed, step, micro, rank);
            uint64_t dkey = rng_key(rng_key(rng_key(rng_key(seed, 0xD207), (uint64_t)step), (uint64_t)micro),
                                    (uint64_t)rank);
            double tf = time_now();
            loss_sum += llama_forward(&model, &be, &ls, &batch, 1, grad_scale, dkey, NULL);
            double tb = time_now();
            llama_backward(&model, &be, &ls, &batch, dkey);
            be.sync(&be);
            led.forward += tb - tf;
            led.backward += time_now() - tb;
            tokens += batch.n_tokens;
        }
        comm_allreduce_mean(&comm, &be, ls.grads, ls.numel);
        double to = time_now();
        double lr = optim_lr_at(&oc, step);
        double gnorm = optim_clip(&oc, &be, &ls);
        optim_step(&oc, &be, &ls, lr, step + 1);
        be.sync(&be);
        led.optim += time_now() - to;
        step_s[step] = time_now() - t_step;
        double loss = loss_sum / (double)(B * accum), all_loss = 0.0;
        MPI_Allreduce(&loss, &all_loss, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);  // logging only
        loss = all_loss / world;
        loss_ema = step == 0 ? loss : 0.9 * loss_ema + 0.1 * loss;
        if (rank == 0 && ((step + 1) % cfg.run.log_every == 0 || step + 1 == cfg.train.max_steps)) {
            double el = time_now() - t_train, eta = el / (step + 1) * (cfg.train.max_steps - step - 1);
            char eta_s[32];
            fmt_duration(eta_s, sizeof eta_s, eta);
            printf("step %*d/%d | loss %.4f (avg %.4f) | lr %.3e | grad %.4f | %.0f tok/s | ETA %s\n",
                   snprintf(NULL, 0, "%d", cfg.train.max_steps), step + 1, cfg.train.max_steps, loss, loss_ema, lr,
                   gnorm, (double)tokens * world / el, eta_s);
            fflush(stdout);
        }
    }
    check_ranks_agree(&be, &ls, MPI_COMM_WORLD, "at the end of training");
    led.comm = comm.seconds;
    led.total = time_now() - t_start;

    // ---- summary
    int n_timed = cfg.train.max_steps > 1 ? cfg.train.max_steps - 1 : 1;  // the first step warms caches
    qsort(step_s + (cfg.train.max_steps - n_timed), (size_t)n_timed, sizeof(double), cmp_double);
    double step_median = step_s[cfg.train.max_steps - n_timed + n_timed / 2];
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (rank == 0) {
        printf("perf    step %.1f ms (median of %d) | peak RSS %.1f MiB (rank 0)\n", 1000.0 * step_median, n_timed,
               (double)ru.ru_maxrss / 1024.0);
        printf("done    %d steps, %lld tokens, %.1f s | time x ranks: load %.1f s, forward %.1f s, backward %.1f s, "
               "optimizer %.1f s, communication %.1f s, total %.1f s (%.4f CPU-hours)\n",
               cfg.train.max_steps, (long long)tokens * world, led.total, led.load * world, led.forward * world,
               led.backward * world, led.optim * world, led.comm * world, led.total * world,
               led.total * world / 3600.0);
    }
    free(step_s);
    batch_free(&batch);
    llama_free(&model, &be);
    lora_free(&ls, &be);
    backend_free(&be);
    MPI_Finalize();
    return 0;
}
