// test_sampler.c: the epoch order is a deterministic permutation with length-sorted windows;
// ranks and micro-steps partition each global batch; a run resized from 2 to 3 ranks mid-epoch
// sees every sample at most once and exactly the prefix of the order it consumed; evaluation
// shards partition the split; grouping reduces padding.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/rng.h"
#include "actlora/sampler.h"
#include "test_util.h"

static int32_t *lengths_make(int64_t rows, uint64_t seed, int skewed) {
    int32_t *len = malloc((size_t)rows * sizeof(int32_t));
    for (int64_t i = 0; i < rows; i++) {
        uint64_t x = rng_u64(seed, (uint64_t)i);
        // skewed: mostly short rows, a tail of long ones (like GLUE sentence lengths)
        len[i] = skewed ? (int32_t)(x % 100 < 85 ? 4 + x % 20 : 40 + x % 200) : (int32_t)(1 + x % 64);
    }
    return len;
}

static int is_permutation(const int64_t *order, int64_t rows) {
    char *seen = calloc((size_t)rows + 1, 1);
    int ok = 1;
    for (int64_t i = 0; i < rows && ok; i++) {
        ok = order[i] >= 0 && order[i] < rows && !seen[order[i]];
        if (ok) seen[order[i]] = 1;
    }
    free(seen);
    return ok;
}

static void test_permutation(TestCounts *tc) {
    const int64_t sizes[] = {1, 2, 3, 7, 64, 1000, 4099};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        int64_t rows = sizes[k];
        int32_t *len = lengths_make(rows, 5, 0);
        int64_t *a = malloc((size_t)rows * sizeof(int64_t)), *b = malloc((size_t)rows * sizeof(int64_t));
        const int windows[] = {0, 1, 8, 100, 1 << 20};
        for (size_t w = 0; w < sizeof windows / sizeof *windows; w++) {
            sampler_epoch_order(a, rows, len, 1234, 0, windows[w]);
            T_CHECK(tc, is_permutation(a, rows), "rows %lld window %d: not a permutation", (long long)rows,
                    windows[w]);
            sampler_epoch_order(b, rows, len, 1234, 0, windows[w]);
            T_CHECK(tc, memcmp(a, b, (size_t)rows * sizeof(int64_t)) == 0, "rows %lld window %d: not deterministic",
                    (long long)rows, windows[w]);
            if (rows >= 64) {
                sampler_epoch_order(b, rows, len, 1234, 1, windows[w]);
                T_CHECK(tc, memcmp(a, b, (size_t)rows * sizeof(int64_t)) != 0, "rows %lld: epoch 1 == epoch 0",
                        (long long)rows);
                sampler_epoch_order(b, rows, len, 1235, 0, windows[w]);
                T_CHECK(tc, memcmp(a, b, (size_t)rows * sizeof(int64_t)) != 0, "rows %lld: seed change ignored",
                        (long long)rows);
            }
        }
        free(a);
        free(b);
        free(len);
    }
}

// Windows sorted by length descending, ties in permuted order; the window's multiset is the
// ungrouped permutation's.
static void test_grouping(TestCounts *tc) {
    int64_t rows = 1003;
    int32_t *len = lengths_make(rows, 9, 0);
    for (int64_t i = 0; i < rows; i++) len[i] = 1 + len[i] % 6;  // many ties
    int64_t *perm = malloc((size_t)rows * sizeof(int64_t)), *grp = malloc((size_t)rows * sizeof(int64_t));
    int64_t *where = malloc((size_t)rows * sizeof(int64_t));  // position of each row in the plain permutation
    sampler_epoch_order(perm, rows, len, 77, 3, 1);
    sampler_epoch_order(grp, rows, NULL, 77, 3, 50);
    T_CHECK(tc, memcmp(perm, grp, (size_t)rows * sizeof(int64_t)) == 0, "lengths NULL or window 1: plain permutation");
    for (int64_t i = 0; i < rows; i++) where[perm[i]] = i;
    const int windows[] = {2, 50, 64, 1003, 5000};
    for (size_t w = 0; w < sizeof windows / sizeof *windows; w++) {
        int W = windows[w];
        sampler_epoch_order(grp, rows, len, 77, 3, W);
        int sorted = 1, same_set = 1;
        for (int64_t lo = 0; lo < rows; lo += W) {
            int64_t hi = lo + W < rows ? lo + W : rows;
            for (int64_t i = lo; i < hi; i++) {
                same_set &= where[grp[i]] >= lo && where[grp[i]] < hi;
                if (i + 1 < hi) {
                    int32_t l0 = len[grp[i]], l1 = len[grp[i + 1]];
                    sorted &= l0 > l1 || (l0 == l1 && where[grp[i]] < where[grp[i + 1]]);
                }
            }
        }
        T_CHECK(tc, sorted, "window %d: not sorted by length desc with stable ties", W);
        T_CHECK(tc, same_set, "window %d: rows moved across windows", W);
    }
    // pinned value: the order is a pure integer function of its arguments, the same on every
    // platform; a change to the rng or the shuffle (which would break resuming old runs) shows here
    sampler_epoch_order(perm, 10, NULL, 42, 0, 0);
    const int64_t pinned[10] = {1, 3, 5, 0, 6, 8, 7, 9, 2, 4};
    T_CHECK(tc, memcmp(perm, pinned, sizeof pinned) == 0, "order(seed 42, epoch 0, 10 rows) changed: %lld %lld %lld ...",
            (long long)perm[0], (long long)perm[1], (long long)perm[2]);
    // uniformity: over 6000 epochs each of the 6 permutations of 3 rows appears ~1000 times
    int count[6] = {0};
    for (int64_t e = 0; e < 6000; e++) {
        int64_t p3[3];
        sampler_epoch_order(p3, 3, NULL, 7, e, 0);
        count[p3[0] * 2 + (p3[1] > p3[2])]++;  // (first, order of the other two) identifies the permutation
    }
    double chi2 = 0;
    for (int i = 0; i < 6; i++) chi2 += (count[i] - 1000.0) * (count[i] - 1000.0) / 1000.0;
    T_CHECK(tc, chi2 < 20.5, "permutations of 3 not uniform: chi2 %.1f (5 dof, p = 0.001 at 20.5)", chi2);
    free(perm);
    free(grp);
    free(where);
    free(len);
}

