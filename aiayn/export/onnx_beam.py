"""The whole beam search as one ONNX graph: ``beam_search.onnx`` (source ids in, best translations out).

aiayn's batched beam search (:func:`aiayn.decode.search.beam_search`: beam k, GNMT length penalty α,
max length = source + ``extra``, early termination, tensor2tensor's finished-hypothesis rule) written
as three traced pieces and joined into one graph with an ONNX ``Loop``:

* ``init`` — the encoder, every decoder layer's cross-attention keys/values (one row per beam),
  the length limits and the empty search state;
* the ``Loop`` body — one decoder step on the self-attention caches, then the beam bookkeeping of
  that step for the whole batch, as tensors: per-beam top-2k, the 2k best per sentence, finished
  hypotheses merged by :func:`~aiayn.decode.search.merge_finished`, caches reordered, ``done`` updated.
  The loop runs until every sentence is done (or the longest limit);
* the outputs: ``tokens`` (B, nbest, T) int64 padded with ``<pad>``, ``lengths`` (B, nbest) (the
  number of tokens before ``</s>``), ``scores`` (B, nbest) = log P / lp and ``log_probs`` (B, nbest).

Unlike the eager search, finished sentences stay in the batch (a fixed-shape graph); their results are
frozen, so every sentence gets exactly what the eager search gives it (tested token for token).
Beam size, n-best, α and ``extra`` are fixed when the graph is written (``config.json`` says which).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import BOS_ID, EOS_ID, PAD_ID
from ..decode.search import length_penalty, merge_finished
from . import ExportError
from .onnx_graphs import OPSET, DecoderStepGraph, EncoderGraph, quiet_tracing

NEG_INF = float("-inf")
# The loop state, in the order the Loop carries it (the body takes and returns these).
STATE = ["tokens", "self_k", "self_v", "scores", "history", "fin_score", "fin_log_prob", "fin_length", "fin_tokens", "done"]
# Computed once before the loop and read by the body from the outer scope.
OUTER = ["src_mask", "cross_k", "cross_v", "limit"]


def _lp(length: Tensor, alpha: float) -> Tensor:
    return length_penalty(length.float(), alpha)  # the GNMT penalty, traced


def _index(like: Tensor) -> Tensor:
    """0, 1, …, n − 1 along a 1-d tensor's length, traced with a dynamic n."""
    return torch.ones_like(like, dtype=torch.long).cumsum(0) - 1


class BeamInit(nn.Module):
    def __init__(self, model, beam: int, nbest: int, extra: int) -> None:
        super().__init__()
        self.encoder, self.k, self.nbest, self.extra = EncoderGraph(model), beam, nbest, extra

    def forward(self, src: Tensor) -> tuple[Tensor, ...]:
        k = self.k
        cross_k, cross_v = self.encoder(src)  # (L, B, h, S, d_k)
        cross_k, cross_v = cross_k.repeat_interleave(k, dim=1), cross_v.repeat_interleave(k, dim=1)  # (L, B·k, h, S, d_k)
        src_mask = (src != PAD_ID).repeat_interleave(k, dim=0)  # (B·k, S)
        limit = ((src != PAD_ID) & (src != EOS_ID)).sum(1) + self.extra  # (B,)
        steps = limit.max()  # the Loop's trip count
        # Histories have room for T = S − 1 + extra tokens (the eager search's max(limit) when the batch is
        # padded to its longest source), built from a tensor of that length so that T stays dynamic.
        width = torch.cat([src[0, 1:], src.new_zeros(self.extra)]) * 0  # (T,) zeros
        rows = src_mask[:, :1].long()  # (B·k, 1) of ones
        history = rows * 0 + width.unsqueeze(0) + PAD_ID  # (B·k, T)
        tokens = rows * BOS_ID  # (B·k, 1)
        empty = cross_k[:, :, :, :0]  # (L, B·k, h, 0, d_k)
        first = torch.full((1, k), NEG_INF)
        first[0, 0] = 0.0  # only the first beam is live at the start
        scores = limit.unsqueeze(1).float() * 0 + first  # (B, k)
        none = limit.unsqueeze(1).float() * 0 + torch.full((1, self.nbest), NEG_INF)  # (B, nbest)
        fin_length = limit.unsqueeze(1) * 0 + torch.zeros(1, self.nbest, dtype=torch.long)  # (B, nbest)
        fin_tokens = fin_length.unsqueeze(-1) + width.view(1, 1, -1) + PAD_ID  # (B, nbest, T)
        done = limit < 0  # (B,) all False
        return (steps, src_mask, cross_k, cross_v, limit, tokens, empty, empty.clone(), scores, history,
                none, none.clone(), fin_length, fin_tokens, done)


