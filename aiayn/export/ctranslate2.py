"""Export an encoder-decoder (``ctranslate2.Translator``) or a decoder-only language model
(``ctranslate2.Generator``) to CTranslate2 through its Python model specs.

Exact: CTranslate2 accepts the positional encodings as a table, so the paper's interleaved sinusoids
are written as they are (no permutation of the model dimension is needed), along with the fused
Q/K/V projections, both norm placements, √d_model embedding scaling and the tied output matrix.
The vocabulary's own files (``spm.model`` for SentencePiece) are written beside ``model.bin``, so the
directory is all a CTranslate2 user needs (docs/inference.md shows the few lines that run it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_directory
from ..config import BOS_ID, EOS_ID, UNK_ID
from . import ExportError, check_full_attention


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().copy()


def _linear(spec, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    spec.weight = _np(weight)
    if bias is not None:
        spec.bias = _np(bias)


def _norm(spec, ln) -> None:
    spec.gamma = _np(ln.weight)
    spec.beta = _np(ln.bias) if ln.bias is not None else np.zeros(ln.weight.shape, dtype=np.float32)


def _self_attention(spec, attn, norm) -> None:
    """Fused [W^Q; W^K; W^V] and W^O, with the sub-layer's LayerNorm."""
    _norm(spec.layer_norm, norm)
    _linear(spec.linear[0], attn.in_proj.weight, attn.in_proj.bias)
    _linear(spec.linear[1], attn.out_proj.weight, attn.out_proj.bias)


def _ffn(spec, layer) -> None:
    _norm(spec.layer_norm, layer.res_ffn.norm)
    _linear(spec.linear_0, layer.ffn.w1.weight, layer.ffn.w1.bias)
    _linear(spec.linear_1, layer.ffn.w2.weight, layer.ffn.w2.bias)


def to_ctranslate2(model, vocab, out: str | Path, quantization: str | None = None, max_positions: int = 1024,
                   overwrite: bool = False) -> Path:
    """Write ``model`` as a CTranslate2 model directory (a new one, or with ``overwrite`` one that aiayn
    exported before): an encoder-decoder for ``ctranslate2.Translator``, a decoder-only language model for
    ``ctranslate2.Generator``."""
    cfg = model.cfg
    if cfg.arch not in ("encoder-decoder", "decoder-only"):
        raise ExportError(f"{cfg.arch} models cannot be exported to CTranslate2 (encoder-decoder and decoder-only can)")
    check_full_attention(cfg, "CTranslate2")
    pieces = vocab.pieces(range(len(vocab)))
    if cfg.arch == "decoder-only":
        spec = _decoder_only_spec(model, max_positions)
        spec.register_vocabulary(pieces)
    else:
        spec = _encoder_decoder_spec(model, max_positions)
        spec.register_source_vocabulary(pieces)
        spec.register_target_vocabulary(vocab.pieces(range(cfg.target_vocab_size), side="target"))
        spec.config.add_source_eos = True  # aiayn's source is x </s>
        spec.config.decoder_start_token = vocab.pieces([BOS_ID], side="target")[0]
    target = vocab.pieces([UNK_ID, BOS_ID, EOS_ID], side="target")  # the specials as the target side names them
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = target
    spec.config.layer_norm_epsilon = cfg.ln_eps
    spec.validate()
    spec.optimize(quantization=quantization)
    with atomic_directory(out, overwrite=overwrite, what="export directory") as tmp:
        spec.save(str(tmp))
        vocab.save(tmp)  # the tokenizer beside the model (spm.model, chars.json or pieces.json + *.spm)
    return Path(out)


def _activation(cfg):
    from ctranslate2.specs import common_spec

    A = common_spec.Activation
    return {"relu": A.RELU, "gelu": A.GELU, "silu": A.SWISH}[cfg.activation]


