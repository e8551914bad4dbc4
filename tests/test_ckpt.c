// test_ckpt.c: checkpoint files: bit-exact round trip, rotation and `latest`, and the faults a
// preempted job meets: truncated and corrupted files, a missing or wrong `latest`, an unwritable
// directory, a full disk (RLIMIT_FSIZE), kill -9 in the middle of a write, a newer format.
// Usage: test_ckpt <source dir> [<build dir>] (temporary directories go under the build dir or /tmp).
#define _GNU_SOURCE  // nftw
#include "actlora/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <hdf5.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "actlora/common.h"
#include "test_util.h"

// ---------------------------------------------------------------------------- helpers

static uint64_t mix(uint64_t x) {  // splitmix64 finalizer
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void fill_floats(float *p, size_t n, uint64_t key) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)mix(key * 1000003ULL + i);
        u = (u & 0x807fffffu) | ((uint32_t)(100 + u % 50) << 23);  // finite, varied exponents
        memcpy(&p[i], &u, 4);
    }
    static const uint32_t special[] = {0x7fc12345u, 0x80000000u, 0x7f800000u, 0x00000001u, 0xff800000u};
    for (size_t k = 0; k < 5 && k < n; k++)
        memcpy(&p[(k * 7919) % n], &special[k], 4);  // NaN payload, -0, inf, denormal
}

// 3 LoRA tensors + the head, laid out head-first (offset order differs from list order).
static void make_state(CkptState *s, int world, int micro, int64_t step, int scale, uint64_t key) {
    memset(s, 0, sizeof *s);
    s->config_text = xstrdup("model.path = \"/models/tiny\"\ntrain.seed = 7\nlora.r = 4\n");
    s->config_hash = 0x0123456789abcdefULL ^ key;
    s->model_fingerprint = 0xfedcba9876543210ULL;
    s->world = world;
    s->num_layers = 4;
    s->scores = xmalloc(4 * sizeof(double), "scores");
    for (int l = 0; l < 4; l++) s->scores[l] = 0.1 * l + 1e-17 * (double)key;
    s->n_selected = 2;
    s->selected = xmalloc(2 * sizeof(int), "selected");
    s->selected[0] = 1;
    s->selected[1] = 3;
    s->n_tensors = 4;
    const char *names[4] = {"base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight",
                            "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight",
                            "base_model.model.model.layers.3.mlp.down_proj.lora_A.weight", "score.weight"};
    int64_t shapes[4][2] = {{4, 8 * scale}, {8 * scale, 4}, {4, 12 * scale}, {2, 8 * scale}};
    s->names = xmalloc(4 * sizeof(char *), "names");
    s->shapes = xmalloc(4 * sizeof *s->shapes, "shapes");
    s->offsets = xmalloc(4 * sizeof(int64_t), "offsets");
    int64_t off = shapes[3][0] * shapes[3][1];
    s->offsets[3] = 0;
    for (int i = 0; i < 4; i++) {
        s->names[i] = xstrdup(names[i]);
        s->shapes[i][0] = shapes[i][0];
        s->shapes[i][1] = shapes[i][1];
        if (i < 3) {
            s->offsets[i] = off;
            off += shapes[i][0] * shapes[i][1];
        }
    }
    s->numel = (size_t)off;
    s->params = xmalloc(s->numel * sizeof(float), "params");
    s->adam_m = xmalloc(s->numel * sizeof(float), "m");
    s->adam_v = xmalloc(s->numel * sizeof(float), "v");
    fill_floats(s->params, s->numel, key + 1);
    fill_floats(s->adam_m, s->numel, key + 2);
    fill_floats(s->adam_v, s->numel, key + 3);
    s->micro = micro;
    if (micro > 0) {
        s->grads = xmalloc(s->numel * (size_t)world * sizeof(float), "grads");
        fill_floats(s->grads, s->numel * (size_t)world, key + 4);
        s->loss_partial = xmalloc((size_t)world * sizeof(double), "loss");
        for (int w = 0; w < world; w++) s->loss_partial[w] = 0.6931 + w + 1e-9 * (double)key;
    }
    s->step = step;
    s->epoch = 2;
    s->cursor = 1234567890123LL;
    s->seed = 0xffffffffffffffffULL;  // all bits: unsigned round trip
    s->tokens = xmalloc((size_t)world * sizeof(int64_t), "tokens");
    for (int w = 0; w < world; w++) s->tokens[w] = 5000000000LL + w;
    for (int p = 0; p < PHASE_COUNT; p++) s->ledger[p] = 1.5 * p + 1.0 / 3.0;
    s->wall_s = 3600.125;
}

