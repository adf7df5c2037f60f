"""Encoder-only models fine-tuned as sentence classifiers: `aiayn prepare --classify` (TEXT<TAB>LABEL),
`aiayn train` from a masked-token-pretrained encoder (`train.init_from`, a fresh head), `val_acc` during
training, `aiayn evaluate` (accuracy) and `aiayn classify`, `aiayn.Model.classify`."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import aiayn
from aiayn.config import PrepareConfig
from aiayn.data.corpus import CorpusError
from aiayn.data.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
GOOD = "bright sunny warm happy calm glad kind".split()
BAD = "dark rainy cold sad angry grim cruel".split()
SHARED = "the day was and very a so it felt".split()


def _sentence(rng: random.Random, label: str) -> str:
    """Shared words with two of the label's own words: a label-bearing word anywhere in the sentence."""
    words = rng.choices(SHARED, k=rng.randint(3, 7)) + rng.choices(GOOD if label == "pos" else BAD, k=2)
    rng.shuffle(words)
    return " ".join(words)


def _write(path: Path, n: int, seed: int, header: bool = False) -> Path:
    rng = random.Random(seed)
    rows = [(_sentence(rng, lab), lab) for lab in (rng.choice(["pos", "neg"]) for _ in range(n))]
    path.write_text(("sentence\tlabel\n" if header else "") + "".join(f"{s}\t{lab}\n" for s, lab in rows))
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """An encoder pretrained by masked-token prediction, then fine-tuned on labelled sentences."""
    d = tmp_path_factory.mktemp("classify")
    train_tsv, dev_tsv = _write(d / "train.tsv", 400, 1, header=True), _write(d / "dev.tsv", 80, 2)
    text = "".join(line.split("\t")[0] + "\n" for line in train_tsv.read_text().splitlines()[1:])
    (d / "text.txt").write_text(text)
    aiayn.prepare(train=str(d / "text.txt"), out=str(d / "lm"), kind="lm", vocab="char")
    small = {"preset": "encoder-small", "d_model": 32, "d_ff": 64, "n_encoder_layers": 2, "max_positions": 64,
             "dropout": 0.0, "norm": "pre"}
    aiayn.fit(model=small, train={"data": str(d / "lm"), "out": str(d / "pretrain"), "max_steps": 30, "batch_size": 8,
                                  "lr_schedule": "constant", "lr": 1e-3, "warmup": 5, "threads": 1, "save_every": 30})
    pretrained = d / "pretrain" / "checkpoints" / "step_0000030"
    manifest = aiayn.prepare(train=str(train_tsv), dev=str(dev_tsv), out=str(d / "data"), kind="classify",
                             vocab_from=str(pretrained), more_dev=f"again={dev_tsv}")
    result = aiayn.fit(train={"data": str(d / "data"), "out": str(d / "run"), "init_from": str(pretrained),
                              "max_steps": 120, "max_tokens": 400, "lr_schedule": "constant", "lr": 2e-3, "warmup": 10,
                              "eval_every": 60, "save_every": 60, "best_by": "val_acc", "label_smoothing": 0.0,
                              "threads": 1})
    return d, manifest, result


def test_prepare_reads_labels_and_skips_a_header(classifier):
    d, manifest, _ = classifier
    assert manifest["kind"] == "classify" and manifest["labels"] == ["neg", "pos"]
    assert sum(manifest["splits"]["train"]["per_label"].values()) == manifest["splits"]["train"]["sentences"] == 400
    assert json.loads((d / "data" / "labels.json").read_text()) == ["neg", "pos"]


