#!/usr/bin/env python3
"""rank_stability.py: how stable is the layer ranking across calibration runs?

Usage (from the repository root):

    python3 tools/rank_stability.py A/calibration.h5 B/calibration.h5 [C/... ...] \
        [--k K] [--labels a,b,...] [--json OUT]

Each input is either a `calibration.h5` written by the C program (its `scores` dataset
[L] and, for the default k, its `selected` dataset are read) or a plain-text ranking file:
one score per line, layer 0 first; blank lines and lines starting with '#' are ignored.
All inputs must have the same number of layers L.  For every pair of inputs the tool
prints Kendall's tau-b, Spearman's rho and the top-k Jaccard index, then the mean and the
minimum of each over all pairs.  --json OUT writes the same numbers as JSON ('-' = stdout;
NaN and undefined values are written as null).

Definitions (x, y = the two score vectors, n = L; computed with numpy only, no scipy):

* Kendall tau-b (scipy.stats.kendalltau's default, variant='b').  Over the n0 = n(n-1)/2
  pairs i < j, let S = sum sign(x_i - x_j) * sign(y_i - y_j) (= concordant - discordant;
  a pair tied in x or in y contributes 0), n1 = number of pairs with x_i == x_j,
  n2 = number of pairs with y_i == y_j.  Then

      tau_b = S / sqrt((n0 - n1) * (n0 - n2)),

  undefined (NaN) when n < 2 or when either vector is constant.  Ties are exact float
  equality.  Cost O(n^2), which is nothing for layer counts.

* Spearman rho (scipy.stats.spearmanr).  r_x, r_y = average ranks (1-based; tied values
  all get the mean of the ranks they span, scipy.stats.rankdata(method='average')); rho is
  the Pearson correlation of r_x and r_y:

      rho = sum (r_x - mean r_x)(r_y - mean r_y) / sqrt(sum (r_x - mean r_x)^2 * sum (r_y - mean r_y)^2),

  undefined (NaN) when either vector is constant.

* Top-k Jaccard.  top_k(x) = the first k layers when layers are sorted by descending score,
  ties broken by the lower layer index (the C program's calib_rank rule).  Then

      J = |top_k(x) & top_k(y)| / |top_k(x) | top_k(y)|.

  k = --k when given (1 <= k <= L); otherwise the size of each file's `selected` dataset,
  the larger of the two when they differ (one file's size when only one has a selection).
  Text ranking files carry no selection: for a pair of two text files without --k the
  Jaccard index is not computed (shown as '-', null in JSON).

The summary's mean and min are taken over the pairs where the value is defined.
Exit status: 0 on success, 2 on a usage or input error (message on stderr).
"""

import argparse
import itertools
import json
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

CALIB_FORMAT = "actlora-calibration"
CALIB_FORMAT_VERSION = 1


class ToolError(Exception):
    """An input or usage error; main() prints it and exits with status 2."""


# ----------------------------------------------------------------------------- statistics


def average_ranks(x):
    """1-based ranks of x, tied values get the average of their ranks (rankdata 'average')."""
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        return np.zeros(0)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]        # start of each group of equal values
    group = np.cumsum(first) - 1                   # group id of each sorted element
    bounds = np.r_[np.flatnonzero(first), n]       # group g spans sorted positions [b_g, b_{g+1})
    avg = 0.5 * (bounds[group] + bounds[group + 1] - 1) + 1.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = avg
    return ranks


def _check_pair(x, y):
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"length mismatch: {x.size} vs {y.size}")
    return x, y


def kendall_tau_b(x, y):
    """Kendall's tau-b of x and y (see the module docstring); NaN when undefined."""
    x, y = _check_pair(x, y)
    n = x.size
    if n < 2:
        return float("nan")
    s = 0
    tx = 0
    ty = 0
    for i in range(n - 1):
        dx = np.sign(x[i + 1:] - x[i])
        dy = np.sign(y[i + 1:] - y[i])
        s += int(np.sum(dx * dy))
        tx += int(np.count_nonzero(dx == 0))
        ty += int(np.count_nonzero(dy == 0))
    n0 = n * (n - 1) // 2
    denom = (n0 - tx) * (n0 - ty)
    if denom <= 0:
        return float("nan")
    tau = s / math.sqrt(denom)
    return float(min(1.0, max(-1.0, tau)))


