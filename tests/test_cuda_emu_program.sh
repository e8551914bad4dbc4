#!/usr/bin/env bash
# test_cuda_emu_program.sh: the program with run.device = "cuda" on the CUDA emulator (actlora-mpi-emu,
# docs/emulator.md): main.c's CUDA wiring, the device-resident training step, the
# NCCL path (one rank) and device checkpoints, on the tiny Llama, against the CPU backend.
#   - fp32 weights, layers "auto": calibration on the device selects the CPU run's layers, and the losses of
#     10 steps follow the CPU run's within 1e-4 (relative)
#   - bf16 weights (the device default): two runs give identical losses and adapters
#   - stopped mid accumulation (ACTLORA_FAULT_STOP_AT) and resumed: the adapter is bit-identical
#   - lora.fuse + bf16 activations + LoRA dropout: finite losses within 2% of the plain bf16 run; with the
#     fused attention on top (model.attention = "fused"): within 1% of that run
#   - with the race checker (actlora-mpi-emu-race, docs/emulator.md "Races"): the fp32 "auto" run and the lora.fuse
#     + bf16 activations + dropout runs (gemm and fused attention) find no race and give the same losses as
#     without it, bit for bit
#   - two ranks on two emulated devices (NCCL over MPI), fp32: losses within 1e-4 of two CPU ranks, the same
#     layers; two ranks on one device: refused, naming the devices
#   - an NCCL failure in the 5th all-reduce (ACTLORA_CUDA_EMU_NCCL_ERROR_AT): exit 86 with NCCL's error on
#     both ranks instead of a wait forever; resubmitted, it resumes and ends bit-identical to the two-rank run
#   - per-task GPUs (each rank sees only its own: ACTLORA_CUDA_EMU_VISIBLE per rank): the same losses bit for
#     bit, each rank on a different GPU (by uuid); two tasks given the same GPU: refused before the run starts
#   - the memory plan (log.jsonl "memory_plan") against the peak of what the emulated device handed out
#     (ACTLORA_CUDA_EMU_PEAK_FILE), Llama in five configurations and a DeBERTa: the plan is never below the
#     peak and above it by at most 10% of the bytes besides the cuBLAS workspace, + 64 KiB; --plan-memory
#     (no device, nothing loaded) plans the same bytes as the run
# Usage (ctest): test_cuda_emu_program.sh SOURCE_ROOT BUILD_DIR ACTLORA_BINARY (the emulator's binary is
# BUILD_DIR/actlora-mpi-emu)
set -uo pipefail
root="$1" build="$2"
emu="$build/actlora-mpi-emu" cpu="$3"
[ -x "$emu" ] || { echo "SKIP: $emu not built (configure with -DACTLORA_CUDA_EMU=ON, x86-64)"; exit 77; }
MPIEXEC="${MPIEXEC:-mpirun}"
fails=0 passes=0
ok() { passes=$((passes + 1)); echo "ok: $*"; }
bad() { fails=$((fails + 1)); echo "FAIL: $*"; }
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
run() { local np=$1 bin=$2; shift 2; "$MPIEXEC" --allow-run-as-root --oversubscribe -np "$np" "$bin" "$@"; }
. "$root/tests/lib/run_lib.sh"  # losses, sha, loss_diff
selected() { sed -n 's/.*"selected":\(\[[^]]*\]\).*/\1/p' "$1/log.jsonl" 2>/dev/null | head -1; }
T=(--config "$root/configs/tiny_cpu.cfg" --set model.path="$root/tests/fixtures/tiny-llama" --set run.log_every=1
   --set train.max_steps=10 --set train.warmup_steps=2 --set train.micro_batch=8 --set train.grad_accum=2
   --set lora.dropout=0.1)

