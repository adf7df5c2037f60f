"""Inference copies of a model in lower precision: bf16 weights, or dynamic int8 linear layers.

int8 is PyTorch's own dynamic quantization for CPUs (the fbgemm/oneDNN kernels behind
``torch.ao.nn.quantized.dynamic.Linear``): every linear layer's weight is quantized once, per output
row, to int8 with a symmetric scale; activations are quantized on the fly, per batch, and the
product is accumulated in int32 and returned in float32 (8-bit activations on CPUs with VNNI, 7-bit
otherwise, see :func:`full_range_activations`). Embedding lookups, LayerNorm, softmax and
attention itself stay in float32. Unlike ``torch.ao.quantization.quantize_dynamic`` this also covers
the output projection (tied to the embedding, so not an ``nn.Linear``) and the stacked Q/K/V
projection of encoder-decoder attention, which is applied in two parts (queries; keys and values).
"""

from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ..model import device_of
from ..model.attention import MultiHeadAttention
from ..model.transformer import OutputLayer

ComputeType = Literal["float32", "bfloat16", "float16", "int8"]


@functools.cache
def full_range_activations() -> bool:
    """8-bit activations are safe where the CPU multiplies int8 with VNNI (no int16 saturation); without
    it PyTorch's kernels need 7-bit activations (``reduce_range``), which costs accuracy."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _pack(weight: Tensor, bias: Tensor | None) -> object:
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-8).double()
    zero = torch.zeros(w.size(0), dtype=torch.long)
    with warnings.catch_warnings():
        # PyTorch 2.13 marks quantized tensor *creation* as deprecated (pytorch#184982); the packed
        # fbgemm/oneDNN kernels used here are still its CPU int8 path.
        warnings.simplefilter("ignore", UserWarning)
        qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())


class Int8Linear(nn.Module):
    """y = x·Wᵀ + b with W in int8 (per-row scales) and x quantized dynamically; float32 in and out.

    ``rows``: the row ranges callers may ask for separately (see :meth:`MultiHeadAttention.project`);
    each is packed once.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, rows: tuple[slice, ...] = ()) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self._packed = {self._key(slice(None)): _pack(weight, bias)}
        for r in rows:
            self._packed[self._key(r)] = _pack(weight[r], None if bias is None else bias[r])

    def _key(self, rows: slice) -> tuple[int, int]:
        return rows.indices(self.out_features)[:2]

    def forward(self, x: Tensor, rows: slice = slice(None)) -> Tensor:
        reduce_range = not full_range_activations()
        return torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._packed[self._key(rows)], reduce_range)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) whose linear layers, including the output projection, run in int8."""
    q = copy.deepcopy(model).eval()
    for mod in list(q.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.Linear):
                rows: tuple[slice, ...] = ()
                if isinstance(mod, MultiHeadAttention) and name == "in_proj":
                    rows = (mod.q_rows, mod.kv_rows)  # queries; keys and values (encoder-decoder attention)
                setattr(mod, name, Int8Linear(child.weight, child.bias, rows))
            elif isinstance(child, OutputLayer):
                setattr(mod, name, Int8Linear(child.matrix, child.bias))
    return q


def lower_precision(model: nn.Module, compute_type: ComputeType = "float32") -> nn.Module:
    """The model to decode with: itself (float32), a bf16 or (on a GPU) float16 copy, or (on the CPU) an
    int8 copy."""
    on_cpu = device_of(model).type == "cpu"
    if compute_type == "float32":
        return model.eval()
    if compute_type == "float16":
        if on_cpu:
            raise ValueError("float16 decoding is for GPUs; on the CPU use --compute-type bfloat16 or int8")
        return copy.deepcopy(model).to(torch.float16).eval()
    if compute_type == "int8" and not on_cpu:
        raise ValueError("int8 decoding runs on the CPU (PyTorch's dynamic quantization); on a GPU use "
                         "--compute-type float16 or bfloat16")
    if compute_type == "bfloat16":
        return copy.deepcopy(model).to(torch.bfloat16).eval()
    if compute_type == "int8":
        return quantize_int8(model)
    raise ValueError(f"unknown compute type {compute_type!r} (float32, bfloat16, int8)")