def spearman_rho(x, y):
    """Spearman's rho of x and y (Pearson correlation of average ranks); NaN when undefined."""
    x, y = _check_pair(x, y)
    if x.size < 2:
        return float("nan")
    rx = average_ranks(x)
    ry = average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float(np.dot(rx, rx)) * float(np.dot(ry, ry)))
    if denom == 0.0:
        return float("nan")
    return float(min(1.0, max(-1.0, float(np.dot(rx, ry)) / denom)))


def ranking_order(scores):
    """Layers from most to least important: descending score, ties by lower layer index."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    idx = np.arange(scores.size)
    return np.lexsort((idx, -scores))


def top_k(scores, k):
    """The set of the k most important layers (ranking_order's first k)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not 1 <= k <= scores.size:
        raise ValueError(f"k={k} out of range 1..{scores.size}")
    return {int(v) for v in ranking_order(scores)[:k]}


def jaccard(a, b):
    """|a & b| / |a | b| of two sets (1.0 for two empty sets)."""
    a, b = set(a), set(b)
    union = a | b
    if not union:
        return 1.0
    return len(a & b) / len(union)


# ----------------------------------------------------------------------------- inputs


def attr_value(v):
    """An HDF5 attribute as a plain Python value (bytes/str, fixed or variable length, scalars)."""
    if isinstance(v, np.ndarray):
        if v.size == 1:
            v = v.reshape(-1)[0]
        else:
            return [attr_value(e) for e in v.reshape(-1)]
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).rstrip(b"\0").decode("utf-8", errors="replace")
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass
class Ranking:
    path: str
    label: str
    scores: np.ndarray
    selected: list = None           # None for text files (no selection recorded)
    attrs: dict = field(default_factory=dict)
    kind: str = "text"              # "hdf5" or "text"

    @property
    def num_layers(self):
        return int(self.scores.size)


def _is_hdf5(path):
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ToolError(f"{path}: cannot read: {e.strerror or e}") from None
    return head == b"\x89HDF\r\n\x1a\n"


