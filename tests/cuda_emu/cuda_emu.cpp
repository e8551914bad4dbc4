// cuda_emu.cpp: the CUDA emulator's launches, barriers and runtime API (cuda_emu.h, cuda_runtime.h).
//
// A launch runs its blocks one after another. The threads of a block are fibers on this OS thread, each
// with its own stack, run warp by warp until every one of them has finished or waits:
//   - __syncthreads: a thread waits until every thread of its block that has not exited waits there too;
//   - warp operations (__syncwarp, shuffles, __match_any_sync): a thread waits until every lane of its mask
//     waits at a warp operation with the same mask; a lane of the mask that has exited is an error, as is a
//     block in which some threads wait at __syncthreads and the others of a warp at a warp operation (a
//     deadlock on the device). The warp-wide WMMA calls of mma.h wait so too, with a full mask, after checking
//     their pointer and leading dimension (cuda_emu_wmma_enter).
// Device memory is host memory from mmap with a PROT_NONE page right after each allocation (a read or write
// more than 16 bytes past the end stops the test with the kernel's name), filled with 0xff bytes (NaN as
// floats) until written: a kernel that reads what nobody wrote gets NaNs, as it would get garbage on the
// device. Dynamic shared memory ends at a PROT_NONE page too. The runtime calls check that device pointers lie
// inside allocations. Launch limits are the device's: at most 1024 threads per block, grid y and z at most
// 65535, 48 KiB of dynamic shared memory. ACTLORA_CUDA_EMU_ORDER=reverse runs
// blocks, warps and lanes last to first: a kernel whose result depends on the order (a missing barrier, a
// block that assumes another ran first) gives another result; ctest runs the CUDA op tests in both orders.
// For the race checker (race.cpp, linked into the instrumented build only) the scheduler keeps cuda_emu_sched
// (emu_sched.h): the running launch, block and thread, and the barriers each thread has passed.
#include <map>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cuda_runtime.h"
#include "emu_sched.h"

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

// ------------------------------------------------------------------------------------------- messages

static void emu_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda_emu: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    abort();
}

// what runs now, for the messages (a kernel, a cuBLAS call or nothing)
static const char *g_what = "host code";  // host code or a cuBLAS call (a kernel: cuda_emu_sched.kernel)

EmuSched cuda_emu_sched;
static EmuSched &S = cuda_emu_sched;
static uint32_t g_serial = 0;  // launch and block serials (EmuSched)

// the race checker's reports at the end of a launch and at a crash: nothing unless race.cpp is linked
extern "C" __attribute__((weak)) void cuda_emu_race_launch_end(void) {}
extern "C" __attribute__((weak)) void cuda_emu_race_on_crash(void) {}
extern "C" __attribute__((weak)) void cuda_emu_race_host_write(const void *, size_t) {}
extern "C" __attribute__((weak)) void cuda_emu_race_alloc(const void *, size_t) {}

extern "C" void cuda_emu_set_activity(const char *what) {
    g_what = what;
}

