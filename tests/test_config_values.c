// test_config_values.c: the values of a RunConfig: the defaults and the schema's key names,
// the cross-key validation rules (and the per-key ones for configs built in code), the print ->
// load round trip and hash, config_load_text and config_diff_run for resuming, that
// docs/config.md documents exactly the schema's keys with their defaults, and that the shipped
// example configs load. Reading files, --set and the command line: test_config.c.
// Usage: test_config_values SOURCE_DIR [BUILD_DIR]   (its temporary file goes under BUILD_DIR or /tmp)
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actlora/config.h"
#include "test_util.h"

static char g_cfg[4200];    // the file the round trip writes the printed config to and loads

// Defaults, then the given text written to g_cfg and loaded as --config does; returns
// config_load_file's result.
static int load_text(RunConfig *c, const char *text, Error *err) {
    FILE *f = fopen(g_cfg, "w");
    if (!f) { perror(g_cfg); exit(1); }
    fputs(text, f);
    fclose(f);
    config_defaults(c);
    err->msg[0] = '\0';
    return config_load_file(c, g_cfg, err);
}

static int has(const Error *e, const char *s) { return strstr(e->msg, s) != NULL; }

static void test_defaults(TestCounts *tc) {
    RunConfig c;
    Error err = {{0}};
    config_defaults(&c);
    T_CHECK(tc, strcmp(c.model.path, "") == 0 && strcmp(c.model.arch, "auto") == 0, "model.path/arch defaults");
    T_CHECK(tc, strcmp(c.model.dtype, "auto") == 0 && strcmp(c.model.init, "pretrained") == 0, "dtype/init defaults");
    T_CHECK(tc, c.model.num_labels == 2, "num_labels default %d", c.model.num_labels);
    T_CHECK(tc, c.lora.r == 8 && c.lora.alpha == 16.0 && c.lora.dropout == 0.0 && c.lora.rslora == 0, "lora defaults");
    T_CHECK(tc, c.lora.n_targets == 2 && strcmp(c.lora.targets[0], "q_proj") == 0 &&
                    strcmp(c.lora.targets[1], "v_proj") == 0, "target_modules default");
    T_CHECK(tc, c.lora.auto_layers == 1 && c.lora.all_layers == 0 && c.lora.n_layers == 0 && c.lora.layers[0] == 0,
            "layers default 'auto'");
    T_CHECK(tc, c.train.lr == 1e-4 && strcmp(c.train.schedule, "linear") == 0 && c.train.warmup_steps == 0,
            "train lr/schedule/warmup defaults");
    T_CHECK(tc, c.train.weight_decay == 0.0 && c.train.clip == 1.0 && c.train.beta1 == 0.9 &&
                    c.train.beta2 == 0.999 && c.train.eps == 1e-8, "optimizer defaults");
    T_CHECK(tc, c.train.micro_batch == 8 && c.train.grad_accum == 1 && c.train.max_steps == 0 &&
                    c.train.epochs == 1 && c.train.eval_every == 0 && c.train.seed == 1234,
            "batch/steps/epochs/eval_every/seed defaults");
    T_CHECK(tc, strcmp(c.data.source, "glue") == 0 && strcmp(c.data.path, "") == 0 && strcmp(c.data.task, "") == 0 &&
                    c.data.seq_len == 128 && c.data.group_window == 1024, "data defaults");
    T_CHECK(tc, strcmp(c.calibration.method, "activation") == 0 && strcmp(c.calibration.probe, "block_output") == 0 &&
                    c.calibration.batches == 8 && strcmp(c.calibration.rule, "fraction") == 0 &&
                    c.calibration.k == 4 && c.calibration.fraction == 0.5 && c.calibration.threshold == 0.5,
            "calibration defaults");
    T_CHECK(tc, strcmp(c.run.dir, "runs/default") == 0 && strcmp(c.run.device, "auto") == 0 && c.run.threads == 0 &&
                    c.run.log_every == 10, "run defaults");
    // The defaults lack only the model directory and the data file (glue is the default source).
    T_CHECK(tc, config_validate(&c, &err) == -1 && has(&err, "model.path"), "defaults validate without model.path: [%s]",
            err.msg);
    strcpy(c.model.path, "models/tiny");
    T_CHECK(tc, config_validate(&c, &err) == -1 && has(&err, "data.source = \"glue\" needs data.path"),
            "defaults + model.path lack data.path: [%s]", err.msg);
    strcpy(c.data.path, "data/sst2.h5");
    T_CHECK(tc, config_validate(&c, &err) == 0, "defaults + model.path + data.path validate: [%s]", err.msg);

    int n = config_num_keys();
    T_CHECK(tc, n == 50, "config_num_keys() = %d, want 50", n);
    T_CHECK(tc, config_key_name(-1) == NULL && config_key_name(n) == NULL, "config_key_name out of range is NULL");
    for (int i = 0; i < n; i++) {
        const char *k = config_key_name(i);
        T_CHECK(tc, k && strchr(k, '.'), "key %d has the form section.key", i);
        for (int j = 0; k && j < i; j++) T_CHECK(tc, strcmp(k, config_key_name(j)) != 0, "key %s listed twice", k);
    }
}

