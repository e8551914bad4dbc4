// test_fixture.h: helpers shared by the parity, gradient and op tests (static inline; include after the
// actlora headers a test needs, or alone: it includes its own). test_util.h keeps the assertion macros
// and the numeric comparisons; this header holds what those tests do around them:
//   - HF + PEFT fixtures (tests/fixtures/*.safetensors, tools/gen_reference.py): need(), json_int(),
//     json_num(), fx_open() (fixture, metadata, model config), fx_peft_lora() (the adapters as PEFT had
//     them), fx_batch() (the fixture's batch), fx_nonzero_b() (B factors that matter), fx_load_init() (the init.* tensors), fx_optim_config(),
//     fx_check_trajectory() and fx_train_steps() (the 10-step AdamW trajectory and final parameters),
//     fx_check_tensors() (the grad.* / final.* tensors), fx_check_calib() (the calibration statistics),
//     fx_check_bf16() (the bf16 pass's logits and loss);
//   - backend selection (ACTLORA_TEST_BACKEND=cuda, ACTLORA_TEST_HARNESS_ON_CPU): Mode, pick_mode(),
//     open_backend(), to_host();
//   - finite differences of the model loss with respect to one float parameter: fd_param();
//   - op tests against naive double references: Rand / rnd() / fill(), falloc() / dalloc() / to_d() /
//     fill_nan(), bf16_ref() (nearest bf16 in double arithmetic), check_close_ref(), check_exact(),
//     fd_grad_strided() (FD_EPS), expect_death(), fx_attention_mask() (the padding cases of the attention tests).
// Every check keeps the tolerance its caller passes or states; none of these helpers picks one.
#ifndef ACTLORA_TEST_FIXTURE_H
#define ACTLORA_TEST_FIXTURE_H

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "actlora/backend.h"
#ifdef ACTLORA_HAVE_CUDA
#include "actlora/backend_cuda.h"
#endif
#include "actlora/calib.h"
#include "actlora/common.h"
#include "actlora/data.h"
#include "actlora/hfmodel.h"
#include "actlora/lora.h"
#include "actlora/optim.h"
#include "actlora/rng.h"
#include "actlora/safetensors.h"
#include "test_util.h"

// ------------------------------------------------------------------------------ trainable tensors

// The trainable tensors of ls one at a time: t = 2 i is adapter i's A, t = 2 i + 1 its B, t = 2 n the head.
// Fills name (its PEFT name), off and numel (in the flat buffers) and returns 1; returns 0 past the head (and
// only there: a name the set does not find is a broken fixture, which exits).
static inline int fx_param_tensor(const LoraSet *ls, int t, char *name, size_t name_n, size_t *off, size_t *numel) {
    if (t < 0 || t > 2 * ls->n) return 0;
    int i = t / 2;
    lora_param_name(ls, i < ls->n ? i : -1, t % 2, name, name_n);
    if (lora_param_lookup(ls, name, off, numel) != 0) die("test: trainable tensor %d ('%s') not found", t, name);
    return 1;
}

// ------------------------------------------------------------------------------ HF fixtures

// The fixture's tensor `name`; exits (1) when the fixture lacks it.
static inline const StTensor *need(const SafeTensors *st, const char *name) {
    const StTensor *t = safetensors_find(st, name);
    if (!t) {
        fprintf(stderr, "fixture %s lacks tensor '%s'\n", st->path, name);
        exit(1);
    }
    return t;
}

// Fields of the fixture's "config" metadata (a JSON object written by tools/gen_reference.py).
static inline int json_int(const cJSON *o, const char *k) { return cJSON_GetObjectItem(o, k)->valueint; }
static inline double json_num(const cJSON *o, const char *k) { return cJSON_GetObjectItem(o, k)->valuedouble; }

