// runlock.h: one run at a time in a run directory. Two runs in one run.dir (a job submitted twice, a
// manual resubmission while Slurm requeues the first, an array whose tasks forgot their index in
// run.dir) would resume from each other's checkpoints, overwrite them and interleave their logs, and
// nothing would say so. Rank 0 therefore holds <run.dir>/run.lock while the run lives:
//
//   - the file is created with O_EXCL (atomic on local filesystems, NFS v3+ and Lustre) and names its
//     owner: host, pid, Slurm job and restart count, start time;
//   - a helper thread touches it every beat_s seconds (futimens on the open file), so a live run's lock
//     keeps changing; the run removes it when it ends (normally, on a stop signal, --calibrate-only);
//   - the thread also checks that the path is still this run's file: removed (by hand), it is written
//     again; replaced by another run's lock (one that judged this run dead: a filesystem stall longer
//     than 2.5 beats, or two runs taking over the same dead lock at once), this run has lost run.dir
//     and stops at its next step boundary without writing a checkpoint (runlock_lost, main.c);
//   - a run that finds a lock takes it over when the owner is provably gone — an earlier run of the same
//     Slurm job (a lower SLURM_RESTART_COUNT: a requeue after SIGKILL), or a pid on this host that no
//     longer exists or is a zombie — and otherwise watches the file for 2.5 beats: a change means a live
//     run (refused, naming it), none means a dead one (taken over, with a note). Clocks are never
//     compared across hosts: only whether the file's mtime changes.
//
// A process killed outright (SIGKILL, MPI_Abort, the watchdog's _exit) leaves its lock behind; the next
// run takes it over by the rules above. Testing aid: ACTLORA_RUNLOCK_BEAT_S overrides RUNLOCK_BEAT_S.
#ifndef ACTLORA_RUNLOCK_H
#define ACTLORA_RUNLOCK_H

#include <pthread.h>
#include <stdio.h>
#include <sys/types.h>

#include "actlora/common.h"
#include "actlora/dist.h"

#define RUNLOCK_BEAT_S 10.0  // a live run touches its lock this often; a contender watches 2.5x as long
#define RUNLOCK_FILE "run.lock"

typedef struct {
    char host[64];
    long pid;
    char job[32];      // SLURM_JOB_ID; "" outside Slurm
    int restart;       // SLURM_RESTART_COUNT: 0 on a job's first run, n after its n-th requeue
    char started[32];  // UTC, "2026-11-29T08:00:00Z"
} RunLockOwner;

typedef struct {
    char path[4200];   // <run.dir>/run.lock
    RunLockOwner me;
    int fd;            // the lock file this run created, open for the heartbeat
    dev_t dev;
    ino_t ino;
    double beat_s;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int held, running, lost;  // lost: another run's lock replaced this run's (then it stops)
    char taker[256];          // that run, described
} RunLock;

// This process: hostname, pid, SLURM_JOB_ID / SLURM_RESTART_COUNT, the current UTC time.
void runlock_owner_self(RunLockOwner *o);
// Parses a lock file's text ("key=value" lines); 0, or -1 when it names no pid.
int runlock_owner_parse(RunLockOwner *o, const char *text);
// Whether `holder` is provably gone, seen by `me`: 1 with the reason in why, else 0 (alive or unknown:
// the caller watches the file). Rules: same Slurm job and a lower restart count; same host and no such pid.
int runlock_owner_gone(const RunLockOwner *holder, const RunLockOwner *me, char *why, size_t n);

// Takes <dir>/run.lock for `me` (dir must exist), taking over a dead owner's lock (a line on `note`
// when non-NULL), and starts the heartbeat. 0, or -1 with err naming the live owner or the failure.
// Watching an existing lock takes up to 2.5 beat_s.
int runlock_acquire(RunLock *l, const char *dir, const RunLockOwner *me, double beat_s, FILE *note, Error *err);
// Whether another run's lock has replaced this run's (its description in l->taker); 0 on a lock not held.
int runlock_lost(RunLock *l);
// Stops the heartbeat and removes the file if it is still this run's. Safe on a lock never taken.
void runlock_release(RunLock *l);

// Rank 0 takes the lock of run.dir (created by log_open) with RUNLOCK_BEAT_S; every rank dies with its
// message when it cannot. Other ranks hold nothing.
void runlock_open(RunLock *l, const Dist *d, const char *dir);

#endif
