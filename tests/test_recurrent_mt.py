"""Recurrent translation (aiayn.model.recurrent_mt): Sutskever's seq2seq and Bahdanau's RNNsearch through
aiayn's search, training loop and translator, held to the same tests as the Transformer."""

from __future__ import annotations

import itertools

import pytest
import torch

from aiayn.config import BOS_ID, EOS_ID, ConfigError, ModelConfig, estimate_parameters, preset
from aiayn.data.batching import source_tensor
from aiayn.decode.search import beam_search, length_penalty
from aiayn.decode.translate import DecodeConfig, Translator
from aiayn.model import RNNSearch, RNNSeq2Seq, build_model, count_parameters, recording_attention

ARCHS = {
    "seq2seq-lstm": dict(arch="rnn-seq2seq", cell="lstm", n_encoder_layers=2, n_decoder_layers=2, reverse_source=True),
    "seq2seq-gru": dict(arch="rnn-seq2seq", cell="gru", n_encoder_layers=1, n_decoder_layers=2, tie="none", hidden_size=24),
    "rnnsearch": dict(arch="rnnsearch", hidden_size=32, n_encoder_layers=1, n_decoder_layers=1),
}


def model(name: str, vocab: int = 30, seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(**{"vocab_size": vocab, "d_model": 16, "dropout": 0.0, **ARCHS[name], **kw})
    return build_model(cfg).eval().double()


def sources(n=6, vocab=30, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]


@pytest.mark.parametrize("name", ARCHS)
def test_step_by_step_equals_teacher_forcing_and_beams_share_the_source(name):
    m = model(name)
    src = source_tensor(sources(3))
    tgt = torch.randint(4, 30, (3, 6))
    full = m(src, tgt)
    state = m.start(src)
    steps = torch.cat([m.step(tgt[:, :2], state), *(m.step(tgt[:, i : i + 1], state) for i in range(2, 6))], 1)
    torch.testing.assert_close(steps, full)
    k = 3  # k hypotheses per sentence against one copy of its source = k copies of the sentence
    grouped = m.start(src, beams=k)
    torch.testing.assert_close(m.step(tgt.repeat_interleave(k, 0)[:, :3], grouped),
                               m.step(tgt.repeat_interleave(k, 0)[:, :3], m.start(src.repeat_interleave(k, 0))))
    order = torch.tensor([2, 0, 0, 1])  # reorder/drop rows as the search does
    state = m.start(src)
    m.step(tgt[:, :2], state)
    state.select(order)
    torch.testing.assert_close(m.step(tgt[order, 2:3], state)[:, 0], full[order, 2])


@pytest.mark.parametrize("name", ARCHS)
def test_padding_and_batch_do_not_change_a_sentence(name):
    m = model(name)
    srcs = sources(5)
    together = m(source_tensor(srcs), torch.full((5, 1), BOS_ID))[:, 0]
    for i, s in enumerate(srcs):
        torch.testing.assert_close(m(source_tensor([s]), torch.full((1, 1), BOS_ID))[0, 0], together[i])
    tr = Translator(m, None, DecodeConfig(beam=4, max_len_b=8))
    assert [h[0].tokens for h in tr.translate_ids(srcs)] == [tr.translate_ids([s])[0][0].tokens for s in srcs]


@pytest.mark.parametrize("name", ["seq2seq-lstm", "rnnsearch"])
def test_beam_search_is_exact_when_the_beam_holds_everything(name):
    m = model(name, vocab=6, seed=3)
    src = [4, 5, 4]
    best = beam_search(m, source_tensor([src]), torch.tensor([3]), beam=16, alpha=0.6, nbest=3)[0]

    def logp(seq):
        lp = m(source_tensor([src]), torch.tensor([[BOS_ID] + seq[:-1]])).log_softmax(-1)[0]
        return sum(lp[i, t].item() for i, t in enumerate(seq))

    candidates = [(logp(list(w) + [EOS_ID]) / length_penalty(len(w) + 1, 0.6), list(w))
                  for n in range(3) for w in itertools.product([4, 5, 1], repeat=n)]
    candidates += [(logp(list(w)) / length_penalty(3, 0.6), list(w)) for w in itertools.product([4, 5, 1], repeat=3)]
    candidates.sort(key=lambda c: -c[0])
    assert [h.tokens for h in best] == [c[1] for c in candidates[:3]]


def test_rnnsearch_attention_is_a_distribution_over_real_source_words():
    m = model("rnnsearch")
    srcs = sources(4)
    src = source_tensor(srcs)
    with recording_attention(m) as record:
        m(src, torch.randint(4, 30, (4, 5)))
    assert list(record) == ["cross_attn"]  # the name aiayn viz draws as encoder-decoder attention
    alphas = record["cross_attn"]
    assert alphas.shape == (4, 1, 5, src.size(1))  # (sentences, one "head", target steps, source positions)
    torch.testing.assert_close(alphas.sum(-1), torch.ones(4, 1, 5, dtype=alphas.dtype))
    padding = (src == 0)[:, None, None, :].expand_as(alphas)
    assert torch.all(alphas[padding] == 0) and torch.all(alphas[~padding] > 0)


def test_reversal_reads_the_source_backwards():
    m = model("seq2seq-lstm")
    plain = model("seq2seq-lstm", reverse_source=False)
    plain.load_state_dict(m.state_dict())
    srcs = [[5, 6, 7, 8], [9, 10]]
    rev = source_tensor([s[::-1] for s in srcs])  # source_tensor ends each with </s>: the words turn, </s> stays last
    assert rev[1].tolist()[:3] == [10, 9, EOS_ID]
    for a, b in zip(m.encode(source_tensor(srcs)), plain.encode(rev)):
        torch.testing.assert_close(a, b)


def test_presets_parameters_and_checks():
    for name in ("rnn-seq2seq-small", "rnnsearch-small", "sutskever-2014", "rnnsearch-2014"):
        cfg = preset(name, vocab_size=1000)
        assert estimate_parameters(cfg) == count_parameters(build_model(cfg)), name
    assert isinstance(build_model(preset("rnnsearch-small")), RNNSearch)
    assert isinstance(build_model(preset("rnn-seq2seq-small")), RNNSeq2Seq)
    with pytest.raises(ConfigError, match="hidden_size"):
        preset("rnnsearch-small", hidden_size=300)
    with pytest.raises(ConfigError, match="one decoder layer"):
        preset("rnnsearch-small", n_decoder_layers=2)
    with pytest.raises(ConfigError, match="must equal d_model"):
        preset("rnn-seq2seq-small", hidden_size=512)


@pytest.mark.parametrize("arch,size,steps", [("rnn-seq2seq-small", 64, 800), ("rnnsearch-small", 32, 300)])
def test_learns_to_copy_through_the_training_loop(tmp_path, arch, size, steps):
    # Copying through one fixed-size state takes the seq2seq model more steps than attention needs.
    from aiayn.data.prepare import PrepareConfig, prepare
    from aiayn.train.checkpoint import load_model_dir
    from aiayn.train.loop import load_run_config, train

    words = "uno dos tres cuatro cinco seis siete ocho".split()
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(400):
        sent = " ".join(words[int(i)] for i in torch.randint(0, 8, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g))
        lines.append(f"{sent}\t{sent}")
    (tmp_path / "t.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "d.tsv").write_text("\n".join(lines[:20]) + "\n")
    prepare(PrepareConfig(train=str(tmp_path / "t.tsv"), dev=str(tmp_path / "d.tsv"), out=str(tmp_path / "data"),
                          vocab="bpe", vocab_size=40))  # about a piece per word
    run = load_run_config(None, {
        "model": {"preset": arch, "d_model": size, "hidden_size": 2 * size if arch == "rnnsearch-small" else size,
                  "dropout": 0.0},
        "train": {"data": str(tmp_path / "data"), "out": str(tmp_path / "run"), "lr_schedule": "constant", "lr": 1e-2,
                  "warmup": 20, "max_steps": steps, "max_tokens": 600, "eval_every": steps, "save_every": steps,
                  "eval_bleu_sentences": 20, "clip_norm": 1.0, "label_smoothing": 0.0, "threads": 1}})
    result = train(run)
    assert result["val_bleu"] > 50, result
    m, vocab, config = load_model_dir(tmp_path / "run" / "checkpoints" / f"step_{steps:07d}")
    assert config["model"]["arch"] == preset(arch).arch
    assert Translator(m, vocab, DecodeConfig(beam=4)).translate(["dos tres uno"]) == ["dos tres uno"]
    if arch == "rnnsearch-small":  # aiayn viz draws its alignment as the Transformer's cross-attention
        from aiayn.viz import attention_maps, plot_attention

        maps = attention_maps(m, vocab, "dos tres uno")
        (cross,) = maps["cross"]
        assert cross.shape == (1, len(maps["tgt"]), len(maps["src"])) and maps["encoder"] == maps["decoder"] == []
        # copying: each target word attends most to the same source word (the diagonal, as in Bahdanau's Figure 3)
        words = [i for i, p in enumerate(maps["tgt"]) if p.strip("▁") in ("dos", "tres", "uno")]
        assert all(maps["src"][int(cross[0, i].argmax())] == maps["tgt"][i] for i in words)
        assert plot_attention(m, vocab, "dos tres uno", tmp_path / "a.png").is_file()
    from fastapi.testclient import TestClient

    from aiayn.serve.app import create_app

    with TestClient(create_app(tmp_path / "run" / "checkpoints" / f"step_{steps:07d}")) as client:  # served as it is
        r = client.post("/translate", json={"texts": ["dos tres uno", "ocho siete"], "beam": 4})
        assert r.status_code == 200 and [t["translation"] for t in r.json()["translations"]] == ["dos tres uno", "ocho siete"]
