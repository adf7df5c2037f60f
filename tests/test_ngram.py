"""The count-based language model (aiayn.model.ngram): a distribution for every context, the same
numbers as NLTK's implementation, and the Transformer LM's training, evaluation and sampling paths."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aiayn.config import ConfigError, ModelConfig
from aiayn.data.prepare import PrepareConfig, prepare
from aiayn.decode.sampling import SampleConfig, generate, generate_text, generate_uncached
from aiayn.evaluate import lm_loss
from aiayn.model import NGramLM, build_model
from aiayn.train.checkpoint import load_model_dir
from aiayn.train.loop import load_run_config, train

from .test_cli import aiayn

TEXT = "the cat sat on the mat and the dog sat on the log while the cat ran to the dog"


def kn(order: int, vocab_size: int, tokens, **kw) -> NGramLM:
    return build_model(ModelConfig(arch="ngram", order=order, vocab_size=vocab_size, **kw)).fit(tokens)


@settings(deadline=None)
@given(order=st.integers(1, 4), data=st.data())
def test_every_context_gets_a_distribution(order, data):
    # Seen and unseen contexts, contexts cut short by the start of a row (−1), tokens never seen.
    v = data.draw(st.integers(6, 12))
    stream = np.array(data.draw(st.lists(st.integers(4, v - 2), min_size=order, max_size=60)))  # id v-1: never seen
    model = kn(order, v, stream)
    rows = data.draw(st.lists(st.lists(st.integers(-1, v - 1), min_size=order - 1, max_size=order - 1), min_size=1, max_size=8))
    ctx = torch.tensor(rows, dtype=torch.long).view(len(rows), order - 1)
    ctx = torch.cat([ctx, torch.as_tensor(stream[: order - 1]).view(1, -1)])  # one context that was seen
    ctx = torch.where(torch.cummax((ctx < 0).int().flip(1), 1).values.flip(1).bool(), -1, ctx)  # −1 only on the left
    p = model.probs(ctx)
    assert torch.all(p > 0)  # every token keeps some probability (the uniform floor of order 0)
    torch.testing.assert_close(p.sum(1), torch.ones(len(ctx), dtype=torch.float64), atol=1e-12, rtol=0)


def test_counts_and_discounts_by_hand():
    # "a b a b a c": bigram counts ab 2, ba 2, ac 1; continuation counts of the unigrams: a 1 (after b),
    # b 1 (after a), c 1 (after a). D = 0.5 everywhere.
    a, b, c = 4, 5, 6
    model = kn(2, 8, [a, b, a, b, a, c], discounts=[0.5, 0.5])
    uni = np.array([0, 0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 0]) - 0.5 / 3 * np.array([0, 0, 0, 0, 1, 1, 1, 0])
    uni += 0.5 * 3 / 3 / 8  # γ_1 = D·N/T = 0.5·3/3, times the uniform 1/8
    np.testing.assert_allclose(model.probs(torch.tensor([[-1]]))[0].numpy(), uni)
    # after "a": c(ab) = 2, c(ac) = 1, T = 3, N = 2 → P(b|a) = 1.5/3 + 0.5·2/3·P_1(b)
    p = model.probs(torch.tensor([[a]]))[0].numpy()
    assert p[b] == pytest.approx(1.5 / 3 + 0.5 * 2 / 3 * uni[b])
    assert p[c] == pytest.approx(0.5 / 3 + 0.5 * 2 / 3 * uni[c])
    assert p[a] == pytest.approx(0.5 * 2 / 3 * uni[a])
    assert model.probs(torch.tensor([[7]]))[0].numpy() == pytest.approx(uni)  # an unseen context: order 1


@pytest.mark.parametrize("order", [2, 3, 4])
def test_perplexity_equals_nltk(order):
    """The same perplexity as NLTK's KneserNeyInterpolated, on the same (word, context) pairs that
    aiayn's evaluation scores. NLTK's conventions, set by options: one discount (its default 0.1) and
    a unigram level without discount or uniform floor (D_1 = 0). The corpus is a text said twice, so
    that every n-gram at its start also occurs with a left neighbour (NLTK counts γ's types by raw
    counts, aiayn by the continuation counts it discounts; the two agree on such a corpus)."""
    nltk_lm = pytest.importorskip("nltk.lm")
    from nltk.util import everygrams

    words = TEXT.split()
    vocab = sorted(set(words))
    ids = np.array([vocab.index(w) + 4 for w in words] * 2)
    seq = [str(t) for t in ids]
    ref = nltk_lm.KneserNeyInterpolated(order, discount=0.1)
    ref.fit([list(everygrams(seq, max_len=order))], vocabulary_text=seq)
    model = kn(order, len(vocab) + 4, ids, discounts=[0.0] + [0.1] * (order - 1))

    test = ids[3:40]
    block = 8
    ours = lm_loss(model, test, block)
    pairs = []  # window w predicts test[s+1 … s+block] from what precedes it inside the window
    for s in range(0, len(test) - 1, block):
        for i in range(s, min(s + block, len(test) - 1)):
            pairs.append((seq[3 + i + 1], seq[3 + max(s, i - order + 2) : 3 + i + 1]))
    nll = -sum(math.log(ref.score(w, ctx)) for w, ctx in pairs) / len(pairs)
    assert ours["tokens"] == len(pairs)
    assert ours["val_loss"] == pytest.approx(nll, rel=1e-6)
    assert ours["ppl"] == pytest.approx(ref.perplexity([tuple(ctx) + (w,) for w, ctx in pairs]), rel=1e-5)


def test_higher_orders_fit_better_and_options_are_checked():
    # A second-order Markov chain: the next token depends on the two before it, with some noise.
    rng = np.random.default_rng(0)
    table = rng.integers(4, 12, size=(16, 16))
    text = [4, 5]
    for _ in range(3000):
        text.append(int(table[text[-2], text[-1]]) if rng.random() < 0.9 else int(rng.integers(4, 12)))
    text = np.array(text)
    losses = [lm_loss(kn(n, 16, text[:2500]), text[2500:], 64)["val_loss"] for n in (1, 2, 3)]
    assert losses[0] > losses[1] > losses[2]
    with pytest.raises(ConfigError, match="one per order"):
        ModelConfig(arch="ngram", order=3, discounts=[0.1, 0.1])
    with pytest.raises(ConfigError, match="order must be"):
        ModelConfig(arch="ngram", order=0)
    with pytest.raises(ValueError, match="at least 3 tokens"):
        kn(3, 16, [4, 5])


def test_sampling_steps_equal_the_full_forward():
    ids = np.array([4 + (i * 5) % 7 for i in range(200)])
    model = kn(3, 12, ids)
    x = torch.as_tensor(ids[:20]).view(2, 10)
    state = model.start()
    steps = torch.cat([model.step(x[:, :3], state), *(model.step(x[:, i : i + 1], state) for i in range(3, 10))], 1)
    torch.testing.assert_close(steps, model(x))
    cfg = SampleConfig(max_new_tokens=30, temperature=1.0, seed=3)
    assert torch.equal(generate(model, x[:1, :4], cfg), generate_uncached(model, x[:1, :4], cfg))


def test_train_evaluate_generate_through_the_usual_paths(tmp_path):
    (tmp_path / "t.txt").write_text("To be, or not to be, that is the question.\n" * 40)
    prepare(PrepareConfig(train=str(tmp_path / "t.txt"), out=str(tmp_path / "d"), kind="lm", vocab="char"))
    run = load_run_config(None, {"model": {"preset": "kn5", "order": 4},
                                 "train": {"data": str(tmp_path / "d"), "out": str(tmp_path / "run")}})
    result = train(run)
    assert result["val_loss"] < 0.1  # a repeated line: each character follows from the three before it
    model, vocab, config = load_model_dir(tmp_path / "run" / "best")
    assert config["model"]["arch"] == "ngram" and config["metrics"]["val_loss"] == pytest.approx(result["val_loss"])
    out = generate_text(model, vocab, "To be, or ", SampleConfig(max_new_tokens=20, temperature=0), stop=["\n"])
    assert out.startswith("not to be")
    # The command line: the same loss as training measured (the validation tail of the text), and text.
    r = aiayn("evaluate", "--model", str(tmp_path / "run" / "best"), "--test", str(tmp_path / "t.txt"),
              "--tail-fraction", "0.1")
    assert json.loads(r.stdout.splitlines()[-1])["val_loss"] == pytest.approx(result["val_loss"], abs=1e-3)
    r = aiayn("generate", "--model", str(tmp_path / "run" / "best"), "--prompt", "that is", "--seed", "1",
              "--max-new-tokens", "13", "--temperature", "0")
    assert r.stdout.startswith("that is the question")
    # Rerunning counts again into the same run directory; a translation corpus is refused in one line.
    assert train(run)["val_loss"] == pytest.approx(result["val_loss"])
    r = aiayn("train", "--set", "model.preset=kn5", "train.data=data/bible-es-en", f"train.out={tmp_path}/x", check=False)
    assert r.returncode != 0 and r.stderr.startswith("aiayn: error:") and len(r.stderr.strip().splitlines()) == 1


def test_served_like_any_language_model(tmp_path):
    from fastapi.testclient import TestClient

    from aiayn.serve.app import create_app

    (tmp_path / "t.txt").write_text("To be, or not to be, that is the question.\n" * 40)
    prepare(PrepareConfig(train=str(tmp_path / "t.txt"), out=str(tmp_path / "d"), kind="lm", vocab="char"))
    train(load_run_config(None, {"model": {"preset": "kn5"},
                                 "train": {"data": str(tmp_path / "d"), "out": str(tmp_path / "run")}}))
    with TestClient(create_app(tmp_path / "run" / "best")) as c:
        r = c.post("/generate", json={"prompt": "To be, or", "max_new_tokens": 8, "temperature": 0})
        assert r.status_code == 200 and r.json()["text"] == " not to "
        assert c.get("/info").json()["arch"] == "ngram"
        assert c.post("/translate", json={"texts": ["hola"]}).status_code == 400
