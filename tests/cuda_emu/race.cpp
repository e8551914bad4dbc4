// race.cpp: the CUDA emulator's race checker (docs/emulator.md "Races").
//
// In the instrumented build (CMake: actlora_cuda_emu_race) the kernels' C++ is compiled with GCC's
// -fsanitize=thread, which calls __tsan_readN / __tsan_writeN before every memory access the code makes. This
// file defines those functions in place of ThreadSanitizer's runtime (which is not linked): while a kernel
// runs, every access to device memory or shared memory is checked against the last write and the reads since
// it, under the CUDA happens-before of emu_sched.h. An access that is not ordered against a conflicting one
// (one of them a write) is a data race: two threads of one block with no __syncthreads between them, two lanes
// with no __syncwarp (a shuffle does not order memory), or two blocks of one launch. A read of shared memory
// that no thread of the block wrote is reported too (shared memory starts undefined in every block), and so
// is a read of device memory that nothing wrote since cudaMalloc (kernels mark what they write; the host-side
// calls report theirs through cuda_emu_race_host_write). At the end of the launch the emulator prints each
// distinct race — both accesses with their source lines — and stops the program.
//
// Shadow memory: one record per 2 bytes (the narrowest store of the kernels is a bf16), in 4 MiB chunks mapped
// on first use. Atomics are performed and not checked. The fibers' stacks (locals) and host memory (the
// launch's captured arguments, the emulator's own state) are not checked.
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <map>

#include "cuda_runtime.h"
#include "emu_sched.h"

// ------------------------------------------------------------------------------------------- shadow memory

typedef struct {
    uint32_t w_tok, w_blk, w_clk;  // last write: launch / block serial, block, clock at the access
    uint32_t r_tok, r_blk;         // reads since: serial, block of the readers (or MULTI)
    uint32_t r_clk, r_oclk;        // clock of the latest reader's latest read; latest read of the others
    uint16_t w_t, r_t;             // writer; latest reader
    uint16_t r_warp, flags;        // warp of the readers (or MULTI); F_OTHER, F_INIT
    int32_t w_pc, r_pc, r_opc;     // code addresses (from the anchor) of the write, r_t's read, another's read
} Rec;

#define F_OTHER 1u  // others than r_t read since the last write
#define F_INIT 2u   // written since cudaMalloc (by a kernel; host writes are in g_host, below)
#define MULTI32 0xffffffffu
#define MULTI16 0xffffu
#define GRAN_SHIFT 1
#define CHUNK_SHIFT 22
#define L1_ENTRIES ((size_t)1 << (47 - CHUNK_SHIFT))
#define CHUNK_RECS ((size_t)1 << (CHUNK_SHIFT - GRAN_SHIFT))

static Rec **g_l1;

static void race_die(const char *what) {
    fprintf(stderr, "cuda_emu: race checker: %s\n", what);
    abort();
}

static void *map_zero(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) race_die("cannot map shadow memory");
    return p;
}

static Rec *shadow(uintptr_t a) {
    size_t i = a >> CHUNK_SHIFT;
    if (i >= L1_ENTRIES) race_die("an address above 2^47");
    if (!g_l1) g_l1 = (Rec **)map_zero(L1_ENTRIES * sizeof(Rec *));
    if (!g_l1[i]) g_l1[i] = (Rec *)map_zero(CHUNK_RECS * sizeof(Rec));
    return g_l1[i] + ((a >> GRAN_SHIFT) & (CHUNK_RECS - 1));
}

// ------------------------------------------------------------------------------------------- address kinds

// Static __shared__ arrays are static locals (cuda_emu.h), zero-initialised, so in .bss: there a kernel
// touches nothing else but the coordinates the scheduler sets (threadIdx, ...; host globals). (A section
// attribute would not do: GCC ignores it for the static locals of template kernels.)
extern char __bss_start[], _end[];

static inline int in_var(uintptr_t a, const void *var, size_t bytes) { return a - (uintptr_t)var < bytes; }

static inline int is_shared(uintptr_t a) {
    const EmuSched &S = cuda_emu_sched;
    if (a - (uintptr_t)S.dyn < S.dyn_bytes) return 1;
    if (a - (uintptr_t)__bss_start >= (uintptr_t)(_end - __bss_start)) return 0;
    return !in_var(a, &threadIdx, sizeof threadIdx) && !in_var(a, &blockIdx, sizeof blockIdx) &&
           !in_var(a, &blockDim, sizeof blockDim) && !in_var(a, &gridDim, sizeof gridDim);
}

