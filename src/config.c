// config.c: reading the run configuration: a libconfig file (or config_print text), --set
// section.key=value overrides and the command line, each value applied through the schema table
// (config_keys.h) with its type and range checked, and unknown keys, sections, values and flags
// answered with a did-you-mean. The defaults, the checks, validation, printing, hashing and
// diffing of a RunConfig are in config_values.c. Errors never print or exit here; they come back
// through Error so the top level can decide (die on all ranks).
#include "actlora/config.h"

#include <errno.h>
#include <libconfig.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config_internal.h"

int config_num_keys(void) { return NUM_KEYS; }

const char *config_key_name(int i) { return i >= 0 && i < NUM_KEYS ? KEYS[i].name : NULL; }

// ---------------------------------------------------------------- key lookup, did-you-mean

static const ConfigKey *key_find(const char *name) {
    for (int i = 0; i < NUM_KEYS; i++)
        if (strcmp(KEYS[i].name, name) == 0) return &KEYS[i];
    return NULL;
}

static int section_known(const char *sec, size_t n) {
    for (int i = 0; i < NUM_KEYS; i++)
        if (section_len(KEYS[i].name) == n && strncmp(KEYS[i].name, sec, n) == 0) return 1;
    return 0;
}

// Optimal-string-alignment edit distance: Levenshtein plus adjacent transpositions, so
// "trian" is one edit from "train". Long inputs are never "close" to a key.
static int edit_distance(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 63 || lb > 63) return 1000;
    int d[64][64];
    for (int i = 0; i <= la; i++) d[i][0] = i;
    for (int j = 0; j <= lb; j++) d[0][j] = j;
    for (int i = 1; i <= la; i++) {
        for (int j = 1; j <= lb; j++) {
            int v = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < v) v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    }
    return d[la][lb];
}

// A suggestion is only worth making when about a third or less of the typed word is wrong.
static int close_enough(int dist, const char *typed) {
    int thr = (int)strlen(typed) / 3;
    return dist <= (thr < 1 ? 1 : thr);
}

const char *suggest_value(const char *typed, const char *const *cands) {
    const char *best = NULL;
    int bestd = 1 << 20;
    for (int i = 0; cands[i]; i++) {
        int d = edit_distance(typed, cands[i]);
        if (d < bestd) { bestd = d; best = cands[i]; }
    }
    return best && close_enough(bestd, typed) ? best : NULL;
}

// Did-you-mean for an unknown "section.key" (or a bare "key"): the same key name in another
// section ("train.seq_len" -> data.seq_len), a typo within the right section, or a typo in the
// section name, judged on the key part so that "train.foo" does not suggest "train.lr".
static const char *suggest_key(const char *typed) {
    size_t sl = section_len(typed);
    const char *base = sl ? typed + sl + 1 : typed;
    const char *best = NULL;
    int bestd = 1 << 20;
    for (int i = 0; i < NUM_KEYS; i++) {
        const char *name = KEYS[i].name;
        size_t ksl = section_len(name);
        int d;
        if (strcmp(base, name + ksl + 1) == 0) d = 0;
        else if (!sl || (sl == ksl && strncmp(typed, name, sl) == 0)) d = edit_distance(base, name + ksl + 1);
        else d = edit_distance(typed, name);
        if (d < bestd) { bestd = d; best = name; }
    }
    return best && close_enough(bestd, base) ? best : NULL;
}

static int unknown_key_error(Error *err, const char *where, const char *typed) {
    const char *s = suggest_key(typed);
    if (s) return error_set(err, "%s%sunknown key '%s' (did you mean '%s'?)", WHERE_ARG(where), typed, s);
    return error_set(err, "%s%sunknown key '%s' (every key is listed in docs/config.md and by --print-config)",
                     WHERE_ARG(where), typed);
}

