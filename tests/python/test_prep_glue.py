"""Tests for tools/prep_glue.py (GLUE TSV -> actlora HDF5).

* The nine original GLUE layouts, each written here as a tiny TSV in that exact layout
  (MRPC with a BOM, QQP with malformed rows, unknown labels, empty texts, '"' inside
  texts), tokenized with a small WordPiece tokenizer built here with a BERT-style
  TemplateProcessing post-processor: rows, labels, skipped counts, the FILE:LINE report
  on stderr, and tokens == tokenizer.encode(...) with truncation, type_ids ==
  tokenizer.encode(...).type_ids (0 on the first text, 1 on the second and its [SEP]).
* Longest-first truncation of pairs, the truncated counter, --limit-train, the pad id
  and BOS fallbacks, CLI errors.
* Byte-identical output on a re-run.
* The real data under ../shared (skipped when absent): SST-2, MRPC and CoLA dev with the
  real Llama-3 tokenizer, including MRPC's type ids against the tokenizer's own encode(a, b).

Encoder tokenizers (the real all-MiniLM-L6-v2 WordPiece one, a SentencePiece-style Unigram
fixture) are tested in test_prep_glue_encoders.py.

Run:  cd <repo> && python3 -m pytest -q tests/python/test_prep_glue.py
"""

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers")
h5py = pytest.importorskip("h5py")
np = pytest.importorskip("numpy")

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import prep_glue  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
GLUE = SHARED / "data" / "glue"
LLAMA3 = SHARED / "data" / "tokenizers" / "llama3" / "tokenizer.json"
LLAMA3_BOS = 128000
LLAMA3_PAD = 128004  # <|reserved_special_token_2|> (Llama-3.1: <|finetune_right_pad_id|>)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
WORDS = ("the a cat sat on mat she said hi to him he no was sitting quoted second "
         "unbalanced quote start first good film bad fine it is what why how question "
         "answer plane taking off air yes dog runs fast slow red blue").split()


# ----------------------------------------------------------------------------- helpers

def make_wordpiece(dirpath, pad=True, padding=None):
    """A small BERT-style tokenizer: lowercase, BertPreTokenizer, WordPiece over whole
    words + single letters + '##' letters (so nothing is [UNK]), post-processor
    [CLS] $A [SEP] / [CLS] $A [SEP] $B:1 [SEP]:1."""
    specials = SPECIALS if pad else SPECIALS[1:]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = specials + WORDS + letters + ["##" + c for c in letters] + list("\".,'?!*-")
    vocab = {}
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    if padding is not None:
        tok.enable_padding(pad_id=padding, pad_token=pieces[padding])
    Path(dirpath).mkdir(parents=True, exist_ok=True)
    path = Path(dirpath) / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def wp(tmp_path_factory):
    return make_wordpiece(tmp_path_factory.mktemp("tok") / "wp")


def ref_encodings(tok_path, texts, max_len):
    """Reference: the tokenizer's own encode with longest-first truncation."""
    tok = Tokenizer.from_file(str(tok_path))
    tok.enable_truncation(max_len, strategy="longest_first")
    return [tok.encode(*t) if isinstance(t, tuple) else tok.encode(t) for t in texts]


def ref_encode(tok_path, texts, max_len):
    return [e.ids for e in ref_encodings(tok_path, texts, max_len)]


def ref_types(tok_path, texts, max_len):
    return [e.type_ids for e in ref_encodings(tok_path, texts, max_len)]


def _s(v):
    return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else v


def load(path):
    """Returns (root attrs, {split: dict(rows=[token lists], labels, attrs, arrays)})."""
    with h5py.File(path, "r") as f:
        root = {k: f.attrs[k] for k in f.attrs}
        root = {k: ([_s(x) for x in v] if isinstance(v, np.ndarray) and v.dtype.kind == "S"
                    else _s(v)) for k, v in root.items()}
        splits = {}
        for name in root["splits"]:
            g = f[name]
            tok, off, lab = g["tokens"][:], g["offsets"][:], g["labels"][:]
            typ = g["type_ids"][:] if "type_ids" in g else None
            splits[name] = dict(
                tokens=tok, offsets=off, labels=lab, type_ids=typ,
                rows=[tok[off[i]:off[i + 1]].tolist() for i in range(len(off) - 1)],
                types=None if typ is None else [typ[off[i]:off[i + 1]].tolist() for i in range(len(off) - 1)],
                attrs={k: _s(g.attrs[k]) for k in g.attrs},
                dtypes={k: g[k].dtype for k in g.keys()},
                datasets=sorted(g.keys()))
    return root, splits


