"""word2vec (Mikolov et al. 2013a "Efficient Estimation of Word Representations in Vector Space";
2013b "Distributed Representations of Words and Phrases and their Compositionality"): dense word
vectors learnt by predicting words from their neighbours — the step between counting and neural
language models in docs/lineage.md.

Two models, both trained with *negative sampling* (2013b, §2.2): instead of a softmax over the whole
vocabulary, each prediction is a logistic regression telling the true word from ``negative`` noise
words drawn from the unigram distribution raised to 3/4:

    log σ(u_o · v) + Σ_{i=1..k} log σ(−u_{n_i} · v)

* **skip-gram**: v is the input vector of a word, u_o the output vector of one word of its context;
* **CBOW** ("continuous bag of words"): v is the mean of the input vectors of the context, u_o the
  output vector of the word in the middle.

With the tricks of the original tool (and gensim): frequent words are subsampled (a word of corpus
frequency f is kept with probability (√(f/t) + 1)·t/f, 2013b §2.3), each word draws its window size
uniformly from 1 … ``window`` (nearer words count more), and the learning rate decays linearly from
``alpha`` to ``min_alpha`` over the whole run.

The updates are the gradient steps of the objective above, written out (no autograd), by one of two
engines that read the same predictions (the same subsampling, windows and noise words, drawn here):

* ``numba`` (:mod:`aiayn.word2vec.kernel`, the default when Numba is installed): one prediction at a
  time, each seeing the vectors the last one left — the original tool's and gensim's loop, compiled;
* ``torch``: ``batch`` predictions at a time on PyTorch tensors, so a little staler than one at a time
  (frequent words' summed updates are damped, :func:`damping`); the reference the kernel is tested
  against, and the engine where Numba is not installed.

benchmarks/word2vec_vs_gensim.py measures both against gensim. :mod:`aiayn.word2vec.vectors` holds the
result: nearest neighbours, analogies, the word2vec text format, evaluation on word-similarity and
analogy sets.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_directory
from ..config import Word2VecConfig
from . import kernel
from .vectors import WordVectors

log = logging.getLogger(__name__)

WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # letters, with inner apostrophes (don't, Lord's)


def tokenize(line: str, lowercase: bool = True) -> list[str]:
    """The words of a line: runs of letters (any script), apostrophes inside a word kept."""
    return WORD.findall(line.lower() if lowercase else line)


def read_corpus(paths: list[str], lowercase: bool = True) -> Iterator[list[str]]:
    """Every non-empty line of the files, as a list of words (a line is a sentence: windows stop at it)."""
    for path in paths:
        with open(path, encoding="utf-8", errors="strict") as f:
            for line in f:
                words = tokenize(line, lowercase)
                if words:
                    yield words


class Corpus:
    """The corpus as arrays: word ids (words under ``min_count`` removed) and the sentence of each."""

    def __init__(self, paths: list[str], min_count: int, lowercase: bool = True) -> None:
        sentences = list(read_corpus(paths, lowercase))
        counts = Counter(w for s in sentences for w in s)
        self.raw_words = sum(counts.values())
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if not kept:
            raise ValueError(f"no word occurs {min_count} times or more in {', '.join(paths)}: lower --min-count")
        self.words = kept  # most frequent first (the word2vec text format's order)
        self.counts = np.array([counts[w] for w in kept], dtype=np.int64)
        index = {w: i for i, w in enumerate(kept)}
        ids, sent = [], []
        for n, s in enumerate(sentences):
            row = [index[w] for w in s if w in index]
            ids.extend(row)
            sent.extend([n] * len(row))
        self.ids = np.array(ids, dtype=np.int64)
        self.sentence = np.array(sent, dtype=np.int64)

    def keep_probability(self, sample: float) -> np.ndarray:
        """Per word: the probability subsampling keeps one occurrence (1 for rare words; gensim's formula)."""
        if sample <= 0:
            return np.ones(len(self.words))
        threshold = sample * self.counts.sum()
        return np.minimum(1.0, (np.sqrt(self.counts / threshold) + 1) * threshold / self.counts)


def context_table(ids: torch.Tensor, sentence: torch.Tensor, window: int, gen: torch.Generator) -> torch.Tensor:
    """(N, 2·window) word ids of every position's context, −1 where there is none: each position draws
    its window size b ∈ 1 … ``window`` and sees the b positions on either side within its sentence."""
    n = ids.numel()
    b = torch.randint(1, window + 1, (n,), generator=gen)
    pos = torch.arange(n)
    table = torch.full((n, 2 * window), -1, dtype=torch.long)
    for k, j in enumerate([*range(-window, 0), *range(1, window + 1)]):
        q = (pos + j).clamp(0, n - 1)
        ok = (q == pos + j) & (b >= abs(j)) & (sentence[q] == sentence)
        table[:, k] = torch.where(ok, ids[q], -1)
    return table


class NoiseSampler:
    """Negative samples from the unigram distribution raised to 3/4, by table lookup (the C tool's way)."""

    def __init__(self, counts: np.ndarray, gen: torch.Generator, size: int = 10_000_000) -> None:
        p = counts.astype(np.float64) ** 0.75
        self.table = torch.from_numpy(np.repeat(np.arange(len(counts)), np.round(p / p.sum() * size).astype(np.int64)))
        self.gen = gen

    def __call__(self, shape: tuple[int, ...], gen: torch.Generator | None = None) -> torch.Tensor:
        draws = torch.randint(0, self.table.numel(), shape, generator=gen or self.gen)
        return self.table.index_select(0, draws.flatten()).view(shape)


MAX_REPEATS = 64  # see damped_index_add


def damping(index: torch.Tensor, rows: int, cap: int = MAX_REPEATS) -> torch.Tensor:
    """Per entry of ``index``: 1, or cap / m for a row named m > ``cap`` times in one batch, which then takes
    cap / m of its summed updates (``cap``: MAX_REPEATS, shared out among workers that update at once).
    One prediction at a time (the C tool, gensim), a word's m updates each see the vector the last one
    left, and shrink as its predictions come right; summed
    from one stale vector they overshoot instead, and a frequent word named hundreds of times in a
    batch (as a noise word, mostly) makes training diverge. Rows named fewer times — nearly all — are
    updated exactly as plain SGD would."""
    repeats = torch.bincount(index, minlength=rows)
    return cap / repeats.index_select(0, index).clamp(min=cap)


def damped_index_add(w: torch.Tensor, index: torch.Tensor, update: torch.Tensor, cap: int = MAX_REPEATS) -> None:
    """w[index[i]] += update[i], damped (:func:`damping`)."""
    w.index_add_(0, index, update * damping(index, w.size(0), cap).to(update.dtype).unsqueeze(1))


def negative_sampling_step(w_in: torch.Tensor, w_out: torch.Tensor, v: torch.Tensor, targets: torch.Tensor,
                           lr: float, cap: int = MAX_REPEATS) -> tuple[torch.Tensor, float]:
    """One gradient step of Σ log σ(u_o·v) + Σ log σ(−u_n·v) for a batch of predictions.

    v: (B, d) the input side (a word's input vector, or the mean of a context's); targets: (B, 1 + k)
    the true word then k noise words. Updates the output vectors of the targets in place (damped to
    ``cap``); returns the step for v (B, d), which the caller adds to the input vectors v came from, and
    the summed loss.
    """
    u = w_out.index_select(0, targets.flatten()).view(*targets.shape, -1)  # (B, 1 + k, d); faster than w_out[targets]
    score = (u * v.unsqueeze(1)).sum(2)  # (B, 1 + k): u·v (a batched matrix product is slower at this size)
    g = torch.sigmoid(score).mul_(-lr)  # lr × ∂/∂score of the log-likelihood: lr·(label − σ(score))
    g[:, 0] += lr
    same = targets[:, 1:] == targets[:, :1]  # a noise word that is the true word is skipped (the C tool, gensim)
    g[:, 1:].masked_fill_(same, 0.0)
    step_v = torch.bmm(g.unsqueeze(1), u).squeeze(1)  # (B, d)
    flat = targets.flatten()
    g_damped = g * damping(flat, w_out.size(0), cap).to(g.dtype).view_as(g)  # damped before the outer product: one pass
    w_out.index_add_(0, flat, (g_damped.unsqueeze(2) * v.unsqueeze(1)).flatten(0, 1))
    score[:, 1:].neg_()
    loss = -F.logsigmoid(score).masked_fill_(F.pad(same, (1, 0)), 0.0).sum().item()  # skipped noise words: no loss
    return step_v, loss


def train_word2vec(cfg: Word2VecConfig) -> tuple[WordVectors, dict]:
    """Train word vectors on ``cfg.input``; returns them and the run's statistics (words/s, loss per epoch)."""
    start = time.perf_counter()
    corpus = Corpus(cfg.input, cfg.min_count, cfg.lowercase)
    read_s = time.perf_counter() - start
    V, d = len(corpus.words), cfg.dim
    gen = torch.Generator().manual_seed(cfg.seed)
    # gensim's initialisation: input vectors uniform in ±1/d (the C tool's are half as wide: ±0.5/d, which
    # measured worse here), output vectors zero.
    w_in = (torch.rand(V, d, generator=gen) * 2 - 1) / d
    w_out = torch.zeros(V, d)
    log.info("word2vec %s: %s words (%s after min_count), %s types, %d epochs", cfg.model, f"{corpus.raw_words:,}",
             f"{corpus.ids.size:,}", f"{V:,}", cfg.epochs)
    engine = cfg.engine if cfg.engine != "auto" else ("numba" if kernel.available() else "torch")
    if engine == "numba":
        if not kernel.available():
            raise ValueError("--engine numba needs numba: pip install numba (or aiayn[lineage]), or use --engine torch")
        _compile_kernels()  # a few seconds the first time on a machine (then cached on disk); not training time
    train_start = time.perf_counter()
    threads = torch.get_num_threads()
    if cfg.workers > 1:  # the workers are the parallelism: each runs its operations on one thread
        torch.set_num_threads(1)
    try:
        losses, predictions = _epochs(cfg, corpus, w_in, w_out, gen, engine)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - train_start
    if not all(math.isfinite(x) for x in losses):
        raise FloatingPointError("word2vec diverged (non-finite loss): lower --alpha")
    stats = {"engine": engine, "words": corpus.raw_words, "vocabulary": V, "epochs": cfg.epochs, "predictions": predictions,
             "loss_per_epoch": [round(x, 4) for x in losses], "read_seconds": round(read_s, 2),
             "train_seconds": round(seconds, 2), "words_per_second": round(cfg.epochs * corpus.raw_words / seconds)}
    return WordVectors(corpus.words, w_in.numpy(), corpus.counts), stats


def _compile_kernels() -> None:
    """Compile (or load from Numba's cache) the kernels, by calling them once on nothing."""
    w = np.zeros((1, 1), dtype=np.float32)
    none, targets = np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.int64)
    kernel.skipgram_chunk(w, w, none, targets, 0.0)
    kernel.cbow_chunk(w, w, none, np.zeros(1, dtype=np.int64), targets, 0.0)


