"""Tests for tools/rank_stability.py (pairwise stability of calibration layer rankings).

* calibration.h5 files written here with h5py in the C program's exact layout (root
  attributes as fixed- and variable-length strings, scores / rank / order / selected /
  sums / tokens / per_rank_* datasets) and plain-text ranking files.
* Kendall tau-b and Spearman rho against scipy.stats.kendalltau / spearmanr on random
  scores with and without ties (those comparisons skip when scipy is missing), average
  ranks against scipy.stats.rankdata.
* Top-k Jaccard by hand, with the tie-break (descending score, then lower layer index),
  the default k (size of `selected`, the larger of the two) and --k.
* Identical rankings give 1/1/1, reversed ones -1/-1; the summary's mean and min.
* Errors: mismatched layer counts, num_layers attribute vs scores, bad text lines,
  --labels count, --k out of range, a single input.

Run:  cd <repo> && python3 -m pytest -q tests/python/test_rank_stability.py
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "rank_stability.py"
sys.path.insert(0, str(ROOT / "tools"))
import rank_stability as rs  # noqa: E402


# ----------------------------------------------------------------------------- helpers


def c_order(scores):
    """The C program's calib_rank: descending score, ties by lower layer (insertion sort)."""
    order = list(range(len(scores)))
    for i in range(1, len(order)):
        x = order[i]
        j = i - 1
        while j >= 0 and (scores[order[j]] < scores[x] or (scores[order[j]] == scores[x] and order[j] > x)):
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = x
    return order


def write_calib(path, scores, selected=None, k=None, vlen=False, world=2, method="activation",
                num_layers=None, fmt="actlora-calibration"):
    """A calibration.h5 in the C program's layout; selected defaults to the top-k (k = L // 4)."""
    h5py = pytest.importorskip("h5py")
    scores = np.asarray(scores, dtype=np.float64)
    L = scores.size
    order = c_order(list(scores))
    rank = np.empty(L, dtype=np.int32)
    rank[order] = np.arange(L, dtype=np.int32)
    if selected is None:
        k = k or max(1, L // 4)
        selected = sorted(order[:k])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def s(v):  # fixed-length (C: H5T_C_S1 with a size) or variable-length strings
        return v if vlen else np.bytes_(v.encode())

    rng = np.random.default_rng(L)
    with h5py.File(path, "w") as f:
        a = f.attrs
        a["format"] = s(fmt)
        a["format_version"] = np.int32(1)
        a["method"] = s(method)
        a["probe"] = s("block_output")
        a["rule"] = s("top_k")
        a["k"] = np.int32(len(selected))
        a["fraction"] = np.float64(0.25)
        a["threshold"] = np.float64(0.9)
        a["batches"] = np.int32(4)
        a["world"] = np.int32(world)
        a["seed"] = np.int64(1234)
        a["model_path"] = s("/models/tiny-llama")
        a["task"] = s("SST-2")
        a["target_modules"] = s("q_proj,v_proj")
        a["num_layers"] = np.int32(L if num_layers is None else num_layers)
        a["stats_hash"] = s("0123456789abcdef")
        f["scores"] = scores
        f["rank"] = rank
        f["order"] = np.asarray(order, dtype=np.int32)
        f["selected"] = np.asarray(sorted(selected), dtype=np.int32)
        per_rank = rng.random((world, L, 8))
        f["sums"] = per_rank.sum(axis=0)
        f["tokens"] = np.array([1000.0 * world])
        f["per_rank_sums"] = per_rank
        f["per_rank_tokens"] = np.full(world, 1000.0)
    return path


def write_text(path, scores, header=True):
    path = Path(path)
    with open(path, "w") as f:
        if header:
            f.write("# layer scores, layer 0 first\n\n")
        for v in scores:
            f.write(f"{float(v)!r}\n")
    return path


def run_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True)


def jaccard_by_hand(sa, sb, k):
    ta = set(c_order(list(sa))[:k])
    tb = set(c_order(list(sb))[:k])
    return len(ta & tb) / len(ta | tb)


# ----------------------------------------------------------------------------- statistics vs scipy


def _random_pairs():
    rng = np.random.default_rng(20240601)
    for L in (2, 3, 5, 8, 16, 24, 32, 80):
        for _ in range(6):
            yield rng.random(L), rng.random(L)                       # no ties
            yield rng.integers(0, 4, L).astype(float), rng.integers(0, 5, L).astype(float)  # heavy ties
            x = rng.random(L)
            yield x, np.round(x + rng.normal(0, 0.2, L), 1)           # correlated, ties in y only


