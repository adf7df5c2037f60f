"""Search for the most probable translation (§6.1): greedy and batched beam search with the
GNMT length penalty, both incremental (key/value caches, the encoder run once per sentence).

Every sentence of a batch is searched independently of the others: its result does not depend on
which batch it was decoded in (tested). Finished sentences leave the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..config import BOS_ID, EOS_ID, PAD_ID


def length_penalty(length: Tensor | float, alpha: float) -> Tensor | float:
    """GNMT (Wu et al. 2016): lp(Y) = ((5 + |Y|) / 6)^α; the score is log P(Y|X) / lp(Y).

    (fairseq, Hugging Face, CTranslate2 and Marian divide by |Y|^α instead.)
    """
    return ((5.0 + length) / 6.0) ** alpha


def max_lengths(src: Tensor, extra: int = 50, a: float = 1.0) -> Tensor:
    """The longest output allowed per sentence: a · source length + extra (§6.1: input + 50)."""
    src_len = ((src != PAD_ID) & (src != EOS_ID)).sum(1)
    return (a * src_len).long() + extra


def _next_token_log_probs(model, tokens: Tensor, state) -> Tensor:
    """One decoder step → log P(next token) per row (rows, V), <pad> and <s> set to −inf (never produced).

    One fused log-softmax per row (a row of the vocabulary stays in cache), rather than a log-sum-exp
    over the whole (rows × V) block followed by a subtraction.
    """
    logp = model.step(tokens, state)[:, -1].float().log_softmax(-1)  # (rows, V)
    logp[:, PAD_ID] = float("-inf")
    logp[:, BOS_ID] = float("-inf")
    return logp


def _check_finite(best: Tensor) -> None:
    """best: each row's largest log-probability. NaN sorts above every number, and a row of −inf or NaN
    logits has no finite log-probability: so this catches non-finite activations in any row — never a
    silently empty or garbled output."""
    if not bool(torch.isfinite(best).all()):
        raise FloatingPointError("the model produced non-finite scores (NaN or inf) while decoding")


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS and EOS
    score: float  # log P / lp for beam search; log P for greedy
    log_prob: float
    ended: bool = True  # False: cut at the length limit without </s> (log_prob then counts no </s>)


@torch.no_grad()
def greedy_search(model, src: Tensor, max_len: Tensor) -> list[Hypothesis]:
    """Pick the most probable next token until </s> or the length limit. src: (B, S)."""
    b = src.size(0)
    state = model.start(src)
    alive = torch.arange(b, device=src.device)  # which original sentence each row is
    out = torch.full((b, int(max_len.max())), PAD_ID, dtype=torch.long, device=src.device)
    logps = torch.zeros(b, dtype=torch.float64, device=src.device)
    lengths = torch.zeros(b, dtype=torch.long, device=src.device)
    tokens = torch.full((b, 1), BOS_ID, dtype=torch.long, device=src.device)
    for t in range(out.size(1)):
        best_lp, best = _next_token_log_probs(model, tokens, state).max(-1)  # (b,), (b,)
        _check_finite(best_lp)
        out[alive, t] = best
        logps[alive] += best_lp.double()
        done = (best == EOS_ID) | (t + 1 >= max_len[alive])
        lengths[alive[done]] = t + 1
        if done.all():
            break
        if not done.any():
            tokens = best.unsqueeze(1)
            continue
        keep = (~done).nonzero().squeeze(1)
        state.select(keep)
        alive, tokens = alive[keep], best[keep].unsqueeze(1)
    result = []
    for i in range(b):
        seq = out[i, : lengths[i]].tolist()
        ended = bool(seq) and seq[-1] == EOS_ID
        result.append(Hypothesis(seq[:-1] if ended else seq, logps[i].item(), logps[i].item(), ended))
    return result


def merge_finished(kept: tuple[Tensor, Tensor, Tensor, Tensor], score: Tensor, log_prob: Tensor, tokens: Tensor,
                   length: int | Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The best ``nbest`` of kept finished hypotheses and new candidates, per sentence, best first.

    kept: (score, log_prob, length, tokens) of shapes (n, nbest) ×3 and (n, nbest, L); the candidates:
    score, log_prob (n, m) with -inf for none, tokens (n, m, L), all of the same ``length``. The best
    of a union are the best of (the kept ones ∪ the new ones): one ``topk`` for all sentences.
    """
    k_score, k_log_prob, k_length, k_tokens = kept
    best, pick = torch.cat([k_score, score], dim=1).topk(k_score.size(1), dim=1)  # (n, nbest)
    log_prob = torch.cat([k_log_prob, log_prob], 1).gather(1, pick)
    new_len = torch.zeros_like(score, dtype=torch.long) + length
    length_ = torch.cat([k_length, new_len], 1).gather(1, pick)
    all_tok = torch.cat([k_tokens, tokens], dim=1)  # (n, nbest + m, L)
    return best, log_prob, length_, all_tok.gather(1, pick.unsqueeze(-1).expand(-1, -1, all_tok.size(-1)))


