// test_memplan.c: the device-memory planner (memplan.h).
//  1. Its activation term equals, to the byte, what llama_alloc_acts allocates (Llama.act_bytes) for
//     the tiny fixture model on the CPU backend, over adapter placements (top layer only, from
//     layer 0, non-contiguous layers, MLP-only, head only) and batch shapes; its trainable-parameter
//     count equals the LoraSet's.
//  2. It is monotonic: more micro-batch or more layers below the top (L - lowest) never needs less.
//  3. Llama-3.1-8B shapes at seq 256 with bf16 weights and adapters (all 7 modules) on all 32
//     layers fit a useful micro-batch (>= 8) on an 80 GB GPU (the plans are printed), and plans
//     that cannot fit are refused with a message saying what to change.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actlora/backend.h"
#include "actlora/hfmodel.h"
#include "actlora/llama.h"
#include "actlora/lora.h"
#include "actlora/memplan.h"
#include "test_util.h"

static const int ALL_MODS[] = {LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN};

// Builds the tiny model with adapters on `layers` x `mods`, allocates activations for [B, T] and
// compares the planner's numbers with what was allocated.
static void check_acts(TestCounts *tc, const char *dir, const int *layers, int nl, const int *mods, int nm, int B,
                       int T, const char *what) {
    Error err;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    ModelConfig mc;
    if (hfconfig_load(&mc, path, &err) != 0) die("%s", err.msg);
    Backend be;
    backend_cpu_init(&be, 1);
    Llama m;
    llama_load(&m, &be, dir, &mc, 3, 0, 0);
    LoraShapes shapes;
    llama_lora_shapes(&mc, &shapes);
    LoraSet ls;
    lora_init(&ls, &be, &LORA_NAMING_LLAMA, &shapes, mc.num_hidden_layers, layers, nl, mods, nm, 4, 8.0, 0, 0.0, 3, mc.hidden_size);
    llama_alloc_acts(&m, &be, &ls, B, T);
    MemPlan p;
    memplan_llama(&p, &mc, 3, ls.lowest_layer, nl, mods, nm, 4, B, T, 4, 0);
    T_CHECK(tc, p.acts == m.act_bytes, "%s: planned activations %zu bytes, llama_alloc_acts allocated %zu", what,
            p.acts, m.act_bytes);
    T_CHECK(tc, p.trainable_params == ls.numel, "%s: planned %zu trainable parameters, the LoraSet has %zu", what,
            p.trainable_params, ls.numel);
    T_CHECK(tc, p.saved_from == m.saved_from, "%s: planned saved_from %d, the model has %d", what, p.saved_from,
            m.saved_from);
    printf("  %-40s act_bytes %8zu = plan %8zu\n", what, m.act_bytes, p.acts);
    llama_free(&m, &be);
    lora_free(&ls, &be);
    backend_free(&be);
}

static void test_matches_llama(TestCounts *tc, const char *dir) {
    int top[] = {3}, from0[] = {0, 2}, gaps[] = {1, 3}, mid[] = {1, 2, 3};
    int qv[] = {LORA_Q, LORA_V}, mlp[] = {LORA_GATE, LORA_UP}, down[] = {LORA_DOWN};
    check_acts(tc, dir, top, 1, qv, 2, 4, 16, "top layer, q/v, B=4 T=16");
    check_acts(tc, dir, from0, 2, ALL_MODS, 7, 3, 9, "layers 0,2, all modules, B=3 T=9");
    check_acts(tc, dir, gaps, 2, mlp, 2, 2, 7, "layers 1,3, gate/up, B=2 T=7");
    check_acts(tc, dir, mid, 3, down, 1, 5, 11, "layers 1-3, down, B=5 T=11");
    check_acts(tc, dir, top, 1, mlp, 2, 1, 2, "top layer, gate/up, B=1 T=2");
    check_acts(tc, dir, NULL, 0, qv, 2, 3, 8, "head only, B=3 T=8");
}

