// backend_cpu_internal.h: what the CPU backend's files share (backend_cpu*.c, backend_weights.c,
// backend_act_wf.c): the grow-only scratch buffer and the bf16 rounding of the bf16 emulation.
#ifndef ACTLORA_BACKEND_CPU_INTERNAL_H
#define ACTLORA_BACKEND_CPU_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "actlora/backend.h"
#include "actlora/common.h"
#include "actlora/rng.h"

// Grow-only scratch buffer of n floats (contents undefined); valid until the next call (backend_cpu.c).
float *cpu_scratch(Backend *be, size_t n, const char *what);

// row_norm_sum over rows of stride ld (backend_cpu.c; the row_norm_sum op is ld = C)
double cpu_row_norm_sum_ld(Backend *be, const float *x, size_t ld, const int32_t *mask, int N, int C);

// rmsnorm_fwd with out rows of stride ldo, rounded to bf16 when bf16 (backend_cpu.c; the op is ldo = C, 0)
void cpu_rmsnorm_fwd_ld(Backend *be, float *out, size_t ldo, int bf16, float *rstd, const float *inp, const float *w,
                        int N, int C, float eps);

// attention_fwd / attention_bwd, with bf = 1 the bf16 emulation of their _wf forms (backend_cpu_attn.c)
void cpu_attention_fwd_fmt(Backend *be, float *out, float *probs, const float *q, const float *k, const float *v,
                           const int32_t *mask, int B, int T, int H, int KVH, int D, int bf);
void cpu_attention_bwd_fmt(Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *probs,
                           const float *q, const float *k, const float *v, int B, int T, int H, int KVH, int D,
                           int bf);

// fp32 -> nearest bf16 (ties to even), returned as the fp32 value it represents. NaN stays NaN.
static inline float round_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) {
        u |= 0x00400000u;  // quiet NaN, payload kept in the top bits
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);  // may carry into the exponent (to inf past the largest bf16)
    }
    u &= 0xffff0000u;
    float r;
    memcpy(&r, &u, 4);
    return r;
}

// x rounded to the backend's weight format: bf16 in the bf16 emulation, as it is in fp32.
static inline float round_wf(const Backend *be, float x) {
    return be->weight_dtype == BACKEND_WEIGHT_BF16 ? round_bf16(x) : x;
}

// The elementwise formulas the fp32 ops and their weight-format / LoRA forms share (bit-identical results):
// h = silu(g) * u;
static inline float cpu_swiglu(float g, float u) { return g / (1.0f + expf(-g)) * u; }
// s = sigmoid(g): dsilu/dg = s (1 + g (1 - s)); dgate = dh up dsilu; dup = dh silu(g)
static inline void cpu_swiglu_grads(float d, float g, float u, float *dgate, float *dup) {
    float s = 1.0f / (1.0f + expf(-g));
    *dgate = d * u * (s * (1.0f + g * (1.0f - s)));
    *dup = d * (g * s);
}
// inverted dropout of element i under key: kept (rng_uniform(key, i) >= p) values / keep_scale (= 1 - p)
static inline float cpu_dropout_value(float v, uint64_t key, uint64_t i, float p, float keep_scale) {
    return rng_uniform(key, i) >= p ? v / keep_scale : 0.0f;
}

// the shape check of the bordered-weight ops (backend_weights.c, backend_act_wf.c)
static inline void cpu_lora_shape_check(const char *op, int M, int out, int in, int r) {
    check(M >= 0 && out > 0 && in > 0 && r > 0, "%s: bad shape M=%d out=%d in=%d r=%d", op, M, out, in, r);
}

// x[0..n) rounded to bf16 in place
static inline void round_bf16_inplace(Backend *be, float *x, size_t n) {
    #pragma omp parallel for num_threads(be->threads) if (n >= 32768) schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = round_bf16(x[i]);
}

// Y [M, n] = op [M, k] (row stride ldo) @ op(Wb) + beta Y for a bordered weight Wb (row stride ldw):
// trans_w = 1 its first n rows, k columns (transposed); 0 its first k rows, n columns (backend_weights.c)
void cpu_bordered_gemm(int trans_w, int M, int n, int k, const float *op, int ldo, const float *Wb, int ldw,
                       float beta, float *Y);

#endif
