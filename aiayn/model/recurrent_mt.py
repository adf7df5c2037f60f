"""Recurrent translation, the two models the Transformer was measured against (docs/lineage.md, step 4):

* :class:`RNNSeq2Seq` — Sutskever, Vinyals & Le (2014), "Sequence to Sequence Learning with Neural
  Networks": a multi-layer LSTM reads the source (reversed, by the paper's trick: the first words of the
  source then sit next to the first words of the target), and its final states are the *only* bridge to
  a second LSTM that writes the target. Everything the decoder knows of the source must pass through
  that one fixed-size state, however long the sentence.
* :class:`RNNSearch` — Bahdanau, Cho & Bengio (2014), "Neural Machine Translation by Jointly Learning to
  Align and Translate": a bidirectional GRU reads the source into one annotation per word,
  h_j = [→h_j ; ←h_j]; at every target step the decoder scores every annotation against its state,
  e_ij = vᵀ tanh(W s_{i−1} + U h_j) (additive attention, §3.1 and appendix A.1.2), takes the context
  c_i = Σ_j softmax(e_i)_j h_j, and a GRU fed [E y_{i−1} ; c_i] gives s_i. The output is the paper's
  deep output with maxout: t = maxout(U_o s_{i−1} + V_o E y_{i−1} + C_o c_i), p(y_i) = softmax(W_o t)
  (appendix A.2.2). The Transformer kept this attention (as encoder-decoder attention, §3.2.3) and
  dropped the recurrence.

Both have the encoder-decoder interface of :class:`~aiayn.model.Transformer` — ``forward(src, tgt_in)``
for teacher forcing, ``start(src, beams)`` + ``step(tokens, state)`` for search, a state with
``select``/``reorder_beams`` — so the same training loop, greedy and beam search, evaluation and server
use them. ``torch.nn.LSTM``/``GRU`` and their cells do the recurrences; the attention is written out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import EOS_ID, PAD_ID, ModelConfig
from .attention import ATTENTION_RECORDER


def _hidden_size(cfg: ModelConfig) -> int:
    return cfg.hidden_size or cfg.d_model


@dataclass
class RecurrentDecoderState:
    """What search carries from one step to the next: the decoder's recurrent state (one row per
    hypothesis), and what depends only on the source (one row per sentence, shared by its beams)."""

    hidden: Tensor | tuple[Tensor, Tensor]  # (layers, B·beams, n), or (B·beams, n); LSTM: (h, c)
    memory: Tensor | None = None  # RNNsearch: annotations (B, S, 2n)
    keys: Tensor | None = None  # RNNsearch: U·h_j (B, S, n), computed once
    memory_mask: Tensor | None = None  # (B, S), True at real tokens
    beams: int = 1
    offset: int = 0
    batch_dim: int = 1  # the dimension of ``hidden`` that holds the rows: 1 for nn.LSTM/GRU, 0 for a GRUCell

    def select(self, index: Tensor) -> None:
        self.reorder_beams(index, index)

    def reorder_beams(self, index: Tensor, sentence_rows: Tensor | None) -> None:
        """Hypothesis rows take rows ``index``; the source's rows take ``sentence_rows`` (None: unchanged)."""
        pick = lambda t: t.index_select(self.batch_dim, index)  # noqa: E731
        self.hidden = tuple(map(pick, self.hidden)) if isinstance(self.hidden, tuple) else pick(self.hidden)
        if sentence_rows is not None:
            for name in ("memory", "keys", "memory_mask"):
                t = getattr(self, name)
                if t is not None:
                    setattr(self, name, t.index_select(0, sentence_rows))