// The union over ranks and micro-steps of a global batch is order[cursor .. cursor + G), no overlap.
static void test_global_batch(TestCounts *tc) {
    int64_t rows = 997;
    int64_t *order = malloc((size_t)rows * sizeof(int64_t));
    int32_t *len = lengths_make(rows, 3, 0);
    sampler_epoch_order(order, rows, len, 5, 0, 48);
    for (int world = 1; world <= 3; world++) {
        int m = 4, accum = 2;
        int64_t G = (int64_t)m * accum * world, steps = sampler_steps_per_epoch(rows, G);
        T_CHECK(tc, steps == rows / G, "steps per epoch");
        int ok = 1;
        for (int64_t step = 0; step < steps && ok; step++) {
            int64_t cursor = step * G, rws[4];
            int *hit = calloc((size_t)G, sizeof(int));
            for (int r = 0; r < world; r++)
                for (int u = 0; u < accum; u++) {
                    sampler_micro_rows(order, cursor, m, world, r, u, rws);
                    for (int j = 0; j < m; j++) ok &= rws[j] == order[cursor + ((int64_t)u * world + r) * m + j];
                    for (int j = 0; j < m; j++) {
                        int64_t k = -1;  // position of the row in the global batch
                        for (int64_t q = 0; q < G; q++)
                            if (order[cursor + q] == rws[j]) k = q;
                        if (k < 0 || hit[k]++) ok = 0;
                    }
                }
            for (int64_t q = 0; q < G; q++) ok &= hit[q] == 1;
            free(hit);
        }
        T_CHECK(tc, ok, "world %d: ranks x micro-steps do not partition the global batches", world);
        // grouping windows of G: at each micro-step every rank's rows are at least as long as any
        // rank's rows at the next micro-step (ranks stay in step)
        int64_t *grouped = malloc((size_t)rows * sizeof(int64_t));
        sampler_epoch_order(grouped, rows, len, 5, 0, (int)G);
        int in_step = 1;
        for (int64_t step = 0; step < steps; step++)
            for (int u = 0; u + 1 < accum; u++) {
                int32_t min_u = INT32_MAX, max_next = 0;
                for (int r = 0; r < world; r++) {
                    int64_t a[4], b[4];
                    sampler_micro_rows(grouped, step * G, m, world, r, u, a);
                    sampler_micro_rows(grouped, step * G, m, world, r, u + 1, b);
                    for (int j = 0; j < m; j++) {
                        min_u = len[a[j]] < min_u ? len[a[j]] : min_u;
                        max_next = len[b[j]] > max_next ? len[b[j]] : max_next;
                    }
                }
                in_step &= min_u >= max_next;
            }
        T_CHECK(tc, in_step, "world %d: micro-step lengths not ordered across ranks", world);
        free(grouped);
    }
    free(order);
    free(len);
}

