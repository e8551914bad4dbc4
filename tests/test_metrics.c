// test_metrics.c: src/metrics.c against scikit-learn / scipy references
// (tests/fixtures/metrics.json, written by tools/gen_metric_fixtures.py), plus the GLUE
// task-level API (metric names, main score) and task-name parsing.
// Usage: test_metrics <source_root> [build_dir]
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/common.h"
#include "actlora/metrics.h"
#include "test_util.h"

#define ATOL 1e-12

typedef struct {
    const char *name;
    int checked;       // reference values compared (finite ones)
    int nan_checked;   // NaN references compared
    double max_err;    // worst |c - ref| over the finite ones
} MetricStats;

// Compares got with the reference item ref (a number, or null meaning NaN).
static void check_value(TestCounts *tc, MetricStats *st, const char *case_name, double got, const cJSON *ref) {
    if (cJSON_IsNull(ref)) {
        st->nan_checked++;
        T_CHECK(tc, isnan(got), "%s %s: got %.17g, reference is NaN", case_name, st->name, got);
        return;
    }
    if (!cJSON_IsNumber(ref)) {
        T_CHECK(tc, 0, "%s %s: reference missing or not a number", case_name, st->name);
        return;
    }
    double want = ref->valuedouble;
    double err = fabs(got - want);
    if (!(err <= st->max_err)) st->max_err = err;   // NaN counts as worst
    st->checked++;
    T_CHECK(tc, err <= ATOL, "%s %s: got %.17g, sklearn/scipy %.17g (|diff| %.3g > %.0e)", case_name, st->name, got,
            want, err, ATOL);
}

// Reads a JSON int array of exactly n items into a new buffer; NULL on mismatch.
static int *read_ints(const cJSON *arr, int n) {
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != n) return NULL;
    int *v = xmalloc((size_t)(n > 0 ? n : 1) * sizeof(int), "test ints");
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        if (!cJSON_IsNumber(it) || (double)(int)it->valuedouble != it->valuedouble) { free(v); return NULL; }
        v[i++] = (int)it->valuedouble;
    }
    return v;
}

// Reads a JSON array of n float32 values written as doubles; NULL on mismatch or if a value
// is not exactly a float32 (the fixture promises exact float32 inputs).
static float *read_floats(const cJSON *arr, int n) {
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != n) return NULL;
    float *v = xmalloc((size_t)(n > 0 ? n : 1) * sizeof(float), "test floats");
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        if (!cJSON_IsNumber(it) || (double)(float)it->valuedouble != it->valuedouble) { free(v); return NULL; }
        v[i++] = (float)it->valuedouble;
    }
    return v;
}

