// test_backend_cuda_enc.c: the CUDA backend's encoder ops (src/cuda/encoder.cu: embedding_add,
// layernorm_fwd/bwd, bias_add, bias_grad, gelu_fwd/bwd, tanh_fwd/bwd, mask_rows, attention_enc_fwd/bwd)
// against the CPU reference backend (backend_cpu_enc.c), op by op on random inputs. Exits 77
// (skipped) when the build has no CUDA backend or no GPU is visible.
//
// Every GPU op runs twice on the same inputs and the two results must be bitwise equal (the backend's
// determinism promise). Outputs the ops overwrite start as NaN on the GPU, so an element a kernel
// forgets to write fails the comparison. The worst error of each op over all its cases is printed
// at the end as one line "enc-op <name> rel <err>" (the GPU run's log keeps the numbers).
//
// Measure (T_CLOSE's, but NaN-safe): rel = max_i |gpu_i - cpu_i| / (|cpu_i| + a * max_j |cpu_j|), with
//   a = 1e-3 for elementwise and row ops (an element-wise bound, tiny values excepted);
//   a = 1e-2 for gelu_bwd (gelu' has a root near x = -0.75, where both sides round O(0.3) terms);
//   a = 1 for the attention outputs (sums over T keys or B*T*T/P pairs with cancellation: about
//     max |diff| / max |cpu|, the norm measure test_backend_cuda uses for attention).
// Tolerances: mask_rows exact (0); embedding_add, bias_add, bias_grad 1e-6 (the CPU's arithmetic,
// fp64 column sums); everything else 1e-5.
//
// Attention cases: no relative terms, c2p only (pk), p2c only (pq), both; T in {7, 128}; H 3..12;
// D 32 / 40 / 64; idx = clamp(i - j + P/2, 0, P-1) (P = 2 * span, clamped at both ends) or random in
// [0, P); key padding: right padding per row, a masked key inside row 0, a mask value 2 (visible),
// and a fully padded row (no visible key: zero output and probabilities, checked explicitly).
// The backward gets the CPU's probabilities on both sides, so it is checked on its own.
// On a GPU the test also times attention_enc_fwd/bwd at DeBERTa-v3-base shapes (B 8, T 512, H 12, D 64,
// P 512, both terms; log-bucket and clamped idx) and prints the milliseconds (no threshold); not on the CUDA
// emulator (test_backend_cuda_enc_emu, docs/emulator.md), where time says nothing.
//
// ACTLORA_TEST_HARNESS_ON_CPU=1 runs every comparison with the CPU backend on both sides: a check of
// this test's own code on machines without a GPU.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

#ifdef ACTLORA_HAVE_CUDA
#include "actlora/backend.h"
#include "actlora/backend_cuda.h"
#include "actlora/common.h"
#include "test_fixture.h"  // Rand / rnd

// ------------------------------------------------------------------------------ helpers

enum {
    OP_EMBEDDING_ADD,
    OP_LAYERNORM_FWD,
    OP_LAYERNORM_BWD,
    OP_BIAS_ADD,
    OP_BIAS_GRAD,
    OP_GELU_FWD,
    OP_GELU_BWD,
    OP_TANH_FWD,
    OP_TANH_BWD,
    OP_MASK_ROWS,
    OP_ATTENTION_ENC_FWD,
    OP_ATTENTION_ENC_BWD,
    NOPS
};
static const char *const OP_NAMES[NOPS] = {"embedding_add", "layernorm_fwd", "layernorm_bwd", "bias_add",
                                           "bias_grad",     "gelu_fwd",      "gelu_bwd",      "tanh_fwd",
                                           "tanh_bwd",      "mask_rows",     "attention_enc_fwd",
                                           "attention_enc_bwd"};

typedef struct {
    TestCounts *tc;
    Backend cpu, gpu;
    Rand r;
    int harness;
    double worst[NOPS];  // worst rel error per op over its cases (NaN sticks)
    int checks[NOPS];    // comparisons per op
    int nondet[NOPS];    // GPU outputs that differed between two identical runs
} Ctx;

static float *hrand(Ctx *c, size_t n, double lo, double hi) {
    float *x = xmalloc((n ? n : 1) * sizeof(float), "test host tensor");
    for (size_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * rnd(&c->r));
    return x;
}

static int irand(Ctx *c, int n) {
    int v = (int)(rnd(&c->r) * n);
    return v < n ? v : n - 1;
}

