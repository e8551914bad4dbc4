// test_config.c: the config module: defaults, file loading and every kind of error it
// reports, --set, command-line flags, the print -> load round trip and hash, and that
// docs/config.md documents exactly the schema's keys.
// Usage: test_config SOURCE_DIR [BUILD_DIR]   (temporary files go under BUILD_DIR or /tmp)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "actlora/config.h"
#include "test_util.h"

static char g_dir[4096];    // temporary directory of this run
static char g_cfg[4200];    // the config file the tests write and load

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) { perror(path); exit(1); }
    fputs(text, f);
    fclose(f);
}

// Defaults, then the given text as a config file; returns config_load_file's result.
static int load_text(RunConfig *c, const char *text, Error *err) {
    write_text(g_cfg, text);
    config_defaults(c);
    err->msg[0] = '\0';
    return config_load_file(c, g_cfg, err);
}

static int has(const Error *e, const char *s) { return strstr(e->msg, s) != NULL; }

// The error message for `text` must contain `want` (with "@" replaced by the file path).
static void expect_load_error(TestCounts *tc, const char *text, const char *want) {
    RunConfig c;
    Error err;
    char w[8192];
    const char *at = strchr(want, '@');
    if (at) snprintf(w, sizeof w, "%.*s%s%s", (int)(at - want), want, g_cfg, at + 1);
    else snprintf(w, sizeof w, "%s", want);
    int rc = load_text(&c, text, &err);
    T_CHECK(tc, rc == -1 && has(&err, w), "loading [%s]: want error containing [%s], got rc %d [%s]", text, w, rc,
            err.msg);
}

static void expect_set_error(TestCounts *tc, const char *assign, const char *want) {
    RunConfig c, before;
    Error err = {{0}};
    config_defaults(&c);
    before = c;
    int rc = config_set(&c, assign, &err);
    T_CHECK(tc, rc == -1 && has(&err, want), "--set %s: want error containing [%s], got rc %d [%s]", assign, want, rc,
            err.msg);
    T_CHECK(tc, memcmp(&c, &before, sizeof c) == 0, "--set %s failed but changed the config", assign);
}

static RunConfig set_ok(TestCounts *tc, const char *assign) {
    RunConfig c;
    Error err = {{0}};
    config_defaults(&c);
    int rc = config_set(&c, assign, &err);
    T_CHECK(tc, rc == 0, "--set %s: unexpected error [%s]", assign, err.msg);
    return c;
}

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
    T_CHECK(tc, c.lora.all_layers == 1 && c.lora.n_layers == 0, "layers default 'all'");
    T_CHECK(tc, c.train.lr == 1e-4 && strcmp(c.train.schedule, "linear") == 0 && c.train.warmup_steps == 0,
            "train lr/schedule/warmup defaults");
    T_CHECK(tc, c.train.weight_decay == 0.0 && c.train.clip == 1.0 && c.train.beta1 == 0.9 &&
                    c.train.beta2 == 0.999 && c.train.eps == 1e-8, "optimizer defaults");
    T_CHECK(tc, c.train.micro_batch == 8 && c.train.grad_accum == 1 && c.train.max_steps == 100 &&
                    c.train.seed == 1234, "batch/steps/seed defaults");
    T_CHECK(tc, strcmp(c.data.source, "synthetic") == 0 && c.data.seq_len == 128, "data defaults");
    T_CHECK(tc, strcmp(c.run.dir, "runs/default") == 0 && strcmp(c.run.device, "auto") == 0 && c.run.threads == 0 &&
                    c.run.log_every == 10, "run defaults");
    // The defaults lack only the model directory.
    T_CHECK(tc, config_validate(&c, &err) == -1 && has(&err, "model.path"), "defaults validate without model.path: [%s]",
            err.msg);
    strcpy(c.model.path, "models/tiny");
    T_CHECK(tc, config_validate(&c, &err) == 0, "defaults + model.path validate: [%s]", err.msg);

    int n = config_num_keys();
    T_CHECK(tc, n == 29, "config_num_keys() = %d, want 29", n);
    T_CHECK(tc, config_key_name(-1) == NULL && config_key_name(n) == NULL, "config_key_name out of range is NULL");
    for (int i = 0; i < n; i++) {
        const char *k = config_key_name(i);
        T_CHECK(tc, k && strchr(k, '.'), "key %d has the form section.key", i);
        for (int j = 0; k && j < i; j++) T_CHECK(tc, strcmp(k, config_key_name(j)) != 0, "key %s listed twice", k);
    }
}

