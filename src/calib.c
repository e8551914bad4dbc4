// calib.c: calibration statistics, scores, ranking and the selection rules.
#include "actlora/calib.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/rng.h"

void calib_stats_init(CalibStats *s, int num_layers) {
    s->num_layers = num_layers;
    s->sums = xcalloc((size_t)num_layers * CALIB_NSTAT, sizeof(double), "calibration statistics");
    s->tokens = 0.0;
}

void calib_stats_free(CalibStats *s) {
    free(s->sums);
    memset(s, 0, sizeof *s);
}

void calib_stats_zero(CalibStats *s) {
    memset(s->sums, 0, sizeof(double) * (size_t)s->num_layers * CALIB_NSTAT);
    s->tokens = 0.0;
}

int calib_probe_parse(const char *name) {
    if (strcmp(name, "block_output") == 0) return PROBE_BLOCK_OUTPUT;
    if (strcmp(name, "lora_input") == 0) return PROBE_LORA_INPUT;
    return -1;
}

int calib_method_parse(const char *name) {
    if (strcmp(name, "activation") == 0) return METHOD_ACTIVATION;
    if (strcmp(name, "gradient") == 0) return METHOD_GRADIENT;
    if (strcmp(name, "random") == 0) return METHOD_RANDOM;
    return -1;
}

int calib_rule_parse(const char *name) {
    if (strcmp(name, "top_k") == 0) return RULE_TOP_K;
    if (strcmp(name, "fraction") == 0) return RULE_FRACTION;
    if (strcmp(name, "cumulative") == 0) return RULE_CUMULATIVE;
    return -1;
}

void calib_scores(const CalibStats *s, CalibMethod method, CalibProbe probe, const int *modules, int n_modules,
                  uint64_t seed, double *scores) {
    int L = s->num_layers;
    double denom = s->tokens > 0 ? s->tokens : 1.0;
    for (int l = 0; l < L; l++) {
        const double *row = s->sums + (size_t)l * CALIB_NSTAT;
        switch (method) {
        case METHOD_RANDOM: scores[l] = (double)rng_uniform(rng_key(seed, 0x4A4D), (uint64_t)l); break;
        case METHOD_GRADIENT: scores[l] = row[0] / denom; break;
        case METHOD_ACTIVATION:
            if (probe == PROBE_BLOCK_OUTPUT || n_modules == 0) {
                scores[l] = row[0] / denom;
            } else {
                double acc = 0.0;
                for (int i = 0; i < n_modules; i++) acc += row[1 + modules[i]] / denom;
                scores[l] = acc / n_modules;
            }
            break;
        }
    }
}

void calib_rank(const double *scores, int L, int *order, int *rank_of) {
    for (int i = 0; i < L; i++) order[i] = i;
    // insertion sort: L is small and the tie-break (lower layer first) must be exact
    for (int i = 1; i < L; i++) {
        int x = order[i], j = i - 1;
        while (j >= 0 && (scores[order[j]] < scores[x] || (scores[order[j]] == scores[x] && order[j] > x))) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = x;
    }
    for (int i = 0; i < L; i++) rank_of[order[i]] = i;
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

int calib_select_max(int L, SelectRule rule, int k, double fraction) {
    int n = rule == RULE_TOP_K ? k : rule == RULE_FRACTION ? (int)lround(fraction * L) : L;
    return n < 1 ? 1 : n > L ? L : n;
}

int calib_select(const double *scores, int L, SelectRule rule, int k, double fraction, double threshold,
                 int *layers) {
    int *order = xmalloc(sizeof(int) * (size_t)L, "ranking"), *rank_of = xmalloc(sizeof(int) * (size_t)L, "ranks");
    calib_rank(scores, L, order, rank_of);
    int n = calib_select_max(L, rule, k, fraction);  // top_k and fraction: exactly this many
    if (rule == RULE_CUMULATIVE) {  // the fewest top-ranked layers whose share reaches threshold (at most L)
        double total = 0.0, acc = 0.0;
        for (int l = 0; l < L; l++) total += scores[l] > 0 ? scores[l] : 0.0;
        for (int i = 0; i < L; i++) {
            acc += scores[order[i]] > 0 ? scores[order[i]] : 0.0;
            if (total > 0 && acc / total >= threshold) {
                n = i + 1;
                break;
            }
        }
    }
    for (int i = 0; i < n; i++) layers[i] = order[i];
    qsort(layers, (size_t)n, sizeof(int), cmp_int);
    free(order);
    free(rank_of);
    return n;
}
