#!/usr/bin/env bash
# test_slurm_actlora.sh: the real program under jobs/tiny_cpu.slurm on the local Slurm cluster
# (tools/slurm-local), on real SST-2 data: every interrupted training must end COMPLETED after
# at least one requeue, resume from a checkpoint, and export an adapter bit-identical (sha256) to
# the uninterrupted run's. Scenarios, one after the other (a 2-task job fills a 2-CPU node):
#
#   ref        uninterrupted reference run (Restarts=0): gives the expected adapter hash
#   a_usr1     scancel --signal=USR1 --batch once the run has done some steps: the batch shell
#              forwards USR1 to srun and every rank; checkpoint, exit 85, self-requeue (the path
#              of the time-limit warning --signal=B:USR1@T too)
#   b_requeue  scontrol requeue, as an administrator would: SIGTERM to everything, and srun
#              SIGKILLs the ranks, so the checkpoint on the signal is a race that is lost at
#              times (tests/slurm/test_slurm_primitives.sh): checkpoint.every_steps=1 covers it
#   c_preempt  a job in partition 'urgent' that needs the whole node preempts the run (GraceTime:
#              the ranks get SIGTERM, srun does not: checkpoint, exit 85, requeue)
#
# The run: tiny Llama (random init), 2 ranks, 60 optimizer steps of 32 x 8 micro-steps x 2 ranks
# (= the 512-row training slice per step, so train.epochs=60), dev evaluation every 2 steps and
# a checkpoint every step: ~12 s of training on a 2-core machine, 15-30 s per job with Slurm.
# The interrupts come at a step drawn from a range (printed): mid-accumulation or in an evaluation.
#
# Usage (ctest): test_slurm_actlora.sh SOURCE_ROOT BUILD_DIR ACTLORA_BINARY   (as root; ~2-3 min)
# Exit: 0 pass, 1 fail, 77 skip (no slurm-wlm/munge, not root, no ../shared/data/glue, or no
# python3 h5py/tokenizers). SL_KEEP=1 keeps the job outputs, run dirs and the cluster directory
# (also kept automatically when a check fails). Brings the cluster up and down again, unless one
# was running already (then it is left running).
set -uo pipefail    # no -e: a failed check is counted and reported, the scenarios go on
root=$(cd "${1:?usage: $0 SOURCE_ROOT BUILD_DIR ACTLORA_BINARY}" && pwd)
bin=${3:?usage: $0 SOURCE_ROOT BUILD_DIR ACTLORA_BINARY}
shared="$root/../shared"

[ -d "$shared/data/glue/SST-2" ] || { echo "SKIP: $shared/data/glue not found"; exit 77; }
python3 -c "import h5py, tokenizers" 2>/dev/null || { echo "SKIP: python3 h5py/tokenizers missing"; exit 77; }
[ -x "$bin" ] || { echo "FAIL: $bin is not an executable"; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

# shellcheck source=tests/slurm/harness.sh
. "$root/tests/slurm/harness.sh"
rc=0; sl_up || rc=$?
if ((rc == 77)); then echo "SKIP: no local Slurm (apt-get install slurm-wlm munge; run as root)"; exit 77; fi
((rc == 0)) || { echo "FAIL: slurm-up.sh failed ($rc)"; exit 1; }
trap sl_down EXIT
# ACTLORA_ARGS is word-split by the job script: no spaces in the paths it carries
[[ "$SL_OUT$root" != *[[:space:]]* ]] || { echo "FAIL: a path with spaces: '$SL_OUT' / '$root'"; SL_KEEP=1; exit 1; }

fails=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); SL_KEEP=1; }
show() { sed 's/^/   | /' "$SL_OUT/$1.out" 2>/dev/null | tail -40 || true; }
sha() { sha256sum "$SL_OUT/runs/$1/adapter/adapter_model.safetensors" 2>/dev/null | cut -d' ' -f1; }

# ---------------------------------------------------------------- data: as tests/test_resume.sh
# SL_OUT is a fresh directory of the root user that submits the jobs: the jobs can read it.
if ! python3 "$root/tools/prep_glue.py" --task SST-2 --glue-dir "$shared/data/glue/SST-2" \
       --tokenizer "$shared/data/tokenizers/llama3/tokenizer.json" --max-len 64 --pad-id 128004 \
       --limit-train 512 --out "$SL_OUT/sst2.h5" > "$SL_OUT/prep.out" 2>&1; then
  fail "prep_glue.py failed"; cat "$SL_OUT/prep.out"; exit 1
fi

STEPS=60
export ACTLORA_BIN=$bin ACTLORA_CONFIG=configs/tiny_sst2.cfg
# test_resume.sh's overrides, with more work per step, more evaluations and a checkpoint per step
ARGS="--set model.path=$root/tests/fixtures/tiny-llama3 --set data.path=$SL_OUT/sst2.h5
 --set train.max_steps=$STEPS --set train.epochs=$STEPS --set train.warmup_steps=2
 --set train.micro_batch=32 --set train.grad_accum=8 --set train.eval_every=2
 --set lora.dropout=0.1 --set run.log_every=100 --set checkpoint.every_steps=1"
