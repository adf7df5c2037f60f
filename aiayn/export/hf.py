"""Export an encoder-decoder to a Hugging Face ``transformers`` model directory (``save_pretrained`` layout).

Which class: a post-LN model (the paper's) becomes a ``MarianMTModel``; a pre-LN model becomes a
``PegasusForConditionalGeneration``, which is the same network with the norm before each sub-layer and a
final LayerNorm on each stack (Marian has no pre-LN variant). Both use sinusoidal positions with the
paper's frequencies but in the *concatenated* layout (all sines, then all cosines), √d_model embedding
scaling, and one matrix shared by the two embeddings and the output layer.

Exact, by permuting the model dimension. The paper's encodings are interleaved (sin, cos, sin, cos …); HF's
are [sin … | cos …]. Any fixed permutation P of the d_model coordinates of the residual stream leaves the
network's function unchanged if it is applied consistently: every matrix that *reads* the stream has its
input columns permuted, every matrix and bias that *writes* it has its rows permuted, LayerNorm's gain and
bias are permuted (LayerNorm is permutation-equivariant), and the embeddings' columns are permuted. With
P = [0, 2, 4, …, 1, 3, 5, …] the permuted interleaved table *is* HF's table. Head-internal dimensions
(queries, keys, values, the feed-forward's inner layer) are untouched.

One thing cannot be carried over: HF's LayerNorm ε is fixed at 1e-5, aiayn's default is 1e-6. The
difference is far below anything that changes a decision in tests (greedy tokens are compared there);
a model trained with ``ln_eps: 1e-5`` exports bit-for-bit in function.

Tokenizer files: the joint SentencePiece model is written as ``source.spm`` / ``target.spm`` with a
``vocab.json`` in aiayn's id order, for ``MarianTokenizer`` (which, like aiayn, appends ``</s>`` to the
source). Decoding starts from ``<s>`` (``decoder_start_token_id`` = 2), as aiayn's decoder does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import atomic_directory
from ..config import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from . import ExportError, check_full_attention


def interleaved_to_concat(d_model: int) -> Tensor:
    """The permutation P with table_concat = table_interleaved[:, P]: even coordinates, then odd ones."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def _hf_config(cfg, pre_norm: bool):
    common = dict(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, encoder_layers=cfg.n_encoder_layers, decoder_layers=cfg.n_decoder_layers,
        encoder_attention_heads=cfg.n_heads, decoder_attention_heads=cfg.n_heads, encoder_ffn_dim=cfg.d_ff,
        decoder_ffn_dim=cfg.d_ff, activation_function=cfg.activation, max_position_embeddings=cfg.max_positions,
        scale_embedding=cfg.scale_embeddings, dropout=cfg.dropout, attention_dropout=cfg.attn_dropout,
        activation_dropout=cfg.act_dropout, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        decoder_start_token_id=BOS_ID, forced_eos_token_id=EOS_ID, tie_word_embeddings=True,
    )
    if pre_norm:
        from transformers import PegasusConfig

        return PegasusConfig(**common)
    from transformers import MarianConfig

    return MarianConfig(decoder_vocab_size=cfg.vocab_size, share_encoder_decoder_embeddings=True, **common)


