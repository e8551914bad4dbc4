// test_enc_ops.c: the encoder ops of the CPU backend (backend_cpu_enc.c) against naive double
// references written here, every backward op against central finite differences of that double
// reference, and 1 thread vs 2 threads bitwise. Also prints (never asserts) the time of
// attention_enc forward + backward at the MiniLM shape on 2 threads.
//
// Error measure (check_close): max_i |got_i - ref_i| / (|ref_i| + floor * max_j |ref_j|).
// Tolerances (stated at each call):
//   forward ops vs double reference: rtol 1e-5, floor 1e-2
//   backward ops vs FD of the double reference: rtol 1e-3, floor 1e-2 (eps 1e-6 in double)
//   accumulate (+=) checks: rtol 1e-6 against prefill + the separately-checked gradient
//   masking (padded keys, fully padded rows, mask_rows, embedding_add): exact
//   1 thread vs 2 threads: bitwise equal
#include "actlora/backend.h"
#include "actlora/common.h"
#include "test_fixture.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

// ------------------------------------------------------------------------------ helpers

static double g_worst_fwd = 0.0, g_worst_bwd = 0.0;  // summary over all checks

static double check_close(TestCounts *tc, const float *got, const double *ref, size_t n, double rtol,
                          double floor_frac, const char *what) {
    double worst = check_close_ref(tc, got, ref, n, rtol, floor_frac, what, 52);
    if (rtol >= 1e-3) g_worst_bwd = fmax(g_worst_bwd, worst);
    else g_worst_fwd = fmax(g_worst_fwd, worst);
    return worst;
}

// ------------------------------------------------------------------------------ embedding_add, bias, mask_rows

static void test_embedding_add(TestCounts *tc, Backend *be) {
    int V = 11, C = 5, N = 9;
    int32_t ids[9] = {3, 0, 10, 3, 7, 1, 9, 10, 2};
    float *tab = falloc(be, (size_t)V * C), *out = falloc(be, (size_t)N * C), want[45];
    Rand r = {17};
    fill(tab, (size_t)V * C, -1, 1, &r);
    fill(out, (size_t)N * C, -1, 1, &r);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) want[n * C + c] = out[n * C + c] + tab[ids[n] * C + c];
    be->embedding_add(be, out, ids, tab, N, C);
    check_exact(tc, out, want, (size_t)N * C, "embedding_add out += table[ids]");
    be->free(be, tab), be->free(be, out);
}

static void test_bias(TestCounts *tc, Backend *be) {
    int N = 301, C = 133;  // several column blocks, above the parallel threshold
    size_t n = (size_t)N * C;
    Rand r = {19};
    float *y = falloc(be, n), *b = falloc(be, C), *db = falloc(be, C), *want = falloc(be, n);
    fill(y, n, -1, 1, &r);
    fill(b, C, -1, 1, &r);
    fill(db, C, -1, 1, &r);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) want[(size_t)i * C + c] = y[(size_t)i * C + c] + b[c];
    be->bias_add(be, y, b, N, C);
    check_exact(tc, y, want, n, "bias_add y += b");
    double *ref = dalloc(C);
    for (int c = 0; c < C; c++) {
        ref[c] = db[c];
        for (int i = 0; i < N; i++) ref[c] += y[(size_t)i * C + c];
    }
    be->bias_grad(be, db, y, N, C);  // accumulates
    check_close(tc, db, ref, C, 1e-6, 1e-3, "bias_grad db += sum_n dy (prefilled db)");
    free(ref);
    be->free(be, y), be->free(be, b), be->free(be, db), be->free(be, want);
}

static void test_mask_rows(TestCounts *tc, Backend *be) {
    int N = 7, C = 6;
    int32_t mask[7] = {1, 0, 1, 1, 0, 0, 1};
    float *x = falloc(be, (size_t)N * C), want[42];
    Rand r = {23};
    fill(x, (size_t)N * C, -1, 1, &r);
    for (int i = 0; i < N * C; i++) want[i] = mask[i / C] ? x[i] : 0.0f;
    be->mask_rows(be, x, mask, N, C);
    check_exact(tc, x, want, (size_t)N * C, "mask_rows");
    be->free(be, x);
}

// ------------------------------------------------------------------------------ LayerNorm

typedef struct {
    int N, C;
    double eps;
    const double *w, *b, *G;  // G: the upstream gradient; loss = sum G * out
} LnCtx;

