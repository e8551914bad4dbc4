"""Tests for the pure parts of tools/results_minilm.py and tools/results_report.py (no training runs
here).

* mean ± sd aggregation (sample sd, ddof = 1; missing and non-finite values skipped) against numpy;
  aggregate() over synthetic run records: per-variant metric statistics, deltas and relative cost.
* Table formatting: markdown_table alignment and escaping, fmt_mean_sd, the layers-per-seed cell.
* Ranking stability across seeds and across tasks on synthetic score vectors: Kendall tau-b against
  scipy.stats.kendalltau, top-k Jaccard by hand (descending score, ties to the lower layer).
* The generated discussion: tasks where every variant sits at the majority class are called out
  as "no signal", and differences and costs are reported as measured.
* log.jsonl parsing: the last summary wins, the final eval is the one with the highest step,
  a truncated last line is skipped, a run without a summary is not done.

Run:  cd <repo> && python3 -m pytest -q tests/python/test_results_minilm.py
"""

import itertools
import json
import math
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
# rm: the command (options, run records); rr: the report (aggregation, tables, stability, discussion)
import results_minilm as rm  # noqa: E402
import results_report as rr  # noqa: E402


# ----------------------------------------------------------------------------- aggregation


def test_mean_sd_matches_numpy():
    x = [0.91, 0.88, 0.905]
    m, sd, n = rr.mean_sd(x)
    assert n == 3
    assert m == pytest.approx(np.mean(x))
    assert sd == pytest.approx(np.std(x, ddof=1))


def test_mean_sd_skips_missing_and_small_n():
    m, sd, n = rr.mean_sd([0.5, None, float("nan")])
    assert (m, n) == (0.5, 1) and math.isnan(sd)
    m, sd, n = rr.mean_sd([])
    assert n == 0 and math.isnan(m) and math.isnan(sd)


def _run(task, variant, seed, metrics, wall, train, world=2, params=1000):
    return {"task": task, "variant": variant, "seed": seed, "metrics": metrics, "main": None,
            "trainable_params": params, "wall_s": wall, "wall_x_ranks_s": wall * world,
            "train_x_ranks_s": train, "calib_x_ranks_s": 0.0, "eval_x_ranks_s": 1.0,
            "selected": None if variant == "all" else [3, 4, 5]}


def test_aggregate_stats_delta_and_relative_cost():
    runs = []
    acc_all, acc_act = [0.90, 0.92, 0.91], [0.89, 0.90, 0.92]
    wall_all, wall_act = [10.0, 12.0, 11.0], [6.0, 7.0, 5.0]
    for s in range(3):
        runs.append(_run("SST-2", "all", s + 1, {"accuracy": acc_all[s]}, wall_all[s], 8.0, params=2000))
        runs.append(_run("SST-2", "act", s + 1, {"accuracy": acc_act[s]}, wall_act[s], 4.0))
    agg = rr.aggregate(runs, ["SST-2"], ["all", "act"])
    a, b = agg[("SST-2", "all")], agg[("SST-2", "act")]
    assert a["n"] == b["n"] == 3
    assert a["metrics"]["accuracy"][0] == pytest.approx(np.mean(acc_all))
    assert b["metrics"]["accuracy"][1] == pytest.approx(np.std(acc_act, ddof=1))
    assert b["metrics_delta"]["accuracy"] == pytest.approx(np.mean(acc_act) - np.mean(acc_all))
    assert a["rel_wall_x_ranks_s"] == pytest.approx(1.0)
    assert b["rel_wall_x_ranks_s"] == pytest.approx(np.mean(wall_act) / np.mean(wall_all))
    assert b["rel_train_x_ranks_s"] == pytest.approx(0.5)
    assert a["trainable_params"][0] == 2000 and b["trainable_params"][0] == 1000
    assert b["selected"] == {1: [3, 4, 5], 2: [3, 4, 5], 3: [3, 4, 5]}


def test_aggregate_mrpc_both_metrics_and_missing_baseline():
    runs = [_run("MRPC", "act", 1, {"f1": 0.85, "accuracy": 0.78}, 5.0, 2.0)]
    agg = rr.aggregate(runs, ["MRPC"], ["all", "act"])
    b = agg[("MRPC", "act")]
    assert set(b["metrics"]) == {"f1", "accuracy"}
    assert b["metrics"]["f1"][0] == pytest.approx(0.85)
    assert math.isnan(b["metrics"]["f1"][1])  # one seed: no sd
    assert math.isnan(b["rel_wall_x_ranks_s"])  # no (a) run to compare with
    assert agg[("MRPC", "all")]["n"] == 0


# ----------------------------------------------------------------------------- formatting