# 1. fp32: the emulated device against the CPU backend
A=(--set lora.layers=auto)
run 1 "$emu" "${T[@]}" "${A[@]}" --set run.device=cuda --set model.dtype=fp32 --set run.dir="$work/emu32" > "$work/emu32.out" 2>&1; r1=$?
run 1 "$cpu" "${T[@]}" "${A[@]}" --set run.device=cpu --set model.dtype=fp32 --set run.dir="$work/cpu32" > "$work/cpu32.out" 2>&1; r2=$?
if [ $r1 -ne 0 ] || [ $r2 -ne 0 ]; then bad "fp32 runs exited $r1 (emulator) / $r2 (cpu)"; tail -5 "$work/emu32.out"
elif ! grep -q "backend cuda" "$work/emu32.out"; then bad "the emulator's run did not use the CUDA backend"; head -20 "$work/emu32.out"
else
  read -r _ w n < <(loss_diff "$(losses "$work/cpu32")" "$(losses "$work/emu32")")
  if [ "${n:-0}" -eq 10 ] && awk -v w="$w" 'BEGIN { exit !(w <= 1e-4) }'; then ok "fp32 losses: emulated device vs cpu, worst rel diff $w over $n steps"
  else bad "fp32 losses: emulated device vs cpu, worst rel diff $w over ${n:-0} steps (tol 1e-4)"; fi
  se=$(selected "$work/emu32") sc=$(selected "$work/cpu32")
  [ -n "$se" ] && [ "$se" = "$sc" ] && ok "calibration on the device selects the CPU's layers: $se" ||
    bad "calibration selected ${se:-nothing} on the device, ${sc:-nothing} on the CPU"
fi

# 2. bf16 (the device default): deterministic
for x in a b; do
  run 1 "$emu" "${T[@]}" --set run.device=cuda --set run.dir="$work/bf_$x" > "$work/bf_$x.out" 2>&1 || bad "bf16 run $x failed"
done
la=$(losses "$work/bf_a")
if grep -q "weights bf16" "$work/bf_a.out" && [ -n "$la" ] && [ "$la" = "$(losses "$work/bf_b")" ] &&
   [ -n "$(sha "$work/bf_a")" ] && [ "$(sha "$work/bf_a")" = "$(sha "$work/bf_b")" ]; then
  ok "bf16 weights: two runs, identical losses and adapters"
else bad "bf16 runs differ (or did not use bf16 weights)"; fi

# 3. stopped mid accumulation and resumed: bit-identical to the uninterrupted run (bf_a)
ACTLORA_FAULT_STOP_AT=4.1 run 1 "$emu" "${T[@]}" --set run.device=cuda --set run.dir="$work/res" > "$work/stop.out" 2>&1; rs=$?
run 1 "$emu" "${T[@]}" --set run.device=cuda --set run.dir="$work/res" > "$work/again.out" 2>&1; ra=$?
if [ $rs -ne 85 ]; then bad "the stopped run exited $rs, expected 85"; tail -5 "$work/stop.out"
elif [ $ra -ne 0 ] || ! grep -q "^resume  from" "$work/again.out"; then bad "the resumed run exited $ra or did not resume"
elif [ "$(sha "$work/res")" = "$(sha "$work/bf_a")" ]; then ok "stop at 4.1 + resume: adapter bit-identical"
else bad "stop at 4.1 + resume: adapter differs from the uninterrupted run"; fi

# 4. the production switches: lora.fuse, bf16 activations, LoRA dropout drawn inside the products
run 1 "$emu" "${T[@]}" --set run.device=cuda --set lora.fuse=true --set model.act_dtype=bf16 --set run.dir="$work/prod" \
  > "$work/prod.out" 2>&1 || bad "lora.fuse + bf16 activations run failed"
read -r _ w n < <(loss_diff "$la" "$(losses "$work/prod")")
if [ "${n:-0}" -eq 10 ] && awk -v w="$w" 'BEGIN { exit !(w <= 0.02) }'; then ok "lora.fuse + bf16 activations: worst rel diff $w vs the plain bf16 run"
else bad "lora.fuse + bf16 activations: worst rel diff $w over ${n:-0} steps (tol 0.02)"; fi

