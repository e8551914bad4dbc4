// config_values.c: the values of a RunConfig, driven by the schema table (config_keys.h): the
// defaults, the per-key value checks that assignment (config.c) shares, config_validate's
// per-key and cross-key rules, printing in libconfig syntax (what --print-config shows and a
// checkpoint stores), the hash every rank compares, and the diff of the keys that change a run.
// Errors never print or exit here; they come back through Error.
#include "actlora/config.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"

// ---------------------------------------------------------------- defaults

void config_defaults(RunConfig *c) {
    memset(c, 0, sizeof *c);   // padding and string tails too: configs compare with memcmp
    for (int i = 0; i < NUM_KEYS; i++) {
        const ConfigKey *k = &KEYS[i];
        char *field = (char *)c + k->off;
        switch (k->type) {
        case KT_INT: case KT_BOOL: *(int *)field = (int)k->def_num; break;
        case KT_INT64: *(int64_t *)field = (int64_t)k->def_num; break;
        case KT_DOUBLE: *(double *)field = k->def_num; break;
        case KT_ENUM: case KT_STRING: memcpy(field, k->def_str, strlen(k->def_str)); break;
        case KT_TARGETS: {
            c->lora.n_targets = 0;
            for (const char *p = k->def_str; *p;) {
                size_t n = strcspn(p, ",");
                memcpy(c->lora.targets[c->lora.n_targets++], p, n);
                p += n + (p[n] == ',');
            }
            break;
        }
        case KT_LAYERS: c->lora.auto_layers = 1; break;   // the only default the table allows
        }
    }
}

// ---------------------------------------------------------------- value texts

static void allowed_text(const char *const *vals, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; vals[i]; i++) {
        int w = snprintf(buf + used, n - used, "%s\"%s\"", i ? ", " : "", vals[i]);
        if (w < 0 || (size_t)w >= n - used) break;
        used += (size_t)w;
    }
}

// Shortest decimal text that reads back as exactly v, always with a '.' or an exponent so
// libconfig parses it as a float again (1.0, not 1); whole numbers in plain digits (30.0, not 3e+01).
static void format_double(char *buf, size_t n, double v) {
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, n, "%.1f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    if (!strpbrk(buf, ".eEn")) strncat(buf, ".0", n - strlen(buf) - 1);   // 'n': inf / nan
}

static void range_text(const ConfigKey *k, char *buf, size_t n) {
    if (k->type == KT_DOUBLE) {
        if (isinf(k->dmax)) snprintf(buf, n, "%s %g", k->dmin_open ? ">" : ">=", k->dmin);
        else snprintf(buf, n, "%g %s value %s %g", k->dmin, k->dmin_open ? "<" : "<=", k->dmax_open ? "<" : "<=", k->dmax);
    } else if (k->imax == INT64_MAX) {
        snprintf(buf, n, ">= %lld", k->imin);
    } else {
        snprintf(buf, n, "%lld..%lld", k->imin, k->imax);
    }
}

// ---------------------------------------------------------------- per-key value checks
// Shared by assignment (file, --set) and config_validate, so a RunConfig built in code gets
// exactly the checks a file gets.

int check_int(const ConfigKey *k, long long v, const char *where, Error *err) {
    if (v >= k->imin && v <= k->imax) return 0;
    char r[64];
    range_text(k, r, sizeof r);
    return error_set(err, "%s%s%s = %lld is out of range: allowed %s", WHERE_ARG(where), k->name, v, r);
}

int check_double(const ConfigKey *k, double v, const char *where, Error *err) {
    int lo_ok = k->dmin_open ? v > k->dmin : v >= k->dmin;   // NaN fails both
    int hi_ok = k->dmax_open ? v < k->dmax : v <= k->dmax;
    if (lo_ok && hi_ok) return 0;
    char r[64], vb[40];
    range_text(k, r, sizeof r);
    format_double(vb, sizeof vb, v);
    return error_set(err, "%s%s%s = %s is out of range: allowed %s", WHERE_ARG(where), k->name, vb, r);
}

int check_enum(const ConfigKey *k, const char *what, const char *v, const char *where, Error *err) {
    for (int i = 0; k->allowed[i]; i++)
        if (strcmp(v, k->allowed[i]) == 0) return 0;
    char list[256], dym[96] = "";
    allowed_text(k->allowed, list, sizeof list);
    const char *s = suggest_value(v, k->allowed);
    if (s) snprintf(dym, sizeof dym, " (did you mean \"%s\"?)", s);
    return error_set(err, "%s%s%s = \"%s\" is not allowed: use one of %s%s", WHERE_ARG(where), what, v, list, dym);
}

