// safetensors.c: a defensive mmap reader and an atomic writer for the safetensors format.
//   [u64 little-endian N][N bytes of UTF-8 JSON header, space padded][data section]
// The reader is as strict as the reference (Rust) implementation -- the tensors must tile the data
// section exactly, in any header order -- and stricter where our types are narrower: at most
// ST_MAX_DIMS dimensions, the ten dtypes of StDtype, integers below 2^53.
#include "actlora/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// Tensor bytes are little-endian on disk and are reinterpreted in place (memcpy) here.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

// A header is JSON for a few thousand tensors at most; anything bigger is hostile or broken
// (the Rust loader uses the same 100 MB cap).
#define ST_MAX_HEADER (100u * 1000u * 1000u)
// Integers in the header arrive as doubles through cJSON: only values below 2^53 are exact.
#define ST_MAX_JSON_INT 9007199254740992.0

static const char *const dtype_names[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"};
static const size_t dtype_sizes[] = {8, 4, 2, 2, 8, 4, 2, 1, 1, 1};
#define ST_N_DTYPES ((int)(sizeof dtype_names / sizeof dtype_names[0]))

const char *st_dtype_name(StDtype d) {
    return ((int)d >= 0 && (int)d < ST_N_DTYPES) ? dtype_names[d] : "?";
}

size_t st_dtype_size(StDtype d) {
    return ((int)d >= 0 && (int)d < ST_N_DTYPES) ? dtype_sizes[d] : 0;
}

static int dtype_from_name(const char *s, StDtype *out) {
    for (int i = 0; i < ST_N_DTYPES; i++) {
        if (strcmp(s, dtype_names[i]) == 0) {
            *out = (StDtype)i;
            return 0;
        }
    }
    return -1;
}

// "[64, 64]" into buf (truncated if it does not fit; only used for messages).
static const char *shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = 0;
    k += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
    return buf;
}

// Describes a JSON value for "expected X, found Y" messages.
const char *json_kind(const cJSON *v) {
    if (!v) return "nothing";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an invalid value";
}

// Compact JSON text of v for messages, cut to fit buf (hostile headers can hold huge values).
static const char *json_snippet(char *buf, size_t cap, const cJSON *v) {
    char *txt = v ? cJSON_PrintUnformatted(v) : NULL;
    if (!txt) {
        snprintf(buf, cap, "%s", json_kind(v));
        return buf;
    }
    if (strlen(txt) >= cap && cap > 4) snprintf(buf, cap, "%.*s...", (int)(cap - 4), txt);
    else snprintf(buf, cap, "%s", txt);
    cJSON_free(txt);
    return buf;
}

// A JSON number that is a non-negative integer exactly representable in a double.
static int json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d >= ST_MAX_JSON_INT || d != floor(d)) return -1;
    *out = (uint64_t)d;
    return 0;
}

// Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF): the spec requires a UTF-8 header and
// tensor names end up in messages and in files we write. Returns the offset of the first bad
// byte, or n when all is well.
static size_t utf8_check(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xe0) == 0xc0) { len = 2; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { len = 3; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { len = 4; cp = c & 0x07; min = 0x10000; }
        else return i;
        if (n - i < len) return i;
        for (size_t j = 1; j < len; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += len;
    }
    return n;
}

void safetensors_close(SafeTensors *st) {
    if (!st) return;
    if (st->map && st->map != MAP_FAILED) munmap(st->map, st->map_size);
    for (int i = 0; i < st->n; i++) free(st->tensors[i].name);
    free(st->tensors);
    for (int i = 0; i < st->n_meta; i++) {
        free(st->meta_keys[i]);
        free(st->meta_vals[i]);
    }
    free(st->meta_keys);
    free(st->meta_vals);
    free(st->path);
    memset(st, 0, sizeof *st);
}

// Parses "__metadata__": a string -> string object. null is accepted as "no metadata" because
// the reference loader models it as Option<HashMap<String, String>>.
static int parse_metadata(SafeTensors *st, const cJSON *m, Error *err) {
    if (cJSON_IsNull(m)) return 0;
    if (!cJSON_IsObject(m))
        return error_set(err, "%s: __metadata__ must be an object of strings, found %s", st->path, json_kind(m));
    int n = cJSON_GetArraySize(m);
    st->meta_keys = xcalloc((size_t)n, sizeof(char *), "safetensors metadata keys");
    st->meta_vals = xcalloc((size_t)n, sizeof(char *), "safetensors metadata values");
    const cJSON *kv;
    cJSON_ArrayForEach(kv, m) {
        if (!cJSON_IsString(kv))
            return error_set(err, "%s: __metadata__ key '%s' must map to a string, found %s", st->path,
                             kv->string, json_kind(kv));
        for (int i = 0; i < st->n_meta; i++)
            if (strcmp(st->meta_keys[i], kv->string) == 0)
                return error_set(err, "%s: __metadata__ key '%s' appears twice", st->path, kv->string);
        st->meta_keys[st->n_meta] = xstrdup(kv->string);
        st->meta_vals[st->n_meta] = xstrdup(kv->valuestring);
        st->n_meta++;
    }
    return 0;
}

// Parses one header entry into t (name already set); begin/end are relative to the data section.
static int parse_entry(const SafeTensors *st, StTensor *t, const cJSON *e, size_t data_size, uint64_t *begin,
                       uint64_t *end, Error *err) {
    const char *p = st->path, *nm = t->name;
    if (!cJSON_IsObject(e))
        return error_set(err, "%s: tensor '%s': expected an object {dtype, shape, data_offsets}, found %s", p, nm,
                         json_kind(e));

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(dt))
        return error_set(err, "%s: tensor '%s': \"dtype\" must be a string, found %s", p, nm, json_kind(dt));
    if (dtype_from_name(dt->valuestring, &t->dtype) != 0)
        return error_set(err, "%s: tensor '%s': unknown dtype '%s' (supported: F64, F32, F16, BF16, I64, I32, I16, "
                              "I8, U8, BOOL)", p, nm, dt->valuestring);

    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(sh))
        return error_set(err, "%s: tensor '%s': \"shape\" must be an array of non-negative integers, found %s", p,
                         nm, json_kind(sh));
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS)
        return error_set(err, "%s: tensor '%s': shape has %d dimensions, at most %d are supported", p, nm, nd,
                         ST_MAX_DIMS);
    t->ndim = nd;
    size_t numel = 1;
    int k = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, sh) {
        uint64_t v;
        if (json_uint(d, &v) != 0) {
            char sn[80];
            return error_set(err, "%s: tensor '%s': shape[%d] must be a non-negative integer below 2^53, found %s", p,
                             nm, k, json_snippet(sn, sizeof sn, d));
        }
        t->shape[k++] = (int64_t)v;
        if (size_mul(numel, (size_t)v, &numel) != 0)
            return error_set(err, "%s: tensor '%s': element count of its shape overflows", p, nm);
    }
    t->numel = numel;
    size_t need;
    if (size_mul(numel, st_dtype_size(t->dtype), &need) != 0)
        return error_set(err, "%s: tensor '%s': byte size of %s with %zu elements overflows", p, nm,
                         st_dtype_name(t->dtype), numel);

    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || json_uint(cJSON_GetArrayItem(off, 0), begin) != 0 ||
        json_uint(cJSON_GetArrayItem(off, 1), end) != 0) {
        char sn[80];
        return error_set(err, "%s: tensor '%s': \"data_offsets\" must be [begin, end] with non-negative integers, "
                              "found %s", p, nm, off ? json_snippet(sn, sizeof sn, off) : "nothing");
    }
    if (*begin > *end)
        return error_set(err, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 ") begin after end", p, nm,
                         *begin, *end);
    if (*end > data_size)
        return error_set(err, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 ") end beyond the data "
                              "section of %zu bytes (truncated file?)", p, nm, *begin, *end, data_size);
    t->nbytes = (size_t)(*end - *begin);
    if (t->nbytes != need) {
        char sb[160];
        return error_set(err, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 ") hold %zu bytes but %s %s "
                              "needs %zu", p, nm, *begin, *end, t->nbytes, st_dtype_name(t->dtype),
                         shape_str(sb, sizeof sb, t->ndim, t->shape), need);
    }
    return 0;
}