static void test_fixture(TestCounts *tc, const char *root) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/metrics.json", root);
    Error err = {{0}};
    char *text = file_read_all(path, NULL, &err);
    T_CHECK(tc, text != NULL, "cannot read %s: %s (regenerate with python3 tools/gen_metric_fixtures.py)", path,
            err.msg);
    if (!text) return;
    cJSON *doc = cJSON_Parse(text);
    free(text);
    T_CHECK(tc, doc != NULL, "%s: not valid JSON", path);
    if (!doc) return;

    const cJSON *versions = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(doc, "meta"), "versions");
    const cJSON *skv = cJSON_GetObjectItemCaseSensitive(versions, "scikit-learn");
    const cJSON *scv = cJSON_GetObjectItemCaseSensitive(versions, "scipy");
    printf("fixture: scikit-learn %s, scipy %s\n", cJSON_IsString(skv) ? skv->valuestring : "?",
           cJSON_IsString(scv) ? scv->valuestring : "?");

    MetricStats acc = {"accuracy", 0, 0, 0.0}, f1 = {"f1", 0, 0, 0.0}, mcc = {"matthews", 0, 0, 0.0};
    MetricStats pear = {"pearson", 0, 0, 0.0}, spear = {"spearman", 0, 0, 0.0};
    int n_cls = 0, n_reg = 0;

    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(doc, "classification")) {
        const cJSON *jn = cJSON_GetObjectItemCaseSensitive(c, "name");
        const char *name = cJSON_IsString(jn) ? jn->valuestring : "?";
        const cJSON *nn = cJSON_GetObjectItemCaseSensitive(c, "n");
        int n = cJSON_IsNumber(nn) ? nn->valueint : -1;
        int *pred = read_ints(cJSON_GetObjectItemCaseSensitive(c, "pred"), n);
        int *gold = read_ints(cJSON_GetObjectItemCaseSensitive(c, "gold"), n);
        T_CHECK(tc, n >= 1 && pred && gold, "classification case %s: bad n / pred / gold", name);
        if (n >= 1 && pred && gold) {
            n_cls++;
            check_value(tc, &acc, name, metrics_accuracy(pred, gold, n), cJSON_GetObjectItemCaseSensitive(c, "accuracy"));
            const cJSON *rf1 = cJSON_GetObjectItemCaseSensitive(c, "f1");
            if (rf1) check_value(tc, &f1, name, metrics_f1(pred, gold, n), rf1);
            check_value(tc, &mcc, name, metrics_matthews(pred, gold, n), cJSON_GetObjectItemCaseSensitive(c, "matthews"));
        }
        free(pred);
        free(gold);
    }
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(doc, "regression")) {
        const cJSON *jn = cJSON_GetObjectItemCaseSensitive(c, "name");
        const char *name = cJSON_IsString(jn) ? jn->valuestring : "?";
        const cJSON *nn = cJSON_GetObjectItemCaseSensitive(c, "n");
        int n = cJSON_IsNumber(nn) ? nn->valueint : -1;
        float *x = read_floats(cJSON_GetObjectItemCaseSensitive(c, "x"), n);
        float *y = read_floats(cJSON_GetObjectItemCaseSensitive(c, "y"), n);
        T_CHECK(tc, n >= 2 && x && y, "regression case %s: bad n / x / y (values must be exact float32)", name);
        if (n >= 2 && x && y) {
            n_reg++;
            check_value(tc, &pear, name, metrics_pearson(x, y, n), cJSON_GetObjectItemCaseSensitive(c, "pearson"));
            check_value(tc, &spear, name, metrics_spearman(x, y, n), cJSON_GetObjectItemCaseSensitive(c, "spearman"));
        }
        free(x);
        free(y);
    }
    cJSON_Delete(doc);

    // The fixture must actually exercise everything (an empty or truncated file must fail).
    T_CHECK(tc, n_cls >= 60, "only %d classification cases in the fixture (expected >= 60)", n_cls);
    T_CHECK(tc, n_reg >= 15, "only %d regression cases in the fixture (expected >= 15)", n_reg);
    T_CHECK(tc, f1.checked >= 60, "only %d F1 references (expected >= 60)", f1.checked);
    T_CHECK(tc, pear.nan_checked >= 2 && spear.nan_checked >= 2, "NaN (constant input) cases missing: %d / %d",
            pear.nan_checked, spear.nan_checked);
    MetricStats *all[5] = {&acc, &f1, &mcc, &pear, &spear};
    for (int k = 0; k < 5; k++)
        printf("  %-9s %3d cases (+%d NaN), max |C - reference| = %.3g\n", all[k]->name, all[k]->checked,
               all[k]->nan_checked, all[k]->max_err);
    printf("fixture: %d classification + %d regression cases, tolerance %.0e absolute\n", n_cls, n_reg, ATOL);
}

// Edge cases and invariances that the fixture cannot express.
static void test_edges(TestCounts *tc) {
    int p1[1] = {1}, g1[1] = {1};
    T_CHECK(tc, metrics_accuracy(p1, g1, 0) == 0.0, "accuracy of n=0 should be 0.0");
    T_CHECK(tc, metrics_f1(p1, g1, 0) == 0.0, "f1 of n=0 should be 0.0");
    T_CHECK(tc, metrics_matthews(p1, g1, 0) == 0.0, "matthews of n=0 should be 0.0");
    float x1[1] = {1.0f}, y1[1] = {2.0f};
    T_CHECK(tc, isnan(metrics_pearson(x1, y1, 1)), "pearson of n=1 should be NaN");
    T_CHECK(tc, isnan(metrics_spearman(x1, y1, 1)), "spearman of n=1 should be NaN");
    float xn[4] = {1.0f, NAN, 3.0f, 4.0f}, yn[4] = {1.0f, 2.0f, 4.0f, 3.0f};
    T_CHECK(tc, isnan(metrics_pearson(xn, yn, 4)), "pearson with a NaN input should be NaN");
    T_CHECK(tc, isnan(metrics_spearman(yn, xn, 4)), "spearman with a NaN input should be NaN");

    // Average ranks: x ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4] -> 4.5 / sqrt(4.5 * 5).
    float xt[4] = {0.5f, 2.0f, 2.0f, 7.0f}, yt[4] = {-1.0f, 0.0f, 1.0f, 2.0f};
    double want = 4.5 / sqrt(22.5);
    double got = metrics_spearman(xt, yt, 4);
    T_CHECK(tc, fabs(got - want) <= 1e-15, "spearman with a tie: %.17g vs %.17g", got, want);
    // Tied values listed in the other order give the same ranks.
    float xt2[4] = {7.0f, 2.0f, 2.0f, 0.5f}, yt2[4] = {2.0f, 1.0f, 0.0f, -1.0f};
    double got2 = metrics_spearman(xt2, yt2, 4);
    T_CHECK(tc, fabs(got2 - want) <= 1e-15, "spearman with a tie, reversed: %.17g vs %.17g", got2, want);

    // MCC depends only on the confusion matrix: relabelling classes gives the same value, bitwise.
    enum { N = 12 };
    int pred[N] = {0, 1, 2, 2, 1, 0, 0, 2, 1, 1, 0, 2}, gold[N] = {0, 1, 1, 2, 1, 0, 2, 2, 0, 1, 0, 1};
    int map[3] = {5, -3, 100}, pr[N], gr[N];
    for (int i = 0; i < N; i++) { pr[i] = map[pred[i]]; gr[i] = map[gold[i]]; }
    double m0 = metrics_matthews(pred, gold, N), m1 = metrics_matthews(pr, gr, N);
    T_CHECK(tc, m0 == m1, "matthews changes under relabelling: %.17g vs %.17g", m0, m1);
    T_CHECK(tc, m0 > 0.0 && m0 < 1.0, "matthews of a partly right 3-class prediction: %.17g", m0);
    T_CHECK(tc, metrics_matthews(gold, gold, N) == 1.0, "matthews of a perfect prediction should be 1");
}

