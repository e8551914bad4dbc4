// hfmodel.c: a Hugging Face model directory: config.json -> ModelConfig, and the weights in
// model.safetensors or in the shards of model.safetensors.index.json.
// config.json is read the way transformers reads it; anything that would change the maths of the
// model and that we do not implement is an error, so a run never trains a subtly different model.
#include "actlora/hfmodel.h"
#include "actlora/config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// ----------------------------------------------------------------------------------- config.json

// Absent and null both mean "use the default" (transformers writes null for unset ids).
static const cJSON *json_get(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNull(v) ? NULL : v;
}

static int as_int(const cJSON *v, int *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (d != floor(d) || d < (double)INT_MIN || d > (double)INT_MAX) return -1;
    *out = (int)d;
    return 0;
}

// Integer key of obj (section names the enclosing dict in messages, "" for the top level).
static int get_int(const cJSON *obj, const char *section, const char *key, int required, int def, int *out,
                   const char *src, Error *err) {
    const cJSON *v = json_get(obj, key);
    if (!v) {
        if (required) return error_set(err, "%s: required key '%s%s' is missing or null", src, section, key);
        *out = def;
        return 0;
    }
    if (as_int(v, out) != 0)
        return error_set(err, "%s: '%s%s' must be an integer, found %s%s%s%s", src, section, key, json_kind(v),
                         cJSON_IsString(v) ? " \"" : "", cJSON_IsString(v) ? v->valuestring : "",
                         cJSON_IsString(v) ? "\"" : "");
    return 0;
}

