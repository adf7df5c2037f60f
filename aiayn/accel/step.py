"""One decoding step of a decoder layer in fewer operations (inference only).

A decoding step asks every decoder layer for one new position of every hypothesis: a few rows, so the
products are small and much of a step's time is the operations around them — module calls, views,
dropout that does nothing in evaluation, a residual addition as its own pass. :class:`FastDecoderLayer`
computes the same function as :class:`~aiayn.model.layers.DecoderLayer` (tested equal, pre- and post-LN,
greedy and beam groups, float32, bf16 and int8) for exactly that case, calling the kernels directly:

* every product from its prepacked weight (:func:`~aiayn.accel.linear.inference_linear`), the FFN's ReLU
  (GELU and SiLU: after the product) and each sub-layer's residual addition applied by oneDNN as the
  product's results are written (int8 layers: their own kernel, the ReLU and the addition in place after it);
* the attention kernels the layer's own :meth:`~aiayn.model.MultiHeadAttention.kernel` chooses (SDPA, or
  equation (1) where this machine's measurement says so).

Everything else — training, gradients, several positions at once (the first step of a prefix, teacher
forcing), the first step (the encoder's keys and values are projected then), rotary positions, restricted
attention, recorded attention weights, tracing (ONNX export) and compiling — is the plain layer's forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.attention import ATTENTION_RECORDER, KVCache, MultiHeadAttention
from ..model.layers import DecoderLayer, Residual
from .linear import inference_linear
from .quantize import Int8Linear

ALL = slice(None)


def _linear(x: Tensor, layer: nn.Module, rows: slice = ALL, relu: bool = False, add: Tensor | None = None) -> Tensor:
    """``layer``'s product (its rows ``rows``) of x (N, in), from the prepacked weight (an int8 layer: its own
    kernel, the ReLU or the addition after it, in place)."""
    if isinstance(layer, Int8Linear):
        y = layer(x, rows)
        return y.relu_() if relu else (y if add is None else y.add_(add))
    bias = layer.bias if layer.bias is None or rows == ALL else layer.bias[rows]
    return inference_linear(x, layer.weight, bias, rows, relu=relu, add=add)


def _norm(res: Residual, x: Tensor) -> Tensor:
    n = res.norm
    return F.layer_norm(x, n.normalized_shape, n.weight, n.bias, n.eps)


def _sublayer(res: Residual, x: Tensor, body: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """§3.1's residual sub-layer without its (evaluation-time identity) dropout; ``body(h, residual)`` returns
    residual + Sublayer(h), the addition inside its last product."""
    if res.pre:
        return body(_norm(res, x), x)  # x + Sublayer(LN(x))
    return _norm(res, body(x, x))  # LN(x + Sublayer(x))


_PRODUCTS = (nn.Linear, Int8Linear)  # the layers _linear computes


def _plain(m: MultiHeadAttention) -> bool:
    """Attention whose products _linear computes, not asked for equation (1) everywhere (``impl``)."""
    return m.impl != "reference" and isinstance(m.in_proj, _PRODUCTS) and isinstance(m.out_proj, _PRODUCTS)


class FastDecoderLayer(DecoderLayer):
    """:class:`~aiayn.model.layers.DecoderLayer` whose single-position decoding steps take the fewer
    operations of this module (see the top); set up by :func:`aiayn.accel.accelerate` for decoding."""

    def fast_step(self, x: Tensor, self_cache: KVCache | None, cross_cache: KVCache | None) -> bool:
        """Whether this call is one the fast step computes (see the top); otherwise the plain forward. Asked
        of every layer at every step: the cheap, usually deciding questions first."""
        if (self.training or torch.is_grad_enabled() or x.size(1) != 1 or self_cache is None
                or x.device.type != "cpu" or torch.jit.is_tracing() or torch.compiler.is_compiling()):
            return False
        sa, ca, ffn = self.self_attn, self.cross_attn, self.ffn
        if ca is not None and (cross_cache is None or cross_cache.k is None or not _plain(ca)):
            return False
        return (sa.rope is None and not sa.window and _plain(sa) and isinstance(ffn.w1, _PRODUCTS)
                and isinstance(ffn.w2, _PRODUCTS) and ATTENTION_RECORDER.get() is None)

    def forward(self, x: Tensor, memory: Tensor | None = None, memory_mask: Tensor | None = None,
                self_cache: KVCache | None = None, cross_cache: KVCache | None = None, beams: int = 1) -> Tensor:
        if not self.fast_step(x, self_cache, cross_cache):
            return super().forward(x, memory, memory_mask, self_cache, cross_cache, beams)
        rows, d = x.size(0), x.size(-1)
        x = x.reshape(rows, d)  # (R, d): one position of each of the R rows (hypotheses)
        sa, ca = self.self_attn, self.cross_attn

        def self_attention(h: Tensor, residual: Tensor) -> Tensor:
            qk = sa.q_rows.stop
            q, k, v = (t.view(rows, sa.n_heads, 1, -1) for t in _linear(h, sa.in_proj).split([qk, qk, sa.d_model], -1))
            k, v = self_cache.append(k, v)  # type: ignore[union-attr]  # (R, h, T, d_k): all positions so far
            out, _ = sa.kernel(q, k, v, None, False, 0.0)  # (R, h, 1, d_v): one query sees every earlier key
            return _linear(out.reshape(rows, d), sa.out_proj, add=residual)

        def cross_attention(h: Tensor, residual: Tensor) -> Tensor:
            k, v = cross_cache.k, cross_cache.v  # type: ignore[union-attr]  # (B, h, S, d_k): the memory's, per sentence
            # a sentence's beams attend to its memory as one group of queries
            q = _linear(h, ca.in_proj, ca.q_rows).view(k.size(0), beams, ca.n_heads, -1).transpose(1, 2)
            out, _ = ca.kernel(q, k, v, memory_mask, False, 0.0)  # (B, h, beams, d_v)
            return _linear(out.transpose(1, 2).reshape(rows, d), ca.out_proj, add=residual)

        def ffn(h: Tensor, residual: Tensor) -> Tensor:
            f = self.ffn
            inner = _linear(h, f.w1, relu=True) if f.activation is F.relu else f.activation(_linear(h, f.w1))
            return _linear(inner, f.w2, add=residual)

        x = _sublayer(self.res_self, x, self_attention)
        if ca is not None:
            x = _sublayer(self.res_cross, x, cross_attention)  # type: ignore[arg-type]
        return _sublayer(self.res_ffn, x, ffn).view(rows, 1, d)


__all__ = ["FastDecoderLayer"]
