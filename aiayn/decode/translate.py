"""Translating text with a trained model: tokenize, batch by length, search, detokenize, restore order."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from ..config import BOS_ID, EOS_ID, DecodeConfig
from ..data.batching import source_tensor, token_batches
from ..model import device_of
from .search import Hypothesis, beam_search, greedy_search, max_lengths

log = logging.getLogger(__name__)


class InputTooLong(ValueError):
    pass


class BadInput(ValueError):
    """An input line that cannot be translated; ``line`` is its 1-based number in the input."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line, self.reason = line, reason


def unusable_character(text: str) -> str | None:
    """What in ``text`` no tokenizer should see, said in words (a NUL byte, an unpaired surrogate), or None."""
    bad = next((c for c in text if c == "\x00" or "\ud800" <= c <= "\udfff"), None)
    if bad is None:
        return None
    return "a NUL byte" if bad == "\x00" else f"an unpaired surrogate U+{ord(bad):04X}"


@torch.no_grad()
def forced_log_probs(model, sources: list[list[int]], targets: list[list[int]], device: torch.device) -> torch.Tensor:
    """Teacher forcing (no search): log P of each target token and of its ``</s>`` given the source, (B, T)
    float32, 0 at padding. Their row sums are log P(target | source)."""
    from ..config import PAD_ID
    from ..data.batching import pad

    src = source_tensor(sources).to(device)
    tgt_in = pad([[BOS_ID, *y] for y in targets]).to(device)
    tgt_out = pad([[*y, EOS_ID] for y in targets]).to(device)
    logp = model(src, tgt_in).float().log_softmax(-1).gather(-1, tgt_out.unsqueeze(-1)).squeeze(-1)
    return logp * (tgt_out != PAD_ID)


FLUSH = object()  # in a stream of lines: "no further line has arrived for now; translate what you have"
_END = object()


