"""Tests for tools/plot.py (curves.png and layer_scores.png of actlora run dirs).

* A synthetic log.jsonl (start, calibration, train, eval, summary records) of a run that
  was resumed: the second "start" re-logs steps already in the log, and the last record
  per (type, step, split) must win.  A calibration.h5 in the C program's layout.
* The tool as a subprocess: both PNGs written into the run dir (or --out), valid PNG
  signature and IHDR, non-trivial size, paths printed; several run dirs at once.
* The loader as imported functions: dedup, eval splits and metric name, the calibration
  record fallback, a torn last line, C-style nan values.
* Errors: missing log, empty log, not a directory, nothing to plot.

Run:  cd <repo> && python3 -m pytest -q tests/python/test_plot.py
"""

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("matplotlib")
h5py = pytest.importorskip("h5py")

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "plot.py"
sys.path.insert(0, str(ROOT / "tools"))
import plot  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- helpers


def train_rec(step, loss, total=200):
    return {"type": "train", "step": step, "total_steps": total, "epoch": step // 100, "loss": loss,
            "lr": 1e-4, "grad_norm": 1.2, "tokens_per_s": 5000.0, "elapsed_s": 0.1 * step}


def eval_rec(step, acc, split="dev"):
    return {"type": "eval", "step": step, "split": split, "metrics": {"accuracy": acc}, "main": acc}


def layer_scores(L, seed=0):
    return np.random.default_rng(seed).random(L) + np.linspace(0.0, 0.5, L)


