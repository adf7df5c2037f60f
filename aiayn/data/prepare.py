"""``aiayn prepare``: validate a corpus, build or reuse a vocabulary, encode everything once.

A prepared directory holds

* ``manifest.json``: what went in (paths, SHA-256), the options, the vocabulary, and per split the
  number of pairs/tokens and of dropped pairs with the reason;
* the vocabulary file (``spm.model`` or ``chars.json``);
* per split and side, ``{split}.{side}.tokens.npy`` (all sentences' ids back to back) and
  ``{split}.{side}.offsets.npy`` (n + 1 start offsets): plain NumPy arrays, memory-mapped for training.

Running it again with the same inputs and options does nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..atomic import atomic_directory
from ..config import EOS_ID, PrepareConfig
from .corpus import CorpusError, numbered_lines, read_labelled, read_parallel
from .shards import shard_name
from .vocab import (
    CharVocab,
    SentencePieceVocab,
    SeparateVocab,
    load_vocab,
    sentencepiece_vocab,
    target_size,
    vocab_files,
    vocab_manifest,
)

log = logging.getLogger(__name__)
FORMAT = "aiayn-data/1"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _input_files(spec: str) -> list[str]:
    return spec.split(",") if "," in spec else [spec]


def _fingerprint(cfg: PrepareConfig) -> dict:
    files = {}
    for split, spec in _splits(cfg):
        files[split] = [{"path": p, "sha256": sha256_file(p)} for p in _input_files(spec)]
    if cfg.spm_model:
        files["spm_model"] = [{"path": cfg.spm_model, "sha256": sha256_file(cfg.spm_model)}]
    if cfg.vocab_from:  # whatever files the directory's vocabulary consists of
        files["vocab_from"] = [{"path": str(Path(cfg.vocab_from) / name), "sha256": hashlib.sha256(data).hexdigest()}
                               for name, data in vocab_files(load_vocab(cfg.vocab_from)).items()]
    options = {k: v for k, v in asdict(cfg).items()
               if k not in ("train", "dev", "test", "out", "spm_model", "vocab_from", "overwrite")}
    return {"inputs": files, "options": options}


def _splits(cfg: PrepareConfig) -> list[tuple[str, str]]:
    """(split name, corpus) of each given split: train, dev, test, then ``dev.NAME`` for each --more-dev set."""
    named = [(split, getattr(cfg, split)) for split in ("train", "dev", "test")]
    return [(s, spec) for s, spec in named if spec] + [(f"dev.{name}", spec) for name, spec in cfg.dev_sets()]


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max else np.dtype(np.int32)


def _check_options(cfg: PrepareConfig) -> None:
    """The options' ranges are checked by PrepareConfig itself; here, that a given vocabulary loads."""
    if cfg.vocab_from:
        try:
            load_vocab(cfg.vocab_from)
        except (FileNotFoundError, RuntimeError, ValueError, OSError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CorpusError(f"--vocab-from {cfg.vocab_from}: {why}") from None
    if cfg.spm_model:
        p = Path(cfg.spm_model)
        if not p.is_file():
            raise CorpusError(f"{p}: no such file (--spm-model)")
        try:
            sentencepiece_vocab(p.read_bytes())
        except (RuntimeError, ValueError, OSError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CorpusError(f"{p}: not a usable SentencePiece model ({why})") from None


def prepare(cfg: PrepareConfig) -> dict:
    """Prepare ``cfg.train`` (and dev/test) into ``cfg.out``; returns the manifest."""
    out = Path(cfg.out)
    _check_options(cfg)  # first: the fingerprint reads the vocabulary and files these check
    fp = _fingerprint(cfg)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except (ValueError, UnicodeDecodeError):
            old = {}
        same = isinstance(old, dict) and old.get("format") == FORMAT
        if same and old.get("inputs") == fp["inputs"] and old.get("options") == fp["options"]:
            log.info("%s is up to date (same inputs and options): nothing to do", out)
            old["up_to_date"] = True
            return old
    # An interrupted run never leaves a half-written data directory under the final name.
    with atomic_directory(out, overwrite=cfg.overwrite, what="data directory") as tmp:
        manifest = {"parallel": _prepare_parallel, "lm": _prepare_lm, "classify": _prepare_classify}[cfg.kind](cfg, tmp)
        manifest.update({"format": FORMAT, **fp})
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def _vocabulary(cfg: PrepareConfig, texts: Callable[[], Iterable[str]], lines: Callable[[], Iterable[str]] | None = None):
    """The vocabulary ``--vocab-from`` or ``--spm-model`` names, else one built from the training text:
    characters from ``texts()``, SentencePiece from ``lines()`` (default: ``texts()``)."""
    if cfg.vocab_from:
        return load_vocab(cfg.vocab_from)
    if cfg.spm_model:
        return sentencepiece_vocab(Path(cfg.spm_model).read_bytes())
    if cfg.vocab == "char":
        return CharVocab.train(texts())
    return SentencePieceVocab.train((lines or texts)(), cfg.vocab_size, cfg.vocab, seed=cfg.seed)


ENCODE_CHUNK = 5_000  # pairs encoded at a time: memory stays bounded whatever the corpus size


def _usable_pairs(spec: str, report: dict) -> Iterator[tuple[str, str]]:
    """The stripped (src, tgt) pairs of a corpus, read lazily; empty ones are counted in ``report`` and skipped."""
    for p in read_parallel(spec):
        report["read"] += 1
        if not p.src.strip() or not p.tgt.strip():
            report["dropped"]["empty"] += 1
            if len(report["examples"]) < 5:
                report["examples"].append(f"{p.where}: empty side")
            continue
        yield p.src.strip(), p.tgt.strip()


def _new_report() -> dict:
    return {"read": 0, "dropped": {"empty": 0, "too_long": 0}, "examples": []}


class _TokenWriter:
    """Appends sentences' token ids to ``{name}.tokens.npy`` without holding them: the ids stream into a raw
    file, then the .npy header (whose shape is known only at the end) is written and the data copied
    behind it in blocks. Offsets (one int64 per sentence) are kept in memory."""

    def __init__(self, directory: Path, name: str, dtype: np.dtype, offsets: bool = True) -> None:
        self.directory, self.name, self.dtype, self.offsets = directory, name, dtype, offsets
        self.raw_path = directory / f".{name}.tokens.raw"
        self.raw = open(self.raw_path, "wb")
        self.lengths: list[np.ndarray] = []
        self.n_tokens = 0

    def add(self, seqs: list[list[int]]) -> None:
        if seqs:
            ids = np.fromiter((t for s in seqs for t in s), dtype=self.dtype)
            self.raw.write(ids.tobytes())
            self.n_tokens += ids.size
            if self.offsets:
                self.lengths.append(np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs)))

    def close(self) -> tuple[int, int]:
        """Write the token file (and, unless ``offsets`` is off, the sentences' offsets); returns
        (sentences, tokens)."""
        self.raw.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64)
        n_tokens = self.n_tokens
        with open(self.directory / f"{self.name}.tokens.npy", "wb") as out, open(self.raw_path, "rb") as raw:
            np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                       "fortran_order": False, "shape": (n_tokens,)})
            while block := raw.read(1 << 20):
                out.write(block)
        self.raw_path.unlink()
        if self.offsets:
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            np.save(self.directory / f"{self.name}.offsets.npy", offsets)
        return len(lengths), n_tokens


