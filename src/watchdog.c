// watchdog.c: the no-progress watchdog (watchdog.h).
#include "actlora/watchdog.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "actlora/common.h"

static void *watch(void *arg) {
    Watchdog *w = arg;
    double period = w->timeout_s / 4.0 < 10.0 ? w->timeout_s / 4.0 : 10.0;
    pthread_mutex_lock(&w->mu);
    while (w->running) {
        cond_wait_for(&w->cv, &w->mu, period);
        double idle = time_now() - w->last;
        if (w->running && idle > w->timeout_s) {
            fprintf(stderr,
                    "actlora-mpi: error (rank %d): no progress for %.0f s (run.watchdog_minutes = %g) since it began: %s. "
                    "A collective waits for a rank that is stuck or gone, or NCCL, the network, a GPU or the "
                    "filesystem hangs (the other ranks' messages may say which; NCCL_DEBUG=WARN for NCCL). Exiting "
                    "with status %d: jobs/launch.sh requeues the job, which resumes from its newest checkpoint\n",
                    w->rank, idle, w->timeout_s / 60.0, w->what, ACTLORA_EXIT_HUNG);
            fflush(stderr);
            fflush(stdout);
            _exit(ACTLORA_EXIT_HUNG);  // not exit(): the main thread may hold locks atexit handlers need
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

void watchdog_start(Watchdog *w, double timeout_s, int rank) {
    memset(w, 0, sizeof *w);
    w->timeout_s = timeout_s;
    w->rank = rank;
    w->last = time_now();
    snprintf(w->what, sizeof w->what, "the start");
    if (timeout_s <= 0) return;
    pthread_mutex_init(&w->mu, NULL);
    cond_init_monotonic(&w->cv);
    w->running = 1;
    int rc = thread_start_quiet(&w->thread, watch, w);  // SIGUSR1 / SIGTERM stay the main thread's
    check(rc == 0, "cannot start the watchdog thread (error %d): set run.watchdog_minutes = 0 to run without it", rc);
}

void watchdog_beat(Watchdog *w, const char *fmt, ...) {
    if (!w->running) return;
    pthread_mutex_lock(&w->mu);
    w->last = time_now();
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->what, sizeof w->what, fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&w->mu);
}

void watchdog_stop(Watchdog *w) {
    if (!w->running) return;
    pthread_mutex_lock(&w->mu);
    w->running = 0;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}
