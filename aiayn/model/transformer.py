"""The encoder-decoder Transformer of §3 (Figure 1).

    src tokens ─► Embedding·√d + PE ─► N × EncoderLayer ─► memory ─┐
    tgt tokens (shifted right) ─► Embedding·√d + PE ─► N × DecoderLayer ─► Linear ─► softmax
                                                          (causal self-attn, attention over memory)

With ``tie="three_way"`` (§3.4) the source embedding, the target embedding and the pre-softmax
projection are one matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import PAD_ID, ModelConfig
from .attention import KVCache
from .layers import DecoderLayer, Embedding, EncoderLayer, InputLayer, final_norm, init_linear_weights


def padding_mask(tokens: Tensor, pad_id: int = PAD_ID) -> Tensor:
    """(B, S) tokens → (B, 1, 1, S) bool, True at real tokens: the keys a query may attend to."""
    return (tokens != pad_id)[:, None, None, :]


@dataclass
class DecoderState:
    """Everything incremental decoding carries from one step to the next.

    ``self_caches[i]``: keys/values of layer i's self-attention for the positions decoded so far;
    ``cross_caches[i]``: keys/values of the encoder output for layer i (computed on the first step);
    ``offset``: how many target positions have been decoded (the next position's index);
    ``beams``: decoder rows per memory row — beam search decodes k hypotheses per sentence against one
    copy of the sentence's memory (rows [i·k, (i+1)·k) of the decoder's batch belong to sentence i).
    """

    self_caches: list[KVCache]
    cross_caches: list[KVCache]
    memory: Tensor | None = None  # (B, S, d)
    memory_mask: Tensor | None = None  # (B, 1, 1, S)
    offset: int = 0
    beams: int = 1

    @classmethod
    def empty(cls, n_layers: int, memory: Tensor | None = None, memory_mask: Tensor | None = None,
              cache: type[KVCache] = KVCache, beams: int = 1) -> DecoderState:
        """No positions decoded yet; ``cache``: the class of the self-attention caches."""
        return cls([cache() for _ in range(n_layers)], [KVCache() for _ in range(n_layers)], memory, memory_mask,
                   beams=beams)

    def select(self, index: Tensor) -> None:
        """Keep (and reorder) the batch rows ``index``: beam reordering, dropping finished sentences."""
        self.reorder_beams(index, index)

    def reorder_beams(self, index: Tensor, sentence_rows: Tensor | None) -> None:
        """Beam search's reordering: self-attention caches take rows ``index``; what depends only on the
        source (memory, its mask, encoder-decoder keys/values: one row per sentence, shared by its beams)
        takes rows ``sentence_rows`` when sentences leave the batch (None = the same sentences)."""
        for c in self.self_caches:
            c.select(index)
        if sentence_rows is None:
            return
        for c in self.cross_caches:
            c.select(sentence_rows)
        if self.memory is not None:
            self.memory = self.memory.index_select(0, sentence_rows)
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, sentence_rows)


class Encoder(nn.Module):
    """N identical layers of self-attention + FFN over the embedded source (§3.1)."""

    def __init__(self, cfg: ModelConfig, input_layer: InputLayer) -> None:
        super().__init__()
        self.input = input_layer
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.norm = final_norm(cfg)

    def forward(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        x = self.input(tokens)  # (B, S, d)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class Decoder(nn.Module):
    """N identical layers of causal self-attention (+ encoder-decoder attention) + FFN (§3.1).

    Without cross-attention it is the stack of a decoder-only language model.
    """

    def __init__(self, cfg: ModelConfig, input_layer: InputLayer, cross_attention: bool = True) -> None:
        super().__init__()
        self.input = input_layer
        self.layers = nn.ModuleList(DecoderLayer(cfg, cross_attention) for _ in range(cfg.n_decoder_layers))
        self.norm = final_norm(cfg)

    def forward(
        self,
        tokens: Tensor,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        state: DecoderState | None = None,
    ) -> Tensor:
        """tokens: (B, T) → hidden states (B, T, d). With ``state``, continues from its caches."""
        offset = 0 if state is None else state.offset
        x = self.input(tokens, offset)
        for i, layer in enumerate(self.layers):
            self_cache = cross_cache = None
            if state is not None:
                self_cache, cross_cache = state.self_caches[i], state.cross_caches[i]
            x = layer(x, memory, memory_mask, self_cache, cross_cache, beams=1 if state is None else state.beams)
        if state is not None:
            state.offset += tokens.size(1)
        return self.norm(x)


class OutputLayer(nn.Module):
    """The pre-softmax linear transformation (§3.4): shares the embedding matrix when tied. ``bias``: a
    per-token bias added to the logits (not in the paper; Marian models have one)."""

    def __init__(self, d_model: int, vocab_size: int, tied: Embedding | None, bias: bool = False) -> None:
        super().__init__()
        self.tied = tied
        self.weight = None if tied is not None else nn.Parameter(nn.init.xavier_uniform_(torch.empty(vocab_size, d_model)))
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None

    @property
    def matrix(self) -> Tensor:
        """The (V, d) matrix in use: the tied embedding's, or this layer's own."""
        return self.tied.weight if self.tied is not None else self.weight

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.matrix, self.bias)  # (B, T, d) → (B, T, V)


class Transformer(nn.Module):
    """The encoder-decoder of Figure 1.

    ``forward(src, tgt_in)`` is teacher forcing for training; ``start`` + ``step`` decode one token
    at a time with caches (used by greedy and beam search).
    """

    kv_cache: type[KVCache] = KVCache  # the self-attention cache of incremental decoding (aiayn.accel may swap it)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        src_emb = Embedding(cfg.vocab_size, cfg.d_model, cfg.scale_embeddings)
        tgt_emb = src_emb if cfg.tie == "three_way" else Embedding(cfg.target_vocab_size, cfg.d_model, cfg.scale_embeddings)
        self.encoder = Encoder(cfg, InputLayer(cfg, src_emb))
        self.decoder = Decoder(cfg, InputLayer(cfg, tgt_emb), cross_attention=True)
        self.output = OutputLayer(cfg.d_model, cfg.target_vocab_size, tgt_emb if cfg.tie != "none" else None,
                                  cfg.output_bias)
        init_linear_weights(self.encoder)
        init_linear_weights(self.decoder)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src: (B, S) → memory (B, S, d) and its padding mask (B, 1, 1, S)."""
        mask = padding_mask(src)
        return self.encoder(src, mask), mask

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """Teacher forcing: tgt_in (B, T) (BOS + target, shifted right) → logits (B, T, V)."""
        return self.output(self.decoder(tgt_in, memory, memory_mask))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)

    def start(self, src: Tensor, beams: int = 1) -> DecoderState:
        """Encode the source once and return the state incremental decoding continues from; ``beams``:
        how many hypotheses per sentence each step will carry (B·beams decoder rows, B memory rows)."""
        memory, mask = self.encode(src)
        return DecoderState.empty(len(self.decoder.layers), memory, mask, self.kv_cache, beams)

    def step(self, tokens: Tensor, state: DecoderState) -> Tensor:
        """tokens: (B, t) new target tokens → logits (B, t, V) for the next positions; updates ``state``."""
        return self.output(self.decoder(tokens, state.memory, state.memory_mask, state))
