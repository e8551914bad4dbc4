// ckpt.c: checkpoint files (ckpt.h; docs/checkpoint-format.md): what the writer (ckpt_write.c)
// and the reader (ckpt_read.c) share, and finding the newest valid checkpoint of a directory.
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

// ---------------------------------------------------------------------------- HDF5 errors



static herr_t cause_walk(unsigned n, const H5E_error2_t *e, void *data) {
    H5Cause *c = data;
    const char *d = e->desc ? e->desc : "";
    if (n == 0) snprintf(c->desc, sizeof c->desc, "%s", d);
    if (strstr(d, "Fletcher32")) c->fletcher = 1;
    if (strstr(d, "checksum")) c->checksum = 1;
    return 0;
}

void ckpt_h5_cause(H5Cause *c) {
    memset(c, 0, sizeof *c);
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, cause_walk, c);  // upward: the innermost error first
    H5Eclear2(H5E_DEFAULT);
}

const char *ckpt_cause_str(const H5Cause *c) { return c->desc[0] ? c->desc : "HDF5 error"; }

hid_t ckpt_h5_fapl(void) {
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

int ckpt_name_ok(const char *s) {
    return s && s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

// The invariants of a CkptState (shared by write, on its input, and read, on what it loaded).
int ckpt_state_check(const CkptState *s, int writing, Error *err) {
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
        if (!ckpt_name_ok(s->names[i]))
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

// The whole-file checksum: FNV-1a over little-endian 64-bit words (the tail zero-padded), then the
// length. Any change of one word changes it (each step is a bijection).
uint64_t ckpt_hash_words(uint64_t h, const unsigned char *p, size_t n) {
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
        h = ckpt_hash_words(h, tail, 8);
    }
    return h;
}


// ---------------------------------------------------------------------------- directory listing



// "ckpt-<step>-<micro>.h5", decimal digits only.
int ckpt_parse_name(const char *name, int64_t *step, int *micro) {
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
int ckpt_list(const char *dir, CkptEntry **out) {
    DIR *dp = opendir(dir);
    if (!dp) return -1;
    int n = 0, cap = 16;
    CkptEntry *e = xmalloc(sizeof(CkptEntry) * (size_t)cap, "checkpoint list");
    struct dirent *de;
    while ((de = readdir(dp)) != NULL) {
        int64_t st;
        int mi;
        if (strlen(de->d_name) >= sizeof e->name || !ckpt_parse_name(de->d_name, &st, &mi)) continue;
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
    int rc = ckpt_read(path, &s, err);
    ckpt_state_free(&s);
    return rc;
}

int ckpt_find_latest(const char *dir, char *path_out, size_t path_n, char *warnings, size_t warn_n, Error *err) {
    if (warnings && warn_n) warnings[0] = '\0';
    CkptEntry *e = NULL;
    int n = ckpt_list(dir, &e);
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
        if (!ckpt_parse_name(a, &sn, &mi) || strlen(a) >= sizeof rejected) {
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
