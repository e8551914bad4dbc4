// backend_cpu.c: the fp32 CPU reference backend (OpenBLAS for GEMMs, OpenMP over rows for
// everything else). Attention lives in backend_cpu_attn.c. Semantics of every op: backend.h.
//
// Threading: every parallel region names num_threads(be->threads), so two backends with
// different thread counts can coexist (the OpenBLAS thread count is process-wide: the last
// backend_cpu_init wins). Nothing here depends on the thread count numerically: rows are
// independent and the one reduction (sumsq) is summed in a fixed block order.
#include "actlora/backend.h"
#include "actlora/common.h"
#include "actlora/rng.h"
#include "backend_cpu_internal.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

void openblas_set_num_threads(int num_threads);  // also in OpenBLAS's cblas.h; harmless repeat
int openblas_get_parallel(void);                  // likewise

// defined in backend_cpu_attn.c
void cpu_attention_fwd(Backend *be, float *out, float *probs, const float *q, const float *k,
                       const float *v, const int32_t *mask, int B, int T, int H, int KVH, int D);
void cpu_attention_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                       const float *probs, const float *q, const float *k, const float *v,
                       int B, int T, int H, int KVH, int D);

// below this many elements an elementwise op runs on one thread (fork/join costs more)
#define PAR_MIN 32768
// sumsq block size: partial sums per block, then blocks summed in index order
#define SUMSQ_BLOCK 4096

typedef struct {
    float *scratch;  // grow-only temporary (attention backward's dS), owned by the backend
    size_t scratch_n;
} CpuCtx;

// Grow-only scratch buffer of n floats (contents undefined); valid until the next call.
float *cpu_scratch(Backend *be, size_t n, const char *what) {
    CpuCtx *cx = (CpuCtx *)be->ctx;
    if (n > cx->scratch_n) {
        free(cx->scratch);
        cx->scratch = NULL;
        void *p = NULL;
        int rc = posix_memalign(&p, 64, n * sizeof(float));
        check(rc == 0 && p, "out of memory allocating %zu bytes of scratch for %s", n * sizeof(float), what);
        cx->scratch = (float *)p;
        cx->scratch_n = n;
    }
    return cx->scratch;
}

// ------------------------------------------------------------------------------ memory

static void *cpu_alloc(Backend *be, size_t bytes, const char *what) {
    (void)be;
    void *p = NULL;
    size_t n = bytes ? bytes : 64;
    int rc = posix_memalign(&p, 64, n);
    check(rc == 0 && p, "out of memory allocating %zu bytes for %s", bytes, what ? what : "(unnamed buffer)");
    memset(p, 0, n);
    return p;
}

static void cpu_free(Backend *be, void *p) {
    (void)be;
    free(p);
}

static void cpu_memcpy(Backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes && dst != src) memmove(dst, src, bytes);
}

static void cpu_zero(Backend *be, void *p, size_t bytes) {
    (void)be;
    if (bytes) memset(p, 0, bytes);
}

static void cpu_sync(Backend *be) { (void)be; }

// ------------------------------------------------------------------------------ dense algebra

// C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C
static void cpu_gemm(Backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                     const float *A, const float *B, float beta, float *C) {
    (void)be;  // OpenBLAS threads were set by backend_cpu_init
    check(M >= 0 && N >= 0 && K >= 0, "gemm: negative size M=%d N=%d K=%d", M, N, K);
    if (M == 0 || N == 0) return;
    if (K == 0) {  // empty product: C = beta * C (beta == 0 overwrites, as BLAS does)
        size_t n = (size_t)M * N;
        for (size_t i = 0; i < n; i++) C[i] = beta == 0.0f ? 0.0f : beta * C[i];
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, trans_a ? M : K, B, trans_b ? K : N, beta, C, N);
}