static void on_segv(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    cuda_emu_race_on_crash();
    if (S.in_kernel)
        fprintf(stderr,
                "cuda_emu: invalid memory access (%s at %p) in kernel %s launched at %s:%d, block (%u,%u,%u), "
                "thread (%u,%u,%u)\n",
                sig == SIGSEGV ? "SIGSEGV" : "SIGBUS", si->si_addr, S.kernel, S.file, S.line, blockIdx.x, blockIdx.y,
                blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    else
        fprintf(stderr, "cuda_emu: invalid memory access (%s at %p) in %s\n", sig == SIGSEGV ? "SIGSEGV" : "SIGBUS",
                si->si_addr, g_what);
    fflush(stderr);
    signal(SIGABRT, SIG_DFL);
    abort();
}

static void install_segv_handler(void) {
    static int done = 0;
    if (done) return;
    done = 1;
    static char altstack[1 << 16];
    stack_t ss;
    ss.ss_sp = altstack;
    ss.ss_size = sizeof altstack;
    ss.ss_flags = 0;
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
}

// ------------------------------------------------------------------------------------------- fibers

#if defined(__x86_64__)
// emu_switch(save, to): saves the callee-saved registers on this stack, stores the stack pointer in *save and
// continues on stack `to` (a stack saved by emu_switch or made by fiber_stack_init). The FP control words are
// not switched: no kernel changes them.
extern "C" void emu_switch(void **save, void *to);
__asm__(
    ".text\n"
    ".globl emu_switch\n"
    ".type emu_switch,@function\n"
    "emu_switch:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n"
    ".size emu_switch, .-emu_switch\n"
    ".section .note.GNU-stack,\"\",@progbits\n"
    ".text\n");

static void *fiber_stack_init(char *top, void (*entry)(void)) {
    uint64_t *sp = (uint64_t *)((uintptr_t)top & ~(uintptr_t)15);
    *--sp = 0;                          // entry's "return address": entry never returns
    *--sp = (uint64_t)(uintptr_t)entry; // emu_switch's ret lands here
    for (int i = 0; i < 6; i++) *--sp = 0;  // rbp rbx r12 r13 r14 r15
    return sp;
}
#else
#error "the CUDA emulator's fibers are written for x86-64"
#endif

enum { F_RUN = 0, F_WAIT_BLOCK, F_WAIT_WARP, F_DONE };

typedef struct {
    void *sp;
    int state;
    unsigned mask;   // warp mask of the warp operation it waits at
    int sync;        // that operation is __syncwarp (orders memory; shuffles and matches do not)
    uint3 tid;
} Fiber;

// Fiber stacks: small and contiguous in transparent huge pages (a block's stacks in a few TLB entries: every
// warp operation switches stacks); a canary at the bottom of each is checked after every block.
#define EMU_STACK_BYTES (64u << 10)
#define EMU_STACK_CANARY 0x5a17c0de5a17c0deull

static struct {
    Fiber f[EMU_MAX_THREADS];
    // the values of the warp operations, by linear thread id: a lane writes `pending` before it waits; the
    // release of its group copies the group's values into `snap`, which the lanes read when they resume
    // (before any lane of the warp can reach another release)
    uint64_t pending[EMU_MAX_THREADS], snap[EMU_MAX_THREADS];
    int n;  // threads per block (the running one: cuda_emu_sched.cur)
    void *sched_sp;
    CudaEmuThunk thunk;
    void *fn;
    int rev;  // ACTLORA_CUDA_EMU_ORDER=reverse: blocks, warps and lanes run last to first
} g;

// Leaves the running fiber (its state already set): straight to the next lane of its warp that can run, if
// there is one (half the switches of going through the scheduler), else back to the scheduler.
static void fiber_leave(void) {
    int t = S.cur, w0 = t / 32 * 32, end = w0 + 32 < g.n ? w0 + 32 : g.n;
    for (int u = g.rev ? t - 1 : t + 1; g.rev ? u >= w0 : u < end; u += g.rev ? -1 : 1)
        if (g.f[u].state == F_RUN) {
            S.cur = u;
            threadIdx = g.f[u].tid;
            emu_switch(&g.f[t].sp, g.f[u].sp);
            return;
        }
    emu_switch(&g.f[t].sp, g.sched_sp);
}

static void fiber_entry(void) {
    g.thunk(g.fn);
    g.f[S.cur].state = F_DONE;
    fiber_leave();
    emu_die("internal: a finished fiber was resumed");
}

static void fiber_yield(int state, unsigned mask, int sync) {
    if (!S.in_kernel) emu_die("a barrier or warp operation outside a kernel (in %s)", g_what);
    g.f[S.cur].state = state;
    g.f[S.cur].mask = mask;
    g.f[S.cur].sync = sync;
    fiber_leave();
}

static void stacks_init(void) {
    if (S.stacks) return;
    size_t bytes = (size_t)EMU_STACK_BYTES * EMU_MAX_THREADS;
    char *m = (char *)mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) emu_die("cannot map the fibers' stacks");
    madvise(m, bytes, MADV_HUGEPAGE);
    S.stacks = m;
    S.stacks_bytes = bytes;
}