// Whether the page holding a is device memory (a device allocation's mapping is its own pages), cached
typedef struct { uintptr_t page; uint32_t gen; int device; } PageEnt;
#define PAGE_CACHE 4096
static PageEnt g_pages[PAGE_CACHE];

static int is_device(uintptr_t a) {
    uintptr_t page = a >> 12;
    PageEnt *e = &g_pages[page & (PAGE_CACHE - 1)];
    if (e->page == page + 1 && e->gen == cuda_emu_sched.alloc_gen) return e->device;
    uintptr_t user;
    size_t bytes;
    e->page = page + 1;
    e->gen = cuda_emu_sched.alloc_gen;
    e->device = cuda_emu_device_range((const void *)a, &user, &bytes);
    return e->device;
}

// ------------------------------------------------------------------------------------------- reports

enum { RAW = 0, WAR, WAW, UNINIT, UNINIT_DEV };

typedef struct {
    int kind, shared;
    int32_t pc, prev_pc;
    uint32_t blk, prev_blk;
    uint16_t t, prev_t;
    uintptr_t addr;
    unsigned bytes;
} Race;

#define MAX_RACES 12
static Race g_races[MAX_RACES];
static int g_n_races = 0;     // distinct, kept
static long g_n_conflicts = 0;  // all, this launch

static void race_anchor(void) {}
static int32_t pc_off(void *pc) { return (int32_t)((intptr_t)pc - (intptr_t)&race_anchor); }

static void record(int kind, int shared, void *pc, int32_t prev_pc, uint32_t prev_blk, uint16_t prev_t, uintptr_t a,
                   unsigned n) {
    g_n_conflicts++;
    int32_t off = pc_off(pc);
    for (int i = 0; i < g_n_races; i++)
        if (g_races[i].kind == kind && g_races[i].pc == off && g_races[i].prev_pc == prev_pc) return;
    if (g_n_races == MAX_RACES) return;
    g_races[g_n_races++] = Race{kind, shared, off, prev_pc, cuda_emu_sched.block_lin, prev_blk,
                                (uint16_t)cuda_emu_sched.cur, prev_t, a, n};
}

// ------------------------------------------------------------------------------------------- host writes

// What host-side calls wrote since each cudaMalloc (cudaMemcpy, cudaMemset, cuBLAS's C, NCCL's buffer), as
// disjoint [start, end) ranges; a kernel's first read of a granule looks here (and marks the record F_INIT)
static std::map<uintptr_t, uintptr_t> g_host;

static int host_written(uintptr_t a) {
    auto it = g_host.upper_bound(a);
    if (it == g_host.begin()) return 0;
    --it;
    return a < it->second;
}

static void host_forget(uintptr_t lo, uintptr_t hi) {  // [lo, hi) is no longer written
    auto it = g_host.upper_bound(lo);
    if (it != g_host.begin() && std::prev(it)->second > lo) --it;
    while (it != g_host.end() && it->first < hi) {
        uintptr_t s = it->first, e = it->second;
        it = g_host.erase(it);
        if (s < lo) g_host[s] = lo;
        if (e > hi) g_host[hi] = e;
    }
}

extern "C" void cuda_emu_race_host_write(const void *p, size_t bytes) {
    uintptr_t lo = (uintptr_t)p, hi = lo + bytes;
    if (!bytes) return;
    host_forget(lo, hi);
    auto next = g_host.lower_bound(hi);  // merge with touching neighbours
    if (next != g_host.end() && next->first == hi) {
        hi = next->second;
        g_host.erase(next);
    }
    auto it = g_host.lower_bound(lo);
    if (it != g_host.begin() && std::prev(it)->second == lo) {
        --it;
        it->second = hi;
        return;
    }
    g_host[lo] = hi;
}