// y += x
static void cpu_add(Backend *be, float *y, const float *x, size_t n) {
    #pragma omp parallel for simd num_threads(be->threads) if (parallel : n >= PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

// x *= s
static void cpu_scale(Backend *be, float *x, float s, size_t n) {
    #pragma omp parallel for simd num_threads(be->threads) if (parallel : n >= PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

// sum of squares in fp64: fixed blocks of SUMSQ_BLOCK, partials summed in block order, so
// the result depends on n only (not on the thread count or schedule).
static double cpu_sumsq(Backend *be, const float *x, size_t n) {
    size_t nb = (n + SUMSQ_BLOCK - 1) / SUMSQ_BLOCK;
    double local[64];
    double *part = nb <= 64 ? local : (double *)xmalloc(nb * sizeof(double), "sumsq block partials");
    #pragma omp parallel for num_threads(be->threads) if (nb > 1) schedule(static)
    for (size_t blk = 0; blk < nb; blk++) {
        size_t lo = blk * SUMSQ_BLOCK, hi = lo + SUMSQ_BLOCK < n ? lo + SUMSQ_BLOCK : n;
        double s = 0.0;
        #pragma omp simd reduction(+ : s)
        for (size_t i = lo; i < hi; i++) s += (double)x[i] * (double)x[i];
        part[blk] = s;
    }
    double total = 0.0;
    for (size_t blk = 0; blk < nb; blk++) total += part[blk];
    if (part != local) free(part);
    return total;
}

static void cpu_randn(Backend *be, float *x, size_t n, float mean, float std, uint64_t key) {
    #pragma omp parallel for num_threads(be->threads) if (n >= PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = mean + std * rng_normal(key, (uint64_t)i);
}

// per-row norms in fp64 into a buffer, then summed in row order: independent of the threads
static double cpu_row_norm_sum(Backend *be, const float *x, const int32_t *mask, int N, int C) {
    return cpu_row_norm_sum_ld(be, x, (size_t)C, mask, N, C);
}

double cpu_row_norm_sum_ld(Backend *be, const float *x, size_t ld, const int32_t *mask, int N, int C) {
    double *norms = xmalloc((size_t)(N > 0 ? N : 1) * sizeof(double), "row norms");
    #pragma omp parallel for num_threads(be->threads) if (N >= 64) schedule(static)
    for (int n = 0; n < N; n++) {
        double s = 0.0;
        if (mask[n])
            for (int c = 0; c < C; c++) s += (double)x[(size_t)n * ld + c] * (double)x[(size_t)n * ld + c];
        norms[n] = sqrt(s);
    }
    double total = 0.0;
    for (int n = 0; n < N; n++) total += norms[n];
    free(norms);
    return total;
}

// ------------------------------------------------------------------------------ embedding

// out[n, :] = wte[ids[n], :]; ids: [N], wte: [V, C], out: [N, C]
static void cpu_embedding_fwd(Backend *be, float *out, const int32_t *ids, const float *wte, int N, int C) {
    for (int n = 0; n < N; n++) check(ids[n] >= 0, "embedding_fwd: token %d has negative id %d", n, (int)ids[n]);
    #pragma omp parallel for num_threads(be->threads) if ((size_t)N * C >= PAR_MIN) schedule(static)
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, wte + (size_t)ids[n] * C, (size_t)C * sizeof(float));
}

// ------------------------------------------------------------------------------ RMSNorm

// inp, out: [N, C]; w: [C]; rstd: [N]
static void cpu_rmsnorm_fwd(Backend *be, float *out, float *rstd, const float *inp, const float *w,
                            int N, int C, float eps) {
    cpu_rmsnorm_fwd_ld(be, out, (size_t)C, 0, rstd, inp, w, N, C, eps);
}

void cpu_rmsnorm_fwd_ld(Backend *be, float *out, size_t ldo, int bf16, float *rstd, const float *inp, const float *w,
                        int N, int C, float eps) {
    #pragma omp parallel for num_threads(be->threads) if ((size_t)N * C >= PAR_MIN) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * ldo;
        double ss = 0.0;
        #pragma omp simd reduction(+ : ss)
        for (int c = 0; c < C; c++) ss += (double)x[c] * (double)x[c];
        float r = (float)(1.0 / sqrt(ss / C + (double)eps));
        rstd[n] = r;
        #pragma omp simd
        for (int c = 0; c < C; c++) y[c] = x[c] * r * w[c];
        if (bf16)
            for (int c = 0; c < C; c++) y[c] = round_bf16(y[c]);
    }
}