static void naive_layernorm(double *out, double *mean, double *rstd, const double *x, const LnCtx *c) {
    for (int n = 0; n < c->N; n++) {
        const double *xr = x + (size_t)n * c->C;
        double m = 0.0, v = 0.0;
        for (int k = 0; k < c->C; k++) m += xr[k];
        m /= c->C;
        for (int k = 0; k < c->C; k++) v += (xr[k] - m) * (xr[k] - m);
        v /= c->C;  // biased, as nn.LayerNorm
        double rs = 1.0 / sqrt(v + c->eps);
        if (mean) mean[n] = m, rstd[n] = rs;
        for (int k = 0; k < c->C; k++) out[(size_t)n * c->C + k] = (xr[k] - m) * rs * c->w[k] + c->b[k];
    }
}

static double ln_loss(void *vctx, const double *x) {
    LnCtx *c = (LnCtx *)vctx;
    size_t n = (size_t)c->N * c->C;
    double *out = dalloc(n), L = 0.0;
    naive_layernorm(out, NULL, NULL, x, c);
    for (size_t i = 0; i < n; i++) L += c->G[i] * out[i];
    free(out);
    return L;
}

static void test_layernorm_case(TestCounts *tc, Backend *be, int N, int C, float eps, double lo, double hi,
                                size_t fd_stride) {
    size_t n = (size_t)N * C;
    char what[96];
    Rand r = {(uint64_t)(29 + N)};
    float *x = falloc(be, n), *w = falloc(be, C), *b = falloc(be, C), *out = falloc(be, n), *mean = falloc(be, N);
    float *rstd = falloc(be, N), *dout = falloc(be, n), *dinp = falloc(be, n), *acc = falloc(be, n);
    float *alias = falloc(be, n), *mean2 = falloc(be, N), *rstd2 = falloc(be, N);
    fill(x, n, lo, hi, &r);  // an offset mean exercises the variance's cancellation
    fill(w, C, 0.5, 1.5, &r);
    fill(b, C, -0.5, 0.5, &r);
    fill(dout, n, -1, 1, &r);
    fill_nan(out, n), fill_nan(mean, N), fill_nan(rstd, N);
    double *xd = to_d(x, n), *wd = to_d(w, C), *bd = to_d(b, C), *Gd = to_d(dout, n);
    double *outd = dalloc(n), *meand = dalloc(N), *rstdd = dalloc(N), *g = dalloc(n);
    LnCtx ctx = {N, C, eps, wd, bd, Gd};
    naive_layernorm(outd, meand, rstdd, xd, &ctx);
    be->layernorm_fwd(be, out, mean, rstd, x, w, b, N, C, eps);
    snprintf(what, sizeof what, "layernorm_fwd out N%d C%d", N, C);
    check_close(tc, out, outd, n, 1e-5, 1e-2, what);
    snprintf(what, sizeof what, "layernorm_fwd mean N%d C%d", N, C);
    check_close(tc, mean, meand, N, 1e-5, 1e-2, what);
    snprintf(what, sizeof what, "layernorm_fwd rstd N%d C%d", N, C);
    check_close(tc, rstd, rstdd, N, 1e-5, 0.0, what);
    memcpy(alias, x, n * sizeof(float));  // in place: out == inp gives the same bits
    be->layernorm_fwd(be, alias, mean2, rstd2, alias, w, b, N, C, eps);
    check_exact(tc, alias, out, n, "layernorm_fwd in place (out == inp)");
    check_exact(tc, rstd2, rstd, N, "layernorm_fwd in place rstd");

    fd_grad_strided(ln_loss, &ctx, xd, 0, n, fd_stride, g);
    be->layernorm_bwd(be, dinp, dout, x, w, mean, rstd, N, C);  // dinp starts at 0
    if (fd_stride == 1) {
        snprintf(what, sizeof what, "layernorm_bwd dinp vs FD N%d C%d", N, C);
        check_close(tc, dinp, g, n, 1e-3, 1e-2, what);
    } else {  // FD on a strided subset of the coordinates
        size_t m = (n + fd_stride - 1) / fd_stride;
        float *sub = falloc(be, m);
        double *gs = dalloc(m);
        for (size_t i = 0; i < m; i++) sub[i] = dinp[i * fd_stride], gs[i] = g[i * fd_stride];
        snprintf(what, sizeof what, "layernorm_bwd dinp vs FD N%d C%d (every %zu)", N, C, fd_stride);
        check_close(tc, sub, gs, m, 1e-3, 1e-2, what);
        be->free(be, sub);
        free(gs);
    }
    fill(acc, n, -0.5, 0.5, &r);  // accumulate: acc += grad
    double *wantd = dalloc(n);
    for (size_t i = 0; i < n; i++) wantd[i] = (double)acc[i] + dinp[i];
    be->layernorm_bwd(be, acc, dout, x, w, mean, rstd, N, C);
    snprintf(what, sizeof what, "layernorm_bwd accumulates (+=) N%d C%d", N, C);
    check_close(tc, acc, wantd, n, 1e-6, 1e-3, what);
    free(xd), free(wd), free(bd), free(Gd), free(outd), free(meand), free(rstdd), free(g), free(wantd);
    float *bufs[] = {x, w, b, out, mean, rstd, dout, dinp, acc, alias, mean2, rstd2};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->free(be, bufs[i]);
}

