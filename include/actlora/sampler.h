// sampler.h: the deterministic order of training samples, and evaluation shards.
//
// An epoch's order is a pure function of (seed, epoch, rows, lengths, window): identical on
// every rank and independent of the number of ranks. Training consumes it as a stream through a
// global sample cursor (samples consumed so far in the epoch): each optimizer step takes the
// next G = micro_batch * grad_accum * world samples. Because the cursor counts samples rather
// than steps, a run checkpointed at cursor c and resumed on another number of ranks continues at
// order[c] with no sample skipped or repeated; only the size of the following steps changes.
//
// Assignment within a global batch starting at `cursor` (m = micro_batch, W = world):
//   micro-step u on rank r takes order[cursor + (u * W + r) * m + j], j = 0..m-1
// i.e. the G samples are cut into consecutive micro-batches of m, handed out round-robin over
// the ranks micro-step by micro-step. With length grouping (below) the global batch is sorted
// by length descending, so all ranks process micro-batches of similar length at the same
// micro-step (balanced work between gradient all-reduces), and each micro-batch holds rows of
// similar length (little padding).
//
// End of epoch: a step needs G samples, so when fewer than G remain (rows - cursor < G) the
// remaining rows of the epoch's order are dropped and the next epoch starts at cursor 0. With a
// fixed G that is rows % G samples per epoch (a different subset each epoch).
#ifndef ACTLORA_SAMPLER_H
#define ACTLORA_SAMPLER_H

#include <stdint.h>

// Fills order[0..rows) with the epoch's sample order: a Fisher-Yates permutation of 0..rows-1
// drawn from rng_u64 keyed by (seed, epoch) with unbiased bounded draws, then, if window > 1 and
// lengths != NULL, length grouping: the permutation is cut into consecutive windows of `window`
// samples (the last one shorter) and each window is sorted by lengths[row] descending, ties kept
// in permuted order (a stable merge sort: the result does not depend on the platform's qsort).
// A window of k * G samples groups lengths over k steps; window <= 1 disables grouping.
void sampler_epoch_order(int64_t *order, int64_t rows, const int32_t *lengths, uint64_t seed, int64_t epoch,
                         int window);

// Full steps in an epoch of `rows` samples at global batch G: rows / G (the incomplete last
// global batch is dropped).
int64_t sampler_steps_per_epoch(int64_t rows, int64_t G);

// Full steps left in the epoch from sample cursor `cursor`: (rows - cursor) / G (0 when cursor
// is past the end). After a resize the cursor need not be a multiple of the new G.
int64_t sampler_steps_left(int64_t rows, int64_t cursor, int64_t G);

// rows_out[0..micro_batch) = the rows of micro-step `micro` (0 <= micro < grad_accum) on `rank`
// for the global batch starting at `cursor`: order[cursor + (micro * world + rank) * micro_batch + j].
// The caller guarantees cursor + G <= rows (see sampler_steps_left).
void sampler_micro_rows(const int64_t *order, int64_t cursor, int micro_batch, int world, int rank, int micro,
                        int64_t *rows_out);

// Evaluation shard of `rank`: rows [rank * rows / world, (rank + 1) * rows / world), contiguous,
// sizes differing by at most one, together covering [0, rows) exactly once (a shard is empty
// when rows < world).
void sampler_eval_shard(int64_t rows, int world, int rank, int64_t *begin, int64_t *end);

// Fraction of padding tokens when rows[0..n) are cut into consecutive batches of micro_batch
// rows (the last one shorter), each padded to its longest row: pad / (pad + real). 0 when n == 0.
double sampler_pad_fraction(const int64_t *rows, int64_t n, const int32_t *lengths, int micro_batch);

// The pad fraction of one epoch of training: the sampler_steps_per_epoch(rows, G) full global
// batches of `order`, in micro-batches of micro_batch (G must be a multiple of micro_batch * world).
double sampler_epoch_pad_fraction(const int64_t *order, int64_t rows, const int32_t *lengths, int64_t G,
                                  int micro_batch, int world);

#endif
