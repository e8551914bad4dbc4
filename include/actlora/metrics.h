// metrics.h: GLUE evaluation metrics, computed in double precision and bit-for-bit
// deterministic (no threads, no dependence on the qsort implementation).
//
// The scalar functions follow scikit-learn / scipy (tests/test_metrics.c compares them with
// tests/fixtures/metrics.json, written by tools/gen_metric_fixtures.py):
//   metrics_accuracy   sklearn.metrics.accuracy_score
//   metrics_f1         sklearn.metrics.f1_score (average="binary", pos_label=1)
//   metrics_matthews   sklearn.metrics.matthews_corrcoef (binary and multi-class)
//   metrics_pearson    scipy.stats.pearsonr(x, y).statistic
//   metrics_spearman   scipy.stats.spearmanr(x, y).statistic (average ranks for ties)
// Where sklearn raises on empty input, the classification metrics return 0.0 for n <= 0;
// the correlations return NaN for n < 2 (scipy: pearsonr raises, spearmanr gives nan).
#ifndef ACTLORA_METRICS_H
#define ACTLORA_METRICS_H

// Fraction of i with pred[i] == gold[i]. Labels may be any ints.
double metrics_accuracy(const int *pred, const int *gold, int n);

// F1 of the positive class 1: 2*tp / (2*tp + fp + fn); every label other than 1 counts as
// negative. With no true and no predicted positives the score is undefined; sklearn's
// default zero_division="warn" then returns 0.0 (with a warning), and so does this.
double metrics_f1(const int *pred, const int *gold, int n);

// Matthews correlation coefficient, K-class form (Gorodkin 2004) as sklearn computes it from
// the confusion matrix: (c*s - sum_k t_k p_k) / sqrt((s^2 - sum_k p_k^2)(s^2 - sum_k t_k^2)).
// Labels may be any ints (no range assumption). 0.0 when the denominator is 0, as sklearn
// (e.g. all predictions, or all gold labels, in one class).
double metrics_matthews(const int *pred, const int *gold, int n);

// Pearson correlation, two-pass (means, then centred sums) in double, clipped to [-1, 1] as
// scipy does. NaN when x or y is constant (all elements equal: variance 0, where scipy
// returns nan with a ConstantInputWarning), when n < 2, or when an input holds a NaN.
double metrics_pearson(const float *x, const float *y, int n);

// Spearman rank correlation: the Pearson correlation of the ranks, ties given the average
// of their ranks (scipy.stats.rankdata method="average"). Ranks are made with qsort on
// (value, index), so the result does not depend on the qsort implementation. NaN when x or y
// is constant, when n < 2, or when an input holds a NaN (scipy's nan_policy="propagate").
double metrics_spearman(const float *x, const float *y, int n);

// ---------------------------------------------------------------- GLUE tasks
typedef enum { GLUE_COLA, GLUE_SST2, GLUE_MRPC, GLUE_STSB, GLUE_QQP, GLUE_MNLI, GLUE_QNLI, GLUE_RTE, GLUE_WNLI } GlueTask;
#define GLUE_NUM_TASKS 9

// Task from its name, case-insensitive, '-' and '_' ignored: "CoLA", "cola", "SST-2", "sst2",
// "STS-B", "stsb", "MRPC", "QQP", "MNLI", "QNLI", "RTE", "WNLI". -1 for an unknown name or NULL.
int metrics_task_parse(const char *name);

// Canonical GLUE spelling ("CoLA", "SST-2", "STS-B", ...); "?" for an invalid value.
const char *metrics_task_name(GlueTask t);

typedef struct {
    int n;               // number of metrics filled
    char name[4][32];    // metric names, e.g. "accuracy", "f1"
    double value[4];
    double main;         // the single number used for model selection
} GlueScore;

// Official GLUE metrics of task t over n examples:
//   CoLA                     "matthews"              main = matthews
//   SST-2, QNLI, RTE, WNLI   "accuracy"              main = accuracy
//   MRPC, QQP                "accuracy", "f1"        main = their mean (GLUE leaderboard)
//   STS-B                    "pearson", "spearman"   main = their mean
//   MNLI                     "accuracy"              (matched / mismatched: call once per split)
// Classification tasks read pred_i / gold_i (pred_f / gold_f may be NULL); STS-B reads
// pred_f / gold_f (pred_i / gold_i may be NULL). Dies on an invalid task, n <= 0 or a
// missing input array: scoring an empty split is a bug in the caller's eval set.
void metrics_glue(GlueTask t, const int *pred_i, const int *gold_i, const float *pred_f, const float *gold_f,
                  int n, GlueScore *out);

#endif
