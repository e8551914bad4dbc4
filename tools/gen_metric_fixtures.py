#!/usr/bin/env python3
"""Write tests/fixtures/metrics.json: scikit-learn / scipy reference values for src/metrics.c.

What it is
    Seeded random (and hand-made degenerate) inputs with the reference outputs of
      sklearn.metrics.accuracy_score, f1_score (binary, pos_label=1, default zero_division),
      matthews_corrcoef, scipy.stats.pearsonr(...).statistic and spearmanr(...).statistic.
    tests/test_metrics.c reads the file and checks every case against the C functions.

    "classification": binary and 3-class label sets, n = 1, 2, 7, 100, 1000, random and
        noisy-correct predictions, and degenerate cases (all predictions one class, all gold
        one class, both one class, perfect, inverted, rotated, one class never predicted),
        plus one case with labels {-1, 3, 7} for the label-agnostic MCC. "f1" is
        f1_score(gold, pred) where every label is 0 or 1, and otherwise (sklearn's binary F1
        refuses other label sets) f1_score(gold, pred, labels=[1], average=None)[0]: the F1 of
        class 1 with every other label negative, which is what metrics_f1 computes.
    "regression": float32 pairs (stored as the exact float64 value of each float32, and
        scored by scipy in float64, which is what the C code does with float inputs): without
        ties, with ties (values rounded to 1 decimal, STS-B style, or 2-valued), n = 2, 3, 7,
        100, 1000, monotone non-linear, anti-correlated, large offset, and constant inputs.
        NaN references (scipy's answer for a constant input) are stored as null.
    "meta": versions, seed, the regeneration command.

    Floats are written with json.dumps, i.e. Python's repr: the shortest string that reads
    back as the same double, so the references are exact.

Regenerate (from the repository root; needs numpy, scipy, scikit-learn from PyPI):

    pip install scikit-learn scipy
    python3 tools/gen_metric_fixtures.py

Versions used for the committed file (also recorded in its "meta"): Python 3.11.7,
numpy 2.4.6, scipy 1.17.1, scikit-learn 1.9.1. The output depends only on numpy's seeded
PCG64 generator and these libraries; with the same versions it is byte-identical.
"""
import json
import platform
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy
import scipy.stats
import sklearn
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

SEED = 20240611
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "metrics.json"


def fnum(v):
    """A Python float for JSON, None for NaN."""
    v = float(v)
    return None if np.isnan(v) else v


def cls_case(name, pred, gold):
    pred = [int(v) for v in pred]
    gold = [int(v) for v in gold]
    assert len(pred) == len(gold) >= 1
    case = {"name": name, "n": len(pred), "pred": pred, "gold": gold}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # UndefinedMetricWarning for F1 0/0
        case["accuracy"] = float(accuracy_score(gold, pred))
        if set(pred) | set(gold) <= {0, 1}:
            case["f1"] = float(f1_score(gold, pred))
        else:   # F1 of class 1, every other label negative (binary F1 refuses these labels)
            case["f1"] = float(f1_score(gold, pred, labels=[1], average=None)[0])
        case["matthews"] = float(matthews_corrcoef(gold, pred))
    return case


def reg_case(name, x, y):
    # float32 inputs, scored in float64 (the exact value of each float32)
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    y = np.asarray(y, dtype=np.float32).astype(np.float64)
    assert x.shape == y.shape and x.size >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # ConstantInputWarning, NearConstantInputWarning
        pear = scipy.stats.pearsonr(x, y).statistic
        spear = scipy.stats.spearmanr(x, y).statistic
    return {"name": name, "n": int(x.size), "x": [float(v) for v in x], "y": [float(v) for v in y],
            "pearson": fnum(pear), "spearman": fnum(spear)}


def noisy(rng, gold, k, p_wrong):
    """gold with each label replaced by a uniformly random other class with probability p_wrong."""
    gold = np.asarray(gold)
    flip = rng.random(gold.size) < p_wrong
    other = (gold + rng.integers(1, k, gold.size)) % k
    return np.where(flip, other, gold)


