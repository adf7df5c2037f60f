"""Reading, validating, encoding and batching corpora."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

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


def test_prepare_streams_in_chunks_with_the_same_result(toy_corpus, tmp_path, monkeypatch):
    """The corpus is encoded a chunk at a time: the arrays are those of encoding every kept pair, and the
    chunk size changes nothing."""
    import json

    import numpy as np

    from aiayn.data import prepare as prep
    from aiayn.data.batching import ParallelData
    from aiayn.data.vocab import load_vocab

    cfg = dict(train=str(toy_corpus["train"]), dev=str(toy_corpus["dev"]), vocab_size=120, max_len=12)
    prep.prepare(prep.PrepareConfig(out=str(tmp_path / "big"), **cfg))
    monkeypatch.setattr(prep, "ENCODE_CHUNK", 7)
    prep.prepare(prep.PrepareConfig(out=str(tmp_path / "small"), **cfg))
    for name in ("train.src.tokens", "train.tgt.offsets", "dev.tgt.tokens", "dev.src.offsets"):
        assert np.array_equal(np.load(tmp_path / "big" / f"{name}.npy"), np.load(tmp_path / "small" / f"{name}.npy"))
    assert (tmp_path / "big" / "dev.txt.jsonl").read_text() == (tmp_path / "small" / "dev.txt.jsonl").read_text()
    vocab = load_vocab(tmp_path / "small")
    pairs = [line.split("\t")[1:] for line in toy_corpus["train"].read_text().splitlines()]
    kept = [(s.strip(), t.strip()) for s, t in pairs
            if len(vocab.encode(s.strip())) <= 12 and len(vocab.encode(t.strip())) <= 12]
    data = ParallelData(tmp_path / "small", "train")
    assert len(data) == len(kept) < len(pairs)  # some pairs are longer than max_len
    for i in (0, len(kept) // 2, len(kept) - 1):
        assert data.src(i).tolist() == vocab.encode(kept[i][0]) and data.tgt(i).tolist() == vocab.encode(kept[i][1])
    manifest = json.loads((tmp_path / "small" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["dropped"]["too_long"] == len(pairs) - len(kept)
    assert not list((tmp_path / "small").glob(".*.raw"))


def _random_sentences(n: int) -> Iterator[str]:
    """``n`` sentences of 3–20 random made-up words (a 3,000-word vocabulary), the same every time."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    for _ in range(n):
        yield " ".join(rng.choice(words) for _ in range(rng.randint(3, 20)))


