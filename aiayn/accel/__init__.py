"""The CPU fast paths, applied to a plain model by one explicit call.

:mod:`aiayn.model` is the paper's model in plain PyTorch (``nn.Linear``, ``nn.Dropout``, SDPA or
equation (1) written out). This package makes it faster on the machine at hand without changing what
it computes (tested: accelerated model = plain model, values and gradients):

* :func:`accelerate` swaps modules for subclasses with the same parameters and state-dict names —
  ``nn.Linear`` → :class:`~aiayn.accel.linear.OneDNNLinear`, ``nn.Dropout`` →
  :class:`~aiayn.accel.dropout.FastDropout`, :class:`~aiayn.model.MultiHeadAttention` →
  :class:`FastAttention`, the output layer → :class:`FastOutputLayer`, for decoding the feed-forward
  network → :class:`FastFeedForward` (products from prepacked weights) and the decoder layers →
  :class:`~aiayn.accel.step.FastDecoderLayer` (a step in fewer operations) — each only where this machine's
  measurement says it pays (:mod:`aiayn.accel.choose`), and returns (and logs) what it changed;
* :func:`for_inference` is the model to decode with at a compute type: float32 (accelerated), a bf16
  copy, or int8 linear layers (:mod:`aiayn.accel.quantize`).

``aiayn train`` (``train.accelerate``, default true) and every decoding path call these; a library user
calls them where they want them.
"""

from __future__ import annotations

import logging

import torch.nn.functional as F
from torch import Tensor, nn

from ..model import device_of
from ..model.attention import KVCache, MultiHeadAttention
from ..model.layers import DecoderLayer, FeedForward
from ..model.transformer import OutputLayer
from .choose import Choices, choices
from .dropout import FastDropout
from .dropout import dropout as fast_dropout
from .linear import OneDNNLinear, inference_linear
from .linear import linear as onednn_linear
from .quantize import ComputeType, lower_precision
from .step import FastDecoderLayer

log = logging.getLogger(__name__)

EXPLICIT_TRAINING_MAX_LEN = 512  # longer key sequences train through SDPA (no T×T scores kept)
SMALL_QUERY_MAX = 8  # "a few queries": beam search's group of a sentence's beams (one query each: SDPA)