@pytest.mark.filterwarnings("ignore:An input array is constant")
def test_kendall_and_spearman_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    n = 0
    for x, y in _random_pairs():
        want_tau = stats.kendalltau(x, y).statistic
        want_rho = stats.spearmanr(x, y).statistic
        got_tau = rs.kendall_tau_b(x, y)
        got_rho = rs.spearman_rho(x, y)
        if math.isnan(want_tau):
            assert math.isnan(got_tau)
        else:
            assert got_tau == pytest.approx(want_tau, abs=1e-12), (x, y)
        if math.isnan(want_rho):
            assert math.isnan(got_rho)
        else:
            assert got_rho == pytest.approx(want_rho, abs=1e-12), (x, y)
        n += 1
    assert n > 100


def test_average_ranks_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(7)
    for L in (1, 2, 7, 33):
        for x in (rng.random(L), rng.integers(0, 3, L).astype(float)):
            np.testing.assert_array_equal(rs.average_ranks(x), stats.rankdata(x, method="average"))


def test_tau_b_by_hand_with_ties():
    x = [1, 2, 2, 3]
    y = [1, 3, 2, 2]
    # S: (0,1)=+1 (0,2)=+1 (0,3)=+1 (1,2)=0 (1,3)=-1 (2,3)=0 -> 2; n0=6, n1=1, n2=1
    assert rs.kendall_tau_b(x, y) == pytest.approx(2 / math.sqrt(5 * 5))
    # ranks x: 1, 2.5, 2.5, 4; y: 1, 4, 2.5, 2.5 -> centred: -1.5 0 0 1.5 / -1.5 1.5 0 0
    assert rs.spearman_rho(x, y) == pytest.approx(2.25 / 4.5)


def test_identical_reversed_and_constant():
    s = np.array([0.3, 0.9, 0.1, 0.5, 0.7])
    assert rs.kendall_tau_b(s, s) == 1.0
    assert rs.spearman_rho(s, s) == 1.0
    assert rs.kendall_tau_b(s, -s) == -1.0
    assert rs.spearman_rho(s, -s) == -1.0
    assert math.isnan(rs.kendall_tau_b(s, np.ones(5)))
    assert math.isnan(rs.spearman_rho(s, np.ones(5)))
    assert math.isnan(rs.kendall_tau_b([1.0], [2.0]))


def test_top_k_tie_break_matches_c_rule():
    s = [0.5, 0.9, 0.9, 0.1, 0.5, 0.5]
    assert list(rs.ranking_order(s)) == c_order(s) == [1, 2, 0, 4, 5, 3]
    assert rs.top_k(s, 2) == {1, 2}
    assert rs.top_k(s, 3) == {0, 1, 2}          # 0 beats 4 and 5 on the tie
    assert rs.top_k(s, 4) == {0, 1, 2, 4}
    rng = np.random.default_rng(3)
    for _ in range(50):
        x = rng.integers(0, 4, 12).astype(float)
        assert list(rs.ranking_order(x)) == c_order(list(x))
    with pytest.raises(ValueError):
        rs.top_k(s, 0)
    with pytest.raises(ValueError):
        rs.top_k(s, 7)


# ----------------------------------------------------------------------------- files


def test_load_calibration_fixed_and_vlen_strings(tmp_path):
    s = np.linspace(0.1, 1.6, 16)
    for vlen in (False, True):
        p = write_calib(tmp_path / f"v{int(vlen)}" / "calibration.h5", s, k=4, vlen=vlen)
        r = rs.load_ranking(str(p))
        assert r.kind == "hdf5"
        assert r.label == f"v{int(vlen)}"
        assert r.num_layers == 16
        np.testing.assert_array_equal(r.scores, s)
        assert r.selected == [12, 13, 14, 15]
        assert r.attrs["method"] == "activation" and r.attrs["task"] == "SST-2"
        assert r.attrs["num_layers"] == 16 and isinstance(r.attrs["num_layers"], int)
        # a run dir is accepted in place of its calibration.h5
        assert rs.load_ranking(str(p.parent)).selected == r.selected


