// watchdog.h: ends a rank that makes no progress — a collective waiting for a rank that is stuck or gone,
// an NCCL or network failure, a hung GPU or filesystem — instead of letting the job hold its nodes until
// the time limit. A helper thread watches the time since the main thread's last watchdog_beat; after
// run.watchdog_minutes without one it prints what the rank was doing and since when, and ends the
// process with ACTLORA_EXIT_HUNG. Its peers, stuck waiting for it, do the same after their own timeout (or
// sooner, when the launcher notices the exit), and jobs/launch.sh requeues the job, which resumes from
// its newest checkpoint. The thread never calls MPI (MPI_THREAD_SINGLE holds).
#ifndef ACTLORA_WATCHDOG_H
#define ACTLORA_WATCHDOG_H

#include <pthread.h>

// The exit status of a rank the watchdog ended (jobs/launch.sh requeues on it, a bounded number of times).
#define ACTLORA_EXIT_HUNG 86

typedef struct {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;      // wakes the thread early to stop it
    double timeout_s, last; // the last beat (time_now)
    char what[160];         // what the main thread began at the last beat ("step 120, micro-step 3")
    int rank, running;
} Watchdog;

// Starts the thread; timeout_s <= 0: no thread, beats and stop do nothing. rank: for the message.
void watchdog_start(Watchdog *w, double timeout_s, int rank);
// The main thread is alive and begins `what` (printf format; cheap: a lock, a clock read, a label).
void watchdog_beat(Watchdog *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Stops and joins the thread (before the process ends normally).
void watchdog_stop(Watchdog *w);

#endif