static char *stack_top(int i) { return S.stacks + (size_t)(i + 1) * EMU_STACK_BYTES; }
static uint64_t *stack_canary(int i) { return (uint64_t *)(S.stacks + (size_t)i * EMU_STACK_BYTES); }

// A barrier release: the clock's next value (emu_sched.h)
static uint32_t clock_tick(void) {
    if (++S.clock == 0) emu_die("the race checker's barrier clock wrapped around (2^32 barriers)");
    return S.clock;
}

// Releases the groups of warp w0 whose warp operation is complete: a waiting lane's group is the lanes of its
// mask (those the block has), and it is complete when every one of them waits at a warp operation with the
// same mask (CUDA: the threads named in the mask execute the same intrinsic with the same mask). Groups
// released together are disjoint. Returns how many groups it released.
static int release_warp(int w0) {
    int wn = g.n - w0 < 32 ? g.n - w0 : 32, released = 0;
    unsigned exist = wn == 32 ? 0xffffffffu : ((1u << wn) - 1u);
    for (int l = 0; l < wn; l++) {
        if (g.f[w0 + l].state != F_WAIT_WARP) continue;
        unsigned m = g.f[w0 + l].mask, grp = m & exist;
        int ok = (grp >> l) & 1u;  // a lane's own bit must be in its mask
        if (!ok)
            emu_die("kernel %s (%s:%d), block (%u,%u,%u): lane %d of warp %d runs a warp operation with mask 0x%08x, "
                    "which does not name it",
                    S.kernel, S.file, S.line, blockIdx.x, blockIdx.y, blockIdx.z, l, w0 / 32, m);
        for (int k = 0; k < wn && ok; k++) {
            if (!(grp >> k & 1u)) continue;
            const Fiber *f = &g.f[w0 + k];
            if (f->state == F_DONE)
                emu_die("kernel %s (%s:%d), block (%u,%u,%u): a warp operation's mask 0x%08x names lane %d of warp %d, "
                        "which has exited",
                        S.kernel, S.file, S.line, blockIdx.x, blockIdx.y, blockIdx.z, m, k, w0 / 32);
            ok = f->state == F_WAIT_WARP && f->mask == m;
        }
        if (!ok) continue;  // a lane of the group is elsewhere (another warp operation, __syncthreads)
        uint32_t c = g.f[w0 + l].sync ? clock_tick() : 0;
        for (int k = 0; k < wn; k++)
            if (grp >> k & 1u) {
                g.snap[w0 + k] = g.pending[w0 + k];
                g.f[w0 + k].state = F_RUN;
                if (c) S.warp_epoch[w0 + k] = c;
            }
        released++;
    }
    return released;
}

