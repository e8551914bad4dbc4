// ckpt.c: checkpoint files (ckpt.h; docs/checkpoint-format.md). One HDF5 file per checkpoint: every
// dataset chunked with fletcher32, metadata in the checksummed 1.10 formats, and a 512-byte user block
// that seals the whole file (size + checksum). Built in memory, written under a temporary name and
// published by rename + `latest`, so a crash never leaves a file that passes for valid and is not.
#include "actlora/ckpt.h"
#include "actlora/h5util.h"

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

#define CKPT_FORMAT "actlora-checkpoint"
#define CKPT_CHUNK_ELEMS ((hsize_t)1 << 20)  // at most 1 Mi elements (4 MiB of float32) per chunk
#define CKPT_PATH_MAX 4400
#define CKPT_USERBLOCK 512  // the seal: format, size and whole-file checksum, readable with head -c 512

// ---------------------------------------------------------------------------- HDF5 errors

// What the HDF5 error stack says about the last failure: the innermost description, checksum failures.
// (System errors never reach HDF5: the file is opened with open(2) first, and written by us.)
typedef struct {
    int fletcher, checksum;
    char desc[400];
} H5Cause;

static herr_t cause_walk(unsigned n, const H5E_error2_t *e, void *data) {
    H5Cause *c = data;
    const char *d = e->desc ? e->desc : "";
    if (n == 0) snprintf(c->desc, sizeof c->desc, "%s", d);
    if (strstr(d, "Fletcher32")) c->fletcher = 1;
    if (strstr(d, "checksum")) c->checksum = 1;
    return 0;
}

static void h5_cause(H5Cause *c) {
    memset(c, 0, sizeof *c);
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, cause_walk, c);  // upward: the innermost error first
    H5Eclear2(H5E_DEFAULT);
}

static const char *cause_str(const H5Cause *c) { return c->desc[0] ? c->desc : "HDF5 error"; }

static hid_t h5_fapl(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    // low bound 1.10: superblock v3, object header v2, single-chunk / fixed-array chunk indices, all
    // with checksums (the 1.8 formats still index chunks with unchecksummed v1 B-trees)
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_LATEST);
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
#if H5_VERSION_GE(1, 10, 7)
    H5Pset_file_locking(fapl, 0, 1);  // one writer under a private name; flock is unreliable on Lustre/NFS
#endif
    return fapl;
}

// ---------------------------------------------------------------------------- state checks

typedef struct {
    int64_t off, n;
    int i;
} Span;

static int span_cmp(const void *a, const void *b) {
    const Span *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off ? 1 : x->i - y->i;
}

