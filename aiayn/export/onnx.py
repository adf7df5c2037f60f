"""Export an encoder-decoder to ONNX: the encoder, one decoder step with its caches as inputs/outputs,
and the whole beam search as one graph.

Three graphs, runnable with onnxruntime (or any ONNX engine). With the first two the search loop stays
with the caller (:func:`greedy` below is one, used by the tests); the third has it inside:

``encoder.onnx``
    ``src`` (B, S) int64 — token ids ending in ``</s>``, padded with ``<pad>`` (0)
    → ``cross_k``, ``cross_v`` (L, B, h, S, d_k): every decoder layer's encoder-decoder keys and values,
    computed once per sentence (the decoder never needs the encoder output itself).

``decoder_step.onnx``
    ``tokens`` (B, 1) int64 — the previous output token (``<s>`` = 2 at the first step)
    ``position`` () int64 — its position (0 at the first step)
    ``src_mask`` (B, S) bool — ``src != 0``
    ``cross_k``, ``cross_v`` — from the encoder
    ``self_k``, ``self_v`` (L, B, h, T, d_k) — the self-attention cache, T = position (empty at first)
    → ``log_probs`` (B, V) for the next token, and ``new_self_k``, ``new_self_v`` (L, B, h, T + 1, d_k).

``beam_search.onnx``
    ``src`` → ``tokens`` (B, nbest, T), ``lengths``, ``scores``, ``log_probs`` (B, nbest): aiayn's beam
    search (§6.1) with the settings given at export, in an ONNX ``Loop`` (:mod:`aiayn.export.onnx_beam`).

The step is aiayn's own decoder layers run on caches (:class:`~aiayn.model.attention.KVCache`), so
the exported function is the one aiayn decodes with. Reordering the caches for beam search is a
gather on axis 1 by the caller.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..atomic import atomic_directory
from ..config import BOS_ID, EOS_ID, PAD_ID
from . import ExportError, check_full_attention, onnx_beam
from .onnx_graphs import OPSET, DecoderStepGraph, EncoderGraph, _examples, quiet_tracing


def to_onnx(model, vocab, out: str | Path, beam: int = 4, nbest: int = 1, alpha: float = 0.6,
            extra: int = 50, overwrite: bool = False) -> Path:
    """Write ``encoder.onnx``, ``decoder_step.onnx``, ``beam_search.onnx`` (beam, n-best, α and the
    length limit source + ``extra`` baked in), ``config.json`` and the vocabulary to ``out`` (a new
    directory, or with ``overwrite`` one that aiayn exported before)."""
    cfg = model.cfg
    if cfg.arch != "encoder-decoder":
        raise ExportError("only encoder-decoder models can be exported to ONNX here")
    if cfg.positional == "rope":
        raise ExportError("rope positions are not supported by the ONNX exporter yet")
    check_full_attention(cfg, "this ONNX exporter")
    with atomic_directory(out, overwrite=overwrite, what="export directory") as tmp:
        _write_onnx(model.float().eval(), vocab, tmp, beam, nbest, alpha, extra)
    return Path(out)


def _write_onnx(model, vocab, out: Path, beam: int, nbest: int, alpha: float, extra: int) -> None:
    cfg = model.cfg
    enc_args, step_args = _examples(model)
    batch, src_len, past = "batch", "src_len", "past_len"
    with torch.no_grad(), quiet_tracing():
        torch.onnx.export(EncoderGraph(model), enc_args, str(out / "encoder.onnx"), input_names=["src"],
                          output_names=["cross_k", "cross_v"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"src": {0: batch, 1: src_len}, "cross_k": {1: batch, 3: src_len},
                                        "cross_v": {1: batch, 3: src_len}})
        torch.onnx.export(DecoderStepGraph(model), step_args, str(out / "decoder_step.onnx"),
                          input_names=["tokens", "position", "src_mask", "cross_k", "cross_v", "self_k", "self_v"],
                          output_names=["log_probs", "new_self_k", "new_self_v"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"tokens": {0: batch}, "src_mask": {0: batch, 1: src_len},
                                        "cross_k": {1: batch, 3: src_len}, "cross_v": {1: batch, 3: src_len},
                                        "self_k": {1: batch, 3: past}, "self_v": {1: batch, 3: past},
                                        "log_probs": {0: batch}, "new_self_k": {1: batch}, "new_self_v": {1: batch}})
    meta = {"format": "aiayn-onnx/1", "n_layers": cfg.n_decoder_layers, "n_heads": cfg.n_heads,
            "d_k": cfg.d_model // cfg.n_heads, "vocab_size": cfg.target_vocab_size, "max_positions": cfg.max_positions,
            "pad_id": PAD_ID, "bos_id": BOS_ID, "eos_id": EOS_ID,
            "beam_search": onnx_beam.save(model, out, beam, nbest, alpha, extra)}
    (out / "config.json").write_text(json.dumps(meta, indent=2))
    vocab.save(out)  # the tokenizer beside the graphs (spm.model, chars.json, …)


def greedy(path: str | Path, ids: list[list[int]], max_len: int, threads: int = 1) -> list[list[int]]:
    """Greedy translation of token-id sequences with onnxruntime and the two exported graphs."""
    import numpy as np
    import onnxruntime as ort

    path = Path(path)
    meta = json.loads((path / "config.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    enc = ort.InferenceSession(str(path / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(path / "decoder_step.onnx"), opts, providers=["CPUExecutionProvider"])
    b, s = len(ids), max(map(len, ids)) + 1
    src = np.full((b, s), meta["pad_id"], dtype=np.int64)
    for i, x in enumerate(ids):
        src[i, : len(x) + 1] = x + [meta["eos_id"]]
    ck, cv = enc.run(None, {"src": src})
    shape = (meta["n_layers"], b, meta["n_heads"], 0, meta["d_k"])
    sk, sv = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    tokens = np.full((b, 1), meta["bos_id"], dtype=np.int64)
    out: list[list[int]] = [[] for _ in range(b)]
    done = np.zeros(b, dtype=bool)
    for t in range(max_len):
        logp, sk, sv = step.run(None, {"tokens": tokens, "position": np.array(t, dtype=np.int64),
                                       "src_mask": src != meta["pad_id"],
                                       "cross_k": ck, "cross_v": cv, "self_k": sk, "self_v": sv})
        logp[:, [meta["pad_id"], meta["bos_id"]]] = -np.inf
        best = logp.argmax(-1)
        for i in np.flatnonzero(~done):
            if best[i] == meta["eos_id"]:
                done[i] = True
            else:
                out[i].append(int(best[i]))
        if done.all():
            break
        tokens = best[:, None].astype(np.int64)
    return out
