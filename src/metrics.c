// metrics.c: GLUE evaluation metrics (accuracy, binary F1, Matthews, Pearson, Spearman),
// double precision, sequential loops, no global state. See include/actlora/metrics.h.
#include "actlora/metrics.h"

#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/common.h"

// ---------------------------------------------------------------- classification

double metrics_accuracy(const int *pred, const int *gold, int n) {
    if (n <= 0) return 0.0;
    int64_t correct = 0;
    for (int i = 0; i < n; i++) correct += pred[i] == gold[i];
    return (double)correct / (double)n;
}

double metrics_f1(const int *pred, const int *gold, int n) {
    int64_t tp = 0, pred_pos = 0, true_pos = 0;
    for (int i = 0; i < n; i++) {
        int p = pred[i] == 1, g = gold[i] == 1;
        tp += p & g;
        pred_pos += p;
        true_pos += g;
    }
    // sklearn: f = (1 + beta^2) tp / (beta^2 true_sum + pred_sum) with beta = 1; when the
    // denominator is 0 (no true and no predicted positives) zero_division="warn" gives 0.0.
    int64_t denom = true_pos + pred_pos;
    if (denom == 0) return 0.0;
    return 2.0 * (double)tp / (double)denom;
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

double metrics_matthews(const int *pred, const int *gold, int n) {
    if (n <= 0) return 0.0;
    // Per-class counts t_k (gold) and p_k (pred) for arbitrary int labels: sort copies and walk
    // the runs of both in step. Equal ints are indistinguishable, so any qsort gives the same.
    int *g = xmalloc((size_t)n * sizeof(int), "metrics_matthews gold copy");
    int *p = xmalloc((size_t)n * sizeof(int), "metrics_matthews pred copy");
    memcpy(g, gold, (size_t)n * sizeof(int));
    memcpy(p, pred, (size_t)n * sizeof(int));
    qsort(g, (size_t)n, sizeof(int), cmp_int);
    qsort(p, (size_t)n, sizeof(int), cmp_int);
    int64_t tt = 0, pp = 0, tp = 0;   // sum_k t_k^2, sum_k p_k^2, sum_k t_k p_k
    int i = 0, j = 0;
    while (i < n || j < n) {
        // the smallest label still ahead in either list, and its run length in each
        int k = (j >= n || (i < n && g[i] <= p[j])) ? g[i] : p[j];
        int64_t tk = 0, pk = 0;
        while (i < n && g[i] == k) { tk++; i++; }
        while (j < n && p[j] == k) { pk++; j++; }
        tt += tk * tk;
        pp += pk * pk;
        tp += tk * pk;
    }
    free(g);
    free(p);
    int64_t correct = 0;
    for (int m = 0; m < n; m++) correct += pred[m] == gold[m];
    // The rest as sklearn, in double (all terms are integers, exact up to 2^53).
    double s = (double)n, c = (double)correct;
    double cov_ytyp = c * s - (double)tp;
    double cov_ypyp = s * s - (double)pp;
    double cov_ytyt = s * s - (double)tt;
    double cov_ypyp_ytyt = cov_ypyp * cov_ytyt;
    if (cov_ypyp_ytyt == 0.0) return 0.0;
    return cov_ytyp / sqrt(cov_ypyp_ytyt);
}

// ---------------------------------------------------------------- correlation

// 1 if every element equals the first (scipy's "constant input" test), 0 otherwise.
static int is_constant(const float *x, int n) {
    for (int i = 1; i < n; i++)
        if (x[i] != x[0]) return 0;
    return 1;
}

static int has_nan(const float *x, int n) {
    for (int i = 0; i < n; i++)
        if (isnan(x[i])) return 1;
    return 0;
}

// Two-pass Pearson correlation of doubles, clipped to [-1, 1]. The caller has ruled out
// n < 2, NaNs and constant inputs.
static double pearson_d(const double *x, const double *y, int n) {
    double sx = 0.0, sy = 0.0;
    for (int i = 0; i < n; i++) { sx += x[i]; sy += y[i]; }
    double mx = sx / n, my = sy / n;
    double sxy = 0.0, sxx = 0.0, syy = 0.0;
    for (int i = 0; i < n; i++) {
        double dx = x[i] - mx, dy = y[i] - my;
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    double r = sxy / (sqrt(sxx) * sqrt(syy));
    if (r > 1.0) r = 1.0;
    if (r < -1.0) r = -1.0;
    return r;
}

double metrics_pearson(const float *x, const float *y, int n) {
    if (n < 2 || has_nan(x, n) || has_nan(y, n) || is_constant(x, n) || is_constant(y, n)) return NAN;
    double *xd = xmalloc((size_t)n * sizeof(double), "metrics_pearson x");
    double *yd = xmalloc((size_t)n * sizeof(double), "metrics_pearson y");
    for (int i = 0; i < n; i++) { xd[i] = (double)x[i]; yd[i] = (double)y[i]; }
    double r = pearson_d(xd, yd, n);
    free(xd);
    free(yd);
    return r;
}

typedef struct {
    float v;
    int i;
} RankItem;

// Total order on (value, index): a stable sort whatever qsort does with equal keys.
static int cmp_rank_item(const void *a, const void *b) {
    const RankItem *x = a, *y = b;
    if (x->v < y->v) return -1;
    if (x->v > y->v) return 1;
    return (x->i > y->i) - (x->i < y->i);
}

// 1-based ranks of x (no NaNs), ties given the mean of the ranks they span, as
// scipy.stats.rankdata(method="average"): a run at sorted positions [a, b) gets (a + 1 + b) / 2.
static void average_ranks(const float *x, int n, RankItem *tmp, double *rank) {
    for (int i = 0; i < n; i++) { tmp[i].v = x[i]; tmp[i].i = i; }
    qsort(tmp, (size_t)n, sizeof(RankItem), cmp_rank_item);
    for (int a = 0; a < n;) {
        int b = a + 1;
        while (b < n && tmp[b].v == tmp[a].v) b++;
        double r = 0.5 * ((double)a + 1.0 + (double)b);
        for (int k = a; k < b; k++) rank[tmp[k].i] = r;
        a = b;
    }
}

double metrics_spearman(const float *x, const float *y, int n) {
    if (n < 2 || has_nan(x, n) || has_nan(y, n) || is_constant(x, n) || is_constant(y, n)) return NAN;
    RankItem *tmp = xmalloc((size_t)n * sizeof(RankItem), "metrics_spearman sort buffer");
    double *rx = xmalloc((size_t)n * sizeof(double), "metrics_spearman ranks of x");
    double *ry = xmalloc((size_t)n * sizeof(double), "metrics_spearman ranks of y");
    average_ranks(x, n, tmp, rx);
    average_ranks(y, n, tmp, ry);
    double r = pearson_d(rx, ry, n);
    free(tmp);
    free(rx);
    free(ry);
    return r;
}

// ---------------------------------------------------------------- GLUE tasks

static const char *const TASK_NAMES[GLUE_NUM_TASKS] = {
    [GLUE_COLA] = "CoLA", [GLUE_SST2] = "SST-2", [GLUE_MRPC] = "MRPC", [GLUE_STSB] = "STS-B", [GLUE_QQP] = "QQP",
    [GLUE_MNLI] = "MNLI", [GLUE_QNLI] = "QNLI",  [GLUE_RTE] = "RTE",   [GLUE_WNLI] = "WNLI",
};

const char *metrics_task_name(GlueTask t) {
    if ((int)t < 0 || (int)t >= GLUE_NUM_TASKS) return "?";
    return TASK_NAMES[t];
}

// Lower-cases s into buf (size cap) dropping '-' and '_'; -1 if it does not fit.
static int task_key(const char *s, char *buf, size_t cap) {
    size_t k = 0;
    for (; *s; s++) {
        if (*s == '-' || *s == '_') continue;
        if (k + 1 >= cap) return -1;
        buf[k++] = (char)tolower((unsigned char)*s);
    }
    buf[k] = '\0';
    return 0;
}

int metrics_task_parse(const char *name) {
    if (!name) return -1;
    char key[16], ref[16];
    if (task_key(name, key, sizeof key) != 0 || key[0] == '\0') return -1;
    for (int t = 0; t < GLUE_NUM_TASKS; t++) {
        if (task_key(TASK_NAMES[t], ref, sizeof ref) != 0) continue;
        if (strcmp(key, ref) == 0) return t;
    }
    return -1;
}

static void score_add(GlueScore *out, const char *name, double value) {
    check(out->n < 4, "metrics_glue: more than 4 metrics (internal error)");
    snprintf(out->name[out->n], sizeof out->name[0], "%s", name);
    out->value[out->n] = value;
    out->n++;
}

void metrics_glue(GlueTask t, const int *pred_i, const int *gold_i, const float *pred_f, const float *gold_f,
                  int n, GlueScore *out) {
    check((int)t >= 0 && (int)t < GLUE_NUM_TASKS, "metrics_glue: invalid GLUE task id %d", (int)t);
    check(n > 0, "metrics_glue(%s): no examples to score (n = %d); check the evaluation split",
          metrics_task_name(t), n);
    check(out != NULL, "metrics_glue(%s): out is NULL", metrics_task_name(t));
    memset(out, 0, sizeof *out);
    if (t == GLUE_STSB) {
        check(pred_f && gold_f, "metrics_glue(STS-B): regression task needs float predictions and gold scores");
        score_add(out, "pearson", metrics_pearson(pred_f, gold_f, n));
        score_add(out, "spearman", metrics_spearman(pred_f, gold_f, n));
        out->main = 0.5 * (out->value[0] + out->value[1]);
        return;
    }
    check(pred_i && gold_i, "metrics_glue(%s): classification task needs int predictions and gold labels",
          metrics_task_name(t));
    switch (t) {
    case GLUE_COLA:
        score_add(out, "matthews", metrics_matthews(pred_i, gold_i, n));
        out->main = out->value[0];
        break;
    case GLUE_MRPC:
    case GLUE_QQP:
        score_add(out, "accuracy", metrics_accuracy(pred_i, gold_i, n));
        score_add(out, "f1", metrics_f1(pred_i, gold_i, n));
        out->main = 0.5 * (out->value[0] + out->value[1]);
        break;
    default:   // SST-2, MNLI, QNLI, RTE, WNLI
        score_add(out, "accuracy", metrics_accuracy(pred_i, gold_i, n));
        out->main = out->value[0];
        break;
    }
}