static void test_load_valid(TestCounts *tc) {
    RunConfig c;
    Error err = {{0}};
    int rc = load_text(&c,
                       "# a full run file\n"
                       "model = { path = \"/models/tiny llama\"; arch = \"llama\"; dtype = \"bf16\";\n"
                       "          init = \"random\"; num_labels = 1; };\n"
                       "lora = {\n"
                       "  r = 16; alpha = 32; dropout = 0.05; rslora = true;\n"
                       "  target_modules = (\"k_proj\", \"o_proj\", \"down_proj\");\n"
                       "  layers = [5, 1, 3, 1];\n"
                       "};\n"
                       "train = { lr = 1; schedule = \"cosine\"; warmup_steps = 10; weight_decay = 0.01;\n"
                       "          clip = 0; beta1 = 0.8; beta2 = 0.99; eps = 1e-6; micro_batch = 4;\n"
                       "          grad_accum = 2; max_steps = 50L; seed = 99L; };\n"
                       "data = { source = \"synthetic\"; seq_len = 64; };\n"
                       "run = { dir = \"runs/x\"; device = \"cpu\"; threads = 3; log_every = 5; };\n",
                       &err);
    T_CHECK(tc, rc == 0, "valid file: [%s]", err.msg);
    T_CHECK(tc, strcmp(c.model.path, "/models/tiny llama") == 0 && strcmp(c.model.arch, "llama") == 0 &&
                    strcmp(c.model.dtype, "bf16") == 0 && strcmp(c.model.init, "random") == 0 &&
                    c.model.num_labels == 1, "model section loaded");
    T_CHECK(tc, c.lora.r == 16 && c.lora.alpha == 32.0 && c.lora.dropout == 0.05 && c.lora.rslora == 1,
            "lora scalars loaded");
    T_CHECK(tc, c.lora.n_targets == 3 && strcmp(c.lora.targets[0], "k_proj") == 0 &&
                    strcmp(c.lora.targets[2], "down_proj") == 0 && c.lora.targets[3][0] == '\0', "targets loaded");
    T_CHECK(tc, c.lora.all_layers == 0 && c.lora.n_layers == 3 && c.lora.layers[0] == 1 && c.lora.layers[1] == 3 &&
                    c.lora.layers[2] == 5 && c.lora.layers[3] == 0, "layers [5,1,3,1] sorted + deduplicated to [1,3,5]");
    T_CHECK(tc, c.train.lr == 1.0, "integer literal accepted for a double key (lr = 1)");
    T_CHECK(tc, strcmp(c.train.schedule, "cosine") == 0 && c.train.warmup_steps == 10 && c.train.weight_decay == 0.01 &&
                    c.train.clip == 0.0 && c.train.beta1 == 0.8 && c.train.beta2 == 0.99 && c.train.eps == 1e-6,
            "train doubles loaded");
    T_CHECK(tc, c.train.micro_batch == 4 && c.train.grad_accum == 2 && c.train.max_steps == 50 && c.train.seed == 99,
            "train ints loaded (int64 literal for an int key, L literal for int64)");
    T_CHECK(tc, c.data.seq_len == 64 && strcmp(c.run.dir, "runs/x") == 0 && strcmp(c.run.device, "cpu") == 0 &&
                    c.run.threads == 3 && c.run.log_every == 5, "data/run loaded");
    T_CHECK(tc, config_validate(&c, &err) == 0, "loaded file validates: [%s]", err.msg);

    // Partial file: untouched keys keep their defaults; plain int for the int64 seed.
    rc = load_text(&c, "train = { seed = 77; };\nlora = { layers = \"all\"; };\n", &err);
    T_CHECK(tc, rc == 0 && c.train.seed == 77 && c.train.lr == 1e-4 && c.lora.all_layers == 1, "partial file: [%s]",
            err.msg);
    rc = load_text(&c, "train = { seed = 5000000000L; };\n", &err);
    T_CHECK(tc, rc == 0 && c.train.seed == 5000000000LL, "seed 5000000000L: [%s]", err.msg);
    rc = load_text(&c, "", &err);
    T_CHECK(tc, rc == 0, "empty file loads: [%s]", err.msg);
    // Boundaries that must pass.
    rc = load_text(&c, "lora = { dropout = 0.999; };\ntrain = { lr = 10; micro_batch = 65536; };\n", &err);
    T_CHECK(tc, rc == 0 && c.lora.dropout == 0.999 && c.train.lr == 10.0 && c.train.micro_batch == 65536,
            "inclusive bounds accepted: [%s]", err.msg);
    // A layers list replaces "all", and "all" replaces a list.
    rc = load_text(&c, "lora = { layers = [2]; };\n", &err);
    T_CHECK(tc, rc == 0 && !c.lora.all_layers && c.lora.n_layers == 1 && c.lora.layers[0] == 2, "layers [2]");
}