// y_c = x_c r w_c, r = (mean(x^2) + eps)^-1/2  =>
// dx_c += r w_c dy_c - x_c r^3 / C * sum_k dy_k w_k x_k
static void cpu_rmsnorm_bwd(Backend *be, float *dinp, const float *dout, const float *inp, const float *w,
                            const float *rstd, int N, int C) {
    #pragma omp parallel for num_threads(be->threads) if ((size_t)N * C >= PAR_MIN) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float r = rstd[n];
        double dot = 0.0;
        #pragma omp simd reduction(+ : dot)
        for (int c = 0; c < C; c++) dot += (double)dy[c] * (double)w[c] * (double)x[c];
        float coef = (float)(dot * (double)r * (double)r * (double)r / C);
        #pragma omp simd
        for (int c = 0; c < C; c++) dx[c] += r * w[c] * dy[c] - x[c] * coef;
    }
}

// ------------------------------------------------------------------------------ rotary embedding

// x: [B, T, nh, D] in place; cos, sin: [T, D/2]. sign = +1 forward rotation, -1 inverse.
static void rope_rotate(Backend *be, float *x, const float *cos_t, const float *sin_t, int B, int T,
                        int nh, int D, float sign) {
    check(D % 2 == 0, "rope: head dim %d is odd", D);
    int half = D / 2;
    #pragma omp parallel for collapse(2) num_threads(be->threads) if ((size_t)B * T * nh * D >= PAR_MIN) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            const float *cs = cos_t + (size_t)t * half, *sn = sin_t + (size_t)t * half;
            for (int h = 0; h < nh; h++) {
                float *x1 = x + (((size_t)b * T + t) * nh + h) * D, *x2 = x1 + half;
                #pragma omp simd
                for (int i = 0; i < half; i++) {
                    float a = x1[i], bb = x2[i], c = cs[i], s = sign * sn[i];
                    x1[i] = a * c - bb * s;
                    x2[i] = bb * c + a * s;
                }
            }
        }
    }
}

// x1' = x1 cos - x2 sin ; x2' = x2 cos + x1 sin
static void cpu_rope_fwd(Backend *be, float *x, const float *cos_t, const float *sin_t, int B, int T, int nh, int D) {
    rope_rotate(be, x, cos_t, sin_t, B, T, nh, D, 1.0f);
}

// dx1 = dy1 cos + dy2 sin ; dx2 = dy2 cos - dy1 sin
static void cpu_rope_bwd(Backend *be, float *dx, const float *cos_t, const float *sin_t, int B, int T, int nh, int D) {
    rope_rotate(be, dx, cos_t, sin_t, B, T, nh, D, -1.0f);
}

// ------------------------------------------------------------------------------ SwiGLU

// h = silu(gate) * up, silu(x) = x / (1 + exp(-x))
static void cpu_swiglu_fwd(Backend *be, float *h, const float *gate, const float *up, size_t n) {
    #pragma omp parallel for num_threads(be->threads) if (n >= PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) h[i] = cpu_swiglu(gate[i], up[i]);
}

// dgate, dup (cpu_swiglu_grads, backend_cpu_internal.h)
static void cpu_swiglu_bwd(Backend *be, float *dgate, float *dup, const float *dh, const float *gate,
                           const float *up, size_t n) {
    #pragma omp parallel for num_threads(be->threads) if (n >= PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) cpu_swiglu_grads(dh[i], gate[i], up[i], &dgate[i], &dup[i]);
}