static float *hnan(size_t n) {
    float *x = xmalloc((n ? n : 1) * sizeof(float), "NaN host tensor");
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

// a backend buffer holding a copy of host data
static void *put(Backend *be, const void *h, size_t bytes) {
    void *p = be->alloc(be, bytes, "test tensor");
    if (bytes) be->upload(be, p, h, bytes);
    return p;
}

// a fresh host copy of n floats of GPU memory
static float *from_gpu(Ctx *c, const void *d, size_t n) {
    float *h = xmalloc((n ? n : 1) * sizeof(float), "test download");
    c->gpu.download(&c->gpu, h, d, n * sizeof(float));
    return h;
}

// An input: the same bytes on both backends.
typedef struct {
    void *c, *g;
} In;

static In in_new(Ctx *c, const void *h, size_t bytes) {
    In x = {put(&c->cpu, h, bytes), put(&c->gpu, h, bytes)};
    return x;
}

static void in_free(Ctx *c, In *x) {
    c->cpu.free(&c->cpu, x->c);
    c->gpu.free(&c->gpu, x->g);
}

// An output: one CPU buffer and two GPU buffers (two identical GPU runs). init == NULL: the op
// overwrites it — zeros on the CPU, NaN on the GPU; else every buffer starts as init (accumulating ops).
typedef struct {
    float *c, *g1, *g2;
    size_t n;
} Out;

static Out out_new(Ctx *c, const float *init, size_t n) {
    Out o;
    o.n = n;
    size_t bytes = n * sizeof(float);
    if (init) {
        o.c = put(&c->cpu, init, bytes);
        o.g1 = put(&c->gpu, init, bytes);
        o.g2 = put(&c->gpu, init, bytes);
    } else {
        float *nan = hnan(n);
        o.c = c->cpu.alloc(&c->cpu, bytes, "test output");
        o.g1 = put(&c->gpu, nan, bytes);
        o.g2 = put(&c->gpu, nan, bytes);
        free(nan);
    }
    return o;
}

static void out_free(Ctx *c, Out *o) {
    c->cpu.free(&c->cpu, o->c);
    c->gpu.free(&c->gpu, o->g1);
    c->gpu.free(&c->gpu, o->g2);
}

static void note(Ctx *c, int op, double e) {
    if (!isnan(c->worst[op]) && !(e <= c->worst[op])) c->worst[op] = e;  // NaN is the worst and sticks
    c->checks[op]++;
}

// max_i |a_i - b_i| / (|b_i| + atol) with any NaN / inf mismatch as the worst (NaN). Not test_util.h's
// t_max_rel_err: there a NaN is overwritten by the next finite element, and an unwritten (NaN-poisoned)
// output element would pass.
static double rel_err(const float *a, const float *b, size_t n, double atol, size_t *worst) {
    double m = 0.0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]) / (fabs((double)b[i]) + atol);
        if (isnan(d) || d > m) {
            m = d;
            w = i;
            if (isnan(d)) break;
        }
    }
    if (worst) *worst = w;
    return m;
}

// got (host) against want (host), atol = afrac * max |want|; the T_CLOSE measure, NaN-safe
static void cmp_host(Ctx *c, int op, const float *got, const float *want, size_t n, double tol, double afrac,
                     const char *what) {
    double mx = 0.0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs((double)want[i]));
    double atol = afrac * mx + 1e-30;
    size_t w = 0;
    double e = rel_err(got, want, n, atol, &w);
    T_CHECK(c->tc, e <= tol, "%s: max rel err %.3g > %.3g at [%zu] (gpu %.9g vs cpu %.9g)", what, e, tol, w,
            n ? (double)got[w] : 0.0, n ? (double)want[w] : 0.0);
    printf("  %-64s rel %.2e (tol %.0e)\n", what, e, tol);
    note(c, op, e);
}

// bitwise equality of two host arrays (a GPU result against another GPU result)
static int same_bits(Ctx *c, int op, const float *a, const float *b, size_t n, const char *what) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) {
            if (!bad) first = i;
            bad++;
        }
    T_CHECK(c->tc, bad == 0, "%s: %zu of %zu elements differ, first [%zu] %.9g vs %.9g", what, bad, n, first,
            n ? (double)a[first] : 0.0, n ? (double)b[first] : 0.0);
    if (bad) c->nondet[op]++;
    return bad == 0;
}

// An output after the op ran on the CPU and twice on the GPU: GPU run 1 against the CPU, run 2 against run 1.
static void out_check(Ctx *c, int op, const Out *o, double tol, double afrac, const char *what) {
    float *g1 = from_gpu(c, o->g1, o->n), *g2 = from_gpu(c, o->g2, o->n);
    const float *want = o->c;  // CPU backend memory is host memory
    cmp_host(c, op, g1, want, o->n, tol, afrac, what);
    char w2[200];
    snprintf(w2, sizeof w2, "%s: second GPU run", what);
    same_bits(c, op, g2, g1, o->n, w2);
    free(g1);
    free(g2);
}

// ------------------------------------------------------------------------------ row and elementwise ops

