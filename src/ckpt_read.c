// ckpt_read.c: reading and fully verifying a checkpoint file (seal, format, every dataset's
// checksum, shapes consistent with the layout).
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

// ---------------------------------------------------------------------------- reading

// Errors name the object at fault; ckpt_read prefixes the file.
static hid_t r_open(hid_t f, const char *name, Error *err) {
    htri_t ex = H5Lexists(f, name, H5P_DEFAULT);  // fails (not 0) when a parent group is missing
    if (ex <= 0) {
        H5Cause c;
        ckpt_h5_cause(&c);
        if (c.checksum) return error_set(err, "metadata checksum mismatch looking up /%s (the file is corrupt)", name);
        return error_set(err, "dataset /%s is missing", name);
    }
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    if (ds < 0) {
        H5Cause c;
        ckpt_h5_cause(&c);
        return error_set(err, "cannot open dataset /%s: %s%s", name, c.checksum ? "metadata checksum mismatch: " : "",
                         ckpt_cause_str(&c));
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
            ckpt_h5_cause(&c);
            if (c.fletcher) rc = error_set(err, "checksum mismatch in dataset /%s (the file is corrupt)", name);
            else if (c.checksum)
                rc = error_set(err, "metadata checksum mismatch reading dataset /%s (the file is corrupt)", name);
            else rc = error_set(err, "cannot read dataset /%s: %s", name, ckpt_cause_str(&c));
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
    ckpt_h5_cause(&c);
    if (ex == 0) return error_set(err, "attribute %s is missing", name);
    return error_set(err, "cannot open attribute %s: %s%s", name, c.checksum ? "metadata checksum mismatch: " : "",
                     ckpt_cause_str(&c));
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
        if (!ckpt_name_ok(s->names[i])) return error_set(err, "tensor %d has an invalid name '%s'", i, s->names[i]);
        int64_t r = s->shapes[i][0], c = s->shapes[i][1];
        if (r < 0 || c < 0 || (c > 0 && r > INT64_MAX / c) || r * c > numel_attr)
            return error_set(err, "tensor '%s' has shape [%lld, %lld]", s->names[i], (long long)r, (long long)c);
    }
    s->numel = (size_t)numel_attr;
    Error e;
    if (ckpt_state_check(s, 0, &e) != 0) return error_set(err, "inconsistent layout: %s", e.msg);

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
        h = ckpt_hash_words(h, buf, have);
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
    hid_t fapl = ckpt_h5_fapl(), f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Cause c;
    ckpt_h5_cause(&c);
    H5Pclose(fapl);
    int rc;
    if (f < 0) {
        rc = error_set(err, "not a valid HDF5 file%s (%s)", sealed ? " (file checksum mismatch)" : "", ckpt_cause_str(&c));
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

