// elementwise.cu: the CUDA backend's row-wise and elementwise ops — add, scale, embedding,
// RMSNorm, RoPE, SwiGLU, dropout, last-token pooling, AdamW. Semantics: backend.h.
//
// Arithmetic follows the CPU backend operation by operation, with the _rn intrinsics where nvcc
// would otherwise contract a*b+c into one FMA (the CPU build does not use FMA), so most ops agree
// with the CPU to the last bit or within an ulp; row reductions (RMSNorm) accumulate in fp64
// with a fixed-order block tree. Bad indices that the CPU backend checks on the host (a negative
// token id, a pooled position outside the row) are recorded in the device error flag and
// reported by the next synchronising call (cuda_sync_and_check) instead of being read.
#include <math.h>

#include "actlora/rng.h"
#include "cuda_internal.cuh"

// ---------------------------------------------------------------------------- add, scale

static __global__ void k_add(float *__restrict__ y, const float *__restrict__ x, size_t n) {
    GRID_STRIDE(i, n) y[i] = __fadd_rn(y[i], x[i]);
}

static __global__ void k_scale(float *x, float s, size_t n) {
    GRID_STRIDE(i, n) x[i] = __fmul_rn(x[i], s);
}

// y += x
static void cu_add(Backend *be, float *y, const float *x, size_t n) {
    if (!n) return;
    k_add<<<cuda_blocks(n), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(y, x, n);
    launch_check("add");
}

// x *= s
static void cu_scale(Backend *be, float *x, float s, size_t n) {
    if (!n) return;
    k_scale<<<cuda_blocks(n), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(x, s, n);
    launch_check("scale");
}

// ---------------------------------------------------------------------------- embedding

static void cu_embedding_fwd(Backend *be, float *out, const int32_t *ids, const float *wte, int N, int C) {
    size_t total = (size_t)N * (size_t)C;
    if (N <= 0 || C <= 0) return;
    CudaCtx *cx = cuda_ctx(be);
    k_embedding_rows<<<cuda_blocks(total), CUDA_THREADS, 0, cx->stream>>>(out, ids, wte, C, total, cx->d_err);
    launch_check("embedding_fwd");
}

// ---------------------------------------------------------------------------- RMSNorm

// one block per row: rstd[n] = 1/sqrt(mean(x^2) + eps) (fp64 sum), out = x * rstd * w in rows of stride ldo,
// T = float, or __nv_bfloat16 (rmsnorm_fwd_wf, act_wf.cu: the value rounded)
template <typename T>
static __global__ void k_rmsnorm_fwd(T *__restrict__ out, size_t ldo, float *__restrict__ rstd,
                                     const float *__restrict__ inp, const float *__restrict__ w, int C, float eps) {
    __shared__ double sh[CUDA_THREADS];
    size_t n = blockIdx.x;
    const float *x = inp + n * (size_t)C;
    T *y = out + n * ldo;
    double ss = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += (double)x[c] * (double)x[c];
    ss = block_sum(ss, sh);
    float r = (float)(1.0 / sqrt(ss / C + (double)eps));
    if (threadIdx.x == 0) rstd[n] = r;
    for (int c = threadIdx.x; c < C; c += blockDim.x) y[c] = cuda_to_fmt<T>(__fmul_rn(__fmul_rn(x[c], r), w[c]));
}

static void cu_rmsnorm_fwd(Backend *be, float *out, float *rstd, const float *inp, const float *w, int N, int C,
                           float eps) {
    cuda_rmsnorm_fwd_ld(be, out, 0, (size_t)C, rstd, inp, w, N, C, eps);
}

void cuda_rmsnorm_fwd_ld(Backend *be, void *out, int bf16, size_t ldo, float *rstd, const float *inp, const float *w,
                         int N, int C, float eps) {
    if (N <= 0) return;
    cudaStream_t st = cuda_ctx(be)->stream;
    if (bf16)
        k_rmsnorm_fwd<__nv_bfloat16><<<(unsigned)N, CUDA_THREADS, 0, st>>>((__nv_bfloat16 *)out, ldo, rstd, inp, w, C,
                                                                           eps);
    else
        k_rmsnorm_fwd<float><<<(unsigned)N, CUDA_THREADS, 0, st>>>((float *)out, ldo, rstd, inp, w, C, eps);
    launch_check("rmsnorm_fwd");
}

