"""``aiayn reproduce``: Table 1's measurements (path length, sequential operations, timing) and the
Table 3 runner, on tiny inputs."""

from __future__ import annotations

import json

import pytest
import torch

from aiayn.cli import main
from aiayn.model.conv import ConvLayer
from aiayn.reproduce import table1


@pytest.mark.parametrize("n", [8, 16])
def test_path_lengths_are_measured_from_the_wiring(n):
    cfg = table1.Table1Config(structure_window=4)
    assert table1.path_length("self-attention", n, cfg) == 1  # every position attends to every other
    assert table1.path_length("recurrent", n, cfg) == n  # x_0 reaches h_{n-1} after n steps
    assert table1.path_length("convolutional", n, cfg) == n - 1  # k = 3: one position further per layer
    assert table1.path_length("separable convolutional", n, cfg) == n - 1
    assert table1.path_length("restricted self-attention", n, cfg) == -(-(n - 1) // 4)  # r positions per layer
    assert table1.path_length("convolutional", n, table1.Table1Config(kernel=5)) == -(-(n - 1) // 2)


def test_the_recurrence_needs_n_sequential_hops_to_equal_nn_lstm():
    cfg = table1.Table1Config()
    assert [table1.sequential_operations("recurrent", n, cfg) for n in (4, 8, 16)] == [4, 8, 16]
    assert table1.sequential_operations("self-attention", 16, cfg) == 1


def test_separable_convolution_has_fewer_weights():
    d, k = 64, 3
    full = sum(p.numel() for p in ConvLayer(d, k).parameters())
    sep = sum(p.numel() for p in ConvLayer(d, k, separable=True).parameters())
    assert full == k * d * d + d and sep == k * d + d + d * d + d
    x = torch.randn(2, 10, d)
    assert ConvLayer(d, k, separable=True)(x).shape == x.shape
    with pytest.raises(ValueError, match="odd"):
        ConvLayer(d, 4)


def test_slope():
    assert table1.slope([10, 100, 1000], [1.0, 100.0, 10000.0]) == pytest.approx(2.0)


def test_reproduce_table1_quick_command(tmp_path, capsys):
    main(["reproduce", "table1", "--quick", "-o", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert "| restricted self-attention | O(r·n·d) |" in out
    results = json.loads((tmp_path / "r" / "table1.json").read_text())
    assert set(results["rows"]) == set(table1.KINDS)
    assert all(s > 0 for r in results["rows"].values() for s in r["seconds"].values())
    assert (tmp_path / "r" / "table1.png").stat().st_size > 10_000
    # a directory holding something else is never written into
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["reproduce", "table1", "--quick", "-o", str(tmp_path / "mine")])
    assert "not written by `aiayn reproduce`" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
