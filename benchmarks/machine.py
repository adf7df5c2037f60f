"""What machine a benchmark ran on: CPU model, the ISA features that decide the fast paths, threads."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # aiayn from this checkout

GOALS = {"hf": 1.5, "ct2": 1.0}  # issue 15: aiayn ≥ 1.5× HF and ≥ 1.0× CTranslate2 at the same precision


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