// First difference between a and b, or NULL.
static const char *state_diff(const CkptState *a, const CkptState *b) {
    if (strcmp(a->config_text, b->config_text)) return "config_text";
    if (a->config_hash != b->config_hash || a->model_fingerprint != b->model_fingerprint) return "hashes";
    if (a->world != b->world || a->num_layers != b->num_layers || a->n_selected != b->n_selected) return "sizes";
    if (memcmp(a->scores, b->scores, sizeof(double) * (size_t)a->num_layers)) return "scores";
    if (memcmp(a->selected, b->selected, sizeof(int) * (size_t)a->n_selected)) return "selected";
    if (a->n_tensors != b->n_tensors || a->numel != b->numel) return "n_tensors/numel";
    for (int i = 0; i < a->n_tensors; i++)
        if (strcmp(a->names[i], b->names[i])) return "names";
    if (memcmp(a->shapes, b->shapes, sizeof *a->shapes * (size_t)a->n_tensors)) return "shapes";
    if (memcmp(a->offsets, b->offsets, sizeof(int64_t) * (size_t)a->n_tensors)) return "offsets";
    if (memcmp(a->params, b->params, a->numel * 4)) return "params";
    if (memcmp(a->adam_m, b->adam_m, a->numel * 4)) return "adam_m";
    if (memcmp(a->adam_v, b->adam_v, a->numel * 4)) return "adam_v";
    if (a->micro != b->micro || !a->grads != !b->grads || !a->loss_partial != !b->loss_partial)
        return "partial presence";
    if (a->grads && memcmp(a->grads, b->grads, a->numel * 4 * (size_t)a->world)) return "grads";
    if (a->loss_partial && memcmp(a->loss_partial, b->loss_partial, sizeof(double) * (size_t)a->world)) return "loss";
    if (a->step != b->step || a->epoch != b->epoch || a->cursor != b->cursor || a->seed != b->seed) return "position";
    if (memcmp(a->tokens, b->tokens, sizeof(int64_t) * (size_t)a->world)) return "tokens";
    if (memcmp(a->ledger, b->ledger, sizeof a->ledger)) return "ledger";
    if (memcmp(&a->wall_s, &b->wall_s, sizeof a->wall_s)) return "wall_s";
    return NULL;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f) {
    (void)st, (void)flag, (void)f;
    return remove(p);
}

