"""Neural language models before attention, with the interface of :class:`~aiayn.model.lm.LanguageModel`
(tokens (B, T) → next-token logits (B, T, V); ``start``/``step`` for sampling), so the same training
loop, full-validation evaluation and sampler serve them:

* :class:`MLPLanguageModel` — Bengio, Ducharme, Vincent & Jauvin (2003), "A Neural Probabilistic
  Language Model": the n − 1 previous words are looked up in a shared embedding table C, concatenated
  into x, and y = b + W·x + U·tanh(d + H·x) (§2, equation (1); W are the "direct connections" from
  the embeddings to the output). Like the n-gram model it sees a fixed window, but similar words get
  similar vectors, so what is learnt about one context carries over to similar ones.
* :class:`RNNLanguageModel` — a recurrent network (Elman RNN, LSTM of Hochreiter & Schmidhuber 1997,
  or GRU of Cho et al. 2014; ``torch.nn.LSTM``/``GRU``/``RNN``) reads the text one token at a time and
  predicts the next from its state, which can carry anything from any distance back — in principle; in
  practice the gradient through many steps fades, which is what attention later went around.
  Zaremba et al. (2014)'s regularisation: dropout on the embeddings, between layers and on the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import PAD_ID, ModelConfig
from .window import WindowState, window_step


class MLPLanguageModel(nn.Module):
    """Bengio et al. (2003): the next token from the embeddings of the ``order − 1`` before it."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.context = cfg.order - 1  # n − 1 words of context
        m, h = cfg.d_model, cfg.d_ff
        self.embedding = nn.Embedding(cfg.vocab_size, m)  # C: one m-dimensional vector per word
        self.hidden = nn.Linear(self.context * m, h)  # H, d
        self.output = nn.Linear(h, cfg.vocab_size)  # U, b
        self.direct = nn.Linear(self.context * m, cfg.vocab_size, bias=False)  # W: embeddings → output
        self.dropout = nn.Dropout(cfg.dropout)

    @property
    def block_size(self) -> int:
        return self.cfg.max_positions

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) → logits (B, T, V); position t sees tokens t − n + 2 … t (<pad> before the row)."""
        b, t = tokens.shape
        padded = F.pad(tokens, (self.context - 1, 0), value=PAD_ID)  # (B, T + n − 2)
        windows = padded.unfold(1, self.context, 1)  # (B, T, n − 1): the context of each position
        x = self.dropout(self.embedding(windows).flatten(2))  # (B, T, (n − 1)·m)
        return self.output(self.dropout(torch.tanh(self.hidden(x)))) + self.direct(x)

    def start(self) -> WindowState:
        return WindowState.empty()

    def step(self, tokens: Tensor, state: WindowState) -> Tensor:
        return window_step(self, tokens, state, self.context - 1)


@dataclass
class RecurrentState:
    """Sampling state of the RNN LM: its hidden state (and the LSTM's cell state)."""

    hidden: Tensor | tuple[Tensor, Tensor] | None = None
    offset: int = 0


RNN_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class RNNLanguageModel(nn.Module):
    """Embedding → ``n_decoder_layers`` recurrent layers of size d_model → linear output (tied to the
    embedding unless ``tie: none``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embedding = nn.Embedding(cfg.vocab_size, d)
        self.rnn = RNN_CELLS[cfg.cell](d, d, num_layers=cfg.n_decoder_layers, batch_first=True,
                                       dropout=cfg.dropout if cfg.n_decoder_layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(d, cfg.vocab_size)
        if cfg.tie != "none":  # Press & Wolf (2017): the output layer is the embedding
            self.output.weight = self.embedding.weight
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

    @property
    def block_size(self) -> int:
        return self.cfg.max_positions

    def run(self, tokens: Tensor, hidden=None) -> tuple[Tensor, object]:
        out, hidden = self.rnn(self.dropout(self.embedding(tokens)), hidden)  # (B, T, d)
        return self.output(self.dropout(out)), hidden

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) → logits (B, T, V), each row read from its start."""
        return self.run(tokens)[0]

    def start(self) -> RecurrentState:
        return RecurrentState()

    def step(self, tokens: Tensor, state: RecurrentState) -> Tensor:
        """tokens (B, t) → logits (B, t, V), continuing from the state (one recurrent step per token)."""
        logits, state.hidden = self.run(tokens, state.hidden)
        state.offset += tokens.size(1)
        return logits
