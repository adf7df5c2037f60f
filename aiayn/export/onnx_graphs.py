"""The two ONNX graphs of a translation model, as ``nn.Module`` wrappers to trace: the encoder (to the
decoder layers' encoder-decoder keys and values) and one decoder step on explicit caches. Used by
:mod:`aiayn.export.onnx` (the files) and :mod:`aiayn.export.onnx_beam` (the beam-search loop)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..config import BOS_ID, EOS_ID, PAD_ID
from ..model.attention import KVCache

OPSET = 18


@contextmanager
def quiet_tracing() -> Iterator[None]:
    """Silence what tracing always says here: that shapes become constants (each graph is traced for
    dynamic axes on purpose) and that the TorchScript exporter is the older one (it is the one whose
    graphs this project tests)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        yield


class EncoderGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: Tensor) -> tuple[Tensor, Tensor]:
        memory, _ = self.model.encode(src)  # (B, S, d)
        kv = [layer.cross_attn.project_memory(memory) for layer in self.model.decoder.layers]
        return torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])


class DecoderStepGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        dec = model.decoder
        pe = dec.input.positional
        if pe.kind == "learned":
            table = pe.table.weight.detach().clone()
        elif pe.kind == "sinusoidal":
            table = pe.pe[: model.cfg.max_positions].clone()
        else:
            table = torch.zeros(model.cfg.max_positions, model.cfg.d_model)
        self.register_buffer("pe_table", table)

    def forward(self, tokens: Tensor, position: Tensor, src_mask: Tensor, cross_k: Tensor, cross_v: Tensor,
                self_k: Tensor, self_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dec = self.model.decoder
        x = dec.input.embedding(tokens) + self.pe_table.index_select(0, position.view(1)).unsqueeze(0)  # (B, 1, d)
        mask = src_mask[:, None, None, :]
        new_k, new_v = [], []
        for i, layer in enumerate(dec.layers):
            cache = KVCache(self_k[i], self_v[i])
            x = layer(x, None, mask, cache, KVCache(cross_k[i], cross_v[i]))
            new_k.append(cache.k)
            new_v.append(cache.v)
        logits = self.model.output(dec.norm(x))[:, -1].float()  # (B, V)
        return logits.log_softmax(-1), torch.stack(new_k), torch.stack(new_v)  # type: ignore[arg-type]


def _examples(model) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    cfg = model.cfg
    b, s, t = 2, 5, 3
    src = torch.tensor([[5, 6, 7, 8, EOS_ID], [5, 6, EOS_ID, PAD_ID, PAD_ID]])
    with torch.no_grad():
        ck, cv = EncoderGraph(model)(src)
    shape = (cfg.n_decoder_layers, b, cfg.n_heads, t, cfg.d_model // cfg.n_heads)
    step = (torch.full((b, 1), BOS_ID), torch.tensor(t), src != PAD_ID, ck, cv, torch.zeros(shape), torch.zeros(shape))
    assert s == src.size(1)
    return (src,), step