// dx_c += r w_c dy_c - x_c r^3 / C * sum_k dy_k w_k x_k   (accumulates)
static __global__ void k_rmsnorm_bwd(float *__restrict__ dinp, const float *__restrict__ dout,
                                     const float *__restrict__ inp, const float *__restrict__ w,
                                     const float *__restrict__ rstd, int C) {
    __shared__ double sh[CUDA_THREADS];
    size_t n = blockIdx.x;
    const float *x = inp + n * (size_t)C, *dy = dout + n * (size_t)C;
    float *dx = dinp + n * (size_t)C;
    float r = rstd[n];
    double dot = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dot += (double)dy[c] * (double)w[c] * (double)x[c];
    dot = block_sum(dot, sh);
    float coef = (float)(dot * (double)r * (double)r * (double)r / C);
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        dx[c] = __fadd_rn(dx[c], __fsub_rn(__fmul_rn(__fmul_rn(r, w[c]), dy[c]), __fmul_rn(x[c], coef)));
}

static void cu_rmsnorm_bwd(Backend *be, float *dinp, const float *dout, const float *inp, const float *w,
                           const float *rstd, int N, int C) {
    if (N <= 0) return;
    k_rmsnorm_bwd<<<(unsigned)N, CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(dinp, dout, inp, w, rstd, C);
    launch_check("rmsnorm_bwd");
}

// ---------------------------------------------------------------------------- RoPE

// x: [B, T, nh, D] in place, elements of type E (float; __nv_bfloat16 for rope_fwd_wf in the bf16 format:
// widened, rotated in fp32, rounded back with cuda_to_fmt); cos, sin: [T, D/2]; sign +1 rotates forward,
// -1 back. The float instance is the fp32 ops' kernel.
template <typename E>
static __global__ void k_rope(E *x, const float *__restrict__ cos_t, const float *__restrict__ sin_t, int T, int nh,
                              int D, float sign, size_t total) {
    int half = D / 2;
    GRID_STRIDE(idx, total) {  // idx over (b, t, h, i < half)
        size_t i = idx % (size_t)half, rest = idx / (size_t)half;
        size_t bt = rest / (size_t)nh;  // b * T + t
        size_t t = bt % (size_t)T;
        E *x1 = x + rest * (size_t)D, *x2 = x1 + half;  // rest = (b*T + t)*nh + h
        float a = cuda_to_float(x1[i]), bb = cuda_to_float(x2[i]), c = cos_t[t * half + i],
              s = sign * sin_t[t * half + i];
        x1[i] = cuda_to_fmt<E>(__fsub_rn(__fmul_rn(a, c), __fmul_rn(bb, s)));
        x2[i] = cuda_to_fmt<E>(__fadd_rn(__fmul_rn(bb, c), __fmul_rn(a, s)));
    }
}

// x fp32 (bf16 = 0) or bf16 (bf16 = 1)
static void rope_rotate(Backend *be, void *x, int bf16, const float *cos_t, const float *sin_t, int B, int T, int nh,
                        int D, float sign, const char *name) {
    check(D % 2 == 0, "rope: head dim %d is odd", D);
    size_t total = (size_t)B * T * nh * (D / 2);
    if (!total) return;
    cudaStream_t st = cuda_ctx(be)->stream;
    if (bf16)
        k_rope<__nv_bfloat16><<<cuda_blocks(total), CUDA_THREADS, 0, st>>>((__nv_bfloat16 *)x, cos_t, sin_t, T, nh, D,
                                                                          sign, total);
    else
        k_rope<float><<<cuda_blocks(total), CUDA_THREADS, 0, st>>>((float *)x, cos_t, sin_t, T, nh, D, sign, total);
    launch_check(name);
}

void cuda_rope_fwd_fmt(Backend *be, void *x, int bf16, const float *cos_t, const float *sin_t, int B, int T, int nh,
                       int D) {
    rope_rotate(be, x, bf16, cos_t, sin_t, B, T, nh, D, 1.0f, bf16 ? "rope_fwd_wf" : "rope_fwd");
}