static int get_num(const cJSON *obj, const char *section, const char *key, int required, double def, double *out,
                   const char *src, Error *err) {
    const cJSON *v = json_get(obj, key);
    if (!v) {
        if (required) return error_set(err, "%s: required key '%s%s' is missing or null", src, section, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return error_set(err, "%s: '%s%s' must be a number, found %s%s%s%s", src, section, key, json_kind(v),
                         cJSON_IsString(v) ? " \"" : "", cJSON_IsString(v) ? v->valuestring : "",
                         cJSON_IsString(v) ? "\"" : "");
    *out = v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *obj, const char *key, int def, int *out, const char *src, Error *err) {
    const cJSON *v = json_get(obj, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) return error_set(err, "%s: '%s' must be true or false, found %s", src, key, json_kind(v));
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return 0;
}

// Optional string key; *out is NULL when absent or null.
static int get_str(const cJSON *obj, const char *section, const char *key, const char **out, const char *src,
                   Error *err) {
    const cJSON *v = json_get(obj, key);
    *out = NULL;
    if (!v) return 0;
    if (!cJSON_IsString(v))
        return error_set(err, "%s: '%s%s' must be a string, found %s", src, section, key, json_kind(v));
    *out = v->valuestring;
    return 0;
}

// Token ids: an int, null/absent (-1), or a list (eos in Llama 3 configs) whose first id is used.
// Negative ids mean "none": some converted Llama checkpoints write pad_token_id = -1.
static int get_token_id(const cJSON *obj, const char *key, int *out, const char *src, Error *err) {
    const cJSON *v = json_get(obj, key);
    *out = -1;
    if (!v) return 0;
    if (cJSON_IsArray(v)) {
        const cJSON *first = cJSON_GetArrayItem(v, 0);
        if (!first) return 0;
        const cJSON *x;
        cJSON_ArrayForEach(x, v) {
            int id;
            if (as_int(x, &id) != 0)
                return error_set(err, "%s: '%s' must be an integer or a list of integers, found a list holding %s",
                                 src, key, json_kind(x));
        }
        v = first;
    }
    if (as_int(v, out) != 0)
        return error_set(err, "%s: '%s' must be an integer, a list of integers or null, found %s", src, key,
                         json_kind(v));
    if (*out < 0) *out = -1;
    return 0;
}

// Rope: transformers <= 4 writes {"rope_scaling": {"rope_type"|"type", ...}} with rope_theta at the
// top level; transformers 5 writes {"rope_parameters": {"rope_type", "rope_theta", ...}}. Like
// transformers 5 (convert_rope_params_to_dict), rope_scaling wins when both are present, and a
// rope_theta inside the dict wins over the top-level one.
static int parse_rope(ModelConfig *mc, const cJSON *root, const char *src, Error *err) {
    const cJSON *rs = json_get(root, "rope_scaling");
    const char *which = "rope_scaling";
    if (rs && !cJSON_IsObject(rs))
        return error_set(err, "%s: 'rope_scaling' must be an object or null, found %s", src, json_kind(rs));
    if (!rs || cJSON_GetArraySize(rs) == 0) {
        rs = json_get(root, "rope_parameters");
        which = "rope_parameters";
        if (rs && !cJSON_IsObject(rs))
            return error_set(err, "%s: 'rope_parameters' must be an object or null, found %s", src, json_kind(rs));
    }
    if (get_num(root, "", "rope_theta", 0, 10000.0, &mc->rope_theta, src, err)) return -1;
    mc->rope_llama3 = 0;
    if (!rs) return 0;

    char sec[32];
    snprintf(sec, sizeof sec, "%s.", which);
    if (get_num(rs, sec, "rope_theta", 0, mc->rope_theta, &mc->rope_theta, src, err)) return -1;
    const char *type = NULL;
    if (get_str(rs, sec, "rope_type", &type, src, err)) return -1;
    if (!type && get_str(rs, sec, "type", &type, src, err)) return -1;
    if (!type || strcmp(type, "default") == 0) return 0;
    if (strcmp(type, "llama3") != 0)
        return error_set(err, "%s: %s rope_type '%s' is unsupported (supported: default, llama3)", src, which, type);

    mc->rope_llama3 = 1;
    if (get_num(rs, sec, "factor", 1, 0, &mc->rope_factor, src, err) ||
        get_num(rs, sec, "low_freq_factor", 1, 0, &mc->rope_low_freq_factor, src, err) ||
        get_num(rs, sec, "high_freq_factor", 1, 0, &mc->rope_high_freq_factor, src, err) ||
        get_int(rs, sec, "original_max_position_embeddings", 0, mc->max_position_embeddings,
                &mc->rope_original_max_position_embeddings, src, err))
        return -1;
    if (!(mc->rope_factor > 0) || !(mc->rope_low_freq_factor > 0) || mc->rope_original_max_position_embeddings <= 0)
        return error_set(err, "%s: %s llama3 factor, low_freq_factor and original_max_position_embeddings must be "
                              "positive", src, which);
    // The llama3 interpolation divides by (high - low): equal factors would give inf/NaN frequencies.
    if (!(mc->rope_high_freq_factor > mc->rope_low_freq_factor))
        return error_set(err, "%s: %s llama3 high_freq_factor (%g) must be greater than low_freq_factor (%g)", src,
                         which, mc->rope_high_freq_factor, mc->rope_low_freq_factor);
    return 0;
}

static int parse_labels(ModelConfig *mc, const cJSON *root, const char *src, Error *err) {
    int from_num = -1, from_map = -1;
    if (json_get(root, "num_labels")) {
        if (get_int(root, "", "num_labels", 1, 0, &from_num, src, err)) return -1;
        if (from_num < 0) return error_set(err, "%s: num_labels must not be negative, found %d", src, from_num);
    }
    const cJSON *m = json_get(root, "id2label");
    if (m) {
        if (!cJSON_IsObject(m))
            return error_set(err, "%s: 'id2label' must be an object, found %s", src, json_kind(m));
        from_map = cJSON_GetArraySize(m);
    }
    // transformers refuses the same inconsistency ("incompatible id to label map").
    if (from_num >= 0 && from_map >= 0 && from_num != from_map)
        return error_set(err, "%s: num_labels is %d but id2label has %d entries", src, from_num, from_map);
    mc->num_labels = from_num >= 0 ? from_num : from_map >= 0 ? from_map : 0;
    return 0;
}

#define SUPPORTED_MODEL_TYPES "llama, bert, deberta-v2"

// Sizes every architecture requires (transformers has defaults for them, but a config.json without
// them is not one we want to guess at).
static int parse_sizes(ModelConfig *mc, const cJSON *root, const char *src, Error *err) {
    if (get_int(root, "", "hidden_size", 1, 0, &mc->hidden_size, src, err) ||
        get_int(root, "", "intermediate_size", 1, 0, &mc->intermediate_size, src, err) ||
        get_int(root, "", "num_hidden_layers", 1, 0, &mc->num_hidden_layers, src, err) ||
        get_int(root, "", "num_attention_heads", 1, 0, &mc->num_attention_heads, src, err) ||
        get_int(root, "", "vocab_size", 1, 0, &mc->vocab_size, src, err))
        return -1;
    const struct { const char *key; int v; } req[] = {
        {"hidden_size", mc->hidden_size}, {"intermediate_size", mc->intermediate_size},
        {"num_hidden_layers", mc->num_hidden_layers}, {"num_attention_heads", mc->num_attention_heads},
        {"vocab_size", mc->vocab_size}};
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++)
        if (req[i].v <= 0) return error_set(err, "%s: '%s' must be positive, found %d", src, req[i].key, req[i].v);
    if (mc->num_hidden_layers > CONFIG_MAX_LAYERS)
        return error_set(err, "%s: num_hidden_layers = %d, more than the %d layers this program supports "
                         "(lora.layers indices are 0..%d)", src, mc->num_hidden_layers, CONFIG_MAX_LAYERS,
                         CONFIG_MAX_LAYERS - 1);
    return 0;
}

// A '|'-separated string ("p2c|c2p", as DeBERTa-v2 configs write pos_att_type; norm_rel_ebd) whose
// entries are trimmed and lower-cased as transformers does, or (allow_list) a list of strings, whose
// entries transformers compares as written: calls item() on each entry.
static int for_each_token(const cJSON *v, const char *key, int allow_list, const char *src, Error *err,
                          int (*item)(const char *tok, void *ctx, const char *src, Error *err), void *ctx) {
    char tok[64];
    if (cJSON_IsString(v)) {
        const char *p = v->valuestring;
        for (;;) {
            const char *bar = strchr(p, '|');
            size_t n = bar ? (size_t)(bar - p) : strlen(p);
            while (n > 0 && (*p == ' ' || *p == '\t')) p++, n--;
            while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
            if (n >= sizeof tok) n = sizeof tok - 1;
            for (size_t i = 0; i < n; i++) tok[i] = (char)((p[i] >= 'A' && p[i] <= 'Z') ? p[i] - 'A' + 'a' : p[i]);
            tok[n] = '\0';
            if (item(tok, ctx, src, err)) return -1;
            if (!bar) return 0;
            p = bar + 1;
        }
    }
    if (allow_list && cJSON_IsArray(v)) {
        const cJSON *x;
        cJSON_ArrayForEach(x, v) {
            if (!cJSON_IsString(x))
                return error_set(err, "%s: '%s' must be a list of strings, found a list holding %s", src, key,
                                 json_kind(x));
            if (item(x->valuestring, ctx, src, err)) return -1;  // list entries are used as written
        }
        return 0;
    }
    return error_set(err, "%s: '%s' must be %s, found %s", src, key,
                     allow_list ? "a list of strings or a '|'-separated string" : "a string", json_kind(v));
}

static int pos_att_item(const char *tok, void *ctx, const char *src, Error *err) {
    ModelConfig *mc = ctx;
    if (strcmp(tok, "c2p") == 0) mc->att_c2p = 1;
    else if (strcmp(tok, "p2c") == 0) mc->att_p2c = 1;
    else if (tok[0] != '\0' && strcmp(tok, "none") != 0)  // "" / "none": no relative attention term
        return error_set(err, "%s: pos_att_type entry '%s' is not supported (supported: c2p, p2c)", src, tok);
    return 0;
}

static int norm_rel_item(const char *tok, void *ctx, const char *src, Error *err) {
    ModelConfig *mc = ctx;
    if (strcmp(tok, "layer_norm") == 0) mc->norm_rel_ebd = 1;
    else if (strcmp(tok, "none") != 0 && tok[0] != '\0')
        return error_set(err, "%s: norm_rel_ebd entry '%s' is not supported (supported: layer_norm, none)", src, tok);
    return 0;
}

// A boolean key that must be false (or absent) because the C model does not implement it being true.
static int refuse_true(const cJSON *root, const char *key, const char *what, const char *src, Error *err) {
    int v;
    if (get_bool(root, key, 0, &v, src, err)) return -1;
    if (v) return error_set(err, "%s: '%s' is true: %s is not supported (only encoder-only models)", src, key, what);
    return 0;
}

// bert (BertConfig) and deberta-v2 (DebertaV2Config): defaults as transformers 5 has them; everything
// that would change the maths and that encoder.c does not implement is refused.
static int parse_encoder(ModelConfig *mc, const cJSON *root, const char *src, Error *err) {
    const int bert = mc->arch == ARCH_BERT;
    if (parse_sizes(mc, root, src, err)) return -1;
    mc->num_key_value_heads = mc->num_attention_heads;
    if (mc->hidden_size % mc->num_attention_heads != 0)
        return error_set(err, "%s: hidden_size (%d) is not a multiple of num_attention_heads (%d)", src,
                         mc->hidden_size, mc->num_attention_heads);
    mc->head_dim = mc->hidden_size / mc->num_attention_heads;

    if (get_int(root, "", "max_position_embeddings", 0, 512, &mc->max_position_embeddings, src, err) ||
        get_num(root, "", "layer_norm_eps", 0, bert ? 1e-12 : 1e-7, &mc->layer_norm_eps, src, err) ||
        get_int(root, "", "type_vocab_size", 0, bert ? 2 : 0, &mc->type_vocab_size, src, err) ||
        get_bool(root, "tie_word_embeddings", 1, &mc->tie_word_embeddings, src, err) ||
        get_token_id(root, "pad_token_id", &mc->pad_token_id, src, err) ||
        get_token_id(root, "bos_token_id", &mc->bos_token_id, src, err) ||
        get_token_id(root, "eos_token_id", &mc->eos_token_id, src, err))
        return -1;
    // pad_token_id defaults to 0 in both configs (absent -> 0, explicit null -> none)
    if (!cJSON_GetObjectItemCaseSensitive(root, "pad_token_id")) mc->pad_token_id = 0;
    if (mc->max_position_embeddings <= 0)
        return error_set(err, "%s: max_position_embeddings must be positive, found %d", src,
                         mc->max_position_embeddings);
    if (!(mc->layer_norm_eps > 0))
        return error_set(err, "%s: layer_norm_eps must be positive, found %g", src, mc->layer_norm_eps);
    if (mc->type_vocab_size < (bert ? 1 : 0))
        return error_set(err, "%s: type_vocab_size must be %s, found %d", src, bert ? "at least 1" : "0 or more",
                         mc->type_vocab_size);
    if (mc->pad_token_id >= mc->vocab_size)
        return error_set(err, "%s: pad_token_id (%d) must be below vocab_size (%d)", src, mc->pad_token_id,
                         mc->vocab_size);

    const char *act = NULL;
    if (get_str(root, "", "hidden_act", &act, src, err)) return -1;
    if (act && strcmp(act, "gelu") != 0)
        return error_set(err, "%s: hidden_act '%s' is not supported (supported: gelu, the exact erf GELU)", src, act);

    mc->pooler_hidden_size = mc->hidden_size;
    if (bert) {
        const char *pet = NULL;
        if (get_str(root, "", "position_embedding_type", &pet, src, err)) return -1;
        if (pet && strcmp(pet, "absolute") != 0)
            return error_set(err, "%s: position_embedding_type '%s' is not supported (supported: absolute)", src,
                             pet);
        if (refuse_true(root, "is_decoder", "a decoder (causal) BERT", src, err) ||
            refuse_true(root, "add_cross_attention", "cross-attention", src, err))
            return -1;
        mc->pooler_tanh = 1;  // BertPooler: dense + tanh on the first token
        mc->position_biased_input = 1;
    } else {
        int emb;
        if (get_int(root, "", "embedding_size", 0, mc->hidden_size, &emb, src, err)) return -1;
        if (emb != mc->hidden_size)
            return error_set(err, "%s: embedding_size (%d) differs from hidden_size (%d): the embedding projection "
                                  "(embed_proj) is not supported", src, emb, mc->hidden_size);
        int ahs;
        if (get_int(root, "", "attention_head_size", 0, mc->head_dim, &ahs, src, err)) return -1;
        if (ahs != mc->head_dim)
            return error_set(err, "%s: attention_head_size (%d) differs from hidden_size / num_attention_heads (%d): "
                                  "not supported", src, ahs, mc->head_dim);
        int conv;
        if (get_int(root, "", "conv_kernel_size", 0, 0, &conv, src, err)) return -1;
        if (conv > 0)
            return error_set(err, "%s: conv_kernel_size is %d: the convolution layer of DeBERTa-v2 (ConvLayer) is "
                                  "not supported (supported: 0 or absent)", src, conv);
        if (get_bool(root, "relative_attention", 0, &mc->relative_attention, src, err) ||
            get_int(root, "", "position_buckets", 0, -1, &mc->position_buckets, src, err) ||
            get_int(root, "", "max_relative_positions", 0, -1, &mc->max_relative_positions, src, err) ||
            get_bool(root, "share_att_key", 0, &mc->share_att_key, src, err) ||
            get_bool(root, "position_biased_input", 1, &mc->position_biased_input, src, err) ||
            get_int(root, "", "pooler_hidden_size", 0, mc->hidden_size, &mc->pooler_hidden_size, src, err))
            return -1;
        if (mc->max_relative_positions < 1) mc->max_relative_positions = mc->max_position_embeddings;
        const cJSON *pat = json_get(root, "pos_att_type");
        if (pat && for_each_token(pat, "pos_att_type", 1, src, err, pos_att_item, mc)) return -1;
        const cJSON *nre = json_get(root, "norm_rel_ebd");
        if (nre && for_each_token(nre, "norm_rel_ebd", 0, src, err, norm_rel_item, mc)) return -1;
        if (mc->pooler_hidden_size != mc->hidden_size)
            return error_set(err, "%s: pooler_hidden_size (%d) differs from hidden_size (%d): not supported (the "
                                  "pooler reads the first token's hidden state)", src, mc->pooler_hidden_size,
                             mc->hidden_size);
        const char *pact = NULL;
        if (get_str(root, "", "pooler_hidden_act", &pact, src, err)) return -1;
        if (!pact || strcmp(pact, "gelu") == 0) mc->pooler_tanh = 0;
        else if (strcmp(pact, "tanh") == 0) mc->pooler_tanh = 1;
        else
            return error_set(err, "%s: pooler_hidden_act '%s' is not supported (supported: gelu, tanh)", src, pact);
    }

    if (parse_labels(mc, root, src, err)) return -1;
    const char *dt = NULL;
    if (get_str(root, "", "dtype", &dt, src, err)) return -1;
    if (!dt && get_str(root, "", "torch_dtype", &dt, src, err)) return -1;
    if (dt) snprintf(mc->torch_dtype, sizeof mc->torch_dtype, "%s", dt);
    return 0;
}

int hfconfig_parse(ModelConfig *mc, const char *json_text, const char *source, Error *err) {
    memset(mc, 0, sizeof *mc);
    const char *src = source ? source : "config.json";
    const char *endp = NULL;
    cJSON *root = cJSON_ParseWithOpts(json_text, &endp, 1);
    if (!root) {
        size_t at = endp ? (size_t)(endp - json_text) : 0;
        return error_set(err, "%s: not valid JSON (parse error near byte %zu)", src, at);
    }
    int rc = -1;
    if (!cJSON_IsObject(root)) {
        error_set(err, "%s: expected a JSON object, found %s", src, json_kind(root));
        goto done;
    }

    const char *mt = NULL;
    if (get_str(root, "", "model_type", &mt, src, err)) goto done;
    if (!mt) {
        error_set(err, "%s: 'model_type' is missing (supported: " SUPPORTED_MODEL_TYPES ")", src);
        goto done;
    }
    if (strcmp(mt, "llama") == 0) {
        mc->arch = ARCH_LLAMA;
    } else if (strcmp(mt, "bert") == 0) {
        mc->arch = ARCH_BERT;
    } else if (strcmp(mt, "deberta-v2") == 0) {
        mc->arch = ARCH_DEBERTA_V2;
    } else {
        error_set(err, "%s: model_type '%s' is not supported (supported: " SUPPORTED_MODEL_TYPES ")", src, mt);
        goto done;
    }
    snprintf(mc->model_type, sizeof mc->model_type, "%s", mt);
    if (mc->arch != ARCH_LLAMA) {
        rc = parse_encoder(mc, root, src, err);
        goto done;
    }

    if (parse_sizes(mc, root, src, err)) goto done;
    if (get_int(root, "", "num_key_value_heads", 0, mc->num_attention_heads, &mc->num_key_value_heads, src, err) ||
        get_int(root, "", "max_position_embeddings", 0, 2048, &mc->max_position_embeddings, src, err) ||
        get_num(root, "", "rms_norm_eps", 0, 1e-6, &mc->rms_norm_eps, src, err) ||
        get_bool(root, "tie_word_embeddings", 0, &mc->tie_word_embeddings, src, err) ||
        get_token_id(root, "pad_token_id", &mc->pad_token_id, src, err) ||
        get_token_id(root, "bos_token_id", &mc->bos_token_id, src, err) ||
        get_token_id(root, "eos_token_id", &mc->eos_token_id, src, err))
        goto done;
    int head_dim_given = json_get(root, "head_dim") != NULL;
    if (get_int(root, "", "head_dim", 0, mc->hidden_size / mc->num_attention_heads, &mc->head_dim, src, err))
        goto done;

    if (mc->num_key_value_heads <= 0 || mc->num_attention_heads % mc->num_key_value_heads != 0) {
        error_set(err, "%s: num_attention_heads (%d) must be a positive multiple of num_key_value_heads (%d)", src,
                  mc->num_attention_heads, mc->num_key_value_heads);
        goto done;
    }
    if (!head_dim_given && mc->hidden_size % mc->num_attention_heads != 0) {
        error_set(err, "%s: hidden_size (%d) is not divisible by num_attention_heads (%d) and head_dim is not given",
                  src, mc->hidden_size, mc->num_attention_heads);
        goto done;
    }
    if (mc->head_dim <= 0 || mc->head_dim % 2 != 0) {
        error_set(err, "%s: head_dim (%d) must be positive and even (rotary embeddings rotate pairs)", src,
                  mc->head_dim);
        goto done;
    }
    if (mc->max_position_embeddings <= 0 || !(mc->rms_norm_eps > 0)) {
        error_set(err, "%s: max_position_embeddings (%d) and rms_norm_eps (%g) must be positive", src,
                  mc->max_position_embeddings, mc->rms_norm_eps);
        goto done;
    }
    if (mc->pad_token_id >= mc->vocab_size) {
        error_set(err, "%s: pad_token_id (%d) must be below vocab_size (%d)", src, mc->pad_token_id, mc->vocab_size);
        goto done;
    }

    // Features that change the model's maths and are not implemented: refuse rather than ignore.
    int attn_bias, mlp_bias;
    if (get_bool(root, "attention_bias", 0, &attn_bias, src, err) ||
        get_bool(root, "mlp_bias", 0, &mlp_bias, src, err))
        goto done;
    if (attn_bias || mlp_bias) {
        error_set(err, "%s: %s is true: biases in %s are not supported", src,
                  attn_bias ? "attention_bias" : "mlp_bias", attn_bias ? "attention projections" : "MLP projections");
        goto done;
    }
    const char *act = NULL;
    if (get_str(root, "", "hidden_act", &act, src, err)) goto done;
    if (act && strcmp(act, "silu") != 0) {
        error_set(err, "%s: hidden_act '%s' is not supported (supported: silu)", src, act);
        goto done;
    }

    if (parse_rope(mc, root, src, err)) goto done;
    if (!(mc->rope_theta > 0)) {
        error_set(err, "%s: rope_theta (%g) must be positive", src, mc->rope_theta);
        goto done;
    }
    if (parse_labels(mc, root, src, err)) goto done;

    // transformers 5 writes "dtype", older versions "torch_dtype"; informative only.
    const char *dt = NULL;
    if (get_str(root, "", "dtype", &dt, src, err)) goto done;
    if (!dt && get_str(root, "", "torch_dtype", &dt, src, err)) goto done;
    if (dt) snprintf(mc->torch_dtype, sizeof mc->torch_dtype, "%s", dt);
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

int hfconfig_load(ModelConfig *mc, const char *config_json_path, Error *err) {
    char *text = file_read_all(config_json_path, NULL, err);
    if (!text) return -1;
    int rc = hfconfig_parse(mc, text, config_json_path, err);
    free(text);
    return rc;
}

// ----------------------------------------------------------------------------------- weights

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n, "path");
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

typedef struct {
    const char *name;
    int file;
} NameRef;

static int nameref_cmp(const void *a, const void *b) {
    return strcmp(((const NameRef *)a)->name, ((const NameRef *)b)->name);
}

// A tensor present in two shards would make hfweights_find depend on shard order: refuse it.
static int check_unique_across_shards(const HFWeights *w, Error *err) {
    size_t total = 0;
    for (int i = 0; i < w->n_files; i++) total += (size_t)w->files[i].n;
    if (total < 2) return 0;
    NameRef *r = xmalloc(total * sizeof *r, "tensor name index");
    size_t k = 0;
    for (int i = 0; i < w->n_files; i++)
        for (int j = 0; j < w->files[i].n; j++) r[k++] = (NameRef){w->files[i].tensors[j].name, i};
    qsort(r, total, sizeof *r, nameref_cmp);
    int rc = 0;
    for (size_t i = 1; i < total && rc == 0; i++)
        if (strcmp(r[i - 1].name, r[i].name) == 0)
            rc = error_set(err, "%s: tensor '%s' is present in both %s and %s", w->dir, r[i].name,
                           w->files[r[i - 1].file].path, w->files[r[i].file].path);
    free(r);
    return rc;
}

static int open_sharded(HFWeights *w, const char *index_path, Error *err) {
    char *text = file_read_all(index_path, NULL, err);
    if (!text) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    int rc = -1;
    const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    const char **shards = NULL;
    if (!root || !cJSON_IsObject(root)) {
        error_set(err, "%s: %s", index_path, root ? "expected a JSON object" : "not valid JSON");
        goto done;
    }
    if (!cJSON_IsObject(wm) || cJSON_GetArraySize(wm) == 0) {
        error_set(err, "%s: expected a non-empty \"weight_map\" object (tensor name -> shard file), found %s",
                  index_path, cJSON_IsObject(wm) ? "an empty object" : json_kind(wm));
        goto done;
    }

    // Distinct shard names in first-seen order; each shard is opened once.
    int n_entries = cJSON_GetArraySize(wm), n_shards = 0;
    shards = xcalloc((size_t)n_entries, sizeof *shards, "shard list");
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e)) {
            error_set(err, "%s: weight_map['%s'] must be a shard file name, found %s", index_path, e->string,
                      json_kind(e));
            goto done;
        }
        const char *s = e->valuestring;
        // Shards must sit in the model directory: an index from the internet must not make us
        // open arbitrary paths.
        if (!*s || strchr(s, '/') || strstr(s, "..")) {
            error_set(err, "%s: weight_map['%s'] names shard '%s': shard names must be plain file names in the "
                           "model directory (no '/' or '..')", index_path, e->string, s);
            goto done;
        }
        int seen = 0;
        for (int i = 0; i < n_shards && !seen; i++) seen = strcmp(shards[i], s) == 0;
        if (!seen) shards[n_shards++] = s;
    }

    w->files = xcalloc((size_t)n_shards, sizeof(SafeTensors), "shard table");
    for (int i = 0; i < n_shards; i++) {
        char *p = path_join(w->dir, shards[i]);
        if (!file_exists(p)) {
            error_set(err, "%s: shard '%s' listed in the index does not exist (%s)", index_path, shards[i], p);
            free(p);
            goto done;
        }
        int r = safetensors_open(&w->files[i], p, err);
        free(p);
        if (r != 0) goto done;
        w->n_files++;
    }
    cJSON_ArrayForEach(e, wm) {
        int i = 0;
        while (strcmp(shards[i], e->valuestring) != 0) i++;
        if (!safetensors_find(&w->files[i], e->string)) {
            error_set(err, "%s: tensor '%s' is indexed in shard '%s' but %s does not contain it (%d tensors)",
                      index_path, e->string, shards[i], w->files[i].path, w->files[i].n);
            goto done;
        }
    }
    rc = check_unique_across_shards(w, err);