static int has_metric(const GlueScore *s, int k, const char *name) {
    return k < s->n && strcmp(s->name[k], name) == 0;
}

static void test_glue(TestCounts *tc) {
    enum { N = 10 };
    int pred[N] = {1, 0, 1, 1, 0, 0, 1, 0, 1, 1}, gold[N] = {1, 0, 0, 1, 0, 1, 1, 0, 1, 0};
    int pred3[N] = {0, 1, 2, 2, 1, 0, 0, 2, 1, 1}, gold3[N] = {0, 1, 1, 2, 1, 0, 2, 2, 0, 1};
    float pf[N] = {0.1f, 2.3f, 4.0f, 3.2f, 1.1f, 0.4f, 4.8f, 2.2f, 3.3f, 1.9f};
    float gf[N] = {0.0f, 2.5f, 3.8f, 3.8f, 1.0f, 1.2f, 5.0f, 2.0f, 2.6f, 2.4f};
    double acc = metrics_accuracy(pred, gold, N), f1 = metrics_f1(pred, gold, N);
    double acc3 = metrics_accuracy(pred3, gold3, N);
    double mcc = metrics_matthews(pred, gold, N);
    double pr = metrics_pearson(pf, gf, N), sp = metrics_spearman(pf, gf, N);
    // hand-checked values for these inputs: tp 4, fp 2, fn 1 -> acc 0.7, f1 8/11
    T_CHECK(tc, fabs(acc - 0.7) <= 1e-15 && fabs(f1 - 8.0 / 11.0) <= 1e-15, "acc %.17g f1 %.17g", acc, f1);
    T_CHECK(tc, isfinite(pr) && isfinite(sp) && pr != sp, "pearson %.17g spearman %.17g", pr, sp);

    for (int t = 0; t < GLUE_NUM_TASKS; t++) {
        GlueScore s;
        memset(&s, 0x5a, sizeof s);   // garbage in: metrics_glue must fill everything it reports
        const char *tn = metrics_task_name((GlueTask)t);
        int three = t == GLUE_MNLI;   // 3-class labels where the real task has them
        metrics_glue((GlueTask)t, three ? pred3 : pred, three ? gold3 : gold, pf, gf, N, &s);
        switch (t) {
        case GLUE_COLA:
            T_CHECK(tc, s.n == 1 && has_metric(&s, 0, "matthews"), "%s: want [matthews], got n=%d", tn, s.n);
            T_CHECK(tc, s.value[0] == mcc && s.main == mcc, "%s: value %.17g main %.17g want %.17g", tn, s.value[0],
                    s.main, mcc);
            break;
        case GLUE_MRPC:
        case GLUE_QQP:
            T_CHECK(tc, s.n == 2 && has_metric(&s, 0, "accuracy") && has_metric(&s, 1, "f1"),
                    "%s: want [accuracy, f1], got n=%d", tn, s.n);
            T_CHECK(tc, s.value[0] == acc && s.value[1] == f1, "%s: values %.17g %.17g", tn, s.value[0], s.value[1]);
            T_CHECK(tc, fabs(s.main - 0.5 * (acc + f1)) <= 1e-15, "%s: main %.17g want mean(acc, f1) %.17g", tn,
                    s.main, 0.5 * (acc + f1));
            break;
        case GLUE_STSB:
            T_CHECK(tc, s.n == 2 && has_metric(&s, 0, "pearson") && has_metric(&s, 1, "spearman"),
                    "%s: want [pearson, spearman], got n=%d", tn, s.n);
            T_CHECK(tc, s.value[0] == pr && s.value[1] == sp, "%s: values %.17g %.17g", tn, s.value[0], s.value[1]);
            T_CHECK(tc, fabs(s.main - 0.5 * (pr + sp)) <= 1e-15, "%s: main %.17g want mean %.17g", tn, s.main,
                    0.5 * (pr + sp));
            break;
        default: {   // SST-2, MNLI, QNLI, RTE, WNLI
            double want = three ? acc3 : acc;
            T_CHECK(tc, s.n == 1 && has_metric(&s, 0, "accuracy"), "%s: want [accuracy], got n=%d", tn, s.n);
            T_CHECK(tc, s.value[0] == want && s.main == want, "%s: value %.17g main %.17g want %.17g", tn, s.value[0],
                    s.main, want);
        }
        }
        for (int k = s.n; k < 4; k++)
            T_CHECK(tc, s.name[k][0] == '\0' && s.value[k] == 0.0, "%s: unused slot %d not cleared", tn, k);
    }
    // STS-B needs no int arrays, classification tasks no float arrays.
    GlueScore s;
    metrics_glue(GLUE_STSB, NULL, NULL, pf, gf, N, &s);
    T_CHECK(tc, s.n == 2 && s.value[0] == pr, "STS-B with NULL int arrays: n=%d", s.n);
    metrics_glue(GLUE_RTE, pred, gold, NULL, NULL, N, &s);
    T_CHECK(tc, s.n == 1 && s.main == acc, "RTE with NULL float arrays: n=%d main %.17g", s.n, s.main);
}

