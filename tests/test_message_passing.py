"""Attention as message passing (aiayn.message_passing): the node-by-node update over a graph's edges is
aiayn's equation (1) with the graph as the mask, for the paper's three attentions."""

from __future__ import annotations

import torch

from aiayn.message_passing import (
    adjacency,
    as_attention,
    bipartite_graph,
    causal_graph,
    complete_graph,
    draw,
    main,
    message_passing,
)
from aiayn.model.attention import causal_mask


def test_the_three_graphs_are_the_three_masks():
    assert adjacency(complete_graph(4), 4, 4).all()
    assert torch.equal(adjacency(causal_graph(4), 4, 4), causal_mask(4, 4))
    assert adjacency(bipartite_graph(3, 5), 5, 3).all() and adjacency(bipartite_graph(3, 5), 5, 3).shape == (5, 3)


def test_message_passing_is_attention():
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64)
    w = [torch.randn(8, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    for recv, send, edges in ((src, src, complete_graph(6)), (tgt, tgt, causal_graph(4)), (tgt, src, bipartite_graph(6, 4))):
        torch.testing.assert_close(message_passing(recv, send, edges, *w), as_attention(recv, send, edges, *w))
    # Any graph works, as long as every node has an in-edge: a ring where each node hears only its left neighbour
    ring = [((i - 1) % 6, i) for i in range(6)]
    torch.testing.assert_close(message_passing(src, src, ring, *w), src[[5, 0, 1, 2, 3, 4]] @ w[2])


def test_demo_runs_and_draws(tmp_path, capsys):
    main(["-o", str(tmp_path / "g.png")])
    out = capsys.readouterr().out
    assert out.count("= equation (1)") == 3
    import matplotlib.image

    img = matplotlib.image.imread(str(tmp_path / "g.png"))
    assert img.shape[:2] == (round(3.6 * 110), 12 * 110) and img[..., :3].std() > 0.05  # three drawn panels
    assert draw(str(tmp_path / "h.png"), n=3).endswith("h.png")
