"""Attention (§3.2): scaled dot-product attention and multi-head attention.

Two paths compute the same function:

* the fast path, :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels), and
* the reference path, :func:`attention`, written as the paper's equation (1), which can also hand
  back the attention weights so they can be looked at.

Masks are boolean and broadcast to ``(B, h, T_q, T_k)``; ``True`` means "may attend".

Incremental decoding keeps a :class:`KVCache` per attention layer: for decoder self-attention the
keys and values of the positions produced so far, for encoder-decoder attention the keys and values
of the encoder output, computed once per source sentence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout: float = 0.0, training: bool = False,
    drop: Callable[[Tensor, float, bool], Tensor] = F.dropout,
) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention, §3.2.1 equation (1): softmax(QKᵀ/√d_k)·V.

    q: (B, h, T_q, d_k), k: (B, h, T_k, d_k), v: (B, h, T_k, d_v), mask: bool, True = attend.
    Returns the output (B, h, T_q, d_v) and the attention weights (B, h, T_q, T_k). ``drop`` is the
    dropout applied to the weights in training (``F.dropout``).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, h, T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    weights_used = drop(weights, dropout, True) if dropout > 0.0 and training else weights
    return weights_used @ v, weights


def causal_mask(t_q: int, t_k: int, device: torch.device | None = None) -> Tensor:
    """(t_q, t_k) bool mask where query i (the last t_q of t_k positions) sees keys ≤ its own position."""
    offset = t_k - t_q
    q_pos = torch.arange(t_q, device=device).unsqueeze(1) + offset
    return torch.arange(t_k, device=device).unsqueeze(0) <= q_pos


def band_mask(t_q: int, t_k: int, window: int, causal: bool, device: torch.device | None = None,
              first: int | None = None) -> Tensor:
    """Restricted self-attention (Table 1, §4): (t_q, t_k) bool mask where query i (at key position
    ``first`` + i; by default the queries are the last t_q of t_k positions) sees the keys at most
    ``window`` positions away — only earlier ones (and itself) when causal."""
    q_pos = torch.arange(t_q, device=device).unsqueeze(1) + (t_k - t_q if first is None else first)
    dist = torch.arange(t_k, device=device).unsqueeze(0) - q_pos  # key position − query position
    return (dist >= -window) & (dist <= (0 if causal else window))


def restricted_mask(mask: Tensor | None, t_q: int, t_k: int, window: int, causal: bool,
                    device: torch.device | None = None) -> Tensor:
    """The band of :func:`band_mask` combined with a key mask (padding). A query whose window holds no
    real key (a padding position far from the sentence) attends to itself, so no row is empty."""
    band = band_mask(t_q, t_k, window, causal, device)
    if mask is None:
        return band
    itself = band_mask(t_q, t_k, 0, False, device)  # the diagonal of the last t_q positions
    return band & (mask | itself)


LOCAL_BLOCK = 32  # queries per block of local_attention (at least the window)


def local_attention(q: Tensor, k: Tensor, v: Tensor, window: int, causal: bool, key_real: Tensor | None = None,
                    dropout: float = 0.0) -> Tensor:
    """Restricted self-attention in O(n·r) time and memory: the fast path of ``attention_window``.

    q, k, v: (B, h, n, d_k) of the same n positions; ``key_real``: (B, n) bool, False at padding. Equal
    to equation (1) under :func:`restricted_mask` (tested). The queries are cut into blocks of
    b = max(r, 32) positions; block j's queries can only see the keys of positions [jb − r, jb + b + r),
    so each block attends to that span of b + 2r keys, never to all n.
    """
    bsz, h, n, dk = q.shape
    r, blk = window, max(window, LOCAL_BLOCK)
    nb = -(-n // blk)  # blocks
    span, right = blk + 2 * r, nb * blk - n + r  # keys per block; padding after the last key
    qb = F.pad(q, (0, 0, 0, nb * blk - n)).view(bsz, h, nb, blk, dk).transpose(1, 2)  # (B, nb, h, b, d_k)

    def spans(x: Tensor) -> Tensor:  # (B, h, n, d) → (B, nb, h, span, d): block j's keys
        return F.pad(x, (0, 0, r, right)).unfold(2, span, blk).permute(0, 2, 1, 4, 3)

    real = torch.zeros(bsz, r + n + right, dtype=torch.bool, device=q.device)
    real[:, r : r + n] = True if key_real is None else key_real
    real = real.unfold(1, span, blk)  # (B, nb, span): which keys of each block's span exist
    band = band_mask(blk, span, r, causal, q.device, first=r)  # (b, span): block query a sits at span position r + a
    itself = band_mask(blk, span, 0, False, q.device, first=r)
    allowed = band & (real[:, :, None, :] | itself)  # (B, nb, b, span); itself: see restricted_mask
    out = F.scaled_dot_product_attention(
        qb.reshape(bsz * nb, h, blk, dk), spans(k).reshape(bsz * nb, h, span, dk),
        spans(v).reshape(bsz * nb, h, span, v.size(-1)), attn_mask=allowed.view(bsz * nb, 1, blk, span),
        dropout_p=dropout)  # (B·nb, h, b, d_v)
    return out.view(bsz, nb, h, blk, -1).transpose(1, 2).reshape(bsz, h, nb * blk, -1)[:, :, :n]


class KVCache:
    """Keys and values of one attention layer, (B, h, T, d_k) each.

    Self-attention appends the new positions' keys and values at every decoding step; encoder-decoder
    attention assigns the memory's once. (:class:`aiayn.accel.PreallocatedKVCache` writes into a
    buffer instead of concatenating.)
    """

    def __init__(self, k: Tensor | None = None, v: Tensor | None = None) -> None:
        self.k, self.v = k, v
        self.dropped = 0  # positions no longer kept (restricted attention keeps only its window)

    @property
    def length(self) -> int:
        """Positions kept."""
        return 0 if self.k is None else self.k.size(2)

    @property
    def position(self) -> int:
        """Positions seen: the index of the next one."""
        return self.dropped + self.length

    def keep_last(self, n: int) -> None:
        """Forget all but the last ``n`` positions (restricted attention: nothing older is ever attended to)."""
        extra = self.length - n
        if extra > 0:
            self.k, self.v = self.k[:, :, extra:], self.v[:, :, extra:]  # type: ignore[index]
            self.dropped += extra

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the keys/values of new positions (B, h, t, d_k); return all of them so far."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k, self.v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)  # type: ignore[list-item]
        return self.k, self.v  # type: ignore[return-value]

    def select(self, index: Tensor) -> None:
        """Keep rows ``index`` of the batch (beam reordering, dropping finished sentences)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)  # type: ignore[union-attr]