// ------------------------------------------------------------------------------ dropout

// out[i] = rng_uniform(key, i) >= p ? inp[i] / (1 - p) : 0; out may alias inp
static void cpu_dropout(Backend *be, float *out, const float *inp, size_t n, float p, uint64_t key) {
    check(p >= 0.0f && p <= 1.0f, "dropout: probability %g is outside [0, 1]", (double)p);
    if (p == 0.0f) {
        if (out != inp && n) memmove(out, inp, n * sizeof(float));
        return;
    }
    float keep_scale = 1.0f - p;
    #pragma omp parallel for num_threads(be->threads) if (n >= PAR_MIN / 4) schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] = cpu_dropout_value(inp[i], key, (uint64_t)i, p, keep_scale);
}

// ------------------------------------------------------------------------------ classification head

// pooled[b, :] = x[b, last[b], :]; x: [B,T,C], last: [B], pooled: [B,C]
static void cpu_pool_last_fwd(Backend *be, float *pooled, const float *x, const int32_t *last, int B, int T, int C) {
    (void)be;
    for (int b = 0; b < B; b++) {
        check(last[b] >= 0 && last[b] < T, "pool_last_fwd: row %d pools position %d, outside [0, %d)", b, (int)last[b], T);
        memcpy(pooled + (size_t)b * C, x + ((size_t)b * T + last[b]) * C, (size_t)C * sizeof(float));
    }
}

// dx[b, last[b], :] += dpooled[b, :]
static void cpu_pool_last_bwd(Backend *be, float *dx, const float *dpooled, const int32_t *last, int B, int T, int C) {
    (void)be;
    for (int b = 0; b < B; b++) {
        check(last[b] >= 0 && last[b] < T, "pool_last_bwd: row %d pools position %d, outside [0, %d)", b, (int)last[b], T);
        float *d = dx + ((size_t)b * T + last[b]) * C;
        const float *s = dpooled + (size_t)b * C;
        for (int c = 0; c < C; c++) d[c] += s[c];
    }
}

// K > 1: cross-entropy (log-sum-exp in fp64); K == 1: squared error. logits, dlogits: [B, K]
static void cpu_loss_fwd_bwd(Backend *be, double *loss_sum, float *dlogits, const float *logits,
                             const int32_t *labels_i, const float *labels_f, int B, int K, float grad_scale) {
    (void)be;
    check(K >= 1, "loss_fwd_bwd: %d classes", K);
    double total = 0.0;
    if (K == 1) {
        check(labels_f != NULL || B == 0, "loss_fwd_bwd: regression (K == 1) needs float labels");
        for (int b = 0; b < B; b++) {
            double diff = (double)logits[b] - (double)labels_f[b];
            total += diff * diff;
            dlogits[b] = (float)(2.0 * diff) * grad_scale;
        }
    } else {
        check(labels_i != NULL || B == 0, "loss_fwd_bwd: classification (K = %d) needs integer labels", K);
        for (int b = 0; b < B; b++) {
            int y = labels_i[b];
            check(y >= 0 && y < K, "loss_fwd_bwd: row %d has label %d, outside [0, %d): check the data set's labels and num_labels", b, y, K);
            const float *z = logits + (size_t)b * K;
            float *dz = dlogits + (size_t)b * K;
            double mx = z[0];
            for (int k = 1; k < K; k++) mx = z[k] > mx ? z[k] : mx;
            double se = 0.0;
            for (int k = 0; k < K; k++) se += exp((double)z[k] - mx);
            double lse = mx + log(se);
            total += lse - (double)z[y];
            for (int k = 0; k < K; k++) {
                double pk = exp((double)z[k] - lse);
                dz[k] = (float)((pk - (k == y ? 1.0 : 0.0)) * (double)grad_scale);
            }
        }
    }
    *loss_sum = total;
}