// Opens root/tests/fixtures/<fixture>, parses its "config" metadata (one check: it is JSON) and loads the
// config.json of the model dir it names (root/tests/fixtures/<model_dir>). Leaves the model dir in dir and
// its config.json's path in path. Returns 0, or -1 after a failed check (nothing to close then).
static inline int fx_open(TestCounts *tc, const char *root, const char *fixture, SafeTensors *st, cJSON **meta,
                          char dir[2048], char path[4096], ModelConfig *mc) {
    Error err;
    snprintf(path, 4096, "%s/tests/fixtures/%s", root, fixture);
    if (safetensors_open(st, path, &err) != 0) {
        T_CHECK(tc, 0, "%s", err.msg);
        return -1;
    }
    *meta = cJSON_Parse(safetensors_meta(st, "config"));
    T_CHECK(tc, *meta != NULL, "%s: metadata 'config' is not JSON", fixture);
    if (!*meta) return -1;
    snprintf(dir, 2048, "%s/tests/fixtures/%s", root, cJSON_GetObjectItem(*meta, "model_dir")->valuestring);
    snprintf(path, 4096, "%s/config.json", dir);
    if (hfconfig_load(mc, path, &err) != 0) {
        T_CHECK(tc, 0, "%s", err.msg);
        return -1;
    }
    return 0;
}

// Overwrites every trainable tensor with the fixture's init.<name> value (through host memory: params are
// backend memory), one check per init.* tensor that it maps to a trainable tensor of the same size.
// Returns the number of init.* tensors; the caller checks it against what it expects.
static inline int fx_load_init(TestCounts *tc, const SafeTensors *st, LoraSet *ls, Backend *be, const char *fixture) {
    int n_init = 0;
    for (int i = 0; i < st->n; i++) {
        const char *name = st->tensors[i].name;
        if (strncmp(name, "init.", 5) != 0) continue;
        size_t off, numel;
        int found = lora_param_lookup(ls, name + 5, &off, &numel) == 0;
        T_CHECK(tc, found && numel == st->tensors[i].numel, "%s: %s has no matching trainable tensor", fixture, name);
        if (found && numel == st->tensors[i].numel) {
            float *h = xmalloc(numel * sizeof(float), "init tensor");
            st_to_f32(&st->tensors[i], h);
            be->upload(be, ls->params + off, h, numel * sizeof(float));
            free(h);
        }
        n_init++;
    }
    return n_init;
}

// The optimiser as the fixture's trajectory was run: transformers' schedule, torch's AdamW and clipping.
static inline OptimConfig fx_optim_config(const cJSON *meta) {
    const cJSON *betas = cJSON_GetObjectItem(meta, "betas");
    OptimConfig oc = {.lr = json_num(meta, "lr"),
                      .kind = (ScheduleKind)optim_schedule_parse(cJSON_GetObjectItem(meta, "schedule")->valuestring),
                      .warmup_steps = json_int(meta, "warmup_steps"), .total_steps = json_int(meta, "steps"),
                      .beta1 = cJSON_GetArrayItem(betas, 0)->valuedouble,
                      .beta2 = cJSON_GetArrayItem(betas, 1)->valuedouble, .eps = json_num(meta, "eps"),
                      .weight_decay = json_num(meta, "weight_decay"), .clip = json_num(meta, "max_grad_norm")};
    return oc;
}

// The S steps' learning rates, losses and pre-clip gradient norms against the fixture's traj.* (S <= 64):
// lr 1e-6 relative (atol 1e-12), losses 1e-4 of the largest loss (the loss falls ~100x over the steps:
// measured against the initial loss), grad norms 1e-4 relative. Returns the loss error.
static inline double fx_check_trajectory(TestCounts *tc, const SafeTensors *st, const char *fixture, int S,
                                         const float *my_lr, const float *my_loss, const float *my_norm) {
    float traj_loss[64], traj_lr[64], traj_norm[64];
    char what[256];
    st_to_f32(need(st, "traj.loss"), traj_loss);
    st_to_f32(need(st, "traj.lr"), traj_lr);
    st_to_f32(need(st, "traj.grad_norm"), traj_norm);
    snprintf(what, sizeof what, "%s trajectory lr", fixture);
    T_CLOSE(tc, my_lr, traj_lr, (size_t)S, 1e-6, 1e-12, what);
    double traj_err = t_rel_to_max(my_loss, traj_loss, (size_t)S);
    T_CHECK(tc, traj_err <= 1e-4, "%s trajectory loss: max err %.3g of the largest loss", fixture, traj_err);
    snprintf(what, sizeof what, "%s trajectory grad norm", fixture);
    T_CLOSE(tc, my_norm, traj_norm, (size_t)S, 1e-4, 0.0, what);
    return traj_err;
}