static void rm_rf(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static void mk_dir(char *out, size_t n, const char *base, const char *name) {
    snprintf(out, n, "%s/test_ckpt.%s.XXXXXX", base, name);
    check(mkdtemp(out), "cannot create a temporary directory %s: %s", out, strerror(errno));
}

// Directory entries, sorted, space-separated (ls -A).
static void listing(const char *dir, char *out, size_t n) {
    struct dirent **nl;
    int k = scandir(dir, &nl, NULL, alphasort);
    out[0] = '\0';
    for (int i = 0; i < k; i++) {
        if (strcmp(nl[i]->d_name, ".") && strcmp(nl[i]->d_name, ".."))
            snprintf(out + strlen(out), n - strlen(out), "%s ", nl[i]->d_name);
        free(nl[i]);
    }
    if (k >= 0) free(nl);
}

static char *slurp(const char *path, size_t *len) {
    Error e;
    return file_read_all(path, len, &e);
}

static void put_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    check(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static int flip_byte(const char *path, off_t off) {
    int fd = open(path, O_RDWR);
    unsigned char c;
    int ok = fd >= 0 && pread(fd, &c, 1, off) == 1;
    c ^= 0x5a;
    ok = ok && pwrite(fd, &c, 1, off) == 1;
    if (fd >= 0) close(fd);
    return ok ? 0 : -1;
}

static int read_equals(const char *path, const CkptState *want, Error *e) {
    CkptState got;
    if (ckpt_read(path, &got, e) != 0) return -1;
    const char *d = state_diff(want, &got);
    ckpt_state_free(&got);
    if (d) snprintf(e->msg, sizeof e->msg, "read back differs in %s", d);
    return d ? 1 : 0;
}

// Rewrites the 512-byte seal after an edit made through HDF5 (an independent implementation of
// docs/checkpoint-format.md: FNV-1a over little-endian 64-bit words after the user block, then the length).
static void reseal(const char *path, int version) {
    size_t n;
    unsigned char *d = (unsigned char *)slurp(path, &n);
    check(d && n > 512, "cannot reseal %s", path);
    uint64_t h = FNV64_INIT;
    for (size_t i = 512; i < n; i += 8) {
        uint64_t w = 0;
        for (size_t k = 0; k < 8 && i + k < n; k++) w |= (uint64_t)d[i + k] << (8 * k);
        h = (h ^ w) * 0x100000001b3ULL;
    }
    h = (h ^ (uint64_t)(n - 512)) * 0x100000001b3ULL;
    memset(d, 0, 512);
    snprintf((char *)d, 512, "actlora-checkpoint %d\nbytes %zu\nfnv1a64w %016llx\n", version, n, (unsigned long long)h);
    FILE *f = fopen(path, "r+b");
    check(f && fwrite(d, 1, 512, f) == 512, "cannot reseal %s", path);
    fclose(f);
    free(d);
}

// ---------------------------------------------------------------------------- round trip, rotation

static void test_roundtrip(TestCounts *tc, const char *base) {
    char dir[4096], path[4300], ls[4096], p2[4400];
    mk_dir(dir, sizeof dir, base, "rt");
    Error e = {{0}};
    for (int micro = 1; micro >= 0; micro--) {
        CkptState s, r;
        make_state(&s, 2, micro, 7, 1, 11 + (uint64_t)micro);
        int rc = ckpt_write(dir, &s, 3, path, sizeof path, &e);
        T_CHECK(tc, rc == 0, "write micro %d: %s", micro, e.msg);
        snprintf(p2, sizeof p2, "%s/ckpt-7-%d.h5", dir, micro);
        T_CHECK(tc, strcmp(path, p2) == 0, "path_out %s, expected %s", path, p2);
        rc = ckpt_read(path, &r, &e);
        T_CHECK(tc, rc == 0, "read micro %d: %s", micro, e.msg);
        if (rc == 0) {
            const char *d = state_diff(&s, &r);
            T_CHECK(tc, !d, "micro %d: round trip differs in %s", micro, d);
            T_CHECK(tc, micro > 0 || (!r.grads && !r.loss_partial), "micro 0 read back partial buffers");
        }
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        T_CHECK(tc, (H5Lexists(f, "partial", H5P_DEFAULT) > 0) == (micro > 0),
                "micro %d: /partial present iff micro > 0", micro);
        H5Fclose(f);
        ckpt_state_free(&s);
        ckpt_state_free(&r);
    }
    char *latest = slurp(strcat(strcpy(p2, dir), "/latest"), NULL);
    T_CHECK(tc, latest && strcmp(latest, "ckpt-7-0.h5\n") == 0, "latest holds '%s'", latest ? latest : "(none)");
    free(latest);
    listing(dir, ls, sizeof ls);
    T_CHECK(tc, strcmp(ls, "ckpt-7-0.h5 ckpt-7-1.h5 latest ") == 0, "directory holds: %s", ls);

    // zero-size datasets: no selected layers, empty configuration text, no tensors
    CkptState s, r;
    make_state(&s, 1, 0, 8, 1, 3);
    s.n_selected = 0;
    s.config_text[0] = '\0';
    int rc = ckpt_write(dir, &s, 3, path, sizeof path, &e);
    T_CHECK(tc, rc == 0, "write with empty datasets: %s", e.msg);
    rc = ckpt_read(path, &r, &e);
    T_CHECK(tc, rc == 0 && !state_diff(&s, &r), "empty datasets round trip: %s", rc ? e.msg : state_diff(&s, &r));
    ckpt_state_free(&r);
    int nt = s.n_tensors;
    s.n_tensors = 0;
    s.numel = 0;
    s.step = 9;
    rc = ckpt_write(dir, &s, 3, path, sizeof path, &e);
    T_CHECK(tc, rc == 0, "write with no tensors: %s", e.msg);
    rc = ckpt_read(path, &r, &e);
    T_CHECK(tc, rc == 0 && r.n_tensors == 0 && r.numel == 0, "no tensors round trip: %s", rc ? e.msg : "counts");
    ckpt_state_free(&r);
    s.n_tensors = nt;

    // an inconsistent state is refused before anything is written
    s.step = 10;
    s.offsets[1] += 1;
    listing(dir, ls, sizeof ls);
    rc = ckpt_write(dir, &s, 3, path, sizeof path, &e);
    T_CHECK(tc, rc == -1 && strstr(e.msg, "offset"), "overlapping offsets accepted: %s", e.msg);
    listing(dir, p2, sizeof p2);
    T_CHECK(tc, strcmp(ls, p2) == 0, "a refused write changed the directory");
    s.offsets[1] -= 1;
    ckpt_state_free(&s);
    rm_rf(dir);
}

static void test_rotation(TestCounts *tc, const char *base) {
    char dir[4096], path[4300], ls[4096];
    mk_dir(dir, sizeof dir, base, "rot");
    Error e = {{0}};
    CkptState s;
    make_state(&s, 2, 0, 0, 1, 5);
    for (int step = 1; step <= 6; step++) {
        s.step = step;
        T_CHECK(tc, ckpt_write(dir, &s, 3, path, sizeof path, &e) == 0, "write step %d: %s", step, e.msg);
    }
    listing(dir, ls, sizeof ls);
    T_CHECK(tc, strcmp(ls, "ckpt-4-0.h5 ckpt-5-0.h5 ckpt-6-0.h5 latest ") == 0, "keep 3 left: %s", ls);
    char lp[4400];
    snprintf(lp, sizeof lp, "%s/latest", dir);
    char *latest = slurp(lp, NULL);
    T_CHECK(tc, latest && strcmp(latest, "ckpt-6-0.h5\n") == 0, "latest holds '%s'", latest ? latest : "(none)");
    free(latest);
    // (step, micro) order, numerically: 6-2 after 6-1 after 6-0; 10 after 9
    ckpt_state_free(&s);
    make_state(&s, 2, 1, 6, 1, 5);
    T_CHECK(tc, ckpt_write(dir, &s, 2, path, sizeof path, &e) == 0, "write 6-1: %s", e.msg);
    s.micro = 2;
    T_CHECK(tc, ckpt_write(dir, &s, 2, path, sizeof path, &e) == 0, "write 6-2: %s", e.msg);
    listing(dir, ls, sizeof ls);
    T_CHECK(tc, strcmp(ls, "ckpt-6-1.h5 ckpt-6-2.h5 latest ") == 0, "keep 2 by (step, micro) left: %s", ls);
    s.micro = 0;
    for (int step = 9; step <= 10; step++) {
        s.step = step;
        T_CHECK(tc, ckpt_write(dir, &s, 2, path, sizeof path, &e) == 0, "write step %d: %s", step, e.msg);
    }
    listing(dir, ls, sizeof ls);
    T_CHECK(tc, strcmp(ls, "ckpt-10-0.h5 ckpt-9-0.h5 latest ") == 0, "numeric order: %s", ls);
    // resumed from an older checkpoint: the newer files of the abandoned run are left alone and do not
    // count against keep; `latest` names the new one
    s.step = 3;
    T_CHECK(tc, ckpt_write(dir, &s, 1, path, sizeof path, &e) == 0, "write step 3: %s", e.msg);
    listing(dir, ls, sizeof ls);
    T_CHECK(tc, strcmp(ls, "ckpt-10-0.h5 ckpt-3-0.h5 ckpt-9-0.h5 latest ") == 0, "after an older write: %s", ls);
    char found[4300], warn[2048];
    T_CHECK(tc, ckpt_find_latest(dir, found, sizeof found, warn, sizeof warn, &e) == 1 && strcmp(found, path) == 0,
            "latest should name %s, found %s", path, found);
    ckpt_state_free(&s);
    rm_rf(dir);
}

// ---------------------------------------------------------------------------- faults

static void write_steps(TestCounts *tc, const char *dir, int from, int to, int keep, CkptState *s) {
    Error e = {{0}};
    for (int step = from; step <= to; step++) {
        s->step = step;
        T_CHECK(tc, ckpt_write(dir, s, keep, NULL, 0, &e) == 0, "write step %d: %s", step, e.msg);
    }
}

// (a) truncated newest file -> fall back to the previous one with a warning naming the file.
static void test_truncated(TestCounts *tc, const char *base) {
    char dir[4096], path[4300], found[4300], warn[4096];
    mk_dir(dir, sizeof dir, base, "trunc");
    CkptState s;
    make_state(&s, 2, 1, 0, 4, 21);
    write_steps(tc, dir, 1, 2, 5, &s);
    snprintf(path, sizeof path, "%s/ckpt-2-1.h5", dir);
    struct stat st;
    stat(path, &st);
    T_CHECK(tc, truncate(path, st.st_size / 2) == 0, "truncate %s", path);
    Error e = {{0}};
    int rc = ckpt_find_latest(dir, found, sizeof found, warn, sizeof warn, &e);
    T_CHECK(tc, rc == 1 && strstr(found, "/ckpt-1-1.h5"), "truncated newest: found %d %s", rc, found);
    T_CHECK(tc, strstr(warn, "ckpt-2-1.h5") && strstr(warn, "falling back"), "warning: %s", warn);
    printf("  truncated: %s", warn);
    CkptState r;
    T_CHECK(tc, ckpt_read(path, &r, &e) == -1 && strstr(e.msg, "ckpt-2-1.h5"), "read of a truncated file: %s", e.msg);
    // every truncation point fails (or, never, reads back identical)
    for (int k = 1; k < 16; k++) {
        s.step = 1;
        snprintf(path, sizeof path, "%s/ckpt-1-1.h5", dir);
        char cp[4400];
        snprintf(cp, sizeof cp, "%s/cut.h5", dir);
        size_t len;
        char *buf = slurp(path, &len);
        FILE *f = fopen(cp, "wb");
        fwrite(buf, 1, len * (size_t)k / 16, f);
        fclose(f);
        free(buf);
        T_CHECK(tc, read_equals(cp, &s, &e) == -1, "a file cut at %d/16 was accepted", k);
    }
    ckpt_state_free(&s);
    rm_rf(dir);
}

// (b) flipped bytes: in a dataset's chunk -> "checksum mismatch in dataset ..."; anywhere -> the read
// fails or returns exactly what was written.
static void test_flipped(TestCounts *tc, const char *base) {
    char dir[4096], path[4300];
    mk_dir(dir, sizeof dir, base, "flip");
    CkptState s;
    make_state(&s, 2, 1, 4, 1, 31);
    Error e = {{0}};
    T_CHECK(tc, ckpt_write(dir, &s, 2, path, sizeof path, &e) == 0, "write: %s", e.msg);
    const char *targets[3] = {"params/base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight",
                              "optimizer/adam_v", "layout/names"};
    for (int t = 0; t < 3; t++) {
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), ds = H5Dopen2(f, targets[t], H5P_DEFAULT);
        hid_t fcpl = H5Fget_create_plist(f);
        hsize_t coord[2] = {0, 0}, size = 0, ub = 0;
        haddr_t addr = 0;
        unsigned mask = 0;
        herr_t hr = H5Dget_chunk_info_by_coord(ds, coord, &mask, &addr, &size);
        H5Pget_userblock(fcpl, &ub);  // chunk addresses are relative to the end of the user block
        H5Pclose(fcpl);
        addr += ub;
        H5Dclose(ds);
        H5Fclose(f);
        T_CHECK(tc, hr >= 0 && size > 4, "chunk of %s not found", targets[t]);
        for (hsize_t at = 0; at < size; at += size / 3 + 1) {  // several places, the checksum itself included
            flip_byte(path, (off_t)(addr + at));
            int rc = read_equals(path, &s, &e);
            char want[200];
            snprintf(want, sizeof want, "checksum mismatch in dataset /%s", targets[t]);
            T_CHECK(tc, rc == -1 && strstr(e.msg, want), "flip in %s at +%llu: %s", targets[t], (unsigned long long)at,
                    rc == 0 ? "accepted" : e.msg);
            if (t == 0 && at == 0) printf("  flipped:   %s\n", e.msg);
            flip_byte(path, (off_t)(addr + at));
        }
    }
    T_CHECK(tc, read_equals(path, &s, &e) == 0, "restored file: %s", e.msg);
    // every byte of the file, in a child: HDF5 1.10 cannot free everything after it met corrupt
    // metadata and says so at exit ("infinite loop closing library"); that must not reach later tests
    size_t len;
    free(slurp(path, &len));
    int fds[2], counts[3] = {0, 0, 0};
    check(pipe(fds) == 0, "pipe");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        for (size_t off = 0; off < len; off++) {
            flip_byte(path, (off_t)off);
            int rc = read_equals(path, &s, &e);
            counts[rc == -1 ? 0 : rc == 0 ? 1 : 2]++;
            if (rc == 1 && counts[2] <= 5) fprintf(stderr, "FAIL flip at byte %zu of %zu: %s\n", off, len, e.msg);
            flip_byte(path, (off_t)off);
        }
        _exit(write(fds[1], counts, sizeof counts) == sizeof counts ? 0 : 1);
    }
    close(fds[1]);
    ssize_t got = read(fds[0], counts, sizeof counts);
    close(fds[0]);
    waitpid(pid, NULL, 0);
    T_CHECK(tc, got == sizeof counts && counts[0] + counts[1] + counts[2] == (int)len, "the flip sweep did not finish");
    T_CHECK(tc, counts[2] == 0, "%d flipped bytes read back wrong data", counts[2]);
    T_CHECK(tc, counts[1] == 0, "%d flipped bytes were not detected", counts[1]);
    printf("  flipped each of %zu bytes: %d rejected, %d accepted (identical data), %d wrong\n", len, counts[0],
           counts[1], counts[2]);
    ckpt_state_free(&s);
    rm_rf(dir);
}

