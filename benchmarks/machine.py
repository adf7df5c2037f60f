"""What machine a benchmark ran on: CPU model, the ISA features that decide the fast paths, threads."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # aiayn from this checkout

GOALS = {"hf": 1.5, "ct2": 1.0}  # issue 15: aiayn ≥ 1.5× HF and ≥ 1.0× CTranslate2 at the same precision


def goal_call(rounds: list[float], goal: float) -> str:
    """Where a speed ratio measured in several rounds stands against its goal. Each round times both sides
    one after the other, so a round's ratio is one paired measurement; on a machine whose speed drifts by
    10–25 % between runs, one best-of figure can land on either side of a goal that close. 'met': every
    round reaches the goal; 'not met': none does; 'at the edge': the rounds fall on both sides."""
    if not rounds:
        raise ValueError("no rounds")
    if min(rounds) >= goal:
        return "met"
    return "not met" if max(rounds) < goal else "at the edge"


def ratio_cell(best: float, rounds: list[float]) -> str:
    """'1.07 (0.93–1.13)': the ratio of the best rounds, and the range of the rounds' own ratios."""
    return f"{best:.2f}" + (f" ({min(rounds):.2f}–{max(rounds):.2f})" if len(rounds) > 1 else "")


def cpu() -> dict:
    from aiayn.accel.choose import describe_cpu

    return describe_cpu()


def describe() -> str:
    c = cpu()
    return f"{c['cpu']} ({c['cores']} cores; {' '.join(c['features']) or 'no AVX2/AVX-512/AMX'})"


def write_results(name: str, results: dict, path: str | Path) -> Path:
    """Write a benchmark's results, with the machine and the date, as JSON (the file the docs quote)."""
    import json
    import time

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": cpu(), **results}
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"results: {path}")
    return path
