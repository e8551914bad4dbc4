// test_runlock.c: one run per run.dir (runlock.h), with short heartbeats (0.1-0.2 s):
//   - the lock file's text names its owner and parses back; a file without a pid describes an unknown run
//   - the "provably gone" rules: an earlier run of the same Slurm job, a pid on this host that does not exist
//     or is a zombie; nothing else (another host, a live pid, another job, the same run of the same job) is judged gone
//   - a fresh directory: taken, the heartbeat changes the file's mtime, release removes it
//   - a live holder (a child process beating) refuses a contender that cannot prove it gone, with a message
//     naming its pid and what to do; once that holder is SIGKILLed, the same host takes over without watching
//   - a lock left by another host: watched, then taken over as stale; one of an earlier run of the same job:
//     taken over at once; one without a pid: watched, taken over
//   - a lock released while being watched: taken as fresh, no take-over
//   - the heartbeat writes a removed file again, and reports the lock lost (naming the taker) when another
//     run's lock replaced it; release leaves a file that is not this run's alone
//   - a run.dir that does not exist: an error naming the lock file
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "actlora/runlock.h"
#include "test_util.h"

static char dir[256];

static void put(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static char *lock_path(void) {
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, RUNLOCK_FILE);
    return p;
}

// runlock_acquire with `me`, its note lines captured into note (cap bytes)
static int acquire(RunLock *l, const RunLockOwner *me, double beat, char *note, size_t cap, Error *err) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    int rc = runlock_acquire(l, dir, me, beat, f, err);
    fclose(f);
    snprintf(note, cap, "%s", buf ? buf : "");
    free(buf);
    return rc;
}

static void test_owner(TestCounts *tc) {
    RunLockOwner me, o;
    runlock_owner_self(&me);
    T_CHECK(tc, me.pid == (long)getpid() && me.host[0] && strlen(me.started) == 20, "self: pid %ld host '%s' started '%s'",
            me.pid, me.host, me.started);
    int rc = runlock_owner_parse(&o, "# comment\nhost=node17\npid=4242\njob=4711\nrestart=2\nstarted=2026-01-02T03:04:05Z\n");
    T_CHECK(tc, rc == 0 && o.pid == 4242 && strcmp(o.host, "node17") == 0 && strcmp(o.job, "4711") == 0 &&
                    o.restart == 2 && strcmp(o.started, "2026-01-02T03:04:05Z") == 0,
            "parse: rc %d pid %ld host '%s' job '%s' restart %d", rc, o.pid, o.host, o.job, o.restart);
    T_CHECK(tc, runlock_owner_parse(&o, "host=a\njob=1\n") == -1, "a lock without a pid parses");
    T_CHECK(tc, runlock_owner_parse(&o, "pid=12x\n") == -1 && runlock_owner_parse(&o, "pid=\n") == -1 &&
                    runlock_owner_parse(&o, "") == -1,
            "a bad pid parses");
    T_CHECK(tc, runlock_owner_parse(&o, "pidx=5\npid=7") == 0 && o.pid == 7, "key prefix or missing newline: pid %ld",
            o.pid);

    // a pid that surely does not exist: a reaped child's
    pid_t c = fork();
    if (c == 0) _exit(0);
    waitpid(c, NULL, 0);
    char why[256];
    RunLockOwner h = me;
    h.pid = c;
    T_CHECK(tc, runlock_owner_gone(&h, &me, why, sizeof why) == 1 && strstr(why, "no longer exists"),
            "dead pid on this host not gone: %s", why);
    // a killed process nobody has reaped yet (a zombie: kill(pid, 0) still succeeds)
    pid_t z = fork();
    if (z == 0) _exit(0);
    usleep(200000);
    h.pid = z;
    T_CHECK(tc, kill(z, 0) == 0 && runlock_owner_gone(&h, &me, why, sizeof why) == 1, "a zombie on this host not gone: %s",
            why);
    waitpid(z, NULL, 0);
    h.pid = c;
    snprintf(h.host, sizeof h.host, "elsewhere");
    T_CHECK(tc, runlock_owner_gone(&h, &me, why, sizeof why) == 0, "dead pid on another host judged gone");
    h = me;  // our own pid: alive
    T_CHECK(tc, runlock_owner_gone(&h, &me, why, sizeof why) == 0, "live pid judged gone");
    RunLockOwner a = me, b = me;
    snprintf(a.job, sizeof a.job, "77"), snprintf(b.job, sizeof b.job, "77");
    snprintf(a.host, sizeof a.host, "elsewhere");
    a.restart = 0, b.restart = 1;
    T_CHECK(tc, runlock_owner_gone(&a, &b, why, sizeof why) == 1 && strstr(why, "run 0 of this Slurm job (77)"),
            "earlier run of the same job not gone: %s", why);
    T_CHECK(tc, runlock_owner_gone(&b, &a, why, sizeof why) == 0, "a later run of the same job judged gone");
    a.restart = 1;
    T_CHECK(tc, runlock_owner_gone(&a, &b, why, sizeof why) == 0, "the same run of the same job judged gone");
    a.restart = 0, snprintf(a.job, sizeof a.job, "78");
    T_CHECK(tc, runlock_owner_gone(&a, &b, why, sizeof why) == 0, "another job judged gone");
    a.job[0] = b.job[0] = '\0';
    T_CHECK(tc, runlock_owner_gone(&a, &b, why, sizeof why) == 0, "no job ids: judged gone by restart count");
}

