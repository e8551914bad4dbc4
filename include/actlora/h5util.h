// h5util.h: HDF5 helpers shared by the modules that read or write HDF5 (dataset, ckpt, select).
#ifndef ACTLORA_H5UTIL_H
#define ACTLORA_H5UTIL_H

#include <hdf5.h>

// HDF5 prints its error stack on stderr by default; we report errors ourselves, so every entry
// point silences it for its duration and restores whatever the caller had.
typedef struct {
    H5E_auto2_t fn;
    void *data;
} H5Quiet;

void h5_quiet_begin(H5Quiet *q);
void h5_quiet_end(const H5Quiet *q);

#endif
