"""Copy the result tables of `aiayn reproduce` into docs/paper.md and docs/zh/paper.md (between the
<!-- tableN.md -->, <!-- table2_budgets.md -->, <!-- postln.md --> and <!-- postln_batch.md --> markers),
so that the pages quote the measurements as written.

    aiayn reproduce table1 -o benchmarks/results/paper
    python benchmarks/paper_docs.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "paper"
PAGES = [ROOT / "docs" / "paper.md", ROOT / "docs" / "zh" / "paper.md"]


def main() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for name in ("table1.md", "table2.md", "table2_budgets.md", "table3.md", "postln.md", "postln_batch.md"):
            measured = RESULTS / name
            body = measured.read_text(encoding="utf-8") if measured.exists() else ""
            text = re.sub(rf"(<!-- {re.escape(name)} -->\n).*?(<!-- /{re.escape(name)} -->)",
                          lambda m: m.group(1) + body + m.group(2), text, flags=re.S)
        page.write_text(text, encoding="utf-8")
        print(f"{page.relative_to(ROOT)}: quotes {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
