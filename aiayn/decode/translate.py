"""Translating text with a trained model: tokenize, batch by length, search, detokenize, restore order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from ..data.batching import source_tensor
from .search import Hypothesis, beam_search, greedy_search, max_lengths


@dataclass
class DecodeConfig:
    """Search settings; defaults are the paper's (§6.1)."""

    beam: int = 4  # 1 = greedy
    alpha: float = 0.6  # GNMT length penalty
    max_len_a: float = 1.0  # max output length = a · source length + b
    max_len_b: int = 50
    nbest: int = 1
    max_tokens: int = 4096  # source tokens per batch (padding included)
    max_input_tokens: int = 1024  # longer inputs are an error
    compute_type: str = "float32"  # or "bfloat16", "int8" (CPU): see aiayn.model.quantize


class InputTooLong(ValueError):
    pass


class Translator:
    """Translate strings with a :class:`~aiayn.model.Transformer` and its vocabulary."""

    def __init__(self, model, vocab, cfg: DecodeConfig | None = None, device: str | torch.device = "cpu") -> None:  # noqa: ANN001
        from ..model.quantize import for_inference

        self.vocab, self.cfg = vocab, cfg or DecodeConfig()
        self.model = for_inference(model, self.cfg.compute_type)
        self.device = torch.device(device)
        if self.cfg.nbest > max(self.cfg.beam, 1):
            raise ValueError(f"nbest ({self.cfg.nbest}) cannot exceed the beam size ({self.cfg.beam})")

    def _batches(self, ids: list[list[int]]) -> Iterator[list[int]]:
        """Indices of inputs grouped by length under the token budget (in length order)."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batch: list[int] = []
        longest = 0
        for i in order:
            n = len(ids[i]) + 1
            if batch and (len(batch) + 1) * max(longest, n) > self.cfg.max_tokens:
                yield batch
                batch, longest = [], 0
            batch.append(i)
            longest = max(longest, n)
        if batch:
            yield batch

    def translate_ids(self, ids: list[list[int]]) -> list[list[Hypothesis]]:
        """Token ids in → n-best hypotheses out, in input order."""
        for n, seq in enumerate(ids, 1):
            if len(seq) > self.cfg.max_input_tokens:
                raise InputTooLong(f"input {n} has {len(seq)} tokens, more than max_input_tokens={self.cfg.max_input_tokens}")
        results: list[list[Hypothesis]] = [[] for _ in ids]
        for batch in self._batches(ids):
            todo = [i for i in batch if ids[i]]  # an empty input translates to an empty output
            for i in batch:
                if not ids[i]:
                    results[i] = [Hypothesis([], 0.0, 0.0)]
            if not todo:
                continue
            src = source_tensor([ids[i] for i in todo]).to(self.device)
            max_len = max_lengths(src, self.cfg.max_len_b, self.cfg.max_len_a)
            if self.cfg.beam <= 1:
                hyps = [[h] for h in greedy_search(self.model, src, max_len)]
            else:
                hyps = beam_search(self.model, src, max_len, self.cfg.beam, self.cfg.alpha, self.cfg.nbest)
            for i, h in zip(todo, hyps):
                results[i] = h
        return results

    def translate(self, texts: list[str]) -> list[str]:
        """Best translation of each text, detokenized, in input order."""
        return [self.vocab.decode(h[0].tokens) for h in self.translate_ids(self.vocab.encode_batch([t.strip() for t in texts]))]

    def translate_nbest(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        hyps = self.translate_ids(self.vocab.encode_batch([t.strip() for t in texts]))
        return [[(self.vocab.decode(h.tokens), h.score) for h in hs] for hs in hyps]

    def stream(self, lines: Iterable[str], chunk: int = 256) -> Iterator[str]:
        """Translate a stream chunk by chunk, yielding one output per input line, in order."""
        buf: list[str] = []
        for line in lines:
            buf.append(line.rstrip("\n"))
            if len(buf) >= chunk:
                yield from self.translate(buf)
                buf = []
        if buf:
            yield from self.translate(buf)
