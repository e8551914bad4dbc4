// comm.c: mean all-reduce of the flat gradient buffer over MPI.
#include "actlora/comm.h"

#include "actlora/common.h"

void comm_init(Comm *c, MPI_Comm comm) {
    c->comm = comm;
    MPI_Comm_rank(comm, &c->rank);
    MPI_Comm_size(comm, &c->world);
    c->bytes_per_call = 0;
    c->nccl = NULL;
}

void comm_allreduce_mean(Comm *c, Backend *be, float *grads, size_t n) {
    c->bytes_per_call = n * sizeof(float);
    if (c->world == 1) return;
#ifdef ACTLORA_HAVE_CUDA
    if (c->nccl) {  // the CUDA backend: one ncclAllReduce(ncclAvg) of the device buffer
        (void)be;
        comm_nccl_allreduce_mean(c, grads, n);
        return;
    }
#endif
    // MPI counts are int: reduce in chunks (the flat buffer of an 8B model's adapters fits one).
    for (size_t off = 0; off < n;) {
        int cnt = n - off > (size_t)1 << 30 ? 1 << 30 : (int)(n - off);
        int rc = MPI_Allreduce(MPI_IN_PLACE, grads + off, cnt, MPI_FLOAT, MPI_SUM, c->comm);
        check(rc == MPI_SUCCESS, "MPI_Allreduce of the gradient buffer failed (code %d)", rc);
        off += (size_t)cnt;
    }
    be->scale(be, grads, 1.0f / (float)c->world, n);
}
