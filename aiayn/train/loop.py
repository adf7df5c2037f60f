"""``aiayn train``: the training loop (§5), one process or many (``torchrun``, DDP).

The recipe by default is the paper's: Adam(0.9, 0.98, 1e-9), the inverse-square-root warm-up
schedule, label smoothing 0.1, batches by token count, residual dropout 0.1. What differs on a small
machine (fewer tokens per batch, gradient accumulation to emulate the paper's, a shorter warm-up) is
set in the run's YAML file.

A run directory holds::

    config.yaml          the full configuration this run used
    log.jsonl            one JSON object per logged step / evaluation
    tb/                  TensorBoard events
    checkpoints/step_N/  model directory + trainer_state.pt (the last ``keep_last``)
    best/                the checkpoint with the lowest dev loss
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from ..config import ConfigError, ModelConfig, from_dict, merge, preset
from ..data.batching import ParallelData, collate, lm_batch, token_batches
from ..data.prepare import load_manifest
from ..data.vocab import load_vocab
from ..accel import accelerate
from ..model import build_model, count_parameters
from ..atomic import claim_run_directory, owned_files, write_json_atomic, write_text_atomic
from .checkpoint import CheckpointError, load_trainer_state, save_model_dir
from .optim import cosine_decay, cosine_lr, inverse_sqrt_lr, label_smoothed_loss, make_optimizer

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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_context(device: torch.device, dtype: str):  # noqa: ANN201
    """bf16/fp16 autocast on the device, or nothing for float32."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


