// backend_cpu_attn_fused.c: fused attention (model.attention = "fused") for the CPU backend, the plain-C
// reference of the CUDA kernels in src/cuda/attention_fused.cu (backend.h "fused attention").
//
// The attention of backend_cpu_attn.c without the [B,H,T,T] probabilities: the forward keeps one
// log-sum-exp per query row (lse [B,H,T]) next to its output, and the backward recomputes the
// probabilities from the scores and lse. Layouts: q, dq, out, dout: [B,T,H,D]; k, v, dk, dv:
// [B,T,KVH,D]; lse: [B,H,T]; mask: [B,T] (1 = real). Query head h reads kv head h / (H/KVH); key j is
// visible to query i iff j <= i and mask[b,j] == 1. q, k, v are in the weight format (fp32 here; in the
// bf16 emulation they hold bf16-rounded values), and with bf = 1 P, dout and dS are rounded to bf16 before
// their products, as the CUDA kernels' tensor-core operands are.
//
//   forward, row i:   s_j = scale q_i . k_j (visible j), m = max s, l = sum exp(s - m)
//                     P_ij = exp(s_j - m) / l (rounded), out_i = sum_j P_ij v_j, lse_i = m + log l
//                     (no visible key: out_i = 0, lse_i = -inf)
//   backward:         P_ij = exp(s_j - lse_i) (rounded; 0 for invisible keys and lse_i = -inf)
//                     delta_i = sum_d dout_id out_id (fp32, unrounded dout)
//                     dS_ij = P_ij (dout_i . v_j - delta_i) scale (rounded)
//                     dq_i = sum_j dS_ij k_j,  dk_j = sum_h sum_i dS_ij q_i,  dv_j = sum_h sum_i P_ij dout_i
// Plain loops, every sum in a fixed order (d, then j or i ascending; heads in order), tasks over (b, h)
// and (b, g) by OpenMP: the results do not depend on the thread count.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/backend.h"
#include "actlora/common.h"
#include "backend_cpu_internal.h"

static void fused_check(const char *op, int B, int T, int H, int KVH, int D) {
    check(B >= 0 && T >= 0 && D > 0 && H > 0 && KVH > 0 && H % KVH == 0,
          "%s: bad shape B=%d T=%d H=%d KVH=%d D=%d (H must be a multiple of KVH)", op, B, T, H, KVH, D);
}

static int is_bf16(const Backend *be) { return be->weight_dtype == BACKEND_WEIGHT_BF16; }

static float dot(const float *a, const float *b, int D) {
    float s = 0.0f;
    for (int d = 0; d < D; d++) s += a[d] * b[d];
    return s;
}

// Query row i of head h in batch b: out[b,i,h,:] and lse[b,h,i]; s: T floats of scratch.
static void fused_fwd_row(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *mask,
                          int b, int h, int i, int T, int H, int KVH, int D, int bf, float *s) {
    int g = h / (H / KVH);
    float scale = 1.0f / sqrtf((float)D);
    const int32_t *mb = mask + (size_t)b * T;
    const float *qi = q + (((size_t)b * T + i) * H + h) * D;
    float *oi = out + (((size_t)b * T + i) * H + h) * D;
    float m = -INFINITY;
    for (int j = 0; j <= i; j++) {
        if (mb[j] != 1) continue;
        s[j] = scale * dot(qi, k + (((size_t)b * T + j) * KVH + g) * D, D);
        m = s[j] > m ? s[j] : m;
    }
    memset(oi, 0, (size_t)D * sizeof(float));
    float *li = lse + ((size_t)b * H + h) * T + i;
    if (m == -INFINITY) {  // no visible key (left padding): out 0
        *li = -INFINITY;
        return;
    }
    float l = 0.0f;
    for (int j = 0; j <= i; j++)
        if (mb[j] == 1) l += expf(s[j] - m);
    for (int j = 0; j <= i; j++) {
        if (mb[j] != 1) continue;
        float p = expf(s[j] - m) / l;
        if (bf) p = round_bf16(p);
        const float *vj = v + (((size_t)b * T + j) * KVH + g) * D;
        for (int d = 0; d < D; d++) oi[d] += p * vj[d];
    }
    *li = m + logf(l);
}

static void cpu_attention_fused_fwd(Backend *be, float *out, float *lse, const void *q, const void *k, const void *v,
                                    const int32_t *mask, int B, int T, int H, int KVH, int D) {
    fused_check("attention_fused_fwd", B, T, H, KVH, D);
    int bf = is_bf16(be);
    #pragma omp parallel num_threads(be->threads)
    {
        float *s = malloc((size_t)(T > 0 ? T : 1) * sizeof(float));
        check(s != NULL, "attention_fused_fwd: out of memory for %d scores", T);
        #pragma omp for collapse(2) schedule(dynamic)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < T; i++)
                    fused_fwd_row(out, lse, (const float *)q, (const float *)k, (const float *)v, mask, b, h, i, T,
                                  H, KVH, D, bf, s);
        free(s);
    }
}

