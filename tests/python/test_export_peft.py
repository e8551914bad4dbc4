"""The exported adapter loads in real PEFT and reproduces actlora-mpi's logits.

Llama: tests/test_export.c (ctest) writes <build>/export_case/: the adapter directory and the logits
actlora-mpi computed on the fixture batch. Here transformers + PEFT load the tiny Llama, apply the
adapter with PeftModel.from_pretrained and must give the same logits.

Encoders: the real program (<build>/actlora-mpi, one process) trains tiny-bert / tiny-deberta(-rel) for a few
steps on a small MRPC-layout task (random sentences written here, tokenized by tools/prep_glue.py with a
200-word WordLevel tokenizer with BERT's template, so pairs carry token types 0/1), evaluates the dev split
and exports <run.dir>/adapter. transformers' Bert/DebertaV2ForSequenceClassification.from_pretrained(fixture
dir, num_labels=2) + PeftModel.from_pretrained(model, adapter) must then
  * load the directory as it is (test_encoder_export_loads_in_peft_as_is);
  * put LoRA on exactly the exported modules and no others: the targets include "output.dense" without
    "attention.output.dense" and the other way round (a suffix match would hit both), on some layers only;
  * hold the exported lora_A / lora_B and classifier weight / bias bit for bit;
  * reproduce the program's dev evaluation (log.jsonl "eval" record: mean cross-entropy to 8 digits,
    accuracy and F1) from its own logits, unmerged and after merge_and_unload(). The program writes no
    per-row logits, so the dev loss (a smooth function of every row's logits) stands in for them.
Needs torch, transformers and peft (skipped otherwise) and a built program (ACTLORA_BUILD_DIR, default
build/; skipped when it has no actlora-mpi).
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("ACTLORA_BUILD_DIR", ROOT / "build"))
CASE = BUILD / "export_case"
BIN = BUILD / "actlora-mpi"
FIXTURES = ROOT / "tests" / "fixtures"


def test_peft_loads_export_and_matches_logits():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import LlamaForSequenceClassification

    if not (CASE / "reference.safetensors").exists():
        pytest.skip(f"{CASE} not found: run ctest (test_export) first")
    ref = load_file(str(CASE / "reference.safetensors"))
    base = LlamaForSequenceClassification.from_pretrained(
        str(ROOT / "tests/fixtures/tiny-llama"), num_labels=3, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, str(CASE / "adapter")).eval()
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"].long(), attention_mask=ref["attention_mask"].long()).logits
    err = (logits - ref["logits"]).abs().max().item()
    assert err < 1e-5 * max(1.0, ref["logits"].abs().max().item()), f"PEFT logits differ by {err:.3g}"
    assert ref["logits"].abs().max() > 0


# ----------------------------------------------------------------------------------------------- encoders

# HF module path (under <prefix>.encoder.layer.{i}.) of each lora.target_modules name
ENC_PATHS = {
    "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
    "query_proj": "attention.self.query_proj", "key_proj": "attention.self.key_proj",
    "value_proj": "attention.self.value_proj", "attention.output.dense": "attention.output.dense",
    "intermediate.dense": "intermediate.dense", "output.dense": "output.dense",
}

# (id, fixture dir, HF class, base_model_prefix, lora.layers, lora.target_modules)
ENC_CASES = [
    ("bert-ffn-output", "tiny-bert", "BertForSequenceClassification", "bert", "[1,3]", ["query", "output.dense"]),
    ("bert-attn-output", "tiny-bert", "BertForSequenceClassification", "bert", "[0,2]",
     ["value", "attention.output.dense", "intermediate.dense"]),
    ("deberta-v3", "tiny-deberta", "DebertaV2ForSequenceClassification", "deberta", "auto",
     ["query_proj", "key_proj", "output.dense"]),
    ("deberta-rel", "tiny-deberta-rel", "DebertaV2ForSequenceClassification", "deberta", "[1,3]",
     ["key_proj", "value_proj", "output.dense"]),
]

WORDS = [f"w{i}" for i in range(4, 200)]


def _write_task(d, seed):
    """A tiny WordLevel tokenizer over the fixtures' 200 ids ([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3) with
    BERT's pair template, and MRPC-layout train/dev TSVs of random sentence pairs with alternating labels,
    the label given by the first word (balanced and learnable: the predictions are not one class)."""
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3, **{w: i for i, w in enumerate(WORDS, start=4)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    (d / "tok").mkdir(parents=True)
    tok.save(str(d / "tok" / "tokenizer.json"))
    rng = random.Random(seed)
    (d / "MRPC").mkdir()
    for split, n in (("train", 96), ("dev", 40)):
        lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(n):
            a = rng.choices(WORDS, k=rng.randint(2, 12))
            b = rng.choices(WORDS, k=rng.randint(1, 12))
            a[0] = WORDS[rng.randrange(98) + 98 * (i % 2)]  # the label: which half of the words starts the row
            lines.append(f"{i % 2}\t{i}\t{i + 1000}\t{' '.join(a)}\t{' '.join(b)}")
        (d / "MRPC" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module", params=ENC_CASES, ids=[c[0] for c in ENC_CASES])
def enc_run(request, tmp_path_factory):
    """Prepares the task, runs actlora-mpi on it and returns the case and its run directory."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("tokenizers")
    pytest.importorskip("h5py")
    if not os.access(BIN, os.X_OK):
        pytest.skip(f"{BIN} not found: build the program first (or set ACTLORA_BUILD_DIR)")
    name, fixture, cls, prefix, layers, targets = request.param
    d = tmp_path_factory.mktemp(name)
    _write_task(d, seed=len(name))
    prep = subprocess.run([sys.executable, str(ROOT / "tools" / "prep_glue.py"), "--task", "MRPC",
                           "--glue-dir", str(d / "MRPC"), "--tokenizer", str(d / "tok" / "tokenizer.json"),
                           "--max-len", "32", "--pad-id", "0", "--out", str(d / "mrpc.h5")],
                          capture_output=True, text=True)
    assert prep.returncode == 0, prep.stdout + prep.stderr
    run = d / "run"
    sets = {
        "model.path": FIXTURES / fixture, "model.num_labels": 2, "model.init": "pretrained",
        "data.source": "glue", "data.path": d / "mrpc.h5", "data.task": "MRPC", "data.seq_len": 32,
        "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0, "lora.layers": layers,
        "lora.target_modules": ",".join(targets), "calibration.batches": 2, "calibration.fraction": 0.5,
        "train.micro_batch": 8, "train.grad_accum": 1, "train.max_steps": 24, "train.warmup_steps": 1,
        "train.lr": 2e-2, "train.epochs": 10, "train.seed": 5,
        "run.device": "cpu", "run.threads": 1, "run.log_every": 100, "run.dir": run,
    }
    cmd = [str(BIN)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout}\n{p.stderr}"
    return dict(name=name, fixture=FIXTURES / fixture, cls=cls, prefix=prefix, layers=layers, targets=targets, run=run,
                data=d / "mrpc.h5", stdout=p.stdout)