// Every fixture tensor named prefix + <name> ("grad.", "final.") against host_buf (a host copy of the
// LoRA set's grads or params) at the offset lora_param_lookup gives <name>: one check per tensor, max
// |diff| of the tensor's largest element (t_rel_to_max) <= tol, and a failed check for a tensor with no
// trainable tensor of that name and size. `what` says what is compared, for the messages ("gradient",
// "after 10 steps"); verbose prints one line per tensor. Sets *n_cmp to the number of tensors compared
// and, when worst_name is not NULL, *worst_name to the <name> with the largest error (in st's tensor
// table; "" when none). Returns the largest error; the caller checks the count.
static inline double fx_check_tensors(TestCounts *tc, const SafeTensors *st, const char *prefix, const LoraSet *ls,
                                      const float *host_buf, double tol, const char *fixture, const char *what,
                                      int verbose, int *n_cmp, const char **worst_name) {
    size_t plen = strlen(prefix);
    double worst = 0.0;
    int n = 0;
    if (worst_name) *worst_name = "";
    for (int i = 0; i < st->n; i++) {
        const char *name = st->tensors[i].name;
        if (strncmp(name, prefix, plen) != 0) continue;
        size_t off, numel;
        if (lora_param_lookup(ls, name + plen, &off, &numel) != 0 || numel != st->tensors[i].numel) {
            T_CHECK(tc, 0, "%s: %s has no matching trainable tensor", fixture, name);
            continue;
        }
        float *ref = xmalloc((numel ? numel : 1) * sizeof(float), "fixture tensor");
        st_to_f32(&st->tensors[i], ref);
        double e = t_rel_to_max(host_buf + off, ref, numel);
        free(ref);
        if (verbose) printf("  %-62s err %.2e of max\n", name, e);
        if (n == 0 || e > worst || isnan(e)) {  // the first, a larger one or a NaN
            worst = e;
            if (worst_name) *worst_name = name + plen;
        }
        T_CHECK(tc, e <= tol, "%s: %s (%s): max err %.3g of the tensor's largest element (limit %.0e)", fixture, name,
                what, e, tol);
        n++;
    }
    *n_cmp = n;
    return worst;
}

// The adapters exactly as PEFT was configured (meta: layers, target_modules, r, lora_alpha, use_rslora,
// lora_dropout) into ls, for a model of L layers with a [K, head_hidden] head: one check per module name
// (it must parse) and one that the LoRA scaling is PEFT's lora_scaling.
static inline void fx_peft_lora(TestCounts *tc, LoraSet *ls, Backend *be, const LoraNaming *naming,
                                const LoraShapes *shapes, int L, const cJSON *meta, int K, int head_hidden,
                                const char *fixture) {
    int layers[64], nl = 0, modules[LORA_NUM_MODULES], nm = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(meta, "layers")) if (nl < 64) layers[nl++] = it->valueint;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(meta, "target_modules")) {
        int m = lora_module_parse(naming, it->valuestring);
        T_CHECK(tc, m >= 0 && nm < LORA_NUM_MODULES, "%s: target module '%s' unknown", fixture, it->valuestring);
        if (m >= 0 && nm < LORA_NUM_MODULES) modules[nm++] = m;
    }
    lora_init(ls, be, naming, shapes, L, layers, nl, modules, nm, json_int(meta, "r"), json_num(meta, "lora_alpha"),
              cJSON_IsTrue(cJSON_GetObjectItem(meta, "use_rslora")), json_num(meta, "lora_dropout"), K, head_hidden);
    T_CHECK(tc, fabs(ls->scaling - json_num(meta, "lora_scaling")) < 1e-6, "%s: LoRA scaling %g, PEFT %g", fixture,
            ls->scaling, json_num(meta, "lora_scaling"));
}

// The fixture's batch (input_ids [B, T], attention_mask, token_type_ids when with_types, labels: class ids
// for K > 1, floats for regression), with n_tokens counted; path names the fixture file in errors.
static inline void fx_batch(Batch *b, const SafeTensors *st, const char *path, int K, int with_types) {
    Error err;
    const StTensor *ids = need(st, "input_ids");
    int B = (int)ids->shape[0], T = (int)ids->shape[1];
    batch_init(b, B, T);
    if (st_to_i32(ids, path, b->ids, &err) != 0 || st_to_i32(need(st, "attention_mask"), path, b->mask, &err) != 0 ||
        (with_types && st_to_i32(need(st, "token_type_ids"), path, b->type_ids, &err) != 0) ||
        (K > 1 && st_to_i32(need(st, "labels"), path, b->labels_i, &err) != 0))
        die("%s", err.msg);
    if (K <= 1) st_to_f32(need(st, "labels"), b->labels_f);
    b->n_tokens = 0;
    for (int i = 0; i < B * T; i++) b->n_tokens += b->mask[i];
}