COMPILED_CHUNK_WORDS = 10_000  # words per chunk of the numba engine (gensim's jobs are as large): one learning rate


def _epochs(cfg: Word2VecConfig, corpus: Corpus, w_in: torch.Tensor, w_out: torch.Tensor,
            gen: torch.Generator, engine: str = "torch") -> tuple[list[float], int]:
    """The training passes, updating ``w_in`` and ``w_out`` in place; (loss per prediction of each epoch,
    predictions made)."""
    compiled = engine == "numba"
    w_in_np, w_out_np = w_in.numpy(), w_out.numpy()  # the same memory
    noise = NoiseSampler(corpus.counts, gen)
    keep_t = torch.from_numpy(corpus.keep_probability(cfg.sample))
    total = cfg.epochs * corpus.ids.size  # words the learning rate decays over (before subsampling)
    done, losses, predictions = 0, [], 0
    corpus_ids, corpus_sentence = torch.from_numpy(corpus.ids), torch.from_numpy(corpus.sentence)
    for epoch in range(cfg.epochs):
        kept = torch.rand(corpus_ids.numel(), generator=gen, dtype=torch.float64) < keep_t[corpus_ids]
        ids = corpus_ids[kept]
        table = context_table(ids, corpus_sentence[kept], cfg.window, gen)  # (N, 2·window)
        # The numba engine reads the corpus in order, as the C tool and gensim do (measured: in a random order its
        # WordSim-353 fell by 0.05); the torch engine's batches take words from all over the corpus, so that
        # one update does not hold the same verse's contexts many times over.
        order = torch.arange(ids.numel()) if compiled else torch.randperm(ids.numel(), generator=gen)
        per_word = corpus.ids.size / max(1, ids.numel())  # corpus words (before subsampling) per kept word
        # ``batch`` predictions per update: skip-gram makes about window + 1 per word (2·E[b], b ∈ 1 … window).
        # Workers update at once: each batch's share of the damping cap is 1 / workers of it.
        cap = max(1, MAX_REPEATS // cfg.workers)
        step_words = cfg.batch if cfg.model == "cbow" else max(1, cfg.batch // (cfg.window + 1))
        if compiled:  # one prediction at a time: a chunk only shares a learning rate
            step_words = COMPILED_CHUNK_WORDS

        def update(i: int, gen: torch.Generator) -> tuple[float, int]:
            """The batch of words order[i : i + step_words]: one update; its summed loss and predictions."""
            lr = max(cfg.min_alpha, cfg.alpha * (1 - (done + i * per_word) / total))
            pick = order[i : i + step_words]
            words, ctx = ids.index_select(0, pick), table.index_select(0, pick)  # (B,), (B, 2·window)
            has = ctx >= 0
            if cfg.model == "skipgram":  # one prediction per (word, context word)
                found = has.flatten().nonzero().squeeze(1)  # (word, context slot) pairs, word by word
                centers = words.index_select(0, found // ctx.size(1))
                targets_ = ctx.flatten().index_select(0, found)
                targets = torch.cat([targets_.unsqueeze(1), noise((centers.numel(), cfg.negative), gen)], 1)
                if compiled:
                    return kernel.skipgram_chunk(w_in_np, w_out_np, centers.numpy(), targets.numpy(), lr), centers.numel()
                step, loss = negative_sampling_step(w_in, w_out, w_in.index_select(0, centers), targets, lr, cap)
                damped_index_add(w_in, centers, step, cap)
                return loss, centers.numel()
            # CBOW: one prediction per word, from the mean of its context's input vectors
            count = has.sum(1)
            rows = (count > 0).nonzero().squeeze(1)  # words with a context
            words, ctx, has, count = (t.index_select(0, rows) for t in (words, ctx, has, count))
            flat = ctx.flatten().index_select(0, has.flatten().nonzero().squeeze(1))  # the context words, bag after bag
            targets = torch.cat([words.unsqueeze(1), noise((words.numel(), cfg.negative), gen)], 1)
            if compiled:
                bounds = F.pad(count.cumsum(0), (1, 0))  # bag p is flat[bounds[p] : bounds[p + 1]]
                return kernel.cbow_chunk(w_in_np, w_out_np, flat.numpy(), bounds.numpy(), targets.numpy(), lr), words.numel()
            offsets = count.cumsum(0) - count
            mean = F.embedding_bag(flat, w_in, offsets, mode="mean")  # (B, d)
            step, loss = negative_sampling_step(w_in, w_out, mean, targets, lr, cap)
            damped_index_add(w_in, flat, step.repeat_interleave(count, dim=0), cap)  # each context word takes it all (C tool)
            return loss, words.numel()

        starts = list(range(0, ids.numel(), step_words))
        if cfg.workers == 1:
            results = [update(i, gen) for i in starts]
        else:  # Hogwild (gensim's workers): each thread its share of the batches, updating the shared vectors unlocked
            gens = [torch.Generator().manual_seed(cfg.seed * 7919 + 31 * epoch + w) for w in range(cfg.workers)]
            with ThreadPoolExecutor(cfg.workers) as pool:
                shares = pool.map(lambda w: [update(i, gens[w]) for i in starts[w :: cfg.workers]], range(cfg.workers))
                results = [r for share in shares for r in share]
        epoch_loss, epoch_n = sum(r[0] for r in results), sum(r[1] for r in results)
        done += corpus.ids.size
        losses.append(epoch_loss / max(1, epoch_n))
        predictions += epoch_n
        log.info("epoch %d: loss %.4f per prediction, %s predictions", epoch + 1, losses[-1], f"{epoch_n:,}")
    return losses, predictions


def parse_query(query: str) -> tuple[list[str], list[str]]:
    """``"king - man + woman"`` → (["king", "woman"], ["man"]): the words to add and to subtract."""
    positive, negative, sign = [], [], +1
    for part in re.findall(r"[+-]|[^\s+-]+", query):
        if part in "+-":
            sign = 1 if part == "+" else -1
        else:
            (positive if sign > 0 else negative).append(part.lower())
            sign = +1
    if not positive:
        raise ValueError(f"{query!r}: name at least one word to start from")
    return positive, negative


def save(out: str | Path, vectors: WordVectors, cfg: Word2VecConfig, stats: dict) -> Path:
    """Write ``out/vectors.txt`` (word2vec text format) and ``out/word2vec.json`` (settings, statistics)."""
    with atomic_directory(out, overwrite=cfg.overwrite, what="word2vec directory") as tmp:
        vectors.save_word2vec_format(tmp / "vectors.txt")
        settings = {k: v for k, v in cfg.__dict__.items() if k not in ("out", "overwrite")}
        (tmp / "word2vec.json").write_text(json.dumps({"settings": settings, "stats": stats}, indent=2) + "\n")
    return Path(out)


def load(path: str | Path) -> WordVectors:
    """Vectors from a directory ``aiayn word2vec train`` wrote, or from any word2vec text file."""
    p = Path(path)
    return WordVectors.load_word2vec_format(p / "vectors.txt" if p.is_dir() else p)


__all__ = ["WordVectors", "train_word2vec", "save", "load", "tokenize", "Corpus", "context_table", "parse_query"]