def test_identical_gives_one_one_one(tmp_path):
    s = np.random.default_rng(1).random(12)
    a = write_calib(tmp_path / "a" / "calibration.h5", s, k=3)
    b = write_calib(tmp_path / "b" / "calibration.h5", s, k=3, vlen=True)
    t = write_text(tmp_path / "c.txt", s)
    res = rs.compare([rs.load_ranking(str(p)) for p in (a, b, t)])
    assert len(res["pairs"]) == 3
    for p in res["pairs"]:
        assert (p["kendall_tau_b"], p["spearman_rho"], p["jaccard"], p["k"]) == (1.0, 1.0, 1.0, 3)
    for m in ("kendall_tau_b", "spearman_rho", "jaccard"):
        assert res["summary"][m]["mean"] == 1.0 and res["summary"][m]["min"] == 1.0

    r = run_tool(a, b, t, "--json", tmp_path / "out.json")
    assert r.returncode == 0, r.stderr
    assert "a" in r.stdout and "b" in r.stdout and "c" in r.stdout
    assert r.stdout.count("1.0000") >= 9
    data = json.loads((tmp_path / "out.json").read_text())
    assert [p["jaccard"] for p in data["pairs"]] == [1.0, 1.0, 1.0]
    assert data["num_layers"] == 12


def test_reversed_gives_minus_one(tmp_path):
    s = np.arange(10, dtype=float) / 10
    a = write_calib(tmp_path / "a" / "calibration.h5", s, k=5)
    b = write_calib(tmp_path / "b" / "calibration.h5", s[::-1].copy(), k=5)
    r = run_tool(a, b, "--json", "-")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)["pairs"][0]
    assert p["kendall_tau_b"] == pytest.approx(-1.0)
    assert p["spearman_rho"] == pytest.approx(-1.0)
    assert p["jaccard"] == 0.0 and (p["intersection"], p["union"]) == (0, 10)


def test_jaccard_by_hand_and_default_k(tmp_path):
    sa = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]   # top: 0 1 2 3 ...
    sb = [0.9, 0.1, 0.7, 0.2, 0.8, 0.6, 0.3, 0.4]   # top: 0 4 2 5 7 6 3 1
    a = write_calib(tmp_path / "a" / "calibration.h5", sa, selected=[0, 1])        # k 2
    b = write_calib(tmp_path / "b" / "calibration.h5", sb, selected=[0, 2, 4])     # k 3
    ra, rb = rs.load_ranking(str(a)), rs.load_ranking(str(b))
    p = rs.compare([ra, rb])["pairs"][0]
    # default k = the larger selection (3): {0,1,2} vs {0,4,2} -> 2 / 4
    assert p["k"] == 3
    assert p["jaccard"] == pytest.approx(0.5) == pytest.approx(jaccard_by_hand(sa, sb, 3))
    assert (p["intersection"], p["union"]) == (2, 4)
    # --k 4: {0,1,2,3} vs {0,4,2,5} -> 2 / 6
    p = rs.compare([ra, rb], k=4)["pairs"][0]
    assert p["k"] == 4 and p["jaccard"] == pytest.approx(2 / 6)
    # --k 1: {0} vs {0}
    assert rs.compare([ra, rb], k=1)["pairs"][0]["jaccard"] == 1.0
    r = run_tool(a, b, "--k", 4, "--labels", "first,second")
    assert r.returncode == 0, r.stderr
    assert "first" in r.stdout and "second" in r.stdout and "0.3333" in r.stdout and "2/6" in r.stdout


def test_random_files_against_scipy_and_hand_jaccard(tmp_path):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(11)
    L = 32
    base = rng.random(L)
    scores = [base + rng.normal(0, 0.15, L) for _ in range(3)]
    scores.append(np.round(base, 1))  # with ties
    paths = [write_calib(tmp_path / f"r{i}" / "calibration.h5", s, k=6 + i, vlen=bool(i % 2))
             for i, s in enumerate(scores)]
    r = run_tool(*paths, "--json", tmp_path / "o.json")
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "o.json").read_text())
    assert len(data["pairs"]) == 6
    taus, rhos, jacs = [], [], []
    for p in data["pairs"]:
        i, j = int(p["a"][1:]), int(p["b"][1:])
        tau = stats.kendalltau(scores[i], scores[j]).statistic
        rho = stats.spearmanr(scores[i], scores[j]).statistic
        k = max(6 + i, 6 + j)
        jac = jaccard_by_hand(scores[i], scores[j], k)
        assert p["kendall_tau_b"] == pytest.approx(tau, abs=1e-12)
        assert p["spearman_rho"] == pytest.approx(rho, abs=1e-12)
        assert p["k"] == k and p["jaccard"] == pytest.approx(jac)
        taus.append(tau)
        rhos.append(rho)
        jacs.append(jac)
    s = data["summary"]
    assert s["kendall_tau_b"]["mean"] == pytest.approx(np.mean(taus))
    assert s["kendall_tau_b"]["min"] == pytest.approx(np.min(taus))
    assert s["spearman_rho"]["mean"] == pytest.approx(np.mean(rhos))
    assert s["spearman_rho"]["min"] == pytest.approx(np.min(rhos))
    assert s["jaccard"]["mean"] == pytest.approx(np.mean(jacs))
    assert s["jaccard"]["min"] == pytest.approx(np.min(jacs))
    assert "mean (6 pairs)" in r.stdout and "min (6 pairs)" in r.stdout