class FastAttention(MultiHeadAttention):
    """:class:`MultiHeadAttention` with the CPU kernels this machine prefers (``self.choices``)."""

    choices: Choices
    onednn: bool  # projections through oneDNN (chosen for training or for decoding by accelerate())
    prepack: bool = False  # … from prepacked weights (decoding)

    def affine(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return onednn_linear(x, w, b) if self.onednn else super().affine(x, w, b)

    def project(self, x: Tensor, rows: slice) -> Tensor:
        p = self.in_proj
        if self.prepack and isinstance(p, nn.Linear):
            return inference_linear(x, p.weight, None if p.bias is None else p.bias[rows], rows)
        return super().project(x, rows)

    def explicit(self, q: Tensor, k: Tensor, causal: bool, dropout: float) -> bool:
        """Equation (1)'s products instead of SDPA where this machine's measurement found them faster:
        training over sentence-length keys, or decoding a beam search's group of a few queries."""
        if q.device.type != "cpu":
            return False
        if q.requires_grad:
            return self.choices.explicit_attention(True, q.dtype) and k.size(2) <= EXPLICIT_TRAINING_MAX_LEN
        return (self.choices.explicit_attention(False, q.dtype) and dropout == 0.0 and not causal
                and 1 < q.size(2) <= SMALL_QUERY_MAX)

    def drop(self, x: Tensor, p: float, training: bool) -> Tensor:  # type: ignore[override]
        return fast_dropout(x, p, training) if self.choices.fast_dropout else F.dropout(x, p, training)


class PreallocatedKVCache(KVCache):
    """A self-attention cache that writes new positions into a buffer with room for ``CHUNK`` more, which
    grows (one copy) only when full, so a decoding step costs no concatenation. ``k`` and ``v`` are
    views of the filled part. Equal to :class:`~aiayn.model.attention.KVCache` (tested)."""

    CHUNK = 16

    def __init__(self, k: Tensor | None = None, v: Tensor | None = None) -> None:
        super().__init__(k, v)
        self._kbuf: Tensor | None = None
        self._vbuf: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self._kbuf is None and self.k is not None:  # given from outside: as the plain cache
            return super().append(k, v)
        n, t = self.length, k.size(2)
        if self._kbuf is None or n + t > self._kbuf.size(2):
            b, h, _, dk = k.shape
            cap = n + t + self.CHUNK
            kbuf, vbuf = k.new_empty(b, h, cap, dk), v.new_empty(b, h, cap, v.size(-1))
            if n:
                kbuf[:, :, :n], vbuf[:, :, :n] = self.k, self.v
            self._kbuf, self._vbuf = kbuf, vbuf
        self._kbuf[:, :, n : n + t] = k
        self._vbuf[:, :, n : n + t] = v  # type: ignore[index]
        self.k, self.v = self._kbuf[:, :, : n + t], self._vbuf[:, :, : n + t]  # type: ignore[index]
        return self.k, self.v  # type: ignore[return-value]

    def keep_last(self, n: int) -> None:
        extra = self.length - n
        if self._kbuf is None or extra <= 0:
            return super().keep_last(n)
        self._kbuf[:, :, :n] = self._kbuf[:, :, extra : extra + n].clone()  # the kept positions to the front
        self._vbuf[:, :, :n] = self._vbuf[:, :, extra : extra + n].clone()  # type: ignore[index]
        self.k, self.v = self._kbuf[:, :, :n], self._vbuf[:, :, :n]  # type: ignore[index]
        self.dropped += extra

    def select(self, index: Tensor) -> None:
        if self._kbuf is None:
            return super().select(index)
        n = self.length
        self._kbuf, self._vbuf = self._kbuf.index_select(0, index), self._vbuf.index_select(0, index)  # type: ignore[union-attr]
        self.k, self.v = self._kbuf[:, :, :n], self._vbuf[:, :, :n]


class FastFeedForward(FeedForward):
    """§3.3's FFN with the ReLU applied inside the first product (decoding, from prepacked weights)."""

    prepack = False

    def forward(self, x: Tensor) -> Tensor:
        # (in eval, dropout is the identity; int8 layers keep their own kernels)
        if self.prepack and self.activation is F.relu and not self.training and isinstance(self.w1, nn.Linear):
            return self.w2(inference_linear(x, self.w1.weight, self.w1.bias, relu=True))
        return super().forward(x)


class FastOutputLayer(OutputLayer):
    """The pre-softmax projection through :func:`~aiayn.accel.linear.linear` (``prepack``: by
    :func:`~aiayn.accel.linear.inference_linear`)."""

    prepack = False

    def forward(self, x: Tensor) -> Tensor:
        return inference_linear(x, self.matrix, self.bias) if self.prepack else onednn_linear(x, self.matrix, self.bias)


def accelerate(model: nn.Module, choice: Choices | None = None, training: bool = False) -> list[str]:
    """Swap ``model``'s modules (in place) for their fast CPU versions that ``choice`` (default: this
    machine's measured :func:`~aiayn.accel.choose.choices`) selects for training or for decoding.
    Parameters, buffers and state-dict names stay as they are. Returns one line per kind of module
    changed (also logged). Idempotent."""
    if getattr(model, "_aiayn_accelerated", None) == "training" and not training:
        return []  # a model being trained keeps its training kernels when it also decodes (dev BLEU)
    c = choices() if choice is None else choice
    onednn = c.onednn_linear_training if training else c.onednn_linear_decoding
    changed: dict[str, int] = {}
    prepack = onednn and not training  # decoding reads prepacked weights (oneDNN's blocked layout)

    def count(what: str) -> None:
        changed[what] = changed.get(what, 0) + 1

    def swap(m: nn.Module, cls: type, what: str) -> None:
        if type(m) is not cls:
            m.__class__ = cls
            count(what)

    for m in model.modules():
        if type(m) in (MultiHeadAttention, FastAttention):
            m.choices, m.onednn = c, onednn  # type: ignore[attr-defined]
            if onednn or any(v for k, v in c.__dict__.items() if k.startswith("explicit_")):
                swap(m, FastAttention, "attention → FastAttention (measured CPU kernels)")
        elif type(m) is nn.Linear and onednn:
            swap(m, OneDNNLinear, "nn.Linear → OneDNNLinear (oneDNN float32 GEMM)")
        elif type(m) is nn.Dropout and c.fast_dropout and training:
            swap(m, FastDropout, "nn.Dropout → FastDropout (16-bit random slices)")
        elif type(m) is OutputLayer and onednn:
            swap(m, FastOutputLayer, "output projection → oneDNN")
        elif type(m) is FeedForward and prepack:
            swap(m, FastFeedForward, "feed-forward → FastFeedForward (ReLU inside the product)")
        elif type(m) is DecoderLayer and prepack:
            swap(m, FastDecoderLayer, "decoder layers → FastDecoderLayer (a decoding step in fewer operations)")
        if isinstance(m, (FastAttention, OneDNNLinear, FastOutputLayer, FastFeedForward)) and m.prepack != prepack:
            m.prepack = prepack
            if prepack:
                count("decoding products → prepacked weights")
    model._aiayn_accelerated = "training" if training else "decoding"
    if c.preallocated_cache and getattr(model, "kv_cache", None) is KVCache:
        model.kv_cache = PreallocatedKVCache  # an instance attribute: the class stays the paper's
        changed["decoding caches → PreallocatedKVCache (no concatenation per step)"] = 1
    report = [f"{what}: {n}" for what, n in changed.items()]
    for line in report:
        log.debug("accelerate: %s", line)
    return report


def for_inference(model: nn.Module, compute_type: ComputeType = "float32") -> nn.Module:
    """The model to decode with, on its device: the model itself (float32), a bf16 copy, an int8 copy (CPU)
    or a float16 copy (GPU); on the CPU accelerated for decoding (a model accelerated for training, being
    trained, is used as it is)."""
    m = lower_precision(model, compute_type)
    if device_of(m).type == "cpu":
        accelerate(m)
    return m


__all__ = ["Choices", "choices", "accelerate", "for_inference", "FastAttention", "FastDecoderLayer", "FastFeedForward",
           "FastOutputLayer", "OneDNNLinear", "PreallocatedKVCache", "FastDropout", "EXPLICIT_TRAINING_MAX_LEN"]