class _Embeddings(nn.Module):
    """Source and target embeddings, one table when ``tie`` is three_way (one shared vocabulary)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.source = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD_ID)
        self.target = self.source if cfg.tie == "three_way" else nn.Embedding(cfg.target_vocab_size, cfg.d_model,
                                                                              padding_idx=PAD_ID)
        for emb in {id(self.source): self.source, id(self.target): self.target}.values():
            nn.init.uniform_(emb.weight, -0.1, 0.1)
            with torch.no_grad():
                emb.weight[PAD_ID].zero_()


class RNNSeq2Seq(nn.Module):
    """Sutskever et al. (2014): LSTM encoder → its final (h, c) → LSTM decoder → softmax."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = _hidden_size(cfg)
        self.embed = _Embeddings(cfg)
        cell = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cfg.cell]
        drop = cfg.dropout if cfg.n_encoder_layers > 1 else 0.0
        self.encoder = cell(cfg.d_model, n, num_layers=cfg.n_encoder_layers, batch_first=True, dropout=drop)
        self.decoder = cell(cfg.d_model, n, num_layers=cfg.n_decoder_layers, batch_first=True, dropout=drop)
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(n, cfg.target_vocab_size)
        if cfg.tie != "none":  # the output layer is the target embedding (needs hidden_size == d_model)
            self.output.weight = self.embed.target.weight

    def encode(self, src: Tensor):
        """src (B, S) → the encoder's final state, the decoder's initial state."""
        lengths = (src != PAD_ID).sum(1).clamp(min=1)
        if self.cfg.reverse_source:  # reverse each sentence's words; </s> and the padding stay at the end
            words = lengths - (src.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1) == EOS_ID).long()  # (B,)
            i = torch.arange(src.size(1), device=src.device)
            pos = torch.where(i < words.unsqueeze(1), words.unsqueeze(1) - 1 - i, i)
            src = src.gather(1, pos)
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(self.embed.source(src)), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, final = self.encoder(packed)
        if self.cfg.n_encoder_layers != self.cfg.n_decoder_layers:  # the top layers' states start every decoder layer
            final = tuple(_resize_layers(s, self.cfg.n_decoder_layers) for s in final) if isinstance(final, tuple) \
                else _resize_layers(final, self.cfg.n_decoder_layers)
        return final

    def decode(self, tgt_in: Tensor, hidden) -> tuple[Tensor, object]:
        out, hidden = self.decoder(self.dropout(self.embed.target(tgt_in)), hidden)
        return self.output(self.dropout(out)), hidden

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: src (B, S), tgt_in (B, T) → logits (B, T, V)."""
        return self.decode(tgt_in, self.encode(src))[0]

    def start(self, src: Tensor, beams: int = 1) -> RecurrentDecoderState:
        final = self.encode(src)
        if beams > 1:  # the decoder runs one row per hypothesis from the start
            final = tuple(s.repeat_interleave(beams, 1) for s in final) if isinstance(final, tuple) \
                else final.repeat_interleave(beams, 1)
        return RecurrentDecoderState(final, beams=beams)

    def step(self, tokens: Tensor, state: RecurrentDecoderState) -> Tensor:
        logits, state.hidden = self.decode(tokens, state.hidden)
        state.offset += tokens.size(1)
        return logits


def _resize_layers(state: Tensor, layers: int) -> Tensor:
    """(L, B, n) → (layers, B, n): the last ``layers`` layers, or the top layer repeated."""
    if state.size(0) >= layers:
        return state[-layers:].contiguous()
    return torch.cat([state, state[-1:].expand(layers - state.size(0), -1, -1)]).contiguous()


class AdditiveAttention(nn.Module):
    """Bahdanau's alignment model: e_ij = vᵀ tanh(W s + U h_j), softmax over the real source words."""

    def __init__(self, query_size: int, memory_size: int, size: int) -> None:
        super().__init__()
        self.W = nn.Linear(query_size, size, bias=False)
        self.U = nn.Linear(memory_size, size)
        self.v = nn.Linear(size, 1, bias=False)

    def forward(self, s: Tensor, memory: Tensor, keys: Tensor, mask: Tensor, beams: int = 1) -> tuple[Tensor, Tensor]:
        """s: (B·beams, n) decoder states; memory (B, S, 2n), keys = U(memory) (B, S, a), mask (B, S) →
        context (B·beams, 2n) and weights (B·beams, S), each row a distribution over real source words."""
        b, src_len = memory.size(0), memory.size(1)
        q = self.W(s).view(b, beams, 1, -1)  # (B, k, 1, a)
        e = self.v(torch.tanh(q + keys.unsqueeze(1))).squeeze(-1)  # (B, k, S)
        alpha = e.masked_fill(~mask.unsqueeze(1), float("-inf")).softmax(-1)
        context = torch.bmm(alpha, memory)  # (B, k, 2n)
        return context.view(b * beams, -1), alpha.view(b * beams, src_len)