def run(task, glue_dir, tok, out, max_len=32, extra=()):
    argv = ["--task", task, "--glue-dir", str(glue_dir), "--tokenizer", str(tok),
            "--max-len", str(max_len), "--out", str(out), *extra]
    return prep_glue.main(argv)


SKIP_RE = re.compile(r"^(\S+):(\d+): skipped: (.*)$")


def reported_skips(err):
    return [(m.group(1), int(m.group(2)), m.group(3))
            for m in map(SKIP_RE.match, err.splitlines()) if m]


# --------------------------------------------------------------------- the nine layouts
#
# Each layout: header line (or None), a function formatting one row (texts, label) in the
# original column layout, per split file name.  Good rows are the same for every task
# (single or pair); bad rows are raw lines with the reason they must be skipped for.

SINGLE = ["the cat sat on the mat .", 'she said "hi" to him', '"unbalanced quote start',
          "it is a fine film "]
PAIRS = [("the cat sat .", "a cat was sitting ."), ('he said "no"', '"quoted second'),
         ("what is a plane ?", "a plane is taking off"), ("dog runs fast", "dog runs slow")]

MNLI_TRAIN_HDR = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                  "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
MNLI_DEV_HDR = MNLI_TRAIN_HDR.replace("label1\t", "label1\tlabel2\tlabel3\tlabel4\tlabel5\t")


def mnli_train(t, l):
    return f"7\t31193\t31193n\tgovernment\t( {t[0]} )\t( {t[1]} )\t(ROOT {t[0]})\t(ROOT {t[1]})\t{t[0]}\t{t[1]}\t{l}\t{l}"


def mnli_dev(t, l):
    return (f"0\t63735\t63735n\tslate\t( {t[0]} )\t( {t[1]} )\t(ROOT {t[0]})\t(ROOT {t[1]})\t"
            f"{t[0]}\t{t[1]}\t{l}\t{l}\tneutral\t{l}\t{l}\t{l}")


LAYOUTS = {
    "CoLA": dict(header=None, pair=False, labels=["1", "0", "1", "0"],
                 row=lambda t, l: f"gj04\t{l}\t{'*' if l == '0' else ''}\t{t[0]}",
                 bad=[("gj04\t2\t\tthe cat sat .", "unknown label '2'"),
                      ("gj04\t1\t\t ", "empty text"),
                      ("gj04\t1\tthe cat sat .", "wrong column count (3, expected 4)")]),
    "SST-2": dict(header="sentence\tlabel", pair=False, labels=["1", "0", "0", "1"],
                  row=lambda t, l: f"{t[0]}\t{l}",
                  bad=[("the cat sat .\tpositive", "unknown label 'positive'"),
                       ("\t1", "empty text"),
                       ("the cat\tsat\t1", "wrong column count (3, expected 2)")]),
    "MRPC": dict(header="\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String", pair=True,
                 labels=["1", "0", "1", "1"],
                 row=lambda t, l: f"{l}\t702876\t702977\t{t[0]}\t{t[1]}",
                 bad=[("2\t1\t2\tthe cat .\ta dog .", "unknown label '2'"),
                      ("1\t1\t2\tthe cat .\t", "empty text"),
                      ("1\t1\t2\tthe cat .", "wrong column count (4, expected 5)")]),
    "STS-B": dict(header="index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\t"
                         "sentence1\tsentence2\tscore", pair=True,
                  labels=["5.000", "0.000", "3.800", "2.5"],
                  row=lambda t, l: f"0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\t{t[0]}\t{t[1]}\t{l}",
                  bad=[("1\tmain-news\tMSRpar\t2012\t2\tnone\tnone\ta cat\ta dog\tfive",
                        "unparsable score 'five'"),
                       ("1\tmain-news\tMSRpar\t2012\t2\tnone\tnone\ta cat\ta dog\tnan",
                        "unparsable score 'nan'"),
                       ("1\tmain-news\tMSRpar\t2012\t2\tnone\tnone\t\ta dog\t1.0", "empty text")]),
    "QQP": dict(header="id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", pair=True,
                labels=["0", "1", "1", "0"],
                row=lambda t, l: f"133273\t213221\t213222\t{t[0]}\t{t[1]}\t{l}",
                bad=[("201841\t303951\t303952\twhat is a question", "wrong column count (4, expected 6)"),
                     ("how is an answer ?\t0", "wrong column count (2, expected 6)"),
                     ("5\t11\t12\twhy ?\t\t0", "empty text"),
                     ("5\t11\t12\twhy ?\thow ?\tmaybe", "unknown label 'maybe'")]),
    "MNLI": dict(header=None, pair=True, labels=["neutral", "contradiction", "entailment", "neutral"],
                 row=None,
                 bad=[(mnli_train(("a cat", "a dog"), "-"), "unknown label '-'"),
                      ("7\t31193\t31193n\tgovernment\ta cat", "wrong column count (5, expected 12)")]),
    "QNLI": dict(header="index\tquestion\tsentence\tlabel", pair=True,
                 labels=["entailment", "not_entailment", "not_entailment", "entailment"],
                 row=lambda t, l: f"0\t{t[0]}\t{t[1]}\t{l}",
                 bad=[("1\twhat ?\tit is .\tcontradiction", "unknown label 'contradiction'"),
                      ("1\twhat ?\tit is .\tentailment\textra", "wrong column count (5, expected 4)")]),
    "RTE": dict(header="index\tsentence1\tsentence2\tlabel", pair=True,
                labels=["not_entailment", "entailment", "entailment", "not_entailment"],
                row=lambda t, l: f"0\t{t[0]}\t{t[1]}\t{l}",
                bad=[("1\ta cat .\ta dog .\t0", "unknown label '0'"),
                     ("1\ta cat .\t   \tentailment", "empty text")]),
    "WNLI": dict(header="index\tsentence1\tsentence2\tlabel", pair=True,
                 labels=["1", "0", "0", "1"],
                 row=lambda t, l: f"0\t{t[0]}\t{t[1]}\t{l}",
                 bad=[("1\ta cat .\ta dog .\tentailment", "unknown label 'entailment'")]),
}


