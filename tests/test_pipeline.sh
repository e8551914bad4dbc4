#!/usr/bin/env bash
# test_pipeline.sh: the whole method end to end on real data, with MPI:
#   prep (tools/prep_glue.py, real SST-2 slice, real Llama-3 tokenizer) -> calibrate -> select ->
#   train with gradient all-reduce -> evaluate with the GLUE metric.
# Checks: np=1 and np=2 with the same global batch select the same layers and follow the same loss
# trajectory (fp32 tolerance); --calibrate-only writes calibration.h5 and stops; the JSONL log has
# train/eval/summary records; lora.fuse (adapters on the frozen GEMMs) follows the plain run's losses, and
# with model.act_dtype = "bf16" (bf16 emulation) the fused run's within 2%, and with model.attention = "fused" on
# top the bf16 run's within 1% (both refused without what they need);
# run.profile prints its table over the steps after the first and logs profile records; run.progress_seconds = 0
# prints a progress line per layer loaded and per evaluated micro-batch, on rank 0 only;
# a wrong task or a file tokenized for another vocabulary is refused; --plan-memory plans an 8B run without a
# GPU (the largest micro-batch it names fits, one more does not).
# Usage (ctest): test_pipeline.sh SOURCE_ROOT BUILD_DIR ACTLORA_BINARY
set -uo pipefail
root="$1" build="$2" bin="$3"
shared="$root/../shared"
SKIP=77
fails=0 passes=0
ok() { passes=$((passes + 1)); }
bad() { fails=$((fails + 1)); echo "FAIL: $*"; }

[ -d "$shared/data/glue/SST-2" ] || { echo "SKIP: $shared/data/glue not found"; exit $SKIP; }
python3 -c "import h5py, tokenizers" 2>/dev/null || { echo "SKIP: python3 h5py/tokenizers missing (pip install -r tools/requirements.txt)"; exit $SKIP; }
MPIEXEC="${MPIEXEC:-mpirun}"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
run_mpi() { local np=$1; shift; "$MPIEXEC" --allow-run-as-root --oversubscribe -np "$np" "$bin" "$@"; }
# same_losses A B TOL LABEL: runs A and B logged 12 train losses each, B within TOL (relative) of A's
same_losses() {
  python3 - "$work" "$1" "$2" "$3" "$4" <<'PY'
import json, sys
work, a, b, tol, label = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
def train(run): return [json.loads(l)["loss"] for l in open(f"{work}/{run}/log.jsonl") if '"type":"train"' in l]
la, lb = train(a), train(b)
assert len(la) == len(lb) == 12, (len(la), len(lb))
worst = max(abs(x - y) / abs(y) for x, y in zip(lb, la))
assert worst < tol, f"{label}: loss trajectories differ by {worst:.2e} (tol {tol:g})"
print(f"{label}: loss trajectories within {worst:.1e}")
PY
}

python3 "$root/tools/prep_glue.py" --task SST-2 --glue-dir "$shared/data/glue/SST-2" \
  --tokenizer "$shared/data/tokenizers/llama3/tokenizer.json" --max-len 64 --pad-id 128004 \
  --limit-train 512 --out "$work/sst2.h5" > "$work/prep.log" 2>&1 || { cat "$work/prep.log"; bad "prep_glue.py failed"; exit 1; }

common=(--config "$root/configs/tiny_sst2.cfg" --set model.path="$root/tests/fixtures/tiny-llama3"
        --set data.path="$work/sst2.h5" --set train.max_steps=12 --set train.warmup_steps=2 --set train.eval_every=6
        --set calibration.batches=4 --set lora.dropout=0.0 --set run.log_every=4)

# np=2 x micro 8 x accum 1 and np=1 x micro 8 x accum 2: the same global batches of 16 samples
run_mpi 2 "${common[@]}" --set train.micro_batch=8 --set train.grad_accum=1 --set calibration.batches=4 \
  --set run.progress_seconds=0 --set run.dir="$work/np2" > "$work/np2.out" 2>&1 || { cat "$work/np2.out"; bad "np=2 run failed"; }