# 4a. the fused attention (model.attention = "fused", WMMA kernels): within 1% of the gemm attention's run
run 1 "$emu" "${T[@]}" --set run.device=cuda --set lora.fuse=true --set model.act_dtype=bf16 --set model.attention=fused \
  --set run.dir="$work/prodfa" > "$work/prodfa.out" 2>&1 || bad "fused attention run failed"
read -r _ w n < <(loss_diff "$(losses "$work/prod")" "$(losses "$work/prodfa")")
if [ "${n:-0}" -eq 10 ] && awk -v w="$w" 'BEGIN { exit !(w <= 0.01) }' && grep -q "fused attention" "$work/prodfa.out"; then
  ok "fused attention: worst rel diff $w vs the gemm attention's run"
else bad "fused attention: worst rel diff $w over ${n:-0} steps (tol 0.01), or the run did not say it"; fi

# 4b. the same kernels under the race checker: no race, and the very same losses
race="$build/actlora-mpi-emu-race"
if [ ! -x "$race" ]; then echo "note: $race not built (the race checker needs GCC): 4b skipped"
else
  for c in emu32 prod prodfa; do
    case $c in
      emu32) args=("${A[@]}" --set model.dtype=fp32) ;;
      prod) args=(--set lora.fuse=true --set model.act_dtype=bf16) ;;
      prodfa) args=(--set lora.fuse=true --set model.act_dtype=bf16 --set model.attention=fused) ;;
    esac
    run 1 "$race" "${T[@]}" "${args[@]}" --set run.device=cuda --set run.dir="$work/race_$c" > "$work/race_$c.out" 2>&1; r=$?
    lr=$(losses "$work/race_$c")
    if [ $r -eq 0 ] && ! grep -q "cuda_emu: " "$work/race_$c.out" && [ -n "$lr" ] && [ "$lr" = "$(losses "$work/$c")" ]; then
      ok "race checker, $c run: no race, the same losses bit for bit"
    else bad "race checker, $c run: exit $r, losses ${lr:-none}"; grep -A4 -m1 "cuda_emu: " "$work/race_$c.out"; tail -3 "$work/race_$c.out"; fi
  done
fi

# 5. two ranks on two emulated devices: the NCCL all-reduce of the flat gradient (MPI underneath) against two
#    CPU ranks (MPI), fp32
ACTLORA_CUDA_EMU_DEVICES=2 run 2 "$emu" "${T[@]}" "${A[@]}" --set run.device=cuda --set model.dtype=fp32 \
  --set run.dir="$work/emu2" > "$work/emu2.out" 2>&1; r1=$?
run 2 "$cpu" "${T[@]}" "${A[@]}" --set run.device=cpu --set model.dtype=fp32 --set run.dir="$work/cpu2" > "$work/cpu2.out" 2>&1; r2=$?
if [ $r1 -ne 0 ] || [ $r2 -ne 0 ]; then bad "two-rank fp32 runs exited $r1 (emulator) / $r2 (cpu)"; tail -5 "$work/emu2.out"
else
  read -r _ w n < <(loss_diff "$(losses "$work/cpu2")" "$(losses "$work/emu2")")
  se=$(selected "$work/emu2") sc=$(selected "$work/cpu2")
  if [ "${n:-0}" -eq 10 ] && awk -v w="$w" 'BEGIN { exit !(w <= 1e-4) }' && [ -n "$se" ] && [ "$se" = "$sc" ]; then
    ok "two ranks, two emulated devices (NCCL): worst rel diff $w vs two CPU ranks over $n steps, layers $se"
  else bad "two ranks, two emulated devices: worst rel diff $w over ${n:-0} steps (tol 1e-4), layers ${se:-none} vs ${sc:-none}"; fi
fi

# 5b. an NCCL failure mid-run (ACTLORA_CUDA_EMU_NCCL_ERROR_AT: the 5th all-reduce never completes and the
#     communicator reports ncclRemoteError): both ranks end with 86 and NCCL's message, instead of waiting
#     forever; the resubmitted run resumes from the step-3 checkpoint and ends bit-identical to 5's run
ACTLORA_CUDA_EMU_DEVICES=2 ACTLORA_CUDA_EMU_NCCL_ERROR_AT=5 run 2 "$emu" "${T[@]}" "${A[@]}" --set run.device=cuda \
  --set model.dtype=fp32 --set checkpoint.every_steps=3 --set run.dir="$work/ncclerr" > "$work/ncclerr.out" 2>&1; r1=$?
