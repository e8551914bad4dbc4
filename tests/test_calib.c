// test_calib.c: scores, ranking and the selection rules on small hand-checkable cases.
#include <string.h>

#include "actlora/calib.h"
#include "test_util.h"

static int same(const int *a, const int *b, int n) { return memcmp(a, b, sizeof(int) * (size_t)n) == 0; }

int main(int argc, char **argv) {
    (void)argc, (void)argv;
    TestCounts tc = {0};
    // ranking: descending score, ties by lower layer index
    double s[5] = {1.0, 3.0, 3.0, 2.0, 0.5};
    int order[5], rank_of[5];
    calib_rank(s, 5, order, rank_of);
    int want_order[5] = {1, 2, 3, 0, 4}, want_rank[5] = {3, 0, 1, 2, 4};
    T_CHECK(&tc, same(order, want_order, 5), "order %d %d %d %d %d", order[0], order[1], order[2], order[3], order[4]);
    T_CHECK(&tc, same(rank_of, want_rank, 5), "rank_of wrong");

    int layers[5], n;
    n = calib_select(s, 5, RULE_TOP_K, 2, 0, 0, layers);
    T_CHECK(&tc, n == 2 && layers[0] == 1 && layers[1] == 2, "top_k 2 -> %d layers", n);
    n = calib_select(s, 5, RULE_TOP_K, 9, 0, 0, layers);
    T_CHECK(&tc, n == 5, "top_k larger than L keeps all layers (got %d)", n);
    n = calib_select(s, 5, RULE_FRACTION, 0, 0.6, 0, layers);  // round(3.0) = 3
    T_CHECK(&tc, n == 3 && layers[0] == 1 && layers[1] == 2 && layers[2] == 3, "fraction 0.6 -> %d", n);
    n = calib_select(s, 5, RULE_FRACTION, 0, 0.01, 0, layers);
    T_CHECK(&tc, n == 1 && layers[0] == 1, "fraction keeps at least one layer (got %d)", n);
    // cumulative: total 9.5; top-1 3/9.5 = .32, top-2 6/9.5 = .63, top-3 8/9.5 = .84
    n = calib_select(s, 5, RULE_CUMULATIVE, 0, 0, 0.5, layers);
    T_CHECK(&tc, n == 2 && layers[0] == 1 && layers[1] == 2, "cumulative 0.5 -> %d", n);
    n = calib_select(s, 5, RULE_CUMULATIVE, 0, 0, 0.84, layers);
    T_CHECK(&tc, n == 3, "cumulative 0.84 -> %d (top-3 reach 0.842)", n);
    n = calib_select(s, 5, RULE_CUMULATIVE, 0, 0, 0.85, layers);
    T_CHECK(&tc, n == 4, "cumulative 0.85 -> %d (top-4 reach 0.947)", n);
    n = calib_select(s, 5, RULE_CUMULATIVE, 0, 0, 1.0, layers);
    T_CHECK(&tc, n == 5, "cumulative 1.0 keeps every layer (got %d)", n);
    // calib_select_max: top_k and fraction choose exactly that many, cumulative never more
    const struct { SelectRule rule; int k; double f, t; } mx[] = {
        {RULE_TOP_K, 2, 0, 0}, {RULE_TOP_K, 9, 0, 0}, {RULE_TOP_K, 0, 0, 0}, {RULE_FRACTION, 0, 0.6, 0},
        {RULE_FRACTION, 0, 0.01, 0}, {RULE_FRACTION, 0, 1.0, 0}, {RULE_CUMULATIVE, 0, 0, 0.5}, {RULE_CUMULATIVE, 0, 0, 1.0}};
    for (int i = 0; i < 8; i++) {
        int m = calib_select_max(5, mx[i].rule, mx[i].k, mx[i].f), got = calib_select(s, 5, mx[i].rule, mx[i].k, mx[i].f, mx[i].t, layers);
        T_CHECK(&tc, mx[i].rule == RULE_CUMULATIVE ? m == 5 && got <= m : got == m,
                "calib_select_max case %d: %d, calib_select chose %d", i, m, got);
    }
    n = calib_select(s, 5, RULE_CUMULATIVE, 0, 0, 1.0, layers);
    int sorted = 1;
    for (int i = 1; i < n; i++) sorted &= layers[i] > layers[i - 1];
    T_CHECK(&tc, sorted, "selection is returned sorted ascending");

    // scores from statistics
    CalibStats st;
    calib_stats_init(&st, 3);
    for (int l = 0; l < 3; l++)
        for (int j = 0; j < CALIB_NSTAT; j++) st.sums[l * CALIB_NSTAT + j] = 10.0 * (l + 1) + j;
    st.tokens = 10.0;
    double sc[3];
    calib_scores(&st, METHOD_ACTIVATION, PROBE_BLOCK_OUTPUT, NULL, 0, 0, sc);
    T_CHECK(&tc, sc[0] == 1.0 && sc[2] == 3.0, "block_output score = sum/tokens (got %g %g)", sc[0], sc[2]);
    int mods[2] = {LORA_Q, LORA_DOWN};  // columns 1 and 7
    calib_scores(&st, METHOD_ACTIVATION, PROBE_LORA_INPUT, mods, 2, 0, sc);
    T_CHECK(&tc, sc[1] == ((20.0 + 1) / 10 + (20.0 + 7) / 10) / 2, "lora_input averages the target modules (%g)", sc[1]);
    double r1[3], r2[3], r3[3];
    calib_scores(&st, METHOD_RANDOM, PROBE_BLOCK_OUTPUT, NULL, 0, 7, r1);
    calib_scores(&st, METHOD_RANDOM, PROBE_BLOCK_OUTPUT, NULL, 0, 7, r2);
    calib_scores(&st, METHOD_RANDOM, PROBE_BLOCK_OUTPUT, NULL, 0, 8, r3);
    T_CHECK(&tc, memcmp(r1, r2, sizeof r1) == 0, "random scores are a function of the seed");
    T_CHECK(&tc, memcmp(r1, r3, sizeof r1) != 0, "another seed gives other random scores");
    T_CHECK(&tc, r1[0] >= 0 && r1[0] < 1 && r1[0] != r1[1], "random scores are distinct uniforms");
    calib_stats_free(&st);

    T_CHECK(&tc, calib_rule_parse("cumulative") == RULE_CUMULATIVE && calib_rule_parse("x") == -1, "rule names");
    T_CHECK(&tc, calib_method_parse("gradient") == METHOD_GRADIENT && calib_probe_parse("lora_input") == PROBE_LORA_INPUT,
            "method / probe names");
    return t_finish(&tc, "test_calib");
}
