// test_backend_ops.c: every op of the CPU backend against a naive, obviously-correct double
// reference written here, and every backward op against central finite differences of that
// double reference (so the FD gradients are accurate to ~1e-9 and any disagreement is the
// backend's). Awkward sizes throughout (odd N, T=7, D=6, blocks that do not divide T).
//
// Error measure (check_close): max_i |got_i - ref_i| / (|ref_i| + floor * max_j |ref_j|),
// i.e. relative per element with an absolute floor tied to the tensor's scale.
// Tolerances (stated at each call):
//   forward ops vs double reference: rtol 1e-5, floor 1e-2   (gemm: rtol 1e-4)
//   backward ops vs FD of the double reference: rtol 1e-3, floor 1e-2 (eps 1e-6 in double)
//   accumulate (+=) checks: rtol 1e-6 against prefill + the separately-checked gradient
//   AdamW (5 steps) vs double torch formula: rtol 1e-5, floor 1e-3
//   sumsq vs double: 1e-12; 1 thread vs 2 threads: bitwise equal
// Also: where the build found OpenBLAS's OpenMP build, that is the OpenBLAS loaded (unless the caller
// points LD_LIBRARY_PATH at another OpenBLAS on purpose).
#include "actlora/backend.h"
#include "actlora/common.h"
#include "actlora/rng.h"
#include "test_fixture.h"

#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

// ------------------------------------------------------------------------------ helpers

static double check_close(TestCounts *tc, const float *got, const double *ref, size_t n, double rtol,
                          double floor_frac, const char *what) {
    return check_close_ref(tc, got, ref, n, rtol, floor_frac, what, 44);
}

// Another backend's init sets the process-wide OpenBLAS thread count: re-init the main one.
// (Buffers survive: CPU alloc/free do not depend on the backend's private state.)
static void reinit(Backend *be) {
    backend_free(be);
    backend_cpu_init(be, 0);
}

// central finite differences of a scalar double function of x at every coordinate (x is restored)
static void fd_grad(LossFn f, void *ctx, double *x, size_t n, double *grad) { fd_grad_strided(f, ctx, x, 0, n, 1, grad); }

// ------------------------------------------------------------------------------ memory, gemm, add, scale, sumsq

static void naive_gemm(double *C, int ta, int tb, int M, int N, int K, double alpha, const float *A,
                       const float *B, double beta) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int p = 0; p < K; p++) {
                double a = ta ? A[(size_t)p * M + i] : A[(size_t)i * K + p];
                double b = tb ? B[(size_t)j * K + p] : B[(size_t)p * N + j];
                s += a * b;
            }
            C[(size_t)i * N + j] = alpha * s + beta * C[(size_t)i * N + j];
        }
}

static void test_memory(TestCounts *tc, Backend *be) {
    size_t n = 1000;
    float *a = falloc(be, n);
    int zero = 1;
    for (size_t i = 0; i < n; i++) zero &= a[i] == 0.0f;
    T_CHECK(tc, zero, "alloc: memory is not zero-filled");
    T_CHECK(tc, ((uintptr_t)a % 64) == 0, "alloc: %p is not 64-byte aligned", (void *)a);
    float host[1000], back[1000];
    Rand r = {7};
    fill(host, n, -1, 1, &r);
    be->upload(be, a, host, n * sizeof(float));
    float *b = falloc(be, n);
    be->copy(be, b, a, n * sizeof(float));
    be->download(be, back, b, n * sizeof(float));
    check_exact(tc, back, host, n, "upload/copy/download round trip");
    be->zero(be, b, 10 * sizeof(float));
    be->sync(be);
    T_CHECK(tc, b[0] == 0.0f && b[9] == 0.0f && b[10] == host[10], "zero: wrong extent");
    be->free(be, a);
    be->free(be, b);
}

static void test_gemm(TestCounts *tc, Backend *be) {
    const int sizes[2][3] = {{13, 7, 19}, {67, 45, 129}};
    const float ab[3][2] = {{0.7f, -0.3f}, {1.0f, 0.0f}, {-1.3f, 1.0f}};  // (alpha, beta)
    Rand r = {11};
    for (int s = 0; s < 2; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int k = 0; k < 3; k++) {
                    int M = sizes[s][0], N = sizes[s][1], K = sizes[s][2];
                    float *A = falloc(be, (size_t)M * K), *B = falloc(be, (size_t)K * N), *C = falloc(be, (size_t)M * N);
                    fill(A, (size_t)M * K, -1, 1, &r);
                    fill(B, (size_t)K * N, -1, 1, &r);
                    fill(C, (size_t)M * N, -1, 1, &r);
                    double *ref = to_d(C, (size_t)M * N);
                    naive_gemm(ref, ta, tb, M, N, K, ab[k][0], A, B, ab[k][1]);
                    be->gemm(be, ta, tb, M, N, K, ab[k][0], A, B, ab[k][1], C);
                    char what[96];
                    snprintf(what, sizeof what, "gemm %dx%dx%d ta=%d tb=%d a=%g b=%g", M, N, K, ta, tb,
                             (double)ab[k][0], (double)ab[k][1]);
                    check_close(tc, C, ref, (size_t)M * N, 1e-4, 1e-2, what);  // gemm: 1e-4
                    free(ref);
                    be->free(be, A);
                    be->free(be, B);
                    be->free(be, C);
                }
}