static void test_parse(TestCounts *tc) {
    static const struct { const char *s; int t; } cases[] = {
        {"CoLA", GLUE_COLA},  {"cola", GLUE_COLA},   {"COLA", GLUE_COLA},  {"SST-2", GLUE_SST2}, {"sst2", GLUE_SST2},
        {"sst-2", GLUE_SST2}, {"SST2", GLUE_SST2},   {"sst_2", GLUE_SST2}, {"MRPC", GLUE_MRPC},  {"mrpc", GLUE_MRPC},
        {"STS-B", GLUE_STSB}, {"stsb", GLUE_STSB},   {"sts-b", GLUE_STSB}, {"STSB", GLUE_STSB},  {"QQP", GLUE_QQP},
        {"qqp", GLUE_QQP},    {"MNLI", GLUE_MNLI},   {"mnli", GLUE_MNLI},  {"QNLI", GLUE_QNLI},  {"qnli", GLUE_QNLI},
        {"RTE", GLUE_RTE},    {"rte", GLUE_RTE},     {"WNLI", GLUE_WNLI},  {"wnli", GLUE_WNLI},  {"Rte", GLUE_RTE},
        {"imdb", -1},         {"", -1},              {"-", -1},            {"colaa", -1},        {"mnli-mm", -1},
        {"sst", -1},          {"sst-2 ", -1},        {"a-very-long-task-name-that-is-not-glue", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = metrics_task_parse(cases[i].s);
        T_CHECK(tc, got == cases[i].t, "metrics_task_parse(\"%s\") = %d, want %d", cases[i].s, got, cases[i].t);
    }
    T_CHECK(tc, metrics_task_parse(NULL) == -1, "metrics_task_parse(NULL) should be -1");
    for (int t = 0; t < GLUE_NUM_TASKS; t++) {
        const char *name = metrics_task_name((GlueTask)t);
        T_CHECK(tc, metrics_task_parse(name) == t, "round trip of task %d (\"%s\")", t, name);
    }
    T_CHECK(tc, strcmp(metrics_task_name(GLUE_STSB), "STS-B") == 0 && strcmp(metrics_task_name(GLUE_COLA), "CoLA") == 0,
            "canonical names");
    T_CHECK(tc, strcmp(metrics_task_name((GlueTask)GLUE_NUM_TASKS), "?") == 0, "name of an invalid task");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s <source_root> [build_dir]\n", argv[0]);
        return 2;
    }
    TestCounts tc = {0, 0};
    test_fixture(&tc, argv[1]);
    test_edges(&tc);
    test_glue(&tc);
    test_parse(&tc);
    return t_finish(&tc, "test_metrics");
}