static void test_layernorm(TestCounts *tc, Backend *be) {
    test_layernorm_case(tc, be, 5, 37, 1e-12f, -1, 1, 1);   // BERT eps
    test_layernorm_case(tc, be, 3, 64, 1e-7f, 3, 5, 1);     // DeBERTa eps, mean 4 >> spread
    test_layernorm_case(tc, be, 97, 385, 1e-5f, -2, 2, 7);  // parallel path, FD on a subset
}

// ------------------------------------------------------------------------------ GELU, tanh

// 0.5 x (1 + erf(x/sqrt2)) written as 0.5 x erfc(-x/sqrt2): the same function, and in double the
// tail below x = -8 does not round to 0
static double ref_gelu(double x) { return 0.5 * x * erfc(-x / sqrt(2.0)); }

static void test_gelu_tanh(TestCounts *tc, Backend *be) {
    size_t n = 20001;
    Rand r = {31};
    float *x = falloc(be, n), *h = falloc(be, n), *dh = falloc(be, n), *dx = falloc(be, n), *y = falloc(be, n);
    fill(x, n, -7, 7, &r);
    x[0] = 0.0f, x[1] = -0.0f, x[2] = 1e-4f, x[3] = -9.5f, x[4] = 9.5f;
    fill(dh, n, -1, 1, &r);
    double *hd = dalloc(n), *gd = dalloc(n), *yd = dalloc(n), *gt = dalloc(n);
    for (size_t i = 0; i < n; i++) {  // elementwise: FD of sum dh * f(x) is dh * f'(x) by FD
        double v = x[i];
        hd[i] = ref_gelu(v);
        gd[i] = dh[i] * (ref_gelu(v + FD_EPS) - ref_gelu(v - FD_EPS)) / (2 * FD_EPS);
        yd[i] = tanh(v);
        gt[i] = dh[i] * (tanh(v + FD_EPS) - tanh(v - FD_EPS)) / (2 * FD_EPS);
    }
    fill_nan(h, n);
    be->gelu_fwd(be, h, x, n);
    check_close(tc, h, hd, n, 1e-5, 1e-2, "gelu_fwd vs 0.5 x (1 + erf(x/sqrt2))");
    // the negative tail element by element (relative, no floor): erfc keeps it accurate
    double tail = 0.0;
    for (size_t i = 0; i < n; i++)
        if (x[i] < -1.0f) tail = fmax(tail, fabs(h[i] - hd[i]) / fabs(hd[i]));
    T_CHECK(tc, tail <= 1e-5, "gelu_fwd: negative tail rel err %.3g", tail);
    printf("  %-52s max rel err %.2e (tol 1e-05)\n", "gelu_fwd x < -1, no floor", tail);
    fill_nan(dx, n);
    be->gelu_bwd(be, dx, dh, x, n);
    check_close(tc, dx, gd, n, 1e-3, 1e-2, "gelu_bwd vs FD");
    fill_nan(y, n);
    be->tanh_fwd(be, y, x, n);
    check_close(tc, y, yd, n, 1e-5, 1e-2, "tanh_fwd");
    fill_nan(dx, n);
    be->tanh_bwd(be, dx, dh, y, n);
    check_close(tc, dx, gt, n, 1e-3, 1e-2, "tanh_bwd (from y) vs FD");
    be->tanh_fwd(be, x, x, n);  // in place
    check_exact(tc, x, y, n, "tanh_fwd in place (y == x)");
    free(hd), free(gd), free(yd), free(gt);
    be->free(be, x), be->free(be, h), be->free(be, dh), be->free(be, dx), be->free(be, y);
}

// ------------------------------------------------------------------------------ attention_enc