static void test_load_errors(TestCounts *tc) {
    expect_load_error(tc, "train = {\n  lr = 1e-4;\n  lrr = 2;\n};\n", "@:3: unknown key 'train.lrr' (did you mean 'train.lr'?)");
    expect_load_error(tc, "train = {\n  warmup_step = 2;\n};\n",
                      "@:2: unknown key 'train.warmup_step' (did you mean 'train.warmup_steps'?)");
    expect_load_error(tc, "train = { seq_len = 2; };\n", "unknown key 'train.seq_len' (did you mean 'data.seq_len'?)");
    expect_load_error(tc, "lr = 0.1;\n", "@:1: unknown key 'lr' (did you mean 'train.lr'?)");
    {   // far from every key: no suggestion
        RunConfig c;
        Error err;
        load_text(&c, "train = { foo = 1; };\n", &err);
        T_CHECK(tc, has(&err, "unknown key 'train.foo'") && !has(&err, "did you mean"), "no suggestion for foo: [%s]",
                err.msg);
    }
    expect_load_error(tc, "\n\ntrian = { lr = 0.1; };\n", "@:3: unknown section 'trian' (did you mean 'train'?)");
    expect_load_error(tc, "optimizer = { lr = 0.1; };\n", "unknown section 'optimizer' (sections: model, lora, train, data, run)");
    expect_load_error(tc, "train = 5;\n", "@:1: train must be a group");
    // Wrong types.
    expect_load_error(tc, "train = {\n  lr = \"abc\";\n};\n", "@:2: train.lr must be a number (got a string)");
    expect_load_error(tc, "train = { micro_batch = 2.5; };\n", "train.micro_batch must be an integer (got a float)");
    expect_load_error(tc, "train = { seed = 1.0; };\n", "train.seed must be an integer (got a float)");
    expect_load_error(tc, "lora = { rslora = 1; };\n", "lora.rslora must be true or false (got an integer)");
    expect_load_error(tc, "model = { path = 3; };\n", "model.path must be a string (got an integer)");
    expect_load_error(tc, "lora = { target_modules = \"q_proj\"; };\n", "lora.target_modules must be a list");
    expect_load_error(tc, "lora = { target_modules = (\"q_proj\", 1); };\n", "lora.target_modules[1] must be a string");
    expect_load_error(tc, "lora = { layers = 3; };\n", "lora.layers must be \"all\" or a list");
    expect_load_error(tc, "lora = { layers = [1.5]; };\n", "lora.layers[0] must be an integer layer index (got a float)");
    // Out of range, including open bounds.
    expect_load_error(tc, "train = {\n micro_batch = 0;\n};\n",
                      "@:2: train.micro_batch = 0 is out of range: allowed 1..65536");
    expect_load_error(tc, "train = { lr = 0; };\n", "train.lr = 0.0 is out of range: allowed 0 < value <= 10");
    expect_load_error(tc, "train = { lr = 10.5; };\n", "train.lr = 10.5 is out of range");
    expect_load_error(tc, "lora = { dropout = 1.0; };\n", "lora.dropout = 1.0 is out of range: allowed 0 <= value < 1");
    expect_load_error(tc, "lora = { dropout = -0.1; };\n", "lora.dropout = -0.1 is out of range");
    expect_load_error(tc, "train = { seed = -1; };\n", "train.seed = -1 is out of range: allowed >= 0");
    expect_load_error(tc, "train = { clip = -1; };\n", "train.clip = -1.0 is out of range: allowed >= 0");
    expect_load_error(tc, "train = { max_steps = 2000000000L; };\n", "train.max_steps = 2000000000 is out of range");
    expect_load_error(tc, "lora = { r = 2048; };\n", "lora.r = 2048 is out of range: allowed 1..1024");
    expect_load_error(tc, "lora = { layers = [0, -1]; };\n", "lora.layers[1] = -1 is out of range");
    expect_load_error(tc, "lora = { layers = []; };\n", "lora.layers is an empty list");
    expect_load_error(tc, "lora = { layers = \"some\"; };\n", "lora.layers = \"some\" is not allowed");
    // Enumerations and target lists.
    expect_load_error(tc, "train = { schedule = \"cosin\"; };\n",
                      "train.schedule = \"cosin\" is not allowed: use one of \"constant\", \"linear\", \"cosine\" "
                      "(did you mean \"cosine\"?)");
    expect_load_error(tc, "run = { device = \"gpu\"; };\n", "use one of \"auto\", \"cpu\", \"cuda\"");
    expect_load_error(tc, "lora = { target_modules = [\"q_proj\", \"v_proj\", \"q_proj\"]; };\n",
                      "lora.target_modules lists \"q_proj\" twice");
    expect_load_error(tc, "lora = { target_modules = [\"x_proj\"]; };\n",
                      "lora.target_modules[0] = \"x_proj\" is not allowed");
    expect_load_error(tc, "lora = { target_modules = []; };\n", "lora.target_modules must name at least one module");
    // libconfig's own errors keep file:line.
    expect_load_error(tc, "train = {\n  lr = ;\n};\n", "@:2: syntax error");
    expect_load_error(tc, "train = { lr = 1.0; lr = 2.0; };\n", "@:1: duplicate setting name");
    {
        RunConfig c;
        Error err;
        char missing[4300];
        snprintf(missing, sizeof missing, "%s/no-such.cfg", g_dir);
        config_defaults(&c);
        T_CHECK(tc, config_load_file(&c, missing, &err) == -1 && has(&err, "cannot open config file") &&
                        has(&err, "no-such.cfg"), "missing file: [%s]", err.msg);
        // A failed load leaves the config as it was, even after valid keys earlier in the file.
        RunConfig before;
        config_defaults(&before);
        int rc = load_text(&c, "train = { lr = 0.5; micro_batch = 0; };\n", &err);
        T_CHECK(tc, rc == -1 && memcmp(&c, &before, sizeof c) == 0, "failed load left the config unchanged");
    }
}

