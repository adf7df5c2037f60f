"""Fully sharded data parallelism (``train.parallel: fsdp``): each of N processes keeps 1/N of the weights,
gradients and Adam moments, so a model whose training state does not fit one device's memory still trains.

PyTorch's FSDP2 does the work (:func:`torch.distributed.fsdp.fully_shard`): every Transformer layer is
one unit (its weights are gathered just before its forward and backward and freed after), the rest of the
model (embeddings, the tied output layer, final norms) is the root unit. Gradients are reduce-scattered,
averaged over processes as DDP averages them, so an FSDP run makes DDP's updates (tested within float
tolerance). With ``train.dtype`` bfloat16/float16 the gathered weights are cast for compute and the
gradients reduced in float32 (:class:`~torch.distributed.fsdp.MixedPrecisionPolicy`); the sharded master
weights and the optimizer stay float32.

Checkpoints: the weights are gathered to rank 0 and written as the usual ``model.safetensors`` (so every
other command, averaging, export and resuming under DDP read it as they read any checkpoint); the Adam
moments are written sharded, each process its own part, through :mod:`torch.distributed.checkpoint` into
``optimizer/`` inside the checkpoint. DCP reshards on load, so such a checkpoint resumes under FSDP with
another number of processes, under DDP, or in one process; a DDP checkpoint (one ``trainer_state.pt``
with the whole optimizer) resumes under FSDP through :func:`shard_optimizer_state`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

OPTIMIZER_DIR = "optimizer"  # inside a checkpoint written under FSDP: the sharded Adam moments (DCP)
_FULL = StateDictOptions(full_state_dict=True)


def _layers(model: nn.Module) -> list[nn.Module]:
    """The units FSDP gathers one at a time: the elements of the model's stacks of layers (``nn.ModuleList``:
    the Transformer layers; a recurrent model has none and is one unit)."""
    return [layer for m in model.modules() if isinstance(m, nn.ModuleList) for layer in m]


def shard(model: nn.Module, dtype: str) -> int:
    """Shard ``model`` in place over the default process group (every process calls it); returns the number
    of units, the root included. ``dtype``: ``train.dtype``, the precision of compute and gathered weights."""
    policy = MixedPrecisionPolicy()
    if dtype != "float32":
        policy = MixedPrecisionPolicy(param_dtype=getattr(torch, dtype), reduce_dtype=torch.float32)
    layers = _layers(model)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return len(layers) + 1


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights of a sharded model, on rank 0's CPU (every process calls it; the others get {})."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Every process writes its part of the optimizer state into ``directory`` (a collective)."""
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(directory))


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Read a sharded optimizer state (written by :func:`save_optimizer` under any number of processes) into
    ``optimizer``, sharded or not: DCP gives each process the part its parameters hold."""
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(directory))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def whole_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An unsharded model's optimizer state keyed by parameter names (what :func:`shard_optimizer_state`
    takes): taken before sharding, when a DDP checkpoint resumes under FSDP."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def shard_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Give a sharded model's ``optimizer`` its part of a whole state from :func:`whole_optimizer_state`."""
    set_optimizer_state_dict(model, optimizer, state, options=_FULL)


def agree_on_path(path: Path) -> Path:
    """Rank 0's choice of a path, for every process (a directory all of them write into)."""
    chosen = [str(path)]
    dist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0])