class _ShardedPairs:
    """Token files of a parallel split, in shards of at most ``shard_size`` pairs (0: one file). Shard k is
    the split ``NAME@k`` (:func:`~aiayn.data.batching.shard_name`); a split that fits one shard keeps its
    plain name, so smaller corpora are prepared exactly as before sharding existed."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_size: int) -> None:
        self.directory, self.split, self.dtype, self.shard_size = directory, split, dtype, shard_size
        self.done: list[tuple[int, int, int]] = []  # (pairs, source tokens, target tokens) of each closed shard
        self._open()

    def _open(self) -> None:
        name = shard_name(self.split, len(self.done)) if self.shard_size else self.split
        self.src, self.tgt = (_TokenWriter(self.directory, f"{name}.{side}", self.dtype) for side in ("src", "tgt"))
        self.pairs = 0

    def add(self, src: list[list[int]], tgt: list[list[int]]) -> None:
        while src:
            room = self.shard_size - self.pairs if self.shard_size else len(src)
            if room == 0:
                self._close_shard()
                self._open()
                continue
            self.src.add(src[:room])
            self.tgt.add(tgt[:room])
            self.pairs += min(room, len(src))
            src, tgt = src[room:], tgt[room:]

    def _close_shard(self) -> None:
        n, src_tokens = self.src.close()
        _, tgt_tokens = self.tgt.close()
        self.done.append((n, src_tokens, tgt_tokens))

    def close(self) -> tuple[int, int, int, list[int]]:
        """(pairs, source tokens, target tokens, pairs of each shard)."""
        self._close_shard()
        if len(self.done) == 1 and self.shard_size:  # one shard: the split's plain name
            for path in self.directory.glob(f"{shard_name(self.split, 0)}.*"):
                path.rename(self.directory / (self.split + path.name[len(shard_name(self.split, 0)):]))
        return (sum(d[0] for d in self.done), sum(d[1] for d in self.done), sum(d[2] for d in self.done),
                [d[0] for d in self.done])


def _train_texts(spec: str) -> Iterator[str]:
    """Both sides of every usable training pair: one joint vocabulary (§5.1) for shared embeddings (§3.4)."""
    for src, tgt in _usable_pairs(spec, _new_report()):
        yield src
        yield tgt


def _prepare_parallel(cfg: PrepareConfig, tmp: Path) -> dict:
    """Two passes over the training corpus, neither holding it: one builds the vocabulary (SentencePiece
    samples at most 2M sentences), the other encodes it ``ENCODE_CHUNK`` pairs at a time into the token
    files. Memory is bounded by the vocabulary's sample and one chunk, not by the corpus."""
    # A first read checks every line (a bad one is an error naming its file and line) before anything
    # consumes the corpus: SentencePiece's trainer could not report an error raised inside its input.
    if sum(1 for _ in _usable_pairs(cfg.train, _new_report())) == 0:
        raise CorpusError(f"{cfg.train}: no usable sentence pairs")
    if cfg.separate_vocab:  # one per language, each from its own side
        target_cfg = replace(cfg, vocab_size=cfg.tgt_vocab_size or cfg.vocab_size)
        vocab = SeparateVocab(_vocabulary(cfg, lambda: (s for s, _ in _usable_pairs(cfg.train, _new_report()))),
                              _vocabulary(target_cfg, lambda: (t for _, t in _usable_pairs(cfg.train, _new_report()))))
    else:
        vocab = _vocabulary(cfg, lambda: _train_texts(cfg.train))
    vocab.save(tmp)
    dtype = _token_dtype(max(len(vocab), target_size(vocab)))

    info: dict = {"kind": "parallel", "vocab": vocab_manifest(vocab), "splits": {}}
    for split, spec in _splits(cfg):
        report = _new_report()
        # The training split is written in shards of shard_size pairs (one shard keeps the plain names).
        shards = _ShardedPairs(tmp, split, dtype, cfg.shard_size if split == "train" else 0)
        # Keep the raw text of the evaluation splits: BLEU is computed against the untokenized reference.
        text = open(tmp / f"{split}.txt.jsonl", "w", encoding="utf-8") if split != "train" else None
        pairs = _usable_pairs(spec, report)
        while chunk := list(itertools.islice(pairs, ENCODE_CHUNK)):
            src_ids = vocab.encode_batch([s for s, _ in chunk])
            tgt_ids = vocab.encode_batch([t for _, t in chunk], side="target")
            keep = [i for i in range(len(chunk)) if len(src_ids[i]) <= cfg.max_len and len(tgt_ids[i]) <= cfg.max_len]
            report["dropped"]["too_long"] += len(chunk) - len(keep)
            shards.add([src_ids[i] for i in keep], [tgt_ids[i] for i in keep])
            if text is not None:
                for i in keep:
                    text.write(json.dumps({"src": chunk[i][0], "tgt": chunk[i][1]}, ensure_ascii=False) + "\n")
        if text is not None:
            text.close()
        n, src_tok, tgt_tok, sizes = shards.close()
        if split == "train" and n == 0:  # there were usable pairs (checked above): all were too long
            raise CorpusError(f"{cfg.train}: every pair is longer than max_len={cfg.max_len} tokens")
        info["splits"][split] = {"pairs": n, "src_tokens": src_tok, "tgt_tokens": tgt_tok, **report}
        if len(sizes) > 1:
            info["splits"][split]["shards"] = sizes
        if sum(report["dropped"].values()):
            log.warning("%s: dropped %s", split, report["dropped"])
    return info