static void test_embedding_add(Ctx *c) {
    printf("embedding_add\n");
    const int shapes[2][3] = {{40, 333, 57}, {7, 1, 5}};  // V, C, N
    for (int s = 0; s < 2; s++) {
        int V = shapes[s][0], C = shapes[s][1], N = shapes[s][2];
        float *table = hrand(c, (size_t)V * C, -1, 1), *init = hrand(c, (size_t)N * C, -1, 1);
        int32_t *ids = xmalloc((size_t)N * sizeof(int32_t), "ids");
        for (int n = 0; n < N; n++) ids[n] = irand(c, V);
        In t = in_new(c, table, (size_t)V * C * 4), id = in_new(c, ids, (size_t)N * 4);
        Out o = out_new(c, init, (size_t)N * C);
        c->cpu.embedding_add(&c->cpu, o.c, id.c, t.c, N, C);
        c->gpu.embedding_add(&c->gpu, o.g1, id.g, t.g, N, C);
        c->gpu.embedding_add(&c->gpu, o.g2, id.g, t.g, N, C);
        char what[96];
        snprintf(what, sizeof what, "embedding_add V%d C%d N%d (accumulates)", V, C, N);
        out_check(c, OP_EMBEDDING_ADD, &o, 1e-6, 1e-3, what);
        out_free(c, &o);
        in_free(c, &t);
        in_free(c, &id);
        free(table), free(init), free(ids);
    }
}

static void test_layernorm(Ctx *c) {
    printf("layernorm\n");
    const int shapes[3][2] = {{37, 768}, {9, 333}, {3, 1}};
    const float epss[3] = {1e-12f, 1e-7f, 1e-5f};
    for (int s = 0; s < 3; s++) {
        int N = shapes[s][0], C = shapes[s][1];
        float eps = epss[s];
        size_t nx = (size_t)N * C;
        float *x = hrand(c, nx, -2, 2), *w = hrand(c, (size_t)C, 0.5, 1.5), *b = hrand(c, (size_t)C, -0.5, 0.5);
        for (int n = 0; n < N; n++)  // a row-dependent offset: the mean matters
            for (int k = 0; k < C; k++) x[(size_t)n * C + k] += (float)(n % 5) - 1.5f;
        In ix = in_new(c, x, nx * 4), iw = in_new(c, w, (size_t)C * 4), ib = in_new(c, b, (size_t)C * 4);
        Out out = out_new(c, NULL, nx), mean = out_new(c, NULL, (size_t)N), rstd = out_new(c, NULL, (size_t)N);
        c->cpu.layernorm_fwd(&c->cpu, out.c, mean.c, rstd.c, ix.c, iw.c, ib.c, N, C, eps);
        c->gpu.layernorm_fwd(&c->gpu, out.g1, mean.g1, rstd.g1, ix.g, iw.g, ib.g, N, C, eps);
        c->gpu.layernorm_fwd(&c->gpu, out.g2, mean.g2, rstd.g2, ix.g, iw.g, ib.g, N, C, eps);
        char what[120];
        snprintf(what, sizeof what, "layernorm_fwd out N%d C%d eps %g", N, C, (double)eps);
        out_check(c, OP_LAYERNORM_FWD, &out, 1e-5, 1e-3, what);
        snprintf(what, sizeof what, "layernorm_fwd mean N%d C%d", N, C);
        out_check(c, OP_LAYERNORM_FWD, &mean, 1e-5, 1e-3, what);
        snprintf(what, sizeof what, "layernorm_fwd rstd N%d C%d", N, C);
        out_check(c, OP_LAYERNORM_FWD, &rstd, 1e-5, 0.0, what);
        // in place (out aliases inp) gives the same bits as out of place
        {
            float *gx = put(&c->gpu, x, nx * 4), *gm = put(&c->gpu, x, (size_t)N * 4), *gr = put(&c->gpu, x, (size_t)N * 4);
            c->gpu.layernorm_fwd(&c->gpu, gx, gm, gr, gx, iw.g, ib.g, N, C, eps);
            float *a = from_gpu(c, gx, nx), *ref = from_gpu(c, out.g1, nx);
            snprintf(what, sizeof what, "layernorm_fwd in place N%d C%d vs out of place", N, C);
            same_bits(c, OP_LAYERNORM_FWD, a, ref, nx, what);
            free(a), free(ref);
            c->gpu.free(&c->gpu, gx), c->gpu.free(&c->gpu, gm), c->gpu.free(&c->gpu, gr);
        }
        // backward, with the CPU's statistics on both sides; dinp accumulates
        float *dy = hrand(c, nx, -1, 1), *dx0 = hrand(c, nx, -1, 1);
        In idy = in_new(c, dy, nx * 4), im = in_new(c, mean.c, (size_t)N * 4), ir = in_new(c, rstd.c, (size_t)N * 4);
        Out dx = out_new(c, dx0, nx);
        c->cpu.layernorm_bwd(&c->cpu, dx.c, idy.c, ix.c, iw.c, im.c, ir.c, N, C);
        c->gpu.layernorm_bwd(&c->gpu, dx.g1, idy.g, ix.g, iw.g, im.g, ir.g, N, C);
        c->gpu.layernorm_bwd(&c->gpu, dx.g2, idy.g, ix.g, iw.g, im.g, ir.g, N, C);
        snprintf(what, sizeof what, "layernorm_bwd dinp N%d C%d (accumulates)", N, C);
        out_check(c, OP_LAYERNORM_BWD, &dx, 1e-5, 1e-3, what);
        out_free(c, &dx);
        in_free(c, &idy), in_free(c, &im), in_free(c, &ir);
        out_free(c, &out), out_free(c, &mean), out_free(c, &rstd);
        in_free(c, &ix), in_free(c, &iw), in_free(c, &ib);
        free(x), free(w), free(b), free(dy), free(dx0);
    }
}

