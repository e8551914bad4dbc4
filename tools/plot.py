#!/usr/bin/env python3
"""plot.py: training curves and layer scores of actlora runs.

Usage (from the repository root):

    python3 tools/plot.py RUN_DIR [RUN_DIR ...] [--out DIR] [--smooth S]

Reads <RUN_DIR>/log.jsonl of every run dir and writes into --out (default: the first run
dir), printing each path written:

* curves.png: top panel, train loss vs step (raw values faint, a smoothed line on top);
  bottom panel, the eval main metric ("main" of the eval records) vs step, one line per
  eval split.  One colour per run dir, labelled by the dir name.  The bottom panel is left
  out when no run has eval records.
* layer_scores.png: for every run dir holding a calibration.h5 (format: see the C
  program's calibration writer), a bar chart of the per-layer scores with the selected
  layers in another colour and marked with a star, titled with the task and the
  method / probe / rule.  A run without calibration.h5 (or without h5py installed) but with
  a "calibration" record in its log uses that record instead.  Not written when no run has either.

log.jsonl holds one JSON object per line with a "type" (start, calibration, train, eval,
summary); a resumed run appends to the same log, so for every (type, step, split) the
last record wins.  Blank lines are skipped; a line that is not valid JSON (e.g. the last
line of a killed run) is skipped with a warning.  A missing or empty log is an error.

Smoothing: a debiased exponential moving average (as TensorBoard's) over the loss records
in step order, s_t = w s_{t-1} + (1 - w) x_t divided by (1 - w^t); the weight w defaults
to clip(1 - 5 / n, 0, 0.95) for n loss records and can be set with --smooth (0 = none).

Exit status: 0 on success, 2 on an input or usage error (message on stderr).
"""

import argparse
import json
import math
import os
import re
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


class ToolError(Exception):
    """An input or usage error; main() prints it and exits with status 2."""


# ----------------------------------------------------------------------------- log


_NONFINITE = re.compile(r'(?<![\w".])(-?)(nan|inf(?:inity)?)(?![\w"])', re.IGNORECASE)


def _parse_line(line):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        # a C printf("%g") of a non-finite value gives nan / inf / -inf: accept them
        fixed = _NONFINITE.sub(lambda m: m.group(1) + ("NaN" if m.group(2).lower() == "nan" else "Infinity"),
                               line)
        if fixed != line:
            return json.loads(fixed)
        raise


def read_log(path):
    """All records of a log.jsonl (a list of dicts, in file order)."""
    if os.path.isdir(path):
        path = os.path.join(path, "log.jsonl")
    if not os.path.exists(path):
        raise ToolError(f"{path}: no such file (is this a run directory?)")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ToolError(f"{path}: cannot read: {e.strerror or e}") from None
    records = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = _parse_line(line)
        except json.JSONDecodeError as e:
            print(f"warning: {path}:{no}: not valid JSON, skipped ({e.msg})", file=sys.stderr)
            continue
        if not isinstance(rec, dict) or "type" not in rec:
            print(f"warning: {path}:{no}: not a record with a \"type\", skipped", file=sys.stderr)
            continue
        records.append(rec)
    if not records:
        raise ToolError(f"{path}: empty log (no records)")
    return records