ACTLORA_CUDA_EMU_DEVICES=2 run 2 "$emu" "${T[@]}" "${A[@]}" --set run.device=cuda --set model.dtype=fp32 \
  --set checkpoint.every_steps=3 --set run.dir="$work/ncclerr" > "$work/ncclerr2.out" 2>&1; r2=$?
if [ $r1 -eq 86 ] && grep -q 'NCCL reported "remote process exited or there was a network error"' "$work/ncclerr.out" &&
   [ $r2 -eq 0 ] && grep -q "^resume  from .*(step 3," "$work/ncclerr2.out" && [ -n "$(sha "$work/emu2")" ] &&
   [ "$(sha "$work/ncclerr")" = "$(sha "$work/emu2")" ]; then
  ok "NCCL failure at the 5th all-reduce: exit 86 with NCCL's error; resumed at step 3, adapter bit-identical to 5's"
else bad "NCCL failure: exit $r1 (want 86), resumed run exit $r2"; grep -m2 "error" "$work/ncclerr.out"; tail -3 "$work/ncclerr2.out"; fi

# 6. two ranks, one (emulated) device: a clear refusal
run 2 "$emu" "${T[@]}" --set run.device=cuda --set run.dir="$work/two" > "$work/two.out" 2>&1; r=$?
if [ $r -ne 0 ] && grep -qi "device" "$work/two.out" && grep -q "rank" "$work/two.out"; then
  ok "two ranks on one device refused: $(grep -m1 -i "device" "$work/two.out" | cut -c1-150)"
else bad "two ranks on one device: exit $r"; tail -5 "$work/two.out"; fi

# 6b. per-task GPU binding (srun --gpus-per-task=1: each rank sees only its own GPU, as device 0): the same run
#     as 5, each rank on its device 0, distinct GPUs; two tasks given the same GPU: refused on every rank
{ echo '#!/bin/sh'
  echo '# node-local rank k sees the physical device given by the k-th character of ACTLORA_CUDA_EMU_PERTASK'
  echo 'k=${OMPI_COMM_WORLD_LOCAL_RANK:-${MPI_LOCALRANKID:-0}}  # Open MPI; MPICH'
  echo 'ACTLORA_CUDA_EMU_VISIBLE=$(echo "$ACTLORA_CUDA_EMU_PERTASK" | cut -c$((k + 1)))'
  echo 'export ACTLORA_CUDA_EMU_VISIBLE'
  echo "exec \"$emu\" \"\$@\""; } > "$work/pertask.sh"
chmod +x "$work/pertask.sh"
ACTLORA_CUDA_EMU_DEVICES=2 ACTLORA_CUDA_EMU_PERTASK=10 run 2 "$work/pertask.sh" "${T[@]}" "${A[@]}" --set run.device=cuda \
  --set model.dtype=fp32 --set run.dir="$work/pertask" > "$work/pertask.out" 2>&1; r=$?
lp=$(losses "$work/pertask")
if [ $r -eq 0 ] && grep -q "rank 0 .*uses CUDA device 0 of 1 visible (uuid e37a0001)" "$work/pertask.out" &&
   grep -q "rank 1 .*uses CUDA device 0 of 1 visible (uuid e37a0000)" "$work/pertask.out" && [ -n "$lp" ] &&
   [ "$lp" = "$(losses "$work/emu2")" ]; then
  ok "per-task GPUs: each rank on its only visible device, distinct GPUs, losses bit-identical to 5's run"
else bad "per-task GPUs: exit $r, losses ${lp:-none}"; grep "^device" "$work/pertask.out"; tail -3 "$work/pertask.out"; fi
ACTLORA_CUDA_EMU_DEVICES=2 ACTLORA_CUDA_EMU_PERTASK=11 run 2 "$work/pertask.sh" "${T[@]}" --set run.device=cuda \
  --set run.dir="$work/pertask1" > "$work/pertask1.out" 2>&1; r=$?
