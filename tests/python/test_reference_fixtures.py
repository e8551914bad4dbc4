"""Checks on the committed HF/PEFT reference fixtures in tests/fixtures.

Two kinds of test:

* Regeneration (needs torch + transformers + peft; skipped without them): runs
  ``tools/make_tiny_model.py`` and ``tools/gen_reference.py`` into a temporary
  directory and checks the results equal the committed files.  With the same
  torch/transformers/peft versions as recorded in the fixtures the check is
  bit-for-bit (two runs on one machine give identical bytes); with other versions it
  falls back to a tolerance, since kernels and library code may change.

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
MODEL_FILES = ["config.json", "model.safetensors"]


def load(name, root=FIX):
    path = os.path.join(root, name)
    with safe_open(path, "np") as f:
        meta = json.loads(f.metadata()["config"])
    return load_file(path), meta


# ----------------------------------------------------------------------------------
# numpy-only sanity checks
# ----------------------------------------------------------------------------------

def test_fixture_files_present_and_small():
    total = 0
    for n in CASES + [os.path.join("tiny-llama", m) for m in MODEL_FILES]:
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
    subprocess.run([sys.executable, os.path.join(TOOLS, "make_tiny_model.py"), "--out", str(model_dir)],
                   check=True, env=env, cwd=REPO, capture_output=True)
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


@pytest.mark.parametrize("name", CASES)
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
    for k in sorted(ref):
        a, b = ref[k], new[k]
        assert a.dtype == b.dtype and a.shape == b.shape, k
        if exact:
            assert np.array_equal(a, b), (k, float(np.max(np.abs(a.astype(np.float64) - b))))
        else:
            np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4, err_msg=k)
    if exact:
        assert same_bytes


def test_regenerated_model_matches(regenerated):
    _, meta = load(CASES[0])
    if not _same_versions(meta):
        pytest.skip(f"fixtures were made with {meta['versions']}; random init may differ in other versions")
    ref = load_file(os.path.join(FIX, "tiny-llama", "model.safetensors"))
    new = load_file(os.path.join(regenerated, "tiny-llama", "model.safetensors"))
    assert set(ref) == set(new)
    for k in ref:
        assert np.array_equal(ref[k], new[k]), k
    with open(os.path.join(FIX, "tiny-llama", "config.json")) as f:
        a = json.load(f)
    with open(os.path.join(regenerated, "tiny-llama", "config.json")) as f:
        b = json.load(f)
    a.pop("transformers_version", None), b.pop("transformers_version", None)
    assert a == b
