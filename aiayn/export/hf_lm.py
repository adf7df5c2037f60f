"""Export a decoder-only language model to a Hugging Face causal-LM directory (``save_pretrained`` layout).

Which class: with learned positions, ``GPT2LMHeadModel`` (GPT-2 is the same network: pre-LN, learned
positions, tied input and output embeddings, no embedding scaling — nanoGPT's choices); with rotary
positions, ``GPTNeoXForCausalLM`` with ``use_parallel_residual=False`` (sequential residuals, as here)
and rotary embeddings on every dimension of a head in the halves layout aiayn's :class:`Rotary` uses.
Exact in function (tested: equal logits, and the same greedy continuation token for token).

What the two families cannot express is refused: post-LN (both normalise before each sub-layer),
sinusoidal or no positions, embeddings scaled by √d_model, untied output layers for GPT-2, restricted
attention, smaller keys.

GPT-2 stores its projections as ``Conv1D`` (weights transposed: in × out); GPT-NeoX stacks queries, keys
and values per head ((h, 3, d_k) rows), where aiayn stacks them per kind ((3, h, d_k) rows).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import atomic_directory
from ..config import EOS_ID, PAD_ID
from . import ExportError, check_full_attention


def _layer_keys(i: int) -> dict[str, str]:
    p = f"decoder.layers.{i}."
    return {"ln1": p + "res_self.norm", "qkv": p + "self_attn.in_proj", "out": p + "self_attn.out_proj",
            "ln2": p + "res_ffn.norm", "fc1": p + "ffn.w1", "fc2": p + "ffn.w2"}


def _get(sd: dict[str, Tensor], name: str, like: str | None = None) -> Tensor:
    """A weight, or zeros shaped like ``like`` where the model has no bias."""
    if name in sd:
        return sd[name].detach().float().clone()
    if like is None:
        raise ExportError(f"the model has no {name}")
    return torch.zeros(sd[like].shape[0])


def _copy(out: dict[str, Tensor], sd: dict[str, Tensor], theirs: str, ours: str, transpose: bool = False) -> None:
    """``ours``.weight and .bias (zeros where the model has none) as ``theirs``.weight and .bias."""
    w = _get(sd, ours + ".weight")
    out[theirs + ".weight"] = w.T.contiguous() if transpose else w  # GPT-2's Conv1D stores (in, out)
    out[theirs + ".bias"] = _get(sd, ours + ".bias", ours + ".weight")


def gpt2_state_dict(model) -> dict[str, Tensor]:
    sd, cfg = model.state_dict(), model.cfg
    out = {"transformer.wte.weight": _get(sd, "decoder.input.embedding.weight"),
           "transformer.wpe.weight": _get(sd, "decoder.input.positional.table.weight")}
    _copy(out, sd, "transformer.ln_f", "decoder.norm")
    for i in range(cfg.n_decoder_layers):
        k, h = _layer_keys(i), f"transformer.h.{i}."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            _copy(out, sd, h + theirs, k[ours])
        for ours, theirs in (("qkv", "attn.c_attn"), ("out", "attn.c_proj"), ("fc1", "mlp.c_fc"), ("fc2", "mlp.c_proj")):
            _copy(out, sd, h + theirs, k[ours], transpose=True)
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def neox_state_dict(model) -> dict[str, Tensor]:
    sd, cfg = model.state_dict(), model.cfg
    h_, dk, d = cfg.n_heads, cfg.d_k, cfg.d_model
    emb = _get(sd, "decoder.input.embedding.weight")
    out = {"gpt_neox.embed_in.weight": emb, "lm_head.weight": emb.clone()}
    _copy(out, sd, "gpt_neox.final_layer_norm", "decoder.norm")
    for i in range(cfg.n_decoder_layers):
        k, p = _layer_keys(i), f"gpt_neox.layers.{i}."
        for ours, theirs in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm"), ("out", "attention.dense"),
                             ("fc1", "mlp.dense_h_to_4h"), ("fc2", "mlp.dense_4h_to_h")):
            _copy(out, sd, p + theirs, k[ours])
        # GPT-NeoX stacks q, k, v per head ((h, 3, d_k) rows); aiayn per kind ((3, h, d_k) rows).
        w = _get(sd, k["qkv"] + ".weight").view(3, h_, dk, d).transpose(0, 1).reshape(3 * d, d)
        b = _get(sd, k["qkv"] + ".bias", k["qkv"] + ".weight").view(3, h_, dk).transpose(0, 1).reshape(3 * d)
        out[p + "attention.query_key_value.weight"], out[p + "attention.query_key_value.bias"] = w.contiguous(), b.contiguous()
    return out


def _check(cfg) -> str:
    if cfg.arch != "decoder-only":
        raise ExportError("only decoder-only language models export to a Hugging Face causal LM")
    if cfg.norm != "pre":
        raise ExportError("GPT-2 and GPT-NeoX normalise before each sub-layer: a post-LN model cannot be exported to them")
    if cfg.scale_embeddings:
        raise ExportError("GPT-2 and GPT-NeoX do not scale embeddings by √d_model (scale_embeddings: false)")
    if cfg.tie == "none":
        raise ExportError("this exporter writes tied input and output embeddings (tie: two_way or three_way)")
    if cfg.output_bias:
        raise ExportError("GPT-2 and GPT-NeoX have no bias on the output layer (output_bias: false)")
    check_full_attention(cfg, "Hugging Face GPT-2/GPT-NeoX")
    if cfg.positional == "learned":
        return "gpt2"
    if cfg.positional == "rope":
        return "neox"
    raise ExportError(f"{cfg.positional} positions: GPT-2 has learned positions and GPT-NeoX rotary ones; neither has these")


def to_hf_causal_lm(model, vocab, out: str | Path, overwrite: bool = False):
    """Write ``model`` (decoder-only) as ``GPT2LMHeadModel`` (learned positions) or ``GPTNeoXForCausalLM``
    (rotary positions) with aiayn's vocabulary; returns the HF model (in eval mode)."""
    cfg = model.cfg
    kind = _check(cfg)
    act = cfg.activation  # relu, gelu (exact) and silu carry these names in transformers' ACT2FN
    if kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2LMHeadModel(GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.max_positions, n_embd=cfg.d_model, n_layer=cfg.n_decoder_layers,
            n_head=cfg.n_heads, n_inner=cfg.d_ff, activation_function=act, layer_norm_epsilon=cfg.ln_eps,
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.attn_dropout, bos_token_id=EOS_ID,
            eos_token_id=EOS_ID, pad_token_id=PAD_ID, tie_word_embeddings=True))
        sd = gpt2_state_dict(model)
    else:
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        hf = GPTNeoXForCausalLM(GPTNeoXConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_decoder_layers,
            num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_ff, hidden_act=act, layer_norm_eps=cfg.ln_eps,
            max_position_embeddings=cfg.max_positions, use_parallel_residual=False, attention_bias=True,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base, "partial_rotary_factor": 1.0},
            hidden_dropout=cfg.dropout, attention_dropout=cfg.attn_dropout, bos_token_id=EOS_ID, eos_token_id=EOS_ID,
            pad_token_id=PAD_ID, tie_word_embeddings=False))
        sd = neox_state_dict(model)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in sd and not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise ExportError(f"HF parameter names did not match (missing {missing[:5]}, unexpected {unexpected[:5]})")
    hf.eval()
    with atomic_directory(out, overwrite=overwrite, what="export directory") as tmp:
        hf.save_pretrained(tmp)
        (tmp / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(vocab.pieces(range(len(vocab))))},
                                                   ensure_ascii=False))
        vocab.save(tmp)  # aiayn's own vocabulary file (chars.json or spm.model): encode prompts with it
    return hf
