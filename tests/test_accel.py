"""The CPU fast paths (aiayn.accel): each kernel equals what it replaces, and an accelerated model equals
the plain one — training values and gradients, and decoding token for token."""

from __future__ import annotations

import copy
from dataclasses import asdict

import pytest
import torch

from aiayn.accel import Choices, FastAttention, FastOutputLayer, PreallocatedKVCache, accelerate, choices, for_inference
from aiayn.accel import linear as L
from aiayn.accel.dropout import FastDropout, dropout
from aiayn.accel.linear import OneDNNLinear
from aiayn.config import preset
from aiayn.decode.search import beam_search, greedy_search, max_lengths
from aiayn.model import KVCache, LanguageModel, Transformer

ALL = Choices.all()


@pytest.mark.skipif(not L.AVAILABLE, reason="no oneDNN in this PyTorch")
def test_onednn_linear_equals_torch_linear_with_gradients():
    torch.manual_seed(0)
    for bias in (True, False):
        w = torch.randn(96, 64, requires_grad=True)
        b = torch.randn(96, requires_grad=True) if bias else None
        x = torch.randn(3, 7, 64, requires_grad=True)
        for rows in (slice(None), slice(0, 32), slice(32, None)):  # weight slices, as attention takes them
            args = (x, w[rows], None if b is None else b[rows])
            ours = L.linear(*args)
            g = torch.randn_like(ours)
            grads = torch.autograd.grad(ours, [t for t in (x, w, b) if t is not None], g)
            ref = torch.nn.functional.linear(*args)
            ref_grads = torch.autograd.grad(ref, [t for t in (x, w, b) if t is not None], g)
            torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
            for a, r in zip(grads, ref_grads):
                torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)
    # Other dtypes and autocast take F.linear itself.
    assert not L._fast(x.double(), w.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not L._fast(x, w)


def test_dropout_drops_p_and_scales_the_rest():
    x = torch.ones(1000, 1000, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, 0.1, True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002  # 1e6 draws: the standard deviation is 0.0003
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x·m)/dx = m
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.1, True), y)  # the same generator: seeds reproduce masks
    m = FastDropout(0.3).eval()
    assert m(x) is x and dropout(x, 0.0, True) is x
    assert abs((dropout(torch.ones(10**6), 0.3, True) == 0).float().mean().item() - 0.3) < 0.002
    assert (dropout(torch.ones(4, 5).bfloat16(), 0.5, True) != 0).any()


def test_accelerate_swaps_modules_keeps_parameters_and_reports():
    plain = Transformer(preset("tiny", vocab_size=50))
    fast = copy.deepcopy(plain)
    report = accelerate(fast, ALL, training=True)
    assert report and all(":" in line for line in report)
    kinds = {type(m) for m in fast.modules()}
    assert FastAttention in kinds and FastDropout in kinds and (OneDNNLinear in kinds) == L.AVAILABLE
    assert isinstance(fast.output, FastOutputLayer) == L.AVAILABLE
    assert fast.kv_cache is PreallocatedKVCache and plain.kv_cache is KVCache
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), plain.state_dict().values()))
    assert accelerate(fast, ALL, training=True) == []  # idempotent
    assert not any(getattr(m, "prepack", False) for m in fast.modules())  # training: weights change every step
    assert accelerate(copy.deepcopy(plain), Choices.none()) == []  # nothing chosen, nothing changed
    decoding = copy.deepcopy(plain)
    report = accelerate(decoding, ALL)
    assert any("prepacked" in line for line in report) == L.AVAILABLE and accelerate(decoding, ALL) == []
    assert all(m.prepack == L.AVAILABLE for m in decoding.modules() if hasattr(m, "prepack"))
    assert decoding.state_dict().keys() == plain.state_dict().keys()
    # The plain model package holds no CPU-specific module.
    assert all(type(m).__module__.startswith(("aiayn.model", "torch.")) for m in plain.modules())


