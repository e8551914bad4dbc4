// config.h: the run configuration. One libconfig file per run (--config FILE) plus
// --set section.key=value overrides, validated against one schema table (config.c) that
// is also what docs/config.md documents key by key. The same RunConfig on every rank is
// checked through config_hash().
#ifndef ACTLORA_CONFIG_H
#define ACTLORA_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "actlora/common.h"

#define CONFIG_PATH_MAX 4096
#define CONFIG_MAX_TARGETS 16
#define CONFIG_MAX_LAYERS 1024

typedef struct {
    struct {
        char path[CONFIG_PATH_MAX];  // Hugging Face model directory (config.json + safetensors)
        char arch[16];               // "auto" (from config.json model_type) | "llama"
        char dtype[16];              // compute dtype: "auto" | "fp32" | "bf16" (CPU computes fp32)
        char act_dtype[16];          // Llama saved activations: "fp32" | "bf16" (lora.fuse, bf16 weights)
        char attention[16];          // Llama attention: "gemm" | "fused" (needs act_dtype "bf16")
        char init[16];               // "pretrained" | "random" (weights from config.json shapes alone)
        int num_labels;              // classification classes; 1 = regression
    } model;
    struct {
        int r;
        double alpha;
        double dropout;
        int fuse;                                    // Llama: adapters on the frozen GEMMs (bordered weights)
        int rslora;                                  // scaling alpha/sqrt(r) instead of alpha/r
        int n_targets;
        char targets[CONFIG_MAX_TARGETS][32];        // HF module names, e.g. "q_proj"
        int all_layers;                              // lora.layers = "all" (plain-LoRA baseline)
        int auto_layers;                             // lora.layers = "auto" (calibrate and select)
        int n_layers;
        int layers[CONFIG_MAX_LAYERS];               // else: explicit layer indices, sorted, unique
    } lora;
    struct {
        double lr;
        char schedule[16];          // "constant" | "linear" | "cosine" (each after linear warmup)
        int warmup_steps;
        double weight_decay;
        double clip;                // max global grad norm; 0 = off
        double beta1, beta2, eps;
        int micro_batch;            // sequences per rank per micro-step
        int grad_accum;             // micro-steps per optimizer step
        int max_steps;              // optimizer steps; 0 = train.epochs decide
        int epochs;                 // passes over the training split (data.source = "glue")
        int eval_every;             // evaluate every N optimizer steps; 0 = only at the end
        int64_t seed;
    } train;
    struct {
        char source[16];            // "glue": HDF5 from tools/prep_glue.py | "synthetic": drawn from the seed
        char path[CONFIG_PATH_MAX]; // the HDF5 token file (glue)
        char task[16];              // expected task in that file ("" = whatever it holds)
        int seq_len;                // synthetic: tokens per sequence; glue: must be >= the file's max_len
        int group_window;           // length grouping: sort windows of this many samples by length
    } data;
    struct {
        char method[16];            // "activation" | "gradient" | "random"
        char probe[16];             // "block_output" | "lora_input"
        int batches;                // calibration micro-batches per rank
        char rule[16];              // "top_k" | "fraction" | "cumulative"
        int k;
        double fraction;
        double threshold;
    } calibration;
    struct {
        int every_steps;            // checkpoint every N optimizer steps; 0 = off
        double every_minutes;       // ... and/or every M minutes of wall time; 0 = off
        int keep;                   // checkpoints kept in <run.dir>/checkpoints (>= 1)
    } checkpoint;
    struct {
        char dir[CONFIG_PATH_MAX];  // run directory (log, calibration, checkpoints, adapter export)
        char device[16];            // "auto" | "cpu" | "cuda"
        int threads;                // CPU threads per rank; 0 = OMP_NUM_THREADS or all cores
        int log_every;              // progress line every N optimizer steps
        int profile;                // time every backend op of the training steps (profile.h)
        double progress_seconds;    // a progress line every S s while loading / evaluating (progress.h)
        double watchdog_minutes;    // end a rank after this long without progress (watchdog.h); 0 = off
    } run;
} RunConfig;

// Command-line options that are not configuration keys.
typedef struct {
    char config_path[CONFIG_PATH_MAX];  // --config FILE ("" if none)
    int print_config;                   // --print-config: print the effective config and exit
    int help;                           // --help
    int version;                        // --version
    int calibrate_only;                 // --calibrate-only: stop after calibration and selection
    char resume[CONFIG_PATH_MAX];       // --resume auto (default) | no | PATH
    int force;                          // --force: resume although keys that change the run differ
    double plan_memory_gib;             // --plan-memory GIB: print the run's device-memory plan for a GPU of
                                        // GIB and exit (0: off)
} CliArgs;

// Fills every key with its documented default.
void config_defaults(RunConfig *c);
// Applies a libconfig file on top of c. Unknown keys fail with "file:line" and a did-you-mean;
// wrong types and out-of-range values fail naming the key and the allowed range.
int config_load_file(RunConfig *c, const char *path, Error *err);
// Applies one "section.key=value" override (value in libconfig syntax, strings may be bare).
int config_set(RunConfig *c, const char *assignment, Error *err);
// Cross-key checks (e.g. warmup_steps <= max_steps); per-key ranges are checked on assignment.
int config_validate(const RunConfig *c, Error *err);
// defaults -> --config file -> each --set in order -> validate. Fills args.
int config_parse_args(RunConfig *c, CliArgs *args, int argc, char **argv, Error *err);
void config_usage(FILE *f);
// Prints the effective config in libconfig syntax; the output loads back to the same config.
void config_print(const RunConfig *c, FILE *f);
// Hash of the printed config: equal on all ranks iff the configs are equal.
uint64_t config_hash(const RunConfig *c);
// Loads config_print text (e.g. from a checkpoint) onto defaults; `source` names it in errors.
int config_load_text(RunConfig *c, const char *text, const char *source, Error *err);
// Keys whose values differ between a and b that change the course of a run (everything except
// bookkeeping keys such as run.log_every, run.threads, checkpoint.*, train.eval_every, run.dir,
// and the ones that end a run: train.max_steps, train.epochs). Writes "key: A -> B" lines into
// out (NUL-terminated, truncated to n) and returns how many keys differ.
int config_diff_run(const RunConfig *a, const RunConfig *b, char *out, size_t n);

// Schema introspection (used by the docs test): number of keys and the i-th "section.key".
int config_num_keys(void);
const char *config_key_name(int i);

#endif