// beta == 0 overwrites C even when it holds NaN (callers pass uninitialized outputs), and an
// empty product (K == 0) leaves beta * C
static void test_gemm_edges(TestCounts *tc, Backend *be) {
    int M = 5, N = 3, K = 4;
    Rand r = {12};
    float *A = falloc(be, (size_t)M * K), *B = falloc(be, (size_t)K * N), *C = falloc(be, (size_t)M * N);
    fill(A, (size_t)M * K, -1, 1, &r);
    fill(B, (size_t)K * N, -1, 1, &r);
    fill_nan(C, (size_t)M * N);
    double ref[15] = {0};
    naive_gemm(ref, 0, 0, M, N, K, 1.0, A, B, 0.0);
    be->gemm(be, 0, 0, M, N, K, 1.0f, A, B, 0.0f, C);
    check_close(tc, C, ref, (size_t)M * N, 1e-4, 1e-2, "gemm beta=0 over NaN-filled C");
    float want[15];
    for (int i = 0; i < M * N; i++) want[i] = C[i] * 0.5f;
    be->gemm(be, 0, 0, M, N, 0, 1.0f, A, B, 0.5f, C);
    check_exact(tc, C, want, (size_t)M * N, "gemm K=0 gives beta * C");
    fill_nan(C, (size_t)M * N);
    for (int i = 0; i < M * N; i++) want[i] = 0.0f;
    be->gemm(be, 0, 0, M, N, 0, 1.0f, A, B, 0.0f, C);
    check_exact(tc, C, want, (size_t)M * N, "gemm K=0 beta=0 gives 0");
    be->free(be, A), be->free(be, B), be->free(be, C);
}

static void test_add_scale_sumsq(TestCounts *tc, Backend *be) {
    size_t n = 100003;  // above the parallel threshold, not a multiple of the sumsq block
    float *x = falloc(be, n), *y = falloc(be, n), *want = falloc(be, n);
    Rand r = {13};
    fill(x, n, -2, 2, &r);
    fill(y, n, -2, 2, &r);
    for (size_t i = 0; i < n; i++) want[i] = y[i] + x[i];
    be->add(be, y, x, n);
    check_exact(tc, y, want, n, "add y += x");
    for (size_t i = 0; i < n; i++) want[i] = y[i] * -0.37f;
    be->scale(be, y, -0.37f, n);
    check_exact(tc, y, want, n, "scale x *= s");

    Backend b1, b2;
    backend_cpu_init(&b1, 1);
    backend_cpu_init(&b2, 2);
    T_CHECK(tc, b1.threads == 1 && b2.threads == 2, "backend_cpu_init: threads %d %d", b1.threads, b2.threads);
    const size_t ns[4] = {0, 5, 4096, 100003};
    for (int t = 0; t < 4; t++) {
        double ref = 0.0;
        for (size_t i = 0; i < ns[t]; i++) ref += (double)x[i] * x[i];
        double s1 = b1.sumsq(&b1, x, ns[t]), s2 = b2.sumsq(&b2, x, ns[t]);
        T_CHECK(tc, s1 == s2, "sumsq n=%zu: 1 thread %.17g != 2 threads %.17g", ns[t], s1, s2);
        T_CHECK(tc, fabs(s1 - ref) <= 1e-12 * (ref + 1e-300) || (ref == 0.0 && s1 == 0.0),
                "sumsq n=%zu: %.17g vs double %.17g", ns[t], s1, ref);
    }
    backend_free(&b1);
    backend_free(&b2);
    reinit(be);  // restore the shared OpenBLAS / OpenMP thread counts
    be->free(be, x);
    be->free(be, y);
    be->free(be, want);
}

// random init: exactly mean + std * rng_normal(key, i), independent of the threads, N(mean, std)
static void test_randn(TestCounts *tc, Backend *be) {
    size_t n = 200003;
    float *x = falloc(be, n);
    be->randn(be, x, n, 1.5f, 0.25f, 42);
    int exact = 1;
    double s = 0.0, ss = 0.0;
    for (size_t i = 0; i < n; i++) {
        exact &= x[i] == 1.5f + 0.25f * rng_normal(42, i);
        s += x[i];
        ss += ((double)x[i] - 1.5) * ((double)x[i] - 1.5);
    }
    T_CHECK(tc, exact, "randn: x[i] != mean + std * rng_normal(key, i)");
    double mean = s / n, sd = sqrt(ss / n);
    T_CHECK(tc, fabs(mean - 1.5) < 0.002 && fabs(sd - 0.25) < 0.002, "randn: mean %.5f sd %.5f, want 1.5 / 0.25", mean,
            sd);
    Backend b1;
    backend_cpu_init(&b1, 1);
    float *y = falloc(&b1, n);
    b1.randn(&b1, y, n, 1.5f, 0.25f, 42);
    T_CHECK(tc, memcmp(x, y, n * sizeof(float)) == 0, "randn depends on the thread count");
    b1.free(&b1, y);
    backend_free(&b1);
    reinit(be);
    be->free(be, x);
}

