"""docs/lineage.md's commands, on tiny data: every `aiayn` line parses as written (its options exist),
and every recipe it names trains a few steps through `aiayn train`."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from aiayn.cli import build_parser

from .test_cli import aiayn

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "docs" / "lineage.md", ROOT / "docs" / "zh" / "lineage.md"]


def commands(page: Path) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("aiayn ")]


@pytest.mark.parametrize("page", PAGES, ids=["en", "zh"])
def test_every_command_parses(page):
    found = commands(page)
    assert len(found) >= 12
    for line in found:
        build_parser().parse_args(shlex.split(line)[1:])  # SystemExit (an unknown option) fails the test
    for config in re.findall(r"configs/[\w.-]+\.yaml", page.read_text(encoding="utf-8")):
        assert (ROOT / config).is_file(), config


LM_RECIPES = ["shakespeare-mlp.yaml", "shakespeare-lstm.yaml"]
MT_RECIPES = ["bible-es-en-rnn-seq2seq.yaml", "bible-es-en-rnnsearch.yaml"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("lineage")
    (d / "lm.txt").write_text((ROOT / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:20000])
    lines = (ROOT / "data" / "bible-es-en" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    (d / "train.tsv").write_text("\n".join(lines[:300]) + "\n")
    (d / "dev.tsv").write_text("\n".join(lines[300:320]) + "\n")
    aiayn("prepare", "--lm", "--vocab", "char", "--train", str(d / "lm.txt"), "--out", str(d / "lm"))
    aiayn("prepare", "--train", str(d / "train.tsv"), "--dev", str(d / "dev.tsv"), "--vocab-size", "300", "--out", str(d / "mt"))
    return d


@pytest.mark.parametrize("recipe", LM_RECIPES + MT_RECIPES)
def test_every_recipe_trains(tiny_data, recipe):
    data = tiny_data / ("lm" if recipe in LM_RECIPES else "mt")
    out = tiny_data / recipe.replace(".yaml", "")
    aiayn("train", f"configs/{recipe}", "--set", f"train.data={data}", f"train.out={out}", "train.max_steps=3",
          "train.max_minutes=0", "train.eval_every=3", "train.save_every=3", "train.eval_bleu_sentences=2",
          "train.warmup=2")
    assert (out / "checkpoints" / "step_0000003" / "model.safetensors").is_file()


@pytest.mark.parametrize("page", PAGES, ids=["en", "zh"])
def test_measured_tables_quote_the_benchmark_results(page):
    """The ladder's and the word2vec comparison's tables are the figures the benchmarks wrote (their JSON), so
    the page and the measurement cannot drift apart."""
    import json

    text = page.read_text(encoding="utf-8")
    results = ROOT / "benchmarks" / "results"
    ladder = json.loads((results / "lineage_mt.json").read_text())
    assert ladder["minutes"] == 30
    for row in ladder["rows"]:
        cells = [f"{row['bleu']:.2f}", f"{row['chrf']:.2f}", f"{row['steps']:,}", f"{row['target_tokens_per_second']:,}",
                 f"{row['parameters']:,}"]
        assert any(all(f" {c} |" in line or f"**{c}**" in line for c in cells) for line in text.splitlines()), row["model"]
    w2v = json.loads((results / "word2vec_vs_gensim.json").read_text())
    for row in w2v["rows"]:
        m = row["mean"]
        cells = [f"{m['words_per_second']:,.0f}", f"{m['wordsim353']:.4f}", f"{m['simlex999']:.4f}",
                 f"{100 * m['analogy_accuracy']:.2f} %"]
        assert any(all(c in line for c in cells) for line in text.splitlines()), (row["model"], row["implementation"])
    for model, ratios in w2v["summary"].items():
        assert f"{ratios['aiayn']['speed_ratio']:.2f}" in text, model