@pytest.mark.parametrize("arch", ["encoder-decoder", "decoder-only", "marian-like"])
def test_accelerated_training_step_equals_the_plain_model(arch):
    """Dropout off (the fast mask draws differently): the same loss and gradients (marian-like: SiLU and
    an output bias, as imported OPUS-MT models have)."""
    if arch != "decoder-only":
        extra = dict(activation="silu", output_bias=True) if arch == "marian-like" else {}
        cfg = preset("tiny", vocab_size=40, dropout=0.0, **extra)
        inputs = (torch.randint(4, 40, (4, 9)), torch.randint(4, 40, (4, 7)))
        make = Transformer
    else:
        cfg = preset("gpt-nano", vocab_size=40, d_model=32, d_ff=64, max_positions=16)
        inputs = (torch.randint(4, 40, (4, 12)),)
        make = LanguageModel
    torch.manual_seed(0)
    plain = make(cfg).train()
    fast = copy.deepcopy(plain)
    accelerate(fast, ALL, training=True)
    grads = []
    for m in (plain, fast):
        m(*inputs).log_softmax(-1).mean().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4, msg=n)


def test_accelerated_decoding_equals_the_plain_model():
    torch.manual_seed(1)
    plain = Transformer(preset("tiny", vocab_size=60)).eval()
    fast = copy.deepcopy(plain)
    accelerate(fast, ALL)
    src = torch.randint(4, 60, (6, 11))
    src[2, 7:] = 0  # padding
    limit = max_lengths(src)
    with torch.no_grad():
        assert [h.tokens for h in greedy_search(fast, src, limit)] == [h.tokens for h in greedy_search(plain, src, limit)]
        ours, ref = beam_search(fast, src, limit, 4, 0.6, 2), beam_search(plain, src, limit, 4, 0.6, 2)
    assert [[h.tokens for h in hs] for hs in ours] == [[h.tokens for h in hs] for hs in ref]
    for hs, rs in zip(ours, ref):
        for h, r in zip(hs, rs):
            assert h.score == pytest.approx(r.score, abs=1e-4)