// Defaults plus what a default (glue) run must name: the model directory and the data file.
static void valid_defaults(RunConfig *c) {
    config_defaults(c);
    strcpy(c->model.path, "/m");
    strcpy(c->data.path, "data/sst2.h5");
}

// config_validate(c) must fail with a message containing `want`.
static void expect_invalid(TestCounts *tc, const RunConfig *c, const char *want, const char *what) {
    Error err = {{0}};
    int rc = config_validate(c, &err);
    T_CHECK(tc, rc == -1 && has(&err, want), "%s: want error containing [%s], got rc %d [%s]", what, want, rc, err.msg);
}

static void expect_valid(TestCounts *tc, const RunConfig *c, const char *what) {
    Error err = {{0}};
    T_CHECK(tc, config_validate(c, &err) == 0, "%s: unexpected error [%s]", what, err.msg);
}

static void test_validate(TestCounts *tc) {
    RunConfig c;
    valid_defaults(&c);
    expect_valid(tc, &c, "valid_defaults");
    c.train.micro_batch = 65536;
    c.data.seq_len = 1048576;
    expect_invalid(tc, &c, "tokens per micro-step", "token overflow");
    // Configs built in code get the per-key checks too.
    valid_defaults(&c);
    c.train.lr = -1;
    expect_invalid(tc, &c, "train.lr = -1.0 is out of range", "code lr");
    c.train.lr = NAN;
    expect_invalid(tc, &c, "train.lr", "NaN lr rejected");
    valid_defaults(&c);
    strcpy(c.lora.targets[1], "q_proj");
    expect_invalid(tc, &c, "twice", "code duplicate target");
    valid_defaults(&c);
    c.lora.auto_layers = 0;
    c.lora.n_layers = 2;
    c.lora.layers[0] = 3;
    c.lora.layers[1] = 1;
    expect_invalid(tc, &c, "sorted", "code unsorted layers");
    valid_defaults(&c);
    strcpy(c.run.device, "tpu");
    expect_invalid(tc, &c, "run.device = \"tpu\"", "code bad enum");
    valid_defaults(&c);
    strcpy(c.calibration.rule, "topk");
    expect_invalid(tc, &c, "calibration.rule = \"topk\" is not allowed: use one of \"top_k\", \"fraction\", "
                           "\"cumulative\" (did you mean \"top_k\"?)", "code bad calibration.rule");
    valid_defaults(&c);
    strcpy(c.calibration.method, "");
    expect_invalid(tc, &c, "calibration.method = \"\" is not allowed", "code empty calibration.method");
    valid_defaults(&c);
    c.calibration.fraction = 0.0;
    expect_invalid(tc, &c, "calibration.fraction = 0.0 is out of range", "code calibration.fraction 0");
    valid_defaults(&c);
    c.calibration.threshold = NAN;
    expect_invalid(tc, &c, "calibration.threshold", "code NaN threshold");
    valid_defaults(&c);
    c.calibration.k = 0;
    expect_invalid(tc, &c, "calibration.k = 0 is out of range", "code calibration.k 0");
    valid_defaults(&c);
    c.train.epochs = -1;
    expect_invalid(tc, &c, "train.epochs = -1 is out of range", "code negative epochs");

    // lora.layers: the two flags are exclusive; with neither, the list must be valid.
    valid_defaults(&c);
    c.lora.all_layers = 1;
    expect_invalid(tc, &c, "lora.layers cannot be both \"all\" and \"auto\"", "all + auto");
    valid_defaults(&c);
    c.lora.auto_layers = 0;
    expect_invalid(tc, &c, "lora.layers lists 0 layers", "neither flag and no list");
    c.lora.n_layers = 1;
    c.lora.layers[0] = 5;
    expect_valid(tc, &c, "neither flag, list [5]");
    c.lora.all_layers = 1;
    c.lora.auto_layers = 0;
    c.lora.n_layers = 0;
    c.lora.layers[0] = 0;
    expect_valid(tc, &c, "all alone");

    // Training length: max_steps 0 means the epochs decide, so both 0 is an error.
    valid_defaults(&c);
    T_CHECK(tc, c.train.max_steps == 0 && c.train.epochs == 1, "default length is one epoch");
    c.train.epochs = 0;
    expect_invalid(tc, &c, "train.max_steps = 0 and train.epochs = 0", "max_steps 0 and epochs 0");
    c.train.max_steps = 10;
    expect_valid(tc, &c, "epochs 0 with max_steps 10");
    c.train.max_steps = 0;
    c.train.epochs = 3;
    expect_valid(tc, &c, "max_steps 0 with epochs 3");

    // Warmup is only checked against a positive max_steps.
    valid_defaults(&c);
    c.train.warmup_steps = 1000;
    expect_valid(tc, &c, "warmup 1000 with max_steps 0 (epochs decide)");
    c.train.max_steps = 999;
    expect_invalid(tc, &c, "train.warmup_steps = 1000 exceeds train.max_steps = 999", "warmup > max_steps");
    c.train.max_steps = 1000;
    expect_valid(tc, &c, "warmup == max_steps");

    // glue needs data.path.
    valid_defaults(&c);
    c.data.path[0] = '\0';
    expect_invalid(tc, &c, "data.source = \"glue\" needs data.path", "glue without data.path");
    c.train.max_steps = 100;
    expect_invalid(tc, &c, "needs data.path", "glue without data.path, max_steps set");
    strcpy(c.data.path, "x");
    expect_valid(tc, &c, "glue with data.path and max_steps");

    // synthetic needs max_steps > 0 (no epochs); data.path is not needed, but allowed.
    valid_defaults(&c);
    strcpy(c.data.source, "synthetic");
    expect_invalid(tc, &c, "data.source = \"synthetic\" has no epochs: set train.max_steps", "synthetic, max_steps 0");
    c.data.path[0] = '\0';
    expect_invalid(tc, &c, "has no epochs", "synthetic, max_steps 0, no data.path");
    c.train.max_steps = 1;
    expect_valid(tc, &c, "synthetic, max_steps 1, no data.path");
    strcpy(c.data.path, "ignored.h5");
    c.train.epochs = 0;
    expect_valid(tc, &c, "synthetic, max_steps 1, epochs 0, a data.path");
    c.train.max_steps = 0;
    expect_invalid(tc, &c, "train.max_steps = 0 and train.epochs = 0", "synthetic, both 0: the length error first");
}