// (c) `latest` missing, dangling, malicious; stray files.
static void test_latest(TestCounts *tc, const char *base) {
    char dir[4096], p[4400], found[4300], warn[4096];
    mk_dir(dir, sizeof dir, base, "latest");
    Error e = {{0}};
    T_CHECK(tc, ckpt_find_latest(dir, found, sizeof found, warn, sizeof warn, &e) == 0 && !warn[0], "empty dir");
    snprintf(p, sizeof p, "%s/nonexistent", dir);
    T_CHECK(tc, ckpt_find_latest(p, found, sizeof found, warn, sizeof warn, &e) == 0, "missing dir");
    CkptState s;
    make_state(&s, 2, 0, 0, 1, 41);
    write_steps(tc, dir, 1, 3, 5, &s);
    snprintf(p, sizeof p, "%s/latest", dir);
    unlink(p);
    int rc = ckpt_find_latest(dir, found, sizeof found, warn, sizeof warn, &e);
    T_CHECK(tc, rc == 1 && strstr(found, "/ckpt-3-0.h5") && !warn[0], "no latest: %d %s [%s]", rc, found, warn);
    put_file(p, "ckpt-9-0.h5\n");
    rc = ckpt_find_latest(dir, found, sizeof found, warn, sizeof warn, &e);
    T_CHECK(tc, rc == 1 && strstr(found, "/ckpt-3-0.h5") && strstr(warn, "ckpt-9-0.h5") && strstr(warn, "No such file"),
            "dangling latest: %d %s [%s]", rc, found, warn);
    printf("  dangling:  %s", warn);
    put_file(p, "../ckpt-3-0.h5\n");
    rc = ckpt_find_latest(dir, found, sizeof found, warn, sizeof warn, &e);
    T_CHECK(tc, rc == 1 && strstr(found, "/ckpt-3-0.h5") && strstr(warn, "not a checkpoint file name"),
            "latest with '..': %d %s [%s]", rc, found, warn);
    put_file(p, "  ckpt-2-0.h5 \n\n");  // a valid older one is honoured: `latest` is the commit point
    rc = ckpt_find_latest(dir, found, sizeof found, warn, sizeof warn, &e);
    T_CHECK(tc, rc == 1 && strstr(found, "/ckpt-2-0.h5") && !warn[0], "latest naming an older one: %s [%s]", found,
            warn);
    unlink(p);
    // stray files: a temporary file is ignored, garbage under a checkpoint name is rejected
    snprintf(p, sizeof p, "%s/.ckpt-4-0.h5.tmp.999", dir);
    put_file(p, "partial write");
    snprintf(p, sizeof p, "%s/ckpt-5-0.h5", dir);
    put_file(p, "not hdf5 at all");
    rc = ckpt_find_latest(dir, found, sizeof found, warn, sizeof warn, &e);
    T_CHECK(tc, rc == 1 && strstr(found, "/ckpt-3-0.h5") && strstr(warn, "ckpt-5-0.h5") && !strstr(warn, ".tmp."),
            "stray files: %s [%s]", found, warn);
    printf("  garbage:   %s", warn);
    // a file where the directory should be
    rc = ckpt_find_latest(p, found, sizeof found, warn, sizeof warn, &e);
    T_CHECK(tc, rc == -1 && strstr(e.msg, "ckpt-5-0.h5"), "unreadable dir: %d %s", rc, e.msg);
    ckpt_state_free(&s);
    rm_rf(dir);
}

