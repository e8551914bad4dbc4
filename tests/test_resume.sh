#!/usr/bin/env bash
# test_resume.sh: "kill it at any moment, lose at most one checkpoint interval, never a corrupted
# state, and resuming gives exactly the run you would have had" — outside Slurm, with MPI.
#   - stops mid gradient accumulation, right after an evaluation, and by a real SIGUSR1 at a random
#     moment: each exits 85 ("checkpointed, requeue me"), resumes, and ends with adapters
#     bit-identical to the uninterrupted run; the same mid accumulation with lora.fuse
#   - kill -9 at a random moment with periodic checkpoints: resumes bit-identically
#   - rotation keeps checkpoint.keep files; a truncated newest checkpoint and a missing `latest`
#     fall back to an older valid one with a warning, still bit-identical
#   - a full disk (RLIMIT_FSIZE) during a save: clear error, the previous checkpoint stays valid
#   - elastic resume on another number of ranks; a changed config, another model, an unwritable
#     run directory: clear errors (or --force)
# Usage (ctest): test_resume.sh SOURCE_ROOT BUILD_DIR ACTLORA_BINARY
set -uo pipefail
root="$1" build="$2" bin="$3"
shared="$root/../shared"
fails=0 passes=0
ok() { passes=$((passes + 1)); }
bad() { fails=$((fails + 1)); echo "FAIL: $*"; }
[ -d "$shared/data/glue/SST-2" ] || { echo "SKIP: $shared/data/glue not found"; exit 77; }
python3 -c "import h5py, tokenizers" 2>/dev/null || { echo "SKIP: python3 h5py/tokenizers missing"; exit 77; }
MPIEXEC="${MPIEXEC:-mpirun}"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
run_mpi() { local np=$1; shift; "$MPIEXEC" --allow-run-as-root --oversubscribe -np "$np" "$bin" "$@"; }
. "$root/tests/lib/run_lib.sh"  # sha

python3 "$root/tools/prep_glue.py" --task SST-2 --glue-dir "$shared/data/glue/SST-2" \
  --tokenizer "$shared/data/tokenizers/llama3/tokenizer.json" --max-len 64 --pad-id 128004 \
  --limit-train 512 --out "$work/sst2.h5" > /dev/null 2>&1 || { bad "prep failed"; exit 1; }
# 16 steps of G = 8 x 2 x 2 = 32 over 512 rows (one epoch), dropout on, evaluation at step 6 and 12
C=(--config "$root/configs/tiny_sst2.cfg" --set model.path="$root/tests/fixtures/tiny-llama3"
   --set data.path="$work/sst2.h5" --set train.max_steps=16 --set train.warmup_steps=2 --set train.micro_batch=8
   --set train.grad_accum=2 --set train.eval_every=6 --set lora.dropout=0.1 --set run.log_every=100)

run_mpi 2 "${C[@]}" --set run.dir="$work/ref" > "$work/ref.out" 2>&1 || { cat "$work/ref.out"; bad "reference run failed"; exit 1; }
REF=$(sha "$work/ref")

# interrupted at STEP.MICRO (a SIGUSR1 raised on every rank there), then resumed with --resume auto
stop_and_resume() {  # name stop_at
  local dir="$work/$1"
  ACTLORA_FAULT_STOP_AT="$2" run_mpi 2 "${C[@]}" --set run.dir="$dir" > "$dir.1.out" 2>&1
  local rc=$?
  [ $rc -eq 85 ] && ok || { bad "$1: stop at $2 exited $rc, expected 85"; cat "$dir.1.out"; }
  run_mpi 2 "${C[@]}" --set run.dir="$dir" > "$dir.2.out" 2>&1 || { bad "$1: resume failed"; cat "$dir.2.out"; }
  grep -q "^resume  from .*ckpt-${2/./-}.h5" "$dir.2.out" && ok || bad "$1: did not resume from the step ${2} checkpoint"
  [ "$(sha "$dir")" = "$REF" ] && ok || bad "$1: adapters differ from the uninterrupted run"
}
stop_and_resume mid_accum 5.1
stop_and_resume after_eval 6.0
stop_and_resume first_step 0.1