// masked per-row L2 norms summed (the calibration probe): vs double, and thread-independent
static void test_row_norm_sum(TestCounts *tc, Backend *be) {
    int N = 131, C = 37;
    float *x = falloc(be, (size_t)N * C);
    int32_t mask[131];
    Rand r = {29};
    fill(x, (size_t)N * C, -3, 3, &r);
    double ref = 0.0;
    for (int n = 0; n < N; n++) {
        mask[n] = (n % 5) != 2;  // every fifth row is padding and must not count
        if (!mask[n]) continue;
        double s = 0.0;
        for (int c = 0; c < C; c++) s += (double)x[n * C + c] * x[n * C + c];
        ref += sqrt(s);
    }
    double got = be->row_norm_sum(be, x, mask, N, C);
    T_CHECK(tc, fabs(got - ref) <= 1e-12 * ref, "row_norm_sum %.17g vs double %.17g", got, ref);
    Backend b1;
    backend_cpu_init(&b1, 1);
    double one = b1.row_norm_sum(&b1, x, mask, N, C);
    backend_free(&b1);
    reinit(be);
    T_CHECK(tc, one == got, "row_norm_sum: 1 thread %.17g != %d threads %.17g", one, be->threads, got);
    be->free(be, x);
}

// ------------------------------------------------------------------------------ embedding, rmsnorm, rope

static void test_embedding(TestCounts *tc, Backend *be) {
    int V = 11, C = 5, N = 9;
    int32_t ids[9] = {3, 0, 10, 3, 7, 1, 9, 10, 2};
    float *wte = falloc(be, (size_t)V * C), *out = falloc(be, (size_t)N * C), want[45];
    Rand r = {17};
    fill(wte, (size_t)V * C, -1, 1, &r);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) want[n * C + c] = wte[ids[n] * C + c];
    be->embedding_fwd(be, out, ids, wte, N, C);
    check_exact(tc, out, want, (size_t)N * C, "embedding_fwd");
    be->free(be, wte);
    be->free(be, out);
}

typedef struct {
    int N, C;
    double eps;
    const double *w, *G;  // G: the upstream gradient dout; loss = sum G * out
} RmsCtx;

static void naive_rmsnorm(double *out, double *rstd, const double *x, const double *w, int N, int C, double eps) {
    for (int n = 0; n < N; n++) {
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += x[n * C + c] * x[n * C + c];
        double rs = 1.0 / sqrt(ss / C + eps);
        if (rstd) rstd[n] = rs;
        for (int c = 0; c < C; c++) out[n * C + c] = x[n * C + c] * rs * w[c];
    }
}

static double rms_loss(void *vctx, const double *x) {
    RmsCtx *c = (RmsCtx *)vctx;
    double *out = dalloc((size_t)c->N * c->C), L = 0.0;
    naive_rmsnorm(out, NULL, x, c->w, c->N, c->C, c->eps);
    for (int i = 0; i < c->N * c->C; i++) L += c->G[i] * out[i];
    free(out);
    return L;
}

static void test_rmsnorm(TestCounts *tc, Backend *be) {
    int N = 5, C = 37;
    float eps = 1e-5f;
    size_t n = (size_t)N * C;
    Rand r = {19};
    float *x = falloc(be, n), *w = falloc(be, C), *out = falloc(be, n), *rstd = falloc(be, N);
    float *dout = falloc(be, n), *dinp = falloc(be, n), *acc = falloc(be, n), *want = falloc(be, n);
    fill(x, n, -1, 1, &r);
    fill(w, C, 0.5, 1.5, &r);
    fill(dout, n, -1, 1, &r);
    double *xd = to_d(x, n), *wd = to_d(w, C), *Gd = to_d(dout, n), *outd = dalloc(n), *rstdd = dalloc(N);
    naive_rmsnorm(outd, rstdd, xd, wd, N, C, eps);
    be->rmsnorm_fwd(be, out, rstd, x, w, N, C, eps);
    check_close(tc, out, outd, n, 1e-5, 1e-2, "rmsnorm_fwd out");
    check_close(tc, rstd, rstdd, N, 1e-5, 0.0, "rmsnorm_fwd rstd");

    RmsCtx ctx = {N, C, eps, wd, Gd};
    double *g = dalloc(n);
    fd_grad(rms_loss, &ctx, xd, n, g);
    be->rmsnorm_bwd(be, dinp, dout, x, w, rstd, N, C);  // dinp starts at 0
    check_close(tc, dinp, g, n, 1e-3, 1e-2, "rmsnorm_bwd dinp vs FD");
    fill(acc, n, -0.5, 0.5, &r);  // accumulate: acc += grad
    for (size_t i = 0; i < n; i++) want[i] = acc[i] + dinp[i];
    be->rmsnorm_bwd(be, acc, dout, x, w, rstd, N, C);
    double *wantd = to_d(want, n);
    check_close(tc, acc, wantd, n, 1e-6, 1e-3, "rmsnorm_bwd accumulates (+=)");
    free(xd), free(wd), free(Gd), free(outd), free(rstdd), free(g), free(wantd);
    be->free(be, x), be->free(be, w), be->free(be, out), be->free(be, rstd);
    be->free(be, dout), be->free(be, dinp), be->free(be, acc), be->free(be, want);
}

typedef struct {
    int B, T, nh, D;
    const float *cs, *sn;  // [T, D/2]
    const double *G;
} RopeCtx;