def _position_table(cfg, max_positions: int, positional) -> np.ndarray:
    """What CTranslate2 adds to the embeddings: the sinusoids, a learned table, or zeros (no positions)."""
    from ..model.layers import sinusoidal_table

    if cfg.positional == "sinusoidal":
        return _np(sinusoidal_table(max_positions, cfg.d_model, cfg.pe_layout))
    if cfg.positional == "learned":
        return _np(positional.table.weight[:max_positions])
    return np.zeros((max_positions, cfg.d_model), np.float32)


def _output(spec, model) -> None:
    _linear(spec.projection, model.output.matrix, model.output.bias)


def _encoder_decoder_spec(model, max_positions: int):
    from ctranslate2.specs import transformer_spec

    cfg = model.cfg
    if cfg.positional in ("learned", "rope"):
        raise ExportError(f"{cfg.positional} positions are not supported by this exporter yet")
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.n_encoder_layers, cfg.n_decoder_layers), cfg.n_heads, pre_norm=cfg.norm == "pre", activation=_activation(cfg))
    d = cfg.d_model
    enc, dec = model.encoder, model.decoder
    table = _position_table(cfg, max_positions, enc.input.positional)
    spec.encoder.embeddings[0].weight = _np(enc.input.embedding.weight)
    spec.encoder.scale_embeddings = cfg.scale_embeddings
    spec.encoder.position_encodings.encodings = table
    for s, layer in zip(spec.encoder.layer, enc.layers):
        _self_attention(s.self_attention, layer.self_attn, layer.res_attn.norm)
        _ffn(s.ffn, layer)
    spec.decoder.embeddings.weight = _np(dec.input.embedding.weight)
    spec.decoder.scale_embeddings = cfg.scale_embeddings
    spec.decoder.position_encodings.encodings = table
    for s, layer in zip(spec.decoder.layer, dec.layers):
        _self_attention(s.self_attention, layer.self_attn, layer.res_self.norm)
        _norm(s.attention.layer_norm, layer.res_cross.norm)
        c = layer.cross_attn
        _linear(s.attention.linear[0], c.in_proj.weight[:d], None if c.in_proj.bias is None else c.in_proj.bias[:d])
        _linear(s.attention.linear[1], c.in_proj.weight[d:], None if c.in_proj.bias is None else c.in_proj.bias[d:])
        _linear(s.attention.linear[2], c.out_proj.weight, c.out_proj.bias)
        _ffn(s.ffn, layer)
    _output(spec.decoder, model)
    if cfg.norm == "pre":
        _norm(spec.encoder.layer_norm, enc.norm)
        _norm(spec.decoder.layer_norm, dec.norm)
    return spec


def _decoder_only_spec(model, max_positions: int):
    """A GPT-style language model: CTranslate2's decoder spec with either norm placement, sinusoidal,
    learned or no positions added to the embeddings, or rotary positions on the whole head in aiayn's
    halves layout (``rotary_interleave=False``, like GPT-NeoX and Llama)."""
    from ctranslate2.specs import transformer_spec

    cfg = model.cfg
    rope = cfg.positional == "rope"
    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        cfg.n_decoder_layers, cfg.n_heads, pre_norm=cfg.norm == "pre", activation=_activation(cfg),
        rotary_dim=0 if rope else None, rotary_interleave=False, rotary_base=cfg.rope_base)
    dec = model.decoder
    spec.decoder.embeddings.weight = _np(dec.input.embedding.weight)
    spec.decoder.scale_embeddings = cfg.scale_embeddings
    if not rope:
        spec.decoder.position_encodings.encodings = _position_table(cfg, max_positions, dec.input.positional)
    for s, layer in zip(spec.decoder.layer, dec.layers):
        _self_attention(s.self_attention, layer.self_attn, layer.res_self.norm)
        _ffn(s.ffn, layer)
    _output(spec.decoder, model)
    if cfg.norm == "pre":
        _norm(spec.decoder.layer_norm, dec.norm)
    return spec