static char *print_to_string(const RunConfig *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    config_print(c, f);
    fclose(f);
    return buf;
}

// print -> load must give back the very same bytes, and so the same hash.
static void round_trip(TestCounts *tc, const RunConfig *c, const char *what) {
    char *text = print_to_string(c);
    RunConfig back;
    Error err = {{0}};
    int rc = load_text(&back, text, &err);
    T_CHECK(tc, rc == 0, "%s: printed config does not load: [%s]\n%s", what, err.msg, text);
    T_CHECK(tc, rc == 0 && memcmp(&back, c, sizeof back) == 0, "%s: round trip is not memcmp-identical:\n%s", what, text);
    T_CHECK(tc, config_hash(&back) == config_hash(c), "%s: hash differs after the round trip", what);
    free(text);
}

// The value text config_print wrote for `key` ("section.key") into `text`, looked up inside its
// own section (model.path and data.path share the name "path"); 0 if the key is not there.
static int printed_value(const char *text, const char *key, char *out, size_t n) {
    const char *dot = strchr(key, '.');
    char open[64], item[96];
    snprintf(open, sizeof open, "\n%.*s = {\n", (int)(dot - key), key);
    snprintf(item, sizeof item, "\n  %s = ", dot + 1);
    const char *sec = strstr(text, open);
    if (!sec) return 0;
    sec += strlen(open) - 1;   // keep the '\n' so the first item matches too
    const char *close = strstr(sec, "\n};");
    const char *p = strstr(sec, item);
    if (!p || !close || p > close) return 0;
    p += strlen(item);
    const char *e = strstr(p, ";\n");
    if (!e || (size_t)(e - p) >= n) return 0;
    memcpy(out, p, (size_t)(e - p));
    out[e - p] = '\0';
    return 1;
}

