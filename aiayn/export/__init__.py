"""Exporters: an aiayn translation model as another engine's model directory (CTranslate2, Hugging Face
Marian/Pegasus, ONNX). Each needs its engine's package (``pip install 'aiayn[export]'``)."""

from __future__ import annotations


class ExportError(ValueError):
    """A model that an exporter cannot write for its engine, and why."""


def check_full_attention(cfg, engine: str) -> None:
    """The engines here attend to every position with heads of d_model / h: a model trained with
    restricted self-attention (``attention_window``) or smaller keys (``key_size``) would compute
    something else there, so it is refused, never written."""
    if cfg.key_size and cfg.key_size != cfg.d_model // cfg.n_heads:
        raise ExportError(f"{engine} sizes queries and keys as d_model / heads: a model with key_size={cfg.key_size} "
                          "cannot be exported to it")
    if cfg.attention_window:
        raise ExportError(f"{engine} has no restricted self-attention: a model with attention_window="
                          f"{cfg.attention_window} cannot be exported to it")


__all__ = ["ExportError", "check_full_attention"]
