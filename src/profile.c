// profile.c: per-op timing by wrapping a backend's op table in place (profile.h).
#include "actlora/profile.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/common.h"

static Profile *prof_of(Backend *be) { return (Profile *)be->ctx; }

static double prof_begin(Profile *p) {
    p->inner.sync(&p->inner);
    return time_now();
}

static ProfileEntry *prof_entry(Profile *p, const char *key, const char *op) {
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->e[i].key, key) == 0) return &p->e[i];
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 64;
        p->e = realloc(p->e, (size_t)p->cap * sizeof *p->e);
        check(p->e != NULL, "out of memory growing the op profile to %d entries", p->cap);
    }
    ProfileEntry *e = &p->e[p->n++];
    memset(e, 0, sizeof *e);
    snprintf(e->key, sizeof e->key, "%s", key);
    snprintf(e->op, sizeof e->op, "%s", op);
    return e;
}

// Waits for the op, then books the time since t0 under "op <shape>".
static void prof_end(Profile *p, double t0, const char *op, double flops, double bytes, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void prof_end(Profile *p, double t0, const char *op, double flops, double bytes, const char *fmt, ...) {
    p->inner.sync(&p->inner);
    double dt = time_now() - t0;
    char shape[PROFILE_KEY_MAX], key[PROFILE_KEY_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(shape, sizeof shape, fmt, ap);
    va_end(ap);
    if (snprintf(key, sizeof key, "%s%s%s", op, shape[0] ? " " : "", shape) >= (int)sizeof key)
        key[sizeof key - 2] = '~';  // a cut key stays one entry, marked as cut
    ProfileEntry *e = prof_entry(p, key, op);
    e->calls++;
    e->seconds += dt;
    e->flops += flops;
    e->bytes += bytes;
}

// A wrapper that times one call of a void op: PARAMS is the op's parameter list, ARGS the call on
// the inner backend, FLOPS its matrix-product FLOPs, BYTES the memory it moves at least (profile.h),
// then the shape's format and values.
#define WRAP(op, params, args, flops, bytes, ...)                            \
    static void w_##op params {                                              \
        Profile *p = prof_of(be);                                            \
        double t0 = prof_begin(p);                                           \
        p->inner.op args;                                                    \
        prof_end(p, t0, #op, (double)(flops), (double)(bytes), __VA_ARGS__); \
    }
// The same for an op that returns a value of type rtype.
#define WRAP_RET(rtype, op, params, args, flops, bytes, ...)                  \
    static rtype w_##op params {                                              \
        Profile *p = prof_of(be);                                             \
        double t0 = prof_begin(p);                                            \
        rtype r = p->inner.op args;                                           \
        prof_end(p, t0, #op, (double)(flops), (double)(bytes), __VA_ARGS__);  \
        return r;                                                             \
    }
#define IN (&p->inner)

// Bytes a wgemm moves at least: in bf16 format the cast of X (fp32 read, bf16 write) and the product
// (bf16 X and W read, fp32 Y written, and read too when beta != 0); in fp32, the fp32 GEMM's.
static double cast_bytes(const Profile *p, int M, int K) {
    return p->inner.weight_dtype == BACKEND_WEIGHT_BF16 ? 6.0 * M * K : 0.0;
}
static double wgemm_bytes(const Profile *p, int M, int N, int K, float beta) {
    double x = p->inner.weight_dtype == BACKEND_WEIGHT_BF16 ? 2.0 : 4.0, w = (double)p->inner.weight_bytes;
    return cast_bytes(p, M, K) + x * M * K + w * N * K + 4.0 * M * N * (beta != 0.0f ? 2 : 1);
}
#define TR(t) ((t) ? 'T' : 'N')

// ---------------------------------------------------------------------------- memory

WRAP_RET(void *, alloc, (Backend *be, size_t bytes, const char *what), (IN, bytes, what), 0, 0, "%s", "")
static void w_free(Backend *be, void *ptr) {
    Profile *p = prof_of(be);
    double t0 = prof_begin(p);
    p->inner.free(IN, ptr);
    prof_end(p, t0, "free", 0, 0, "%s", "");
}
static void w_sync(Backend *be) { prof_of(be)->inner.sync(&prof_of(be)->inner); }
static void w_destroy(Backend *be) { prof_of(be)->inner.destroy(&prof_of(be)->inner); }
WRAP(upload, (Backend *be, void *dst, const void *src, size_t bytes), (IN, dst, src, bytes), 0, bytes, "%s", "")
WRAP(download, (Backend *be, void *dst, const void *src, size_t bytes), (IN, dst, src, bytes), 0, bytes, "%s", "")
WRAP(zero, (Backend *be, void *ptr, size_t bytes), (IN, ptr, bytes), 0, bytes, "bytes=%zu", bytes)
WRAP(copy, (Backend *be, void *dst, const void *src, size_t bytes), (IN, dst, src, bytes), 0, 2.0 * bytes, "bytes=%zu",
     bytes)

// ---------------------------------------------------------------------------- algebra and layers

WRAP(gemm,
     (Backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, const float *B, float beta,
      float *C),
     (IN, ta, tb, M, N, K, alpha, A, B, beta, C), 2.0 * M * N * K,
     4.0 * ((double)M * K + (double)K * N + (double)M * N * (beta != 0.0f ? 2 : 1)), "%c%c %dx%dx%d", TR(ta), TR(tb), M,
     N, K)
WRAP(add, (Backend *be, float *y, const float *x, size_t n), (IN, y, x, n), 0, 12.0 * n, "n=%zu", n)
WRAP(scale, (Backend *be, float *x, float s, size_t n), (IN, x, s, n), 0, 8.0 * n, "n=%zu", n)
WRAP_RET(double, sumsq, (Backend *be, const float *x, size_t n), (IN, x, n), 0, 4.0 * n, "n=%zu", n)
WRAP_RET(double, row_norm_sum, (Backend *be, const float *x, const int32_t *mask, int N, int C),
         (IN, x, mask, N, C), 0, 4.0 * N * C, "%dx%d", N, C)
WRAP(embedding_fwd, (Backend *be, float *out, const int32_t *ids, const float *wte, int N, int C),
     (IN, out, ids, wte, N, C), 0, 8.0 * N * C, "%dx%d", N, C)
WRAP(rmsnorm_fwd, (Backend *be, float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps),
     (IN, out, rstd, inp, w, N, C, eps), 0, 8.0 * N * C, "%dx%d", N, C)
WRAP(rmsnorm_bwd,
     (Backend *be, float *dinp, const float *dout, const float *inp, const float *w, const float *rstd, int N, int C),
     (IN, dinp, dout, inp, w, rstd, N, C), 0, 16.0 * N * C, "%dx%d", N, C)
WRAP(rope_fwd, (Backend *be, float *x, const float *c, const float *s, int B, int T, int nh, int D),
     (IN, x, c, s, B, T, nh, D), 0, 8.0 * B * T * nh * D, "B%d T%d heads %d D%d", B, T, nh, D)
WRAP(rope_bwd, (Backend *be, float *dx, const float *c, const float *s, int B, int T, int nh, int D),
     (IN, dx, c, s, B, T, nh, D), 0, 8.0 * B * T * nh * D, "B%d T%d heads %d D%d", B, T, nh, D)
// attention FLOPs: the products as computed (all T keys): forward Q K^T and P V, backward four
WRAP(attention_fwd,
     (Backend *be, float *out, float *probs, const float *q, const float *k, const float *v, const int32_t *mask,
      int B, int T, int H, int KVH, int D),
     (IN, out, probs, q, k, v, mask, B, T, H, KVH, D), 4.0 * B * H * T * T * D,
     4.0 * (2.0 * B * T * H * D + 2.0 * B * T * KVH * D + 4.0 * B * H * T * T), "B%d T%d H%d/%d D%d", B, T, H, KVH, D)
WRAP(attention_bwd,
     (Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *probs, const float *q,
      const float *k, const float *v, int B, int T, int H, int KVH, int D),
     (IN, dq, dk, dv, dout, probs, q, k, v, B, T, H, KVH, D), 8.0 * B * H * T * T * D,
     4.0 * (4.0 * B * T * H * D + 4.0 * B * T * KVH * D + 7.0 * B * H * T * T), "B%d T%d H%d/%d D%d", B, T, H, KVH, D)
WRAP(swiglu_fwd, (Backend *be, float *h, const float *gate, const float *up, size_t n), (IN, h, gate, up, n), 0,
     12.0 * n, "n=%zu", n)
WRAP(swiglu_bwd,
     (Backend *be, float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n),
     (IN, dgate, dup, dh, gate, up, n), 0, 20.0 * n, "n=%zu", n)
WRAP(randn, (Backend *be, float *x, size_t n, float mean, float std, uint64_t key), (IN, x, n, mean, std, key), 0,
     4.0 * n, "n=%zu", n)
WRAP(dropout, (Backend *be, float *out, const float *inp, size_t n, float pr, uint64_t key),
     (IN, out, inp, n, pr, key), 0, 8.0 * n, "n=%zu", n)
WRAP(pool_last_fwd, (Backend *be, float *pooled, const float *x, const int32_t *last, int B, int T, int C),
     (IN, pooled, x, last, B, T, C), 0, 8.0 * B * C, "B%d T%d C%d", B, T, C)
WRAP(pool_last_bwd, (Backend *be, float *dx, const float *dpooled, const int32_t *last, int B, int T, int C),
     (IN, dx, dpooled, last, B, T, C), 0, 8.0 * B * C, "B%d T%d C%d", B, T, C)
WRAP(loss_fwd_bwd,
     (Backend *be, double *loss_sum, float *dlogits, const float *logits, const int32_t *labels_i,
      const float *labels_f, int B, int K, float grad_scale),
     (IN, loss_sum, dlogits, logits, labels_i, labels_f, B, K, grad_scale), 0, 8.0 * B * K, "B%d K%d", B, K)

// ---------------------------------------------------------------------------- encoder ops

WRAP(embedding_add, (Backend *be, float *out, const int32_t *ids, const float *table, int N, int C),
     (IN, out, ids, table, N, C), 0, 12.0 * N * C, "%dx%d", N, C)
WRAP(layernorm_fwd,
     (Backend *be, float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b, int N,
      int C, float eps),
     (IN, out, mean, rstd, inp, w, b, N, C, eps), 0, 8.0 * N * C, "%dx%d", N, C)
WRAP(layernorm_bwd,
     (Backend *be, float *dinp, const float *dout, const float *inp, const float *w, const float *mean,
      const float *rstd, int N, int C),
     (IN, dinp, dout, inp, w, mean, rstd, N, C), 0, 16.0 * N * C, "%dx%d", N, C)
WRAP(bias_add, (Backend *be, float *y, const float *b, int N, int C), (IN, y, b, N, C), 0, 8.0 * N * C, "%dx%d", N, C)
WRAP(bias_grad, (Backend *be, float *db, const float *dy, int N, int C), (IN, db, dy, N, C), 0, 4.0 * N * C, "%dx%d",
     N, C)
WRAP(gelu_fwd, (Backend *be, float *h, const float *x, size_t n), (IN, h, x, n), 0, 8.0 * n, "n=%zu", n)
WRAP(gelu_bwd, (Backend *be, float *dx, const float *dh, const float *x, size_t n), (IN, dx, dh, x, n), 0, 12.0 * n,
     "n=%zu", n)
WRAP(tanh_fwd, (Backend *be, float *y, const float *x, size_t n), (IN, y, x, n), 0, 8.0 * n, "n=%zu", n)
WRAP(tanh_bwd, (Backend *be, float *dx, const float *dy, const float *y, size_t n), (IN, dx, dy, y, n), 0, 12.0 * n,
     "n=%zu", n)
WRAP(mask_rows, (Backend *be, float *x, const int32_t *mask, int N, int C), (IN, x, mask, N, C), 0, 8.0 * N * C,
     "%dx%d", N, C)
WRAP(attention_enc_fwd,
     (Backend *be, float *out, float *probs, const float *q, const float *k, const float *v, const float *pq,
      const float *pk, const int32_t *idx, const int32_t *mask, int B, int T, int H, int D, int P, float scale),
     (IN, out, probs, q, k, v, pq, pk, idx, mask, B, T, H, D, P, scale), 4.0 * B * H * T * T * D,
     4.0 * (6.0 * B * T * H * D + 4.0 * B * H * T * T), "B%d T%d H%d D%d P%d", B, T, H, D, P)
WRAP(attention_enc_bwd,
     (Backend *be, float *dq, float *dk, float *dv, float *dpq, float *dpk, const float *dout, const float *probs,
      const float *q, const float *k, const float *v, const float *pq, const float *pk, const int32_t *idx, int B,
      int T, int H, int D, int P, float scale),
     (IN, dq, dk, dv, dpq, dpk, dout, probs, q, k, v, pq, pk, idx, B, T, H, D, P, scale), 8.0 * B * H * T * T * D,
     4.0 * (11.0 * B * T * H * D + 7.0 * B * H * T * T), "B%d T%d H%d D%d P%d", B, T, H, D, P)

// ---------------------------------------------------------------------------- optimizer, weights

WRAP(adamw,
     (Backend *be, float *pr, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2, float eps,
      float wd, int t),
     (IN, pr, g, m, v, n, lr, b1, b2, eps, wd, t), 0, 28.0 * n, "n=%zu", n)
static int w_set_weight_dtype(Backend *be, int dtype) {
    Profile *p = prof_of(be);
    int r = p->inner.set_weight_dtype(IN, dtype);
    be->weight_dtype = p->inner.weight_dtype;  // the wrapped table shows the inner state
    be->weight_bytes = p->inner.weight_bytes;
    return r;
}
WRAP_RET(void *, weight_alloc, (Backend *be, size_t n, const char *what), (IN, n, what), 0, 0, "%s", "")
WRAP(weight_upload, (Backend *be, void *w, const float *src, size_t n), (IN, w, src, n), 0, 0, "%s", "")
WRAP(weight_randn, (Backend *be, void *w, size_t n, float mean, float std, uint64_t key), (IN, w, n, mean, std, key),
     0, 0, "%s", "")
WRAP(wgemm,
     (Backend *be, int tw, int M, int N, int K, float alpha, const float *X, const void *W, float beta, float *Y),
     (IN, tw, M, N, K, alpha, X, W, beta, Y), 2.0 * M * N * K, wgemm_bytes(p, M, N, K, beta), "%c %dx%dx%d", TR(tw), M,
     N, K)
static void w_wgemm_multi(Backend *be, int n, int M, int K, const float *X, const void *const *W, const int *N,
                          float *const *Y) {
    Profile *p = prof_of(be);
    double t0 = prof_begin(p), cols = 0.0, bytes = 0.0;
    p->inner.wgemm_multi(IN, n, M, K, X, W, N, Y);
    for (int i = 0; i < n; i++) bytes += wgemm_bytes(p, M, N[i], K, 0.0f) - (i ? cast_bytes(p, M, K) : 0.0);
    char shape[48];
    int len = snprintf(shape, sizeof shape, "%dx", M);
    for (int i = 0; i < n; i++) {
        cols += N[i];
        if (len < (int)sizeof shape)
            len += snprintf(shape + len, sizeof shape - (size_t)len, "%s%d", i ? "+" : "", N[i]);
    }
    prof_end(p, t0, "wgemm_multi", 2.0 * M * cols * K, bytes, "%sx%d", shape, K);
}
// bordered products (lora.fuse): K = the input width, + r when the adapter rides along
static void w_wgemm_lora(Backend *be, int tw, int M, int out, int in, int r, const float *X, const float *Xa,
                         const void *Wb, float beta, float *Y) {
    Profile *p = prof_of(be);
    double t0 = prof_begin(p);
    p->inner.wgemm_lora(IN, tw, M, out, in, r, X, Xa, Wb, beta, Y);
    int n = tw ? out : in, k = (tw ? in : out) + (Xa ? r : 0);
    prof_end(p, t0, "wgemm_lora", 2.0 * M * n * k, wgemm_bytes(p, M, n, k, beta), "%c %dx%dx%d%s", TR(tw), M, n,
             tw ? in : out, Xa ? "+r" : "");
}
static void w_wgemm_lora_multi(Backend *be, int n, int M, int in, int r, const float *X, const float *const *Xa,
                               const void *const *Wb, const int *out, float *const *Y) {
    Profile *p = prof_of(be);
    double t0 = prof_begin(p), flops = 0.0, bytes = 0.0;
    p->inner.wgemm_lora_multi(IN, n, M, in, r, X, Xa, Wb, out, Y);
    char shape[48];
    int len = snprintf(shape, sizeof shape, "%dx", M);
    for (int i = 0; i < n; i++) {
        int k = in + (Xa[i] ? r : 0);
        flops += 2.0 * M * out[i] * k;
        bytes += wgemm_bytes(p, M, out[i], k, 0.0f) - (i ? cast_bytes(p, M, in) : 0.0);
        if (len < (int)sizeof shape)
            len += snprintf(shape + len, sizeof shape - (size_t)len, "%s%d%s", i ? "+" : "", out[i], Xa[i] ? "r" : "");
    }
    prof_end(p, t0, "wgemm_lora_multi", flops, bytes, "%sx%d", shape, in);
}
WRAP(weight_set_lora, (Backend *be, void *Wb, int out, int in, int r, const float *A, const float *B, float s),
     (IN, Wb, out, in, r, A, B, s), 0, (4.0 + p->inner.weight_bytes) * r * ((double)out + in), "%dx%d r%d", out, in, r)
WRAP(weight_randn_2d,
     (Backend *be, void *w, int rows, int cols, int ld, float mean, float std, uint64_t key),
     (IN, w, rows, cols, ld, mean, std, key), 0, 0, "%s", "")
WRAP(wembedding_fwd, (Backend *be, float *out, const int32_t *ids, const void *table, int N, int C),
     (IN, out, ids, table, N, C), 0, (double)N *C *(4.0 + p->inner.weight_bytes), "%dx%d", N, C)

// ---------------------------------------------------------------------------- activations in the weight format

// bytes of a gemm_wf operand of n elements: read as stored, or (fp32, bf16 format) cast first
static double wf_operand_bytes(const Profile *p, int wf, double n) {
    if (wf) return (double)p->inner.weight_bytes * n;
    return p->inner.weight_dtype == BACKEND_WEIGHT_BF16 ? 8.0 * n : 4.0 * n;
}
// the operand and the outputs in the weight format: no cast, w bytes per element throughout
static void w_wgemm_lora_multi_wf(Backend *be, int n, int M, int in, int r, void *Xw, const float *const *Xa,
                                  const void *const *Wb, const int *out, void *const *Y) {
    Profile *p = prof_of(be);
    double t0 = prof_begin(p), w = (double)p->inner.weight_bytes, flops = 0.0, bytes = 0.0;
    p->inner.wgemm_lora_multi_wf(IN, n, M, in, r, Xw, Xa, Wb, out, Y);
    for (int i = 0; i < n; i++) {
        int k = in + (Xa[i] ? r : 0);
        flops += 2.0 * M * out[i] * k;
        bytes += w * ((double)M * k + (double)out[i] * k + (double)M * out[i]);
    }
    prof_end(p, t0, "wgemm_lora_multi_wf", flops, bytes, "%dx%d n%d", M, in, n);
}
// LoRA dropout: X read once (its storage: weight format or fp32), the mask drawn inside (CUDA); dX read + written
static double drop_x_bytes(const Profile *p, int x_wf, double n) { return (x_wf ? p->inner.weight_bytes : 4.0) * n; }
WRAP(lora_down_dropout,
     (Backend *be, float *a, const void *X, int ldx, int x_wf, const float *A, int N, int in, int r, float pr,
      uint64_t key),
     (IN, a, X, ldx, x_wf, A, N, in, r, pr, key), 2.0 * N * in * r, drop_x_bytes(p, x_wf, (double)N * in),
     "%dx%d r%d", N, in, r)
WRAP(lora_grad_a_dropout,
     (Backend *be, float *dA, const float *da, const void *X, int ldx, int x_wf, int N, int in, int r, float pr,
      uint64_t key),
     (IN, dA, da, X, ldx, x_wf, N, in, r, pr, key), 2.0 * N * in * r, drop_x_bytes(p, x_wf, (double)N * in),
     "%dx%d r%d", N, in, r)
WRAP(lora_dx_dropout,
     (Backend *be, float *dX, const float *da, const float *A, int N, int in, int r, float pr, uint64_t key),
     (IN, dX, da, A, N, in, r, pr, key), 2.0 * N * in * r, 8.0 * N * in, "%dx%d r%d", N, in, r)
WRAP(rope_fwd_wf, (Backend *be, void *x, const float *c, const float *sn, int B, int T, int nh, int D),
     (IN, x, c, sn, B, T, nh, D), 0, 2.0 * p->inner.weight_bytes * B * T * nh * D, "B%d T%d heads %d D%d", B, T, nh,
     D)
// attention in the weight format: q, k, v, P stored in it; the fp32 scores written and read once (forward),
// dP fp32 and dS in the format (backward)
WRAP(attention_fwd_wf,
     (Backend *be, float *out, void *probs, const void *q, const void *k, const void *v, const int32_t *mask, int B,
      int T, int H, int KVH, int D),
     (IN, out, probs, q, k, v, mask, B, T, H, KVH, D), 4.0 * B * H * T * T * D,
     p->inner.weight_bytes * (2.0 * B * T * H * D + 2.0 * B * T * KVH * D + 2.0 * B * H * T * T) + 4.0 * B * T * H * D +
         8.0 * B * H * T * T,
     "B%d T%d H%d/%d D%d", B, T, H, KVH, D)
WRAP(attention_bwd_wf,
     (Backend *be, float *dq, float *dk, float *dv, const float *dout, const void *probs, const void *q,
      const void *k, const void *v, int B, int T, int H, int KVH, int D),
     (IN, dq, dk, dv, dout, probs, q, k, v, B, T, H, KVH, D), 8.0 * B * H * T * T * D,
     p->inner.weight_bytes * (3.0 * B * T * H * D + 2.0 * B * T * KVH * D + 5.0 * B * H * T * T) +
         4.0 * (2.0 * B * T * H * D + 2.0 * B * T * KVH * D + 2.0 * B * H * T * T),
     "B%d T%d H%d/%d D%d", B, T, H, KVH, D)
// fused attention: q, k, v read in the format, out (and dout) fp32, no [B,H,T,T] tensor; the forward reads its
// products' operands twice (row statistics, then P v), the backward recomputes the scores in both of its passes
WRAP(attention_fused_fwd,
     (Backend *be, float *out, float *lse, const void *q, const void *k, const void *v, const int32_t *mask, int B,
      int T, int H, int KVH, int D),
     (IN, out, lse, q, k, v, mask, B, T, H, KVH, D), 6.0 * B * H * T * T * D,
     p->inner.weight_bytes * (B * T * H * D + 3.0 * B * T * KVH * D) + 4.0 * (B * T * H * D + B * H * T),
     "B%d T%d H%d/%d D%d", B, T, H, KVH, D)
WRAP(attention_fused_bwd,
     (Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
      const void *q, const void *k, const void *v, const int32_t *mask, int B, int T, int H, int KVH, int D),
     (IN, dq, dk, dv, dout, out, lse, q, k, v, mask, B, T, H, KVH, D), 14.0 * B * H * T * T * D,
     p->inner.weight_bytes * (3.0 * B * T * H * D + 2.0 * B * T * KVH * D) +
         4.0 * (3.0 * B * T * H * D + 2.0 * B * T * KVH * D + 2.0 * B * H * T),
     "B%d T%d H%d/%d D%d", B, T, H, KVH, D)
WRAP(rmsnorm_fwd_wf,
     (Backend *be, void *out, int ldo, float *rstd, const float *inp, const float *w, int N, int C, float eps),
     (IN, out, ldo, rstd, inp, w, N, C, eps), 0, (4.0 + p->inner.weight_bytes) * N * C, "%dx%d", N, C)
// the operand is read as stored (no cast): wgemm_bytes less the cast and the operand's fp32 / bf16 read
static void w_wgemm_lora_wf(Backend *be, int tw, int M, int out, int in, int r, void *Xw, const float *Xa,
                            const void *Wb, float beta, float *Y) {
    Profile *p = prof_of(be);
    double t0 = prof_begin(p), w = (double)p->inner.weight_bytes;
    p->inner.wgemm_lora_wf(IN, tw, M, out, in, r, Xw, Xa, Wb, beta, Y);
    int n = tw ? out : in, k = (tw ? in : out) + (Xa ? r : 0);
    double bytes = w * M * k + w * n * k + 4.0 * M * n * (beta != 0.0f ? 2 : 1);
    prof_end(p, t0, "wgemm_lora_wf", 2.0 * M * n * k, bytes, "%c %dx%dx%d%s", TR(tw), M, n, tw ? in : out,
             Xa ? "+r" : "");
}
WRAP(gemm_wf,
     (Backend *be, int ta, int tb, int M, int N, int K, float alpha, const void *A, int lda, int a_wf, const void *B,
      int ldb, int b_wf, float beta, float *C),
     (IN, ta, tb, M, N, K, alpha, A, lda, a_wf, B, ldb, b_wf, beta, C), 2.0 * M * N * K,
     wf_operand_bytes(p, a_wf, (double)M * K) + wf_operand_bytes(p, b_wf, (double)K * N) +
         4.0 * M * N * (beta != 0.0f ? 2 : 1),
     "%c%c %dx%dx%d %s%s", TR(ta), TR(tb), M, N, K, a_wf ? "w" : "f", b_wf ? "w" : "f")
WRAP(swiglu_fwd_wf, (Backend *be, void *h, int ldh, const void *gate, const void *up, int M, int C),
     (IN, h, ldh, gate, up, M, C), 0, 3.0 * p->inner.weight_bytes * M * C, "%dx%d", M, C)
WRAP(swiglu_bwd_wf,
     (Backend *be, void *dgate, void *dup, int ld, const float *dh, const void *gate, const void *up, int M, int C),
     (IN, dgate, dup, ld, dh, gate, up, M, C), 0, (4.0 + 4.0 * p->inner.weight_bytes) * M * C, "%dx%d", M, C)
WRAP_RET(double, row_norm_sum_wf, (Backend *be, const void *x, int ld, const int32_t *mask, int N, int C),
         (IN, x, ld, mask, N, C), 0, (double)p->inner.weight_bytes * N * C, "%dx%d", N, C)

// ---------------------------------------------------------------------------- start / stop

void profile_start(Profile *p, Backend *be) {
    memset(p, 0, sizeof *p);
    p->inner = *be;
    p->outer = be;
    be->ctx = p;
#define SET(op) be->op = w_##op;
    BACKEND_OPS(SET)
#undef SET
    p->t_reset = time_now();
}

void profile_reset(Profile *p) {
    p->n = 0;
    p->t_reset = time_now();
}

void profile_stop(Profile *p) {
    if (!p->outer) return;
    Backend *be = p->outer;
    *be = p->inner;  // the original table, with the state the ops left in it
    p->outer = NULL;
}

double profile_total(const Profile *p) {
    double s = 0.0;
    for (int i = 0; i < p->n; i++) s += p->e[i].seconds;
    return s;
}

const ProfileEntry *profile_find(const Profile *p, const char *key) {
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->e[i].key, key) == 0) return &p->e[i];
    return NULL;
}

