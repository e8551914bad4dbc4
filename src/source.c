// source.c: GLUE file or synthetic task behind one batch interface.
#include "actlora/source.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actlora/common.h"
#include "actlora/rng.h"
#include "actlora/sampler.h"
#include "actlora/sha256.h"

void source_open(Source *s, const RunConfig *cfg, const ModelConfig *mc) {
    memset(s, 0, sizeof *s);
    s->seed = (uint64_t)cfg->train.seed;
    s->window = cfg->data.group_window;
    s->vocab = mc->vocab_size;
    s->order_epoch = -1;
    s->rows = xmalloc(sizeof(int64_t) * (size_t)cfg->train.micro_batch, "micro-batch rows");
    if (strcmp(cfg->data.source, "synthetic") == 0) {
        s->num_labels = cfg->model.num_labels;
        s->max_T = cfg->data.seq_len;
        s->pad_id = mc->pad_token_id;
        return;
    }
    s->glue = 1;
    Error err;
    const char *path = cfg->data.path;
    if (dataset_split_open(&s->train, path, "train", &err) != 0) die("%s", err.msg);
    const DatasetInfo *di = &s->train.info;
    // the file must come from this model's own tokenizer when the model directory has one
    char tok_path[CONFIG_PATH_MAX + 32], tok_sha[65] = "";
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", cfg->model.path);
    if (access(tok_path, R_OK) == 0 && sha256_file_hex(tok_path, tok_sha, &err) != 0) die("%s", err.msg);
    s->tokenizer_checked = tok_sha[0] != '\0';
    if (dataset_check(di, cfg->data.task[0] ? cfg->data.task : NULL, cfg->model.num_labels, tok_sha, &err) != 0)
        die("%s (model.num_labels = %d, data.task = \"%s\", model tokenizer %s)", err.msg, cfg->model.num_labels,
            cfg->data.task, s->tokenizer_checked ? tok_path : "not in the model directory");
    snprintf(s->task, sizeof s->task, "%s", di->task);
    s->num_labels = di->num_labels;
    s->pad_id = di->pad_id;
    s->max_T = s->train.max_row_len;
    check(di->max_len <= cfg->data.seq_len,
          "%s was prepared with max_len %d but data.seq_len = %d: raise data.seq_len to at least %d", path,
          di->max_len, cfg->data.seq_len, di->max_len);
    check(di->max_len <= mc->max_position_embeddings,
          "%s was prepared with max_len %d but the model handles at most %d positions: re-run tools/prep_glue.py "
          "with --max-len %d", path, di->max_len, mc->max_position_embeddings, mc->max_position_embeddings);
    check(di->pad_id >= 0 && di->pad_id < mc->vocab_size, "%s: pad_id %d is outside the model's vocabulary (%d ids)",
          path, di->pad_id, mc->vocab_size);
    for (int i = 0; i < di->n_splits && s->n_eval < SOURCE_MAX_EVAL; i++) {
        if (strncmp(di->splits[i], "dev", 3) != 0) continue;
        DatasetSplit *e = &s->eval[s->n_eval];
        if (dataset_split_open(e, path, di->splits[i], &err) != 0) die("%s", err.msg);
        if (e->max_row_len > s->max_T) s->max_T = e->max_row_len;
        s->n_eval++;
    }
    // token type ids: a model with token-type embeddings (type_vocab_size > 0, BERT) must have a row for
    // every type id in the data (batches are checked against max_type_id as they are read); a model
    // without them (Llama, DeBERTa-v3: type_vocab_size 0) ignores Batch.type_ids
    for (int i = -1; i < s->n_eval && mc->type_vocab_size > 0; i++) {
        const DatasetSplit *sp = i < 0 ? &s->train : &s->eval[i];
        check(sp->max_type_id < mc->type_vocab_size,
              "%s: split '%s' has token type ids up to %d (dataset 'type_ids', attribute max_type_id) but the model "
              "has type_vocab_size %d: prepare the file with this model's tokenizer.json (tools/prep_glue.py)",
              path, sp->name, sp->max_type_id, mc->type_vocab_size);
    }
    s->order = xmalloc(sizeof(int64_t) * (size_t)s->train.rows, "epoch order");
    s->calib_order = xmalloc(sizeof(int64_t) * (size_t)s->train.rows, "calibration order");
    sampler_epoch_order(s->calib_order, s->train.rows, s->train.lengths, rng_key(s->seed, 0xCA1B), 0, s->window);
}

void source_close(Source *s) {
    if (s->glue) {
        dataset_split_close(&s->train);
        for (int i = 0; i < s->n_eval; i++) dataset_split_close(&s->eval[i]);
    }
    free(s->order);
    free(s->calib_order);
    free(s->rows);
    memset(s, 0, sizeof *s);
}

int64_t source_steps_per_epoch(const Source *s, int64_t G) {
    return s->glue ? sampler_steps_per_epoch(s->train.rows, G) : INT64_MAX;
}

double source_pad_fraction(Source *s, int64_t epoch, int64_t G, int micro_batch, int world) {
    if (!s->glue) return -1.0;
    if (s->order_epoch != epoch) {
        sampler_epoch_order(s->order, s->train.rows, s->train.lengths, s->seed, epoch, s->window);
        s->order_epoch = epoch;
    }
    return sampler_epoch_pad_fraction(s->order, s->train.rows, s->train.lengths, G, micro_batch, world);
}

static void read_rows(Source *s, DatasetSplit *split, Batch *b, int n) {
    Error err;
    if (dataset_split_read(split, s->rows, n, b, &err) != 0) die("%s", err.msg);
    for (int i = 0; i < b->B * b->T; i++)
        check(b->ids[i] >= 0 && b->ids[i] < s->vocab,
              "%s: token id %d is outside the model's vocabulary (%d ids): the file was tokenized for another "
              "model; re-run tools/prep_glue.py with this model's tokenizer.json", split->info.path, b->ids[i], s->vocab);
}

void source_train_batch(Source *s, Batch *b, int64_t epoch, int64_t cursor, int micro, int micro_batch, int world,
                        int rank) {
    if (!s->glue) {  // the synthetic task has one endless epoch: the cursor names the global batch
        (void)epoch, (void)world;
        data_synthetic_batch(b, s->vocab, s->pad_id, s->num_labels, s->seed, cursor, micro, rank);
        return;
    }
    if (s->order_epoch != epoch) {
        sampler_epoch_order(s->order, s->train.rows, s->train.lengths, s->seed, epoch, s->window);
        s->order_epoch = epoch;
    }
    sampler_micro_rows(s->order, cursor, micro_batch, world, rank, micro, s->rows);
    read_rows(s, &s->train, b, micro_batch);
}

void source_calib_batch(Source *s, Batch *b, int i, int micro_batch, int world, int rank) {
    if (!s->glue) {
        data_synthetic_batch(b, s->vocab, s->pad_id, s->num_labels, rng_key(s->seed, 0xCA1B), i, 0, rank);
        return;
    }
    int64_t per = (int64_t)micro_batch * world, n = s->train.rows;
    int64_t start = ((int64_t)i * per) % n;
    for (int j = 0; j < micro_batch; j++) s->rows[j] = s->calib_order[(start + (int64_t)rank * micro_batch + j) % n];
    read_rows(s, &s->train, b, micro_batch);
}