static void test_bias(Ctx *c) {
    printf("bias_add, bias_grad\n");
    {
        int N = 77, C = 1000;
        size_t n = (size_t)N * C;
        float *y = hrand(c, n, -1, 1), *b = hrand(c, (size_t)C, -1, 1);
        In ib = in_new(c, b, (size_t)C * 4);
        Out o = out_new(c, y, n);
        c->cpu.bias_add(&c->cpu, o.c, ib.c, N, C);
        c->gpu.bias_add(&c->gpu, o.g1, ib.g, N, C);
        c->gpu.bias_add(&c->gpu, o.g2, ib.g, N, C);
        out_check(c, OP_BIAS_ADD, &o, 1e-6, 1e-3, "bias_add N77 C1000");
        out_free(c, &o);
        in_free(c, &ib);
        free(y), free(b);
    }
    // rows: one chunk, several chunks (256 rows each), a single row; columns: < 32, not a multiple of 32
    const int shapes[5][2] = {{777, 1000}, {2100, 70}, {1, 7}, {600, 3}, {0, 5}};
    for (int s = 0; s < 5; s++) {
        int N = shapes[s][0], C = shapes[s][1];
        size_t n = (size_t)N * C;
        float *dy = hrand(c, n ? n : 1, -1, 1), *db0 = hrand(c, (size_t)C, -1, 1);
        In idy = in_new(c, dy, (n ? n : 1) * 4);
        Out db = out_new(c, db0, (size_t)C);
        c->cpu.bias_grad(&c->cpu, db.c, idy.c, N, C);
        c->gpu.bias_grad(&c->gpu, db.g1, idy.g, N, C);
        c->gpu.bias_grad(&c->gpu, db.g2, idy.g, N, C);
        char what[96];
        snprintf(what, sizeof what, "bias_grad N%d C%d (accumulates)", N, C);
        out_check(c, OP_BIAS_GRAD, &db, 1e-6, 1e-3, what);
        out_free(c, &db);
        in_free(c, &idy);
        free(dy), free(db0);
    }
}