// explicit 2x2 rotation of each pair (x[i], x[i + D/2]) by the angle whose cos/sin are tabled
static void naive_rope(double *y, const double *x, const RopeCtx *c) {
    int half = c->D / 2;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->T; t++)
            for (int h = 0; h < c->nh; h++) {
                size_t o = (((size_t)b * c->T + t) * c->nh + h) * c->D;
                for (int i = 0; i < half; i++) {
                    double co = c->cs[t * half + i], si = c->sn[t * half + i];
                    double R[2][2] = {{co, -si}, {si, co}};
                    double a = x[o + i], bb = x[o + half + i];
                    y[o + i] = R[0][0] * a + R[0][1] * bb;
                    y[o + half + i] = R[1][0] * a + R[1][1] * bb;
                }
            }
}

static double rope_loss(void *vctx, const double *x) {
    RopeCtx *c = (RopeCtx *)vctx;
    size_t n = (size_t)c->B * c->T * c->nh * c->D;
    double *y = dalloc(n), L = 0.0;
    naive_rope(y, x, c);
    for (size_t i = 0; i < n; i++) L += c->G[i] * y[i];
    free(y);
    return L;
}

static void test_rope(TestCounts *tc, Backend *be) {
    int B = 2, T = 7, nh = 3, D = 6, half = D / 2;
    size_t n = (size_t)B * T * nh * D;
    float *cs = falloc(be, (size_t)T * half), *sn = falloc(be, (size_t)T * half);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double ang = t * pow(10000.0, -2.0 * i / D);
            cs[t * half + i] = (float)cos(ang);
            sn[t * half + i] = (float)sin(ang);
        }
    Rand r = {23};
    float *x = falloc(be, n), *x0 = falloc(be, n), *dy = falloc(be, n);
    fill(x, n, -1, 1, &r);
    memcpy(x0, x, n * sizeof(float));
    fill(dy, n, -1, 1, &r);
    double *xd = to_d(x, n), *yd = dalloc(n), *Gd = to_d(dy, n), *g = dalloc(n);
    RopeCtx ctx = {B, T, nh, D, cs, sn, Gd};
    naive_rope(yd, xd, &ctx);
    be->rope_fwd(be, x, cs, sn, B, T, nh, D);
    check_close(tc, x, yd, n, 1e-5, 1e-2, "rope_fwd vs explicit rotation");
    fd_grad(rope_loss, &ctx, xd, n, g);
    be->rope_bwd(be, dy, cs, sn, B, T, nh, D);
    check_close(tc, dy, g, n, 1e-3, 1e-2, "rope_bwd vs FD");
    be->rope_bwd(be, x, cs, sn, B, T, nh, D);  // inverse rotation undoes the forward
    double *x0d = to_d(x0, n);
    check_close(tc, x, x0d, n, 1e-5, 1e-2, "rope_bwd(rope_fwd(x)) == x");
    free(xd), free(yd), free(Gd), free(g), free(x0d);
    be->free(be, cs), be->free(be, sn), be->free(be, x), be->free(be, x0), be->free(be, dy);
}

// ------------------------------------------------------------------------------ attention

typedef struct {
    int B, T, H, KVH, D;
    const int32_t *mask;
    const double *G;  // dout
} AttnCtx;

// explicit per-element visibility; x = [q | k | v]
static void naive_attention(double *out, double *probs, const double *q, const double *k, const double *v,
                            const AttnCtx *c) {
    int B = c->B, T = c->T, H = c->H, KVH = c->KVH, D = c->D;
    double *s = dalloc(T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int g = h / (H / KVH);
            for (int i = 0; i < T; i++) {
                double mx = -INFINITY;
                for (int j = 0; j < T; j++) {
                    int visible = j <= i && c->mask[b * T + j] == 1;
                    s[j] = -INFINITY;
                    if (!visible) continue;
                    double dot = 0.0;
                    for (int d = 0; d < D; d++)
                        dot += q[(((size_t)b * T + i) * H + h) * D + d] * k[(((size_t)b * T + j) * KVH + g) * D + d];
                    s[j] = dot / sqrt((double)D);
                    mx = fmax(mx, s[j]);
                }
                double sum = 0.0;
                for (int j = 0; j < T; j++) sum += mx == -INFINITY ? 0.0 : exp(s[j] - mx);
                for (int d = 0; d < D; d++) out[(((size_t)b * T + i) * H + h) * D + d] = 0.0;
                for (int j = 0; j < T; j++) {
                    double p = (mx == -INFINITY) ? 0.0 : exp(s[j] - mx) / sum;
                    if (probs) probs[(((size_t)b * H + h) * T + i) * T + j] = p;
                    for (int d = 0; d < D; d++)
                        out[(((size_t)b * T + i) * H + h) * D + d] += p * v[(((size_t)b * T + j) * KVH + g) * D + d];
                }
            }
        }
    free(s);
}

static double attn_loss(void *vctx, const double *x) {
    AttnCtx *c = (AttnCtx *)vctx;
    size_t nq = (size_t)c->B * c->T * c->H * c->D, nk = (size_t)c->B * c->T * c->KVH * c->D;
    double *out = dalloc(nq), L = 0.0;
    naive_attention(out, NULL, x, x + nq, x + nq + nk, c);
    for (size_t i = 0; i < nq; i++) L += c->G[i] * out[i];
    free(out);
    return L;
}

