#!/usr/bin/env python3
"""prep_glue.py: tokenize a GLUE task (original TSV layout) into the actlora HDF5 format.

Usage (from the repository root):

    python3 tools/prep_glue.py --task SST-2 --glue-dir ../shared/data/glue/SST-2 \
        --tokenizer ../shared/data/tokenizers/llama3/tokenizer.json --max-len 128 \
        --out data/sst2.llama3.h5 [--pad-id N] [--limit-train N] [--no-bos-fallback]

The layout of the output file is described in docs/data-format.md.  In short: one group
per split holding `tokens` (int32, all rows concatenated, no padding), `type_ids` (uint8,
the token type / segment id of every token, parallel to `tokens`), `offsets` (int64,
rows+1) and `labels` (int32, or float32 for STS-B), plus attributes for provenance.

Input: the original GLUE TSVs (train.tsv and dev.tsv; MNLI dev_matched.tsv and
dev_mismatched.tsv; test.tsv is ignored).  Lines are split on '\\n' and fields on '\\t'
only -- no quote processing, so a '"' in a text is kept verbatim.  A UTF-8 BOM at the
start of a file and a '\\r' at the end of a line are removed.  Rows that cannot be used
(wrong column count, unknown label, empty text, unparsable score, invalid UTF-8) are
skipped, reported on stderr as FILE:LINE and counted in the file's attributes.

Tokenization uses the tokenizer's own post-processor for special tokens
(encode(a) / encode(a, b) with add_special_tokens=True), truncation to --max-len with
the longest-first strategy for pairs, and no padding.  Truncation and padding settings
stored in tokenizer.json (e.g. a BERT tokenizer's max_length 128 / pad to 128) are
replaced: --max-len is the only limit.  The token type ids are the ones the
post-processor assigns (Encoding.type_ids: 0 for the first text and its special tokens,
1 for the second text in a BERT template).  One exception ("BOS fallback"):
when the tokenizer's post-processor adds no special tokens at all but the
tokenizer_config.json next to tokenizer.json names a bos_token (and does not set
add_bos_token to false), a template "BOS $A" / "BOS $A BOS $B" is appended to the
post-processor -- the template later Llama-3 releases ship in tokenizer.json.  The
original Llama-3 tokenizer.json has only a ByteLevel post-processor, so without this the
rows would not start with <|begin_of_text|>.  Disable with --no-bos-fallback.  Which
way was taken is recorded in the root attribute `special_tokens`.

The output is byte-identical across runs on the same inputs and library versions
(no timestamps, fixed attribute order; written to a temporary file then renamed).
"""

import argparse
import hashlib
import itertools
import json
import math
import os
import sys
import time

FORMAT = "actlora-glue"
FORMAT_VERSION = 2  # 2: adds /<split>/type_ids and the max_type_id attribute
MAX_REPORTED = 20  # skipped rows printed per file; the rest are only counted

BOM = b"\xef\xbb\xbf"
PAD_TOKEN_NAMES = ("<pad>", "[PAD]", "<|finetune_right_pad_id|>")

# Original GLUE layouts.  text: column indices of the text(s); label: column index of the
# label (-1 = last column); header: whether line 1 is a header; header_names: expected
# header names at (text..., label) columns (others: another task's directory, refused unless
# --any-header);
# labels: label strings in id order (None = regression, float score).
TASKS = {
    "CoLA": dict(text=(3,), label=1, header=False, ncols=4, labels=["0", "1"], header_names=None),
    "SST-2": dict(text=(0,), label=1, header=True, labels=["0", "1"], header_names=("sentence", "label")),
    "MRPC": dict(text=(3, 4), label=0, header=True, labels=["0", "1"],
                 header_names=("#1 String", "#2 String", "Quality")),
    "STS-B": dict(text=(7, 8), label=-1, header=True, labels=None,
                  header_names=("sentence1", "sentence2", "score")),
    "QQP": dict(text=(3, 4), label=5, header=True, labels=["0", "1"],
                header_names=("question1", "question2", "is_duplicate")),
    "MNLI": dict(text=(8, 9), label=-1, header=True, labels=["contradiction", "entailment", "neutral"],
                 header_names=("sentence1", "sentence2", "gold_label")),
    "QNLI": dict(text=(1, 2), label=3, header=True, labels=["entailment", "not_entailment"],
                 header_names=("question", "sentence", "label")),
    "RTE": dict(text=(1, 2), label=3, header=True, labels=["entailment", "not_entailment"],
                header_names=("sentence1", "sentence2", "label")),
    "WNLI": dict(text=(1, 2), label=3, header=True, labels=["0", "1"],
                 header_names=("sentence1", "sentence2", "label")),
}
SPLITS = {"MNLI": [("train", "train.tsv"), ("dev_matched", "dev_matched.tsv"),
                   ("dev_mismatched", "dev_mismatched.tsv")]}