static void test_monotonic(TestCounts *tc, const char *dir) {
    Error err;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    ModelConfig mc;
    if (hfconfig_load(&mc, path, &err) != 0) die("%s", err.msg);
    int L = mc.num_hidden_layers;
    MemPlan prev, cur;
    int ok_b = 1;
    memplan_llama(&prev, &mc, 3, 2, 2, ALL_MODS, 7, 8, 1, 32, 4, 0);
    for (int B = 2; B <= 64; B++) {
        memplan_llama(&cur, &mc, 3, 2, 2, ALL_MODS, 7, 8, B, 32, 4, 0);
        if (!(cur.acts > prev.acts && cur.total > prev.total)) ok_b = 0;
        prev = cur;
    }
    T_CHECK(tc, ok_b, "memory must grow with the micro-batch");
    // L - lowest: strictly more activations for every extra layer down to layer 1; from layer 0 the
    // saved set of layer 0 replaces the scratch set, so it costs the same as from layer 1 (llama.h)
    int ok_l = 1;
    memplan_llama(&prev, &mc, 3, L - 1, 1, ALL_MODS, 7, 8, 4, 32, 4, 0);
    for (int low = L - 2; low >= 0; low--) {
        memplan_llama(&cur, &mc, 3, low, L - low, ALL_MODS, 7, 8, 4, 32, 4, 0);
        if (low >= 1 && !(cur.acts > prev.acts)) ok_l = 0;
        if (!(cur.total >= prev.total) || !(cur.acts >= prev.acts)) ok_l = 0;
        prev = cur;
    }
    T_CHECK(tc, ok_l, "memory must grow as the lowest adapted layer goes down");
    // the same layers adapted, the lowest lower: more activations (backward reaches further)
    MemPlan a, b;
    memplan_llama(&a, &mc, 3, 3, 1, ALL_MODS, 7, 8, 4, 32, 4, 0);
    memplan_llama(&b, &mc, 3, 1, 1, ALL_MODS, 7, 8, 4, 32, 4, 0);
    T_CHECK(tc, b.acts > a.acts && b.trainable == a.trainable, "lowest layer 1 vs 3 with one adapted layer");
    size_t margin = memplan_margin((size_t)80e9);
    T_CHECK(tc, margin > ((size_t)1 << 30) && margin < (size_t)6e9, "margin on 80 GB: %zu bytes", margin);
}

static void llama8b(ModelConfig *mc) {
    const char *json =
        "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForSequenceClassification\"], \"hidden_size\": 4096,"
        " \"intermediate_size\": 14336, \"num_hidden_layers\": 32, \"num_attention_heads\": 32,"
        " \"num_key_value_heads\": 8, \"head_dim\": 128, \"vocab_size\": 128256, \"max_position_embeddings\": 131072,"
        " \"rms_norm_eps\": 1e-5, \"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\","
        " \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
        " \"original_max_position_embeddings\": 8192}, \"bos_token_id\": 128000, \"eos_token_id\": 128001,"
        " \"tie_word_embeddings\": false}";
    Error err;
    if (hfconfig_parse(mc, json, "Llama-3.1-8B config (test)", &err) != 0) die("%s", err.msg);
}

