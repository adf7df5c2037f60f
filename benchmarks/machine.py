"""What machine a benchmark ran on: CPU model, the ISA features that decide the fast paths, threads."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # aiayn from this checkout

FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu() -> dict:
    from aiayn.accel.choose import cpu_info

    name, flags = cpu_info()
    return {"cpu": name, "features": [f for f in FEATURES if f in flags], "cores": os.cpu_count()}


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