class BeamStep(nn.Module):
    """One iteration of :func:`aiayn.decode.search.beam_search`'s loop for the whole batch."""

    def __init__(self, model, beam: int, alpha: float) -> None:
        super().__init__()
        self.step, self.k, self.alpha = DecoderStepGraph(model), beam, alpha

    def forward(self, t: Tensor, tokens: Tensor, self_k: Tensor, self_v: Tensor, scores: Tensor, history: Tensor,
                fin_score: Tensor, fin_log_prob: Tensor, fin_length: Tensor, fin_tokens: Tensor, done: Tensor,
                src_mask: Tensor, cross_k: Tensor, cross_v: Tensor, limit: Tensor) -> tuple[Tensor, ...]:
        k = self.k
        log_probs, self_k, self_v = self.step(tokens, t, src_mask, cross_k, cross_v, self_k, self_v)  # (B·k, V)
        forbid = torch.zeros_like(log_probs[0])
        forbid[PAD_ID] = NEG_INF
        forbid[BOS_ID] = NEG_INF
        log_probs = log_probs + forbid
        m = min(2 * k, log_probs.size(-1))
        beam_top, beam_tok = log_probs.topk(m, dim=-1)  # (B·k, m)
        cand = (scores.reshape(-1, 1) + beam_top).reshape(-1, k * m)  # (B, k·m)
        top, idx = cand.topk(2 * k, dim=-1)  # (B, 2k)
        rows_2k = _index(scores[:, 0]).unsqueeze(1) * k + idx // m  # (B, 2k) the beam each candidate extends
        tok = beam_tok.reshape(-1, k * m).gather(1, idx)
        is_eos = tok == EOS_ID
        length = t + 1
        lp = _lp(length, self.alpha)
        steps = history.size(1)
        frozen = done.unsqueeze(1)  # sentences already done take no more hypotheses

        eos_score = top.masked_fill(~is_eos | frozen, NEG_INF)
        fin = merge_finished((fin_score, fin_log_prob, fin_length, fin_tokens), eos_score / lp, eos_score,
                             history.index_select(0, rows_2k.reshape(-1)).reshape(-1, 2 * k, steps), t)

        scores, pick = top.masked_fill(is_eos, NEG_INF).topk(k, dim=-1)  # (B, k)
        rows = rows_2k.gather(1, pick).reshape(-1)  # (B·k,)
        new_tok = tok.gather(1, pick).reshape(-1)
        history = history.index_select(0, rows)
        history = torch.where(_index(history[0]).unsqueeze(0) == t, new_tok.unsqueeze(1), history)

        at_limit = length >= limit  # (B,)
        s = scores.masked_fill(~(at_limit.unsqueeze(1) & ~frozen), NEG_INF)
        fin = merge_finished(fin, s / lp, s, history.reshape(-1, k, steps), length)
        bound = scores[:, 0] / _lp(limit, self.alpha)
        worst = fin[0][:, -1]
        done = done | at_limit | ((worst > NEG_INF) & (worst >= bound))
        go_on = ~done.all()
        return (go_on, new_tok.unsqueeze(1), self_k.index_select(1, rows), self_v.index_select(1, rows), scores,
                history, *fin, done)


def _trace(module: nn.Module, args: tuple[Tensor, ...], inputs: list[str], outputs: list[str],
           dynamic: dict[str, dict[int, str]]):
    import onnx

    buf = io.BytesIO()
    with torch.no_grad(), quiet_tracing():
        torch.onnx.export(module, args, buf, input_names=inputs, output_names=outputs, opset_version=OPSET,
                          dynamo=False, dynamic_axes=dynamic)
    return onnx.load_from_string(buf.getvalue())


def _rename(graph, prefix: str, keep: dict[str, str]) -> None:
    """Give every value of ``graph`` the name ``prefix + name``, or ``keep[name]`` where given."""
    def new(name: str) -> str:
        return name if name == "" else keep.get(name, prefix + name)

    for node in graph.node:
        node.name = prefix + node.name
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        v.name = new(v.name)
    for init in graph.initializer:
        init.name = new(init.name)