def test_fmt_mean_sd():
    assert rr.fmt_mean_sd(0.9123, 0.0046, 1, 100) == "91.2 ± 0.5"
    assert rr.fmt_mean_sd(0.9123, float("nan"), 1, 100) == "91.2"
    assert rr.fmt_mean_sd(float("nan"), 0.1) == "-"
    assert rr.fmt_mean_sd(-0.0123, 0.02, 2, 100) == "-1.23 ± 2.00"
    assert rr.fmt_signed(-0.0123, 1, 100) == "-1.2"
    assert rr.fmt_ratio(0.5) == "0.50×"
    assert rr.fmt_int(22713.0) == "22,713"
    assert rr.fmt_layers_per_seed({2: [0, 4, 5], 1: [3, 4, 5], 3: None}) == "3,4,5 / 0,4,5 / ?"


def test_markdown_table_layout():
    t = rr.markdown_table(["variant", "acc"], [["(a) all", "91.2 ± 0.5"], ["x|y", "1"]])
    lines = t.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("| variant") and lines[0].endswith("|")
    assert lines[1].split("|")[1].strip().startswith(":")      # left-aligned first column
    assert lines[1].split("|")[2].strip().endswith(":")        # right-aligned numbers
    assert "x\\|y" in lines[3]                                 # '|' escaped inside a cell
    assert len({len(l) for l in lines}) == 1                   # columns padded to one width
    with pytest.raises(ValueError):
        rr.markdown_table(["a", "b"], [["only one"]])


def test_n_selected_matches_fraction_rule():
    assert rm.n_selected(6) == 3
    assert rm.n_selected(4) == 2
    assert rm.n_selected(5) == 3      # halves round up
    assert rm.n_selected(1) == 1
    assert rm.n_selected(12) == 6


# ----------------------------------------------------------------------------- stability


def _top(scores, k):
    order = sorted(range(len(scores)), key=lambda l: (-scores[l], l))
    return set(order[:k])


def test_stability_across_seeds_vs_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(7)
    L, k = 6, 3
    scores = {t: {s: rng.normal(size=L) for s in (1, 2, 3)} for t in ("SST-2", "MRPC", "CoLA")}
    scores["CoLA"][3] = np.round(scores["CoLA"][3], 0)  # ties
    res = rr.stability_across_seeds(scores, k)
    pooled_tau, pooled_j = [], []
    for t, by_seed in scores.items():
        taus, js = [], []
        for a, b in itertools.combinations(sorted(by_seed), 2):
            taus.append(stats.kendalltau(by_seed[a], by_seed[b]).statistic)
            ta, tb = _top(list(by_seed[a]), k), _top(list(by_seed[b]), k)
            js.append(len(ta & tb) / len(ta | tb))
        assert res[t]["n"] == 3
        assert res[t]["tau_mean"] == pytest.approx(np.mean(taus), abs=1e-12)
        assert res[t]["tau_min"] == pytest.approx(np.min(taus), abs=1e-12)
        assert res[t]["jaccard_mean"] == pytest.approx(np.mean(js), abs=1e-12)
        pooled_tau += taus
        pooled_j += js
    assert res["_all"]["n"] == 9
    assert res["_all"]["tau_mean"] == pytest.approx(np.mean(pooled_tau), abs=1e-12)
    assert res["_all"]["jaccard_min"] == pytest.approx(np.min(pooled_j), abs=1e-12)


def test_stability_across_tasks_pairs_same_seed():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(11)
    tasks = ["CoLA", "MRPC", "SST-2"]
    scores = {t: {s: rng.random(6) for s in (1, 2)} for t in tasks}
    res = rr.stability_across_tasks(scores, 3)
    allt = []
    for s in (1, 2):
        taus = [stats.kendalltau(scores[a][s], scores[b][s]).statistic
                for a, b in itertools.combinations(tasks, 2)]
        assert res[s]["n"] == 3
        assert res[s]["tau_mean"] == pytest.approx(np.mean(taus), abs=1e-12)
        allt += taus
    assert res["_all"]["n"] == 6
    assert res["_all"]["tau_mean"] == pytest.approx(np.mean(allt), abs=1e-12)


def test_stability_identical_and_reversed():
    x = np.array([0.1, 0.5, 0.3, 0.9, 0.7, 0.2])
    same = rr.stability_across_seeds({"T": {1: x, 2: x.copy(), 3: x * 2}}, 3)["T"]
    assert same["tau_mean"] == pytest.approx(1.0) and same["jaccard_mean"] == pytest.approx(1.0)
    rev = rr.pair_stability([x, -x], 3)
    assert rev[0]["tau"] == pytest.approx(-1.0)
    assert rev[0]["jaccard"] == pytest.approx(0.0)   # top 3 of x and of -x are disjoint


def test_stability_tie_break_lower_layer():
    # equal scores: the lower layer wins, as in the C program's ranking
    a = np.array([1.0, 1.0, 1.0, 0.0])
    b = np.array([0.0, 1.0, 1.0, 1.0])
    p = rr.pair_stability([a, b], 2)[0]
    assert p["jaccard"] == pytest.approx(len({0, 1} & {1, 2}) / len({0, 1} | {1, 2}))


