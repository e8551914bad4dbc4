// backend_cuda.cu: the CUDA backend's frame — device discovery, the context (one stream, one
// cuBLAS handle with a fixed workspace, grow-only scratch, the device error flag), memory ops,
// the fp32 GEMM, and init/destroy. The kernels live in reduce.cu, elementwise.cu and attention.cu; the
// weight formats (bf16 frozen weights, wgemm on the tensor cores) in weights.cu.
// Semantics of every op: include/actlora/backend.h; design notes: docs/gpu.md.
//
// GEMM: backend.h is row-major, cuBLAS column-major. A row-major X[r, c] (leading dimension c)
// is, read column-major, X^T[c, r] with the same leading dimension. So the row-major product
//   C[M,N] = op(A)[M,K] op(B)[K,N]
// is computed as the column-major product C^T[N,M] = op(B)^T[N,K] op(A)^T[K,M]: cuBLAS gets the
// operands swapped (B first), m = N, n = M, the same transpose flags and the same leading
// dimensions the row-major cblas call uses (lda = trans_a ? M : K, ldb = trans_b ? K : N, ldc = N).
// Precision: cublasSgemm with CUBLAS_DEFAULT_MATH is full fp32 (no TF32; TF32 would need
// CUBLAS_TF32_TENSOR_OP_MATH, which is never set), atomics are not allowed, and the workspace is
// a fixed buffer of this backend: with one stream, results are bit-identical run to run.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.cuh"

// ---------------------------------------------------------------------------- discovery

extern "C" int backend_cuda_device_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();  // no driver / no device: clear the error, report none
        return 0;
    }
    return n > 0 ? n : 0;
}

extern "C" int backend_cuda_device_uuids(unsigned char (*uuid)[16], int max) {
    int n = backend_cuda_device_count();
    if (n > max) n = max;
    for (int i = 0; i < n; i++) {
        cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
            (void)cudaGetLastError();
            return 0;
        }
        memcpy(uuid[i], p.uuid.bytes, 16);
    }
    return n;
}

extern "C" int backend_cuda_available(void) { return backend_cuda_device_count() > 0; }

extern "C" int backend_cuda_device_memory(int device, size_t *free_bytes, size_t *total_bytes) {
    *free_bytes = 0;
    *total_bytes = 0;
    int n = backend_cuda_device_count();
    if (device < 0 || device >= n) return -1;
    int prev = 0;
    if (cudaGetDevice(&prev) != cudaSuccess || cudaSetDevice(device) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    size_t f = 0, t = 0;
    cudaError_t e = cudaMemGetInfo(&f, &t);
    (void)cudaSetDevice(prev);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    *free_bytes = f;
    *total_bytes = t;
    return 0;
}

// ---------------------------------------------------------------------------- context helpers

static void *dev_malloc_or_die(CudaCtx *cx, size_t bytes, const char *what) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 256);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();  // out of memory is not sticky: report it with the numbers
        size_t f = 0, t = 0;
        if (cudaMemGetInfo(&f, &t) != cudaSuccess) (void)cudaGetLastError();
        die("out of GPU memory: cudaMalloc of %zu bytes for %s on device %d failed (%s); %.2f of %.2f GiB "
            "free. Lower train.micro_batch or adapt fewer layers (docs/gpu.md: the memory planner)",
            bytes, what ? what : "(unnamed buffer)", cx->device, cudaGetErrorString(e), (double)f / 1073741824.0,
            (double)t / 1073741824.0);
    }
    return p;
}

float *cuda_scratch(Backend *be, size_t n, const char *what) {
    CudaCtx *cx = cuda_ctx(be);
    if (n > cx->scratch_n) {
        if (cx->scratch) cuda_check(cudaFree(cx->scratch));  // waits for the work that used it
        cx->scratch = NULL;
        cx->scratch = (float *)dev_malloc_or_die(cx, n * sizeof(float), what);
        cx->scratch_n = n;
    }
    return cx->scratch;
}

double *cuda_partials(Backend *be, size_t n) {
    CudaCtx *cx = cuda_ctx(be);
    if (n > cx->partials_n) {
        if (cx->partials) cuda_check(cudaFree(cx->partials));
        cx->partials = NULL;
        cx->partials = (double *)dev_malloc_or_die(cx, n * sizeof(double), "reduction partials");
        cx->partials_n = n;
    }
    return cx->partials;
}

double *cuda_host_partials(Backend *be, size_t n) {
    CudaCtx *cx = cuda_ctx(be);
    if (n > cx->host_partials_n) {
        free(cx->host_partials);
        cx->host_partials = (double *)xmalloc(n * sizeof(double), "reduction partials (host)");
        cx->host_partials_n = n;
    }
    return cx->host_partials;
}