// ------------------------------------------------------------------------------ optimizer

// torch.optim.AdamW (single-tensor path): scalars are formed in double the way Python does,
// then rounded to fp32 as PyTorch's kernels do with Python scalars.
static void cpu_adamw(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr,
                      float b1, float b2, float eps, float wd, int t) {
    check(t >= 1, "adamw: step %d must be >= 1", t);
    float decay = (float)(1.0 - (double)lr * (double)wd);
    double bc1 = 1.0 - pow((double)b1, (double)t);
    double bc2 = 1.0 - pow((double)b2, (double)t);
    float step_size = (float)((double)lr / bc1);
    float bc2_sqrt = (float)sqrt(bc2);
    float omb1 = 1.0f - b1, omb2 = 1.0f - b2;
    #pragma omp parallel for simd num_threads(be->threads) if (parallel : n >= PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        float pi = p[i] * decay;
        float mi = b1 * m[i] + omb1 * gi;
        float vi = b2 * v[i] + omb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}

// ------------------------------------------------------------------------------ init / free

// Releases the CPU backend's private state.
static void cpu_destroy(Backend *be) {
    CpuCtx *cx = (CpuCtx *)be->ctx;
    free(cx->scratch);
    free(cx);
}

void backend_cpu_init(Backend *be, int threads) {
    memset(be, 0, sizeof *be);
    if (threads <= 0) threads = omp_get_max_threads();
    if (threads < 1) threads = 1;
    openblas_set_num_threads(threads);
    omp_set_num_threads(threads);
    be->name = "cpu";
    be->ctx = xcalloc(1, sizeof(CpuCtx), "cpu backend context");
    be->threads = threads;

    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_memcpy;
    be->download = cpu_memcpy;
    be->zero = cpu_zero;
    be->copy = cpu_memcpy;
    be->sync = cpu_sync;
    be->destroy = cpu_destroy;

    be->gemm = cpu_gemm;
    be->add = cpu_add;
    be->scale = cpu_scale;
    be->sumsq = cpu_sumsq;
    be->row_norm_sum = cpu_row_norm_sum;

    be->embedding_fwd = cpu_embedding_fwd;
    be->rmsnorm_fwd = cpu_rmsnorm_fwd;
    be->rmsnorm_bwd = cpu_rmsnorm_bwd;
    be->rope_fwd = cpu_rope_fwd;
    be->rope_bwd = cpu_rope_bwd;
    be->attention_fwd = cpu_attention_fwd;
    be->attention_bwd = cpu_attention_bwd;
    be->swiglu_fwd = cpu_swiglu_fwd;
    be->swiglu_bwd = cpu_swiglu_bwd;
    be->dropout = cpu_dropout;
    be->randn = cpu_randn;
    be->pool_last_fwd = cpu_pool_last_fwd;
    be->pool_last_bwd = cpu_pool_last_bwd;
    be->loss_fwd_bwd = cpu_loss_fwd_bwd;
    be->adamw = cpu_adamw;
    backend_cpu_weights_init(be);  // weight_alloc, weight_upload, weight_randn, wgemm, ... (backend_weights.c)
    backend_cpu_act_wf_init(be);   // activations in the weight format (backend_act_wf.c)
    backend_cpu_lora_init(be);     // LoRA dropout (backend_cpu_lora.c)
    backend_cpu_attn_fused_init(be);  // fused attention (backend_cpu_attn_fused.c)
    backend_cpu_enc_init(be);
    // every op filled: a missing one would be a NULL call much later
#define NEED(op) check(be->op != NULL, "internal: the CPU backend leaves op '%s' unset", #op);
    BACKEND_OPS(NEED)
#undef NEED
}

void backend_free(Backend *be) {
    if (!be || !be->ctx) return;
    be->destroy(be);
    be->ctx = NULL;
}

int backend_cpu_blas_threading(void) { return openblas_get_parallel(); }
