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


def shipped_model_dir() -> Path:
    """models/bible-es-en beside the package, as in a source checkout (``pip install -e .``); an installed
    wheel does not carry it (pass ``--model DIR``)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "models" / "bible-es-en", here / "models" / "bible-es-en"):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError("the shipped model models/bible-es-en was not found; pass --model DIR")


def shipped_test_file() -> Path | None:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "data" / "bible-es-en" / "test.tsv", here / "data" / "bible-es-en" / "test.tsv"):
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
    from .runtime import pick_device

    model, vocab, config = load_model_dir(path, pick_device(device))
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
