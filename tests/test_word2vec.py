"""word2vec (aiayn.word2vec): the training signal, the windows, the file format gensim reads, and the
evaluations against gensim's and scipy's own code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aiayn.config import ConfigError, Word2VecConfig
from aiayn.word2vec import (
    WordVectors,
    context_table,
    kernel,
    load,
    negative_sampling_step,
    parse_query,
    save,
    tokenize,
    train_word2vec,
)
from aiayn.word2vec.vectors import gensim_test_file, spearman

from .test_cli import aiayn


def synthetic_corpus(path, n=3000, seed=0):
    """Sentences where cat/dog and car/bus are interchangeable: each pair shares its contexts."""
    rng = np.random.default_rng(seed)
    animals, vehicles = ["cat", "dog"], ["car", "bus"]
    lines = []
    for _ in range(n):
        if rng.random() < 0.5:
            lines.append(f"the {rng.choice(animals)} eats fish and sleeps on the mat")
        else:
            lines.append(f"a {rng.choice(vehicles)} drives on roads with wheels and fuel")
    path.write_text("\n".join(lines) + "\n")
    return path


needs_numba = pytest.mark.skipif(not kernel.available(), reason="numba is not installed")
ENGINES = ["torch", pytest.param("numba", marks=needs_numba)]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model,workers", [("cbow", 1), ("skipgram", 1), ("cbow", 2), ("skipgram", 2)])
def test_loss_falls_and_interchangeable_words_end_up_nearest(tmp_path, model, workers, engine):
    """One worker, or two threads updating the vectors at once (Hogwild, as gensim's workers): both learn,
    with either engine."""
    corpus = synthetic_corpus(tmp_path / "c.txt")
    cfg = Word2VecConfig(input=[str(corpus)], out=str(tmp_path / "v"), model=model, dim=16, epochs=4, min_count=1,
                         sample=0, batch=256, seed=3, workers=workers, engine=engine)
    threads = torch.get_num_threads()
    vectors, stats = train_word2vec(cfg)
    assert stats["engine"] == engine
    assert torch.get_num_threads() == threads  # the workers' one thread each is given back
    assert stats["loss_per_epoch"][-1] < stats["loss_per_epoch"][0]
    assert vectors.most_similar(["cat"], topn=1)[0][0] == "dog"
    assert vectors.most_similar(["bus"], topn=1)[0][0] == "car"
    assert vectors.similarity("cat", "dog") > vectors.similarity("cat", "car")


def test_vectors_load_in_gensim_and_evaluations_agree_with_gensim(tmp_path):
    gensim_kv = pytest.importorskip("gensim.models").KeyedVectors
    rng = np.random.default_rng(0)
    words = ["the", "king", "queen", "man", "woman", "tiger", "cat", "car", "love", "sex", "money", "bank"]
    vectors = WordVectors(words, rng.normal(size=(len(words), 8)).astype(np.float32))
    cfg = Word2VecConfig(input=["-"], out=str(tmp_path / "v"))
    save(tmp_path / "v", vectors, cfg, {})
    kv = gensim_kv.load_word2vec_format(str(tmp_path / "v" / "vectors.txt"))
    assert kv.index_to_key == words
    np.testing.assert_allclose(kv["queen"], vectors["queen"], rtol=1e-5)
    assert load(tmp_path / "v").words == words
    # Word-pair Spearman and neighbours: aiayn's code and gensim's on the same vectors.
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("# a comment\nking\tqueen\t8.5\nman\twoman\t8.3\ntiger\tcat\t7.4\ncar\tlove\t1.0\n"
                     "money\tbank\t8.5\nsex\tlove\t6.8\nthe\tking\t2.0\nking\tunknownword\t5.0\n")
    ours = vectors.evaluate_pairs(pairs)
    theirs = kv.evaluate_word_pairs(str(pairs))
    assert ours["spearman"] == pytest.approx(theirs[1][0], abs=1e-6) and ours["skipped"] == 1
    mine = vectors.most_similar(["king", "woman"], ["man"], topn=3)
    ref = kv.most_similar(positive=["king", "woman"], negative=["man"], topn=3)
    assert [w for w, _ in mine] == [w for w, _ in ref]
    np.testing.assert_allclose([s for _, s in mine], [s for _, s in ref], rtol=1e-5)


def test_analogy_accuracy_agrees_with_gensim():
    gensim_kv = pytest.importorskip("gensim.models").KeyedVectors
    rng = np.random.default_rng(1)
    questions = gensim_test_file("analogies")
    words = sorted({w.lower() for line in questions.read_text().splitlines()[:400] if not line.startswith(":")
                    for w in line.split()})
    vectors = WordVectors(words, rng.normal(size=(len(words), 6)).astype(np.float32))
    # Plant a few right answers: d = b − a + c exactly for some questions.
    lines = [line.lower().split() for line in questions.read_text().splitlines()[1:400] if not line.startswith(":")]
    for a, b, c, d in lines[:40:4]:
        vectors.vectors[vectors.index[d]] = vectors[b] - vectors[a] + vectors[c]
    vectors = WordVectors(words, vectors.vectors)
    kv = gensim_kv(vector_size=6)
    kv.add_vectors(words, vectors.vectors)
    ours = vectors.evaluate_analogies(questions)
    theirs = kv.evaluate_word_analogies(str(questions), case_insensitive=True)[0]
    assert ours.total > 300 and ours.correct >= 5
    assert ours.accuracy == pytest.approx(theirs, abs=1e-9)


def test_spearman_equals_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)


def test_windows_stay_inside_sentences():
    gen = torch.Generator().manual_seed(0)
    ids = torch.arange(100, 130)
    sentence = torch.tensor([0] * 10 + [1] * 3 + [2] * 17)
    table = context_table(ids, sentence, 4, gen)
    assert table.shape == (30, 8)
    for i in range(30):
        ctx = [int(x) - 100 for x in table[i] if x >= 0]
        assert i not in ctx and all(sentence[j] == sentence[i] and 1 <= abs(j - i) <= 4 for j in ctx)
        b = max(abs(j - i) for j in ctx) if ctx else 0  # the drawn window: every position up to it is there
        assert sorted(ctx) == [j for j in range(i - b, i + b + 1) if j != i and 0 <= j < 30 and sentence[j] == sentence[i]]


def test_query_tokenizer_and_options():
    assert parse_query("King - man + Woman") == (["king", "woman"], ["man"])
    assert parse_query("love") == (["love"], [])
    with pytest.raises(ValueError, match="at least one word"):
        parse_query("- man")
    assert tokenize("The LORD's house, don't—2 cats!") == ["the", "lord's", "house", "don't", "cats"]
    assert tokenize("¿Dónde está?") == ["dónde", "está"]
    with pytest.raises(ConfigError, match="negative"):
        Word2VecConfig(input=["x"], out="o", negative=0)
    with pytest.raises(ConfigError, match="workers"):
        Word2VecConfig(input=["x"], out="o", workers=0)
    with pytest.raises(ConfigError, match="min-alpha"):
        Word2VecConfig(input=["x"], out="o", alpha=0.01, min_alpha=0.1)


@needs_numba
@pytest.mark.parametrize("model", ["skipgram", "cbow"])
def test_compiled_updates_equal_the_torch_step_one_prediction_at_a_time(model):
    """The numba kernel (one prediction at a time, each seeing the last one's vectors) equals the torch engine's
    step applied to one prediction after another, where the two coincide: each prediction's targets differ
    (the kernel updates a noise word twice named in one prediction twice in turn; a batch, once). The same
    code, run as plain Python, gives the same vectors too."""
    gen = torch.Generator().manual_seed(0)
    V, d, k, P = 40, 24, 5, 300
    w_in, w_out = torch.randn(V, d, generator=gen) * 0.3, torch.randn(V, d, generator=gen) * 0.3
    targets = torch.stack([torch.randperm(V, generator=gen)[: 1 + k] for _ in range(P)])  # distinct in a row
    if model == "skipgram":
        inputs = torch.randint(0, V, (P,), generator=gen)
        bounds, context = torch.arange(P + 1), inputs
    else:  # bags of 1 … 6 context words (a word may repeat in a bag, as in a real window)
        sizes = torch.randint(1, 7, (P,), generator=gen)
        bounds = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        context = torch.randint(0, V, (int(bounds[-1]),), generator=gen)
    ref_in, ref_out, ref_loss = w_in.clone(), w_out.clone(), 0.0
    for p in range(P):
        bag = context[bounds[p] : bounds[p + 1]]
        v = ref_in.index_select(0, bag).mean(0, keepdim=True)
        step, loss = negative_sampling_step(ref_in, ref_out, v, targets[p : p + 1], 0.05)
        ref_in.index_add_(0, bag, step.expand(bag.numel(), -1))  # every context word takes the whole step
        ref_loss += loss
    runs = {"compiled": (kernel.skipgram_chunk, kernel.cbow_chunk),
            "as Python": (kernel.skipgram_chunk.py_func, kernel.cbow_chunk.py_func)}
    for name, (sg, cbow) in runs.items():
        a_in, a_out = w_in.clone().numpy(), w_out.clone().numpy()
        if model == "skipgram":
            loss = sg(a_in, a_out, inputs.numpy(), targets.numpy(), 0.05)
        else:
            loss = cbow(a_in, a_out, context.numpy(), bounds.numpy(), targets.numpy(), 0.05)
        assert np.allclose(a_in, ref_in.numpy(), atol=2e-5), name
        assert np.allclose(a_out, ref_out.numpy(), atol=2e-5), name
        assert loss == pytest.approx(ref_loss, rel=1e-4), name
        assert not np.allclose(a_out, w_out.numpy(), atol=1e-3)  # they did learn something


def test_engine_choice(monkeypatch, tmp_path):
    corpus = synthetic_corpus(tmp_path / "c.txt", n=50)
    cfg = Word2VecConfig(input=[str(corpus)], out=str(tmp_path / "v"), min_count=1, dim=8, epochs=1)
    monkeypatch.setattr(kernel, "available", lambda: False)
    assert train_word2vec(cfg)[1]["engine"] == "torch"  # auto without numba
    cfg.engine = "numba"
    with pytest.raises(ValueError, match="--engine numba needs numba: pip install numba"):
        train_word2vec(cfg)
    with pytest.raises(ConfigError, match="engine"):
        Word2VecConfig(input=["x"], out="o", engine="cython")


def test_command_line(tmp_path):
    corpus = synthetic_corpus(tmp_path / "c.txt", n=1500)
    out = tmp_path / "vec"
    r = aiayn("word2vec", "train", "--input", str(corpus), "--out", str(out), "--dim", "16", "--epochs", "3",
              "--min-count", "1", "--sample", "0", "--model", "skipgram", "--batch", "256")
    assert json.loads(r.stdout.splitlines()[-1])["vocabulary"] == 17
    assert (out / "vectors.txt").read_text().splitlines()[0] == "17 16"
    assert json.loads((out / "word2vec.json").read_text())["settings"]["model"] == "skipgram"
    r = aiayn("word2vec", "nearest", "--vectors", str(out), "cat", "-k", "1")
    assert r.stdout.split("\t")[0] == "dog"
    r = aiayn("word2vec", "evaluate", "--vectors", str(out))  # the sets gensim ships; few words covered here
    assert set(json.loads(r.stdout.splitlines()[-1])) >= {"wordsim353", "simlex999", "analogy_accuracy"}
    r = aiayn("word2vec", "nearest", "--vectors", str(out), "unicorn", check=False)
    assert r.returncode == 2 and r.stderr.strip() == "aiayn: error: 'unicorn' is not in the vocabulary (17 words)"
    # Never over a directory aiayn did not write; over its own only with --overwrite.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = aiayn("word2vec", "train", "--input", str(corpus), "--out", str(tmp_path / "mine"), "--min-count", "1", check=False)
    assert r.returncode == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    r = aiayn("word2vec", "train", "--input", str(corpus), "--out", str(out), "--min-count", "1", check=False)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    aiayn("word2vec", "train", "--input", str(corpus), "--out", str(out), "--min-count", "1", "--epochs", "1", "--overwrite")