class _Finished:
    """The ``nbest`` best finished hypotheses of every sentence, kept as tensors (best first).

    New candidates are merged by :func:`merge_finished`, one ``topk`` per step for all sentences.
    """

    def __init__(self, b: int, nbest: int, max_len: int, device: torch.device) -> None:
        self.score = torch.full((b, nbest), float("-inf"), device=device)  # log P / lp
        self.log_prob = torch.full((b, nbest), float("-inf"), device=device)
        self.length = torch.zeros((b, nbest), dtype=torch.long, device=device)
        self.tokens = torch.full((b, nbest, max_len), PAD_ID, dtype=torch.long, device=device)

    def merge(self, sent: Tensor, score: Tensor, log_prob: Tensor, tokens: Tensor, length: int) -> None:
        """sent: (n,) sentence ids; score, log_prob: (n, m) with -inf for no candidate; tokens: (n, m, L)."""
        kept = (self.score[sent], self.log_prob[sent], self.length[sent], self.tokens[sent])
        self.score[sent], self.log_prob[sent], self.length[sent], self.tokens[sent] = merge_finished(
            kept, score, log_prob, tokens, length)

    def worst(self, sent: Tensor) -> Tensor:
        """(n,) score of each sentence's nbest-th finished hypothesis (-inf while there are fewer)."""
        return self.score[sent, -1]

    def hypotheses(self, limit: Tensor) -> list[list[Hypothesis]]:
        """Per sentence, its finished hypotheses, best first. limit: (b,) the length limits: a hypothesis that
        ended with </s> has fewer tokens than its sentence's limit (</s> took the last place at the latest),
        one cut at the limit has exactly as many."""
        scores, logps, lens, toks = self.score.tolist(), self.log_prob.tolist(), self.length.tolist(), self.tokens.tolist()
        limits = limit.tolist()
        return [[Hypothesis(toks[i][j][: lens[i][j]], s, logps[i][j], lens[i][j] < limits[i])
                 for j, s in enumerate(row) if s > float("-inf")] for i, row in enumerate(scores)]