// Non-zero LoRA B factors in a host copy of ls's parameters: PEFT starts B at 0, which leaves A without a
// gradient and the adapter without effect. B = 0.2 (2u - 1), u = rng_uniform(rng_key(5, adapter), element).
static inline void fx_nonzero_b(const LoraSet *ls, float *params_host) {
    for (int i = 0; i < ls->n; i++) {
        const LoraAdapter *a = &ls->ad[i];
        for (size_t j = 0; j < (size_t)a->out * ls->r; j++)
            params_host[a->b_off + j] = 0.2f * (2.0f * rng_uniform(rng_key(5, (uint64_t)i), j) - 1.0f);
    }
}

// One training step's forward + backward of the caller's model on b (gradients zeroed by the caller's
// loop below, accumulated by the step); returns the mean loss.
typedef double (*FxStep)(void *model, Backend *be, LoraSet *ls, const Batch *b);

// The fixture's AdamW steps on b from ls's current parameters (meta's schedule, torch's AdamW and
// clipping): the trajectory against traj.* (fx_check_trajectory) and the parameters after the last step
// against final.* (1e-4 of each tensor's largest element, every trainable tensor compared). Returns the
// trajectory's loss error and sets *final_err.
static inline double fx_train_steps(TestCounts *tc, const SafeTensors *st, const cJSON *meta, const char *fixture,
                                    FxStep step, void *model, Backend *be, LoraSet *ls, const Batch *b,
                                    double *final_err) {
    OptimConfig oc = fx_optim_config(meta);
    int S = oc.total_steps;
    T_CHECK(tc, S >= 1 && S <= 64, "%s: %d trajectory steps (1..64)", fixture, S);
    if (S > 64) S = 64;
    float my_loss[64], my_lr[64], my_norm[64];
    for (int s = 0; s < S; s++) {
        be->zero(be, ls->grads, ls->numel * sizeof(float));
        my_loss[s] = (float)step(model, be, ls, b);
        my_lr[s] = (float)optim_lr_at(&oc, s);
        my_norm[s] = (float)optim_clip(&oc, be, ls);
        optim_step(&oc, be, ls, optim_lr_at(&oc, s), s + 1);
    }
    double traj_err = fx_check_trajectory(tc, st, fixture, S, my_lr, my_loss, my_norm);
    float *params = xmalloc(ls->numel * sizeof(float), "parameters");
    be->download(be, params, ls->params, ls->numel * sizeof(float));
    char what[64];
    snprintf(what, sizeof what, "after %d steps", S);
    int n_final;
    *final_err = fx_check_tensors(tc, st, "final.", ls, params, 1e-4, fixture, what, 0, &n_final, NULL);
    T_CHECK(tc, n_final == lora_num_tensors(ls), "%s: %d final tensors compared, expected %d", fixture, n_final,
            lora_num_tensors(ls));
    free(params);
    return traj_err;
}

// The calibration statistics cs (the caller's forward of the base model) against the fixture's
// calib.sums (1e-5 relative, element-wise) and calib.tokens (exact); prints one line with the error and
// its worst element. Returns the error and sets *worst to its index (layer * CALIB_NSTAT + column).
static inline double fx_check_calib(TestCounts *tc, const SafeTensors *st, const CalibStats *cs, const char *fixture,
                                    size_t *worst) {
    size_t n = (size_t)cs->num_layers * CALIB_NSTAT;
    const StTensor *sums = need(st, "calib.sums");
    *worst = 0;
    T_CHECK(tc, sums->numel == n, "%s: calib.sums has %zu elements, expected %zu", fixture, sums->numel, n);
    if (sums->numel != n) return INFINITY;
    float *mine = xmalloc((n ? n : 1) * sizeof(float), "stats");
    float *ref = xmalloc((n ? n : 1) * sizeof(float), "ref stats");
    for (size_t i = 0; i < n; i++) mine[i] = (float)cs->sums[i];
    st_to_f32(sums, ref);
    float ref_tokens;
    st_to_f32(need(st, "calib.tokens"), &ref_tokens);
    char what[256];
    snprintf(what, sizeof what, "%s calibration sums", fixture);
    T_CLOSE(tc, mine, ref, n, 1e-5, 0.0, what);
    T_CHECK(tc, cs->tokens == ref_tokens, "%s: calibration counted %g real tokens, HF %g", fixture, cs->tokens,
            (double)ref_tokens);
    double err = t_max_rel_err(mine, ref, n, 0.0, worst);
    printf("%s: calibration sums err %.2e (worst: layer %zu column %zu, %.8g vs %.8g), %g real tokens\n", fixture,
           err, *worst / CALIB_NSTAT, *worst % CALIB_NSTAT, n ? (double)mine[*worst] : 0.0,
           n ? (double)ref[*worst] : 0.0, cs->tokens);
    free(mine);
    free(ref);
    return err;
}

