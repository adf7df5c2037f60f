"""Reading, validating, encoding and batching corpora."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aiayn.atomic import OutputError
from aiayn.data.batching import ParallelData, collate, token_batches
from aiayn.data.corpus import CorpusError, read_parallel
from aiayn.data.prepare import PrepareConfig, load_manifest, prepare
from aiayn.data.vocab import CharVocab, load_vocab

from .conftest import make_pairs, write_tsv


def test_tsv_two_and_three_columns(tmp_path):
    a = write_tsv(tmp_path / "a.tsv", [("hola", "hello")])
    b = write_tsv(tmp_path / "b.tsv", [("hola", "hello")], ref=True)
    assert [(p.src, p.tgt) for p in read_parallel(a)] == [("hola", "hello")]
    assert [(p.src, p.tgt) for p in read_parallel(b)] == [("hola", "hello")]


def test_wrong_column_count_names_the_line(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("a\tb\nc\td\te\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad.tsv:2: expected 2"):
        list(read_parallel(p))
    p.write_text("only one column\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad.tsv:1:"):
        list(read_parallel(p))


def test_invalid_utf8_names_the_line(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_bytes(b"hola\thello\nad\xe9u\tbye\n")
    with pytest.raises(CorpusError, match=r"bad.tsv:2: invalid UTF-8"):
        list(read_parallel(p))


def test_mismatched_parallel_files(tmp_path):
    (tmp_path / "x.es").write_text("uno\ndos\ntres\n", encoding="utf-8")
    (tmp_path / "x.en").write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"x.es:3: has more lines than .*x.en \(2\)"):
        list(read_parallel(f"{tmp_path}/x.es,{tmp_path}/x.en"))


def test_jsonl(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"src": "hola", "tgt": "hello"}\n{"src": "x"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c.jsonl:2: expected an object"):
        list(read_parallel(p))


def test_prepare_drops_and_counts_empty_and_long_pairs(tmp_path):
    pairs = make_pairs(200) + [("", "empty source"), ("empty target", ""), ("x " * 300, "long")]
    train = write_tsv(tmp_path / "t.tsv", pairs)
    with open(train, "a", encoding="utf-8") as f:
        f.write("\n")  # an empty line
    m = prepare(PrepareConfig(train=str(train), out=str(tmp_path / "d"), vocab_size=100, max_len=64))
    info = m["splits"]["train"]
    assert info["dropped"] == {"empty": 3, "too_long": 1}
    assert info["pairs"] == 200
    data = ParallelData(tmp_path / "d", "train")
    assert len(data) == 200
    vocab = load_vocab(tmp_path / "d")
    assert vocab.decode(data.src(0)) == pairs[0][0]


def test_prepare_again_is_a_no_op_and_inputs_are_tracked(tmp_path):
    train = write_tsv(tmp_path / "t.tsv", make_pairs(100))
    cfg = PrepareConfig(train=str(train), out=str(tmp_path / "d"), vocab_size=100)
    prepare(cfg)
    stamp = (tmp_path / "d" / "train.src.tokens.npy").stat().st_mtime_ns
    assert prepare(cfg).get("up_to_date")
    assert (tmp_path / "d" / "train.src.tokens.npy").stat().st_mtime_ns == stamp
    write_tsv(train, make_pairs(120))  # the input changed: prepared again, but only when asked to
    with pytest.raises(OutputError, match="--overwrite"):
        prepare(cfg)
    cfg.overwrite = True
    m = prepare(cfg)
    assert not m.get("up_to_date") and m["splits"]["train"]["pairs"] == 120
    assert load_manifest(tmp_path / "d")["inputs"]["train"][0]["sha256"]


def test_char_vocab_roundtrip():
    v = CharVocab.train(["hello world"])
    assert v.decode(v.encode("hello")) == "hello"
    assert v.encode("z") == [1]  # unknown → <unk>


def test_token_batches_cover_everything_within_budget():
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 40, 500), rng.integers(1, 40, 500)
    batches = token_batches(src, tgt, max_tokens=200, seed=3, epoch=1)
    idx = np.concatenate(batches)
    assert sorted(idx.tolist()) == list(range(500))
    for b in batches:
        assert len(b) * max(src[b].max(), tgt[b].max()) <= 200
    again = token_batches(src, tgt, max_tokens=200, seed=3, epoch=1)
    assert all((a == b).all() for a, b in zip(batches, again))  # a function of (seed, epoch)
    other = token_batches(src, tgt, max_tokens=200, seed=3, epoch=2)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(batches, other))
    # Sorting by length keeps padding low.
    padded = sum(len(b) * tgt[b].max() for b in batches)
    assert padded < 1.15 * tgt.sum()


def test_collate_shifts_the_target(toy_data):
    data = ParallelData(toy_data, "train")
    src, tgt_in, tgt_out = collate(data, np.array([0, 1]))
    assert (tgt_in[:, 0] == 2).all()  # <s>
    n = len(data.tgt(0))
    assert tgt_out[0, n] == 3 and (tgt_in[0, 1 : n + 1] == tgt_out[0, :n]).all()
    assert src[0, len(data.src(0))] == 3  # source ends with </s>
    assert json.loads((toy_data / "manifest.json").read_text())["vocab"]["kind"] == "sentencepiece"
