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
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..atomic import atomic_directory
from ..config import EOS_ID, PrepareConfig
from .corpus import CorpusError, read_parallel, read_text
from .vocab import CharVocab, SentencePieceVocab, load_vocab, vocab_manifest

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
    for split in ("train", "dev", "test"):
        spec = getattr(cfg, split)
        if spec:
            files[split] = [{"path": p, "sha256": sha256_file(p)} for p in _input_files(spec)]
    if cfg.spm_model:
        files["spm_model"] = [{"path": cfg.spm_model, "sha256": sha256_file(cfg.spm_model)}]
    options = {k: v for k, v in asdict(cfg).items() if k not in ("train", "dev", "test", "out", "spm_model", "overwrite")}
    return {"inputs": files, "options": options}


def _write_array(directory: Path, name: str, seqs: list[list[int]], dtype: np.dtype) -> tuple[int, int]:
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for s in seqs for t in s), dtype=dtype, count=int(offsets[-1]))
    np.save(directory / f"{name}.tokens.npy", flat)
    np.save(directory / f"{name}.offsets.npy", offsets)
    return len(seqs), int(offsets[-1])


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max else np.dtype(np.int32)


def _check_options(cfg: PrepareConfig) -> None:
    """The options' ranges are checked by PrepareConfig itself; here, that a given SentencePiece model loads."""
    if cfg.spm_model:
        p = Path(cfg.spm_model)
        if not p.is_file():
            raise CorpusError(f"{p}: no such file (--spm-model)")
        try:
            SentencePieceVocab.load(p)
        except (RuntimeError, ValueError, OSError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CorpusError(f"{p}: not a usable SentencePiece model ({why})") from None


def prepare(cfg: PrepareConfig) -> dict:
    """Prepare ``cfg.train`` (and dev/test) into ``cfg.out``; returns the manifest."""
    out = Path(cfg.out)
    fp = _fingerprint(cfg)
    _check_options(cfg)
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
        manifest = _prepare_parallel(cfg, tmp) if cfg.kind == "parallel" else _prepare_lm(cfg, tmp)
        manifest.update({"format": FORMAT, **fp})
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def _read_pairs(spec: str) -> tuple[list[tuple[str, str]], dict]:
    pairs, dropped = [], {"empty": 0, "too_long": 0}
    examples: list[str] = []
    for p in read_parallel(spec):
        if not p.src.strip() or not p.tgt.strip():
            dropped["empty"] += 1
            if len(examples) < 5:
                examples.append(f"{p.where}: empty side")
            continue
        pairs.append((p.src.strip(), p.tgt.strip()))
    report = {"read": len(pairs) + dropped["empty"], "dropped": dropped, "examples": examples}
    return pairs, report


def _prepare_parallel(cfg: PrepareConfig, tmp: Path) -> dict:
    splits: dict[str, tuple[list[tuple[str, str]], dict]] = {}
    for split in ("train", "dev", "test"):
        spec = getattr(cfg, split)
        if spec:
            splits[split] = _read_pairs(spec)
    if not splits["train"][0]:
        raise CorpusError(f"{cfg.train}: no usable sentence pairs")

    if cfg.spm_model:
        vocab = SentencePieceVocab.load(Path(cfg.spm_model))
    elif cfg.vocab == "char":
        vocab = CharVocab.train(t for pair in splits["train"][0] for t in pair)
    else:
        # One joint vocabulary from both sides (§5.1), so that the embeddings can be shared (§3.4).
        texts = [t for pair in splits["train"][0] for t in pair]
        vocab = SentencePieceVocab.train(texts, cfg.vocab_size, cfg.vocab, seed=cfg.seed)
    vocab.save(tmp)
    dtype = _token_dtype(len(vocab))

    info: dict = {"kind": "parallel", "vocab": vocab_manifest(vocab), "splits": {}}
    for split, (pairs, report) in splits.items():
        src_ids = vocab.encode_batch([s for s, _ in pairs])
        tgt_ids = vocab.encode_batch([t for _, t in pairs])
        keep = [i for i in range(len(pairs)) if len(src_ids[i]) <= cfg.max_len and len(tgt_ids[i]) <= cfg.max_len]
        report["dropped"]["too_long"] = len(pairs) - len(keep)
        if split == "train" and not keep:
            raise CorpusError(f"{cfg.train}: every pair is longer than max_len={cfg.max_len} tokens")
        n, src_tok = _write_array(tmp, f"{split}.src", [src_ids[i] for i in keep], dtype)
        _, tgt_tok = _write_array(tmp, f"{split}.tgt", [tgt_ids[i] for i in keep], dtype)
        # Keep the raw text of the evaluation splits: BLEU is computed against the untokenized reference.
        if split != "train":
            with open(tmp / f"{split}.txt.jsonl", "w", encoding="utf-8") as f:
                for i in keep:
                    f.write(json.dumps({"src": pairs[i][0], "tgt": pairs[i][1]}, ensure_ascii=False) + "\n")
        info["splits"][split] = {"pairs": n, "src_tokens": src_tok, "tgt_tokens": tgt_tok, **report}
        if sum(report["dropped"].values()):
            log.warning("%s: dropped %s", split, report["dropped"])
    return info


def _prepare_lm(cfg: PrepareConfig, tmp: Path) -> dict:
    """Monolingual text → one token stream per split (documents separated by </s> when a corpus
    is given as JSONL/TSV lines; a plain text file is one document, as nanoGPT treats tiny Shakespeare)."""
    text = read_text(cfg.train)
    if cfg.dev:
        train_text, valid_text = text, read_text(cfg.dev)
    else:
        cut = int(len(text) * (1 - cfg.valid_fraction))
        train_text, valid_text = text[:cut], text[cut:]
    if not train_text.strip():
        raise CorpusError(f"{cfg.train}: no text to train on (the file is empty or blank)")
    if not valid_text.strip():
        raise CorpusError(f"{cfg.dev or cfg.train}: no validation text (give --dev, or a larger --valid-fraction)")
    if cfg.vocab == "char":
        vocab = CharVocab.train([train_text])
    elif cfg.spm_model:
        vocab = SentencePieceVocab.load(Path(cfg.spm_model))
    else:
        vocab = SentencePieceVocab.train(train_text.splitlines(), cfg.vocab_size, cfg.vocab, seed=cfg.seed)
    vocab.save(tmp)
    dtype = _token_dtype(len(vocab))
    info: dict = {"kind": "lm", "vocab": vocab_manifest(vocab), "splits": {}}
    for split, t in (("train", train_text), ("valid", valid_text)):
        arr = np.asarray(encode_lm_text(vocab, t), dtype=dtype)
        np.save(tmp / f"{split}.tokens.npy", arr)
        info["splits"][split] = {"tokens": int(arr.size), "chars": len(t)}
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
