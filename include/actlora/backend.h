// backend.h: the op table every model computes through. The CPU backend (backend_cpu.c,
// fp32, OpenBLAS + OpenMP) is the reference; the CUDA backend implements the same table
// and is checked op by op against it. All pointers passed to ops are backend memory
// (host memory for "cpu", device memory for "cuda"); sizes are element counts.
//
// Conventions (row-major throughout):
//   N = B*T tokens, C = hidden size, H / KVH = query / key-value heads, D = head dim.
//   Linear layers follow HF: W is [out, in] and y = x @ W^T.
//   Backward ops OVERWRITE their outputs unless the comment says "accumulates (+=)".
#ifndef ACTLORA_BACKEND_H
#define ACTLORA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

typedef struct Backend Backend;

struct Backend {
    const char *name;  // "cpu" or "cuda"
    void *ctx;         // backend private state
    int threads;       // CPU threads used by the backend (OpenMP / OpenBLAS)

    // ---- memory ----
    void *(*alloc)(Backend *be, size_t bytes, const char *what);  // zero-filled; dies if it cannot
    void (*free)(Backend *be, void *p);
    void (*upload)(Backend *be, void *dst, const void *src_host, size_t bytes);
    void (*download)(Backend *be, void *dst_host, const void *src, size_t bytes);
    void (*zero)(Backend *be, void *p, size_t bytes);
    void (*copy)(Backend *be, void *dst, const void *src, size_t bytes);
    void (*sync)(Backend *be);
    void (*destroy)(Backend *be);  // releases the backend's private state (backend_free calls it)

    // ---- dense algebra ----
    // C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C, op(X) = X^T when trans_x.
    // A is stored [M,K] (or [K,M] when trans_a), B is stored [K,N] (or [N,K] when trans_b).
    void (*gemm)(Backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                 const float *A, const float *B, float beta, float *C);
    // y += x
    void (*add)(Backend *be, float *y, const float *x, size_t n);
    // x *= s
    void (*scale)(Backend *be, float *x, float s, size_t n);
    // sum of squares in fp64, summed in a fixed order (deterministic for a given n)
    double (*sumsq)(Backend *be, const float *x, size_t n);
    // sum over rows n with mask[n] != 0 of the L2 norm of x[n, :] (x: [N, C], mask: [N]), fp64,
    // summed in a fixed order (the calibration probe: deterministic for given inputs)
    double (*row_norm_sum)(Backend *be, const float *x, const int32_t *mask, int N, int C);

    // ---- embedding ----
    // out[n, :] = wte[ids[n], :]; ids: [N], wte: [V, C], out: [N, C]
    void (*embedding_fwd)(Backend *be, float *out, const int32_t *ids, const float *wte, int N, int C);

    // ---- RMSNorm (Llama; weight frozen, so no weight gradient) ----
    // rstd[n] = 1/sqrt(mean(inp[n,:]^2) + eps); out[n,c] = inp[n,c] * rstd[n] * w[c]
    void (*rmsnorm_fwd)(Backend *be, float *out, float *rstd, const float *inp, const float *w,
                        int N, int C, float eps);
    // dinp += d(out)/d(inp)^T dout   (accumulates (+=): dinp is the residual-stream gradient)
    void (*rmsnorm_bwd)(Backend *be, float *dinp, const float *dout, const float *inp, const float *w,
                        const float *rstd, int N, int C);

    // ---- rotary embedding, HF rotate_half convention, position of token t is t ----
    // x: [B, T, nh, D], in place. cos, sin: [T, D/2] (frequency i for both halves).
    //   x1 = x[..., :D/2], x2 = x[..., D/2:]
    //   x1' = x1*cos - x2*sin ; x2' = x2*cos + x1*sin
    void (*rope_fwd)(Backend *be, float *x, const float *cos, const float *sin, int B, int T, int nh, int D);
    // in-place inverse rotation of the gradient: dx1 = dy1*cos + dy2*sin ; dx2 = dy2*cos - dy1*sin
    void (*rope_bwd)(Backend *be, float *dx, const float *cos, const float *sin, int B, int T, int nh, int D);