def make_run(d, L=16, task="SST-2", k=4, with_h5=True, loss_offset=0.0, seed=0):
    """A run dir: first run steps 10..120 (evals 50, 100), then a resume from step 100 that
    re-logs 100..120 with different values and continues to 200 (evals 100, 150, 200)."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scores = layer_scores(L, seed)
    order = np.lexsort((np.arange(L), -scores))
    rank = np.empty(L, dtype=np.int32)
    rank[order] = np.arange(L)
    selected = sorted(int(v) for v in order[:k])
    recs = [{"type": "start", "world": 2, "task": task, "model": "/models/tiny", "config_hash": "c0ffee"},
            {"type": "calibration", "method": "activation", "probe": "block_output", "scores": scores.tolist(),
             "rank": rank.tolist(), "selected": selected}]
    for step in range(10, 121, 10):
        recs.append(train_rec(step, 1.0 - step / 400 + loss_offset + 0.02 * rng.standard_normal()))
        if step in (50, 100):
            recs.append(eval_rec(step, 0.60 + step / 1000))
    recs.append({"type": "start", "world": 2, "task": task, "model": "/models/tiny", "config_hash": "c0ffee"})
    for step in range(100, 201, 10):
        recs.append(train_rec(step, 0.5 - step / 1000 + loss_offset))
        if step in (100, 150, 200):
            recs.append(eval_rec(step, 0.70 + step / 1000))
    recs.append({"type": "summary", "steps": 200, "best": {"step": 200, "main": 0.9}})
    with open(d / "log.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    if with_h5:
        with h5py.File(d / "calibration.h5", "w") as f:
            a = f.attrs
            a["format"] = np.bytes_(b"actlora-calibration")
            a["format_version"] = np.int32(1)
            a["method"] = np.bytes_(b"activation")
            a["probe"] = "block_output"          # variable-length string
            a["rule"] = np.bytes_(b"top_k")
            a["k"] = np.int32(k)
            a["fraction"] = 0.25
            a["threshold"] = 0.9
            a["batches"] = np.int32(4)
            a["world"] = np.int32(2)
            a["seed"] = np.int64(1)
            a["model_path"] = "/models/tiny"
            a["task"] = task
            a["target_modules"] = "q_proj,v_proj"
            a["num_layers"] = np.int32(L)
            a["stats_hash"] = "abc123"
            f["scores"] = scores
            f["rank"] = rank
            f["order"] = order.astype(np.int32)
            f["selected"] = np.array(selected, dtype=np.int32)
            f["sums"] = np.ones((L, 8))
            f["tokens"] = np.array([100.0])
            f["per_rank_sums"] = np.ones((2, L, 8)) / 2
            f["per_rank_tokens"] = np.array([50.0, 50.0])
    return d


def run_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True)


def check_png(path, min_bytes=8000):
    path = Path(path)
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    assert w >= 400 and h >= 200, (w, h)
    assert len(data) >= min_bytes, (path, len(data))
    return w, h


# ----------------------------------------------------------------------------- tool


def test_single_run_writes_both_pngs(tmp_path):
    d = make_run(tmp_path / "sst2_act")
    r = run_tool(d)
    assert r.returncode == 0, r.stderr
    printed = r.stdout.split()
    assert printed == [str(d / "curves.png"), str(d / "layer_scores.png")]
    check_png(d / "curves.png")
    check_png(d / "layer_scores.png")


def test_several_runs_into_out_dir(tmp_path):
    a = make_run(tmp_path / "a" / "run", seed=1)
    b = make_run(tmp_path / "b" / "run", seed=2, loss_offset=0.1, with_h5=False)   # log record fallback
    c = make_run(tmp_path / "c_nocal", seed=3, loss_offset=0.2, with_h5=False)
    # drop the calibration record from c's log: no layer scores for c
    lines = [ln for ln in (c / "log.jsonl").read_text().splitlines() if '"calibration"' not in ln]
    (c / "log.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "figs" / "sub"
    r = run_tool(a, b, c, "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(out / "curves.png"), str(out / "layer_scores.png")]
    check_png(out / "curves.png")
    _, h2 = check_png(out / "layer_scores.png")
    assert not (a / "curves.png").exists()
    # two calibration panels (a from calibration.h5, b from its log record) -> taller than one
    r = run_tool(a, "--out", tmp_path / "one")
    assert r.returncode == 0, r.stderr
    _, h1 = check_png(tmp_path / "one" / "layer_scores.png")
    assert h2 > 1.5 * h1


def test_run_without_calibration_writes_curves_only(tmp_path):
    d = make_run(tmp_path / "run", with_h5=False)
    lines = [ln for ln in (d / "log.jsonl").read_text().splitlines() if '"calibration"' not in ln]
    (d / "log.jsonl").write_text("\n".join(lines) + "\n")
    r = run_tool(d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(d / "curves.png")]
    assert not (d / "layer_scores.png").exists()


def test_calibration_only_run(tmp_path):
    d = make_run(tmp_path / "run")
    lines = [ln for ln in (d / "log.jsonl").read_text().splitlines()
             if '"train"' not in ln and '"eval"' not in ln]
    (d / "log.jsonl").write_text("\n".join(lines) + "\n")
    r = run_tool(d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(d / "layer_scores.png")]
    assert "curves.png not written" in r.stderr


def test_errors(tmp_path):
    d = tmp_path / "nolog"
    d.mkdir()
    r = run_tool(d)
    assert r.returncode == 2 and "log.jsonl" in r.stderr and "no such file" in r.stderr
    (d / "log.jsonl").write_text("")
    r = run_tool(d)
    assert r.returncode == 2 and "empty log" in r.stderr
    (d / "log.jsonl").write_text("\n  \n")
    r = run_tool(d)
    assert r.returncode == 2 and "empty log" in r.stderr
    r = run_tool(tmp_path / "does_not_exist")
    assert r.returncode == 2 and "not a directory" in r.stderr
    (d / "log.jsonl").write_text(json.dumps({"type": "start", "task": "SST-2"}) + "\n")
    r = run_tool(d)
    assert r.returncode == 2 and "nothing to plot" in r.stderr
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- imported functions


def test_resumed_run_last_record_wins(tmp_path):
    d = make_run(tmp_path / "run")
    run = plot.Run(str(d))
    assert run.label == "run" and run.task == "SST-2"
    steps = list(run.train_steps)
    assert steps == list(range(10, 201, 10))                 # 100, 110, 120 once each
    loss = dict(zip(steps, run.train_loss))
    for s in (100, 110, 120, 150):
        assert loss[s] == pytest.approx(0.5 - s / 1000)      # the resumed run's values
    assert loss[50] != pytest.approx(0.5 - 50 / 1000)
    steps, vals = run.eval["dev"]
    assert list(steps) == [50, 100, 150, 200]
    assert vals[1] == pytest.approx(0.80)                     # resumed eval at 100 (not 0.70)
    assert run.metric_name == "accuracy"
    assert run.calib_record["selected"] == sorted(run.calib_record["selected"])


def test_dedup_keys():
    recs = [train_rec(1, 1.0), eval_rec(1, 0.5, "dev"), eval_rec(1, 0.4, "test"), train_rec(2, 0.9),
            {"type": "start"}, train_rec(1, 0.8), eval_rec(1, 0.6, "dev"), {"type": "start"}]
    out = plot.dedup(recs)
    train = {r["step"]: r["loss"] for r in out if r["type"] == "train"}
    assert train == {1: 0.8, 2: 0.9}
    ev = {(r["step"], r["split"]): r["main"] for r in out if r["type"] == "eval"}
    assert ev == {(1, "dev"): 0.6, (1, "test"): 0.4}
    assert sum(r["type"] == "start" for r in out) == 2        # records without a step are all kept


def test_torn_line_and_c_nan(tmp_path, capsys):
    d = tmp_path / "run"
    d.mkdir()
    with open(d / "log.jsonl", "w") as f:
        f.write(json.dumps({"type": "start", "task": "CoLA"}) + "\n")
        f.write('{"type":"train","step":10,"loss":0.7}\n')
        f.write('{"type":"train","step":20,"loss":nan,"grad_norm":inf}\n')
        f.write('{"type":"train","step":30,"loss":0.6}\n')
        f.write('{"type":"eval","step":30,"split":"dev","metrics":{"mcc":0.3,"accuracy":0.7},"main":0.3}\n')
        f.write('{"type":"train","step":40,"lo')                     # killed mid-write
    run = plot.Run(str(d))
    assert "not valid JSON" in capsys.readouterr().err
    assert list(run.train_steps) == [10, 20, 30]
    assert np.isnan(run.train_loss[1])
    assert run.metric_name == "mcc"
    sm = plot.ema(run.train_loss)
    assert np.isnan(sm[1]) and np.isfinite(sm[0]) and np.isfinite(sm[2])
    written = plot.make_plots([str(d)], str(tmp_path / "o"))
    assert [Path(p).name for p in written] == ["curves.png"]
    check_png(written[0], min_bytes=4000)


def test_ema():
    x = np.array([1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(plot.ema(x, 0.9), x)           # debiased: a constant stays constant
    x = np.array([0.0, 1.0, 2.0])
    np.testing.assert_allclose(plot.ema(x, 0.0), x)
    s = plot.ema(np.arange(100.0))
    assert np.all(np.diff(s) > 0) and s[-1] < 99.0            # smoothed lags the raw values


def test_calibration_from_h5_and_title(tmp_path):
    d = make_run(tmp_path / "run", L=24, k=6, task="MRPC")
    run = plot.Run(str(d))
    c = plot.run_calibration(run)
    assert c["source"].endswith("calibration.h5")
    assert (c["method"], c["probe"], c["rule"], c["k"], c["task"]) == ("activation", "block_output", "top_k",
                                                                        6, "MRPC")
    np.testing.assert_array_equal(c["scores"], layer_scores(24))
    assert len(c["selected"]) == 6
    title = plot._calib_title("run", c)
    assert "MRPC" in title and "method=activation" in title and "probe=block_output" in title
    assert "rule=top_k (k=6)" in title and "6/24" in title


def test_unique_labels(tmp_path):
    assert plot.unique_labels(["x/a", "y/b"]) == ["a", "b"]
    assert plot.unique_labels(["x/run", "y/run"]) == ["x/run", "y/run"]
