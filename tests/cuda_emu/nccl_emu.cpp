// nccl_emu.cpp: the CUDA emulator's NCCL (nccl.h) over MPI: every rank is a process with its own emulated
// device (ACTLORA_CUDA_EMU_DEVICES per node), so an NCCL communicator of n ranks is the MPI communicator of
// the processes that pass the same unique id, and an all-reduce is an MPI_Allreduce of the device buffer
// (host memory here). ncclAvg is the sum scaled by 1/n. ncclCommInitRank is collective over MPI_COMM_WORLD
// (MPI_Comm_split by the id), as the program calls it on every rank; one rank needs no MPI at all.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "nccl.h"

extern "C" void cuda_emu_check_device(const void *p, size_t bytes, const char *what);
extern "C" void cuda_emu_race_host_write(const void *p, size_t bytes);  // emu_sched.h

struct CudaEmuNcclComm {
    int nranks, rank;
    MPI_Comm comm;  // MPI_COMM_NULL for one rank
    long calls;     // all-reduces so far
    ncclResult_t async_err;
};

extern "C" void cuda_emu_stream_stall(cudaStream_t s);  // cuda_emu.cpp

// ACTLORA_CUDA_EMU_NCCL_ERROR_AT=N: the N-th all-reduce (1-based, per process) fails as a broken network leaves
// it: nothing is reduced, the stream never completes, and ncclCommGetAsyncError reports ncclRemoteError
static long nccl_error_at(void) {
    const char *s = getenv("ACTLORA_CUDA_EMU_NCCL_ERROR_AT");
    return s && *s ? atol(s) : 0;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    memset(id, 0, sizeof *id);
    unsigned v = (unsigned)getpid() ^ (unsigned)time(NULL) ^ 0x5a17u;
    memcpy(id->internal, &v, sizeof v);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
    CudaEmuNcclComm *c = (CudaEmuNcclComm *)calloc(1, sizeof *c);
    c->nranks = nranks;
    c->rank = rank;
    c->comm = MPI_COMM_NULL;
    if (nranks > 1) {
        int up = 0, size = 0, r = 0;
        MPI_Initialized(&up);
        if (!up) {
            fprintf(stderr, "cuda_emu: ncclCommInitRank: %d ranks need MPI (initialise it first)\n", nranks);
            free(c);
            return ncclInvalidArgument;
        }
        unsigned color;
        memcpy(&color, id.internal, sizeof color);
        MPI_Comm_split(MPI_COMM_WORLD, (int)(color & 0x3fffffffu), rank, &c->comm);
        MPI_Comm_size(c->comm, &size);
        MPI_Comm_rank(c->comm, &r);
        if (size != nranks || r != rank) {
            fprintf(stderr, "cuda_emu: ncclCommInitRank: rank %d of %d, but %d processes passed this id (MPI rank %d)\n",
                    rank, nranks, size, r);
            MPI_Comm_free(&c->comm);
            free(c);
            return ncclInvalidArgument;
        }
    }
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
    (void)stream;
    if (!comm || type != ncclFloat32 || (op != ncclSum && op != ncclAvg) || count > 0x7fffffff) return ncclInvalidArgument;
    cuda_emu_check_device(send, count * 4, "ncclAllReduce send buffer");
    cuda_emu_check_device(recv, count * 4, "ncclAllReduce receive buffer");
    cuda_emu_race_host_write(recv, count * 4);  // the race checker: written (emu_sched.h)
    if (++comm->calls == nccl_error_at()) {
        comm->async_err = ncclRemoteError;
        cuda_emu_stream_stall(stream);
        return ncclSuccess;
    }
    if (comm->nranks == 1) {
        if (send != recv) memmove(recv, send, count * 4);
        return ncclSuccess;
    }
    if (MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, (int)count, MPI_FLOAT, MPI_SUM, comm->comm) != MPI_SUCCESS)
        return ncclInvalidArgument;
    if (op == ncclAvg) {
        float inv = 1.0f / (float)comm->nranks, *r = (float *)recv;
        for (size_t i = 0; i < count; i++) r[i] *= inv;
    }
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *err) {
    *err = comm->async_err;
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) { return ncclCommDestroy(comm); }

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (comm && comm->comm != MPI_COMM_NULL) MPI_Comm_free(&comm->comm);
    free(comm);
    return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "invalid argument";
    }
}
