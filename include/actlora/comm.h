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
    double seconds;        // time spent communicating
    size_t bytes_per_call; // message size of the last all-reduce
} Comm;

void comm_init(Comm *c, MPI_Comm comm);
// grads[i] = mean over ranks of grads[i]. Every rank ends with bit-identical values.
void comm_allreduce_mean(Comm *c, Backend *be, float *grads, size_t n);

#endif