    // ---- attention: softmax(q k^T / sqrt(D) + mask) v, causal + key padding, GQA ----
    // q: [B,T,H,D]; k, v: [B,T,KVH,D] (query head h uses kv head h / (H/KVH)); mask: [B,T], 1 = real.
    // Key j is visible to query i iff j <= i and mask[b,j] == 1. A query row with no visible key
    // (a left-padded row) gets zero output. out: [B,T,H,D]; probs: [B,H,T,T] saved for backward.
    void (*attention_fwd)(Backend *be, float *out, float *probs, const float *q, const float *k,
                          const float *v, const int32_t *mask, int B, int T, int H, int KVH, int D);
    // dq: [B,T,H,D], dk, dv: [B,T,KVH,D], all overwritten.
    void (*attention_bwd)(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                          const float *probs, const float *q, const float *k, const float *v,
                          int B, int T, int H, int KVH, int D);

    // ---- SwiGLU MLP activation ----
    // h = silu(gate) * up, elementwise; silu(x) = x / (1 + exp(-x))
    void (*swiglu_fwd)(Backend *be, float *h, const float *gate, const float *up, size_t n);
    // dgate, dup overwritten
    void (*swiglu_bwd)(Backend *be, float *dgate, float *dup, const float *dh, const float *gate,
                       const float *up, size_t n);

    // ---- random init: x[i] = mean + std * rng_normal(key, i) (rng.h), drawn on the backend so that
    //      billions of weights (model.init = "random" at production shapes) need no host pass
    void (*randn)(Backend *be, float *x, size_t n, float mean, float std, uint64_t key);

    // ---- LoRA dropout (inverted): out[i] = keep ? inp[i] / (1-p) : 0,
    //      keep = rng_uniform(key, i) >= p (rng.h). out may alias inp. p == 0 copies.
    void (*dropout)(Backend *be, float *out, const float *inp, size_t n, float p, uint64_t key);

    // ---- LoRA dropout without a copy of the dropped input (lora_ops.h: lora.dropout > 0 in training) ----
    // Element (n, c) of X [N, in] (row stride ldx; fp32 when x_wf == 0, the weight format when x_wf == 1)
    // is kept as the dropout op's element n * in + c under key (rng_uniform(key, n * in + c) >= p), kept
    // values scaled by 1 / (1 - p); everything in fp32 from the stored values (A and da are fp32, never
    // rounded). The CPU computes the dropped input into scratch and calls sgemm (exactly what the dropout and
    // gemm ops give); CUDA draws the mask inside the product (no [N, in] pass). Deterministic.
    //   lora_down_dropout:   a [N, r] = dropout(X) A^T (A [r, in]); overwritten
    //   lora_grad_a_dropout: dA [r, in] += da^T dropout(X) (da [N, r])
    //   lora_dx_dropout:     dX [N, in] (contiguous) += mask (da A) / (1 - p), the same mask
    void (*lora_down_dropout)(Backend *be, float *a, const void *X, int ldx, int x_wf, const float *A, int N, int in,
                              int r, float p, uint64_t key);
    void (*lora_grad_a_dropout)(Backend *be, float *dA, const float *da, const void *X, int ldx, int x_wf, int N,
                                int in, int r, float p, uint64_t key);
    void (*lora_dx_dropout)(Backend *be, float *dX, const float *da, const float *A, int N, int in, int r, float p,
                            uint64_t key);

    // ---- sequence-classification head ----
    // pooled[b, :] = x[b, last[b], :]; x: [B,T,C], last: [B]
    void (*pool_last_fwd)(Backend *be, float *pooled, const float *x, const int32_t *last, int B, int T, int C);
    // dx[b, last[b], :] += dpooled[b, :]   (accumulates (+=))
    void (*pool_last_bwd)(Backend *be, float *dx, const float *dpooled, const int32_t *last, int B, int T, int C);
    // K > 1: cross-entropy of logits[B,K] against labels_i[B]; K == 1: squared error against
    // labels_f[B]. *loss_sum (host) = sum over rows of the row loss (fp64);
    // dlogits = grad_scale * d(sum of row losses)/dlogits (overwritten).
    void (*loss_fwd_bwd)(Backend *be, double *loss_sum, float *dlogits, const float *logits,
                         const int32_t *labels_i, const float *labels_f, int B, int K, float grad_scale);

