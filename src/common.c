// common.c: error reporting, checked allocation, small shared helpers.
#include "actlora/common.h"

#include <errno.h>
#include <mpi.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int error_set(Error *e, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static void vdie(int status, const char *fmt, va_list ap) __attribute__((noreturn));
static void vdie(int status, const char *fmt, va_list ap) {
    char buf[2048];
    vsnprintf(buf, sizeof buf, fmt, ap);
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    int rank = 0, world = 1;
    if (inited && !finalized) {
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        MPI_Comm_size(MPI_COMM_WORLD, &world);
    }
    if (world > 1) fprintf(stderr, "actlora-mpi: error (rank %d): %s\n", rank, buf);
    else fprintf(stderr, "actlora-mpi: error: %s\n", buf);
    fflush(stderr);
    if (inited && !finalized && world > 1) MPI_Abort(MPI_COMM_WORLD, status);
    exit(status);
}

void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vdie(1, fmt, ap);
}

void die_status(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vdie(status, fmt, ap);
}

void *xmalloc(size_t n, const char *what) {
    void *p = malloc(n ? n : 1);
    check(p, "out of memory allocating %zu bytes for %s", n, what);
    return p;
}

void *xcalloc(size_t n, size_t size, const char *what) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    check(p, "out of memory allocating %zu x %zu bytes for %s", n, size, what);
    return p;
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n, "string");
    memcpy(p, s, n);
    return p;
}

int size_mul(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return -1;
    *out = a * b;
    return 0;
}

int size_add(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return -1;
    *out = a + b;
    return 0;
}

double time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int thread_start_quiet(pthread_t *t, void *(*fn)(void *), void *arg) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);  // the new thread inherits this mask
    int rc = pthread_create(t, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

void cond_init_monotonic(pthread_cond_t *cv) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}

void cond_wait_for(pthread_cond_t *cv, pthread_mutex_t *mu, double seconds) {
    double t = time_now() + seconds;
    struct timespec ts = {(time_t)t, (long)((t - (double)(time_t)t) * 1e9)};
    pthread_cond_timedwait(cv, mu, &ts);
}

uint64_t fnv1a64(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

char *file_read_all(const char *path, size_t *len, Error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        error_set(err, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        error_set(err, "cannot seek in '%s'", path);
        return NULL;
    }
    long n = ftell(f);
    if (n < 0) {
        fclose(f);
        error_set(err, "cannot tell the size of '%s'", path);
        return NULL;
    }
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    if (!buf) {
        fclose(f);
        error_set(err, "out of memory reading '%s' (%ld bytes)", path, n);
        return NULL;
    }
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n) {
        free(buf);
        error_set(err, "short read on '%s' (%zu of %ld bytes)", path, got, n);
        return NULL;
    }
    buf[n] = '\0';
    if (len) *len = (size_t)n;
    return buf;
}
