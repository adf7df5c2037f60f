"""The model family: pure ``nn.Module``s configured by :class:`~aiayn.config.ModelConfig`.

This package imports nothing from data, training, decoding or serving.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..config import ConfigError, ModelConfig, estimate_parameters
from .attention import ATTENTION_RECORDER, AttentionRecord, KVCache, MultiHeadAttention, attention
from .encoder_only import EncoderModel
from .layers import sinusoidal_table
from .lm import LanguageModel
from .ngram import NGramLM
from .recurrent_lm import MLPLanguageModel, RNNLanguageModel
from .recurrent_mt import AdditiveAttention, RNNSearch, RNNSeq2Seq
from .transformer import DecoderState, Transformer, padding_mask

Model = Transformer | LanguageModel | EncoderModel | NGramLM | MLPLanguageModel | RNNLanguageModel | RNNSeq2Seq | RNNSearch


# The class of each ``ModelConfig.arch``: the Transformer family (§3), then the lineage (docs/lineage.md).
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "encoder-decoder": Transformer, "decoder-only": LanguageModel, "encoder-only": EncoderModel,
    "ngram": NGramLM, "mlp-lm": MLPLanguageModel, "rnn-lm": RNNLanguageModel,
    "rnn-seq2seq": RNNSeq2Seq, "rnnsearch": RNNSearch,
}


def build_model(cfg: ModelConfig) -> Model:
    """The model ``cfg.arch`` names. A shape whose float32 weights alone would not fit in this
    machine's memory is refused before anything is allocated."""
    check_fits_in_memory(cfg)
    return ARCHITECTURES[cfg.arch](cfg)


def check_fits_in_memory(cfg: ModelConfig) -> None:
    """Raise :class:`~aiayn.config.ConfigError` when ``cfg``'s float32 weights exceed physical memory."""
    n = estimate_parameters(cfg)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: only the absurd is refused
        total = 1 << 44
    if 4 * n > total:
        raise ConfigError(f"this model shape has about {n:,} parameters ({4 * n / 2**30:,.1f} GiB in float32), "
                          f"more than this machine's {total / 2**30:,.1f} GiB of memory: check vocab_size, d_model, "
                          "d_ff and the numbers of layers")


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied matrix counts once; frozen ones count too)."""
    return sum(p.numel() for p in model.parameters())


def parameter_breakdown(model: nn.Module) -> OrderedDict[str, int]:
    """Parameters per component, each shared tensor counted once, where it first appears.

    For the encoder-decoder with three-way tying (§3.4) the components are:

    * ``embedding``: V·d (one matrix: source, target and pre-softmax);
    * each encoder layer: self-attention 4·(d² + d) + FFN (2·d·d_ff + d_ff + d) + 2 LayerNorms (2·2d);
    * each decoder layer: two attentions 2·4·(d² + d) + FFN + 3 LayerNorms (3·2d);
    * a final LayerNorm per stack only with pre-LN, and a separate output matrix only with tie=none.

    paper-base, V = 37,000: 18.94M + 6·3.15M + 6·4.20M = 63.08M. The paper's Table 3 says 65M (its
    exact vocabulary size and counting are not given); paper-big gives 214.2M against Table 3's 213M.
    """
    seen: set[int] = set()
    out: OrderedDict[str, int] = OrderedDict()

    def add(name: str, module: nn.Module) -> None:
        n = 0
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        if n:
            out[name] = out.get(name, 0) + n

    for stack_name in ("encoder", "decoder"):
        stack = getattr(model, stack_name, None)
        if stack is None:
            continue
        add(f"{stack_name} embedding", stack.input.embedding)  # a shared one counts under the first stack
        add(f"{stack_name} positional", stack.input.positional)
        for i, layer in enumerate(stack.layers):
            add(f"{stack_name} layer {i}", layer)
        add(f"{stack_name} final norm", stack.norm)
    for name, module in model.named_children():
        if name not in ("encoder", "decoder"):
            add(name, module)
    return out


@contextmanager
def recording_attention(model: nn.Module) -> Iterator[AttentionRecord]:
    """Within the block, forward passes of ``model`` *made by this thread or task* take the reference path
    (equation 1 written out) and record their weights; nothing about the model changes, so other threads
    decoding with the same model at the same time are unaffected.

    Yields a dict that a forward pass fills: ``{layer name: weights (B, h, T_q, T_k)}``, e.g.
    ``"decoder.layers.1.cross_attn"``.
    """
    kinds = (MultiHeadAttention, AdditiveAttention)
    record = AttentionRecord({id(m): n for n, m in model.named_modules() if isinstance(m, kinds)})
    token = ATTENTION_RECORDER.set(record)
    try:
        yield record
    finally:
        ATTENTION_RECORDER.reset(token)


def device_of(model: nn.Module) -> torch.device:
    """Where ``model`` lives: its first parameter's device, or its first buffer's (a counted n-gram model has
    only buffers), or the CPU."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def set_attention_impl(model: nn.Module, impl: str) -> None:
    """``"sdpa"`` (fast path) or ``"reference"`` (equation 1 written out) for every attention layer."""
    if impl not in ("sdpa", "reference"):
        raise ValueError(f"attention implementation must be 'sdpa' or 'reference', got {impl!r}")
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.impl = impl


__all__ = [
    "Model", "ARCHITECTURES", "build_model", "count_parameters", "parameter_breakdown", "recording_attention",
    "set_attention_impl", "device_of", "Transformer", "LanguageModel", "NGramLM", "MLPLanguageModel", "RNNLanguageModel",
    "RNNSeq2Seq", "RNNSearch", "EncoderModel", "DecoderState", "KVCache",
    "MultiHeadAttention", "attention", "padding_mask", "sinusoidal_table",
]
