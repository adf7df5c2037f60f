"""Reading corpora, with errors that name the file and the line.

Parallel data comes as

* TSV: ``src<TAB>tgt`` or ``ref<TAB>src<TAB>tgt`` (the column count is fixed by the first line),
* two aligned plain-text files (``train.es`` + ``train.en``),
* JSONL: one object per line with ``"src"`` and ``"tgt"`` strings (and optionally ``"ref"``).

Structural problems (invalid UTF-8, a wrong number of columns, files of different lengths, bad JSON)
stop with a :class:`CorpusError`; pairs that are merely unusable (an empty side, too long) are dropped
by the caller and counted, never silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


class CorpusError(ValueError):
    """A corpus that cannot be read as it is, with ``file:line`` in the message."""


@dataclass(frozen=True)
class Pair:
    src: str
    tgt: str
    where: str  # "file:line", for reports


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, text without the newline); invalid UTF-8 is an error naming the line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}:{n}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
            if "\x00" in text:
                raise CorpusError(f"{path}:{n}: NUL byte at character {text.index(chr(0)) + 1} "
                                  "(a binary file, or text in UTF-16?)")
            yield n, text.rstrip("\r\n")


def input_lines(f: BinaryIO) -> Iterator[str | CorpusError]:
    """Lines of a binary stream for translation, split at ``\n`` only (a lone ``\r`` stays inside its
    line, so outputs stay aligned with inputs; a CRLF ending is removed). A line that is not UTF-8 is
    yielded as a :class:`CorpusError` in its place, so that the caller decides: stop, or skip it."""
    for raw in f:
        try:
            yield raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError as e:
            yield CorpusError(f"invalid UTF-8 ({e.reason} at byte {e.start})")


def read_tsv(path: Path) -> Iterator[Pair]:
    columns = None
    for n, line in numbered_lines(path):
        if not line.strip():
            yield Pair("", "", f"{path}:{n}")  # an empty line: an empty pair, dropped and counted
            continue
        fields = line.split("\t")
        if columns is None:
            if len(fields) not in (2, 3):
                raise CorpusError(f"{path}:{n}: expected 2 (src, tgt) or 3 (ref, src, tgt) tab-separated columns, "
                                  f"found {len(fields)}")
            columns = len(fields)
        if len(fields) != columns:
            raise CorpusError(f"{path}:{n}: expected {columns} tab-separated columns like line 1, found {len(fields)}")
        yield Pair(fields[-2], fields[-1], f"{path}:{n}")


def read_jsonl(path: Path) -> Iterator[Pair]:
    for n, line in numbered_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("src"), str) or not isinstance(obj.get("tgt"), str):
            raise CorpusError(f'{path}:{n}: expected an object with string fields "src" and "tgt"')
        yield Pair(obj["src"], obj["tgt"], f"{path}:{n}")


def read_two_files(src_path: Path, tgt_path: Path) -> Iterator[Pair]:
    src_iter, tgt_iter = numbered_lines(src_path), numbered_lines(tgt_path)
    while True:
        s, t = next(src_iter, None), next(tgt_iter, None)
        if s is None and t is None:
            return
        if s is None or t is None:
            shorter, longer, n = (src_path, tgt_path, t[0]) if s is None else (tgt_path, src_path, s[0])  # type: ignore[index]
            raise CorpusError(f"{longer}:{n}: has more lines than {shorter} ({n - 1}); "
                              "parallel files must be aligned line by line")
        yield Pair(s[1], t[1], f"{src_path}:{s[0]}")


def read_parallel(spec: str | Path) -> Iterator[Pair]:
    """Read a parallel corpus named by ``spec``: ``file.tsv``, ``file.jsonl`` or ``src_file,tgt_file``."""
    spec = str(spec)
    if "," in spec:
        a, b = spec.split(",", 1)
        for p in (a, b):
            if not Path(p).is_file():
                raise CorpusError(f"{p}: no such file")
        yield from read_two_files(Path(a), Path(b))
        return
    path = Path(spec)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    if path.suffix in (".jsonl", ".json"):
        yield from read_jsonl(path)
    else:
        yield from read_tsv(path)


def read_labelled(spec: str | Path) -> Iterator[Pair]:
    """A sentence-classification corpus: ``TEXT<TAB>LABEL`` lines, or ``ID<TAB>TEXT<TAB>LABEL`` (``src`` the text,
    ``tgt`` the label). A first line whose label column says ``label`` is a header (GLUE's TSV files have one)
    and is skipped; an empty line is yielded empty (dropped and counted); a text without a label is an error."""
    path = Path(spec)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    for i, p in enumerate(read_tsv(path)):
        if i == 0 and p.tgt.strip().lower() == "label":
            continue
        if p.src.strip() and not p.tgt.strip():
            raise CorpusError(f"{p.where}: no label (expected TEXT<TAB>LABEL)")
        yield p


def read_text(path: str | Path) -> str:
    """A monolingual text file, whole; invalid UTF-8 is an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    return "\n".join(line for _, line in numbered_lines(path)) + "\n"