def write_task(root, task):
    """Writes train/dev TSVs for `task` in its original layout.  Returns
    {split: (file name, texts, label strings, [(line, reason)])}."""
    spec = LAYOUTS[task]
    d = Path(root) / task
    d.mkdir(parents=True, exist_ok=True)
    texts = PAIRS if spec["pair"] else SINGLE
    labels = spec["labels"]
    if task == "MNLI":
        files = [("train", "train.tsv", MNLI_TRAIN_HDR, mnli_train),
                 ("dev_matched", "dev_matched.tsv", MNLI_DEV_HDR, mnli_dev),
                 ("dev_mismatched", "dev_mismatched.tsv", MNLI_DEV_HDR, mnli_dev)]
    else:
        files = [("train", "train.tsv", spec["header"], spec["row"]),
                 ("dev", "dev.tsv", spec["header"], spec["row"])]
    expect = {}
    for split, fname, header, row in files:
        lines = [] if header is None else [header]
        good_t, good_l, skipped = [], [], []
        bad = list(spec["bad"]) if split == "train" else []
        # interleave: good, bad, good, bad, ... then the rest
        for i, (t, l) in enumerate(zip(texts, labels)):
            lines.append(row(t if spec["pair"] else (t,), l))
            good_t.append(t)
            good_l.append(l)
            if i < len(bad):
                lines.append(bad[i][0])
                skipped.append((len(lines), bad[i][1]))
        for b, reason in bad[len(texts):]:
            lines.append(b)
            skipped.append((len(lines), reason))
        if split != "train":  # dev: a subset, in another order
            good_t, good_l = good_t[::-1][:3], good_l[::-1][:3]
            lines = ([] if header is None else [header]) + [
                row(t if spec["pair"] else (t,), l) for t, l in zip(good_t, good_l)]
        (d / fname).write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
        expect[split] = (fname, good_t, good_l, skipped)
    return d, expect


def check_task(task, glue_dir, expect, tok_path, out, capsys, max_len=32):
    assert run(task, glue_dir, tok_path, out, max_len) == 0
    err = capsys.readouterr().err
    root, splits = load(out)
    spec = prep_glue.TASKS[task]
    regression = spec["labels"] is None
    assert root["format"] == "actlora-glue" and root["format_version"] == 2
    assert root["task"] == task
    assert root["is_regression"] == int(regression)
    assert root["num_labels"] == (1 if regression else len(spec["labels"]))
    assert list(root["label_names"]) == ([] if regression else spec["labels"])
    assert root["pad_id"] == 0 and root["max_len"] == max_len
    assert root["tokenizer_sha256"] == hashlib.sha256(Path(tok_path).read_bytes()).hexdigest()
    assert root["tokenizer_name"] == Path(tok_path).parent.name
    assert root["special_tokens"] == "post_processor"
    assert list(root["splits"]) == list(expect)

    reports = reported_skips(err)
    for split, (fname, texts, labels, skipped) in expect.items():
        s = splits[split]
        assert s["datasets"] == ["labels", "offsets", "tokens", "type_ids"]
        assert s["dtypes"]["tokens"] == np.dtype("<i4") and s["dtypes"]["offsets"] == np.dtype("<i8")
        assert s["dtypes"]["type_ids"] == np.dtype("u1") and len(s["type_ids"]) == len(s["tokens"])
        assert s["dtypes"]["labels"] == np.dtype("<f4" if regression else "<i4")
        a = s["attrs"]
        assert a["source_file"] == fname
        assert a["source_sha256"] == hashlib.sha256((glue_dir / fname).read_bytes()).hexdigest()
        assert a["rows"] == len(texts) and a["skipped"] == len(skipped)
        assert ("limit_train" in a) == (split == "train")
        if regression:
            np.testing.assert_array_equal(s["labels"], np.array([float(x) for x in labels], np.float32))
        else:
            assert s["labels"].tolist() == [spec["labels"].index(x) for x in labels]
        assert s["offsets"][0] == 0 and s["offsets"][-1] == len(s["tokens"])
        assert s["rows"] == ref_encode(tok_path, texts, max_len)
        want_types = ref_types(tok_path, texts, max_len)
        assert s["types"] == want_types
        pair = isinstance(texts[0], tuple)
        assert all(any(t) == pair for t in want_types)        # BERT template: 1s only in pairs
        assert a["max_type_id"] == int(pair)
        assert a["max_row_len"] == max(len(r) for r in s["rows"])
        assert a["truncated"] == 0
        mine = sorted((line, reason) for f, line, reason in reports if f == fname)
        assert [l for l, _ in mine] == [l for l, _ in skipped], (fname, err)
        for (_, got), (_, want) in zip(mine, skipped):
            assert want in got
    return root, splits