// A fresh allocation: nothing in it is written, and nothing of what was there before counts.
extern "C" void cuda_emu_race_alloc(const void *p, size_t bytes) {
    uintptr_t lo = (uintptr_t)p, hi = lo + bytes;
    host_forget(lo, hi);
    if (!g_l1) return;
    const size_t page = 4096;
    for (uintptr_t a = lo >> GRAN_SHIFT << GRAN_SHIFT; a < hi;) {  // one chunk at a time
        size_t i = a >> CHUNK_SHIFT;
        uintptr_t chunk_end = (uintptr_t)(i + 1) << CHUNK_SHIFT, e = hi < chunk_end ? hi : chunk_end;
        if (i < L1_ENTRIES && g_l1[i]) {
            char *r0 = (char *)(g_l1[i] + ((a >> GRAN_SHIFT) & (CHUNK_RECS - 1)));
            char *r1 = (char *)(g_l1[i] + (((e - 1) >> GRAN_SHIFT) & (CHUNK_RECS - 1)) + 1);
            char *p0 = (char *)(((uintptr_t)r0 + page - 1) / page * page), *p1 = (char *)((uintptr_t)r1 / page * page);
            if (p0 < p1) {  // whole pages go back to the kernel (zero on the next touch), the edges are cleared
                memset(r0, 0, (size_t)(p0 - r0));
                madvise(p0, (size_t)(p1 - p0), MADV_DONTNEED);
                memset(p1, 0, (size_t)(r1 - p1));
            } else
                memset(r0, 0, (size_t)(r1 - r0));
        }
        a = e;
    }
}

// ------------------------------------------------------------------------------------------- the check

static inline void check(uintptr_t a, unsigned n, int write, uint32_t tok, int shared, void *pc) {
    const EmuSched &S = cuda_emu_sched;
    const uint32_t blk = S.block_lin, C = S.clock;
    const uint16_t t = (uint16_t)S.cur, w = (uint16_t)(S.cur >> 5);
    const uint32_t be = S.block_epoch[S.cur], we = S.warp_epoch[S.cur];
    for (uintptr_t g = a >> GRAN_SHIFT, end = (a + n - 1) >> GRAN_SHIFT; g <= end; g++) {
        Rec *r = shadow(g << GRAN_SHIFT);
        int w_live = r->w_tok == tok;
        int w_ordered = !w_live || (r->w_blk == blk && (r->w_t == t || be > r->w_clk ||
                                                         ((r->w_t >> 5) == w && we > r->w_clk)));
        if (!write) {
            if (!w_ordered)
                record(RAW, shared, pc, r->w_pc, r->w_blk, r->w_t, a, n);
            else if (shared && !w_live)
                record(UNINIT, shared, pc, 0, 0, 0, a, n);
            else if (!shared && !(r->flags & F_INIT)) {
                if (host_written(g << GRAN_SHIFT)) r->flags |= F_INIT;
                else record(UNINIT_DEV, shared, pc, 0, 0, 0, a, n);
            }
            uint32_t last = (r->flags & F_OTHER) && r->r_oclk > r->r_clk ? r->r_oclk : r->r_clk;
            if (r->r_tok != tok || (r->r_blk == blk && be > last)) {  // none yet, or all before a barrier
                r->r_tok = tok;
                r->r_blk = blk;
                r->r_warp = w;
                r->flags &= (uint16_t)~F_OTHER;
            } else {
                if (r->r_blk != blk) r->r_blk = MULTI32;
                if (r->r_warp != w) r->r_warp = MULTI16;
                if (r->r_t != t) {  // the latest reader becomes one of the others
                    r->r_oclk = (r->flags & F_OTHER) && r->r_oclk > r->r_clk ? r->r_oclk : r->r_clk;
                    r->r_opc = r->r_pc;
                    r->flags |= F_OTHER;
                }
            }
            r->r_t = t;
            r->r_clk = C;
            r->r_pc = pc_off(pc);
        } else {
            if (r->r_tok == tok) {  // every read since the last write, by another thread, must be ordered before
                int latest_ok = r->r_blk == blk && (r->r_t == t || be > r->r_clk ||
                                                    ((r->r_t >> 5) == w && we > r->r_clk));
                int others_ok = !(r->flags & F_OTHER) || (r->r_blk == blk && (be > r->r_oclk ||
                                                                    (r->r_warp == w && we > r->r_oclk)));
                if (!latest_ok && r->r_blk != MULTI32)
                    record(WAR, shared, pc, r->r_pc, r->r_blk, r->r_t, a, n);
                else if (!latest_ok || !others_ok)
                    record(WAR, shared, pc, (r->flags & F_OTHER) ? r->r_opc : r->r_pc, r->r_blk, MULTI16, a, n);
            }
            if (!w_ordered) record(WAW, shared, pc, r->w_pc, r->w_blk, r->w_t, a, n);
            r->w_tok = tok;
            r->w_blk = blk;
            r->w_clk = C;
            r->w_t = t;
            r->w_pc = pc_off(pc);
            r->flags |= F_INIT;
            r->r_tok = 0;
        }
    }
}

