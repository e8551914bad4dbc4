#!/usr/bin/env bash
# test_slurm_primitives.sh: the preemption contract of jobs/tiny_cpu.slurm on a real (local)
# Slurm cluster, with tests/slurm/stand_in.sh playing the program. Every interrupted run must
# end COMPLETED with the same final counter and sum as an uninterrupted run, after at least one
# requeue (SLURM_RESTART_COUNT > 0 in its log) and a resume from a checkpoint with progress.
#
#   baseline     uninterrupted run: gives the expected final line
#   a_timelimit  --time=1 --signal=B:USR1@50: the warning before the time limit (the path of
#                'scancel --signal=USR1 --batch' too: USR1 to the batch shell)
#   b_requeue    scontrol requeue, as an administrator would
#   c_preempt    a job in partition 'urgent' that needs the whole node
#   s_steps      scancel --signal=USR1: to the ranks directly
#   s_full       scancel --signal=USR1 --full: to the batch shell, srun and the ranks
#   d_scancel    plain scancel: the job must stop for good (CANCELLED, never requeued)
#   h_hung       the watchdog ends the run (exit 86) on the first run: requeued, resumes from the
#                last periodic checkpoint; with ACTLORA_HUNG_REQUEUES=0 it is not requeued
#
# Usage: tests/slurm/test_slurm_primitives.sh      (as root; about 2 minutes)
# Exit: 0 pass, 1 fail, 77 skip (no slurm-wlm/munge, or not root). SL_KEEP=1 keeps the
# outputs and the cluster directory (also kept automatically when a check fails).
# Brings the cluster up (4 CPUs advertised, so that a_timelimit runs beside the others) and
# down again, unless one was running already.
set -euo pipefail
# shellcheck source=tests/slurm/harness.sh
. "$(dirname "${BASH_SOURCE[0]}")/harness.sh"

export SLURM_LOCAL_CPUS=${SLURM_LOCAL_CPUS:-4}
rc=0; sl_up || rc=$?
if ((rc == 77)); then echo "SKIP: no local Slurm (apt-get install slurm-wlm munge; run as root)"; exit 77; fi
((rc == 0)) || { echo "FAIL: slurm-up.sh failed ($rc)"; exit 1; }
trap sl_down EXIT

export ACTLORA_BIN=$SL_ROOT/tests/slurm/stand_in.sh
STEPS=60      # every scenario counts to 60: done counter=60 sum=1830
EVERY=0       # periodic checkpoints of the stand-in (0: only on a signal)
fails=0
declare -A t_start
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); SL_KEEP=1; }
show() { sed 's/^/   | /' "$SL_OUT/$1.out" 2>/dev/null || true; }

# submit NAME TICK [SBATCH_OPTION...]: sets $job and starts the scenario's clock.
HANG=0        # stand_in.hang_at: exit 86 at that step of the first run (0: never)
submit() {
  local name=$1 tick=$2; shift 2
  t_start[$name]=$SECONDS
  job=$(ACTLORA_ARGS="--set run.dir=$SL_OUT/runs/$name --set stand_in.steps=$STEPS --set stand_in.tick=$tick --set stand_in.every=$EVERY --set stand_in.hang_at=$HANG" \
        sl_submit_tiny "$name" "$@")
}
# started NAME: the job runs (it may queue behind a_timelimit on a 2-CPU cluster), the stand-in
# has started and counted for 2 s, so that there is progress to keep.
started() { sl_wait_state "$job" RUNNING 240 && sl_wait_output "$SL_OUT/$1.out" 'rank 0/' 60 && sleep 2; }

# check_resumed NAME JOB TIMEOUT_S: COMPLETED, the baseline's final line, restarted, and
# resumed from a checkpoint with progress.
check_resumed() {
  local name=$1 job=$2 out=$SL_OUT/$1.out took restarts
  if ! sl_wait_done "$job" "$3"; then fail "$name: job $job did not complete"; show "$name"; return 0; fi
  took=$((SECONDS - t_start[$name])); restarts=$(sl_restarts "$job")
  if ! grep -qxF "stand_in: $expected" "$out"; then
    fail "$name: final line differs from the uninterrupted run's '$expected'"; show "$name"
  elif ! grep -qE 'SLURM_RESTART_COUNT=[1-9]' "$out" || ((restarts < 1)); then
    fail "$name: never restarted (Restarts=$restarts)"; show "$name"
  elif ! grep -qE 'resume  from .*\(step [1-9][0-9]*,' "$out"; then
    fail "$name: did not resume from a checkpoint with progress"; show "$name"
  else
    pass "$name: COMPLETED, $expected, restarts=$restarts, resumed at step" \
         "$(grep -oE 'resume  from .*\(step [0-9]+' "$out" | grep -oE '[0-9]+$' | paste -sd, -); ${took}s"
  fi
}