static int name_ok(const char *s) {
    return s && s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

// The invariants of a CkptState (shared by write, on its input, and read, on what it loaded).
static int state_check(const CkptState *s, int writing, Error *err) {
    if (s->world < 1) return error_set(err, "world is %d", s->world);
    if (s->num_layers < 0 || s->n_selected < 0 || s->n_selected > s->num_layers)
        return error_set(err, "%d selected layers of %d", s->n_selected, s->num_layers);
    for (int i = 0; i < s->n_selected; i++)
        if (s->selected[i] < 0 || s->selected[i] >= s->num_layers)
            return error_set(err, "selected layer %d is outside 0..%d", s->selected[i], s->num_layers - 1);
    if (s->step < 0 || s->epoch < 0 || s->cursor < 0 || s->micro < 0)
        return error_set(err, "negative position (step %lld, epoch %lld, cursor %lld, micro %d)", (long long)s->step,
                         (long long)s->epoch, (long long)s->cursor, s->micro);
    if (s->n_tensors < 0) return error_set(err, "%d tensors", s->n_tensors);
    if (writing && (!s->config_text || (s->num_layers && !s->scores) || (s->n_selected && !s->selected) || !s->tokens ||
                    (s->numel && (!s->params || !s->adam_m || !s->adam_v)) ||
                    (s->micro > 0 && ((s->numel && !s->grads) || !s->loss_partial))))
        return error_set(err, "a buffer of the state is NULL");
    Span *sp = xmalloc(sizeof(Span) * (size_t)(s->n_tensors ? s->n_tensors : 1), "tensor spans");
    int rc = 0;
    for (int i = 0; i < s->n_tensors && rc == 0; i++) {
        int64_t r = s->shapes[i][0], c = s->shapes[i][1];
        if (!name_ok(s->names[i]))
            rc = error_set(err, "tensor %d has an invalid name '%s'", i, s->names[i] ? s->names[i] : "");
        else if (r < 0 || c < 0 || (c > 0 && r > INT64_MAX / c))
            rc = error_set(err, "tensor '%s' has shape [%lld, %lld]", s->names[i], (long long)r, (long long)c);
        else {
            sp[i] = (Span){s->offsets[i], r * c, i};
            for (int j = 0; j < i; j++)
                if (strcmp(s->names[j], s->names[i]) == 0)
                    rc = error_set(err, "tensor name '%s' appears twice", s->names[i]);
        }
    }
    if (rc == 0) {  // the tensors tile [0, numel): sorted by offset, each starts where the previous ends
        qsort(sp, (size_t)s->n_tensors, sizeof(Span), span_cmp);
        int64_t end = 0;
        for (int k = 0; k < s->n_tensors && rc == 0; k++) {
            if (sp[k].off != end)
                rc = error_set(err, "tensor '%s' starts at offset %lld, expected %lld (%s)", s->names[sp[k].i],
                               (long long)sp[k].off, (long long)end, sp[k].off < end ? "overlap" : "gap");
            else if (sp[k].n > INT64_MAX - end) rc = error_set(err, "tensor offsets overflow");
            else end += sp[k].n;
        }
        if (rc == 0 && (uint64_t)end != (uint64_t)s->numel)
            rc = error_set(err, "the tensors cover %lld elements but numel is %zu", (long long)end, s->numel);
    }
    free(sp);
    return rc;
}

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
    h5_cause(&w->cause);
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

// The whole-file checksum: FNV-1a over little-endian 64-bit words (the tail zero-padded), then the
// length. Any change of one word changes it (each step is a bijection).
static uint64_t hash_words(uint64_t h, const unsigned char *p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        h = (h ^ w) * 0x100000001b3ULL;
    }
    if (i < n) {
        unsigned char tail[8] = {0};
        memcpy(tail, p + i, n - i);
        h = hash_words(h, tail, 8);
    }
    return h;
}

// The user block: "actlora-checkpoint <version>\nbytes <file size>\nfnv1a64w <hex>\n", NUL-padded.
static void seal(unsigned char *m, size_t n) {
    uint64_t h = hash_words(FNV64_INIT, m + CKPT_USERBLOCK, n - CKPT_USERBLOCK);
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
    hid_t fapl = h5_fapl();
    H5Pset_fapl_core(fapl, (size_t)16 << 20, 0);
    H5Pset_file_image_callbacks(fapl, &cb);
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_userblock(fcpl, CKPT_USERBLOCK);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, fcpl, fapl);
    if (f < 0) w_fail(&w, "creating");  // before H5Pclose, which clears the error stack
    H5Pclose(fcpl);
    H5Pclose(fapl);
    if (f < 0) return error_set(err, "creating %s (in memory) failed: %s", tmp, cause_str(&w.cause));
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
    if (w.failed) rc = error_set(err, "%s %s (in memory) failed: %s", w.what, tmp, cause_str(&w.cause));
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

// ---------------------------------------------------------------------------- directory listing

typedef struct {
    int64_t step;
    int micro;
    char name[256];
} CkptEntry;

// "ckpt-<step>-<micro>.h5", decimal digits only.
static int parse_name(const char *name, int64_t *step, int *micro) {
    if (strncmp(name, "ckpt-", 5) != 0 || !isdigit((unsigned char)name[5])) return 0;
    char *end;
    errno = 0;
    long long st = strtoll(name + 5, &end, 10);
    if (errno || *end != '-' || !isdigit((unsigned char)end[1])) return 0;
    long mi = strtol(end + 1, &end, 10);
    if (errno || mi > INT_MAX || strcmp(end, ".h5") != 0) return 0;
    *step = st;
    *micro = (int)mi;
    return 1;
}