done:
    free(shards);
    cJSON_Delete(root);
    return rc;
}

int hfweights_open(HFWeights *w, const char *dir, Error *err) {
    memset(w, 0, sizeof *w);
    w->dir = xstrdup(dir);
    char *index = path_join(dir, "model.safetensors.index.json");
    char *single = path_join(dir, "model.safetensors");
    int rc;
    if (file_exists(index)) {
        rc = open_sharded(w, index, err);
    } else if (file_exists(single)) {
        w->files = xcalloc(1, sizeof(SafeTensors), "shard table");
        rc = safetensors_open(&w->files[0], single, err);
        if (rc == 0) w->n_files = 1;
    } else {
        struct stat sb;
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
            rc = error_set(err, "%s: model directory does not exist or is not a directory", dir);
        else
            rc = error_set(err, "%s: no weights found: looked for model.safetensors and "
                                "model.safetensors.index.json", dir);
    }
    free(index);
    free(single);
    if (rc != 0) hfweights_close(w);
    return rc;
}

void hfweights_close(HFWeights *w) {
    if (!w) return;
    for (int i = 0; i < w->n_files; i++) safetensors_close(&w->files[i]);
    free(w->files);
    free(w->dir);
    memset(w, 0, sizeof *w);
}

const StTensor *hfweights_find(const HFWeights *w, const char *name, const char **file) {
    for (int i = 0; i < w->n_files; i++) {
        const StTensor *t = safetensors_find(&w->files[i], name);
        if (t) {
            if (file) *file = w->files[i].path;
            return t;
        }
    }
    if (file) *file = NULL;
    return NULL;
}

