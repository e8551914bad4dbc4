#!/usr/bin/env python3
"""ckpt_inspect.py: look inside actlora-mpi checkpoints and verify them.

Usage (from the repository root):

    python3 tools/ckpt_inspect.py RUN_DIR/checkpoints/ckpt-120-0.h5   # one file
    python3 tools/ckpt_inspect.py RUN_DIR/checkpoints                 # every checkpoint of a run
    python3 tools/ckpt_inspect.py RUN_DIR                             # same (looks in RUN_DIR/checkpoints)

For one file it prints the root attributes, the position in the run (step, epoch, cursor,
micro), the layer selection, every parameter tensor with its shape and L2 norm, the
optimizer moments' norms, the partial accumulation when micro > 0, the token counters and
the time ledger.  It verifies the file as the C reader does (docs/checkpoint-format.md):
the 512-byte seal (format, size, whole-file checksum), then reads every dataset in full,
so HDF5 checks each chunk's fletcher32 checksum and every metadata checksum; then the
layout (offsets tile [0, numel), /params matches it).

For a directory it lists every ckpt-*.h5 (step, micro, size, ok/CORRUPT), marks the one
`latest` names, then prints the details of the one a resume would use (the file `latest`
names when it verifies, else the newest one that does).  Temporary files (.ckpt-*.tmp.*,
left by a job killed while writing) are counted and ignored.

Exit status: 0 when every checkpoint looked at verifies, 1 when one is corrupt or there is
none, 2 on a usage error.  Needs h5py and numpy (tools/requirements.txt).
"""

import argparse
import os
import re
import struct
import sys

import h5py
import numpy as np

FORMAT = "actlora-checkpoint"
FORMAT_VERSION = 1
USERBLOCK = 512
NAME_RE = re.compile(r"^ckpt-(\d+)-(\d+)\.h5$")
FNV_INIT = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK = (1 << 64) - 1


class Corrupt(Exception):
    pass


def fnv1a64_words(data, h=FNV_INIT):
    """FNV-1a over little-endian 64-bit words (the tail zero-padded), as src/ckpt.c's hash_words."""
    if len(data) % 8:
        data = data + b"\0" * (8 - len(data) % 8)
    for (w,) in struct.iter_unpack("<Q", data):
        h = ((h ^ w) * FNV_PRIME) & MASK
    return h