typedef struct {
    uint64_t begin, end;
    int idx;
} Span;

static int span_cmp(const void *a, const void *b) {
    const Span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->idx - y->idx;
}

static int name_cmp(const void *a, const void *b) {
    const StTensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

// Parses the header and fills st->tensors / st->meta_*; the mapping is already in place.
static int parse_header(SafeTensors *st, const char *hdr, size_t hlen, const unsigned char *data, size_t data_size,
                        Error *err) {
    const char *p = st->path;
    // Raw control bytes are not valid JSON, and an embedded NUL would silently cut names short.
    for (size_t i = 0; i < hlen; i++) {
        unsigned char c = (unsigned char)hdr[i];
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
            return error_set(err, "%s: header is not valid JSON: control byte 0x%02x at header offset %zu", p, c, i);
    }
    size_t bad = utf8_check((const unsigned char *)hdr, hlen);
    if (bad != hlen) return error_set(err, "%s: header is not valid UTF-8 (byte offset %zu)", p, bad);

    const char *endp = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, hlen, &endp, 0);
    if (!root) {
        size_t at = (endp && endp >= hdr && endp <= hdr + hlen) ? (size_t)(endp - hdr) : 0;
        return error_set(err, "%s: header (%zu bytes) is not valid JSON (parse error near header offset %zu)", p, hlen,
                         at);
    }
    // The writer pads the header with spaces; anything else after the JSON value is garbage.
    for (const char *q = endp; q < hdr + hlen; q++) {
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            cJSON_Delete(root);
            return error_set(err, "%s: header has trailing bytes after the JSON object (header offset %zu)", p,
                             (size_t)(q - hdr));
        }
    }
    if (!cJSON_IsObject(root)) {
        int rc = error_set(err, "%s: header must be a JSON object, found %s", p, json_kind(root));
        cJSON_Delete(root);
        return rc;
    }

    int rc = 0, n_entries = cJSON_GetArraySize(root);
    st->tensors = xcalloc((size_t)n_entries, sizeof(StTensor), "safetensors tensor table");
    Span *spans = xcalloc((size_t)n_entries, sizeof(Span), "safetensors offsets");
    int have_meta = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (have_meta++) { rc = error_set(err, "%s: __metadata__ appears twice", p); break; }
            if ((rc = parse_metadata(st, e, err)) != 0) break;
            continue;
        }
        StTensor *t = &st->tensors[st->n];
        t->name = xstrdup(e->string);
        st->n++;  // counted before parsing so that close() frees the name on error
        if ((rc = parse_entry(st, t, e, data_size, &spans[st->n - 1].begin, &spans[st->n - 1].end, err)) != 0) break;
        spans[st->n - 1].idx = st->n - 1;
        t->data = data + spans[st->n - 1].begin;
    }
    cJSON_Delete(root);

    // Duplicate names: cJSON keeps both entries, JSON itself does not forbid them; we must.
    if (rc == 0 && st->n > 1) {
        const StTensor **byname = xmalloc((size_t)st->n * sizeof *byname, "safetensors name index");
        for (int i = 0; i < st->n; i++) byname[i] = &st->tensors[i];
        qsort(byname, (size_t)st->n, sizeof *byname, name_cmp);
        for (int i = 1; i < st->n && rc == 0; i++)
            if (strcmp(byname[i - 1]->name, byname[i]->name) == 0)
                rc = error_set(err, "%s: tensor '%s' appears twice in the header", p, byname[i]->name);
        free(byname);
    }

    // Coverage. The spec says the data section has no holes and the reference loader rejects a
    // file whose sorted offsets do not tile [0, data size) exactly. We are as strict: an overlap
    // would alias two tensors, and a hole or trailing bytes mean the header and data disagree
    // (a truncated rewrite, a hand-edited header) -- in both cases the values cannot be trusted.
    if (rc == 0) {
        qsort(spans, (size_t)st->n, sizeof *spans, span_cmp);
        uint64_t pos = 0;
        const char *prev = NULL;
        for (int i = 0; i < st->n && rc == 0; i++) {
            const Span *s = &spans[i];
            const char *nm = st->tensors[s->idx].name;
            if (s->begin < pos)
                rc = error_set(err, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 ") overlap tensor '%s' "
                                    "which ends at %" PRIu64, p, nm, s->begin, s->end, prev ? prev : "?", pos);
            else if (s->begin > pos && prev)
                rc = error_set(err, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 ") leave a hole of %" PRIu64
                                    " bytes after tensor '%s' (tensors must cover the data section without gaps)",
                               p, nm, s->begin, s->end, s->begin - pos, prev);
            else if (s->begin > pos)
                rc = error_set(err, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 ") leave a hole of %" PRIu64
                                    " bytes at the start of the data section (tensors must cover it without gaps)",
                               p, nm, s->begin, s->end, s->begin);
            pos = s->end;
            if (s->end > s->begin || !prev) prev = nm;
        }
        if (rc == 0 && pos != data_size)
            rc = error_set(err, "%s: the tensors cover %" PRIu64 " bytes but the data section has %zu "
                                "(trailing bytes after the last tensor)", p, pos, data_size);
    }
    free(spans);
    return rc;
}