// Runs one block: each warp in turn until all its lanes wait at __syncthreads or have exited (its warp
// operations released as its lanes reach them), then the block barrier, until every thread has exited.
static void run_block(void) {
    S.block_tok = ++g_serial;
    S.block_lin = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    memset(S.block_epoch, 0, sizeof(uint32_t) * (size_t)g.n);
    memset(S.warp_epoch, 0, sizeof(uint32_t) * (size_t)g.n);
    for (int t = 0; t < g.n; t++) {
        g.f[t].state = F_RUN;
        g.f[t].sp = fiber_stack_init(stack_top(t), fiber_entry);
        *stack_canary(t) = EMU_STACK_CANARY;
        unsigned x = blockDim.x, y = blockDim.y;
        g.f[t].tid = uint3{(unsigned)t % x, (unsigned)t / x % y, (unsigned)t / (x * y)};
    }
    for (;;) {
        int nw = (g.n + 31) / 32;
        for (int wi = 0; wi < nw; wi++) {
            int w0 = 32 * (g.rev ? nw - 1 - wi : wi), wn = g.n - w0 < 32 ? g.n - w0 : 32;
            do {
                for (int i = 0; i < wn; i++) {  // a lane passes on to the next runnable lane (fiber_leave)
                    int t = w0 + (g.rev ? wn - 1 - i : i);
                    if (g.f[t].state == F_RUN) {
                        S.cur = t;
                        threadIdx = g.f[t].tid;
                        emu_switch(&g.sched_sp, g.f[t].sp);
                        break;
                    }
                }
            } while (release_warp(w0));
        }
        int done = 0, at_block = 0;
        for (int t = 0; t < g.n; t++) {
            done += g.f[t].state == F_DONE;
            at_block += g.f[t].state == F_WAIT_BLOCK;
        }
        if (done == g.n) {
            for (int t = 0; t < g.n; t++)
                if (*stack_canary(t) != EMU_STACK_CANARY)
                    emu_die("kernel %s (%s:%d): thread %d overflowed its %u KiB emulator stack", S.kernel, S.file, S.line,
                            t, EMU_STACK_BYTES >> 10);
            return;
        }
        if (at_block == g.n - done) {
            uint32_t c = clock_tick();
            for (int t = 0; t < g.n; t++)
                if (g.f[t].state == F_WAIT_BLOCK) {
                    g.f[t].state = F_RUN;
                    S.block_epoch[t] = S.warp_epoch[t] = c;
                }
            continue;
        }
        emu_die("kernel %s (%s:%d), block (%u,%u,%u): deadlock: %d threads wait at __syncthreads while others wait "
                "at a warp operation whose lanes are not all there",
                S.kernel, S.file, S.line, blockIdx.x, blockIdx.y, blockIdx.z, at_block);
    }
}

// Dynamic shared memory: room for the most a launch may ask for (48 KiB), ending at a PROT_NONE page; a launch's
// bytes (rounded to 16) are placed against it, so a kernel that runs past its dynamic shared memory faults, as
// one that runs past a device buffer does.
static char *dyn_smem_end(void) {
    static char *end = NULL;
    if (!end) {
        size_t page = (size_t)sysconf(_SC_PAGESIZE), data = ((48u << 10) + page - 1) / page * page;
        char *m = (char *)mmap(NULL, data + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) emu_die("cannot map the dynamic shared memory");
        mprotect(m + data, page, PROT_NONE);
        end = m + data;
    }
    return end;
}

static cudaError_t g_last_error = cudaSuccess;

// ACTLORA_CUDA_EMU_ORDER, read once: 1 for "reverse", 0 for "forward" or unset; anything else dies
static int order_reverse(void) {
    static int rev = -1;
    if (rev < 0) {
        const char *order = getenv("ACTLORA_CUDA_EMU_ORDER");
        rev = order && !strcmp(order, "reverse");
        if (order && *order && !rev && strcmp(order, "forward"))
            emu_die("ACTLORA_CUDA_EMU_ORDER=%s: expected \"forward\" or \"reverse\"", order);
    }
    return rev;
}