ARGS=${ARGS//$'\n'/}

declare -A t_start
# submit NAME: sets $job, starts the scenario's clock; run.dir is $SL_OUT/runs/NAME.
submit() {
  t_start[$1]=$SECONDS
  job=$(ACTLORA_ARGS="$ARGS --set run.dir=$SL_OUT/runs/$1" sl_submit_tiny "$1") || job=""
  [[ -n $job ]] || fail "$1: sbatch failed"
  [[ -n $job ]]
}
# at_step NAME LO HI: wait until the run has finished a step drawn from LO..HI (its log.jsonl,
# flushed per line), so that there is progress to keep. Sets $at.
at_step() {
  at=$(($2 + RANDOM % ($3 - $2 + 1)))
  if ! { sl_wait_state "$job" RUNNING 120 &&
         sl_wait_output "$SL_OUT/runs/$1/log.jsonl" "\"type\":\"train\",\"step\":$at," 90; }; then
    fail "$1: job $job did not reach step $at (state $(sl_state "$job"))"; show "$1"; return 1
  fi
  t_int=$((SECONDS - t_start[$1]))
}

# check NAME TIMEOUT_S: COMPLETED, trained to the end, restarted, resumed from a checkpoint with
# progress, and the adapter bit-identical to the reference's.
check() {
  local name=$1 out=$SL_OUT/$1.out took restarts from h on_sig
  if ! sl_wait_done "$job" "$2"; then fail "$name: job $job did not complete"; show "$name"; return 0; fi
  took=$((SECONDS - t_start[$name])); restarts=$(sl_restarts "$job"); h=$(sha "$name")
  from=$(grep -oE '^resume  from .*\(step [0-9]+, micro [0-9]+' "$out" | sed -E 's/.*\(step ([0-9]+), micro ([0-9]+)/\1.\2/' | paste -sd, -)
  on_sig=$(grep -cE '^ckpt .*; stop signal\)' "$out")
  if ! grep -q "^summary | $STEPS steps" "$out"; then
    fail "$name: no 'summary | $STEPS steps' line: the training did not run to its end"; show "$name"
  elif ! grep -qE 'SLURM_RESTART_COUNT=[1-9]' "$out" || ! ((restarts >= 1)); then
    fail "$name: never restarted (Restarts=$restarts)"; show "$name"
  elif ! grep -qE '^resume  from .*\(step [1-9][0-9]*,' "$out"; then
    fail "$name: did not resume from a checkpoint with progress"; show "$name"
  elif [[ $h != "$REF" ]]; then
    fail "$name: adapter ${h:-missing} differs from the uninterrupted run's $REF"; show "$name"
  else
    pass "$name: COMPLETED, interrupted at step $at after ${t_int}s, restarts=$restarts," \
         "checkpoints on the signal $on_sig, resumed from step.micro $from, adapter identical; ${took}s"
  fi
}

T0=$SECONDS
# ---------------------------------------------------------------- (0) reference
REF=""
if submit ref && sl_wait_done "$job" 120; then
  REF=$(sha ref)
  if [[ -n $REF && $(sl_restarts "$job") == 0 ]] && grep -q "^summary | $STEPS steps" "$SL_OUT/ref.out"; then
    pass "ref: uninterrupted run COMPLETED, restarts=0, adapter sha256 ${REF:0:16}...; $((SECONDS - t_start[ref]))s"
  else
    fail "ref: no adapter, no summary or restarted (Restarts=$(sl_restarts "$job"))"; show ref; exit 1
  fi
else
  fail "ref: job ${job:-?} did not complete"; show ref; exit 1
fi

# ---------------------------------------------------------------- (a) USR1 to the batch shell
if submit a_usr1 && at_step a_usr1 5 35; then
  sl_signal "$job" USR1 batch || fail "a_usr1: scancel --signal=USR1 --batch failed"
  check a_usr1 180
fi

# ---------------------------------------------------------------- (b) scontrol requeue
# Slurm SIGTERMs srun too, which SIGKILLs the ranks: the checkpoint on the signal may be lost,
# the periodic one of the step before is not (the resume step may be below the interrupt step).
if submit b_requeue && at_step b_requeue 5 35; then
  sl_requeue "$job" || fail "b_requeue: scontrol requeue failed"
  check b_requeue 180
fi

# ---------------------------------------------------------------- (c) preemption
urgent=""
# The preemption takes a scheduler pass (a few seconds): interrupt early enough that the run
# cannot finish first (~0.2 s per step).
if submit c_preempt && at_step c_preempt 5 20; then
  urgent=$(sl_preempt 5) || fail "c_preempt: sbatch --partition=urgent failed"
  check c_preempt 180
  if [[ -n $urgent ]] && sl_wait_done "$urgent" 60 && grep -q 'urgent end' "$SL_OUT/urgent-$urgent.out"; then
    pass "c_preempt: the urgent job $urgent ran"
  else
    fail "c_preempt: urgent job ${urgent:-?}: $(sl_state "${urgent:-0}")"
  fi
fi

echo "total $((SECONDS - T0))s, $fails failed"
((fails == 0))