static void test_fresh(TestCounts *tc) {
    RunLockOwner me;
    runlock_owner_self(&me);
    RunLock l;
    Error err = {{0}};
    char note[2048];
    int rc = acquire(&l, &me, 0.1, note, sizeof note, &err);
    T_CHECK(tc, rc == 0 && note[0] == '\0', "fresh dir: rc %d (%s), note '%s'", rc, err.msg, note);
    FILE *f = fopen(lock_path(), "r");
    char text[1024] = "";
    if (f) text[fread(text, 1, sizeof text - 1, f)] = '\0', fclose(f);
    RunLockOwner o;
    T_CHECK(tc, runlock_owner_parse(&o, text) == 0 && o.pid == me.pid && strcmp(o.host, me.host) == 0,
            "the lock names this process: '%s'", text);
    struct stat s0, s1;
    stat(lock_path(), &s0);
    usleep(350000);
    stat(lock_path(), &s1);
    T_CHECK(tc, s1.st_mtim.tv_sec != s0.st_mtim.tv_sec || s1.st_mtim.tv_nsec != s0.st_mtim.tv_nsec,
            "no heartbeat: mtime unchanged over 3.5 beats");
    runlock_release(&l);
    T_CHECK(tc, !exists(lock_path()), "release left the lock");
    runlock_release(&l);  // twice: nothing
}

static void test_live_then_killed(TestCounts *tc) {
    pid_t c = fork();
    if (c == 0) {  // the holder: takes the lock, beats every 0.1 s until killed
        RunLockOwner me;
        runlock_owner_self(&me);
        RunLock l;
        Error err;
        if (runlock_acquire(&l, dir, &me, 0.1, NULL, &err) != 0) _exit(3);
        sleep(30);
        _exit(0);
    }
    for (int i = 0; i < 200 && !exists(lock_path()); i++) usleep(10000);
    RunLockOwner me;
    runlock_owner_self(&me);
    snprintf(me.host, sizeof me.host, "another-host");  // cannot check the pid: must watch
    RunLock l;
    Error err = {{0}};
    char note[2048], pid[32];
    snprintf(pid, sizeof pid, "pid %ld", (long)c);
    int rc = acquire(&l, &me, 0.2, note, sizeof note, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "is in use by another run") && strstr(err.msg, pid) &&
                    strstr(err.msg, "--set run.dir") && strstr(err.msg, "delete") && strstr(note, "watching it for"),
            "live holder: rc %d, message '%s', note '%s'", rc, err.msg, note);
    T_CHECK(tc, exists(lock_path()), "the refused contender removed the holder's lock");

    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    T_CHECK(tc, exists(lock_path()), "a killed holder's lock is gone by itself (test setup)");
    runlock_owner_self(&me);  // this host: the dead pid is proof enough
    rc = acquire(&l, &me, 0.2, note, sizeof note, &err);
    T_CHECK(tc, rc == 0 && strstr(note, "taking over") && strstr(note, "no longer exists") && !strstr(note, "watching"),
            "killed holder on this host: rc %d (%s), note '%s'", rc, err.msg, note);
    runlock_release(&l);
}