static void test_set(TestCounts *tc) {
    RunConfig c;
    c = set_ok(tc, "train.lr=3e-4");
    T_CHECK(tc, c.train.lr == 3e-4, "--set train.lr=3e-4 -> %g", c.train.lr);
    c = set_ok(tc, " train.lr = 1 ");
    T_CHECK(tc, c.train.lr == 1.0, "--set train.lr=1 (integer for double) -> %g", c.train.lr);
    c = set_ok(tc, "train.micro_batch=16");
    T_CHECK(tc, c.train.micro_batch == 16, "--set train.micro_batch=16");
    c = set_ok(tc, "train.seed=99999999999");
    T_CHECK(tc, c.train.seed == 99999999999LL, "--set seed beyond 32 bits -> %lld", (long long)c.train.seed);
    c = set_ok(tc, "train.seed=42L");
    T_CHECK(tc, c.train.seed == 42, "--set train.seed=42L");
    c = set_ok(tc, "lora.rslora=true");
    T_CHECK(tc, c.lora.rslora == 1, "--set lora.rslora=true");
    c = set_ok(tc, "train.schedule=cosine");
    T_CHECK(tc, strcmp(c.train.schedule, "cosine") == 0, "--set bare enum");
    c = set_ok(tc, "train.schedule=\"constant\"");
    T_CHECK(tc, strcmp(c.train.schedule, "constant") == 0, "--set quoted enum");
    c = set_ok(tc, "run.dir=/tmp/a b\\c\"d");
    T_CHECK(tc, strcmp(c.run.dir, "/tmp/a b\\c\"d") == 0, "--set bare path with space, backslash, quote -> [%s]",
            c.run.dir);
    c = set_ok(tc, "model.path=\"/m/x\"");
    T_CHECK(tc, strcmp(c.model.path, "/m/x") == 0, "--set quoted path");
    c = set_ok(tc, "lora.target_modules=[q_proj, k_proj]");
    T_CHECK(tc, c.lora.n_targets == 2 && strcmp(c.lora.targets[1], "k_proj") == 0, "--set bare target list");
    c = set_ok(tc, "lora.target_modules=[\"o_proj\",\"v_proj\"]");
    T_CHECK(tc, c.lora.n_targets == 2 && strcmp(c.lora.targets[0], "o_proj") == 0, "--set quoted target list");
    c = set_ok(tc, "lora.target_modules=(up_proj)");
    T_CHECK(tc, c.lora.n_targets == 1 && strcmp(c.lora.targets[0], "up_proj") == 0 && c.lora.targets[1][0] == '\0',
            "--set (up_proj) clears the old second target");
    c = set_ok(tc, "lora.target_modules=gate_proj,down_proj");
    T_CHECK(tc, c.lora.n_targets == 2 && strcmp(c.lora.targets[1], "down_proj") == 0, "--set targets without brackets");
    c = set_ok(tc, "lora.layers=(3,1,3)");
    T_CHECK(tc, !c.lora.all_layers && c.lora.n_layers == 2 && c.lora.layers[0] == 1 && c.lora.layers[1] == 3,
            "--set lora.layers=(3,1,3) -> [1,3]");
    c = set_ok(tc, "lora.layers=2,0");
    T_CHECK(tc, !c.lora.all_layers && c.lora.n_layers == 2 && c.lora.layers[0] == 0 && c.lora.layers[1] == 2,
            "--set lora.layers=2,0 -> [0,2]");
    c = set_ok(tc, "lora.layers=[7]");
    T_CHECK(tc, c.lora.n_layers == 1 && c.lora.layers[0] == 7, "--set lora.layers=[7]");
    {
        Error err = {{0}};
        T_CHECK(tc, config_set(&c, "lora.layers=all", &err) == 0 && c.lora.all_layers && c.lora.n_layers == 0 &&
                        c.lora.layers[0] == 0, "--set lora.layers=all after a list: [%s]", err.msg);
    }

    expect_set_error(tc, "train.lr=abc", "--set train.lr=abc: train.lr must be a number (got 'abc'");
    expect_set_error(tc, "train.lr=\"0.1\"", "--set train.lr=\"0.1\": train.lr must be a number (got a string)");
    expect_set_error(tc, "train.lr=0", "--set train.lr=0: train.lr = 0.0 is out of range");
    expect_set_error(tc, "train.micro_batch=0", "train.micro_batch = 0 is out of range: allowed 1..65536");
    expect_set_error(tc, "train.micro_batch=1.5", "train.micro_batch must be an integer (got a float)");
    expect_set_error(tc, "train.max_steps=99999999999", "train.max_steps = 99999999999 is out of range");
    expect_set_error(tc, "lora.dropout=1", "lora.dropout = 1.0 is out of range");
    expect_set_error(tc, "lora.rslora=yes", "lora.rslora must be true or false");
    expect_set_error(tc, "train.schedule=cosin", "(did you mean \"cosine\"?)");
    expect_set_error(tc, "lora.target_modules=[q_proj,q_proj]", "lists \"q_proj\" twice");
    expect_set_error(tc, "lora.target_modules=[]", "must name at least one module");
    expect_set_error(tc, "lora.layers=none", "lora.layers = \"none\" is not allowed");
    expect_set_error(tc, "lora.layers=[1,2000]", "lora.layers[1] = 2000 is out of range");
    expect_set_error(tc, "train.lrr=1", "--set train.lrr=1: unknown key 'train.lrr' (did you mean 'train.lr'?)");
    expect_set_error(tc, "trian.lr=1", "unknown key 'trian.lr' (did you mean 'train.lr'?)");
    expect_set_error(tc, "seq_len=64", "unknown key 'seq_len' (did you mean 'data.seq_len'?)");
    expect_set_error(tc, "train.lr", "expected section.key=value");
    expect_set_error(tc, "train.lr=", "empty value for train.lr");
    expect_set_error(tc, "train.lr=1; train = { lr = 2.0; }", "train.lr must be a number");
}