    // ---- encoder ops (BERT / DeBERTa-v2; backend_cpu_enc.c, src/cuda/encoder.cu) ----
    // out[n, :] += table[ids[n], :]; ids: [N], table: [V, C], out: [N, C]  (position / token-type embeddings)
    void (*embedding_add)(Backend *be, float *out, const int32_t *ids, const float *table, int N, int C);
    // LayerNorm over the last dim, biased variance: mean[n], rstd[n] = 1/sqrt(var[n] + eps);
    // out[n,c] = (inp[n,c] - mean[n]) * rstd[n] * w[c] + b[c]. out may alias inp.
    void (*layernorm_fwd)(Backend *be, float *out, float *mean, float *rstd, const float *inp, const float *w,
                          const float *b, int N, int C, float eps);
    // dinp += d(out)/d(inp)^T dout (accumulates (+=)); w and b are frozen (no weight gradient).
    // inp is the LayerNorm's input as it was in the forward (not overwritten by it).
    void (*layernorm_bwd)(Backend *be, float *dinp, const float *dout, const float *inp, const float *w,
                          const float *mean, const float *rstd, int N, int C);
    // y[n, c] += b[c]; y: [N, C], b: [C]
    void (*bias_add)(Backend *be, float *y, const float *b, int N, int C);
    // db[c] += sum over n of dy[n, c], summed in a fixed order (accumulates (+=))
    void (*bias_grad)(Backend *be, float *db, const float *dy, int N, int C);
    // exact GELU: h = 0.5 x (1 + erf(x / sqrt(2))); bwd: dx = dh * gelu'(x) (overwritten)
    void (*gelu_fwd)(Backend *be, float *h, const float *x, size_t n);
    void (*gelu_bwd)(Backend *be, float *dx, const float *dh, const float *x, size_t n);
    // y = tanh(x); bwd from the output: dx = dy * (1 - y^2) (overwritten). y may alias x.
    void (*tanh_fwd)(Backend *be, float *y, const float *x, size_t n);
    void (*tanh_bwd)(Backend *be, float *dx, const float *dy, const float *y, size_t n);
    // x[n, :] = 0 where mask[n] == 0, in place; x: [N, C], mask: [N]
    void (*mask_rows)(Backend *be, float *x, const int32_t *mask, int N, int C);
    // Bidirectional attention with key padding and, for DeBERTa, disentangled relative terms:
    //   s[b,h,i,j] = scale * ( q_i . k_j  +  q_i . pk[idx[i,j], h, :]  +  k_j . pq[idx[i,j], h, :] )
    // where the c2p term (content->position) is present iff pk != NULL and the p2c term
    // (position->content) iff pq != NULL; idx: [T, T] int32 in [0, P) (NULL when both are NULL);
    // pq, pk: [P, H*D]. Key j is visible iff mask[b, j] != 0; a row with no visible key gets zero
    // output. q, k, v, out: [B, T, H, D]; probs: [B, H, T, T] saved for backward.
    void (*attention_enc_fwd)(Backend *be, float *out, float *probs, const float *q, const float *k, const float *v,
                              const float *pq, const float *pk, const int32_t *idx, const int32_t *mask, int B, int T,
                              int H, int D, int P, float scale);
    // dq, dk, dv ([B,T,H,D]) overwritten; dpq / dpk ([P, H*D]) overwritten when pq / pk were given
    // (pass NULL otherwise). Deterministic: every sum in a fixed order.
    void (*attention_enc_bwd)(Backend *be, float *dq, float *dk, float *dv, float *dpq, float *dpk, const float *dout,
                              const float *probs, const float *q, const float *k, const float *v, const float *pq,
                              const float *pk, const int32_t *idx, int B, int T, int H, int D, int P, float scale);

    // ---- optimizer ----
    // PyTorch AdamW, step t >= 1: p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    // p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
    void (*adamw)(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr,
                  float b1, float b2, float eps, float wd, int t);