DEFAULT_SPLITS = [("train", "train.tsv"), ("dev", "dev.tsv")]


class PrepError(Exception):
    """A user-facing error (missing file, bad argument, unusable input)."""


def _key(name):
    return name.replace("-", "").replace("_", "").lower()


def canonical_task(name):
    """'sst2', 'SST-2', 'sts_b' ... -> the canonical GLUE name, or PrepError."""
    for canon in TASKS:
        if _key(canon) == _key(name):
            return canon
    raise PrepError(f"unknown task {name!r} (expected one of: {', '.join(TASKS)})")


def task_splits(task):
    return SPLITS.get(task, DEFAULT_SPLITS)


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- reading

def read_split(path, task, log=None, any_header=False):
    """Parse one original-layout GLUE TSV.

    Returns (texts, labels, linenos, skipped, source_sha256) where texts is a list of str
    (single sentence tasks) or of (str, str) tuples, labels a list of int (or float for
    STS-B), linenos the 1-based line number of each row and skipped a list of
    (line_number, reason).  Skipped rows are reported on `log`.  A header whose names at the
    text and label columns are not the task's is an error (another task's file would be read by
    position: CoLA's as SST-2 gives thousands of valid-looking rows), a warning with any_header.
    """
    log = sys.stderr if log is None else log
    spec = TASKS[task]
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise PrepError(f"missing file: {path}") from None
    except OSError as e:
        raise PrepError(f"cannot read {path}: {e}") from None
    digest = sha256_bytes(data)
    fname = os.path.basename(path)

    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()  # the newline that ends the last line
    if raw and raw[0].startswith(BOM):
        raw[0] = raw[0][len(BOM):]

    texts, labels, linenos, skipped = [], [], [], []
    label_ids = None if spec["labels"] is None else {s: i for i, s in enumerate(spec["labels"])}
    lines = enumerate(raw, start=1)

    if spec["header"]:
        if not raw:
            raise PrepError(f"{path}: empty file (expected a header line)")
        _, hline = next(lines)
        try:
            header = hline.rstrip(b"\r").decode("utf-8").split("\t")
        except UnicodeDecodeError:
            raise PrepError(f"{path}:1: header is not valid UTF-8") from None
        ncols = len(header)
        need = max(max(spec["text"]), spec["label"]) + 1
        if ncols < need:
            raise PrepError(f"{path}:1: header has {ncols} columns, {task} needs at least {need} "
                            f"(is this the {task} directory, in the original GLUE layout?)")
        got = tuple(header[i].strip() for i in (*spec["text"], spec["label"]))
        want = spec["header_names"]
        if tuple(g.lower() for g in got) != tuple(w.lower() for w in want):
            if not any_header:
                raise PrepError(f"{path}:1: header columns {list(got)} are not the original {task} "
                                f"layout's {list(want)}: is this the {task} directory? (--any-header reads "
                                f"these columns by position anyway)")
            print(f"warning: {fname}:1: header columns {list(got)} differ from the original "
                  f"{task} layout {list(want)}; reading them by position (--any-header)", file=log)
    else:
        ncols = spec["ncols"]

    def skip(lineno, reason):
        skipped.append((lineno, reason))
        if len(skipped) <= MAX_REPORTED:
            print(f"{fname}:{lineno}: skipped: {reason}", file=log)

    for lineno, bline in lines:
        bline = bline.rstrip(b"\r")
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            skip(lineno, f"invalid UTF-8 ({e.reason} at byte {e.start})")
            continue
        if line == "":
            skip(lineno, "empty line")
            continue
        cols = line.split("\t")
        if len(cols) != ncols:
            skip(lineno, f"wrong column count ({len(cols)}, expected {ncols})")
            continue
        row = tuple(cols[i] for i in spec["text"])
        if any(t.strip() == "" for t in row):
            skip(lineno, "empty text")
            continue
        lab = cols[spec["label"]].strip()
        if label_ids is None:
            try:
                y = float(lab)
            except ValueError:
                y = math.nan
            if not math.isfinite(y):
                skip(lineno, f"unparsable score {lab!r}")
                continue
        else:
            y = label_ids.get(lab)
            if y is None:
                skip(lineno, f"unknown label {lab!r}")
                continue
        texts.append(row[0] if len(row) == 1 else row)
        linenos.append(lineno)
        labels.append(y)

    if len(skipped) > MAX_REPORTED:
        print(f"{fname}: ... {len(skipped) - MAX_REPORTED} more skipped rows not shown "
              f"({len(skipped)} in all)", file=log)
    return texts, labels, linenos, skipped, digest


