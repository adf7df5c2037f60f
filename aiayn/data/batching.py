"""Batches: sentence pairs grouped by length under a token budget (§5.1), and language-model blocks.

The batch order of an epoch is a pure function of (seed, epoch), so that a resumed run, and every
process of a multi-process run, sees exactly the same batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import BOS_ID, EOS_ID, PAD_ID
from .shards import shard_name, shard_names  # noqa: F401 - shard_names: part of this module's interface


class ParallelData:
    """One split (or one shard of a split, :func:`shard_name`) of a prepared parallel corpus, memory-mapped."""

    def __init__(self, directory: str | Path, split: str) -> None:
        d = Path(directory)
        self.name = split
        if not (d / f"{split}.src.tokens.npy").is_file():
            if (d / f"{shard_name(split, 0)}.src.tokens.npy").is_file():
                raise FileNotFoundError(f"{d}: the '{split}' split is in shards ({shard_name(split, 0)}, …): read one "
                                        "shard at a time (aiayn.data.batching.shard_names)")
            raise FileNotFoundError(f"{d}: no '{split}' split (prepare it with --{split})")
        self.src_tokens = np.load(d / f"{split}.src.tokens.npy", mmap_mode="r")
        self.tgt_tokens = np.load(d / f"{split}.tgt.tokens.npy", mmap_mode="r")
        self.src_off = np.load(d / f"{split}.src.offsets.npy")
        self.tgt_off = np.load(d / f"{split}.tgt.offsets.npy")
        # Lengths as the model sees them: source + </s>; target + one of <s> / </s>.
        self.src_lens = np.diff(self.src_off) + 1
        self.tgt_lens = np.diff(self.tgt_off) + 1

    def __len__(self) -> int:
        return len(self.src_lens)

    def src(self, i: int) -> np.ndarray:
        return self.src_tokens[self.src_off[i] : self.src_off[i + 1]]

    def tgt(self, i: int) -> np.ndarray:
        return self.tgt_tokens[self.tgt_off[i] : self.tgt_off[i + 1]]


class LabelledData:
    """One split of a prepared classification corpus: the sentences (memory-mapped) and their class ids."""

    def __init__(self, directory: str | Path, split: str) -> None:
        d = Path(directory)
        if not (d / f"{split}.labels.npy").is_file():
            raise FileNotFoundError(f"{d}: no '{split}' split (prepare it with --{split})")
        self.tokens = np.load(d / f"{split}.src.tokens.npy", mmap_mode="r")
        self.offsets = np.load(d / f"{split}.src.offsets.npy")
        self.labels = np.load(d / f"{split}.labels.npy")
        self.src_lens = np.diff(self.offsets) + 1  # + </s>, as the encoder reads a source

    def __len__(self) -> int:
        return len(self.labels)

    def src(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def batches(self, max_tokens: int, seed: int = 0, epoch: int = 0, shuffle: bool = True) -> list[np.ndarray]:
        """Sentences of similar length under the token budget (:func:`token_batches` on one side)."""
        return token_batches(self.src_lens, self.src_lens, max_tokens, seed, epoch, shuffle)

    def collate(self, indices: np.ndarray) -> tuple[Tensor, Tensor]:
        """tokens (B, S) = x </s> right-padded; labels (B,)."""
        return source_tensor([self.src(i) for i in indices]), torch.as_tensor(self.labels[indices], dtype=torch.long)


def token_batches(src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, seed: int = 0,
                  epoch: int = 0, shuffle: bool = True, oversize_alone: bool = False,
                  shard: int | None = None) -> list[np.ndarray]:
    """Group sentence indices into batches of similar length whose padded size stays within
    ``max_tokens`` on each side (batch size × longest sentence, padding included, as fairseq counts).

    Sorted by target then source length (ties broken at random per epoch), cut greedily, and the
    batches shuffled: nearly padding-free, and a different order every epoch. Without ``shuffle``:
    the batches in order of length, the sentences in input order among equals (for decoding). A
    sentence longer than ``max_tokens`` is an error, or with ``oversize_alone`` a batch of its own.
    ``shard``: the shard of a split in several these sentences are (its own random stream).
    """
    n = len(src_lens)
    rng = np.random.default_rng([seed, epoch] if shard is None else [seed, epoch, shard])
    order = rng.permutation(n) if shuffle else np.arange(n)
    order = order[np.lexsort((src_lens[order], tgt_lens[order]))]  # stable: last key is primary
    batches: list[np.ndarray] = []
    start, max_s, max_t = 0, 0, 0
    for pos, i in enumerate(order):
        s, t = int(src_lens[i]), int(tgt_lens[i])
        if max(s, t) > max_tokens and not oversize_alone:
            raise ValueError(f"a sentence of {max(s, t)} tokens does not fit max_tokens={max_tokens}")
        new_s, new_t = max(max_s, s), max(max_t, t)
        if pos > start and (pos - start + 1) * max(new_s, new_t) > max_tokens:
            batches.append(order[start:pos])
            start, new_s, new_t = pos, s, t
        max_s, max_t = new_s, new_t
    if start < n:
        batches.append(order[start:])
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def pad(seqs: list[np.ndarray | list[int]], pad_id: int = PAD_ID) -> Tensor:
    """Right-pad to a (B, T) int64 tensor."""
    t = max(len(s) for s in seqs)
    out = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
    return out


def source_tensor(seqs: list[np.ndarray | list[int]]) -> Tensor:
    """Source ids + </s>, right-padded: (B, S)."""
    return pad([np.append(np.asarray(s, dtype=np.int64), EOS_ID) for s in seqs])


def collate(data: ParallelData, indices: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    """src (B, S) = x </s>; tgt_in (B, T) = <s> y (shifted right, §3.1); tgt_out (B, T) = y </s>."""
    src = source_tensor([data.src(i) for i in indices])
    tgt = [np.asarray(data.tgt(i), dtype=np.int64) for i in indices]
    tgt_in = pad([np.concatenate([[BOS_ID], y]) for y in tgt])
    tgt_out = pad([np.concatenate([y, [EOS_ID]]) for y in tgt])
    return src, tgt_in, tgt_out


def lm_batch(tokens: np.ndarray, block_size: int, batch_size: int, generator: np.random.Generator) -> tuple[Tensor, Tensor]:
    """nanoGPT's batches: ``batch_size`` random windows of ``block_size`` tokens and the same shifted by one."""
    starts = generator.integers(0, len(tokens) - block_size - 1, size=batch_size)
    x = np.stack([tokens[s : s + block_size] for s in starts]).astype(np.int64)
    y = np.stack([tokens[s + 1 : s + 1 + block_size] for s in starts]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)
