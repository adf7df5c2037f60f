"""Vocabularies: a joint SentencePiece BPE model (§5.1's shared source-target vocabulary), characters,
a Marian-style piece list (one id space over the pieces of a source and a target SentencePiece model:
how an imported OPUS-MT / Hugging Face Marian model tokenizes), or two separate vocabularies, one per side.

All reserve the same special ids: 0 = <pad>, 1 = <unk>, 2 = <s> (BOS), 3 = </s> (EOS).
A vocabulary is saved inside a model or data directory (its manifest names the main file), so that a
directory is everything needed to use it. ``encode(text, side)`` takes ``side="target"`` for target
text: only the piece-list vocabulary splits the two sides differently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from ..config import BOS_ID, EOS_ID, PAD_ID, UNK_ID

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


class Vocab(Protocol):
    kind: str
    filename: str

    def __len__(self) -> int: ...
    def encode(self, text: str, side: str = "source") -> list[int]: ...
    def encode_batch(self, texts: list[str], side: str = "source") -> list[list[int]]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def pieces(self, ids: Iterable[int], side: str = "source") -> list[str]: ...
    def save(self, directory: Path) -> Path: ...


class SentencePieceVocab:
    """A SentencePiece model (BPE by default), trained jointly on source and target text."""

    kind = "sentencepiece"
    filename = "spm.model"

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        ids = [self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()]
        if ids != [PAD_ID, UNK_ID, BOS_ID, EOS_ID]:
            raise ValueError(f"SentencePiece model has special ids {ids}, aiayn needs pad=0 unk=1 bos=2 eos=3")

    @classmethod
    def train(cls, sentences: Iterable[str], vocab_size: int, model_type: str = "bpe", seed: int = 1234,
              character_coverage: float = 1.0, max_sentences: int = 2_000_000) -> SentencePieceVocab:
        import io

        import sentencepiece as spm

        out = io.BytesIO()
        if hasattr(spm, "set_random_generator_seed"):
            spm.set_random_generator_seed(seed)  # deterministic sampling of large inputs
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=out, vocab_size=vocab_size, model_type=model_type,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, character_coverage=character_coverage,
            input_sentence_size=max_sentences, shuffle_input_sentence=True,
            num_threads=2, minloglevel=2, hard_vocab_limit=False,
        )
        return cls(out.getvalue())

    @classmethod
    def load(cls, path: Path) -> SentencePieceVocab:
        return cls(Path(path).read_bytes())

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str, side: str = "source") -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str], side: str = "source") -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([i for i in ids if i > EOS_ID])

    def pieces(self, ids: Iterable[int], side: str = "source") -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]

    def save(self, directory: Path) -> Path:
        path = Path(directory) / self.filename
        path.write_bytes(self.proto)
        return path


class CharVocab:
    """One id per character seen in training (nanoGPT's character-level vocabulary), after the specials.

    A character never seen in training maps to <unk>.
    """

    kind = "char"
    filename = "chars.json"

    def __init__(self, chars: list[str]) -> None:
        self.chars = chars
        self.index = {c: i + len(SPECIALS) for i, c in enumerate(chars)}

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharVocab:
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls(sorted(seen))

    @classmethod
    def load(cls, path: Path) -> CharVocab:
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["chars"])

    def __len__(self) -> int:
        return len(SPECIALS) + len(self.chars)

    def encode(self, text: str, side: str = "source") -> list[int]:
        return [self.index.get(c, UNK_ID) for c in text]

    def encode_batch(self, texts: list[str], side: str = "source") -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        n = len(SPECIALS)
        return "".join(self.chars[i - n] for i in map(int, ids) if i >= n)

    def pieces(self, ids: Iterable[int], side: str = "source") -> list[str]:
        n = len(SPECIALS)
        return [SPECIALS[i] if i < n else self.chars[i - n] for i in map(int, ids)]

    def save(self, directory: Path) -> Path:
        path = Path(directory) / self.filename
        path.write_text(json.dumps({"chars": self.chars}, ensure_ascii=False), encoding="utf-8")
        return path


class PieceVocab:
    """Marian's tokenization (what OPUS-MT models use): a source and a target SentencePiece model split
    text into pieces, and one list of pieces gives them ids (a piece absent from the list is ``<unk>``).
    The list is in aiayn's order: ids 0–3 are the special tokens, whatever their names.

    A leading language tag such as ``>>fra<<`` (multilingual Marian models) is kept as one piece, as
    ``MarianTokenizer`` does. Files: ``pieces.json`` (the list), ``source.spm`` and ``target.spm``.
    """

    kind = "pieces"
    filename = "pieces.json"
    spm_files = ("source.spm", "target.spm")

    def __init__(self, pieces: list[str], source_proto: bytes, target_proto: bytes) -> None:
        import sentencepiece as spm

        if len(pieces) < len(SPECIALS) + 1:
            raise ValueError(f"a piece list needs the {len(SPECIALS)} special tokens and more, got {len(pieces)}")
        if len(set(pieces)) != len(pieces):
            twice = sorted({p for p in pieces if pieces.count(p) > 1})[:3]
            raise ValueError(f"the piece list names {twice} more than once")
        self.piece_list = list(pieces)
        self.index = {p: i for i, p in enumerate(pieces)}
        self.protos = (source_proto, target_proto)
        self.sp = {side: spm.SentencePieceProcessor(model_proto=proto)
                   for side, proto in zip(("source", "target"), self.protos)}

    @classmethod
    def load(cls, path: Path) -> PieceVocab:
        path = Path(path)
        pieces = json.loads(path.read_text(encoding="utf-8"))["pieces"]
        src, tgt = (path.parent / name for name in cls.spm_files)
        return cls(pieces, src.read_bytes(), tgt.read_bytes())

    def __len__(self) -> int:
        return len(self.piece_list)

    def encode(self, text: str, side: str = "source") -> list[int]:
        tag: list[int] = []
        if text.startswith(">>") and (end := text.find("<<")) != -1 and text[:end + 2] in self.index:
            tag, text = [self.index[text[:end + 2]]], text[end + 2:]
        return tag + [self.index.get(p, UNK_ID) for p in self.sp[side].encode(text, out_type=str)]

    def encode_batch(self, texts: list[str], side: str = "source") -> list[list[int]]:
        return [self.encode(t, side) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Target pieces → text through the target SentencePiece model (special tokens dropped); a piece that
        model does not know (the shared list holds both sides') keeps its text, ▁ as a space (MarianTokenizer)."""
        text = self.sp["target"].decode_pieces([self.piece_list[i] for i in map(int, ids) if i > EOS_ID])
        return text.replace("\u2581", " ").strip()

    def pieces(self, ids: Iterable[int], side: str = "source") -> list[str]:
        return [self.piece_list[int(i)] for i in ids]

    def save(self, directory: Path) -> Path:
        path = Path(directory) / self.filename
        path.write_text(json.dumps({"pieces": self.piece_list}, ensure_ascii=False), encoding="utf-8")
        for name, proto in zip(self.spm_files, self.protos):
            (Path(directory) / name).write_bytes(proto)
        return path


class SeparateVocab:
    """A source and a target vocabulary of their own (fairseq's default, Marian's ``--no-shared-vocab``):
    two id spaces, so the two embedding tables are separate (``model.tie``: two_way or none; §3.4's
    three-way tying needs one vocabulary). ``len()`` is the source side's size, ``target_size`` the
    target's. Saved as ``separate.json`` with each side's files in ``source/`` and ``target/``."""

    kind = "separate"
    filename = "separate.json"

    def __init__(self, source: Vocab, target: Vocab) -> None:
        self.source, self.target = source, target

    @classmethod
    def load(cls, path: Path) -> SeparateVocab:
        d = Path(path).parent
        return cls(load_vocab(d / "source"), load_vocab(d / "target"))

    def side(self, side: str) -> Vocab:
        if side not in ("source", "target"):
            raise ValueError(f"side must be 'source' or 'target', got {side!r}")
        return self.source if side == "source" else self.target

    def __len__(self) -> int:
        return len(self.source)

    @property
    def target_size(self) -> int:
        return len(self.target)

    def encode(self, text: str, side: str = "source") -> list[int]:
        return self.side(side).encode(text, side)  # a side that splits by side (PieceVocab) is told which

    def encode_batch(self, texts: list[str], side: str = "source") -> list[list[int]]:
        return self.side(side).encode_batch(texts, side)

    def decode(self, ids: Iterable[int]) -> str:
        return self.target.decode(ids)

    def pieces(self, ids: Iterable[int], side: str = "source") -> list[str]:
        return self.side(side).pieces(ids)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / self.filename
        for name, v in (("source", self.source), ("target", self.target)):
            (Path(directory) / name).mkdir(exist_ok=True)
            v.save(Path(directory) / name)
        path.write_text(json.dumps({"source": vocab_manifest(self.source), "target": vocab_manifest(self.target)}) + "\n")
        return path


def target_size(vocab: Vocab) -> int:
    """How many ids the target side has (a shared vocabulary: all of them)."""
    return getattr(vocab, "target_size", len(vocab))


def vocab_files(vocab: Vocab) -> dict[str, bytes]:
    """The files ``vocab.save`` writes, by relative path: everything that decides how it encodes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        vocab.save(Path(tmp))
        return {str(p.relative_to(tmp)): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}


def same_vocabulary(a: Vocab, b: Vocab) -> bool:
    """Whether ``a`` and ``b`` are the same vocabulary (the same kind, pieces and models on both sides)."""
    return type(a) is type(b) and vocab_files(a) == vocab_files(b)


def sentencepiece_vocab(proto: bytes) -> SentencePieceVocab | PieceVocab:
    """A SentencePiece model someone trained, as a vocabulary. With aiayn's special ids (pad 0, unk 1, bos 2,
    eos 3) it is used as it is; with any others (SentencePiece's defaults are unk 0, bos 1, eos 2 and no pad)
    its pieces are renumbered into aiayn's order — the specials first, a missing one added under its usual
    name — and the same model splits both sides (a :class:`PieceVocab`). Text is split exactly as the model
    splits it either way."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=proto)
    ids = [sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()]
    if ids == [PAD_ID, UNK_ID, BOS_ID, EOS_ID]:
        return SentencePieceVocab(proto)
    if ids[1] < 0:
        raise ValueError("the SentencePiece model has no unknown-piece id")
    head = [sp.id_to_piece(i) if i >= 0 else name for i, name in zip(ids, SPECIALS)]
    rest = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if i not in ids]
    return PieceVocab(head + rest, proto, proto)