static void test_stale(TestCounts *tc) {
    RunLockOwner me;
    runlock_owner_self(&me);
    RunLock l;
    Error err = {{0}};
    char note[2048];

    put(lock_path(), "host=gone-host\npid=12345\njob=900\nrestart=0\nstarted=2026-01-01T00:00:00Z\n");
    int rc = acquire(&l, &me, 0.1, note, sizeof note, &err);
    T_CHECK(tc, rc == 0 && strstr(note, "watching") && strstr(note, "pid 12345 on gone-host (Slurm job 900, run 0)") &&
                    strstr(note, "has not changed"),
            "stale lock of another host: rc %d (%s), note '%s'", rc, err.msg, note);
    runlock_release(&l);

    put(lock_path(), "host=gone-host\npid=12345\njob=900\nrestart=0\n");
    RunLockOwner requeued = me;
    snprintf(requeued.job, sizeof requeued.job, "900");
    requeued.restart = 1;
    rc = acquire(&l, &requeued, 5.0, note, sizeof note, &err);  // 5 s beats: watching would show in the note
    T_CHECK(tc, rc == 0 && strstr(note, "taking over") && strstr(note, "run 0 of this Slurm job") && !strstr(note, "watching"),
            "lock of the job's previous run: rc %d (%s), note '%s'", rc, err.msg, note);
    runlock_release(&l);

    put(lock_path(), "garbage\n");
    rc = acquire(&l, &me, 0.1, note, sizeof note, &err);
    T_CHECK(tc, rc == 0 && strstr(note, "an unknown run") && strstr(note, "taking over"),
            "lock without a pid: rc %d (%s), note '%s'", rc, err.msg, note);
    runlock_release(&l);

    // released while watched: taken as a fresh lock
    put(lock_path(), "host=gone-host\npid=12345\n");
    pid_t c = fork();
    if (c == 0) {
        usleep(150000);
        unlink(lock_path());
        _exit(0);
    }
    rc = acquire(&l, &me, 0.4, note, sizeof note, &err);
    waitpid(c, NULL, 0);
    T_CHECK(tc, rc == 0 && strstr(note, "watching") && !strstr(note, "taking over"),
            "lock released while watched: rc %d (%s), note '%s'", rc, err.msg, note);
    runlock_release(&l);
}

static void test_lost(TestCounts *tc) {
    RunLockOwner me;
    runlock_owner_self(&me);
    RunLock l;
    Error err = {{0}};
    char note[256];
    int rc = acquire(&l, &me, 0.1, note, sizeof note, &err);
    T_CHECK(tc, rc == 0, "acquire: %s", err.msg);
    // removed by hand: written again, still this run's
    unlink(lock_path());
    for (int i = 0; i < 50 && !exists(lock_path()); i++) usleep(20000);
    FILE *g = fopen(lock_path(), "r");
    char mine[512] = "";
    if (g) mine[fread(mine, 1, sizeof mine - 1, g)] = '\0', fclose(g);
    RunLockOwner o;
    T_CHECK(tc, runlock_owner_parse(&o, mine) == 0 && o.pid == me.pid && !runlock_lost(&l),
            "a removed lock is not written again: '%s', lost %d", mine, runlock_lost(&l));
    // replaced by another run's lock: lost, naming that run
    unlink(lock_path());
    put(lock_path(), "host=someone\npid=1\n");
    for (int i = 0; i < 50 && !runlock_lost(&l); i++) usleep(20000);
    T_CHECK(tc, runlock_lost(&l) == 1 && strcmp(l.taker, "pid 1 on someone") == 0,
            "the heartbeat did not notice its lock replaced (taker '%s')", l.taker);
    runlock_release(&l);
    T_CHECK(tc, runlock_lost(&l) == 0, "a released lock reports lost");
    FILE *f = fopen(lock_path(), "r");
    char text[64] = "";
    if (f) text[fread(text, 1, sizeof text - 1, f)] = '\0', fclose(f);
    T_CHECK(tc, strstr(text, "host=someone") != NULL, "release removed a lock that was not this run's: '%s'", text);
    unlink(lock_path());
}

static void test_no_dir(TestCounts *tc) {
    RunLockOwner me;
    runlock_owner_self(&me);
    RunLock l;
    Error err = {{0}};
    int rc = runlock_acquire(&l, "/nonexistent/run", &me, 0.1, NULL, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "/nonexistent/run/run.lock") && strstr(err.msg, "No such file"),
            "missing run.dir: rc %d, '%s'", rc, err.msg);
    runlock_release(&l);
}

int main(void) {
    TestCounts tc = {0, 0};
    snprintf(dir, sizeof dir, "/tmp/actlora_test_runlock_%d", (int)getpid());
    if (mkdir(dir, 0755) != 0) {
        perror(dir);
        return 1;
    }
    fprintf(stderr, "test_runlock: (the warning about a removed lock below is expected)\n");
    test_owner(&tc);
    test_fresh(&tc);
    test_live_then_killed(&tc);
    test_stale(&tc);
    test_lost(&tc);
    test_no_dir(&tc);
    unlink(lock_path());
    rmdir(dir);
    printf("test_runlock: %d passed, %d failed\n", tc.passed, tc.failed);
    return tc.failed ? 1 : 0;
}