// Sections are derived from the key names (first key of each run of equal prefixes), so the
// table stays the only list of them.
static int unknown_section_error(Error *err, const char *where, const char *typed) {
    char list[128] = "", best[32] = "";
    size_t used = 0;
    int bestd = 1 << 20;
    for (int i = 0; i < NUM_KEYS; i++) {
        char sec[32];
        size_t sl = section_len(KEYS[i].name);
        if (sl >= sizeof sec || (i > 0 && strncmp(KEYS[i - 1].name, KEYS[i].name, sl + 1) == 0)) continue;
        memcpy(sec, KEYS[i].name, sl);
        sec[sl] = '\0';
        int d = edit_distance(typed, sec);
        if (d < bestd) { bestd = d; strcpy(best, sec); }
        int w = snprintf(list + used, sizeof list - used, "%s%s", used ? ", " : "", sec);
        if (w > 0 && (size_t)w < sizeof list - used) used += (size_t)w;
    }
    if (close_enough(bestd, typed))
        return error_set(err, "%s: unknown section '%s' (did you mean '%s'?)", where, typed, best);
    return error_set(err, "%s: unknown section '%s' (sections: %s)", where, typed, list);
}

// What libconfig read, for "(got a string)"; indexed by CONFIG_TYPE_*.
static const char *kind_name(const config_setting_t *s) {
    static const char *const names[] = {"nothing", "a group", "an integer", "an integer", "a float",
                                        "a string", "a boolean", "an array", "a list"};
    unsigned t = (unsigned)config_setting_type(s);
    return t < sizeof names / sizeof names[0] ? names[t] : "nothing";
}

// What a key wants, for "must be a number"; indexed by KeyType.
static const char *type_text(const ConfigKey *k) {
    static const char *const texts[] = {
        [KT_INT] = "an integer", [KT_INT64] = "an integer", [KT_DOUBLE] = "a number",
        [KT_BOOL] = "true or false", [KT_ENUM] = "a string", [KT_STRING] = "a string",
        [KT_TARGETS] = "a list of module names such as [\"q_proj\", \"v_proj\"]",
        [KT_LAYERS] = "\"auto\", \"all\" or a list of layer indices such as [0, 1]"};
    return texts[k->type];
}

// ---------------------------------------------------------------- assignment

static int set_targets(const ConfigKey *k, const config_setting_t *s, RunConfig *c, const char *where, Error *err) {
    int t = config_setting_type(s);
    if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST)
        return error_set(err, "%s%s%s must be %s (got %s)", WHERE_ARG(where), k->name, type_text(k), kind_name(s));
    int n = config_setting_length(s);
    if (n < 1) return error_set(err, "%s%s%s must name at least one module", WHERE_ARG(where), k->name);
    if (n > CONFIG_MAX_TARGETS)
        return error_set(err, "%s%s%s lists %d modules, at most %d", WHERE_ARG(where), k->name, n, CONFIG_MAX_TARGETS);
    char names[CONFIG_MAX_TARGETS][32];
    memset(names, 0, sizeof names);   // zero tails keep RunConfig memcmp-comparable
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        if (config_setting_type(e) != CONFIG_TYPE_STRING)
            return error_set(err, "%s%s%s[%d] must be a string (got %s)", WHERE_ARG(where), k->name, i, kind_name(e));
        const char *v = config_setting_get_string(e);
        if (strlen(v) >= sizeof names[i]) {
            char what[64];
            snprintf(what, sizeof what, "%s[%d]", k->name, i);
            return check_enum(k, what, v, where, err);   // too long cannot be allowed
        }
        strcpy(names[i], v);
    }
    if (check_targets(k, names, n, where, err)) return -1;
    memcpy(c->lora.targets, names, sizeof names);
    c->lora.n_targets = n;
    return 0;
}