static void test_args(TestCounts *tc) {
    RunConfig c;
    CliArgs a;
    Error err = {{0}};
    char cfgarg[4300];
    write_text(g_cfg, "model = { path = \"/m\"; };\ntrain = { lr = 0.5; max_steps = 20; };\n");

    char *help[] = {"prog", "--help", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 2, help, &err) == 0 && a.help && !a.version,
            "--help parses without a model.path: [%s]", err.msg);
    char *h2[] = {"prog", "-h", "--config", "/no/such/file", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 4, h2, &err) == 0 && a.help, "-h skips loading the file: [%s]", err.msg);
    char *ver[] = {"prog", "--version", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 2, ver, &err) == 0 && a.version, "--version");

    // --set before --config still applies after the file; --set applies in order.
    char *full[] = {"prog", "--set", "train.lr=0.25", "--config", g_cfg, "--set=train.max_steps=30",
                    "--set", "train.max_steps=40", "--print-config", NULL};
    int rc = config_parse_args(&c, &a, 9, full, &err);
    T_CHECK(tc, rc == 0 && a.print_config && strcmp(a.config_path, g_cfg) == 0, "full command line: [%s]", err.msg);
    T_CHECK(tc, c.train.lr == 0.25 && c.train.max_steps == 40 && strcmp(c.model.path, "/m") == 0,
            "order defaults -> file -> --set in order (lr %g, max_steps %d)", c.train.lr, c.train.max_steps);
    snprintf(cfgarg, sizeof cfgarg, "--config=%s", g_cfg);
    char *eqform[] = {"prog", cfgarg, NULL};
    rc = config_parse_args(&c, &a, 2, eqform, &err);
    T_CHECK(tc, rc == 0 && c.train.lr == 0.5 && !a.print_config, "--config=FILE: [%s]", err.msg);

    char *unk[] = {"prog", "--confg", g_cfg, NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 3, unk, &err) == -1 && has(&err, "unknown option '--confg'") &&
                    has(&err, "did you mean '--config'?"), "unknown flag: [%s]", err.msg);
    char *unk2[] = {"prog", "--print_config", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 2, unk2, &err) == -1 && has(&err, "did you mean '--print-config'?"),
            "--print_config: [%s]", err.msg);
    char *unk3[] = {"prog", "--bogus-flag-xyz", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 2, unk3, &err) == -1 && has(&err, "unknown option") &&
                    !has(&err, "did you mean"), "far-off flag gets no suggestion: [%s]", err.msg);
    char *pos[] = {"prog", "train.lr=1", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 2, pos, &err) == -1 && has(&err, "--set train.lr=1"),
            "positional assignment hints --set: [%s]", err.msg);
    char *noval[] = {"prog", "--config", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 2, noval, &err) == -1 && has(&err, "--config needs a file"),
            "--config without a file: [%s]", err.msg);
    char *twice[] = {"prog", "--config", g_cfg, "--config", g_cfg, NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 5, twice, &err) == -1 && has(&err, "--config given twice"),
            "--config twice: [%s]", err.msg);
    char *nopath[] = {"prog", "--set", "train.lr=0.1", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 3, nopath, &err) == -1 && has(&err, "model.path is required"),
            "validation runs (no model.path): [%s]", err.msg);
    char *badset[] = {"prog", "--config", g_cfg, "--set", "train.lrr=1", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 5, badset, &err) == -1 && has(&err, "did you mean 'train.lr'?"),
            "bad --set through parse_args: [%s]", err.msg);
    char *warm[] = {"prog", "--config", g_cfg, "--set", "train.warmup_steps=21", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 5, warm, &err) == -1 && has(&err, "train.warmup_steps = 21 exceeds"),
            "warmup_steps > max_steps: [%s]", err.msg);
    char *warm_ok[] = {"prog", "--config", g_cfg, "--set", "train.warmup_steps=20", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 5, warm_ok, &err) == 0, "warmup_steps == max_steps ok: [%s]", err.msg);

    // config_usage names the flags and the docs.
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    config_usage(f);
    fclose(f);
    T_CHECK(tc, strstr(buf, "--config") && strstr(buf, "--set") && strstr(buf, "--print-config") &&
                    strstr(buf, "--version") && strstr(buf, "docs/config.md"), "usage text:\n%s", buf);
    free(buf);
}