@pytest.mark.parametrize("task", list(LAYOUTS))
def test_layouts(task, tmp_path, wp, capsys):
    glue_dir, expect = write_task(tmp_path / "glue", task)
    check_task(task, glue_dir, expect, wp, tmp_path / f"{task}.h5", capsys)


def test_quotes_kept_verbatim(tmp_path, wp, capsys):
    """'"' inside and at the start of fields is plain text (no CSV quote processing)."""
    glue_dir, expect = write_task(tmp_path / "glue", "SST-2")
    assert run("sst2", glue_dir, wp, tmp_path / "o.h5") == 0
    _, splits = load(tmp_path / "o.h5")
    tok = Tokenizer.from_file(str(wp))
    quote = tok.token_to_id('"')
    rows = splits["train"]["rows"]
    assert rows[1].count(quote) == 2 and rows[2].count(quote) == 1
    assert rows[2][1] == quote                               # first text token of '"unbalanced...'
    # the row after the unbalanced quote is still its own row
    assert splits["train"]["labels"].tolist() == [1, 0, 0, 1]


def test_mrpc_bom_and_case_insensitive_names(tmp_path, wp, capsys):
    glue_dir, _ = write_task(tmp_path / "glue", "MRPC")
    assert (glue_dir / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    for name in ["MRPC", "mrpc", "Mrpc"]:
        assert run(name, glue_dir, wp, tmp_path / "o.h5") == 0
        assert "header columns" not in capsys.readouterr().err  # BOM stripped before the check
    assert prep_glue.canonical_task("stsb") == "STS-B"
    assert prep_glue.canonical_task("STS_B") == "STS-B"
    assert prep_glue.canonical_task("sst-2") == "SST-2"
    assert prep_glue.canonical_task("cola") == "CoLA"


def test_skip_report_is_capped(tmp_path, wp, capsys):
    d = tmp_path / "SST-2"
    d.mkdir()
    lines = ["sentence\tlabel", "the cat\t1"] + [f"bad row {i}\t7" for i in range(25)] + ["a dog\t0"]
    (d / "train.tsv").write_text("\n".join(lines) + "\n")
    (d / "dev.tsv").write_text("sentence\tlabel\nthe cat\t1\n\n")  # blank line: skipped
    assert run("SST-2", d, wp, tmp_path / "o.h5") == 0
    err = capsys.readouterr().err
    rep = reported_skips(err)
    assert [l for f, l, _ in rep if f == "train.tsv"] == list(range(3, 23))
    assert "5 more skipped rows not shown (25 in all)" in err
    assert [(f, l) for f, l, _ in rep if f == "dev.tsv"] == [("dev.tsv", 3)]
    _, s = load(tmp_path / "o.h5")
    assert s["train"]["attrs"]["skipped"] == 25 and s["train"]["attrs"]["rows"] == 2
    assert s["dev"]["attrs"]["skipped"] == 1


def test_crlf_and_no_final_newline(tmp_path, wp, capsys):
    d = tmp_path / "RTE"
    d.mkdir()
    body = "index\tsentence1\tsentence2\tlabel\r\n0\ta cat\ta dog\tentailment\r\n1\tno\tyes\tnot_entailment"
    (d / "train.tsv").write_bytes(body.encode())
    (d / "dev.tsv").write_bytes(body.encode())
    assert run("rte", d, wp, tmp_path / "o.h5") == 0
    _, s = load(tmp_path / "o.h5")
    assert s["train"]["labels"].tolist() == [0, 1]
    assert s["train"]["rows"] == ref_encode(wp, [("a cat", "a dog"), ("no", "yes")], 32)


# ------------------------------------------------------------------------- truncation

def test_truncation_longest_first(tmp_path, wp, capsys):
    long_a = " ".join(["the cat sat on the mat"] * 5)      # 30 tokens
    long_b = " ".join(["a dog runs fast"] * 6)             # 24 tokens
    rows = [(long_a, "a dog"), (long_a, long_b), ("hi", "no"), ("a b c d e f g", "h i j k l m")]
    d = tmp_path / "RTE"
    d.mkdir()
    tsv = "index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\t{a}\t{b}\tentailment\n" for i, (a, b) in enumerate(rows))
    (d / "train.tsv").write_text(tsv)
    (d / "dev.tsv").write_text(tsv)
    max_len = 16   # 3 special tokens -> 13 for the texts; row 3 is exactly 13 + 3
    assert run("RTE", d, wp, tmp_path / "o.h5", max_len=max_len) == 0
    _, s = load(tmp_path / "o.h5")
    got = s["train"]["rows"]
    assert got == ref_encode(wp, rows, max_len)
    assert s["train"]["types"] == ref_types(wp, rows, max_len)
    for r, t in zip(got, s["train"]["types"]):   # [CLS] A [SEP] -> 0, B [SEP] -> 1
        k = r.index(Tokenizer.from_file(str(wp)).token_to_id("[SEP]"))
        assert t == [0] * (k + 1) + [1] * (len(r) - k - 1)

    tok = Tokenizer.from_file(str(wp))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    full = [(tok.encode(a, add_special_tokens=False).ids, tok.encode(b, add_special_tokens=False).ids)
            for a, b in rows]
    for (fa, fb), r in zip(full, got[:2]):
        assert len(r) == max_len and r[0] == cls and r[-1] == sep
        k = r.index(sep)
        pa, pb = r[1:k], r[k + 1:-1]
        assert pa == fa[:len(pa)] and pb == fb[:len(pb)]   # prefixes of each text
    # short second text kept whole, the long first one takes the rest
    k = got[0].index(sep)
    assert got[0][k + 1:-1] == full[0][1] and k - 1 == max_len - 3 - len(full[0][1])
    # both long: split evenly (longest first)
    k = got[1].index(sep)
    assert abs((k - 1) - (max_len - 3 - (k - 1))) <= 1
    assert got[2] == [cls] + full[2][0] + [sep] + full[2][1] + [sep]
    assert len(got[3]) == max_len and got[3] == [cls] + full[3][0] + [sep] + full[3][1] + [sep]
    a = s["train"]["attrs"]
    assert a["truncated"] == 2          # row 3 is exactly max_len but not truncated
    assert a["max_row_len"] == max_len