static void test_attention_case(TestCounts *tc, Backend *be, Backend *be1, int B, int T, int H, int KVH, int D,
                                const int32_t *mask, uint64_t seed) {
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KVH * D, np = (size_t)B * H * T * T;
    char what[128];
    Rand r = {seed};
    float *q = falloc(be, nq), *k = falloc(be, nk), *v = falloc(be, nk), *out = falloc(be, nq);
    float *probs = falloc(be, np), *dout = falloc(be, nq), *dq = falloc(be, nq), *dk = falloc(be, nk),
          *dv = falloc(be, nk);
    fill(q, nq, -1.5, 1.5, &r);
    fill(k, nk, -1.5, 1.5, &r);
    fill(v, nk, -1, 1, &r);
    fill(dout, nq, -1, 1, &r);
    fill_nan(out, nq);  // forward and backward outputs are overwritten
    fill_nan(probs, np);
    fill_nan(dq, nq), fill_nan(dk, nk), fill_nan(dv, nk);

    double *x = dalloc(nq + 2 * nk), *outd = dalloc(nq), *probsd = dalloc(np), *Gd = to_d(dout, nq);
    for (size_t i = 0; i < nq; i++) x[i] = q[i];
    for (size_t i = 0; i < nk; i++) x[nq + i] = k[i], x[nq + nk + i] = v[i];
    AttnCtx ctx = {B, T, H, KVH, D, mask, Gd};
    naive_attention(outd, probsd, x, x + nq, x + nq + nk, &ctx);

    be->attention_fwd(be, out, probs, q, k, v, mask, B, T, H, KVH, D);
    snprintf(what, sizeof what, "attention_fwd out B%d T%d H%d KVH%d D%d", B, T, H, KVH, D);
    check_close(tc, out, outd, nq, 1e-5, 1e-2, what);
    snprintf(what, sizeof what, "attention_fwd probs B%d T%d H%d KVH%d D%d", B, T, H, KVH, D);
    check_close(tc, probs, probsd, np, 1e-5, 1e-2, what);
    // masked probabilities are exactly 0, rows without a visible key give exactly 0 output
    size_t bad_p = 0, bad_o = 0, n_empty = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                int any = 0;
                for (int j = 0; j < T; j++) {
                    int visible = j <= i && mask[b * T + j] == 1;
                    any |= visible;
                    if (!visible && probs[(((size_t)b * H + h) * T + i) * T + j] != 0.0f) bad_p++;
                }
                if (!any) {
                    n_empty++;
                    for (int d = 0; d < D; d++)
                        if (out[(((size_t)b * T + i) * H + h) * D + d] != 0.0f) bad_o++;
                }
            }
    T_CHECK(tc, bad_p == 0, "attention_fwd: %zu masked probabilities are not exactly 0", bad_p);
    T_CHECK(tc, bad_o == 0, "attention_fwd: %zu outputs of fully masked rows are not exactly 0 (%zu rows)", bad_o, n_empty);

    be->attention_bwd(be, dq, dk, dv, dout, probs, q, k, v, B, T, H, KVH, D);
    double *g = dalloc(nq + 2 * nk);
    fd_grad(attn_loss, &ctx, x, nq + 2 * nk, g);
    snprintf(what, sizeof what, "attention_bwd dq vs FD (T%d H%d KVH%d)", T, H, KVH);
    check_close(tc, dq, g, nq, 1e-3, 1e-2, what);
    snprintf(what, sizeof what, "attention_bwd dk vs FD (T%d H%d KVH%d)", T, H, KVH);
    check_close(tc, dk, g + nq, nk, 1e-3, 1e-2, what);
    snprintf(what, sizeof what, "attention_bwd dv vs FD (T%d H%d KVH%d)", T, H, KVH);
    check_close(tc, dv, g + nq + nk, nk, 1e-3, 1e-2, what);

    // deterministic: a 1-thread backend gives bitwise the same forward and backward
    float *out1 = falloc(be, nq), *probs1 = falloc(be, np), *dq1 = falloc(be, nq), *dk1 = falloc(be, nk),
          *dv1 = falloc(be, nk);
    be1->attention_fwd(be1, out1, probs1, q, k, v, mask, B, T, H, KVH, D);
    be1->attention_bwd(be1, dq1, dk1, dv1, dout, probs1, q, k, v, B, T, H, KVH, D);
    check_exact(tc, out1, out, nq, "attention_fwd out: 1 thread == N threads");
    check_exact(tc, probs1, probs, np, "attention_fwd probs: 1 thread == N threads");
    check_exact(tc, dq1, dq, nq, "attention_bwd dq: 1 thread == N threads");
    check_exact(tc, dk1, dk, nk, "attention_bwd dk: 1 thread == N threads");
    check_exact(tc, dv1, dv, nk, "attention_bwd dv: 1 thread == N threads");

    free(x), free(outd), free(probsd), free(Gd), free(g);
    float *bufs[] = {q, k, v, out, probs, dout, dq, dk, dv, out1, probs1, dq1, dk1, dv1};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->free(be, bufs[i]);
}

