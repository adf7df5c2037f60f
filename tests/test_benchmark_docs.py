"""docs/inference.md quotes the latest translation- and training-speed runs as the benchmarks wrote them: the
table between its <!-- translate_speed.md --> markers is benchmarks/results/translate_speed.md, which is the JSON's
figures (and the same for train_speed)."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def benchmark(name: str):
    """The module benchmarks/<name>.py (the benchmarks import their neighbours, so their folder is on the path)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.parametrize("name", ["translate_speed", "train_speed"])
def test_inference_docs_quote_the_speed_runs(name):
    markdown = benchmark(name).markdown
    record = json.loads((RESULTS / f"{name}.json").read_text())
    table = (RESULTS / f"{name}.md").read_text(encoding="utf-8")
    assert table == markdown(record)
    assert record["machine"]["cpu"] in table.splitlines()[0]  # the CPU it ran on, beside the figures
    page = (ROOT / "docs" / "inference.md").read_text(encoding="utf-8")
    quoted = re.findall(rf"<!-- {name}\.md -->\n(.*?)<!-- /{name}\.md -->", page, flags=re.S)
    assert quoted == [table]


def test_the_goal_column_says_met_only_when_every_round_of_every_search_reaches_it():
    goal_verdict = benchmark("translate_speed").goal_verdict
    assert goal_verdict([[1.53], [1.6]], 1.5) == "met"
    assert goal_verdict([[1.53, 1.7], [1.31, 1.4]], 1.5) == "not met (greedy)"
    assert goal_verdict([[0.95], [1.21]], 1.0) == "not met (beam 4)"
    assert goal_verdict([[0.9], None], 1.0) == "not met (beam 4)"
    assert goal_verdict([None, [1.0, 1.2]], 1.0) == "met"
    assert goal_verdict([[0.93, 1.13], [1.2, 1.3]], 1.0) == "at the edge (beam 4)"
    assert goal_verdict([[0.93, 1.13], [0.8, 0.9]], 1.0) == "at the edge (beam 4); not met (greedy)"


def test_a_ratio_whose_rounds_straddle_the_goal_is_at_the_edge_whatever_its_best_round_says():
    from machine import goal_call, ratio_cell  # (benchmark() above put benchmarks/ on the path once)

    assert goal_call([1.0, 1.02], 1.0) == "met"
    assert goal_call([0.99, 1.4], 1.0) == "at the edge"
    assert goal_call([0.7, 0.99], 1.0) == "not met"
    with pytest.raises(ValueError):
        goal_call([], 1.0)
    assert ratio_cell(1.07, [0.93, 1.13, 1.05]) == "1.07 (0.93–1.13)"
    assert ratio_cell(1.07, [1.07]) == "1.07"
    markdown = benchmark("translate_speed").markdown
    engines = ("beam4 aiayn-float32", "beam4 ct2-float32", "beam1 aiayn-float32", "beam1 ct2-float32")
    record = {"date": "2026-12-07", "machine": {"cpu": "X", "cores": 2, "features": []}, "threads": 2, "torch": "2",
              "sentences": 10, "batch": 32, "rounds": 3, "tok_s": dict(zip(engines, (11, 10, 20, 10))),
              "bleu": dict.fromkeys(engines, 30.0),
              "ratios": {"beam4 aiayn-float32/ct2-float32": 1.1, "beam1 aiayn-float32/ct2-float32": 2.0},
              "ratio_rounds": {"beam4 aiayn-float32/ct2-float32": [1.1, 0.95, 1.02],
                               "beam1 aiayn-float32/ct2-float32": [2.0, 1.9, 1.8]}}
    row = next(line for line in markdown(record).splitlines() if line.startswith("| aiayn float32 / CTranslate2"))
    assert row == ("| aiayn float32 / CTranslate2 float32 | 1.10 (0.95–1.10) ≈ | 2.00 (1.80–2.00) ✓ | "
                   "≥ 1.0: at the edge (beam 4) |")


def test_the_training_table_says_when_the_goal_is_out_of_reach():
    """ceiling = ratio ÷ aiayn's share of matrix products: below the goal, no speed-up outside them can reach it."""
    markdown = benchmark("train_speed").markdown
    record = {"date": "2026-12-07", "machine": {"cpu": "X", "cores": 2, "features": []}, "threads": 2,
              "torch": "2", "steps": 20, "max_tokens": 2500,
              "tok_s": {f"small {d}": {"aiayn": 100, "hf": 100} for d in ("float32", "bfloat16")} | {
                  "base float32": {"aiayn": 160, "hf": 100}},
              "ratios": {"small float32": 1.13, "small bfloat16": 1.41, "base float32": 1.6},
              "gemm_share": {"small float32": {"aiayn": 0.8, "hf": 0.6}, "small bfloat16": {"aiayn": 0.6, "hf": 0.4},
                             "base float32": {"aiayn": 0.9, "hf": 0.7}}}
    rows = {line.split(" | ")[1]: line for line in markdown(record).splitlines() if line.startswith("| small |")}
    assert rows["float32"].endswith("| 1.41 | not met; out of reach (ceiling) |")  # 1.13 / 0.8
    assert rows["bf16 autocast"].endswith("| 2.35 | not met |")  # 1.41 / 0.6
    assert "| **1.60** | 90% · 70% | 1.78 | met |" in markdown(record)
    straddling = record | {"rounds": 3, "ratio_rounds": {"small float32": [1.13, 1.0, 1.1], "small bfloat16": [1.41, 1.3, 1.52],
                                                          "base float32": [1.6, 1.55, 1.5]}}
    rows = {line.split(" | ")[1]: line for line in markdown(straddling).splitlines() if line.startswith("| small |")}
    assert rows["float32"].endswith("| **1.13 (1.00–1.13)** | 80% · 60% | 1.41 | not met; out of reach (ceiling) |")
    assert rows["bf16 autocast"].endswith("| **1.41 (1.30–1.52)** | 60% · 40% | 2.35 | at the edge |")
    assert "| **1.60 (1.50–1.60)** | 90% · 70% | 1.78 | met |" in markdown(straddling)
    assert markdown(straddling).splitlines()[0].endswith("tokens a side, each side's best of 3 rounds (aiayn then HF in each):")


def test_the_translation_table_says_how_many_rounds_it_took_the_best_of():
    markdown = benchmark("translate_speed").markdown
    record = {"date": "2026-12-07", "machine": {"cpu": "X", "cores": 2, "features": []}, "threads": 2, "torch": "2",
              "sentences": 10, "batch": 32, "tok_s": {"beam4 aiayn-float32": 10, "beam4 hf-float32": 5},
              "bleu": {"beam4 aiayn-float32": 30.0, "beam4 hf-float32": 30.0},
              "ratios": {"beam4 aiayn-float32/hf-float32": 2.0}}
    assert markdown(record).splitlines()[0].endswith("batches of 32:")  # the runs of one round
    assert markdown(record | {"rounds": 3}).splitlines()[0].endswith(
        "batches of 32; each engine in a process of its own, its best of 3 rounds, the engines taking turns:")
