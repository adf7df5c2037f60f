"""``aiayn reproduce``: the paper's evidence measured on this machine (docs/paper.md).

* :mod:`~aiayn.reproduce.table1`: per-layer time against sequence length, sequential operations and
  maximum path length of self-attention, recurrent, convolutional and restricted self-attention layers;
* :mod:`~aiayn.reproduce.table3`: the variations of the base model, scaled to a CPU base, each row its
  own training run (resumable);
* :mod:`~aiayn.reproduce.table2`: BLEU against training cost for the recurrent baselines and the
  Transformer.

Every command writes into one output directory that it marks as its own (``.aiayn-written``); a
directory holding anything else is refused, never written over.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from ..atomic import LISTING, OutputError, _listing, write_json_atomic, write_text_atomic
from ..config import ConfigError

WHAT = "reproduce directory"


def claim_directory(out: str | Path) -> Path:
    """Make ``out`` a reproduce directory (new or empty), or check that it already is one."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    data = _listing(out)
    if data is not None and data.get("what") == WHAT:
        return out
    if any(out.iterdir()):
        raise OutputError(f"{out}: exists and was not written by `aiayn reproduce`; refusing to write into it: "
                          "choose another --out")
    write_json_atomic(out / LISTING, {"what": WHAT, "files": ["table1.*", "table2.*", "table3.*", "table2", "table3"]})
    return out


def prepare_corpus(corpus: str | Path, work: Path, vocab_size: int, splits: tuple[str, ...]) -> Path:
    """``corpus``/{train,dev,…}.tsv prepared once into ``work``/data (prepare does nothing when the inputs and
    options are unchanged); only train and dev are encoded (a test split is scored from its .tsv)."""
    from ..data.prepare import PrepareConfig, prepare

    corpus = Path(corpus)
    for split in splits:
        if not (corpus / f"{split}.tsv").is_file():
            raise ConfigError(f"{corpus / f'{split}.tsv'}: not found; --corpus names a directory with "
                              f"{', '.join(s + '.tsv' for s in splits)}")
    data = work / "data"
    prepare(PrepareConfig(train=str(corpus / "train.tsv"), dev=str(corpus / "dev.tsv"), out=str(data), vocab_size=vocab_size))
    return data


def result_done(path: Path, budget: dict, what: str) -> dict | None:
    """The ``result.json`` of a row measured before with this ``budget``, None if there is none; a row
    measured with another budget is an error (one table never mixes two budgets)."""
    if not path.is_file():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    if result.get("budget") != budget:
        raise ConfigError(f"{path}: {what} was measured with another budget ({result.get('budget')}); "
                          "use another --out for this one")
    return result


def finished(work: Path, ids: Iterable[str], budget: dict) -> dict[str, dict]:
    """``{id: result}`` for every row under ``work`` finished with this budget."""
    rows = {}
    for i in ids:
        f = work / i / "result.json"
        if f.is_file():
            res = json.loads(f.read_text(encoding="utf-8"))
            if res.get("budget") == budget:
                rows[i] = res
    return rows


def save_table(out: str | Path, name: str, results: dict, markdown: Callable[[dict], str],
               plot: Callable[[dict, Path], Path] | None) -> list[Path]:
    """``name``.json, ``name``.md (the table docs/paper.md quotes) and ``name``.png, atomically."""
    out = claim_directory(out)
    write_json_atomic(out / f"{name}.json", results)
    write_text_atomic(out / f"{name}.md", markdown(results))
    paths = [out / f"{name}.json", out / f"{name}.md"]
    if plot is not None:
        paths.append(plot(results, out / f"{name}.png"))
    return paths


def machine() -> dict:
    """The CPU (model name and the ISA features that decide the fast paths) and the threads used."""
    import torch

    from ..accel.choose import describe_cpu

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {**describe_cpu(), "threads": torch.get_num_threads(), "gpu": gpu}
