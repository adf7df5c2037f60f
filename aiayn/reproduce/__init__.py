"""``aiayn reproduce``: the paper's evidence measured on this machine (docs/paper.md).

* :mod:`~aiayn.reproduce.table1`: per-layer time against sequence length, sequential operations and
  maximum path length of self-attention, recurrent, convolutional and restricted self-attention layers;
* :mod:`~aiayn.reproduce.table3`: the variations of the base model, scaled to a CPU base, each row its
  own training run (resumable);
* :mod:`~aiayn.reproduce.table2`: BLEU against training cost for the recurrent baselines and the
  Transformer.

Every command writes into one output directory that it marks as its own (``.aiayn-written``); a
directory holding anything else is refused, never written over.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from ..atomic import LISTING, OutputError, _listing, write_bytes_atomic, write_json_atomic

WHAT = "reproduce directory"


def claim_directory(out: str | Path) -> Path:
    """Make ``out`` a reproduce directory (new or empty), or check that it already is one."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    data = _listing(out)
    if data is not None and data.get("what") == WHAT:
        return out
    if any(out.iterdir()):
        raise OutputError(f"{out}: exists and was not written by `aiayn reproduce`; refusing to write into it: "
                          "choose another --out")
    write_json_atomic(out / LISTING, {"what": WHAT, "files": ["table1.*", "table2.*", "table3.*", "table2", "table3"]})
    return out


def save_figure(fig, path: str | Path) -> Path:
    """A matplotlib figure as a PNG, written atomically."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def machine() -> dict:
    """The CPU (model name and the ISA features that decide the fast paths) and the threads used."""
    import torch

    from ..accel.choose import cpu_info

    name, flags = cpu_info()
    features = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": name, "features": features, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": gpu}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
