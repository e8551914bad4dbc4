// test_encoder_grad.c: properties of the BERT / DeBERTa-v2 backward that the HF fixtures do not cover.
//  1. With LoRA dropout on, the analytic gradient of every adapter and of the classifier (weight and
//     bias) matches central finite differences of the loss (dropout masks are keyed, so the loss is a
//     fixed function) — for BERT (token types), DeBERTa with share_att_key (query_proj / key_proj
//     adapters also act on the relative embeddings, with their own dropout masks) and DeBERTa with
//     pos_query_proj and absolute positions.
//  2. Backward stops at the lowest adapted layer: activation memory is kept only for layers at or
//     above it and grows by the same amount per extra layer; zero-initialised (B = 0) adapters lower
//     down leave the upper adapters' gradients unchanged.
//  3. model.init = "random" draws reproducible weights from the seed.
//  4. Loading: tensor names without the "deberta." prefix, a checkpoint without pooler (initialised
//     N(0, initializer_range)), a classifier loaded when its shape fits and initialised otherwise.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/encoder_internal.h"
#include "actlora/backend.h"
#include "actlora/encoder.h"
#include "actlora/hfmodel.h"
#include "actlora/lora.h"
#include "actlora/rng.h"
#include "actlora/safetensors.h"
#include "test_fixture.h"

typedef struct {
    Backend be;
    ModelConfig mc;
    Encoder model;
    LoraSet ls;
    Batch b;
} Setup;

static void load_config(ModelConfig *mc, const char *dir) {
    Error err;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (hfconfig_load(mc, path, &err) != 0) die("%s", err.msg);
}

static const LoraNaming *naming_of(const ModelConfig *mc) {
    return mc->arch == ARCH_DEBERTA_V2 ? &LORA_NAMING_DEBERTA : &LORA_NAMING_BERT;
}

static void setup(Setup *s, const char *dir, int K, const int *layers, int nl, const int *mods, int nm,
                  double dropout, int B, int T) {
    load_config(&s->mc, dir);
    backend_cpu_init(&s->be, 0);
    encoder_load(&s->model, &s->be, dir, &s->mc, K, 0, 0, NULL);
    LoraShapes shapes;
    encoder_lora_shapes(&s->mc, &shapes);
    lora_init(&s->ls, &s->be, naming_of(&s->mc), &shapes, s->mc.num_hidden_layers, layers, nl, mods, nm, 4, 8.0, 0,
              dropout, K, s->mc.hidden_size);
    encoder_init_head(&s->model, &s->be, dir, 0, &s->ls, 7);
    lora_init_weights(&s->ls, &s->be, 7);
    encoder_alloc_acts(&s->model, &s->be, &s->ls, B, T);
    batch_init(&s->b, B, T);
    data_synthetic_batch(&s->b, s->mc.vocab_size, s->mc.pad_token_id, K, 99, 0, 0, 0);
    for (int i = 0; i < B; i++)  // a second segment on the real tokens of the row's second half
        for (int t = 0; t < T; t++) s->b.type_ids[i * T + t] = s->b.mask[i * T + t] && t >= T / 2;
    if (K == 1)
        for (int i = 0; i < B; i++) s->b.labels_f[i] = 0.5f * (float)(i % 3) - 0.4f;
}

static void teardown(Setup *s) {
    batch_free(&s->b);
    encoder_free(&s->model, &s->be);
    lora_free(&s->ls, &s->be);
    backend_free(&s->be);
}

static double loss_at(void *ctx, uint64_t key) {  // the mean loss at dropout key `key`
    Setup *s = ctx;
    return encoder_forward(&s->model, &s->be, &s->ls, &s->b, 1, 0.0f, key, NULL) / s->b.B;
}

