"""The pictures are written, and the attention maps are the model's."""

from __future__ import annotations

import json

import pytest
import torch

from aiayn import viz
from aiayn.config import preset
from aiayn.data.vocab import CharVocab
from aiayn.model import Transformer


def test_curves_and_positional(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "log.jsonl", "w") as f:
        for s in range(1, 40):
            f.write(json.dumps({"kind": "train", "step": s, "time": s * 2.0, "loss": 5 - s / 10, "nll": 4 - s / 10,
                                "lr": 1e-3}) + "\n")
            if s % 10 == 0:
                f.write(json.dumps({"kind": "eval", "step": s, "time": s * 2.0, "dev_loss": 4 - s / 12,
                                    "dev_bleu": s / 2}) + "\n")
    png = viz.plot_curves(run, tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = _pixels(png)
    assert img.shape[:2] == (round(3.8 * 110), 3 * 5 * 110)  # three panels: losses, dev BLEU, learning rate
    assert img[..., :3].std() > 0.05  # drawn, not blank
    with open(run / "log.jsonl", "w") as f:  # a language model's log: no BLEU, two panels
        for s in range(1, 40):
            f.write(json.dumps({"kind": "train", "step": s, "time": s * 2.0, "loss": 5 - s / 10, "nll": 4 - s / 10,
                                "lr": 1e-3}) + "\n")
    assert _pixels(viz.plot_curves(run, tmp_path / "c2.png")).shape[1] == 2 * 5 * 110
    pos = _pixels(viz.plot_positional(tmp_path / "p.png"))
    assert pos.shape[:2] == (round(4.2 * 110), 16 * 110) and pos[..., :3].std() > 0.1


def test_attention_maps_are_distributions_over_the_right_tokens(tmp_path):
    vocab = CharVocab.train(["abcdefgh "])
    torch.manual_seed(0)
    model = Transformer(preset("tiny", vocab_size=len(vocab), dropout=0.0)).eval()
    maps = viz.attention_maps(model, vocab, "abc de")
    s, t = len(maps["src"]), len(maps["tgt"])
    assert maps["src"][-1] == "</s>" and len(maps["encoder"]) == 2
    assert maps["encoder"][0].shape == (4, s, s) and maps["cross"][1].shape == (4, t, s)
    torch.testing.assert_close(maps["cross"][0].sum(-1), torch.ones(4, t))
    assert torch.all(maps["decoder"][0].triu(1) == 0)
    img = _pixels(viz.plot_attention(model, vocab, "abc de", tmp_path / "a.png", ("encoder", "decoder", "cross"),
                                     layers=[1], heads=[0, 1]))
    cell = max(2.2, 0.22 * max(s, t))
    kinds = 3  # one row per (kind, layer): encoder, decoder, cross for layer 1; one column per head
    expected = (cell * kinds * 110, cell * 2 * 110)
    assert all(abs(got - want) <= 1 for got, want in zip(img.shape[:2], expected)) and img[..., :3].std() > 0.05
    # The default: the last layer's encoder-decoder attention, every head: one row of 4 panels.
    default = _pixels(viz.plot_attention(model, vocab, "abc de", tmp_path / "d.png"))
    assert abs(default.shape[1] - cell * 4 * 110) <= 1 and abs(default.shape[0] - cell * 110) <= 1


def _pixels(path):
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def test_the_minutes_axis_starts_at_step_0_minute_0():
    """The first record is the end of step 1, seconds after the start: the axis still maps step 0 to minute 0."""
    train = [{"step": 1, "time": 7.8}, {"step": 50, "time": 468.0}, {"step": 100, "time": 930.0}]
    steps, minutes = viz.step_minutes(train)
    assert steps == [0, 1, 50, 100]
    assert minutes == pytest.approx([0.0, 0.13, 7.8, 15.5])
