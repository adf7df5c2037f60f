"""The pieces every model here is built from: embeddings (§3.4), positional encoding (§3.5),
the position-wise feed-forward network (§3.3), residual sub-layers (§3.1, §5.4), and the encoder
and decoder layers (§3.1, Figure 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .attention import KVCache, MultiHeadAttention, Rotary


def sinusoidal_table(n_positions: int, d_model: int, layout: str = "interleaved") -> Tensor:
    """Positional encodings of §3.5, shape (n_positions, d_model).

    PE(pos, 2i) = sin(pos / 10000^(2i/d_model)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).

    ``layout="interleaved"`` is the paper's (sin in even columns, cos in odd ones). ``"concat"`` puts
    the same sin values in the first half and the cos values in the second half, with the paper's
    frequencies (the layout of Hugging Face Marian; it is a fixed permutation of the interleaved one).
    """
    pos = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (d/2,)
    angle = pos / torch.pow(10000.0, two_i / d_model)  # (P, d/2)
    if layout == "interleaved":
        pe = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)  # sin, cos, sin, cos, …
    elif layout == "concat":
        pe = torch.cat([angle.sin(), angle.cos()], dim=-1)  # sin … sin | cos … cos
    else:
        raise ValueError(f"unknown positional-encoding layout {layout!r}")
    return pe.float()


class PositionalEncoding(nn.Module):
    """Adds position information to the (scaled) embeddings: sinusoidal (§3.5), learned (Table 3 E), or
    nothing (``none``, and ``rope``, whose positions enter in self-attention: :class:`Rotary`)."""""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind, self.layout, self.d_model = cfg.positional, cfg.pe_layout, cfg.d_model
        self.max_positions = cfg.max_positions
        if self.kind == "learned":
            self.table = nn.Embedding(cfg.max_positions, cfg.d_model)
            nn.init.normal_(self.table.weight, std=0.02)  # GPT-2 / nanoGPT
        elif self.kind == "sinusoidal":
            # Not a parameter and not saved: it is a function of the position; grows on demand.
            self.register_buffer("pe", sinusoidal_table(cfg.max_positions, cfg.d_model, cfg.pe_layout), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x: (B, T, d) → x + PE[offset : offset + T]."""
        if self.kind in ("none", "rope"):
            return x
        end = offset + x.size(1)
        if self.kind == "learned":
            if end > self.max_positions:
                raise ValueError(f"sequence of {end} positions exceeds the learned table ({self.max_positions})")
            return x + self.table.weight[offset:end]
        if end > self.pe.size(0):
            self.pe = sinusoidal_table(max(end, 2 * self.pe.size(0)), self.d_model, self.layout).to(self.pe.device)
        return x + self.pe[offset:end].to(x.dtype)


class Embedding(nn.Module):
    """Token embedding multiplied by √d_model (§3.4); ``weight`` may be shared with the output layer."""

    def __init__(self, vocab_size: int, d_model: int, scale: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        self.scale = math.sqrt(d_model) if scale else 1.0
        # Scaled: N(0, d^-1/2), so that after the √d scaling the embeddings have unit variance like
        # the PE. Unscaled (GPT-2/nanoGPT): N(0, 0.02).
        nn.init.normal_(self.weight, std=d_model**-0.5 if scale else 0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, self.weight) * self.scale  # (B, T) → (B, T, d)


class InputLayer(nn.Module):
    """Embedding × √d_model + positional encoding, then dropout (§3.4, §3.5, §5.4)."""

    def __init__(self, cfg: ModelConfig, embedding: Embedding) -> None:
        super().__init__()
        self.embedding = embedding
        self.positional = PositionalEncoding(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, tokens: Tensor, offset: int = 0) -> Tensor:
        return self.dropout(self.positional(self.embedding(tokens), offset))


class FeedForward(nn.Module):
    """Position-wise feed-forward network, §3.3: FFN(x) = max(0, xW₁ + b₁)W₂ + b₂ (ReLU; GELU or SiLU — Marian's
    "swish" — optional)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.w2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.activation = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}[cfg.activation]
        self.dropout = nn.Dropout(cfg.act_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(self.dropout(self.activation(self.w1(x))))


class Residual(nn.Module):
    """A residual sub-layer with its LayerNorm and dropout (§3.1, §5.4).

    post-LN (the paper): LayerNorm(x + Dropout(Sublayer(x)));
    pre-LN (option):     x + Dropout(Sublayer(LayerNorm(x))).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, sublayer) -> Tensor:  # a callable (B, T, d) → (B, T, d)
        if self.pre:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


def self_attention(cfg: ModelConfig) -> MultiHeadAttention:
    """Self-attention of a layer; with ``positional: rope`` it rotates queries and keys by position, with
    ``attention_window: r`` each position attends only to the r on either side (restricted, Table 1)."""
    rope = Rotary(cfg.d_k, cfg.rope_base) if cfg.positional == "rope" else None
    return MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.bias, cfg.attn_dropout, rope, cfg.attention_window,
                              cfg.key_size)


class EncoderLayer(nn.Module):
    """One encoder layer (§3.1): self-attention, then the feed-forward network."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = self_attention(cfg)
        self.ffn = FeedForward(cfg)
        self.res_attn, self.res_ffn = Residual(cfg), Residual(cfg)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = self.res_attn(x, lambda h: self.self_attn(h, mask=mask))
        return self.res_ffn(x, self.ffn)


class DecoderLayer(nn.Module):
    """One decoder layer (§3.1): causal self-attention, encoder-decoder attention, feed-forward.

    With ``cross_attention=False`` it is the block of a decoder-only language model (GPT).
    """

    def __init__(self, cfg: ModelConfig, cross_attention: bool = True) -> None:
        super().__init__()
        self.self_attn = self_attention(cfg)
        self.res_self = Residual(cfg)
        self.cross_attn = (MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.bias, cfg.attn_dropout, d_k=cfg.key_size)
                           if cross_attention else None)
        self.res_cross = Residual(cfg) if cross_attention else None
        self.ffn = FeedForward(cfg)
        self.res_ffn = Residual(cfg)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        self_cache: KVCache | None = None,
        cross_cache: KVCache | None = None,
        beams: int = 1,
    ) -> Tensor:
        """x: (B·beams, T, d); memory: (B, S, d) — ``beams`` decoder rows attend to each memory row."""
        x = self.res_self(x, lambda h: self.self_attn(h, causal=True, cache=self_cache))
        if self.cross_attn is not None:
            x = self.res_cross(  # type: ignore[misc]
                x, lambda h: self.cross_attn(h, memory, mask=memory_mask, cache=cross_cache, static_kv=True, beams=beams)
            )
        return self.res_ffn(x, self.ffn)


def final_norm(cfg: ModelConfig) -> nn.Module:
    """Pre-LN stacks end with a LayerNorm; post-LN output is already normalised (§3.1)."""
    return nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps, bias=cfg.bias) if cfg.norm == "pre" else nn.Identity()


def init_linear_weights(module: nn.Module) -> None:
    """Xavier/Glorot uniform for every linear layer, zero biases (fairseq/OpenNMT; the paper is silent)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, MultiHeadAttention):
            # W^Q, W^K and W^V are three (d, d) matrices stored stacked: initialise each as its own.
            with torch.no_grad():
                for w in m.in_proj.weight.split([m.q_rows.stop, m.q_rows.stop, m.d_model], dim=0):
                    nn.init.xavier_uniform_(w)
