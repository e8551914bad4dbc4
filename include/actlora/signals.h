// signals.h: SIGUSR1 / SIGTERM (Slurm's warning before a time limit or preemption) only set a flag;
// the training loop polls it at micro-step boundaries, all ranks agree through an all-reduce, and
// they write a checkpoint together. No I/O and no MPI ever happen inside the handler.
#ifndef ACTLORA_SIGNALS_H
#define ACTLORA_SIGNALS_H

#include <signal.h>

// The program's only global: the number of the last stop signal received (0 = none).
extern volatile sig_atomic_t actlora_stop_signal;

// Installs the handler for SIGUSR1 and SIGTERM (call after MPI_Init, so it is ours that runs).
void signals_install(void);

#endif