class Trainer:
    """Owns the model, optimiser, data order and run directory of one training run."""

    def __init__(self, run: RunConfig, resume: bool = True) -> None:
        self.run, self.cfg = run, run.train
        cfg = self.cfg
        self.distributed = dist.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.device = pick_device(cfg.device)
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        if not cfg.data:
            raise ConfigError("train.data: the prepared data directory is required (see `aiayn prepare`)")
        self.manifest = load_manifest(cfg.data)
        self.kind = self.manifest["kind"]
        self.vocab = load_vocab(cfg.data)
        m = run.model
        if self.kind == "parallel" and m.arch != "encoder-decoder":
            raise ConfigError(f"parallel data needs an encoder-decoder model, not {m.arch}")
        if self.kind == "lm" and m.arch != "decoder-only":
            raise ConfigError(f"language-model data needs a decoder-only model, not {m.arch}")
        if m.vocab_size != len(self.vocab):
            m.vocab_size = len(self.vocab)  # the model's vocabulary is the data's
            m.validate()
        self.out = Path(cfg.out)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.elapsed = 0.0  # training seconds, carried across resumes
        self.best_loss = math.inf

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.model = build_model(m).to(self.device)
        if cfg.accelerate and self.device.type == "cpu":
            for line in accelerate(self.model, training=True):
                log.info("accelerate: %s", line)
        self.optimizer = make_optimizer(self.model, self._lr(1), cfg.adam_betas, cfg.adam_eps, cfg.weight_decay, cfg.optimizer)
        self.lm_rng = np.random.default_rng(cfg.seed)  # the same on every process (see _next_update)
        if self.kind == "parallel":
            self.train_data = ParallelData(cfg.data, "train")
            self.dev_data = ParallelData(cfg.data, "dev") if "dev" in self.manifest["splits"] else None
        else:
            self.train_tokens = np.load(Path(cfg.data) / "train.tokens.npy", mmap_mode="r")
            self.valid_tokens = np.load(Path(cfg.data) / "valid.tokens.npy", mmap_mode="r")
            self.block = cfg.block_size or m.max_positions
            if self.block > m.max_positions and m.positional == "learned":
                raise ConfigError(f"block_size {self.block} exceeds the model's max_positions {m.max_positions}")
        if resume:
            self._maybe_resume()
        self.train_model: nn.Module = self.model
        if cfg.compile:
            self.train_model = torch.compile(self.model)
        if self.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.train_model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    # --- schedule -------------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        c = self.cfg
        if c.lr_schedule == "inverse_sqrt":
            return inverse_sqrt_lr(step, self.run.model.d_model, c.warmup, c.lr_scale)
        if c.lr_schedule == "cosine":
            if c.max_steps:
                return cosine_lr(step, c.lr, c.warmup, c.max_steps, c.min_lr)
            if c.max_minutes:  # a time budget: after warm-up, decay over the fraction of it used so far
                if step <= c.warmup:
                    return c.lr * step / c.warmup
                return cosine_decay(self.elapsed / (c.max_minutes * 60), c.lr, c.min_lr)
            raise ConfigError("lr_schedule cosine needs max_steps or max_minutes to know where it ends")
        return c.lr * min(1.0, step / max(1, c.warmup))

    # --- data -----------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        d = self.train_data
        return token_batches(d.src_lens, d.tgt_lens, self.cfg.max_tokens, self.cfg.seed, epoch)

    def _next_update(self) -> tuple[list[tuple[torch.Tensor, ...]], int]:
        """This process's micro-batches for one optimiser update, and the target tokens of the whole
        update (all processes); advances the data position.

        One update consumes ``update_freq × world`` consecutive batches of the epoch's order; process r
        takes those with index ≡ r (mod world). Every process computes the same order (the same seed),
        so nothing about the data needs to be communicated.
        """
        per_update = self.cfg.update_freq * self.world
        if self.kind == "lm":
            group = [lm_batch(self.train_tokens, self.block, self.cfg.batch_size, self.lm_rng) for _ in range(per_update)]
            return group[self.rank :: self.world], per_update * self.cfg.batch_size * self.block
        if getattr(self, "_batches_epoch", None) != self.epoch:
            self._batches, self._batches_epoch = self._epoch_batches(self.epoch), self.epoch
        if self.batch_in_epoch + per_update > len(self._batches):
            self.epoch += 1
            self.batch_in_epoch = 0
            self._batches, self._batches_epoch = self._epoch_batches(self.epoch), self.epoch
        group = self._batches[self.batch_in_epoch : self.batch_in_epoch + per_update]
        self.batch_in_epoch += per_update
        total = sum(int(self.train_data.tgt_lens[idx].sum()) for idx in group)
        return [collate(self.train_data, idx) for idx in group[self.rank :: self.world]], total

    # --- one update -------------------------------------------------------------------------
    def _loss(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, int]:
        dev = self.device
        with autocast_context(dev, self.cfg.dtype):
            if self.kind == "lm":
                x, y = (t.to(dev, non_blocking=True) for t in batch)
                logits = self.train_model(x)
                target = y
            else:
                src, tgt_in, tgt_out = (t.to(dev, non_blocking=True) for t in batch)
                logits = self.train_model(src, tgt_in)
                target = tgt_out
        loss, nll = label_smoothed_loss(logits, target, self.cfg.label_smoothing)
        return loss, nll, int((target != 0).sum())

    def train_step(self) -> dict[str, float]:
        micro, total_tokens = self._next_update()
        self.model.train()
        lr = self._lr(self.step + 1)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        loss_sum = nll_sum = 0.0
        tokens = 0
        for i, batch in enumerate(micro):
            sync = nullcontext()
            if self.distributed and i < len(micro) - 1:
                sync = self.train_model.no_sync()  # type: ignore[operator]
            with sync:
                loss, nll, n = self._loss(batch)
                # Gradient of (sum of token losses of the update) / (its tokens). DDP averages over
                # processes, hence × world.
                (loss * self.world / total_tokens).backward()
            loss_sum += loss.item()
            nll_sum += nll.item()
            tokens += n
        if self.cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        stats = torch.tensor([loss_sum, nll_sum, float(tokens)], dtype=torch.float64)
        if self.distributed:
            dist.all_reduce(stats)
        return {"loss": stats[0].item() / stats[2].item(), "nll": stats[1].item() / stats[2].item(), "tokens": stats[2].item(), "lr": lr}

    # --- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        out: dict[str, float] = {}
        if self.kind == "lm":
            from ..evaluate import lm_loss

            n = self.cfg.eval_lm_tokens or len(self.valid_tokens)
            res = lm_loss(self.model, np.asarray(self.valid_tokens[: n + 1]), self.block, self.device)
            return {"val_loss": res["val_loss"], "ppl": res["ppl"]}
        if self.dev_data is None:
            return out
        from ..evaluate import corpus_loss, dev_bleu

        out.update(corpus_loss(self.model, self.dev_data, self.cfg.max_tokens, self.device))
        if self.cfg.eval_bleu_sentences > 0:
            out["dev_bleu"] = dev_bleu(self.model, self.vocab, Path(self.cfg.data) / "dev.txt.jsonl", self.cfg.eval_bleu_sentences, self.device)
        return out

    # --- checkpoints ------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        state = {"torch_rng": torch.get_rng_state(), "python_rng": list(random.getstate()[1])}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def _gather_rng(self) -> list[dict[str, Any]]:
        """Every process's random state (dropout masks differ per process), collected on rank 0."""
        mine = self._rng_state()
        if not self.distributed:
            return [mine]
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in mine.items()})
        return everyone

    def _trainer_state(self, rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "elapsed": self.elapsed,
            "best_loss": self.best_loss,
            "torch_rng": torch.get_rng_state(),
            "python_rng": list(random.getstate()[1]),
            "rank_rng": rng or [self._rng_state()],
            "lm_rng": json.dumps(self.lm_rng.bit_generator.state),
        }

    def save(self, metrics: dict[str, float] | None = None) -> Path | None:
        """Write checkpoints/step_N (every process takes part; rank 0 writes), point latest.json at it,
        then remove the checkpoints beyond ``keep_last`` (only ``step_N`` directories aiayn wrote)."""
        rng = self._gather_rng()
        if self.rank != 0:
            return None
        meta = {"step": self.step, "epoch": self.epoch, "elapsed_seconds": round(self.elapsed, 1), "metrics": metrics or {},
                "train": self.run.to_dict()["train"]}
        path = self.out / "checkpoints" / f"step_{self.step:07d}"
        save_model_dir(path, self.model, self.run.model, self.vocab, meta, trainer_state=self._trainer_state(rng), overwrite=True)
        write_json_atomic(self.out / "checkpoints" / "latest.json", {"step": self.step, "path": path.name})
        old = sorted(p for p in (self.out / "checkpoints").glob("step_*")
                     if p.is_dir() and re.fullmatch(r"step_\d{7}", p.name) and owned_files(p, "model directory") is not None)
        for p in old[: max(0, len(old) - self.cfg.keep_last)]:
            if p != path:
                shutil.rmtree(p)
        return path

    def _latest(self) -> Path | None:
        latest = self.out / "checkpoints" / "latest.json"
        if not latest.is_file():
            return None
        try:
            name = json.loads(latest.read_text())["path"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{latest}: damaged ({type(e).__name__}: {e}); point it at a checkpoint, "
                                  'e.g. {"path": "step_0001000"}, or remove it to start over') from None
        path = self.out / "checkpoints" / str(name)
        if not re.fullmatch(r"step_\d{7}", str(name)) or not path.is_dir():
            raise CheckpointError(f"{latest}: points at {name!r}, which is not a checkpoint directory here")
        return path

    def _maybe_resume(self) -> None:
        path = self._latest()
        if path is None:
            return
        from safetensors.torch import load_model

        from .checkpoint import read_config, verify_weights

        try:
            load_model(self.model, str(path / "model.safetensors"), strict=True)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path}: cannot resume from this checkpoint ({e})") from None
        verify_weights(path, read_config(path))
        st = load_trainer_state(path)
        self.optimizer.load_state_dict(st["optimizer"])
        self.step, self.epoch, self.batch_in_epoch = st["step"], st["epoch"], st["batch_in_epoch"]
        self.elapsed, self.best_loss = st["elapsed"], st["best_loss"]
        ranks = st.get("rank_rng") or [{"torch_rng": st["torch_rng"], "python_rng": st["python_rng"]}]
        if len(ranks) != self.world:
            log.warning("%s was saved by %d process(es), resuming with %d: dropout masks will not repeat exactly",
                        path, len(ranks), self.world)
        mine = ranks[self.rank % len(ranks)]
        torch.set_rng_state(mine["torch_rng"])
        random.setstate((3, tuple(mine["python_rng"]), None))
        if self.device.type == "cuda" and "cuda_rng" in mine:
            torch.cuda.set_rng_state(mine["cuda_rng"], self.device)
        self.lm_rng.bit_generator.state = json.loads(st["lm_rng"])
        log.info("resumed from %s (step %d, epoch %d)", path, self.step, self.epoch)

    # --- the loop ---------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{record['kind']}/{k}", v, record["step"])

    def _done(self) -> bool:
        c = self.cfg
        return ((c.max_steps and self.step >= c.max_steps) or (c.max_epochs and self.epoch >= c.max_epochs)
                or (c.max_minutes and self.elapsed >= c.max_minutes * 60)) or False

    def _start_run_directory(self) -> None:
        """Claim ``train.out`` (rank 0): new, empty, or a run aiayn wrote; never a user's folder. On resume,
        cut the log (and TensorBoard's events) back to the checkpoint's step, so that steps trained after
        it and lost with a kill are not recorded twice."""
        claim_run_directory(self.out)
        write_text_atomic(self.out / "config.yaml", yaml.safe_dump(self.run.to_dict(), sort_keys=False))
        log_path = self.out / "log.jsonl"
        if log_path.is_file():
            kept = [line for line in log_path.read_text().splitlines() if _record_step(line) <= self.step]
            write_text_atomic(log_path, "".join(line + "\n" for line in kept))
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events at or after it (written before a kill, after the checkpoint) are dropped.
            self.tb = SummaryWriter(str(self.out / "tb"), purge_step=self.step + 1)
        except ImportError:  # TensorBoard is optional
            log.info("tensorboard is not installed: no TensorBoard events")

    def _agree(self, stop_requested: bool) -> bool:
        """One clock and one decision for all processes: rank 0's training time becomes everyone's (the
        time budget and a time-driven learning rate), and a stop asked of any process stops all of them
        after the same step. Returns whether to stop."""
        if not self.distributed:
            return stop_requested
        t = torch.tensor([self.elapsed if self.rank == 0 else 0.0, float(stop_requested)], dtype=torch.float64)
        dist.all_reduce(t)
        self.elapsed = t[0].item()
        return t[1].item() > 0

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self.tb = None
        if self.rank == 0:
            self._start_run_directory()
        log.info("model: %s parameters; device %s; %d process(es)", f"{count_parameters(self.model):,}", self.device, self.world)
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps or None, initial=self.step, disable=None if self.rank == 0 else True,
                   unit="step", dynamic_ncols=True, mininterval=1.0)
        window_tokens, window_start, last_metrics = 0.0, time.perf_counter(), {}
        self.stopped_by: str | None = None
        with StopSignals() as signals:
            while not self._done():
                t0 = time.perf_counter()
                s = self.train_step()
                self.elapsed += time.perf_counter() - t0
                stop = self._agree(signals.received is not None)
                if stop:
                    self.stopped_by = signals.received or "another process"
                window_tokens += s["tokens"]
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == 1:
                    dt = time.perf_counter() - window_start
                    rate = window_tokens / max(dt, 1e-9)
                    bar.set_postfix(loss=f"{s['loss']:.3f}", lr=f"{s['lr']:.2e}", tok_s=f"{rate:,.0f}")
                    self._log({"kind": "train", "step": self.step, "epoch": self.epoch, "time": round(self.elapsed, 2),
                               "loss": s["loss"], "nll": s["nll"], "lr": s["lr"], "tokens_per_s": rate})
                    window_tokens, window_start = 0.0, time.perf_counter()
                if not math.isfinite(s["loss"]):
                    raise TrainingDiverged(f"step {self.step}: the loss is {s['loss']}; training diverged. The last "
                                           f"checkpoint in {self.out}/checkpoints is intact: lower train.lr (or lr_scale), "
                                           "lengthen train.warmup, or set train.clip_norm, and resume")
                final = self._done() or stop
                if self.step % cfg.eval_every == 0 or (final and not stop):
                    last_metrics = self._eval_and_log()
                if self.step % cfg.save_every == 0 or final:
                    self.save(last_metrics)
                    window_start = time.perf_counter()  # evaluation and saving are not training time
                if stop:
                    break
        bar.close()
        if self.tb is not None:
            self.tb.close()
        return {"step": self.step, "epoch": self.epoch, "elapsed": self.elapsed, **last_metrics,
                **({"stopped_by": self.stopped_by} if self.stopped_by else {})}

    def _eval_and_log(self) -> dict[str, float]:
        if self.rank != 0:
            return {}
        metrics = self.evaluate()
        if metrics:
            self._log({"kind": "eval", "step": self.step, "time": round(self.elapsed, 2), **metrics})
            log.info("step %d: %s", self.step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            key = "dev_loss" if "dev_loss" in metrics else "val_loss"
            if key in metrics and metrics[key] < self.best_loss:
                self.best_loss = metrics[key]
                save_model_dir(self.out / "best", self.model, self.run.model, self.vocab,
                               {"step": self.step, "metrics": metrics}, overwrite=True)
        return metrics


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return -1  # a line cut short by a kill: dropped


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (what schedulers and ``kill`` send) ask training to stop after the
    current step, once it is saved. A second signal stops at once (the last checkpoint stays intact).
    Only in the main thread; elsewhere signals keep their usual behaviour."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        log.warning("%s: stopping after this step, once it is saved (send it again to stop at once)", self.received)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(run: RunConfig) -> dict[str, Any]:
    """Train (or resume) the run described by ``run``; returns the final metrics."""
    trainer = Trainer(run)
    try:
        return trainer.fit()
    finally:
        if trainer.distributed and dist.is_initialized():
            dist.destroy_process_group()
