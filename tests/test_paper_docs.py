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
    """{'table1.md': the text between <!-- table1.md --> and <!-- /table1.md -->, …}"""
    text = page.read_text(encoding="utf-8")
    return {name: body.lstrip("\n") for name, body in re.findall(r"<!-- (table\d\.md) -->\n(.*?)<!-- /\1 -->", text, re.S)}


@pytest.mark.parametrize("page", PAGES, ids=["en", "zh"])
def test_the_pages_quote_the_measurements_as_written(page):
    blocks = quoted(page)
    assert set(blocks) == {"table1.md", "table2.md", "table3.md"}
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
