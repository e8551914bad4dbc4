// test_watchdog.c: the no-progress watchdog (watchdog.h), each case in a child process:
//   - beats stop: the process ends with ACTLORA_EXIT_HUNG, the message names the rank, the timeout and what the
//     last beat began, before the child would have exited on its own
//   - beats keep coming for longer than the timeout, then watchdog_stop: a normal exit
//   - timeout 0: no thread, nothing ends the process
//   - the helper-thread plumbing the watchdog and the run.dir lock share (common.h): a thread_start_quiet thread
//     blocks SIGUSR1 and SIGTERM (the main thread's, signals.h), and the caller's mask is unchanged; cond_wait_for
//     returns after about its timeout, not at once and not never
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "actlora/common.h"
#include "actlora/watchdog.h"
#include "test_util.h"

// runs case `which` in a child with stderr into buf; returns the child's exit status (-1: killed)
static int run_child(int which, char *buf, size_t cap) {
    int fd[2];
    if (pipe(fd) != 0) return -2;
    fflush(stdout), fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 2);
        close(fd[0]);
        Watchdog w;
        if (which == 0) {  // beats, then silence: ends by the watchdog within ~0.4 s of the last beat
            watchdog_start(&w, 0.4, 3);
            for (int i = 0; i < 5; i++) watchdog_beat(&w, "step %d, micro-step %d", 7, i), usleep(50000);
            sleep(5);
            _exit(0);  // only when the watchdog did not fire
        } else if (which == 1) {  // beats every 50 ms for 2.5 s, two and a half timeouts (1 s: room for a busy machine)
            watchdog_start(&w, 1.0, 0);
            for (int i = 0; i < 50; i++) watchdog_beat(&w, "beat %d", i), usleep(50000);
            watchdog_stop(&w);
            _exit(0);
        } else {  // off: silence for 1 s is fine
            watchdog_start(&w, 0.0, 0);
            watchdog_beat(&w, "nothing");
            sleep(1);
            watchdog_stop(&w);
            _exit(0);
        }
    }
    close(fd[1]);
    size_t n = 0;
    ssize_t k;
    while (n + 1 < cap && (k = read(fd[0], buf + n, cap - 1 - n)) > 0) n += (size_t)k;
    buf[n] = 0;
    close(fd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void *report_mask(void *arg) {
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    *(int *)arg = sigismember(&cur, SIGUSR1) == 1 && sigismember(&cur, SIGTERM) == 1;
    return NULL;
}

static void test_thread_helpers(TestCounts *tc) {
    int blocked = -1;
    pthread_t t;
    int rc = thread_start_quiet(&t, report_mask, &blocked);
    if (rc == 0) pthread_join(t, NULL);
    sigset_t mine;
    pthread_sigmask(SIG_BLOCK, NULL, &mine);
    T_CHECK(tc, rc == 0 && blocked == 1, "thread_start_quiet: rc %d, SIGUSR1 and SIGTERM blocked in it: %d", rc,
            blocked);
    T_CHECK(tc, !sigismember(&mine, SIGUSR1) && !sigismember(&mine, SIGTERM),
            "thread_start_quiet changed the caller's mask");

    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv;
    cond_init_monotonic(&cv);
    pthread_mutex_lock(&mu);
    double t0 = time_now();
    cond_wait_for(&cv, &mu, 0.2);
    double waited = time_now() - t0;
    pthread_mutex_unlock(&mu);
    pthread_cond_destroy(&cv);
    T_CHECK(tc, waited >= 0.19 && waited < 5.0, "cond_wait_for(0.2 s) returned after %.3f s", waited);
}

int main(void) {
    TestCounts tc = {0};
    char buf[4096];
    int rc = run_child(0, buf, sizeof buf);
    T_CHECK(&tc, rc == ACTLORA_EXIT_HUNG, "a silent rank: exit %d, expected %d (stderr: %s)", rc, ACTLORA_EXIT_HUNG, buf);
    T_CHECK(&tc, strstr(buf, "error (rank 3): no progress for ") != NULL, "message names the rank: %s", buf);
    T_CHECK(&tc, strstr(buf, "since it began: step 7, micro-step 4.") != NULL, "message names the last beat: %s", buf);
    T_CHECK(&tc, strstr(buf, "run.watchdog_minutes = 0.00666667") != NULL, "message names the key: %s", buf);
    T_CHECK(&tc, strstr(buf, "resumes from its newest checkpoint") != NULL, "message says what happens: %s", buf);
    rc = run_child(1, buf, sizeof buf);
    T_CHECK(&tc, rc == 0 && buf[0] == 0, "a beating rank: exit %d, stderr '%s'", rc, buf);
    rc = run_child(2, buf, sizeof buf);
    T_CHECK(&tc, rc == 0 && buf[0] == 0, "watchdog off: exit %d, stderr '%s'", rc, buf);
    test_thread_helpers(&tc);
    return t_finish(&tc, "test_watchdog");
}
