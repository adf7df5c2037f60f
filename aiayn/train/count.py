"""``aiayn train`` for the count-based language model (``model.arch: ngram``): one pass of counting
over the training tokens instead of gradient steps, then the same evaluation (``val_loss``/``ppl`` over
the validation tokens, every one predicted once), run directory and ``best/`` model directory as a
trained Transformer LM — so ``aiayn evaluate``, ``aiayn generate`` and ``aiayn serve`` take it as is.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, RunConfig
from ..data.prepare import load_manifest
from ..data.vocab import load_vocab
from ..model import build_model
from .checkpoint import save_model_dir
from .runlog import RunLog

log = logging.getLogger(__name__)


def count_run(run: RunConfig) -> dict[str, Any]:
    """Count the n-grams of ``train.data``'s training tokens and write ``train.out`` (config.yaml,
    log.jsonl and best/). Rerunning counts again and replaces what the last run wrote."""
    from ..evaluate import lm_validation

    cfg, m = run.train, run.model
    if not cfg.data:
        raise ConfigError("train.data: the prepared data directory is required (see `aiayn prepare --lm`)")
    manifest = load_manifest(cfg.data)
    if manifest["kind"] != "lm":
        raise ConfigError(f"an {m.arch} model is a language model: it needs `aiayn prepare --lm` data, "
                          f"and {cfg.data} holds {manifest['kind']} data")
    vocab = load_vocab(cfg.data)
    m.vocab_size = len(vocab)
    m.validate()
    runlog = RunLog(cfg.out, run.to_dict(), step=0)
    start = time.perf_counter()
    train_tokens = np.load(Path(cfg.data) / "train.tokens.npy", mmap_mode="r")
    model = build_model(m).fit(np.asarray(train_tokens))
    seconds = time.perf_counter() - start
    log.info("counted %s tokens in %.1f s: %s", f"{len(train_tokens):,}", seconds, model.extra_repr())
    valid = np.load(Path(cfg.data) / "valid.tokens.npy", mmap_mode="r")
    metrics = lm_validation(model, valid, cfg.block_size or m.max_positions, cfg.eval_lm_tokens)
    runlog.write({"kind": "eval", "step": 1, "time": round(seconds, 2), **metrics})
    runlog.close()
    save_model_dir(Path(cfg.out) / "best", model, m, vocab, {"step": 1, "metrics": metrics}, overwrite=True)
    log.info("val_loss=%.4f ppl=%.4g", metrics["val_loss"], metrics["ppl"])
    return {"step": 1, "elapsed": seconds, "train_tokens": len(train_tokens), **metrics}