def _num(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x


def dedup(records):
    """Last record per (type, step, split), in order of step (records without a step keep file order)."""
    last = {}
    for i, rec in enumerate(records):
        key = (rec.get("type"), rec.get("step", ("#", i)), rec.get("split"))
        try:
            hash(key)
        except TypeError:
            key = (rec.get("type"), ("#", i), None)
        last.pop(key, None)  # re-insert so that dict order follows the last occurrence
        last[key] = rec
    return list(last.values())


class Run:
    """What plot.py needs from one run dir."""

    def __init__(self, run_dir, label=None):
        self.dir = run_dir
        self.label = label or os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
        self.log_path = os.path.join(run_dir, "log.jsonl")
        self.records = read_log(self.log_path)
        recs = dedup(self.records)
        starts = [r for r in self.records if r.get("type") == "start"]
        self.start = starts[-1] if starts else {}
        self.task = self.start.get("task")
        train = [r for r in recs if r.get("type") == "train" and _num(r.get("step")) is not None
                 and _num(r.get("loss")) is not None]
        train.sort(key=lambda r: _num(r["step"]))
        self.train_steps = np.array([_num(r["step"]) for r in train], dtype=np.float64)
        self.train_loss = np.array([_num(r["loss"]) for r in train], dtype=np.float64)
        self.eval = {}        # split -> (steps, values)
        self.metric_name = None
        for r in recs:
            if r.get("type") != "eval" or _num(r.get("step")) is None:
                continue
            main = _num(r.get("main"))
            if main is None:
                continue
            split = str(r.get("split") or "eval")
            self.eval.setdefault(split, []).append((_num(r["step"]), main))
            if self.metric_name is None and isinstance(r.get("metrics"), dict):
                names = [k for k, v in r["metrics"].items() if _num(v) is not None and _num(v) == main]
                if len(names) == 1:
                    self.metric_name = names[0]
        for split in self.eval:
            pts = sorted(self.eval[split])
            self.eval[split] = (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
        calib = [r for r in self.records if r.get("type") == "calibration"]
        self.calib_record = calib[-1] if calib else None


def unique_labels(dirs):
    """Dir names; when two coincide, parent/name (and the full path as a last resort)."""
    full = [os.path.normpath(os.path.abspath(d)) for d in dirs]
    for depth in (1, 2):
        labels = [os.sep.join(p.split(os.sep)[-depth:]) for p in full]
        if len(set(labels)) == len(labels):
            return labels
    return [os.path.normpath(d) for d in dirs]


# ----------------------------------------------------------------------------- plotting


def ema(values, weight=None):
    """Debiased exponential moving average; non-finite values are skipped (NaN kept in place)."""
    x = np.asarray(values, dtype=np.float64)
    n = int(np.count_nonzero(np.isfinite(x)))
    if weight is None:
        weight = min(0.95, max(0.0, 1.0 - 5.0 / n)) if n else 0.0
    out = np.full_like(x, np.nan)
    acc = 0.0
    norm = 0.0
    for i, v in enumerate(x):
        if not math.isfinite(v):
            continue
        acc = weight * acc + (1.0 - weight) * v
        norm = weight * norm + (1.0 - weight)
        out[i] = acc / norm if norm > 0 else v
    return out


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ToolError("matplotlib is not installed (python3 -m pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(runs, out_path, smooth=None):
    """Writes curves.png; returns False (and writes nothing) when no run has train or eval records."""
    have_train = [r for r in runs if r.train_steps.size]
    have_eval = [r for r in runs if r.eval]
    if not have_train and not have_eval:
        return False
    plt = _pyplot()
    npanel = (1 if have_train else 0) + (1 if have_eval else 0)
    fig, axes = plt.subplots(npanel, 1, figsize=(9, 3.6 * npanel + 0.4), sharex=True, squeeze=False)
    axes = list(axes[:, 0])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {r.label: colors[i % len(colors)] for i, r in enumerate(runs)}
    ax_loss = axes.pop(0) if have_train else None
    ax_eval = axes.pop(0) if have_eval else None
    if ax_loss is not None:
        for r in have_train:
            c = color[r.label]
            ax_loss.plot(r.train_steps, r.train_loss, color=c, alpha=0.25, linewidth=0.9)
            marker = "o" if r.train_steps.size <= 3 else None
            ax_loss.plot(r.train_steps, ema(r.train_loss, smooth), color=c, linewidth=1.8, marker=marker,
                         label=r.label)
        ax_loss.set_ylabel("train loss")
        ax_loss.set_title("train loss (faint: raw, line: smoothed)", fontsize=10)
        ax_loss.grid(True, alpha=0.3)
        ax_loss.legend(loc="upper right", fontsize=9)
    if ax_eval is not None:
        styles = ["-", "--", ":", "-."]
        splits = sorted({s for r in have_eval for s in r.eval})
        names = {r.metric_name for r in have_eval if r.metric_name}
        metric = names.pop() if len(names) == 1 else "main metric"
        for r in have_eval:
            for split, (steps, vals) in sorted(r.eval.items()):
                ls = styles[splits.index(split) % len(styles)]
                lab = r.label if len(splits) == 1 else f"{r.label} ({split})"
                ax_eval.plot(steps, vals, color=color[r.label], linestyle=ls, marker="o", markersize=4,
                             linewidth=1.6, label=lab)
        split_txt = splits[0] if len(splits) == 1 else ", ".join(splits)
        ax_eval.set_ylabel(f"eval {metric}")
        ax_eval.set_title(f"eval {metric} ({split_txt})", fontsize=10)
        ax_eval.grid(True, alpha=0.3)
        ax_eval.legend(loc="lower right", fontsize=9)
    (ax_eval or ax_loss).set_xlabel("step")
    tasks = sorted({str(r.task) for r in runs if r.task})
    if tasks:
        fig.suptitle(", ".join(tasks), fontsize=12)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return True


def run_calibration(run):
    """The calibration of a run as a dict (scores, selected, method, probe, rule, ...), or None."""
    h5 = os.path.join(run.dir, "calibration.h5")
    have_h5py = True
    try:
        import h5py  # noqa: F401
    except ImportError:
        have_h5py = False
        if os.path.exists(h5):
            print(f"warning: h5py is not installed: {h5} not read, using the log's calibration record",
                  file=sys.stderr)
    if os.path.exists(h5) and have_h5py:
        from rank_stability import ToolError as RSError, load_calibration
        try:
            c = load_calibration(h5)
        except RSError as e:
            raise ToolError(str(e)) from None
        a = c["attrs"]
        d = {k: a.get(k) for k in ("method", "probe", "rule", "k", "fraction", "threshold", "task",
                                   "batches", "world", "target_modules")}
        d["scores"] = np.asarray(c["scores"], dtype=np.float64)
        d["selected"] = list(c.get("selected") or [])
        d["source"] = h5
        if not d.get("task"):
            d["task"] = run.task
        return d
    rec = run.calib_record
    if rec and isinstance(rec.get("scores"), list) and rec["scores"]:
        scores = np.array([_num(v) if _num(v) is not None else np.nan for v in rec["scores"]])
        return {"method": rec.get("method"), "probe": rec.get("probe"), "rule": rec.get("rule"),
                "k": rec.get("k"), "fraction": rec.get("fraction"), "threshold": rec.get("threshold"),
                "task": run.task, "scores": scores,
                "selected": [int(v) for v in rec.get("selected") or []], "source": run.log_path}
    return None


def _calib_title(label, c):
    rule = c.get("rule")
    rule_txt = f"rule={rule}" if rule else ""
    if rule == "top_k" and c.get("k") is not None:
        rule_txt += f" (k={c['k']})"
    elif rule == "fraction" and c.get("fraction") is not None:
        rule_txt += f" (fraction={c['fraction']:g})"
    elif rule == "cumulative" and c.get("threshold") is not None:
        rule_txt += f" (threshold={c['threshold']:g})"
    parts = [f"method={c.get('method') or '?'}", f"probe={c.get('probe') or '?'}"]
    if rule_txt:
        parts.append(rule_txt)
    head = " | ".join(x for x in (c.get("task"), label) if x)
    L = len(c["scores"])
    return f"{head}\n{', '.join(parts)}; selected {len(c['selected'])}/{L} layers"


def plot_layer_scores(runs, out_path):
    """Writes layer_scores.png; returns False (and writes nothing) when no run has a calibration."""
    cal = [(r, run_calibration(r)) for r in runs]
    cal = [(r, c) for r, c in cal if c is not None]
    if not cal:
        return False
    plt = _pyplot()
    from matplotlib.patches import Patch
    maxL = max(len(c["scores"]) for _, c in cal)
    width = min(18.0, max(8.0, 0.28 * maxL + 3.5))
    fig, axes = plt.subplots(len(cal), 1, figsize=(width, 3.4 * len(cal) + 0.3), squeeze=False)
    base_color, sel_color = "#9db4cc", "#d9541e"
    for ax, (r, c) in zip(axes[:, 0], cal):
        s = np.asarray(c["scores"], dtype=np.float64)
        L = s.size
        x = np.arange(L)
        sel = set(c["selected"])
        is_sel = np.array([i in sel for i in range(L)])
        colors = [sel_color if v else base_color for v in is_sel]
        shown = np.where(np.isfinite(s), s, 0.0)
        ax.bar(x, shown, color=colors, edgecolor="#333333", linewidth=0.4, width=0.8)
        lo, hi = (float(np.min(shown)), float(np.max(shown))) if L else (0.0, 1.0)
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        span = (hi - lo) or 1.0
        if is_sel.any():
            ys = np.where(shown[is_sel] >= 0, shown[is_sel] + 0.04 * span, shown[is_sel] - 0.04 * span)
            ax.plot(x[is_sel], ys, linestyle="none", marker="*", markersize=10, color=sel_color,
                    markeredgecolor="#5a1e05", markeredgewidth=0.5)
            if L <= 48:  # rank (1 = most important) above each selected layer's star
                rank = np.empty(L, dtype=np.int64)
                rank[np.lexsort((x, -shown))] = np.arange(1, L + 1)
                for xi, yi in zip(x[is_sel], ys):
                    ax.annotate(f"#{rank[xi]}", (xi, yi), textcoords="offset points", xytext=(0, 6 if yi >= 0 else -12),
                                ha="center", fontsize=7, color="#5a1e05")
        ax.set_ylim(lo - (0.15 * span if lo < 0 else 0.0), hi + 0.18 * span)
        ax.set_xlim(-0.7, L - 0.3)
        step = 1 if L <= 40 else (2 if L <= 80 else 5)
        ax.set_xticks(x[::step])
        ax.tick_params(axis="x", labelsize=8 if L > 24 else 9)
        ax.set_xlabel("layer")
        ax.set_ylabel("score")
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_title(_calib_title(r.label if len(runs) > 1 else os.path.basename(os.path.normpath(r.dir)), c),
                     fontsize=10)
        ax.legend(handles=[Patch(facecolor=sel_color, edgecolor="#333333", label="selected (*)"),
                           Patch(facecolor=base_color, edgecolor="#333333", label="not selected")],
                  loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- main


def make_plots(run_dirs, out_dir=None, smooth=None):
    """Loads the runs and writes the figures; returns the list of paths written."""
    if not run_dirs:
        raise ToolError("no run directory given")
    for d in run_dirs:
        if not os.path.isdir(d):
            raise ToolError(f"{d}: not a directory")
    if smooth is not None and not 0.0 <= smooth < 1.0:
        raise ToolError(f"--smooth {smooth} must be in [0, 1)")
    labels = unique_labels(run_dirs)
    runs = [Run(d, lab) for d, lab in zip(run_dirs, labels)]
    out_dir = out_dir or run_dirs[0]
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ToolError(f"{out_dir}: cannot create: {e.strerror or e}") from None
    written = []
    p = os.path.join(out_dir, "curves.png")
    if plot_curves(runs, p, smooth):
        written.append(p)
    else:
        print("note: no train or eval records in any log: curves.png not written", file=sys.stderr)
    p = os.path.join(out_dir, "layer_scores.png")
    if plot_layer_scores(runs, p):
        written.append(p)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="plot.py",
        description="Plot training curves (curves.png) and calibration layer scores (layer_scores.png) "
                    "of actlora run directories.")
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directory holding log.jsonl")
    ap.add_argument("--out", default=None, metavar="DIR", help="output directory (default: the first RUN_DIR)")
    ap.add_argument("--smooth", type=float, default=None, metavar="W",
                    help="EMA weight in [0, 1) for the train loss (default: from the number of points)")
    args = ap.parse_args(argv)
    try:
        written = make_plots(args.run_dirs, args.out, args.smooth)
    except ToolError as e:
        print(f"plot: error: {e}", file=sys.stderr)
        return 2
    if not written:
        print("plot: error: nothing to plot (no train/eval records and no calibration)", file=sys.stderr)
        return 2
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