static void test_attention(TestCounts *tc, Backend *be) {
    Backend be1;
    backend_cpu_init(&be1, 1);
    // GQA H=4, KVH=2; batch 1 is left-padded (rows 0-1 see no key) with a padded token at 5
    const int32_t m1[2 * 7] = {1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1};
    test_attention_case(tc, be, &be1, 2, 7, 4, 2, 6, m1, 101);
    // MQA (KVH=1), T=40 spans two 32-row blocks; left and right padding
    int32_t m2[40];
    for (int t = 0; t < 40; t++) m2[t] = t >= 3 && t < 35 && t != 20;
    test_attention_case(tc, be, &be1, 1, 40, 3, 1, 8, m2, 103);
    // T=70: three row blocks, the whole first block of batch 0 sees no key (33 left pads)
    int32_t m4[2 * 70];
    for (int t = 0; t < 140; t++) m4[t] = t >= 33;
    test_attention_case(tc, be, &be1, 2, 70, 3, 1, 4, m4, 109);
    // plain multi-head (H == KVH), odd D
    const int32_t m3[3 * 5] = {1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1};
    test_attention_case(tc, be, &be1, 3, 5, 2, 2, 5, m3, 107);
    backend_free(&be1);
    reinit(be);  // restore the shared OpenBLAS / OpenMP thread counts
}

// ------------------------------------------------------------------------------ swiglu, dropout

static double naive_swiglu(double g, double u) { return g / (1.0 + exp(-g)) * u; }

static void test_swiglu(TestCounts *tc, Backend *be) {
    size_t n = 1001;
    Rand r = {29};
    float *gate = falloc(be, n), *up = falloc(be, n), *h = falloc(be, n), *dh = falloc(be, n);
    float *dgate = falloc(be, n), *dup = falloc(be, n);
    fill(gate, n, -8, 8, &r);
    fill(up, n, -2, 2, &r);
    fill(dh, n, -1, 1, &r);
    double *hd = dalloc(n), *gg = dalloc(n), *gu = dalloc(n);
    for (size_t i = 0; i < n; i++) {
        double g = gate[i], u = up[i];
        hd[i] = naive_swiglu(g, u);
        // elementwise op: FD of sum dh * h reduces to FD of each element
        gg[i] = dh[i] * (naive_swiglu(g + FD_EPS, u) - naive_swiglu(g - FD_EPS, u)) / (2 * FD_EPS);
        gu[i] = dh[i] * (naive_swiglu(g, u + FD_EPS) - naive_swiglu(g, u - FD_EPS)) / (2 * FD_EPS);
    }
    be->swiglu_fwd(be, h, gate, up, n);
    check_close(tc, h, hd, n, 1e-5, 1e-2, "swiglu_fwd");
    fill_nan(dgate, n), fill_nan(dup, n);  // overwritten
    be->swiglu_bwd(be, dgate, dup, dh, gate, up, n);
    check_close(tc, dgate, gg, n, 1e-3, 1e-2, "swiglu_bwd dgate vs FD");
    check_close(tc, dup, gu, n, 1e-3, 1e-2, "swiglu_bwd dup vs FD");
    free(hd), free(gg), free(gu);
    be->free(be, gate), be->free(be, up), be->free(be, h), be->free(be, dh);
    be->free(be, dgate), be->free(be, dup);
}

static void test_dropout(TestCounts *tc, Backend *be) {
    size_t n = 100001;
    Rand r = {31};
    float *x = falloc(be, n), *y = falloc(be, n), *y2 = falloc(be, n), *y3 = falloc(be, n);
    fill(x, n, 0.5, 2, &r);  // nonzero, so a dropped element is recognizable
    be->dropout(be, y, x, n, 0.0f, 1234);
    check_exact(tc, y, x, n, "dropout p=0 copies");
    memcpy(y2, x, n * sizeof(float));
    be->dropout(be, y2, y2, n, 0.0f, 1234);
    check_exact(tc, y2, x, n, "dropout p=0 in place is identity");

    uint64_t key = rng_key(rng_key(42, 3), 7);
    be->dropout(be, y, x, n, 0.5f, key);
    size_t kept = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        int keep = rng_uniform(key, i) >= 0.5f;
        kept += keep;
        if (y[i] != (keep ? x[i] * 2.0f : 0.0f)) bad++;
    }
    double frac = (double)kept / n;
    T_CHECK(tc, frac > 0.48 && frac < 0.52, "dropout p=0.5 kept fraction %.4f", frac);
    T_CHECK(tc, bad == 0, "dropout p=0.5: %zu elements are not (u >= p ? 2x : 0)", bad);
    memcpy(y2, x, n * sizeof(float));
    be->dropout(be, y2, y2, n, 0.5f, key);
    check_exact(tc, y2, y, n, "dropout in place == out of place, same key");
    be->dropout(be, y3, x, n, 0.5f, key + 1);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) differ += y3[i] != y[i];
    T_CHECK(tc, differ > n / 4, "dropout: another key changes only %zu of %zu elements", differ, n);
    be->dropout(be, y3, x, n, 0.1f, key);  // survivors scaled by exactly 1/(1-p)
    bad = 0;
    for (size_t i = 0; i < n; i++)
        if (y3[i] != (rng_uniform(key, i) >= 0.1f ? x[i] / (1.0f - 0.1f) : 0.0f)) bad++;
    T_CHECK(tc, bad == 0, "dropout p=0.1: %zu elements are not x / (1-p) or 0", bad);
    be->free(be, x), be->free(be, y), be->free(be, y2), be->free(be, y3);
}