def test_text_files_without_hdf5(tmp_path):
    sa = [3.0, 1.0, 2.0, 5.0, 4.0]
    sb = [3.0, 2.0, 1.0, 5.0, 4.0]
    a = write_text(tmp_path / "a.txt", sa)
    b = write_text(tmp_path / "b.txt", sb, header=False)
    r = run_tool(a, b, "--json", "-")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)["pairs"][0]
    assert p["kendall_tau_b"] == pytest.approx(0.8)       # one discordant pair of 10
    assert p["spearman_rho"] == pytest.approx(0.9)        # 1 - 6*2/(5*24)
    assert p["k"] is None and p["jaccard"] is None         # no selection, no --k
    r = run_tool(a, b)
    assert r.returncode == 0 and "pass --k" in r.stdout
    r = run_tool(a, b, "--k", 2, "--json", "-")
    p = json.loads(r.stdout)["pairs"][0]
    assert p["jaccard"] == 1.0                              # {3, 4} both
    assert rs.top_k(sa, 4) == {0, 2, 3, 4} and rs.top_k(sb, 4) == {0, 1, 3, 4}
    r = run_tool(a, b, "--k", 4, "--json", "-")
    assert json.loads(r.stdout)["pairs"][0]["jaccard"] == pytest.approx(3 / 5)


def test_mixed_text_and_hdf5_uses_the_hdf5_selection(tmp_path):
    s = np.array([0.1, 0.4, 0.3, 0.2, 0.9, 0.8])
    a = write_calib(tmp_path / "run" / "calibration.h5", s, selected=[4, 5])
    t = write_text(tmp_path / "t.txt", s[::-1])
    p = rs.compare([rs.load_ranking(str(a)), rs.load_ranking(str(t))])["pairs"][0]
    assert p["k"] == 2
    assert p["jaccard"] == pytest.approx(jaccard_by_hand(s, s[::-1], 2))


# ----------------------------------------------------------------------------- errors


def test_error_on_mismatched_layer_counts(tmp_path):
    a = write_calib(tmp_path / "a" / "calibration.h5", np.random.default_rng(0).random(16))
    b = write_calib(tmp_path / "b" / "calibration.h5", np.random.default_rng(0).random(12))
    r = run_tool(a, b)
    assert r.returncode == 2
    assert "layer count mismatch" in r.stderr and "16" in r.stderr and "12" in r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(rs.ToolError, match="mismatch"):
        rs.compare([rs.load_ranking(str(a)), rs.load_ranking(str(b))])
    t = write_text(tmp_path / "t.txt", [1.0, 2.0, 3.0])
    r = run_tool(a, t)
    assert r.returncode == 2 and "layer count mismatch" in r.stderr


def test_other_errors(tmp_path):
    s = np.random.default_rng(0).random(8)
    a = write_calib(tmp_path / "a" / "calibration.h5", s)
    b = write_calib(tmp_path / "b" / "calibration.h5", s)
    bad_nl = write_calib(tmp_path / "c" / "calibration.h5", s, num_layers=9)
    bad_fmt = write_calib(tmp_path / "d" / "calibration.h5", s, fmt="something-else")
    bad_txt = tmp_path / "bad.txt"
    bad_txt.write_text("0.5\n0.7 0.2\n")
    empty_txt = tmp_path / "empty.txt"
    empty_txt.write_text("# nothing\n")
    cases = [
        ((a,), "at least two"),
        ((a, bad_nl), "num_layers"),
        ((a, bad_fmt), "format"),
        ((a, bad_txt), "bad.txt:2"),
        ((a, empty_txt), "no scores"),
        ((a, tmp_path / "missing.h5"), "no such file"),
        ((a, b, "--labels", "x"), "--labels"),
        ((a, b, "--k", 9), "out of range"),
        ((a, b, "--k", 0), "out of range"),
    ]
    for args, msg in cases:
        r = run_tool(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert msg in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_tool_does_not_import_scipy():
    src = TOOL.read_text()
    assert "import scipy" not in src and "from scipy" not in src
    code = ("import sys; sys.modules['scipy'] = None; sys.path.insert(0, %r); import rank_stability as r; "
            "print(r.kendall_tau_b([1, 2, 3], [1, 3, 2]))" % str(ROOT / "tools"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == pytest.approx(1 / 3)
