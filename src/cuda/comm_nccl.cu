// comm_nccl.cu: the gradient all-reduce over NCCL for the CUDA backend (declared in comm.h under
// ACTLORA_HAVE_CUDA). MPI only bootstraps it: rank 0's ncclUniqueId is broadcast over c->comm.
// One in-place ncclAllReduce with ncclAvg per optimizer step on a dedicated stream. NCCL's ring
// and tree all-reduces end with every rank holding the same bytes; for run-to-run bit identity
// on a given machine pin the algorithm (NCCL_ALGO=Ring NCCL_PROTO=Simple; docs/gpu.md).
#ifndef ACTLORA_HAVE_CUDA
#define ACTLORA_HAVE_CUDA 1  // this file is the CUDA build: see comm.h's declarations
#endif
#define OMPI_SKIP_MPICXX 1   // C bindings only (mpi.h is included from C++ here)
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <nccl.h>
#include <sched.h>
#include <stdlib.h>

#include "cuda_internal.cuh"

extern "C" {
#include "actlora/comm.h"
#include "actlora/watchdog.h"
}

#define nccl_check(call)                                                                       \
    do {                                                                                       \
        ncclResult_t _nr = (call);                                                             \
        if (_nr != ncclSuccess)                                                                \
            die("NCCL call %s failed at %s:%d: %s (set NCCL_DEBUG=WARN for details)", #call,   \
                __FILE__, __LINE__, ncclGetErrorString(_nr));                                  \
    } while (0)

typedef struct {
    ncclComm_t comm;
    cudaStream_t stream;
    int device;
} NcclState;

extern "C" void comm_nccl_init(Comm *c) {
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (c->rank == 0) nccl_check(ncclGetUniqueId(&id));
    int rc = MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, c->comm);
    check(rc == MPI_SUCCESS, "MPI_Bcast of the NCCL unique id failed (code %d)", rc);
    NcclState *s = (NcclState *)xcalloc(1, sizeof(NcclState), "NCCL state");
    cuda_check(cudaGetDevice(&s->device));  // the device backend_cuda_init bound
    cuda_check(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    nccl_check(ncclCommInitRank(&s->comm, c->world, id, c->rank));
    c->nccl = s;
}

// Waits for the all-reduce on s->stream while polling NCCL's asynchronous error: a peer or network failure
// leaves the NCCL kernel waiting forever, which a plain cudaStreamSynchronize would too (NCCL's documented
// pattern: query the stream, check the communicator, abort it on an error). A failure ends the job with
// ACTLORA_EXIT_HUNG, which the job script requeues; the run resumes from its newest checkpoint. A wait
// that never ends without an error is the watchdog's (watchdog.h).
static void nccl_wait(NcclState *s, size_t bytes) {
    for (;;) {
        cudaError_t q = cudaStreamQuery(s->stream);
        if (q == cudaSuccess) return;
        if (q != cudaErrorNotReady) cuda_check(q);
        ncclResult_t err = ncclSuccess;
        nccl_check(ncclCommGetAsyncError(s->comm, &err));
        if (err != ncclSuccess && err != ncclInProgress) {
            (void)ncclCommAbort(s->comm);  // frees the stuck kernel's resources; the process ends next
            die_status(ACTLORA_EXIT_HUNG,
                       "NCCL reported \"%s\" during the gradient all-reduce (%zu bytes): a peer rank failed or the "
                       "network broke (NCCL_DEBUG=WARN says more). Exiting with status %d: jobs/launch.sh requeues "
                       "the job, which resumes from its newest checkpoint",
                       ncclGetErrorString(err), bytes, ACTLORA_EXIT_HUNG);
        }
        sched_yield();
    }
}

extern "C" void comm_nccl_allreduce_mean(Comm *c, float *dev_grads, size_t n) {
    NcclState *s = (NcclState *)c->nccl;
    check(s != NULL, "internal: comm_nccl_allreduce_mean called before comm_nccl_init");
    c->bytes_per_call = n * sizeof(float);
    if (n == 0) return;
    // the gradients were written on the backend's stream: wait for every stream of the device
    cuda_check(cudaDeviceSynchronize());
    nccl_check(ncclAllReduce(dev_grads, dev_grads, n, ncclFloat32, ncclAvg, s->comm, s->stream));
    nccl_wait(s, n * sizeof(float));
}

extern "C" void comm_nccl_free(Comm *c) {
    NcclState *s = (NcclState *)c->nccl;
    if (!s) return;
    cuda_check(cudaStreamSynchronize(s->stream));
    nccl_check(ncclCommDestroy(s->comm));
    cuda_check(cudaStreamDestroy(s->stream));
    free(s);
    c->nccl = NULL;
}