static int set_layers(const ConfigKey *k, const config_setting_t *s, RunConfig *c, const char *where, Error *err) {
    int t = config_setting_type(s);
    if (t == CONFIG_TYPE_STRING) {
        const char *v = config_setting_get_string(s);
        if (strcmp(v, "all") != 0 && strcmp(v, "auto") != 0)
            return error_set(err, "%s%s%s = \"%s\" is not allowed: use \"auto\", \"all\" or a list of layer indices such as [0, 1]",
                             WHERE_ARG(where), k->name, v);
        c->lora.all_layers = strcmp(v, "all") == 0;
        c->lora.auto_layers = !c->lora.all_layers;
        c->lora.n_layers = 0;
        memset(c->lora.layers, 0, sizeof c->lora.layers);
        return 0;
    }
    if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST)
        return error_set(err, "%s%s%s must be %s (got %s)", WHERE_ARG(where), k->name, type_text(k), kind_name(s));
    int n = config_setting_length(s);
    if (n < 1)
        return error_set(err, "%s%s%s is an empty list: name at least one layer, or use \"all\"", WHERE_ARG(where), k->name);
    // Indices are bounded by CONFIG_MAX_LAYERS, so a presence map sorts and deduplicates at once.
    unsigned char seen[CONFIG_MAX_LAYERS] = {0};
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        int et = config_setting_type(e);
        if (et != CONFIG_TYPE_INT && et != CONFIG_TYPE_INT64)
            return error_set(err, "%s%s%s[%d] must be an integer layer index (got %s)", WHERE_ARG(where), k->name, i,
                             kind_name(e));
        long long v = config_setting_get_int64(e);
        if (v < k->imin || v > k->imax)
            return error_set(err, "%s%s%s[%d] = %lld is out of range: allowed %lld..%lld", WHERE_ARG(where), k->name, i,
                             v, k->imin, k->imax);
        seen[v] = 1;
    }
    c->lora.all_layers = 0;
    c->lora.auto_layers = 0;
    c->lora.n_layers = 0;
    memset(c->lora.layers, 0, sizeof c->lora.layers);
    for (int v = 0; v < CONFIG_MAX_LAYERS; v++)
        if (seen[v]) c->lora.layers[c->lora.n_layers++] = v;
    return 0;
}

// Applies one parsed libconfig value to the key's field, with type and range checks.
static int key_apply(const ConfigKey *k, const config_setting_t *s, RunConfig *c, const char *where, Error *err) {
    char *field = (char *)c + k->off;
    int t = config_setting_type(s);
    int is_int = t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64;
    switch (k->type) {
    case KT_INT:
    case KT_INT64: {
        if (!is_int) break;
        long long v = config_setting_get_int64(s);
        if (check_int(k, v, where, err)) return -1;
        if (k->type == KT_INT) *(int *)field = (int)v;
        else *(int64_t *)field = (int64_t)v;
        return 0;
    }
    case KT_DOUBLE: {
        if (!is_int && t != CONFIG_TYPE_FLOAT) break;
        // `lr = 1;` is an integer literal to libconfig but obviously means 1.0.
        double v = is_int ? (double)config_setting_get_int64(s) : config_setting_get_float(s);
        if (check_double(k, v, where, err)) return -1;
        *(double *)field = v;
        return 0;
    }
    case KT_BOOL:
        if (t != CONFIG_TYPE_BOOL) break;
        *(int *)field = config_setting_get_bool(s) ? 1 : 0;
        return 0;
    case KT_ENUM:
    case KT_STRING: {
        if (t != CONFIG_TYPE_STRING) break;
        const char *v = config_setting_get_string(s);
        if (check_string(k, v, where, err)) return -1;
        memset(field, 0, k->size);
        memcpy(field, v, strlen(v));
        return 0;
    }
    case KT_TARGETS: return set_targets(k, s, c, where, err);
    case KT_LAYERS: return set_layers(k, s, c, where, err);
    }
    return error_set(err, "%s%s%s must be %s (got %s)", WHERE_ARG(where), k->name, type_text(k), kind_name(s));
}

// ---------------------------------------------------------------- file, --set