def classification_cases(rng):
    cases = []
    # n = 1: every binary combination
    for p in (0, 1):
        for g in (0, 1):
            cases.append(cls_case(f"bin_n1_p{p}_g{g}", [p], [g]))
    # n = 2: every binary combination
    for p in range(4):
        for g in range(4):
            cases.append(cls_case(f"bin_n2_p{p:02b}_g{g:02b}", [p >> 1, p & 1], [g >> 1, g & 1]))
    for n in (7, 100, 1000):
        gold = rng.integers(0, 2, n)
        cases.append(cls_case(f"bin_n{n}_random", rng.integers(0, 2, n), gold))
        cases.append(cls_case(f"bin_n{n}_noisy", noisy(rng, gold, 2, 0.2), gold))
    gold = (rng.random(100) < 0.2).astype(int)
    cases.append(cls_case("bin_n100_rare_pos", (rng.random(100) < 0.1).astype(int), gold))
    for n in (7, 100):
        gold = rng.integers(0, 2, n)
        pred = rng.integers(0, 2, n)
        cases.append(cls_case(f"bin_n{n}_pred_all0", np.zeros(n, int), gold))
        cases.append(cls_case(f"bin_n{n}_pred_all1", np.ones(n, int), gold))
        cases.append(cls_case(f"bin_n{n}_gold_all0", pred, np.zeros(n, int)))
        cases.append(cls_case(f"bin_n{n}_gold_all1", pred, np.ones(n, int)))
        cases.append(cls_case(f"bin_n{n}_both_all0", np.zeros(n, int), np.zeros(n, int)))
        cases.append(cls_case(f"bin_n{n}_both_all1", np.ones(n, int), np.ones(n, int)))
        cases.append(cls_case(f"bin_n{n}_perfect", gold, gold))
        cases.append(cls_case(f"bin_n{n}_inverted", 1 - gold, gold))

    # 3-class
    cases.append(cls_case("mc3_n1_correct", [2], [2]))
    cases.append(cls_case("mc3_n1_wrong", [0], [2]))
    cases.append(cls_case("mc3_n2_a", [0, 2], [2, 1]))
    cases.append(cls_case("mc3_n2_b", [1, 2], [1, 2]))
    for n in (7, 100, 1000):
        gold = rng.integers(0, 3, n)
        cases.append(cls_case(f"mc3_n{n}_random", rng.integers(0, 3, n), gold))
        cases.append(cls_case(f"mc3_n{n}_noisy", noisy(rng, gold, 3, 0.3), gold))
    for n in (7, 100):
        gold = rng.integers(0, 3, n)
        pred = rng.integers(0, 3, n)
        cases.append(cls_case(f"mc3_n{n}_pred_all2", np.full(n, 2), gold))
        cases.append(cls_case(f"mc3_n{n}_gold_all1", pred, np.ones(n, int)))
        cases.append(cls_case(f"mc3_n{n}_perfect", gold, gold))
        cases.append(cls_case(f"mc3_n{n}_inverted", 2 - gold, gold))
        cases.append(cls_case(f"mc3_n{n}_rotated", (gold + 1) % 3, gold))
        cases.append(cls_case(f"mc3_n{n}_never_pred2", rng.integers(0, 2, n), gold))
    labels = np.array([-1, 3, 7])
    gold = rng.integers(0, 3, 50)
    cases.append(cls_case("labels_m1_3_7_n50", labels[noisy(rng, gold, 3, 0.4)], labels[gold]))
    return cases


def regression_cases(rng):
    cases = []
    cases.append(reg_case("n2_same_dir", [0.5, 1.25], [-3.0, 2.0]))
    cases.append(reg_case("n2_opposite", [0.1, 0.7], [0.3, -0.2]))
    cases.append(reg_case("n2_x_const", [1.5, 1.5], [0.0, 1.0]))
    cases.append(reg_case("n3_ties", [0.2, 0.2, 0.9], [1.0, 3.0, 2.0]))
    for n in (7, 100, 1000):
        x = rng.standard_normal(n)
        cases.append(reg_case(f"n{n}_noties_correlated", x, 0.6 * x + 0.8 * rng.standard_normal(n)))
    cases.append(reg_case("n100_noties_independent", rng.standard_normal(100), rng.standard_normal(100)))
    for n in (7, 100, 1000):
        gold = np.round(rng.uniform(0.0, 5.0, n), 1)             # STS-B style gold scores
        pred = np.round(np.clip(gold + rng.normal(0.0, 1.0, n), 0.0, 5.0), 1)
        cases.append(reg_case(f"n{n}_ties_1dec", pred, gold))
    cases.append(reg_case("n100_ties_1dec_vs_noties", np.round(rng.uniform(0, 1, 100), 1),
                          rng.standard_normal(100)))
    cases.append(reg_case("n100_two_valued", rng.integers(0, 2, 100), rng.integers(0, 2, 100) + rng.random(100)))
    x = rng.standard_normal(100)
    cases.append(reg_case("n100_monotone_exp", x, np.exp(x)))
    cases.append(reg_case("n100_anticorrelated", x, -2.0 * x + 0.3 * rng.standard_normal(100)))
    cases.append(reg_case("n100_offset_1000", 1000.0 + rng.standard_normal(100), 1000.0 + rng.standard_normal(100)))
    cases.append(reg_case("n7_y_const", rng.standard_normal(7), np.full(7, 2.5)))
    cases.append(reg_case("n7_both_const", np.full(7, 0.1), np.full(7, 0.1)))
    return cases


def dump(obj):
    """JSON with one case per line: small and diff-friendly."""
    lines = ["{", f' "meta": {json.dumps(obj["meta"])},']
    for key in ("classification", "regression"):
        lines.append(f' "{key}": [')
        items = obj[key]
        for i, c in enumerate(items):
            lines.append("  " + json.dumps(c, allow_nan=False) + ("," if i + 1 < len(items) else ""))
        lines.append(" ]" + ("," if key == "classification" else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def main():
    rng = np.random.default_rng(SEED)
    obj = {
        "meta": {
            "generator": "tools/gen_metric_fixtures.py",
            "command": "python3 tools/gen_metric_fixtures.py",
            "seed": SEED,
            "versions": {"python": platform.python_version(), "numpy": np.__version__,
                         "scipy": scipy.__version__, "scikit-learn": sklearn.__version__},
            "notes": "regression inputs are float32 values written exactly as doubles; null = NaN",
        },
        "classification": classification_cases(rng),
        "regression": regression_cases(rng),
    }
    text = dump(obj)
    json.loads(text)   # well-formed
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text)} bytes, {len(obj['classification'])} classification and "
          f"{len(obj['regression'])} regression cases)", file=sys.stderr)


if __name__ == "__main__":
    main()
