"""What each optimiser update trains on: token-bucketed batches of a parallel corpus (§5.1) or of labelled
sentences, or random windows of a language model's token stream, in an order every process computes the
same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import MASKED_LANGUAGE_MODELS, PAD_ID, ConfigError, RunConfig
from ..data.batching import LabelledData, ParallelData, collate, lm_batch, token_batches


class Feed:
    """The training data of a run and the position in it (epoch, batch, the LM sampler's state)."""

    def __init__(self, run: RunConfig, kind: str, splits: dict[str, Any]) -> None:
        cfg, m = run.train, run.model
        self.cfg, self.kind = cfg, kind
        self.epoch, self.batch_in_epoch = 0, 0
        self.lm_rng = np.random.default_rng(cfg.seed)  # the same on every process
        # An encoder-only model learns by masked-token prediction (BERT): the corruption is drawn here, from
        # a generator every process seeds alike and checkpoints carry, so the update knows its target count.
        self.masked = m.arch in MASKED_LANGUAGE_MODELS
        self.vocab_size = m.vocab_size
        self.mask_rng = torch.Generator().manual_seed(cfg.seed)
        self._batches: list[np.ndarray] = []
        self._batches_epoch: int | None = None
        if kind == "parallel":
            self.train_data = ParallelData(cfg.data, "train")
            self.dev_data = ParallelData(cfg.data, "dev") if "dev" in splits else None
            # More dev sets (prepare --more-dev NAME=FILE): evaluated and logged apart, as NAME.
            self.more_dev = {s.split(".", 1)[1]: ParallelData(cfg.data, s) for s in splits if s.startswith("dev.")}
        elif kind == "classify":
            self.train_data = LabelledData(cfg.data, "train")
            self.dev_data = LabelledData(cfg.data, "dev") if "dev" in splits else None
        else:
            self.train_tokens = np.load(Path(cfg.data) / "train.tokens.npy", mmap_mode="r")
            self.valid_tokens = np.load(Path(cfg.data) / "valid.tokens.npy", mmap_mode="r")
            self.block = cfg.block_size or m.max_positions
            if self.block > m.max_positions and m.positional == "learned":
                raise ConfigError(f"block_size {self.block} exceeds the model's max_positions {m.max_positions}")

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        d = self.train_data
        if self.kind == "classify":
            return d.batches(self.cfg.max_tokens, self.cfg.seed, epoch)
        return token_batches(d.src_lens, d.tgt_lens, self.cfg.max_tokens, self.cfg.seed, epoch)

    def next_update(self, rank: int, world: int) -> tuple[list[tuple[torch.Tensor, ...]], int]:
        """Process ``rank``'s micro-batches for one optimiser update, and the target tokens of the whole
        update (all processes); advances the position.

        One update consumes ``update_freq × world`` consecutive batches of the epoch's order; process r
        takes those with index ≡ r (mod world). Every process computes the same order (the same seed),
        so nothing about the data needs to be communicated.
        """
        per_update = self.cfg.update_freq * world
        if self.kind == "lm":
            group = [lm_batch(self.train_tokens, self.block, self.cfg.batch_size, self.lm_rng) for _ in range(per_update)]
            if self.masked:
                from ..model.encoder_only import mask_tokens

                group = [mask_tokens(x, self.vocab_size, self.mask_rng) for x, _ in group]
                group = [(inputs, targets.clamp_min(PAD_ID)) for inputs, targets in group]  # unchosen: PAD, ignored
                return group[rank::world], max(1, sum(int((t != PAD_ID).sum()) for _, t in group))
            return group[rank::world], per_update * self.cfg.batch_size * self.block
        if self._batches_epoch != self.epoch:
            self._batches, self._batches_epoch = self._epoch_batches(self.epoch), self.epoch
        if self.batch_in_epoch + per_update > len(self._batches):
            self.epoch += 1
            self.batch_in_epoch = 0
            self._batches, self._batches_epoch = self._epoch_batches(self.epoch), self.epoch
        group = self._batches[self.batch_in_epoch : self.batch_in_epoch + per_update]
        self.batch_in_epoch += per_update
        if self.kind == "classify":  # the loss is per sentence
            return [self.train_data.collate(idx) for idx in group[rank::world]], sum(len(idx) for idx in group)
        total = sum(int(self.train_data.tgt_lens[idx].sum()) for idx in group)
        return [collate(self.train_data, idx) for idx in group[rank::world]], total

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "lm_rng": json.dumps(self.lm_rng.bit_generator.state),
                "mask_rng": self.mask_rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.lm_rng.bit_generator.state = json.loads(state["lm_rng"])
        if "mask_rng" in state:
            self.mask_rng.set_state(state["mask_rng"])