static void test_round_trip(TestCounts *tc) {
    RunConfig c;
    Error err = {{0}};
    config_defaults(&c);
    round_trip(tc, &c, "defaults");
    char *text = print_to_string(&c);
    T_CHECK(tc, strstr(text, "  alpha = 16.0;\n") && strstr(text, "  lr = 0.0001;\n") &&
                    strstr(text, "  seed = 1234L;\n") && strstr(text, "  layers = \"auto\";\n") &&
                    strstr(text, "  target_modules = [\"q_proj\", \"v_proj\"];\n") &&
                    strstr(text, "  max_steps = 0;\n  epochs = 1;\n  eval_every = 0;\n") &&
                    strstr(text, "data = {\n  source = \"glue\";\n  path = \"\";\n  task = \"\";\n  seq_len = 128;\n"
                                 "  group_window = 1024;\n};\n") &&
                    strstr(text, "calibration = {\n  method = \"activation\";\n  probe = \"block_output\";\n"
                                 "  batches = 8;\n  rule = \"fraction\";\n  k = 4;\n  fraction = 0.5;\n"
                                 "  threshold = 0.5;\n};\ncheckpoint = {\n  every_steps = 0;\n"
                                 "  every_minutes = 0.0;\n  keep = 2;\n};\nrun = {\n"),
            "printed defaults:\n%s", text);
    // Sections in table order, each printed once.
    const char *secs[] = {"\nmodel = {\n", "\nlora = {\n", "\ntrain = {\n", "\ndata = {\n", "\ncalibration = {\n",
                          "\ncheckpoint = {\n", "\nrun = {\n"};
    const char *prev = text;
    for (size_t i = 0; i < sizeof secs / sizeof secs[0]; i++) {
        const char *at = strstr(text, secs[i]);
        T_CHECK(tc, at && at > prev && strstr(at + 1, secs[i]) == NULL, "section %zu printed once, in order", i);
        if (at) prev = at;
    }
    static char defval[64][4096];
    T_CHECK(tc, config_num_keys() <= 64, "too many keys for this test");
    for (int i = 0; i < config_num_keys() && i < 64; i++) {
        const char *k = config_key_name(i);
        T_CHECK(tc, printed_value(text, k, defval[i], sizeof defval[i]), "config_print lacks key %s", k);
    }
    free(text);

    // Every key set away from its default, the new ones included.
    const char *sets[] = {"model.path=/models/tiny", "model.arch=llama", "model.dtype=fp32", "model.act_dtype=bf16", "model.attention=fused", "model.init=random",
                          "model.num_labels=5", "lora.r=4", "lora.alpha=7.5", "lora.dropout=0.1", "lora.rslora=true",
                          "lora.fuse=true",
                          "lora.target_modules=[down_proj,q_proj,up_proj]", "lora.layers=[9,0,4]",
                          "train.schedule=cosine", "train.warmup_steps=3", "train.weight_decay=0.3",
                          "train.clip=2", "train.beta1=0.95", "train.beta2=0.98765432123", "train.eps=1e-12",
                          "train.micro_batch=3", "train.grad_accum=5", "train.max_steps=1000", "train.epochs=3",
                          "train.eval_every=50", "train.seed=1099511627776", "data.source=synthetic",
                          "data.path=/data/glue/SST-2 tok.h5", "data.task=SST-2", "data.seq_len=333",
                          "data.group_window=64", "calibration.method=gradient", "calibration.probe=lora_input",
                          "calibration.batches=2", "calibration.rule=cumulative", "calibration.k=7",
                          "calibration.fraction=0.3", "calibration.threshold=0.9", "checkpoint.every_steps=25",
                          "checkpoint.every_minutes=7.5", "checkpoint.keep=3", "run.dir=runs/odd",
                          "run.device=cuda", "run.threads=6", "run.log_every=7", "run.profile=true",
                          "run.progress_seconds=2.5", "run.watchdog_minutes=0.5"};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++)
        T_CHECK(tc, config_set(&c, sets[i], &err) == 0, "--set %s: [%s]", sets[i], err.msg);
    c.train.lr = 1.0 / 3.0;                     // needs all 17 digits
    strcpy(c.run.dir, "runs/\"q\"\\b\tc\nd\x01");   // every escape the printer knows
    T_CHECK(tc, config_validate(&c, &err) == 0, "round-trip config validates: [%s]", err.msg);
    text = print_to_string(&c);
    for (int i = 0; i < config_num_keys() && i < 64; i++) {
        char v[4096];
        const char *k = config_key_name(i);
        T_CHECK(tc, printed_value(text, k, v, sizeof v) && strcmp(v, defval[i]) != 0,
                "the round-trip config leaves %s at its default %s", k, defval[i]);
    }
    free(text);
    round_trip(tc, &c, "every key changed");

    RunConfig d = c;
    d.train.lr = nextafter(c.train.lr, 1.0);    // one ulp apart must still hash apart
    T_CHECK(tc, config_hash(&d) != config_hash(&c), "a one-ulp lr change keeps the hash");
    round_trip(tc, &d, "lr + 1 ulp");
    d = c;
    d.train.seed++;
    T_CHECK(tc, config_hash(&d) != config_hash(&c), "a seed change keeps the hash");
    d = c;
    d.calibration.fraction = nextafter(c.calibration.fraction, 0.0);
    T_CHECK(tc, config_hash(&d) != config_hash(&c), "a one-ulp calibration.fraction change keeps the hash");
    round_trip(tc, &d, "calibration.fraction - 1 ulp");

    // The three layer forms print, load back and hash apart.
    RunConfig forms[3];
    const char *form_sets[] = {"lora.layers=auto", "lora.layers=all", "lora.layers=[0,1]"};
    const char *form_text[] = {"  layers = \"auto\";\n", "  layers = \"all\";\n", "  layers = [0, 1];\n"};
    for (int i = 0; i < 3; i++) {
        forms[i] = c;   // from a list, so "auto" and "all" must clear it
        T_CHECK(tc, config_set(&forms[i], form_sets[i], &err) == 0, "--set %s: [%s]", form_sets[i], err.msg);
        text = print_to_string(&forms[i]);
        T_CHECK(tc, strstr(text, form_text[i]) != NULL, "%s prints [%s]", form_sets[i], form_text[i]);
        free(text);
        round_trip(tc, &forms[i], form_sets[i]);
    }
    T_CHECK(tc, config_hash(&forms[0]) != config_hash(&forms[1]) && config_hash(&forms[0]) != config_hash(&forms[2]) &&
                    config_hash(&forms[1]) != config_hash(&forms[2]), "auto, all and a list hash apart");

    // A glue run that lets the epochs decide round-trips too.
    config_defaults(&d);
    strcpy(d.model.path, "/m");
    strcpy(d.data.path, "data/mrpc.h5");
    d.train.epochs = 7;
    d.train.warmup_steps = 100;
    T_CHECK(tc, config_validate(&d, &err) == 0, "glue epoch run validates: [%s]", err.msg);
    round_trip(tc, &d, "glue, max_steps 0, epochs 7");
}