# lora.fuse (adapters on their frozen GEMMs, borders rewritten from the adapters by every forward):
# stopped mid accumulation and resumed, bit-identical to its own uninterrupted run
dir="$work/fused_ref"
run_mpi 2 "${C[@]}" --set lora.fuse=true --set run.dir="$dir" > "$dir.out" 2>&1 || { cat "$dir.out"; bad "fused reference run failed"; }
dir="$work/fused"
ACTLORA_FAULT_STOP_AT=5.1 run_mpi 2 "${C[@]}" --set lora.fuse=true --set run.dir="$dir" > "$dir.1.out" 2>&1
[ $? -eq 85 ] && ok || bad "fused: stop at 5.1 did not exit 85"
run_mpi 2 "${C[@]}" --set lora.fuse=true --set run.dir="$dir" > "$dir.2.out" 2>&1 || { bad "fused: resume failed"; cat "$dir.2.out"; }
[ -n "$(sha "$work/fused_ref")" ] && [ "$(sha "$dir")" = "$(sha "$work/fused_ref")" ] && ok ||
  bad "fused: adapters differ from the uninterrupted fused run"

# a real SIGUSR1 to the ranks at a random moment
dir="$work/sig"
run_mpi 2 "${C[@]}" --set train.max_steps=16 --set run.dir="$dir" > "$dir.1.out" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q '"step":3,' "$dir/log.jsonl" 2>/dev/null && break; sleep 0.05; done
pkill -USR1 -f -- "run.dir=$dir( |$)" ; wait $pid; rc=$?   # only this test's ranks
if [ $rc -eq 85 ]; then ok; run_mpi 2 "${C[@]}" --set run.dir="$dir" > "$dir.2.out" 2>&1 || bad "signal: resume failed"
elif [ $rc -eq 0 ]; then echo "note: the run finished before the signal arrived"; ok
else bad "signal: exit $rc"; cat "$dir.1.out"; fi
[ "$(sha "$dir")" = "$REF" ] && ok || bad "signal: adapters differ from the uninterrupted run"

# periodic checkpoints + kill -9 at a random moment: resume from whatever survived
dir="$work/kill"
run_mpi 2 "${C[@]}" --set checkpoint.every_steps=1 --set checkpoint.keep=2 --set run.dir="$dir" > "$dir.1.out" 2>&1 &
pid=$!
for _ in $(seq 200); do [ "$(ls "$dir/checkpoints" 2>/dev/null | grep -c '^ckpt-')" -ge 2 ] && break; sleep 0.02; done
sleep 0.0$((RANDOM % 9)); pkill -KILL -f -- "run.dir=$dir( |$)"; wait $pid 2>/dev/null
run_mpi 2 "${C[@]}" --set checkpoint.every_steps=1 --set checkpoint.keep=2 --set run.dir="$dir" > "$dir.2.out" 2>&1 \
  || { bad "kill -9: resume failed"; cat "$dir.2.out"; }
[ "$(sha "$dir")" = "$REF" ] && ok || bad "kill -9: adapters differ from the uninterrupted run"
n=$(ls "$dir/checkpoints" | grep -c '^ckpt-.*\.h5$'); [ "$n" -eq 2 ] && ok || bad "rotation kept $n checkpoints, expected 2"

# a truncated newest checkpoint and a missing `latest`: fall back to the older valid one
dir="$work/trunc"
ACTLORA_FAULT_STOP_AT=9.0 run_mpi 2 "${C[@]}" --set checkpoint.every_steps=4 --set run.dir="$dir" > "$dir.1.out" 2>&1
newest="$dir/checkpoints/$(cat "$dir/checkpoints/latest")"
truncate -s $(( $(stat -c %s "$newest") / 2 )) "$newest"
rm -f "$dir/checkpoints/latest"
run_mpi 2 "${C[@]}" --set checkpoint.every_steps=4 --set run.dir="$dir" > "$dir.2.out" 2>&1 || { bad "truncated: resume failed"; cat "$dir.2.out"; }
grep -q "ckpt-9-0.h5" "$dir.2.out" && grep -q "^resume  from .*ckpt-8-0.h5" "$dir.2.out" && ok \
  || { bad "truncated newest: no warning naming it or no fallback to ckpt-8-0"; cat "$dir.2.out"; }
