// sampler.c: deterministic epoch order (permutation + length grouping), the global-batch
// assignment to ranks and micro-steps, evaluation shards and padding statistics.
#include "actlora/sampler.h"

#include <stdlib.h>
#include <string.h>

#include "actlora/common.h"
#include "actlora/rng.h"

// Uniform draw in [0, n) from stream `key`, consuming draws *ctr, *ctr + 1, ... (Lemire's
// rejection: draws below 2^64 mod n are rejected, so every value has the same probability).
static uint64_t draw_below(uint64_t key, uint64_t *ctr, uint64_t n) {
    uint64_t reject = (0 - n) % n;  // 2^64 mod n
    for (;;) {
        uint64_t x = rng_u64(key, (*ctr)++);
        if (x >= reject) return x % n;
    }
}

// Stable merge sort of a[0..n) by lengths[] descending, using tmp[n]. Bottom-up, so the result
// is a pure function of the input on every platform.
static void sort_by_len_desc(int64_t *a, int64_t *tmp, int64_t n, const int32_t *lengths) {
    int64_t *src = a, *dst = tmp;
    for (int64_t w = 1; w < n; w *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * w) {
            int64_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            int64_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) dst[k++] = lengths[src[j]] > lengths[src[i]] ? src[j++] : src[i++];  // ties: left
            while (i < mid) dst[k++] = src[i++];
            while (j < hi) dst[k++] = src[j++];
        }
        int64_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != a) memcpy(a, src, (size_t)n * sizeof(int64_t));
}

void sampler_epoch_order(int64_t *order, int64_t rows, const int32_t *lengths, uint64_t seed, int64_t epoch,
                         int window) {
    uint64_t key = rng_key(rng_key(seed, 0x5A3713), (uint64_t)epoch), ctr = 0;
    for (int64_t i = 0; i < rows; i++) order[i] = i;
    for (int64_t i = rows - 1; i > 0; i--) {  // Fisher-Yates: order[i] <- uniform pick from order[0..i]
        int64_t j = (int64_t)draw_below(key, &ctr, (uint64_t)i + 1);
        int64_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    if (window <= 1 || !lengths || rows < 2) return;
    int64_t *tmp = xmalloc((size_t)(rows < window ? rows : window) * sizeof(int64_t), "sampler sort buffer");
    for (int64_t lo = 0; lo < rows; lo += window) {
        int64_t n = rows - lo < window ? rows - lo : window;
        sort_by_len_desc(order + lo, tmp, n, lengths);
    }
    free(tmp);
}

int64_t sampler_steps_per_epoch(int64_t rows, int64_t G) {
    check(G > 0, "sampler: global batch %lld must be positive", (long long)G);
    return rows > 0 ? rows / G : 0;
}

int64_t sampler_steps_left(int64_t rows, int64_t cursor, int64_t G) {
    check(G > 0, "sampler: global batch %lld must be positive", (long long)G);
    return cursor < rows ? (rows - cursor) / G : 0;
}

void sampler_micro_rows(const int64_t *order, int64_t cursor, int micro_batch, int world, int rank, int micro,
                        int64_t *rows_out) {
    int64_t base = cursor + ((int64_t)micro * world + rank) * micro_batch;
    for (int j = 0; j < micro_batch; j++) rows_out[j] = order[base + j];
}

void sampler_eval_shard(int64_t rows, int world, int rank, int64_t *begin, int64_t *end) {
    check(world > 0 && rank >= 0 && rank < world, "sampler: rank %d outside world %d", rank, world);
    *begin = rows * rank / world;  // rows * world stays far below 2^63 for any dataset
    *end = rows * (rank + 1) / world;
}

double sampler_pad_fraction(const int64_t *rows, int64_t n, const int32_t *lengths, int micro_batch) {
    check(micro_batch > 0, "sampler: micro_batch %d must be positive", micro_batch);
    int64_t real = 0, padded = 0;
    for (int64_t lo = 0; lo < n; lo += micro_batch) {
        int64_t hi = lo + micro_batch < n ? lo + micro_batch : n;
        int32_t T = 0;
        for (int64_t i = lo; i < hi; i++) {
            real += lengths[rows[i]];
            if (lengths[rows[i]] > T) T = lengths[rows[i]];
        }
        padded += (hi - lo) * (int64_t)T;
    }
    return padded > 0 ? (double)(padded - real) / (double)padded : 0.0;
}

double sampler_epoch_pad_fraction(const int64_t *order, int64_t rows, const int32_t *lengths, int64_t G,
                                  int micro_batch, int world) {
    check(micro_batch > 0 && world > 0 && G % ((int64_t)micro_batch * world) == 0,
          "sampler: global batch %lld is not a multiple of micro_batch %d x world %d", (long long)G, micro_batch,
          world);
    return sampler_pad_fraction(order, sampler_steps_per_epoch(rows, G) * G, lengths, micro_batch);
}
