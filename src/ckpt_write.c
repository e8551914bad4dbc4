// ckpt_write.c: writing checkpoint files (ckpt.h; docs/checkpoint-format.md). One HDF5 file per checkpoint: every
// dataset chunked with fletcher32, metadata in the checksummed 1.10 formats, and a 512-byte user block
// that seals the whole file (size + checksum). Built in memory, written under a temporary name and
// published by rename + `latest`, so a crash never leaves a file that passes for valid and is not.
#include "actlora/ckpt.h"
#include "actlora/h5util.h"
#include "ckpt_internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// ---------------------------------------------------------------------------- writing

// Writes continue until the first failure, which is kept (what failed and why); later calls do nothing.
typedef struct {
    int failed;
    char what[600];
    H5Cause cause;
} Writer;

__attribute__((format(printf, 2, 3))) static void w_fail(Writer *w, const char *fmt, ...) {
    if (w->failed) return;
    w->failed = 1;
    ckpt_h5_cause(&w->cause);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->what, sizeof w->what, fmt, ap);
    va_end(ap);
}

static void w_group(Writer *w, hid_t f, const char *name) {
    if (w->failed) return;
    hid_t g = H5Gcreate2(f, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) w_fail(w, "creating group /%s", name);
    else H5Gclose(g);
}

static void w_attr(Writer *w, hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *v) {
    if (w->failed) return;
    hid_t sp = H5Screate(H5S_SCALAR), a = H5Acreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0 || H5Awrite(a, mtype, v) < 0) w_fail(w, "writing attribute %s", name);
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
}

static void w_attr_str(Writer *w, hid_t loc, const char *name, const char *v) {
    if (w->failed) return;
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(v) + 1);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    H5Tset_cset(t, H5T_CSET_UTF8);
    w_attr(w, loc, name, t, t, v);
    H5Tclose(t);
}