def load_calibration(path):
    """Reads a calibration.h5 into a dict: attrs, scores, rank, order, selected, sums, tokens, ..."""
    try:
        import h5py
    except ImportError:
        raise ToolError(f"{path}: reading HDF5 needs h5py (python3 -m pip install h5py)") from None
    out = {}
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: attr_value(v) for k, v in f.attrs.items()}
            fmt = attrs.get("format")
            if fmt is not None and fmt != CALIB_FORMAT:
                raise ToolError(f"{path}: format attribute is {fmt!r}, expected {CALIB_FORMAT!r}")
            version = attrs.get("format_version")
            if version is not None and int(version) > CALIB_FORMAT_VERSION:
                print(f"warning: {path}: format_version {version} is newer than {CALIB_FORMAT_VERSION}",
                      file=sys.stderr)
            if "scores" not in f:
                raise ToolError(f"{path}: no 'scores' dataset (not an actlora calibration file?)")
            for name in ("scores", "rank", "order", "selected", "sums", "tokens", "per_rank_sums",
                         "per_rank_tokens"):
                if name in f:
                    out[name] = np.asarray(f[name][()])
    except OSError as e:
        raise ToolError(f"{path}: cannot read HDF5: {e}") from None
    out["attrs"] = attrs
    scores = np.asarray(out["scores"], dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ToolError(f"{path}: 'scores' must be a non-empty 1-D dataset, got shape {scores.shape}")
    nl = attrs.get("num_layers")
    if nl is not None and int(nl) != scores.size:
        raise ToolError(f"{path}: num_layers attribute is {nl} but 'scores' has {scores.size} entries")
    out["scores"] = scores
    if "selected" in out:
        sel = np.asarray(out["selected"]).reshape(-1).astype(np.int64)
        if sel.size and (sel.min() < 0 or sel.max() >= scores.size):
            raise ToolError(f"{path}: 'selected' holds a layer outside 0..{scores.size - 1}")
        out["selected"] = [int(v) for v in sel]
    return out


def load_text_ranking(path):
    """Scores from a text file: one float per line, layer 0 first; '#' comments and blanks skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ToolError(f"{path}: cannot read: {e}") from None
    vals = []
    for no, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            vals.append(float(s))
        except ValueError:
            raise ToolError(f"{path}:{no}: expected one score per line, got {s!r}") from None
    if not vals:
        raise ToolError(f"{path}: no scores found")
    return np.asarray(vals, dtype=np.float64)


def default_label(path):
    """run dir name for <dir>/calibration.h5, else the file name without extension."""
    p = os.path.normpath(path)
    base = os.path.basename(p)
    if base == "calibration.h5":
        parent = os.path.basename(os.path.dirname(os.path.abspath(p)))
        return parent or base
    stem, _ = os.path.splitext(base)
    return stem or base


def unique_labels(paths):
    labels = [default_label(p) for p in paths]
    if len(set(labels)) == len(labels):
        return labels
    return [os.path.normpath(p) for p in paths]


def load_ranking(path, label=None):
    """A Ranking from a calibration.h5 or a text ranking file (detected by the HDF5 signature)."""
    if not os.path.exists(path):
        raise ToolError(f"{path}: no such file")
    if os.path.isdir(path):
        cand = os.path.join(path, "calibration.h5")
        if os.path.isfile(cand):
            path = cand
        else:
            raise ToolError(f"{path}: is a directory without calibration.h5")
    label = label if label is not None else default_label(path)
    if _is_hdf5(path):
        c = load_calibration(path)
        r = Ranking(path=path, label=label, scores=c["scores"], selected=c.get("selected"),
                    attrs=c["attrs"], kind="hdf5")
    else:
        r = Ranking(path=path, label=label, scores=load_text_ranking(path), kind="text")
    if not np.all(np.isfinite(r.scores)):
        bad = [int(i) for i in np.flatnonzero(~np.isfinite(r.scores))]
        raise ToolError(f"{path}: non-finite score for layer(s) {bad}")
    return r


# ----------------------------------------------------------------------------- comparison


def pair_k(a, b, k=None):
    """The k used for the Jaccard index of a pair (None when it cannot be determined)."""
    if k is not None:
        return int(k)
    sizes = [len(r.selected) for r in (a, b) if r.selected is not None and len(r.selected) > 0]
    return max(sizes) if sizes else None


def compare_pair(a, b, k=None):
    if a.num_layers != b.num_layers:
        raise ToolError(f"layer count mismatch: {a.path} has {a.num_layers} layers, "
                        f"{b.path} has {b.num_layers}")
    kk = pair_k(a, b, k)
    res = {
        "a": a.label,
        "b": b.label,
        "kendall_tau_b": kendall_tau_b(a.scores, b.scores),
        "spearman_rho": spearman_rho(a.scores, b.scores),
        "k": kk,
        "jaccard": None,
        "intersection": None,
        "union": None,
    }
    if kk is not None:
        ta, tb = top_k(a.scores, kk), top_k(b.scores, kk)
        res["intersection"] = len(ta & tb)
        res["union"] = len(ta | tb)
        res["jaccard"] = jaccard(ta, tb)
    return res


def _summ(values):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "min": None, "n": 0}
    return {"mean": float(np.mean(vals)), "min": float(np.min(vals)), "n": len(vals)}


def compare(rankings, k=None):
    """Every pair of rankings: a dict with 'files', 'pairs' and 'summary' (see --json)."""
    if len(rankings) < 2:
        raise ToolError("need at least two inputs to compare")
    L = rankings[0].num_layers
    for r in rankings[1:]:
        if r.num_layers != L:
            raise ToolError(f"layer count mismatch: {rankings[0].path} has {L} layers, "
                            f"{r.path} has {r.num_layers}")
    if k is not None and not 1 <= k <= L:
        raise ToolError(f"--k {k} out of range 1..{L}")
    pairs = [compare_pair(a, b, k) for a, b in itertools.combinations(rankings, 2)]
    files = []
    for r in rankings:
        files.append({
            "label": r.label,
            "path": r.path,
            "kind": r.kind,
            "num_layers": r.num_layers,
            "selected": r.selected,
            "top": [int(v) for v in ranking_order(r.scores)],
            **{key: r.attrs.get(key) for key in ("method", "probe", "rule", "k", "fraction", "threshold",
                                                 "task", "seed", "batches", "world") if key in r.attrs},
        })
    summary = {m: _summ([p[m] for p in pairs]) for m in ("kendall_tau_b", "spearman_rho", "jaccard")}
    return {"num_layers": L, "k": k, "files": files, "pairs": pairs, "summary": summary}


# ----------------------------------------------------------------------------- output


def _fmt(v, width=8, digits=4):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-".rjust(width)
    return f"{v:{width}.{digits}f}"


def format_report(result):
    lines = []
    files = result["files"]
    lw = max(len(f["label"]) for f in files)
    lines.append(f"{len(files)} rankings of {result['num_layers']} layers")
    for f in files:
        if f["kind"] == "hdf5":
            desc = "/".join(str(f.get(x, "?")) for x in ("method", "probe")) + f" rule={f.get('rule', '?')}"
            sel = f["selected"]
            desc += f"  selected {len(sel)}: {sel}" if sel is not None else "  (no selection)"
        else:
            desc = "text ranking"
        top = f["top"][:8]
        more = " ..." if len(f["top"]) > 8 else ""
        lines.append(f"  {f['label']:<{lw}}  {desc}")
        lines.append(f"  {'':<{lw}}  top: {' '.join(map(str, top))}{more}   ({f['path']})")
    lines.append("")
    npairs = len(result["pairs"])
    names = {stat: f"{stat} ({npairs} pair{'s' if npairs != 1 else ''})" for stat in ("mean", "min")}
    pw = max(lw, 1, (max(len(n) for n in names.values()) - 1) // 2)
    head = f"  {'A':<{pw}}  {'B':<{pw}}  {'tau_b':>8}  {'rho':>8}  {'k':>3}  {'jaccard':>8}  A&B/AuB"
    lines.append(head)
    lines.append("  " + "-" * (len(head) - 2))
    for p in result["pairs"]:
        k = "-" if p["k"] is None else str(p["k"])
        frac = "" if p["jaccard"] is None else f"{p['intersection']}/{p['union']}"
        lines.append(f"  {p['a']:<{pw}}  {p['b']:<{pw}}  {_fmt(p['kendall_tau_b'])}  {_fmt(p['spearman_rho'])}"
                     f"  {k:>3}  {_fmt(p['jaccard'])}  {frac}")
    lines.append("  " + "-" * (len(head) - 2))
    s = result["summary"]
    for stat in ("mean", "min"):
        name = names[stat]
        lines.append(f"  {name:<{2 * pw + 2}}  {_fmt(s['kendall_tau_b'][stat])}  {_fmt(s['spearman_rho'][stat])}"
                     f"  {'':>3}  {_fmt(s['jaccard'][stat])}")
    if any(p["k"] is None for p in result["pairs"]):
        lines.append("")
        lines.append("  jaccard '-': neither input records a selection; pass --k K")
    return "\n".join(lines)


def _json_clean(obj):
    if isinstance(obj, dict):
        return {k: _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _json_clean(obj.item())
    return obj


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="rank_stability.py",
        description="Pairwise agreement (Kendall tau-b, Spearman rho, top-k Jaccard) of layer rankings "
                    "from calibration.h5 files or text ranking files (one score per line).")
    ap.add_argument("inputs", nargs="+", metavar="FILE",
                    help="calibration.h5 (or a run dir holding one) or text ranking file")
    ap.add_argument("--k", type=int, default=None,
                    help="top-k size for the Jaccard index (default: size of the files' selection, the larger)")
    ap.add_argument("--labels", default=None, help="comma-separated labels, one per input")
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the numbers as JSON ('-' = stdout)")
    args = ap.parse_args(argv)
    try:
        if len(args.inputs) < 2:
            raise ToolError("need at least two inputs to compare")
        if args.labels is not None:
            labels = [s.strip() for s in args.labels.split(",")]
            if len(labels) != len(args.inputs):
                raise ToolError(f"--labels has {len(labels)} entries for {len(args.inputs)} inputs")
        else:
            labels = unique_labels(args.inputs)
        rankings = [load_ranking(p, lab) for p, lab in zip(args.inputs, labels)]
        result = compare(rankings, args.k)
    except ToolError as e:
        print(f"rank_stability: error: {e}", file=sys.stderr)
        return 2
    if args.json == "-":
        json.dump(_json_clean(result), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    print(format_report(result))
    if args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(_json_clean(result), f, indent=1)
                f.write("\n")
        except OSError as e:
            print(f"rank_stability: error: {args.json}: {e.strerror or e}", file=sys.stderr)
            return 2
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
