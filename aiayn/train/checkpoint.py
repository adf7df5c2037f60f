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
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from ..atomic import atomic_directory, check_replaceable, owned_files
from ..config import ConfigError, ModelConfig, from_dict
from ..data.prepare import sha256_file
from ..data.vocab import load_vocab, vocab_manifest
from ..model import build_model

FORMAT = "aiayn-model/1"
CHECKPOINT_NAME = re.compile(r"step_(\d{7})")  # checkpoints/step_0001000: a run's checkpoint at step 1000
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A model or checkpoint directory that cannot be loaded, and why."""


def save_model_dir(
    directory: str | Path,
    model: nn.Module,
    cfg: ModelConfig,
    vocab,  # SentencePieceVocab | CharVocab
    meta: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    half: bool = False,
    overwrite: bool = False,
    move_in: dict[str, Path] | None = None,
) -> Path:
    """Write a model directory atomically. ``half`` stores the weights in float16 (for shipping).
    ``move_in``: directories aiayn already wrote (a sharded optimizer state) that become part of it, by name.

    An existing directory is replaced only when aiayn wrote it and ``overwrite`` is set
    (:func:`aiayn.atomic.check_replaceable`). Weights that are not finite are refused: a NaN written
    today is a model that translates to nothing tomorrow.
    """
    final = Path(directory)
    bad = _non_finite(model)
    if bad:
        raise CheckpointError(f"{final}: not saved: weights are not finite (NaN/inf in {', '.join(bad[:3])}); "
                              "training diverged (lower the learning rate, or use a longer warm-up)")
    with atomic_directory(final, overwrite=overwrite, what="model directory") as tmp:
        m = copy.deepcopy(model).half() if half else model
        save_model(m, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        vocab.save(tmp)
        config = {"format": FORMAT, "model": cfg.__dict__.copy(), "vocab": vocab_manifest(vocab)}
        config.update(meta or {})
        config["weights_sha256"] = sha256_file(tmp / "model.safetensors")  # of these weights, whatever meta says
        (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
        for name, source in (move_in or {}).items():
            os.replace(source, tmp / name)
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
    if not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: no \"model\" section (the model's configuration)")
    return config


def model_arch(config: dict[str, Any]) -> str:
    """The architecture a model directory's config.json names (older ones: encoder-decoder)."""
    return config["model"].get("arch", "encoder-decoder")


def _non_finite(model: nn.Module) -> list[str]:
    """Names of the floating-point weights of ``model`` that hold a NaN or an infinity."""
    return [n for n, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run's checkpoints, oldest first: the ``step_NNNNNNN`` model directories aiayn wrote under
    ``checkpoints/`` (anything else there, a user's or a half-written one, is not one of them)."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir()
                  if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir() and owned_files(p, "model directory") is not None)


def last_checkpoints(run_dir: str | Path, n: int, min_step: int = 0) -> list[Path]:
    """The last ``n`` checkpoints (``step_N`` directories) of a training run from step ``min_step`` on,
    oldest first. Warns when they reach back into the first half of training, where averaging (§6.1)
    pulls the result towards an undertrained model."""
    if n < 1:
        raise CheckpointError(f"the number of checkpoints must be at least 1, got {n}")
    found = run_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir}: no checkpoints under {run_dir}/checkpoints")
    kept = [p for p in found if _step(p) >= min_step][-n:]
    if not kept:
        raise CheckpointError(f"{run_dir}: no checkpoint at step {min_step} or later (the last is {found[-1].name})")
    first, last = _step(kept[0]), _step(kept[-1])
    if len(kept) > 1 and first <= last / 2:
        log.warning("averaging checkpoints from step %d to %d: the earliest are from the first half of training and "
                    "can lower the result; give fewer (--last) or a later --min-step", first, last)
    return kept


def _step(checkpoint: Path) -> int:
    return int(CHECKPOINT_NAME.fullmatch(checkpoint.name).group(1))  # type: ignore[union-attr]


def load_model_dir(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Any, dict[str, Any]]:
    """Load (model in eval mode, vocabulary, config dict) from a model or checkpoint directory, onto ``device``
    (a name is checked by :func:`aiayn.runtime.pick_device`: ``auto``, ``cpu``, ``cuda[:N]``)."""
    from ..runtime import pick_device

    device = pick_device(device) if isinstance(device, str) else device
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
        raise CheckpointError(f"{weights}: weights do not match the configuration "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    verify_weights(d, config)
    bad = _non_finite(model)
    if bad:
        raise CheckpointError(f"{weights}: weights are not finite (NaN/inf in {', '.join(bad[:3])}); this model cannot be used")
    try:
        vocab = load_vocab(d)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{d}: cannot load the vocabulary ({e})") from None
    model.to(device).float().eval()
    model.cfg = cfg
    return model, vocab, config


def verify_weights(directory: str | Path, config: dict[str, Any]) -> None:
    """Check ``model.safetensors`` against the SHA-256 that ``config.json`` recorded when it was saved
    (directories written before the checksum existed have none and are not checked)."""
    expected = config.get("weights_sha256")
    if expected is None:
        return
    path = Path(directory) / "model.safetensors"
    if sha256_file(path) != expected:
        raise CheckpointError(f"{path}: checksum does not match config.json (the file was changed or damaged after saving)")


def load_trainer_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "trainer_state.pt"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no trainer_state.pt (a model directory, not a training checkpoint)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means the same thing to the user
        raise CheckpointError(f"{path}: cannot read trainer state ({type(e).__name__}: {e})") from None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``checkpoints/latest.json`` of a run points at, or None when there is none yet."""
    latest = Path(run_dir) / "checkpoints" / "latest.json"
    if not latest.is_file():
        return None
    try:
        name = json.loads(latest.read_text())["path"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{latest}: damaged ({type(e).__name__}: {e}); point it at a checkpoint, "
                              'e.g. {"path": "step_0001000"}, or remove it to start over') from None
    path = latest.parent / str(name)
    if not CHECKPOINT_NAME.fullmatch(str(name)) or not path.is_dir():
        raise CheckpointError(f"{latest}: points at {name!r}, which is not a checkpoint directory here")
    return path


def restore_checkpoint(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Load a training checkpoint's weights into ``model`` (checksum verified) and return its trainer
    state (optimizer, position, random states), read without executing code."""
    path = Path(path)
    try:
        load_model(model, str(path / "model.safetensors"), strict=True)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot resume from this checkpoint ({e})") from None
    verify_weights(path, read_config(path))
    return load_trainer_state(path)


def average_checkpoints(directories: list[str | Path], out: str | Path, half: bool = False, overwrite: bool = False) -> Path:
    """Average the weights of several checkpoints of one run into a new model directory (§6.1).

    ``out`` may not be one of the checkpoints, nor a directory that holds them.
    """
    if not directories:
        raise CheckpointError("no checkpoints to average")
    target = Path(out).resolve()
    for d in directories:
        src = Path(d).resolve()
        if src == target or target in src.parents:
            raise CheckpointError(f"{out}: the output would replace the checkpoint {d} being averaged; choose another --out")
    check_replaceable(out, overwrite, "model directory")  # before the work, not after it
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
    return save_model_dir(out, model, model.cfg, vocab, meta, half=half, overwrite=overwrite)