static void dropout_gradcheck(TestCounts *tc, const char *dir, const char *what, int K, const int *layers, int nl,
                              const int *mods, int nm) {
    Setup s;
    setup(&s, dir, K, layers, nl, mods, nm, 0.3, 3, 9);
    // non-zero B so that A has a gradient; a non-zero classifier bias
    fx_nonzero_b(&s.ls, s.ls.params);
    for (int k = 0; k < K; k++) s.ls.params[s.ls.head_bias_off + k] = 0.1f * (float)(k + 1);
    uint64_t key = 0xABCDEF;
    s.be.zero(&s.be, s.ls.grads, s.ls.numel * sizeof(float));
    encoder_forward(&s.model, &s.be, &s.ls, &s.b, 1, 1.0f / (float)s.b.B, key, NULL);
    encoder_backward(&s.model, &s.be, &s.ls, &s.b, key);
    // central differences on a few elements of every tensor (fp32 forward: eps 1e-2)
    const float eps = 1e-2f;
    double worst = 0.0;
    int checked = 0, nt = lora_num_tensors(&s.ls);
    for (int ti = 0; ti < nt; ti++) {
        char name[160];
        size_t off;
        int64_t rows, cols;
        lora_tensor(&s.ls, ti, name, sizeof name, &off, &rows, &cols);
        size_t numel = (size_t)rows * (size_t)cols;
        for (int k = 0; k < 3; k++) {
            size_t j = off + (rng_u64(11, (uint64_t)(ti * 4 + k)) % numel);
            double fd = fd_param(loss_at, &s, key, &s.ls.params[j], eps), an = s.ls.grads[j];
            double err = fabs(fd - an) / (fabs(fd) + 2e-3);
            if (err > worst) worst = err;
            checked++;
            T_CHECK(tc, err < 3e-2, "%s dropout gradcheck %s[%zu]: analytic %.6g vs finite difference %.6g", what,
                    name, j - off, an, fd);
        }
    }
    printf("%s dropout gradcheck: %d elements of %d tensors, worst relative error %.2e\n", what, checked, nt, worst);
    // dropout is really on: another key gives another loss, and train=0 disables it
    double l1 = loss_at(&s, key), l2 = loss_at(&s, key + 1);
    double l_eval = encoder_forward(&s.model, &s.be, &s.ls, &s.b, 0, 0.0f, key, NULL) / s.b.B;
    T_CHECK(tc, l1 != l2, "%s: dropout keys %llx and %llx gave the same loss", what, (unsigned long long)key,
            (unsigned long long)key + 1);
    T_CHECK(tc, l1 == loss_at(&s, key), "%s: the same dropout key gave two different losses", what);
    T_CHECK(tc, l_eval != l1, "%s: evaluation (train = 0) still applied dropout", what);
    teardown(&s);
}

static size_t act_bytes_for(const char *dir, int layer) {
    int mods[] = {LORA_Q, LORA_K, LORA_V};
    Setup s;
    setup(&s, dir, 3, &layer, 1, mods, 3, 0.0, 4, 16);
    size_t b = s.model.act_bytes;
    teardown(&s);
    return b;
}

static void stops_at_lowest(TestCounts *tc, const char *dir, const char *what) {
    // activation memory: a(l) for adapters on layer l only; L = 4
    size_t a3 = act_bytes_for(dir, 3), a2 = act_bytes_for(dir, 2), a1 = act_bytes_for(dir, 1),
           a0 = act_bytes_for(dir, 0);
    printf("%s: activation bytes with adapters from layer 3/2/1/0: %zu %zu %zu %zu\n", what, a3, a2, a1, a0);
    T_CHECK(tc, a3 < a2 && a2 < a1, "%s: activation memory must grow as the lowest adapted layer goes down", what);
    T_CHECK(tc, a2 - a3 == a1 - a2, "%s: each extra layer must cost the same activation memory (%zu vs %zu)", what,
            a2 - a3, a1 - a2);
    T_CHECK(tc, a0 == a1, "%s: adapters from layer 0 cost %zu bytes, from layer 1 %zu", what, a0, a1);

    // upper adapters' gradients do not depend on zero-initialised adapters further down
    int mods[] = {LORA_Q, LORA_K, LORA_V, LORA_DOWN};
    int top[] = {3}, both[] = {0, 3};
    Setup s1, s2;
    setup(&s1, dir, 3, top, 1, mods, 4, 0.0, 3, 10);
    setup(&s2, dir, 3, both, 2, mods, 4, 0.0, 3, 10);
    for (Setup *s = &s1; s; s = s == &s1 ? &s2 : NULL) {  // same non-zero B on layer 3 in both
        for (int i = 0; i < s->ls.n; i++) {
            const LoraAdapter *a = &s->ls.ad[i];
            if (a->layer != 3) continue;
            for (size_t j = 0; j < (size_t)a->out * s->ls.r; j++)
                s->ls.params[a->b_off + j] = 0.1f * (2.0f * rng_uniform(rng_key(6, (uint64_t)a->module), j) - 1.0f);
        }
        s->be.zero(&s->be, s->ls.grads, s->ls.numel * sizeof(float));
        encoder_forward(&s->model, &s->be, &s->ls, &s->b, 1, 1.0f / (float)s->b.B, 0, NULL);
        encoder_backward(&s->model, &s->be, &s->ls, &s->b, 0);
    }
    EncImpl *e1 = s1.model.impl, *e2 = s2.model.impl;
    T_CHECK(tc, e1->saved_from == 3 && e2->saved_from == 0, "%s: saved_from %d / %d, expected 3 / 0", what,
            e1->saved_from, e2->saved_from);
    for (int ti = 0; ti < lora_num_tensors(&s1.ls); ti++) {  // every tensor of the top-only set
        char name[160];
        size_t o1, o2, n1, n2;
        int64_t rows, cols;
        lora_tensor(&s1.ls, ti, name, sizeof name, &o1, &rows, &cols);
        n1 = (size_t)rows * (size_t)cols;
        T_CHECK(tc, lora_param_lookup(&s2.ls, name, &o2, &n2) == 0 && n1 == n2, "%s: %s missing", what, name);
        char w[256];
        snprintf(w, sizeof w, "%s: %s", what, name);
        T_CLOSE(tc, s1.ls.grads + o1, s2.ls.grads + o2, n1, 1e-6, 1e-8, w);
    }
    // the lower adapters do get a gradient (their A is zero-grad only because B = 0; B is not)
    char name[160];
    size_t ob, nb;
    int iq = lora_find(&s2.ls, 0, LORA_Q);
    lora_param_name(&s2.ls, iq, 1, name, sizeof name);
    lora_param_lookup(&s2.ls, name, &ob, &nb);
    T_CHECK(tc, s2.be.sumsq(&s2.be, s2.ls.grads + ob, nb) > 0.0, "%s: %s got no gradient", what, name);
    teardown(&s1);
    teardown(&s2);
}