[ "$(sha "$dir")" = "$REF" ] && ok || bad "truncated: adapters differ from the uninterrupted run"

# a full disk during the stop-signal save: clear error (not 85), the previous checkpoint stays valid.
# A small tmpfs holds the run directory (RLIMIT_FSIZE cannot be used: MPI's shared-memory files hit it).
dir="$work/full"
mkdir -p "$dir"
if mount -t tmpfs -o size=2m tmpfs "$dir" 2>/dev/null; then
  ACTLORA_FAULT_STOP_AT=2.0 run_mpi 2 "${C[@]}" --set run.dir="$dir" > "$work/full.1.out" 2>&1
  free_kb=$(df -k --output=avail "$dir" | tail -1)
  fallocate -l $(( (free_kb - 120) * 1024 )) "$dir/filler" 2>/dev/null || dd if=/dev/zero of="$dir/filler" bs=1k count=$((free_kb - 120)) 2>/dev/null
  out=$(ACTLORA_FAULT_STOP_AT=4.1 run_mpi 2 "${C[@]}" --set run.dir="$dir" 2>&1); rc=$?
  [ $rc -ne 0 ] && [ $rc -ne 85 ] && grep -q "checkpoint failed" <<<"$out" && ok || { bad "full disk: rc $rc"; echo "$out" | grep -v '^ ' | tail -5; }
  [ "$(cat "$dir/checkpoints/latest")" = "ckpt-2-0.h5" ] && ok || bad "full disk: latest moved"
  ls -a "$dir/checkpoints" | grep -q tmp && bad "full disk: a temporary file was left behind" || ok
  rm -f "$dir/filler"
  run_mpi 2 "${C[@]}" --set run.dir="$dir" > "$work/full.3.out" 2>&1 || bad "full disk: resume failed"
  [ "$(sha "$dir")" = "$REF" ] && ok || bad "full disk: adapters differ from the uninterrupted run"
  umount "$dir"
else
  echo "note: cannot mount a tmpfs here (not root?): the full-disk case is covered by test_ckpt only"
fi

# elastic: a 2-rank checkpoint (mid accumulation) resumed on 1 rank
dir="$work/elastic"
ACTLORA_FAULT_STOP_AT=5.1 run_mpi 2 "${C[@]}" --set run.dir="$dir" > "$dir.1.out" 2>&1
out=$(run_mpi 1 "${C[@]}" --set run.dir="$dir" 2>&1) && ok || { bad "elastic resume failed"; echo "$out" | tail; }
grep -q "elastic: 2 -> 1 ranks" <<<"$out" && grep -q "^summary | " <<<"$out" && ok || bad "elastic: no elastic note or summary"

# refusals: a changed key that alters the run (then --force), another model, an unwritable run dir
out=$(run_mpi 1 "${C[@]}" --set run.dir="$work/mid_accum" --set lora.r=4 2>&1) && bad "changed lora.r accepted" || {
  grep -q "lora.r: 8 -> 4" <<<"$out" && ok || bad "config-change message does not list lora.r: $out"; }
out=$(run_mpi 1 "${C[@]}" --set run.dir="$work/mid_accum" --set train.lr=0.001 --force 2>&1) && \
  grep -q "warning: --force" <<<"$out" && ok || bad "--force did not resume: $(tail -3 <<<"$out")"
mkdir -p "$work/other"; python3 -c "
import json,sys; c=json.load(open(sys.argv[1])); c['rms_norm_eps']=1e-6; json.dump(c,open(sys.argv[2],'w'))" \
  "$root/tests/fixtures/tiny-llama3/config.json" "$work/other/config.json"
out=$(run_mpi 1 "${C[@]}" --set run.dir="$work/after_eval" --set model.path="$work/other" 2>&1) && bad "other model accepted" || {
  grep -q "written for another model" <<<"$out" && ok || bad "other-model message unclear: $out"; }
touch "$work/afile"
out=$(run_mpi 1 "${C[@]}" --set run.dir="$work/afile/run" 2>&1) && bad "unwritable run.dir accepted" || {
  grep -q "cannot use run.dir" <<<"$out" && ok || bad "unwritable run.dir message unclear: $out"; }

echo "test_resume: $passes passed, $fails failed"
[ $fails -eq 0 ]
