// test_config.c: reading a configuration: file loading and every kind of error it reports,
// --set, the three forms of lora.layers ("auto", "all", a list) and command-line flags
// (--calibrate-only included). The defaults, validation, printing, hashing, diffing and the
// docs check are in test_config_values.c.
// Usage: test_config SOURCE_DIR [BUILD_DIR]   (temporary files go under BUILD_DIR or /tmp)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
                       "          grad_accum = 2; max_steps = 50L; epochs = 4; eval_every = 25; seed = 99L; };\n"
                       "data = { source = \"synthetic\"; path = \"/data/sst2 x.h5\"; task = \"SST-2\";\n"
                       "         seq_len = 64; group_window = 1; };\n"
                       "calibration = { method = \"gradient\"; probe = \"lora_input\"; batches = 2;\n"
                       "                rule = \"cumulative\"; k = 1024; fraction = 1; threshold = 0.75; };\n"
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
    T_CHECK(tc, c.lora.all_layers == 0 && c.lora.auto_layers == 0 && c.lora.n_layers == 3 && c.lora.layers[0] == 1 &&
                    c.lora.layers[1] == 3 && c.lora.layers[2] == 5 && c.lora.layers[3] == 0,
            "layers [5,1,3,1] sorted + deduplicated to [1,3,5], neither auto nor all");
    T_CHECK(tc, c.train.lr == 1.0, "integer literal accepted for a double key (lr = 1)");
    T_CHECK(tc, strcmp(c.train.schedule, "cosine") == 0 && c.train.warmup_steps == 10 && c.train.weight_decay == 0.01 &&
                    c.train.clip == 0.0 && c.train.beta1 == 0.8 && c.train.beta2 == 0.99 && c.train.eps == 1e-6,
            "train doubles loaded");
    T_CHECK(tc, c.train.micro_batch == 4 && c.train.grad_accum == 2 && c.train.max_steps == 50 && c.train.seed == 99,
            "train ints loaded (int64 literal for an int key, L literal for int64)");
    T_CHECK(tc, c.train.epochs == 4 && c.train.eval_every == 25, "train.epochs/eval_every loaded");
    T_CHECK(tc, strcmp(c.data.source, "synthetic") == 0 && strcmp(c.data.path, "/data/sst2 x.h5") == 0 &&
                    strcmp(c.data.task, "SST-2") == 0 && c.data.seq_len == 64 && c.data.group_window == 1,
            "data section loaded");
    T_CHECK(tc, strcmp(c.calibration.method, "gradient") == 0 && strcmp(c.calibration.probe, "lora_input") == 0 &&
                    c.calibration.batches == 2 && strcmp(c.calibration.rule, "cumulative") == 0 &&
                    c.calibration.k == 1024 && c.calibration.fraction == 1.0 && c.calibration.threshold == 0.75,
            "calibration section loaded (k = 1024 and fraction = 1 are the inclusive upper bounds)");
    T_CHECK(tc, strcmp(c.run.dir, "runs/x") == 0 && strcmp(c.run.device, "cpu") == 0 && c.run.threads == 3 &&
                    c.run.log_every == 5, "run loaded");
    T_CHECK(tc, config_validate(&c, &err) == 0, "loaded file validates: [%s]", err.msg);

    // Partial file: untouched keys keep their defaults; plain int for the int64 seed.
    rc = load_text(&c, "train = { seed = 77; };\nlora = { layers = \"all\"; };\n", &err);
    T_CHECK(tc, rc == 0 && c.train.seed == 77 && c.train.lr == 1e-4 && c.lora.all_layers == 1 && !c.lora.auto_layers,
            "partial file, layers \"all\" clears the default \"auto\": [%s]", err.msg);
    rc = load_text(&c, "lora = { layers = \"auto\"; };\ncalibration = { rule = \"top_k\"; k = 3; };\n", &err);
    T_CHECK(tc, rc == 0 && c.lora.auto_layers == 1 && !c.lora.all_layers && c.lora.n_layers == 0 &&
                    strcmp(c.calibration.rule, "top_k") == 0 && c.calibration.k == 3 && c.calibration.batches == 8,
            "layers \"auto\" + a partial calibration section: [%s]", err.msg);
    // A glue run needs only the data file; a synthetic one needs max_steps instead.
    rc = load_text(&c, "model = { path = \"/m\"; };\ndata = { path = \"d.h5\"; };\n", &err);
    T_CHECK(tc, rc == 0 && config_validate(&c, &err) == 0 && c.train.max_steps == 0 && c.train.epochs == 1,
            "minimal glue file validates: [%s]", err.msg);
    rc = load_text(&c, "model = { path = \"/m\"; };\ndata = { source = \"synthetic\"; };\ntrain = { max_steps = 1; };\n",
                   &err);
    T_CHECK(tc, rc == 0 && config_validate(&c, &err) == 0, "minimal synthetic file validates: [%s]", err.msg);
    rc = load_text(&c, "train = { seed = 5000000000L; };\n", &err);
    T_CHECK(tc, rc == 0 && c.train.seed == 5000000000LL, "seed 5000000000L: [%s]", err.msg);
    rc = load_text(&c, "", &err);
    T_CHECK(tc, rc == 0, "empty file loads: [%s]", err.msg);
    // Boundaries that must pass.
    rc = load_text(&c, "lora = { dropout = 0.999; };\ntrain = { lr = 10; micro_batch = 65536; };\n", &err);
    T_CHECK(tc, rc == 0 && c.lora.dropout == 0.999 && c.train.lr == 10.0 && c.train.micro_batch == 65536,
            "inclusive bounds accepted: [%s]", err.msg);
    rc = load_text(&c,
                   "train = { max_steps = 0; epochs = 0; eval_every = 0; };\ndata = { group_window = 0; };\n"
                   "calibration = { batches = 1; k = 1; fraction = 1e-9; threshold = 1.0; };\n",
                   &err);
    T_CHECK(tc, rc == 0 && c.train.max_steps == 0 && c.train.epochs == 0 && c.data.group_window == 0 &&
                    c.calibration.batches == 1 && c.calibration.k == 1 && c.calibration.fraction == 1e-9 &&
                    c.calibration.threshold == 1.0,
            "lower bounds of the new keys load (the 0/0 length is a validation error, not a load error): [%s]",
            err.msg);
    // A layers list replaces the default "auto".
    rc = load_text(&c, "lora = { layers = [2]; };\n", &err);
    T_CHECK(tc, rc == 0 && !c.lora.all_layers && !c.lora.auto_layers && c.lora.n_layers == 1 && c.lora.layers[0] == 2,
            "layers [2]");
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
    expect_load_error(tc, "optimizer = { lr = 0.1; };\n", "unknown section 'optimizer' (sections: model, lora, train, data, calibration, checkpoint, run)");
    expect_load_error(tc, "calibraton = { k = 2; };\n", "@:1: unknown section 'calibraton' (did you mean 'calibration'?)");
    expect_load_error(tc, "calibration = {\n  treshold = 0.9;\n};\n",
                      "@:2: unknown key 'calibration.treshold' (did you mean 'calibration.threshold'?)");
    expect_load_error(tc, "train = { epoch = 2; };\n", "unknown key 'train.epoch' (did you mean 'train.epochs'?)");
    expect_load_error(tc, "train = { k = 2; };\n", "unknown key 'train.k' (did you mean 'calibration.k'?)");
    expect_load_error(tc, "data = { rule = \"top_k\"; };\n", "unknown key 'data.rule' (did you mean 'calibration.rule'?)");
    expect_load_error(tc, "train = 5;\n", "@:1: train must be a group");
    // Wrong types.
    expect_load_error(tc, "train = {\n  lr = \"abc\";\n};\n", "@:2: train.lr must be a number (got a string)");
    expect_load_error(tc, "train = { micro_batch = 2.5; };\n", "train.micro_batch must be an integer (got a float)");
    expect_load_error(tc, "train = { seed = 1.0; };\n", "train.seed must be an integer (got a float)");
    expect_load_error(tc, "lora = { rslora = 1; };\n", "lora.rslora must be true or false (got an integer)");
    expect_load_error(tc, "model = { path = 3; };\n", "model.path must be a string (got an integer)");
    expect_load_error(tc, "lora = { target_modules = \"q_proj\"; };\n", "lora.target_modules must be a list");
    expect_load_error(tc, "lora = { target_modules = (\"q_proj\", 1); };\n", "lora.target_modules[1] must be a string");
    expect_load_error(tc, "lora = { layers = 3; };\n",
                      "lora.layers must be \"auto\", \"all\" or a list of layer indices such as [0, 1] (got an integer)");
    expect_load_error(tc, "lora = { layers = true; };\n", "lora.layers must be \"auto\", \"all\" or a list");
    expect_load_error(tc, "data = { path = 1; };\n", "data.path must be a string (got an integer)");
    expect_load_error(tc, "train = { epochs = 1.5; };\n", "train.epochs must be an integer (got a float)");
    expect_load_error(tc, "calibration = { k = \"4\"; };\n", "calibration.k must be an integer (got a string)");
    expect_load_error(tc, "calibration = { fraction = \"half\"; };\n", "calibration.fraction must be a number (got a string)");
    expect_load_error(tc, "calibration = { rule = 1; };\n", "calibration.rule must be a string (got an integer)");
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
    expect_load_error(tc, "lora = { layers = \"some\"; };\n",
                      "lora.layers = \"some\" is not allowed: use \"auto\", \"all\" or a list of layer indices");
    expect_load_error(tc, "lora = { layers = \"AUTO\"; };\n", "lora.layers = \"AUTO\" is not allowed");
    expect_load_error(tc, "lora = { layers = \"\"; };\n", "lora.layers = \"\" is not allowed");
    // Ranges of the new keys.
    expect_load_error(tc, "train = { max_steps = -1; };\n", "train.max_steps = -1 is out of range: allowed 0..1000000000");
    expect_load_error(tc, "train = { epochs = -1; };\n", "train.epochs = -1 is out of range: allowed 0..1000000");
    expect_load_error(tc, "train = { epochs = 1000001; };\n", "train.epochs = 1000001 is out of range");
    expect_load_error(tc, "train = { eval_every = -5; };\n", "train.eval_every = -5 is out of range: allowed 0..1000000000");
    expect_load_error(tc, "data = { group_window = -1; };\n", "data.group_window = -1 is out of range: allowed 0..1000000000");
    expect_load_error(tc, "calibration = { batches = 0; };\n", "calibration.batches = 0 is out of range: allowed 1..1000000");
    expect_load_error(tc, "calibration = { k = 0; };\n", "calibration.k = 0 is out of range: allowed 1..1024");
    expect_load_error(tc, "calibration = { k = 1025; };\n", "calibration.k = 1025 is out of range: allowed 1..1024");
    expect_load_error(tc, "calibration = { fraction = 0; };\n",
                      "calibration.fraction = 0.0 is out of range: allowed 0 < value <= 1");
    expect_load_error(tc, "calibration = { fraction = 1.5; };\n", "calibration.fraction = 1.5 is out of range");
    expect_load_error(tc, "calibration = { threshold = 0.0; };\n",
                      "calibration.threshold = 0.0 is out of range: allowed 0 < value <= 1");
    expect_load_error(tc, "calibration = { threshold = 1.01; };\n", "calibration.threshold = 1.01 is out of range");
    expect_load_error(tc, "data = { task = \"a task name over 15\"; };\n", "data.task is too long (19 bytes, at most 15)");
    // Enumerations and target lists.
    expect_load_error(tc, "train = { schedule = \"cosin\"; };\n",
                      "train.schedule = \"cosin\" is not allowed: use one of \"constant\", \"linear\", \"cosine\" "
                      "(did you mean \"cosine\"?)");
    expect_load_error(tc, "run = { device = \"gpu\"; };\n", "use one of \"auto\", \"cpu\", \"cuda\"");
    expect_load_error(tc, "data = { source = \"gleu\"; };\n",
                      "data.source = \"gleu\" is not allowed: use one of \"glue\", \"synthetic\" (did you mean \"glue\"?)");
    expect_load_error(tc, "calibration = {\n  method = \"activations\";\n};\n",
                      "@:2: calibration.method = \"activations\" is not allowed: use one of \"activation\", "
                      "\"gradient\", \"random\" (did you mean \"activation\"?)");
    expect_load_error(tc, "calibration = { probe = \"block-output\"; };\n",
                      "calibration.probe = \"block-output\" is not allowed: use one of \"block_output\", "
                      "\"lora_input\" (did you mean \"block_output\"?)");
    expect_load_error(tc, "calibration = { rule = \"topk\"; };\n",
                      "calibration.rule = \"topk\" is not allowed: use one of \"top_k\", \"fraction\", "
                      "\"cumulative\" (did you mean \"top_k\"?)");
    expect_load_error(tc, "calibration = { rule = \"cumulativ\"; };\n", "(did you mean \"cumulative\"?)");
    {   // far from every value: the allowed list but no suggestion
        RunConfig c;
        Error err;
        load_text(&c, "calibration = { method = \"fisher\"; };\n", &err);
        T_CHECK(tc, has(&err, "calibration.method = \"fisher\" is not allowed: use one of") && !has(&err, "did you mean"),
                "no suggestion for method fisher: [%s]", err.msg);
    }
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
        T_CHECK(tc, config_set(&c, "lora.layers=all", &err) == 0 && c.lora.all_layers && !c.lora.auto_layers &&
                        c.lora.n_layers == 0 && c.lora.layers[0] == 0, "--set lora.layers=all after a list: [%s]", err.msg);
    }
    c = set_ok(tc, "calibration.rule=top_k");
    T_CHECK(tc, strcmp(c.calibration.rule, "top_k") == 0, "--set calibration.rule=top_k");
    c = set_ok(tc, "calibration.fraction=1");
    T_CHECK(tc, c.calibration.fraction == 1.0, "--set calibration.fraction=1 (integer for double)");
    c = set_ok(tc, "data.source=synthetic");
    T_CHECK(tc, strcmp(c.data.source, "synthetic") == 0, "--set data.source=synthetic");
    c = set_ok(tc, "data.path=/data/a b.h5");
    T_CHECK(tc, strcmp(c.data.path, "/data/a b.h5") == 0, "--set bare data.path with a space");
    c = set_ok(tc, "train.max_steps=0");
    T_CHECK(tc, c.train.max_steps == 0, "--set train.max_steps=0 (epochs decide) is in range");

    expect_set_error(tc, "calibration.rule=topk", "--set calibration.rule=topk: calibration.rule = \"topk\" is not allowed: "
                                                  "use one of \"top_k\", \"fraction\", \"cumulative\" (did you mean \"top_k\"?)");
    expect_set_error(tc, "calibration.method=gradiant", "(did you mean \"gradient\"?)");
    expect_set_error(tc, "calibration.probe=lora-input", "(did you mean \"lora_input\"?)");
    expect_set_error(tc, "data.source=synthetc", "data.source = \"synthetc\" is not allowed: use one of \"glue\", "
                                                 "\"synthetic\" (did you mean \"synthetic\"?)");
    expect_set_error(tc, "calibration.k=0", "--set calibration.k=0: calibration.k = 0 is out of range: allowed 1..1024");
    expect_set_error(tc, "calibration.threshold=0", "calibration.threshold = 0.0 is out of range");
    expect_set_error(tc, "train.epochs=-1", "train.epochs = -1 is out of range");
    expect_set_error(tc, "calibration.tresh=0.5", "unknown key 'calibration.tresh'");
    expect_set_error(tc, "lora.layers=Auto", "lora.layers = \"Auto\" is not allowed: use \"auto\", \"all\"");
}

