"""Search for the most probable translation (§6.1): greedy and batched beam search with the
GNMT length penalty, both incremental (key/value caches, the encoder run once per sentence).

Every sentence of a batch is searched independently of the others: its result does not depend on
which batch it was decoded in (tested). Finished sentences leave the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def _forbid_specials(logp: Tensor) -> Tensor:
    logp[:, PAD_ID] = float("-inf")
    logp[:, BOS_ID] = float("-inf")
    return logp


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS and EOS
    score: float  # log P / lp for beam search; log P for greedy
    log_prob: float


@torch.no_grad()
def greedy_search(model, src: Tensor, max_len: Tensor) -> list[Hypothesis]:  # noqa: ANN001
    """Pick the most probable next token until </s> or the length limit. src: (B, S)."""
    b = src.size(0)
    state = model.start(src)
    alive = torch.arange(b, device=src.device)  # which original sentence each row is
    out = torch.full((b, int(max_len.max())), PAD_ID, dtype=torch.long, device=src.device)
    logps = torch.zeros(b, dtype=torch.float64, device=src.device)
    lengths = torch.zeros(b, dtype=torch.long, device=src.device)
    tokens = torch.full((b, 1), BOS_ID, dtype=torch.long, device=src.device)
    for t in range(out.size(1)):
        logp = _forbid_specials(model.step(tokens, state)[:, -1].float().log_softmax(-1))  # (b, V)
        best_lp, best = logp.max(-1)
        out[alive, t] = best
        logps[alive] += best_lp.double()
        done = (best == EOS_ID) | (t + 1 >= max_len[alive])
        lengths[alive[done]] = t + 1
        if done.all():
            break
        keep = (~done).nonzero().squeeze(1)
        if not done.any():
            tokens = best.unsqueeze(1)
            continue
        state.select(keep)
        alive, tokens = alive[keep], best[keep].unsqueeze(1)
    result = []
    for i in range(b):
        seq = out[i, : lengths[i]].tolist()
        if seq and seq[-1] == EOS_ID:
            seq = seq[:-1]
        result.append(Hypothesis(seq, logps[i].item(), logps[i].item()))
    return result


@torch.no_grad()
def beam_search(model, src: Tensor, max_len: Tensor, beam: int = 4, alpha: float = 0.6, nbest: int = 1) -> list[list[Hypothesis]]:  # noqa: ANN001, C901
    """Batched beam search (§6.1: beam 4, α = 0.6, max length = input + 50, early termination).

    Alive hypotheses are ranked by log-probability; finished ones by log P / lp(|Y|), |Y| counting </s>.
    A sentence stops as soon as no alive hypothesis can still beat its ``nbest``-th finished one: an
    alive score can only fall, and lp grows with length, so log P_alive / lp(max_len) bounds it.
    Returns, per sentence, the ``nbest`` best hypotheses (best first).
    """
    if nbest > beam:
        raise ValueError(f"nbest ({nbest}) cannot exceed the beam size ({beam})")
    dev = src.device
    b, k = src.size(0), beam
    state = model.start(src)
    # Each sentence's state repeated k times: rows [i*k, (i+1)*k) are sentence i's beams.
    state.select(torch.arange(b, device=dev).repeat_interleave(k))
    alive = torch.arange(b, device=dev)  # original sentence of each active block of k rows
    limit = max_len.to(dev)
    scores = torch.full((b, k), float("-inf"), device=dev, dtype=torch.float32)
    scores[:, 0] = 0.0  # only the first beam is live at the start: no duplicate hypotheses
    history = torch.full((b * k, 0), BOS_ID, dtype=torch.long, device=dev)
    tokens = torch.full((b * k, 1), BOS_ID, dtype=torch.long, device=dev)
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]

    for t in range(int(limit.max())):
        n = alive.numel()
        logp = _forbid_specials(model.step(tokens, state)[:, -1].float().log_softmax(-1))  # (n·k, V)
        v = logp.size(-1)
        cand = (scores.unsqueeze(-1) + logp.view(n, k, v)).view(n, k * v)
        top, idx = cand.topk(2 * k, dim=-1)  # (n, 2k)
        src_beam, tok = idx // v, idx % v
        is_eos = tok == EOS_ID
        length = t + 1

        # Finished hypotheses: every </s> among the 2k candidates (tensor2tensor).
        lp = length_penalty(float(length), alpha)
        for i, j in is_eos.nonzero().tolist():
            if top[i, j] == float("-inf"):
                continue
            row = i * k + int(src_beam[i, j])
            seq = history[row].tolist()
            finished[int(alive[i])].append(Hypothesis(seq, top[i, j].item() / lp, top[i, j].item()))

        # The k best candidates that did not end become the next beams.
        masked = top.masked_fill(is_eos, float("-inf"))
        new_scores, pick = masked.topk(k, dim=-1)  # (n, k)
        rows = (torch.arange(n, device=dev).unsqueeze(1) * k + src_beam.gather(1, pick)).view(-1)
        new_tok = tok.gather(1, pick).view(-1)
        history = torch.cat([history.index_select(0, rows), new_tok.unsqueeze(1)], dim=1)
        scores = new_scores

        # Which sentences are done: length limit reached, or no alive hypothesis can win any more.
        at_limit = (length >= limit[alive]).tolist()
        bound = (scores[:, 0] / length_penalty(limit[alive].float(), alpha)).tolist()
        done = []
        for i in range(n):
            fin = finished[int(alive[i])]
            if at_limit[i]:
                # Out of length: the alive hypotheses end here, without </s>.
                for j in range(k):
                    if scores[i, j] > float("-inf"):
                        fin.append(Hypothesis(history[i * k + j].tolist(), scores[i, j].item() / lp, scores[i, j].item()))
                done.append(True)
            elif len(fin) >= nbest:
                fin.sort(key=lambda h: -h.score)
                done.append(fin[nbest - 1].score >= bound[i])
            else:
                done.append(False)
        done_t = torch.tensor(done, device=dev)
        if done_t.all():
            break
        if done_t.any():
            keep = (~done_t).nonzero().squeeze(1)
            keep_rows = (keep.unsqueeze(1) * k + torch.arange(k, device=dev)).view(-1)
            alive, scores = alive[keep], scores[keep]
            history = history.index_select(0, keep_rows)
            rows = rows.view(n, k)[keep].view(-1)
            new_tok = new_tok.view(n, k)[keep].view(-1)
        state.select(rows)
        tokens = new_tok.unsqueeze(1)

    return [sorted(f, key=lambda h: -h.score)[:nbest] for f in finished]