def _labelled(spec: str, report: dict) -> Iterator[tuple[str, str]]:
    """The stripped (text, label) pairs of a classification corpus; empty lines are counted and skipped."""
    for p in read_labelled(spec):
        report["read"] += 1
        if not p.src.strip():
            report["dropped"]["empty"] += 1
            continue
        yield p.src.strip(), p.tgt.strip()


def _prepare_classify(cfg: PrepareConfig, tmp: Path) -> dict:
    """Labelled sentences (TEXT<TAB>LABEL) → each split's token files (``{split}.src.*``, like a parallel
    corpus's source side) and ``{split}.labels.npy`` (class ids); the classes are the training split's
    labels in sorted order (``labels.json``). A dev/test label the training split lacks is an error."""
    labels = sorted({label for _, label in _labelled(cfg.train, _new_report())})
    if not labels:
        raise CorpusError(f"{cfg.train}: no labelled sentences")
    if len(labels) < 2:
        raise CorpusError(f"{cfg.train}: every sentence has the label {labels[0]!r}: a classifier needs two classes or more")
    vocab = _vocabulary(cfg, lambda: (text for text, _ in _labelled(cfg.train, _new_report())))
    vocab.save(tmp)
    (tmp / "labels.json").write_text(json.dumps(labels, ensure_ascii=False) + "\n", encoding="utf-8")
    index = {label: i for i, label in enumerate(labels)}
    info: dict = {"kind": "classify", "vocab": vocab_manifest(vocab), "labels": labels, "splits": {}}
    for split, spec in _splits(cfg):
        report = _new_report()
        writer, ids = _TokenWriter(tmp, f"{split}.src", _token_dtype(len(vocab))), []
        pairs = _labelled(spec, report)
        while chunk := list(itertools.islice(pairs, ENCODE_CHUNK)):
            unknown = [label for _, label in chunk if label not in index]
            if unknown:
                raise CorpusError(f"{spec}: label {unknown[0]!r} does not occur in the training data {cfg.train} "
                                  f"(its labels: {', '.join(labels[:10])})")
            encoded = vocab.encode_batch([text for text, _ in chunk])
            keep = [i for i, seq in enumerate(encoded) if len(seq) <= cfg.max_len]
            report["dropped"]["too_long"] += len(chunk) - len(keep)
            writer.add([encoded[i] for i in keep])
            ids += [index[chunk[i][1]] for i in keep]
        n, tokens = writer.close()
        np.save(tmp / f"{split}.labels.npy", np.asarray(ids, dtype=np.int64))
        if split == "train" and n == 0:
            raise CorpusError(f"{cfg.train}: every sentence is longer than max_len={cfg.max_len} tokens")
        counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=len(labels)).tolist()
        info["splits"][split] = {"sentences": n, "tokens": tokens, "per_label": dict(zip(labels, counts)), **report}
    return info