void cuda_sync_and_check(Backend *be, const char *where) {
    CudaCtx *cx = cuda_ctx(be);
    int h[CUDA_ERR_WORDS] = {0, 0, 0, 0};
    cuda_check(cudaMemcpyAsync(h, cx->d_err, sizeof h, cudaMemcpyDeviceToHost, cx->stream));
    cuda_check(cudaStreamSynchronize(cx->stream));
    switch (h[0]) {
    case CUDA_ERR_NONE: return;
    case CUDA_ERR_TOKEN_ID:
        die("embedding lookup: token %d has negative id %d (found on the GPU at %s)", h[1], h[2], where);
    case CUDA_ERR_POOL_LAST:
        die("pool_last: row %d pools position %d, outside [0, %d) (found on the GPU at %s)", h[1], h[2], h[3], where);
    case CUDA_ERR_LABEL:
        die("loss_fwd_bwd: row %d has label %d, outside [0, %d): check the data set's labels and num_labels "
            "(found on the GPU at %s)", h[1], h[2], h[3], where);
    case CUDA_ERR_REL_IDX:
        die("attention_enc: relative-position index idx[%d, %d] = %d is outside [0, P) (found on the GPU at %s)",
            h[1], h[2], h[3], where);
    default: die("internal: the CUDA backend's error flag holds unknown code %d (at %s)", h[0], where);
    }
}

// ---------------------------------------------------------------------------- memory ops

static void *cu_alloc(Backend *be, size_t bytes, const char *what) {
    CudaCtx *cx = cuda_ctx(be);
    void *p = dev_malloc_or_die(cx, bytes, what);
    cuda_check(cudaMemsetAsync(p, 0, bytes ? bytes : 256, cx->stream));  // zero-filled, in stream order
    return p;
}

static void cu_free(Backend *be, void *p) {
    (void)be;
    if (p) cuda_check(cudaFree(p));  // cudaFree waits for the device: no op still uses p
}

// Host -> device. Synchronous: the caller may reuse or free src_host on return.
static void cu_upload(Backend *be, void *dst, const void *src_host, size_t bytes) {
    CudaCtx *cx = cuda_ctx(be);
    if (!bytes) return;
    cuda_check(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, cx->stream));
    cuda_check(cudaStreamSynchronize(cx->stream));
}

// Device -> host, after every earlier op of the stream (and its device-side checks).
static void cu_download(Backend *be, void *dst_host, const void *src, size_t bytes) {
    CudaCtx *cx = cuda_ctx(be);
    if (!bytes) return;
    cuda_check(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, cx->stream));
    cuda_sync_and_check(be, "download");
}

static void cu_zero(Backend *be, void *p, size_t bytes) {
    if (bytes) cuda_check(cudaMemsetAsync(p, 0, bytes, cuda_ctx(be)->stream));
}

// Device -> device with memmove semantics (overlapping ranges go through the scratch buffer).
static void cu_copy(Backend *be, void *dst, const void *src, size_t bytes) {
    CudaCtx *cx = cuda_ctx(be);
    if (!bytes || dst == src) return;
    uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    if (d < s + bytes && s < d + bytes) {
        float *tmp = cuda_scratch(be, (bytes + sizeof(float) - 1) / sizeof(float), "overlapping copy");
        cuda_check(cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDeviceToDevice, cx->stream));
        cuda_check(cudaMemcpyAsync(dst, tmp, bytes, cudaMemcpyDeviceToDevice, cx->stream));
        return;
    }
    cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cx->stream));
}

static void cu_sync(Backend *be) { cuda_sync_and_check(be, "sync"); }

// ---------------------------------------------------------------------------- GEMM

// K == 0: C = beta * C (beta == 0 overwrites, as BLAS does)
static __global__ void k_scale_or_zero(float *c, float beta, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        c[i] = beta == 0.0f ? 0.0f : beta * c[i];
}

// C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C   (row-major; see the top of this file)
static void cu_gemm(Backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                    const float *B, float beta, float *C) {
    CudaCtx *cx = cuda_ctx(be);
    check(M >= 0 && N >= 0 && K >= 0, "gemm: negative size M=%d N=%d K=%d", M, N, K);
    if (M == 0 || N == 0) return;
    if (K == 0) {
        size_t n = (size_t)M * N;
        k_scale_or_zero<<<cuda_blocks(n), CUDA_THREADS, 0, cx->stream>>>(C, beta, n);
        launch_check("gemm (K = 0)");
        return;
    }
    cublas_check(cublasSgemm(cx->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                             N, M, K, &alpha, B, trans_b ? K : N, A, trans_a ? M : K, &beta, C, N));
}