// (d) writes that fail for reasons root cannot override.
static void test_unwritable(TestCounts *tc, const char *base) {
    char dir[4096], p[4400], before[4096], after[4096], path[4300];
    mk_dir(dir, sizeof dir, base, "unwr");
    CkptState s;
    make_state(&s, 2, 1, 0, 1, 51);
    Error e = {{0}};
    write_steps(tc, dir, 1, 1, 3, &s);
    listing(dir, before, sizeof before);
    s.step = 2;
    // a directory under a regular file
    snprintf(p, sizeof p, "%s/ckpt-1-1.h5/sub", dir);
    int rc = ckpt_write(p, &s, 3, path, sizeof path, &e);
    T_CHECK(tc, rc == -1 && strstr(e.msg, p) && strstr(e.msg, "Not a directory"), "dir under a file: %s", e.msg);
    printf("  not a dir: %s\n", e.msg);
    // a directory that does not exist
    snprintf(p, sizeof p, "%s/missing", dir);
    rc = ckpt_write(p, &s, 3, path, sizeof path, &e);
    T_CHECK(tc, rc == -1 && strstr(e.msg, p) && strstr(e.msg, "No such file"), "missing dir: %s", e.msg);
    if (geteuid() != 0) {  // permissions only stop non-root users
        chmod(dir, 0500);
        rc = ckpt_write(dir, &s, 3, path, sizeof path, &e);
        chmod(dir, 0700);
        T_CHECK(tc, rc == -1 && strstr(e.msg, dir) && strstr(e.msg, "Permission denied"), "read-only dir: %s", e.msg);
    }
    // the final name is taken by a non-empty directory: rename fails after the whole file was written
    snprintf(p, sizeof p, "%s/ckpt-2-1.h5", dir);
    mkdir(p, 0755);
    snprintf(path, sizeof path, "%s/ckpt-2-1.h5/x", dir);
    put_file(path, "x");
    listing(dir, before, sizeof before);
    rc = ckpt_write(dir, &s, 3, path, sizeof path, &e);
    listing(dir, after, sizeof after);
    T_CHECK(tc, rc == -1 && strstr(e.msg, "renaming") && strcmp(before, after) == 0, "rename blocked: %s [%s]", e.msg,
            after);
    printf("  rename:    %s\n", e.msg);
    rm_rf(p);
    // `latest` cannot be replaced: the new checkpoint is unpublished again, latest untouched
    snprintf(p, sizeof p, "%s/latest", dir);
    unlink(p);
    mkdir(p, 0755);
    snprintf(path, sizeof path, "%s/latest/x", dir);
    put_file(path, "x");
    listing(dir, before, sizeof before);
    rc = ckpt_write(dir, &s, 3, path, sizeof path, &e);
    listing(dir, after, sizeof after);
    T_CHECK(tc, rc == -1 && strstr(e.msg, "latest") && strcmp(before, after) == 0, "latest blocked: %s [%s]", e.msg,
            after);
    printf("  latest:    %s\n", e.msg);
    ckpt_state_free(&s);
    rm_rf(dir);
}