static inline void on_access(const void *p, unsigned n, int write, void *pc) {
    const EmuSched &S = cuda_emu_sched;
    if (!S.in_kernel) return;
    uintptr_t a = (uintptr_t)p;
    if (a - (uintptr_t)S.stacks < S.stacks_bytes) return;  // a local of the running thread
    if (is_shared(a))
        check(a, n, write, S.block_tok, 1, pc);
    else if (is_device(a))
        check(a, n, write, S.launch_tok, 0, pc);
}

// ------------------------------------------------------------------------------------------- the report

// "file:line" of a code address, by addr2line (the innermost inlined call's: the kernel's source line); the raw
// address when that fails
static void describe_pc(int32_t off, char *buf, size_t n) {
    void *pc = (char *)&race_anchor + off - 1;  // inside the call instruction
    Dl_info di;
    if (!dladdr(pc, &di) || !di.dli_fname) {
        snprintf(buf, n, "pc %p", pc);
        return;
    }
    uintptr_t rel = (uintptr_t)pc;
    const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)di.dli_fbase;
    if (eh && eh->e_type == ET_DYN) rel -= (uintptr_t)di.dli_fbase;
    char cmd[4200], loc[1024] = "";
    snprintf(cmd, sizeof cmd, "addr2line -i -e '%s' 0x%lx 2>/dev/null", di.dli_fname, (unsigned long)rel);
    FILE *f = popen(cmd, "r");
    if (f) {
        if (!fgets(loc, sizeof loc, f)) loc[0] = 0;
        pclose(f);
    }
    loc[strcspn(loc, "\n")] = 0;
    char *disc = strstr(loc, " (discriminator");
    if (disc) *disc = 0;
    if (!*loc || loc[0] == '?') {
        snprintf(buf, n, "pc %p in %s", pc, di.dli_fname);
        return;
    }
    const char *base = strrchr(loc, '/');
    snprintf(buf, n, "%s", base ? base + 1 : loc);
}

static void describe_thread(uint32_t blk, uint16_t t, char *buf, size_t n) {
    unsigned gx = gridDim.x, gy = gridDim.y, bx = blockDim.x, by = blockDim.y;
    snprintf(buf, n, "block (%u,%u,%u) thread (%u,%u,%u)", blk % gx, blk / gx % gy, blk / (gx * gy), t % bx,
             t / bx % by, t / (bx * by));
}

static void describe_addr(const Race *r, char *buf, size_t n) {
    uintptr_t user;
    size_t bytes;
    if (r->shared)
        snprintf(buf, n, "shared memory");
    else if (cuda_emu_device_range((const void *)r->addr, &user, &bytes))
        snprintf(buf, n, "element +%zu bytes of a %zu-byte device allocation", (size_t)(r->addr - user), bytes);
    else
        snprintf(buf, n, "device memory at %p", (void *)r->addr);
}

