"""docs/paper.md (and its Chinese version) quote the result files of `aiayn reproduce` exactly, and
every `aiayn` command on them parses as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from aiayn.cli import build_parser

from .test_lineage_docs import commands

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "docs" / "paper.md", ROOT / "docs" / "zh" / "paper.md"]
RESULTS = ROOT / "benchmarks" / "results" / "paper"


def quoted(page: Path) -> dict[str, str]:
    """{'table1.md': the text between <!-- table1.md --> and <!-- /table1.md -->, …} (and the others')"""
    text = page.read_text(encoding="utf-8")
    names = r"table\d\.md|table2_budgets\.md|postln\.md|postln_batch\.md"
    return {name: body.lstrip("\n") for name, body in re.findall(rf"<!-- ({names}) -->\n(.*?)<!-- /\1 -->", text, re.S)}


@pytest.mark.parametrize("page", PAGES, ids=["en", "zh"])
def test_the_pages_quote_the_measurements_as_written(page):
    blocks = quoted(page)
    assert set(blocks) == {"table1.md", "table2.md", "table2_budgets.md", "table3.md", "postln.md", "postln_batch.md"}
    for name, body in blocks.items():
        measured = RESULTS / name
        assert body == (measured.read_text(encoding="utf-8") if measured.exists() else ""), name
    for image in re.findall(r"\]\((\.\./)+(benchmarks/results/paper/[\w.]+\.png)\)", page.read_text(encoding="utf-8")):
        assert (ROOT / image[1]).is_file(), image


@pytest.mark.parametrize("page", PAGES, ids=["en", "zh"])
def test_every_command_parses(page):
    found = commands(page)
    assert len(found) >= 6
    for line in found:
        build_parser().parse_args(shlex.split(line)[1:])


def test_scale_page_quotes_the_memory_measurements_as_written():
    """docs/scale.md's memory table is benchmarks/results/scale_memory.md, which is the JSON results drawn as a table."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("scale_memory", ROOT / "benchmarks" / "scale_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = ROOT / "benchmarks" / "results" / "scale_memory"
    table = results.with_suffix(".md").read_text(encoding="utf-8")
    assert table == bench.table(json.loads(results.with_suffix(".json").read_text(encoding="utf-8")))
    page = (ROOT / "docs" / "scale.md").read_text(encoding="utf-8")
    assert re.search(r"<!-- scale_memory.md -->\n(.*?)<!-- /scale_memory.md -->", page, re.S).group(1) == table


def test_table2_at_several_budgets_is_read_from_the_runs(tmp_path):
    """benchmarks/table2_budgets.py: each system's BLEU (steps) per budget, the BLEU gained per doubling of
    counted FLOPs between the first and last budget, and the machine; a run at the same budget twice is an error."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("table2_budgets", ROOT / "benchmarks" / "table2_budgets.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def run(minutes, bleu, flops):
        return {"table": "2", "date": "2026-12-07", "machine": {"cpu": "CPU X", "threads": 2},
                "budget": {"minutes": minutes}, "rows": {"rnnsearch": {"test_bleu": bleu, "steps": minutes * 40,
                                                                       "flops_counted": flops}}}

    runs = [run(20, 9.0, 4e13), run(10, 3.0, 1e13), run(10, 1.0, 1e13)]
    paths = [tmp_path / f"table2_{i}.json" for i in range(3)]
    for p, r in zip(paths, runs):
        p.write_text(json.dumps(r))
    loaded = bench.load(paths[:2])
    assert [r["budget"]["minutes"] for r in loaded] == [10, 20]
    text = bench.markdown(loaded)
    assert "CPU X (2 threads), 2026-12-07" in text.splitlines()[0]
    row = next(line for line in text.splitlines() if line.startswith("| RNNsearch"))
    assert row == "| RNNsearch (Bahdanau et al. 2014) | 3.00 (400) | 9.00 (800) | +3.0 |"  # 6 BLEU over two doublings
    assert "| LSTM encoder-decoder (Sutskever et al. 2014) | not run | not run | — |" in text
    with pytest.raises(SystemExit, match="same budget"):
        bench.load(paths)
    (tmp_path / "other.json").write_text(json.dumps({"table": "3"}))
    with pytest.raises(SystemExit, match="not a result of"):
        bench.load([tmp_path / "other.json"])