void cuda_emu_run(dim3 grid, dim3 block, size_t smem, CudaEmuThunk thunk, void *fn, const char *kernel,
                  const char *file, int line) {
    if (S.in_kernel) emu_die("kernel %s launched from inside kernel %s", kernel, S.kernel);
    unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
    if (nt == 0 || nt > EMU_MAX_THREADS || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u || smem > (48u << 10)) {
        fprintf(stderr, "cuda_emu: bad launch of %s at %s:%d: grid (%u,%u,%u), block (%u,%u,%u), %zu bytes of dynamic "
                "shared memory\n", kernel, file, line, grid.x, grid.y, grid.z, block.x, block.y, block.z, smem);
        g_last_error = cudaErrorInvalidConfiguration;
        return;
    }
    install_segv_handler();
    stacks_init();
    size_t smem16 = (smem + 15) / 16 * 16;
    S.dyn = dyn_smem_end() - smem16;
    S.dyn_bytes = smem;
    memset(S.dyn, 0xff, smem16);
    S.kernel = kernel;
    S.file = file;
    S.line = line;
    S.launch_tok = ++g_serial;
    S.in_kernel = 1;
    g.thunk = thunk;
    g.fn = fn;
    g.n = (int)nt;
    gridDim = grid;
    blockDim = block;
    g.rev = order_reverse();
    for (unsigned zi = 0; zi < grid.z; zi++)
        for (unsigned yi = 0; yi < grid.y; yi++)
            for (unsigned xi = 0; xi < grid.x; xi++) {
                blockIdx = g.rev ? uint3{grid.x - 1 - xi, grid.y - 1 - yi, grid.z - 1 - zi} : uint3{xi, yi, zi};
                run_block();
            }
    S.in_kernel = 0;
    cuda_emu_race_launch_end();
}

void *cuda_emu_dyn_smem(void) { return S.dyn; }

void __syncthreads(void) { fiber_yield(F_WAIT_BLOCK, 0, 0); }
void __syncwarp(unsigned mask) { fiber_yield(F_WAIT_WARP, mask, 1); }

static unsigned warp_base(void) { return (unsigned)S.cur / 32u * 32u; }

uint64_t cuda_emu_shfl(unsigned mask, uint64_t v, int src, int width) {
    (void)width;
    g.pending[S.cur] = v;
    fiber_yield(F_WAIT_WARP, mask, 0);
    if (src < 0) return v;
    int s = (int)warp_base() + src;
    if (s >= g.n || !(mask >> src & 1u))
        emu_die("kernel %s (%s:%d): thread %d shuffles from lane %d, outside the block or the mask 0x%08x", S.kernel,
                S.file, S.line, S.cur, src, mask);
    return g.snap[s];
}

unsigned __match_any_sync(unsigned mask, unsigned v) {
    g.pending[S.cur] = v;
    fiber_yield(F_WAIT_WARP, mask, 0);
    unsigned r = 0, b = warp_base();
    for (int l = 0; l < 32 && (int)(b + l) < g.n; l++)
        if ((mask >> l & 1u) && g.snap[b + l] == (uint64_t)v) r |= 1u << l;
    return r;
}
unsigned __match_any_sync(unsigned mask, int v) { return __match_any_sync(mask, (unsigned)v); }

// ------------------------------------------------------------------------------------------- WMMA (mma.h)

// The arguments of the WMMA call a thread waits at; valid while wmma_waiting is set and the thread waits (once
// released, a lane that runs on may reach its next call before the others have left this one).
static struct {
    const char *fn;
    const void *p;
    unsigned ldm;
    int layout;
} g_wmma[EMU_MAX_THREADS];
static unsigned char g_wmma_waiting[EMU_MAX_THREADS];

