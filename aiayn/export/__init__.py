"""Exporters: an aiayn translation model as another engine's model directory (CTranslate2, Hugging Face
Marian/Pegasus, ONNX). Each needs its engine's package (``pip install 'aiayn[export]'``)."""

from __future__ import annotations


class ExportError(ValueError):
    """A model that an exporter cannot write for its engine, and why."""


def check_full_attention(cfg, engine: str) -> None:
    """The engines here attend to every position: a model trained with restricted self-attention
    (``attention_window``) would compute something else there, so it is refused, never written."""
    if cfg.attention_window:
        raise ExportError(f"{engine} has no restricted self-attention: a model with attention_window="
                          f"{cfg.attention_window} cannot be exported to it")


__all__ = ["ExportError", "check_full_attention"]
