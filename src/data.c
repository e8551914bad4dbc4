// data.c: batch buffers and the synthetic data source.
#include "actlora/data.h"

#include <stdlib.h>
#include <string.h>

#include "actlora/common.h"
#include "actlora/rng.h"

void batch_init(Batch *b, int B, int T) {
    memset(b, 0, sizeof *b);
    b->B = B;
    b->T = T;
    b->cap_B = B;
    b->cap_T = T;
    b->ids = xcalloc((size_t)B * T, sizeof(int32_t), "batch ids");
    b->mask = xcalloc((size_t)B * T, sizeof(int32_t), "batch mask");
    b->type_ids = xcalloc((size_t)B * T, sizeof(int32_t), "batch token type ids");
    b->labels_i = xcalloc((size_t)B, sizeof(int32_t), "batch labels");
    b->labels_f = xcalloc((size_t)B, sizeof(float), "batch labels");
}

void batch_free(Batch *b) {
    free(b->ids);
    free(b->mask);
    free(b->type_ids);
    free(b->labels_i);
    free(b->labels_f);
    memset(b, 0, sizeof *b);
}

void data_synthetic_batch(Batch *b, int vocab, int pad_id, int num_labels, uint64_t seed, int64_t step, int micro,
                          int rank) {
    uint64_t key = rng_key(rng_key(rng_key(rng_key(seed, 0xDA7A), (uint64_t)step), (uint64_t)micro), (uint64_t)rank);
    b->B = b->cap_B;  // synthetic batches always fill the whole capacity
    b->T = b->cap_T;
    int T = b->T, min_len = T / 2 > 2 ? T / 2 : 2;
    if (min_len > T) min_len = T;
    b->n_tokens = 0;
    for (int i = 0; i < b->B; i++) {
        uint64_t row = rng_key(key, (uint64_t)i);
        int len = min_len + (int)(rng_u64(row, 0) % (uint64_t)(T - min_len + 1));
        for (int t = 0; t < T; t++) {
            int id = pad_id >= 0 ? pad_id : 0;
            for (uint64_t attempt = 0; t < len; attempt++) {  // redraw until not the pad id
                id = (int)(rng_u64(row, 1 + (uint64_t)t + attempt * (uint64_t)T) % (uint64_t)vocab);
                if (id != pad_id) break;
            }
            b->ids[i * T + t] = id;
            b->mask[i * T + t] = t < len;
            if (b->type_ids) b->type_ids[i * T + t] = 0;  // the synthetic task has one segment
        }
        b->n_tokens += len;
        int first = b->ids[i * T];
        b->labels_i[i] = num_labels > 1 ? (int)((int64_t)first * num_labels / vocab) : 0;
        b->labels_f[i] = 2.0f * (float)first / (float)vocab - 1.0f;
    }
}
