// profile.h: where a training step's time goes, op by op (run.profile = true; docs/gpu.md).
//
// profile_start wraps a backend IN PLACE: every entry of its op table is replaced by a wrapper that
// synchronises the backend, calls the original op, synchronises again and adds the wall time in
// between to an entry keyed by the op's name and shape ("wgemm T 12032x14336x4096", "attention_bwd
// B47 T256 H32/8 D128", "swiglu_fwd n=172490752"). Everything that holds the Backend pointer (model,
// trainer, comm) goes through the wrappers without knowing. profile_stop puts the original table
// back. The wrappers compute nothing themselves: results are bit-identical with and without them.
// Each entry also adds up the matrix-product FLOPs and the bytes the op must move (a model: the
// tensors it reads and writes once, plus the [B,H,T,T] passes of attention), so the table shows
// TFLOP/s and GB/s: a memory-bound op far below the device's bandwidth is a kernel to improve.
//
// The synchronisation serialises the ops (no overlap, one launch latency per op), so a profiled
// step is somewhat slower than an unprofiled one; the table says how much of the step the ops
// account for. On the CPU backend sync is a no-op and the times are the ops' own.
#ifndef ACTLORA_PROFILE_H
#define ACTLORA_PROFILE_H

#include <stdio.h>

#include "actlora/backend.h"
#include "actlora/log.h"

#define PROFILE_KEY_MAX 80

typedef struct {
    char key[PROFILE_KEY_MAX];  // "op shape"
    char op[32];                // the op's name alone
    long long calls;
    double seconds;
    double flops;               // matrix-product FLOPs of these calls (gemm, wgemm, attention); else 0
    double bytes;               // device memory these calls move at least (a model of each op's reads
                                // and writes, e.g. 12 n for swiglu_fwd: gate, up read, h written)
} ProfileEntry;

typedef struct {
    Backend inner;      // the original op table and state (ops are called on &inner)
    Backend *outer;     // the wrapped backend (its ctx points here while wrapped)
    ProfileEntry *e;
    int n, cap;
    double t_reset;     // time_now() at start / the last reset
} Profile;

// Wraps be (whose ops then run through p); p must outlive the wrapping. Starts the clock.
void profile_start(Profile *p, Backend *be);
// Zeroes every entry and restarts the clock (after warm-up steps).
void profile_reset(Profile *p);
// Restores be's own op table (with any state the ops changed, e.g. the weight format).
void profile_stop(Profile *p);
// The table, entries by descending time: per op name, then the `top` costliest keys; `steps` (>= 1)
// scales the per-step columns. wall: seconds of the profiled span (0: since start / reset).
void profile_print(const Profile *p, FILE *f, long long steps, int top, double wall);
// One {"type":"profile",...} record per entry into the run log.
void profile_log(const Profile *p, Log *lg, long long steps);
// Sum of the entries' seconds.
double profile_total(const Profile *p);
// The entry with this exact key, or NULL.
const ProfileEntry *profile_find(const Profile *p, const char *key);
void profile_free(Profile *p);

#endif