// A dataset of rank 1 or 2, chunked (whole dataset per chunk when it has at most CKPT_CHUNK_ELEMS
// elements) with fletcher32. A zero-size dataset has no data to protect: contiguous, no storage.
static void w_dset(Writer *w, hid_t f, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims,
                   const void *data) {
    if (w->failed) return;
    hsize_t n = 1, chunk[2];
    for (int k = 0; k < rank; k++) n *= dims[k];
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (n > 0) {
        chunk[rank - 1] = dims[rank - 1] < CKPT_CHUNK_ELEMS ? dims[rank - 1] : CKPT_CHUNK_ELEMS;
        if (rank == 2) {
            hsize_t rows = CKPT_CHUNK_ELEMS / chunk[1];
            chunk[0] = dims[0] < rows ? dims[0] : rows;
        }
        H5Pset_chunk(dcpl, rank, chunk);
        H5Pset_fletcher32(dcpl);
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    }
    hid_t sp = H5Screate_simple(rank, dims, NULL);
    hid_t ds = H5Dcreate2(f, name, ftype, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds < 0) w_fail(w, "creating dataset /%s", name);
    else if (n > 0 && H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        w_fail(w, "writing dataset /%s", name);
    if (ds >= 0 && H5Dclose(ds) < 0) w_fail(w, "closing dataset /%s", name);
    H5Sclose(sp);
    H5Pclose(dcpl);
}

// The file is assembled in memory (HDF5's core driver) and written out by write(2) here: HDF5 then
// never meets an I/O error (after a failed write HDF5 cannot close a file and crashes at exit), and
// ENOSPC / EFBIG / EIO come back as plain errno. These callbacks let us keep the core driver's buffer
// when it closes the file, so the image is not copied.
typedef struct {
    unsigned char *kept;  // the image, handed over at close
    size_t size;  // its allocated size
} Image;

static void *img_malloc(size_t n, H5FD_file_image_op_t op, void *u) {
    void *p = malloc(n);
    if (p) ((Image *)u)->size = n;
    return (void)op, p;
}

static void *img_memcpy(void *d, const void *src, size_t n, H5FD_file_image_op_t op, void *u) {
    return (void)op, (void)u, memcpy(d, src, n);
}

static void *img_realloc(void *p, size_t n, H5FD_file_image_op_t op, void *u) {
    void *q = realloc(p, n);
    if (q) ((Image *)u)->size = n;
    return (void)op, q;
}

static herr_t img_free(void *p, H5FD_file_image_op_t op, void *u) {
    Image *im = u;
    if (op == H5FD_FILE_IMAGE_OP_FILE_CLOSE && !im->kept) im->kept = p;
    else free(p);
    return 0;
}

static void *img_udata_copy(void *u) { return u; }
static herr_t img_udata_free(void *u) {
    (void)u;
    return 0;
}

// The end of the HDF5 data: the end-of-file address of the version 2/3 superblock after the user
// block (absolute, as HDF5 truncates files to it). The core driver's buffer is rounded up beyond it.
static size_t image_eof(const unsigned char *m, size_t n) {
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    const unsigned char *sb = m + CKPT_USERBLOCK;
    if (n < CKPT_USERBLOCK + 48 || memcmp(sb, sig, 8) != 0 || (sb[8] != 2 && sb[8] != 3) || sb[9] != 8) return n;
    uint64_t eof = 0;
    for (int k = 7; k >= 0; k--) eof = eof << 8 | sb[28 + k];
    return eof >= CKPT_USERBLOCK + 48 && eof <= n ? (size_t)eof : n;
}

// The user block: "actlora-checkpoint <version>\nbytes <file size>\nfnv1a64w <hex>\n", NUL-padded.
static void seal(unsigned char *m, size_t n) {
    uint64_t h = ckpt_hash_words(FNV64_INIT, m + CKPT_USERBLOCK, n - CKPT_USERBLOCK);
    h = (h ^ (uint64_t)(n - CKPT_USERBLOCK)) * 0x100000001b3ULL;
    memset(m, 0, CKPT_USERBLOCK);
    snprintf((char *)m, CKPT_USERBLOCK, "%s %d\nbytes %zu\nfnv1a64w %016llx\n", CKPT_FORMAT, CKPT_FORMAT_VERSION, n,
             (unsigned long long)h);
}

// n bytes to a new file, synced. Returns 0 or -1 with err naming the step and errno.
static int write_image(const char *tmp, const unsigned char *p, size_t n, Error *err) {
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return error_set(err, "creating %s failed: %s", tmp, strerror(errno));
    const char *step = "writing";
    int e = 0;
    for (size_t done = 0; done < n && !e;) {
        ssize_t w = write(fd, p + done, n - done < ((size_t)1 << 30) ? n - done : ((size_t)1 << 30));
        if (w > 0) done += (size_t)w;
        else if (w == 0) e = EIO;
        else if (errno != EINTR) e = errno;
    }
    if (!e && fsync(fd) != 0) step = "syncing", e = errno;
    if (close(fd) != 0 && !e) step = "closing", e = errno;
    if (e) return error_set(err, "%s %s failed: %s", step, tmp, strerror(e));
    return 0;
}

// The whole HDF5 file, built in memory and written to tmp (synced). On failure tmp may be left for
// the caller to remove.
static int write_h5(const char *tmp, const CkptState *s, Error *err) {
    Writer w;
    memset(&w, 0, sizeof w);
    Image im = {NULL, 0};
    H5FD_file_image_callbacks_t cb = {img_malloc,     img_memcpy,     img_realloc, img_free,
                                      img_udata_copy, img_udata_free, &im};
    hid_t fapl = ckpt_h5_fapl();
    H5Pset_fapl_core(fapl, (size_t)16 << 20, 0);
    H5Pset_file_image_callbacks(fapl, &cb);
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_userblock(fcpl, CKPT_USERBLOCK);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, fcpl, fapl);
    if (f < 0) w_fail(&w, "creating");  // before H5Pclose, which clears the error stack
    H5Pclose(fcpl);
    H5Pclose(fapl);
    if (f < 0) return error_set(err, "creating %s (in memory) failed: %s", tmp, ckpt_cause_str(&w.cause));
    int version = CKPT_FORMAT_VERSION, world = s->world, micro = s->micro, L = s->num_layers, nsel = s->n_selected,
        nt = s->n_tensors;
    int64_t numel = (int64_t)s->numel;
    w_attr_str(&w, f, "format", CKPT_FORMAT);
    w_attr(&w, f, "format_version", H5T_STD_I32LE, H5T_NATIVE_INT, &version);
    w_attr(&w, f, "config_hash", H5T_STD_U64LE, H5T_NATIVE_UINT64, &s->config_hash);
    w_attr(&w, f, "model_fingerprint", H5T_STD_U64LE, H5T_NATIVE_UINT64, &s->model_fingerprint);
    w_attr(&w, f, "world", H5T_STD_I32LE, H5T_NATIVE_INT, &world);
    w_attr(&w, f, "step", H5T_STD_I64LE, H5T_NATIVE_INT64, &s->step);
    w_attr(&w, f, "epoch", H5T_STD_I64LE, H5T_NATIVE_INT64, &s->epoch);
    w_attr(&w, f, "cursor", H5T_STD_I64LE, H5T_NATIVE_INT64, &s->cursor);
    w_attr(&w, f, "micro", H5T_STD_I32LE, H5T_NATIVE_INT, &micro);
    w_attr(&w, f, "seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, &s->seed);
    w_attr(&w, f, "num_layers", H5T_STD_I32LE, H5T_NATIVE_INT, &L);
    w_attr(&w, f, "n_selected", H5T_STD_I32LE, H5T_NATIVE_INT, &nsel);
    w_attr(&w, f, "n_tensors", H5T_STD_I32LE, H5T_NATIVE_INT, &nt);
    w_attr(&w, f, "numel", H5T_STD_I64LE, H5T_NATIVE_INT64, &numel);
    w_attr(&w, f, "wall_s", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &s->wall_s);

    hsize_t d1[1] = {strlen(s->config_text)}, d2[2];
    w_dset(&w, f, "config_text", H5T_STD_U8LE, H5T_NATIVE_UCHAR, 1, d1, s->config_text);
    w_group(&w, f, "selection");
    d1[0] = (hsize_t)L;
    w_dset(&w, f, "selection/scores", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, d1, s->scores);
    d1[0] = (hsize_t)nsel;
    w_dset(&w, f, "selection/selected", H5T_STD_I32LE, H5T_NATIVE_INT, 1, d1, s->selected);

    w_group(&w, f, "layout");
    size_t total = 0;
    for (int i = 0; i < nt; i++) total += strlen(s->names[i]) + 1;
    char *names = xmalloc(total, "tensor names");
    for (size_t i = 0, o = 0; i < (size_t)nt; o += strlen(s->names[i]) + 1, i++)
        memcpy(names + o, s->names[i], strlen(s->names[i]) + 1);
    d1[0] = total;
    w_dset(&w, f, "layout/names", H5T_STD_U8LE, H5T_NATIVE_UCHAR, 1, d1, names);
    free(names);
    d1[0] = d2[0] = (hsize_t)nt;
    d2[1] = 2;
    w_dset(&w, f, "layout/offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, d1, s->offsets);
    w_dset(&w, f, "layout/shapes", H5T_STD_I64LE, H5T_NATIVE_INT64, 2, d2, s->shapes);

    w_group(&w, f, "params");
    for (int i = 0; i < nt; i++) {
        char path[320];
        snprintf(path, sizeof path, "params/%s", s->names[i]);
        d2[0] = (hsize_t)s->shapes[i][0];
        d2[1] = (hsize_t)s->shapes[i][1];
        w_dset(&w, f, path, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, d2, s->params + s->offsets[i]);
    }
    w_group(&w, f, "optimizer");
    d1[0] = s->numel;
    w_dset(&w, f, "optimizer/adam_m", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, d1, s->adam_m);
    w_dset(&w, f, "optimizer/adam_v", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, d1, s->adam_v);
    if (s->micro > 0) {
        w_group(&w, f, "partial");
        d2[0] = d1[0] = (hsize_t)world;
        d2[1] = s->numel;
        w_dset(&w, f, "partial/grads", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, d2, s->grads);
        w_dset(&w, f, "partial/loss", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, d1, s->loss_partial);
    }
    w_group(&w, f, "counters");
    d1[0] = (hsize_t)world;
    w_dset(&w, f, "counters/tokens", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, d1, s->tokens);
    d1[0] = PHASE_COUNT;
    w_dset(&w, f, "counters/ledger", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, d1, s->ledger);
    if (!w.failed) {  // the phase names, so the ledger reads without the source
        char phases[512] = "";
        for (int p = 0; p < PHASE_COUNT; p++)
            snprintf(phases + strlen(phases), sizeof phases - strlen(phases), "%s%s", p ? "," : "",
                     phase_name((Phase)p));
        hid_t ds = H5Dopen2(f, "counters/ledger", H5P_DEFAULT);
        w_attr_str(&w, ds, "phases", phases);
        H5Dclose(ds);
    }
    if (H5Fclose(f) < 0) w_fail(&w, "closing");
    int rc = 0;
    if (w.failed) rc = error_set(err, "%s %s (in memory) failed: %s", w.what, tmp, ckpt_cause_str(&w.cause));
    else if (!im.kept) rc = error_set(err, "HDF5 did not hand over the image of %s", tmp);
    else {
        size_t n = image_eof(im.kept, im.size);
        seal(im.kept, n);
        rc = write_image(tmp, im.kept, n, err);
    }
    free(im.kept);
    return rc;
}

// fsync of a directory (so a rename in it is durable); returns 0 or an errno. File systems that cannot
// sync a directory (EINVAL) are accepted: there is nothing more to do on them.
static int fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return errno;
    int rc = fsync(fd) == 0 || errno == EINVAL ? 0 : errno;
    close(fd);
    return rc;
}

// <dir>/latest <- "<name>\n", atomically and durably.
static int write_latest(const char *dir, const char *name, Error *err) {
    char tmp[CKPT_PATH_MAX], path[CKPT_PATH_MAX], line[300];
    snprintf(tmp, sizeof tmp, "%s/.latest.tmp.%d", dir, (int)getpid());
    snprintf(path, sizeof path, "%s/latest", dir);
    int n = snprintf(line, sizeof line, "%s\n", name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return error_set(err, "creating %s failed: %s", tmp, strerror(errno));
    const char *step = "writing", *file = tmp;
    int e = write(fd, line, (size_t)n) == n ? 0 : (errno ? errno : EIO);
    if (!e && fsync(fd) != 0) step = "syncing", e = errno;
    if (close(fd) != 0 && !e) step = "closing", e = errno;
    if (!e && rename(tmp, path) != 0) step = "renaming", file = path, e = errno;
    if (e) {
        unlink(tmp);
        return error_set(err, "%s %s failed: %s", step, file, strerror(e));
    }
    if ((e = fsync_dir(dir)) != 0) return error_set(err, "syncing directory %s failed: %s", dir, strerror(e));
    return 0;
}

// Keeps the newest `keep` checkpoints that are not newer than the one just written (which is among
// them: `latest` names it). Checkpoints newer than it (an abandoned future, e.g. after resuming from an
// older file) are left alone. Best effort: the new checkpoint is already published.
static void rotate(const char *dir, const char *written, int64_t step, int micro, int keep) {
    CkptEntry *e = NULL;
    int n = ckpt_list(dir, &e);
    int kept = 0;
    for (int i = 0; i < n; i++) {
        if (e[i].step > step || (e[i].step == step && e[i].micro > micro)) continue;
        if (strcmp(e[i].name, written) == 0 || kept < keep - 1) {
            if (strcmp(e[i].name, written) != 0) kept++;
            continue;
        }
        char path[CKPT_PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, e[i].name);
        unlink(path);
    }
    free(e);
}

int ckpt_write(const char *dir, const CkptState *s, int keep, char *path_out, size_t path_n, Error *err) {
    if (keep < 1) return error_set(err, "checkpoint.keep must be >= 1 (got %d)", keep);
    Error e;
    if (ckpt_state_check(s, 1, &e) != 0)
        return error_set(err, "checkpoint not written to %s: invalid state: %s", dir, e.msg);
    char name[128], final[CKPT_PATH_MAX], tmp[CKPT_PATH_MAX];
    snprintf(name, sizeof name, "ckpt-%lld-%d.h5", (long long)s->step, s->micro);
    if (snprintf(final, sizeof final, "%s/%s", dir, name) >= (int)sizeof final ||
        snprintf(tmp, sizeof tmp, "%s/.%s.tmp.%d", dir, name, (int)getpid()) >= (int)sizeof tmp)
        return error_set(err, "checkpoint directory name too long: %.200s...", dir);
    if (path_out && strlen(final) >= path_n)
        return error_set(err, "checkpoint path %s does not fit in %zu bytes", final, path_n);
    struct stat st;
    int existed = stat(final, &st) == 0;

    // RLIMIT_FSIZE must become EFBIG (an error we report), not SIGXFSZ (a dead job); HDF5 stays quiet
    struct sigaction ign, old_xfsz;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGXFSZ, &ign, &old_xfsz);
    H5Quiet q;
    h5_quiet_begin(&q);

    int rc = write_h5(tmp, s, &e), en;
    if (rc == 0 && rename(tmp, final) != 0) rc = error_set(&e, "renaming %s failed: %s", tmp, strerror(errno));
    if (rc != 0) unlink(tmp);
    else {
        if ((en = fsync_dir(dir)) != 0) rc = error_set(&e, "syncing directory %s failed: %s", dir, strerror(en));
        else rc = write_latest(dir, name, &e);
        if (rc != 0 && !existed) {  // unpublish: `latest` still names the previous checkpoint
            unlink(final);
            fsync_dir(dir);
        }
    }
    h5_quiet_end(&q);
    sigaction(SIGXFSZ, &old_xfsz, NULL);
    if (rc != 0)
        return error_set(err, "checkpoint %s not written: %s; the previous checkpoints and %s/latest are untouched",
                         final, e.msg, dir);
    rotate(dir, name, s->step, s->micro, keep);
    if (path_out) snprintf(path_out, path_n, "%s", final);
    return 0;
}