typedef struct {
    int B, T, H, D, P, use_pq, use_pk;
    double scale;
    const int32_t *idx, *mask;
    const double *G;  // dout
} EncCtx;

// explicit per-element scores; x = [q | k | v | pq | pk]
static void naive_enc(double *out, double *probs, const double *x, const EncCtx *c) {
    int B = c->B, T = c->T, H = c->H, D = c->D, HD = c->H * c->D;
    size_t nq = (size_t)B * T * HD, npd = (size_t)c->P * HD;
    const double *q = x, *k = x + nq, *v = x + 2 * nq, *pq = x + 3 * nq, *pk = x + 3 * nq + npd;
    double *s = dalloc(T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const double *qi = q + ((size_t)b * T + i) * HD + h * D;
                double mx = -INFINITY;
                for (int j = 0; j < T; j++) {
                    s[j] = -INFINITY;
                    if (c->mask[b * T + j] == 0) continue;
                    const double *kj = k + ((size_t)b * T + j) * HD + h * D;
                    int p = c->use_pq || c->use_pk ? c->idx[i * T + j] : 0;
                    double dot = 0.0;
                    for (int d = 0; d < D; d++) {
                        dot += qi[d] * kj[d];
                        if (c->use_pk) dot += qi[d] * pk[(size_t)p * HD + h * D + d];
                        if (c->use_pq) dot += kj[d] * pq[(size_t)p * HD + h * D + d];
                    }
                    s[j] = c->scale * dot;
                    mx = fmax(mx, s[j]);
                }
                double sum = 0.0;
                for (int j = 0; j < T; j++) sum += mx == -INFINITY ? 0.0 : exp(s[j] - mx);
                double *o = out + ((size_t)b * T + i) * HD + h * D;
                for (int d = 0; d < D; d++) o[d] = 0.0;
                for (int j = 0; j < T; j++) {
                    double p = mx == -INFINITY ? 0.0 : exp(s[j] - mx) / sum;
                    if (probs) probs[(((size_t)b * H + h) * T + i) * T + j] = p;
                    for (int d = 0; d < D; d++) o[d] += p * v[((size_t)b * T + j) * HD + h * D + d];
                }
            }
    free(s);
}

static double enc_loss(void *vctx, const double *x) {
    EncCtx *c = (EncCtx *)vctx;
    size_t nq = (size_t)c->B * c->T * c->H * c->D;
    double *out = dalloc(nq), L = 0.0;
    naive_enc(out, NULL, x, c);
    for (size_t i = 0; i < nq; i++) L += c->G[i] * out[i];
    free(out);
    return L;
}

// compares got[0 : n : stride] with ref[0 : n : stride]
static void check_sub(TestCounts *tc, const float *got, const double *ref, size_t n, size_t stride, double rtol,
                      const char *what) {
    size_t m = (n + stride - 1) / stride;
    float *g = (float *)xcalloc(m ? m : 1, sizeof(float), "test subset");
    double *rr = dalloc(m);
    for (size_t i = 0; i < m; i++) g[i] = got[i * stride], rr[i] = ref[i * stride];
    check_close(tc, g, rr, m, rtol, 1e-2, what);
    free(g), free(rr);
}

static int all_zero(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (x[i] != 0.0f) return 0;
    return 1;
}

