"""``aiayn demo``: the shipped Spanish→English model translating a few sentences and scoring test verses."""

from __future__ import annotations

import sys
import time
from pathlib import Path

SENTENCES = [
    "En el principio creó Dios los cielos y la tierra.",
    "Bienaventurados los pacíficos, porque ellos serán llamados hijos de Dios.",
    "El amor es sufrido, es benigno; el amor no tiene envidia.",
    "Mi casa está cerca del río.",
    "Los niños comieron pan y bebieron agua en la mañana.",
    "¿Dónde está tu hermano?",
]


def _shipped(relative: str) -> list[Path]:
    """Where a shipped file can be: beside the package in a source checkout (``pip install -e .``), or in
    ``<prefix>/share/aiayn`` where an installed wheel puts it (pyproject's data-files)."""
    import sysconfig

    here = Path(__file__).resolve().parent
    return [here.parent / relative, Path(sysconfig.get_path("data")) / "share" / "aiayn" / relative]


def shipped_model_dir(name: str = "bible-es-en") -> Path:
    """A shipped model directory (``models/NAME``)."""
    for candidate in _shipped(f"models/{name}"):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"the shipped model models/{name} was not found; pass --model DIR")


def shipped_test_file() -> Path | None:
    for candidate in _shipped("data/bible-es-en/test.tsv"):
        if candidate.is_file():
            return candidate
    return None


def run_demo(model_dir: str | None = None, n: int = 100, out=sys.stdout, device: str = "cpu") -> dict:
    from .decode.translate import Translator
    from .evaluate import read_test_pairs, score_translations
    from .model import count_parameters
    from .train.checkpoint import load_model_dir

    path = Path(model_dir) if model_dir else shipped_model_dir()
    t0 = time.perf_counter()
    model, vocab, config = load_model_dir(path, device)
    tr = Translator(model, vocab)  # the paper's search: beam 4, α = 0.6, max length source + 50
    print(f"model {path} ({count_parameters(model):,} parameters, step {config.get('step', '?')}), beam 4, α 0.6", file=out)
    print(file=out)
    for src, hyp in zip(SENTENCES, tr.translate(SENTENCES)):
        print(f"  es: {src}\n  en: {hyp}\n", file=out)
    result: dict = {}
    test = shipped_test_file()
    if test is not None and n > 0:
        src, ref = read_test_pairs(test, limit=n)
        hyps = tr.translate(src)
        result = score_translations(hyps, ref)
        print(f"{n} test verses of {test.name}: BLEU {result['bleu']:.1f}, chrF {result['chrf']:.1f}", file=out)
        print(f"  ({result['signature']})", file=out)
    print(f"done in {time.perf_counter() - t0:.1f} s", file=out)
    return result
