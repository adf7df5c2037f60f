"""Import a Hugging Face ``MarianMTModel`` (OPUS-MT, or ``aiayn export --to hf``) or ``PegasusForConditionalGeneration``
directory as an aiayn model directory: ``aiayn import --from hf DIR OUT``.

The network is the paper's encoder-decoder with three things named in its configuration: sinusoids in
the *concatenated* layout (``pe_layout: concat``: all sines, then all cosines, with the paper's
frequencies — Marian's table), LayerNorm ε = 1e-5 (PyTorch's default, which HF uses) and, where the model
has a non-zero ``final_logits_bias``, a bias on the output layer (``output_bias``). OPUS-MT models use
the SiLU ("swish") activation (``activation: silu``). Post-LN (Marian) or pre-LN with a final LayerNorm
per stack (Pegasus). Weights are copied, never permuted: the function is the same up to float rounding.

Token ids. aiayn fixes 0 = <pad>, 1 = <unk>, 2 = <s> (where decoding starts), 3 = </s>; a Marian model
names its own (OPUS-MT: </s> = 0, <unk> = 1, <pad> = V−1, and decoding starts from <pad>). The importer
reorders the embedding rows (and the output bias) into aiayn's order and keeps the piece list in that
order (:class:`~aiayn.data.vocab.PieceVocab`, with the model's ``source.spm`` and ``target.spm``). When
decoding starts from the padding token, that one row of the Marian model is needed twice in aiayn's
order, as <pad> and as <s>: the <pad> copy gets an output bias of −10⁴ so that it takes no probability
(exp(−10⁴) is 0 in float32), and the softmax is exactly Marian's. Neither token is ever emitted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import BOS_ID, PAD_ID, ModelConfig
from . import ImportRefused

log = logging.getLogger(__name__)

ABSENT_LOGIT = -1.0e4  # the output bias of a row kept only as padding: no probability, finite loss
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "silu", "silu": "silu"}  # HF name → aiayn's (the same functions)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ImportRefused(f"{path.parent}: no {path.name} ({what})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImportRefused(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ImportRefused(f"{path}: expected a JSON object")
    return data


def model_config(hf: dict[str, Any], vocab_size: int, output_bias: bool, target_size: int | None = None) -> ModelConfig:
    """The aiayn configuration of a Marian/Pegasus ``config.json``; anything aiayn's encoder-decoder
    cannot compute the same way is refused with the reason. ``target_size``: the target vocabulary's size
    when the model has its own embeddings per side (``share_encoder_decoder_embeddings: false``)."""
    kind = hf.get("model_type")
    if kind not in ("marian", "pegasus"):
        raise ImportRefused(f"model_type {kind!r}: this importer reads Marian (OPUS-MT) and Pegasus translation models")

    def same(a: str, b: str) -> Any:
        if hf.get(a) != hf.get(b):
            raise ImportRefused(f"{a} = {hf.get(a)} but {b} = {hf.get(b)}: aiayn's encoder and decoder share this size")
        return hf[a]

    heads, d_ff = same("encoder_attention_heads", "decoder_attention_heads"), same("encoder_ffn_dim", "decoder_ffn_dim")
    shared = hf.get("share_encoder_decoder_embeddings", True) is not False
    if shared != (target_size is None):
        raise ImportRefused("share_encoder_decoder_embeddings disagrees with the tokenizer's vocabularies")
    act = ACTIVATIONS.get(hf.get("activation_function", "gelu"))
    if act is None:
        raise ImportRefused(f"activation_function {hf.get('activation_function')!r}: aiayn has relu, gelu and silu (swish)")
    if hf.get("normalize_embedding") or hf.get("layernorm_embedding"):
        raise ImportRefused("a LayerNorm on the embeddings (normalize_embedding) is not part of aiayn's model")
    if hf.get("static_position_embeddings") is False:
        raise ImportRefused("learned position embeddings in a Marian model are not supported (static_position_embeddings: false)")
    pre = kind == "pegasus"
    if hf.get("normalize_before") is not None and bool(hf["normalize_before"]) != pre:
        raise ImportRefused(f"normalize_before = {hf['normalize_before']} in a {kind} model is not supported")
    return ModelConfig(
        arch="encoder-decoder", vocab_size=vocab_size, d_model=hf["d_model"], d_ff=d_ff, n_heads=heads,
        n_encoder_layers=hf["encoder_layers"], n_decoder_layers=hf["decoder_layers"],
        dropout=float(hf.get("dropout", 0.1)), attn_dropout=float(hf.get("attention_dropout", 0.0)),
        act_dropout=float(hf.get("activation_dropout", 0.0)), norm="pre" if pre else "post", pe_layout="concat",
        activation=act, tgt_vocab_size=target_size,
        tie=("three_way" if shared else "two_way") if hf.get("tie_word_embeddings", True) else "none",
        scale_embeddings=bool(hf.get("scale_embedding", False)), ln_eps=1e-5,
        max_positions=int(hf.get("max_position_embeddings", 1024)), output_bias=output_bias,
    )


def load_weights(directory: Path) -> dict[str, Tensor]:
    """The checkpoint's tensors by name: ``model.safetensors`` (or its shards), else ``pytorch_model.bin``
    read with ``weights_only=True`` (tensors only: no code in the file is run)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    files: list[Path] = []
    if (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    elif index.is_file():  # a sharded checkpoint: every file the index names
        files = [directory / f for f in sorted(set(_read_json(index, "shard index").get("weight_map", {}).values()))]
    out: dict[str, Tensor] = {}
    try:
        for f in files:
            out.update(load_file(str(f)))
    except (SafetensorError, OSError) as e:
        raise ImportRefused(f"{directory}: cannot read the weights ({e})") from None
    if files:
        return out
    binary = directory / "pytorch_model.bin"
    if not binary.is_file():
        raise ImportRefused(f"{directory}: no model.safetensors or pytorch_model.bin "
                            "(TensorFlow and Flax weights are not read)")
    try:
        return torch.load(binary, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means the same to the user: not a tensor-only file
        raise ImportRefused(f"{binary}: cannot read it as tensors only ({type(e).__name__}: {e})") from None


def id_order(hf: dict[str, Any], vocab: dict[str, int], tokens: dict[str, Any]) -> tuple[list[int], list[str]]:
    """aiayn id → the HF id it takes its row from, and aiayn's piece list. The specials come first
    (pad, unk, the decoder's start, eos), then every other HF id in order. When the start token is the
    padding token, its row appears twice and aiayn names the start ``<s>``."""
    pad, eos, start = hf.get("pad_token_id"), hf.get("eos_token_id"), hf.get("decoder_start_token_id")
    if isinstance(eos, list):
        eos = eos[0]
    unk_piece = str(tokens.get("unk_token", "<unk>"))
    if unk_piece not in vocab:
        raise ImportRefused(f"the unknown-word token {unk_piece!r} is not in vocab.json")
    start = pad if start is None else start
    specials = {"pad_token_id": pad, "eos_token_id": eos, "decoder_start_token_id": start}
    for name, i in specials.items():
        if not isinstance(i, int) or not 0 <= i < len(vocab):
            raise ImportRefused(f"config.json: {name} = {i!r} is not an id of the {len(vocab):,}-entry vocabulary")
    unk = vocab[unk_piece]
    by_id = {i: p for p, i in vocab.items()}
    if not all(isinstance(i, int) for i in by_id) or sorted(by_id) != list(range(len(vocab))):
        raise ImportRefused("vocab.json: ids must be the whole numbers 0 … V−1, each once")
    if len({pad, unk, eos}) < 3 or start in (unk, eos):
        raise ImportRefused(f"config.json: the special ids pad={pad} unk={unk} eos={eos} start={start} must differ")
    head = [pad, unk, start, eos]  # aiayn's PAD_ID, UNK_ID, BOS_ID, EOS_ID: 0, 1, 2, 3
    order = head + [i for i in range(len(vocab)) if i not in head]
    pieces = [by_id[i] for i in order]
    if start == pad:
        if "<s>" in vocab:
            raise ImportRefused("decoding starts from the padding token and vocab.json has a '<s>' of its own: "
                                "cannot name the start")
        pieces[BOS_ID] = "<s>"
    return order, pieces


def source_order(vocab: dict[str, int], tokens: dict[str, Any]) -> tuple[list[int], list[str]]:
    """:func:`id_order` for the source side of a model with a vocabulary per side: its specials are the
    source vocabulary's own (the tokenizer's names); decoding never starts there, so aiayn's ``<s>`` row is
    the source's ``<s>`` if it has one, else a copy of its padding row (never read)."""
    names = {k: str(tokens.get(f"{k}_token", default)) for k, default in (("pad", "<pad>"), ("eos", "</s>"))}
    for kind, piece in names.items():
        if piece not in vocab:
            raise ImportRefused(f"the {kind} token {piece!r} is not in the source vocabulary (vocab.json)")
    pad, eos = vocab[names["pad"]], vocab[names["eos"]]
    return id_order({"pad_token_id": pad, "eos_token_id": eos, "decoder_start_token_id": vocab.get("<s>", pad)}, vocab, tokens)


def _first(weights: dict[str, Tensor], *names: str) -> Tensor:
    for n in names:
        if n in weights:
            return weights[n]
    raise ImportRefused(f"the weights have none of {', '.join(names)}")


def aiayn_state_dict(weights: dict[str, Tensor], cfg: ModelConfig, order: list[int],
                     src_order: list[int] | None = None) -> dict[str, Tensor]:
    """HF Marian/Pegasus tensors under aiayn's names (every alias of a tied matrix given), rows in aiayn's order
    (``order`` the target's, and ``src_order`` the source's when each side has its own vocabulary)."""
    w = {k.removeprefix("model."): v.float() for k, v in weights.items()}
    rows = torch.tensor(order)
    if src_order is None:  # one vocabulary, one embedding matrix
        emb = _first(w, "shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")[rows]
        sd: dict[str, Tensor] = {"encoder.input.embedding.weight": emb, "decoder.input.embedding.weight": emb}
    else:
        emb = w["decoder.embed_tokens.weight"][rows]
        sd = {"encoder.input.embedding.weight": w["encoder.embed_tokens.weight"][torch.tensor(src_order)],
              "decoder.input.embedding.weight": emb}
    if cfg.tie in ("three_way", "two_way"):
        sd["output.tied.weight"] = emb
    else:
        sd["output.weight"] = _first(w, "lm_head.weight")[rows]
    if cfg.output_bias:
        bias = w.get("final_logits_bias", torch.zeros(len(order))).reshape(-1)[rows].clone()
        if order[PAD_ID] == order[BOS_ID]:
            bias[PAD_ID] = ABSENT_LOGIT
        sd["output.bias"] = bias

    def attention(ours: str, theirs: str) -> None:
        sd[f"{ours}.in_proj.weight"] = torch.cat([w[f"{theirs}.{p}_proj.weight"] for p in "qkv"])
        sd[f"{ours}.in_proj.bias"] = torch.cat([w[f"{theirs}.{p}_proj.bias"] for p in "qkv"])
        sd[f"{ours}.out_proj.weight"], sd[f"{ours}.out_proj.bias"] = w[f"{theirs}.out_proj.weight"], w[f"{theirs}.out_proj.bias"]

    def copy(ours: str, theirs: str) -> None:
        sd[f"{ours}.weight"], sd[f"{ours}.bias"] = w[f"{theirs}.weight"], w[f"{theirs}.bias"]

    for stack, n in (("encoder", cfg.n_encoder_layers), ("decoder", cfg.n_decoder_layers)):
        for i in range(n):
            ours, theirs = f"{stack}.layers.{i}", f"{stack}.layers.{i}"
            attention(f"{ours}.self_attn", f"{theirs}.self_attn")
            copy(f"{ours}.{'res_attn' if stack == 'encoder' else 'res_self'}.norm", f"{theirs}.self_attn_layer_norm")
            if stack == "decoder":
                attention(f"{ours}.cross_attn", f"{theirs}.encoder_attn")
                copy(f"{ours}.res_cross.norm", f"{theirs}.encoder_attn_layer_norm")
            copy(f"{ours}.ffn.w1", f"{theirs}.fc1")
            copy(f"{ours}.ffn.w2", f"{theirs}.fc2")
            copy(f"{ours}.res_ffn.norm", f"{theirs}.final_layer_norm")
        if cfg.norm == "pre":
            copy(f"{stack}.norm", f"{stack}.layer_norm")
    return sd


def from_hf(src: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the Marian/Pegasus model directory ``src`` as the aiayn model directory ``out`` (a new one,
    or with ``overwrite`` one that aiayn wrote); returns ``out``."""
    from ..atomic import check_replaceable
    from ..data.vocab import PieceVocab, SeparateVocab
    from ..model import build_model
    from ..train.checkpoint import save_model_dir

    d = Path(src)
    if not d.is_dir():
        raise ImportRefused(f"{d}: no such directory")
    check_replaceable(out, overwrite, "model directory")  # before the work, not after it
    hf = _read_json(d / "config.json", "the model's configuration")
    vocab_json = _read_json(d / "vocab.json", "the piece → id map of MarianTokenizer")
    tokens = _read_json(d / "tokenizer_config.json", "") if (d / "tokenizer_config.json").is_file() else {}
    for name in PieceVocab.spm_files:
        if not (d / name).is_file():
            raise ImportRefused(f"{d}: no {name} (MarianTokenizer's SentencePiece model for that side)")
    if len(vocab_json) != hf.get("vocab_size"):
        raise ImportRefused(f"vocab.json has {len(vocab_json):,} entries but config.json's vocab_size is {hf.get('vocab_size')}")
    # A vocabulary per side (Marian's --no-shared-vocab): the source's ids from vocab.json, the target's from
    # target_vocab.json (or vocab.json again when only the embedding matrices are separate).
    separate = hf.get("share_encoder_decoder_embeddings", True) is False
    if tokens.get("separate_vocabs") and not separate:
        raise ImportRefused("the tokenizer has separate vocabularies (separate_vocabs: true) but the model shares one "
                            "embedding matrix (share_encoder_decoder_embeddings: true)")
    target_json = _read_json(d / "target_vocab.json", "the target side's piece → id map") if tokens.get("separate_vocabs") \
        else vocab_json
    if separate and len(target_json) != hf.get("decoder_vocab_size", hf.get("vocab_size")):
        raise ImportRefused(f"the target vocabulary has {len(target_json):,} entries but config.json's decoder_vocab_size "
                            f"is {hf.get('decoder_vocab_size')}")
    order, pieces = id_order(hf, target_json, tokens)
    src_order, src_pieces = source_order(vocab_json, tokens) if separate else (None, None)
    weights = load_weights(d)
    bias = weights.get("final_logits_bias", weights.get("model.final_logits_bias"))
    output_bias = bias is not None and bool(bias.ne(0).any())
    cfg = model_config(hf, len(src_order or order), output_bias or order[PAD_ID] == order[BOS_ID],
                       len(order) if separate else None)
    spm = (d / "source.spm").read_bytes(), (d / "target.spm").read_bytes()
    try:
        vocab = PieceVocab(pieces, *spm)
        if separate:
            vocab = SeparateVocab(PieceVocab(src_pieces, *spm), vocab)
    except (ValueError, RuntimeError) as e:
        raise ImportRefused(f"{d}: cannot use its tokenizer files ({e})") from None
    model = build_model(cfg)
    try:
        sd = aiayn_state_dict(weights, cfg, order, src_order)
        model.load_state_dict(sd, strict=True)
    except KeyError as e:
        raise ImportRefused(f"{d}: the weights lack {e} (not a complete {hf['model_type']} checkpoint)") from None
    except RuntimeError as e:
        raise ImportRefused(f"{d}: the weights do not fit the configuration ({str(e).splitlines()[0]})") from None
    meta = {"imported_from": {"format": f"huggingface/{hf['model_type']}", "path": str(d),
                              "eos_token_id": hf.get("eos_token_id"), "pad_token_id": hf.get("pad_token_id"),
                              "decoder_start_token_id": hf.get("decoder_start_token_id")}}
    log.info("imported %s (%s, %d+%d layers, d_model %d, %s vocabulary of %d)", d, hf["model_type"], cfg.n_encoder_layers,
             cfg.n_decoder_layers, cfg.d_model, "separate" if separate else "shared", len(order))
    return save_model_dir(out, model, cfg, vocab, meta, overwrite=overwrite)


__all__ = ["from_hf", "model_config", "id_order", "source_order", "aiayn_state_dict", "load_weights", "ABSENT_LOGIT"]