int safetensors_open(SafeTensors *st, const char *path, Error *err) {
    memset(st, 0, sizeof *st);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return error_set(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return error_set(err, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return error_set(err, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) {
        close(fd);
        return error_set(err, "%s: file is %zu bytes, too short for a safetensors file (8-byte header length "
                              "expected first)", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);  // the mapping keeps the file alive
    if (map == MAP_FAILED) return error_set(err, "%s: cannot mmap %zu bytes: %s", path, size, strerror(map_errno));
    st->map = map;
    st->map_size = size;
    st->path = xstrdup(path);

    const unsigned char *b = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    int rc;
    if (hlen == 0)
        rc = error_set(err, "%s: header length is 0 (expected a JSON header)", path);
    else if (hlen > ST_MAX_HEADER)
        rc = error_set(err, "%s: header length %" PRIu64 " exceeds the 100 MB limit (not a safetensors file?)", path,
                       hlen);
    else if (hlen > size - 8)
        rc = error_set(err, "%s: header length %" PRIu64 " exceeds the %zu bytes after the length field "
                            "(truncated or not a safetensors file)", path, hlen, size - 8);
    else
        rc = parse_header(st, (const char *)b + 8, (size_t)hlen, b + 8 + hlen, size - 8 - (size_t)hlen, err);
    if (rc != 0) {
        safetensors_close(st);
        return -1;
    }
    return 0;
}

const StTensor *safetensors_find(const SafeTensors *st, const char *name) {
    for (int i = 0; i < st->n; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

const char *safetensors_meta(const SafeTensors *st, const char *key) {
    for (int i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta_keys[i], key) == 0) return st->meta_vals[i];
    return NULL;
}

// ----------------------------------------------------------------------------------- conversions
// Tensor data inside a mapping is only guaranteed byte-aligned (offsets are arbitrary), so every
// element is loaded with memcpy; compilers turn that into a plain (unaligned-safe) load.

static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;  // bf16 is the top half of an fp32: exact for every value
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// Exact IEEE half -> single: every half (subnormals, infinities, NaN payloads) is representable.
static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, u;
    if (exp == 0) {
        if (mant == 0) u = sign;
        else {
            // subnormal: mant * 2^-24; renormalize so the leading 1 becomes implicit
            int e = -1;
            do { mant <<= 1; e++; } while (!(mant & 0x400));
            u = sign | (uint32_t)(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | mant << 13;  // inf, or NaN with its payload kept
    } else {
        u = sign | (exp + 127 - 15) << 23 | mant << 13;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void st_to_f32(const StTensor *t, float *out) {
    const unsigned char *p = t->data;
    size_t n = t->numel;
    switch (t->dtype) {
    case ST_F32: memcpy(out, p, n * 4); break;
    case ST_F64: for (size_t i = 0; i < n; i++) { double v; memcpy(&v, p + 8 * i, 8); out[i] = (float)v; } break;
    case ST_F16: for (size_t i = 0; i < n; i++) { uint16_t v; memcpy(&v, p + 2 * i, 2); out[i] = f16_to_f32(v); } break;
    case ST_BF16:
        for (size_t i = 0; i < n; i++) { uint16_t v; memcpy(&v, p + 2 * i, 2); out[i] = bf16_to_f32(v); }
        break;
    case ST_I64: for (size_t i = 0; i < n; i++) { int64_t v; memcpy(&v, p + 8 * i, 8); out[i] = (float)v; } break;
    case ST_I32: for (size_t i = 0; i < n; i++) { int32_t v; memcpy(&v, p + 4 * i, 4); out[i] = (float)v; } break;
    case ST_I16: for (size_t i = 0; i < n; i++) { int16_t v; memcpy(&v, p + 2 * i, 2); out[i] = (float)v; } break;
    case ST_I8: for (size_t i = 0; i < n; i++) out[i] = (float)(int8_t)p[i]; break;
    case ST_U8: for (size_t i = 0; i < n; i++) out[i] = (float)p[i]; break;
    case ST_BOOL: for (size_t i = 0; i < n; i++) out[i] = p[i] ? 1.0f : 0.0f; break;
    }
}

int st_to_i32(const StTensor *t, const char *file, int32_t *out, Error *err) {
    const unsigned char *p = t->data;
    size_t n = t->numel;
    const char *f = file ? file : "(safetensors)";
    switch (t->dtype) {
    case ST_I64:
        for (size_t i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, p + 8 * i, 8);
            if (v < INT32_MIN || v > INT32_MAX)
                return error_set(err, "%s: tensor '%s': I64 value %" PRId64 " at element %zu does not fit in int32",
                                 f, t->name, v, i);
            out[i] = (int32_t)v;
        }
        return 0;
    case ST_I32: memcpy(out, p, n * 4); return 0;
    case ST_I16: for (size_t i = 0; i < n; i++) { int16_t v; memcpy(&v, p + 2 * i, 2); out[i] = v; } return 0;
    case ST_I8: for (size_t i = 0; i < n; i++) out[i] = (int8_t)p[i]; return 0;
    case ST_U8: for (size_t i = 0; i < n; i++) out[i] = p[i]; return 0;
    case ST_BOOL: for (size_t i = 0; i < n; i++) out[i] = p[i] ? 1 : 0; return 0;
    default:
        return error_set(err, "%s: tensor '%s' has dtype %s but an integer tensor (I64, I32, I16, I8, U8, BOOL) is "
                              "expected", f, t->name, st_dtype_name(t->dtype));
    }
}

// ----------------------------------------------------------------------------------- writer

typedef struct {
    char *buf;
    size_t len, cap;
} Buf;

static void buf_put(Buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap) cap *= 2;
        char *nb = realloc(b->buf, cap);
        check(nb, "out of memory building a safetensors header (%zu bytes)", cap);
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
}

static void buf_str(Buf *b, const char *s) { buf_put(b, s, strlen(s)); }

// A JSON string literal: escapes quotes, backslashes and control bytes; UTF-8 passes through.
static void buf_json_str(Buf *b, const char *s) {
    buf_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        if (*c == '"') buf_put(b, "\\\"", 2);
        else if (*c == '\\') buf_put(b, "\\\\", 2);
        else if (*c < 0x20) buf_put(b, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", *c));
        else buf_put(b, (const char *)c, 1);
    }
    buf_put(b, "\"", 1);
}

// Validates the tensors to write and builds the padded header; returns -1 (err set) on bad input.
static int build_header(Buf *h, const char *path, const StWriteTensor *t, int n, const char *const *mk,
                        const char *const *mv, int n_meta, size_t *nbytes, Error *err) {
    char num[64];
    buf_str(h, "{");
    if (n_meta > 0) {
        buf_str(h, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (!mk[i] || !mv[i] || utf8_check((const unsigned char *)mk[i], strlen(mk[i])) != strlen(mk[i]) ||
                utf8_check((const unsigned char *)mv[i], strlen(mv[i])) != strlen(mv[i]))
                return error_set(err, "%s: metadata entry %d is NULL or not UTF-8", path, i);
            if (i) buf_str(h, ",");
            buf_json_str(h, mk[i]);
            buf_str(h, ":");
            buf_json_str(h, mv[i]);
        }
        buf_str(h, "}");
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const char *nm = t[i].name;
        if (!nm || strcmp(nm, "__metadata__") == 0 || utf8_check((const unsigned char *)nm, strlen(nm)) != strlen(nm))
            return error_set(err, "%s: tensor %d has an invalid name '%s' (reserved or not UTF-8)", path, i,
                             nm ? nm : "(null)");
        for (int j = 0; j < i; j++)
            if (strcmp(t[j].name, nm) == 0) return error_set(err, "%s: tensor '%s' given twice", path, nm);
        if ((int)t[i].dtype < 0 || (int)t[i].dtype >= ST_N_DTYPES)
            return error_set(err, "%s: tensor '%s' has an invalid dtype %d", path, nm, (int)t[i].dtype);
        if (t[i].ndim < 0 || t[i].ndim > ST_MAX_DIMS)
            return error_set(err, "%s: tensor '%s' has %d dimensions (0..%d allowed)", path, nm, t[i].ndim,
                             ST_MAX_DIMS);
        size_t sz = st_dtype_size(t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++) {
            if (t[i].shape[d] < 0 || size_mul(sz, (size_t)t[i].shape[d], &sz) != 0)
                return error_set(err, "%s: tensor '%s' has a negative or overflowing shape", path, nm);
        }
        if (sz > 0 && !t[i].data) return error_set(err, "%s: tensor '%s' has no data", path, nm);
        nbytes[i] = sz;
        if (n_meta > 0 || i > 0) buf_str(h, ",");
        buf_json_str(h, nm);
        buf_str(h, ":{\"dtype\":\"");
        buf_str(h, st_dtype_name(t[i].dtype));
        buf_str(h, "\",\"shape\":[");
        for (int d = 0; d < t[i].ndim; d++) {
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", t[i].shape[d]);
            buf_str(h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + (uint64_t)sz);
        buf_str(h, num);
        off += sz;
    }
    buf_str(h, "}");
    // Pad with spaces so the data section starts 8-byte aligned in the file (as the spec and the
    // Python writer do): a reader mapping the file then sees naturally aligned F32/F64/I64 data.
    while (h->len % 8) buf_str(h, " ");
    return 0;
}

static int write_all(FILE *f, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, f) == n ? 0 : -1; }

int safetensors_write(const char *path, const StWriteTensor *t, int n, const char *const *meta_keys,
                      const char *const *meta_vals, int n_meta, Error *err) {
    if (n < 0 || n_meta < 0) return error_set(err, "%s: negative tensor or metadata count", path);
    Buf h = {0};
    size_t *nbytes = xcalloc((size_t)n, sizeof(size_t), "safetensors writer sizes");
    if (build_header(&h, path, t, n, meta_keys, meta_vals, n_meta, nbytes, err) != 0) {
        free(h.buf);
        free(nbytes);
        return -1;
    }

    // Write next to the target and rename: a crash or a full disk never leaves a half-written
    // file under the final name (checkpoints are overwritten in place).
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        free(h.buf);
        free(nbytes);
        return error_set(err, "%s: path too long", path);
    }
    int rc = 0;
    FILE *f = fopen(tmp, "wb");
    if (!f) rc = error_set(err, "%s: cannot create: %s", tmp, strerror(errno));
    if (rc == 0) {
        unsigned char len8[8];
        uint64_t hl = h.len;
        for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(hl >> (8 * i));
        int bad = write_all(f, len8, 8) || write_all(f, h.buf, h.len);
        for (int i = 0; i < n && !bad; i++) bad = write_all(f, t[i].data, nbytes[i]);
        if (bad || fflush(f) != 0) rc = error_set(err, "%s: write failed: %s", tmp, strerror(errno));
        else if (fsync(fileno(f)) != 0) rc = error_set(err, "%s: fsync failed: %s", tmp, strerror(errno));
        if (fclose(f) != 0 && rc == 0) rc = error_set(err, "%s: close failed: %s", tmp, strerror(errno));
        if (rc == 0 && rename(tmp, path) != 0)
            rc = error_set(err, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        if (rc != 0) unlink(tmp);
    }
    free(h.buf);
    free(nbytes);
    return rc;
}