// ------------------------------------------------------------------------------ backend selection

// Which backend the checks run on (ACTLORA_TEST_BACKEND, ACTLORA_TEST_HARNESS_ON_CPU).
typedef struct {
    int cuda;     // ACTLORA_TEST_BACKEND=cuda: explicit weight format, both passes
    int harness;  // ... but on the CPU backend (ACTLORA_TEST_HARNESS_ON_CPU)
} Mode;

// Initialises be for the mode; in CUDA mode sets the weight format dtype ("fp32" / "bf16").
static inline void open_backend(Backend *be, const Mode *md, const char *dtype) {
#ifdef ACTLORA_HAVE_CUDA
    if (md->cuda && !md->harness) backend_cuda_init(be, 0);
    else backend_cpu_init(be, 0);
#else
    backend_cpu_init(be, 0);
#endif
    if (md->cuda) {
        char msg[256];
        if (backend_set_dtype(be, dtype, msg, sizeof msg) != 0) die("%s", msg);
    }
}

// Host copy of n floats of backend memory (a plain copy on the CPU backend); the caller frees it.
static inline float *to_host(Backend *be, const float *d, size_t n) {
    float *h = xmalloc((n ? n : 1) * sizeof(float), "host copy");
    if (n) be->download(be, h, d, n * sizeof(float));
    return h;
}

// Host fp32 copy of n elements of a frozen weight in be's weight format (bf16 on CUDA is widened exactly;
// the CPU keeps fp32, its bf16 emulation included); the caller frees it.
static inline float *fx_weights_host(Backend *be, const void *w, size_t n) {
    float *h = xmalloc((n ? n : 1) * sizeof(float), "weights download");
    if (be->weight_bytes != 2) {
        if (n) be->download(be, h, w, n * sizeof(float));
        return h;
    }
    uint16_t *t = xmalloc((n ? n : 1) * 2, "bf16 download");
    if (n) be->download(be, t, w, n * 2);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)t[i] << 16;
        memcpy(&h[i], &u, 4);
    }
    free(t);
    return h;
}

// ACTLORA_TEST_BACKEND -> the mode; returns -1 to run, or the exit code (77 skip, 2 bad value).
static inline int pick_mode(Mode *md, const char *test) {
    const char *want = getenv("ACTLORA_TEST_BACKEND");
    memset(md, 0, sizeof *md);
    if (!want || !*want || strcmp(want, "cpu") == 0) return -1;
    if (strcmp(want, "cuda") != 0) {
        fprintf(stderr, "%s: ACTLORA_TEST_BACKEND=%s: expected \"cpu\" or \"cuda\"\n", test, want);
        return 2;
    }
    md->cuda = 1;
    md->harness = getenv("ACTLORA_TEST_HARNESS_ON_CPU") != NULL;
    if (md->harness) {
        printf("%s: ACTLORA_TEST_HARNESS_ON_CPU: the CUDA-mode code path on the CPU backend\n", test);
        return -1;
    }
#ifndef ACTLORA_HAVE_CUDA
    printf("%s: SKIP: ACTLORA_TEST_BACKEND=cuda but built without the CUDA backend (configure with "
           "-DACTLORA_CUDA=ON)\n", test);
    return TEST_SKIP;
#else
    int n = backend_cuda_device_count();
    if (n <= 0) {
        printf("%s: SKIP: ACTLORA_TEST_BACKEND=cuda but no CUDA device is visible\n", test);
        return TEST_SKIP;
    }
    printf("%s: ACTLORA_TEST_BACKEND=cuda: %d device(s), running on device 0\n", test, n);
    return -1;
#endif
}