    // ---- frozen weights in the backend's weight format (docs/gpu.md, "Precision") ----
    // Frozen base weights that only feed GEMMs (Linear W [out, in]) and embedding tables are kept in
    // the backend's WEIGHT FORMAT and are opaque (void *): only the ops below read or write them.
    // Everything else (activations, norms' weights, LoRA A/B, head, gradients, AdamW) stays fp32.
    //   weight_dtype BACKEND_WEIGHT_FP32: fp32 values, weight_bytes 4 (the CPU's default).
    //   weight_dtype BACKEND_WEIGHT_BF16: bf16 values (round-to-nearest-even from fp32), and the
    //     activation operand of wgemm is rounded to bf16 too; products accumulate in fp32.
    //     CUDA (its default): 2 bytes per element, tensor-core GEMMs (cuBLAS, CUBLAS_COMPUTE_32F); the
    //     products inside attention_fwd/bwd run in TF32 on the tensor cores (fp32 data; the CPU keeps fp32).
    //     CPU: an emulation with the same numerics (fp32 storage of bf16-rounded values, weight_bytes
    //     4, OpenBLAS sgemm on bf16-rounded inputs): a reference for the CUDA bf16 path, not a speed-up.
    // Choose the format before the first weight_alloc (backend_set_dtype below); weights allocated in
    // one format must not be used after switching to the other. Free weights with be->free.
    int weight_dtype;      // BACKEND_WEIGHT_FP32 | BACKEND_WEIGHT_BF16
    size_t weight_bytes;   // bytes per weight element in backend memory (for memory plans)
    // Switches the weight format; returns 0, or -1 when the backend cannot honour it (nothing changed).
    int (*set_weight_dtype)(Backend *be, int dtype);
    // n weight elements, zero-filled; dies if it cannot.
    void *(*weight_alloc)(Backend *be, size_t n, const char *what);
    // w[0..n) = the fp32 host values src_host[0..n) converted to the weight format. Synchronous.
    void (*weight_upload)(Backend *be, void *w, const float *src_host, size_t n);
    // w[i] = mean + std * rng_normal(key, i) (the randn op's values), converted to the weight format.
    void (*weight_randn)(Backend *be, void *w, size_t n, float mean, float std, uint64_t key);
    // Y[M,N] = alpha * X[M,K] @ op(W)[K,N] + beta * Y  (row-major; beta == 0 overwrites Y).
    //   trans_w = 1: W stored [N,K] — a Linear weight [out, in]: forward y = x W^T is
    //                wgemm(be, 1, rows, out, in, 1, x, W, 0, y)
    //   trans_w = 0: W stored [K,N] — the input gradient of that Linear: dx (+)= dy W is
    //                wgemm(be, 0, rows, in, out, 1, dy, W, beta, dx)
    // X and Y are fp32 backend memory (X is never transposed); in bf16 format X is rounded to bf16
    // (a copy: X itself is not modified) before the product. Deterministic for given inputs.
    // With fp32 weights it is exactly be->gemm(be, 0, trans_w, M, N, K, alpha, X, W, beta, Y).
    void (*wgemm)(Backend *be, int trans_w, int M, int N, int K, float alpha, const float *X, const void *W,
                  float beta, float *Y);
    // Linear forwards that share their input: Y_i[M,N_i] = X[M,K] @ W_i^T for i < n (W_i stored
    // [N_i, K]; each Y_i overwritten). The same as the n calls wgemm(be, 1, M, N_i, K, 1, X, W_i, 0, Y_i),
    // bit for bit, but X is rounded to the weight format once (q/k/v share x, gate/up share x).
    void (*wgemm_multi)(Backend *be, int n, int M, int K, const float *X, const void *const *W, const int *N,
                        float *const *Y);