static void test_gelu_tanh(Ctx *c) {
    printf("gelu, tanh\n");
    size_t n = 100003;
    float *x = hrand(c, n, -6, 6), *dh = hrand(c, n, -1, 1);
    In ix = in_new(c, x, n * 4), idh = in_new(c, dh, n * 4);
    Out h = out_new(c, NULL, n), dx = out_new(c, NULL, n);
    c->cpu.gelu_fwd(&c->cpu, h.c, ix.c, n);
    c->gpu.gelu_fwd(&c->gpu, h.g1, ix.g, n);
    c->gpu.gelu_fwd(&c->gpu, h.g2, ix.g, n);
    out_check(c, OP_GELU_FWD, &h, 1e-5, 1e-3, "gelu_fwd x in [-6, 6]");
    c->cpu.gelu_bwd(&c->cpu, dx.c, idh.c, ix.c, n);
    c->gpu.gelu_bwd(&c->gpu, dx.g1, idh.g, ix.g, n);
    c->gpu.gelu_bwd(&c->gpu, dx.g2, idh.g, ix.g, n);
    out_check(c, OP_GELU_BWD, &dx, 1e-5, 1e-2, "gelu_bwd x in [-6, 6]");
    c->gpu.gelu_fwd(&c->gpu, h.g1, ix.g, 0);  // n == 0 is a no-op
    c->gpu.gelu_bwd(&c->gpu, dx.g1, idh.g, ix.g, 0);
    out_free(c, &h), out_free(c, &dx);
    in_free(c, &ix);
    free(x);

    x = hrand(c, n, -4, 4);
    ix = in_new(c, x, n * 4);
    Out y = out_new(c, NULL, n);
    c->cpu.tanh_fwd(&c->cpu, y.c, ix.c, n);
    c->gpu.tanh_fwd(&c->gpu, y.g1, ix.g, n);
    c->gpu.tanh_fwd(&c->gpu, y.g2, ix.g, n);
    out_check(c, OP_TANH_FWD, &y, 1e-5, 1e-3, "tanh_fwd x in [-4, 4]");
    {  // in place (y aliases x)
        float *gx = put(&c->gpu, x, n * 4);
        c->gpu.tanh_fwd(&c->gpu, gx, gx, n);
        float *a = from_gpu(c, gx, n), *ref = from_gpu(c, y.g1, n);
        same_bits(c, OP_TANH_FWD, a, ref, n, "tanh_fwd in place vs out of place");
        free(a), free(ref);
        c->gpu.free(&c->gpu, gx);
    }
    In iy = in_new(c, y.c, n * 4);  // the CPU's y on both sides
    Out dxt = out_new(c, NULL, n);
    c->cpu.tanh_bwd(&c->cpu, dxt.c, idh.c, iy.c, n);
    c->gpu.tanh_bwd(&c->gpu, dxt.g1, idh.g, iy.g, n);
    c->gpu.tanh_bwd(&c->gpu, dxt.g2, idh.g, iy.g, n);
    out_check(c, OP_TANH_BWD, &dxt, 1e-5, 1e-3, "tanh_bwd");
    out_free(c, &y), out_free(c, &dxt);
    in_free(c, &ix), in_free(c, &iy), in_free(c, &idh);
    free(x), free(dh);
}

static void test_mask_rows(Ctx *c) {
    printf("mask_rows\n");
    int N = 50, C = 129;
    size_t n = (size_t)N * C;
    float *x = hrand(c, n, -1, 1);
    int32_t mask[50];
    for (int i = 0; i < N; i++) mask[i] = (i % 3 == 1) ? 0 : 1;
    mask[4] = 2;  // nonzero: kept
    mask[7] = -1;
    In im = in_new(c, mask, sizeof mask);
    Out o = out_new(c, x, n);
    c->cpu.mask_rows(&c->cpu, o.c, im.c, N, C);
    c->gpu.mask_rows(&c->gpu, o.g1, im.g, N, C);
    c->gpu.mask_rows(&c->gpu, o.g2, im.g, N, C);
    out_check(c, OP_MASK_ROWS, &o, 0.0, 1e-3, "mask_rows N50 C129 (in place)");
    out_free(c, &o);
    in_free(c, &im);
    free(x);
}

// ------------------------------------------------------------------------------ attention

enum { REL_C2P = 1, REL_P2C = 2 };

static const char *rel_name(int rel) {
    static const char *const names[4] = {"none", "c2p", "p2c", "c2p+p2c"};
    return names[rel & 3];
}

