// dist.c: rank facts and agreement checks.
#include "actlora/dist.h"

#include "actlora/common.h"

void dist_init(Dist *d, MPI_Comm comm) {
    d->comm = comm;
    MPI_Comm_rank(comm, &d->rank);
    MPI_Comm_size(comm, &d->world);
    MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &d->node);
    MPI_Comm_rank(d->node, &d->local_rank);
    MPI_Comm_size(d->node, &d->local_world);
}

void dist_node_allgather(const Dist *d, const void *mine, size_t bytes, void *all) {
    check(bytes <= (size_t)INT32_MAX, "dist_node_allgather: %zu bytes per rank is too many", bytes);
    MPI_Allgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, d->node);
}

void dist_check_agree(const Dist *d, const void *data, size_t bytes, const char *what) {
    unsigned long long h = fnv1a64(FNV64_INIT, data, bytes), lo = 0, hi = 0;
    MPI_Allreduce(&h, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, d->comm);
    MPI_Allreduce(&h, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, d->comm);
    check(lo == hi, "ranks disagree on %s (hashes %016llx .. %016llx; this rank %016llx): every rank must "
          "compute it from identical reduced numbers; please report this with your MPI version", what, lo, hi, h);
}

int dist_any(const Dist *d, int flag) {
    int in = flag != 0, out = 0;
    MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_LOR, d->comm);
    return out;
}

int dist_max(const Dist *d, int v) {
    int out = v;
    MPI_Allreduce(&v, &out, 1, MPI_INT, MPI_MAX, d->comm);
    return out;
}

double dist_sum(const Dist *d, double x) {
    double s = 0.0;
    MPI_Reduce(&x, &s, 1, MPI_DOUBLE, MPI_SUM, 0, d->comm);
    MPI_Bcast(&s, 1, MPI_DOUBLE, 0, d->comm);
    return s;
}