// One case: forward vs double, backward vs FD (on every fd_stride-th coordinate), exact zeros
// for masked keys and fully padded batch rows, and be1 (1 thread) == be2 (2 threads) bitwise.
static void test_enc_case(TestCounts *tc, Backend *be1, Backend *be2, int B, int T, int H, int D, int P, int use_pq,
                          int use_pk, float scale, const int32_t *mask, size_t fd_stride, uint64_t seed) {
    int HD = H * D, rel = use_pq || use_pk;
    size_t nq = (size_t)B * T * HD, np = (size_t)B * H * T * T, npd = (size_t)P * HD, nx = 3 * nq + 2 * npd;
    char tag[64], what[128];
    snprintf(tag, sizeof tag, "B%d T%d H%d D%d P%d%s%s", B, T, H, D, P, use_pk ? " c2p" : "", use_pq ? " p2c" : "");
    Rand r = {seed};
    Backend *be = be2;
    float *q = falloc(be, nq), *k = falloc(be, nq), *v = falloc(be, nq), *pq = falloc(be, npd), *pk = falloc(be, npd);
    float *out = falloc(be, nq), *probs = falloc(be, np), *dout = falloc(be, nq);
    float *dq = falloc(be, nq), *dk = falloc(be, nq), *dv = falloc(be, nq), *dpq = falloc(be, npd),
          *dpk = falloc(be, npd);
    int32_t *idx = (int32_t *)xcalloc((size_t)T * T, sizeof(int32_t), "idx");
    for (int i = 0; i < T; i++)  // DeBERTa-like bucket: clamp(i - j + P/2) so that P < 2T clamps
        for (int j = 0; j < T; j++) {
            int p = i - j + P / 2;
            idx[i * T + j] = p < 0 ? 0 : p >= P ? P - 1 : p;
        }
    fill(q, nq, -1.5, 1.5, &r), fill(k, nq, -1.5, 1.5, &r), fill(v, nq, -1, 1, &r);
    fill(pq, npd, -1.5, 1.5, &r), fill(pk, npd, -1.5, 1.5, &r), fill(dout, nq, -1, 1, &r);
    fill_nan(out, nq), fill_nan(probs, np), fill_nan(dq, nq), fill_nan(dk, nq), fill_nan(dv, nq);
    fill_nan(dpq, npd), fill_nan(dpk, npd);  // all overwritten

    double *x = dalloc(nx), *outd = dalloc(nq), *probsd = dalloc(np), *Gd = to_d(dout, nq), *g = dalloc(nx);
    for (size_t i = 0; i < nq; i++) x[i] = q[i], x[nq + i] = k[i], x[2 * nq + i] = v[i];
    for (size_t i = 0; i < npd; i++) x[3 * nq + i] = pq[i], x[3 * nq + npd + i] = pk[i];
    EncCtx ctx = {B, T, H, D, P, use_pq, use_pk, scale, idx, mask, Gd};
    naive_enc(outd, probsd, x, &ctx);

    const float *PQ = use_pq ? pq : NULL, *PK = use_pk ? pk : NULL;
    const int32_t *IDX = rel ? idx : NULL;
    be->attention_enc_fwd(be, out, probs, q, k, v, PQ, PK, IDX, mask, B, T, H, D, P, scale);
    snprintf(what, sizeof what, "enc fwd out %s", tag);
    check_close(tc, out, outd, nq, 1e-5, 1e-2, what);
    snprintf(what, sizeof what, "enc fwd probs %s", tag);
    check_close(tc, probs, probsd, np, 1e-5, 1e-2, what);
    size_t bad_p = 0, bad_o = 0, bad_g = 0, empty = 0;
    for (int b = 0; b < B; b++) {
        int any = 0;
        for (int j = 0; j < T; j++) any |= mask[b * T + j] != 0;
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++)
                    if (mask[b * T + j] == 0 && probs[(((size_t)b * H + h) * T + i) * T + j] != 0.0f) bad_p++;
        if (!any) empty++, bad_o += !all_zero(out + (size_t)b * T * HD, (size_t)T * HD);
    }
    T_CHECK(tc, bad_p == 0, "enc fwd %s: %zu masked probabilities are not exactly 0", tag, bad_p);
    T_CHECK(tc, bad_o == 0, "enc fwd %s: %zu fully padded rows have nonzero output", tag, bad_o);

    be->attention_enc_bwd(be, dq, dk, dv, use_pq ? dpq : NULL, use_pk ? dpk : NULL, dout, probs, q, k, v, PQ, PK, IDX,
                          B, T, H, D, P, scale);
    const char *names[5] = {"dq", "dk", "dv", "dpq", "dpk"};
    const float *gots[5] = {dq, dk, dv, dpq, dpk};
    size_t offs[5] = {0, nq, 2 * nq, 3 * nq, 3 * nq + npd}, ns[5] = {nq, nq, nq, npd, npd};
    for (int t = 0; t < 5; t++) {
        if ((t == 3 && !use_pq) || (t == 4 && !use_pk)) continue;
        fd_grad_strided(enc_loss, &ctx, x, offs[t], offs[t] + ns[t], fd_stride, g);
        snprintf(what, sizeof what, "enc bwd %s vs FD %s%s", names[t], tag, fd_stride > 1 ? " (subset)" : "");
        check_sub(tc, gots[t], g + offs[t], ns[t], fd_stride, 1e-3, what);
    }
    for (int b = 0; b < B; b++) {  // a fully padded row: its q, k, v get exactly 0
        int any = 0;
        for (int j = 0; j < T; j++) any |= mask[b * T + j] != 0;
        size_t o = (size_t)b * T * HD;
        if (!any) bad_g += !all_zero(dq + o, (size_t)T * HD) + !all_zero(dk + o, (size_t)T * HD) +
                           !all_zero(dv + o, (size_t)T * HD);
        for (int j = 0; j < T; j++)  // padded keys get exactly 0 in dk and dv (p2c too: their dS is 0)
            if (mask[b * T + j] == 0)
                bad_g += !all_zero(dv + o + (size_t)j * HD, HD) + !all_zero(dk + o + (size_t)j * HD, HD);
    }
    T_CHECK(tc, bad_g == 0, "enc bwd %s: %zu gradients of padded keys / rows are not exactly 0", tag, bad_g);
    if (empty == 0) printf("  (no fully padded row in %s)\n", tag);

    // deterministic: 1 thread gives bitwise the same forward and backward
    float *out1 = falloc(be, nq), *probs1 = falloc(be, np), *dq1 = falloc(be, nq), *dk1 = falloc(be, nq),
          *dv1 = falloc(be, nq), *dpq1 = falloc(be, npd), *dpk1 = falloc(be, npd);
    be1->attention_enc_fwd(be1, out1, probs1, q, k, v, PQ, PK, IDX, mask, B, T, H, D, P, scale);
    be1->attention_enc_bwd(be1, dq1, dk1, dv1, use_pq ? dpq1 : NULL, use_pk ? dpk1 : NULL, dout, probs1, q, k, v, PQ,
                           PK, IDX, B, T, H, D, P, scale);
    const float *a1[7] = {out1, probs1, dq1, dk1, dv1, dpq1, dpk1}, *a2[7] = {out, probs, dq, dk, dv, dpq, dpk};
    const char *an[7] = {"out", "probs", "dq", "dk", "dv", "dpq", "dpk"};
    size_t asz[7] = {nq, np, nq, nq, nq, npd, npd};
    for (int t = 0; t < 7; t++) {
        if ((t == 5 && !use_pq) || (t == 6 && !use_pk)) continue;
        snprintf(what, sizeof what, "enc %s %s: 1 thread == 2 threads", an[t], tag);
        check_exact(tc, a1[t], a2[t], asz[t], what);
    }

    free(x), free(outd), free(probsd), free(Gd), free(g), free(idx);
    float *bufs[] = {q, k, v, pq, pk, out, probs, dout, dq, dk, dv, dpq, dpk, out1, probs1, dq1, dk1, dv1, dpq1, dpk1};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->free(be, bufs[i]);
}