// (e) a full disk, as RLIMIT_FSIZE in a child: EFBIG, no temporary file, nothing else changed.
static void test_full_disk(TestCounts *tc, const char *base) {
    char dir[4096], before[4096], after[4096], p[4400], found[4300], warn[4096];
    mk_dir(dir, sizeof dir, base, "full");
    CkptState small, big;
    make_state(&small, 2, 0, 0, 1, 61);
    make_state(&big, 2, 1, 2, 2048, 62);
    write_steps(tc, dir, 1, 1, 3, &small);
    snprintf(p, sizeof p, "%s/ckpt-1-0.h5", dir);
    size_t n0, n1;
    char *ck0 = slurp(p, &n0);
    listing(dir, before, sizeof before);
    const rlim_t limits[3] = {1024, 64 * 1024, 3 * 1024 * 1024};
    for (int k = 0; k < 3; k++) {
        int fds[2];
        check(pipe(fds) == 0, "pipe");
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            struct rlimit rl = {limits[k], limits[k]};
            setrlimit(RLIMIT_FSIZE, &rl);
            Error e = {{0}};
            int rc = ckpt_write(dir, &big, 3, NULL, 0, &e);
            struct sigaction sa;
            sigaction(SIGXFSZ, NULL, &sa);
            int ok = rc == -1 && strstr(e.msg, "File too large") && sa.sa_handler == SIG_DFL;
            if (write(fds[1], e.msg, strlen(e.msg) + 1) < 0) ok = 0;
            exit(ok ? 0 : 3);  // exit, not _exit: HDF5's atexit must not write (and die of SIGXFSZ)
        }
        close(fds[1]);
        char msg[1100] = "";
        ssize_t got = read(fds[0], msg, sizeof msg - 1);
        msg[got > 0 ? got : 0] = '\0';
        close(fds[0]);
        int status = 0;
        waitpid(pid, &status, 0);
        T_CHECK(tc, WIFEXITED(status) && WEXITSTATUS(status) == 0, "limit %lu: child status %d: %s",
                (unsigned long)limits[k], status, msg);
        printf("  full disk (limit %lu): %s\n", (unsigned long)limits[k], msg);
        listing(dir, after, sizeof after);
        T_CHECK(tc, strcmp(before, after) == 0, "limit %lu: directory changed: %s", (unsigned long)limits[k], after);
        char *ck1 = slurp(p, &n1);
        T_CHECK(tc, ck1 && n1 == n0 && memcmp(ck0, ck1, n0) == 0, "previous checkpoint changed");
        free(ck1);
    }
    Error e = {{0}};
    int rc = ckpt_find_latest(dir, found, sizeof found, warn, sizeof warn, &e);
    T_CHECK(tc, rc == 1 && strcmp(found, p) == 0 && !warn[0], "after full disk: %s [%s]", found, warn);
    free(ck0);
    ckpt_state_free(&small);
    ckpt_state_free(&big);
    rm_rf(dir);
}

