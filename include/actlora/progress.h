// progress.h: a line every few seconds on long work (reading the weights of a large model, evaluating a
// large split), so that a batch log shows the job is alive and when the work will end:
//   "load    weights: layer 9 of 32 (28%), 10.1 s, ETA 0:00:26"
// Work shorter than the interval (run.progress_seconds, 10 by default) prints nothing.
#ifndef ACTLORA_PROGRESS_H
#define ACTLORA_PROGRESS_H

#include <stdio.h>

typedef struct {
    FILE *out;          // NULL: silent (every rank but 0)
    char tag[8];        // the line's first word: "load", "eval"
    char what[96];      // what is being done, before the count: "weights", "dev split"
    double every, t0, last;
} Progress;

// Starts timing. out NULL: progress_step prints nothing. every: seconds between lines (run.progress_seconds;
// 0 prints every step).
void progress_init(Progress *p, FILE *out, const char *tag, const char *what, double every);
// `done` of `total` units (e.g. "layer") are finished: prints a line when `every` seconds have passed since
// the start or the last line, and the work is not finished.
void progress_step(Progress *p, long done, long total, const char *unit);

#endif
