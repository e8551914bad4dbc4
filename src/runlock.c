// runlock.c: one run at a time in a run directory (runlock.h).
#include "actlora/runlock.h"

#include <errno.h>
#include <fcntl.h>
#include <mpi.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void runlock_owner_self(RunLockOwner *o) {
    memset(o, 0, sizeof *o);
    if (gethostname(o->host, sizeof o->host - 1) != 0) snprintf(o->host, sizeof o->host, "?");
    o->pid = (long)getpid();
    const char *job = getenv("SLURM_JOB_ID"), *rc = getenv("SLURM_RESTART_COUNT");
    if (job) snprintf(o->job, sizeof o->job, "%s", job);
    o->restart = rc ? atoi(rc) : 0;
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(o->started, sizeof o->started, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

// The value of "key=" at the start of a line of text, copied into out (n bytes); 0 when found.
static int kv(const char *text, const char *key, char *out, size_t n) {
    size_t k = strlen(key);
    for (const char *p = text; *p;) {
        const char *e = strchr(p, '\n');
        size_t line = e ? (size_t)(e - p) : strlen(p);
        if (line > k && strncmp(p, key, k) == 0 && p[k] == '=') {
            size_t len = line - k - 1 < n - 1 ? line - k - 1 : n - 1;
            memcpy(out, p + k + 1, len);
            out[len] = '\0';
            return 0;
        }
        p += line + (e != NULL);
    }
    return -1;
}

int runlock_owner_parse(RunLockOwner *o, const char *text) {
    memset(o, 0, sizeof *o);
    char pid[32] = "", restart[32] = "";
    kv(text, "host", o->host, sizeof o->host);
    kv(text, "job", o->job, sizeof o->job);
    kv(text, "started", o->started, sizeof o->started);
    kv(text, "restart", restart, sizeof restart);
    o->restart = atoi(restart);
    if (kv(text, "pid", pid, sizeof pid) != 0) return -1;
    char *end;
    o->pid = strtol(pid, &end, 10);
    return end != pid && *end == '\0' && o->pid > 0 ? 0 : -1;
}

// Whether process pid exists on this host and is not a zombie (a killed process whose parent has not reaped it
// yet, as a container's init may never do, still answers kill(pid, 0)).
static int pid_alive(long pid) {
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) return 0;
    char path[64], text[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 1;  // no /proc: kill's answer stands
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    const char *paren = strrchr(text, ')');  // "pid (comm) S ...": comm may hold spaces and parentheses
    return !(paren && (paren[1] == ' ') && (paren[2] == 'Z' || paren[2] == 'X'));
}

int runlock_owner_gone(const RunLockOwner *h, const RunLockOwner *me, char *why, size_t n) {
    if (h->job[0] && strcmp(h->job, me->job) == 0 && h->restart < me->restart) {
        snprintf(why, n, "it was run %d of this Slurm job (%s), which is now at run %d", h->restart, h->job,
                 me->restart);
        return 1;
    }
    if (h->pid > 0 && strcmp(h->host, me->host) == 0 && !pid_alive(h->pid)) {
        snprintf(why, n, "its process %ld on this host (%s) no longer exists", h->pid, h->host);
        return 1;
    }
    return 0;
}

static void owner_describe(const RunLockOwner *o, char *buf, size_t n) {
    if (o->pid <= 0) {
        snprintf(buf, n, "an unknown run (the lock file names no process)");
        return;
    }
    int k = snprintf(buf, n, "pid %ld on %s", o->pid, o->host[0] ? o->host : "?");
    if (o->job[0] && k > 0 && (size_t)k < n)
        k += snprintf(buf + k, n - (size_t)k, " (Slurm job %s, run %d)", o->job, o->restart);
    if (o->started[0] && k > 0 && (size_t)k < n) snprintf(buf + k, n - (size_t)k, ", started %s", o->started);
}

// Reads the lock file (at most 1 KiB) and its identity; 0, or errno (ENOENT: it went away meanwhile).
static int read_lock(const char *path, RunLockOwner *o, struct stat *st) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return errno;
    char text[1024];
    ssize_t got = read(fd, text, sizeof text - 1);
    int rc = got < 0 || fstat(fd, st) != 0 ? errno : 0;
    close(fd);
    if (rc) return rc;
    text[got] = '\0';
    runlock_owner_parse(o, text);
    return 0;
}

