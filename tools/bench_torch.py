#!/usr/bin/env python3
"""bench_torch.py: the PyTorch + PEFT side of tools/bench_cpu.sh.

Times one LoRA training step (forward + backward + AdamW) of a randomly initialised
LlamaForSequenceClassification described by a config.json, with LoRA on the top `--top` layers,
on CPU with a fixed thread count, and prints one JSON line:
  {"impl": "torch+peft", "top": N, "step_ms": median, "peak_rss_mib": ..., "trainable": ...}
Usage: python3 tools/bench_torch.py --model DIR --top 12 --batch 8 --seq 128 --threads 2 --steps 5
Needs torch, transformers and peft (tools/install-deps.sh with WITH_TORCH=1).
"""
import argparse
import json
import resource
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForSequenceClassification


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="directory with config.json")
    ap.add_argument("--top", type=int, required=True, help="adapt the top N layers")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig.from_pretrained(a.model)
    cfg.num_labels = 2
    model = LlamaForSequenceClassification(cfg).float()
    model.config.pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    L = cfg.num_hidden_layers
    lc = LoraConfig(task_type="SEQ_CLS", r=a.r, lora_alpha=2 * a.r, lora_dropout=0.0,
                    target_modules=a.targets.split(","), layers_to_transform=list(range(L - a.top, L)))
    model = get_peft_model(model, lc)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ids = torch.randint(3, cfg.vocab_size, (a.batch, a.seq))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (a.batch,))
    times = []
    for step in range(a.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step > 0:  # the first step warms allocators and caches
            times.append(time.perf_counter() - t0)
    print(json.dumps({"impl": "torch+peft", "top": a.top, "step_ms": 1000 * statistics.median(times),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "trainable": sum(p.numel() for p in params), "threads": a.threads}))


if __name__ == "__main__":
    main()