int check_string(const ConfigKey *k, const char *v, const char *where, Error *err) {
    size_t len = strlen(v);
    if (len >= k->size)
        return error_set(err, "%s%s%s is too long (%zu bytes, at most %zu)", WHERE_ARG(where), k->name, len, k->size - 1);
    return k->type == KT_ENUM ? check_enum(k, k->name, v, where, err) : 0;
}

// Target list: each name allowed, none twice, at least one.
int check_targets(const ConfigKey *k, char (*t)[32], int n, const char *where, Error *err) {
    if (n < 1) return error_set(err, "%s%s%s must name at least one module", WHERE_ARG(where), k->name);
    for (int i = 0; i < n; i++) {
        char what[64];
        snprintf(what, sizeof what, "%s[%d]", k->name, i);
        if (check_enum(k, what, t[i], where, err)) return -1;
        for (int j = 0; j < i; j++)
            if (strcmp(t[i], t[j]) == 0)
                return error_set(err, "%s%s%s lists \"%s\" twice", WHERE_ARG(where), k->name, t[i]);
    }
    return 0;
}

// ---------------------------------------------------------------- validation

int config_validate(const RunConfig *c, Error *err) {
    // Per-key checks again, for configs assembled in code rather than loaded.
    for (int i = 0; i < NUM_KEYS; i++) {
        const ConfigKey *k = &KEYS[i];
        const char *field = (const char *)c + k->off;
        int rc = 0;
        switch (k->type) {
        case KT_INT: rc = check_int(k, *(const int *)field, NULL, err); break;
        case KT_INT64: rc = check_int(k, *(const int64_t *)field, NULL, err); break;
        case KT_DOUBLE: rc = check_double(k, *(const double *)field, NULL, err); break;
        case KT_BOOL:
            if (*(const int *)field != 0 && *(const int *)field != 1)
                rc = error_set(err, "%s = %d must be 0 or 1", k->name, *(const int *)field);
            break;
        case KT_ENUM: case KT_STRING:
            if (!memchr(field, '\0', k->size)) rc = error_set(err, "%s is not NUL-terminated", k->name);
            else rc = check_string(k, field, NULL, err);
            break;
        case KT_TARGETS: {
            int n = c->lora.n_targets;
            if (n > CONFIG_MAX_TARGETS) rc = error_set(err, "%s has %d entries, at most %d", k->name, n, CONFIG_MAX_TARGETS);
            for (int t = 0; !rc && t < n; t++)
                if (!memchr(c->lora.targets[t], '\0', sizeof c->lora.targets[t]))
                    rc = error_set(err, "%s[%d] is not NUL-terminated", k->name, t);
            if (!rc) rc = check_targets(k, (char (*)[32])c->lora.targets, n, NULL, err);
            break;
        }
        case KT_LAYERS:
            if (c->lora.all_layers && c->lora.auto_layers)
                rc = error_set(err, "%s cannot be both \"all\" and \"auto\"", k->name);
            if (rc || c->lora.all_layers || c->lora.auto_layers) break;
            if (c->lora.n_layers < 1 || c->lora.n_layers > CONFIG_MAX_LAYERS)
                rc = error_set(err, "%s lists %d layers: name 1..%d layers, or use \"all\"", k->name, c->lora.n_layers,
                               CONFIG_MAX_LAYERS);
            for (int l = 0; !rc && l < c->lora.n_layers; l++) {
                int v = c->lora.layers[l];
                if (v < k->imin || v > k->imax || (l > 0 && v <= c->lora.layers[l - 1]))
                    rc = error_set(err, "%s must be sorted, unique indices in %lld..%lld (entry %d is %d)", k->name,
                                   k->imin, k->imax, l, v);
            }
            break;
        }
        if (rc) return -1;
    }
    // Cross-key checks.
    if (!c->model.path[0])
        return error_set(err, "model.path is required (the model directory with config.json, also for "
                              "model.init = \"random\"): set it in the config file or with --set model.path=DIR");
    if (!c->run.dir[0]) return error_set(err, "run.dir must not be empty");
    if (c->train.max_steps > 0 && c->train.warmup_steps > c->train.max_steps)
        return error_set(err, "train.warmup_steps = %d exceeds train.max_steps = %d: the run would end inside the warmup",
                         c->train.warmup_steps, c->train.max_steps);
    if (c->train.max_steps == 0 && c->train.epochs == 0)
        return error_set(err, "train.max_steps = 0 and train.epochs = 0: set how long to train with one of them");
    int glue = strcmp(c->data.source, "glue") == 0;
    if (glue && !c->data.path[0])
        return error_set(err, "data.source = \"glue\" needs data.path, the HDF5 file written by tools/prep_glue.py "
                              "(or use data.source = \"synthetic\")");
    if (!glue && c->train.max_steps == 0)
        return error_set(err, "data.source = \"synthetic\" has no epochs: set train.max_steps");
    // Token counts per micro-step are int-indexed downstream.
    long long tokens = (long long)c->train.micro_batch * c->data.seq_len;
    if (tokens > INT32_MAX)
        return error_set(err, "train.micro_batch * data.seq_len = %lld tokens per micro-step exceeds %d: lower one of them",
                         tokens, INT32_MAX);
    return 0;
}