static void cu_rope_fwd(Backend *be, float *x, const float *cos_t, const float *sin_t, int B, int T, int nh, int D) {
    cuda_rope_fwd_fmt(be, x, 0, cos_t, sin_t, B, T, nh, D);
}

static void cu_rope_bwd(Backend *be, float *dx, const float *cos_t, const float *sin_t, int B, int T, int nh, int D) {
    rope_rotate(be, dx, 0, cos_t, sin_t, B, T, nh, D, -1.0f, "rope_bwd");
}

// ---------------------------------------------------------------------------- SwiGLU

// the formulas: cuda_swiglu, cuda_swiglu_grads (cuda_internal.cuh; act_wf.cu's weight-format forms use them too)
static __global__ void k_swiglu_fwd(float *__restrict__ h, const float *__restrict__ gate,
                                    const float *__restrict__ up, size_t n) {
    GRID_STRIDE(i, n) h[i] = cuda_swiglu(gate[i], up[i]);
}

static __global__ void k_swiglu_bwd(float *__restrict__ dgate, float *__restrict__ dup, const float *__restrict__ dh,
                                    const float *__restrict__ gate, const float *__restrict__ up, size_t n) {
    GRID_STRIDE(i, n) {
        float dg, du;
        cuda_swiglu_grads(dh[i], gate[i], up[i], &dg, &du);
        dgate[i] = dg;
        dup[i] = du;
    }
}

static void cu_swiglu_fwd(Backend *be, float *h, const float *gate, const float *up, size_t n) {
    if (!n) return;
    k_swiglu_fwd<<<cuda_blocks(n), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(h, gate, up, n);
    launch_check("swiglu_fwd");
}

static void cu_swiglu_bwd(Backend *be, float *dgate, float *dup, const float *dh, const float *gate, const float *up,
                          size_t n) {
    if (!n) return;
    k_swiglu_bwd<<<cuda_blocks(n), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(dgate, dup, dh, gate, up, n);
    launch_check("swiglu_bwd");
}

// ---------------------------------------------------------------------------- dropout

// out[i] = rng_uniform(key, i) >= p ? inp[i] / (1 - p) : 0 — rng.h's draw, so the mask is the
// CPU backend's bit for bit (cuda_dropout_value, cuda_internal.cuh); out may alias inp (each element is
// read, then written, by one thread)
static __global__ void k_dropout(float *out, const float *inp, size_t n, float p, float keep_scale, uint64_t key) {
    GRID_STRIDE(i, n) out[i] = cuda_dropout_value(inp[i], key, (uint64_t)i, p, keep_scale);
}

static void cu_dropout(Backend *be, float *out, const float *inp, size_t n, float p, uint64_t key) {
    CudaCtx *cx = cuda_ctx(be);
    check(p >= 0.0f && p <= 1.0f, "dropout: probability %g is outside [0, 1]", (double)p);
    if (!n) return;
    if (p == 0.0f) {
        if (out != inp) be->copy(be, out, inp, n * sizeof(float));
        return;
    }
    k_dropout<<<cuda_blocks(n), CUDA_THREADS, 0, cx->stream>>>(out, inp, n, p, 1.0f - p, key);
    launch_check("dropout");
}

// ---------------------------------------------------------------------------- random init

static __global__ void k_randn(float *x, size_t n, float mean, float std, uint64_t key) {
    GRID_STRIDE(i, n) x[i] = mean + std * rng_normal(key, (uint64_t)i);
}

static void cu_randn(Backend *be, float *x, size_t n, float mean, float std, uint64_t key) {
    if (!n) return;
    k_randn<<<cuda_blocks(n), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(x, n, mean, std, key);
    launch_check("randn");
}

// ---------------------------------------------------------------------------- pooling

// pooled[b, :] = x[b, last[b], :]; a position outside [0, T) sets the error flag, writes zeros
static __global__ void k_pool_fwd(float *__restrict__ pooled, const float *__restrict__ x,
                                  const int32_t *__restrict__ last, int T, int C, size_t total, int *err) {
    GRID_STRIDE(i, total) {
        size_t b = i / (size_t)C, c = i % (size_t)C;
        int l = last[b];
        if (l < 0 || l >= T) {
            if (c == 0) cuda_set_error(err, CUDA_ERR_POOL_LAST, (int)b, l, T);
            pooled[i] = 0.0f;
        } else {
            pooled[i] = x[(b * T + (size_t)l) * C + c];
        }
    }
}