static int entry_cmp(const void *a, const void *b) {  // newest first
    const CkptEntry *x = a, *y = b;
    if (x->step != y->step) return x->step > y->step ? -1 : 1;
    if (x->micro != y->micro) return x->micro > y->micro ? -1 : 1;
    return strcmp(x->name, y->name);
}

// The ckpt-*.h5 of dir, newest first. Returns the count, or -1 with errno set.
static int list_ckpts(const char *dir, CkptEntry **out) {
    DIR *dp = opendir(dir);
    if (!dp) return -1;
    int n = 0, cap = 16;
    CkptEntry *e = xmalloc(sizeof(CkptEntry) * (size_t)cap, "checkpoint list");
    struct dirent *de;
    while ((de = readdir(dp)) != NULL) {
        int64_t st;
        int mi;
        if (strlen(de->d_name) >= sizeof e->name || !parse_name(de->d_name, &st, &mi)) continue;
        if (n == cap) {
            cap *= 2;
            CkptEntry *ne = realloc(e, sizeof(CkptEntry) * (size_t)cap);
            check(ne, "out of memory listing %s", dir);
            e = ne;
        }
        e[n].step = st;
        e[n].micro = mi;
        snprintf(e[n].name, sizeof e[n].name, "%s", de->d_name);
        n++;
    }
    closedir(dp);
    qsort(e, (size_t)n, sizeof *e, entry_cmp);
    *out = e;
    return n;
}