def _prepare_peak_increase_kb(**options: str) -> int:
    """How much `prepare(PrepareConfig(**options))` raises the peak memory of a fresh process, in KiB (Linux:
    VmRSS before, then the peak VmHWM, reset before preparing and read after it)."""
    import subprocess
    import sys

    code = ("import re; from aiayn.data.prepare import prepare, PrepareConfig\n"
            "def status(key): return int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
            "open('/proc/self/clear_refs', 'w').write('5')\n"
            "before = status('VmRSS')\n"
            f"prepare(PrepareConfig(**{options!r}))\n"
            "print(before, status('VmHWM'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0 and "clear_refs" in r.stderr:
        pytest.skip("needs Linux's /proc/self/clear_refs to measure the peak")
    assert r.returncode == 0, r.stderr[-2000:]
    before, after = map(int, r.stdout.split())
    return after - before


def test_prepare_memory_does_not_grow_with_the_corpus(tmp_path):
    """A corpus is never held whole: preparing 200,000 pairs (≈30 MB of text; the whole corpus in Python
    objects would take several times that) raises the process's peak memory by far less than the corpus."""
    (tmp_path / "big.tsv").write_text("".join(f"{s}\t{s.upper()}\n" for s in _random_sentences(200_000)))
    increase = _prepare_peak_increase_kb(train=str(tmp_path / "big.tsv"), out=str(tmp_path / "out"), vocab="char")
    corpus_kb = (tmp_path / "big.tsv").stat().st_size // 1024
    assert increase < corpus_kb, (increase, corpus_kb)  # KiB: under 1× the text's size


@pytest.mark.parametrize("vocab", ["char", "bpe"])
def test_lm_prepare_streams_with_the_same_result(tmp_path, monkeypatch, vocab):
    """A language model's text is encoded a chunk at a time: the token streams are those of encoding the
    whole text (cut at the character where the validation fraction begins, mid-line), whatever the chunk."""
    import numpy as np

    from aiayn.data import prepare as prep
    from aiayn.data.corpus import read_text
    from aiayn.data.vocab import load_vocab

    lines = [f"line {i}: the {'quick' if i % 3 else 'slow'} brown fox\x0bjumps" if i % 11 else "" for i in range(400)]
    (tmp_path / "text.txt").write_text("\r\n".join(lines) + "\n", encoding="utf-8")
    cfg = dict(train=str(tmp_path / "text.txt"), kind="lm", vocab=vocab, vocab_size=60, valid_fraction=0.37)
    prep.prepare(prep.PrepareConfig(out=str(tmp_path / "big"), **cfg))
    monkeypatch.setattr(prep, "LM_CHUNK_CHARS", 5)
    prep.prepare(prep.PrepareConfig(out=str(tmp_path / "small"), **cfg))
    text = read_text(tmp_path / "text.txt")
    cut = int(len(text) * 0.63)
    whole = load_vocab(tmp_path / "small")
    for split, part in (("train", text[:cut]), ("valid", text[cut:])):
        expected = prep.encode_lm_text(whole, part)
        for d in ("big", "small"):
            assert np.load(tmp_path / d / f"{split}.tokens.npy").tolist() == expected, (d, split)


def test_lm_prepare_memory_does_not_grow_with_the_text(tmp_path):
    """A language model's text is never held whole: preparing ≈30 MB of text raises the peak memory by
    less than the text's size (held whole, as str and ids, it took several times that)."""
    (tmp_path / "big.txt").write_text("".join(s + "\n" for s in _random_sentences(400_000)))
    increase = _prepare_peak_increase_kb(train=str(tmp_path / "big.txt"), out=str(tmp_path / "out"), kind="lm",
                                         vocab="char")
    text_kb = (tmp_path / "big.txt").stat().st_size // 1024
    assert increase < text_kb, (increase, text_kb)  # KiB: under 1× the text's size


def test_a_sentencepiece_model_with_other_special_ids_is_mapped_not_refused(tmp_path):
    """SentencePiece's default numbering (unk 0, bos 1, eos 2, no pad): prepared through --spm-model with
    the pieces renumbered into aiayn's order; the text splits exactly as the model splits it."""
    import io

    import sentencepiece as spm

    from aiayn.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID
    from aiayn.data.prepare import PrepareConfig, prepare
    from aiayn.data.vocab import load_vocab, sentencepiece_vocab

    lines = [f"el gato {i} come pescado y el perro {i % 7} duerme" for i in range(300)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=60, minloglevel=2,
                                   hard_vocab_limit=False)  # SentencePiece's defaults: <unk> 0, <s> 1, </s> 2
    (tmp_path / "theirs.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    assert [sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()] == [0, 1, 2, -1]
    vocab = sentencepiece_vocab(buf.getvalue())
    assert len(vocab) == sp.get_piece_size() + 1  # <pad> added
    assert vocab.pieces([PAD_ID, UNK_ID, BOS_ID, EOS_ID]) == ["<pad>", "<unk>", "<s>", "</s>"]
    for text in lines[:20] + ["zebra ñandú"]:
        ids = vocab.encode(text)
        assert ids == [vocab.index[sp.id_to_piece(i)] for i in sp.encode(text)]  # the model's split, renumbered
        assert vocab.decode(ids) == sp.decode([i for i in sp.encode(text) if i != sp.unk_id()])  # <unk> dropped, as aiayn does
    corpus = tmp_path / "c.tsv"
    corpus.write_text("".join(f"{s}\t{s.upper()}\n" for s in lines))
    prepare(PrepareConfig(train=str(corpus), out=str(tmp_path / "data"), spm_model=str(tmp_path / "theirs.model")))
    assert load_vocab(tmp_path / "data").pieces(range(len(vocab))) == vocab.pieces(range(len(vocab)))


@pytest.fixture(scope="module")
def sharded(toy_corpus, tmp_path_factory):
    """The toy corpus prepared whole and in shards of 130 pairs (600 pairs, a few dropped: 5 shards)."""
    from aiayn.data.prepare import PrepareConfig, prepare

    d = tmp_path_factory.mktemp("shards")
    cfg = dict(train=str(toy_corpus["train"]), dev=str(toy_corpus["dev"]), vocab_size=120, max_len=12)
    whole = prepare(PrepareConfig(out=str(d / "whole"), **cfg))
    parts = prepare(PrepareConfig(out=str(d / "parts"), shard_size=130, **cfg))
    return d / "whole", d / "parts", whole, parts


def test_prepare_writes_shards_that_together_are_the_corpus(sharded):
    import numpy as np

    from aiayn.data.batching import ParallelData, shard_names

    whole_dir, parts_dir, whole, parts = sharded
    sizes = parts["splits"]["train"]["shards"]
    assert sizes[:-1] == [130] * (len(sizes) - 1) and 0 < sizes[-1] <= 130 and sum(sizes) == whole["splits"]["train"]["pairs"]
    assert "shards" not in parts["splits"]["dev"] and (parts_dir / "dev.src.tokens.npy").is_file()  # only training
    assert {k: v for k, v in parts["splits"]["train"].items() if k != "shards"} == whole["splits"]["train"]
    names = shard_names(parts["splits"], "train")
    assert names[0] == "train@00000" and len(names) == len(sizes)
    one = ParallelData(whole_dir, "train")
    pieces = [ParallelData(parts_dir, name) for name in names]
    i = 0
    for piece in pieces:
        for j in range(len(piece)):
            assert np.array_equal(piece.src(j), one.src(i)) and np.array_equal(piece.tgt(j), one.tgt(i))
            i += 1
    assert i == len(one)
    with pytest.raises(FileNotFoundError, match="in shards"):
        ParallelData(parts_dir, "train")
    assert shard_names(whole["splits"], "train") == ["train"]  # a corpus within one shard keeps its plain names


def test_sharded_batches_stay_in_a_shard_cover_it_and_split_over_processes_like_accumulation(sharded):
    """Training reads one shard at a time, in an order drawn per epoch: every update's batches come from one
    shard; an epoch takes every batch of every shard but a remainder of less than one update; two processes
    take the batches of one process with update_freq 2; a position saved mid-shard continues the same."""
    from collections import Counter

    from aiayn.config import EOS_ID, load_run_config
    from aiayn.data.batching import ParallelData, token_batches
    from aiayn.train.feed import Feed

    _, parts_dir, _, parts = sharded

    def feed(update_freq: int) -> Feed:
        run = load_run_config(None, {"model": {"preset": "tiny"},
                                     "train": {"data": str(parts_dir), "max_tokens": 60, "update_freq": update_freq}})
        return Feed(run, "parallel", parts["splits"])

    def sentences(batch) -> list[tuple[int, ...]]:
        return [tuple(row[: row.tolist().index(EOS_ID)].tolist()) for row in batch[0]]  # sources without </s>, padding

    one, rank0, rank1 = feed(2), feed(1), feed(1)
    shards = {name: Counter(tuple(d.src(i).tolist()) for i in range(len(d)))
              for name in one.shards for d in [ParallelData(parts_dir, name)]}
    seen: dict[str, Counter] = {name: Counter() for name in one.shards}
    resumed, checked = None, False
    while True:
        micro, total = one.next_update(0, 1)
        if one.epoch > 0:
            break
        if resumed is not None:  # the position saved one update ago continues as the run did
            assert [sentences(x) for x in resumed.next_update(0, 1)[0]] == [sentences(x) for x in micro]
            resumed, checked = None, True
        name = one.train_data.name
        for batch in micro:
            seen[name].update(sentences(batch))
        assert not seen[name] - shards[name]  # from this shard, none twice
        (a,), total_a = rank0.next_update(0, 2)
        (b,), total_b = rank1.next_update(1, 2)
        assert sentences(a) == sentences(micro[0]) and sentences(b) == sentences(micro[1]) and total_a == total_b == total
        if not checked and one.shard_pos == 1 and one.batch_in_epoch > 2:  # in the middle of the second shard
            resumed = feed(2)
            resumed.load_state_dict(one.state_dict())
    assert checked and one.epoch == 1 and one.shard_pos == 0
    for k, name in enumerate(one.shards):  # every batch of each shard, but fewer than update_freq left over
        d = ParallelData(parts_dir, name)
        batches = token_batches(d.src_lens, d.tgt_lens, 60, one.cfg.seed, 0, shard=k)
        used = batches[: len(batches) - len(batches) % 2]
        assert sum(seen[name].values()) == sum(map(len, used)) > 0
