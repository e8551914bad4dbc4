#!/usr/bin/env bash
# test_rundir_lock.sh: one run per run.dir (runlock.h), the program end to end, with MPI, outside Slurm
# (heartbeat 0.5 s through ACTLORA_RUNLOCK_BEAT_S, the testing aid):
#   - a second run started in the run.dir of a live two-rank run is refused with exit 1 and one message (from
#     rank 0) naming the first run's pid; the first run is unaffected and removes its lock when it ends
#   - a run stopped by a signal (exit 85) removes its lock
#   - a run killed outright (SIGKILL) leaves its lock; the next run on this host takes it over at once (the pid
#     is gone), resumes from the newest checkpoint and finishes
#   - a run whose lock another run's replaced (one that judged it dead) stops with exit 1 at its next step
#     boundary, naming that run, and leaves its lock alone
# Usage (ctest): test_rundir_lock.sh SOURCE_ROOT BUILD_DIR ACTLORA_BINARY
set -uo pipefail
root="$1" bin="$3"
MPIEXEC="${MPIEXEC:-mpirun}"
export ACTLORA_RUNLOCK_BEAT_S=0.5
fails=0 passes=0
ok() { passes=$((passes + 1)); echo "ok: $*"; }
bad() { fails=$((fails + 1)); echo "FAIL: $*"; }
work="$(mktemp -d)"
first=""
trap '[ -n "$first" ] && kill -KILL "$first" 2>/dev/null; rm -rf "$work"' EXIT
C=(--config "$root/configs/tiny_cpu.cfg" --set model.path="$root/tests/fixtures/tiny-llama" --set run.log_every=1000
   --set checkpoint.every_steps=20 --set run.dir="$work/run")
mpi() { "$MPIEXEC" --allow-run-as-root --oversubscribe -np "$@"; }
wait_for() { for _ in $(seq 600); do [ -e "$1" ] && return 0; sleep 0.1; done; return 1; }

# 1. a live run keeps a second one out
"$MPIEXEC" --allow-run-as-root --oversubscribe -np 2 "$bin" "${C[@]}" --set train.max_steps=1500 \
  > "$work/first.out" 2>&1 &
first=$!
wait_for "$work/run/checkpoints/latest" || bad "the first run wrote no checkpoint"
holder=$(sed -n 's/^pid=//p' "$work/run/run.lock")
mpi 2 "$bin" "${C[@]}" --set train.max_steps=1500 > "$work/second.out" 2>&1; rc=$?
n=$(grep -c "is in use by another run" "$work/second.out")
if [ $rc -eq 1 ] && [ "$n" -eq 1 ] && grep -q "pid $holder on" "$work/second.out"; then
  ok "a second run in a live run's run.dir: exit 1, one message: $(grep -o 'run.dir .*alive' "$work/second.out" | cut -c1-150)"
else bad "second run: exit $rc, $n messages, holder pid '$holder'"; tail -5 "$work/second.out"; fi
kill -0 "$first" 2>/dev/null && ok "the first run still runs" || bad "the first run ended early"
wait "$first"; rc=$?
first=""
if [ $rc -eq 0 ] && grep -q "^summary" "$work/first.out" && [ ! -e "$work/run/run.lock" ]; then
  ok "the first run finished and removed its lock"
else bad "first run: exit $rc, lock $(ls "$work/run/run.lock" 2>&1)"; tail -5 "$work/first.out"; fi

# 2. a stop signal: exit 85, no lock left
rm -rf "$work/run"
ACTLORA_FAULT_STOP_AT=30.0 mpi 2 "$bin" "${C[@]}" --set train.max_steps=60 > "$work/stop.out" 2>&1; rc=$?
[ $rc -eq 85 ] && [ ! -e "$work/run/run.lock" ] && ok "stopped by a signal: exit 85, lock removed" ||
  { bad "stop signal: exit $rc, lock $(ls "$work/run/run.lock" 2>&1)"; tail -5 "$work/stop.out"; }

# 3. killed outright: the lock stays; the next run takes it over at once and resumes
rm -rf "$work/run"
"$MPIEXEC" --allow-run-as-root --oversubscribe -np 2 "$bin" "${C[@]}" --set train.max_steps=1000000 \
  > "$work/killed.out" 2>&1 &
first=$!
for _ in $(seq 600); do
  [ "$(ls "$work/run/checkpoints/" 2>/dev/null | grep -c '^ckpt-')" -ge 2 ] && break
  sleep 0.1
done
ranks=$(pgrep -P "$first")
[ -n "$ranks" ] || { bad "no ranks to kill"; kill -KILL "$first"; }
kill -KILL $ranks 2>/dev/null  # the ranks themselves: no signal handler, no exit path runs
wait "$first" 2>/dev/null
first=""
[ -e "$work/run/run.lock" ] && ok "a killed run leaves its lock" || bad "a killed run's lock is gone"
last=$(ls "$work/run/checkpoints/" | sed -n 's/^ckpt-\([0-9]*\)-[0-9]*\.h5$/\1/p' | sort -n | tail -1)
mpi 2 "$bin" "${C[@]}" --set train.max_steps=$(( ${last:-0} + 10 )) > "$work/after.out" 2>&1; rc=$?
if [ $rc -eq 0 ] && grep -q "^lock .*taking over.*no longer exists" "$work/after.out" &&
   ! grep -q "watching" "$work/after.out" && grep -q "^resume  from" "$work/after.out" && [ ! -e "$work/run/run.lock" ]; then
  ok "the next run took the lock over at once and resumed: $(grep -m1 '^lock' "$work/after.out" | cut -c1-160)"
else bad "after the kill: exit $rc"; grep -E "^(lock|resume)" "$work/after.out"; tail -3 "$work/after.out"; fi
# 4. this run's lock replaced by another run's (which judged it dead): it stops within a beat or two, exit 1,
#    and leaves the other run's lock alone
rm -rf "$work/run"
"$MPIEXEC" --allow-run-as-root --oversubscribe -np 2 "$bin" "${C[@]}" --set train.max_steps=1000000 \
  > "$work/lost.out" 2>&1 &
first=$!
wait_for "$work/run/checkpoints/latest" || bad "no checkpoint before the take-over"
rm -f "$work/run/run.lock"
printf 'host=elsewhere\npid=4242\njob=99\nrestart=0\n' > "$work/run/run.lock"
t0=$(date +%s.%N)
for _ in $(seq 300); do kill -0 "$first" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$first" 2>/dev/null
wait "$first"; rc=$?
first=""
waited=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
n=$(grep -c "has taken over run.dir" "$work/lost.out")
if [ $rc -eq 1 ] && [ "$n" -eq 1 ] && grep -q "pid 4242 on elsewhere (Slurm job 99, run 0)" "$work/lost.out" &&
   grep -q "host=elsewhere" "$work/run/run.lock" && awk -v w="$waited" 'BEGIN { exit !(w < 20) }'; then
  ok "taken over by another run: stopped after $waited s with exit 1, the other run's lock intact"
else bad "taken over: exit $rc after $waited s, $n messages"; tail -3 "$work/lost.out"; fi
echo "test_rundir_lock: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