run_mpi 1 "${common[@]}" --set train.micro_batch=8 --set train.grad_accum=2 --set calibration.batches=8 \
  --set run.dir="$work/np1" > "$work/np1.out" 2>&1 || { cat "$work/np1.out"; bad "np=1 run failed"; }
grep -v "^load    \|^eval    " "$work/np2.out"
# run.progress_seconds=0: a progress line per layer loaded but the last, per evaluated micro-batch of rank 0's
# shard, from rank 0 only (the 2-rank run: 436 dev rows a shard, 55 micro-batches of 8 per evaluation)
n_load=$(grep -c "^load    random weights: layer [0-9]* of 4 (" "$work/np2.out")
n_eval=$(grep -c "^eval    dev split, rank 0's shard: row [0-9]* of 436 (" "$work/np2.out")
n_evals=$(grep -c '"type":"eval"' "$work/np2/log.jsonl")
if [ "$n_load" -eq 3 ] && [ "$n_evals" -ge 2 ] && [ "$n_eval" -eq $((55 * n_evals)) ]; then ok
else bad "progress lines: $n_load load lines (want 3), $n_eval eval lines (want 55 x $n_evals evaluations)"; fi

python3 - "$work" <<'PY' && ok || bad "np=1 vs np=2 agreement / log contents"
import json, sys
work = sys.argv[1]
def records(run):
    return [json.loads(l) for l in open(f"{work}/{run}/log.jsonl")]
r1, r2 = records("np1"), records("np2")
def of(rs, t): return [r for r in rs if r["type"] == t]
c1, c2 = of(r1, "calibration")[0], of(r2, "calibration")[0]
assert c1["selected"] == c2["selected"], (c1["selected"], c2["selected"])
assert c1["rank"] == c2["rank"], (c1["rank"], c2["rank"])
for a, b in zip(c1["scores"], c2["scores"]):
    assert abs(a - b) <= 1e-9 * abs(a), (a, b)            # same samples, fp64 sums in another order
l1 = [r["loss"] for r in of(r1, "train")]
l2 = [r["loss"] for r in of(r2, "train")]
assert len(l1) == len(l2) == 12, (len(l1), len(l2))
worst = max(abs(a - b) / abs(b) for a, b in zip(l1, l2))
assert worst < 2e-5, f"loss trajectories differ by {worst:.2e}"
e1, e2 = of(r1, "eval"), of(r2, "eval")
assert [e["step"] for e in e2] == [6, 12], [e["step"] for e in e2]
assert all(0.0 <= e["metrics"]["accuracy"] <= 1.0 for e in e1 + e2)
assert abs(e1[-1]["main"] - e2[-1]["main"]) <= 2.0 / 872 + 1e-12, (e1[-1]["main"], e2[-1]["main"])
s = of(r2, "summary")[0]
assert s["world"] == 2 and s["trainable_params"] > 0 and s["ledger_s"]["forward"] > 0
print(f"np=1 vs np=2: same selection {c2['selected']}, loss trajectories within {worst:.1e}, "
      f"dev accuracy {e1[-1]['main']:.4f} / {e2[-1]['main']:.4f}")
PY
grep -q "identical on all ranks" "$work/np2.out" && ok || bad "no statistics-agreement line in the np=2 output"

# lora.fuse: the same np=2 run with every adapter on its frozen GEMM (bordered weights) follows the same
# fp32 loss trajectory (only summation orders differ) and the plan says the weights are bordered
run_mpi 2 "${common[@]}" --set train.micro_batch=8 --set train.grad_accum=1 --set calibration.batches=4 \
  --set lora.fuse=true --set run.dir="$work/fused" > "$work/fused.out" 2>&1 || { cat "$work/fused.out"; bad "lora.fuse run failed"; }
