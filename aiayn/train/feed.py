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
from ..data.batching import LabelledData, ParallelData, collate, lm_batch, shard_names, token_batches


class Feed:
    """The training data of a run and the position in it (epoch, batch, the LM sampler's state)."""

    def __init__(self, run: RunConfig, kind: str, splits: dict[str, Any]) -> None:
        cfg, m = run.train, run.model
        self.cfg, self.kind = cfg, kind
        self.epoch, self.batch_in_epoch = 0, 0  # with shards: the batch in the current shard
        self.lm_rng = np.random.default_rng(cfg.seed)  # the same on every process
        # An encoder-only model learns by masked-token prediction (BERT): the corruption is drawn here, from
        # a generator every process seeds alike and checkpoints carry, so the update knows its target count.
        self.masked = m.arch in MASKED_LANGUAGE_MODELS
        self.vocab_size = m.vocab_size
        self.mask_rng = torch.Generator().manual_seed(cfg.seed)
        # A training split prepared in shards (prepare --shard-size) is read one shard at a time, in an order
        # drawn per epoch; batches are built within the shard, so memory is bounded by a shard, not the corpus.
        self.shards = shard_names(splits, "train") if kind == "parallel" else ["train"]
        self.shard_pos = 0  # position in this epoch's order of shards
        self._batches: list[np.ndarray] = []
        self._batches_at: tuple[int, int] | None = None  # (epoch, shard_pos) of self._batches
        if kind == "parallel":
            self.train_data = ParallelData(cfg.data, self.shards[0])
            self.dev_data = ParallelData(cfg.data, "dev") if "dev" in splits else None
            # More dev sets (prepare --more-dev NAME=FILE): evaluated and logged apart, as NAME.
            self.more_dev = {s.split(".", 1)[1]: ParallelData(cfg.data, s) for s in splits if s.startswith("dev.")}
        elif kind == "classify":
            self.train_data = LabelledData(cfg.data, "train")
            self.dev_data = LabelledData(cfg.data, "dev") if "dev" in splits else None
            self.more_dev = {s.split(".", 1)[1]: LabelledData(cfg.data, s) for s in splits if s.startswith("dev.")}
        else:
            self.train_tokens = np.load(Path(cfg.data) / "train.tokens.npy", mmap_mode="r")
            self.valid_tokens = np.load(Path(cfg.data) / "valid.tokens.npy", mmap_mode="r")
            self.more_valid = {s.split(".", 1)[1]: np.load(Path(cfg.data) / f"{s}.tokens.npy", mmap_mode="r")
                               for s in splits if s.startswith("valid.")}
            self.block = cfg.block_size or m.max_positions
            if self.block > m.max_positions and m.positional == "learned":
                raise ConfigError(f"block_size {self.block} exceeds the model's max_positions {m.max_positions}")

    def dev_sets(self) -> list[tuple[str, Any]]:
        """The sets evaluated during training, (name, data), the main one first with the name "": the validation
        tokens (a language model) or the dev split, then those of ``prepare --more-dev``."""
        if self.kind == "lm":
            return [("", self.valid_tokens), *self.more_valid.items()]
        return [] if self.dev_data is None else [("", self.dev_data), *self.more_dev.items()]

    def _load_batches(self) -> None:
        """The batches of the current shard (or of the whole split) in this epoch's order."""
        if self._batches_at == (self.epoch, self.shard_pos):
            return
        if self.kind == "classify":
            self._batches = self.train_data.batches(self.cfg.max_tokens, self.cfg.seed, self.epoch)
        elif len(self.shards) == 1:
            d = self.train_data
            self._batches = token_batches(d.src_lens, d.tgt_lens, self.cfg.max_tokens, self.cfg.seed, self.epoch)
        else:
            k = int(np.random.default_rng([self.cfg.seed, self.epoch]).permutation(len(self.shards))[self.shard_pos])
            self.train_data = d = ParallelData(self.cfg.data, self.shards[k])
            self._batches = token_batches(d.src_lens, d.tgt_lens, self.cfg.max_tokens, self.cfg.seed, self.epoch, shard=k)
        self._batches_at = (self.epoch, self.shard_pos)

    def _next_part(self) -> None:
        """On to the next shard of the epoch, or the next epoch."""
        self.shard_pos += 1
        self.batch_in_epoch = 0
        if self.shard_pos == len(self.shards):
            self.epoch, self.shard_pos = self.epoch + 1, 0
        self._load_batches()

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
        self._load_batches()
        if self.batch_in_epoch + per_update > len(self._batches):  # the rest (less than one update) is left out
            self._next_part()
        group = self._batches[self.batch_in_epoch : self.batch_in_epoch + per_update]
        self.batch_in_epoch += per_update
        if self.kind == "classify":  # the loss is per sentence
            return [self.train_data.collate(idx) for idx in group[rank::world]], sum(len(idx) for idx in group)
        total = sum(int(self.train_data.tgt_lens[idx].sum()) for idx in group)
        return [collate(self.train_data, idx) for idx in group[rank::world]], total

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "batch_in_epoch": self.batch_in_epoch,
                "lm_rng": json.dumps(self.lm_rng.bit_generator.state), "mask_rng": self.mask_rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.shard_pos = state.get("shard_pos", 0)  # checkpoints from before shards: 0
        if self.shard_pos >= len(self.shards):
            raise ConfigError(f"the checkpoint was at shard {self.shard_pos + 1} of its epoch, but {self.cfg.data} has "
                              f"{len(self.shards)}: resume with the data it was trained on")
        self.lm_rng.bit_generator.state = json.loads(state["lm_rng"])
        if "mask_rng" in state:
            self.mask_rng.set_state(state["mask_rng"])
