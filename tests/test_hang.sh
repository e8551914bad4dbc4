#!/usr/bin/env bash
# test_hang.sh: a rank that stops making progress ends the job instead of holding it until its time limit
# (watchdog.h), and the job resumes from its newest checkpoint — with MPI, outside Slurm:
#   - two ranks train with run.watchdog_minutes = 0.05 (3 s) and a checkpoint every 20 steps; once one is
#     written, one rank is frozen (SIGSTOP: a hung rank, as a stuck GPU or filesystem leaves it). The other
#     waits for it in a collective until its watchdog ends it: exit 86, after about the timeout (at least 2.5 s:
#     its last beat may precede the freeze by a step), with a message naming the key and what it was doing
#   - a resubmitted run resumes from the newest checkpoint and finishes
# Usage (ctest): test_hang.sh SOURCE_ROOT BUILD_DIR ACTLORA_BINARY
set -uo pipefail
root="$1" bin="$3"
MPIEXEC="${MPIEXEC:-mpirun}"
fails=0 passes=0
ok() { passes=$((passes + 1)); echo "ok: $*"; }
bad() { fails=$((fails + 1)); echo "FAIL: $*"; }
work="$(mktemp -d)"
frozen=""
trap '[ -n "$frozen" ] && kill -KILL "$frozen" 2>/dev/null; rm -rf "$work"' EXIT
C=(--config "$root/configs/tiny_cpu.cfg" --set model.path="$root/tests/fixtures/tiny-llama" --set run.log_every=1000
   --set checkpoint.every_steps=20 --set run.dir="$work/run")

# 1. freeze a rank once a checkpoint exists
"$MPIEXEC" --allow-run-as-root --oversubscribe -np 2 "$bin" "${C[@]}" --set train.max_steps=1000000 \
  --set run.watchdog_minutes=0.05 > "$work/hang.out" 2>&1 &
mpi=$!
for _ in $(seq 600); do
  ls "$work/run/checkpoints/"*.h5 > /dev/null 2>&1 && break
  sleep 0.1
done
frozen=$(pgrep -P "$mpi" | tail -1)
if [ -z "$frozen" ] || ! ls "$work/run/checkpoints/"*.h5 > /dev/null 2>&1; then
  bad "no checkpoint or no rank to freeze (pid '${frozen}')"; kill -KILL "$mpi" 2>/dev/null; tail -5 "$work/hang.out"
  echo "test_hang: $passes passed, $fails failed"; exit 1
fi
kill -STOP "$frozen"
t0=$(date +%s.%N)
for _ in $(seq 1200); do kill -0 "$mpi" 2>/dev/null || break; sleep 0.1; done  # at most 120 s
kill -KILL "$mpi" 2>/dev/null
wait "$mpi"; rc=$?
t1=$(date +%s.%N)
kill -KILL "$frozen" 2>/dev/null
waited=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
msg=$(grep -m1 "no progress for" "$work/hang.out")
if [ "$rc" -eq 86 ] && [ -n "$msg" ] && awk -v w="$waited" 'BEGIN { exit !(w >= 2.5 && w < 100) }'; then
  ok "a frozen rank: the job ended after $waited s with exit 86: ${msg:0:200}"
else bad "a frozen rank: exit $rc after $waited s, message '${msg:0:200}'"; tail -5 "$work/hang.out"; fi
echo "$msg" | grep -q "run.watchdog_minutes = 0.05" && echo "$msg" | grep -Eq "since it began: (step [0-9]+|the )" &&
  ok "the message names the key and what the rank was doing" || bad "the message lacks the key or the phase: $msg"

# 2. resubmitted: resumes from the newest checkpoint and finishes
last=$(ls "$work/run/checkpoints/" | sed -n 's/^ckpt-\([0-9]*\)-[0-9]*\.h5$/\1/p' | sort -n | tail -1)
"$MPIEXEC" --allow-run-as-root --oversubscribe -np 2 "$bin" "${C[@]}" --set train.max_steps=$(( ${last:-0} + 10 )) \
  > "$work/again.out" 2>&1; rc=$?
if [ $rc -eq 0 ] && grep -q "^resume  from" "$work/again.out" && grep -q "^summary" "$work/again.out"; then
  ok "resubmitted: $(grep -m1 '^resume  from' "$work/again.out" | cut -c1-120), finished at step $((last + 10))"
else bad "resubmitted run: exit $rc"; tail -5 "$work/again.out"; fi
echo "test_hang: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