// The checks of nvcuda::wmma's warp-wide calls (cuda_emu.h). Alignment: CUDA requires a 256-bit aligned tile
// pointer. The emulator's cudaMalloc aligns to 16 bytes only and its dynamic shared memory to 16, where the
// device's start at 256 (and at the kernel's declared alignment): inside those two a pointer's offset from the
// start is checked, elsewhere (static __shared__ arrays, locals) its address.
void cuda_emu_wmma_enter(const char *fn, const void *p, unsigned ldm, unsigned elem_bytes, int layout) {
    if (!S.in_kernel)
        emu_die("nvcuda::wmma::%s(pointer %p, ldm %u) called outside a kernel (in %s)", fn, p, ldm, g_what);
    char at[256];
    snprintf(at, sizeof at, "kernel %s (%s:%d), block (%u,%u,%u), thread (%u,%u,%u)", S.kernel, S.file, S.line,
             blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    int w0 = S.cur / 32 * 32, wn = g.n - w0 < 32 ? g.n - w0 : 32;
    if (wn < 32)
        emu_die("%s: nvcuda::wmma::%s in warp %d, which has %d threads (a block of %d): every WMMA call is made by "
                "all 32 lanes of a warp", at, fn, w0 / 32, wn, g.n);
    if (p) {
        uintptr_t a = (uintptr_t)p, base = 0, user;
        size_t bytes;
        const char *in = "its address";
        if (cuda_emu_device_range(p, &user, &bytes) && a >= user) {
            base = user;
            in = "its offset in its device allocation";
        } else if (a - (uintptr_t)S.dyn < S.dyn_bytes) {
            base = (uintptr_t)S.dyn;
            in = "its offset in the dynamic shared memory";
        }
        if ((a - base) % 32)
            emu_die("%s: nvcuda::wmma::%s: the pointer is not 32-byte (256-bit) aligned (pointer %p, ldm %u; %s is "
                    "%zu mod 32)", at, fn, p, ldm, in, (size_t)((a - base) % 32));
        unsigned mult = 16 / elem_bytes;
        if (ldm % mult)
            emu_die("%s: nvcuda::wmma::%s: ldm %u is not a multiple of %u (16 bytes of %u-byte elements; pointer %p)",
                    at, fn, ldm, mult, elem_bytes, p);
    }
    for (int u = w0; u < w0 + 32; u++) {  // those already waiting passed the same comparison: one will do
        if (u == S.cur || !g_wmma_waiting[u] || g.f[u].state != F_WAIT_WARP) continue;
        if (strcmp(g_wmma[u].fn, fn) || g_wmma[u].p != p || g_wmma[u].ldm != ldm || g_wmma[u].layout != layout)
            emu_die("%s: lane %d calls nvcuda::wmma::%s(pointer %p, ldm %u, layout %d) while lane %d of its warp waits "
                    "in %s(pointer %p, ldm %u, layout %d): the lanes of a warp make the same WMMA call with the same "
                    "arguments", at, S.cur - w0, fn, p, ldm, layout, u - w0, g_wmma[u].fn, g_wmma[u].p,
                    g_wmma[u].ldm, g_wmma[u].layout);
        break;
    }
    g_wmma[S.cur].fn = fn;
    g_wmma[S.cur].p = p;
    g_wmma[S.cur].ldm = ldm;
    g_wmma[S.cur].layout = layout;
    g_wmma_waiting[S.cur] = 1;
    fiber_yield(F_WAIT_WARP, 0xffffffffu, 0);
    g_wmma_waiting[S.cur] = 0;
}

// ------------------------------------------------------------------------------------------- memory

typedef struct {
    char *map;       // mmap'd region (data pages + guard page)
    size_t map_len;
    size_t bytes;      // the range device pointers may address (the request, at least 1)
    size_t requested;  // as asked for (0 allowed)
    size_t charged;    // rounded (counted against the emulated device's memory)
} EmuAlloc;

static std::map<uintptr_t, EmuAlloc> g_allocs;  // by user pointer
static size_t g_allocated = 0;            // charged (rounded) bytes, against the emulated device's memory
static size_t g_live = 0, g_peak = 0;       // requested bytes live now, and their peak
static size_t g_n_allocs = 0;

// ACTLORA_CUDA_EMU_PEAK_FILE=path: at exit, the peak of the bytes cudaMalloc handed out (as requested) goes
// there as "peak_bytes N allocations M" (what the memory plan of a run is checked against; docs/gpu.md).
static void write_peak(void) {
    const char *path = getenv("ACTLORA_CUDA_EMU_PEAK_FILE");
    if (!path || !*path) return;
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f, "peak_bytes %zu allocations %zu\n", g_peak, g_n_allocs);
    fclose(f);
}

static size_t emu_total_bytes(void) {
    const char *s = getenv("ACTLORA_CUDA_EMU_MEM_GIB");
    double gib = s && *s ? atof(s) : 16.0;
    return (size_t)(gib * 1073741824.0);
}