# ------------------------------------------------------------------------- tokenizer

def _token_content(tok):
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


def load_tokenizer(path, bos_fallback=True, log=None):
    """Load tokenizer.json.  Returns (tokenizer, raw_bytes, config, special_tokens) where
    config is tokenizer_config.json from the same directory ({} if absent) and
    special_tokens describes how special tokens are added ('post_processor' or
    'post_processor+bos:<token>')."""
    from tokenizers import Tokenizer, processors

    log = sys.stderr if log is None else log
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise PrepError(f"missing tokenizer file: {path}") from None
    except OSError as e:
        raise PrepError(f"cannot read tokenizer {path}: {e}") from None
    try:
        tok = Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as e:  # tokenizers raises a plain Exception on bad JSON
        raise PrepError(f"cannot load tokenizer {path}: {e}") from None

    config = {}
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer_config.json")
    if os.path.exists(cfg_path):
        try:
            with open(cfg_path, encoding="utf-8") as fh:
                config = json.load(fh)
        except (OSError, ValueError) as e:
            print(f"warning: ignoring {cfg_path}: {e}", file=log)
            config = {}

    special = "post_processor"
    if bos_fallback and tok.num_special_tokens_to_add(False) == 0 \
            and tok.num_special_tokens_to_add(True) == 0:
        bos = _token_content(config.get("bos_token"))
        if bos and config.get("add_bos_token", True) is not False:
            bos_id = tok.token_to_id(bos)
            if bos_id is None:
                print(f"warning: bos_token {bos!r} of tokenizer_config.json is not in the "
                      f"vocabulary; no BOS added", file=log)
            else:
                template = processors.TemplateProcessing(
                    single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                    special_tokens=[(bos, bos_id)])
                pp = tok.post_processor
                tok.post_processor = template if pp is None else processors.Sequence([pp, template])
                special = f"post_processor+bos:{bos}"
                print(f"note: the tokenizer's post-processor adds no special tokens; prepending "
                      f"bos_token {bos!r} (id {bos_id}) from tokenizer_config.json "
                      f"(--no-bos-fallback to disable)", file=log)
    return tok, raw, config, special


def resolve_pad_id(tok, config, pad_id_arg):
    """--pad-id, else the tokenizer's padding token, else tokenizer_config.json's pad_token,
    else a token named <pad> / [PAD] / <|finetune_right_pad_id|>, else PrepError."""
    vocab = tok.get_vocab_size(with_added_tokens=True)
    if pad_id_arg is not None:
        if not 0 <= pad_id_arg < vocab:
            raise PrepError(f"--pad-id {pad_id_arg} is outside the vocabulary [0, {vocab})")
        return pad_id_arg
    if tok.padding is not None and tok.padding.get("pad_id") is not None:
        return int(tok.padding["pad_id"])
    name = _token_content(config.get("pad_token"))
    if name and tok.token_to_id(name) is not None:
        return tok.token_to_id(name)
    for name in PAD_TOKEN_NAMES:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    raise PrepError("the tokenizer has no padding token (no padding configured, no pad_token in "
                    "tokenizer_config.json, none of " + ", ".join(PAD_TOKEN_NAMES) +
                    " in the vocabulary): pass --pad-id N (any id works, padding is not stored; "
                    "for Llama-3, 128004 is <|reserved_special_token_2|>, which Llama-3.1 "
                    "names <|finetune_right_pad_id|>)")


MAX_TYPE_ID = 255  # type ids are stored as uint8


def tokenize(tok, texts, max_len):
    """Encode all rows (truncation already enabled).  Returns (tokens int32, type_ids uint8,
    offsets int64, truncated count)."""
    import numpy as np

    encs = tok.encode_batch(texts, add_special_tokens=True)
    lens = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
    offsets = np.zeros(len(encs) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    n = int(offsets[-1])
    tokens = np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), dtype=np.int32, count=n)
    types = np.fromiter(itertools.chain.from_iterable(e.type_ids for e in encs), dtype=np.int64,
                        count=n)
    if n and (int(types.min()) < 0 or int(types.max()) > MAX_TYPE_ID):
        raise PrepError(f"the tokenizer's post-processor assigns token type ids "
                        f"{int(types.min())}..{int(types.max())}, outside 0..{MAX_TYPE_ID} "
                        f"(stored as uint8)")
    truncated = sum(1 for e in encs if e.overflowing)
    if len(lens) and int(lens.max()) > max_len:  # cannot happen with truncation enabled
        raise PrepError(f"internal error: a row has {int(lens.max())} tokens > max_len {max_len}")
    return tokens, types.astype(np.uint8), offsets, truncated