@torch.no_grad()
def beam_search(model, src: Tensor, max_len: Tensor, beam: int = 4, alpha: float = 0.6, nbest: int = 1,
                stopping: Literal["bound", "count"] = "bound") -> list[list[Hypothesis]]:
    """Batched beam search (§6.1: beam 4, α = 0.6, max length = input + 50, early termination).

    Alive hypotheses are ranked by log-probability; finished ones by log P / lp(|Y|), |Y| counting </s>.
    ``stopping="bound"`` (tensor2tensor's, the default): every </s> among a step's 2k candidates is a
    finished hypothesis, and a sentence stops as soon as no alive hypothesis can still beat its
    ``nbest``-th finished one: an alive score can only fall, and lp grows with length, so
    log P_alive / lp(max_len) bounds it — the search the beam would make if it never stopped early.
    ``stopping="count"`` (fairseq's; Hugging Face ``early_stopping=True``; CTranslate2): a </s> among the
    k best candidates of a step is a finished hypothesis, and a sentence stops once k have finished —
    fewer steps (a finished hypothesis is rarely beaten later), not always the same result.
    All bookkeeping is on tensors for the whole batch (no Python loop over sentences or hypotheses);
    finished sentences leave the batch. Returns, per sentence, the ``nbest`` best hypotheses (best first).
    """
    if nbest > beam:
        raise ValueError(f"nbest ({nbest}) cannot exceed the beam size ({beam})")
    if stopping not in ("bound", "count"):
        raise ValueError(f"stopping must be 'bound' or 'count', got {stopping!r}")
    dev = src.device
    b, k = src.size(0), beam
    # Rows [i*k, (i+1)*k) of the decoder's batch are sentence i's beams. What depends only on the source
    # (the memory and its keys/values) stays one row per sentence: attention groups the k beams.
    state = model.start(src, beams=k)
    alive = torch.arange(b, device=dev)  # original sentence of each active block of k rows
    limit = max_len.to(dev)
    steps = int(limit.max())
    scores = torch.full((b, k), float("-inf"), device=dev, dtype=torch.float32)
    scores[:, 0] = 0.0  # only the first beam is live at the start: no duplicate hypotheses
    history = torch.full((b * k, steps), PAD_ID, dtype=torch.long, device=dev)  # tokens chosen so far
    tokens = torch.full((b * k, 1), BOS_ID, dtype=torch.long, device=dev)
    finished = _Finished(b, nbest, steps, dev)
    counting = stopping == "count"
    n_ended = torch.zeros(b, dtype=torch.long, device=dev)  # per alive sentence: hypotheses ended (counted if counting)
    may_end = torch.arange(2 * k, device=dev) < (k if counting else 2 * k)  # the candidates a </s> ends
    neg_inf = float("-inf")

    for t in range(steps):
        n = alive.numel()
        logp = _next_token_log_probs(model, tokens, state)  # (n·k, V)
        # The 2k best continuations of the sentence are among the 2k best of each of its beams.
        m = min(2 * k, logp.size(-1))
        beam_top, beam_tok = logp.topk(m, dim=-1)  # (n·k, m), best first
        _check_finite(beam_top[:, 0])
        cand = (scores.view(-1, 1) + beam_top).view(n, k * m)
        top, idx = cand.topk(2 * k, dim=-1)  # (n, 2k)
        rows_2k = torch.arange(n, device=dev).unsqueeze(1) * k + idx // m  # the beam each candidate extends
        tok = beam_tok.view(n, k * m).gather(1, idx)
        is_eos = tok == EOS_ID
        ends = is_eos & may_end  # "count": only the k best candidates may end (fairseq, Hugging Face)
        if counting:
            n_ended += ends.sum(1)
        length = t + 1
        lp = length_penalty(float(length), alpha)

        # Finished hypotheses: every </s> among the 2k candidates (tensor2tensor), or among the k best.
        if bool(ends.any()):
            eos_score = top.masked_fill(~ends, neg_inf)
            finished.merge(alive, eos_score / lp, eos_score, history[rows_2k], t)

        # The k best candidates that did not end become the next beams.
        scores, pick = top.masked_fill(is_eos, neg_inf).topk(k, dim=-1)  # (n, k)
        rows = rows_2k.gather(1, pick).view(-1)
        new_tok = tok.gather(1, pick).view(-1)
        history = history.index_select(0, rows)
        history[:, t] = new_tok

        # Out of length: the alive hypotheses end here, without </s>.
        at_limit = length >= limit[alive]  # (n,)
        if bool(at_limit.any()):
            s = scores.masked_fill(~at_limit.unsqueeze(1), neg_inf)
            finished.merge(alive, s / lp, s, history.view(n, k, steps), length)
        # Done: at the limit, or no alive hypothesis can beat the nbest-th finished one any more.
        if counting:
            done = at_limit | (n_ended >= k)
        else:
            bound = scores[:, 0] / length_penalty(limit[alive].float(), alpha)
            worst = finished.worst(alive)
            done = at_limit | ((worst > neg_inf) & (worst >= bound))
        if bool(done.all()):
            break
        keep = None
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            keep_rows = (keep.unsqueeze(1) * k + torch.arange(k, device=dev)).view(-1)
            alive, scores, n_ended = alive[keep], scores[keep], n_ended[keep]
            history = history.index_select(0, keep_rows)
            rows = rows.view(n, k)[keep].view(-1)
            new_tok = new_tok.view(n, k)[keep].view(-1)
        state.reorder_beams(rows, keep)
        tokens = new_tok.unsqueeze(1)

    return finished.hypotheses(limit)
