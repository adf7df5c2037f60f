"""Evaluation: sacreBLEU (BLEU and chrF, with signatures) for translation; loss and perplexity for
both translation (teacher-forced NLL on a corpus) and language models (each validation token
predicted exactly once, in consecutive windows of the block size); accuracy for classifiers.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from .config import MASKED_LANGUAGE_MODELS, PAD_ID
from .data.batching import ParallelData, collate, token_batches
from .data.corpus import CorpusError, read_parallel
from .decode.translate import DecodeConfig, Translator
from .model import device_of


def score_translations(hypotheses: list[str], references: list[str], tokenize: str = "13a",
                       tokenized_bleu_lang: str | None = None) -> dict:
    """Corpus BLEU and chrF with sacreBLEU (mixed case; ``tokenize``: its tokenizer, 13a by default). With
    ``tokenized_bleu_lang`` also ``tokenized_bleu``: the paper's kind of BLEU (:func:`tokenized_bleu`)."""
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.metrics.bleu import _TOKENIZERS

    if tokenize not in _TOKENIZERS:
        raise ValueError(f"unknown sacreBLEU tokenizer {tokenize!r}; one of {', '.join(_TOKENIZERS)}")
    bleu, chrf = BLEU(tokenize=tokenize), CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    out = {
        "bleu": round(b.score, 2), "chrf": round(c.score, 2),
        "signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature()),
        "n": len(hypotheses), "bleu_detail": str(b),
    }
    if tokenized_bleu_lang:
        out["tokenized_bleu"] = round(tokenized_bleu(hypotheses, references, tokenized_bleu_lang), 2)
    return out


def tokenized_bleu(hypotheses: list[str], references: list[str], lang: str) -> float:
    """BLEU as the paper reports it (tensor2tensor's ``get_ende_bleu.sh``): both sides tokenized with the
    Moses tokenizer (sacremoses) for ``lang``, hyphenated compounds split as ``a ##AT##-##AT## b``, then
    multi-bleu on the tokens (no further tokenization). It reads higher than sacreBLEU on the same
    output (PAPER.md: about 0.7 for En-De); the two are not comparable, hence the separate name."""
    try:
        from sacremoses import MosesTokenizer
    except ImportError:
        raise ValueError("tokenized BLEU needs sacremoses: pip install 'aiayn[paper]'") from None
    from sacrebleu.metrics import BLEU

    moses = MosesTokenizer(lang=lang)

    def tok(s: str) -> str:
        return re.sub(r"(\S)-(\S)", r"\1 ##AT##-##AT## \2", moses.tokenize(s, escape=False, return_str=True))

    return BLEU(tokenize="none", force=True).corpus_score([tok(h) for h in hypotheses], [[tok(r) for r in references]]).score


def read_test_pairs(path: str | Path, limit: int = 0) -> tuple[list[str], list[str]]:
    """Source and reference columns of a test file (TSV, JSONL or ``src,tgt`` files)."""
    src, ref = [], []
    for p in read_parallel(path):
        if not p.src.strip():
            raise CorpusError(f"{p.where}: empty source sentence in a test set")
        src.append(p.src.strip())
        ref.append(p.tgt.strip())
        if limit and len(src) >= limit:
            break
    if not src:
        raise CorpusError(f"{path}: the test set is empty")
    return src, ref


def evaluate_translation(model, vocab, test: str | Path, decode: DecodeConfig | None = None,
                         limit: int = 0, device: str | None = None, tokenize: str = "13a",
                         tokenized_bleu_lang: str | None = None) -> tuple[dict, list[str]]:
    src, ref = read_test_pairs(test, limit)
    hyps = Translator(model, vocab, decode, device).translate(src)
    return score_translations(hyps, ref, tokenize, tokenized_bleu_lang), hyps


@torch.no_grad()
def corpus_loss(model, data: ParallelData, max_tokens: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """Teacher-forced per-token NLL (no label smoothing) and perplexity over a whole split:
    ``{"val_loss": nats/token, "ppl": perplexity}``, the names every evaluation in aiayn reports."""
    model.eval()
    total, tokens = 0.0, 0
    for idx in token_batches(data.src_lens, data.tgt_lens, max_tokens, shuffle=False):
        src, tgt_in, tgt_out = (t.to(device) for t in collate(data, idx))
        logits = model(src, tgt_in).float()
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD_ID,
                                                   reduction="sum").item()
        tokens += int((tgt_out != PAD_ID).sum())
    loss = total / max(tokens, 1)
    return {"val_loss": loss, "ppl": math.exp(min(loss, 50.0))}


