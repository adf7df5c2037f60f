"""The small public API, at the package's top level (``import aiayn``): load a model directory and
translate, score, generate or evaluate with it; prepare data; train (``fit``) from a configuration.

    import aiayn
    model = aiayn.load("models/bible-es-en")
    model.translate("Y dijo Dios: Sea la luz.")                 # 'And God said, Let there be light.' …
    model.translate(["…", "…"], beam=1)                          # greedy
    model.score(["Dios es amor."], ["God is love."])             # log P(target | source), nats
    aiayn.load("models/shakespeare-char").generate("ROMEO:", max_new_tokens=100, seed=1)

Each method is a thin layer over the modules the ``aiayn`` command uses (``aiayn.decode``,
``aiayn.evaluate``, ``aiayn.data.prepare``, ``aiayn.train.loop``), with their defaults: the paper's
search (beam 4, α = 0.6, up to source length + 50) and nanoGPT's sampling.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .config import (
    LANGUAGE_MODELS,
    MASKED_LANGUAGE_MODELS,
    DecodeConfig,
    PrepareConfig,
    RunConfig,
    SampleConfig,
    load_run_config,
)
from .model import device_of


class Model:
    """A loaded model directory: the network (``.network``, in eval mode), its vocabulary (``.vocab``) and
    its saved configuration (``.config``); ``.kind`` is ``"translation"`` or ``"language model"``."""

    def __init__(self, network: torch.nn.Module, vocab: Any, config: dict[str, Any], path: Path) -> None:
        from .train.checkpoint import model_arch

        self.network, self.vocab, self.config, self.path = network, vocab, config, path
        self.arch = model_arch(config)
        self.labels: list[str] = list(config.get("labels") or [])  # a classifier's label names, by class id
        self.kind = ("language model" if self.arch in LANGUAGE_MODELS else
                     "classifier" if self.arch in MASKED_LANGUAGE_MODELS and self.labels else
                     "masked language model" if self.arch in MASKED_LANGUAGE_MODELS else "translation")

    def __repr__(self) -> str:
        return f"aiayn.Model({str(self.path)!r}, {self.arch}, {self.kind})"

    @property
    def device(self) -> torch.device:
        return device_of(self.network)

    def _needs(self, kind: str, what: str) -> None:
        if self.kind != kind:
            raise ValueError(f"{self.path} is a {self.arch} model ({self.kind}): {what} needs a {kind} model")

    def translate(self, texts: str | list[str], **search: Any):
        """One text → its translation; a list → a list. ``search``: any :class:`~aiayn.config.DecodeConfig`
        field (``beam``, ``alpha``, ``max_len_a``, ``max_len_b``, ``nbest``, ``compute_type``, …). With
        ``nbest`` > 1 each translation is a list of (text, score) pairs, best first."""
        from .decode.translate import Translator

        self._needs("translation", "translate")
        cfg = replace(DecodeConfig(), **search)
        translator = Translator(self.network, self.vocab, cfg)
        batch = [texts] if isinstance(texts, str) else list(texts)
        out = translator.translate_nbest(batch) if cfg.nbest > 1 else translator.translate(batch)
        return out[0] if isinstance(texts, str) else out

    @torch.no_grad()
    def score(self, sources: list[str], targets: list[str]) -> list[float]:
        """Forced decoding: log P(target | source) of each pair in nats, summed over the target's tokens
        and its end-of-sentence token (teacher forcing, no label smoothing)."""
        from .decode.translate import forced_log_probs

        self._needs("translation", "score")
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
        if not sources:
            return []
        logp = forced_log_probs(self.network, self.vocab.encode_batch(sources), self.vocab.encode_batch(targets, side="target"),
                                self.device)
        return logp.sum(-1).tolist()

    def generate(self, prompt: str = "", stop: list[str] | None = None, **sampling: Any) -> str:
        """Continue ``prompt`` (returned without it). ``sampling``: any :class:`~aiayn.config.SampleConfig`
        field (``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``seed``); ``stop``: cut the text
        before the first of these strings."""
        from .decode.sampling import generate_text

        self._needs("language model", "generate")
        return generate_text(self.network, self.vocab, prompt, replace(SampleConfig(), **sampling), stop=stop)

    def classify(self, texts: str | list[str], probability: bool = False):
        """A classifier's label for one text, or a list of labels for a list; with ``probability``,
        (label, probability) pairs."""
        from .evaluate import classify_texts

        self._needs("classifier", "classify")
        out = classify_texts(self.network, self.vocab, self.labels, [texts] if isinstance(texts, str) else list(texts))
        out = out if probability else [label for label, _ in out]
        return out[0] if isinstance(texts, str) else out

    def evaluate(self, test: str | Path, limit: int = 0, tail_fraction: float = 0.0, **search: Any) -> dict:
        """A translation model: sacreBLEU BLEU and chrF on a test file (``bleu``, ``chrf``, ``signature``, …;
        ``limit``: the first sentences only). A language model: ``val_loss`` (nats/token) and ``ppl`` on a
        text file, every token predicted once (``tail_fraction``: only the end of the text). A classifier:
        ``accuracy``, ``n`` and ``per_label`` on a labelled file (TEXT<TAB>LABEL)."""
        from .evaluate import evaluate_classifier, evaluate_lm_text, evaluate_translation

        if self.kind == "classifier":
            return evaluate_classifier(self.network, self.vocab, self.labels, test, limit)[0]
        if self.kind != "translation":
            return evaluate_lm_text(self.network, self.vocab, test, tail_fraction)
        scores, _ = evaluate_translation(self.network, self.vocab, test, replace(DecodeConfig(), **search), limit)
        return scores


def load(path: str | Path, device: str = "auto") -> Model:
    """A model directory aiayn wrote (a trained model, a checkpoint or an average), verified on load, on
    ``device`` (``auto``: a GPU if there is one, else the CPU; ``cpu``; ``cuda[:N]``)."""
    from .train.checkpoint import load_model_dir

    network, vocab, config = load_model_dir(path, device)
    return Model(network, vocab, config, Path(path))


def prepare(train: str, out: str, **options: Any) -> dict:
    """``aiayn prepare``: validate a corpus, build the vocabulary, encode it into ``out``; ``options``: any
    :class:`~aiayn.config.PrepareConfig` field (``dev``, ``test``, ``kind="lm"``, ``vocab``, ``vocab_size``, …).
    Returns the manifest."""
    from .data.prepare import prepare as _prepare

    return _prepare(PrepareConfig(train=train, out=out, **options))


def import_hf(src: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """``aiayn import --from hf``: a Hugging Face ``MarianMTModel`` (OPUS-MT) or Pegasus directory written as
    the aiayn model directory ``out`` (a new one, or with ``overwrite`` one aiayn wrote); returns ``out``."""
    from .importers.hf import from_hf

    return from_hf(src, out, overwrite)


def fit(config: str | Path | RunConfig | None = None, **sections: dict[str, Any]) -> dict:
    """``aiayn train``: train (or resume) from a YAML file or a :class:`~aiayn.config.RunConfig`, with
    ``model={…}`` and ``train={…}`` overriding its sections. Returns the final metrics. (Named ``fit``:
    ``aiayn.train`` is the package of the training loop.)"""
    from .train.loop import train as _train

    if isinstance(config, RunConfig):
        if sections:
            raise ValueError("give overrides with a YAML path, or change the RunConfig itself")
        run = config
    else:
        run = load_run_config(config, sections)
    return _train(run)
