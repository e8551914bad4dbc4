#!/usr/bin/env python3
"""Build the random tiny Llama-3-style sequence-classification model used by the tests.

What it is
    A seeded, randomly initialised ``LlamaForSequenceClassification`` (fp32) saved with
    Hugging Face ``save_pretrained(..., safe_serialization=True)``: ``config.json`` +
    ``model.safetensors``.  It is the base model of every reference fixture that
    ``tools/gen_reference.py`` writes, and the C loader reads the same directory.

    Shape: hidden 64, intermediate 160, 4 layers, 4 query heads, 2 KV heads (GQA),
    head_dim 16, vocab 256, max_position_embeddings 128, rms_norm_eps 1e-5,
    rope_theta 500000 with llama3 rope scaling (factor 8, low_freq_factor 1,
    high_freq_factor 4, original_max_position_embeddings 64), pad/bos/eos = 0/1/2,
    untied embeddings, num_labels 3, no attention/MLP bias.

    original_max_position_embeddings is 64 (not 16): with head_dim 16 and theta
    500000 the 8 rope wavelengths are 6.3, 32.4, 167, 861, ... so with 64 the first
    frequency is in the high band (wavelen < 64/4 = 16, kept as is), the second in the
    smoothed middle band (16 <= wavelen <= 64) and the other six in the low band
    (wavelen > 64, divided by factor 8).  The script asserts all three bands are hit.

    The weights are made non-trivial: every RMSNorm weight is 1 + 0.1*randn (a C
    implementation that ignores norm weights fails), and initializer_range 0.08 makes
    the classifier logits O(1) (the script prints their magnitude).

Command (from the repository root)
    python3 tools/make_tiny_model.py                 # writes tests/fixtures/tiny-llama
    python3 tools/make_tiny_model.py --out DIR --seed 1234

Deterministic: the same seed and the same torch/transformers versions give the same
bytes in model.safetensors.
"""

import argparse
import json
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "tiny-llama")
DEFAULT_SEED = 1234

HIDDEN = 64
HEAD_DIM = 16
ROPE_THETA = 500000.0
ROPE_FACTOR = 8.0
LOW_FREQ_FACTOR = 1.0
HIGH_FREQ_FACTOR = 4.0
ORIG_MAX_POS = 64
INIT_RANGE = 0.08


def rope_bands(head_dim=HEAD_DIM, theta=ROPE_THETA, orig=ORIG_MAX_POS,
               low_ff=LOW_FREQ_FACTOR, high_ff=HIGH_FREQ_FACTOR):
    """Classify each rope frequency into the llama3 bands, as transformers does."""
    low_wl = orig / low_ff     # wavelen > low_wl  -> low band (inv_freq / factor)
    high_wl = orig / high_ff   # wavelen < high_wl -> high band (unchanged)
    out = []
    for i in range(0, head_dim, 2):
        inv = 1.0 / (theta ** (i / head_dim))
        wl = 2 * math.pi / inv
        if wl < high_wl:
            band = "high"
        elif wl > low_wl:
            band = "low"
        else:
            band = "mid"
        out.append((i // 2, wl, band))
    return out, low_wl, high_wl


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default tests/fixtures/tiny-llama)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args(argv)

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    from transformers import LlamaConfig, LlamaForSequenceClassification

    bands, low_wl, high_wl = rope_bands()
    for j, wl, band in bands:
        print(f"rope freq {j}: wavelength {wl:12.3f}  band {band}")
    present = {b for _, _, b in bands}
    assert present == {"high", "mid", "low"}, f"llama3 rope bands hit: {present}; need all three"
    # keep clear of the band edges, so float rounding cannot move a frequency across one
    for _, wl, _ in bands:
        assert abs(wl - low_wl) > 1.0 and abs(wl - high_wl) > 1.0, wl

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=HIDDEN,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HEAD_DIM,
        hidden_act="silu",
        max_position_embeddings=128,
        initializer_range=INIT_RANGE,
        rms_norm_eps=1e-5,
        use_cache=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": ROPE_THETA,
            "factor": ROPE_FACTOR,
            "low_freq_factor": LOW_FREQ_FACTOR,
            "high_freq_factor": HIGH_FREQ_FACTOR,
            "original_max_position_embeddings": ORIG_MAX_POS,
        },
        attention_bias=False,
        mlp_bias=False,
        num_labels=3,
    )

    torch.manual_seed(args.seed)
    model = LlamaForSequenceClassification(config).to(torch.float32)
    model.eval()

    # Non-trivial RMSNorm weights: 1 + 0.1*randn (seeded, in module order).
    g = torch.Generator().manual_seed(args.seed + 1)
    n_norms = 0
    with torch.no_grad():
        for name, mod in model.named_modules():
            if "RMSNorm" in type(mod).__name__:
                mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                n_norms += 1
    assert n_norms == 2 * 4 + 1, n_norms

    # Logit magnitude on a random batch (no padding).
    g2 = torch.Generator().manual_seed(args.seed + 2)
    ids = torch.randint(3, 256, (4, 12), generator=g2)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    print(f"logits on a random batch: std {logits.std().item():.4f}  max|.| {logits.abs().max().item():.4f}")
    assert 0.05 < logits.std().item() < 10.0, "logits are not O(1)"

    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    with open(os.path.join(args.out, "config.json")) as f:
        cfg = json.load(f)
    rope_key = "rope_parameters" if "rope_parameters" in cfg else ("rope_scaling" if "rope_scaling" in cfg else None)
    print(f"config.json rope entry: {rope_key} = {json.dumps(cfg.get(rope_key))}")
    print(f"wrote {args.out}: " + ", ".join(
        f"{fn} ({os.path.getsize(os.path.join(args.out, fn))} bytes)" for fn in sorted(os.listdir(args.out))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