def test_stability_table_rows():
    x = np.arange(6, dtype=float)
    st = {"act": {"seeds": rr.stability_across_seeds({"A": {1: x, 2: x}}, 3),
                  "tasks": rr.stability_across_tasks({"A": {1: x}, "B": {1: x}}, 3)},
          "rand": {"seeds": rr.stability_across_seeds({"A": {1: x, 2: -x}}, 3), "tasks": {}}}
    t = rr.stability_table(st, ["A"], 3)
    lines = t.splitlines()
    assert "τ_b activation" in lines[0] and "J@3 random" in lines[0]
    row = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert row[:2] == ["A: across seeds", "1"]
    assert row[2] == "1.00 (1.00)" and row[3] == "-1.00 (-1.00)"
    assert "by construction" in lines[-1]


# ----------------------------------------------------------------------------- logs


def test_run_summary_from_log(tmp_path):
    log = tmp_path / "log.jsonl"
    recs = [
        {"type": "start", "world": 2},
        {"type": "calibration", "method": "activation", "scores": [1, 2, 3, 4, 5, 6], "selected": [3, 4, 5]},
        {"type": "eval", "step": 50, "split": "dev", "metrics": {"f1": 0.5, "accuracy": 0.6}, "main": 0.55},
        {"type": "eval", "step": 100, "split": "dev", "metrics": {"f1": 0.8, "accuracy": 0.7}, "main": 0.75},
        {"type": "summary", "steps": 100, "trainable_params": 123, "adapters": 18, "world": 2, "wall_s": 30.0,
         "device_hours": 0.0167, "ledger_s": {"forward": 10, "backward": 5, "optimizer": 1, "communication": 2,
                                             "calibration": 3, "eval": 8, "load": 2}},
    ]
    log.write_text("\n".join(json.dumps(r) for r in recs) + "\n{\"type\": \"trai")  # truncated last line
    s = rm.run_summary(rm.read_records(str(log)))
    assert s["metrics"] == {"f1": 0.8, "accuracy": 0.7}
    assert s["wall_x_ranks_s"] == pytest.approx(60.0)
    assert s["train_x_ranks_s"] == pytest.approx(18.0)
    assert s["calib_x_ranks_s"] == pytest.approx(3.0)
    assert s["trainable_params"] == 123
    assert s["calibration"]["selected"] == [3, 4, 5]


def test_run_without_summary_is_not_done(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"type": "start", "world": 2}) + "\n")
    assert rm.run_summary(rm.read_records(str(log))) is None
    assert rm.read_records(str(tmp_path / "missing.jsonl")) == []


def test_parse_steps_and_majority():
    tasks = ["SST-2", "MRPC"]
    assert rm.parse_steps("50", tasks, {}) == {"SST-2": 50, "MRPC": 50}
    assert rm.parse_steps("MRPC=7", tasks, {"SST-2": 1, "MRPC": 2}) == {"SST-2": 1, "MRPC": 7}
    with pytest.raises(rm.Error):
        rm.parse_steps("QQP=3", tasks, {})
    b = rr.majority_baselines([1, 1, 1, 0])
    assert b["accuracy"] == pytest.approx(0.75)
    assert b["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1))
    assert b["matthews"] == 0.0


# ----------------------------------------------------------------------------- discussion


def _agg_for(task, values_by_variant, metric):
    runs = []
    for v, vals in values_by_variant.items():
        for s, x in enumerate(vals, 1):
            r = _run(task, v, s, {metric: x}, 10.0 if v == "all" else 6.0, 4.0 if v == "all" else 2.0,
                     params=2000 if v == "all" else 1000)
            runs.append(r)
    return rr.aggregate(runs, [task], list(values_by_variant))


def test_at_majority_and_discussion_statements():
    flat = _agg_for("CoLA", {"all": [0.0, 0.0, 0.0], "act": [0.0, 0.0, 0.0]}, "matthews")
    assert rr.at_majority(flat, "CoLA", ["all", "act"], 0.0)
    text = " ".join(rr.discussion(flat, {}, ["CoLA"], ["all", "act"], {"CoLA": {"matthews": 0.0}}, 3, False))
    assert "No signal on CoLA" in text and "not tested" in text

    sst = _agg_for("SST-2", {"all": [0.85, 0.86, 0.84], "act": [0.80, 0.81, 0.79]}, "accuracy")
    assert not rr.at_majority(sst, "SST-2", ["all", "act"], 0.509)
    text = " ".join(rr.discussion(sst, {}, ["SST-2"], ["all", "act"], {"SST-2": {"accuracy": 0.509}}, 3, False))
    assert "SST-2 -5.0" in text                     # b - a in points, reported as measured
    assert "at most 1 point below (a) on 0 of 1" in text
    assert "0.60× overall" in text                  # relative cost of (b): 6 s / 10 s
    assert "0.50× of (a)'s parameters" in text