def vocab_manifest(vocab: Vocab) -> dict:
    """How a data or model directory describes its vocabulary: ``{"kind", "file", "size"}`` (and
    ``target_size`` for separate vocabularies)."""
    out = {"kind": vocab.kind, "file": vocab.filename, "size": len(vocab)}
    if isinstance(vocab, SeparateVocab):
        out["target_size"] = vocab.target_size
    return out


def load_vocab(directory: str | Path) -> SentencePieceVocab | CharVocab | PieceVocab | SeparateVocab:
    """The vocabulary stored in a data or model directory."""
    directory = Path(directory)
    if (directory / SeparateVocab.filename).is_file():
        return SeparateVocab.load(directory / SeparateVocab.filename)
    if (directory / PieceVocab.filename).is_file():
        return PieceVocab.load(directory / PieceVocab.filename)
    if (directory / SentencePieceVocab.filename).is_file():
        return SentencePieceVocab.load(directory / SentencePieceVocab.filename)
    if (directory / CharVocab.filename).is_file():
        return CharVocab.load(directory / CharVocab.filename)
    raise FileNotFoundError(f"{directory}: no vocabulary ({SentencePieceVocab.filename}, {CharVocab.filename}, "
                            f"{PieceVocab.filename} or {SeparateVocab.filename})")