// ---------------------------------------------------------------------------- init / destroy

static void cu_destroy(Backend *be) {
    CudaCtx *cx = cuda_ctx(be);
    cuda_check(cudaStreamSynchronize(cx->stream));
    if (cx->scratch) cuda_check(cudaFree(cx->scratch));
    if (cx->partials) cuda_check(cudaFree(cx->partials));
    if (cx->wbuf) cuda_check(cudaFree(cx->wbuf));
    if (cx->d_err) cuda_check(cudaFree(cx->d_err));
    cublas_check(cublasDestroy(cx->blas));
    if (cx->blas_ws) cuda_check(cudaFree(cx->blas_ws));  // after the handle that used it
    cuda_check(cudaStreamDestroy(cx->stream));
    free(cx->host_partials);
    free(cx);
}

extern "C" void backend_cuda_init(Backend *be, int device) {
    memset(be, 0, sizeof *be);
    int n = backend_cuda_device_count();
    check(n > 0, "the CUDA backend was requested but no CUDA device is visible (no GPU, no driver, or "
                 "CUDA_VISIBLE_DEVICES hides them): use run.device = \"cpu\" or run on a GPU node");
    check(device >= 0 && device < n, "CUDA device %d requested but only %d are visible (0..%d)", device, n, n - 1);
    cuda_check(cudaSetDevice(device));
    CudaCtx *cx = (CudaCtx *)xcalloc(1, sizeof(CudaCtx), "cuda backend context");
    cx->device = device;
    cuda_check(cudaStreamCreateWithFlags(&cx->stream, cudaStreamNonBlocking));
    cublas_check(cublasCreate(&cx->blas));
    cublas_check(cublasSetStream(cx->blas, cx->stream));
    cublas_check(cublasSetMathMode(cx->blas, CUBLAS_DEFAULT_MATH));  // fp32: no TF32 tensor-op math
    cublas_check(cublasSetAtomicsMode(cx->blas, CUBLAS_ATOMICS_NOT_ALLOWED));
    cublas_check(cublasSetPointerMode(cx->blas, CUBLAS_POINTER_MODE_HOST));
    cx->blas_ws = dev_malloc_or_die(cx, BACKEND_CUDA_CUBLAS_WORKSPACE, "cuBLAS workspace");
    cublas_check(cublasSetWorkspace(cx->blas, cx->blas_ws, BACKEND_CUDA_CUBLAS_WORKSPACE));
    cx->d_err = (int *)dev_malloc_or_die(cx, CUDA_ERR_WORDS * sizeof(int), "device error flag");
    cuda_check(cudaMemsetAsync(cx->d_err, 0, CUDA_ERR_WORDS * sizeof(int), cx->stream));
    cuda_check(cudaStreamSynchronize(cx->stream));

    be->name = "cuda";
    be->ctx = cx;
    be->threads = 1;  // host threads: the work runs on the GPU

    be->alloc = cu_alloc;
    be->free = cu_free;
    be->upload = cu_upload;
    be->download = cu_download;
    be->zero = cu_zero;
    be->copy = cu_copy;
    be->sync = cu_sync;
    be->destroy = cu_destroy;
    be->gemm = cu_gemm;
    cuda_install_reduce(be);       // sumsq, row_norm_sum, loss_fwd_bwd
    cuda_install_elementwise(be);  // add, scale, embedding, rmsnorm, rope, swiglu, dropout, pool_last, adamw
    cuda_install_attention(be);    // attention_fwd, attention_bwd
    cuda_install_encoder(be);      // embedding_add, layernorm, bias, gelu, tanh, mask_rows, attention_enc
    cuda_install_weights(be);      // weight formats (bf16 by default), weight_*, wgemm, wembedding_fwd
    cuda_install_lora_gemm(be);    // wgemm_lora, wgemm_lora_multi, weight_set_lora (lora.fuse)
    cuda_install_act_wf(be);       // activations in the weight format: *_wf (model.act_dtype = "bf16")
    cuda_install_attention_fused(be);  // attention_fused_fwd/bwd (model.attention = "fused")
    cuda_install_lora_dropout(be); // LoRA dropout drawn inside the products: lora_*_dropout (lora.dropout > 0)

    // every op filled: a missing one would be a NULL call much later
#define NEED(op) check(be->op != NULL, "internal: the CUDA backend leaves op '%s' unset", #op);
    BACKEND_OPS(NEED)
#undef NEED
}