// idx_kind 0: clamp(i - j + P/2, 0, P-1); 1: random in [0, P). full_pad: the last batch row has no real token.
static void attention_case(Ctx *c, int B, int T, int H, int D, int rel, int P, int idx_kind, int full_pad) {
    size_t nq = (size_t)B * T * H * D, np = (size_t)B * H * T * T, npd = rel ? (size_t)P * H * D : 0;
    float *q = hrand(c, nq, -1, 1), *k = hrand(c, nq, -1, 1), *v = hrand(c, nq, -1, 1), *dout = hrand(c, nq, -1, 1);
    float *pq = (rel & REL_P2C) ? hrand(c, npd, -1, 1) : NULL, *pk = (rel & REL_C2P) ? hrand(c, npd, -1, 1) : NULL;
    int32_t *mask = xmalloc((size_t)B * T * sizeof(int32_t), "mask");
    for (int b = 0; b < B; b++) {  // right padding, longer rows first
        int len = T - (b * T) / (2 * B);
        if (len < 1) len = 1;
        for (int t = 0; t < T; t++) mask[(size_t)b * T + t] = t < len;
        if (full_pad && b == B - 1)
            for (int t = 0; t < T; t++) mask[(size_t)b * T + t] = 0;
    }
    if (T > 3 && !(full_pad && B == 1)) {
        mask[1] = 0;  // a masked key inside row 0
        mask[2] = 2;  // nonzero: visible
    }
    int32_t *idx = NULL;
    if (rel) {
        idx = xmalloc((size_t)T * T * sizeof(int32_t), "idx");
        for (int i = 0; i < T; i++)
            for (int j = 0; j < T; j++) {
                int p = idx_kind == 0 ? i - j + P / 2 : irand(c, P);
                idx[(size_t)i * T + j] = p < 0 ? 0 : p > P - 1 ? P - 1 : p;
            }
    }
    int nterms = 1 + ((rel & REL_C2P) != 0) + ((rel & REL_P2C) != 0);
    float scale = 1.0f / sqrtf((float)D * (float)nterms);
    char tag[96];
    snprintf(tag, sizeof tag, "B%d T%d H%d D%d %s P%d %s%s", B, T, H, D, rel_name(rel), rel ? P : 0,
             rel ? (idx_kind ? "random-idx" : "clamped-idx") : "", full_pad ? " full-pad" : "");

    In iq = in_new(c, q, nq * 4), ik = in_new(c, k, nq * 4), iv = in_new(c, v, nq * 4), ido = in_new(c, dout, nq * 4);
    In im = in_new(c, mask, (size_t)B * T * 4);
    In ipq = {NULL, NULL}, ipk = {NULL, NULL}, iidx = {NULL, NULL};
    if (pq) ipq = in_new(c, pq, npd * 4);
    if (pk) ipk = in_new(c, pk, npd * 4);
    if (idx) iidx = in_new(c, idx, (size_t)T * T * 4);

    // forward
    Out out = out_new(c, NULL, nq), probs = out_new(c, NULL, np);
    c->cpu.attention_enc_fwd(&c->cpu, out.c, probs.c, iq.c, ik.c, iv.c, ipq.c, ipk.c, iidx.c, im.c, B, T, H, D, P,
                             scale);
    c->gpu.attention_enc_fwd(&c->gpu, out.g1, probs.g1, iq.g, ik.g, iv.g, ipq.g, ipk.g, iidx.g, im.g, B, T, H, D, P,
                             scale);
    c->gpu.attention_enc_fwd(&c->gpu, out.g2, probs.g2, iq.g, ik.g, iv.g, ipq.g, ipk.g, iidx.g, im.g, B, T, H, D, P,
                             scale);
    char what[200];
    snprintf(what, sizeof what, "attention_enc_fwd out   %s", tag);
    out_check(c, OP_ATTENTION_ENC_FWD, &out, 1e-5, 1.0, what);
    snprintf(what, sizeof what, "attention_enc_fwd probs %s", tag);
    out_check(c, OP_ATTENTION_ENC_FWD, &probs, 1e-5, 1.0, what);
    if (full_pad) {  // the fully padded row: exactly zero output and probabilities on the GPU
        float *go = from_gpu(c, out.g1, nq), *gp = from_gpu(c, probs.g1, np);
        size_t nz = 0, o0 = (size_t)(B - 1) * T * H * D, p0 = (size_t)(B - 1) * H * T * T;
        for (size_t i = o0; i < nq; i++) nz += go[i] != 0.0f;
        for (size_t i = p0; i < np; i++) nz += gp[i] != 0.0f;
        T_CHECK(c->tc, nz == 0, "attention_enc_fwd %s: %zu nonzero outputs / probabilities in the fully padded row",
                tag, nz);
        free(go), free(gp);
    }

    // backward from the CPU's probabilities
    In ip = in_new(c, probs.c, np * 4);
    Out dq = out_new(c, NULL, nq), dk = out_new(c, NULL, nq), dv = out_new(c, NULL, nq);
    Out dpq = {NULL, NULL, NULL, 0}, dpk = {NULL, NULL, NULL, 0};
    if (pq) dpq = out_new(c, NULL, npd);
    if (pk) dpk = out_new(c, NULL, npd);
    c->cpu.attention_enc_bwd(&c->cpu, dq.c, dk.c, dv.c, dpq.c, dpk.c, ido.c, ip.c, iq.c, ik.c, iv.c, ipq.c, ipk.c,
                             iidx.c, B, T, H, D, P, scale);
    c->gpu.attention_enc_bwd(&c->gpu, dq.g1, dk.g1, dv.g1, dpq.g1, dpk.g1, ido.g, ip.g, iq.g, ik.g, iv.g, ipq.g,
                             ipk.g, iidx.g, B, T, H, D, P, scale);
    c->gpu.attention_enc_bwd(&c->gpu, dq.g2, dk.g2, dv.g2, dpq.g2, dpk.g2, ido.g, ip.g, iq.g, ik.g, iv.g, ipq.g,
                             ipk.g, iidx.g, B, T, H, D, P, scale);
    const Out *outs[5] = {&dq, &dk, &dv, &dpq, &dpk};
    const char *names[5] = {"dq ", "dk ", "dv ", "dpq", "dpk"};
    for (int i = 0; i < 5; i++) {
        if (!outs[i]->c) continue;
        snprintf(what, sizeof what, "attention_enc_bwd %s   %s", names[i], tag);
        out_check(c, OP_ATTENTION_ENC_BWD, outs[i], 1e-5, 1.0, what);
    }

    out_free(c, &out), out_free(c, &probs), out_free(c, &dq), out_free(c, &dk), out_free(c, &dv);
    if (pq) out_free(c, &dpq);
    if (pk) out_free(c, &dpk);
    in_free(c, &iq), in_free(c, &ik), in_free(c, &iv), in_free(c, &ido), in_free(c, &im), in_free(c, &ip);
    if (pq) in_free(c, &ipq);
    if (pk) in_free(c, &ipk);
    if (idx) in_free(c, &iidx);
    free(q), free(k), free(v), free(dout), free(pq), free(pk), free(mask), free(idx);
}