# ---------------------------------------------------------------------------- writing

def _str_attr(attrs, name, value):
    import h5py
    b = value.encode("utf-8")
    attrs.create(name, b, dtype=h5py.string_dtype("utf-8", max(1, len(b))))


def _str_list_attr(attrs, name, values):
    import h5py
    import numpy as np
    enc = [v.encode("utf-8") for v in values]
    width = max([1] + [len(b) for b in enc])
    attrs.create(name, np.array(enc, dtype=f"S{width}"), dtype=h5py.string_dtype("utf-8", width))


def _int_attr(attrs, name, value):
    import numpy as np
    attrs.create(name, np.int64(value), dtype="<i8")


def write_h5(out, root_attrs, splits):
    """root_attrs: list of (name, kind, value); splits: list of (name, arrays, attrs) with
    arrays = (tokens, type_ids, offsets, labels) and attrs a list of (name, kind, value).  Written to
    a temporary file in the same directory, then renamed onto `out`."""
    import h5py

    def put(attrs, items):
        for name, kind, value in items:
            {"str": _str_attr, "strs": _str_list_attr, "int": _int_attr}[kind](attrs, name, value)

    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, f".{os.path.basename(out)}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w", libver="earliest") as f:
            put(f.attrs, root_attrs)
            for name, (tokens, type_ids, offsets, labels), attrs in splits:
                g = f.create_group(name)
                g.create_dataset("tokens", data=tokens, dtype="<i4", track_times=False)
                g.create_dataset("type_ids", data=type_ids, dtype="u1", track_times=False)
                g.create_dataset("offsets", data=offsets, dtype="<i8", track_times=False)
                g.create_dataset("labels", data=labels, dtype="<f4" if labels.dtype.kind == "f" else "<i4",
                                 track_times=False)
                put(g.attrs, attrs)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ------------------------------------------------------------------------------- main