// Prints the races of the running launch found so far; returns how many conflicting accesses there were.
static long print_races(void) {
    if (!g_n_conflicts) return 0;
    const EmuSched &S = cuda_emu_sched;
    int races = 0;
    for (int i = 0; i < g_n_races; i++) races += g_races[i].kind != UNINIT && g_races[i].kind != UNINIT_DEV;
    fprintf(stderr, "cuda_emu: %s in kernel %s launched at %s:%d (%ld conflicting accesses, %d distinct):\n",
            races ? "data race" : "read of unwritten memory", S.kernel, S.file, S.line, g_n_conflicts, g_n_races);
    static const char *verb[] = {"reads", "writes", "writes", "reads", "reads"};
    static const char *prev[] = {"wrote", "read", "wrote", "", ""};
    for (int i = 0; i < g_n_races; i++) {
        const Race *r = &g_races[i];
        char who[96], whom[96], at[1200], prev_at[1200], addr[128];
        describe_thread(r->blk, r->t, who, sizeof who);
        describe_pc(r->pc, at, sizeof at);
        describe_addr(r, addr, sizeof addr);
        fprintf(stderr, "  %s %s %u bytes (%s) at %s\n", who, verb[r->kind], r->bytes, addr, at);
        if (r->kind == UNINIT) {
            fprintf(stderr, "    which no thread of its block wrote: shared memory starts undefined in every block\n");
            continue;
        }
        if (r->kind == UNINIT_DEV) {
            fprintf(stderr, "    which nothing has written since cudaMalloc (no kernel, cudaMemcpy, cudaMemset, cuBLAS or NCCL "
                            "call)\n");
            continue;
        }
        describe_pc(r->prev_pc, prev_at, sizeof prev_at);
        if (r->prev_blk == MULTI32)
            fprintf(stderr, "    which threads of other blocks of this launch read at %s (and elsewhere): blocks are not "
                    "ordered\n", prev_at);
        else if (r->prev_blk != r->blk) {
            describe_thread(r->prev_blk, r->prev_t, whom, sizeof whom);
            fprintf(stderr, "    which %s %s at %s: blocks of one launch are not ordered\n", whom, prev[r->kind],
                    prev_at);
        } else if (r->prev_t == MULTI16)
            fprintf(stderr, "    which other threads of its block %s at %s (and elsewhere), with no __syncthreads or "
                    "__syncwarp between\n", prev[r->kind], prev_at);
        else {
            describe_thread(r->prev_blk, r->prev_t, whom, sizeof whom);
            fprintf(stderr, "    which %s %s at %s, with no %s between\n", whom, prev[r->kind], prev_at,
                    r->prev_t >> 5 == r->t >> 5 ? "__syncwarp or __syncthreads" : "__syncthreads");
        }
    }
    fflush(stderr);
    return g_n_conflicts;
}

extern "C" void cuda_emu_race_launch_end(void) {
    if (print_races()) abort();
}

// A kernel crashed (emu_sched.h): a race it had run into is the likely cause (an index read before another
// thread wrote it), so the races found so far go out before the crash's message.
extern "C" void cuda_emu_race_on_crash(void) {
    if (cuda_emu_sched.in_kernel && g_n_conflicts) {
        fprintf(stderr, "cuda_emu: the kernel below crashed after these races:\n");
        print_races();
    }
}

// ------------------------------------------------------------------------------------------- the hooks

// The calls GCC's instrumentation makes for the kernels' loads and stores, and for the atomics cuda_emu.h uses
// (__atomic_compare_exchange_n, _fetch_add, _load_n, _exchange_n); a new kind fails to link, naming the call.
extern "C" {
void __tsan_init(void) {}

#define RACE_HOOKS(n)                                                                                    \
    void __tsan_read##n(void *p) { on_access(p, n, 0, __builtin_return_address(0)); }                 \
    void __tsan_write##n(void *p) { on_access(p, n, 1, __builtin_return_address(0)); }                \
    void __tsan_unaligned_read##n(void *p) { on_access(p, n, 0, __builtin_return_address(0)); }       \
    void __tsan_unaligned_write##n(void *p) { on_access(p, n, 1, __builtin_return_address(0)); }
RACE_HOOKS(1)
RACE_HOOKS(2)
RACE_HOOKS(4)
RACE_HOOKS(8)
RACE_HOOKS(16)
#undef RACE_HOOKS
void __tsan_read_range(void *p, unsigned long n) {
    if (n) on_access(p, (unsigned)n, 0, __builtin_return_address(0));
}
void __tsan_write_range(void *p, unsigned long n) {
    if (n) on_access(p, (unsigned)n, 1, __builtin_return_address(0));
}

// atomics: performed, not checked
int __tsan_atomic32_load(const volatile int *a, int mo) { (void)mo; return __atomic_load_n(a, __ATOMIC_RELAXED); }
int __tsan_atomic32_exchange(volatile int *a, int v, int mo) {
    (void)mo;
    return __atomic_exchange_n(a, v, __ATOMIC_RELAXED);
}
int __tsan_atomic32_fetch_add(volatile int *a, int v, int mo) {
    (void)mo;
    return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
int __tsan_atomic32_compare_exchange_strong(volatile int *a, int *c, int v, int mo, int fmo) {
    (void)mo, (void)fmo;
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}
}