def _expected_modules(case):
    """The adapted layers (the configured list, or calibration's choice for "auto") and module names."""
    if case["layers"] == "auto":
        recs = [json.loads(line) for line in (case["run"] / "log.jsonl").read_text().splitlines()]
        layers = [r for r in recs if r["type"] == "calibration"][-1]["selected"]
        assert len(layers) == 2, layers  # fraction 0.5 of 4
    else:
        layers = [int(x) for x in re.findall(r"\d+", case["layers"])]
    return layers, {f"{case['prefix']}.encoder.layer.{l}.{ENC_PATHS[t]}" for l in layers for t in case["targets"]}


def _base_model(case):
    import torch
    import transformers

    cls = getattr(transformers, case["cls"])
    return cls.from_pretrained(str(case["fixture"]), num_labels=2, dtype=torch.float32,
                               attn_implementation="eager").eval()


def _peft_dir(case, tmp_path):
    """The adapter directory, or -- only where PEFT refuses the exported config because it pairs a regex
    target_modules with layers_to_transform (checked by test_encoder_export_loads_in_peft_as_is) -- a copy
    without layers_to_transform, so the checks below still see everything else."""
    src = case["run"] / "adapter"
    cfg = json.loads((src / "adapter_config.json").read_text())
    if not (isinstance(cfg.get("target_modules"), str) and cfg.get("layers_to_transform") is not None):
        return src
    dst = tmp_path / "adapter"
    shutil.copytree(src, dst)
    cfg["layers_to_transform"] = None
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def _dev_batch(path):
    import h5py
    import torch

    with h5py.File(path, "r") as f:
        g = f["dev"]
        tokens, types, offsets, labels = (g[k][...] for k in ("tokens", "type_ids", "offsets", "labels"))
    n, T = len(labels), int((offsets[1:] - offsets[:-1]).max())
    ids = torch.zeros(n, T, dtype=torch.long)
    tt = torch.zeros(n, T, dtype=torch.long)
    mask = torch.zeros(n, T, dtype=torch.long)
    for i in range(n):
        a, b = int(offsets[i]), int(offsets[i + 1])
        ids[i, : b - a] = torch.from_numpy(tokens[a:b].astype("int64"))
        tt[i, : b - a] = torch.from_numpy(types[a:b].astype("int64"))
        mask[i, : b - a] = 1
    assert tt.max() == 1  # pairs: the second segment has type 1
    return ids, tt, mask, torch.from_numpy(labels.astype("int64"))


def _dev_scores(model, batch):
    import torch

    ids, tt, mask, labels = batch
    with torch.no_grad():
        logits = model(input_ids=ids, token_type_ids=tt, attention_mask=mask).logits.double()
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    pred = logits.argmax(-1)
    acc = (pred == labels).double().mean().item()
    tp = ((pred == 1) & (labels == 1)).sum().item()
    fp = ((pred == 1) & (labels == 0)).sum().item()
    fn = ((pred == 0) & (labels == 1)).sum().item()
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return logits, loss, acc, f1