static void random_init(TestCounts *tc, const char *dir, const char *what) {
    ModelConfig mc;
    load_config(&mc, dir);
    Backend be;
    backend_cpu_init(&be, 0);
    Encoder a, b, c;
    encoder_load(&a, &be, "/nonexistent", &mc, 2, 1, 42, NULL);  // random init never opens the directory
    encoder_load(&b, &be, "/nonexistent", &mc, 2, 1, 42, NULL);
    encoder_load(&c, &be, "/nonexistent", &mc, 2, 1, 43, NULL);
    EncImpl *ea = a.impl, *eb = b.impl, *ec = c.impl;
    size_t n = (size_t)mc.hidden_size * mc.intermediate_size, wb = be.weight_bytes;
    T_CHECK(tc, memcmp(ea->layers[1].wi, eb->layers[1].wi, n * wb) == 0, "%s: same seed, different weights", what);
    T_CHECK(tc, memcmp(ea->layers[1].wi, ec->layers[1].wi, n * wb) != 0, "%s: different seeds, same weights", what);
    T_CHECK(tc, memcmp(ea->layers[1].wi, ea->layers[1].wout, 64 * wb) != 0, "%s: two tensors drew the same values",
            what);
    if (be.weight_dtype == BACKEND_WEIGHT_FP32) {
        double ss = be.sumsq(&be, ea->layers[1].wi, n), std = sqrt(ss / (double)n);
        T_CHECK(tc, fabs(std - 0.02) < 0.002, "%s: random weights have std %.4f, expected 0.02", what, std);
    }
    T_CHECK(tc, ea->emb_ln_w[0] == 1.0f && ea->layers[2].ln2_w[5] == 1.0f && ea->layers[2].bq[3] == 0.0f,
            "%s: random LayerNorm weights must be 1 and biases 0", what);
    // and the model runs
    LoraShapes shapes;
    encoder_lora_shapes(&mc, &shapes);
    LoraSet ls;
    int layer = 2, mods[] = {LORA_Q, LORA_UP};
    lora_init(&ls, &be, naming_of(&mc), &shapes, mc.num_hidden_layers, &layer, 1, mods, 2, 2, 4.0, 0, 0.0, 2,
              mc.hidden_size);
    T_CHECK(tc, encoder_init_head(&a, &be, "/nonexistent", 1, &ls, 3) == 0, "%s: random init loaded a head", what);
    encoder_alloc_acts(&a, &be, &ls, 2, 8);
    Batch bt;
    batch_init(&bt, 2, 8);
    data_synthetic_batch(&bt, mc.vocab_size, mc.pad_token_id, 2, 5, 0, 0, 0);
    double loss = encoder_forward(&a, &be, &ls, &bt, 1, 0.5f, 0, NULL);
    encoder_backward(&a, &be, &ls, &bt, 0);
    T_CHECK(tc, isfinite(loss) && loss > 0, "%s: random model loss %g", what, loss);
    batch_free(&bt);
    lora_free(&ls, &be);
    encoder_free(&a, &be);
    encoder_free(&b, &be);
    encoder_free(&c, &be);
    backend_free(&be);
}

