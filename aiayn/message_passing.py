"""Attention as message passing on a directed graph — the way Andrej Karpathy's introduction to
Transformers in Stanford's CS25 (2023) presents it, and a runnable companion to docs/lineage.md.

Every node holds a private vector x_i. It emits a query q_i = x_i W^Q ("what am I looking for"), a key
k_i = x_i W^K ("what do I have") and a value v_i = x_i W^V ("what I will tell you"). A node listens
only to the nodes with an edge into it: it scores each of them, a_ij = q_i · k_j / √d_k, turns the
scores into weights with a softmax over its in-edges, and updates to the weighted sum of their values.

That is all attention is. What distinguishes the paper's three attentions is only the graph:

* the encoder's self-attention — every source position sends to every other (a complete graph);
* the decoder's masked self-attention — position j sends to position i only if j ≤ i (causal: no
  edge from the future);
* encoder-decoder attention — every source position sends to every target position, and there are
  no edges the other way or among the targets (a complete bipartite graph).

:func:`message_passing` computes the update one node at a time, literally from the edge list;
:func:`as_attention` computes it as aiayn's equation (1) (:func:`aiayn.model.attention.attention`)
with the graph as the mask. They are equal (tests/test_message_passing.py). ``python -m
aiayn.message_passing [-o graphs.png]`` checks that on random vectors and draws the three graphs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

Edges = list[tuple[int, int]]  # (sender, receiver)


def complete_graph(n: int) -> Edges:
    """The encoder's self-attention: every node sends to every node (itself included)."""
    return [(j, i) for i in range(n) for j in range(n)]


def causal_graph(n: int) -> Edges:
    """The decoder's masked self-attention: node j sends to node i when j ≤ i."""
    return [(j, i) for i in range(n) for j in range(i + 1)]


def bipartite_graph(n_senders: int, n_receivers: int) -> Edges:
    """Encoder-decoder attention: every source node sends to every target node."""
    return [(j, i) for i in range(n_receivers) for j in range(n_senders)]


def message_passing(receivers: Tensor, senders: Tensor, edges: Edges, w_q: Tensor, w_k: Tensor, w_v: Tensor) -> Tensor:
    """One round of attention, node by node. receivers (N, d) emit queries, senders (M, d) keys and
    values (self-attention: the same tensor); returns the receivers' new vectors (N, d_v)."""
    out = []
    for i in range(receivers.size(0)):
        inbox = [j for j, r in edges if r == i]  # the nodes with an edge into i
        q = receivers[i] @ w_q
        scores = torch.stack([q @ (senders[j] @ w_k) / math.sqrt(w_k.size(1)) for j in inbox])
        weights = torch.softmax(scores, dim=0)
        out.append(sum(w * (senders[j] @ w_v) for w, j in zip(weights, inbox)))
    return torch.stack(out)


def adjacency(edges: Edges, n_receivers: int, n_senders: int) -> Tensor:
    """(N, M) bool: True where sender j has an edge into receiver i — attention's mask."""
    mask = torch.zeros(n_receivers, n_senders, dtype=torch.bool)
    for j, i in edges:
        mask[i, j] = True
    return mask


def as_attention(receivers: Tensor, senders: Tensor, edges: Edges, w_q: Tensor, w_k: Tensor, w_v: Tensor) -> Tensor:
    """The same round as aiayn's equation (1) over the whole graph at once, the graph as the mask."""
    from .model.attention import attention

    q, k, v = (receivers @ w_q)[None, None], (senders @ w_k)[None, None], (senders @ w_v)[None, None]
    out, _ = attention(q, k, v, adjacency(edges, receivers.size(0), senders.size(0))[None, None])
    return out[0, 0]


def draw(out: str, n: int = 5) -> str:
    """The three graphs as pictures: the paper's three attentions."""
    from .viz import pyplot, save_figure

    fig, axes = pyplot().subplots(1, 3, figsize=(12, 3.6))
    panels = [("encoder self-attention\n(complete graph)", complete_graph(n), "src", "src"),
              ("decoder masked self-attention\n(causal graph)", causal_graph(n), "tgt", "tgt"),
              ("encoder-decoder attention\n(bipartite graph)", bipartite_graph(n, n), "src", "tgt")]
    for ax, (title, edges, send, recv) in zip(axes, panels):
        same = send == recv
        ys = {"src": 0.5, "tgt": 0.5} if same else {"src": 0.0, "tgt": 1.0}
        for j, i in edges:
            if same and i == j:
                continue  # self-loops are in the graph (and the mask) but not drawn
            x0, y0, x1, y1 = j, ys[send], i, ys[recv]
            if same:  # one row of nodes: edges to the right as arcs above it, to the left below it
                up = 1 if x1 > x0 else -1
                ax.annotate("", xy=(x1, y1 + 0.05 * up), xytext=(x0, y0 + 0.05 * up),
                            arrowprops=dict(arrowstyle="->", lw=0.7, color="C0", alpha=0.6, connectionstyle="arc3,rad=-0.5"))
            else:
                ax.annotate("", xy=(x1, y1 - 0.08), xytext=(x0, y0 + 0.08),
                            arrowprops=dict(arrowstyle="->", lw=0.7, color="C0", alpha=0.6))
        for row in {send, recv}:
            ax.scatter(range(n), [ys[row]] * n, s=260, color="C1" if row == "src" else "C2", zorder=3)
            for x in range(n):
                ax.text(x, ys[row], str(x + 1), ha="center", va="center", fontsize=8, zorder=4)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylim(-0.6, 1.6)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, out)
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="attention as message passing: check and draw (docs/lineage.md)")
    ap.add_argument("-o", "--out", help="PNG of the three graphs")
    a = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    d, n = 8, 5
    x_src, x_tgt = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    w = [torch.randn(d, d, generator=g, dtype=torch.float64) for _ in range(3)]
    for name, recv, send, edges in (("encoder (complete)", x_src, x_src, complete_graph(n)),
                                    ("decoder (causal)", x_tgt, x_tgt, causal_graph(n)),
                                    ("encoder-decoder (bipartite)", x_tgt, x_src, bipartite_graph(n, n))):
        diff = (message_passing(recv, send, edges, *w) - as_attention(recv, send, edges, *w)).abs().max().item()
        print(f"{name:<28} {len(edges):>3} edges: node-by-node messages = equation (1) with the graph as mask "
              f"(max difference {diff:.1e})")
    if a.out:
        print(draw(a.out))


if __name__ == "__main__":
    main()