def build(model, beam: int = 4, nbest: int = 1, alpha: float = 0.6, extra: int = 50):
    """The beam-search graph of an encoder-decoder model, as an ``onnx.ModelProto``."""
    import onnx
    from onnx import TensorProto, helper

    if nbest > beam:
        raise ExportError(f"nbest ({nbest}) cannot exceed the beam size ({beam})")
    model = model.float().eval()
    src = torch.tensor([[5, 6, 7, 8, EOS_ID], [5, 6, EOS_ID, PAD_ID, PAD_ID]])
    init = BeamInit(model, beam, nbest, extra)
    with torch.no_grad():
        example = init(src)
    init_out = ["steps", *OUTER, *STATE]
    b, bk, s, past, steps = "batch", "batch_beams", "src_len", "past_len", "steps"
    init_graph = _trace(init, (src,), ["src"], init_out, {"src": {0: b, 1: s}})

    state_ex = dict(zip(init_out, example))
    step_args = (torch.tensor(0), *(state_ex[n] for n in STATE), *(state_ex[n] for n in OUTER))
    step_in = ["t", *STATE, *OUTER]
    dyn = {"tokens": {0: bk}, "self_k": {1: bk, 3: past}, "self_v": {1: bk, 3: past}, "scores": {0: b},
           "history": {0: bk, 1: steps}, "fin_score": {0: b}, "fin_log_prob": {0: b}, "fin_length": {0: b},
           "fin_tokens": {0: b, 2: steps}, "done": {0: b}, "src_mask": {0: bk, 1: s},
           "cross_k": {1: bk, 3: s}, "cross_v": {1: bk, 3: s}, "limit": {0: b}}
    body = _trace(BeamStep(model, beam, alpha), step_args, step_in, ["go_on", *(f"{n}_out" for n in STATE)], dyn).graph

    # Names: the init graph's outputs are "init/<name>"; the body reads the outer ones by those names.
    init_g = init_graph.graph
    _rename(init_g, "init/", {"src": "src"})
    _rename(body, "body/", {n: f"init/{n}" for n in OUTER})
    body.input.insert(1, helper.make_tensor_value_info("body/cond", TensorProto.BOOL, []))
    del body.input[len(STATE) + 2:]  # the outer-scope values are not body inputs
    for v in list(body.input)[2:] + list(body.output)[1:]:
        v.type.tensor_type.ClearField("shape")  # loop-carried shapes change (the caches grow)
    for v in (body.input[0], body.output[0]):  # the iteration number and the condition are scalars
        v.type.tensor_type.shape.ClearField("dim")
    body.ClearField("value_info")
    initializers = _dedupe(list(init_g.initializer) + list(body.initializer), list(init_g.node) + list(body.node))
    body.ClearField("initializer")  # the body reads its weights from the outer scope

    final = [f"final/{n}" for n in STATE]
    loop = helper.make_node("Loop", ["init/steps", "true", *(f"init/{n}" for n in STATE)], final, name="search", body=body)
    true = helper.make_tensor("true", TensorProto.BOOL, [], [True])
    outputs = {"tokens": "final/fin_tokens", "lengths": "final/fin_length", "scores": "final/fin_score",
               "log_probs": "final/fin_log_prob"}
    ident = [helper.make_node("Identity", [v], [k], name=f"out/{k}") for k, v in outputs.items()]
    graph = helper.make_graph(
        list(init_g.node) + [loop] + ident, "aiayn_beam_search", [init_g.input[0]],
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, [b, nbest, "out_len"]),
         helper.make_tensor_value_info("lengths", TensorProto.INT64, [b, nbest]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [b, nbest]),
         helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, [b, nbest])],
        initializer=initializers + [true])
    out = helper.make_model(graph, opset_imports=init_graph.opset_import, producer_name="aiayn")
    out.ir_version = init_graph.ir_version
    onnx.checker.check_model(out)
    return out


def _dedupe(initializers: list, nodes: list) -> list:
    """Keep one copy of identical weights (the tied embedding is in the encoder and in the step)."""
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    kept = []
    for t in initializers:
        key = (t.data_type, tuple(t.dims), t.raw_data) if t.raw_data else None
        if key in first:
            alias[t.name] = first[key]
            continue
        if key is not None:
            first[key] = t.name
        kept.append(t)
    if alias:
        stack = list(nodes)
        while stack:
            node = stack.pop()
            node.input[:] = [alias.get(n, n) for n in node.input]
            for attr in node.attribute:
                stack.extend(attr.g.node)
    return kept


def save(model, out: Path, beam: int = 4, nbest: int = 1, alpha: float = 0.6, extra: int = 50) -> dict:
    """Write ``out/beam_search.onnx``; returns the settings baked into it (for config.json)."""
    import onnx

    onnx.save(build(model, beam, nbest, alpha, extra), str(out / "beam_search.onnx"))
    return {"beam": beam, "nbest": nbest, "alpha": alpha, "extra": extra}


def beam_search(path: str | Path, ids: list[list[int]], threads: int = 1) -> list[list[tuple[list[int], float]]]:
    """Translate token-id sequences with ``beam_search.onnx``: per sentence, (tokens, score) best first."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(Path(path) / "beam_search.onnx"), opts, providers=["CPUExecutionProvider"])
    src = np.full((len(ids), max(map(len, ids)) + 1), PAD_ID, dtype=np.int64)
    for i, x in enumerate(ids):
        src[i, : len(x) + 1] = list(x) + [EOS_ID]
    tokens, lengths, scores, _ = sess.run(None, {"src": src})
    return [[(tokens[i, j, : lengths[i, j]].tolist(), float(scores[i, j])) for j in range(tokens.shape[1])
             if scores[i, j] > NEG_INF] for i in range(len(ids))]