def test_truncation_single(tmp_path, wp, capsys):
    d = tmp_path / "SST-2"
    d.mkdir()
    text = " ".join(["the cat sat on the mat"] * 10)
    (d / "train.tsv").write_text(f"sentence\tlabel\n{text}\t1\nhi\t0\n")
    (d / "dev.tsv").write_text("sentence\tlabel\nhi\t0\n")
    assert run("SST-2", d, wp, tmp_path / "o.h5", max_len=8) == 0
    _, s = load(tmp_path / "o.h5")
    tok = Tokenizer.from_file(str(wp))
    full = tok.encode(text).ids
    assert s["train"]["rows"][0] == full[:7] + [full[-1]]      # [CLS] 6 tokens [SEP]
    assert s["train"]["attrs"]["truncated"] == 1
    assert "truncated     1" in capsys.readouterr().out


def test_tokenizer_json_truncation_and_padding_replaced(tmp_path, capsys):
    """A tokenizer.json with its own truncation (max_length 6) and fixed padding (to 40), as
    BERT tokenizers ship them: --max-len alone decides, nothing is padded."""
    tok = Tokenizer.from_file(str(make_wordpiece(tmp_path / "plain")))
    tok.enable_truncation(6, strategy="only_second", direction="left")
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=40)
    (tmp_path / "bert").mkdir()
    path = tmp_path / "bert" / "tokenizer.json"
    tok.save(str(path))
    long_a = " ".join(["the cat sat on the mat"] * 5)      # 30 tokens
    rows = [(long_a, "a dog runs fast"), ("hi", "no")]
    d = tmp_path / "RTE"
    d.mkdir()
    tsv = "index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\t{a}\t{b}\tentailment\n" for i, (a, b) in enumerate(rows))
    (d / "train.tsv").write_text(tsv)
    (d / "dev.tsv").write_text(tsv)
    assert run("RTE", d, path, tmp_path / "o.h5", max_len=20) == 0
    root, s = load(tmp_path / "o.h5")
    got, types = s["train"]["rows"], s["train"]["types"]
    assert root["pad_id"] == 0
    assert [len(r) for r in got] == [20, 5]                # not 6, not 40
    ref = Tokenizer.from_file(str(tmp_path / "plain" / "tokenizer.json"))
    ref.enable_truncation(20, strategy="longest_first")
    for (a, b), r, t in zip(rows, got, types):
        e = ref.encode(a, b)
        assert r == e.ids and t == e.type_ids
    assert got[0][-5:-1] == ref.encode("a dog runs fast", add_special_tokens=False).ids  # B kept whole


