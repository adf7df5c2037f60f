"""Exporters: an aiayn translation model as another engine's model directory (CTranslate2, Hugging Face
Marian/Pegasus, ONNX). Each needs its engine's package (``pip install 'aiayn[export]'``)."""

from __future__ import annotations


class ExportError(ValueError):
    """A model that an exporter cannot write for its engine, and why."""


__all__ = ["ExportError"]
