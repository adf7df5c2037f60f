"""Typed configuration, one home for all of it: the model's shape and options with named presets
(:class:`ModelConfig`), training (:class:`TrainConfig`, :class:`RunConfig`), data preparation
(:class:`PrepareConfig`), decoding (:class:`DecodeConfig`), sampling (:class:`SampleConfig`) and serving
(:class:`Limits`). Each validates itself when built and raises :class:`ConfigError`; the CLI and the server
take their defaults from these classes, so each default exists once.

The model's shape and options:

Every field uses the paper's names (``d_model``, ``d_ff``, ``n_heads``; §3).
Defaults are the paper's base model (Table 3, row "base"); every deviation
from the paper is a named option whose value says what it does.

Configurations come from three places that all go through :func:`from_dict`:
presets (below), YAML files, and ``--key value`` overrides on the command line.
Unknown keys and impossible combinations are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

log = logging.getLogger(__name__)

Arch = Literal["encoder-decoder", "decoder-only", "encoder-only", "ngram", "mlp-lm", "rnn-lm", "rnn-seq2seq", "rnnsearch"]
# Architectures that model one token stream (trained on `aiayn prepare --lm` data, sampled by `aiayn generate`).
LANGUAGE_MODELS = ("decoder-only", "ngram", "mlp-lm", "rnn-lm")
MASKED_LANGUAGE_MODELS = ("encoder-only",)  # trained on language-model data by masked-token prediction (BERT)
# Architectures that translate (trained on parallel data, decoded by greedy and beam search).
TRANSLATION_MODELS = ("encoder-decoder", "rnn-seq2seq", "rnnsearch")
HIGHER_IS_BETTER = ("val_bleu", "val_acc")  # dev metrics where more is better (train.best_by, train.patience)
Cell = Literal["lstm", "gru", "rnn"]
Norm = Literal["post", "pre"]
Positional = Literal["sinusoidal", "learned", "rope", "none"]
PELayout = Literal["interleaved", "concat"]
Activation = Literal["relu", "gelu", "silu"]
Tie = Literal["three_way", "two_way", "none"]

# Special token ids, fixed across every vocabulary aiayn builds (SentencePiece is
# trained with these ids, the character vocabulary reserves them too).
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class ConfigError(ValueError):
    """A configuration that cannot be used, with a message that says why."""


@dataclass
class ModelConfig:
    """The shape of a model and its named deviations from the paper.

    Paper defaults (§3, §5.4): post-LN, interleaved sinusoidal positions,
    embeddings × √d_model, one matrix for source embedding, target embedding and
    pre-softmax projection, ReLU, residual dropout 0.1, no attention/ReLU dropout.
    """

    arch: Arch = "encoder-decoder"
    vocab_size: int = 37000  # the (shared) vocabulary; the source one when not shared
    tgt_vocab_size: int | None = None  # only with tie != "three_way": a separate target vocabulary
    d_model: int = 512
    d_ff: int = 2048
    n_heads: int = 8
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    dropout: float = 0.1  # P_drop: residual dropout and dropout on embeddings + PE (§5.4)
    attn_dropout: float = 0.0  # dropout on attention probabilities (not in the paper)
    act_dropout: float = 0.0  # dropout after the FFN activation (not in the paper)
    norm: Norm = "post"  # post: LayerNorm(x + Sublayer(x)) (§3.1); pre: x + Sublayer(LayerNorm(x))
    positional: Positional = "sinusoidal"  # §3.5; "learned" is Table 3 row (E); "rope" rotates queries and keys
    rope_base: float = 10000.0  # rope: wavelengths from 2π to 2π·base, like the paper's sinusoids
    pe_layout: PELayout = "interleaved"  # the paper's sin/cos interleaving, or t2t/fairseq [sin | cos]
    activation: Activation = "relu"
    tie: Tie = "three_way"  # §3.4: source, target embeddings and output; two_way: target embedding and output
    bias: bool = True
    scale_embeddings: bool = True  # §3.4: embeddings × √d_model (nanoGPT does not scale)
    output_bias: bool = False  # a bias on the pre-softmax projection (Marian's final_logits_bias; not in §3.4)
    ln_eps: float = 1e-6  # not stated in the paper; tensor2tensor's value
    max_positions: int = 1024  # rows of a learned position table; block size of an LM
    n_classes: int = 0  # encoder-only: size of the sequence-classification head (0 = none)
    attention_window: int = 0  # restricted self-attention (Table 1, §7): r positions either side (0 = all)
    key_size: int = 0  # d_k of queries and keys per head (Table 3 row B); 0 = d_model / n_heads, like d_v
    # The lineage (docs/lineage.md). ngram: interpolated Kneser-Ney; mlp-lm: Bengio et al. 2003 (embeddings of
    # size d_model, d_ff hidden units); rnn-lm: n_decoder_layers recurrent layers of size d_model
    order: int = 3  # ngram, mlp-lm: the next token is predicted from the last order − 1
    discounts: list[float] = field(default_factory=list)  # ngram: D_1 … D_n; empty: n₁ / (n₁ + 2 n₂) per order
    cell: Cell = "lstm"  # rnn-lm, rnn-seq2seq: lstm | gru | rnn (Elman)
    hidden_size: int = 0  # rnn-seq2seq, rnnsearch: units per recurrent layer (0 = d_model, the embedding size)
    reverse_source: bool = False  # rnn-seq2seq: read the source backwards (Sutskever et al. 2014, §3.3)

    def __post_init__(self) -> None:
        self.tie = current_value("tie", self.tie)
        self.validate()

    @property
    def d_k(self) -> int:
        """Size of each head's queries and keys (§3.2.2: d_k = d_v = d_model / h unless ``key_size`` says)."""
        return self.key_size or self.d_model // self.n_heads

    @property
    def target_vocab_size(self) -> int:
        return self.tgt_vocab_size if self.tgt_vocab_size is not None else self.vocab_size

    def validate(self) -> None:
        _check_literals(self)
        if self.d_model <= 0 or self.n_heads <= 0 or self.d_ff <= 0:
            raise ConfigError("d_model, n_heads and d_ff must be positive")
        attends = self.arch in ("encoder-decoder", "decoder-only", "encoder-only")  # heads and positions apply
        if attends and self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if attends and self.positional == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if attends and self.positional == "rope" and self.d_k % 2:
            raise ConfigError(f"rope positions need an even head size of queries and keys (d_k), got {self.d_k}")
        if self.key_size < 0:
            raise ConfigError(f"key_size must be >= 0 (0 = d_model / n_heads), got {self.key_size}")
        if self.attention_window < 0:
            raise ConfigError(f"attention_window must be >= 0 (0 = full attention), got {self.attention_window}")
        if self.attention_window and not attends:
            raise ConfigError(f"attention_window applies to the Transformer's self-attention, not to {self.arch}")
        if self.rope_base <= 1.0:
            raise ConfigError(f"rope_base must be > 1, got {self.rope_base}")
        if self.vocab_size < 5:
            raise ConfigError(f"vocab_size must hold the 4 special tokens and more, got {self.vocab_size}")
        if self.tgt_vocab_size is not None:
            if self.arch != "encoder-decoder":
                raise ConfigError("tgt_vocab_size only applies to encoder-decoder models")
            if self.tie == "three_way" and self.tgt_vocab_size != self.vocab_size:
                raise ConfigError(
                    "tie=three_way shares one matrix between source and target: "
                    "use one vocabulary (vocab_size) or tie=two_way/none"
                )
        for name in ("dropout", "attn_dropout", "act_dropout"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {p}")
        if self.arch == "encoder-decoder" and (self.n_encoder_layers < 1 or self.n_decoder_layers < 1):
            raise ConfigError("an encoder-decoder needs at least one encoder and one decoder layer")
        if self.arch == "decoder-only" and self.n_decoder_layers < 1:
            raise ConfigError("a decoder-only model needs n_decoder_layers >= 1")
        if self.arch == "encoder-only" and self.n_encoder_layers < 1:
            raise ConfigError("an encoder-only model needs n_encoder_layers >= 1")
        if self.max_positions < 1:
            raise ConfigError("max_positions must be >= 1")
        hidden = self.hidden_size or self.d_model
        if self.arch == "rnn-seq2seq" and self.tie != "none" and hidden != self.d_model:
            raise ConfigError(f"rnn-seq2seq: tie={self.tie} shares the output layer with the embedding, so hidden_size "
                              f"({hidden}) must equal d_model ({self.d_model}); or tie=none")
        if self.arch == "rnnsearch":
            if hidden % 2:
                raise ConfigError(f"rnnsearch: hidden_size must be even (its maxout output halves it), got {hidden}")
            if self.tie != "none" and hidden // 2 != self.d_model:
                raise ConfigError(f"rnnsearch: tie={self.tie} shares W_o with the embedding, so hidden_size ({hidden}) must be "
                                  f"2 × d_model ({self.d_model}); or tie=none")
            if self.n_decoder_layers != 1:
                raise ConfigError(f"rnnsearch has one decoder layer (a GRU cell), got n_decoder_layers={self.n_decoder_layers}")
        if self.arch == "mlp-lm" and self.order < 2:
            raise ConfigError(f"an mlp-lm needs order >= 2 (at least one word of context), got {self.order}")
        if self.arch == "ngram":
            if self.order < 1:
                raise ConfigError(f"order must be at least 1 (1 = unigram, 2 = bigram …), got {self.order}")
            if self.discounts and (len(self.discounts) != self.order or not all(0 <= d < 1 for d in self.discounts)):
                raise ConfigError(f"discounts: one per order ({self.order}), each in [0, 1), got {self.discounts}")


def estimate_parameters(cfg: ModelConfig) -> int:
    """The parameter count of ``cfg``, computed without building the model (for a memory check
    before allocating). Exact for the default options; within a few per cent for the others.

    Per layer: self-attention 4·(d² + d), encoder-decoder attention the same, FFN 2·d·d_ff + d_ff + d,
    LayerNorms 2·d each; embeddings V·d, counted once per matrix that tying leaves separate (§3.4).
    """
    if cfg.arch == "ngram":
        return 0  # counts, not parameters
    if cfg.arch == "mlp-lm":
        x, h, v = (cfg.order - 1) * cfg.d_model, cfg.d_ff, cfg.vocab_size  # C, H and d, U and b, W
        return v * cfg.d_model + (x * h + h) + (h * v + v) + x * v
    if cfg.arch in ("rnn-seq2seq", "rnnsearch"):
        return _recurrent_translation_parameters(cfg)
    if cfg.arch == "rnn-lm":
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[cfg.cell]
        layers = cfg.n_decoder_layers * gates * (2 * cfg.d_model * cfg.d_model + 2 * cfg.d_model)
        return cfg.vocab_size * cfg.d_model * (1 if cfg.tie != "none" else 2) + layers + cfg.vocab_size
    d, ff = cfg.d_model, cfg.d_ff
    qk = cfg.n_heads * cfg.d_k  # = d unless key_size makes the queries and keys smaller (Table 3 B)
    attn, ffn, ln = 2 * (qk * d + qk) + 2 * (d * d + d), 2 * d * ff + ff + d, 2 * d
    enc = dec = 0
    if cfg.arch in ("encoder-decoder", "encoder-only"):
        enc = cfg.n_encoder_layers * (attn + ffn + 2 * ln)
    if cfg.arch == "encoder-decoder":
        dec = cfg.n_decoder_layers * (2 * attn + ffn + 3 * ln)
    elif cfg.arch == "decoder-only":
        dec = cfg.n_decoder_layers * (attn + ffn + 2 * ln)
    matrices = {"three_way": 1, "two_way": 2, "none": 3}[cfg.tie]
    if cfg.arch != "encoder-decoder":
        matrices = min(matrices, 2)
    emb = matrices * max(cfg.vocab_size, cfg.target_vocab_size) * d
    pos = cfg.max_positions * d if cfg.positional == "learned" else 0
    return enc + dec + emb + pos


def _recurrent_translation_parameters(cfg: ModelConfig) -> int:
    m, n, v = cfg.d_model, cfg.hidden_size or cfg.d_model, cfg.target_vocab_size
    emb = cfg.vocab_size * m + (0 if cfg.tie == "three_way" else v * m)
    rnn = lambda gates, inp, hid: gates * (inp * hid + hid * hid + 2 * hid)  # noqa: E731  (torch's two biases)
    if cfg.arch == "rnn-seq2seq":
        g = {"lstm": 4, "gru": 3, "rnn": 1}[cfg.cell]
        enc = sum(rnn(g, m if i == 0 else n, n) for i in range(cfg.n_encoder_layers))
        dec = sum(rnn(g, m if i == 0 else n, n) for i in range(cfg.n_decoder_layers))
        return emb + enc + dec + (0 if cfg.tie != "none" else n * v) + v
    enc = 2 * sum(rnn(3, m if i == 0 else 2 * n, n) for i in range(cfg.n_encoder_layers))
    attention = n * n + (2 * n * n + n) + n
    cell = rnn(3, m + 2 * n, n)
    deep_output = (n * n + n) + m * n + 2 * n * n
    return emb + enc + (n * n + n) + attention + cell + deep_output + (0 if cfg.tie != "none" else n // 2 * v) + v


# Named presets. The paper's two (Table 3) and small ones that train on a CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "paper-base": dict(),
    "paper-big": dict(d_model=1024, d_ff=4096, n_heads=16, dropout=0.3),
    # A CPU-sized translation model: the paper's architecture at a quarter of the width,
    # 3 + 3 layers (the shape of the Marian baseline in docs/results.md).
    "small": dict(d_model=256, d_ff=1024, n_heads=4, n_encoder_layers=3, n_decoder_layers=3, vocab_size=8000),
    # Tests and quick experiments.
    "tiny": dict(d_model=64, d_ff=128, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, vocab_size=64),
    # Decoder-only, nanoGPT's choices: pre-LN, learned positions, GELU, tied in/out embedding.
    "gpt-nano": dict(
        arch="decoder-only", d_model=128, d_ff=512, n_heads=4, n_encoder_layers=0, n_decoder_layers=4,
        norm="pre", positional="learned", activation="gelu", tie="three_way", dropout=0.0,
        max_positions=64, vocab_size=65 + 4, bias=True, ln_eps=1e-5, scale_embeddings=False,
    ),
    # Decoder-only with the paper's choices (post-LN, sinusoidal, ReLU), same size as gpt-nano.
    "gpt-paper": dict(
        arch="decoder-only", d_model=128, d_ff=512, n_heads=4, n_encoder_layers=0, n_decoder_layers=4,
        dropout=0.0, max_positions=64, vocab_size=65 + 4,
    ),
    # The lineage (docs/lineage.md), at the size of the character-level Shakespeare runs.
    # Count-based: interpolated Kneser-Ney over the last 4 tokens (aiayn.model.ngram).
    "kn5": dict(arch="ngram", order=5, vocab_size=65 + 4),
    # Bengio et al. 2003: 8 characters of context, embeddings of 32, 512 tanh units.
    "mlp-lm": dict(arch="mlp-lm", order=9, d_model=32, d_ff=512, dropout=0.1, vocab_size=65 + 4, max_positions=256),
    # A 2-layer LSTM of 512 units (Zaremba et al. 2014's medium model is 2 × 650), tied embedding.
    "lstm-lm": dict(arch="rnn-lm", cell="lstm", d_model=512, n_decoder_layers=2, dropout=0.2, vocab_size=65 + 4,
                    max_positions=256),
    # Sutskever et al. 2014: 4 + 4 LSTM layers of 1000 cells, 1000-dimensional embeddings, the source reversed.
    "sutskever-2014": dict(arch="rnn-seq2seq", cell="lstm", d_model=1000, n_encoder_layers=4, n_decoder_layers=4,
                           reverse_source=True, dropout=0.0, tie="none"),
    # Bahdanau et al. 2014 (RNNsearch-50): embeddings 620, 1000 GRU units each way, maxout 500.
    "rnnsearch-2014": dict(arch="rnnsearch", d_model=620, hidden_size=1000, n_encoder_layers=1, n_decoder_layers=1,
                           dropout=0.0, tie="none"),
    # CPU-sized versions for the Bible corpus (the shape of the `small` Transformer: d_model 256, V 8000).
    "rnn-seq2seq-small": dict(arch="rnn-seq2seq", cell="lstm", d_model=256, n_encoder_layers=2, n_decoder_layers=2,
                              reverse_source=True, dropout=0.2, vocab_size=8000),
    "rnnsearch-small": dict(arch="rnnsearch", d_model=256, hidden_size=512, n_encoder_layers=1, n_decoder_layers=1,
                            dropout=0.2, vocab_size=8000),
    # Encoder-only (bidirectional), BERT-like shape at CPU size.
    "encoder-small": dict(
        arch="encoder-only", d_model=256, d_ff=1024, n_heads=4, n_encoder_layers=4, n_decoder_layers=0,
        vocab_size=8000,
    ),
}


T = TypeVar("T")


# Values renamed since older configs were written: (field, old value) → the current value.
_OLD_VALUES = {("tie", "decoder_only"): "two_way"}


def current_value(field_name: str, value: Any) -> Any:
    """``value`` under its current name, if field ``field_name`` renamed it (else ``value`` itself)."""
    return _OLD_VALUES.get((field_name, value), value) if isinstance(value, str) else value


def _check_literals(obj: Any) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        hint = hints[f.name]
        if typing.get_origin(hint) is Literal and getattr(obj, f.name) not in typing.get_args(hint):
            choices = " | ".join(map(str, typing.get_args(hint)))
            raise ConfigError(f"{f.name}: {getattr(obj, f.name)!r} is not one of {choices}")


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Turn a YAML / command-line value into the field's declared type, or fail clearly."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{name}: a value is required")
    if origin is typing.Union or (origin is not None and type(None) in args):
        inner = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null"):
            return None
        return _coerce(name, inner[0], value)
    if origin is Literal:
        value = current_value(name.rsplit(".", 1)[-1], value)
        if value not in args:
            raise ConfigError(f"{name}: {value!r} is not one of {' | '.join(map(str, args))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [_coerce(name, args[0], v) for v in value] if args else list(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if hint is str:
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are an error that lists the known ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(map(str, set(data) - known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(f"{where}.{k}", hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset with optional overrides, e.g. ``preset("paper-base", vocab_size=8000)``."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return from_dict(ModelConfig, {**PRESETS[name], **overrides}, where=f"preset {name}")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["model.d_model=256", "train.lr=1e-3"]`` → nested dict (values stay strings; typed later)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like section.key=value")
        key, value = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``extra`` wins."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


# --- data preparation, decoding, sampling, serving ----------------------------------------------
def option(default: Any, help: str, flag: str | None = None) -> Any:
    """A field that is also a command-line option: its default, help text (and ``--flag`` when not the
    field's name) live here, once; :func:`aiayn.options.add_options` builds the argparse options from
    them. ``default=REQUIRED``: the field has no default (a required option)."""
    return field(default=default, metadata={"help": help, "flag": flag})


REQUIRED: Any = dataclasses.MISSING


@dataclass
class PrepareConfig:
    """What `aiayn prepare` reads, and how it builds the vocabulary and encodes."""

    train: str = option(REQUIRED, "TSV, JSONL, or SRC_FILE,TGT_FILE (a text file with --lm)")
    out: str = option(REQUIRED, "output directory")
    dev: str | None = option(None, "development set, same formats as --train")
    test: str | None = option(None, "test set, same formats as --train")
    kind: Literal["parallel", "lm", "classify"] = "parallel"
    vocab: Literal["bpe", "unigram", "char"] = option("bpe", "SentencePiece BPE, unigram, or characters")
    vocab_size: int = option(8000, "vocabulary entries (shared by both languages; the source's with --separate-vocab)")
    spm_model: str | None = option(None, "reuse this SentencePiece model instead of training one")
    vocab_from: str | None = option(None, "reuse the vocabulary of this model or data directory (to fine-tune that model)")
    more_dev: str | None = option(None, "more development sets, each evaluated and logged apart during training "
                                        "(val_loss@NAME …): NAME=FILE[;NAME=FILE…], FILE as for --dev (a text file with --lm)")
    separate_vocab: bool = option(False, "one vocabulary per language instead of a shared one (then model.tie: two_way or none)")
    tgt_vocab_size: int = option(0, "with --separate-vocab: the target vocabulary's entries (0 = --vocab-size)")
    max_len: int = option(256, "drop pairs with more tokens on a side (counted)")
    shard_size: int = option(1_000_000, "training pairs per shard: a larger corpus is written as several token files, "
                                        "and training builds its batches one shard at a time")
    valid_fraction: float = option(0.1, "--lm without --dev: the last fraction of the text is validation (nanoGPT)")
    seed: int = 1234
    overwrite: bool = option(False, "replace OUT if it is a data directory aiayn wrote (never anything else)")

    def __post_init__(self) -> None:
        _check_literals(self)
        self.dev_sets()  # checks --more-dev
        if self.spm_model and self.vocab_from:
            raise ConfigError("--spm-model and --vocab-from both name a vocabulary: give one")
        if self.separate_vocab and (self.spm_model or self.vocab_from):
            raise ConfigError("--separate-vocab builds a vocabulary per language; --spm-model and --vocab-from reuse one "
                              "(a model directory with separate vocabularies is reused as it is by --vocab-from)")
        if self.separate_vocab and self.kind != "parallel":
            raise ConfigError("--separate-vocab is for parallel corpora (a source and a target language)")
        if self.tgt_vocab_size and not self.separate_vocab:
            raise ConfigError("--tgt-vocab-size goes with --separate-vocab")
        if self.tgt_vocab_size and self.tgt_vocab_size < 8:
            raise ConfigError(f"--tgt-vocab-size {self.tgt_vocab_size}: a vocabulary needs the 4 special tokens and more "
                              "(at least 8)")
        if self.vocab_size < 8 and not (self.spm_model or self.vocab_from) and self.vocab != "char":
            raise ConfigError(f"--vocab-size {self.vocab_size}: a vocabulary needs the 4 special tokens and more (at least 8)")
        if self.max_len < 1:
            raise ConfigError(f"--max-len {self.max_len}: must be at least 1")
        if self.shard_size < 1:
            raise ConfigError(f"--shard-size {self.shard_size}: must be at least 1")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ConfigError(f"--valid-fraction {self.valid_fraction}: must be between 0 and 1 (exclusive)")

    def dev_sets(self) -> list[tuple[str, str]]:
        """``--more-dev`` as (name, corpus) pairs; each becomes the split ``dev.NAME``."""
        if not self.more_dev:
            return []
        if self.kind != "lm" and not self.dev:
            raise ConfigError("--more-dev adds development sets to --dev")
        out: list[tuple[str, str]] = []
        for item in self.more_dev.split(";"):
            name, sep, spec = item.partition("=")
            if not sep or not spec or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ConfigError(f"--more-dev {item!r}: expected NAME=FILE (a name of letters, digits, _ and -)")
            if name in (n for n, _ in out):
                raise ConfigError(f"--more-dev names {name!r} twice")
            out.append((name, spec))
        return out


@dataclass
class DecodeConfig:
    """Search settings; defaults are the paper's (§6.1)."""

    beam: int = option(4, "beam size; 1 = greedy (§6.1)")
    alpha: float = option(0.6, "GNMT length penalty α (§6.1)")
    max_len_a: float = option(1.0, "max output length = a·source length + b: a")
    max_len_b: int = option(50, "max output length = a·source length + b: b (§6.1: input + 50)")
    nbest: int = option(1, "the n best translations of each input")
    stopping: Literal["bound", "count"] = option(
        "bound", "when beam search stops a sentence: 'bound' once no alive hypothesis can still enter its n best "
        "finished ones (tensor2tensor's exact early termination, §6.1), 'count' once `beam` hypotheses have "
        "ended with </s> (fairseq; Hugging Face early_stopping=True; CTranslate2): fewer steps, may differ")
    max_tokens: int = option(4096, "source tokens per decoding batch (padding included)")
    max_input_tokens: int = 1024  # longer inputs are an error
    compute_type: Literal["float32", "bfloat16", "float16", "int8"] = option(
        "float32", "float32 weights, a bfloat16 copy, int8 linear layers (CPU; aiayn.accel.quantize) or float16 (GPU)")

    def __post_init__(self) -> None:
        _check_literals(self)
        for name in ("beam", "nbest", "max_tokens", "max_input_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("max_len_a", "max_len_b", "alpha"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")


@dataclass
class SampleConfig:
    """Sampling from a language model; the defaults are nanoGPT's sample.py's."""

    max_new_tokens: int = option(300, "tokens to generate")
    temperature: float = option(0.8, "divides the logits; 0 = greedy")
    top_k: int = option(0, "sample among the k most probable tokens (0 = all)")
    top_p: float = option(1.0, "nucleus sampling: the smallest set of tokens with this much mass (1 = off)")
    seed: int | None = option(None, "the same seed gives the same text")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ConfigError(f"max-new-tokens must not be negative, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must not be negative, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top-k must not be negative, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top-p must be in (0, 1], got {self.top_p} (1 = off)")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be in [0, 2^63), got {self.seed}")


@dataclass
class Limits:
    """What one request, one batch and the whole queue may ask of the server."""

    max_texts: int = option(64, "texts per request (more: 413)")
    max_chars: int = option(2000, "characters per text (more: 413)")
    max_tokens: int = option(1024, "source tokens per text (more: 413)")
    max_beam: int = option(16, "largest beam a request may ask for (more: 422)")
    max_request_work: int = option(65536, "work per request: the sum over its texts of (source tokens + 1) × beam (more: 413)")
    max_batch_work: int = option(4096, "work per decoding batch: larger requests are decoded in slices, small ones go first")
    max_batch_texts: int = 64
    max_queue_work: int = option(262144, "work waiting in the queue (more: 503 + Retry-After)")
    timeout_s: float = option(120.0, "seconds a request may wait for its answer (then 504)", flag="--timeout")
    max_body_bytes: int = option(1 << 20, "request body size (more: 413, before it is read whole)")
    max_new_tokens: int = option(1000, "/generate: the most tokens a request may ask for")
    batch_wait_ms: float = option(10.0, "how long requests wait to be batched together")

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")


@dataclass
class Word2VecConfig:
    """word2vec (Mikolov et al. 2013a, b): what `aiayn word2vec train` learns, with the defaults of the
    original C tool and gensim (dimension 100, window 5, 5 negatives, sample 1e-3, 5 epochs)."""

    input: list[str] = option(REQUIRED, "plain-text files (one sentence or line per line), comma-separated")
    out: str = option(REQUIRED, "output directory: vectors.txt (word2vec text format) and word2vec.json")
    model: Literal["cbow", "skipgram"] = option("cbow", "CBOW predicts a word from the mean of its context; "
                                                        "skip-gram predicts each context word from the word")
    dim: int = option(100, "vector size")
    window: int = option(5, "largest distance between a word and its context (each word draws 1 … window)")
    negative: int = option(5, "noise words per prediction (negative sampling, unigram^0.75)")
    min_count: int = option(5, "words seen fewer times are dropped")
    sample: float = option(1e-3, "frequent-word subsampling threshold (0 = off)")
    epochs: int = option(5, "passes over the corpus")
    alpha: float = option(0.025, "initial learning rate, decaying linearly to min_alpha")
    min_alpha: float = option(0.0001, "final learning rate")
    workers: int = option(1, "threads training at once, each on its share of the batches, updating the shared "
                             "vectors without locks as gensim's workers do (faster; runs no longer repeat exactly)")
    engine: Literal["auto", "numba", "torch"] = option(
        "auto", "numba: one prediction at a time, compiled (the C tool's and gensim's updates; needs numba, "
                "aiayn[lineage]); torch: batched updates on PyTorch tensors; auto: numba when installed")
    batch: int = option(2048, "predictions per update of the torch engine, about (larger: faster but staler, and "
                               "unstable when too large; the numba engine, the C tool and gensim update after every "
                               "prediction)")
    lowercase: bool = True
    seed: int = option(1, "random seed")
    overwrite: bool = option(False, "replace OUT if it is a word2vec directory aiayn wrote")

    def __post_init__(self) -> None:
        _check_literals(self)
        if isinstance(self.input, str):
            self.input = [p for p in self.input.split(",") if p]
        for name in ("dim", "window", "min_count", "epochs", "batch", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.negative < 1:
            raise ConfigError(f"--negative must be at least 1 (negative sampling), got {self.negative}")
        if not 0 <= self.sample < 1:
            raise ConfigError(f"--sample must be in [0, 1), got {self.sample}")
        if not 0 < self.min_alpha <= self.alpha:
            raise ConfigError(f"need 0 < --min-alpha <= --alpha, got {self.min_alpha} and {self.alpha}")


# --- training ----------------------------------------------------------------------------------
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
    eval_bleu_sentences: int = 200  # dev sentences translated for BLEU at each evaluation
    eval_beam: int = 1  # beam size of that translation (1 = greedy; 4 = the paper's search)
    best_by: Literal["val_loss", "val_bleu", "val_acc"] = "val_loss"  # which dev metric picks OUT/best (val_acc: classifiers)
    patience: int = 0  # stop when best_by has not improved for this many evaluations (0 = never)
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
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate the model (ddp) or shard it (fsdp, FSDP2)
    activation_checkpointing: bool = False  # recompute each layer in the backward pass: less memory, ≈1/3 more compute
    seed: int = 1234
    init_from: str = ""  # fine-tuning: a model directory whose weights (and model config) the run starts from

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]  # a YAML list
        self.validate()

    def validate(self) -> None:
        """Refuse values that would crash later (a division by zero) or lose work (keep_last 0)."""
        _check_literals(self)
        for name in ("save_every", "eval_every", "log_every", "update_freq", "keep_last", "max_tokens", "batch_size",
                     "eval_beam"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "max_epochs", "max_minutes", "block_size", "eval_bleu_sentences", "eval_lm_tokens",
                     "threads", "warmup", "weight_decay", "clip_norm", "min_lr", "patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must not be negative, got {getattr(self, name)}")
        if self.lr_schedule == "inverse_sqrt" and self.warmup < 1:
            raise ConfigError("train.warmup must be at least 1 with lr_schedule inverse_sqrt (equation 3 divides by it)")
        if self.best_by == "val_bleu" and self.eval_bleu_sentences == 0:
            raise ConfigError("train.best_by: val_bleu needs train.eval_bleu_sentences > 0 (the dev sentences translated)")
        if not self.lr > 0 or not self.lr_scale > 0:
            raise ConfigError("train.lr and train.lr_scale must be positive")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas) or not self.adam_eps > 0:
            raise ConfigError("train.adam_betas must be two numbers in [0, 1) and train.adam_eps positive")
        if self.parallel == "fsdp" and self.compile:
            raise ConfigError("train.compile with train.parallel: fsdp is not supported; use one of them")
        if self.parallel == "fsdp" and self.optimizer == "muon":
            raise ConfigError("train.optimizer: muon with train.parallel: fsdp is not supported (Muon orthogonalises "
                              "whole matrices, FSDP holds slices of them); use adam, or parallel: ddp")
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


def _fine_tuned_model(directory: str, model_raw: dict[str, Any]) -> dict[str, Any]:
    """``train.init_from``: the model is the one in ``directory`` (its config.json), with only the fields
    the run's ``model:`` section names changed (dropout, say). Its weights are loaded by the trainer."""
    from .train.checkpoint import CheckpointError, read_config

    if "preset" in model_raw:
        raise ConfigError(f"model.preset with train.init_from: the model comes from {directory}; set only the fields "
                          "to change (e.g. model.dropout)")
    try:
        base = read_config(directory)["model"]
    except CheckpointError as e:
        raise ConfigError(f"train.init_from: {directory} is not a model directory aiayn wrote ({e})") from None
    return {**base, **model_raw}


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
    init_from = (raw.get("train") or {}).get("init_from")
    if init_from:
        model_raw = _fine_tuned_model(str(init_from), model_raw)
    name = model_raw.pop("preset", None)
    model = preset(name, **model_raw) if name else from_dict(ModelConfig, model_raw, where="model")
    train = from_dict(TrainConfig, dict(raw.get("train") or {}), where="train")
    return RunConfig(model, train)


__all__ = [
    "PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID", "ConfigError", "ModelConfig", "PRESETS", "LANGUAGE_MODELS", "TRANSLATION_MODELS",
    "MASKED_LANGUAGE_MODELS",
    "from_dict", "to_dict", "preset", "parse_overrides", "merge", "estimate_parameters", "PrepareConfig",
    "DecodeConfig", "SampleConfig", "Limits", "Word2VecConfig", "option", "REQUIRED", "TrainConfig", "RunConfig",
    "load_run_config",
]