@torch.no_grad()
def classification_validation(model, data, max_tokens: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """A classifier over a labelled split (:class:`~aiayn.data.batching.LabelledData`): ``val_loss`` (mean
    NLL per sentence, no label smoothing) and ``val_acc`` (the fraction whose most probable class is right)."""
    model.eval()
    total, right = 0.0, 0
    for idx in data.batches(max_tokens, shuffle=False):
        x, y = (t.to(device) for t in data.collate(idx))
        logits = model(x, classify=True).float()
        total += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        right += int((logits.argmax(-1) == y).sum())
    n = max(len(data), 1)
    return {"val_loss": total / n, "val_acc": right / n}


@torch.no_grad()
def class_probabilities(model, ids: list[list[int]], max_tokens: int = 4096) -> torch.Tensor:
    """(N, n_classes): each encoded text's probability of every class, in input order (batches of similar
    length under ``max_tokens``; a text's answer does not depend on its batch)."""
    from .data.batching import source_tensor

    lens = np.array([len(x) + 1 for x in ids], dtype=np.int64)
    out = torch.zeros(len(ids), model.cfg.n_classes)
    model.eval()
    for idx in token_batches(lens, lens, max_tokens, shuffle=False, oversize_alone=True):
        logits = model(source_tensor([ids[i] for i in idx]).to(device_of(model)), classify=True)
        out[torch.from_numpy(idx)] = logits.float().softmax(-1).cpu()
    return out


def classify_texts(model, vocab, labels: list[str], texts: list[str], max_tokens: int = 4096) -> list[tuple[str, float]]:
    """Each text's most probable label and its probability, in input order."""
    if len(labels) != model.cfg.n_classes:
        raise ValueError(f"the model has {model.cfg.n_classes} classes but {len(labels)} label names")
    best = class_probabilities(model, vocab.encode_batch([t.strip() for t in texts]), max_tokens).max(-1)
    return [(labels[c], p) for p, c in zip(best.values.tolist(), best.indices.tolist())]


def evaluate_classifier(model, vocab, labels: list[str], test: str | Path, limit: int = 0) -> tuple[dict, list[str]]:
    """Accuracy of a classifier on a labelled file (TEXT<TAB>LABEL): ``{"accuracy", "n", "per_label"}`` (each
    label's recall: right / occurrences) and the predicted labels."""
    from .data.corpus import read_labelled

    texts, gold = [], []
    for p in read_labelled(test):
        if not p.src.strip():
            continue
        if p.tgt.strip() not in labels:
            raise CorpusError(f"{p.where}: label {p.tgt.strip()!r} is not one of the model's ({', '.join(labels[:10])})")
        texts.append(p.src)
        gold.append(p.tgt.strip())
        if limit and len(texts) >= limit:
            break
    if not texts:
        raise CorpusError(f"{test}: no labelled sentences")
    predicted = [label for label, _ in classify_texts(model, vocab, labels, texts)]
    right = [g == q for g, q in zip(gold, predicted)]
    per_label = {lab: round(sum(r for g, r in zip(gold, right) if g == lab) / gold.count(lab), 4)
                 for lab in labels if lab in gold}
    return {"accuracy": sum(right) / len(right), "n": len(right), "per_label": per_label}, predicted


def greedy_bleu(model, vocab, dev_jsonl: Path, n: int, device: torch.device | str = "cpu", beam: int = 1) -> float:
    """BLEU on the first ``n`` validation sentences, greedy or with a ``beam`` (during training: ``val_bleu``)."""
    src, ref = [], []
    with open(dev_jsonl, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            src.append(obj["src"])
            ref.append(obj["tgt"])
            if len(src) >= n:
                break
    hyps = Translator(model, vocab, DecodeConfig(beam=beam), device).translate(src)
    return score_translations(hyps, ref)["bleu"]


@torch.no_grad()
def lm_loss(model, tokens: np.ndarray, block_size: int, device: torch.device | str = "cpu",
            batch_size: int = 32) -> dict[str, float]:
    """Mean NLL (nats/token) predicting every token of ``tokens[1:]`` exactly once.

    The text is cut into consecutive windows of ``block_size`` inputs; window w predicts tokens
    w·block+1 … (w+1)·block from the ones before it in the window. Deterministic.
    """
    model.eval()
    x_all = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    n_pred = x_all.numel() - 1
    if n_pred < 1:
        raise ValueError("need at least two tokens to evaluate a language model")
    total, count = 0.0, 0
    starts = list(range(0, n_pred, block_size))
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        lengths = [min(block_size, n_pred - s) for s in chunk]
        width = max(lengths)
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        y = torch.full((len(chunk), width), -100, dtype=torch.long)
        for r, (s, n) in enumerate(zip(chunk, lengths)):
            x[r, :n] = x_all[s : s + n]
            y[r, :n] = x_all[s + 1 : s + 1 + n]
        logits = model(x.to(device)).float()
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), ignore_index=-100,
                                                   reduction="sum").item()
        count += sum(lengths)
    loss = total / count
    return {"val_loss": loss, "ppl": math.exp(loss), "tokens": count}