// Copies dir's checkpoint into out without the "deberta." prefix and without the pooler, adding a
// classifier [K, C] + bias with known values; returns the number of tensors written.
static int write_stripped(const char *dir, const char *out, int K, int C, float *cls_w, float *cls_b) {
    char path[4096];
    Error err;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    SafeTensors st;
    if (safetensors_open(&st, path, &err) != 0) die("%s", err.msg);
    StWriteTensor *t = xcalloc((size_t)st.n + 2, sizeof *t, "tensors");
    char **names = xcalloc((size_t)st.n, sizeof *names, "names");
    int n = 0;
    for (int i = 0; i < st.n; i++) {
        const StTensor *s = &st.tensors[i];
        if (strncmp(s->name, "pooler.", 7) == 0 || strncmp(s->name, "classifier.", 11) == 0) continue;
        const char *nm = strncmp(s->name, "deberta.", 8) == 0 ? s->name + 8 : s->name;
        names[n] = xstrdup(nm);
        t[n] = (StWriteTensor){.name = names[n], .dtype = s->dtype, .ndim = s->ndim, .data = s->data};
        memcpy(t[n].shape, s->shape, sizeof s->shape);
        n++;
    }
    for (int i = 0; i < K * C; i++) cls_w[i] = 0.01f * (float)(i % 17) - 0.05f;
    for (int i = 0; i < K; i++) cls_b[i] = 0.3f * (float)i - 0.2f;
    t[n++] = (StWriteTensor){.name = "classifier.weight", .dtype = ST_F32, .ndim = 2, .shape = {K, C}, .data = cls_w};
    t[n++] = (StWriteTensor){.name = "classifier.bias", .dtype = ST_F32, .ndim = 1, .shape = {K}, .data = cls_b};
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    if (safetensors_write(path, t, n, NULL, NULL, 0, &err) != 0) die("%s", err.msg);
    for (int i = 0; i < n - 2; i++) free(names[i]);
    free(names);
    free(t);
    safetensors_close(&st);
    // config.json verbatim
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t len;
    char *text = file_read_all(path, &len, &err);
    if (!text) die("%s", err.msg);
    snprintf(path, sizeof path, "%s/config.json", out);
    FILE *f = fopen(path, "wb");
    check(f && fwrite(text, 1, len, f) == len && fclose(f) == 0, "cannot write %s", path);
    free(text);
    return n;
}

