"""Exported models compute the same function as aiayn: the same greedy translations, token for token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aiayn.config import ModelConfig
from aiayn.decode.translate import DecodeConfig, Translator
from aiayn.evaluate import read_test_pairs
from aiayn.model import build_model
from aiayn.train.checkpoint import load_model_dir
from aiayn.train.loop import load_run_config, train

MAX_LEN = 12
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["post", "pre"])
def trained(request, toy_data, tmp_path_factory):
    """A tiny model trained until it translates the toy corpus, post-LN (the paper's) and pre-LN."""
    out = tmp_path_factory.mktemp(f"export-{request.param}")
    run = load_run_config(None, {"model": {"preset": "tiny", "d_model": 32, "d_ff": 64, "norm": request.param},
                                 "train": {"data": str(toy_data), "out": str(out / "run"), "max_steps": 200,
                                           "warmup": 20, "lr_scale": 0.5, "max_tokens": 300, "eval_bleu_sentences": 0,
                                           "threads": 1, "save_every": 200}})
    train(run)
    model, vocab, _ = load_model_dir(out / "run" / "checkpoints" / "step_0000200")
    return model, vocab, out


def _ours(model, vocab, ids):
    translator = Translator(model, vocab, DecodeConfig(beam=1, max_len_a=0, max_len_b=MAX_LEN))
    return [h[0].tokens for h in translator.translate_ids(ids)]


def _test_ids(vocab, toy_corpus):
    src, _ = read_test_pairs(toy_corpus["test"], limit=20)
    return vocab.encode_batch(src)


def test_ctranslate2_greedy_is_identical(trained, toy_corpus):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from aiayn.export.ctranslate2 import to_ctranslate2

    model, vocab, tmp = trained
    out = to_ctranslate2(model, vocab, tmp / "ct2")
    ids = _test_ids(vocab, toy_corpus)
    ours = _ours(model, vocab, ids)
    tr = ctranslate2.Translator(str(out), device="cpu", intra_threads=1)
    res = tr.translate_batch([vocab.pieces(x) for x in ids], beam_size=1, max_decoding_length=MAX_LEN,
                             suppress_sequences=[["<pad>"], ["<s>"]])
    theirs = [[vocab.sp.piece_to_id(p) for p in r.hypotheses[0]] for r in res]
    # CTranslate2 never ends a translation at its first step; aiayn may (an empty output). Compare the rest.
    pairs = [(a, b) for a, b in zip(ours, theirs) if a]
    assert len(pairs) >= 10
    diff = [(a, b) for a, b in pairs if a != b]
    assert not diff, diff
    # Text in, text out with the SentencePiece model the export carries (the recipe in docs/inference.md).
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    src, _ = read_test_pairs(toy_corpus["test"], limit=20)
    res = tr.translate_batch([sp.encode(s, out_type=str) for s in src], beam_size=1, max_decoding_length=MAX_LEN,
                             suppress_sequences=[["<pad>"], ["<s>"]])
    texts = [sp.decode(r.hypotheses[0]) for r in res]
    assert [t for t, o in zip(texts, ours) if o] == [vocab.decode(o) for o in ours if o]


def _hf_greedy(hf, ids):
    from aiayn.config import EOS_ID

    out = []
    for x in ids:  # one at a time: no padding on either side
        src = torch.tensor([x + [EOS_ID]])
        gen = hf.generate(src, num_beams=1, do_sample=False, max_new_tokens=MAX_LEN + 1)[0].tolist()
        toks = gen[1:]  # drop the start token
        out.append(toks[: toks.index(EOS_ID)] if EOS_ID in toks else toks[:MAX_LEN])
    return out


def test_hf_greedy_is_identical(trained, toy_corpus):
    pytest.importorskip("transformers")
    from aiayn.export.hf import to_hf

    model, vocab, tmp = trained
    hf = to_hf(model, vocab, tmp / "hf")
    assert type(hf).__name__ == ("MarianMTModel" if model.cfg.norm == "post" else "PegasusForConditionalGeneration")
    # Reload from disk, as a user would, and through the tokenizer files written next to the weights.
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    hf = AutoModelForSeq2SeqLM.from_pretrained(tmp / "hf").eval()
    ids = _test_ids(vocab, toy_corpus)
    tok = AutoTokenizer.from_pretrained(tmp / "hf")
    src, _ = read_test_pairs(toy_corpus["test"], limit=3)
    assert [t[:-1] for t in tok(src)["input_ids"]] == ids[:3]
    ours, theirs = _ours(model, vocab, ids), _hf_greedy(hf, ids)
    assert sum(map(bool, ours)) >= 10
    assert ours == theirs


def test_hf_export_then_import_translates_the_same(trained, toy_corpus):
    """aiayn → Hugging Face (Marian or Pegasus) → `aiayn import --from hf`: the same beam-4 and greedy
    translations, the same scores (the imported model keeps HF's LayerNorm ε = 1e-5 against 1e-6 here)."""
    pytest.importorskip("transformers")
    from aiayn.export.hf import to_hf
    from aiayn.importers.hf import from_hf

    model, vocab, tmp = trained
    to_hf(model, vocab, tmp / "hf-roundtrip", overwrite=True)
    from_hf(tmp / "hf-roundtrip", tmp / "imported", overwrite=True)
    back, back_vocab, _ = load_model_dir(tmp / "imported")
    assert back.cfg.norm == model.cfg.norm and back.cfg.pe_layout == "concat"
    src, _ = read_test_pairs(toy_corpus["test"], limit=20)
    assert back_vocab.encode_batch(src) == vocab.encode_batch(src)
    for beam in (1, 4):
        cfg = DecodeConfig(beam=beam)
        ours = Translator(model, vocab, cfg).translate_nbest(src)
        theirs = Translator(back, back_vocab, cfg).translate_nbest(src)
        assert [h[0][0] for h in ours] == [h[0][0] for h in theirs]
        assert [h[0][1] for h in ours] == pytest.approx([h[0][1] for h in theirs], abs=1e-3)


@pytest.mark.parametrize("opts", [dict(norm="post"), dict(norm="pre", pe_layout="concat"),
                                  dict(norm="post", positional="learned", bias=False), dict(norm="pre", activation="gelu"),
                                  dict(norm="post", activation="silu", output_bias=True)])
def test_hf_logits_match(opts, tmp_path):
    """Teacher-forced log-probabilities agree, for every option the HF classes can express (random weights)."""
    pytest.importorskip("transformers")
    from aiayn.export.hf import to_hf

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, d_model=32, d_ff=64, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, dropout=0.0,
                      max_positions=64, ln_eps=1e-5, **opts)
    model = build_model(cfg).eval()
    if cfg.output_bias:  # exported as Marian's final_logits_bias
        torch.nn.init.normal_(model.output.bias)

    class _V:  # a character-level stand-in: only the weights are compared here
        def __len__(self):
            return 50

        def pieces(self, ids):
            return [f"p{i}" for i in ids]

    hf = to_hf(model, _V(), tmp_path / "hf")
    src = torch.randint(4, 50, (3, 9))
    tgt = torch.randint(4, 50, (3, 7))
    with torch.no_grad():
        ours = model(src, tgt).log_softmax(-1)
        theirs = hf(input_ids=src, decoder_input_ids=tgt).logits.log_softmax(-1)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_onnx_greedy_and_beam_search_are_identical(trained, toy_corpus):
    """The encoder + step graphs give aiayn's greedy tokens; beam_search.onnx gives its 2-best beams
    (beam 4, α 0.6, source + 12), tokens identical and scores equal, for a whole padded batch at once."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from aiayn.export.onnx import greedy, to_onnx
    from aiayn.export.onnx_beam import beam_search

    model, vocab, tmp = trained
    out = to_onnx(model, vocab, tmp / "onnx", beam=4, nbest=2, extra=MAX_LEN)
    ids = _test_ids(vocab, toy_corpus)
    ours = _ours(model, vocab, ids)
    assert sum(map(bool, ours)) >= 10
    assert greedy(out, ids, MAX_LEN) == ours  # one batch, padded: the graphs handle masks and batch rows

    cfg = DecodeConfig(beam=4, nbest=2, max_len_b=MAX_LEN)
    ours_beam = Translator(model, vocab, cfg).translate_ids(ids)
    theirs = beam_search(out, ids)
    assert [[h.tokens for h in hs] for hs in ours_beam] == [[t for t, _ in hs] for hs in theirs]
    torch.testing.assert_close(torch.tensor([[h.score for h in hs] for hs in ours_beam]),
                               torch.tensor([[s for _, s in hs] for hs in theirs]), atol=1e-4, rtol=1e-4)
    assert sum(len(hs[0].tokens) < MAX_LEN for hs in ours_beam) >= 10  # most end with </s>, not at the limit


def test_onnx_step_matches_model(tmp_path):
    """Random weights, learned positions, post-LN: the exported step's log-probabilities equal aiayn's."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import numpy as np

    from aiayn.export.onnx import to_onnx

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, d_model=32, d_ff=64, n_heads=4, n_encoder_layers=2, n_decoder_layers=3, dropout=0.0,
                      max_positions=64, positional="learned")
    model = build_model(cfg).eval()

    from aiayn.data.vocab import CharVocab

    out = to_onnx(model, CharVocab.train(["abcdefghij"]), tmp_path / "onnx")  # only the weights matter here
    src = torch.tensor([[7, 8, 9, 10, 11, 3], [12, 13, 3, 0, 0, 0]])
    tgt = torch.tensor([[2, 20, 21, 22], [2, 30, 31, 32]])
    with torch.no_grad():
        ref = model(src, tgt).float().log_softmax(-1)  # (B, T, V)
    enc = ort.InferenceSession(str(out / "encoder.onnx"))
    step = ort.InferenceSession(str(out / "decoder_step.onnx"))
    ck, cv = enc.run(None, {"src": src.numpy()})
    sk = sv = np.zeros((3, 2, 4, 0, 8), np.float32)
    for t in range(tgt.size(1)):
        logp, sk, sv = step.run(None, {"tokens": tgt[:, t:t + 1].numpy(), "position": np.array(t), "src_mask": (src != 0).numpy(),
                                       "cross_k": ck, "cross_v": cv, "self_k": sk, "self_v": sv})
        np.testing.assert_allclose(logp, ref[:, t].numpy(), atol=1e-4, rtol=1e-4)


