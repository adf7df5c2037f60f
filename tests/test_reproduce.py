"""``aiayn reproduce``: Table 1's measurements (path length, sequential operations, timing) and the
Table 3 runner, on tiny inputs."""

from __future__ import annotations

import json

import pytest
import torch

from aiayn.cli import main
from aiayn.config import ConfigError, estimate_parameters, load_run_config
from aiayn.model.conv import ConvLayer
from aiayn.reproduce import table1, table2, table3


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


# --- Table 3 -------------------------------------------------------------------------------------
def test_rows_are_chosen_by_id_group_or_all():
    assert table3.select_rows("A") == ("A1", "A2", "A3", "A4")
    assert table3.select_rows("base, B, E") == ("base", "B1", "B2", "E")
    assert table3.select_rows("all")[-1] == "big" and len(table3.select_rows("all")) == 20
    with pytest.raises(ConfigError, match="unknown Table 3 row 'F'"):
        table3.select_rows("F")


def _params(row: str) -> int:
    r = table3.BY_ID[row]
    cfg = load_run_config(None, {"model": {**table3.BASE_MODEL, **r.model, "vocab_size": 8000}})
    return estimate_parameters(cfg.model)


def test_rows_change_the_model_as_the_paper_does():
    base = _params("base")
    assert all(_params(r) == base for r in ("A1", "A2", "A3", "A4"))  # (A): heads at constant computation
    assert _params("B1") < _params("B2") < base  # (B): smaller keys
    assert _params("C1") < _params("C2") < base < _params("C3")  # (C): layers
    assert _params("C4") < base < _params("C5") and _params("C6") < base < _params("C7")
    assert _params("big") > _params("C5")
    for r in table3.ROWS:  # every row is a valid configuration
        load_run_config(None, {"model": {**table3.BASE_MODEL, **r.model}, "train": {**table3.BASE_TRAIN, **r.train,
                                                                                    "max_steps": 10}})


def test_claims_are_checked_only_where_rows_were_measured():
    rows = {"base": {"dev_ppl": 10.0, "dev_bleu": 5.0}, "D3": {"dev_ppl": 9.0, "dev_bleu": 4.0},
            "E": {"dev_ppl": 10.1, "dev_bleu": 5.9}}
    verdicts = {c["claim"][:40]: c["reproduced"] for c in table3.claims(rows)}
    assert verdicts["D: label smoothing hurts perplexity (ε_l"] is True
    assert verdicts["D: … but improves BLEU (ε_ls = 0 has the"] is True
    assert verdicts["E: learned positional embeddings give ne"] is False  # 0.9 BLEU apart
    assert verdicts["A: single-head attention is worse than t"] is None


def test_reproduce_table3_trains_a_row_and_resumes(toy_corpus, tmp_path, capsys):
    corpus = toy_corpus["train"].parent
    args = ["reproduce", "table3", "--rows", "A1", "--steps", "20", "--corpus", str(corpus), "--vocab-size", "120",
            "--dev-sentences", "5", "-o", str(tmp_path / "r")]
    main(args)
    out = capsys.readouterr()
    result = json.loads((tmp_path / "r" / "table3" / "A1" / "result.json").read_text())
    assert result["steps"] == 20 and result["dev_ppl"] > 1 and 0 <= result["dev_bleu"] <= 100
    assert "| A1 | h=1, d_k=d_v=512 | 5.29 | 24.9 |" in out.out
    assert json.loads((tmp_path / "r" / "table3.json").read_text())["rows"]["A1"]["steps"] == 20
    main(args)  # finished rows are skipped
    assert "A1 done before" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the same directory with another budget would mix two tables
        main([a if a != "20" else "30" for a in args])
    assert "measured with another budget" in capsys.readouterr().err


# --- Table 2 -------------------------------------------------------------------------------------
def test_lstm_flops_are_counted_by_the_added_rule():
    lstm = torch.nn.LSTM(16, 32, batch_first=True)
    x = torch.randn(3, 10, 16)
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten.mkldnn_rnn_layer: table2._rnn_layer_flops})
    with counter:
        lstm(x)
    assert counter.get_total_flops() == 2 * 3 * 10 * (4 * 32 * 16 + 4 * 32 * 32)


def test_transformer_flops_match_the_matrix_products():
    # A forward pass of a linear layer on t tokens is 2·t·in·out FLOPs; backward twice that.
    from aiayn.config import preset
    from aiayn.model import Transformer

    model = Transformer(preset("tiny", n_encoder_layers=1, n_decoder_layers=1))
    src, tgt_in, tgt_out = torch.randint(4, 64, (2, 5)), torch.randint(4, 64, (2, 4)), torch.randint(4, 64, (2, 4))
    flops, tokens = table2.count_training_flops(model, [(src, tgt_in, tgt_out)])
    assert tokens == 8
    d, ff, v, s, t = 64, 128, 64, 10, 8  # model size; source and target positions in the batch
    linear = (4 * d * d + 2 * d * ff) * s + (4 * d * d + 4 * d * d + 2 * d * ff) * t + d * v * t
    attention = 2 * 5 * 5 * d * 2 + 2 * 4 * 4 * d * 2 + 2 * 4 * 5 * d * 2  # QKᵀ and AV per sentence: enc, dec, cross
    assert flops >= 3 * 2 * linear  # every matrix product forward and backward (more where inputs need gradients)
    assert flops <= 3 * 2 * (linear + attention) * 1.01


def test_reproduce_table2_runs_and_counts(toy_corpus, tmp_path, capsys):
    corpus = toy_corpus["train"].parent
    main(["reproduce", "table2", "--systems", "rnnsearch,transformer-base", "--minutes", "0.03", "--corpus", str(corpus),
          "--vocab-size", "120", "--test-sentences", "5", "-o", str(tmp_path / "r")])
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "r" / "table2.json").read_text())
    assert set(results["rows"]) == {"rnnsearch", "transformer-base"}
    for r in results["rows"].values():
        assert r["steps"] >= 1 and r["flops_counted"] > 0 and r["flops_paper_way"] > 0
    # target tokens trained: updates × the mean target tokens of a batch (y + </s>, as the loss counts them)
    import numpy as np

    from aiayn.data.batching import ParallelData, token_batches

    d = ParallelData(tmp_path / "r" / "table2" / "data", "train")
    per_batch = np.mean([int(d.tgt_lens[b].sum()) for b in token_batches(d.src_lens, d.tgt_lens, 2500, seed=1234)])
    for r in results["rows"].values():
        assert r["target_tokens_trained"] == round(r["steps"] * per_batch)
    assert "| Transformer (big) | 28.4 | 41.8 | 2.3e+19 | 2.3e+19 |" in out
    with pytest.raises(SystemExit):
        main(["reproduce", "table2", "--systems", "lstm"])
    assert "unknown Table 2 system lstm" in capsys.readouterr().err