def _text_pieces(path: str, start: int = 0, stop: int | None = None) -> Iterator[str]:
    """The characters ``start:stop`` of a text file as :func:`~aiayn.data.corpus.read_text` gives it (every line
    ending in a line break), a line (or the part of one inside the range) at a time: never the whole text."""
    pos = 0
    for _, line in numbered_lines(Path(path)):
        line += "\n"
        end = pos + len(line)
        if end > start and (stop is None or pos < stop):
            yield line[max(0, start - pos) : None if stop is None else stop - pos]
        pos = end
        if stop is not None and pos >= stop:
            return


def _text_extent(path: str) -> tuple[int, int, int]:
    """(characters, offset of the first non-blank character, offset of the last; −1 for none) of a text file
    as :func:`_text_pieces` gives it, in one read that also checks every line."""
    total, first, last = 0, -1, -1
    for piece in _text_pieces(path):
        if piece.strip():
            first = first if first >= 0 else total + len(piece) - len(piece.lstrip())
            last = total + len(piece.rstrip()) - 1
        total += len(piece)
    return total, first, last


LM_CHUNK_CHARS = 1 << 20  # characters encoded at a time


def _joined(pieces: Iterable[str], size: int) -> Iterator[str]:
    """Consecutive pieces joined into strings of about ``size`` characters (whole pieces: whole lines)."""
    chunk: list[str] = []
    n = 0
    for piece in pieces:
        chunk.append(piece)
        n += len(piece)
        if n >= size:
            yield "".join(chunk)
            chunk, n = [], 0
    if chunk:
        yield "".join(chunk)


