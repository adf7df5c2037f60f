"""Pictures: training curves, the positional encoding (§3.5), and attention weights (§3.2).

Each function writes one PNG with matplotlib (non-interactive backend) and returns its path.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import torch

from .config import BOS_ID, EOS_ID


def pyplot():
    """matplotlib.pyplot with the non-interactive backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Logs written before every evaluation used the same names (val_loss, ppl, val_bleu).
_OLD_NAMES = {"dev_loss": "val_loss", "dev_ppl": "ppl", "dev_bleu": "val_bleu"}


def _renamed(record: dict) -> dict:
    return {_OLD_NAMES.get(k, k): v for k, v in record.items()}


def read_log(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(train records, eval records) of a run's log.jsonl."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no log.jsonl (is it a run directory written by `aiayn train`?)")
    records = [_renamed(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["kind"] == "train"], [r for r in records if r["kind"] == "eval"]


def plot_curves(run_dir: str | Path, out: str | Path, title: str | None = None) -> Path:
    """Training loss, validation loss, validation BLEU (if any) and learning rate, against steps and minutes."""
    plt = pyplot()
    train, evals = read_log(run_dir)
    if not train:
        raise ValueError(f"{run_dir}: the log has no training records yet")
    bleu = [e for e in evals if "val_bleu" in e]
    n = 3 if bleu else 2
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.8))
    ax = axes[0]
    ax.plot([r["step"] for r in train], [r["nll"] for r in train], label="train NLL", lw=1)
    if evals and "val_loss" in evals[0]:
        ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", label="validation NLL", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.legend()
    ax.grid(alpha=0.3)
    _minutes_axis(ax, train)
    if bleu:
        ax = axes[1]
        ax.plot([e["time"] / 60 for e in bleu], [e["val_bleu"] for e in bleu], "o-", color="C2", ms=3)
        ax.set_xlabel("training minutes")
        ax.set_ylabel("validation BLEU (greedy)")
        ax.grid(alpha=0.3)
    ax = axes[-1]
    ax.plot([r["step"] for r in train], [r["lr"] for r in train], color="C3")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    fig.suptitle(title or str(run_dir))
    fig.tight_layout()
    return save_figure(fig, out)


def step_minutes(train: list[dict]) -> tuple[list[int], list[float]]:
    """(steps, training minutes) of a run's training records, from step 0 at minute 0 (the first record is the
    end of the first step, seconds in): what the minutes axis of :func:`plot_curves` interpolates."""
    kept = [r for r in train if r["step"] > 0]
    return [0] + [r["step"] for r in kept], [0.0] + [r["time"] / 60 for r in kept]


def _minutes_axis(ax, train: list[dict]) -> None:
    """A secondary x axis in training minutes, interpolated from the log."""
    steps, mins = step_minutes(train)
    if len(steps) < 2:
        return
    import numpy as np

    sec = ax.secondary_xaxis("top", functions=(lambda s: np.interp(s, steps, mins), lambda m: np.interp(m, mins, steps)))
    sec.set_xlabel("training minutes")