static void test_attention_enc(TestCounts *tc, Backend *be1, Backend *be2) {
    // batch 0: padded keys inside and at the end; batch 1: fully padded; batch 2: left padding
    const int32_t m1[3 * 7] = {1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1};
    float sc = (float)(1.0 / sqrt(3.0 * 5));  // DeBERTa's 1/sqrt(D * (1 + #relative terms))
    for (int rel = 0; rel < 4; rel++)  // (a) none, (b) c2p, (c) p2c, (d) both; P = 9 < 2T clamps
        test_enc_case(tc, be1, be2, 3, 7, 2, 5, 9, rel & 2, rel & 1, sc, m1, 1, 1000 + rel);
    // larger: T = 40, right padding of different lengths (keys left out of the products),
    // P = 32 < 2T, FD on every 5th coordinate
    int32_t m2[2 * 40];
    for (int t = 0; t < 80; t++) m2[t] = t < 40 ? (t < 29 && t != 3) : (t - 40 < 37);
    test_enc_case(tc, be1, be2, 2, 40, 3, 8, 32, 1, 1, 0.21f, m2, 5, 2001);
    test_enc_case(tc, be1, be2, 2, 40, 3, 8, 32, 0, 0, 0.35f, m2, 5, 2002);
    // B = 10 > 8 batch rows per backward task: dpq / dpk summed over two chunks; rows 0 and 9 fully padded
    int32_t m3[10 * 6];
    for (int t = 0; t < 60; t++) m3[t] = t >= 6 && t < 54 && (t * 7) % 5 != 1;
    test_enc_case(tc, be1, be2, 10, 6, 2, 3, 7, 1, 1, 0.3f, m3, 1, 3001);
}

// ------------------------------------------------------------------------------ determinism of the other ops