static void test_validate(TestCounts *tc) {
    RunConfig c;
    Error err = {{0}};
    config_defaults(&c);
    strcpy(c.model.path, "/m");
    c.train.micro_batch = 65536;
    c.data.seq_len = 1048576;
    T_CHECK(tc, config_validate(&c, &err) == -1 && has(&err, "tokens per micro-step"), "token overflow: [%s]", err.msg);
    // Configs built in code get the per-key checks too.
    config_defaults(&c);
    strcpy(c.model.path, "/m");
    c.train.lr = -1;
    T_CHECK(tc, config_validate(&c, &err) == -1 && has(&err, "train.lr = -1.0 is out of range"), "code lr: [%s]", err.msg);
    c.train.lr = NAN;
    T_CHECK(tc, config_validate(&c, &err) == -1 && has(&err, "train.lr"), "NaN lr rejected: [%s]", err.msg);
    config_defaults(&c);
    strcpy(c.model.path, "/m");
    strcpy(c.lora.targets[1], "q_proj");
    T_CHECK(tc, config_validate(&c, &err) == -1 && has(&err, "twice"), "code duplicate target: [%s]", err.msg);
    config_defaults(&c);
    strcpy(c.model.path, "/m");
    c.lora.all_layers = 0;
    c.lora.n_layers = 2;
    c.lora.layers[0] = 3;
    c.lora.layers[1] = 1;
    T_CHECK(tc, config_validate(&c, &err) == -1 && has(&err, "sorted"), "code unsorted layers: [%s]", err.msg);
    config_defaults(&c);
    strcpy(c.model.path, "/m");
    strcpy(c.run.device, "tpu");
    T_CHECK(tc, config_validate(&c, &err) == -1 && has(&err, "run.device = \"tpu\""), "code bad enum: [%s]", err.msg);
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

static void test_round_trip(TestCounts *tc) {
    RunConfig c;
    Error err = {{0}};
    config_defaults(&c);
    round_trip(tc, &c, "defaults");
    char *text = print_to_string(&c);
    T_CHECK(tc, strstr(text, "  alpha = 16.0;\n") && strstr(text, "  lr = 0.0001;\n") &&
                    strstr(text, "  seed = 1234L;\n") && strstr(text, "  layers = \"all\";\n") &&
                    strstr(text, "  target_modules = [\"q_proj\", \"v_proj\"];\n"), "printed defaults:\n%s", text);
    for (int i = 0; i < config_num_keys(); i++) {
        const char *k = config_key_name(i), *dot = strchr(k, '.');
        char line[96];
        snprintf(line, sizeof line, "\n  %s = ", dot + 1);
        T_CHECK(tc, strstr(text, line) != NULL, "config_print lacks key %s", k);
    }
    free(text);

    const char *sets[] = {"model.path=/models/tiny", "model.arch=llama", "model.dtype=fp32", "model.init=random",
                          "model.num_labels=5", "lora.r=4", "lora.alpha=7.5", "lora.dropout=0.1", "lora.rslora=true",
                          "lora.target_modules=[down_proj,q_proj,up_proj]", "lora.layers=[9,0,4]",
                          "train.schedule=cosine", "train.warmup_steps=3", "train.weight_decay=0.3",
                          "train.clip=2", "train.beta1=0.95", "train.beta2=0.98765432123", "train.eps=1e-12",
                          "train.micro_batch=3", "train.grad_accum=5", "train.max_steps=1000",
                          "train.seed=1099511627776", "data.seq_len=333", "run.dir=runs/odd", "run.device=cuda",
                          "run.threads=6", "run.log_every=7"};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++)
        T_CHECK(tc, config_set(&c, sets[i], &err) == 0, "--set %s: [%s]", sets[i], err.msg);
    c.train.lr = 1.0 / 3.0;                     // needs all 17 digits
    strcpy(c.run.dir, "runs/\"q\"\\b\tc\nd\x01");   // every escape the printer knows
    T_CHECK(tc, config_validate(&c, &err) == 0, "round-trip config validates: [%s]", err.msg);
    round_trip(tc, &c, "every key changed");

    RunConfig d = c;
    d.train.lr = nextafter(c.train.lr, 1.0);    // one ulp apart must still hash apart
    T_CHECK(tc, config_hash(&d) != config_hash(&c), "a one-ulp lr change keeps the hash");
    round_trip(tc, &d, "lr + 1 ulp");
    d = c;
    d.train.seed++;
    T_CHECK(tc, config_hash(&d) != config_hash(&c), "a seed change keeps the hash");
}