def plot_positional(out: str | Path, positions: int = 50, d_model: int = 512) -> Path:
    """Heatmaps of the sinusoidal encoding in both layouts, and a few dimensions as waves."""
    from .model import sinusoidal_table

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, layout in zip(axes[:2], ("interleaved", "concat")):
        pe = sinusoidal_table(positions, d_model, layout)
        im = ax.imshow(pe.numpy(), aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
        paper = layout == "interleaved"
        ax.set_title("interleaved sin/cos (the paper, §3.5)" if paper else "concatenated [sin | cos] (HF Marian layout)")
        ax.set_xlabel("dimension")
        ax.set_ylabel("position")
    fig.colorbar(im, ax=axes[1])
    pe = sinusoidal_table(100, d_model, "interleaved")
    for dim in (4, 20, 60, 100, 150):
        axes[2].plot(pe[:, dim].numpy(), label=f"dim {dim}")
    axes[2].set_xlabel("position")
    axes[2].set_title("PE(pos, i) for a few dimensions")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


@torch.no_grad()
def attention_maps(model, vocab, text: str, beam: int = 1, tgt_tokens: list[int] | None = None) -> dict:
    """Translate ``text`` (or take ``tgt_tokens``, a translation already made) and return the tokens and
    every layer's attention weights for that translation.

    Returns ``{"src": [...], "tgt": [...], "translation": str, "encoder": [(h, S, S)…], "decoder": [(h, T, T)…],
    "cross": [(h, T, S)…]}``, one entry per layer, from the reference attention path.
    """
    from .data.batching import source_tensor
    from .decode.translate import DecodeConfig, Translator
    from .model import recording_attention

    src_ids = vocab.encode(text.strip())
    if tgt_tokens is None:
        tgt_tokens = Translator(model, vocab, DecodeConfig(beam=beam)).translate_ids([src_ids])[0][0].tokens
    src = source_tensor([src_ids])
    tgt_in = torch.tensor([[BOS_ID] + tgt_tokens])
    with recording_attention(model) as record:
        model(src, tgt_in)
    maps = {name: w[0].float() for name, w in record.items()}
    out = {"src": vocab.pieces(src_ids + [EOS_ID]), "tgt": vocab.pieces(tgt_tokens + [EOS_ID], side="target"),
           "translation": vocab.decode(tgt_tokens)}
    # The decoder read <s> y; row i is the prediction of target token i (y_i, or </s> last).
    out["encoder"] = [v for k, v in maps.items() if k.startswith("encoder.") and k.endswith("self_attn")]
    out["decoder"] = [v for k, v in maps.items() if k.startswith("decoder.") and k.endswith("self_attn")]
    out["cross"] = [v for k, v in maps.items() if k.endswith("cross_attn")]
    return out


def plot_attention(model, vocab, text: str, out: str | Path, kinds: tuple[str, ...] = ("cross",),
                   layers: list[int] | str | None = "last", heads: list[int] | None = None) -> Path:
    """A grid of attention maps with token labels: one row per (kind, layer), one column per head.

    ``layers``: layer numbers, ``"last"`` (each kind's last layer: a readable default) or None (all)."""
    plt = pyplot()
    maps = attention_maps(model, vocab, text)
    rows = []
    for kind in kinds:
        for i, w in enumerate(maps[kind]):
            wanted = i == len(maps[kind]) - 1 if layers == "last" else layers is None or i in layers
            if wanted:
                rows.append((kind, i, w))
    if not rows:
        raise ValueError("no attention layer selected")
    n_heads = rows[0][2].size(0)
    cols = [h for h in range(n_heads) if heads is None or h in heads]
    size = max(len(maps["src"]), len(maps["tgt"]))
    few = len(rows) * len(cols) <= 2  # one or two panels (RNNsearch's one attention, a chosen head): larger
    cell = max(4.5 if few else 2.2, (0.32 if few else 0.22) * size)
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(cell * len(cols), cell * len(rows)), squeeze=False)
    labels = {"encoder": (maps["src"], maps["src"]), "decoder": (["<s>"] + maps["tgt"][:-1], maps["tgt"]),
              "cross": (maps["src"], maps["tgt"])}
    for r, (kind, layer, w) in enumerate(rows):
        keys, queries = labels[kind]
        for c, h in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(w[h].numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
            ax.set_xticks(range(len(keys)), keys, rotation=90, fontsize=7)
            ax.set_yticks(range(len(queries)), queries, fontsize=7)
            ax.set_title(f"{kind} layer {layer} head {h}", fontsize=9)
    title = textwrap.fill(f"{text}  →  {maps['translation']}", width=max(30, int(11 * cell * len(cols))))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()  # makes room for the (wrapped) title above the panels
    return save_figure(fig, out)


def save_figure(fig, out: str | Path) -> Path:
    """A figure as a PNG, written atomically (a reader sees the old picture or the new one), and closed."""
    import io

    from .atomic import write_bytes_atomic

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    write_bytes_atomic(out, buf.getvalue())
    return out