static int same_version(const struct stat *a, const struct stat *b) {
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
           a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static int create(RunLock *l, Error *err);

// Every beat_s: touch this run's file, and check that the path still is it. Removed: written again.
// Replaced by another run's lock: lost (main.c stops the run at its next step boundary).
static void *heartbeat(void *arg) {
    RunLock *l = arg;
    pthread_mutex_lock(&l->mu);
    while (l->running) {
        cond_wait_for(&l->cv, &l->mu, l->beat_s);
        if (!l->running || l->lost) continue;
        futimens(l->fd, NULL);  // this run's file, even if someone replaced the path
        struct stat st;
        if (stat(l->path, &st) != 0) {
            int old = l->fd;
            Error e;
            if (errno == ENOENT && create(l, &e) == 0) {  // EEXIST: another run's lock appeared: the next beat
                close(old);
                fprintf(stderr, "actlora-mpi: warning: %s was removed while this run holds its run directory: "
                                "written again\n", l->path);
                fflush(stderr);
            }
        } else if (st.st_dev != l->dev || st.st_ino != l->ino) {
            RunLockOwner o;
            struct stat s2;
            if (read_lock(l->path, &o, &s2) == 0) owner_describe(&o, l->taker, sizeof l->taker);
            else snprintf(l->taker, sizeof l->taker, "an unknown run");
            l->lost = 1;  // main.c says so when it stops the run (end_lost)
        }
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

// Creates the lock file for l->me; 0, EEXIST, or another errno (err set).
static int create(RunLock *l, Error *err) {
    int fd = open(l->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        if (e != EEXIST) error_set(err, "cannot create the lock file %s: %s (run.dir must be writable)", l->path,
                                   strerror(e));
        return e;
    }
    char text[512];
    int n = snprintf(text, sizeof text,
                     "# actlora-mpi: this run directory is in use (docs/outputs.md, \"<run.dir>/run.lock\")\n"
                     "host=%s\npid=%ld\njob=%s\nrestart=%d\nstarted=%s\n",
                     l->me.host, l->me.pid, l->me.job, l->me.restart, l->me.started);
    struct stat st;
    if (write(fd, text, (size_t)n) != n || fsync(fd) != 0 || fstat(fd, &st) != 0) {
        int e = errno ? errno : EIO;
        close(fd);
        unlink(l->path);
        error_set(err, "cannot write the lock file %s: %s", l->path, strerror(e));
        return e;
    }
    l->fd = fd;
    l->dev = st.st_dev;
    l->ino = st.st_ino;
    return 0;
}

int runlock_acquire(RunLock *l, const char *dir, const RunLockOwner *me, double beat_s, FILE *note, Error *err) {
    memset(l, 0, sizeof *l);
    l->fd = -1;
    l->me = *me;
    l->beat_s = beat_s;
    if ((size_t)snprintf(l->path, sizeof l->path, "%s/%s", dir, RUNLOCK_FILE) >= sizeof l->path)
        return error_set(err, "run.dir '%s' is too long for its lock file", dir);
    for (int attempt = 0; attempt < 3; attempt++) {
        int rc = create(l, err);
        if (rc != 0 && rc != EEXIST) return -1;
        if (rc == 0) {
            pthread_mutex_init(&l->mu, NULL);
            cond_init_monotonic(&l->cv);
            l->held = l->running = 1;
            int e = thread_start_quiet(&l->thread, heartbeat, l);
            if (e != 0) {
                l->running = 0;
                runlock_release(l);
                return error_set(err, "cannot start the thread that keeps %s alive (error %d)", l->path, e);
            }
            return 0;
        }
        // a lock exists: whose, and is that run alive?
        RunLockOwner h;
        struct stat st0, st;
        int e = read_lock(l->path, &h, &st0);
        if (e == ENOENT) continue;  // released meanwhile
        if (e) return error_set(err, "cannot read the lock file %s: %s", l->path, strerror(e));
        char who[256], why[256];
        owner_describe(&h, who, sizeof who);
        if (!runlock_owner_gone(&h, me, why, sizeof why)) {
            if (note) fprintf(note, "lock    %s is held by %s: watching it for %.3g s to see whether that run is alive\n",
                              l->path, who, 2.5 * beat_s), fflush(note);
            double waited = 0, step = beat_s / 8.0;
            int changed = 0, vanished = 0;
            while (waited < 2.5 * beat_s && !changed && !vanished) {
                sleep_s(step);
                waited += step;
                if (stat(l->path, &st) != 0) vanished = errno == ENOENT;
                else changed = !same_version(&st, &st0);
            }
            if (vanished) continue;
            if (changed)
                return error_set(err,
                                 "run.dir '%s' is in use by another run: %s, alive (it keeps touching %s). Two runs "
                                 "in one run.dir would overwrite each other's checkpoints and logs: wait for it to "
                                 "end, or give this run its own run.dir (--set run.dir=...). If that run is in fact "
                                 "gone, delete %s",
                                 dir, who, l->path, l->path);
            snprintf(why, sizeof why, "its lock file has not changed for %.3g s (a live run touches it every %.3g s)",
                     waited, beat_s);
        }
        // take it over, unless it changed hands since it was read
        if (stat(l->path, &st) != 0 || !same_version(&st, &st0)) continue;
        if (unlink(l->path) != 0 && errno != ENOENT)
            return error_set(err, "cannot remove the stale lock file %s: %s", l->path, strerror(errno));
        if (note) fprintf(note, "lock    %s: taking over the lock of %s: %s\n", l->path, who, why), fflush(note);
    }
    return error_set(err, "cannot take %s: another run keeps creating it (is a second job starting in run.dir '%s'?)",
                     l->path, dir);
}

int runlock_lost(RunLock *l) {
    if (!l->running) return 0;
    pthread_mutex_lock(&l->mu);
    int lost = l->lost;
    pthread_mutex_unlock(&l->mu);
    return lost;
}

void runlock_release(RunLock *l) {
    if (l->running) {
        pthread_mutex_lock(&l->mu);
        l->running = 0;
        pthread_cond_signal(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
    }
    if (l->held) {
        struct stat st;
        if (stat(l->path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino) unlink(l->path);
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cv);
    }
    if (l->fd >= 0) close(l->fd);
    l->fd = -1;
    l->held = 0;
}

void runlock_open(RunLock *l, const Dist *d, const char *dir) {
    memset(l, 0, sizeof *l);
    l->fd = -1;
    Error err = {{0}};
    int rc = 0;
    if (d->rank == 0) {
        RunLockOwner me;
        runlock_owner_self(&me);
        const char *env = getenv("ACTLORA_RUNLOCK_BEAT_S");
        double beat = env ? atof(env) : RUNLOCK_BEAT_S;
        check(beat > 0, "ACTLORA_RUNLOCK_BEAT_S='%s' must be a positive number of seconds", env ? env : "");
        rc = runlock_acquire(l, dir, &me, beat, stdout, &err);
    }
    MPI_Bcast(&rc, 1, MPI_INT, 0, d->comm);
    if (rc != 0) {  // one message, from rank 0, whose die aborts the job; the others wait for that
        if (d->rank == 0) die("%s", err.msg);
        MPI_Barrier(d->comm);
        die("run.dir '%s' is unusable (rank 0 says why)", dir);
    }
}