// (f) kill -9 at random moments of a writing loop: the newest valid checkpoint is always the last one
// completed (or the one being completed), never a broken one.
static void fill_step(CkptState *s, int64_t step) {
    s->step = step;
    fill_floats(s->params, s->numel, 1000 + (uint64_t)step);
}

static void test_kill(TestCounts *tc, const char *base) {
    char dir[4096], found[4300], warn[8192];
    mk_dir(dir, sizeof dir, base, "kill");
    CkptState s;
    make_state(&s, 2, 1, 0, 4096, 71);
    fill_step(&s, 1);
    Error e = {{0}};
    T_CHECK(tc, ckpt_write(dir, &s, 2, NULL, 0, &e) == 0, "first write: %s", e.msg);
    int64_t base_step = 1;
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    srand(seed);
    printf("  kill -9: seed %u\n", seed);
    for (int round = 0; round < 6; round++) {
        int fds[2];
        check(pipe(fds) == 0, "pipe");
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            for (int64_t step = base_step + 1; step < base_step + 10000; step++) {
                fill_step(&s, step);
                Error ce;
                if (ckpt_write(dir, &s, 2, NULL, 0, &ce) != 0) _exit(4);
                if (write(fds[1], &step, sizeof step) != sizeof step) _exit(5);
            }
            _exit(0);
        }
        close(fds[1]);
        usleep(5000 + (useconds_t)(rand() % 400000));
        kill(pid, SIGKILL);
        int status = 0;
        waitpid(pid, &status, 0);
        int64_t last = base_step, v;
        while (read(fds[0], &v, sizeof v) == sizeof v) last = v;
        close(fds[0]);
        T_CHECK(tc, WIFSIGNALED(status), "round %d: the child ended by itself (status %d)", round, status);
        int rc = ckpt_find_latest(dir, found, sizeof found, warn, sizeof warn, &e);
        CkptState r;
        int ok = rc == 1 && ckpt_read(found, &r, &e) == 0;
        T_CHECK(tc, ok, "round %d: no valid checkpoint after kill -9 (%d): %s [%s]", round, rc, e.msg, warn);
        if (!ok) break;
        T_CHECK(tc, r.step == last || r.step == last + 1, "round %d: found step %lld, last completed %lld", round,
                (long long)r.step, (long long)last);
        fill_step(&s, r.step);
        T_CHECK(tc, !state_diff(&s, &r), "round %d: step %lld reads back different data (%s)", round, (long long)r.step,
                state_diff(&s, &r));
        int tmps = 0;
        struct dirent **nl;
        int k = scandir(dir, &nl, NULL, alphasort);
        for (int i = 0; i < k; i++) {
            tmps += strstr(nl[i]->d_name, ".tmp.") != NULL;
            free(nl[i]);
        }
        if (k >= 0) free(nl);
        printf("  kill -9 round %d: %lld written, resumes at step %lld, %d stale temporary file(s) ignored%s%s", round,
               (long long)(last - base_step), (long long)r.step, tmps, warn[0] ? "; " : "\n", warn);
        base_step = r.step;
        ckpt_state_free(&r);
    }
    ckpt_state_free(&s);
    rm_rf(dir);
}