// lora.layers has three forms; every assignment replaces the previous one entirely, so the
// flags and the list never mix (and a config that went list -> auto equals the defaults).
static void test_layers_forms(TestCounts *tc) {
    RunConfig c, def;
    Error err = {{0}};
    config_defaults(&def);
    c = def;
    T_CHECK(tc, config_set(&c, "lora.layers=[4,2]", &err) == 0 && !c.lora.auto_layers && !c.lora.all_layers &&
                    c.lora.n_layers == 2 && c.lora.layers[0] == 2 && c.lora.layers[1] == 4,
            "auto -> [2,4]: [%s]", err.msg);
    T_CHECK(tc, config_set(&c, "lora.layers=auto", &err) == 0 && c.lora.auto_layers && !c.lora.all_layers &&
                    c.lora.n_layers == 0 && c.lora.layers[0] == 0 && c.lora.layers[1] == 0,
            "[2,4] -> auto clears the list: [%s]", err.msg);
    T_CHECK(tc, memcmp(&c, &def, sizeof c) == 0, "list -> auto is byte-identical to the defaults");
    T_CHECK(tc, config_set(&c, "lora.layers=all", &err) == 0 && c.lora.all_layers && !c.lora.auto_layers &&
                    c.lora.n_layers == 0, "auto -> all: [%s]", err.msg);
    T_CHECK(tc, config_set(&c, "lora.layers=\"auto\"", &err) == 0 && c.lora.auto_layers && !c.lora.all_layers,
            "all -> \"auto\" (quoted): [%s]", err.msg);
    T_CHECK(tc, memcmp(&c, &def, sizeof c) == 0, "all -> auto is byte-identical to the defaults");
    T_CHECK(tc, config_set(&c, "lora.layers=all", &err) == 0 && config_set(&c, "lora.layers=7", &err) == 0 &&
                    !c.lora.all_layers && !c.lora.auto_layers && c.lora.n_layers == 1 && c.lora.layers[0] == 7,
            "all -> 7 (a single bare index is a list): [%s]", err.msg);
    // A failed assignment keeps the previous form.
    RunConfig before = c;
    T_CHECK(tc, config_set(&c, "lora.layers=sometimes", &err) == -1 && memcmp(&c, &before, sizeof c) == 0,
            "a bad layers value keeps the list");
    T_CHECK(tc, config_set(&c, "lora.layers=[]", &err) == -1 && has(&err, "empty list") &&
                    memcmp(&c, &before, sizeof c) == 0, "an empty layers list keeps the list: [%s]", err.msg);

    // The same through a file: the file's form replaces whatever came before.
    T_CHECK(tc, load_text(&c, "lora = { layers = \"all\"; };\n", &err) == 0 && c.lora.all_layers &&
                    !c.lora.auto_layers, "file: layers \"all\": [%s]", err.msg);
    write_text(g_cfg, "lora = { layers = \"auto\"; };\n");
    c = def;
    T_CHECK(tc, config_set(&c, "lora.layers=1,3", &err) == 0 && config_load_file(&c, g_cfg, &err) == 0 &&
                    memcmp(&c, &def, sizeof c) == 0, "file: list -> \"auto\" equals the defaults: [%s]", err.msg);

    // Each form validates (with the data file a glue run needs).
    strcpy(def.model.path, "/m");
    strcpy(def.data.path, "d.h5");
    const char *forms[] = {"lora.layers=auto", "lora.layers=all", "lora.layers=[0]", "lora.layers=[1023]"};
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        c = def;
        T_CHECK(tc, config_set(&c, forms[i], &err) == 0 && config_validate(&c, &err) == 0, "%s validates: [%s]",
                forms[i], err.msg);
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
    // A synthetic run: valid with max_steps set (glue would need data.path, tested below).
    write_text(g_cfg, "model = { path = \"/m\"; };\ntrain = { lr = 0.5; max_steps = 20; };\n"
                      "data = { source = \"synthetic\"; };\n");

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
    T_CHECK(tc, rc == 0 && a.print_config && !a.calibrate_only && strcmp(a.config_path, g_cfg) == 0,
            "full command line: [%s]", err.msg);
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
    char *syn0[] = {"prog", "--config", g_cfg, "--set", "train.max_steps=0", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 5, syn0, &err) == -1 &&
                    has(&err, "data.source = \"synthetic\" has no epochs: set train.max_steps"),
            "synthetic with max_steps = 0 through parse_args: [%s]", err.msg);
    char *toglue[] = {"prog", "--config", g_cfg, "--set", "data.source=glue", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 5, toglue, &err) == -1 && has(&err, "needs data.path"),
            "--set data.source=glue without data.path: [%s]", err.msg);
    char *glue_ok[] = {"prog", "--config", g_cfg, "--set", "data.source=glue", "--set", "data.path=d.h5",
                       "--set", "train.max_steps=0", "--set", "train.warmup_steps=500", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 11, glue_ok, &err) == 0 && c.train.max_steps == 0 &&
                    c.train.warmup_steps == 500 && strcmp(c.data.path, "d.h5") == 0,
            "glue with data.path, max_steps 0: warmup is not checked against max_steps: [%s]", err.msg);

    // --plan-memory GIB: the GPU's memory, as `--plan-memory 80` or `--plan-memory=74.5`; anything else refused
    char *pm1[] = {"prog", "--config", g_cfg, "--plan-memory", "80", NULL};
    rc = config_parse_args(&c, &a, 5, pm1, &err);
    T_CHECK(tc, rc == 0 && a.plan_memory_gib == 80.0, "--plan-memory 80: rc %d, %g", rc, a.plan_memory_gib);
    char *pm2[] = {"prog", "--plan-memory=74.5", "--config", g_cfg, NULL};
    rc = config_parse_args(&c, &a, 4, pm2, &err);
    T_CHECK(tc, rc == 0 && a.plan_memory_gib == 74.5, "--plan-memory=74.5: rc %d, %g", rc, a.plan_memory_gib);
    const char *pm_bad[] = {"0", "-4", "80GB", "", "nan"};
    for (int i = 0; i < 5; i++) {
        char *pm3[] = {"prog", "--config", g_cfg, "--plan-memory", (char *)pm_bad[i], NULL};
        rc = config_parse_args(&c, &a, 5, pm3, &err);
        T_CHECK(tc, rc != 0 && strstr(err.msg, "--plan-memory needs the GPU's memory in GiB"),
                "--plan-memory '%s' accepted (rc %d, '%s')", pm_bad[i], rc, err.msg);
    }
    char *pm4[] = {"prog", "--config", g_cfg, "--plan-memory", NULL};
    rc = config_parse_args(&c, &a, 4, pm4, &err);
    T_CHECK(tc, rc != 0 && strstr(err.msg, "--plan-memory needs"), "--plan-memory without a value accepted");
    char *pm5[] = {"prog", "--config", g_cfg, NULL};
    rc = config_parse_args(&c, &a, 3, pm5, &err);
    T_CHECK(tc, rc == 0 && a.plan_memory_gib == 0.0, "no --plan-memory: %g", a.plan_memory_gib);

    // --calibrate-only: a plain flag, anywhere on the line; the config still loads and validates.
    char *cal[] = {"prog", "--calibrate-only", "--config", g_cfg, "--set", "lora.layers=auto", NULL};
    rc = config_parse_args(&c, &a, 6, cal, &err);
    T_CHECK(tc, rc == 0 && a.calibrate_only && !a.print_config && !a.help && c.lora.auto_layers &&
                    c.train.max_steps == 20, "--calibrate-only: [%s]", err.msg);
    char *cal_end[] = {"prog", "--config", g_cfg, "--print-config", "--calibrate-only", NULL};
    rc = config_parse_args(&c, &a, 5, cal_end, &err);
    T_CHECK(tc, rc == 0 && a.calibrate_only && a.print_config, "--calibrate-only last, with --print-config: [%s]",
            err.msg);
    T_CHECK(tc, config_parse_args(&c, &a, 3, (char *[]){"prog", "--config", g_cfg, NULL}, &err) == 0 &&
                    !a.calibrate_only, "no --calibrate-only leaves the flag 0 (args are reset): [%s]", err.msg);
    char *cal_bad[] = {"prog", "--calibrate-only", "--config", g_cfg, "--set", "train.max_steps=0", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 6, cal_bad, &err) == -1 && has(&err, "has no epochs"),
            "--calibrate-only still validates: [%s]", err.msg);
    char *cal_nopath[] = {"prog", "--calibrate-only", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 2, cal_nopath, &err) == -1 && has(&err, "model.path is required"),
            "--calibrate-only alone needs a config: [%s]", err.msg);
    char *cal_help[] = {"prog", "--calibrate-only", "--help", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 3, cal_help, &err) == 0 && a.help && a.calibrate_only,
            "--calibrate-only --help prints help: [%s]", err.msg);
    char *cal_typo[] = {"prog", "--calibrate_only", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 2, cal_typo, &err) == -1 && has(&err, "unknown option '--calibrate_only'") &&
                    has(&err, "did you mean '--calibrate-only'?"), "--calibrate_only: [%s]", err.msg);
    char *cal_val[] = {"prog", "--calibrate-only=1", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 2, cal_val, &err) == -1 && has(&err, "unknown option '--calibrate-only=1'"),
            "--calibrate-only takes no value: [%s]", err.msg);
    char *cal_short[] = {"prog", "--calibrate", NULL};
    T_CHECK(tc, config_parse_args(&c, &a, 2, cal_short, &err) == -1 && has(&err, "unknown option '--calibrate'"),
            "--calibrate is not an abbreviation: [%s]", err.msg);

    // config_usage names the flags and the docs.
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    config_usage(f);
    fclose(f);
    T_CHECK(tc, strstr(buf, "--config") && strstr(buf, "--set") && strstr(buf, "--print-config") &&
                    strstr(buf, "--calibrate-only") && strstr(buf, "--version") && strstr(buf, "docs/config.md"),
            "usage text:\n%s", buf);
    free(buf);
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
    test_load_valid(&tc);
    test_load_errors(&tc);
    test_set(&tc);
    test_layers_forms(&tc);
    test_args(&tc);

    unlink(g_cfg);
    rmdir(g_dir);
    return t_finish(&tc, "test_config");
}