// Every key in the first column of docs/config.md's table rows, as `section.key`, exactly once;
// the third column (Default) must be what --print-config prints for the defaults.
static void test_docs(TestCounts *tc, const char *src) {
    char path[4200], line[2048];
    snprintf(path, sizeof path, "%s/docs/config.md", src);
    FILE *f = fopen(path, "r");
    T_CHECK(tc, f != NULL, "cannot open %s", path);
    if (!f) return;
    enum { MAXDOC = 256 };
    static char doc[MAXDOC][96], docdef[MAXDOC][128];
    int n = 0, flag_documented = 0;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "`--calibrate-only`")) flag_documented = 1;
        const char *p = line;
        while (*p == ' ') p++;
        if (*p != '|') continue;
        p++;
        while (*p == ' ') p++;
        const char *end = strchr(p, '|');
        if (*p != '`' || !end) continue;   // header and separator rows
        const char *close = strchr(p + 1, '`');
        if (!close || close > end || close - p - 1 >= 96) {
            T_CHECK(tc, 0, "docs: malformed key cell in row: %s", line);
            continue;
        }
        if (n < MAXDOC) {
            memcpy(doc[n], p + 1, (size_t)(close - p - 1));
            doc[n][close - p - 1] = '\0';
            // Default cell: the one after the Type cell, "`value`" with blanks around it.
            docdef[n][0] = '\0';
            const char *t = strchr(end + 1, '|'), *dend = t ? strchr(t + 1, '|') : NULL;
            if (t && dend) {
                const char *a = t + 1, *b = dend;
                while (a < b && *a == ' ') a++;
                while (b > a && b[-1] == ' ') b--;
                if (b - a >= 2 && *a == '`' && b[-1] == '`' && (size_t)(b - a - 2) < sizeof docdef[n]) {
                    memcpy(docdef[n], a + 1, (size_t)(b - a - 2));
                    docdef[n][b - a - 2] = '\0';
                }
            }
            n++;
        }
    }
    fclose(f);
    T_CHECK(tc, n > 0, "docs/config.md has no key rows");
    T_CHECK(tc, flag_documented, "docs/config.md does not describe `--calibrate-only`");
    RunConfig def;
    config_defaults(&def);
    char *printed = print_to_string(&def);
    for (int i = 0; i < config_num_keys(); i++) {
        int found = 0;
        for (int j = 0; j < n; j++) {
            if (strcmp(doc[j], config_key_name(i)) != 0) continue;
            found++;
            char v[4096] = "";
            T_CHECK(tc, printed_value(printed, config_key_name(i), v, sizeof v) && strcmp(v, docdef[j]) == 0,
                    "docs/config.md: default of %s is `%s`, --print-config says %s", doc[j], docdef[j], v);
        }
        T_CHECK(tc, found == 1, "docs/config.md: key %s documented %d times (want once)", config_key_name(i), found);
    }
    free(printed);
    for (int j = 0; j < n; j++) {
        int found = 0;
        for (int i = 0; i < config_num_keys(); i++) found |= strcmp(doc[j], config_key_name(i)) == 0;
        T_CHECK(tc, found, "docs/config.md documents %s, which is not a config key", doc[j]);
    }
}

