// common.h: error reporting, checked allocation, small shared helpers.
// Library functions that parse user input return 0 / -1 and fill an Error;
// the program's top level turns an Error into a fatal message with die().
#ifndef ACTLORA_COMMON_H
#define ACTLORA_COMMON_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define ACTLORA_VERSION "0.1.0"

typedef struct {
    char msg[1024];
} Error;

// Formats msg into e (if e is not NULL) and returns -1, so parsers can `return error_set(err, ...)`.
int error_set(Error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Prints "actlora-mpi: error: <msg>" on stderr and ends the job: MPI_Abort when MPI is
// initialized (one bad rank must not leave the others hanging), exit(1) otherwise.
void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
// The same with the job's exit status `status` instead of 1 (e.g. ACTLORA_EXIT_HUNG: "requeue me").
void die_status(int status, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));

// check(cond, fmt, ...): a violated internal or user-facing invariant is fatal; the message
// must name the file/tensor/key at fault and what to do about it.
#define check(cond, ...)          \
    do {                          \
        if (!(cond)) die(__VA_ARGS__); \
    } while (0)

// Checked allocation: dies naming what could not be allocated and how much.
void *xmalloc(size_t n, const char *what);
void *xcalloc(size_t n, size_t size, const char *what);
char *xstrdup(const char *s);

// Overflow-safe size arithmetic: return 0 and set *out, or -1 on overflow.
int size_mul(size_t a, size_t b, size_t *out);
int size_add(size_t a, size_t b, size_t *out);

// Wall clock in seconds (monotonic).
double time_now(void);

// Helper threads (the watchdog, the run.dir lock's heartbeat). thread_start_quiet starts fn(arg) with every
// signal blocked in the new thread, so SIGUSR1 / SIGTERM stay the main thread's (signals.h); 0 or
// pthread_create's error. cond_init_monotonic makes a condition variable whose waits time out on
// time_now's clock (no jumps with the wall clock); cond_wait_for waits on it (mu held) at most `seconds`.
int thread_start_quiet(pthread_t *t, void *(*fn)(void *), void *arg);
void cond_init_monotonic(pthread_cond_t *cv);
void cond_wait_for(pthread_cond_t *cv, pthread_mutex_t *mu, double seconds);

// FNV-1a 64-bit over bytes, chainable: pass the previous hash as h (start with FNV64_INIT).
#define FNV64_INIT 0xcbf29ce484222325ULL
uint64_t fnv1a64(uint64_t h, const void *data, size_t n);

// Reads a whole file into a NUL-terminated buffer; returns NULL and fills err on failure.
char *file_read_all(const char *path, size_t *len, Error *err);

#endif