class RNNSearch(nn.Module):
    """Bahdanau et al. (2014): bidirectional GRU encoder, additive attention, GRU decoder, maxout output."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, m = _hidden_size(cfg), cfg.d_model
        self.embed = _Embeddings(cfg)
        self.encoder = nn.GRU(m, n, num_layers=cfg.n_encoder_layers, batch_first=True, bidirectional=True,
                              dropout=cfg.dropout if cfg.n_encoder_layers > 1 else 0.0)
        self.init_state = nn.Linear(n, n)  # s_0 = tanh(W_s ←h_1)
        self.cross_attn = AdditiveAttention(n, 2 * n, n)  # named as the Transformer's, for aiayn viz
        self.cell = nn.GRUCell(m + 2 * n, n)  # s_i = GRU([E y_{i−1} ; c_i], s_{i−1})
        self.deep_output = nn.ModuleDict({"U_o": nn.Linear(n, n), "V_o": nn.Linear(m, n, bias=False),
                                          "C_o": nn.Linear(2 * n, n, bias=False)})  # 2l = n units, maxout → l
        self.output = nn.Linear(n // 2, cfg.target_vocab_size)  # W_o
        if cfg.tie != "none":  # W_o is the target embedding (needs hidden_size == 2 · d_model)
            self.output.weight = self.embed.target.weight
        self.dropout = nn.Dropout(cfg.dropout)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """src (B, S) → annotations (B, S, 2n), their padding mask (B, S), the first decoder state (B, n)."""
        mask = src != PAD_ID
        lengths = mask.sum(1).clamp(min=1)
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(self.embed.source(src)), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, final = self.encoder(packed)
        memory, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        s0 = torch.tanh(self.init_state(final[-1]))  # the backward GRU's last state: it has read the whole source
        return memory, mask, s0

    def _recur(self, emb: Tensor, s: Tensor, memory: Tensor, keys: Tensor, mask: Tensor, beams: int):
        """The recurrence over target positions: embedded previous tokens emb (B·k, T, m) and s_0 → the
        states s_{i−1} and contexts c_i that each position's output reads ((B·k, T, n), (B·k, T, 2n)),
        and the last state. Only this is sequential; the output layer then runs on all positions at once."""
        states, contexts = [], []
        recorder = ATTENTION_RECORDER.get()
        for i in range(emb.size(1)):
            c, alpha = self.cross_attn(s, memory, keys, mask, beams)
            if recorder is not None:
                recorder.append(self.cross_attn, alpha[:, None, None].detach())  # (B·k, heads=1, one step, S)
            states.append(s)
            contexts.append(c)
            s = self.cell(torch.cat([emb[:, i], c], -1), s)  # s_i = GRU([E y_{i−1} ; c_i], s_{i−1})
        return torch.stack(states, 1), torch.stack(contexts, 1), s

    def _output(self, s: Tensor, emb: Tensor, c: Tensor) -> Tensor:
        """The deep output with maxout (appendix A.2.2) → logits (…, V)."""
        t = self.deep_output["U_o"](s) + self.deep_output["V_o"](emb) + self.deep_output["C_o"](c)  # (…, 2l)
        t = t.unflatten(-1, (-1, 2)).amax(-1)  # maxout over pairs: (…, l)
        return self.output(self.dropout(t))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: src (B, S), tgt_in (B, T) → logits (B, T, V)."""
        memory, mask, s0 = self.encode(src)
        emb = self.dropout(self.embed.target(tgt_in))  # (B, T, m)
        states, contexts, _ = self._recur(emb, s0, memory, self.cross_attn.U(memory), mask, 1)
        return self._output(states, emb, contexts)

    def start(self, src: Tensor, beams: int = 1) -> RecurrentDecoderState:
        memory, mask, s0 = self.encode(src)
        return RecurrentDecoderState(s0.repeat_interleave(beams, 0), memory, self.cross_attn.U(memory), mask, beams,
                                     batch_dim=0)

    def step(self, tokens: Tensor, state: RecurrentDecoderState) -> Tensor:
        """tokens (B·k, t) → logits (B·k, t, V), continuing the state."""
        emb = self.dropout(self.embed.target(tokens))
        states, contexts, state.hidden = self._recur(emb, state.hidden, state.memory, state.keys, state.memory_mask,
                                                     state.beams)
        state.offset += tokens.size(1)
        return self._output(states, emb, contexts)