def test_export_command(trained):
    """`aiayn export --to hf|onnx|ctranslate2 MODEL OUT` writes loadable directories (one norm is enough)."""
    import subprocess
    import sys

    model, _, tmp = trained
    if model.cfg.norm == "post":
        pytest.skip("the command is the same for both norms")
    ckpt = tmp / "run" / "checkpoints" / "step_0000200"
    expect = {"hf": "config.json", "onnx": "decoder_step.onnx", "ctranslate2": "model.bin"}
    for to, name in expect.items():
        pytest.importorskip({"hf": "transformers", "onnx": "onnx", "ctranslate2": "ctranslate2"}[to])
        r = subprocess.run([sys.executable, "-m", "aiayn", "export", "--to", to, str(ckpt), str(tmp / f"cli-{to}")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        assert (tmp / f"cli-{to}" / name).is_file()


@pytest.mark.parametrize("option,message", [({"positional": "rope"}, "rope"),
                                            ({"attention_window": 4}, "attention_window=4"),
                                            ({"key_size": 8}, "key_size=8")])
def test_exporters_refuse_what_their_engines_cannot_compute(tmp_path, option, message):
    """Every target engine adds positions to the embeddings and attends to every position: a rope
    model or one with restricted self-attention is refused clearly, not exported into something that
    computes another function (and nothing is written)."""
    from aiayn.config import preset
    from aiayn.data.vocab import CharVocab
    from aiayn.export.ctranslate2 import to_ctranslate2
    from aiayn.export.hf import to_hf
    from aiayn.export.onnx import to_onnx

    model = build_model(preset("tiny", **option))
    vocab = CharVocab.train(["abc"])
    for export in (to_ctranslate2, to_hf, to_onnx):
        with pytest.raises(ValueError, match=message):
            export(model, vocab, tmp_path / export.__name__)
        assert not (tmp_path / export.__name__).exists()


@pytest.mark.parametrize("positional", ["learned", "rope"])
def test_decoder_only_exports_to_a_hf_causal_lm_token_for_token(tmp_path, positional):
    """Learned positions → GPT2LMHeadModel, rotary → GPTNeoXForCausalLM: equal logits and the same greedy
    continuation (the shipped Shakespeare model is the rotary case)."""
    from aiayn.config import preset
    from aiayn.decode.sampling import SampleConfig, generate
    from aiayn.export.hf_lm import to_hf_causal_lm

    if positional == "rope":
        model, vocab, _ = load_model_dir(ROOT / "models" / "shakespeare-char")
    else:
        from aiayn.data.vocab import CharVocab

        torch.manual_seed(0)
        model = build_model(preset("gpt-nano", vocab_size=40)).eval()
        with torch.no_grad():  # biases and LayerNorm away from their initial values, so that every mapping shows
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        vocab = CharVocab.train(["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL"])
    hf = to_hf_causal_lm(model, vocab, tmp_path / "hf")
    assert type(hf).__name__ == ("GPT2LMHeadModel" if positional == "learned" else "GPTNeoXForCausalLM")
    x = torch.randint(4, model.cfg.vocab_size, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)
    ours = generate(model, x[:1, :5], SampleConfig(max_new_tokens=25, temperature=0))
    theirs = hf.generate(x[:1, :5], max_new_tokens=25, min_new_tokens=25, do_sample=False)
    assert torch.equal(ours, theirs)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, model(x), atol=1e-4, rtol=1e-4)
    assert (tmp_path / "hf" / "vocab.json").is_file()


def test_causal_lm_export_refuses_what_gpt2_and_neox_cannot_express(tmp_path):
    from aiayn.config import preset
    from aiayn.data.vocab import CharVocab
    from aiayn.export.hf_lm import to_hf_causal_lm

    vocab = CharVocab.train(["abc"])
    for opts, message in (({"norm": "post"}, "post-LN"), ({"positional": "sinusoidal"}, "sinusoidal positions"),
                          ({"scale_embeddings": True}, "scale embeddings"), ({"attention_window": 3}, "attention_window")):
        with pytest.raises(ValueError, match=message):
            to_hf_causal_lm(build_model(preset("gpt-nano", vocab_size=40, **opts)), vocab, tmp_path / "x")
        assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kind", ["shipped-rope", "learned", "post-ln-sinusoidal"])
def test_decoder_only_exports_to_ctranslate2_token_for_token(tmp_path, kind):
    """A language model → ctranslate2.Generator: equal logits (1e-4) and the same 25-token greedy
    continuation; rotary (the shipped Shakespeare model), learned and sinusoidal positions, pre- and post-LN,
    SiLU and an output bias. The vocabulary file travels with the model."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from aiayn.config import preset
    from aiayn.data.vocab import CharVocab
    from aiayn.decode.sampling import SampleConfig, generate
    from aiayn.export.ctranslate2 import to_ctranslate2

    if kind == "shipped-rope":
        model, vocab, _ = load_model_dir(ROOT / "models" / "shakespeare-char")
    else:
        extra = (dict(positional="learned") if kind == "learned" else
                 dict(positional="sinusoidal", norm="post", scale_embeddings=True, activation="silu", output_bias=True))
        vocab = CharVocab.train(["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL"])
        torch.manual_seed(0)
        model = build_model(preset("gpt-nano", vocab_size=len(vocab), **extra)).eval()
        with torch.no_grad():  # biases and LayerNorm away from their initial values, so that every mapping shows
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
    out = to_ctranslate2(model, vocab, tmp_path / "ct2")
    assert CharVocab.load(out / "chars.json").chars == vocab.chars
    gen = ctranslate2.Generator(str(out), device="cpu", intra_threads=1)
    torch.manual_seed(1)
    x = torch.randint(4, model.cfg.vocab_size, (2, 30))
    theirs = torch.from_numpy(__import__("numpy").array(gen.forward_batch([vocab.pieces(r.tolist()) for r in x])))
    with torch.no_grad():
        torch.testing.assert_close(theirs, model(x), atol=1e-4, rtol=1e-4)
    ours = generate(model, x[:1, :5], SampleConfig(max_new_tokens=25, temperature=0))[0, 5:].tolist()
    res = gen.generate_batch([vocab.pieces(x[0, :5].tolist())], max_length=25, min_length=25, sampling_topk=1,
                             include_prompt_in_result=False)
    assert vocab.pieces(ours) == res[0].sequences[0]