    // ---- LoRA on the frozen GEMM (lora.fuse; docs/gpu.md "Fused LoRA") ----
    // A BORDERED weight is a Linear's W [out, in] with one adapter's factors around it, in the weight
    // format, as a row-major [out + r, in + r] matrix (row stride in + r):
    //     rows [0, out):        W | s B      (B [out, r]; s the LoRA scaling)
    //     rows [out, out + r):  A | unused   (A [r, in])
    // so that one product carries the adapter: the forward y = x W^T + s (x' A^T) B^T = [x | a] [W | sB]^T
    // with a = x' A^T (x' the LoRA input after dropout), and the input gradient dx = dy W + da A =
    // [dy | da] [W ; A] with da = s dy B. Allocate it with weight_alloc((out + r) * (in + r)) and fill it
    // with weight_upload / weight_randn over the whole [out + r, in + r] matrix; weight_set_lora writes
    // the border. Y = [X | Xa] op(Wb) + beta Y (beta 0 overwrites; X, Xa rounded to the weight format
    // as in wgemm, fp32 accumulation; deterministic):
    //   trans_w = 1 (forward):      X [M, in],  Xa [M, r]:  Y [M, out] = X W^T + Xa (s B)^T
    //   trans_w = 0 (input grad):   X [M, out], Xa [M, r]:  Y [M, in]  = X W + Xa A
    //   Xa == NULL: the product with W alone (a module without an adapter: the border is not read).
    void (*wgemm_lora)(Backend *be, int trans_w, int M, int out, int in, int r, const float *X, const float *Xa,
                       const void *Wb, float beta, float *Y);
    // The forwards of n bordered Linears sharing X (q/k/v, gate/up), X rounded once: the same as the
    // n calls wgemm_lora(be, 1, M, out_i, in, r, X, Xa_i, Wb_i, 0, Y_i); an Xa_i may be NULL.
    void (*wgemm_lora_multi)(Backend *be, int n, int M, int in, int r, const float *X, const float *const *Xa,
                             const void *const *Wb, const int *out, float *const *Y);
    // w[i * ld + c] = the value weight_randn(w, rows * cols, mean, std, key) gives element i * cols + c, for
    // i < rows, c < cols (other elements untouched): the plain draw of W into the block of a bordered weight.
    void (*weight_randn_2d)(Backend *be, void *w, int rows, int cols, int ld, float mean, float std, uint64_t key);
    // The border of a bordered weight from an adapter: s B and A (fp32 backend memory, the LoraSet's
    // B [out, r] and A [r, in]) converted to the weight format. W itself is left as it is.
    void (*weight_set_lora)(Backend *be, void *Wb, int out, int in, int r, const float *A, const float *B, float s);
    // out[n, :] = table[ids[n], :] as fp32 (the embedding_fwd op on a table in the weight format,
    // [V, C]); a negative id dies as in embedding_fwd.
    void (*wembedding_fwd)(Backend *be, float *out, const int32_t *ids, const void *table, int N, int C);

