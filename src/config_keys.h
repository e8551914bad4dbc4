// config_keys.h: the schema table of every configuration key (private to config.c and
// config_values.c, through config_internal.h). Each row gives the key's type, the RunConfig field
// it fills, its range or allowed values, its default and its one-line doc; docs/config.md
// documents exactly these keys (tests/test_config_values.c checks).
#ifndef ACTLORA_CONFIG_KEYS_H
#define ACTLORA_CONFIG_KEYS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "actlora/config.h"

typedef enum {
    KT_INT,      // int field, integer literal
    KT_INT64,    // int64_t field, integer literal with or without the L suffix
    KT_DOUBLE,   // double field, float or integer literal
    KT_BOOL,     // int field, true / false
    KT_ENUM,     // char[] field, one of `allowed`
    KT_STRING,   // char[] field, any string that fits (paths)
    KT_TARGETS,  // lora.targets / n_targets: non-empty list of distinct names from `allowed`
    KT_LAYERS,   // lora.all_layers / layers / n_layers: "all" or a list of layer indices
} KeyType;

typedef struct {
    const char *name;             // "section.key"; keys of one section are contiguous
    KeyType type;
    size_t off, size;             // offsetof / sizeof the RunConfig field
    long long imin, imax;         // KT_INT, KT_INT64: inclusive range (imax LLONG_MAX: none)
    double dmin, dmax;            // KT_DOUBLE: range, each end open or closed
    int dmin_open, dmax_open;
    const char *const *allowed;   // KT_ENUM, KT_TARGETS: NULL-terminated
    double def_num;               // default of numeric and bool keys (all exact in a double)
    const char *def_str;          // default of string keys; targets: comma list; layers: "all"
    const char *doc;              // one line, also in docs/config.md
} ConfigKey;

static const char *const ARCH_VALUES[] = {"auto", "llama", "bert", "deberta-v2", NULL};
static const char *const DTYPE_VALUES[] = {"auto", "fp32", "bf16", NULL};
static const char *const ACT_DTYPE_VALUES[] = {"fp32", "bf16", NULL};
static const char *const ATTENTION_VALUES[] = {"gemm", "fused", NULL};
static const char *const INIT_VALUES[] = {"pretrained", "random", NULL};
static const char *const SCHEDULE_VALUES[] = {"constant", "linear", "cosine", NULL};
static const char *const SOURCE_VALUES[] = {"glue", "synthetic", NULL};
static const char *const METHOD_VALUES[] = {"activation", "gradient", "random", NULL};
static const char *const PROBE_VALUES[] = {"block_output", "lora_input", NULL};
static const char *const RULE_VALUES[] = {"top_k", "fraction", "cumulative", NULL};
static const char *const DEVICE_VALUES[] = {"auto", "cpu", "cuda", NULL};
// Llama's projections, then BERT's and DeBERTa's (the model checks the names are its own)
static const char *const TARGET_VALUES[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                            "query", "key", "value", "query_proj", "key_proj", "value_proj",
                                            "attention.output.dense", "intermediate.dense", "output.dense", NULL};

// The _Generic term adds 0 to the offset but stops the build if a field's C type does not
// match the key type, so the table cannot silently write a double into an int.
#define FIELD(f, T) \
    .off = offsetof(RunConfig, f) + _Generic(((RunConfig *)0)->f, T: 0), .size = sizeof(((RunConfig *)0)->f)
#define KEY_INT(n, f, lo, hi, d, doc_) \
    {.name = n, .type = KT_INT, FIELD(f, int), .imin = lo, .imax = hi, .def_num = d, .doc = doc_}
#define KEY_I64(n, f, lo, hi, d, doc_) \
    {.name = n, .type = KT_INT64, FIELD(f, int64_t), .imin = lo, .imax = hi, .def_num = d, .doc = doc_}
#define KEY_DBL(n, f, lo, lo_open, hi, hi_open, d, doc_)                                    \
    {.name = n, .type = KT_DOUBLE, FIELD(f, double), .dmin = lo, .dmin_open = lo_open,   \
     .dmax = hi, .dmax_open = hi_open, .def_num = d, .doc = doc_}
#define KEY_BOOL(n, f, d, doc_) {.name = n, .type = KT_BOOL, FIELD(f, int), .def_num = d, .doc = doc_}
#define KEY_ENUM(n, f, vals, d, doc_) \
    {.name = n, .type = KT_ENUM, FIELD(f, char *), .allowed = vals, .def_str = d, .doc = doc_}
