// data.h: batches of right-padded token sequences, and the synthetic data source used by
// the quickstart and the benchmarks (a learnable task drawn from the seed, no files needed).
#ifndef ACTLORA_DATA_H
#define ACTLORA_DATA_H

#include <stdint.h>

// A batch of right-padded sequences (host memory). B and T are the current shape (a dataset
// reader pads each batch only to its longest row); cap_B and cap_T are what batch_init
// allocated for, and every fill must keep B <= cap_B, T <= cap_T (ids/mask hold cap_B * cap_T).
typedef struct {
    int B, T;
    int cap_B, cap_T;   // allocated capacity
    int32_t *ids;       // [B, T]
    int32_t *mask;      // [B, T], 1 = real token
    int32_t *type_ids;  // [B, T] token types (segment ids: 0 first sentence, 1 second); all 0 when the
                        // data has none (read by encoders with type_vocab_size > 0)
    int32_t *labels_i;  // [B] (classification) or NULL
    float *labels_f;    // [B] (regression) or NULL
    int64_t n_tokens;   // real (unpadded) tokens in the batch
} Batch;

void batch_init(Batch *b, int B, int T);
void batch_free(Batch *b);

// Synthetic rows: lengths uniform in [max(2, T/2), T], token ids uniform over [0, vocab) minus
// pad_id, label = the bucket of the first token id (classification, num_labels buckets) or
// 2 * id / vocab - 1 (regression). Every draw is keyed by (seed, step, micro, rank), so a
// rank's batch at a step is reproducible anywhere.
void data_synthetic_batch(Batch *b, int vocab, int pad_id, int num_labels, uint64_t seed, int64_t step, int micro,
                          int rank);

#endif
