#!/usr/bin/env python3
"""Build the random tiny models (Llama-3, BERT, DeBERTa-v3 and a DeBERTa-v2 variant) used by the tests.

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

Encoders (see tests/fixtures/README.md for the full description)
    tiny-bert           BertModel (no "bert." prefix: the layout of sentence-transformers
                        checkpoints such as all-MiniLM-L6-v2), pooler included.
    tiny-deberta        DeBERTa-v3 layout (relative attention, 256 log buckets,
                        max_relative_positions -1 -> 512, share_att_key, p2c|c2p,
                        norm_rel_ebd layer_norm, no absolute positions, no token types).
    tiny-deberta-rel    DeBERTa-v2 variant: 4 buckets, max_relative_positions 10 (T=12 hits
                        the log buckets and the clamp), share_att_key false (pos_query_proj),
                        p2c only, absolute positions, 2 token types, norm_rel_ebd none.
    Both DeBERTa dirs hold DebertaV2ForSequenceClassification's state dict minus the
    classifier: "deberta.*" plus the (frozen, random) ContextPooler as "pooler.dense.*".
    No dir holds a classifier: gen_reference.py records it as init.classifier.*.

Command (from the repository root)
    python3 tools/make_tiny_model.py                 # writes all four dirs under tests/fixtures
    python3 tools/make_tiny_model.py --model bert    # one of llama|bert|deberta|deberta-rel|all
    python3 tools/make_tiny_model.py --out DIR --seed 1234          # tiny-llama only, into DIR
    python3 tools/make_tiny_model.py --model all --out-root DIR     # all four, under DIR

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
FIXTURES = os.path.join(REPO, "tests", "fixtures")
DEFAULT_OUT = os.path.join(FIXTURES, "tiny-llama")
DEFAULT_SEED = 1234
# seeds and directory names of the encoder models
ENCODERS = {"bert": ("tiny-bert", 4321), "deberta": ("tiny-deberta", 5432), "deberta-rel": ("tiny-deberta-rel", 6543)}

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


def make_llama(args):
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


ENC_HIDDEN = 32
ENC_VOCAB = 200
ENC_INIT_RANGE = 0.1


def encoder_config(kind):
    """The transformers config of encoder `kind` (bert | deberta | deberta-rel)."""
    from transformers import BertConfig, DebertaV2Config

    common = dict(vocab_size=ENC_VOCAB, hidden_size=ENC_HIDDEN, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=64, hidden_act="gelu", hidden_dropout_prob=0.1,
                  attention_probs_dropout_prob=0.1, initializer_range=ENC_INIT_RANGE, pad_token_id=0)
    if kind == "bert":
        return BertConfig(max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12, **common)
    if kind == "deberta":  # microsoft/deberta-v3-* layout
        return DebertaV2Config(max_position_embeddings=512, type_vocab_size=0, layer_norm_eps=1e-7,
                               relative_attention=True, position_buckets=256, max_relative_positions=-1,
                               share_att_key=True, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                               position_biased_input=False, pooler_hidden_size=ENC_HIDDEN, pooler_dropout=0,
                               pooler_hidden_act="gelu", **common)
    if kind == "deberta-rel":  # the other branches of DebertaV2
        return DebertaV2Config(max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-7,
                               relative_attention=True, position_buckets=4, max_relative_positions=10,
                               share_att_key=False, pos_att_type=["p2c"], norm_rel_ebd="none",
                               position_biased_input=True, pooler_hidden_size=ENC_HIDDEN, pooler_dropout=0,
                               pooler_hidden_act="gelu", **common)
    raise ValueError(kind)


def make_encoder(kind, out, seed):
    """Writes tiny-<kind>: random weights (seeded), every LayerNorm weight 1 + 0.1*randn and every
    bias (Linear and LayerNorm) 0.05*randn, so a C implementation that drops a bias or a norm
    parameter fails. BERT is saved as BertModel (keys without "bert."), DeBERTa as
    DebertaV2ForSequenceClassification minus "classifier.*" (keys "deberta.*" and "pooler.*")."""
    from safetensors.torch import load_file, save_file
    from transformers import BertModel, DebertaV2ForSequenceClassification

    config = encoder_config(kind)
    torch.manual_seed(seed)
    model = (BertModel(config, add_pooling_layer=True) if kind == "bert"
             else DebertaV2ForSequenceClassification(config)).to(torch.float32)
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    n_ln = 0
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.05 * torch.randn(mod.bias.shape, generator=g))
                n_ln += 1
            elif isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.copy_(0.05 * torch.randn(mod.bias.shape, generator=g))
    want_ln = 2 * 4 + 1 + (1 if kind == "deberta" else 0)  # + DeBERTa's rel_embeddings LayerNorm
    assert n_ln == want_ln, (kind, n_ln)
    if config.pad_token_id is not None:  # keep HF's padding_idx row at zero
        emb = model.embeddings.word_embeddings if kind == "bert" else model.deberta.embeddings.word_embeddings
        assert float(emb.weight.detach()[config.pad_token_id].abs().max()) == 0.0

    g2 = torch.Generator().manual_seed(seed + 2)
    ids = torch.randint(3, ENC_VOCAB, (4, 12), generator=g2)
    with torch.no_grad():
        if kind == "bert":
            h = model(input_ids=ids, attention_mask=torch.ones_like(ids)).pooler_output
        else:
            h = model.pooler(model.deberta(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state)
    print(f"[{kind}] pooled output on a random batch: std {h.std().item():.4f}  max|.| {h.abs().max().item():.4f}")
    assert 0.05 < h.std().item() < 10.0

    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    st = os.path.join(out, "model.safetensors")
    if kind != "bert":
        # drop the classifier: like a real checkpoint, the dir has no head (the fixtures hold its init)
        sd = load_file(st)
        with open(st, "rb") as f:
            import struct
            n = struct.unpack("<Q", f.read(8))[0]
            meta = json.loads(f.read(n)).get("__metadata__")
        drop = [k for k in sd if k.startswith("classifier.")]
        assert sorted(drop) == ["classifier.bias", "classifier.weight"], drop
        for k in drop:
            del sd[k]
        save_file(sd, st, metadata=meta)
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
        assert cfg["architectures"] == ["DebertaV2ForSequenceClassification"], cfg["architectures"]
    print(f"wrote {out}: " + ", ".join(
        f"{fn} ({os.path.getsize(os.path.join(out, fn))} bytes)" for fn in sorted(os.listdir(out))))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["llama", "bert", "deberta", "deberta-rel", "all"], default=None,
                    help="which model (default: all, or llama when --out is given)")
    ap.add_argument("--out", default=None, help="output directory of a single model (default tests/fixtures/tiny-<model>)")
    ap.add_argument("--out-root", default=FIXTURES, help="parent directory of the model dirs (default tests/fixtures)")
    ap.add_argument("--seed", type=int, default=None, help="seed of a single model (default: that model's)")
    args = ap.parse_args(argv)
    model = args.model or ("llama" if args.out else "all")
    if model == "all" and (args.out or args.seed is not None):
        ap.error("--out / --seed need a single --model")

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    kinds = ["llama", "bert", "deberta", "deberta-rel"] if model == "all" else [model]
    for kind in kinds:
        if kind == "llama":
            out = args.out or os.path.join(args.out_root, "tiny-llama")
            make_llama(argparse.Namespace(out=out, seed=DEFAULT_SEED if args.seed is None else args.seed))
        else:
            name, seed = ENCODERS[kind]
            make_encoder(kind, args.out or os.path.join(args.out_root, name), seed if args.seed is None else args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