// Walks the root group: every top-level setting must be a known section group and every
// member a known key. Applies onto c (the caller's scratch copy).
static int apply_root(RunConfig *c, const config_setting_t *root, const char *path, Error *err) {
    char where[CONFIG_PATH_MAX + 32], full[160];
    int n = config_setting_length(root);
    for (int i = 0; i < n; i++) {
        const config_setting_t *sec = config_setting_get_elem(root, (unsigned)i);
        const char *sname = config_setting_name(sec);
        const char *file = config_setting_source_file(sec) ? config_setting_source_file(sec) : path;
        snprintf(where, sizeof where, "%s:%u", file, (unsigned)config_setting_source_line(sec));
        if (!section_known(sname, strlen(sname)) || strchr(sname, '.')) {
            if (config_setting_type(sec) != CONFIG_TYPE_GROUP) return unknown_key_error(err, where, sname);
            return unknown_section_error(err, where, sname);
        }
        if (config_setting_type(sec) != CONFIG_TYPE_GROUP)
            return error_set(err, "%s: %s must be a group such as %s = { ... }; (got %s)", where, sname, sname,
                             kind_name(sec));
        int m = config_setting_length(sec);
        for (int j = 0; j < m; j++) {
            const config_setting_t *s = config_setting_get_elem(sec, (unsigned)j);
            file = config_setting_source_file(s) ? config_setting_source_file(s) : path;
            snprintf(where, sizeof where, "%s:%u", file, (unsigned)config_setting_source_line(s));
            snprintf(full, sizeof full, "%s.%s", sname, config_setting_name(s));
            const ConfigKey *k = key_find(full);
            if (!k) return unknown_key_error(err, where, full);
            if (key_apply(k, s, c, where, err)) return -1;
        }
    }
    return 0;
}

int config_load_text(RunConfig *c, const char *text, const char *source, Error *err) {
    config_t cfg;
    config_init(&cfg);
    config_defaults(c);
    if (config_read_string(&cfg, text) != CONFIG_TRUE) {
        error_set(err, "%s:%d: %s", source, config_error_line(&cfg), config_error_text(&cfg));
        config_destroy(&cfg);
        return -1;
    }
    RunConfig tmp = *c;
    int rc = apply_root(&tmp, config_root_setting(&cfg), source, err);
    config_destroy(&cfg);
    if (rc == 0) *c = tmp;
    return rc;
}

int config_load_file(RunConfig *c, const char *path, Error *err) {
    // libconfig only says "file I/O error"; find the real reason first.
    struct stat st;
    if (stat(path, &st) != 0) return error_set(err, "cannot open config file '%s': %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return error_set(err, "config file '%s' is a directory", path);
    config_t cfg;
    config_init(&cfg);
    if (config_read_file(&cfg, path) != CONFIG_TRUE) {
        if (config_error_type(&cfg) == CONFIG_ERR_FILE_IO)
            error_set(err, "cannot read config file '%s': %s", path, config_error_text(&cfg));
        else
            error_set(err, "%s:%d: %s", config_error_file(&cfg) ? config_error_file(&cfg) : path,
                      config_error_line(&cfg), config_error_text(&cfg));
        config_destroy(&cfg);
        return -1;
    }
    // Apply to a copy so a failed load leaves c as it was.
    RunConfig tmp = *c;
    int rc = apply_root(&tmp, config_root_setting(&cfg), path, err);
    config_destroy(&cfg);
    if (rc == 0) *c = tmp;
    return rc;
}

static const char *skip_space(const char *p) {
    while (*p == ' ' || *p == '\t') p++;
    return p;
}

// Appends s as a libconfig string literal.
static void put_quoted(char **o, const char *s, size_t n) {
    *(*o)++ = '"';
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\') *(*o)++ = '\\';
        *(*o)++ = s[i];
    }
    *(*o)++ = '"';
}