#define KEY_STR(n, f, d, doc_) {.name = n, .type = KT_STRING, FIELD(f, char *), .def_str = d, .doc = doc_}

static const ConfigKey KEYS[] = {
    KEY_STR("model.path", model.path, "", "Hugging Face model directory (config.json + *.safetensors); required"),
    KEY_ENUM("model.arch", model.arch, ARCH_VALUES, "auto", "architecture; auto = model_type from config.json"),
    KEY_ENUM("model.dtype", model.dtype, DTYPE_VALUES, "auto", "compute dtype; the CPU backend computes in fp32"),
    KEY_ENUM("model.act_dtype", model.act_dtype, ACT_DTYPE_VALUES, "fp32",
             "Llama: bf16 = the activations saved for backward (normed inputs, q, k, v, attention "
             "probabilities, the MLP's) in bf16; needs lora.fuse and bf16 weights (docs/gpu.md \"bf16 activations\")"),
    KEY_ENUM("model.attention", model.attention, ATTENTION_VALUES, "gemm",
             "Llama: gemm = batched GEMMs + softmax, saving the [B,H,T,T] probabilities; fused = one kernel that "
             "keeps a log-sum-exp per row and recomputes the probabilities in backward; needs model.act_dtype = "
             "\"bf16\" (docs/gpu.md \"Fused attention\")"),
    KEY_ENUM("model.init", model.init, INIT_VALUES, "pretrained",
             "pretrained = load the safetensors; random = weights from config.json shapes alone"),
    KEY_INT("model.num_labels", model.num_labels, 1, 1000, 2, "classification classes; 1 = regression"),

    KEY_INT("lora.r", lora.r, 1, 1024, 8, "LoRA rank"),
    KEY_DBL("lora.alpha", lora.alpha, 0, 1, 1e6, 0, 16, "LoRA scale numerator: alpha/r (alpha/sqrt(r) with rslora)"),
    KEY_DBL("lora.dropout", lora.dropout, 0, 0, 1, 1, 0.0, "dropout on the LoRA input during training"),
    KEY_BOOL("lora.fuse", lora.fuse, 0, "Llama: each adapter rides on its frozen GEMM (bordered weights; "
             "docs/gpu.md \"Fused LoRA\")"),
    KEY_BOOL("lora.rslora", lora.rslora, 0, "rank-stabilised scale alpha/sqrt(r) instead of alpha/r"),
    {.name = "lora.target_modules", .type = KT_TARGETS, FIELD(lora.targets, char(*)[32]),
     .allowed = TARGET_VALUES, .def_str = "q_proj,v_proj",
     .doc = "modules that get LoRA adapters, each at most once: Llama q_proj..down_proj; BERT query, key, value; DeBERTa query_proj, key_proj, value_proj; encoders also attention.output.dense, intermediate.dense, output.dense"},
    {.name = "lora.layers", .type = KT_LAYERS, FIELD(lora.layers, int *), .imin = 0,
     .imax = CONFIG_MAX_LAYERS - 1, .def_str = "auto",
     .doc = "layers with adapters: \"auto\" (calibration selects), \"all\", or a list of indices"},

    KEY_DBL("train.lr", train.lr, 0, 1, 10, 0, 1e-4, "peak learning rate (AdamW)"),
    KEY_ENUM("train.schedule", train.schedule, SCHEDULE_VALUES, "linear",
             "learning-rate decay to max_steps after the linear warmup"),
    KEY_INT("train.warmup_steps", train.warmup_steps, 0, 1000000000, 0, "linear warmup steps from 0 to train.lr"),
    KEY_DBL("train.weight_decay", train.weight_decay, 0, 0, 1, 0, 0.0, "AdamW decoupled weight decay"),
    KEY_DBL("train.clip", train.clip, 0, 0, INFINITY, 0, 1.0, "max global gradient L2 norm; 0 = no clipping"),
    KEY_DBL("train.beta1", train.beta1, 0, 0, 1, 1, 0.9, "AdamW first-moment decay"),
    KEY_DBL("train.beta2", train.beta2, 0, 0, 1, 1, 0.999, "AdamW second-moment decay"),
    KEY_DBL("train.eps", train.eps, 0, 1, 1, 1, 1e-8, "AdamW denominator epsilon"),
    KEY_INT("train.micro_batch", train.micro_batch, 1, 65536, 8, "sequences per rank per micro-step"),
    KEY_INT("train.grad_accum", train.grad_accum, 1, 65536, 1, "micro-steps accumulated per optimizer step"),
    KEY_INT("train.max_steps", train.max_steps, 0, 1000000000, 0, "optimizer steps to run; 0 = train.epochs decide"),
    KEY_INT("train.epochs", train.epochs, 0, 1000000, 1, "passes over the training split; max_steps > 0 caps them"),
    KEY_INT("train.eval_every", train.eval_every, 0, 1000000000, 0, "evaluate every N optimizer steps; 0 = at the end"),
    KEY_I64("train.seed", train.seed, 0, INT64_MAX, 1234, "seed of every random stream (init, dropout, data)"),

    KEY_ENUM("data.source", data.source, SOURCE_VALUES, "glue",
             "glue = data.path from tools/prep_glue.py; synthetic = a learnable task drawn from the seed"),
    KEY_STR("data.path", data.path, "", "HDF5 token file written by tools/prep_glue.py (data.source = \"glue\")"),
    KEY_STR("data.task", data.task, "", "GLUE task the file must hold (e.g. \"SST-2\"); \"\" = any"),
    KEY_INT("data.seq_len", data.seq_len, 2, 1048576, 128,
            "synthetic: tokens per sequence; glue: longest sequence (>= the file's max_len)"),
    KEY_INT("data.group_window", data.group_window, 0, 1000000000, 1024,
            "length grouping: windows of this many shuffled samples sorted by length; <= 1 = off"),

    KEY_ENUM("calibration.method", calibration.method, METHOD_VALUES, "activation",
             "layer importance: activation norms (Act-LoRA), LoRA gradient norms, or random"),
    KEY_ENUM("calibration.probe", calibration.probe, PROBE_VALUES, "block_output",
             "activation statistic: the block output, or the inputs of the targeted projections"),
    KEY_INT("calibration.batches", calibration.batches, 1, 1000000, 8, "calibration micro-batches per rank"),
    KEY_ENUM("calibration.rule", calibration.rule, RULE_VALUES, "fraction",
             "selection: top_k layers, a fraction of the layers, or a cumulative score share"),
    KEY_INT("calibration.k", calibration.k, 1, CONFIG_MAX_LAYERS, 4, "layers kept by rule top_k"),
    KEY_DBL("calibration.fraction", calibration.fraction, 0, 1, 1, 0, 0.5, "share of layers kept by rule fraction"),
    KEY_DBL("calibration.threshold", calibration.threshold, 0, 1, 1, 0, 0.5,
            "rule cumulative: smallest top set whose share of the total score reaches this"),

    KEY_INT("checkpoint.every_steps", checkpoint.every_steps, 0, 1000000000, 0,
            "write a checkpoint every N optimizer steps; 0 = off"),
    KEY_DBL("checkpoint.every_minutes", checkpoint.every_minutes, 0, 0, 1e6, 0, 0.0,
            "write a checkpoint every M minutes of wall time; 0 = off"),
    KEY_INT("checkpoint.keep", checkpoint.keep, 1, 1000, 2, "checkpoints kept in <run.dir>/checkpoints"),

    KEY_STR("run.dir", run.dir, "runs/default", "run directory (log, calibration, checkpoints, adapter export)"),
    KEY_ENUM("run.device", run.device, DEVICE_VALUES, "auto", "auto = cuda when built with it and a GPU is visible"),
    KEY_INT("run.threads", run.threads, 0, 4096, 0, "CPU threads per rank; 0 = OMP_NUM_THREADS or all cores"),
    KEY_INT("run.log_every", run.log_every, 1, 1000000000, 10, "progress line every N optimizer steps"),
    KEY_DBL("run.progress_seconds", run.progress_seconds, 0, 0, 1e6, 0, 10.0,
            "a progress line every S seconds while a model loads or a split is evaluated; 0 = every layer / "
            "micro-batch"),
    KEY_DBL("run.watchdog_minutes", run.watchdog_minutes, 0, 0, 1e6, 0, 30.0,
            "end a rank (exit 86: requeue) after this long without progress: a hung collective, GPU or "
            "filesystem; 0 = off"),
    KEY_BOOL("run.profile", run.profile, 0, "time every backend op of the training steps after the first and print "
             "a table at the end (each op synchronised: slower steps)"),
};
#endif