// The shipped example configs must keep loading and validating as the schema evolves.
static void test_shipped_configs(TestCounts *tc, const char *src) {
    char dir[4200], path[4500];
    snprintf(dir, sizeof dir, "%s/configs", src);
    DIR *d = opendir(dir);
    if (!d) return;   // no examples in this checkout
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".cfg") != 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        RunConfig c;
        Error err = {{0}};
        config_defaults(&c);
        int rc = config_load_file(&c, path, &err);
        if (rc == 0) rc = config_validate(&c, &err);
        T_CHECK(tc, rc == 0, "%s does not load: [%s]", path, err.msg);
    }
    closedir(d);
}

// A checkpoint stores config_print text: it loads back, and config_diff_run reports exactly the
// keys that change a run (bookkeeping keys may differ freely); --resume/--force parse.
static void test_resume_support(TestCounts *tc) {
    static RunConfig a, b;
    Error err = {{0}};
    config_defaults(&a);
    strcpy(a.model.path, "m");
    strcpy(a.data.path, "d.h5");
    a.lora.r = 16;
    char *text = print_to_string(&a);
    T_CHECK(tc, config_load_text(&b, text, "ckpt.h5", &err) == 0 && memcmp(&a, &b, sizeof a) == 0,
            "config_load_text(config_print) round trip: [%s]", err.msg);
    free(text);
    char diff[1024];
    T_CHECK(tc, config_diff_run(&a, &b, diff, sizeof diff) == 0, "identical configs differ: %s", diff);
    b.run.log_every = 3;
    b.run.threads = 7;
    b.run.profile = 1;
    b.train.max_steps = 99;
    b.checkpoint.keep = 5;
    strcpy(b.run.dir, "elsewhere");
    T_CHECK(tc, config_diff_run(&a, &b, diff, sizeof diff) == 0, "bookkeeping keys must not count: %s", diff);
    b.lora.r = 4;
    b.train.lr = 0.5;
    int n = config_diff_run(&a, &b, diff, sizeof diff);
    T_CHECK(tc, n == 2 && strstr(diff, "lora.r: 16 -> 4") && strstr(diff, "train.lr: 0.0001 -> 0.5"),
            "diff of lora.r and train.lr: %d [%s]", n, diff);
    T_CHECK(tc, config_load_text(&b, "train = { lr = ; };", "ckpt.h5", &err) == -1 && has(&err, "ckpt.h5:1"),
            "unreadable stored config names its source: [%s]", err.msg);
    CliArgs args;
    char *argv1[] = {"x", "--set", "model.path=m", "--set", "data.path=d", NULL};
    T_CHECK(tc, config_parse_args(&a, &args, 5, argv1, &err) == 0 && strcmp(args.resume, "auto") == 0 && !args.force,
            "--resume defaults to auto: [%s]", err.msg);
    char *argv2[] = {"x", "--resume", "runs/a/checkpoints/ckpt-5-0.h5", "--force", "--set", "model.path=m", "--set",
                     "data.path=d", NULL};
    T_CHECK(tc, config_parse_args(&a, &args, 8, argv2, &err) == 0 && strcmp(args.resume, "runs/a/checkpoints/ckpt-5-0.h5") == 0 &&
                    args.force, "--resume PATH --force: [%s]", err.msg);
    char *argv3[] = {"x", "--resume", NULL};
    T_CHECK(tc, config_parse_args(&a, &args, 2, argv3, &err) == -1 && has(&err, "--resume needs a value"),
            "--resume without a value: [%s]", err.msg);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SOURCE_DIR [BUILD_DIR]\n", argv[0]);
        return 2;
    }
    snprintf(g_cfg, sizeof g_cfg, "%s/test_config_values.XXXXXX", argc > 2 ? argv[2] : "/tmp");
    int fd = mkstemp(g_cfg);
    if (fd < 0) { perror(g_cfg); return 1; }
    close(fd);

    TestCounts tc = {0, 0};
    test_defaults(&tc);
    test_validate(&tc);
    test_round_trip(&tc);
    test_resume_support(&tc);
    test_docs(&tc, argv[1]);
    test_shipped_configs(&tc, argv[1]);

    unlink(g_cfg);
    return t_finish(&tc, "test_config_values");
}