def test_limit_train(tmp_path, wp, capsys):
    glue_dir, expect = write_task(tmp_path / "glue", "QNLI")
    assert run("QNLI", glue_dir, wp, tmp_path / "o.h5", extra=["--limit-train", "2"]) == 0
    _, s = load(tmp_path / "o.h5")
    assert s["train"]["attrs"]["rows"] == 2 and s["train"]["attrs"]["limit_train"] == 2
    assert s["train"]["labels"].tolist() == [0, 1]
    assert s["train"]["rows"] == ref_encode(wp, PAIRS[:2], 32)
    assert s["dev"]["attrs"]["rows"] == 3                      # dev is never limited
    assert run("QNLI", glue_dir, wp, tmp_path / "p.h5") == 0
    assert load(tmp_path / "p.h5")[1]["train"]["attrs"]["limit_train"] == 0


# ------------------------------------------------------------------- byte identity

def test_rerun_is_byte_identical(tmp_path, wp, capsys):
    glue_dir, _ = write_task(tmp_path / "glue", "MNLI")
    out1, out2 = tmp_path / "a" / "mnli.h5", tmp_path / "b" / "mnli.h5"
    assert run("MNLI", glue_dir, wp, out1) == 0
    time.sleep(1.1)   # a timestamp anywhere in the file would now differ
    assert run("mnli", glue_dir, wp, out2) == 0
    assert out1.read_bytes() == out2.read_bytes()
    assert run("MNLI", glue_dir, wp, out1) == 0          # over an existing file
    assert out1.read_bytes() == out2.read_bytes()
    assert sorted(os.listdir(out1.parent)) == ["mnli.h5"]  # no temporary left behind


# ---------------------------------------------------------------- pad id, BOS, errors

def test_pad_id_resolution(tmp_path, wp, capsys):
    glue_dir, _ = write_task(tmp_path / "glue", "WNLI")
    out = tmp_path / "o.h5"
    assert run("WNLI", glue_dir, wp, out) == 0
    assert load(out)[0]["pad_id"] == 0                                      # [PAD]
    assert run("WNLI", glue_dir, wp, out, extra=["--pad-id", "5"]) == 0
    assert load(out)[0]["pad_id"] == 5
    padded = make_wordpiece(tmp_path / "padded", padding=7)
    assert run("WNLI", glue_dir, padded, out) == 0
    root, s = load(out)
    assert root["pad_id"] == 7                                              # tokenizer padding
    assert len(set(len(r) for r in s["train"]["rows"])) > 1                  # ...but no padding
    nopad = make_wordpiece(tmp_path / "nopad", pad=False)
    capsys.readouterr()
    assert run("WNLI", glue_dir, nopad, out) == 1
    assert "--pad-id" in capsys.readouterr().err
    assert run("WNLI", glue_dir, nopad, out, extra=["--pad-id", "100000"]) == 1
    assert "outside the vocabulary" in capsys.readouterr().err