// ---------------------------------------------------------------- printing

static void print_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch == '\n') fputs("\\n", f);
        else if (ch == '\t') fputs("\\t", f);
        else if (ch == '\r') fputs("\\r", f);
        else if (ch == '\f') fputs("\\f", f);
        else if (ch < 0x20) fprintf(f, "\\x%02x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static void print_value(const ConfigKey *k, const RunConfig *c, FILE *f) {
    const char *field = (const char *)c + k->off;
    char buf[40];
    switch (k->type) {
    case KT_INT: fprintf(f, "%d", *(const int *)field); break;
    case KT_INT64: fprintf(f, "%lldL", (long long)*(const int64_t *)field); break;
    case KT_DOUBLE: format_double(buf, sizeof buf, *(const double *)field); fputs(buf, f); break;
    case KT_BOOL: fputs(*(const int *)field ? "true" : "false", f); break;
    case KT_ENUM: case KT_STRING: print_string(f, field); break;
    case KT_TARGETS:
        fputc('[', f);
        for (int i = 0; i < c->lora.n_targets && i < CONFIG_MAX_TARGETS; i++) {
            if (i) fputs(", ", f);
            print_string(f, c->lora.targets[i]);
        }
        fputc(']', f);
        break;
    case KT_LAYERS:
        if (c->lora.all_layers) { fputs("\"all\"", f); break; }
        if (c->lora.auto_layers) { fputs("\"auto\"", f); break; }
        fputc('[', f);
        for (int i = 0; i < c->lora.n_layers && i < CONFIG_MAX_LAYERS; i++) fprintf(f, "%s%d", i ? ", " : "", c->lora.layers[i]);
        fputc(']', f);
        break;
    }
}

void config_print(const RunConfig *c, FILE *f) {
    fputs("# actlora-mpi run configuration: every key, effective values (docs/config.md)\n", f);
    const char *open = NULL;
    size_t open_len = 0;
    for (int i = 0; i < NUM_KEYS; i++) {
        const ConfigKey *k = &KEYS[i];
        size_t sl = section_len(k->name);
        if (!open || sl != open_len || strncmp(open, k->name, sl) != 0) {
            if (open) fputs("};\n", f);
            fprintf(f, "%.*s = {\n", (int)sl, k->name);
            open = k->name;
            open_len = sl;
        }
        fprintf(f, "  %s = ", k->name + sl + 1);
        print_value(k, c, f);
        fputs(";\n", f);
    }
    if (open) fputs("};\n", f);
}

uint64_t config_hash(const RunConfig *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    check(f, "out of memory printing the config for its hash");
    config_print(c, f);
    fclose(f);
    uint64_t h = fnv1a64(FNV64_INIT, buf, len);
    free(buf);
    return h;
}

// Keys that do not change what a run computes: they may differ between a checkpoint and its resume.
static int key_is_bookkeeping(const char *name) {
    static const char *const free_keys[] = {"run.dir", "run.threads", "run.log_every", "run.device", "run.profile",
                                            "run.progress_seconds", "run.watchdog_minutes", "train.eval_every", "train.max_steps", "train.epochs", NULL};
    if (strncmp(name, "checkpoint.", 11) == 0) return 1;
    for (int i = 0; free_keys[i]; i++)
        if (strcmp(name, free_keys[i]) == 0) return 1;
    return 0;
}

int config_diff_run(const RunConfig *a, const RunConfig *b, char *out, size_t n) {
    int count = 0;
    size_t used = 0;
    if (n) out[0] = '\0';
    for (int i = 0; i < NUM_KEYS; i++) {
        const ConfigKey *k = &KEYS[i];
        if (key_is_bookkeeping(k->name)) continue;
        char *va = NULL, *vb = NULL;
        size_t la = 0, lb = 0;
        FILE *fa = open_memstream(&va, &la), *fb = open_memstream(&vb, &lb);
        check(fa && fb, "out of memory comparing configurations");
        print_value(k, a, fa);
        print_value(k, b, fb);
        fclose(fa);
        fclose(fb);
        if (la != lb || memcmp(va, vb, la) != 0) {
            count++;
            if (used < n) used += (size_t)snprintf(out + used, n - used, "%s  %s: %s -> %s", count > 1 ? "\n" : "",
                                                   k->name, va, vb);
        }
        free(va);
        free(vb);
    }
    if (used >= n && n) out[n - 1] = '\0';
    return count;
}
