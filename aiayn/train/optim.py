"""The optimiser, its learning-rate schedule and the label-smoothed loss (§5.3, §5.4)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import PAD_ID


def inverse_sqrt_lr(step: int, d_model: int, warmup: int, scale: float = 1.0) -> float:
    """§5.3, equation (3): lrate = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), times ``scale``.

    Rises linearly for ``warmup`` steps, then decays with the inverse square root of the step.
    Steps count from 1.
    """
    step = max(step, 1)
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def cosine_lr(step: int, peak: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """Linear warm-up to ``peak``, then a cosine decay to ``min_lr`` at ``total`` steps (nanoGPT)."""
    step = max(step, 1)
    if step <= warmup:
        return peak * step / warmup
    return cosine_decay((step - warmup) / max(1, total - warmup), peak, min_lr)


def cosine_decay(progress: float, peak: float, min_lr: float) -> float:
    """From ``peak`` at progress 0 to ``min_lr`` at progress 1 along half a cosine."""
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * progress))


def label_smoothed_loss(logits: Tensor, target: Tensor, smoothing: float, ignore_index: int = PAD_ID) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy with label smoothing ε (§5.4), and the summed plain NLL (for perplexity).

    The smoothed target puts 1 − ε + ε/V on the reference token and ε/V on every other token
    (PyTorch's formulation; tensor2tensor and fairseq spread ε over the V − 1 other tokens), so the
    loss per token is (1 − ε)·NLL + ε·mean over the vocabulary of −log p. Padding positions count for
    nothing. The same value and gradient as ``F.cross_entropy(..., label_smoothing=ε)`` (tested), computed
    by :class:`_SmoothedCrossEntropy` from one log-softmax, with the NLL for free.
    """
    logits = logits.reshape(-1, logits.size(-1))
    return _SmoothedCrossEntropy.apply(logits, target.reshape(-1), smoothing, ignore_index)


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Label-smoothed cross-entropy with a hand-written backward.

    Autograd through ``F.cross_entropy`` keeps a dense (N, V) gradient of the smoothing term and runs
    log-softmax's general backward over it; the NLL for the log needs a second log-softmax. Here the
    forward computes log p once (float32, whatever the logits' dtype) and both sums from it, and the
    backward is the closed form ∂loss/∂logits = p − ε/V − (1 − ε)·onehot(target), row-scaled: one exp
    pass. On 2 CPU cores, (2500 × 8000) logits: 105 → 59 ms (float32), 147 → 91 ms (bf16 logits).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, eps: float, ignore_index: int) -> tuple[Tensor, Tensor]:
        logp = torch.log_softmax(logits, -1, dtype=torch.float32)  # (N, V)
        weight = (target != ignore_index).float()  # (N,) 0 for padding
        index = target.masked_fill(target == ignore_index, 0).unsqueeze(1)  # (N, 1)
        nll = -logp.gather(1, index).squeeze(1)  # (N,)
        loss = (((1.0 - eps) * nll - eps * logp.mean(-1)) * weight).sum()
        nll_sum = (nll * weight).sum()
        ctx.save_for_backward(logp, index, weight)
        ctx.eps, ctx.dtype = eps, logits.dtype
        ctx.mark_non_differentiable(nll_sum)
        return loss, nll_sum

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor) -> tuple[Tensor, None, None, None]:
        logp, index, weight = ctx.saved_tensors
        eps = ctx.eps
        grad = torch.exp(logp).sub_(eps / logp.size(-1))  # p − ε/V
        grad.scatter_add_(1, index, torch.full(index.shape, eps - 1.0, dtype=grad.dtype))  # − (1 − ε) at the target
        grad.mul_((weight * grad_loss).unsqueeze(1))
        return grad.to(ctx.dtype), None, None, None


def make_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam (§5.3: β₁ = 0.9, β₂ = 0.98, ε = 1e-9). With weight decay, AdamW that decays matrices only
    (not biases, LayerNorm gains or embeddings of positions), as nanoGPT does."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if all(p.device.type in ("cuda", "cpu") for p in params) else {}
    if weight_decay <= 0:
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, **fused)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **fused)
