#!/usr/bin/env bash
# bench_cpu.sh: one LoRA training step (forward + backward + AdamW) of a Llama-shaped model on
# CPU, actlora-mpi next to PyTorch + PEFT with the same threads, in one run.
#   tools/bench_cpu.sh [build-dir]          (default build/; needs torch+transformers+peft for the
#                                            PyTorch column: tools/install-deps.sh with WITH_TORCH=1)
# Environment: LAYERS (12) HIDDEN (768) INTER (2048) HEADS (12) KV_HEADS (4) VOCAB (32000)
#              SEQ (128) BATCH (8) THREADS (all cores) STEPS (6) R (8)
#              EXTRA (more --set options for our runs, e.g. EXTRA="--set lora.fuse=true")
# Prints, for LoRA on the top 1, L/2 and L layers: median step time and peak RSS of each
# implementation and the speed ratio. Random weights (model.init = "random"): shapes are what count.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
bin="$build/actlora-mpi"
[ -x "$bin" ] || { echo "bench_cpu: $bin not found: build first (tools/run-tests.sh or cmake --build build)" >&2; exit 1; }
L=${LAYERS:-12} C=${HIDDEN:-768} I=${INTER:-2048} H=${HEADS:-12} KVH=${KV_HEADS:-4} V=${VOCAB:-32000}
T=${SEQ:-128} B=${BATCH:-8} THREADS=${THREADS:-$(nproc)} STEPS=${STEPS:-6} R=${R:-8}
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
cat > "$work/config.json" <<JSON
{"model_type": "llama", "architectures": ["LlamaForSequenceClassification"], "hidden_size": $C,
 "intermediate_size": $I, "num_hidden_layers": $L, "num_attention_heads": $H, "num_key_value_heads": $KVH,
 "head_dim": $((C / H)), "vocab_size": $V, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
 "rope_theta": 500000.0, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": false}
JSON
targets='["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]'
have_torch=1
python3 -c "import torch, transformers, peft" 2>/dev/null || have_torch=0
core=$(OPENBLAS_VERBOSE=2 "$bin" --version 2>&1 | sed -n 's/^Core: //p')
echo "bench_cpu: OpenBLAS kernel ${core:-unknown} (OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}); docs/benchmarks.md"
echo "bench_cpu: Llama L=$L hidden=$C inter=$I heads=$H/$KVH seq=$T batch=$B r=$R threads=$THREADS steps=$STEPS"
printf "%-10s %14s %14s %14s %14s %10s\n" "adapters" "ours ms/step" "ours RSS MiB" "torch ms/step" "torch RSS MiB" "speedup"
for top in 1 $((L / 2)) $L; do
  layers="[$(seq -s, $((L - top)) $((L - 1)))]"
  out=$(OMP_NUM_THREADS=$THREADS "$bin" --set model.path="$work" --set model.init=random --set model.num_labels=2 --set data.source=synthetic \
        --set data.seq_len=$T --set train.micro_batch=$B --set train.max_steps=$STEPS --set lora.r=$R \
        --set lora.alpha=$((2 * R)) --set "lora.target_modules=$targets" --set "lora.layers=$layers" \
        --set run.threads=$THREADS --set run.log_every=1000000 --set run.device=cpu --set run.dir="$work/run" \
        --resume no ${EXTRA:-})
  ours_ms=$(sed -n 's/^summary | step \([0-9.]*\) ms.*/\1/p' <<<"$out")
  ours_rss=$(sed -n 's/.*peak RSS \([0-9.]*\) MiB.*/\1/p' <<<"$out")
  if [ $have_torch = 1 ]; then
    js=$(python3 "$root/tools/bench_torch.py" --model "$work" --top $top --batch $B --seq $T --threads $THREADS \
         --steps $((STEPS - 1)) --r $R)
    t_ms=$(python3 -c "import json,sys; print('%.1f' % json.loads(sys.argv[1])['step_ms'])" "$js")
    t_rss=$(python3 -c "import json,sys; print('%.1f' % json.loads(sys.argv[1])['peak_rss_mib'])" "$js")
    ratio=$(python3 -c "print('%.2fx' % ($t_ms / $ours_ms))")
  else
    t_ms="n/a"; t_rss="n/a"; ratio="n/a"
  fi
  printf "%-10s %14s %14s %14s %14s %10s\n" "top $top" "$ours_ms" "$ours_rss" "$t_ms" "$t_rss" "$ratio"
done
[ $have_torch = 1 ] || echo "bench_cpu: torch/transformers/peft not installed: PyTorch column skipped"