// Elastic resume: k steps on 2 ranks, then from the same cursor on 3 ranks to the end of the epoch.
static void test_elastic(TestCounts *tc) {
    int64_t rows = 1000;
    int m = 3, accum = 2;
    int64_t *order = malloc((size_t)rows * sizeof(int64_t)), rws[3];
    int32_t *len = lengths_make(rows, 13, 1);
    int *seen = calloc((size_t)rows, sizeof(int));
    sampler_epoch_order(order, rows, len, 99, 2, 36);
    int64_t cursor = 0;
    const int worlds[2] = {2, 3};
    const int64_t k_steps[2] = {7, -1};  // -1: until the epoch ends
    for (int phase = 0; phase < 2; phase++) {
        int world = worlds[phase];
        int64_t G = (int64_t)m * accum * world;
        int64_t steps = k_steps[phase] >= 0 ? k_steps[phase] : sampler_steps_left(rows, cursor, G);
        T_CHECK(tc, steps <= sampler_steps_left(rows, cursor, G), "phase %d: more steps than left", phase);
        for (int64_t s = 0; s < steps; s++, cursor += G)
            for (int r = 0; r < world; r++)  // every rank computes its rows from the shared order
                for (int u = 0; u < accum; u++) {
                    sampler_micro_rows(order, cursor, m, world, r, u, rws);
                    for (int j = 0; j < m; j++) seen[rws[j]]++;
                }
    }
    T_CHECK(tc, cursor == 7 * 12 + (rows - 7 * 12) / 18 * 18, "cursor_end %lld", (long long)cursor);
    T_CHECK(tc, rows - cursor < 18 && sampler_steps_left(rows, cursor, 18) == 0, "epoch not exhausted");
    int ok = 1;
    for (int64_t i = 0; i < rows; i++) ok &= seen[order[i]] == (i < cursor);  // prefix once, rest never
    T_CHECK(tc, ok, "elastic 2 -> 3 ranks: rows seen != order[0 .. %lld) exactly once", (long long)cursor);
    free(seen);
    free(order);
    free(len);
}

static void test_eval_shards(TestCounts *tc) {
    const int64_t sizes[] = {0, 1, 4, 5, 872, 1001};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++)
        for (int world = 1; world <= 5; world++) {
            int64_t rows = sizes[k], next = 0, lo = rows, hi = 0;
            int ok = 1;
            for (int r = 0; r < world; r++) {
                int64_t b, e;
                sampler_eval_shard(rows, world, r, &b, &e);
                ok &= b == next && e >= b;
                next = e;
                lo = e - b < lo ? e - b : lo;
                hi = e - b > hi ? e - b : hi;
            }
            T_CHECK(tc, ok && next == rows && hi - lo <= 1, "eval shards rows %lld world %d", (long long)rows, world);
        }
}

static void test_pad_fraction(TestCounts *tc) {
    int64_t rows = 4096;
    int m = 8, accum = 2, world = 2;
    int64_t G = (int64_t)m * accum * world;
    int32_t *len = lengths_make(rows, 21, 1);
    int64_t *order = malloc((size_t)rows * sizeof(int64_t));
    sampler_epoch_order(order, rows, len, 1, 0, 0);
    double plain = sampler_epoch_pad_fraction(order, rows, len, G, m, world);
    sampler_epoch_order(order, rows, len, 1, 0, (int)G * 8);
    double grouped = sampler_epoch_pad_fraction(order, rows, len, G, m, world);
    printf("  pad fraction (skewed lengths, micro-batch %d): %.3f ungrouped, %.3f grouped over windows of %lld\n", m,
           plain, grouped, (long long)G * 8);
    T_CHECK(tc, plain >= 0 && plain < 1 && grouped >= 0 && grouped < 1, "pad fraction in [0, 1)");
    T_CHECK(tc, grouped < 0.5 * plain, "grouping should cut padding: %.3f vs %.3f", grouped, plain);
    int32_t same[16];
    int64_t idx[16];
    for (int i = 0; i < 16; i++) same[i] = 7, idx[i] = i;
    T_CHECK(tc, sampler_pad_fraction(idx, 16, same, 4) == 0.0, "equal lengths: no padding");
    int32_t two[2] = {1, 3};
    int64_t i2[2] = {0, 1};
    T_CHECK(tc, sampler_pad_fraction(i2, 2, two, 2) == 2.0 / 6.0, "pad fraction of {1, 3} = 2/6");
    T_CHECK(tc, sampler_pad_fraction(i2, 0, two, 2) == 0.0, "empty set");
    free(order);
    free(len);
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    TestCounts tc = {0, 0};
    test_permutation(&tc);
    test_grouping(&tc);
    test_global_batch(&tc);
    test_elastic(&tc);
    test_eval_shards(&tc);
    test_pad_fraction(&tc);
    return t_finish(&tc, "test_sampler");
}
