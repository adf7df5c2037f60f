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
import shutil
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
from ..model import build_model, count_parameters
from ..atomic import write_json_atomic
from ..runtime import keep_freed_memory
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
    threads: int = 0  # torch CPU threads (0 = leave PyTorch's default)
    compile: bool = False
    seed: int = 1234


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
    unknown = sorted(set(raw) - {"model", "train"})
    if unknown:
        raise ConfigError(f"{path or 'config'}: unknown section(s) {', '.join(unknown)}; sections: model, train")
    model_raw = dict(raw.get("model") or {})
    name = model_raw.pop("preset", None)
    model = preset(name, **model_raw) if name else from_dict(ModelConfig, model_raw, where="model")
    train = from_dict(TrainConfig, dict(raw.get("train") or {}), where="train")
    train.adam_betas = tuple(train.adam_betas)  # type: ignore[assignment]
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
        if self.device.type == "cpu":
            keep_freed_memory()  # large per-step tensors reuse the heap instead of fresh pages (aiayn/runtime.py)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
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
    def _trainer_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "elapsed": self.elapsed,
            "best_loss": self.best_loss,
            "torch_rng": torch.get_rng_state(),
            "python_rng": list(random.getstate()[1]),
            "lm_rng": json.dumps(self.lm_rng.bit_generator.state),
        }

    def save(self, metrics: dict[str, float] | None = None) -> Path:
        meta = {"step": self.step, "epoch": self.epoch, "elapsed_seconds": round(self.elapsed, 1), "metrics": metrics or {},
                "train": self.run.to_dict()["train"]}
        path = self.out / "checkpoints" / f"step_{self.step:07d}"
        save_model_dir(path, self.model, self.run.model, self.vocab, meta, trainer_state=self._trainer_state())
        write_json_atomic(self.out / "checkpoints" / "latest.json", {"step": self.step, "path": path.name})
        old = sorted(p for p in (self.out / "checkpoints").glob("step_*") if p.is_dir())
        for p in old[: max(0, len(old) - self.cfg.keep_last)]:
            shutil.rmtree(p)
        return path

    def _maybe_resume(self) -> None:
        latest = self.out / "checkpoints" / "latest.json"
        if not latest.is_file():
            return
        path = self.out / "checkpoints" / json.loads(latest.read_text())["path"]
        from safetensors.torch import load_model

        try:
            load_model(self.model, str(path / "model.safetensors"), strict=True)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path}: cannot resume from this checkpoint ({e})") from None
        st = load_trainer_state(path)
        self.optimizer.load_state_dict(st["optimizer"])
        self.step, self.epoch, self.batch_in_epoch = st["step"], st["epoch"], st["batch_in_epoch"]
        self.elapsed, self.best_loss = st["elapsed"], st["best_loss"]
        torch.set_rng_state(st["torch_rng"])
        random.setstate((3, tuple(st["python_rng"]), None))
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

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(self.run.to_dict(), sort_keys=False))
        self.tb = None
        if self.rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tb"))
            except ImportError:  # TensorBoard is optional
                log.info("tensorboard is not installed: no TensorBoard events")
        log.info("model: %s parameters; device %s; %d process(es)", f"{count_parameters(self.model):,}", self.device, self.world)
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps or None, initial=self.step, disable=None if self.rank == 0 else True,
                   unit="step", dynamic_ncols=True, mininterval=1.0)
        window_tokens, window_start, last_metrics = 0.0, time.perf_counter(), {}
        while not self._done():
            t0 = time.perf_counter()
            s = self.train_step()
            self.elapsed += time.perf_counter() - t0
            window_tokens += s["tokens"]
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == 1:
                dt = time.perf_counter() - window_start
                rate = window_tokens / max(dt, 1e-9)
                bar.set_postfix(loss=f"{s['loss']:.3f}", lr=f"{s['lr']:.2e}", tok_s=f"{rate:,.0f}")
                self._log({"kind": "train", "step": self.step, "epoch": self.epoch, "time": round(self.elapsed, 2),
                           "loss": s["loss"], "nll": s["nll"], "lr": s["lr"], "tokens_per_s": rate})
                window_tokens, window_start = 0.0, time.perf_counter()
            final = self._done()
            if self.step % cfg.eval_every == 0 or final:
                last_metrics = self._eval_and_log()
            if self.step % cfg.save_every == 0 or final:
                if self.rank == 0:
                    self.save(last_metrics)
                window_start = time.perf_counter()  # evaluation and saving are not training time
        bar.close()
        if self.tb is not None:
            self.tb.close()
        return {"step": self.step, "epoch": self.epoch, "elapsed": self.elapsed, **last_metrics}

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
                               {"step": self.step, "metrics": metrics})
        return metrics


def train(run: RunConfig) -> dict[str, Any]:
    """Train (or resume) the run described by ``run``; returns the final metrics."""
    trainer = Trainer(run)
    try:
        return trainer.fit()
    finally:
        if trainer.distributed and dist.is_initialized():
            dist.destroy_process_group()