same_losses np2 fused 2e-5 "lora.fuse vs plain (np=2, fp32)" && ok || bad "lora.fuse run vs the plain run"
# model.act_dtype = "bf16" (the saved activations in the weight format) on the CPU's bf16 emulation: the same
# run follows the fp32 fused trajectory within bf16 tolerance (2%) and says so in its lora line; without
# lora.fuse it is refused before loading, naming the key
run_mpi 2 "${common[@]}" --set train.micro_batch=8 --set train.grad_accum=1 --set calibration.batches=4 \
  --set lora.fuse=true --set model.dtype=bf16 --set model.act_dtype=bf16 --set run.dir="$work/mlpbf" \
  > "$work/mlpbf.out" 2>&1 || { cat "$work/mlpbf.out"; bad "model.act_dtype=bf16 run failed"; }
grep -q "frozen GEMM (lora.fuse), bf16 activations" "$work/mlpbf.out" && ok || bad "no 'bf16 activations' in the lora line"
same_losses fused mlpbf 2e-2 "model.act_dtype=bf16 (bf16 emulation) vs fp32 fused" && ok ||
  bad "model.act_dtype=bf16 run vs the fp32 fused run"
# model.attention = "fused" on top (lse instead of the probabilities, recomputed in backward): within 1% of
# the gemm attention's bf16 run, said in the lora line; without bf16 activations it is refused, naming the key
run_mpi 2 "${common[@]}" --set train.micro_batch=8 --set train.grad_accum=1 --set calibration.batches=4 \
  --set lora.fuse=true --set model.dtype=bf16 --set model.act_dtype=bf16 --set model.attention=fused \
  --set run.dir="$work/attfused" > "$work/attfused.out" 2>&1 || { cat "$work/attfused.out"; bad "model.attention=fused run failed"; }
grep -q "bf16 activations, fused attention" "$work/attfused.out" && ok || bad "no 'fused attention' in the lora line"
same_losses mlpbf attfused 1e-2 "model.attention=fused vs gemm (bf16 emulation)" && ok ||
  bad "model.attention=fused run vs the gemm attention's run"
out=$(run_mpi 1 "${common[@]}" --set model.attention=fused --set run.dir="$work/nofa" 2>&1) \
  && bad "model.attention=fused without bf16 activations was accepted" \
  || { echo "$out" | grep -q 'needs model.act_dtype = "bf16"' && ok || bad "attention=fused without act_dtype: wrong message: $out"; }
out=$(run_mpi 1 "${common[@]}" --set model.dtype=bf16 --set model.act_dtype=bf16 --set run.dir="$work/nofuse" 2>&1) \
  && bad "act_dtype=bf16 without lora.fuse was accepted" \
  || { echo "$out" | grep -q 'needs lora.fuse = true' && ok || bad "act_dtype without lora.fuse: wrong message: $out"; }
grep -q "^summary | dev: accuracy" "$work/np2.out" && ok || bad "no dev accuracy in the summary"

# run.profile: the table covers the steps after the first (12 - 1 = 11), and log.jsonl has one profile
# record per op and shape with the same step count, the costliest of them a matrix product
run_mpi 1 "${common[@]}" --set run.profile=true --set run.dir="$work/prof" > "$work/prof.out" 2>&1 || { cat "$work/prof.out"; bad "run.profile run failed"; }
grep -q "^profile | 11 step(s): the ops took" "$work/prof.out" && ok || bad "profile table header missing or wrong step count"
python3 - "$work/prof/log.jsonl" <<'PY' && ok || bad "profile records in log.jsonl"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"type":"profile"' in l]
assert len(recs) > 10 and all(r["steps"] == 11 and r["calls"] > 0 and r["seconds"] >= 0 for r in recs), recs[:3]
top = max(recs, key=lambda r: r["seconds"])
assert top["op"] in ("wgemm", "wgemm_multi", "gemm", "attention_fwd", "attention_bwd"), top
PY

