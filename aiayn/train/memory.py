"""Activation checkpointing (``train.activation_checkpointing``): trade compute for memory.

Each encoder and decoder layer keeps only its input during the forward pass and runs again during the
backward pass to rebuild what its gradient needs (``torch.utils.checkpoint``, non-reentrant, with the
random state restored so dropout draws the same masks). The model's parameters, outputs and gradients
are unchanged (tested); memory for activations drops from one set per layer to one per stack, for
roughly one more forward pass of compute.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..model.attention import KVCache
from ..model.layers import DecoderLayer, EncoderLayer


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():  # evaluation, decoding with caches: run as it is
        return forward(*args, **kwargs)
    if any(isinstance(a, KVCache) for a in (*args, *kwargs.values())):
        return forward(*args, **kwargs)  # caches change during forward: recomputing would append twice
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_activations(model: nn.Module) -> int:
    """Recompute every Transformer layer in the backward pass; returns how many layers (0: a model with no
    such layers, e.g. a recurrent one). Idempotent."""
    n = 0
    for m in model.modules():
        if isinstance(m, (EncoderLayer, DecoderLayer)) and not getattr(m, "_aiayn_checkpointed", False):
            m.forward = functools.partial(_checkpointed, m.forward)  # an instance attribute: the class is untouched
            m._aiayn_checkpointed = True
            n += 1
    return n