def check_seal(path):
    """The user block: 'actlora-checkpoint V\\nbytes N\\nfnv1a64w HEX\\n', NUL-padded; size and checksum."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(USERBLOCK)
        m = re.match(rb"^" + FORMAT.encode() + rb" (\d+)\nbytes (\d+)\nfnv1a64w ([0-9a-f]{16})\n", head)
        if not m:
            raise Corrupt("not an actlora checkpoint (no '%s' header)" % FORMAT)
        version, nbytes, want = int(m.group(1)), int(m.group(2)), int(m.group(3), 16)
        if version > FORMAT_VERSION:
            raise Corrupt("written by a newer actlora-mpi (format %d); this tool reads format %d" % (version, FORMAT_VERSION))
        if version != FORMAT_VERSION:
            raise Corrupt("unknown format %d" % version)
        if size != nbytes:
            raise Corrupt("%s: %d of the %d bytes written" % ("truncated" if size < nbytes else "wrong size", size, nbytes))
        if len(head) != USERBLOCK or head[m.end():].strip(b"\0"):
            raise Corrupt("damaged header (first %d bytes)" % USERBLOCK)
        h = FNV_INIT
        while True:
            block = f.read(4 << 20)  # multiples of 8 bytes except the last
            if not block:
                break
            h = fnv1a64_words(block, h)
    h = ((h ^ (nbytes - USERBLOCK)) * FNV_PRIME) & MASK
    return h == want


def attr(f, name):
    v = f.attrs[name]
    return v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v


def load(path):
    """Reads and verifies everything; returns a dict. Raises Corrupt with the reason."""
    sealed = check_seal(path)
    try:
        with h5py.File(path, "r") as f:
            c = {"attrs": {k: attr(f, k) for k in sorted(f.attrs)}, "data": {}}
            a = c["attrs"]
            if a.get("format") != FORMAT:
                raise Corrupt("format attribute is %r" % a.get("format"))
            if a.get("format_version") != FORMAT_VERSION:
                raise Corrupt("format_version %s; this tool reads %d" % (a.get("format_version"), FORMAT_VERSION))

            def visit(name, obj):  # read every dataset in full: HDF5 checks fletcher32 on each chunk
                if isinstance(obj, h5py.Dataset):
                    try:
                        c["data"][name] = obj[()]
                    except OSError as e:
                        raise Corrupt("cannot read dataset /%s (%s)" % (name, e)) from None
                    if name == "counters/ledger":
                        c["phases"] = attr(obj, "phases").split(",")

            f.visititems(visit)
    except Corrupt:
        raise
    except (OSError, RuntimeError, KeyError, ValueError) as e:  # h5py reports corrupt metadata in several ways
        raise Corrupt("HDF5: %s" % e) from None
    if not sealed:
        raise Corrupt("file checksum mismatch: the file is corrupt")
    try:
        check_layout(c)
    except (KeyError, ValueError, IndexError) as e:
        raise Corrupt("incomplete layout: %r" % e) from None
    return c


def check_layout(c):
    a, d = c["attrs"], c["data"]
    raw = bytes(d["layout/names"])
    names = raw.split(b"\0")[:-1] if raw else []
    offsets, shapes = d["layout/offsets"], d["layout/shapes"].reshape(-1, 2)
    if not (len(names) == len(offsets) == len(shapes) == a["n_tensors"]):
        raise Corrupt("layout sizes disagree")
    end = 0
    for i in np.argsort(offsets, kind="stable"):
        if offsets[i] != end:
            raise Corrupt("tensor %s starts at %d, expected %d" % (names[i].decode(), offsets[i], end))
        end += int(shapes[i][0] * shapes[i][1])
    if end != a["numel"]:
        raise Corrupt("tensors cover %d elements, numel is %d" % (end, a["numel"]))
    params = {k[len("params/"):]: v for k, v in d.items() if k.startswith("params/")}
    if sorted(params) != sorted(n.decode() for n in names):
        raise Corrupt("/params does not hold exactly the layout's tensors")
    for n, s in zip(names, shapes):
        if params[n.decode()].shape != tuple(s):
            raise Corrupt("params/%s has shape %s, layout says %s" % (n.decode(), params[n.decode()].shape, tuple(s)))
    if ("partial/grads" in d) != (a["micro"] > 0):
        raise Corrupt("micro is %d but /partial is %s" % (a["micro"], "present" if "partial/grads" in d else "missing"))
    c["names"], c["shapes"], c["offsets"] = [n.decode() for n in names], shapes, offsets


def norm(x):
    return float(np.sqrt(np.sum(np.asarray(x, dtype=np.float64) ** 2)))


def show(path, c):
    a, d = c["attrs"], c["data"]
    print("%s: ok (%d bytes)" % (path, os.path.getsize(path)))
    print("attributes:")
    for k, v in a.items():
        print("  %-18s %s" % (k, ("%016x" % v) if k in ("config_hash", "model_fingerprint") else v))
    print("position: step %d, epoch %d, cursor %d, micro %d (world %d)" % (
        a["step"], a["epoch"], a["cursor"], a["micro"], a["world"]))
    sel = [int(x) for x in d["selection/selected"]]
    print("selection: %d of %d layers %s" % (len(sel), a["num_layers"], sel))
    scores = d["selection/scores"]
    if len(scores):
        print("  scores: " + " ".join("%.4g" % s for s in scores))
    print("params: %d tensors, %d elements" % (len(c["names"]), a["numel"]))
    for n, s, o in zip(c["names"], c["shapes"], c["offsets"]):
        print("  %-64s [%d, %d] @%d  |x| %.6g" % (n, s[0], s[1], o, norm(d["params/" + n])))
    print("optimizer: |m| %.6g  |v| %.6g" % (norm(d["optimizer/adam_m"]), norm(d["optimizer/adam_v"])))
    if a["micro"] > 0:
        g = d["partial/grads"]
        print("partial (micro %d): " % a["micro"] + ", ".join(
            "rank %d |g| %.6g loss %.6g" % (r, norm(g[r]), d["partial/loss"][r]) for r in range(g.shape[0])))
    print("tokens: %s (total %d)" % ([int(t) for t in d["counters/tokens"]], int(np.sum(d["counters/tokens"]))))
    led = d["counters/ledger"]
    phases = c.get("phases", ["phase%d" % i for i in range(len(led))])
    print("ledger (seconds x ranks): " + ", ".join("%s %.1f" % (p, s) for p, s in zip(phases, led)) +
          "; wall %.1f s" % a["wall_s"])
    cfg = bytes(d["config_text"]).decode(errors="replace")
    print("config_text: %d bytes (%d lines)" % (len(cfg), cfg.count("\n")))


def inspect_dir(dirpath):
    names = sorted((n for n in os.listdir(dirpath) if NAME_RE.match(n)),
                   key=lambda n: tuple(int(x) for x in NAME_RE.match(n).groups()), reverse=True)
    tmps = [n for n in os.listdir(dirpath) if n.startswith(".") and ".tmp." in n]
    latest = None
    try:
        with open(os.path.join(dirpath, "latest")) as f:
            latest = f.read().strip()
    except OSError:
        pass
    print("%s: %d checkpoint(s)%s; latest -> %s" % (dirpath, len(names),
          ", %d stale temporary file(s) ignored" % len(tmps) if tmps else "", latest or "(none)"))
    loaded, bad = {}, 0
    for n in names:
        p = os.path.join(dirpath, n)
        try:
            loaded[n] = load(p)
            status = "ok"
        except Corrupt as e:
            status, bad = "CORRUPT: %s" % e, bad + 1
        step, micro = NAME_RE.match(n).groups()
        print("  %s %-24s step %8s micro %3s %12d bytes  %s" % (
            "*" if n == latest else " ", n, step, micro, os.path.getsize(p), status))
    if latest and latest not in names:
        print("  latest names %r, which is %s" % (latest, "not a checkpoint name" if not NAME_RE.match(latest) else "missing"))
        bad += 1
    use = latest if latest in loaded else next((n for n in names if n in loaded), None)
    if use is None:
        print("no valid checkpoint")
        return 1
    print("\nresume would use %s%s\n" % (use, "" if use == latest else " (latest is not usable)"))
    show(os.path.join(dirpath, use), loaded[use])
    return 1 if bad else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", help="a ckpt-*.h5 file, a checkpoints directory, or a run directory")
    args = ap.parse_args(argv)
    p = args.path
    if os.path.isdir(p):
        if not any(NAME_RE.match(n) or n == "latest" for n in os.listdir(p)) and os.path.isdir(os.path.join(p, "checkpoints")):
            p = os.path.join(p, "checkpoints")
        return inspect_dir(p)
    if not os.path.exists(p):
        print("ckpt_inspect: %s: no such file or directory" % p, file=sys.stderr)
        return 2
    try:
        show(p, load(p))
    except Corrupt as e:
        print("%s: CORRUPT: %s" % (p, e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
