// test_backend_weights.c: the CPU backend's weight-format ops (backend.h, "frozen weights in the
// backend's weight format"; src/backend_weights.c). No GPU needed. Checked:
//   1. backend_set_dtype: "auto" -> fp32 on the CPU (weight_bytes 4), "bf16", "fp32"; an unknown name
//      ("fp16") returns -1 with a message and leaves the format alone; backend_weight_dtype_name agrees.
//   2. weight_upload in bf16 format stores exactly the round-to-nearest-even bf16 value of every input,
//      against a reference in double arithmetic with no bit tricks (bf16_ref, test_fixture.h): 10000 random values
//      in [-3, 3], exact ties at several exponents and both signs, signed zeros, large magnitudes
//      (1e30, -3e38, FLT_MAX -> inf), NaN stays NaN. In fp32 format weight_upload is the identity.
//   3. wgemm (trans_w 0 and 1, (alpha, beta) in {(1,0), (0.7,-0.3)}, 13x7x19 and 67x45x129) in bf16
//      format is bit-identical to be->gemm on host-rounded X and W, and leaves X alone; in fp32 format
//      it is be->gemm bit for bit.
//   4. wgemm_multi (3 weights, N = {33, 8, 0}, X [21, 40]) equals three wgemm(beta 0) calls bit for bit in
//      both formats, overwrites NaN-filled outputs, and leaves X alone.
//   5. wembedding_fwd in bf16 format returns the reference-rounded table rows exactly.
#include "actlora/backend.h"
#include "test_fixture.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

// One check: got and want are bit-identical (reports the count and the first difference).
static void check_bits(TestCounts *tc, const float *got, const float *want, size_t n, const char *what) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (!same_bits(got[i], want[i]) && !bad++) first = i;
    T_CHECK(tc, bad == 0, "%s: %zu of %zu elements differ, first [%zu] %.9g vs %.9g", what, bad, n, first,
            n ? (double)got[first] : 0.0, n ? (double)want[first] : 0.0);
}

static float *host_copy(const float *x, size_t n) {
    float *y = (float *)xmalloc((n ? n : 1) * sizeof(float), "test host copy");
    memcpy(y, x, n * sizeof(float));
    return y;
}

static void round_host(float *x, size_t n) { for (size_t i = 0; i < n; i++) x[i] = bf16_ref(x[i]); }

static void set_dtype(Backend *be, const char *d) {
    char msg[256];
    check(backend_set_dtype(be, d, msg, sizeof msg) == 0, "backend_set_dtype(%s): %s", d, msg);
}

// ------------------------------------------------------------------------------ 1. model.dtype

static void test_set_dtype(TestCounts *tc, Backend *be) {
    char msg[256];
    int rc = backend_set_dtype(be, "auto", msg, sizeof msg);
    T_CHECK(tc, rc == 0 && be->weight_dtype == BACKEND_WEIGHT_FP32 && be->weight_bytes == 4,
            "auto on cpu: rc %d dtype %d bytes %zu (want fp32, 4)", rc, be->weight_dtype, be->weight_bytes);
    T_CHECK(tc, strcmp(backend_weight_dtype_name(be), "fp32") == 0, "auto: name %s", backend_weight_dtype_name(be));
    rc = backend_set_dtype(be, "bf16", msg, sizeof msg);
    T_CHECK(tc, rc == 0 && be->weight_dtype == BACKEND_WEIGHT_BF16 && be->weight_bytes == 4,
            "bf16 on cpu: rc %d dtype %d bytes %zu (want bf16, 4: fp32 storage)", rc, be->weight_dtype,
            be->weight_bytes);
    T_CHECK(tc, strcmp(backend_weight_dtype_name(be), "bf16") == 0, "bf16: name %s", backend_weight_dtype_name(be));
    msg[0] = 0;
    rc = backend_set_dtype(be, "fp16", msg, sizeof msg);
    T_CHECK(tc, rc == -1 && msg[0] != 0, "fp16: rc %d, message \"%s\" (want -1 and a message)", rc, msg);
    T_CHECK(tc, be->weight_dtype == BACKEND_WEIGHT_BF16 && strcmp(backend_weight_dtype_name(be), "bf16") == 0,
            "fp16 (rejected) changed the format to %s", backend_weight_dtype_name(be));
    printf("  rejected fp16: %s\n", msg);
    rc = backend_set_dtype(be, "fp32", msg, sizeof msg);
    T_CHECK(tc, rc == 0 && be->weight_dtype == BACKEND_WEIGHT_FP32 && be->weight_bytes == 4 &&
                    strcmp(backend_weight_dtype_name(be), "fp32") == 0,
            "fp32: rc %d dtype %d bytes %zu name %s", rc, be->weight_dtype, be->weight_bytes,
            backend_weight_dtype_name(be));
}

// ------------------------------------------------------------------------------ 2. bf16 rounding