static void test_attention(Ctx *c) {
    printf("attention_enc\n");
    // T = 7: each relative-term combination (P = 2 * span, span 3: clamped at |i - j| >= 3)
    attention_case(c, 2, 7, 4, 32, 0, 0, 0, 0);
    attention_case(c, 2, 7, 4, 32, REL_C2P, 6, 0, 0);
    attention_case(c, 2, 7, 4, 32, REL_P2C, 6, 0, 0);
    attention_case(c, 2, 7, 4, 32, REL_C2P | REL_P2C, 6, 0, 0);
    attention_case(c, 3, 7, 3, 40, REL_C2P | REL_P2C, 4, 0, 1);    // D not a multiple of 32, a fully padded row
    attention_case(c, 1, 7, 5, 64, REL_C2P | REL_P2C, 16, 1, 0);   // P > T, random idx (some buckets empty)
    // T = 128
    attention_case(c, 3, 128, 12, 64, REL_C2P | REL_P2C, 64, 0, 1);  // DeBERTa-like, a fully padded row
    attention_case(c, 2, 128, 6, 64, REL_C2P, 50, 1, 0);
    attention_case(c, 2, 128, 8, 32, REL_P2C, 32, 0, 0);
    attention_case(c, 2, 128, 4, 64, 0, 0, 0, 1);                    // BERT: no relative terms
    attention_case(c, 2, 128, 12, 64, REL_C2P | REL_P2C, 256, 1, 0); // P = 2 * span > T
    // T = 300: the backward's column pass stages dS / P / idx in chunks of 256 rows (ENC_CHUNK): two chunks
    attention_case(c, 1, 300, 2, 32, REL_C2P | REL_P2C, 64, 1, 0);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// HF DeBERTa-v2/v3 make_log_bucket_position for one relative position (bucket_size 256, max_position 512)
static int log_bucket(int rel, int bucket_size, int max_position) {
    int mid = bucket_size / 2, sign = rel > 0 ? 1 : rel < 0 ? -1 : 0;
    int abs_pos = (rel < mid && rel > -mid) ? mid - 1 : abs(rel);
    if (abs_pos <= mid) return rel;
    double lp = ceil(log((double)abs_pos / mid) / log((double)(max_position - 1) / mid) * (mid - 1)) + mid;
    return (int)lp * sign;
}

// GPU time of attention_enc_fwd / _bwd at DeBERTa-v3-base shapes (informational; no threshold), with
// idx from DeBERTa-v3's log buckets (span 256: buckets of a few hundred pairs each) and with
// clamp(i - j + 256) (the two end buckets hold ~33k pairs each: the slowest case of the dpq / dpk kernel)
static void time_attention(Ctx *c) {
    const int B = 8, T = 512, H = 12, D = 64, P = 512, span = 256, reps = 3;
    Backend *g = &c->gpu;
    size_t nq = (size_t)B * T * H * D, np = (size_t)B * H * T * T, npd = (size_t)P * H * D;
    float *h = hrand(c, nq, -1, 1);
    int32_t *mask = xmalloc((size_t)B * T * 4, "mask"), *idx = xmalloc((size_t)T * T * 4, "idx");
    for (int i = 0; i < B * T; i++) mask[i] = (i % T) < T - (i / T) * 16;
    float *q = put(g, h, nq * 4), *k = put(g, h, nq * 4), *v = put(g, h, nq * 4), *dout = put(g, h, nq * 4);
    float *pq = put(g, h, npd * 4), *pk = put(g, h + 1, npd * 4);
    int32_t *dm = put(g, mask, (size_t)B * T * 4), *di = g->alloc(g, (size_t)T * T * 4, "idx");
    float *out = g->alloc(g, nq * 4, "out"), *probs = g->alloc(g, np * 4, "probs");
    float *dq = g->alloc(g, nq * 4, "dq"), *dk = g->alloc(g, nq * 4, "dk"), *dv = g->alloc(g, nq * 4, "dv");
    float *dpq = g->alloc(g, npd * 4, "dpq"), *dpk = g->alloc(g, npd * 4, "dpk");
    float scale = 1.0f / sqrtf(3.0f * D);
    for (int kind = 0; kind < 2; kind++) {
        for (int i = 0; i < T; i++)
            for (int j = 0; j < T; j++) {
                int p = (kind == 0 ? log_bucket(i - j, 256, 512) : i - j) + span;
                idx[(size_t)i * T + j] = p < 0 ? 0 : p > P - 1 ? P - 1 : p;
            }
        g->upload(g, di, idx, (size_t)T * T * 4);
        // warm-up (also grows the scratch buffer)
        g->attention_enc_fwd(g, out, probs, q, k, v, pq, pk, di, dm, B, T, H, D, P, scale);
        g->attention_enc_bwd(g, dq, dk, dv, dpq, dpk, dout, probs, q, k, v, pq, pk, di, B, T, H, D, P, scale);
        g->sync(g);
        double t0 = now_s();
        for (int r = 0; r < reps; r++) g->attention_enc_fwd(g, out, probs, q, k, v, pq, pk, di, dm, B, T, H, D, P, scale);
        g->sync(g);
        double t1 = now_s();
        for (int r = 0; r < reps; r++)
            g->attention_enc_bwd(g, dq, dk, dv, dpq, dpk, dout, probs, q, k, v, pq, pk, di, B, T, H, D, P, scale);
        g->sync(g);
        double t2 = now_s();
        printf("enc-attn-time B%d T%d H%d D%d P%d c2p+p2c %s: fwd %.3f ms bwd %.3f ms (mean of %d)\n", B, T, H, D, P,
               kind == 0 ? "log-bucket idx" : "clamped idx", 1e3 * (t1 - t0) / reps, 1e3 * (t2 - t1) / reps, reps);
    }
    void *bufs[] = {q, k, v, dout, pq, pk, dm, di, out, probs, dq, dk, dv, dpq, dpk};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) g->free(g, bufs[i]);
    free(h), free(mask), free(idx);
}