def test_fine_tuned_classifier_learns_and_is_used_by_every_entry_point(classifier):
    d, _, result = classifier
    log = [json.loads(line) for line in (d / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [60, 120] and result["val_acc"] == evals[-1]["val_acc"]
    assert all(r["val_acc@again"] == r["val_acc"] and "val_loss@again" in r for r in evals)  # --more-dev: the same file
    assert result["val_acc"] >= 0.9, evals
    model = aiayn.load(d / "run" / "best", device="cpu")
    assert model.kind == "classifier" and model.labels == ["neg", "pos"]
    assert model.classify("the day was bright and sunny") == "pos"
    assert model.classify(["it felt cold and grim", "a happy calm day"]) == ["neg", "pos"]
    label, p = model.classify("so very sad", probability=True)
    assert label == "neg" and 0.5 < p <= 1.0
    # the answer for a text does not depend on the batch it is classified in
    texts = [line.split("\t")[0] for line in (d / "dev.tsv").read_text().splitlines()]
    one_by_one = [model.classify(t, probability=True) for t in texts[:20]]
    together = model.classify(texts[:20], probability=True)
    assert [a for a, _ in one_by_one] == [a for a, _ in together]
    assert [p for _, p in one_by_one] == pytest.approx([p for _, p in together], abs=1e-5)
    assert model.evaluate(d / "dev.tsv")["accuracy"] == pytest.approx(result["val_acc"], abs=1e-6)
    with pytest.raises(ValueError, match="translate needs a translation model"):
        model.translate("hola")


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiayn", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_classify_and_evaluate_commands(classifier, tmp_path):
    d, _, result = classifier
    done = _cli("classify", "--model", str(d / "run" / "best"), "--probability", stdin="bright warm day\ncold rainy dark\n")
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert [r[0] for r in rows] == ["pos", "neg"] and all(0.5 < float(r[1]) <= 1 for r in rows)
    ev = _cli("evaluate", "--model", str(d / "run" / "best"), "--test", str(d / "dev.tsv"), "--output", str(tmp_path / "p.txt"))
    assert ev.returncode == 0, ev.stderr
    scores = json.loads(ev.stdout.splitlines()[-1])
    assert scores["n"] == 80 and scores["accuracy"] == pytest.approx(result["val_acc"], abs=1e-4)
    assert set(scores["per_label"]) == {"neg", "pos"} and len((tmp_path / "p.txt").read_text().splitlines()) == 80
    (tmp_path / "odd.tsv").write_text("bright day\tpos\nsad day\tmaybe\n")
    bad = _cli("evaluate", "--model", str(d / "run" / "best"), "--test", str(tmp_path / "odd.tsv"))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"aiayn: error: {tmp_path / 'odd.tsv'}:2: label 'maybe' is not one of the model's (neg, pos)"]
    lm = _cli("classify", "--model", str(ROOT / "models" / "shakespeare-char"), stdin="x\n")
    assert lm.returncode == 2 and "classify needs a fine-tuned classifier" in lm.stderr


def test_prepare_refuses_bad_labelled_data(tmp_path):
    cases = {"one.tsv": ("a b\tpos\nc d\tpos\n", "a classifier needs two classes"),
             "nolabel.tsv": ("a b\tpos\nc d\t\n", "nolabel.tsv:2: no label"),
             "cols.tsv": ("a b\tpos\nc\td\te\tf\n", "cols.tsv:2: expected 2 tab-separated columns")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(CorpusError, match=message):
            prepare(PrepareConfig(train=str(tmp_path / name), out=str(tmp_path / "out"), kind="classify", vocab="char"))
        assert not (tmp_path / "out").exists()
    (tmp_path / "train.tsv").write_text("a b\tpos\nc d\tneg\n")
    (tmp_path / "dev.tsv").write_text("a b\tother\n")
    with pytest.raises(CorpusError, match="label 'other' does not occur in the training data"):
        prepare(PrepareConfig(train=str(tmp_path / "train.tsv"), dev=str(tmp_path / "dev.tsv"), out=str(tmp_path / "out"),
                              kind="classify", vocab="char"))


def test_classification_data_needs_an_encoder_only_model(tmp_path):
    (tmp_path / "train.tsv").write_text("a b\tpos\nc d\tneg\n" * 20)
    aiayn.prepare(train=str(tmp_path / "train.tsv"), out=str(tmp_path / "data"), kind="classify", vocab="char")
    with pytest.raises(ValueError, match="classification data needs an encoder-only model"):
        aiayn.fit(model={"preset": "tiny"}, train={"data": str(tmp_path / "data"), "out": str(tmp_path / "run"),
                                                   "max_steps": 1, "threads": 1})


def test_serve_classifies_and_keeps_a_bad_text_to_its_own_request(classifier):
    """`aiayn serve` with a classifier: /classify answers labels with every label's probability (the same as
    the library's), /info says it is a classifier, a bad text refuses only its request, and /translate and
    /generate name the endpoint to use."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from aiayn.serve.app import Limits, create_app

    d, _, _ = classifier
    model = aiayn.load(d / "run" / "best", device="cpu")
    texts = ["the day was bright and sunny", "it felt cold and grim", "a happy calm day"]
    with TestClient(create_app(d / "run" / "best", Limits(max_texts=4, max_chars=100))) as client:
        info = client.get("/info").json()
        assert info["kind"] == "classifier" and info["labels"] == ["neg", "pos"]
        r = client.post("/classify", json={"texts": texts})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["label"] for x in results] == ["pos", "neg", "pos"]
        expected = model.classify(texts, probability=True)
        for x, (label, p) in zip(results, expected):
            assert x["label"] == label and x["probability"] == pytest.approx(p, abs=1e-5)
            assert sum(x["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
            assert x["probabilities"][label] == x["probability"] == max(x["probabilities"].values())
        assert client.post("/classify", json={"text": "so very sad"}).json()["results"][0]["label"] == "neg"
        bad = client.post("/classify", json={"texts": ["a calm day", "x" * 101]})
        assert bad.status_code == 413 and "text 1 has 101 characters" in bad.json()["detail"]
        surrogate = client.post("/classify", content=b'{"texts": ["a\\ud800"]}', headers={"content-type": "application/json"})
        assert surrogate.status_code == 422 and "unpaired surrogate" in surrogate.json()["detail"]
        assert client.post("/classify", json={"texts": []}).status_code == 422
        assert client.post("/classify", json={"texts": texts[:1]}).json()["results"][0]["label"] == "pos"  # still serving
        wrong = client.post("/translate", json={"text": "hola"})
        assert wrong.status_code == 400 and wrong.json()["detail"] == "this model is a classifier (encoder-only): use /classify"
        assert client.post("/generate", json={"prompt": "a"}).json()["detail"].endswith("use /classify")
    with TestClient(create_app(ROOT / "models" / "shakespeare-char")) as client:
        r = client.post("/classify", json={"text": "ROMEO"})
        assert r.status_code == 400 and r.json()["detail"] == "this model is a language model (decoder-only): use /generate"
