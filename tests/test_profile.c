// test_profile.c: the op profiler (profile.h, run.profile) on the CPU backend.
//  1. A tiny Llama's forward + backward through a profiled backend gives bit-identical logits,
//     loss and gradients to the unprofiled backend (the wrappers compute nothing).
//  2. The entries count what the model calls: per forward 2 wgemm_multi (q/k/v, gate/up) and one
//     attention_fwd per layer, one attention_bwd per layer from the lowest adapted one up, keyed by
//     shape ("attention_fwd B2 T9 H4/2 D16"); matrix-product FLOPs are 2MNK per GEMM (checked on the
//     fused q/k/v key) and 4BHT^2D per attention forward; swiglu_fwd moves 12 bytes per element.
//     Every op of backend.h is wrapped (a new op left out of profile.c fails here).
//  3. profile_reset zeroes the entries; profile_stop restores the backend's own table and context;
//     set_weight_dtype through the wrapper is seen on the wrapped backend; the printed table names
//     the ops and their share.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/backend.h"
#include "actlora/hfmodel.h"
#include "actlora/llama.h"
#include "actlora/lora.h"
#include "actlora/profile.h"
#include "actlora/rng.h"
#include "test_fixture.h"

typedef struct {
    ModelConfig mc;
    Llama model;
    LoraSet ls;
    Batch b;
} Side;

static void side_init(Side *s, Backend *be, const char *dir, int B, int T) {
    Error err;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (hfconfig_load(&s->mc, path, &err) != 0) die("%s", err.msg);
    llama_load(&s->model, be, dir, &s->mc, 3, 0, 0);
    LoraShapes shapes;
    llama_lora_shapes(&s->mc, &shapes);
    int layers[] = {1, 3}, mods[] = {LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN};
    lora_init(&s->ls, be, &LORA_NAMING_LLAMA, &shapes, s->mc.num_hidden_layers, layers, 2, mods, 7, 4, 8.0, 0, 0.1, 3,
              s->mc.hidden_size);
    llama_init_head(&s->model, be, dir, 0, &s->ls, 7);
    lora_init_weights(&s->ls, be, 7);
    fx_nonzero_b(&s->ls, s->ls.params);
    llama_alloc_acts(&s->model, be, &s->ls, B, T);
    batch_init(&s->b, B, T);
    data_synthetic_batch(&s->b, s->mc.vocab_size, s->mc.pad_token_id, 3, 99, 0, 0, 0);
}

static double side_step(Side *s, Backend *be) {
    be->zero(be, s->ls.grads, s->ls.numel * sizeof(float));
    double loss = llama_forward(&s->model, be, &s->ls, &s->b, 1, 1.0f / (float)s->b.B, 0xABCDEF, NULL);
    llama_backward(&s->model, be, &s->ls, &s->b, 0xABCDEF);
    return loss;
}

static void side_free(Side *s, Backend *be) {
    batch_free(&s->b);
    llama_free(&s->model, be);
    lora_free(&s->ls, be);
}