static void test_rounding(TestCounts *tc, Backend *be) {
    enum { NR = 10000, NX = NR + 64 };
    static float x[NX], want[NX], got[NX];
    Rand r = {2024};
    fill(x, NR, -3, 3, &r);
    size_t n = NR;
    for (int e = -6; e <= 6; e += 3)  // ties (k + 1/2) ulp at several exponents, odd and even k, both signs
        for (int k = 128; k <= 131; k++) {
            double t = ldexp(k + 0.5, e - 7);
            x[n++] = (float)t;
            x[n++] = (float)-t;
        }
    const float special[] = {0.0f, -0.0f, 1e30f, -3e38f, FLT_MAX, -FLT_MAX};
    for (size_t i = 0; i < sizeof special / sizeof *special; i++) x[n++] = special[i];
    // the reference itself on hand-computed ties: 1 + 2^-8 -> 1, 1 + 3 2^-8 -> 1 + 2^-6, 3 + 2^-7 -> 3
    T_CHECK(tc, bf16_ref(1.0f + 0x1p-8f) == 1.0f && bf16_ref(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f &&
                    bf16_ref(-1.0f - 3 * 0x1p-8f) == -1.0f - 0x1p-6f && bf16_ref(3.0f + 0x1p-7f) == 3.0f &&
                    isinf(bf16_ref(FLT_MAX)),
            "bf16_ref: hand-computed ties wrong");

    set_dtype(be, "bf16");
    void *w = be->weight_alloc(be, n, "test weight");
    be->weight_upload(be, w, x, n);
    be->download(be, got, w, n * sizeof(float));
    for (size_t i = 0; i < n; i++) want[i] = bf16_ref(x[i]);
    check_bits(tc, got, want, NR, "bf16 weight_upload: 10000 random values in [-3,3]");
    check_bits(tc, got + NR, want + NR, n - NR - 6, "bf16 weight_upload: exact ties");
    T_CHECK(tc, same_bits(got[n - 6], 0.0f) && same_bits(got[n - 5], -0.0f), "bf16: signed zero lost (%g, %g)",
            (double)got[n - 6], (double)got[n - 5]);
    check_bits(tc, got + n - 4, want + n - 4, 4, "bf16 weight_upload: 1e30, -3e38, +-FLT_MAX (-> +-inf)");
    float nan_in = NAN, nan_out = 0.0f;
    be->weight_upload(be, w, &nan_in, 1);
    be->download(be, &nan_out, w, sizeof(float));
    T_CHECK(tc, isnan(nan_out), "bf16 weight_upload: NaN became %g", (double)nan_out);

    set_dtype(be, "fp32");
    be->weight_upload(be, w, x, n);
    be->download(be, got, w, n * sizeof(float));
    check_bits(tc, got, x, n, "fp32 weight_upload: identity");
    be->free(be, w);
}

// ------------------------------------------------------------------------------ 3. wgemm

static void test_wgemm(TestCounts *tc, Backend *be) {
    const int sizes[2][3] = {{13, 7, 19}, {67, 45, 129}};
    const float ab[2][2] = {{1.0f, 0.0f}, {0.7f, -0.3f}};
    Rand r = {31};
    for (int bf = 0; bf < 2; bf++)
        for (int s = 0; s < 2; s++)
            for (int tw = 0; tw < 2; tw++)
                for (int k = 0; k < 2; k++) {
                    int M = sizes[s][0], N = sizes[s][1], K = sizes[s][2];
                    size_t nx = (size_t)M * K, nw = (size_t)K * N, ny = (size_t)M * N;
                    set_dtype(be, bf ? "bf16" : "fp32");
                    float *X = falloc(be, nx), *Wf = falloc(be, nw), *Y = falloc(be, ny), *Yref = falloc(be, ny);
                    fill(X, nx, -2, 2, &r);
                    fill(Wf, nw, -1, 1, &r);
                    fill(Y, ny, -1, 1, &r);
                    memcpy(Yref, Y, ny * sizeof(float));
                    float *X0 = host_copy(X, nx);
                    void *W = be->weight_alloc(be, nw, "test weight");
                    be->weight_upload(be, W, Wf, nw);
                    be->wgemm(be, tw, M, N, K, ab[k][0], X, W, ab[k][1], Y);
                    if (bf) {  // reference: host-rounded operands in plain fp32 buffers
                        round_host(X, nx);
                        round_host(Wf, nw);
                    }
                    be->gemm(be, 0, tw, M, N, K, ab[k][0], X, Wf, ab[k][1], Yref);
                    char what[128];
                    snprintf(what, sizeof what, "%s wgemm %dx%dx%d trans_w=%d a=%g b=%g vs gemm", bf ? "bf16" : "fp32",
                             M, N, K, tw, (double)ab[k][0], (double)ab[k][1]);
                    check_bits(tc, Y, Yref, ny, what);
                    if (bf) {
                        size_t changed = 0;  // X (now rounded on the host) vs the original: must have differed
                        for (size_t i = 0; i < nx; i++) changed += !same_bits(X[i], X0[i]);
                        T_CHECK(tc, changed > 0, "%s: test inputs were already bf16", what);
                    }
                    free(X0);
                    be->free(be, W); be->free(be, X); be->free(be, Wf); be->free(be, Y); be->free(be, Yref);
                }
    // X is not modified (separately, with X kept unrounded)
    set_dtype(be, "bf16");
    int M = 13, N = 7, K = 19;
    float *X = falloc(be, (size_t)M * K), *Y = falloc(be, (size_t)M * N);
    fill(X, (size_t)M * K, -2, 2, &r);
    float *X0 = host_copy(X, (size_t)M * K);
    void *W = be->weight_alloc(be, (size_t)N * K, "test weight");
    be->weight_randn(be, W, (size_t)N * K, 0.0f, 0.5f, 5);
    for (int tw = 0; tw < 2; tw++) {
        be->wgemm(be, tw, M, N, K, 1.0f, X, W, 0.0f, Y);
        check_bits(tc, X, X0, (size_t)M * K,
                   tw ? "bf16 wgemm trans_w=1 leaves X alone" : "bf16 wgemm trans_w=0 leaves X alone");
    }
    free(X0);
    be->free(be, W); be->free(be, X); be->free(be, Y);
}

// ------------------------------------------------------------------------------ 4. wgemm_multi

static void test_wgemm_multi(TestCounts *tc, Backend *be) {
    enum { M = 21, K = 40 };
    const int N[3] = {33, 8, 0};
    Rand r = {77};
    for (int bf = 0; bf < 2; bf++) {
        set_dtype(be, bf ? "bf16" : "fp32");
        float *X = falloc(be, (size_t)M * K), *Wh = falloc(be, (size_t)33 * K);
        fill(X, (size_t)M * K, -2, 2, &r);
        float *X0 = host_copy(X, (size_t)M * K);
        void *W[3];
        float *Y[3], *Z[3];
        for (int i = 0; i < 3; i++) {
            size_t nw = (size_t)N[i] * K, ny = (size_t)M * N[i];
            fill(Wh, nw, -1, 1, &r);
            W[i] = be->weight_alloc(be, nw, "test weight");
            be->weight_upload(be, W[i], Wh, nw);
            Y[i] = falloc(be, ny);
            Z[i] = falloc(be, ny);
            fill_nan(Y[i], ny);
            fill_nan(Z[i], ny);
        }
        be->wgemm_multi(be, 3, M, K, X, (const void *const *)W, N, Y);
        check_bits(tc, X, X0, (size_t)M * K,
                   bf ? "bf16 wgemm_multi leaves X alone" : "fp32 wgemm_multi leaves X alone");
        for (int i = 0; i < 3; i++) be->wgemm(be, 1, M, N[i], K, 1.0f, X, W[i], 0.0f, Z[i]);
        for (int i = 0; i < 3; i++) {
            size_t ny = (size_t)M * N[i], nans = 0;
            for (size_t j = 0; j < ny; j++) nans += isnan(Y[i][j]);
            char what[96];
            snprintf(what, sizeof what, "%s wgemm_multi output %d (N=%d) vs wgemm", bf ? "bf16" : "fp32", i, N[i]);
            check_bits(tc, Y[i], Z[i], ny, what);
            T_CHECK(tc, nans == 0, "%s: %zu NaNs left (beta is not 0)", what, nans);
            be->free(be, W[i]); be->free(be, Y[i]); be->free(be, Z[i]);
        }
        free(X0);
        be->free(be, X); be->free(be, Wh);
    }
}

// ------------------------------------------------------------------------------ 5. wembedding_fwd

static void test_wembedding(TestCounts *tc, Backend *be) {
    enum { V = 11, C = 9, NT = 7 };
    const int32_t ids[NT] = {3, 0, 10, 3, 7, 1, 10};
    float tab[V * C], want[NT * C], out[NT * C];
    Rand r = {99};
    fill(tab, V * C, -3, 3, &r);
    set_dtype(be, "bf16");
    void *T = be->weight_alloc(be, V * C, "test table");
    be->weight_upload(be, T, tab, V * C);
    for (int n = 0; n < NT; n++)
        for (int c = 0; c < C; c++) want[n * C + c] = bf16_ref(tab[ids[n] * C + c]);
    int32_t *dids = (int32_t *)be->alloc(be, sizeof ids, "test ids");
    float *dout = falloc(be, NT * C);
    be->upload(be, dids, ids, sizeof ids);
    be->wembedding_fwd(be, dout, dids, T, NT, C);
    be->download(be, out, dout, sizeof out);
    check_bits(tc, out, want, NT * C, "bf16 wembedding_fwd: rounded table rows");
    be->free(be, T); be->free(be, dids); be->free(be, dout);
}

int main(void) {  // needs no files: argv (source and build dirs) is ignored
    TestCounts tc = {0, 0};
    Backend be;
    backend_cpu_init(&be, 0);
    printf("cpu backend, %d threads\n", be.threads);
    test_set_dtype(&tc, &be);
    test_rounding(&tc, &be);
    test_wgemm(&tc, &be);
    test_wgemm_multi(&tc, &be);
    test_wembedding(&tc, &be);
    backend_free(&be);
    return t_finish(&tc, "test_backend_weights");
}
