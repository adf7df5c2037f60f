"""Shared fixtures: small synthetic corpora written to temporary directories."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

try:  # property tests: quick by default, deeper with --hypothesis-profile=long
    from hypothesis import settings

    settings.register_profile("aiayn", max_examples=40, deadline=None)
    settings.register_profile("long", max_examples=2000, deadline=None)
    settings.load_profile("aiayn")
except ImportError:
    pass

# Tiny models run fastest on one thread, and two test processes (the DDP test) must not oversubscribe.
torch.set_num_threads(1)

WORDS = "el la de que y a en los se del las un por con no una su para es al lo como más o pero sus le ha me".split()


def make_pairs(n: int, seed: int = 0, max_words: int = 8, reverse: bool = True) -> list[tuple[str, str]]:
    """A learnable toy 'translation': the target is the source in upper case (reversed by default)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        src = [rng.choice(WORDS) for _ in range(rng.randint(1, max_words))]
        tgt = reversed(src) if reverse else src
        pairs.append((" ".join(src), " ".join(w.upper() for w in tgt)))
    return pairs


def write_tsv(path: Path, pairs: list[tuple[str, str]], ref: bool = False) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, (s, t) in enumerate(pairs):
            f.write((f"r{i}\t" if ref else "") + f"{s}\t{t}\n")
    return path


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("toy")
    return {
        "train": write_tsv(d / "train.tsv", make_pairs(600, 1), ref=True),
        "dev": write_tsv(d / "dev.tsv", make_pairs(40, 2), ref=True),
        "test": write_tsv(d / "test.tsv", make_pairs(40, 3), ref=True),
    }


@pytest.fixture(scope="session")
def toy_data(toy_corpus, tmp_path_factory) -> Path:
    from aiayn.data.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(PrepareConfig(train=str(toy_corpus["train"]), dev=str(toy_corpus["dev"]), test=str(toy_corpus["test"]),
                          out=str(out), vocab_size=120))
    return out