static long long calls_of(const Profile *p, const char *key) {
    const ProfileEntry *e = profile_find(p, key);
    return e ? e->calls : 0;
}

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : ".";
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tiny-llama", root);
    TestCounts tc = {0};
    int B = 2, T = 9;

    // 1. plain and profiled runs of the same step
    Backend plain, prof_be;
    backend_cpu_init(&plain, 1);
    backend_cpu_init(&prof_be, 1);
    Side a, b;
    side_init(&a, &plain, dir, B, T);
    side_init(&b, &prof_be, dir, B, T);
    Backend saved = prof_be;
    Profile p;
    profile_start(&p, &prof_be);
    T_CHECK(&tc, prof_be.gemm != saved.gemm && prof_be.ctx == (void *)&p, "profile_start did not wrap the backend");
    // every op is wrapped: an op left out would run with the profiler as its context. Slot by slot,
    // only the 4 data words (name, threads, weight_dtype, weight_bytes; ints padded to a word) may
    // be unchanged: a new op of struct Backend missing from BACKEND_OPS fails here.
    {
        void *before[sizeof(Backend) / sizeof(void *)], *after[sizeof(Backend) / sizeof(void *)];
        memcpy(before, &saved, sizeof before);
        memcpy(after, &prof_be, sizeof after);
        int same = 0;
        for (size_t i = 0; i < sizeof before / sizeof before[0]; i++) same += before[i] == after[i];
        T_CHECK(&tc, sizeof(Backend) % sizeof(void *) == 0 && same == 4,
                "%d of %zu words of the Backend unchanged by profile_start, want 4: list the new op in "
                "BACKEND_OPS (backend.h) and wrap it in profile.c",
                same, sizeof before / sizeof before[0]);
    }
    double la = side_step(&a, &plain), lb = side_step(&b, &prof_be);
    T_CHECK(&tc, la == lb, "loss with the profiler %.17g != without %.17g", lb, la);
    check_exact(&tc, b.model.logits, a.model.logits, (size_t)B * 3, "logits, profiled vs plain");
    check_exact(&tc, b.ls.grads, a.ls.grads, a.ls.numel, "gradients, profiled vs plain");

    // 2. what was counted
    const ModelConfig *mc = &a.mc;
    int L = mc->num_hidden_layers, C = mc->hidden_size, H = mc->num_attention_heads, KVH = mc->num_key_value_heads,
        D = mc->head_dim, N = B * T, I = mc->intermediate_size;
    int n_bwd = L - a.ls.lowest_layer;
    char key[PROFILE_KEY_MAX];
    snprintf(key, sizeof key, "attention_fwd B%d T%d H%d/%d D%d", B, T, H, KVH, D);
    T_CHECK(&tc, calls_of(&p, key) == L, "'%s': %lld calls, want %d (one per layer)", key, calls_of(&p, key), L);
    const ProfileEntry *e = profile_find(&p, key);
    T_CHECK(&tc, e && e->flops == (double)L * 4.0 * B * H * T * T * D, "'%s' FLOPs %g", key, e ? e->flops : -1.0);
    snprintf(key, sizeof key, "attention_bwd B%d T%d H%d/%d D%d", B, T, H, KVH, D);
    T_CHECK(&tc, calls_of(&p, key) == n_bwd, "'%s': %lld calls, want %d (layers %d..%d)", key, calls_of(&p, key), n_bwd,
            a.ls.lowest_layer, L - 1);
    snprintf(key, sizeof key, "wgemm_multi %dx%d+%d+%dx%d", N, H * D, KVH * D, KVH * D, C);
    e = profile_find(&p, key);
    T_CHECK(&tc, e && e->calls == L, "'%s': %lld calls, want %d", key, calls_of(&p, key), L);
    T_CHECK(&tc, e && e->flops == (double)L * 2.0 * N * (H * D + 2 * KVH * D) * C, "'%s' FLOPs %g", key,
            e ? e->flops : -1.0);
    snprintf(key, sizeof key, "swiglu_fwd n=%d", N * I);  // bytes: gate and up read, h written
    e = profile_find(&p, key);
    T_CHECK(&tc, e && e->calls == L && e->bytes == (double)L * 12.0 * N * I, "'%s': %lld calls, %g bytes", key,
            calls_of(&p, key), e ? e->bytes : -1.0);
    snprintf(key, sizeof key, "wgemm_multi %dx%d+%dx%d", N, I, I, C);
    T_CHECK(&tc, calls_of(&p, key) == L, "'%s': %lld calls, want %d", key, calls_of(&p, key), L);
    snprintf(key, sizeof key, "wgemm T %dx%dx%d", N, C, I);  // down_proj forward
    T_CHECK(&tc, calls_of(&p, key) == L, "'%s': %lld calls, want %d", key, calls_of(&p, key), L);
    long long total_calls = 0;
    for (int i = 0; i < p.n; i++) {
        total_calls += p.e[i].calls;
        T_CHECK(&tc, p.e[i].seconds >= 0 && isfinite(p.e[i].seconds), "'%s': time %g", p.e[i].key, p.e[i].seconds);
    }
    T_CHECK(&tc, total_calls > 20 * L && profile_total(&p) > 0, "%lld calls in %g s", total_calls, profile_total(&p));

    // 3. print, reset, weight format through the wrapper, stop
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    profile_print(&p, f, 1, 5, 0.0);
    fclose(f);
    T_CHECK(&tc, strstr(buf, "profile | 1 step(s)") && strstr(buf, "wgemm_multi") && strstr(buf, "attention_bwd") &&
                 strstr(buf, "(the 5 costliest of"),
            "printed table:\n%s", buf);
    free(buf);
    profile_reset(&p);
    T_CHECK(&tc, p.n == 0 && profile_total(&p) == 0.0, "profile_reset left %d entries", p.n);
    T_CHECK(&tc, prof_be.set_weight_dtype(&prof_be, BACKEND_WEIGHT_BF16) == 0 &&
                 prof_be.weight_dtype == BACKEND_WEIGHT_BF16 && p.inner.weight_dtype == BACKEND_WEIGHT_BF16,
            "set_weight_dtype through the profiler: outer %d inner %d", prof_be.weight_dtype, p.inner.weight_dtype);
    prof_be.set_weight_dtype(&prof_be, BACKEND_WEIGHT_FP32);
    profile_stop(&p);
    T_CHECK(&tc, prof_be.gemm == saved.gemm && prof_be.wgemm_multi == saved.wgemm_multi && prof_be.ctx == saved.ctx &&
                 prof_be.weight_dtype == BACKEND_WEIGHT_FP32,
            "profile_stop did not restore the backend's own table");
    double lc = side_step(&b, &prof_be);  // and the backend still works, with the same result
    T_CHECK(&tc, lc == la, "loss after profile_stop %.17g != %.17g", lc, la);
    profile_free(&p);

    side_free(&a, &plain);
    side_free(&b, &prof_be);
    backend_free(&plain);
    backend_free(&prof_be);
    return t_finish(&tc, "test_profile");
}