// Keeps the newest `keep` checkpoints that are not newer than the one just written (which is among
// them: `latest` names it). Checkpoints newer than it (an abandoned future, e.g. after resuming from an
// older file) are left alone. Best effort: the new checkpoint is already published.
static void rotate(const char *dir, const char *written, int64_t step, int micro, int keep) {
    CkptEntry *e = NULL;
    int n = list_ckpts(dir, &e);
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
    if (state_check(s, 1, &e) != 0)
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

// ---------------------------------------------------------------------------- reading

// Errors name the object at fault; ckpt_read prefixes the file.
static hid_t r_open(hid_t f, const char *name, Error *err) {
    htri_t ex = H5Lexists(f, name, H5P_DEFAULT);  // fails (not 0) when a parent group is missing
    if (ex <= 0) {
        H5Cause c;
        h5_cause(&c);
        if (c.checksum) return error_set(err, "metadata checksum mismatch looking up /%s (the file is corrupt)", name);
        return error_set(err, "dataset /%s is missing", name);
    }
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    if (ds < 0) {
        H5Cause c;
        h5_cause(&c);
        return error_set(err, "cannot open dataset /%s: %s%s", name, c.checksum ? "metadata checksum mismatch: " : "",
                         cause_str(&c));
    }
    return ds;
}

// Reads dataset `name` of the expected rank, element class and size into buf (allocated here when
// *buf is NULL). want[k] < 0 accepts any extent and returns it in got.
static int r_dset(hid_t f, const char *name, hid_t mtype, int rank, const int64_t *want, hsize_t *got, void **buf,
                  Error *err) {
    hid_t ds = r_open(f, name, err);
    if (ds < 0) return -1;
    hid_t ft = H5Dget_type(ds), sp = H5Dget_space(ds);
    hsize_t dims[4] = {0, 0, 0, 0};
    int r = H5Sget_simple_extent_ndims(sp), rc = 0;
    if (H5Tget_class(ft) != H5Tget_class(mtype) || H5Tget_size(ft) != H5Tget_size(mtype) ||
        (H5Tget_class(ft) == H5T_INTEGER && H5Tget_sign(ft) != H5Tget_sign(mtype)))
        rc = error_set(err, "dataset /%s has the wrong element type", name);
    else if (r != rank || H5Sget_simple_extent_dims(sp, dims, NULL) < 0)
        rc = error_set(err, "dataset /%s has rank %d, expected %d", name, r, rank);
    for (int k = 0; k < rank && rc == 0; k++)  // want[k] < 0 only for rank-1 datasets of any length
        if (want[k] >= 0 && dims[k] != (hsize_t)want[k])
            rc = rank == 1 ? error_set(err, "dataset /%s has shape [%llu], expected [%lld]", name,
                                       (unsigned long long)dims[0], (long long)want[0])
                           : error_set(err, "dataset /%s has shape [%llu, %llu], expected [%lld, %lld]", name,
                                       (unsigned long long)dims[0], (unsigned long long)dims[1], (long long)want[0],
                                       (long long)want[1]);
    if (rc == 0) {
        size_t n = H5Tget_size(mtype);
        for (int k = 0; k < rank; k++)
            if (size_mul(n, (size_t)dims[k], &n) != 0) rc = error_set(err, "dataset /%s is too large", name);
        if (rc == 0 && !*buf) *buf = xmalloc(n + 1, name);  // +1: room for a NUL after byte strings
        if (rc == 0 && n > 0 && H5Dread(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, *buf) < 0) {
            H5Cause c;
            h5_cause(&c);
            if (c.fletcher) rc = error_set(err, "checksum mismatch in dataset /%s (the file is corrupt)", name);
            else if (c.checksum)
                rc = error_set(err, "metadata checksum mismatch reading dataset /%s (the file is corrupt)", name);
            else rc = error_set(err, "cannot read dataset /%s: %s", name, cause_str(&c));
        }
    }
    if (got)
        for (int k = 0; k < rank; k++) got[k] = dims[k];
    H5Tclose(ft);
    H5Sclose(sp);
    H5Dclose(ds);
    return rc;
}

static hid_t r_attr_open(hid_t f, const char *name, Error *err) {
    htri_t ex = H5Aexists(f, name);
    hid_t a = ex > 0 ? H5Aopen(f, name, H5P_DEFAULT) : -1;
    if (a >= 0) return a;
    H5Cause c;
    h5_cause(&c);
    if (ex == 0) return error_set(err, "attribute %s is missing", name);
    return error_set(err, "cannot open attribute %s: %s%s", name, c.checksum ? "metadata checksum mismatch: " : "",
                     cause_str(&c));
}

static int r_attr(hid_t f, const char *name, hid_t mtype, void *v, Error *err) {
    hid_t a = r_attr_open(f, name, err), t = a >= 0 ? H5Aget_type(a) : -1, sp = a >= 0 ? H5Aget_space(a) : -1;
    int rc = 0;
    if (a < 0) return -1;
    if (t < 0 || sp < 0) rc = error_set(err, "cannot open attribute %s", name);
    else if (H5Tget_class(t) != H5Tget_class(mtype) || H5Sget_simple_extent_npoints(sp) != 1)
        rc = error_set(err, "attribute %s has the wrong type", name);
    else if (H5Aread(a, mtype, v) < 0) rc = error_set(err, "cannot read attribute %s", name);
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
    H5Aclose(a);
    H5Eclear2(H5E_DEFAULT);
    return rc;
}

static int r_attr_str(hid_t f, const char *name, char *buf, size_t n, Error *err) {
    hid_t a = r_attr_open(f, name, err);
    if (a < 0) return -1;
    hid_t t = H5Aget_type(a), m = H5Tcopy(H5T_C_S1);
    int rc = 0;
    if (t < 0 || H5Tget_class(t) != H5T_STRING || H5Tis_variable_str(t) || H5Tget_size(t) >= n)
        rc = error_set(err, "attribute %s is not a short fixed-length string", name);
    else {
        memset(buf, 0, n);
        H5Tset_size(m, n - 1);
        H5Tset_cset(m, H5Tget_cset(t));  // HDF5 does not convert between ASCII and UTF-8
        if (H5Aread(a, m, buf) < 0) rc = error_set(err, "cannot read attribute %s", name);
    }
    H5Tclose(m);
    if (t >= 0) H5Tclose(t);
    H5Aclose(a);
    H5Eclear2(H5E_DEFAULT);
    return rc;
}

static int r_int(hid_t f, const char *name, int64_t lo, int64_t hi, int64_t *v, Error *err) {
    if (r_attr(f, name, H5T_NATIVE_INT64, v, err) != 0) return -1;
    if (*v < lo || *v > hi) return error_set(err, "attribute %s = %lld is out of range", name, (long long)*v);
    return 0;
}

// Everything in an open file into s (which the caller frees on failure).
static int read_h5(hid_t f, CkptState *s, Error *err) {
    char format[64];
    int64_t v, nt_attr, numel_attr;
    if (r_attr_str(f, "format", format, sizeof format, err) != 0) return -1;
    if (strcmp(format, CKPT_FORMAT) != 0)
        return error_set(err, "not an actlora checkpoint (format '%s', expected '%s')", format, CKPT_FORMAT);
    if (r_int(f, "format_version", INT32_MIN, INT32_MAX, &v, err) != 0) return -1;
    if (v > CKPT_FORMAT_VERSION)
        return error_set(err, "written by a newer actlora-mpi (format %lld); this build reads format %d", (long long)v,
                         CKPT_FORMAT_VERSION);
    if (v != CKPT_FORMAT_VERSION)
        return error_set(err, "unknown format_version %lld; this build reads format %d", (long long)v,
                         CKPT_FORMAT_VERSION);
    if (r_attr(f, "config_hash", H5T_NATIVE_UINT64, &s->config_hash, err) ||
        r_attr(f, "model_fingerprint", H5T_NATIVE_UINT64, &s->model_fingerprint, err) ||
        r_attr(f, "seed", H5T_NATIVE_UINT64, &s->seed, err) ||
        r_attr(f, "wall_s", H5T_NATIVE_DOUBLE, &s->wall_s, err) || r_int(f, "step", 0, INT64_MAX, &s->step, err) ||
        r_int(f, "epoch", 0, INT64_MAX, &s->epoch, err) || r_int(f, "cursor", 0, INT64_MAX, &s->cursor, err) ||
        r_int(f, "n_tensors", 0, INT32_MAX, &nt_attr, err) || r_int(f, "numel", 0, INT64_MAX, &numel_attr, err))
        return -1;
    if (r_int(f, "world", 1, INT32_MAX, &v, err) != 0) return -1;
    s->world = (int)v;
    if (r_int(f, "micro", 0, INT32_MAX, &v, err) != 0) return -1;
    s->micro = (int)v;
    if (r_int(f, "num_layers", 0, INT32_MAX, &v, err) != 0) return -1;
    s->num_layers = (int)v;
    if (r_int(f, "n_selected", 0, s->num_layers, &v, err) != 0) return -1;
    s->n_selected = (int)v;

    int64_t any[2] = {-1, -1}, want[2];
    hsize_t got[2];
    if (r_dset(f, "config_text", H5T_NATIVE_UCHAR, 1, any, got, (void **)&s->config_text, err) != 0) return -1;
    s->config_text[got[0]] = '\0';
    if (strlen(s->config_text) != got[0]) return error_set(err, "dataset /config_text holds a NUL byte");
    want[0] = s->num_layers;
    if (r_dset(f, "selection/scores", H5T_NATIVE_DOUBLE, 1, want, NULL, (void **)&s->scores, err) != 0) return -1;
    want[0] = s->n_selected;
    if (r_dset(f, "selection/selected", H5T_NATIVE_INT, 1, want, NULL, (void **)&s->selected, err) != 0) return -1;

    // layout: offsets define n_tensors; shapes and names must agree
    want[0] = nt_attr;
    if (r_dset(f, "layout/offsets", H5T_NATIVE_INT64, 1, want, NULL, (void **)&s->offsets, err) != 0) return -1;
    s->n_tensors = (int)nt_attr;
    want[1] = 2;
    if (r_dset(f, "layout/shapes", H5T_NATIVE_INT64, 2, want, NULL, (void **)&s->shapes, err) != 0) return -1;
    char *names = NULL;
    if (r_dset(f, "layout/names", H5T_NATIVE_UCHAR, 1, any, got, (void **)&names, err) != 0) {
        free(names);
        return -1;
    }
    s->names = xcalloc((size_t)(s->n_tensors ? s->n_tensors : 1), sizeof(char *), "tensor names");
    size_t pos = 0;
    for (int i = 0; i < s->n_tensors; i++) {
        char *nul = pos < got[0] ? memchr(names + pos, '\0', got[0] - pos) : NULL;
        if (!nul) break;
        s->names[i] = xstrdup(names + pos);
        pos = (size_t)(nul - names) + 1;
    }
    free(names);
    if (pos != got[0] || (s->n_tensors && !s->names[s->n_tensors - 1]))
        return error_set(err, "dataset /layout/names does not hold %d NUL-terminated names", s->n_tensors);
    for (int i = 0; i < s->n_tensors; i++) {
        if (!name_ok(s->names[i])) return error_set(err, "tensor %d has an invalid name '%s'", i, s->names[i]);
        int64_t r = s->shapes[i][0], c = s->shapes[i][1];
        if (r < 0 || c < 0 || (c > 0 && r > INT64_MAX / c) || r * c > numel_attr)
            return error_set(err, "tensor '%s' has shape [%lld, %lld]", s->names[i], (long long)r, (long long)c);
    }
    s->numel = (size_t)numel_attr;
    Error e;
    if (state_check(s, 0, &e) != 0) return error_set(err, "inconsistent layout: %s", e.msg);

    // params: exactly the layout's tensors, each of its shape
    H5G_info_t gi;
    if (H5Gget_info_by_name(f, "params", &gi, H5P_DEFAULT) < 0) {
        H5Eclear2(H5E_DEFAULT);
        return error_set(err, "group /params is missing or unreadable");
    }
    if (gi.nlinks != (hsize_t)s->n_tensors)
        return error_set(err, "group /params holds %llu tensors, the layout %d", (unsigned long long)gi.nlinks,
                         s->n_tensors);
    size_t bytes;
    if (size_mul(s->numel, sizeof(float), &bytes) != 0) return error_set(err, "numel %zu is too large", s->numel);
    s->params = xmalloc(bytes, "checkpoint params");
    for (int i = 0; i < s->n_tensors; i++) {
        char name[320];
        if (snprintf(name, sizeof name, "params/%s", s->names[i]) >= (int)sizeof name)
            return error_set(err, "tensor name too long: %s", s->names[i]);
        void *dst = s->params + s->offsets[i];
        if (r_dset(f, name, H5T_NATIVE_FLOAT, 2, s->shapes[i], NULL, &dst, err) != 0) return -1;
    }
    want[0] = numel_attr;
    if (r_dset(f, "optimizer/adam_m", H5T_NATIVE_FLOAT, 1, want, NULL, (void **)&s->adam_m, err) != 0 ||
        r_dset(f, "optimizer/adam_v", H5T_NATIVE_FLOAT, 1, want, NULL, (void **)&s->adam_v, err) != 0)
        return -1;

    htri_t has_partial = H5Lexists(f, "partial", H5P_DEFAULT);
    H5Eclear2(H5E_DEFAULT);
    if (has_partial < 0) return error_set(err, "cannot look up group /partial (metadata corrupt)");
    if (s->micro > 0 && !has_partial) return error_set(err, "micro is %d but group /partial is missing", s->micro);
    if (s->micro == 0 && has_partial) return error_set(err, "micro is 0 but the file holds a group /partial");
    if (s->micro > 0) {
        want[0] = s->world;
        want[1] = numel_attr;
        if (r_dset(f, "partial/grads", H5T_NATIVE_FLOAT, 2, want, NULL, (void **)&s->grads, err) != 0 ||
            r_dset(f, "partial/loss", H5T_NATIVE_DOUBLE, 1, want, NULL, (void **)&s->loss_partial, err) != 0)
            return -1;
    }
    want[0] = s->world;
    if (r_dset(f, "counters/tokens", H5T_NATIVE_INT64, 1, want, NULL, (void **)&s->tokens, err) != 0) return -1;
    want[0] = PHASE_COUNT;
    void *ledger = s->ledger;
    if (r_dset(f, "counters/ledger", H5T_NATIVE_DOUBLE, 1, want, NULL, &ledger, err) != 0) return -1;
    return 0;
}

// The header must be exactly what seal() writes, padding included.
static int header_ok(const char *head, int version, size_t bytes, unsigned long long want) {
    char exp[CKPT_USERBLOCK] = {0};
    snprintf(exp, sizeof exp, "%s %d\nbytes %zu\nfnv1a64w %016llx\n", CKPT_FORMAT, version, bytes, want);
    return memcmp(exp, head, CKPT_USERBLOCK) == 0;
}

// The seal: header, size, whole-file checksum. Returns 0 (good), 1 (checksum mismatch: let HDF5 say
// where) or -1 with err (not a checkpoint, newer format, truncated: HDF5 is not to see the file).
static int check_seal(const char *path, Error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return error_set(err, "cannot open: %s", strerror(errno));
    struct stat st;
    char head[CKPT_USERBLOCK + 1] = {0};
    ssize_t got = fstat(fd, &st) == 0 ? pread(fd, head, CKPT_USERBLOCK, 0) : -1;
    int version = 0, rc = 0;
    size_t bytes = 0;
    unsigned long long want = 0;
    int fields = sscanf(head, CKPT_FORMAT " %d bytes %zu fnv1a64w %llx", &version, &bytes, &want);
    if (got < 0) rc = error_set(err, "cannot read: %s", strerror(errno));
    else if (!S_ISREG(st.st_mode)) rc = error_set(err, "not a regular file");
    else if (fields < 1)
        rc = error_set(err, "not an actlora checkpoint (no '%s' header%s)", CKPT_FORMAT,
                       got < CKPT_USERBLOCK ? "; truncated?" : "");
    else if (version > CKPT_FORMAT_VERSION)
        rc = error_set(err, "written by a newer actlora-mpi (format %d); this build reads format %d", version,
                       CKPT_FORMAT_VERSION);
    else if (version != CKPT_FORMAT_VERSION || fields < 3)
        rc = error_set(err, "unknown checkpoint format %d or damaged header; this build reads format %d", version,
                       CKPT_FORMAT_VERSION);
    else if ((size_t)st.st_size != bytes)
        rc = error_set(err, "%s: %lld of the %zu bytes written",
                       (size_t)st.st_size < bytes ? "truncated" : "wrong size", (long long)st.st_size, bytes);
    else if (!header_ok(head, version, bytes, want))
        rc = error_set(err, "damaged header (first %d bytes)", CKPT_USERBLOCK);
    if (rc != 0) {
        close(fd);
        return rc;
    }
    size_t blk = (size_t)4 << 20, off = CKPT_USERBLOCK;
    unsigned char *buf = xmalloc(blk, "checkpoint checksum buffer");
    uint64_t h = FNV64_INIT;
    while (off < bytes && rc == 0) {  // whole blocks (multiples of 8 bytes) to hash_words
        size_t want_n = bytes - off < blk ? bytes - off : blk, have = 0;
        while (have < want_n && rc == 0) {
            ssize_t r = pread(fd, buf + have, want_n - have, (off_t)(off + have));
            if (r > 0) have += (size_t)r;
            else if (r == 0) rc = error_set(err, "truncated while reading at byte %zu", off + have);
            else if (errno != EINTR) rc = error_set(err, "read error at byte %zu: %s", off + have, strerror(errno));
        }
        h = hash_words(h, buf, have);
        off += have;
    }
    free(buf);
    close(fd);
    if (rc != 0) return rc;
    h = (h ^ (uint64_t)(bytes - CKPT_USERBLOCK)) * 0x100000001b3ULL;
    return h == want ? 0 : 1;
}

// ckpt_read without the path in the message (ckpt_find_latest words its warnings itself).
static int read_file(const char *path, CkptState *s, Error *err) {
    memset(s, 0, sizeof *s);
    int sealed = check_seal(path, err);
    if (sealed < 0) return -1;
    H5Quiet q;
    h5_quiet_begin(&q);
    hid_t fapl = h5_fapl(), f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Cause c;
    h5_cause(&c);
    H5Pclose(fapl);
    int rc;
    if (f < 0) {
        rc = error_set(err, "not a valid HDF5 file%s (%s)", sealed ? " (file checksum mismatch)" : "", cause_str(&c));
    } else {
        rc = read_h5(f, s, err);
        if (H5Fclose(f) < 0 && rc == 0) rc = error_set(err, "closing the file failed");
    }
    H5Eclear2(H5E_DEFAULT);
    h5_quiet_end(&q);
    if (rc == 0 && sealed) rc = error_set(err, "file checksum mismatch: the file is corrupt");
    if (rc != 0) ckpt_state_free(s);
    return rc;
}

int ckpt_read(const char *path, CkptState *s, Error *err) {
    Error e;
    if (read_file(path, s, &e) == 0) return 0;
    return error_set(err, "checkpoint %s: %s", path, e.msg);
}

void ckpt_state_free(CkptState *s) {
    if (s->names)
        for (int i = 0; i < s->n_tensors; i++) free(s->names[i]);
    free(s->names);
    free(s->config_text);
    free(s->scores);
    free(s->selected);
    free(s->shapes);
    free(s->offsets);
    free(s->params);
    free(s->adam_m);
    free(s->adam_v);
    free(s->grads);
    free(s->loss_partial);
    free(s->tokens);
    memset(s, 0, sizeof *s);
}

// ---------------------------------------------------------------------------- finding the newest

__attribute__((format(printf, 3, 4))) static void warn_add(char *w, size_t n, const char *fmt, ...) {
    if (!w || n == 0) return;
    size_t len = strlen(w);
    if (len + 1 >= n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w + len, n - len, fmt, ap);
    va_end(ap);
    len = strlen(w);
    if (len + 1 < n) strcat(w, "\n");
}

static int verify(const char *path, Error *err) {
    CkptState s;
    int rc = read_file(path, &s, err);
    ckpt_state_free(&s);
    return rc;
}

int ckpt_find_latest(const char *dir, char *path_out, size_t path_n, char *warnings, size_t warn_n, Error *err) {
    if (warnings && warn_n) warnings[0] = '\0';
    CkptEntry *e = NULL;
    int n = list_ckpts(dir, &e);
    if (n < 0) {
        if (errno == ENOENT) return 0;  // no directory yet: no checkpoint
        return error_set(err, "cannot read checkpoint directory %s: %s", dir, strerror(errno));
    }
    char path[CKPT_PATH_MAX], latest[CKPT_PATH_MAX], rejected[300] = "";
    snprintf(latest, sizeof latest, "%s/latest", dir);
    int found = 0;
    Error e2;
    size_t len;
    struct stat st;
    int have = stat(latest, &st) == 0, stat_errno = errno;
    char *text = have ? file_read_all(latest, &len, &e2) : NULL;
    if (!have && stat_errno != ENOENT) {
        warn_add(warnings, warn_n, "%s: %s; falling back to scanning for checkpoints", latest, strerror(stat_errno));
    } else if (have && !text) {
        warn_add(warnings, warn_n, "%s; falling back to scanning for checkpoints", e2.msg);
    } else if (text) {
        char *a = text, *b = text + len;  // strip whitespace
        while (a < b && isspace((unsigned char)*a)) a++;
        while (b > a && isspace((unsigned char)b[-1])) b--;
        *b = '\0';
        int64_t sn;
        int mi;
        if (!parse_name(a, &sn, &mi) || strlen(a) >= sizeof rejected) {
            warn_add(warnings, warn_n,
                     "%s: names '%.200s', which is not a checkpoint file name; falling back to an "
                     "older checkpoint",
                     latest, a);
        } else {
            snprintf(rejected, sizeof rejected, "%s", a);
            snprintf(path, sizeof path, "%s/%s", dir, a);
            if (verify(path, &e2) == 0) found = 1;
            else
                warn_add(warnings, warn_n, "%s: %s (named by %s); falling back to an older checkpoint", path, e2.msg,
                         latest);
        }
        free(text);
    }
    for (int i = 0; i < n && !found; i++) {
        if (strcmp(e[i].name, rejected) == 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e[i].name);
        if (verify(path, &e2) == 0) found = 1;
        else warn_add(warnings, warn_n, "%s: %s; falling back to an older checkpoint", path, e2.msg);
    }
    free(e);
    if (!found) return 0;
    if (strlen(path) >= path_n) return error_set(err, "checkpoint path %s does not fit in %zu bytes", path, path_n);
    snprintf(path_out, path_n, "%s", path);
    return 1;
}