// What the backward needs of visible query row i (head h) against key j: P_ij and dS_ij. dob: the row's dout,
// rounded when bf; delta: its delta_i.
static void fused_p_ds(float *p, float *ds, const float *qi, const float *kj, const float *vj, const float *dob,
                       float lse_i, float delta, int D, int bf) {
    float scale = 1.0f / sqrtf((float)D);
    float pv = expf(scale * dot(qi, kj, D) - lse_i);
    if (bf) pv = round_bf16(pv);
    float dsv = pv * (dot(dob, vj, D) - delta) * scale;
    *p = pv;
    *ds = bf ? round_bf16(dsv) : dsv;
}

static int visible(const int32_t *mb, const float *lse_row, int i, int j) {
    return j <= i && mb[j] == 1 && lse_row[i] != -INFINITY;
}

static void cpu_attention_fused_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                    const float *lse, const void *qv, const void *kv, const void *vv,
                                    const int32_t *mask, int B, int T, int H, int KVH, int D) {
    fused_check("attention_fused_bwd", B, T, H, KVH, D);
    if (B == 0 || T == 0) return;
    int bf = is_bf16(be), rep = H / KVH;
    const float *q = qv, *k = kv, *v = vv;
    // once for both passes: dout in the format (the products' operand, [B,T,H,D]) and delta [B,H,T]
    long rows = (long)B * T * H;
    float *dob = cpu_scratch(be, (size_t)rows * D + (size_t)rows, "fused attention backward: rounded dout, delta");
    float *delta = dob + (size_t)rows * D;
    #pragma omp parallel for num_threads(be->threads)
    for (long row = 0; row < rows; row++) {  // row = (b*T + i)*H + h
        const float *dr = dout + (size_t)row * D;
        for (int d = 0; d < D; d++) dob[(size_t)row * D + d] = bf ? round_bf16(dr[d]) : dr[d];
        long bi = row / H;
        int h = (int)(row % H), i = (int)(bi % T), b = (int)(bi / T);
        delta[((size_t)b * H + h) * T + i] = dot(dr, out + (size_t)row * D, D);
    }
    #pragma omp parallel num_threads(be->threads)
    {
        // dq: per (b, h), each query row over its visible keys in order
        #pragma omp for collapse(2) schedule(dynamic)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++) {
                int g = h / rep;
                const int32_t *mb = mask + (size_t)b * T;
                const float *lr = lse + ((size_t)b * H + h) * T, *dr = delta + ((size_t)b * H + h) * T;
                for (int i = 0; i < T; i++) {
                    size_t qo = (((size_t)b * T + i) * H + h) * D;
                    float *dqi = dq + qo;
                    memset(dqi, 0, (size_t)D * sizeof(float));
                    for (int j = 0; j <= i; j++) {
                        if (!visible(mb, lr, i, j)) continue;
                        size_t kvo = (((size_t)b * T + j) * KVH + g) * D;
                        float p, ds;
                        fused_p_ds(&p, &ds, q + qo, k + kvo, v + kvo, dob + qo, lr[i], dr[i], D, bf);
                        for (int d = 0; d < D; d++) dqi[d] += ds * k[kvo + d];
                    }
                }
            }
        // dk, dv: per (b, g), each key row over the group's heads in order and its visible queries in order
        #pragma omp for collapse(2) schedule(dynamic)
        for (int b = 0; b < B; b++)
            for (int g = 0; g < KVH; g++) {
                const int32_t *mb = mask + (size_t)b * T;
                for (int j = 0; j < T; j++) {
                    size_t kvo = (((size_t)b * T + j) * KVH + g) * D;
                    memset(dk + kvo, 0, (size_t)D * sizeof(float));
                    memset(dv + kvo, 0, (size_t)D * sizeof(float));
                    for (int hh = 0; hh < rep; hh++) {
                        int h = g * rep + hh;
                        const float *lr = lse + ((size_t)b * H + h) * T, *dr = delta + ((size_t)b * H + h) * T;
                        for (int i = j; i < T; i++) {
                            if (!visible(mb, lr, i, j)) continue;
                            size_t qo = (((size_t)b * T + i) * H + h) * D;
                            float p, ds;
                            fused_p_ds(&p, &ds, q + qo, k + kvo, v + kvo, dob + qo, lr[i], dr[i], D, bf);
                            for (int d = 0; d < D; d++) {
                                dk[kvo + d] += ds * q[qo + d];
                                dv[kvo + d] += p * dob[qo + d];
                            }
                        }
                    }
                }
            }
    }
}

void backend_cpu_attn_fused_init(Backend *be) {
    be->attention_fused_fwd = cpu_attention_fused_fwd;
    be->attention_fused_bwd = cpu_attention_fused_bwd;
}
