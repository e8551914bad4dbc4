// dist.h: MPI bootstrap facts (rank, world, node-local rank) and the agreement helpers that make
// "every rank decided the same thing" a checked fact rather than an assumption.
#ifndef ACTLORA_DIST_H
#define ACTLORA_DIST_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    MPI_Comm comm;
    int rank, world;
    int local_rank, local_world;  // within the node (MPI_COMM_TYPE_SHARED)
    MPI_Comm node;                // the node's ranks (kept until MPI_Finalize)
} Dist;

void dist_init(Dist *d, MPI_Comm comm);
// Hashes `bytes` on every rank and dies, naming `what`, unless all ranks hold identical bytes.
void dist_check_agree(const Dist *d, const void *data, size_t bytes, const char *what);
// Logical OR of a flag over all ranks (a collective: every rank must call it).
int dist_any(const Dist *d, int flag);
// Largest of an int over all ranks (a collective).
int dist_max(const Dist *d, int v);
// Gathers `bytes` from every rank of this node into all[local_world][bytes], in node-local rank order
// (a collective: every rank of the node must call it).
void dist_node_allgather(const Dist *d, const void *mine, size_t bytes, void *all);
// Sum of a double over all ranks, identical on every rank (reduce to rank 0, then broadcast).
double dist_sum(const Dist *d, double x);

#endif