if [ $r -ne 0 ] && grep -q "node has 2 ranks but 1 visible GPU" "$work/pertask1.out" &&
   grep -q -- "--gpus-per-task=1" "$work/pertask1.out" && [ ! -e "$work/pertask1/log.jsonl" ]; then
  ok "two tasks given the same GPU: refused before the run starts: $(grep -m1 -o "node has.*visible GPU" "$work/pertask1.out")"
else bad "two tasks given the same GPU: exit $r"; tail -3 "$work/pertask1.out"; fi

# 7. the memory plan against the emulated device's peak allocation (2 steps each)
plan_vs_peak() {  # NAME ARGS...
  local name=$1 d="$work/mem_$1"; shift
  ACTLORA_CUDA_EMU_PEAK_FILE="$d.peak" run 1 "$emu" "$@" --set run.device=cuda --set train.max_steps=2 \
    --set train.warmup_steps=0 --set run.dir="$d" > "$d.out" 2>&1 || { bad "memory plan, $name: the run failed"; return; }
  local peak plan ws
  peak=$(awk '{ print $2 }' "$d.peak" 2>/dev/null)
  plan=$(grep -h '"type":"memory_plan"' "$d/log.jsonl" | grep '"phase":"the run"' | sed -n 's/.*"total_bytes":\([0-9]*\).*/\1/p')
  ws=$(grep -h '"type":"memory_plan"' "$d/log.jsonl" | sed -n 's/.*"workspace":\([0-9]*\).*/\1/p' | head -1)
  if [ -z "$peak" ] || [ -z "$plan" ] || [ -z "$ws" ]; then bad "memory plan, $name: no peak (${peak:-?}) or plan (${plan:-?})"; return; fi
  if awk -v pk="$peak" -v pl="$plan" -v ws="$ws" 'BEGIN { exit !(pl >= pk && pl - pk <= 0.1 * (pk - ws) + 65536) }'; then
    ok "memory plan, $name: plan $plan bytes, peak $peak (+$((plan - peak)))"
  else bad "memory plan, $name: plan $plan bytes against a peak of $peak (tolerance: never below, at most 10% of $((peak - ws)) + 64 KiB above)"; fi
  # --plan-memory (no device, nothing loaded) plans the same bytes as the run did
  local po
  po=$(run 1 "$cpu" "$@" --set train.max_steps=2 --set train.warmup_steps=0 --plan-memory 16 2>&1 |
       sed -n 's/^plan    \([0-9]*\) bytes in total.*/\1/p')
  [ "$po" = "$plan" ] && ok "--plan-memory, $name: the run's $plan bytes" ||
    bad "--plan-memory, $name: ${po:-nothing} bytes, the run planned $plan"
}
plan_vs_peak llama_bf16 "${T[@]}"
plan_vs_peak llama_fp32_all "${T[@]}" --set model.dtype=fp32 --set lora.layers=all --set train.micro_batch=4
plan_vs_peak llama_fused_bf16_acts "${T[@]}" --set lora.fuse=true --set model.act_dtype=bf16 --set 'lora.layers=[3]' \
  --set train.micro_batch=64
plan_vs_peak llama_fused_all "${T[@]}" --set lora.fuse=true --set lora.layers=all
plan_vs_peak llama_att_fused "${T[@]}" --set lora.fuse=true --set model.act_dtype=bf16 --set model.attention=fused \
  --set lora.layers=all --set train.micro_batch=16
plan_vs_peak deberta_rel "${T[@]}" --set model.path="$root/tests/fixtures/tiny-deberta-rel" --set model.init=pretrained \
  --set model.num_labels=2 --set 'lora.target_modules=["query_proj","value_proj"]' --set lora.layers=all

echo "test_cuda_emu_program: $passes passed, $fails failed"
[ $fails -eq 0 ]