// bf16 pass (CUDA mode): logits within 3e-2 of the largest logit, loss 2e-2 relative. The bf16 error
// against HF's fp32 is mostly the rounding of the frozen weights and of the GEMM inputs, which the CPU's
// bf16 emulation reproduces (same roundings, fp32 sums in another order); measured with it
// (ACTLORA_TEST_HARNESS_ON_CPU): logits 4.9e-3 (bert_cls), 1.26e-2 (deberta_cls), 8.8e-3 (deberta_reg),
// 6.1e-3 .. 1.42e-2 (minilm_real, moving with the CPU thread count: its logits are small, a fresh head,
// loss ~ ln 2), losses <= 3.4e-3. 3e-2 leaves 2x headroom for the GPU's other summation order; a bf16
// path gone wrong (fp32 weights read as bf16, a missed rounding) misses by orders of magnitude.
#define BF16_LOGITS_TOL 3e-2

// The bf16 pass's checks: the B x K logits (backend memory) and the mean loss against the fixture's,
// with the tolerances above. Sets the logits error (of the largest logit), the loss's relative error
// and the reference loss.
static inline void fx_check_bf16(TestCounts *tc, Backend *be, const SafeTensors *st, const char *fixture,
                                 const float *dev_logits, int B, int K, double loss, double *logits_err,
                                 double *loss_err, float *ref_loss) {
    float ref_logits[64];
    T_CHECK(tc, (size_t)B * K <= 64, "logits buffer");
    st_to_f32(need(st, "logits"), ref_logits);
    st_to_f32(need(st, "loss"), ref_loss);
    float *logits = to_host(be, dev_logits, (size_t)B * K);
    *logits_err = t_rel_to_max(logits, ref_logits, (size_t)B * K);
    *loss_err = fabs(loss - *ref_loss) / fabs(*ref_loss);
    T_CHECK(tc, *logits_err <= BF16_LOGITS_TOL, "%s bf16 logits: max err %.3g of the largest logit (limit 3e-2)",
            fixture, *logits_err);
    T_CHECK(tc, *loss_err <= 2e-2, "%s bf16 loss %.7f vs HF %.7f: rel err %.3g (limit 2e-2)", fixture, loss,
            (double)*ref_loss, *loss_err);
    free(logits);
}

// ------------------------------------------------------------------------------ gradient checks of a model

// Central finite difference (loss(p + eps) - loss(p - eps)) / 2 eps of loss(ctx, key) with respect to the
// float parameter *p (host memory; restored).
static inline double fd_param(double (*loss)(void *ctx, uint64_t key), void *ctx, uint64_t key, float *p, float eps) {
    float keep = *p;
    *p = keep + eps;
    double lp = loss(ctx, key);
    *p = keep - eps;
    double lm = loss(ctx, key);
    *p = keep;
    return (lp - lm) / (2.0 * eps);
}

// ------------------------------------------------------------------------------ op tests (double references)

#define FD_EPS 1e-6  // finite-difference step of the double references

typedef struct {
    uint64_t s;
} Rand;

static inline double rnd(Rand *r) {  // [0, 1)
    r->s = r->s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(r->s >> 11) * (1.0 / 9007199254740992.0);
}

static inline void fill(float *x, size_t n, double lo, double hi, Rand *r) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * rnd(r));
}

static inline float *falloc(Backend *be, size_t n) { return (float *)be->alloc(be, n * sizeof(float), "test tensor"); }
static inline double *dalloc(size_t n) { return (double *)xcalloc(n ? n : 1, sizeof(double), "test reference"); }

