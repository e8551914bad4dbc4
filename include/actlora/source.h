// source.h: the data a run reads, behind one interface: a GLUE token file (tools/prep_glue.py,
// dataset.h) read in this rank's shard through the deterministic sampler (sampler.h), or the
// synthetic task (data.h). Position in the training data is (epoch, global sample cursor).
#ifndef ACTLORA_SOURCE_H
#define ACTLORA_SOURCE_H

#include <stdint.h>

#include "actlora/config.h"
#include "actlora/data.h"
#include "actlora/dataset.h"
#include "actlora/hfmodel.h"

#define SOURCE_MAX_EVAL 4

typedef struct {
    int glue;                    // 1: GLUE file; 0: synthetic
    char task[32];               // GLUE task name ("" for synthetic)
    int num_labels;              // 1 = regression
    int max_T;                   // longest sequence a batch can hold
    int pad_id;
    int vocab;                   // synthetic token range
    uint64_t seed;
    int window;                  // length-grouping window
    int tokenizer_checked;       // the file's tokenizer sha256 matched <model.path>/tokenizer.json
    DatasetSplit train;          // glue only
    int n_eval;
    DatasetSplit eval[SOURCE_MAX_EVAL];  // every split whose name starts with "dev"
    int64_t *order;              // the training order of epoch `order_epoch`
    int64_t order_epoch;
    int64_t *calib_order;        // the order calibration batches are drawn from
    int64_t *rows;               // scratch: rows of one micro-batch
} Source;

// Opens the configured data and checks it against the model: task, label count, token ids within
// the vocabulary's range, sequence length within max_position_embeddings. Dies with a message
// naming the file and what to change.
void source_open(Source *s, const RunConfig *cfg, const ModelConfig *mc);
void source_close(Source *s);

// Optimizer steps in one epoch at global batch G (synthetic: unbounded, returns INT64_MAX).
int64_t source_steps_per_epoch(const Source *s, int64_t G);
// Fraction of padding tokens over epoch `epoch`'s micro-batches (-1 for synthetic data).
double source_pad_fraction(Source *s, int64_t epoch, int64_t G, int micro_batch, int world);
// Training micro-batch `micro` of this rank for the global batch at (epoch, cursor).
void source_train_batch(Source *s, Batch *b, int64_t epoch, int64_t cursor, int micro, int micro_batch,
                        int world, int rank);
// Calibration micro-batch i of this rank (a fixed shuffled order of the training split,
// independent of the training order; wraps around when the split is exhausted).
void source_calib_batch(Source *s, Batch *b, int i, int micro_batch, int world, int rank);

#endif