// dx[b, last[b], :] += dpooled[b, :] (each (b, c) owns its target element: no races)
static __global__ void k_pool_bwd(float *__restrict__ dx, const float *__restrict__ dpooled,
                                  const int32_t *__restrict__ last, int T, int C, size_t total, int *err) {
    GRID_STRIDE(i, total) {
        size_t b = i / (size_t)C, c = i % (size_t)C;
        int l = last[b];
        if (l < 0 || l >= T) {
            if (c == 0) cuda_set_error(err, CUDA_ERR_POOL_LAST, (int)b, l, T);
        } else {
            float *d = dx + (b * T + (size_t)l) * C + c;
            *d = __fadd_rn(*d, dpooled[i]);
        }
    }
}

static void cu_pool_last_fwd(Backend *be, float *pooled, const float *x, const int32_t *last, int B, int T, int C) {
    CudaCtx *cx = cuda_ctx(be);
    size_t total = (size_t)B * (size_t)C;
    if (B <= 0 || C <= 0) return;
    k_pool_fwd<<<cuda_blocks(total), CUDA_THREADS, 0, cx->stream>>>(pooled, x, last, T, C, total, cx->d_err);
    launch_check("pool_last_fwd");
}

static void cu_pool_last_bwd(Backend *be, float *dx, const float *dpooled, const int32_t *last, int B, int T, int C) {
    CudaCtx *cx = cuda_ctx(be);
    size_t total = (size_t)B * (size_t)C;
    if (B <= 0 || C <= 0) return;
    k_pool_bwd<<<cuda_blocks(total), CUDA_THREADS, 0, cx->stream>>>(dx, dpooled, last, T, C, total, cx->d_err);
    launch_check("pool_last_bwd");
}

// ---------------------------------------------------------------------------- AdamW

static __global__ void k_adamw(float *__restrict__ p, const float *__restrict__ g, float *__restrict__ m,
                               float *__restrict__ v, size_t n, float decay, float b1, float b2, float omb1,
                               float omb2, float step_size, float bc2_sqrt, float eps) {
    GRID_STRIDE(i, n) {
        float gi = g[i];
        float pi = __fmul_rn(p[i], decay);
        float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(omb1, gi));
        float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(omb2, gi), gi));
        m[i] = mi;
        v[i] = vi;
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        p[i] = __fsub_rn(pi, __fmul_rn(step_size, __fdiv_rn(mi, denom)));
    }
}

// The CPU backend's scalars (formed in double, rounded to fp32 as PyTorch does), then one kernel.
static void cu_adamw(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                     float b2, float eps, float wd, int t) {
    check(t >= 1, "adamw: step %d must be >= 1", t);
    if (!n) return;
    float decay = (float)(1.0 - (double)lr * (double)wd);
    double bc1 = 1.0 - pow((double)b1, (double)t);
    double bc2 = 1.0 - pow((double)b2, (double)t);
    float step_size = (float)((double)lr / bc1);
    float bc2_sqrt = (float)sqrt(bc2);
    k_adamw<<<cuda_blocks(n), CUDA_THREADS, 0, cuda_ctx(be)->stream>>>(p, g, m, v, n, decay, b1, b2, 1.0f - b1,
                                                                     1.0f - b2, step_size, bc2_sqrt, eps);
    launch_check("adamw");
}

void cuda_install_elementwise(Backend *be) {
    be->add = cu_add;
    be->scale = cu_scale;
    be->embedding_fwd = cu_embedding_fwd;
    be->rmsnorm_fwd = cu_rmsnorm_fwd;
    be->rmsnorm_bwd = cu_rmsnorm_bwd;
    be->rope_fwd = cu_rope_fwd;
    be->rope_bwd = cu_rope_bwd;
    be->swiglu_fwd = cu_swiglu_fwd;
    be->swiglu_bwd = cu_swiglu_bwd;
    be->dropout = cu_dropout;
    be->randn = cu_randn;
    be->pool_last_fwd = cu_pool_last_fwd;
    be->pool_last_bwd = cu_pool_last_bwd;
    be->adamw = cu_adamw;
}
