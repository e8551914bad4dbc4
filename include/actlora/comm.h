// comm.h: the one collective of training — the mean all-reduce of the flat gradient buffer
// (adapters + head). MPI on the CPU backend; the CUDA backend puts NCCL behind the same call.
#ifndef ACTLORA_COMM_H
#define ACTLORA_COMM_H

#include <mpi.h>
#include <stddef.h>

#include "actlora/backend.h"

typedef struct {
    MPI_Comm comm;
    int rank, world;
    size_t bytes_per_call; // message size of the last all-reduce
    void *nccl;            // NCCL state of comm_nccl_init (CUDA builds); unused by the MPI path
} Comm;

void comm_init(Comm *c, MPI_Comm comm);
// grads[i] = mean over ranks of grads[i] (MPI_Allreduce, or NCCL when c->nccl is set). MPI does
// not promise bit-identical results on every rank; the trainer compares a parameter checksum at
// every evaluation and at the end, and a drift is fatal.
void comm_allreduce_mean(Comm *c, Backend *be, float *grads, size_t n);

#ifdef ACTLORA_HAVE_CUDA
// NCCL (src/cuda/comm_nccl.cu), for the CUDA backend. Call after backend_cuda_init has bound this
// rank's device, on every rank of c->comm (collective): rank 0 creates the ncclUniqueId, MPI_Bcast
// sends it, every rank joins with ncclCommInitRank on a dedicated stream. Sets c->nccl.
void comm_nccl_init(Comm *c);
// dev_grads[i] (device memory) = mean over ranks: waits for all earlier work on the device (the
// gradients come from the backend's stream), then one in-place ncclAllReduce(ncclAvg) of the flat
// buffer, then waits for it while polling NCCL's asynchronous error (an error: the communicator is
// aborted and the job ends with ACTLORA_EXIT_HUNG, "requeue me"). Every rank ends with bit-identical
// values. Logs nothing.
void comm_nccl_allreduce_mean(Comm *c, float *dev_grads, size_t n);
// Destroys the NCCL communicator and stream (collective; c->nccl becomes NULL).
void comm_nccl_free(Comm *c);
#endif

#endif