def test_choices_are_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("AIAYN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("AIAYN_ACCEL", raising=False)
    from aiayn.accel import choose

    calls = []
    monkeypatch.setattr(choose, "measure", lambda *_: calls.append(1) or Choices(fast_dropout=True))
    assert choices() == Choices(fast_dropout=True) and choices() == Choices(fast_dropout=True)
    assert calls == [1] and (tmp_path / "accel.json").is_file()
    monkeypatch.setenv("AIAYN_ACCEL", "off")
    assert choices() == Choices.none()
    monkeypatch.setenv("AIAYN_ACCEL", "on")
    assert choices() == ALL


def test_measuring_returns_a_choice_for_each_path():
    from aiayn.accel.choose import measure

    c = measure()
    assert isinstance(c, Choices) and all(isinstance(v, bool) for v in c.__dict__.values())


def test_for_inference_keeps_translations_at_every_compute_type():
    torch.manual_seed(2)
    model = Transformer(preset("tiny", vocab_size=60)).eval()
    src = torch.randint(4, 60, (3, 8))
    limit = max_lengths(src)
    with torch.no_grad():
        ref = [h.tokens for h in greedy_search(copy.deepcopy(model), src, limit)]
        assert [h.tokens for h in greedy_search(for_inference(copy.deepcopy(model), "float32"), src, limit)] == ref
        assert len(greedy_search(for_inference(model, "int8"), src, limit)) == 3


def test_an_old_cache_entry_is_measured_again(tmp_path, monkeypatch):
    import json

    from aiayn.accel import choose

    monkeypatch.setenv("AIAYN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("AIAYN_ACCEL", raising=False)
    (tmp_path / "accel.json").write_text(json.dumps({choose.cpu_key(): {"fast_dropout": True}}))  # an older version's
    monkeypatch.setattr(choose, "measure", lambda *_: Choices(preallocated_cache=True))
    choose._MEMO.clear()
    assert choices() == Choices(preallocated_cache=True)


def test_a_cache_entry_of_an_earlier_measurement_is_measured_again(tmp_path, monkeypatch):
    """The key names the measurement's VERSION: an entry that an earlier measurement wrote (same CPU, same
    fields, e.g. bf16 decoding's wrong choice from timing one repeated shape) is not used."""
    import json

    from aiayn.accel import choose

    monkeypatch.setenv("AIAYN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("AIAYN_ACCEL", raising=False)
    old_key = choose.cpu_key().replace(f" measure v{choose.VERSION}", "")
    assert old_key != choose.cpu_key()
    (tmp_path / "accel.json").write_text(json.dumps({old_key: asdict(Choices(explicit_decoding_bf16=True))}))
    monkeypatch.setattr(choose, "measure", lambda *_: Choices(preallocated_cache=True))
    choose._MEMO.clear()
    assert choices() == Choices(preallocated_cache=True)
    assert set(json.loads((tmp_path / "accel.json").read_text())) == {old_key, choose.cpu_key()}  # the old kept


def test_the_share_of_other_work_counts_every_core_and_leaves_out_this_process(monkeypatch):
    from aiayn.accel import choose

    monkeypatch.setattr(choose.os, "cpu_count", lambda: 2)
    # 1 s of wall time on 2 cores: the machine was busy 1.5 s, of which this process 1.0 s → others 0.5 of 2 s
    assert choose._others_share((100.0, 10.0), (101.5, 11.0), 1.0) == 0.25
    assert choose._others_share((100.0, 10.0), (101.0, 11.0), 1.0) == 0.0  # only this process
    assert choose._others_share(None, (101.0, 11.0), 1.0) is None  # no /proc/stat
    assert choose._others_share((100.0, 10.0), (100.0, 10.0), 0.01) is None  # too short to tell
    machine, ours = choose._cpu_seconds() or (1.0, 0.0)
    assert machine >= ours >= 0


def test_a_busy_measurement_is_used_but_measured_again_until_quiet_or_tried_enough(tmp_path, monkeypatch, caplog):
    import json

    from aiayn.accel import choose

    monkeypatch.setenv("AIAYN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("AIAYN_ACCEL", raising=False)
    calls = []

    def measure(seconds):
        calls.append(1)
        seconds["fast_dropout"] = [0.002, 0.005]
        return Choices(fast_dropout=len(calls) % 2 == 1)

    monkeypatch.setattr(choose, "measure", measure)
    monkeypatch.setattr(choose, "_others_share", lambda *_: 0.5)  # other work took half the CPU while measuring
    entry = lambda: json.loads((tmp_path / "accel.json").read_text())[choose.cpu_key()]  # noqa: E731
    for n in range(1, choose.BUSY_TRIES + 1):  # each new process (a cleared memo) measures again
        choose._MEMO.clear()
        assert choices() == Choices(fast_dropout=n % 2 == 1)
        assert len(calls) == n and entry()["_busy"] == n and entry()["_seconds"] == {"fast_dropout": [0.002, 0.005]}
    assert "other work took 50% of the CPU" in caplog.text
    choose._MEMO.clear()
    assert choices() == Choices(fast_dropout=True) and len(calls) == choose.BUSY_TRIES  # tried enough: kept
    monkeypatch.setattr(choose, "_others_share", lambda *_: 0.01)
    r = choose.report(again=True)  # `aiayn accel --measure` on a quiet machine
    assert r["source"] == "measured" and r["busy_tries"] == 0 and "_busy" not in entry()
    assert choices() == Choices(fast_dropout=False)  # this process uses the new answer


def test_aiayn_accel_shows_the_choices_and_the_times_behind_them(tmp_path, monkeypatch, capsys):
    from aiayn.accel import choose
    from aiayn.cli import main

    monkeypatch.setenv("AIAYN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("AIAYN_ACCEL", raising=False)
    monkeypatch.setattr(choose, "measure", lambda seconds: seconds.update(fast_dropout=[0.002, 0.0055]) or
                        Choices(fast_dropout=True))
    choose._MEMO.clear()
    main(["accel", "--measure"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"machine: {choose.cpu_key()}" and "(measured just now)" in out[1]
    assert out[3].split() == ["onednn_linear_training", "no", "—", "—"]
    assert out[5].split() == ["fast_dropout", "yes", "2.00", "5.50"]
    main(["accel"])
    assert "(measured before, from the cache)" in capsys.readouterr().out
    monkeypatch.setenv("AIAYN_ACCEL", "off")
    main(["accel"])
    out = capsys.readouterr().out
    assert "(set by AIAYN_ACCEL)" in out and "fast_dropout             no" in out


def test_the_decoding_measurement_meets_new_shapes_as_decoding_does():
    from aiayn.accel.choose import decoding_walk

    walks = [decoding_walk(torch.bfloat16) for _ in range(3)]
    shapes = [{(q.shape, k.shape) for q, k, _, _ in w} for w in walks]
    assert all(len(s) == 8 for s in shapes)  # sentences finish: 8 alive counts, one call per decoder layer
    assert not (shapes[0] & shapes[1]) and not (shapes[1] & shapes[2])  # each walk a source length not met
    q, k, v, mask = walks[0][0]
    assert q.shape == (32, 4, 4, 64) and k.shape[2] == mask.shape[-1] and not mask.all() and mask.any(-1).all()


def test_measured_paths_take_turns():
    """Timed one after the other, the first path pays the process's warm-up (it made oneDNN look faster
    than MKL for training products early in a process); the paths alternate in every round."""
    from aiayn.accel.choose import _best_times

    order: list[str] = []
    times = _best_times([lambda: order.append("fast"), lambda: order.append("plain")], repeat=3)
    assert order == ["fast", "plain"] * 4 and len(times) == 2 and all(t >= 0 for t in times)


@pytest.mark.skipif(not L.AVAILABLE, reason="no oneDNN in this PyTorch")
def test_prepacked_products_equal_linear_and_follow_the_weight():
    """Decoding's products read a prepacked copy of each weight: equal to F.linear (whole weight and row
    slices), made once, and made again whenever the weight changes (in place, or a new tensor)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    x = torch.randn(5, 3, 64)

    def check(rows: slice = slice(None)) -> None:
        ours = L.inference_linear(x, lin.weight, lin.bias[rows], rows)
        torch.testing.assert_close(ours, F.linear(x, lin.weight[rows], lin.bias[rows]), atol=1e-4, rtol=1e-4)

    with torch.no_grad():
        for rows in (slice(None), slice(0, 32), slice(32, None)):
            check(rows)
        packed = L._packed(lin.weight, slice(None))
        assert L._packed(lin.weight, slice(None)) is packed and packed.is_mkldnn
        lin.weight.mul_(2)  # in place, as an optimizer step writes
        check()
        assert L._packed(lin.weight, slice(None)) is not packed
        lin.weight.data = torch.randn(96, 64)  # a new tensor
        check(slice(32, None))
        lin16 = copy.deepcopy(lin).bfloat16()  # a bf16 copy of a model decodes from packed weights too
        x16 = x.bfloat16()
        ours = L.inference_linear(x16, lin16.weight, lin16.bias, relu=True)
        assert ours.dtype == torch.bfloat16 and lin16.weight in L._PACKED
        torch.testing.assert_close(ours, F.relu(F.linear(x16, lin16.weight, lin16.bias)), atol=2e-2, rtol=2e-2)
    y = L.inference_linear(x, lin.weight, lin.bias)  # a gradient wanted: the plain weights, through autograd
    y.sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.shape == (96, 64)


@pytest.mark.skipif(not L.AVAILABLE, reason="no oneDNN in this PyTorch")
def test_the_decoding_feed_forward_equals_the_plain_one():
    """For decoding the FFN's ReLU is applied inside its first product; in training it is the plain module."""
    from aiayn.accel import FastFeedForward
    from aiayn.model.layers import FeedForward

    torch.manual_seed(4)
    model = Transformer(preset("tiny", vocab_size=30)).eval()
    plain = copy.deepcopy(model)
    assert any("FastFeedForward" in line for line in accelerate(model, ALL))
    ffn, ref = model.decoder.layers[0].ffn, plain.decoder.layers[0].ffn
    assert type(ffn) is FastFeedForward and type(ref) is FeedForward
    x = torch.randn(3, 5, ffn.w1.in_features) * 3
    with torch.no_grad():
        torch.testing.assert_close(ffn(x), ref(x), atol=1e-5, rtol=1e-4)
    ffn.train()
    torch.manual_seed(0)
    ours = ffn(x)
    torch.manual_seed(0)
    torch.testing.assert_close(ours, ref.train()(x), atol=1e-5, rtol=1e-4)  # the same dropout draws


def test_a_decoding_model_follows_its_weights_and_still_copies():
    """A model accelerated for decoding, then trained a step, decodes as a plain model with the new
    weights (no stale packed copy); it still deep-copies, and its state dict holds only the plain weights."""
    torch.manual_seed(2)
    cfg = preset("tiny", vocab_size=60)
    fast = Transformer(cfg).eval()
    accelerate(fast, ALL)
    src = torch.randint(4, 60, (4, 9))
    limit = max_lengths(src)
    with torch.no_grad():
        greedy_search(fast, src, limit)  # packs the weights
    opt = torch.optim.SGD(fast.parameters(), lr=0.5)
    fast(src, src).log_softmax(-1)[..., 5].mean().backward()
    opt.step()
    copied = copy.deepcopy(fast)
    plain = Transformer(cfg).eval()
    plain.load_state_dict(fast.state_dict())
    assert fast.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        ref = beam_search(plain, src, limit, 4)
        for m in (fast, copied):
            ours = beam_search(m, src, limit, 4)
            assert [h[0].tokens for h in ours] == [h[0].tokens for h in ref]
            assert [h[0].score for h in ours] == pytest.approx([h[0].score for h in ref], abs=1e-4)



@pytest.mark.skipif(not L.AVAILABLE, reason="no oneDNN in this PyTorch")
def test_a_product_with_the_residual_added_equals_the_two_steps():
    """inference_linear(..., add=r): oneDNN adds r as it writes the product (a sub-layer's residual)."""
    import torch.nn.functional as F

    torch.manual_seed(6)
    lin = torch.nn.Linear(64, 48)
    x, r = torch.randn(7, 64), torch.randn(7, 48)
    with torch.no_grad():
        torch.testing.assert_close(L.inference_linear(x, lin.weight, lin.bias, add=r), r + F.linear(x, lin.weight, lin.bias),
                                   atol=1e-5, rtol=1e-5)
        x16, r16, w16, b16 = x.bfloat16(), r.bfloat16(), lin.weight.bfloat16(), lin.bias.bfloat16()
        torch.testing.assert_close(L.inference_linear(x16, w16, b16, add=r16), r16 + F.linear(x16, w16, b16),
                                   atol=3e-2, rtol=2e-2)
        rows = slice(16, 32)  # a row slice of a stacked weight, with its own bias
        torch.testing.assert_close(L.inference_linear(x, lin.weight, lin.bias[rows], rows, add=r[:, :16]),
                                   r[:, :16] + F.linear(x, lin.weight[rows], lin.bias[rows]), atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="not both"):
            L.inference_linear(x, lin.weight, lin.bias, relu=True, add=r)
    y = L.inference_linear(x, lin.weight, lin.bias, add=r)  # a gradient wanted: through autograd
    y.sum().backward()
    assert lin.weight.grad is not None


@pytest.mark.skipif(not L.AVAILABLE, reason="no oneDNN in this PyTorch")
@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("compute_type", ["float32", "bfloat16", "int8"])
def test_the_decoding_step_layer_equals_the_plain_layer(norm, compute_type, monkeypatch):
    """FastDecoderLayer's one-position steps (greedy and beam groups, post- and pre-LN, float32, bf16 and int8
    copies, an encoder-decoder and a decoder-only model) give the plain layers' logits; the first step (the
    memory's keys and values projected), several positions at once and training take the plain forward."""
    from aiayn.accel.quantize import lower_precision
    from aiayn.accel.step import FastDecoderLayer

    taken = []
    check = FastDecoderLayer.fast_step
    monkeypatch.setattr(FastDecoderLayer, "fast_step", lambda self, *a: taken.append(check(self, *a)) or taken[-1])
    tol = dict(atol=6e-2, rtol=3e-2) if compute_type == "bfloat16" else dict(atol=1e-4, rtol=1e-4)
    torch.manual_seed(5)
    models = [Transformer(preset("tiny", vocab_size=50, norm=norm)),
              LanguageModel(preset("gpt-nano", vocab_size=50, d_model=32, d_ff=64, max_positions=32, norm=norm))]
    src = torch.randint(4, 50, (3, 9))
    src[1, 6:] = 0  # padding
    for base in models:
        base.eval()
        plain, fast = lower_precision(base, compute_type), lower_precision(copy.deepcopy(base), compute_type)
        accelerate(fast, ALL)
        assert all(type(layer) is FastDecoderLayer for layer in fast.decoder.layers)
        lm = isinstance(base, LanguageModel)
        for beams in (1,) if lm else (1, 4):
            taken.clear()
            with torch.no_grad():
                states = [m.start() if lm else m.start(src, beams) for m in (plain, fast)]
                tokens = torch.randint(4, 50, (3 * beams, 2 if lm else 1))  # a language model starts from a prefix
                for _ in range(5):
                    ref, ours = (m.step(tokens, s) for m, s in zip((plain, fast), states))
                    torch.testing.assert_close(ours.float(), ref.float(), **tol)
                    tokens = ref[:, -1:].float().argmax(-1)
            assert taken[: len(fast.decoder.layers)] == [False] * len(fast.decoder.layers)  # first step: plain
            assert all(taken[len(fast.decoder.layers):])  # then every step is the fast one
    if compute_type == "float32":
        fast.train()
        taken.clear()
        fast(torch.randint(4, 50, (2, 6))).sum().backward()  # training: the plain forward, with gradients
        assert taken and not any(taken)