// ------------------------------------------------------------------------------ head: pool_last, loss

typedef struct {
    int B, T, C;
    const int32_t *last;
    const double *G;
} PoolCtx;

static double pool_loss(void *vctx, const double *x) {
    PoolCtx *c = (PoolCtx *)vctx;
    double L = 0.0;
    for (int b = 0; b < c->B; b++)
        for (int k = 0; k < c->C; k++) L += c->G[b * c->C + k] * x[((size_t)b * c->T + c->last[b]) * c->C + k];
    return L;
}

static void test_pool_last(TestCounts *tc, Backend *be) {
    int B = 3, T = 5, C = 7;
    int32_t last[3] = {4, 0, 2};
    size_t nx = (size_t)B * T * C;
    Rand r = {37};
    float *x = falloc(be, nx), *pooled = falloc(be, (size_t)B * C), *dp = falloc(be, (size_t)B * C);
    float *dx = falloc(be, nx), *acc = falloc(be, nx), want[21];
    fill(x, nx, -1, 1, &r);
    fill(dp, (size_t)B * C, -1, 1, &r);
    for (int b = 0; b < B; b++)
        for (int k = 0; k < C; k++) want[b * C + k] = x[((size_t)b * T + last[b]) * C + k];
    be->pool_last_fwd(be, pooled, x, last, B, T, C);
    check_exact(tc, pooled, want, (size_t)B * C, "pool_last_fwd");
    double *xd = to_d(x, nx), *Gd = to_d(dp, (size_t)B * C), *g = dalloc(nx);
    PoolCtx ctx = {B, T, C, last, Gd};
    fd_grad(pool_loss, &ctx, xd, nx, g);
    be->pool_last_bwd(be, dx, dp, last, B, T, C);
    check_close(tc, dx, g, nx, 1e-3, 1e-2, "pool_last_bwd vs FD");
    fill(acc, nx, -1, 1, &r);
    double *wantd = dalloc(nx);
    for (size_t i = 0; i < nx; i++) wantd[i] = (double)acc[i] + g[i];
    be->pool_last_bwd(be, acc, dp, last, B, T, C);
    check_close(tc, acc, wantd, nx, 1e-6, 1e-3, "pool_last_bwd accumulates (+=)");
    free(xd), free(Gd), free(g), free(wantd);
    be->free(be, x), be->free(be, pooled), be->free(be, dp), be->free(be, dx), be->free(be, acc);
}

typedef struct {
    int B, K;
    const int32_t *li;
    const float *lf;
    double scale;
} LossCtx;

static double naive_loss(void *vctx, const double *z) {
    LossCtx *c = (LossCtx *)vctx;
    double L = 0.0;
    for (int b = 0; b < c->B; b++) {
        if (c->K == 1) {
            L += (z[b] - c->lf[b]) * (z[b] - c->lf[b]);
            continue;
        }
        double mx = -INFINITY, s = 0.0;
        for (int k = 0; k < c->K; k++) mx = fmax(mx, z[b * c->K + k]);
        for (int k = 0; k < c->K; k++) s += exp(z[b * c->K + k] - mx);
        L += mx + log(s) - z[b * c->K + c->li[b]];
    }
    return c->scale * L;
}

static void test_loss(TestCounts *tc, Backend *be) {
    Rand r = {41};
    float gs = 0.37f;
    {  // cross-entropy, one row with huge logits to exercise log-sum-exp
        int B = 6, K = 5;
        int32_t li[6] = {0, 4, 2, 2, 1, 3};
        float *z = falloc(be, (size_t)B * K), *dz = falloc(be, (size_t)B * K);
        fill(z, (size_t)B * K, -4, 4, &r);
        z[5 * K + 1] = 95.0f, z[5 * K + 3] = 93.5f, z[5 * K + 0] = -60.0f;
        double *zd = to_d(z, (size_t)B * K), *g = dalloc((size_t)B * K), loss = 0.0;
        LossCtx ctx = {B, K, li, NULL, 1.0};
        double ref = naive_loss(&ctx, zd);
        fill_nan(dz, (size_t)B * K);  // overwritten
        be->loss_fwd_bwd(be, &loss, dz, z, li, NULL, B, K, gs);
        T_CHECK(tc, fabs(loss - ref) <= 1e-9 * fabs(ref), "CE loss_sum %.17g vs %.17g", loss, ref);
        ctx.scale = gs;
        fd_grad(naive_loss, &ctx, zd, (size_t)B * K, g);
        check_close(tc, dz, g, (size_t)B * K, 1e-3, 1e-2, "loss_fwd_bwd CE dlogits vs FD");
        free(zd), free(g);
        be->free(be, z), be->free(be, dz);
    }
    {  // squared error
        int B = 7;
        float lf[7];
        float *z = falloc(be, B), *dz = falloc(be, B);
        fill(z, B, -2, 2, &r);
        fill(lf, B, -2, 2, &r);
        double *zd = to_d(z, B), *g = dalloc(B), loss = 0.0;
        LossCtx ctx = {B, 1, NULL, lf, 1.0};
        double ref = naive_loss(&ctx, zd);
        fill_nan(dz, B);
        be->loss_fwd_bwd(be, &loss, dz, z, NULL, lf, B, 1, gs);
        T_CHECK(tc, fabs(loss - ref) <= 1e-9 * fabs(ref), "MSE loss_sum %.17g vs %.17g", loss, ref);
        ctx.scale = gs;
        fd_grad(naive_loss, &ctx, zd, B, g);
        check_close(tc, dz, g, B, 1e-3, 1e-2, "loss_fwd_bwd MSE dlogits vs FD");
        free(zd), free(g);
        be->free(be, z), be->free(be, dz);
    }
}

