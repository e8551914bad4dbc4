// log.c: run directory, JSONL records, phase ledger.
#include "actlora/log.h"

#include <errno.h>
#include <mpi.h>
#include <string.h>
#include <sys/stat.h>

#include "actlora/common.h"

static const char *const PHASE_NAMES[PHASE_COUNT] = {"load", "calibration", "forward", "backward",
                                                     "optimizer", "communication", "checkpoint", "eval"};

const char *phase_name(Phase p) { return PHASE_NAMES[p]; }

// mkdir -p; returns 0 or errno.
static int mkdir_p(const char *dir) {
    char buf[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof buf) return ENAMETOOLONG;
    memcpy(buf, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return errno;
        buf[i] = c;
    }
    struct stat st;
    if (stat(dir, &st) != 0) return errno;
    return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
}

void log_open(Log *lg, const Dist *d, const char *dir) {
    memset(lg, 0, sizeof *lg);
    lg->rank0 = d->rank == 0;
    lg->t_start = time_now();
    int rc = 0;
    if (lg->rank0) {
        rc = mkdir_p(dir);
        if (rc == 0) {
            snprintf(lg->path, sizeof lg->path, "%s/log.jsonl", dir);
            lg->jsonl = fopen(lg->path, "a");
            if (!lg->jsonl) rc = errno ? errno : EIO;
        }
    }
    MPI_Bcast(&rc, 1, MPI_INT, 0, d->comm);
    check(rc == 0, "cannot use run.dir '%s': %s (set run.dir to a writable directory)", dir, strerror(rc));
}

void log_close(Log *lg) {
    if (lg->jsonl) fclose(lg->jsonl);
    lg->jsonl = NULL;
}

void log_record(Log *lg, const char *json) {
    if (!lg->jsonl) return;
    fputs(json, lg->jsonl);
    fputc('\n', lg->jsonl);
    fflush(lg->jsonl);
}

void log_duration(char *buf, size_t n, double s) {
    long t = s > 0 ? (long)(s + 0.5) : 0;
    snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
}

void ledger_reduce(const Ledger *mine, Ledger *total, const Dist *d) {
    MPI_Allreduce(mine->seconds, total->seconds, PHASE_COUNT, MPI_DOUBLE, MPI_SUM, d->comm);
}
