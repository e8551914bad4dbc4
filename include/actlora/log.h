// log.h: what a run tells its user. Rank 0 prints the progress line and writes a JSONL log of
// train / eval / calibration records into the run directory; every rank keeps a ledger of the
// seconds it spent in each phase, summed over ranks at the end (time x ranks = the CPU- or
// GPU-hours of the run, split by phase).
#ifndef ACTLORA_LOG_H
#define ACTLORA_LOG_H

#include <stdint.h>
#include <stdio.h>

#include "actlora/dist.h"

typedef enum {
    PHASE_LOAD,
    PHASE_CALIBRATION,
    PHASE_FORWARD,
    PHASE_BACKWARD,
    PHASE_OPTIMIZER,
    PHASE_COMM,
    PHASE_CHECKPOINT,
    PHASE_EVAL,
    PHASE_COUNT
} Phase;

typedef struct {
    double seconds[PHASE_COUNT];
} Ledger;

const char *phase_name(Phase p);

typedef struct {
    int rank0;          // only rank 0 writes
    FILE *jsonl;        // <run.dir>/log.jsonl (appended)
    char path[4200];
    double t_start;
} Log;

// Creates the run directory (rank 0; parents too) and opens <dir>/log.jsonl for appending.
// Dies naming the directory when it cannot be created or written.
void log_open(Log *lg, const Dist *d, const char *dir);
void log_close(Log *lg);
// Appends one JSON object (already formatted, no newline) as a line, flushed (rank 0 only).
void log_record(Log *lg, const char *json);
// "1:02:03" style duration.
void log_duration(char *buf, size_t n, double seconds);
// Sums every rank's ledger into total (identical on all ranks).
void ledger_reduce(const Ledger *mine, Ledger *total, const Dist *d);

#endif
