"""The affine map y = x·Wᵀ + b that every projection of the model goes through, with a faster CPU kernel.

PyTorch's CPU ``F.linear`` in float32 calls MKL's sgemm; on this project's AMD Zen 4 CPU that is
2–2.5× slower than oneDNN's float32 GEMM (which PyTorch ships too, and uses for bf16). Measured on
2 cores, torch 2.13: a (2500 × 256)·(256 × 1024) product takes 6.4 ms through MKL and 2.7 ms through
oneDNN; a decoding step's (128 × 256)·(256 × 8000) output projection 3.1 ms and 1.3 ms. On the AMD EPYC
of the 2026-12-07 sessions the gap was much smaller: (1152 × 256)·(256 × 1024) 3.2 ms through MKL, 3.0 ms
through oneDNN (2.8 ms from a prepacked weight), both near 220 GFLOP/s. Both are IEEE float32 with
float32 accumulation (only the summation order differs; tests compare them).

On an Intel Xeon, MKL's float32 is about twice Zen 4's and the advantage may vanish or reverse: whether
:func:`aiayn.accel.accelerate` swaps this kernel in is decided on the machine that runs it, by a
micro-measurement (:mod:`aiayn.accel.choose`).

On a CPU, in float32, outside autocast and outside tracing/compilation, :func:`linear` calls
``torch.ops.mkldnn._linear_pointwise`` (the op TorchInductor uses for CPU linears), with a small
autograd function whose backward is two more oneDNN products. Everywhere else (CUDA, bf16/fp16,
autocast, double precision, ONNX tracing) it is exactly ``F.linear``.

Given the weight in oneDNN's plain layout, every call first copies it into the kernel's blocked layout;
for a decoding step's few rows that copy is much of the work. :func:`inference_linear`, for products
that want no gradient (decoding), keeps one blocked copy per weight (``_reorder_linear_weight``, as
TorchInductor prepacks weights when it freezes a model), made on first use and again whenever the weight
changes; a bf16 copy of a model decodes the same way (``F.linear`` in bf16 goes to oneDNN too, from the
plain layout). Measured on the AMD EPYC of this project (2 threads): the (128 × 256)·(256 × 8000) output
projection of a beam-4 step ran 1.7× faster in float32, 32 rows (greedy) 1.9×; in bf16 1.2× and 1.3×,
with the same results to the bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

_OP = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
AVAILABLE = _OP is not None


def _mm(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    return _OP(x, w, b, "none", [], "")  # type: ignore[misc]


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _mm(x, w, b)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, w = ctx.saved_tensors
        g = g.contiguous()
        g2 = g.reshape(-1, g.size(-1))  # (M, N)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _mm(g, w.t().contiguous())  # (…, N)·(N, K): dL/dx = g·W
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, x.size(-1))
            gw = _mm(g2.t().contiguous(), x2.t().contiguous())  # (N, M)·(M, K): dL/dW = gᵀ·x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


def _fast(x: Tensor, w: Tensor, dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> bool:
    return (AVAILABLE and x.dtype in dtypes and w.dtype == x.dtype and x.device.type == "cpu"
            and x.numel() > 0 and not torch.is_autocast_enabled("cpu") and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling())


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """x (…, in) · wᵀ (in, out) + b → (…, out); the same function as ``F.linear``."""
    if not _fast(x, w):
        return F.linear(x, w, b)
    x = x.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)):
        return _OneDNNLinear.apply(x, w, b)
    return _mm(x, w, b)


PACK_ROWS = 128  # the row count oneDNN is told to expect when it lays out a weight (a beam-4 step's)

# weight → {rows: ((version, address) of the weight when packed, the packed copy)}. Kept beside the
# parameters, not in the modules: state dicts, deep copies and pickles see only the plain weights (a packed
# tensor can be neither copied nor pickled), and a copy is dropped with its weight.
_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # (by identity: tensors do not compare as keys)


def _packed(weight: Tensor, rows: slice) -> Tensor:
    """oneDNN's blocked copy of ``weight[rows]``, made again when the weight has changed since (an optimizer
    step, ``load_state_dict``, any in-place write bumps its version; a new ``.data`` moves its address)."""
    state = (weight._version, weight.data_ptr())
    per_rows = _PACKED.get(weight)
    if per_rows is None:
        per_rows = _PACKED[weight] = {}
    hit = per_rows.get((rows.start, rows.stop))
    if hit is None or hit[0] != state:
        hit = state, torch.ops.mkldnn._reorder_linear_weight(weight.detach()[rows].contiguous(), PACK_ROWS)
        per_rows[rows.start, rows.stop] = hit
    return hit[1]


def inference_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, rows: slice = slice(None),
                     relu: bool = False, add: Tensor | None = None) -> Tensor:
    """x · weight[rows]ᵀ + bias (then max(0, ·) with ``relu``, or + ``add``, a tensor of the result's shape:
    a residual connection), the same function as :func:`linear`; where no gradient is wanted, the product
    reads a prepacked copy of the weight (see the top), and the ReLU or the addition is applied by oneDNN
    as the product's results are written (no second pass). ``bias``: the rows' own."""
    if relu and add is not None:
        raise ValueError("inference_linear: relu or add, not both")
    wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, add))
    if (wants_grad or not _fast(x, weight, (torch.float32, torch.bfloat16)) or weight.is_inference()
            or (add is not None and (add.dtype != x.dtype or add.shape != x.shape[:-1] + weight[rows].shape[:1]))):
        y = linear(x, weight[rows], bias)
        return F.relu(y) if relu else (y if add is None else add + y)
    if add is not None:
        return _OP.binary(x.contiguous(), add.contiguous(), _packed(weight, rows), bias, "add")  # type: ignore[union-attr]
    return _OP(x.contiguous(), _packed(weight, rows), bias, "relu" if relu else "none", [], "")  # type: ignore[misc]


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict names) computed by :func:`linear` (``prepack``: by
    :func:`inference_linear`); an ``nn.Linear`` becomes one by :func:`aiayn.accel.accelerate`."""

    prepack = False  # set by accelerate() for a model that decodes

    def forward(self, x: Tensor) -> Tensor:
        return inference_linear(x, self.weight, self.bias) if self.prepack else linear(x, self.weight, self.bias)