static void test_llama8b(TestCounts *tc) {
    ModelConfig mc;
    llama8b(&mc);
    const size_t gb80 = (size_t)80e9;
    char rep[4096];
    MemPlan p;
    // bf16 weights, adapters on all 32 layers, seq 256, micro-batch 8
    memplan_llama(&p, &mc, 2, 0, 32, ALL_MODS, 7, 8, 8, 256, 2, 0);
    int ok = memplan_fit(&p, gb80, rep, sizeof rep);
    printf("%s", rep);
    T_CHECK(tc, ok, "Llama-3.1-8B, bf16, all 32 layers, micro-batch 8 x 256 must fit 80 GB");
    int best = memplan_max_micro_batch(&p, gb80);
    T_CHECK(tc, best >= 8, "largest micro-batch on 80 GB is %d, expected >= 8", best);
    T_CHECK(tc, strstr(rep, "fits") && strstr(rep, "frozen weights") && strstr(rep, "total"), "report lacks lines");
    double wgib = (double)p.weights / 1073741824.0;
    T_CHECK(tc, wgib > 13.5 && wgib < 14.5, "8B bf16 frozen weights %.2f GiB, expected ~14 (7.5e9 params)", wgib);
    // the plan at the largest micro-batch fits, one more does not
    MemPlan q;
    memplan_llama(&q, &mc, 2, 0, 32, ALL_MODS, 7, 8, best, 256, 2, 0);
    T_CHECK(tc, memplan_fit(&q, gb80, NULL, 0), "micro-batch %d must fit", best);
    memplan_llama(&q, &mc, 2, 0, 32, ALL_MODS, 7, 8, best + 1, 256, 2, 0);
    T_CHECK(tc, !memplan_fit(&q, gb80, NULL, 0), "micro-batch %d must not fit", best + 1);

    // today's fp32 backend, and fewer layers: printed for the record
    memplan_llama(&p, &mc, 2, 0, 32, ALL_MODS, 7, 8, 8, 256, 4, 0);
    memplan_fit(&p, gb80, rep, sizeof rep);
    printf("%s", rep);
    for (int top = 32; top >= 8; top /= 2) {
        for (int wb = 2; wb <= 4; wb += 2) {
            memplan_llama(&p, &mc, 2, 32 - top, top, ALL_MODS, 7, 8, 1, 256, wb, 0);
            printf("  8B seq 256, %s weights, top %2d layers: largest micro-batch on 80 GB = %d\n",
                   wb == 2 ? "bf16" : "fp32", top, memplan_max_micro_batch(&p, gb80));
        }
    }
    memplan_llama(&p, &mc, 2, 16, 16, ALL_MODS, 7, 8, 1, 256, 2, 0);
    int top16 = memplan_max_micro_batch(&p, gb80);
    memplan_llama(&p, &mc, 2, 0, 32, ALL_MODS, 7, 8, 1, 256, 2, 0);
    T_CHECK(tc, top16 > memplan_max_micro_batch(&p, gb80), "top 16 layers must allow a larger micro-batch than 32");

    // refusals: too large a micro-batch (names the largest that fits), and a GPU too small for anything
    memplan_llama(&p, &mc, 2, 0, 32, ALL_MODS, 7, 8, 256, 256, 2, 0);
    ok = memplan_fit(&p, gb80, rep, sizeof rep);
    printf("%s", rep);
    T_CHECK(tc, !ok, "micro-batch 256 x 256 must not fit 80 GB");
    char want[64];
    snprintf(want, sizeof want, "train.micro_batch <= %d", best);
    T_CHECK(tc, strstr(rep, "does not fit") && strstr(rep, want), "refusal must say '%s': %s", want, rep);
    memplan_llama(&p, &mc, 2, 0, 32, ALL_MODS, 7, 8, 1, 256, 4, 0);
    ok = memplan_fit(&p, (size_t)16 << 30, rep, sizeof rep);
    printf("%s", rep);
    T_CHECK(tc, !ok && strstr(rep, "not even micro-batch 1 fits"), "fp32 8B on 16 GiB must be refused: %s", rep);
    T_CHECK(tc, memplan_max_micro_batch(&p, (size_t)16 << 30) == 0, "no micro-batch fits 16 GiB");
}

// The planned frozen-weight bytes against what the loader allocates, plain and bordered (lora.fuse):
// every weight_alloc is counted, the fp32 norms are added as the plan adds them.
static size_t weight_elems;
static void *(*cpu_weight_alloc)(Backend *, size_t, const char *);
static void *counting_weight_alloc(Backend *be, size_t n, const char *what) {
    weight_elems += n;
    return cpu_weight_alloc(be, n, what);
}

static void test_weights_match(TestCounts *tc, const char *dir) {
    Error err;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    ModelConfig mc;
    if (hfconfig_load(&mc, path, &err) != 0) die("%s", err.msg);
    size_t C = (size_t)mc.hidden_size, L = (size_t)mc.num_hidden_layers;
    for (int fused = 0; fused <= 1; fused++) {
        Backend be;
        backend_cpu_init(&be, 1);
        cpu_weight_alloc = be.weight_alloc;
        be.weight_alloc = counting_weight_alloc;
        weight_elems = 0;
        Llama m;
        llama_load_fused(&m, &be, dir, &mc, 3, 0, 0, fused ? 8 : 0);
        MemPlan p;
        memplan_llama(&p, &mc, 3, 2, 2, ALL_MODS, 7, 8, 4, 32, 4, fused);
        size_t loaded = weight_elems * 4 + (C + L * 2 * C) * 4;
        T_CHECK(tc, p.weights == loaded, "%s: planned %zu bytes of frozen weights, the loader allocated %zu",
                fused ? "bordered" : "plain", p.weights, loaded);
        printf("  frozen weights %-8s planned %zu = loaded %zu bytes\n", fused ? "bordered" : "plain", p.weights,
               loaded);
        llama_free(&m, &be);
        backend_free(&be);
    }
}

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : ".";
    char dir[2048];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tiny-llama", root);
    TestCounts tc = {0};
    test_matches_llama(&tc, dir);
    test_monotonic(&tc, dir);
    test_weights_match(&tc, dir);
    test_llama8b(&tc);
    return t_finish(&tc, "test_memplan");
}
