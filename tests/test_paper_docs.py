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
    """{'table1.md': the text between <!-- table1.md --> and <!-- /table1.md -->, …} (and postln.md's, postln_batch.md's)"""
    text = page.read_text(encoding="utf-8")
    return {name: body.lstrip("\n")
            for name, body in re.findall(r"<!-- (table\d\.md|postln\.md|postln_batch\.md) -->\n(.*?)<!-- /\1 -->", text, re.S)}


@pytest.mark.parametrize("page", PAGES, ids=["en", "zh"])
def test_the_pages_quote_the_measurements_as_written(page):
    blocks = quoted(page)
    assert set(blocks) == {"table1.md", "table2.md", "table3.md", "postln.md", "postln_batch.md"}
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