static int by_seconds(const void *a, const void *b) {
    double x = ((const ProfileEntry *)a)->seconds, y = ((const ProfileEntry *)b)->seconds;
    return x < y ? 1 : x > y ? -1 : strcmp(((const ProfileEntry *)a)->key, ((const ProfileEntry *)b)->key);
}

static void print_row(FILE *f, const ProfileEntry *e, double total, long long steps, int width) {
    fprintf(f, "profile |   %-*s %10.3f %6.1f%% %10.1f", width, e->key, 1000.0 * e->seconds / (double)steps,
            total > 0 ? 100.0 * e->seconds / total : 0.0, (double)e->calls / (double)steps);
    if (e->seconds > 0 && e->bytes > 0)
        fprintf(f, " %8.0f", e->bytes / e->seconds / 1e9);
    else
        fprintf(f, " %8s", "");
    if (e->flops > 0 && e->seconds > 0) fprintf(f, " %8.1f", e->flops / e->seconds / 1e12);
    fprintf(f, "\n");
}

void profile_print(const Profile *p, FILE *f, long long steps, int top, double wall) {
    if (steps < 1) steps = 1;
    if (wall <= 0) wall = time_now() - p->t_reset;
    double total = profile_total(p);
    // per op name: the entries summed
    ProfileEntry *ops = xcalloc((size_t)(p->n ? p->n : 1), sizeof *ops, "profile by op");
    int n_ops = 0;
    for (int i = 0; i < p->n; i++) {
        int j = 0;
        while (j < n_ops && strcmp(ops[j].op, p->e[i].op) != 0) j++;
        if (j == n_ops) {
            snprintf(ops[j].key, sizeof ops[j].key, "%s", p->e[i].op);
            snprintf(ops[j].op, sizeof ops[j].op, "%s", p->e[i].op);
            n_ops++;
        }
        ops[j].calls += p->e[i].calls;
        ops[j].seconds += p->e[i].seconds;
        ops[j].flops += p->e[i].flops;
        ops[j].bytes += p->e[i].bytes;
    }
    ProfileEntry *keys = xmalloc((size_t)(p->n ? p->n : 1) * sizeof *keys, "profile by key");
    if (p->n) memcpy(keys, p->e, (size_t)p->n * sizeof *keys);
    qsort(ops, (size_t)n_ops, sizeof *ops, by_seconds);
    qsort(keys, (size_t)p->n, sizeof *keys, by_seconds);
    fprintf(f,
            "profile | %lld step(s): the ops took %.1f ms per step of %.1f ms wall (%.1f%%); every op "
            "synchronised, so nothing overlaps\n",
            steps, 1000.0 * total / (double)steps, 1000.0 * wall / (double)steps,
            wall > 0 ? 100.0 * total / wall : 0.0);
    fprintf(f, "profile |   %-18s %10s %7s %10s %8s %8s\n", "op", "ms/step", "share", "calls/step", "GB/s", "TFLOP/s");
    for (int i = 0; i < n_ops; i++) print_row(f, &ops[i], total, steps, 18);
    int shown = top < p->n ? top : p->n;
    fprintf(f, "profile |   %-44s %10s %7s %10s %8s %8s   (the %d costliest of %d shapes)\n", "op shape", "ms/step",
            "share", "calls/step", "GB/s", "TFLOP/s", shown, p->n);
    for (int i = 0; i < shown; i++) print_row(f, &keys[i], total, steps, 44);
    fflush(f);
    free(ops);
    free(keys);
}

void profile_log(const Profile *p, Log *lg, long long steps) {
    for (int i = 0; i < p->n; i++) {
        char rec[384];
        snprintf(rec, sizeof rec,
                 "{\"type\":\"profile\",\"op\":\"%s\",\"key\":\"%s\",\"steps\":%lld,\"calls\":%lld,\"seconds\":%.6f,"
                 "\"flops\":%.6g,\"bytes\":%.6g}",
                 p->e[i].op, p->e[i].key, steps, p->e[i].calls, p->e[i].seconds, p->e[i].flops, p->e[i].bytes);
        log_record(lg, rec);
    }
}

void profile_free(Profile *p) {
    profile_stop(p);
    free(p->e);
    p->e = NULL;
    p->n = p->cap = 0;
}