// ------------------------------------------------------------------------------ main

static int has_enc_ops(const Backend *be) {
    return be->embedding_add && be->layernorm_fwd && be->layernorm_bwd && be->bias_add && be->bias_grad &&
           be->gelu_fwd && be->gelu_bwd && be->tanh_fwd && be->tanh_bwd && be->mask_rows && be->attention_enc_fwd &&
           be->attention_enc_bwd;
}

static int run(void) {
    int harness = getenv("ACTLORA_TEST_HARNESS_ON_CPU") != NULL;
#ifdef ACTLORA_CUDA_EMU
    const int emulated = 1;  // test_backend_cuda_enc_emu: the kernels run on the CPU, time says nothing
#else
    const int emulated = 0;
#endif
    int n = harness ? 1 : backend_cuda_device_count();
    if (n <= 0) {
        printf("test_backend_cuda_enc: SKIP: no CUDA device is visible\n");
        return TEST_SKIP;
    }
    TestCounts tc = {0};
    Ctx c;
    memset(&c, 0, sizeof c);
    c.tc = &tc;
    c.r.s = 20240917;
    c.harness = harness;
    backend_cpu_init(&c.cpu, 0);
    if (harness) backend_cpu_init(&c.gpu, 0);
    else backend_cuda_init(&c.gpu, 0);
    printf("test_backend_cuda_enc: %s against cpu%s\n", c.gpu.name, harness ? " (harness: both sides on the CPU)" : "");
    T_CHECK(&tc, has_enc_ops(&c.cpu), "the CPU backend leaves an encoder op unset");
    T_CHECK(&tc, has_enc_ops(&c.gpu), "the %s backend leaves an encoder op unset", c.gpu.name);
    if (has_enc_ops(&c.cpu) && has_enc_ops(&c.gpu)) {
        test_embedding_add(&c);
        test_layernorm(&c);
        test_bias(&c);
        test_gelu_tanh(&c);
        test_mask_rows(&c);
        test_attention(&c);
        if (emulated) printf("enc-attn-time: not timed on the CUDA emulator\n");
        else if (!harness) time_attention(&c);
        for (int op = 0; op < NOPS; op++)
            printf("enc-op %s rel %.3e (%d comparisons; GPU run twice: %s)\n", OP_NAMES[op], c.worst[op],
                   c.checks[op], c.nondet[op] ? "DIFFERS" : "bit-identical");
    }
    backend_free(&c.gpu);
    backend_free(&c.cpu);
    return t_finish(&tc, "test_backend_cuda_enc");
}
#endif  // ACTLORA_HAVE_CUDA

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
#ifndef ACTLORA_HAVE_CUDA
    printf("test_backend_cuda_enc: SKIP: built without the CUDA backend (configure with -DACTLORA_CUDA=ON)\n");
    return TEST_SKIP;
#else
    return run();
#endif
}