def make_plain(dirpath, config):
    """A word-level tokenizer with no post-processor (like the original Llama-3 one)."""
    vocab = {w: i for i, w in enumerate(["<s>", "</s>", "<unk>"] + WORDS + ["."])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    Path(dirpath).mkdir(parents=True)
    tok.save(str(Path(dirpath) / "tokenizer.json"))
    if config is not None:
        (Path(dirpath) / "tokenizer_config.json").write_text(__import__("json").dumps(config))
    return Path(dirpath) / "tokenizer.json"


def test_bos_fallback(tmp_path, capsys):
    glue_dir, _ = write_task(tmp_path / "glue", "RTE")
    out = tmp_path / "o.h5"
    tok = make_plain(tmp_path / "withbos", {"bos_token": {"content": "<s>"}})
    assert run("RTE", glue_dir, tok, out, extra=["--pad-id", "1"]) == 0
    root, s = load(out)
    assert root["special_tokens"] == "post_processor+bos:<s>"
    plain = Tokenizer.from_file(str(tok))
    for (a, b), r in zip(PAIRS, s["train"]["rows"]):
        assert r == [0] + plain.encode(a).ids + [0] + plain.encode(b).ids   # BOS A BOS B
    assert run("RTE", glue_dir, tok, out, extra=["--pad-id", "1", "--no-bos-fallback"]) == 0
    root, s = load(out)
    assert root["special_tokens"] == "post_processor"
    assert s["train"]["rows"][0] == plain.encode(*PAIRS[0]).ids
    off = make_plain(tmp_path / "off", {"bos_token": "<s>", "add_bos_token": False})
    assert run("RTE", glue_dir, off, out, extra=["--pad-id", "1"]) == 0
    assert load(out)[0]["special_tokens"] == "post_processor"
    noconf = make_plain(tmp_path / "noconf", None)
    assert run("RTE", glue_dir, noconf, out, extra=["--pad-id", "1"]) == 0
    assert load(out)[1]["train"]["rows"][0][0] != 0


def test_rows_without_tokens_are_skipped(tmp_path, capsys):
    """A text the normalizer removes entirely (a control character) with a tokenizer that
    adds no special tokens would give an empty row: it is skipped and reported."""
    vocab = {w: i for i, w in enumerate(["<unk>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "t").mkdir()
    tok.save(str(tmp_path / "t" / "tokenizer.json"))
    d = tmp_path / "SST-2"
    d.mkdir()
    (d / "train.tsv").write_text("sentence\tlabel\nthe cat\t1\n\x01\t0\na dog\t0\n")
    (d / "dev.tsv").write_text("sentence\tlabel\nthe cat\t1\n")
    assert run("SST-2", d, tmp_path / "t" / "tokenizer.json", tmp_path / "o.h5",
               extra=["--pad-id", "0"]) == 0
    assert ("train.tsv", 3, "no tokens") in reported_skips(capsys.readouterr().err)
    _, s = load(tmp_path / "o.h5")
    assert s["train"]["attrs"]["rows"] == 2 and s["train"]["attrs"]["skipped"] == 1
    assert s["train"]["labels"].tolist() == [1, 0]
    assert all(len(r) > 0 for r in s["train"]["rows"])


def test_errors(tmp_path, wp, capsys):
    glue_dir, _ = write_task(tmp_path / "glue", "SST-2")
    out = tmp_path / "o.h5"
    assert run("SST-3", glue_dir, wp, out) == 1
    assert "unknown task" in capsys.readouterr().err
    assert run("SST-2", tmp_path / "nowhere", wp, out) == 1
    assert "missing GLUE directory" in capsys.readouterr().err
    (glue_dir / "dev.tsv").unlink()
    assert run("SST-2", glue_dir, wp, out) == 1
    err = capsys.readouterr().err
    assert "missing file(s)" in err and "dev.tsv" in err
    glue_dir, _ = write_task(tmp_path / "glue2", "SST-2")
    assert run("SST-2", glue_dir, tmp_path / "none.json", out) == 1
    assert "missing tokenizer" in capsys.readouterr().err
    assert run("SST-2", glue_dir, wp, out, max_len=2) == 1           # [CLS] [SEP] fill it
    assert "no room" in capsys.readouterr().err
    assert run("SST-2", glue_dir, wp, out, extra=["--limit-train", "-1"]) == 1
    # wrong task for the directory: CoLA reading SST-2 files -> no usable rows
    assert run("CoLA", glue_dir, wp, out) == 1
    assert "no usable rows" in capsys.readouterr().err
    # same column count, different header -> refused; with --any-header a warning, and labels decide
    wn, _ = write_task(tmp_path / "glue3", "WNLI")
    assert run("QNLI", wn, wp, out) == 1
    err = capsys.readouterr().err
    assert "header columns ['sentence1', 'sentence2', 'label'] are not the original QNLI" in err
    assert "--any-header" in err and "no usable rows" not in err
    assert not out.exists()
    assert run("QNLI", wn, wp, out, extra=["--any-header"]) == 1
    err = capsys.readouterr().err
    assert "reading them by position (--any-header)" in err and "no usable rows" in err
    assert not out.exists()
    # CoLA's header-less file read as SST-2: every row would pass (column 0 as text, 1 as label)
    cola, _ = write_task(tmp_path / "glue4", "CoLA")
    assert run("SST-2", cola, wp, out) == 1
    err = capsys.readouterr().err
    assert "is this the SST-2 directory?" in err and not out.exists()
    assert run("SST-2", cola, wp, out, extra=["--any-header"]) == 0
    assert "differ from the original SST-2 layout" in capsys.readouterr().err
    out.unlink()
    with pytest.raises(SystemExit) as e:
        prep_glue.main(["--task", "SST-2"])
    assert e.value.code == 2


def test_cli_subprocess(tmp_path, wp):
    glue_dir, _ = write_task(tmp_path / "glue", "CoLA")
    cmd = [sys.executable, str(ROOT / "tools" / "prep_glue.py"), "--task", "CoLA", "--glue-dir",
           str(glue_dir), "--tokenizer", str(wp), "--max-len", "32", "--out", str(tmp_path / "o.h5")]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "train" in p.stdout and "rows" in p.stdout and "train.tsv:2: skipped: unknown label" in p.stderr
    p = subprocess.run(cmd[:5] + [str(tmp_path / "missing")] + cmd[6:], capture_output=True, text=True)
    assert p.returncode != 0 and "missing GLUE directory" in p.stderr


# ------------------------------------------------------------------------- real data

needs_shared = pytest.mark.skipif(not (GLUE.is_dir() and LLAMA3.is_file()),
                                  reason=f"real GLUE data / Llama-3 tokenizer not under {SHARED}")


def tsv_rows(path, header):
    lines = Path(path).read_bytes().decode("utf-8-sig").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [l.split("\t") for l in lines[1 if header else 0:]]


@pytest.fixture(scope="module")
def llama3():
    tok = Tokenizer.from_file(str(LLAMA3))
    return tok


@needs_shared
@pytest.mark.parametrize("task,n_dev,header,label_col,text_cols", [
    ("SST-2", 872, True, 1, (0,)),
    ("MRPC", 408, True, 0, (3, 4)),
    ("CoLA", 1043, False, 1, (3,)),
])
def test_real_glue_dev(task, n_dev, header, label_col, text_cols, tmp_path, llama3, capsys):
    out = tmp_path / f"{task}.h5"
    assert run(task, GLUE / task, LLAMA3, out, max_len=128,
               extra=["--pad-id", str(LLAMA3_PAD), "--limit-train", "50"]) == 0
    root, s = load(out)
    assert root["task"] == task and root["tokenizer_name"] == "llama3"
    assert root["pad_id"] == LLAMA3_PAD and root["special_tokens"].startswith("post_processor+bos")
    assert root["tokenizer_sha256"] == hashlib.sha256(LLAMA3.read_bytes()).hexdigest()
    dev = s["dev"]
    assert dev["attrs"]["rows"] == n_dev and dev["attrs"]["skipped"] == 0
    assert s["train"]["attrs"]["rows"] == 50
    ref = tsv_rows(GLUE / task / "dev.tsv", header)
    assert len(ref) == n_dev
    assert dev["labels"].tolist() == [int(r[label_col]) for r in ref]
    assert all(r[0] == LLAMA3_BOS for r in dev["rows"])
    pair = len(text_cols) == 2
    assert all(r.count(LLAMA3_BOS) == (2 if pair else 1) for r in dev["rows"])
    # the text tokens are the plain encodings (nothing truncated at 128)
    assert dev["attrs"]["truncated"] == 0
    enc = llama3.encode_batch([r[text_cols[0]] for r in ref], add_special_tokens=False)
    if pair:
        enc_b = llama3.encode_batch([r[text_cols[1]] for r in ref], add_special_tokens=False)
        want = [[LLAMA3_BOS] + a.ids + [LLAMA3_BOS] + b.ids for a, b in zip(enc, enc_b)]
    else:
        want = [[LLAMA3_BOS] + a.ids for a in enc]
    assert dev["rows"] == want
    # type ids: the BOS fallback template gives sentence 2 (and its BOS) type id 1
    if pair:
        want_t = [[0] * (1 + len(a.ids)) + [1] * (1 + len(b.ids)) for a, b in zip(enc, enc_b)]
    else:
        want_t = [[0] * (1 + len(a.ids)) for a in enc]
    assert dev["types"] == want_t
    assert dev["attrs"]["max_type_id"] == int(pair)
    if pair:   # ... which is what that template's own encode(a, b) assigns
        tmpl = Tokenizer.from_file(str(LLAMA3))
        tmpl.post_processor = processors.Sequence([tmpl.post_processor, processors.TemplateProcessing(
            single="<|begin_of_text|>:0 $A:0", pair="<|begin_of_text|>:0 $A:0 <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", LLAMA3_BOS)])])
        for i in range(0, n_dev, 17):
            e = tmpl.encode(ref[i][text_cols[0]], ref[i][text_cols[1]])
            assert dev["rows"][i] == e.ids and dev["types"][i] == e.type_ids
    if task == "MRPC":   # quotes survive: the first dev row's second sentence starts with '"'
        assert llama3.decode(dev["rows"][0], skip_special_tokens=False).split("<|begin_of_text|>")[2].startswith('"The foodservice')