static void test_threads(TestCounts *tc, Backend *be1, Backend *be2) {
    int N = 211, C = 389;  // above every parallel threshold
    size_t n = (size_t)N * C;
    Rand r = {37};
    Backend *bes[2] = {be1, be2};
    float *x = falloc(be1, n), *w = falloc(be1, C), *b = falloc(be1, C), *dy = falloc(be1, n);
    float *o[2], *m[2], *rs[2], *dx[2], *db[2], *h[2];
    fill(x, n, -3, 3, &r), fill(w, C, 0.5, 1.5, &r), fill(b, C, -1, 1, &r), fill(dy, n, -1, 1, &r);
    for (int t = 0; t < 2; t++) {
        Backend *be = bes[t];
        o[t] = falloc(be, n), m[t] = falloc(be, N), rs[t] = falloc(be, N), dx[t] = falloc(be, n);
        db[t] = falloc(be, C), h[t] = falloc(be, n);
        be->layernorm_fwd(be, o[t], m[t], rs[t], x, w, b, N, C, 1e-5f);
        be->layernorm_bwd(be, dx[t], dy, x, w, m[t], rs[t], N, C);
        be->bias_grad(be, db[t], dy, N, C);
        be->gelu_fwd(be, h[t], x, n);
        be->gelu_bwd(be, dx[t], dy, x, n);  // overwrites the layernorm gradient: compare both below
    }
    check_exact(tc, o[0], o[1], n, "layernorm_fwd: 1 thread == 2 threads");
    check_exact(tc, rs[0], rs[1], N, "layernorm_fwd rstd: 1 thread == 2 threads");
    check_exact(tc, db[0], db[1], C, "bias_grad: 1 thread == 2 threads");
    check_exact(tc, h[0], h[1], n, "gelu_fwd: 1 thread == 2 threads");
    check_exact(tc, dx[0], dx[1], n, "gelu_bwd: 1 thread == 2 threads");
    for (int t = 0; t < 2; t++) {
        memset(dx[t], 0, n * sizeof(float));
        bes[t]->layernorm_bwd(bes[t], dx[t], dy, x, w, m[t], rs[t], N, C);
    }
    check_exact(tc, dx[0], dx[1], n, "layernorm_bwd: 1 thread == 2 threads");
    for (int t = 0; t < 2; t++) be1->free(be1, o[t]), be1->free(be1, m[t]), be1->free(be1, rs[t]),
        be1->free(be1, dx[t]), be1->free(be1, db[t]), be1->free(be1, h[t]);
    be1->free(be1, x), be1->free(be1, w), be1->free(be1, b), be1->free(be1, dy);
}

// ------------------------------------------------------------------------------ death tests

typedef struct {
    Backend *be;
    int which;
} DeathCtx;

static void death_fn(void *vctx) {
    DeathCtx *c = (DeathCtx *)vctx;
    Backend *be = c->be;
    float buf[64] = {0}, probs[64];
    int32_t idx[4] = {0, 1, 2, 3}, mask[2] = {1, 1}, ids[2] = {0, -4};
    // B=1 T=2 H=1 D=2 P=3: idx[1,1] = 3 is out of range
    if (c->which == 0) be->attention_enc_fwd(be, buf, probs, buf, buf, buf, NULL, buf, idx, mask, 1, 2, 1, 2, 3, 1.0f);
    if (c->which == 1)
        be->attention_enc_bwd(be, buf, buf, buf, NULL, NULL, buf, probs, buf, buf, buf, buf, NULL, idx, 1, 2, 1, 2, 4,
                              1.0f);
    if (c->which == 2) be->embedding_add(be, buf, ids, buf, 2, 3);
    if (c->which == 3) be->attention_enc_fwd(be, buf, probs, buf, buf, buf, buf, NULL, NULL, mask, 1, 2, 1, 2, 3, 1.0f);
}

static void test_deaths(TestCounts *tc, Backend *be) {
    DeathCtx c0 = {be, 0}, c1 = {be, 1}, c2 = {be, 2}, c3 = {be, 3};
    expect_death(tc, death_fn, &c0, "idx[1, 1] = 3 is outside [0, 3)", "attention_enc_fwd idx out of range");
    expect_death(tc, death_fn, &c1, "dpq must be given exactly when pq is", "attention_enc_bwd pq without dpq");
    expect_death(tc, death_fn, &c2, "token 1 has negative id -4", "embedding_add negative id");
    expect_death(tc, death_fn, &c3, "without the [T,T] position index", "attention_enc_fwd pq without idx");
}

// ------------------------------------------------------------------------------ timing (printed only)