static void loading(TestCounts *tc, const char *dir, const char *build) {
    char out[2048];
    snprintf(out, sizeof out, "%s/test_encoder_grad_model", build);
    mkdir(out, 0755);
    ModelConfig mc;
    load_config(&mc, dir);
    int K = 3, C = mc.hidden_size;
    float *cls_w = xmalloc((size_t)K * C * sizeof(float), "cls"), cls_b[3];
    write_stripped(dir, out, K, C, cls_w, cls_b);
    Backend be;
    backend_cpu_init(&be, 0);
    Encoder ref, m;
    encoder_load(&ref, &be, dir, &mc, K, 0, 0, NULL);
    encoder_load(&m, &be, out, &mc, K, 0, 11, NULL);  // no prefix, no pooler: prints one line
    EncImpl *er = ref.impl, *em = m.impl;
    size_t cc = (size_t)C * C;
    double ss = be.weight_dtype == BACKEND_WEIGHT_FP32 ? be.sumsq(&be, em->pool_w, cc) : 0.0;
    double std = sqrt(ss / (double)cc);
    if (be.weight_dtype == BACKEND_WEIGHT_FP32)
        T_CHECK(tc, fabs(std - 0.1) < 0.015, "missing pooler drawn with std %.4f, expected initializer_range 0.1", std);
    T_CHECK(tc, be.sumsq(&be, em->pool_b, (size_t)C) == 0.0, "missing pooler must get a zero bias");
    // with the reference pooler copied in, the stripped checkpoint computes the same logits
    be.copy(&be, em->pool_w, er->pool_w, cc * be.weight_bytes);
    be.copy(&be, em->pool_b, er->pool_b, (size_t)C * sizeof(float));
    LoraShapes shapes;
    encoder_lora_shapes(&mc, &shapes);
    LoraSet l1, l2;
    int layer = 1, mods[] = {LORA_Q, LORA_K};
    lora_init(&l1, &be, naming_of(&mc), &shapes, mc.num_hidden_layers, &layer, 1, mods, 2, 2, 4.0, 0, 0.0, K, C);
    lora_init(&l2, &be, naming_of(&mc), &shapes, mc.num_hidden_layers, &layer, 1, mods, 2, 2, 4.0, 0, 0.0, K, C);
    T_CHECK(tc, encoder_init_head(&m, &be, out, 0, &l2, 5) == 1, "the classifier in %s was not loaded", out);
    T_CHECK(tc, memcmp(l2.params + l2.head_off, cls_w, (size_t)K * C * sizeof(float)) == 0 &&
                    memcmp(l2.params + l2.head_bias_off, cls_b, (size_t)K * sizeof(float)) == 0,
            "the loaded classifier differs from the checkpoint's");
    T_CHECK(tc, encoder_init_head(&ref, &be, dir, 0, &l1, 5) == 0, "%s has no classifier but one was loaded", dir);
    double sw = be.sumsq(&be, l1.params + l1.head_off, (size_t)K * C), sb = be.sumsq(&be, l1.params + l1.head_bias_off, K);
    T_CHECK(tc, sw > 0 && sb == 0.0, "a new classifier must be random with a zero bias (sumsq %g, %g)", sw, sb);
    be.copy(&be, l1.params, l2.params, l2.numel * sizeof(float));
    lora_init_weights(&l1, &be, 3);
    lora_init_weights(&l2, &be, 3);
    encoder_alloc_acts(&ref, &be, &l1, 3, 10);
    encoder_alloc_acts(&m, &be, &l2, 3, 10);
    Batch b;
    batch_init(&b, 3, 10);
    data_synthetic_batch(&b, mc.vocab_size, mc.pad_token_id, K, 8, 0, 0, 0);
    double a1 = encoder_forward(&ref, &be, &l1, &b, 0, 0.0f, 0, NULL), a2 = encoder_forward(&m, &be, &l2, &b, 0, 0.0f, 0, NULL);
    T_CHECK(tc, a1 == a2 && memcmp(ref.logits, m.logits, (size_t)3 * K * sizeof(float)) == 0,
            "prefix-free checkpoint: loss %.9g vs %.9g", a2, a1);
    // a classifier of another shape is not loaded
    Encoder m2;
    LoraSet l3;
    encoder_load(&m2, &be, out, &mc, 2, 0, 11, NULL);
    lora_init(&l3, &be, naming_of(&mc), &shapes, mc.num_hidden_layers, NULL, 0, NULL, 0, 2, 4.0, 0, 0.0, 2, C);
    T_CHECK(tc, encoder_init_head(&m2, &be, out, 0, &l3, 5) == 0, "a [3, C] classifier was loaded for 2 labels");
    batch_free(&b);
    lora_free(&l1, &be);
    lora_free(&l2, &be);
    lora_free(&l3, &be);
    encoder_free(&ref, &be);
    encoder_free(&m, &be);
    encoder_free(&m2, &be);
    backend_free(&be);
    free(cls_w);
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    unlink(p);
    snprintf(p, sizeof p, "%s/config.json", out);
    unlink(p);
    rmdir(out);
}

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : ".";
    const char *build = argc > 2 ? argv[2] : ".";
    char bert[2048], deb[2048], debrel[2048];
    snprintf(bert, sizeof bert, "%s/tests/fixtures/tiny-bert", root);
    snprintf(deb, sizeof deb, "%s/tests/fixtures/tiny-deberta", root);
    snprintf(debrel, sizeof debrel, "%s/tests/fixtures/tiny-deberta-rel", root);
    TestCounts tc = {0};
    int all[] = {LORA_Q, LORA_K, LORA_V, LORA_O, LORA_UP, LORA_DOWN};
    int l13[] = {1, 3}, l02[] = {0, 2};
    dropout_gradcheck(&tc, bert, "bert", 3, l13, 2, all, 6);
    dropout_gradcheck(&tc, deb, "deberta (share_att_key)", 2, l02, 2, all, 6);
    dropout_gradcheck(&tc, debrel, "deberta (pos_query_proj, regression)", 1, l13, 2, all, 6);
    stops_at_lowest(&tc, bert, "bert");
    stops_at_lowest(&tc, deb, "deberta");
    random_init(&tc, bert, "bert");
    random_init(&tc, deb, "deberta");
    loading(&tc, deb, build);
    return t_finish(&tc, "test_encoder_grad");
}