# --calibrate-only: calibration.h5 with the documented datasets, and no training
run_mpi 2 "${common[@]}" --set run.dir="$work/cal" --calibrate-only > "$work/cal.out" 2>&1 || { cat "$work/cal.out"; bad "--calibrate-only failed"; }
python3 - "$work/cal/calibration.h5" <<'PY' && ok || bad "calibration.h5 contents"
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
L = int(f.attrs["num_layers"])
assert f.attrs["task"] in ("SST-2", b"SST-2"), f.attrs["task"]     # the data's task, not the (empty) data.task
assert f["scores"].shape == (L,) and f["sums"].shape == (L, 8) and f["per_rank_sums"].shape == (2, L, 8)
assert np.allclose(f["per_rank_sums"][...].sum(0), f["sums"][...], rtol=1e-12)
assert sorted(f["order"][...].tolist()) == list(range(L))
sel = f["selected"][...].tolist()
assert sel == sorted(sel) and len(sel) == round(0.5 * L), sel
PY
grep -q '"type":"train"' "$work/cal/log.jsonl" && bad "--calibrate-only trained" || ok

# refusals: wrong task, data tokenized for a larger vocabulary than the model's
out=$(run_mpi 1 "${common[@]}" --set data.task=CoLA --set run.dir="$work/bad1" 2>&1) && bad "wrong task accepted" || {
  grep -q "CoLA" <<<"$out" && ok || bad "wrong-task message does not name the task: $out"; }
python3 - "$root/tests/fixtures/tiny-llama/config.json" "$work/small" <<'PY'
import json, os, sys
c = json.load(open(sys.argv[1])); os.makedirs(sys.argv[2], exist_ok=True)
c["max_position_embeddings"] = 256; c["num_labels"] = 2; c.pop("id2label", None); c.pop("label2id", None)
json.dump(c, open(os.path.join(sys.argv[2], "config.json"), "w"))
PY
out=$(run_mpi 1 "${common[@]}" --set model.path="$work/small" --set run.dir="$work/bad2" 2>&1) && bad "wrong vocabulary accepted" || {
  grep -q "vocabulary" <<<"$out" && ok || bad "wrong-vocabulary message unclear: $out"; }

# the tokenizer check: a model directory with the same tokenizer.json passes, another one is refused
mkdir -p "$work/m_same" "$work/m_other"
cp "$root/tests/fixtures/tiny-llama3/config.json" "$work/m_same/"; cp "$root/tests/fixtures/tiny-llama3/config.json" "$work/m_other/"
cp "$shared/data/tokenizers/llama3/tokenizer.json" "$work/m_same/"
echo '{"version": "1.0", "model": {"type": "WordLevel", "vocab": {}}}' > "$work/m_other/tokenizer.json"
out=$(run_mpi 1 "${common[@]}" --set model.path="$work/m_same" --set run.dir="$work/tok1" --calibrate-only 2>&1) || bad "same tokenizer refused: $out"
grep -q "matches the model's tokenizer.json" <<<"$out" && ok || bad "tokenizer match not reported: $out"
out=$(run_mpi 1 "${common[@]}" --set model.path="$work/m_other" --set run.dir="$work/tok2" --calibrate-only 2>&1) && bad "other tokenizer accepted" || {
  grep -q "tokenized with tokenizer" <<<"$out" && ok || bad "tokenizer-mismatch message unclear: $out"; }

# baselines: gradient importance and random selection choose the configured number of layers
for method in gradient random; do
  out=$(run_mpi 2 "${common[@]}" --set calibration.method=$method --set run.dir="$work/$method" --calibrate-only 2>&1) \
    || bad "calibration.method=$method failed: $out"
  python3 - "$work/$method/calibration.h5" "$method" <<'PY' && ok || bad "calibration.method=$method results"
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
assert f.attrs["method"] in (sys.argv[2], sys.argv[2].encode()), f.attrs["method"]
s = f["scores"][...]
assert len(f["selected"][...]) == 2 and np.all(np.isfinite(s))
if sys.argv[2] == "gradient":
    assert np.all(s > 0) and f["tokens"][0] == 8, (s, f["tokens"][...])   # 4 micro-batches x 2 ranks
