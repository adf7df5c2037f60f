"""docs/inference.md quotes the latest translation-speed run as the benchmark wrote it: the table between its
<!-- translate_speed.md --> markers is benchmarks/results/translate_speed.md, which is the JSON's figures."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def test_inference_docs_quote_the_translation_speed_run():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from translate_speed import markdown
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    record = json.loads((RESULTS / "translate_speed.json").read_text())
    table = (RESULTS / "translate_speed.md").read_text(encoding="utf-8")
    assert table == markdown(record)
    assert record["machine"]["cpu"] in table.splitlines()[0]  # the CPU it ran on, beside the figures
    page = (ROOT / "docs" / "inference.md").read_text(encoding="utf-8")
    quoted = re.findall(r"<!-- translate_speed\.md -->\n(.*?)<!-- /translate_speed\.md -->", page, flags=re.S)
    assert quoted == [table]


def test_the_goal_column_says_met_only_when_every_ratio_reaches_it():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from translate_speed import goal_verdict
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert goal_verdict([1.53, 1.6], 1.5) == "met"
    assert goal_verdict([1.53, 1.31], 1.5) == "not met (greedy)"
    assert goal_verdict([0.95, 1.21], 1.0) == "not met (beam 4)"
    assert goal_verdict([0.9, None], 1.0) == "not met (beam 4)"
    assert goal_verdict([None, 1.0], 1.0) == "met"
