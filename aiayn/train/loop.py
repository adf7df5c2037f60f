"""``aiayn train``: the training loop (§5), one process or many (``torchrun``, DDP).

The recipe by default is the paper's: Adam(0.9, 0.98, 1e-9), the inverse-square-root warm-up
schedule, label smoothing 0.1, batches by token count, residual dropout 0.1. What differs on a small
machine (fewer tokens per batch, gradient accumulation to emulate the paper's, a shorter warm-up) is
set in the run's YAML file.

The rooms: :mod:`.config` (what to train, validated), :mod:`.process` (device, processes, signals),
:mod:`.feed` (the batches of each update), :mod:`.checkpoint` (saving and resuming), :mod:`.runlog`
(log.jsonl and TensorBoard), :mod:`.optim` (optimizer, schedule, loss); this module is the loop.

A run directory holds::

    config.yaml          the full configuration this run used
    log.jsonl            one JSON object per logged step / evaluation
    tb/                  TensorBoard events
    checkpoints/step_N/  model directory + trainer_state.pt (the last ``keep_last``)
    best/                the checkpoint with the lowest dev loss
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..accel import accelerate
from ..atomic import write_json_atomic
from ..config import (
    HIGHER_IS_BETTER,
    LANGUAGE_MODELS,
    MASKED_LANGUAGE_MODELS,
    TRANSLATION_MODELS,
    ConfigError,
    RunConfig,
    TrainConfig,
    load_run_config,
)
from ..data.prepare import load_manifest
from ..data.vocab import load_vocab, same_vocabulary, target_size
from ..model import build_model, count_parameters
from .checkpoint import (
    CheckpointError,
    checkpoint_name,
    latest_checkpoint,
    restore_checkpoint,
    run_checkpoints,
    save_model_dir,
)
from .feed import Feed
from .optim import cosine_decay, cosine_lr, inverse_sqrt_lr, label_smoothed_loss, make_optimizer
from .process import Processes, StopSignals, autocast_context, pick_device
from .runlog import RunLog

log = logging.getLogger(__name__)


class Trainer:
    """Owns the model, optimiser, data position and run directory of one training run."""

    def __init__(self, run: RunConfig, resume: bool = True) -> None:
        self.run, self.cfg = run, run.train
        cfg = self.cfg
        self.procs = Processes.start(cfg.device)
        self.distributed, self.rank, self.world, self.device = (self.procs.distributed, self.procs.rank,
                                                                  self.procs.world, self.procs.device)
        if not cfg.data:
            raise ConfigError("train.data: the prepared data directory is required (see `aiayn prepare`)")
        manifest = load_manifest(cfg.data)
        self.kind = manifest["kind"]
        self.vocab = load_vocab(cfg.data)
        if cfg.init_from:
            _check_same_vocabulary(cfg.init_from, self.vocab, cfg.data)
        m = run.model
        if self.kind == "parallel" and m.arch not in TRANSLATION_MODELS:
            raise ConfigError(f"parallel data needs a translation model ({', '.join(TRANSLATION_MODELS)}), not {m.arch}")
        if self.kind == "lm" and m.arch not in LANGUAGE_MODELS + MASKED_LANGUAGE_MODELS:
            raise ConfigError(f"language-model data needs a language model "
                              f"({', '.join(LANGUAGE_MODELS + MASKED_LANGUAGE_MODELS)}), not {m.arch}")
        self.labels: list[str] = manifest.get("labels", [])
        self.model_meta = {"labels": self.labels} if self.labels else {}  # what every saved model directory carries
        if self.kind == "classify":
            if m.arch != "encoder-only":
                raise ConfigError(f"classification data needs an encoder-only model (model.arch: encoder-only), not {m.arch}")
            if m.n_classes != len(self.labels):
                m.n_classes = len(self.labels)  # the head's size is the data's number of labels
                m.validate()
        separate = self.vocab.kind == "separate"
        if separate and m.tie == "three_way":
            raise ConfigError(f"{cfg.data} has separate source and target vocabularies: §3.4's three-way tying needs one "
                              "shared vocabulary; set model.tie: two_way (target embedding = output layer) or none")
        tgt_size = target_size(self.vocab) if separate else None
        if m.vocab_size != len(self.vocab) or m.tgt_vocab_size != tgt_size:
            m.vocab_size, m.tgt_vocab_size = len(self.vocab), tgt_size  # the model's vocabularies are the data's
            m.validate()
        self.out = Path(cfg.out)
        self.step = 0
        self.elapsed = 0.0  # training seconds, carried across resumes
        self.best_loss = math.inf  # the best dev value of train.best_by (lower is better: BLEU is negated)
        self.evals_since_best = 0  # evaluations without improving it (early stopping: train.patience)

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.model = build_model(m).to(self.device)
        # FSDP (train.parallel: fsdp) shards the model over the processes; with one process there is nothing to shard.
        self.fsdp = cfg.parallel == "fsdp" and self.distributed
        if cfg.parallel == "fsdp" and not self.distributed:
            log.info("train.parallel: fsdp with one process: nothing to shard, training the whole model here")
        if cfg.accelerate and self.device.type == "cpu" and not self.fsdp:  # the fast paths swap modules FSDP shards
            for line in accelerate(self.model, training=True):
                log.info("accelerate: %s", line)
        self.optimizer = make_optimizer(self.model, self._lr(1), cfg.adam_betas, cfg.adam_eps, cfg.weight_decay, cfg.optimizer)
        # float16 has a narrow range: the loss is scaled up before backward so that small gradients do not
        # underflow, and an update whose gradients overflowed is skipped (the scale then halves).
        # bfloat16 has float32's range and needs none of this.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.dtype == "float16")
        self._whole: tuple[nn.Module | None, int] = (None, -1)  # FSDP: the gathered whole model, and its step
        self.skipped_updates = 0
        self.feed = Feed(run, self.kind, manifest["splits"])
        resuming = resume and latest_checkpoint(self.out) is not None
        if cfg.init_from and not resuming:  # a resumed fine-tuning run continues from its own checkpoint
            self._init_from(cfg.init_from)
        sharded_optimizer = self._maybe_resume() if resume else None
        if cfg.activation_checkpointing:
            from .memory import checkpoint_activations

            log.info("activation checkpointing: %d layers recomputed in the backward pass", checkpoint_activations(self.model))
        if self.fsdp:
            self._shard(carry_optimizer=resuming and sharded_optimizer is None)
        if sharded_optimizer is not None:  # written under FSDP: each process reads its part (any parallelism now)
            from .sharding import load_optimizer

            load_optimizer(self.model, self.optimizer, sharded_optimizer)
        self.train_model: nn.Module = self.model
        if cfg.compile:
            self.train_model = torch.compile(self.model)
        if self.distributed and not self.fsdp:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.train_model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    def _shard(self, carry_optimizer: bool) -> None:
        """FSDP: shard the (initialised or resumed) model over the processes and give it a new optimizer over
        the shards; ``carry_optimizer``: the optimizer was resumed whole (a DDP checkpoint) and is carried over."""
        from .sharding import shard, shard_optimizer_state, whole_optimizer_state

        whole = whole_optimizer_state(self.model, self.optimizer) if carry_optimizer else None
        units = shard(self.model, self.cfg.dtype)
        log.info("fsdp: the model is sharded over %d processes in %d units", self.world, units)
        c = self.cfg
        self.optimizer = make_optimizer(self.model, self._lr(1), c.adam_betas, c.adam_eps, c.weight_decay, c.optimizer)
        if whole is not None:
            shard_optimizer_state(self.model, self.optimizer, whole)

    @property
    def epoch(self) -> int:
        return self.feed.epoch

    def _init_from(self, directory: str) -> None:
        """Fine-tuning: start from the weights of a model directory (verified on load), with this run's fresh
        optimizer and schedule."""
        from .checkpoint import load_model_dir

        source, _, _ = load_model_dir(directory)
        weights = source.state_dict()
        if self.kind == "classify" and source.cfg.n_classes == 0:  # a pretrained encoder: the head starts fresh
            weights.update({k: v for k, v in self.model.state_dict().items() if k.startswith("classifier.")})
            log.info("the classification head (%d classes) starts from random weights", self.run.model.n_classes)
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise ConfigError(f"train.init_from: {directory}'s weights do not fit this model ({first})") from None
        log.info("initialised from %s (fine-tuning: fresh optimizer and learning-rate schedule)", directory)

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

    # --- one update -------------------------------------------------------------------------
    def _loss(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, int]:
        dev = self.device
        with autocast_context(dev, self.cfg.dtype):
            if self.kind == "classify":  # one label per sentence: the loss and its count are per sentence
                x, y = (t.to(dev, non_blocking=True) for t in batch)
                logits = self.train_model(x, classify=True)  # (B, n_classes)
                loss, nll = label_smoothed_loss(logits, y, self.cfg.label_smoothing, ignore_index=-100)
                return loss, nll, int(y.numel())
            if self.kind == "lm":
                x, y = (t.to(dev, non_blocking=True) for t in batch)
                if self.run.model.arch in MASKED_LANGUAGE_MODELS:  # x corrupted, y the originals where chosen
                    logits = self.train_model(x, mlm=True)
                else:
                    logits = self.train_model(x)
                target = y
            else:
                src, tgt_in, tgt_out = (t.to(dev, non_blocking=True) for t in batch)
                logits = self.train_model(src, tgt_in)
                target = tgt_out
        loss, nll = label_smoothed_loss(logits, target, self.cfg.label_smoothing)
        return loss, nll, int((target != 0).sum())

    def train_step(self) -> dict[str, float]:
        self._whole = (None, -1)  # FSDP: no whole copy of the model is kept while training
        micro, total_tokens = self.feed.next_update(self.rank, self.world)
        self.model.train()
        lr = self._lr(self.step + 1)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        loss_sum = nll_sum = 0.0
        tokens = 0
        for i, batch in enumerate(micro):
            sync = nullcontext()
            last = i == len(micro) - 1
            if self.fsdp:  # gradients of the update's earlier batches accumulate unsharded, reduced once at the end
                self.model.set_requires_gradient_sync(last)  # type: ignore[operator]
            elif self.distributed and not last:
                sync = self.train_model.no_sync()  # type: ignore[operator]
            with sync:
                loss, nll, n = self._loss(batch)
                # Gradient of (sum of token losses of the update) / (its tokens). DDP and FSDP average
                # over processes, hence × world.
                self.scaler.scale(loss * self.world / total_tokens).backward()
            loss_sum += loss.item()
            nll_sum += nll.item()
            tokens += n
        if self.cfg.clip_norm > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.scaler.step(self.optimizer)  # without float16: optimizer.step()
        self.scaler.update()
        if self.scaler.is_enabled() and self.scaler.get_scale() < scale:  # inf/nan gradients: the update was skipped
            self.skipped_updates += 1
            log.warning("step %d: float16 gradients overflowed; update skipped, loss scale now %g", self.step + 1,
                        self.scaler.get_scale())
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        stats = torch.tensor([loss_sum, nll_sum, float(tokens)], dtype=torch.float64)
        if self.distributed:
            dist.all_reduce(stats)
        return {"loss": stats[0].item() / stats[2].item(), "nll": stats[1].item() / stats[2].item(), "tokens": stats[2].item(),
                "lr": lr}

    # --- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module | None = None) -> dict[str, float]:
        """The dev metrics of ``model`` (the whole model, :meth:`whole_model`; default: the model trained): those
        of the main dev set (``val_loss`` …), then of each ``--more-dev`` set NAME (``val_loss@NAME`` …)."""
        model = self.model if model is None else model
        model.eval()
        out: dict[str, float] = {}
        for name, data in self.feed.dev_sets():
            at = f"@{name}" if name else ""
            out.update({k + at: v for k, v in self._dev_metrics(model, name, data).items()})
        return out

    def _dev_metrics(self, model: nn.Module, name: str, data: Any) -> dict[str, float]:
        """The metrics of one dev set: loss and perplexity, with accuracy (classify) or greedy BLEU (translation)."""
        from ..evaluate import classification_validation, corpus_loss, greedy_bleu, lm_validation

        if self.kind == "lm":
            return lm_validation(model, data, self.feed.block, self.cfg.eval_lm_tokens, self.device)
        if self.kind == "classify":
            return classification_validation(model, data, self.cfg.max_tokens, self.device)
        out = corpus_loss(model, data, self.cfg.max_tokens, self.device)
        if self.cfg.eval_bleu_sentences > 0:
            split = f"dev.{name}" if name else "dev"
            out["val_bleu"] = greedy_bleu(model, self.vocab, Path(self.cfg.data) / f"{split}.txt.jsonl",
                                          self.cfg.eval_bleu_sentences, self.device, self.cfg.eval_beam)
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

    def _trainer_state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        """What resuming needs besides the weights; ``rng``: every process's random state (its rank's)."""
        state = {"step": self.step, "elapsed": self.elapsed, "best_loss": self.best_loss,
                 "evals_since_best": self.evals_since_best, "rank_rng": rng, **self.feed.state_dict()}
        if not self.fsdp:  # under FSDP each process writes its part of the optimizer (sharding.save_optimizer)
            state["optimizer"] = self.optimizer.state_dict()
        if self.scaler.is_enabled():
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def whole_model(self) -> nn.Module | None:
        """The model with all its weights, on rank 0 (None elsewhere): under FSDP the shards gathered into a
        plain copy (every process must call this), otherwise the model itself."""
        if not self.fsdp:
            return self.model
        if self._whole[1] == self.step:  # evaluation and saving at the same step gather once
            return self._whole[0]
        from .sharding import full_weights

        weights = full_weights(self.model)
        whole = None
        if self.rank == 0:
            with torch.random.fork_rng(devices=[]):  # building initialises weights: keep the training's random state
                whole = build_model(self.run.model)
            whole.load_state_dict(weights)
            whole.to(self.device)
        self._whole = (whole, self.step)
        return whole

    def save(self, metrics: dict[str, float] | None = None) -> Path | None:
        """Write checkpoints/step_N (every process takes part; rank 0 writes), point latest.json at it,
        then remove the checkpoints beyond ``keep_last`` (only ``step_N`` directories aiayn wrote)."""
        rng = self._gather_rng()
        path = self.out / "checkpoints" / checkpoint_name(self.step)
        model, extra = self.whole_model(), {}
        if self.fsdp:  # every process writes its part of the optimizer, beside where rank 0 assembles the checkpoint
            from .sharding import OPTIMIZER_DIR, agree_on_path, save_optimizer

            staging = agree_on_path(path.parent / f".{path.name}.tmp-{os.getpid()}-{OPTIMIZER_DIR}")
            save_optimizer(self.model, self.optimizer, staging)
            extra[OPTIMIZER_DIR] = staging
        if self.rank != 0:
            return None
        meta = {"step": self.step, "epoch": self.epoch, "elapsed_seconds": round(self.elapsed, 1), "metrics": metrics or {},
                "train": self.run.to_dict()["train"], **self.model_meta}
        save_model_dir(path, model, self.run.model, self.vocab, meta, trainer_state=self._trainer_state(rng), overwrite=True,
                       move_in=extra)
        write_json_atomic(self.out / "checkpoints" / "latest.json", {"step": self.step, "path": path.name})
        old = run_checkpoints(self.out)
        for p in old[: max(0, len(old) - self.cfg.keep_last)]:
            if p != path:
                shutil.rmtree(p)
        return path

    def _maybe_resume(self) -> Path | None:
        """Resume from the run's latest checkpoint, if any (before sharding: the weights are read whole). Returns
        the directory of a sharded optimizer state (a checkpoint written under FSDP), read after sharding."""
        path = latest_checkpoint(self.out)
        if path is None:
            return None
        st = restore_checkpoint(path, self.model)
        sharded = None
        if "optimizer" in st:
            self.optimizer.load_state_dict(st["optimizer"])
        else:
            from .sharding import OPTIMIZER_DIR

            sharded = path / OPTIMIZER_DIR
            if not sharded.is_dir():
                raise CheckpointError(f"{path}: no optimizer state (neither in trainer_state.pt nor in {OPTIMIZER_DIR}/)")
        if self.scaler.is_enabled() and "grad_scaler" in st:
            self.scaler.load_state_dict(st["grad_scaler"])
        self.feed.load_state_dict(st)
        self.step, self.elapsed, self.best_loss = st["step"], st["elapsed"], st["best_loss"]
        self.evals_since_best = st.get("evals_since_best", 0)
        # Checkpoints written before rank_rng kept one process's state at the top level.
        ranks = st.get("rank_rng") or [{"torch_rng": st["torch_rng"], "python_rng": st["python_rng"]}]
        if len(ranks) != self.world:
            log.warning("%s was saved by %d process(es), resuming with %d: dropout masks will not repeat exactly",
                        path, len(ranks), self.world)
        mine = ranks[self.rank % len(ranks)]
        torch.set_rng_state(mine["torch_rng"])
        random.setstate((3, tuple(mine["python_rng"]), None))
        if self.device.type == "cuda" and "cuda_rng" in mine:
            torch.cuda.set_rng_state(mine["cuda_rng"], self.device)
        log.info("resumed from %s (step %d, epoch %d)", path, self.step, self.epoch)
        return sharded

    # --- the loop ---------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.runlog is not None:
            self.runlog.write(record)

    def _done(self) -> bool:
        c = self.cfg
        return ((c.max_steps and self.step >= c.max_steps) or (c.max_epochs and self.epoch >= c.max_epochs)
                or (c.max_minutes and self.elapsed >= c.max_minutes * 60)) or False

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self.runlog = RunLog(self.out, self.run.to_dict(), self.step) if self.rank == 0 else None
        log.info("model: %s parameters; device %s; %d process(es)", f"{count_parameters(self.model):,}", self.device, self.world)
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps or None, initial=self.step, disable=None if self.rank == 0 else True,
                   unit="step", dynamic_ncols=True, mininterval=1.0)
        # tokens/s over the training steps of the logging window (evaluation and saving are not training time)
        window_tokens, window_seconds, last_metrics = 0.0, 0.0, {}
        self.stopped_by: str | None = None
        from tqdm.contrib.logging import logging_redirect_tqdm

        # In a terminal, log lines are printed above the progress bar, not glued onto it; without one
        # (a pipe, a file, a scheduler's log) there is no bar and one line per log_every steps instead.
        with StopSignals() as signals, logging_redirect_tqdm():
            while not self._done():
                t0 = time.perf_counter()
                s = self.train_step()
                step_seconds = time.perf_counter() - t0
                self.elapsed += step_seconds
                window_seconds += step_seconds
                self.elapsed, stop = self.procs.agree(self.elapsed, signals.received is not None)
                if stop:
                    self.stopped_by = signals.received or "another process"
                window_tokens += s["tokens"]
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == 1:
                    rate = window_tokens / max(window_seconds, 1e-9)
                    bar.set_postfix(loss=f"{s['loss']:.3f}", lr=f"{s['lr']:.2e}", tok_s=f"{rate:,.0f}")
                    if bar.disable and self.rank == 0:
                        log.info("step %d: loss %.4f, lr %.3g, %s tokens/s", self.step, s["loss"], s["lr"], f"{rate:,.0f}")
                    self._log({"kind": "train", "step": self.step, "epoch": self.epoch, "time": round(self.elapsed, 2),
                               "loss": s["loss"], "nll": s["nll"], "lr": s["lr"], "tokens_per_s": rate})
                    window_tokens, window_seconds = 0.0, 0.0
                if not math.isfinite(s["loss"]):
                    raise TrainingDiverged(f"step {self.step}: the loss is {s['loss']}; training diverged. The last "
                                           f"checkpoint in {self.out}/checkpoints is intact: lower train.lr (or lr_scale), "
                                           "lengthen train.warmup, or set train.clip_norm, and resume")
                final = self._done() or stop
                if self.step % cfg.eval_every == 0 or (final and not stop):
                    last_metrics = self._eval_and_log()
                    if cfg.patience:  # rank 0 decides; every process stops after the same step
                        _, patience_out = self.procs.agree(self.elapsed, self.evals_since_best >= cfg.patience)
                        if patience_out and not final:
                            log.info("step %d: %s has not improved for %d evaluations: stopping (train.patience)",
                                     self.step, cfg.best_by, self.evals_since_best)
                            self.stopped_by, stop, final = "patience", True, True
                if self.step % cfg.save_every == 0 or final:
                    self.save(last_metrics)
                if stop:
                    break
        bar.close()
        if self.runlog is not None:
            self.runlog.close()
        return {"step": self.step, "epoch": self.epoch, "elapsed": self.elapsed, **last_metrics,
                **({"stopped_by": self.stopped_by} if self.stopped_by else {})}

    def _eval_and_log(self) -> dict[str, float]:
        model = self.whole_model()  # every process: under FSDP the shards are gathered here
        if self.rank != 0 or model is None:
            return {}
        metrics = self.evaluate(model)
        if metrics:
            self._log({"kind": "eval", "step": self.step, "time": round(self.elapsed, 2), **metrics})
            log.info("step %d: %s", self.step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            key = self.cfg.best_by if self.cfg.best_by in metrics else "val_loss"
            if key in metrics:
                value = -metrics[key] if key in HIGHER_IS_BETTER else metrics[key]  # lower is better
                if value < self.best_loss:
                    self.best_loss, self.evals_since_best = value, 0
                    save_model_dir(self.out / "best", model, self.run.model, self.vocab,
                                   {"step": self.step, "metrics": metrics, "best_by": key, **self.model_meta}, overwrite=True)
                else:
                    self.evals_since_best += 1
        return metrics


def _check_same_vocabulary(model_dir: str, ours, data_dir: str) -> None:
    """A fine-tuned model must read the data (vocabulary ``ours``) with the vocabulary it was trained with."""
    try:
        theirs = load_vocab(model_dir)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise ConfigError(f"train.init_from: {model_dir}: cannot load its vocabulary ({e})") from None
    if not same_vocabulary(theirs, ours):
        raise ConfigError(f"train.init_from: the data in {data_dir} uses another vocabulary than {model_dir} "
                          f"({len(ours):,} against {len(theirs):,} entries); prepare it with --vocab-from {model_dir}")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def train(run: RunConfig) -> dict[str, Any]:
    """Train (or resume) the run described by ``run``; returns the final metrics. A count-based model
    (``arch: ngram``) is counted instead (:mod:`aiayn.train.count`)."""
    if run.model.arch == "ngram":
        from .count import count_run

        return count_run(run)
    trainer = Trainer(run)
    procs, finished = trainer.procs, False
    try:
        result = trainer.fit()
        finished = True
        return result
    finally:
        del trainer  # the model and its DDP wrapper (which holds the process group) go before the group does
        procs.end(finished)


__all__ = ["Trainer", "TrainingDiverged", "train", "RunConfig", "TrainConfig", "load_run_config", "autocast_context",
           "pick_device", "StopSignals"]
