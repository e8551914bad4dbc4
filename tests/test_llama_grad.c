// test_llama_grad.c: properties of the Llama backward that the HF fixtures do not cover.
//  1. With LoRA dropout on, the analytic gradient of every adapter matches central finite
//     differences of the loss (the dropout masks are keyed, so the loss is a fixed function).
//  2. Backward stops at the lowest adapted layer: activation memory is kept only for layers at or
//     above it and grows by the same amount per extra layer; adding zero-initialised (B = 0)
//     adapters lower down leaves the upper adapters' gradients unchanged.
//  3. model.init = "random" draws reproducible weights from the seed.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/backend.h"
#include "actlora/hfmodel.h"
#include "actlora/llama.h"
#include "actlora/lora.h"
#include "actlora/rng.h"
#include "test_fixture.h"

typedef struct {
    Backend be;
    ModelConfig mc;
    Llama model;
    LoraSet ls;
    Batch b;
} Setup;

static void setup(Setup *s, const char *dir, const int *layers, int nl, const int *mods, int nm, double dropout,
                  int B, int T) {
    Error err;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (hfconfig_load(&s->mc, path, &err) != 0) die("%s", err.msg);
    backend_cpu_init(&s->be, 0);
    llama_load(&s->model, &s->be, dir, &s->mc, 3, 0, 0);
    LoraShapes shapes;
    llama_lora_shapes(&s->mc, &shapes);
    lora_init(&s->ls, &s->be, &LORA_NAMING_LLAMA, &shapes, s->mc.num_hidden_layers, layers, nl, mods, nm, 4, 8.0, 0, dropout, 3,
              s->mc.hidden_size);
    llama_init_head(&s->model, &s->be, dir, 0, &s->ls, 7);
    lora_init_weights(&s->ls, &s->be, 7);
    llama_alloc_acts(&s->model, &s->be, &s->ls, B, T);
    batch_init(&s->b, B, T);
    data_synthetic_batch(&s->b, s->mc.vocab_size, s->mc.pad_token_id, 3, 99, 0, 0, 0);
}

static void teardown(Setup *s) {
    batch_free(&s->b);
    llama_free(&s->model, &s->be);
    lora_free(&s->ls, &s->be);
    backend_free(&s->be);
}

static double loss_at(void *ctx, uint64_t key) {  // the mean loss at dropout key `key`
    Setup *s = ctx;
    return llama_forward(&s->model, &s->be, &s->ls, &s->b, 1, 0.0f, key, NULL) / s->b.B;
}

static void test_dropout_gradcheck(TestCounts *tc, const char *dir) {
    int layers[] = {1, 3}, mods[] = {LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN};
    Setup s;
    setup(&s, dir, layers, 2, mods, 7, 0.3, 3, 9);
    // non-zero B so that A has a gradient
    fx_nonzero_b(&s.ls, s.ls.params);
    uint64_t key = 0xABCDEF;
    s.be.zero(&s.be, s.ls.grads, s.ls.numel * sizeof(float));
    llama_forward(&s.model, &s.be, &s.ls, &s.b, 1, 1.0f / (float)s.b.B, key, NULL);
    llama_backward(&s.model, &s.be, &s.ls, &s.b, key);
    // central differences on a few elements of every A, B and the head (fp32 forward: eps 1e-2)
    const float eps = 1e-2f;
    double worst = 0.0;
    int checked = 0;
    char name[160];
    size_t off, numel;
    for (int t = 0; fx_param_tensor(&s.ls, t, name, sizeof name, &off, &numel); t++) {
        for (int k = 0; k < 3; k++) {
            size_t j = off + (rng_u64(11, (uint64_t)(t / 2 * 8 + t % 2 * 4 + k)) % numel);
            double fd = fd_param(loss_at, &s, key, &s.ls.params[j], eps), an = s.ls.grads[j];
            double err = fabs(fd - an) / (fabs(fd) + 2e-3);
            if (err > worst) worst = err;
            checked++;
            T_CHECK(tc, err < 3e-2, "dropout gradcheck %s[%zu]: analytic %.6g vs finite difference %.6g", name,
                    j - off, an, fd);
        }
    }
    printf("dropout gradcheck: %d elements, worst relative error %.2e\n", checked, worst);
    // dropout is really on: another key gives another loss, and train=0 disables it
    double l1 = loss_at(&s, key), l2 = loss_at(&s, key + 1);
    double l_eval = llama_forward(&s.model, &s.be, &s.ls, &s.b, 0, 0.0f, key, NULL) / s.b.B;
    T_CHECK(tc, l1 != l2, "dropout keys %llx and %llx gave the same loss", (unsigned long long)key,
            (unsigned long long)key + 1);
    T_CHECK(tc, l1 == loss_at(&s, key), "the same dropout key gave two different losses");
    T_CHECK(tc, l_eval != l1, "evaluation (train = 0) still applied dropout");
    teardown(&s);
}

static size_t act_bytes_for(const char *dir, int layer) {
    int mods[] = {LORA_Q, LORA_V};
    Setup s;
    setup(&s, dir, &layer, 1, mods, 2, 0.0, 4, 16);
    size_t b = s.model.act_bytes;
    teardown(&s);
    return b;
}