// Turns a --set value into libconfig syntax for the key's type: bare strings get quoted,
// bare list elements too ([q_proj,v_proj] or q_proj,v_proj), and a bare comma list of layer
// indices gets brackets. Numbers and booleans pass through for libconfig to judge.
// An integer literal too large for 32 bits gets an L so libconfig 1.5 does not truncate it.
static void set_value_text(const ConfigKey *k, const char *v, char *o) {
    size_t n = strlen(v);
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
    int quoted = v[0] == '"', bracket = v[0] == '[' || v[0] == '(';
    if ((k->type == KT_ENUM || k->type == KT_STRING) && !quoted) {
        put_quoted(&o, v, n);
    } else if (k->type == KT_TARGETS && !quoted) {
        char close = v[0] == '(' ? ')' : ']';
        if (bracket) { v++; n--; if (n > 0 && v[n - 1] == close) n--; }
        *o++ = close == ')' ? '(' : '[';
        size_t i = 0;
        while (i < n) {
            while (i < n && (v[i] == ' ' || v[i] == '\t')) i++;
            size_t j = i;
            int inq = 0;
            while (j < n && (inq || v[j] != ',')) { if (v[j] == '"') inq = !inq; j++; }
            size_t e = j;
            while (e > i && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
            if (e > i) {
                if (v[i] == '"') { memcpy(o, v + i, e - i); o += e - i; }
                else put_quoted(&o, v + i, e - i);
                if (j < n) *o++ = ',';
            }
            i = j + 1;
        }
        *o++ = close;
    } else if (k->type == KT_LAYERS && !quoted && !bracket) {
        if (strspn(v, "0123456789+-, \t") >= n && n > 0) {
            *o++ = '[';
            memcpy(o, v, n);
            o += n;
            *o++ = ']';
        } else {
            put_quoted(&o, v, n);   // "all" and anything else, which the key then judges
        }
    } else {
        memcpy(o, v, n);
        o += n;
        size_t digits = strspn(v + (v[0] == '-' || v[0] == '+'), "0123456789");
        if ((k->type == KT_INT || k->type == KT_INT64) && digits >= 10 && digits + (v[0] == '-' || v[0] == '+') == n)
            *o++ = 'L';
    }
    *o = '\0';
}

int config_set(RunConfig *c, const char *assignment, Error *err) {
    const char *eq = strchr(assignment, '=');
    if (!eq) return error_set(err, "--set %s: expected section.key=value", assignment);
    const char *ks = skip_space(assignment);
    size_t kn = (size_t)(eq - ks);
    while (kn > 0 && (ks[kn - 1] == ' ' || ks[kn - 1] == '\t')) kn--;
    char key[128];
    if (kn >= sizeof key) kn = sizeof key - 1;
    memcpy(key, ks, kn);
    key[kn] = '\0';
    char where[256];
    snprintf(where, sizeof where, "--set %s", assignment);
    const ConfigKey *k = key_find(key);
    if (!k) return unknown_key_error(err, where, key);
    const char *v = skip_space(eq + 1);
    if (!*v) return error_set(err, "%s: empty value for %s (expected %s)", where, k->name, type_text(k));

    size_t cap = 4 * strlen(v) + 32;   // worst case: every char escaped, every element quoted
    char *text = xmalloc(cap, "--set value");
    memcpy(text, "v = ", 4);
    set_value_text(k, v, text + 4);
    strcat(text, ";");
    config_t cfg;
    config_init(&cfg);
    int rc;
    if (config_read_string(&cfg, text) != CONFIG_TRUE || config_setting_length(config_root_setting(&cfg)) != 1) {
        // A value libconfig cannot read is almost always the wrong type for the key.
        rc = error_set(err, "%s: %s must be %s (got '%s'%s%s)", where, k->name, type_text(k), v,
                       config_error_text(&cfg) ? ": " : "", config_error_text(&cfg) ? config_error_text(&cfg) : "");
    } else {
        RunConfig tmp = *c;
        rc = key_apply(k, config_setting_get_elem(config_root_setting(&cfg), 0), &tmp, where, err);
        if (rc == 0) *c = tmp;
    }
    config_destroy(&cfg);
    free(text);
    return rc;
}

// ---------------------------------------------------------------- command line

static const char *const FLAGS[] = {"--config", "--set", "--print-config", "--calibrate-only", "--resume", "--force",
                                    "--plan-memory", "--help", "-h", "--version", NULL};

// argv[*i] is `flag VALUE` or `flag=VALUE`: returns 1 and points *val at the value (NULL if it
// is missing), consuming the next argument in the first form; 0 if argv[*i] is another flag.
static int flag_value(const char *flag, int argc, char **argv, int *i, const char **val) {
    size_t n = strlen(flag);
    const char *a = argv[*i];
    if (strncmp(a, flag, n) != 0) return 0;
    if (a[n] == '=') { *val = a + n + 1; return 1; }
    if (a[n] != '\0') return 0;
    *val = *i + 1 < argc ? argv[++*i] : NULL;
    return 1;
}

static int unknown_flag_error(Error *err, const char *a) {
    char name[64];
    size_t n = strcspn(a, "=");
    if (n >= sizeof name) n = sizeof name - 1;
    memcpy(name, a, n);
    name[n] = '\0';
    if (a[0] != '-') {
        if (strchr(a, '=')) return error_set(err, "unexpected argument '%s' (to override a key: --set %s)", a, a);
        return error_set(err, "unexpected argument '%s' (a config file is given with --config FILE)", a);
    }
    const char *s = suggest_value(name, FLAGS);
    if (s) return error_set(err, "unknown option '%s' (did you mean '%s'?); see --help", a, s);
    return error_set(err, "unknown option '%s'; see --help", a);
}

int config_parse_args(RunConfig *c, CliArgs *args, int argc, char **argv, Error *err) {
    memset(args, 0, sizeof *args);
    strcpy(args->resume, "auto");
    config_defaults(c);
    // Pass 1 reads the flags alone, so that --help works next to a broken file and the file
    // is applied before every --set wherever --config stands on the line.
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        if (flag_value("--config", argc, argv, &i, &val)) {
            if (!val || !*val) return error_set(err, "--config needs a file: --config FILE");
            if (args->config_path[0])
                return error_set(err, "--config given twice ('%s' and '%s'): one file per run, override keys with --set",
                                 args->config_path, val);
            if (strlen(val) >= sizeof args->config_path)
                return error_set(err, "--config path is too long (%zu bytes)", strlen(val));
            strcpy(args->config_path, val);
        } else if (flag_value("--set", argc, argv, &i, &val)) {
            if (!val || !*val) return error_set(err, "--set needs an assignment: --set section.key=value");
        } else if (flag_value("--resume", argc, argv, &i, &val)) {
            if (!val || !*val) return error_set(err, "--resume needs a value: auto, no, or a checkpoint path");
            if (strlen(val) >= sizeof args->resume) return error_set(err, "--resume path is too long");
            strcpy(args->resume, val);
        } else if (flag_value("--plan-memory", argc, argv, &i, &val)) {
            char *end = NULL;
            double g = val ? strtod(val, &end) : 0.0;
            if (!val || !*val || end == val || *end || !(g > 0.0 && g <= 1048576.0))
                return error_set(err, "--plan-memory needs the GPU's memory in GiB, e.g. --plan-memory 80 (got '%s')",
                                 val ? val : "");
            args->plan_memory_gib = g;
        } else if (strcmp(a, "--force") == 0) {
            args->force = 1;
        } else if (strcmp(a, "--print-config") == 0) {
            args->print_config = 1;
        } else if (strcmp(a, "--calibrate-only") == 0) {
            args->calibrate_only = 1;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            args->help = 1;
        } else if (strcmp(a, "--version") == 0) {
            args->version = 1;
        } else {
            return unknown_flag_error(err, a);
        }
    }
    if (args->help || args->version) return 0;
    if (args->config_path[0] && config_load_file(c, args->config_path, err)) return -1;
    for (int i = 1; i < argc; i++) {
        const char *val = NULL;
        if (flag_value("--config", argc, argv, &i, &val)) continue;
        if (flag_value("--set", argc, argv, &i, &val) && config_set(c, val, err)) return -1;
    }
    return config_validate(c, err);
}

void config_usage(FILE *f) {
    fprintf(f,
            "usage: mpirun -n N actlora-mpi --config FILE [--set section.key=value]... [--print-config]\n"
            "\n"
            "  --config FILE          the run's libconfig file (one file per run)\n"
            "  --set section.key=V    override one key after the file; repeatable, applied in order\n"
            "                         (e.g. --set train.lr=3e-4 --set lora.target_modules=[q_proj,v_proj])\n"
            "  --print-config         print the effective configuration (every key) and exit\n"
            "  --calibrate-only       stop after calibration and layer selection (writes calibration.h5)\n"
            "  --resume auto|no|PATH  auto (default): continue from the newest valid checkpoint in\n"
            "                         <run.dir>/checkpoints if there is one; no: start fresh; PATH: that one\n"
            "  --force                resume even though keys that change the run differ from the checkpoint's\n"
            "  --plan-memory GIB      print the run's device-memory plan for a GPU of GIB GiB and exit (no GPU\n"
            "                         needed, no weights loaded; exit 1 when it does not fit)\n"
            "  --help, -h             print this help and exit\n"
            "  --version              print the version and exit\n"
            "\n"
            "Every key, its default and its allowed values: docs/config.md\n");
}