// (g) a newer format, and files whose checksums are right but whose structure is not.
static void test_format(TestCounts *tc, const char *base) {
    char dir[4096], path[4300], found[4300], warn[4096];
    mk_dir(dir, sizeof dir, base, "fmt");
    CkptState s, r;
    make_state(&s, 2, 1, 3, 1, 81);
    Error e = {{0}};
    T_CHECK(tc, ckpt_write(dir, &s, 2, path, sizeof path, &e) == 0, "write: %s", e.msg);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT), a = H5Aopen(f, "format_version", H5P_DEFAULT);
    int v = CKPT_FORMAT_VERSION + 1;
    H5Awrite(a, H5T_NATIVE_INT, &v);
    H5Aclose(a);
    H5Fclose(f);
    reseal(path, v);
    int rc = ckpt_read(path, &r, &e);
    T_CHECK(tc, rc == -1 && strstr(e.msg, "written by a newer actlora-mpi (format 2); this build reads format 1"),
            "newer format: %s", e.msg);
    T_CHECK(tc, r.params == NULL && r.names == NULL, "a failed read leaves the state empty");
    printf("  newer:     %s\n", e.msg);
    rc = ckpt_find_latest(dir, found, sizeof found, warn, sizeof warn, &e);
    T_CHECK(tc, rc == 0 && strstr(warn, "newer"), "find_latest over a newer file: %d [%s]", rc, warn);
    reseal(path, CKPT_FORMAT_VERSION);  // an old header over a newer file: the attribute says so too
    rc = ckpt_read(path, &r, &e);
    T_CHECK(tc, rc == -1 && strstr(e.msg, "newer actlora-mpi (format 2)"), "newer format_version attribute: %s", e.msg);

    // overlapping offsets (rewritten with a valid checksum)
    s.step = 4;
    T_CHECK(tc, ckpt_write(dir, &s, 3, path, sizeof path, &e) == 0, "write: %s", e.msg);
    f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t ds = H5Dopen2(f, "layout/offsets", H5P_DEFAULT);
    int64_t off[4];
    memcpy(off, s.offsets, sizeof off);
    off[1] -= 1;
    H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off);
    H5Dclose(ds);
    H5Fclose(f);
    reseal(path, CKPT_FORMAT_VERSION);
    rc = ckpt_read(path, &r, &e);
    T_CHECK(tc, rc == -1 && strstr(e.msg, "overlap"), "overlapping offsets: %s", e.msg);
    printf("  layout:    %s\n", e.msg);
    // a param of the wrong shape
    s.step = 5;
    T_CHECK(tc, ckpt_write(dir, &s, 3, path, sizeof path, &e) == 0, "write: %s", e.msg);
    f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, "params/score.weight", H5P_DEFAULT);
    hsize_t dims[2] = {1, 16};
    hid_t sp = H5Screate_simple(2, dims, NULL);
    ds = H5Dcreate2(f, "params/score.weight", H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, s.params);
    H5Dclose(ds);
    H5Sclose(sp);
    H5Fclose(f);
    reseal(path, CKPT_FORMAT_VERSION);
    rc = ckpt_read(path, &r, &e);
    T_CHECK(tc, rc == -1 && strstr(e.msg, "params/score.weight has shape [1, 16], expected [2, 8]"), "param shape: %s",
            e.msg);
    // micro > 0 without the partial gradients
    s.step = 6;
    T_CHECK(tc, ckpt_write(dir, &s, 3, path, sizeof path, &e) == 0, "write: %s", e.msg);
    f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, "partial/grads", H5P_DEFAULT);
    H5Fclose(f);
    reseal(path, CKPT_FORMAT_VERSION);
    rc = ckpt_read(path, &r, &e);
    T_CHECK(tc, rc == -1 && strstr(e.msg, "/partial/grads is missing"), "missing partial: %s", e.msg);

    // HDF5's own error printing stays off, and its setting is restored
    H5E_auto2_t fn0, fn1;
    void *d0, *d1;
    H5Eget_auto2(H5E_DEFAULT, &fn0, &d0);
    fflush(stderr);
    int saved = dup(2);
    char errpath[4400];
    snprintf(errpath, sizeof errpath, "%s/stderr.txt", dir);
    int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
    rc = ckpt_read(path, &r, &e);
    snprintf(found, sizeof found, "%s/nope/x", dir);
    rc += ckpt_write(found, &s, 1, NULL, 0, &e);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    struct stat st;
    stat(errpath, &st);
    T_CHECK(tc, rc == -2 && st.st_size == 0, "HDF5 printed %lld bytes on stderr", (long long)st.st_size);
    H5Eget_auto2(H5E_DEFAULT, &fn1, &d1);
    T_CHECK(tc, fn0 == fn1 && d0 == d1, "HDF5 error printing not restored");
    ckpt_state_free(&s);
    rm_rf(dir);
}

// tools/ckpt_inspect.py agrees with the C reader (seal, checksums, layout), when python3 + h5py exist.
static void test_inspect(TestCounts *tc, const char *src, const char *base) {
    if (system("python3 -c 'import h5py, numpy' >/dev/null 2>&1") != 0) {
        printf("  ckpt_inspect.py: skipped (no python3 with h5py)\n");
        return;
    }
    char dir[4096], path[4300], cmd[9000];
    mk_dir(dir, sizeof dir, base, "py");
    CkptState s;
    make_state(&s, 2, 1, 5, 1, 91);
    Error e = {{0}};
    T_CHECK(tc, ckpt_write(dir, &s, 3, path, sizeof path, &e) == 0, "write: %s", e.msg);
    s.micro = 0;
    s.step = 6;
    T_CHECK(tc, ckpt_write(dir, &s, 3, path, sizeof path, &e) == 0, "write: %s", e.msg);
    const char *what[4] = {"a good file", "a run's checkpoint directory", "a flipped byte", "a truncated file"};
    for (int k = 0; k < 4; k++) {
        if (k == 2) flip_byte(path, 1000);
        if (k == 3) T_CHECK(tc, truncate(path, 2000) == 0, "truncate");
        snprintf(cmd, sizeof cmd, "python3 '%s/tools/ckpt_inspect.py' '%s' >'%s/inspect.txt' 2>&1", src,
                 k == 1 ? dir : path, dir);
        int rc = system(cmd);
        int want = k < 2 ? 0 : 1;
        T_CHECK(tc, WIFEXITED(rc) && WEXITSTATUS(rc) == want,
                "ckpt_inspect.py on %s: exit %d, expected %d (%s/inspect.txt)", what[k], WEXITSTATUS(rc), want, dir);
    }
    printf("  ckpt_inspect.py: agrees on a good file, a directory, a flipped byte and a truncated file\n");
    ckpt_state_free(&s);
    if (tc->failed == 0) rm_rf(dir);
}

int main(int argc, char **argv) {
    const char *base = argc > 2 ? argv[2] : "/tmp";
    TestCounts tc = {0, 0};
    printf("test_ckpt: temporary directories under %s (running as uid %d)\n", base, (int)geteuid());
    test_roundtrip(&tc, base);
    test_rotation(&tc, base);
    test_truncated(&tc, base);
    test_flipped(&tc, base);
    test_latest(&tc, base);
    test_unwritable(&tc, base);
    test_full_disk(&tc, base);
    test_kill(&tc, base);
    test_format(&tc, base);
    test_inspect(&tc, argc > 1 ? argv[1] : ".", base);
    return t_finish(&tc, "test_ckpt");
}