// The allocation whose mapping (its pages and guard page) holds address a, or NULL.
static const std::pair<const uintptr_t, EmuAlloc> *find_alloc(uintptr_t a) {
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return NULL;
    --it;
    const EmuAlloc &e = it->second;
    return a >= (uintptr_t)e.map && a < (uintptr_t)e.map + e.map_len ? &*it : NULL;
}

// Whether [p, p + bytes) lies inside one allocation.
extern "C" int cuda_emu_is_device(const void *p, size_t bytes) {
    uintptr_t a = (uintptr_t)p;
    auto *f = find_alloc(a);
    return f && a >= f->first && a + bytes <= f->first + f->second.bytes;
}

extern "C" int cuda_emu_device_range(const void *p, uintptr_t *user, size_t *bytes) {
    auto *f = find_alloc((uintptr_t)p);
    if (!f) return 0;
    *user = f->first;
    *bytes = f->second.bytes;
    return 1;
}

extern "C" void cuda_emu_check_device(const void *p, size_t bytes, const char *what) {
    if (bytes && !cuda_emu_is_device(p, bytes))
        emu_die("%s: %zu bytes at %p are not inside one device allocation", what, bytes, p);
}

// The user pointer is 16-byte aligned (the widest vector access of the kernels; cudaMalloc gives 256) and the
// allocation's 16-byte-rounded end touches the guard page: a kernel that runs past the end by more than the
// rounding faults at once.
#define EMU_ALLOC_ALIGN 16