// Every key in the first column of docs/config.md's table rows, as `section.key`.
static void test_docs(TestCounts *tc, const char *src) {
    char path[4200], line[2048];
    snprintf(path, sizeof path, "%s/docs/config.md", src);
    FILE *f = fopen(path, "r");
    T_CHECK(tc, f != NULL, "cannot open %s", path);
    if (!f) return;
    enum { MAXDOC = 256 };
    static char doc[MAXDOC][96];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
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
            n++;
        }
    }
    fclose(f);
    T_CHECK(tc, n > 0, "docs/config.md has no key rows");
    for (int i = 0; i < config_num_keys(); i++) {
        int found = 0;
        for (int j = 0; j < n; j++) found += strcmp(doc[j], config_key_name(i)) == 0;
        T_CHECK(tc, found == 1, "docs/config.md: key %s documented %d times (want once)", config_key_name(i), found);
    }
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

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SOURCE_DIR [BUILD_DIR]\n", argv[0]);
        return 2;
    }
    snprintf(g_dir, sizeof g_dir, "%s/test_config.XXXXXX", argc > 2 ? argv[2] : "/tmp");
    if (!mkdtemp(g_dir)) { perror(g_dir); return 1; }
    snprintf(g_cfg, sizeof g_cfg, "%s/run.cfg", g_dir);

    TestCounts tc = {0, 0};
    test_defaults(&tc);
    test_load_valid(&tc);
    test_load_errors(&tc);
    test_set(&tc);
    test_args(&tc);
    test_validate(&tc);
    test_round_trip(&tc);
    test_docs(&tc, argv[1]);
    test_shipped_configs(&tc, argv[1]);

    unlink(g_cfg);
    rmdir(g_dir);
    return t_finish(&tc, "test_config");
}
