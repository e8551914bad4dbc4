// reduce.cu: the ops of the CUDA backend that hand a number to the host — sumsq, row_norm_sum and
// the loss. All are deterministic without atomics: each block sums its fixed slice of the input
// in a fixed tree order (block_sum), writes one fp64 partial per slice, and the host adds the
// partials in index order (as the CPU backend adds its block / row partials).
#include <math.h>

#include "cuda_internal.cuh"

// elements per sumsq partial (one block each)
#define SUMSQ_CHUNK 8192

// part[blk] = sum of x[i]^2 over the block's slice [blk * SUMSQ_CHUNK, +SUMSQ_CHUNK), in fp64
static __global__ void k_sumsq_partials(const float *__restrict__ x, size_t n, double *__restrict__ part) {
    __shared__ double sh[CUDA_THREADS];
    size_t lo = (size_t)blockIdx.x * SUMSQ_CHUNK, hi = lo + SUMSQ_CHUNK < n ? lo + SUMSQ_CHUNK : n;
    double s = 0.0;
    for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        double v = (double)x[i];
        s += v * v;
    }
    s = block_sum(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

static double cu_sumsq(Backend *be, const float *x, size_t n) {
    CudaCtx *cx = cuda_ctx(be);
    if (n == 0) return 0.0;
    size_t nb = (n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK;
    check(nb <= 0x7fffffffu, "sumsq: %zu elements are too many for one reduction", n);
    double *part = cuda_partials(be, nb), *host = cuda_host_partials(be, nb);
    k_sumsq_partials<<<(unsigned)nb, CUDA_THREADS, 0, cx->stream>>>(x, n, part);
    launch_check("sumsq");
    cuda_check(cudaMemcpyAsync(host, part, nb * sizeof(double), cudaMemcpyDeviceToHost, cx->stream));
    cuda_sync_and_check(be, "sumsq");
    double total = 0.0;
    for (size_t b = 0; b < nb; b++) total += host[b];
    return total;
}

// norms[n] = ||x[n, :C]|| in fp64 when mask[n] != 0, else 0; one block per row; row stride ld;
// T = float or __nv_bfloat16 (row_norm_sum_wf, act_wf.cu)
template <typename T>
static __global__ void k_row_norms(const T *__restrict__ x, size_t ld, const int32_t *__restrict__ mask, int C,
                                   double *__restrict__ norms) {
    __shared__ double sh[CUDA_THREADS];
    size_t n = blockIdx.x;
    double s = 0.0;
    if (mask[n]) {
        const T *row = x + n * ld;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            double v = (double)cuda_to_float(row[c]);
            s += v * v;
        }
    }
    s = block_sum(s, sh);
    if (threadIdx.x == 0) norms[n] = sqrt(s);
}

static double cu_row_norm_sum(Backend *be, const float *x, const int32_t *mask, int N, int C) {
    return cuda_row_norm_sum_ld(be, x, 0, (size_t)C, mask, N, C);
}

// row_norm_sum over a strided fp32 or bf16 x (cuda_internal.cuh): the row norms on the device, added in row
// order on the host (as the CPU backend adds its row norms)
double cuda_row_norm_sum_ld(Backend *be, const void *x, int bf16, size_t ld, const int32_t *mask, int N, int C) {
    CudaCtx *cx = cuda_ctx(be);
    if (N <= 0) return 0.0;
    double *norms = cuda_partials(be, (size_t)N), *host = cuda_host_partials(be, (size_t)N);
    if (bf16)
        k_row_norms<__nv_bfloat16><<<(unsigned)N, CUDA_THREADS, 0, cx->stream>>>((const __nv_bfloat16 *)x, ld, mask,
                                                                                 C, norms);
    else
        k_row_norms<float><<<(unsigned)N, CUDA_THREADS, 0, cx->stream>>>((const float *)x, ld, mask, C, norms);
    launch_check("row_norm_sum");
    cuda_check(cudaMemcpyAsync(host, norms, (size_t)N * sizeof(double), cudaMemcpyDeviceToHost, cx->stream));
    cuda_sync_and_check(be, "row_norm_sum");
    double total = 0.0;
    for (int n = 0; n < N; n++) total += host[n];
    return total;
}

// One thread per row, the CPU backend's arithmetic: cross-entropy with the log-sum-exp in fp64
// (K > 1) or squared error (K == 1). row_loss[b] is the row's loss; dlogits is overwritten.
static __global__ void k_loss(double *__restrict__ row_loss, float *__restrict__ dlogits,
                              const float *__restrict__ logits, const int32_t *__restrict__ labels_i,
                              const float *__restrict__ labels_f, int B, int K, float grad_scale, int *err) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    if (K == 1) {
        double diff = (double)logits[b] - (double)labels_f[b];
        row_loss[b] = diff * diff;
        dlogits[b] = (float)(2.0 * diff) * grad_scale;
        return;
    }
    const float *z = logits + (size_t)b * K;
    float *dz = dlogits + (size_t)b * K;
    int y = labels_i[b];
    if (y < 0 || y >= K) {  // reported by the host after the kernel
        cuda_set_error(err, CUDA_ERR_LABEL, b, y, K);
        row_loss[b] = 0.0;
        for (int k = 0; k < K; k++) dz[k] = 0.0f;
        return;
    }
    double mx = z[0];
    for (int k = 1; k < K; k++) mx = z[k] > mx ? z[k] : mx;
    double se = 0.0;
    for (int k = 0; k < K; k++) se += exp((double)z[k] - mx);
    double lse = mx + log(se);
    row_loss[b] = lse - (double)z[y];
    for (int k = 0; k < K; k++) {
        double pk = exp((double)z[k] - lse);
        dz[k] = (float)((pk - (k == y ? 1.0 : 0.0)) * (double)grad_scale);
    }
}

// *loss_sum (host) = the row losses added in row order, as the CPU backend does
static void cu_loss_fwd_bwd(Backend *be, double *loss_sum, float *dlogits, const float *logits,
                            const int32_t *labels_i, const float *labels_f, int B, int K, float grad_scale) {
    CudaCtx *cx = cuda_ctx(be);
    check(K >= 1, "loss_fwd_bwd: %d classes", K);
    if (K == 1) check(labels_f != NULL || B == 0, "loss_fwd_bwd: regression (K == 1) needs float labels");
    else check(labels_i != NULL || B == 0, "loss_fwd_bwd: classification (K = %d) needs integer labels", K);
    *loss_sum = 0.0;
    if (B <= 0) return;
    double *rows = cuda_partials(be, (size_t)B), *host = cuda_host_partials(be, (size_t)B);
    k_loss<<<(unsigned)((B + 127) / 128), 128, 0, cx->stream>>>(rows, dlogits, logits, labels_i, labels_f, B, K,
                                                                grad_scale, cx->d_err);
    launch_check("loss_fwd_bwd");
    cuda_check(cudaMemcpyAsync(host, rows, (size_t)B * sizeof(double), cudaMemcpyDeviceToHost, cx->stream));
    cuda_sync_and_check(be, "loss_fwd_bwd");
    double total = 0.0;
    for (int b = 0; b < B; b++) total += host[b];
    *loss_sum = total;
}

void cuda_install_reduce(Backend *be) {
    be->sumsq = cu_sumsq;
    be->row_norm_sum = cu_row_norm_sum;
    be->loss_fwd_bwd = cu_loss_fwd_bwd;
}