T0=$SECONDS
# ---------------------------------------------------------------- baseline
submit baseline 0.01
if sl_wait_done "$job" 60 && expected=$(grep -oE 'done counter=[0-9]+ sum=[0-9]+' "$SL_OUT/baseline.out"); then
  pass "baseline: uninterrupted run: $expected, restarts=$(sl_restarts "$job"); $((SECONDS - t_start[baseline]))s"
else
  fail "baseline: job $job"; show baseline; exit 1
fi

# ---------------------------------------------------------------- (a) time-limit warning
# slurmctld checks time limits every 30 s, so USR1@50 of a 1-minute job arrives 10-40 s into
# a run: 48 s of work is interrupted at least once (a rerun may be interrupted again).
# It runs beside the next scenarios (on a 2-CPU cluster it would simply queue first).
submit a_timelimit 0.8 --time=1 --signal=B:USR1@50; job_a=$job

# ---------------------------------------------------------------- (b) scontrol requeue
# scontrol requeue sends SIGTERM to srun too, and srun answers that by SIGKILLing the ranks:
# whether they get their checkpoint written first is a race (lost about 1 run in 6 here).
# So this stand-in also checkpoints every 4 steps, as the program does every_minutes.
EVERY=4 submit b_requeue 0.25
started b_requeue && sl_requeue "$job"
check_resumed b_requeue "$job" 120

# ---------------------------------------------------------------- other signal paths
for mode in steps full; do
  submit "s_$mode" 0.25
  started "s_$mode" && sl_signal "$job" USR1 "$mode"
  check_resumed "s_$mode" "$job" 120
done

# ---------------------------------------------------------------- (d) plain scancel stops
# Same race as (b) for the last checkpoint; what matters is that the job does not come back.
EVERY=4 submit d_scancel 0.25
started d_scancel && scancel "$job"
if sl_wait_state "$job" CANCELLED 60 && t=$((SECONDS - t_start[d_scancel])) && sleep 3 &&
   [[ $(sl_state "$job") == CANCELLED && $(sl_restarts "$job") == 0 ]]; then
  pass "d_scancel: CANCELLED and stays so ($(grep -oE 'srun exited with [0-9]+' "$SL_OUT/d_scancel.out")); ${t}s"
else
  fail "d_scancel: job $job is $(sl_state "$job") with $(sl_restarts "$job") restarts"; show d_scancel
fi

# ---------------------------------------------------------------- (h) the watchdog's exit 86
# The first run ends with 86 at step 10 (periodic checkpoints every 4): requeued, resumes at 8.
EVERY=4 HANG=10 submit h_hung 0.05
check_resumed h_hung "$job" 120
# Without requeues left (ACTLORA_HUNG_REQUEUES=0): FAILED with 86, never requeued.
ACTLORA_HUNG_REQUEUES=0 EVERY=4 HANG=10 submit h_hung_limit 0.05
if sl_wait_state "$job" FAILED 60 && sleep 3 && [[ $(sl_state "$job") == FAILED && $(sl_restarts "$job") == 0 ]] &&
   grep -q "not requeueing" "$SL_OUT/h_hung_limit.out"; then
  pass "h_hung_limit: FAILED ($(sl_field "$job" ExitCode)), not requeued; $((SECONDS - t_start[h_hung_limit]))s"
else
  fail "h_hung_limit: job $job is $(sl_state "$job") with $(sl_restarts "$job") restarts"; show h_hung_limit
fi

# ---------------------------------------------------------------- (a) result
check_resumed a_timelimit "$job_a" 240

# ---------------------------------------------------------------- (c) preemption
# Alone on the node, so that the urgent job preempts this job only. GraceTime (20 s): the
# ranks get SIGTERM, srun does not, so the checkpoint on the signal is not a race here.
submit c_preempt 0.25
started c_preempt && urgent=$(sl_preempt 5)
check_resumed c_preempt "$job" 120
if sl_wait_done "${urgent:-0}" 60 && grep -q 'urgent end' "$SL_OUT/urgent-$urgent.out"; then
  pass "c_preempt: the urgent job $urgent ran"
else
  fail "c_preempt: urgent job ${urgent:-?}: $(sl_state "${urgent:-0}")"
fi

echo "total $((SECONDS - T0))s, $fails failed"
((fails == 0))
