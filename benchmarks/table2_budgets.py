"""Table 2 at several budgets: how each system's test BLEU grows with its training cost.

`aiayn reproduce table2 --minutes M` measures every system at one budget. Run at several budgets, the
points of one system draw its curve of quality against cost — the question the paper's Table 2 asks
("what BLEU for what training cost?") answered for each system over more than one point. This script
reads the `table2*.json` files of such runs (each written by the command, with its machine and date) and
writes `table2_budgets.md` (the table docs/paper.md quotes) and `table2_budgets.png` (test BLEU against
counted FLOPs, a line per system through its budgets).

    aiayn reproduce table2 --minutes 10 -o runs/table2-10     # then copy its table2.json here as table2_10min.json
    aiayn reproduce table2 --minutes 20 -o runs/table2-20
    python benchmarks/table2_budgets.py benchmarks/results/paper/table2_10min.json benchmarks/results/paper/table2.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "paper"


def load(paths: list[str | Path]) -> list[dict]:
    """The runs, by budget (minutes), each checked to be a Table 2 result; one run per budget."""
    runs = []
    for path in paths:
        r = json.loads(Path(path).read_text(encoding="utf-8"))
        if r.get("table") != "2" or "budget" not in r or not r.get("rows"):
            raise SystemExit(f"aiayn: error: {path}: not a result of `aiayn reproduce table2`")
        runs.append(r)
    runs.sort(key=lambda r: r["budget"]["minutes"])
    minutes = [r["budget"]["minutes"] for r in runs]
    if len(set(minutes)) != len(minutes):
        raise SystemExit(f"aiayn: error: two runs at the same budget ({minutes})")
    return runs


def markdown(runs: list[dict]) -> str:
    from aiayn.reproduce.table2 import SYSTEMS

    where = sorted({f"{r['machine']['cpu']} ({r['machine']['threads']} threads), {r['date']}" for r in runs})
    budgets = [f"{r['budget']['minutes']:g} min" for r in runs]
    lines = [f"Measured on {'; '.join(where)}: test BLEU (steps) of each system after each training budget, "
             "Bible es→en, beam 4, α = 0.6, last 5 checkpoints averaged.", "",
             "| system | " + " | ".join(budgets) + " | BLEU gained per doubling of FLOPs |",
             "|---|" + "---|" * (len(runs) + 1)]
    for s in SYSTEMS:
        points = [r["rows"].get(s.id) for r in runs]
        cells = [f"{p['test_bleu']:.2f} ({p['steps']})" if p else "not run" for p in points]
        got = [p for p in points if p]
        slope = "—"
        if len(got) >= 2:
            a, b = got[0], got[-1]
            slope = f"{(b['test_bleu'] - a['test_bleu']) / math.log2(b['flops_counted'] / a['flops_counted']):+.1f}"
        lines.append(f"| {s.label} | " + " | ".join(cells) + f" | {slope} |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> Path:
    from aiayn.reproduce.table2 import SYSTEMS
    from aiayn.viz import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for s in SYSTEMS:
        points = [(r["budget"]["minutes"], r["rows"][s.id]) for r in runs if s.id in r["rows"]]
        if not points:
            continue
        x, y = [p["flops_counted"] for _, p in points], [p["test_bleu"] for _, p in points]
        ax.plot(x, y, marker="o", label=s.id)
        for (minutes, _), xi, yi in zip(points, x, y):
            ax.annotate(f"{minutes:g} min", (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (counted)")
    ax.set_ylabel("test BLEU (Bible es→en)")
    cpus = sorted({r["machine"]["cpu"] for r in runs})
    ax.set_title(f"Table 2 at several budgets — {', '.join(cpus)}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", help="table2 JSON files (default: table2*.json in benchmarks/results/paper)")
    ap.add_argument("--out", default=str(RESULTS), help="folder for table2_budgets.md and .png")
    args = ap.parse_args()
    paths = args.runs or sorted(str(p) for p in RESULTS.glob("table2*.json"))
    runs = load(paths)
    out = Path(args.out)
    from aiayn.atomic import write_text_atomic

    table = markdown(runs)
    write_text_atomic(out / "table2_budgets.md", table)
    print(table, end="")
    print(f"→ {out / 'table2_budgets.md'}, {plot(runs, out / 'table2_budgets.png')}")


if __name__ == "__main__":
    main()