@torch.no_grad()
def mlm_loss(model, tokens: np.ndarray, block_size: int, device: torch.device | str = "cpu", batch_size: int = 32,
             seed: int = 0) -> dict[str, float]:
    """Masked-token prediction loss (nats per predicted token) of an encoder-only model over consecutive
    windows of ``block_size`` tokens, with BERT's corruption drawn from a fixed ``seed`` (so that two
    evaluations of the same text compare)."""
    from .model.encoder_only import mask_tokens

    model.eval()
    x_all = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    if x_all.numel() < 2:
        raise ValueError("need at least two tokens to evaluate a masked language model")
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    windows = list(x_all.split(block_size))
    for i in range(0, len(windows), batch_size):
        x = torch.nn.utils.rnn.pad_sequence(windows[i : i + batch_size], batch_first=True, padding_value=PAD_ID)
        inputs, targets = mask_tokens(x, model.cfg.vocab_size, gen)
        targets[x == PAD_ID] = -100
        logits = model(inputs.to(device), mlm=True).float()
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), ignore_index=-100,
                                                   reduction="sum").item()
        count += int((targets != -100).sum())
    loss = total / max(count, 1)
    return {"val_loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count}


def lm_scorer(model):
    """How a language model is scored: :func:`mlm_loss` (masked-token prediction) for an encoder-only
    model, :func:`lm_loss` (every next token) for the others."""
    return mlm_loss if model.cfg.arch in MASKED_LANGUAGE_MODELS else lm_loss


def lm_validation(model, valid_tokens, block_size: int, limit: int = 0, device: torch.device | str = "cpu") -> dict:
    """What training logs for a language model: ``{"val_loss", "ppl"}`` over the first ``limit`` validation
    tokens (0: all), scored by :func:`lm_scorer` (next-token prediction reads one token more than it predicts)."""
    score = lm_scorer(model)
    n = (limit or len(valid_tokens)) + (score is lm_loss)
    res = score(model, np.asarray(valid_tokens[:n]), block_size, device)
    return {"val_loss": res["val_loss"], "ppl": res["ppl"]}


def evaluate_lm_text(model, vocab, path: str | Path, tail_fraction: float = 0.0, block_size: int = 0) -> dict:
    """Loss and perplexity of a language model on a text file, every token predicted once, in windows of
    ``block_size`` (0: the model's ``max_positions``). ``tail_fraction`` scores only the last fraction of
    the text: 0.1 is the validation split ``aiayn prepare --lm`` (and nanoGPT) make."""
    from .data.corpus import read_text
    from .data.prepare import encode_lm_text

    if not 0.0 <= tail_fraction < 1.0:
        raise ValueError(f"tail fraction must be in [0, 1), got {tail_fraction}")
    if block_size < 0:
        raise ValueError(f"block size must be 0 (the model's) or more, got {block_size}")
    text = read_text(path)
    if tail_fraction:
        text = text[int(len(text) * (1 - tail_fraction)) :]
    ids = np.asarray(encode_lm_text(vocab, text))
    return lm_scorer(model)(model, ids, block_size or model.cfg.max_positions, device=device_of(model))