def as_they_arrive(lines: Iterable[str | BaseException], window: float = 0.02) -> Iterator[object]:
    """The items of ``lines`` (read on a thread), with :data:`FLUSH` whenever none followed within ``window``
    seconds: an interactive or slow pipe gets each line answered as it arrives, a file still fills whole
    chunks."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=4096)

    def read() -> None:
        try:
            for line in lines:
                q.put(line)
        except BaseException as e:  # a failing reader ends the stream with its error in place of a line
            q.put(e)
        finally:
            q.put(_END)

    threading.Thread(target=read, name="aiayn-stdin", daemon=True).start()
    while True:
        try:
            item = q.get(timeout=window)
        except queue.Empty:
            yield FLUSH
            item = q.get()
        if item is _END:
            return
        yield item


class Translator:
    """Translate strings with a :class:`~aiayn.model.Transformer` and its vocabulary."""

    def __init__(self, model, vocab, cfg: DecodeConfig | None = None, device: str | torch.device | None = None) -> None:
        """``device``: where to decode (default: where the model is; the model is moved there)."""
        from ..accel import for_inference

        self.vocab, self.cfg = vocab, cfg or DecodeConfig()
        self.device = torch.device(device) if device is not None else device_of(model)
        self.model = for_inference(model.to(self.device), self.cfg.compute_type)
        if self.cfg.nbest > max(self.cfg.beam, 1):
            raise ValueError(f"nbest ({self.cfg.nbest}) cannot exceed the beam size ({self.cfg.beam})")

    def _batches(self, ids: list[list[int]]) -> list[list[int]]:
        """Indices of inputs grouped by length under the token budget (in length order)."""
        lengths = np.array([len(x) + 1 for x in ids], dtype=np.int64)  # + </s>
        return [b.tolist() for b in token_batches(lengths, lengths, self.cfg.max_tokens, shuffle=False, oversize_alone=True)]

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
                hyps = beam_search(self.model, src, max_len, self.cfg.beam, self.cfg.alpha, self.cfg.nbest,
                                   self.cfg.stopping)
            for i, h in zip(todo, hyps):
                results[i] = h
        return results

    def translate(self, texts: list[str]) -> list[str]:
        """Best translation of each text, detokenized, in input order."""
        return [self.vocab.decode(h[0].tokens) for h in self.translate_ids(self.vocab.encode_batch([t.strip() for t in texts]))]

    def translate_nbest(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        hyps = self.translate_ids(self.vocab.encode_batch([t.strip() for t in texts]))
        return [[(self.vocab.decode(h.tokens), h.score) for h in hs] for hs in hyps]

    def check(self, text: str) -> list[int]:
        """Token ids of one input, or :class:`ValueError` saying why it cannot be translated."""
        bad = unusable_character(text)
        if bad is not None:
            raise ValueError(bad)
        ids = self.vocab.encode(text.strip())
        if len(ids) > self.cfg.max_input_tokens:
            raise ValueError(f"{len(ids)} tokens, more than max_input_tokens={self.cfg.max_input_tokens}")
        return ids

    def stream(self, lines: Iterable[str | BaseException], chunk: int = 256, skip_invalid: bool = False) -> Iterator[str]:
        """Translate a stream chunk by chunk, yielding one output per input line, in order.

        An item that is an exception (a line that could not be read) or a line that cannot be translated
        raises :class:`BadInput` with its line number, after every line before it has been yielded; with
        ``skip_invalid`` it yields an empty line in its place instead, and logs a warning.
        """
        for buf in self._checked_chunks(lines, chunk, skip_invalid):
            for hyps in self._decoded(buf):
                yield "" if hyps is None else self.vocab.decode(hyps[0].tokens)

    def translate_nbest_stream(self, lines: Iterable[str | BaseException], chunk: int = 256,
                               skip_invalid: bool = False) -> Iterator[list[tuple[str, float]]]:
        """:meth:`stream` with the n best (text, score) per line; a skipped line gives an empty list."""
        for buf in self._checked_chunks(lines, chunk, skip_invalid):
            for hyps in self._decoded(buf):
                yield [] if hyps is None else [(self.vocab.decode(h.tokens), h.score) for h in hyps]

    def stream_detailed(self, lines: Iterable[str | BaseException], chunk: int = 256,
                        skip_invalid: bool = False) -> Iterator[dict | None]:
        """:meth:`stream` with everything known about each translation (:meth:`details`); None for a
        skipped line."""
        for buf in self._checked_chunks(lines, chunk, skip_invalid):
            todo = [ids for ids in buf if ids is not None]
            found = iter(self.details(todo, self.translate_ids(todo)) if todo else [])
            for ids in buf:
                yield None if ids is None else next(found)

    @torch.no_grad()
    def details(self, sources: list[list[int]], hyps: list[list[Hypothesis]]) -> list[dict]:
        """For each source and its n-best: the best translation's pieces, the log-probability of each of
        its tokens and of ``</s>`` (a forced-decoding pass over the hypothesis: they sum to its
        ``log_prob``; a hypothesis cut at the length limit, ``ended`` false, has no ``</s>``), and its
        alignment — for each target token, the source position (0-based; the source's ``</s>`` is the
        last) that the last encoder-decoder attention layer weighs most, averaged over heads (None for a
        model without attention)."""
        from ..model import recording_attention

        best = [nbest[0].tokens for nbest in hyps]
        out: list[dict] = [{}] * len(sources)
        # One forced pass per batch of similar lengths (as decoding batches them); padding changes nothing a
        # sentence sees: its target positions and its keys are its own (tested against one at a time).
        lens = np.array([max(len(s), len(b)) + 1 for s, b in zip(sources, best)], dtype=np.int64)
        for idx in token_batches(lens, lens, self.cfg.max_tokens, shuffle=False, oversize_alone=True):
            with recording_attention(self.model) as record:
                logp = forced_log_probs(self.model, [sources[i] for i in idx], [best[i] for i in idx], self.device)
            cross = [w for name, w in record.items() if name.endswith("cross_attn")]
            for row, i in enumerate(idx.tolist()):
                ended = hyps[i][0].ended  # a hypothesis cut at the length limit has no </s>
                n = len(best[i]) + ended  # the tokens and </s>
                alignment = cross[-1][row, :, :n].float().mean(0).argmax(-1).tolist() if cross else None  # (n,) over S
                out[i] = {
                    "translation": self.vocab.decode(best[i]), "score": hyps[i][0].score, "log_prob": hyps[i][0].log_prob,
                    "ended": ended, "tokens": self.vocab.pieces(best[i], side="target") + ["</s>"] * ended,
                    "token_log_probs": logp[row, :n].tolist(), "source_tokens": self.vocab.pieces(sources[i]) + ["</s>"],
                    "alignment": alignment,
                    "nbest": [{"translation": self.vocab.decode(h.tokens), "score": h.score} for h in hyps[i]],
                }
        return out

    def _checked_chunks(self, lines: Iterable[object], chunk: int,
                        skip_invalid: bool) -> Iterator[list[list[int] | None]]:
        """Chunks of token ids, None in place of a line skipped; a bad line raises :class:`BadInput`
        once the chunk before it has been handed out."""
        buf: list[list[int] | None] = []
        n = 0
        for line in lines:
            if line is FLUSH:  # nothing more for now (as_they_arrive): translate what has come
                if buf:
                    yield buf
                    buf = []
                continue
            n += 1
            try:
                if isinstance(line, BaseException):
                    raise ValueError(str(line))
                ids: list[int] | None = self.check(line)
            except ValueError as e:
                if not skip_invalid:
                    if buf:
                        yield buf
                    raise BadInput(n, str(e)) from None
                log.warning("line %d: %s; writing an empty line in its place", n, e)
                ids = None
            buf.append(ids)
            if len(buf) >= chunk:
                yield buf
                buf = []
        if buf:
            yield buf

    def _decoded(self, buf: list[list[int] | None]) -> Iterator[list[Hypothesis] | None]:
        todo = [ids for ids in buf if ids is not None]
        hyps = iter(self.translate_ids(todo) if todo else [])
        for ids in buf:
            yield None if ids is None else next(hyps)
