// h5util.c: HDF5 helpers.
#include "actlora/h5util.h"

void h5_quiet_begin(H5Quiet *q) {
    H5Eget_auto2(H5E_DEFAULT, &q->fn, &q->data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

void h5_quiet_end(const H5Quiet *q) { H5Eset_auto2(H5E_DEFAULT, q->fn, q->data); }
