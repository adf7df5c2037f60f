"""Model directories and training checkpoints: safetensors + JSON, written atomically, loaded
without executing code.

A model directory is everything needed to use a model::

    config.json        {"format": "aiayn-model/1", "model": {...ModelConfig...}, "vocab": {...}, "step": …}
    model.safetensors  the weights (a tied matrix stored once)
    spm.model | chars.json   the vocabulary

A training checkpoint is a model directory plus ``trainer_state.pt`` (optimizer moments, RNG states,
position in the data), read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from ..atomic import atomic_directory
from ..config import ConfigError, ModelConfig, from_dict
from ..data.vocab import load_vocab
from ..model import build_model

FORMAT = "aiayn-model/1"


class CheckpointError(ValueError):
    """A model or checkpoint directory that cannot be loaded, and why."""


def save_model_dir(
    directory: str | Path,
    model: nn.Module,
    cfg: ModelConfig,
    vocab,  # noqa: ANN001 - SentencePieceVocab | CharVocab
    meta: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write a model directory atomically. ``half`` stores the weights in float16 (for shipping)."""
    final = Path(directory)
    with atomic_directory(final) as tmp:
        m = copy.deepcopy(model).half() if half else model
        save_model(m, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        vocab.save(tmp)
        config = {"format": FORMAT, "model": cfg.__dict__.copy(), "vocab": {"kind": vocab.kind, "file": vocab.filename, "size": len(vocab)}}
        config.update(meta or {})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
    return final


def read_config(directory: str | Path) -> dict[str, Any]:
    d = Path(directory)
    path = d / "config.json"
    if not d.is_dir():
        raise CheckpointError(f"{d}: no such model directory")
    if not path.is_file():
        raise CheckpointError(f"{d}: not an aiayn model directory (no config.json)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise CheckpointError(f"{path}: not an aiayn model (format {found!r}, expected {FORMAT!r})")
    return config


def load_model_dir(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Any, dict[str, Any]]:
    """Load (model in eval mode, vocabulary, config dict) from a model or checkpoint directory."""
    d = Path(directory)
    config = read_config(d)
    try:
        cfg = from_dict(ModelConfig, config["model"], where=f"{d}/config.json model")
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{d}/config.json: bad model configuration: {e}") from None
    model = build_model(cfg)
    weights = d / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{d}: missing model.safetensors")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{weights}: cannot read weights ({e}); the file is corrupt or not a safetensors file") from None
    if missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not match the configuration (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    try:
        vocab = load_vocab(d)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{d}: cannot load the vocabulary ({e})") from None
    model.to(device).float().eval()
    model.cfg = cfg
    return model, vocab, config


def load_trainer_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "trainer_state.pt"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no trainer_state.pt (a model directory, not a training checkpoint)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"{path}: cannot read trainer state ({type(e).__name__}: {e})") from None


def average_checkpoints(directories: list[str | Path], out: str | Path, half: bool = False) -> Path:
    """Average the weights of several checkpoints of one run into a new model directory (§6.1)."""
    if not directories:
        raise CheckpointError("no checkpoints to average")
    configs = [read_config(d) for d in directories]
    if any(c["model"] != configs[0]["model"] for c in configs):
        raise CheckpointError("checkpoints to average must have the same model configuration")
    total: dict[str, torch.Tensor] = {}
    for d in directories:
        try:
            state = load_file(str(Path(d) / "model.safetensors"))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{d}: cannot read weights ({e})") from None
        for k, v in state.items():
            total[k] = total.get(k, 0) + v.double()
    model, vocab, config = load_model_dir(directories[-1])
    avg = {k: (v / len(directories)).float() for k, v in total.items()}
    # load_state_dict fills tied parameters from whichever of their names the file kept.
    model.load_state_dict({**model.state_dict(), **avg}, strict=True)
    meta = {k: v for k, v in config.items() if k not in ("format", "model", "vocab")}
    meta["averaged"] = [str(d) for d in directories]
    return save_model_dir(out, model, model.cfg, vocab, meta, half=half)
