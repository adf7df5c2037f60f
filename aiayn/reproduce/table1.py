"""Table 1 (§4, "Why Self-Attention"), measured on this machine.

The paper compares four kinds of layer that map a sequence (x_1 … x_n) to one of the same length, each
vector of size d, by three measures. Here each is measured on the real modules, not asserted:

* **time per layer** — forward + backward of one layer at sequence lengths n = 16 … 4096 (d = 512),
  with the slope of log(time) against log(n) fitted over the longest lengths (the exponent of n that
  dominates there: 2 for O(n²·d), 1 for O(n·d²), O(k·n·d²) and O(r·n·d));
* **sequential operations** — a *hop* updates every position at once from the previous iterate: one
  call of an attention or convolutional layer; one step h_t = cell(x_t, h_{t−1}) at every position of a
  recurrent layer (a Jacobi iteration of the recurrence). Counted: the hops after which the iterate
  equals the layer's output (the recurrent one is compared with ``nn.LSTM`` in float64);
* **maximum path length** — the fewest hops (stacked layers; recurrent steps) after which output
  position 0 depends on input position n − 1 (for the left-to-right recurrence: output n − 1 on input
  0), found with forward-mode differentiation: a tangent placed on the one input position is carried
  through the stack until it reaches the output position.

The paper's convolutional path length, O(log_k(n)), is for dilated convolutions; the contiguous
kernels measured here need O(n/k) layers, the bound the paper gives beside it.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from ..model.attention import MultiHeadAttention
from ..model.conv import ConvLayer
from ..viz import pyplot, save_figure
from . import machine, save_table

KINDS = ("self-attention", "recurrent", "convolutional", "separable convolutional", "restricted self-attention")

# The paper's Table 1 (and §4's sentence on separable convolutions).
PAPER = {
    "self-attention": ("O(n²·d)", "O(1)", "O(1)"),
    "recurrent": ("O(n·d²)", "O(n)", "O(n)"),
    "convolutional": ("O(k·n·d²)", "O(1)", "O(log_k(n))"),
    "separable convolutional": ("O(k·n·d + n·d²)", "O(1)", "(§4 text)"),
    "restricted self-attention": ("O(r·n·d)", "O(1)", "O(n/r)"),
}


@dataclass
class Table1Config:
    lengths: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    d_model: int = 512
    heads: int = 8
    kernel: int = 3  # k of the convolutions
    window: int = 32  # r of restricted self-attention
    batch: int = 1
    min_seconds: float = 0.3  # time each point at least this long (and at least twice)
    structure_lengths: tuple[int, ...] = (8, 16, 32, 64)  # n for sequential operations and path length
    structure_d: int = 8  # small d for those (they depend on the wiring, not the width)
    structure_window: int = 4  # r for the path length at those small n (r = 32 would reach everything)

    @classmethod
    def quick(cls) -> Table1Config:
        return cls(lengths=(16, 32, 64, 128), d_model=64, heads=4, window=8, min_seconds=0.0,
                   structure_lengths=(8, 16))


class Recurrent(nn.Module):
    """One LSTM layer (B, n, d) → (B, n, d) and its hop, the step of :class:`nn.LSTMCell` with the same
    weights applied at every position at once."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d, d, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x)[0]

    def hop(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """x, h, c: (n, d) → the next iterate of every position's state from its predecessor's."""
        w = self.lstm
        h_prev = torch.cat([h.new_zeros(1, h.size(1)), h[:-1]])
        c_prev = torch.cat([c.new_zeros(1, c.size(1)), c[:-1]])
        gates = x @ w.weight_ih_l0.T + w.bias_ih_l0 + h_prev @ w.weight_hh_l0.T + w.bias_hh_l0
        i, f, g, o = gates.chunk(4, dim=-1)  # PyTorch's order of the LSTM gates
        c_new = f.sigmoid() * c_prev + i.sigmoid() * g.tanh()
        return o.sigmoid() * c_new.tanh(), c_new


class Attention(nn.Module):
    """A self-attention layer (full, or restricted to ``window`` positions either side), (B, n, d) → (B, n, d)."""

    def __init__(self, d: int, heads: int, window: int = 0) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d, heads, window=window)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x)


def make_layer(kind: str, d: int, cfg: Table1Config, window: int | None = None) -> nn.Module:
    if kind == "self-attention":
        return Attention(d, min(cfg.heads, d))
    if kind == "restricted self-attention":
        return Attention(d, min(cfg.heads, d), cfg.window if window is None else window)
    if kind == "recurrent":
        return Recurrent(d)
    if kind in ("convolutional", "separable convolutional"):
        return ConvLayer(d, cfg.kernel, separable=kind.startswith("separable"))
    raise ValueError(f"unknown layer kind {kind!r}; one of {', '.join(KINDS)}")


def time_layer(layer: nn.Module, n: int, d: int, batch: int, min_seconds: float) -> float:
    """Median seconds of forward + backward of ``layer`` on a (batch, n, d) input."""
    x = torch.randn(batch, n, d, requires_grad=True)

    def once() -> float:
        start = time.perf_counter()
        layer(x).sum().backward()
        return time.perf_counter() - start

    once()  # warm-up
    times = [once(), once()]
    while sum(times) < min_seconds and len(times) < 20:
        times.append(once())
    return statistics.median(times)


def _structure_model(kind: str, n: int, cfg: Table1Config) -> nn.Module:
    torch.manual_seed(0)
    layer = make_layer(kind, cfg.structure_d, cfg, window=cfg.structure_window).double().eval()
    for m in layer.modules():
        if isinstance(m, MultiHeadAttention):
            m.impl = "reference"  # equation (1) written out: forward-mode differentiation runs through it
    return layer