cudaError_t cudaMalloc(void **p, size_t bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE), rb = (bytes + EMU_ALLOC_ALIGN - 1) / EMU_ALLOC_ALIGN * EMU_ALLOC_ALIGN;
    if (rb == 0) rb = EMU_ALLOC_ALIGN;
    if (g_allocated + rb > emu_total_bytes()) return cudaErrorMemoryAllocation;
    size_t data = (rb + page - 1) / page * page, len = data + page;
    char *m = (char *)mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return cudaErrorMemoryAllocation;
    mprotect(m + data, page, PROT_NONE);
    char *user = m + data - rb;
    memset(user, 0xff, rb);
    g_allocs[(uintptr_t)user] = EmuAlloc{m, len, bytes ? bytes : 1, bytes, rb};
    cuda_emu_race_alloc(user, rb);
    g_allocated += rb;
    S.alloc_gen++;
    if (g_n_allocs++ == 0) atexit(write_peak);
    g_live += bytes;
    if (g_live > g_peak) g_peak = g_live;
    *p = user;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end()) emu_die("cudaFree(%p): not a pointer cudaMalloc returned", p);
    g_allocated -= it->second.charged;
    g_live -= it->second.requested;
    munmap(it->second.map, it->second.map_len);
    g_allocs.erase(it);
    S.alloc_gen++;
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
    (void)s;
    if (bytes == 0) return cudaSuccess;
    if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice)
        cuda_emu_check_device(src, bytes, "cudaMemcpy source");
    if (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice)
        cuda_emu_check_device(dst, bytes, "cudaMemcpy destination");
    if (kind == cudaMemcpyHostToDevice && cuda_emu_is_device(src, bytes))
        emu_die("cudaMemcpy host-to-device from a device pointer %p", src);
    if (kind == cudaMemcpyDeviceToHost && cuda_emu_is_device(dst, bytes))
        emu_die("cudaMemcpy device-to-host into a device pointer %p", dst);
    memmove(dst, src, bytes);
    if (cuda_emu_is_device(dst, bytes)) cuda_emu_race_host_write(dst, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    return cudaMemcpyAsync(dst, src, bytes, kind, 0);
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s) {
    (void)s;
    cuda_emu_check_device(p, bytes, "cudaMemset");
    memset(p, v, bytes);
    cuda_emu_race_host_write(p, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemset(void *p, int v, size_t bytes) { return cudaMemsetAsync(p, v, bytes, 0); }

// ------------------------------------------------------------------------------------------- device, streams

static int g_device = 0;

// ACTLORA_CUDA_EMU_DEVICES: how many devices the node has (default 1; every process emulates its own).
// ACTLORA_CUDA_EMU_VISIBLE: the comma-separated physical devices this process sees, in order (as
// CUDA_VISIBLE_DEVICES with indices; default all of them): per-rank views, as srun --gpus-per-task gives.
static int emu_node_devices(void) {
    const char *s = getenv("ACTLORA_CUDA_EMU_DEVICES");
    int n = s && *s ? atoi(s) : 1;
    if (n < 0 || n > 64) emu_die("ACTLORA_CUDA_EMU_DEVICES=%s: expected 0..64", s);
    return n;
}

// visible device i -> physical device (*phys)[i]; returns how many are visible
static int emu_visible(int phys[64]) {
    int node = emu_node_devices(), n = 0;
    const char *s = getenv("ACTLORA_CUDA_EMU_VISIBLE");
    if (!s) {
        for (int i = 0; i < node; i++) phys[n++] = i;
        return n;
    }
    for (const char *p = s; *p && n < 64;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v >= node || (*end && *end != ','))
            emu_die("ACTLORA_CUDA_EMU_VISIBLE=%s: expected comma-separated devices in 0..%d", s, node - 1);
        phys[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return n;
}

static int emu_devices(void) {
    int phys[64];
    return emu_visible(phys);
}

cudaError_t cudaGetDeviceCount(int *n) {
    *n = emu_devices();
    return *n ? cudaSuccess : cudaErrorNoDevice;
}
cudaError_t cudaSetDevice(int device) {
    if (device < 0 || device >= emu_devices()) return cudaErrorInvalidDevice;
    g_device = device;
    return cudaSuccess;
}
// The UUID of visible device `device`: e3 7a 00 <physical index> "actlora-emu" (uuid e37a00NN in the program's notes)
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device) {
    int phys[64], n = emu_visible(phys);
    if (device < 0 || device >= n) return cudaErrorInvalidDevice;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "actlora CUDA emulator, device %d", phys[device]);
    const unsigned char u[16] = {0xe3, 0x7a, 0x00, (unsigned char)phys[device], 'a', 'c', 't', 'l', 'o', 'r', 'a', '-', 'e', 'm', 'u', 0};
    memcpy(p->uuid.bytes, u, 16);
    p->multiProcessorCount = 132;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *device) {
    *device = g_device;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr attr, int device) {
    if (device < 0 || device >= emu_devices()) return cudaErrorInvalidDevice;
    if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
    *v = 132;  // an H100 / H200
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    size_t t = emu_total_bytes();
    *total_bytes = t;
    *free_bytes = g_allocated < t ? t - g_allocated : 0;
    return cudaSuccess;
}

struct CudaEmuStream {
    int stalled;  // work queued that never completes (cuda_emu_stream_stall): an NCCL kernel whose peer is gone
};
// nccl_emu.cpp's fault: the stream's last operation never completes
extern "C" void cuda_emu_stream_stall(cudaStream_t s) {
    if (s) ((CudaEmuStream *)s)->stalled = 1;
}
cudaError_t cudaStreamQuery(cudaStream_t s) { return s && ((CudaEmuStream *)s)->stalled ? cudaErrorNotReady : cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    (void)flags;
    *s = (cudaStream_t)calloc(1, sizeof(CudaEmuStream));
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    free(s);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (s && ((CudaEmuStream *)s)->stalled)
        emu_die("cudaStreamSynchronize on a stream whose work never completes (an NCCL operation whose peer failed, "
                "ACTLORA_CUDA_EMU_NCCL_ERROR_AT): on a device this call would wait forever");
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaGetLastError(void) {
    cudaError_t e = g_last_error;
    g_last_error = cudaSuccess;
    return e;
}
const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorMemoryAllocation: return "out of memory (emulated device)";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorNotReady: return "device not ready";
    }
    return "unknown error";
}
const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    }
    return "cudaErrorUnknown";
}