    // ---- activations in the weight format (model.act_dtype = "bf16"; docs/gpu.md "bf16 activations") ----
    // A Llama with lora.fuse may keep the inputs of its projections' GEMMs (the normed xn1, xn2), q, k, v and
    // the attention probabilities, and its MLP activations (gate, up, h and the gradients dgate, dup:
    // [N, intermediate], the largest tensors of a layer) in the WEIGHT FORMAT: bf16 on CUDA (2 bytes),
    // fp32 holding bf16-rounded values in the CPU's emulation, plain fp32 in the fp32 format (where
    // every op below computes exactly what the fp32 ops of the plain fused path compute). These
    // buffers are opaque (void *, be->weight_bytes per element) and only these ops read or write them.
    // Values written into the format are rounded to it (round-to-nearest-even); everything is computed
    // in fp32. Row strides (ld*) are in elements; a stride of in + r leaves the r columns a bordered
    // product needs for its adapter (wgemm_lora_wf). All deterministic for given inputs.
    //
    // rmsnorm_fwd with out [N, C] (row stride ldo) in the weight format; rstd fp32, as rmsnorm_fwd.
    void (*rmsnorm_fwd_wf)(Backend *be, void *out, int ldo, float *rstd, const float *inp, const float *w, int N,
                           int C, float eps);
    // n bordered Linear forwards sharing their input Xw [M, in + r] (weight format, row stride in + r), the
    // outputs in the weight format: for i < n in order, Xa_i (when given) is written (rounded) into Xw's
    // columns [in, in + r) and Y_i [M, out_i] (row stride out_i) = the value wgemm_lora_wf(be, 1, M, out_i,
    // in, r, Xw, Xa_i, Wb_i, 0, .) computes, rounded to the format.
    void (*wgemm_lora_multi_wf)(Backend *be, int n, int M, int in, int r, void *Xw, const float *const *Xa,
                                const void *const *Wb, const int *out, void *const *Y);
    // wgemm_lora with its activation operand already in the weight format: Xw [M, k0 + r], row stride
    // k0 + r (k0 = in when trans_w, out otherwise). When Xa != NULL, its [M, r] values are first written
    // (rounded) into Xw's columns [k0, k0 + r) — Xw is modified there and only there — and
    // Y = Xw op(Wb) + beta Y; with Xa == NULL, Y = Xw[:, :k0] op(W) + beta Y (the border is not read).
    void (*wgemm_lora_wf)(Backend *be, int trans_w, int M, int out, int in, int r, void *Xw, const float *Xa,
                          const void *Wb, float beta, float *Y);
    // C[M,N] = alpha op(A)[M,K] op(B)[K,N] + beta C (C fp32, beta 0 overwrites), A and B stored as gemm
    // has them but with row strides lda / ldb; a_wf / b_wf: 1 = that operand is in the weight format,
    // 0 = fp32 (rounded to the format first — a copy; the operand itself is not modified).
    void (*gemm_wf)(Backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A, int lda,
                    int a_wf, const void *B, int ldb, int b_wf, float beta, float *C);
    // h [M, C] (row stride ldh) = silu(gate) * up (swiglu_fwd's formula); gate, up [M, C] contiguous.
    void (*swiglu_fwd_wf)(Backend *be, void *h, int ldh, const void *gate, const void *up, int M, int C);
    // dgate, dup [M, C] (row stride ld; overwritten) = swiglu_bwd's formulas from dh (fp32 [M, C]).
    void (*swiglu_bwd_wf)(Backend *be, void *dgate, void *dup, int ld, const float *dh, const void *gate,
                          const void *up, int M, int C);
    // row_norm_sum of x [N, C] (row stride ld) in the weight format.
    double (*row_norm_sum_wf)(Backend *be, const void *x, int ld, const int32_t *mask, int N, int C);
    // rope_fwd in place on x [B, T, nh, D] (contiguous) in the weight format, computed in fp32.
    void (*rope_fwd_wf)(Backend *be, void *x, const float *cos, const float *sin, int B, int T, int nh, int D);
    // attention_fwd with q, k, v and the saved probabilities in the weight format (out fp32): the scores
    // from the stored q, k with fp32 accumulation, the softmax in fp32, P rounded to the format (saved in
    // probs [B,H,T,T]) and out = P v accumulated in fp32. In the fp32 format exactly attention_fwd.
    void (*attention_fwd_wf)(Backend *be, float *out, void *probs, const void *q, const void *k, const void *v,
                             const int32_t *mask, int B, int T, int H, int KVH, int D);
    // attention_bwd with probs, q, k, v in the weight format (dout, dq, dk, dv fp32; overwritten): dout is
    // rounded to the format for its two products (dP = dout v^T, dv = P^T dout); dS is computed in fp32 from
    // dP and P (row sums in fp64, as attention_bwd) and rounded to the format for its two (dq = dS k,
    // dk = dS^T q); fp32 accumulation. In the fp32 format exactly attention_bwd.
    void (*attention_bwd_wf)(Backend *be, float *dq, float *dk, float *dv, const float *dout, const void *probs,
                             const void *q, const void *k, const void *v, int B, int T, int H, int KVH, int D);

    // ---- fused attention (model.attention = "fused"; docs/gpu.md "Fused attention") ----
    // attention_fwd_wf without the [B,H,T,T] probabilities. q, k, v in the weight format (layouts as
    // attention_fwd); out [B,T,H,D] fp32; lse [B,H,T] fp32: each query row's log-sum-exp of its scaled
    // visible scores, m + log(sum exp(s - m)), or -INFINITY for a row with no visible key (its out is 0).
    // P = exp(s - m) / l is rounded to the format, out = P v accumulated in fp32. The CUDA backend runs it
    // on the tensor cores and needs the bf16 format and D of 16, 32, 64 or 128 (BACKEND_CUDA_ATT_FUSED_HEAD_DIM_OK).
    void (*attention_fused_fwd)(Backend *be, float *out, float *lse, const void *q, const void *k, const void *v,
                                const int32_t *mask, int B, int T, int H, int KVH, int D);
    // Its backward from what the forward kept (out, lse; q, k, v as in the forward): P = exp(s - lse) on the
    // visible keys (0 elsewhere), rounded to the format; delta_i = sum_d dout_id out_id (fp32);
    // dS = P (dout v^T - delta) / sqrt(D), rounded; dq = dS k, dk = sum over the group's heads of dS^T q,
    // dv = the same of P^T dout with dout rounded to the format; fp32 accumulation. dq, dk, dv overwritten.
    void (*attention_fused_bwd)(Backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                const float *lse, const void *q, const void *k, const void *v, const int32_t *mask,
                                int B, int T, int H, int KVH, int D);
};

