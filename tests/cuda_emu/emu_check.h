// emu_check.h: what the CUDA emulator's tests (test_cuda_emu.cu, test_cuda_emu_race.cu) share: one line per check,
// the CUDA error check, copies to and from the device, and death tests in a fork()ed child. Host code only; nvcc
// compiles it too.
#ifndef ACTLORA_CUDA_EMU_CHECK_H
#define ACTLORA_CUDA_EMU_CHECK_H

#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static int g_pass = 0, g_fail = 0;

static inline void report(int ok, const char *what, const char *fmt, ...) {  // one line per check
    ok ? g_pass++ : g_fail++;
    printf("  %s  %s", what, ok ? "ok\n" : "FAIL: ");
    if (!ok) {
        va_list ap;
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
    }
    fflush(stdout);
}

static inline void ck(cudaError_t e, const char *what, int line) {
    if (e == cudaSuccess) return;
    printf("FATAL line %d: %s: %s\n", line, what, cudaGetErrorString(e));
    exit(1);
}
#define CK(x) ck((x), #x, __LINE__)
#define SYNC() (CK(cudaGetLastError()), CK(cudaDeviceSynchronize()))

static inline void *dev_copy(const void *h, size_t bytes) {
    void *d;
    CK(cudaMalloc(&d, bytes));
    CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}
static inline void to_host(void *h, const void *d, size_t bytes) { CK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost)); }

static inline void check_ints(const char *what, const int *got, const int *want, int n) {
    int bad = 0, f = -1;
    for (int i = 0; i < n; i++)
        if (got[i] != want[i] && bad++ == 0) f = i;
    report(bad == 0, what, "%d of %d wrong, first [%d]: got %d (0x%x), expected %d (0x%x)", bad, n, f,
           f < 0 ? 0 : got[f], f < 0 ? 0 : got[f], f < 0 ? 0 : want[f], f < 0 ? 0 : want[f]);
}

// runs fn in a child with its stderr in a pipe: it must die (a signal or a non-zero exit) saying text1 and text2
static inline void expect_death(const char *what, void (*fn)(void), const char *text1, const char *text2) {
    int fd[2];
    char buf[4096];
    size_t len = 0;
    ssize_t r;
    fflush(stdout), fflush(stderr);
    if (pipe(fd) != 0) return report(0, what, "pipe() failed");
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        close(fd[0]), dup2(fd[1], 2), close(fd[1]);
        fn();
        cudaDeviceSynchronize();
        _exit(0);
    }
    close(fd[1]);
    while (len + 1 < sizeof buf && (r = read(fd[0], buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)r;
    buf[len] = 0;
    close(fd[0]);  // a child with more to say gets SIGPIPE
    int st = 0;
    waitpid(pid, &st, 0);
    int died = pid > 0 && (WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) != 0));
    int said = strstr(buf, text1) && (!text2 || strstr(buf, text2));
    for (size_t i = 0; i < len; i++) buf[i] = buf[i] == '\n' ? ' ' : buf[i];
    report(died && said, what, "child %s (wait status 0x%x), wanted \"%s\"%s%s, stderr: %s",
           died ? "died" : "did not die", st, text1, text2 ? " and " : "", text2 ? text2 : "", buf);
}

#endif