def sequential_operations(kind: str, n: int, cfg: Table1Config) -> int:
    """Hops until the iterate equals the layer's output (module called once for a parallel layer)."""
    layer = _structure_model(kind, n, cfg)
    x = torch.randn(1, n, cfg.structure_d, dtype=torch.float64)
    with torch.no_grad():
        target = layer(x)[0]
        if not isinstance(layer, Recurrent):
            return 1  # one call computes every position from the input: the hop is the layer
        h = c = torch.zeros_like(target)
        for hops in range(1, 2 * n + 2):
            h, c = layer.hop(x[0], h, c)
            if torch.allclose(h, target, rtol=0.0, atol=1e-12):
                return hops
    raise AssertionError(f"the recurrence did not reach nn.LSTM's output in {2 * n + 1} hops")


def path_length(kind: str, n: int, cfg: Table1Config) -> int:
    """The fewest hops after which the far end of the output depends on the other end of the input."""
    layer = _structure_model(kind, n, cfg)
    d = cfg.structure_d
    x = torch.randn(1, n, d, dtype=torch.float64)
    recurrent = isinstance(layer, Recurrent)
    source, target = (0, n - 1) if recurrent else (n - 1, 0)  # the recurrence runs left to right
    tangent = torch.zeros_like(x)
    tangent[0, source] = 1.0
    with torch.no_grad(), fwAD.dual_level():
        y = fwAD.make_dual(x, tangent)
        h = c = x.new_zeros(n, d)
        for hops in range(1, 2 * n + 2):
            if recurrent:
                h, c = layer.hop(y[0], h, c)
                out = h
            else:
                y = layer(y)
                out = y[0]
            reached = fwAD.unpack_dual(out).tangent
            if reached is not None and bool(reached[target].abs().sum() > 0):
                return hops
    raise AssertionError(f"{kind}: input {source} never reached output {target}")


def slope(lengths: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) against log(n)."""
    xs, ys = [math.log(n) for n in lengths], [math.log(s) for s in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def run(cfg: Table1Config, progress=print) -> dict:
    """Measure every layer kind; returns the results (also what :func:`save` writes)."""
    torch.manual_seed(0)
    times: dict[str, list[float]] = {}
    for kind in KINDS:
        layer = make_layer(kind, cfg.d_model, cfg)
        times[kind] = []
        for n in cfg.lengths:
            times[kind].append(time_layer(layer, n, cfg.d_model, cfg.batch, cfg.min_seconds))
            progress(f"table1: {kind:<26} n={n:<5} {times[kind][-1] * 1000:9.2f} ms")
    fit = [n for n in cfg.lengths if n >= cfg.lengths[-1] / 8] or list(cfg.lengths)  # the longest lengths
    fit = fit if len(fit) >= 2 else list(cfg.lengths[-2:])
    rows = {}
    for kind in KINDS:
        ts = [t for n, t in zip(cfg.lengths, times[kind]) if n in fit]
        rows[kind] = {
            "seconds": dict(zip(map(str, cfg.lengths), times[kind])),
            "slope": slope(fit, ts),
            "sequential_operations": {str(n): sequential_operations(kind, n, cfg) for n in cfg.structure_lengths},
            "path_length": {str(n): path_length(kind, n, cfg) for n in cfg.structure_lengths},
            "paper": dict(zip(("complexity", "sequential_operations", "path_length"), PAPER[kind])),
        }
    return {"table": "1", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()},
            "slope_fitted_over": fit, "rows": rows}


def markdown(results: dict) -> str:
    """The measured table beside the paper's."""
    c, rows = results["config"], results["rows"]
    fit = results["slope_fitted_over"]
    ns = [str(n) for n in c["structure_lengths"]]
    m = results["machine"]
    lines = [
        f"Measured on {m['cpu']} ({m['threads']} threads), {results['date']}; d = {c['d_model']}, "
        f"{c['heads']} heads, k = {c['kernel']}, r = {c['window']}, batch {c['batch']}; forward + backward of one layer.",
        "",
        "| layer | paper: complexity | measured slope of time vs n (n = " + "…".join(map(str, (fit[0], fit[-1])))
        + f") | ms at n = {c['lengths'][-1]} | paper: sequential | measured (n = {', '.join(ns)}) "
        f"| paper: path length | measured (n = {', '.join(ns)}; r = {c['structure_window']}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in rows.items():
        p = r["paper"]
        last = r["seconds"][str(c["lengths"][-1])] * 1000
        lines.append(f"| {kind} | {p['complexity']} | {r['slope']:.2f} | {last:.1f} | {p['sequential_operations']} | "
                     f"{', '.join(str(r['sequential_operations'][n]) for n in ns)} | {p['path_length']} | "
                     f"{', '.join(str(r['path_length'][n]) for n in ns)} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str | Path) -> Path:
    plt = pyplot()
    c = results["config"]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for kind, r in results["rows"].items():
        ns = [int(n) for n in r["seconds"]]
        ax.loglog(ns, [s * 1000 for s in r["seconds"].values()], "o-", ms=3, label=f"{kind} (slope {r['slope']:.2f})")
    ax.set_xlabel("sequence length n")
    ax.set_ylabel("forward + backward of one layer (ms)")
    ax.set_title(f"Table 1 measured: d = {c['d_model']}, k = {c['kernel']}, r = {c['window']}\n"
                 f"{results['machine']['cpu']}, {results['machine']['threads']} threads", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def save(results: dict, out: str | Path) -> list[Path]:
    return save_table(out, "table1", results, markdown, plot)