static void time_attention_enc(Backend *be, int B, int T, int H, int D, int P, int nvalid) {
    int HD = H * D, rel = P > 0;
    size_t nq = (size_t)B * T * HD, np = (size_t)B * H * T * T, npd = (size_t)(rel ? P : 1) * HD;
    Rand r = {77};
    float *q = falloc(be, nq), *k = falloc(be, nq), *v = falloc(be, nq), *out = falloc(be, nq), *dout = falloc(be, nq);
    float *probs = falloc(be, np), *dq = falloc(be, nq), *dk = falloc(be, nq), *dv = falloc(be, nq);
    float *pq = falloc(be, npd), *pk = falloc(be, npd), *dpq = falloc(be, npd), *dpk = falloc(be, npd);
    int32_t *idx = (int32_t *)xcalloc((size_t)T * T, sizeof(int32_t), "idx");
    int32_t *mask = (int32_t *)xcalloc((size_t)B * T, sizeof(int32_t), "mask");
    for (int i = 0; i < T; i++)
        for (int j = 0; j < T; j++) {
            int p = i - j + (rel ? P : 2) / 2;
            idx[i * T + j] = p < 0 ? 0 : p >= P ? (P > 0 ? P - 1 : 0) : p;
        }
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) mask[b * T + t] = t < nvalid;
    fill(q, nq, -1, 1, &r), fill(k, nq, -1, 1, &r), fill(v, nq, -1, 1, &r), fill(dout, nq, -1, 1, &r);
    fill(pq, npd, -1, 1, &r), fill(pk, npd, -1, 1, &r);
    const float *PQ = rel ? pq : NULL, *PK = rel ? pk : NULL;
    const int32_t *IDX = rel ? idx : NULL;
    float sc = 1.0f / sqrtf((float)D * (rel ? 3 : 1));
    double tf = 1e30, tb = 1e30;
    for (int rep = 0; rep < 4; rep++) {  // the first is a warm-up; best of the rest
        double t0 = time_now();
        be->attention_enc_fwd(be, out, probs, q, k, v, PQ, PK, IDX, mask, B, T, H, D, P, sc);
        double t1 = time_now();
        be->attention_enc_bwd(be, dq, dk, dv, rel ? dpq : NULL, rel ? dpk : NULL, dout, probs, q, k, v, PQ, PK, IDX, B,
                              T, H, D, P, sc);
        double t2 = time_now();
        if (rep) tf = fmin(tf, t1 - t0), tb = fmin(tb, t2 - t1);
    }
    printf("  timing attention_enc B=%d T=%d H=%d D=%d %s, %d valid keys, %d threads: fwd %.1f ms, bwd %.1f ms, "
           "total %.1f ms\n",
           B, T, H, D, rel ? "P=256 c2p+p2c" : "no relative terms", nvalid, be->threads, tf * 1e3, tb * 1e3,
           (tf + tb) * 1e3);
    free(idx), free(mask);
    float *bufs[] = {q, k, v, out, dout, probs, dq, dk, dv, pq, pk, dpq, dpk};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->free(be, bufs[i]);
}

int main(int argc, char **argv) {
    (void)argc, (void)argv;
    TestCounts tc = {0, 0};
    Backend be1, be2;
    backend_cpu_init(&be1, 1);
    backend_cpu_init(&be2, 2);  // last init sets the process-wide OpenBLAS thread count
    T_CHECK(&tc, be2.embedding_add && be2.layernorm_fwd && be2.layernorm_bwd && be2.bias_add && be2.bias_grad &&
                     be2.gelu_fwd && be2.gelu_bwd && be2.tanh_fwd && be2.tanh_bwd && be2.mask_rows &&
                     be2.attention_enc_fwd && be2.attention_enc_bwd,
            "backend_cpu_enc_init left an encoder op unset");
    if (tc.failed) return t_finish(&tc, "test_enc_ops");
    test_embedding_add(&tc, &be2);
    test_bias(&tc, &be2);
    test_mask_rows(&tc, &be2);
    test_layernorm(&tc, &be2);
    test_gelu_tanh(&tc, &be2);
    test_attention_enc(&tc, &be1, &be2);
    test_threads(&tc, &be1, &be2);
    test_deaths(&tc, &be2);
    printf("worst forward rel err %.2e, worst backward-vs-FD rel err %.2e\n", g_worst_fwd, g_worst_bwd);
    time_attention_enc(&be2, 32, 128, 12, 32, 0, 128);
    time_attention_enc(&be2, 32, 128, 12, 32, 256, 128);
    time_attention_enc(&be2, 32, 128, 12, 32, 0, 64);
    time_attention_enc(&be2, 32, 128, 12, 32, 256, 64);
    backend_free(&be1);
    backend_free(&be2);
    return t_finish(&tc, "test_enc_ops");
}
