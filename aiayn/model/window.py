"""Sampling state of a language model that sees a fixed window of the last tokens (the n-gram model,
Bengio's MLP): no cache to carry, only the tokens the window still needs."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, cat, long, nn, zeros


@dataclass
class WindowState:
    """The last ``width`` tokens of every row, and how many tokens were read."""

    history: Tensor  # (B, ≤ width)
    offset: int = 0

    @classmethod
    def empty(cls) -> WindowState:
        return cls(zeros(1, 0, dtype=long))


def window_step(model: nn.Module, tokens: Tensor, state: WindowState, width: int) -> Tensor:
    """tokens (B, t) new tokens → ``model``'s logits (B, t, V) for the token after each, as its full
    forward pass over the history and the new tokens gives them; the history keeps the last ``width``."""
    history = state.history.expand(tokens.size(0), -1) if state.history.size(0) == 1 else state.history
    seq = cat([history, tokens], dim=1)
    out = model(seq)[:, history.size(1) :]
    state.history = seq[:, max(0, seq.size(1) - width) :]
    state.offset += tokens.size(1)
    return out
