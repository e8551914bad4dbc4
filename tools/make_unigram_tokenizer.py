#!/usr/bin/env python3
"""make_unigram_tokenizer.py: train the small SentencePiece-style Unigram tokenizer fixture.

DeBERTa-v3 tokenizes with a SentencePiece Unigram model.  No real DeBERTa-v3 tokenizer is
available here, so the tests use a tiny one with the same structure, trained with the
Hugging Face `tokenizers` library on the first lines of GLUE SST-2's train.tsv:

* model: Unigram (UnigramTrainer, --vocab-size pieces, specials included), unk = [UNK]; the
  capitals and digits training did not see (SST-2 is lowercased) are appended as single-character
  pieces with a score 1 below the lowest, so that cased text (MRPC) is not mostly [UNK];
* normalizer: Strip, NFKC, runs of spaces -> one space (DeBERTa-v3's tokenizer.json has Strip,
  SentencePiece's precompiled nmt_nfkc charsmap and the same Replace);
* pre-tokenizer and decoder: Metaspace ("▁", prepend_scheme "always");
* special ids as DeBERTa-v3's: [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, and [MASK] added after the
  Unigram vocabulary (DeBERTa-v3: 128000 = the size of its SentencePiece vocabulary);
* post-processor: TemplateProcessing "[CLS] $A [SEP]" / "[CLS] $A [SEP] $B:1 [SEP]:1"
  (DeBERTa-v3's template: type id 1 on the second text and its [SEP]).

UnigramTrainer is not deterministic, even single-threaded: two runs give the same pieces, but
scores that differ in the last bits (sums taken in hash-map order) and pieces of equal score in
another order, i.e. other ids.  The script therefore canonicalizes the result: scores are rounded
to 6 decimals (SentencePiece itself stores float32 scores) and the pieces after the specials are
sorted by (score descending, piece).  --check trains twice and reports whether the two canonical
files are byte-identical.  Whatever the check says, the committed file is the fixture: the tests
compare prep_glue.py with that file's own encode(), not with a fresh training.

Usage (from the repository root):

    python3 tools/make_unigram_tokenizer.py \
        [--tsv ../shared/data/glue/SST-2/train.tsv] [--lines 4000] [--vocab-size 1000] \
        [--out tests/fixtures/tiny-unigram/tokenizer.json] [--check]
"""

import argparse
import hashlib
import os
import sys

import json

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # fewer sources of variation (not enough alone)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TSV = os.path.join(ROOT, "..", "shared", "data", "glue", "SST-2", "train.tsv")
DEFAULT_OUT = os.path.join(ROOT, "tests", "fixtures", "tiny-unigram", "tokenizer.json")
SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]   # ids 0..3, as DeBERTa-v3
MASK = "[MASK]"                                   # added after the Unigram vocabulary
# SST-2 is lowercased: without these, capitals (MRPC is cased) and digits would all be [UNK]
ALPHABET = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def read_sentences(path, lines):
    """The sentence column of the first `lines` data lines of an SST-2 style TSV (header
    'sentence<TAB>label'); lines are split on '\\n' and fields on '\\t' only."""
    with open(path, "rb") as fh:
        raw = fh.read().decode("utf-8-sig").split("\n")
    if raw and raw[0].split("\t")[0].strip().lower() == "sentence":
        raw = raw[1:]
    out = []
    for line in raw:
        if len(out) >= lines:
            break
        text = line.rstrip("\r").split("\t")[0]
        if text.strip():
            out.append(text)
    if not out:
        raise SystemExit(f"make_unigram_tokenizer.py: error: no sentences in {path}")
    return out


def build(sentences, vocab_size):
    """Trains the tokenizer and returns its JSON text (tokenizer.json, compact)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.NFKC(),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="[UNK]",
                                      max_piece_length=16, show_progress=False)
    tok.train_from_iterator(sentences, trainer=trainer, length=len(sentences))
    for i, name in enumerate(SPECIALS):
        got = tok.token_to_id(name)
        if got != i:
            raise SystemExit(f"make_unigram_tokenizer.py: error: {name} got id {got}, expected {i}")
    # canonical form: rounded scores, pieces sorted by (score desc, piece) after the specials
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    head = vocab[:len(SPECIALS)]
    rest = [[p, round(float(sc), 6)] for p, sc in vocab[len(SPECIALS):]]
    have = {p for p, _ in rest}
    low = round(min(sc for _, sc in rest) - 1.0, 6)
    rest += [[c, low] for c in ALPHABET if c not in have]  # (the trainer's initial_alphabet would score
    rest.sort(key=lambda e: (-e[1], e[0]))                    # these in hash-set order: not reproducible)
    j["model"]["vocab"] = head + rest
    tok = Tokenizer.from_str(json.dumps(j))
    tok.add_special_tokens([MASK])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return tok.to_str(pretty=False)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="make_unigram_tokenizer.py", description=__doc__.split("\n")[0])
    ap.add_argument("--tsv", default=DEFAULT_TSV, help="SST-2 style TSV to train on")
    ap.add_argument("--lines", type=int, default=4000, help="use the first N sentences")
    ap.add_argument("--vocab-size", type=int, default=1000, help="Unigram pieces, specials included")
    ap.add_argument("--out", default=DEFAULT_OUT, help="tokenizer.json to write")
    ap.add_argument("--check", action="store_true", help="train twice and compare the two results")
    args = ap.parse_args(argv)

    sentences = read_sentences(args.tsv, args.lines)
    text = build(sentences, args.vocab_size)
    if args.check:
        again = build(sentences, args.vocab_size)
        same = again == text
        print(f"determinism: two trainings are {'byte-identical' if same else 'DIFFERENT'}")
        if not same:
            print("make_unigram_tokenizer.py: warning: training is not deterministic here; keep the committed "
                  "fixture", file=sys.stderr)
    data = (text + "\n").encode("utf-8")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, args.out)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(args.out)
    print(f"{args.out}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}, "
          f"vocab {tok.get_vocab_size(with_added_tokens=True)} ({MASK} = {tok.token_to_id(MASK)}), "
          f"trained on {len(sentences)} sentences of {args.tsv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
