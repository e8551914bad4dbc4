"""The exported adapter loads in real PEFT and reproduces actlora-mpi's logits.

tests/test_export.c (ctest) writes <build>/export_case/: the adapter directory and the logits
actlora-mpi computed on the fixture batch. Here transformers + PEFT load the tiny Llama, apply the
adapter with PeftModel.from_pretrained and must give the same logits. Needs torch, transformers and
peft (skipped otherwise) and a build whose ctest has run (ACTLORA_BUILD_DIR, default build/).
"""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASE = Path(os.environ.get("ACTLORA_BUILD_DIR", ROOT / "build")) / "export_case"


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