static const char *shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
    return buf;
}

int hfweights_read_f32(const HFWeights *w, const char *name, int ndim, const int64_t *shape, float *out,
                       Error *err) {
    const char *file = NULL;
    const StTensor *t = hfweights_find(w, name, &file);
    if (!t) {
        int total = 0;
        for (int i = 0; i < w->n_files; i++) total += w->files[i].n;
        if (w->n_files == 1 && strcmp(strrchr(w->files[0].path, '/') + 1, "model.safetensors") == 0)
            return error_set(err, "%s: tensor '%s' not found in model.safetensors (%d tensors)", w->dir, name, total);
        return error_set(err, "%s: tensor '%s' not found in the %d shard(s) of model.safetensors.index.json "
                              "(%d tensors)", w->dir, name, w->n_files, total);
    }
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64)
        return error_set(err, "%s: tensor '%s' has dtype %s but a floating-point tensor (F32, F16, BF16, F64) is "
                              "expected", file, name, st_dtype_name(t->dtype));
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char a[160], b[160];
        return error_set(err, "%s: tensor '%s' has shape %s but the model config needs %s", file, name,
                         shape_str(a, sizeof a, t->ndim, t->shape), shape_str(b, sizeof b, ndim, shape));
    }
    st_to_f32(t, out);
    return 0;
}

int hfmodel_fingerprint(const char *dir, int with_weights, uint64_t *out, Error *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t n = 0;
    char *text = file_read_all(path, &n, err);
    if (!text) return -1;
    uint64_t h = fnv1a64(FNV64_INIT, text, n);
    free(text);
    if (with_weights) {
        HFWeights w;
        if (hfweights_open(&w, dir, err) != 0) return -1;
        for (int f = 0; f < w.n_files; f++)
            for (int i = 0; i < w.files[f].n; i++) {
                const StTensor *t = &w.files[f].tensors[i];
                h = fnv1a64(h, t->name, strlen(t->name) + 1);
                h = fnv1a64(h, &t->dtype, sizeof t->dtype);
                h = fnv1a64(h, t->shape, sizeof(int64_t) * (size_t)t->ndim);
            }
        hfweights_close(&w);
    }
    *out = h;
    return 0;
}
