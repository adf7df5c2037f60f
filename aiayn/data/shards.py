"""The names of a split prepared in shards (``aiayn prepare --shard-size``): kept apart from the batching so
that preparing data does not import PyTorch."""

from __future__ import annotations


def shard_name(split: str, k: int) -> str:
    """The name of shard ``k`` of a split prepared in several (``train@00003``: its files ``train@00003.src.tokens.npy`` …)."""
    return f"{split}@{k:05d}"


def shard_names(splits: dict, split: str) -> list[str]:
    """The parts of ``split`` as a manifest's ``splits`` describes it: the split itself, or its shards in order."""
    sizes = splits.get(split, {}).get("shards")
    return [shard_name(split, k) for k in range(len(sizes))] if sizes else [split]
