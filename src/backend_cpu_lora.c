// backend_cpu_lora.c: LoRA dropout for the CPU backend (backend.h, "LoRA dropout without a copy of the
// dropped input"). The CPU does make the copy: the dropped input (or the input gradient's term) goes into
// the backend's scratch and the gemm op multiplies it, which is exactly what the dropout and gemm ops give
// (the reference for the CUDA backend's fused kernels). The stored values of X are read as they are: in the
// bf16 emulation they already are bf16 values, and nothing else is rounded.
#include "actlora/backend.h"
#include "actlora/common.h"
#include "actlora/rng.h"
#include "backend_cpu_internal.h"

#define DROP_PAR_MIN 8192

static void drop_check(const char *op, int N, int in, int r, int ldx, float p) {
    check(N >= 0 && in > 0 && r > 0 && ldx >= in, "%s: bad shape N=%d in=%d r=%d ldx=%d", op, N, in, r, ldx);
    check(p >= 0.0f && p <= 1.0f, "%s: probability %g is outside [0, 1]", op, (double)p);
}

// dropout(X) [N, in] contiguous into scratch: the dropout op's element n * in + c
static const float *dropped(Backend *be, const void *X, int ldx, int N, int in, float p, uint64_t key) {
    float *d = cpu_scratch(be, (size_t)N * (size_t)in, "LoRA dropout input [N, in]");
    const float *x = (const float *)X;
    float keep_scale = 1.0f - p;
    #pragma omp parallel for num_threads(be->threads) if ((size_t)N * in >= DROP_PAR_MIN) schedule(static)
    for (int n = 0; n < N; n++)
        for (int c = 0; c < in; c++) {
            size_t i = (size_t)n * in + c;
            float v = x[(size_t)n * ldx + c];
            d[i] = p == 0.0f ? v : cpu_dropout_value(v, key, (uint64_t)i, p, keep_scale);
        }
    return d;
}

static void cpu_lora_down_dropout(Backend *be, float *a, const void *X, int ldx, int x_wf, const float *A, int N, int in,
                                  int r, float p, uint64_t key) {
    (void)x_wf;  // both formats store fp32 on the CPU
    drop_check("lora_down_dropout", N, in, r, ldx, p);
    be->gemm(be, 0, 1, N, r, in, 1.0f, dropped(be, X, ldx, N, in, p, key), A, 0.0f, a);
}

static void cpu_lora_grad_a_dropout(Backend *be, float *dA, const float *da, const void *X, int ldx, int x_wf, int N,
                                    int in, int r, float p, uint64_t key) {
    (void)x_wf;
    drop_check("lora_grad_a_dropout", N, in, r, ldx, p);
    be->gemm(be, 1, 0, r, in, N, 1.0f, da, dropped(be, X, ldx, N, in, p, key), 1.0f, dA);
}

// dX += mask (da A) / (1 - p): da A into scratch, the dropout op on it, added
static void cpu_lora_dx_dropout(Backend *be, float *dX, const float *da, const float *A, int N, int in, int r, float p,
                                uint64_t key) {
    drop_check("lora_dx_dropout", N, in, r, in, p);
    size_t n = (size_t)N * (size_t)in;
    float *t = cpu_scratch(be, n, "LoRA dropout input gradient [N, in]");
    be->gemm(be, 0, 0, N, in, r, 1.0f, da, A, 0.0f, t);
    be->dropout(be, t, t, n, p, key);
    be->add(be, dX, t, n);
}

void backend_cpu_lora_init(Backend *be) {
    be->lora_down_dropout = cpu_lora_down_dropout;
    be->lora_grad_a_dropout = cpu_lora_grad_a_dropout;
    be->lora_dx_dropout = cpu_lora_dx_dropout;
}