static inline double *to_d(const float *x, size_t n) {
    double *d = dalloc(n);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

static inline void fill_nan(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

// The key-padding mask [B, T] of the attention tests (1 = real): sequence 0 right-padded, 1 left- and
// right-padded (its first queries see no key), 2 all padding, the others unpadded. Free with free().
static inline int32_t *fx_attention_mask(int B, int T) {
    int32_t *m = (int32_t *)xmalloc((size_t)B * T * sizeof(int32_t), "mask");
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int v = 1;
            if (b == 0) v = t < T - (T / 6 > 0 ? T / 6 : 1);
            else if (b == 1) v = t >= (T / 4 > 0 ? T / 4 : 1) && t < T - 2;
            else if (b == 2) v = 0;
            m[(size_t)b * T + t] = v;
        }
    return m;
}

// Nearest bf16 (8 significant bits) to x, ties to the even significand, in double arithmetic.
// Finite normal x; a result past the largest float becomes inf when converted back.
static inline float bf16_ref(float xf) {
    double x = xf;
    if (x == 0.0 || isnan(x)) return xf;
    int e;
    frexp(fabs(x), &e);                // |x| = m 2^e, m in [0.5, 1): floor(log2|x|) = e - 1
    double ulp = ldexp(1.0, e - 1 - 7);
    double lo = floor(x / ulp) * ulp, hi = lo + ulp;  // exact: scaling by a power of two
    double dl = x - lo, dh = hi - x;
    double r = dl < dh ? lo : dh < dl ? hi : (fmod(lo / ulp, 2.0) == 0.0 ? lo : hi);
    return (float)r;
}

// One check: max_i |got_i - ref_i| / (|ref_i| + floor_frac * max_j |ref_j|) <= rtol (a NaN is the worst);
// prints the measure with `what` padded to `width`. Returns the measure.
static inline double check_close_ref(TestCounts *tc, const float *got, const double *ref, size_t n, double rtol,
                                     double floor_frac, const char *what, int width) {
    double mx = 0.0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(ref[i]));
    double atol = floor_frac * mx + 1e-30, worst = 0.0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]) / (fabs(ref[i]) + atol);
        if (!(e <= worst)) {  // NaN becomes the worst
            worst = e;
            w = i;
        }
    }
    T_CHECK(tc, worst <= rtol, "%s: max rel err %.3g > %.3g at [%zu] (%.9g vs %.9g)", what, worst, rtol, w,
            n ? (double)got[w] : 0.0, n ? ref[w] : 0.0);
    printf("  %-*s max rel err %.2e (tol %.0e)\n", width, what, worst, rtol);
    return worst;
}

// One check: got == want element by element (NaN equals NaN).
static inline void check_exact(TestCounts *tc, const float *got, const float *want, size_t n, const char *what) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (!(got[i] == want[i]) && !(isnan(got[i]) && isnan(want[i]))) {
            if (!bad) first = i;
            bad++;
        }
    T_CHECK(tc, bad == 0, "%s: %zu of %zu elements differ, first [%zu] %.9g vs %.9g", what, bad, n, first,
            n ? (double)got[first] : 0.0, n ? (double)want[first] : 0.0);
}

// central finite differences (step FD_EPS) of a scalar double function of x at the coordinates i = lo,
// lo + stride, lo + 2 stride, ... below hi (x is restored); the other entries of grad are left alone
typedef double (*LossFn)(void *ctx, const double *x);
static inline void fd_grad_strided(LossFn f, void *ctx, double *x, size_t lo, size_t hi, size_t stride,
                                   double *grad) {
    for (size_t i = lo; i < hi; i += stride) {
        double x0 = x[i];
        x[i] = x0 + FD_EPS;
        double lp = f(ctx, x);
        x[i] = x0 - FD_EPS;
        double lm = f(ctx, x);
        x[i] = x0;
        grad[i] = (lp - lm) / (2.0 * FD_EPS);
    }
}

// The parent's side of a death test: reads the child's output from fd until it closes (at most cap - 1
// bytes into buf, NUL-terminated), closes fd, waits for pid and returns its wait status.
static inline int fx_child_output(int fd, pid_t pid, char *buf, size_t cap) {
    size_t len = 0;
    ssize_t r;
    while (len < cap - 1 && (r = read(fd, buf + len, cap - 1 - len)) > 0) len += (size_t)r;
    buf[len] = 0;
    close(fd);
    int st = 0;
    waitpid(pid, &st, 0);
    return st;
}

// Runs fn(ctx) in a child process and expects it to die (exit 1) with `needle` in stderr.
static inline void expect_death(TestCounts *tc, void (*fn)(void *), void *ctx, const char *needle, const char *what) {
    int fds[2];
    if (pipe(fds) != 0) {
        T_CHECK(tc, 0, "%s: pipe failed", what);
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        alarm(30);
        fn(ctx);
        _exit(0);  // survived: the test fails
    }
    close(fds[1]);
    char buf[4096];
    int st = fx_child_output(fds[0], pid, buf, sizeof buf);
    T_CHECK(tc, WIFEXITED(st) && WEXITSTATUS(st) == 1 && strstr(buf, needle),
            "%s: expected death with '%s', got status %d, stderr '%s'", what, needle, st, buf);
}

#endif