class Rotary(nn.Module):
    """Rotary position embedding (RoPE; Su et al., 2021, "RoFormer"), an option: not in the paper.

    Instead of adding the sinusoids of §3.5 to the embeddings, each query and key is rotated by its
    position: the pair (x_i, x_{i+d_k/2}) turns by the angle pos · base^(−2i/d_k), §3.5's geometric
    progression of frequencies over the head's d_k dimensions. The dot product q·k then depends on the
    positions only through their difference. The pairs
    are the two halves of the head (GPT-NeoX / Llama layout; the paper-style interleaved pairs are
    the same model up to a permutation of W^Q and W^K's rows).
    """

    def __init__(self, d_k: int, base: float = 10000.0) -> None:
        super().__init__()
        self.d_k, self.base = d_k, base
        self.cos: Tensor | None = None  # (P, d_k/2) tables, grown on demand; not saved
        self.sin: Tensor | None = None

    def _tables(self, end: int, device: torch.device) -> tuple[Tensor, Tensor]:
        if self.cos is None or self.cos.size(0) < end or self.cos.device != device:
            n = max(end, 2 * (0 if self.cos is None else self.cos.size(0)), 256)
            inv_freq = self.base ** (-torch.arange(0, self.d_k, 2, dtype=torch.float64) / self.d_k)  # (d_k/2,)
            angle = torch.arange(n, dtype=torch.float64).unsqueeze(1) * inv_freq  # (P, d_k/2)
            self.cos, self.sin = angle.cos().float().to(device), angle.sin().float().to(device)
        return self.cos, self.sin  # type: ignore[return-value]

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x: (B, h, T, d_k) at positions offset … offset + T − 1 → rotated, same shape and dtype."""
        t = x.size(2)
        cos, sin = self._tables(offset + t, x.device)
        cos, sin = cos[offset : offset + t].to(x.dtype), sin[offset : offset + t].to(x.dtype)  # (T, d_k/2)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class AttentionRecord(dict):
    """Attention weights of one forward pass, ``{layer name: (B, h, T_q, T_k)}``, filled by the attention
    layers of the model it was made for while it is the current recorder (see ``recording_attention``)."""

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self._names = names  # id(module) → its name in the model

    def add(self, module: nn.Module, weights: Tensor) -> None:
        name = self._names.get(id(module))
        if name is not None:
            self[name] = weights

    def append(self, module: nn.Module, weights: Tensor) -> None:
        """Weights of further query positions (a recurrent decoder's next step): concatenated along T_q."""
        name = self._names.get(id(module))
        if name is not None:
            self[name] = torch.cat([self[name], weights], dim=2) if name in self else weights


# The recorder of the running call, if any. A context variable, not a module attribute: each thread and
# each asyncio task sees its own, so a call that records weights never changes what another call on the
# same (shared) model computes or records.
ATTENTION_RECORDER: ContextVar[AttentionRecord | None] = ContextVar("aiayn_attention_recorder", default=None)


class MultiHeadAttention(nn.Module):
    """Multi-head attention, §3.2.2: Concat(head_1, …, head_h)·W^O, head_i = Attention(QW_i^Q, KW_i^K, VW_i^V).

    The h per-head projections W_i^Q, W_i^K, W_i^V are stored stacked in one ``in_proj`` of shape
    (3·d_model, d_model), in the same layout as :class:`torch.nn.MultiheadAttention`: self-attention
    projects Q, K and V with one matrix multiply; encoder-decoder attention projects the queries with
    the first third and the memory with the other two.
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True, dropout: float = 0.0,
                 rope: Rotary | None = None, window: int = 0, d_k: int = 0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_heads = d_model, n_heads
        self.d_v = d_model // n_heads  # values per head: the heads concatenate back to d_model
        self.d_k = d_k or self.d_v  # queries and keys per head (smaller: Table 3 row B)
        self.dropout = dropout
        self.window = window  # self-attention restricted to r positions on either side (0: all; Table 1)
        self.rope = rope  # self-attention with rotary positions: rotate q and k by their positions
        qk = n_heads * self.d_k
        self.q_rows, self.kv_rows = slice(0, qk), slice(qk, None)  # rows of in_proj: W^Q; W^K and W^V
        self.in_proj = nn.Linear(d_model, 2 * qk + d_model, bias=bias)  # [W^Q; W^K; W^V] for all heads
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)  # W^O
        self.impl = "sdpa"  # "sdpa" (PyTorch's fused kernel) or "reference" (equation 1 written out)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, -1).transpose(1, 2)  # (B, h, T, d_k or d_v)

    def project(self, x: Tensor, rows: slice) -> Tensor:
        """x · W^T for the rows ``rows`` of the stacked [W^Q; W^K; W^V] (e.g. only W^Q, or only W^K and W^V).

        ``in_proj`` may also be a module that takes the rows itself (the int8 one of :mod:`aiayn.accel.quantize`).
        """
        p = self.in_proj
        if isinstance(p, nn.Linear):
            return self.affine(x, p.weight[rows], None if p.bias is None else p.bias[rows])
        return p(x, rows)

    def affine(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        """x·wᵀ + b (``F.linear``; :mod:`aiayn.accel` may compute it with another kernel)."""
        return F.linear(x, w, b)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of an encoder output (B, S, d) for encoder-decoder attention."""
        k, v = self.project(memory, self.kv_rows).split([self.q_rows.stop, self.d_model], dim=-1)
        return self._heads(k), self._heads(v)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        static_kv: bool = False,
        beams: int = 1,
    ) -> Tensor:
        """x: (B, T, d) queries. Self-attention when ``memory`` is None, else attention over memory (B, S, d).

        ``beams``: query rows per key row (beam search: x is (B·k, T, d), each sentence's k hypotheses
        in consecutive rows, against one copy of its memory, (B, S, d)).

        ``cache``: for self-attention, earlier keys/values are read from it and the new ones appended;
        with ``static_kv`` (encoder-decoder attention) it holds the memory's keys/values, filled on first use
        (``memory`` may then be None: the keys/values were computed elsewhere, e.g. by an exported encoder).
        """
        if memory is None and not static_kv:
            qk = self.q_rows.stop
            q, k, v = (self._heads(t) for t in self.in_proj(x).split([qk, qk, self.d_model], dim=-1))
            if self.rope is not None:
                offset = 0 if cache is None else cache.position  # positions of the new queries and keys
                q, k = self.rope(q, offset), self.rope(k, offset)
            if cache is not None:
                k, v = cache.append(k, v)
        else:
            q = self._heads(self.project(x, self.q_rows))
            if static_kv and cache is not None and cache.k is not None:
                k, v = cache.k, cache.v  # type: ignore[assignment]
            else:
                if memory is None:
                    raise ValueError("encoder-decoder attention needs the memory or a cache holding its keys/values")
                k, v = self.project_memory(memory)
                if static_kv and cache is not None:  # kept for every step: stored per head, contiguous, so
                    k, v = k.contiguous(), v.contiguous()  # a step's products read it in place (no copy)
                    cache.k, cache.v = k, v

        # Beam search keeps one copy of the memory's keys/values per sentence, not per beam: the
        # ``beams`` query rows of a sentence attend to the same keys as one group of queries.
        groups = beams
        if q.size(0) != k.size(0) * groups:
            raise ValueError(f"{q.size(0)} query rows cannot attend to {k.size(0)} key rows with beams={beams}")
        if groups > 1:
            n, h, t_g, dk = k.size(0), q.size(1), q.size(2), q.size(3)
            q = q.view(n, groups, h, t_g, dk).transpose(1, 2).reshape(n, h, groups * t_g, dk)

        t_q, t_k = q.size(2), k.size(2)
        recorder = ATTENTION_RECORDER.get()  # set by recording_attention() for this thread / task only
        p = self.dropout if self.training else 0.0
        local = bool(self.window) and self.local(q, k, mask, recorder is not None)
        if self.window and not local:  # restricted attention as equation (1) under the band (only self-attention)
            mask, causal = restricted_mask(mask, t_q, t_k, self.window, causal, x.device), False
        elif causal and t_q > 1 and (mask is not None or t_q != t_k):
            cm = causal_mask(t_q, t_k, x.device)  # with a cache: the last t_q of t_k positions
            mask = cm if mask is None else mask & cm
            causal = False  # in the mask now
        if local:
            out, weights = local_attention(q, k, v, self.window, causal, None if mask is None else mask[:, 0, 0, :], p), None
        else:
            out, weights = self.kernel(q, k, v, mask, bool(causal and t_q > 1), p, need_weights=recorder is not None)
        if self.window and cache is not None:
            cache.keep_last(self.window)  # the next query looks back r positions at most
        if groups > 1:  # back to one row per beam
            out = out.view(n, h, groups, t_g, -1).transpose(1, 2).reshape(n * groups, h, t_g, -1)
            if weights is not None:
                weights = weights.view(n, h, groups, t_g, t_k).transpose(1, 2).reshape(n * groups, h, t_g, t_k)
        if recorder is not None:
            recorder.add(self, weights.detach())  # type: ignore[union-attr]
        b_, h, t, dk = out.shape
        out = out.transpose(1, 2).reshape(b_, t, h * dk)  # concatenate the heads: (B, T, d)
        return self.out_proj(out)

    def local(self, q: Tensor, k: Tensor, mask: Tensor | None, recording: bool) -> bool:
        """Whether restricted self-attention (``window`` = r > 0) takes :func:`local_attention`, O(n·r): over
        a whole sequence long enough for its blocks, with at most a key-padding mask. Decoding steps, short
        sequences, the reference path and recorded weights take equation (1) / SDPA under
        :func:`restricted_mask`."""
        key_padding = mask is None or (mask.dim() == 4 and mask.shape[1:3] == (1, 1))  # (B, 1, 1, T) or none
        return (self.impl != "reference" and not recording and q.size(2) == k.size(2) and key_padding
                and k.size(2) > 2 * max(self.window, LOCAL_BLOCK) + 2 * self.window)

    def kernel(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, dropout: float,
               need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """softmax(QKᵀ/√d_k + mask)·V for q (B, h, T_q, d_k) against k, v (B, h, T_k, d_k): PyTorch's fused
        SDPA, or equation (1) written out (``impl = "reference"``, whenever the weights are wanted, and
        where :meth:`explicit` says so). ``causal``: a square causal pattern not yet in ``mask``.
        Returns (output, the weights when ``need_weights``, else None)."""
        if self.impl == "reference" or need_weights or self.explicit(q, k, causal, dropout):
            if causal:
                cm = causal_mask(q.size(2), k.size(2), q.device)
                mask = cm if mask is None else mask & cm
            out, weights = attention(q, k, v, mask, dropout, self.training, self.drop)
            return out, weights if need_weights else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal), None

    def explicit(self, q: Tensor, k: Tensor, causal: bool, dropout: float) -> bool:
        """Whether to compute equation (1) as written where SDPA would do: never here (the paper's model);
        :mod:`aiayn.accel` decides per machine."""
        return False

    drop = staticmethod(F.dropout)  # dropout on the attention weights, (x, p, training) → x
