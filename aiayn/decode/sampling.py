"""Sampling from a decoder-only language model: temperature, top-k, top-p, stop strings, seeds.

The context is the last ``block_size`` tokens (nanoGPT's cropping). While the text fits the block,
each new token costs one cached step; once it is longer, the window slides and every step re-reads the
window (positions shift, so cached keys would be stale). Either way the tokens are exactly those of
:func:`generate_uncached`, the reference that re-reads the window at every step (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import EOS_ID, SampleConfig
from ..model import device_of


def _pick(logits: Tensor, cfg: SampleConfig, gen: torch.Generator | None) -> Tensor:
    """logits (B, V) → next token (B,)."""
    logits = logits.float()
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    logits = logits / cfg.temperature
    if cfg.top_k > 0:
        kth = logits.topk(min(cfg.top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop tokens once the mass before them reaches top_p (the first token always stays).
        drop = probs.cumsum(-1) - probs >= cfg.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)


def _generator(cfg: SampleConfig, device: torch.device) -> torch.Generator | None:
    if cfg.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(cfg.seed)


@torch.no_grad()
def generate(model, prompt: Tensor, cfg: SampleConfig, block_size: int | None = None) -> Tensor:
    """prompt (B, T) → (B, T + max_new_tokens), with a key/value cache while the context fits."""
    block = block_size or model.block_size
    ids = prompt.to(device_of(model))
    gen = _generator(cfg, ids.device)
    state = model.start()
    logits = model.step(ids[:, -block:], state)[:, -1]
    for _ in range(cfg.max_new_tokens):
        nxt = _pick(logits, cfg, gen)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if state.offset < block:
            logits = model.step(nxt[:, None], state)[:, -1]
        else:  # the window slides: re-read it
            logits = model(ids[:, -block:])[:, -1]
    return ids


@torch.no_grad()
def generate_uncached(model, prompt: Tensor, cfg: SampleConfig, block_size: int | None = None) -> Tensor:
    """The reference: every step runs the model over the last ``block_size`` tokens (nanoGPT)."""
    block = block_size or model.block_size
    ids = prompt.to(device_of(model))
    gen = _generator(cfg, ids.device)
    for _ in range(cfg.max_new_tokens):
        nxt = _pick(model(ids[:, -block:])[:, -1], cfg, gen)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return ids


def generate_text(model, vocab, prompt: str, cfg: SampleConfig, stop: list[str] | None = None) -> str:
    """Continue ``prompt``; the text is cut before the first stop string, if any appears."""
    if any(not s for s in stop or []):
        raise ValueError("a stop string must not be empty")
    ids = vocab.encode(prompt) or [EOS_ID]  # an empty prompt starts from </s> (a document boundary)
    out = generate(model, torch.tensor([ids]), cfg)[0, len(ids) :].tolist()  # on the model's device
    text = vocab.decode(out)
    for s in stop or []:
        cut = text.find(s)
        if cut >= 0:
            text = text[:cut]
    return text
