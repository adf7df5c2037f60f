"""The decoder-only language model: generation with and without the cache, evaluation, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aiayn.config import preset
from aiayn.data.prepare import PrepareConfig, prepare
from aiayn.decode.sampling import SampleConfig, generate, generate_text, generate_uncached
from aiayn.evaluate import lm_loss
from aiayn.model import LanguageModel
from aiayn.train.checkpoint import load_model_dir
from aiayn.train.loop import load_run_config, train


def lm(**kw):
    torch.manual_seed(0)
    return LanguageModel(preset("gpt-nano", vocab_size=30, d_model=32, d_ff=64, n_decoder_layers=2, max_positions=16,
                                **kw)).eval()


@pytest.mark.parametrize("prompt_len", [3, 16, 25])  # shorter than, equal to, longer than the block
@pytest.mark.parametrize("cfg", [SampleConfig(max_new_tokens=30, temperature=0),
                                 SampleConfig(max_new_tokens=30, temperature=0.9, top_k=10, top_p=0.9, seed=3)])
def test_cached_generation_equals_uncached(prompt_len, cfg):
    for model in (lm(), lm(norm="post", positional="sinusoidal", activation="relu"), lm(positional="rope")):
        prompt = torch.randint(4, 30, (2, prompt_len))
        assert torch.equal(generate(model, prompt, cfg), generate_uncached(model, prompt, cfg))


def test_same_seed_same_text():
    model = lm()
    prompt = torch.randint(4, 30, (1, 4))
    a = generate(model, prompt, SampleConfig(max_new_tokens=20, seed=11))
    b = generate(model, prompt, SampleConfig(max_new_tokens=20, seed=11))
    c = generate(model, prompt, SampleConfig(max_new_tokens=20, seed=12))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_lm_loss_predicts_every_token_once():
    model = lm()
    tokens = np.random.default_rng(0).integers(4, 30, 50)
    res = lm_loss(model, tokens, block_size=16, batch_size=2)
    assert res["tokens"] == 49
    # Reference: window by window by hand.
    total = 0.0
    for s in range(0, 49, 16):
        x = torch.as_tensor(tokens[s : min(s + 16, 49)])[None]
        y = torch.as_tensor(tokens[s + 1 : min(s + 17, 50)])
        total += torch.nn.functional.cross_entropy(model(x)[0], y, reduction="sum").item()
    assert res["val_loss"] == pytest.approx(total / 49, rel=1e-5)


def test_char_lm_end_to_end(tmp_path):
    text = ("To be, or not to be, that is the question.\n" * 60)
    (tmp_path / "t.txt").write_text(text)
    prepare(PrepareConfig(train=str(tmp_path / "t.txt"), out=str(tmp_path / "d"), kind="lm", vocab="char"))
    run = load_run_config(None, {
        "model": {"preset": "gpt-nano", "d_model": 32, "d_ff": 64, "n_decoder_layers": 2, "max_positions": 32},
        "train": {"data": str(tmp_path / "d"), "out": str(tmp_path / "run"), "lr_schedule": "cosine", "lr": 1e-2,
                  "warmup": 10, "max_steps": 150, "batch_size": 8, "eval_every": 150, "save_every": 150,
                  "weight_decay": 0.1, "clip_norm": 1.0, "label_smoothing": 0.0, "threads": 1}})
    result = train(run)
    assert result["val_loss"] < 0.5  # a repeated line is learnt
    model, vocab, _ = load_model_dir(tmp_path / "run" / "checkpoints" / "step_0000150")
    out = generate_text(model, vocab, "To be, or ", SampleConfig(max_new_tokens=20, temperature=0), stop=["\n"])
    assert out.startswith("not to be")


def test_shipped_shakespeare_model():
    """models/shakespeare-char works right after installation: it loads, the same seed gives the same text,
    and it predicts the first 4,096 validation characters (nanoGPT's split) far better than chance."""
    root = Path(__file__).resolve().parents[1]
    model, vocab, _ = load_model_dir(root / "models" / "shakespeare-char")
    cfg = SampleConfig(max_new_tokens=60, temperature=0.8, seed=1)
    text = generate_text(model, vocab, "ROMEO:", cfg)
    assert len(text) == 60 and text == generate_text(model, vocab, "ROMEO:", cfg)
    corpus = (root / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    valid = np.array(vocab.encode(corpus[int(len(corpus) * 0.9):][:4096]))
    assert lm_loss(model, valid, model.cfg.max_positions)["val_loss"] < 1.6  # uniform over 65 characters: 4.17


def test_mask_tokens_follows_berts_rule():
    from aiayn.model.encoder_only import MASK_ID, mask_tokens

    x = torch.randint(4, 1000, (200, 500))
    x[:, 0] = 3  # a document boundary: never chosen
    inputs, targets = mask_tokens(x, 1000, torch.Generator().manual_seed(0))
    chosen = targets != -100
    assert abs(chosen.float().mean().item() - 0.15) < 0.005 and not chosen[:, 0].any()
    assert torch.equal(targets[chosen], x[chosen]) and torch.equal(inputs[~chosen], x[~chosen])
    masked = (inputs == MASK_ID) & chosen
    kept = (inputs == x) & chosen
    assert abs(masked.sum() / chosen.sum() - 0.8) < 0.01 and abs(kept.sum() / chosen.sum() - 0.1) < 0.01  # 10 % random


def test_encoder_only_model_trains_by_masked_token_prediction(tmp_path):
    """`aiayn train` with an encoder-only model on language-model data: BERT's masked-token objective through
    the same loop, evaluation (`val_loss` per predicted token) and checkpoints; resumes exactly."""
    import aiayn

    text = ("To be, or not to be, that is the question.\n" * 80)
    (tmp_path / "t.txt").write_text(text)
    prepare(PrepareConfig(train=str(tmp_path / "t.txt"), out=str(tmp_path / "d"), kind="lm", vocab="char"))
    overrides = {"model": {"preset": "encoder-small", "d_model": 64, "d_ff": 128, "n_encoder_layers": 2, "max_positions": 32,
                           "dropout": 0.0, "norm": "pre", "activation": "gelu"},
                 "train": {"data": str(tmp_path / "d"), "out": str(tmp_path / "run"), "lr_schedule": "constant", "lr": 3e-3,
                           "warmup": 20, "max_steps": 300, "batch_size": 16, "eval_every": 150, "save_every": 150,
                           "label_smoothing": 0.0, "threads": 1}}
    first = train(load_run_config(None, overrides))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r["val_loss"] for r in log if r["kind"] == "eval"]
    from collections import Counter

    counts = Counter(text)  # a model that ignored the context could do no better than the letters' entropy
    entropy = -sum(c / len(text) * np.log(c / len(text)) for c in counts.values())
    assert evals[-1] < evals[0] and evals[-1] < 0.7 * entropy and first["val_loss"] == evals[-1]
    model = aiayn.load(tmp_path / "run" / "checkpoints" / "step_0000300", device="cpu")
    assert model.kind == "masked language model"
    res = model.evaluate(tmp_path / "t.txt")
    assert res["val_loss"] < 0.7 * entropy and res["tokens"] > 0
    with pytest.raises(ValueError, match="generate needs a language model"):
        model.generate("To be")
    # resume: the masking generator is checkpointed, so a resumed run continues the same corruption
    overrides["train"]["out"] = str(tmp_path / "again")
    overrides["train"]["max_steps"] = 150
    train(load_run_config(None, overrides))
    overrides["train"]["max_steps"] = 300
    resumed = train(load_run_config(None, overrides))
    assert resumed["val_loss"] == pytest.approx(first["val_loss"], rel=1e-5)