// ------------------------------------------------------------------------------ death tests

typedef struct {
    Backend *be;
    int which;
} DeathCtx;

static void death_fn(void *vctx) {
    DeathCtx *c = (DeathCtx *)vctx;
    Backend *be = c->be;
    float z[6] = {0}, dz[6], x[12] = {0}, p[2];
    double loss;
    int32_t li[2] = {1, 3}, last[2] = {0, 6};
    if (c->which == 0) be->loss_fwd_bwd(be, &loss, dz, z, li, NULL, 2, 3, 1.0f);
    if (c->which == 1) be->pool_last_fwd(be, p, x, last, 2, 6, 1);
    if (c->which == 2) be->alloc(be, SIZE_MAX / 2, "the giant test buffer");
}

static void test_deaths(TestCounts *tc, Backend *be) {
    DeathCtx c0 = {be, 0}, c1 = {be, 1}, c2 = {be, 2};
    expect_death(tc, death_fn, &c0, "row 1 has label 3", "loss_fwd_bwd label out of range");
    expect_death(tc, death_fn, &c1, "row 1 pools position 6", "pool_last_fwd position out of range");
    expect_death(tc, death_fn, &c2, "the giant test buffer", "alloc failure names the buffer");
}

// ------------------------------------------------------------------------------ AdamW

static void test_adamw(TestCounts *tc, Backend *be) {
    size_t n = 37;
    float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f;
    Rand r = {43};
    float *p = falloc(be, n), *g = falloc(be, n), *m = falloc(be, n), *v = falloc(be, n);
    fill(p, n, -1, 1, &r);
    double *pd = to_d(p, n), *md = dalloc(n), *vd = dalloc(n);
    for (int t = 1; t <= 5; t++) {
        fill(g, n, -1, 1, &r);
        g[0] = 0.0f;               // zero gradient: only decay and momentum move it
        g[1] = 1e-3f * (float)t;  // tiny gradient
        // torch.optim.AdamW, in double
        double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
        for (size_t i = 0; i < n; i++) {
            pd[i] *= 1.0 - (double)lr * wd;
            md[i] = b1 * md[i] + (1.0 - b1) * g[i];
            vd[i] = b2 * vd[i] + (1.0 - b2) * (double)g[i] * g[i];
            pd[i] -= (double)lr / bc1 * md[i] / (sqrt(vd[i]) / sqrt(bc2) + eps);
        }
        be->adamw(be, p, g, m, v, n, lr, b1, b2, eps, wd, t);
    }
    check_close(tc, p, pd, n, 1e-5, 1e-3, "adamw p after 5 steps");
    check_close(tc, m, md, n, 1e-5, 1e-3, "adamw m after 5 steps");
    check_close(tc, v, vd, n, 1e-5, 1e-3, "adamw v after 5 steps");
    free(pd), free(md), free(vd);
    be->free(be, p), be->free(be, g), be->free(be, m), be->free(be, v);
}

int main(int argc, char **argv) {
    (void)argc, (void)argv;
    TestCounts tc = {0, 0};
    Backend be;
    backend_cpu_init(&be, 0);
    T_CHECK(&tc, be.threads >= 1 && strcmp(be.name, "cpu") == 0, "backend_cpu_init: name %s threads %d", be.name,
            be.threads);
    printf("cpu backend, %d threads\n", be.threads);
    // the BLAS threads: where the build found OpenBLAS's OpenMP build it must be the one loaded (RPATH,
    // CMakeLists.txt), else its pthreads and the ops' OpenMP threads spin against each other
    int blas = backend_cpu_blas_threading();
    printf("OpenBLAS threading: %s\n", blas == 2 ? "OpenMP" : blas == 1 ? "pthreads" : "sequential");
#ifdef ACTLORA_EXPECT_BLAS_OPENMP
    const char *ldp = getenv("LD_LIBRARY_PATH");
    T_CHECK(&tc, blas == 2 || (ldp && strstr(ldp, "openblas")), "the build found OpenBLAS's OpenMP build, but the loaded "
            "OpenBLAS runs %s (openblas_get_parallel %d): is the RPATH lost?", blas == 1 ? "pthreads" : "no threads",
            blas);
#endif
    test_memory(&tc, &be);
    test_gemm(&tc, &be);
    test_gemm_edges(&tc, &be);
    test_add_scale_sumsq(&tc, &be);
    test_row_norm_sum(&tc, &be);
    test_randn(&tc, &be);
    test_embedding(&tc, &be);
    test_rmsnorm(&tc, &be);
    test_rope(&tc, &be);
    test_attention(&tc, &be);
    test_swiglu(&tc, &be);
    test_dropout(&tc, &be);
    test_pool_last(&tc, &be);
    test_loss(&tc, &be);
    test_adamw(&tc, &be);
    test_deaths(&tc, &be);
    backend_free(&be);
    return t_finish(&tc, "test_backend_ops");
}
