"""Neural language models before attention (aiayn.model.recurrent_lm): Bengio's MLP and the RNN/LSTM/GRU
LM, through the same training loop, evaluation, sampling and model directories as the Transformer LM."""

from __future__ import annotations

import pytest
import torch

from aiayn.config import ConfigError, ModelConfig, estimate_parameters, preset
from aiayn.data.prepare import PrepareConfig, prepare
from aiayn.decode.sampling import SampleConfig, generate, generate_text, generate_uncached
from aiayn.model import MLPLanguageModel, RNNLanguageModel, build_model, count_parameters
from aiayn.train.checkpoint import load_model_dir
from aiayn.train.loop import load_run_config, train

MODELS = [dict(arch="mlp-lm", order=4, d_model=8, d_ff=32), dict(arch="rnn-lm", cell="lstm", d_model=16, n_decoder_layers=2),
          dict(arch="rnn-lm", cell="gru", d_model=16, n_decoder_layers=1), dict(arch="rnn-lm", cell="rnn", d_model=16)]


def small(**kw) -> ModelConfig:
    return ModelConfig(**{"vocab_size": 20, "dropout": 0.0, "max_positions": 64, "n_encoder_layers": 0, **kw})


@pytest.mark.parametrize("kw", MODELS, ids=lambda kw: kw.get("cell", kw["arch"]))
def test_steps_equal_the_full_forward_and_parameters_are_estimated(kw):
    model = build_model(small(**kw)).eval()
    x = torch.randint(4, 20, (3, 11))
    state = model.start()
    steps = torch.cat([model.step(x[:, :4], state), *(model.step(x[:, i : i + 1], state) for i in range(4, 11))], 1)
    torch.testing.assert_close(steps, model(x), atol=1e-5, rtol=1e-5)
    cfg = SampleConfig(max_new_tokens=15, temperature=1.0, seed=5)
    assert torch.equal(generate(model, x[:1, :3], cfg, block_size=8), generate_uncached(model, x[:1, :3], cfg, block_size=8))
    assert estimate_parameters(model.cfg) == count_parameters(model)


def test_mlp_sees_exactly_its_window():
    # Position t's output depends on tokens t − n + 2 … t and on nothing else.
    model = build_model(small(arch="mlp-lm", order=3, d_model=8, d_ff=16)).eval()
    x = torch.randint(4, 20, (1, 10))
    y = x.clone()
    y[0, 2] = (y[0, 2] + 1 - 4) % 16 + 4  # change token 2: outputs 2 and 3 change, the others do not
    changed = (model(x) - model(y)).abs().amax(-1)[0] > 1e-6
    assert changed.tolist() == [False, False, True, True] + [False] * 6


@pytest.mark.parametrize("kw", MODELS[:2], ids=["mlp", "lstm"])
def test_overfits_a_line_and_round_trips(tmp_path, kw):
    (tmp_path / "t.txt").write_text("To be, or not to be, that is the question.\n" * 40)
    prepare(PrepareConfig(train=str(tmp_path / "t.txt"), out=str(tmp_path / "d"), kind="lm", vocab="char"))
    model_kw = {**kw, "order": 8} if kw["arch"] == "mlp-lm" else dict(kw)
    run = load_run_config(None, {
        "model": {**model_kw, "d_model": 32, "d_ff": 64, "max_positions": 32, "dropout": 0.0, "n_encoder_layers": 0},
        "train": {"data": str(tmp_path / "d"), "out": str(tmp_path / "run"), "lr_schedule": "constant", "lr": 1e-2,
                  "warmup": 10, "max_steps": 300, "batch_size": 8, "eval_every": 300, "save_every": 300,
                  "clip_norm": 1.0, "label_smoothing": 0.0, "threads": 1}})
    result = train(run)
    assert result["val_loss"] < 0.5  # a repeated line is learnt
    model, vocab, config = load_model_dir(tmp_path / "run" / "checkpoints" / "step_0000300")
    assert config["model"]["arch"] == kw["arch"]
    out = generate_text(model, vocab, "To be, or ", SampleConfig(max_new_tokens=20, temperature=0), stop=["\n"])
    assert out.startswith("not to be")


def test_presets_and_checks():
    assert isinstance(build_model(preset("lstm-lm")), RNNLanguageModel)
    assert isinstance(build_model(preset("mlp-lm")), MLPLanguageModel)
    m = build_model(preset("lstm-lm"))
    assert m.output.weight is m.embedding.weight  # tied (Press & Wolf 2017)
    assert build_model(preset("lstm-lm", tie="none")).output.weight is not build_model(preset("lstm-lm")).embedding.weight
    with pytest.raises(ConfigError, match="order >= 2"):
        preset("mlp-lm", order=1)
    with pytest.raises(ConfigError, match="cell"):
        preset("lstm-lm", cell="transformer")
