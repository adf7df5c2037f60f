"""Restricted self-attention (``attention_window: r``; Table 1's fourth row, §7's "local" attention):
the O(n·r) fast path equals equation (1) under a band mask, in training (values and gradients) and in
cached decoding, whose caches keep only the window."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aiayn.accel import PreallocatedKVCache, accelerate
from aiayn.config import PAD_ID, ConfigError, preset
from aiayn.decode.search import beam_search, max_lengths
from aiayn.model import LanguageModel, Transformer, set_attention_impl
from aiayn.model.attention import attention, band_mask, local_attention, restricted_mask


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 150), r=st.integers(1, 40), causal=st.booleans(), pad=st.integers(0, 100),
       seed=st.integers(0, 2**16))
def test_local_attention_equals_equation_one_with_a_band_mask(n, r, causal, pad, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, n, 4, generator=g, requires_grad=True) for _ in range(3))
    real = torch.ones(2, n, dtype=torch.bool)
    real[1, n - min(pad, n - 1):] = False  # the second row padded at the end; at least one real token
    fast = local_attention(q, k, v, r, causal, real)
    ref, _ = attention(q, k, v, restricted_mask(real[:, None, None, :], n, n, r, causal))
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-4)
    up = torch.randn(fast.shape, generator=g)
    for a, b in zip(torch.autograd.grad(fast, (q, k, v), up), torch.autograd.grad(ref, (q, k, v), up)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_the_band():
    # Query i sees keys i−r … i+r (i−r … i when causal); with a cache the queries are the last positions.
    assert band_mask(4, 4, 1, False).int().tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]
    assert band_mask(4, 4, 1, True).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    assert band_mask(1, 3, 2, True).int().tolist() == [[1, 1, 1]]
    assert band_mask(1, 4, 2, True).int().tolist() == [[0, 1, 1, 1]]
    # A padding query with no real key in reach attends to itself (no empty softmax row).
    mask = torch.tensor([True, False, False, False])[None, None, None, :]
    assert restricted_mask(mask, 4, 4, 1, False)[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0],
                                                                          [0, 0, 0, 1]]


def _lm(window, **kw):
    torch.manual_seed(0)
    return LanguageModel(preset("gpt-nano", vocab_size=50, attention_window=window, dropout=0.0, **kw)).eval()


def test_a_window_wider_than_the_sequence_is_full_attention():
    x = torch.randint(4, 50, (2, 30))
    torch.testing.assert_close(_lm(40)(x), _lm(0)(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(_lm(3)(x), _lm(0)(x), atol=1e-3)


@pytest.mark.parametrize("positional", ["sinusoidal", "rope"])
def test_fast_path_equals_reference_for_the_whole_model(positional):
    m = _lm(5, positional=positional)
    m.train()  # gradients; dropout is 0
    x = torch.randint(4, 50, (2, 200))  # long enough for the blocked O(n·r) path
    a = m(x)
    ga = torch.autograd.grad(a.square().mean(), list(m.parameters()))
    ref = copy.deepcopy(m)
    set_attention_impl(ref, "reference")
    b = ref(x)
    gb = torch.autograd.grad(b.square().mean(), list(ref.parameters()))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for u, w in zip(ga, gb):
        torch.testing.assert_close(u, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("positional", ["sinusoidal", "rope"])
@pytest.mark.parametrize("cache", ["plain", "preallocated"])
def test_cached_decoding_keeps_only_the_window_and_equals_the_full_forward(positional, cache):
    m = _lm(4, positional=positional)
    if cache == "preallocated":
        m.kv_cache = PreallocatedKVCache
    x = torch.randint(4, 50, (2, 40))
    full = m(x)
    state = m.start()
    steps = [m.step(x[:, :3], state)]  # a prompt of 3, then one token at a time
    steps += [m.step(x[:, i : i + 1], state) for i in range(3, 40)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    assert all(c.length == 4 and c.position == 40 for c in state.self_caches)


def test_encoder_decoder_with_a_window_decodes_as_it_trains():
    torch.manual_seed(0)
    m = Transformer(preset("tiny", dropout=0.0, attention_window=2)).eval()
    src = torch.randint(4, 64, (3, 70))
    src[1, 50:] = PAD_ID
    tgt = torch.randint(4, 64, (3, 12))
    full = m(src, tgt)
    state = m.start(src)
    steps = torch.cat([m.step(tgt[:, i : i + 1], state) for i in range(12)], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-4)
    # padding never reaches the real positions (the encoder's blocked path with a key mask)
    alone = m(src[1:2, :50], tgt[1:2])
    torch.testing.assert_close(alone, full[1:2], atol=1e-5, rtol=1e-4)
    hyps = beam_search(m, src, max_lengths(src, extra=8), beam=3)
    assert len(hyps) == 3


def test_restricted_attention_trains():
    torch.manual_seed(0)
    m = LanguageModel(preset("gpt-nano", vocab_size=40, attention_window=2))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    x = torch.randint(4, 40, (4, 17))
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_accelerated_model_with_a_window_equals_the_plain_one():
    m = _lm(3)
    fast = copy.deepcopy(m)
    accelerate(fast)
    x = torch.randint(4, 50, (2, 20))
    s1, s2 = m.start(), fast.start()
    a = torch.cat([m.step(x[:, i : i + 1], s1) for i in range(20)], 1)
    b = torch.cat([fast.step(x[:, i : i + 1], s2) for i in range(20)], 1)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_window_config_errors():
    with pytest.raises(ConfigError, match="attention_window must be >= 0"):
        preset("tiny", attention_window=-1)
    with pytest.raises(ConfigError, match="not to rnnsearch"):
        preset("rnnsearch-small", attention_window=3)