def _prepare_lm(cfg: PrepareConfig, tmp: Path) -> dict:
    """Monolingual plain text → one token stream per split, the file read as one document, as nanoGPT treats
    tiny Shakespeare: with characters the line breaks are characters; with SentencePiece each line is
    followed by </s> (:func:`encode_lm_text`).

    Streamed: a first read checks every line, counts the characters and finds where the text is not blank
    (without --dev the last ``valid_fraction`` of them is validation, cut where the count falls, as nanoGPT
    cuts), a second
    builds the vocabulary (SentencePiece samples at most 2M lines), then each split is encoded
    ``LM_CHUNK_CHARS`` at a time into its token file. Memory does not grow with the text."""
    files = [cfg.train, *([cfg.dev] if cfg.dev else []), *(path for _, path in cfg.dev_sets())]
    for path in files:
        if not Path(path).is_file():
            raise CorpusError(f"{path}: no such file")
    extents = {path: _text_extent(path) for path in files}  # the one checking and counting read of each file
    total, first, last = extents[cfg.train]
    cut = total if cfg.dev else int(total * (1 - cfg.valid_fraction))
    splits = {"train": (cfg.train, 0, cut), "valid": (cfg.dev, 0, None) if cfg.dev else (cfg.train, cut, None)}
    splits.update({f"valid.{name}": (path, 0, None) for name, path in cfg.dev_sets()})  # --more-dev
    if not 0 <= first < cut:
        raise CorpusError(f"{cfg.train}: no text to train on (the file is empty or blank)")
    for split, (path, start, _) in splits.items():
        if split != "train" and extents[path][2] < start:  # no non-blank character from its start on
            raise CorpusError(f"{path}: no validation text" + (" (give --dev, or a larger --valid-fraction)"
                                                              if split == "valid" else ""))
    # Characters are counted over the whole text (line breaks are characters); SentencePiece learns from lines.
    vocab = _vocabulary(cfg, lambda: _text_pieces(*splits["train"]),
                        lines=lambda: (line for p in _text_pieces(*splits["train"]) for line in p.splitlines()))
    vocab.save(tmp)
    dtype = _token_dtype(len(vocab))
    info: dict = {"kind": "lm", "vocab": vocab_manifest(vocab), "splits": {}}
    for split, (path, start, stop) in splits.items():
        writer, chars = _TokenWriter(tmp, split, dtype, offsets=False), 0
        pieces = _text_pieces(path, start, stop)
        for chunk in _joined(pieces, LM_CHUNK_CHARS):
            writer.add([encode_lm_text(vocab, chunk)])
            chars += len(chunk)
        _, tokens = writer.close()
        info["splits"][split] = {"tokens": tokens, "chars": chars}
    return info


def encode_lm_text(vocab, text: str) -> list[int]:
    """A language model's token stream: characters as they are; with SentencePiece, each line
    followed by </s> (the line break, which SentencePiece does not keep)."""
    if vocab.kind == "char":
        return vocab.encode(text)
    return [i for line in vocab.encode_batch(text.splitlines()) for i in line + [EOS_ID]]


def load_manifest(directory: str | Path) -> dict:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a prepared data directory (no manifest.json); run `aiayn prepare` first")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown data format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


__all__ = ["PrepareConfig", "prepare", "load_manifest", "load_vocab", "sha256_file"]
