"""Importers: another toolkit's translation model as an aiayn model directory, which every aiayn command
then reads (translate, score, evaluate, serve, fine-tune with ``train.init_from``, export).

``hf``: a Hugging Face ``MarianMTModel`` directory (the format of the public OPUS-MT models and of
``aiayn export --to hf``) or a ``PegasusForConditionalGeneration`` one (what aiayn exports for pre-LN models).
Reading them needs no ``transformers``: JSON, SentencePiece and safetensors (or a ``pytorch_model.bin``
read with ``weights_only=True``) are enough.
"""

from __future__ import annotations


class ImportRefused(ValueError):
    """A model directory that an importer cannot turn into an aiayn model, and why."""


__all__ = ["ImportRefused"]