def prepare(task, glue_dir, tokenizer_path, max_len, out, pad_id=None, limit_train=0, any_header=False,
            bos_fallback=True, log=None, stdout=None):
    """Run the whole preparation; returns a dict with per-split statistics.  Skipped rows
    and warnings go to `log` (default stderr), the summary to `stdout`."""
    import numpy as np

    log = sys.stderr if log is None else log
    stdout = sys.stdout if stdout is None else stdout
    t0 = time.time()
    task = canonical_task(task)
    spec = TASKS[task]
    if max_len < 1:
        raise PrepError(f"--max-len must be positive (got {max_len})")
    if limit_train < 0:
        raise PrepError(f"--limit-train must be >= 0 (got {limit_train})")
    if not os.path.isdir(glue_dir):
        raise PrepError(f"missing GLUE directory: {glue_dir}")
    paths = [(s, os.path.join(glue_dir, fn)) for s, fn in task_splits(task)]
    missing = [p for _, p in paths if not os.path.isfile(p)]
    if missing:
        raise PrepError("missing file(s): " + ", ".join(missing))

    tok, tok_raw, config, special = load_tokenizer(tokenizer_path, bos_fallback, log)
    pad = resolve_pad_id(tok, config, pad_id)
    n_special = tok.num_special_tokens_to_add(len(spec["text"]) == 2)
    if max_len <= n_special:
        raise PrepError(f"--max-len {max_len} leaves no room for text: the tokenizer adds "
                        f"{n_special} special tokens per row")
    # replace whatever tokenizer.json says (BERT tokenizers ship truncation to 128 and padding
    # to a fixed length): no padding, and --max-len longest-first from the right
    tok.no_padding()
    tok.no_truncation()
    tok.enable_truncation(max_len, stride=0, strategy="longest_first", direction="right")

    regression = spec["labels"] is None
    split_out, stats = [], {}
    for split, path in paths:
        texts, labels, linenos, skipped, digest = read_split(path, task, log, any_header)
        if split == "train" and limit_train:
            texts, labels = texts[:limit_train], labels[:limit_train]
        if not texts:
            raise PrepError(f"{path}: no usable rows ({len(skipped)} skipped) -- is this "
                            f"the {task} directory in the original GLUE layout?")
        tokens, types, offsets, truncated = tokenize(tok, texts, max_len)
        empty = np.flatnonzero(np.diff(offsets) == 0)
        if len(empty):  # text that tokenizes to nothing and a tokenizer adding no specials
            for i in empty:
                print(f"{os.path.basename(path)}:{linenos[i]}: skipped: no tokens", file=log)
            skipped = sorted(skipped + [(linenos[i], "no tokens") for i in empty])
            keep = sorted(set(range(len(texts))) - set(empty.tolist()))
            texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
            if not texts:
                raise PrepError(f"{path}: no usable rows (all {len(empty)} rows tokenize to nothing)")
            tokens, types, offsets, truncated = tokenize(tok, texts, max_len)
        lab = np.asarray(labels, dtype=np.float32 if regression else np.int32)
        lens = np.diff(offsets)
        n_pad = int(np.count_nonzero(tokens == pad))
        if n_pad:
            print(f"warning: {split}: the pad id {pad} occurs {n_pad} times inside rows; "
                  f"a loader must use the row lengths, not 'token != pad', to find real tokens",
                  file=log)
        attrs = [("source_file", "str", os.path.basename(path)),
                 ("source_sha256", "str", digest),
                 ("rows", "int", len(texts)),
                 ("skipped", "int", len(skipped)),
                 ("truncated", "int", truncated),
                 ("max_row_len", "int", int(lens.max())),
                 ("max_type_id", "int", int(types.max()))]
        if split == "train":
            attrs.append(("limit_train", "int", limit_train))
        split_out.append((split, (tokens, types, offsets, lab), attrs))
        stats[split] = dict(rows=len(texts), skipped=len(skipped), truncated=truncated,
                            mean_len=float(lens.mean()), max_len=int(lens.max()),
                            tokens=int(offsets[-1]), max_type_id=int(types.max()),
                            skipped_lines=skipped)

    import tokenizers
    tok_name = os.path.basename(os.path.dirname(os.path.abspath(tokenizer_path)))
    root = [("format", "str", FORMAT),
            ("format_version", "int", FORMAT_VERSION),
            ("task", "str", task),
            ("num_labels", "int", 1 if regression else len(spec["labels"])),
            ("is_regression", "int", int(regression)),
            ("label_names", "strs", [] if regression else spec["labels"]),
            ("pad_id", "int", pad),
            ("max_len", "int", max_len),
            ("tokenizer_sha256", "str", sha256_bytes(tok_raw)),
            ("tokenizer_name", "str", tok_name),
            ("splits", "strs", [s for s, _ in paths]),
            ("special_tokens", "str", special),
            ("tokenizers_version", "str", tokenizers.__version__)]
    write_h5(out, root, split_out)

    print(f"{task} -> {out}  (tokenizer {tok_name}, max_len {max_len}, pad_id {pad}, "
          f"special tokens: {special})", file=stdout)
    for split, s in stats.items():
        print(f"  {split:<15} rows {s['rows']:>7}  skipped {s['skipped']:>5}  truncated "
              f"{s['truncated']:>5}  len mean {s['mean_len']:6.1f} max {s['max_len']:>4}  "
              f"tokens {s['tokens']:>9}", file=stdout)
    print(f"  done in {time.time() - t0:.1f} s", file=stdout)
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="prep_glue.py",
        description="Tokenize a GLUE task (original TSV layout) into actlora's HDF5 format "
                    "(see docs/data-format.md).")
    ap.add_argument("--task", required=True,
                    help="GLUE task: " + ", ".join(TASKS) + " (case and dash insensitive)")
    ap.add_argument("--glue-dir", required=True, help="directory with train.tsv / dev.tsv")
    ap.add_argument("--tokenizer", required=True, help="path of a HF tokenizer.json")
    ap.add_argument("--max-len", type=int, required=True,
                    help="truncate rows to this many tokens (special tokens included)")
    ap.add_argument("--out", required=True, help="output .h5 file (replaced atomically)")
    ap.add_argument("--pad-id", type=int, default=None,
                    help="pad token id recorded in the file (default: from the tokenizer)")
    ap.add_argument("--limit-train", type=int, default=0,
                    help="keep only the first N valid train rows (0 = all)")
    ap.add_argument("--any-header", action="store_true",
                    help="read a file whose header names differ from the task's original GLUE "
                         "layout, taking the columns by position")
    ap.add_argument("--no-bos-fallback", action="store_true",
                    help="never add tokenizer_config.json's bos_token when the tokenizer's "
                         "post-processor adds no special tokens")
    args = ap.parse_args(argv)
    try:
        prepare(args.task, args.glue_dir, args.tokenizer, args.max_len, args.out,
                pad_id=args.pad_id, limit_train=args.limit_train, any_header=args.any_header,
                bos_fallback=not args.no_bos_fallback)
    except PrepError as e:
        print(f"prep_glue.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
