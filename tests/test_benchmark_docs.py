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
