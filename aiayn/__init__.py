"""aiayn: the Transformer of *Attention Is All You Need* (Vaswani et al., 2017) as a toolkit.

The public API (docs/api.md)::

    import aiayn
    model = aiayn.load("models/bible-es-en")      # aiayn.Model: .translate, .score, .generate, .evaluate
    aiayn.prepare(train="corpus.tsv", out="runs/mine/data", dev="dev.tsv")
    aiayn.fit("configs/bible-es-en.yaml", train={"data": "runs/mine/data", "out": "runs/mine"})
    aiayn.import_hf("opus-mt-es-en", "runs/opus-es-en")   # a Hugging Face Marian model on disk → a model directory
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "Model", "prepare", "fit", "import_hf", "__version__"]


def __getattr__(name: str) -> Any:  # imported on first use: `import aiayn` stays light (no torch)
    if name in ("load", "Model", "prepare", "fit", "import_hf"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'aiayn' has no attribute {name!r}")