def hf_state_dict(model) -> dict[str, Tensor]:
    """aiayn's parameters under HF Marian/Pegasus names, with the model dimension permuted (see module doc)."""
    cfg = model.cfg
    d = cfg.d_model
    P = interleaved_to_concat(d) if cfg.pe_layout == "interleaved" else torch.arange(d)
    sd: dict[str, Tensor] = {}

    def vec(t: Tensor | None, n: int) -> Tensor:
        return torch.zeros(n) if t is None else t.detach().float()

    def reads(name: str, w: Tensor, b: Tensor | None) -> None:  # stream → somewhere: permute input columns
        sd[name + ".weight"] = w.detach().float()[:, P]
        sd[name + ".bias"] = vec(b, w.shape[0])

    def writes(name: str, w: Tensor, b: Tensor | None) -> None:  # somewhere → stream: permute output rows
        sd[name + ".weight"] = w.detach().float()[P, :]
        sd[name + ".bias"] = vec(b, w.shape[0])[P]

    def norm(name: str, ln) -> None:
        sd[name + ".weight"] = ln.weight.detach().float()[P]
        sd[name + ".bias"] = vec(ln.bias, d)[P]

    def attention(name: str, attn) -> None:
        w, b = attn.in_proj.weight, attn.in_proj.bias
        for i, p in enumerate("qkv"):
            reads(f"{name}.{p}_proj", w[i * d:(i + 1) * d], None if b is None else b[i * d:(i + 1) * d])
        writes(f"{name}.out_proj", attn.out_proj.weight, attn.out_proj.bias)

    def ffn(name: str, layer) -> None:
        reads(f"{name}.fc1", layer.ffn.w1.weight, layer.ffn.w1.bias)
        writes(f"{name}.fc2", layer.ffn.w2.weight, layer.ffn.w2.bias)
        norm(f"{name}.final_layer_norm", layer.res_ffn.norm)

    enc, dec = model.encoder, model.decoder
    emb = enc.input.embedding.weight.detach().float()[:, P]
    for name in ("model.shared", "model.encoder.embed_tokens", "model.decoder.embed_tokens", "lm_head"):
        sd[name + ".weight"] = emb
    sd["model.encoder.embed_positions.weight"] = _positions(enc.input.positional, cfg.max_positions)[:, P]
    sd["model.decoder.embed_positions.weight"] = _positions(dec.input.positional, cfg.max_positions)[:, P]
    for i, layer in enumerate(enc.layers):
        p = f"model.encoder.layers.{i}"
        attention(f"{p}.self_attn", layer.self_attn)
        norm(f"{p}.self_attn_layer_norm", layer.res_attn.norm)
        ffn(p, layer)
    for i, layer in enumerate(dec.layers):
        p = f"model.decoder.layers.{i}"
        attention(f"{p}.self_attn", layer.self_attn)
        norm(f"{p}.self_attn_layer_norm", layer.res_self.norm)
        attention(f"{p}.encoder_attn", layer.cross_attn)
        norm(f"{p}.encoder_attn_layer_norm", layer.res_cross.norm)
        ffn(p, layer)
    if cfg.norm == "pre":
        norm("model.encoder.layer_norm", enc.norm)
        norm("model.decoder.layer_norm", dec.norm)
    bias = model.output.bias
    sd["final_logits_bias"] = torch.zeros(1, cfg.vocab_size) if bias is None else bias.detach().float()[None].clone()
    return sd


def _positions(pe, n: int) -> Tensor:
    """The (n, d) table a PositionalEncoding adds: the sinusoids, or a learned table (HF loads it as a weight)."""
    if pe.kind == "none":
        return torch.zeros(n, pe.d_model)
    if pe.kind == "learned":
        return pe.table.weight.detach().float()[:n].clone()
    from ..model.layers import sinusoidal_table

    return sinusoidal_table(n, pe.d_model, pe.layout)


def to_hf(model, vocab, out: str | Path, overwrite: bool = False):
    """Write ``model`` as a HF ``MarianMTModel`` (post-LN) or ``PegasusForConditionalGeneration`` (pre-LN)
    directory with tokenizer files (a new one, or with ``overwrite`` one that aiayn exported before);
    returns the HF model (in eval mode)."""
    cfg = model.cfg
    if cfg.arch != "encoder-decoder":
        raise ExportError("only encoder-decoder models can be exported to Hugging Face here")
    if cfg.tie != "three_way" or cfg.tgt_vocab_size:
        raise ExportError("HF export needs a shared vocabulary with three-way tying (tie: three_way)")
    if cfg.positional == "rope":
        raise ExportError("Marian and Pegasus add positions to the embeddings: rope positions cannot be exported to them")
    check_full_attention(cfg, "Hugging Face Marian/Pegasus")
    pre = cfg.norm == "pre"
    if pre:
        from transformers import PegasusForConditionalGeneration as HFModel
    else:
        from transformers import MarianMTModel as HFModel
    hf = HFModel(_hf_config(cfg, pre))
    sd = hf_state_dict(model)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in sd]
    if missing or unexpected:
        raise ExportError(f"HF parameter names did not match (missing {missing[:5]}, unexpected {unexpected[:5]})")
    hf.eval()
    hf.generation_config.update(num_beams=4, bad_words_ids=[[PAD_ID]])
    with atomic_directory(out, overwrite=overwrite, what="export directory") as tmp:
        hf.save_pretrained(tmp)
        _write_tokenizer(vocab, tmp)
    return hf


def _write_tokenizer(vocab, out: Path) -> None:
    """MarianTokenizer files: the SentencePiece model of each side (one joint model serves both; an imported
    Marian model keeps its two) and the piece → id map in aiayn's order."""
    proto = getattr(vocab, "proto", None)
    protos = getattr(vocab, "protos", None) or ((proto, proto) if proto is not None else None)
    if protos is None:  # a character vocabulary: nothing HF's tokenizers can load; the weights are still usable
        (out / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(vocab.pieces(range(len(vocab))))},
                                                   ensure_ascii=False))
        return
    for name, side in zip(("source.spm", "target.spm"), protos):
        (out / name).write_bytes(side)
    pieces = vocab.pieces(range(len(vocab)))
    (out / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}, ensure_ascii=False, indent=0))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "MarianTokenizer", "unk_token": pieces[UNK_ID], "eos_token": pieces[EOS_ID],
        "pad_token": pieces[PAD_ID], "model_max_length": 512, "separate_vocabs": False}, indent=2))
