"""The configuration of a training run: the model's shape (:class:`~aiayn.config.ModelConfig`) and how to
train it (:class:`TrainConfig`), read from YAML plus ``--set`` overrides and validated in one place."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config import ConfigError, ModelConfig, from_dict, merge, preset

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """How to train. Defaults are the paper's (§5) where it says something."""

    data: str = ""  # a directory written by `aiayn prepare`
    out: str = "runs/run"
    # optimisation (§5.3)
    lr_schedule: Literal["inverse_sqrt", "cosine", "constant"] = "inverse_sqrt"
    lr_scale: float = 1.0  # inverse_sqrt: multiplies d_model^-0.5 · min(…) (1.0 = the paper)
    lr: float = 1e-3  # peak for cosine / constant
    min_lr: float = 1e-4  # cosine floor
    warmup: int = 4000
    optimizer: Literal["adam", "muon"] = "adam"  # muon: Muon for the layers' matrices, AdamW for the rest
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    clip_norm: float = 0.0  # 0 = no clipping (the paper)
    label_smoothing: float = 0.1  # §5.4
    # batches
    max_tokens: int = 4096  # per batch and side, padding included (translation)
    update_freq: int = 1  # batches accumulated into one update (emulates bigger batches)
    batch_size: int = 12  # language model: blocks per batch
    block_size: int = 0  # language model: tokens per block (0 = model.max_positions)
    # how long
    max_steps: int = 0  # 0 = no limit
    max_epochs: int = 0  # 0 = no limit
    max_minutes: float = 0.0  # budget of training time (evaluation and saving not counted); 0 = no limit
    # evaluation and checkpoints
    eval_every: int = 500
    eval_bleu_sentences: int = 200  # dev sentences translated (greedy) for BLEU at each evaluation
    eval_lm_tokens: int = 0  # language model: validation tokens scored at each eval (0 = all)
    save_every: int = 1000
    keep_last: int = 5
    log_every: int = 50
    # machine
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # autocast dtype
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads, set by `aiayn train` (0 = leave PyTorch's default)
    accelerate: bool = True  # CPU fast paths measured on this machine (aiayn.accel); false = the plain model
    compile: bool = False
    seed: int = 1234

    def validate(self) -> None:
        """Refuse values that would crash later (a division by zero) or lose work (keep_last 0)."""
        for name in ("save_every", "eval_every", "log_every", "update_freq", "keep_last", "max_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "max_epochs", "max_minutes", "block_size", "eval_bleu_sentences", "eval_lm_tokens",
                     "threads", "warmup", "weight_decay", "clip_norm", "min_lr"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must not be negative, got {getattr(self, name)}")
        if self.lr_schedule == "inverse_sqrt" and self.warmup < 1:
            raise ConfigError("train.warmup must be at least 1 with lr_schedule inverse_sqrt (equation 3 divides by it)")
        if not self.lr > 0 or not self.lr_scale > 0:
            raise ConfigError("train.lr and train.lr_scale must be positive")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas) or not self.adam_eps > 0:
            raise ConfigError("train.adam_betas must be two numbers in [0, 1) and train.adam_eps positive")
        if self.max_steps and self.warmup >= self.max_steps:
            log.warning("train.warmup (%d) >= train.max_steps (%d): the learning rate never leaves warm-up",
                        self.warmup, self.max_steps)


@dataclass
class RunConfig:
    model: ModelConfig
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        d = {"model": asdict(self.model), "train": asdict(self.train)}
        d["train"]["adam_betas"] = list(d["train"]["adam_betas"])
        return d


def load_run_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """A run's configuration from a YAML file (``model:`` and ``train:`` sections) plus overrides.

    ``model.preset: NAME`` starts from a named preset; every other key must be a field of
    :class:`~aiayn.config.ModelConfig` / :class:`TrainConfig`.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping with 'model' and 'train' sections")
    raw = merge(raw, overrides or {})
    unknown = sorted(map(str, set(raw) - {"model", "train"}))
    if unknown:
        raise ConfigError(f"{path or 'config'}: unknown section(s) {', '.join(unknown)}; sections: model, train")
    model_raw = dict(raw.get("model") or {})
    name = model_raw.pop("preset", None)
    model = preset(name, **model_raw) if name else from_dict(ModelConfig, model_raw, where="model")
    train = from_dict(TrainConfig, dict(raw.get("train") or {}), where="train")
    train.adam_betas = tuple(train.adam_betas)  # type: ignore[assignment]
    train.validate()
    return RunConfig(model, train)