else:
    assert np.all((0 <= s) & (s < 1)) and len(set(s.tolist())) == len(s)
PY
done

# --plan-memory GIB: the device-memory plan of a run without a GPU and without weights (Llama-3.1-8B shapes
# from a config.json alone, the production config): the micro-batch it names as the largest that fits does
# fit (exit 0), one more does not (exit 1, naming the limit), and lora.layers = "auto" is planned for the
# worst case of its rule
mkdir -p "$work/m8"
python3 - "$work/m8/config.json" <<'PY'
import json, sys
json.dump({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
           "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
           "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192}, "tie_word_embeddings": False, "num_labels": 2},
          open(sys.argv[1], "w"))
PY
P8=(--config "$root/configs/llama8b_glue.cfg" --set model.path="$work/m8" --set data.source=synthetic
    --set data.seq_len=256 --set train.max_steps=100 --set lora.layers=all)
out=$(run_mpi 1 "${P8[@]}" --set train.micro_batch=1 --plan-memory 80 2>&1); r=$?
mb=$(sed -n 's/.*largest micro-batch that fits: \([0-9]*\).*/\1/p' <<<"$out")
if [ $r -eq 0 ] && [ -n "$mb" ] && [ "$mb" -ge 8 ] && grep -q "nothing loaded" <<<"$out"; then ok; else bad "--plan-memory 80, micro-batch 1: exit $r, largest ${mb:-?}: $out"; fi
if [ -n "$mb" ]; then
  run_mpi 1 "${P8[@]}" --set train.micro_batch="$mb" --plan-memory 80 > "$work/plan_a.out" 2>&1 && ok ||
    bad "--plan-memory: micro-batch $mb, named as the largest that fits, does not fit"
  out=$(run_mpi 1 "${P8[@]}" --set train.micro_batch=$((mb + 1)) --plan-memory 80 2>&1); r=$?
  [ $r -eq 1 ] && grep -q "set train.micro_batch <= $mb" <<<"$out" && ok ||
    bad "--plan-memory: micro-batch $((mb + 1)) gives exit $r (expected 1 naming <= $mb): $out"
fi
out=$(run_mpi 1 "${P8[@]}" --set lora.layers=auto --set train.micro_batch=1 --plan-memory 80 2>&1)
grep -q 'rule fraction, 16 layer(s), the lowest planned as layer 0' <<<"$out" && grep -q "32 layer set(s)" <<<"$out" && ok ||
  bad "--plan-memory with lora.layers auto: $out"
# and it refuses what the run would refuse, with the run's messages: a layer the model lacks, bf16 activations on
# fp32 weights (the device's backend named)
out=$(run_mpi 1 "${P8[@]}" --set 'lora.layers=[3,40]' --plan-memory 80 2>&1) && bad "--plan-memory: layer 40 of 32 accepted" ||
  { grep -q "lora.layers names layer 40 but the model has 32 layers" <<<"$out" && ok || bad "--plan-memory, layer 40: $out"; }
out=$(run_mpi 1 "${P8[@]}" --set model.dtype=fp32 --set lora.fuse=true --set model.act_dtype=bf16 --plan-memory 80 2>&1) &&
  bad "--plan-memory: bf16 activations on fp32 weights accepted" ||
  { grep -q "needs bf16 weights, but model.dtype gives fp32 weights on the cuda backend" <<<"$out" && ok ||
    bad "--plan-memory, act_dtype bf16 on fp32 weights: $out"; }

echo "test_pipeline: $passes passed, $fails failed"
[ $fails -eq 0 ]