static void test_stops_at_lowest(TestCounts *tc, const char *dir) {
    // activation memory: a(l) for adapters on layer l only; L = 4
    size_t a3 = act_bytes_for(dir, 3), a2 = act_bytes_for(dir, 2), a1 = act_bytes_for(dir, 1),
           a0 = act_bytes_for(dir, 0);
    printf("activation bytes with adapters from layer 3/2/1/0: %zu %zu %zu %zu\n", a3, a2, a1, a0);
    T_CHECK(tc, a3 < a2 && a2 < a1, "activation memory must grow as the lowest adapted layer goes down");
    T_CHECK(tc, a2 - a3 == a1 - a2, "each extra layer must cost the same activation memory (%zu vs %zu)", a2 - a3,
            a1 - a2);
    // from layer 0 the saved set of layer 0 takes the place of the scratch set that frozen layers
    // run through, so the cost is the same as from layer 1
    T_CHECK(tc, a0 == a1, "adapters from layer 0 cost %zu bytes, from layer 1 %zu", a0, a1);

    // upper adapters' gradients do not depend on zero-initialised adapters further down
    int mods[] = {LORA_Q, LORA_V, LORA_DOWN};
    int top[] = {3}, both[] = {0, 3};
    Setup s1, s2;
    setup(&s1, dir, top, 1, mods, 3, 0.0, 3, 10);
    setup(&s2, dir, both, 2, mods, 3, 0.0, 3, 10);
    for (Setup *s = &s1; s; s = s == &s1 ? &s2 : NULL) {  // same non-zero B on layer 3 in both
        for (int i = 0; i < s->ls.n; i++) {
            const LoraAdapter *a = &s->ls.ad[i];
            if (a->layer != 3) continue;
            for (size_t j = 0; j < (size_t)a->out * s->ls.r; j++)
                s->ls.params[a->b_off + j] = 0.1f * (2.0f * rng_uniform(rng_key(6, (uint64_t)a->module), j) - 1.0f);
        }
        s->be.zero(&s->be, s->ls.grads, s->ls.numel * sizeof(float));
        llama_forward(&s->model, &s->be, &s->ls, &s->b, 1, 1.0f / (float)s->b.B, 0, NULL);
        llama_backward(&s->model, &s->be, &s->ls, &s->b, 0);
    }
    T_CHECK(tc, s1.model.saved_from == 3 && s2.model.saved_from == 0, "saved_from %d / %d, expected 3 / 0",
            s1.model.saved_from, s2.model.saved_from);
    const char *names[] = {"model.layers.3.self_attn.q_proj.lora_A.weight",
                           "model.layers.3.self_attn.v_proj.lora_B.weight",
                           "model.layers.3.mlp.down_proj.lora_A.weight", "score.weight"};
    for (int k = 0; k < 4; k++) {
        size_t o1, o2, n1, n2;
        lora_param_lookup(&s1.ls, names[k], &o1, &n1);
        lora_param_lookup(&s2.ls, names[k], &o2, &n2);
        T_CLOSE(tc, s1.ls.grads + o1, s2.ls.grads + o2, n1, 1e-6, 1e-8, names[k]);
    }
    // the lower adapters do get a gradient (their A is zero-grad only because B = 0; B is not)
    size_t ob, nb;
    lora_param_lookup(&s2.ls, "model.layers.0.self_attn.q_proj.lora_B.weight", &ob, &nb);
    T_CHECK(tc, s2.be.sumsq(&s2.be, s2.ls.grads + ob, nb) > 0.0, "layer-0 lora_B got no gradient");
    teardown(&s1);
    teardown(&s2);
}

static void test_random_init(TestCounts *tc, const char *dir) {
    Error err;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    ModelConfig mc;
    if (hfconfig_load(&mc, path, &err) != 0) die("%s", err.msg);
    Backend be;
    backend_cpu_init(&be, 0);
    Llama a, b, c;
    llama_load(&a, &be, "/nonexistent", &mc, 2, 1, 42);  // random init never opens the directory
    llama_load(&b, &be, "/nonexistent", &mc, 2, 1, 42);
    llama_load(&c, &be, "/nonexistent", &mc, 2, 1, 43);
    size_t n = (size_t)mc.hidden_size * mc.intermediate_size;
    T_CHECK(tc, memcmp(a.layers[1].wg, b.layers[1].wg, n * sizeof(float)) == 0, "same seed, different weights");
    T_CHECK(tc, memcmp(a.layers[1].wg, c.layers[1].wg, n * sizeof(float)) != 0, "different seeds, same weights");
    T_CHECK(tc, memcmp(a.layers[1].wg, a.layers[1].wu, 64 * sizeof(float)) != 0, "two tensors drew the same values");
    double ss = be.sumsq(&be, a.layers[1].wg, n), std = sqrt(ss / (double)n);
    T_CHECK(tc, fabs(std - 0.02) < 0.002, "random weights have std %.4f, expected 0.02", std);
    T_CHECK(tc, a.norm[0] == 1.0f && a.layers[2].ln1[5] == 1.0f, "random norm weights must be 1");
    llama_free(&a, &be);
    llama_free(&b, &be);
    llama_free(&c, &be);
    backend_free(&be);
}

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : ".";
    char dir[2048];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tiny-llama", root);
    TestCounts tc = {0};
    test_dropout_gradcheck(&tc, dir);
    test_stops_at_lowest(&tc, dir);
    test_random_init(&tc, dir);
    return t_finish(&tc, "test_llama_grad");
}