def test_encoder_export_loads_in_peft_as_is(enc_run):
    """PeftModel.from_pretrained on the exported directory, untouched."""
    from peft import PeftModel

    try:
        PeftModel.from_pretrained(_base_model(enc_run), str(enc_run["run"] / "adapter"))
    except ValueError as e:
        cfg = json.loads((enc_run["run"] / "adapter" / "adapter_config.json").read_text())
        pytest.fail(f"PEFT refuses the exported adapter_config.json: {e} (target_modules "
                    f"{cfg.get('target_modules')!r}, layers_to_transform {cfg.get('layers_to_transform')!r})")


def test_encoder_export_in_peft_matches_program(enc_run, tmp_path):
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    case = enc_run
    layers, want = _expected_modules(case)
    every = {f"{case['prefix']}.encoder.layer.{l}.{p}" for l in range(4) for p in set(ENC_PATHS.values())}
    assert len(layers) < 4  # some layers have no adapters
    if "output.dense" in case["targets"] and "attention.output.dense" not in case["targets"]:
        # the trap: PEFT's suffix match of "output.dense" would also adapt attention.output.dense
        suffix = {m for m in every if any(m.endswith("." + t) for t in case["targets"])
                  and int(m.split(".")[3]) in layers}
        assert {m for m in suffix - want if m.endswith(".attention.output.dense")}, suffix - want

    cfg = json.loads((case["run"] / "adapter" / "adapter_config.json").read_text())
    assert isinstance(cfg["target_modules"], str), cfg["target_modules"]
    assert {m for m in every if re.fullmatch(cfg["target_modules"], m)} == want
    exported = load_file(str(case["run"] / "adapter" / "adapter_model.safetensors"))
    pre = "base_model.model."
    assert set(exported) == {f"{pre}{m}.lora_{ab}.weight" for m in want for ab in "AB"} | \
        {f"{pre}classifier.weight", f"{pre}classifier.bias"}, sorted(exported)

    model = PeftModel.from_pretrained(_base_model(case), str(_peft_dir(case, tmp_path))).eval()
    inner = model.base_model.model
    adapted = {n for n, m in inner.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == want, f"PEFT adapted {sorted(adapted - want)} too, missed {sorted(want - adapted)}"
    mods = dict(inner.named_modules())
    for m in want:
        for ab in "AB":
            got = getattr(mods[m], f"lora_{ab}")["default"].weight
            assert torch.equal(got, exported[f"{pre}{m}.lora_{ab}.weight"]), f"{m}.lora_{ab} differs"
        assert mods[m].scaling["default"] == 2.0, mods[m].scaling  # alpha 8 / r 4
        assert exported[f"{pre}{m}.lora_B.weight"].abs().max() > 0, f"{m}.lora_B still zero: training did nothing"
    head = inner.classifier.modules_to_save["default"]
    assert torch.equal(head.weight, exported[f"{pre}classifier.weight"])
    assert torch.equal(head.bias, exported[f"{pre}classifier.bias"])

    # the program's dev evaluation, reproduced from HF's logits
    recs = [json.loads(line) for line in (case["run"] / "log.jsonl").read_text().splitlines()]
    ev = [r for r in recs if r["type"] == "eval"][-1]
    assert ev["split"] == "dev" and ev["step"] == 24, ev
    batch = _dev_batch(case["data"])
    logits, loss, acc, f1 = _dev_scores(model, batch)
    assert abs(loss - ev["loss"]) <= 2e-6 * abs(ev["loss"]) + 1e-7, f"dev loss: PEFT {loss:.8g}, program {ev['loss']:.8g}"
    assert abs(acc - ev["metrics"]["accuracy"]) < 1e-6 and abs(f1 - ev["metrics"]["f1"]) < 1e-6, (acc, f1, ev)
    # the adapters matter: the base model with the same trained head is measurably off
    base = _base_model(case)
    base.classifier.load_state_dict({"weight": exported[f"{pre}classifier.weight"], "bias": exported[f"{pre}classifier.bias"]})
    _, base_loss, _, _ = _dev_scores(base, batch)
    assert abs(base_loss - ev["loss"]) > 1e-4 * ev["loss"], (base_loss, ev["loss"])
    merged = model.merge_and_unload().eval()
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    mlogits, mloss, macc, mf1 = _dev_scores(merged, batch)
    err = (mlogits - logits).abs().max().item()
    assert err < 1e-5 * max(1.0, logits.abs().max().item()), f"merged logits differ by {err:.3g}"
    assert abs(mloss - ev["loss"]) <= 2e-6 * abs(ev["loss"]) + 1e-7, f"merged dev loss {mloss:.8g} vs {ev['loss']:.8g}"
    assert torch.equal(merged.classifier.weight, exported[f"{pre}classifier.weight"])