// Every op of the table, X(name) for each function pointer of struct Backend, for the code that must
// touch each one: the backends' completeness checks and the profiler's wrappers (profile.c). A new op
// goes into the struct and here (test_profile fails on an op this list misses).
#define BACKEND_OPS(X)                                                                                          \
    X(alloc) X(free) X(upload) X(download) X(zero) X(copy) X(sync) X(destroy) X(gemm) X(add) X(scale) X(sumsq) \
    X(row_norm_sum) X(embedding_fwd) X(rmsnorm_fwd) X(rmsnorm_bwd) X(rope_fwd) X(rope_bwd) X(attention_fwd)     \
    X(attention_bwd) X(swiglu_fwd) X(swiglu_bwd) X(randn) X(dropout) X(pool_last_fwd) X(pool_last_bwd)         \
    X(loss_fwd_bwd) X(embedding_add) X(layernorm_fwd) X(layernorm_bwd) X(bias_add) X(bias_grad) X(gelu_fwd)    \
    X(gelu_bwd) X(tanh_fwd) X(tanh_bwd) X(mask_rows) X(attention_enc_fwd) X(attention_enc_bwd) X(adamw)        \
    X(set_weight_dtype) X(weight_alloc) X(weight_upload) X(weight_randn) X(wgemm) X(wgemm_multi) X(wgemm_lora) \
    X(wgemm_lora_multi) X(weight_set_lora) X(weight_randn_2d) X(wembedding_fwd) X(wgemm_lora_multi_wf)        \
    X(wgemm_lora_wf) X(gemm_wf) X(swiglu_fwd_wf) X(swiglu_bwd_wf) X(row_norm_sum_wf)                            \
    X(rmsnorm_fwd_wf) X(rope_fwd_wf) X(attention_fwd_wf) X(attention_bwd_wf) X(lora_down_dropout)               \
    X(lora_grad_a_dropout) X(lora_dx_dropout) X(attention_fused_fwd) X(attention_fused_bwd)

// Weight formats (Backend.weight_dtype).
enum { BACKEND_WEIGHT_FP32 = 0, BACKEND_WEIGHT_BF16 = 1 };

// Resolves model.dtype ("auto" | "fp32" | "bf16") for this backend and sets its weight format:
// "auto" = bf16 on "cuda", fp32 on "cpu"; "bf16" on the CPU is the bf16 emulation (above). Call once,
// after the backend's init and before the model's weights are allocated. Returns 0, or -1 with a
// message in msg (an unknown name, or a backend that cannot honour it). (src/backend_weights.c)
int backend_set_dtype(Backend *be, const char *dtype, char *msg, size_t msg_n);
// "fp32" or "bf16": the name of the backend's current weight format.
const char *backend_weight_dtype_name(const Backend *be);
// Installs the CPU backend's weight ops (fp32 format; called by backend_cpu_init).
void backend_cpu_weights_init(Backend *be);
// Installs the CPU backend's ops on activations in the weight format (backend_act_wf.c; backend_cpu_init).
void backend_cpu_act_wf_init(Backend *be);
// Installs the CPU backend's fused attention (backend_cpu_attn_fused.c; backend_cpu_init).
void backend_cpu_attn_fused_init(Backend *be);
// Installs the CPU backend's LoRA dropout ops (backend_cpu_lora.c; backend_cpu_init).
void backend_cpu_lora_init(Backend *be);

// CPU reference backend; threads <= 0 means "use OMP_NUM_THREADS / all cores".
void backend_cpu_init(Backend *be, int threads);
// How the CPU backend's BLAS runs its threads (OpenBLAS's openblas_get_parallel): 0 sequential, 1 its own
// pthreads (they and the OpenMP ops' threads spin against each other unless OMP_WAIT_POLICY=PASSIVE),
// 2 OpenMP (one shared pool; the build prefers this one where it is installed, CMakeLists.txt).
int backend_cpu_blas_threading(void);
// Sets the encoder ops of the CPU backend (backend_cpu_enc.c; called by backend_cpu_init).
void backend_cpu_enc_init(Backend *be);
// Releases what init acquired (not the buffers the caller allocated).
void backend_free(Backend *be);

#endif
